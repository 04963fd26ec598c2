r"""NPYLM: unsupervised word segmentation with a nested Pitman-Yor language model (Mochihashi et al. 2009).

A word bigram HPYLM whose base distribution is a character n-gram HPYLM (`kizuna.modules.pitman_yor`):

.. math::
    p(w \mid v) &= \text{HPY}_2(w \mid v), \qquad p(w \mid ()) = \text{HPY}_1(w),\qquad
    p_0(w) = \prod_{i=1}^{|w|+1} p_{\text{char}}(c_i \mid c_{i-n+1} \dots c_{i-1}),

with :math:`c_{|w|+1}` the end-of-word symbol and contexts padded with a begin-of-word symbol; a
table opened in the word model's empty context adds the word's characters to the character model.
Each utterance :math:`s` (one symbol a character) starts and ends with a boundary symbol.

**Blocked Gibbs** (one utterance at a time): remove its words from the model, draw a new
segmentation from :math:`p(\text{segmentation}\mid s, \text{rest})` by *forward filtering /
backward sampling*, add the words back. The forward table is over (end position :math:`t`, length
:math:`k` of the last word):

.. math::
    \alpha[t, k] = \sum_j p(s_{t-k:t} \mid s_{t-k-j:t-k})\, \alpha[t-k, j],\qquad
    \alpha[0, 0] = 1\ (\text{begin of utterance}).

All the word probabilities an utterance needs are one table (`NPYLM.bigram_table`),
:math:`P[a, k, j] = p(s_{a:a+k} \mid s_{a-j:a}) = A_{v_j w} + B_{v_j}\, p(w \mid ())`: the back-off part is one
outer product over (start, length, previous length), and only the contexts :math:`v_j` that have a
restaurant are visited in Python for their count part :math:`A`. The forward pass is then one small
matrix-vector product per position, :math:`\alpha[a + k, \cdot] \mathrel{+}= P[a, \cdot, \cdot]\, \alpha[a, \cdot]`.
The last word is drawn :math:`\propto \alpha[T, k]\, p(\text{EOS}\mid w)`, then each previous one
:math:`\propto \alpha[t, j]\, P[t, k, j]`. Rows are rescaled to sum to one (scales cancel in every
draw), each assembled against its largest contribution (`scaled_forward`), so large boosts do not
overflow. :meth:`NPYLM.viterbi` runs the same recursion with max. Hyper-parameters :math:`(d, \theta)` of
both models (and :math:`\lambda` of the optional word-length correction, `kizuna.modules.npylm_length`)
are resampled after every sweep. The chain starts as Mochihashi et al.'s does: from an empty model,
the first sweep segments each utterance given those added before it (`gibbs_sweep` with empty
segmentations).

We stay with numpy and Python (no JIT): the model is a set of dictionaries of restaurants that a JIT
cannot hold, and the per-utterance tables are small (at most :math:`T \times L^2` cells); one sweep over
the 9,790 Brent utterances takes about 5 CPU seconds (10 sweeps in 55 s of CPU time with `examples/
word_segmentation.py`, 2026-12-06; docs/robotics.md).
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from kizuna._data import check_int, check_non_negative, check_positive
from kizuna.modules.npylm_chars import CharModel
from kizuna.modules.npylm_length import WordLength
from kizuna.modules.npylm_slot import ConceptNames, sample_slot
from kizuna.modules.pitman_yor import HPYLM, check_hyperparameters, count_part

BOS, EOS = "\x02", "\x03"

Undo = list[Callable[[], None]]  # what takes back the changes made so far in an `all_or_nothing` block


@contextmanager
def all_or_nothing() -> Iterator[Undo]:
    """A block of changes to a model that is undone when anything raises in it.

    The changes are made by `in_steps` (`NPYLM.add_sentence` and `NPYLM.remove_sentence`, `ConceptNames.add` and
    ``remove``, `NameSlots.add` and ``remove`` take the yielded list as ``undo``); on any exception (a BaseException:
    a KeyboardInterrupt, a refused boost, a numpy error) they are taken back, newest first, and the exception
    propagates. The sweeps take an utterance out, draw it anew and put it in within one such block, so a sweep that
    stops half-way leaves every utterance in the model once, as its segmentation in the list says (it lost the
    utterance from the model, and a later sweep then removed other utterances' words or failed). Re-seating a
    removed sentence restores every context's customers; their tables are drawn again (a Gibbs move of the
    seating), so the counts are the ones before the block and the seating a valid one of them.
    """
    undo: Undo = []
    try:
        yield undo
    except BaseException:
        with _interrupts_deferred():  # (a second Ctrl-C stopped the rollback half-way: the model lost customers)
            while undo:
                undo.pop()()
        raise


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """A block that Ctrl-C does not stop: a SIGINT that arrives in it is handed, when it ends, to the handler that was
    in place (Python's default raises a KeyboardInterrupt; a handler of the caller's is called; an ignored signal stays
    ignored). In the main thread, where Python handles signals; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[object] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, TypeError):  # (no signal handling here: an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and previous is not signal.SIG_IGN:
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signal.SIGINT, None)
        else:
            raise KeyboardInterrupt


