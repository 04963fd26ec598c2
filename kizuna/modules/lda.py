r"""`LDA`: latent Dirichlet allocation, the one-modality case of `kizuna.modules.MLDA`.

.. math::
    \theta_d \sim \mathrm{Dir}(\alpha),\quad \phi_k \sim \mathrm{Dir}(\beta),\quad
    z_{di} \sim \mathrm{Cat}(\theta_d),\quad w_{di} \sim \mathrm{Cat}(\phi_{z_{di}})

(Blei, Ng & Jordan 2003), fitted by the blocked collapsed Gibbs sampler described in
`kizuna.modules.mlda` (Griffiths & Steyvers 2004; Newman et al. 2009). The scikit-learn surface takes
one N×V count matrix; as a module it has one child (an `Observation` of counts, or a module's class
posteriors) and behaves exactly as an MLDA with that single modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kizuna.modules.base import GraphError, Module
from kizuna.modules.mlda import MLDA

Tensor = torch.Tensor


class LDA(MLDA):
    """LDA (scikit-learn's ``LatentDirichletAllocation`` names; see `MLDA` for every argument).

    Args:
        n_components: number of topics K.
        weight: SERKET's modality weight for the single child (None: raw counts).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.poisson(torch.tensor([[9.0, 9, 0, 0]]).expand(10, 4), generator=g),
        ...                torch.poisson(torch.tensor([[0.0, 0, 9, 9]]).expand(10, 4), generator=g)])
        >>> lda = LDA(2, max_iter=30, random_state=0).fit(x)
        >>> lda.components_.shape, bool(lda.predict(x)[0] != lda.predict(x)[-1])
        (torch.Size([2, 4]), True)
    """

    def __init__(self, n_components: int = 10, doc_topic_prior: float | None = None,
                 topic_word_prior: float | None = None, max_iter: int = 100, n_blocks: int = 16, n_init: int = 1,
                 random_state: int | None = None, category: Any = None, weight: float | None = None,
                 name: str | None = None, learnable: bool = True, *, alpha: float | None = None,
                 beta: float | None = None, n_iter: int | None = None) -> None:
        super().__init__(n_components, None if weight is None else [weight], category, doc_topic_prior,
                         topic_word_prior, max_iter, n_blocks, n_init, random_state, name, learnable,
                         alpha=alpha, beta=beta, n_iter=n_iter)

    def connect(self, *children: Module) -> Module:
        if len(self.children) + len(children) != 1:
            raise GraphError(f"LDA {self.name} has one modality (one child); use MLDA for several")
        return super().connect(*children)

    def _as_list(self, X: Any) -> list[Any]:
        return [X]

    def sample(self, n_samples: int = 1, n_tokens: Sequence[int] | int = 100,
               random_state: int | None = None) -> tuple[Tensor, Tensor]:
        """``n_samples`` documents of ``n_tokens`` words: (counts N×V, θ N×K)."""
        counts, theta = super().sample(n_samples, n_tokens, random_state)
        return counts[0], theta

    @property
    def topic_word_(self) -> Tensor:
        """:math:`\\hat\\phi` (K×V), rows sum to 1."""
        return self._topic_words()[0]

    components_ = topic_word_
