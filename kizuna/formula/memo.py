"""Parameters shared within one evaluation of a formula.

In ``KL[q(z|x)||p(z)] - E_q[log p(x|z)]`` the encoder's parameters are needed twice (for the
analytic KL and to draw z). While a loss is evaluated, `shared_parameters` keeps each
distribution's parameters for the exact input tensors it saw, so every network runs once
per evaluation. The memo lives in the evaluation, never on the module (STYLE.md habit 1),
and ends with it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_MEMO: ContextVar[dict[tuple[Any, ...], tuple[Any, Sequence[Any]]] | None] = ContextVar("kizuna_memo", default=None)


@contextmanager
def shared_parameters() -> Iterator[None]:
    """Within this block, a distribution given the same input tensors computes its parameters once."""
    if _MEMO.get() is not None:  # nested evaluations share the outer memo
        yield
        return
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def _key(owner: object, tag: Hashable, inputs: Sequence[Any]) -> tuple[Any, ...]:
    return (id(owner), tag, *map(id, inputs))


def memoized(owner: object, tag: Hashable, inputs: Sequence[Any], compute: Callable[[], Any]) -> Any:
    """``compute()``, or its earlier result for the same owner, tag and input objects."""
    memo = _MEMO.get()
    if memo is None:
        return compute()
    key = _key(owner, tag, inputs)
    hit = memo.get(key)
    if hit is None:
        # keep the inputs alive with the result so their ids cannot be reused in this evaluation
        hit = memo[key] = (compute(), list(inputs))
    return hit[0]


def remember(owner: object, tag: Hashable, inputs: Sequence[Any], value: Any) -> None:
    """Record ``value`` as the result for these inputs (e.g. parameters computed once per row and
    repeated for the rows of several draws), so that a later `memoized` call reuses it."""
    memo = _MEMO.get()
    if memo is not None:
        memo[_key(owner, tag, inputs)] = (value, list(inputs))
