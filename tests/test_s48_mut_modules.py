"""Stop 48 mutation review (MC): reference-checked tests of the classical modules' numbers.

Each test checks kizuna against an independent reference (enumeration over every state path or assignment,
scipy.stats, scikit-learn, closed forms). Each one was written to kill a mutant that the suite let survive
(see /work/exp/s48/MC_report.md).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import digamma, gammaln, logsumexp

import kizuna.modules._forward_backward as fb

torch.set_num_threads(1)


# ------------------------------------------------------------------ discrete chains: enumeration references
def _chain(seed: int, k: int = 3):
    g = np.random.default_rng(seed)
    start = g.dirichlet(np.ones(k))
    trans = g.dirichlet(np.ones(k), size=k)  # not symmetric: a transposed A gives other numbers
    return start, trans


def _enumerate(start, trans, emit):
    """Joint log p(x, z) of every path z of one sequence (T, K log-emissions)."""
    t, k = emit.shape
    paths = list(itertools.product(range(k), repeat=t))
    logp = np.array([np.log(start[z[0]]) + emit[0, z[0]] + sum(np.log(trans[z[i - 1], z[i]]) + emit[i, z[i]]
                                                              for i in range(1, t)) for z in paths])
    return np.array(paths), logp


def _reference(start, trans, emit):
    """(log p(x), gamma (T, K), cavity p(z_t | x_{-t}) (T, K), expected transitions (K, K), start counts (K,))."""
    t, k = emit.shape
    paths, logp = _enumerate(start, trans, emit)
    ll = logsumexp(logp)
    post = np.exp(logp - ll)
    gamma = np.zeros((t, k))
    xi = np.zeros((k, k))
    for z, p in zip(paths, post):
        gamma[np.arange(t), z] += p
        for i in range(1, t):
            xi[z[i - 1], z[i]] += p
    cavity = np.zeros((t, k))
    for s in range(t):  # the joint without step s's emission
        lp = logp - emit[s, paths[:, s]]
        w = np.exp(lp - logsumexp(lp))
        for j in range(k):
            cavity[s, j] = w[paths[:, s] == j].sum()
    return ll, gamma, cavity, xi, gamma[0]


def _sequences(seed: int, lengths, k: int = 3):
    g = np.random.default_rng(seed)
    return [g.normal(size=(n, k)) * 2.0 for n in lengths]


def _check_smoothed(sm, start, trans, emits):
    rows = 0
    xi_total, start_total = 0.0, 0.0
    for b, emit in enumerate(emits):
        ll, gamma, cavity, xi, s0 = _reference(start, trans, emit)
        n = emit.shape[0]
        np.testing.assert_allclose(sm.log_likelihood[b].item(), ll, rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.exp(sm.log_gamma[rows:rows + n].numpy()), gamma, atol=1e-9)
        np.testing.assert_allclose(np.exp(sm.log_cavity[rows:rows + n].numpy()), cavity, atol=1e-9)
        xi_total, start_total, rows = xi_total + xi, start_total + s0, rows + n
    np.testing.assert_allclose(sm.trans_counts.numpy(), xi_total, atol=1e-9)
    np.testing.assert_allclose(sm.start_counts.numpy(), start_total, atol=1e-9)


@pytest.mark.parametrize("log_space", [False, True], ids=["scaled", "log-space"])
def test_forward_backward_matches_enumeration(monkeypatch, log_space):
    """gamma, the cavity message p(z_t | x_{-t}), expected transitions, start counts and log p(x) of two sequences of
    different lengths against enumeration over every path; ``log-space`` forces the fallback loops (taken when the
    scaled recursion declines), which the suite otherwise reaches only for extreme emissions."""
    if log_space:
        monkeypatch.setattr(fb, "scaled_forward", lambda *a, **k: None)
    start, trans = _chain(0)
    emits = _sequences(1, [5, 3])
    sm = fb.forward_backward(torch.tensor(np.log(start)), torch.tensor(np.log(trans)),
                             torch.tensor(np.concatenate(emits)), torch.tensor([5, 3]))
    _check_smoothed(sm, start, trans, emits)
    ll = fb.forward_log_likelihood(torch.tensor(np.log(start)), torch.tensor(np.log(trans)),
                                   torch.tensor(np.concatenate(emits)), torch.tensor([5, 3]))
    np.testing.assert_allclose(ll.numpy(), [_reference(start, trans, e)[0] for e in emits], atol=1e-9)


@pytest.mark.parametrize("log_space", [False, True], ids=["scaled", "log-space"])
def test_sample_paths_follow_the_posterior(monkeypatch, log_space):
    """Forward-filtering backward-sampling draws exact posterior paths: the frequency of every whole path of a
    4-step, 3-state chain (81 paths) against its enumerated posterior probability (non-symmetric transitions)."""
    if log_space:
        monkeypatch.setattr(fb, "scaled_forward", lambda *a, **k: None)
    start, trans = _chain(2)
    emit = _sequences(3, [4])[0]
    paths, logp = _enumerate(start, trans, emit)
    post = np.exp(logp - logsumexp(logp))
    n = 20000
    draws = fb.sample_paths(torch.tensor(np.log(start)), torch.tensor(np.log(trans)), torch.tensor(emit),
                            None, n, torch.Generator().manual_seed(0)).numpy()
    code = (draws * 3 ** np.arange(3, -1, -1)).sum(1)
    freq = np.bincount(code, minlength=81) / n
    ref = np.zeros(81)
    ref[(paths * 3 ** np.arange(3, -1, -1)).sum(1)] = post
    # binomial standard error at most 0.0036 per path: 5 of them
    np.testing.assert_allclose(freq, ref, atol=0.018)
    assert 0.5 * np.abs(freq - ref).sum() < 0.04  # total variation


# ------------------------------------------------------------------ Normal-Wishart algebra (GMM)
from kizuna.modules.gmm.algorithms import collapsed_conditional  # noqa: E402
from kizuna.modules.gmm.normal_wishart import NormalWishart  # noqa: E402


def _nw_prior(k: int, d: int, diagonal: bool, seed: int = 0) -> NormalWishart:
    g = np.random.default_rng(seed)
    m = torch.tensor(g.normal(size=(k, d)) + 1.5)  # away from the origin: kappa m m' terms matter
    kappa = torch.tensor(g.uniform(0.5, 2.0, size=k))
    nu = torch.tensor(g.uniform(d + 1.0, d + 4.0, size=k))
    if diagonal:
        scale = torch.tensor(g.uniform(0.5, 2.0, size=(k, d)))
    else:
        a = g.normal(size=(k, d, d))
        scale = torch.tensor(a @ a.transpose(0, 2, 1) + d * np.eye(d))
    return NormalWishart(m, kappa, nu, scale)


def _np_posterior(m, kappa, nu, s, x):
    """Murphy (2007) eqs. 250-254 on the points ``x`` (n, D): (m_n, kappa_n, nu_n, S_n) with S the inverse scale."""
    n = x.shape[0]
    xbar = x.mean(0) if n else np.zeros_like(m)
    scatter = (x - xbar).T @ (x - xbar) if n else np.zeros((m.size, m.size))
    kn, nn = kappa + n, nu + n
    mn = (kappa * m + n * xbar) / kn
    sn = s + scatter + kappa * n / kn * np.outer(xbar - m, xbar - m)
    return mn, kn, nn, sn


def _np_predictive(m, kappa, nu, s, x, diagonal):
    """log of the posterior predictive: multivariate t_{nu-D+1}(m, (kappa+1)/(kappa(nu-D+1)) S) (full), or a product
    over dimensions of t_nu(m_d, s_d (kappa+1)/(kappa nu)) (diagonal Normal-Gamma)."""
    d = m.size
    if diagonal:
        return stats.t.logpdf(x, df=nu, loc=m, scale=np.sqrt(np.diag(s) * (kappa + 1) / (kappa * nu))).sum(-1)
    df = nu - d + 1
    return np.atleast_1d(stats.multivariate_t.logpdf(x, loc=m, shape=(kappa + 1) / (kappa * df) * s, df=df))


@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "diag"])
def test_normal_wishart_posterior_and_predictive_match_closed_forms(diagonal):
    """`NormalWishart.posterior` and `log_predictive` against Murphy's update and scipy's Student-t."""
    prior = _nw_prior(2, 3, diagonal)
    x = np.random.default_rng(1).normal(size=(7, 3)) * 1.3 + 0.4
    y = np.random.default_rng(2).normal(size=(4, 3))
    xt = torch.tensor(x)
    counts = torch.tensor([7.0, 0.0])
    sum_x = torch.stack([xt.sum(0), torch.zeros(3, dtype=torch.float64)])
    sq = (xt**2).sum(0) if diagonal else xt.T @ xt
    sum_xx = torch.stack([sq, torch.zeros_like(sq)])
    post = prior.posterior(counts, sum_x, sum_xx)
    lp = post.log_predictive(torch.tensor(y)).numpy()
    for k, data in enumerate([x, x[:0]]):
        s = np.diag(prior.scale[k].numpy()) if diagonal else prior.scale[k].numpy()
        mn, kn, nn, sn = _np_posterior(prior.m[k].numpy(), prior.kappa[k].item(), prior.nu[k].item(), s, data)
        np.testing.assert_allclose(post.m[k].numpy(), mn, rtol=1e-12)
        np.testing.assert_allclose(post.scale[k].numpy(), np.diag(sn) if diagonal else sn, rtol=1e-10)
        np.testing.assert_allclose(lp[:, k], _np_predictive(mn, kn, nn, sn, y, diagonal), rtol=1e-10)


@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "diag"])
def test_normal_wishart_log_marginal_is_the_chain_rule_of_predictives(diagonal):
    """:math:`\\log p(X) = \\sum_n \\log p(x_n | x_{<n})`, each factor scipy's Student-t predictive."""
    prior = _nw_prior(1, 2, diagonal, seed=3)
    x = np.random.default_rng(4).normal(size=(6, 2)) * 0.7 + 2.0
    m, kappa, nu = prior.m[0].numpy(), prior.kappa[0].item(), prior.nu[0].item()
    s = np.diag(prior.scale[0].numpy()) if diagonal else prior.scale[0].numpy()
    ref = sum(_np_predictive(*_np_posterior(m, kappa, nu, s, x[:n]), x[n:n + 1], diagonal)[0] for n in range(6))
    xt = torch.tensor(x)
    counts = torch.tensor([6.0], dtype=torch.float64)
    sum_xx = (xt**2).sum(0, keepdim=True) if diagonal else (xt.T @ xt)[None]
    post = prior.posterior(counts, xt.sum(0, keepdim=True), sum_xx)
    np.testing.assert_allclose(post.log_marginal(prior, counts).item(), ref, rtol=1e-10)


