"""HMM and the shared forward-backward against brute-force enumeration, hmmlearn and the SERKET HMM data."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hmmlearn import hmm as hl
from scipy import stats

from kizuna.metrics.clustering import clustering_accuracy
from kizuna.modules import _backend
from kizuna.modules import _forward_backward as fb
from kizuna.modules.hmm import HMM

F64 = torch.float64
START = np.array([0.6, 0.3, 0.1])
TRANS = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
MEANS = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
COVARS = {
    "diag": np.array([[1.0, 0.5], [0.3, 1.0], [1.0, 1.0]]),
    "full": np.array([np.eye(2), [[1.0, 0.5], [0.5, 1.0]], [[2.0, -0.3], [-0.3, 0.5]]]),
    "spherical": np.array([1.0, 0.5, 2.0]),
    "tied": np.array([[1.0, 0.2], [0.2, 0.7]]),
}
LENGTHS = [100, 150, 50]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
# decode's two backends (`kizuna.modules._backend`): the compiled one only where the extra ``fast`` is installed
BACKENDS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not _backend.numba_available(),
                                                                   reason="numba not installed (kizuna[fast])"))]


def reference(covariance_type: str) -> hl.GaussianHMM:
    ref = hl.GaussianHMM(3, covariance_type=covariance_type, init_params="", random_state=0)
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = START, TRANS, MEANS, COVARS[covariance_type]
    return ref


def ours(covariance_type: str, backend: str = "torch") -> HMM:
    model = HMM(3, covariance_type=covariance_type, init_params="", backend=backend)
    model.startprob_, model.transmat_ = torch.tensor(START), torch.tensor(TRANS)
    model.means_, model.covars_ = torch.tensor(MEANS), torch.tensor(COVARS[covariance_type])
    return model


def random_chain(k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.log_softmax(torch.randn(k, generator=g, dtype=F64), 0),
            torch.log_softmax(torch.randn(k, k, generator=g, dtype=F64), 1),
            torch.randn(n, k, generator=g, dtype=F64) * 2)


def enumerate_chain(log_start, log_trans, log_emit):
    """Every path of one sequence: (paths (S, T), log p(x, path) (S,))."""
    t, k = log_emit.shape
    paths = torch.tensor(list(itertools.product(range(k), repeat=t)))
    lp = log_start[paths[:, 0]] + log_emit[torch.arange(t), paths].sum(1)
    lp = lp + log_trans[paths[:, :-1], paths[:, 1:]].sum(1)
    return paths, lp


def test_forward_backward_and_viterbi_match_enumeration():
    k, lengths = 3, [4, 1, 3, 2]
    log_start, log_trans, log_emit = random_chain(k, sum(lengths), seed=0)
    sm = fb.forward_backward(log_start, log_trans, log_emit, lengths)
    score, path = fb.viterbi(log_start, log_trans, log_emit, lengths)
    gammas, cavities, trans, starts, lls, best_paths = [], [], torch.zeros(k, k, dtype=F64), 0, [], []
    for b, e in enumerate(torch.split(log_emit, lengths)):
        paths, lp = enumerate_chain(log_start, log_trans, e)
        ll = torch.logsumexp(lp, 0)
        w = torch.exp(lp - ll)
        onehot = torch.nn.functional.one_hot(paths, k).to(F64)  # (S, T, K)
        gamma = torch.einsum("s,stk->tk", w, onehot)
        gammas.append(gamma)
        cavities.append(gamma / torch.exp(e) / (gamma / torch.exp(e)).sum(1, keepdim=True))
        trans += torch.einsum("s,stk,stl->kl", w, onehot[:, :-1], onehot[:, 1:])
        starts = starts + gamma[0]
        lls.append(ll)
        assert torch.isclose(score[b], lp.max(), atol=1e-10)
        best_paths.append(paths[lp.argmax()])
    torch.testing.assert_close(sm.log_likelihood, torch.stack(lls), atol=1e-10, rtol=0)
    torch.testing.assert_close(fb.forward_log_likelihood(log_start, log_trans, log_emit, lengths), torch.stack(lls))
    torch.testing.assert_close(torch.exp(sm.log_gamma), torch.cat(gammas), atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.exp(sm.log_cavity), torch.cat(cavities), atol=1e-10, rtol=0)
    torch.testing.assert_close(sm.trans_counts, trans, atol=1e-10, rtol=0)
    torch.testing.assert_close(sm.start_counts, starts, atol=1e-10, rtol=0)
    assert torch.equal(path, torch.cat(best_paths))


def test_ffbs_paths_match_enumerated_posterior_by_chi_square():
    """20,000 exact posterior paths of a 2-state, 5-step chain binned over its 32 paths:
    Pearson chi-square (31 dof) at a stated false-alarm rate of 1e-3 (fixed seed)."""
    log_start, log_trans, log_emit = random_chain(2, 5, seed=1)
    paths, lp = enumerate_chain(log_start, log_trans, log_emit)
    probs = torch.softmax(lp, 0).numpy()
    draws = fb.sample_paths(log_start, log_trans, log_emit, n_samples=20_000,
                            generator=torch.Generator().manual_seed(0))
    index = (draws * (2 ** torch.arange(4, -1, -1))).sum(1)  # path -> row of itertools.product order
    observed = np.bincount(index.numpy(), minlength=32)
    assert stats.chisquare(observed, probs * observed.sum()).pvalue > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("covariance_type", ["diag", "full", "spherical", "tied"])
def test_score_posteriors_and_viterbi_match_hmmlearn(covariance_type, backend):
    ref, model = reference(covariance_type), ours(covariance_type, backend)
    x, _ = ref.sample(300, random_state=1)
    assert model.score(x, LENGTHS) == pytest.approx(ref.score(x, LENGTHS), abs=1e-8)
    np.testing.assert_allclose(model.predict_proba(x, LENGTHS), ref.predict_proba(x, LENGTHS), atol=1e-9)
    logprob, states = model.decode(x, LENGTHS)
    ref_logprob, ref_states = ref.decode(x, LENGTHS)
    assert logprob == pytest.approx(ref_logprob, abs=1e-8)
    np.testing.assert_array_equal(states, ref_states)
    np.testing.assert_array_equal(model.predict(x, LENGTHS), ref.predict(x, LENGTHS))
    map_logprob, map_states = model.decode(x, LENGTHS, algorithm="map")
    _, ref_map_states = ref.decode(x, LENGTHS, algorithm="map")
    np.testing.assert_array_equal(map_states, ref_map_states)
    # hmmlearn 0.3 returns the *sum* of the max posteriors as "log_prob" here; ours is the sum of their logs
    assert map_logprob == pytest.approx(np.log(ref.predict_proba(x, LENGTHS).max(1)).sum(), abs=1e-8)


def categorical_pair(backend: str = "torch") -> tuple[hl.CategoricalHMM, HMM]:
    ref = hl.CategoricalHMM(2, init_params="", random_state=0)
    ref.startprob_, ref.transmat_ = np.array([0.5, 0.5]), np.array([[0.9, 0.1], [0.2, 0.8]])
    ref.emissionprob_ = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    model = HMM(2, emission="categorical", init_params="", backend=backend)  # numpy parameters, set as in hmmlearn
    model.startprob_, model.transmat_, model.emissionprob_ = ref.startprob_, ref.transmat_, ref.emissionprob_
    return ref, model


@pytest.mark.parametrize("backend", BACKENDS)
def test_categorical_matches_hmmlearn(backend):
    ref, model = categorical_pair(backend)
    x, _ = ref.sample(200, random_state=0)
    assert model.score(x, [120, 80]) == pytest.approx(ref.score(x, [120, 80]), abs=1e-9)
    np.testing.assert_array_equal(model.predict(x), ref.predict(x))
    np.testing.assert_allclose(model.predict_proba(x), ref.predict_proba(x), atol=1e-10)


@pytest.mark.parametrize("covariance_type", ["diag", "full", "spherical", "tied", "categorical"])
def test_em_log_likelihood_never_decreases(covariance_type):
    if covariance_type == "categorical":
        x, _ = categorical_pair()[0].sample(300, random_state=2)
        model = HMM(2, emission="categorical", n_iter=60, tol=-np.inf, random_state=0).fit(x)
    else:
        x, _ = reference(covariance_type).sample(300, random_state=2)
        model = HMM(3, covariance_type=covariance_type, n_iter=60, tol=-np.inf, random_state=0).fit(x, LENGTHS)
    history = np.array(model.history_)
    assert len(history) == 60
    assert (np.diff(history) >= -1e-8 * np.abs(history[1:])).all()
    assert history[-1] > history[0] + 1.0  # and it learns


@pytest.mark.parametrize("covariance_type", ["diag", "full", "spherical", "tied"])
def test_em_matches_hmmlearn_from_the_same_start(covariance_type):
    """10 Baum-Welch iterations from our k-means start, in hmmlearn with its covariance prior switched
    off (covars_prior=0, so both are maximum likelihood): the same final likelihood and means."""
    x, _ = reference(covariance_type).sample(300, random_state=3)
    init = HMM(3, covariance_type=covariance_type, n_iter=0, random_state=0).fit(x, LENGTHS)
    params = (init.startprob_, init.transmat_, init.means_, init.covars_)
    ref = hl.GaussianHMM(3, covariance_type=covariance_type, n_iter=10, tol=-np.inf, init_params="",
                         covars_prior=0.0)
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = (p.numpy() for p in params)
    ref.fit(x, LENGTHS)
    model = HMM(3, covariance_type=covariance_type, n_iter=10, tol=-np.inf, init_params="")
    model.startprob_, model.transmat_, model.means_, model.covars_ = params
    model.fit(x, LENGTHS)
    assert model.score(x, LENGTHS) == pytest.approx(ref.score(x, LENGTHS), rel=1e-9)
    np.testing.assert_allclose(model.means_.numpy(), ref.means_, atol=1e-6)
    np.testing.assert_allclose(model.transmat_.numpy(), ref.transmat_, atol=1e-6)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_fit_reaches_hmmlearn_and_the_true_likelihood(covariance_type):
    """Data from the known HMM, each library from its own start: our fit (one seed) is within 0.5 nats
    of hmmlearn's (or above), and above the likelihood of the true parameters (as ML must be)."""
    ref = reference(covariance_type)
    x, _ = ref.sample(300, random_state=3)
    fitted = HMM(3, covariance_type=covariance_type, n_iter=30, tol=1e-4, random_state=0).fit(x, LENGTHS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both converge in < 20 iterations here
        other = hl.GaussianHMM(3, covariance_type=covariance_type, n_iter=30, tol=1e-4, random_state=1)
        other.fit(x, LENGTHS)
    assert fitted.score(x, LENGTHS) >= other.score(x, LENGTHS) - 0.5
    assert fitted.score(x, LENGTHS) >= ref.score(x, LENGTHS)


def test_serket_hmm_example_accuracy(shared_data):
    """SERKET's HMM example: 100 2-D points cycling through 4 Gaussian states; Viterbi states
    must match the truth after Hungarian matching for at least 99 of 100 points, from 3 seeds."""
    x = np.loadtxt(shared_data("serket/HMM/data.txt"))  # tests/conftest.py: skipped without ../shared
    truth = np.loadtxt(shared_data("serket/HMM/correct.txt")).astype(int)
    for seed in range(3):
        model = HMM(4, n_iter=100, random_state=seed).fit(x)
        assert clustering_accuracy(truth, model.predict(x)) >= 0.99


def test_sample_follows_the_chain():
    """A 20,000-step categorical sample: each row of the empirical transition counts and the emission
    counts per state pass a chi-square test against the model (false-alarm 1e-3 per test, fixed seed)."""
    _, model = categorical_pair()
    x, z = model.sample(20_000, random_state=0)
    assert x.shape == (20_000, 1) and z.shape == (20_000,)
    pairs = np.zeros((2, 2))
    np.add.at(pairs, (z[:-1].numpy(), z[1:].numpy()), 1)
    for i in range(2):
        assert stats.chisquare(pairs[i], model.transmat_[i].numpy() * pairs[i].sum()).pvalue > 1e-3
        counts = np.bincount(x[z == i, 0].numpy(), minlength=3)
        assert stats.chisquare(counts, model.emissionprob_[i].numpy() * counts.sum()).pvalue > 1e-3
    g = ours("full")
    xg, zg = g.sample(6000, random_state=1)
    for k in range(3):
        rows = xg[zg == k].numpy()
        assert np.abs(rows.mean(0) - MEANS[k]).max() < 5 * np.sqrt(COVARS["full"][k].diagonal().max() / len(rows))
        np.testing.assert_allclose(np.cov(rows.T), COVARS["full"][k], atol=0.15)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="emission"):
        HMM(2, emission="poisson")
    with pytest.raises(ValueError, match="covariance_type"):
        HMM(2, covariance_type="banded")
    model = ours("diag")
    with pytest.raises(ValueError, match="lengths"):
        model.score(np.zeros((10, 2)), [4, 4])
    with pytest.raises(ValueError, match="features"):
        model.score(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="n_samples, n_features"):
        model.score(np.zeros(10))
    with pytest.raises(RuntimeError, match="not fitted"):
        HMM(2).score(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="integer symbols"):
        categorical_pair()[1].score(np.array([[0.5], [1.0]]))
    bad = ours("diag")
    bad.transmat_ = torch.tensor(TRANS) * 2
    with pytest.raises(ValueError, match="transmat_"):
        bad.score(np.zeros((4, 2)))
    x = np.zeros((6, 2))
    x[4, 1] = np.nan
    with pytest.raises(ValueError, match="HMM hmm: X contains NaN at row 4, column 1"):
        HMM(2).fit(x)
    with pytest.raises(ValueError, match="HMM hmm: X contains inf at row 2 "):
        categorical_pair()[1].fit(np.array([0.0, 1.0, np.inf, 1.0]))
    with pytest.raises(TypeError, match="X must hold numbers"):
        HMM(2).fit(np.array([["a", "b"], ["c", "d"]]))


