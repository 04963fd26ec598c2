"""Word segmentation sweeps that stop half-way (an exception, a KeyboardInterrupt) leave the language model holding
every utterance once, as its segmentation says; the resampling's lifts are computed as logs (a large ``prior_weight``
neither overflows nor underflows)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import kizuna.modules as km
import kizuna.modules.npylm as npylm
import kizuna.modules.npylm_name as npylm_name
from kizuna.modules.npylm import BOS, EOS, NPYLM, gibbs_sweep
from kizuna.modules.npylm_name import NameSlots, lm_words, name_sweep
from kizuna.modules.npylm_slot import ConceptNames
from kizuna.robot_demo import simulated_house


def _assert_seated(model: NPYLM, sentences: list[list[str]]) -> None:
    """The model holds exactly ``sentences`` (``[]``: not in the model): every bigram context's customers are the
    sentences' bigrams counted by hand, the root's customers are its children's tables, the character model's
    deepest customers are the spellings of the root's tables, and every restaurant's totals add up."""
    want: Counter = Counter()
    for words in sentences:
        if words:
            s = [BOS, *words, EOS]
            want.update(zip(s, s[1:]))
    have = Counter({(h[0], w): c for h, r in model.words.restaurants.items() if len(h) == 1 for w, c in r.cw.items()})
    assert +have == want
    tables: Counter = Counter()
    for h, r in model.words.restaurants.items():
        if h:
            tables.update({w: len(t) for w, t in r.tables.items()})
    root = model.words.restaurants.get(())
    assert +Counter(root.cw if root else {}) == +tables
    spelled: Counter = Counter()
    for w, t in (root.tables.items() if root else []):
        for c, h in model.chars._spell(w):
            spelled[(h, c)] += len(t)
    deep = model.chars.order - 1
    chars = Counter({(h, c): n for h, r in model.chars.hpylm.restaurants.items() if len(h) == deep
                     for c, n in r.cw.items()})
    assert +chars == +spelled
    for hpylm in (model.words, model.chars.hpylm):
        for r in hpylm.restaurants.values():
            assert r.c == sum(r.cw.values()) and r.t == sum(len(t) for t in r.tables.values())
            assert all(sum(t) == r.cw[w] for w, t in r.tables.items())


def _raise_on_call(k: int, original):
    """``original`` that raises a KeyboardInterrupt on its k-th call (once)."""
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    return wrapped


def _small(rng: np.random.Generator) -> tuple[NPYLM, list[str], list[list[str]]]:
    utterances = ["abab", "ba", "abba", "aab", "bab"]
    segs = [["ab", "ab"], ["ba"], ["ab", "ba"], ["a", "ab"], ["ba", "b"]]
    model = NPYLM("ab", max_word_length=3)
    for words in segs:
        model.add_sentence(words, rng)
    return model, utterances, segs


# ---------------------------------------------------------------------- finding 1: gibbs_sweep, name_sweep
@pytest.mark.parametrize("where", ["boost", "draw", "adding", "removing"])
def test_gibbs_sweep_stopped_in_its_first_step_leaves_the_model_as_before(monkeypatch, where):
    """A refused boost (the review's repro), or a KeyboardInterrupt in the draw, between two customers of the new
    sentence or of the old one: the model holds the same customers as before the sweep, segmentations unchanged."""
    rng = np.random.default_rng(0)
    model, utterances, segs = _small(rng)
    before = [list(w) for w in segs]
    bigrams = {h: dict(r.cw) for h, r in model.words.restaurants.items() if h}
    first = int(np.random.default_rng(5).permutation(len(utterances))[0])  # the sweep's first utterance
    boosts, error = None, KeyboardInterrupt
    if where == "boost":
        boosts = [lambda w: 1.0] * len(utterances)
        boosts[first] = lambda w: float("inf")
        error = ValueError
    elif where == "draw":
        monkeypatch.setattr(model, "sample", _raise_on_call(1, model.sample))
    else:  # after the first customer of the new sentence (added) or of the old one (removed)
        name = "add" if where == "adding" else "remove"
        monkeypatch.setattr(model.words, name, _raise_on_call(2, getattr(model.words, name)))
    with pytest.raises(error):
        gibbs_sweep(model, utterances, segs, np.random.default_rng(5), boosts=boosts, n_candidates=4)
    monkeypatch.undo()
    assert segs == before
    assert {h: dict(r.cw) for h, r in model.words.restaurants.items() if h} == bigrams
    _assert_seated(model, segs)
    gibbs_sweep(model, utterances, segs, rng)  # the next sweep runs (it raised "is not a sentence of the model")
    _assert_seated(model, segs)


def test_gibbs_sweep_stopped_later_keeps_every_utterance_once(monkeypatch):
    """Interrupted at the 4th utterance: the 3 redrawn keep their new segmentations, the rest their old ones, and the
    model holds exactly those."""
    rng = np.random.default_rng(1)
    model, utterances, segs = _small(rng)
    monkeypatch.setattr(model, "sample", _raise_on_call(4, model.sample))
    with pytest.raises(KeyboardInterrupt):
        gibbs_sweep(model, utterances, segs, rng)
    assert all("".join(w) == u for w, u in zip(segs, utterances))
    _assert_seated(model, segs)


def test_slot_sweep_stopped_keeps_the_name_counts(monkeypatch):
    """`gibbs_sweep` with the slot model's ``names``: stopped in the draw, the utterance's row of name counts is back
    with its old words and weights (it was removed and never added), equal to the counts rebuilt from the lists."""
    rng = np.random.default_rng(2)
    utterances = ["abab", "ba", "abba", "aab", "bab"]
    model = NPYLM("ab", max_word_length=3)
    segs: list[list[str]] = [[] for _ in utterances]
    resp = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    names = ConceptNames(resp, 0.3, 1.0)
    gibbs_sweep(model, utterances, segs, rng, names=names)
    monkeypatch.setattr(npylm, "sample_slot", _raise_on_call(3, npylm.sample_slot))
    with pytest.raises(KeyboardInterrupt):
        gibbs_sweep(model, utterances, segs, rng, names=names)
    _assert_seated(model, segs)
    assert names.words == segs and all(len(r) == len(w) for r, w in zip(names.slots, segs))
    again = ConceptNames.counted(resp, segs, names.slots, 0.3, 1.0)
    assert set(again.counts) <= set(names.counts)
    for w, row in names.counts.items():
        np.testing.assert_allclose(row, again.counts.get(w, 0.0), atol=1e-12)
    np.testing.assert_allclose(names.totals, again.totals, atol=1e-12)


def test_name_sweep_stopped_keeps_the_slot_and_the_name_count(monkeypatch):
    """`name_sweep` stopped in the draw (and, second, between two customers of the NAME sentence it adds): the
    language model holds every utterance with NAME in its slot, the slots and name counts those of the lists."""
    rng = np.random.default_rng(3)
    utterances = ["abab", "ba", "abba", "aab", "bab"]
    segs = [["ab", "ab"], ["ba"], ["ab", "ba"], ["a", "ab"], ["ba", "b"]]
    resp = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    model = NPYLM("ab" + npylm_name.NAME, max_word_length=3)
    slots = NameSlots(resp)
    for n, words in enumerate(segs):
        slots.add(model, n, words, 0 if n % 2 else None, rng)

    def check() -> None:
        _assert_seated(model, [lm_words(w, s) for w, s in zip(segs, slots.slot)])
        again = NameSlots.counted(resp, segs, slots.slot)
        assert slots.names.words == again.names.words and slots.names.slots == again.names.slots
        for w, row in slots.names.counts.items():
            np.testing.assert_allclose(row, again.names.counts.get(w, 0.0), atol=1e-12)

    monkeypatch.setattr(npylm_name, "sample_name", _raise_on_call(2, npylm_name.sample_name))
    with pytest.raises(KeyboardInterrupt):
        name_sweep(model, utterances, segs, slots, rng)
    monkeypatch.undo()
    check()
    monkeypatch.setattr(model.words, "add", _raise_on_call(9, model.words.add))
    with pytest.raises(KeyboardInterrupt):
        name_sweep(model, utterances, segs, slots, rng)
    monkeypatch.undo()
    check()
    name_sweep(model, utterances, segs, slots, rng)
    check()


def _lexicon_utterances(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lexicon = ["abc", "xy", "dog", "ek", "mimi", "tu"]
    return ["".join(rng.choice(lexicon, size=rng.integers(1, 5))) for _ in range(n)]


def test_a_fit_interrupted_in_a_sweep_resumes_with_the_model_of_its_segmentation(monkeypatch):
    """The review's Ctrl-C during `WordSegmenter.fit`, made deterministic (the 70th draw raises): the model is the
    segmentation's, and after `resume` still is (it went on 2-4 customers short, silently)."""
    utterances = _lexicon_utterances(40)
    seg = km.WordSegmenter(n_iter=4, random_state=0)
    monkeypatch.setattr(NPYLM, "sample", _raise_on_call(70, NPYLM.sample))
    with pytest.raises(KeyboardInterrupt):
        seg.fit(utterances)
    monkeypatch.undo()
    _assert_seated(seg.model_, seg.segmentation_)
    seg.resume(1, random_state=0)
    _assert_seated(seg.model_, seg.segmentation_)


@pytest.mark.parametrize("where", ["conversion", "sweep"])
def test_a_stopped_first_one_name_update_keeps_slots_and_model_together(monkeypatch, where):
    """The first update under the concepts (``prior_mode="name"``) puts NAME in place of each utterance's slot word,
    then sweeps. Stopped during that re-seating, the model is back to plain words (it held some utterances each way);
    stopped in the sweep, the module's slots are the model's (they stayed None, the module took the model for plain
    and a resume removed words it did not hold)."""
    places = ["kab", "dod", "mug", "tes"]
    rng = np.random.default_rng(4)
    place = rng.integers(4, size=40)
    utterances = ["".join(["ba", places[p], "c"][int(rng.integers(2)):]) for p in place.tolist()]
    resp = np.full((40, 4), 0.02)
    resp[np.arange(40), place] = 0.94
    seg = km.WordSegmenter(n_iter=3, max_word_length=5, prior_mode="name", random_state=0).fit(utterances)
    if where == "conversion":
        monkeypatch.setattr(NPYLM, "add_sentence", _raise_on_call(15, NPYLM.add_sentence))
    else:
        monkeypatch.setattr(npylm_name, "sample_name", _raise_on_call(15, npylm_name.sample_name))
    with pytest.raises(KeyboardInterrupt):
        seg._sweeps([1.0], np.random.default_rng(0), None, resp)
    monkeypatch.undo()
    slots = seg.chain_slots_[0]
    assert (slots is None) == (where == "conversion")
    _assert_seated(seg.model_, [lm_words(w, None if slots is None else slots[n])
                                for n, w in enumerate(seg.segmentation_)])
    assert where == "conversion" or sum(s is not None for s in slots) > 0  # NAME is in the model
    seg.resume(1, random_state=1)  # back to plain words
    assert seg.chain_slots_[0] is None
    _assert_seated(seg.model_, seg.segmentation_)


def test_resampling_with_every_candidate_of_boost_zero_names_the_utterance():
    """All candidates have a word of boost 0: a ValueError naming the utterance (numpy's "Probabilities contain
    NaN" before), and the utterance is back in the model."""
    rng = np.random.default_rng(6)
    model, utterances, segs = _small(rng)
    before = [list(w) for w in segs]
    boosts = [lambda w: 1.0] * len(utterances)
    boosts[1] = lambda w: 0.0  # "ba": every segmentation has a word of boost 0
    with pytest.raises(ValueError, match=r"^gibbs_sweep: every one of the 3 candidate segmentations of utterance 1 "
                                         r"\('ba'\) has a word of boost 0 \(the first, \[.*\], has '.*'\): none can be "
                                         r"kept; give the words of the utterance a positive boost$"):
        gibbs_sweep(model, utterances, segs, np.random.default_rng(7), boosts=boosts, n_candidates=3)
    assert segs[1] == before[1]
    _assert_seated(model, segs)


# ---------------------------------------------------------------------- finding 2: the lifts as logs
def _prior(n: int, v: int) -> torch.Tensor:
    q = torch.distributions.Dirichlet(torch.ones(v, dtype=torch.float64)).sample((n,))
    q[0, 1] = 0.0  # a word of probability 0 for event 0
    return q


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, 7.5])
def test_lifts_equal_the_power_formula_at_moderate_weights(weight):
    """The log-lifts are lambda (log q - log mean q), the boosts (q / mean q) ** lambda as the old formula gave them
    (words outside the vocabulary: 1; q = 0: 0, or 1 at lambda = 0); the resampling draws the same segmentations
    with them as with the old boosts."""
    torch.manual_seed(0)
    q = _prior(6, 4)
    seg = km.WordSegmenter(prior_weight=weight)
    seg.vocabulary_ = ["ab", "ba", "a", "b"]
    boosts = seg._boosts(q)
    qn = q.numpy()
    with np.errstate(divide="ignore"):
        old = (qn / qn.mean(0, keepdims=True).clip(1e-300)) ** weight
    for n, boost in enumerate(boosts):
        for j, w in enumerate(seg.vocabulary_):
            assert boost(w) == pytest.approx(old[n, j], rel=1e-12, abs=0.0)
            if old[n, j] > 0:
                assert boost.log(w) == pytest.approx(np.log(old[n, j]), rel=1e-12, abs=1e-15)
            else:
                assert boost.log(w) == -np.inf
        assert boost("bab") == 1.0 and boost.log("bab") == 0.0
    draws = []
    for given in (boosts, [lambda w, row=row: dict(zip(seg.vocabulary_, row)).get(w, 1.0) for row in old]):
        rng = np.random.default_rng(0)
        model, utterances, segs = _small(rng)
        utterances, segs = utterances + ["b"], segs + [["b"]]
        model.add_sentence(["b"], rng)
        for _ in range(3):
            gibbs_sweep(model, utterances, segs, rng, boosts=given, n_candidates=5)
        draws.append(segs)
    assert draws[0] == draws[1]


