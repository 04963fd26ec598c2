"""Checks of the classical modules (MarkovChain / MM, HMM, LDA / MLDA, the shared forward-backward): half precision
computes in float32 (against hmmlearn and enumeration), count tables count by ones past 2^24 tokens, sequences of
very different lengths are padded in groups (against the one padded block, and its memory), and named errors for a
frozen HMM that was never fitted, more states than samples, numpy integers as n_components, a lost n_iter_ and a
list of sequences."""

import itertools
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hmmlearn import _hmmc
from hmmlearn import hmm as hl
from sklearn.model_selection import GridSearchCV

import kizuna.modules as km
from kizuna.modules import _backend
from kizuna.modules import _forward_backward as fb
from kizuna.modules.lda import algorithms, sampler
from kizuna.modules.lda.estimator import MultimodalLDA
from kizuna.modules.persistence import load_module, save_module

F64 = torch.float64
HALF = (torch.float16, torch.bfloat16)
pytestmark = pytest.mark.usefixtures("one_thread")


def sticky_evidence(n: int) -> np.ndarray:
    """Class evidence of a sticky 2-class sequence, in values that float16 and bfloat16 hold exactly."""
    z = np.repeat(np.tile([0, 1], n // 100), 50)
    return np.eye(2)[z] * 0.5 + 0.25


# ------------------------------------------------------------------ half precision
@pytest.mark.parametrize("dtype", HALF)
def test_markov_chain_on_half_evidence_computes_in_float32_against_hmmlearn(dtype):
    ev = sticky_evidence(20_000)
    ev32 = torch.tensor(ev, dtype=torch.float32)
    half = km.MarkovChain().fit(ev32.to(dtype))
    single = km.MarkovChain().fit(ev32)
    assert half.transmat_.dtype == torch.float32
    assert torch.equal(half.transmat_, single.transmat_) and torch.equal(half.startprob_, single.startprob_)
    score = half.score(ev32.to(dtype))
    assert score == single.score(ev32)  # was -1806 (float16 sums) for -6213.67
    ref, _ = _hmmc.forward_log(half.startprob_.double().numpy(), half.transmat_.double().numpy(), np.log(ev))
    assert score == pytest.approx(ref, rel=1e-5)
    # a float64 chain scores half evidence as the same float32 evidence (it was cast down to float16: -1907)
    wide = km.MarkovChain().fit(ev)
    assert wide.score(ev32.to(dtype)) == wide.score(ev32)
    assert wide.score(ev32.to(dtype)) == pytest.approx(wide.score(ev), rel=1e-5)


@pytest.mark.parametrize("dtype", HALF)
def test_markov_chain_on_half_evidence_against_enumeration(dtype):
    ev = np.array([[0.75, 0.25], [0.5, 0.5], [0.125, 0.875], [0.25, 0.75], [1.0, 0.0], [0.375, 0.625]])
    chain = km.MarkovChain(transmat=[[0.75, 0.25], [0.125, 0.875]], startprob=[0.5, 0.5], n_iter=0).fit(ev)
    a, p = chain.transmat_.numpy(), chain.startprob_.numpy()
    total = sum(p[z[0]] * ev[0, z[0]] * np.prod([a[z[t - 1], z[t]] * ev[t, z[t]] for t in range(1, 6)])
                for z in itertools.product(range(2), repeat=6))
    score = chain.score(torch.tensor(ev).to(dtype))
    assert score == chain.score(torch.tensor(ev, dtype=torch.float32))
    assert score == pytest.approx(np.log(total), rel=1e-6)
    posterior = chain.predict_proba(torch.tensor(ev).to(dtype))
    assert posterior.dtype == torch.float32
    torch.testing.assert_close(posterior, chain.predict_proba(torch.tensor(ev, dtype=torch.float32)), rtol=0, atol=0)


def sticky_data(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    z = np.repeat(np.tile([0, 1], n // 100), 50)
    return z[:, None] * 3.0 + rng.normal(size=(n, 2))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_hmm_on_half_data_fits_as_float32_against_hmmlearn(dtype, covariance_type):
    x = torch.tensor(sticky_data(2000)).to(dtype)  # float16 at N = 2,000: "expected state counts are not finite"
    half = km.HiddenMarkovModel(2, covariance_type=covariance_type, n_iter=10, random_state=0).fit(x)
    single = km.HiddenMarkovModel(2, covariance_type=covariance_type, n_iter=10, random_state=0).fit(x.float())
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        assert getattr(half, name).dtype == torch.float32
        assert torch.equal(getattr(half, name), getattr(single, name)), name
    score = half.score(x)
    assert score == single.score(x.float())
    ref = hl.GaussianHMM(2, covariance_type=covariance_type, init_params="")
    for name in ("startprob_", "transmat_", "means_"):
        setattr(ref, name, getattr(half, name).double().numpy())
    ref.covars_ = half.covars_.double().numpy()  # (K, D) diagonals or (K, D, D), in both
    assert score == pytest.approx(ref.score(x.double().numpy()), rel=1e-5)


def test_hmm_and_mm_nodes_on_half_messages_compute_in_float32():
    x = torch.tensor(sticky_data(400)).half()
    nodes = {}
    for dtype in (torch.float16, torch.float32):
        hmm = km.HMM(2, n_iter=5).connect(km.Observation(x.to(dtype)))  # the same values
        km.Graph([hmm]).fit(n_iter=1, seed=0)
        nodes[dtype] = hmm
    assert nodes[torch.float16].transmat_.dtype == torch.float32
    assert torch.equal(nodes[torch.float16].transmat_, nodes[torch.float32].transmat_)
    assert nodes[torch.float16].forward_message.value.dtype == torch.float16  # messages keep the graph's dtype
    gmm = km.GMM(2, algorithm="em", random_state=0).connect(km.Observation(x))
    mm = km.MM(n_iter=5).connect(gmm)
    km.Graph([mm]).fit(n_iter=1, seed=0)
    evidence = gmm.forward_message.value
    assert evidence.dtype == torch.float16 and mm.transmat_.dtype == torch.float32
    assert mm.forward_message.value.dtype == torch.float16
    ref = km.MarkovChain(n_iter=5).fit(evidence.double())
    torch.testing.assert_close(mm.transmat_.double(), ref.transmat_, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ count tables past 2^24
def drifted_columns(dtype: torch.dtype, backend: str) -> tuple[float, float]:
    """One sweep over 300 tokens of a chain whose topic totals already pass 2^24 (the tables constructed directly:
    a second document holds 2^24 + 2^22 tokens that are counted but not moved): the largest error of the topics'
    normalised columns, and of the topic totals against the column sums of the word counts."""
    g = torch.Generator().manual_seed(0)
    k, v, n = 2, 3, 300
    word, z = torch.randint(v, (n,), generator=g), torch.randint(k, (n,), generator=g)
    doc, mod = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    n_wk = torch.tensor([[2.0**23 + 1, 2**23 + 3], [2**23 + 5, 2**22 + 1], [7, 2**22 + 9]], dtype=F64)  # each < 2^24
    n_dk = torch.zeros(2, k, dtype=F64)
    n_dk[1] = n_wk.sum(0)
    n_dk[0].index_add_(0, z, torch.ones(n, dtype=F64))
    n_wk.index_put_((word, z), torch.ones(n, dtype=F64), accumulate=True)
    n_mk = n_wk.sum(0, keepdim=True)
    assert bool((n_mk > 2**24).all())
    beta = 0.1
    t = sampler.Tables(doc, word, mod, z, n_dk.to(dtype), n_wk.to(dtype), n_mk.to(dtype),
                       torch.tensor([[v * beta]], dtype=dtype), torch.zeros(v, dtype=torch.long), None, None)
    sweep = sampler.numba_sweep if backend == "numba" else sampler._torch_sweep
    sweep(t, 4, False, torch.Generator().manual_seed(1), 0.5, beta)
    phi = (t.n_wk + beta) / (t.n_mk + t.vbeta)
    return float((phi.sum(0).double() - 1).abs().max()), float((t.n_mk - t.n_wk.sum(0)).abs().max())


BACKENDS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not _backend.numba_available(),
                                                                     reason="numba not installed (kizuna[fast])"))]


class Started(Exception):
    """Raised by a stand-in for `new_chain`: the dtype of the node's count tables is known, no token is sampled."""


@pytest.mark.parametrize("backend", BACKENDS)
def test_lda_node_counts_in_float64_past_2_to_the_24_tokens(monkeypatch, backend):
    counts = torch.poisson(torch.full((20, 6), 3.0), generator=torch.Generator().manual_seed(0))
    lda = km.LDA(2, max_iter=3, backend=backend).connect(km.Observation(counts.long()))  # sent as float32 counts
    km.Graph([lda]).fit(n_iter=1, seed=0)
    assert lda._chain.dtype == torch.float32  # float32 counts 2^24 tokens by ones: as before
    tables = []

    def started(counts, sizes, phi, prior, learn, n_starts, s, dtype, generator):
        tables.append(dtype)
        raise Started

    monkeypatch.setattr(algorithms, "new_chain", started)
    big = torch.tensor([[2.0**23, 2**22], [2**22, 2**20]])  # 2^24 + 2^20 tokens, the counts given directly
    lda = km.LDA(2, max_iter=3, backend=backend).connect(km.Observation(big))
    with pytest.raises(Started):
        km.Graph([lda]).fit(n_iter=1, seed=0)
    assert tables == [F64]
    phi_error, total_error = drifted_columns(tables[0], backend)  # the tables the node counts in
    assert total_error == 0  # float32 tables lost the +1 of moves past 2^24: topic totals drifted from the words
    assert phi_error < 1e-15
    assert drifted_columns(torch.float32, backend)[1] > 0  # (which they did)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lda_estimator_counts_float32_input_in_float64_past_2_to_the_24_tokens(backend):
    small = torch.tensor([[3.0, 1], [0, 2]], dtype=torch.float32)
    assert MultimodalLDA(2)._counts([small], False)[1] == torch.float32  # float input keeps its precision
    big = torch.tensor([[2.0**23, 2**22], [2**22, 2**20]], dtype=torch.float32)  # 2^24 + 2^20 tokens
    dtype = MultimodalLDA(2)._counts([big], False)[1]
    phi_error, total_error = drifted_columns(dtype, backend)
    assert total_error == 0 and phi_error < 1e-15


# ------------------------------------------------------------------ sequences padded in groups of similar length
def mixed_chain(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    k = 3
    lengths = torch.cat([torch.randint(1, 4, (30,), generator=g), torch.tensor([300, 120]),
                         torch.randint(20, 40, (5,), generator=g)])
    lengths = lengths[torch.randperm(lengths.shape[0], generator=g)]
    log_start = torch.log_softmax(torch.randn(k, generator=g, dtype=F64), 0)
    log_trans = torch.log_softmax(2 * torch.randn(k, k, generator=g, dtype=F64), 1)
    log_emit = 3 * torch.randn(int(lengths.sum()), k, generator=g, dtype=F64)
    return log_start, log_trans, log_emit, lengths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_forward_backward_and_viterbi_equal_the_one_padded_block(seed):
    from kizuna.modules._viterbi import viterbi_scan

    log_start, log_trans, log_emit, lengths = mixed_chain(seed)
    groups = fb.length_groups(lengths)
    assert groups is not None and len(groups) > 1
    assert sorted(torch.cat([s for s, _ in groups]).tolist()) == list(range(lengths.shape[0]))
    assert sorted(torch.cat([r for _, r in groups]).tolist()) == list(range(log_emit.shape[0]))
    for seqs, _ in groups:  # every block within PAD_WASTE times its rows
        assert len(seqs) * int(lengths[seqs].max()) <= fb.PAD_WASTE * int(lengths[seqs].sum())
    sm = fb.forward_backward(log_start, log_trans, log_emit, lengths)
    one = fb._smooth(log_start, log_trans, log_emit, lengths)  # the one padded block (the code before groups)
    for name in ("log_gamma", "log_cavity", "trans_counts", "start_counts", "log_likelihood"):
        torch.testing.assert_close(getattr(sm, name), getattr(one, name), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fb.forward_log_likelihood(log_start, log_trans, log_emit, lengths),
                               fb._forward_log_likelihood(log_start, log_trans, log_emit, lengths), rtol=1e-12, atol=0)
    score, states = fb.viterbi(log_start, log_trans, log_emit, lengths)
    one_score, one_states = viterbi_scan(log_start, log_trans, fb.pad(log_emit, lengths), lengths)
    assert torch.equal(states, fb.unpad(one_states, lengths))
    torch.testing.assert_close(score, one_score, rtol=1e-12, atol=0)
    loop_score, loop_states = fb.viterbi_loop(log_start, log_trans, log_emit, lengths)
    assert torch.equal(states, loop_states)
    if _backend.numba_available():  # the compiled loop sums its path's score over the same blocks
        from kizuna.modules.hmm.viterbi import viterbi as hmm_viterbi

        numba_score, numba_states = hmm_viterbi(log_start, log_trans, log_emit, lengths, "numba")
        assert torch.equal(numba_states, states) and torch.equal(numba_score, score)
    paths = fb.sample_paths(log_start, log_trans, log_emit, lengths, 4, torch.Generator().manual_seed(0))
    assert paths.shape == (4, log_emit.shape[0])
    step = torch.cat([log_start[paths[:, :1]], log_trans[paths[:, :-1], paths[:, 1:]]], 1)  # every draw possible
    assert bool(torch.isfinite(step).all())


def test_equal_lengths_stay_one_block_bitwise():
    log_start, log_trans, log_emit, _ = mixed_chain(0)
    lengths = torch.tensor([log_emit.shape[0] // 4] * 3 + [log_emit.shape[0] - 3 * (log_emit.shape[0] // 4)])
    assert fb.length_groups(lengths) is None
    sm, one = fb.forward_backward(log_start, log_trans, log_emit, lengths), fb._smooth(log_start, log_trans,
                                                                                          log_emit, lengths)
    assert all(torch.equal(getattr(sm, f), getattr(one, f)) for f in ("log_gamma", "trans_counts", "log_likelihood"))


def test_grouped_errors_name_the_sequence_as_given():
    log_start, log_trans, log_emit, lengths = mixed_chain(0)
    log_trans = log_trans.clone()
    log_trans[:, 0] = -torch.inf  # state 0 only at a start
    b = int((lengths == lengths.max()).nonzero()[0]) + 1  # the sequence after the longest: not first in its group
    first = int(lengths[:b].sum())
    log_emit = log_emit.clone()
    log_emit[first + 1] = torch.tensor([0.0, -torch.inf, -torch.inf])  # only state 0, impossible after a step
    assert int(lengths[b]) > 1
    with pytest.raises(ValueError, match=rf"forward_backward: no path of nonzero probability reaches sequence {b}, "
                                         rf"step 1 \(row {first + 1}\)"):
        fb.forward_backward(log_start, log_trans, log_emit, lengths)
    with pytest.raises(ValueError, match=rf"viterbi: no path of nonzero probability reaches sequence {b}, step 1"):
        fb.viterbi(log_start, log_trans, log_emit, lengths)
    with pytest.raises(ValueError, match=rf"sample_paths: no path of nonzero probability reaches sequence {b}"):
        fb.sample_paths(log_start, log_trans, log_emit, lengths)


def test_one_long_sequence_beside_many_short_ones_takes_memory_of_its_rows():
    # tracemalloc does not see torch's allocations: the peak resident memory of a fresh process, over its imports
    script = textwrap.dedent("""
        import resource, torch
        from kizuna.modules import _forward_backward as fb
        lengths = torch.tensor([6000] + [1] * 300)
        g = torch.Generator().manual_seed(0)
        log_emit = torch.randn(int(lengths.sum()), 4, generator=g, dtype=torch.float64)
        log_start = torch.full((4,), 0.25, dtype=torch.float64).log()
        log_trans = torch.log_softmax(torch.randn(4, 4, generator=g, dtype=torch.float64), 1)
        fb.forward_backward(log_start, log_trans, log_emit[:10], torch.tensor([5, 5]))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fb.forward_backward(log_start, log_trans, log_emit, lengths)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600)
    grown_mb = float(out.stdout.split()[-1])
    assert grown_mb < 150  # one padded block of 301 x 6000 x 4: about 1 GB; the rows: 0.2 MB


# ------------------------------------------------------------------ named errors
def test_frozen_hmm_node_that_was_never_fitted_is_named():
    x = torch.tensor(sticky_data(100))
    hmm = km.HMM(2, learnable=False).connect(km.Observation(x))
    with pytest.raises(km.NotFittedError, match=r"HMM hmm is not fitted yet: with learnable=False .* has no "
                                                r"startprob_, transmat_, means_, covars_"):
        km.Graph([hmm]).fit(n_iter=1, seed=0)
    fitted = km.HiddenMarkovModel(2, n_iter=5, random_state=0).fit(x)
    frozen = km.HMM(2, learnable=False, name="frozen")
    for name in ("startprob_", "transmat_", "means_"):  # covars_ missing
        setattr(frozen, name, getattr(fitted, name))
    frozen.connect(km.Observation(x))
    with pytest.raises(km.NotFittedError, match="has no covars_;"):
        km.Graph([frozen]).fit(n_iter=1, seed=0)
    frozen.covars_ = fitted.covars_
    km.Graph([frozen]).fit(n_iter=1, seed=0)  # given parameters: kept as they are
    assert torch.equal(frozen.transmat_, fitted.transmat_) and torch.equal(frozen.means_, fitted.means_)


def test_numpy_integers_are_taken_as_n_components():
    x = sticky_data(200)
    counts = np.random.default_rng(0).poisson(2, (30, 6))
    for est, data in ((km.HiddenMarkovModel(n_iter=3, random_state=0), x),
                      (km.LatentDirichletAllocation(max_iter=3, random_state=0), counts)):
        search = GridSearchCV(est, {"n_components": np.arange(2, 4)}, cv=2).fit(data)
        assert search.best_params_["n_components"] in (2, 3)
    assert km.HiddenMarkovModel(np.int64(2), random_state=0).fit(x).transmat_.shape == (2, 2)
    assert km.MultimodalLDA(np.int64(2), max_iter=2, random_state=0).fit([counts]).transform([counts]).shape == (30, 2)
    for bad in (2.0, True, 0, "2"):
        with pytest.raises(ValueError, match="n_components must be an integer >= 1"):
            km.HiddenMarkovModel(bad).fit(x)
        with pytest.raises(ValueError, match="n_components must be an integer >= 1"):
            km.LatentDirichletAllocation(bad).fit(counts)


def test_hmm_with_more_states_than_samples_is_named():
    x = np.array([[2.0, 1], [0, 0], [1, 0.5]])
    with pytest.raises(ValueError, match=r"HMM: 3 samples for 5 components \(n_samples must be >= n_components"):
        km.HiddenMarkovModel(5, random_state=0).fit(x)
    with pytest.raises(ValueError, match=r"HMM hmm: 3 samples for 4 components"):
        km.Graph([km.HMM(4).connect(km.Observation(x))]).fit(n_iter=1, seed=0)
    km.HiddenMarkovModel(3, random_state=0).fit(x)  # as many states as samples: fitted as before
    model = km.HiddenMarkovModel(5, emission="categorical", random_state=0).fit(np.array([0, 1, 1]))  # no k-means
    assert model.emissionprob_.shape == (5, 2)


def test_lda_n_iter_survives_save_and_load(tmp_path):
    counts = np.random.default_rng(0).poisson(2, (20, 5))
    lda = km.LDA(2, max_iter=7, random_state=0).fit(counts)
    save_module(lda, tmp_path / "lda.pt")
    loaded = load_module(km.LDA(2, max_iter=7, random_state=0), tmp_path / "lda.pt")
    assert loaded.n_iter_ == 7
    assert torch.equal(loaded.components_, lda.components_)


def test_list_of_sequences_for_hmm_fit_names_lengths():
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(5, 2)), rng.normal(size=(7, 2))]
    with pytest.raises(ValueError, match=r"HMM: X is a list of 2 sequences of different lengths \[5, 7\]; .*"
                                         r"lengths=\[len\(x\) for x in X\]"):
        km.HiddenMarkovModel(2).fit(seqs)
    with pytest.raises(ValueError, match="HMM: X is a list of 2 sequences"):
        km.HiddenMarkovModel(2, emission="categorical").fit([[0, 1, 1], [1, 0]])
    with pytest.raises(ValueError, match="MarkovChain: X is a list of 2 sequences"):
        km.MarkovChain().fit([np.eye(2)[[0, 1]], np.eye(2)[[0, 1, 1]]])
    model = km.HiddenMarkovModel(2, random_state=0).fit(np.concatenate(seqs), lengths=[5, 7])  # what it says
    assert model.transmat_.shape == (2, 2)


def test_graph_nodes_take_numpy_integers_as_their_class_count() -> None:
    """km.HMM(np.int64(2)) (and the GMM and LDA nodes) refused a numpy integer ("must be a positive int"), as the
    estimators did; the count is the same int, and a fraction or bool is still refused."""
    import kizuna.modules as km

    for make in (km.HMM, km.GMM, km.MLDA):
        node = make(np.int64(3))
        assert node.n_classes == 3 and type(node.n_classes) is int
        for bad in (2.5, True, np.float64(3.0)):
            with pytest.raises(ValueError, match="the number of classes must be a positive int"):
                make(bad)