@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "diag"])
def test_collapsed_conditional_matches_leaving_each_point_out(diagonal):
    """``own[n, k] = log(N_k^{-n} + alpha0) + log t_k^{-n}(x_n)``: every point's predictive under every component
    from the data without it (enumerated with scipy), the rank-one downdate's numbers included."""
    prior = _nw_prior(3, 2, diagonal, seed=5)
    x = np.random.default_rng(6).normal(size=(9, 2)) * 1.5
    z = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    alpha0 = 0.7
    own = collapsed_conditional(torch.tensor(x), torch.tensor(z), prior, alpha0).numpy()
    for n in range(9):
        keep = np.arange(9) != n
        for k in range(3):
            data = x[keep & (z == k)]
            s = np.diag(prior.scale[k].numpy()) if diagonal else prior.scale[k].numpy()
            post = _np_posterior(prior.m[k].numpy(), prior.kappa[k].item(), prior.nu[k].item(), s, data)
            ref = np.log(len(data) + alpha0) + _np_predictive(*post, x[n:n + 1], diagonal)[0]
            np.testing.assert_allclose(own[n, k], ref, rtol=1e-9, err_msg=f"point {n}, component {k}")


# ------------------------------------------------------------------ clustering and segmentation metrics
def _labellings():
    g = np.random.default_rng(7)
    out = []
    for n, a, b in [(40, 3, 4), (25, 5, 2), (60, 4, 4)]:
        t = g.integers(a, size=n)
        p = np.where(g.random(n) < 0.6, t % b, g.integers(b, size=n))  # related, not identical
        out.append((t, p))
    return out