def test_a_large_prior_weight_runs_with_finite_log_lifts():
    """prior_weight = 2000 under a SpatialConcept: the lifts overflowed ((q / mean q) ** 2000 = inf) and the update
    failed blaming the boost; now 3 graph iterations run, the log-lifts are finite and equal 2000 (log q - log mean q)
    computed by torch, and the model holds the segmentation."""
    house = simulated_house(60, seed=0)
    seg = km.WordSegmenter(n_iter=2, sweeps_per_update=1, prior_weight=2000.0, name="seg")
    spco = km.SpatialConcept(4, sweeps=2).connect(km.GMM(4, max_iter=2).connect(km.Observation(house["position"])),
                                                  seg.connect(km.Observation(house["utterance"])))
    km.Graph([spco]).fit(3, seed=0)
    q = seg.backward_in.value.double()
    want = 2000.0 * (q.log() - q.mean(0, keepdim=True).log())
    assert want.abs().max() > 709.8  # beyond exp's range: the power overflowed
    seg.vocabulary_ = [f"w{j}" for j in range(q.shape[1])]  # (recomputed after the update: it may have moved on)
    boosts = seg._boosts(q)
    got = torch.tensor([[b.log(w) for w in seg.vocabulary_] for b in boosts], dtype=torch.float64)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)
    _assert_seated(seg.model_, seg.segmentation_)


