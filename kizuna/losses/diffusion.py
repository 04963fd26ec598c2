r"""Diffusion losses written with the loss algebra (Ho et al. 2020, arXiv:2006.11239).

The variational bound on :math:`-\log p_\theta(x_0)`:

.. math::
    L = \underbrace{D_{KL}[q(x_T|x_0)\|p(x_T)]}_{L_T}
      + \sum_{t=2}^{T} \underbrace{\mathbb{E}_{q(x_t|x_0)} D_{KL}[q(x_{t-1}|x_t,x_0)\|p_\theta(x_{t-1}|x_t)]}_{L_{t-1}}
      \underbrace{- \mathbb{E}_{q(x_1|x_0)}[\log p_\theta(x_0|x_1)]}_{L_0}

with the sum estimated without bias as :math:`(T-1)\,\mathbb{E}_{u(t)}[L_{t-1}]`, :math:`u` uniform
on ``2..T``; every KL is the closed form between Gaussians. The simplified loss
:math:`\mathbb{E}_{u(t)}\mathbb{E}_{q(x_t|x_0)}\|\epsilon - \epsilon_\theta(x_t, t)\|^2`, ``t`` uniform
on ``1..T``, drops the weights :math:`\frac{\beta_t^2}{2\sigma_t^2\alpha_t(1-\bar\alpha_t)}` of the
same terms. Divide the bound by :math:`D \ln 2` for bits per dimension (with `DiffusionDecoder`,
a bound on the discrete data's code length).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from kizuna._data import computing_dtype
from kizuna._text import LATEX
from kizuna.distributions.base import batch_size_of
from kizuna.distributions.diffusion import (
    DDPM,
    DiffusionForward,
    DiffusionPosterior,
    DiffusionReverse,
    DiscreteUniform,
    reading_lifted_data,
    stop_mean_gradient,
)
from kizuna.formula.expr import EvalContext, Loss, Tensor
from kizuna.formula.log_prob import LogProb
from kizuna.formula.memo import release_step, step_mark
from kizuna.losses.divergences import KullbackLeibler
from kizuna.losses.expectation import Expectation

_TEXT = {"text": "||ε - ε_θ({0},{1})||^2", "latex": r"\left\|\epsilon - \epsilon_\theta({0},{1})\right\|^2"}


class NoisePredictionError(Loss):
    """:math:`\\|\\epsilon - \\epsilon_\\theta(x_t, t)\\|^2` per row (:math:`\\epsilon_\\theta(x_t, t, c)` for a
    conditional reverse process, its ``context_var`` read from the values).

    The noise is recovered from the draw as its standardised value under the forward process,
    :math:`\\epsilon = (x_t - \\mu)/\\sigma` with :math:`\\mu = \\sqrt{\\bar\\alpha_t}x_0`,
    :math:`\\sigma = \\sqrt{1-\\bar\\alpha_t}` the parameters of :math:`q(x_t|x_0,t)` (within one
    evaluation, the very parameters the draw used).

    Args:
        reverse: the reverse process whose :math:`\\epsilon_\\theta` is scored.
        data_var: the name of :math:`x_0`.
        noising: :math:`q(x_t|x_0,t)` over the same schedule and names (default: a new one); give the
            one that draws :math:`x_t` (as `simple_diffusion_loss` does) to share its parameters.
    """

    def __init__(self, reverse: DiffusionReverse, data_var: str = "x_0",
                 noising: DiffusionForward | None = None) -> None:
        if reverse.step is not None:
            raise ValueError(f"NoisePredictionError: {reverse.prob_text} has a fixed step; give the process over all t")
        super().__init__([data_var, reverse.noisy_var, reverse.t_var, *reverse.context_var])
        if noising is None:
            noising = DiffusionForward(reverse.schedule, var=reverse.noisy_var, data_var=data_var, t_var=reverse.t_var)
        elif (noising.step is not None or noising.var != [reverse.noisy_var] or noising.data_var != data_var
              or noising.t_var != reverse.t_var or noising.schedule is not reverse.schedule):
            raise ValueError(f"NoisePredictionError: {noising.prob_text} must be the forward process over all t of "
                             f"{reverse.prob_text}'s schedule, drawing {reverse.noisy_var} from {data_var}")
        self.reverse, self.data_var, self.noising = reverse, data_var, noising

    def _own_distributions(self) -> list[DiffusionReverse | DiffusionForward]:
        return [self.reverse, self.noising]

    def _value(self, ctx: EvalContext) -> Tensor:
        rev, values = self.reverse, ctx.values
        xt = values[rev.noisy_var]
        q = self.noising.get_params(values)
        eps = (xt - q["loc"]) / q["scale"]
        context = {c: values[c] for c in rev.context_var}
        err = (eps - rev.epsilon(xt, rev.schedule.index(values[rev.t_var], xt), context)).pow(2)
        return err.flatten(1).sum(1) if err.dim() > 1 else err  # scalar data: one entry per row

    def _render(self, fmt: dict[str, str]) -> str:
        template = _TEXT["latex"] if fmt is LATEX else _TEXT["text"]
        return template.format(self.reverse.noisy_var, self.reverse.t_var)


class SumOverSteps(Loss):
    """:math:`\\sum_{t=\\mathrm{low}}^{\\mathrm{high}} f(t)`: ``f`` evaluated at every step, per row.

    The exact counterpart of :math:`(\\mathrm{high}-\\mathrm{low}+1)\\,\\mathbb{E}_{u(t)}[f(t)]`: the same
    expectation without the variance of drawing ``t`` (``high - low + 1`` evaluations of ``f``).
    """

    def __init__(self, f: Loss, low: int, high: int, t_var: str = "t") -> None:
        if high < low:
            raise ValueError(f"SumOverSteps: high={high} < low={low}")
        super().__init__([v for v in f.input_var if v != t_var])
        self.f, self.low, self.high, self.t_var = f, low, high, t_var

    def subterms(self) -> list[Loss]:
        return [self.f]

    def _value(self, ctx: EvalContext) -> Tensor:
        rows = batch_size_of(ctx.values)
        rows = 1 if rows is None else rows  # an empty batch: no rows (one row only when nothing sets the batch)
        device = next((v.device for v in ctx.values.values() if isinstance(v, Tensor)), None)
        total: Tensor | None = None
        mark = step_mark()
        for t in range(self.low, self.high + 1):
            step = torch.full((rows,), t, dtype=torch.long, device=device)
            value = ctx.child({**ctx.values, self.t_var: step}).value(self.f)
            release_step(mark)  # the step's memo entries (network outputs) are freed when it ends
            total = value if total is None else total + value
        assert total is not None
        return total

    def _render(self, fmt: dict[str, str]) -> str:
        template = r"\sum_{{{0}={1}}}^{{{2}}} {3}" if fmt is LATEX else "sum_{{{0}={1}}}^{{{2}}} {3}"
        return template.format(self.t_var, self.low, self.high, self.f._render(fmt))


def diffusion_bound(p: DDPM, exact_steps: bool = False) -> Loss:
    """The variational bound :math:`L_T + \\sum_t L_{t-1} + L_0` per row (module docstring), in nats.

    With ``exact_steps`` the sum over ``t`` is evaluated term by term (`SumOverSteps`, ``T - 1``
    network evaluations per row) instead of estimated from one uniform draw of ``t``.

    For a half-precision model (``.half()`` / ``.to(torch.bfloat16)``) or 16-bit data the bound is computed and
    returned in float32 (`kizuna._data.computing_dtype`), the network still in its own dtype.

    >>> import torch
    >>> from kizuna.distributions.diffusion import DiffusionReverse, DiffusionSchedule
    >>> p = DDPM(DiffusionReverse(lambda x, t: torch.zeros_like(x), DiffusionSchedule.linear(50)), [2])
    >>> print(diffusion_bound(p))
    KL[q(x_T|x_0)||p(x_T)] + 49 * E_{u(t)}[E_{q(x_t|x_0,t)}[KL[q(x_{t-1}|x_t,x_0,t)||p(x_{t-1}|x_t,t)]]] \
