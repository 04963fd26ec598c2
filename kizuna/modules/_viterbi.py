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
3. the **path** is chased back in every chunk at once from a guessed end state (the chunk's own best; the
   known last state for a sequence's last chunk), one back-pointer :math:`\arg\max_i \delta_{t-1}(i) + \log
   A_{i s_t}` per chunk and step. Paths from different states coalesce going back, as vectors converge going
   forward: a chunk whose guess differs from the entry its successor reached is chased again from it (those
   few chunks with all their back-pointers formed at once, one gather a step), in rounds from the known end
   backwards; when rounds do not settle, every back-pointer is formed and composed as maps of states (a
   parallel prefix, log T vectorised levels). The score is the path's log-probability.

Tables are step-major and **state-major**, (L, K, C): the maxima and argmaxima over the previous state run over
a leading dim, which torch vectorises along the chunks (over a trailing dim of K = 8 they are several times
slower), and torch's argmax is replaced by a comparison with the maximum and a maximum of weighted indices
(`_first_argmax`: the same first maximum, an order of magnitude faster over a leading dim).

The work is that of the loop over time, :math:`T K^2`, plus the fix-up (a few steps per chunk on chains that
mix), against :math:`T K^3` for a prefix over chunk products. Vectors are compared after subtracting their
maxima, to ``ATOL``: beyond that a difference between two vectors is below what their rounding resolves,
and the paths can differ only between candidates tied to within it. Every recursion runs in float64 (`widened`;
`kizuna.modules._forward_backward.viterbi` lifts float32 tables).
"""

from __future__ import annotations

import math

import torch

from kizuna.modules._chain_scan import apply_maps, max_product

Tensor = torch.Tensor
ATOL = 1e-9  # vectors (less their maxima) this close are parallel
MAX_ROUNDS = 8  # fix-up rounds (of the vectors, then of the path) before a slower exact method answers
CHECK_EVERY = 4  # steps between convergence checks in the fix-ups
WIDE = 8  # the fix-up gathers the moving chunks once fewer than 1 in WIDE move
POINTER_BLOCK = 4096  # steps whose (steps, K, K) candidates are formed at once (cache-sized)
SCAN_FROM = 30_000  # fewer transitions: the chunked prefix directly (measured faster there, K = 8)


def viterbi_chunk(n: int) -> int:
    """L for n transitions: :math:`\\sqrt{n}/5`, at least 8 (measured at K = 8, N = 10^5: L = 60, 100, 160
    took 250, 340, 390 ms on a loaded machine; shorter chunks need more fix-up rounds where the chain
    converges slowly)."""
    return max(8, int(math.sqrt(n) / 5))


def _step(v: Tensor, log_trans: Tensor, e: Tensor, out: Tensor | None = None) -> Tensor:
    """One max-product step of state-major vectors ``v`` (K, R): :math:`\\max_i v_i + \\log A_{ij} + e_j`, (K, R).
    The maximum runs over the leading dim of a (K, K, R) block, which torch vectorises along R (the chunks);
    over a trailing dim of 8 it is several times slower."""
    out = torch.amax(v.unsqueeze(1) + log_trans.unsqueeze(-1), 0, out=out)
    return out.add_(e)


def _first_argmax(x: Tensor, best: Tensor, dim: int = 0) -> Tensor:
    """The first index i along ``dim`` with ``x[..., i, ...] == best`` (``best`` = the maximum over ``dim``, dim
    removed): torch's argmax, from a comparison and a maximum over ``dim`` (vectorised along the trailing dims;
    torch's own argmax over a leading dim is an order of magnitude slower)."""
    k = x.shape[dim]
    weight = torch.arange(k, 0, -1, dtype=torch.uint8 if k < 256 else torch.long, device=x.device)
    weight = weight.view(k, *[1] * (x.dim() - dim - 1))
    return k - (x == best.unsqueeze(dim)).mul(weight).amax(dim).long()


def _back(prev: Tensor, at: Tensor, s: Tensor, valid: Tensor | None) -> Tensor:
    """States one step back of states ``s`` (R,): :math:`\\arg\\max_i \\delta_{t-1}(i) + \\log A_{i s}` (the
    first maximum, as the loop over time) from the vectors ``prev`` (K, R) of time t-1 and ``at``, the transposed
    :math:`\\log A` (a row gather is cheaper than a column gather); ``s`` itself where not ``valid`` (after a
    sequence's end; None: every step is valid)."""
    x = prev + at.index_select(0, s).T
    back = _first_argmax(x, x.amax(0))
    return back if valid is None else torch.where(valid, back, s)


def _parallel(a: Tensor, b: Tensor) -> Tensor:
    """Whether vectors (K, R) are a constant apart (to ``ATOL``; equal ``-inf`` entries agree), over (R,)."""
    a, b = a - a.amax(0), b - b.amax(0)
    same = ((a - b).abs() <= ATOL) | ((a == b) & torch.isinf(a))
    return same.all(0)


def _fix_up(deltas: Tensor, log_trans: Tensor, e: Tensor, first: Tensor) -> bool:
    """Step 2 of the module docstring on the step-major (L, K, F) table of F chunks, in place: every chunk but
    the ``first`` of each sequence re-runs from its predecessor's exit as the round begins; the chunks after
    one whose exit changed re-run in the next round. False when ``MAX_ROUNDS`` left chunks unresolved.

    While many chunks move, the round runs on all of them and keeps the moving ones' vectors (gathering
    columns of a (K, F) table costs more than computing them all); once fewer than one in ``WIDE`` move, their
    remaining steps run on one gathered block, written back at once (a chunk that has converged goes on
    computing vectors parallel to its old ones, which changes nothing)."""
    size, f = deltas.shape[0], deltas.shape[2]
    moving = ~first
    for _ in range(MAX_ROUNDS):
        count = int(moving.sum())
        if count == 0:
            return True
        v, i = torch.cat([deltas[-1, :, -1:], deltas[-1, :, :-1]], 1), 0  # from the predecessors' exits
        while i < size and count * WIDE > f:
            v = _step(v, log_trans, e[i])
            same = _parallel(v, deltas[i]) if (i + 1) % CHECK_EVERY == 0 and i + 1 < size else None
            deltas[i] = torch.where(moving, v, deltas[i])
            if same is not None:
                moving = moving & ~same
                count = int(moving.sum())
            i += 1
        if i < size and count:
            run = moving.nonzero().squeeze(1)
            alive = _narrow(deltas, log_trans, e, run, v.index_select(1, run), i)
            moving = torch.zeros_like(moving).index_fill_(0, run[alive], True)
        moving = torch.cat([moving.new_zeros(1), moving[:-1]]) & ~first  # successors of changed exits
    return not bool(moving.any())


def _narrow(deltas: Tensor, log_trans: Tensor, e: Tensor, run: Tensor, v: Tensor, start: int) -> Tensor:
    """Steps ``start``.. of the chunks ``run`` from their vectors ``v`` (K, R) at step ``start`` - 1, on one
    gathered block; returns which of them never became parallel to their old vectors (their exits changed)."""
    size = deltas.shape[0]
    old, ee = deltas[start:].index_select(2, run), e[start:].index_select(2, run)
    new = torch.empty_like(old)
    alive = torch.ones(run.shape[0], dtype=torch.bool, device=run.device)
    done = old.shape[0]
    for j in range(old.shape[0]):
        v = _step(v, log_trans, ee[j], out=new[j])
        if (start + j + 1) % CHECK_EVERY == 0 and start + j + 1 < size:
            alive &= ~_parallel(v, old[j])
            if not bool(alive.any()):
                done = j + 1
                break
    deltas[start:start + done].index_copy_(2, run, new[:done])
    return alive


def _chase(deltas: Tensor, prev0: Tensor, log_trans: Tensor, ends: Tensor, valid: Tensor,
           first: Tensor) -> tuple[Tensor, Tensor] | None:
    """Step 3 of the module docstring: every chunk chased back at once from a guessed end state, then fixed up
    by path coalescence.

    A chunk whose end differs from the entry its successor reached is chased again from that entry (the few
    such chunks with all their back-pointers formed at once, so that each step is one gather); if that changes
    its own entry, its predecessor goes in the next round. Each round makes at least one more chunk exact, from
    the known end backwards.

    Args:
        deltas: (L, K, F), the vectors of every step of the F chunks (sequence-major), each exact up to a
            constant; prev0: (K, F), the vectors of the step before each chunk's first; log_trans: (K, K);
        ends: (F,), the state at each chunk's last step: exact for the chunks at or after their sequence's last
            step, a guess elsewhere; valid: (L, F), steps before their sequence's end (elsewhere a state points
            to itself); first: (F,), the chunks that begin a sequence.

    Returns:
        (paths (L, F), the state at every step; entries (F,), the state before each chunk's first step), or
        None when ``MAX_ROUNDS`` rounds left chunks unresolved.
    """
    size, at = deltas.shape[0], log_trans.T.contiguous()
    full = valid.all(1).tolist()  # steps where no sequence has ended: no masking
    paths = torch.empty(valid.shape, dtype=torch.long, device=deltas.device)
    s = ends
    for i in range(size - 1, -1, -1):
        paths[i] = s
        s = _back(deltas[i - 1] if i else prev0, at, s, None if full[i] else valid[i])
    entries = s
    has_next = ~torch.cat([first[1:], first.new_ones(1)])  # chunk f + 1 continues chunk f's sequence
    ident = torch.arange(deltas.shape[1], device=deltas.device)[:, None]
    for _ in range(MAX_ROUNDS):
        todo = (has_next & (paths[-1] != entries.roll(-1))).nonzero().squeeze(1)
        if todo.numel() == 0:
            return paths, entries
        # few chunks: every back-pointer of theirs at once (L, K, R), then a chase of one gather a step
        prevs = torch.cat([prev0.index_select(1, todo)[None], deltas[:-1].index_select(2, todo)])
        x = prevs.unsqueeze(2) + log_trans[:, :, None]  # (L, K_i, K_j, R)
        ptr = torch.where(valid.index_select(1, todo)[:, None], _first_argmax(x, x.amax(1), 1), ident)
        s, sub = entries.index_select(0, todo + 1), torch.empty(size, todo.numel(), dtype=torch.long,
                                                                   device=deltas.device)
        for i in range(size - 1, -1, -1):
            sub[i] = s
            s = ptr[i].gather(0, s[None])[0]
        paths.index_copy_(1, todo, sub)
        entries.index_copy_(0, todo, s)
    return None


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


def widened(x: Tensor) -> Tensor:
    """``x`` in float64 (itself when it already is): the dtype every Viterbi recursion runs in. Its running values
    grow like the path's log-probability, and in float32 candidates closer than their rounding (0.25 nats at 3e6)
    were compared by rounding: after 10^6 steps the path was 42.6 nats less probable than the best (the rank
    convergence's ``ATOL`` is also a float64 tolerance). The tables are lifted as they are, so a float32 decode is
    the exact Viterbi path of the float32 log-probabilities."""
    return x.to(torch.float64)


def path_log_prob(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, states: Tensor, lengths: Tensor) -> Tensor:
    """:math:`\\log p(x_b, z_b)` (B,) of padded paths ``states`` (B, T) over the valid steps, summed in float64 and
    returned in ``log_emit``'s dtype (a float32 sum over 4e4 steps of -300 nats was 1.5 nats off)."""
    b, t, _ = log_emit.shape
    valid = torch.arange(t, device=states.device) < lengths[:, None]
    emit = widened(log_emit.gather(-1, states.unsqueeze(-1)).squeeze(-1))
    trans = widened(log_trans[states[:, :-1], states[:, 1:]])
    steps = torch.cat([widened(log_start[states[:, :1]]) + emit[:, :1], trans + emit[:, 1:]], 1)
    return torch.where(valid, steps, 0.0).sum(1).to(log_emit.dtype)


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
    if chunk is None and n < SCAN_FROM:  # the path's score summed by path_log_prob, as on every other branch and
        # backend (max_product's running maximum differed from it in the last bits: -26916.5566 against -.5547)
        _, states = max_product(log_start, log_trans, log_emit, lengths)
        return path_log_prob(log_start, log_trans, log_emit, states, lengths), states
    size = chunk or viterbi_chunk(n)
    c = -(-n // size)
    f = b * c
    e = torch.cat([log_emit[:, 1:], log_emit.new_zeros(b, c * size - n, k)], 1)
    e = e.view(b, c, size, k).permute(2, 3, 0, 1).contiguous().view(size, k, f)  # step-major, state-major
    first = torch.arange(f, device=e.device) % c == 0
    v = e.new_zeros(k, b, c)
    v[:, :, 0] = delta0.T
    deltas = torch.empty_like(e)
    for i in range(size):  # step 1: every chunk at once
        v = _step(v.view(k, f), log_trans, e[i], out=deltas[i])
    if not _fix_up(deltas, log_trans, e, first):
        _, states = max_product(log_start, log_trans, log_emit, lengths)
        return path_log_prob(log_start, log_trans, log_emit, states, lengths), states
    states = _states(deltas, delta0, log_trans, lengths, first, n)
    return path_log_prob(log_start, log_trans, log_emit, states, lengths), states


def _states(deltas: Tensor, delta0: Tensor, log_trans: Tensor, lengths: Tensor, first: Tensor, n: int) -> Tensor:
    """Step 3: the states (B, n + 1) from the fixed-up table (L, K, B C) and :math:`\\delta_0` (B, K)."""
    size, k, f = deltas.shape
    b = delta0.shape[0]
    c, dev = f // b, deltas.device
    prev0 = torch.cat([delta0.T.unsqueeze(-1), deltas[-1].view(k, b, c)[:, :, :-1]], 2).view(k, f)
    times = torch.arange(1, c * size + 1, device=dev).view(c, size).T  # (L, C): the time of every step
    valid = (times[:, None, :] < lengths[None, :, None]).reshape(size, f)
    t_end = (lengths - 1).clamp_min(1)  # the last step: time lengths - 1, step (t - 1) % L of chunk (t - 1) // L
    at_end = deltas[(t_end - 1) % size, :, torch.arange(b, device=dev) * c + (t_end - 1) // size]  # (B, K)
    last = torch.where((lengths > 1)[:, None], at_end, delta0).argmax(-1)
    guess = deltas[-1].argmax(0).view(b, c)  # each chunk's own best end
    known = torch.arange(c, device=dev) >= ((lengths - 2).clamp_min(0) // size)[:, None]
    chased = _chase(deltas, prev0, log_trans, torch.where(known, last[:, None], guess).view(f), valid, first)
    if chased is not None:
        paths, entries = chased
        inside = paths.view(size, b, c).permute(1, 2, 0).reshape(b, c * size)
        return torch.cat([entries.view(b, c)[:, :1], inside], 1)[:, :n + 1]
    # paths that coalesce too slowly: every back-pointer at once, chased by a prefix over maps
    flat = deltas.view(size, k, b, c).permute(2, 3, 0, 1).reshape(b, c * size, k)[:, :n]
    ptrs = _pointers(flat, delta0, log_trans, valid.view(size, b, c).permute(1, 2, 0).reshape(b, -1)[:, :n])
    before = apply_maps(last, ptrs.flip(1)).flip(1)  # times 0..n-1
    return torch.cat([before, last[:, None]], 1)