def test_log_boosts_beyond_a_float_resample_and_refuse_the_exact_table():
    """Log-boosts of 1000 per word (e^1000 is no float): the resampling keeps the candidate with the most boosted
    words; the exact prior, which needs the boost itself, names it."""
    from kizuna.modules.npylm import LogBoost

    rng = np.random.default_rng(8)
    model, utterances, segs = _small(rng)
    favour = LogBoost(lambda w: 1000.0 if w == "ab" else 0.0, "test boost")
    boosts = [None] * len(utterances)
    boosts[0] = favour  # "abab": ['ab', 'ab'] has the most 'ab's
    for _ in range(5):
        gibbs_sweep(model, utterances, segs, rng, boosts=boosts, n_candidates=30)
        assert segs[0] == ["ab", "ab"]
    with pytest.raises(ValueError, match=r"^test boost: the boost of the word 'ab' is exp\(1000\), beyond a float's "
                                         r"range \(the exact prior's forward-backward table needs the boost itself\)$"):
        gibbs_sweep(model, utterances, segs, rng, boosts=boosts, exact_prior=True)
    _assert_seated(model, segs)
    with pytest.raises(ValueError, match=r"^test boost: the log boost of the word 'a' must be a number < inf "
                                         r"\(-inf: boost 0\), got nan$"):
        LogBoost(lambda w: float("nan"), "test boost").log("a")


