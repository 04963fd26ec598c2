"""Squared Euclidean distances between the rows of two matrices, accurate for data far from the origin, and the
k-means (greedy k-means++ seeding, then Lloyd iterations) built on them that starts the GMM and the HMM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator | None, n_iter: int = 20,
           n_local_trials: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of the rows of ``x`` (``(n, D)``): ``(centres (k, D), labels (n,))``; the start of the GMM (its
    labels) and of the HMM (its centres).

    Seeding is greedy k-means++, scikit-learn's ``kmeans_plusplus``: the first centre is a uniformly drawn row;
    every next one is the best of ``n_local_trials`` rows (``None``: ``2 + int(log k)``, scikit-learn's; the
    HMM's start) drawn with probability proportional to their squared distance to the nearest centre so far,
    "best" being the one that leaves the smallest potential (the summed squared distances to the nearest centre).
    ``n_local_trials=1`` is plain k-means++ (Arthur & Vassilvitskii 2007), the GMM's default start, drawn exactly
    as the GMM's own copy drew it before stop 48 (the same draws, bitwise, so its recorded seeds reproduce: the
    first centre by ``torch.randint``, each next by ``torch.multinomial`` on the minimum over the centres so far
    of `squared_distances` recomputed to all of them). It gives markedly worse starts: on SERKET's HMM points
    (four blobs of 25) 5% of 2,000 seeds ended below 0.9 accuracy after the Lloyd steps, against 0.55% with
    greedy seeding, whose mean potential matches ``kmeans_plusplus``'s (one candidate: 47% higher). When every
    row already lies on a centre (fewer distinct rows than ``k``) the potential is 0 and the next centre is a
    uniformly drawn row (a duplicate centre, whose cluster then stays empty). Then at most ``n_iter`` Lloyd
    iterations, stopping when the labels repeat; an empty cluster keeps its centre. At the end ``labels`` are the
    nearest centres of the points and ``centres`` the means of the labels before the last assignment (equal to
    them unless ``n_iter`` ran out first); ``n_iter=0`` returns the seeds and their labels.

    Every draw comes from ``generator``, on its own device (a CPU generator serves data on a GPU, and the
    reverse); ``None`` draws from torch's global generator on ``x``'s device (a graph node updated in a context
    without a generator, reproducible under ``torch.manual_seed``, as before stop 48)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"kmeans: generator must be a torch.Generator or None (torch's global generator), got "
                        f"{generator!r}")
    n = x.shape[0]
    if n == 0 or k < 1:
        raise ValueError(f"kmeans: needs at least one row and one centre, got {n} rows and k = {k}")
    trials = 2 + int(math.log(k)) if n_local_trials is None else n_local_trials
    if trials < 1:
        raise ValueError(f"kmeans: n_local_trials must be at least 1, got {trials}")
    centres = _plain_seeds(x, k, generator) if trials == 1 else _greedy_seeds(x, k, generator, trials)
    labels = squared_distances(x, centres).argmin(1)
    for _ in range(n_iter):
        onehot = F.one_hot(labels, k).to(x.dtype)
        counts = onehot.sum(0).unsqueeze(1)
        centres = torch.where(counts > 0, onehot.T @ x / counts.clamp(min=1), centres)
        new = squared_distances(x, centres).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return centres, labels


def _plain_seeds(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """One candidate per centre: the GMM's k-means++ seeding as it was before stop 48, draw for draw (its recorded
    seeds reproduce bitwise). The minimum is recomputed over all centres each time, as then (`squared_distances`
    centres its inputs on their joint mean, so an incremental minimum rounds differently), and the draws are made in
    ``x``'s dtype on the generator's device (``x``'s, where the two agree: the old code's calls exactly)."""
    n, device = x.shape[0], x.device if generator is None else generator.device
    centres = x[torch.randint(n, (1,), generator=generator, device=device).to(x.device)]
    for _ in range(1, k):
        d2 = squared_distances(x, centres).min(1).values
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centres = torch.cat([centres, x[torch.multinomial(weights.to(device), 1, generator=generator).to(x.device)]])
    return centres


def _greedy_seeds(x: torch.Tensor, k: int, generator: torch.Generator | None, trials: int) -> torch.Tensor:
    """Greedy k-means++ seeding with ``trials`` candidates per centre (scikit-learn's ``kmeans_plusplus``), drawn in
    float64 on the generator's device."""
    n = x.shape[0]

    def draw(weights: torch.Tensor, m: int) -> torch.Tensor:
        w = weights.to(device=x.device if generator is None else generator.device, dtype=torch.float64)
        return torch.multinomial(w, m, replacement=True, generator=generator).to(x.device)

    ones = torch.ones(n, dtype=torch.float64)
    centres = x[draw(ones, 1)]
    d2 = squared_distances(x, centres)[:, 0]
    for _ in range(1, k):
        potential = d2.sum()
        candidates = draw(d2 if potential > 0 else ones, trials)
        after = torch.minimum(d2.unsqueeze(1), squared_distances(x, x[candidates]))  # (n, trials)
        best = after.sum(0).argmin()
        centres = torch.cat([centres, x[candidates[best]].unsqueeze(0)])
        d2 = after[:, best]
    return centres
