"""The one-name model (`kizuna.modules.npylm_name`, `WordSegmenter(prior_mode="name")`): forward filtering /
backward sampling over segmentation and slot jointly against enumerating every segmentation times every slot
position with each probability written out from the language model and the name distribution (dictionary
paths), seating against a rebuilt model, the name moves under it, and the module under a concept module."""

import numpy as np
import pytest
import torch
from npylm_reference import segmentations
from scipy import stats

from kizuna import modules as km
from kizuna.datasets import simulated_house
from kizuna.modules.npylm import NPYLM
from kizuna.modules.npylm_name import (
    NAME,
    NameSlots,
    initial_slots,
    lm_words,
    name_backward,
    name_forward,
    name_log_evidence,
    name_sweep,
    name_table,
    name_viterbi,
    sample_name,
)
from kizuna.modules.npylm_types import type_moves

RESP = np.array([[0.7, 0.3], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
SEATED = {1: (["ab", "cd", "a"], 1), 2: (["d", "cd"], None), 3: (["cd"], 0), 4: (["ab", "dc", "ab"], 2)}


def _model(rng: np.random.Generator, hyper: bool = True) -> tuple[NPYLM, NameSlots]:
    """Utterances 1-4 seated with their slots, beside sentences in the language model only; utterance 0 out."""
    model = NPYLM("abcd" + NAME, max_word_length=4, char_order=2)
    for words in [["ab", "cd"], ["ab", NAME], ["cd", "ab", "a"], ["d", NAME, "b"]] * 2:
        model.add_sentence(words, rng)
    slots = NameSlots(RESP, 0.7)
    for n, (words, slot) in SEATED.items():
        slots.add(model, n, words, slot, rng)
    if hyper:
        model.sample_hyperparameters(rng)
    return model, slots


def _enumerate(model: NPYLM, slots: NameSlots, s: str, power: float = 1.0) -> tuple[list, np.ndarray]:
    """Every (segmentation, slot) of ``s`` and its log-probability written out (`NameSlots.log_joint`, which
    uses the word model's and the name counts' dictionaries)."""
    states, log_p = [], []
    for words in segmentations(s, 4):
        joint = slots.log_joint(model, 0, words)
        for i, value in enumerate(joint):
            states.append((words, None if i == 0 else i - 1))
            log_p.append(power * value)
    return states, np.array(log_p)


def test_log_joint_is_the_product_written_out():
    rng = np.random.default_rng(0)
    model, slots = _model(rng)
    words = ["ab", "c", "da"]
    by_hand = (np.log(model.words.prob("ab", ("\x02",))) + np.log(model.words.prob(NAME, ("ab",)))
               + np.log(slots.names.prob(0, "c", model.chars.p0("c"))) + np.log(model.words.prob("da", (NAME,)))
               + np.log(model.words.prob("\x03", ("da",))))
    assert slots.log_joint(model, 0, words)[2] == pytest.approx(by_hand, abs=1e-12)
    r, a = RESP[0], 0.7  # G_0("cd") by the Dirichlet-process formula: "cd" is the slot of utterances 1 and 3
    totals = RESP[1] + RESP[3] + RESP[4]
    g = sum(r[l] * (RESP[1][l] + RESP[3][l] + a * model.chars.p0("cd")) / (totals[l] + a) for l in range(2))
    assert slots.names.prob(0, "cd", model.chars.p0("cd")) == pytest.approx(g, rel=1e-12)


@pytest.mark.parametrize("hyper", [False, True])
def test_forward_total_equals_the_sum_over_segmentations_and_slots(hyper):
    rng = np.random.default_rng(1)
    model, slots = _model(rng, hyper)
    for s in ["abcda", "dcab", "a", "abcdabc"]:
        _, log_p = _enumerate(model, slots, s)
        total = log_p.max() + np.log(np.exp(log_p - log_p.max()).sum())
        assert name_log_evidence(model, s, 0, slots) == pytest.approx(total, abs=1e-10)


@pytest.mark.parametrize("hyper", [False, True])
def test_viterbi_is_the_best_segmentation_and_slot_of_the_enumeration(hyper):
    """`name_viterbi` (max-product forward pass, back-tracking) against the argmax over every segmentation ×
    every slot position written out."""
    rng = np.random.default_rng(2)
    model, slots = _model(rng, hyper)
    for s in ["abcda", "dcab", "a", "abcdabc", "cdcdab"]:
        states, log_p = _enumerate(model, slots, s)
        words, slot = name_viterbi(model, s, slots, 0)
        assert (tuple(words), slot) == tuple(states[int(log_p.argmax())])
        assert slots.log_joint(model, 0, words)[0 if slot is None else slot + 1] == pytest.approx(log_p.max(),
                                                                                                   abs=1e-12)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_draws_match_enumeration(power):
    rng = np.random.default_rng(2)
    model, slots = _model(rng)
    s = "abcda"
    states, log_p = _enumerate(model, slots, s, power)
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    n_draws = 6000
    x, eos = name_table(model, s, 0, slots)
    x, eos = x**power, eos**power
    alpha = name_forward(x)[0]  # one forward pass, many backward draws (sample_name draws one)
    draws = [name_backward(s, alpha, x, eos, rng) for _ in range(n_draws)]
    assert sample_name(model, s, 0, slots, rng, power)[0] in [list(w) for w, _ in states]
    index = {(tuple(w), i): h for h, (w, i) in enumerate(states)}
    observed = np.bincount([index[(tuple(w), i)] for w, i in draws], minlength=len(states))
    keep = n_draws * p > 5
    expected = n_draws * p[keep]
    rest = n_draws - observed[keep].sum()
    chi = stats.chisquare(np.append(observed[keep], rest), np.append(expected, n_draws - expected.sum()))
    assert chi.pvalue > 1e-3
    assert sum(i is not None for _, i in draws) > 0 and sum(i is None for _, i in draws) > 0


def _language(rng: np.random.Generator, n: int = 40) -> tuple[list[str], np.ndarray]:
    names = ["kab", "dod"]
    fill = [["ba", "c"], ["ca"], ["b", "ca"]]
    utterances, place = [], rng.integers(2, size=n)
    for p in place.tolist():
        words = list(fill[int(rng.integers(3))])
        if rng.random() < 0.8:
            words.insert(int(rng.integers(len(words) + 1)), names[p])
        utterances.append("".join(words))
    resp = np.full((n, 2), 0.05)
    resp[np.arange(n), place] = 0.95
    return utterances, resp


def _customers(model: NPYLM) -> dict:
    """The bigram contexts' customers (the root's depend on the seating: one customer per bigram table)."""
    return {h: dict(r.cw) for h, r in model.words.restaurants.items() if r.c and h}


def test_sweeps_and_moves_keep_the_counts_equal_to_a_rebuilt_model():
    rng = np.random.default_rng(3)
    utterances, resp = _language(rng)
    model = NPYLM("abcdko" + NAME, max_word_length=5, char_order=2)
    segmentation = [[u[:2], u[2:]] if len(u) > 2 else [u] for u in utterances]
    slots = NameSlots(resp, 1.0)
    for n, words in enumerate(segmentation):
        slots.add(model, n, words, 0 if n % 2 else None, rng)
    for _ in range(3):
        name_sweep(model, utterances, segmentation, slots, rng)
        records = type_moves(model, segmentation, rng, 10, slots, min_count=3)
    assert any(r["changed"] for r in records)
    rebuilt = NPYLM("abcdko" + NAME, max_word_length=5, char_order=2)
    for words, slot in zip(segmentation, slots.slot):
        rebuilt.add_sentence(lm_words(words, slot), rng)
    assert _customers(model) == _customers(rebuilt)
    root = model.words.restaurants[()]
    tables = {}
    for h, r in model.words.restaurants.items():
        for w, t in r.tables.items():
            tables[w] = tables.get(w, 0) + (len(t) if h else 0)
    assert {w: c for w, c in root.cw.items() if c} == {w: c for w, c in tables.items() if c}
    for r in model.words.restaurants.values():
        assert r.c == sum(r.cw.values()) and r.t == sum(len(t) for t in r.tables.values())
        assert all(sum(t) == r.cw[w] for w, t in r.tables.items())
    again = NameSlots.counted(resp, segmentation, slots.slot, 1.0)
    assert set(again.names.counts) <= set(slots.names.counts)
    for w, row in slots.names.counts.items():
        assert np.allclose(row, again.names.counts.get(w, 0.0), atol=1e-12)
    assert np.allclose(slots.names.totals, again.names.totals, atol=1e-12)
    assert all("".join(w) == u for w, u in zip(segmentation, utterances))
    for n, words in enumerate(segmentation):  # removing everything empties both models
        slots.remove(model, n, words, rng)
    assert not _customers(model) and not any(c.any() for c in model.chars.c) and slots.names.totals.max() < 1e-9


def test_initial_slots_pick_the_concept_specific_word():
    segmentation = [["x", "kab"], ["kab"], ["x", "dod"], ["dod", "y"], ["x", "y"]]
    resp = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0.5, 0.5]], dtype=float)
    assert initial_slots(segmentation, resp, min_lift=1.5) == [1, 0, 1, 0, None]  # two concepts: lift at most 2


