"""Diagonal-covariance EM from its GEMM forms (stop 50): scikit-learn's numbers, and the two-pass ones where the
expansion of the squares would lose them.

Stop 50 (GMMPERF) moved `algorithms.em`'s diagonal M and E steps onto two GEMMs of the data centred at its mean
(``_em_m_step_diag``, ``_em_log_joint_diag``) and one pass of exponentials for the posterior and the objective; it
was 2.4-3.3x scikit-learn's time per iteration (bench/README.md). A component whose variance cancels by more than
three digits (or, at large N, where the GEMM's rounding of its length-N sums would exceed 1e-10 of it), or whose
log-densities could be off by more than 1e-10 (a worst-case bound, growing with D), goes through the two-pass forms
(``_diag_scatter``, ``gaussian_log_prob``) as before, with its mean corrected by the same pass (review R3 of
7e36a73: the fallback kept the centred sums' mean, good only to about eps times its distance from the data's mean;
the E step's check had no factor for D; the M step's none for N). The references: scikit-learn's
``GaussianMixture`` from the same start (``weights_init``, ``means_init``, ``precisions_init``), a two-pass EM
written out in numpy / scipy below (``_reference_em``) and longdouble two-pass steps. (scikit-learn has ``tied``
and ``spherical`` covariances too; kizuna's GMM has only ``full`` and ``diag``, so those have nothing to be checked
against.)
"""

import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st
import torch
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters
from torch.nn import functional as F

from kizuna.modules.gmm import GaussianMixture
from kizuna.modules.gmm import algorithms as algo
from kizuna.modules.rng import generator_for

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]  # max_iter on purpose


def _blobs(n=1500, d=6, k=4, seed=0, spread=3.0, scale=1.0, loc=0.0):
    """Points of K blobs (unit-ish, unequal variances per dimension) around means N(0, spread^2), times ``scale``."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, spread, (k, d))
    sd = rng.uniform(0.5, 1.5, (k, d))
    z = rng.integers(k, size=n)
    return loc + scale * (means[z] + sd[z] * rng.normal(size=(n, d)))


def _start(x, k, seed):
    g = torch.Generator().manual_seed(seed)
    return F.one_hot(torch.randint(k, (len(x),), generator=g), k).double()


def _reference_em(x, resp, n_iter, reg_covar, log_msg=None, mixing=True):
    """Two-pass EM in numpy / scipy: (weights, means, variances, objectives after each M step, final posterior)."""
    history = []
    for _ in range(n_iter + 1):
        counts = resp.sum(0) + 10 * np.finfo(float).eps
        means = resp.T @ x / counts[:, None]
        var = np.stack([resp[:, j] @ (x - means[j]) ** 2 for j in range(len(means))]) / counts[:, None] + reg_covar
        own = st.norm.logpdf(x[:, None, :], means, np.sqrt(var)).sum(-1)
        if mixing:
            own = own + np.log(counts / len(x))
        joint = own if log_msg is None else own + log_msg
        history.append(sp.logsumexp(joint, 1).mean())
        resp = np.exp(joint - sp.logsumexp(joint, 1, keepdims=True))
    return counts / len(x), means, var, history, resp


def _counting(monkeypatch):
    """Calls of the two-pass forms inside `algorithms.em`: the components each call took."""
    calls = {"log_prob": [], "scatter": []}
    log_prob, scatter = algo.gaussian_log_prob, algo._diag_scatter

    def counted_log_prob(x, means, precision):
        calls["log_prob"].append(means.shape[0])
        return log_prob(x, means, precision)

    def counted_scatter(x, resp, means, **kwargs):
        calls["scatter"].append(means.shape[0])
        return scatter(x, resp, means, **kwargs)

    monkeypatch.setattr(algo, "gaussian_log_prob", counted_log_prob)
    monkeypatch.setattr(algo, "_diag_scatter", counted_scatter)
    return calls


@pytest.mark.parametrize("reg_covar", [1e-6, 0.1])
@pytest.mark.parametrize("n_iter", [1, 3, 6])
def test_diag_em_equals_sklearn_from_the_same_start(monkeypatch, n_iter, reg_covar):
    """``max_iter=n`` from the same start as scikit-learn's ``GaussianMixture(max_iter=n)`` started from the initial
    M step's parameters: the parameters and both log-likelihoods to 1e-10 relative, by the GEMM forms alone."""
    x = _blobs()
    resp = _start(x, 4, 1)
    nk, means, covs = _estimate_gaussian_parameters(x, resp.numpy(), reg_covar, "diag")
    calls = _counting(monkeypatch)
    ours = algo.em(torch.as_tensor(x), resp, n_iter, 0.0, reg_covar, True)
    assert calls == {"log_prob": [], "scatter": []}  # well-scaled data: the fast path throughout
    ref = SkGaussianMixture(4, covariance_type="diag", reg_covar=reg_covar, max_iter=n_iter, tol=0.0,
                            weights_init=nk / len(x), means_init=means, precisions_init=1 / covs).fit(x)
    assert ours.n_iter == ref.n_iter_ == n_iter
    np.testing.assert_allclose(ours.weights.numpy(), ref.weights_, rtol=1e-10)
    np.testing.assert_allclose(ours.means.numpy(), ref.means_, rtol=1e-10)
    np.testing.assert_allclose(ours.covariances.numpy(), ref.covariances_, rtol=1e-10)
    # scikit-learn's lower_bound_ is the objective before its last M step; score(X) that of the returned model
    assert ours.history[-2] == pytest.approx(ref.lower_bound_, rel=1e-10, abs=0)
    assert ours.history[-1] == pytest.approx(ref.score(x), rel=1e-10, abs=0)
    np.testing.assert_allclose(ours.resp.numpy(), ref.predict_proba(x), rtol=1e-9, atol=1e-12)


