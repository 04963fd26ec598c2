"""Stop 46: `IWAE` over a `MixtureOfNormal` proposal with learnable weights (an ``nn.Parameter``). The choice of the
expert is not differentiated, and IWAE added no score-function term for it (stop 45 added one to `Expectation` only):
the weights got only the explicit gradient of :math:`-\\log q` inside the bound, biased. IWAE now adds
:math:`\\sum_j (L_k - b_j)\\nabla_w \\log q(z_j)` with VIMCO's leave-one-out baselines :math:`b_j`, zero-valued."""

from __future__ import annotations

import math

import pytest
import test_s45_mixture_grad
import torch
from torch import nn

from kizuna.distributions import MixtureOfNormal, Normal
from kizuna.losses import ELBO, IWAE

float64 = test_s45_mixture_grad.float64  # the fixture: the default dtype float64 for a test

COMPONENTS = ((-1.5, 0.6), (1.0, 1.0))  # q's experts' (loc, scale)
X, LIK_SCALE = 1.2, 0.5  # the observation, and the likelihood p(x|z) = N(x; z, 0.5); the prior p(z) = N(0, 1)


def _model(weights, locs: list[nn.Parameter] | None = None) -> tuple[MixtureOfNormal, object, list[nn.Parameter]]:
    """q(z) (the mixture over ``COMPONENTS`` with ``weights``, its experts' locs learnable: ``locs`` or new ones),
    p(x, z), and the locs."""
    locs = locs or [nn.Parameter(torch.tensor([m])) for m, _ in COMPONENTS]
    experts = [Normal(var=["z"], loc=loc, scale=s, features_shape=[1], name=f"q{i}")
               for i, (loc, (_, s)) in enumerate(zip(locs, COMPONENTS))]
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="p")
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=LIK_SCALE, name="p")
    return MixtureOfNormal(experts, weights=weights, name="q"), lik * prior, locs


def _log_q(t: torch.Tensor, w: torch.Tensor, locs: list[torch.Tensor]) -> torch.Tensor:
    """log q(t) of the mixture, written with torch.distributions (differentiable in ``w`` and ``locs``)."""
    wn = w / w.sum()
    parts = [wn[i].log() + torch.distributions.Normal(locs[i], s).log_prob(t) for i, (_, s) in enumerate(COMPONENTS)]
    return torch.logsumexp(torch.stack(parts), 0)


def _log_w(t: torch.Tensor, w: torch.Tensor, locs: list[torch.Tensor]) -> torch.Tensor:
    """log p(x, t) - log q(t)."""
    joint = torch.distributions.Normal(t, LIK_SCALE).log_prob(torch.tensor(X)) + torch.distributions.Normal(
        0.0, 1.0).log_prob(t)
    return joint - _log_q(t, w, locs)


def _exact_iwae(k: int, w: torch.Tensor, locs: list[torch.Tensor]) -> torch.Tensor:
    r""":math:`\mathbb{E}_{z_{1:k} \sim q}[\log \frac1k \sum_j w(z_j)]` for k = 2 or 3 by nested quadrature on a grid
    (q's density is negligible at its ends, so the trapezoid rule is the plain sum; 301 points for k=2 agree with
    1,201 to 1e-14, 101 points for k=3 with 151 to 1e-6), differentiable in the weights and the locs."""
    t = torch.linspace(-9.0, 9.0, 301 if k == 2 else 101)
    dens = _log_q(t, w, locs).exp() * (t[1] - t[0])
    lw = _log_w(t, w, locs)
    if k == 2:
        return dens @ (torch.logaddexp(lw[:, None], lw[None, :]) - math.log(2)) @ dens
    grid = torch.logsumexp(torch.stack(torch.broadcast_tensors(lw[:, None, None], lw[None, :, None],
                                                               lw[None, None, :])), 0) - math.log(3)
    return torch.einsum("ijk,i,j,k->", grid, dens, dens, dens)


def _iwae_grads(k: int, blocks: int, rows: int, w: nn.Parameter, locs: list[nn.Parameter]) -> torch.Tensor:
    """The gradients of the mean over ``rows`` rows of IWAE_k w.r.t. (w, locs), one row per block."""
    q, p, _ = _model(w, locs)
    loss, x = IWAE(p, q, k=k), torch.full((rows, 1), X)
    grads = []
    for _ in range(blocks):
        value = loss.eval({"x": x}).mean()
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, [w, *locs])]))
    return torch.stack(grads)


@pytest.mark.parametrize("k", [2, 3])
def test_iwae_gradient_matches_quadrature(float64: None, one_thread: None, k: int) -> None:
    """The mean IWAE_k gradient w.r.t. the learnable weights (and the experts' locs, from the same draws) agrees with
    the gradient of the bound's expectation by nested quadrature within 5 standard errors. Before, the weights' mean
    gradient was the explicit term alone: (+0.17, -0.06) for k=2 against the exact (-1.11, +0.37), (+0.22, -0.07)
    for k=3 against (-0.52, +0.17), some 2,000 standard errors off; the locs' gradients are the same draws' as before
    (the term reaches the weights only)."""
    torch.manual_seed(k)
    w = nn.Parameter(torch.tensor([1.0, 3.0]))
    locs = [nn.Parameter(torch.tensor([m])) for m, _ in COMPONENTS]
    g = _iwae_grads(k, blocks=20, rows=4000, w=w, locs=locs)
    mean, se = g.mean(0), g.std(0) / g.shape[0] ** 0.5
    exact = torch.cat([e.reshape(-1) for e in torch.autograd.grad(_exact_iwae(k, w, locs), [w, *locs])])
    assert exact[:2].abs().min() > 0.1
    z = (mean - exact) / se
    assert z.abs().max() < 5, (mean, exact, z)


