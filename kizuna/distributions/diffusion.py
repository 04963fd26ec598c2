r"""Denoising diffusion (DDPM) as a hierarchical latent-variable model (Ho et al. 2020, arXiv:2006.11239).

.. math::
    q(x_t|x_0) = \mathcal{N}(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I),\qquad
    \bar\alpha_t = \prod_{s\le t} (1-\beta_s)

    q(x_{t-1}|x_t,x_0) = \mathcal{N}(\tilde\mu_t,\ \tilde\beta_t I),\quad
    \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}x_0
        + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t,\quad
    \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t

    p_\theta(x_{t-1}|x_t) = \mathcal{N}\Big(\frac{1}{\sqrt{\alpha_t}}\big(x_t
        - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon_\theta(x_t,t)\big),\ \sigma_t^2 I\Big)

Steps are numbered ``t = 1..T`` as in the paper (:math:`\bar\alpha_0 = 1`); a step variable holds
one integer per batch row. Every step is a kizuna distribution with named variables, so the
variational bound is written with the loss algebra (`kizuna.losses.diffusion`), and the marginal
:math:`p_\theta(x_0)` (`DDPM`) samples ancestrally. The image decoder `DiffusionDecoder` is the
discretised Gaussian of Ho et al. §3.3 over ``bins`` levels of ``[-1, 1]``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kizuna._data import check_int, check_shape, computing_dtype, first_nonfinite
from kizuna.distributions.base import Distribution, Tensor, XDict, apply_keeping_exact
from kizuna.distributions.families import Normal
from kizuna.distributions.flow_matching import context_of_draws, sample_n_with_context
from kizuna.distributions.torch_dist import _is_transformed, validation_enabled
from kizuna.formula.expr import values_dict
from kizuna.formula.memo import memoized
from kizuna.samplers.integrators import ancestral
from kizuna.samplers.paths import DiffusionPath


class DiffusionSchedule(nn.Module):
    """The noise schedule :math:`\\beta_{1:T}` and its per-step constants (`constants`).

    In half precision (betas given in float16 / bfloat16, or a model converted by ``.half()`` /
    ``.to(torch.bfloat16)``) the betas buffer and the table stay in `kizuna._data.computing_dtype`, float32: in 16 bits
    :math:`1 - \\beta_1 = 1 - 10^{-4}` rounds to 1, so :math:`1 - \\bar\\alpha_1 = 0` (the posterior variance at
    :math:`t = 2` 0/0, :math:`s_1 = 0`), a cosine schedule's :math:`\\bar\\alpha_T = 2.4\\cdot10^{-9}` underflows to 0
    (the prior divided by 0: NaN draws), and bfloat16 put :math:`\\bar\\alpha_t` 10% off at :math:`t = 881`. Only the
    data and the network are in half precision: `dtype` is theirs, and :math:`1 - \\bar\\alpha` is taken in the table's
    precision before the cast to the data's dtype (`coefficients`, `alpha_bar_at`).

    Args:
        betas: ``T`` values in (0, 1). An ``nn.Parameter`` stays learnable (a learned schedule, kept in its own dtype;
            the table is then computed from it in float64, with its graph, and cast to float32 at least); anything else
            becomes a buffer.
    """

    def __init__(self, betas: Tensor | Sequence[float]) -> None:
        super().__init__()
        if not isinstance(betas, (nn.Parameter, Tensor)):  # numbers: kept exactly for .double() (see _apply)
            self.__dict__["_exact_betas"] = torch.as_tensor(betas, dtype=torch.float64, device="cpu")
        if not isinstance(betas, nn.Parameter):
            betas = torch.as_tensor(betas)
            betas = betas if betas.is_floating_point() else betas.to(torch.get_default_dtype())
        # the dtype of the data and the network (.half() converts it); a buffer of betas is kept in float32 at least
        self.register_buffer("_dtype_of_data", torch.empty(0, dtype=betas.dtype, device=betas.device),
                             persistent=False)
        if not isinstance(betas, nn.Parameter):
            betas = betas.to(computing_dtype(betas.dtype))
        if betas.dim() != 1 or betas.numel() == 0:
            raise ValueError(f"DiffusionSchedule: betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not betas.is_meta and not bool(((betas > 0) & (betas < 1)).all()):  # (meta: no values to check)
            raise ValueError("DiffusionSchedule: every beta must lie in (0, 1)")
        if isinstance(betas, nn.Parameter):
            self.betas = betas
        else:
            self.register_buffer("betas", _tracked(betas))
        # the per-step constants of a fixed schedule, computed once (again if betas change in place or are replaced)
        self.register_buffer("_constants", self._compute_constants().detach(), persistent=False)
        self._constants_key = _key_of(self.betas)

    def _apply(self, fn: Any, recurse: bool = True) -> DiffusionSchedule:
        """``.to()`` / ``.double()``: betas given as numbers (or built by `linear` / `cosine`, in float64) are refilled
        exactly in the new dtype where they still hold them (their float32 rounding kept beta_1 = 9.99999997e-05
        after .double()), and the table is computed anew from the converted betas (a cast of the float32 table
        kept its float32 products: 1 - alpha-bar_1 off by 1.7e-4 after .double()). ``.half()`` /
        ``.to(torch.bfloat16)`` converts `dtype` only: a buffer of betas stays in float32 (with the values it held,
        the exact ones where given) and so does the table (class docstring)."""
        exact = self.__dict__.get("_exact_betas")
        before = self._buffers.get("betas")
        out = apply_keeping_exact(self, lambda: super(DiffusionSchedule, self)._apply(fn, recurse),
                                  {} if exact is None else {"betas": exact})
        after = self._buffers.get("betas")
        if before is not None and after is not None and after.is_floating_point():
            wide = computing_dtype(after.dtype)
            if wide != after.dtype:  # (before: float32 at least, the values as they were)
                self._buffers["betas"] = before.to(dtype=wide, device=after.device)
        if type(self.betas) is Tensor:
            self._buffers["betas"] = _tracked(self.betas)  # (converted inside torch.inference_mode(): `_tracked`)
            with torch.no_grad():
                self._constants = self._compute_constants()
            self._constants_key = _key_of(self.betas)
        return out

    @classmethod
    def linear(cls, T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> DiffusionSchedule:
        """Ho et al.'s linear schedule from ``beta_1`` to ``beta_T``."""
        check_int("DiffusionSchedule.linear: T", T, 1)  # (-3 and 2.5 failed inside torch.linspace)
        return cls._exact(torch.linspace(beta_1, beta_T, T, dtype=torch.float64, device="cpu"))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiffusionSchedule:
        """:math:`\\bar\\alpha_t \\propto \\cos^2(\\frac{t/T + s}{1+s}\\frac\\pi2)`.

        Nichol & Dhariwal 2021, arXiv:2102.09672; betas are capped at ``max_beta``.
        """
        check_int("DiffusionSchedule.cosine: T", T, 1)  # (2.5 made a schedule of other steps)
        steps = torch.arange(T + 1, dtype=torch.float64, device="cpu") / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls._exact(betas)

    @classmethod
    def _exact(cls, betas64: Tensor) -> DiffusionSchedule:
        """A schedule in the default dtype and device that keeps its float64 betas (on the CPU, so that a schedule built
        on the ``meta`` device gets them back from ``to_empty``) for ``.double()`` (see `_apply`)."""
        out = cls(betas64.to(dtype=torch.get_default_dtype(), device=torch.get_default_device()))
        out.__dict__["_exact_betas"] = betas64
        with torch.no_grad():
            out._constants = out._compute_constants()  # from the exact betas (`_compute_constants`)
        return out

    @property
    def T(self) -> int:
        return self.betas.numel()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the data and the network: the betas' as given, then what ``.to()`` / ``.half()`` made of it
        (the betas and the table stay in float32 at least: class docstring)."""
        return self._dtype_of_data.dtype

    def alpha_bar(self) -> Tensor:
        """:math:`\\bar\\alpha_{0:T}` with :math:`\\bar\\alpha_0 = 1` (index ``t`` is step ``t``)."""
        return self._table()[:, 2]

    def _compute_constants(self) -> Tensor:
        """`constants`' four columns, then :math:`1 - \\bar\\alpha_t` and :math:`1 - \\bar\\alpha_{t-1}`
        (`coefficients`), computed in float64 from the exact betas where the buffer still holds them (`_betas64`), and
        cast to the table's dtype (the betas', float32 at least): in float32 :math:`1 - \\beta_1` rounds and
        :math:`1 - \\bar\\alpha_t` is a cancellation, 1.7e-4 (linear) to 2.9e-3 (cosine, T = 4000) relative off at
        small t, the posterior mean at t = 3 up to 0.94 posterior standard deviations off."""
        betas = self._betas64()  # (a learnable schedule's graph kept: a cast of the parameter)
        ab = _alpha_bar_of(betas)
        beta, ab_prev = torch.cat([betas.new_zeros(1), betas]), torch.cat([ab[:1], ab[:-1]])
        table = torch.stack([beta, 1 - beta, ab, ab_prev, 1 - ab, 1 - ab_prev], 1)
        return table.to(computing_dtype(self.betas.dtype))

    def _alpha_bar64(self) -> Tensor:
        """:math:`\\bar\\alpha_{0:T}` in float64 from `_betas64` (`_compute_constants`' column before its cast), for
        host-side tables: `kizuna.samplers.DiffusionPath` takes its noise levels :math:`\\sqrt{(1 - \\bar\\alpha_t) /
        \\bar\\alpha_t}` from it (from the float32 column, :math:`1 - \\bar\\alpha_t` was 1.7e-4 relative off at
        :math:`t = 1` of a linear schedule)."""
        return _alpha_bar_of(self._betas64())

    def _betas64(self) -> Tensor:
        """The betas in float64 on their device: the exact numbers given (`_exact_betas`: numbers, `linear`, `cosine`)
        where the buffer still holds them in its dtype, else the betas as they are (a learnable schedule's, a changed
        or loaded buffer's, betas that require grad, which must reach them, and betas of a ``torch.func`` transform).
        While ``torch.compile`` traces, the choice is a ``torch.where`` on the device (a host read
        of the comparison broke the graph)."""
        betas, exact = self.betas, self.__dict__.get("_exact_betas")
        if exact is None or type(betas) is not Tensor or betas.is_meta or exact.shape != betas.shape \
                or betas.requires_grad or not torch.compiler.is_compiling() and _is_transformed(betas):
            return betas.double()  # (betas with gradients, or of a torch.func transform: vmap cannot branch on them)
        held = betas == exact.to(dtype=betas.dtype, device=betas.device)
        if torch.compiler.is_compiling():
            return torch.where(held.all(), exact.to(device=betas.device), betas.double())
        return exact.to(device=betas.device) if bool(held.all()) else betas.double()

    def constants(self) -> Tensor:
        """Rows ``t = 0..T``: :math:`(\\beta_t, \\alpha_t, \\bar\\alpha_t, \\bar\\alpha_{t-1})`, :math:`\\beta_0 = 0`,
        in the betas' dtype, float32 at least (class docstring).

        A learnable schedule recomputes them per call (so gradients reach the betas); a fixed one
        keeps them in a buffer, recomputed when ``betas`` is changed in place or replaced (``schedule.betas = t``,
        ``.data = t``, ``load_state_dict(..., assign=True)``, ``torch.func.functional_call``: `_table`).
        """
        return self._table()[:, :4]

    def _table(self) -> Tensor:
        """`_compute_constants`' table, kept for a fixed schedule (`constants`) while the buffer of betas is the same
        tensor (a replaced one, ``schedule.betas = t``, ``load_state_dict(..., assign=True)``, ``functional_call``,
        started at version 0 too and was served the old table), at the same in-place version, on the same storage (a
        reassigned ``.data``): `_key_of`. Computed each call, not kept, from betas of a ``torch.func`` transform
        (``grad``, ``vmap``: no storage to key on, and a table of them must not outlive the transform) and from betas
        that require grad (a tensor given to ``functional_call``: a kept table held its graph); computed in the
        graph while ``torch.compile`` traces (the buffer's in-place version, `_version`, cannot be read there: dynamo
        breaks the graph at ``is_inference``), the same numbers."""
        betas, table = self.betas, self._constants
        if type(betas) is not Tensor and isinstance(betas, nn.Parameter) \
                or torch.compiler.is_compiling() or betas.requires_grad:  # the type test first: isinstance is slow
            return self._compute_constants()  # (betas that require grad: a kept table held their graph, and a second
            # backward through it failed; a buffer made to require grad after its table was kept got no gradient)
        seen, version, address = self.__dict__.get("_constants_key", _NO_KEY)  # (none: pickled by kizuna < 0.47)
        # (version None: an inference tensor put in by hand, whose changes cannot be seen; betas of a transform are
        # never the tensor seen, `_key_of`)
        if seen is betas and version is not None and version == _version(betas) and address == betas.data_ptr() \
                and table.dtype == computing_dtype(betas.dtype):
            return table
        if _is_transformed(betas):
            return self._compute_constants()
        table = self._constants = self._compute_constants()
        self._constants_key = _key_of(betas)
        return table

    def index(self, t: Any, like: Tensor, low: int = 1) -> Tensor:
        """Step numbers as a long tensor, checked to lie in ``[low, T]`` while validation is on
        (`kizuna.distributions.validation`; the check reads ``t`` back to the host)."""
        if not isinstance(t, Tensor) or t.device != like.device:
            t = torch.as_tensor(t, device=like.device)
        if t.dtype == torch.bool:  # (True was read as step 1)
            raise ValueError("diffusion: the step variable t must hold step numbers, got booleans")
        if t.is_floating_point():
            if not bool((t == t.round()).all()):
                raise ValueError("diffusion: the step variable t must hold whole numbers")
            t = t.round()
        if t.dtype != torch.long:
            t = t.long()
        if t.numel() and validation_enabled():
            lo, hi = (int(v) for v in torch.aminmax(t))  # one pass over t
            if lo < low or hi > self.T:
                raise ValueError(f"diffusion: step t must lie in [{low}, {self.T}], got [{lo}, {hi}]")
        return t

    def alpha_bar_at(self, t: Tensor, like: Tensor) -> Tensor:
        """:math:`\\bar\\alpha_t` alone, broadcast to ``like`` (what the forward process needs)."""
        return self._alpha_bars(t, like, False)[0]

    def _alpha_bars(self, t: Tensor, like: Tensor, complement: bool) -> list[Tensor]:
        """`alpha_bar_at` and, with ``complement``, :math:`1 - \\bar\\alpha_t` as `coefficients` takes it, from one
        gather."""
        table = self._table()
        columns = table[:, 2:5:2] if complement else table[:, 2]  # (alpha-bar, 1 - alpha-bar) or alpha-bar
        out = columns.index_select(0, t) if t.dim() == 1 else columns[t]  # index_select: a third of [t]'s cost
        dtype, work = _dtypes(table, like)
        if out.dtype != work:  # finer data: the complement of the cast value (exact there)
            out = out.to(work)
            out = torch.stack([out[..., 0], 1 - out[..., 0]], -1) if complement else out
        out = out if out.dtype == dtype else out.to(dtype)
        values = out.unbind(-1) if complement else (out,)
        shape = (*values[0].shape, *([1] * (like.dim() - values[0].dim())))
        return [v.view(shape) for v in values]

    def coefficients(self, t: Tensor, like: Tensor) -> dict[str, Tensor]:
        """:math:`\\beta_t, \\alpha_t, \\bar\\alpha_t, \\bar\\alpha_{t-1}` and :math:`1 - \\bar\\alpha_t,
        1 - \\bar\\alpha_{t-1}` (keys ``one_minus_alpha_bar``, ``one_minus_alpha_bar_prev``) at steps ``t``, broadcast
        to ``like`` and in its dtype. The complements are taken in the table's precision or ``like``'s, the finer,
        before the cast: in float16 :math:`\\bar\\alpha_1 = 0.9999` is 1, so :math:`1 - \\bar\\alpha_1` from the cast
        value was 0 (a half-precision model's posterior variance 0/0)."""
        table = self._table()
        dtype, work = _dtypes(table, like)
        rows = table[t]  # (batch, 6): one gather for the six
        if rows.dtype != work:  # finer data: the complements of the cast values (exact there)
            rows = rows.to(work)
            rows = torch.cat([rows[..., :4], 1 - rows[..., 2:4]], -1)
        rows = rows if rows.dtype == dtype else rows.to(dtype)
        shape = (*rows.shape[:-1], *([1] * (like.dim() - rows.dim() + 1)))
        beta, alpha, ab, ab_prev, noise, noise_prev = (rows[..., i].reshape(shape) for i in range(6))
        return {"beta": beta, "alpha": alpha, "alpha_bar": ab, "alpha_bar_prev": ab_prev,
                "one_minus_alpha_bar": noise, "one_minus_alpha_bar_prev": noise_prev}


def _alpha_bar_of(betas: Tensor) -> Tensor:
    """:math:`\\bar\\alpha_{0:T}` of ``betas`` (:math:`\\bar\\alpha_0 = 1`), in their dtype."""
    return torch.cat([betas.new_ones(1), torch.cumprod(1 - betas, 0)])


def _tracked(betas: Tensor) -> Tensor:
    """A buffer of betas made inside ``torch.inference_mode()`` (an inference tensor, which has no in-place version:
    building a schedule there raised torch's "Inference tensors do not track version counter") copied to a normal
    tensor, whose in-place changes (``load_state_dict``'s copy of a checkpoint's betas, also inside inference mode)
    the table still follows (`DiffusionSchedule._table`); any other tensor as it is."""
    if not betas.is_inference():
        return betas
    with torch.inference_mode(False):
        return betas.clone()


def _version(tensor: Tensor) -> int | None:
    """``tensor``'s in-place version, None for an inference tensor (a learnable schedule's betas made inside
    ``torch.inference_mode()``), which has none."""
    return None if tensor.is_inference() else tensor._version


def _key_of(betas: Tensor) -> tuple[Tensor | None, int | None, int | None]:
    """What `DiffusionSchedule._table` keeps its table for: the betas tensor itself, its in-place version (`_version`)
    and the address of its storage; nothing (a key no tensor matches) for betas of a ``torch.func`` transform, which
    have no storage."""
    if _is_transformed(betas):
        return _NO_KEY
    return betas, _version(betas), betas.data_ptr()


_NO_KEY = (None, None, None)  # `_key_of` for betas that no key matches


def _dtypes(table: Tensor, like: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """The dtype of a schedule's values for data ``like`` (integer data, 0/1 or counts, are values of the default float
    type), and the dtype to take their complements in: the finer of that and the table's."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return dtype, dtype if dtype == table.dtype else torch.promote_types(table.dtype, dtype)


class _MeanGradient(threading.local):
    """Per thread: whether the reverse process's mean is detached (inside `stop_mean_gradient`; a threading.local,
    which torch.compile traces)."""

    def __init__(self) -> None:
        self.stopped = False


_MEAN = _MeanGradient()


class stop_mean_gradient:  # noqa: N801 - used as a function: ``with stop_mean_gradient():``
    """Within this block every `DiffusionReverse` returns its mean detached, so that a loss evaluated inside trains
    only the learned variances (Nichol & Dhariwal's :math:`L_{vlb}` term of :math:`L_{hybrid}`)."""

    __slots__ = ("_outer",)

    def __enter__(self) -> None:
        self._outer = _MEAN.stopped
        _MEAN.stopped = True

    def __exit__(self, *exc: object) -> None:
        _MEAN.stopped = self._outer


class DiscreteUniform(Distribution):
    """:math:`u(t)`: uniform over the integers ``low..high`` (the step of a diffusion loss).

    Draws are long tensors of shape ``(batch,)``; ``log_prob`` is :math:`-\\log(\\mathrm{high}-\\mathrm{low}+1)`.
    """

    def __init__(self, low: int, high: int, var: str = "t", name: str = "u") -> None:
        super().__init__([var], None, name)
        if high < low:
            raise ValueError(f"DiscreteUniform: high={high} < low={low}")
        self.low, self.high = int(low), int(high)

    @property
    def has_reparam(self) -> bool:
        return True  # the draws depend on no parameter: no score-function term is needed

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        like = next((v for v in x_dict.values() if isinstance(v, Tensor)), None)
        device = like.device if like is not None else None
        t = torch.randint(self.low, self.high + 1, (1 if batch_n is None else batch_n,), device=device)
        return {self._var[0]: t}

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        t = torch.as_tensor(x_dict[self._var[0]])
        inside = (t >= self.low) & (t <= self.high)
        out = torch.full(t.shape, -math.log(self.high - self.low + 1), dtype=torch.get_default_dtype(), device=t.device)
        return out.masked_fill(~inside, -math.inf)


class _Step:
    """Shared by the step distributions: the step variable or a fixed step number."""

    schedule: DiffusionSchedule
    step: int | None
    t_var: str

    def _t(self, cond: Mapping[str, Tensor], like: Tensor, low: int = 1) -> Tensor:
        if self.step is not None:
            return self.schedule.index(torch.full((like.shape[0],), self.step), like, low)
        return self.schedule.index(cond[self.t_var], like, low)


class DiffusionForward(_Step, Normal):
    """:math:`q(x_t|x_0) = \\mathcal{N}(\\sqrt{\\bar\\alpha_t}x_0, (1-\\bar\\alpha_t)I)` (module docstring).

    Args:
        schedule: the noise schedule.
        step: a fixed step (then ``t`` is not a conditioning variable), e.g. ``T`` for :math:`q(x_T|x_0)`.
        var, data_var, t_var: the names of :math:`x_t`, :math:`x_0` and :math:`t`
            (defaults ``x_t``, or ``x_{step}`` with a fixed step, ``x_0``, ``t``).

    >>> q = DiffusionForward(DiffusionSchedule.linear(10))
    >>> print(q, "|", DiffusionForward(q.schedule, step=10))
    q(x_t|x_0,t) | q(x_10|x_0)
    >>> q.sample({"x_0": torch.zeros(3, 2), "t": torch.tensor([1, 5, 10])})["x_t"].shape
    torch.Size([3, 2])
    """

    def __init__(self, schedule: DiffusionSchedule, step: int | None = None, var: str | None = None,
                 data_var: str = "x_0", t_var: str = "t", name: str = "q") -> None:
        _check_step("DiffusionForward", step, schedule, 1)
        var = var or ("x_t" if step is None else f"x_{step}")
        super().__init__(var=[var], cond_var=[data_var] + ([] if step is not None else [t_var]), name=name)
        self.schedule, self.step, self.t_var, self.data_var = schedule, step, t_var, data_var

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        x0 = cond[self.data_var]
        t = self._t(cond, x0)
        ab, noise = self.schedule._alpha_bars(t, x0, True)
        return {"loc": ab.sqrt() * x0, "scale": noise.sqrt().expand_as(x0)}


def _check_step(who: str, step: Any, schedule: DiffusionSchedule, low: int) -> None:
    """A fixed step: an integer in ``[low, T]`` (11 of 10 steps was taken until used, 2.5 named a variable x_1.5)."""
    if step is None:
        return
    check_int(f"{who}: step", step, low)
    if step > schedule.T:
        raise ValueError(f"{who}: step must lie in [{low}, {schedule.T}] (the schedule's steps), got {step}")


class DiffusionPosterior(_Step, Normal):
    """:math:`q(x_{t-1}|x_t,x_0) = \\mathcal{N}(\\tilde\\mu_t, \\tilde\\beta_t I)` for ``t = 2..T`` (module docstring).

    >>> post = DiffusionPosterior(DiffusionSchedule.linear(10))
    >>> print(post)
    q(x_{t-1}|x_t,x_0,t)
    """

    def __init__(self, schedule: DiffusionSchedule, var: str = "x_{t-1}", noisy_var: str = "x_t",
                 data_var: str = "x_0", t_var: str = "t", name: str = "q") -> None:
        super().__init__(var=[var], cond_var=[noisy_var, data_var, t_var], name=name)
        self.schedule, self.step, self.t_var = schedule, None, t_var
        self.noisy_var, self.data_var = noisy_var, data_var

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        xt, x0 = cond[self.noisy_var], cond[self.data_var]
        c = self.schedule.coefficients(self._t(cond, xt, low=2), xt)
        mean = (c["alpha_bar_prev"].sqrt() * c["beta"] * x0
                + c["alpha"].sqrt() * c["one_minus_alpha_bar_prev"] * xt) / c["one_minus_alpha_bar"]
        var = c["one_minus_alpha_bar_prev"] / c["one_minus_alpha_bar"] * c["beta"]
        return {"loc": mean, "scale": var.sqrt().expand_as(xt)}


class DiffusionReverse(_Step, Normal):
    """:math:`p_\\theta(x_{t-1}|x_t)` with the ε-parameterised mean (module docstring).

    Args:
        eps_net: ``eps_net(x_t, t) -> ε̂`` (same shape as ``x_t``; ``t`` a long tensor ``(batch,)``).
        schedule: the noise schedule.
        variance: :math:`\\sigma_t^2 = \\beta_t` (``"beta"``) or :math:`\\tilde\\beta_t` (``"posterior"``;
            :math:`\\tilde\\beta_2` at ``t = 1``, see `mean_and_variance`), or learned (``"learned"``, Nichol &
            Dhariwal 2021, arXiv:2102.09672): ``eps_net`` then returns twice the channels of ``x_t`` along
            dimension 1, :math:`\\epsilon_\\theta` and :math:`v`, and
            :math:`\\log\\sigma_t^2 = \\tfrac{v+1}{2}\\log\\beta_t + \\tfrac{1-v}{2}\\log\\tilde\\beta_t` per entry
            (train it with `kizuna.losses.hybrid_diffusion_loss`).
        step: a fixed step, e.g. ``1`` for the Gaussian decoder :math:`p_\\theta(x_0|x_1)` of continuous data.
        var, noisy_var, t_var: names of :math:`x_{t-1}`, :math:`x_t`, :math:`t`.
        context_var: further conditioning variables ``c`` (a conditional model, e.g. a class label):
            then ``eps_net(x_t, t, *c)``, and classifier-free guidance applies (`kizuna.samplers.Guided`).
    """

    def __init__(self, eps_net: Callable[..., Tensor], schedule: DiffusionSchedule,
                 variance: str = "beta", step: int | None = None, var: str | None = None,
                 noisy_var: str | None = None, t_var: str = "t", name: str = "p",
                 context_var: Sequence[str] = ()) -> None:
        if variance not in ("beta", "posterior", "learned"):
            raise ValueError(f"DiffusionReverse: variance must be 'beta', 'posterior' or 'learned', got {variance!r}")
        if variance != "beta" and schedule.T < 2:
            raise ValueError(f"DiffusionReverse: variance={variance!r} needs at least two steps (it uses the posterior "
                             f"variance of step 2 at step 1, where the posterior's own is 0); this schedule has "
                             f"T = {schedule.T}: use variance='beta'")
        _check_step("DiffusionReverse", step, schedule, 1)
        var = var or ("x_{t-1}" if step is None else f"x_{step - 1}")
        noisy_var = noisy_var or ("x_t" if step is None else f"x_{step}")
        self.context_var = list(context_var)
        steps = [] if step is not None else [t_var]
        super().__init__(var=[var], cond_var=[noisy_var, *steps, *self.context_var], name=name)
        self.eps_net, self.schedule, self.variance = eps_net, schedule, variance
        self.step, self.t_var, self.noisy_var = step, t_var, noisy_var

    def epsilon(self, x_t: Tensor, t: Tensor, context: Mapping[str, Tensor] | None = None) -> Tensor:
        """:math:`\\epsilon_\\theta(x_t, t, c)`, checked to have the shape of ``x_t``.

        A half-precision model (``schedule.dtype`` float16 / bfloat16) given ``x_t`` in float32, its computing dtype
        (the samplers' state, `kizuna.samplers.DiffusionPath`), hands the network ``x_t`` in its own dtype and returns
        its output in float32."""
        return self._outputs(x_t, t, context)[0]

    def _outputs(self, x_t: Tensor, t: Tensor, context: Mapping[str, Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """The network's :math:`\\epsilon_\\theta` and, with learned variances, :math:`v` (else None)."""
        context = context or {}
        missing = [c for c in self.context_var if c not in context]
        if missing:
            raise ValueError(f"{self.prob_text}: the context {', '.join(missing)} is missing")
        net_dtype = self.schedule.dtype
        lifted = x_t.dtype != net_dtype and x_t.dtype == computing_dtype(net_dtype)  # (see `epsilon`)
        out = self.eps_net(x_t.to(net_dtype) if lifted else x_t, t, *(context[c] for c in self.context_var))
        if lifted and isinstance(out, Tensor) and out.is_floating_point():
            out = out.to(x_t.dtype)
        if self.variance != "learned":
            if out.shape != x_t.shape:
                raise ValueError(
                    f"{self.prob_text}: eps_net returned shape {tuple(out.shape)}, expected {tuple(x_t.shape)}")
            return out, None
        if x_t.dim() < 2:
            raise ValueError(f"{self.prob_text}: with variance='learned' the data need a feature dimension (ε and v "
                             f"are stacked along dimension 1); {self.noisy_var} has shape {tuple(x_t.shape)}")
        want = (x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:])
        if out.shape != want:
            raise ValueError(f"{self.prob_text}: with variance='learned' eps_net returns ε and v side by side along "
                             f"dimension 1, shape {want}; it returned {tuple(out.shape)}")
        eps, v = out.chunk(2, 1)
        return eps, v

    def mean_and_variance(self, x_t: Tensor, t: Tensor, eps: Tensor | None = None,
                          context: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """:math:`\\mu_\\theta(x_t,t)` and :math:`\\sigma_t^2` (broadcastable).

        ``eps`` replaces :math:`\\epsilon_\\theta(x_t,t)` (e.g. a guided prediction, `kizuna.samplers`).
        With ``variance="posterior"`` the step ``t = 1`` uses :math:`\\tilde\\beta_2`, as Ho et al.'s code
        does: :math:`\\tilde\\beta_1 = 0` would make the decoder :math:`p_\\theta(x_0|x_1)` a point mass.
        With ``variance="learned"`` the variance interpolates :math:`\\log\\beta_t` and that
        :math:`\\log\\tilde\\beta_t` by the network's :math:`v`, which a given ``eps`` does not carry: the network is
        then called for it.
        """
        c = self.schedule.coefficients(t, x_t)
        v = None
        if eps is None or self.variance == "learned":  # a given ε (guidance) still needs the network's v
            net_eps, v = self._outputs(x_t, t, context)
            eps = net_eps if eps is None else eps
        mean = (x_t - c["beta"] / c["one_minus_alpha_bar"].sqrt() * eps) / c["alpha"].sqrt()
        if _MEAN.stopped:
            mean = mean.detach()
        if self.variance == "beta":
            return mean, c["beta"]
        t_var = t.clamp(min=min(2, self.schedule.T))
        p = self.schedule.coefficients(t_var, x_t)
        posterior = p["one_minus_alpha_bar_prev"] / p["one_minus_alpha_bar"] * p["beta"]
        if v is None:
            return mean, posterior
        frac = (v + 1) / 2
        return mean, (frac * c["beta"].log() + (1 - frac) * posterior.log()).exp()

    def _params(self, x_dict: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters, remembered apart inside `stop_mean_gradient` (where the mean is detached)."""
        if not _MEAN.stopped:
            return super()._params(x_dict)
        return memoized(self, "params, mean detached", list(map(x_dict.get, self._cond_var)), self._compute_params,
                        x_dict)

    def _torch_dist(self, x_dict: Mapping[str, Any], independent: bool = True, reuse: bool = True,
                    params: dict[str, Any] | None = None) -> Any:
        """The torch distribution, remembered apart inside `stop_mean_gradient` as the parameters are (a distribution
        built outside the stop and reused inside it would carry the mean's gradient)."""
        if not _MEAN.stopped:
            return super()._torch_dist(x_dict, independent, reuse, params)
        return memoized(self, ("dist, mean detached", independent), list(map(x_dict.get, self._cond_var)),
                        lambda: self._build(self._params(x_dict) if params is None else params, independent))

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        xt = cond[self.noisy_var]
        mean, var = self.mean_and_variance(xt, self._t(cond, xt), None, cond)
        return {"loc": mean, "scale": var.sqrt().expand_as(xt)}


def _log_normal_interval(a: Tensor, b: Tensor) -> Tensor:
    """:math:`\\log(\\Phi(b) - \\Phi(a))` for standardised ``a < b``, stable in both tails."""
    flip = a > 0  # Φ(b) - Φ(a) = Φ(-a) - Φ(-b): work in the lower tail, where log_ndtr is exact
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    d = (log_lo - log_hi).clamp(max=-1e-30)
    log1mexp = torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))
    return log_hi + log1mexp


class _LiftedData(threading.local):
    """Per thread: the 16-bit dtype of the data that `kizuna.losses.diffusion_bound` lifted to float32 (inside
    `reading_lifted_data`), None elsewhere."""

    def __init__(self) -> None:
        self.dtype: torch.dtype | None = None


_LIFTED = _LiftedData()


class reading_lifted_data:  # noqa: N801 - used as a function: ``with reading_lifted_data(torch.bfloat16):``
    """Within this block a `DiffusionDecoder` reads float32 data as the ``dtype`` (16-bit) values they were before
    the bound lifted them: the nearest of the levels, off the grid by the 16-bit rounding (up to a level in bfloat16;
    data computed in bfloat16, ``k.bfloat16() / 255 * 2 - 1``, lie up to a quarter level off the rounded levels).
    Outside it float32 data are read as 16-bit values only where each is a level rounded to the model's dtype
    (`DiffusionDecoder._sixteen_bit`)."""

    __slots__ = ("dtype", "_outer")

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self._outer = _LIFTED.dtype
        _LIFTED.dtype = self.dtype

    def __exit__(self, *exc: object) -> None:
        _LIFTED.dtype = self._outer


class DiffusionDecoder(Distribution):
    """:math:`p_\\theta(x_0|x_1)`: the discretised Gaussian decoder of Ho et al. (2020, §3.3).

    .. math::
        p_\\theta(x_0|x_1) = \\prod_i \\int_{\\delta_-(x_0^i)}^{\\delta_+(x_0^i)}
            \\mathcal{N}(x;\\ \\mu_\\theta^i(x_1, 1),\\ \\sigma_1^2)\\,dx,\\qquad
        \\delta_\\pm(x) = \\begin{cases}\\pm\\infty & x = \\pm 1\\\\ x \\pm \\frac{1}{\\mathrm{bins}-1}
            & \\text{otherwise}\\end{cases}

    Data are ``bins`` evenly spaced levels of ``[-1, 1]`` (256 for 8-bit images, 17 for the
    scikit-learn digits), so ``log_prob`` is the log-probability of the discrete value and the
    bound converts to bits per dimension. Draws are snapped to the levels; ``sample_mean`` is
    :math:`\\mu_\\theta(x_1, 1)` (what Ho et al. display at the end of sampling).

    A half-precision model (``.half()`` / ``.to(torch.bfloat16)``) or 16-bit data are scored in float32
    (`kizuna._data.computing_dtype`, as the schedule is): ``x_1`` is lifted to float32 (the network still sees it in
    its own dtype, `DiffusionReverse.epsilon`), ``x_0`` is taken as the nearest of the ``bins`` levels (in 16 bits the
    256 levels of 8-bit data lie up to a quarter (float16) or half (bfloat16) of a level off the grid; float32 data
    that are the levels rounded to a half-precision model's dtype, as `kizuna.losses.diffusion_bound` lifts 16-bit
    data, are read as such 16-bit values, and other float32 data are checked on the grid as a float32 model checks
    them), and
    ``log_prob`` is returned in float32, as `kizuna.losses.diffusion_bound` returns the bound. In 16 bits torch had
    no CPU ``log_ndtr`` (the bound stopped with "log_ndtr_cpu not implemented for 'Half'"), and a mean
    :math:`\\mu_\\theta(x_1, 1)` taken in bfloat16 was up to 0.37 of the decoder's standard deviation off float32's
    (0.05 in float16; Ho et al.'s :math:`\\beta_1 = 10^{-4}`), 0.004 with ``x_1`` lifted.

    Args:
        reverse: the reverse process whose mean and variance at step 1 it uses.
        bins: the number of levels.
    """

    def __init__(self, reverse: DiffusionReverse, bins: int = 256, var: str = "x_0", cond_var: str = "x_1",
                 name: str = "p") -> None:
        super().__init__([var], [cond_var, *reverse.context_var], name)
        check_int("DiffusionDecoder: bins", bins, 2)  # (2.5 was taken as 2 levels)
        self.reverse, self.bins = reverse, int(bins)

    def _params(self, x_dict: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        x1 = x_dict[self._cond_var[0]]
        t = self.reverse.schedule.index(torch.ones(x1.shape[0], dtype=torch.long), x1)
        return self.reverse.mean_and_variance(x1, t, None, x_dict)

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        x0, x1 = x_dict[self._var[0]], x_dict[self._cond_var[0]]
        net_dtype = self.reverse.schedule.dtype
        if isinstance(x1, Tensor) and x1.dtype == net_dtype != computing_dtype(net_dtype):  # (class docstring)
            x_dict = {**x_dict, self._cond_var[0]: x1.to(computing_dtype(net_dtype))}
        mean, var = self._params(x_dict)
        name = self._var[0]
        if x0.shape != mean.shape:
            raise ValueError(f"{self.prob_text}: {name} has shape {tuple(x0.shape)}, expected {tuple(mean.shape)}")
        narrow = self._sixteen_bit(x0)
        if validation_enabled():  # (read back to the host: on the validated steps, as every family's data checks)
            self._check_values(x0, mean, var, narrow)
        if narrow is not None:  # 16-bit data: the level it stands for
            levels = ((x0.to(computing_dtype(x0.dtype)) + 1) / 2 * (self.bins - 1)).round()
            x0 = levels / (self.bins - 1) * 2 - 1
        half, sd, big = 1.0 / (self.bins - 1), var.sqrt(), 1e4  # big: an infinite edge, finite gradient
        a = torch.where(x0 <= -1 + half / 2, torch.full_like(x0, -big), (x0 - half - mean) / sd)
        b = torch.where(x0 >= 1 - half / 2, torch.full_like(x0, big), (x0 + half - mean) / sd)
        out = _log_normal_interval(a, b)
        return out.flatten(1).sum(1) if sum_features else out

    def _sixteen_bit(self, x0: Tensor) -> torch.dtype | None:
        """The 16-bit dtype whose values ``x0`` holds, None for wider data: ``x0``'s own dtype, or a half-precision
        model's for data in its computing dtype that are each the rounding to the model's dtype of a level (the
        bound's lifted data, class docstring). Other float32 data keep float32's check: 8-bit data scaled as
        (k - 128) / 128, which bfloat16 holds exactly, are off the grid by up to half a level, as a float32 model
        finds them."""
        if not x0.is_floating_point():
            return None
        if computing_dtype(x0.dtype) != x0.dtype:
            return x0.dtype
        lifted = _LIFTED.dtype
        if lifted is not None and x0.dtype == computing_dtype(lifted) != lifted:  # (`reading_lifted_data`)
            return lifted
        net_dtype = self.reverse.schedule.dtype
        if x0.dtype == computing_dtype(net_dtype) != net_dtype:
            levels = ((x0 + 1) / 2 * (self.bins - 1)).round()
            if bool(((levels / (self.bins - 1) * 2 - 1).to(net_dtype).to(x0.dtype) == x0).all()):
                return net_dtype
        return None

    def _check_values(self, x0: Tensor, mean: Tensor, var: Tensor, narrow: torch.dtype | None) -> None:
        """The data in [-1, 1] on the ``bins`` levels (data of another grid, e.g. 8-bit data scored with 17 bins or
        dequantised data, summed to a mass of 15.9 over the data's values: a bound below the code length), and the
        mean and variance finite (NaN scored NaN silently)."""
        name = self._var[0]
        bad = first_nonfinite({name: x0}, "x_dict")
        if bad is not None:
            raise ValueError(f"{self.prob_text}: {bad}")
        if not bool(((x0 >= -1) & (x0 <= 1)).all()):
            raise ValueError(f"{self.prob_text}: {name} must lie in [-1, 1] (data scaled from [0, 1] as 2x - 1)")
        # (16-bit data: off the grid by its rounding, up to one unit in the last place at 1, in levels; bfloat16 holds
        # 8-bit data to half a level, so there no data is off its grid)
        tolerance = 1e-3 if narrow is None else max(1e-3, torch.finfo(narrow).eps * (self.bins - 1) / 2)
        levels = (x0.to(computing_dtype(x0.dtype)) + 1) / 2 * (self.bins - 1)
        if not bool(((levels - levels.round()).abs() <= tolerance).all()):
            raise ValueError(f"{self.prob_text}: {name} is not on the grid of bins={self.bins} levels "
                             f"(k / {self.bins - 1} scaled to [-1, 1]); give the decoder the data's number of levels "
                             "(e.g. bins=256 for 8-bit images), and data that is not dequantised")
        self._check_finite(mean, var)

    def _check_finite(self, mean: Tensor, var: Tensor) -> None:
        for what, value in (("mean", mean), ("variance", var)):
            if not bool(torch.isfinite(value).all()):
                raise FloatingPointError(f"parameter {what} of {self.prob_text} is not finite (the noise network's "
                                         f"output at step 1, or x_1)")

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        mean, var = self._params(x_dict)
        if validation_enabled():
            self._check_finite(mean, var)
        x = mean + var.sqrt() * torch.randn_like(mean)
        levels = ((x.clamp(-1, 1) + 1) / 2 * (self.bins - 1)).round()
        return {self._var[0]: (levels / (self.bins - 1) * 2 - 1).detach()}

    def sample_mean(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        """:math:`\\mu_\\theta(x_1, 1)` (see class docstring)."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_mean", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        return self._params(x_dict)[0]


class DDPM(Distribution):
    """:math:`p_\\theta(x_0) = \\int p(x_T)\\prod_{t=2}^T p_\\theta(x_{t-1}|x_t)\\,p_\\theta(x_0|x_1)\\,dx_{1:T}`.

    Sampling is ancestral: :math:`x_T \\sim \\mathcal{N}(0, I)`, then each reverse step, then the
    decoder (its mean when ``noiseless_last``, as Ho et al. display samples), in the dtype of the
    schedule (``schedule.dtype``; a half-precision model runs the chain in float32, the network and the decoder in
    half precision, `kizuna.samplers.DiffusionPath`). With a context (``reverse``'s ``context_var``), one row of it
    conditions every draw (for any ``batch_n``); a context of another number of rows than ``batch_n`` is refused.
    ``sample(..., generator=g)`` draws the prior, every step's noise and, with ``noiseless_last=False``, the decoder's
    draw (any decoder) from ``g``, not torch's global generator (as every family's:
    `kizuna.distributions.base.drawing_from`). The density is intractable: bound it with
    `kizuna.losses.diffusion_bound`.

    Args:
        reverse: :math:`p_\\theta(x_{t-1}|x_t,t)` (a `DiffusionReverse` without a fixed step).
        features_shape: the shape of one :math:`x_0`.
        decoder: :math:`p_\\theta(x_0|x_1)`; default the Gaussian ``DiffusionReverse(..., step=1)``
            (continuous data; `DiffusionDecoder` for images) with ``reverse``'s variances: :math:`\\beta_1`,
            :math:`\\tilde\\beta_2` for ``"posterior"`` (as Ho et al.'s code), or learned.
        noiseless_last: return the decoder's mean instead of a draw.

    >>> eps_net = lambda x, t: torch.zeros_like(x)
    >>> p = DDPM(DiffusionReverse(eps_net, DiffusionSchedule.linear(5)), features_shape=[2])
    >>> print(p)
    p(x_0) = ∫ p(x_T)prod_{t} p(x_{t-1}|x_t,t)p(x_0|x_1)dx_{1:T}
    >>> p.sample(batch_n=4)["x_0"].shape
    torch.Size([4, 2])
    """

    def __init__(self, reverse: DiffusionReverse, features_shape: Sequence[int], decoder: Distribution | None = None,
                 noiseless_last: bool = True, prior_var: str = "x_T", name: str = "p") -> None:
        if reverse.step is not None:
            raise ValueError(f"DDPM: {reverse.prob_text} has a fixed step; give the reverse process over all steps")
        # (-2 failed in the prior: integer multiplication overflow; the checked tuple, read twice below)
        features_shape = check_shape("DDPM: features_shape", features_shape)
        decoder = decoder if decoder is not None else DiffusionReverse(
            reverse.eps_net, reverse.schedule, variance=reverse.variance, step=1, name=reverse.name,
            context_var=reverse.context_var)
        super().__init__(decoder.var, reverse.context_var, name, features_shape)
        self.reverse, self.decoder, self.noiseless_last = reverse, decoder, noiseless_last
        self.prior = Normal(var=[prior_var], loc=0.0, scale=1.0, features_shape=features_shape, name=name)

    @property
    def schedule(self) -> DiffusionSchedule:
        return self.reverse.schedule

    @property
    def has_reparam(self) -> bool:
        return self.noiseless_last or self.decoder.has_reparam

    def _factorized_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        steps = fmt["prod"].format(self.reverse.t_var, self.reverse._factorized_text(fmt, {}))
        inner = self.prior._factorized_text(fmt, {}) + steps + self.decoder._factorized_text(fmt, {})
        return fmt["integral"].format(inner, "x_{1:T}")

    def path(self, context: Mapping[str, Tensor] | None = None) -> DiffusionPath:
        """The reverse process as a `kizuna.samplers.DiffusionPath` (for DDIM, Heun, guidance, ...). The context is
        read as `sample` reads it: one row conditions every draw, the samplers' ``n`` defaults to its rows, and a
        value of another number of rows than the draws is a ValueError naming both (`DiffusionPath`)."""
        return DiffusionPath(self.reverse, self.features_shape, context)

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        # one row per draw: batch_n, a one-row context conditioning every draw (another row count is refused)
        context, rows = context_of_draws(self.prob_text, {c: x_dict[c] for c in self._cond_var}, batch_n)
        path = self.path(context)
        with torch.set_grad_enabled(reparam and torch.is_grad_enabled()):
            times = path.times(None)[:-1]  # x_T .. x_1
            y_1 = path.prior(rows)
            if len(times) > 1:  # with T = 1, x_T is x_1: the decoder follows the prior
                y_1 = ancestral(path, x=y_1, times=times, grad=reparam)
            x_1, _ = path.scaled_input(y_1, times[-1])
            x_1 = x_1.to(self.schedule.dtype)  # (a half-precision model's chain ran in float32: DiffusionPath)
            given = {self.decoder.cond_var[0]: x_1, **context}
            x0 = self.decoder.sample_mean(given) if self.noiseless_last else self.decoder.sample(
                given, reparam=reparam)[self._var[0]]
        return {self._var[0]: x0}

    def _sample_n(self, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
        return sample_n_with_context(self, x_dict, n, batch_n, reparam)

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        raise NotImplementedError(
            f"{self.prob_text} (DDPM) has no tractable log-density; bound it with kizuna.losses.diffusion_bound")
