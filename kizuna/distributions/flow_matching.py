r"""Flow matching: a continuous normalising flow trained by regressing a velocity field.

The model is the push-forward of :math:`p_0 = \mathcal{N}(0, I)` by the ODE
:math:`\dot x_t = v_\theta(x_t, t)` from :math:`t = 0` to :math:`t = 1` (Lipman et al. 2023,
arXiv:2210.02747; Liu et al. 2022, rectified flow, arXiv:2209.03003). Its log-density is exact by the
instantaneous change of variables (Chen et al. 2018, arXiv:1806.07366):

.. math::
    \log p_1(x_1) = \log p_0(x_0) - \int_0^1 \nabla\!\cdot v_\theta(x_t, t)\,dt,

solved backwards from :math:`x_1` with fixed-step RK4 on :math:`(x_t, \int\nabla\cdot v)`. The
divergence is exact (``trace="exact"``: one Jacobian diagonal per row, ``D`` copies of the row in one
backward pass) or Hutchinson's unbiased estimate :math:`\mathbb{E}_\epsilon[\epsilon^\top J\epsilon]`
(``trace="hutchinson"``, Grathwohl et al. 2019, arXiv:1810.01367), for large ``D``.

The training path :math:`x_t = t x_1 + (1 - (1-\sigma_{min})t)\,x_0` and its target velocity are the
`FlowInterpolant` and `kizuna.losses.VelocityError`; `OTCoupling` pairs noise with data by minibatch
optimal transport (Tong et al. 2023, arXiv:2302.00482). Sampling uses `kizuna.samplers.LinearPath`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from kizuna._data import check_count, check_shape, first_nonfinite, sigma_min_value
from kizuna.distributions.base import (
    Distribution,
    Tensor,
    XDict,
    batch_size_of,
    draws_as_rows,
    repeat_batch,
    sum_rows,
)
from kizuna.distributions.torch_dist import validation_enabled
from kizuna.samplers.integrators import SAMPLERS
from kizuna.samplers.paths import LinearPath, _network_tensor


class FlowMatching(Distribution):
    """:math:`p_\\theta(x)`: the ODE push-forward of :math:`\\mathcal{N}(0, I)` by :math:`v_\\theta` (module docstring).

    Args:
        velocity: ``velocity(x, t, *context) -> v`` (the shape of ``x``; ``t`` of shape ``(batch,)``).
        features_shape: the shape of one ``x``.
        var: the variable's name.
        context_var: conditioning variables (a conditional flow; guidance: `kizuna.samplers.Guided`).
        sigma_min: the path's noise at ``t = 1`` (0: rectified flow / OT path).
        sampler, n_steps: the ODE sampler for ``sample`` (``"heun"`` with 25 steps: 50 evaluations, the last step
            corrected too since the velocity is defined at the data end).
        likelihood_steps: RK4 steps of the likelihood ODE (4 evaluations each).
        trace: ``"exact"`` or ``"hutchinson"``; ``n_probes`` Rademacher probes for the latter.

    One row of context conditions every draw of ``sample`` (for any ``batch_n``); a context of another number of
    rows than ``batch_n`` is refused. ``sample(..., generator=g)`` and ``get_log_prob(..., generator=g)`` (Hutchinson's
    probes) draw from ``g``, not torch's global generator (as every family's: `kizuna.distributions.base.drawing_from`).
    Draws made with a ``sample_shape``, ``(*sample_shape, batch, *features)``, are scored draw by draw and summed as
    every family sums them (over every dimension but the first).
    """

    def __init__(self, velocity: Callable[..., Tensor], features_shape: Sequence[int], var: str = "x",
                 context_var: Sequence[str] = (), sigma_min: float = 0.0, sampler: str = "heun", n_steps: int = 25,
                 likelihood_steps: int = 50, trace: str = "exact", n_probes: int = 1, name: str = "p") -> None:
        # (-2 was accepted, and failed in sample with "negative dimension"; a bare 3 raised "'int' is not iterable")
        features_shape = check_shape("FlowMatching: features_shape", features_shape)
        super().__init__([var], list(context_var), name, features_shape)
        if sampler not in ("euler", "heun"):
            raise ValueError(f"FlowMatching: sampler must be 'euler' or 'heun', got {sampler!r}")
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"FlowMatching: trace must be 'exact' or 'hutchinson', got {trace!r}")
        sigma_min = sigma_min_value("FlowMatching", sigma_min)
        if trace == "hutchinson":
            check_count("FlowMatching: n_probes", n_probes, 1)
        check_count("FlowMatching: n_steps", n_steps, 1)  # 2.7 was truncated to 2
        check_count("FlowMatching: likelihood_steps", likelihood_steps, 1)
        self.velocity_net, self.sigma_min = velocity, float(sigma_min)
        self.sampler, self.n_steps, self.likelihood_steps = sampler, int(n_steps), int(likelihood_steps)
        self.trace, self.n_probes = trace, int(n_probes)

    @property
    def distribution_name(self) -> str:
        return "FlowMatching"

    @property
    def has_reparam(self) -> bool:
        return True  # the ODE solution is differentiable in the parameters

    def _check_context(self, context: Mapping[str, Any]) -> None:
        missing = [c for c in self._cond_var if c not in context]
        if missing:  # (a KeyError from inside the sampler)
            raise ValueError(f"{self.prob_text}: the context {', '.join(missing)} is missing; a conditional flow "
                             f"needs {', '.join(self._cond_var)} (e.g. p.path({{{self._cond_var[0]!r}: ...}}))")

    def check_data(self, x: Any, what: str) -> Tensor:
        """``x`` as the model's data: a floating tensor of shape ``(N, *features_shape)`` in the velocity network's
        dtype; a ValueError naming ``what`` otherwise (a velocity that takes any width scored data of another
        shape silently; a network failed inside with a matrix-product error)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.prob_text}: {what} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{self.prob_text}: {what} must be a floating tensor, got {x.dtype}")
        if x.dim() < 1 or tuple(x.shape[1:]) != tuple(self.features_shape):
            shape = ", ".join(map(str, ("N", *self.features_shape)))
            raise ValueError(f"{self.prob_text}: {what} must have shape ({shape}), got {tuple(x.shape)}")
        like = self._like()
        if like is not None and like.dtype != x.dtype:
            raise ValueError(f"{self.prob_text}: {what} is {x.dtype}, the velocity network {like.dtype}; convert one "
                             f"(x.to({like.dtype}) or the model's .to({x.dtype}))")
        if validation_enabled() and x.device.type != "meta":  # (NaN data gave a NaN density or loss, silently)
            bad = first_nonfinite({what: x}, "x_dict")
            if bad is not None:
                raise ValueError(f"{self.prob_text}: {bad}; remove or impute it")
        return x

    def velocity(self, x: Tensor, t: Tensor, context: Mapping[str, Any] | None = None) -> Tensor:
        """:math:`v_\\theta(x, t, c)`, checked to have the shape of ``x``."""
        context = context or {}
        self._check_context(context)
        v = self.velocity_net(x, t, *(context[c] for c in self._cond_var))
        if v.shape != x.shape:
            raise ValueError(f"{self.prob_text}: the velocity has shape {tuple(v.shape)}, expected {tuple(x.shape)}")
        return v

    def path(self, context: Mapping[str, Any] | None = None) -> LinearPath:
        """The model as a `kizuna.samplers.LinearPath` (any sampler, guidance). The context is read as `sample` reads
        it (`context_of_draws`): one row conditions every draw, the samplers' ``n`` defaults to its rows, and a value
        of another number of rows than the draws is a ValueError naming both (torch's error came from inside the
        network)."""
        context = dict(context or {})
        self._check_context(context)
        like = self._like()
        conditioning = {c: context[c] for c in self._cond_var}  # (what the network reads; other keys are not used)
        rows = context_of_draws(self.prob_text, conditioning, None)[1] if conditioning else None
        # read once per number of rows (the context is this path's own copy), not at each of the network's calls (a
        # conditional draw of a small network was 10% slower than an unconditional one)
        by_rows: dict[int, dict[str, Any]] = {}

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            n = x.shape[0]
            given = by_rows.get(n)
            if given is None:
                given = by_rows[n] = context_of_draws(self.prob_text, conditioning, n, "n")[0] if conditioning else {}
            return self.velocity(x, t, given)

        return LinearPath(velocity, self.features_shape, self.sigma_min,
                          dtype=like.dtype if like is not None else None,
                          device=like.device if like is not None else None, n_draws=rows)

    def _like(self) -> Tensor | None:
        """The tensor giving the velocity network its dtype and device: its first floating parameter, else its first
        floating buffer (an exact or frozen velocity held in buffers: float32 noise failed in a float64 network with
        torch's bare dtype error), as the paths read it (`kizuna.samplers.paths._network_tensor`); None for a function
        or a module without floating tensors."""
        return _network_tensor(self.velocity_net)

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        context, rows = context_of_draws(self.prob_text, {c: x_dict[c] for c in self._cond_var}, batch_n)
        sampler = SAMPLERS[self.sampler]
        return {self._var[0]: sampler(self.path(context), rows, self.n_steps, grad=reparam)}

    def _sample_n(self, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
        return sample_n_with_context(self, x_dict, n, batch_n, reparam)

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        if not sum_features:
            raise ValueError(f"{self.prob_text}: the ODE log-density does not factor over features")
        value = x_dict[self._var[0]]
        # draws made with a sample_shape as rows of the ODE, their context alike; scored per draw (every family's
        # convention: one value per entry of the first dimension; the shape (N, *features_shape) was all it took)
        value, x_dict, shape = draws_as_rows(value, x_dict, self.features_shape, self._cond_var) \
            if isinstance(value, Tensor) else (value, x_dict, None)
        x = self.check_data(value, self._var[0])
        context = {c: x_dict[c] for c in self._cond_var}
        if x.shape[0] == 0:  # (the trace indexed row 0)
            out = x.new_zeros(0)
        else:
            x0, integral = ode_log_det(lambda z, t, *c: self.velocity(z, t, dict(zip(self._cond_var, c))), x,
                                       self.likelihood_steps, self.trace, self.n_probes,
                                       context=[context[c] for c in self._cond_var])
            d = math.prod(x0.shape[1:])  # 1 for scalar data (features_shape []: x of shape (N,))
            out = -0.5 * x0.pow(2).reshape(x0.shape[0], d).sum(1) - 0.5 * d * math.log(2 * math.pi) + integral
        return out if shape is None else sum_rows(out.reshape(shape))


def context_of_draws(who: str, context: Mapping[str, Any], batch_n: int | None, count: str = "batch_n"
                     ) -> tuple[dict[str, Any], int]:
    """The conditioning values ``context`` of a model that draws one row per row of context (`FlowMatching`,
    `kizuna.distributions.DDPM`, and their paths, `kizuna.samplers.DiffusionPath`), as one row per draw, and the
    number of draws: ``batch_n``, else the context's rows (0 for an empty one), else one. A value of one row
    conditions every draw (it is expanded to them); a value of another number of rows is a ValueError naming both
    counts (its rows were the draws, ``batch_n`` dropped silently: 64 draws asked for one class gave 1). ``who``: the
    model's text, for the message; ``count``: the argument that gave ``batch_n`` (a sampler's ``n``)."""
    rows = batch_size_of(context)  # the most rows of any value: a one-row value beside a batch conditions every row
    n = batch_n if batch_n is not None else 1 if rows is None else rows
    out = dict(context)
    for name, value in context.items():
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] == n:
            continue
        if value.shape[0] != 1:
            asked = f"{count}={n}" if batch_n is not None else f"{n} draws (the rows of the other conditioning values)"
            raise ValueError(f"{who}: {asked} but the conditioning value {name} has {value.shape[0]} rows; give one "
                             "row per draw, or one row for all")
        out[name] = value.expand(n, *value.shape[1:])
    return out, n


