"""IterativeLoss's carried draws and masked term report, and the parameter memo of an evaluation nested in another
with another grad mode (formula review, stop 40, findings 3-5).

References: closed forms (Normal log-densities and KL divergences through torch.distributions), the step loss
evaluated step by step from the same seed, and d/dw mean(w^2 x^2 / 2) = w mean(x^2)."""

import pytest
import torch
from torch import nn
from torch.distributions import Normal as TNormal

from kizuna.distributions import Normal
from kizuna.formula.memo import memoized, shared_parameters
from kizuna.losses import Expectation, IterativeLoss, KullbackLeibler, LogProb, Loss

torch.set_num_threads(1)


# ------------------------------------------------------------------ 3: draws several per row are not carried
def _leak_model():
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, name="p")
    pu = Normal(var=["u"], loc=torch.zeros(2), scale=1.0, name="pu")  # unconditional: its rows from the values
    r = Normal(var=["x"], cond_var=["u"], loc="u", scale=1.0, name="r")
    return q, p, pu, r


def test_draws_several_per_row_do_not_reach_the_next_steps_prior():
    """The review's p11: E_q[log p(x|z)] with 4 draws per row plus E_{p(u)}[log r(x|u)]; the 4 draws of z, recorded
    (4, N, D), went into step 1's values and the prior p(u) drew 4 rows against N = 2 (a ValueError). The sum now
    equals the step loss evaluated at each step from the same seed, and with the draws replaced by their means the
    closed form sum_t [log N(x_t; x_t, 1) + log N(x_t; 0, 1)]."""
    q, p, pu, r = _leak_model()
    step = Expectation(q, LogProb(p), sample_shape=(4,)) + Expectation(pu, LogProb(r))
    loss = IterativeLoss(step, series_var=["x"])
    x = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    by_step = sum(step.eval({"x": x_t}) for x_t in x)
    torch.manual_seed(1)
    torch.testing.assert_close(loss.eval({"x": x}), by_step)
    torch.manual_seed(1)
    value, drawn = loss.eval({"x": x}, return_dict=True)
    torch.testing.assert_close(value, by_step)
    assert drawn["z"].shape == (4, 3, 2, 2) and drawn["u"].shape == (3, 2, 2)  # the draws are still reported
    exact = (TNormal(x, 1.0).log_prob(x) + TNormal(0.0, 1.0).log_prob(x)).sum(-1).sum(0)
    torch.testing.assert_close(loss.eval({"x": x}, sample_mean=True), exact)


def test_draws_inside_an_expectation_with_several_draws_are_not_carried():
    """u drawn once per row inside an expectation with 4 draws per row is laid out (4 N, D): it is not carried
    either (the top-level prior p(v) of the next step drew 8 rows against N = 2); the closed form with the means."""
    q, _, pu, r = _leak_model()
    pv = Normal(var=["v"], loc=torch.zeros(2), scale=1.0, name="pv")
    s = Normal(var=["x"], cond_var=["v"], loc="v", scale=1.0, name="s")
    step = Expectation(q, Expectation(pu, LogProb(r)), sample_shape=(4,)) + Expectation(pv, LogProb(s))
    x = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0))
    exact = 2 * TNormal(0.0, 1.0).log_prob(x).sum(-1).sum(0)
    torch.testing.assert_close(IterativeLoss(step, series_var=["x"]).eval({"x": x}, sample_mean=True), exact)


def test_a_draw_made_inside_several_draws_per_row_cannot_be_carried_by_update_value():
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    rw = Normal(var=["w"], cond_var=["z", "w_prev"], loc="z", scale=1.0, name="r")
    lik = Normal(var=["x"], cond_var=["w"], loc="w", scale=1.0)
    step = Expectation(q, Expectation(rw, LogProb(lik)), sample_shape=(4,))
    with pytest.raises(ValueError, match=r"draws w 4 times per row \(inside E_\{q\(z\|x\)\}.*: sample_shape=\(4,\)\), "
                                         r"but update_value carries it"):
        IterativeLoss(step, series_var=["x"], update_value={"w": "w_prev"})


# ------------------------------------------------------------------ 4: masked terms weighed as the loss weighs them
X = torch.tensor([[[0.0], [2.0]], [[1.0], [3.0]], [[0.5], [4.0]]])  # (T, N, 1)
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # row 1 ends after step 0


@pytest.mark.parametrize("series_dim", [0, 1])
def test_a_one_term_step_loss_reduced_over_the_batch_reports_the_loss(series_dim):
    """The review's p15: KL[q(z|x)||N(0,1)].mean() under a (T, N) mask. The loss is Pixyz's: each step's batch mean
    times each row's weight, sum_t mean_j(x_tj^2 / 2) m_ti = [7.5625, 1.0]; its term reported 1.3125 (the per-row
    KL masked per row), now the loss's batch mean 4.28125."""
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="prior")
    loss = IterativeLoss(KullbackLeibler(q, prior).mean(), series_var=["x"], series_dim=series_dim)
    x, mask = (X, MASK) if series_dim == 0 else (X.transpose(0, 1), MASK.T)
    with pytest.warns(UserWarning, match="reduced over the batch"):  # (stop 44: Pixyz's numbers, with a warning)
        value, terms = loss.eval({"x": x}, mask=mask, return_terms=True)
    kl = torch.distributions.kl_divergence(TNormal(X, 1.0), TNormal(0.0, 1.0)).sum(-1)  # (T, N): x^2 / 2
    expected = (kl.mean(1, keepdim=True) * MASK).sum(0)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(value, torch.tensor([7.5625, 1.0]))
    assert list(terms) == ["sum_{t=0}^{T-1} KL[q(z|x)||prior(z)]"]
    torch.testing.assert_close(terms["sum_{t=0}^{T-1} KL[q(z|x)||prior(z)]"], value.mean())


