"""Pixyz's arguments of ``REINFORCE(p, f, b, sample_shape, reparam)`` and ``Expectation(p, f, sample_shape, reparam)``.

Pixyz 0.3.3's ``REINFORCE(p, f, b=ValueLoss(0), sample_shape=[1], reparam=True)`` returns its surrogate
``E[detach(f - b) log p + f - b]``; kizuna returns ``E[f]`` with the same gradient. The references here are Pixyz's
surrogate written out with torch on the draws the loss returns (its gradient must be kizuna's, as the review's p04
compares ``w.grad``), and closed forms / enumeration for the expectation of the gradient.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from mc_reference import assert_mc_close, standard_error
from torch import nn

from kizuna.distributions import Bernoulli, Normal
from kizuna.formula.expr import EvalContext, Loss
from kizuna.losses import REINFORCE, Expectation, LogProb, Parameter, ValueLoss

LOG_P_RATIO = math.log(0.3) - math.log(0.7)


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


class Q(Bernoulli):
    """q(x|c), ten independent bits with learnable logits ``w`` (the review's p04 policy)."""

    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["c"], features_shape=[10], name="q")
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, 10))

    def forward(self, c):  # noqa: ANN001, ANN201
        return {"probs": torch.sigmoid(self.w + 0 * c)}


class RowBaseline(Loss):
    """A baseline of the data only: ``k.sum(1) - 7``, one value per row."""

    def __init__(self) -> None:
        super().__init__(["k"])

    def _value(self, ctx: EvalContext) -> torch.Tensor:
        return ctx.values["k"].sum(1) - 7.0

    def _render(self, fmt: dict[str, str]) -> str:
        return "b(k)"


def _p() -> Bernoulli:
    return Bernoulli(probs=torch.tensor(0.3), var=["x"], features_shape=[10])


def _log_q(q: Q, x: torch.Tensor) -> torch.Tensor:
    """log q(x) summed over the ten bits, written with torch (Pixyz's ``p.log_prob()`` term)."""
    return torch.distributions.Bernoulli(logits=q.w).log_prob(x).sum(-1)


def _log_p(x: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Bernoulli(probs=torch.tensor(0.3)).log_prob(x).sum(-1)


def test_pixyz_docstring_call_with_a_valueloss_baseline_positional_and_keyword() -> None:
    """``REINFORCE(q, p.log_prob(), ValueLoss(-7.0), sample_shape=[64])`` (a TypeError before: the third argument
    was sample_shape) and ``b=`` / ``reparam=`` (refused before): the value is E[f] on the draws, the gradient is that
    of Pixyz's surrogate on the same draws, and the same as kizuna's ``baseline=-7.0``."""
    q, c = Q(), torch.zeros(1, 10)
    grads = []
    for make in (lambda: REINFORCE(q, _p().log_prob(), ValueLoss(-7.0), sample_shape=[64]),
                 lambda: REINFORCE(q, _p().log_prob(), b=ValueLoss(-7.0), sample_shape=[64], reparam=False),
                 lambda: REINFORCE(q, _p().log_prob(), -7.0, [64], True),
                 lambda: REINFORCE(q, _p().log_prob(), sample_shape=(64,), baseline=-7.0)):
        torch.manual_seed(1)
        value, draws = make().eval({"c": c}, return_dict=True)
        x = draws["x"]
        assert x.shape == (64, 1, 10)
        torch.testing.assert_close(value, _log_p(x).mean(0))  # E[f] (Pixyz's value is its surrogate)
        (grad,) = torch.autograd.grad(value.sum(), q.w)
        f = _log_p(x)
        pixyz = ((f - (-7.0)).detach() * _log_q(q, x) + f - (-7.0)).mean(0).sum()
        torch.testing.assert_close(grad, torch.autograd.grad(pixyz, q.w)[0])
        grads.append(grad)
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=0, atol=0)  # the same draws, the same estimator
    # the docstring's recipe for Pixyz's printed number: Pixyz's surrogate on its own draws
    f, b = _p().log_prob(), ValueLoss(-7.0)
    torch.manual_seed(2)
    value, draws = Expectation(q, (f - b).detach() * LogProb(q) + f - b, sample_shape=[64]).eval(
        {"c": c}, return_dict=True)
    x = draws["x"]
    torch.testing.assert_close(value, ((_log_p(x) + 7.0) * _log_q(q, x) + _log_p(x) + 7.0).mean(0).detach())


