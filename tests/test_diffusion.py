"""DDPM (Ho et al. 2020) as kizuna distributions and losses, against independent references.

References: the forward marginal against iterating the single-step kernel; the posterior
q(x_{t-1}|x_t,x_0) against Bayes' rule for two Gaussians (precisions add); every KL term
against the closed-form Gaussian KL written out in numpy; the discretised decoder against
``scipy.stats.norm.cdf`` and summing to one over all levels; the bound and ancestral sampling
with the exact noise predictor of Gaussian data (the bound's mean must lie above the data's
entropy and close to it; samples must have the data's variance); a trained model's samples
on 2-D data by MMD against independent data samples. Monte-Carlo checks at five standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from kizuna.distributions import (
    DDPM,
    DiffusionDecoder,
    DiffusionForward,
    DiffusionPosterior,
    DiffusionReverse,
    DiffusionSchedule,
)
from kizuna.distributions.diffusion import DiscreteUniform
from kizuna.losses import (
    Expectation,
    KullbackLeibler,
    LogProb,
    NoisePredictionError,
    diffusion_bound,
    hybrid_diffusion_loss,
    simple_diffusion_loss,
)
from kizuna.models import Model

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread_seeded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    torch.set_num_threads(threads)


def schedule(T: int = 10) -> DiffusionSchedule:
    return DiffusionSchedule(torch.linspace(0.01, 0.3, T, dtype=F64))


class LinearEps(nn.Module):
    """``eps(x_t, t) = W x_t + c t``: an arbitrary (untrained) noise predictor."""

    def __init__(self, d: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d, dtype=F64)
        self.c = nn.Parameter(torch.randn(d, dtype=F64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.c * t.to(x.dtype)[:, None] / 10


def gaussian_kl(m1: np.ndarray, v1: np.ndarray, m2: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """KL[N(m1, v1) || N(m2, v2)] of diagonal Gaussians, summed over the last axis."""
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1).sum(-1)


# ------------------------------------------------------------------ the distributions
def test_forward_marginal_equals_iterated_single_steps() -> None:
    s = schedule()
    beta = s.betas.numpy()
    x0 = torch.randn(4, 3, dtype=F64)
    q = DiffusionForward(s)
    for t in (1, 4, 10):
        m, v = x0.numpy(), np.zeros(1)
        for b in beta[:t]:  # x_s = sqrt(1 - b) x_{s-1} + sqrt(b) eps
            m, v = np.sqrt(1 - b) * m, (1 - b) * v + b
        params = q.get_params({"x_0": x0, "t": torch.full((4,), t)})
        np.testing.assert_allclose(params["loc"].numpy(), m, rtol=1e-12)
        np.testing.assert_allclose(params["scale"].numpy() ** 2, np.broadcast_to(v, m.shape), rtol=1e-12)


def test_posterior_is_bayes_rule() -> None:
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): precisions add, means weight by precision."""
    s = schedule()
    beta, ab = s.betas.numpy(), s.alpha_bar().numpy()
    xt, x0 = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    t = torch.tensor([2, 5, 9, 10])
    params = DiffusionPosterior(s).get_params({"x_t": xt, "x_0": x0, "t": t})
    for row, step in enumerate(t.tolist()):
        b, prior_var = beta[step - 1], 1 - ab[step - 1]
        precision = 1 / prior_var + (1 - b) / b
        mean = (np.sqrt(ab[step - 1]) * x0[row].numpy() / prior_var + np.sqrt(1 - b) * xt[row].numpy() / b) / precision
        np.testing.assert_allclose(params["loc"][row].numpy(), mean, rtol=1e-10)
        np.testing.assert_allclose(params["scale"][row].numpy() ** 2, 1 / precision, rtol=1e-10)


def test_reverse_mean_and_variances() -> None:
    s, net = schedule(), LinearEps()
    xt, t = torch.randn(4, 3, dtype=F64), torch.tensor([2, 3, 7, 10])
    beta, ab = s.betas.numpy()[t - 1][:, None], s.alpha_bar().numpy()[t][:, None]
    eps = net(xt, t).detach().numpy()
    mean = (xt.numpy() - beta / np.sqrt(1 - ab) * eps) / np.sqrt(1 - beta)
    for variance, var in (("beta", beta), ("posterior", (1 - s.alpha_bar().numpy()[t - 1][:, None]) / (1 - ab) * beta)):
        params = DiffusionReverse(net, s, variance=variance).get_params({"x_t": xt, "t": t})
        np.testing.assert_allclose(params["loc"].detach().numpy(), mean, rtol=1e-10)
        np.testing.assert_allclose(params["scale"].detach().numpy() ** 2, np.broadcast_to(var, mean.shape), rtol=1e-10)


def test_kl_terms_match_the_closed_form_gaussian_kl() -> None:
    s, net = schedule(), LinearEps()
    rev, post = DiffusionReverse(net, s), DiffusionPosterior(s)
    values = {"x_t": torch.randn(4, 3, dtype=F64), "x_0": torch.randn(4, 3, dtype=F64),
              "t": torch.tensor([2, 4, 6, 10])}
    kl = KullbackLeibler(post, rev)
    assert kl.method == "analytic"
    a, b = post.get_params(values), rev.get_params(values)
    expected = gaussian_kl(a["loc"].numpy(), a["scale"].numpy() ** 2, b["loc"].detach().numpy(),
                           b["scale"].detach().numpy() ** 2)
    np.testing.assert_allclose(kl.eval(values).detach().numpy(), expected, rtol=1e-10)
    # L_T: KL[q(x_T|x_0) || N(0, I)]
    prior = DDPM(rev, [3]).prior
    x0 = values["x_0"]
    ab_T = s.alpha_bar()[-1].item()
    expected_T = gaussian_kl(np.sqrt(ab_T) * x0.numpy(), np.full((4, 3), 1 - ab_T), np.zeros((4, 3)), np.ones((4, 3)))
    l_T = KullbackLeibler(DiffusionForward(s, step=10, var="x_T"), prior).eval({"x_0": x0})
    np.testing.assert_allclose(l_T.numpy(), expected_T, rtol=1e-10)


