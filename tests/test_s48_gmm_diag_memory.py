"""Diagonal-covariance GMM paths a block of rows at a time: memory linear in N×K, the same per-row values.

Review RS (stop 48, F2) measured every diagonal path (EM's M step, `gaussian_log_prob`, `log_predictive` for
gibbs/collapsed/score/predict, `expected_mahalanobis` for VB) forming several N×K×D float64 temporaries: at
D=K=50 about 3 × N·K·D·8 bytes (601 MiB at N=10⁴, ~58 GB at N=10⁶). They now go through `row_blocks` as the
full-covariance paths do. Each row's arithmetic is unchanged (the samplers' draws do not move: checked against
the code before the change, bitwise); the M step's sums over rows change only in their order.
"""

import math

import numpy as np
import pytest
import scipy.stats as st
import torch
from module_checks import needs_peak_rss, peak_memory
from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

from kizuna.modules.gmm import GaussianMixture
from kizuna.modules.gmm import algorithms as algo
from kizuna.modules.gmm import normal_wishart as nwmod
from kizuna.modules.gmm.normal_wishart import NormalWishart, gaussian_log_prob

pytestmark = pytest.mark.usefixtures("one_thread")

PROBE = r"""
from kizuna.modules.gmm import GaussianMixture

n, d, k = 8000, 24, 24  # one N×K×D float64 temporary: 35 MiB (24 N×K arrays); one N×K: 1.5 MiB
rng = np.random.default_rng(0)
x = rng.normal(0, 4, (k, d))[rng.integers(k, size=n)] + rng.normal(size=(n, d))
GaussianMixture(2, covariance_type="diag", max_iter=1).fit(x[:300])  # warm-up
out = {}
for alg in ("em", "vb", "gibbs"):
    gm = GaussianMixture(k, covariance_type="diag", algorithm=alg, max_iter=2, random_state=0)
    out[alg + " fit"] = peak(lambda: gm.fit(x))
    out[alg + " score"] = peak(lambda: gm.score(x))
print(json.dumps({key: value / (n * k * 8) for key, value in out.items()}))
"""


@needs_peak_rss
def test_diag_fit_and_score_peak_memory_is_a_few_n_by_k_arrays():
    copies = peak_memory(PROBE)
    # before: 50-80 N×K arrays (one N×K×D temporary is 24 of them); now about 4 to score and 7-11 to fit (the
    # responsibilities, messages, log-densities, the k-means start, and copies of the N×D data: D = K here)
    assert max(copies.values()) < 16, copies


