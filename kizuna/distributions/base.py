"""The `Distribution` base: named random variables over a torch module.

Conventions (the whole formula layer relies on them):

* Every tensor that flows through a distribution has **one leading batch dimension**; the
  remaining dimensions are *features*. ``get_log_prob`` sums over the features and returns one
  value per batch row. Constant parameters carry a batch dimension of one (as in Pixyz).
* Several draws per row (``sample_shape``, the ``k`` draws of an importance-weighted bound)
  are made from the row's parameters, computed once (`Distribution._sample_n`); networks that
  read the draws see them flattened sample-major, ``(n * batch, *features)``.
* A distribution never caches a ``torch.distributions`` object on ``self``: one is built
  per call from the inputs (STYLE.md habit 1).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import numbers
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_map

from kizuna._data import check_count as _check_count
from kizuna._data import check_shape as _check_shape
from kizuna._data import one_number
from kizuna._text import LATEX, TEXT, prob_text, symbol
from kizuna.distributions.dist_graph import DistGraph, GraphOptions
from kizuna.formula.expr import Loss, values_dict
from kizuna.formula.log_prob import LogProb, Prob

Tensor = torch.Tensor
XDict = dict[str, Any]


def _as_list(names: str | Iterable[str] | None, what: str) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    names = list(names)
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"{what} must be variable names (str), got {n!r}")
    return names


def repeat_batch(value: Any, n: int) -> Any:
    """Repeat a batch-first tensor ``n`` times along the batch: ``(B, ...) -> (n*B, ...)``.

    Sample-major order: rows ``i*B:(i+1)*B`` hold copy ``i``. Non-tensors pass unchanged.
    """
    if n == 1 or not isinstance(value, Tensor) or value.dim() == 0:
        return value
    return value.unsqueeze(0).expand(n, *value.shape).reshape(n * value.shape[0], *value.shape[1:])


# entries above which a value repeated for draws without gradients is left unrepeated until an operation
# needs it (`repeat_rows_lazily`); also the block size of the families' scoring without gradients
BLOCK_ELEMENTS = 1 << 20


class RepeatedRows(Tensor):
    """``source`` repeated ``n`` times along the batch (sample-major, as `repeat_batch`) without the copy.

    The tensor has the repeated shape; any operation on it makes the copy once and works on that, so it
    behaves as ``repeat_batch(source, n)`` everywhere. What it saves is the copy where nothing needs one:
    values that are only scored, such as the images of an importance-weighted estimate with k = 500 draws
    of 100 rows, are scored block by block against ``source`` (`TorchDistribution._summed_in_blocks`)
    instead of as 50,000 copied rows (157 MB for 784 pixels). Made only without gradients and outside
    ``torch.compile`` (`repeat_rows_lazily`).
    """

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, source: Tensor, n: int) -> RepeatedRows:
        shape = (n * source.shape[0], *source.shape[1:])
        self = Tensor._make_wrapper_subclass(cls, shape, dtype=source.dtype, device=source.device,
                                             layout=source.layout, requires_grad=False)
        self.source, self.n, self._copy = source, n, None
        return self

    def __init__(self, source: Tensor, n: int) -> None:  # all set in __new__
        pass

    def materialize(self) -> Tensor:
        """The repeated rows as an ordinary tensor (made once, then kept with this value)."""
        if self._copy is None:
            self._copy = repeat_batch(self.source, self.n)
        return self._copy

    def __repr__(self) -> str:  # noqa: D105
        return f"RepeatedRows({self.n} x {tuple(self.source.shape)})"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        def plain(t: Any) -> Any:
            return t.materialize() if isinstance(t, RepeatedRows) else t
        return func(*tree_map(plain, args), **tree_map(plain, kwargs or {}))


def repeat_rows_lazily(value: Any, n: int) -> Any:
    """`repeat_batch`, as a `RepeatedRows` where that saves a large copy: without gradients, outside
    ``torch.compile``, for a strided tensor of more than ``BLOCK_ELEMENTS`` entries once repeated."""
    if n == 1 or not isinstance(value, Tensor) or value.dim() == 0:
        return value
    if torch.is_grad_enabled() or value.numel() * n <= BLOCK_ELEMENTS or value.layout is not torch.strided \
            or type(value) is not Tensor or torch.compiler.is_compiling():
        return repeat_batch(value, n)
    return RepeatedRows(value, n)


def draws_as_rows(value: Tensor, x_dict: Mapping[str, Any], features: torch.Size,
                  cond_var: Sequence[str]) -> tuple[Tensor, Mapping[str, Any], torch.Size | None]:
    """A draw made with a ``sample_shape``, ``(*sample_shape, batch, *features)``, as rows ``(n * batch, *features)``
    sample-major (the order `Distribution.sample` draws them in), for a model that scores rows (a flow, a masked
    network), with its conditions ``cond_var`` in ``x_dict`` as as many rows: one given per batch row repeated for each
    draw, one drawn with the same leading shape flattened alike, one row kept (it conditions every row). Also the
    leading shape, None where the value is one batch already (or ``features`` is empty: unknown), or where its trailing
    dimensions are not ``features``: a mis-shaped value is returned as it was given, so that the error it meets names
    the shape the caller gave."""
    rank = len(features)
    lead = value.dim() - rank
    if not rank or lead <= 1 or value.shape[lead:] != features:
        return value, x_dict, None
    shape = value.shape[:lead]
    n, batch = math.prod(shape[:-1]), shape[-1]
    rows = dict(x_dict)
    for c in cond_var:
        v = rows.get(c)
        if not isinstance(v, Tensor) or v.dim() == 0:
            continue
        if v.dim() > lead and v.shape[:lead] == shape:  # drawn beside the value
            rows[c] = v.flatten(0, lead - 1)
        elif v.shape[0] == batch and batch != 1:  # one per batch row: the same for every draw
            rows[c] = repeat_batch(v, n)
    return value.flatten(0, lead - 1), rows, shape


def as_sample_shape(owner: str, sample_shape: Any) -> torch.Size:
    """``sample_shape`` as a ``torch.Size`` of positive sizes; one number of draws ``n`` is ``(n,)``, as
    `kizuna.losses.Expectation` reads it (``torch.Size(3)`` raised Python's bare "'int' object is not iterable").
    A TypeError naming ``owner``'s ``sample_shape`` for anything but integers, a ValueError for sizes below 1."""
    if type(sample_shape) is tuple and not sample_shape:  # the default: no draws dimension
        return torch.Size()
    if type(sample_shape) is torch.Size:
        shape = sample_shape
    else:
        number = one_number(sample_shape)
        if isinstance(number, numbers.Integral) and not isinstance(number, bool):
            entries: Any = (number,)
        else:
            try:
                entries = [one_number(s) for s in sample_shape]
            except TypeError:
                entries = [sample_shape]
        bad = [s for s in entries if isinstance(s, bool) or not isinstance(s, numbers.Integral)]
        if bad:
            raise TypeError(f"{owner}: sample_shape must be a number of draws or a shape (a tuple of positive "
                            f"integer sizes), got {sample_shape!r} ({bad[0]!r} is not an integer)")
        shape = torch.Size(int(s) for s in entries)
    if any(s < 1 for s in shape):
        raise ValueError(f"{owner}: sample_shape must hold positive sizes, got {tuple(shape)}")
    return shape


def one_rows_expanded(parts: Sequence[Tensor]) -> list[Tensor]:
    """Conditions of ``(rows, features)`` side by side: a part of one row beside parts of a batch is expanded to the
    batch's rows (one row conditions every row); other row counts are left for the caller's check. Written without a
    set or a max of the row counts, which would pin a symbolic batch size under ``torch.compile(dynamic=True)`` (a
    recompilation per size)."""
    batch = next((part.shape[0] for part in parts if part.shape[0] != 1), None)
    if batch is None or all(part.shape[0] != 1 for part in parts):
        return list(parts)
    return [part.expand(batch, *part.shape[1:]) if part.shape[0] == 1 else part for part in parts]


def batch_size_of(x_dict: Mapping[str, Any], names: Iterable[str] | None = None) -> int | None:
    """The leading dimension of the first batch-first tensor among ``names``; without ``names``, the largest leading
    dimension among all the values (a one-row value, e.g. a coefficient, broadcasts against the batch: the dict's
    order must not decide the batch size)."""
    if names is not None:
        for k in names:
            v = x_dict.get(k)
            if isinstance(v, Tensor) and v.dim() > 0:
                return v.shape[0]
        return None
    sizes = [v.shape[0] for v in x_dict.values() if isinstance(v, Tensor) and v.dim() > 0]
    return max(sizes) if sizes else None


def single_factors(p: Distribution) -> list[Distribution]:
    """The single factors of ``p``: products unfolded, and renamed and marginalised distributions through their own
    ``factors()`` (renamed views of the factors inside; the joint's factors)."""
    factors = p.factors()
    if len(factors) == 1 and factors[0] is p:
        return factors
    return [g for f in factors for g in single_factors(f)]


def data_dtype_references(names: Iterable[str], modules: Sequence[nn.Module], trainable_first: bool
                          ) -> list[Tensor]:
    """The floating tensors whose widest dtype (`widest_dtype`) floating data of the variables ``names`` are converted
    to for ``modules``: the one rule of `kizuna.models.Model.dtype` (``trainable_first``) and of the uses
    (`kizuna.metrics.likelihood._dtype`: `log_likelihood`, `anomaly_score`, `impute`, ...).

    The readers decide: the single factors (`single_factors`) of the distributions of ``modules``, and of those held
    inside a module of ``modules`` that is not one (a `LadderVAE`'s ``p`` and ``q``), that take a variable of
    ``names`` as a condition (a network's input, which must come in the network's dtype: the encoder :math:`q(z|x)`),
    or, where none does, those whose ``var`` holds one (they only score it and widen a narrower value: the decoder
    :math:`p(x|z)`; not a prior :math:`p(z)`, which never sees the data); where none reads them, ``modules`` whole (a
    plain network given to a use, e.g. `coherence`'s classifier). A module holding no distribution (a learned loss
    coefficient) is no reader. In the group chosen, `dtype_references` picks the tensors (parameters before buffers).
    Where the readers hold buffers only, their buffers decide together with the parameters of ``modules`` (the
    widest of both); a module that keeps its data's dtype in a ``_dtype_of_data`` marker (a `DiffusionSchedule`, whose
    table stays float32 at least) counts by its marker, and where the readers hold markers only the networks'
    parameters decide, the markers only without any: in a DDPM or NCSN loss the only factor taking the data as a
    condition is the forward noise kernel, whose noisy data reach the network (the kernel's float32 buffers made a
    float64 network get float32 data, and a bfloat16 one float32 data). An encoder's first parameter counts whether
    it is trained or frozen (its first layer reads the data either way).

    Conditions first, so a bfloat16 encoder beside a float32 decoder gets bfloat16 data (the widest of both fed the
    encoder float32 data, which it refused). The widest over the readers, not the first, so the choice does not
    depend on the order of the factors and no data are rounded below the precision of a reader; of each reader that
    takes the data as a condition, the dtype of its network's first parameter (its first layer's, which reads the
    data: a bfloat16 network keeping its LayerNorms in float32 takes bfloat16 input; a float32 scale held beside a
    float64 network does not decide), of each that scores them, its widest."""
    names = set(names)
    factors: list[Distribution] = []
    for m in modules:
        inner = [m] if isinstance(m, Distribution) else [d for d in m.modules() if isinstance(d, Distribution)]
        factors += [f for d in inner for f in single_factors(d) if not any(f is g for g in factors)]
    inputs = [f for f in factors if names & set(f.cond_var)]
    scorers = [f for f in factors if names & set(f.var)]
    for group, first_only in ((inputs, True), (scorers, False)):
        # (an encoder's first layer reads the data, trained or frozen: all its parameters, its network's first)
        refs = dtype_references(group, trainable_first and not first_only, buffers=False, first_only=first_only)
        if refs:
            return refs
        refs = dtype_references(group, trainable_first)  # readers holding buffers only: theirs, widened by the
        if refs:  # networks' parameters (a DDPM's noise kernel, whose noisy data reach the network)
            nets = [t for t in dtype_references(modules, trainable_first, buffers=False)
                    if not any(t is r for r in refs)]
            if nets and all(r.numel() == 0 for r in refs):  # markers only (a schedule's `_dtype_of_data`, float32 by
                return nets  # default): the networks decide (an ε-network converted alone to bfloat16 or float64)
            return refs + nets
    return dtype_references(modules, trainable_first)


def dtype_references(modules: Iterable[nn.Module], trainable_first: bool = False, buffers: bool = True,
                     first_only: bool = False) -> list[Tensor]:
    """One floating tensor of each floating dtype of each module of ``modules`` (their widest dtype, `widest_dtype`, is
    the modules'): of their parameters, or, where they have no floating parameter, of their floating buffers (a
    parameter-free network of float64 constants is float64); ``[]`` where they hold no floating tensor. With
    ``trainable_first``, of their trainable parameters (``requires_grad``) where any is one: the dtype a `Model`
    trains in, which a frozen float64 constant kept as an ``nn.Parameter`` beside float32 networks does not change
    (docs/training.md), while frozen readers alone (a frozen pretrained encoder) still decide. Without ``buffers``,
    parameters only. With ``first_only``, one parameter per module, the first of its network (its submodules'
    parameters before its own, `_NetworkFirst`): the dtype of a network that takes the data as input is its first
    layer's (a bfloat16 network that keeps its LayerNorms in float32 takes bfloat16 input, and a float32 input layer
    before a bfloat16 trunk float32 input, whatever the dtype of most elements; a float32 scale held by the distribution
    itself does not decide for its float64 network).

    One tensor per module and dtype, not all: `Model.dtype` reads them on every step (reading the dtype of every
    parameter of a 160-tensor network costs about 30 µs), and a parameter follows a later ``.to(dtype)`` of its
    module (torch converts it in place; a buffer is replaced, so a model keeps a buffer's dtype of when it was
    built)."""
    modules = list(modules)
    kinds: list[Callable[[nn.Module], Iterable[Tensor]]] = [lambda m: m.parameters()]
    if buffers:  # (a module that keeps its data's dtype in a marker, a `DiffusionSchedule` whose table stays float32
        kinds.append(_data_buffers)  # at least, counts by the marker)
    if trainable_first:
        kinds.insert(0, lambda m: (t for t in m.parameters() if t.requires_grad))
    for tensors in kinds:
        refs: list[Tensor] = []
        for m in modules:
            first: dict[torch.dtype, Tensor] = {}
            for t in tensors(_NetworkFirst(m) if first_only else m):
                if t.is_floating_point():
                    first.setdefault(t.dtype, t)
                    if first_only:
                        break
            refs += [t for t in first.values() if not any(t is r for r in refs)]
        if refs:
            return refs
    return []


class _NetworkFirst:
    """``module``'s parameters with those of its submodules (its network) before its own (a learned scale or
    temperature held by the distribution itself, which torch lists first whatever the order of registration): for
    `dtype_references`' ``first_only``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def parameters(self) -> Iterator[Tensor]:
        seen: set[int] = set()
        for child in self.module.children():
            for t in child.parameters():
                if id(t) not in seen:
                    seen.add(id(t))
                    yield t
        yield from (t for t in self.module._parameters.values() if t is not None and id(t) not in seen)


def _data_buffers(module: nn.Module) -> Iterable[Tensor]:
    """``module``'s buffers that say its data's dtype: its ``_dtype_of_data`` markers where it holds any (a
    `DiffusionSchedule` keeps its betas and table in float32 at least, on purpose, beside a bfloat16 network and
    data), else all its buffers."""
    named = list(module.named_buffers())
    markers = [b for n, b in named if n.rpartition(".")[2] == "_dtype_of_data"]
    return markers or [b for _, b in named]


def widest_dtype(tensors: Iterable[Tensor]) -> torch.dtype | None:
    """The widest dtype of ``tensors`` (torch's promotion of them all); ``None`` for none."""
    dtypes = {t.dtype for t in tensors}
    return functools.reduce(torch.promote_types, dtypes) if dtypes else None


def as_value(value: Any, like: Tensor | None = None) -> Any:
    """A Python number given as a value becomes a batch of one, ``3.0 -> tensor([3.])``, in the dtype and on the device
    of ``like`` (the default dtype on the CPU without it)."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        if like is None:
            return torch.tensor([value], dtype=torch.get_default_dtype())
        return torch.tensor([value], dtype=like.dtype, device=like.device)
    return value


def _with_values(x_dict: Mapping[str, Any], owner: nn.Module | None = None) -> dict[str, Any]:
    """``x_dict`` with Python numbers as batches of one (copied only when it holds a number), in the dtype and on the
    device of ``owner``'s first floating parameter, else of the values' first floating tensor, else of ``owner``'s
    first floating buffer (a number scored by a float64 model on a GPU was a CPU float32 tensor: an error on the GPU,
    float32 rounding in float64, and the model's number constants then converted to match it)."""
    for v in x_dict.values():
        if not isinstance(v, Tensor) and isinstance(v, numbers.Number):  # tensors skip the ABC's slow check
            floating = (t for t in x_dict.values() if isinstance(t, Tensor) and t.is_floating_point())
            if owner is not None:
                floating = itertools.chain((t for t in owner.parameters() if t.is_floating_point()), floating,
                                           (t for t in owner.buffers() if t.is_floating_point()))
            like = next(floating, None)
            return {k: as_value(v, like) for k, v in x_dict.items()}
    return x_dict if type(x_dict) is dict else dict(x_dict)


def sum_rows(value: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """Sum ``dims``, or every dimension but the first (Pixyz's ``sum_samples``)."""
    if dims is not None:
        return value.sum(dim=tuple(dims)) if len(dims) else value
    if value.dim() <= 1:
        return value
    return value.sum(-1) if value.dim() == 2 else value.flatten(1).sum(1)


def require_distributions(who: str, **given: Any) -> None:
    """Each of ``given`` (argument name -> value) a kizuna `Distribution`; a TypeError naming the argument otherwise
    (a string or a torch distribution failed later, reading an attribute it has not)."""
    for name, value in given.items():
        if not isinstance(value, Distribution):
            raise TypeError(f"{who}: {name} must be a kizuna distribution, got {type(value).__name__} {value!r}"[:300])


def apply_keeping_exact(module: nn.Module, apply: Callable[[], Any], exact: Mapping[str, Tensor]) -> Any:
    """``apply()`` (the module's ``nn.Module._apply``: ``.to()``, ``.double()``), then the buffers named in ``exact``
    refilled from it in their new floating dtype and device, where they still held those numbers before: constants
    given as Python numbers are exact in any dtype (a float32 buffer cast to float64 kept 0.30000001192 for 0.3).
    ``exact``: float64 copies of the numbers as given, kept outside the module's buffers. A buffer on the ``meta``
    device holds no numbers to contradict them: it is refilled too, so ``.to("meta").to_empty(device=...)`` (deferred
    initialisation) gives the constants back, not uninitialised memory."""
    held = [k for k, v in exact.items() if (b := module._buffers.get(k)) is not None and b.is_floating_point()
            and (b.is_meta or bool((b == v.to(dtype=b.dtype, device=b.device)).all()))]
    out = apply()
    with torch.no_grad():
        for k in held:
            b = module._buffers[k]
            if b is not None and b.is_floating_point() and not b.is_meta:
                b.copy_(exact[k].to(dtype=b.dtype, device=b.device))
    return out


def flat_rows(value: Tensor) -> Tensor:
    """``value`` as ``(B, features)``: its dimensions after the first flattened, and scalar data (one value per row,
    shape ``(B,)``) as one feature per row (``flatten(1)`` raised on it)."""
    return value.unsqueeze(1) if value.dim() == 1 else value.flatten(1)


class _SeededCalls(threading.local):
    """Per thread: the generators whose draws are in progress (`drawing_from`), innermost last."""

    def __init__(self) -> None:
        self.active: list[torch.Generator] = []


_SEEDED_CALLS = _SeededCalls()


def _device_key(device: torch.device) -> tuple[str, int | None]:
    """``device`` as (type, index); an accelerator without an index as its current one (``cuda`` as ``cuda:0``)."""
    if device.type == "cpu":
        return "cpu", None
    index = device.index
    if index is None:
        module = getattr(torch, device.type, None)
        index = module.current_device() if module is not None and hasattr(module, "current_device") else 0
    return device.type, index


@overload
def model_device(models: nn.Module | Iterable[nn.Module], x_dict: Any = None,
                 fallback: torch.device | Literal["default"] = "default") -> torch.device: ...
@overload
def model_device(models: nn.Module | Iterable[nn.Module], x_dict: Any = None, *,
                 fallback: torch.device | Literal["default"] | None) -> torch.device | None: ...
def model_device(models: nn.Module | Iterable[nn.Module], x_dict: Any = None,
                 fallback: torch.device | Literal["default"] | None = "default") -> torch.device | None:
    """The models' device: that of the first parameter or buffer of ``models`` (one module, or several: each one's
    parameters, then its buffers, in their order), else of the first tensor of ``x_dict`` (a distribution of Python
    functions draws beside its inputs), else ``fallback``: ``"default"``, torch's default device (the device a model
    of no tensors draws on: `drawing_from`), or a device, or None (the uses of a model: data then keep their device,
    `kizuna.metrics.likelihood`)."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    t = next(itertools.chain.from_iterable(itertools.chain(m.parameters(), m.buffers()) for m in models), None)
    if t is None and isinstance(x_dict, Mapping):
        t = next((v for v in x_dict.values() if isinstance(v, Tensor)), None)
    if t is not None:
        return t.device
    return torch.get_default_device() if isinstance(fallback, str) and fallback == "default" else fallback


def drawing_from(p: Distribution, generator: Any, x_dict: Any, call: Callable[[], Any]) -> Any:
    """``call()`` with every random draw it makes on ``generator``'s device taken from ``generator``: torch's default
    generator of that device is given ``generator``'s state for the call, ``generator`` is given the state the draws
    left, and the default generator is put back as it was (``torch.random.fork_rng``; the CPU's is put back too where
    ``generator`` is an accelerator's). So equally seeded generators give the same draws, the global generators are not
    advanced, and a generator seeded as the global one gives the draws made without one. One mechanism for every
    family: what draws through ``torch.distributions`` or ``torch.randn`` without a generator of its own draws from
    ``generator`` too. Nested calls with the same generator draw on from it (its state is current only between calls).

    A TypeError naming ``p`` for anything but a ``torch.Generator``; a ValueError naming both devices for one on
    another device than ``p``'s (`model_device`), whose draws would not come from it. Limits: torch's global generator
    is process-wide, so another thread drawing during the call draws from ``generator``'s stream and is rewound
    afterwards (the same holds for ``torch.random.fork_rng``); with an accelerator's generator, draws the call makes on
    the CPU come from the CPU's global generator, which is put back afterwards (they repeat from call to call)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{p.prob_text}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    device, own = generator.device, model_device(p, x_dict)
    if _device_key(device) != _device_key(own):
        raise ValueError(f"{p.prob_text}: the generator is on {device}, the model on {own}; give a generator on "
                         f"{own} (torch.Generator(device={str(own)!r})), or move the model")
    active = _SEEDED_CALLS.active
    if any(g is generator for g in active):  # (already the default generator's state: swapping again would rewind it)
        return call()
    if device.type == "cpu":
        devices: list[int] = []
        get: Callable[[], Tensor] = torch.get_rng_state
        put: Callable[[Tensor], None] = torch.set_rng_state
        kind = "cuda"  # (fork_rng's default; with no devices it keeps the CPU's state only)
    else:
        kind, index = _device_key(device)
        module = getattr(torch, kind)
        devices = [index]  # type: ignore[list-item]
        get, put = (lambda: module.get_rng_state(index)), (lambda state: module.set_rng_state(state, index))
    with torch.random.fork_rng(devices, device_type=kind):
        put(generator.get_state())
        active.append(generator)
        try:
            out = call()
        finally:
            active.pop()
        generator.set_state(get())
    return out


def _with_generator(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (a distribution's ``sample``, ``get_log_prob`` or ``get_prob``) with the keyword ``generator``: given,
    the call draws from it (`drawing_from`), and ``method`` itself does not receive it. Applied to `Distribution`'s
    methods and to every subclass's own (`Distribution.__init_subclass__`), so that an override that drops unknown
    keywords (a product's, a mixture's) cannot drop it."""
    @functools.wraps(method)
    def seeded(self: Distribution, *args: Any, generator: torch.Generator | None = None, **kwargs: Any) -> Any:
        if generator is None:
            return method(self, *args, **kwargs)
        x_dict = args[0] if args else kwargs.get("x_dict")
        return drawing_from(self, generator, x_dict, lambda: method(self, *args, **kwargs))
    seeded._seeded = True  # type: ignore[attr-defined]
    return seeded


# the methods that take ``generator=`` (`_with_generator`)
_SEEDED_METHODS = ("sample", "get_log_prob", "get_prob")


# set on a distribution while a user's own `sample` (a subclass's override, Pixyz's extension point) runs: the draws
# it asks kizuna for (``super().sample(...)``) are kizuna's own, not routed back into it (`_route_draws`)
_IN_USER_SAMPLE = "_in_user_sample"


def _guard_user_sample(sample: Callable[..., XDict]) -> Callable[..., XDict]:
    """A subclass's own ``sample``, marked as running on its instance while it runs (see `_route_draws`)."""
    @functools.wraps(sample)
    def guarded(self: Distribution, *args: Any, **kwargs: Any) -> XDict:
        state = self.__dict__
        was = state.get(_IN_USER_SAMPLE, False)
        state[_IN_USER_SAMPLE] = True
        try:
            return sample(self, *args, **kwargs)
        finally:
            if was:
                state[_IN_USER_SAMPLE] = True
            else:
                state.pop(_IN_USER_SAMPLE, None)
    guarded._user_sample = sample  # type: ignore[attr-defined]
    return guarded


def _drawn_by_sample(p: Distribution, out: Any) -> XDict:
    """The variables of ``p`` from what its own ``sample`` returned (the entries of ``var``; inputs and anything else
    it returns are dropped, as the caller keeps its own)."""
    if not isinstance(out, Mapping) or not all(map(out.__contains__, p._var)):
        got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
        raise ValueError(f"{p.prob_text}: {type(p).__name__}.sample must return a dict with its variables "
                         f"{p._var}, got {got}")
    return {v: out[v] for v in p._var}


def _route_draws(cls: type[Distribution]) -> None:
    """Route the internal draws of ``cls`` (a class with a user's own ``sample``) through that ``sample``: a product
    draws its factors, and a loss or a trainer its samples, through ``_sample`` / ``_sample_n`` / ``_mean_values``,
    which now call ``self.sample(..., return_all=False)`` as Pixyz's products and losses call ``sample``. Inside the
    user's ``sample`` (its ``super().sample(...)``) they are the class's own again. Decided once per class; kizuna's
    classes are not touched."""
    own_sample, own_sample_n, own_means = cls._sample, cls._sample_n, cls._mean_values
    user = cls.sample._user_sample  # type: ignore[attr-defined]
    try:
        params = inspect.signature(user).parameters
    except (TypeError, ValueError):  # (no signature to read: every keyword is passed)
        params = {}
    takes_all = not params or any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values())

    def call(self: Distribution, x_dict: XDict, **options: Any) -> XDict:
        """The user's ``sample`` with the keywords it takes: ``batch_n`` and ``return_all`` are needed (Pixyz's
        signature), ``reparam`` and ``sample_mean`` are passed where it takes them."""
        needed = [k for k in ("batch_n", "return_all") if not takes_all and k not in params]
        if options.get("sample_mean") and not takes_all and "sample_mean" not in params:
            needed.append("sample_mean")
        if needed:
            raise TypeError(f"{self.prob_text}: products, losses and trainers draw from {cls.__name__} through its own "
                            f"sample, which must take the keyword(s) {', '.join(needed)} (Pixyz's signature: "
                            "sample(x_dict={}, batch_n=None, sample_shape=torch.Size(), return_all=True, "
                            "reparam=False))")
        if not takes_all:
            options = {k: v for k, v in options.items() if k in params}
        return _drawn_by_sample(self, self.sample(x_dict, **options))

    def _sample(self: Distribution, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        if self.__dict__.get(_IN_USER_SAMPLE):
            return own_sample(self, x_dict, batch_n, reparam)
        own, inputs = self._var, self.input_var
        given = {k: v for k, v in x_dict.items() if k not in own or k in inputs}
        # (a product asks every factor for reparameterised draws; one without them draws without)
        return call(self, given, batch_n=batch_n, return_all=False, reparam=reparam and self.has_reparam)

    def _sample_n(self: Distribution, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None,
                  reparam: bool) -> XDict:
        if self.__dict__.get(_IN_USER_SAMPLE):
            return own_sample_n(self, x_dict, repeated, n, batch_n, reparam)
        # n draws per row: one call of the user's sample on the repeated inputs (through `_sample` above)
        return Distribution._sample_n(self, x_dict, repeated, n, batch_n, reparam)

    def _mean_values(self: Distribution, x_dict: XDict, batch_n: int | None) -> XDict:
        if self.__dict__.get(_IN_USER_SAMPLE):
            return own_means(self, x_dict, batch_n)
        return call(self, x_dict, batch_n=batch_n, return_all=False, sample_mean=True)

    for fn in (_sample, _sample_n, _mean_values):
        fn._routed = True  # type: ignore[attr-defined]
        fn.__qualname__ = f"{cls.__qualname__}.{fn.__name__}"
    cls._sample, cls._sample_n, cls._mean_values = _sample, _sample_n, _mean_values  # type: ignore[method-assign]


class Distribution(nn.Module):
    """A probability distribution over named variables, conditioned on named variables.

    Args:
        var: names of the random variables it defines, e.g. ``["z"]``.
        cond_var: names of the variables it is conditioned on, e.g. ``["x"]``.
        name: the symbol used in formulas (``"p_prior"`` prints as ``p_{prior}``).
        features_shape: the shape of one draw of ``var`` without the batch dimension,
            when it is known in advance (constant parameters).

    Subclasses implement ``_sample`` and ``_log_prob``; the public methods check inputs,
    handle ``sample_shape`` and build the formula text. A subclass may instead override the public
    ``sample`` (Pixyz's extension point, with Pixyz's signature): products, losses and trainers then draw
    through it (``sample(x_dict, batch_n=..., return_all=False, reparam=...)``; ``sample_mean=True`` for
    means), and its ``super().sample(...)`` is kizuna's draw. An overridden ``get_log_prob`` is likewise
    what products and losses score with.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("sample")
        if inspect.isfunction(own) and not hasattr(own, "_user_sample") \
                and own.__module__.partition(".")[0] != "kizuna":
            cls.sample = _guard_user_sample(own)  # type: ignore[method-assign]
        # a user's sample here or in a base: route the draws through it, once per class (a class that defines
        # its own `_sample` again under it is routed again)
        if hasattr(cls.sample, "_user_sample") and not all(
                hasattr(getattr(cls, name), "_routed") for name in ("_sample", "_sample_n", "_mean_values")):
            _route_draws(cls)
        for name in _SEEDED_METHODS:  # ``generator=`` for a subclass's own methods too (`_with_generator`)
            own = cls.__dict__.get(name)
            if inspect.isfunction(own) and not getattr(own, "_seeded", False):
                setattr(cls, name, _with_generator(own))

    # Pixyz's options of a product's `sample` and `get_log_prob` (`graph.set_option`); None: none, the usual path
    _graph_options: GraphOptions | None = None

    def __init__(
        self,
        var: str | Sequence[str],
        cond_var: str | Sequence[str] | None = None,
        name: str = "p",
        features_shape: Sequence[int] | torch.Size = (),
    ) -> None:
        super().__init__()
        self._var = _as_list(var, "var")
        self._cond_var = _as_list(cond_var, "cond_var")
        if not self._var:
            raise ValueError(f"{type(self).__name__} needs at least one variable in var")
        both = sorted(set(self._var) & set(self._cond_var))
        if both:
            raise ValueError(f"{name}: {both} cannot be both random and conditioning variables")
        if len(set(self._var)) != len(self._var):
            raise ValueError(f"{name}: a variable is listed twice in var={self._var}")
        self._name = name
        # (a bare 3 was tuple()'s raw TypeError, and -2 a raw integer overflow in the first draw; 0 is torch's empty
        # dimension, as a parameter of shape (0,) gives)
        try:
            shape = _check_shape("features_shape", features_shape, minimum=0)
        except ValueError as err:  # the label only here: a subclass's prob_text may read what its __init__ sets after
            # this (it raised "'Q' object has no attribute 'prob_text'" on every construction)
            try:
                label = self.prob_text
            except Exception:
                label = prob_text(name, self._var, self._cond_var)
            raise ValueError(f"{type(self).__name__} {label}: {err}") from None
        self._features_shape = torch.Size(shape)

    # ----------------------------------------------------------------- names
    @property
    def var(self) -> list[str]:
        """The random variables this distribution defines."""
        return list(self._var)

    @property
    def cond_var(self) -> list[str]:
        """The variables this distribution is conditioned on."""
        return list(self._cond_var)

    @property
    def input_var(self) -> list[str]:
        """The variables that must be in ``x_dict`` to sample (``cond_var`` by default)."""
        return list(self._cond_var)

    @property
    def name(self) -> str:
        """The symbol used in formulas; it can be changed (``p.name = "q"``), as in Pixyz."""
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{type(self).__name__}: name must be a non-empty string, got {name!r}")
        self._name = name

    @property
    def features_shape(self) -> torch.Size:
        return self._features_shape

    @property
    def distribution_name(self) -> str:
        return type(self).__name__

    @property
    def has_reparam(self) -> bool:
        """Whether every variable can be drawn by a reparameterised (differentiable) sampler."""
        return False

    def factors(self) -> list[Distribution]:
        """The factors this distribution is a product of (itself, for a single factor)."""
        return [self]

    @property
    def graph(self) -> DistGraph:
        """Pixyz's ``dist.graph``: this distribution's factors as a graph (``visible_graph()``, a ``networkx``
        graph of its variables) and Pixyz's per-factor options of ``sample`` and ``get_log_prob``
        (``set_option``); see `kizuna.distributions.dist_graph`."""
        return DistGraph(self)

    # ------------------------------------------------------------------ text
    @property
    def prob_text(self) -> str:
        """``p(x,z|y)``: the distribution's symbol."""
        return prob_text(self._name, self._var, self._cond_var)

    @property
    def prob_latex(self) -> str:
        """The symbol in LaTeX, its names made LaTeX-safe: ``p(z_{t_1})`` for ``p(z_t_1)``."""
        return prob_text(self._name, self._var, self._cond_var, LATEX)

    def _factorized_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        """Factorised formula with variables renamed by ``rename`` (see ReplaceVar)."""
        var = [rename.get(v, v) for v in self._var]
        cond = [rename.get(v, v) for v in self._cond_var]
        return prob_text(self._name, var, cond, fmt)

    def _factor_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        """The text of this distribution as one factor of a product (see `JointDistribution`)."""
        return self._factorized_text(fmt, rename)

    @property
    def prob_factorized_text(self) -> str:
        """The product of factors, e.g. ``p(x|z)p_{prior}(z)``."""
        return self._factorized_text(TEXT, {})

    def _joint_text(self, fmt: dict[str, str]) -> str:
        factorized, own = self._factorized_text(fmt, {}), symbol(self, fmt)
        if factorized == own:
            return factorized
        return f"{own} = {factorized}"

    @property
    def prob_joint_factorized_and_text(self) -> str:
        """``p(x,z) = p(x|z)p_{prior}(z)``, or just ``p(x|z)`` for a single factor."""
        return self._joint_text(TEXT)

    def to_latex(self) -> str:
        """The formula in LaTeX (``\\int`` for marginals)."""
        return self._joint_text(LATEX)

    def __str__(self) -> str:
        return self.prob_joint_factorized_and_text

    # ----------------------------------------------------------- input checks
    def _require(self, x_dict: Mapping[str, Any], names: Iterable[str]) -> None:
        if all(map(x_dict.__contains__, names)):
            return
        missing = [n for n in names if n not in x_dict]
        if missing:
            given = ", ".join(sorted(x_dict)) or "nothing"
            raise ValueError(f"{self.prob_text} needs {', '.join(missing)}, but was given {given}")

    # ------------------------------------------------------- to be overridden
    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        """Draw every variable of ``var`` given ``x_dict`` (one batch dim). Returns new values only.

        ``reparam=True`` asks for differentiable draws where the family allows them; factors
        that have none draw without gradient (callers add a score-function term).
        """
        raise NotImplementedError(f"{self.prob_text} ({self.distribution_name}) cannot be sampled")

    def _sample_n(self, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
        """``n`` draws per row, sample-major: row ``i * B + b`` is draw ``i`` of row ``b``.

        ``x_dict`` holds the inputs (``B`` rows) and ``repeated`` the same values repeated ``n``
        times along the batch (what the caller evaluates the draws with). By default the draws are
        made from ``repeated``; a distribution whose parameters depend only on its inputs computes
        them once per row instead (see `TorchDistribution`).
        """
        if batch_n is None and batch_size_of(repeated) is None:
            batch_n = 1  # nothing fixes the batch: one row per draw, as `sample` documents (n rows, not 1)
        return self._sample(repeated, None if batch_n is None else batch_n * n, reparam)

    def _mean_values(self, x_dict: XDict, batch_n: int | None) -> XDict:
        """The means of ``var`` given ``x_dict``, shaped like draws (``sample(..., sample_mean=True)``)."""
        if len(self._var) != 1:
            raise NotImplementedError(f"{self.prob_text} ({self.distribution_name}) has no sample_mean draw")
        mean = self.sample_mean(x_dict)
        if batch_n is not None and mean.dim() > 0 and mean.shape[0] == 1 and batch_n != 1:
            mean = mean.expand(batch_n, *mean.shape[1:])
        return {self._var[0]: mean}

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        raise NotImplementedError(
            f"{self.prob_text} ({self.distribution_name}) has no tractable log-density"
        )

    def _log_prob_dims(self, x_dict: XDict, dims: Sequence[int]) -> Tensor:
        """The log-density summed over ``dims`` only (``get_log_prob(..., feature_dims=dims)``)."""
        return sum_rows(self._log_prob(x_dict, sum_features=False), dims)

    # ----------------------------------------------------------- public API
    @_with_generator
    def sample(
        self,
        x_dict: Mapping[str, Any] | None = None,
        batch_n: int | None = None,
        sample_shape: Sequence[int] | torch.Size = (),
        return_all: bool = True,
        reparam: bool = False,
        sample_mean: bool = False,
        *,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> XDict:
        """Draw the variables of ``var``.

        Args:
            x_dict: values of the conditioning variables, batch first (a Python number is a batch
                of one). Values given for variables of ``var``: a single distribution (one whose
                `factors` is itself, a flow distribution included) ignores them and redraws its
                variables, as Pixyz does (they are overwritten in the returned dict; they do not
                size the batch). A product holds a whole factor's given variables fixed and draws
                its other factors given them (Pixyz redraws them too; for Pixyz's loop
                ``d = p.sample(d)`` pass ``{k: v for k, v in d.items() if k not in p.var}``; see
                docs/porting_from_pixyz.md).
            batch_n: the batch size. Given, it is the batch, whatever the rows of the values in ``x_dict``
                under keys that are none of this distribution's inputs; its conditioning values must have
                ``batch_n`` rows or one (a one-row input drawn ``batch_n`` times conditions every row). Without
                it, the largest leading dimension among the values in ``x_dict`` with a batch dimension, also one
                under a key that is none of this distribution's variables: a prior ``p(z)`` given ``{"x": x}``
                draws one ``z`` per row of ``x``, as inside an expectation over that batch (Pixyz reads only
                ``input_var`` and draws one row: give ``batch_n=1`` for that, see docs/porting_from_pixyz.md);
                1 where no value has one.
            sample_shape: extra leading dims: each sampled variable gets shape
                ``(*sample_shape, batch, *features)``; inputs are returned unchanged.
            return_all: also return the entries of ``x_dict``.
            reparam: draw with the reparameterisation trick (gradients flow to the
                parameters); an error if some factor has no such sampler (Pixyz draws those without the
                trick, silently: give ``reparam=False`` for them, or draw through an ``Expectation``).
            sample_mean: return the means instead of draws (ancestrally, for a product). Nothing is drawn, so a
                ``generator`` is not advanced.
            generator: a ``torch.Generator`` on the model's device to draw from instead of torch's global generator,
                for every family (products, mixtures, flows, autoregressive models, DDPM, FlowMatching, ...): two
                calls with equally seeded generators give the same draws, and the global generator is not advanced
                (`drawing_from`, which also names the limits: the global generator is swapped for the call, which is
                not thread-safe). None (the default): torch's global generator. Keyword only; a subclass's own
                ``sample`` does not receive it, its draws come from it. A TypeError for anything but a generator, a
                ValueError for one on another device.
            kwargs: other options are ignored (as in Pixyz).
        """
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample", self, self.input_var)
        x_dict = _with_values(x_dict, self) if x_dict else {}
        self._require(x_dict, self.input_var)
        _check_count("batch_n", batch_n, minimum=0)
        shape = as_sample_shape(self.prob_text, sample_shape)
        n = math.prod(shape)
        keep = set(self.input_var)  # an empirical factor reads its own variable
        fixed = [v for v in self._var if v in x_dict and v not in keep]
        if fixed and len(factors := self.factors()) == 1 and factors[0] is self:
            fixed = []  # a single distribution redraws its own variables (Pixyz): dropped from the inputs below
        if fixed:
            self._check_fixed(fixed)
            if len(fixed) == len(self._var):
                return dict(x_dict) if return_all else {}
        if reparam and not sample_mean and not self.has_reparam:  # the factors drawn (a product's factor given in
            # x_dict is held, not drawn: Pixyz's remedy of drawing it first, then the rest reparameterised, works)
            bad = [f.prob_text for f in self.factors() if not f.has_reparam and not set(f.var) <= set(fixed)]
            if bad:
                raise ValueError(f"{self.prob_text}: reparam=True but {', '.join(bad)} has no reparameterised sampler"
                                 " (use reparam=False, or a relaxed distribution)")
        inputs = {k: v for k, v in x_dict.items() if k in keep or k not in self._var or k in fixed}
        if sample_mean:
            new = self._mean_values(inputs, batch_n)
            if len(shape):
                new = {k: v.expand(*shape, *v.shape) for k, v in new.items()}
        elif len(shape) == 0:
            new = self._sample(inputs, batch_n, reparam)
        else:
            rows = batch_n if batch_n is not None else batch_size_of(inputs)  # (a given batch_n is the batch, as
            # without sample_shape, whatever the rows of values under unrelated keys)
            # a one-row value beside a batch (or with batch_n) conditions every row, as without sample_shape: expanded
            # to the batch before it is repeated for the draws (n copies of one row were read as n rows of their own:
            # a product's factor conditioned on it drew (S, 1, ...) beside the other factors' (S, B, ...), and with
            # batch_n a product refused "batch_n=8 but ... (c) have batch size 2" for batch_n=4, sample_shape=[2], and
            # "... (c) have batch size 10" with an unrelated 5-row value beside it)
            repeated = {k: repeat_batch(v.expand(rows, *v.shape[1:]) if isinstance(v, Tensor) and v.dim() > 0
                                        and v.shape[0] == 1 and rows != 1 else v, n) for k, v in inputs.items()}
            new = self._sample_n(inputs, repeated, n, batch_n, reparam)
            new = {k: v.reshape(*shape, v.shape[0] // n, *v.shape[1:]) for k, v in new.items()}
        return {**x_dict, **new} if return_all else new

    def _check_fixed(self, fixed: list[str]) -> None:
        """Variables of ``var`` given to ``sample``: all of a factor's, or none (see `JointDistribution`)."""
        if len(fixed) != len(self._var):
            missing = [v for v in self._var if v not in fixed]
            raise ValueError(
                f"{self.prob_text}: x_dict gives {', '.join(fixed)} but not {', '.join(missing)}; "
                "give all of its variables or none"
            )

    @_with_generator
    def get_log_prob(self, x_dict: Mapping[str, Any], sum_features: bool = True,
                     feature_dims: Sequence[int] | None = None, *, generator: torch.Generator | None = None,
                     **kwargs: Any) -> Tensor:
        """``log p(var|cond_var)``.

        Args:
            x_dict: the values of ``var`` and of the conditioning variables (a Python number, or a
                value without a batch dimension, is a batch of one).
            sum_features: sum over the features, giving one value per batch row (for draws with
                a ``sample_shape``, as Pixyz: one value per entry of the first dimension).
            feature_dims: sum over these dimensions instead (Pixyz's ``feature_dims``).
            generator: where the density draws (`kizuna.distributions.FlowMatching`'s Hutchinson probes), it draws
                from this ``torch.Generator`` (as `sample`'s ``generator``).
            kwargs: other options are ignored (as in Pixyz).
        """
        names = self._var + self.input_var
        if type(x_dict) is not dict:  # (a bare tensor was "values expected sparse tensor layout", None was
            # "'NoneType' object has no attribute 'values'"; every LogProb's evaluation calls this with a dict)
            x_dict = values_dict(x_dict, "get_log_prob", self, names)
        x_dict = _with_values(x_dict, self)
        if not all(map(x_dict.__contains__, names)):
            self._require(x_dict, names)  # names what is missing
        if feature_dims is not None and sum_features:
            try:
                return self._log_prob_dims(x_dict, list(feature_dims))
            except IndexError as err:
                if "Dimension out of range" not in str(err):  # another IndexError (a network's own) is its own
                    raise
                raise ValueError(f"{self.prob_text}: feature_dims={list(feature_dims)} is out of range for its "
                                 f"log-density ({err})") from None
        return self._log_prob(x_dict, sum_features)

    @_with_generator
    def get_prob(self, x_dict: Mapping[str, Any], sum_features: bool = True,
                 feature_dims: Sequence[int] | None = None, *, generator: torch.Generator | None = None,
                 **kwargs: Any) -> Tensor:
        """``p(var|cond_var)``: ``exp`` of `get_log_prob` (``generator`` as there)."""
        if type(x_dict) is not dict:
            x_dict = values_dict(x_dict, "get_prob", self, self._var + self.input_var)
        return self.get_log_prob(x_dict, sum_features, feature_dims).exp()

    def get_entropy(self, x_dict: Mapping[str, Any] | None = None, sum_features: bool = True,
                    feature_dims: Sequence[int] | None = None) -> Tensor:
        """Closed-form entropy where the family has one."""
        raise NotImplementedError(f"{self.prob_text} ({self.distribution_name}) has no closed-form entropy")

    def sample_mean(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        """The mean of ``var`` given ``x_dict``."""
        raise NotImplementedError(f"{self.prob_text} ({self.distribution_name}) has no closed-form mean")

    def sample_variance(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        """The variance of ``var`` given ``x_dict``."""
        raise NotImplementedError(f"{self.prob_text} ({self.distribution_name}) has no closed-form variance")

    def get_params(self, params_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Tensor]:
        """The family's parameters given the conditioning values ``params_dict``."""
        raise NotImplementedError(f"{self.prob_text} ({self.distribution_name}) is not parametric")

    @property
    def torch_family(self) -> type[torch.distributions.Distribution] | None:
        """The ``torch.distributions`` class behind this distribution, if it is one family."""
        return None

    @property
    def closed_form_family(self) -> type[torch.distributions.Distribution] | None:
        """The ``torch.distributions`` class whose closed forms (KL, entropy) this distribution's analytic ones are:
        `torch_family`, but for the relaxed families that score with a discrete likelihood, that discrete family."""
        return self.torch_family

    def closed_form_score(self, x_dict: Mapping[str, Any]) -> Tensor | None:
        r""":math:`\nabla_x \log p(x|\cdot)` of the single variable in closed form, or None (then take it by
        autograd of `get_log_prob`)."""
        return None

    def kl_parts(self, x_dict: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The one-family distribution behind this one and its parameters for ``x_dict`` (for a
        closed-form KL, see `kizuna.losses.KullbackLeibler`)."""
        raise NotImplementedError(f"{self.prob_text} ({self.distribution_name}) is not one torch family")

    def get_dist(self, x_dict: Mapping[str, Any] | None = None, independent: bool = True
                 ) -> torch.distributions.Distribution:
        """A ``torch.distributions`` object for these inputs (features as event dims)."""
        raise NotImplementedError(f"{self.prob_text} ({self.distribution_name}) is not one torch family")

    # ------------------------------------------------------- formula layer
    def log_prob(self, sum_features: bool = True, feature_dims: Sequence[int] | None = None) -> Loss:
        """``log p(var|cond_var)`` as a Loss (evaluate it with ``.eval(x_dict)``; `get_log_prob` gives the values)."""
        self._check_not_values("log_prob", sum_features)
        return LogProb(self, sum_features=sum_features, feature_dims=feature_dims)

    def prob(self, sum_features: bool = True, feature_dims: Sequence[int] | None = None) -> Loss:
        """``p(var|cond_var)`` as a Loss (evaluate it with ``.eval(x_dict)``; `get_prob` gives the values)."""
        self._check_not_values("prob", sum_features)
        return Prob(self, sum_features=sum_features, feature_dims=feature_dims)

    def _check_not_values(self, fn: str, sum_features: Any) -> None:
        """``p.log_prob(x_dict)`` / ``p.log_prob(x)``: values where ``sum_features`` goes (a dict gave a loss
        silently, a tensor torch's "Boolean value of Tensor ... is ambiguous" at its evaluation)."""
        if isinstance(sum_features, (Mapping, Tensor, np.ndarray, list, tuple)):
            example = ", ".join(f"{n!r}: {n}" for n in self._var + self.input_var)
            raise TypeError(
                f"{self.prob_text}: {fn}() builds the {'log-' if fn == 'log_prob' else ''}density as a loss and "
                f"takes no values (its first argument is sum_features), got {type(sum_features).__name__}; evaluate "
                f"it with {fn}().eval({{{example}}}), or call get_{fn}({{{example}}})")

    def __mul__(self, other: Distribution) -> Distribution:
        from kizuna.distributions.joint import JointDistribution

        if not isinstance(other, Distribution):
            return NotImplemented
        return JointDistribution([self, other])

    def marginalize_var(self, names: str | Sequence[str]) -> Distribution:
        """``∫ p(x,z) dz``: sampling drops ``names``; the density is not tractable."""
        from kizuna.distributions.marginal import MarginalizeVarDistribution

        return MarginalizeVarDistribution(self, _as_list(names, "marginalize_var"))

    def replace_var(self, **replace: str) -> Distribution:
        """Rename variables: ``p.replace_var(z="y")`` turns ``p(x|z)`` into ``p(x|y)``."""
        from kizuna.distributions.replace import ReplaceVarDistribution

        return ReplaceVarDistribution(self, replace)
