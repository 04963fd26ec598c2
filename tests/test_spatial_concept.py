"""SpCoA's collapsed Gibbs conditionals against brute-force enumeration, and the SpatialConcept module."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import betaln, gammaln

from kizuna import modules as km
from kizuna.datasets import simulated_house
from kizuna.metrics import adjusted_rand_score
from kizuna.modules.gmm.normal_wishart import NormalWishart
from kizuna.modules.spatial_concept_gibbs import ConceptSampler, FixedPositions, GaussianPositions, log_stick_weights

ALPHA, GAMMA, BETAS = 0.7, 0.4, [0.3, 1.2]
M0, KAPPA0, NU0, S0 = np.array([0.5, -0.2]), 0.8, 3.5, np.array([[1.0, 0.3], [0.3, 0.7]])


def _log_stick(c: np.ndarray, n_concepts: int) -> float:
    """log p(c) of the truncated GEM(alpha): prod_{l < L-1} B(1 + N_l, alpha + N_{>l}) / B(1, alpha)."""
    n = np.bincount(c, minlength=n_concepts)
    greater = n.sum() - np.cumsum(n)
    return float(sum(betaln(1 + n[j], ALPHA + greater[j]) - betaln(1, ALPHA) for j in range(n_concepts - 1)))


def _log_dirmult(counts: np.ndarray, conc: float) -> float:
    """log of a sequence's Dirichlet-multinomial probability, symmetric concentration ``conc``."""
    v = counts.shape[-1]
    return float((gammaln(v * conc) - gammaln(counts.sum(-1) + v * conc)
                  + (gammaln(counts + conc) - gammaln(conc)).sum(-1)).sum())


def _log_gaussian_evidence(x: np.ndarray) -> float:
    """log p(x_1..x_m) under the Normal-Wishart prior by the chain rule of Student-t predictives (scipy),
    with the posterior updated by hand (Murphy 2007, eqs. 250-254)."""
    m, kappa, nu, s = M0.copy(), KAPPA0, NU0, S0.copy()
    total = 0.0
    for xi in x:
        df = nu - 1
        total += stats.multivariate_t(m, s * (kappa + 1) / (kappa * df), df=df).logpdf(xi)
        m_new = (kappa * m + xi) / (kappa + 1)
        s = s + kappa / (kappa + 1) * np.outer(xi - m, xi - m)
        m, kappa, nu = m_new, kappa + 1, nu + 1
    return total


def _log_joint(c, i, x, ys, n_concepts, n_comp, pos_table=None) -> float:
    total = _log_stick(c, n_concepts)
    for l in range(n_concepts):
        total += _log_dirmult(np.bincount(i[c == l], minlength=n_comp)[None, :], GAMMA)
        for y, beta in zip(ys, BETAS):
            total += _log_dirmult(y[c == l].sum(0)[None, :], beta)
    if pos_table is not None:
        return total + pos_table[np.arange(len(c)), i].sum()
    return total + sum(_log_gaussian_evidence(x[i == k]) for k in range(n_comp) if (i == k).any())


def _prior(n_comp: int) -> NormalWishart:
    t = torch.float64
    return NormalWishart(torch.tensor(M0).expand(n_comp, 2).clone(), torch.full((n_comp,), KAPPA0, dtype=t),
                         torch.full((n_comp,), NU0, dtype=t), torch.tensor(S0).expand(n_comp, 2, 2).clone())


@pytest.mark.parametrize("positions", ["gaussian", "fixed"])
def test_joint_conditional_matches_enumeration(positions):
    rng = np.random.default_rng(0)
    n, n_concepts, n_comp = 4, 3, 2
    x = rng.normal(size=(n, 2))
    ys = [rng.integers(0, 3, size=(n, 3)).astype(float), rng.integers(0, 2, size=(n, 2)).astype(float)]
    c, i = rng.integers(n_concepts, size=n), rng.integers(n_comp, size=n)
    table = rng.normal(size=(n, n_comp)) if positions == "fixed" else None
    pos = FixedPositions(table) if table is not None else GaussianPositions(x, _prior(n_comp), i)
    sampler = ConceptSampler(pos, ys, n_concepts, ALPHA, GAMMA, BETAS, c, i)
    for e in range(n):
        sampler._move(e, -1.0)
        got = sampler.log_conditional(e)
        sampler._move(e, 1.0)
        want = np.empty((n_concepts, n_comp))
        for l, k in itertools.product(range(n_concepts), range(n_comp)):
            cc, ii = c.copy(), i.copy()
            cc[e], ii[e] = l, k
            want[l, k] = _log_joint(cc, ii, x, ys, n_concepts, n_comp, table)
        np.testing.assert_allclose(got - got.max(), want - want.max(), atol=1e-9)