def _problem(n=1000, d=7, k=5, loc=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = loc + torch.randn(n, d, generator=g, dtype=torch.float64) + 3 * torch.randint(0, k, (n, 1), generator=g)
    m = loc + 3 * torch.arange(k, dtype=torch.float64).unsqueeze(1) + torch.randn(k, d, generator=g,
                                                                                  dtype=torch.float64)
    scale = torch.rand(k, d, generator=g, dtype=torch.float64) + 0.5
    nw = NormalWishart(m, torch.rand(k, generator=g, dtype=torch.float64) + 1,
                       torch.rand(k, generator=g, dtype=torch.float64) + d + 2, scale)
    resp = torch.softmax(2 * torch.randn(n, k, generator=g, dtype=torch.float64), 1)
    return x, nw, resp


def _small_blocks(monkeypatch):
    """Blocks of 256 rows (``row_blocks``' least), and a record of the blocked calls."""
    calls = []

    def spy(n, per_row):
        calls.append((n, per_row))
        return range(0, n, 256)

    monkeypatch.setattr(nwmod, "row_blocks", spy)
    monkeypatch.setattr(algo, "row_blocks", spy)
    return calls


def test_diag_densities_in_small_blocks_are_the_unblocked_values_bitwise(monkeypatch):
    x, nw, _ = _problem()
    prec = nw.nu.unsqueeze(-1) / nw.scale
    # the unblocked computations (the code before stop 48's change), every row at once
    diff = x.unsqueeze(-2) - nw.m
    want_glp = 0.5 * (torch.log(prec).sum(-1) - (diff**2 * prec).sum(-1) - x.shape[1] * math.log(2 * math.pi))
    want_em = nw.dim / nw.kappa + ((diff**2) * prec).sum(-1)
    df = nw.nu.unsqueeze(-1)
    scale2 = nw.scale * (nw.kappa.unsqueeze(-1) + 1) / (nw.kappa.unsqueeze(-1) * df)
    want_lp = (torch.lgamma((df + 1) / 2) - torch.lgamma(df / 2) - 0.5 * torch.log(df * math.pi * scale2)
               - (df + 1) / 2 * torch.log1p(diff**2 / (scale2 * df))).sum(-1)
    calls = _small_blocks(monkeypatch)
    got = gaussian_log_prob(x, nw.m, prec), nw.expected_mahalanobis(x), nw.log_predictive(x)
    assert calls == [(1000, 35)] * 3  # each went through the blocks (4, the last one partial)
    for g, w in zip(got, (want_glp, want_em, want_lp)):
        assert torch.equal(g, w)
    # and the densities themselves: scipy's normal and Student-t
    xs, m, s2 = x.numpy()[:, None, :], nw.m.numpy(), scale2.numpy()
    ref_glp = st.norm.logpdf(xs, m, 1 / np.sqrt(prec.numpy())).sum(-1)
    ref_lp = st.t.logpdf(xs, df.numpy(), m, np.sqrt(s2)).sum(-1)
    np.testing.assert_allclose(got[0].numpy(), ref_glp, rtol=1e-13)
    np.testing.assert_allclose(got[2].numpy(), ref_lp, rtol=1e-13)


@pytest.mark.parametrize("low", ["x", "params"])
def test_diag_densities_with_mixed_dtypes_are_the_out_of_place_values(monkeypatch, low):
    # the in-place work on the differences computes in the dtype the out-of-place expressions promote to
    x, nw, _ = _problem(n=600)
    prec = nw.nu.unsqueeze(-1) / nw.scale
    if low == "x":
        x = x.float()
    else:
        nw, prec = NormalWishart(*(t.float() for t in (nw.m, nw.kappa, nw.nu, nw.scale))), prec.float()
    diff = x.unsqueeze(-2) - nw.m
    want_glp = 0.5 * (torch.log(prec).sum(-1) - (diff**2 * prec).sum(-1) - x.shape[1] * math.log(2 * math.pi))
    df = nw.nu.unsqueeze(-1)
    scale2 = nw.scale * (nw.kappa.unsqueeze(-1) + 1) / (nw.kappa.unsqueeze(-1) * df)
    want_lp = (torch.lgamma((df + 1) / 2) - torch.lgamma(df / 2) - 0.5 * torch.log(df * math.pi * scale2)
               - (df + 1) / 2 * torch.log1p(diff**2 / (scale2 * df))).sum(-1)
    _small_blocks(monkeypatch)
    got_glp, got_lp = gaussian_log_prob(x, nw.m, prec), nw.log_predictive(x)
    assert got_glp.dtype == got_lp.dtype == torch.float64
    assert torch.equal(got_glp, want_glp) and torch.equal(got_lp, want_lp)


@pytest.mark.parametrize("loc", [0.0, 1e4])
def test_diag_m_step_in_small_blocks_matches_the_weighted_variances(monkeypatch, loc):
    x, _, resp = _problem(loc=loc)
    calls = _small_blocks(monkeypatch)
    weights, means, cov = algo._em_m_step(x, resp, True, 1e-6)
    assert calls == [(1000, 35)]
    xn, r = x.numpy(), resp.numpy()
    for j in range(r.shape[1]):  # the two-pass weighted variance, component by component
        mu = np.average(xn, axis=0, weights=r[:, j])
        np.testing.assert_allclose(cov[j].numpy(), np.average((xn - mu) ** 2, axis=0, weights=r[:, j]) + 1e-6,
                                   rtol=1e-12)
    if loc == 0.0:  # scikit-learn's expansion of the squares is exact enough only near the origin
        nk, sk_means, sk_cov = _estimate_gaussian_parameters(xn, r, 1e-6, "diag")
        np.testing.assert_allclose(weights.numpy(), nk / len(xn), rtol=1e-13)
        np.testing.assert_allclose(means.numpy(), sk_means, rtol=1e-13)
        np.testing.assert_allclose(cov.numpy(), sk_cov, rtol=1e-12)


@pytest.mark.parametrize("alg", ["gibbs", "collapsed", "vb", "em"])
def test_diag_fits_in_small_blocks_are_those_in_one_block(monkeypatch, alg):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (4, 6))[rng.integers(4, size=700)] + rng.normal(size=(700, 6))

    def fit():
        gm = GaussianMixture(4, covariance_type="diag", algorithm=alg, max_iter=4, random_state=3).fit(x)
        return gm, gm.predict_proba(x), gm.score_samples(x)

    one, p1, s1 = fit()
    calls = _small_blocks(monkeypatch)
    small, p2, s2 = fit()
    assert calls and all(n == 700 for n, _ in calls)
    if alg == "em":  # the M step's sums over rows in another order
        np.testing.assert_allclose(small.covariances_, one.covariances_, rtol=1e-13)
        np.testing.assert_allclose(p2, p1, rtol=1e-10, atol=1e-300)
        np.testing.assert_allclose(s2, s1, rtol=1e-13)
    else:  # the samplers' and VB's values row by row, so the same draws
        np.testing.assert_array_equal(small.covariances_, one.covariances_)
        np.testing.assert_array_equal(small.means_, one.means_)
        np.testing.assert_array_equal(p2, p1)
        np.testing.assert_array_equal(s2, s1)
