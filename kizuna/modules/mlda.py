r"""Multimodal LDA by blocked collapsed Gibbs sampling, as a module and as a scikit-learn estimator.

Each sample :math:`d` (a "document", e.g. an object) has topic proportions
:math:`\theta_d \sim \mathrm{Dir}(\alpha)`; every token :math:`i` of every modality :math:`m` (bag of
visual / haptic / word features, or of a child module's classes) draws a topic
:math:`z_i \sim \theta_d` and a feature :math:`w_i \sim \phi^m_{z_i}`, :math:`\phi^m_k \sim \mathrm{Dir}(\beta)`
(Nakamura et al. 2009, "Grounding of word meanings in multimodal concepts using LDA"; one modality:
Blei et al. 2003). Integrating out :math:`\theta, \phi` gives the collapsed conditional
(Griffiths & Steyvers 2004), times the parent's class prior :math:`\pi_{dk}` (SERKET's bias):

.. math::
    p(z_i = k | z_{-i}, w) \propto \pi_{d k}\,(n^{-i}_{dk} + \alpha)\,
        \frac{n^{-i}_{k w_i, m} + \beta}{n^{-i}_{k, m} + V_m \beta}

**The sweep** (what "vectorised" means here precisely): each sweep visits the tokens of all
modalities in a fresh random order split into ``n_blocks`` blocks. All tokens of a block are
resampled at once, each from the conditional above with the counts of the state *before the
block* minus its own assignment; the count tables are then updated and the next block sees them.
(Inside a block the draws are simultaneous, so when the document-topic table outgrows the cache the
block's tokens are taken in storage order, document by document, each with the uniform it would have
had: the same draws, with the table read in order.)
With one token per block this is exact random-scan collapsed Gibbs; with fewer, larger blocks it is
the approximate-distributed-LDA scheme (Newman et al. 2009, JMLR 10:1801, "AD-LDA"), whose staleness
is one block. Estimates :math:`\hat\theta, \hat\phi` are averaged over the second half of the sweeps.

Modality weights follow SERKET: with ``weights[m]`` the counts of each sample are rescaled to sum to
``weights[m]`` (a child's class posterior :math:`p(c_d=j)` becomes ``weights[m]`` class-word tokens),
then rounded to integers. Without a weight, counts are kept as they are and a child's class posterior
gets half as many tokens per sample as the counts of the other children have on average (100 when all
children send posteriors): a summary of another modality does not outweigh the observations (a
one-hot posterior as 100 tokens next to 8 raw words makes the MLDA copy the child's clusters). A
weighting where one modality has more than `LOPSIDED` times the tokens per sample of another warns.
MLDA sends :math:`\hat\theta_d` up (``"posterior"``) and, to a child that sends
class posteriors, the predicted class distribution :math:`\sum_k \hat\theta_{dk}\hat\phi^m_{kj}` down (``"prior"``).
As in SERKET, :math:`\hat\theta_d` carries the influence of the parent's prior (the counts were sampled under
it): topic proportions have no exact "posterior without the parent" the way a single class does.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from kizuna.modules.base import ClassModule, Message, Module
from kizuna.modules.inference import sample_dirichlet

Tensor = torch.Tensor
POSTERIOR_WEIGHT = 100.0  # tokens per sample for a child's class posterior when no child sends counts
LOPSIDED = 10.0  # a modality with more than this many times the tokens per sample of another: a warning
SORT_ABOVE = 1 << 20  # document-topic tables larger than this (elements) outgrow the cache: read them in order


def as_counts(x: Any, weight: float | None, what: str) -> Tensor:
    """Integer counts (N×V long) from a count / probability matrix, rescaled to ``weight`` per row."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 2:
        raise ValueError(f"{what}: counts must be N x V, got shape {tuple(t.shape)}")
    t = t.double() if not t.is_floating_point() else t
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{what}: counts must be finite and non-negative")
    if weight is not None:
        t = t / torch.where(t.sum(1, keepdim=True) > 0, t.sum(1, keepdim=True), torch.ones_like(t[:, :1])) * weight
    return torch.round(t).long()


