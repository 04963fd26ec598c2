r"""The Markov model's learning and smoothing over a sequence of class evidence: pure functions.

The evidence :math:`\lambda_{nk}` (N×K, a child's class likelihoods, in data order and cut into sequences
by ``lengths``) is the emission of a Markov chain :math:`p(c_0 = k) = \pi_k`,
:math:`p(c_n = j | c_{n-1} = i) = A_{ij}`, :math:`A_{i\cdot} \sim \mathrm{Dir}(\alpha)`:

* `transition_counts`: expected start and transition counts, exact (forward-backward, Baum-Welch) or the
  mean over ``n_samples`` exact posterior paths (forward-filtering backward-sampling);
* `learn`: ``n_iter`` re-estimations :math:`\hat A_{ij} = (n_{ij} + \alpha) / (n_i + K\alpha)`;
* `smooth`: the chain's message into every step and the smoothed marginals;
* `sample_chain`: a class sequence drawn from the chain itself (no evidence).

The forward-backward recursions are `kizuna.modules._forward_backward`'s.
"""

from __future__ import annotations

from bisect import bisect_right

import torch

from kizuna.modules import _forward_backward as fb

Tensor = torch.Tensor


def dirichlet_mean(counts: Tensor, alpha: float) -> Tensor:
    """Posterior-mean probabilities :math:`(n + \\alpha) / \\sum (n + \\alpha)` along the last axis."""
    c = counts + alpha
    return c / c.sum(-1, keepdim=True)


def transition_counts(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, lengths: Tensor, sampled: bool,
                      n_samples: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(start counts K, transition counts K×K): exact expectations, or (``sampled``) the mean over
    ``n_samples`` exact posterior paths."""
    if not sampled:
        sm = fb.forward_backward(log_start, log_trans, log_emit, lengths)
        return sm.start_counts, sm.trans_counts
    k = log_emit.shape[1]
    paths = fb.sample_paths(log_start, log_trans, log_emit, lengths, n_samples, generator)  # (S, N)
    starts = torch.cumsum(lengths, 0) - lengths
    is_pair = torch.ones(paths.shape[1], dtype=torch.bool, device=paths.device)
    is_pair[starts] = False  # the pair (n-1, n) crosses a sequence boundary when n starts a sequence
    pair = (paths[:, :-1] * k + paths[:, 1:])[:, is_pair[1:]]
    trans = torch.bincount(pair.reshape(-1), minlength=k * k).reshape(k, k).to(log_emit.dtype) / n_samples
    start = torch.bincount(paths[:, starts].reshape(-1), minlength=k).to(log_emit.dtype) / n_samples
    return start, trans


def learn(startprob: Tensor, transmat: Tensor, log_emit: Tensor, lengths: Tensor, n_iter: int, alpha: float,
          sampled: bool = False, n_samples: int = 100, generator: torch.Generator | None = None
          ) -> tuple[Tensor, Tensor]:
    """``n_iter`` re-estimations of :math:`(\\pi, A)` from `transition_counts` with the emissions fixed."""
    for _ in range(n_iter):
        start, trans = transition_counts(torch.log(startprob), torch.log(transmat), log_emit, lengths, sampled,
                                         n_samples, generator)
        startprob, transmat = dirichlet_mean(start, alpha), dirichlet_mean(trans, alpha)
    return startprob, transmat


def smooth(startprob: Tensor, transmat: Tensor, log_emit: Tensor, lengths: Tensor) -> fb.Smoothed:
    """Forward-backward: ``log_cavity`` is the chain's message into each step, ``log_gamma`` the marginals."""
    return fb.forward_backward(torch.log(startprob), torch.log(transmat), log_emit, lengths)


def sample_chain(startprob: Tensor, transmat: Tensor, n_steps: int, generator: torch.Generator | None) -> Tensor:
    """One class sequence of ``n_steps`` steps (N,) drawn from the chain :math:`(\\pi, A)` itself, by inverting the
    CDF step after step: :math:`c_n` is the first class whose cumulative probability in its row (:math:`\\pi` for
    :math:`c_0`, :math:`A_{c_{n-1}\\cdot}` after) lies strictly above :math:`u_n` times the row's total,
    :math:`u_n \\sim U[0, 1)` from ``generator`` (on the CPU), so that a class or a transition of probability 0 is
    never drawn (the last class of positive probability at most, where the product rounds up to the total). A chain
    is sequential: one Python step per class, on lists (a tensor operation per step took 50 times as long)."""
    rows = torch.cat([startprob[None], transmat]).detach().to("cpu", torch.float64)
    k = rows.shape[1]
    last = (k - 1 - torch.argmax((rows > 0).flip(1).to(torch.int8), 1)).tolist()
    cums = rows.cumsum(1).tolist()
    out, row = [], 0
    for u in torch.rand(n_steps, generator=generator, dtype=torch.float64).tolist():
        cum = cums[row]
        state = min(bisect_right(cum, u * cum[-1]), last[row])
        out.append(state)
        row = state + 1
    return torch.tensor(out, dtype=torch.long, device=transmat.device)