def test_clustering_scores_match_sklearn_and_brute_force():
    """ARI and NMI (arithmetic normalisation) against scikit-learn; clustering accuracy against the best of every
    one-to-one relabelling (enumerated), including labellings where classes and clusters split into groups."""
    from sklearn import metrics as skm

    from kizuna.metrics import adjusted_rand_score, clustering_accuracy, normalized_mutual_info_score
    cases = _labellings() + [(np.array([0, 0, 1, 1, 2, 2, 3]), np.array([5, 5, 6, 6, 6, 7, 7])),
                             (np.array([0, 0, 0, 1, 2, 2]), np.array([0, 0, 1, 2, 3, 4]))]  # one class, 2 clusters
    for t, p in cases:
        assert adjusted_rand_score(t, p) == pytest.approx(skm.adjusted_rand_score(t, p), abs=1e-12)
        assert normalized_mutual_info_score(t, p) == pytest.approx(
            skm.normalized_mutual_info_score(t, p, average_method="arithmetic"), abs=1e-12)
        table = np.zeros((np.unique(t).size, np.unique(p).size), dtype=int)
        np.add.at(table, (np.unique(t, return_inverse=True)[1], np.unique(p, return_inverse=True)[1]), 1)
        if table.shape[0] < table.shape[1]:
            table = table.T
        best = max(table[list(rows), range(table.shape[1])].sum()  # every one-to-one matching, enumerated
                   for rows in itertools.permutations(range(table.shape[0]), table.shape[1]))
        assert clustering_accuracy(t, p) == pytest.approx(best / len(t), abs=1e-12)


