"""`LogProb` and `Prob`: a distribution's (log-)density evaluated on the dict.

They live at the bottom of the formula layer because every distribution builds them
(``p.log_prob()``); they only need the small `Scorable` surface of a distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kizuna._text import symbol
from kizuna.formula.expr import EvalContext, Loss, Tensor


class Scorable(Protocol):
    """What `LogProb` needs of a distribution (`kizuna.distributions.Distribution` has it)."""

    @property
    def var(self) -> list[str]: ...

    @property
    def input_var(self) -> list[str]: ...

    @property
    def prob_text(self) -> str: ...

    def get_log_prob(self, x_dict: Mapping[str, Any], sum_features: bool = True,
                     feature_dims: Sequence[int] | None = None) -> Tensor: ...


class LogProb(Loss):
    r""":math:`\log p(x|z)` per batch row (features summed unless ``sum_features=False``).

    ``feature_dims`` (as in Pixyz) names the dimensions to sum instead of the features.
    """

    precedence = 35  # a function application: (log p(x))^2, but -log p(x) and 2 * log p(x) need no parentheses

    def __init__(self, p: Scorable, sum_features: bool = True, feature_dims: Sequence[int] | None = None) -> None:
        if not all(hasattr(p, a) for a in ("var", "input_var", "prob_text", "get_log_prob")):
            # (VAE(q, "p") ended in "'str' object has no attribute 'var'")
            raise TypeError(f"log-density of a {type(p).__name__}: give a kizuna distribution, got {p!r}"[:200])
        super().__init__(p.var + p.input_var)
        self.p = p
        self.sum_features = sum_features
        self.feature_dims = feature_dims

    def _own_distributions(self) -> list[Scorable]:
        return [self.p]

    def _value(self, ctx: EvalContext) -> Tensor:
        if self.feature_dims is None:
            return self.p.get_log_prob(ctx.values, self.sum_features)
        return self.p.get_log_prob(ctx.values, self.sum_features, self.feature_dims)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["log"].format(symbol(self.p, fmt))


class Prob(LogProb):
    r""":math:`p(x|z)` per batch row."""

    precedence = 100

    def _value(self, ctx: EvalContext) -> Tensor:
        return super()._value(ctx).exp()

    def _render(self, fmt: dict[str, str]) -> str:
        return symbol(self.p, fmt)
