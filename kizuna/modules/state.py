"""One state mechanism for every module: a ``State`` dataclass names what is saved; the base does the rest.

Each module class declares

* ``State``: a dataclass whose fields are the module's attributes that make up its learnt state
  (parameters, posteriors, last messages, networks), typed. `Stateful.state_dict` reads them with
  ``dataclasses.fields`` and turns them into tensors, numbers, strings, lists and dicts (what
  ``torch.load(weights_only=True)`` reads back without running code); `Stateful.load_state_dict`
  rebuilds each field from its type: a tensor, a nested dataclass (`Message`, a fitted GMM), a list or
  dict of those, an ``nn.Module`` (its ``state_dict`` is loaded into the module's existing network), or a
  ``torch.optim.Optimizer`` (its ``state_dict``, Adam's moments and step counts, loaded into the module's
  existing optimiser);
* ``architecture``: the constructor parameters that fix the state's shapes; `Stateful.config` reports
  them, and loading refuses a state saved by a module with a different architecture.

A subclass extends its parent's ``State`` (``class State(ClassModule.State): ...``) and writes no
``state_dict`` of its own. A field added to a ``State`` after saves were written without it is declared
with `added_field`: such a save still loads, leaving that attribute as the module's ``_before_load`` made it.
Why dataclasses rather than making modules ``nn.Module`` buffers: most
module state is not tensors of a fixed shape (messages, fitted dataclasses, optional fields decided at
the first update, networks built lazily), and the classical modules are scikit-learn estimators, which
must not be ``nn.Module`` s (``clone`` rebuilds them from their constructor parameters).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

_PLAIN = (bool, int, float, str, type(None))
_ADDED = "kizuna.added"


def added_field(default: Any = None) -> Any:
    """A ``State`` field added after saves were written without it: such a save still loads, and the attribute
    is left as the module's ``_before_load`` made it (for an optimiser: a fresh one)."""
    return dataclasses.field(default=default, metadata={_ADDED: True})


