r"""Collapsed Gibbs sampling of SpCoA, the spatial-concept model (Taniguchi et al. 2016, 2017), as pure numpy.

Event :math:`n` has a concept :math:`c_n \in \{0..L-1\}` and a position component
:math:`i_n \in \{0..K-1\}`; its observations are a position :math:`x_n` and bags of counts
:math:`y^{(m)}_n` (words, view features, ...):

.. math::
    \pi \sim \mathrm{GEM}_L(\alpha),\ c_n \sim \pi,\quad \phi_l \sim \mathrm{Dir}(\gamma),\ i_n \sim \phi_{c_n},
    \quad x_n \sim \mathcal N(\mu_{i_n}, \Lambda_{i_n}^{-1}),\ (\mu_k, \Lambda_k) \sim \mathcal{NW},
    \quad y^{(m)}_n \sim \mathrm{Mult}(\theta^{(m)}_{c_n}),\ \theta^{(m)}_l \sim \mathrm{Dir}(\beta_m),

:math:`\mathrm{GEM}_L` being the stick-breaking prior truncated at :math:`L` sticks. With every parameter
integrated out, one step draws :math:`(c_n, i_n)` jointly from (counts exclude event :math:`n`)

.. math::
    p(c_n{=}l, i_n{=}k \mid \cdot) \propto \hat\pi_l\;
    \frac{N_{lk} + \gamma}{N_l + K\gamma}\; p(x_n \mid i_n{=}k, \cdot)
    \prod_m \frac{\Gamma(S^{(m)}_l + V_m\beta_m)}{\Gamma(S^{(m)}_l + |y^{(m)}_n| + V_m\beta_m)}
    \prod_v \frac{\Gamma(S^{(m)}_{lv} + y^{(m)}_{nv} + \beta_m)}{\Gamma(S^{(m)}_{lv} + \beta_m)},

with :math:`\hat\pi_l = \mathbb E[V_l]\prod_{j<l}(1 - \mathbb E[V_j])`,
:math:`\mathbb E[V_l] = \frac{1 + N_l}{1 + \alpha + N_l + N_{>l}}` (:math:`V_{L-1} = 1`) the posterior mean of
the truncated stick-breaking weights, and :math:`S^{(m)}_{lv}` the counts of feature :math:`v` in concept
:math:`l`. The position factor is either a Student-t predictive of the Normal-Wishart components
(`GaussianPositions`, kept up to date event by event: the exact collapsed sampler) or a fixed
``N×K`` log-likelihood (`FixedPositions`: a GMM module's message, SERKET's way of composing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import betaln, gammaln

from kizuna._data import check_int, check_positive
from kizuna.modules.gmm.normal_wishart import NormalWishart
from kizuna.modules.spatial_concept_split_merge import SplitMergeStats, split_merge_move

_ALL = slice(None)


class FixedPositions:
    """A position factor given as an ``N×K`` log-likelihood (``remove``/``add`` do nothing)."""

    def __init__(self, log_lik: np.ndarray) -> None:
        self.log_lik_table = np.asarray(log_lik, dtype=np.float64)
        if self.log_lik_table.ndim != 2:  # (a 1-D table failed in shape[1])
            raise ValueError(f"FixedPositions: log_lik is N×K (events × components), got shape "
                             f"{self.log_lik_table.shape}")
        self.n_events, self.n_components = self.log_lik_table.shape

    def log_lik(self, n: int) -> np.ndarray:
        return self.log_lik_table[n]

    def log_evidence(self, i: np.ndarray) -> float:
        """:math:`\\sum_n \\log p(x_n \\mid i_n)`."""
        return float(self.log_lik_table[np.arange(len(i)), i].sum())

    def remove(self, n: int, k: int) -> None:
        """See `GaussianPositions.remove`."""

    def add(self, n: int, k: int) -> None:
        """See `GaussianPositions.add`."""


def _labels(owner: str, what: str, values: Any, n: int | None, size: int, kind: str) -> np.ndarray:
    """``values`` as int64 labels in ``0..size-1`` (and ``n`` of them, where given): a fractional label (2.7 was
    truncated to 2), a label out of range or another count of them is a ValueError naming ``owner`` and ``what``."""
    raw = np.asarray(values)
    if raw.dtype.kind == "f":
        off = np.flatnonzero(~np.isfinite(raw.ravel()) | (raw.ravel() != np.round(raw.ravel())))
        if off.size:
            raise ValueError(f"{owner}: {what} must be integer labels, got {raw.ravel()[off[0]]} at index {off[0]}")
    elif raw.dtype.kind not in "iub":
        raise ValueError(f"{owner}: {what} must be integer labels, got an array of dtype {raw.dtype}")
    labels = raw.astype(np.int64)
    if n is not None and labels.shape != (n,):
        raise ValueError(f"{owner}: {what} has shape {labels.shape}, expected ({n},): one label per event of the "
                         "positions")
    bad = np.flatnonzero((labels < 0) | (labels >= size))
    if bad.size:
        raise ValueError(f"{owner}: {what}[{bad[0]}] = {labels[bad[0]]} is out of range 0..{size - 1} "
                         f"({kind} = {size})")
    return labels.copy()


class GaussianPositions:
    """Normal-Wishart Gaussian components with running sufficient statistics (float64).

    Args:
        x: ``N×D`` positions.
        prior: the `NormalWishart` prior of every component (``m`` is K×D).
        z: initial components ``(N,)``.
    """

    def __init__(self, x: np.ndarray, prior: NormalWishart, z: np.ndarray) -> None:
        self.x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        self.prior = prior
        k, d = prior.m.shape
        self.n_components, self.n_events = k, self.x.shape[0]
        # (a z of other length or range was a raw torch error, or counted silently in the wrong component)
        zt = torch.as_tensor(_labels("GaussianPositions", "z", z, self.n_events, k, "components"))
        self.count = torch.bincount(zt, minlength=k).double()
        self.sum = torch.zeros(k, d, dtype=torch.float64).index_add_(0, zt, self.x)
        outer = self.x.unsqueeze(-1) * self.x.unsqueeze(-2)
        self.outer = torch.zeros(k, d, d, dtype=torch.float64).index_add_(0, zt, outer)

    def log_lik(self, n: int) -> np.ndarray:
        """:math:`\\log p(x_n \\mid i_n = k, \\text{other events})` for every ``k`` (Student-t predictive)."""
        post = self.prior.posterior(self.count, self.sum, self.outer)
        return post.log_predictive(self.x[n:n + 1])[0].numpy()

    def log_evidence(self, i: np.ndarray) -> float:
        """:math:`\\log p(x \\mid i)` with the components' parameters integrated out (``i``: the current state)."""
        post = self.prior.posterior(self.count, self.sum, self.outer)
        return float(post.log_marginal(self.prior, self.count).sum())

    def _move(self, n: int, k: int, sign: float) -> None:
        xn = self.x[n]
        self.count[k] += sign
        self.sum[k] += sign * xn
        self.outer[k] += sign * torch.outer(xn, xn)

    def remove(self, n: int, k: int) -> None:
        """Take event ``n`` out of component ``k``."""
        self._move(n, k, -1.0)

    def add(self, n: int, k: int) -> None:
        """Put event ``n`` into component ``k``."""
        self._move(n, k, 1.0)


