"""Checks of the HPYLM / NPYLM layer: contexts shorter than the order, word and hyperparameter checks at the public
entry points, the annealing schedule's arguments and the docstrings' LaTeX (review of the word-segmentation
modules)."""

import re

import numpy as np
import pytest

from kizuna.modules import pitman_yor
from kizuna.modules.npylm import NPYLM, gibbs_sweep, random_segmentation, temperatures
from kizuna.modules.npylm_chars import CharModel
from kizuna.modules.npylm_length import WordLength
from kizuna.modules.npylm_name import NameSlots, name_sweep, sample_name
from kizuna.modules.npylm_slot import ConceptNames, sample_slot
from kizuna.modules.pitman_yor import HPYLM
from kizuna.modules.word_segmenter import WordSegmenter

NAN = float("nan")


def _raises(message: str):
    return pytest.raises(ValueError, match="^" + re.escape(message) + "$")


# ---------------------------------------------------------------- 1. contexts shorter than order - 1
def test_hpylm_short_context_of_a_4gram_keeps_every_symbol():
    rng = np.random.default_rng(0)
    h = HPYLM(4, lambda w: 0.25)  # d = 0.5, theta = 1 at every depth
    h.add("a", ("p", "q"), rng)
    # an empty model: the customer opens a table in (p, q), which sends one to (q,), which sends one to ()
    assert set(h.restaurants) == {(), ("q",), ("p", "q")}
    assert all((r.c, r.t, r.tables) == (1, 1, {"a": [1]}) for r in h.restaurants.values())
    # Teh 2006: p(w|h) = (c_hw - d t_hw) / (theta + c_h) + (theta + d t_h) / (theta + c_h) p(w|h')
    p_root = (1 - 0.5) / (1 + 1) + (1 + 0.5) / (1 + 1) * 0.25  # 0.4375
    p_q = 0.25 + 0.75 * p_root  # 0.578125
    p_pq = 0.25 + 0.75 * p_q  # 0.68359375
    assert (p_root, p_q, p_pq) == (0.4375, 0.578125, 0.68359375)
    assert h.prob("a", ()) == p_root
    assert h.prob("a", ("q",)) == p_q
    assert h.prob("a", ("p", "q")) == p_pq
    assert h.prob("a", ("z", "q")) == p_q  # no restaurant (z, q): its parent's probability
    assert h.prob("a", ("p", "q"), parent=p_q) == p_pq
    # a context longer than order - 1 keeps its last three symbols
    assert h._context(("x", "y", "p", "q")) == ("y", "p", "q")
    h.remove("a", ("p", "q"), rng)
    assert h.restaurants == {}


# ---------------------------------------------------------------- 2. log_prob checks its words
def test_npylm_log_prob_checks_words_as_add_sentence():
    m = NPYLM("ab", 3)
    rng = np.random.default_rng(0)
    cases = [([""], "NPYLM: word 0 of [''] is '', not a non-empty string"),
             ("ab", "NPYLM: a sentence is a list of words, got the string 'ab'"),
             (["abababab"], "NPYLM: word 0 'abababab' of ['abababab'] is longer than max_word_length=3"),
             (["az"], "NPYLM: symbol 'z' at position 1 of word 0 'az' of ['az'] is not in the alphabet 'ab'")]
    for words, message in cases:
        with _raises(message):
            m.add_sentence(words, rng)
        with _raises(message):
            m.log_prob(words)
    # the words it accepts: an empty model's p(w | v) is p0(w), the characters uniform over {a, b, EOS, EOW}:
    # p("a" EOS) = p0("a") p0(EOS) = (1/4 * 1/4) * (1/4 * 1/4)
    assert m.log_prob(["a"]) == pytest.approx(2 * np.log(1 / 16), rel=1e-15)


# ---------------------------------------------------------------- 3. hyperparameters at the public entry points
@pytest.mark.parametrize("name, value", [("a", NAN), ("b", -1.0), ("alpha", -1.0), ("beta", float("inf")),
                                         ("a", 0.0)])
def test_hpylm_sample_hyperparameters_checks_the_prior(name, value):
    rng = np.random.default_rng(0)
    h = HPYLM(1, lambda w: 0.5)
    h.add("a", (), rng)
    h.add("a", (), rng)
    with _raises(f"HPYLM.sample_hyperparameters: the prior's {name} must be a positive finite number, got {value!r}"):
        h.sample_hyperparameters(rng, **{name: value})
    assert (h.d, h.theta) == ([0.5], [1.0])  # unchanged


@pytest.mark.parametrize("name, value", [("lam", NAN), ("lam", float("inf")), ("lam", 0.0), ("a", NAN),
                                         ("b", -2.0)])
def test_word_length_checks_its_parameters(name, value):
    with _raises(f"WordLength: {name} must be a positive finite number, got {value!r}"):
        WordLength(**{name: value})


def test_char_model_set_hyperparameters_checks_them():
    rng = np.random.default_rng(0)
    cm = CharModel("ab\x03", 2)
    for w in ["ab", "a", "bb"]:
        cm.add(w, rng)
    with _raises("CharModel.set_hyperparameters: depth 1 has discount -0.5 and strength 0.1; a Pitman-Yor process "
                 "needs 0 <= discount < 1 and strength > -discount, both finite"):
        cm.set_hyperparameters([0.5, -0.5], [1.0, 0.1])
    with _raises("CharModel.set_hyperparameters: depth 0 has discount nan and strength 1.0; a Pitman-Yor process "
                 "needs 0 <= discount < 1 and strength > -discount, both finite"):
        cm.set_hyperparameters([NAN, 0.5], [1.0, 1.0])
    with _raises("CharModel.set_hyperparameters: 2 discounts and strengths (one per depth of the order-2 model), "
                 "got 1 and 2"):
        cm.set_hyperparameters([0.5], [1.0, 1.0])
    assert (cm.hpylm.d, cm.hpylm.theta) == ([0.5, 0.5], [1.0, 1.0])  # unchanged
    cm.set_hyperparameters([0.25, 0.0], [2.0, 0.5])
    assert (cm.hpylm.d, cm.hpylm.theta) == ([0.25, 0.0], [2.0, 0.5])


