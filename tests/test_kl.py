"""`KullbackLeibler`: analytic (torch's registry) against Monte Carlo, closed forms and quadrature.

Tolerance of the Monte-Carlo checks: ``N_SE`` (5) standard errors of the mean of
``log p - log q``, measured on the very draws of the estimate (see ``mc_reference``).
"""

import math

import numpy as np
import pytest
import torch
from mc_reference import assert_mc_close, default_dtype, standard_error
from scipy import integrate, stats

from kizuna.distributions import Bernoulli, Beta, Categorical, Dirichlet, Laplace, Normal, StudentT
from kizuna.losses import KullbackLeibler

N_MC = 100_000


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


def _pair(family, p_params, q_params):
    """p and q of one family, every parameter read from a conditioning variable (batch 3)."""
    def make(name, params):
        cond = {k: f"{name}_{k}" for k in params}
        return family(var=["z"], cond_var=list(cond.values()), name=name, **cond)

    x = {f"p_{k}": v for k, v in p_params.items()} | {f"q_{k}": v for k, v in q_params.items()}
    return make("p", p_params), make("q", q_params), x


def _positive(*shape):
    return torch.rand(*shape) * 3 + 0.5


CASES = {
    "Normal": lambda: (Normal, {"loc": torch.randn(3, 4), "scale": _positive(3, 4)},
                       {"loc": torch.randn(3, 4), "scale": _positive(3, 4)}),
    "Bernoulli": lambda: (Bernoulli, {"probs": torch.rand(3, 4) * 0.8 + 0.1},
                          {"probs": torch.rand(3, 4) * 0.8 + 0.1}),
    "Categorical": lambda: (Categorical, {"probs": torch.randn(3, 2, 5).softmax(-1)},
                            {"probs": torch.randn(3, 2, 5).softmax(-1)}),
    "Beta": lambda: (Beta, {"concentration1": _positive(3, 4), "concentration0": _positive(3, 4)},
                     {"concentration1": _positive(3, 4), "concentration0": _positive(3, 4)}),
    "Dirichlet": lambda: (Dirichlet, {"concentration": _positive(3, 2, 4)}, {"concentration": _positive(3, 2, 4)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_analytic_kl_matches_monte_carlo(case):
    torch.manual_seed(0)
    p, q, x = _pair(*CASES[case]())
    analytic = KullbackLeibler(p, q)
    mc = KullbackLeibler(p, q, analytic=False, sample_shape=(N_MC,))
    assert (analytic.method, mc.method) == ("analytic", "monte_carlo")

    exact = analytic.eval(x)
    estimate, draws = mc.eval(x, return_dict=True)
    z = draws["z"]  # (N_MC, 3, *features): the draws behind the estimate
    log_ratio = p.get_dist(x).log_prob(z) - q.get_dist(x).log_prob(z)
    assert exact.shape == estimate.shape == (3,)
    torch.testing.assert_close(estimate, log_ratio.mean(0))  # the estimate is the mean over these draws
    assert_mc_close(estimate, exact, standard_error(log_ratio), what=f"KL {case}")


def test_analytic_normal_kl_matches_closed_form():
    torch.manual_seed(1)
    p, q, x = _pair(*CASES["Normal"]())
    m1, s1, m2, s2 = (x[k].numpy() for k in ("p_loc", "p_scale", "q_loc", "q_scale"))
    # KL[N(m1,s1^2)||N(m2,s2^2)] = log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2, summed over features
    expected = (np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5).sum(1)
    np.testing.assert_allclose(KullbackLeibler(p, q).eval(x).numpy(), expected, rtol=1e-12)


def _quad_kl(p, q):
    """KL[p||q] of frozen scipy distributions by quadrature, split at both locations (Laplace kinks)."""
    def integrand(t):
        lp = p.logpdf(t)
        # far in the tails p underflows to 0 (and scipy's Laplace logpdf to -inf): no contribution
        return 0.0 if math.exp(lp) == 0.0 else math.exp(lp) * (lp - q.logpdf(t))

    edges = [-np.inf, *sorted({p.mean(), q.mean()}), np.inf]
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        value, abserr = integrate.quad(integrand, lo, hi, epsabs=1e-13, epsrel=1e-11, limit=400)
        assert abserr < 1e-9
        total += value
    return total


def _quad_kl_rows(p_scipy, q_scipy):
    """Sum over features of the per-feature KL by quadrature; arguments give frozen scipy dists per (row, feature)."""
    rows, features = len(p_scipy), len(p_scipy[0])
    return np.array([sum(_quad_kl(p_scipy[r][f], q_scipy[r][f]) for f in range(features))
                     for r in range(rows)])


def _student_normal():
    df = torch.tensor([5.0, 6.5, 9.0])  # df > 4: log p - log q ~ t^2 has a finite variance, so the SE exists
    x = {"pm": [[0.0, 1.0, -0.5], [0.3, -1.0, 2.0]], "ps": [[1.0, 0.5, 2.0], [0.7, 1.5, 1.2]],
         "qm": [[0.5, 0.0, 0.0], [0.0, -2.0, 1.0]], "qs": [[1.5, 1.0, 1.0], [0.9, 2.0, 3.0]]}
    x = {k: torch.tensor(v) for k, v in x.items()}
    p = StudentT(var=["z"], cond_var=["pm", "ps"], df=df, loc="pm", scale="ps", name="p")
    q = Normal(var=["z"], cond_var=["qm", "qs"], loc="qm", scale="qs", name="q")
    ref_p = [[stats.t(df[f].item(), x["pm"][r, f].item(), x["ps"][r, f].item()) for f in range(3)] for r in range(2)]
    ref_q = [[stats.norm(x["qm"][r, f].item(), x["qs"][r, f].item()) for f in range(3)] for r in range(2)]
    return p, q, x, ref_p, ref_q


def test_pair_without_registry_entry_uses_monte_carlo_and_matches_quadrature():
    torch.manual_seed(2)
    p, q, x, ref_p, ref_q = _student_normal()
    kl = KullbackLeibler(p, q, sample_shape=(N_MC,))
    assert kl.method == "monte_carlo"
    estimate, draws = kl.eval(x, return_dict=True)
    log_ratio = p.get_dist(x).log_prob(draws["z"]) - q.get_dist(x).log_prob(draws["z"])
    assert_mc_close(estimate, _quad_kl_rows(ref_p, ref_q), standard_error(log_ratio), what="KL[StudentT||Normal]")


def test_analytic_true_without_registry_entry_raises():
    p, q, *_ = _student_normal()
    with pytest.raises(ValueError, match="no analytic KL"):
        KullbackLeibler(p, q, analytic=True)


@pytest.mark.parametrize("families", [(Laplace, Normal), (Normal, Laplace)], ids=["Laplace-Normal", "Normal-Laplace"])
def test_registry_entry_matches_quadrature(families):
    # torch registers these cross-family formulas; check kizuna uses them and they are right
    fp, fq = families
    x = {"pm": torch.tensor([[0.0, 1.0], [-0.5, 2.0]]), "ps": torch.tensor([[1.0, 0.5], [2.0, 0.8]]),
         "qm": torch.tensor([[0.5, 0.0], [0.0, 1.0]]), "qs": torch.tensor([[1.5, 1.0], [0.9, 2.0]])}
    p = fp(var=["z"], cond_var=["pm", "ps"], loc="pm", scale="ps", name="p")
    q = fq(var=["z"], cond_var=["qm", "qs"], loc="qm", scale="qs", name="q")
    kl = KullbackLeibler(p, q)
    assert kl.method == "analytic"
    scipy_of = {Normal: stats.norm, Laplace: stats.laplace}

    def ref(family, m, s):
        return [[scipy_of[family](m[r, f].item(), s[r, f].item()) for f in range(2)] for r in range(2)]

    expected = _quad_kl_rows(ref(fp, x["pm"], x["ps"]), ref(fq, x["qm"], x["qs"]))
    np.testing.assert_allclose(kl.eval(x).numpy(), expected, rtol=1e-8)


def test_analytic_false_forces_monte_carlo_and_analytic_true_keeps_closed_form():
    p, q, _ = _pair(*CASES["Normal"]())
    assert KullbackLeibler(p, q, analytic=False).method == "monte_carlo"
    assert KullbackLeibler(p, q, analytic=True).method == "analytic"


def test_kl_between_different_variables_raises():
    p = Normal(var=["z"], loc=0.0, scale=1.0)
    q = Normal(var=["y"], loc=0.0, scale=1.0)
    with pytest.raises(ValueError, match="same variables"):
        KullbackLeibler(p, q)


def test_constant_parameters_give_one_row_on_both_paths():
    # unbatched parameters: both paths return one value per (single) row, as Entropy does
    p = Normal(var=["z"], loc=torch.tensor([0.0, 1.0]), scale=torch.tensor([1.0, 2.0]), name="p")
    q = Normal(var=["z"], loc=0.5, scale=1.5, features_shape=[2], name="q")
    analytic = KullbackLeibler(p, q).eval({})
    mc = KullbackLeibler(p, q, analytic=False, sample_shape=(10,)).eval({})
    assert analytic.shape == mc.shape == (1,)


def test_dim_sums_the_per_feature_kl_over_the_given_dims_as_in_pixyz():
    """``dim=`` keeps Pixyz's meaning: sum the elementwise (analytic) KL over those dims."""
    g = torch.Generator().manual_seed(3)
    loc, scale = torch.randn(4, 2, 3, generator=g, dtype=torch.float64), torch.rand(4, 2, 3, generator=g,
                                                                                    dtype=torch.float64) + 0.5
    q = Normal(var=["z"], cond_var=["m", "s"], loc="m", scale="s", name="q")
    prior = Normal(var=["z"], loc=torch.zeros(2, 3, dtype=torch.float64), scale=torch.ones(2, 3, dtype=torch.float64))
    values = {"m": loc, "s": scale}
    # closed form KL[N(m, s^2) || N(0, 1)] per element
    elementwise = (0.5 * (scale**2 + loc**2 - 1) - torch.log(scale)).numpy()
    np.testing.assert_allclose(KullbackLeibler(q, prior, dim=2).eval(values).numpy(), elementwise.sum(2), rtol=1e-12)
    np.testing.assert_allclose(KullbackLeibler(q, prior, dim=(1, 2)).eval(values).numpy(),
                               elementwise.sum((1, 2)), rtol=1e-12)
    np.testing.assert_allclose(KullbackLeibler(q, prior).eval(values).numpy(), elementwise.sum((1, 2)), rtol=1e-12)
    with pytest.raises(ValueError, match="dim= needs the analytic KL"):
        KullbackLeibler(q, prior, analytic=False, dim=1)
    # Pixyz reads ``dim`` with ``if self.dim:``: 0 and an empty list are its default, one value per row (kizuna
    # summed over the batch for 0, and over everything for [], so a ported program's loss was another number)
    for falsy in (0, [], (), np.int64(0)):
        np.testing.assert_allclose(KullbackLeibler(q, prior, dim=falsy).eval(values).numpy(),
                                   elementwise.sum((1, 2)), rtol=1e-12)
    KullbackLeibler(q, prior, analytic=False, dim=0)  # the default: no analytic KL needed


def test_kl_to_a_standard_normal_given_as_numbers_matches_torch():
    """A prior written with the numbers 0 and 1 (``Normal(loc=0., scale=1.)``, the usual VAE prior) takes the Normal
    kernel's shortcut to N(0, 1); against torch.distributions.kl_divergence per row, in float64 and float32 (the
    shortcut had no test of its own: a wrong log term in it was caught only by the Ladder VAE's bound)."""
    for dtype in (torch.float64, torch.float32):
        g = torch.Generator().manual_seed(4)
        loc, scale = torch.randn(6, 3, generator=g, dtype=dtype), torch.rand(6, 3, generator=g, dtype=dtype) + 0.2
        q = Normal(var=["z"], cond_var=["m", "s"], loc="m", scale="s", name="q")
        prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[3], name="p").to(dtype)
        assert prior._is_standard_normal()
        got = KullbackLeibler(q, prior).eval({"m": loc, "s": scale})
        ref = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                                torch.distributions.Normal(torch.zeros_like(loc),
                                                                           torch.ones_like(scale))).sum(-1)
        torch.testing.assert_close(got, ref, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


def test_kl_and_entropy_of_relaxed_families_are_the_discrete_closed_forms():
    """A relaxed family scores with its discrete likelihood, so its KL and entropy are the discrete family's closed
    forms (values and gradients against torch's Categorical / Bernoulli, both directions). The KL was a one-draw
    Monte-Carlo estimate (noisy, negative at times), and a Model's first, validated step failed: a relaxed draw is
    outside a Categorical's one-hot support."""
    from kizuna.distributions import RelaxedBernoulli, RelaxedCategorical
    from kizuna.losses import CrossEntropy, Entropy
    from kizuna.models import Model

    D = torch.distributions
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    prior = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    q = RelaxedCategorical(var=["y"], cond_var=["l"], logits="l", name="q")
    p = Categorical(var=["y"], probs=prior, name="p")
    for a, b, ref in ((q, p, lambda: D.kl_divergence(D.Categorical(logits=logits), D.Categorical(prior))),
                      (p, q, lambda: D.kl_divergence(D.Categorical(prior), D.Categorical(logits=logits)))):
        kl = KullbackLeibler(a, b)
        assert kl.method == "analytic"
        ours, theirs = kl.eval({"l": logits}), ref()
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(ours.sum(), logits)[0],
                                   torch.autograd.grad(theirs.sum(), logits)[0], rtol=1e-10, atol=1e-12)
    assert KullbackLeibler(q, p, analytic=False).method == "monte_carlo"  # the user's choice stands
    entropy = Entropy(q)
    assert entropy.method == "analytic"
    torch.testing.assert_close(entropy.eval({"l": logits}), D.Categorical(logits=logits).entropy())
    torch.testing.assert_close(CrossEntropy(q, p).eval({"l": logits}),
                               D.Categorical(logits=logits).entropy() + D.kl_divergence(D.Categorical(logits=logits),
                                                                                          D.Categorical(prior)))
    probs = torch.rand(4, 2, dtype=torch.float64) * 0.9 + 0.05
    qb = RelaxedBernoulli(var=["b"], cond_var=["m"], probs="m", name="q")
    pb = Bernoulli(var=["b"], probs=torch.tensor([0.3, 0.6], dtype=torch.float64), name="p")
    torch.testing.assert_close(KullbackLeibler(qb, pb).eval({"m": probs}),
                               D.kl_divergence(D.Bernoulli(probs), D.Bernoulli(pb.probs.expand(4, 2))).sum(-1))
    # a model trains on it from its first (validated) step
    net = torch.nn.Linear(2, 3).double()

    class Classifier(RelaxedCategorical):
        def __init__(self) -> None:
            super().__init__(var=["y"], cond_var=["x"], name="q")
            self.net = net

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(x)}

    model = Model(KullbackLeibler(Classifier(), p).mean(), optimizer_params={"lr": 0.1})
    losses = [model.train({"x": torch.randn(8, 2, dtype=torch.float64)}).item() for _ in range(30)]
    assert min(losses) >= 0 and losses[-1] < losses[0]


