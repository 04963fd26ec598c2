"""`UpdateContext`: what a graph passes to each module's ``update`` — strategy, generator, iteration, schedule.

`Graph.fit` configures nothing by mutating modules. Each sweep builds one context and every module
reads from it:

* ``combine``: the `MP` or `SIR` strategy that joins a class message with a module's likelihood;
* ``generator``: the ``torch.Generator`` every draw comes from (see `kizuna.modules.rng`);
* ``iteration``: the sweep's number, counted over the graph's life (a second ``fit`` continues it);
* ``schedule``: per-module settings by iteration, e.g. SERKET's VAE trained 200 epochs in the first
  update and 40 afterwards: ``{"vae": {"epochs": [200, 40]}}``. A list gives the value at iteration
  ``i`` as ``values[min(i, len - 1)]`` (the last one repeats); a callable is called with the
  iteration. Modules declare the settings they take from a schedule in ``scheduled``; every one of them is a
  count (epochs, sweeps, iterations), so a scheduled value must be an integer >= 0 (checked when the graph
  starts for a list, when it is read for a callable's value).

>>> ctx = UpdateContext(schedule={"vae": {"epochs": [200, 40]}})
>>> [ctx.at(i).setting("vae", "epochs", 10) for i in range(3)], ctx.setting("gmm", "max_iter", 50)
([200, 40, 40], 50)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from kizuna._data import check_int
from kizuna.modules.combine import MP, Combine

Setting = Sequence[Any] | Callable[[int], Any]
Schedule = Mapping[str, Mapping[str, Setting]]


@dataclass(frozen=True)
class UpdateContext:
    """Everything a module's ``update(ctx)`` may read besides its messages (see the module docstring)."""

    combine: Combine = field(default_factory=MP)
    generator: torch.Generator | None = None
    iteration: int = 0
    schedule: Schedule = field(default_factory=dict)

    def at(self, iteration: int) -> UpdateContext:
        """The same context at another iteration."""
        return replace(self, iteration=iteration)

    def setting(self, module: str, name: str, default: Any) -> Any:
        """The scheduled value of ``module``'s setting ``name`` at this iteration, else ``default``."""
        values = self.schedule.get(module, {}).get(name)
        if values is None:
            return default
        if callable(values):
            value = values(self.iteration)
            _check_count(module, name, value, f"at iteration {self.iteration}")
            return int(value)
        return int(values[min(self.iteration, len(values) - 1)])  # checked by `check_schedule`


def _check_count(module: str, name: str, value: Any, where: str) -> None:
    """A scheduled value: an integer >= 0 (2.5 epochs were 2, -3 none, "3" three, silently)."""
    check_int(f"schedule: {module}.{name} {where}", value, 0)


def check_schedule(schedule: Schedule, scheduled: Mapping[str, Sequence[str]]) -> None:
    """Raise a `ValueError` naming an unknown module, a setting it does not take, or an empty list.

    Args:
        schedule: module name -> {setting -> values}.
        scheduled: module name -> the settings that module takes from a schedule.
    """
    for name, settings in schedule.items():
        if name not in scheduled:
            raise ValueError(f"schedule: no module named {name!r} in the graph; names: {sorted(scheduled)}")
        if not isinstance(settings, Mapping):
            raise ValueError(f"schedule: {name!r} must map its settings to their values ({{setting: [values]}}), got "
                             f"{settings!r}")
        for key, values in settings.items():
            if key not in scheduled[name]:
                raise ValueError(f"schedule: module {name!r} takes {tuple(scheduled[name])} from a schedule, "
                                 f"not {key!r}")
            if not callable(values) and (isinstance(values, (str, bytes)) or not isinstance(values, Sequence)
                                         or len(values) == 0):
                raise ValueError(f"schedule: {name}.{key} must be a non-empty list (one value per iteration, "
                                 f"the last repeating) or a function of the iteration, got {values!r}")
            if not callable(values):
                for i, value in enumerate(values):
                    _check_count(name, key, value, f"entry {i}")