def test_kl_with_posterior_variance_is_the_weighted_noise_error() -> None:
    """Ho et al. eq. (12): with sigma_t^2 = beta~_t,
    L_{t-1} = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) ||eps - eps_theta||^2."""
    s, net = schedule(), LinearEps()
    rev = DiffusionReverse(net, s, variance="posterior")
    x0, eps = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    t = torch.tensor([2, 4, 6, 10])
    c = s.coefficients(t, x0)
    xt = c["alpha_bar"].sqrt() * x0 + (1 - c["alpha_bar"]).sqrt() * eps
    values = {"x_0": x0, "x_t": xt, "t": t}
    error = NoisePredictionError(rev).eval(values)
    torch.testing.assert_close(error, (eps - net(xt, t)).pow(2).sum(1))
    sigma2 = (1 - c["alpha_bar_prev"]) / (1 - c["alpha_bar"]) * c["beta"]
    weight = (c["beta"] ** 2 / (2 * sigma2 * c["alpha"] * (1 - c["alpha_bar"]))).flatten()
    torch.testing.assert_close(KullbackLeibler(DiffusionPosterior(s), rev).eval(values), weight * error)


def test_discretised_decoder_against_scipy_and_normalised() -> None:
    s, bins = schedule(), 5
    rev = DiffusionReverse(LinearEps(1), s)
    dec = DiffusionDecoder(rev, bins=bins)
    x1 = torch.full((bins, 1), 0.3, dtype=F64)
    levels = torch.linspace(-1, 1, bins, dtype=F64)[:, None]
    logp = dec.get_log_prob({"x_1": x1, "x_0": levels})
    mean, var = rev.mean_and_variance(x1, torch.ones(bins, dtype=torch.long))
    m, sd, half = mean[0, 0].item(), math.sqrt(var[0, 0].item()), 1 / (bins - 1)
    edges = np.concatenate([[-np.inf], levels[:-1, 0].numpy() + half, [np.inf]])
    expected = np.diff(stats.norm.cdf(edges, m, sd))
    np.testing.assert_allclose(logp.detach().exp().numpy(), expected, rtol=1e-9)
    assert abs(logp.exp().sum().item() - 1) < 1e-12
    # far in a tail the log-probability stays finite and matches scipy's log survival function
    far = dec.get_log_prob({"x_1": torch.full((1, 1), -50.0, dtype=F64), "x_0": torch.ones(1, 1, dtype=F64)})
    m_far, v_far = rev.mean_and_variance(torch.full((1, 1), -50.0, dtype=F64), torch.ones(1, dtype=torch.long))
    ref = stats.norm.logsf(1 - half, m_far.item(), math.sqrt(v_far.item()))
    assert math.isfinite(far.item()) and abs(far.item() - ref) < 1e-6 * abs(ref)
    draws = dec.sample({"x_1": torch.zeros(100, 1, dtype=F64)})["x_0"]  # snapped to the levels
    assert set(np.round(draws.numpy().ravel() * 2, 9)) <= set(np.round(np.linspace(-2, 2, bins), 9))


def test_posterior_variance_decoder_uses_beta_tilde_2_at_t1() -> None:
    """Ho et al.'s code clips the posterior variance at t = 1 to beta~_2 (beta~_1 = 0 is a point mass).

    The Gaussian decoder p(x_0|x_1) and the discretised one are checked against scipy with that variance."""
    s = schedule()
    beta, ab = s.betas.numpy(), s.alpha_bar().numpy()
    beta_tilde_2 = (1 - ab[1]) / (1 - ab[2]) * beta[1]
    net = LinearEps(1)
    x1, x0 = torch.tensor([[0.3], [-0.2]], dtype=F64), torch.tensor([[0.25], [-1.0]], dtype=F64)
    eps = net(x1, torch.ones(2, dtype=torch.long)).detach().numpy()
    mean = (x1.numpy() - beta[0] / np.sqrt(1 - ab[1]) * eps) / np.sqrt(1 - beta[0])
    gaussian = DiffusionReverse(net, s, variance="posterior", step=1)
    logp = gaussian.get_log_prob({"x_1": x1, "x_0": x0}).detach().numpy()
    np.testing.assert_allclose(logp, stats.norm.logpdf(x0.numpy(), mean, np.sqrt(beta_tilde_2)).sum(1), rtol=1e-10)
    bins, half = 5, 0.25
    dec = DiffusionDecoder(DiffusionReverse(net, s, variance="posterior"), bins=bins)
    levels = torch.linspace(-1, 1, bins, dtype=F64)[:, None]
    logp = dec.get_log_prob({"x_1": torch.full((bins, 1), 0.3, dtype=F64), "x_0": levels}).detach()
    edges = np.concatenate([[-np.inf], levels[:-1, 0].numpy() + half, [np.inf]])
    np.testing.assert_allclose(logp.exp().numpy(), np.diff(stats.norm.cdf(edges, mean[0, 0], np.sqrt(beta_tilde_2))),
                               rtol=1e-9)
    assert torch.isfinite(logp).all()


