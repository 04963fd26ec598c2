"""HMM at scale (stop 48, review RS findings F1 and F3).

F1: float32 Viterbi kept its running maxima in float32; they grow like the path's log-probability, so candidates
closer than their rounding were compared by rounding (a path 56 nats less probable than the best after 10^6 steps,
numba and torch backends). Log-emissions around -300 nats a step make the same drift appear within 2-4·10^4 steps.
The decode of float32 tables must be the exact Viterbi path of those numbers (hmmlearn's float64 decode of the same
values) and its score the float32 rounding of that path's float64 log-probability.

F3: forward-backward held ~45 N×K float64 arrays at K = 50, all the sequences at once; the blocks are now capped
(`_forward_backward.blocks`, ``BLOCK_FLOATS``): the peak of the tensors alive during `forward_backward` /
`forward_log_likelihood` is bounded by the outputs plus a multiple of the budget, and the numbers equal the
one-block computation's to rounding.
"""

import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kizuna.modules import _backend
from kizuna.modules import _forward_backward as fb
from kizuna.modules._viterbi import path_log_prob
from kizuna.modules.hmm.viterbi import viterbi

F64 = torch.float64


# ------------------------------------------------------------------------------------------------ F1
def drifting_chain(n, k=4, offset=-300.0, seed=0):
    """A sticky chain whose log-emissions are ``offset`` plus O(1) differences (float32 tables, and their values
    exactly in float64): the running maxima reach 1.2e7 nats after 4·10^4 steps, where a float32 ulp is 1 nat."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.full((k, k), 0.05 / (k - 1), dtype=F64).fill_diagonal_(0.95)
    z = torch.randint(0, k, (n // 50 + 1,), generator=g).repeat_interleave(50)[:n]
    emit = offset + torch.randn(n, k, generator=g, dtype=F64) + 1.5 * torch.nn.functional.one_hot(z, k)
    start = torch.full((k,), 1.0 / k, dtype=F64)
    return torch.log(start).float(), torch.log(trans).float(), emit.float()


def best_path(log_start, log_trans, log_emit):
    """The most probable path of the (float32) tables' values, in float64: hmmlearn's C loop where installed, else
    kizuna's float64 loop over time."""
    try:
        from hmmlearn import _hmmc
    except ImportError:
        return fb.viterbi_loop(log_start.double(), log_trans.double(), log_emit.double())[1]
    _, path = _hmmc.viterbi(log_start.double().exp().numpy(), log_trans.double().exp().numpy(),
                            log_emit.double().numpy())
    return torch.as_tensor(path, dtype=torch.long)


def log_prob64(log_start, log_trans, log_emit, path):
    """:math:`\\log p(x, z)` of a path, summed in float64 from the tables' values."""
    return float(path_log_prob(log_start.double(), log_trans.double(), log_emit.double()[None], path[None],
                               torch.tensor([path.shape[0]]))[0])


BACKENDS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not _backend.numba_available(),
                                                                      reason="numba not installed (kizuna[fast])"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [20_000, 40_000])  # torch: below and above _viterbi.SCAN_FROM (both recursions)
def test_float32_viterbi_finds_the_most_probable_path_and_scores_it(backend, n):
    chain = drifting_chain(n)
    lengths = torch.tensor([n])
    score, path = viterbi(*chain, lengths, backend)
    best = best_path(*chain)
    # the old float32 recursion: paths 3.4-19 nats less probable, 29-99 steps off
    assert log_prob64(*chain, path) == pytest.approx(log_prob64(*chain, best), abs=1e-6)
    assert int((path != best).sum()) == 0
    # the score is the returned path's log-probability, rounded once to float32 (its float32 sum was 1.5 nats off)
    assert score.dtype == torch.float32
    assert float(score[0]) == float(torch.tensor(log_prob64(*chain, path), dtype=F64).float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_viterbi_of_several_sequences(backend):
    """Several sequences (length groups, on the torch backend): each sequence's path is the most probable one."""
    chain = drifting_chain(30_000, seed=1)
    lengths = [25_000, 10, 4_990]
    score, path = viterbi(*chain, torch.tensor(lengths), backend)
    assert score.dtype == torch.float32
    for b, (lo, m) in enumerate(zip(np.cumsum([0, *lengths[:-1]]), lengths)):
        part = (chain[0], chain[1], chain[2][lo:lo + m])
        assert torch.equal(path[lo:lo + m], best_path(*part))
        assert float(score[b]) == float(torch.tensor(log_prob64(*part, path[lo:lo + m]), dtype=F64).float())


# ------------------------------------------------------------------------------------------------ F3
class PeakLive(TorchDispatchMode):
    """The peak bytes of the tensors created by torch operations inside the context and alive together (storages
    counted once; views of ``exclude``'s storages, the inputs, not counted). tracemalloc does not see torch."""

    def __init__(self, *exclude):
        super().__init__()
        self.live, self.peak, self.sizes = 0, 0, {t.untyped_storage().data_ptr(): 0 for t in exclude}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.sizes:
                storage = t.untyped_storage()
                self.sizes[storage.data_ptr()] = storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, storage.data_ptr())
        return out

    def _free(self, key):
        self.live -= self.sizes.pop(key, 0)


