"""The compiled Viterbi (`kizuna.modules._numba_kernels.viterbi`, optional extra ``fast``) against the loop over
time in torch (`_forward_backward.viterbi_loop`), enumeration and hmmlearn: the same paths (the first maximum on
ties, as torch), the same scores; and the backend option's errors."""

import itertools

import numpy as np
import pytest
import torch

from kizuna.modules import _backend
from kizuna.modules import _forward_backward as fb
from kizuna.modules.hmm import HMM
from kizuna.modules.hmm.viterbi import viterbi

F64 = torch.float64
needs_numba = pytest.mark.skipif(not _backend.numba_available(), reason="numba not installed (kizuna[fast])")


def chain(k, n, seed, sticky=0.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    trans = torch.rand(k, k, generator=g, dtype=F64) + sticky * torch.eye(k, dtype=F64)
    trans = trans / trans.sum(1, keepdim=True)
    start = torch.softmax(torch.randn(k, generator=g, dtype=F64), 0)
    emit = torch.randn(n, k, generator=g, dtype=F64) * 2
    return torch.log(start).to(dtype), torch.log(trans).to(dtype), emit.to(dtype)


def check(log_start, log_trans, log_emit, lengths):
    lengths_t = torch.tensor(lengths)
    score, states = viterbi(log_start, log_trans, log_emit, lengths_t, "numba")
    ref_score, ref_path = fb.viterbi_loop(log_start, log_trans, log_emit, lengths)
    assert torch.equal(states, ref_path)
    tol = dict(rtol=1e-12, atol=1e-9) if log_emit.dtype == F64 else dict(rtol=1e-6, atol=1e-4)  # sums' order
    torch.testing.assert_close(score, ref_score, **tol)


@needs_numba
@pytest.mark.parametrize("lengths", [[1], [2], [500], [1, 37, 200, 5, 1]])
@pytest.mark.parametrize("sticky", [0.0, 5.0])
def test_paths_and_scores_equal_the_loop(lengths, sticky):
    check(*chain(5, sum(lengths), seed=len(lengths), sticky=sticky), lengths)


@needs_numba
def test_ties_take_the_first_maximum_as_torch():
    """Integer log-potentials with uniform transitions: nearly every step ties between states; the first
    maximum is taken at every step and at the end, as torch's max / argmax in the loop over time."""
    g = torch.Generator().manual_seed(1)
    log_emit = torch.randint(0, 2, (400, 4), generator=g).to(F64)
    log_trans = torch.zeros(4, 4, dtype=F64)
    log_trans[1, 2] = log_trans[3, 0] = -torch.inf  # and impossible transitions
    check(torch.zeros(4, dtype=F64), log_trans, log_emit, [100, 300])


@needs_numba
def test_identity_transitions_and_float32():
    """A chain that never forgets its start (identity transitions), and float32 tables (the running values in float64
    since stop 48; the path and its score float32)."""
    log_emit = torch.randn(300, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    check(torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=F64)), torch.log(torch.eye(3, dtype=F64)), log_emit, [300])
    check(*chain(6, 700, seed=3, dtype=torch.float32), [300, 400])


@needs_numba
def test_matches_enumeration_and_hmmlearn():
    k, lengths = 3, [5, 1, 4]
    log_start, log_trans, log_emit = chain(k, sum(lengths), seed=4)
    score, states = viterbi(log_start, log_trans, log_emit, torch.tensor(lengths), "numba")
    for b, (lo, e) in enumerate(zip(np.cumsum([0, *lengths]), torch.split(log_emit, lengths))):
        paths = torch.tensor(list(itertools.product(range(k), repeat=e.shape[0])))
        lp = log_start[paths[:, 0]] + e[torch.arange(e.shape[0]), paths].sum(1)
        lp = lp + log_trans[paths[:, :-1], paths[:, 1:]].sum(1)
        assert torch.equal(states[lo:lo + e.shape[0]], paths[lp.argmax()])
        torch.testing.assert_close(score[b], lp.max(), rtol=0, atol=1e-10)
    hmmc = pytest.importorskip("hmmlearn._hmmc")
    log_start, log_trans, log_emit = chain(8, 40_000, seed=6, sticky=20.0)
    score, states = viterbi(log_start, log_trans, log_emit, torch.tensor([40_000]), "numba")
    ref_score, ref_path = hmmc.viterbi(log_start.exp().numpy(), log_trans.exp().numpy(), log_emit.numpy())
    assert float(score[0]) == pytest.approx(ref_score, rel=1e-12)
    assert torch.equal(states, torch.as_tensor(ref_path, dtype=torch.long))


@needs_numba
def test_decode_is_the_same_on_both_backends_long_sequence():
    """Above the torch path's ``SCAN_FROM`` (rank-convergence scan): the estimator's decode, both backends."""
    x = torch.randn(35_000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x[torch.arange(35_000) // 50 % 2 == 1] += 3.0
    model = HMM(2, n_iter=3, random_state=0, backend="torch").fit(x)
    torch_score, torch_states = model.decode(x)
    model.backend = "numba"
    numba_score, numba_states = model.decode(x)
    assert torch.equal(torch_states, numba_states) and numba_score == torch_score


def test_backend_errors_name_the_problem(monkeypatch):
    x = torch.randn(20, 1, dtype=F64)
    model = HMM(2, n_iter=2, random_state=0, backend="torch").fit(x)
    model.backend = "fortran"
    with pytest.raises(ValueError, match="backend must be one of"):
        model.decode(x)
    with pytest.raises(ValueError, match="backend must be one of"):
        HMM(2, backend="fortran")
    monkeypatch.setattr(_backend, "numba_available", lambda: False)
    model.backend = "numba"
    with pytest.raises(ImportError, match=r"kizuna\[fast\]"):
        model.decode(x)
    model.backend = "auto"  # without numba: the torch path
    assert torch.equal(model.predict(x), fb.viterbi_loop(*model._log_chain(), model._log_emit(x))[1])


@needs_numba
def test_tied_paths_numba_keeps_the_loops_first_maximum_torch_a_tied_one():
    """The documented tie behaviour (`kizuna.modules.hmm.viterbi`): with two states of identical emissions (and
    data on a grid) many paths tie; numba returns the loop over time's path exactly, torch's chunked recursions (here
    the rank-convergence scan, forced by ``chunk``) may return another path of the same score to rounding."""
    from kizuna.modules._viterbi import path_log_prob, viterbi_scan

    n = 3000
    g = torch.Generator().manual_seed(0)
    x = torch.round(torch.randn(n, generator=g, dtype=F64) * 20) / 10
    log_emit = torch.stack([-(x + 1) ** 2 / 2, -(x - 1) ** 2 / 2, -(x - 1) ** 2 / 2], 1)  # states 1 and 2 alike
    log_start = torch.full((3,), -np.log(3.0), dtype=F64)
    log_trans = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]], dtype=F64))
    lengths = torch.tensor([n])
    ref_score, ref_path = fb.viterbi_loop(log_start, log_trans, log_emit)
    score, states = viterbi(log_start, log_trans, log_emit, lengths, "numba")
    assert torch.equal(states, ref_path)
    scan_score, scan_path = viterbi_scan(log_start, log_trans, log_emit[None], lengths, chunk=8)
    assert bool((scan_path[0] != ref_path).any())  # ties broken the other way (2 steps here, where x = 0) ...
    torch.testing.assert_close(scan_score, ref_score, rtol=0, atol=1e-8)  # ... between paths tied to rounding
    torch.testing.assert_close(path_log_prob(log_start, log_trans, log_emit[None], scan_path, lengths), scan_score)