def test_schedules() -> None:
    lin = DiffusionSchedule.linear(1000)
    assert lin.T == 1000 and abs(lin.betas[0].item() - 1e-4) < 1e-9 and abs(lin.betas[-1].item() - 0.02) < 1e-9
    cos = DiffusionSchedule(DiffusionSchedule.cosine(100).betas.double())
    f = np.cos((np.arange(101) / 100 + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(cos.alpha_bar().numpy()[:90], (f / f[0])[:90], rtol=1e-6)  # before the 0.999 cap


# ------------------------------------------------------------------ the bound and sampling
VAR0 = 0.25  # the data N(0, VAR0 I) in two dimensions


def exact_eps(s: DiffusionSchedule):
    """E[eps | x_t] for x_0 ~ N(0, VAR0 I): the optimal noise predictor."""
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = s.alpha_bar()[t].to(x.dtype)[:, None]
        return (1 - ab).sqrt() * x / (ab * VAR0 + 1 - ab)
    return eps


def test_bound_of_the_exact_model_is_just_above_the_entropy() -> None:
    """Gaussian data, T = 100, exact eps: E[bound] >= H[p_data] (it bounds the cross-entropy) and the
    gap is under 0.15 nats (measured: 0.04). The one-t-per-row estimator is unbiased for the sum over t."""
    s = DiffusionSchedule(DiffusionSchedule.linear(100, 1e-3, 0.2).betas.double())
    rev = DiffusionReverse(exact_eps(s), s)
    p = DDPM(rev, [2])
    x0 = math.sqrt(VAR0) * torch.randn(4000, 2, dtype=F64)
    step = Expectation(DiffusionForward(s), KullbackLeibler(DiffusionPosterior(s), rev))
    with torch.no_grad():
        middle = sum(step.eval({"x_0": x0, "t": torch.full((4000,), t)}) for t in range(2, 101))
        l_T = KullbackLeibler(DiffusionForward(s, step=100, var="x_T"), p.prior).eval({"x_0": x0})
        l_0 = -Expectation(DiffusionForward(s, step=1), LogProb(p.decoder)).eval({"x_0": x0})
        exact = middle + l_T + l_0
        sampled, terms = diffusion_bound(p).eval({"x_0": x0.repeat(5, 1)}, return_terms=True)
        summed = diffusion_bound(p, exact_steps=True).eval({"x_0": x0})  # SumOverSteps: the same sum, own draws
    entropy = math.log(2 * math.pi * math.e * VAR0)
    se = exact.std().item() / math.sqrt(4000)
    assert exact.mean().item() > entropy - 5 * se
    assert exact.mean().item() < entropy + 0.15
    se_both = math.hypot(se, sampled.std().item() / math.sqrt(20000))
    assert abs(sampled.mean().item() - exact.mean().item()) < 5 * se_both
    assert abs(summed.mean().item() - exact.mean().item()) < 5 * math.sqrt(2) * se
    assert set(terms) == {"L_T", "L_{1:T-1}", "-L_0"}


def test_ancestral_sampling_of_the_exact_model_has_the_data_variance() -> None:
    """T = 1000, exact eps: sample variance within 0.01 of 0.25 (5 SE of 20,000 draws is 0.006;
    the fixed-variance reverse process adds a bias below 0.004 here)."""
    s = DiffusionSchedule(DiffusionSchedule.linear(1000).betas.double())
    p = DDPM(DiffusionReverse(exact_eps(s), s), [2], noiseless_last=False)
    x = p.sample(batch_n=10_000)["x_0"]
    assert x.dtype == F64 and x.shape == (10_000, 2)
    assert (x.var(0) - VAR0).abs().max() < 0.01
    assert x.mean(0).abs().max() < 5 * math.sqrt(VAR0 / 10_000)


def test_formulas_and_discrete_uniform() -> None:
    s = schedule()
    p = DDPM(DiffusionReverse(LinearEps(), s), [3])
    assert str(p) == "p(x_0) = ∫ p(x_T)prod_{t} p(x_{t-1}|x_t,t)p(x_0|x_1)dx_{1:T}"
    assert str(diffusion_bound(p)) == ("KL[q(x_T|x_0)||p(x_T)] + 9 * E_{u(t)}[E_{q(x_t|x_0,t)}[KL[q(x_{t-1}|x_t,x_0,t)"
                                       "||p(x_{t-1}|x_t,t)]]] - E_{q(x_1|x_0)}[log p(x_0|x_1)]")
    assert str(simple_diffusion_loss(p.reverse).mean()) == "mean(E_{u(t)}[E_{q(x_t|x_0,t)}[||ε - ε_θ(x_t,t)||^2]])"
    exact = diffusion_bound(p, exact_steps=True)
    assert str(exact).startswith("KL[q(x_T|x_0)||p(x_T)] + sum_{t=2}^{10} E_{q(x_t|x_0,t)}")
    assert r"\sum_{t=2}^{10}" in exact.to_latex()
    u = DiscreteUniform(2, 10)
    t = u.sample(batch_n=50_000)["t"]
    counts = torch.bincount(t, minlength=11)[2:].numpy()
    assert t.min() >= 2 and t.max() <= 10
    assert stats.chisquare(counts).pvalue > 1e-4  # uniform on 2..10 (false alarms 1e-4)
    torch.testing.assert_close(u.get_log_prob({"t": torch.tensor([2, 11])}), torch.tensor([-math.log(9), -math.inf]))


def test_errors_name_the_problem() -> None:
    s = schedule()
    with pytest.raises(ValueError, match=r"must lie in \[1, 10\]"):
        DiffusionForward(s).sample({"x_0": torch.zeros(2, 3, dtype=F64), "t": torch.tensor([0, 3])})
    with pytest.raises(ValueError, match=r"must lie in \[2, 10\]"):
        DiffusionPosterior(s).sample({"x_0": torch.zeros(1, 3), "x_t": torch.zeros(1, 3), "t": torch.tensor([1])})
    with pytest.raises(ValueError, match="whole numbers"):
        DiffusionForward(s).sample({"x_0": torch.zeros(1, 3, dtype=F64), "t": torch.tensor([1.5])})
    with pytest.raises(ValueError, match=r"betas? .*\(0, 1\)"):
        DiffusionSchedule([0.1, 1.0])
    with pytest.raises(ValueError, match=r"eps_net returned shape \(2, 2\)"):
        DiffusionReverse(lambda x, t: x[:, :2], s).sample({"x_t": torch.zeros(2, 3, dtype=F64),
                                                            "t": torch.tensor([2, 3])})
    dec = DiffusionDecoder(DiffusionReverse(LinearEps(), s), bins=256)
    with pytest.raises(ValueError, match=r"x_0 must lie in \[-1, 1\]"):
        dec.get_log_prob({"x_1": torch.zeros(1, 3, dtype=F64), "x_0": torch.full((1, 3), 2.0, dtype=F64)})
    with pytest.raises(NotImplementedError, match="diffusion_bound"):
        DDPM(DiffusionReverse(LinearEps(), s), [3]).get_log_prob({"x_0": torch.zeros(1, 3, dtype=F64)})

    # (before: -2 failed in the prior with "numel: integer multiplication overflow", 2.5 bins were 2 levels, data of
    # 5 features against a model of 2 a raw "The size of tensor a (5) must match the size of tensor b (2)")
    with pytest.raises(ValueError, match=r"^DDPM: features_shape\[0\] must be an integer >= 1, got -2$"):
        DDPM(DiffusionReverse(LinearEps(), s), [-2])
    with pytest.raises(ValueError, match=r"^DiffusionDecoder: bins must be an integer >= 2, got 2.5$"):
        DiffusionDecoder(DiffusionReverse(LinearEps(), s), bins=2.5)
    with pytest.raises(ValueError, match=r"x_0 has shape \(3, 5\), but the model's features_shape is \(2,\)"):
        diffusion_bound(DDPM(DiffusionReverse(lambda x, t: torch.zeros_like(x), s), [2])).eval(
            {"x_0": torch.ones(3, 5)})


def test_integer_data_are_values_not_a_rounded_schedule() -> None:
    """Integer x_0 (0/1 data, counts) took the schedule's constants in its own dtype: every alpha-bar rounded to 0
    or 1, so q(x_t|x_0) had loc 0 and scale 1 and the bound was ~2e4 nats a row instead of ~3; now integer data
    are values of the default float type, with the floating data's numbers (here against the closed form)."""
    s = schedule()
    ab = 1 - float(s.betas[0])  # alpha-bar at t = 1 is 1 - beta_1
    params = DiffusionForward(s).get_params({"x_0": torch.ones(2, 2, dtype=torch.long), "t": torch.tensor([1, 1])})
    assert params["loc"].dtype == torch.get_default_dtype()
    torch.testing.assert_close(params["loc"], torch.full((2, 2), math.sqrt(ab)))
    torch.testing.assert_close(params["scale"], torch.full((2, 2), math.sqrt(1 - ab)))
    p = DDPM(DiffusionReverse(lambda x, t: torch.zeros_like(x), s), [2])
    x = torch.tensor([[0, 1], [1, 1], [1, 0]])
    for loss in (diffusion_bound(p, exact_steps=True), simple_diffusion_loss(p.reverse)):
        torch.manual_seed(0)
        got = loss.eval({"x_0": x})
        torch.manual_seed(0)
        torch.testing.assert_close(got, loss.eval({"x_0": x.float()}))


# ------------------------------------------------------------------ training on 2-D data
MODES, RADIUS, SD = 4, 2.0, 0.3


def ring(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, MODES, (n,), generator=g)
    angle = 2 * math.pi * k / MODES
    return torch.stack([RADIUS * angle.cos(), RADIUS * angle.sin()], 1) + SD * torch.randn(n, 2, generator=g)


class TimeMLP(nn.Module):
    """eps(x, t): an MLP of x and Fourier features of t / T."""

    def __init__(self, T: int, hidden: int = 128, n_freq: int = 6) -> None:
        super().__init__()
        self.T = T
        self.register_buffer("freq", math.pi * 2.0 ** torch.arange(n_freq))
        self.net = nn.Sequential(nn.Linear(2 + 2 * n_freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angle = (t.to(x.dtype)[:, None] / self.T) * self.freq
        return self.net(torch.cat([x, angle.sin(), angle.cos()], 1))


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 0.5) -> float:
    """Biased MMD^2 with a Gaussian kernel exp(-|a-b|^2 / bandwidth)."""
    k = lambda a, b: torch.exp(-torch.cdist(a, b).pow(2) / bandwidth)  # noqa: E731
    return (k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()).item()


def test_trained_ddpm_samples_match_2d_data() -> None:
    """Four Gaussians (sd 0.3) on a circle: after training on the simplified loss, the MMD^2 between
    1000 samples and 1000 data points is below 3x the mean MMD^2 between two independent data
    samples of that size, and below a tenth of the untrained model's (seeds 0-2: ratios 1.2-1.9)."""
    T, steps = 100, 1200
    s = DiffusionSchedule.linear(T, 1e-3, 0.2)
    rev = DiffusionReverse(TimeMLP(T), s, variance="posterior")
    p = DDPM(rev, [2])
    model = Model(simple_diffusion_loss(rev).mean(), distributions=[rev], optimizer_params={"lr": 3e-3})
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(model.optimizer, steps)
    g = torch.Generator().manual_seed(1)
    data = ring(1000, g)
    with torch.no_grad():
        untrained = mmd2(p.sample(batch_n=1000)["x_0"], data)
    for _ in range(steps):
        model.train({"x_0": ring(256, g)})
        decay.step()
    with torch.no_grad():
        trained = mmd2(p.sample(batch_n=1000)["x_0"], data)
        bound = diffusion_bound(p).eval({"x_0": data}).mean().item()
    reference = np.mean([mmd2(ring(1000, g), ring(1000, g)) for _ in range(5)])
    assert trained < 3 * reference and trained < 0.1 * untrained, (trained, reference, untrained)
    assert math.isfinite(bound)


class _TwoHeads(nn.Module):
    """ε and v from two separate linear maps, side by side (a learned-variance network whose halves' gradients
    can be told apart); ``v_value`` fixes v instead."""

    def __init__(self, d: int, v_value: float | None = None) -> None:
        super().__init__()
        self.eps, self.v, self.v_value = nn.Linear(d + 1, d), nn.Linear(d + 1, d), v_value

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, t[:, None].to(x.dtype) / 100], 1)
        v = self.v(h) if self.v_value is None else torch.full_like(x, self.v_value)
        return torch.cat([self.eps(h), v], 1)


@pytest.mark.parametrize(("v", "fixed"), [(1.0, "beta"), (-1.0, "posterior")])
def test_learned_variance_at_its_ends_is_beta_or_the_posterior_variance(v: float, fixed: str) -> None:
    """v = 1 gives σ² = β_t and v = -1 gives β̃_t (β̃_2 at t = 1): the means, the variances, the bound (each KL in
    closed form) and the ancestral samples equal those of the fixed choice, for the same noise."""
    torch.manual_seed(0)
    net = _TwoHeads(3, v_value=v)
    schedule = DiffusionSchedule.linear(20)
    learned = DiffusionReverse(net, schedule, variance="learned")
    fixed_rev = DiffusionReverse(lambda x, t: net(x, t)[:, :3], schedule, variance=fixed)
    x, t = torch.randn(6, 3), torch.tensor([1, 2, 5, 10, 19, 20])
    for got, want in zip(learned.mean_and_variance(x, t), fixed_rev.mean_and_variance(x, t)):
        torch.testing.assert_close(got, want.expand_as(got))
    x0 = torch.randint(0, 17, (5, 3)) / 16 * 2 - 1  # on the decoder's grid of 17 levels
    bounds = []
    for rev in (learned, fixed_rev):
        torch.manual_seed(1)
        bounds.append(diffusion_bound(DDPM(rev, [3], decoder=DiffusionDecoder(rev, bins=17)), exact_steps=True)
                      .eval({"x_0": x0}))
    torch.testing.assert_close(bounds[0], bounds[1])
    samples = []
    for rev in (learned, fixed_rev):
        torch.manual_seed(2)
        samples.append(DDPM(rev, [3], decoder=DiffusionDecoder(rev, bins=17)).sample(batch_n=4)["x_0"])
    torch.testing.assert_close(samples[0], samples[1])


def test_learned_variance_interpolates_the_log_variances() -> None:
    """log σ² = (v+1)/2 log β_t + (1-v)/2 log β̃_t entry by entry (Nichol & Dhariwal's parameterisation)."""
    torch.manual_seed(0)
    net = _TwoHeads(4)
    schedule = DiffusionSchedule.linear(30)
    x, t = torch.randn(5, 4), torch.tensor([2, 3, 7, 15, 30])
    _, var = DiffusionReverse(net, schedule, variance="learned").mean_and_variance(x, t)
    v = net(x, t)[:, 4:]
    beta = schedule.betas[t - 1][:, None].double()
    ab = torch.cumprod(1 - schedule.betas.double(), 0)
    post = (1 - ab[t - 2]) / (1 - ab[t - 1]) * schedule.betas.double()[t - 1]
    expected = ((v.double() + 1) / 2 * beta.log() + (1 - v.double()) / 2 * post[:, None].log()).exp()
    # float32 constants: 1 - ᾱ_t at t = 1, 2 loses about four digits to cancellation (8e-5 relative here)
    torch.testing.assert_close(var.double(), expected, rtol=2e-4, atol=0)


def test_hybrid_loss_trains_the_mean_by_l_simple_and_the_variance_by_the_bound() -> None:
    """Inside the bound term of L_hybrid the mean is detached: the bound's gradient reaches only v's head, while
    without the stop both heads get one; the bound's value is the same either way. L_hybrid = L_simple + λ L_vlb
    term by term, and it refuses a reverse process with fixed variances."""
    from kizuna.distributions.diffusion import stop_mean_gradient
    from kizuna.losses import hybrid_diffusion_loss

    torch.manual_seed(0)
    net = _TwoHeads(3)
    rev = DiffusionReverse(net, DiffusionSchedule.linear(20), variance="learned")
    p = DDPM(rev, [3], decoder=DiffusionDecoder(rev, bins=17))
    x0 = {"x_0": torch.randint(0, 17, (8, 3)) / 16 * 2 - 1}  # on the decoder's grid
    values = []
    for stopped in (False, True):
        net.zero_grad()
        torch.manual_seed(3)
        if stopped:
            with stop_mean_gradient():
                value = diffusion_bound(p).eval(x0).mean()
        else:
            value = diffusion_bound(p).eval(x0).mean()
        value.backward()
        values.append(value.detach())
        eps_grad = net.eps.weight.grad
        assert (eps_grad is None or not eps_grad.any()) if stopped else eps_grad.abs().sum() > 0
        assert net.v.weight.grad.abs().sum() > 0
    torch.testing.assert_close(values[0], values[1])
    torch.manual_seed(4)
    total, terms = hybrid_diffusion_loss(p, weight=0.25).mean().eval(x0, return_terms=True)
    torch.testing.assert_close(total, terms["L_simple"] + 0.25 * terms["L_vlb"])
    with pytest.raises(ValueError, match="fixed variances"):
        hybrid_diffusion_loss(DDPM(DiffusionReverse(lambda x, t: x, DiffusionSchedule.linear(5)), [3]))


def test_learned_variance_needs_twice_the_channels() -> None:
    rev = DiffusionReverse(lambda x, t: torch.zeros_like(x), DiffusionSchedule.linear(5), variance="learned")
    with pytest.raises(ValueError, match=r"side by side along dimension 1, shape \(2, 6\); it returned \(2, 3\)"):
        rev.mean_and_variance(torch.zeros(2, 3), torch.tensor([1, 2]))


# ------------------------------------------------- conditional losses, T = 1, scalar data, Nichol's weight
class _Conditional(nn.Module):
    """ε_θ(x_t, t, y) = W x_t + b y: a conditional noise predictor whose gradient in ``b`` needs the context."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Linear(d, d, bias=False).double()
        self.b = nn.Parameter(torch.full((d,), 0.3, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.w(x) + y[:, None] * self.b


def test_noise_prediction_error_of_a_conditional_model_reads_its_context() -> None:
    """||ε - ε_θ(x_t, t, y)||² with ε = (x_t - sqrt(ᾱ_t) x_0) / sqrt(1 - ᾱ_t), written out by hand; the simple loss
    (and the hybrid one) of a conditional reverse process train, the context reaching the network (it was left out)."""
    from kizuna.losses import hybrid_diffusion_loss

    schedule = DiffusionSchedule(DiffusionSchedule.linear(10).betas.double())
    net = _Conditional(2)
    rev = DiffusionReverse(net, schedule, context_var=["y"])
    x0, xt = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    t, y = torch.tensor([1, 3, 7, 10]), torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    ab = torch.cumprod(1 - schedule.betas, 0)[t - 1][:, None]
    eps = (xt - ab.sqrt() * x0) / (1 - ab).sqrt()
    expected = (eps - net(xt, t, y)).pow(2).sum(1)
    got = NoisePredictionError(rev).eval({"x_0": x0, "x_t": xt, "t": t, "y": y})
    torch.testing.assert_close(got, expected)
    loss = simple_diffusion_loss(rev)
    assert "y" in loss.input_var
    loss.mean().eval({"x_0": x0, "y": y}).backward()
    assert net.b.grad is not None and net.b.grad.abs().sum() > 0
    learned = DiffusionReverse(lambda x, t, y: torch.cat([x * y[:, None], torch.zeros_like(x)], 1), schedule,
                               variance="learned", context_var=["y"])
    value = hybrid_diffusion_loss(DDPM(learned, [2])).eval({"x_0": x0, "y": y})
    assert value.shape == (4,) and torch.isfinite(value).all()


def test_simple_loss_of_scalar_data_has_one_value_per_row() -> None:
    schedule = DiffusionSchedule(DiffusionSchedule.linear(10).betas.double())
    rev = DiffusionReverse(lambda x, t: 0.1 * x, schedule)
    x0, xt, t = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64), torch.tensor([1, 2, 3, 4, 10])
    ab = torch.cumprod(1 - schedule.betas, 0)[t - 1]
    expected = ((xt - ab.sqrt() * x0) / (1 - ab).sqrt() - 0.1 * xt).pow(2)
    torch.testing.assert_close(NoisePredictionError(rev).eval({"x_0": x0, "x_t": xt, "t": t}), expected)
    assert simple_diffusion_loss(rev).eval({"x_0": x0}).shape == (5,)
    learned = DiffusionReverse(lambda x, t: torch.cat([x, x]), schedule, variance="learned")
    with pytest.raises(ValueError, match=r"need a feature dimension .* x_t has shape \(5,\)"):
        learned.mean_and_variance(xt, t)


def test_a_one_step_ddpm_samples_its_prior_through_the_decoder() -> None:
    """T = 1: x_1 ~ N(0, I) and the decoder's mean x_1 / sqrt(α_1) (ε_θ = 0), so x_0 ~ N(0, I / α_1); the posterior
    and learned variances, which use step 2's posterior variance at step 1, are refused with T = 1."""
    schedule = DiffusionSchedule(torch.tensor([0.5], dtype=torch.float64))
    p = DDPM(DiffusionReverse(lambda x, t: torch.zeros_like(x), schedule), [2])
    x = p.sample(batch_n=20_000)["x_0"]
    n = x.numel()
    assert abs(x.mean().item()) < 5 * math.sqrt(2.0 / n)
    assert abs(x.var().item() - 2.0) < 5 * 2.0 * math.sqrt(2.0 / n)  # var of a sample variance: 2 σ⁴ / n
    for variance in ("posterior", "learned"):
        with pytest.raises(ValueError, match="needs at least two steps"):
            DiffusionReverse(lambda x, t: x, schedule, variance=variance)


def test_the_default_hybrid_weight_is_nichol_and_dhariwals() -> None:
    """Their code: mean over entries of the squared error + 0.001 × the bound in bits per entry; kizuna's terms are
    summed over a row's entries and the bound is in nats, so L_hybrid with the default weight is D times theirs."""
    from kizuna.losses import hybrid_diffusion_loss

    torch.manual_seed(0)
    net = _TwoHeads(3)
    rev = DiffusionReverse(net, DiffusionSchedule.linear(20), variance="learned")
    p = DDPM(rev, [3], decoder=DiffusionDecoder(rev, bins=17))
    x0 = {"x_0": torch.randint(0, 17, (8, 3)) / 16 * 2 - 1}  # on the decoder's grid
    total, terms = hybrid_diffusion_loss(p).mean().eval(x0, return_terms=True)
    theirs = terms["L_simple"] / 3 + 0.001 * terms["L_vlb"] / (3 * math.log(2))
    torch.testing.assert_close(total, 3 * theirs)


def test_the_default_decoder_has_the_reverse_processs_variance() -> None:
    """The Gaussian decoder p(x_0|x_1) a DDPM builds uses the reverse process's variance choice: β_1 for "beta",
    β̃_2 = (1 - ᾱ_1)/(1 - ᾱ_2) β_2 for "posterior" (Ho et al.'s code clips the posterior variance so at t = 1)."""
    s = DiffusionSchedule(DiffusionSchedule.linear(10).betas.double())
    betas, ab = s.betas, torch.cumprod(1 - s.betas, 0)
    x1 = torch.randn(3, 2, dtype=torch.float64)
    for variance, expected in (("beta", betas[0]), ("posterior", (1 - ab[0]) / (1 - ab[1]) * betas[1])):
        p = DDPM(DiffusionReverse(lambda x, t: torch.zeros_like(x), s, variance=variance), [2])
        scale = p.decoder.get_params({"x_1": x1})["scale"]
        torch.testing.assert_close(scale.pow(2).expand(3, 2), expected.expand(3, 2))


def test_the_exact_sum_over_steps_frees_each_steps_memo(monkeypatch) -> None:
    """`SumOverSteps` (diffusion_bound(exact_steps=True)) drops each step's remembered network outputs when the step
    ends: the evaluation's memo has the same length after every step (it grew by every step: memory O(T), scans
    O(T²)); the value is unchanged."""
    from kizuna.formula import memo
    from kizuna.losses import diffusion as losses

    net = nn.Linear(2, 2)
    p = DDPM(DiffusionReverse(lambda x, t: net(x), DiffusionSchedule.linear(10)), [2])
    bound = diffusion_bound(p, exact_steps=True)
    x0 = {"x_0": torch.randn(4, 2)}
    torch.manual_seed(0)
    expected = bound.eval(x0)
    lengths = []

    def release(mark):
        memo.release_step(mark)
        lengths.append(len(memo._STATE.memo))

    monkeypatch.setattr(losses, "release_step", release)
    torch.manual_seed(0)
    torch.testing.assert_close(bound.eval(x0), expected)
    assert len(lengths) == 9 and len(set(lengths)) == 1, lengths


def test_the_torch_distribution_inside_the_mean_stop_is_built_apart() -> None:
    """Inside one evaluation, a torch distribution built outside `stop_mean_gradient` is not reused inside it (its mean
    carried the gradient the stop removes), as the parameters already were not."""
    from kizuna.distributions.diffusion import stop_mean_gradient
    from kizuna.formula.memo import shared_parameters

    net = nn.Linear(2, 2)
    rev = DiffusionReverse(lambda x, t: net(x), DiffusionSchedule.linear(10))
    values = {rev.noisy_var: torch.randn(3, 2), rev.t_var: torch.full((3,), 4)}
    with shared_parameters():
        assert rev.get_dist(values).mean.requires_grad
        with stop_mean_gradient():
            assert not rev.get_dist(values).mean.requires_grad
            assert not rev.get_params(values)["loc"].requires_grad


def test_an_empty_batch_gives_an_empty_loss() -> None:
    """x_0 of shape (0, D): every diffusion loss gives one value per row, none, as KullbackLeibler and Expectation do
    (the step draw made one row whatever the batch, then 'batch_n=1 but the conditioning values have batch size
    0'); an explicit batch_n=0 draws no step either (it drew one)."""
    schedule = DiffusionSchedule.linear(5)
    rev = DiffusionReverse(lambda x, t: torch.zeros_like(x), schedule)
    learned = DiffusionReverse(lambda x, t: torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype), schedule,
                               variance="learned")
    x0 = torch.zeros(0, 3, dtype=F64)
    for loss in (diffusion_bound(DDPM(rev, [3])), diffusion_bound(DDPM(rev, [3]), exact_steps=True),
                 simple_diffusion_loss(rev), hybrid_diffusion_loss(DDPM(learned, [3]))):
        assert loss.eval({"x_0": x0}).shape == (0,)
    assert DiscreteUniform(1, 5).sample(batch_n=0)["t"].shape == (0,)