def test_segmentation_scores_hand_counted():
    """Boundary, token and lexicon precision / recall / F on a corpus counted by hand (utterance edges excluded)."""
    from kizuna.metrics import segmentation_scores
    true = [["yu", "want", "tu"], ["si", "dhe", "dog"], ["ah"]]
    pred = [["yu", "wan", "t", "tu"], ["sidhe", "dog"], ["a", "h"]]
    s = segmentation_scores(true, pred)
    # boundaries (internal only): true {2, 6} {2, 5}; predicted {2, 5, 6} {5} {1}: hits 2 + 1, |P| 5, |G| 4
    assert (s.boundary_precision, s.boundary_recall) == pytest.approx((3 / 5, 3 / 4))
    assert s.boundary_f == pytest.approx(2 * 3 / (5 + 4))
    # tokens: hits yu, tu, dog = 3; |P| = 4 + 2 + 2 = 8; |G| = 3 + 3 + 1 = 7
    assert (s.token_precision, s.token_recall, s.token_f) == pytest.approx((3 / 8, 3 / 7, 6 / 15))
    # lexicon: G {yu, want, tu, si, dhe, dog, ah}, P {yu, wan, t, tu, sidhe, dog, a, h}: 3 shared
    assert (s.lexicon_precision, s.lexicon_recall, s.lexicon_f) == pytest.approx((3 / 8, 3 / 7, 6 / 15))


# ------------------------------------------------------------------ hierarchical Pitman-Yor
from kizuna.modules.pitman_yor import HPYLM  # noqa: E402

P0 = {"a": 0.2, "b": 0.3, "c": 0.5}
SEATING = [[[], [["a", [3, 1]], ["b", [2]]]], [["b"], [["a", [2]], ["c", [1, 1]]]]]


def _hpylm() -> HPYLM:
    m = HPYLM(2, P0.get, discount=0.3, strength=1.7)
    m.d, m.theta = [0.3, 0.6], [1.7, 0.4]
    m.set_seating(SEATING)
    return m


def test_hpylm_predictive_is_teh_2006_closed_form():
    """p(w | h) = (c_hw - d t_hw) / (theta + c_h) + (theta + d t_h) / (theta + c_h) p(w | h'), written out by hand
    for a two-level seating (root: a [3, 1], b [2]; context b: a [2], c [1, 1])."""
    m = _hpylm()
    d0, t0, d1, t1 = 0.3, 1.7, 0.6, 0.4
    root = {"a": (4 - 2 * d0) / (t0 + 6), "b": (2 - d0) / (t0 + 6), "c": 0.0}
    uni = {w: root[w] + (t0 + 3 * d0) / (t0 + 6) * P0[w] for w in P0}
    ctx = {"a": (2 - d1) / (t1 + 4), "b": 0.0, "c": (2 - 2 * d1) / (t1 + 4)}
    bi = {w: ctx[w] + (t1 + 3 * d1) / (t1 + 4) * uni[w] for w in P0}
    for w in P0:
        assert m.prob(w, ()) == pytest.approx(uni[w], rel=1e-12)
        assert m.prob(w, ("b",)) == pytest.approx(bi[w], rel=1e-12)
        assert m.prob(w, ("c",)) == pytest.approx(uni[w], rel=1e-12)  # an empty context backs off entirely
    assert sum(m.prob(w, ("b",)) for w in P0) == pytest.approx(1.0, abs=1e-12)


def test_hpylm_add_seats_by_the_chinese_restaurant_probabilities():
    """One customer ``a`` added to context ``b``: it joins its table of 2 with probability proportional to
    2 - d, or opens a new one with probability proportional to (theta + d t_h) p(a | root) (Teh 2006)."""
    m = _hpylm()
    d1, t1 = 0.6, 0.4
    p_new = (t1 + 3 * d1) * m.prob("a", ())
    expected_join = (2 - d1) / (2 - d1 + p_new)
    rng = np.random.default_rng(0)
    joins, n = 0, 4000
    for _ in range(n):
        m.set_seating(SEATING)
        m.add("a", ("b",), rng)
        sizes = next(dict(ws)["a"] for ctx, ws in m.seating() if ctx == ["b"])
        joins += sizes == [3]
    assert joins / n == pytest.approx(expected_join, abs=4 * math.sqrt(expected_join * (1 - expected_join) / n))


# ------------------------------------------------------------------ (multimodal) LDA
from kizuna.modules.lda.algorithms import prior_once_per_sample  # noqa: E402
from kizuna.modules.lda.sampler import GibbsChain  # noqa: E402


def test_prior_once_per_sample_is_the_renormalised_root():
    """pi_dk^(1/T_d) renormalised, T_d the sample's tokens over all modalities (0 tokens: the prior as it is)."""
    prior = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], dtype=torch.float64)
    counts = [torch.tensor([[2, 1], [0, 0], [1, 0]]), None, torch.tensor([[1, 0, 0], [0, 0, 0], [0, 2, 1]])]
    tokens = np.array([4.0, 1.0, 4.0])  # sample 1 has none: clamped to 1
    root = prior.numpy() ** (1.0 / tokens[:, None])
    np.testing.assert_allclose(prior_once_per_sample(prior, counts).numpy(), root / root.sum(1, keepdims=True),
                               rtol=1e-12)


