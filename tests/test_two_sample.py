"""`classifier_two_sample_test` (Lopez-Paz & Oquab 2017) against its null and alternative.

References: under the null (two samples of one distribution) the held-out accuracy is
Binomial(n, 1/2) / n, so it lies within five standard errors of 0.5 and the p-values are
(conservatively) uniform; the p-value equals ``scipy.stats.binomtest`` (one-sided); clearly
different samples give accuracy near one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.neighbors import KNeighborsClassifier

from kizuna.metrics import TwoSampleResult, classifier_two_sample_test


def test_same_distribution_gives_chance_accuracy() -> None:
    rng = np.random.default_rng(0)
    result = classifier_two_sample_test(rng.normal(size=(2000, 5)), torch.randn(2000, 5))
    assert isinstance(result, TwoSampleResult) and result.n_test == 2000
    assert abs(result.accuracy - 0.5) < 5 * math.sqrt(0.25 / result.n_test)
    assert result.p_value > 1e-4
    correct = round(result.accuracy * result.n_test)
    assert result.p_value == pytest.approx(stats.binomtest(correct, result.n_test, 0.5, "greater").pvalue, rel=1e-9)


def test_false_alarm_rate_under_the_null() -> None:
    """40 null tests at level 0.05: at most 8 rejections (P[Bin(40, 0.05) > 8] = 1.3e-4)."""
    rng = np.random.default_rng(1)
    p = [classifier_two_sample_test(rng.normal(size=(200, 3)), rng.normal(size=(200, 3)), seed=i).p_value
         for i in range(40)]
    assert sum(v < 0.05 for v in p) <= 8


def test_different_distributions_are_told_apart() -> None:
    rng = np.random.default_rng(2)
    # means 2.5 apart in each of 4 coordinates: the Bayes accuracy is Phi(|delta| / 2) = Phi(2.5) = 0.994
    shifted = classifier_two_sample_test(rng.normal(size=(1000, 4)), rng.normal(2.5, size=(1000, 4)))
    assert shifted.accuracy > 0.97 and shifted.p_value < 1e-100
    # equal means, different spread: invisible to a linear classifier, visible to an MLP or k-NN. The Bayes accuracy
    # (classify by r² < 4.363): (1 - exp(-4.363 / 2) + exp(-4.363 / 12.5)) / 2 = 0.796; one MLP fit on 300 rows a
    # class scatters (0.72-0.80 over the split's seeds), so the mean of three splits is held to it
    a, b = rng.normal(size=(600, 2)), rng.normal(scale=2.5, size=(600, 2))
    bayes = (1 - math.exp(-4.363 / 2) + math.exp(-4.363 / 12.5)) / 2
    assert classifier_two_sample_test(a, b).accuracy < 0.6
    for classifier in ("mlp", KNeighborsClassifier(15)):
        accuracy = np.mean([classifier_two_sample_test(a, b, classifier=classifier, seed=s).accuracy for s in range(3)])
        assert bayes - 0.06 < accuracy < bayes + 0.04, (classifier, accuracy)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="real has 3 features per row, fake 2"):
        classifier_two_sample_test(np.zeros((10, 3)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="fake needs at least two rows"):
        classifier_two_sample_test(np.zeros((10, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="test_size"):
        classifier_two_sample_test(np.zeros((10, 3)), np.zeros((10, 3)), test_size=1.0)
    with pytest.raises(ValueError, match="classifier must be"):
        classifier_two_sample_test(np.zeros((10, 3)), np.ones((10, 3)), classifier="forest")
    with pytest.raises(ValueError, match="non-finite"):
        classifier_two_sample_test(np.full((10, 3), np.nan), np.ones((10, 3)))


def test_the_mlp_classifier_takes_small_samples():
    """With fewer than 40 training rows, early stopping's stratified tenth could not hold both classes: scikit-learn's
    'least populated class' error. Clearly separated samples are then told apart, as by the logistic classifier."""
    from kizuna.metrics import classifier_two_sample_test

    g = torch.Generator().manual_seed(0)
    for n in (4, 10):
        real, fake = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) + 10.0
        result = classifier_two_sample_test(real, fake, classifier="mlp", seed=0)
        assert result.accuracy == 1.0 and result.n_test == n


def test_a_given_estimator_is_trained_on_a_copy():
    """The caller's estimator was fitted in place; an estimator class (not an instance) is refused by name."""
    from sklearn.linear_model import LogisticRegression

    from kizuna.metrics import classifier_two_sample_test

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g) + 3.0
    mine = LogisticRegression()
    result = classifier_two_sample_test(real, fake, classifier=mine, seed=0)
    assert result.accuracy > 0.9 and not hasattr(mine, "coef_")
    with pytest.raises(ValueError, match="classifier must be 'logistic', 'mlp' or an estimator"):
        classifier_two_sample_test(real, fake, classifier=LogisticRegression)


