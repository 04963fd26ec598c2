"""Split-merge moves of the spatial-concept sampler: the exact transition kernel against the enumerated posterior.

The target is computed here by the chain rule (each event's concept, component and tokens drawn in turn from
their predictive probabilities), a different route from the sampler's Beta and Gamma functions. The kernel of
one move is enumerated exactly: every random choice of the move (the ordered pair, the empty label, the scan
order, the launch allocation, each restricted-Gibbs draw and the acceptance coin) is branched on with its
probability, so detailed balance is checked to rounding error on every pair of states, not by sampling.
"""

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
from scipy import stats

from kizuna import modules as km
from kizuna.metrics import adjusted_rand_score
from kizuna.modules import spatial_concept_split_merge as sm
from kizuna.modules.spatial_concept_gibbs import ConceptSampler, ConceptState, FixedPositions

ALPHA, GAMMA, BETAS = 0.7, 0.4, [0.3, 1.2]
N, L, K = 4, 3, 2  # events, concepts (truncation), position components


def _problem(seed: int = 1, n: int = N):
    """A position log-likelihood table (n×K), two count modalities and fixed components."""
    rng = np.random.default_rng(seed)
    ys = [rng.integers(0, 3, size=(n, 3)).astype(float), rng.integers(0, 2, size=(n, 2)).astype(float)]
    return rng.normal(size=(n, K)), ys, rng.integers(K, size=n)


def _log_target(c, i, ys, table=None) -> float:
    """log p(c, i, y) (+ log p(x | i) with ``table``) by the chain rule: event n's concept from the truncated
    stick-breaking predictive E[V_l] prod_{j<l} (1 - E[V_j]) given events < n, its component from
    (N_lk + gamma) / (N_l + K gamma), and each of its tokens in turn from (S_lv + beta) / (S_l + V beta)."""
    n_l, n_lk = np.zeros(L), np.zeros((L, K))
    sums = [np.zeros((L, y.shape[1])) for y in ys]
    total = 0.0
    for n, (l, k) in enumerate(zip(c, i)):
        rest = 1.0
        for j in range(l + 1):
            ev = 1.0 if j == L - 1 else (1 + n_l[j]) / (1 + ALPHA + n_l[j] + n_l[j + 1:].sum())
            p = rest * ev
            rest *= 1 - ev
        total += math.log(p) + math.log((n_lk[l, k] + GAMMA) / (n_l[l] + K * GAMMA))
        n_l[l] += 1
        n_lk[l, k] += 1
        for y, s, beta in zip(ys, sums, BETAS):
            for v, times in enumerate(y[n].astype(int)):
                for _ in range(times):
                    total += math.log((s[l, v] + beta) / (s[l].sum() + len(s[l]) * beta))
                    s[l, v] += 1
    return total + (0.0 if table is None else float(table[np.arange(len(c)), i].sum()))


class _Branches:
    """A stand-in generator that walks every path of random choices: ``prefix`` fixes the first choices, later
    ones take option 0 and are recorded as (option, number of options, probabilities)."""

    def __init__(self, prefix: list[int]) -> None:
        self.prefix, self.path, self.weight = prefix, [], 1.0

    def _pick(self, probs: list[float]) -> int:
        j = self.prefix[len(self.path)] if len(self.path) < len(self.prefix) else 0
        self.path.append((j, probs))
        self.weight *= probs[j]
        return j

    def integers(self, k: int) -> int:
        return self._pick([1.0 / k] * k)

    def choice(self, n: int, size: int, replace: bool) -> np.ndarray:
        assert size == 2 and not replace
        pairs = list(itertools.permutations(range(n), 2))
        return np.array(pairs[self._pick([1.0 / len(pairs)] * len(pairs))])

    def permutation(self, a: np.ndarray) -> np.ndarray:
        orders = list(itertools.permutations(a.tolist()))
        return np.array(orders[self._pick([1.0 / len(orders)] * len(orders))], dtype=np.int64)

    def coin(self, log_p: float) -> bool:
        if log_p >= 0.0:
            return True
        p = math.exp(log_p)
        return self._pick([p, 1.0 - p]) == 0


