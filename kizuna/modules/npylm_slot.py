r"""The slot model of an utterance: each word is the place's name or a word of the language model.

SpCoA generates a teaching utterance as a sentence around one place name. `ConceptNames` puts that
into NPYLM's forward filtering / backward sampling exactly. Given the concept posterior
:math:`r_{nl} = p(c_n{=}l\mid\cdot)` of event :math:`n`, each word :math:`w_i` of its utterance is either
the **slot** (the place word, drawn from the concept's name distribution :math:`G_l`) with probability
:math:`\lambda`, or a background word drawn from the language model in its context:

.. math::
    p(w_i \mid w_{i-1}, n) = \lambda\, G_n(w_i) + (1 - \lambda)\, p_{\text{LM}}(w_i \mid w_{i-1}),\qquad
    G_n(w) = \sum_l r_{nl}\, \frac{T^{-n}_{lw} + a\, p_0(w)}{T^{-n}_{l\cdot} + a}.

:math:`G_l` is a Dirichlet process with concentration :math:`a` whose base measure is NPYLM's own spelling
model :math:`p_0` (the character HPYLM, as in SpCoA with NPYLM words), so every string has a name
probability and a name seen bare ("kIC6n") supports the same string after "D6". The counts
:math:`T_{lw} = \sum_{m \ne n} r_{ml} \sum_i \rho_{mi}\,[w_{mi} = w]` weigh each word by its posterior
probability of being the slot, :math:`\rho_{mi} = \lambda G / (\lambda G + (1-\lambda) p_{\text{LM}})` at the time
it was drawn (a soft, collapsed estimate of the slot indicators). Unlike a per-word lift
:math:`\prod_w q_n(w)/\bar q(w)`, the mixture is a probability of each word: a filler word the language model
predicts well gets a factor close to 1, and a segmentation is not rewarded for having fewer words.

The segmentation of utterance :math:`n` is drawn exactly from
:math:`p(\text{seg}\mid s_n,\text{rest}) \propto \prod_i p(w_i\mid w_{i-1}, n)\; p(\text{EOS}\mid w_m)` by
replacing every cell of the forward-backward table (`NPYLM.bigram_table`),
:math:`P[a, k, j] \to (1-\lambda) P[a, k, j] + \lambda G_n(s_{a:a+k})`. The language model itself still seats
every word (the slot words too), as the module did before: the slot model changes how a segmentation is
drawn, not what the language model counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kizuna._data import check_positive

if TYPE_CHECKING:
    from kizuna.modules.npylm import NPYLM


class ConceptNames:
    """The concepts' name distributions :math:`G_l` of the slot model (see the module docstring).

    Args:
        resp: ``N×L`` concept posterior :math:`r_{nl}` (rows sum to one).
        weight: :math:`\\lambda`, the probability that a word is the slot.
        concentration: :math:`a` of each :math:`G_l`.
    """

    def __init__(self, resp: np.ndarray, weight: float = 0.2, concentration: float = 1.0) -> None:
        r = np.asarray(resp, dtype=np.float64)
        if r.ndim != 2 or (r < 0).any() or not np.allclose(r.sum(1), 1.0, atol=1e-6):
            raise ValueError(f"ConceptNames: resp must be N×L with rows on the simplex, got shape {r.shape}")
        if not 0 < weight < 1:  # (NaN fails it too)
            raise ValueError(f"ConceptNames: weight is a probability strictly between 0 and 1, got {weight!r}")
        check_positive("ConceptNames: concentration", concentration)  # NaN passed `<= 0` and made every G_n NaN
        self.resp, self.weight, self.concentration = r, weight, concentration
        self.counts: dict[str, np.ndarray] = {}
        self.totals = np.zeros(r.shape[1])
        self.slots: list[list[float] | None] = [None] * r.shape[0]
        self.words: list[list[str] | None] = [None] * r.shape[0]

    @classmethod
    def counted(cls, resp: np.ndarray, segmentation: list[list[str]], slots: list[list[float] | None] | None,
                weight: float, concentration: float) -> ConceptNames:
        """The name counts of a whole segmentation under a new posterior ``resp``: each word weighted by the slot
        probability it was last drawn with (``slots[n]``; ``weight`` where there is none, e.g. before its first
        draw from the slot model); utterances not segmented yet (``[]``) are left out."""
        names = cls(resp, weight, concentration)
        for n, words in enumerate(segmentation):
            if words:
                rho = None if slots is None else slots[n]
                names.add(n, words, rho if rho is not None and len(rho) == len(words) else [weight] * len(words))
        return names

    def add(self, n: int, words: list[str], rho: list[float], undo: list | None = None) -> None:
        """Count utterance ``n``'s words, each weighted by its slot probability ``rho``; all or none, and with
        ``undo`` (`kizuna.modules.npylm.all_or_nothing`'s list) taken back when that block raises
        (`kizuna.modules.npylm.in_steps`)."""
        if self.words[n] is not None:
            raise RuntimeError(f"ConceptNames: utterance {n} is already counted")
        from kizuna.modules.npylm import all_or_nothing, in_steps  # (npylm imports this module)

        rho = [float(p) for p in rho]  # plain floats: saved by WordSegmenter
        with all_or_nothing() as own:
            steps = own if undo is None else undo
            in_steps([(n, w, p) for w, p in zip(words, rho)], self._count, self._uncount, steps)
            in_steps([(n, list(words), rho)], self._mark, self._unmark, steps)

    def remove(self, n: int, undo: list | None = None) -> None:
        """Undo `add` of utterance ``n`` (nothing when it is not counted); ``undo`` as in `add` (taken back: the
        same words and weights counted again, to rounding)."""
        words, rho = self.words[n], self.slots[n]
        if words is None:
            return
        from kizuna.modules.npylm import all_or_nothing, in_steps  # (npylm imports this module)

        with all_or_nothing() as own:
            steps = own if undo is None else undo
            in_steps([(n, w, p) for w, p in zip(words, rho)], self._uncount, self._count, steps)
            in_steps([(n, words, rho)], self._unmark, self._mark, steps)

    def _count(self, n: int, w: str, p: float) -> None:
        """Add ``p`` times utterance ``n``'s concept posterior to the counts of ``w``."""
        row = self.counts.get(w)
        if row is None:
            row = self.counts[w] = np.zeros_like(self.totals)
        row += p * self.resp[n]
        self.totals += p * self.resp[n]

    def _uncount(self, n: int, w: str, p: float) -> None:
        """Undo `_count`."""
        self.counts[w] -= p * self.resp[n]
        self.totals -= p * self.resp[n]
        self.totals = self.totals.clip(0.0)  # rounding

    def _mark(self, n: int, words: list[str], rho: list[float]) -> None:
        """Record utterance ``n`` as counted with ``words`` and weights ``rho``."""
        self.words[n], self.slots[n] = words, rho

    def _unmark(self, n: int, words: list[str], rho: list[float]) -> None:
        """Undo `_mark`."""
        self.words[n] = self.slots[n] = None

    def prob(self, n: int, w: str, p0: float) -> float:
        """:math:`G_n(w)` given the spelling probability :math:`p_0(w)`."""
        r, a = self.resp[n], self.concentration
        row = self.counts.get(w)
        count = 0.0 if row is None else float(r @ (row.clip(0.0) / (self.totals + a)))
        return count + p0 * float(r @ (a / (self.totals + a)))

    def table(self, n: int, s: str, p0: np.ndarray, max_word_length: int) -> np.ndarray:
        """:math:`G_n(s_{a:a+k})` for every start and length (T×(L+1)); ``p0`` is `CharModel.substring_p0`."""
        r, a = self.resp[n], self.concentration
        out = p0 * float(r @ (a / (self.totals + a)))
        scale = r / (self.totals + a)
        for start in range(len(s)):
            for k in range(1, min(max_word_length, len(s) - start) + 1):
                row = self.counts.get(s[start:start + k])
                if row is not None:
                    out[start, k] += float(scale @ row.clip(0.0))
        return out


def sample_slot(model: NPYLM, s: str, n: int, names: ConceptNames, rng: np.random.Generator,
                power: float = 1.0) -> tuple[list[str], list[float]]:
    """One segmentation of utterance ``n`` (string ``s``) from the slot model raised to ``power``, and each
    word's slot probability :math:`\\rho` (the module docstring); ``power``: a positive finite number."""
    check_positive("sample_slot: power", power)
    lam = names.weight
    table, eos = model.bigram_table(s)
    g = names.table(n, s, model.chars.substring_p0(s, model.max_word_length), model.max_word_length)
    mixed = (1 - lam) * table + lam * g[:, :, None]
    if power != 1.0:
        mixed, eos = mixed**power, eos**power
    words = model._backward(s, model.forward(mixed), mixed, eos, rng)
    rho, a, j = [], 0, 0
    for w in words:
        k = len(w)
        slot = lam * g[a, k]
        rho.append(slot / (slot + (1 - lam) * table[a, k, j]))
        a, j = a + k, k
    return words, rho
