r"""The one-name model of an utterance: a class-based language model with one NAME slot.

An utterance of the robot house holds at most one place name. The **one-name model** says so: the
language model (NPYLM's word bigram HPYLM) generates the sentence with a class token NAME in place of
the name, so it learns "Iz D6 NAME" (and "D6 -> NAME" is close to deterministic); the token NAME
emits the name's string from the event's concept name distribution

.. math::
    G_n(w) = \sum_l r_{nl}\, \frac{T^{-n}_{lw} + a\, p_0(w)}{T^{-n}_{l\cdot} + a},\qquad
    T_{lw} = \sum_{m \ne n} r_{ml}\, [\text{slot word of } m = w]

(`kizuna.modules.npylm_slot.ConceptNames`, each utterance's one slot word counted with weight 1 times
:math:`r_{ml}`; :math:`p_0` the spelling model); words after the name are conditioned on NAME. An utterance
without a name has no slot. A segmentation :math:`w_1 \dots w_m` with the slot at :math:`i` (or none) has

.. math::
    p(w, i \mid n) = \prod_{h \ne i} p_\text{LM}(w_h \mid u_{h-1})\; p_\text{LM}(\text{NAME} \mid u_{i-1})\,
    G_n(w_i)\; p_\text{LM}(\text{EOS} \mid u_m),\qquad u = w \text{ with } w_i \to \text{NAME}.

A second NAME is never generated: the mass :math:`p_\text{LM}(\text{NAME} \mid v)` after the slot is dropped,
which conditions the language model on "at most one NAME" (a constant of the model, the same for every
segmentation of every utterance, so it cancels in every draw).

With the article split off, :math:`G_l` concentrates on one type per place ("kIC6n" bare and after "D6"
are the same type), whereas gluing spreads it over "D6kIC6n" and "kIC6n"; the slot model's mixture
(`kizuna.modules.npylm_slot`) instead lifts a word most where the language model predicts it worst.

**Exact forward filtering / backward sampling over segmentation and slot jointly.** The states are
(end position, word length, type) with type B (a language-model word before the slot), S (the slot
word) or A (a language-model word after it); the transitions into a word :math:`s_{a:a+k}`:

* B from B (or the begin of the utterance) of length :math:`j`: :math:`P[a, k, j]` (`NPYLM.bigram_table`);
* S from B of length :math:`j`: :math:`p_\text{LM}(\text{NAME}\mid s_{a-j:a})\, G_n(s_{a:a+k})`;
* A from S (any length): :math:`p_\text{LM}(s_{a:a+k}\mid \text{NAME})`; A from A of length :math:`j`:
  :math:`P[a, k, j]`;
* EOS from B or A: :math:`p(\text{EOS}\mid s_{T-k:T})`; from S: :math:`p(\text{EOS}\mid\text{NAME})`.

The table :math:`X[a, k, \text{type}, \text{type}', j]` holds every transition (numpy over ``k``, ``j``), the
forward pass is one matrix-vector product per position as in `NPYLM.forward`.

**Seating.** The language model seats NAME in place of the slot word (`lm_words`); the concepts' name
counts hold the slot word. The character model does **not** learn from slot words: it is fed only by the
language model's tables (NAME's one-symbol spelling among them, as EOS's), so the joint probability that
the sampler draws from is exactly the one above (seating the slot word in the spelling model too would
add to the counts a term the draw never scored). NAME is the control symbol ``"\x04"``, which the
module adds to the character model's alphabet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from kizuna._data import check_int, check_positive
from kizuna.modules.npylm import Undo, all_or_nothing, in_steps, scaled_forward
from kizuna.modules.npylm_slot import ConceptNames

if TYPE_CHECKING:
    from kizuna.modules.npylm import NPYLM

NAME = "\x04"
_BOS, _EOS = "\x02", "\x03"


def lm_words(words: Sequence[str], slot: int | None) -> list[str]:
    """The language model's sentence: ``words`` with the slot word replaced by NAME."""
    out = list(words)
    if slot is not None:
        out[slot] = NAME
    return out


