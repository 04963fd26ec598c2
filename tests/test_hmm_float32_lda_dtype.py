"""Float32 Gaussian HMM emissions of far-apart states, HMM sampling at a zero draw, MultimodalLDA's dtype over
several modalities, and load_module's children (reviews of stop 41: gmmhmm findings 1-2, lda_graph 1-2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import kizuna.modules as km
from kizuna.modules import _forward_backward as fb
from kizuna.modules.gmm.normal_wishart import gaussian_log_prob
from kizuna.modules.hmm import HiddenMarkovModel, emissions
from kizuna.modules.hmm.emissions import Gaussian, expansion_error, expansion_rounding
from kizuna.modules.lda import MultimodalLDA

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
F32, F64 = torch.float32, torch.float64


def covars(kind: str, k: int, d: int, var: float) -> np.ndarray:
    return {"diag": np.full((k, d), var), "spherical": np.full(k, var), "full": np.stack([var * np.eye(d)] * k),
            "tied": var * np.eye(d)}[kind]


def hmm(kind: str, start: np.ndarray, trans: np.ndarray, means: np.ndarray, var: float, dtype) -> HiddenMarkovModel:
    m = HiddenMarkovModel(len(start), covariance_type=kind)
    m.startprob_, m.transmat_ = torch.tensor(start, dtype=dtype), torch.tensor(trans, dtype=dtype)
    m.means_ = torch.tensor(means, dtype=dtype)
    m.covars_ = torch.tensor(covars(kind, *means.shape, var), dtype=dtype)
    return m


# ---------------------------------------------------------------------------------------------- gmmhmm 1
@pytest.mark.parametrize("kind", ["diag", "spherical", "full", "tied"])
def test_gaussian_log_prob_of_far_apart_states_matches_scipy_in_float32(kind):
    # states 100 and 50 apart with variance 1e-3 (the default min_covar): hmmlearn's expansion x^2/s - 2 x mu/s +
    # mu^2/s cancelled, so diag and spherical float32 rows were up to 2 nats off (5e-9 in float64); full and tied
    # (differences by a triangular solve) were right and stay so
    rng = np.random.default_rng(0)
    d, var = 3, 1e-3
    means = np.array([np.zeros(d), np.full(d, 100.0), np.r_[50.0, np.zeros(d - 1)]])
    z = rng.integers(0, 3, 3000)
    x = means[z] + rng.normal(0, np.sqrt(var), (3000, d))
    ref = np.stack([stats.multivariate_normal(mu, var * np.eye(d)).logpdf(x) for mu in means], 1)
    rows = np.arange(len(z))
    for dtype, tol in ((F32, 2e-3), (F64, 1e-11)):  # float32: the rounding of x itself, ~6e-8 |x| / sigma
        p = {"means_": torch.tensor(means, dtype=dtype), "covars_": torch.tensor(covars(kind, 3, d, var), dtype=dtype)}
        out = Gaussian(kind, 1e-3).log_prob(torch.tensor(x, dtype=dtype), p)
        assert out.dtype == dtype and out.shape == (3000, 3)
        own = out.double().numpy()[rows, z]  # the other states' rows are ~1e7 nats down, rounded to float32
        assert np.abs(own - ref[rows, z]).max() < tol, (dtype, np.abs(own - ref[rows, z]).max())
        assert abs((own - ref[rows, z]).sum()) < 3000 * tol / 10  # no bias summed over the rows


# float32 below 16 states: (K, 2D) x (2D, B); float64, and from 16 states: (B, 2D) x (2D, K)
@pytest.mark.parametrize("k, n", [(4, 70_001), (20, 20_001)])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_gaussian_log_prob_in_row_blocks_matches_scipy(k, n, dtype):
    # more rows than one block of `row_blocks` (the last one partial): every row is computed; float32 to the rounding
    # of the density of its own (rounded) inputs
    rng = np.random.default_rng(1)
    means, var, x = rng.normal(0, 3, (k, 2)), rng.uniform(0.5, 2, (k, 2)), rng.normal(0, 3, (n, 2))
    if dtype == F32:
        means, var, x = (a.astype(np.float32).astype(float) for a in (means, var, x))
    p = {"means_": torch.tensor(means, dtype=dtype), "covars_": torch.tensor(var, dtype=dtype)}
    out = Gaussian("diag", 1e-3).log_prob(torch.tensor(x, dtype=dtype), p)
    assert out.dtype == dtype and out.is_contiguous()
    ref = np.stack([stats.multivariate_normal(m, np.diag(v)).logpdf(x) for m, v in zip(means, var)], 1)
    tol = np.spacing(np.abs(ref).astype(np.float32)).astype(float) / 2 if dtype == F32 else 1e-12 * (1 + np.abs(ref))
    assert (np.abs(out.double().numpy() - ref) <= tol + 1e-12).all()


def _sticky_states(rng: np.random.Generator, n: int) -> np.ndarray:
    """The state path of the reviews' sticky 2-state chain: each step stays with probability 0.95."""
    z = np.zeros(n, int)
    for t in range(1, n):
        z[t] = z[t - 1] if rng.random() < 0.95 else 1 - z[t - 1]
    return z


