"""GMM module: scikit-learn references, closed forms (Student-t predictive, marginal likelihood),
exact enumeration of the Gibbs sampler's target, EM monotonicity, sampler moments, messages.

Statistical checks use fixed seeds and state their false-alarm rates.
"""

import itertools
import math

import numpy as np
import pytest
import scipy.stats as st
import torch
from module_checks import PriorSource
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import BayesianGaussianMixture, GaussianMixture
from torch.nn import functional as F

from kizuna._distances import kmeans
from kizuna.modules import GMM, VAE, Observation
from kizuna.modules.gmm import algorithms as algo
from kizuna.modules.gmm.normal_wishart import NormalWishart

torch.set_num_threads(1)
X, Y = make_blobs(600, n_features=3, centers=4, cluster_std=1.5, random_state=1)


def nw_prior(k, d, diagonal=False, nu=None, dtype=torch.float64):
    scale = torch.ones(k, d, dtype=dtype) if diagonal else torch.eye(d, dtype=dtype).expand(k, d, d).clone()
    return NormalWishart(torch.zeros(k, d, dtype=dtype), torch.ones(k, dtype=dtype),
                         torch.full((k,), float(nu or d + 1), dtype=dtype), scale)


def stats(x, z, k, diagonal=False):
    return algo.statistics(x, F.one_hot(z, k).double(), diagonal)


