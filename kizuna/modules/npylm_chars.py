r"""NPYLM's character model: a character n-gram HPYLM whose counts are mirrored in dense arrays.

The seating (tables, customers, hyper-parameters) is `kizuna.modules.pitman_yor.HPYLM`; through its
``observer`` this class keeps, for every depth :math:`m < n`, the counts :math:`c_{hc}, t_{hc}, c_h, t_h`
in arrays indexed by an integer code of the context (its :math:`m` last symbols in base
:math:`S+1`). Then the probability of every character of every substring of an utterance is one
vectorised evaluation of the same `count_part` / `backoff` formulas,

.. math:: p_0(s_{a:a+k}) = \Big[\prod_{j<k} p(s_{a+j}\mid \text{ctx}_{a,j})\Big]\, p(\text{EOW}\mid \text{ctx}_{a,k}),

where :math:`\text{ctx}_{a,j}` are the :math:`n-1` symbols before position :math:`j` of the word,
padded with a begin-of-word symbol. The base is uniform over the :math:`S` characters and EOW.

``length_weight[k]`` multiplies :math:`p_0` of every word of length :math:`k` (1 by default): NPYLM's
word-length correction (`kizuna.modules.npylm_length`) sets it to :math:`\text{Po}(k)/p_\text{char}(k)`.
"""

from __future__ import annotations

import numpy as np

from kizuna.modules.pitman_yor import HPYLM, backoff, check_hyperparameters, count_part


