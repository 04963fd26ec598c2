r"""`ContrastiveDivergence`: maximum likelihood for an unnormalised :math:`p_\theta(x) \propto e^{-E_\theta(x)}`.

.. math::
    \nabla_\theta\, \mathbb{E}_{p_{data}}[-\log p_\theta(x)]
      = \mathbb{E}_{p_{data}}[\nabla_\theta E_\theta(x)] - \mathbb{E}_{p_\theta}[\nabla_\theta E_\theta(x)]

so the loss :math:`\mathbb{E}_{p_{data}}[E_\theta(x^+)] - \mathbb{E}_{q}[E_\theta(x^-)]
+ \alpha\,(\mathbb{E}[E_\theta(x^+)^2] + \mathbb{E}[E_\theta(x^-)^2])` has that gradient (in
expectation) when :math:`\alpha = 0` and the negatives :math:`x^- \sim q` come from a sampler of
:math:`p_\theta` (`kizuna.samplers.SGLD`) and are held fixed: no gradient flows through the sampler's
chain (Hinton 2002; Du & Mordatch 2019, arXiv:1903.08689). With :math:`\alpha > 0` the regulariser, which
keeps the energies near zero, adds its own gradient
:math:`2\alpha\,(\mathbb{E}[E_\theta(x^+)\nabla_\theta E_\theta(x^+)]
+ \mathbb{E}[E_\theta(x^-)\nabla_\theta E_\theta(x^-)])`, so the loss's gradient is then the
maximum-likelihood one plus that term. Written with
:math:`\log p_\theta = -E_\theta` (up to :math:`\log Z_\theta`, which cancels in the difference).
"""

from __future__ import annotations

import math
from typing import Any

from kizuna._data import check_non_negative
from kizuna._text import LATEX, symbol
from kizuna.distributions.base import Distribution, require_distributions
from kizuna.formula.expr import EvalContext, Loss, Tensor


class ContrastiveDivergence(Loss):
    """The contrastive-divergence loss of an energy model (module docstring), a scalar.

    Args:
        p: the model :math:`p_\\theta(x)` with an unnormalised log-density (an `EnergyDistribution`).
        sampler: draws negatives, ``sampler.sample(batch_n) -> Tensor`` (e.g. `kizuna.samplers.SGLD`).
        alpha: the weight of the energy regulariser.
        data_name: the symbol of the data distribution in the formula.

    Every evaluation draws a fresh batch of negatives from ``sampler``, evaluations without gradients
    included (``Model.test``, validation): each one advances the sampler's state, e.g. rewrites rows of
    `SGLD`'s replay buffer and consumes its random stream, so interleaving tests changes the training run.

    The sampler's draws must have as many features as the data after the batch dimension (``SGLD``'s
    ``features_shape``; another shape is taken for an energy that flattens its input), and the batch must have
    rows; a ValueError otherwise.
    """

    precedence = 10  # its formula is a sum

    def __init__(self, p: Distribution, sampler: Any, alpha: float = 1.0, data_name: str = "p_{data}") -> None:
        require_distributions("ContrastiveDivergence", p=p)
        if p.cond_var:
            raise ValueError(f"ContrastiveDivergence needs an unconditioned model; {p.prob_text} is conditioned")
        check_non_negative("ContrastiveDivergence: alpha", alpha)
        super().__init__(p.var)
        self.p, self.sampler, self.alpha, self.data_name = p, sampler, float(alpha), data_name

    def _own_distributions(self) -> list[Distribution]:
        return [self.p]

    def _value(self, ctx: EvalContext) -> Tensor:
        var = self.p.var[0]
        positive = ctx.values[var]
        if positive.shape[0] == 0:  # (the means over no rows were NaN, silently); before the sampler is advanced
            raise ValueError(f"ContrastiveDivergence: the data {var} has no rows (shape {tuple(positive.shape)})")
        # a sampler that declares its draw shape (SGLD) is checked before it runs (a raw matmul error from the chain,
        # and a buffer advanced for nothing); any other one's draws after
        # (the same number of features: an energy that flattens its input may take draws of another shape)
        declared = getattr(self.sampler, "features_shape", None)  # (an empty one may mean "undeclared")
        features = positive.shape[1:].numel()
        if isinstance(declared, (tuple, list)) and declared and math.prod(declared) != features:
            self._shape_error(var, (positive.shape[0], *declared), positive.shape)
        negative = self.sampler.sample(positive.shape[0]).detach().to(positive.dtype)  # held fixed (no gradient)
        if negative.dim() == 0 or negative.shape[1:].numel() != features:  # (broadcast into a wrong loss)
            self._shape_error(var, negative.shape, positive.shape)
        ctx.samples[f"{var}^-"] = negative
        e_pos = -self.p.get_log_prob({var: positive})
        e_neg = -self.p.get_log_prob({var: negative})
        loss = e_pos.mean() - e_neg.mean()
        if self.alpha:
            loss = loss + self.alpha * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
        return loss

    @staticmethod
    def _shape_error(var: str, drawn: tuple[int, ...], data: tuple[int, ...]) -> None:
        raise ValueError(f"ContrastiveDivergence: the sampler draws {var} of shape {tuple(drawn)} but the data has "
                         f"shape {tuple(data)}: the features after the batch dimension must match in number (SGLD's "
                         f"features_shape should be {list(data[1:])})")

    def _render(self, fmt: dict[str, str]) -> str:
        var = self.p.var[0]
        log_p = fmt["log"].format(symbol(self.p, fmt))
        data, model = f"{self.data_name}({var})", "q_{SGLD}" + f"({var})"
        text = "-{} + {}".format(fmt["expect"].format(data, log_p), fmt["expect"].format(model, log_p))
        if self.alpha:
            sq = fmt["pow"].format(fmt["paren"].format(log_p), 2)
            reg = fmt["add"].format(fmt["expect"].format(data, sq), fmt["expect"].format(model, sq))
            mul = r"{:g} \cdot {}" if fmt is LATEX else "{:g} * {}"
            text += " + " + mul.format(self.alpha, fmt["paren"].format(reg))
        return text