@pytest.mark.parametrize("kind", ["diag", "spherical"])
def test_hmm_float32_score_and_posteriors_of_far_apart_states(kind):
    # the review's sticky 2-state chain (states 100 apart, variance 1e-3, 10,000 steps): float32 scored 285 nats low
    rng = np.random.default_rng(0)
    n, var = 10_000, 1e-3
    z = _sticky_states(rng, n)
    means = np.array([[0.0], [100.0]])
    x = means[z] + rng.normal(0, np.sqrt(var), (n, 1))
    start, trans = np.array([0.5, 0.5]), np.array([[0.95, 0.05], [0.05, 0.95]])
    le = np.stack([stats.norm(mu[0], np.sqrt(var)).logpdf(x[:, 0]) for mu in means], 1)
    ref = float(fb.forward_log_likelihood(torch.tensor(np.log(start)), torch.tensor(np.log(trans)), torch.tensor(le)))
    m32, m64 = (hmm(kind, start, trans, means, var, dt) for dt in (F32, F64))
    x32, x64 = torch.tensor(x, dtype=F32), torch.tensor(x)
    assert abs(m64.score(x64) - ref) < 1e-6
    assert abs(m32.score(x32) - ref) < 0.05
    assert (m32.predict_proba(x32).double() - m64.predict_proba(x64)).abs().max() < 1e-3
    assert torch.equal(m32.predict(x32), m64.predict(x64))


@pytest.mark.parametrize("kind", ["diag", "spherical"])
def test_hmm_float32_posteriors_of_overlapping_states_beside_a_far_one(kind):
    # two overlapping states (means 0 and 0.05) and a third at 100: float32 posteriors were 0.023 off and 26 of
    # 2,200 Viterbi states differed from float64
    rng = np.random.default_rng(1)
    means, var = np.array([[0.0], [0.05], [100.0]]), 2e-3
    x = np.concatenate([rng.normal(0.025, 0.05, (2000, 1)), rng.normal(100, 0.05, (200, 1))])
    start, trans = np.full(3, 1 / 3), np.full((3, 3), 1 / 3)
    m32, m64 = (hmm(kind, start, trans, means, var, dt) for dt in (F32, F64))
    x32, x64 = torch.tensor(x, dtype=F32), torch.tensor(x)
    assert (m32.predict_proba(x32).double() - m64.predict_proba(x64)).abs().max() < 1e-4
    assert torch.equal(m32.predict(x32), m64.predict(x64))
    assert abs(m32.score(x32) - m64.score(x64)) < 0.05


# the float64 expansion (one product per block of rows) and where the differences take over
@pytest.mark.parametrize("kind", ["diag", "spherical"])
@pytest.mark.parametrize("sep, var", [(100.0, 1e-3), (1.0, 1e-2)])
def test_float32_gaussian_log_prob_is_the_rounded_density_of_its_inputs(kind, sep, var):
    # ten features: every float32 log-emission is the float32 rounding of the exact density of the float32 data and
    # parameters (the float64 expansion is within eps64 * B of it); the float32 sum of the ten (x - mu)^2 / sigma^2
    # (fd68540) was up to 7 ulps off with a bias of 4e-6 nats a row, and 700 ulps on log-densities near 0
    rng = np.random.default_rng(0)
    d, n = 10, 3000
    means = np.array([np.zeros(d), np.full(d, sep)])
    z = rng.integers(0, 2, n)
    x = (means[z] + rng.normal(0, np.sqrt(var), (n, d))).astype(np.float32)
    v32 = float(np.float32(var))
    ref = np.stack([stats.multivariate_normal(mu, v32 * np.eye(d)).logpdf(x.astype(np.float64)) for mu in means], 1)
    p = {"means_": torch.tensor(means, dtype=F32), "covars_": torch.tensor(covars(kind, 2, d, var), dtype=F32)}
    out = Gaussian(kind, 1e-3).log_prob(torch.tensor(x), p)
    assert out.dtype == F32 and out.shape == (n, 2) and out.is_contiguous()
    half_ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64) / 2
    b = d * (sep / 2) ** 2 / v32  # max_k sum_d (mu_kd - c_d)^2 / sigma^2
    assert (np.abs(out.double().numpy() - ref) <= half_ulp + 2 * np.finfo(np.float64).eps * b).all()


