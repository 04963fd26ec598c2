r"""Viterbi decoding for `HiddenMarkovModel.decode`, by the backend the estimator asks for.

``"torch"``: `kizuna.modules._forward_backward.viterbi` (chunks of the max-product recursion run at once and
fixed up by rank convergence, `kizuna.modules._viterbi`); ``"numba"``: the loop over time compiled
(`kizuna.modules._numba_kernels.viterbi`, hmmlearn's algorithm). Both give the same paths, the first maximum on
ties, and the same scores: each path's :math:`\log p(x, z)` summed by `kizuna.modules._viterbi.path_log_prob`.
"""

from __future__ import annotations

import numpy as np
import torch

from kizuna.modules import _forward_backward as fb
from kizuna.modules._viterbi import path_log_prob

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
    padded = fb.pad(states[:, None], lengths)[..., 0]
    score = path_log_prob(log_start, log_trans, fb.pad(log_emit, lengths), padded, lengths)
    fb.check_possible(score, log_start, log_trans, log_emit, lengths, "viterbi")
    return score, states
