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

The same holds for a single computation, nested block or not: each entry records whether gradients were on when it
was computed and its owner's training mode (``module.training``; ``None`` for an owner without one), and a
computation reuses an entry only in a grad mode that the entry serves (one with gradients serves both, one without
serves only a computation without them) and in the same training mode. A term that reads a distribution under
``torch.no_grad()`` or ``torch.inference_mode()`` inside an evaluation with gradients (a detached statistic, a greedy
baseline ``q.sample_mean(x_dict)``) thus leaves no graph-less parameters for the later terms (the encoder lost its
gradient, silently), and one that switches the network to eval mode for a read (``q.eval(); q.sample_mean(x_dict);
q.train()``) leaves no dropout-free parameters for the later train-mode terms; each computes its own.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import torch

# (owner, tag, inputs, value, grad, training): the inputs are kept with the value for the evaluation's length; grad:
# whether gradients were on when the value was computed; training: the owner's training mode then (None: no such flag)
_Entry = tuple[object, Hashable, list[Any], Any, bool, Any]


class _State(threading.local):
    """Per thread: the memo of the evaluation in progress and the grad mode its entries were computed in (set in
    ``__init__``, which threading.local runs in every thread, so that the attributes always exist: a compiled step
    guards on that)."""

    def __init__(self) -> None:
        self.memo: list[_Entry] | None = None
        self.grad = True


_STATE = _State()
_grad_enabled = torch.is_grad_enabled  # (bound once: half the cost of the module attribute lookup per call)


class shared_parameters:  # noqa: N801 - used as a function: ``with shared_parameters():``
    """Within this block, a distribution given the same input tensors computes its parameters once;
    nested blocks share the outermost memo, in the same grad mode. A block nested without gradients in one with
    them reads the outer entries but leaves none of its own (they have no graph: a later term of the outer
    evaluation that reused them lost its gradient); one nested with gradients in one without them has a memo of
    its own (the outer entries have no graph). The block's grad mode is read once per block. Within a block, a
    computation in another grad or training mode than an entry's computes its own (see the module docstring and
    `memoized`, which reads them only for an entry whose inputs match and on a miss)."""

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
    owner's present training mode and, where gradients are on now, with gradients (see the module docstring).

    The entries are scanned newest first (so that one `remember` added later wins), comparing the inputs with
    ``is``: a linear scan by identity, not a dict keyed on ``id()``, because under ``torch.compile`` an ``id()``
    of an input tensor becomes a guard on that very object, so every new batch recompiled. An evaluation holds a
    handful of entries. Written as plain loops (no generator): it runs for every distribution on every step; the
    modes are read only for an entry whose inputs match (the grad mode only for an entry computed without
    gradients; the training mode only of an owner that has one) and once on a miss, to record them.
    ``inputs`` is kept as it is given (not copied): pass a sequence built for the call."""
    memo = _STATE.memo
    if memo is None:
        return compute(*args)
    n = len(inputs)
    for o, t, ins, value, grad, training in reversed(memo):
        if o is owner and t == tag and len(ins) == n:
            for a, b in zip(ins, inputs):
                if a is not b:
                    break
            else:  # computed without gradients: not for a computation with them; in another training mode: not at all
                if (grad or not _grad_enabled()) and (training is None or training is owner.training):
                    return value
    grad, training = _grad_enabled(), getattr(owner, "training", None)
    value = compute(*args)
    memo.append((owner, tag, inputs, value, grad, training))
    return value


def remember(owner: object, tag: Hashable, inputs: Sequence[Any], value: Any) -> None:
    """Record ``value`` as the result for these inputs (e.g. parameters computed once per row and
    repeated for the rows of several draws), so that a later `memoized` call reuses it; recorded with the grad mode
    and the owner's training mode of now, as if `memoized` had computed it here."""
    memo = _STATE.memo
    if memo is not None:  # added after any earlier entry for these inputs, which `memoized` then no longer finds
        memo.append((owner, tag, list(inputs), value, _grad_enabled(), getattr(owner, "training", None)))


def recall(owner: object, tag: Hashable, inputs: Sequence[Any]) -> Any:
    """The value `remember` recorded for this owner, tag and input objects in this evaluation (newest first), or
    ``None`` (also outside an evaluation); unlike `memoized`, nothing is computed or added, and a record is returned
    whatever grad and training mode it was made in: it is a value to look up (the hidden draws made with a draw),
    not a computation to redo."""
    memo = _STATE.memo
    if memo is not None:
        n = len(inputs)
        for o, t, ins, value, _, _ in reversed(memo):
            if o is owner and t == tag and len(ins) == n and all(a is b for a, b in zip(ins, inputs)):
                return value
    return None


def tagged(tag: Hashable) -> list[tuple[object, Hashable, list[Any], Any]]:
    """The entries of this evaluation's memo with this tag, newest first, each as (owner, tag, inputs, value) (none
    outside an evaluation)."""
    memo = _STATE.memo
    return [] if memo is None else [e[:4] for e in reversed(memo) if e[1] == tag]
