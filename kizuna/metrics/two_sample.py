r"""Classifier two-sample test (C2ST; Lopez-Paz & Oquab 2017, arXiv:1610.06545).

A classifier is trained to tell ``real`` from ``fake`` rows on part of a balanced sample and scored on the
rest, the split stratified (as many held-out rows of each sample: ``test_size`` of each). If both come from
the same distribution no classifier beats chance, so the held-out accuracy is near 0.5 (1.0: perfectly
distinguishable). Under that null hypothesis
the number of correct held-out predictions is :math:`\mathrm{Binomial}(n_{test}, \frac12)`, which
gives the one-sided p-value :math:`P(\mathrm{Bin}(n_{test}, \frac12) \ge \text{correct})`.
The classifiers come from scikit-learn (an optional dependency, imported when called).
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from kizuna.metrics.clustering import as_numpy


@dataclass(frozen=True)
class TwoSampleResult:
    """Held-out ``accuracy`` (0.5 = indistinguishable), its one-sided ``p_value`` and ``n_test`` rows."""

    accuracy: float
    p_value: float
    n_test: int


def _as_rows(x: Any, name: str) -> np.ndarray:
    x = np.asarray(as_numpy(x), dtype=np.float64)
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"classifier_two_sample_test: {name} needs at least two rows, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if not np.isfinite(x).all():
        raise ValueError(f"classifier_two_sample_test: {name} holds non-finite values")
    return x


def _classifier(kind: Any, seed: int, n_train: int) -> Any:
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("classifier_two_sample_test needs scikit-learn: pip install scikit-learn") from err
    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if kind == "mlp":
        # early stopping on a tenth of the training rows, when that tenth can hold both classes (with fewer than
        # 40 rows scikit-learn's stratified split failed: "the least populated class has only 1 member")
        return make_pipeline(StandardScaler(), MLPClassifier((128, 128), max_iter=300, early_stopping=n_train >= 40,
                                                             random_state=seed))
    if hasattr(kind, "fit") and hasattr(kind, "predict") and not isinstance(kind, type):
        # a fresh copy, trained here: the caller's estimator is left as it was (it was fitted in place)
        from sklearn.base import clone

        try:
            model = clone(kind)
        except TypeError:  # not a scikit-learn estimator (no get_params): a deep copy
            return copy.deepcopy(kind)
        # a random_state left unset (also of a pipeline's steps: "step__random_state") is set to the seed, so the same
        # seed gives the same result; one the caller set is kept
        unset = {key: seed for key, value in model.get_params().items()
                 if (key == "random_state" or key.endswith("__random_state")) and value is None}
        return model.set_params(**unset)
    raise ValueError(f"classifier_two_sample_test: classifier must be 'logistic', 'mlp' or an estimator, got {kind!r}")


def classifier_two_sample_test(real: Any, fake: Any, classifier: Any = "logistic", test_size: float = 0.5,
                               seed: int = 0) -> TwoSampleResult:
    """The C2ST of ``real`` against ``fake`` (module docstring).

    Args:
        real, fake: samples with one row each (tensors or arrays; rows are flattened).
        classifier: ``"logistic"`` (standardised logistic regression), ``"mlp"`` (two hidden layers
            of 128), or a scikit-learn estimator (a copy is trained, by ``sklearn.base.clone``: the estimator given is
            left as it was).
        test_size: the held-out fraction of each sample (at least one row of each is held out, and one kept).
        seed: the seed of the subsampling, the split and the MLP, and the ``random_state`` of a given estimator
            (and of its pipeline steps) where that is ``None``, so that a randomised estimator (e.g. a random forest)
            gives the same result for the same seed; a ``random_state`` the estimator was given is kept. A seed of
            2**32 or more (scikit-learn's limit) reaches the classifier hashed into that range.

    The larger sample is subsampled to the size of the smaller (balanced classes).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> same = classifier_two_sample_test(rng.normal(size=(400, 2)), rng.normal(size=(400, 2)))
    >>> abs(same.accuracy - 0.5) < 0.1, same.p_value > 0.01
    (True, True)
    >>> classifier_two_sample_test(rng.normal(size=(400, 2)), rng.normal(3.0, size=(400, 2))).accuracy > 0.95
    True
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"classifier_two_sample_test: test_size must lie in (0, 1), got {test_size}")
    a, b = _as_rows(real, "real"), _as_rows(fake, "fake")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"classifier_two_sample_test: real has {a.shape[1]} features per row, fake {b.shape[1]}")
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    a, b = a[rng.permutation(len(a))[:n]], b[rng.permutation(len(b))[:n]]
    # a stratified split: as many held-out rows of each sample, the rest to train on (a shuffled, unstratified cut
    # left the two halves leaning towards opposite classes, and a classifier that leans towards its training
    # majority scored 0.47 on average under the null with 20 rows a side, 0.489 with 200)
    per = max(1, min(n - 1, int(round(test_size * n))))
    x_test = np.concatenate([a[:per], b[:per]])
    y_test = np.concatenate([np.ones(per), np.zeros(per)])
    order = rng.permutation(2 * (n - per))
    x_train = np.concatenate([a[per:], b[per:]])[order]
    y_train = np.concatenate([np.ones(n - per), np.zeros(n - per)])[order]
    # scikit-learn takes a random_state below 2**32: a larger seed (numpy's and kizuna's go to 2**64 - 1) is folded
    # into that range by numpy's seed hashing (it failed inside scikit-learn, not naming `seed`); smaller ones as given
    big = isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and int(seed) >= 2**32
    sk_seed = int(np.random.SeedSequence(int(seed)).generate_state(1)[0]) if big else seed  # (None etc. as given)
    model = _classifier(classifier, sk_seed, len(y_train)).fit(x_train, y_train)
    n_test = 2 * per
    correct = int((model.predict(x_test) == y_test).sum())
    p_value = float(stats.binom.sf(correct - 1, n_test, 0.5))
    return TwoSampleResult(accuracy=correct / n_test, p_value=p_value, n_test=n_test)
