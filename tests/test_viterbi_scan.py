"""Viterbi by chunks fixed up with rank convergence (`kizuna.modules._viterbi`) against the loop over time
(`_forward_backward.viterbi_loop`, itself checked against hmmlearn and enumeration in tests/test_hmm.py):
the same paths, the same scores, on mixing chains, on chains that converge slowly (several fix-up rounds),
on chains with impossible transitions, and on one that never forgets its start (the prefix fallback)."""

import pytest
import torch

from kizuna.modules import _forward_backward as fb
from kizuna.modules import _viterbi as V

F64 = torch.float64


def chain(k, n, seed, sticky=0.0, sparse=False):
    g = torch.Generator().manual_seed(seed)
    trans = torch.rand(k, k, generator=g, dtype=F64) + sticky * torch.eye(k, dtype=F64)
    if sparse:  # left-to-right with a return to 0: most transitions impossible
        trans = torch.eye(k, dtype=F64) + torch.diag(torch.ones(k - 1, dtype=F64), 1)
        trans[-1, 0] = 1.0
    trans = trans / trans.sum(1, keepdim=True)
    start = torch.softmax(torch.randn(k, generator=g, dtype=F64), 0)
    emit = torch.randn(n, k, generator=g, dtype=F64) * 2
    return torch.log(start), torch.log(trans), emit


def check(log_start, log_trans, log_emit, lengths, chunk=None):
    lengths_t = torch.tensor(lengths)
    score, states = V.viterbi_scan(log_start, log_trans, fb.pad(log_emit, lengths_t), lengths_t, chunk)
    ref_score, ref_path = fb.viterbi_loop(log_start, log_trans, log_emit, lengths)
    torch.testing.assert_close(score, ref_score, rtol=1e-12, atol=1e-9)
    assert torch.equal(fb.unpad(states, lengths_t), ref_path)


@pytest.mark.parametrize("chunk", [1, 7, 50])
@pytest.mark.parametrize("lengths", [[2], [200], [1, 37, 200, 5]])
def test_paths_and_scores_equal_the_loop(lengths, chunk):
    check(*chain(4, sum(lengths), seed=len(lengths) + chunk), lengths, chunk)


def test_slowly_converging_chain_needs_several_rounds(monkeypatch):
    """Sticky transitions and weak emissions: short chunks do not converge within one chunk, so the fix-up
    and the chase go round several times; the answer is still the loop's."""
    log_start, log_trans, log_emit = chain(6, 3000, seed=1, sticky=30.0)
    log_emit = log_emit * 0.05
    rounds = []
    original = V._parallel

    def counting(a, b):
        rounds.append(a.shape[1])
        return original(a, b)

    monkeypatch.setattr(V, "_parallel", counting)
    check(log_start, log_trans, log_emit, [3000], chunk=10)
    assert len(rounds) > 3  # convergence was checked repeatedly (more than one round of one check)


def test_impossible_transitions():
    log_start, log_trans, log_emit = chain(5, 400, seed=2, sparse=True)
    assert torch.isinf(log_trans).any()
    check(log_start, log_trans, log_emit, [400], chunk=7)
    check(log_start, log_trans, log_emit, [150, 250], chunk=7)


def test_a_chain_that_never_forgets_its_start_falls_back_to_the_prefix(monkeypatch):
    """Identity transitions: the vector never becomes independent of where it started, so rank convergence
    cannot settle and the chunked (max, +) prefix answers (exactly)."""
    k, n = 3, 500
    log_start = torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=F64))
    log_trans = torch.log(torch.eye(k, dtype=F64))
    log_emit = torch.randn(n, k, generator=torch.Generator().manual_seed(0), dtype=F64)
    calls, prefix = [], V.max_product
    monkeypatch.setattr(V, "max_product", lambda *a: calls.append(1) or prefix(*a))
    check(log_start, log_trans, log_emit, [n], chunk=20)
    assert calls, "the prefix fallback was not used"


def test_path_log_prob_is_the_sum_along_the_path():
    log_start, log_trans, log_emit = chain(3, 6, seed=3)
    states = torch.tensor([[0, 2, 2, 1, 0, 1]])
    expected = log_start[0] + log_emit[torch.arange(6), states[0]].sum() + sum(
        log_trans[states[0, t - 1], states[0, t]] for t in range(1, 6))
    got = V.path_log_prob(log_start, log_trans, log_emit[None], states, torch.tensor([6]))
    torch.testing.assert_close(got[0], expected)


def test_first_argmax_is_torchs_argmax_with_ties_and_minus_inf():
    """`_first_argmax` (comparison + maximum over a leading dim) returns torch.argmax's first maximum."""
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 3, (5, 7, 200), generator=g).to(F64)  # many ties
    x[:, 0] = -torch.inf  # a column that is all -inf: index 0, as argmax
    x[2, 1] = torch.inf
    for dim in (0, 1):
        got = V._first_argmax(x, x.amax(dim), dim)
        assert torch.equal(got, x.argmax(dim))


def test_the_chase_goes_round_and_its_fallback_is_exact(monkeypatch):
    """Sticky chains coalesce slowly backwards: chunks whose guessed end was wrong are chased again (the
    rounds form all their pointers at once, `_first_argmax` over dim 1); when the rounds do not settle, every
    back-pointer chased by a prefix over maps answers. Both give the loop's path."""
    log_start, log_trans, log_emit = chain(6, 3000, seed=5, sticky=3.0)
    log_emit = log_emit * 0.5  # the vectors converge within 8-step chunks, the paths not always
    dims = []
    original = V._first_argmax
    monkeypatch.setattr(V, "_first_argmax", lambda x, best, dim=0: dims.append(dim) or original(x, best, dim))
    check(log_start, log_trans, log_emit, [3000], chunk=8)
    assert 1 in dims  # a round of the chase ran
    monkeypatch.setattr(V, "_chase", lambda *args: None)
    check(log_start, log_trans, log_emit, [1000, 2000], chunk=8)


def test_long_sequence_default_chunks_match_hmmlearn(monkeypatch):
    """Above ``SCAN_FROM`` transitions with the default chunk length (the path `decode` takes at N = 10^5),
    several sequences, against hmmlearn's compiled Viterbi (no fallback taken)."""
    hmmc = pytest.importorskip("hmmlearn._hmmc")
    monkeypatch.setattr(V, "max_product", lambda *args: pytest.fail("the prefix fallback answered"))
    monkeypatch.setattr(V, "apply_maps", lambda *args: pytest.fail("the pointer fallback answered"))
    log_start, log_trans, log_emit = chain(8, 2 * V.SCAN_FROM + 50, seed=6, sticky=20.0)
    lengths = [V.SCAN_FROM + 7, V.SCAN_FROM + 43]
    score, states = fb.viterbi(log_start, log_trans, log_emit, lengths)
    for b, (lo, hi) in enumerate([(0, lengths[0]), (lengths[0], sum(lengths))]):
        ref_score, ref_path = hmmc.viterbi(log_start.exp().numpy(), log_trans.exp().numpy(), log_emit[lo:hi].numpy())
        assert float(score[b]) == pytest.approx(ref_score, rel=1e-12)
        assert torch.equal(states[lo:hi], torch.as_tensor(ref_path, dtype=torch.long))
