r"""Multimodal LDA's inference around the Gibbs chain: pure functions of counts, a prior and topics.

* `sweep` places a sample set's tokens in a `GibbsChain` (new tokens draw their topic
  :math:`\propto \theta_{dk}\phi_{wk}`) and runs its sweeps, learning the topics or holding them fixed;
* `new_chain` starts ``n_starts`` chains from random partitions of the samples (each sample's tokens in
  one random topic, k-means' random start) and keeps the most likely (`log_likelihood`);
* `prior_once_per_sample` turns a parent's class prior counted once per token (SERKET's) into one
  counted once per sample.

Randomness comes only from the ``generator`` argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from kizuna.modules._backend import resolve_backend
from kizuna.modules.lda.sampler import GibbsChain

Tensor = torch.Tensor
Counts = list[Tensor | None]  # one N×V_m long matrix per modality (None: missing)


@dataclass(frozen=True)
class Sweeps:
    """The chain's settings: K topics, Dirichlet concentrations, sweeps per call and blocks per sweep; the
    backend of the sweep (`kizuna.modules._backend`) and the owner's name for its errors."""

    n_topics: int
    alpha: float
    beta: float
    n_sweeps: int
    n_blocks: int
    backend: str = "auto"
    owner: str = "MLDA"


def log_likelihood(counts: Counts, theta: Tensor, phi: Tensor, offsets: list[int]) -> float:
    """:math:`\\sum_{m,d,w} n^m_{dw}\\log\\sum_k\\theta_{dk}\\phi^m_{kw}` over the given modalities
    (``phi``: ΣV×K, modality ``m`` in rows ``offsets[m]:offsets[m + 1]``)."""
    # in place on the one N×V_m product (the count matrix was also copied to floating point, and a logarithm and a
    # product made two more): the same numbers
    return sum(float((theta @ phi[offsets[m]:offsets[m + 1]].T.to(theta.dtype)).log_().mul_(c).sum())
               for m, c in enumerate(counts) if c is not None)


def sweep(chain: GibbsChain, counts: Counts, theta: Tensor | None, phi: Tensor | None, prior: Tensor | None,
          learn: bool, s: Sweeps, dtype: torch.dtype, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Tokens of ``counts`` into ``chain`` (those of unchanged counts keep their topics), then ``s.n_sweeps``
    sweeps under the class prior ``prior`` (N×K or None): (θ̂ N×K, φ̂ ΣV×K; ``phi`` itself unless ``learn``)."""
    for m, c in enumerate(counts):
        part = None if phi is None else phi[chain.offsets[m]:chain.offsets[m + 1]]
        chain.set_counts(m, None if c is None else c.to(chain.device), theta, part, generator)
    backend = resolve_backend(s.backend, s.owner, chain.device)
    return chain.run(s.n_sweeps, s.n_blocks, prior, None if learn else phi.to(dtype), generator, backend)


def new_chain(counts: Counts, sizes: list[int], phi: Tensor | None, prior: Tensor | None, learn: bool,
              n_starts: int, s: Sweeps, dtype: torch.dtype, generator: torch.Generator | None
              ) -> tuple[Tensor, Tensor, GibbsChain]:
    """``n_starts`` chains from random partitions (from uniform θ when topics ``phi`` are given); the one of
    highest `log_likelihood` as (θ̂, φ̂, chain)."""
    present = next(c for c in counts if c is not None)
    n, device, k = present.shape[0], present.device, s.n_topics
    best: tuple[float, Tensor, Tensor, GibbsChain] | None = None
    for _ in range(n_starts):
        chain = GibbsChain(n, sizes, k, s.alpha, s.beta, dtype, device)
        part = torch.randint(k, (n,), generator=generator, device=device)
        theta = 0.9 * F.one_hot(part, k).to(dtype) + 0.1 / k
        theta = theta if phi is None else torch.full_like(theta, 1.0 / k)
        theta_hat, phi_hat = sweep(chain, counts, theta, phi, prior, learn, s, dtype, generator)
        topics = phi_hat if learn else phi
        score = log_likelihood(counts, theta_hat, topics, chain.offsets) if n_starts > 1 else 0.0
        if best is None or score > best[0]:
            best = (score, theta_hat, topics, chain)
    return best[1], best[2], best[3]


def prior_once_per_sample(prior: Tensor, counts: Counts) -> Tensor:
    """:math:`\\pi_{dk}^{1/T_d}`, renormalised, with :math:`T_d` the tokens of sample ``d`` over all modalities.

    The sampler multiplies its prior into the conditional of every token, so the chain's stationary law
    carries :math:`\\prod_i \\pi_{d z_i}`: counted :math:`T_d` times. With the root it carries
    :math:`\\prod_k \\pi_{dk}^{n_{dk}/T_d}` — the prior once, shared by the topics in proportion.
    A sample without tokens keeps the prior (it is not used).
    """
    tokens = sum(c.sum(1) for c in counts if c is not None).to(prior.device, prior.dtype)
    tempered = prior ** (1.0 / tokens.clamp(min=1)).unsqueeze(1)
    return tempered / tempered.sum(1, keepdim=True)
