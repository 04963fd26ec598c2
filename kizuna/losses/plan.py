"""`Plan`: a loss tree flattened once into a list of steps, for the training hot path.

`Loss.eval` walks the tree on every call: it looks up node results by identity, memoises
each distribution's parameters by the identity of its input tensors, copies dicts and builds
``torch.distributions`` objects. For a small model that Python work costs as much as the
arithmetic. A plan does the walk once, for one set of input names: every value gets a slot,
each distribution's parameters for the same inputs become one slot (the memo, resolved
statically), and each node becomes one step writing its slot. Normal and Bernoulli use the
closed forms of `kizuna.distributions.kernels` in the plain case. Running a plan gives the
same numbers as ``eval`` (same operations, same random stream; tested in
``tests/test_speed_paths.py``); anything it does not know (a loss or distribution class
outside `kizuna.losses.plan_steps`) makes `build` return an `Unplannable` saying what, and
the caller uses ``eval``.

Checks: a plan validates parameters and values as ``eval`` does (once per parameter set per
run), with cheaper reductions (`kernels.satisfies`); on a failed check it re-runs torch's
own validation, so the error messages are those of ``eval``. With ``deferred`` (a list, used
under ``torch.compile`` where reading a tensor breaks the graph) the checks are appended as
boolean tensors instead, and the caller reads them all at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kizuna.losses.base import Loss, Tensor

Step = Callable[[list[Any]], None]


class Unplannable(Exception):
    """The loss uses something a plan does not cover; evaluate it with ``Loss.eval``."""


class Builder:
    """Slots and steps while a plan is built (see the module docstring).

    Slot 0 holds the per-run cache (torch distributions built lazily, validated parameter
    sets), slot 1 the deferred-checks list (or None).
    """

    def __init__(self, traced: bool = False) -> None:
        self.traced = traced  # for torch.compile: no Python-side caches across runs
        self.n = 2
        self.steps: list[Step] = []
        self.params: dict[tuple[Any, ...], int] = {}

    def slot(self) -> int:
        self.n += 1
        return self.n - 1

    def loss(self, node: Loss, env: dict[str, int], results: dict[int, int]) -> int:
        """The slot of ``node`` evaluated with the variables of ``env`` (node results cached per env)."""
        key = id(node)
        if key not in results:
            from kizuna.losses.plan_steps import LOSS_STEPS  # the node classes import this module

            planner = LOSS_STEPS.get(type(node))
            if planner is None:
                raise Unplannable(f"{type(node).__name__} has no plan step")
            results[key] = planner(self, node, env, results)
        return results[key]

    def add(self, step: Step) -> None:
        self.steps.append(step)


class Plan:
    """A loss flattened for one tuple of input names; call it with a dict holding those names."""

    def __init__(self, loss: Loss, keys: Sequence[str], traced: bool = False) -> None:
        builder = Builder(traced)
        env = {k: builder.slot() for k in keys}
        results: dict[int, int] = {}
        self.loss = loss
        self.out = builder.loss(loss, env, results)
        self.terms = [(t, results[id(t)], str(t)) for t in loss.terms()]
        self.inputs = list(env.items())
        self.steps = builder.steps
        self.n = builder.n

    def run(self, x_dict: Mapping[str, Any], deferred: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        """The loss and the values of its terms (unreduced) on ``x_dict``."""
        s: list[Any] = [None] * self.n
        s[0], s[1] = {}, deferred
        for k, i in self.inputs:
            s[i] = x_dict[k]
        for step in self.steps:
            step(s)
        return s[self.out], [s[i] for _, i, _ in self.terms]

    def labels(self) -> list[str]:
        """The term labels (a term named after the plan was built shows its new name)."""
        return [t._label or text for t, _, text in self.terms]


def build(loss: Loss, keys: Sequence[str], traced: bool = False) -> Plan | Unplannable:
    """A plan of ``loss`` for inputs named ``keys``, or the `Unplannable` saying which part has no plan step.

    ``traced``: the plan will run under ``torch.compile`` (steps keep no caches across runs,
    which the compiler would have to guard on; checks must then be deferred).
    """
    try:
        return Plan(loss, keys, traced)
    except Unplannable as why:
        return why
