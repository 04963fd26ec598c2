"""Type-level name moves of NPYLM (`kizuna.modules.npylm_types`): bookkeeping, acceptance ratio, rejection."""

from __future__ import annotations

import copy
import math
from collections import Counter

import numpy as np
import pytest

import kizuna.modules as km
from kizuna.modules.npylm import NPYLM, gibbs_sweep
from kizuna.modules.npylm_slot import ConceptNames
from kizuna.modules.npylm_types import candidates, merge_words, proposal, split_words, type_move

LEXICON = ["ta", "kir", "bodu", "ne", "mo"]


def corpus(n: int = 40, seed: int = 0) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Utterances "ta <name>", "<name>", "mo ta <name> ne" with names kir / bodu, segmented with "ta" glued to the
    name (the state a name move should undo), and a two-concept posterior (kir → 0, bodu → 1)."""
    rng = np.random.default_rng(seed)
    segs, resp = [], []
    for _ in range(n):
        name = ["kir", "bodu"][int(rng.integers(2))]
        form = int(rng.integers(3))
        segs.append([["ta" + name], [name], ["mo", "ta" + name, "ne"]][form])
        r = np.full(2, 0.1)
        r[int(name == "bodu")] = 0.9
        resp.append(r)
    return ["".join(w) for w in segs], segs, np.array(resp)


def build(segs: list[list[str]], seed: int = 1, max_word_length: int = 6) -> NPYLM:
    model = NPYLM("".join(sorted(set("".join(LEXICON)))), max_word_length=max_word_length)
    rng = np.random.default_rng(seed)
    for words in segs:
        model.add_sentence(words, rng)
    return model


def state(model: NPYLM, names: ConceptNames | None, segs: list[list[str]]) -> tuple:
    """Everything a move may touch, as comparable values (arrays as bytes)."""
    def hpylm(h):
        return (list(h.d), list(h.theta), {k: (r.c, r.t, dict(r.cw), {w: list(t) for w, t in r.tables.items()})
                                           for k, r in h.restaurants.items()})
    chars = model.chars
    dense = [a.tobytes() for arrays in (chars.cw, chars.tw, chars.c, chars.t) for a in arrays]
    named = None if names is None else ({w: c.tobytes() for w, c in names.counts.items()}, names.totals.tobytes(),
                                        copy.deepcopy(names.slots), copy.deepcopy(names.words))
    return hpylm(model.words), hpylm(chars.hpylm), dense, dict(chars._memo), named, copy.deepcopy(segs)


def check_counts(model: NPYLM, segs: list[list[str]]) -> None:
    """The model's seating-independent counts are those of ``segs`` and of a model rebuilt from it."""
    bigrams = Counter()
    for words in segs:
        prev = "\x02"
        for w in words + ["\x03"]:
            bigrams[(prev, w)] += 1
            prev = w
    held = {(k[0], w): c for k, r in model.words.restaurants.items() if k for w, c in r.cw.items()}
    assert held == dict(bigrams)
    rebuilt = build(segs, seed=5, max_word_length=model.max_word_length)
    assert held == {(k[0], w): c for k, r in rebuilt.words.restaurants.items() if k for w, c in r.cw.items()}
    for h in (model.words, model.chars.hpylm):  # every restaurant's totals agree with its tables
        for r in h.restaurants.values():
            assert r.c == sum(r.cw.values()) == sum(map(sum, r.tables.values()))
            assert r.t == sum(map(len, r.tables.values()))
            assert all(r.cw[w] == sum(t) for w, t in r.tables.items())
    root = model.words.restaurants[()]  # a root customer per table of the bigram level
    tables = Counter()
    for k, r in model.words.restaurants.items():
        if k:
            for w, t in r.tables.items():
                tables[w] += len(t)
    assert dict(root.cw) == dict(tables)
    spelled = sum((len(w) + 1) * len(t) for w, t in root.tables.items())
    assert sum(r.c for k, r in model.chars.hpylm.restaurants.items() if len(k) == 2) == spelled
    assert model.words.on_base.__self__ is model  # the restored models still feed this model's characters


def test_split_merge_and_sites():
    assert split_words(["mo", "takir", "ne"], "ta", "kir") == ["mo", "ta", "kir", "ne"]
    assert merge_words(["mo", "ta", "kir", "ta", "kir"], "ta", "kir") == ["mo", "takir", "takir"]
    segs = [["takir"], ["mo", "takir", "ne"], ["bodu"]]
    assert proposal(segs, "ta", "kir") == ([0, 1], [["ta", "kir"], ["mo", "ta", "kir", "ne"]])
    assert proposal([["ta", "kir"], ["takir"]], "ta", "kir") is None  # mixed sites: no move
    weights = candidates([["takir"], ["takir"], ["ta", "bodu"], ["ta", "bodu"]], 6, min_count=2, favour=3.0)
    # splits of "takir" (ta / kir favoured: "ta" is a word outside the pair's sites), of "ta" and "bodu", and the
    # merge of the pair ta bodu (not favoured: every "ta" and "bodu" is one of its sites)
    assert weights == {("t", "akir"): 1.0, ("ta", "kir"): 4.0, ("tak", "ir"): 1.0, ("taki", "r"): 1.0,
                       ("t", "a"): 1.0, ("b", "odu"): 1.0, ("bo", "du"): 1.0, ("bod", "u"): 1.0, ("ta", "bodu"): 1.0}


