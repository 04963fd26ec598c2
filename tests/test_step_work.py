"""The training steps of the score-based and diffusion families do no needless work, and the shortcuts
that remove it give the same numbers as the general paths.

References: torch's ``OneHotCategorical`` (log-density, entropy, draws by a chi-square test at a stated
false-alarm rate), torch's ``Normal.variance``, the hand-written denoising score matching and
:math:`L_\\mathrm{simple}` on the same draws, and the exact gradient of
:math:`\\mathbb{E}_{\\mathrm{Cat}(\\pi)}[f]`, :math:`\\partial/\\partial\\theta_k = \\pi_k(f_k - \\sum_j \\pi_j f_j)`
for :math:`\\pi = \\mathrm{softmax}(\\theta)`, against the score-function estimate at five standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import distributions as D
from torch import nn

from kizuna.distributions import (
    Categorical,
    Deterministic,
    DiffusionForward,
    DiffusionReverse,
    DiffusionSchedule,
    Normal,
    validation,
)
from kizuna.losses import Expectation, LogProb, NoisePredictionError, denoising_score_matching, simple_diffusion_loss

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


# ------------------------------------------------------------------ Categorical
def test_categorical_follows_the_validation_switch_and_torch() -> None:
    bad = {"p": torch.tensor([[0.5, -0.1, 0.6]])}
    cat = Categorical(var=["y"], cond_var=["p"], probs="p")
    value = {**bad, "y": torch.tensor([[0.0, 0.0, 1.0]])}
    with validation(True), pytest.raises(ValueError, match="probs"):
        cat.get_log_prob(value)
    with validation(False):  # no check of the probabilities, inner or outer
        cat.get_log_prob(value)
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], dtype=F64)
    y = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    ours = cat.get_dist({"p": probs}, independent=False)
    ref = D.OneHotCategorical(probs=probs)
    torch.testing.assert_close(ours.log_prob(y), ref.log_prob(y), rtol=0, atol=0)
    torch.testing.assert_close(ours.entropy(), ref.entropy(), rtol=0, atol=0)
    assert type(ours.expand([4, 2])) is type(ours) and ours.expand([4, 2]).sample().shape == (4, 2, 3)


def test_categorical_draws_from_a_broadcast_row() -> None:
    """Probabilities expanded over the batch are drawn from their one row (chi-square, false alarms 1e-4)."""
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    prior = Categorical(var=["y"], probs=probs)
    with validation(False):
        draws = prior.sample(batch_n=20_000)["y"]
        many = prior.get_dist({}).expand([50, 40]).sample((3,))
    assert draws.shape == (20_000, 4) and draws.dtype == probs.dtype
    assert bool(((draws == 0) | (draws == 1)).all()) and bool((draws.sum(-1) == 1).all())
    assert many.shape == (3, 50, 40, 4) and bool((many.sum(-1) == 1).all())
    for sample in (draws, many.reshape(-1, 4)):
        counts = sample.sum(0).numpy()
        assert stats.chisquare(counts, probs.numpy() * counts.sum()).pvalue > 1e-4
    rows = Categorical(var=["y"], cond_var=["p"], probs="p")  # different rows: torch's sampler, row by row
    eye = torch.eye(3)
    torch.testing.assert_close(rows.sample({"p": eye})["y"], eye)


# ------------------------------------------------------------------ Expectation
class Quadratic(Normal):
    """p(y|i) = N(c·i, 1): at y = 0, log p = -(c_i)²/2 - log √(2π) for one-hot i."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__(var=["y"], cond_var=["i"], name="p")
        self.register_buffer("c", c)

    def forward(self, i: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": (i @ self.c)[:, None], "scale": torch.ones(len(i), 1, dtype=i.dtype)}


def test_expectation_skips_only_the_zero_score_terms() -> None:
    c = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    f = LogProb(Quadratic(c))
    calls: list[str] = []

    def spied(dist: Categorical) -> Categorical:
        inner = dist.get_log_prob
        dist.get_log_prob = lambda *a, **k: calls.append(dist.name) or inner(*a, **k)  # type: ignore[method-assign]
        return dist

    n = 200_000
    y = {"y": torch.zeros(n, 1, dtype=F64)}
    fixed = spied(Categorical(var=["i"], probs=torch.full((3,), 1 / 3, dtype=F64), name="u"))
    Expectation(fixed, f).eval(y)
    assert calls == []  # constant probabilities: no score-function term to build
    theta = nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=F64))
    learnable = spied(Categorical(var=["i"], logits=theta, name="pi"))
    rows = Expectation(learnable, f).eval(y)
    assert calls == ["pi"]
    rows.mean().backward()
    pi, f_k = theta.detach().softmax(0), -0.5 * c**2 - 0.5 * math.log(2 * math.pi)
    exact = pi * (f_k - (pi * f_k).sum())
    draws = learnable.get_dist({}).expand([n]).sample().to(F64)  # per-row estimate f(i) (e_i - pi)
    per_row = (draws @ f_k)[:, None] * (draws - pi)
    se = per_row.std(0) / math.sqrt(n)
    assert bool(((theta.grad - exact).abs() < 5 * se).all()), (theta.grad, exact, se)
    conditional = spied(Categorical(var=["i"], cond_var=["p"], probs="p", name="q"))
    Expectation(conditional, f).eval({**y, "p": torch.full((n, 3), 1 / 3, dtype=F64)})
    assert calls == ["pi", "q"]  # conditioned: its parameters may depend on anything


