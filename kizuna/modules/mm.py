r"""`MM`: a Markov model over the class sequence of a child module; with a GMM child it is an HMM.

The child (a GMM, an MLDA, ...) sends its class evidence :math:`\lambda_{nk}` (``"posterior"`` N×K,
excluding MM's own prior, the protocol's convention) for the samples in data order, split into
sequences by ``lengths``. MM places a Markov chain on the classes,

.. math:: p(c_0 = k) = \pi_k,\qquad p(c_n = j | c_{n-1} = i) = A_{ij},\qquad
          A_{i\cdot} \sim \mathrm{Dir}(\alpha),

learns :math:`A, \pi` from transition counts (Baum-Welch expected counts for ``method="mp"``; counts of
``n_samples`` class paths drawn exactly by forward-filtering backward-sampling for ``"sir"``) with the
posterior-mean estimate :math:`\hat A_{ij} = (n_{ij} + \alpha) / (n_i + K\alpha)`, and smooths by
forward-backward (`kizuna.modules._forward_backward`). With :math:`\mu_{nk}` the chain's message
into step :math:`n` (from every other step) and :math:`\rho_{nk}` the prior of MM's own parent:

* ``posterior`` :math:`\propto \mu_n \lambda_n \rho_n` (the smoothed marginal);
* **up**: :math:`\propto \mu_n \lambda_n` (excluding the parent's prior);
* **down** to the child: :math:`\propto \mu_n \rho_n` (excluding the child's own evidence), so the child's
  next posterior :math:`\propto \mu_n\rho_n\lambda_n` is the HMM's smoothed marginal.

SERKET's MM (Nakamura et al. 2018, arXiv:1712.00929) sampled each transition from independent
per-step class draws whose inverse-CDF compared the wrong array; here the counts are those of
exact posterior paths (tested by chi-square against enumeration).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from kizuna.modules import _forward_backward as fb
from kizuna.modules.base import ClassModule, Message, Module, check_width
from kizuna.modules.inference import combine

Tensor = torch.Tensor


def dirichlet_mean(counts: Tensor, alpha: float) -> Tensor:
    """Posterior-mean probabilities :math:`(n + \\alpha) / \\sum (n + \\alpha)` along the last axis."""
    c = counts + alpha
    return c / c.sum(-1, keepdim=True)


def transition_counts(log_start: Tensor, log_trans: Tensor, log_emit: Tensor, lengths: Tensor, method: str,
                      n_samples: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(start counts K, transition counts K×K): exact expectations (``"mp"``) or the mean over
    ``n_samples`` exact posterior paths (``"sir"``)."""
    if method == "mp":
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