def test_diag_estimator_fit_equals_the_two_pass_em():
    """The estimator (its own k-means start) against the two-pass reference from that start: the parameters,
    lower_bound_ and score(X) to 1e-10."""
    x = _blobs(n=2000, d=5, k=3, seed=4)
    gm = GaussianMixture(3, algorithm="em", covariance_type="diag", max_iter=5, tol=0.0, random_state=0).fit(x)
    xt = torch.as_tensor(x)
    start = gm._initial(xt, generator_for(0, xt.device)).numpy()  # the fit's one-hot start
    weights, means, var, history, _ = _reference_em(x, start, 5, gm.reg_covar)
    np.testing.assert_allclose(gm.covariances_, var, rtol=1e-10)
    np.testing.assert_allclose(gm.means_, means, rtol=1e-10)
    np.testing.assert_allclose(gm.weights_, weights, rtol=1e-10)
    assert gm.lower_bound_ == pytest.approx(history[-1], rel=1e-10, abs=0)
    assert gm.score(x) == pytest.approx(history[-1], rel=1e-10, abs=0)


@pytest.mark.parametrize("prior", [None, "mixing", "no mixing"])
def test_diag_em_equals_the_two_pass_em_with_and_without_a_class_prior(prior):
    """Six iterations against the two-pass reference: without a parent, with a parent's class prior (the
    posterior then from ``ClassPrior.posterior``), and as a parent's emission model (no mixing weights)."""
    x = _blobs(n=1200, d=7, k=5, seed=2)
    resp = _start(x, 5, 3)
    probs = None
    if prior is not None:
        probs = torch.distributions.Dirichlet(torch.ones(5)).sample((len(x),)).double()
    parent = algo.ClassPrior(probs, mixing=prior != "no mixing")
    ours = algo.em(torch.as_tensor(x), resp, 6, 0.0, 1e-6, True, parent)
    log_msg = None if probs is None else np.log(probs.numpy())
    weights, means, var, history, post = _reference_em(x, resp.numpy(), 6, 1e-6, log_msg, parent.mixing)
    np.testing.assert_allclose(ours.weights.numpy(), weights, rtol=1e-10)
    np.testing.assert_allclose(ours.means.numpy(), means, rtol=1e-10)
    np.testing.assert_allclose(ours.covariances.numpy(), var, rtol=1e-10)
    np.testing.assert_allclose(ours.history, history, rtol=1e-10)
    np.testing.assert_allclose(ours.resp.numpy(), post, rtol=1e-9, atol=1e-12)