def in_steps(items: Sequence[tuple], change: Callable[..., None], inverse: Callable[..., None],
             undo: Undo | None = None) -> None:
    """``change(*item)`` for each of ``items``, all or none; ``inverse(*item)`` takes one back.

    What takes back the changes made so far (newest first) is put in ``undo`` (an `all_or_nothing` list; without one,
    a block of its own) before the first change, so an exception that stops the changes (or, with ``undo``,
    anything later in that block) takes back exactly the ones made: registered after the changes, an exception in
    between (a KeyboardInterrupt) left them in. A change that stops half-way inside itself (a KeyboardInterrupt
    within one customer's seating, `kizuna.modules.pitman_yor.HPYLM.add`) is not covered.
    """
    if undo is None:
        with all_or_nothing() as own:
            in_steps(items, change, inverse, own)
        return
    done = 0

    def back() -> None:
        for item in reversed(items[:done]):
            inverse(*item)

    undo.append(back)
    for item in items:
        change(*item)
        done += 1


class LogBoost:
    """A boost of `gibbs_sweep` kept as its logarithm, so that a boost beyond a float's range (a lift raised to a
    large power) still weighs right: the resampling of candidates sums ``log(w)``; calling it gives the boost itself
    (the exact prior's forward-backward table multiplies by it), a ValueError naming ``what`` where that overflows.

    Args:
        log: :math:`\\log \\text{boost}(w)`, a number below ``inf`` (``-inf``: boost 0).
        what: names the boost in errors (e.g. the module and its ``prior_weight``).
    """

    def __init__(self, log: Callable[[str], float], what: str = "NPYLM") -> None:
        self._log, self.what = log, what

    def log(self, w: str) -> float:
        """:math:`\\log \\text{boost}(w)`; a ValueError naming the word and the value unless below ``inf``."""
        value = float(self._log(w))
        if math.isnan(value) or value == math.inf:
            raise ValueError(f"{self.what}: the log boost of the word {w!r} must be a number < inf (-inf: boost 0), "
                             f"got {value!r}")
        return value

    def __call__(self, w: str) -> float:
        value = self.log(w)
        try:
            return math.exp(value)
        except OverflowError:
            raise ValueError(f"{self.what}: the boost of the word {w!r} is exp({value:.6g}), beyond a float's range "
                             "(the exact prior's forward-backward table needs the boost itself)") from None


@dataclass
class NPYLMState:
    """What a fitted `NPYLM` is, beyond its construction, as plain values (`NPYLM.state`, `NPYLM.load_state`; a
    `WordSegmenter` saves one per chain): every depth's :math:`(d, \\theta)` of the word and character models, the
    seatings of both (`HPYLM.seating`), and with the length correction its :math:`\\lambda` and the length weights
    in force (`CharModel.length_weight`, kept as they are: name moves after the last draw of :math:`\\lambda` change
    the character counts but not the weights)."""

    word_d: list[float] = field(default_factory=list)
    word_theta: list[float] = field(default_factory=list)
    char_d: list[float] = field(default_factory=list)
    char_theta: list[float] = field(default_factory=list)
    word_seating: list = field(default_factory=list)
    char_seating: list = field(default_factory=list)
    lam: float | None = None
    length_weight: list[float] | None = None
    alphabet: str = ""  # the symbols, sorted: the seatings' symbol ids are positions in it