def test_a_relaxed_categoricals_own_float32_draws_are_on_its_support_under_validation() -> None:
    """A float32 relaxed draw at a low temperature sums to 1 within about 1e-5 (torch's own check, 1e-6, refuses
    torch's own draws): the Monte-Carlo KL (analytic=False) of such draws failed on a validated step. They are
    scored now; rows that do not sum to 1 are still refused. The estimate agrees with the closed form of the
    discrete family that scores them (the KL of the probabilities) within Monte-Carlo error and the relaxation's
    O(temperature) bias (the draws' mean is the probabilities as the temperature goes to 0)."""
    import torch
    from torch import distributions as D

    from kizuna.distributions import RelaxedCategorical, validation
    from kizuna.losses import KullbackLeibler

    torch.manual_seed(0)
    probs = torch.softmax(3 * torch.randn(2000, 10, dtype=torch.float32), -1)

    class Q(RelaxedCategorical):
        def forward(self, x):
            return {"probs": probs[x.long()]}

    rows = torch.arange(2000).repeat(3)
    uniform = torch.full((10,), 0.1, dtype=torch.float32)
    exact = D.kl_divergence(D.Categorical(probs=probs), D.Categorical(probs=uniform))[rows]
    for temperature in (0.1, 0.01):
        t = torch.tensor(temperature, dtype=torch.float32)
        q = Q(var=["z"], cond_var=["x"], temperature=t, name="q")
        p = RelaxedCategorical(var=["z"], probs=uniform, temperature=t, name="p")
        with validation(True):
            mc = KullbackLeibler(q, p, analytic=False).eval({"x": rows})
        assert mc.dtype == torch.float32
        gap = mc - exact
        assert abs(gap.mean()) < 5 * gap.std() / len(gap) ** 0.5 + 0.5 * temperature, temperature
    with pytest.raises(ValueError, match="must lie in Simplex"), validation(True):
        p.get_log_prob({"z": torch.tensor([[0.5, 0.6] + [0.0] * 8], dtype=torch.float32)})


