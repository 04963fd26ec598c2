r"""`SpatialConcept`: the spatial-concept module of SpCoA (Taniguchi et al. 2016, 2017) in a module graph.

Its children are a position module (a `GMM` over the positions: its class posterior is the
likelihood of each position component, :math:`p(x_n\mid i_n{=}k)` up to a per-event constant) and one
or more count modalities (``data`` messages: an `Observation` of word counts, a `WordSegmenter`, an
`Observation` of view features); the first count child is the words. Each update runs ``sweeps``
collapsed Gibbs sweeps of `kizuna.modules.spatial_concept_gibbs.ConceptSampler` over
:math:`(c_n, i_n)` jointly and sends

* **up** the concept posterior :math:`p(c_n{=}l \mid \cdot)` (``N×L``, from the last sweep's conditionals);
* **down** to the GMM the component prior
  :math:`p(i_n{=}k \mid c_n, \cdot) = \frac{N_{c_n k} + \gamma}{N_{c_n} + K\gamma}`, which replaces its mixing
  weights (so the GMM resamples its components as the concepts see them);
* **down** to a count child that receives priors (a `WordSegmenter`) the predictive
  :math:`p(v\mid\text{event } n) = \sum_l p(c_n{=}l\mid\cdot)\,\mathbb E[\theta_{lv}]`, or the concept posterior
  itself when the child asks for it (``prior_over == "classes"``: a segmenter choosing among its chains).

``predict_words(positions)`` gives :math:`p(w \mid x) = \sum_l p(l\mid x)\,\mathbb E[\theta_{lw}]` with
:math:`p(l\mid x) \propto \hat\pi_l\sum_k\hat\phi_{lk}\,p(x\mid k)` (the GMM's predictive), and
``predict_position(word_counts)`` the mean of the component :math:`k` maximising
:math:`p(l\mid w)\,\hat\phi_{lk}\,|\Sigma_k|^{-1/2}` (the highest peak of the position density).
``n_concepts_`` counts the concepts that hold at least ``min_share`` of the events. It takes no class prior
from above (``takes_no_prior``): a parent that would send one (an MM, an MLDA, a TailToTail) is refused at
``connect``, where the prior was dropped without a word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import logsumexp

from kizuna._data import check_count
from kizuna.modules.base import ClassModule, Message, Module
from kizuna.modules.context import UpdateContext
from kizuna.modules.gmm import GMM
from kizuna.modules.npylm import temperatures
from kizuna.modules.spatial_concept_gibbs import ConceptSampler, FixedPositions


class SpatialConcept(ClassModule):
    """Spatial concepts over a position GMM and count modalities (see the module docstring).

    Args:
        n_concepts: :math:`L`, the truncation of the stick-breaking prior.
        category: true labels, only for reporting.
        alpha: :math:`\\alpha` of the concepts' stick-breaking prior.
        gamma: :math:`\\gamma` of each concept's Dirichlet over position components.
        beta: :math:`\\beta` of every count modality (a float, or one per modality).
        sweeps: Gibbs sweeps per update.
        n_init: independent chains of the first update (each a sequential initialisation and ``sweeps``
            sweeps); the one with the largest collapsed joint probability is kept.
        min_share: share of the events a concept must hold to count in ``n_concepts_``.
        anneal: starting temperature of the first update's sweeps (conditionals raised to :math:`1/T`, ``T``
            falling to 1 over 70% of the sweeps; `kizuna.modules.npylm.temperatures`); 1 (default): none.
        split_merge: split-merge proposals per sweep (Jain & Neal 2004,
            `kizuna.modules.spatial_concept_split_merge`), which split a concept holding two places; 0: none.
        launch_scans: restricted Gibbs scans that refine each split-merge launch state.
        random_state: seed of ``update()`` called without a graph (`kizuna.modules.rng`); in a graph every
            update draws from the graph's generator.
    """

    accepts: ClassVar[tuple[str, ...]] = ("posterior", "data")
    sends_priors_down: ClassVar[bool] = True  # class priors to the children whose posteriors it takes
    sends: ClassVar[str] = "posterior"
    takes_no_prior: ClassVar[str] = ("its concepts have a stick-breaking prior of their own, and its Gibbs sampler "
                                     "takes no per-event class prior; give the other modalities to it as count "
                                     "children instead")
    architecture: ClassVar[tuple[str, ...]] = ("n_classes",)

    @dataclass
    class State(ClassModule.State):
        """Also the chain's assignments (2×N: concept and position component of every event); the sampler
        is rebuilt from them and the children's last messages when it is needed after a load."""

        chain: torch.Tensor | None = None

    def __init__(self, n_concepts: int = 10, category: Any = None, alpha: float = 0.1, gamma: float = 0.1,
                 beta: float | Sequence[float] = 0.5, sweeps: int = 20, n_init: int = 4, min_share: float = 0.05,
                 anneal: float = 1.0, split_merge: int = 0, launch_scans: int = 3, random_state: int | None = None,
                 name: str | None = None) -> None:
        super().__init__(n_concepts, category, name, random_state=random_state)
        positive = np.asarray([alpha, gamma, *np.atleast_1d(np.asarray(beta, dtype=np.float64))], dtype=np.float64)
        if not (np.all(positive > 0) and np.all(np.isfinite(positive))):  # NaN and inf passed "<= 0"
            raise ValueError(f"SpatialConcept {self.name}: need finite alpha, gamma, beta > 0, got alpha={alpha}, "
                             f"gamma={gamma}, beta={beta}")
        for what, value, least in (("sweeps", sweeps, 1), ("n_init", n_init, 1), ("split_merge", split_merge, 0),
                                   ("launch_scans", launch_scans, 0)):
            check_count(f"SpatialConcept {self.name}: {what}", value, least)  # 2.5 failed later, in the fit
        if not 0 <= min_share < 1:
            raise ValueError(f"SpatialConcept {self.name}: min_share is a share of the events, in [0, 1), got "
                             f"{min_share}")
        if not anneal >= 1 or anneal == float("inf"):  # 0 divided by zero, negative values gave negative temperatures
            raise ValueError(f"SpatialConcept {self.name}: anneal is the first sweep's temperature, falling to 1 "
                             f"(with one sweep: none): a finite number >= 1, got {anneal}")
        self.split_merge, self.launch_scans = split_merge, launch_scans
        self.alpha, self.gamma, self.beta, self.sweeps, self.n_init = alpha, gamma, beta, sweeps, n_init
        self.min_share, self.anneal = min_share, anneal
        self._sampler: ConceptSampler | None = None
        self.chain: torch.Tensor | None = None

    @property
    def sampler_(self) -> ConceptSampler | None:
        """The Gibbs sampler of the last update (rebuilt from the saved chain after a load)."""
        if self._sampler is None and self.chain is not None:
            forward = [c.message_to(self) for c in self.children]  # what `_update` read
            if any(m is None for m in forward):
                raise RuntimeError(f"SpatialConcept {self.name}: the children's messages are needed to rebuild the "
                                   "sampler; load the whole graph (Graph.load), not this module alone")
            pos, counts = self._split(forward)
            c, i = self.chain.cpu().numpy()
            self._sampler = self._new_sampler(pos, counts, c.copy(), i.copy())
        return self._sampler

    def _before_load(self, state: dict[str, Any]) -> None:
        self._sampler = None

    @staticmethod
    def _random(ctx: UpdateContext) -> np.random.Generator:
        """A numpy generator seeded by one draw from the sweep's generator (the sampler is numpy code)."""
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=ctx.generator)))

    def _new_sampler(self, pos: Message, counts: list[Message], c: np.ndarray, i: np.ndarray) -> ConceptSampler:
        log_lik = np.log(pos.value.detach().cpu().double().numpy().clip(1e-300))
        data = [m.value.cpu().double().numpy() for m in counts]
        return ConceptSampler(FixedPositions(log_lik), data, self.n_classes, self.alpha, self.gamma,
                              self._betas(len(counts)), c, i, self.split_merge, self.launch_scans)

    def _split(self, forward: list[Message]) -> tuple[Message, list[Message]]:
        positions = [m for m in forward if m.kind == "posterior"]
        counts = [m for m in forward if m.kind == "data"]
        if len(positions) != 1 or not counts:
            raise ValueError(f"SpatialConcept {self.name} needs one position module (a GMM, sending 'posterior') and "
                             f"at least one count child; got {[m.sender for m in forward]}")
        for m in counts:
            if (m.value < 0).any():
                raise ValueError(f"SpatialConcept {self.name}: the counts from {m.sender} must be non-negative")
        return positions[0], counts

    def _betas(self, n: int) -> list[float]:
        betas = np.broadcast_to(np.asarray(self.beta, dtype=np.float64), (n,)) if np.ndim(self.beta) == 0 \
            else np.asarray(self.beta, dtype=np.float64)
        if betas.shape != (n,):
            raise ValueError(f"SpatialConcept {self.name}: beta has {betas.size} values for {n} count modalities")
        return betas.tolist()

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        pos, counts = self._split(forward)
        n = pos.n
        self.check_category(n)
        rng = self._random(ctx)
        old = self.sampler_
        if old is None or old.state.c.shape[0] != n or old.n_components != pos.width:
            old, c, i = None, np.zeros(n, dtype=np.int64), pos.value.argmax(1).cpu().numpy()
        else:
            c, i = old.state.c, old.state.i
        chains = 1 if old is not None else self.n_init
        best = None
        for _ in range(chains):
            sampler = self._new_sampler(pos, counts, c, i)
            if old is None:  # a fresh chain starts from the sequential initialisation, then anneals
                sampler.initialize(rng)
            schedule = temperatures(self.sweeps, self.anneal, 0.7) if old is None else [1.0] * self.sweeps
            for temperature in schedule:
                sampler.sweep(rng, temperature)
            if best is None or sampler.log_joint() > best.log_joint():
                best = sampler
        self._sampler = best
        self.chain = torch.as_tensor(np.stack([best.state.c, best.state.i]))
        dtype = pos.value.dtype
        self.posterior = torch.as_tensor(self.sampler_.posterior, dtype=dtype)
        down: dict[Module, Message] = {}
        data_index = {id(m): j for j, m in enumerate(counts)}
        for child, msg in zip(self.children, forward):  # forward messages come in the children's order
            if "prior" not in child.receives:
                continue
            if msg.kind == "posterior":
                value = torch.as_tensor(self.sampler_.component_prior(), dtype=dtype)
            elif getattr(child, "prior_over", "words") == "classes":  # a WordSegmenter choosing among its chains
                value = self.posterior
            else:
                theta = self.sampler_.feature_distributions(data_index[id(msg)])
                value = torch.as_tensor(self.sampler_.posterior @ theta, dtype=dtype)
            down[child] = self.message("prior", value, receiver=child, variable=msg.variable)
        return self.message("posterior", self.posterior), down

    # -------------------------------------------------------------- predictions
    def _fitted(self) -> tuple[ConceptSampler, GMM]:
        gmms = [c for c in self.children if isinstance(c, GMM)]
        if self.sampler_ is None or len(gmms) != 1:
            raise RuntimeError(f"SpatialConcept {self.name} predicts after update(), with one GMM child")
        return self.sampler_, gmms[0]

    @property
    def n_concepts_(self) -> int:
        """Number of concepts that are the most probable concept of at least ``min_share`` of the events
        (a DP mixture also keeps a few stray events in small concepts; ``n_nonempty_`` counts those too)."""
        share = np.bincount(self.classes.cpu().numpy(), minlength=self.n_classes) / self.classes.shape[0]
        return int(((share >= self.min_share) & (share > 0)).sum())  # (min_share=0: not the empty ones)

    @property
    def n_nonempty_(self) -> int:
        """Number of concepts that are the most probable concept of at least one event."""
        return int(np.unique(self.classes.cpu().numpy()).size)

    def predict_concepts(self, positions: Any) -> np.ndarray:
        """:math:`p(l \\mid x)` (M×L) at new positions."""
        sampler, gmm = self._fitted()
        # log p(x | k), the GMM's own predictive densities (recovered from predict_proba, clipped at 1e-300, they were
        # all alike where the posterior underflowed: far from the components, concepts were told apart wrongly)
        log_p_x = gmm._log_joint(gmm._as_x(positions), mixing=False).double().cpu().numpy()
        pi, phi = sampler.weights()
        log_joint = np.log(pi)[None, :] + logsumexp(np.log(phi)[None, :, :] + log_p_x[:, None, :], axis=2)
        return np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))

    def _vocabulary_text(self) -> str:
        """Where the words' columns are named: the first count child's ``vocabulary_`` (a `WordSegmenter`), or the
        columns of the counts given to it (an `Observation`: e.g. ``simulated_house(...)["vocabulary"]``)."""
        words = next((c for c in self.children if c.sends == "data"), None)
        if words is None:
            return "the first count child's vocabulary"
        who = f"{type(words).__name__} {words.name}"
        if hasattr(words, "vocabulary_"):
            return f"the vocabulary of the first count child, {who} (its vocabulary_)"
        return (f"the vocabulary of the first count child, {who} (the columns of the counts it was given, e.g. "
                f"simulated_house(...)['vocabulary'])")

    def predict_words(self, positions: Any) -> np.ndarray:
        """:math:`p(w \\mid x)` (M×V) over the first count child's vocabulary."""
        return self.predict_concepts(positions) @ self.sampler_.feature_distributions(0)

    def predict_position(self, word_counts: Any) -> np.ndarray:
        """The most probable position (M×D, D the positions' dimension) of each row of word counts: the mean of the
        position component :math:`k` with the highest peak of the position density given the words,
        :math:`\\arg\\max_k p(k \\mid w)\\,|\\Sigma_k|^{-1/2}` (not the component of largest probability: a broad
        component is likely but its peak is low).

        ``word_counts``: M×V counts over the first count child's vocabulary (a `WordSegmenter`'s ``vocabulary_``, or
        the columns of the counts given to an `Observation`, e.g. ``simulated_house(...)["vocabulary"]``), not words:
        the word ``w`` alone is a row with 1 in the column of ``w``. Words (strings) are a ValueError saying so
        (numpy's bare "could not convert string to float" before). A row with no count (a word outside the
        vocabulary, e.g. one never heard, counts nothing) is a ValueError naming it: it holds no evidence for a place
        (the prior's sharpest component came back, as if it were an answer)."""
        sampler, gmm = self._fitted()
        theta = sampler.feature_distributions(0)
        try:
            y = np.atleast_2d(np.asarray(word_counts, dtype=np.float64))
        except ValueError as err:  # words given as strings, as the docs page once said
            raise ValueError(f"SpatialConcept {self.name}: predict_position takes word counts, an M x "
                             f"{theta.shape[1]} array of counts over {self._vocabulary_text()} (a word: a row with 1 "
                             f"in its column), got {word_counts!r}"[:600]) from err
        if y.ndim != 2:  # (a 3-D array was said to have the wrong number of columns)
            raise ValueError(f"SpatialConcept {self.name}: word counts are rows of counts (M x {theta.shape[1]}), got "
                             f"shape {y.shape}")
        if y.shape[1] != theta.shape[1]:
            raise ValueError(f"SpatialConcept {self.name}: word counts have {y.shape[1]} columns, the words "
                             f"{theta.shape[1]}")
        bad = ~np.isfinite(y) | (y < 0)
        if bad.any():  # a NaN row scored NaN everywhere and argmax took the first place, silently
            r, col = (int(k) for k in np.argwhere(bad)[0])
            raise ValueError(f"SpatialConcept {self.name}: word counts must be finite and non-negative, got "
                             f"{y[r, col]} at row {r}, column {col}")
        empty = np.flatnonzero(y.sum(1) == 0)
        if empty.size:  # (the prior's sharpest component came back silently: an unknown word sent to a place)
            rows = ", ".join(map(str, empty[:10])) + (f", ... ({empty.size} rows)" if empty.size > 10 else "")
            raise ValueError(f"SpatialConcept {self.name}: word counts row{'s' if empty.size > 1 else ''} {rows} "
                             f"hold{'' if empty.size > 1 else 's'} no word of the vocabulary: no evidence for a place "
                             f"(a word outside the vocabulary, e.g. one never heard, counts nothing); drop the row")
        pi, phi = sampler.weights()
        log_l = np.log(pi)[None, :] + y @ np.log(theta).T  # log p(l) p(w | l), up to a constant
        post = np.exp(log_l - logsumexp(log_l, axis=1, keepdims=True))
        cov = np.asarray(gmm.covariances_)
        peak = (np.prod(cov, -1) if cov.ndim == 2 else np.linalg.det(cov)) ** -0.5  # a diagonal GMM: K x D variances
        score = (post @ phi) * peak[None, :]
        return np.asarray(gmm.means_)[score.argmax(1)]
