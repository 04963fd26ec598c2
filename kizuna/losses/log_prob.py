"""`LogProb` and `Prob`: a distribution's (log-)density evaluated on the dict."""

from __future__ import annotations

from typing import Any

from kizuna.losses.base import EvalContext, Loss, Tensor


class LogProb(Loss):
    r""":math:`\log p(x|z)` per batch row (features summed unless ``sum_features=False``)."""

    def __init__(self, p: Any, sum_features: bool = True) -> None:
        super().__init__(p.var + p.input_var)
        self.p = p
        self.sum_features = sum_features

    def _own_distributions(self) -> list[Any]:
        return [self.p]

    def _value(self, ctx: EvalContext) -> Tensor:
        return self.p.get_log_prob(ctx.values, self.sum_features)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["log"].format(self.p.prob_text)


class Prob(LogProb):
    r""":math:`p(x|z)` per batch row."""

    def _value(self, ctx: EvalContext) -> Tensor:
        return super()._value(ctx).exp()

    def _render(self, fmt: dict[str, str]) -> str:
        return self.p.prob_text
