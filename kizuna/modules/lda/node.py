r"""`MLDA` and `LDA` as graph nodes (SERKET's MLDA); each is also its scikit-learn estimator.

Each child is a modality: an `Observation` of counts, or a module's class posteriors, which become
``weights[m]`` class-word tokens per sample. Without a weight, counts are kept as they are and a child's
class posterior gets half as many tokens per sample as the counts of the other children have on average
(100 when all children send posteriors): a summary of another modality does not outweigh the observations
(a one-hot posterior as 100 tokens next to 8 raw words makes the MLDA copy the child's clusters). A
weighting where one modality has more than `LOPSIDED` times the tokens per sample of another warns.
The node samples topics under its parent's class prior :math:`\pi_{dk}` and sends

* **up** :math:`\hat\theta_d` (``"posterior"``). As in SERKET, :math:`\hat\theta_d` carries the influence of
  the parent's prior (the counts were sampled under it): topic proportions have no exact "posterior
  without the parent" the way a single class does;
* **down**, to a child that sends class posteriors, the predicted class distribution
  :math:`\sum_k \hat\theta_{dk}\hat\phi^m_{kj}` (``"prior"``).

``prior_per`` says how often the parent's prior counts: ``"token"`` (SERKET's: it multiplies the
conditional of every token, so a sample of :math:`T_d` tokens meets it :math:`T_d` times) or
``"sample"`` (once per sample: :math:`\pi_{dk}^{1/T_d}` per token,
`kizuna.modules.lda.algorithms.prior_once_per_sample`). The chain continues across updates.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kizuna.modules.base import ClassModule, GraphError, Message, Module
from kizuna.modules.context import UpdateContext
from kizuna.modules.lda import algorithms as algo
from kizuna.modules.lda.estimator import LatentDirichletAllocation, MultimodalLDA, table_dtype
from kizuna.modules.lda.sampler import as_counts
from kizuna.modules.state import added_field

Tensor = torch.Tensor
POSTERIOR_WEIGHT = 100.0  # tokens per sample for a child's class posterior when no child sends counts
LOPSIDED = 10.0  # a modality with more than this many times the tokens per sample of another: a warning
PRIOR_PER = ("token", "sample")


def warn_if_lopsided(counts: Sequence[Tensor], names: Sequence[str], who: str) -> None:
    """Warn when one modality has more than `LOPSIDED` times the mean tokens per sample of another."""
    tokens = [float(c.sum(1).double().mean()) for c in counts]
    high, low = max(range(len(tokens)), key=tokens.__getitem__), min(range(len(tokens)), key=tokens.__getitem__)
    if tokens[high] > LOPSIDED * max(tokens[low], 1e-12):
        warnings.warn(f"{who}: {names[high]} has {tokens[high]:.0f} tokens per sample against {tokens[low]:.0f} "
                      f"for {names[low]}, so the topics mostly follow {names[high]}; give weights=[...] "
                      "(tokens per sample of each modality) to balance them", UserWarning, stacklevel=4)


class MLDA(ClassModule, MultimodalLDA):
    """Multimodal LDA module / estimator (see `MultimodalLDA` for the model and the other arguments).

    Args:
        n_components: number of topics (classes) K.
        weights: per child (modality), tokens per sample (SERKET's ``weights``); None keeps raw counts.
        category: reference labels, for ``accuracy`` / ``ari`` / ``nmi`` only.
        prior_per: ``"token"`` or ``"sample"`` (see the module docstring).
        name, learnable: see `kizuna.modules.Module`.
    """

    accepts: ClassVar[tuple[str, ...]] = ("data", "posterior")
    sends_priors_down: ClassVar[bool] = True  # class priors to the children whose posteriors it takes
    sends: ClassVar[str] = "posterior"
    receives: ClassVar[tuple[str, ...]] = ("prior",)
    # theta carries its parents' priors already (see the module docstring): every parent reads it as it is, the
    # others' priors are not multiplied in again (`Module.message_to`)
    up_excludes_priors: ClassVar[bool] = False
    scheduled: ClassVar[tuple[str, ...]] = ("max_iter",)
    architecture: ClassVar[tuple[str, ...]] = ("n_components", "weights")

    @dataclass
    class State(ClassModule.State):
        """Also the topics (ΣV×K) and the vocabulary sizes."""

        _phi: Tensor | None = None
        _sizes: list[int] | None = None
        n_iter_: int | None = added_field()  # (load_module left it None)

    def __init__(self, n_components: int = 10, weights: Sequence[float | None] | None = None, category: Any = None,
                 *, doc_topic_prior: float | None = None, topic_word_prior: float | None = None, max_iter: int = 100,
                 n_blocks: int = 16, n_init: int = 1, prior_per: str = "token",
                 random_state: int | torch.Generator | None = None, name: str | None = None, learnable: bool = True,
                 alpha: float | None = None, beta: float | None = None, n_iter: int | None = None,
                 rounding: str = "round", backend: str = "auto") -> None:
        ClassModule.__init__(self, n_components, category, name, learnable, random_state)
        MultimodalLDA.__init__(self, n_components, weights, doc_topic_prior=doc_topic_prior,
                               topic_word_prior=topic_word_prior, max_iter=max_iter, n_blocks=n_blocks, n_init=n_init,
                               random_state=random_state, alpha=alpha, beta=beta, n_iter=n_iter, rounding=rounding,
                               backend=backend)
        self.prior_per = prior_per
        self._validate()

    def _validate(self) -> None:
        super()._validate()
        if self.prior_per not in PRIOR_PER:
            raise ValueError(f"{self._owner}: prior_per must be one of {PRIOR_PER}, got {self.prior_per!r}")

    def _before_load(self, state: dict[str, Any]) -> None:
        self._chain = None  # a loaded state starts a new chain on the loaded topics

    def fit(self, X: Any, y: Any = None) -> MLDA:
        """See `MultimodalLDA.fit`; also sets ``posterior`` (:math:`\\hat\\theta` of the training samples)."""
        super().fit(X, y)
        self.posterior = self._doc_topic
        return self

    @property
    def doc_topic_(self) -> Tensor:
        """:math:`\\hat\\theta` of the samples of the last ``fit`` or ``update`` (N×K)."""
        return self._posterior()

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        n, weights = forward[0].n, self._weights()
        self.check_category(n)
        if weights is not None and len(weights) != len(forward):
            raise ValueError(f"{self.name}: {len(weights)} weights for {len(forward)} children")
        what = [f"{self.name}: message from {msg.sender}" for msg in forward]
        counts = [as_counts(msg.value, self._child_weight(weights, m, msg.kind), what[m], self.rounding)
                  if msg.kind != "posterior" else None for m, msg in enumerate(forward)]
        raw = [float(c.sum(1).double().mean()) for c in counts if c is not None]
        balance = max(1.0, round(sum(raw) / len(raw) / 2)) if raw else POSTERIOR_WEIGHT
        counts = [c if c is not None else as_counts(msg.value, self._child_weight(weights, m, msg.kind, balance),
                                                    what[m], self.rounding)
                  for m, (c, msg) in enumerate(zip(counts, forward))]
        if self._chain is None:  # once, when the chain starts
            warn_if_lopsided(counts, [f"modality {m} ({msg.kind} from {msg.sender})" for m, msg in enumerate(forward)],
                             self.name)
        if self._sizes is not None and [c.shape[1] for c in counts] != self._sizes:
            raise ValueError(f"{self.name}: children send widths {[c.shape[1] for c in counts]}, "
                             f"the topics were learnt on {self._sizes}")
        prior = self.class_prior(backward, n)
        if prior is not None and self.prior_per == "sample":
            prior = algo.prior_once_per_sample(prior, counts)
        # messages in the widest floating dtype of the children's (the first child's only: a float64 graph ran in
        # float32 when its first child was an integer word-count observation)
        dtype = functools.reduce(torch.promote_types, [m.value.dtype for m in forward if m.value.is_floating_point()],
                                 torch.float32)
        # the count tables in that dtype while it counts every modality's tokens by ones, else in float64 (as the
        # estimator's: float32 tables of more than 2^24 tokens drifted); the messages keep the graph's dtype
        theta = self._sweep(counts, table_dtype(dtype, counts), prior, ctx).to(dtype)
        self.posterior = theta
        down = {}
        for m, (child, msg) in enumerate(zip(self.children, forward)):
            if msg.kind == "posterior" and "prior" in child.receives:
                pred = theta @ self._topic_words()[m].to(theta.dtype)
                down[child] = self.message("prior", pred / pred.sum(1, keepdim=True), receiver=child)
        return self.message("posterior", theta), down

    @staticmethod
    def _child_weight(weights: list[float | None] | None, m: int, kind: str,
                      balance: float = POSTERIOR_WEIGHT) -> float | None:
        w = None if weights is None else weights[m]
        return balance if w is None and kind == "posterior" else w

    def _sweep(self, counts: algo.Counts, dtype: torch.dtype, prior: Tensor | None, ctx: UpdateContext) -> Tensor:
        """Continue the chain (a new one, ``n_init`` starts, at the first update or for another sample set)."""
        n, learn = counts[0].shape[0], self.learnable
        sweeps = self._sweeps(ctx.setting(self.name, "max_iter", None))
        if not learn and self._phi is None:
            raise RuntimeError(f"{self.name}: not fitted (no topics yet); fit it or update it with learnable=True")
        sizes = [c.shape[1] for c in counts]
        if self._chain is not None and self._chain.n == n:
            start = self.posterior if self.posterior is not None and self.posterior.shape[0] == n else None
            theta, phi = algo.sweep(self._chain, counts, start, self._phi, prior, learn, sweeps, dtype, ctx.generator)
        else:
            starts = int(self.n_init) if learn and self._phi is None else 1
            theta, phi, self._chain = algo.new_chain(counts, sizes, self._phi, prior, learn, starts, sweeps, dtype,
                                                     ctx.generator)
        if learn:
            self._phi, self._sizes = phi, sizes
        return theta


class LDA(MLDA, LatentDirichletAllocation):
    """LDA as a module: `MLDA` with one child (see `LatentDirichletAllocation` for the estimator).

    Args:
        n_components: number of topics K.
        weight: SERKET's modality weight for the single child (None: raw counts).
        other arguments: see `MLDA`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.poisson(torch.tensor([[9.0, 9, 0, 0]]).expand(10, 4), generator=g),
        ...                torch.poisson(torch.tensor([[0.0, 0, 9, 9]]).expand(10, 4), generator=g)])
        >>> lda = LDA(2, max_iter=30, random_state=0).fit(x)
        >>> lda.components_.shape, bool(lda.predict(x)[0] != lda.predict(x)[-1])
        (torch.Size([2, 4]), True)
    """

    architecture: ClassVar[tuple[str, ...]] = ("n_components", "weight")

    def __init__(self, n_components: int = 10, category: Any = None, *, doc_topic_prior: float | None = None,
                 topic_word_prior: float | None = None, max_iter: int = 100, n_blocks: int = 16, n_init: int = 1,
                 weight: float | None = None, prior_per: str = "token",
                 random_state: int | torch.Generator | None = None, name: str | None = None, learnable: bool = True,
                 alpha: float | None = None, beta: float | None = None, n_iter: int | None = None,
                 backend: str = "auto") -> None:
        self.weight = weight
        MLDA.__init__(self, n_components, None, category, doc_topic_prior=doc_topic_prior,
                      topic_word_prior=topic_word_prior, max_iter=max_iter, n_blocks=n_blocks, n_init=n_init,
                      prior_per=prior_per, random_state=random_state, name=name, learnable=learnable, alpha=alpha,
                      beta=beta, n_iter=n_iter, backend=backend)

    def connect(self, *children: Module) -> Module:
        if len(self.children) + len(children) != 1:
            raise GraphError(f"LDA {self.name} has one modality (one child); use MLDA for several")
        return super().connect(*children)