# ------------------------------------------------------------------ Normal
def test_normal_variance_from_its_parameters() -> None:
    q = Normal(var=["y"], cond_var=["m"], loc="m", scale=torch.tensor([0.5, 2.0], dtype=F64))
    m = torch.randn(3, 2, dtype=F64)
    with validation(False):
        got = q.sample_variance({"m": m})
    ref = D.Normal(m, torch.tensor([[0.5, 2.0]], dtype=F64)).variance
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    bad = Normal(var=["y"], cond_var=["s"], loc=0.0, scale="s")
    with validation(True), pytest.raises(ValueError, match="scale"):
        bad.sample_variance({"s": torch.tensor([[-1.0]])})


# ------------------------------------------------------------------ score matching
class Recording(Deterministic):
    """s(x~, i) = W x~ (one noise level); records whether x~ required grad when called."""

    def __init__(self) -> None:
        super().__init__(var=["s"], cond_var=["x_tilde"], name="s")
        self.w = nn.Parameter(torch.randn(2, 2, dtype=F64))
        self.seen: list[bool] = []

    def forward(self, x_tilde: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(x_tilde.requires_grad)
        return {"s": x_tilde @ self.w.T}


def test_denoising_score_network_sees_the_noised_value_as_data() -> None:
    """No input gradient is built for x~, and the parameter gradient is the hand-written DSM's."""
    sigma = 0.3
    noise = Normal(var=["x_tilde"], cond_var=["x"], loc="x", scale=sigma, name="q")
    score = Recording()
    x = torch.randn(64, 2, dtype=F64)
    value, drawn = denoising_score_matching(score, noise, noise_weighting=True).eval({"x": x}, return_dict=True)
    assert score.seen == [False]
    (grad,) = torch.autograd.grad(value.mean(), score.w)
    w = score.w.detach().clone().requires_grad_(True)
    xt = drawn["x_tilde"]
    by_hand = (0.5 * sigma**2 * (xt @ w.T + (xt - x) / sigma**2).pow(2).sum(1)).mean()
    (expected,) = torch.autograd.grad(by_hand, w)
    torch.testing.assert_close(value.mean(), by_hand.detach())
    torch.testing.assert_close(grad, expected)


# ------------------------------------------------------------------ diffusion
class LinearEps(nn.Module):
    def __init__(self, d: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d, dtype=F64)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + 0.01 * t.to(x.dtype)[:, None]


def test_noise_prediction_reads_the_noise_of_the_draw() -> None:
    schedule = DiffusionSchedule(torch.linspace(0.01, 0.3, 10, dtype=F64))
    net = LinearEps()
    rev = DiffusionReverse(net, schedule)
    x0 = torch.randn(32, 3, dtype=F64)
    value, drawn = simple_diffusion_loss(rev).eval({"x_0": x0}, return_dict=True)
    ab = schedule.alpha_bar()[drawn["t"]][:, None]
    eps = (drawn["x_t"] - ab.sqrt() * x0) / (1 - ab).sqrt()
    torch.testing.assert_close(value, (eps - net(drawn["x_t"], drawn["t"])).pow(2).sum(1))
    other = DiffusionSchedule(torch.linspace(0.01, 0.3, 10, dtype=F64))
    with pytest.raises(ValueError, match="forward process"):
        NoisePredictionError(rev, noising=DiffusionForward(other))
    with pytest.raises(ValueError, match="forward process"):
        NoisePredictionError(rev, noising=DiffusionForward(schedule, step=3, var="x_t"))


def test_relaxed_categorical_discrete_part_follows_the_validation_switch() -> None:
    """The discrete distribution behind `RelaxedCategorical`'s scoring checks nothing with validation off
    (torch's OneHotCategorical builds its inner Categorical with the process default) and keeps torch's
    log-probabilities."""
    from kizuna.distributions import RelaxedCategorical, validation

    q = RelaxedCategorical(var=["y"], probs=torch.tensor([0.2, 0.3, 0.5]), temperature=0.5)
    with validation(False):
        hard = q._discrete({})
    assert hard._validate_args is False and hard._categorical._validate_args is False
    with validation(True):
        checked = q._discrete({})
    assert checked._categorical._validate_args is True
    y = torch.eye(3)
    torch.testing.assert_close(hard.log_prob(y), torch.distributions.OneHotCategorical(
        probs=torch.tensor([0.2, 0.3, 0.5])).log_prob(y))


def test_a_constant_distribution_sees_its_buffers_data_reassigned() -> None:
    """``cat.probs.data = new`` keeps the tensor object and its version but moves it to new storage: the kept torch
    object is rebuilt (it scored with the old probabilities while sampling used the new); an in-place write under
    ``torch.no_grad()`` is seen too. (An in-place write through ``.data`` is not: documented, not checked.)"""
    cat = Categorical(var=["c"], probs=torch.tensor([0.5, 0.25, 0.25], dtype=F64), name="u")
    x = torch.eye(3, dtype=F64)
    with validation(False):
        torch.testing.assert_close(cat.get_log_prob({"c": x}), torch.tensor([0.5, 0.25, 0.25], dtype=F64).log())
        cat.probs.data = torch.tensor([[0.2, 0.2, 0.6]], dtype=F64)
        torch.testing.assert_close(cat.get_log_prob({"c": x}), torch.tensor([0.2, 0.2, 0.6], dtype=F64).log())
        torch.manual_seed(0)
        freq = cat.sample(batch_n=4000)["c"].mean(0)
        assert abs(freq[2].item() - 0.6) < 5 * math.sqrt(0.6 * 0.4 / 4000)
        with torch.no_grad():
            cat.probs.copy_(torch.tensor([[0.1, 0.1, 0.8]], dtype=F64))
        torch.testing.assert_close(cat.get_log_prob({"c": x}), torch.tensor([0.1, 0.1, 0.8], dtype=F64).log())


def test_a_constant_distribution_keeps_its_torch_object_only_while_its_buffers_are_unchanged() -> None:
    """A distribution whose parameters are all buffers builds its torch object once while they are the
    same tensors at the same version; an in-place write (``fill_``, ``load_state_dict``) or a move makes
    a new one whose values follow (against torch's OneHotCategorical); nothing is kept from inside
    ``torch.inference_mode``; ``get_dist`` always returns a fresh object."""
    levels = Categorical(var=["i"], probs=torch.tensor([0.2, 0.3, 0.5], dtype=F64), name="u")
    with validation(False):
        first = levels._torch_dist({})
        assert levels._torch_dist({}) is first
        x = torch.eye(3, dtype=F64)
        torch.testing.assert_close(levels.get_log_prob({"i": x}), D.OneHotCategorical(torch.tensor([0.2, 0.3, 0.5],
                                   dtype=F64)).log_prob(x), rtol=0, atol=1e-15)
        levels.probs.copy_(torch.tensor([[0.6, 0.3, 0.1]], dtype=F64))
        assert levels._torch_dist({}) is not first
        torch.testing.assert_close(levels.get_log_prob({"i": x}), torch.tensor([0.6, 0.3, 0.1], dtype=F64).log(),
                                   rtol=0, atol=1e-15)
        levels.load_state_dict({"probs": torch.tensor([[0.1, 0.1, 0.8]], dtype=F64)})
        torch.testing.assert_close(levels.get_log_prob({"i": x}), torch.tensor([0.1, 0.1, 0.8], dtype=F64).log(),
                                   rtol=0, atol=1e-15)
        levels.float()  # new buffers
        assert levels._torch_dist({}).probs.dtype == torch.float32
        assert levels.get_dist({}) is not levels.get_dist({})
        with torch.inference_mode():
            inside = levels._torch_dist({})
        assert levels._torch_dist({}) is not inside
        unchecked = levels._torch_dist({})
    with validation(True):  # one object per validation setting
        checked = levels._torch_dist({})
    assert checked is not unchecked and checked._validate_args and not unchecked._validate_args


def _draws_both_ways(p: Normal, x_dict: dict, batch_n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A reparameterised draw without checks (the standard-normal plan where it applies) and with them (torch's
    distribution built and checked, the draw from `_rsample_kernel`), from the same seed."""
    from kizuna.distributions import validation

    out = []
    for check in (False, True):
        torch.manual_seed(3)
        with validation(check):
            out.append(p._sample(x_dict, batch_n, True)["z"])
    return out[0], out[1]


@pytest.mark.parametrize("features", [[], [3], [2, 2]])
def test_standard_normal_draw_plan_is_the_general_draw(features: list[int]) -> None:
    """N(0, 1) given as numbers draws ``randn`` of the rows and features from a plan kept between draws: the same
    numbers, shape and dtype as the general draw, for ``batch_n``, the rows of other values and one row; after a
    buffer changes (``scale.fill_``: no longer standard), after ``.double()`` and with a buffer that requires grad it
    still agrees (the plan is rebuilt or the general path draws)."""
    p = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=features)
    for x_dict, batch_n in (({}, 4), ({"x": torch.zeros(5, 1)}, None), ({}, None)):
        fast, general = _draws_both_ways(p, x_dict, batch_n)
        assert fast.shape == general.shape == (batch_n or (5 if x_dict else 1), *features)
        assert torch.equal(fast, general)
        torch.manual_seed(3)
        assert torch.equal(fast, torch.randn(fast.shape))
    with torch.no_grad():
        p.scale.fill_(2.0)
    fast, general = _draws_both_ways(p, {}, 6)
    assert torch.equal(fast, general)
    torch.manual_seed(3)
    assert torch.equal(fast, 2.0 * torch.randn(6, *features))
    with torch.no_grad():
        p.scale.fill_(1.0)
    p = p.double()
    fast, general = _draws_both_ways(p, {}, 2)
    assert fast.dtype == general.dtype == torch.float64 and torch.equal(fast, general)
    p.loc.requires_grad_(True)
    fast, general = _draws_both_ways(p, {}, 2)
    assert fast.requires_grad and torch.equal(fast, general)