def states_apart(d: int, b: float, rng: np.random.Generator, n: int, dtype) -> tuple[np.ndarray, ...]:
    """Two states at c -/+ a s (s a random sign per feature, variance 1) with sum_d (mu_d - c_d)^2 = ``b``, and ``n``
    rows drawn from them: (means, x, each row's state)."""
    s = rng.choice([-1.0, 1.0], d) * np.sqrt(b / d)
    means = np.stack([5.0 - s, 5.0 + s])
    z = rng.integers(0, 2, n)
    x = (means[z] + rng.normal(size=(n, d))).astype(np.float32 if dtype == F32 else np.float64)
    return means.astype(x.dtype), x, z


@pytest.mark.parametrize("d", [1, 10, 100, 1000])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_gaussian_log_prob_takes_the_differences_only_past_the_expansions_rounding(monkeypatch, dtype, d):
    # the expansion's terms are of size B and 2D + 1 of them are summed: it rounds a row by up to eps64 B sqrt(2D + 1)
    # (`expansion_error`); below the switch one product per block (the speed of hmmlearn's expansion), above it the
    # differences (`gaussian_log_prob`); every row within `expansion_rounding` of scipy (float32: of the density of
    # its own rounded inputs, past half an ulp; its differences, in float32, within two ulps). The switch at eps64 B
    # (without the D) took the expansion at 0.9 of it: rows 2.4e-10, 7.7e-10 and 2.3e-9 nats off in float64 for
    # D = 10, 100, 1000, against the documented 1e-10
    calls = []
    monkeypatch.setattr(emissions, "gaussian_log_prob", lambda *a: calls.append(1) or gaussian_log_prob(*a))
    eps, limit = torch.finfo(F64).eps, expansion_rounding(dtype)
    switch = limit / (eps * np.sqrt(2 * d + 1))  # B where `expansion_error` reaches the limit
    assert expansion_error(switch, d) == pytest.approx(limit)
    rng = np.random.default_rng(d)
    for b, differences in ((0.9 * switch, False), (1.1 * switch, True), (0.9 * limit / eps, True)):
        means, x, z = states_apart(d, b, rng, 400, dtype)
        ref = stats.norm(means.astype(float)[z], 1.0).logpdf(x.astype(float)).sum(1)  # each row's own state
        calls.clear()
        out = Gaussian("diag", 1e-3).log_prob(torch.tensor(x), {"means_": torch.tensor(means),
                                                                "covars_": torch.ones(2, d, dtype=dtype)})
        assert bool(calls) == differences, (b / switch, bool(calls))
        err = np.abs(out.double().numpy()[np.arange(len(z)), z] - ref)
        ulps = np.spacing(np.abs(ref).astype(np.float32)).astype(float) * (2 if differences else 0.5)
        assert (err - (ulps if dtype == F32 else 0)).max() < limit, (b / switch, err.max())


