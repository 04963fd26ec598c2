r"""Viterbi decoding for `HiddenMarkovModel.decode`, by the backend the estimator asks for.

``"torch"``: `kizuna.modules._forward_backward.viterbi` (chunks of the max-product recursion run at once and
fixed up by rank convergence, `kizuna.modules._viterbi`); ``"numba"``: the loop over time compiled
(`kizuna.modules._numba_kernels.viterbi`, hmmlearn's algorithm). Each returns a most probable path, with its
:math:`\log p(x, z)` summed by `kizuna.modules._viterbi.path_log_prob` on both backends (over the same
blocks, `kizuna.modules._forward_backward.path_log_probs`). Both run the recursion in float64 whatever the data's
dtype, and sum the score in float64 (`kizuna.modules._viterbi.widened`): a float32 decode is the exact Viterbi path
of the float32 log-probabilities (its float32 running maxima lost 56 nats over 10^6 steps).

Where one path is the most probable, both backends return it (the same path and score). Where several paths tie,
the numba loop returns the loop over time's (`kizuna.modules._forward_backward.viterbi_loop`: the first maximum at
every step, as hmmlearn), and torch may return another of them: its chunked recursions add in another order
(`kizuna.modules._chain_scan.max_product` below ``kizuna.modules._viterbi.SCAN_FROM`` = 30,000 transitions in the
longest sequence, where rounding can break an exact tie the other way; from there on the rank-convergence scan of
`kizuna.modules._viterbi`, which also treats candidates within ``ATOL`` = 1e-9 of each other as tied). The paths
then differ only between tied candidates and their scores agree to rounding (measured with two states of identical
emissions: the same paths over 5,000 steps, paths differing at 3 of 29,000 steps and at 9 of 40,000, scores within
5e-11).
"""

from __future__ import annotations

import numpy as np
import torch

from kizuna.modules import _forward_backward as fb

Tensor = torch.Tensor


def viterbi(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, lengths: Tensor,
            backend: str) -> tuple[Tensor, Tensor]:
    """(:math:`\\max_z \\log p(x_b, z)` per sequence (B,), states (N,)) of the rows ``log_emit`` (N, K) split by
    ``lengths``; ``backend`` is ``"torch"`` or ``"numba"`` (resolved by the caller, `kizuna.modules._backend`)."""
    if backend != "numba":
        return fb.viterbi(log_start, log_trans, log_emit, lengths)
    from kizuna.modules import _numba_kernels

    fb.check_emissions(log_emit, lengths, "viterbi")
    states = torch.empty(log_emit.shape[0], dtype=torch.long)
    bounds = np.concatenate([[0], np.cumsum(lengths.cpu().numpy())]).astype(np.int64)
    arrays = (log_start, log_trans.T, log_emit)
    _numba_kernels.viterbi(*(np.ascontiguousarray(a.detach().numpy()) for a in arrays), bounds, states.numpy())
    score = fb.path_log_probs(log_start, log_trans, log_emit, states, lengths)
    fb.check_possible(score, log_start, log_trans, log_emit, lengths, "viterbi")
    return score, states