class NameSlots:
    """The one-name model's state beside the language model: each utterance's slot and the concepts' name counts.

    Args:
        resp: ``N×L`` concept posterior :math:`r_{nl}`.
        concentration: :math:`a` of each :math:`G_l`.
    """

    def __init__(self, resp: np.ndarray, concentration: float = 1.0) -> None:
        self.names = ConceptNames(resp, 0.5, concentration)
        self.slot: list[int | None] = [None] * self.names.resp.shape[0]

    @classmethod
    def counted(cls, resp: np.ndarray, segmentation: Sequence[Sequence[str]], slots: Sequence[int | None],
                concentration: float = 1.0) -> NameSlots:
        """The name counts of a segmentation whose slots are ``slots`` (the language model already holds it)."""
        out = cls(resp, concentration)
        for n, (words, slot) in enumerate(zip(segmentation, slots)):
            if words:
                out.names.add(n, [] if slot is None else [words[slot]], [] if slot is None else [1.0])
                out.slot[n] = slot
        return out

    # ------------------------------------------------------------------ seating
    def add(self, model: NPYLM, n: int, words: Sequence[str], slot: int | None, rng: np.random.Generator,
            undo: Undo | None = None) -> None:
        """Seat utterance ``n``: the language model gets NAME in place of the slot word, the name counts the word.
        With ``undo`` (`kizuna.modules.npylm.all_or_nothing`'s list) the inverses are appended."""
        model.add_sentence(lm_words(words, slot), rng, undo)
        self.names.add(n, [] if slot is None else [words[slot]], [] if slot is None else [1.0], undo)
        self._set_slot(n, slot, undo)

    def remove(self, model: NPYLM, n: int, words: Sequence[str], rng: np.random.Generator,
               undo: Undo | None = None) -> None:
        """Undo `add` of utterance ``n`` (whose words are ``words``); ``undo`` as in `add`."""
        model.remove_sentence(lm_words(words, self.slot[n]), rng, undo)
        self.names.remove(n, undo)
        self._set_slot(n, None, undo)

    def _set_slot(self, n: int, slot: int | None, undo: Undo | None) -> None:
        in_steps([(n, slot, self.slot[n])], self._put, self._put_back, undo)

    def _put(self, n: int, new: int | None, old: int | None) -> None:
        self.slot[n] = new

    def _put_back(self, n: int, new: int | None, old: int | None) -> None:
        self.slot[n] = old

    # ------------------------------------------------------------------ scoring one segmentation
    def log_joint(self, model: NPYLM, n: int, words: Sequence[str]) -> np.ndarray:
        """:math:`\\log p(w, i \\mid n)` for the slot :math:`i` = none (entry 0) and each word (entry ``i + 1``)."""
        out = []
        for slot in [None, *range(len(words))]:
            prev, total = _BOS, 0.0
            for h, w in enumerate(words):
                if h == slot:
                    total += math.log(model.words.prob(NAME, (prev,)))
                    total += math.log(self.names.prob(n, w, model.chars.p0(w)))
                    prev = NAME
                else:
                    total += math.log(model.words.prob(w, (prev,)))
                    prev = w
            out.append(total + math.log(model.words.prob(_EOS, (prev,))))
        return np.array(out)

    def add_scored(self, model: NPYLM, n: int, words: Sequence[str], rng: np.random.Generator) -> float:
        """:math:`\\log \\sum_i p(w, i \\mid n)` given the model so far; then seat ``words`` with a slot drawn from
        its posterior (a name move's sequential predictive probability, `kizuna.modules.npylm_types`)."""
        logp = self.log_joint(model, n, words)
        top = logp.max()
        weights = np.exp(logp - top)
        i = int(rng.choice(len(weights), p=weights / weights.sum()))
        self.add(model, n, words, None if i == 0 else i - 1, rng)
        return float(top + math.log(weights.sum()))


# ---------------------------------------------------------------------- forward filtering / backward sampling
def _check_row(caller: str, n: int, slots: NameSlots) -> None:
    """``n`` names a row of ``slots``' concept posterior (`name_table`)."""
    rows = slots.names.resp.shape[0]
    check_int(f"{caller}: n", n, 0)
    if n >= rows:
        raise ValueError(f"{caller}: n = {n} but the slots hold {rows} utterances (rows of the concept posterior): "
                         f"n is in 0..{rows - 1}")


