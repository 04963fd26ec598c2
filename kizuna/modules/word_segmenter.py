r"""`WordSegmenter`: unsupervised word discovery (NPYLM) as an estimator and as a module.

As an estimator, ``fit(utterances)`` runs blocked Gibbs sweeps of `kizuna.modules.npylm.NPYLM`
over strings of symbols (one phoneme a character) and ``segment(utterances)`` returns the most
probable segmentation of each (Viterbi).

As a module its child is an `Observation` of the strings; it sends up the **word counts** of its
current segmentation, ``N×V`` over ``vocabulary_`` (the discovered words seen at least
``min_count`` times), exactly like an `Observation` of bag-of-words counts, so a concept module
takes either. A parent sends down :math:`q_n(w) = p(w \mid \text{event } n)` (a ``prior`` message
over the same vocabulary); the next update re-segments each utterance by SERKET's resampling of
hypotheses: ``n_candidates`` segmentations from the language model, one kept with weight
:math:`\prod_w (q_n(w) / \bar q(w))^{\lambda}` with :math:`\bar q` the mean of :math:`q_n` over events
(words outside the vocabulary weigh 1) and :math:`\lambda` = ``prior_weight``.

>>> rng = np.random.default_rng(0)
>>> lexicon = ["abc", "xy", "dog", "ek", "mimi", "tu"]
>>> utterances = ["".join(rng.choice(lexicon, size=rng.integers(1, 5))) for _ in range(150)]
>>> seg = WordSegmenter(n_iter=20, anneal=1.5, random_state=1).fit(utterances)
>>> seg.segment(["dogabcxy"])
[['dog', 'abc', 'xy']]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from kizuna.modules.base import Message, Module
from kizuna.modules.context import UpdateContext
from kizuna.modules.npylm import NPYLM, gibbs_sweep, random_segmentation, temperatures
from kizuna.modules.rng import generator_for
from kizuna.modules.symbols import decode_strings


class WordSegmenter(Module):
    """NPYLM word segmentation (see the module docstring).

    Args:
        max_word_length: :math:`L`.
        char_order: order of the character n-gram model.
        n_iter: Gibbs sweeps of ``fit`` and of a module's first update.
        sweeps_per_update: sweeps of every later update (with the parent's prior).
        n_candidates: segmentations drawn per utterance when a prior is resampled in.
        prior_weight: :math:`\\lambda`.
        min_count: a word enters ``vocabulary_`` when it occurs at least this often.
        init_length: ``None`` (default): Mochihashi et al.'s start, the first sweep segments the utterances one
            by one into an empty model; an integer: start from words of random lengths 1..``init_length``.
        length_correction: NPYLM's Poisson correction of word lengths (`kizuna.modules.npylm_length`).
        anneal: starting temperature of ``fit`` and of the first update (`kizuna.modules.npylm.temperatures`);
            1 (default): none. On Brent, annealing from the sequential start over-segments (docs/robotics.md).
        random_state: seed (the graph's generator seeds it in a graph).
    """

    accepts: ClassVar[tuple[str, ...]] = ("data",)
    sends: ClassVar[str] = "data"
    receives: ClassVar[tuple[str, ...]] = ("prior",)
    architecture: ClassVar[tuple[str, ...]] = ("max_word_length", "char_order")

    @dataclass
    class State(Module.State):
        """Also the utterances, their current segmentation and the vocabulary sent up; the language model
        is rebuilt from the segmentation (its table seatings drawn again) when it is needed after a load."""

        utterances_: list[str] = field(default_factory=list)
        segmentation_: list[list[str]] = field(default_factory=list)
        vocabulary_: list[str] = field(default_factory=list)

    def __init__(self, max_word_length: int = 10, char_order: int = 3, n_iter: int = 20, sweeps_per_update: int = 2,
                 n_candidates: int = 8, prior_weight: float = 1.0, min_count: int = 2, anneal: float = 1.0,
                 init_length: int | None = None, length_correction: bool = False,
                 random_state: int | None = None, name: str | None = None) -> None:
        super().__init__(name, random_state=random_state)
        if n_iter < 0 or sweeps_per_update < 0 or n_candidates < 1 or min_count < 1:
            raise ValueError(f"WordSegmenter {self.name}: need n_iter, sweeps_per_update >= 0 and n_candidates, "
                             f"min_count >= 1")
        self.max_word_length, self.char_order = max_word_length, char_order
        self.n_iter, self.sweeps_per_update, self.n_candidates = n_iter, sweeps_per_update, n_candidates
        self.prior_weight, self.min_count = prior_weight, min_count
        self.anneal, self.init_length, self.length_correction = anneal, init_length, length_correction
        self.model_: NPYLM | None = None
        self.utterances_: list[str] = []
        self.segmentation_: list[list[str]] = []
        self.vocabulary_: list[str] = []

    @staticmethod
    def _random(generator: torch.Generator) -> np.random.Generator:
        """A numpy generator seeded by one draw from ``generator`` (the sampler is numpy code)."""
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))

    def _before_load(self, state: dict) -> None:
        self.model_ = None

    def _rebuilt(self, rng: np.random.Generator) -> NPYLM | None:
        """The language model, rebuilt from the segmentation after a load (None before any fit)."""
        if self.model_ is None and self.segmentation_ and any(self.segmentation_):
            self.model_ = self._new_model(self.utterances_)
            for words in self.segmentation_:
                self.model_.add_sentence(words, rng)
        return self.model_

    @staticmethod
    def _check(utterances: Sequence[str]) -> list[str]:
        if isinstance(utterances, str) or not all(isinstance(s, str) and s for s in utterances) or not utterances:
            raise ValueError("WordSegmenter: utterances must be a non-empty list of non-empty strings")
        return list(utterances)

    def _new_model(self, utterances: list[str]) -> NPYLM:
        return NPYLM("".join(sorted(set("".join(utterances)))), self.max_word_length, self.char_order,
                     self.length_correction)

    def _start(self, utterances: list[str], rng: np.random.Generator) -> None:
        self.model_ = self._new_model(utterances)
        self.utterances_ = utterances
        if self.init_length is None:  # gibbs_sweep adds them one by one
            self.segmentation_ = [[] for _ in utterances]
            return
        self.segmentation_ = [random_segmentation(s, self.max_word_length, rng, self.init_length)
                              for s in utterances]
        for words in self.segmentation_:
            self.model_.add_sentence(words, rng)

    def fit(self, utterances: Sequence[str], y: None = None) -> WordSegmenter:
        """``n_iter`` blocked Gibbs sweeps from a random segmentation of ``utterances``."""
        rng = self._random(generator_for(self.random_state))
        self._start(self._check(utterances), rng)
        for temperature in temperatures(self.n_iter, self.anneal):
            gibbs_sweep(self.model_, self.utterances_, self.segmentation_, rng, temperature=temperature)
        return self

    def segment(self, utterances: Sequence[str]) -> list[list[str]]:
        """The most probable segmentation of each utterance under the fitted model."""
        model = self._rebuilt(self._random(generator_for(self.random_state)))
        if model is None:
            raise RuntimeError(f"WordSegmenter {self.name} is not fitted yet: call fit(utterances) or update()")
        return [model.viterbi(s) for s in self._check(utterances)]

    def word_counts(self) -> np.ndarray:
        """``N×V`` counts of ``vocabulary_`` in the current segmentation (recomputes ``vocabulary_``)."""
        freq = Counter(w for words in self.segmentation_ for w in words)
        self.vocabulary_ = sorted(w for w, c in freq.items() if c >= self.min_count)
        index = {w: i for i, w in enumerate(self.vocabulary_)}
        counts = np.zeros((len(self.segmentation_), max(1, len(self.vocabulary_))))
        for n, words in enumerate(self.segmentation_):
            for w in words:
                if w in index:
                    counts[n, index[w]] += 1
        return counts

    def _boosts(self, prior: torch.Tensor) -> list:
        q = prior.detach().cpu().double().numpy()
        lift = (q / q.mean(0, keepdims=True).clip(1e-300)) ** self.prior_weight
        index = {w: i for i, w in enumerate(self.vocabulary_)}
        return [lambda w, row=row: row[index[w]] if w in index else 1.0 for row in lift]

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        if len(forward) != 1:
            raise ValueError(f"WordSegmenter {self.name} segments one child's strings, got {len(forward)} children")
        rng = self._random(ctx.generator)
        if self._rebuilt(rng) is None:
            self._start(self._check(decode_strings(forward[0].value)), rng)
            schedule, boosts = temperatures(self.n_iter, self.anneal), None
        else:
            schedule = [1.0] * self.sweeps_per_update
            usable = backward is not None and backward.width == len(self.vocabulary_)
            boosts = self._boosts(backward.value) if usable else None
        for temperature in schedule:
            gibbs_sweep(self.model_, self.utterances_, self.segmentation_, rng, boosts, self.n_candidates, temperature)
        counts = torch.as_tensor(self.word_counts(), dtype=forward[0].value.dtype)
        return self.message("data", counts, variable="w"), {}