def test_reinforce_gradient_with_a_baseline_matches_the_closed_form() -> None:
    """The expectation of the gradient: d/dw_j E_q[log p(x)] = s_j (1 - s_j) log(0.3 / 0.7), s = sigmoid(w)."""
    q, c = Q(), torch.zeros(1, 10)
    value, draws = REINFORCE(q, _p().log_prob(), ValueLoss(-7.0), sample_shape=[4000]).eval({"c": c},
                                                                                              return_dict=True)
    (grad,) = torch.autograd.grad(value.sum(), q.w)
    x, s = draws["x"][:, 0], torch.sigmoid(q.w.detach())
    per_draw = (_log_p(x) + 7.0).unsqueeze(1) * (x - s)  # each draw's term (f - b) d log q / dw
    assert_mc_close(grad, s * (1 - s) * LOG_P_RATIO, standard_error(per_draw), what="REINFORCE with b")


def test_a_baseline_loss_per_row_and_one_per_draw() -> None:
    """A loss as the baseline is evaluated with f on the same draws: per row for an f per row, one number per draw
    for an f reduced over the batch (the score term of a draw is its rows' summed); its inputs are the loss's."""
    q, c, k = Q(), torch.zeros(3, 10), torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    b_rows = k.sum(1) - 7.0
    loss = REINFORCE(q, _p().log_prob(), RowBaseline(), sample_shape=[5])
    assert "k" in loss.input_var
    with pytest.raises(ValueError, match="needs k"):
        loss.eval({"c": c})
    value, draws = loss.eval({"c": c, "k": k}, return_dict=True)
    x = draws["x"]  # (5, 3, 10)
    torch.testing.assert_close(value, _log_p(x).mean(0))
    pixyz = ((_log_p(x) - b_rows).detach() * _log_q(q, x) + _log_p(x) - b_rows).mean(0).sum()
    torch.testing.assert_close(torch.autograd.grad(value.sum(), q.w)[0], torch.autograd.grad(pixyz, q.w)[0])

    loss = REINFORCE(q, _p().log_prob().mean(), RowBaseline().mean(), sample_shape=[5])
    value, draws = loss.eval({"c": c, "k": k}, return_dict=True)
    x = draws["x"]
    f_draw = _log_p(x).mean(1)  # one number per draw
    torch.testing.assert_close(value, f_draw.mean())
    pixyz = ((f_draw - b_rows.mean()).detach() * _log_q(q, x).sum(1) + f_draw).mean()
    torch.testing.assert_close(torch.autograd.grad(value, q.w)[0], torch.autograd.grad(pixyz, q.w)[0])

    with pytest.raises(ValueError, match=r"the baseline b\(k\) gives values of shape \(5, 3\) where f gives \(5,\): "
                                         r"a baseline must be one number, or one value per value of f"):
        REINFORCE(q, _p().log_prob().mean(), RowBaseline(), sample_shape=[5]).eval({"c": c, "k": k})


def test_a_constant_baseline_loss_changes_neither_the_value_nor_its_own_parameter() -> None:
    """A baseline's own parameter gets no gradient (Pixyz's surrogate would give it -1), and the value is E[f]."""
    q, c = Q(), torch.zeros(1, 10)
    b = nn.Parameter(torch.tensor(-7.0))
    torch.manual_seed(3)
    with_b = REINFORCE(q, _p().log_prob(), ValueLoss(b), sample_shape=[16]).eval({"c": c})
    torch.manual_seed(3)
    without = REINFORCE(q, _p().log_prob(), sample_shape=[16]).eval({"c": c})
    torch.testing.assert_close(with_b, without, rtol=0, atol=0)
    assert torch.autograd.grad(with_b.sum(), [q.w, b], allow_unused=True)[1] is None