def _sampler(c, i, ys, table, **options) -> ConceptSampler:
    return ConceptSampler(FixedPositions(table), ys, L, ALPHA, GAMMA, BETAS, np.array(c), i, **options)


def _counts_in_step(sampler: ConceptSampler, ys) -> bool:
    """Whether the sampler's counts are those of its assignments (integer-valued floats: exact)."""
    st = sampler.state
    member = np.eye(L)[st.c].T
    n_lk = member @ np.eye(K)[st.i]
    return (np.array_equal(st.n_lk, n_lk) and np.array_equal(st.n_l, n_lk.sum(1))
            and all(np.array_equal(s, member @ y) for s, y in zip(st.sums, ys)))


def _kernel(states, i, ys, table, launch_scans: int, power: float, monkeypatch) -> np.ndarray:
    """T[s, t]: the exact probability that one `split_merge_move` from state s ends in state t."""
    monkeypatch.setattr(sm, "_coin", lambda rng, log_p: rng.coin(log_p))
    index = {s: j for j, s in enumerate(states)}
    kernel = np.zeros((len(states), len(states)))
    for s in states:
        row, stack = defaultdict(float), [[]]
        sampler = _sampler(s, i, ys, table)
        start = sampler.state
        while stack:
            prefix = stack.pop()
            rng = _Branches(prefix)
            sampler.state = ConceptState(start.c.copy(), start.i, start.n_l.copy(), start.n_lk.copy(),
                                         [a.copy() for a in start.sums])
            sm.split_merge_move(sampler, rng, launch_scans, power)
            assert _counts_in_step(sampler, ys)
            row[tuple(sampler.state.c.tolist())] += rng.weight
            for depth in range(len(prefix), len(rng.path)):
                taken = [j for j, _ in rng.path[:depth]]
                stack += [taken + [alt] for alt, p in enumerate(rng.path[depth][1]) if alt > 0 and p > 0]
        for t, w in row.items():
            kernel[index[s], index[t]] += w
    return kernel


@pytest.mark.parametrize("n, launch_scans, power", [
    (4, 0, 1.0), (3, 2, 0.5),
    pytest.param(4, 1, 1.0, marks=pytest.mark.slow), pytest.param(4, 0, 0.5, marks=pytest.mark.slow)])
def test_moves_satisfy_detailed_balance_exactly(n, launch_scans, power, monkeypatch):
    """pi(s) T(s, t) = pi(t) T(t, s) on every pair of the L^n labelled states (i fixed), pi the enumerated
    p(c | i, x, y)^power, T one move's exact kernel; and T alone converges to pi (it is irreducible)."""
    table, ys, i = _problem(1, n)
    states = list(itertools.product(range(L), repeat=n))
    log_f = np.array([_log_target(np.array(s), i, ys) for s in states]) * power
    for s, lf in zip(states[::7], log_f[::7]):  # the sampler's collapsed joint is the same function (up to x)
        assert _sampler(s, i, ys, table).log_concept_joint() * power == pytest.approx(lf, abs=1e-9)
    kernel = _kernel(states, i, ys, table, launch_scans, power, monkeypatch)
    np.testing.assert_allclose(kernel.sum(1), 1.0, atol=1e-12)
    pi = np.exp(log_f - log_f.max())
    pi /= pi.sum()
    flow = pi[:, None] * kernel
    np.testing.assert_allclose(flow, flow.T, rtol=1e-9, atol=1e-15)
    moved = flow.sum() - np.trace(flow)
    assert moved > 0.05  # the moves do move (a kernel that never moves would pass trivially)
    # irreducible: the chain of split-merge moves alone converges to the enumerated posterior from any state
    lazy = np.linalg.matrix_power(0.5 * (kernel + np.eye(len(states))), 4000)
    np.testing.assert_allclose(lazy, np.broadcast_to(pi, lazy.shape), atol=1e-8)


def _chi_square_p(observed: np.ndarray, expected: np.ndarray) -> float:
    """Pearson's test, cells with expected count below 5 pooled into one."""
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    return float(stats.chisquare(obs, exp).pvalue)