# ----------------------------------------------------------------------------- scikit-learn
@pytest.mark.parametrize("algorithm", ["gibbs", "vb", "em"])
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_matches_sklearn_on_blobs(algorithm, covariance_type):
    ours = GMM(4, algorithm=algorithm, covariance_type=covariance_type, random_state=0).fit(X)
    if algorithm == "em":
        ref = GaussianMixture(4, covariance_type=covariance_type, random_state=0).fit(X)
    else:
        ref = BayesianGaussianMixture(n_components=4, covariance_type=covariance_type, max_iter=500,
                                      random_state=0).fit(X)
    ari, ref_ari = adjusted_rand_score(Y, ours.predict(X)), adjusted_rand_score(Y, ref.predict(X))
    print(f"{algorithm}/{covariance_type}: ARI {ari:.3f} (sklearn {ref_ari:.3f}), "
          f"mean log-likelihood {ours.score(X):.3f} (sklearn {ref.score(X):.3f})")
    assert ari >= ref_ari - 0.02
    # mean log-likelihood per sample: EM reaches the same optimum as scikit-learn (0.01 nats);
    # the Bayesian modes score with the posterior predictive, not sklearn's point estimate (0.1 nats)
    tol = 0.01 if algorithm == "em" else 0.1
    assert abs(ours.score(X) - ref.score(X)) < tol
    proba = ours.predict_proba(X)
    assert isinstance(proba, np.ndarray) and np.allclose(proba.sum(1), 1)
    assert np.isclose(ours.weights_.sum(), 1) and ours.means_.shape == (4, 3)
    assert np.allclose(ours.score_samples(X).mean(), ours.score(X))
    assert torch.is_tensor(ours.predict(torch.as_tensor(X)))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # it stops at max_iter on purpose
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_em_parameters_equal_sklearn_with_a_large_reg_covar(covariance_type):
    """EM's M step and its iterations against scikit-learn's own, from the same responsibilities, with reg_covar 0.1
    (large enough that leaving it out, or adding it twice, moves the covariances far beyond rounding): one M step
    against ``_estimate_gaussian_parameters`` to 1e-12, and 20 iterations against ``GaussianMixture`` started from
    the same parameters to 1e-8 (the score alone at 0.01 nats could not see it)."""
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    x = torch.as_tensor(X)
    resp = F.one_hot(kmeans(x, 4, torch.Generator().manual_seed(0))[1], 4).double()
    one = algo.em(x, resp, 0, 0.0, 0.1, covariance_type == "diag")
    nk, means, covs = _estimate_gaussian_parameters(X, resp.numpy(), 0.1, covariance_type)
    np.testing.assert_allclose(one.weights.numpy(), nk / len(X), rtol=1e-12)
    np.testing.assert_allclose(one.means.numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(one.covariances.numpy(), covs, rtol=1e-12)
    ours = algo.em(x, resp, 20, 0.0, 0.1, covariance_type == "diag")
    ref = GaussianMixture(4, covariance_type=covariance_type, reg_covar=0.1, max_iter=20, tol=0.0,
                          weights_init=nk / len(X), means_init=means,
                          precisions_init=_precisions(covs, covariance_type)).fit(X)
    np.testing.assert_allclose(ours.means.numpy(), ref.means_, rtol=1e-8)
    np.testing.assert_allclose(ours.covariances.numpy(), ref.covariances_, rtol=1e-8)


def _precisions(covs: np.ndarray, covariance_type: str) -> np.ndarray:
    return 1.0 / covs if covariance_type == "diag" else np.linalg.inv(covs)


def test_em_objective_never_decreases_with_and_without_a_class_prior():
    x = torch.as_tensor(X)
    resp = F.one_hot(kmeans(x, 5, torch.Generator().manual_seed(0))[1], 5).double()
    prior = torch.distributions.Dirichlet(torch.ones(5)).sample((600,)).double()
    for pi_msg in (None, prior):
        for diagonal in (False, True):
            fit = algo.em(x, resp, 200, 0.0, 1e-6, diagonal, algo.ClassPrior(pi_msg))
            steps = np.diff(fit.history)
            assert len(steps) > 5 and steps.min() >= -1e-9, steps.min()
    em = GMM(4, algorithm="em", random_state=0, tol=1e-12, max_iter=300).fit(X)
    assert em.fitted_.history[-1] == pytest.approx(em.score(X), abs=1e-8)


@pytest.mark.parametrize("algorithm", ["gibbs", "collapsed", "vb", "em"])
def test_fit_predict_is_fit_then_predict(algorithm):
    """scikit-learn's contract: ``fit_predict(X)`` equals ``fit(X).predict(X)``. For the samplers the chain's last
    responsibilities leave each point out of its own component; they disagreed with ``predict`` on 1 to 3 of 80
    points near the boundary (seeds 0, 2, 4 for gibbs), so ``fit_predict`` is ``predict`` of the fit."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1.2, 1, (40, 2)), rng.normal(1.2, 1, (40, 2))])
    for seed in range(5):
        a = GMM(2, algorithm=algorithm, random_state=seed, max_iter=30).fit_predict(x)
        b = GMM(2, algorithm=algorithm, random_state=seed, max_iter=30).fit(x).predict(x)
        assert np.array_equal(a, b), (seed, np.nonzero(a != b))


def test_a_singular_covariance_names_reg_covar():
    x = np.repeat(np.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]]), 5, axis=0)  # three points, five copies each
    with pytest.raises(ValueError, match=r"not positive definite .*reg_covar"):
        GMM(3, algorithm="em", reg_covar=0.0, random_state=0).fit(x)
    assert GMM(3, algorithm="em", reg_covar=1e-6, random_state=0).fit(x).score(x) > 0  # kept positive definite


def test_a_zero_diagonal_variance_names_reg_covar():
    """Diagonal covariances with ``reg_covar=0``: a component left empty or with one point has variance 0, whose
    precision 1/0 made every density NaN (weights_ NaN, score NaN, no error) where full covariances raise."""

    x = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(ValueError, match=r"not positive definite .*reg_covar"):
        GMM(4, algorithm="em", covariance_type="diag", reg_covar=0.0, init_params="random", random_state=0).fit(x)
    xt = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    resp = torch.nn.functional.one_hot(torch.zeros(10, dtype=torch.long), 2).double()  # component 1 empty
    with pytest.raises(ValueError, match=r"component\(s\) \[1\] is not positive definite"):
        algo.em(xt, resp, 3, 0.0, 0.0, True)
    fitted = GMM(4, algorithm="em", covariance_type="diag", reg_covar=1e-6, init_params="random",
                 random_state=0).fit(x)
    assert np.isfinite(fitted.score(x))


@pytest.mark.parametrize("algorithm", ["gibbs", "vb"])
def test_dependent_features_at_a_large_scale_name_the_cause(algorithm):
    """A duplicated feature of values near 1e4: the prior's reg_covar (1e-6) is lost to rounding in the Normal-Wishart
    posterior's scale, whose Cholesky factorisation then raised a raw LinAlgError; the same data standardised fits."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1)) * 1e4
    x = np.hstack([x, x, rng.normal(size=(200, 1))])
    with pytest.raises(ValueError, match=r"posterior scale S_N is not positive definite in float64 .*linearly "
                                         r"dependent .*reg_covar=1e-06 is lost to rounding; standardise"):
        GMM(2, algorithm=algorithm, random_state=0).fit(x)
    standardised = (x - x.mean(0)) / x.std(0)
    assert np.isfinite(GMM(2, algorithm=algorithm, random_state=0).fit(standardised).score(standardised))


# ----------------------------------------------------------------------------- closed forms
def test_predictive_is_the_student_t_and_the_marginal_likelihood_ratio():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(25, 3, generator=g, dtype=torch.float64)
    z = torch.randint(0, 2, (25,), generator=g)
    prior = nw_prior(2, 3)
    counts, sx, sxx = stats(x, z, 2)
    post = prior.posterior(counts, sx, sxx)
    new = torch.randn(6, 3, generator=g, dtype=torch.float64)
    lp = post.log_predictive(new)
    for k in range(2):
        df = (post.nu[k] - 3 + 1).item()
        shape = (post.scale[k] * (post.kappa[k] + 1) / (post.kappa[k] * df)).numpy()
        ref = st.multivariate_t(loc=post.m[k].numpy(), shape=shape, df=df).logpdf(new.numpy())
        np.testing.assert_allclose(lp[:, k].numpy(), ref, rtol=1e-10)
        # log p(x | X_k) = log p(X_k + x) - log p(X_k), by the marginal likelihood
        xk = torch.cat([x[z == k], new[:1]])
        bigger = prior.posterior(*algo.statistics(xk, torch.ones(len(xk), 1, dtype=torch.float64).expand(-1, 2), False))
        ratio = bigger.log_marginal(prior, torch.full((2,), float(len(xk)), dtype=torch.float64))[k] \
            - post.log_marginal(prior, counts)[k]
        assert ratio.item() == pytest.approx(lp[0, k].item(), abs=1e-10)


def test_diagonal_predictive_is_a_product_of_student_t():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 2, generator=g, dtype=torch.float64)
    z = torch.randint(0, 2, (20,), generator=g)
    post = nw_prior(2, 2, diagonal=True, nu=2).posterior(*stats(x, z, 2, diagonal=True))
    new = torch.randn(5, 2, generator=g, dtype=torch.float64)
    lp = post.log_predictive(new)
    for k in range(2):
        df = post.nu[k].item()
        scale = torch.sqrt(post.scale[k] * (post.kappa[k] + 1) / (post.kappa[k] * df)).numpy()
        ref = st.t(df, loc=post.m[k].numpy(), scale=scale).logpdf(new.numpy()).sum(1)
        np.testing.assert_allclose(lp[:, k].numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("diagonal", [False, True])
def test_collapsed_conditional_against_leaving_each_point_out(diagonal):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 2, generator=g, dtype=torch.float64)
    z = torch.randint(0, 3, (12,), generator=g)
    prior = nw_prior(3, 2, diagonal=diagonal)
    fast = algo.collapsed_conditional(x, z, prior, 0.5)
    for n in range(12):  # brute force: recompute every component's statistics without x_n
        keep = torch.arange(12) != n
        counts, sx, sxx = stats(x[keep], z[keep], 3, diagonal)
        slow = torch.log(counts + 0.5) + prior.posterior(counts, sx, sxx).log_predictive(x[n:n + 1])[0]
        torch.testing.assert_close(fast[n], slow, rtol=1e-10, atol=1e-10)


