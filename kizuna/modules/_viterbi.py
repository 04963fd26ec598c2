r"""Viterbi in O(sqrt T) Python steps and O(T K^2) work: chunks run at once, fixed up by rank convergence.

The max-product recursion :math:`\delta_t(j) = \max_i [\delta_{t-1}(i) + \log A_{ij}] + \log p(x_t|j)` is
sequential, but in the (max, +) semiring it forgets where it started: after a few steps the vector
:math:`\delta_t` is the same, up to an additive constant, whatever :math:`\delta_{t_0}` it started from
("rank convergence"; Maleki, Musuvathi & Mytkowicz 2014, "Parallelizing dynamic programming through rank
convergence", PPoPP). So (`viterbi_scan`):

1. the T-1 transitions are cut into C chunks of L steps and **every chunk runs at once** (L Python steps,
   each one (max, +) product of C vectors with A): chunk 0 from :math:`\delta_0`, the others from zeros;
2. **fix-up**: every other chunk runs again from the exit vector its predecessor computed, step by step,
   until its vector is parallel to (a constant away from) the one of the first run — from there on the
   first run's back-pointers are exact. A chunk that never gets there changed its exit, so its successor
   runs again in the next round (a chunk is only re-run from an exact predecessor's exit, so the answer is
   exact whatever happens; rounds are bounded, then the chunked prefix of `_chain_scan.max_product` answers);
3. the **back-pointers** of every step are formed at once from the (now exact, up to constants) vectors,
   and **chased** by composing them as maps of states (a parallel prefix, log T vectorised levels); the
   score is the path's log-probability.

The work is that of the loop over time, :math:`T K^2`, plus the fix-up (a few steps per chunk on chains that
mix), against :math:`T K^3` for a prefix over chunk products. Vectors are compared after subtracting their
maxima, to ``ATOL``: beyond that a difference between two vectors is below what their rounding resolves,
and the paths can differ only between candidates tied to within it.
"""

from __future__ import annotations

import math

import torch

from kizuna.modules._chain_scan import apply_maps, max_product

Tensor = torch.Tensor
ATOL = 1e-9  # vectors (less their maxima) this close are parallel
MAX_ROUNDS = 8  # fix-up rounds before the chunked prefix answers
CHECK_EVERY = 4  # steps between convergence checks in the fix-up
POINTER_BLOCK = 4096  # steps whose (steps, K, K) candidates are formed at once (cache-sized)
SCAN_FROM = 30_000  # fewer transitions: the chunked prefix directly (measured faster there, K = 8)


def viterbi_chunk(n: int) -> int:
    """L for n transitions: :math:`\\sqrt{n}/5`, at least 8 (measured at K = 8, N = 10^5: L = 60, 100, 160
    took 250, 340, 390 ms on a loaded machine; shorter chunks need more fix-up rounds where the chain
    converges slowly)."""
    return max(8, int(math.sqrt(n) / 5))


def _forward(deltas: Tensor, v: Tensor, log_trans: Tensor, e: Tensor, steps: range) -> None:
    """Max-product steps ``steps`` of every chunk at once from vectors ``v`` (B, C, K), into ``deltas``
    (values only: the back-pointers are recomputed for the one path that is chased)."""
    for i in steps:
        out = deltas[i]
        torch.add(v[..., :1], log_trans[0], out=out)
        for j in range(1, v.shape[-1]):  # max over the previous state, one at a time: no (C, K, K) temporary
            torch.maximum(out, v[..., j:j + 1] + log_trans[j], out=out)
        v = out.add_(e[i])


def _parallel(a: Tensor, b: Tensor) -> Tensor:
    """Whether vectors (..., K) are a constant apart (to ``ATOL``; equal ``-inf`` entries agree), over (...)."""
    a, b = a - a.amax(-1, keepdim=True), b - b.amax(-1, keepdim=True)
    same = ((a - b).abs() <= ATOL) | ((a == b) & torch.isinf(a))
    return same.all(-1)