def test_diag_em_far_tight_blobs_go_through_the_two_pass_forms(monkeypatch):
    """Two unit blobs at -1e4 and +1e4 and a wide one between them: once the components separate, a tight one's
    variance would cancel by eight digits in E[x^2] - E[x]^2 (scikit-learn's form), and its log-densities lose as
    many. Those components go through the two-pass forms, the wide one not: the values are the
    two-pass reference's to 1e-10 (scikit-learn's expansion is off here by up to ~1e-8 relative)."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(-1e4, 1, (300, 3)), rng.normal(1e4, 1, (300, 3)), rng.normal(0, 1e4, (300, 3))])
    resp = torch.as_tensor(np.repeat(np.eye(3), 300, axis=0))  # a start with the blobs already apart
    calls = _counting(monkeypatch)
    ours = algo.em(torch.as_tensor(x), resp, 4, 0.0, 1e-6, True)
    assert calls["log_prob"] == [2] * 5  # the tight components in every E step (the initial M step's, 4 iterations')
    assert calls["scatter"] and max(calls["scatter"]) < 3  # the tight components alone
    weights, means, var, history, post = _reference_em(x, resp.numpy(), 4, 1e-6)
    np.testing.assert_allclose(ours.covariances.numpy(), var, rtol=1e-10)
    np.testing.assert_allclose(ours.means.numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(ours.weights.numpy(), weights, rtol=1e-12)
    np.testing.assert_allclose(ours.history, history, rtol=1e-12)
    np.testing.assert_allclose(ours.resp.numpy(), post, rtol=1e-9, atol=1e-12)


def test_diag_em_with_an_empty_component_is_the_two_pass_em():
    """A component no point starts in (data away from the origin): its mean is 0 and its variance reg_covar, as in
    `_em_m_step` and scikit-learn (``resp.T @ x / (counts + 10 eps)``), not the data's mean the centring is at; it
    stays empty, and everything else is the two-pass reference's."""
    x = _blobs(n=800, d=4, k=3, seed=6, loc=5.0)
    resp = _start(x, 3, 0)
    resp = torch.cat([resp, torch.zeros(len(x), 1, dtype=torch.float64)], 1)
    ours = algo.em(torch.as_tensor(x), resp, 3, 0.0, 1e-6, True)
    weights, means, var, history, post = _reference_em(x, resp.numpy(), 3, 1e-6)
    assert torch.equal(ours.means[3], torch.zeros(4, dtype=torch.float64))
    np.testing.assert_allclose(ours.covariances[3].numpy(), 1e-6, rtol=1e-12)
    np.testing.assert_allclose(ours.weights.numpy(), weights, rtol=1e-10)
    np.testing.assert_allclose(ours.means.numpy(), means, rtol=1e-10)
    np.testing.assert_allclose(ours.covariances.numpy(), var, rtol=1e-10)
    np.testing.assert_allclose(ours.history, history, rtol=1e-10)
    np.testing.assert_allclose(ours.resp.numpy(), post, rtol=1e-9, atol=1e-12)
    nk, sk_means, sk_cov = _estimate_gaussian_parameters(x, resp.numpy(), 1e-6, "diag")
    first = algo.em(torch.as_tensor(x), resp, 0, 0.0, 1e-6, True)
    np.testing.assert_allclose(first.means.numpy(), sk_means, rtol=1e-12)
    np.testing.assert_allclose(first.covariances.numpy(), sk_cov, rtol=1e-10)


def test_diag_m_step_fast_form_equals_the_two_pass_m_step():
    """`_em_m_step_diag` and `_em_m_step` (two-pass) from the same responsibilities, on data far from the origin
    (1e4: the centring keeps the expansion exact) and near it, to 1e-12."""
    for loc in (0.0, 1e4):
        x = torch.as_tensor(_blobs(n=900, seed=3, loc=loc))
        resp = torch.softmax(2 * torch.randn(900, 4, generator=torch.Generator().manual_seed(0),
                                             dtype=torch.float64), 1)
        fast = algo._em_m_step_diag(x, algo._CentredData(x), resp, 1e-6)
        slow = algo._em_m_step(x, resp, True, 1e-6)
        for f, s in zip(fast, slow):
            np.testing.assert_allclose(f.numpy(), s.numpy(), rtol=1e-12)


def _longdouble_m_step(x, resp):
    """Two-pass means ``resp.T @ x / counts`` and variances (reg_covar 0) in 80-bit longdouble, from the data centred
    at ``x[0]`` (exact for float64 data). The variances are the scatter about each component's own weighted mean
    (``sum r x / sum r``): the means' 10 eps in the counts (an empty component's guard) is no spread of the data."""
    x, r = np.asarray(x, np.longdouble), np.asarray(resp, np.longdouble)
    xc = x - x[0]
    ten_eps = np.longdouble(10 * np.finfo(float).eps)
    counts = r.sum(0) + ten_eps
    mc = (r.T @ xc - ten_eps * x[0]) / counts[:, None]  # sum r x / counts - x[0]: counts' 10 eps moves it at 1e8
    own = (r.T @ xc) / r.sum(0)[:, None]
    var = np.stack([r[:, j] @ (xc - own[j]) ** 2 for j in range(r.shape[1])]) / counts[:, None]
    return mc + x[0], var


