"""`ClassResults`: what a module with a categorical latent reports (classes and clustering scores).

``category`` labels are only used for reporting; they never enter learning.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from kizuna._data import one_number
from kizuna.metrics.clustering import adjusted_rand_score, clustering_accuracy, normalized_mutual_info_score


def as_labels(category: Any, owner: str) -> np.ndarray | None:
    """Reference labels as a 1-D integer numpy array (``None`` stays ``None``)."""
    if category is None:
        return None
    if isinstance(category, torch.Tensor):
        category = category.detach().cpu().numpy()
    labels = np.asarray(category)
    if labels.ndim != 1:
        raise ValueError(f"{owner}: category must be a 1-D array of labels, got shape {labels.shape}")
    return labels


def checked_n_classes(n_classes: Any, owner: str) -> int:
    """A number of classes as an ``int`` (a numpy integer too: GridSearchCV over ``np.arange``); anything but a
    positive whole number is refused."""
    number = one_number(n_classes, arrays=False)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < 1:
        raise ValueError(f"{owner}: the number of classes must be a positive int, got {n_classes!r}")
    return int(number)


class ClassResults:
    """Results over ``N`` samples and ``n_classes`` classes, read from ``posterior`` (``N×K``)."""

    name: str

    def __init__(self, n_classes: int, category: Any = None) -> None:
        self.n_classes = checked_n_classes(n_classes, type(self).__name__)
        self.category = as_labels(category, type(self).__name__)
        self.posterior: torch.Tensor | None = None

    def check_category(self, n: int) -> None:
        """Raise when ``category`` was given for a different number of samples than ``n``."""
        if self.category is not None and self.category.shape[0] != n:
            raise ValueError(f"{self.name}: category has {self.category.shape[0]} labels but the data has {n} samples")

    def _posterior(self) -> torch.Tensor:
        if self.posterior is None:
            raise RuntimeError(f"{self.name} has no posterior yet: call update() (or fit) first")
        return self.posterior

    @property
    def classes(self) -> torch.Tensor:
        """The most probable class of each sample, ``argmax_k posterior[n, k]``."""
        return self._posterior().argmax(1)

    def _scored(self, score: Any) -> float:
        if self.category is None:
            raise RuntimeError(f"{self.name}: pass category=labels to report clustering scores")
        classes = self.classes.cpu().numpy()
        self.check_category(classes.shape[0])
        return score(self.category, classes)

    @property
    def accuracy(self) -> float:
        """Accuracy of ``classes`` against ``category`` after Hungarian matching."""
        return self._scored(clustering_accuracy)

    @property
    def ari(self) -> float:
        """Adjusted Rand index of ``classes`` against ``category``."""
        return self._scored(adjusted_rand_score)

    @property
    def nmi(self) -> float:
        """Normalised mutual information of ``classes`` and ``category``."""
        return self._scored(normalized_mutual_info_score)
