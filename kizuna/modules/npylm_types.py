r"""Type-level Metropolis-Hastings moves for NPYLM: every occurrence of a word type moves at once.

Blocked Gibbs re-segments one utterance at a time, so a chain that spells a word one way everywhere
(the article glued to a name, "D6kIC6n") stays there: changing one occurrence alone is improbable under
a model whose counts hold all the others. In the spirit of Liang, Jordan & Klein (2010, type-based
MCMC), a **name move** acts on every *site* of a pair of strings :math:`(a, b)` at once: a site is an
occurrence of the token :math:`ab` or of the adjacent tokens :math:`a\ b`. The move is the involution

* all sites merged (tokens :math:`ab`) :math:`\to` all split (:math:`a\ b`), and back;
* sites of both kinds: no move (the state is kept).

With :math:`a \ne b` the set of sites is the same before and after (splitting creates no other adjacent
:math:`a\ b` and merging no other :math:`ab`), so the move is its own inverse.

**Proposal.** The candidates :math:`C(x)` of a state :math:`x` are the pairs :math:`(t_{:k}, t_{k:})` of every
token type :math:`t` seen at least ``min_count`` times and every adjacent token pair :math:`(a, b)` seen at
least ``min_count`` times (:math:`a \ne b`, :math:`|a| + |b| \le L`). Pair :math:`(a, b)` is drawn with weight
:math:`1 + \kappa\,[\,n_a - n_{ab} \ge m \text{ or } n_b - n_{ab} \ge m\,]` (``favour`` :math:`=\kappa`,
:math:`n_a` the token count of :math:`a`, :math:`n_{ab}` the count of adjacent :math:`a\ b`, :math:`m` =
``min_count``): splits whose halves are already words elsewhere (the article "D6") are favoured. The
weight of the chosen pair and its membership of :math:`C` are unchanged by its own move, so the proposal
ratio is :math:`q(x' \to x) / q(x \to x') = Z(x) / Z(x')` with :math:`Z` the sum of the weights.

**Acceptance.** :math:`\min(1, [\pi(x') / \pi(x)]^{1/T}\, Z(x) / Z(x'))` with :math:`\pi` the joint probability of
the affected utterances given the others. The exact marginal of a hierarchical Pitman-Yor model sums over
table seatings; we **approximate** it by the sequential predictive probability: remove every affected
utterance from the language model (and, when connected, from the slot model's `ConceptNames`), add them
back one by one in index order, each scored by its predictive probability given the model so far (the
seating of each added customer drawn as Gibbs does), once for the old segmentation and once for the new
one. With ``names`` each word's probability is the slot model's mixture
:math:`\lambda G_n(w) + (1-\lambda) p_\text{LM}(w \mid v)` (`kizuna.modules.npylm_slot`), so the concepts'
evidence for a name enters the decision; with `kizuna.modules.npylm_name.NameSlots` each utterance's probability
is the one-name model's, summed over the slot (then drawn from its posterior when the utterance is seated);
without, the language model's alone. A rejected move restores a
copy of the models taken before it, so the state is bit-for-bit what it was; so does any exception raised during
the move (a KeyboardInterrupt, a numpy error), which then propagates (`kizuna.modules.npylm.all_or_nothing`;
before, the affected utterances were left out of the model).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from kizuna.modules.npylm import all_or_nothing
from kizuna.modules.npylm_name import NameSlots

if TYPE_CHECKING:
    from kizuna.modules.npylm import NPYLM
    from kizuna.modules.npylm_slot import ConceptNames


def counts(segmentations: Sequence[Sequence[str]]) -> tuple[Counter, Counter]:
    """Token counts and adjacent-pair counts of a segmentation."""
    tokens, pairs = Counter(), Counter()
    for words in segmentations:
        tokens.update(words)
        pairs.update(zip(words[:-1], words[1:]))
    return tokens, pairs


def candidates(segmentations: Sequence[Sequence[str]], max_word_length: int, min_count: int = 5,
               favour: float = 4.0) -> dict[tuple[str, str], float]:
    """The candidate pairs :math:`C(x)` and their proposal weights (module docstring)."""
    tokens, pairs = counts(segmentations)
    out: dict[tuple[str, str], float] = {}
    keys = [(t[:k], t[k:]) for t, c in tokens.items() if c >= min_count for k in range(1, len(t))]
    keys += [p for p, c in pairs.items() if c >= min_count]
    for a, b in keys:
        if a == b or len(a) + len(b) > max_word_length or (a, b) in out:
            continue
        n_ab = pairs.get((a, b), 0)
        known = tokens.get(a, 0) - n_ab >= min_count or tokens.get(b, 0) - n_ab >= min_count
        out[(a, b)] = 1.0 + favour * known
    return out


def split_words(words: Sequence[str], a: str, b: str) -> list[str]:
    """Every token :math:`ab` of ``words`` split into :math:`a\\ b`."""
    ab, out = a + b, []
    for w in words:
        out += [a, b] if w == ab else [w]
    return out


def merge_words(words: Sequence[str], a: str, b: str) -> list[str]:
    """Every adjacent :math:`a\\ b` of ``words`` merged into :math:`ab` (left to right; :math:`a \\ne b`)."""
    out, i = [], 0
    while i < len(words):
        if i + 1 < len(words) and words[i] == a and words[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


def proposal(segmentations: Sequence[Sequence[str]], a: str, b: str) -> tuple[list[int], list[list[str]]] | None:
    """The utterances the move of :math:`(a, b)` changes and their new words; None when the sites are mixed (or
    there are none)."""
    ab = a + b
    merged = [n for n, words in enumerate(segmentations) if ab in words]
    split = [n for n, words in enumerate(segmentations)
             if any(u == a and v == b for u, v in zip(words[:-1], words[1:]))]
    if bool(merged) == bool(split):
        return None
    if merged:
        return merged, [split_words(segmentations[n], a, b) for n in merged]
    return split, [merge_words(segmentations[n], a, b) for n in split]


def add_scored(model: NPYLM, n: int, words: list[str], rng: np.random.Generator,
               names: ConceptNames | NameSlots | None = None) -> float:
    """Add utterance ``n``'s words to the model (and to ``names``) and return their log predictive probability
    given the model before the addition (with ``names``, the slot model's; with `NameSlots`, the one-name
    model's, the slot summed over and then drawn, `kizuna.modules.npylm_name`)."""
    if isinstance(names, NameSlots):
        return names.add_scored(model, n, words, rng)
    prev, total, rho = "\x02", 0.0, []
    for w in words:
        p_lm = model.words.prob(w, (prev,))
        if names is None:
            total += math.log(p_lm)
        else:
            lam = names.weight
            slot = lam * names.prob(n, w, model.chars.p0(w))
            total += math.log(slot + (1 - lam) * p_lm)
            rho.append(slot / (slot + (1 - lam) * p_lm))
        prev = w
    total += math.log(model.words.prob("\x03", (prev,)))
    model.add_sentence(words, rng)
    if names is not None:
        names.add(n, words, rho)
    return total


def _remove(model: NPYLM, index: Sequence[int], segmentations: Sequence[Sequence[str]], rng: np.random.Generator,
            names: ConceptNames | NameSlots | None) -> None:
    for n in index:
        if isinstance(names, NameSlots):
            names.remove(model, n, segmentations[n], rng)
            continue
        model.remove_sentence(segmentations[n], rng)
        if names is not None:
            names.remove(n)


def _snapshot(model: NPYLM, names: ConceptNames | NameSlots | None) -> tuple:
    memo = {id(model): model}  # the word model's callback stays bound to this model
    return copy.deepcopy((model.words, model.chars, model.length), memo), copy.deepcopy(names)


def _restore(model: NPYLM, names: ConceptNames | NameSlots | None, saved: tuple) -> None:
    (model.words, model.chars, model.length), old = saved
    if names is not None:
        names.__dict__.update(old.__dict__)


def type_move(model: NPYLM, segmentations: list[list[str]], rng: np.random.Generator,
              names: ConceptNames | NameSlots | None = None, min_count: int = 5, favour: float = 4.0,
              temperature: float = 1.0, pair: tuple[str, str] | None = None) -> dict:
    """One name move (module docstring), changing ``segmentations`` in place when accepted.

    ``pair``: the pair to move (a test's choice; its proposal probability is still counted). Returns a record:
    ``pair``, ``accepted``, ``log_old``, ``log_new`` (sequential predictive log-probabilities of the affected
    utterances), ``log_q`` (:math:`\\log Z(x) - \\log Z(x')`), ``log_ratio`` (the log acceptance ratio before
    the minimum), ``split`` (the move split :math:`ab`, else it merged :math:`a\\ b`) and ``changed`` (the
    utterances' indices); ``pair`` None when there is no candidate. All or nothing: on any exception the models,
    ``names`` and ``segmentations`` are restored to their state before the move (bit for bit) and it propagates.
    """
    record = {"pair": None, "accepted": False, "log_old": 0.0, "log_new": 0.0, "log_q": 0.0, "log_ratio": -math.inf,
              "split": False, "changed": []}
    if not all(segmentations):
        return record
    weights = candidates(segmentations, model.max_word_length, min_count, favour)
    if pair is None:
        if not weights:
            return record
        keys = list(weights)
        w = np.array([weights[k] for k in keys])
        pair = keys[int(rng.choice(len(keys), p=w / w.sum()))]
    elif pair not in weights:
        raise ValueError(f"type_move: {pair!r} is not a candidate")
    record["pair"] = pair
    moved = proposal(segmentations, *pair)
    if moved is None:
        return record
    index, new = moved
    split = pair[0] + pair[1] in segmentations[index[0]]
    new_segs = list(segmentations)
    for n, words in zip(index, new):
        new_segs[n] = words
    if max(len(w) for words in new for w in words) > model.max_word_length:
        return record
    weights_new = candidates(new_segs, model.max_word_length, min_count, favour)
    log_q = math.log(sum(weights.values())) - math.log(sum(weights_new.values()))
    saved, before = _snapshot(model, names), [segmentations[n] for n in index]

    def back() -> None:  # the state before the move: the models' copy and the affected entries of the list
        _restore(model, names, saved)
        for n, words in zip(index, before):
            segmentations[n] = words

    with all_or_nothing() as undo:  # any exception from here on (a KeyboardInterrupt, a numpy error) runs back()
        undo.append(back)
        _remove(model, index, segmentations, rng, names)
        log_old = sum(add_scored(model, n, segmentations[n], rng, names) for n in index)
        _remove(model, index, segmentations, rng, names)
        log_new = sum(add_scored(model, n, words, rng, names) for n, words in zip(index, new))
        log_ratio = (log_new - log_old) / temperature + log_q
        accepted = log_ratio >= 0 or rng.random() < math.exp(log_ratio)
        if accepted:
            for n, words in zip(index, new):
                segmentations[n] = words
        else:
            back()
    record.update(split=split, accepted=accepted, log_old=log_old, log_new=log_new, log_q=log_q, log_ratio=log_ratio,
                  changed=list(index))
    return record


def type_moves(model: NPYLM, segmentations: list[list[str]], rng: np.random.Generator, n_moves: int,
               names: ConceptNames | NameSlots | None = None, min_count: int = 5, favour: float = 4.0,
               temperature: float = 1.0) -> list[dict]:
    """``n_moves`` name moves (`type_move`); their records."""
    return [type_move(model, segmentations, rng, names, min_count, favour, temperature) for _ in range(n_moves)]
