r"""The Markov model's learning and smoothing over a sequence of class evidence: pure functions.

The evidence :math:`\lambda_{nk}` (N×K, a child's class likelihoods, in data order and cut into sequences
by ``lengths``) is the emission of a Markov chain :math:`p(c_0 = k) = \pi_k`,
:math:`p(c_n = j | c_{n-1} = i) = A_{ij}`, :math:`A_{i\cdot} \sim \mathrm{Dir}(\alpha)`:

* `transition_counts`: expected start and transition counts, exact (forward-backward, Baum-Welch) or the
  mean over ``n_samples`` exact posterior paths (forward-filtering backward-sampling);
* `learn`: ``n_iter`` re-estimations :math:`\hat A_{ij} = (n_{ij} + \alpha) / (n_i + K\alpha)`;
* `smooth`: the chain's message into every step and the smoothed marginals.

The forward-backward recursions are `kizuna.modules._forward_backward`'s.
"""

from __future__ import annotations

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
