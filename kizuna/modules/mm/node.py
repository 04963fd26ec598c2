r"""`MM`: a Markov model over the class sequence of a child module; with a GMM child it is an HMM.

The child (a GMM, an MLDA, ...) sends its class evidence :math:`\lambda_{nk}` (``"posterior"`` N×K,
excluding MM's own prior, the protocol's convention) for the samples in data order, split into
sequences by ``lengths``. MM places a Markov chain on the classes,

.. math:: p(c_0 = k) = \pi_k,\qquad p(c_n = j | c_{n-1} = i) = A_{ij},\qquad
          A_{i\cdot} \sim \mathrm{Dir}(\alpha),

learns :math:`A, \pi` from transition counts (Baum-Welch expected counts under message passing; counts of
``n_samples`` class paths drawn exactly by forward-filtering backward-sampling under `SIR`) with the
posterior-mean estimate :math:`\hat A_{ij} = (n_{ij} + \alpha) / (n_i + K\alpha)`, and smooths by
forward-backward (`kizuna.modules.mm.algorithms`). With :math:`\mu_{nk}` the chain's message
into step :math:`n` (from every other step) and :math:`\rho_{nk}` the prior of MM's own parent:

* ``posterior`` :math:`\propto \mu_n \lambda_n \rho_n` (the smoothed marginal);
* **up**: :math:`\propto \mu_n \lambda_n` (excluding the parent's prior; with several parents each reads it
  times the other parents' priors, `kizuna.modules.Module.message_to`);
* **down** to the child: :math:`\propto \mu_n \rho_n` (excluding the child's own evidence), so the child's
  next posterior :math:`\propto \mu_n\rho_n\lambda_n` is the HMM's smoothed marginal.

SERKET's MM (Nakamura et al. 2018, arXiv:1712.00929) sampled each transition from independent
per-step class draws whose inverse-CDF compared the wrong array; here the counts are those of
exact posterior paths (tested by chi-square against enumeration).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kizuna._data import check_int
from kizuna.modules import _forward_backward as fb
from kizuna.modules.base import ClassModule, Message, Module, check_width
from kizuna.modules.combine import SIR
from kizuna.modules.context import UpdateContext
from kizuna.modules.hmm.node import own_lengths
from kizuna.modules.mm import algorithms as algo
from kizuna.modules.mm.estimator import MarkovChain

Tensor = torch.Tensor


class MM(ClassModule, MarkovChain):
    """Markov model module (see the module docstring; `MarkovChain` is its estimator).

    Args:
        n_states: K; ``None`` takes the width of the child's message.
        alpha: Dirichlet concentration of each row of :math:`A` and of :math:`\\pi`.
        lengths: lengths of the sequences the samples form, in order (``None``: one sequence), in a graph and in
            ``fit`` / ``predict_proba`` / ``predict`` / ``score`` called without ``lengths`` (evidence of another
            number of rows is then refused: pass its own ``lengths``).
        n_iter: count / re-estimate iterations per ``update``.
        n_samples: paths drawn per iteration under `SIR`.
        n_particles: particles of the `SIR` posterior (see `kizuna.modules.combine.SIR`).
        transmat, startprob: initial (or, with ``learnable=False``, fixed) :math:`A` and :math:`\\pi`;
            default uniform.
        category: reference labels, for ``accuracy`` / ``ari`` / ``nmi`` only.
        random_state: seeds the module's own stream (``update()`` without a context) and `sample` (a class sequence
            drawn from the learnt chain, `MarkovChain.sample`).

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
    sends_priors_down: ClassVar[bool] = True  # class priors to the children whose posteriors it takes
    sends: ClassVar[str] = "posterior"
    receives: ClassVar[tuple[str, ...]] = ("prior",)
    scheduled: ClassVar[tuple[str, ...]] = ("n_iter",)
    architecture: ClassVar[tuple[str, ...]] = ("n_states", "alpha", "lengths")

    @dataclass
    class State(ClassModule.State):
        """Also the chain's estimates and the number of classes (set by the child's message)."""

        transmat_: Tensor | None = None
        startprob_: Tensor | None = None
        n_classes: int = 1

    def __init__(self, n_states: int | None = None, alpha: float = 1.0, lengths: Sequence[int] | None = None,
                 n_iter: int = 10, n_samples: int = 100, n_particles: int = 1000, transmat: Any = None,
                 startprob: Any = None, category: Any = None, name: str | None = None, learnable: bool = True,
                 random_state: int | torch.Generator | None = None) -> None:
        # ClassModule needs a size now; with n_states=None it is set from the child at the first update
        ClassModule.__init__(self, n_states if n_states is not None else 1, category, name, learnable, random_state)
        MarkovChain.__init__(self, n_states, alpha=alpha, n_iter=n_iter, transmat=transmat, startprob=startprob,
                             random_state=random_state)
        self.lengths, self.n_samples, self.n_particles = lengths, n_samples, n_particles
        self._validate()

    def _validate(self) -> None:
        super()._validate()
        check_int(f"{self._owner}: n_samples", self.n_samples, 1)  # (2.5 ran with 2, n_particles=0 failed in SIR)
        check_int(f"{self._owner}: n_particles", self.n_particles, 1)

    def _evidence(self, X: Any, lengths: Sequence[int] | Tensor | None) -> tuple[Tensor, Tensor]:
        """See `MarkovChain._evidence`; without ``lengths`` the node's own cut the evidence, as in a graph
        (`kizuna.modules.hmm.node.own_lengths`)."""
        if lengths is None and self.lengths is not None:
            log_x, _ = super()._evidence(X, None)
            return log_x, own_lengths(self._owner, self.lengths, log_x.shape[0], log_x.device)
        return super()._evidence(X, lengths)

    def fit(self, X: Any, lengths: Sequence[int] | Tensor | None = None) -> MM:
        """See `MarkovChain.fit`; also sets ``posterior`` (the training evidence's smoothed marginals) and
        ``n_classes``, as the other nodes' ``fit`` (``classes`` and ``accuracy`` kept a graph's posterior, or raised).
        Without ``lengths`` the node's own cut the evidence."""
        super().fit(X, lengths)
        log_emit, lengths = self._evidence(X, lengths)
        self.n_classes = log_emit.shape[1]
        self.posterior = torch.exp(algo.smooth(*self._chain(self.n_classes, log_emit), log_emit, lengths).log_gamma)
        return self

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        if len(forward) != 1:
            raise ValueError(f"MM {self.name} models one child's class sequence, got {len(forward)} children")
        msg = forward[0]
        n, k = msg.value.shape
        if self.n_states is not None:
            check_width(self, msg, self.n_states, "states")
        self.n_classes = k
        self.check_category(n)
        lengths = fb.check_lengths(n, self.lengths, msg.value.device)
        dtype = msg.value.dtype  # of the messages; the chain computes in at least float32 (fb.computing_dtype)
        log_lam = torch.log(msg.value.to(fb.computing_dtype(dtype)))
        prior = self.class_prior(backward, n)
        log_rho = torch.zeros_like(log_lam) if prior is None else torch.log(prior.to(log_lam))
        log_emit = log_lam + log_rho
        if prior is not None:  # (forward-backward then blamed the child's evidence, which was valid)
            dead = ~torch.isfinite(log_emit).any(1) & torch.isfinite(log_lam).any(1)
            if bool(dead.any()):
                row = int(dead.nonzero()[0])
                raise ValueError(f"MM {self.name}: row {row}: the prior of {backward.sender} gives probability 0 to "
                                 f"every class the posterior of {msg.sender} allows, so their product is 0: the "
                                 "parent's prior and the child's evidence have no class in common there")
        start, trans = self._chain(k, log_lam)
        if self.learnable:
            n_iter = ctx.setting(self.name, "n_iter", self.n_iter)
            start, trans = algo.learn(start, trans, log_emit, lengths, n_iter, float(self.alpha),
                                      isinstance(ctx.combine, SIR), int(self.n_samples), ctx.generator)
        self.startprob_, self.transmat_ = start, trans
        mu = algo.smooth(start, trans, log_emit, lengths).log_cavity
        down_prior = torch.softmax(mu + log_rho, 1)
        self.posterior = ctx.combine.bind(int(self.n_particles), ctx.generator)(down_prior, log_lam)
        up = self.message("posterior", torch.softmax(mu + log_lam, 1).to(dtype))
        child = self.children[0]
        down = {child: self.message("prior", down_prior.to(dtype), receiver=child)} if "prior" in child.receives \
            else {}
        return up, down
