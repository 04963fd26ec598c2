"""Parameters shared within one evaluation of a formula.

In ``KL[q(z|x)||p(z)] - E_q[log p(x|z)]`` the encoder's parameters are needed twice (for the
analytic KL and to draw z). While a loss is evaluated, `shared_parameters` keeps each
distribution's parameters for the exact input tensors it saw, so every network runs once
per evaluation. The memo lives in the evaluation, never on the module (STYLE.md habit 1),
and ends with it.

The memo is thread-local (each thread of ``nn.DataParallel`` evaluates with its own) rather than a
``ContextVar``: ``torch.compile`` traces reads of a ``threading.local`` but breaks the graph at
``ContextVar.get``, which split a compiled VAE step into eight graphs.

An evaluation nested in another (a custom term that evaluates a loss under ``torch.no_grad()``, e.g. a baseline)
shares the outer memo only while both run in the same grad mode: parameters computed without a graph are not left
for the outer evaluation's later terms (which lost their gradient when they reused them), and an evaluation that
needs gradients inside one without them does not reuse parameters computed there without a graph.

The same holds for a single computation, nested block or not: each entry records the mode it was computed in, and a
computation reuses an entry only in a mode that the entry serves. The mode is

* whether gradients were on (an entry computed with them serves a computation with or without them, one computed
  without them only a computation without them);
* the training flags (``module.training``) of the owner and of the modules under it whose flag can change what it
  computes: every module but those with the forward of a ``torch.nn`` type that computes alike in both modes (linear
  and convolution layers, activations, containers, layer and group norm: ``_MODE_FREE``; also a subclass that keeps
  that forward, as kizuna's `MLP`) and no forward hook. A read that switches the whole owner (``q.eval();
  q.sample_mean(x_dict); q.train()``) or only a part of it (``q.net.eval()`` around the read, where the network has
  dropout or batch norm) thus leaves no dropout-free (running-statistics) parameters for the later train-mode terms;
  an owner that is no ``nn.Module`` has no flag;
* the ``torch.autocast`` state (on or off, and its dtype, per device type: `kizuna.utils._autocast_state`): a read
  under ``torch.autocast("cpu", dtype=torch.bfloat16)`` leaves no bfloat16 parameters for the later full-precision
  terms, and a term under autocast is not served the full-precision ones.

A term that reads a distribution under ``torch.no_grad()`` or ``torch.inference_mode()`` inside an evaluation with
gradients (a detached statistic, a greedy baseline ``q.sample_mean(x_dict)``) thus leaves no graph-less parameters for
the later terms (the encoder lost its gradient, silently), and one that reads it in another training or autocast mode
leaves its parameters to no term of another mode; each computes its own.

An entry also records which tensors the owner and the modules under it held (the parameters and buffers: `_Held`,
compared by identity on a hit): inside a ``torch.func.functional_call`` that swapped other tensors in, an entry
computed with the module's own parameters is not served, nor one computed inside the call after it. A loss whose
forward evaluates a base loss with θ, takes an inner step and evaluates the base loss with θ' by ``functional_call``
(MAML written as a loss, one evaluation) was served θ's parameters for θ'.

Cost (`memoized` runs for every distribution on every step): which modules under an owner to watch is found by one
walk over its ``_modules``, kept across evaluations (``_LISTED``: by the owner's id, with weak references only, dropped
when the owner is freed) until a module is registered anywhere (torch's global module registration hook counts
``self.net = ...``, ``add_module``, ``Sequential.append``), then walked again. For an MLP of linear layers and
activations nothing is watched, and an entry records the owner's flag alone, as before. A miss records the flags, the
autocast state and a list of the held tensors (read from the holders' ``_parameters``/``_buffers`` dicts, kept with
the walk), a hit compares them, only for an entry whose inputs match; outside autocast its state is one call
(``torch._C._is_any_autocast_enabled``). Under ``torch.compile`` the walk runs while tracing and nothing is kept
(reading the kept lists would add guards on them, and a recompilation whenever a module is built); dynamo guards on
the flags and the autocast state as on the rest of the trace, so a compiled step does not recompile while they stay
the same.

What is not seen: a module put into the tree without registering it after the owner was walked
(``Sequential.insert``, ``ModuleList.insert``, a write into ``_modules``: torch's hook does not see these), or a forward
hook added later to a module with a ``_MODE_FREE`` forward, whose flag is then not compared; a flag read by other code
than the module's own forward and hooks (a forward that tests ``self.net.training`` where ``net`` is an ``nn.Linear``,
or a method that such a forward calls, overridden in a subclass); a tree changed in the middle of an evaluation (its
earlier entries keep the modes of the tree they were computed with); a parameter or buffer changed in place within one
evaluation (``p.add_(...)`` under ``no_grad`` between two reads of the same inputs), a tensor held by a module that
held none when the owner was walked, or one in a ScriptModule (its dicts are wrappers); and a mode that is none of
these (a module's plain attribute, e.g. an annealed temperature).
"""

