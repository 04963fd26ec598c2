r"""Clustering scores: Hungarian-matched accuracy, adjusted Rand index, normalised mutual information.

All three compare a predicted partition with reference labels and are invariant to renaming
the predicted clusters. Written with numpy/scipy only (scikit-learn is a test dependency);
tests check them against ``sklearn.metrics``.

* **Accuracy** :math:`\max_\sigma \frac1N\sum_n [y_n = \sigma(\hat y_n)]` over one-to-one maps
  :math:`\sigma` from clusters to labels, found by the Hungarian algorithm on the contingency
  table (Kuhn 1955; ``scipy.optimize.linear_sum_assignment``).
* **ARI** (Hubert & Arabie 1985): :math:`\frac{\sum_{ij}\binom{n_{ij}}2 - E}{\frac12(\sum_i\binom{a_i}2
  + \sum_j\binom{b_j}2) - E}`, :math:`E = \sum_i\binom{a_i}2\sum_j\binom{b_j}2 / \binom N2`.
* **NMI** (arithmetic normalisation, scikit-learn's default):
  :math:`I(Y;\hat Y) / \tfrac12\,(H(Y) + H(\hat Y))`.

ARI and NMI read only the table's non-zero cells (at most one per sample), so memory grows with the number of
samples, not with the product of the two numbers of clusters (as scikit-learn's sparse contingency table). The
matching is found within each group of labels that share samples (a cell of labels that share none is 0), on a dense
table of that group's labels only.
"""

from __future__ import annotations

import decimal
import math
import numbers
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from kizuna._data import computing_dtype

# the most cells of a dense table the matching of one group of labels may take (800 MB as int64, and scipy's Hungarian
# algorithm takes a float64 copy; its time grows with the cube of the side): 5,100 classes against 5,100 clusters
# that all share samples (26 M cells, 3 s) are scored, a table that would not fit in memory is refused by name
_MAX_MATCHING_CELLS = 100_000_000


def as_numpy(x: Any) -> Any:
    """A tensor as a numpy array (floats narrower than float32, e.g. bfloat16, which numpy lacks, as float32); any
    other value as it is."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.to(computing_dtype(x.dtype)).numpy()
    return x


def _labels(y: Any, what: str) -> np.ndarray:
    """Labels as a 1-D array; a missing label (NaN, or None among objects) is an error naming its index.

    >>> _labels([0, 1, float("nan")], "labels_true")
    Traceback (most recent call last):
    ...
    ValueError: labels_true has a missing label (nan) at index 2: every sample needs a label
    """
    a = np.asarray(as_numpy(y))
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of labels, got shape {a.shape}")
    if a.dtype.kind in "fc":
        missing = np.flatnonzero(~np.isfinite(a))
    elif a.dtype.kind == "O":  # None, or a number that is not finite (numpy floats and Decimal NaN too)
        missing = np.flatnonzero([_missing(v) for v in a])
    elif a.dtype.kind in "mM":  # NaT
        missing = np.flatnonzero(np.isnat(a))
    else:
        missing = np.empty(0, dtype=np.int64)
    if missing.size:
        value = a[missing[0]]
        raise ValueError(f"{what} has a missing label ({'None' if value is None else value}) at index "
                         f"{int(missing[0])}: every sample needs a label")
    return a


def _missing(value: Any) -> bool:
    """Whether an object label is missing: None, or a real number that is not finite (a Python, numpy or Decimal NaN
    or infinity; a float32 NaN is no Python float, and NaN was each its own class)."""
    if value is None:
        return True
    if isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, bool):
        try:
            return not math.isfinite(value)
        except (TypeError, ValueError, ArithmeticError):  # (Decimal's signalling NaN)
            return True
    if isinstance(value, decimal.Decimal):
        return not value.is_finite()
    return False


def _codes(a: np.ndarray, what: str) -> np.ndarray:
    """Each label's index among the sorted distinct labels; labels of types that cannot be ordered together (an
    object array mixing numbers and strings) are an error naming the types."""
    try:
        return np.unique(a, return_inverse=True)[1].reshape(-1)
    except TypeError as err:
        types = sorted({type(v).__name__ for v in a})
        raise TypeError(f"{what} mixes labels of types {', '.join(types)}, which cannot be compared; give labels of "
                        "one type (e.g. all strings: np.asarray(labels).astype(str))") from err


def _coded(labels_true: Any, labels_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """The checked labellings as codes: each sample's class and cluster index."""
    t, p = _labels(labels_true, "labels_true"), _labels(labels_pred, "labels_pred")
    if t.shape != p.shape:
        raise ValueError(f"labels_true has {t.shape[0]} entries but labels_pred has {p.shape[0]}")
    if t.size == 0:
        raise ValueError("cannot score an empty labelling")
    return _codes(t, "labels_true"), _codes(p, "labels_pred")