@pytest.mark.parametrize("positions", ["gaussian", "fixed"])
def test_log_joint_is_the_collapsed_joint(positions):
    rng = np.random.default_rng(4)
    n, n_concepts, n_comp = 6, 3, 2
    x = rng.normal(size=(n, 2))
    ys = [rng.integers(0, 3, size=(n, 3)).astype(float), rng.integers(0, 2, size=(n, 2)).astype(float)]
    c, i = rng.integers(n_concepts, size=n), rng.integers(n_comp, size=n)
    table = rng.normal(size=(n, n_comp)) if positions == "fixed" else None
    pos = FixedPositions(table) if table is not None else GaussianPositions(x, _prior(n_comp), i)
    sampler = ConceptSampler(pos, ys, n_concepts, ALPHA, GAMMA, BETAS, c, i)
    assert sampler.log_joint() == pytest.approx(_log_joint(c, i, x, ys, n_concepts, n_comp, table), rel=1e-10)


def test_sweep_draws_from_the_conditional():
    """One event's draws over many repetitions follow the enumerated conditional (chi-square, 1e-3)."""
    rng = np.random.default_rng(1)
    n, n_concepts, n_comp = 3, 2, 2
    ys = [rng.integers(0, 3, size=(n, 3)).astype(float), rng.integers(0, 2, size=(n, 2)).astype(float)]
    table = rng.normal(size=(n, n_comp))
    c, i = np.array([0, 1, 0]), np.array([1, 0, 0])
    sampler = ConceptSampler(FixedPositions(table), ys, n_concepts, ALPHA, GAMMA, BETAS, c, i)
    sampler._move(0, -1.0)
    p = np.exp(sampler.log_conditional(0))
    p = (p / p.sum()).ravel()
    draws = np.zeros(p.size)
    for _ in range(4000):
        sampler._draw(0, rng)
        draws[sampler.state.c[0] * n_comp + sampler.state.i[0]] += 1
        sampler._move(0, -1.0)
    assert stats.chisquare(draws, 4000 * p).pvalue > 1e-3


def test_stick_weights_are_a_distribution_and_follow_the_counts():
    w = np.exp(log_stick_weights(np.array([5.0, 0.0, 2.0, 0.0]), 1.0))
    assert w.sum() == pytest.approx(1.0)
    assert w[0] > w[2] > w[1]


def test_gaussian_positions_match_the_normal_wishart_predictive():
    rng = np.random.default_rng(2)
    x, z = rng.normal(size=(6, 2)), np.array([0, 0, 1, 1, 1, 0])
    pos = GaussianPositions(x, _prior(2), z)
    pos.remove(0, 0)
    want = [_log_gaussian_evidence(np.vstack([x[1:][z[1:] == k], x[:1]])) - _log_gaussian_evidence(x[1:][z[1:] == k])
            for k in range(2)]
    np.testing.assert_allclose(pos.log_lik(0), want, rtol=1e-10)


@pytest.fixture(scope="module")
def fitted():
    house = simulated_house(150, seed=0)
    gmm = km.GMM(8, max_iter=10).connect(km.Observation(house["position"]))
    spco = km.SpatialConcept(8, category=house["place"], sweeps=10).connect(
        gmm, km.Observation(house["word_counts"]), km.Observation(house["view"]))
    km.Graph([spco]).fit(n_iter=3, seed=0)
    return house, gmm, spco


def test_module_learns_the_places(fitted):
    house, gmm, spco = fitted
    alone = adjusted_rand_score(house["place"], km.GMM(6, random_state=0).fit_predict(house["position"]))
    assert spco.ari > max(0.7, alone) and abs(spco.n_concepts_ - 6) <= 1
    assert torch.allclose(spco.posterior.sum(1), torch.ones(150, dtype=spco.posterior.dtype))
    # the GMM got the component prior instead of mixing weights
    assert gmm.backward_in is not None and gmm.backward_in.value.shape == (150, 8)


def test_min_share_zero_counts_the_concepts_that_hold_events(fitted):
    """min_share=0 counted every one of the L concepts (8), empty ones included: more than n_nonempty_."""
    _, _, spco = fitted
    held = np.bincount(spco.classes.cpu().numpy(), minlength=spco.n_classes)
    assert (held == 0).any()  # (the fixture leaves some of its 8 concepts empty)
    old = spco.min_share
    try:
        spco.min_share = 0.0
        assert spco.n_concepts_ == spco.n_nonempty_ == int((held > 0).sum())
    finally:
        spco.min_share = old


def test_predictions(fitted):
    house, _, spco = fitted
    kitchen, study = house["vocabulary"].index("kitchen"), house["vocabulary"].index("study")
    words = spco.predict_words(np.array([[2.0, 1.5], [7.0, 4.5]]))
    assert words.shape == (2, len(house["vocabulary"])) and np.allclose(words.sum(1), 1)
    assert words[0, kitchen] > words[1, kitchen] and words[1, study] > words[0, study]
    y = np.zeros((1, len(house["vocabulary"])))
    y[0, kitchen] = 1
    x = spco.predict_position(y)[0]
    assert 0 <= x[0] <= 4 and 0 <= x[1] <= 3  # inside the kitchen