@pytest.mark.parametrize("backend", ["torch"])  # (numba runs the same chain draw for draw: test_lda_numba.py)
def test_lda_fixed_topic_chain_targets_the_collapsed_posterior(backend):
    """Fixed topics, one token per sample: the collapsed conditional p(z = k | w) is proportional to alpha phi_wk
    (the token's own count removed), so the averaged estimate theta_dk = E[(n_dk + alpha) / (1 + K alpha)] is
    (p_k + alpha) / (1 + K alpha) with p_k = phi_wk / sum_j phi_wj. 1500 independent samples, 20 sweeps."""
    phi = torch.tensor([[0.8, 0.3], [0.2, 0.7]], dtype=torch.float64)  # V x K
    alpha, n = 0.1, 1500
    chain = GibbsChain(n, [2], 2, alpha, 0.5, torch.float64, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(n, 2, dtype=torch.long)
    counts[:, 0] = 1  # every sample is one token of word 0
    chain.set_counts(0, counts, None, None, g)  # topics start uniform, not from phi
    theta, _ = chain.run(20, 1, None, phi, g, backend)
    p = phi[0] / phi[0].sum()
    expected = (p + alpha) / (1 + 2 * alpha)
    np.testing.assert_allclose(theta.mean(0).numpy(), expected.numpy(), atol=0.012)  # sd ~ 0.004


def test_lda_learnt_estimates_are_distributions():
    """The averaged estimates: every theta row sums to 1 (denominator N_d + K alpha) and every topic's phi column
    sums to 1 within each modality (denominator n_mk + V_m beta)."""
    g = torch.Generator().manual_seed(1)
    chain = GibbsChain(6, [4, 3], 3, 0.3, 0.2, torch.float64, torch.device("cpu"))
    chain.set_counts(0, torch.randint(0, 4, (6, 4), generator=g), None, None, g)
    chain.set_counts(1, torch.randint(0, 3, (6, 3), generator=g), None, None, g)
    theta, phi = chain.run(6, 2, None, None, g, "torch")
    np.testing.assert_allclose(theta.sum(1).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(phi[:4].sum(0).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(phi[4:].sum(0).numpy(), 1.0, rtol=1e-12)


def _repeat(nw: NormalWishart, k: int, n: int) -> NormalWishart:
    """Component ``k`` of ``nw`` repeated ``n`` times (a batch of independent draws)."""
    rep = lambda t: t[k:k + 1].expand(n, *t.shape[1:]).contiguous()  # noqa: E731
    return NormalWishart(rep(nw.m), rep(nw.kappa), rep(nw.nu), rep(nw.scale))


@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "diag"])
def test_normal_wishart_sample_moments_match_scipy(diagonal):
    """Draws of (mu, Lambda) (Bartlett): E[Lambda] = nu S^{-1} (scipy's Wishart / Gamma mean), E[log|Lambda|]
    against scipy's own draws, and Cov[mu] = E[(kappa Lambda)^{-1}] = S / (kappa (nu - D - 1)) (full) or
    s / (kappa (nu - 2)) per dimension (diagonal)."""
    n, d = 40000, 2
    prior = _nw_prior(1, d, diagonal, seed=8)
    prior = NormalWishart(prior.m, prior.kappa, prior.nu + 2.0, prior.scale)  # nu > D + 1: Cov[mu] finite
    mu, root = _repeat(prior, 0, n).sample(torch.Generator().manual_seed(0))
    nu, kappa = prior.nu.item(), prior.kappa.item()
    rng = np.random.default_rng(0)
    if diagonal:
        s = prior.scale[0].numpy()
        lam = root.numpy()
        ref = stats.gamma(a=nu / 2, scale=2 / s)
        np.testing.assert_allclose(lam.mean(0), ref.mean(), rtol=0.03)
        np.testing.assert_allclose(np.log(lam).mean(0), np.log(ref.rvs(size=(n, d), random_state=rng)).mean(0),
                                   atol=0.03)
        cov_mu = np.diag(s / (kappa * (nu - 2)))
    else:
        s = prior.scale[0].numpy()
        lam = (root @ root.mT).numpy()
        ref = stats.wishart(df=nu, scale=np.linalg.inv(s))
        np.testing.assert_allclose(lam.mean(0), ref.mean(), rtol=0.03, atol=0.03 * np.abs(ref.mean()).max())
        np.testing.assert_allclose(np.linalg.slogdet(lam)[1].mean(),
                                   np.linalg.slogdet(ref.rvs(size=n, random_state=rng))[1].mean(), atol=0.03)
        cov_mu = s / (kappa * (nu - d - 1))
    np.testing.assert_allclose(np.cov(mu.numpy().T), cov_mu, rtol=0.08, atol=0.08 * np.abs(cov_mu).max())


@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "diag"])
def test_normal_wishart_vb_expectations_match_monte_carlo(diagonal):
    """Bishop (10.64), (10.65): E[log|Lambda|] and E[(x - mu)' Lambda (x - mu)] under the Normal-Wishart against
    averages over scipy's draws (Wishart / Gamma, then mu | Lambda)."""
    n, d = 40000, 2
    prior = _nw_prior(2, d, diagonal, seed=9)
    x = np.array([[0.3, -1.0], [2.0, 2.5]])
    eld = prior.expected_log_det().numpy()
    emaha = prior.expected_mahalanobis(torch.tensor(x)).numpy()
    rng = np.random.default_rng(1)
    for k in range(2):
        nu, kappa, m = prior.nu[k].item(), prior.kappa[k].item(), prior.m[k].numpy()
        if diagonal:
            lam_d = stats.gamma(a=nu / 2, scale=2 / prior.scale[k].numpy()).rvs(size=(n, d), random_state=rng)
            lam = np.einsum("ni,ij->nij", lam_d, np.eye(d))
        else:
            lam = stats.wishart(df=nu, scale=np.linalg.inv(prior.scale[k].numpy())).rvs(size=n, random_state=rng)
        chol = np.linalg.cholesky(np.linalg.inv(kappa * lam))
        mu = m + np.einsum("nij,nj->ni", chol, rng.normal(size=(n, d)))
        np.testing.assert_allclose(eld[k], np.linalg.slogdet(lam)[1].mean(), atol=0.03)
        for i in range(2):
            u = x[i] - mu
            np.testing.assert_allclose(emaha[i, k], np.einsum("ni,nij,nj->n", u, lam, u).mean(), rtol=0.03)


