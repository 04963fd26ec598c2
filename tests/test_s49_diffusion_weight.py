"""The sampled diffusion bound's weight on its one draw of t (stop 49: a mutation that weighted it T instead of T - 1
survived, checked only by the printed formula and by a model whose middle terms are near 0).

Reference: the sum over t = 2..T of the step KLs evaluated one t at a time by hand (no `DiscreteUniform`, no
`SumOverSteps`), for a network far from the exact one, so that the middle terms dominate; the one-t-per-row estimator
is unbiased for it, and a weight of T (or T - 2) would be off by a quarter (or a third) of it at T = 5."""

from __future__ import annotations

import math

import torch

from kizuna.distributions import DDPM, DiffusionForward, DiffusionPosterior, DiffusionReverse, DiffusionSchedule
from kizuna.losses import Expectation, KullbackLeibler, LogProb, diffusion_bound

F64 = torch.float64


def test_the_sampled_bound_weights_its_one_step_by_t_minus_one() -> None:
    torch.manual_seed(0)
    s = DiffusionSchedule(torch.linspace(0.05, 0.4, 5, dtype=F64))
    rev = DiffusionReverse(lambda x, t: 0.5 * torch.ones_like(x), s)  # ε_θ = 0.5: far from the exact noise
    p = DDPM(rev, [2])
    x0 = 1.5 + 0.5 * torch.randn(4000, 2, dtype=F64)
    step = Expectation(DiffusionForward(s), KullbackLeibler(DiffusionPosterior(s), rev))
    with torch.no_grad():
        middle = sum(step.eval({"x_0": x0, "t": torch.full((4000,), t)}) for t in range(2, 6))
        l_T = KullbackLeibler(DiffusionForward(s, step=5, var="x_T"), p.prior).eval({"x_0": x0})
        l_0 = -Expectation(DiffusionForward(s, step=1), LogProb(p.decoder)).eval({"x_0": x0})
        exact = middle + l_T + l_0
        rows = x0.repeat(10, 1)
        sampled, terms = diffusion_bound(p).eval({"x_0": rows}, return_terms=True)
    assert middle.mean().item() > 3 * (l_T + l_0).abs().mean().item()  # the middle terms dominate the bound
    se = math.hypot(exact.std().item() / math.sqrt(4000), sampled.std().item() / math.sqrt(len(rows)))
    off_by_a_step = middle.mean().item() / 4  # what a weight of T (or T - 2) would add (or take away)
    assert off_by_a_step > 10 * se
    assert abs(sampled.mean().item() - exact.mean().item()) < 4 * se
    assert abs(terms["L_{1:T-1}"].item() - middle.mean().item()) < 4 * se
