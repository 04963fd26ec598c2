"""Collapsed Gibbs GMM (`kizuna.modules.gmm.collapsed`, ``GMM(algorithm="collapsed")``): the sampler is the
sequential definition, its chain targets the posterior enumerated over every assignment, and it clusters
like scikit-learn.

Statistical checks use fixed seeds and state their false-alarm rates.
"""

import itertools
import math

import numpy as np
import pytest
import scipy.stats as st
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import BayesianGaussianMixture
from torch.nn import functional as F

from kizuna.modules import GMM, SIR
from kizuna.modules.gmm import algorithms as algo
from kizuna.modules.gmm import collapsed as gc
from kizuna.modules.gmm.normal_wishart import NormalWishart

F64 = torch.float64


def collapsed(x, prior, alpha0, z, n_sweeps, msg, method, n_particles, g, mixing=True):
    """`gc.collapsed_gibbs` with the parent's prior ``msg`` combined by ``method`` ("mp" / "sir")."""
    combine = SIR(n_particles, g) if method == "sir" else algo.MP()
    return gc.collapsed_gibbs(x, prior, alpha0, z, n_sweeps, algo.ClassPrior(msg, combine, mixing), g)


def prior_for(k, d, diagonal=False, scale=1.0, nu=None, kappa=1.0, mean=0.0):
    s = torch.full((k, d), scale, dtype=F64) if diagonal else scale * torch.eye(d, dtype=F64).expand(k, d, d).clone()
    return NormalWishart(torch.full((k, d), mean, dtype=F64), torch.full((k,), kappa, dtype=F64),
                         torch.full((k,), float(nu or d + 1), dtype=F64), s)


def sequential_reference(x, prior, alpha0, z, n_sweeps, msg, method, n_particles, g, mixing):
    """The definition, point by point: each conditional recomputed from scratch by `collapsed_conditional`
    (row n is p(c_n = k | c_-n), every component rebuilt from its points), the same random stream."""
    z = z.clone()
    n, k = z.shape[0], prior.m.shape[0]
    for _ in range(n_sweeps):
        log_msg = torch.zeros(n, k, dtype=F64)
        if msg is not None:
            m = msg / msg.sum(1, keepdim=True)
            if method == "sir":
                picks = torch.multinomial(m, n_particles, replacement=True, generator=g)
                m = torch.zeros(n, k, dtype=F64).scatter_add_(1, picks, torch.ones_like(picks, dtype=F64))
            log_msg = torch.log(m)
        u = torch.rand(n, generator=g, dtype=F64)
        for i in range(n):
            lp = algo.collapsed_conditional(x, z, prior, alpha0, mixing)[i] + log_msg[i]
            cdf = torch.exp(lp - lp.max()).cumsum(0)
            z[i] = min(int((cdf <= u[i] * cdf[-1]).sum()), k - 1)
    return z


