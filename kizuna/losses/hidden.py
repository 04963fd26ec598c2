r"""`HiddenLogProb`: :math:`\log p(z|x)` of a discrete hidden variable, enumerated when :math:`z` is not given.

Given :math:`z`, it is the usual `LogProb` (one value per row). Without :math:`z` it returns the
value for every state, :math:`\log p(z = e_k|x)` with shape ``(K, batch)``: what Pixyz's mixture
posterior gives, e.g. the responsibilities of an EM step for a Gaussian mixture,
``mixture.posterior().prob().eval({"x": x})``.
"""

from __future__ import annotations

from typing import Any

from kizuna.losses.base import EvalContext, Tensor
from kizuna.losses.log_prob import LogProb


class HiddenLogProb(LogProb):
    """:math:`\\log p(z|x)` per row, or for every state of :math:`z` (``(K, batch)``) when :math:`z` is absent.

    Args:
        p: a distribution over one discrete hidden variable with ``log_prob_every_state(x_dict)``
            (`kizuna.distributions.MixturePosterior`).
        exp: return probabilities (`prob`) instead of log-probabilities.
    """

    def __init__(self, p: Any, exp: bool = False) -> None:
        super().__init__(p)
        self._input_var = list(p.input_var)  # the hidden variable is optional
        self.exp = exp

    def _value(self, ctx: EvalContext) -> Tensor:
        given = all(v in ctx.values for v in self.p.var)
        value = self.p.get_log_prob(ctx.values) if given else self.p.log_prob_every_state(ctx.values)
        return value.exp() if self.exp else value

    def _render(self, fmt: dict[str, str]) -> str:
        return self.p.prob_text if self.exp else super()._render(fmt)