class CharModel:
    """A character n-gram HPYLM over ``alphabet`` with vectorised substring probabilities.

    Args:
        alphabet: the characters (one symbol each); code ``S`` is EOW as a symbol and BOW in contexts.
        order: :math:`n`.
    """

    def __init__(self, alphabet: str, order: int = 3) -> None:
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"CharModel: the alphabet must be non-empty distinct characters, got {alphabet!r}")
        self.alphabet = alphabet
        self.codes = {ch: i for i, ch in enumerate(alphabet)}
        self.size = len(alphabet) + 1  # characters + EOW (as a symbol) / BOW (in a context)
        self.order = order
        self.hpylm = HPYLM(order, self._uniform, observer=self._observe)  # (a lambda here could not be pickled)
        s = self.size
        self.cw = [np.zeros((s**m, s)) for m in range(order)]
        self.tw = [np.zeros((s**m, s)) for m in range(order)]
        self.c = [np.zeros(s**m) for m in range(order)]
        self.t = [np.zeros(s**m) for m in range(order)]
        self._memo: dict[str, float] = {}  # p0 of words since the last seating change
        self.length_weight = np.ones(1)  # weight of a word of length k (1 beyond the array)


    def _uniform(self, c: object) -> float:
        """The base measure of the character n-grams: uniform over the characters and the word end."""
        return 1.0 / self.size

    def encode(self, text: str) -> np.ndarray:
        """Character codes of ``text`` (a clear error for characters outside the alphabet)."""
        try:
            return np.array([self.codes[ch] for ch in text], dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"CharModel: symbol {err.args[0]!r} of {text!r} is not in the alphabet "
                             f"{self.alphabet!r}") from None

    def _observe(self, key: tuple, c: int, customers: int, tables: int) -> None:
        self._memo.clear()
        m = len(key)
        code = sum(k * self.size**q for q, k in enumerate(reversed(key)))
        self.cw[m][code, c] += customers
        self.tw[m][code, c] += tables
        self.c[m][code] += customers
        self.t[m][code] += tables

    def set_length_weight(self, weight: np.ndarray) -> None:
        """Multiply :math:`p_0` of every word of length ``k < len(weight)`` by ``weight[k]`` (forgets the memo)."""
        self.length_weight = np.asarray(weight, dtype=float)
        self._memo.clear()

    def _weight(self, k: int) -> float:
        return float(self.length_weight[k]) if k < len(self.length_weight) else 1.0

    def transitions(self) -> np.ndarray:
        """:math:`Q[h, c] = p(c \\mid h)` for every context code ``h`` of depth :math:`n-1` and every symbol
        ``c`` (``size**(n-1)`` × ``size``; code ``size - 1`` is EOW as a symbol and BOW in a context)."""
        n_ctx = self.size ** (self.order - 1)
        codes = np.arange(n_ctx)
        ctx = np.stack([(codes // self.size**q) % self.size for q in range(self.order - 2, -1, -1)], -1) \
            if self.order > 1 else np.zeros((1, 0), dtype=np.int64)
        symbols = np.broadcast_to(np.arange(self.size), (n_ctx, self.size))
        return self.probs(np.broadcast_to(ctx[:, None, :], (n_ctx, self.size, self.order - 1)), symbols)

    def set_hyperparameters(self, d: list[float], theta: list[float]) -> None:
        """Set every depth's :math:`(d_m, \\theta_m)` (forgets the memoised probabilities): ``order`` of each, every
        depth's :math:`0 \\le d_m < 1` and :math:`\\theta_m > -d_m`, finite (`check_hyperparameters`, as
        `NPYLM.load_state` checks them; a negative discount gave negative probabilities); nothing changes when it
        raises."""
        if len(d) != self.order or len(theta) != self.order:
            raise ValueError(f"CharModel.set_hyperparameters: {self.order} discounts and strengths (one per depth of "
                             f"the order-{self.order} model), got {len(d)} and {len(theta)}")
        check_hyperparameters("CharModel.set_hyperparameters", d, theta)
        self.hpylm.d, self.hpylm.theta = list(d), list(theta)
        self._memo.clear()

    def set_seating(self, seating: list) -> None:
        """Replace the seating by `HPYLM.seating`'s output (the dense counts follow through the observer)."""
        self.hpylm.set_seating(seating)
        self._memo.clear()

    def _spell(self, word: str) -> list[tuple[int, tuple]]:
        bow, eow = self.size - 1, self.size - 1
        padded = [bow] * (self.order - 1) + self.encode(word).tolist()
        out = [(padded[i], tuple(padded[i - self.order + 1:i])) for i in range(self.order - 1, len(padded))]
        return out + [(eow, tuple(padded[len(padded) - self.order + 1:]))]

    def add(self, word: str, rng: np.random.Generator) -> None:
        """Add the characters of ``word`` and its EOW as customers."""
        for c, h in self._spell(word):
            self.hpylm.add(c, h, rng)

    def remove(self, word: str, rng: np.random.Generator) -> None:
        """Remove what :meth:`add` added."""
        for c, h in self._spell(word):
            self.hpylm.remove(c, h, rng)

    def probs(self, contexts: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        """:math:`p(\\text{symbol} \\mid \\text{context})` elementwise; ``contexts`` (..., n-1) oldest first."""
        p = np.full(symbols.shape, 1.0 / self.size)
        code = np.zeros(symbols.shape, dtype=np.int64)
        for m in range(self.order):
            if m:
                code += contexts[..., -m] * self.size ** (m - 1)
            d, theta = self.hpylm.d[m], self.hpylm.theta[m]
            cell = code * self.size + symbols
            c = self.c[m].take(code)
            p = (count_part(self.cw[m].take(cell), self.tw[m].take(cell), c, d, theta)
                 + backoff(self.t[m].take(code), c, d, theta) * p)
        return p

    def substring_p0(self, text: str, max_length: int) -> np.ndarray:
        """:math:`p_0(s_{a:a+k})` for every start ``a`` and length ``1 \\le k \\le L`` (T×(L+1), 0 where impossible)."""
        x = self.encode(text)
        t_len, big_l, bow = len(x), max_length, self.size - 1
        a = np.arange(t_len)[:, None]
        j = np.arange(big_l + 1)[None, :]
        pos = a + j  # absolute position of the j-th symbol of a word starting at a
        q = np.arange(self.order - 1, 0, -1)  # how far back each context symbol is (oldest first)
        ctx = np.where(j[..., None] - q >= 0, x[np.clip(pos[..., None] - q, 0, t_len - 1)], bow)
        symbols = np.stack([x[np.clip(pos, 0, t_len - 1)], np.full(pos.shape, bow)])  # the next symbol; EOW
        chars, eow = self.probs(np.broadcast_to(ctx, (2, *ctx.shape)), symbols)
        chars = np.where(pos < t_len, chars, 0.0)
        prefix = np.cumprod(np.concatenate([np.ones((t_len, 1)), chars[:, :-1]], 1), 1)  # prod of first k chars
        out = prefix * eow
        out[:, 0] = 0.0
        n_w = min(len(self.length_weight), big_l + 1)
        out[:, :n_w] *= self.length_weight[:n_w]
        return np.where(pos <= t_len, out, 0.0)

    def p0(self, word: str) -> float:
        """:math:`p_0(w)` of one word (memoised until the seating changes)."""
        p = self._memo.get(word)
        if p is None:
            p = 1.0
            for c, h in self._spell(word):
                p *= self.hpylm.prob(c, h)
            p *= self._weight(len(word))
            self._memo[word] = p
        return p
