r"""`WassersteinDistance`: a per-row upper bound of the Wasserstein-1 distance.

For draws :math:`x \sim p` and :math:`y \sim q` paired row by row,
:math:`\|x - y\|` is the transport cost of one coupling, so its mean bounds
:math:`W_1[p, q] = \inf_{\gamma} \mathbb{E}_\gamma\|x-y\|` from above (tight when ``p``
and ``q`` are point masses, as with deterministic encoders in Wasserstein auto-encoders).

The gradient reaches ``p`` and ``q`` only through their draws (there is no score-function term): a side with trainable
parameters but no reparameterised sampler (a Bernoulli or Categorical encoder) gets no gradient from it, refused where
no trainable side carries one and named in a warning otherwise
(`kizuna.losses.expectation.require_pathwise_draws`, as `MMD` does).
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable

from torch import nn

from kizuna._text import symbol
from kizuna.distributions.base import Distribution, require_distributions
from kizuna.formula.expr import EvalContext, Loss, Tensor
from kizuna.losses.expectation import draw, require_pathwise_draws
from kizuna.losses.mmd import _features, check_samples


class WassersteinDistance(Loss):
    """:math:`\\|x - y\\|` per batch row, :math:`x \\sim p`, :math:`y \\sim q`; trainable sides without a
    reparameterised sampler are refused where no side carries a gradient, named in a warning otherwise (module
    docstring).

    ``metric``: a function of the two draws' feature rows ``(x, y)`` returning one distance per row (default: the
    Euclidean norm of ``x - y``); a value that is not callable (a name such as ``"l2"``) is a TypeError.
    """

    def __init__(self, p: Distribution, q: Distribution,
                 metric: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        require_distributions("WassersteinDistance", p=p, q=q)
        if metric is not None and not callable(metric):  # ("l2" failed only at eval: "'str' object is not callable")
            raise TypeError(f"WassersteinDistance: metric must be a function of two draws (x, y) returning one "
                            f"distance per row, e.g. torch.nn.PairwiseDistance(p=1), or None for the Euclidean "
                            f"distance; got {reprlib.repr(metric)} ({type(metric).__name__})")
        if sorted(p.var) != sorted(q.var):
            raise ValueError(f"WassersteinDistance needs both over the same variables: {p.var} vs {q.var}")
        require_pathwise_draws("WassersteinDistance", p, q, every=False)  # (the draws alone carry the gradient)
        super().__init__(p.input_var + q.input_var)
        self.p, self.q = p, q
        # eps=0: PairwiseDistance's default eps=1e-6 is added to x - y, which makes the distance
        # inexact and asymmetric; the norm's gradient at 0 is already finite (0)
        self.metric = metric if metric is not None else nn.PairwiseDistance(p=2, eps=0.0)

    def _own_distributions(self) -> list[Distribution]:
        return [self.p, self.q]

    def _value(self, ctx: EvalContext) -> Tensor:
        x = _features(draw(self.p, ctx, 1, reparam=self.p.has_reparam)[0], self.p.var)
        y = _features(draw(self.q, ctx, 1, reparam=self.q.has_reparam)[0], self.p.var)
        check_samples(self, x, y, same_rows=True)
        return self.metric(x, y)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["wasserstein"].format(symbol(self.p, fmt), symbol(self.q, fmt))
