r"""NPYLM's word-length correction (Mochihashi et al. 2009, section 4.3).

A character n-gram model spells words whose lengths follow whatever its end-of-word
probabilities imply (close to geometric), which is a poor model of a lexicon. Mochihashi et al.
replace the length part of the base measure:

.. math::
    p_0(w) = p_\text{char}(c_1 \dots c_k \mid k)\, p(k) = \frac{p_\text{char}(c_1 \dots c_k)}{p_\text{char}(k)}\, p(k),
    \qquad p(k) = \text{Po}(k - 1 \mid \lambda),

so :math:`\sum_w p_0(w) = \sum_k p(k) = 1`, the sum running over every string the character model spells, the
end-of-sentence symbol among its characters (the end-of-sentence word is seated as a word, so its symbol is one of
the alphabet's): over the real words alone it is less than one (0.70 over the words of length 8 or less of a two-letter
alphabet after a few sentences, a review found). Here :math:`k - 1` is Poisson (every word has at least
one symbol; Mochihashi et al. write :math:`\text{Po}(k \mid \lambda)`, which leaves the mass at 0
unused) and :math:`\lambda \sim \text{Gamma}(a, b)` is drawn from its posterior given the lengths of
the words at the tables of the word model's empty context (the draws from :math:`p_0`):
:math:`\lambda \mid \cdot \sim \text{Gamma}(a + \sum_i (k_i - 1),\ b + n)`.

:math:`p_\text{char}(k) = \sum_{|w| = k} p_\text{char}(w\,\text{EOW})` is computed **exactly**, by a
forward pass over the character model's contexts (:math:`S^{n-1}` states; Mochihashi et al.
estimate it by sampling words). Both are refreshed once a sweep, with the other hyper-parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import stats

from kizuna._data import check_positive
from kizuna.modules.npylm_chars import CharModel


def char_length_distribution(chars: CharModel, max_length: int) -> np.ndarray:
    r""":math:`p_\text{char}(|w| = k)` for :math:`k = 0 \dots` ``max_length`` (entry 0 is 0).

    With :math:`f_k(h)` the probability of spelling :math:`k` symbols and ending in context :math:`h`,
    :math:`f_0 = \delta_{\text{BOW}\dots\text{BOW}}`, :math:`f_{k}(h_2 \dots h_{n-1} c) = \sum_{h_1}
    f_{k-1}(h_1 \dots h_{n-1})\, p(c \mid h_1 \dots h_{n-1})` over symbols :math:`c \ne \text{EOW}`, and
    :math:`p_\text{char}(k) = \sum_h f_k(h)\, p(\text{EOW} \mid h)`.
    """
    q = chars.transitions()
    size, eow = chars.size, chars.size - 1
    n_ctx = q.shape[0]
    f = np.zeros(n_ctx)
    f[n_ctx - 1] = 1.0  # the all-BOW context (every digit size - 1)
    out = np.zeros(max_length + 1)
    for k in range(1, max_length + 1):
        g = f[:, None] * q[:, :eow]
        if n_ctx == 1:
            f = np.array([g.sum()])
        else:
            f = np.zeros((n_ctx // size, size))
            f[:, :eow] = g.reshape(size, n_ctx // size, eow).sum(0)  # drop the oldest symbol, append c
            f = f.reshape(-1)
        out[k] = f @ q[:, eow]
    return out


class WordLength:
    """:math:`k - 1 \\sim \\text{Po}(\\lambda)` with a Gamma(a, b) prior on :math:`\\lambda` (see the module docstring).

    Args:
        lam: initial :math:`\\lambda`.
        a, b: shape and rate of the prior.
    """

    def __init__(self, lam: float = 2.0, a: float = 1.0, b: float = 1.0) -> None:
        for name, value in (("lam", lam), ("a", a), ("b", b)):  # NaN passed `<= 0`, inf made every p(k) 0
            check_positive(f"WordLength: {name}", value)
        self.lam, self.a, self.b = lam, a, b

    def pmf(self, max_length: int) -> np.ndarray:
        """:math:`p(k)` for :math:`k = 0 \\dots` ``max_length`` (entry 0 is 0)."""
        k = np.arange(max_length + 1)
        return np.where(k >= 1, stats.poisson.pmf(k - 1, self.lam), 0.0)

    def sample(self, lengths: Iterable[int], rng: np.random.Generator) -> float:
        """Draw :math:`\\lambda` from its posterior given word ``lengths`` (each at least 1); returns it."""
        k = np.fromiter(lengths, dtype=float)
        if k.size and k.min() < 1:
            raise ValueError("WordLength.sample: word lengths must be >= 1")
        self.lam = float(rng.gamma(self.a + (k - 1).sum(), 1.0 / (self.b + k.size)))
        return self.lam

    def weights(self, chars: CharModel, max_length: int) -> np.ndarray:
        """:math:`p(k) / p_\\text{char}(k)` for :math:`k = 0 \\dots` ``max_length``: `CharModel.length_weight`."""
        p_char = char_length_distribution(chars, max_length)
        return np.divide(self.pmf(max_length), p_char, out=np.zeros(max_length + 1), where=p_char > 0)
