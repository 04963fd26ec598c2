"""Score matching losses and Langevin samplers against Gaussian closed forms.

References: the exact score-matching objective (Hyvärinen 2005) of an affine score on Gaussian
data, :math:`J = -\\mathrm{tr}A + \\frac12[\\mathrm{tr}(A\\Sigma A^\\top) + \\|A(\\mu - b)\\|^2]`;
the denoising objective of a linear score, written out; the true score
:math:`-\\Sigma^{-1}(x-\\mu)`; the stationary covariance of the discretised Langevin chain from
``scipy.linalg.solve_discrete_lyapunov``. Monte-Carlo checks at five standard errors (false-alarm
rate 5.7e-7 each) with fixed seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from kizuna.distributions import Deterministic, EnergyDistribution, MultivariateNormal, Normal
from kizuna.losses import (
    DenoisingScoreError,
    ScoreMatchingError,
    denoising_score_matching,
    sliced_score_matching,
)
from kizuna.models import Model
from kizuna.samplers import annealed_langevin_dynamics, langevin_dynamics, score_of

F64 = torch.float64
MU = torch.tensor([1.0, -1.0], dtype=F64)
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)
A = torch.tensor([[1.5, -0.3], [0.2, 0.7]], dtype=F64)  # a fixed (not optimal) score s(x) = -A(x - B)
B = torch.tensor([0.5, 0.2], dtype=F64)


@pytest.fixture(autouse=True)
def _one_thread_seeded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    torch.set_num_threads(threads)


class Affine(Deterministic):
    """The score network s_theta(x) = W x + c."""

    def __init__(self, w: torch.Tensor | None = None, c: torch.Tensor | None = None) -> None:
        super().__init__(var=["s"], cond_var=["x"], name="s_theta")
        self.w = nn.Parameter(torch.zeros(2, 2, dtype=F64) if w is None else w.clone())
        self.c = nn.Parameter(torch.zeros(2, dtype=F64) if c is None else c.clone())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"s": x @ self.w.T + self.c}


def gaussian(n: int, g: torch.Generator) -> torch.Tensor:
    return MU + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(SIGMA).T


def exact_objective() -> float:
    """J for s(x) = -A(x - B) on N(MU, SIGMA)."""
    return float(-torch.trace(A) + 0.5 * (torch.trace(A @ SIGMA @ A.T) + (A @ (MU - B)).pow(2).sum()))


def projection() -> Normal:
    return Normal(var=["v"], loc=torch.zeros(2, dtype=F64), scale=1.0, name="p_v")


# ------------------------------------------------------------------ objectives
def test_exact_score_matching_per_row() -> None:
    """tr(grad s) = -tr A exactly; for a network and for an energy model with the same score."""
    x = gaussian(50, torch.Generator().manual_seed(0))
    expected = -torch.trace(A) + 0.5 * ((x - B) @ A.T).pow(2).sum(1)
    network = Affine(-A, A @ B)
    sym = 0.5 * (A + A.T)  # the energy 0.5 (x-B)^T A_s (x-B) has score -A_s (x - B)
    energy = EnergyDistribution(lambda x: 0.5 * (((x - B) @ sym) * (x - B)).sum(1), var=["x"])
    torch.testing.assert_close(ScoreMatchingError(network).eval({"x": x}), expected)
    expected_sym = -torch.trace(sym) + 0.5 * ((x - B) @ sym).pow(2).sum(1)
    torch.testing.assert_close(ScoreMatchingError(energy).eval({"x": x}), expected_sym)


@pytest.mark.parametrize("variance_reduction", [False, True])
def test_sliced_score_matching_is_unbiased_for_the_exact_objective(variance_reduction: bool) -> None:
    x = gaussian(100_000, torch.Generator().manual_seed(1))
    loss = sliced_score_matching(Affine(-A, A @ B), projection(), n_projections=2,
                                 variance_reduction=variance_reduction)
    rows = loss.eval({"x": x}).detach()
    se = rows.std().item() / math.sqrt(len(rows))
    assert abs(rows.mean().item() - exact_objective()) < 5 * se


def test_denoising_score_matching_closed_form_and_weighting() -> None:
    """s(x~) = -A x~, x~ = x + sigma eps, x ~ N(MU, SIGMA):
    E 1/2 |A x + (sigma A - I/sigma) eps|^2 = 1/2 [tr(A (SIGMA + MU MU^T) A^T) + |sigma A - I/sigma|_F^2]."""
    sigma = 0.5
    noise = Normal(var=["x_tilde"], cond_var=["x"], loc="x", scale=sigma, name="q")
    score = Affine(-A).replace_var(x="x_tilde")
    loss = denoising_score_matching(score, noise)
    x = gaussian(100_000, torch.Generator().manual_seed(2))
    rows = loss.eval({"x": x}).detach()
    second = SIGMA + torch.outer(MU, MU)
    expected = 0.5 * (torch.trace(A @ second @ A.T) + (sigma * A - torch.eye(2, dtype=F64) / sigma).pow(2).sum())
    assert abs(rows.mean().item() - expected.item()) < 5 * rows.std().item() / math.sqrt(len(rows))
    weighted = denoising_score_matching(score, noise, noise_weighting=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        plain = loss.eval({"x": x[:10]})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        torch.testing.assert_close(weighted.eval({"x": x[:10]}), sigma**2 * plain)


# ------------------------------------------------------------------ learning the score
def test_learned_score_matches_the_gaussian_score() -> None:
    """An affine score trained by sliced score matching recovers -SIGMA^-1 (x - MU): every entry of W
    and c within 0.08 (W = -SIGMA^-1 has entries up to 1.79). Denoising score matching with
    sigma = 0.3 recovers the score of the noised data, -(SIGMA + 0.09 I)^-1 (x - MU), as closely."""
    g = torch.Generator().manual_seed(3)
    precision = torch.linalg.inv(SIGMA)
    noise = Normal(var=["x_tilde"], cond_var=["x"], loc="x", scale=0.3, name="q")
    sliced, denoising = Affine(), Affine()
    losses = {
        sliced: sliced_score_matching(sliced, projection(), variance_reduction=True).mean(),
        denoising: denoising_score_matching(denoising.replace_var(x="x_tilde"), noise).mean(),
    }
    models = {net: Model(loss, distributions=[net], optimizer_params={"lr": 0.05}) for net, loss in losses.items()}
    for _ in range(400):
        batch = {"x": gaussian(1024, g)}
        for model in models.values():
            model.train(batch)
    noised = torch.linalg.inv(SIGMA + 0.09 * torch.eye(2, dtype=F64))
    for net, target in ((sliced, precision), (denoising, noised)):
        torch.testing.assert_close(net.w.detach(), -target, atol=0.08, rtol=0)
        torch.testing.assert_close(net.c.detach(), target @ MU, atol=0.08, rtol=0)


# ------------------------------------------------------------------ samplers
def test_langevin_stationary_covariance() -> None:
    """x' = (I - a P/2) x + a P MU / 2 + sqrt(a) z with P = SIGMA^-1: the chain's stationary law is
    N(MU, C) with C = M C M^T + a I (M = I - a P / 2), which tends to SIGMA as a -> 0."""
    p = MultivariateNormal(var=["x"], loc=MU, covariance_matrix=SIGMA)
    step = 0.1
    x = langevin_dynamics(score_of(p), torch.zeros(20_000, 2, dtype=F64), step, 300,
                          generator=torch.Generator().manual_seed(4))
    m = np.eye(2) - step / 2 * np.linalg.inv(SIGMA.numpy())
    cov = linalg.solve_discrete_lyapunov(m, step * np.eye(2))
    emp = np.cov(x.numpy().T)
    se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / len(x))  # Var of a sample covariance
    assert (np.abs(emp - cov) < 5 * se).all(), (emp, cov)
    assert (np.abs(x.mean(0).numpy() - MU.numpy()) < 5 * np.sqrt(np.diag(cov) / len(x))).all()
    assert not np.allclose(cov, SIGMA.numpy(), atol=0.02)  # the bias is real at this step (what the test sees)


def test_annealed_langevin_with_the_exact_noise_conditional_score() -> None:
    """Data N(MU, s^2 I) perturbed at sigma_i has score -(x - MU)/(s^2 + sigma_i^2), so each step is
    linear and the chains' mean and variance follow a deterministic recursion from the uniform start:
    m' = (1 - a/(2v_i)) m + a MU/(2v_i), V' = (1 - a/(2v_i))^2 V + a. The samples' moments must match it
    (5 SE), and the final variance is near the target s^2 + sigma_L^2 (within 3%)."""
    s2, sigmas, eps, n_steps = 0.5, torch.logspace(math.log10(3.0), math.log10(0.05), 8).tolist(), 5e-3, 100

    def score(x: torch.Tensor, i: int) -> torch.Tensor:
        return -(x - MU) / (s2 + sigmas[i] ** 2)

    start = 8 * torch.rand(10_000, 2, dtype=F64) - 4
    x = annealed_langevin_dynamics(score, start, sigmas, eps=eps, n_steps_each=n_steps,
                                   generator=torch.Generator().manual_seed(6))
    mean, var = torch.zeros(2, dtype=F64), torch.full((2,), 64 / 12, dtype=F64)
    for sigma in sigmas:
        a, v = eps * sigma**2 / sigmas[-1] ** 2, s2 + sigma**2
        for _ in range(n_steps):
            mean, var = (1 - a / (2 * v)) * mean + a * MU / (2 * v), (1 - a / (2 * v)) ** 2 * var + a
    assert ((x.mean(0) - mean).abs() < 5 * (var / len(x)).sqrt()).all()
    assert ((x.var(0) - var).abs() < 5 * var * math.sqrt(2 / len(x))).all()
    assert (var / (s2 + sigmas[-1] ** 2) - 1).abs().max() < 0.03


# ------------------------------------------------------------------ text and errors
def test_formulas() -> None:
    noise = Normal(var=["x_tilde"], cond_var=["x"], loc="x", scale=0.1, name="q")
    dsm = denoising_score_matching(Affine().replace_var(x="x_tilde"), noise)
    assert str(dsm) == "E_{q(x_tilde|x)}[1/2||s_{theta}(x_tilde) - ∇_x_tilde log q(x_tilde|x)||^2]"
    assert str(DenoisingScoreError(Affine().replace_var(x="x_tilde"), noise, noise_weighting=True)).startswith("σ^2 ")
    ssm = sliced_score_matching(Affine(), projection())
    assert str(ssm) == "E_{p_{v}(v)}[v^T ∇_x(v^T s_{theta}(x)) + 1/2 (v^T s_{theta}(x))^2]"
    assert str(ScoreMatchingError(Affine())) == "tr(∇_x s_{theta}(x)) + 1/2||s_{theta}(x)||^2"
    assert r"\operatorname{tr}" in ScoreMatchingError(Affine()).to_latex()
    # a sum is bracketed inside a product or a power (their precedence was an atom's)
    assert str(2 * ScoreMatchingError(Affine())) == "2 * (tr(∇_x s_{theta}(x)) + 1/2||s_{theta}(x)||^2)"
    assert ssm.input_var == ["x"] and dsm.input_var == ["x"]


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"s_\{theta\}\(s\|x\) must be conditioned on y"):
        ScoreMatchingError(Affine(), var="y")
    noise = Normal(var=["x_tilde"], cond_var=["x"], loc="x", scale=0.1, name="q")
    with pytest.raises(ValueError, match="must be conditioned on x_tilde"):
        denoising_score_matching(Affine(), noise)
    with pytest.raises(ValueError, match="strictly decreasing"):
        annealed_langevin_dynamics(lambda x, i: x, torch.zeros(1, 2), [0.1, 1.0])
    with pytest.raises(ValueError, match="step_size must be a positive finite number"):
        langevin_dynamics(lambda x: x, torch.zeros(1, 2), 0.0, 10)
    with pytest.raises(ValueError, match=r"the score has shape \(1, 1\)"):
        langevin_dynamics(lambda x: x[:, :1], torch.zeros(1, 2), 0.1, 1)


def test_sliced_score_matching_evaluates_without_gradients() -> None:
    """`Model.test` and fit's validation run under no_grad; the projection's derivative needs a graph there too (it
    raised "element 0 of tensors does not require grad"). The value is the one computed with gradients."""
    x = gaussian(500, torch.Generator().manual_seed(2))
    for reduction in (False, True):
        loss = sliced_score_matching(Affine(-A, A @ B), projection(), variance_reduction=reduction).mean()
        torch.manual_seed(5)
        with_grad = loss.eval({"x": x}).item()
        torch.manual_seed(5)
        with torch.no_grad():
            without = loss.eval({"x": x}).item()
        assert without == pytest.approx(with_grad, rel=1e-12)
    model = Model(sliced_score_matching(Affine(), projection()).mean(), distributions=None)
    assert math.isfinite(model.test({"x": x}).item())


def test_a_score_that_ignores_x_has_trace_zero() -> None:
    """s(x) = c (a constant of x): the exact objective is ||c||² / 2, the sliced one (vᵀc)² / 2 (an error before:
    autograd's "not used in the graph")."""

    class Constant(Deterministic):
        def __init__(self) -> None:
            super().__init__(var=["s"], cond_var=["x"], name="s_c")
            self.c = nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"s": self.c.expand(x.shape[0], 2)}

    x = torch.randn(4, 2, dtype=F64)
    from kizuna.losses import ScoreMatchingError

    torch.testing.assert_close(ScoreMatchingError(Constant()).eval({"x": x}).detach(),
                               torch.full((4,), 2.5, dtype=F64))
    torch.manual_seed(3)
    sliced = sliced_score_matching(Constant(), projection()).eval({"x": x}).detach()
    torch.manual_seed(3)
    v = projection().sample(batch_n=4)["v"]
    torch.testing.assert_close(sliced, 0.5 * (v @ torch.tensor([1.0, -2.0], dtype=F64)).pow(2))


