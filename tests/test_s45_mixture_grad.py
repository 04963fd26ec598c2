"""Stop 45, review U: gradients of an expectation over a `MixtureOfNormal` with learnable weights (the choice of the
expert was not differentiated: the weights got a zero-mean noise gradient), and `ProductOfNormal` given weights that
require grad (silently read as numbers)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from kizuna.distributions import MixtureOfNormal, Normal, ProductOfNormal
from kizuna.losses import Expectation, KullbackLeibler, LogProb

COMPONENTS = ((-2.0, 0.5), (1.0, 1.0))  # the experts' (loc, scale)
TARGET = (1.5, 1.0)  # p(z)


def _mixture(weights: torch.Tensor | list[float] | None,
             learn_experts: bool = False) -> tuple[MixtureOfNormal, list[nn.Parameter]]:
    """The 1-D mixture q(z) over ``COMPONENTS`` with ``weights`` (as given: a parameter, a tensor or numbers), and the
    experts' loc / scale as parameters when ``learn_experts``."""
    experts, params = [], []
    for i, (m, s) in enumerate(COMPONENTS):
        loc, scale = (nn.Parameter(torch.tensor([m])), nn.Parameter(torch.tensor([s]))) if learn_experts else (m, s)
        params += [loc, scale] if learn_experts else []
        experts.append(Normal(var=["z"], loc=loc, scale=scale, features_shape=[1], name=f"q{i}"))
    return MixtureOfNormal(experts, weights=weights, name="q"), params


def _exact(w: torch.Tensor, locs: list[torch.Tensor], scales: list[torch.Tensor]) -> torch.Tensor:
    r""":math:`\mathbb{E}_q[\log p(z) - \log q(z)]` (the negative KL to p) by a dense trapezoid rule, differentiable in
    the weights and the experts' parameters."""
    t = torch.linspace(-12.0, 12.0, 24001, dtype=torch.float64)
    wn = w / w.sum()
    comps = [torch.distributions.Normal(m, s) for m, s in zip(locs, scales)]
    lq = torch.logsumexp(torch.stack([wn[i].log() + c.log_prob(t) for i, c in enumerate(comps)]), 0)
    f = torch.distributions.Normal(*TARGET).log_prob(t) - lq
    density = sum(wn[i] * c.log_prob(t).exp() for i, c in enumerate(comps))
    return torch.trapezoid(density * f, t)


def _mean_and_se(loss, params: list[nn.Parameter], blocks: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the gradient of ``loss`` (one value per row, averaged) over ``blocks`` draws of ``rows`` rows, and
    its standard error."""
    grads = []
    for _ in range(blocks):
        value = loss.eval({}, batch_n=rows).mean()
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)]))
    g = torch.stack(grads)
    return g.mean(0), g.std(0) / blocks**0.5


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("form", ["expectation", "renamed", "kl"])
def test_learnable_weights_get_the_unbiased_gradient(float64: None, form: str) -> None:
    """The gradient of E_q[log p(z) - log q(z)] w.r.t. nn.Parameter weights (and, in the same draws, the experts'
    loc / scale, differentiated through the chosen expert's draw) averages to the quadrature's within 5 standard
    errors. Before, the weights' mean gradient was 0 (only the explicit term of -log q, whose mean is 0) where the
    exact one is -0.99 / +0.33; the mixture renamed, and the Monte Carlo KL, draw alike."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.tensor([1.0, 3.0]))
    q, experts = _mixture(w, learn_experts=True)
    p = Normal(var=["z"], loc=TARGET[0], scale=TARGET[1], features_shape=[1], name="p")
    if form == "expectation":
        loss = Expectation(q, LogProb(p) - LogProb(q))
    elif form == "renamed":
        qu, pu = q.replace_var(z="u"), p.replace_var(z="u")
        loss = Expectation(qu, LogProb(pu) - LogProb(qu))
    else:
        loss = -KullbackLeibler(q, p, analytic=False)
    params = [w, *experts]
    mean, se = _mean_and_se(loss, params, blocks=20, rows=4000)
    exact_value = _exact(w, experts[0::2], experts[1::2])
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(exact_value, params)])
    z = (mean - exact) / se
    assert exact[:2].abs().min() > 0.3  # (the weights' gradient is far from 0: the old mean)
    assert z.abs().max() < 5, (mean, exact, z)


def test_learnable_weights_in_a_product_and_with_sample_shape(float64: None) -> None:
    """The weights' score term is added for the mixture as a factor of a product (E over q(z) p(x|z)) and for several
    draws per row (sample_shape), whose draws are laid out as rows."""
    torch.manual_seed(1)
    w = nn.Parameter(torch.tensor([1.0, 3.0]))
    q, _ = _mixture(w)
    p = Normal(var=["z"], loc=TARGET[0], scale=TARGET[1], features_shape=[1], name="p")
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, features_shape=[1], name="r")
    exact = torch.autograd.grad(_exact(w, [torch.tensor(m) for m, _ in COMPONENTS],
                                       [torch.tensor(s) for _, s in COMPONENTS]), w)[0]
    for loss in (Expectation(q * lik, LogProb(p) - LogProb(q)), Expectation(q, LogProb(p) - LogProb(q), [50])):
        rows = 80 if loss.sample_shape else 4000
        mean, se = _mean_and_se(loss, [w], blocks=20, rows=rows)
        assert ((mean - exact) / se).abs().max() < 5, (loss, mean, exact)


def test_fixed_weights_keep_the_pathwise_gradient_bitwise(float64: None) -> None:
    """With fixed weights (numbers, a tensor, or a parameter that does not require grad) nothing is added: the value
    and the experts' gradients are those of the reparameterised draw of `sample`, bit for bit."""
    for weights in ([1.0, 3.0], torch.tensor([1.0, 3.0]), nn.Parameter(torch.tensor([1.0, 3.0]), requires_grad=False)):
        q, experts = _mixture(weights, learn_experts=True)
        p = Normal(var=["z"], loc=TARGET[0], scale=TARGET[1], features_shape=[1], name="p")
        torch.manual_seed(2)
        value = Expectation(q, LogProb(p) - LogProb(q)).eval({}, batch_n=64).mean()
        grads = torch.autograd.grad(value, experts)
        torch.manual_seed(2)
        z = q.sample({}, batch_n=64, reparam=True)
        hand = (p.get_log_prob(z) - q.get_log_prob(z)).mean()
        assert torch.equal(value, hand)
        for g, h in zip(grads, torch.autograd.grad(hand, experts)):
            assert torch.equal(g, h)


def test_product_of_normal_warns_for_weights_that_require_grad() -> None:
    """weight_modalities given as an nn.Parameter (or a tensor that requires grad) is read as fixed numbers: a
    UserWarning says so at the user's line, as MixtureOfNormal's for a weight tensor; plain numbers and a tensor that
    does not require grad are taken silently."""
    qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
    for weights in (nn.Parameter(torch.tensor([1.0, 2.0, 0.5])), torch.tensor([1.0, 2.0, 0.5], requires_grad=True)):
        with pytest.warns(UserWarning, match=r"^ProductOfNormal: weight_modalities is a tensor that requires grad; its "
                                             r"values are read as fixed numbers, so no gradient reaches it") as rec:
            q = ProductOfNormal([qx, qy], weight_modalities=weights, name="q")
        assert rec[0].filename == __file__
        assert q.weight_modalities == [1.0, 2.0, 0.5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ProductOfNormal([qx, qy], weight_modalities=torch.tensor([1.0, 2.0, 0.5]), name="q")
        ProductOfNormal([qx, qy], weight_modalities=[1.0, 2.0, 0.5], name="q")