def random_chain(k, n, seed):
    g = torch.Generator().manual_seed(seed)
    trans = torch.softmax(torch.randn(k, k, generator=g, dtype=F64) + 3 * torch.eye(k, dtype=F64), 1)
    start = torch.softmax(torch.randn(k, generator=g, dtype=F64), 0)
    return torch.log(start), torch.log(trans), torch.randn(n, k, generator=g, dtype=F64) * 2


def assert_same(sm, ref):
    for name in ("log_gamma", "log_cavity", "trans_counts", "start_counts", "log_likelihood"):
        torch.testing.assert_close(getattr(sm, name), getattr(ref, name), rtol=1e-11, atol=1e-11)


BUDGET = 1 << 17  # floats (1 MiB of float64) in the tests; the default is 1 << 22


@pytest.mark.parametrize("lengths", [[6_000], [1_500, 7, 2_000, 1, 1_200, 1_292]])
def test_blocks_cap_the_memory_and_equal_one_block(monkeypatch, lengths):
    """K = 30, 6,000 steps: one long sequence (in slices of time) and several (in runs of sequences). The tensors
    alive at once stay below the outputs (log_gamma and log_cavity, 2 N×K) plus 8 budgets (measured: 4.7 at K = 50,
    10^5 steps); one block held 16 N×K here (6.7 budgets above the outputs' 2 N×K... and growing with N)."""
    k, n = 30, sum(lengths)
    chain = random_chain(k, n, seed=len(lengths))
    ref = fb.forward_backward(*chain, lengths)  # one block, as before (within the default budget)
    ref_ll = fb.forward_log_likelihood(*chain, lengths)
    monkeypatch.setattr(fb, "BLOCK_FLOATS", BUDGET)
    plan = fb.blocks(torch.tensor(lengths), k)
    rows = torch.cat([torch.arange(n)[r] for _, r in plan])
    assert torch.equal(rows.sort().values, torch.arange(n))  # every row in one block
    for seqs, _ in plan:
        top = int(torch.tensor(lengths)[seqs].max())
        assert seqs.shape[0] == 1 or seqs.shape[0] * top * fb._step_cost(k, top) <= BUDGET
    with PeakLive(chain[2]) as mem:
        sm = fb.forward_backward(*chain, lengths)
    assert_same(sm, ref)
    assert mem.peak <= 8 * (2 * n * k + 8 * BUDGET), mem.peak / (8 * n * k)
    with PeakLive(chain[2]) as mem:
        ll = fb.forward_log_likelihood(*chain, lengths)
    torch.testing.assert_close(ll, ref_ll, rtol=1e-12, atol=1e-10)
    assert mem.peak <= 8 * 8 * BUDGET, mem.peak / (8 * n * k)


def test_sliced_sequence_falls_back_to_log_space_where_a_slice_declines(monkeypatch):
    """A step no state can be predicted well in (a forbidden transition between two near-certain steps: the
    normaliser is exp(-1000)) inside the third slice: the whole sequence runs in log space, as one block did."""
    k, n = 3, 3_000
    log_start, log_trans, log_emit = random_chain(k, n, seed=5)
    log_trans[0, 2] = -torch.inf
    log_trans = torch.log_softmax(log_trans, 1)
    log_emit[2_100:2_102] = torch.tensor([[0.0, -1e3, -1e3], [-1e3, -1e3, 0.0]], dtype=F64)
    ref = fb.forward_backward(log_start, log_trans, log_emit)
    ref_ll = fb.forward_log_likelihood(log_start, log_trans, log_emit)
    monkeypatch.setattr(fb, "BLOCK_FLOATS", 4_000)
    assert fb.block_steps(k) < 1_000
    assert_same(fb.forward_backward(log_start, log_trans, log_emit), ref)
    torch.testing.assert_close(fb.forward_log_likelihood(log_start, log_trans, log_emit), ref_ll, rtol=1e-12,
                               atol=0)


def test_a_sequence_just_past_one_block_is_not_sliced(monkeypatch):
    """Slicing a sequence just longer than `block_steps` recomputed most of its forward pass for little memory (1.8x
    the time at K = 50, 22,206 steps): one sequence runs in slices only above `SLICE_ABOVE` blocks."""
    k = 3
    monkeypatch.setattr(fb, "BLOCK_FLOATS", 4_000)
    steps = fb.block_steps(k)
    calls = []
    real = fb._smooth_sliced
    monkeypatch.setattr(fb, "_smooth_sliced", lambda *a: calls.append(a[2].shape[0]) or real(*a))
    for n in (steps + 1, fb.SLICE_ABOVE * steps, fb.SLICE_ABOVE * steps + 1):
        chain = random_chain(k, n, seed=n)
        monkeypatch.setattr(fb, "BLOCK_FLOATS", 1 << 22)
        ref = fb.forward_backward(*chain)
        monkeypatch.setattr(fb, "BLOCK_FLOATS", 4_000)
        assert_same(fb.forward_backward(*chain), ref)
    assert calls == [fb.SLICE_ABOVE * steps + 1]