def test_vimco_signal_is_the_leave_one_out_bound() -> None:
    """`_vimco_signal` gives L_k - b_j, b_j the bound with log w_j replaced by the mean of the others', for each draw
    (brute force here), 0 where that is not finite (a draw of weight 0 beside one other), and L_1 for k=1; computed
    without subtracting, it stays exact beside a dominant weight."""
    from kizuna.losses.elbo import _vimco_signal
    torch.manual_seed(2)
    for k in (1, 2, 3, 5):
        a = torch.randn(k, 4, dtype=torch.float64) * 3
        a[0, 1] = -math.inf
        a[:, 2] = torch.tensor([60.0] + [-60.0] * (k - 1))
        bound = torch.logsumexp(a, 0) - math.log(k)
        ref = torch.empty_like(a)
        for j in range(k):
            b = torch.zeros(4, dtype=a.dtype)
            if k > 1:
                moved = a.clone()
                moved[j] = a[[i for i in range(k) if i != j]].mean(0)
                b = torch.logsumexp(moved, 0) - math.log(k)
            ref[j] = bound - b
        ref = torch.where(ref.isfinite(), ref, 0.0)
        assert (_vimco_signal(a) - ref).abs().max() < 1e-12, (k, _vimco_signal(a), ref)
    assert _vimco_signal(torch.tensor([[0.0], [-math.inf]], dtype=torch.float64))[:, 0].tolist() == [0.0, -math.log(2)]


def _hand_iwae(q, p, k: int, rows: int) -> torch.Tensor:
    """IWAE_k per row from q's reparameterised draws made here (the RNG as IWAE draws), no score term."""
    z = q.sample({}, batch_n=k * rows, reparam=True)["z"]
    values = {"x": torch.full((k * rows, 1), X), "z": z}
    return torch.logsumexp((p.get_log_prob(values) - q.get_log_prob(values)).reshape(k, -1), 0) - math.log(k)


@pytest.mark.parametrize("k", [1, 3])
def test_value_and_pathwise_gradients_unchanged(float64: None, k: int) -> None:
    """The score term is zero-valued: with learnable weights IWAE's value, and the experts' gradients, are those of
    the bound computed by hand from the same draws, bit for bit (the weights' gradient differs: the term). With fixed
    weights (numbers, a tensor, a parameter that does not require grad) and with a single Normal proposal, value and
    every gradient are the hand-made bound's, bit for bit."""
    for weights in (nn.Parameter(torch.tensor([1.0, 3.0])), [1.0, 3.0], torch.tensor([1.0, 3.0]),
                    nn.Parameter(torch.tensor([1.0, 3.0]), requires_grad=False), "normal"):
        q, p, locs = _model(None if weights == "normal" else weights)
        if isinstance(weights, str):
            q = q.p[1]
            locs = locs[1:]
        learnt = isinstance(weights, nn.Parameter) and weights.requires_grad
        params = [weights, *locs] if learnt else locs
        torch.manual_seed(3)
        value = IWAE(p, q, k=k).eval({"x": torch.full((6, 1), X)})
        grads = torch.autograd.grad(value.sum(), params)
        torch.manual_seed(3)
        hand = _hand_iwae(q, p, k, 6)
        hand_grads = torch.autograd.grad(hand.sum(), params)
        assert torch.equal(value, hand), weights
        for i, (g, h) in enumerate(zip(grads, hand_grads)):
            if learnt and i == 0:
                assert not torch.allclose(g, h)  # (the weights' term is there)
            else:
                assert torch.equal(g, h), (weights, i)


def test_iwae1_weights_gradient_is_the_elbo_one(float64: None) -> None:
    """k=1: IWAE is the ELBO, and its weights' score term (no baseline) is `ELBO`'s (`Expectation`'s) on the same
    draws."""
    w = nn.Parameter(torch.tensor([1.0, 3.0]))
    q, p, _ = _model(w)
    x = torch.full((7, 1), X)
    torch.manual_seed(4)
    iwae = IWAE(p, q, k=1).eval({"x": x}).sum()
    torch.manual_seed(4)
    elbo = ELBO(p, q).eval({"x": x}).sum()
    assert torch.equal(iwae, elbo)
    g_iwae, g_elbo = torch.autograd.grad(iwae, w)[0], torch.autograd.grad(elbo, w)[0]
    assert ((g_iwae - g_elbo).abs() <= 1e-12 * g_elbo.abs()).all(), (g_iwae, g_elbo)