# ------------------------------------------------------------------ HMM emissions, Markov model, combination
def test_hmm_full_covariance_samples_have_the_covariance():
    """Gaussian emissions with a full, correlated covariance: draws of X have mean ``means_`` and covariance
    ``covars_`` (x = mu + L eps with L L' = Sigma; L' eps has covariance L' L, another matrix)."""
    from kizuna.modules import HiddenMarkovModel
    hmm = HiddenMarkovModel(1, covariance_type="full", random_state=0)
    cov = np.array([[1.0, 0.9, 0.2], [0.9, 2.0, -0.5], [0.2, -0.5, 0.7]])
    hmm.startprob_, hmm.transmat_ = np.array([1.0]), np.array([[1.0]])
    hmm.means_, hmm.covars_ = np.array([[1.0, -2.0, 0.5]]), cov[None]
    x, _ = hmm.sample(8000, random_state=0)
    x = np.asarray(x)
    np.testing.assert_allclose(x.mean(0), [1.0, -2.0, 0.5], atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.1)  # standard errors <= 0.025


def test_hmm_categorical_sample_is_reproducible_from_its_seed():
    """``sample(random_state=s)`` draws states and symbols from that seed's stream only: the global RNG's state
    does not change them."""
    from kizuna.modules import HiddenMarkovModel
    hmm = HiddenMarkovModel(2, emission="categorical", random_state=0)
    hmm.startprob_, hmm.transmat_ = np.array([0.5, 0.5]), np.array([[0.8, 0.2], [0.3, 0.7]])
    hmm.emissionprob_ = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    torch.manual_seed(1)
    a = hmm.sample(50, random_state=3)
    torch.manual_seed(2)
    b = hmm.sample(50, random_state=3)
    assert torch.equal(torch.as_tensor(a[0]), torch.as_tensor(b[0])) and torch.equal(a[1], b[1])


def test_markov_model_counts_and_learning_match_enumeration():
    """`kizuna.modules.mm.algorithms`: sampled transition counts (the mean over FFBS paths, no pair across the
    boundary of two sequences) against the exact expected counts, and one re-estimation
    A = (xi + alpha) / (sum_j xi_ij + K alpha) with xi enumerated."""
    from kizuna.modules.mm.algorithms import learn, transition_counts
    start, trans = _chain(4, k=2)
    emits = _sequences(5, [3, 4], k=2)
    ls, lt = torch.tensor(np.log(start)), torch.tensor(np.log(trans))
    e, lengths = torch.tensor(np.concatenate(emits)), torch.tensor([3, 4])
    xi = sum(_reference(start, trans, em)[3] for em in emits)
    s0 = sum(_reference(start, trans, em)[4] for em in emits)
    st, tr = transition_counts(ls, lt, e, lengths, True, 8000, torch.Generator().manual_seed(0))
    assert tr.sum().item() == pytest.approx(5.0)  # (3 - 1) + (4 - 1) pairs per path
    np.testing.assert_allclose(tr.numpy(), xi, atol=0.05)
    np.testing.assert_allclose(st.numpy(), s0, atol=0.05)
    alpha = 0.5
    new_start, new_trans = learn(torch.tensor(start), torch.tensor(trans), e, lengths, 1, alpha)
    np.testing.assert_allclose(new_trans.numpy(), (xi + alpha) / (xi + alpha).sum(1, keepdims=True), rtol=1e-9)
    np.testing.assert_allclose(new_start.numpy(), (s0 + alpha) / (s0 + alpha).sum(), rtol=1e-9)