def test_normal_wishart_sampler_moments():
    prior = nw_prior(2, 3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    post = prior.posterior(*stats(x, torch.randint(0, 2, (30,), generator=g), 2))
    draws = [post.sample(g) for _ in range(3000)]
    mus = torch.stack([d[0] for d in draws])
    lams = torch.stack([d[1] @ d[1].transpose(-1, -2) for d in draws])
    # Monte-Carlo means within 4.5 standard errors (false-alarm rate ~7e-6 per entry)
    for sample, expected in ((mus, post.m), (lams, post.mean_precision())):
        se = sample.std(0) / math.sqrt(len(sample))
        assert ((sample.mean(0) - expected).abs() <= 4.5 * se + 1e-12).all()


def test_blocked_gibbs_targets_the_exact_posterior_over_assignments():
    """Three points, two classes and a class-prior message: the chain's assignment frequencies
    against the posterior enumerated over all 2^3 labelings (collapsed marginal likelihoods)."""
    x = torch.tensor([[-1.0], [-0.6], [1.2]], dtype=torch.float64)
    msg = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.2, 0.8]], dtype=torch.float64)
    prior, alpha0 = nw_prior(2, 1, nu=2), 1.0
    labelings = list(itertools.product([0, 1], repeat=3))
    log_post = []
    for lab in labelings:
        z = torch.tensor(lab)
        counts, sx, sxx = stats(x, z, 2)
        log_dm = (torch.lgamma(counts + alpha0) - math.lgamma(alpha0)).sum() + math.lgamma(2 * alpha0) \
            - math.lgamma(3 + 2 * alpha0)
        log_lik = prior.posterior(counts, sx, sxx).log_marginal(prior, counts).sum()
        log_post.append(log_dm + log_lik + torch.log(msg[torch.arange(3), z]).sum())
    exact = torch.softmax(torch.stack(log_post), 0)
    g = torch.Generator().manual_seed(5)
    z, trace = torch.zeros(3, dtype=torch.long), []
    for it in range(1600):
        z = algo.gibbs_sweep(x, prior, alpha0, z, algo.ClassPrior(msg), g)
        if it >= 100:
            trace.append(int(z[0] * 4 + z[1] * 2 + z[2]))
    visits = F.one_hot(torch.tensor(trace), 8).double().reshape(15, 100, 8).mean(1)  # 15 batch means
    se = visits.std(0) / math.sqrt(15)
    # batch-means z-test, 4.5 standard errors + 0.01 for the residual autocorrelation of batches
    assert ((visits.mean(0) - exact).abs() <= 4.5 * se + 0.01).all(), (visits.mean(0), exact)


