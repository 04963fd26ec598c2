"""Does the one-name model's evidence favour splitting the article off the names? (docs/robotics.md, "One name")

For each seed, with the true places as the concepts (hard r, smoothed by 0.01): the joint log-probability of
all 300 utterances under the **true (noisy) segmentation** ("split": "D6" + "kIC6n") and under the same with
the article glued onto the following name ("glued": "D6kIC6n"), by the sequential predictive probability
(utterances added one by one in index order, each scored given those before it; hyper-parameters first
resampled five times on the whole segmentation; mean of three seatings), under

* the language model alone (NPYLM);
* the slot model (`kizuna.modules.npylm_slot`, lambda 0.2, a 1): each word lambda G_n + (1 - lambda) p_LM;
* the one-name model (`kizuna.modules.npylm_name`, a 1), the slot position summed over ("marginal": each
  utterance's slot then drawn from its posterior and seated), and with the slot fixed at the name
  ("slot given": the true name, or the glued chunk).

Every model takes words up to the segmenter's 10 phonemes, or up to the house's longest word (split or glued) when
that is longer: a glued "D6" + name can be 11 phonemes (``simulated_house(60, seed=1)``), which an NPYLM of 10
refused. Split and glued are scored with the same limit.

    python examples/one_name_evidence.py 1 3       # seeds (about 30 s each)
    python examples/one_name_evidence.py --smoke   # 100 events, one seating: seconds (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402

from kizuna.datasets.house import simulated_house  # noqa: E402
from kizuna.modules.npylm import NPYLM  # noqa: E402
from kizuna.modules.npylm_name import NAME, NameSlots, lm_words  # noqa: E402
from kizuna.modules.npylm_slot import ConceptNames  # noqa: E402
from kizuna.modules.npylm_types import add_scored  # noqa: E402
from kizuna.modules.word_segmenter import WordSegmenter  # noqa: E402


def segmentations(house: dict) -> tuple[list, list, list, list]:
    """The true segmentation and its name slots, and the same with "D6" glued to the name that follows it."""
    names = {w for ns in house["place_names"] for w in ns}
    split, glued, slot_split, slot_glued = [], [], [], []
    for clean, noisy in zip(house["words"], house["phoneme_words"]):
        pairs = [(c, p) for c, p in zip(clean, noisy) if p]  # a word whose every phoneme was deleted is dropped
        words = [p for _, p in pairs]
        slot = next((h for h, (c, _) in enumerate(pairs) if c in names), None)
        split.append(words)
        slot_split.append(slot)
        if slot is not None and slot > 0 and pairs[slot - 1][0] == "the":
            glued.append(words[:slot - 1] + [words[slot - 1] + words[slot]] + words[slot + 1:])
            slot_glued.append(slot - 1)
        else:
            glued.append(list(words))
            slot_glued.append(slot)
    return split, glued, slot_split, slot_glued


SEGMENTER_WORD_LENGTH = WordSegmenter().max_word_length  # 10


def word_limit(*segmentations: list[list[str]]) -> int:
    """The models' ``max_word_length``: the segmenter's 10, or the longest word of ``segmentations`` if longer."""
    return max([SEGMENTER_WORD_LENGTH, *(len(w) for seg in segmentations for words in seg for w in words)])


def fitted_model(house: dict, sentences: list[list[str]], rng: np.random.Generator,
                 max_word_length: int = SEGMENTER_WORD_LENGTH) -> NPYLM:
    """An NPYLM of words up to ``max_word_length`` phonemes whose hyper-parameters are resampled five times on
    ``sentences`` (then emptied)."""
    model = NPYLM("".join(sorted(set("".join(house["utterance"])))) + NAME, max_word_length, 3)
    for _ in range(5):
        for words in sentences:
            model.add_sentence(words, rng)
        model.sample_hyperparameters(rng)
        for words in sentences:
            model.remove_sentence(words, rng)
    return model


def joint(house: dict, resp: np.ndarray, seg: list[list[str]], slots: list, kind: str, repeats: int = 3,
          max_word_length: int = SEGMENTER_WORD_LENGTH) -> list[float]:
    """The joint log-probability of ``seg`` under the model ``kind``, one per seating (words up to
    ``max_word_length`` phonemes)."""
    totals = []
    for rep in range(repeats):
        rng = np.random.default_rng(rep)
        lm = [lm_words(w, s) for w, s in zip(seg, slots)] if kind.startswith("name") else seg
        model = fitted_model(house, lm, rng, max_word_length)
        total = 0.0
        if kind == "lm":
            for words in seg:
                total += model.log_prob(words)
                model.add_sentence(words, rng)
        elif kind == "slot":
            names = ConceptNames(resp, 0.2, 1.0)
            for n, words in enumerate(seg):
                total += add_scored(model, n, words, rng, names)
        else:
            state = NameSlots(resp, 1.0)
            for n, (words, slot) in enumerate(zip(seg, slots)):
                if kind == "name marginal":
                    total += state.add_scored(model, n, words, rng)
                else:
                    total += float(state.log_joint(model, n, words)[0 if slot is None else slot + 1])
                    state.add(model, n, words, slot, rng)
        totals.append(total)
    return totals


FULL = {"events": 300, "repeats": 3}
SMOKE = {"events": 100, "repeats": 1}


def main(seeds: list[int], events: int = 300, repeats: int = 3) -> None:
    """Each seed's joint log-probabilities, split against glued, on a house of ``events`` teaching events (mean of
    ``repeats`` seatings)."""
    for seed in seeds:
        house = simulated_house(events, seed=seed)
        place = np.asarray(house["place"])
        resp = np.full((len(place), place.max() + 1), 0.01)
        resp[np.arange(len(place)), place] = 1.0
        resp /= resp.sum(1, keepdims=True)
        split, glued, slot_split, slot_glued = segmentations(house)
        limit = word_limit(split, glued)
        print(f"seed {seed}: {sum(a != b for a, b in zip(split, glued))} utterances glued; words up to {limit} "
              f"phonemes; joint log p, nats (split - glued)")
        for kind in ("lm", "slot", "name marginal", "name slot given"):
            a = joint(house, resp, split, slot_split, kind, repeats, limit)
            b = joint(house, resp, glued, slot_glued, kind, repeats, limit)
            diff = np.subtract(a, b)
            print(f"  {kind:16s} split {np.mean(a):9.1f}  glued {np.mean(b):9.1f}  split - glued {diff.mean():7.1f} "
                  f"(seatings {', '.join(f'{v:.1f}' for v in diff)})", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", type=seed_arg, nargs="*", default=None,
                        help="house seeds (default: 1 3; --smoke: 1)")
    parser.add_argument("--smoke", action="store_true", help="100 teaching events, one seating (seconds; CI)")
    args = parser.parse_args()
    main(args.seeds or ([1] if args.smoke else [1, 3]), **(SMOKE if args.smoke else FULL))