def warn_if_lopsided(counts: Sequence[Tensor], names: Sequence[str], who: str) -> None:
    """Warn when one modality has more than `LOPSIDED` times the mean tokens per sample of another."""
    tokens = [float(c.sum(1).double().mean()) for c in counts]
    high, low = max(range(len(tokens)), key=tokens.__getitem__), min(range(len(tokens)), key=tokens.__getitem__)
    if tokens[high] > LOPSIDED * max(tokens[low], 1e-12):
        warnings.warn(f"{who}: {names[high]} has {tokens[high]:.0f} tokens per sample against {tokens[low]:.0f} "
                      f"for {names[low]}, so the topics mostly follow {names[high]}; give weights=[...] "
                      "(tokens per sample of each modality) to balance them", UserWarning, stacklevel=3)


def _draw(p: Tensor, generator: torch.Generator | None, u: Tensor | None = None) -> Tensor:
    """One category per row of the unnormalised probabilities ``p`` (inverse CDF): the number of
    cumulative sums at or below :math:`u \\sum_k p_k`, found by binary search (no N×K comparison).
    ``u``: the uniforms (N×1), when drawn by the caller."""
    cdf = p.cumsum(1)
    if u is None:
        u = torch.rand(p.shape[0], 1, generator=generator, dtype=p.dtype, device=p.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1).clamp_max(p.shape[1] - 1)


