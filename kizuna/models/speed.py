"""What keeps `Model`'s step cheap: cached plans, one fused finiteness check, ``torch.compile``.

* `Evaluator` evaluates a loss per step through a `kizuna.losses.plan.Plan` built once per
  (loss, input names), falling back to ``Loss.eval`` for losses a plan does not cover; with
  ``compile`` it runs the plan under ``torch.compile`` (parameter and value checks are then
  computed inside the graph and read once, after it; a failed check re-runs ``eval`` for the
  detailed message).
* `all_finite` checks every gradient with one device-to-host read; `ParameterList` keeps
  the list of parameters it checks, rebuilt only when a module gains a parameter or
  submodule anywhere (torch's global registration hooks bump a counter), so no step walks
  the module tree.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kizuna.distributions.torch_dist import set_validation, validation_enabled
from kizuna.losses.base import Loss, _term_mean
from kizuna.losses.plan import Plan, Unplannable, build

Tensor = torch.Tensor
_VERSION = [0]
_HOOKS: list[Any] = []


def _bump(*_: Any) -> None:
    _VERSION[0] += 1


def structure_version() -> int:
    """A counter that changes whenever any module registers a parameter or submodule."""
    if not _HOOKS:
        from torch.nn.modules import module as torch_module

        _HOOKS.append(torch_module.register_module_parameter_registration_hook(_bump))
        _HOOKS.append(torch_module.register_module_module_registration_hook(_bump))
    return _VERSION[0]


class ParameterList:
    """The parameters of some modules, listed again only after a registration (see module docstring)."""

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._params: list[nn.Parameter] = []

    def __call__(self, modules: nn.Module) -> list[nn.Parameter]:
        key = (id(modules), structure_version())
        if key != self._key:
            self._params = list(modules.parameters())
            self._key = key
        return self._params


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every entry of every tensor is finite, with one read per device.

    Uses the fused kernel of torch's ``GradScaler`` (it multiplies by an ``inv_scale`` of 1,
    which leaves every value as it is) and falls back to norms for types it does not take.
    """
    by_device: dict[torch.device, list[Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    for device, group in by_device.items():
        try:
            found = torch.zeros(1, device=device)
            unit = _UNIT.get(device)
            if unit is None:
                unit = _UNIT[device] = torch.ones(1, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, unit)
            bad = found.item() != 0
        except (RuntimeError, TypeError, NotImplementedError):  # e.g. sparse or integer tensors
            bad = not all(bool(torch.isfinite(t).all()) for t in group)
        if bad:
            return False
    return True


def term_values(loss: Tensor, parts: list[Tensor]) -> list[float]:
    """The loss and the batch mean of every term as floats, with one device-to-host read."""
    with torch.no_grad():
        first = parts[0] if parts else None
        if first is not None and first.dim() == 1 and first.dtype == loss.dtype and first.device == loss.device \
                and all(p.shape == first.shape and p.dtype == first.dtype for p in parts):
            return torch.cat([loss.reshape(1), torch.stack(parts).mean(1)]).tolist()
        return torch.stack([loss, *(_term_mean(p).to(loss.device, loss.dtype) for p in parts)]).tolist()


_UNIT: dict[torch.device, Tensor] = {}


def check_compile(option: Any) -> dict[str, Any] | None:
    """``compile=`` of `Model`: False, True or a dict of ``torch.compile`` keyword arguments."""
    if option is False or option is None:
        return None
    if option is True:
        return {}
    if isinstance(option, Mapping):
        return dict(option)
    raise TypeError(f"Model: compile must be True, False or a dict of torch.compile arguments, got {option!r}")


class Evaluator:
    """Evaluates losses for `Model`'s steps (see the module docstring)."""

    def __init__(self, compile_args: dict[str, Any] | None) -> None:
        self.compile_args = compile_args
        self.compile_error: str | None = None
        self._plans: dict[tuple[int, tuple[str, ...]], tuple[Loss, Plan | None]] = {}
        self._compiled: dict[int, Any] = {}

    def clear(self) -> None:
        """Forget plans and compiled functions (rebuilt at the next step)."""
        self._plans.clear()
        self._compiled.clear()

    def plan(self, loss: Loss, x: Mapping[str, Any]) -> Plan | None:
        """The plan of ``loss`` for the names of ``x`` (built at the first step that has them)."""
        key = (id(loss), tuple(x))
        hit = self._plans.get(key)
        if hit is None or hit[0] is not loss:
            plan = build(loss, key[1])
            if isinstance(plan, Unplannable):
                if self.compile_args is not None and loss.input_var and all(v in x for v in loss.input_var):
                    warnings.warn(f"Model(compile=True): the loss {loss} is evaluated without a plan ({plan}), "
                                  "so it runs uncompiled", RuntimeWarning, stacklevel=4)
                plan = None
            hit = self._plans[key] = (loss, plan)
        return hit[1]

    def __call__(self, loss: Loss, x_dict: Mapping[str, Any] | None, terms: bool
                 ) -> tuple[Tensor, list[Tensor], list[str]]:
        """The loss, and with ``terms`` its terms (per row, or their batch means) and their labels;
        `term_values` reads them."""
        x = x_dict if type(x_dict) is dict else dict(x_dict or {})
        plan = self.plan(loss, x)
        if plan is None:
            if not terms:
                return loss.eval(x), [], []
            value, found = loss.eval(x, return_terms=True)
            return value, list(found.values()), list(found)
        if self.compile_args is not None and self.compile_error is None:
            out = self._run_compiled(loss, plan, x, terms)
            if out is not None:
                return out
        value, parts = plan.run(x)
        return (value, parts, plan.labels()) if terms else (value, [], [])

    # ----------------------------------------------------------------- compile
    def _run_compiled(self, loss: Loss, plan: Plan, x: dict[str, Any], terms: bool
                      ) -> tuple[Tensor, list[Tensor], list[str]] | None:
        fn = self._compiled.get(id(plan))
        if fn is None:
            fn = self._compiled[id(plan)] = self._compile(plan)
            if fn is None:
                return None
        check = validation_enabled()
        set_validation(False)
        try:
            value, means, ok = fn(x, check, terms)
        except Exception as err:  # noqa: BLE001 - decide below whether compilation or the model failed
            set_validation(check)
            value, parts = plan.run(x)  # the model's own error, if it is one, is raised here as in eager mode
            self._give_up(_reason(err))
            return (value, parts, plan.labels()) if terms else (value, [], [])
        finally:
            set_validation(check)
        if ok is not None and not bool(ok):
            with torch.no_grad():
                loss.eval(x)  # raises the detailed message of the failed check
            raise ValueError(f"the loss {loss}: a parameter or value check failed inside the compiled step")
        return value, means, plan.labels() if terms else []

    def _compile(self, plan: Plan) -> Any:
        traced = build(plan.loss, [k for k, _ in plan.inputs], traced=True)
        plan = traced if isinstance(traced, Plan) else plan

        def step(x: dict[str, Any], check: bool, terms: bool) -> tuple[Tensor, list[Tensor], Tensor | None]:
            deferred: list[Tensor] | None = [] if check else None
            value, parts = plan.run(x, deferred)
            ok = torch.stack(deferred).all() if deferred else None
            return value, [_term_mean(p) for p in parts] if terms else [], ok

        try:
            return torch.compile(step, **self.compile_args)  # type: ignore[arg-type]
        except Exception as err:  # noqa: BLE001 - torch.compile unsupported here (Python version, platform)
            self._give_up(_reason(err))
            return None

    def _give_up(self, reason: str) -> None:
        self.compile_error = reason
        warnings.warn(f"Model(compile=True): torch.compile is unavailable here ({reason}); "
                      "training continues without compilation", RuntimeWarning, stacklevel=4)


def _reason(err: BaseException) -> str:
    """A one-line reason: the innermost compiler error when torch wraps it (BackendCompilerFailed)."""
    inner = getattr(err, "inner_exception", None)
    err = inner if isinstance(inner, BaseException) else err
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return f"{type(err).__name__}: {text[:300]}"
