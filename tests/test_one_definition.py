"""One definition of every formula: the training step evaluates the same estimator as ``Loss.eval``.

References: torch.distributions (the closed-form hooks of the families: same values, same random
stream), and ``Loss.eval`` computed with torch's own objects (`conftest.torch_objects`) for the path `Model`
takes (the hooks). Covered: every loss class of ``kizuna.losses`` (a meta-test),
networks with dropout in train mode, and IWAE, whose proposal's network must run once per row
(the removed hand-written plan ran it on all k repeated rows and gave another estimate under
dropout: 4.36 vs 4.23 for the same seed).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import torch_objects
from torch import distributions as D
from torch import nn
from torch.nn import functional as F

import kizuna.losses as L
from kizuna.distributions import (
    Bernoulli,
    Categorical,
    Normal,
    StudentT,
    set_validation,
    validation,
    validation_enabled,
)
from kizuna.distributions.families import bernoulli_log_prob_from_probs
from kizuna.losses import (
    ELBO,
    IWAE,
    REINFORCE,
    ConstantVar,
    CrossEntropy,
    Entropy,
    Expectation,
    IterativeLoss,
    KullbackLeibler,
    LogProb,
    MaxLoss,
    MinLoss,
    Parameter,
    Prob,
)
from kizuna.models import Model

D_X, D_Z = 5, 3


class Encoder(Normal):
    """q(z|x) with dropout: stochastic in train mode, and it counts the rows it sees."""

    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Sequential(nn.Linear(D_X, 16), nn.Dropout(0.3), nn.Linear(16, 2 * D_Z)).double()
        self.rows = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.rows += x.shape[0]
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}


class Decoder(Bernoulli):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Sequential(nn.Linear(D_Z, 16), nn.Dropout(0.3), nn.Linear(16, D_X)).double()

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(z)}


class NormalDecoder(Normal):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p_n")
        self.net = nn.Linear(D_Z, D_X).double()

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.net(z), "scale": 0.7}


class ClassEncoder(Categorical):
    def __init__(self) -> None:
        super().__init__(var=["c"], cond_var=["x"], name="q_c")
        self.net = nn.Linear(D_X, D_X).double()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def prior(loc: float = 0.0, scale: float = 1.0) -> Normal:
    return Normal(var=["z"], loc=loc, scale=scale, features_shape=[D_Z], name="p_prior").double()


def data(n: int = 8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"x": (torch.rand(n, D_X, generator=gen, dtype=torch.float64) > 0.5).double()}


def losses() -> dict[str, L.Loss]:
    torch.manual_seed(0)
    q, p, pn = Encoder(), Decoder(), NormalDecoder()
    student = StudentT(var=["z"], df=4.0, loc=0.0, scale=1.0, features_shape=[D_Z], name="p_t").double()
    by_class = Normal(var=["x"], cond_var=["c"], loc="c", scale=1.0, name="p_c")
    step = (KullbackLeibler(q, prior()) - Expectation(q, LogProb(p))).mean()
    return {
        "vae": (KullbackLeibler(q, prior()) - Expectation(q, LogProb(p))).mean(),
        "normal decoder, prior N(0.5, 2)": (KullbackLeibler(q, prior(0.5, 2.0)) - Expectation(q, LogProb(pn))).sum(),
        "monte carlo KL": (KullbackLeibler(q, student) - Expectation(q, LogProb(p))).mean(),
        "KL with dim": KullbackLeibler(q, prior(), dim=1).mean(),
        "ELBO": -ELBO(p * prior(), q, sample_shape=(3,)).mean(),
        "IWAE": -IWAE(p * prior(), q, k=4).mean(),
        "expectation with sample_shape": -Expectation(q, LogProb(p), sample_shape=(2,)).mean() / 2,
        "score function (categorical draws)": -Expectation(ClassEncoder(), LogProb(by_class)).mean(),
        "REINFORCE": -REINFORCE(q, LogProb(p), sample_shape=(3,), baseline="loo").mean(),
        "constants and parameters": (ConstantVar(Parameter("beta") * KullbackLeibler(q, prior()), {"beta": 0.5})
                                     - Expectation(q, LogProb(p))).mean(),
        "entropy and cross-entropy": (Entropy(q) + CrossEntropy(q, prior())).mean(),
        "probability, abs, pow, min, max": (Expectation(q, Prob(prior())).mean()
                                            + (-Expectation(q, LogProb(p))).abs().mean()
                                            + KullbackLeibler(q, prior()).mean() ** 2
                                            + MinLoss(KullbackLeibler(q, prior()), 1.0).mean()
                                            + MaxLoss(KullbackLeibler(q, prior()), 1.0).mean()
                                            + KullbackLeibler(q, prior()).detach().mean()),
        "iterative": IterativeLoss(step, max_iter=2),
    }


# Loss classes that need machinery of their own (a discriminator, a sampler, a diffusion chain, kernels
# of two samples, a flow's velocity field, a codebook); each has its own test file that evaluates it
# through Model as well (test_gan, test_ebm, test_score, test_diffusion, test_sample_distances,
# test_flow_matching, test_vq).
OWN_TESTS = {
    "AdversarialJensenShannon", "AdversarialKullbackLeibler", "AdversarialWassersteinDistance",
    "ContrastiveDivergence", "DenoisingScoreError", "ScoreMatchingError", "SlicedScoreError", "SumOverSteps",
    "NoisePredictionError", "MMD", "WassersteinDistance", "Loss", "VQCommitment", "VelocityError",
}


def test_every_loss_class_is_covered() -> None:
    covered: set[str] = set()
    stack = list(losses().values())
    while stack:
        node = stack.pop()
        covered.add(type(node).__name__)
        stack.extend(node.subterms())
    exported = {n for n in L.__all__ if isinstance(getattr(L, n), type) and issubclass(getattr(L, n), L.Loss)}
    missing = sorted(exported - covered - OWN_TESTS)
    assert not missing, f"loss classes not in losses(): {missing}"


@pytest.mark.parametrize("name", list(losses()))
def test_the_fast_path_is_the_same_estimator(name: str) -> None:
    """The families' kernels (validation off, as `Model.train` after its first step) and torch's objects
    (`torch_objects`, validation on): the same value and gradients for the same seed, with dropout active (train
    mode); and validation on with the kernels gives the kernels' numbers exactly (it adds checks only)."""
    loss = losses()[name]
    x = data()
    params = [p for d in loss.distributions() for p in d.parameters()]
    results = []
    for checked in (True, False):
        torch.manual_seed(1)
        with validation(checked), torch_objects(*(loss.distributions() if checked else [])):
            value = loss.eval(x)
        grads = torch.autograd.grad(value, params, allow_unused=True) if value.requires_grad else []
        results.append((value.detach(), [g for g in grads if g is not None]))
    (v1, g1), (v2, g2) = results
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.manual_seed(1)
    with validation(True):
        assert torch.equal(loss.eval(x).detach(), v2)


