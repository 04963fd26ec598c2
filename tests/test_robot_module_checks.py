"""Checks of the robot modules' review (stop 40): NPYLM's character model on a large alphabet, an atomic
`NPYLM.load_state`, `simulated_house` without empty utterances, and empty batches."""

from __future__ import annotations

import contextlib
import hashlib
import re
import tracemalloc

import numpy as np
import pytest

from kizuna.datasets.house import PHONEMES, simulated_house
from kizuna.modules import WordSegmenter, npylm_chars
from kizuna.modules.npylm import NPYLM
from kizuna.modules.npylm_chars import CharModel
from kizuna.modules.symbols import decode_strings, encode_strings

CJK = "".join(chr(0x4E00 + i) for i in range(3000))  # a Chinese/Japanese-size alphabet


@contextlib.contextmanager
def _address_space(extra_gib: int = 2):
    """Cap the process's address space at its present size + ``extra_gib`` (Linux), so that a dense allocation of
    hundreds of GiB fails at once whatever the overcommit policy; the old limit comes back afterwards."""
    try:
        import resource
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration):
        yield
        return
    old = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + (extra_gib << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap if old[1] == resource.RLIM_INFINITY else min(cap, old[1]), old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


# ------------------------------------------------------------------------------------------------ 1: large alphabets
def test_a_3000_symbol_character_model_takes_memory_in_proportion_to_the_data():
    """The dense counts took S^n floats (3002^3 x 8 bytes x 2 = 432 GB here: a bare numpy MemoryError); only the
    seated (context, symbol) cells are kept now. Its substring probabilities are the dictionary path's (`p0`, one
    `HPYLM.prob` per character)."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list(CJK), size=rng.integers(1, 4))) for _ in range(40)]
    sentences = [list(rng.choice(words, size=rng.integers(2, 5))) for _ in range(30)]
    tracemalloc.start()
    try:
        with _address_space():
            model = NPYLM(CJK, max_word_length=4, char_order=3)
            for s in sentences:
                model.add_sentence(s, rng)
            text = "".join(sentences[0])
            table = model.chars.substring_p0(text, 4)
            best = model.viterbi(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.1f} MiB"
    assert "".join(best) == text
    expected = np.zeros_like(table)
    for a in range(len(text)):
        for k in range(1, min(4, len(text) - a) + 1):
            expected[a, k] = model.chars.p0(text[a:a + k])
    np.testing.assert_allclose(table, expected, rtol=1e-12, atol=0)
    assert (table[:, 1:2] > 0).all()


def test_sparse_counts_give_the_dense_counts_probabilities_bit_for_bit(monkeypatch):
    """Above `DENSE_KEYS` keys a depth keeps only the cells in use; forced sparse at every depth (limit 0), a model
    fed and emptied by the same draws holds the same counts, substring probabilities and transition table, bit for bit,
    as the dense one (what every small alphabet uses, and what the old code kept)."""
    def run() -> tuple:
        rng = np.random.default_rng(2)
        chars = CharModel("abcd\x03", 3)
        words = ["".join(rng.choice(list("abcd"), size=rng.integers(1, 5))) for _ in range(60)]
        for w in words:
            chars.add(w, rng)
        for w in words[::3]:
            chars.remove(w, rng)
        return ([a.tobytes() for a in chars.cw + chars.tw + chars.c + chars.t],
                chars.substring_p0("abcabdda", 5).tobytes(), chars.transitions().tobytes(),
                [s.is_dense for s in chars.cells + chars.contexts])
    dense = run()
    monkeypatch.setattr(npylm_chars, "DENSE_KEYS", 0)
    sparse = run()
    assert all(dense[3]) and not any(sparse[3][1:])  # (depth 0's context has 1 key)
    assert dense[:3] == sparse[:3]


def test_the_vectorised_transition_table_is_the_elementwise_one():
    """`CharModel.transitions` builds the table depth by depth; every cell is, bit for bit, `probs` of that context
    and symbol (what it was built from before), orders 1 to 4, after some customers and with unequal d, theta."""
    rng = np.random.default_rng(1)
    for order in (1, 2, 3, 4):
        chars = CharModel("abcd\x03", order)
        for _ in range(30):
            chars.add("".join(rng.choice(list("abcd"), size=rng.integers(1, 5))), rng)
        chars.set_hyperparameters(list(rng.uniform(0.1, 0.9, order)), list(rng.uniform(0.5, 3.0, order)))
        size, n_ctx = chars.size, chars.size ** (order - 1)
        codes = np.arange(n_ctx)
        ctx = np.stack([(codes // size**q) % size for q in range(order - 2, -1, -1)], -1) if order > 1 \
            else np.zeros((1, 0), dtype=np.int64)
        symbols = np.broadcast_to(np.arange(size), (n_ctx, size))
        expected = chars.probs(np.broadcast_to(ctx[:, None, :], (n_ctx, size, order - 1)), symbols)
        q = chars.transitions()
        assert q.tobytes() == expected.tobytes()
        np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-12)


def test_the_length_correction_on_a_large_alphabet_is_a_clear_error():
    """Its exact p_char(k) needs a dense (S+1)^(n-1) x (S+1) table: refused with the sizes and the remedy (it was a
    MemoryError of numpy, naming neither the alphabet nor char_order)."""
    size = len(CJK) + 2  # the symbols, the end of sentence, EOW
    gib = f"{size ** 3 * 8 / 2**30:.3g}"
    with _address_space(), pytest.raises(ValueError, match=re.escape(
            f"CharModel.transitions: the order-3 model over {size} symbols (the alphabet and EOW) needs a dense "
            f"{size ** 2} x {size} table, {gib} GiB (more than 1 GiB); the word-length correction needs it: use a "
            "smaller char_order or length_correction=False")):
        NPYLM(CJK, char_order=3, length_correction=True)
    NPYLM(CJK[:200], char_order=2, length_correction=True)  # (S+1)^2 floats: fine


def test_a_character_model_whose_codes_overflow_int64_is_a_clear_error():
    with _address_space(), pytest.raises(ValueError, match=re.escape(
            "CharModel: an order-6 model over 3001 symbols (the alphabet and EOW) has 3001**6 (context, symbol) "
            "cells, more than int64 codes can name; use a smaller char_order")):
        CharModel(CJK, 6)


# ------------------------------------------------------------------------------------------- 2: atomic load_state
def _model(sentences: list[list[str]]) -> NPYLM:
    rng = np.random.default_rng(0)
    model = NPYLM("ab")
    for s in sentences:
        model.add_sentence(s, rng)
    return model


@pytest.mark.parametrize("char_seating, message", [
    ([[[], [[0, [0]]]]], "HPYLM.set_seating: bad tables [0] of 0 in context ()"),
    ([[[], [[0, [1]], [9, [1]]]]], "CharModel.set_seating: symbol 9 in context [] is not an id of the 4 symbols "
                                   "(0 .. 3)"),
    ([[[7], [[0, [1]]]]], "CharModel.set_seating: symbol 7 in context [7] is not an id of the 4 symbols (0 .. 3)"),
])
def test_a_refused_character_seating_leaves_the_model_unchanged(char_seating, message):
    """`load_state` installed the word seating, then the character seating raised: the model held another model's
    words over its own character counts (a later removal failed with a KeyError). Both are checked first now."""
    other = _model([["ab", "b"]])
    model = _model([["a", "a", "b"], ["ab"]])
    before, p_before = model.state(), model.log_prob(["a", "ab"])
    cw_before = [a.copy() for a in model.chars.cw]
    state = other.state()
    state.char_seating = char_seating
    with pytest.raises(ValueError, match=re.escape(message)):
        model.load_state(state)
    assert model.state() == before
    assert model.log_prob(["a", "ab"]) == p_before
    assert all(np.array_equal(a, b) for a, b in zip(model.chars.cw, cw_before))
    rng = np.random.default_rng(1)  # and it can still be emptied
    model.remove_sentence(["a", "a", "b"], rng)
    model.remove_sentence(["ab"], rng)
    assert not model.words.restaurants and not model.chars.hpylm.restaurants


def test_a_refused_word_seating_leaves_the_model_unchanged():
    model = _model([["a", "a", "b"]])
    before = model.state()
    state = _model([["ab", "b"]]).state()
    state.word_seating = [[[], [["ab", [1, 0]]]]]
    with pytest.raises(ValueError, match=re.escape("HPYLM.set_seating: bad tables [1, 0] of 'ab' in context ()")):
        model.load_state(state)
    assert model.state() == before


# ------------------------------------------------------------------------------- 3: no empty utterance in the house
def _digest(house: dict, skip: set[int] = frozenset()) -> str:
    """sha256 of every output, arrays by their bytes, without events ``skip``'s utterance and phoneme words."""
    h = hashlib.sha256()
    for key in sorted(house):
        value = house[key]
        if key in ("utterance", "phoneme_words"):
            value = [v for i, v in enumerate(value) if i not in skip]
        h.update(key.encode())
        h.update(value.tobytes() if isinstance(value, np.ndarray) else repr(value).encode())
    return h.hexdigest()


def test_no_utterance_of_the_house_is_empty():
    """At phoneme_error_rate 0.3, seed 147's event 9 ("hall", 'hOl') lost every phoneme: an utterance '' that
    `Observation` and `WordSegmenter.fit` refuse. It keeps its first phoneme now, without a random draw: every
    other output is the old code's, bit for bit (the digests were computed with it)."""
    house = simulated_house(300, seed=147, phoneme_error_rate=0.3)
    assert all(house["utterance"])
    assert house["words"][9] == ["hall"] and house["utterance"][9] == PHONEMES["hall"][0] == "h"
    assert house["phoneme_words"][9] == ["h"]
    assert all("".join(p) == u for p, u in zip(house["phoneme_words"], house["utterance"]))
    assert _digest(house, {9}) == "3db4c343beddaa14a33feef572563ed74c5c94159e02e921e29323d1a947ea8c"
    house = simulated_house(300, seed=98, phoneme_error_rate=0.5)  # a two-word utterance, "go now"
    assert house["words"][77] == ["go", "now"] and house["phoneme_words"][77] == ["g", ""]
    assert _digest(house, {77}) == "fbd4569a720b8398068fcf5fc2dbf9cde67bfb7a649dd474f2e38862120bac9e"


def test_the_default_house_is_unchanged():
    """A guard, not a failing case of the old code: the default call (no utterance was empty) is the old code's."""
    assert _digest(simulated_house()) == "468f67e7b5d71826039ccfa5f947a1477ccb750799908a2841df7496e0bb2a43"


# ------------------------------------------------------------------------------------------------ 4: empty batches
def test_an_empty_batch_is_segmented_and_encoded_as_empty():
    seg = WordSegmenter(n_iter=2, random_state=0).fit(["abab", "ab"])
    assert seg.segment([]) == []
    assert seg.segment(iter([])) == []
    with pytest.raises(ValueError, match=re.escape("WordSegmenter: utterances must be a list of non-empty strings")):
        seg.segment("ab")
    with pytest.raises(ValueError, match=re.escape("WordSegmenter: utterances must be a non-empty list of non-empty "
                                                   "strings")):
        WordSegmenter(n_iter=1).fit([])
    rows = encode_strings([])
    assert tuple(rows.shape) == (0, 0) and decode_strings(rows) == []
