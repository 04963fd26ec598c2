"""MLDA's default modality weights let the observations decide, and a lopsided weighting warns.

The case of issue 13: 8 raw word tokens per sample that tell the 4 classes apart, next to a child's
one-hot class posterior that is wrong for 30% of the samples. SERKET-style weighting of that posterior
by 100 tokens makes the topics copy the child; the default (half the words' mean tokens per sample, here
4) lets the words correct it. References: the true classes, and the child's own accuracy.
"""

import warnings

import numpy as np
import pytest
import torch

from kizuna.metrics.clustering import clustering_accuracy
from kizuna.modules import MLDA, ClassModule, Graph, Observation
from kizuna.modules.lda.node import LOPSIDED, warn_if_lopsided

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class NoisyClasses(ClassModule):
    """A child that sends fixed one-hot class posteriors, as a confident GMM would."""

    accepts = ("data",)
    receives = ("prior",)

    def _update(self, ctx, forward, backward):
        self.posterior = forward[0].value
        return self.message("posterior", forward[0].value), {}


def words_and_a_wrong_child(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(4, size=n)
    phi = np.full((4, 16), 0.02)
    for c in range(4):
        phi[c, 4 * c:4 * c + 4] = 0.22  # each class says its own four words 88% of the time
    words = np.stack([rng.multinomial(8, phi[c] / phi[c].sum()) for c in labels]).astype(np.float64)
    child_classes = np.where(rng.random(n) < 0.3, rng.integers(4, size=n), labels)  # ~23% wrong
    onehot = torch.nn.functional.one_hot(torch.as_tensor(child_classes), 4).double()
    return torch.as_tensor(words), onehot, labels, child_classes


def fitted(weights, seed=0):
    words, onehot, labels, child = words_and_a_wrong_child()
    mlda = MLDA(4, weights=weights, category=labels, max_iter=60).connect(
        Observation(words, name="words"), NoisyClasses(4, name="child").connect(Observation(onehot)))
    Graph([mlda]).fit(n_iter=2, seed=seed)
    return mlda, clustering_accuracy(labels, child)


def test_default_weights_let_the_words_correct_a_confident_wrong_child():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default weighting is balanced: no warning
        mlda, child_accuracy = fitted(None)
    # measured: child 0.755; MLDA 0.953 / 0.948 (seeds 0 / 1) by default, 0.755 with the child weighted
    # by 8 (equal to the words) or by 100: the child's mistakes are copied
    assert child_accuracy < 0.8
    assert mlda.accuracy > max(0.9, child_accuracy + 0.15)  # the words, 8 tokens per sample, decide


def test_a_child_weighted_far_above_the_observations_is_copied_and_warned_about():
    with pytest.warns(UserWarning, match=r"mlda\d*: modality 1 \(posterior from child\) has 100 tokens per sample "
                                         r"against 8 for modality 0 \(data from words\)"):
        mlda, child_accuracy = fitted([None, 100])
    assert mlda.accuracy < child_accuracy + 0.05  # the topics follow the child, mistakes included


def test_lopsided_is_more_than_ten_times():
    ten = [torch.full((3, 2), 100), torch.full((3, 1), 20)]  # 200 vs 20 tokens: SERKET's [200, 20], no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_lopsided(ten, ["a", "b"], "m")
    assert LOPSIDED == 10.0
    with pytest.warns(UserWarning, match="m: a has 201 tokens per sample against 20 for b"):
        warn_if_lopsided([torch.tensor([[201]] * 3), torch.tensor([[20]] * 3)], ["a", "b"], "m")


@pytest.mark.slow
def test_the_weightings_example_runs():
    """examples/mlda_weights.py --smoke (600 digits): each weighting trains; full figures in the docs."""
    from example_loader import run_smoke

    scores = run_smoke("mlda_weights")
    assert len(scores) == 4 and all(0.3 < s <= 1.0 for s in scores.values())
