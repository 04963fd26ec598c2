r"""The pieces of flow-matching training written as distributions.

* `TimeUniform` — :math:`u(t) = \mathcal{U}[0, 1]`, one time per row.
* `NoiseLike` — :math:`p(x_0) = \mathcal{N}(0, I)` shaped like the data minibatch: the independent coupling.
* `FlowInterpolant` — :math:`q(x_t|x_0,x_1,t) = \delta\big(x_t - t x_1 - (1-(1-\sigma_{min})t)\,x_0\big)`,
  the conditional path of Lipman et al. (2023, arXiv:2210.02747); with :math:`\sigma_{min} = 0` the
  straight line of rectified flow (Liu et al. 2022, arXiv:2209.03003).
* `OTCoupling` — :math:`\pi(x_0|x_1)`: a minibatch of noise :math:`x_0 \sim \mathcal{N}(0, I)` paired with
  the minibatch of data by the exact optimal-transport assignment of the squared distance (scipy's
  ``linear_sum_assignment``), OT-CFM (Tong et al. 2023, arXiv:2302.00482). It conditions on the
  whole minibatch, not row by row, and has no density.
* `reflow_coupling` — rectified flow's reflow: pairs :math:`(z, \Phi_\theta(z))` of a trained model's
  ODE, the coupling the next rectified flow is trained on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment

from kizuna._data import check_int, first_nonfinite, sigma_min_value
from kizuna.distributions.base import Distribution, Tensor, XDict, sum_rows
from kizuna.distributions.flow_matching import FlowMatching, context_of_draws
from kizuna.distributions.special import Deterministic
from kizuna.distributions.torch_dist import validation_enabled
from kizuna.samplers.integrators import SAMPLERS


def _like(x_dict: XDict) -> Tensor | None:
    return next((v for v in x_dict.values() if isinstance(v, Tensor)), None)


class TimeUniform(Distribution):
    """:math:`u(t) = \\mathcal{U}[0, 1]`: draws of shape ``(batch,)``; ``log_prob`` is 0 on ``[0, 1]``, -inf outside
    and NaN at NaN (scipy's ``uniform.logpdf``); while validation is on a value outside or NaN is a ValueError."""

    def __init__(self, var: str = "t", name: str = "u", dtype: torch.dtype | None = None) -> None:
        super().__init__([var], None, name)
        self.dtype = dtype

    @property
    def has_reparam(self) -> bool:
        return True  # the draws depend on no parameter: the pathwise gradient is the whole gradient

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        like = _like(x_dict)
        dtype = self.dtype or (like.dtype if like is not None and like.is_floating_point()
                               else torch.get_default_dtype())
        rows = 1 if batch_n is None else batch_n  # batch_n=0 (an empty batch) draws none
        return {self._var[0]: torch.rand(rows, dtype=dtype, device=None if like is None else like.device)}

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        # -inf outside [0, 1] and NaN at NaN (scipy's uniform.logpdf; NaN fails both comparisons, and was scored 0)
        t = torch.as_tensor(x_dict[self._var[0]])
        outside, nan = (t < 0) | (t > 1), t.isnan()
        if validation_enabled() and t.device.type != "meta" and bool((outside | nan).any()):
            nonfinite = first_nonfinite({self._var[0]: t}, "x_dict") if t.is_floating_point() else None
            if nonfinite is not None:  # as a torch family's support check names it
                raise ValueError(f"{self.prob_text}: {nonfinite} (not a number in the support [0, 1] of "
                                 f"{type(self).__name__}); remove or impute it")
            raise ValueError(f"{self.prob_text}: value of {self._var[0]} is outside the support [0, 1] of "
                             f"{type(self).__name__}")
        # an integer t (the times 0 and 1) scored in the default dtype, as DiscreteUniform's (-inf failed in a long)
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        return torch.zeros_like(t, dtype=dtype).masked_fill(outside, -torch.inf).masked_fill(nan, torch.nan)


class NoiseLike(Distribution):
    r""":math:`p(x_0) = \mathcal{N}(0, I)` in the shape, dtype and device of the data ``like_var`` it is drawn next to
    (the independent coupling of `kizuna.losses.flow_matching_loss`). It has no parameters or buffers, so nothing
    has to move it with the model: a standard `Normal` built inside the loss kept its constants on the CPU in the
    default dtype, which failed on the first step of a model on a GPU. The draws are torch's ``randn_like`` of
    the data (the numbers of ``Normal(0, 1)``'s draw in that shape)."""

    def __init__(self, var: str = "x_0", like_var: str = "x_1", name: str = "p",
                 features_shape: tuple[int, ...] | torch.Size = ()) -> None:
        super().__init__([var], None, name, features_shape)
        self.like_var = like_var

    @property
    def distribution_name(self) -> str:
        return "Normal"

    @property
    def has_reparam(self) -> bool:
        return True  # the draws depend on no parameter (see TimeUniform)

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        like = x_dict.get(self.like_var)
        if not isinstance(like, Tensor) or like.dim() == 0:
            got = "nothing" if like is None else "a 0-d tensor" if isinstance(like, Tensor) else type(like).__name__
            raise ValueError(f"{self.prob_text}: draws noise shaped like the batch of {self.like_var}, got {got}")
        if batch_n is not None and batch_n != like.shape[0]:
            raise ValueError(f"{self.prob_text}: batch_n={batch_n} but {self.like_var} has {like.shape[0]} rows")
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        return {self._var[0]: torch.randn(like.shape, dtype=dtype, device=like.device)}

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        x = x_dict[self._var[0]]
        lp = -0.5 * x.pow(2) - 0.5 * math.log(2 * math.pi)
        return sum_rows(lp) if sum_features else lp


class FlowInterpolant(Deterministic):
    """:math:`x_t = t\\,x_1 + (1 - (1-\\sigma_{min})t)\\,x_0` (module docstring).

    >>> q = FlowInterpolant(data_var="x")
    >>> print(q)
    q(x_t|x_0,x,t)
    """

    def __init__(self, sigma_min: float = 0.0, var: str = "x_t", noise_var: str = "x_0", data_var: str = "x_1",
                 t_var: str = "t", name: str = "q") -> None:
        sigma_min = sigma_min_value("FlowInterpolant", sigma_min)
        super().__init__([var], [noise_var, data_var, t_var], name)
        self.sigma_min, self.noise_var, self.data_var, self.t_var = float(sigma_min), noise_var, data_var, t_var

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        x0, x1, t = cond[self.noise_var], cond[self.data_var], cond[self.t_var]
        if x0.shape != x1.shape:  # (a given coupling of other rows failed in a broadcast)
            raise ValueError(f"{self.prob_text}: {self.noise_var} has shape {tuple(x0.shape)} and {self.data_var} "
                             f"{tuple(x1.shape)}; a coupling pairs every data row with one noise row")
        t = t.to(x1.dtype).reshape(-1, *([1] * (x1.dim() - 1)))
        return {self._var[0]: t * x1 + (1 - (1 - self.sigma_min) * t) * x0}


class OTCoupling(Distribution):
    """:math:`\\pi(x_0|x_1)`: Gaussian noise assigned to the data minibatch by exact OT (module docstring)."""

    def __init__(self, var: str = "x_0", data_var: str = "x_1", name: str = "π") -> None:
        super().__init__([var], [data_var], name)

    @property
    def distribution_name(self) -> str:
        return "OTCoupling"

    @property
    def has_reparam(self) -> bool:
        return True  # noise and assignment depend on no parameter (see TimeUniform)

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        # NoiseLike's checks, and finite data (scipy refused NaN without naming the variable): integer data drew
        # randn_like's raw NotImplementedError, batch_n of other rows was ignored
        data = self._cond_var[0]
        x1 = x_dict.get(data)
        if not isinstance(x1, Tensor) or x1.dim() == 0:
            got = "nothing" if x1 is None else "a 0-d tensor" if isinstance(x1, Tensor) else type(x1).__name__
            raise ValueError(f"{self.prob_text}: pairs noise with the minibatch of {data}, got {got}")
        if batch_n is not None and batch_n != x1.shape[0]:
            raise ValueError(f"{self.prob_text}: batch_n={batch_n} but {data} has {x1.shape[0]} rows")
        if x1.device.type != "meta":  # one pass over the minibatch, next to the O(N^3) assignment
            bad = first_nonfinite({data: x1}, "x_dict")
            if bad is not None:
                raise ValueError(f"{self.prob_text}: {bad}; optimal transport needs finite data")
        dtype = x1.dtype if x1.is_floating_point() else torch.get_default_dtype()
        noise = torch.randn(x1.shape, dtype=dtype, device=x1.device)
        n, d = x1.shape[0], math.prod(x1.shape[1:])  # d = 1 for scalar data (flatten(1) failed on x of shape (N,))
        cost = torch.cdist(noise.detach().reshape(n, d).double(), x1.detach().reshape(n, d).double()).pow(2)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        order = torch.empty(len(cols), dtype=torch.long)
        order[torch.as_tensor(cols)] = torch.as_tensor(rows)  # data row j gets noise row order[j]
        return {self._var[0]: noise[order.to(noise.device)]}

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        raise NotImplementedError(f"{self.prob_text} (OTCoupling) couples a minibatch and has no density")


def reflow_coupling(p: FlowMatching, n: int, n_steps: int | None = None, noise_var: str = "x_0",
                    sampler: str | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """``n`` pairs :math:`(z, \\Phi_\\theta(z))`, ``z`` Gaussian and :math:`\\Phi_\\theta` the model's ODE.

    Train the next rectified flow on them with ``flow_matching_loss(q, coupling="given")``. A conditional model
    needs its ``context`` (``{"c": c}``: one row for all ``n`` pairs, or ``n`` rows, as `FlowMatching.path` reads
    it); the returned pairs then hold the context too, a tensor one row per pair (a number or a 0-d value as given), so
    the next flow learns the same conditional coupling.
    """
    check_int("reflow_coupling: n", n, 0)  # (-1 failed in a negative dimension, 2.5 in a TypeError)
    if n_steps is not None:  # (0 ran the model's own number of steps silently)
        check_int("reflow_coupling: n_steps", n_steps, 1)
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"reflow_coupling: sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    missing = [c for c in p.cond_var if c not in (context or {})]
    if missing:  # (the model's own error pointed to p.path({...}), which this function did not take)
        raise ValueError(f"reflow_coupling: the context {', '.join(missing)} is missing; a conditional flow needs "
                         f"{', '.join(p.cond_var)}: give context={{{', '.join(repr(c) + ': ...' for c in p.cond_var)}}}"
                         f" (one row for all pairs, or n={n} rows)")
    clash = [v for v in (p.var[0], *p.cond_var) if v == noise_var]
    if clash:  # (checked before the solve: the noise overwrote the context variable, or the data, silently)
        raise ValueError(f"reflow_coupling: noise_var={noise_var!r} is a variable of {p.prob_text}; name the noise "
                         "otherwise")
    conditioning = {c: context[c] for c in p.cond_var} if p.cond_var else {}
    if conditioning:  # checked against n here, and returned one row per pair
        conditioning = context_of_draws("reflow_coupling", conditioning, n, "n")[0]
    path = p.path(conditioning)
    z = path.prior(n)
    with torch.no_grad():
        x = SAMPLERS[sampler or p.sampler](path, x=z, n_steps=p.n_steps if n_steps is None else n_steps)
    # tensors one row per pair; a number or a 0-d value conditions every pair as it is (as the model read it)
    return {noise_var: z, p.var[0]: x, **{c: v.contiguous() if isinstance(v, Tensor) and v.dim() > 0 else v
                                          for c, v in conditioning.items()}}