def _exact_draws(log_f: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pi = np.exp(log_f - log_f.max())
    pi /= pi.sum()
    return pi, rng.choice(len(pi), size=size, p=pi)


def test_moves_with_numpy_generator_keep_the_posterior():
    """Start 1000 chains from independent exact draws of p(c | i, x, y) (3 events); after three moves with a
    real generator each state is still an exact draw if the moves keep the posterior: chi-square over the 27
    states, false-alarm rate 1e-3."""
    table, ys, i = _problem(2, 3)
    states = list(itertools.product(range(L), repeat=3))
    rng = np.random.default_rng(3)
    pi, starts = _exact_draws(np.array([_log_target(np.array(s), i, ys) for s in states]), 1000, rng)
    ends, accepted = np.zeros(len(states)), 0
    index = {s: j for j, s in enumerate(states)}
    for start in starts:
        sampler = _sampler(states[start], i, ys, table)
        for _ in range(3):
            accepted += sm.split_merge_move(sampler, rng, launch_scans=1)
        ends[index[tuple(sampler.state.c.tolist())]] += 1
    assert accepted > 250
    assert _chi_square_p(ends, pi * len(starts)) > 1e-3


def test_sweep_with_split_merge_keeps_the_joint_posterior():
    """The same with `ConceptSampler.sweep` (2 split-merge proposals, then Gibbs over (c, i)) on the joint of
    (c, i) under a fixed position table: 1000 exact draws over the 216 states of 3 events, one sweep each,
    chi-square at false-alarm rate 1e-3."""
    table, ys, _ = _problem(4, 3)
    states = list(itertools.product(range(L * K), repeat=3))
    rng = np.random.default_rng(5)
    log_f = np.array([_log_target(np.array(s) // K, np.array(s) % K, ys, table) for s in states])
    pi, starts = _exact_draws(log_f, 1000, rng)
    ends = np.zeros(len(states))
    index = {s: j for j, s in enumerate(states)}
    for start in starts:
        s = np.array(states[start])
        sampler = ConceptSampler(FixedPositions(table), ys, L, ALPHA, GAMMA, BETAS, s // K, s % K, split_merge=2)
        sampler.sweep(rng)
        ends[index[tuple((sampler.state.c * K + sampler.state.i).tolist())]] += 1
    assert sampler.split_merge_stats.splits[0] + sampler.split_merge_stats.merges[0] == 2
    assert _chi_square_p(ends, pi * len(starts)) > 1e-3


def test_moves_alone_split_two_groups():
    """Two groups of 20 events with disjoint words, all in one concept: 60 split-merge proposals (no Gibbs) give
    each group its own concept (up to a few strays)."""
    rng = np.random.default_rng(0)
    y = np.zeros((40, 4))
    y[:20, :2] = rng.multinomial(6, [0.5, 0.5], size=20)
    y[20:, 2:] = rng.multinomial(6, [0.5, 0.5], size=20)
    truth = np.repeat([0, 1], 20)
    sampler = ConceptSampler(FixedPositions(np.zeros((40, 1))), [y], 5, 1.0, 1.0, [0.5], np.zeros(40, dtype=int),
                             np.zeros(40, dtype=int))
    before = sampler.log_concept_joint()
    for _ in range(60):
        sm.split_merge_move(sampler, rng)
    c = sampler.state.c
    first, second = np.bincount(c[:20]).argmax(), np.bincount(c[20:]).argmax()
    assert first != second and (c[:20] == first).sum() >= 17 and (c[20:] == second).sum() >= 17
    assert adjusted_rand_score(truth, c) > 0.8
    assert sampler.log_concept_joint() > before + 50
    assert sampler.split_merge_stats.splits[1] >= 1


def test_options_are_checked():
    table, ys, i = _problem()
    with pytest.raises(ValueError, match="split_merge"):
        _sampler([0] * N, i, ys, table, split_merge=-1)
    with pytest.raises(ValueError, match="launch_scans"):
        _sampler([0] * N, i, ys, table, launch_scans=-1)
    with pytest.raises(ValueError, match="split_merge"):
        km.SpatialConcept(split_merge=-1)
    with pytest.raises(ValueError, match="launch_scans"):
        km.SpatialConcept(launch_scans=-2)