def test_annealed_langevin_takes_a_list_of_levels_at_full_precision() -> None:
    """Noise levels given as Python floats set the steps exactly (a list went through a float32 tensor: 0.1 as
    0.10000000149, the steps 1e-8 off in a float64 chain); against the chain written out by hand."""
    sigmas, eps, n_steps = [1.0, 0.3, 0.1], 2e-3, 3
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = annealed_langevin_dynamics(lambda x, i: -x / sigmas[i], x0, sigmas, eps=eps, n_steps_each=n_steps,
                                     generator=torch.Generator().manual_seed(1))
    g, x = torch.Generator().manual_seed(1), x0.clone()
    for sigma in sigmas:
        alpha = eps * sigma**2 / sigmas[-1] ** 2
        for _ in range(n_steps):
            x = x + 0.5 * alpha * (-x / sigma) + alpha**0.5 * torch.randn(4, 2, dtype=torch.float64, generator=g)
    assert torch.equal(got, x)


def test_the_score_losses_take_scalar_data() -> None:
    """One value per row (shape (B,), as KullbackLeibler and simple_diffusion_loss take it): the closed forms on
    N(0, 2²) (tr ∇s = -1/4, s = -x/4), on the energy x²/2 (tr = -1, s = -x), and the denoising error against the
    kernel N(x̃; x, 0.5²), each as on the same data with one feature per row (all raised: dimension out of range)."""
    x = torch.randn(5, dtype=F64)
    p = Normal(var=["x"], loc=0.0, scale=2.0)
    energy = EnergyDistribution(lambda x: 0.5 * x**2, var=["x"])
    torch.testing.assert_close(ScoreMatchingError(p).eval({"x": x}), -0.25 + 0.5 * (x / 4) ** 2)
    torch.testing.assert_close(ScoreMatchingError(energy).eval({"x": x}), -1 + 0.5 * x**2)
    torch.testing.assert_close(ScoreMatchingError(p).eval({"x": x}), ScoreMatchingError(p).eval({"x": x[:, None]}))

    noise = Normal(var=["xt"], cond_var=["x"], loc="x", scale=0.5, name="q")
    pt = Normal(var=["xt"], loc=0.0, scale=2.0)
    xt = x + torch.randn(5, dtype=F64)
    want = 0.5 * (-xt / 4 + (xt - x) / 0.25) ** 2
    torch.testing.assert_close(DenoisingScoreError(pt, noise).eval({"x": x, "xt": xt}), want)
    torch.testing.assert_close(DenoisingScoreError(pt, noise, noise_weighting=True).eval({"x": x, "xt": xt}),
                               0.25 * want)
    value, d = denoising_score_matching(pt, noise, noise_weighting=True).eval({"x": x}, return_dict=True)
    xt = d["xt"]
    assert xt.shape == (5,)
    torch.testing.assert_close(value, 0.25 * 0.5 * (-xt / 4 + (xt - x) / 0.25) ** 2)