@pytest.mark.parametrize("name", ["vae", "IWAE", "ELBO", "expectation with sample_shape"])
def test_model_trains_on_the_value_eval_gives(name: str) -> None:
    """`Model.train` returns the loss it steps on: ``loss.eval``'s for the same seed (train mode)."""
    loss = losses()[name]
    x = data()
    model = Model(loss, optimizer=torch.optim.SGD, optimizer_params={"lr": 0.0}, validate=False)
    model.distributions.train(True)
    torch.manual_seed(3)
    expected = loss.eval(x).item()
    torch.manual_seed(3)
    assert model.train(x).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_iwae_runs_the_proposal_once_per_row() -> None:
    q, p = Encoder(), Decoder()
    bound = IWAE(p * prior(), q, k=50)
    x = data(8)
    bound.eval(x)
    assert q.rows == 8
    model = Model(-bound.mean(), validate=False)
    q.rows = 0
    model.train(x)
    assert q.rows == 8
    q.rows = 0
    Expectation(q, LogProb(p) - LogProb(q), sample_shape=(5,)).eval(x)
    assert q.rows == 8  # q's parameters computed once, its log-density on the 5 draws reuses them


def test_normal_hooks_are_torchs_formulas_and_random_stream() -> None:
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    scale = torch.rand(6, 4, generator=gen, dtype=torch.float64) + 0.1
    value = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    n = Normal(var=["x"])
    params = {"loc": loc, "scale": scale}
    # the density through z = (x - mu) / sigma: torch's value to rounding (its sigma^2 overflows, see below)
    torch.testing.assert_close(n._log_prob_kernel(value, params), D.Normal(loc, scale).log_prob(value),
                               rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(n._score_kernel(value, params), -(value - loc) / scale**2, rtol=1e-14, atol=1e-14)
    torch.manual_seed(5)
    ours = n._rsample_kernel(torch.Size([3, 6, 4]), params)
    torch.manual_seed(5)
    assert torch.equal(ours, D.Normal(loc, scale).rsample((3,)))
    # one draw per row (the parameters' own shape), also from views that are not contiguous: a column block of a
    # network's output (as ``chunk`` gives) and a transposed tensor; torch fills its draw in row-major order
    for view in (torch.cat([loc, scale], -1)[:, :4], loc.T.contiguous().T):
        torch.manual_seed(6)
        ours = n._rsample_kernel(view.shape, {"loc": view, "scale": scale})
        torch.manual_seed(6)
        assert torch.equal(ours, D.Normal(view, scale).rsample())
    q_loc, q_scale = torch.randn(1, 4, dtype=torch.float64), torch.rand(1, 4, dtype=torch.float64) + 0.5
    torch.testing.assert_close(n._kl_kernel(Normal(var=["x"]), params, {"loc": q_loc, "scale": q_scale}),
                               D.kl_divergence(D.Normal(loc, scale), D.Normal(q_loc, q_scale)), rtol=0, atol=0)


def test_kl_to_the_standard_normal_is_torchs_value_and_gradient_and_notices_a_changed_prior() -> None:
    """The short form of KL[q||N(0, 1)] (a prior given as the numbers 0 and 1) against torch's
    ``kl_normal_normal``: values bit for bit, gradients; once the prior's buffers change (``fill_``,
    ``load_state_dict``) the general formula is used and the value follows the new prior."""
    gen = torch.Generator().manual_seed(3)
    loc = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(7, 5, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    q = Normal(var=["z"], cond_var=["m", "s"], loc="m", scale="s", name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[5]).double()
    kl = KullbackLeibler(q, prior)
    values = {"m": loc, "s": scale}

    def check(prior_loc: float) -> None:
        with validation(False):
            ours = kl.eval(values)
        ref = D.kl_divergence(D.Normal(loc, scale), D.Normal(prior_loc, 1.0)).sum(-1)
        assert torch.equal(ours, ref)  # bit for bit: a checked step and an unchecked one give the same numbers
        for a, b in zip(torch.autograd.grad(ours.sum(), (loc, scale)), torch.autograd.grad(ref.sum(), (loc, scale))):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    assert prior._is_standard_normal()
    check(0.0)
    prior.loc.fill_(0.5)
    assert not prior._is_standard_normal()
    check(0.5)
    prior.load_state_dict({"loc": torch.zeros(1, 5, dtype=torch.float64),
                           "scale": torch.ones(1, 5, dtype=torch.float64)})
    assert prior._is_standard_normal()
    check(0.0)
    prior.load_state_dict({"loc": torch.full((1, 5), -2.0, dtype=torch.float64),
                           "scale": torch.ones(1, 5, dtype=torch.float64)})
    assert not prior._is_standard_normal()
    check(-2.0)
    # a prior given as tensors, or with another scale, never takes the short form
    assert not Normal(var=["z"], loc=torch.zeros(5), scale=torch.ones(5))._is_standard_normal()
    assert not Normal(var=["z"], loc=0.0, scale=2.0)._is_standard_normal()


def test_kl_to_the_standard_normal_notices_a_prior_changed_through_its_data_or_under_no_grad() -> None:
    """The short form of KL[q||N(0, 1)] is left once the prior's scale changes: by reassigning ``.data`` (new storage,
    the same tensor object and version: the shortcut was kept, KL 0.0 instead of 0.6363 per feature) or by an
    in-place write under ``torch.no_grad()`` (the documented way; ``.data.fill_`` is not seen)."""
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    x = torch.zeros(3, 2)

    def expected(scale: float) -> torch.Tensor:
        return D.kl_divergence(D.Normal(x, 1.0), D.Normal(0.0, scale)).sum(-1)

    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    kl = KullbackLeibler(q, prior)
    torch.testing.assert_close(kl.eval({"x": x}), expected(1.0))
    prior.scale.data = torch.full((1, 2), 2.0)
    assert not prior._is_standard_normal()
    torch.testing.assert_close(kl.eval({"x": x}), expected(2.0))
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    kl = KullbackLeibler(q, prior)
    torch.testing.assert_close(kl.eval({"x": x}), expected(1.0))
    with torch.no_grad():
        prior.scale.fill_(2.0)
    torch.testing.assert_close(kl.eval({"x": x}), expected(2.0))
    with torch.no_grad():
        prior.scale.fill_(1.0)
    assert prior._is_standard_normal()
    torch.testing.assert_close(kl.eval({"x": x}), expected(1.0))


def test_normal_density_at_extreme_scales_is_scipys_and_its_gradient_finite() -> None:
    """In float32 sigma^2 overflows for sigma >= ~2e19 and underflows below ~1e-19: torch's form gave a NaN density
    (sigma = 1e20, x = 5e19; scipy -47.0956) and, through a product of experts with a tiny scale, NaN gradients."""
    from scipy import stats

    from kizuna.distributions import ProductOfNormal

    for scale, x in ((1e20, 5e19), (1e-20, 3e-20), (1e19, -2e19)):
        p = Normal(var=["x"], loc=0.0, scale=scale)
        got = p.get_log_prob({"x": torch.tensor([[x]])})
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.item(), stats.norm.logpdf(x, 0.0, scale), rtol=1e-6)
    qx = Normal(var=["z"], cond_var=["a", "sa"], loc="a", scale="sa")  # experts of scales 1e-20 and 1
    qy = Normal(var=["z"], cond_var=["b", "sb"], loc="b", scale="sb")
    a = torch.tensor([[1.0]], requires_grad=True)
    value = ProductOfNormal([qx, qy]).get_log_prob({"a": a, "sa": torch.tensor([[1e-20]]), "b": torch.tensor([[3.0]]),
                                                    "sb": torch.tensor([[1.0]]), "z": torch.tensor([[1.0]])})
    (grad,) = torch.autograd.grad(value.sum(), a)
    assert bool(torch.isfinite(value).all()) and grad.item() == 0.0  # z is the product's mean: no gradient


def test_standard_normal_draw_is_torchs_and_follows_a_changed_prior() -> None:
    """A draw from N(0, 1) given as numbers (drawn by one ``randn``, without the ``0 + eps * 1``) is torch's
    ``Normal.rsample`` bit for bit, in float32 and float64, with a draw dimension; after the prior's scale changes
    under ``torch.no_grad()`` the draw is scaled again."""
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[5], name="p_prior")
    for dist, dtype in ((prior, torch.float32), (copy.deepcopy(prior).double(), torch.float64)):
        assert dist._is_standard_normal()
        for sample_shape, shape in (((), (7, 5)), ((3,), (3, 7, 5))):
            torch.manual_seed(11)
            ours = dist.sample(batch_n=7, sample_shape=sample_shape, reparam=True)["z"]
            torch.manual_seed(11)
            ref = D.Normal(torch.zeros(7, 5, dtype=dtype), torch.ones(7, 5, dtype=dtype)).rsample(sample_shape)
            assert ours.dtype == dtype and ours.shape == shape and torch.equal(ours, ref)
    with torch.no_grad():
        prior.scale.fill_(2.0)
    torch.manual_seed(11)
    ours = prior.sample(batch_n=7, reparam=True)["z"]
    torch.manual_seed(11)
    assert torch.equal(ours, D.Normal(torch.zeros(7, 5), torch.full((7, 5), 2.0)).rsample())
    # a trainable loc (a parameter) is not the short form: its gradient flows
    loc = nn.Parameter(torch.zeros(5))
    p = Normal(var=["z"], loc=loc, scale=1.0)
    p.sample(batch_n=4, reparam=True)["z"].sum().backward()
    assert torch.equal(loc.grad, torch.full((5,), 4.0))