from __future__ import annotations

import contextlib
import operator
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import torch

from kizuna.utils import _autocast_state

# The mode an entry was computed in, besides the grad mode: the owner's training flag (None: an owner without one)
# where no module under it is watched (`_watched`) and autocast was off, the common case, compared as cheaply as
# before; else (flag, watched modules, their flags, `_autocast_state()` or None where autocast was off)
_Mode = Any
# The tensors the owner held when an entry was computed: (the ``_parameters`` and ``_buffers`` dicts of the owner and
# of every module under it that held a tensor when it was walked, the tensors in them then, in order); None for an
# owner that is no module, and while ``torch.compile`` traces
_Held = Any
# (owner, tag, inputs, value, grad, mode, held): the inputs are kept with the value for the evaluation's length; grad:
# whether gradients were on when the value was computed
_Entry = tuple[object, Hashable, list[Any], Any, bool, _Mode, _Held]


class _State(threading.local):
    """Per thread: the memo of the evaluation in progress and the grad mode its entries were computed in (set in
    ``__init__``, which threading.local runs in every thread, so that the attributes always exist: a compiled step
    guards on that). Whether ``torch.compile`` traces is asked where it matters, on a miss, not kept here: a graph
    break starts a new frame inside the same evaluation, which must keep its memo."""

    def __init__(self) -> None:
        self.memo: list[_Entry] | None = None
        self.grad = True


_STATE = _State()
_grad_enabled = torch.is_grad_enabled  # (bound once: half the cost of the module attribute lookup per call)
# whether torch.autocast is on for any device type: one call, where `_autocast_state` asks every device type
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None) or (lambda: bool(_autocast_state()))
_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling  # (torch < 2.3: dynamo's)
# whether dynamo traces: the one question the miss path's common case asks before it reads `_LISTED` (one call that
# returns False, where `_compiling` makes two: it asks ``torch.jit.is_scripting`` too); dynamo folds it to True, as it
# does `_compiling`. `_compiling` (also true while ``torch.export`` traces without dynamo, where reading `_LISTED` adds
# no guard) is asked in the slow branch only, by `_recorded`
_tracing = getattr(torch.compiler, "is_dynamo_compiling", None) or _compiling

# torch.nn's modules whose computation reads no training flag (their own or another's): a module whose class has the
# forward of one of these (the type itself, or a subclass that keeps it: kizuna's `MLP`, a Sequential) and that has no
# forward hooks computes the same in both modes, so its flag is not recorded
_MODE_FREE = frozenset(t for t in (getattr(torch.nn, name, None) for name in (
    "Sequential", "ModuleList", "ModuleDict", "Identity", "Linear", "Bilinear", "Flatten", "Unflatten", "Embedding",
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "LayerNorm", "GroupNorm",
    "RMSNorm", "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Sigmoid", "Tanh",
    "Softplus", "Softsign", "Softmax", "LogSoftmax", "LogSigmoid", "Hardtanh", "Hardswish", "Hardsigmoid", "Tanhshrink",
    "GLU", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "Upsample", "PixelShuffle", "PixelUnshuffle")) if t is not None)
_FREE_FORWARDS = frozenset(t.forward for t in _MODE_FREE)