def test_integer_and_float32_data_are_converted():
    """Integer data become float64 (as scikit-learn converts), float32 stays float32; the fits agree."""
    x, _ = reference("diag").sample(120, random_state=4)
    as_int = np.round(x * 10).astype(np.int64)
    a = HMM(3, n_iter=5, random_state=0).fit(as_int)
    b = HMM(3, n_iter=5, random_state=0).fit(as_int.astype(np.float64))
    assert a.means_.dtype == torch.float64 and a.score(as_int) == pytest.approx(b.score(as_int), rel=1e-12)
    c = HMM(3, n_iter=5, random_state=0).fit(torch.as_tensor(x, dtype=torch.float32))
    assert c.means_.dtype == torch.float32


def test_hmm_node_in_a_graph_is_the_estimators_model_and_takes_a_parent_prior():
    """As a node, HMM runs Baum-Welch on its child's data (n_iter from the graph's schedule): without a parent
    its posterior is the smoothed marginal of its own parameters; a parent's class prior acts as an extra
    factor per step (checked against enumeration on 5 steps), and the message up leaves that factor out."""
    from kizuna.modules import ClassModule, Graph, Message, Observation

    x, z = reference("full").sample(200, random_state=5)
    node = HMM(3, category=z, covariance_type="full", n_iter=10, random_state=0).connect(Observation(x))
    Graph([node]).fit(n_iter=2, seed=0, schedule={"hmm": {"n_iter": [5]}})
    assert node.accuracy > 0.9 and isinstance(node, ClassModule)
    torch.testing.assert_close(node.posterior, torch.as_tensor(node.predict_proba(x)), atol=1e-9, rtol=0)
    fixed = ours("full")
    fixed.learnable = False
    small = x[:5]
    fixed.connect(Observation(small))
    rho = torch.softmax(torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64), 1)
    fixed.receive_backward(Message("parent", "hmm", "c", "prior", rho))
    fixed.update()
    log_emit = torch.as_tensor(fixed._log_emit(torch.as_tensor(small)))
    paths, lp = enumerate_chain(torch.log(torch.tensor(START)), torch.log(torch.tensor(TRANS)),
                                log_emit + torch.log(rho))
    exact = torch.einsum("s,stk->tk", torch.softmax(lp, 0), torch.nn.functional.one_hot(paths, 3).to(F64))
    torch.testing.assert_close(fixed.posterior, exact, atol=1e-10, rtol=0)
    up = exact / rho
    torch.testing.assert_close(fixed.forward_message.value, up / up.sum(1, keepdim=True), atol=1e-10, rtol=0)