CASES = {  # name: (data, prior, alpha0, message, method, mixing)
    "full": (lambda g: torch.randn(24, 3, generator=g, dtype=F64), dict(k=3, d=3), 0.5, False, "mp", True),
    "diagonal, message": (lambda g: torch.randn(30, 2, generator=g, dtype=F64) * 2, dict(k=4, d=2, diagonal=True),
                          1.0, True, "mp", True),
    "no mixing, message": (lambda g: torch.randn(25, 2, generator=g, dtype=F64), dict(k=3, d=2), 0.1, True, "mp",
                           False),
    "sir": (lambda g: torch.randn(25, 2, generator=g, dtype=F64), dict(k=3, d=2), 1.0, True, "sir", True),
    # tiny prior scale, one far point: removing it from its component keeps ~1e-12 of |S| (the exact path)
    "precision fallback": (lambda g: torch.cat([torch.randn(12, 2, generator=g, dtype=F64) * 1e-3,
                                                torch.tensor([[1e3, -1e3]], dtype=F64)]),
                           dict(k=2, d=2, scale=1e-6, nu=2.5), 1.0, False, "mp", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sweeps_are_the_sequential_definition(case):
    """Same random stream, same draws as the point-by-point definition (blocks scored at once, rank-one
    updates and the precision fallback change nothing but rounding)."""
    data, kw, alpha0, with_msg, method, mixing = CASES[case]
    g = torch.Generator().manual_seed(3)
    x = data(g)
    k = kw["k"]
    prior = prior_for(**kw)
    z0 = torch.randint(k, (x.shape[0],), generator=g)
    msg = torch.distributions.Dirichlet(torch.ones(k, dtype=F64)).sample((x.shape[0],)) if with_msg else None
    fit = collapsed(x, prior, alpha0, z0, 3, msg, method, 50, torch.Generator().manual_seed(7), mixing)
    ref = sequential_reference(x, prior, alpha0, z0, 3, msg, method, 50, torch.Generator().manual_seed(7), mixing)
    assert torch.equal(fit.z, ref)
    assert not torch.equal(ref, z0)  # the sweeps moved points
    own = algo.collapsed_conditional(x, ref, prior, alpha0, mixing)
    torch.testing.assert_close(fit.own, own)
    expected = torch.softmax(own, 1) if msg is None else None
    if expected is not None:
        torch.testing.assert_close(fit.resp, expected)
    counts = torch.bincount(ref, minlength=k).to(F64)
    torch.testing.assert_close(fit.alpha, counts + alpha0)


def test_incremental_components_agree_with_their_statistics():
    """After many rank-one moves the inverses, determinants and constants equal those rebuilt from scratch."""
    g = torch.Generator().manual_seed(0)
    for diagonal in (False, True):
        x = torch.randn(60, 4, generator=g, dtype=F64).numpy()
        z = torch.randint(3, (60,), generator=g).numpy()
        comp = gc._Components(prior_for(3, 4, diagonal, scale=0.5, kappa=0.7, nu=5.5), x, z)
        rng = np.random.default_rng(0)
        for _ in range(400):
            i, new = rng.integers(60), rng.integers(3)
            if new == z[i] or comp.n[z[i]] <= 1:
                continue
            _, _, u, y = comp.score(x[i:i + 1], z[i:i + 1])
            xx = x[i] ** 2 if diagonal else np.outer(x[i], x[i])
            comp.move(x[i], xx, z[i], new, u[:, 0], y[:, 0])
            z[i] = new
        fresh = gc._Components(prior_for(3, 4, diagonal, scale=0.5, kappa=0.7, nu=5.5), x, z)
        for name in ("n", "kappa", "nu", "m", "inv", "logdet", "const", "const_loo"):
            np.testing.assert_allclose(getattr(comp, name), getattr(fresh, name), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------- the chain's target, exactly
X4 = torch.tensor([[-1.1], [-0.4], [0.3], [1.2]], dtype=F64)
MSG4 = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.45, 0.55], [0.3, 0.7]], dtype=F64)
PRIOR4, ALPHA4 = prior_for(2, 1, nu=2.0, scale=0.5), 1.0
STATES = list(itertools.product([0, 1], repeat=4))


def exact_posterior():
    """p(c | X) over the 16 assignments: Dirichlet-multinomial times the Normal-Wishart marginal likelihood
    of each component's points (closed form) times the message."""
    logs = []
    for lab in STATES:
        z = torch.tensor(lab)
        counts, sx, sxx = algo.statistics(X4, F.one_hot(z, 2).to(F64), False)
        log_dm = (torch.lgamma(counts + ALPHA4) - math.lgamma(ALPHA4)).sum() + math.lgamma(2 * ALPHA4) \
            - math.lgamma(4 + 2 * ALPHA4)
        log_lik = PRIOR4.posterior(counts, sx, sxx).log_marginal(PRIOR4, counts).sum()
        logs.append(log_dm + log_lik + torch.log(MSG4[torch.arange(4), z]).sum())
    return torch.softmax(torch.stack(logs), 0).numpy()


def sweep_kernel():
    """The 16 x 16 transition matrix of one systematic sweep (points 0..3 in order), enumerated."""
    conditionals = {s: torch.softmax(algo.collapsed_conditional(X4, torch.tensor(s), PRIOR4, ALPHA4)
                                     + torch.log(MSG4), 1).numpy() for s in STATES}  # row i: p(c_i | c_-i)

    def conditional(state, i):
        return conditionals[tuple(state)][i]

    kernel = np.zeros((16, 16))
    for a, start in enumerate(STATES):
        for b, end in enumerate(STATES):
            state, p = list(start), 1.0
            for i in range(4):
                p *= conditional(state, i)[end[i]]
                state[i] = end[i]
            kernel[a, b] = p
    return kernel