class MM(ClassModule):
    """Markov model module (see the module docstring).

    Args:
        n_states: K; ``None`` takes the width of the child's message.
        alpha: Dirichlet concentration of each row of :math:`A` and of :math:`\\pi`.
        lengths: lengths of the sequences the samples form, in order (``None``: one sequence).
        n_iter: count / re-estimate iterations per ``update``.
        n_samples: paths drawn per iteration for ``method="sir"``.
        n_particles: particles of the ``"sir"`` posterior (see `kizuna.modules.inference.combine`).
        transmat, startprob: initial (or, with ``learnable=False``, fixed) :math:`A` and :math:`\\pi`;
            default uniform.
        category: reference labels, for ``accuracy`` / ``ari`` / ``nmi`` only.

    Attributes:
        transmat_, startprob_: the current estimates.

    Example:
        >>> from kizuna.modules import GMM, Graph, Observation
        >>> z = torch.tensor([0] * 20 + [1] * 20 + [0] * 20)
        >>> x = z[:, None] * 4.0 + torch.randn(60, 1, generator=torch.Generator().manual_seed(0))
        >>> mm = MM(category=z).connect(GMM(2, algorithm="em", random_state=0).connect(Observation(x)))
        >>> _ = Graph([mm]).fit(n_iter=3, seed=0)
        >>> mm.accuracy, bool(mm.transmat_.diagonal().min() > 0.8)
        (1.0, True)
    """

    accepts: ClassVar[tuple[str, ...]] = ("posterior",)
    sends: ClassVar[str] = "posterior"
    receives: ClassVar[tuple[str, ...]] = ("prior",)

    def __init__(self, n_states: int | None = None, alpha: float = 1.0, lengths: Sequence[int] | None = None,
                 n_iter: int = 10, n_samples: int = 100, n_particles: int = 1000, transmat: Any = None,
                 startprob: Any = None, category: Any = None, name: str | None = None,
                 learnable: bool = True) -> None:
        # ClassModule needs a size now; with n_states=None it is set from the child at the first update
        super().__init__(n_states if n_states is not None else 1, category, name, learnable)
        if alpha <= 0 or n_iter < 0 or n_samples < 1:
            raise ValueError(f"MM {self.name}: need alpha > 0, n_iter >= 0 and n_samples >= 1")
        self.n_states, self.alpha, self.lengths = n_states, float(alpha), lengths
        self.n_iter, self.n_samples, self.n_particles = int(n_iter), int(n_samples), int(n_particles)
        self.transmat_ = None if transmat is None else torch.as_tensor(transmat)
        self.startprob_ = None if startprob is None else torch.as_tensor(startprob)

    def _chain(self, k: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`\\log\\pi, \\log A` in ``like``'s dtype/device (uniform when not set yet)."""
        if self.transmat_ is None:
            self.transmat_ = torch.full((k, k), 1.0 / k, dtype=like.dtype, device=like.device)
        if self.startprob_ is None:
            self.startprob_ = torch.full((k,), 1.0 / k, dtype=like.dtype, device=like.device)
        a, p = self.transmat_.to(like), self.startprob_.to(like)
        if a.shape != (k, k) or p.shape != (k,):
            raise ValueError(f"MM {self.name}: the child sends {k} classes but transmat_ is {tuple(a.shape)} "
                             f"and startprob_ {tuple(p.shape)}")
        if (a < 0).any() or (p < 0).any() or not torch.allclose(a.sum(1), torch.ones_like(a[0])) \
                or not torch.allclose(p.sum(), torch.ones_like(p[0])):
            raise ValueError(f"MM {self.name}: transmat_ rows and startprob_ must be probability vectors")
        return torch.log(p), torch.log(a)

    def _update(self, forward: list[Message], backward: Message | None) -> tuple[Message, dict[Module, Message]]:
        if len(forward) != 1:
            raise ValueError(f"MM {self.name} models one child's class sequence, got {len(forward)} children")
        msg = forward[0]
        n, k = msg.value.shape
        if self.n_states is not None:
            check_width(self, msg, self.n_states, "states")
        self.n_classes = k
        self.check_category(n)
        lengths = fb.check_lengths(n, self.lengths, msg.value.device)
        log_lam = torch.log(msg.value)
        prior = self.class_prior(backward, n)
        log_rho = torch.zeros_like(log_lam) if prior is None else torch.log(prior.to(log_lam))
        log_emit = log_lam + log_rho
        for _ in range(self.n_iter if self.learnable else 0):
            start, trans = transition_counts(*self._chain(k, log_lam), log_emit, lengths, self.method,
                                             self.n_samples, self.generator)
            self.startprob_, self.transmat_ = dirichlet_mean(start, self.alpha), dirichlet_mean(trans, self.alpha)
        sm = fb.forward_backward(*self._chain(k, log_lam), log_emit, lengths)
        mu = sm.log_cavity
        down_prior = torch.softmax(mu + log_rho, 1)
        self.posterior = combine(down_prior, log_lam, self.method, self.n_particles, self.generator)
        up = self.message("posterior", torch.softmax(mu + log_lam, 1))
        child = self.children[0]
        down = {child: self.message("prior", down_prior, receiver=child)} if "prior" in child.receives else {}
        return up, down

    def config(self) -> dict[str, Any]:
        return {"n_states": self.n_states, "alpha": self.alpha,
                "lengths": None if self.lengths is None else [int(x) for x in self.lengths]}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "transmat": self.transmat_, "startprob": self.startprob_,
                "n_classes": self.n_classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.transmat_, self.startprob_, self.n_classes = state["transmat"], state["startprob"], state["n_classes"]