# Per owner (by id): (the count of `_REGISTERED` when it was walked, weak references to its watched modules
# (`_watched`), a weak reference to the owner whose callback drops the item when the owner is freed, so that an id here
# is always its owner's, the ``_parameters`` and ``_buffers`` dicts of its holders (`_watched`), which an entry's
# `_Held` reads: the dicts, not the modules, held strongly, so that a miss reads them without dereferencing; a module
# taken out of the tree keeps its dict here until the owner is walked again). Kept across evaluations: a module tree
# changes by registering a module (``self.net = ...``, ``add_module``, ``Sequential.append``), which torch's global
# registration hook counts; then every owner is walked again.
_LISTED: dict[int, tuple[int, tuple[Any, ...], Any, list[dict[str, Any]]]] = {}
_REGISTERED = [0]
_HOOK: list[Any] = []  # the handle of that hook, once registered


def _count_registration(module: Any, name: str, submodule: Any) -> None:
    """torch's global module registration hook: counts every submodule registered anywhere (see `_LISTED`)."""
    _REGISTERED[0] += 1


def module_registrations() -> int:
    """How many modules were registered anywhere so far (counted by torch's global module registration hook, which the
    first call registers): a list of modules found in a tree is current while the count is unchanged (`_LISTED`;
    `Model`'s batch-norm layers, whose statistics a refused step puts back)."""
    if not _HOOK:
        _HOOK.append(torch.nn.modules.module.register_module_module_registration_hook(_count_registration))
    return _REGISTERED[0]


def _watched(owner: torch.nn.Module) -> tuple[list[Any], list[dict[str, Any]]]:
    """The modules under the owner (not itself) whose training flag can change what it computes: every one but those
    with the forward of a `_MODE_FREE` type and no forward hooks (a hook may read the flag: the old ``spectral_norm``'s
    does); and the non-empty ``_parameters`` and ``_buffers`` dicts of the owner and of the modules under it (the
    holders, whose tensors an entry records: `_Held`; a ScriptModule's are wrappers, not dicts, and are left out). A
    plain walk over ``_modules``, each module once; no watched module for an MLP of linear layers and activations,
    whose entries then compare the owner's flag alone."""
    watched, seen, stack = [], set(), list(owner._modules.values())
    dicts = [d for d in (owner._parameters, owner._buffers) if d and type(d) is dict]
    while stack:
        m = stack.pop()
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            if (isinstance(m, torch.jit.ScriptModule) or getattr(type(m), "forward", None) not in _FREE_FORWARDS
                    or m._forward_pre_hooks or m._forward_hooks):
                watched.append(m)
            dicts.extend(d for d in (m._parameters, m._buffers) if d and type(d) is dict)
            stack.extend(m._modules.values())
    return watched, dicts


def _listed(owner: torch.nn.Module) -> tuple[list[Any], list[dict[str, Any]]]:
    """`_watched(owner)` from its `_LISTED` item where that is current, else walked and kept. Not while
    ``torch.compile`` traces the evaluation: the trace walks afresh and keeps nothing (it runs once, and reading
    `_LISTED` would add guards on it and on `_REGISTERED`, a recompilation whenever a module is built)."""
    listed = _LISTED.get(id(owner))
    if listed is not None and listed[0] == _REGISTERED[0]:
        if not listed[1]:
            return [], listed[3]
        watched = [ref() for ref in listed[1]]
        if None not in watched:  # (a watched module deleted from the tree and freed: walk again)
            return watched, listed[3]
    watched, dicts = _watched(owner)
    key = id(owner)
    _LISTED[key] = (module_registrations(), tuple(weakref.ref(m) for m in watched),
                    weakref.ref(owner, lambda _, key=key: _LISTED.pop(key, None)), dicts)
    return watched, dicts


