r"""`MMD`: the squared maximum mean discrepancy between the draws of two distributions.

.. math:: \mathrm{MMD}^2[p, q] = \mathbb{E}[k(x,x')] + \mathbb{E}[k(y,y')] - 2\,\mathbb{E}[k(x,y)],
    \quad x,x' \sim p,\; y,y' \sim q

estimated on one batch of draws of each (the biased V-statistic, never negative; Gretton
et al. 2012). Kernels, with :math:`d = \|x-y\|^2` and bandwidth ``sigma_sqr`` (default:
twice the feature dimension):

* ``"gaussian"``: :math:`k = \exp(-d / \sigma^2)`
* ``"inv-multiquadratic"``: :math:`k = \sigma^2 / (\sigma^2 + d)`

The gradient reaches ``p`` and ``q`` only through their draws (there is no score-function term): a side with trainable
parameters but no reparameterised sampler (a Bernoulli or Categorical encoder) gets no gradient from it. Where no
trainable side has one, the loss would train nothing and is refused when it is built; where the other side carries
the gradient (a learnable mixture prior trained by another term, the MMD pulling a reparameterised encoder), it is
built with a warning naming the side without (`require_pathwise_draws`). Use a relaxed distribution for a discrete
code.
"""

from __future__ import annotations

from typing import Any

import torch

from kizuna._data import check_positive
from kizuna._distances import squared_distances
from kizuna._text import symbol
from kizuna.distributions.base import Distribution, flat_rows, require_distributions
from kizuna.formula.expr import EvalContext, Loss, Tensor
from kizuna.losses.expectation import draw, require_pathwise_draws


def _features(values: dict[str, Any], names: list[str]) -> Tensor:
    """The draws of ``names`` as one ``(B, features)`` matrix; scalar data (shape ``(B,)``) is one feature per row."""
    return torch.cat([flat_rows(values[v]) for v in names], dim=1)


def check_samples(loss: Loss, x: Tensor, y: Tensor, same_rows: bool) -> None:
    """Draws of both sides as ``(rows, features)`` matrices: some rows (a mean of none was NaN), as many features
    (a raw broadcast error), and as many rows when ``same_rows`` (a loss that pairs the rows)."""
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"{loss}: no rows to compare (draws of shapes {tuple(x.shape)} and {tuple(y.shape)})")
    if x.shape[1] != y.shape[1] or (same_rows and x.shape[0] != y.shape[0]):
        need = "the same shape (it pairs the rows)" if same_rows else "the same number of features"
        raise ValueError(f"{loss}: the two sides' draws need {need}, got {tuple(x.shape)} and {tuple(y.shape)}")


def gaussian_kernel(x: Tensor, y: Tensor, sigma_sqr: float) -> Tensor:
    return torch.exp(-squared_distances(x, y) / sigma_sqr)


def inverse_multiquadratic_kernel(x: Tensor, y: Tensor, sigma_sqr: float) -> Tensor:
    return sigma_sqr / (sigma_sqr + squared_distances(x, y))


KERNELS = {"gaussian": gaussian_kernel, "inv-multiquadratic": inverse_multiquadratic_kernel}


class MMD(Loss):
    """:math:`\\mathrm{MMD}^2` between ``p`` and ``q`` (a scalar for the whole batch); trainable sides without a
    reparameterised sampler are refused where no side carries a gradient, named in a warning otherwise (module
    docstring)."""

    def __init__(self, p: Distribution, q: Distribution,
                 kernel: str = "gaussian", sigma_sqr: float | None = None) -> None:
        require_distributions("MMD", p=p, q=q)
        if sorted(p.var) != sorted(q.var):
            raise ValueError(f"MMD needs both over the same variables: {p.var} vs {q.var}")
        require_pathwise_draws("MMD", p, q, every=False)  # (no score-function term: only the draws carry the gradient)
        if not isinstance(kernel, str) or kernel not in KERNELS:
            raise ValueError(f"unknown MMD kernel {kernel!r}; choose one of {sorted(KERNELS)}")
        if sigma_sqr is not None:  # (inf gave 0 for any samples; "1" a raw TypeError)
            check_positive("MMD: sigma_sqr", sigma_sqr)
        super().__init__(p.input_var + q.input_var)
        self.p, self.q, self.kernel, self.sigma_sqr = p, q, kernel, sigma_sqr

    def _own_distributions(self) -> list[Distribution]:
        return [self.p, self.q]

    def _value(self, ctx: EvalContext) -> Tensor:
        x = _features(draw(self.p, ctx, 1, reparam=self.p.has_reparam)[0], self.p.var)
        y = _features(draw(self.q, ctx, 1, reparam=self.q.has_reparam)[0], self.p.var)
        check_samples(self, x, y, same_rows=False)
        sigma_sqr = self.sigma_sqr if self.sigma_sqr is not None else 2.0 * x.shape[1]
        k = KERNELS[self.kernel]
        return k(x, x, sigma_sqr).mean() + k(y, y, sigma_sqr).mean() - 2 * k(x, y, sigma_sqr).mean()

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["mmd"].format(symbol(self.p, fmt), symbol(self.q, fmt), self.kernel)