def test_predicting_on_float32_data_leaves_a_float64_model_as_it_was() -> None:
    """`predict` / `score` read the model: float32 data is scored in the fitted model's float64, and the parameters
    keep their dtype and values (they were cast to float32 for good, and the next score moved by 1.6e-8)."""
    from kizuna.modules import HiddenMarkovModel

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (50, 2)), rng.normal(4, 1, (50, 2))])
    h = HiddenMarkovModel(2, random_state=0, n_iter=20).fit(X)
    before = h.score(X)
    means = h.means_.clone()
    labels = h.predict(X.astype(np.float32))
    assert h.means_.dtype == torch.float64 and torch.equal(h.means_, means)
    assert h.score(X) == before
    assert np.array_equal(labels, h.predict(X))


def brute_force_counts(log_start, log_trans, log_emit):
    """(log p(x), expected transition counts (K, K)) of one sequence by enumerating its paths, in float64."""
    log_start, log_trans, log_emit = log_start.double(), log_trans.double(), log_emit.double()
    paths, lp = enumerate_chain(log_start, log_trans, log_emit)
    w = torch.softmax(lp, 0)
    k = log_emit.shape[1]
    pairs = torch.nn.functional.one_hot(paths[:, :-1] * k + paths[:, 1:], k * k).to(F64)  # (S, T-1, K*K)
    return torch.logsumexp(lp, 0), torch.einsum("s,stq->q", w, pairs).reshape(k, k)


