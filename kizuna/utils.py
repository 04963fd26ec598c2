"""Helpers that Pixyz programs import from ``pixyz.utils``, under the same names.

Dictionary helpers (`get_dict_values`, `delete_dict_values`, `detach_dict`, `replace_dict_keys`,
`replace_dict_keys_split`, `tolist`), `sum_samples`, the numerical ``epsilon`` and cache-size
settings, `print_latex` (a formula to display in a notebook) and `lru_cache_for_sample_dict`
(memoise a method whose arguments are dicts of tensors).
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from kizuna._text import latex_name

_SETTINGS: dict[str, Any] = {"epsilon": 1e-7, "cache_maxsize": 20}
F = TypeVar("F", bound=Callable[..., Any])


def set_epsilon(eps: float) -> None:
    """Set the small constant returned by `epsilon` (Pixyz's default 1e-7)."""
    _SETTINGS["epsilon"] = float(eps)


def epsilon() -> float:
    """The small constant that keeps ``log`` away from zero in user code (``log(p + epsilon())``).

    >>> epsilon()
    1e-07
    """
    return _SETTINGS["epsilon"]


def set_cache_maxsize(cache_maxsize: int | None) -> None:
    """Set how many results each `lru_cache_for_sample_dict` cache keeps (decorators made later); ``None``: no bound
    (``functools.lru_cache``'s meaning, as in Pixyz)."""
    if cache_maxsize is not None and (isinstance(cache_maxsize, bool) or not isinstance(cache_maxsize, int)
                                      or cache_maxsize < 0):  # (2.7 was taken as 2, None failed in int())
        raise ValueError(f"cache_maxsize must be an int >= 0 or None (no bound), got {cache_maxsize!r}")
    _SETTINGS["cache_maxsize"] = cache_maxsize


def cache_maxsize() -> int | None:
    """How many results each `lru_cache_for_sample_dict` cache keeps (default 20, as Pixyz)."""
    return _SETTINGS["cache_maxsize"]


def get_dict_values(dicts: Mapping[str, Any], keys: Iterable[str], return_dict: bool = False) -> Any:
    """The values of ``dicts`` under ``keys`` that are present, in the order of ``keys``.

    >>> get_dict_values({"a": 1, "b": 2, "c": 3}, ["b"])
    [2]
    >>> get_dict_values({"a": 1, "b": 2, "c": 3}, ["b", "d"], True)
    {'b': 2}
    """
    picked = {k: dicts[k] for k in keys if k in dicts}
    return picked if return_dict else list(picked.values())


def delete_dict_values(dicts: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A copy of ``dicts`` without ``keys``.

    >>> delete_dict_values({"a": 1, "b": 2, "c": 3}, ["b", "d"])
    {'a': 1, 'c': 3}
    """
    drop = set(keys)
    return {k: v for k, v in dicts.items() if k not in drop}


def detach_dict(dicts: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of ``dicts`` detached from the autograd graph."""
    return {k: v.detach() for k, v in dicts.items()}


def replace_dict_keys(dicts: Mapping[str, Any], replace_list_dict: Mapping[str, str]) -> dict[str, Any]:
    """Rename keys of ``dicts`` by ``replace_list_dict`` (order kept; other keys unchanged).

    >>> replace_dict_keys({"a": 1, "b": 2, "c": 3}, {"a": "x", "b": "y"})
    {'x': 1, 'y': 2, 'c': 3}
    """
    return {replace_list_dict.get(k, k): v for k, v in dicts.items()}


def replace_dict_keys_split(dicts: Mapping[str, Any], replace_list_dict: Mapping[str, str]
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(renamed entries, untouched entries)`` of ``dicts`` under ``replace_list_dict``.

    >>> replace_dict_keys_split({"a": 0, "b": 1}, {"a": "loc"})
    ({'loc': 0}, {'b': 1})
    """
    renamed = {replace_list_dict[k]: v for k, v in dicts.items() if k in replace_list_dict}
    rest = {k: v for k, v in dicts.items() if k not in replace_list_dict}
    return renamed, rest


def tolist(a: Any) -> list[Any]:
    """``a`` itself if it is a list, else ``[a]``.

    >>> tolist(2), tolist([1, 2])
    ([2], [1, 2])
    """
    return a if isinstance(a, list) else [a]


def sum_samples(samples: torch.Tensor, sum_dims: Sequence[int] | None = None) -> torch.Tensor:
    """Sum over ``sum_dims`` (default: every dimension but the first, the batch).

    >>> sum_samples(torch.ones(2, 3, 4)).tolist()
    [12.0, 12.0]
    """
    if sum_dims is not None:
        return samples if len(sum_dims) == 0 else samples.sum(dim=tuple(sum_dims))
    return samples if samples.dim() <= 1 else samples.flatten(1).sum(1)


def convert_latex_name(name: str) -> str:
    """A variable name as LaTeX: ``mu_var`` -> ``\\mu_{var}`` (Greek letters by name).

    >>> convert_latex_name("mu_var"), convert_latex_name("x_1"), convert_latex_name("z")
    ('\\\\mu_{var}', 'x_{1}', 'z')
    """
    return latex_name(name)


class LatexFormula:
    """A formula that notebooks render as maths (``_repr_latex_``) and ``print`` shows as LaTeX text.

    Attributes:
        data: the LaTeX source, as ``IPython.display.Math.data`` (what Pixyz's `print_latex` returns).
    """

    def __init__(self, data: str) -> None:
        self.data = data

    def _repr_latex_(self) -> str:
        return f"$\\displaystyle {self.data}$"

    def __str__(self) -> str:
        return self.data

    def __repr__(self) -> str:
        return f"LatexFormula({self.data!r})"


def print_latex(obj: Any) -> LatexFormula:
    """The LaTeX formula of a distribution, a loss or a model, for display (Pixyz's `print_latex`).

    As in Pixyz it returns the formula (a notebook shows it as the cell's value) rather than printing.

    >>> from kizuna.distributions import Normal
    >>> print(print_latex(Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, name="p_prior")))
    p_{prior}(x|z)
    """
    from kizuna.distributions.base import Distribution  # deferred: utils sits above every layer
    from kizuna.formula import Loss
    from kizuna.models.model import Model

    if isinstance(obj, Model):
        obj = obj.loss_cls
    if isinstance(obj, (Distribution, Loss)):
        return LatexFormula(obj.to_latex())
    raise TypeError(f"print_latex takes a kizuna Distribution, Loss or Model, got {type(obj).__name__}")


class _Unkeyable(Exception):
    """A call the cache cannot key: an inference tensor (``torch.inference_mode``) has no version counter, so an
    in-place change of it could not be told from the stored state."""


def _frozen(value: Any, tensors: list[torch.Tensor]) -> Any:
    """A hashable key for a call argument: tensors by identity, in-place version and ``requires_grad`` (a result
    computed before ``x.requires_grad_()`` has no graph back to ``x``), dicts and lists deeply, any other value by
    its type and value (``1``, ``1.0`` and ``True`` are equal and hash alike, but ``x * 1.0`` is not ``x * 1``).

    Every tensor keyed is appended to ``tensors``, which the cache keeps alive with the entry: while it lives, no
    other tensor can have its ``id`` (a freed tensor's address, and so its ``id``, is given to later tensors, at
    version 0 again). Raises `_Unkeyable` for an inference tensor."""
    if isinstance(value, torch.Tensor):
        if value.is_inference():
            raise _Unkeyable
        tensors.append(value)
        return ("tensor", id(value), value._version, value.requires_grad)
    if isinstance(value, Mapping):
        return ("dict", tuple((k, _frozen(v, tensors)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_frozen(v, tensors) for v in value))
    return ("value", type(value), value)


def _module_state(module: Any) -> tuple[tuple[Any, ...], list[torch.Tensor]]:
    """What a module's output depends on besides its inputs, as a key: its parameters and buffers (which tensors, their
    in-place versions, and ``requires_grad``: a result computed while they were frozen has no graph to them), every
    submodule's training mode (BatchNorm, Dropout) and forward hooks and pre-hooks (by their handles' ids: a hook
    added or removed since changes what the submodule returns), read in one walk over the submodules, and torch's
    global forward hooks (``register_module_forward_hook``); and those tensors, which the cache keeps alive with the
    entry (a replaced parameter's ``id`` could otherwise be reused by its successor, at version 0 again). Raises
    `_Unkeyable` for an inference tensor (a module built under ``torch.inference_mode``)."""
    if not isinstance(module, torch.nn.Module):
        return (), []
    tensors: list[torch.Tensor] = []
    flags: list[Any] = []
    for m in module.modules():
        tensors.extend(t for t in itertools.chain(m._parameters.values(), m._buffers.values()) if t is not None)
        inner = m.__dict__.get("_named_loss")  # a named loss's node (`Named`) stands for its loss: the loss's hooks too
        hooked = [h for h in ((m,) if inner is None else (m, inner)) if h._forward_hooks or h._forward_pre_hooks]
        if hooked:
            flags.append((m.training, *((tuple(h._forward_pre_hooks), tuple(h._forward_hooks)) for h in hooked)))
        else:
            flags.append(m.training)
    if any(t.is_inference() for t in tensors):
        raise _Unkeyable
    if _GLOBAL_PRE_HOOKS or _GLOBAL_HOOKS:
        flags.append((tuple(_GLOBAL_PRE_HOOKS), tuple(_GLOBAL_HOOKS)))
    return (tuple((id(t), t._version, t.requires_grad) for t in tensors), tuple(flags)), tensors


# torch's global forward (pre-)hooks, dicts from the hooks' ids (`register_module_forward_hook` adds to them in place)
_GLOBAL_PRE_HOOKS = torch.nn.modules.module._global_forward_pre_hooks
_GLOBAL_HOOKS = torch.nn.modules.module._global_forward_hooks


_OPTIMIZER_STEPS = [0]  # how many optimizer steps were taken since the first cache was made (`_count_optimizer_steps`)
_STEP_HOOK: list[Any] = []  # the handle of the hook that counts them, once it is registered


def _count_optimizer_steps(optimizer: Any, args: Any, kwargs: Any) -> None:
    """A global ``torch.optim`` step post-hook: counts every ``Optimizer.step``, fused or not. torch's fused kernels
    (``fused=True``: kizuna's default Adam and AdamW) update the parameters without advancing their in-place
    versions, so the versions alone miss such a step."""
    _OPTIMIZER_STEPS[0] += 1


def _watch_optimizer_steps() -> None:
    """Register `_count_optimizer_steps` for every optimizer (made before or after), once."""
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_post_hook(_count_optimizer_steps))


_AUTOCAST_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu")  # the device types torch.autocast runs on


def _autocast_state() -> tuple[tuple[str, torch.dtype], ...]:
    """The device types ``torch.autocast`` is on for, each with its dtype, as a key: a result computed under autocast
    (in bfloat16) is not what the same call computes outside it (float32), nor under another autocast dtype."""
    if not hasattr(torch, "get_autocast_dtype"):  # torch < 2.4: autocast is read per device type by name
        state = [("cpu", torch.get_autocast_cpu_dtype())] if torch.is_autocast_cpu_enabled() else []
        return tuple(state + ([("cuda", torch.get_autocast_gpu_dtype())] if torch.is_autocast_enabled() else []))
    state = []
    for device in _AUTOCAST_DEVICES:
        try:
            if torch.is_autocast_enabled(device):
                state.append((device, torch.get_autocast_dtype(device)))
        except RuntimeError:  # a device type this build of torch does not know
            pass
    return tuple(state)


_UNKEYED = object()  # `lru_cache_for_sample_dict`: a call whose arguments cannot be keyed


def lru_cache_for_sample_dict() -> Callable[[F], F]:
    """Memoise a method whose arguments are sample dicts (Pixyz's decorator of ``get_params``).

    A call with the same tensors (the same objects, not modified in place, with the same ``requires_grad``) and
    other arguments equal and of the same types (``1.0`` is not served the result for ``1``), in the
    same grad mode, the same ``torch.inference_mode`` state and the same ``torch.autocast`` state (on or off, and its
    dtype, per device type), with the module's parameters and buffers the same tensors, not modified since and with
    the same ``requires_grad``, every submodule in the same training mode with the same forward hooks and pre-hooks
    (and torch's global ones, ``register_module_forward_hook``), and no optimizer step taken since, returns
    the stored result; at most `cache_maxsize` results are kept per method. Unlike Pixyz's cache, these invalidate
    the stored results: any ``torch.optim`` optimizer's ``step()`` (fused or not: every stored result is dropped at
    the next call), an in-place change of an input, a parameter or a buffer (BatchNorm's running statistics),
    ``.train()`` / ``.eval()``, a forward hook or pre-hook added or removed, and freezing or unfreezing
    (``requires_grad_``; a result computed frozen has no graph). What is not seen, so a stale result is returned,
    and ``cache_clear()`` is the remedy: a write through
    ``.data`` (``p.data = ...``, ``module.double()``), which torch does not count as a change; an update made
    outside an optimizer's ``step()`` by a kernel that does not count it either (a fused optimizer kernel called
    directly); and a plain Python attribute that the method reads (an annealed temperature ``self.t``). A stored
    result is returned with its graph: backpropagating it a second time with no optimizer step in between (a
    skipped step, on the same batch) raises torch's "backward through the graph a second time". A call whose
    arguments cannot be keyed (a numpy array, or an inference tensor made under ``torch.inference_mode``, which has
    no version counter; also a module whose parameters are inference tensors) is computed and not cached.
    The cache holds references to the keyed tensors (the argument tensors, even after the caller puts a new batch
    into the dict it passed, and the module's parameters and buffers) and their results until evicted, so a new
    tensor cannot take a stored one's ``id`` and be served its result. The cache is shared by every instance and
    thread and locked around each lookup, insertion and eviction (the method itself runs unlocked), so threads may
    call cached methods at once.

    While ``torch.compile`` traces (``Model(..., compile=...)``), the method is called directly, neither looked up nor
    stored: the key's reads (``tensor.is_inference()``, in-place versions) broke the graph, 4 graphs for a VAE step
    instead of 1, and a loss evaluation already computes each distribution's parameters once per set of values
    (`kizuna.formula.memo`); the cache serves eager calls as before.

    >>> calls = []
    >>> class Enc(torch.nn.Module):
    ...     @lru_cache_for_sample_dict()
    ...     def params(self, x_dict):
    ...         calls.append(1)
    ...         return x_dict["x"] * 2
    >>> e, x = Enc(), torch.ones(2)
    >>> _ = e.params({"x": x}); _ = e.params({"x": x}); len(calls)
    1
    """
    maxsize = cache_maxsize()
    _watch_optimizer_steps()

    def decorate(method: F) -> F:
        cache: dict[Any, tuple[Any, Any]] = {}  # key -> (what it keys, kept alive so ids stay unique, result)
        seen = [_OPTIMIZER_STEPS[0]]  # the optimizer steps counted when the stored results were computed
        # the cache is shared by every instance and thread: each lookup, insertion and eviction holds the lock (the
        # method itself runs outside it); unlocked, one thread's eviction iterating the dict while another inserted
        # raised "dictionary changed size during iteration"
        lock = threading.Lock()

        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if torch.compiler.is_compiling():  # traced: called directly (docstring)
                return method(self, *args, **kwargs)
            try:
                state, tensors = _module_state(self)
                key = (id(self), state, torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                       _autocast_state(), _frozen(args, tensors), _frozen(sorted(kwargs.items()), tensors))
            except (TypeError, _Unkeyable):  # an argument that cannot be keyed (an inference tensor)
                key = _UNKEYED
            with lock:
                steps = _OPTIMIZER_STEPS[0]
                if steps != seen[0]:  # an optimizer step since (a fused one leaves the versions as they were): every
                    cache.clear()  # stored result may be stale, or hold a graph that step's backward freed
                    seen[0] = steps
                stored = None
                try:
                    stored = None if key is _UNKEYED else cache.pop(key, None)
                except TypeError:  # an argument that cannot be hashed (a numpy array)
                    key = _UNKEYED
                if stored is not None:
                    cache[key] = stored  # most recently used last
                    return stored[1]
            result = method(self, *args, **kwargs)  # (an argument that cannot be keyed: computed, not cached)
            if key is not _UNKEYED and (maxsize is None or maxsize > 0):
                with lock:
                    if _OPTIMIZER_STEPS[0] != steps:  # an optimizer step (another thread's) while computing it
                        return result
                    cache[key] = ((self, args, kwargs, tensors), result)
                    while maxsize is not None and len(cache) > maxsize:
                        cache.pop(next(iter(cache)))
            return result

        def cache_clear() -> None:
            with lock:
                cache.clear()

        wrapper.cache_clear = cache_clear  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