def test_name_segmenter_under_a_concept_module():
    house = simulated_house(120, seed=0)
    seg = km.WordSegmenter(n_iter=4, sweeps_per_update=1, prior_mode="name", type_moves=2, name="seg")
    assert seg.prior_over == "classes"
    spco = km.SpatialConcept(8, sweeps=3).connect(km.GMM(6, max_iter=3).connect(km.Observation(house["position"])),
                                                 seg.connect(km.Observation(house["utterance"])))
    km.Graph([spco]).fit(3, seed=0)
    slots = seg.chain_slots_[0]
    assert slots is not None and sum(s is not None for s in slots) > 0
    assert all("".join(w) == u for w, u in zip(seg.segmentation_, house["utterance"]))
    assert NAME in seg.model_.words.restaurants[()].cw  # the language model holds the class token
    # segmenting new utterances: jointly with the name slot, the names from the slot words pooled over concepts
    new = simulated_house(40, seed=1)["utterance"]
    pooled = NameSlots.counted(np.ones((len(slots), 1)), seg.chain_segmentations_[0], slots, seg.slot_concentration)
    assert seg.segment(new) == [name_viterbi(seg.model_, s, pooled)[0] for s in new]
    assert all("".join(w) == u for w, u in zip(seg.segment(new), new))
    with pytest.raises(ValueError, match="NAME"):
        seg.segment(["ab\x04c"])
    # with the places of the new utterances known (the concept posterior at their positions), each concept's
    # names weighted by the utterance's row: G(w) = sum_l r_l (c_l(w) + a p0(w)) / (T_l + a), where c_l(w) counts
    # the fit's slot words w with their utterances' posterior r_nl and T_l every slot word's
    newhouse = simulated_house(40, seed=1)
    rows = spco.predict_concepts(newhouse["position"])
    fit = seg.concepts_.numpy()
    assert fit.shape == (120, rows.shape[1]) and np.allclose(fit.sum(1), 1)
    names, first = seg._new_names(len(new), rows)
    assert first == 120
    words = seg.chain_segmentations_[0]
    slot_words = [None if i is None else ws[i] for ws, i in zip(words, slots)]
    a = seg.slot_concentration
    totals = sum(fit[n] for n, w in enumerate(slot_words) if w is not None)
    for w in sorted({w for w in slot_words if w is not None})[:6] + ["zzb"]:  # seen slot words, and an unseen string
        c = sum((fit[n] for n, v in enumerate(slot_words) if v == w), np.zeros(fit.shape[1]))
        p0 = seg.model_.chars.p0(w)
        for m in (0, 7):
            hand = float(rows[m] / rows[m].sum() @ ((c + a * p0) / (totals + a)))
            assert names.names.prob(first + m, w, p0) == pytest.approx(hand, rel=1e-12)
    placed = seg.segment(new, concepts=rows)
    assert placed == [name_viterbi(seg.model_, s, names, first + m)[0] for m, s in enumerate(new)]
    assert all("".join(w) == u for w, u in zip(placed, new))
    assert seg.segment(new, concepts=torch.as_tensor(rows) * 3) == placed  # a tensor, rows normalised
    with pytest.raises(ValueError, match="one row per utterance"):
        seg.segment(new, concepts=rows[:5])
    with pytest.raises(ValueError, match="non-negative"):
        seg.segment(new, concepts=-rows)
    # the concept posterior of the fit is part of the saved state
    again = km.WordSegmenter(n_iter=4, sweeps_per_update=1, prior_mode="name", type_moves=2, name="seg")
    again.load_state_dict(seg.state_dict())
    assert torch.equal(again.concepts_, seg.concepts_)
    paired = km.WordSegmenter(n_iter=4, prior_mode="name", random_state=0).fit(house["utterance"][:40])
    paired.resume(1, 0)
    assert paired.chain_slots_[0] is None
    seen = house["utterance"][:40]
    assert paired.segment(seen) == [paired.model_.viterbi(s) for s in seen]  # no slots in force: the plain model
    with pytest.raises(ValueError, match="one-name model"):
        paired.segment(seen, concepts=np.ones((40, 3)))
    with pytest.raises(ValueError, match="NAME"):
        km.WordSegmenter(prior_mode="name", n_iter=1).fit(["ab\x04c"])