@dataclass
class ConceptState:
    """Assignments and the counts the sampler keeps in step with them."""

    c: np.ndarray  # (N,) concepts
    i: np.ndarray  # (N,) position components
    n_l: np.ndarray  # (L,) events per concept
    n_lk: np.ndarray  # (L, K) events per concept and component
    sums: list[np.ndarray]  # per modality (L, V_m) feature counts per concept


def _check_events(n: int, counts: list[np.ndarray]) -> None:
    """`ConceptSampler`'s count checks: ``N`` rows each, finite and >= 0 (the labels: `_labels`)."""
    for m, y in enumerate(counts):
        if y.ndim != 2 or y.shape[0] != n:
            raise ValueError(f"ConceptSampler: counts[{m}] has shape {y.shape}, expected N×V with N = {n} rows, one "
                             "per event of the positions")
        bad = ~np.isfinite(y) | (y < 0)
        if bad.any():  # a negative count gave NaN Gamma terms
            r, col = (int(k) for k in np.argwhere(bad)[0])
            raise ValueError(f"ConceptSampler: counts[{m}] must be finite and non-negative, got {y[r, col]} at row "
                             f"{r}, column {col}")


def log_stick_weights(n_l: np.ndarray, alpha: float) -> np.ndarray:
    """:math:`\\log\\hat\\pi_l` of the truncated stick-breaking prior given the counts ``n_l`` (module docstring).

    >>> np.exp(log_stick_weights(np.zeros(3), 1.0)).round(3).tolist()
    [0.5, 0.25, 0.25]
    """
    greater = n_l.sum() - np.cumsum(n_l)
    ev = (1.0 + n_l) / (1.0 + alpha + n_l + greater)
    ev[-1] = 1.0
    log_rest = np.concatenate([[0.0], np.cumsum(np.log1p(-ev[:-1]))])
    return np.log(ev) + log_rest


