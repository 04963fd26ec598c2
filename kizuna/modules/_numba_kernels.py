r"""Compiled (numba) loops of the classical modules; imported only when the ``fast`` extra is installed.

Both kernels compute exactly what their torch paths compute, in the same floating-point operations, so their
answers are equal (not merely close) to the torch paths':

* `viterbi`: the max-product recursion with back-pointers over the rows of B sequences stored one after the
  other (time-major, N×K, as hmmlearn),

  .. math::
      \delta_0(j) = \log\pi_j + \log p(x_0|j),\qquad
      \delta_t(j) = \max_i\,[\delta_{t-1}(i) + \log A_{ij}] + \log p(x_t|j),\qquad
      \psi_t(j) = \arg\max_i\,[\delta_{t-1}(i) + \log A_{ij}],

  the first maximum on ties (as torch's ``max`` / ``argmax``), then the path chased back from the first
  :math:`\arg\max_j \delta_{T-1}(j)`. Cost :math:`T K^2` compare-and-adds, no allocation per step.
* `gibbs_sweep`: one sweep of the blocked collapsed Gibbs sampler of `kizuna.modules.lda.sampler` (its
  docstring has the conditional). The sweep's token order, block bounds and uniforms come from the torch
  generator; inside a block every token draws from the counts as they were when the block began (minus its
  own assignment), by the inverse CDF (the number of cumulative sums at or below :math:`u\sum_k p_k`); the
  counts are then updated. With one token per block this is the sequential collapsed Gibbs sampler.
  The cumulative sums accumulate in float64 and are stored in the tables' dtype, as torch's CPU ``cumsum``.

``cache=True`` writes the compiled machine code next to this file (``__pycache__``), so only the first import
in an environment pays the compilation.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def viterbi(log_start: np.ndarray, log_trans_t: np.ndarray, log_emit: np.ndarray, bounds: np.ndarray,
            states: np.ndarray) -> None:  # pragma: no cover - compiled
    """Viterbi paths of the sequences ``log_emit[bounds[b]:bounds[b + 1]]`` into ``states`` (N,).

    Args:
        log_start: (K,); log_trans_t: (K, K), the *transposed* :math:`\\log A` (row j: from every state i into
            j, contiguous over i); log_emit: (N, K); bounds: (B + 1,) row offsets; states: (N,) int64, written.
    """
    n, k = log_emit.shape
    ptr = np.empty((n, k), dtype=np.int32)
    delta = np.empty(k, dtype=log_emit.dtype)
    nxt = np.empty(k, dtype=log_emit.dtype)
    for b in range(bounds.shape[0] - 1):
        lo, hi = bounds[b], bounds[b + 1]
        for j in range(k):
            delta[j] = log_start[j] + log_emit[lo, j]
        for t in range(lo + 1, hi):
            for j in range(k):
                best = delta[0] + log_trans_t[j, 0]
                arg = 0
                for i in range(1, k):
                    v = delta[i] + log_trans_t[j, i]
                    if v > best:
                        best = v
                        arg = i
                ptr[t, j] = arg
                nxt[j] = best + log_emit[t, j]
            delta, nxt = nxt, delta
        s = 0
        for j in range(1, k):
            if delta[j] > delta[s]:
                s = j
        states[hi - 1] = s
        for t in range(hi - 1, lo, -1):
            s = ptr[t, s]
            states[t - 1] = s


@numba.njit(cache=True, nogil=True)
def gibbs_sweep(doc: np.ndarray, word: np.ndarray, mod: np.ndarray, z: np.ndarray, order: np.ndarray,
                u: np.ndarray, bounds: np.ndarray, n_dk: np.ndarray, n_wk: np.ndarray, n_mk: np.ndarray,
                vbeta: np.ndarray, bias: np.ndarray, phi: np.ndarray, consts: np.ndarray) -> None:  # pragma: no cover
    """One blocked sweep in place (``z`` and the count tables are updated).

    Args:
        doc, word, mod: (T,) each token's sample, row of the joint vocabulary and modality; z: (T,) topics.
        order: (T,) the tokens in the sweep's order; u: (T,) their uniforms; bounds: (B + 1,) block offsets
            into ``order``.
        n_dk: (N, K); n_wk: (ΣV, K); n_mk: (M, K) counts (in the tables' float dtype); vbeta: (M,) :math:`V_m\\beta`.
        bias: (N, K) the class prior, or (0, K) for none; phi: (ΣV, K) fixed topics, or (0, K) to learn them.
        consts: (4,) :math:`\\alpha, \\beta, 1, 0` in the tables' dtype (float32 tables stay float32 arithmetic).
    """
    k = n_dk.shape[1]
    alpha, beta, one, zero = consts[0], consts[1], consts[2], consts[3]
    use_bias, learn = bias.shape[0] > 0, phi.shape[0] == 0
    cdf = np.empty(k, dtype=n_dk.dtype)
    new = np.empty(order.shape[0], dtype=np.int64)
    for blk in range(bounds.shape[0] - 1):
        lo, hi = bounds[blk], bounds[blk + 1]
        for r in range(lo, hi):
            i = order[r]
            d, w, m, old = doc[i], word[i], mod[i], z[i]
            acc = 0.0
            for t in range(k):
                if t == old:  # the token's own assignment removed
                    a = n_dk[d, t] - one + alpha
                    if use_bias:
                        a = a * bias[d, t]
                    b = (n_wk[w, t] - one + beta) / (n_mk[m, t] - one + vbeta[m]) if learn else phi[w, t]
                else:
                    a = n_dk[d, t] + alpha
                    if use_bias:
                        a = a * bias[d, t]
                    b = (n_wk[w, t] + beta) / (n_mk[m, t] + vbeta[m]) if learn else phi[w, t]
                acc += a * b
                cdf[t] = acc
            total = cdf[k - 1]
            target = min(u[r] * total, np.nextafter(total, zero))
            c = 0
            while c < k - 1 and cdf[c] <= target:
                c += 1
            new[r] = c
        for r in range(lo, hi):  # the block's moves, seen by the next block
            i = order[r]
            d, w, m, old, c = doc[i], word[i], mod[i], z[i], new[r]
            z[i] = c
            n_dk[d, old] -= one
            n_dk[d, c] += one
            if learn:
                n_wk[w, old] -= one
                n_wk[w, c] += one
                n_mk[m, old] -= one
                n_mk[m, c] += one