@pytest.mark.parametrize("dtype, gap", [(torch.float32, 200.0), (torch.float64, 800.0)])
def test_log_space_transition_counts_do_not_overflow(dtype, gap):
    """The log-space fallback formed each step's xi as exp(max alpha_t + max(e + beta)_{t+1} - log p(x)) times the
    rest: with a locally best state that the chain cannot reach, that factor overflowed (88 nats in float32, 709 in
    float64) and inf * 0 made every transition count NaN. Against enumeration of the paths."""
    log_start = torch.log(torch.tensor([1.0, 0.0], dtype=dtype))
    log_trans = torch.log(torch.eye(2, dtype=dtype))
    log_emit = torch.tensor([[0.0, 0.0], [-gap, 0.0], [0.0, 0.0]], dtype=dtype)
    sm = fb.forward_backward(log_start, log_trans, log_emit)
    loglik, counts = brute_force_counts(log_start, log_trans, log_emit)
    torch.testing.assert_close(sm.trans_counts.double(), counts, atol=1e-6, rtol=0)
    torch.testing.assert_close(sm.trans_counts.double(), torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=F64))
    assert float(sm.log_likelihood) == pytest.approx(float(loglik), rel=1e-6)
    # a random chain with a zero transition and sequences of several lengths, padded together
    log_start, log_trans, log_emit = random_chain(3, 9, seed=3)
    log_trans[0, 2] = -torch.inf
    log_trans = torch.log_softmax(log_trans, 1)
    log_emit[2:4] = torch.tensor([[0.0, -gap, -gap], [-gap, -gap, 0.0]], dtype=F64)  # 0 at step 2 cannot reach 2
    log_emit = log_emit.to(dtype)
    lengths = torch.tensor([5, 4])
    chain = (log_start.to(dtype), log_trans.to(dtype))
    assert fb._scaled_forward_backward(*chain, fb.pad(log_emit, lengths), lengths) is None  # log space answers
    sm = fb.forward_backward(*chain, log_emit, lengths)
    expected = sum(brute_force_counts(log_start, log_trans, e)[1] for e in torch.split(log_emit, [5, 4]))
    torch.testing.assert_close(sm.trans_counts.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [9, 20, 1 << 20])
def test_log_space_transition_counts_in_blocks_of_sequences_and_steps(monkeypatch, block):
    """The log-space sum in blocks: of steps (a block of 20 entries holds two steps of one 3-state sequence), of
    sequences (9 < B K^2: one step of one sequence at a time), or at once; the same counts each way, against
    enumeration of the paths of each sequence."""
    log_start, log_trans, log_emit = random_chain(3, 16, seed=5)
    lengths = torch.tensor([6, 1, 5, 4])
    monkeypatch.setattr(fb, "XI_BLOCK", block)
    alpha, _ = fb._forward(log_start, log_trans, fb.pad(log_emit, lengths))
    beta = fb._backward(log_trans, fb.pad(log_emit, lengths), lengths)
    e = fb.pad(log_emit, lengths)
    counts = fb._log_trans_counts(alpha[:, :-1], log_trans, e[:, 1:] + beta[:, 1:], lengths)
    expected = sum(brute_force_counts(log_start, log_trans, x)[1] for x in torch.split(log_emit, lengths.tolist()))
    torch.testing.assert_close(counts, expected, atol=1e-12, rtol=1e-12)


def test_baum_welch_updates_a_left_to_right_chain_in_log_space():
    """End to end: one EM step of transmat_ on a left-to-right Gaussian HMM whose data visit state 0's mean after
    state 1 (only the log-space recursions answer) is the normalised enumerated counts (it kept the old rows: NaN
    counts read as "no mass"); and NaN expected counts are an error, not a silent skip of the update."""
    from kizuna.modules import HiddenMarkovModel

    x = np.array([0.0, 10.0, 0.05, 10.0])[:, None]
    model = HiddenMarkovModel(2, init_params="", params="t", n_iter=1)
    model.startprob_, model.transmat_ = np.array([1.0, 0.0]), np.array([[0.8, 0.2], [0.0, 1.0]])
    model.means_, model.covars_ = np.array([[0.0], [10.0]]), np.full((2, 1), 0.02)
    xt = model._data(x, None)[0]
    _, counts = brute_force_counts(*model._log_chain(), model._log_emit(xt))
    model.fit(x)
    torch.testing.assert_close(model.transmat_, counts / counts.sum(1, keepdim=True), atol=1e-9, rtol=0)
    torch.testing.assert_close(model.transmat_, torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64), atol=1e-9, rtol=0)
    broken = fb.forward_backward(*model._log_chain(), model._log_emit(xt))
    broken = fb.Smoothed(broken.log_gamma, broken.log_cavity, broken.trans_counts * torch.nan, broken.start_counts,
                         broken.log_likelihood)
    before = model.transmat_.clone()
    with pytest.raises(ValueError, match="expected transition counts are not finite"):
        model._m_step(xt, broken)
    assert torch.equal(model.transmat_, before)


