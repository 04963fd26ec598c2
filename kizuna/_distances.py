"""Squared Euclidean distances between the rows of two matrices, accurate for data far from the origin."""

from __future__ import annotations

import torch


def squared_distances(x: torch.Tensor, y: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """:math:`\\lVert x_i - y_j\\rVert^2` for every pair of rows (``(n, D)`` and ``(m, D)`` give ``(n, m)``).

    ``torch.cdist`` computes :math:`\\lVert x\\rVert^2 + \\lVert y\\rVert^2 - 2 x^\\top y` (a matrix product) once
    either side has more than 25 rows, which cancels catastrophically for points far from the origin (float32 rows
    at 3,000 with unit spread: distances off by tens of percent, a zero distance as 1.0). Distances do not change
    under a common shift, so both sides are first centred on the rows' joint mean (detached: the shift's gradient
    cancels in every difference), as scikit-learn's k-means does, keeping the fast matrix product (computing the
    differences directly, cdist's other mode, is 4-6 times slower for image-sized rows). What the centring cannot
    fix: rows far from their joint mean, e.g. two clusters 3,000 apart in float32, whose within-cluster distances
    keep the matrix product's cancellation (relative errors of order 1 for unit spread; cdist alone is worse); such
    data need float64 or per-cluster centring. In float16 the sum for the mean can overflow. ``centre``: another
    common shift (e.g. the mean of ``y`` alone, where a non-finite row of ``x`` must not make every distance NaN)."""
    n, m = x.shape[0], y.shape[0]
    if n + m == 0:
        return x.new_zeros(n, m)
    if centre is None:
        centre = ((x.sum(0) + y.sum(0)) / (n + m)).detach()
    return torch.cdist(x - centre, y - centre).pow(2)
