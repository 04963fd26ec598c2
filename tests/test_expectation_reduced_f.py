"""``Expectation(q, f, sample_shape=n)`` (and ``REINFORCE``) of an ``f`` reduced over the batch: ``f`` once per draw,
the results averaged, as Pixyz's ``Expectation`` does (``torch.stack(losses).mean(0)``).

Found in a review (2026-12-07, stop 40): the n draws were one batch of n x B rows and ``f`` was evaluated once on it,
so ``E_q[f.sum()]`` was n times too large, ``E_q[g(f.mean())]`` was taken over the pooled rows (biased for a
non-linear ``g``), and the score-function gradient of an ``f`` reduced to one number had a variance growing with n x B.
References: closed forms of the Normal-Normal model (``z ~ N(x, 1)``, ``log N(x; z, 1) = c - e^2 / 2`` with
``e ~ N(0, 1)``), the same average computed per draw from the recorded draws, and exact gradients by enumeration over
Bernoulli draws; Monte-Carlo checks use fixed seeds and tolerances of 4 standard errors estimated from the same draws.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from kizuna.distributions import Bernoulli, Normal
from kizuna.formula.expr import EvalContext, Loss
from kizuna.losses import REINFORCE, Expectation, LogProb

F64 = torch.float64
C = -0.5 * math.log(2 * math.pi)  # log N(x; z, 1) = C - (x - z)^2 / 2
X = torch.tensor([0.0, 1.0, 2.0], dtype=F64)  # three rows


def _normal_model() -> tuple[Normal, Normal]:
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, name="p")
    return q, p


def _log_p(draws: dict, n: int) -> torch.Tensor:
    """log N(x; z, 1) of the recorded draws, one row per draw: ``(n, 3)``."""
    return torch.distributions.Normal(draws["z"].reshape(n, 3), 1.0).log_prob(X)


@pytest.mark.parametrize("estimator", [Expectation, REINFORCE])
def test_a_batch_sum_inside_is_the_mean_over_draws_of_each_draws_sum(estimator) -> None:
    """E_q[sum_rows log p(x|z)] = 3 (c - 1/2) for every number of draws (it was n times that)."""
    q, p = _normal_model()
    torch.manual_seed(0)
    for n in (1, 7, 400):
        value, draws = estimator(q, LogProb(p).sum(), sample_shape=n).eval({"x": X}, return_dict=True)
        per_draw = _log_p(draws, n).sum(1)
        assert value.dim() == 0
        torch.testing.assert_close(value, per_draw.mean())  # f once per draw, averaged
    se = per_draw.std() / math.sqrt(n)  # (n = 400)
    assert abs(value.item() - 3 * (C - 0.5)) < 4 * se.item(), (value.item(), 3 * (C - 0.5), se.item())
    # the method form of the review's ported program
    value, draws = LogProb(p).sum().expectation(q, sample_shape=(10,)).eval({"x": X}, return_dict=True)
    torch.testing.assert_close(value, _log_p(draws, 10).sum(1).mean())


def test_a_nonlinear_function_of_the_batch_mean_is_averaged_over_draws() -> None:
    """E_q[(mean_rows log p)^2] = (c - 1/2)^2 + Var(mean_rows e^2 / 2) = (c - 1/2)^2 + 1/6; the pooled rows gave
    (c - 1/2)^2 = 2.013 for many draws (the variance term dropped)."""
    q, p = _normal_model()
    torch.manual_seed(1)
    n = 20000
    value, draws = Expectation(q, LogProb(p).mean() ** 2, sample_shape=n).eval({"x": X}, return_dict=True)
    per_draw = _log_p(draws, n).mean(1) ** 2
    torch.testing.assert_close(value, per_draw.mean())
    exact, se = (C - 0.5) ** 2 + 1 / 6, per_draw.std().item() / math.sqrt(n)
    assert abs(value.item() - exact) < 4 * se, (value.item(), exact, se)


def test_a_value_centred_on_the_batch_mean_is_centred_within_each_draw() -> None:
    """E_q[(g - mean_rows g)^2] per row, g = log p: (B - 1) / B * Var(g) = 2/3 * 1/2 = 1/3 per row, each draw centred
    on its own batch's mean (centred on the mean of the pooled draws it tended to Var(g) = 1/2)."""
    q, p = _normal_model()
    torch.manual_seed(2)
    n, g = 100, LogProb(p)
    value, draws = Expectation(q, (g - g.mean()) ** 2, sample_shape=n).eval({"x": X}, return_dict=True)
    log_p = _log_p(draws, n)
    per_draw = (log_p - log_p.mean(1, keepdim=True)) ** 2
    assert value.shape == (3,)
    torch.testing.assert_close(value, per_draw.mean(0))
    se = per_draw.mean(1).std().item() / math.sqrt(n)
    assert abs(value.mean().item() - 1 / 3) < 4 * se, (value.mean().item(), se)


def test_a_term_of_ones_own_that_reduces_over_the_batch_is_evaluated_per_draw() -> None:
    """A custom term whose ``_value`` sums over the rows (one number): E_q[sum_rows z] = sum x = 3."""
    class SumZ(Loss):
        def __init__(self) -> None:
            super().__init__(["z"])

        def _value(self, ctx: EvalContext) -> torch.Tensor:
            return ctx.values["z"].sum()

        def _render(self, fmt: dict[str, str]) -> str:
            return "sum z"

    q, _ = _normal_model()
    torch.manual_seed(3)
    n = 200
    value, draws = Expectation(q, SumZ(), sample_shape=n).eval({"x": X}, return_dict=True)
    per_draw = draws["z"].reshape(n, 3).sum(1)
    torch.testing.assert_close(value, per_draw.mean())
    assert abs(value.item() - 3.0) < 4 * math.sqrt(3 / n)


