r"""NPYLM's character model: a character n-gram HPYLM whose counts are mirrored in (dense or sparse) arrays.

The seating (tables, customers, hyper-parameters) is `kizuna.modules.pitman_yor.HPYLM`; through its
``observer`` this class keeps, for every depth :math:`m < n`, the counts :math:`c_{hc}, t_{hc}, c_h, t_h`
keyed by an integer code of the context (its :math:`m` last symbols in base :math:`S+1`, :math:`S+1` the
alphabet's size with EOW) and of the symbol (`SparseCounts`). A depth with up to `DENSE_KEYS` possible keys keeps dense
arrays; a larger one only the (context, symbol) cells and the contexts that have ever held a customer, so memory
grows with the data, not as :math:`(S+1)^n`: dense arrays of a 3-gram model over a 2,400-symbol alphabet would take
107 GiB each. Then the probability of every character of every substring of an utterance is one vectorised
evaluation (a gather, or a sorted-key lookup with 0 for a cell never seen) of the same `count_part` / `backoff`
formulas,

.. math:: p_0(s_{a:a+k}) = \Big[\prod_{j<k} p(s_{a+j}\mid \text{ctx}_{a,j})\Big]\, p(\text{EOW}\mid \text{ctx}_{a,k}),

where :math:`\text{ctx}_{a,j}` are the :math:`n-1` symbols before position :math:`j` of the word,
padded with a begin-of-word symbol. The base is uniform over the :math:`S` characters and EOW.

``length_weight[k]`` multiplies :math:`p_0` of every word of length :math:`k` (1 by default): NPYLM's
word-length correction (`kizuna.modules.npylm_length`) sets it to :math:`\text{Po}(k)/p_\text{char}(k)`.
"""

from __future__ import annotations

import numpy as np

from kizuna.modules.pitman_yor import HPYLM, backoff, check_hyperparameters, count_part

#: The largest dense table `CharModel.transitions` builds (the length correction needs one of
#: :math:`(S+1)^{n-1} \times (S+1)` floats): 1 GiB.
MAX_TRANSITIONS_BYTES = 1 << 30


#: Up to this many possible keys `SparseCounts` keeps its counts dense (16 bytes a key: 64 MiB), indexed by the key
#: itself, as fast as a plain array; beyond, only the keys in use, found by a binary search in the sorted keys.
DENSE_KEYS = 1 << 22