@pytest.mark.parametrize("n", [20, 60])
def test_the_null_accuracy_is_unbiased_for_small_samples(n) -> None:
    """Under the null the held-out accuracy is Binomial(n_test, 1/2) / n_test: its mean over many independent runs
    is 0.5 (the unstratified split gave 0.470 ± 0.006 with 20 rows a side, 0.481 with 60: its halves leaned towards
    opposite classes), every split holds out as many rows of each sample, and the share of p-values below 0.05 is at
    most 0.05 (the exact binomial test is conservative, not anti-conservative)."""
    accuracies, small = [], 0
    for seed in range(300):
        rng = np.random.default_rng(50_000 + seed)
        result = classifier_two_sample_test(rng.normal(size=(n, 2)), rng.normal(size=(n + 7, 2)), seed=seed)
        assert result.n_test == 2 * round(0.5 * n)
        accuracies.append(result.accuracy)
        small += result.p_value < 0.05
    mean, se = float(np.mean(accuracies)), float(np.std(accuracies) / math.sqrt(len(accuracies)))
    assert abs(mean - 0.5) < 4 * se, (mean, se)
    assert small / 300 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)


def test_a_seed_past_scikit_learns_range_works_and_repeats() -> None:
    """Found by a review (stop 44): a seed of 2**32 or more (numpy takes up to 2**64 - 1) failed inside
    scikit-learn's MLP / an unseeded estimator with an error about random_state that did not name ``seed``; it is
    hashed into scikit-learn's range, so it runs and the same seed gives the same result."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 2)), rng.normal(1.5, size=(60, 2))
    for classifier in ("mlp", RandomForestClassifier(n_estimators=5)):
        first = classifier_two_sample_test(a, b, classifier=classifier, seed=2**40 + 3)
        again = classifier_two_sample_test(a, b, classifier=classifier, seed=2**40 + 3)
        assert first == again and first.accuracy > 0.6
    # seeds below 2**32 reach scikit-learn as given (results of earlier versions are unchanged)
    forest = classifier_two_sample_test(a, b, classifier=RandomForestClassifier(n_estimators=5), seed=7)
    assert forest == classifier_two_sample_test(a, b, classifier=RandomForestClassifier(n_estimators=5,
                                                                                        random_state=7), seed=7)


def test_seeds_numpy_takes_still_work() -> None:
    """Diff review 1 (stop 44): the seed hashing applied int() to every seed, so None, a SeedSequence and a list of
    ints (numpy's seeds, taken before) raised a TypeError."""
    rng = np.random.default_rng(0)
    # far apart (6 sd in each feature): every split is told apart, also the unseeded one (seed=None)
    a, b = rng.normal(size=(40, 2)), rng.normal(6.0, size=(40, 2))
    for seed in (None, np.random.SeedSequence(3), [1, 2]):
        assert classifier_two_sample_test(a, b, seed=seed).accuracy > 0.9
    assert classifier_two_sample_test(a, b, classifier="mlp", seed=None).n_test == 40
