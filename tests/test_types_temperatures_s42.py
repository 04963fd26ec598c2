"""Stop 42 fixes: a name move (`kizuna.modules.npylm_types.type_move`) is all or nothing under any exception, and
`kizuna.modules.npylm.temperatures` ends at T = 1 whenever ``fraction < 1`` (one sweep of SpatialConcept with
``anneal=3`` ran at T = 3 and sent the tempered posterior)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_segment_type_moves import LEXICON, build, check_counts, corpus, state

import kizuna.modules as km
import kizuna.modules.npylm_types as nt
from kizuna.datasets.house import simulated_house
from kizuna.modules.npylm import NPYLM, temperatures
from kizuna.modules.npylm_name import NAME, NameSlots
from kizuna.modules.npylm_slot import ConceptNames

# ------------------------------------------------------------------------------------------- A. type_move


def _stop_at(monkeypatch, name: str, k: int, exc: type[BaseException]) -> None:
    """Make ``npylm_types.<name>`` raise ``exc`` at its k-th call (1-based)."""
    orig, calls = getattr(nt, name), [0]

    def stopping(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            raise exc(f"injected at call {k} of {name}")
        return orig(*args, **kwargs)

    monkeypatch.setattr(nt, name, stopping)


def _setup(kind: str):
    """A model holding the corpus with "ta" glued to the names, and the names model of ``kind``."""
    _, segs, resp = corpus(seed=4)
    rng = np.random.default_rng(11)
    if kind == "slots":  # the one-name model: the name (the last "ta<name>" or "<name>" token) in the slot
        model, slots = NPYLM("".join(sorted(set("".join(LEXICON)))) + NAME, max_word_length=6), NameSlots(resp, 1.0)
        for n, words in enumerate(segs):
            slots.add(model, n, words, 1 if len(words) == 3 else 0, rng)
        return model, slots, segs, rng
    model = build(segs)
    names = ConceptNames.counted(resp, segs, None, 0.3, 1.0) if kind == "names" else None
    return model, names, segs, rng


def _state(model, names, segs) -> tuple:
    if isinstance(names, NameSlots):
        return state(model, names.names, segs), list(names.slot)
    return state(model, names, segs)


def test_the_repro_keeps_every_customer_seated(monkeypatch):
    """/work/exp/s42/fix_words/type_move_interrupt.py: seated bigram customers went 39 -> 16."""
    rng = np.random.default_rng(0)
    segs = [["ab", "cd"], ["ab", "cd", "ab"], ["cd", "ab"], ["ab", "cd"]] * 3
    model = NPYLM("abcd", max_word_length=4)
    for w in segs:
        model.add_sentence(w, rng)
    before = state(model, None, segs)
    _stop_at(monkeypatch, "add_scored", 3, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt, match="injected at call 3"):
        nt.type_move(model, segs, rng, min_count=2, pair=("ab", "cd"))
    assert sum(r.c for h, r in model.words.restaurants.items() if len(h) == 1) == 39 == sum(len(w) + 1 for w in segs)
    assert state(model, None, segs) == before


@pytest.mark.parametrize("kind", ["plain", "names", "slots"])
@pytest.mark.parametrize("where", [("add_scored", 1), ("add_scored", 3), ("add_scored", 14), ("_remove", 2)])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, FloatingPointError])
def test_an_exception_inside_a_move_restores_the_state_bit_for_bit(monkeypatch, kind, where, exc):
    """Stopped while re-adding the old words (calls 1, 3), the new ones (call 14 of 2 x 10) or removing them a second
    time: the models, the names and the list equal those before (the old code left the utterances out); the move
    then runs as on an untouched copy."""
    model, names, segs, rng = _setup(kind)
    index, _ = nt.proposal(segs, "ta", "kir")
    assert len(index) == 10  # 2 x 10 calls of add_scored
    before, twin = _state(model, names, segs), copy.deepcopy((model, names, segs, rng))
    _stop_at(monkeypatch, *where, exc)
    with pytest.raises(exc, match="injected"):
        nt.type_move(model, segs, rng, names, min_count=3, pair=("ta", "kir"))
    assert _state(model, names, segs) == before
    if kind != "slots":
        check_counts(model, segs)
    monkeypatch.undo()
    rng.bit_generator.state = twin[3].bit_generator.state  # (the stopped move drew some seatings)
    assert nt.type_move(model, segs, rng, names, min_count=3, pair=("ta", "kir")) == \
        nt.type_move(twin[0], twin[2], twin[3], twin[1], min_count=3, pair=("ta", "kir"))
    assert _state(model, names, segs) == _state(*twin[:3])


class _StopsAtSecondWrite(list):
    """A segmentation list whose second item assignment raises (a KeyboardInterrupt while an accepted move writes
    its utterances)."""

    def __init__(self, items) -> None:
        super().__init__(items)
        self.writes = 0

    def __setitem__(self, i, value):
        self.writes += 1
        if self.writes == 2:
            raise KeyboardInterrupt("injected at the second write")
        super().__setitem__(i, value)


@pytest.mark.parametrize("kind", ["plain", "names"])
def test_an_accepted_move_stopped_while_writing_the_list_restores_model_and_list(kind):
    model, names, segs, rng = _setup(kind)
    twin = copy.deepcopy((model, names, segs, rng))
    assert nt.type_move(twin[0], twin[2], twin[3], twin[1], min_count=3, pair=("ta", "kir"), temperature=1e9)[
        "accepted"]
    before = _state(model, names, segs)
    segs = _StopsAtSecondWrite(segs)
    with pytest.raises(KeyboardInterrupt, match="second write"):
        nt.type_move(model, segs, rng, names, min_count=3, pair=("ta", "kir"), temperature=1e9)
    assert _state(model, names, list(segs)) == before  # old code: the first utterance split, the model all split
    check_counts(model, list(segs))


# ------------------------------------------------------------------------------------------ B. temperatures


@pytest.mark.parametrize("fraction", [0.6, 0.7])
@pytest.mark.parametrize("start", [1.5, 3.0])
def test_the_last_sweep_runs_at_t_1_below_fraction_1(fraction, start):
    for n in range(1, 6):
        schedule = temperatures(n, start, fraction)
        assert len(schedule) == n and schedule[-1] == 1.0, (n, schedule)
        warm = min(round(fraction * n), n - 1)  # the closed form: 1/T linear from 1/start over the warm sweeps
        expected = [1 / (1 / start + (1 - 1 / start) * j / max(warm, 1)) for j in range(warm)] + [1.0] * (n - warm)
        assert schedule == pytest.approx(expected, rel=1e-15)
    assert temperatures(1, start, fraction) == [1.0]  # was [start]
    assert temperatures(1, start, 1.0) == [start]  # fraction 1: every sweep anneals, as before
    assert temperatures(0, start, fraction) == []


def test_one_annealed_sweep_of_spatial_concept_sends_the_untempered_posterior():
    """SpatialConcept(sweeps=1, anneal=3): the only sweep ran at T = 3 and its posterior was p^(1/3) (mean max
    0.59 against 0.94, reviews/spatial.md finding 1); now it is the T = 1 run's, draw for draw."""
    torch.set_num_threads(1)
    h = simulated_house(60, seed=1)

    def fit(anneal: float) -> km.SpatialConcept:
        gmm = km.GMM(4, max_iter=5, name="gmm").connect(km.Observation(h["position"], name="position"))
        spco = km.SpatialConcept(6, name="spco", sweeps=1, anneal=anneal, n_init=1).connect(
            gmm, km.Observation(h["word_counts"]), km.Observation(h["view"]))
        km.Graph([spco]).fit(1, seed=0)
        return spco

    cold, annealed = fit(1.0), fit(3.0)
    torch.testing.assert_close(annealed.posterior, cold.posterior, rtol=0, atol=0)
    assert torch.equal(annealed.chain, cold.chain)
    np.testing.assert_array_equal(annealed.sampler_.component_prior(), cold.sampler_.component_prior())
