r"""Split-merge moves for SpCoA's concepts (Jain & Neal 2004, restricted Gibbs launch states), exact under the
truncated stick-breaking prior.

A move changes the concepts :math:`c` of a group of events and keeps their position components :math:`i`, so
the position factor :math:`p(x\mid i)` cancels and the target is

.. math::
    f(c) = p(c)\,p(i \mid c)\prod_m p(y^{(m)} \mid c) \;\propto\; p(c \mid i, x, y),

the stick-breaking prior of every concept times the Dirichlet-multinomial evidences of the components and
count modalities of each concept (`ConceptSampler.log_concept_joint`). Because the truncated stick-breaking
prior is not exchangeable, the moves act on labelled states. One proposal draws an ordered pair of events
:math:`a \ne b` uniformly; :math:`S` are the other events of their concept(s).

* **Split** (:math:`c_a = c_b = l`): draw a label :math:`l'` uniformly among the :math:`E` empty concepts
  (no move if none is empty), put :math:`a` in :math:`l'` and :math:`b` in :math:`l`; the *launch state*
  allocates :math:`S` uniformly at random between :math:`l'` and :math:`l` and refines it by ``launch_scans``
  restricted Gibbs scans (each event of :math:`S` drawn from its conditional restricted to
  :math:`\{l', l\}`); a last restricted scan gives the proposal :math:`c^{s}`, with probability
  :math:`q(c^{s})`, the product of that scan's conditionals. The reverse move (the same pair merging
  :math:`a`'s concept into :math:`b`'s) is deterministic, so

  .. math::
      A_{\text{split}} = \min\Big(1,\ \frac{f(c^{s})}{f(c^{m})}\,\frac{E}{q(c^{s})}\Big).

* **Merge** (:math:`c_a = l' \ne c_b = l`): :math:`c^{m}` moves every event of :math:`l'` to :math:`l`;
  :math:`E` counts the empty concepts of :math:`c^{m}`, and :math:`q(c^{s})` is the probability that the
  last restricted scan from a launch state, built as for a split, would give back the current state:
  :math:`A_{\text{merge}} = \min(1, \frac{f(c^{m})}{f(c^{s})}\frac{q(c^{s})}{E})`. As :math:`q \le 1`, a
  merge whose bound :math:`f(c^m)/(f(c^s) E)` is already below the uniform draw is rejected before the
  launch state is built (the same decision, cheaper).

The launch state and scan order are auxiliary variables drawn from the same distribution in both
directions (they depend only on :math:`S, a, b, l, l'` and the other concepts), so each move satisfies
detailed balance with respect to :math:`f` (Jain & Neal 2004, sec. 3). At an annealing power :math:`\rho`
the conditionals and :math:`f` are raised to :math:`\rho` (the target :math:`f^\rho`).

Reference: S. Jain, R. M. Neal, "A split-merge Markov chain Monte Carlo procedure for the Dirichlet process
mixture model", J. Comput. Graph. Stat. 13(1), 2004.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the sampler calls these moves from its sweep
    from kizuna.modules.spatial_concept_gibbs import ConceptSampler


@dataclass
class SplitMergeStats:
    """Proposed and accepted split and merge moves since the sampler was built."""

    splits: list[int] = field(default_factory=lambda: [0, 0])  # proposed, accepted
    merges: list[int] = field(default_factory=lambda: [0, 0])  # proposed, accepted
    no_empty: int = 0  # split proposals with no empty concept to split into


def _log_sigmoid(d: float) -> float:
    """:math:`\\log(1/(1 + e^{-d}))` without overflow."""
    return -math.log1p(math.exp(-d)) if d >= 0 else d - math.log1p(math.exp(d))


def _coin(rng: np.random.Generator, log_p: float) -> bool:
    """True with probability :math:`\\min(1, e^{\\text{log\\_p}})`: every random binary decision of a move (one place
    for a test to enumerate them)."""
    return log_p >= 0.0 or math.log(rng.random()) < log_p


def _restricted_scan(sampler: ConceptSampler, order: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                     power: float, target: np.ndarray | None = None) -> float:
    """One restricted Gibbs scan over the events ``order`` between the two concepts ``labels``.

    Each event is drawn from :math:`p(c_n \\mid c_{-n})^\\rho` restricted to ``labels`` (or, with ``target``,
    forced to ``target[j]`` for the ``j``-th event); returns the log probability of the scan's choices.
    """
    st = sampler.state
    log_q = 0.0
    for j, n in enumerate(order.tolist()):
        sampler.count(n, -1.0)
        odds = power * sampler.log_odds(n, int(labels[0]), int(labels[1]))
        log_p0, log_p1 = _log_sigmoid(odds), _log_sigmoid(-odds)
        if target is None:
            second = not _coin(rng, log_p0)
        else:
            second = bool(target[j] == labels[1])
        st.c[n] = labels[1] if second else labels[0]
        sampler.count(n, 1.0)
        log_q += log_p1 if second else log_p0
    return log_q


def _final_scan(sampler: ConceptSampler, order: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                scans: int, power: float, target: np.ndarray | None = None) -> float:
    """Build the launch state (uniform allocation of ``order`` to ``labels``, then ``scans`` restricted scans) and
    run the last restricted scan (sampled, or forced to ``target``); returns its log probability."""
    for n in order.tolist():
        sampler.relabel(n, int(labels[rng.integers(2)]))
    for _ in range(scans):
        _restricted_scan(sampler, order, labels, rng, power)
    return _restricted_scan(sampler, order, labels, rng, power, target)


def _split(sampler: ConceptSampler, a: int, b: int, rng: np.random.Generator, scans: int, power: float) -> bool:
    st, stats = sampler.state, sampler.split_merge_stats
    l = int(st.c[b])
    empty = np.flatnonzero(st.n_l == 0)
    stats.splits[0] += 1
    if empty.size == 0:
        stats.no_empty += 1
        return False
    labels = np.array([empty[rng.integers(empty.size)], l])
    members = np.flatnonzero(st.c == l)
    order = rng.permutation(members[(members != a) & (members != b)])
    before = sampler.log_concept_joint(labels)
    sampler.relabel(a, int(labels[0]))
    log_q = _final_scan(sampler, order, labels, rng, scans, power)
    log_accept = power * (sampler.log_concept_joint(labels) - before) + math.log(empty.size) - log_q
    if _coin(rng, log_accept):
        stats.splits[1] += 1
        return True
    for n in members.tolist():
        sampler.relabel(n, l)
    return False


def _merge(sampler: ConceptSampler, a: int, b: int, rng: np.random.Generator, scans: int, power: float) -> bool:
    st, stats = sampler.state, sampler.split_merge_stats
    labels = np.array([st.c[a], st.c[b]])
    members = np.flatnonzero((st.c == labels[0]) | (st.c == labels[1]))
    order = rng.permutation(members[(members != a) & (members != b)])
    current = st.c[order].copy()
    moved = members[st.c[members] == labels[0]].tolist()
    stats.merges[0] += 1
    before = sampler.log_concept_joint(labels)
    for n in moved:
        sampler.relabel(n, int(labels[1]))
    bound = power * (sampler.log_concept_joint(labels) - before) - math.log(np.count_nonzero(st.n_l == 0))
    # accept with probability min(1, e^bound q) as two coins, min(1, e^bound) then min(1, e^max(bound, 0) q): the
    # first rejects before q is computed (q <= 1)
    if _coin(rng, bound):
        sampler.relabel(a, int(labels[0]))
        log_q = _final_scan(sampler, order, labels, rng, scans, power, target=current)  # back to the split state
        if _coin(rng, log_q + max(bound, 0.0)):
            for n in moved:
                sampler.relabel(n, int(labels[1]))
            stats.merges[1] += 1
            return True
        return False
    for n in moved:
        sampler.relabel(n, int(labels[0]))
    return False


def split_merge_move(sampler: ConceptSampler, rng: np.random.Generator, launch_scans: int = 3,
                     power: float = 1.0) -> bool:
    """One split-merge proposal on ``sampler``'s state (see the module docstring); returns whether it was accepted.

    Args:
        sampler: the `ConceptSampler` whose concepts move (its counts are kept in step; positions untouched).
        rng: the random generator.
        launch_scans: restricted Gibbs scans that refine the launch state.
        power: :math:`\\rho`, the target being :math:`f^\\rho` (1: the posterior; below 1: annealing).
    """
    n_events = len(sampler.state.c)
    if n_events < 2:
        return False
    a, b = (int(e) for e in rng.choice(n_events, 2, replace=False))
    if sampler.state.c[a] == sampler.state.c[b]:
        return _split(sampler, a, b, rng, launch_scans, power)
    return _merge(sampler, a, b, rng, launch_scans, power)
