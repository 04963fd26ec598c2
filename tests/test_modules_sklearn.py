"""The classical modules speak scikit-learn: its estimator checks, ``get_params`` / ``set_params``, ``clone``
and ``GridSearchCV`` on the estimators and on the graph nodes built on them.

``check_estimator`` runs on the three estimators whose input is one array: `GaussianMixture`,
`LatentDirichletAllocation` and `HiddenMarkovModel`. Excluded, with the reason:

* HMM: ``fit(X, lengths)``, ``score(X, lengths)``, ... take hmmlearn's sequence lengths second, where the
  checks pass labels ``y``: the checks run on a subclass whose second argument is ignored (one sequence);
* HMM ``check_methods_subset_invariance`` and ``check_methods_sample_order_invariance``: an HMM scores and
  decodes a *sequence*; each step's result depends on its neighbours, and ``score_samples`` is hmmlearn's
  ``(log p(X), posteriors)`` of the whole sequence, not one score per row;
* `MultimodalLDA`, `MarkovChain`: not run. Their ``X`` is a list of matrices (one per modality), resp. class
  evidence whose rows are one sequence; `LatentDirichletAllocation` is the one-modality MLDA and runs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from kizuna import modules as km
from kizuna.modules import GaussianMixture, HiddenMarkovModel, LatentDirichletAllocation

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class SequenceHMM(HiddenMarkovModel):
    """`HiddenMarkovModel` with scikit-learn's ``fit(X, y=None)``: one sequence, ``y`` ignored (see above)."""

    def fit(self, X, y=None):
        return super().fit(X)

    def score(self, X, y=None):
        return super().score(X)


HMM_EXCLUDED = {
    "check_methods_subset_invariance": "an HMM's result for a step depends on its neighbours in the sequence",
    "check_methods_sample_order_invariance": "score_samples is hmmlearn's (log p(X), posteriors) of a sequence",
}


def expected_failures(estimator):
    return HMM_EXCLUDED if isinstance(estimator, SequenceHMM) else {}


with warnings.catch_warnings():  # "does not inherit from BaseEstimator": by design (scikit-learn is optional)
    warnings.simplefilter("ignore", UserWarning)
    CHECKS = parametrize_with_checks([GaussianMixture(2, max_iter=20, random_state=0),
                                      LatentDirichletAllocation(3, max_iter=4, n_blocks=4, random_state=0),
                                      SequenceHMM(2, n_iter=5, random_state=0)],
                                     expected_failed_checks=expected_failures)


@CHECKS
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


NODES = [lambda: km.GMM(3, category=np.arange(10) % 2, max_iter=5, name="g"),
         lambda: km.MLDA(3, [200, 20], max_iter=5), lambda: km.LDA(4, weight=50.0),
         lambda: km.HMM(2, covariance_type="full", lengths=[5, 5]), lambda: km.MM(alpha=0.5, lengths=[4, 6])]


@pytest.mark.parametrize("make", NODES, ids=["gmm", "mlda", "lda", "hmm", "mm"])
def test_nodes_have_real_get_params_set_params_and_clone(make):
    node = make()
    params = node.get_params()
    twin = clone(node)
    assert type(twin) is type(node) and twin is not node and twin.children == [] and twin.posterior is None
    for key, value in twin.get_params().items():
        assert value is params[key] or np.array_equal(value, params[key]), key
    assert node.set_params(random_state=7) is node and node.get_params()["random_state"] == 7
    with pytest.raises(ValueError, match="Invalid parameter 'colour'"):
        node.set_params(colour="red")


def test_grid_search_selects_the_number_of_components_of_a_gmm():
    x, _ = make_blobs(300, n_features=2, centers=4, cluster_std=0.6, random_state=3)
    search = GridSearchCV(km.GMM(2, algorithm="em", random_state=0), {"n_components": [2, 3, 4]}, cv=3).fit(x)
    assert search.best_params_ == {"n_components": 4}
    assert isinstance(search.best_estimator_, km.GMM) and search.best_estimator_.posterior.shape == (300, 4)
    vb = GridSearchCV(GaussianMixture(algorithm="vb", random_state=0), {"n_components": [1, 4]}, cv=3).fit(x)
    assert vb.best_params_ == {"n_components": 4}


