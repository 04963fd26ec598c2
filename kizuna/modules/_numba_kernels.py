r"""Compiled (numba) loops of the classical modules; imported only when the ``fast`` extra is installed.

Both kernels compute exactly what a torch loop computes, in the same floating-point operations, so their answers
are equal (not merely close) to it: `viterbi` to the loop over time `kizuna.modules._forward_backward.viterbi_loop`
(the torch backend's chunked recursions can break exact ties differently; `kizuna.modules.hmm.viterbi`), the sweep
to the torch sweep:

* `viterbi`: the max-product recursion with back-pointers over the rows of B sequences stored one after the
  other (time-major, N×K, as hmmlearn),

  .. math::
      \delta_0(j) = \log\pi_j + \log p(x_0|j),\qquad
      \delta_t(j) = \max_i\,[\delta_{t-1}(i) + \log A_{ij}] + \log p(x_t|j),\qquad
      \psi_t(j) = \arg\max_i\,[\delta_{t-1}(i) + \log A_{ij}],

  the first maximum on ties (as torch's ``max`` / ``argmax``), then the path chased back from the first
  :math:`\arg\max_j \delta_{T-1}(j)`. Cost :math:`T K^2` compare-and-adds, no allocation per step. The K
  running values :math:`\delta_t` are float64 whatever the tables' dtype (float32 tables are added to them
  exactly as the loop over time does after lifting them to float64): :math:`\delta_t` grows like the path's
  log-probability, and in float32 candidates closer than its rounding (0.25 nats at 3e6) were compared by
  rounding, a path 56 nats less probable than the best after 10^6 steps. Float64 tables: unchanged arithmetic.
* `gibbs_sweep`: one sweep of the blocked collapsed Gibbs sampler of `kizuna.modules.lda.sampler` (its
  docstring has the conditional). The sweep's token order, block bounds and uniforms come from the torch
  generator; inside a block every token draws from the counts as they were when the block began (minus its
  own assignment; the block is visited in storage order, which changes no draw), by the inverse CDF (the
  number of cumulative sums at or below :math:`u\sum_k p_k`); the counts are then updated. With one token
  per block this is the sequential collapsed Gibbs sampler. The cumulative sums accumulate in float64 and
  are stored in the tables' dtype, as torch's CPU ``cumsum``.

``cache=True`` writes the compiled machine code next to this file (``__pycache__``), so only the first import
in an environment pays the compilation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

try:
    import numba
except ImportError:  # only `kizuna.modules._backend` decides to call these; a doctest collection imports them too
    numba = None


def _compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """numba's ``njit`` with the machine code cached on disk and Python's division checks off (IEEE results, as
    torch: no ZeroDivisionError); the plain function where numba is absent."""
    return function if numba is None else numba.njit(cache=True, nogil=True, error_model="numpy")(function)


@_compiled
def viterbi(log_start: np.ndarray, log_trans_t: np.ndarray, log_emit: np.ndarray, bounds: np.ndarray,
            states: np.ndarray) -> None:  # pragma: no cover - compiled
    """Viterbi paths of the sequences ``log_emit[bounds[b]:bounds[b + 1]]`` into ``states`` (N,).

    Args:
        log_start: (K,); log_trans_t: (K, K), the *transposed* :math:`\\log A` (row j: from every state i into
            j, contiguous over i); log_emit: (N, K); bounds: (B + 1,) row offsets; states: (N,) int64, written.
    """
    n, k = log_emit.shape
    ptr = np.empty((n, k), dtype=np.int32)
    delta = np.empty(k, dtype=np.float64)  # float64 whatever the tables' dtype (see the module docstring)
    nxt = np.empty(k, dtype=np.float64)
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


@_compiled
def gibbs_sweep(doc: np.ndarray, word: np.ndarray, mod: np.ndarray, z: np.ndarray, order: np.ndarray,
                u: np.ndarray, n_blocks: int, in_order: bool, n_dk: np.ndarray, n_wk: np.ndarray, n_mk: np.ndarray,
                vbeta: np.ndarray, vocab_mod: np.ndarray, bias: np.ndarray, phi: np.ndarray,
                consts: np.ndarray) -> None:  # pragma: no cover
    """One blocked sweep in place (``z`` and the count tables are updated).

    Args:
        doc, word, mod: (T,) each token's sample, row of the joint vocabulary and modality; z: (T,) topics.
        order: (T,) a uniform permutation of the tokens; u: (T,) uniforms; n_blocks: B, at most T; in_order: the
            blocks of `kizuna.modules.lda.sampler._sweep_draws` (see `_blocks_in_storage_order`).
        n_dk: (N, K); n_wk: (ΣV, K); n_mk: (M, K) counts (in the tables' float dtype); vbeta: (M,) :math:`V_m\\beta`;
            vocab_mod: (ΣV,) each joint-vocabulary row's modality.
        bias: (N, K) the class prior, or (0, K) for none; phi: (ΣV, K) fixed topics, or (0, K) to learn them.
        consts: (4,) :math:`\\alpha, \\beta, 1, 0` in the tables' dtype (float32 tables stay float32 arithmetic).
    """
    k = n_dk.shape[1]
    alpha, beta, one, zero = consts[0], consts[1], consts[2], consts[3]
    use_bias, learn = bias.shape[0] > 0, phi.shape[0] == 0
    bounds, tokens, dq, wq, mq, oldq, uq = _blocks_in_storage_order(doc, word, mod, z, order, u, n_blocks, in_order)
    words = phi if not learn else np.empty_like(n_wk)
    p = np.empty(k, dtype=n_dk.dtype)
    new = np.empty(order.shape[0], dtype=np.int32)
    for blk in range(bounds.shape[0] - 1):
        lo, hi = bounds[blk], bounds[blk + 1]
        # the word factors (n_kw + β) / (n_k + V_m β) as torch forms them: one table for a block with at least
        # as many tokens as vocabulary rows, else per token (the same values; small blocks stay cheap)
        table = learn and hi - lo >= n_wk.shape[0]
        if table:
            for w in range(n_wk.shape[0]):
                for t in range(k):
                    words[w, t] = (n_wk[w, t] + beta) / (n_mk[vocab_mod[w], t] + vbeta[vocab_mod[w]])
        for q in range(lo, hi):
            d, w, m, old = dq[q], wq[q], mq[q], oldq[q]
            if learn and not table:
                for t in range(k):
                    words[w, t] = (n_wk[w, t] + beta) / (n_mk[m, t] + vbeta[m])
            for t in range(k):
                p[t] = ((n_dk[d, t] + alpha) * bias[d, t] if use_bias else n_dk[d, t] + alpha) * words[w, t]
            a = n_dk[d, old] - one + alpha  # the token's own assignment removed
            if use_bias:
                a = a * bias[d, old]
            p[old] = a * ((n_wk[w, old] - one + beta) / (n_mk[m, old] - one + vbeta[m]) if learn else phi[w, old])
            acc = 0.0
            for t in range(k):
                acc += p[t]
                p[t] = acc
            total = p[k - 1]
            target = min(uq[q] * total, np.nextafter(total, zero))
            c = 0
            while c < k - 1 and p[c] <= target:
                c += 1
            new[q] = c
        for q in range(lo, hi):  # the block's moves, seen by the next block
            d, w, m, old, c = dq[q], wq[q], mq[q], oldq[q], new[q]
            n_dk[d, old] -= one
            n_dk[d, c] += one
            if learn:
                n_wk[w, old] -= one
                n_wk[w, c] += one
                n_mk[m, old] -= one
                n_mk[m, c] += one
    for q in range(tokens.shape[0]):
        z[tokens[q]] = new[q]


@_compiled
def _blocks_in_storage_order(doc: np.ndarray, word: np.ndarray, mod: np.ndarray, z: np.ndarray, order: np.ndarray,
                             u: np.ndarray, n_blocks: int, in_order: bool) -> tuple:  # pragma: no cover - compiled
    """The blocks of `kizuna.modules.lda.sampler._sweep_draws` from its random numbers, each block's tokens in
    storage order with their sample, word, modality, topic and uniform gathered alongside: (bounds (B + 1,),
    tokens, doc, word, mod, topic, uniform (T,) each).

    Without ``in_order`` block b is positions ``bounds[b]:bounds[b + 1]`` of ``order`` (torch.tensor_split's
    sizes), each with the uniform of its position; with it token i's block is :math:`\\lfloor order_i B/T\\rfloor`
    and the q-th token of the blocks listed in storage order takes ``u[q]``. Inside a block every draw reads
    the counts as they were when the block began, so the order a block is visited in changes no draw; storage
    order reads the tables sample by sample. One counting sort, one pass over the token arrays."""
    n, b = order.shape[0], n_blocks
    label = np.empty(n, dtype=np.int64)
    pos = np.empty(n, dtype=np.int64)  # the position of each token's uniform
    bounds = np.zeros(b + 1, dtype=np.int64)
    if in_order:
        for i in range(n):
            label[i] = order[i] * b // n
            bounds[label[i] + 1] += 1
        bounds = np.cumsum(bounds)
    else:
        for j in range(b):
            bounds[j + 1] = bounds[j] + n // b + (1 if j < n % b else 0)
            for r in range(bounds[j], bounds[j + 1]):
                label[order[r]] = j
                pos[order[r]] = r
    fill = bounds[:-1].copy()
    tokens = np.empty(n, dtype=np.int64)
    dq, wq = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
    mq, oldq = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
    uq = np.empty(n, dtype=u.dtype)
    for i in range(n):
        q = fill[label[i]]
        fill[label[i]] = q + 1
        tokens[q], dq[q], wq[q], mq[q], oldq[q] = i, doc[i], word[i], mod[i], z[i]
        uq[q] = u[q] if in_order else u[pos[i]]
    return bounds, tokens, dq, wq, mq, oldq, uq