@pytest.mark.parametrize("value", [np.nan, np.inf, -5.0])
def test_predict_position_refuses_counts_that_are_not_finite_and_non_negative(fitted, value):
    """A NaN row scored NaN for every place and argmax returned the first GMM mean; an infinite or negative count also
    gave a position: each is now an error naming the row and column."""
    house, _, spco = fitted
    y = np.zeros((2, len(house["vocabulary"])))
    y[1, 3] = value
    with pytest.raises(ValueError, match="finite and non-negative.*row 1, column 3"):
        spco.predict_position(y)
    with pytest.raises(ValueError, match=r"word counts are rows of counts .*, got shape \(2, 2, "):
        spco.predict_position(np.zeros((2, 2, len(house["vocabulary"]))))


def test_wiring_errors():
    house = simulated_house(20, seed=0)
    spco = km.SpatialConcept(3).connect(km.Observation(house["word_counts"]))
    with pytest.raises(ValueError, match="position module"):
        km.Graph([spco]).fit(1, seed=0)
    with pytest.raises(ValueError):
        km.SpatialConcept(3, alpha=-1.0)


def test_predicted_position_with_a_diagonal_gmm():
    """A GMM with diagonal covariances (K x D variances) weighs each place's peak density by prod(var)^-1/2, as the
    full-covariance path does by det^-1/2 (np.linalg.det of the K x D array failed or gave a scalar)."""
    house = simulated_house(60, seed=0)
    gmm = km.GMM(4, max_iter=5, covariance_type="diag").connect(km.Observation(house["position"]))
    spco = km.SpatialConcept(3, sweeps=3).connect(gmm, km.Observation(house["word_counts"]))
    km.Graph([spco]).fit(n_iter=1, seed=3)
    y = house["word_counts"][:3]
    got = spco.predict_position(y)
    sampler = spco.sampler_
    pi, phi = sampler.weights()
    theta = sampler.feature_distributions(0)
    log_l = np.log(pi)[None, :] + np.asarray(y, dtype=np.float64) @ np.log(theta).T
    post = np.exp(log_l - log_l.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    var = np.asarray(gmm.covariances_)
    assert var.shape == (4, 2)
    score = (post @ phi) / np.sqrt(var.prod(1))[None, :]
    np.testing.assert_array_equal(got, np.asarray(gmm.means_)[score.argmax(1)])


@pytest.mark.parametrize("kwargs, match", [
    ({"anneal": 0.0}, "anneal is the first sweep's temperature"), ({"anneal": -2.0}, "anneal is the first sweep's"),
    ({"alpha": float("nan")}, "need finite alpha, gamma, beta > 0"), ({"alpha": float("inf")}, "need finite alpha"),
    ({"beta": [float("nan"), 1.0]}, "need finite alpha, gamma, beta"), ({"min_share": 2.0}, "min_share is a share"),
    ({"sweeps": 2.5}, "sweeps must be an integer >= 1"), ({"n_init": 1.5}, "n_init must be an integer >= 1"),
    ({"split_merge": 1.5}, "split_merge must be an integer >= 0")])
def test_bad_settings_are_named_when_built(kwargs, match):
    """anneal <= 0 divided by zero or gave negative temperatures; NaN / inf concentrations, a share above 1 and
    fractional sweep counts were accepted and failed (or fitted nonsense) later."""
    with pytest.raises(ValueError, match=match):
        km.SpatialConcept(**kwargs)


def test_predicted_concepts_follow_the_gaussian_densities_of_scipy_far_from_the_data_too():
    """:math:`p(l|x) \\propto \\pi_l \\sum_k \\phi_{lk} \\mathcal N(x; \\mu_k, \\Sigma_k)` under an EM GMM, with the
    densities from scipy, at positions inside the house and tens to hundreds of metres outside it (where the GMM's
    own posterior underflows: the densities are the GMM's, no longer recovered from it)."""
    from scipy.special import logsumexp

    house = simulated_house(200, seed=1)
    gmm = km.GMM(6, algorithm="em", max_iter=20).connect(km.Observation(house["position"]))
    spco = km.SpatialConcept(6, sweeps=20).connect(gmm, km.Observation(house["word_counts"]),
                                                  km.Observation(house["view"]))
    km.Graph([spco]).fit(n_iter=4, seed=0)
    pos = np.array([[1.0, 1.0], [2.5, 3.0], [60.0, -40.0], [200.0, 200.0], [-30.0, 5.0]])
    log_px = np.stack([stats.multivariate_normal(m, c).logpdf(pos) for m, c in zip(gmm.means_, gmm.covariances_)], 1)
    pi, phi = spco.sampler_.weights()
    log_joint = np.log(pi)[None] + logsumexp(np.log(phi)[None] + log_px[:, None, :], axis=2)
    np.testing.assert_allclose(spco.predict_concepts(pos), np.exp(log_joint - logsumexp(log_joint, 1, keepdims=True)),
                               rtol=1e-9, atol=1e-12)


def test_concept_log_predictive_names_counts_without_word_columns():
    """V = 0 gave NaN (gammaln(0) - gammaln(0)) with a RuntimeWarning only."""
    from kizuna.modules.segment_selection import concept_log_predictive

    r = np.full((7, 2), 0.5)
    with pytest.raises(ValueError, match="no word columns"):
        concept_log_predictive(np.zeros((7, 0)), r)