def test_baseline_arguments_refused_with_their_names() -> None:
    q, f = Q(), _p().log_prob()
    with pytest.raises(TypeError, match=r"REINFORCE: the baseline was given twice, as b=0.5 \(Pixyz's name\) and "
                                        r"baseline='loo' \(kizuna's\): give one of them"):
        REINFORCE(q, f, 0.5, sample_shape=[4], baseline="loo")
    with pytest.raises(TypeError, match=r"REINFORCE: the third argument is the baseline b \(Pixyz's order: "
                                        r"REINFORCE\(p, f, b, sample_shape, reparam\)\), got the shape \(4,\): "
                                        r"pass sample_shape=\(4,\)"):
        REINFORCE(q, f, (4,))
    with pytest.raises(ValueError, match="REINFORCE: baseline must be a finite number, 'loo' or None, got 'mean'"):
        REINFORCE(q, f, "mean")
    with pytest.raises(TypeError, match="REINFORCE: reparam must be True or False, got 'yes'"):
        REINFORCE(q, f, reparam="yes")
    with pytest.raises(TypeError, match=r"Expectation: reparam must be True or False, got \[3\]"):
        Expectation(q, f, [3], [3])
    assert REINFORCE(q, f, "loo", [2]).baseline == "loo"


class Loc(Normal):
    """q(z|c) = N(m, 1) with a learnable mean ``m``."""

    def __init__(self, m: float = 0.5) -> None:
        super().__init__(var=["z"], cond_var=["c"], features_shape=[1], name="q")
        self.m = nn.Parameter(torch.tensor([m]))

    def forward(self, c):  # noqa: ANN001, ANN201
        return {"loc": self.m + 0 * c, "scale": torch.ones_like(c)}


def _quadratic() -> Loss:
    return -((Parameter("z") - 2.0) ** 2)  # -(z - 2)^2 per row


def test_expectation_reparam_false_is_the_score_function_estimator() -> None:
    """``Expectation(q, f, sample_shape, reparam=False)`` and ``E(q, f, [n], False)`` (TypeErrors before): the draws
    carry no gradient, every factor gets the score-function term; its gradient is f(z) (z - m) per draw, unbiased
    for the closed form d/dm E[-(z - 2)^2] = -2 (m - 2); ``reparam=True`` stays the pathwise -2 (z - 2)."""
    q, c, n = Loc(), torch.zeros(1, 1), 4000
    torch.manual_seed(4)
    value, draws = Expectation(q, _quadratic(), sample_shape=(n,), reparam=False).eval({"c": c}, return_dict=True)
    z = draws["z"].reshape(n)
    assert not draws["z"].requires_grad
    (grad,) = torch.autograd.grad(value.sum(), q.m)
    f = -(z - 2.0) ** 2
    torch.testing.assert_close(value.reshape(()), f.mean())
    per_draw = f * (z - 0.5)
    torch.testing.assert_close(grad.reshape(()), per_draw.mean())
    assert_mc_close(grad, -2 * (0.5 - 2.0), standard_error(per_draw), what="Expectation(reparam=False)")
    torch.manual_seed(4)
    value, draws = Expectation(q, _quadratic(), sample_shape=(n,)).eval({"c": c}, return_dict=True)
    torch.testing.assert_close(torch.autograd.grad(value.sum(), q.m)[0].reshape(()),
                               (-2 * (draws["z"].detach().reshape(n) - 2.0)).mean())

    torch.manual_seed(5)
    positional, d1 = Expectation(q, _quadratic(), [3], False).eval({"c": torch.zeros(2, 1)}, return_dict=True)
    torch.manual_seed(5)
    keyword, d2 = Expectation(q, _quadratic(), sample_shape=[3], reparam=False).eval({"c": torch.zeros(2, 1)},
                                                                                      return_dict=True)
    assert d1["z"].shape == (3, 2, 1)
    torch.testing.assert_close(positional, keyword, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(positional.sum(), q.m)[0],
                               torch.autograd.grad(keyword.sum(), q.m)[0], rtol=0, atol=0)