def test_message_passing_combination_is_the_normalised_product():
    """MP: p(c = k) proportional to m_k exp(l_k) (the message multiplied in, not added)."""
    from kizuna.modules import combine
    m = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=torch.float64)
    ll = torch.tensor([[-1.0, -3.0, 0.5], [-2.0, -2.0, -0.1]], dtype=torch.float64)
    ref = m.numpy() * np.exp(ll.numpy())
    np.testing.assert_allclose(combine(m, ll, "mp").numpy(), ref / ref.sum(1, keepdims=True), rtol=1e-12)


# ------------------------------------------------------------------ spatial concepts (SpCoSLAM-style Gibbs)
def test_stick_weights_are_the_posterior_mean_sticks():
    """log pi_l = log E[V_l] + sum_{j<l} log(1 - E[V_j]) with E[V_l] = (1 + N_l) / (1 + alpha + N_l + N_{>l})
    (Beta(1 + N_l, alpha + N_{>l}) posterior of a stick; V_{L-1} = 1): the weights sum to 1."""
    from kizuna.modules.spatial_concept_gibbs import log_stick_weights
    n_l, alpha = np.array([4.0, 0.0, 7.0, 1.0]), 1.3
    ev = [stats.beta(1 + n_l[i], alpha + n_l[i + 1:].sum()).mean() for i in range(3)] + [1.0]
    ref = [ev[i] * np.prod([1 - ev[j] for j in range(i)]) for i in range(4)]
    np.testing.assert_allclose(np.exp(log_stick_weights(n_l, alpha)), ref, rtol=1e-12)
    assert np.exp(log_stick_weights(n_l, alpha)).sum() == pytest.approx(1.0)


def test_dirichlet_multinomial_evidence_is_the_chain_rule_of_predictives():
    """sum_l log p(sequence of S_l tokens | beta): the product over tokens of (n_v + beta) / (n + V beta) (the
    Polya urn), token after token, for two rows of counts."""
    from kizuna.modules.spatial_concept_gibbs import _log_dirichlet_multinomial
    counts, beta = np.array([[3, 0, 1], [0, 2, 2]]), 0.4
    ref = 0.0
    for row in counts:
        seen = np.zeros(3)
        for v in np.repeat(np.arange(3), row):
            ref += np.log((seen[v] + beta) / (seen.sum() + 3 * beta))
            seen[v] += 1
    assert _log_dirichlet_multinomial(counts, beta) == pytest.approx(ref, rel=1e-12)