class SparseCounts:
    """Two float counts, ``first`` and ``second``, at integer keys ``0 .. n_keys - 1``.

    With ``n_keys`` at most `DENSE_KEYS` the arrays are dense and a key is its own row. Beyond, only keys ever added
    to are stored: a key's row is given when it is first seen and kept (its counts may return to 0), row 0 is all
    zeros, what `lookup` gives a key never seen, and `lookup` searches a sorted copy of the keys (rebuilt after new
    keys arrive). So memory grows with the keys in use, not with ``n_keys``.
    """

    def __init__(self, n_keys: int) -> None:
        self.is_dense = n_keys <= DENSE_KEYS
        self.first, self.second = np.zeros(n_keys if self.is_dense else 16), np.zeros(n_keys if self.is_dense else 16)
        self.rows: dict[int, int] = {}  # key -> row (sparse only)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, key: int, first: float, second: float) -> None:
        """Add ``first`` and ``second`` to the counts at ``key``."""
        row = key if self.is_dense else self.rows.get(key)
        if row is None:
            row = self.rows[key] = len(self.rows) + 1
            if row == len(self.first):
                self.first, self.second = (np.concatenate([a, np.zeros_like(a)]) for a in (self.first, self.second))
            self._sorted = None
        self.first[row] += first
        self.second[row] += second

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The rows of ``keys`` (any shape; sparse: 0, the zero row, for keys never seen)."""
        if self.is_dense:
            return keys
        if self._sorted is None:
            k = np.fromiter(self.rows, dtype=np.int64, count=len(self.rows))
            order = np.argsort(k)
            self._sorted = (k[order], np.fromiter(self.rows.values(), dtype=np.int64, count=len(self.rows))[order])
        k, rows = self._sorted
        if not len(k):
            return np.zeros(np.shape(keys), dtype=np.int64)
        i = np.minimum(np.searchsorted(k, keys), len(k) - 1)
        return np.where(k[i] == keys, rows[i], 0)

    def dense(self, n_keys: int, column: int) -> np.ndarray:
        """``first`` (``column`` 0) or ``second`` (1) as a dense vector over the keys ``0 .. n_keys - 1``."""
        values = self.second if column else self.first
        if self.is_dense:
            return values.copy()
        out = np.zeros(n_keys)
        if self.rows:
            out[np.fromiter(self.rows, dtype=np.int64)] = values[list(self.rows.values())]
        return out


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
        if self.size**order >= 2**62:  # a (context, symbol) code must fit an int64
            raise ValueError(f"CharModel: an order-{order} model over {self.size} symbols (the alphabet and EOW) has "
                             f"{self.size}**{order} (context, symbol) cells, more than int64 codes can name; use a "
                             "smaller char_order")
        self.hpylm = HPYLM(order, self._uniform, observer=self._observe)  # (a lambda here could not be pickled)
        # per depth m: (c_hc, t_hc) at code(h) * size + c and (c_h, t_h) at code(h); dense up to DENSE_KEYS keys,
        # else only those ever seated
        self.cells = [SparseCounts(self.size ** (m + 1)) for m in range(order)]
        self.contexts = [SparseCounts(self.size**m) for m in range(order)]
        self._memo: dict[str, float] = {}  # p0 of words since the last seating change
        self.length_weight = np.ones(1)  # weight of a word of length k (1 beyond the array)

    # dense copies of the counts, (size**m, size) and (size**m,) per depth m: for inspection and tests of small
    # alphabets only (they take size**order floats)
    @property
    def cw(self) -> list[np.ndarray]:
        """:math:`c_{hc}` of every depth as dense arrays (``size**m`` × ``size``; small alphabets only)."""
        return [cells.dense(self.size ** (m + 1), 0).reshape(-1, self.size) for m, cells in enumerate(self.cells)]

    @property
    def tw(self) -> list[np.ndarray]:
        """:math:`t_{hc}` of every depth as dense arrays (``size**m`` × ``size``; small alphabets only)."""
        return [cells.dense(self.size ** (m + 1), 1).reshape(-1, self.size) for m, cells in enumerate(self.cells)]

    @property
    def c(self) -> list[np.ndarray]:
        """:math:`c_h` of every depth as dense arrays (``size**m``; small alphabets only)."""
        return [ctx.dense(self.size**m, 0) for m, ctx in enumerate(self.contexts)]

    @property
    def t(self) -> list[np.ndarray]:
        """:math:`t_h` of every depth as dense arrays (``size**m``; small alphabets only)."""
        return [ctx.dense(self.size**m, 1) for m, ctx in enumerate(self.contexts)]

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
        self.cells[m].add(code * self.size + c, customers, tables)
        self.contexts[m].add(code, customers, tables)

    def set_length_weight(self, weight: np.ndarray) -> None:
        """Multiply :math:`p_0` of every word of length ``k < len(weight)`` by ``weight[k]`` (forgets the memo)."""
        self.length_weight = np.asarray(weight, dtype=float)
        self._memo.clear()

    def _weight(self, k: int) -> float:
        return float(self.length_weight[k]) if k < len(self.length_weight) else 1.0

    def transitions(self) -> np.ndarray:
        """:math:`Q[h, c] = p(c \\mid h)` for every context code ``h`` of depth :math:`n-1` and every symbol
        ``c`` (``size**(n-1)`` × ``size``; code ``size - 1`` is EOW as a symbol and BOW in a context).

        A dense table, so a ValueError naming its size when it would take more than `MAX_TRANSITIONS_BYTES`
        (the length correction needs it: 107 GiB for a 3-gram model over 2,400 symbols)."""
        n_ctx = self.size ** (self.order - 1)
        need = n_ctx * self.size * 8
        if need > MAX_TRANSITIONS_BYTES:
            raise ValueError(f"CharModel.transitions: the order-{self.order} model over {self.size} symbols (the "
                             f"alphabet and EOW) needs a dense {n_ctx} x {self.size} table, {need / 2**30:.3g} GiB "
                             f"(more than {MAX_TRANSITIONS_BYTES / 2**30:.3g} GiB); the word-length correction "
                             "needs it: use a smaller char_order or length_correction=False (or raise "
                             "kizuna.modules.npylm_chars.MAX_TRANSITIONS_BYTES)")
        # depth by depth, as `probs` does elementwise: the parent of context code h at depth m is h % size**(m - 1)
        # (the oldest symbol is the highest digit), so the parent's rows repeat size times
        p = np.full((1, self.size), 1.0 / self.size)
        for m in range(self.order):
            d, theta = self.hpylm.d[m], self.hpylm.theta[m]
            rows = self.size**m
            cw = self.cells[m].dense(rows * self.size, 0).reshape(rows, self.size)
            tw = self.cells[m].dense(rows * self.size, 1).reshape(rows, self.size)
            c, t = self.contexts[m].dense(rows, 0)[:, None], self.contexts[m].dense(rows, 1)[:, None]
            p = count_part(cw, tw, c, d, theta) + backoff(t, c, d, theta) * (np.tile(p, (self.size, 1)) if m else p)
        return p

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

    def check_seating(self, seating: list) -> None:
        """A ValueError naming the first flaw of `HPYLM.seating`'s output ``seating`` for this model (what
        `set_seating` would refuse, and symbol ids outside ``0 .. size - 1``); changes nothing."""
        HPYLM(self.order, self._uniform).set_seating(seating)  # a throw-away model checks the restaurants
        for key, words in seating:
            for symbol in [*key, *(w for w, _ in words)]:
                if isinstance(symbol, bool) or not isinstance(symbol, (int, np.integer)) or not 0 <= symbol < self.size:
                    raise ValueError(f"CharModel.set_seating: symbol {symbol!r} in context {list(key)!r} is not an "
                                     f"id of the {self.size} symbols (0 .. {self.size - 1})")

    def set_seating(self, seating: list) -> None:
        """Replace the seating by `HPYLM.seating`'s output (the counts follow through the observer); checked first
        (`check_seating`), nothing changes when it raises."""
        self.check_seating(seating)
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
            cells, heads = self.cells[m], self.contexts[m]
            cell, row = cells.lookup(code * self.size + symbols), heads.lookup(code)
            c = heads.first.take(row)
            p = (count_part(cells.first.take(cell), cells.second.take(cell), c, d, theta)
                 + backoff(heads.second.take(row), c, d, theta) * p)
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
