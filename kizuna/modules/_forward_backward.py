r"""Log-space forward-backward, Viterbi and forward-filtering backward-sampling for discrete chains.

Shared by `kizuna.modules.HMM` and `kizuna.modules.MM`. Every function takes the chain in log
space: ``log_start`` :math:`\log\pi_k` (K), ``log_trans`` :math:`\log A_{ij} = \log p(z_t=j|z_{t-1}=i)`
(K×K) and ``log_emit`` :math:`\log p(x_t|z_t=k)` (N×K, the rows of all sequences one after the
other; ``lengths`` splits them, as in hmmlearn). Sequences are padded to a (B, T, K) block, so
each recursion step is one vectorised operation over all sequences and states; sequences of very different
lengths go in several blocks of similar lengths (`length_groups`: a block holds at most ``PAD_WASTE`` times its
sequences' rows, where one block of 20,000 steps and 500 one-step sequences took 5.5 GB).
`forward_backward` and `forward_log_likelihood` also cap a block's working memory (`blocks`, ``BLOCK_FLOATS``):
runs of fewer sequences, and one long sequence in slices of time (`_smooth_sliced`).

`forward_backward` and `forward_log_likelihood` run the recursions scaled and chunked
(`kizuna.modules._chain_scan`: O(sqrt T) Python steps, linear work in T); when a normaliser there is
too small for linear-space arithmetic they use the log-space loops over time below, which are exact
and are also the reference the fast path is tested against. As fallbacks they shift the messages to a maximum of 0
every few steps (`SHIFT_EVERY`), so that only values of a few steps' size are rounded, in float32 too.

.. math::
    \alpha_t(j) = \log p(x_t|j) + \operatorname{logsumexp}_i\big(\alpha_{t-1}(i) + \log A_{ij}\big),\qquad
    \beta_t(i) = \operatorname{logsumexp}_j\big(\log A_{ij} + \log p(x_{t+1}|j) + \beta_{t+1}(j)\big)

(Rabiner 1989, "A tutorial on hidden Markov models"; FFBS: Frühwirth-Schnatter 1994, Carter & Kohn 1994.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kizuna._data import computing_dtype  # noqa: F401 - the modules read it here
from kizuna.modules._chain_scan import chunk_length, reverse_index, scaled_forward, smallest_normaliser
from kizuna.modules._viterbi import path_log_prob, viterbi_scan, widened

Tensor = torch.Tensor
PAD_WASTE = 2  # a padded block holds at most this many times the rows of its sequences (see `length_groups`)


def check_lengths(n: int, lengths: Sequence[int] | Tensor | None, device: torch.device) -> Tensor:
    """``lengths`` as a long tensor (``[n]`` when None); raises when they are not whole numbers (``2.5`` was
    truncated to 2) or do not sum to ``n``."""
    if lengths is None:
        return torch.tensor([n], device=device)
    if isinstance(lengths, (str, bytes)):
        raise ValueError(f"lengths must be whole numbers (the length of each sequence), got {lengths!r}")
    try:
        raw = torch.as_tensor(lengths, device=device)
    except (TypeError, ValueError, RuntimeError) as err:  # (torch's "new(): invalid data type 'str'")
        raise ValueError(f"lengths must be whole numbers (the length of each sequence), got {lengths!r}") from err
    if raw.dim() > 1:  # ([[5, 5]] was flattened and taken)
        raise ValueError(f"lengths must be a flat list of the sequences' lengths, got shape {tuple(raw.shape)}")
    raw = raw.reshape(-1)
    if raw.dtype == torch.bool or raw.is_complex() or raw.is_floating_point() and not bool(
            (torch.isfinite(raw) & (raw == raw.round())).all()):
        raise ValueError(f"lengths must be whole numbers (the length of each sequence), got {raw.tolist()}")
    out = raw.long()
    if out.numel() == 0 or bool((out <= 0).any()) or int(out.sum()) != n:
        raise ValueError(f"lengths must be positive and sum to the number of rows {n}, got {out.tolist()}")
    return out


def pad(x: Tensor, lengths: Tensor) -> Tensor:
    """Rows (N, ...) split by ``lengths`` into a zero-padded (B, T, ...) block."""
    if lengths.shape[0] == 1:
        return x.unsqueeze(0)
    return torch.nn.utils.rnn.pad_sequence(list(torch.split(x, lengths.tolist())), batch_first=True)


def unpad(x: Tensor, lengths: Tensor) -> Tensor:
    """Inverse of `pad`: the valid rows of a (B, T, ...) block, concatenated to (N, ...)."""
    if x.shape[0] == 1:
        return x[0, :int(lengths[0])] if x.shape[1] != lengths[0] else x[0]
    mask = torch.arange(x.shape[1], device=x.device) < lengths[:, None]
    return x[mask]


def length_groups(lengths: Tensor) -> list[tuple[Tensor, Tensor]] | None:
    """The sequences in groups of similar length, each padded to its own block: None when one block of all of them
    holds at most ``PAD_WASTE`` times their rows (then one block is computed, as it always was); otherwise
    (sequences (G,), their rows (the rows of ``lengths``' concatenation, sequence after sequence)) per group. The
    longest sequences go first; a group takes the next longest while its block, padded to its first (longest)
    sequence, holds at most ``PAD_WASTE`` times its rows, so every block does, and the blocks hold at most
    ``PAD_WASTE`` times N cells together (one block held B T_max: 10 MB per one-step sequence beside 20,000 steps,
    K = 4). A group keeps its sequences in their order; the arithmetic of a sequence can differ from the one
    block's by rounding only (its block's length sets the chunks of `kizuna.modules._chain_scan`)."""
    b, t, n = lengths.shape[0], int(lengths.max()), int(lengths.sum())
    if b * t <= PAD_WASTE * n:
        return None
    order = torch.argsort(lengths, descending=True, stable=True)
    sizes, cuts, first, rows = lengths[order].tolist(), [], 0, 0
    for i, size in enumerate(sizes):
        if (i - first + 1) * sizes[first] > PAD_WASTE * (rows + size):
            cuts.append(i)
            first, rows = i, 0
        rows += size
    starts = torch.cumsum(lengths, 0) - lengths
    groups = []
    for seqs in torch.tensor_split(order, cuts):
        seqs = seqs.sort().values
        sub = lengths[seqs]
        shift = torch.repeat_interleave(starts[seqs] - (torch.cumsum(sub, 0) - sub), sub)
        groups.append((seqs, torch.arange(int(sub.sum()), device=lengths.device) + shift))
    return groups


BLOCK_FLOATS = 1 << 22  # floats of one block's scaled recursions, as `block_steps` counts them (see `blocks`)


def _step_cost(k: int, t: int) -> float:
    """Floats per padded step of a block of sequences of ``t`` steps, as `blocks` counts them: K for each (B, T, K)
    table and :math:`K^2/L` for the chunk products (B, T/L, K, K) of `kizuna.modules._chain_scan.scaled_forward`
    (L = `chunk_length` of ``t``)."""
    return k + k * k / chunk_length(max(1, t - 1))


# `forward_backward` runs one sequence in slices of time only above this many `block_steps`: just above one, its
# sliced smoothing recomputed most of the forward pass for little memory saved (1.8x the time at K = 50, 22,206 steps;
# diff review 2 of stop 48). `forward_log_likelihood` slices above one block: its slices recompute nothing, and a
# sequence of 1.5 blocks held 122 MiB unsliced, 88 in slices (K = 50, default budget; review B of stop 49)
SLICE_ABOVE = 2


def block_steps(k: int) -> int:
    """The most steps of one sequence a block holds: the largest S found with :math:`S (K + K^2/L_S) \\le`
    ``BLOCK_FLOATS`` (at K = 50: 22,205 steps; K = 4: 932,067). A sequence longer than `SLICE_ABOVE` of them is
    smoothed in slices of time of this many steps (`_smooth_sliced`), and one longer than one of them is scored in such
    slices (`_sliced_log_likelihood`)."""
    steps = int(BLOCK_FLOATS // _step_cost(k, 1 << 30))
    while steps > 1 and steps * _step_cost(k, steps) > BLOCK_FLOATS:  # a shorter slice has shorter chunks
        steps = int(BLOCK_FLOATS // _step_cost(k, steps))
    return max(1, steps)


def blocks(lengths: Tensor, k: int) -> list[tuple[Tensor, Tensor | slice]] | None:
    """`length_groups`, with every block of B sequences of at most T steps within the memory budget,
    :math:`B\\,T\\,(K + K^2/L) \\le` ``BLOCK_FLOATS`` (`_step_cost`; measured peak of the tensors alive in
    `forward_backward`: about 14 times that many floats, 470 MB in float64, see docs/modules_classical.md): a group
    over it is cut into runs of consecutive sequences that fit, and a sequence that does not fit alone is a block
    of its own, which runs in slices of `block_steps` steps when it is longer than `SLICE_ABOVE` of them in
    `forward_backward` (up to that, one block: up to twice the budget), longer than one of them in
    `forward_log_likelihood` (whose slices recompute nothing). The
    expected counts and log-likelihoods are summed over the blocks; consecutive rows are given as a slice (a view of
    the rows, not a copy). None: one block of all the sequences (as
    `length_groups`; then nothing changes). Without the budget one block of 10^5 steps at K = 50 held 1.7 GB, so
    memory grew with the data (hmmlearn's with the longest sequence)."""
    groups = length_groups(lengths)
    if groups is None:
        t = int(lengths.max())
        if lengths.shape[0] * t * _step_cost(k, t) <= BLOCK_FLOATS:
            return None
        groups = [(torch.arange(lengths.shape[0], device=lengths.device),
                   torch.arange(int(lengths.sum()), device=lengths.device))]
    out = []
    for seqs, rows in groups:
        sizes = lengths[seqs].tolist()
        ends = [0, *torch.cumsum(lengths[seqs], 0).tolist()]
        first, longest = 0, 0
        for i, size in enumerate(sizes + [0]):
            top = max(longest, size)
            if i == len(sizes) or i > first and (i - first + 1) * top * _step_cost(k, top) > BLOCK_FLOATS:
                run = rows[ends[first]:ends[i]]
                if int(run[-1] - run[0]) + 1 == run.shape[0]:  # consecutive rows: a view, not a copy of them
                    run = slice(int(run[0]), int(run[-1]) + 1)
                out.append((seqs[first:i], run))
                first, top = i, size
            longest = top
    return out


def _position(lengths: Tensor, n: int) -> str:
    """Row ``n`` of the concatenated sequences as ``"sequence b, step t (row n)"``."""
    ends = torch.cumsum(lengths, 0).tolist()
    b = next(i for i, end in enumerate(ends) if n < end)
    return f"sequence {b}, step {n - ends[b] + int(lengths[b])} (row {n})"


def check_emissions(log_emit: Tensor, lengths: Tensor, what: str, impossible: bool = False) -> None:
    """Raise a ValueError naming the sequence and step unless every row of ``log_emit`` (N, K) has a finite maximum:
    a NaN or +inf log-emission is no probability, and a row of -inf makes every state impossible at that step
    (allowed with ``impossible``: a log-likelihood of -inf is an answer, a path is not). One pass over the rows;
    the recursions gave NaN, or a score of -inf and an arbitrary path, silently."""
    emax = log_emit.amax(-1)  # NaN where a row holds one, +inf where it holds +inf and no NaN
    if bool(torch.isfinite(emax).all()):
        return
    wrong = torch.isnan(emax) | torch.isposinf(emax)
    if bool(wrong.any()):
        n = int(wrong.nonzero()[0])
        row = log_emit[n]
        k = int((torch.isnan(row) | torch.isposinf(row)).nonzero()[0])
        raise ValueError(f"{what}: the log-emission of {_position(lengths, n)}, state {k} is {row[k].item()}, not a "
                         "log-probability")
    if impossible:
        return
    n = int((~torch.isfinite(emax)).nonzero()[0])
    raise ValueError(f"{what}: {_position(lengths, n)} is impossible in every state (log p(x_t|k) = -inf for every "
                     "k): the sequence has zero probability under the chain")


def check_possible(score: Tensor, log_start: Tensor, log_trans: Tensor, log_emit: Tensor, lengths: Tensor,
                   what: str) -> None:
    """Raise a ValueError naming the sequence and the first step no possible path reaches unless every per-sequence
    ``score`` (B,) (a log-likelihood or a best path's log-probability) is finite; rows already passed
    `check_emissions`. The step is found by a loop over that one sequence, on the error path only."""
    if bool(torch.isfinite(score).all()):
        return
    b = int((~torch.isfinite(score)).nonzero()[0])
    first = int(lengths[:b].sum())
    e, allowed = log_emit[first:first + int(lengths[b])], (log_trans > -torch.inf).to(log_emit.dtype)
    alive, t = (log_start + e[0]) > -torch.inf, 0
    while bool(alive.any()) and t + 1 < e.shape[0]:
        t += 1
        alive = (alive.to(allowed.dtype) @ allowed > 0) & (e[t] > -torch.inf)
    if bool(alive.any()):  # not from the chain's zeros (underflow of a sum of finite terms)
        raise ValueError(f"{what}: sequence {b} has log-probability {score[b].item()} under the chain")
    raise ValueError(f"{what}: no path of nonzero probability reaches {_position(lengths, first + t)}: the sequence "
                     "has zero probability under the chain")


@dataclass(frozen=True)
class Smoothed:
    """Result of `forward_backward`.

    Attributes:
        log_gamma: (N, K) :math:`\\log p(z_t=k|x)`.
        log_cavity: (N, K) :math:`\\log p(z_t=k|x_{\\setminus t})`, the chain's message to step t
            (the prior for step t given every other observation), normalised.
        trans_counts: (K, K) expected transitions :math:`\\sum_t p(z_t=i, z_{t+1}=j|x)`.
        start_counts: (K,) :math:`\\sum_b p(z_{b,0}=k|x)` over sequences.
        log_likelihood: (B,) :math:`\\log p(x_b)` per sequence.
    """

    log_gamma: Tensor
    log_cavity: Tensor
    trans_counts: Tensor
    start_counts: Tensor
    log_likelihood: Tensor


SHIFT_EVERY = 4  # steps between the shifts of the log-space messages (`_forward`, `_backward`). A shift is 3 of the
# ~12 tensor operations of a step (at every step the fallback's score took 14% longer); the messages stay within
# 4 steps' log-probability of 0 (float32 posteriors within 1e-6 of float64's after 10^5 steps)


def _shift(e: Tensor) -> tuple[Tensor, Tensor]:
    """(each step's log-emissions less their maximum (B, T, K), the maxima (B, T)): what the fallbacks pass to the
    shifted loops below (their messages are known up to a constant per step anyway), so that these add values of one
    step's spread only. Summed with unshifted log-emissions of -300, float32 messages were rounded to 2e-5 at every
    step. A step impossible in every state stays -inf (its maximum is clamped to the lowest finite value)."""
    emax = e.amax(-1).clamp_min_(torch.finfo(e.dtype).min)
    return e - emax[..., None], emax


def _forward(log_start: Tensor, log_trans: Tensor, e: Tensor, shift: bool = False) -> tuple[Tensor, Tensor]:
    """Padded forward pass: (log alpha, log predicted prior) each (B, T, K).

    With ``shift`` (what the fallbacks below use) every step is known up to a constant of its own: every
    ``SHIFT_EVERY``-th :math:`\\alpha_t` is shifted to a maximum of 0 (-inf rows stay -inf) and the next steps are
    computed from the shifted one, so that the messages stay within a few steps' log-probability of 0;
    `_log_likelihood` sums the shifts back. Unshifted, :math:`\\alpha_t` grows like the log-likelihood so far, and
    float32 rounding at that size drifted through the recursion (posteriors up to 7,757, the score 43 nats off after
    10^5 steps)."""
    lo, steps = torch.finfo(e.dtype).min, e.unbind(1)
    alpha = log_start + steps[0]
    if shift:
        alpha = alpha - alpha.amax(-1, keepdim=True).clamp_min_(lo)
    preds, alphas = [log_start.expand_as(steps[0])], [alpha]
    for t in range(1, e.shape[1]):
        pred = torch.logsumexp(alpha.unsqueeze(2) + log_trans, 1)
        alpha = pred + steps[t]
        if shift and t % SHIFT_EVERY == 0:
            alpha.sub_(alpha.amax(-1, keepdim=True).clamp_min_(lo))
        preds.append(pred)
        alphas.append(alpha)
    return torch.stack(alphas, 1), torch.stack(preds, 1)


def _log_likelihood(alpha: Tensor, pred: Tensor, e: Tensor, emax: Tensor, lengths: Tensor) -> Tensor:
    """:math:`\\log p(x_b)` per sequence (B,) from `_forward`'s (shifted) messages of the shifted log-emissions ``e``
    and their maxima ``emax`` (`_shift`): the sum over each sequence's steps of :math:`\\log p(x_t|x_{<t}) =
    \\operatorname{logsumexp}(\\text{pred}_t + e_t) + \\text{emax}_t - \\operatorname{logsumexp}(\\alpha_{t-1})`
    (without the last term at t = 0), T terms at once (as `kizuna.modules._chain_scan.Scaled.log_likelihood`); -inf
    for a sequence no path explains."""
    step = torch.logsumexp(pred + e, -1) + emax
    before = torch.logsumexp(alpha[:, :-1], -1).clamp_min_(torch.finfo(e.dtype).min)  # -inf: the next step is -inf
    step = torch.cat([step[:, :1], step[:, 1:] - before], 1)
    valid = torch.arange(step.shape[1], device=step.device) < lengths[:, None]
    return torch.where(valid, step, 0.0).sum(1)


def _backward(log_trans: Tensor, e: Tensor, lengths: Tensor, shift: bool = False) -> Tensor:
    """Padded backward pass: log beta (B, T, K), zero at and after each sequence's last step; with ``shift``, every
    step up to a constant of its own (every ``SHIFT_EVERY``-th shifted to a maximum of 0, as in `_forward`; the rows
    are finite for a sequence some path explains)."""
    steps, beta = e.unbind(1), torch.zeros_like(e[:, -1])
    betas = [beta]
    ahead = None  # whether step t + 1 is within the sequence (always, for one sequence)
    if e.shape[0] > 1:
        ahead = (torch.arange(1, e.shape[1], device=e.device) < lengths[:, None]).unsqueeze(-1).unbind(1)
    for t in range(e.shape[1] - 2, -1, -1):
        beta = torch.logsumexp(log_trans + (steps[t + 1] + beta).unsqueeze(1), 2)
        if shift and t % SHIFT_EVERY == 0:
            beta.sub_(beta.amax(-1, keepdim=True))
        if ahead is not None:
            beta = torch.where(ahead[t], beta, 0.0)
        betas.append(beta)
    return torch.stack(betas[::-1], 1)


def _last(x: Tensor, lengths: Tensor) -> Tensor:
    """x[b, lengths[b] - 1] for a (B, T, K) block."""
    return x[torch.arange(x.shape[0], device=x.device), lengths - 1]


def forward_log_likelihood(log_start: Tensor, log_trans: Tensor, log_emit: Tensor,
                           lengths: Sequence[int] | Tensor | None = None) -> Tensor:
    """:math:`\\log p(x_b)` per sequence, shape (B,), by the forward recursion alone."""
    lengths = check_lengths(log_emit.shape[0], lengths, log_emit.device)
    check_emissions(log_emit, lengths, "forward_log_likelihood", impossible=True)
    groups = blocks(lengths, log_emit.shape[1])
    if groups is None:
        return _forward_log_likelihood(log_start, log_trans, log_emit, lengths)
    parts = [(seqs, _forward_log_likelihood(log_start, log_trans, log_emit[rows], lengths[seqs]))
             for seqs, rows in groups]
    out = parts[0][1].new_empty(lengths.shape[0])
    for seqs, part in parts:
        out[seqs] = part
    return out


def _forward_log_likelihood(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, lengths: Tensor) -> Tensor:
    """`forward_log_likelihood` of sequences padded to one block (the rows checked by the caller); one sequence
    longer than `block_steps` in slices of time (`_sliced_log_likelihood`). Not `SLICE_ABOVE`: the forward pass alone
    recomputes nothing in slices, and a sequence of up to two blocks held more memory unsliced (K = 50, 1.5 blocks:
    122 MiB against 88)."""
    steps = block_steps(log_emit.shape[1])
    long = lengths.shape[0] == 1 and log_emit.shape[0] > steps
    sliced = _sliced_log_likelihood(log_start, log_trans, log_emit, steps) if long else None
    if sliced is not None:
        return sliced[0]
    e = pad(log_emit, lengths)
    trans = torch.exp(log_trans)
    fwd = None if long else scaled_forward(torch.exp(log_start), trans, e)  # (a long one declined: log space)
    if fwd is not None:
        return fwd.log_likelihood(trans, lengths)
    e, emax = _shift(e)
    return _log_likelihood(*_forward(log_start, log_trans, e, shift=True), e, emax, lengths)


def _sliced_log_likelihood(log_start: Tensor, log_trans: Tensor, log_emit: Tensor,
                           steps: int) -> tuple[Tensor, list[Tensor]] | None:
    """The scaled forward recursion of one sequence (T, K) in slices of ``steps`` steps, each started from the
    filtered distribution :math:`\\hat\\alpha` of the step before it: (:math:`\\log p(x)` (1,), each slice's last
    :math:`\\hat\\alpha`, normalised to sum 1), or None where a slice declines (`scaled_forward`). A slice's first
    step predicts from :math:`\\hat\\alpha A`, so its first term is :math:`\\log p(x_s|x_{<s})` and the slices'
    log-likelihoods add up to the sequence's; only one slice's tables are alive at a time."""
    trans, start, total, exits = torch.exp(log_trans), torch.exp(log_start), 0.0, []
    for s in range(0, log_emit.shape[0], steps):
        e = log_emit[s:s + steps].unsqueeze(0)
        fwd = scaled_forward(start, trans, e)
        if fwd is None:
            return None
        total = total + fwd.log_likelihood(trans, torch.tensor([e.shape[1]], device=e.device))
        last = fwd.filtered[0, -1]
        exits.append(last / last.sum())
        start = exits[-1] @ trans
    return total, exits


def forward_backward(log_start: Tensor, log_trans: Tensor, log_emit: Tensor,
                     lengths: Sequence[int] | Tensor | None = None) -> Smoothed:
    """Posterior marginals, cavity messages and expected counts of a chain (see `Smoothed`).

    In log space (when the scaled recursions decline) each step's
    :math:`\\log \\xi_t(i, j) = \\alpha_t(i) + \\log A_{ij} + \\log p(x_{t+1}|j) + \\beta_{t+1}(j)` is normalised by
    its own logsumexp before it is exponentiated (`_log_trans_counts`): no factor of it can overflow.
    """
    lengths = check_lengths(log_emit.shape[0], lengths, log_emit.device)
    groups = blocks(lengths, log_emit.shape[1])
    if groups is None:
        return _smooth(log_start, log_trans, log_emit, lengths)
    parts = _by_group(lambda sub, n: _smooth(log_start, log_trans, sub, n), groups, log_start, log_trans, log_emit,
                      lengths, "forward_backward")
    first = parts[0][2]
    gamma = first.log_gamma.new_empty(log_emit.shape[0], first.log_gamma.shape[1])
    cavity, loglik = torch.empty_like(gamma), first.log_likelihood.new_empty(lengths.shape[0])
    for seqs, rows, sm in parts:
        gamma[rows], cavity[rows], loglik[seqs] = sm.log_gamma, sm.log_cavity, sm.log_likelihood
    return Smoothed(gamma, cavity, sum(sm.trans_counts for *_, sm in parts),
                    sum(sm.start_counts for *_, sm in parts), loglik)


def _by_group(run: Callable[[Tensor, Tensor], Any], groups: list[tuple[Tensor, Tensor | slice]], log_start: Tensor,
              log_trans: Tensor, log_emit: Tensor, lengths: Tensor, what: str) -> list[tuple[Tensor, Tensor, Any]]:
    """(sequences, rows, ``run(their log-emissions, their lengths)``) for every group (`length_groups`, `blocks`).
    An error of a group names its sequences by their place in the group: the checks then run again over all the
    sequences, which name them as the caller knows them (the error path only)."""
    try:
        return [(seqs, rows, run(log_emit[rows], lengths[seqs])) for seqs, rows in groups]
    except ValueError:
        check_emissions(log_emit, lengths, what)
        check_possible(forward_log_likelihood(log_start, log_trans, log_emit, lengths), log_start, log_trans,
                       log_emit, lengths, what)
        raise


def _smooth(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, lengths: Tensor) -> Smoothed:
    """`forward_backward` of sequences padded to one block; one sequence longer than `SLICE_ABOVE` times
    `block_steps` in slices of time (`_smooth_sliced`, which recomputes the forward pass)."""
    steps = block_steps(log_emit.shape[1])
    long = lengths.shape[0] == 1 and log_emit.shape[0] > SLICE_ABOVE * steps
    fast = _smooth_sliced(log_start, log_trans, log_emit, steps) if long else None
    if fast is not None:
        return fast
    e = pad(log_emit, lengths)
    fast = None if long else _scaled_forward_backward(log_start, log_trans, e, lengths)
    if fast is not None:
        return fast
    check_emissions(log_emit, lengths, "forward_backward")
    e, emax = _shift(e)
    alpha, pred = _forward(log_start, log_trans, e, shift=True)
    loglik = _log_likelihood(alpha, pred, e, emax, lengths)
    check_possible(loglik, log_start, log_trans, log_emit, lengths, "forward_backward")
    beta = _backward(log_trans, e, lengths, shift=True)
    gamma = alpha + beta  # each step up to a constant: normalised per step, as the cavity
    gamma = gamma - torch.logsumexp(gamma, -1, keepdim=True)
    cavity = pred + beta
    cavity = cavity - torch.logsumexp(cavity, -1, keepdim=True)
    trans_counts = _log_trans_counts(alpha[:, :-1], log_trans, e[:, 1:] + beta[:, 1:], lengths)
    return Smoothed(unpad(gamma, lengths), unpad(cavity, lengths), trans_counts,
                    torch.exp(gamma[:, 0]).sum(0), loglik)


XI_BLOCK = 1 << 20  # entries of the (B, steps, K, K) block of log xi formed at once by `_log_trans_counts`


def _log_trans_counts(alpha: Tensor, log_trans: Tensor, ahead: Tensor, lengths: Tensor) -> Tensor:
    """:math:`\\sum_{b,t} \\xi_{b,t}` (K, K) from log alpha (B, T-1, K) and ``ahead`` (B, T-1, K),
    :math:`\\log p(x_{t+1}|\\cdot) + \\beta_{t+1}`: each step's :math:`\\alpha_t(i) + \\log A_{ij} + \\text{ahead}_t(j)`
    less its logsumexp (:math:`\\log p(x)` for unshifted messages, a constant per step for shifted ones), so only values
    <= 0 are exponentiated, in blocks of sequences and steps of at most ``XI_BLOCK`` entries (one step of one
    sequence, K² entries, at the least). Steps after a sequence's end count nothing. About twice the time of the
    linear-space sum it replaces (which overflowed): this path runs only where the scaled recursions decline."""
    b, n, k = alpha.shape
    out = log_trans.new_zeros(k, k)
    valid = torch.arange(1, n + 1, device=alpha.device) < lengths[:, None]  # pairs (t, t+1) of each sequence
    per = k * k
    steps = max(1, XI_BLOCK // (b * per))
    rows = b if b * per <= XI_BLOCK else max(1, XI_BLOCK // per)
    for r in range(0, b, rows):
        for s in range(0, n, steps):
            x = alpha[r:r + rows, s:s + steps, :, None] + log_trans + ahead[r:r + rows, s:s + steps, None, :]
            x = x - torch.logsumexp(x, (-2, -1), keepdim=True)  # (rows, steps, K, K)
            out += torch.exp(torch.where(valid[r:r + rows, s:s + steps, None, None], x, -torch.inf)).sum((0, 1))
    return out


def _scaled_forward_backward(log_start: Tensor, log_trans: Tensor, e: Tensor, lengths: Tensor) -> Smoothed | None:
    """`forward_backward` in linear space from two `scaled_forward` recursions (None: use log space).

    The backward recursion :math:`\\beta_t = A (E_{t+1} \\odot \\beta_{t+1})` is the forward recursion with
    :math:`A^\\top` and start 1 over each sequence reversed: its predicted vectors are the :math:`\\beta_t`.
    Every row below is known up to its own factor, so gamma, the cavity and each
    :math:`\\xi_t(i,j) \\propto \\alpha_t(i) A_{ij} E_{t+1}(j) \\beta_{t+1}(j)` are normalised per step.
    """
    out = _scaled_slice(log_start, log_trans, e, lengths)
    return None if out is None else out[0]


def _smooth_sliced(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, steps: int) -> Smoothed | None:
    """`forward_backward` of one sequence (T, K) in slices of ``steps`` steps, with one slice's tables alive at a
    time (checkpointed forward-backward), or None where a slice declines (use log space). A forward pass keeps
    only the filtered distribution leaving every slice (`_sliced_log_likelihood`); then the slices run last to
    first, each forward again from the distribution before it and backward from :math:`\\beta` after it
    (:math:`\\beta_{s-1} = A (E_s \\odot \\beta_s)`, passed back by the slice after), counting its transitions
    from the step before it (`_scaled_slice`). Costs a third recursion over the sequence; the numbers equal the
    one block's to rounding (other chunks)."""
    forward = _sliced_log_likelihood(log_start, log_trans, log_emit, steps)
    if forward is None:
        return None
    loglik, exits = forward
    gamma, cavity = torch.empty_like(log_emit), torch.empty_like(log_emit)
    counts, end, first = None, None, None
    for i in range(len(exits) - 1, -1, -1):
        s = i * steps
        e = log_emit[s:s + steps].unsqueeze(0)
        out = _scaled_slice(log_start, log_trans, e, torch.tensor([e.shape[1]], device=e.device),
                            exits[i - 1] if i else None, end)
        if out is None:
            return None
        sm, end = out
        gamma[s:s + steps], cavity[s:s + steps] = sm.log_gamma, sm.log_cavity
        counts = sm.trans_counts if counts is None else counts + sm.trans_counts
        first = sm.start_counts
    return Smoothed(gamma, cavity, counts, first, loglik)


def _scaled_slice(log_start: Tensor, log_trans: Tensor, e: Tensor, lengths: Tensor, before: Tensor | None = None,
                  end: Tensor | None = None) -> tuple[Smoothed, Tensor | None] | None:
    """`_scaled_forward_backward`, and with ``before`` :math:`\\beta` of the step before the slice, :math:`A (E_0
    \\odot \\beta_0)` (K,), scaled to a maximum of 1 (else None); None: use log space. For a slice of time of one
    sequence (`_smooth_sliced`): ``before`` the normalised filtered distribution of the step before the slice (the
    forward recursion starts from :math:`\\hat\\alpha A`, the transitions into the first step are counted, the start
    counts are zero), ``end`` :math:`\\beta` of its last step (default 1: the sequence's end)."""
    trans = torch.exp(log_trans)
    fwd = scaled_forward(torch.exp(log_start) if before is None else before @ trans, trans, e)
    if fwd is None:
        return None
    b, t, k = e.shape
    if b == 1:
        def flip(x: Tensor) -> Tensor:
            return x.flip(1)
    else:
        rev = reverse_index(lengths, t).unsqueeze(-1).expand(-1, -1, k)

        def flip(x: Tensor) -> Tensor:
            return x.gather(1, rev)
    bwd = scaled_forward(torch.ones_like(log_start) if end is None else end, trans.T.contiguous(), flip(e))
    if bwd is None:
        return None
    beta = flip(bwd.predicted)  # beta_t, up to a factor per step
    gamma, cavity = fwd.filtered * beta, fwd.predicted * beta
    w = fwd.emissions[:, 1:] * beta[:, 1:]
    propagated = fwd.filtered[:, :-1] @ trans
    sums = [gamma.sum(-1, keepdim=True), cavity.sum(-1, keepdim=True), (propagated * w).sum(-1, keepdim=True)]
    if before is not None:  # the pair (the step before, step 0): predicted row 0 is before @ trans
        w0 = fwd.emissions[0, 0] * beta[0, 0]
        sums.append((fwd.predicted[0, 0] * w0).sum().reshape(1))
    if b > 1:  # padded steps: harmless divisors, no transition counts
        valid = (torch.arange(t, device=e.device) < lengths[:, None]).unsqueeze(-1)
        sums = [torch.where(v, x, 1.0) for x, v in zip(sums, (valid, valid, valid[:, 1:]))]
        w = torch.where(valid[:, 1:], w, 0.0)
    low = torch.cat([x.reshape(-1) for x in sums]).amin()
    if not bool(low >= smallest_normaliser(low.dtype)):  # False for 0 and NaN
        return None
    left = fwd.filtered[:, :-1] / sums[2]
    trans_counts = trans * (left.reshape(-1, k).T @ w.reshape(-1, k))
    if before is not None:
        trans_counts += trans * torch.outer(before / sums[3], w0)
    gamma, cavity = gamma / sums[0], cavity / sums[1]
    back = None if before is None else trans @ (fwd.emissions[0, 0] * beta[0, 0])  # (a sequence's first slice: unused)
    starts = gamma[:, 0].sum(0) if before is None else torch.zeros_like(gamma[0, 0])
    return (Smoothed(unpad(torch.log(gamma), lengths), unpad(torch.log(cavity), lengths), trans_counts, starts,
                     fwd.log_likelihood(trans, lengths, propagated)), None if back is None else back / back.amax())


def viterbi(log_start: Tensor, log_trans: Tensor, log_emit: Tensor,
            lengths: Sequence[int] | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Most probable state paths: (:math:`\\max_z \\log p(x_b, z)` per sequence (B,), states (N,)),
    by chunks of the max-product recursion run at once and fixed up by rank convergence
    (`kizuna.modules._viterbi.viterbi_scan`), in float64 whatever ``log_emit``'s dtype (the score in its dtype).
    Raises a ValueError naming the sequence and step where a sequence has zero probability (no path to return) or a
    log-emission is NaN or +inf."""
    lengths = check_lengths(log_emit.shape[0], lengths, log_emit.device)
    check_emissions(log_emit, lengths, "viterbi")
    groups = length_groups(lengths)
    start, trans = widened(log_start), widened(log_trans)  # the recursion in float64 (`_viterbi.widened`)
    if groups is None:
        score, states = viterbi_scan(start, trans, widened(pad(log_emit, lengths)), lengths)
        score, states = score.to(log_emit.dtype), unpad(states, lengths)
    else:
        score = log_emit.new_empty(lengths.shape[0])
        states = torch.empty(log_emit.shape[0], dtype=torch.long, device=log_emit.device)
        for seqs, rows in groups:
            part, path = viterbi_scan(start, trans, widened(pad(log_emit[rows], lengths[seqs])), lengths[seqs])
            score[seqs], states[rows] = part.to(score.dtype), unpad(path, lengths[seqs])
    check_possible(score, log_start, log_trans, log_emit, lengths, "viterbi")
    return score, states


def path_log_probs(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, states: Tensor, lengths: Tensor) -> Tensor:
    """:math:`\\log p(x_b, z_b)` per sequence (B,) of the paths ``states`` (N,):
    `kizuna.modules._viterbi.path_log_prob` over the blocks `viterbi` pads (so that every backend sums a path's
    score in the same order)."""
    groups = length_groups(lengths)
    if groups is None:
        return path_log_prob(log_start, log_trans, pad(log_emit, lengths), pad(states[:, None], lengths)[..., 0],
                             lengths)
    out = log_emit.new_empty(lengths.shape[0])
    for seqs, rows in groups:
        out[seqs] = path_log_prob(log_start, log_trans, pad(log_emit[rows], lengths[seqs]),
                                  pad(states[rows, None], lengths[seqs])[..., 0], lengths[seqs])
    return out


def viterbi_loop(log_start: Tensor, log_trans: Tensor, log_emit: Tensor,
                 lengths: Sequence[int] | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`viterbi` by a loop over time (the reference the chunked recursion is tested against), in float64 as every
    Viterbi recursion (`_viterbi.widened`); the score in ``log_emit``'s dtype."""
    lengths = check_lengths(log_emit.shape[0], lengths, log_emit.device)
    dtype, e, log_trans = log_emit.dtype, widened(pad(log_emit, lengths)), widened(log_trans)
    delta, pointers = widened(log_start) + e[:, 0], []
    for t in range(1, e.shape[1]):
        best, arg = (delta[:, :, None] + log_trans).max(dim=1)
        pointers.append(arg)
        delta = torch.where((t < lengths)[:, None], best + e[:, t], delta)
    score, state = delta.max(-1)
    path = [state] * e.shape[1]
    for t in range(e.shape[1] - 1, 0, -1):
        path[t] = state
        prev = pointers[t - 1].gather(1, state[:, None]).squeeze(1)
        state = torch.where(t < lengths, prev, state)
    path[0] = state
    return score.to(dtype), unpad(torch.stack(path, 1), lengths)


def _gumbel_argmax(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of Categorical(softmax(logits)) by the Gumbel-max trick."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    u = u.clamp(torch.finfo(logits.dtype).tiny, 1.0)
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)


def sample_paths(log_start: Tensor, log_trans: Tensor, log_emit: Tensor,
                 lengths: Sequence[int] | Tensor | None = None, n_samples: int = 1,
                 generator: torch.Generator | None = None) -> Tensor:
    """Exact draws from :math:`p(z|x)` by forward filtering, backward sampling: (n_samples, N) states.

    .. math::
        z_{T-1} \\sim \\alpha_{T-1},\\qquad
        z_t \\sim p(z_t|z_{t+1}, x_{0:t}) \\propto \\alpha_t(z_t)\\,A_{z_t z_{t+1}}

    The filtering runs chunked (`kizuna.modules._chain_scan`); the backward draws loop over time. Raises as
    `viterbi` where a sequence has zero probability (there is no posterior to draw from). Sequences split into
    groups by `length_groups` draw group after group: other draws (from the same law) than one block would give.
    """
    lengths = check_lengths(log_emit.shape[0], lengths, log_emit.device)
    groups = length_groups(lengths)
    if groups is None:
        return _sample_paths(log_start, log_trans, log_emit, lengths, n_samples, generator)
    parts = _by_group(lambda sub, n: _sample_paths(log_start, log_trans, sub, n, n_samples, generator), groups,
                      log_start, log_trans, log_emit, lengths, "sample_paths")
    out = torch.empty(n_samples, log_emit.shape[0], dtype=torch.long, device=log_emit.device)
    for _, rows, paths in parts:
        out[:, rows] = paths
    return out


def _sample_paths(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, lengths: Tensor, n_samples: int,
                  generator: torch.Generator | None) -> Tensor:
    """`sample_paths` of sequences padded to one block."""
    e = pad(log_emit, lengths)
    fwd = scaled_forward(torch.exp(log_start), torch.exp(log_trans), e)  # filtering, up to a factor per step
    if fwd is not None:  # accepted: every normaliser is positive, so is every sequence's probability
        alpha = torch.log(fwd.filtered)
    else:
        check_emissions(log_emit, lengths, "sample_paths")
        shifted, emax = _shift(e)
        alpha, pred = _forward(log_start, log_trans, shifted, shift=True)  # each step up to a constant of its own
        check_possible(_log_likelihood(alpha, pred, shifted, emax, lengths), log_start, log_trans, log_emit, lengths,
                       "sample_paths")
    last = _last(alpha, lengths).expand(n_samples, -1, -1)  # (S, B, K)
    state = _gumbel_argmax(last, generator)
    path = [state] * e.shape[1]
    for t in range(e.shape[1] - 1, 0, -1):
        path[t] = state
        logits = alpha[:, t - 1][None] + log_trans.T[state]  # (S, B, K): alpha_{t-1}(i) + log A[i, z_t]
        state = torch.where(t < lengths, _gumbel_argmax(logits, generator), state)
    path[0] = state
    block = torch.stack(path, 2)  # (S, B, T)
    return torch.stack([unpad(p, lengths) for p in block])