@pytest.mark.parametrize("k", [2, 5, 8])
def test_float64_gaussian_log_prob_of_few_states_is_as_precise_as_70a0261s_product(k):
    # 1000 features, B = 5e3 (below the switch), rows at the states: 70a0261's one (N, 2D) x (2D, K) product rounds
    # a row by 1.2-6 eps64 B here (one thread, MKL), HEAD's (K, 2D) x (2D, B) by 25-31 eps64 B; float64 takes the
    # former again (float32 keeps the latter: its rounding is below float32's)
    rng = np.random.default_rng(k)
    d, n, b = 1000, 600, 5e3
    means = rng.choice([-1.0, 1.0], (k, d))
    means -= means.mean(0)
    means = means * np.sqrt(b / (means**2).sum(1).max()) + 3.0
    z = rng.integers(0, k, n)
    x = means[z] + rng.normal(size=(n, d))
    ref = stats.norm(means[z], 1.0).logpdf(x).sum(1)
    X, M = torch.tensor(x), torch.tensor(means)
    out = Gaussian("diag", 1e-3).log_prob(X, {"means_": M, "covars_": torch.ones(k, d, dtype=F64)})
    c = M.mean(0)  # 70a0261's product: hmmlearn's expansion about the means' centre, in one (N, 2D) x (2D, K) product
    old = torch.addmm(-0.5 * (((M - c) ** 2).sum(-1) + d * np.log(2 * np.pi)), torch.cat([(X - c) ** 2, X - c], 1),
                      torch.cat([torch.ones(k, d, dtype=F64), -2.0 * (M - c)], 1).T.mul(-0.5))
    own = (np.arange(n), z)
    err, err_old = np.abs(out.numpy()[own] - ref).max(), np.abs(old.numpy()[own] - ref).max()
    assert err <= 1.25 * err_old + 1e-13, (err / (np.finfo(float).eps * b), err_old / (np.finfo(float).eps * b))
    assert err < expansion_error(b, d)


@pytest.mark.parametrize("kind", ["diag", "spherical"])
def test_hmm_of_states_1e4_apart_with_variance_1e_4_matches_scipy(kind):
    # B = 2.5e11 (states 1e4 apart, variance 1e-4, 10,000 steps): the float64 expansion rounds a row by 3e-5 nats
    # (a float64 score 0.019 nats off), so the differences are taken in both dtypes; float32 is compared with the
    # density of its own rounded data (the data's float32 rounding alone moves a row by up to 0.05 nats here)
    rng = np.random.default_rng(0)
    n, var = 10_000, 1e-4
    z = _sticky_states(rng, n)
    means = np.array([[0.0], [1e4]])
    start, trans = np.array([0.5, 0.5]), np.array([[0.95, 0.05], [0.05, 0.95]])
    x = means[z] + rng.normal(0, np.sqrt(var), (n, 1))
    for dtype, tol in ((F64, 1e-10), (F32, 2e-6)):
        xd = x.astype(np.float32).astype(float) if dtype == F32 else x
        v = float(np.float32(var)) if dtype == F32 else var
        le = np.stack([stats.norm(mu[0], np.sqrt(v)).logpdf(xd[:, 0]) for mu in means], 1)
        m = hmm(kind, start, trans, means, var, dtype)
        own = (m._log_emit(torch.tensor(xd, dtype=dtype)).double().numpy() - le)[np.arange(n), z]
        assert np.abs(own).max() < tol, (dtype, np.abs(own).max())
        ls, lt = torch.tensor(np.log(start)), torch.tensor(np.log(trans))
        ref = float(fb.forward_log_likelihood(ls, lt, torch.tensor(le)))
        assert abs(m.score(torch.tensor(xd, dtype=dtype)) - ref) < (1e-6 if dtype == F64 else 0.02)
        assert torch.equal(m.predict(torch.tensor(xd, dtype=dtype)), fb.viterbi(ls, lt, torch.tensor(le))[1])


# ---------------------------------------------------------------------------------------------- gmmhmm 2
def with_draws(monkeypatch, value: float) -> None:
    """Make ``torch.rand`` (the uniform draws of `HiddenMarkovModel.sample`'s chain) return ``value`` everywhere."""
    def fake(*size, generator=None, dtype=None, device=None, **kwargs):
        shape = size[0] if len(size) == 1 and isinstance(size[0], tuple | list | torch.Size) else size
        return torch.full(tuple(shape), value, dtype=dtype or torch.get_default_dtype(), device=device)
    monkeypatch.setattr(torch, "rand", fake)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_sample_never_draws_a_zero_probability_state_at_a_zero_draw(monkeypatch, dtype):
    # u == 0 exactly (float32: once per 2^24 steps; seed 84's stream at step 96,765) took state 0 with probability 0
    m = hmm("diag", np.array([0.0, 1.0]), np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[-100.0], [0.0]]), 1.0,
            dtype)
    with_draws(monkeypatch, 0.0)
    X, states = m.sample(6, random_state=0)
    assert states.tolist() == [1] * 6
    # a zero-mass state inside a row, after the first one
    m = hmm("diag", np.array([0.5, 0.0, 0.5]), np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
            np.array([[0.0], [1.0], [2.0]]), 1.0, dtype)
    assert m.sample(4, random_state=0)[1].tolist() == [0, 2, 2, 2]