def test_sample_moments_match_the_mixture():
    gmm = GMM(3, algorithm="em", random_state=0).fit(X)
    w, mu, cov = (torch.as_tensor(a) for a in (gmm.weights_, gmm.means_, gmm.covariances_))
    xs, ys = gmm.sample(20000)
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    total_cov = second - mean[:, None] * mean[None, :]
    se = torch.sqrt(torch.diagonal(total_cov) / 20000)
    assert ((xs.mean(0) - mean).abs() <= 4.5 * se).all()  # false-alarm rate ~7e-6 per coordinate
    centred = (xs - xs.mean(0)).unsqueeze(2) * (xs - xs.mean(0)).unsqueeze(1)
    se_cov = centred.std(0) / math.sqrt(20000)
    assert ((centred.mean(0) - total_cov).abs() <= 4.5 * se_cov + 1e-3).all()
    counts = torch.bincount(ys, minlength=3).double()
    assert st.chisquare(counts.numpy(), (20000 * w).numpy()).pvalue > 1e-3


# ----------------------------------------------------------------------------- messages
@pytest.mark.parametrize("algorithm", ["gibbs", "vb", "em"])
def test_the_parent_prior_steers_assignments_and_is_not_sent_back_up(algorithm):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 2, generator=g)  # one blob: only the prior can split it
    target = torch.arange(80) % 2
    prior = torch.where(F.one_hot(target, 2).bool(), 0.99, 0.01)
    gmm = GMM(2, algorithm=algorithm, max_iter=20, random_state=0, category=target).connect(Observation(x))
    top = PriorSource(prior).connect(gmm)
    gmm.update()
    top.update()
    gmm.update()
    assert gmm.accuracy == 1.0
    up = gmm.forward_message.value
    assert (up - gmm.posterior).abs().max() > 0.3  # the forward message is the GMM's own evidence


def test_prior_mean_goes_down_to_a_vae_child():
    x = torch.rand(40, 6)
    vae = VAE(2, hidden=(8,), epochs=1, batch_size=20)
    gmm = GMM(2, max_iter=5, random_state=0).connect(vae.connect(Observation(x)))
    vae.update()
    gmm.update()
    msg = vae.backward_in
    assert msg.kind == "prior_mean" and msg.sender == gmm.name and msg.value.shape == (40, 2)
    torch.testing.assert_close(msg.value, torch.as_tensor(gmm.means_, dtype=msg.value.dtype)[gmm.classes])