def test_masked_terms_add_up_to_the_loss_per_row_and_reduced():
    """A step loss with a reduced term and a per-row term, KL.mean() - log r(x): the per-row term is weighed per row,
    the reduced one by the step's mean weight; the terms (the log-density's sign is the formula's) give loss.mean()."""
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="prior")
    r = Normal(var=["x"], loc=1.0, scale=2.0, name="r")
    loss = IterativeLoss(KullbackLeibler(q, prior).mean() - LogProb(r), series_var=["x"])
    with pytest.warns(UserWarning, match="reduced over the batch"):  # (stop 44: the padded rows stay in KL.mean())
        value, terms = loss.eval({"x": X}, mask=MASK, return_terms=True)
    kl = (X.squeeze(-1) ** 2) / 2
    logr = TNormal(1.0, 2.0).log_prob(X).sum(-1)
    torch.testing.assert_close(value, ((kl.mean(1, keepdim=True) - logr) * MASK).sum(0))
    kl_term, logr_term = terms["sum_{t=0}^{T-1} KL[q(z|x)||prior(z)]"], terms["sum_{t=0}^{T-1} log r(x)"]
    torch.testing.assert_close(kl_term, (kl.mean(1) * MASK.mean(1)).sum())
    torch.testing.assert_close(logr_term, (logr * MASK).sum(0).mean())
    torch.testing.assert_close(kl_term - logr_term, value.mean())


# ------------------------------------------------------------------ 5: an evaluation nested with another grad mode
class _Q(Normal):
    """q(z|x) = N(w x, 1), counting its network's calls."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.w, self.calls = nn.Parameter(torch.tensor(1.0)), 0

    def forward(self, x):
        self.calls += 1
        return {"loc": self.w * x, "scale": torch.ones_like(x)}


class _Nested(Loss):
    """A custom term that evaluates another loss inside the evaluation, in a given grad mode (a baseline without
    gradients, or a value that needs them), returning ``read(value)``."""

    def __init__(self, loss, grad, read=lambda v: v.detach()):
        super().__init__(["x"])
        self.inner, self.grad, self.read = loss, grad, read

    def _value(self, ctx):
        with torch.set_grad_enabled(self.grad):
            return self.read(self.inner.eval(ctx.values))

    def _render(self, fmt):
        return "b"


X2 = torch.tensor([[1.0], [2.0]])


def test_a_nested_evaluation_without_gradients_leaves_no_parameters_for_the_outer_terms():
    """The review's p17: KL[q||N(0,1)] minus a baseline that evaluates the same KL under no_grad. With the baseline
    first, its graph-less parameters were reused by the outer KL: no gradient (requires_grad False). Now the
    gradient is d/dw mean(w^2 x^2 / 2) = w mean(x^2) = 2.5 in either order. With the KL first, its parameters (with
    their graph) serve the baseline too: q's network runs once; with the baseline first, twice."""
    for baseline_first in (False, True):
        q = _Q()
        kl = KullbackLeibler(q, Normal(var=["z"], loc=0.0, scale=1.0, name="prior"))
        baseline = _Nested(kl, grad=False)
        loss = (-baseline + kl).mean() if baseline_first else (kl - baseline).mean()
        value = loss.eval({"x": X2})
        assert value.requires_grad, f"baseline first: {baseline_first}"
        (grad,) = torch.autograd.grad(value, q.w)
        torch.testing.assert_close(grad, (X2**2).mean())
        assert q.calls == (2 if baseline_first else 1)


def test_a_nested_evaluation_with_gradients_inside_one_without_does_not_reuse_graphless_parameters():
    """An outer evaluation under no_grad (validation) whose term needs a gradient (evaluated under enable_grad): the
    outer KL's parameters, computed first without a graph, were reused inside, and autograd.grad failed. The nested
    evaluation has a memo of its own: the gradient d/dw mean(w^2 x^2 / 2) = 2.5 at w = 1, the KL mean 1.25."""
    q = _Q()
    kl = KullbackLeibler(q, Normal(var=["z"], loc=0.0, scale=1.0, name="prior"))
    probe = _Nested(kl.mean(), grad=True, read=lambda v: torch.autograd.grad(v, q.w)[0].detach())
    with torch.no_grad():
        value = (kl.mean() + probe).eval({"x": X2})
    torch.testing.assert_close(value, torch.tensor(1.25 + 2.5))


def test_the_memo_of_a_block_nested_without_gradients_keeps_only_the_outer_entries():
    """At the memo: inside a no_grad block nested in an evaluation with gradients, an outer entry is found and a new
    one is made; after the block the new one is gone (computed again) and the outer one stays."""
    owner, a, b, calls = object(), torch.zeros(1), torch.zeros(1), []

    def compute(v):
        calls.append(v)
        return v

    with torch.enable_grad(), shared_parameters():
        assert memoized(owner, "t", [a], compute, 1) == 1
        with torch.no_grad(), shared_parameters():
            assert memoized(owner, "t", [a], compute, 2) == 1  # the outer entry
            assert memoized(owner, "t", [b], compute, 3) == 3
            assert memoized(owner, "t", [b], compute, 4) == 3  # shared within the nested block
        assert memoized(owner, "t", [b], compute, 5) == 5  # the nested block's entry is gone
        assert memoized(owner, "t", [a], compute, 6) == 1
        with shared_parameters():  # nested in the same grad mode: one memo, as before
            assert memoized(owner, "t", [b], compute, 7) == 5
    assert calls == [1, 3, 5]