def test_bernoulli_probs_gradient_is_torchs_inside_the_clamp() -> None:
    """The probabilities are clamped to [eps, 1 - eps] as torch clamps them (by hardtanh): the log-density's
    gradient equals torch's Bernoulli(probs=...) everywhere but at the two bounds themselves, and is zero
    for saturated probabilities, as torch's."""
    gen = torch.Generator().manual_seed(4)
    probs = torch.sigmoid(torch.randn(6, 5, generator=gen, dtype=torch.float64) * 4)
    probs[0, 0], probs[0, 1], probs[0, 2] = 1.0, 0.0, 1e-20
    probs.requires_grad_()
    value = torch.rand(6, 5, generator=gen, dtype=torch.float64).round()
    ours = Bernoulli(var=["x"])._log_prob_kernel(value, {"probs": probs})
    ref = D.Bernoulli(probs=probs, validate_args=False).log_prob(value)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g_ours, = torch.autograd.grad(ours.sum(), probs)
    g_ref, = torch.autograd.grad(ref.sum(), probs)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-10)
    assert (g_ours[0, :3] == 0).all()


@pytest.mark.parametrize("which", ["logits", "probs"])
def test_bernoulli_hook_is_torchs_formula(which: str) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    grey = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    param = logits if which == "logits" else torch.sigmoid(logits)
    param[0, :2] = 1.0 if which == "probs" else param[0, :2]  # saturated probabilities: torch clamps them
    expected = D.Bernoulli(validate_args=False, **{which: param}).log_prob(grey)
    tol = 0 if which == "logits" else 1e-12  # from probs without the round trip through logits: rounding only
    torch.testing.assert_close(Bernoulli(var=["x"])._log_prob_kernel(grey, {which: param}), expected,
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("fused", [False, True])
def test_both_bernoulli_formulas_from_probs_are_torchs(fused: bool) -> None:
    """The vectorised formula (used on CPUs) and the fused cross-entropy (other devices) are each torch's
    Bernoulli(probs=...) log-mass for 0/1 and grey values, with saturated probabilities, values broadcast
    along the rows, and the same gradient inside the clamp."""
    gen = torch.Generator().manual_seed(6)
    probs = torch.sigmoid(torch.randn(7, 5, generator=gen, dtype=torch.float64) * 4)
    probs[0, 0], probs[0, 1], probs[1, 2] = 1.0, 0.0, 1e-30
    probs.requires_grad_()
    for value in (torch.rand(7, 5, generator=gen, dtype=torch.float64).round(),
                  torch.rand(7, 5, generator=gen, dtype=torch.float64),
                  torch.rand(1, 5, generator=gen, dtype=torch.float64)):
        ours = bernoulli_log_prob_from_probs(probs, value, fused=fused)
        ref = D.Bernoulli(probs=probs, validate_args=False).log_prob(value)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        with torch.no_grad():  # the in-place evaluation without gradients: the same numbers, probs untouched
            before = probs.detach().clone()
            torch.testing.assert_close(bernoulli_log_prob_from_probs(probs, value, fused=fused), ref.detach(),
                                       rtol=1e-12, atol=1e-12)
            assert torch.equal(probs, before)
        g_ours, = torch.autograd.grad(ours.sum(), probs)
        g_ref, = torch.autograd.grad(ref.sum(), probs)
        inside = (probs > 1e-15) & (probs < 1 - 1e-15)
        torch.testing.assert_close(g_ours[inside], g_ref[inside], rtol=1e-10, atol=1e-10)
        assert (g_ours[~inside] == 0).all()


def test_validation_is_one_switch_over_torchs_default() -> None:
    """`validation_enabled` is the innermost `validation` block, else torch's ``validate_args`` default;
    the torch objects kizuna builds follow it either way."""
    before = D.Distribution._validate_args
    try:
        set_validation(False)
        assert not validation_enabled()
        with validation(True):
            assert validation_enabled() and D.Distribution._validate_args is False  # a local setting
            with pytest.raises(ValueError, match="scale"):
                Normal(var=["x"], cond_var=["s"], loc=0.0, scale="s").get_log_prob(
                    {"x": torch.zeros(2), "s": torch.tensor([1.0, -1.0])})
        set_validation(True)
        with validation(False):
            assert not validation_enabled()
            Normal(var=["x"], cond_var=["s"], loc=0.0, scale="s").get_log_prob(  # no check: nan, no error
                {"x": torch.zeros(2), "s": torch.tensor([1.0, -1.0])})
        assert validation_enabled()
    finally:
        set_validation(before)


def test_normal_score_hook_is_the_gradient_of_the_log_density() -> None:
    gen = torch.Generator().manual_seed(2)
    loc = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    scale = torch.rand(5, 3, generator=gen, dtype=torch.float64) + 0.2
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    noise = Normal(var=["y"], cond_var=["m", "s"], loc="m", scale="s")
    (expected,) = torch.autograd.grad(noise.get_log_prob({"y": x, "m": loc, "s": scale}).sum(), x)
    with validation(False):
        got = noise.closed_form_score({"y": x.detach(), "m": loc, "s": scale})
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_parameters_without_an_input_name_it():
    """The evaluation checks a loss's inputs once, at its top; a distribution asked for its parameters without
    one of its inputs (here through ``kl_parts``, which checks nothing first) still names what is missing,
    whether the input feeds a network or names a parameter."""

    class Net(Normal):
        def __init__(self):
            super().__init__(var=["z"], cond_var=["x"], name="q")

        def forward(self, x):
            return {"loc": x, "scale": torch.ones_like(x)}

    for q in (Net(), Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")):
        with pytest.raises(ValueError, match=r"q\(z\|x\) needs x, but was given y"):
            q.kl_parts({"y": torch.zeros(2, 3)})


def test_parameter_shapes_broadcast_as_torchs_broadcast_shapes() -> None:
    """The evaluation's own broadcast of two parameter shapes (torch's function is about 20 times slower per
    call) against ``torch.broadcast_shapes`` on every pair of shapes of up to three dimensions of sizes 1-3:
    the same shape, or torch's error."""
    import itertools

    from kizuna.distributions.torch_dist import _broadcast

    shapes = [torch.Size(s) for n in range(4) for s in itertools.product((1, 2, 3), repeat=n)]
    for a, b in itertools.product(shapes, shapes):
        try:
            expected = torch.broadcast_shapes(a, b)
        except RuntimeError:
            with pytest.raises(RuntimeError):
                _broadcast(a, b)
            continue
        assert _broadcast(a, b) == expected
        assert type(_broadcast(a, b)) is torch.Size


@pytest.mark.parametrize("rows", [7, 0])  # 0: more rows than one block holds
def test_log_density_without_gradients_is_torchs_in_one_block_and_in_many(rows: int) -> None:
    """Without gradients the log-density takes the blocked path: a batch that fits one block is scored by the
    kernel at once, a larger one block by block. Both against torch's ``Independent(Normal / Bernoulli)``, with a
    parameter of one row broadcast to the batch (a constant σ, a shared logit row), and against the value with
    gradients on."""
    from kizuna.distributions.base import BLOCK_ELEMENTS

    features = 40
    n = rows or BLOCK_ELEMENTS // features * 2 + 3  # several blocks
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(n, features, generator=gen, dtype=torch.float64)
    x = torch.randn(n, features, generator=gen, dtype=torch.float64)
    scale = torch.rand(features, generator=gen, dtype=torch.float64) + 0.5  # a constant: stored with one row
    normal = Normal(var=["x"], cond_var=["m"], loc="m", scale=scale)
    logits = torch.randn(features, generator=gen, dtype=torch.float64)
    bits = (torch.rand(n, features, generator=gen) > 0.5).double()
    bernoulli = Bernoulli(var=["x"], logits=logits)
    cases = [(normal, {"m": loc, "x": x}, D.Independent(D.Normal(loc, scale.expand(n, -1)), 1).log_prob(x)),
             (bernoulli, {"x": bits}, D.Independent(D.Bernoulli(logits=logits.expand(n, -1)), 1).log_prob(bits))]
    assert normal._kernel_shape(normal._params({"m": loc}), None) == (n, features)  # the one-row σ broadcast
    for p, values, expected in cases:
        with torch.no_grad(), validation(False):  # the unchecked path, as Model.train after its first step
            fast = p.get_log_prob(values)
        torch.testing.assert_close(fast, expected)
        torch.testing.assert_close(fast, p.get_log_prob(values))


def test_unchecked_log_density_still_converts_and_checks_values_of_another_shape_or_dtype() -> None:
    """With validation off, a floating value of the parameters' very shape goes to the kernel as it is; any other
    value still passes the value's checks: integer counts are scored in the parameters' dtype, a value without
    its batch dimension is a batch of one, and a value of another batch size is an error naming both sizes.
    References: torch's ``Independent(Bernoulli / Normal)``."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 6, generator=gen) * 0.8 + 0.1
    bits = (torch.rand(4, 6, generator=gen) > 0.5).float()
    bernoulli = Bernoulli(var=["x"], cond_var=["p"], probs="p")
    expected = D.Independent(D.Bernoulli(probs=probs), 1).log_prob(bits)
    loc = torch.randn(1, 3, generator=gen)
    normal = Normal(var=["x"], cond_var=["m"], loc="m", scale=2.0)
    x = torch.randn(3, generator=gen)
    for grad in (True, False):
        with torch.set_grad_enabled(grad), validation(False):
            torch.testing.assert_close(bernoulli.get_log_prob({"p": probs, "x": bits}), expected)
            torch.testing.assert_close(bernoulli.get_log_prob({"p": probs, "x": bits.long()}), expected)
            torch.testing.assert_close(normal.get_log_prob({"m": loc, "x": x}),
                                       D.Independent(D.Normal(loc, 2.0), 1).log_prob(x.unsqueeze(0)))
            with pytest.raises(ValueError, match="x has batch size 2 but the parameters have batch size 4"):
                bernoulli.get_log_prob({"p": probs, "x": bits[:2]})


def test_the_memo_returns_the_latest_remembered_value_and_forgets_a_released_step() -> None:
    """`remember` records a value after an earlier one for the same inputs: `memoized` returns the later one;
    the entries made after `step_mark` are gone after `release_step`, so the next call computes again."""
    from kizuna.formula.memo import memoized, release_step, remember, shared_parameters, step_mark

    owner, x, calls = object(), torch.zeros(2), []

    def compute(v: int) -> int:
        calls.append(v)
        return v

    assert memoized(owner, "t", [x], compute, 1) == 1  # outside an evaluation: computed every time
    with shared_parameters():
        assert memoized(owner, "t", [x], compute, 2) == 2
        assert memoized(owner, "t", [x], compute, 3) == 2  # the same input object: the earlier result
        assert memoized(owner, "t", [x.clone()], compute, 4) == 4  # another tensor: computed
        remember(owner, "t", [x], 5)
        assert memoized(owner, "t", [x], compute, 6) == 5
        mark = step_mark()
        y = torch.ones(2)
        assert memoized(owner, "t", [y], compute, 7) == 7
        release_step(mark)
        assert memoized(owner, "t", [y], compute, 8) == 8
        assert memoized(owner, "t", [x], compute, 9) == 5  # entries from before the mark stay
    assert calls == [1, 2, 4, 7, 8]


def test_the_memo_compares_every_input_and_a_two_parent_density_sees_its_second_parent() -> None:
    """The memo's key is every input object: two calls that share the first input and differ in the second compute
    twice (a scan of the first input only passed every single-input test). Through the formula layer: within one
    evaluation, ``p(x|y,z)`` scored at two values of its second parent gives scipy's two log-densities."""
    from scipy import stats

    from kizuna.formula.memo import memoized, shared_parameters

    owner, a, b1, b2 = object(), torch.zeros(1), torch.zeros(1), torch.zeros(1)
    with shared_parameters():
        assert memoized(owner, "t", [a, b1], lambda: 1) == 1
        assert memoized(owner, "t", [a, b2], lambda: 2) == 2
        assert memoized(owner, "t", [a, b1], lambda: 3) == 1
        assert memoized(owner, "t", [a], lambda: 4) == 4  # fewer inputs: another key

    class TwoParents(Normal):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["y", "z"], name="p")

        def forward(self, y: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": y + z, "scale": torch.ones_like(y)}

    p = TwoParents()
    x, y = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    z1, z2 = torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1), 2.0, dtype=torch.float64)
    with shared_parameters():
        first = p.get_log_prob({"x": x, "y": y, "z": z1}).item()
        second = p.get_log_prob({"x": x, "y": y, "z": z2}).item()
    assert first == pytest.approx(stats.norm.logpdf(0.0, 0.0, 1.0), abs=1e-12)
    assert second == pytest.approx(stats.norm.logpdf(0.0, 2.0, 1.0), abs=1e-12)


