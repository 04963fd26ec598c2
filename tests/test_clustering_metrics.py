"""Clustering scores against scikit-learn (ARI, NMI) and brute-force matching (accuracy)."""

import decimal
import itertools

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from kizuna.metrics import adjusted_rand_score, clustering_accuracy, normalized_mutual_info_score


def labelings(seed, n=60):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, n)
    noisy = np.where(rng.random(n) < 0.3, rng.integers(0, 5, n), (truth + 1) % 4)
    return truth, noisy


@pytest.mark.parametrize("seed", range(8))
def test_ari_and_nmi_match_sklearn(seed):
    a, b = labelings(seed)
    assert adjusted_rand_score(a, b) == pytest.approx(skm.adjusted_rand_score(a, b), abs=1e-12)
    assert normalized_mutual_info_score(a, b) == pytest.approx(skm.normalized_mutual_info_score(a, b), abs=1e-12)


@pytest.mark.parametrize("a, b", [
    ([0, 0, 1, 1], [5, 5, 7, 7]),  # identical partitions, renamed
    ([0, 0, 0, 0], [1, 1, 1, 1]),  # one cluster each
    ([0, 1, 2, 3], [0, 1, 2, 3]),  # all singletons
    ([0, 0, 0, 0], [0, 1, 2, 3]),  # one cluster vs singletons
    ([0, 0, 1, 1, 2], [0, 1, 0, 1, 0]),
])
def test_edge_cases_match_sklearn(a, b):
    assert adjusted_rand_score(a, b) == pytest.approx(skm.adjusted_rand_score(a, b), abs=1e-12)
    assert normalized_mutual_info_score(a, b) == pytest.approx(skm.normalized_mutual_info_score(a, b), abs=1e-12)


def brute_force_accuracy(truth, pred):
    """Best accuracy over every injective relabelling of the predicted clusters."""
    clusters, classes = np.unique(pred), np.unique(truth)
    targets = list(classes) + [None] * max(0, len(clusters) - len(classes))
    best = 0.0
    for perm in itertools.permutations(targets, len(clusters)):
        mapping = dict(zip(clusters, perm))
        best = max(best, float(np.mean([mapping[p] == t for p, t in zip(pred, truth)])))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_accuracy_is_the_best_relabelling(seed):
    a, b = labelings(seed, n=30)
    assert clustering_accuracy(a, b) == pytest.approx(brute_force_accuracy(a, b), abs=1e-12)


def test_accepts_tensors_and_rejects_bad_input():
    assert clustering_accuracy(torch.tensor([0, 1, 1]), torch.tensor([1, 0, 0])) == 1.0
    with pytest.raises(ValueError, match="labels_true has 3 entries but labels_pred has 2"):
        clustering_accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="1-D array of labels"):
        adjusted_rand_score(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        normalized_mutual_info_score([], [])


@pytest.mark.parametrize("score", [clustering_accuracy, adjusted_rand_score, normalized_mutual_info_score])
def test_a_missing_label_is_an_error_naming_its_index(score):
    """NaN compares unequal to itself, so np.unique would make every NaN its own class: silently wrong."""
    with pytest.raises(ValueError, match="labels_true has a missing label \\(nan\\) at index 2"):
        score(np.array([0.0, 1.0, np.nan, 1.0]), [0, 1, 1, 1])
    with pytest.raises(ValueError, match="labels_pred has a missing label \\(None\\) at index 0"):
        score([0, 1], np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match="labels_true has a missing label \\(inf\\) at index 1"):
        score(torch.tensor([0.0, float("inf")]), [0, 1])


@pytest.mark.parametrize("score", [clustering_accuracy, adjusted_rand_score, normalized_mutual_info_score])
def test_labels_mixing_numbers_and_strings_are_named(score):
    """scikit-learn and the earlier code raise numpy's bare "'<' not supported between 'str' and 'int'"; one type
    (all strings) scores as scikit-learn does."""
    mixed = np.array([1, "a", 1], dtype=object)
    with pytest.raises(TypeError, match="labels_true mixes labels of types int, str, which cannot be compared"):
        score(mixed, [0, 1, 0])
    with pytest.raises(TypeError, match="labels_pred mixes labels of types int, str"):
        score([0, 1, 0], mixed)
    as_strings = mixed.astype(str)
    reference = {clustering_accuracy: 1.0, adjusted_rand_score: skm.adjusted_rand_score(as_strings, [0, 1, 0]),
                 normalized_mutual_info_score: skm.normalized_mutual_info_score(as_strings, [0, 1, 0])}
    assert score(as_strings, [0, 1, 0]) == pytest.approx(reference[score])


@pytest.mark.parametrize("labels, shown", [
    (np.array([0, 0, np.float32("nan"), 1], dtype=object), "nan"),
    (np.array([0, 0, float("inf"), 1], dtype=object), "inf"),
    (np.array([0, 0, decimal.Decimal("NaN"), 1], dtype=object), "NaN"),
    (np.array(["2020-01-01", "2020-01-02", "NaT", "2020-01-02"], dtype="datetime64[D]"), "NaT"),
])
def test_every_kind_of_missing_label_is_named(labels, shown):
    """A float32 NaN among objects (no Python float), an infinity among objects, a Decimal NaN and NaT were each taken
    as a class of their own (accuracy 0.75 against [0, 0, 1, 1]); they are missing labels, as NaN in a float
    array is."""
    for metric in (clustering_accuracy, adjusted_rand_score, normalized_mutual_info_score):
        with pytest.raises(ValueError, match=rf"labels_true has a missing label \({shown}\) at index 2"):
            metric(labels, [0, 0, 1, 1])
    assert clustering_accuracy(np.array([0, 0, decimal.Decimal(1), 1], dtype=object), [0, 0, 1, 1]) == 1.0
