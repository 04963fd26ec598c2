"""Arithmetic on losses: ``+ - * / **``, unary minus, ``abs``, batch ``mean`` / ``sum``, min / max.

Each node evaluates its operands once per evaluation (see `EvalContext`) and renders them
with parentheses only where precedence needs them.
"""

from __future__ import annotations

from typing import Any

import torch

from kizuna._text import LATEX
from kizuna.losses.base import EvalContext, Loss, Tensor
from kizuna.losses.values import as_loss


class _Unary(Loss):
    is_operator = True
    key = ""

    def __init__(self, loss: Any) -> None:
        loss = as_loss(loss)
        super().__init__(loss.input_var)
        self.loss1 = loss

    def children(self) -> list[Loss]:
        return [self.loss1]

    def _value(self, ctx: EvalContext) -> Tensor:
        return self._op(ctx.value(self.loss1))

    def _op(self, a: Tensor) -> Tensor:
        raise NotImplementedError

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt[self.key].format(self.loss1._render(fmt))


class NegLoss(_Unary):
    key, precedence = "neg", 15  # binds looser than * and /: a * (-b)

    def _op(self, a: Tensor) -> Tensor:
        return -a

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["neg"].format(self._wrap(self.loss1, fmt, 31))


class AbsLoss(_Unary):
    key = "abs"

    def _op(self, a: Tensor) -> Tensor:
        return a.abs()


class BatchMean(_Unary):
    key = "mean"

    def _op(self, a: Tensor) -> Tensor:
        return a.mean()


class BatchSum(_Unary):
    key = "sum"

    def _op(self, a: Tensor) -> Tensor:
        return a.sum()


class _Binary(Loss):
    is_operator = True
    key = ""
    right_min = 0  # precedence the right operand needs to go without parentheses

    def __init__(self, loss1: Any, loss2: Any) -> None:
        loss1, loss2 = as_loss(loss1), as_loss(loss2)
        super().__init__(loss1.input_var + loss2.input_var)
        self.loss1, self.loss2 = loss1, loss2

    def children(self) -> list[Loss]:
        return [self.loss1, self.loss2]

    def _value(self, ctx: EvalContext) -> Tensor:
        return self._op(ctx.value(self.loss1), ctx.value(self.loss2))

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    def _render(self, fmt: dict[str, str]) -> str:
        left = self._wrap(self.loss1, fmt, self.precedence)
        right = self._wrap(self.loss2, fmt, self.right_min or self.precedence)
        if isinstance(self.loss2, NegLoss) and self.precedence <= NegLoss.precedence:
            right = fmt["paren"].format(right)  # a - (-b), not a - -b
        return fmt[self.key].format(left, right)


class AddLoss(_Binary):
    key, precedence = "add", 10

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class SubLoss(_Binary):
    key, precedence, right_min = "sub", 10, 11

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return a - b


class MulLoss(_Binary):
    key, precedence = "mul", 20

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b


class DivLoss(_Binary):
    key, precedence, right_min = "div", 20, 21

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return a / b

    def _render(self, fmt: dict[str, str]) -> str:
        if fmt is LATEX:  # \frac groups its operands itself
            return fmt["div"].format(self.loss1._render(fmt), self.loss2._render(fmt))
        return super()._render(fmt)


class PowLoss(_Binary):
    key, precedence, right_min = "pow", 40, 100

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return a**b

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["pow"].format(self._wrap(self.loss1, fmt, 41), self._wrap(self.loss2, fmt, 100))


class _Elementwise(_Binary):
    """A function of two losses written ``f(a, b)``; subclasses set ``key`` and ``fn``."""

    precedence = 100
    fn: Any = None

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return type(self).fn(torch.as_tensor(a), torch.as_tensor(b))

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt[self.key].format(self.loss1._render(fmt), self.loss2._render(fmt))


class MinLoss(_Elementwise):
    """Elementwise minimum of two losses."""

    key, fn = "min", torch.minimum


class MaxLoss(_Elementwise):
    """Elementwise maximum of two losses."""

    key, fn = "max", torch.maximum
