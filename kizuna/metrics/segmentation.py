r"""Word-segmentation scores with the standard definitions (Goldwater et al. 2009; Brent 1999).

Both segmentations must spell the same utterances. With :math:`P` the predicted and :math:`G` the
true items, precision :math:`|P \cap G|/|P|`, recall :math:`|P \cap G|/|G|` and
:math:`F = 2PR/(P+R)`, pooled over the corpus, where the items are

* **boundaries**: positions between two symbols where a word ends, *excluding* the utterance
  edges (which are given);
* **word tokens**: the (start, end) spans of words, a token counting as correct only when both of
  its boundaries are correct and no boundary is inside it;
* **lexicon** (word types): the distinct word strings.

F is computed as :math:`2|P \cap G| / (|P| + |G|)`, which equals :math:`2PR/(P+R)` where both are
defined. A ratio with nothing to count is undefined (0/0) and reported as NaN, as in the literature
(scikit-learn's ``zero_division=np.nan``): boundary recall when no true utterance has an internal
boundary (every utterance one word), boundary precision when no predicted one has, and boundary F
when neither has. So identical segmentations of one-word utterances score NaN for boundaries (they
were 0), and a prediction without boundaries against a truth with some has precision NaN, recall 0, F 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SegmentationScores:
    """Precision, recall and F of boundaries, tokens and lexicon (fractions in [0, 1])."""

    boundary_precision: float
    boundary_recall: float
    boundary_f: float
    token_precision: float
    token_recall: float
    token_f: float
    lexicon_precision: float
    lexicon_recall: float
    lexicon_f: float


def spans(words: Sequence[str]) -> list[tuple[int, int]]:
    """The (start, end) character spans of consecutive ``words``.

    >>> spans(["yu", "want", "tu"])
    [(0, 2), (2, 6), (6, 8)]
    """
    out, a = [], 0
    for w in words:
        out.append((a, a + len(w)))
        a += len(w)
    return out


def _prf(hits: int, predicted: int, true: int) -> tuple[float, float, float]:
    """P, R and F = 2 hits / (predicted + true) (= 2PR / (P + R) where both are defined); 0/0 is NaN."""
    p = hits / predicted if predicted else math.nan
    r = hits / true if true else math.nan
    return p, r, (2 * hits / (predicted + true) if predicted + true else math.nan)


def _check_corpus(corpus: Sequence[Sequence[str]], what: str) -> list[list[str]]:
    """Each utterance a list of non-empty word strings (a string as an utterance would be scored per character);
    returns the corpus as lists, read once (iterators and generators were used up by this check, and the scores
    then read nothing: all NaN, or an utterance said to differ from an empty one)."""
    if isinstance(corpus, str):
        raise TypeError(f"segmentation_scores: {what} must be a list of utterances (each a list of words), "
                        f"got the string {corpus[:30]!r}")
    if not isinstance(corpus, Iterable):  # (None: "'NoneType' object is not iterable")
        raise TypeError(f"segmentation_scores: {what} must be a list of utterances (each a list of words), got "
                        f"{type(corpus).__name__}")
    out: list[list[str]] = []
    for i, utterance in enumerate(corpus):
        if not isinstance(utterance, Iterable):
            raise TypeError(f"segmentation_scores: {what} utterance {i} is {type(utterance).__name__}; give each "
                            "utterance as a list of words, e.g. ['yu', 'want', 'tu']")
        if isinstance(utterance, str):
            raise TypeError(f"segmentation_scores: {what} utterance {i} is the string {utterance[:30]!r}; give each "
                            "utterance as a list of words, e.g. ['yu', 'want', 'tu']")
        utterance = list(utterance)
        out.append(utterance)
        for j, word in enumerate(utterance):
            if not isinstance(word, str):
                raise TypeError(f"segmentation_scores: {what} utterance {i}, word {j} is {type(word).__name__} "
                                f"{word!r}, not a string")
            if not word:
                raise ValueError(f"segmentation_scores: {what} utterance {i}, word {j} is empty; a word has at "
                                 "least one symbol")
    return out


def segmentation_scores(true: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> SegmentationScores:
    """Scores of ``predicted`` against ``true`` (lists of utterances, each a list of non-empty word strings).

    A ratio with nothing to count (0/0) is NaN; see the module docstring.

    >>> s = segmentation_scores([["yu", "want", "tu"]], [["yuwant", "tu"]])
    >>> s.boundary_precision, s.boundary_recall, round(s.token_f, 3)
    (1.0, 0.5, 0.4)
    """
    true, predicted = _check_corpus(true, "true"), _check_corpus(predicted, "predicted")
    if len(true) != len(predicted):
        raise ValueError(f"segmentation_scores: {len(true)} true utterances but {len(predicted)} predicted")
    b = [0, 0, 0]  # hits, predicted, true
    t = [0, 0, 0]
    for i, (g, p) in enumerate(zip(true, predicted)):
        if "".join(g) != "".join(p):
            raise ValueError(f"segmentation_scores: utterance {i} differs: {''.join(g)!r} vs {''.join(p)!r}")
        gs, ps = set(spans(g)), set(spans(p))
        gb, pb = {e for _, e in gs} - {len("".join(g))}, {e for _, e in ps} - {len("".join(g))}
        b = [b[0] + len(gb & pb), b[1] + len(pb), b[2] + len(gb)]
        t = [t[0] + len(gs & ps), t[1] + len(ps), t[2] + len(gs)]
    lex_g = {w for u in true for w in u}
    lex_p = {w for u in predicted for w in u}
    return SegmentationScores(*_prf(*b), *_prf(*t), *_prf(len(lex_g & lex_p), len(lex_p), len(lex_g)))