def test_expectation_reparam_false_over_bits_against_enumeration() -> None:
    """The review's p18 case, E_q[log N(x=0 | y, 1)] over y ~ Bernoulli(s) (two bits): value and gradient with
    ``reparam=False`` against the sum over the four values of y."""
    logits = nn.Parameter(torch.tensor([-0.8473, 0.4055]))  # probs 0.3, 0.6

    class Bits(Bernoulli):
        def __init__(self) -> None:
            super().__init__(var=["y"], cond_var=["c"], features_shape=[2], name="q")
            self.logits_ = logits

        def forward(self, c):  # noqa: ANN001, ANN201
            return {"probs": torch.sigmoid(self.logits_ + 0 * c)}

    p = Normal(loc="y", scale=torch.tensor(1.0), var=["x"], cond_var=["y"])
    n = 4000
    value, draws = Expectation(Bits(), LogProb(p), sample_shape=[n], reparam=False).eval(
        {"x": torch.zeros(1, 2), "c": torch.zeros(1, 2)}, return_dict=True)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    s = torch.sigmoid(logits)
    exact = 0.0
    for y in itertools.product([0.0, 1.0], repeat=2):
        yt = torch.tensor(y)
        weight = (s**yt * (1 - s) ** (1 - yt)).prod()
        exact = exact + weight * torch.distributions.Normal(yt, 1.0).log_prob(torch.zeros(2)).sum()
    (exact_grad,) = torch.autograd.grad(exact, logits)
    y = draws["y"].reshape(n, 2)
    f = torch.distributions.Normal(y, 1.0).log_prob(torch.zeros(2)).sum(1)
    assert_mc_close(value.detach().reshape(()), exact.detach(), standard_error(f), what="value")
    assert_mc_close(grad, exact_grad, standard_error(f.unsqueeze(1) * (y - s.detach())), what="gradient")


def test_reinforce_reparam_is_accepted_and_always_scores() -> None:
    """REINFORCE never differentiates through a draw: ``reparam=True`` (Pixyz's default) and ``False`` give the same
    score-function gradient f(z) (z - m) on the same draws of a reparameterisable Normal."""
    q, c = Loc(), torch.zeros(1, 1)
    grads = []
    for reparam in (True, False):
        torch.manual_seed(6)
        value, draws = REINFORCE(q, _quadratic(), 0.0, [200], reparam).eval({"c": c}, return_dict=True)
        z = draws["z"].reshape(200)
        (grad,) = torch.autograd.grad(value.sum(), q.m)
        torch.testing.assert_close(grad.reshape(()), (-(z - 2.0) ** 2 * (z - 0.5)).mean())
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_an_integer_third_argument_is_named_and_constant_reductions_stay_constants() -> None:
    """``REINFORCE(q, f, 4)`` meant four draws in kizuna's older order and silently became a baseline of 4 with one
    draw: an integer there is refused, naming both readings. A batch mean of a constant inside an ``f`` reduced over
    the batch crashed with several draws (``shape '[2, 0]' is invalid``); it is the constant."""
    q = Q()
    with pytest.raises(TypeError, match=r"got the integer 4, which kizuna's older order read as sample_shape: pass "
                                        r"sample_shape=4, or a baseline as a float \(4\.0\)"):
        REINFORCE(q, LogProb(_p()), 4)
    assert REINFORCE(q, LogProb(_p()), baseline=4, sample_shape=2).baseline == 4
    c = {"c": torch.zeros(3, 1)}
    torch.manual_seed(1)
    with_constant = Expectation(q, LogProb(_p()).mean() + ValueLoss(0.5).mean(), sample_shape=2).eval(c)
    torch.manual_seed(1)
    alone = Expectation(q, LogProb(_p()).mean(), sample_shape=2).eval(c)
    torch.testing.assert_close(with_constant, alone + 0.5)
