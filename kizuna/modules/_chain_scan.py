r"""Recursions of a discrete chain over time in O(L + log T) Python steps (L <= 32): chunked, exact.

`kizuna.modules._forward_backward` runs forward-backward and Viterbi through here; its loops over time
remain the reference they are tested against, and the fallback. In linear space, with :math:`A` the
transition matrix and :math:`E_t = \exp(\log p(x_t|\cdot) - \max_k \log p(x_t|k))` the emissions scaled
to a maximum of 1,

.. math::
    \alpha_0 = \pi \odot E_0,\qquad \alpha_t = (\alpha_{t-1} A) \odot E_t = \alpha_0 M_1 \cdots M_t,
    \qquad M_t = A\,\mathrm{diag}(E_t),

a product of matrices, which is associative. The T-1 transitions are cut into C chunks of L:

1. the product of each chunk, :math:`P_c = M_{cL+1} \cdots M_{cL+L}`, for every chunk at once (L steps,
   each one GEMM with the shared :math:`A`);
2. the vectors entering the chunks, :math:`v_{c+1} = v_c P_c`, by a parallel prefix over the C chunk
   products (log C levels; Blelloch 1990, "Prefix sums and their applications");
3. the recursion inside every chunk from its :math:`v_c`, for every chunk at once (L steps again).

The work stays linear in T (:math:`T K^3` for the chunk products, :math:`T K^2` for the rest). Every
vector and matrix is divided by its maximum as it is formed (Rabiner 1989's scaling); no scale is carried,
since each row is only needed up to its own factor: posteriors are normalised per step and the
log-likelihood is the sum of the per-step predictive normalisers, computed afterwards
(`Scaled.log_likelihood`). Each value is exact to rounding unless a divisor falls below `smallest_normaliser`
(``TINY`` in float64, about 1e-31 in float32; a zero divisor always) —
values that small relative to their neighbours are where linear space can lose what log space keeps —
and then the recursion declines and the caller runs the log-space loop: the answer never silently
depends on the method. The backward recursion is the forward one with :math:`A^\top` over the
time-reversed sequences (`reverse_index`). Viterbi (`max_product`) runs the same three passes in the
(max, +) semiring, in log space, and chases its back-pointers chunk by chunk (`_chase`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
TINY = 1e-200  # smallest normaliser accepted in float64 before falling back to log space (see smallest_normaliser)


def smallest_normaliser(dtype: torch.dtype) -> float:
    """The smallest divisor accepted in ``dtype``: ``TINY``, or ``finfo.tiny / finfo.eps`` where that is larger
    (float32: 9.9e-32). A value lost below the normal range (flushed to zero, or a subnormal) is then at most a
    rounding error relative to the divisor. A Python float compared with a float32 tensor is rounded to float32,
    where ``TINY`` is 0: a threshold of ``TINY`` there accepted a zero normaliser."""
    info = torch.finfo(dtype)
    return max(TINY, info.tiny / info.eps)


@dataclass(frozen=True)
class Scaled:
    """Result of `scaled_forward` for B padded sequences of T steps and K states; every row is known up to a
    positive factor of its own, which is all that normalised quantities (posteriors, the likelihood) need.

    Attributes:
        filtered: (B, T, K) :math:`\\propto \\alpha_t`.
        predicted: (B, T, K) :math:`\\propto \\alpha_{t-1} A` (row 0: the start vector itself).
        emissions: (B, T, K) :math:`E_t`; ``log_emax`` (B, T) the maxima taken out of the log-emissions.
    """

    filtered: Tensor
    predicted: Tensor
    emissions: Tensor
    log_emax: Tensor

    def log_likelihood(self, trans: Tensor, lengths: Tensor, propagated: Tensor | None = None) -> Tensor:
        """:math:`\\log p(x_b) = \\sum_t \\log p(x_t \\mid x_{<t})` per sequence (B,), each term
        :math:`\\log \\sum_j (f_{t-1} A)_j E_t(j) + \\max_k \\log p(x_t|k)` with :math:`f_{t-1}` the filtered
        distribution (the start vector at t = 0): T terms at once, no scale carried through the recursion.
        ``propagated``: ``filtered[:, :-1] @ trans`` when already computed."""
        prev = self.filtered[:, :-1]
        propagated = prev @ trans if propagated is None else propagated
        step = torch.log(torch.cat([(self.predicted[:, :1] * self.emissions[:, :1]).sum(-1),
                                    (propagated * self.emissions[:, 1:]).sum(-1) / prev.sum(-1)], 1)) + self.log_emax
        valid = torch.arange(step.shape[1], device=step.device) < lengths[:, None]
        return torch.where(valid, step, 0.0).sum(1)


def chunk_length(n: int) -> int:
    """L for n transitions: :math:`1.5\\,n^{1/4}`, at most 32 (measured: the Python steps of passes 1 and 3
    against the prefix's levels and its tiny batched products, :math:`C K^3`)."""
    return max(1, min(32, int(1.5 * n**0.25)))


def reverse_index(lengths: Tensor, t: int) -> Tensor:
    """(B, T) index reversing each sequence in a padded block (padding stays in place); an involution."""
    s = torch.arange(t, device=lengths.device)
    return torch.where(s < lengths[:, None], lengths[:, None] - 1 - s, s)


def _divide(x: Tensor, dims: tuple[int, ...], kept: list[Tensor]) -> Tensor:
    """``x`` divided in place by its maximum over ``dims``; the maxima go to ``kept`` (checked at the end)."""
    m = x.amax(dims, keepdim=True)
    kept.append(m.reshape(-1))
    return x.div_(m)


def _prefix(v: Tensor, p: Tensor, kept: list[Tensor]) -> Tensor:
    """:math:`\\propto v P_0 \\cdots P_c` for every c: ``v`` (B, K), ``p`` (B, C, K, K); returns (B, C, K).
    Pairs, recurse, fill in: log C levels of batched products."""
    c = p.shape[1]
    if c == 1:
        return _divide(v.unsqueeze(1).unsqueeze(-2) @ p, (-1,), kept).squeeze(-2)
    if c % 2:
        p = torch.cat([p, torch.eye(p.shape[-1], dtype=p.dtype, device=p.device).expand(p.shape[0], 1, -1, -1)], 1)
    odd = _prefix(v, _divide(p[:, 0::2] @ p[:, 1::2], (-2, -1), kept), kept)  # v P_0 ... P_{2j+1}
    prev = torch.cat([v.unsqueeze(1), odd[:, :-1]], 1)
    even = _divide((prev.unsqueeze(-2) @ p[:, 0::2]).squeeze(-2), (-1,), kept)
    return torch.stack([even, odd], 2).flatten(1, 2)[:, :c]


def _ok(kept: list[Tensor]) -> bool:
    low = torch.cat(kept).amin()
    return bool(torch.isfinite(low) & (low >= smallest_normaliser(low.dtype)))


def scaled_forward(start: Tensor, trans: Tensor, log_emit: Tensor, chunk: int | None = None) -> Scaled | None:
    """The scaled forward recursion (see the module docstring) of B padded sequences, or ``None``
    when a normaliser falls below `smallest_normaliser` or an emission row is not finite (use log space then).

    Args:
        start: (K,) linear start weights :math:`\\pi` (or ones, for the backward recursion).
        trans: (K, K) linear transition weights :math:`A_{ij}` (row i: from state i).
        log_emit: (B, T, K) log-emissions; steps after a sequence's end may hold anything finite.
        chunk: L (default `chunk_length`).
    """
    b, t, k = log_emit.shape
    emax = log_emit.amax(-1)
    if not bool(torch.isfinite(emax).all()):
        return None
    emit = torch.exp(log_emit - emax.unsqueeze(-1))
    kept: list[Tensor] = []
    a0 = _divide(start * emit[:, 0], (-1,), kept)
    first = start.expand(b, 1, k)
    n = t - 1
    if n == 0:
        return Scaled(a0.unsqueeze(1), first, emit, emax) if _ok(kept) else None
    size = chunk or chunk_length(n)
    c = -(-n // size)
    e = torch.cat([emit[:, 1:], emit.new_ones(b, c * size - n, k)], 1).reshape(b, c, size, k)
    rows, cols = e.unbind(2), e.unsqueeze(3).unbind(2)  # per step: (B, C, K) and (B, C, 1, K) views
    # 1. the product of every chunk
    prod = _divide(trans * cols[0], (-2, -1), kept)
    for i in range(1, size):
        prod = _divide(torch.mm(prod.view(-1, k), trans).view(b, c, k, k).mul_(cols[i]), (-2, -1), kept)
    # 2. the vector entering every chunk
    v = a0.unsqueeze(1) if c == 1 else torch.cat([a0.unsqueeze(1), _prefix(a0, prod[:, :-1], kept)], 1)
    # 3. the recursion inside every chunk
    filtered, predicted = [], []
    for i in range(size):
        q = torch.mm(v.view(-1, k), trans).view(b, c, k)
        v = _divide(q * rows[i], (-1,), kept)
        filtered.append(v)
        predicted.append(q)
    if not _ok(kept):
        return None
    filtered_t = torch.cat([a0.unsqueeze(1), torch.stack(filtered, 2).view(b, c * size, k)[:, :n]], 1)
    predicted_t = torch.cat([first, torch.stack(predicted, 2).view(b, c * size, k)[:, :n]], 1)
    return Scaled(filtered_t, predicted_t, emit, emax)


# ------------------------------------------------------------------------------ max-product (Viterbi)
def _tropical_matmul(x: Tensor, y: Tensor) -> Tensor:
    """:math:`(x \\otimes y)_{ij} = \\max_k x_{ik} + y_{kj}` over the last two dims (broadcast): small ones
    through one (..., I, K, J) temporary, large ones one k at a time (elementwise maxima, no temporary)."""
    if x.numel() * y.shape[-1] <= 1 << 16:
        return (x.unsqueeze(-2) + y.transpose(-1, -2).unsqueeze(-3)).amax(-1)  # reduce the contiguous dim
    out = x[..., :, 0, None] + y[..., 0, None, :]
    for k in range(1, x.shape[-1]):
        torch.maximum(out, x[..., :, k, None] + y[..., k, None, :], out=out)
    return out


def _tropical_prefix(v: Tensor, p: Tensor) -> Tensor:
    """:math:`v \\otimes P_0 \\otimes \\cdots \\otimes P_c` for every c in the (max, +) semiring: ``v`` (B, K),
    ``p`` (B, C, K, K); returns (B, C, K). Pairs, recurse, fill in (as `_prefix`)."""
    c = p.shape[1]
    if c == 1:
        return (v[:, None, :, None] + p).amax(-2)
    if c % 2:
        eye = torch.full(p.shape[-2:], -math.inf, dtype=p.dtype, device=p.device).fill_diagonal_(0.0)
        p = torch.cat([p, eye.expand(p.shape[0], 1, -1, -1)], 1)
    pairs = _tropical_matmul(p[:, 0::2], p[:, 1::2])
    odd = _tropical_prefix(v, pairs)
    prev = torch.cat([v.unsqueeze(1), odd[:, :-1]], 1)
    even = (prev[..., None] + p[:, 0::2]).amax(-2)
    return torch.stack([even, odd], 2).flatten(1, 2)[:, :c]


def apply_maps(x: Tensor, maps: Tensor) -> Tensor:
    """States after applying ``maps[:, 0]``, then ``maps[:, 1]``, ...: ``x`` (B,) and maps (B, R, K) (state j
    goes to ``maps[b, r, j]``); returns (B, R). Maps compose by gathers, so this is a prefix like `_prefix`."""
    r = maps.shape[1]
    if r == 1:
        return maps[:, 0].gather(-1, x[:, None])
    if r % 2:
        ident = torch.arange(maps.shape[-1], device=maps.device).expand(maps.shape[0], 1, -1)
        maps = torch.cat([maps, ident], 1)
    odd = apply_maps(x, maps[:, 1::2].gather(-1, maps[:, 0::2]))  # after maps 2j and 2j+1
    prev = torch.cat([x[:, None], odd[:, :-1]], 1)
    even = maps[:, 0::2].gather(-1, prev[..., None]).squeeze(-1)
    return torch.stack([even, odd], 2).flatten(1, 2)[:, :r]


def _chase(pointers: Tensor, last: Tensor, size: int) -> Tensor:
    """States (B, T) from back-pointers ``pointers`` (B, T-1, K) (``pointers[:, u-1, j]``: the state at
    u-1 given state j at u) and the states ``last`` (B,) at T-1; the chase is chunked like the recursion."""
    b, n, k = pointers.shape
    c = -(-n // size)
    ident = torch.arange(k, device=pointers.device)
    ptr = torch.cat([pointers, ident.expand(b, c * size - n, k)], 1).reshape(b, c, size, k)
    cur = ident.expand(b, c, k)
    path = []
    for i in range(size - 1, -1, -1):  # every chunk, every end state: back to the chunk's entry
        path.append(cur)
        cur = ptr[:, :, i].gather(-1, cur)
    path = torch.stack(path[::-1], -1)  # (B, C, K, L): states at cL+1 .. cL+L given the end state
    # chunk ends, last to first: chunk j's entry map sends the end of chunk j to the end of chunk j-1
    ends = last[:, None] if c == 1 else torch.cat([apply_maps(last, cur[:, 1:].flip(1)).flip(1), last[:, None]], 1)
    first = cur[:, 0].gather(-1, ends[:, :1])
    inside = path.gather(2, ends[:, :, None, None].expand(b, c, 1, size)).squeeze(2).reshape(b, c * size)[:, :n]
    return torch.cat([first, inside], 1)


def max_product(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Viterbi by the chunked recursion in the (max, +) semiring: (best log-probability (B,), states (B, T)).

    :math:`\\delta_t(j) = \\max_i \\delta_{t-1}(i) + \\log A_{ij} + \\log p(x_t|j)`, its back-pointers, then the
    chase from :math:`\\arg\\max_j \\delta_{T_b-1}(j)`; steps after a sequence's end point to themselves
    (what the recursion computes there is never read).
    Sums are associated differently from a loop over time (rounding only; ties may break differently).
    """
    b, t, k = log_emit.shape
    delta0 = log_start + log_emit[:, 0]
    n = t - 1
    if n == 0:
        score, state = delta0.max(-1)
        return score, state[:, None]
    size = chunk_length(n)
    c = -(-n // size)
    e = torch.cat([log_emit[:, 1:], log_emit.new_zeros(b, c * size - n, k)], 1).reshape(b, c, size, k)
    prod = log_trans + e[:, :, 0, None, :]
    for i in range(1, size):
        prod = _tropical_matmul(prod, log_trans).add_(e[:, :, i, None, :])
    v = delta0.unsqueeze(1)
    if c > 1:
        v = torch.cat([v, _tropical_prefix(delta0, prod[:, :-1])], 1)
    valid = (torch.arange(1, c * size + 1, device=e.device) < lengths[:, None]).reshape(b, c, size)
    ident = torch.arange(k, device=e.device)
    pointers, deltas = [], []
    for i in range(size):
        best, arg = (v[..., None] + log_trans).max(-2)
        v = best + e[:, :, i]
        pointers.append(torch.where(valid[:, :, i, None], arg, ident))
        deltas.append(v)
    deltas = torch.cat([delta0.unsqueeze(1), torch.stack(deltas, 2).reshape(b, c * size, k)], 1)
    score, state = deltas[torch.arange(b, device=e.device), lengths - 1].max(-1)
    return score, _chase(torch.stack(pointers, 2).reshape(b, c * size, k)[:, :n], state, size)