def sample_n_with_context(p: Distribution, x_dict: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
    """``n`` draws per row of ``p`` (``Distribution._sample_n``, sample-major) for a model that draws one row per row
    of its context (`context_of_draws`): the context is checked against ``batch_n`` before it is repeated for the
    draws (a one-row context repeated n times read as n rows against ``batch_n * n``)."""
    context, rows = context_of_draws(p.prob_text, {c: x_dict[c] for c in p.cond_var}, batch_n)
    return p._sample({c: repeat_batch(v, n) for c, v in context.items()}, rows * n, reparam)


def divergence(v: Callable[..., Tensor], x: Tensor, t: Tensor, trace: str = "exact",
               n_probes: int = 1, create_graph: bool = False, context: Sequence[Any] = (),
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """:math:`v(x, t, *context)` and :math:`\\nabla\\cdot v(x, t, *context)` per row: exact, or Hutchinson
    with Rademacher probes.

    With ``create_graph`` both stay differentiable, in the network's parameters and through ``x`` (an ``x`` that
    is itself a function of the parameters, such as an ODE state, keeps its graph): what maximum-likelihood
    training and gradients of the log-density need. Without it ``x`` is taken as a constant. ``context``:
    further inputs of ``v`` with one row per row of ``x`` (repeated with the rows for the exact trace) or one
    row for all (a tensor of any other leading size, or a non-tensor, is passed as it is). ``generator``: the
    ``torch.Generator`` of Hutchinson's probes (on ``x``'s device; default torch's global one).
    """
    if trace != "exact":
        check_count("divergence: n_probes", n_probes, 1)
    with torch.enable_grad():
        b, d = x.shape[0], math.prod(x.shape[1:])
        if trace == "exact":  # row i repeated d times; copy j's output j differentiated w.r.t. its input j
            xr = x.repeat_interleave(d, 0) if create_graph and x.requires_grad else \
                x.detach().repeat_interleave(d, 0).requires_grad_(True)
            rows = [c.repeat_interleave(d, 0) if isinstance(c, Tensor) and c.dim() > 0 and c.shape[0] == b else c
                    for c in context]
            out = v(xr, t.repeat_interleave(d, 0), *rows)
            eye = torch.eye(d, dtype=x.dtype, device=x.device).repeat(b, 1).reshape(out.shape)
            g = _vjp(out, xr, eye, create_graph, create_graph)
            # (flatten(1) failed on scalar data, x of shape (N,))
            div = x.new_zeros(b) if g is None else (g * eye).reshape(b, d * d).sum(1)
            return out.reshape(b, d, *x.shape[1:])[:, 0], div
        xg = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
        out = v(xg, t, *context)
        div = torch.zeros(b, dtype=x.dtype, device=x.device)
        for k in range(n_probes):
            eps = torch.randint(0, 2, x.shape, device=x.device, generator=generator).to(x.dtype) * 2 - 1
            g = _vjp(out, xg, eps, k + 1 < n_probes or create_graph, create_graph)
            if g is not None:
                div = div + (g * eps).reshape(b, d).sum(1)
        return out, div / n_probes


def _vjp(out: Tensor, x: Tensor, w: Tensor, retain_graph: bool, create_graph: bool) -> Tensor | None:
    """:math:`w^\\top \\partial out/\\partial x`, or None where ``out`` has a graph that does not reach ``x``
    (a velocity of the parameters and ``t`` alone: its divergence is 0; autograd raised "appears to not have been
    used in the graph"). An ``out`` without any graph is an error: it was computed without autograd (under
    ``torch.inference_mode()``, or a velocity that runs under ``no_grad`` or detaches), which would make the
    divergence 0 silently, or it depends on nothing learnable at all."""
    if not out.requires_grad:
        where = ("torch.inference_mode() is on: compute the log-likelihood under torch.no_grad() instead, which keeps "
                 "the divergence's own graph" if torch.is_inference_mode_enabled() else
                 "the velocity's output has no autograd graph (it runs under no_grad, detaches, or depends on neither "
                 "x nor any parameter)")
        raise ValueError(f"divergence: the divergence of the velocity needs autograd, but {where}")
    (g,) = torch.autograd.grad(out, x, w, retain_graph=retain_graph, create_graph=create_graph, allow_unused=True)
    return g


def ode_log_det(v: Callable[..., Tensor], x1: Tensor, n_steps: int, trace: str = "exact",
                n_probes: int = 1, context: Sequence[Any] = (), generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
    """Solve :math:`\\dot x = v(x, t, *context)` from ``t = 1`` back to 0 with RK4; return :math:`x_0` and
    :math:`-\\int_0^1 \\nabla\\cdot v\\,dt` (so :math:`\\log p_1(x_1) = \\log p_0(x_0) + ` that). With gradients
    enabled both are differentiable in the parameters and in ``x1`` through the whole solve (`divergence`; its
    Hutchinson probes from ``generator``)."""
    if n_steps < 1:
        raise ValueError(f"ode_log_det: n_steps must be at least 1, got {n_steps}")
    grad = torch.is_grad_enabled()
    h, x, acc = -1.0 / n_steps, x1, torch.zeros(x1.shape[0], dtype=x1.dtype, device=x1.device)

    def f(z: Tensor, t: float) -> tuple[Tensor, Tensor]:
        tt = torch.full((z.shape[0],), t, dtype=z.dtype, device=z.device)
        out, div = divergence(v, z, tt, trace, n_probes, create_graph=grad, context=context, generator=generator)
        return (out, div) if grad else (out.detach(), div.detach())

    for i in range(n_steps):
        t = 1.0 + i * h
        k1, d1 = f(x, t)
        k2, d2 = f(x + 0.5 * h * k1, t + 0.5 * h)
        k3, d3 = f(x + 0.5 * h * k2, t + 0.5 * h)
        k4, d4 = f(x + h * k3, t + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        acc = acc + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)  # integrates div from 1 down to t: -int_t^1 div
    return x, acc