def test_a_ctrl_c_during_the_rollback_waits_for_it_to_finish():
    """A second Ctrl-C (SIGINT) while a failed step is taken back stopped the rollback half-way: the model lost the
    customers not yet re-seated and the next sweep failed. The signal is now raised once the rollback is done."""
    import os
    import signal

    rng = np.random.default_rng(0)
    model, utterances, segs = _small(rng)
    before = [list(w) for w in segs]
    original_add, calls = model.words.add, [0]

    def failing_draw(*args, **kwargs):
        raise RuntimeError("the draw failed")

    def add(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # inside the rollback: re-seating the removed sentence
            os.kill(os.getpid(), signal.SIGINT)
        return original_add(*args, **kwargs)

    model.sample, model.words.add = failing_draw, add
    # Python's own handler (a test run in the background of a shell without job control starts with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            gibbs_sweep(model, utterances, segs, np.random.default_rng(5))
    finally:
        signal.signal(signal.SIGINT, previous)
    del model.sample
    model.words.add = original_add
    assert calls[0] >= 3 and segs == before
    _assert_seated(model, segs)
    gibbs_sweep(model, utterances, segs, rng)  # (it failed: "not a sentence of the model")
    _assert_seated(model, segs)


@pytest.mark.parametrize("handler", ["custom", "ignored"])
def test_a_ctrl_c_during_the_rollback_goes_to_the_callers_handler(handler):
    """The rollback defers Ctrl-C to the handler that was in place: a handler of the caller's (a "stop cleanly" flag)
    is called and the original error comes through; an ignored SIGINT stays ignored. (The first deferral raised a
    KeyboardInterrupt in both cases.)"""
    import os
    import signal

    calls, done = [], []
    previous = signal.signal(signal.SIGINT, (lambda signum, frame: calls.append(signum)) if handler == "custom"
                             else signal.SIG_IGN)
    try:
        mine = signal.getsignal(signal.SIGINT)

        def undo_step():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("undone")

        with pytest.raises(ValueError, match="the step failed"):
            with npylm.all_or_nothing() as undo:
                undo.append(undo_step)
                raise ValueError("the step failed")
        assert done == ["undone"] and signal.getsignal(signal.SIGINT) is mine
        assert calls == ([signal.SIGINT] if handler == "custom" else [])
    finally:
        signal.signal(signal.SIGINT, previous)