def test_errors():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        GMM(2, algorithm="gibbs-sampling")
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        GMM(2, covariance_type="tied")
    with pytest.raises(ValueError, match="positive int"):
        GMM(0)
    with pytest.raises(RuntimeError, match="not fitted yet"):
        GMM(2).predict(X)
    with pytest.raises(ValueError, match="3 samples for 4 components"):
        GMM(4).fit(X[:3])
    with pytest.raises(ValueError, match=r"GMM gmm: X contains NaN at row 0, column 0"):
        GMM(2).fit(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="X has 2 features, but GMM gmm is expecting 3 features"):
        GMM(2, algorithm="em").fit(X).predict(X[:, :2])
    with pytest.raises(ValueError, match=r"mean_prior must have shape \(3,\)"):
        GMM(2, mean_prior=[0.0, 0.0]).fit(X)
    with pytest.raises(ValueError, match="degrees_of_freedom_prior must be finite and exceed D - 1 = 2"):
        GMM(2, degrees_of_freedom_prior=1.5).fit(X)
    gmm = GMM(2, category=[0, 1]).connect(Observation(X))
    with pytest.raises(ValueError, match="category has 2 labels but the data has 600 samples"):
        gmm.update()


def test_random_state_makes_fits_identical():
    a = GMM(3, random_state=7, max_iter=10).fit(X).predict_proba(X)
    gmm = GMM(3, random_state=7, max_iter=10)
    gmm.fit(X[:300])
    np.testing.assert_array_equal(gmm.fit(X).predict_proba(X), a)


@pytest.mark.parametrize("algorithm", ["gibbs", "em"])
def test_n_init_keeps_the_start_of_highest_score(algorithm):
    """``n_init`` runs from consecutive initial partitions drawn from one generator; the one kept is the
    run of highest `start_score` among the same runs made one at a time, and that score is the
    pseudo-log-likelihood computed independently from its ``own``."""
    from kizuna.modules.gmm.estimator import start_score

    x = torch.as_tensor(make_blobs(240, centers=6, cluster_std=2.5, random_state=3)[0], dtype=torch.float64)
    kept = GMM(6, algorithm=algorithm, max_iter=8, n_init=5, random_state=11).fit(x)
    single = GMM(6, algorithm=algorithm, max_iter=8, random_state=11)
    gen = torch.Generator().manual_seed(11)
    runs = [single._from(x, single._initial(x, gen), single._prior(x), 8, algo.NO_PARENT, gen) for _ in range(5)]
    scores = [float(sum(math.log(sum(math.exp(v) for v in row)) for row in r.own.tolist())) for r in runs]
    assert len({round(s, 6) for s in scores}) > 1  # the starts differ, so the choice matters
    best = runs[int(np.argmax(scores))]
    torch.testing.assert_close(kept.fitted_.means, best.means)
    assert start_score(kept.fitted_) == pytest.approx(max(scores), rel=1e-9)
    assert GMM(6, algorithm=algorithm, max_iter=8, n_init=1, random_state=11).fit(x).fitted_.own.shape == (240, 6)


def test_n_init_is_a_scikit_learn_parameter_and_checked():
    assert GMM(3, n_init=4).get_params()["n_init"] == 4
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="n_init must be a positive int"):
            GMM(2, n_init=bad)