def test_hpylm_hyperparameter_sampler_targets_the_posterior():
    """Teh's auxiliary-variable Gibbs for (d, theta) of a one-restaurant seating leaves the posterior
    p(d, theta | seating) proportional to Beta(d; 1, 1) Gamma(theta; 1, 1) prod_{i<t}(theta + d i)
    Gamma(theta + 1) / Gamma(theta + c) prod_tables prod_{j<s}(j - d) invariant: the chain's means of d and theta
    against the means of that density on a grid."""
    seating = [[[], [["a", [3, 1]], ["b", [2]], ["c", [1, 1, 1]], ["d", [4]]]]]
    sizes = [3, 1, 2, 1, 1, 1, 4]
    c, t = sum(sizes), len(sizes)
    d = np.linspace(0.001, 0.999, 300)[:, None]
    th = np.linspace(0.001, 40, 1000)[None, :]
    logp = (-th + sum(np.log(th + d * i) for i in range(1, t)) + gammaln(th + 1) - gammaln(th + c)
            + sum(np.log(j - d) for s in sizes for j in range(1, s)))
    w = np.exp(logp - logp.max())
    w /= w.sum()
    mean_d, mean_th = (w * d).sum(), (w * th).sum()
    m = HPYLM(1, lambda w: 0.25, discount=0.5, strength=1.0)
    m.set_seating(seating)
    rng = np.random.default_rng(0)
    ds, ths = [], []
    for i in range(3000):
        m.sample_hyperparameters(rng)
        if i >= 300:
            ds.append(m.d[0])
            ths.append(m.theta[0])
    assert np.mean(ds) == pytest.approx(mean_d, rel=0.06)
    assert np.mean(ths) == pytest.approx(mean_th, rel=0.08)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_vb_step_equals_sklearn_bayesian_gaussian_mixture(covariance_type):
    """One VB iteration from the same responsibilities and the same Normal-Wishart / Dirichlet priors as
    scikit-learn's ``BayesianGaussianMixture(weight_concentration_prior_type="dirichlet_distribution")``: ``own``
    equals its ``_estimate_weighted_log_prob`` (E[log pi_k] + E[log N(x | mu_k, Lambda_k)], Bishop 10.46-10.66),
    and the point estimates its ``weights_``, ``means_`` and ``covariances_`` (S_N / nu_N)."""
    from sklearn.mixture import BayesianGaussianMixture

    from kizuna.modules.gmm import algorithms as algo
    diagonal = covariance_type == "diag"
    g = np.random.default_rng(10)
    k, d, n = 3, 2, 40
    x = np.concatenate([g.normal(size=(n // 2, d)) + 2, g.normal(size=(n // 2, d)) * 0.5 - 1])
    resp = g.dirichlet(np.ones(k), size=n)
    m0, kappa0, nu0, alpha0 = np.array([0.5, -0.3]), 0.8, 3.5, 0.4
    s0 = np.array([0.7, 1.6]) if diagonal else np.array([[1.2, 0.3], [0.3, 0.8]])
    prior = NormalWishart(torch.tensor(m0).expand(k, d).clone(), torch.full((k,), kappa0, dtype=torch.float64),
                          torch.full((k,), nu0, dtype=torch.float64),
                          torch.tensor(s0).expand(k, *s0.shape).clone())
    fit = algo.vb(torch.tensor(x), prior, alpha0, torch.tensor(resp), 1, 0.0, algo.NO_PARENT)
    ref = BayesianGaussianMixture(n_components=k, covariance_type=covariance_type,
                                  weight_concentration_prior_type="dirichlet_distribution",
                                  weight_concentration_prior=alpha0, mean_precision_prior=kappa0, mean_prior=m0,
                                  degrees_of_freedom_prior=nu0, covariance_prior=s0, reg_covar=0.0)
    ref._check_parameters(x)
    ref._m_step(x, np.log(resp))
    expected = ref._estimate_weighted_log_prob(x)
    if diagonal:  # kizuna's diagonal precisions are independent Gamma(nu/2, s_d/2) (documented in normal_wishart):
        # E[log lambda_d] = psi(nu/2) - log(s_d/2) per dimension, where scikit-learn keeps the Wishart's
        # sum_i psi((nu - i)/2) for a diagonal scale: the half difference is a constant per component
        nu = ref.degrees_of_freedom_
        expected = expected + 0.5 * (d * digamma(nu / 2) - sum(digamma((nu - i) / 2) for i in range(d)))
    np.testing.assert_allclose(fit.own.numpy(), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fit.weights.numpy(), ref.weight_concentration_ / ref.weight_concentration_.sum(),
                               rtol=1e-9)
    np.testing.assert_allclose(fit.means.numpy(), ref.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.covariances.numpy(), ref.covariances_, rtol=1e-9)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("tol", [1e-2, 1e-4])
def test_em_stops_where_sklearn_stops(tol):
    """EM's convergence test is scikit-learn's (the change of the objective before an M step against the one before
    the previous M step): from the same start, ``n_iter``, ``converged`` and the parameters equal those of
    ``GaussianMixture(tol=tol)`` (a test on the objective after the M step stopped one iteration early)."""
    from sklearn.datasets import make_blobs
    from sklearn.mixture import GaussianMixture
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    from kizuna.modules.gmm import algorithms as algo
    x, _ = make_blobs(300, n_features=2, centers=3, cluster_std=2.0, random_state=3)
    resp = np.random.default_rng(0).dirichlet(np.ones(3), size=300)
    ours = algo.em(torch.tensor(x), torch.tensor(resp), 200, tol, 1e-6, False)
    nk, means, covs = _estimate_gaussian_parameters(x, resp, 1e-6, "full")
    ref = GaussianMixture(3, covariance_type="full", reg_covar=1e-6, max_iter=200, tol=tol, weights_init=nk / 300,
                          means_init=means, precisions_init=np.linalg.inv(covs)).fit(x)
    assert (ours.n_iter, ours.converged) == (ref.n_iter_, ref.converged_)
    np.testing.assert_allclose(ours.means.numpy(), ref.means_, rtol=1e-8)
    assert ours.history[-1] == pytest.approx(ref.score(x), abs=1e-9)


def test_gibbs_sweep_draws_the_weights_from_their_dirichlet_posterior():
    """A blocked Gibbs sweep draws pi ~ Dir(N_k + alpha0), then every z_n | pi, mu, Lambda. With a prior so
    concentrated (kappa0 = nu0 = 1e8, Lambda ~ I, mu ~ 0 for every component) that all components give a point the
    same likelihood, z_n ~ pi: from z all in component 0 (N = 20, K = 2) the share of points moving to component 1
    has mean E[pi_1] = alpha0 / (N + K alpha0)."""
    from kizuna.modules.gmm import algorithms as algo
    k, n, alpha0 = 2, 20, 0.05
    big = torch.full((k,), 1e8, dtype=torch.float64)
    prior = NormalWishart(torch.zeros(k, 2, dtype=torch.float64), big, big, 1e8 * torch.eye(2, dtype=torch.float64)
                          .expand(k, 2, 2).clone())
    x = torch.tensor(np.random.default_rng(11).normal(size=(n, 2)))
    z = torch.zeros(n, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    moved = np.mean([algo.gibbs_sweep(x, prior, alpha0, z, algo.NO_PARENT, g).float().mean().item()
                     for _ in range(150)])
    expected = alpha0 / (n + k * alpha0)  # 0.0025; with a prior count of 1 instead of alpha0: 1 / 22
    assert abs(moved - expected) < 0.006, (moved, expected)