@pytest.mark.parametrize("dtype", [F32, F64])
def test_sample_never_draws_a_trailing_zero_probability_state_at_the_largest_draw(monkeypatch, dtype):
    # u = the largest value below 1: the last states of mass 0 are not drawn either (u is scaled by the row's total)
    m = hmm("diag", np.array([0.7, 0.3, 0.0]), np.array([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
            np.array([[0.0], [1.0], [2.0]]), 1.0, dtype)
    with_draws(monkeypatch, 1 - torch.finfo(dtype).eps / 2)
    assert m.sample(3, random_state=0)[1].tolist() == [1, 1, 1]


# ---------------------------------------------------------------------------------------------- lda_graph 1
def test_multimodal_lda_computes_in_the_widest_floating_dtype_of_the_modalities():
    g = torch.Generator().manual_seed(0)
    a = torch.poisson(torch.full((8, 4), 3.0), generator=g)
    b = torch.poisson(torch.full((8, 3), 2.0), generator=g)

    def fit(x):
        return MultimodalLDA(2, max_iter=3, random_state=0, backend="torch").fit(x)

    reference = fit([a.double(), b.double()])
    for x, dtype in (([a.float(), b.double()], F64), ([a.double(), b.float()], F64), ([a.long(), b.float()], F32),
                     ([a.float(), b.long()], F32), ([a.long(), b.long()], F64), ([a.numpy(), b.double()], F64),
                     ([a.half(), b.float()], F32)):
        m = fit(x)
        assert [c.dtype for c in m.components_] == [dtype] * 2, [str(v.dtype) for v in x]
        assert m.doc_topic_.dtype == dtype and torch.as_tensor(m.transform(x)).dtype == dtype
        if dtype == F64:  # the same counts in the same dtype: the same chain, draw for draw
            assert all(torch.equal(c, r) for c, r in zip(m.components_, reference.components_))
            assert torch.equal(m.doc_topic_, reference.doc_topic_)
    # the node's rule (`kizuna.modules.lda.node`): the same dtype for the same modalities
    ml = km.MLDA(2, max_iter=2, name="ml").connect(km.Observation(a.float(), name="a"),
                                                     km.Observation(b.double(), name="b"))
    km.Graph([ml]).fit(1, seed=0)
    assert ml.posterior.dtype == fit([a.float(), b.double()]).doc_topic_.dtype == F64


# ---------------------------------------------------------------------------------------------- lda_graph 2
def test_load_module_into_a_module_without_the_saved_children_names_them(tmp_path):
    w = torch.poisson(torch.full((10, 4), 3.0), generator=torch.Generator().manual_seed(0)).double()
    ml = km.MLDA(2, name="ml", max_iter=3).connect(km.Observation(w, name="w"))
    km.Graph([ml]).fit(1, seed=0)
    path = km.save_module(ml, tmp_path / "ml.pt")
    with pytest.raises(km.GraphError) as err:
        km.load_module(km.MLDA(2, name="ml", max_iter=3), path)
    assert str(err.value) == (f"{path} holds a different module:\n  ml: saved children ['w'] but the module has [] "
                              "(connect the same children, by name, before loading)")
    with pytest.raises(km.GraphError) as err:
        km.load_module(km.MLDA(2, name="other", max_iter=3).connect(km.Observation(w, name="w")), path)
    assert str(err.value) == (f"{path} holds a different module:\n  module 'ml' was saved but the module is named "
                              "'other'")
    assert "children" in km.load_module.__doc__
    # connected as saved, it loads, and the loaded topics are the saved ones
    fresh = km.MLDA(2, name="ml", max_iter=3).connect(km.Observation(w, name="w"))
    km.load_module(fresh, path)
    assert all(torch.equal(x, y) for x, y in zip(fresh._phi, ml._phi))
    assert fresh.transform(w[:2]).shape == (2, 2)
