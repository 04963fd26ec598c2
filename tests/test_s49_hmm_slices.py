"""Stop 49 (review B, F3): `forward_log_likelihood` (HMM `score`) runs one sequence in slices of time as soon as it
is longer than one `block_steps`; only `forward_backward`'s smoothing waits for `SLICE_ABOVE` blocks (its slices
recompute the forward pass; the log-likelihood's slices recompute nothing). 50e3907 had applied `SLICE_ABOVE` to both:
a sequence of 1.5 blocks was scored in one block of up to twice the budget (K = 50, default budget: 122 MiB of tensors
alive where the slices hold 88). The numbers stay those of the unsliced recursion and of hmmlearn's."""

import numpy as np
import torch
from test_s48_hmm_scale import PeakLive, random_chain

from kizuna.modules import _forward_backward as fb

BUDGET = 1 << 17  # floats (1 MiB of float64) in these tests; the default is 1 << 22


def _hmmlearn_log_likelihood(log_start, log_trans, log_emit):
    """hmmlearn's own forward recursion (its C loop) of one sequence, float64; None where hmmlearn is absent."""
    try:
        from hmmlearn import _hmmc
    except ImportError:
        return None
    log_prob, _ = _hmmc.forward_log(log_start.exp().numpy(), log_trans.exp().numpy(), log_emit.numpy())
    return log_prob


def test_the_log_likelihood_slices_above_one_block_and_the_smoothing_above_slice_above(monkeypatch):
    k = 50
    monkeypatch.setattr(fb, "BLOCK_FLOATS", BUDGET)
    steps = fb.block_steps(k)
    calls = {"loglik": [], "smooth": []}
    real_ll, real_smooth = fb._sliced_log_likelihood, fb._smooth_sliced
    monkeypatch.setattr(fb, "_sliced_log_likelihood", lambda *a: calls["loglik"].append(a[2].shape[0]) or real_ll(*a))
    monkeypatch.setattr(fb, "_smooth_sliced", lambda *a: calls["smooth"].append(a[2].shape[0]) or real_smooth(*a))
    lengths = (steps, steps + 1, (3 * steps) // 2, fb.SLICE_ABOVE * steps, fb.SLICE_ABOVE * steps + 1)
    for n in lengths:
        chain = random_chain(k, n, seed=n)
        calls["loglik"].clear()
        with PeakLive(chain[2]) as mem:
            ll = fb.forward_log_likelihood(*chain)
        assert calls["loglik"] == ([n] if n > steps else []), n  # sliced exactly above one block
        # within the tensors of one block and a slice's (measured 2.1 to 2.4 budgets here); unsliced, the block
        # of 1.5 and 2 blocks held 4.5 and 5.1 budgets
        assert mem.peak / 8 <= 3 * BUDGET, (n, mem.peak / 8 / BUDGET)
        ref = _hmmlearn_log_likelihood(*chain)
        if ref is not None:
            np.testing.assert_allclose(ll.numpy(), [ref], rtol=1e-11)
        with monkeypatch.context() as m:  # the unsliced recursion: one block within the default budget
            m.setattr(fb, "BLOCK_FLOATS", 1 << 22)
            torch.testing.assert_close(ll, fb.forward_log_likelihood(*chain), rtol=1e-11, atol=0)
            ref_sm = fb.forward_backward(*chain)
        sm = fb.forward_backward(*chain)
        torch.testing.assert_close(sm.log_likelihood, ref_sm.log_likelihood, rtol=1e-11, atol=0)
        torch.testing.assert_close(sm.trans_counts, ref_sm.trans_counts, rtol=1e-11, atol=1e-11)
    # the smoothing slices only above SLICE_ABOVE blocks (its slices run the forward pass again)
    assert calls["smooth"] == [fb.SLICE_ABOVE * steps + 1]