def name_table(model: NPYLM, s: str, n: int, slots: NameSlots, caller: str = "name_table"
               ) -> tuple[np.ndarray, np.ndarray]:
    """The transitions of utterance ``n`` (string ``s``): ``X[a, k, c, c', j]`` (T×(L+1)×3×3×(L+1); types 0 = B,
    1 = S, 2 = A; ``c'`` and ``j`` the previous word's type and length) and ``eos[c, k]`` (module docstring).

    ``n`` is an integer in ``0..N-1``, ``N`` the rows of ``slots``' concept posterior; a ValueError naming both (and
    ``caller``) otherwise (an ``n`` past the rows was an IndexError of numpy's, a negative one read a row from the
    end)."""
    _check_row(caller, n, slots)
    big_l, t_len = model.max_word_length, len(s)
    table, eos_w = model.bigram_table(s)
    p0 = model.chars.substring_p0(s, big_l)
    g = slots.names.table(n, s, p0, big_l)
    subs = [[s[a:a + k] for k in range(1, min(big_l, t_len - a) + 1)] for a in range(t_len)]
    uni = model._unigram(s, subs)
    hpy = model.words
    d, theta = hpy.d[1], hpy.theta[1]
    p_name = hpy.prob(NAME)  # p(NAME | ())
    after = np.zeros((t_len, big_l + 1))  # p(s[a:a+k] | NAME)
    for a in range(1, t_len):  # a = 0: no slot before
        after[a] += model._context_part(NAME, subs[a], after[a], d, theta) * uni[a]
    to_name = np.zeros((t_len, big_l + 1))  # p(NAME | s[a-j:a]), j = 0: the begin of the utterance
    cell = np.zeros(2)
    for a in range(t_len):
        for j in ([0] if a == 0 else range(1, min(big_l, a) + 1)):
            cell[1] = 0.0
            back = model._context_part(_BOS if a == 0 else s[a - j:a], [NAME], cell, d, theta)
            to_name[a, j] = cell[1] + back * p_name
    valid = (np.arange(t_len)[:, None] + np.arange(big_l + 1)[None, :] <= t_len)
    valid[:, 0] = False
    x = np.zeros((t_len, big_l + 1, 3, 3, big_l + 1))
    x[:, :, 0, 0] = table
    x[:, :, 1, 0] = (g * valid)[:, :, None] * to_name[:, None, :]
    x[:, :, 2, 1, 1:] = (after * valid)[:, :, None]
    x[:, :, 2, 2] = table
    eos = np.stack([eos_w, np.full(big_l + 1, hpy.prob(_EOS, (NAME,))), eos_w])
    eos[:, 0] = 0.0
    return x, eos


def name_forward(x: np.ndarray, viterbi: bool = False) -> tuple[np.ndarray, list[float]]:
    """The forward table (T+1)×3×(L+1) of `name_table`'s ``x`` (with ``viterbi``, the maximum over the previous
    word instead of the sum), rows rescaled to sum to one, and each row's log scale (row t holds the true row
    divided by exp(scale[t])); each row is scaled against its largest contribution (`scaled_forward`)."""
    t_len, big_l = x.shape[0], x.shape[1] - 1
    alpha = np.zeros((t_len + 1, 3, big_l + 1))
    alpha[0, 0, 0] = 1.0
    flat = x.reshape(t_len, big_l + 1, 3, 3 * (big_l + 1))

    def cells(a: int) -> np.ndarray:  # (n_k, 3)
        block = flat[a, 1:min(big_l, t_len - a) + 1]
        return (block * alpha[a].ravel()).max(-1) if viterbi else block @ alpha[a].ravel()

    return alpha, scaled_forward(alpha, cells)


def name_log_evidence(model: NPYLM, s: str, n: int, slots: NameSlots) -> float:
    """:math:`\\log \\sum_{\\text{seg}, i} p(\\text{seg}, i \\mid n)`, the forward pass's total (for tests)."""
    x, eos = name_table(model, s, n, slots, "name_log_evidence")
    alpha, log_scale = name_forward(x)
    return math.log(float((alpha[len(s)] * eos).sum())) + log_scale[len(s)]


def sample_name(model: NPYLM, s: str, n: int, slots: NameSlots, rng: np.random.Generator,
                power: float = 1.0) -> tuple[list[str], int | None]:
    """A segmentation of utterance ``n`` and its slot (word index, None: no name) drawn jointly from the one-name
    model raised to ``power`` (a positive finite number: a NaN or negative one was blamed on the data)."""
    check_positive("sample_name: power", power)
    x, eos = name_table(model, s, n, slots, "sample_name")
    if power != 1.0:
        x, eos = x**power, eos**power
    return name_backward(s, name_forward(x)[0], x, eos, rng)