def test_priors_and_tolerance_out_of_range_are_named() -> None:
    """A Dirichlet concentration <= 0 is no distribution (Gibbs failed later, VB fitted an improper prior silently, the
    collapsed sampler named x); a covariance prior that is not positive definite, and a negative tol, are named too."""
    import numpy as np

    from kizuna.modules import GaussianMixture

    X = np.random.default_rng(0).normal(size=(20, 2))
    for algorithm in ("gibbs", "vb", "collapsed"):
        with pytest.raises(ValueError, match="weight_concentration_prior must be > 0"):
            GaussianMixture(2, algorithm=algorithm, weight_concentration_prior=0.0).fit(X)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        GaussianMixture(2, tol=-1.0).fit(X)
    with pytest.raises(ValueError, match="covariance_prior must be positive definite"):
        GaussianMixture(2, covariance_prior=np.array([[1.0, 2.0], [2.0, 1.0]])).fit(X)
    with pytest.raises(ValueError, match=r"covariance_prior must be positive definite \(every entry > 0\)"):
        GaussianMixture(2, covariance_type="diag", covariance_prior=np.array([1.0, -1.0])).fit(X)
    # non-finite priors: a NaN diagonal covariance prior passed `<= 0` and the VB fit gave NaN weights and scores
    # silently; the others ended in raw Cholesky or sampler errors that named no parameter
    for kwargs, named in (({"covariance_type": "diag", "covariance_prior": [np.nan, 1.0]}, "covariance_prior"),
                          ({"covariance_type": "diag", "covariance_prior": [np.inf, 1.0]}, "covariance_prior"),
                          ({"mean_prior": [np.nan, 0.0]}, "mean_prior"),
                          ({"degrees_of_freedom_prior": np.nan}, "degrees_of_freedom_prior"),
                          ({"mean_precision_prior": np.inf}, "mean_precision_prior"),
                          ({"weight_concentration_prior": np.inf}, "weight_concentration_prior")):
        with pytest.raises(ValueError, match=named):
            GaussianMixture(2, algorithm="vb", random_state=0, **kwargs).fit(X)


def test_counts_take_numpy_integers_and_max_iter_is_an_integer() -> None:
    """GridSearchCV over np.arange(1, 4) failed ("n_components must be a positive int, got np.int64(1)"); max_iter=5.0
    failed inside range() and None in a comparison."""
    from sklearn.model_selection import GridSearchCV

    from kizuna.modules import GaussianMixture

    X = np.random.default_rng(0).normal(size=(60, 2))
    search = GridSearchCV(GaussianMixture(algorithm="em", random_state=0), {"n_components": np.arange(1, 4)}, cv=2,
                          error_score="raise").fit(X)
    assert search.best_params_["n_components"] in (1, 2, 3)
    small = GaussianMixture(np.int64(2), n_init=np.int64(2), max_iter=np.int64(3), algorithm="em").fit(X)
    assert small.predict(X).shape == (60,)
    for bad in (5.0, None, 0):
        with pytest.raises(ValueError, match=rf"max_iter must be a positive int, got {bad!r}"):
            GaussianMixture(2, max_iter=bad).fit(X)


@pytest.mark.parametrize("algorithm", ["vb", "gibbs", "collapsed"])
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_a_constant_feature_without_reg_covar_is_named_by_the_bayesian_fits(algorithm, covariance_type):
    """The prior's scale is the data's covariance plus reg_covar: a constant feature with reg_covar=0 made it
    singular and the Bayesian fits gave NaN posteriors silently (vb, collapsed) or raw errors (a Cholesky, "class
    weights must be finite"); EM names it, and now these do, naming the feature. With reg_covar > 0 they fit."""
    from kizuna.modules.gmm.estimator import GaussianMixture

    x = np.c_[np.random.default_rng(0).normal(size=20), np.ones(20)]
    with pytest.raises(ValueError, match=r"feature\(s\) \[1\] have zero variance; set reg_covar > 0"):
        GaussianMixture(2, algorithm=algorithm, covariance_type=covariance_type, reg_covar=0, random_state=0).fit(x)
    fitted = GaussianMixture(2, algorithm=algorithm, covariance_type=covariance_type, reg_covar=1e-3,
                             random_state=0, max_iter=20).fit(x)
    assert np.isfinite(fitted.score(x))


def test_gaussian_mixture_samples_a_numpy_integer_count():
    from kizuna.modules.gmm.estimator import GaussianMixture

    g = GaussianMixture(2, random_state=0).fit(np.random.default_rng(0).normal(size=(50, 2)))
    assert g.sample(np.int64(5))[0].shape == (5, 2)


def test_em_reads_no_prior_and_is_not_refused_for_one():
    """The check of the Bayesian fits' prior scale refused EM too, which reads no prior (a single row or a constant
    feature with reg_covar=0 fitted before); EM fits them as before, its means the data's (one row: the row)."""
    from kizuna.modules.gmm.estimator import GaussianMixture

    one = np.array([[0.3, -1.2]])
    g = GaussianMixture(1, algorithm="em", reg_covar=0, random_state=0).fit(one)
    np.testing.assert_allclose(np.asarray(g.means_), one)