class GibbsChain:
    """Token arrays and count tables of the collapsed Gibbs sampler over M modalities.

    Args:
        n_docs: N; sizes: vocabulary size V_m per modality; n_topics: K.
        alpha, beta: symmetric Dirichlet concentrations; dtype/device: of the count tables.
    """

    def __init__(self, n_docs: int, sizes: Sequence[int], n_topics: int, alpha: float, beta: float,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.n, self.sizes, self.k, self.alpha, self.beta = n_docs, list(sizes), n_topics, alpha, beta
        self.dtype, self.device = dtype, device
        self.offsets = [0, *np.cumsum(self.sizes).tolist()]
        self.counts: list[Tensor | None] = [None] * len(self.sizes)
        self.docs: list[Tensor] = [torch.zeros(0, dtype=torch.long, device=device)] * len(self.sizes)
        self.words, self.z = list(self.docs), list(self.docs)

    def set_counts(self, m: int, counts: Tensor | None, theta: Tensor | None, phi: Tensor | None,
                   generator: torch.Generator | None) -> None:
        """Tokens of modality m from ``counts`` (None: missing). New tokens draw their topic with
        probability :math:`\\propto \\theta_{dk}\\phi_{wk}` (``theta`` N×K, ``phi`` V_m×K; a missing factor is
        uniform); the tokens of unchanged counts keep their topics."""
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        if counts is None:
            self.counts[m], self.docs[m], self.words[m], self.z[m] = None, empty, empty, empty
            return
        if self.counts[m] is not None and torch.equal(self.counts[m], counts):
            return
        nz = counts.nonzero()
        reps = counts[nz[:, 0], nz[:, 1]]
        doc, word = nz[:, 0].repeat_interleave(reps), nz[:, 1].repeat_interleave(reps)
        p = torch.ones(doc.shape[0], self.k, dtype=self.dtype, device=self.device)
        p = p if theta is None else p * theta.to(self.dtype).index_select(0, doc)
        p = p if phi is None else p * phi.to(self.dtype).index_select(0, word)
        self.counts[m], self.docs[m], self.words[m], self.z[m] = counts, doc, word, _draw(p, generator)

    def run(self, n_sweeps: int, n_blocks: int, prior: Tensor | None, phi: Tensor | None,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``n_sweeps`` sweeps; returns (θ̂ N×K, φ̂ ΣV×K) averaged over the second half.

        With ``phi`` (ΣV×K) the topics are held fixed (inference for new samples); otherwise learnt.
        """
        doc, z = torch.cat(self.docs), torch.cat(self.z)
        mod = torch.cat([torch.full_like(d, m) for m, d in enumerate(self.docs)])
        word = torch.cat([w + self.offsets[m] for m, w in enumerate(self.words)])
        vocab_mod = torch.repeat_interleave(torch.arange(len(self.sizes), device=self.device),
                                            torch.tensor(self.sizes, device=self.device))
        vbeta = torch.tensor(self.sizes, dtype=self.dtype, device=self.device)[:, None] * self.beta
        ones = torch.ones(doc.shape[0], dtype=self.dtype, device=self.device)
        n_dk = torch.zeros(self.n, self.k, dtype=self.dtype, device=self.device).index_put_((doc, z), ones, True)
        n_wk = torch.zeros(self.offsets[-1], self.k, dtype=self.dtype, device=self.device)
        n_wk.index_put_((word, z), ones, True)
        n_mk = torch.zeros(len(self.sizes), self.k, dtype=self.dtype, device=self.device).index_add_(0, vocab_mod, n_wk)
        bias = prior.to(self.dtype).contiguous() if prior is not None else None
        theta_sum, phi_sum, kept = torch.zeros_like(n_dk), torch.zeros_like(n_wk), 0
        in_order = n_dk.numel() > SORT_ABOVE
        for sweep in range(n_sweeps):
            order = torch.randperm(doc.shape[0], generator=generator, device=self.device)
            for idx in order.tensor_split(max(1, min(n_blocks, doc.shape[0]))):
                u = torch.rand(idx.shape[0], 1, generator=generator, dtype=self.dtype, device=self.device)
                if in_order:  # storage (document) order reads the tables in order; each token keeps its uniform
                    idx, where = idx.sort()
                    u = u.index_select(0, where)
                d, w, m, old = (t.index_select(0, idx) for t in (doc, word, mod, z))
                # the conditional with every count, then each token's own topic corrected for its removal
                doc_tab = n_dk + self.alpha if bias is None else (n_dk + self.alpha) * bias
                word_tab = phi if phi is not None else (n_wk + self.beta) / (n_mk + vbeta).index_select(0, vocab_mod)
                p = doc_tab.index_select(0, d).mul_(word_tab.index_select(0, w))
                own = n_dk.take(d * self.k + old) - 1 + self.alpha
                own = own if bias is None else own * bias.take(d * self.k + old)
                own = own * (word_tab.take(w * self.k + old) if phi is not None else
                             (n_wk.take(w * self.k + old) - 1 + self.beta)
                             / (n_mk.take(m * self.k + old) - 1 + vbeta.take(m)))
                p.scatter_(1, old[:, None], own[:, None])
                new = _draw(p, generator, u)
                z.index_copy_(0, idx, new)
                sign = torch.cat([-ones[: d.shape[0]], ones[: d.shape[0]]])
                kk = torch.cat([old, new])
                n_dk.view(-1).index_add_(0, torch.cat([d, d]) * self.k + kk, sign)
                if phi is None:
                    n_wk.view(-1).index_add_(0, torch.cat([w, w]) * self.k + kk, sign)
                    n_mk.view(-1).index_add_(0, torch.cat([m, m]) * self.k + kk, sign)
            if 2 * sweep >= n_sweeps - 1:
                theta_sum += (n_dk + self.alpha) / (n_dk.sum(1, keepdim=True) + self.k * self.alpha)
                if phi is None:
                    phi_sum += (n_wk + self.beta) / (n_mk + vbeta).index_select(0, vocab_mod)
                kept += 1
        self.z = list(z.split([d.shape[0] for d in self.docs]))
        if kept == 0:  # no sweep: the estimates of the current state
            theta_sum, kept = (n_dk + self.alpha) / (n_dk.sum(1, keepdim=True) + self.k * self.alpha), 1
            if phi is None:
                phi_sum = (n_wk + self.beta) / (n_mk + vbeta)[vocab_mod]
        return theta_sum / kept, (phi_sum / kept if phi is None else phi)


class MLDA(ClassModule):
    """Multimodal LDA (see the module docstring for the model and the sampler).

    Args:
        n_components: number of topics (classes) K.
        weights: per modality, the number of tokens each sample's counts are rescaled to (SERKET's
            ``weights``), or None to keep raw counts (a child's class posterior then gets half the mean
            tokens per sample of the children that send counts; see the module docstring).
        category: reference labels, for ``accuracy`` / ``ari`` / ``nmi`` only.
        doc_topic_prior, topic_word_prior: :math:`\\alpha, \\beta` (default 1/K, as scikit-learn);
            ``alpha`` / ``beta`` are accepted as SERKET-style aliases.
        max_iter: Gibbs sweeps per `fit` / `transform` / module ``update`` (alias ``n_iter``).
        n_blocks: blocks per sweep (see the module docstring; more is closer to exact Gibbs, slower).
        n_init: independent starts of a new chain (`fit`, first ``update``); the most likely is kept.
        random_state: seed of `fit` / `transform` / `sample` and of ``update`` outside a `Graph`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> words = torch.cat([torch.poisson(torch.tensor([[8.0, 8, 0, 0]]).expand(20, 4), generator=g),
        ...                    torch.poisson(torch.tensor([[0.0, 0, 8, 8]]).expand(20, 4), generator=g)])
        >>> model = MLDA(2, max_iter=30, random_state=0).fit([words, words.flip(1)])
        >>> bool((model.predict([words, None])[:20] != model.predict([words, None])[20:]).all())
        True
    """

    accepts: ClassVar[tuple[str, ...]] = ("data", "posterior")
    sends: ClassVar[str] = "posterior"
    receives: ClassVar[tuple[str, ...]] = ("prior",)

    def __init__(self, n_components: int = 10, weights: Sequence[float | None] | None = None, category: Any = None,
                 doc_topic_prior: float | None = None, topic_word_prior: float | None = None, max_iter: int = 100,
                 n_blocks: int = 16, n_init: int = 1, random_state: int | None = None, name: str | None = None,
                 learnable: bool = True, *, alpha: float | None = None, beta: float | None = None,
                 n_iter: int | None = None) -> None:
        super().__init__(n_components, category, name, learnable)
        for a, b, what in ((alpha, doc_topic_prior, "alpha/doc_topic_prior"),
                           (beta, topic_word_prior, "beta/topic_word_prior")):
            if a is not None and b is not None:
                raise ValueError(f"{type(self).__name__}: give one of {what}, not both")
        self.n_components = n_components
        self.weights = None if weights is None else list(weights)
        self.doc_topic_prior = alpha if alpha is not None else doc_topic_prior
        self.topic_word_prior = beta if beta is not None else topic_word_prior
        self.max_iter = int(n_iter if n_iter is not None else max_iter)
        self.n_blocks, self.n_init, self.random_state = int(n_blocks), int(n_init), random_state
        if self.max_iter < 0 or self.n_blocks < 1 or self.n_init < 1:
            raise ValueError(f"{type(self).__name__}: max_iter must be >= 0, n_blocks and n_init >= 1")
        self._chain: GibbsChain | None = None
        self._phi: Tensor | None = None  # ΣV×K topic-word probabilities
        self._sizes: list[int] | None = None
        self._own_generator: torch.Generator | None = None

    # ------------------------------------------------------------ helpers
    @property
    def _alpha(self) -> float:
        return self.doc_topic_prior if self.doc_topic_prior is not None else 1.0 / self.n_components

    @property
    def _beta(self) -> float:
        return self.topic_word_prior if self.topic_word_prior is not None else 1.0 / self.n_components

    def _generator(self, device: torch.device, fresh: bool = False) -> torch.Generator | None:
        if self.generator is not None and not fresh:
            return self.generator
        if fresh or self._own_generator is None:
            self._own_generator = torch.Generator(device=device)
            if self.random_state is None:
                self._own_generator.seed()
            else:
                self._own_generator.manual_seed(self.random_state)
        return self._own_generator

    def _weight(self, m: int, kind: str, balance: float = POSTERIOR_WEIGHT) -> float | None:
        w = self.weights[m] if self.weights is not None else None
        return balance if w is None and kind == "posterior" else w

    def _as_list(self, X: Any) -> list[Any]:
        if isinstance(X, (list, tuple)):
            return list(X)
        return [X]

    def _counts(self, X: Any, what: str, allow_missing: bool) -> tuple[list[Tensor | None], torch.dtype]:
        xs = self._as_list(X)
        if self.weights is not None and len(self.weights) != len(xs):
            raise ValueError(f"{self.name}: {len(self.weights)} weights for {len(xs)} modalities")
        if self._sizes is not None and len(xs) != len(self._sizes):
            raise ValueError(f"{self.name}: fitted with {len(self._sizes)} modalities, got {len(xs)}")
        counts: list[Tensor | None] = []
        for m, x in enumerate(xs):
            if x is None and not allow_missing:
                raise ValueError(f"{self.name}: modality {m} is None; every modality is needed to fit")
            counts.append(None if x is None else as_counts(x, self._weight(m, "data"), f"{self.name} {what} {m}"))
        present = [c for c in counts if c is not None]
        if not present or any(c.shape[0] != present[0].shape[0] for c in present):
            raise ValueError(f"{self.name}: modalities must be given and agree on the number of samples, got "
                             f"{[None if c is None else tuple(c.shape) for c in counts]}")
        if self._sizes is not None:
            for m, c in enumerate(counts):
                if c is not None and c.shape[1] != self._sizes[m]:
                    raise ValueError(f"{self.name}: modality {m} has {c.shape[1]} features, "
                                     f"fitted with {self._sizes[m]}")
        first = next(x for x in xs if x is not None)
        dtype = first.dtype if isinstance(first, torch.Tensor) and first.is_floating_point() \
            else torch.get_default_dtype()
        return counts, dtype

    def _log_likelihood(self, counts: list[Tensor | None], theta: Tensor, phi: Tensor, offsets: list[int]) -> float:
        """:math:`\\sum_{m,d,w} n^m_{dw}\\log\\sum_k\\theta_{dk}\\phi^m_{kw}` over the given modalities."""
        return sum(float((c.to(theta.dtype) * torch.log(theta @ phi[offsets[m]:offsets[m + 1]].T.to(theta.dtype)))
                         .sum()) for m, c in enumerate(counts) if c is not None)

    def _run(self, counts: list[Tensor | None], dtype: torch.dtype, prior: Tensor | None, learn: bool,
             chain: GibbsChain | None, generator: torch.Generator | None) -> tuple[Tensor, GibbsChain]:
        """Sweeps on ``chain`` (continued when it matches); a new learning chain starts ``n_init`` times
        from random partitions of the samples and keeps the most likely."""
        present = next(c for c in counts if c is not None)
        n, device = present.shape[0], present.device
        sizes = [c.shape[1] if c is not None else self._sizes[m] for m, c in enumerate(counts)]
        if not learn and self._phi is None:
            raise RuntimeError(f"{self.name}: not fitted (no topics yet); fit it or update it with learnable=True")
        if chain is not None and chain.n == n and chain is self._chain:
            theta = self.posterior if self.posterior is not None and self.posterior.shape[0] == n else None
            return self._sweep(chain, counts, theta, dtype, prior, learn, sizes, generator)
        best, starts = None, self.n_init if learn and self._phi is None else 1
        for _ in range(starts):
            chain = GibbsChain(n, sizes, self.n_components, self._alpha, self._beta, dtype, device)
            # a random partition: each sample's tokens start in one random topic (k-means' random start)
            part = torch.randint(self.n_components, (n,), generator=generator, device=device)
            theta = 0.9 * torch.nn.functional.one_hot(part, self.n_components).to(dtype) + 0.1 / self.n_components
            theta = theta if self._phi is None else torch.full_like(theta, 1.0 / self.n_components)
            phi_before = self._phi
            out = self._sweep(chain, counts, theta, dtype, prior, learn, sizes, generator)
            score = self._log_likelihood(counts, out[0], self._phi, chain.offsets) if starts > 1 else 0.0
            if best is None or score > best[0]:
                best = (score, out, self._phi)
            self._phi = phi_before
        self._phi = best[2] if learn else self._phi
        return best[1]

    def _sweep(self, chain: GibbsChain, counts: list[Tensor | None], theta: Tensor | None, dtype: torch.dtype,
               prior: Tensor | None, learn: bool, sizes: list[int],
               generator: torch.Generator | None) -> tuple[Tensor, GibbsChain]:
        for m, c in enumerate(counts):
            phi = None if self._phi is None else self._phi[chain.offsets[m]:chain.offsets[m + 1]]
            chain.set_counts(m, None if c is None else c.to(chain.device), theta, phi, generator)
        theta, phi = chain.run(self.max_iter, self.n_blocks, prior, None if learn else self._phi.to(dtype), generator)
        if learn:
            self._phi, self._sizes = phi, sizes
        return theta, chain

    # ------------------------------------------------------------ scikit-learn API
    def fit(self, X: Any, y: Any = None) -> MLDA:
        """Learn the topics of ``X`` (a list with one N×V_m count matrix per modality) from a random start."""
        self._sizes, self._phi = None, None
        counts, dtype = self._counts(X, "modality", allow_missing=False)
        theta, self._chain = self._run(counts, dtype, None, True, None, self._generator(counts[0].device, True))
        self.posterior = theta
        return self

    def _theta(self, X: Any) -> Tensor:
        counts, dtype = self._counts(X, "modality", allow_missing=True)
        device = next(c for c in counts if c is not None).device
        return self._run(counts, dtype, None, False, None, self._generator(device, True))[0]

    def _out(self, value: Tensor, X: Any) -> Any:
        """Arrays in give arrays out; tensors give tensors."""
        first = next(x for x in self._as_list(X) if x is not None)
        return value if isinstance(first, Tensor) else value.cpu().numpy()

    def transform(self, X: Any) -> Any:
        """:math:`\\hat\\theta` (N×K) for new samples with the topics held fixed; a modality may be None."""
        return self._out(self._theta(X), X)

    def predict_proba(self, X: Any) -> Any:
        """Same as `transform`."""
        return self.transform(X)

    def predict(self, X: Any) -> Any:
        """The most probable topic of each sample."""
        return self._out(self._theta(X).argmax(1), X)

    def score(self, X: Any, y: Any = None) -> float:
        """Plug-in log-likelihood :math:`\\sum_{m,d,w} n^m_{dw}\\log\\sum_k\\hat\\theta_{dk}\\hat\\phi^m_{kw}` with
        :math:`\\hat\\theta` from `transform` (scikit-learn's ``score`` is a variational bound instead)."""
        counts, _ = self._counts(X, "modality", allow_missing=True)
        theta = self._theta(X)
        total = 0.0
        for m, c in enumerate(counts):
            if c is not None:
                probs = theta @ self._topic_words()[m].to(theta.dtype)
                total += float((c.to(theta.dtype) * torch.log(probs)).sum())
        return total

    def perplexity(self, X: Any) -> float:
        """:math:`\\exp(-\\mathrm{score}(X) / \\text{number of tokens})`."""
        counts, _ = self._counts(X, "modality", allow_missing=True)
        return float(np.exp(-self.score(X) / sum(int(c.sum()) for c in counts if c is not None)))

    def sample(self, n_samples: int = 1, n_tokens: Sequence[int] | int = 100,
               random_state: int | None = None) -> tuple[list[Tensor], Tensor]:
        """Draw :math:`\\theta_d \\sim \\mathrm{Dir}(\\alpha)` and ``n_tokens[m]`` tokens per modality:
        (list of N×V_m count matrices, θ N×K)."""
        if self._phi is None:
            raise RuntimeError(f"{self.name}: not fitted")
        g = torch.Generator()
        g.manual_seed(random_state) if random_state is not None else g.seed()
        theta = sample_dirichlet(torch.full((n_samples, self.n_components), self._alpha, dtype=torch.float64), g)
        sizes = [n_tokens] * len(self._sizes) if isinstance(n_tokens, int) else list(n_tokens)
        out = []
        for m, size in enumerate(sizes):
            probs = theta @ self._topic_words()[m].double().cpu()
            draws = torch.multinomial(probs, size, replacement=True, generator=g)
            out.append(torch.zeros_like(probs).scatter_add_(1, draws, torch.ones_like(draws, dtype=probs.dtype)))
        return out, theta

    def _topic_words(self) -> list[Tensor]:
        if self._phi is None:
            raise RuntimeError(f"{self.name}: not fitted")
        off = [0, *np.cumsum(self._sizes).tolist()]
        return [self._phi[off[m]:off[m + 1]].T for m in range(len(self._sizes))]

    @property
    def topic_word_(self) -> list[Tensor]:
        """Per modality, :math:`\\hat\\phi^m` (K×V_m), rows sum to 1."""
        return self._topic_words()

    components_ = topic_word_

    @property
    def doc_topic_(self) -> Tensor:
        """:math:`\\hat\\theta` of the training samples (N×K)."""
        return self._posterior()

    # ------------------------------------------------------------ module protocol
    def _update(self, forward: list[Message], backward: Message | None) -> tuple[Message, dict[Module, Message]]:
        n = forward[0].n
        self.check_category(n)
        if self.weights is not None and len(self.weights) != len(forward):
            raise ValueError(f"{self.name}: {len(self.weights)} weights for {len(forward)} children")
        counts = [as_counts(msg.value, self._weight(m, msg.kind), f"{self.name}: message from {msg.sender}")
                  if msg.kind != "posterior" else None for m, msg in enumerate(forward)]
        raw = [float(c.sum(1).double().mean()) for c in counts if c is not None]
        balance = max(1.0, round(sum(raw) / len(raw) / 2)) if raw else POSTERIOR_WEIGHT
        counts = [c if c is not None else as_counts(msg.value, self._weight(m, msg.kind, balance),
                                                    f"{self.name}: message from {msg.sender}")
                  for m, (c, msg) in enumerate(zip(counts, forward))]
        if self._chain is None:  # once, when the chain starts
            warn_if_lopsided(counts, [f"modality {m} ({msg.kind} from {msg.sender})" for m, msg in enumerate(forward)],
                             self.name)
        if self._sizes is not None and [c.shape[1] for c in counts] != self._sizes:
            raise ValueError(f"{self.name}: children send widths {[c.shape[1] for c in counts]}, "
                             f"the topics were learnt on {self._sizes}")
        prior = self.class_prior(backward, n)
        theta, self._chain = self._run(counts, forward[0].value.dtype, prior, self.learnable, self._chain,
                                       self._generator(forward[0].value.device))
        self.posterior = theta
        down = {}
        for m, (child, msg) in enumerate(zip(self.children, forward)):
            if msg.kind == "posterior" and "prior" in child.receives:
                pred = theta @ self._topic_words()[m].to(theta.dtype)
                down[child] = self.message("prior", pred / pred.sum(1, keepdim=True), receiver=child)
        return self.message("posterior", theta), down

    def config(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "weights": self.weights, "doc_topic_prior": self._alpha,
                "topic_word_prior": self._beta}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "phi": self._phi, "sizes": self._sizes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._phi, self._sizes, self._chain = state["phi"], state["sizes"], None
