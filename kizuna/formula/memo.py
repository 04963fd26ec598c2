"""Parameters shared within one evaluation of a formula.

In ``KL[q(z|x)||p(z)] - E_q[log p(x|z)]`` the encoder's parameters are needed twice (for the
analytic KL and to draw z). While a loss is evaluated, `shared_parameters` keeps each
distribution's parameters for the exact input tensors it saw, so every network runs once
per evaluation. The memo lives in the evaluation, never on the module (STYLE.md habit 1),
and ends with it.

The memo is thread-local (each thread of ``nn.DataParallel`` evaluates with its own) rather than a
``ContextVar``: ``torch.compile`` traces reads of a ``threading.local`` but breaks the graph at
``ContextVar.get``, which split a compiled VAE step into eight graphs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

# (owner, tag, inputs, value); the inputs are kept with the value for the evaluation's length
_Entry = tuple[object, Hashable, list[Any], Any]


class _State(threading.local):
    """Per thread: the memo of the evaluation in progress (set in ``__init__``, which threading.local
    runs in every thread, so that the attribute always exists: a compiled step guards on that)."""

    def __init__(self) -> None:
        self.memo: list[_Entry] | None = None


_STATE = _State()


class shared_parameters:  # noqa: N801 - used as a function: ``with shared_parameters():``
    """Within this block, a distribution given the same input tensors computes its parameters once;
    nested blocks share the outermost memo."""

    __slots__ = ("_outermost",)

    def __enter__(self) -> None:
        self._outermost = _STATE.memo is None
        if self._outermost:
            _STATE.memo = []

    def __exit__(self, *exc: object) -> None:
        if self._outermost:
            _STATE.memo = None


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
    """``compute(*args)``, or its earlier result for the same owner, tag and input objects.

    The entries are scanned newest first (so that one `remember` added later wins), comparing the inputs with
    ``is``: a linear scan by identity, not a dict keyed on ``id()``, because under ``torch.compile`` an ``id()``
    of an input tensor becomes a guard on that very object, so every new batch recompiled. An evaluation holds a
    handful of entries. Written as plain loops (no generator): it runs for every distribution on every step.
    ``inputs`` is kept as it is given (not copied): pass a sequence built for the call."""
    memo = _STATE.memo
    if memo is None:
        return compute(*args)
    n = len(inputs)
    for o, t, ins, value in reversed(memo):
        if o is owner and t == tag and len(ins) == n:
            for a, b in zip(ins, inputs):
                if a is not b:
                    break
            else:
                return value
    value = compute(*args)
    memo.append((owner, tag, inputs, value))
    return value


def remember(owner: object, tag: Hashable, inputs: Sequence[Any], value: Any) -> None:
    """Record ``value`` as the result for these inputs (e.g. parameters computed once per row and
    repeated for the rows of several draws), so that a later `memoized` call reuses it."""
    memo = _STATE.memo
    if memo is not None:  # added after any earlier entry for these inputs, which `memoized` then no longer finds
        memo.append((owner, tag, list(inputs), value))


class _Missing(Exception):  # noqa: N818 - a signal inside `recall`, never seen outside it
    """`recall`'s "nothing recorded": raised by the computation `memoized` runs on a miss, before it adds anything."""


def _missing() -> Any:
    raise _Missing


def recall(owner: object, tag: Hashable, inputs: Sequence[Any]) -> Any:
    """The value `remember` recorded for this owner, tag and input objects in this evaluation (newest first), or
    ``None`` (also outside an evaluation); unlike `memoized`, nothing is computed or added (`memoized`'s scan, whose
    computation on a miss raises before anything is added)."""
    try:
        return memoized(owner, tag, inputs, _missing)
    except _Missing:
        return None


def tagged(tag: Hashable) -> list[_Entry]:
    """The entries of this evaluation's memo with this tag, newest first (none outside an evaluation)."""
    memo = _STATE.memo
    return [] if memo is None else [e for e in reversed(memo) if e[1] == tag]