def _fix_up(deltas: Tensor, log_trans: Tensor, e: Tensor) -> bool:
    """Step 2 of the module docstring on the step-major (L, B, C, K) table, in place; False when
    ``MAX_ROUNDS`` rounds left chunks unresolved. A chunk re-runs from its predecessor's exit as the round
    begins; the chunks after one whose exit changed re-run in the next round."""
    size, c = deltas.shape[0], deltas.shape[2]
    todo = torch.arange(1, c, device=deltas.device)
    for _ in range(MAX_ROUNDS):
        if todo.numel() == 0:
            return True
        run, v = todo, deltas[size - 1].index_select(1, todo - 1)
        for i in range(size):
            v = (v.unsqueeze(-1) + log_trans).amax(-2).add_(e[i].index_select(1, run))
            old = deltas[i].index_select(1, run)
            deltas[i].index_copy_(1, run, v)
            if (i + 1) % CHECK_EVERY == 0 and i + 1 < size:
                moving = ~_parallel(v, old).all(0)  # a chunk has converged when every sequence has
                run, v = run[moving], v[:, moving]
                if run.numel() == 0:
                    break
        todo = run + 1
        todo = todo[todo < c]
    return todo.numel() == 0


def _pointers(deltas: Tensor, delta0: Tensor, log_trans: Tensor, valid: Tensor) -> Tensor:
    """Back-pointers (B, n, K) of times 1..n from the vectors (B, n, K) of those times, all at once: entry
    (t, j) is :math:`\\arg\\max_i \\delta_{t-1}(i) + \\log A_{ij}` (the first maximum, as the loop over time; each
    vector is only known up to a constant, which the argmax ignores), or j after a sequence's end (``valid``)."""
    b, n, k = deltas.shape
    prev = torch.cat([delta0.unsqueeze(1), deltas[:, :-1]], 1)
    out = torch.empty(b, n, k, dtype=torch.long, device=deltas.device)
    for s in range(0, n, POINTER_BLOCK):
        out[:, s:s + POINTER_BLOCK] = (prev[:, s:s + POINTER_BLOCK, :, None] + log_trans).max(-2).indices
    return torch.where(valid.unsqueeze(-1), out, torch.arange(k, device=deltas.device))


def path_log_prob(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, states: Tensor, lengths: Tensor) -> Tensor:
    """:math:`\\log p(x_b, z_b)` (B,) of padded paths ``states`` (B, T) over the valid steps."""
    b, t, _ = log_emit.shape
    valid = torch.arange(t, device=states.device) < lengths[:, None]
    emit = log_emit.gather(-1, states.unsqueeze(-1)).squeeze(-1)
    trans = log_trans[states[:, :-1], states[:, 1:]]
    steps = torch.cat([log_start[states[:, :1]] + emit[:, :1], trans + emit[:, 1:]], 1)
    return torch.where(valid, steps, 0.0).sum(1)


def viterbi_scan(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, lengths: Tensor,
                 chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Viterbi of B padded sequences (see the module docstring): (best log-probability (B,), states (B, T)).

    Args:
        log_start: (K,); log_trans: (K, K), row i from state i; log_emit: (B, T, K), anything finite after a
            sequence's end; lengths: (B,); chunk: L (default `viterbi_chunk`).
    """
    b, t, k = log_emit.shape
    n = t - 1
    delta0 = log_start + log_emit[:, 0]
    if n == 0:
        score, state = delta0.max(-1)
        return score, state[:, None]
    if chunk is None and n < SCAN_FROM:
        return max_product(log_start, log_trans, log_emit, lengths)
    size = chunk or viterbi_chunk(n)
    c = -(-n // size)
    e = torch.cat([log_emit[:, 1:], log_emit.new_zeros(b, c * size - n, k)], 1)
    e = e.reshape(b, c, size, k).permute(2, 0, 1, 3).contiguous()  # step-major (L, B, C, K)
    deltas = torch.empty_like(e)
    _forward(deltas, torch.cat([delta0.unsqueeze(1), delta0.new_zeros(b, c - 1, k)], 1), log_trans, e, range(size))
    if not _fix_up(deltas, log_trans, e):
        return max_product(log_start, log_trans, log_emit, lengths)
    flat = deltas.permute(1, 2, 0, 3).reshape(b, c * size, k)[:, :n]  # times 1..n
    at_end = flat[torch.arange(b, device=e.device), (lengths - 2).clamp_min(0)]
    last = torch.where((lengths > 1)[:, None], at_end, delta0).argmax(-1)
    valid = torch.arange(1, n + 1, device=e.device) < lengths[:, None]
    ptrs = _pointers(flat, delta0, log_trans, valid)
    # the chase: the state at t-1 is ptrs[:, t-1] applied to the state at t, a composition of maps (a prefix)
    before = apply_maps(last, ptrs.flip(1)).flip(1)  # times 0..n-1
    states = torch.cat([before, last[:, None]], 1)
    return path_log_prob(log_start, log_trans, log_emit, states, lengths), states