def name_viterbi(model: NPYLM, s: str, slots: NameSlots, n: int = 0) -> tuple[list[str], int | None]:
    """The most probable segmentation of ``s`` and its slot under the one-name model, the name spelled by
    utterance ``n``'s name distribution (e.g. a pooled one for a new utterance, `WordSegmenter.segment`).

    ``n`` is an integer in ``0..N-1``, ``N`` the rows of ``slots``' concept posterior (`name_table`)."""
    x, eos = name_table(model, s, n, slots, "name_viterbi")
    return name_backward(s, name_forward(x, viterbi=True)[0], x, eos, None)


def name_backward(s: str, alpha: np.ndarray, x: np.ndarray, eos: np.ndarray,
                  rng: np.random.Generator | None) -> tuple[list[str], int | None]:
    """Backward sampling (``rng``) or Viterbi back-tracking (``rng=None``, through a max-product ``alpha``) of a
    segmentation and its slot through `name_forward`'s ``alpha``."""
    t, words, types = len(s), [], []
    weights = alpha[t] * eos
    while True:
        flat = weights.ravel()
        total = flat.sum()
        if not total > 0:
            raise FloatingPointError(f"one-name model: no segmentation of {s!r} has positive probability")
        pick = int(flat.argmax()) if rng is None else int(np.searchsorted(np.cumsum(flat), rng.random() * total,
                                                                          side="right"))
        c, k = divmod(pick, weights.shape[1])
        words.append(s[t - k:t])
        types.append(c)
        t -= k
        if t == 0:
            break
        weights = alpha[t] * x[t, k, c]
    words, types = words[::-1], types[::-1]
    return words, (types.index(1) if 1 in types else None)


def name_sweep(model: NPYLM, utterances: Sequence[str], segmentations: list[list[str]], slots: NameSlots,
               rng: np.random.Generator, temperature: float = 1.0) -> None:
    """One blocked Gibbs sweep of the one-name model in random order (segmentation and slot of each utterance drawn
    jointly given the others), then the language model's hyper-parameters; ``temperature`` > 0 and finite.

    Each utterance's step is all or nothing (`kizuna.modules.npylm.all_or_nothing`): when anything raises in it (a
    KeyboardInterrupt) the utterance is put back with its old segmentation, slot and name count before the exception
    propagates (`kizuna.modules.npylm.gibbs_sweep`)."""
    check_positive("name_sweep: temperature", temperature)
    rows = slots.names.resp.shape[0]
    if not len(utterances) == len(segmentations) == rows:  # (a shorter list was an IndexError mid-sweep, after
        # some utterances had been redrawn; a longer one left the rest out silently)
        raise ValueError(f"name_sweep: {len(utterances)} utterances, {len(segmentations)} segmentations and {rows} "
                         "rows of the slots' concept posterior; give one of each per utterance")
    for i in rng.permutation(len(utterances)).tolist():
        with all_or_nothing() as undo:  # a step that raises leaves utterance i (words, slot, name) as it was
            if segmentations[i]:  # [] : not in the model yet (a sequential start)
                slots.remove(model, i, segmentations[i], rng, undo)
            words, slot = sample_name(model, utterances[i], i, slots, rng, 1.0 / temperature)
            slots.add(model, i, words, slot, rng, undo)
            segmentations[i] = words
    model.sample_hyperparameters(rng)


def initial_slots(segmentation: Sequence[Sequence[str]], resp: np.ndarray, min_lift: float = 2.0,
                  smoothing: float = 0.5) -> list[int | None]:
    """A first slot for each utterance when the concepts first come down (the language model holds no NAME yet,
    so no draw would choose one): the word of largest lift :math:`\\sum_l r_{nl}\\, p(l \\mid w) / p(l)` (counts
    smoothed by ``smoothing``), when that lift is at least ``min_lift``; else none."""
    r = np.asarray(resp, dtype=np.float64)
    prior = r.mean(0)
    counts: dict[str, np.ndarray] = {}
    for n, words in enumerate(segmentation):
        for w in words:
            counts.setdefault(w, np.zeros(r.shape[1]))
            counts[w] += r[n]
    lift = {w: (c + smoothing) / (c.sum() + smoothing * len(c)) / prior.clip(1e-12) for w, c in counts.items()}
    out: list[int | None] = []
    for n, words in enumerate(segmentation):
        scores = [float(r[n] @ lift[w]) for w in words]
        best = int(np.argmax(scores)) if scores else 0
        out.append(best if scores and scores[best] >= min_lift else None)
    return out