def test_chain_targets_the_enumerated_posterior_by_chi_square():
    """The exact posterior is invariant under the enumerated sweep kernel; then 2,000 sweeps of the sampler
    against it by a chi-square that accounts for the chain's autocorrelation exactly (Markov-chain CLT with
    the kernel's fundamental matrix Z, below), 15 dof, false-alarm
    rate 1e-3 (fixed seed)."""
    pi, kernel = exact_posterior(), sweep_kernel()
    np.testing.assert_allclose(pi @ kernel, pi, atol=1e-12)
    g = torch.Generator().manual_seed(11)
    chain = gc.sweeps(X4, PRIOR4, ALPHA4, torch.zeros(4, dtype=torch.long), MSG4, "mp", 0, g)
    for _ in range(20):
        next(chain)
    m = 2000
    visits = np.bincount([int(np.dot(next(chain).numpy(), [8, 4, 2, 1])) for _ in range(m)], minlength=16) / m
    # asymptotic covariance of sqrt(m) (f - pi): D - pi pi^T + D(Z - I) + (Z - I)^T D, Z = (I - T + 1 pi^T)^-1
    d, ones = np.diag(pi), np.ones((16, 1))
    z = np.linalg.inv(np.eye(16) - kernel + ones @ pi[None])
    sigma = d - np.outer(pi, pi) + d @ (z - np.eye(16)) + (z - np.eye(16)).T @ d
    diff = visits - pi
    stat = m * diff @ np.linalg.pinv(sigma, rcond=1e-10, hermitian=True) @ diff
    assert stat < st.chi2.ppf(1 - 1e-3, 15), (stat, visits, pi)


# --------------------------------------------------------------------- clustering against scikit-learn
def test_clusters_blobs_like_scikit_learn():
    """The GMM module with the collapsed sampler (its Fitted is the blocked sampler's contract) against
    ``BayesianGaussianMixture`` on blobs: as good a partition and predictive from the module's k-means start.
    (From random starts both Gibbs samplers, blocked and collapsed, can stay in a mode that merges two
    blobs: ARI 0.71 at 2 of 4 seeds for the collapsed one, 1 of 4 for the blocked one, after 100 sweeps.)"""
    x, y = make_blobs(600, n_features=3, centers=4, cluster_std=1.5, random_state=1)
    ref = BayesianGaussianMixture(n_components=4, max_iter=500, random_state=0).fit(x)
    ref_ari = adjusted_rand_score(y, ref.predict(x))
    for seed in (0, 1):
        ours = GMM(4, algorithm="collapsed", max_iter=30, random_state=seed).fit(x)
        ari = adjusted_rand_score(y, ours.predict(x))
        assert ari >= ref_ari - 0.02, (seed, ari, ref_ari)
        assert abs(ours.score(x) - ref.score(x)) < 0.1
        assert np.isclose(ours.weights_.sum(), 1.0) and ours.means_.shape == (4, 3)


def test_a_strong_class_prior_steers_the_assignments():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 2, generator=g, dtype=F64)  # one blob: the data cannot decide between the classes
    target = torch.arange(80) % 2
    msg = 0.02 + 0.96 * F.one_hot(target, 2).to(F64)
    for method in ("mp", "sir"):
        fit = collapsed(x, prior_for(2, 2), 1.0, torch.zeros(80, dtype=torch.long), 10, msg, method, 100, g,
                        mixing=False)
        assert (fit.z == target).double().mean() > 0.9
        assert (fit.resp.argmax(1) == target).double().mean() > 0.9
        assert torch.allclose(fit.own.softmax(1), algo.collapsed_conditional(x, fit.z, prior_for(2, 2), 1.0,
                                                                             False).softmax(1))


def test_errors():
    x, prior = torch.randn(10, 2, dtype=F64), prior_for(3, 2)
    z = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="start"):
        collapsed(x, prior, 1.0, torch.full((10,), 3), 1, None, "mp", 0, None)
    with pytest.raises(ValueError, match="start"):
        collapsed(x, prior, 1.0, z[:5], 1, None, "mp", 0, None)
    with pytest.raises(ValueError, match="method"):
        next(gc.sweeps(x, prior, 1.0, z, None, "exact"))
    with pytest.raises(ValueError, match="N x K"):
        collapsed(x, prior, 1.0, z, 1, torch.ones(10, 2), "mp", 0, None)
    with pytest.raises(ValueError, match="n_sweeps"):
        collapsed(x, prior, 1.0, z, -1, None, "mp", 0, None)
    with pytest.raises(ValueError, match="x must be"):
        collapsed(torch.randn(10, 3, dtype=F64), prior, 1.0, z, 1, None, "mp", 0, None)
    resp = F.one_hot(torch.arange(10) % 3, 3).to(F64)  # responsibilities are accepted (their argmax)
    assert collapsed(x, prior, 1.0, resp, 0, None, "mp", 0, None).z.tolist() == (torch.arange(10) % 3).tolist()
