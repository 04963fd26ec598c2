"""The module benchmarks run, and the fast paths they time agree with their references on the benchmark's data.

* ``bench/modules.py --quick`` and ``bench/graph.py --quick`` exit 0 and print their tables (no timing is asserted).
* GMM: EM from the same start as scikit-learn's ``GaussianMixture`` (mean log-likelihood per iteration and
  the means, 1e-6 relative); the blocked GEMM Gaussian and Student-t densities against ``scipy.stats``;
  the rank-one leave-one-out predictive against recomputing each point's component without it.
* HMM: the chunked, scaled forward-backward and the chunked Viterbi against the log-space loops over time
  (random chains, several lengths), and against hmmlearn with the same parameters on the benchmark's
  sequence (log-likelihood, posteriors, Viterbi path, Baum-Welch iterations); the fallback to log space.
* LDA: the binary-search draw equals the comparison count it replaced; kizuna's LDA and the ``lda`` package
  reach the same fit on a benchmark corpus with planted topics.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from kizuna.modules import HMM, LDA
from kizuna.modules import _forward_backward as fb
from kizuna.modules._chain_scan import scaled_forward
from kizuna.modules.gmm import algorithms as algo
from kizuna.modules.gmm.normal_wishart import NormalWishart, gaussian_log_prob
from kizuna.modules.lda.sampler import _draw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from modules import corpus, gmm_data, hmm_data  # noqa: E402

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run_bench(script: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_modules_quick_prints_its_table():
    out = run_bench("modules.py")
    assert "kizuna ms/it" in out and "kizuna slope" in out and "Viterbi decode" in out
    for row in ("GMM    EM iteration", "GMM    Gibbs sweep", "HMM    Baum-Welch iteration (full)",
                "LDA    collapsed Gibbs sweep", "MLDA   collapsed Gibbs sweep"):
        assert row in out


def test_bench_graph_quick_prints_its_table():
    out = run_bench("graph.py")
    assert "vae s" in out and "mlda s" in out and "slope" in out and "share" in out


# ---------------------------------------------------------------------------------------------- GMM
def test_gmm_em_matches_scikit_learn_from_the_same_start():
    from sklearn.mixture import GaussianMixture
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    x = gmm_data(3000)  # three blocks of rows in the blocked scatter and Mahalanobis products
    k, iters = 10, 8
    resp0 = np.eye(k)[np.random.default_rng(0).integers(0, k, len(x))]
    ours = algo.em(torch.as_tensor(x), torch.as_tensor(resp0), iters, -1.0, 1e-6, False)
    weights, means, covs = _estimate_gaussian_parameters(x, resp0, 1e-6, "full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the iteration limit is reached on purpose
        ref = GaussianMixture(k, covariance_type="full", max_iter=iters, tol=0, init_params="random_from_data",
                              weights_init=weights / len(x), means_init=means,
                              precisions_init=np.linalg.inv(covs), random_state=0).fit(x)
    # sklearn's bound after `iters` iterations is the mean log-likelihood under the parameters of its last
    # E step; ours records it after each M step, one iteration earlier
    assert ours.history[iters - 1] == pytest.approx(ref.lower_bound_, rel=1e-6)
    np.testing.assert_allclose(ours.means.numpy(), ref.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.covariances.numpy(), ref.covariances_, rtol=1e-6, atol=1e-8)


def test_blocked_densities_match_scipy():
    x = torch.as_tensor(gmm_data(2000))
    g = torch.Generator().manual_seed(0)
    k, d = 4, x.shape[1]
    roots = torch.randn(k, d, d, generator=g, dtype=F64) * 0.2 + torch.eye(d, dtype=F64)
    covs = roots @ roots.mT
    means = torch.randn(k, d, generator=g, dtype=F64)
    precision_root = algo.precision_root(covs)
    ours = gaussian_log_prob(x, means, precision_root)
    for j in range(k):
        ref = stats.multivariate_normal(means[j].numpy(), covs[j].numpy()).logpdf(x.numpy())
        np.testing.assert_allclose(ours[:, j].numpy(), ref, rtol=1e-10)
    nw = NormalWishart(means, torch.full((k,), 3.0, dtype=F64), torch.full((k,), d + 4.0, dtype=F64), covs * 5)
    lp = nw.log_predictive(x)
    for j in range(k):
        df = float(nw.nu[j]) - d + 1
        shape = covs[j].numpy() * 5 * (3.0 + 1) / (3.0 * df)
        ref = stats.multivariate_t(means[j].numpy(), shape, df=df).logpdf(x.numpy())
        np.testing.assert_allclose(lp[:, j].numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("diagonal", [False, True])
def test_leave_one_out_downdate_matches_recomputing_without_the_point(diagonal):
    """Includes a point alone in its component, 1e4 standard deviations out: the downdate loses its
    precision there and the recomputation from counts takes over."""
    x = torch.as_tensor(gmm_data(400, d=3, k=3))
    x[0] = 1e4
    z = torch.as_tensor(np.random.default_rng(1).integers(0, 3, len(x)))
    z[0], z[1:][z[1:] == 2] = 2, 1
    scale = torch.ones(3, 3, dtype=F64) if diagonal else torch.eye(3, dtype=F64).expand(3, 3, 3)
    prior = NormalWishart(torch.zeros(3, 3, dtype=F64), torch.ones(3, dtype=F64), torch.full((3,), 4.0, dtype=F64),
                          scale.clone())
    fast = algo.collapsed_conditional(x, z, prior, 0.5)
    for n in (0, 1, 2, 57, 399):
        keep = torch.arange(len(x)) != n
        oh = torch.nn.functional.one_hot(z[keep], 3).to(F64)
        counts, sx, sxx = algo.statistics(x[keep], oh, diagonal)
        slow = torch.log(counts + 0.5) + prior.posterior(counts, sx, sxx).log_predictive(x[n:n + 1])[0]
        torch.testing.assert_close(fast[n], slow, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------- HMM
def random_chain(k: int, n: int, seed: int, spread: float = 3.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.log_softmax(torch.randn(k, generator=g, dtype=F64), 0),
            torch.log_softmax(2 * torch.randn(k, k, generator=g, dtype=F64), 1),
            spread * torch.randn(n, k, generator=g, dtype=F64))


def log_space(log_start, log_trans, log_emit, lengths):
    """The loops over time that the chunked recursions replace (kept in `_forward_backward`)."""
    lengths = fb.check_lengths(log_emit.shape[0], lengths, log_emit.device)
    e = fb.pad(log_emit, lengths)
    alpha, pred = fb._forward(log_start, log_trans, e)
    beta = fb._backward(log_trans, e, lengths)
    loglik = torch.logsumexp(fb._last(alpha, lengths), -1)
    gamma = fb.unpad(torch.exp(alpha + beta - loglik[:, None, None]), lengths)
    cavity = pred + beta
    cavity = fb.unpad(torch.softmax(cavity, -1), lengths)
    a, b = alpha[:, :-1], e[:, 1:] + beta[:, 1:]
    valid = (torch.arange(1, e.shape[1]) < lengths[:, None])[..., None, None]
    xi = torch.exp(a[..., :, None] + log_trans + b[..., None, :] - loglik[:, None, None, None])
    return loglik, gamma, cavity, torch.where(valid, xi, 0.0).sum((0, 1))


@pytest.mark.parametrize("lengths", [[1], [2], [9], [300], [4097], [3, 1, 250, 77, 2]])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_chunked_recursions_match_the_loops_over_time(lengths, k):
    log_start, log_trans, log_emit = random_chain(k, sum(lengths), seed=k + len(lengths))
    assert fb._scaled_forward_backward(log_start, log_trans, fb.pad(log_emit, torch.tensor(lengths)),
                                       torch.tensor(lengths)) is not None  # the fast path is the one tested
    sm = fb.forward_backward(log_start, log_trans, log_emit, lengths)
    loglik, gamma, cavity, trans = log_space(log_start, log_trans, log_emit, lengths)
    torch.testing.assert_close(sm.log_likelihood, loglik, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(fb.forward_log_likelihood(log_start, log_trans, log_emit, lengths), loglik,
                               rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(torch.exp(sm.log_gamma), gamma, rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.exp(sm.log_cavity), cavity, rtol=0, atol=1e-9)
    torch.testing.assert_close(sm.trans_counts, trans, rtol=1e-9, atol=1e-9)
    score, path = fb.viterbi(log_start, log_trans, log_emit, lengths)
    ref_score, ref_path = fb.viterbi_loop(log_start, log_trans, log_emit, lengths)
    torch.testing.assert_close(score, ref_score, rtol=1e-12, atol=1e-9)
    assert torch.equal(path, ref_path)


def test_extreme_chains_fall_back_to_log_space():
    """Two states that never switch; 150 steps favour state 0 by 10 nats each (state 1 falls 1,500 nats
    behind, under 1e-308 in linear space), then one step favours state 1 by 1e4 nats, so state 1 is the
    answer. Linear space loses it; the fast path declines and the log-space loops answer, finite and exact."""
    n = 200
    log_start = torch.log(torch.tensor([0.5, 0.5], dtype=F64))
    log_trans = torch.log(torch.eye(2, dtype=F64))
    log_emit = torch.zeros(n, 2, dtype=F64)
    log_emit[:150, 1] = -10.0
    log_emit[150, 0] = -1e4
    lengths = torch.tensor([n])
    assert fb._scaled_forward_backward(log_start, log_trans, log_emit[None], lengths) is None
    assert scaled_forward(log_start.exp(), log_trans.exp(), log_emit[None]) is None
    sm = fb.forward_backward(log_start, log_trans, log_emit)
    loglik, gamma, _, _ = log_space(log_start, log_trans, log_emit, lengths)
    assert float(sm.log_likelihood) == pytest.approx(np.log(0.5) - 1500.0, abs=1e-9)
    torch.testing.assert_close(sm.log_likelihood, loglik)
    torch.testing.assert_close(torch.exp(sm.log_gamma), gamma)
    assert bool((torch.exp(sm.log_gamma[:, 1]) > 0.999).all())
    torch.testing.assert_close(fb.forward_log_likelihood(log_start, log_trans, log_emit), loglik)


def fitted_pair(x: np.ndarray):
    from hmmlearn.hmm import GaussianHMM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = GaussianHMM(8, covariance_type="diag", n_iter=3, random_state=0).fit(x)
    ours = HMM(8, covariance_type="diag", init_params="", n_iter=5, tol=-np.inf)
    ours.startprob_, ours.transmat_, ours.means_ = ref.startprob_, ref.transmat_, ref.means_
    ours.covars_ = ref._covars_  # hmmlearn's covars_ returns full matrices
    return ref, ours


def test_hmm_inference_matches_hmmlearn_on_the_benchmark_sequence():
    x = hmm_data(20_000)
    ref, ours = fitted_pair(x)
    for lengths in (None, [5000, 1, 7999, 7000]):
        assert ours.score(x, lengths) == pytest.approx(ref.score(x, lengths), rel=1e-10)
        np.testing.assert_allclose(ours.predict_proba(x, lengths), ref.predict_proba(x, lengths), atol=1e-8)
        logprob, states = ours.decode(x, lengths)
        ref_logprob, ref_states = ref.decode(x, lengths)
        assert logprob == pytest.approx(ref_logprob, rel=1e-10)
        np.testing.assert_array_equal(states, ref_states)


def test_baum_welch_matches_hmmlearn_on_the_benchmark_sequence():
    from hmmlearn.hmm import GaussianHMM

    x = hmm_data(20_000)
    ref0, ours = fitted_pair(x)
    ref = GaussianHMM(8, covariance_type="diag", n_iter=5, tol=-np.inf, init_params="", random_state=0,
                      covars_prior=0.0)  # hmmlearn adds 1e-2 to every scatter by default; kizuna is plain ML
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = ref0.startprob_, ref0.transmat_, ref0.means_, ref0._covars_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(x)
    ours.fit(x)
    np.testing.assert_allclose(ours.history_, ref.monitor_.history, rtol=1e-10)
    np.testing.assert_allclose(ours.transmat_.numpy(), ref.transmat_, atol=1e-8)
    np.testing.assert_allclose(ours.means_.numpy(), ref.means_, atol=1e-8)


# ---------------------------------------------------------------------------------------------- LDA
def test_binary_search_draw_is_the_comparison_count():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(5000, 12, generator=g) * (torch.rand(5000, 12, generator=g) > 0.3)  # zero-mass topics too
    p[:, 0] += 1e-3
    cdf = p.cumsum(1)
    u = torch.rand(p.shape[0], 1, generator=torch.Generator().manual_seed(1)) * cdf[:, -1:]
    expected = (cdf <= u).sum(1).clamp_max(p.shape[1] - 1)
    assert torch.equal(_draw(p, torch.Generator().manual_seed(1)), expected)


def test_lda_reaches_the_lda_package_fit_on_a_planted_corpus():
    """200 sweeps of each on 400 documents x 50 tokens of 20 planted topics: the plug-in per-token
    log-likelihood of kizuna's (blocked) sampler within 2% of the lda package's (sequential) one."""
    import lda

    x = corpus(400)[0]
    ours = LDA(20, max_iter=200, doc_topic_prior=0.1, topic_word_prior=0.01, random_state=0).fit(x)
    ref = lda.LDA(20, n_iter=200, alpha=0.1, eta=0.01, random_state=0, refresh=10**9).fit(x)

    def per_token(theta: np.ndarray, phi: np.ndarray) -> float:
        return float((x * np.log(theta @ phi)).sum() / x.sum())

    mine = per_token(ours.doc_topic_.numpy(), ours.topic_word_.numpy())
    theirs = per_token(ref.doc_topic_, ref.topic_word_)
    assert mine == pytest.approx(theirs, rel=0.02)