- E_{q(x_1|x_0)}[log p(x_0|x_1)]
    >>> diffusion_bound(p).eval({"x_0": torch.zeros(3, 2)}).shape
    torch.Size([3])
    """
    schedule, rev, x0 = p.schedule, p.reverse, p.var[0]
    T = schedule.T
    q_T = DiffusionForward(schedule, step=T, var=p.prior.var[0], data_var=x0)
    bound: Loss = KullbackLeibler(q_T, p.prior).named("L_T")
    if T >= 2:
        q_t = DiffusionForward(schedule, var=rev.noisy_var, data_var=x0, t_var=rev.t_var)
        post = DiffusionPosterior(schedule, var=rev.var[0], noisy_var=rev.noisy_var, data_var=x0, t_var=rev.t_var)
        step = Expectation(q_t, KullbackLeibler(post, rev))
        if exact_steps:
            bound = bound + SumOverSteps(step, 2, T, rev.t_var).named("L_{1:T-1}")
        else:
            bound = bound + ((T - 1) * Expectation(DiscreteUniform(2, T, var=rev.t_var), step)).named("L_{1:T-1}")
    q_1 = DiffusionForward(schedule, step=1, var=p.decoder.cond_var[0], data_var=x0)
    return _DataShapeChecked(bound - Expectation(q_1, LogProb(p.decoder)).named("-L_0"), x0, p.features_shape)


class _DataShapeChecked(Loss):
    """``f`` after checking that the data ``var`` has the model's ``features_shape`` per row: the bound's L_T is a KL
    against the prior of that shape, which broadcast other data against it silently (x_0 of shape (B, 1) against a
    prior over 2 features counted the feature twice in L_T, and only there). Prints and reports as ``f``.

    16-bit data (a model converted by ``.half()`` / ``.to(torch.bfloat16)``) are lifted to their computing dtype
    (`kizuna._data.computing_dtype`, float32) first, so that the bound's own arithmetic (the draws of x_t, the
    posterior and reverse means, the KLs, the decoder and the sums over features and steps) runs in float32 and its
    value is float32; the network still sees x_t in its own dtype (`DiffusionReverse.epsilon`) and a
    `DiffusionDecoder` reads the lifted data as 16-bit values. Computed in bfloat16 the bound was 3 nats (11%) too high
    (T = 1000, 2-D data: 30.55 for float32's 27.48 with the same weights) and a bfloat16 / float16 tensor.
    `simple_diffusion_loss` is lifted the same way (its noise, draws and squared errors in float32; no
    ``features_shape`` to check there, None)."""

    is_operator = True  # (its terms are f's)

    def __init__(self, f: Loss, var: str, features_shape: Sequence[int] | None = None) -> None:
        super().__init__(f.input_var)
        self.f, self.var = f, var
        self.features_shape = None if features_shape is None else torch.Size(features_shape)

    @property
    def precedence(self) -> int:  # type: ignore[override]
        return self.f.precedence

    def subterms(self) -> list[Loss]:
        return [self.f]

    def _value(self, ctx: EvalContext) -> Tensor:
        x0 = ctx.values.get(self.var)
        if self.features_shape is not None and isinstance(x0, Tensor) and x0.shape[1:] != self.features_shape:
            raise ValueError(f"{self.f}: {self.var} has shape {tuple(x0.shape)}, but the model's features_shape is "
                             f"{tuple(self.features_shape)} (rows of that shape)")
        if isinstance(x0, Tensor) and x0.is_floating_point() and computing_dtype(x0.dtype) != x0.dtype:
            lifted = ctx.child({**ctx.values, self.var: x0.to(computing_dtype(x0.dtype))})
            lifted.results = ctx.results  # (the terms' values, which eval(return_terms=True) reads)
            with reading_lifted_data(x0.dtype):  # (a DiffusionDecoder reads them as the 16-bit values they were)
                return lifted.value(self.f)
        return ctx.value(self.f)

    def _render(self, fmt: dict[str, str]) -> str:
        return self.f._render(fmt)

    def __repr__(self) -> str:  # (the loss it checks: `diffusion_bound`'s sum, `simple_diffusion_loss`'s Expectation)
        return repr(self.f)


def simple_diffusion_loss(reverse: DiffusionReverse, data_var: str = "x_0") -> Loss:
    """Ho et al.'s :math:`L_\\mathrm{simple}` per row (module docstring).

    >>> import torch
    >>> from kizuna.distributions.diffusion import DiffusionSchedule
    >>> rev = DiffusionReverse(lambda x, t: torch.zeros_like(x), DiffusionSchedule.linear(100))
    >>> print(simple_diffusion_loss(rev))
    E_{u(t)}[E_{q(x_t|x_0,t)}[||ε - ε_θ(x_t,t)||^2]]
    """
    q_t = DiffusionForward(reverse.schedule, var=reverse.noisy_var, data_var=data_var, t_var=reverse.t_var)
    u = DiscreteUniform(1, reverse.schedule.T, var=reverse.t_var)
    return _DataShapeChecked(Expectation(u, Expectation(q_t, NoisePredictionError(reverse, data_var, q_t))), data_var)


NICHOL_WEIGHT = 0.001 / math.log(2)
"""Nichol & Dhariwal's :math:`\\lambda = 0.001` on a bound in bits, as a weight of the bound in nats."""


class _MeanStopped(Loss):
    """``f`` evaluated with the reverse process's mean detached (`stop_mean_gradient`): the same value, gradients
    only through the learned variances."""

    def __init__(self, f: Loss) -> None:
        super().__init__(f.input_var)
        self.f = f

    def subterms(self) -> list[Loss]:
        return [self.f]

    def _value(self, ctx: EvalContext) -> Tensor:
        with stop_mean_gradient():
            return ctx.value(self.f)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["paren"].format(self.f._render(fmt)) + ("_{sg(\\mu)}" if fmt is LATEX else "_sg(μ)")


def hybrid_diffusion_loss(p: DDPM, weight: float = NICHOL_WEIGHT, data_var: str | None = None) -> Loss:
    r"""Nichol & Dhariwal's :math:`L_{hybrid} = L_{simple} + \lambda L_{vlb}` per row (arXiv:2102.09672, §3.1).

    :math:`L_{vlb}` is `diffusion_bound` with the reverse process's mean detached, so it trains only the learned
    variances (``DiffusionReverse(..., variance="learned")``) and :math:`L_{simple}` only the mean; ``weight`` is
    :math:`\lambda` for both terms as kizuna writes them, summed over the entries of a row and the bound in nats.
    Their code takes the mean over entries in both terms and the bound in bits, so their :math:`\lambda = 0.001` is
    ``0.001 / ln 2`` here (`NICHOL_WEIGHT`, the default). The two terms draw their own steps and noise.

    >>> import torch
    >>> from kizuna.distributions.diffusion import DiffusionReverse, DiffusionSchedule
    >>> net = lambda x, t: torch.zeros(x.shape[0], 2 * x.shape[1])
    >>> p = DDPM(DiffusionReverse(net, DiffusionSchedule.linear(50), variance="learned"), [2])
    >>> hybrid_diffusion_loss(p).eval({"x_0": torch.zeros(3, 2)}).shape
    torch.Size([3])
    """
    data_var = p.var[0] if data_var is None else data_var
    if data_var != p.var[0]:  # (L_simple read data_var and L_vlb p's variable: two data variables)
        raise ValueError(f"hybrid_diffusion_loss: data_var must be the model's data variable {p.var[0]!r} (both terms "
                         f"read it), got {data_var!r}")
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight < math.inf:
        raise ValueError(f"hybrid_diffusion_loss: weight (lambda) must be a finite number >= 0, got {weight!r}")
    if p.reverse.variance != "learned":
        raise ValueError(f"hybrid_diffusion_loss: {p.reverse.prob_text} has fixed variances "
                         f"(variance={p.reverse.variance!r}); L_vlb would train nothing: use simple_diffusion_loss, "
                         "or DiffusionReverse(..., variance='learned')")
    vlb = _MeanStopped(diffusion_bound(p)).named("L_vlb")
    return simple_diffusion_loss(p.reverse, data_var).named("L_simple") + weight * vlb
