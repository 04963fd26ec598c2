r"""Combining a class message with a module's own likelihood: the message-passing and SIR strategies.

A module with a categorical latent :math:`c_n \in \{1..K\}` receives a message
:math:`m_{nk}` (a class prior from its parent, or class posteriors from a child) and
computes its own log-likelihood :math:`\ell_{nk} = \log p(x_n \mid c_n = k)`. The combined
posterior is

.. math:: p(c_n = k \mid \cdot) = \frac{m_{nk}\, e^{\ell_{nk}}}{\sum_j m_{nj}\, e^{\ell_{nj}}}.

A *combination strategy* is an object called as ``strategy(message, log_likelihood)``:

* `MP` (message passing) computes it exactly, in log space.
* `SIR` (sampling-importance-resampling, SERKET's alternative when messages are too expensive to
  pass exactly; Nakamura et al. 2018, arXiv:1712.00929): per row draw :math:`P` candidate classes
  :math:`c^{(p)} \sim m_{n\cdot}` (the proposal), weight each by :math:`w_p \propto e^{\ell_{n c^{(p)}}}`,
  resample :math:`P` particles by the weights and return their empirical distribution. It converges to
  the MP posterior as :math:`P \to \infty` (bias :math:`O(1/P)`, noise :math:`O(1/\sqrt P)`). It carries
  its particle count and its generator; ``n_particles=None`` leaves the count to each module
  (`SIR.bind`).

Both are vectorised over rows (no Python loop over samples). The algorithms of the classical modules
take a strategy instead of method strings; `Graph.fit(method=...)` builds it.

>>> msg = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
>>> ll = torch.log(torch.tensor([[0.2, 0.8], [0.5, 0.5]]))
>>> MP()(msg, ll)
tensor([[0.2000, 0.8000],
        [0.9000, 0.1000]])
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from kizuna.modules.rng import normalize

Tensor = torch.Tensor
METHODS = ("mp", "sir")


def _check(message_probs: Tensor, log_likelihood: Tensor) -> None:
    if message_probs.dim() != 2 or message_probs.shape != log_likelihood.shape:
        raise ValueError(f"combine: the message {tuple(message_probs.shape)} and the log-likelihood "
                         f"{tuple(log_likelihood.shape)} must both be N x K")
    if torch.isnan(log_likelihood).any() or (log_likelihood == float("inf")).any():
        raise ValueError("combine: the log-likelihood contains NaN or +inf")


def _no_support(valid: Tensor, what: str) -> None:
    if not valid.all():
        row = int((~valid).nonzero()[0, 0])
        raise ValueError(f"combine: row {row} has no class with both message mass and likelihood ({what})")


@dataclass(frozen=True)
class MP:
    """Exact message passing: :math:`\\operatorname{softmax}_k(\\log m_{nk} + \\ell_{nk})`."""

    name = "mp"

    def bind(self, n_particles: int | None = None, generator: torch.Generator | None = None) -> MP:
        """See `SIR.bind`; exact message passing needs neither particles nor randomness."""
        return self

    def __call__(self, message_probs: Tensor, log_likelihood: Tensor) -> Tensor:
        """The posterior ``N×K`` (``-inf`` log-likelihoods allowed for impossible classes)."""
        _check(message_probs, log_likelihood)
        logits = torch.log(normalize(message_probs)) + log_likelihood
        _no_support(torch.isfinite(logits).any(1), "message passing")
        return torch.softmax(logits, 1)


@dataclass(frozen=True)
class SIR:
    """Sampling-importance-resampling with ``n_particles`` per row, drawn from ``generator``.

    Args:
        n_particles: :math:`P`; ``None``: each module's own ``n_particles``.
        generator: the random source (``None``: the one the module binds, else torch's global generator).
    """

    n_particles: int | None = None
    generator: torch.Generator | None = None
    name = "sir"

    def __post_init__(self) -> None:
        p = self.n_particles
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise ValueError(f"SIR: n_particles must be a positive int, got {p!r}")

    def bind(self, n_particles: int | None = None, generator: torch.Generator | None = None) -> SIR:
        """This strategy with the missing particle count and generator filled in by a module."""
        return replace(self, n_particles=self.n_particles if self.n_particles is not None else n_particles,
                       generator=self.generator if self.generator is not None else generator)

    def __call__(self, message_probs: Tensor, log_likelihood: Tensor) -> Tensor:
        """The empirical distribution ``N×K`` of the resampled particles."""
        if self.n_particles is None:
            raise ValueError("SIR: no particle count; pass SIR(n_particles=...) or bind it to a module's")
        _check(message_probs, log_likelihood)
        message, p, g = normalize(message_probs), self.n_particles, self.generator
        allowed = torch.isfinite(log_likelihood)
        _no_support(((message > 0) & allowed).any(1), "every particle would have zero likelihood; message passing "
                    "has no answer either")
        proposals = torch.multinomial(message, p, replacement=True, generator=g)  # N x P
        log_w = log_likelihood.gather(1, proposals)
        missed = ~torch.isfinite(log_w).any(1)
        if bool(missed.any()):  # (it said the row had no class with both, while message passing had an answer)
            row = int(missed.nonzero()[0, 0])
            mass = float((message[row] * allowed[row]).sum())
            raise ValueError(f"combine: SIR row {row}: none of the {p} particles drawn from the message fell on a "
                             f"class the likelihood allows (the message gives those classes {mass:.3g} of its mass, so "
                             f"all {p} miss with probability {(1 - mass) ** p:.2g}); message passing has an answer: "
                             "raise n_particles, or use method='mp'")
        picks = torch.multinomial(torch.softmax(log_w, 1), p, replacement=True, generator=g)
        particles = proposals.gather(1, picks)
        counts = torch.zeros_like(message).scatter_add_(1, particles, torch.ones_like(particles, dtype=message.dtype))
        return counts / p


Combine = MP | SIR


def strategy(method: str | Combine, n_particles: int | None = None, generator: torch.Generator | None = None
             ) -> Combine:
    """The strategy named ``"mp"`` or ``"sir"`` (a strategy object is returned as it is)."""
    if isinstance(method, (MP, SIR)):
        return method
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or a strategy (km.MP(), km.SIR(...)), got {method!r}")
    return MP() if method == "mp" else SIR(n_particles, generator)


def combine(message_probs: Tensor, log_likelihood: Tensor, method: str = "mp", n_particles: int = 1000,
            generator: torch.Generator | None = None) -> Tensor:
    """``strategy(method, n_particles, generator)(message_probs, log_likelihood)``: the posterior ``N×K``.

    Args:
        message_probs: :math:`m`, ``N×K`` non-negative (rows are normalised here).
        log_likelihood: :math:`\\ell`, ``N×K`` (``-inf`` allowed for impossible classes).
        method: ``"mp"`` (exact) or ``"sir"`` (sampling-importance-resampling).
        n_particles: :math:`P` for ``"sir"``.
        generator: random source for ``"sir"`` (``None``: torch's global generator).
    """
    return strategy(method, n_particles, generator)(message_probs, log_likelihood)