def _recorded(owner: object) -> tuple[_Mode, _Held]:
    """The mode an entry of this owner records now (see `_Mode`), and the tensors it holds (`_Held`; None while
    ``torch.compile`` traces, where dynamo's guards on the parameters do the check). For a module owner whose tree
    holds no watched module (an MLP), outside ``torch.compile``, one lookup in `_LISTED` and a list of its tensors."""
    training, cast = getattr(owner, "training", None), _autocast_state() if _any_autocast() else None
    if _compiling():
        watched, held = _watched(owner)[0] if isinstance(owner, torch.nn.Module) else [], None
    else:
        listed = _LISTED.get(id(owner))
        if listed is not None and not listed[1] and listed[0] == _REGISTERED[0]:  # (the common case, inline)
            watched, dicts = listed[1], listed[3]
        elif isinstance(owner, torch.nn.Module):
            watched, dicts = _listed(owner)
        else:  # (no flag, no tensors)
            return (training if cast is None else (training, (), [], cast)), None
        held = dicts, [t for d in dicts for t in d.values()]
    if watched:
        return (training, watched, [getattr(m, "training", None) for m in watched], cast), held
    return (training if cast is None else (training, (), [], cast)), held


def _serves(mode: tuple[Any, list[Any], list[bool], Any], owner: object) -> bool:
    """Whether an entry recorded in this (non-plain) mode serves a computation of the owner now."""
    training, watched, flags, cast = mode
    return ((training is None or training is owner.training)
            and flags == [getattr(m, "training", None) for m in watched]
            and cast == (_autocast_state() if _any_autocast() else None))


class shared_parameters:  # noqa: N801 - used as a function: ``with shared_parameters():``
    """Within this block, a distribution given the same input tensors computes its parameters once;
    nested blocks share the outermost memo, in the same grad mode. A block nested without gradients in one with
    them reads the outer entries but leaves none of its own (they have no graph: a later term of the outer
    evaluation that reused them lost its gradient); one nested with gradients in one without them has a memo of
    its own (the outer entries have no graph). The block's grad mode is read once per block. Within a block, a
    computation in another grad, training or autocast mode than an entry's computes its own (see the module
    docstring and `memoized`, which reads them only for an entry whose inputs match and on a miss)."""

    __slots__ = ("_saved",)

    def __enter__(self) -> None:
        state = _STATE
        memo = state.memo
        if memo is None:  # the outermost block
            self._saved = None
            state.memo, state.grad = [], torch.is_grad_enabled()
        elif torch.is_grad_enabled() == state.grad:  # nested in the same grad mode: the outer memo, as it is
            self._saved = memo
        elif state.grad:  # without gradients inside an evaluation with them: its entries go at the block's end
            self._saved = len(memo)
            state.grad = False
        else:  # with gradients inside an evaluation without them: a memo of its own
            self._saved = memo
            state.memo, state.grad = [], True

    def __exit__(self, *exc: object) -> None:
        state, saved = _STATE, self._saved
        if saved is None:
            state.memo = None
        elif type(saved) is int:  # (the nested block without gradients) its entries are forgotten
            del state.memo[saved:]
            state.grad = True
        elif saved is not state.memo:  # (the nested block with gradients) the outer memo is back
            state.memo, state.grad = saved, False


@contextlib.contextmanager
def outside_memo() -> Iterator[None]:
    """A block that neither reads nor fills the memo of the evaluation in progress (its values are computed afresh
    and not kept); the evaluation's memo and grad mode are as before after it."""
    state = _STATE
    outer, grad = state.memo, state.grad
    state.memo = None
    try:
        yield
    finally:
        state.memo, state.grad = outer, grad


def step_mark() -> int | None:
    """The length of the evaluation's memo now (``None`` outside one), for `release_step`."""
    memo = _STATE.memo
    return None if memo is None else len(memo)


def release_step(mark: int | None) -> None:
    """Forget the entries made since `step_mark` returned ``mark``: a loop whose steps see new input tensors
    every time (`IterativeLoss`'s time steps) ends each step with it, so that a step searches the entries made
    before the loop and its own only, not every earlier step's (a scan that grew with the number of steps).
    An entry that depended only on values from before the loop is computed again in the next step: the same
    value."""
    memo = _STATE.memo
    if mark is not None and memo is not None:
        del memo[mark:]


