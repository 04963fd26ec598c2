r"""How a clustering relates to the true classes: clusters named after their matched class, confusion tables.

An unsupervised model's cluster ids are arbitrary. `match_clusters` renames each cluster after the class
that the Hungarian algorithm assigns to it (the matching that maximises the agreement, the one behind
`kizuna.metrics.clustering_accuracy`):

.. math:: \sigma^\star = \arg\max_{\sigma\ \text{one-to-one}} \sum_j n_{\sigma(j) j},\qquad
    \text{accuracy} = \frac1N \sum_j n_{\sigma^\star(j) j},

with :math:`n_{ij}` the number of samples of class :math:`i` put in cluster :math:`j`. After the renaming
the confusion table (`confusion_table`) has the correctly clustered samples on its diagonal, and the
colours of a scatter plot coloured by cluster correspond to those coloured by class.
`draw_confusion` draws that table on a matplotlib axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from kizuna.metrics.clustering import as_numpy, contingency

UNMATCHED = -1  # the name of a cluster left without a class (more clusters than classes)


def _labels(x: Any, what: str) -> np.ndarray:
    """Labels as a 1-D numpy array: a tensor on any device, float16 and bfloat16 (which numpy lacks) lifted to float32
    as `kizuna.metrics` reads them (`as_numpy`)."""
    a = np.asarray(as_numpy(x))
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
    return a


def match_clusters(labels_true: Any, labels_pred: Any, unmatched: Any = None) -> np.ndarray:
    """Each sample's cluster renamed after the class matched to it, or ``unmatched`` if none is (more clusters than
    classes).

    ``unmatched`` defaults to `UNMATCHED` (-1). When -1 is itself one of the classes (DBSCAN's noise, "unlabelled")
    and a cluster is left without a class, the output could not tell the two apart (accuracy computed from it would
    count the unmatched samples as right): a ValueError then asks for an ``unmatched=`` value that is not a class.

    >>> match_clusters([0, 0, 1, 1, 2], [7, 7, 3, 3, 3]).tolist()
    [0, 0, 1, 1, 1]
    >>> match_clusters([-1, -1, 0, 0], [0, 9, 1, 1], unmatched=-2).tolist()
    [-1, -2, 0, 0]

    Raises:
        ValueError: ``unmatched`` is one of the classes (given, or -1 by default when a cluster is unmatched).
    """
    sentinel = UNMATCHED if unmatched is None else unmatched
    names, which, classes = _matched(labels_true, labels_pred, sentinel)
    if (unmatched is not None or (which < 0).any()) and sentinel in classes.tolist():
        hint = "" if unmatched is not None else " (the default)"
        raise ValueError(f"match_clusters: unmatched={sentinel!r}{hint} is one of the classes, so unmatched clusters "
                         f"would read as that class; pass unmatched= a value that is not a class")
    return names


def _matched(labels_true: Any, labels_pred: Any,
             unmatched: Any = UNMATCHED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(names, which, classes): each sample's matched class name (`UNMATCHED` if none), the index of that class in
    ``classes`` (-1 if none: an index, so that a class named -1 or string labels are told apart from "none")."""
    t, p = _labels(labels_true, "labels_true"), _labels(labels_pred, "labels_pred")
    table = contingency(t, p)
    classes, clusters = np.unique(t), np.unique(p)
    rows, cols = linear_sum_assignment(-table)
    index = dict(zip(clusters[cols].tolist(), rows.tolist()))
    which = np.array([index.get(c, -1) for c in p.tolist()], dtype=np.int64)
    numbers = classes.dtype.kind in "iufb" and isinstance(unmatched, (int, float, np.number))
    names = np.array([classes[i].item() if i >= 0 else unmatched for i in which.tolist()],
                     dtype=None if numbers else object)  # strings keep -1 a number, numbers a name such as "none"
    return names, which, classes


def confusion_table(labels_true: Any, labels_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """(table, classes): ``table[i, j]`` counts samples of class ``classes[i]`` whose cluster is matched to
    ``classes[j]`` (`match_clusters`); a last column counts unmatched clusters when there are any.

    >>> table, classes = confusion_table([0, 0, 1, 1], [5, 5, 5, 2])
    >>> table.tolist(), classes.tolist()
    ([[2, 0], [1, 1]], [0, 1])
    """
    t = _labels(labels_true, "labels_true")
    _, which, classes = _matched(t, labels_pred)
    unmatched = which < 0
    table = np.zeros((len(classes), len(classes) + int(unmatched.any())), dtype=np.int64)
    row = {c: i for i, c in enumerate(classes.tolist())}
    np.add.at(table, ([row[c] for c in t.tolist()], np.where(unmatched, len(classes), which)), 1)
    return table, classes


def draw_confusion(ax: Any, labels_true: Any, labels_pred: Any, title: str, cmap: str = "Blues") -> float:
    """Draw the matched confusion table of a clustering on ``ax``; returns its accuracy.

    Rows are true classes, columns clusters named after their matched class; each cell shows its count,
    coloured by the fraction of its row, and the title carries the Hungarian-matched accuracy.
    """
    table, classes = confusion_table(labels_true, labels_pred)
    accuracy = float(np.trace(table[:, : len(classes)]) / table.sum())
    share = table / np.maximum(table.sum(1, keepdims=True), 1)
    ax.imshow(share, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), n in np.ndenumerate(table):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=6.5,
                    color="white" if share[i, j] > 0.6 else "black")
    names = [str(c) for c in classes] + (["none"] if table.shape[1] > len(classes) else [])
    ax.set_xticks(range(table.shape[1]), names, fontsize=7)
    ax.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=7)
    ax.set_xlabel("cluster, named after its matched class", fontsize=8)
    ax.set_ylabel("true class", fontsize=8)
    ax.set_title(f"{title}\naccuracy {accuracy:.3f}", fontsize=9)
    return accuracy