def test_float32_recursions_decline_a_zero_normaliser():
    """The scaled recursions' threshold 1e-200 is 0 in float32, so a zero normaliser was accepted: log p(x) came out
    -inf (HMM.score too) and FFBS drew an impossible path. float32 against float64 and enumeration."""
    from kizuna.modules import HiddenMarkovModel

    for first in (0, 1):  # the only possible path: `first` twice; the other state's emission is e^-200 at the end
        log_start = torch.log(torch.eye(2, dtype=F64)[first])
        log_emit = torch.zeros(2, 2, dtype=F64)
        log_emit[1, first] = -200.0
        chain64 = (log_start, torch.log(torch.eye(2, dtype=F64)), log_emit)
        chain32 = tuple(v.float() for v in chain64)
        exact = float(torch.logsumexp(enumerate_chain(*chain64)[1], 0))
        assert exact == -200.0
        assert float(fb.forward_log_likelihood(*chain32)) == pytest.approx(exact, rel=1e-6)
        sm32, sm64 = fb.forward_backward(*chain32), fb.forward_backward(*chain64)
        torch.testing.assert_close(sm32.log_gamma.exp().double(), sm64.log_gamma.exp(), atol=1e-6, rtol=0)
        for chain in (chain32, chain64):
            draws = fb.sample_paths(*chain, n_samples=50, generator=torch.Generator().manual_seed(0))
            assert draws.eq(first).all()
    # through the estimator: a left-to-right chain scored on float32 data and on float64 data
    scores = []
    for dtype in (np.float32, np.float64):
        model = HiddenMarkovModel(2, init_params="", params="")
        model.startprob_, model.transmat_ = np.array([0.0, 1.0], dtype), np.array([[0.8, 0.2], [0.0, 1.0]], dtype)
        model.means_, model.covars_ = np.array([[0.0], [10.0]], dtype), np.full((2, 1), 0.3, dtype)
        scores.append(model.score(np.array([[10.0], [0.05]], dtype)))
    assert np.isfinite(scores[0]) and scores[0] == pytest.approx(scores[1], rel=1e-6)


def test_lengths_must_be_whole_numbers():
    """Non-integer lengths were truncated (.long()): [2.5, 2.5] for 4 rows read as [2, 2]."""
    for bad in ([2.5, 2.5], np.array([2.5, 2.5]), torch.tensor([2.5, 2.5]), [np.nan, 4.0], [True, True]):
        with pytest.raises(ValueError, match="lengths must be whole numbers"):
            fb.check_lengths(4, bad, torch.device("cpu"))
    with pytest.raises(ValueError, match="lengths must be whole numbers"):
        ours("diag").score(np.zeros((5, 2)), [2.5, 2.5])
    for good in ([2.0, 2.0], np.array([2, 2]), torch.tensor([2, 2]), (1, 3)):
        assert fb.check_lengths(4, good, torch.device("cpu")).tolist() == list(map(int, good))


def _hmmlearn_rejects(covariance_type: str, **params) -> bool:
    """Whether hmmlearn raises a ValueError for these hand-set parameters (at assignment or at score)."""
    try:
        ref = reference(covariance_type)
        for name, value in params.items():
            setattr(ref, name, value)
        ref.score(np.zeros((4, 2)))
    except ValueError:
        return True
    return False


INVALID = [  # (covariance_type, parameter, value, the error's words, whether hmmlearn raises too)
    ("diag", "covars_", COVARS["diag"] * [[-1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], r"'diag' covars_ must be positive.*"
     r"covars_\[0, 0\] = -1.0", True),
    ("diag", "covars_", COVARS["diag"] * [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]], r"covars_\[1, 1\] = 0.0", True),
    ("spherical", "covars_", np.array([1.0, -0.5, 2.0]), r"'spherical' covars_ must be positive.*covars_\[1\]", True),
    ("full", "covars_", COVARS["full"] * [[[1.0]], [[-1.0]], [[1.0]]], "'full' covars_ must be symmetric, "
     r"positive-definite.*\(state 1\)", True),
    ("full", "covars_", np.array([np.eye(2), [[1.0, 0.5], [0.2, 1.0]], np.eye(2)]), r"symmetric.*covars_\[1, 0, 1\]",
     True),
    ("tied", "covars_", -COVARS["tied"], "'tied' covars_ must be symmetric, positive-definite", True),
    ("diag", "covars_", np.ones((2, 2)), r"covars_ must be of shape \(3, 2\) for covariance_type 'diag'", True),
    ("diag", "means_", np.where(np.eye(3, 2) > 0, np.nan, MEANS), r"means_ must be finite.*means_\[0, 0\] = nan",
     False),
    ("diag", "means_", MEANS[:2], r"means_ must be of shape \(3, n_features\)", True),
    ("diag", "startprob_", np.array([1.5, -0.3, -0.2]), r"startprob_ must hold probabilities.*startprob_\[1\] = -0.3",
     False),
    ("diag", "transmat_", np.array([[1.25, -0.25, 0.0], TRANS[1], TRANS[2]]), r"transmat_\[0, 1\] = -0.25", False),
    ("diag", "transmat_", TRANS * [[1.0], [2.0], [1.0]], "transmat_ rows must sum to 1, got row 1 summing to", True),
]


@pytest.mark.parametrize("covariance_type, name, value, words, hmmlearn_too", INVALID)
def test_invalid_parameters_are_named(covariance_type, name, value, words, hmmlearn_too):
    """Parameters set by hand that are not a valid model: a clear error naming the parameter and its entry from
    score, decode, predict_proba, fit (from them) and sample (they gave NaN scores and paths, or silently used a
    row not summing to 1); hmmlearn rejects those marked so."""
    assert _hmmlearn_rejects(covariance_type, **{name: value}) == hmmlearn_too
    x = reference("diag").sample(20, random_state=0)[0]
    for call in ("score", "decode", "predict_proba", "fit", "sample"):
        model = ours(covariance_type)
        model.params = ""
        setattr(model, name, torch.tensor(value))
        with pytest.raises(ValueError, match=words):
            getattr(model, call)(*([] if call == "sample" else [x]))