def test_zero_rows_asked_give_zero_draws() -> None:
    """``DDPM.sample(batch_n=0)`` drew one row (``batch_n or 1``); now none, as a torch distribution."""
    s = DiffusionSchedule(DiffusionSchedule.linear(10).betas.double())
    p = DDPM(DiffusionReverse(exact_eps(s), s), [2])
    assert p.sample(batch_n=0)["x_0"].shape == (0, 2)
    assert p.sample(batch_n=2)["x_0"].shape == (2, 2)


def test_a_schedule_converted_to_float64_recomputes_its_table() -> None:
    """``DiffusionSchedule.linear(1000).double()`` kept the per-step table computed in float32 (1 - alpha-bar_1 was
    1.0001659e-04 against beta_1 = 1e-4, 1.7e-4 relative; a DDPM's bound moved by 3e-4 relative); the table is computed
    again from the converted betas (here against the closed forms beta_1 and the cumulative product in float64)."""
    s = DiffusionSchedule.linear(1000).double()
    # (1 - (1 - 1e-4) rounds in float64's last bit: 1.1e-12 relative at beta_1 = 1e-4)
    assert (1 - s.alpha_bar()[1]).item() == pytest.approx(s.betas[0].item(), rel=2e-12)
    assert s.betas[0].item() == 1e-4  # the schedule's own number, not its float32 rounding
    torch.testing.assert_close(s.alpha_bar()[1:], torch.cumprod(1 - s.betas, 0), rtol=1e-15, atol=0)
    assert s.constants().dtype == F64