def test_a_declared_feature_shape_is_kept_by_the_closed_form() -> None:
    """A prior over 1 feature against q's parameters of 3: the closed form broadcast it (3 KLs to N(0, 1) summed)
    while the Monte-Carlo path refused the pair; both refuse it now (under validation, as a model's first step),
    and a prior over the same 3 features gives torch's KL."""
    import torch
    from torch import distributions as D

    from kizuna.distributions import Normal, validation
    from kizuna.losses import CrossEntropy

    a, b = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) + 0.5
    q = Normal(var=["z"], cond_var=["a", "b"], loc="a", scale="b", name="q")
    prior1 = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="prior").double()
    with validation(True):
        for loss in (KullbackLeibler(q, prior1), CrossEntropy(q, prior1), KullbackLeibler(q, prior1, analytic=False)):
            with pytest.raises(ValueError, match=r"\(1,\)|expected \(batch, 1\)"):
                loss.eval({"a": a, "b": b})
        prior3 = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[3], name="prior").double()
        expected = D.kl_divergence(D.Normal(a, b), D.Normal(0.0, 1.0)).sum(1)
        torch.testing.assert_close(KullbackLeibler(q, prior3).eval({"a": a, "b": b}), expected)


def test_losses_name_arguments_that_are_not_distributions() -> None:
    from kizuna.distributions import Normal
    from kizuna.losses import IWAE, CrossEntropy, Entropy

    q = Normal(var=["z"], loc=0.0, scale=1.0, name="q")
    for build, name in ((lambda: KullbackLeibler(q, "prior"), "KullbackLeibler: q"),
                        (lambda: CrossEntropy(q, "p"), "CrossEntropy: q"), (lambda: Entropy("q"), "Entropy: p"),
                        (lambda: IWAE(q, "q"), "IWAE: q")):
        with pytest.raises(TypeError, match=f"{name} must be a kizuna distribution, got str"):
            build()