def test_invalid_emission_probabilities_are_named():
    """emissionprob_ rows not summing to 1 were used as they were (hmmlearn: 'emissionprob_ rows must sum to 1');
    negative entries gave NaN scores."""
    ref, model = categorical_pair()
    x = np.array([0, 1, 2, 2, 0])
    for value, words, hmmlearn_too in (
            (np.array([[0.7, 0.3, 0.3], [0.1, 0.3, 0.6]]), "rows must sum to 1, got row 0 summing to 1.3", True),
            (np.array([[1.25, -0.25, 0.0], [0.1, 0.3, 0.6]]), r"emissionprob_\[0, 1\] = -0.25", False),
            (np.full((3, 3), 1 / 3), r"emissionprob_ must be of shape \(2, n_features\)", True)):
        ref.emissionprob_ = value
        try:
            with np.errstate(invalid="ignore"):
                ref.score(x[:, None])
            assert not hmmlearn_too
        except ValueError:
            assert hmmlearn_too
        model.emissionprob_ = value
        for call in ("score", "decode", "predict_proba", "fit"):
            with pytest.raises(ValueError, match=words):
                getattr(model, call)(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_impossible_sequences_and_bad_emissions_are_named(backend):
    """A sequence of zero probability has no best path and no posterior to draw from: viterbi (both backends)
    returned -inf and the path [0, 0, ...] and sample_paths arbitrary paths, silently; a NaN log-emission gave NaN.
    Each now raises as forward_backward does, naming the sequence and step (checked by enumerating the prefixes)."""
    from kizuna.modules.hmm.viterbi import viterbi

    log_start = torch.log(torch.tensor([0.5, 0.5], dtype=F64))
    log_trans = torch.log(torch.tensor([[0.9, 0.1], [0.0, 1.0]], dtype=F64))
    lengths = torch.tensor([3, 4])
    cases = []
    e = torch.zeros(7, 2, dtype=F64)
    e[5] = -torch.inf
    cases.append((e, r"sequence 1, step 2 \(row 5\) is impossible in every state", 2))
    e = torch.zeros(7, 2, dtype=F64)
    e[4, 0], e[6, 1] = -torch.inf, -torch.inf  # state 1 at step 1 of sequence 1, then state 0 (unreachable) at 3
    cases.append((e, r"no path of nonzero probability reaches sequence 1, step 3 \(row 6\)", 3))
    for bad in (torch.nan, torch.inf):
        e = torch.zeros(7, 2, dtype=F64)
        e[2, 1] = bad
        cases.append((e, rf"the log-emission of sequence 0, step 2 \(row 2\), state 1 is {bad}", None))
    for log_emit, words, step in cases:
        if step is not None:  # enumeration: the prefix of sequence 1 up to step - 1 is possible, up to step is not
            seq = log_emit[3:]
            assert torch.isfinite(torch.logsumexp(enumerate_chain(log_start, log_trans, seq[:step])[1], 0))
            assert torch.logsumexp(enumerate_chain(log_start, log_trans, seq[:step + 1])[1], 0) == -torch.inf
        with pytest.raises(ValueError, match="viterbi: " + words):
            viterbi(log_start, log_trans, log_emit, lengths, backend)
        with pytest.raises(ValueError, match="sample_paths: " + words):
            fb.sample_paths(log_start, log_trans, log_emit, lengths, generator=torch.Generator().manual_seed(0))
        with pytest.raises(ValueError, match="forward_backward: " + words):
            fb.forward_backward(log_start, log_trans, log_emit, lengths)
        if step is None:
            with pytest.raises(ValueError, match="forward_log_likelihood: " + words):
                fb.forward_log_likelihood(log_start, log_trans, log_emit, lengths)
        else:  # log p(x) = -inf is the answer of a likelihood (as hmmlearn's score)
            assert fb.forward_log_likelihood(log_start, log_trans, log_emit, lengths).tolist()[1] == -np.inf
    # through the estimator: a symbol no state emits
    _, model = categorical_pair(backend)
    model.emissionprob_ = np.array([[0.7, 0.3, 0.0], [0.5, 0.5, 0.0]])
    x = np.array([0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"viterbi: sequence 0, step 2 \(row 2\) is impossible in every state"):
        model.decode(x)
    assert model.score(x) == -np.inf


def test_fit_history_survives_save_and_load(tmp_path):
    """history_ and converged_ are part of HMM's saved state, as GMM's fitted history and the VAE's loss history
    (they were lost: a loaded model had no history); a save without them still loads."""
    from kizuna.modules.persistence import load_module, save_module

    x, _ = reference("diag").sample(200, random_state=1)
    model = HMM(3, n_iter=50, tol=1e-3, random_state=0).fit(x)
    assert model.converged_ and len(model.history_) > 1
    restored = load_module(HMM(3), save_module(model, tmp_path / "hmm.pt"))
    assert restored.history_ == model.history_ and restored.converged_ is True
    assert restored.score(x) == model.score(x)
    old = {k: v for k, v in model.state_dict().items() if k not in ("history_", "converged_")}
    fresh = HMM(3)
    fresh.load_state_dict(old)
    assert fresh.history_ is None and fresh.converged_ is False and fresh.score(x) == model.score(x)


def test_a_categorical_hmm_saved_with_other_symbols_is_refused(tmp_path):
    """n_features fixes the shape of emissionprob_, but was not part of the HMM node's architecture: a graph saved
    with 4 symbols loaded into one built for 6 silently kept (2, 4) and failed only at a later update on symbol 5."""
    from kizuna.modules import Graph, GraphError, Observation

    s = torch.randint(0, 4, (30, 1), generator=torch.Generator().manual_seed(0)).double()

    def graph(n_features: int) -> Graph:
        return Graph([HMM(2, emission="categorical", n_features=n_features, n_iter=2, name="hmm")
                      .connect(Observation(s))])

    saved = graph(4)
    saved.fit(1, seed=0)
    saved.save(tmp_path)
    with pytest.raises(GraphError, match="n_features"):
        graph(6).load(tmp_path)
    graph(4).load(tmp_path)  # the same architecture loads


def test_a_save_from_before_n_features_was_compared_still_loads(tmp_path):
    """A graph saved before n_features joined the HMM node's architecture (its manifest's config lacks the key) still
    loads into an HMM that leaves n_features at its default; one that sets it is compared as before the key existed."""
    import json

    from kizuna.modules import Graph, Observation, persistence

    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def graph() -> Graph:
        return Graph([HMM(2, n_iter=2, name="hmm").connect(Observation(x))])

    saved = graph()
    saved.fit(1, seed=0)
    saved.save(tmp_path)
    manifest = tmp_path / persistence.MANIFEST
    data = json.loads(manifest.read_bytes())
    for entry in data["body"]["modules"]:
        entry["config"].pop("n_features", None)  # as written before the key existed
    data["sha256"] = persistence._sha(json.dumps(data["body"], indent=1, sort_keys=True).encode())
    manifest.write_text(json.dumps(data))
    loaded = graph()
    loaded.load(tmp_path)
    torch.testing.assert_close(loaded.modules[-1].transmat_, saved.modules[-1].transmat_)


def test_a_refit_on_float64_data_after_a_float32_fit_is_a_fresh_float64_fit() -> None:
    """``fit`` starts the parameters of ``init_params`` afresh, so it runs in the new data's dtype: a float64 refit
    after a float32 fit kept float32 (history -283.3218994140625 instead of -283.32191602934813) and later scored
    float64 data in float32. The refit equals a fresh float64 fit bit for bit and hmmlearn's score of its parameters."""
    from kizuna.modules import HiddenMarkovModel

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2)) + 3 * np.repeat([0, 1, 2, 0], 25)[:, None]
    fresh = HiddenMarkovModel(3, random_state=0).fit(x)
    refit = HiddenMarkovModel(3, random_state=0).fit(x.astype(np.float32)).fit(x)
    assert refit.means_.dtype == refit.transmat_.dtype == F64
    assert refit.history_ == fresh.history_
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        assert torch.equal(getattr(refit, name), getattr(fresh, name))
    ref = hl.GaussianHMM(3, covariance_type="diag", init_params="")
    ref.startprob_, ref.transmat_ = refit.startprob_.numpy(), refit.transmat_.numpy()
    ref.means_, ref.covars_ = refit.means_.numpy(), refit.covars_.numpy()
    assert refit.score(x) == pytest.approx(ref.score(x), rel=1e-12, abs=0)
    assert refit.score(x) == fresh.score(x)