# ------------------------------------------------------------------ review of stop 36
def test_the_bound_names_data_of_another_shape_than_the_models() -> None:
    """With a network that takes any width, x_0 of shape (4, 1) against features_shape [2] was scored: L_T broadcast
    the data against the prior's two features (2.34 where the one-feature closed form is 1.17), the other terms
    used one feature. The bound now names the shapes; data of the model's shape give L_T's closed form (Ho et al.:
    KL[N(√ᾱ_T x, 1 - ᾱ_T) || N(0, 1)] per feature)."""
    s = DiffusionSchedule.linear(10)
    p = DDPM(DiffusionReverse(lambda x, t: torch.zeros_like(x), s), [2])
    with pytest.raises(ValueError, match=r"x_0 has shape \(4, 1\), but the model's features_shape is \(2,\)"):
        diffusion_bound(p).eval({"x_0": torch.full((4, 1), 0.5)})
    x0 = torch.full((4, 2), 0.5, dtype=torch.float64)
    _, terms = diffusion_bound(p).eval({"x_0": x0}, return_terms=True)
    ab = float(s.alpha_bar().double()[-1])
    closed = 2 * 0.5 * (ab * 0.25 + (1 - ab) - 1 - math.log(1 - ab))
    assert terms["L_T"] == pytest.approx(closed, rel=1e-5)