class NPYLM:
    """A nested Pitman-Yor language model over symbol strings.

    Args:
        alphabet: the symbols utterances are made of (one character each).
        max_word_length: :math:`L`, the longest word considered.
        char_order: :math:`n` of the character model.
        length_correction: correct the character model's word lengths by a Poisson
            (`kizuna.modules.npylm_length`; Mochihashi et al. 2009, section 4.3).
    """

    def __init__(self, alphabet: str, max_word_length: int = 10, char_order: int = 3,
                 length_correction: bool = False) -> None:
        check_int("NPYLM: max_word_length", max_word_length, 1)  # 2.5 failed in an index, True was taken as 1
        check_int("NPYLM: char_order", char_order, 1)
        if EOS in alphabet or BOS in alphabet:
            raise ValueError("NPYLM: the alphabet may not contain the control characters \\x02 and \\x03")
        self.max_word_length = max_word_length
        self.alphabet = frozenset(alphabet)
        self.chars = CharModel("".join(sorted(set(alphabet))) + EOS, char_order)
        self.words = HPYLM(2, self.chars.p0, self._feed_chars)
        self.length = WordLength() if length_correction else None
        self.update_length_weight()

    def update_length_weight(self) -> None:
        """With the length correction, recompute `CharModel.length_weight` exactly for the character model and
        :math:`\\lambda` now in force (nothing without it)."""
        if self.length is not None:
            self.chars.set_length_weight(self.length.weights(self.chars, self.max_word_length))

    def state(self) -> NPYLMState:
        """The fitted state (`NPYLMState`), to be restored by `load_state` into a model built the same way."""
        return NPYLMState(list(self.words.d), list(self.words.theta), list(self.chars.hpylm.d),
                          list(self.chars.hpylm.theta), self.words.seating(), self.chars.hpylm.seating(),
                          None if self.length is None else self.length.lam,
                          None if self.length is None else self.chars.length_weight.tolist(),
                          "".join(sorted(self.alphabet)))

    def load_state(self, state: NPYLMState) -> None:
        """Restore `state`'s output: the model's probabilities become exactly the saved model's. Everything is
        checked before anything is installed: nothing changes when it raises."""
        if (state.lam is None) != (self.length is None) or (state.lam is None) != (state.length_weight is None):
            raise ValueError(f"NPYLM.load_state: the state was saved {'without' if state.lam is None else 'with'} the "
                             f"length correction, the model is built {'without' if self.length is None else 'with'} it")
        mine = "".join(sorted(self.alphabet))
        if state.alphabet != mine:  # the character seating's symbol ids would name other symbols
            raise ValueError(f"NPYLM.load_state: the state was fitted on the alphabet {state.alphabet!r}, the model's "
                             f"is {mine!r}")
        depths = (len(state.word_d), len(state.word_theta), len(state.char_d), len(state.char_theta))
        if depths != (self.words.order,) * 2 + (self.chars.order,) * 2:
            raise ValueError(f"NPYLM.load_state: {depths} hyperparameters per model for orders "
                             f"{self.words.order}, {self.chars.order}")
        check_hyperparameters("NPYLM.load_state: the word model", state.word_d, state.word_theta)
        check_hyperparameters("NPYLM.load_state: the character model", state.char_d, state.char_theta)
        # both seatings are checked before either is installed: a refused character seating used to leave the new
        # word model on top of the old character model
        HPYLM(self.words.order, self.chars.p0).set_seating(state.word_seating)  # a throw-away model checks it
        self.chars.check_seating(state.char_seating)
        if self.length is not None:
            lam, weight = float(state.lam), np.asarray(state.length_weight, dtype=float)
        self.words.set_seating(state.word_seating)
        self.chars.set_seating(state.char_seating)
        self.words.d, self.words.theta = [float(x) for x in state.word_d], [float(x) for x in state.word_theta]
        self.chars.set_hyperparameters([float(x) for x in state.char_d], [float(x) for x in state.char_theta])
        if self.length is not None:
            self.length.lam = lam
            self.chars.set_length_weight(weight)

    def _feed_chars(self, w: str, sign: int, rng: np.random.Generator) -> None:
        (self.chars.add if sign > 0 else self.chars.remove)(w, rng)

    # ----------------------------------------------------------------- the words
    def add_sentence(self, words: Sequence[str], rng: np.random.Generator, undo: Undo | None = None) -> None:
        """Add the words of one segmented utterance (and its end-of-sentence) to the model.

        Atomic: every word is checked (a non-empty string of the alphabet's symbols, at most ``max_word_length``
        long) before any customer is seated, so a refused sentence leaves the model as it was; an exception between
        two customers (a KeyboardInterrupt) takes the ones seated so far out again before it propagates (`in_steps`;
        with ``undo``, an `all_or_nothing` list, also when anything later in that block raises)."""
        self._check_words(words)
        in_steps(_customers(words, rng), self.words.add, self.words.remove, undo)

    def _check_words(self, words: Sequence[str]) -> None:
        """A `ValueError` naming the first word of ``words`` the model cannot seat, and why."""
        if isinstance(words, str):
            raise ValueError(f"NPYLM: a sentence is a list of words, got the string {words!r}")
        for i, w in enumerate(words):
            if not isinstance(w, str) or not w:
                raise ValueError(f"NPYLM: word {i} of {list(words)!r} is {w!r}, not a non-empty string")
            if len(w) > self.max_word_length:
                raise ValueError(f"NPYLM: word {i} {w!r} of {list(words)!r} is longer than "
                                 f"max_word_length={self.max_word_length}")
            if self.alphabet.issuperset(w):  # the usual case, one C call; else find the symbol to name
                continue
            for j, ch in enumerate(w):
                if ch not in self.alphabet:
                    raise ValueError(f"NPYLM: symbol {ch!r} at position {j} of word {i} {w!r} of {list(words)!r} is "
                                     f"not in the alphabet {''.join(sorted(self.alphabet))!r}")

    def remove_sentence(self, words: Sequence[str], rng: np.random.Generator, undo: Undo | None = None) -> None:
        """Undo :meth:`add_sentence`.

        Atomic: the words are checked as `add_sentence` checks them, and every bigram of the sentence (from its
        beginning to its end-of-sentence) must be seated in the word model as often as the sentence has it, before
        any customer leaves; a sentence the model does not hold is a `ValueError` naming the missing bigram, and the
        model is left as it was (it removed the words up to the missing one, then raised a `KeyError`). An exception
        between two customers seats the ones removed so far again (`in_steps`; ``undo`` as in `add_sentence`)."""
        self._check_words(words)
        sentence = [BOS, *words, EOS]
        needed: dict[tuple[str, str], int] = {}
        for bigram in zip(sentence, sentence[1:]):
            needed[bigram] = needed.get(bigram, 0) + 1
        for (prev, w), n in needed.items():
            r = self.words.restaurants.get(self.words._context((prev,)))
            held = 0 if r is None else r.cw.get(w, 0)
            if held < n:
                after = "at the beginning of the sentence" if prev == BOS else f"after {prev!r}"
                word = "the end of the sentence" if w == EOS else f"the word {w!r}"
                raise ValueError(f"NPYLM.remove_sentence: {list(words)!r} is not a sentence of the model: {word} "
                                 f"{after} is seated {held} time(s), the sentence has it {n} time(s); nothing was "
                                 "removed")
        in_steps(_customers(words, rng), self.words.remove, self.words.add, undo)

    def _unigram(self, s: str, subs: list[list[str]]) -> np.ndarray:
        """:math:`p(s_{a:a+k} \\mid ())` (T×(L+1)); ``subs[a][k - 1]`` is the substring :math:`s_{a:a+k}`."""
        p0 = self.chars.substring_p0(s, self.max_word_length)
        root = self.words.restaurants.get(())
        if root is None:
            return p0
        d, theta = self.words.d[0], self.words.theta[0]
        out = root.backoff(d, theta) * p0
        cw, tables, c_h = root.cw, root.tables, root.c
        for a, row in enumerate(subs):
            for k, w in enumerate(row, 1):
                c = cw.get(w)
                if c:
                    out[a, k] += count_part(c, len(tables[w]), c_h, d, theta)
        return out

    def _context_part(self, v: str, words: list[str], out: np.ndarray, d: float, theta: float) -> float:
        """Add the count part of :math:`p(w \\mid v)` of every ``words[k - 1]`` to ``out[k]``; return the back-off."""
        r = self.words.restaurants.get((v,))
        if r is None:
            return 1.0
        cw, tables, c_h = r.cw, r.tables, r.c
        for k, w in enumerate(words, 1):
            c = cw.get(w)
            if c:
                out[k] += count_part(c, len(tables[w]), c_h, d, theta)
        return r.backoff(d, theta)

    def bigram_table(self, s: str, boost: Callable[[str], float] | None = None,
                     power: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Every word probability the forward-backward pass needs, raised to ``power``.

        Returns ``(P, eos)``: ``P[a, k, j]`` :math:`= p(s_{a:a+k} \\mid s_{a-j:a})\\,\\text{boost}(s_{a:a+k})`
        (T×(L+1)×(L+1); ``j = 0`` is the begin-of-utterance context, used at ``a = 0`` only; 0 where a
        word would leave the utterance) and ``eos[k]`` :math:`= p(\\text{EOS} \\mid s_{T-k:T})`. The back-off
        part is one outer product; only the contexts with a restaurant are visited in Python. ``power`` is a
        positive finite number and every ``boost`` a finite number >= 0; a ValueError naming them otherwise (they were
        blamed on the data: "no segmentation has positive probability", and ``power=0`` gave impossible words
        probability 1), and where a boost raised to ``power`` leaves a float's range.
        """
        check_positive("NPYLM: power", power)
        big_l, t_len = self.max_word_length, len(s)
        subs = [[s[a:a + k] for k in range(1, min(big_l, t_len - a) + 1)] for a in range(t_len)]
        uni = self._unigram(s, subs)
        d, theta = self.words.d[1], self.words.theta[1]
        sparse = np.zeros((t_len, big_l + 1, big_l + 1))  # indexed [a, j, k] while filling
        back = np.zeros((t_len, big_l + 1))
        back[0, 0] = self._context_part(BOS, subs[0], sparse[0, 0], d, theta)
        for a in range(1, t_len):
            for j in range(1, min(big_l, a) + 1):
                back[a, j] = self._context_part(s[a - j:a], subs[a], sparse[a, j], d, theta)
        table = sparse.transpose(0, 2, 1) + uni[:, :, None] * back[:, None, :]
        if boost is not None:
            weight = np.ones((t_len, big_l + 1))
            for a, row in enumerate(subs):
                weight[a, 1:len(row) + 1] = [_boost(boost, w) for w in row]
            table *= weight[:, :, None]
        eos = np.zeros(big_l + 1)
        p_eos = self.words.prob(EOS)
        for k in range(1, min(big_l, t_len) + 1):
            cell = np.zeros(2)
            back_off = self._context_part(s[t_len - k:], [EOS], cell, d, theta)
            eos[k] = cell[1] + back_off * p_eos
        if power != 1.0:
            with np.errstate(over="ignore"):  # (an infinite cell is refused just below)
                table, eos = table**power, eos**power
            if boost is not None and power > 1 and not np.isfinite(table).all():
                top = float(weight.max())
                raise ValueError(f"NPYLM: the boosts raised to the power {power!r} leave a float's range (the largest "
                                 f"boost is {top:.6g}, to the power {power!r} exp({power * math.log(top):.6g}); a "
                                 "temperature below 1 with a large boost): give a smaller boost or power")
        return table, eos

    def forward(self, table: np.ndarray, viterbi: bool = False) -> np.ndarray:
        """The forward table :math:`\\alpha` ((T+1)×(L+1)) of a `bigram_table`, rows rescaled to sum to one.

        :math:`\\alpha[a + k, k] = \\sum_j P[a, k, j]\\, \\alpha[a, j]` (with ``viterbi``, the maximum);
        :math:`\\alpha[0, 0] = 1`. Each row is scaled against its largest contribution (`scaled_forward`), so
        boosts up to a float's range do not overflow however many of them fit in :math:`L` symbols.
        """
        return self._forward(table, viterbi)[0]

    def _forward(self, table: np.ndarray, viterbi: bool = False) -> tuple[np.ndarray, list[float]]:
        """`forward`'s table and each row's log scale (row t holds the true row divided by exp(scale[t]))."""
        t_len, big_l = table.shape[0], self.max_word_length
        alpha = np.zeros((t_len + 1, big_l + 1))
        alpha[0, 0] = 1.0

        def cells(a: int) -> np.ndarray:
            block = table[a, 1:min(big_l, t_len - a) + 1]
            return (block * alpha[a]).max(1) if viterbi else block @ alpha[a]

        return alpha, scaled_forward(alpha, cells)

    def log_evidence(self, s: str, boost: Callable[[str], float] | None = None, power: float = 1.0) -> float:
        """The forward pass's total, :math:`\\log \\sum_\\text{seg} \\bigl(p(\\text{seg}, \\text{EOS})
        \\prod_w \\text{boost}(w)\\bigr)^\\text{power}` over every segmentation of ``s`` (``-inf`` when none has
        positive weight; for tests)."""
        _nonempty(s)
        table, eos = self.bigram_table(s, boost, power)
        alpha, log_scale = self._forward(table)
        total = float((alpha[len(s)] * eos).sum())
        return math.log(total) + log_scale[len(s)] if total > 0 else -math.inf

    def _backward(self, s: str, alpha: np.ndarray, table: np.ndarray, eos: np.ndarray,
                  rng: np.random.Generator | None) -> list[str]:
        """Backward sampling (``rng``) or Viterbi back-tracking (``rng=None``) through ``alpha``."""
        t, words = len(s), []
        weights = alpha[t] * eos
        while True:
            total = weights.sum()
            if not total > 0:
                raise FloatingPointError(f"NPYLM: no segmentation of {s!r} has positive probability")
            if rng is None:
                k = int(weights.argmax())
            else:
                k = int(np.searchsorted(np.cumsum(weights), rng.random() * total, side="right"))
            words.append(s[t - k:t])
            t -= k
            if t == 0:
                return words[::-1]
            weights = alpha[t] * table[t, k]  # previous word of length j: alpha[t, j] p(w | v_j)

    def sample(self, s: str, rng: np.random.Generator, n: int = 1, boost: Callable[[str], float] | None = None,
               power: float = 1.0) -> list[list[str]]:
        """``n`` segmentations of ``s`` drawn from the model's posterior raised to ``power`` (one forward pass),
        each word's probability multiplied by ``boost(w)`` (a concept module's prior; ``None``: 1); ``n >= 0``."""
        check_int("NPYLM.sample: n", n, 0)  # -1 returned no segmentation
        _nonempty(s)
        table, eos = self.bigram_table(s, boost, power)
        alpha = self.forward(table)
        if n and boost is not None and not (alpha[len(s)] * eos).sum() > 0:
            _zero_boosts(s, alpha, boost)
        return [self._backward(s, alpha, table, eos, rng) for _ in range(n)]

    def viterbi(self, s: str) -> list[str]:
        """The most probable segmentation of ``s``."""
        _nonempty(s)
        table, eos = self.bigram_table(s)
        return self._backward(s, self.forward(table, viterbi=True), table, eos, None)

    def sample_hyperparameters(self, rng: np.random.Generator) -> None:
        """Resample :math:`(d, \\theta)` of every depth of both models (`HPYLM.sample_hyperparameters`) and the
        word-length correction's :math:`\\lambda`, then recompute :math:`p_\\text{char}(k)` exactly."""
        self.words.sample_hyperparameters(rng)
        self.chars.hpylm.sample_hyperparameters(rng)
        self.chars.set_hyperparameters(self.chars.hpylm.d, self.chars.hpylm.theta)
        if self.length is not None:
            root = self.words.restaurants.get(())
            tables = [] if root is None else [(w, len(t)) for w, t in root.tables.items() if w != EOS]
            self.length.sample((len(w) for w, n in tables for _ in range(n)), rng)
            self.update_length_weight()

    def log_prob(self, words: Sequence[str]) -> float:
        """:math:`\\log p(w_1 \\dots w_m\\, \\text{EOS})` under the current model; the words are checked as
        `add_sentence` checks them (an empty word, a string for a list of words or a word longer than
        ``max_word_length`` had a finite probability no segmentation can have)."""
        self._check_words(words)
        prev, total = BOS, 0.0
        for w in list(words) + [EOS]:
            total += np.log(self.words.prob(w, (prev,)))
            prev = w
        return float(total)


def scaled_forward(alpha: np.ndarray, cells: Callable[[int], np.ndarray]) -> list[float]:
    """Fill rows 1..T of a forward table ``alpha`` ((T+1)×...×(L+1), the last word's length last; row 0 given,
    scale 1) in place, each rescaled to sum to one, and return each row's log scale (row t holds the true row
    divided by exp(scale[t])).

    ``cells(a)`` gives row ``a``'s contributions (n×..., in row ``a``'s units) to the cells ``[a + k, ..., k]``,
    ``k = 1..n``; it is called once row ``a`` is final. Row t is assembled when its last contributor (t − 1) is
    done, relative to its largest contribution: every factor is :math:`\\exp(\\text{scale}[t-k] + \\log
    \\text{peak}_k - \\max) \\le 1`, so no product of several boosts overflows (a contribution below e^-745 of the
    row's largest underflows to 0). A row without mass (every word ending there weighs 0) stays 0, its log scale
    ``-inf``, and adds nothing to later rows (the boosts' product overflowed, or a row of zeros reset the scale to 0
    and the next factor raised OverflowError, when rows were scaled against their first contributor's scale).
    """
    t_len, big_l = alpha.shape[0] - 1, alpha.shape[-1] - 1
    log_scale = [0.0] + [-math.inf] * t_len
    vector = alpha.ndim > 2
    blocks: list[np.ndarray] = []  # blocks[a]: row a's contributions (with several cells each)
    peaks: list[list[float]] = []  # peaks[a][k - 1]: the largest cell of row a's contribution to row a + k
    log, exp = math.log, math.exp
    for a in range(t_len):
        c = cells(a)
        if vector:
            blocks.append(c)
            c = c.reshape(len(c), -1).max(1)
        peaks.append(c.tolist())
        t = a + 1
        ks, logs = [], []
        for b in range(max(t - big_l, 0), t):  # row t's contributors b = t - k
            peak = peaks[b][t - b - 1]
            if peak > 0:
                ks.append(t - b)
                logs.append(log_scale[b] + log(peak))
        if not ks:
            continue
        top = max(logs)
        if vector:
            for k, v in zip(ks, logs):
                alpha[t, ..., k] = blocks[t - k][k - 1] / peaks[t - k][k - 1] * exp(v - top)
            z = float(alpha[t].sum())
            alpha[t] /= z
        else:  # one cell per contribution: Python floats, no numpy call per cell
            row = [0.0] * (big_l + 1)
            for k, v in zip(ks, logs):
                row[k] = exp(v - top)
            z = sum(row)
            alpha[t] = [r / z for r in row]
        log_scale[t] = top + log(z)
    return log_scale


def _zero_boosts(s: str, alpha: np.ndarray, boost: Callable[[str], float]) -> None:
    """`NPYLM.sample` found no segmentation of positive weight: a ValueError naming the first position every word
    ending at which has boost 0 (an OverflowError of the forward pass, or blamed on the data, before)."""
    t = next((t for t in range(1, len(s) + 1) if not alpha[t].sum() > 0), None)
    if t is None:  # (the end-of-utterance weights underflowed at a large power: _backward says so)
        return
    words = [s[t - k:t] for k in range(1, min(alpha.shape[1] - 1, t) + 1)]
    if all(_log_boost(boost, w) == -math.inf for w in words):
        raise ValueError(f"NPYLM: no segmentation of {s!r} has positive weight under the boost: every word ending at "
                         f"position {t} ({', '.join(map(repr, words))}) has boost 0; give one of them a positive "
                         "boost")


def _customers(words: Sequence[str], rng: np.random.Generator) -> list[tuple]:
    """The word model's customers of a sentence (its bigrams from BOS to EOS) as `HPYLM.add`'s arguments."""
    words = [BOS, *words, EOS]
    return [(w, (prev,), rng) for prev, w in zip(words, words[1:])]


def temperatures(n_sweeps: int, start: float = 3.0, fraction: float = 0.6) -> list[float]:
    """An annealing schedule: :math:`1/T` rises linearly from ``1/start`` to 1 over the first ``fraction`` of the
    sweeps, then stays at :math:`T = 1`. With ``fraction`` below 1 at most ``n_sweeps - 1`` sweeps anneal, so the
    last one runs at :math:`T = 1` (one sweep at 0.7 rounded up to ``[start]``, and a module sent the state and
    posterior of the tempered conditionals); ``fraction=1`` anneals every sweep.

    ``start`` is a finite :math:`T > 0` (1: no annealing; below 1 the first sweeps are colder than the posterior)
    and ``fraction`` in [0, 1]; a ValueError naming the argument otherwise (a fraction above 1 gave more sweeps
    than ``n_sweeps``, ``start=0`` divided by zero, a NaN start gave NaN temperatures).

    >>> [round(t, 3) for t in temperatures(5, 2.0, 0.4)]
    [2.0, 1.333, 1.0, 1.0, 1.0]
    >>> temperatures(1, 3.0, 0.7)
    [1.0]
    """
    check_int("temperatures: n_sweeps", n_sweeps, 0)
    check_positive("temperatures: start", start)
    check_non_negative("temperatures: fraction", fraction)
    if fraction > 1:
        raise ValueError(f"temperatures: fraction is the share of the sweeps that anneal, in [0, 1], got {fraction!r}")
    warm = int(round(fraction * n_sweeps))
    if fraction < 1:
        warm = min(warm, max(n_sweeps - 1, 0))
    inv = [1 / start + (1 - 1 / start) * j / max(warm, 1) for j in range(warm)]
    return [1 / x for x in inv] + [1.0] * (n_sweeps - warm)


def random_segmentation(s: str, max_word_length: int, rng: np.random.Generator, longest: int = 4) -> list[str]:
    """A segmentation of ``s`` into words of uniformly random lengths in ``1..min(longest, L)`` (the initial state);
    ``max_word_length`` and ``longest`` are integers >= 1 (0 failed in numpy's ``integers``)."""
    check_int("random_segmentation: max_word_length", max_word_length, 1)
    check_int("random_segmentation: longest", longest, 1)
    words, a = [], 0
    while a < len(s):
        k = int(rng.integers(1, min(longest, max_word_length) + 1))
        words.append(s[a:a + k])
        a += k
    return words


def gibbs_sweep(model: NPYLM, utterances: Sequence[str], segmentations: list[list[str]], rng: np.random.Generator,
                boosts: Sequence[Callable[[str], float] | None] | None = None, n_candidates: int = 1,
                temperature: float = 1.0, exact_prior: bool = False, names: ConceptNames | None = None) -> None:
    """One blocked Gibbs sweep in random order, replacing ``segmentations`` in place.

    An empty segmentation ``[]`` marks an utterance not yet in the model: it is drawn and added
    without being removed first. Starting from all ``[]`` and an empty model, the first sweep is
    Mochihashi et al.'s start (each utterance segmented given the ones added before it).

    Without ``boosts`` each utterance's segmentation is drawn from the model's posterior given the others, computed
    as Mochihashi et al. do: forward filtering and backward sampling with the predictive probabilities of the model
    without this utterance, so a word repeated within the utterance is not counted against itself (an approximation
    of the exact conditional; "exactly" below is relative to it). With ``boosts[i]`` (a concept module's belief
    about utterance ``i``'s words) SERKET's resampling of hypotheses: ``n_candidates`` segmentations are drawn from
    the model's posterior and one is kept with probability :math:`\\propto \\prod_{w} \\text{boost}_i(w)`
    (sampling-importance-resampling towards :math:`p(\\text{seg} \\mid s)\\prod_w \\text{boost}_i(w)`). At
    ``temperature`` :math:`T > 1` the segmentations are drawn from the posterior raised to :math:`1/T` (simulated
    annealing). With ``exact_prior`` the boosts enter the forward-backward table instead, so each segmentation is
    drawn exactly from :math:`p(\\text{seg} \\mid s, \\text{rest})^{1/T}\\prod_w \\text{boost}_i(w)^{1/T}`
    (``n_candidates`` is ignored). With ``names`` (`kizuna.modules.npylm_slot.ConceptNames`, instead of ``boosts``)
    each segmentation is drawn exactly from the slot model, every word the place's name with probability
    :math:`\\lambda` or a word of the language model, and the concepts' name counts follow the draws.

    A boost may be a `LogBoost` (its logarithm): the resampling then sums the logs, so a boost beyond a float's range
    weighs right. When every candidate of an utterance has a word of boost 0 there is none to keep: a ValueError
    naming the utterance (it was numpy's "Probabilities contain NaN").

    ``segmentations``, ``boosts`` and the rows of ``names`` are one per utterance, and a non-empty segmentation spells
    its utterance; a ValueError naming the argument otherwise, raised before the model is touched (a missing
    segmentation or boost was an IndexError, an extra segmentation was ignored, and a segmentation of another string
    was removed from the model and replaced silently). Each utterance's step (out of the model, drawn, back in) is
    all or nothing (`all_or_nothing`): when anything raises in it (a refused boost, a KeyboardInterrupt) the
    utterance is put back with its old segmentation (and ``names`` row) before the exception propagates, so the
    model holds every utterance once, as ``segmentations`` says (the utterances already redrawn keep their new
    segmentations; the hyper-parameters are not drawn).
    """
    check_positive("gibbs_sweep: temperature", temperature)
    _check_sweep(utterances, segmentations, boosts, names)
    for i in rng.permutation(len(utterances)).tolist():
        boost = None if boosts is None else boosts[i]
        with all_or_nothing() as undo:  # a step that raises leaves utterance i in the model as it was
            if segmentations[i]:  # [] : not in the model yet (the sequential start)
                model.remove_sentence(segmentations[i], rng, undo)
            if names is not None:
                names.remove(i, undo)
                words, rho = sample_slot(model, utterances[i], i, names, rng, 1.0 / temperature)
                names.add(i, words, rho, undo)
            elif boost is None or exact_prior:
                words = model.sample(utterances[i], rng, boost=boost, power=1.0 / temperature)[0]
            else:
                candidates = model.sample(utterances[i], rng, n_candidates, power=1.0 / temperature)
                words = candidates[_resample(candidates, boost, i, utterances[i], rng)]
            model.add_sentence(words, rng, undo)
            segmentations[i] = words
    model.sample_hyperparameters(rng)


def _resample(candidates: list[list[str]], boost: Callable[[str], float], i: int, s: str,
              rng: np.random.Generator) -> int:
    """The index of the candidate kept, drawn with weight :math:`\\prod_w \\text{boost}(w)`, summed as logs
    (`LogBoost.log` where the boost is one); a ValueError naming the utterance when every weight is 0 (numpy's
    "Probabilities contain NaN")."""
    log_w = np.array([sum(_log_boost(boost, w) for w in c) for c in candidates])
    top = log_w.max()
    if top == -math.inf:
        zero = next(w for w in candidates[0] if _log_boost(boost, w) == -math.inf)
        raise ValueError(f"gibbs_sweep: every one of the {len(candidates)} candidate segmentations of utterance {i} "
                         f"({s!r}) has a word of boost 0 (the first, {candidates[0]!r}, has {zero!r}): none can be "
                         "kept; give the words of the utterance a positive boost")
    weights = np.exp(log_w - top)
    return int(rng.choice(len(candidates), p=weights / weights.sum()))


def _check_sweep(utterances: Sequence[str], segmentations: list[list[str]],
                 boosts: Sequence[Callable[[str], float] | None] | None, names: ConceptNames | None) -> None:
    """`gibbs_sweep`'s entry checks: one segmentation, boost and ``names`` row per utterance, and every non-empty
    segmentation spelling its utterance (one join per utterance: little beside its forward pass)."""
    n = len(utterances)
    sizes = [("segmentations", len(segmentations))]
    if boosts is not None:
        sizes.append(("boosts", len(boosts)))
    if names is not None:
        sizes.append(("names (rows of its resp)", names.resp.shape[0]))
    for what, size in sizes:
        if size != n:
            first = f"utterance {size} has none" if size < n else f"{what.split()[0]}[{n}] has no utterance"
            raise ValueError(f"gibbs_sweep: {n} utterances but {size} {what} ({first}); give one per utterance")
    for i, (s, seg) in enumerate(zip(utterances, segmentations)):
        if not seg:  # [] : not in the model yet
            continue
        spelled = "".join(map(str, seg))  # (a word that is no string is refused by remove_sentence, naming it)
        if spelled != s:
            raise ValueError(f"gibbs_sweep: segmentation {i} {seg!r} does not spell its utterance {s!r} (it spells "
                             f"{spelled!r})")


def _boost(boost: Callable[[str], float], w: str) -> float:
    """``boost(w)``, a finite number >= 0; a ValueError naming the word and the value otherwise (a NaN or negative
    boost was blamed on the data: "no segmentation has positive probability")."""
    value = boost(w)
    check_non_negative(f"NPYLM: the boost of the word {w!r}", value)
    return value


def _log_boost(boost: Callable[[str], float], w: str) -> float:
    """:math:`\\log \\text{boost}(w)`: `LogBoost.log` for a `LogBoost` (no power of a lift is taken, so none
    overflows), else the log of `_boost` (``-inf`` for a boost of 0)."""
    if isinstance(boost, LogBoost):
        return boost.log(w)
    value = _boost(boost, w)
    return float(np.log(value)) if value > 0 else -math.inf


def _nonempty(s: str) -> None:
    """An utterance to segment has at least one character (an empty one has no segmentation to draw)."""
    if not s:
        raise ValueError("NPYLM: cannot segment an empty utterance (its only segmentation is no words)")