def _log_dirichlet_multinomial(counts: np.ndarray, conc: float) -> float:
    """Sum over rows :math:`l` of :math:`\\log \\Gamma(V\\beta) - \\log\\Gamma(S_l + V\\beta)
    + \\sum_v [\\log\\Gamma(S_{lv}+\\beta) - \\log\\Gamma(\\beta)]` (``conc`` is :math:`\\beta`)."""
    v = counts.shape[1]
    return float((gammaln(v * conc) - gammaln(counts.sum(1) + v * conc)).sum()
                 + (gammaln(counts + conc) - gammaln(conc)).sum())


class ConceptSampler:
    """The collapsed Gibbs sampler (see the module docstring).

    Args:
        positions: `GaussianPositions` or `FixedPositions` (``K`` components).
        counts: the count modalities, each ``N×V_m``.
        n_concepts: :math:`L`.
        alpha, gamma: :math:`\\alpha` and :math:`\\gamma`.
        betas: :math:`\\beta_m` per modality.
        c, i: initial assignments.

    ``alpha``, ``gamma`` and every ``betas[m]`` are positive and finite, every count modality is ``N×V_m`` with
    finite counts >= 0, ``c`` and ``i`` have ``N`` entries in ``0..L-1`` and ``0..K-1``, ``N`` the positions'
    events; a ValueError naming the argument otherwise (`SpatialConcept` checks its concentrations so too; here a
    negative ``alpha`` gave NaN conditionals that were sampled silently, and the others failed in numpy's
    broadcasting or indexing, or, for a negative label, counted the event in the last concept).
    """

    def __init__(self, positions: GaussianPositions | FixedPositions, counts: Sequence[np.ndarray], n_concepts: int,
                 alpha: float, gamma: float, betas: Sequence[float], c: np.ndarray, i: np.ndarray,
                 split_merge: int = 0, launch_scans: int = 3) -> None:
        if len(betas) != len(counts):
            raise ValueError(f"ConceptSampler: {len(counts)} count modalities but {len(betas)} concentrations")
        if split_merge < 0 or launch_scans < 0:
            raise ValueError(f"ConceptSampler: split_merge ({split_merge}) and launch_scans ({launch_scans}) must be "
                             ">= 0")
        check_int("ConceptSampler: n_concepts", n_concepts, 1)
        check_positive("ConceptSampler: alpha", alpha)
        check_positive("ConceptSampler: gamma", gamma)
        for m, beta in enumerate(betas):
            check_positive(f"ConceptSampler: betas[{m}]", beta)
        self.split_merge, self.launch_scans = int(split_merge), int(launch_scans)
        self.split_merge_stats = SplitMergeStats()
        self.positions, self.alpha, self.gamma = positions, float(alpha), float(gamma)
        self.counts = [np.asarray(y, dtype=np.float64) for y in counts]
        self.betas = [float(b) for b in betas]
        self.n_concepts, self.n_components = n_concepts, positions.n_components
        n = getattr(positions, "n_events", len(c))  # (a position factor of another kind: c sets N)
        c = _labels("ConceptSampler", "c", c, n, n_concepts, "n_concepts")
        i = _labels("ConceptSampler", "i", i, n, positions.n_components, "position components")
        _check_events(n, self.counts)
        self.nonzero = [[(np.flatnonzero(row), row[row > 0]) for row in y] for y in self.counts]
        n_lk = np.zeros((n_concepts, self.n_components))
        np.add.at(n_lk, (c, i), 1)
        sums = []
        for y in self.counts:
            s = np.zeros((n_concepts, y.shape[1]))
            np.add.at(s, c, y)
            sums.append(s)
        self.state = ConceptState(c, i, n_lk.sum(1), n_lk, sums)
        self.posterior = np.full((len(c), n_concepts), 1.0 / n_concepts)

    def count(self, n: int, sign: float) -> None:
        """Add (``sign`` = 1) or remove (-1) event ``n`` to or from the counts of its concept ``c[n]`` (the
        position factor untouched)."""
        st = self.state
        l = st.c[n]
        st.n_l[l] += sign
        st.n_lk[l, st.i[n]] += sign
        for s, y in zip(st.sums, self.counts):
            if sign > 0:
                s[l] += y[n]
            else:
                s[l] -= y[n]

    def relabel(self, n: int, l: int) -> None:
        """Move event ``n`` to concept ``l``, its position component unchanged."""
        self.count(n, -1.0)
        self.state.c[n] = l
        self.count(n, 1.0)

    def _move(self, n: int, sign: float) -> None:
        self.count(n, sign)
        (self.positions.add if sign > 0 else self.positions.remove)(n, self.state.i[n])

    def log_concept_terms(self, n: int, rows: np.ndarray | slice = _ALL) -> np.ndarray:
        """The concept-dependent factors of `log_conditional` (stick-breaking, components, count modalities)
        for the concepts ``rows`` (R×K), event ``n`` removed from the counts."""
        st = self.state
        n_l = st.n_l[rows]
        table = log_stick_weights(st.n_l, self.alpha)[rows, None]
        table = table + np.log((st.n_lk[rows] + self.gamma) / (n_l[:, None] + self.n_components * self.gamma))
        for s, beta, nz in zip(st.sums, self.betas, self.nonzero):
            idx, vals = nz[n]
            s = s[rows]
            sub = s[:, idx]
            total, v = s.sum(1), s.shape[1]
            ll = (gammaln(sub + vals + beta) - gammaln(sub + beta)).sum(1)
            table = table + (ll + gammaln(total + v * beta) - gammaln(total + vals.sum() + v * beta))[:, None]
        return table

    def log_odds(self, n: int, first: int, second: int) -> float:
        """:math:`\\log p(c_n{=}\\text{first} \\mid i_n, \\cdot) - \\log p(c_n{=}\\text{second} \\mid i_n, \\cdot)`,
        event ``n`` removed from the counts: the two-concept restriction of `log_concept_terms` in scalar
        arithmetic (the split-merge moves' inner loop)."""
        st, k = self.state, self.state.i[n]
        n_l = st.n_l.tolist()
        greater, log_rest, log_pi = sum(n_l), 0.0, []
        for j in range(max(first, second) + 1):  # log pi_j as in log_stick_weights
            greater -= n_l[j]
            ev = 1.0 if j == len(n_l) - 1 else (1.0 + n_l[j]) / (1.0 + self.alpha + n_l[j] + greater)
            log_pi.append(math.log(ev) + log_rest)
            log_rest += math.log1p(-ev) if ev < 1.0 else 0.0
        odds = log_pi[first] - log_pi[second]
        kg = self.n_components * self.gamma
        odds += math.log((st.n_lk[first, k] + self.gamma) / (n_l[first] + kg))
        odds -= math.log((st.n_lk[second, k] + self.gamma) / (n_l[second] + kg))
        for s, beta, nz in zip(st.sums, self.betas, self.nonzero):
            idx, vals = nz[n]
            vb, size, y = s.shape[1] * beta, float(vals.sum()), vals.tolist()
            rows = s[[first, second]]
            for row, total, sign in zip(rows[:, idx].tolist(), rows.sum(1).tolist(), (1.0, -1.0)):
                term = math.lgamma(total + vb) - math.lgamma(total + size + vb)
                for a, b in zip(row, y):
                    term += math.lgamma(a + b + beta) - math.lgamma(a + beta)
                odds += sign * term
        return odds

    def log_conditional(self, n: int) -> np.ndarray:
        """:math:`\\log p(c_n{=}l, i_n{=}k \\mid \\cdot)` + const (L×K), event ``n`` removed from the counts."""
        return self.log_concept_terms(n) + self.positions.log_lik(n)[None, :]

    def _draw(self, n: int, rng: np.random.Generator, power: float = 1.0) -> None:
        """Draw :math:`(c_n, i_n)` from :math:`p(c_n, i_n \\mid \\cdot)^{\\text{power}}` (event ``n`` out of the
        counts) and add it."""
        st = self.state
        table = self.log_conditional(n) * power
        p = np.exp(table - table.max())
        by_concept = p.sum(1)
        self.posterior[n] = by_concept / by_concept.sum()
        flat = p.ravel().cumsum()
        idx = min(int(np.searchsorted(flat, rng.random() * flat[-1], side="right")), flat.size - 1)
        st.c[n], st.i[n] = divmod(idx, self.n_components)
        self._move(n, 1.0)

    def initialize(self, rng: np.random.Generator) -> None:
        """Sequential initialisation: empty every concept, then add the events one at a time in a random
        order, each drawn from its conditional given the events added before it (as an online learner would)."""
        for n in range(len(self.state.c)):
            self._move(n, -1.0)
        for n in rng.permutation(len(self.state.c)).tolist():
            self._draw(n, rng)

    def sweep(self, rng: np.random.Generator, temperature: float = 1.0) -> None:
        """``split_merge`` split-merge proposals (`split_merge_move`), then every :math:`(c_n, i_n)` resampled
        once, in a random order; records ``posterior`` (N×L). At a ``temperature`` :math:`T > 1` the target is
        :math:`p^{1/T}` (simulated annealing): the conditionals are raised to :math:`1/T`."""
        for _ in range(self.split_merge):
            split_merge_move(self, rng, self.launch_scans, 1.0 / temperature)
        for n in rng.permutation(len(self.state.c)).tolist():
            self._move(n, -1.0)
            self._draw(n, rng, 1.0 / temperature)

    def log_concept_joint(self, rows: np.ndarray | slice = _ALL) -> float:
        """:math:`\\log p(c) + \\sum_{l \\in \\text{rows}} [\\log p(i_{c=l} \\mid c) + \\sum_m \\log p(y^{(m)}_{c=l}
        \\mid c)]`: the stick-breaking prior of every concept and the component and count evidences of the
        concepts ``rows`` (all by default), every parameter integrated out."""
        st = self.state
        greater = st.n_l.sum() - np.cumsum(st.n_l)
        total = float((betaln(1 + st.n_l[:-1], self.alpha + greater[:-1]) - betaln(1, self.alpha)).sum())
        total += _log_dirichlet_multinomial(st.n_lk[rows], self.gamma)
        for s, beta in zip(st.sums, self.betas):
            total += _log_dirichlet_multinomial(s[rows], beta)
        return total

    def log_joint(self) -> float:
        """:math:`\\log p(c, i, x, y)` of the current state, every parameter integrated out (the product of the
        stick-breaking, Dirichlet-multinomial and Normal-Wishart evidences)."""
        return self.log_concept_joint() + self.positions.log_evidence(self.state.i)

    def component_prior(self) -> np.ndarray:
        """:math:`p(i_n{=}k \\mid c_n, \\text{other events})` (N×K): what a position module is told."""
        st = self.state
        own = np.zeros_like(st.n_lk[st.c])
        own[np.arange(len(st.c)), st.i] = 1.0
        counts = st.n_lk[st.c] - own + self.gamma
        return counts / counts.sum(1, keepdims=True)

    def feature_distributions(self, m: int) -> np.ndarray:
        """:math:`\\mathbb E[\\theta^{(m)}_l]` (L×V_m), the posterior mean of modality ``m``'s distributions."""
        s, beta = self.state.sums[m], self.betas[m]
        return (s + beta) / (s.sum(1, keepdims=True) + s.shape[1] * beta)

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """:math:`(\\hat\\pi, \\hat\\phi)`: posterior means of the concept weights (L) and of each concept's
        component weights (L×K)."""
        st = self.state
        phi = (st.n_lk + self.gamma) / (st.n_l[:, None] + self.n_components * self.gamma)
        return np.exp(log_stick_weights(st.n_l, self.alpha)), phi