def test_the_discretised_decoder_names_data_off_its_grid_and_non_finite_parameters() -> None:
    """8-bit data scored with bins=17 summed to a mass of 15.9 over the data's values (a bound below the code length)
    and NaN scored NaN: both are named while validation is on. On the grid, the mass over all levels is 1 (the
    check of Ho et al.'s decoder: the intervals tile the line)."""
    from kizuna.distributions import validation

    s = DiffusionSchedule.linear(10)
    rev = DiffusionReverse(lambda x, t: torch.zeros_like(x), s)
    decoder = DiffusionDecoder(rev, bins=17)
    x1 = torch.zeros(17, 1)
    on_grid = torch.arange(17.0).reshape(17, 1) / 16 * 2 - 1
    with validation(True):
        mass = decoder.get_log_prob({"x_0": on_grid, "x_1": x1}).exp().sum()
        assert float(mass) == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(ValueError, match="is not on the grid of bins=17 levels"):
            decoder.get_log_prob({"x_0": torch.arange(256.0).reshape(256, 1) / 255 * 2 - 1, "x_1": torch.zeros(256, 1)})
        with pytest.raises(ValueError, match="nan"):
            decoder.get_log_prob({"x_0": torch.tensor([[float("nan")]]), "x_1": torch.zeros(1, 1)})
        with pytest.raises(FloatingPointError, match="parameter mean of p\\(x_0\\|x_1\\) is not finite"):
            decoder.get_log_prob({"x_0": torch.zeros(1, 1), "x_1": torch.tensor([[float("nan")]])})
        with pytest.raises(FloatingPointError, match="parameter mean"):
            decoder.sample({"x_1": torch.tensor([[float("nan")]])})