def test_sample_count_n_iter_and_parameter_letters_are_checked() -> None:
    """``sample(0)`` failed with torch's "only one element tensors can be converted to Python scalars" (hmmlearn
    returns one step; scikit-learn's GaussianMixture and kizuna's refuse it); ``n_iter=-3`` fitted nothing
    (history_ []) and ``n_iter=2.5`` failed in range(); letters of ``params`` naming no parameter learnt nothing
    silently (hmmlearn fails with a KeyError)."""
    from kizuna.modules import HiddenMarkovModel

    x = np.random.default_rng(0).normal(size=(50, 1))
    model = HiddenMarkovModel(2, random_state=0).fit(x)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=f"^HMM: n_samples must be a positive int, got {n!r}$"):
            model.sample(n)
    xs, zs = model.sample(np.int64(3))
    assert xs.shape == (3, 1) and zs.shape == (3,)
    for n_iter in (-3, 2.5, None):
        with pytest.raises(ValueError, match=rf"^HMM: n_iter must be an integer >= 0, got {n_iter!r}$"):
            HiddenMarkovModel(2, n_iter=n_iter).fit(x)
    assert HiddenMarkovModel(2, n_iter=0).fit(x).history_ == []
    for tol in ("0.1", float("nan"), None):  # a string failed at the first comparison; NaN never stopped early
        with pytest.raises(ValueError, match=r"^HMM: tol must be a number \(the least log-likelihood gain"):
            HiddenMarkovModel(2, tol=tol).fit(x)
    assert len(HiddenMarkovModel(2, tol=-np.inf, n_iter=4, random_state=0).fit(x).history_) == 4
    letters = r"'stmce' \(s startprob_, t transmat_, m means_, c covars_, e emissionprob_\)"
    with pytest.raises(ValueError, match=rf"^HMM: params must be a string of the letters {letters}, got unknown "
                                         r"letters 'xyz' in 'xyz'$"):
        HiddenMarkovModel(2, params="xyz").fit(x)
    with pytest.raises(ValueError, match=rf"^HMM: init_params must be a string of the letters {letters}, got unknown "
                                         r"letters 'q' in 'stqq'$"):
        HiddenMarkovModel(2, init_params="stqq").fit(x)
    with pytest.raises(ValueError, match=rf"^HMM hmm: params must be a string of the letters {letters}, got "
                                         r"\['s'\]$"):
        HMM(2, params=["s"])  # a node reports it when the graph is built
    with pytest.raises(ValueError, match=r"^HMM hmm: n_iter must be an integer >= 0, got -1$"):
        HMM(2, n_iter=-1)
    with pytest.raises(KeyError):
        hl.GaussianHMM(2, params="xyz", n_iter=2).fit(x)


@pytest.mark.parametrize(("setting", "value"), [("transmat_prior", float("nan")), ("startprob_prior", -3.0),
                                                ("transmat_prior", 0.0), ("min_covar", -1e-3),
                                                ("min_covar", float("nan"))])
def test_dirichlet_priors_and_min_covar_are_checked(setting, value):
    """A NaN transmat_prior / startprob_prior stopped learning them silently (NaN MAP counts kept the uniform start;
    log-likelihood -86.6 instead of -22.2), a negative one gave the identity matrix."""
    from kizuna.modules import HiddenMarkovModel

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(50, 1)) - 5, rng.normal(size=(50, 1)) + 5])
    with pytest.raises(ValueError, match=f"HMM: {setting} must be (a )?finite"):
        HiddenMarkovModel(2, n_iter=5, random_state=0, **{setting: value}).fit(x)
    # hmmlearn's arrays of concentrations are taken (they broadcast in the MAP update)
    fitted = HiddenMarkovModel(2, n_iter=5, random_state=0, transmat_prior=np.array([[2.0, 1.0], [1.0, 2.0]])).fit(x)
    assert np.allclose(np.asarray(fitted.transmat_).sum(1), 1.0)