class _Q(Bernoulli):
    """q(z|x) = Bernoulli(sigmoid(th)) for every row: a score-function gradient (no reparameterisation)."""

    def __init__(self, th: float) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.th = nn.Parameter(torch.tensor([th], dtype=F64))

    def forward(self, x):  # noqa: ANN001, ANN202
        return {"probs": torch.sigmoid(self.th + 0 * x)}


def _bernoulli_model(th: float, rows: int) -> tuple[_Q, Normal, dict]:
    """q(z) Bernoulli, p(y|z) = N(y; z, 1) at y = 3: g(z) = log p = c - 2 (z = 1) or c - 4.5 (z = 0)."""
    p = Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0, name="p")
    return _Q(th), p, {"x": torch.zeros(rows, 1, dtype=F64), "y": torch.full((rows, 1), 3.0, dtype=F64)}


def _grads(loss: Loss, q: _Q, values: dict, runs: int) -> torch.Tensor:
    return torch.stack([torch.autograd.grad(loss.eval(values), q.th)[0] for _ in range(runs)])


def test_the_score_gradient_of_a_batch_mean_has_the_variance_of_the_per_row_estimator() -> None:
    """E_q[g.mean()] and E_q[g].mean() are the same expectation; the first's gradient SD grew with the draws (55 at
    100 draws against 0.078). Exact gradient: sigma'(0) (g(1) - g(0)) = 0.25 * 2.5."""
    q, p, values = _bernoulli_model(0.0, rows=8)
    inside, outside = Expectation(q, LogProb(p).mean(), sample_shape=100), Expectation(q, LogProb(p), 100).mean()
    torch.manual_seed(4)
    a = _grads(inside, q, values, 100)
    torch.manual_seed(4)
    b = _grads(outside, q, values, 100)
    torch.testing.assert_close(a, b)  # the expectation taken inside the batch mean: the same estimator
    assert a.std() <= 2 * b.std()
    assert abs(a.mean().item() - 0.625) < 4 * a.std().item() / math.sqrt(100)


def test_the_score_gradient_of_a_nonlinear_reduced_f_is_unbiased_and_falls_with_the_draws() -> None:
    """d/dth E_q[(mean over 3 rows of g)^2] by enumeration of the 8 draws of 3 rows; one score term per draw (its
    rows' summed) keeps the estimator unbiased and its SD falling like 1/sqrt(n) (it grew with n x B)."""
    q, p, values = _bernoulli_model(0.0, rows=3)
    th = q.th.detach().clone().requires_grad_()
    prob, g = torch.sigmoid(th)[0], {1: C - 2.0, 0: C - 4.5}
    mean = sum(math.prod(prob if z else 1 - prob for z in zs) * (sum(g[z] for z in zs) / 3) ** 2
               for zs in itertools.product((0, 1), repeat=3))
    exact = torch.autograd.grad(mean, th)[0].item()
    f = LogProb(p).mean() ** 2
    torch.manual_seed(5)
    few = _grads(Expectation(q, f, sample_shape=10), q, values, 64)
    for loss in (Expectation(q, f, sample_shape=160), REINFORCE(q, f, sample_shape=160, baseline=10.0)):
        many = _grads(loss, q, values, 64)
        assert abs(many.mean().item() - exact) < 4 * many.std().item() / 8, (str(loss), many.mean().item(), exact)
        assert many.std() < few.std() / 2, (str(loss), many.std().item(), few.std().item())  # 1/4 expected


def test_the_score_gradient_of_a_per_row_value_centred_on_the_batch_is_unbiased() -> None:
    """E_q[((g - g.mean())^2).mean()] over 2 rows: each row's value depends on both rows' draws, so each draw is scored
    as a whole (a per-row score gave half the gradient). Exact: d/dth 2 q (1 - q) (2.5 / 2)^2 at th = 1."""
    q, p, values = _bernoulli_model(1.0, rows=2)
    g = LogProb(p)
    n = 400
    torch.manual_seed(6)
    value, draws = Expectation(q, (g - g.mean()) ** 2, sample_shape=n).mean().eval(values, return_dict=True)
    grad = torch.autograd.grad(value, q.th)[0].item()
    th = q.th.detach().clone().requires_grad_()
    exact = torch.autograd.grad(2 * torch.sigmoid(th) * (1 - torch.sigmoid(th)) * 1.5625, th)[0].item()
    z = draws["z"].reshape(n, 2)
    per_draw = (z[:, 0] != z[:, 1]).to(F64) * 1.5625 * (z - torch.sigmoid(q.th.detach())).sum(1)  # f * d log q
    torch.testing.assert_close(torch.tensor(grad, dtype=F64), per_draw.mean())
    assert abs(grad - exact) < 4 * per_draw.std().item() / math.sqrt(n), (grad, exact)


def test_leave_one_out_needs_f_per_row_for_an_f_reduced_over_the_batch() -> None:
    q, p = _normal_model()
    with pytest.raises(ValueError, match=r"baseline='loo' needs f per row \(one value per draw\), got f reduced over "
                                         r"the batch \(one number per draw\)"):
        REINFORCE(q, LogProb(p).sum(), sample_shape=(4,), baseline="loo").eval({"x": X})