def test_diffusion_settings_are_checked_where_they_are_given() -> None:
    from kizuna.losses import hybrid_diffusion_loss

    s = DiffusionSchedule.linear(10)
    for make in (lambda: DiffusionSchedule.linear(-3), lambda: DiffusionSchedule.linear(2.5),
                 lambda: DiffusionSchedule.cosine(2.5)):
        with pytest.raises(ValueError, match=r"DiffusionSchedule\.(linear|cosine): T must be an integer >= 1"):
            make()
    for step, message in ((11, r"step must lie in \[1, 10\]"), (2.5, "step must be an integer"),
                          (0, "step must be an integer >= 1")):
        with pytest.raises(ValueError, match=message):
            DiffusionReverse(LinearEps(), s, step=step)
        with pytest.raises(ValueError, match=message):
            DiffusionForward(s, step=step)
    q = DiffusionForward(s)
    with pytest.raises(ValueError, match="step numbers, got booleans"):
        q.sample({"x_0": torch.zeros(2, 3), "t": torch.tensor([True, True])})

    class TwoHeads(nn.Module):
        def forward(self, x, t):
            return torch.zeros(x.shape[0], 2 * x.shape[1])

    rev = DiffusionReverse(TwoHeads(), s, variance="learned")
    p = DDPM(rev, [2], decoder=DiffusionDecoder(rev, bins=17, var="img"))  # data called img, not x_0
    loss = hybrid_diffusion_loss(p)
    assert loss.input_var == ["img"]  # one data variable (L_simple read "x_0", L_vlb p's: it needed both)
    assert loss.eval({"img": torch.zeros(3, 2)}).shape == (3,)
    with pytest.raises(ValueError, match="data_var must be the model's data variable"):
        hybrid_diffusion_loss(p, data_var="other")
    for weight in (float("nan"), -1.0, True):
        with pytest.raises(ValueError, match="weight .* must be a finite number >= 0"):
            hybrid_diffusion_loss(p, weight=weight)


