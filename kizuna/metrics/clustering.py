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
"""

from __future__ import annotations

import decimal
import math
import numbers
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment


def _labels(y: Any, what: str) -> np.ndarray:
    """Labels as a 1-D array; a missing label (NaN, or None among objects) is an error naming its index.

    >>> _labels([0, 1, float("nan")], "labels_true")
    Traceback (most recent call last):
    ...
    ValueError: labels_true has a missing label (nan) at index 2: every sample needs a label
    """
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    a = np.asarray(y)
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


def contingency(labels_true: Any, labels_pred: Any) -> np.ndarray:
    """The table :math:`n_{ij}` = #samples with true class ``i`` and predicted cluster ``j``."""
    t, p = _labels(labels_true, "labels_true"), _labels(labels_pred, "labels_pred")
    if t.shape != p.shape:
        raise ValueError(f"labels_true has {t.shape[0]} entries but labels_pred has {p.shape[0]}")
    if t.size == 0:
        raise ValueError("cannot score an empty labelling")
    ti, pi = _codes(t, "labels_true"), _codes(p, "labels_pred")
    table = np.zeros((ti.max() + 1, pi.max() + 1), dtype=np.int64)
    np.add.at(table, (ti, pi), 1)
    return table


def clustering_accuracy(labels_true: Any, labels_pred: Any) -> float:
    """Accuracy after the best one-to-one relabelling of the clusters (Hungarian matching).

    >>> clustering_accuracy([0, 0, 1, 1, 2], [2, 2, 0, 0, 0])
    0.8
    """
    table = contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def _comb2(n: np.ndarray) -> np.ndarray:
    return n * (n - 1) / 2.0


def adjusted_rand_score(labels_true: Any, labels_pred: Any) -> float:
    """Adjusted Rand index (1 for identical partitions, ~0 for independent ones).

    >>> adjusted_rand_score([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    """
    table = contingency(labels_true, labels_pred).astype(np.float64)
    n = table.sum()
    sum_ij = _comb2(table).sum()
    sum_a, sum_b = _comb2(table.sum(1)).sum(), _comb2(table.sum(0)).sum()
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
    table = contingency(labels_true, labels_pred).astype(np.float64)
    h_true, h_pred = _entropy(table.sum(1)), _entropy(table.sum(0))
    if h_true == 0.0 and h_pred == 0.0:  # both a single cluster: identical partitions
        return 1.0
    n = table.sum()
    i, j = np.nonzero(table)
    nij = table[i, j]
    outer = table.sum(1)[i] * table.sum(0)[j]
    mi = float((nij / n * (np.log(nij * n) - np.log(outer))).sum())
    denom = 0.5 * (h_true + h_pred)
    return float(min(max(mi / denom, 0.0), 1.0)) if denom > 0 else 0.0
