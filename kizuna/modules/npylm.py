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

Splitting the bigram probability into its sparse count part :math:`A_{vw}` and its back-off part
:math:`B_v\, p(w\mid())` gives :math:`\alpha[t, k] = p(w\mid())\, S[t-k] + \sum_j \alpha[t-k, j] A_{v_j w}` with
:math:`S[a] = \sum_j \alpha[a, j] B_{v_j}`: the dense part is numpy over the table, only the observed
bigrams are visited one by one. The last word is drawn :math:`\propto \alpha[T, k]\, p(\text{EOS}\mid w)`,
then each previous one :math:`\propto \alpha[t-k, j]\, p(w \mid v_j)`. Rows are rescaled to sum to one
(scales cancel in every draw). :meth:`NPYLM.viterbi` runs the same recursion with max. Hyper-parameters
:math:`(d, \theta)` of both models are resampled after every sweep.

We stay with numpy and Python (no JIT): the model is a set of dictionaries of restaurants that a JIT
cannot hold, and the per-utterance tables are small (at most :math:`T \times L` cells), so one sweep
over the 9,789 Brent utterances takes seconds (`bench/robots.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kizuna.modules.npylm_chars import CharModel
from kizuna.modules.pitman_yor import HPYLM, count_part

BOS, EOS = "\x02", "\x03"


class NPYLM:
    """A nested Pitman-Yor language model over symbol strings.

    Args:
        alphabet: the symbols utterances are made of (one character each).
        max_word_length: :math:`L`, the longest word considered.
        char_order: :math:`n` of the character model.
    """

    def __init__(self, alphabet: str, max_word_length: int = 10, char_order: int = 3) -> None:
        if max_word_length < 1 or char_order < 1:
            raise ValueError(f"NPYLM: need max_word_length >= 1 and char_order >= 1, got {max_word_length}, "
                             f"{char_order}")
        if EOS in alphabet or BOS in alphabet:
            raise ValueError("NPYLM: the alphabet may not contain the control characters \\x02 and \\x03")
        self.max_word_length = max_word_length
        self.chars = CharModel("".join(sorted(set(alphabet))) + EOS, char_order)
        self.words = HPYLM(2, self.chars.p0, self._feed_chars)

    def _feed_chars(self, w: str, sign: int, rng: np.random.Generator) -> None:
        (self.chars.add if sign > 0 else self.chars.remove)(w, rng)

    # ----------------------------------------------------------------- the words
    def add_sentence(self, words: Sequence[str], rng: np.random.Generator) -> None:
        """Add the words of one segmented utterance (and its end-of-sentence) to the model."""
        prev = BOS
        for w in list(words) + [EOS]:
            self.words.add(w, (prev,), rng)
            prev = w

    def remove_sentence(self, words: Sequence[str], rng: np.random.Generator) -> None:
        """Undo :meth:`add_sentence`."""
        prev = BOS
        for w in list(words) + [EOS]:
            self.words.remove(w, (prev,), rng)
            prev = w

    def _unigram(self, s: str, subs: list[list[str]]) -> np.ndarray:
        """:math:`p(s_{a:a+k} \\mid ())` (T×(L+1)); ``subs[a][k - 1]`` is the substring :math:`s_{a:a+k}`."""
        p0 = self.chars.substring_p0(s, self.max_word_length)
        root = self.words.restaurants.get(())
        if root is None:
            return p0
        d, theta = self.words.d[0], self.words.theta[0]
        cw, tables = np.zeros_like(p0), np.zeros_like(p0)
        for a, row in enumerate(subs):
            for k, w in enumerate(row, 1):
                c = root.cw.get(w)
                if c:
                    cw[a, k], tables[a, k] = c, len(root.tables[w])
        return count_part(cw, tables, root.c, d, theta) + root.backoff(d, theta) * p0

    def forward(self, s: str, viterbi: bool = False, boost: Callable[[str], float] | None = None,
                power: float = 1.0) -> np.ndarray:
        """The forward table :math:`\\alpha` ((T+1)×(L+1), rows rescaled to sum to one).

        With ``viterbi`` the sums become maxima. ``boost(w)`` multiplies the probability of every
        word ``w`` (a concept module's prior; ``None``: 1); every word probability is raised to
        ``power`` (:math:`1/T` when annealing at temperature :math:`T`).
        """
        big_l, t_len = self.max_word_length, len(s)
        subs = [[s[a:a + k] for k in range(1, min(big_l, t_len - a) + 1)] for a in range(t_len)]
        uni = self._unigram(s, subs)
        d, theta = self.words.d[1], self.words.theta[1]
        alpha = np.zeros((t_len + 1, big_l + 1))
        alpha[0, 0] = 1.0
        log_scale = np.zeros(t_len + 1)  # row t of alpha holds the true row divided by exp(log_scale[t])
        for a in range(t_len):
            prev = [BOS] if a == 0 else [s[a - j:a] for j in range(1, min(big_l, a) + 1)]
            rests = [self.words.restaurants.get((v,)) for v in prev]
            js = np.arange(len(prev)) + (a > 0)
            back = np.array([1.0 if r is None else r.backoff(d, theta) for r in rests])
            n_k = min(big_l, t_len - a)
            probs = np.outer(uni[a, 1:n_k + 1], back)  # p(w | v): word length x previous word
            for i, r in enumerate(rests):
                if r is not None:
                    for k, w in enumerate(subs[a]):
                        if w in r.cw:
                            probs[k, i] += r.count_part(w, d, theta)
            if boost is not None:
                probs *= np.array([boost(w) for w in subs[a]])[:, None]
            cells = (probs if power == 1.0 else probs**power) * alpha[a, js]
            cells = cells.max(1) if viterbi else cells.sum(1)
            ends = np.arange(a + 1, a + n_k + 1)
            # a later row's entries are kept relative to the scale of its first contributing row
            alpha[ends, np.arange(1, n_k + 1)] = cells * np.exp(log_scale[a] - log_scale[np.maximum(ends - big_l, 0)])
            z = alpha[a + 1].sum()
            if z > 0:
                alpha[a + 1] /= z
                log_scale[a + 1] = log_scale[max(a + 1 - big_l, 0)] + np.log(z)
        return alpha

    def _backward(self, s: str, alpha: np.ndarray, rng: np.random.Generator | None, power: float = 1.0) -> list[str]:
        """Backward sampling (``rng``) or Viterbi back-tracking (``rng=None``) through ``alpha``."""
        t, nxt, words = len(s), EOS, []
        while t > 0:
            ks = np.arange(1, min(self.max_word_length, t) + 1)
            unigram = self.words.prob(nxt)
            weights = np.array([alpha[t, k] * self.words.prob(nxt, (s[t - k:t],), unigram) ** power for k in ks])
            if not weights.sum() > 0:
                raise FloatingPointError(f"NPYLM: no segmentation of {s!r} has positive probability")
            k = int(ks[weights.argmax()]) if rng is None else int(rng.choice(ks, p=weights / weights.sum()))
            nxt = s[t - k:t]
            words.append(nxt)
            t -= k
        return words[::-1]

    def sample(self, s: str, rng: np.random.Generator, n: int = 1, boost: Callable[[str], float] | None = None,
               power: float = 1.0) -> list[list[str]]:
        """``n`` segmentations of ``s`` drawn from the model's posterior raised to ``power`` (one forward pass)."""
        alpha = self.forward(s, boost=boost, power=power)
        return [self._backward(s, alpha, rng, power) for _ in range(n)]

    def viterbi(self, s: str) -> list[str]:
        """The most probable segmentation of ``s``."""
        return self._backward(s, self.forward(s, viterbi=True), None)

    def sample_hyperparameters(self, rng: np.random.Generator) -> None:
        """Resample :math:`(d, \\theta)` of every depth of both models (`HPYLM.sample_hyperparameters`)."""
        self.words.sample_hyperparameters(rng)
        self.chars.hpylm.sample_hyperparameters(rng)
        self.chars.set_hyperparameters(self.chars.hpylm.d, self.chars.hpylm.theta)

    def log_prob(self, words: Sequence[str]) -> float:
        """:math:`\\log p(w_1 \\dots w_m\\, \\text{EOS})` under the current model."""
        prev, total = BOS, 0.0
        for w in list(words) + [EOS]:
            total += np.log(self.words.prob(w, (prev,)))
            prev = w
        return float(total)


def temperatures(n_sweeps: int, start: float = 3.0, fraction: float = 0.6) -> list[float]:
    """An annealing schedule: :math:`1/T` rises linearly from ``1/start`` to 1 over the first ``fraction`` of the
    sweeps, then stays at :math:`T = 1`.

    >>> [round(t, 3) for t in temperatures(5, 2.0, 0.4)]
    [2.0, 1.333, 1.0, 1.0, 1.0]
    """
    warm = int(round(fraction * n_sweeps))
    inv = [1 / start + (1 - 1 / start) * j / max(warm, 1) for j in range(warm)]
    return [1 / x for x in inv] + [1.0] * (n_sweeps - warm)


def random_segmentation(s: str, max_word_length: int, rng: np.random.Generator, longest: int = 4) -> list[str]:
    """A segmentation of ``s`` into words of uniformly random lengths in ``1..min(longest, L)`` (the initial state)."""
    words, a = [], 0
    while a < len(s):
        k = int(rng.integers(1, min(longest, max_word_length) + 1))
        words.append(s[a:a + k])
        a += k
    return words


def gibbs_sweep(model: NPYLM, utterances: Sequence[str], segmentations: list[list[str]], rng: np.random.Generator,
                boosts: Sequence[Callable[[str], float] | None] | None = None, n_candidates: int = 1,
                temperature: float = 1.0) -> None:
    """One blocked Gibbs sweep in random order, replacing ``segmentations`` in place.

    Without ``boosts`` each utterance's segmentation is drawn from the model's posterior given the
    others. With ``boosts[i]`` (a concept module's belief about utterance ``i``'s words) SERKET's
    resampling of hypotheses: ``n_candidates`` segmentations are drawn from the model's posterior and
    one is kept with probability :math:`\\propto \\prod_{w} \\text{boost}_i(w)` (sampling-importance-resampling
    towards :math:`p(\\text{seg} \\mid s)\\prod_w \\text{boost}_i(w)`). At ``temperature`` :math:`T > 1` the
    segmentations are drawn from the posterior raised to :math:`1/T` (simulated annealing).
    """
    for i in rng.permutation(len(utterances)).tolist():
        model.remove_sentence(segmentations[i], rng)
        boost = None if boosts is None else boosts[i]
        if boost is None:
            segmentations[i] = model.sample(utterances[i], rng, power=1.0 / temperature)[0]
        else:
            candidates = model.sample(utterances[i], rng, n_candidates, power=1.0 / temperature)
            log_w = np.array([sum(np.log(boost(w)) for w in c) for c in candidates])
            weights = np.exp(log_w - log_w.max())
            segmentations[i] = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
        model.add_sentence(segmentations[i], rng)
    model.sample_hyperparameters(rng)