def test_double_gives_the_schedules_exact_betas() -> None:
    """The schedules are computed in float64 and kept in the default dtype; .double() cast the float32 rounding
    (beta_1 = 9.99999997e-05, 1 - alpha-bar off by 2.5e-8 relative). Now the float64 numbers come back exactly,
    against numpy's linspace and the cosine formula in float64; betas given as a list come back as given."""
    with torch.random.fork_rng(devices=[]):
        linear = DiffusionSchedule.linear(1000).double()
        np.testing.assert_allclose(linear.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-15, atol=0)
        t = np.arange(1001) / 1000
        f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        cosine = DiffusionSchedule.cosine(1000).double()
        np.testing.assert_allclose(cosine.betas.numpy(), np.minimum(1 - f[1:] / f[:-1], 0.999), rtol=1e-14,
                                   atol=1e-15)
        np.testing.assert_allclose(linear.alpha_bar().numpy()[1:], np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)),
                                   rtol=1e-12)  # (alpha-bar_0 = 1 first)
        assert DiffusionSchedule([0.1, 0.2]).double().betas.tolist() == [0.1, 0.2]
        np.testing.assert_allclose(DiffusionSchedule.linear(10).double().float().double().betas.numpy(),
                                   np.linspace(1e-4, 0.02, 10), rtol=1e-15, atol=0)


@pytest.mark.parametrize("how", ["built on meta", "moved to meta"])
def test_a_schedule_on_the_meta_device_gets_its_betas_back_from_to_empty(how: str) -> None:
    """Deferred initialisation: a schedule built under ``torch.device("meta")`` failed in its value check, and one
    moved to ``meta`` failed in ``to_empty`` (its exact-betas comparison read values a meta tensor lacks). Betas
    given as numbers or built by `linear` / `cosine` come back exactly (numpy's linspace in float64); betas given as a
    tensor are uninitialised after ``to_empty``, as torch's are, and a loaded state brings the table back."""
    def make(build):
        if how == "built on meta":
            with torch.device("meta"):
                return build()
        return build().to("meta")

    linear = make(lambda: DiffusionSchedule.linear(10)).to_empty(device="cpu").double()
    np.testing.assert_allclose(linear.betas.numpy(), np.linspace(1e-4, 0.02, 10), rtol=1e-15, atol=0)
    np.testing.assert_allclose(linear.alpha_bar().numpy()[1:], np.cumprod(1 - np.linspace(1e-4, 0.02, 10)),
                               rtol=1e-14)
    assert make(lambda: DiffusionSchedule([0.1, 0.2])).to_empty(device="cpu").double().betas.tolist() == [0.1, 0.2]
    ref = DiffusionSchedule.cosine(10)
    given = make(lambda: DiffusionSchedule(ref.betas.clone())).to_empty(device="cpu")
    given.load_state_dict(ref.state_dict())
    # (the table of these betas given as a tensor; `ref`'s own is computed from its exact float64 betas, 1 ulp apart)
    torch.testing.assert_close(given.constants(), DiffusionSchedule(ref.betas.clone()).constants(), rtol=0, atol=0)