def contingency(labels_true: Any, labels_pred: Any) -> np.ndarray:
    """The table :math:`n_{ij}` = #samples with true class ``i`` and predicted cluster ``j``."""
    ti, pi = _coded(labels_true, labels_pred)
    table = np.zeros((ti.max() + 1, pi.max() + 1), dtype=np.int64)
    np.add.at(table, (ti, pi), 1)
    return table


def _cells(ti: np.ndarray, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The contingency table's non-zero cells in row-major order: their rows, columns and counts."""
    width = int(pi.max()) + 1
    cells, counts = np.unique(ti.astype(np.int64) * width + pi, return_counts=True)
    return cells // width, cells % width, counts


def clustering_accuracy(labels_true: Any, labels_pred: Any) -> float:
    """Accuracy after the best one-to-one relabelling of the clusters (Hungarian matching).

    >>> clustering_accuracy([0, 0, 1, 1, 2], [2, 2, 0, 0, 0])
    0.8
    """
    ti, pi = _coded(labels_true, labels_pred)
    rows, cols, counts = _cells(ti, pi)
    n_true, n_pred = int(ti.max()) + 1, int(pi.max()) + 1
    # labels that share no sample have a 0 cell: the best matching is the best matching within each connected group
    # of labels (classes and clusters joined by a non-zero cell), each group's on a dense table of its own labels
    graph = coo_matrix((np.ones(rows.size), (rows, cols + n_true)), shape=(n_true + n_pred,) * 2)
    n_groups, group = connected_components(graph, directed=False)
    group_rows = np.bincount(group[:n_true], minlength=n_groups)
    group_cols = np.bincount(group[n_true:], minlength=n_groups)
    cell_group = group[rows]
    best = np.zeros(n_groups, dtype=np.int64)
    np.maximum.at(best, cell_group, counts)  # a group of one class or one cluster: its largest cell
    matched = int(best[(group_rows == 1) | (group_cols == 1)].sum())
    order = np.argsort(cell_group, kind="stable")  # the cells group by group
    sizes = np.bincount(cell_group, minlength=n_groups)
    ends = np.cumsum(sizes)
    for g in np.flatnonzero((group_rows > 1) & (group_cols > 1)):
        if group_rows[g] * group_cols[g] > _MAX_MATCHING_CELLS:
            raise ValueError(
                f"clustering_accuracy: matching {n_true} true classes with {n_pred} predicted clusters needs a dense "
                f"table of {group_rows[g]} classes x {group_cols[g]} clusters that share samples, over the "
                f"{_MAX_MATCHING_CELLS:,} cells this function allows; adjusted_rand_score and "
                "normalized_mutual_info_score need no such table")
        part = order[ends[g] - sizes[g]:ends[g]]
        table = np.zeros((group_rows[g], group_cols[g]), dtype=np.int64)
        table[_codes(rows[part], ""), _codes(cols[part], "")] = counts[part]
        r, c = linear_sum_assignment(-table)
        matched += int(table[r, c].sum())
    return matched / ti.size


def _comb2(n: np.ndarray) -> np.ndarray:
    return n * (n - 1) / 2.0


def adjusted_rand_score(labels_true: Any, labels_pred: Any) -> float:
    """Adjusted Rand index (1 for identical partitions, ~0 for independent ones).

    >>> adjusted_rand_score([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    """
    ti, pi = _coded(labels_true, labels_pred)
    n = float(ti.size)
    sum_ij = _comb2(_cells(ti, pi)[2].astype(np.float64)).sum()  # (a zero cell adds 0)
    sum_a, sum_b = _comb2(np.bincount(ti).astype(np.float64)).sum(), _comb2(np.bincount(pi).astype(np.float64)).sum()
    expected = sum_a * sum_b / _comb2(n) if n > 1 else 0.0
    top = 0.5 * (sum_a + sum_b)
    if top == expected:  # both partitions trivial (one cluster each, or all singletons)
        return 1.0
    return float((sum_ij - expected) / (top - expected))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info_score(labels_true: Any, labels_pred: Any) -> float:
    """Mutual information over the arithmetic mean of the two entropies.

    >>> round(normalized_mutual_info_score([0, 0, 1, 1], [0, 0, 0, 1]), 4)
    0.3437
    """
    ti, pi = _coded(labels_true, labels_pred)
    a, b = np.bincount(ti).astype(np.float64), np.bincount(pi).astype(np.float64)
    h_true, h_pred = _entropy(a), _entropy(b)
    if h_true == 0.0 and h_pred == 0.0:  # both a single cluster: identical partitions
        return 1.0
    n = float(ti.size)
    i, j, nij = _cells(ti, pi)
    nij = nij.astype(np.float64)
    outer = a[i] * b[j]
    mi = float((nij / n * (np.log(nij * n) - np.log(outer))).sum())
    denom = 0.5 * (h_true + h_pred)
    return float(min(max(mi / denom, 0.0), 1.0)) if denom > 0 else 0.0