def test_concept_names_checks_weight_and_concentration():
    with _raises("ConceptNames: concentration must be a positive finite number, got nan"):
        ConceptNames(np.eye(2), 0.2, NAN)
    with _raises("ConceptNames: concentration must be a positive finite number, got -1.0"):
        NameSlots(np.eye(2), -1.0)
    with _raises("ConceptNames: weight is a probability strictly between 0 and 1, got nan"):
        ConceptNames(np.eye(2), NAN, 1.0)


def test_word_segmenter_checks_slot_concentration_and_type_favour():
    with _raises("WordSegmenter seg: slot_concentration must be a positive finite number, got nan"):
        WordSegmenter(slot_concentration=NAN, name="seg")
    with _raises("WordSegmenter seg: slot_concentration must be a positive finite number, got inf"):
        WordSegmenter(slot_concentration=float("inf"), name="seg")
    with _raises("WordSegmenter seg: type_favour must be a finite number >= 0, got nan"):
        WordSegmenter(type_favour=NAN, name="seg")
    with _raises("WordSegmenter seg: slot_weight is a probability strictly between 0 and 1, got nan"):
        WordSegmenter(slot_weight=NAN, name="seg")
    assert WordSegmenter(type_favour=0.0, slot_concentration=0.5).slot_concentration == 0.5


# ---------------------------------------------------------------- 4. the annealing schedule
def test_temperatures_checks_start_and_fraction():
    assert temperatures(5, 2.0, 1.0) == [2.0, 1 / (0.5 + 0.5 / 5), 1 / (0.5 + 0.5 * 2 / 5), 1 / (0.5 + 0.5 * 3 / 5),
                                         1 / (0.5 + 0.5 * 4 / 5)]
    assert temperatures(5, 2.0, 0.0) == [1.0] * 5
    assert temperatures(3, 1.0) == [1.0] * 3  # start = 1: no annealing
    assert temperatures(0) == []
    with _raises("temperatures: fraction is the share of the sweeps that anneal, in [0, 1], got 2.0"):
        temperatures(5, 2.0, 2.0)
    with _raises("temperatures: fraction must be a finite number >= 0, got -1.0"):
        temperatures(5, 2.0, -1.0)
    for start in (0.0, NAN, -1.0, float("inf")):
        with _raises(f"temperatures: start must be a positive finite number, got {start!r}"):
            temperatures(5, start)
    with _raises("temperatures: n_sweeps must be an integer >= 0, got 2.5"):
        temperatures(2.5)


# ---------------------------------------------------------------- 5. docstrings
def test_pitman_yor_docstrings_render_their_latex():
    for f in (pitman_yor.count_part, pitman_yor.backoff, pitman_yor.Restaurant.count_part,
              pitman_yor.Restaurant.backoff):
        assert "\t" not in f.__doc__ and "\\theta + c_h)" in f.__doc__ and "\\\\" not in f.__doc__, f.__doc__
    doc = pitman_yor.__doc__
    assert "p(w\\mid h) = \\frac{c_{hw}" in doc and "p(w\\mid h')," in doc and "\\\\" not in doc


# ---------------------------------------------------------------- 6. minor input checks
def test_npylm_minor_input_checks():
    rng = np.random.default_rng(0)
    for value in (2.5, True, 0):
        with _raises(f"NPYLM: max_word_length must be an integer >= 1, got {value!r}"):
            NPYLM("ab", value)
    with _raises("NPYLM: char_order must be an integer >= 1, got 0"):
        NPYLM("ab", 3, char_order=0)
    m = NPYLM("ab", 3)
    with _raises("NPYLM.sample: n must be an integer >= 0, got -1"):
        m.sample("ab", rng, n=-1)
    assert m.sample("ab", rng, n=0) == []
    with _raises("random_segmentation: max_word_length must be an integer >= 1, got 0"):
        random_segmentation("abc", 0, rng)
    with _raises("random_segmentation: longest must be an integer >= 1, got 0"):
        random_segmentation("abc", 3, rng, longest=0)
    for power in (NAN, -1.0, 0.0):
        with _raises(f"NPYLM: power must be a positive finite number, got {power!r}"):
            m.sample("ab", rng, power=power)
    for boost in (NAN, -1.0, float("inf")):
        with _raises(f"NPYLM: the boost of the word 'a' must be a finite number >= 0, got {boost!r}"):
            m.sample("ab", rng, boost=lambda w, b=boost: b)
    with _raises("gibbs_sweep: temperature must be a positive finite number, got 0.0"):
        gibbs_sweep(m, ["ab"], [[]], rng, temperature=0.0)
    names = ConceptNames(np.eye(1), 0.2, 1.0)
    with _raises("sample_slot: power must be a positive finite number, got nan"):
        sample_slot(m, "ab", 0, names, rng, power=NAN)
    slots = NameSlots(np.eye(1), 1.0)
    with _raises("sample_name: power must be a positive finite number, got -1.0"):
        sample_name(m, "ab", 0, slots, rng, power=-1.0)
    with _raises("name_sweep: temperature must be a positive finite number, got nan"):
        name_sweep(m, ["ab"], [[]], slots, rng, temperature=NAN)