def encode(value: Any, where: str) -> Any:
    """``value`` as tensors, numbers, strings, lists and dicts (``where`` names it in errors)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, nn.Module):
        return dict(value.state_dict())
    if isinstance(value, torch.optim.Optimizer):  # its parameters' state is keyed by their index: "0", "1", ...
        return encode(value.state_dict(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: cannot save a {type(value).__name__} (a State field must hold tensors, numbers, "
                    "strings, dataclasses, nn.Modules, or lists / dicts of those)")


def follow_data(networks: Sequence[nn.Module], optimizer: torch.optim.Optimizer | None, like: torch.Tensor) -> None:
    """Move networks a module built itself (and their optimiser's state) to ``like``'s dtype and device where they
    differ: a network built in a save's dtype, loaded into a graph whose data have another one, trains on that data.

    The Parameter objects stay the same (``nn.Module.to`` assigns their ``.data``; torch's opt-in overwrite on
    conversion is turned off for the move), so the optimiser's references to them stay valid. Each parameter's
    optimiser state (Adam's ``exp_avg``, ``exp_avg_sq``, ...) follows its dtype and device; a ``step`` count keeps
    its dtype and follows the device only where torch keeps it on the parameter's device (a fused or capturable
    optimiser; otherwise it stays on the CPU, as torch's own ``load_state_dict`` leaves it). Nothing is done when
    every parameter already has ``like``'s dtype and device (the usual case: no copy, bit-for-bit runs)."""
    params = [p for net in networks for p in net.parameters()]
    if not params or all(p.dtype == like.dtype and p.device == like.device for p in params):
        return
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(False)
    try:
        for net in networks:
            net.to(device=like.device, dtype=like.dtype)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        step_on_device = bool(group.get("fused") or group.get("capturable"))
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if not isinstance(value, torch.Tensor):
                    continue
                if key == "step":
                    if step_on_device:
                        optimizer.state[param][key] = value.to(device=param.device)
                elif value.is_floating_point() or value.is_complex():
                    optimizer.state[param][key] = value.to(device=param.device, dtype=param.dtype)
                else:
                    optimizer.state[param][key] = value.to(device=param.device)


def take_learning_rate(optimizer: torch.optim.Optimizer | None, lr: float) -> None:
    """After a load: the module's ``lr`` wins over a loaded optimiser's (a save without one got a fresh optimiser at
    ``lr``, so old and new saves train alike)."""
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr


def jsonable(value: Any) -> Any:
    """``value`` with tuples, arrays, tensors and numpy scalars turned into lists and numbers."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars, tensors
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _optional(tp: Any) -> Any:
    """``X`` for ``X | None``; other types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return tp


def decode(tp: Any, value: Any, current: Any, where: str) -> Any:
    """Rebuild a value of type ``tp`` from `encode`'s output (``current``: the attribute now, for modules)."""
    if value is None:
        return None
    tp = _optional(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        out = [decode(item, v, None, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        _, item = typing.get_args(tp) or (Any, Any)
        return {k: decode(item, v, None, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, nn.Module):
        if current is None:
            raise ValueError(f"{where}: the module has no network to load the saved weights into; build it with "
                             "the same networks before loading")
        current.load_state_dict(value)
        return current
    if isinstance(tp, type) and issubclass(tp, torch.optim.Optimizer):
        if current is None:
            raise ValueError(f"{where}: the module has no optimiser to load the saved state into")
        # cloned: an optimiser steps its state in place, and torch's load keeps the tensors it is given
        state = {int(k): {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in per_param.items()}
                 for k, per_param in value["state"].items()}
        current.load_state_dict({"state": state, "param_groups": value["param_groups"]})
        return current
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: decode(hints[f.name], value[f.name], None, f"{where}.{f.name}")
                     for f in dataclasses.fields(tp) if f.init and f.name in value})
    return value


class Stateful:
    """The base of every module's persistence: ``state_dict`` / ``load_state_dict`` / ``config``."""

    @dataclasses.dataclass
    class State:
        """No state (each module class extends this)."""

    architecture: ClassVar[tuple[str, ...]] = ()

    def config(self) -> dict[str, Any]:
        """The ``architecture`` parameters (JSON-able), compared when a saved state is loaded."""
        return {name: jsonable(getattr(self, name)) for name in self.architecture}

    def state_dict(self) -> dict[str, Any]:
        """The fields of ``State`` as plain values (see the module docstring)."""
        return {f.name: encode(getattr(self, f.name), f"{type(self).__name__}.{f.name}")
                for f in dataclasses.fields(self.State)}

    def snapshot(self) -> Callable[[], None]:
        """A function that puts this module back as it is now, for a load that fails part-way: its attributes
        (rebinding what loading replaces or `_before_load` builds), the weights of its networks and the state of
        its optimisers, which `load_state_dict` (and `_before_load`) overwrite in place."""
        attributes = dict(vars(self))
        fields = [attributes.get(f.name) for f in dataclasses.fields(self.State)]
        weights = [(net, {k: v.clone() for k, v in net.state_dict().items()})
                   for net in fields if isinstance(net, nn.Module)]
        optimizers = [(opt, copy.deepcopy(opt.state_dict())) for opt in fields
                      if isinstance(opt, torch.optim.Optimizer)]

        def restore() -> None:
            vars(self).clear()
            vars(self).update(attributes)
            for net, saved in weights:
                net.load_state_dict(saved)
            for opt, saved_state in optimizers:
                opt.load_state_dict(saved_state)

        return restore

    def _before_load(self, state: dict[str, Any]) -> None:
        """Hook: build what the state is loaded into (e.g. lazily built networks); nothing by default."""

    def _after_load(self) -> None:
        """Hook: adjust what the loaded state holds to the module's settings (e.g. an optimiser's learning rate to the
        module's ``lr``); nothing by default. Runs inside `load_state_dict`, so `snapshot` undoes it too."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (fields are set one by one: `snapshot` undoes a failure), then
        `_after_load`. A field declared with `added_field` that the state lacks (a save older than the field) is left
        as `_before_load` made it."""
        fields = dataclasses.fields(self.State)
        names = [f.name for f in fields if f.name in state or not f.metadata.get(_ADDED)]
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"{type(self).__name__}: the saved state lacks {missing}")
        self._before_load(state)
        hints = typing.get_type_hints(self.State)
        for name in names:
            setattr(self, name, decode(hints[name], state[name], getattr(self, name, None),
                                       f"{type(self).__name__}.{name}"))
        self._after_load()
