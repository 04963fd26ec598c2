"""Stop 43, area H: Dirichlet draws with tiny concentrations, and EM's iteration count against scikit-learn.

* ``sample_dirichlet`` normalised Gamma draws that underflow to 0 for tiny concentrations (about half of them at
  1e-3 in float64); a row whose draws all underflowed went to the largest concentration, component 0 under a
  symmetric prior (mean share 0.41 instead of 1/3). It now normalises in log space. Checked: the means against
  :math:`\\alpha_k / \\sum\\alpha` within 5 standard errors measured from the draws (``mc_reference``), and the
  marginal of component 0 against ``scipy.stats.beta`` by a KS test (false-alarm rate 1e-3).
* ``GaussianMixture(algorithm="em", max_iter=n)`` returned scikit-learn's parameters after n - 1 iterations (none
  at all for n = 1). It now runs scikit-learn's initial M step and then n E and M steps: the same parameters, to
  rounding, from the same initial responsibilities, with the same ``n_iter_`` and ``converged_``.
"""

import warnings

import numpy as np
import pytest
import scipy.stats as st
import torch
from mc_reference import assert_mc_close, standard_error
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from kizuna.modules.gmm import GaussianMixture
from kizuna.modules.rng import generator_for, sample_dirichlet, sample_gamma
from kizuna.modules.validation import as_matrix

torch.set_num_threads(1)
N_DRAWS = 60000
FALSE_ALARM = 1e-3


# ----------------------------------------------------------------------------- sample_dirichlet
@pytest.mark.parametrize("alpha, dtype", [
    ([1e-3] * 3, torch.float64),             # symmetric, tiny: the old draws gave component 0 a mean of 0.407
    ([2e-3, 1e-3, 5e-4], torch.float64),     # tiny, not symmetric: rows that underflowed went to component 0
    ([0.01] * 4, torch.float32),             # float32 underflows at larger concentrations
    ([0.5, 2.0, 3.5], torch.float64),        # ordinary
    ([0.3, 1.0, 5.0], torch.float32),
])
def test_sample_dirichlet_means_are_alpha_over_its_sum(alpha, dtype):
    a = torch.tensor(alpha, dtype=dtype)
    theta = sample_dirichlet(a.expand(N_DRAWS, -1), torch.Generator().manual_seed(0))
    assert theta.dtype == dtype and torch.isfinite(theta).all()
    assert torch.allclose(theta.sum(-1).double(), torch.ones(N_DRAWS, dtype=torch.float64), atol=1e-5)
    theta = theta.double()
    assert_mc_close(theta.mean(0), (a / a.sum()).double(), standard_error(theta), what=f"mean of Dir({alpha})")


def _ks_pvalue_inside(x: np.ndarray, cdf, lo: float, hi: float) -> float:
    """KS p-value of ``x`` against ``cdf``, the statistic taken over the sample points in ``[lo, hi]`` only (where
    float64 resolves a small-concentration Dirichlet's draws: with 1e-3 a third of them lie below 1e-300 or within
    1e-16 of 1, and round to 0 or 1; with 0.05 still 0.8% round to 1, a tie that the plain KS test counts as a 0.008
    gap, its critical value at 60,000 draws). A supremum over fewer points is at most the full statistic, so ``kstwo``'s
    p-value is conservative: under the law the test fails at most as often as the false-alarm rate."""
    x = np.sort(x)
    n = len(x)
    inside = np.unique(x[(x >= lo) & (x <= hi)])
    below = np.searchsorted(x, inside, side="left") / n  # empirical CDF just before each point
    upto = np.searchsorted(x, inside, side="right") / n  # ... and at it
    f = cdf(inside)
    d = max(np.abs(upto - f).max(), np.abs(below - f).max())
    return float(st.kstwo(n).sf(d))


@pytest.mark.parametrize("alpha", [[1e-3] * 3, [2e-3, 1e-3, 5e-4], [0.05] * 3, [0.5, 2.0, 3.5]])
def test_sample_dirichlet_marginal_of_component_0_is_scipys_beta(alpha):
    a = torch.tensor(alpha, dtype=torch.float64)
    theta0 = sample_dirichlet(a.expand(N_DRAWS, -1), torch.Generator().manual_seed(1))[:, 0].numpy()
    beta = st.beta(alpha[0], sum(alpha) - alpha[0])
    p = _ks_pvalue_inside(theta0, beta.cdf, 1e-250, 1 - 1e-12)
    assert p > FALSE_ALARM, f"Dir({alpha}): component 0 against Beta: KS p-value {p:.3g}"


def test_sample_dirichlet_keeps_the_gamma_stream_for_ordinary_concentrations():
    """The same draws from the generator as ``sample_gamma`` (then normalised), equal to rounding where nothing
    underflows, so seeded runs with ordinary concentrations keep their numbers; and ``sample_log_gamma`` is the log of
    ``sample_gamma``'s draws."""
    from kizuna.modules.rng import sample_log_gamma

    a = torch.tensor([0.05, 0.5, 2.0, 7.0], dtype=torch.float64).expand(5000, -1)
    gamma = sample_gamma(a, torch.Generator().manual_seed(3))
    theta = sample_dirichlet(a, torch.Generator().manual_seed(3))
    torch.testing.assert_close(theta, gamma / gamma.sum(-1, keepdim=True), rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(sample_log_gamma(a, torch.Generator().manual_seed(3)), torch.log(gamma),
                               rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- EM against scikit-learn
_RNG = np.random.default_rng(1)
X = np.concatenate([_RNG.normal(-1, 1, (60, 2)), _RNG.normal(1.5, 0.7, (60, 2)), _RNG.normal([0, 3], 0.5, (30, 2))])


def _both(covariance_type: str, max_iter: int, tol: float):
    """kizuna's EM fit and scikit-learn's from kizuna's initial responsibilities (``_initialize`` is what
    scikit-learn's own initialisation calls with its k-means responsibilities)."""
    ours = GaussianMixture(3, algorithm="em", covariance_type=covariance_type, max_iter=max_iter, tol=tol,
                           random_state=0)
    start = ours._initial(as_matrix(X, "X", "t"), generator_for(0)).numpy()
    ours.fit(X)
    ref = SklearnGaussianMixture(3, covariance_type=covariance_type, max_iter=max_iter, tol=tol, reg_covar=1e-6)
    ref._initialize_parameters = lambda x, random_state, **kw: ref._initialize(x, start.copy(), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: short runs on purpose
        ref.fit(X)
    return ours, ref


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("max_iter", [1, 2, 5])
def test_em_max_iter_gives_scikit_learns_parameters_after_as_many_iterations(covariance_type, max_iter):
    ours, ref = _both(covariance_type, max_iter, tol=0.0)
    assert (ours.n_iter_, ours.converged_) == (ref.n_iter_, ref.converged_) == (max_iter, False)
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=0, atol=1e-12)
    # lower_bound_ is the returned model's mean log-likelihood; scikit-learn's is the model's before its last M
    # step, so EM (which never lowers it) puts ours at or above it
    assert ours.lower_bound_ == pytest.approx(ours.score(X), abs=1e-12)
    assert ours.lower_bound_ >= ref.lower_bound_ - 1e-12


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_em_stops_converged_after_scikit_learns_iterations(covariance_type, tol):
    ours, ref = _both(covariance_type, 200, tol)
    assert ref.converged_ and 2 < ref.n_iter_ < 200
    assert (ours.n_iter_, ours.converged_) == (ref.n_iter_, True)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=0, atol=1e-12)
    assert ours.lower_bound_ == pytest.approx(ours.score(X), abs=1e-12)
