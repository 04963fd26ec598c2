"""Shared by the NPYLM tests: a small trained model and every segmentation of a string (the enumeration
that forward filtering / backward sampling is checked against)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from kizuna.modules.npylm import NPYLM


def trained(rng: np.random.Generator, length_correction: bool = False) -> NPYLM:
    model = NPYLM("abcd", max_word_length=4, char_order=2, length_correction=length_correction)
    for words in [["ab", "cd"], ["ab"], ["cd", "ab", "a"], ["d", "cd"]] * 3:
        model.add_sentence(words, rng)
    if length_correction:
        model.sample_hyperparameters(rng)
    return model


def segmentations(s: str, max_len: int) -> Iterator[tuple[str, ...]]:
    """Every segmentation of ``s`` into words of at most ``max_len`` characters."""
    for cuts in itertools.product([0, 1], repeat=len(s) - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [len(s)]
        words = [s[a:b] for a, b in zip(bounds, bounds[1:])]
        if max(len(w) for w in words) <= max_len:
            yield tuple(words)