def test_langevin_step_counts_are_checked() -> None:
    """``n_steps=2.5`` raised a bare TypeError from ``range``; ``None`` likewise: each is named."""
    x = torch.zeros(3, 2)
    for bad in (2.5, None, -1, True):
        with pytest.raises(ValueError, match="n_steps must be an integer >= 0"):
            langevin_dynamics(lambda z: -z, x, 0.1, bad)
    with pytest.raises(ValueError, match="n_steps must be an integer >= 0"):
        annealed_langevin_dynamics(lambda z, i: -z, x, [1.0, 0.5], n_steps_each=1.5)
    assert langevin_dynamics(lambda z: -z, x, 0.1, np.int64(2)).shape == x.shape


def test_langevin_steps_and_levels_are_finite_and_projections_counted() -> None:
    """An infinite step or noise level returned all-NaN draws without an error, a non-positive ``eps`` was reported
    as a ``step_size``; ``n_projections`` of 0 or -2 was taken as 1 and 2.5 failed inside torch.Size."""
    x = torch.zeros(3, 2)
    for bad in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError,
                           match=rf"^langevin_dynamics: step_size must be a positive finite number, got {bad}$"):
            langevin_dynamics(lambda z: -z, x, bad, 2)
    with pytest.raises(ValueError, match=r"^annealed_langevin_dynamics: sigmas must be positive, finite and strictly "
                                         r"decreasing, got \[inf, 1.0\]$"):
        annealed_langevin_dynamics(lambda z, i: -z, x, [float("inf"), 1.0], n_steps_each=1)
    for eps in (0.0, -1e-5, float("inf")):
        with pytest.raises(ValueError, match=rf"^annealed_langevin_dynamics: eps \(the step at the smallest level\) "
                                             rf"must be a positive finite number, got {eps}$"):
            annealed_langevin_dynamics(lambda z, i: -z, x, [1.0, 0.5], eps=eps, n_steps_each=1)
    from kizuna.distributions import Normal
    from kizuna.losses import sliced_score_matching

    p_v = Normal(var=["v"], loc=0.0, scale=1.0, features_shape=[2], name="p_v")
    p = Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[2])
    for n in (0, -2, 2.5, None):
        with pytest.raises(ValueError, match=rf"^sliced_score_matching: n_projections must be an integer >= 1, got "
                                             rf"{n}$"):
            sliced_score_matching(p, p_v, n_projections=n)
    assert sliced_score_matching(p, p_v, n_projections=np.int64(3)).eval({"x": torch.zeros(4, 2)}).shape == (4,)