@pytest.mark.parametrize("connected", [False, True])
def test_moves_keep_the_counts_of_the_segmentation(connected):
    utterances, segs, resp = corpus()
    rng = np.random.default_rng(2)
    model = build(segs)
    names = ConceptNames.counted(resp, segs, None, 0.3, 1.0) if connected else None
    accepted = rejected = 0
    for _ in range(6):
        gibbs_sweep(model, utterances, segs, rng, names=names)
        for _ in range(8):
            r = type_move(model, segs, rng, names, min_count=3, temperature=4.0)  # accept some
            accepted += r["accepted"]
            rejected += bool(r["changed"]) and not r["accepted"]
        assert all("".join(w) == u for w, u in zip(segs, utterances))
        check_counts(model, segs)
        if names is not None:
            assert names.words == segs
            again = ConceptNames.counted(resp, segs, names.slots, 0.3, 1.0)
            assert set(again.counts) <= set(names.counts)
            for w, c in names.counts.items():
                np.testing.assert_allclose(c, again.counts.get(w, 0.0), atol=1e-9)
            np.testing.assert_allclose(names.totals, again.totals, atol=1e-9)
    assert accepted > 0, "no move accepted"
    assert rejected > 0, "no move rejected"


def reference_log_ratio(model: NPYLM, segs: list[list[str]], new: dict[int, list[str]], rng: np.random.Generator,
                        names: ConceptNames | None) -> tuple[float, float]:
    """The sequential predictive log-probabilities of the affected utterances, old and new, done by hand."""
    def score(words: list[str], n: int) -> tuple[float, list[float]]:
        total, prev, rho = 0.0, "\x02", []
        for w in words:
            p = model.words.prob(w, (prev,))
            if names is not None:  # G_n(w) written out from the DP formula
                row = names.counts.get(w, np.zeros(2)).clip(0.0)
                g = float(names.resp[n] @ ((row + names.concentration * model.chars.p0(w))
                                           / (names.totals + names.concentration)))
                rho.append(names.weight * g / (names.weight * g + (1 - names.weight) * p))
                p = names.weight * g + (1 - names.weight) * p
            total += math.log(p)
            prev = w
        return total + math.log(model.words.prob("\x03", (prev,))), rho

    def remove_all(current):
        for n in sorted(new):
            model.remove_sentence(current[n], rng)
            if names is not None:
                names.remove(n)

    def add_all(current):
        total = 0.0
        for n in sorted(new):
            lp, rho = score(current[n], n)
            total += lp
            model.add_sentence(current[n], rng)
            if names is not None:
                names.add(n, current[n], rho)
        return total

    remove_all(segs)
    log_old = add_all(segs)
    remove_all(segs)
    return log_old, add_all({**dict(enumerate(segs)), **new})


@pytest.mark.parametrize("connected", [False, True])
@pytest.mark.parametrize("pair", [("ta", "kir"), ("ta", "bodu"), ("t", "akir")])
def test_acceptance_ratio_is_the_sequential_predictive_ratio(connected, pair):
    utterances, segs, resp = corpus(seed=3)
    model = build(segs)
    names = ConceptNames.counted(resp, segs, None, 0.3, 1.0) if connected else None
    rng = np.random.default_rng(7)
    model2, names2, segs2, rng2 = copy.deepcopy((model, names, segs, rng))
    weights = candidates(segs, 6, min_count=3)
    record = type_move(model, segs, rng, names, min_count=3, pair=pair)
    index, words = proposal(segs2, *pair)
    new_segs = list(segs2)
    for n, w in zip(index, words):
        new_segs[n] = w
    log_old, log_new = reference_log_ratio(model2, segs2, dict(zip(index, words)), rng2, names2)
    log_q = math.log(sum(weights.values())) - math.log(sum(candidates(new_segs, 6, min_count=3).values()))
    assert record["changed"] == index
    assert record["log_old"] == pytest.approx(log_old, rel=1e-12)
    assert record["log_new"] == pytest.approx(log_new, rel=1e-12)
    assert record["log_ratio"] == pytest.approx(log_new - log_old + log_q, rel=1e-12)
    if record["accepted"]:  # the same draws: the accepted state is the reference's
        assert state(model, names, segs)[:4] == state(model2, names2, new_segs)[:4]


@pytest.mark.parametrize("connected", [False, True])
def test_a_rejected_move_leaves_the_state_as_it_was(connected):
    utterances, segs, resp = corpus(seed=4)
    rng = np.random.default_rng(11)
    model = build(segs)
    names = ConceptNames.counted(resp, segs, None, 0.3, 1.0) if connected else None
    gibbs_sweep(model, utterances, segs, rng, names=names)
    rejected = 0
    for pair in candidates(segs, 6, min_count=3):
        before = state(model, names, segs)
        record = type_move(model, segs, rng, names, min_count=3, pair=pair, temperature=1e-9)
        if record["changed"] and not record["accepted"]:
            rejected += 1
            assert state(model, names, segs) == before
        if record["accepted"]:
            check_counts(model, segs)
    assert rejected > 0


def test_segmenter_option():
    utterances, _, _ = corpus(30)
    seg = km.WordSegmenter(n_iter=3, type_moves=4, type_min_count=3, random_state=0).fit(utterances)
    assert len(seg.type_records_) == 12
    assert all("".join(w) == u for w, u in zip(seg.segmentation_, utterances))
    check_counts(seg.model_, seg.segmentation_)
    with pytest.raises(ValueError):
        km.WordSegmenter(type_moves=-1)