def test_viterbi_scores_are_the_paths_log_probability_on_both_backends():
    """For fewer than 30,000 steps the torch backend returned max-product's running maximum, not the path's
    log-probability summed as the numba backend and the docs have it (-26916.5566 against -26916.5547 in float32)."""
    from kizuna.modules._viterbi import max_product, path_log_prob, viterbi_scan

    gen = torch.Generator().manual_seed(0)
    k, t = 3, 5000
    log_start = torch.log_softmax(torch.randn(k, generator=gen), 0)
    log_trans = torch.log_softmax(torch.randn(k, k, generator=gen), 1)
    log_emit = torch.randn(1, t, k, generator=gen) * 3
    lengths = torch.tensor([t])
    score, states = viterbi_scan(log_start, log_trans, log_emit, lengths)
    assert torch.equal(states, max_product(log_start, log_trans, log_emit, lengths)[1])
    assert torch.equal(score, path_log_prob(log_start, log_trans, log_emit, states, lengths))


# ------------------------------------------------------------------ review of stop 36
def _two_state_data():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(-3, 1, (25, 1)), rng.normal(3, 1, (25, 1))])


@pytest.mark.parametrize("name, value", [("means_", np.array([[-5.0], [5.0]])), ("startprob_", np.array([1.0, 0.0])),
                                         ("covars_", np.array([[0.01], [0.01]]))])
def test_sample_takes_a_parameter_assigned_as_an_array(name, value):
    """Arrays assigned by hand to a fitted model (as the docs allow) are converted for `sample` as `score` converts
    them; only a hand-assigned ``transmat_`` was converted before (an AttributeError or TypeError otherwise). The
    draws follow the assigned parameters: with means -5 / 5 and tiny variances every draw is near one of them."""
    from kizuna.modules import HiddenMarkovModel

    m = HiddenMarkovModel(2, n_iter=3, random_state=0).fit(_two_state_data())
    setattr(m, name, value)
    x, states = m.sample(400)
    assert x.shape == (400, 1) and states.shape == (400,)
    means = m.means_.reshape(-1)
    torch.testing.assert_close(x[:, 0].mean(), (means[states]).mean(), atol=0.5, rtol=0)
    if name == "startprob_":
        assert int(states[0]) == 0
    if name == "means_":
        assert bool(((x[:, 0].abs() - 5).abs() < 5 * float(m.covars_.max()) ** 0.5).all())


@pytest.mark.parametrize("name, value", [("startprob_prior", np.ones((2, 2)) * 2),
                                         ("transmat_prior", np.array([1.0, 2.0, 3.0])),
                                         ("transmat_prior", np.ones((3, 2))),
                                         ("startprob_prior", np.ones((1, 2, 2)))])
def test_a_prior_array_of_another_shape_is_named(name, value):
    """A (2, 2) start prior made a (2, 2) start distribution silently; a (3,) transition prior failed in numpy's
    broadcasting after an E-step."""
    from kizuna.modules import HiddenMarkovModel

    with pytest.raises(ValueError, match=f"{name} must be a number or an array of shape"):
        HiddenMarkovModel(2, n_iter=1, random_state=0, **{name: value}).fit(_two_state_data())


def test_prior_arrays_that_broadcast_to_the_parameters_shape_match_hmmlearn():
    """A row of concentrations (K,) for the transitions broadcasts to every row, as in hmmlearn (one EM step from the
    same start)."""
    from kizuna.modules import HiddenMarkovModel

    x = _two_state_data()
    start = dict(startprob_=np.array([0.6, 0.4]), transmat_=np.array([[0.7, 0.3], [0.2, 0.8]]),
                 means_=np.array([[-2.0], [2.0]]), covars_=np.array([[1.0], [1.5]]))
    prior = np.array([2.0, 3.0])
    ours = HiddenMarkovModel(2, n_iter=1, init_params="", transmat_prior=prior, startprob_prior=prior)
    theirs = hl.GaussianHMM(2, n_iter=1, init_params="", transmat_prior=prior, startprob_prior=prior)
    for k, v in start.items():
        setattr(ours, k, v.copy())
        setattr(theirs, k, v.copy())
    ours.fit(x)
    theirs.fit(x)
    np.testing.assert_allclose(np.asarray(ours.transmat_), theirs.transmat_, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(ours.startprob_), theirs.startprob_, rtol=1e-10)


@pytest.mark.parametrize("lengths", ["ab", ["a", "b"], [[25, 25]], object()])
def test_lengths_that_are_not_a_flat_list_of_numbers_are_named(lengths):
    from kizuna.modules import HiddenMarkovModel

    m = HiddenMarkovModel(2, n_iter=2, random_state=0).fit(_two_state_data())
    with pytest.raises(ValueError, match="lengths must be"):
        m.score(_two_state_data(), lengths)


def test_the_mean_m_step_keeps_float32_digits_far_from_the_origin():
    """The weighted mean gamma' x / n_k of data near 1000 in float32 was 3.6e-3 off the float64 value (20,000 rows);
    computed about the data's mean it keeps float32's precision at that scale (the float64 mean of the same numbers
    is the reference)."""
    from kizuna.modules.hmm.emissions import Gaussian

    rng = np.random.default_rng(0)
    x64 = torch.as_tensor(np.concatenate([rng.normal(1000, 1, (10_000, 2)), rng.normal(1003, 1, (10_000, 2))]))
    gamma64 = torch.as_tensor(rng.dirichlet([1.0, 1.0], size=20_000))
    params = {"means_": torch.zeros(2, 2), "covars_": torch.ones(2, 2)}
    emissions = Gaussian("diag", 1e-3)
    got = emissions.m_step(x64.float(), gamma64.float(), params, "m")["means_"].double()
    want = (gamma64.T @ x64) / gamma64.sum(0)[:, None]
    assert float((got - want).abs().max()) < 2e-4  # float32's spacing at 1000 is 6e-5
