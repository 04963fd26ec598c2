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

With ``n_chains = R > 1`` the module keeps R independent NPYLM chains, R hypotheses of the whole
lexicon (SpCoSLAM's particles each carry one), and sends up the words of one of them. It then asks its
parent for the **concept posterior** :math:`r_{nl}` instead of :math:`q_n(w)` (``prior_over = "classes"``)
and, after every update's sweeps, keeps the chain whose words best predict the concepts of events they
were not counted with (`kizuna.modules.segment_selection.concept_log_predictive`, drawn with weight
:math:`\exp S`, in practice the maximum). Before any posterior has come down (and in ``fit``) it keeps the
chain with the largest language-model probability of its segmentation,
:math:`\sum_n \log p(\text{seg}_n)`. Independent chains of NPYLM on a few hundred noisy utterances
differ widely, and one update's token-level prior does not move a chain out of its mode (docs/robotics.md).

With ``prior_mode="slot"`` the module also asks for the concept posterior, and every later update draws each
segmentation exactly from the **slot model** (`kizuna.modules.npylm_slot`): each word is either the place's
name, drawn from the event's concept's name distribution (a Dirichlet process over strings whose base measure
is the spelling model), or a word of the language model in its context. On the robot house neither it nor
``relearn`` improves the place names' segmentation over the paired control (docs/robotics.md).

With ``prior_mode="name"`` the module asks for the concept posterior too, and every later update draws each
segmentation and its **one name slot** jointly from the one-name model (`kizuna.modules.npylm_name`): the language
model generates the sentence with a class token NAME in place of the place name (at most one per utterance), and
NAME emits the name's string from the event's concept name distribution. With name moves (``type_moves=20``) its
connected chain is above the paired control on the robot house on average, not on every seed (place-name F 0.569
against 0.485 over ten seeds, above on seven of ten, the gain within the spread between seeds; about the same
without the moves; docs/robotics.md, "One name").

With ``type_moves=M`` every sweep is followed by M **name moves** (`kizuna.modules.npylm_types`): type-level
Metropolis-Hastings proposals that split every token of a type in two, or merge every adjacent pair of two types,
at once, accepted by the sequential predictive probability of the affected utterances (the slot model's when the
concepts have come down). They raise the place names' F of the connected and of the control chains alike; the
slot model's evidence favours gluing the article to a name (docs/robotics.md, "Name moves"). Off by default.

>>> rng = np.random.default_rng(0)
>>> lexicon = ["abc", "xy", "dog", "ek", "mimi", "tu"]
>>> utterances = ["".join(rng.choice(lexicon, size=rng.integers(1, 5))) for _ in range(150)]
>>> seg = WordSegmenter(n_iter=20, anneal=1.5, random_state=1).fit(utterances)
>>> seg.segment(["dogabcxy"])
[['dog', 'abc', 'xy']]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from kizuna._data import check_count, check_int, check_non_negative, check_positive
from kizuna.modules.base import Message, Module
from kizuna.modules.context import UpdateContext
from kizuna.modules.npylm import (
    NPYLM,
    LogBoost,
    NPYLMState,
    all_or_nothing,
    gibbs_sweep,
    in_steps,
    random_segmentation,
    temperatures,
)
from kizuna.modules.npylm_name import NAME, NameSlots, initial_slots, lm_words, name_sweep, name_viterbi
from kizuna.modules.npylm_slot import ConceptNames
from kizuna.modules.npylm_types import type_moves
from kizuna.modules.rng import generator_for
from kizuna.modules.segment_selection import concept_log_predictive
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
        prior_mode: ``"sir"`` (default): the resampling above; ``"exact"``: the boosts enter the forward-backward
            table, each segmentation drawn exactly from :math:`p(\\text{seg}\\mid s)\\prod_w \\text{boost}(w)`;
            ``"slot"``: the slot model (`kizuna.modules.npylm_slot`): the module asks for the concept posterior and
            each word is the place's name (drawn from the concept's name distribution, whose base measure is the
            spelling model) with probability ``slot_weight``, else a word of the language model; ``"name"``: the
            one-name model (`kizuna.modules.npylm_name`): the language model holds a class token NAME in place of
            at most one word of each utterance, which the concept's name distribution spells; segmentation and
            slot are drawn jointly (the first update with the concepts starts from `initial_slots`).
        slot_weight: :math:`\\lambda` of the slot model.
        slot_concentration: :math:`a` of each concept's name distribution in the slot and one-name models.
        relearn: the update that first receives a prior from the parent forgets the segmentation and starts again
            from Mochihashi's sequential start, the prior in force from the first utterance (its first update
            segmented without the concepts, and a chain's lexicon is fixed by its first sweeps).
        n_chains: R independent chains, one kept by the concepts' choice (see the module docstring); 1: one chain.
        selection_beta: :math:`\\beta` of the concept word distributions in the chains' score.
        min_count: a word enters ``vocabulary_`` when it occurs at least this often.
        init_length: ``None`` (default): Mochihashi et al.'s start, the first sweep segments the utterances one
            by one into an empty model; an integer: start from words of random lengths 1..``init_length``.
        length_correction: NPYLM's Poisson correction of word lengths (`kizuna.modules.npylm_length`).
        anneal: starting temperature of ``fit`` and of the first update (`kizuna.modules.npylm.temperatures`;
            the last sweep runs at 1, so with ``n_iter=1`` there is no annealing); 1 (default): none. On Brent,
            annealing from the sequential start over-segments (docs/robotics.md). A value below 1 starts colder
            than the posterior (it sharpens the first sweeps), which is not annealing.
        type_moves: name moves (`kizuna.modules.npylm_types`, type-level Metropolis-Hastings: split every token of a
            type in two, or merge every adjacent pair of types, at once) after every sweep of every chain; 0
            (default): none. Under the slot model (concepts received) their acceptance uses the slot model's
            probability, so the concepts' name evidence enters; otherwise (``fit``, ``resume``, the first update)
            the language model's alone.
        type_min_count: a type or adjacent pair is a candidate of the moves when seen at least this often.
        type_favour: :math:`\\kappa`, the extra proposal weight of a pair whose halves are words elsewhere.
        random_state: seed (the graph's generator seeds it in a graph).
    """

    accepts: ClassVar[tuple[str, ...]] = ("data",)
    sends: ClassVar[str] = "data"
    receives: ClassVar[tuple[str, ...]] = ("prior",)
    architecture: ClassVar[tuple[str, ...]] = ("max_word_length", "char_order")

    @dataclass
    class State(Module.State):
        """Also the utterances, their current segmentation and the vocabulary sent up, and every chain's fitted
        language model (`kizuna.modules.npylm.NPYLMState`: the hyperparameters of both models, :math:`\\lambda` and
        the length weights, the seatings), restored exactly when it is needed after a load; the slot model's slot
        probabilities of each word (``slot_rho_``), the name counts of the next update under ``prior_mode="slot"``.
        A save without ``chain_states_`` (written before they were kept) rebuilds the models from the segmentations
        as it always did: seatings drawn again, hyperparameters and :math:`\\lambda` at their initial values, and
        the length weights computed for the rebuilt character model."""

        utterances_: list[str] = field(default_factory=list)
        segmentation_: list[list[str]] = field(default_factory=list)
        vocabulary_: list[str] = field(default_factory=list)
        chain_segmentations_: list[list[list[str]]] = field(default_factory=list)
        selected_: int = 0
        relearned_: bool = False
        chain_slots_: list = field(default_factory=list)
        concepts_: torch.Tensor | None = None  # the last concept posterior received (N×L; `segment(concepts=)`)
        chain_states_: list[NPYLMState] = field(default_factory=list)
        slot_rho_: list = field(default_factory=list)

    def __init__(self, max_word_length: int = 10, char_order: int = 3, n_iter: int = 20, sweeps_per_update: int = 2,
                 n_candidates: int = 8, prior_weight: float = 1.0, min_count: int = 2, anneal: float = 1.0,
                 init_length: int | None = None, length_correction: bool = False, prior_mode: str = "sir",
                 n_chains: int = 1, selection_beta: float = 0.5, slot_weight: float = 0.2,
                 slot_concentration: float = 1.0, relearn: bool = False, type_moves: int = 0,
                 type_min_count: int = 5, type_favour: float = 4.0, random_state: int | None = None,
                 name: str | None = None) -> None:
        super().__init__(name, random_state=random_state)
        # counts are integers (2.5 sweeps failed inside, a width of 2.5 in an index) and annealing a positive
        # finite exponent (0 divided by zero, a negative or NaN one blamed the data: "no segmentation ... has
        # positive probability")
        for what, value, least in (("max_word_length", max_word_length, 1), ("char_order", char_order, 1),
                                   ("n_iter", n_iter, 0), ("sweeps_per_update", sweeps_per_update, 0),
                                   ("n_candidates", n_candidates, 1), ("min_count", min_count, 1),
                                   ("n_chains", n_chains, 1), ("type_moves", type_moves, 0),
                                   ("type_min_count", type_min_count, 1)):
            check_int(f"WordSegmenter {self.name}: {what}", value, least)
        check_count(f"WordSegmenter {self.name}: init_length", init_length, 1)
        check_positive(f"WordSegmenter {self.name}: anneal", anneal)
        check_non_negative(f"WordSegmenter {self.name}: prior_weight", prior_weight)
        if n_iter < 0 or sweeps_per_update < 0 or n_candidates < 1 or min_count < 1:
            raise ValueError(f"WordSegmenter {self.name}: need n_iter, sweeps_per_update >= 0 and n_candidates, "
                             f"min_count >= 1")
        self.max_word_length, self.char_order = max_word_length, char_order
        self.n_iter, self.sweeps_per_update, self.n_candidates = n_iter, sweeps_per_update, n_candidates
        self.prior_weight, self.min_count = prior_weight, min_count
        self.anneal, self.init_length, self.length_correction = anneal, init_length, length_correction
        if prior_mode not in ("sir", "exact", "slot", "name"):
            raise ValueError(f"WordSegmenter {self.name}: prior_mode must be 'sir', 'exact', 'slot' or 'name', got "
                             f"{prior_mode!r}")
        if not 0 < slot_weight < 1:  # (NaN fails it too)
            raise ValueError(f"WordSegmenter {self.name}: slot_weight is a probability strictly between 0 and 1, got "
                             f"{slot_weight!r}")
        check_positive(f"WordSegmenter {self.name}: slot_concentration", slot_concentration)  # NaN passed `<= 0`
        self.prior_mode, self.slot_weight, self.slot_concentration = prior_mode, slot_weight, slot_concentration
        self.slot_rho_: list[list[list[float] | None] | None] = []  # per chain, the slot model's rho of each word
        self._saved_chain_states: list[NPYLMState] = []  # loaded, until the models are rebuilt from them
        self.chain_slots_: list[list[int | None] | None] = []  # the one-name model's slots (None: not in force)
        self.concepts_: torch.Tensor | None = None
        self.relearn, self.relearned_ = relearn, False
        if n_chains < 1 or not 0 < selection_beta < math.inf:  # (NaN passed `<= 0`)
            raise ValueError(f"WordSegmenter {self.name}: need n_chains >= 1 and a finite selection_beta > 0, got "
                             f"{n_chains!r} and {selection_beta!r}")
        self.n_chains, self.selection_beta = n_chains, selection_beta
        check_non_negative(f"WordSegmenter {self.name}: type_favour", type_favour)  # NaN passed `< 0`
        self.type_moves, self.type_min_count, self.type_favour = type_moves, type_min_count, type_favour
        self.type_records_: list[dict] = []
        self.chain_segmentations_: list[list[list[str]]] = []
        self.chain_models_: list[NPYLM | None] = []
        self.chain_scores_: list[float] = []
        self.selected_ = 0
        self.model_: NPYLM | None = None
        self.utterances_: list[str] = []
        self.segmentation_: list[list[str]] = []
        self.vocabulary_: list[str] = []

    @staticmethod
    def _random(generator: torch.Generator) -> np.random.Generator:
        """A numpy generator seeded by one draw from ``generator`` (the sampler is numpy code)."""
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))

    @property
    def prior_over(self) -> str:
        """What this module wants from its parent: ``"words"`` (:math:`q_n(w)`, one chain) or ``"classes"`` (the
        concept posterior, to choose among ``n_chains > 1`` chains)."""
        return "classes" if self.n_chains > 1 or self.prior_mode in ("slot", "name") else "words"

    @property
    def chain_states_(self) -> list[NPYLMState]:
        """Every chain's language model as saved (`NPYLM.state`; the loaded states until the models are rebuilt)."""
        if self.chain_models_:
            return [model.state() for model in self.chain_models_]
        return self._saved_chain_states

    @chain_states_.setter
    def chain_states_(self, value: list[NPYLMState]) -> None:
        self._saved_chain_states = list(value or [])

    def _before_load(self, state: dict) -> None:
        self.model_, self.chain_models_ = None, []

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """See `Stateful.load_state_dict`; a save from before ``chain_states_`` and ``slot_rho_`` were kept loads with
        none (the models rebuilt from the segmentations, see ``State``)."""
        super().load_state_dict({"chain_states_": [], "slot_rho_": [], **state})
        states, n_seg = self._saved_chain_states, len(self.chain_segmentations_)
        if states and len(states) != n_seg:
            raise ValueError(f"WordSegmenter {self.name}: {len(states)} saved language models for {n_seg} chains")
        alphabet = "".join(sorted(self._alphabet(self.utterances_))) if states else ""
        for st in states:
            if (st.lam is not None) != self.length_correction:
                raise ValueError(f"WordSegmenter {self.name}: the language models were saved with "
                                 f"length_correction={st.lam is not None}, the module has {self.length_correction}")
            if st.alphabet != alphabet:  # e.g. saved under another prior_mode ("name" adds the NAME token)
                raise ValueError(f"WordSegmenter {self.name}: the language models were fitted on the symbols "
                                 f"{st.alphabet!r}, this module (prior_mode={self.prior_mode!r}) would use "
                                 f"{alphabet!r}: load into a module built as the saved one")

    def _rebuilt(self, rng: np.random.Generator) -> NPYLM | None:
        """The language models after a load, restored from ``chain_states_`` (or rebuilt from the segmentations for
        a save without them, see ``State``); the kept one (None before any fit)."""
        if not self.chain_segmentations_ and self.segmentation_:  # saved by a version without chains
            self.chain_segmentations_ = [self.segmentation_]
        # fitted: it has utterances (after fit(n_iter=0) from Mochihashi's start they hold no words yet, and a save
        # of it loaded as "not fitted")
        if not self.chain_models_ and self.chain_segmentations_ and self.utterances_:
            states = self._saved_chain_states
            for r, segmentation in enumerate(self.chain_segmentations_):
                model = self._new_model(self.utterances_)
                if len(states) == len(self.chain_segmentations_):
                    model.load_state(states[r])
                else:
                    slots = self.chain_slots_[r] if r < len(self.chain_slots_) else None
                    for n, words in enumerate(segmentation):
                        if words:  # (an utterance not segmented yet seats nothing; [] would seat BOS -> EOS)
                            model.add_sentence(words if slots is None else lm_words(words, slots[n]), rng)
                    model.update_length_weight()  # p0 normalised for the rebuilt character model
                self.chain_models_.append(model)
            self._saved_chain_states = []
            self._keep(self.selected_)
        return self.model_

    def _keep(self, r: int) -> None:
        """Make chain ``r`` the module's current model and segmentation."""
        self.selected_ = r
        self.model_, self.segmentation_ = self.chain_models_[r], self.chain_segmentations_[r]

    @staticmethod
    def _check(utterances: Sequence[str], allow_empty: bool = False) -> list[str]:
        # a list first: a generator was used up by the check and the fit saw no utterance, silently; a numpy array of
        # strings failed in `not utterances`. An empty list only where ``allow_empty`` (a decode of an empty batch)
        listed = None if isinstance(utterances, str | bytes) else list(utterances)
        if listed is None or not (listed or allow_empty) or not all(isinstance(s, str) and s for s in listed):
            raise ValueError(f"WordSegmenter: utterances must be a {'' if allow_empty else 'non-empty '}list of "
                             "non-empty strings")
        return listed

    def _alphabet(self, utterances: list[str]) -> str:
        """The symbols of the language models: the utterances', and the NAME token under ``prior_mode="name"``."""
        alphabet = "".join(sorted(set("".join(utterances))))
        if self.prior_mode == "name":  # the class token's one-symbol spelling
            if NAME in alphabet:
                raise ValueError(f"WordSegmenter {self.name}: utterances may not contain \\x04 (the NAME token)")
            alphabet += NAME
        return alphabet

    def _new_model(self, utterances: list[str]) -> NPYLM:
        return NPYLM(self._alphabet(utterances), self.max_word_length, self.char_order, self.length_correction)

    def _start(self, utterances: list[str], rng: np.random.Generator) -> None:
        self.utterances_ = utterances
        self.chain_models_, self.chain_segmentations_, self.slot_rho_ = [], [], []
        self.chain_slots_ = [None] * self.n_chains
        for _ in range(self.n_chains):
            model = self._new_model(utterances)
            if self.init_length is None:  # gibbs_sweep adds them one by one
                segmentation: list[list[str]] = [[] for _ in utterances]
            else:
                segmentation = [random_segmentation(s, self.max_word_length, rng, self.init_length) for s in utterances]
                for words in segmentation:
                    model.add_sentence(words, rng)
            self.chain_models_.append(model)
            self.chain_segmentations_.append(segmentation)
        self._keep(0)

    def _chain_rngs(self, rng: np.random.Generator) -> list[np.random.Generator]:
        """One generator per chain (``rng`` itself for one chain, so that one chain draws as it always did)."""
        if self.n_chains == 1:
            return [rng]
        return [np.random.default_rng(int(rng.integers(2**62))) for _ in range(self.n_chains)]

    def _sweeps(self, schedule: list[float], rng: np.random.Generator, boosts: list | None = None,
                concepts: np.ndarray | None = None) -> None:
        """``schedule`` sweeps of every chain; with ``concepts`` (N×L) and ``prior_mode="slot"``, of the slot model."""
        slot = concepts is not None and self.prior_mode == "slot"
        one_name = concepts is not None and self.prior_mode == "name"
        if len(self.slot_rho_) != self.n_chains:
            self.slot_rho_ = [None] * self.n_chains
        if len(self.chain_slots_) != self.n_chains:
            self.chain_slots_ = [None] * self.n_chains
        chains = zip(self.chain_models_, self.chain_segmentations_, self._chain_rngs(rng))
        for r, (model, segmentation, chain_rng) in enumerate(chains):
            names = ConceptNames.counted(concepts, segmentation, self.slot_rho_[r], self.slot_weight,
                                         self.slot_concentration) if slot else None
            if one_name:
                names = self._name_slots(r, model, segmentation, concepts, chain_rng)
            elif self.chain_slots_[r] is not None:  # back to the plain language model (a control's resume)
                self._reseat(r, model, segmentation, None, chain_rng)
            try:
                for temperature in schedule:
                    if one_name:
                        name_sweep(model, self.utterances_, segmentation, names, chain_rng, temperature)
                    else:
                        gibbs_sweep(model, self.utterances_, segmentation, chain_rng, boosts, self.n_candidates,
                                    temperature, self.prior_mode == "exact", names)
                    if self.type_moves:
                        self.type_records_ += type_moves(model, segmentation, chain_rng, self.type_moves, names,
                                                         self.type_min_count, self.type_favour, temperature)
            finally:  # also when a sweep stops half-way: the slots (and rho) the model and segmentation now have
                if one_name:
                    self.chain_slots_[r] = list(names.slot)
                elif names is not None:
                    self.slot_rho_[r] = names.slots

    def _name_slots(self, r: int, model: NPYLM, segmentation: list[list[str]], concepts: np.ndarray,
                    rng: np.random.Generator) -> NameSlots:
        """The one-name model's state of chain ``r`` under the posterior ``concepts``; when the chain's language model
        still holds plain words, each utterance first gets `initial_slots`'s slot and NAME takes its place."""
        slots = self.chain_slots_[r]
        if slots is not None:
            return NameSlots.counted(concepts, segmentation, slots, self.slot_concentration)
        slots = initial_slots(segmentation, concepts)
        names = NameSlots.counted(concepts, segmentation, slots, self.slot_concentration)
        self._reseat(r, model, segmentation, slots, rng)
        return names

    def _reseat(self, r: int, model: NPYLM, segmentation: list[list[str]], slots: list[int | None] | None,
                rng: np.random.Generator) -> None:
        """Chain ``r``'s utterances re-seated in its ``model`` from the slots ``chain_slots_[r]`` to ``slots`` (None:
        the plain words, no NAME), and ``chain_slots_[r]`` set to ``slots``: all or none
        (`kizuna.modules.npylm.all_or_nothing`; a stop half-way left the model holding some utterances each way while
        the module took them all for one)."""
        old = self.chain_slots_[r]
        with all_or_nothing() as undo:
            for n, words in enumerate(segmentation):
                if words:
                    model.remove_sentence(lm_words(words, None if old is None else old[n]), rng, undo)
                    model.add_sentence(lm_words(words, None if slots is None else slots[n]), rng, undo)
            in_steps([(r, slots)], self.chain_slots_.__setitem__, lambda r, _: self.chain_slots_.__setitem__(r, old),
                     undo)

    def _select(self, rng: np.random.Generator, concepts: np.ndarray | None) -> None:
        """Keep one chain: by the concepts' score when ``concepts`` (N×L) is given, else by the language model's
        probability of the chain's own segmentation (see the module docstring)."""
        if self.n_chains == 1:
            return
        scores = []
        for r in range(self.n_chains):
            self._keep(r)
            if concepts is None:
                scores.append(sum(self.model_.log_prob(words) for words in self.segmentation_))
            else:
                scores.append(concept_log_predictive(self.word_counts(), concepts, self.selection_beta))
        self.chain_scores_ = scores
        weights = np.exp(np.asarray(scores) - max(scores))
        self._keep(int(rng.choice(self.n_chains, p=weights / weights.sum())))

    def fit(self, utterances: Sequence[str], y: None = None) -> WordSegmenter:
        """``n_iter`` blocked Gibbs sweeps of every chain (Mochihashi et al.'s start, or random words); with several
        chains, the one whose segmentation the language model finds most probable is kept."""
        rng = self._random(generator_for(self.random_state))
        self._start(self._check(utterances), rng)
        self.relearned_ = False
        self._sweeps(temperatures(self.n_iter, self.anneal), rng)
        self._select(rng, None)
        return self

    def resume(self, sweeps: int, random_state: int | np.random.Generator | torch.Generator | None = None,
               restart: bool = False) -> WordSegmenter:
        """``sweeps`` more Gibbs sweeps of every chain with no prior, then the language model's choice of chain
        (a control: the module continued as if it had no parent); with ``restart``, the first of them is the
        sequential start from an empty model (the control of ``relearn``). ``random_state``: a numpy generator, used
        as it is; an int (or any seed numpy takes), numpy's generator of that seed; a torch generator, or None for one
        draw from torch's global stream (so that ``torch.manual_seed`` repeats it), as `fit` (kizuna.modules.rng)."""
        check_int(f"WordSegmenter {self.name}: resume's sweeps", sweeps, 0)
        if random_state is None or isinstance(random_state, torch.Generator):
            # None drew from the operating system, and a torch generator was refused (numpy's SeedSequence)
            rng = self._random(generator_for(random_state))
        else:  # a numpy generator as it is; a seed (an int, a SeedSequence, ...) as numpy takes it
            rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
        if self._rebuilt(rng) is None:
            raise RuntimeError(f"WordSegmenter {self.name} is not fitted yet: call fit(utterances) or update()")
        if restart:
            self._start(self.utterances_, rng)
        self._sweeps([1.0] * sweeps, rng)
        self._select(rng, None)
        return self

    def segment(self, utterances: Sequence[str], concepts: Any = None) -> list[list[str]]:
        """The most probable segmentation of each utterance under the fitted model (``[]`` for no utterance).

        When the one-name model is in force (``prior_mode="name"``, connected), jointly with its name slot: the
        language model holds NAME in place of the names, which each concept's name distribution spells. Without
        ``concepts`` the place of a new utterance is not known and the names are pooled over the concepts (one
        Dirichlet process over the slot words of the fit); ``concepts`` (M×L, one row per utterance, e.g.
        `SpatialConcept.predict_concepts` at the positions where they were heard) weights each concept's names
        by the utterance's row, as the fit does (rows are normalised)."""
        # a decode draws nothing: the stream (from torch's global one, for random_state=None) only where the
        # language models must be rebuilt after a load (drawn every time, it moved torch's global stream)
        model = self.model_ if self.chain_models_ else self._rebuilt(self._random(generator_for(self.random_state)))
        if model is None:
            raise RuntimeError(f"WordSegmenter {self.name} is not fitted yet: call fit(utterances) or update()")
        utterances = self._check(utterances, allow_empty=True)
        if not utterances:  # an empty batch (fit still refuses an empty list)
            return []
        slots = self.chain_slots_[self.selected_] if self.selected_ < len(self.chain_slots_) else None
        if slots is not None and any(NAME in s for s in utterances):
            raise ValueError(f"WordSegmenter {self.name}: utterances may not contain \\x04 (the NAME token)")
        unseen = sorted({c for s in utterances for c in s} - set(model.alphabet))
        if unseen:  # the character model has no probability for them (it named the EOS-extended alphabet)
            first = next(i for i, s in enumerate(utterances) if not set(s) <= set(model.alphabet))
            known = "".join(c for c in sorted(model.alphabet) if c.isprintable())
            raise ValueError(f"WordSegmenter {self.name}: utterance {first} ({utterances[first]!r}) has "
                             f"{''.join(unseen)!r}, symbols no training utterance had: the language model gives them "
                             f"no probability (its alphabet is {known!r}); fit or update with utterances holding them")
        if slots is None:
            if concepts is not None:
                raise ValueError(f"WordSegmenter {self.name}: concepts are used by the one-name model "
                                 "(prior_mode='name', after an update under a concept module), not in force here")
            return [model.viterbi(s) for s in utterances]
        names, first = self._new_names(len(utterances), concepts)
        return [name_viterbi(model, s, names, first + m)[0] for m, s in enumerate(utterances)]

    def _new_names(self, m: int, concepts: Any) -> tuple[NameSlots, int]:
        """The name distributions of ``m`` new utterances under the fitted one-name model (`segment`): the fit's
        slots counted, and the index of the first new utterance's distribution (the new utterances come after the
        fit's, with no slot words). Without ``concepts``, one concept pooling every name; with them (M×L), their rows
        after the fit's concept posterior."""
        segmentation, slots = self.chain_segmentations_[self.selected_], self.chain_slots_[self.selected_]
        padded = [*segmentation, *([[]] * m)], [*slots, *([None] * m)]
        if concepts is None:
            return NameSlots.counted(np.ones((len(segmentation) + m, 1)), *padded, self.slot_concentration), \
                len(segmentation)
        fit = self.concepts_.double().numpy() if self.concepts_ is not None else None
        rows = np.asarray(concepts.detach().cpu() if isinstance(concepts, torch.Tensor) else concepts, dtype=float)
        if fit is None or fit.shape[0] != len(segmentation):
            raise RuntimeError(f"WordSegmenter {self.name}: the concept posterior of the fit is not available")
        if rows.ndim != 2 or rows.shape != (m, fit.shape[1]):
            raise ValueError(f"WordSegmenter {self.name}: concepts must be {m}×{fit.shape[1]} (one row per "
                             f"utterance, one column per concept), got shape {rows.shape}")
        if not np.isfinite(rows).all() or (rows < 0).any() or not (rows.sum(1) > 0).all():
            raise ValueError(f"WordSegmenter {self.name}: concepts must be finite, non-negative, rows not all zero")
        rows = rows / rows.sum(1, keepdims=True)
        return NameSlots.counted(np.vstack([fit, rows]), *padded, self.slot_concentration), len(segmentation)

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

    def _boosts(self, prior: torch.Tensor) -> list[LogBoost]:
        """Each event's lifts :math:`(q_n(w) / \\bar q(w))^\\lambda` (words outside the vocabulary: 1), kept as their
        logs :math:`\\lambda (\\log q_n(w) - \\log \\bar q(w))` (`LogBoost`): the resampling sums them, so a large
        ``prior_weight`` neither overflows nor underflows (the power taken first overflowed to ``inf`` once
        :math:`\\lambda \\log` ratio passed 709, or underflowed to 0; then the boost or numpy's "Probabilities contain
        NaN" was blamed)."""
        q = prior.detach().cpu().double().numpy()
        with np.errstate(divide="ignore"):  # q = 0: log-lift -inf, the lift 0 it was
            log_ratio = np.log(q) - np.log(q.mean(0, keepdims=True).clip(1e-300))
        # prior_weight 0: every lift 1, as ratio ** 0 was (0 * -inf is NaN)
        log_lift = self.prior_weight * log_ratio if self.prior_weight else np.zeros_like(log_ratio)
        index = {w: i for i, w in enumerate(self.vocabulary_)}
        return [LogBoost(lambda w, row=row: row[index[w]] if w in index else 0.0,
                         f"WordSegmenter {self.name} (prior_weight={self.prior_weight!r}), event {n}")
                for n, row in enumerate(log_lift.tolist())]

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        if len(forward) != 1:
            raise ValueError(f"WordSegmenter {self.name} segments one child's strings, got {len(forward)} children")
        rng = self._random(ctx.generator)
        concepts = None
        if self._rebuilt(rng) is None:
            self._start(self._check(decode_strings(forward[0].value)), rng)
            self.relearned_ = False
            schedule, boosts = temperatures(self.n_iter, self.anneal), None
        else:
            schedule, boosts = [1.0] * self.sweeps_per_update, None
            if backward is not None and self.prior_over == "classes":
                if backward.n != len(self.utterances_):
                    raise ValueError(f"WordSegmenter {self.name}: the concept posterior has {backward.n} rows for "
                                     f"{len(self.utterances_)} utterances")
                concepts = backward.value.detach().cpu().double().numpy().clip(0.0)
                concepts /= concepts.sum(1, keepdims=True).clip(1e-300)
                self.concepts_ = torch.from_numpy(concepts)
            elif backward is not None and backward.width == len(self.vocabulary_):
                boosts = self._boosts(backward.value)
            if self.relearn and not self.relearned_ and (concepts is not None or boosts is not None):
                self._start(self.utterances_, rng)  # the boosts index the vocabulary, computed before
                self.relearned_, schedule = True, temperatures(self.n_iter, self.anneal)
        self._sweeps(schedule, rng, boosts, concepts)
        self._select(rng, concepts)
        counts = torch.as_tensor(self.word_counts(), dtype=forward[0].value.dtype)
        return self.message("data", counts, variable="w"), {}