@pytest.mark.parametrize("make", NODES, ids=["gmm", "mlda", "lda", "hmm", "mm"])
def test_get_params_gives_the_name_the_user_passed(make):
    """scikit-learn's own check reads each parameter back after construction; a graph's numbering is not a name."""
    from sklearn.utils.estimator_checks import check_parameters_default_constructible

    node = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_parameters_default_constructible(type(node).__name__, node)
    assert node.get_params()["name"] == ("g" if node.named else None)
    with pytest.raises(ValueError, match="name must be a non-empty string, got ''"):
        node.set_params(name="")


def test_clones_of_numbered_modules_are_numbered_again():
    x = np.random.default_rng(0).random((20, 3))
    a, b = km.GMM(2), km.GMM(2)
    km.Graph([km.MLDA(2).connect(a.connect(km.Observation(x)), b.connect(km.Observation(x)))])
    assert (a.name, b.name) == ("gmm0", "gmm1") and a.get_params()["name"] is None
    c, d = clone(a), clone(b)
    assert not c.named and c.name == "gmm"
    km.Graph([km.MLDA(2).connect(c.connect(km.Observation(x)), d.connect(km.Observation(x)))])
    assert (c.name, d.name) == ("gmm0", "gmm1")
    named = clone(km.GMM(2, name="left"))
    assert named.named and named.name == "left" and named.get_params()["name"] == "left"
    assert named.set_params(name=None).name == "gmm" and not named.named


def test_gaussian_mixture_reports_iterations_convergence_and_em_bound_as_scikit_learn():
    """``n_iter_``, ``converged_`` and (EM) ``lower_bound_``, scikit-learn's names: EM to convergence reaches
    scikit-learn's bound on well-separated blobs, and it is the model's mean log-likelihood (``score``);
    a run cut short says it did not converge; the samplers have no convergence test (None); the Bayesian
    algorithms have no bound (an AttributeError naming why); a graph node's saved state keeps them."""
    from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

    x, _ = make_blobs(300, centers=3, random_state=0)
    em = GaussianMixture(3, algorithm="em", max_iter=500, tol=1e-8, random_state=0).fit(x)
    ref = SklearnGaussianMixture(3, max_iter=500, tol=1e-8, random_state=0).fit(x)
    assert em.converged_ is True and 1 < em.n_iter_ < 500 and ref.converged_
    assert abs(em.lower_bound_ - ref.lower_bound_) < 1e-6
    assert abs(em.lower_bound_ - em.score(x)) < 1e-9
    short = GaussianMixture(3, algorithm="em", max_iter=2, random_state=0).fit(x)
    assert (short.n_iter_, short.converged_) == (2, False)
    vb = GaussianMixture(3, algorithm="vb", max_iter=500, random_state=0).fit(x)
    assert vb.converged_ is True and 1 <= vb.n_iter_ < 500
    assert not hasattr(vb, "lower_bound_")
    with pytest.raises(AttributeError, match="does not compute a bound"):
        vb.lower_bound_  # noqa: B018
    assert GaussianMixture(3, algorithm="vb", max_iter=1, tol=0.0, random_state=0).fit(x).converged_ is False
    for algorithm in ("gibbs", "collapsed"):
        g = GaussianMixture(3, algorithm=algorithm, max_iter=7, random_state=0).fit(x)
        assert (g.n_iter_, g.converged_) == (7, None)
    node = km.GMM(3, algorithm="em", max_iter=4, random_state=0).fit(x)
    twin = km.GMM(3, algorithm="em", max_iter=4, random_state=0)
    twin.load_state_dict(node.state_dict())
    assert (twin.n_iter_, twin.converged_, twin.lower_bound_) == (node.n_iter_, node.converged_, node.lower_bound_)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "0", True])
def test_random_state_outside_torch_seeds_is_named(seed):
    """2**64 failed in torch's manual_seed ("Overflow when unpacking long long") without naming random_state."""
    with pytest.raises(ValueError, match=r"random_state must be None, an int in \[0, 2\*\*64\) or a torch.Generator"):
        GaussianMixture(2, random_state=seed).fit(np.random.default_rng(0).random((10, 2)))
    assert GaussianMixture(2, random_state=2**64 - 1).fit(np.random.default_rng(0).random((10, 2))).n_iter_ == 100