def _longdouble_log_joint(x, weights, means, cov):
    """log w_k + log N(x_n | m_k, diag(cov_k)) in longdouble, with the float64 precisions ``1 / cov``."""
    x, m = np.asarray(x, np.longdouble), np.asarray(means, np.longdouble)
    prec = np.asarray(1.0 / np.asarray(cov), np.longdouble)
    maha = np.stack([((x - m[j]) ** 2 * prec[j]).sum(1) for j in range(len(m))], 1)
    return 0.5 * (np.log(prec).sum(1) - maha - x.shape[1] * np.log(2 * np.longdouble(np.pi))) + np.log(
        np.asarray(weights, np.longdouble))


def test_diag_em_narrow_component_far_from_the_data_mean_keeps_its_two_pass_mean():
    """A component 1e-12 wide at 0 beside one at 1e4, reg_covar=0 (R3 finding 1): it goes through the two-pass
    scatter, whose mean must be ``resp.T @ x / counts`` (the reference's -2.7e-14), not the centred sums' mean, good
    only to ulp(5e3) ~ 1e-12 (7e36a73: -2.8e-12, a variance 8.5 times too large, lower bound 11.195 for 11.729)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([1e-12 * rng.normal(size=(500, 1)), 1e4 + rng.normal(size=(500, 1))])
    resp = torch.as_tensor(np.repeat(np.eye(2), 500, 0))
    ours = algo.em(torch.as_tensor(x), resp, 2, 0.0, 0.0, True)
    weights, means, var, history, post = _reference_em(x, resp.numpy(), 2, 0.0)
    np.testing.assert_allclose(ours.means.numpy(), means, rtol=1e-10)
    np.testing.assert_allclose(ours.covariances.numpy(), var, rtol=1e-10)
    np.testing.assert_allclose(ours.history, history, rtol=1e-12)
    np.testing.assert_allclose(ours.resp.numpy(), post, rtol=1e-9, atol=1e-12)


def test_diag_m_step_mean_correction_keeps_offset_data_exact():
    """The fallback's mean correction sums ``x - mean`` (not ``x``): at an offset of 1e8, with two components of
    width 1e-6 forced through the two-pass scatter, the variances are the longdouble reference's to 1e-12 and the
    means to rounding (``resp.T @ x / counts``, the old code's form, is off there by a factor of hundreds)."""
    rng = np.random.default_rng(2)
    n = 2000
    x = 1e8 + np.concatenate([1e-6 * rng.normal(size=(n, 2)), 1.0 + 1e-6 * rng.normal(size=(n, 2))])
    resp = np.repeat(np.eye(2), n, 0)
    xt = torch.as_tensor(x)
    _, means, var = algo._em_m_step_diag(xt, algo._CentredData(xt), torch.as_tensor(resp), 0.0)
    ref_means, ref_var = _longdouble_m_step(x, resp)
    np.testing.assert_allclose(var.numpy(), ref_var.astype(float), rtol=1e-12)
    np.testing.assert_allclose(means.numpy(), ref_means.astype(float), rtol=2e-16, atol=0)


def test_diag_m_step_criterion_grows_with_n():
    """R3 finding 3: a component whose scatter is 1.1e-3 of its centred sum of squares (three digits cancelled, just
    under the cut) at N = 2e6: the GEMM's rounding of the length-N sums, times 900, was 2e-11 of the variance in
    7e36a73 (1e-12 at N = 2e4); the criterion's sqrt(N) eps term sends it through the two-pass scatter: the
    longdouble reference's variance to 1e-13."""
    rng = np.random.default_rng(1)
    n, d = 10**6, 4
    x = np.concatenate([30 + rng.normal(size=(n, d)), -30 + rng.normal(size=(n, d))])
    resp = np.zeros((2 * n, 2))
    resp[:n, 0] = resp[n:, 1] = 1
    xt = torch.as_tensor(x)
    _, _, var = algo._em_m_step_diag(xt, algo._CentredData(xt), torch.as_tensor(resp), 0.0)
    _, ref_var = _longdouble_m_step(x, resp)
    np.testing.assert_allclose(var.numpy(), ref_var.astype(float), rtol=1e-13)


def _e_step_case(d, bound, alike=False):
    """R3's E-step case: points around +-a (a ~ const) and components at +-a with unit variances, ``a`` scaled so
    that ``bound(a)``, the quantity a check compares with its threshold, is 0.95 of it; ``alike``: every feature's
    ``a`` the same (R5: the roundings of equal terms line up)."""
    rng = np.random.default_rng(1)
    a2 = np.full(d, rng.uniform(0.5, 1.5)) if alike else rng.uniform(0.5, 1.5, d)
    a = np.sqrt(a2 * 0.95 / bound(a2))
    x = np.concatenate([a + 1e-3 * rng.normal(size=(2000, d)), -a + 1e-3 * rng.normal(size=(2000, d))])
    return x, np.stack([a, -a]), np.ones((2, d)), np.array([0.5, 0.5])


@pytest.mark.parametrize("d", [32, 128, 512])
@pytest.mark.parametrize("alike", [False, True], ids=["features differ", "features alike"])
def test_diag_e_step_error_check_grows_with_d(monkeypatch, d, alike):
    """R3 finding 2, R4 finding 3, R5 finding 1: the check is the worst-case bound of the length-(2D+1) dot products,
    (2D+3) eps sum p (c^2 + reach), compared with 1e-9 (7e36a73's 2 eps sum ... against 1e-11 let 2.5e-11 / 3.9e-11
    errors through at D = 32 / 128; a sqrt(2D+3) estimate against 1e-10 let 2.6e-10 through where every feature
    repeats one value). On adversarial points (terms of one sign; ``alike``: every feature the same) at 0.95 of the
    bound the fast path is taken and within it of the longdouble values; at 1.05 both components take the two-pass
    form."""
    eps = np.finfo(float).eps
    factor = (2 * d + 3) * eps / algo._E_ABS_ERROR
    for scale, fallback in ((0.95, []), (1.05, [2])):
        x, means, cov, weights = _e_step_case(d, lambda a2, s=scale: 2 * factor * a2.sum() * 0.95 / s, alike)
        calls = _counting(monkeypatch)
        xt = torch.as_tensor(x)
        own = algo._em_log_joint_diag(xt, algo._CentredData(xt), torch.as_tensor(weights), torch.as_tensor(means),
                                      torch.as_tensor(cov))
        err = np.abs(np.asarray(own.numpy(), np.longdouble) - _longdouble_log_joint(x, weights, means, cov)).max()
        assert float(err) < algo._E_ABS_ERROR
        assert calls["log_prob"] == fallback


@pytest.mark.parametrize("weight", [1e-20, 1e-14, 1e-12])
def test_diag_m_step_near_empty_corrected_component_is_the_two_pass_variance(weight):
    """R5 finding 2: a 1e-12-wide component at 0 with responsibilities ``weight`` (a total of about 10 eps or less),
    beside a unit one at 1e4, reg_covar 0: its corrected scatter was taken about a mean without the count's 10 eps,
    which there moves the stored mean by about its size (relative errors 2.7e-3 / 8.8e-6 / 4.0e-6 of the variance);
    now the two-pass M step's variance (`_em_m_step`) to 1e-12."""
    rng = np.random.default_rng(0)
    x = np.concatenate([1e-12 * rng.normal(size=(500, 2)), 1e4 + rng.normal(size=(500, 2))])
    resp = np.zeros((1000, 2))
    resp[500:, 0] = 1
    resp[:500, 1] = weight
    xt, rt = torch.as_tensor(x), torch.as_tensor(resp)
    _, means, var = algo._em_m_step_diag(xt, algo._CentredData(xt), rt, 0.0)
    _, means2, var2 = algo._em_m_step(xt, rt, True, 0.0)
    np.testing.assert_allclose(var[1].numpy(), var2[1].numpy(), rtol=1e-12)
    np.testing.assert_allclose(means[1].numpy(), means2[1].numpy(), rtol=1e-12)


def test_diag_m_step_equal_points_at_an_offset_have_zero_variance():
    """R4 finding 2: 1000 equal points at 1e8 beside a spread component (reg_covar 0): the mean correction took the
    counts' 10 eps for spread (variance 4.9e-20, and EM went on); the variance is 0 and `em` refuses it as the
    two-pass EM does (not positive definite)."""
    rng = np.random.default_rng(3)
    h, d = 1000, 2
    x = np.concatenate([1e8 + np.zeros((h, d)), 1e8 + 1e4 + rng.normal(size=(h, d))])
    r = np.zeros((2 * h, 2))
    r[:h, 0] = r[h:, 1] = 1
    xt, rt = torch.as_tensor(x), torch.as_tensor(r)
    _, means, var = algo._em_m_step_diag(xt, algo._CentredData(xt), rt, 0.0)
    assert var[0].tolist() == [0.0, 0.0] and means[0].tolist() == [1e8, 1e8]
    with pytest.raises(ValueError, match="not positive definite"):
        algo.em(xt, rt, 2, 0.0, 0.0, True)