def test_validation_adds_checks_and_changes_no_number() -> None:
    """A checked evaluation (a model's first step, a resumed run's first step) computes with the same kernels as an
    unchecked one: Bernoulli's log-density from probabilities, whose kernel rounds differently from torch's formula,
    equal bit for bit with validation on and off; the draws and the KL too; the checks still name bad input: a NaN
    by its row and column, a numpy array given for a parameter's variable by that variable."""
    import numpy as np

    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 5, generator=gen) * 0.98 + 0.01
    bits = (torch.rand(6, 5, generator=gen) > 0.5).float()
    b = Bernoulli(var=["x"], cond_var=["p"], probs="p")
    q = Normal(var=["z"], cond_var=["m", "s"], loc="m", scale="s", name="q")
    prior = Normal(var=["z"], loc=0.5, scale=2.0, features_shape=[5], name="p_0")
    m, s = torch.randn(6, 5, generator=gen), torch.rand(6, 5, generator=gen) + 0.5
    out = {}
    for checked in (True, False):
        torch.manual_seed(4)
        with validation(checked):
            out[checked] = (b.get_log_prob({"p": probs, "x": bits}), q.sample({"m": m, "s": s})["z"],
                            KullbackLeibler(q, prior).eval({"m": m, "s": s}))
    for a, c in zip(out[True], out[False]):
        assert torch.equal(a, c)
    torch.testing.assert_close(out[True][0], D.Independent(D.Bernoulli(probs=probs), 1).log_prob(bits))
    nan = bits.clone()
    nan[3, 2] = float("nan")
    with validation(True), pytest.raises(ValueError, match=r"x_dict\['x'\] holds nan at row 3, column 2"):
        Normal(var=["x"], cond_var=["p"], loc="p", scale=1.0).get_log_prob({"p": probs, "x": nan})
    with pytest.raises(TypeError, match=r"p\(x\|p\): p \(its probs\) must be a torch.Tensor, got ndarray"):
        b.get_log_prob({"p": probs.numpy(), "x": bits})
    with validation(True), pytest.raises(TypeError, match=r"p \(its probs\) must be a torch.Tensor, got list"):
        b.get_log_prob({"p": probs.tolist(), "x": bits})
    assert np.isfinite(out[False][0].numpy()).all()