def memoized(owner: object, tag: Hashable, inputs: Sequence[Any], compute: Callable[..., Any], *args: Any) -> Any:
    """``compute(*args)``, or its earlier result for the same owner, tag and input objects, computed in the
    present training flags of the owner and the modules under it, the present autocast state and, where gradients
    are on now, with gradients (see the module docstring).

    The entries are scanned newest first (so that one `remember` added later wins), comparing the inputs with
    ``is``: a linear scan by identity, not a dict keyed on ``id()``, because under ``torch.compile`` an ``id()``
    of an input tensor becomes a guard on that very object, so every new batch recompiled. An evaluation holds a
    handful of entries. Written as plain loops (no generator): it runs for every distribution on every step; the
    modes are read only for an entry whose inputs match (the grad mode only for an entry computed without
    gradients) and once on a miss, to record them (`_recorded`), with the tensors the owner holds, compared by identity
    on a hit (not inside a ``torch.func.functional_call`` that swapped them in after the entry: MAML's adapted
    parameters evaluated within the evaluation that computed them were served the entry of the original parameters;
    nor, inside the call, after it). That compare and the common case of a miss (an owner with no watched module,
    outside autocast and dynamo's tracing) are written inline: a call each is a tenth of a microsecond.
    ``inputs`` is kept as it is given (not copied): pass a sequence built for the call."""
    memo = _STATE.memo
    if memo is None:
        return compute(*args)
    n = len(inputs)
    for o, t, ins, value, grad, mode, held in reversed(memo):
        if o is owner and t == tag and len(ins) == n:
            for a, b in zip(ins, inputs):
                if a is not b:
                    break
            else:  # computed without gradients: not for a computation with them; in another mode or with other
                # tensors in the owner (a functional_call): not at all
                if (grad or not _grad_enabled()) and (
                        ((mode is None or mode is owner.training) and not _any_autocast()) if type(mode) is not tuple
                        else _serves(mode, owner)):  # (not a tuple: the plain mode, the owner's flag, autocast off)
                    if held is None:
                        return value
                    dicts, tensors = held  # the tensors the owner holds now, the entry's by identity (`_Held`)
                    now = [x for d in dicts for x in d.values()]
                    if len(now) == len(tensors) and all(map(operator.is_, now, tensors)):
                        return value
    listed = None if _tracing() else _LISTED.get(id(owner))
    if listed is not None and not listed[1] and listed[0] == _REGISTERED[0] and not _any_autocast():
        mode, dicts = owner.training, listed[3]  # (`_recorded`'s common case, inline: an owner with no watched
    else:  # module, outside autocast)
        mode, held = _recorded(owner)
        dicts = None if held is None else held[0]
    grad = _grad_enabled()
    value = compute(*args)
    # the tensors held once the computation finished (a buffer the owner's forward reassigned), listed once, here
    held = None if dicts is None else (dicts, [x for d in dicts for x in d.values()])
    memo.append((owner, tag, inputs, value, grad, mode, held))
    return value


def remember(owner: object, tag: Hashable, inputs: Sequence[Any], value: Any) -> None:
    """Record ``value`` as the result for these inputs (e.g. parameters computed once per row and
    repeated for the rows of several draws), so that a later `memoized` call reuses it; recorded with the grad mode,
    the training flags, the autocast state and the owner's tensors of now, as if `memoized` had computed it here."""
    memo = _STATE.memo
    if memo is not None:  # added after any earlier entry for these inputs, which `memoized` then no longer finds
        memo.append((owner, tag, list(inputs), value, _grad_enabled(), *_recorded(owner)))


def recall(owner: object, tag: Hashable, inputs: Sequence[Any]) -> Any:
    """The value `remember` recorded for this owner, tag and input objects in this evaluation (newest first), or
    ``None`` (also outside an evaluation); unlike `memoized`, nothing is computed or added, and a record is returned
    whatever mode it was made in: it is a value to look up (the hidden draws made with a draw),
    not a computation to redo."""
    memo = _STATE.memo
    if memo is not None:
        n = len(inputs)
        for o, t, ins, value, _, _, _ in reversed(memo):
            if o is owner and t == tag and len(ins) == n and all(a is b for a, b in zip(ins, inputs)):
                return value
    return None


def tagged(tag: Hashable) -> list[tuple[object, Hashable, list[Any], Any]]:
    """The entries of this evaluation's memo with this tag, newest first, each as (owner, tag, inputs, value) (none
    outside an evaluation)."""
    memo = _STATE.memo
    return [] if memo is None else [e[:4] for e in reversed(memo) if e[1] == tag]
