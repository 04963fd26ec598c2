"""Leaves that are not formulas of distributions: constants, variables, fixed variables."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from kizuna.losses.base import EvalContext, Loss, Tensor


def as_loss(value: Any) -> Loss:
    """A Loss as is; a number or tensor as a `ValueLoss`; anything else is an error."""
    if isinstance(value, Loss):
        return value
    if isinstance(value, (numbers.Number, Tensor)):
        return ValueLoss(value)
    raise TypeError(f"cannot combine a loss with {type(value).__name__} ({value!r})")


class ValueLoss(Loss):
    """A constant (number or tensor)."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def terms(self) -> Iterator[Loss]:
        """A constant is a coefficient, not a term of the formula (unless it was named)."""
        if self._label is not None:
            yield self

    def _value(self, ctx: EvalContext) -> Tensor:
        return self.value if isinstance(self.value, Tensor) else torch.as_tensor(self.value)

    def _render(self, fmt: dict[str, str]) -> str:
        if isinstance(self.value, Tensor) and self.value.numel() == 1:
            return f"{self.value.item():g}"
        return f"{self.value:g}" if isinstance(self.value, numbers.Real) else str(self.value)


class Parameter(Loss):
    """A variable read from the evaluation dict, e.g. a coefficient ``Parameter("beta")``."""

    def __init__(self, input_var: str) -> None:
        if not isinstance(input_var, str):
            raise TypeError(f"Parameter takes one variable name (str), got {input_var!r}")
        super().__init__([input_var])

    def _value(self, ctx: EvalContext) -> Tensor:
        return torch.as_tensor(ctx.values[self._input_var[0]])

    def _render(self, fmt: dict[str, str]) -> str:
        return self._input_var[0]


class ConstantVar(Loss):
    """``base_loss`` evaluated with some variables fixed to constants.

    Example: ``ConstantVar(loss, {"beta": 4.0})`` no longer needs ``beta`` in the dict.
    """

    def __init__(self, base_loss: Loss, constant_var: Mapping[str, Any]) -> None:
        super().__init__([v for v in base_loss.input_var if v not in constant_var])
        self.base_loss = base_loss
        self.constant_var = dict(constant_var)

    def children(self) -> list[Loss]:
        return [self.base_loss]

    def _value(self, ctx: EvalContext) -> Tensor:
        return ctx.child({**ctx.values, **self.constant_var}).value(self.base_loss)

    def _render(self, fmt: dict[str, str]) -> str:
        return self.base_loss._render(fmt)
