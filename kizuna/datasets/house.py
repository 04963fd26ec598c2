r"""A simulated house in which a robot is taught the names of places (no download, seeded).

The floor plan (10 m × 8 m) has seven rectangular **areas** and six **places** (the concepts a
robot should learn). As in real homes, one name covers two disjoint areas (the two bedrooms are
both "bedroom") and one area has two names ("living" and "lounge"):

=========  ===================  ======================
place      names                areas
=========  ===================  ======================
kitchen    kitchen              kitchen
living     living, lounge       living room
bedroom    bedroom              bedroom A, bedroom B
bathroom   bathroom             bathroom
entrance   entrance, hall       entrance hall
study      study                study
=========  ===================  ======================

Each teaching event :math:`n` draws an area (uniformly), a true position uniformly in that area
(kept ``margin`` from the walls), and records

* ``position``: the true position plus odometry noise :math:`\mathcal N(0, \sigma^2 I)`;
* an utterance: with probability ``name_rate`` a sentence template around one of the place's
  names chosen uniformly ("this is the kitchen"), otherwise a sentence without a name ("look
  here"); as clean words, as bag-of-words counts ``word_counts`` over ``vocabulary``, and as a
  phoneme string (Brent-corpus symbols, one character a phoneme, no spaces) in which every
  phoneme is substituted (by any phoneme, itself included), deleted, or followed by an inserted
  phoneme, each with probability ``phoneme_error_rate / 3``;
* ``view``: ``view_tokens`` counts over ``VIEW_FEATURES`` (objects the camera sees) drawn from
  the area's object distribution mixed with a uniform background (weight ``view_noise``);
  optionally ``image``: an 8×8 grey image, the area's template plus Gaussian pixel noise.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from kizuna._data import check_non_negative

AREAS = ("kitchen", "living room", "bedroom A", "bathroom", "bedroom B", "entrance hall", "study")
# x0, y0, x1, y1 in metres
AREA_BOXES = np.array([
    [0.0, 0.0, 4.0, 3.0], [4.0, 0.0, 10.0, 4.0], [0.0, 5.0, 4.0, 8.0], [4.0, 5.0, 6.5, 8.0],
    [6.5, 5.0, 10.0, 8.0], [0.0, 3.0, 4.0, 5.0], [4.0, 4.0, 10.0, 5.0]])
PLACES = ("kitchen", "living", "bedroom", "bathroom", "entrance", "study")
AREA_PLACE = np.array([0, 1, 2, 3, 2, 4, 5])
PLACE_NAMES = (("kitchen",), ("living", "lounge"), ("bedroom",), ("bathroom",), ("entrance", "hall"), ("study",))
# Brent-corpus phoneme spellings (one character a phoneme)
PHONEMES = {
    "kitchen": "kIC6n", "living": "lIvIN", "lounge": "l7nJ", "bedroom": "bEdrum", "bathroom": "b&Trum",
    "entrance": "Entr6ns", "hall": "hOl", "study": "st^di",
    "this": "DIs", "is": "Iz", "the": "D6", "here": "hir", "we": "wi", "are": "Ar", "in": "In", "look": "lUk",
    "come": "k^m", "to": "tu", "at": "&t", "place": "ples", "what": "w^t", "go": "go", "now": "n7", "it": "It",
}
NAME_TEMPLATES = ("this is the {}", "here is the {}", "we are in the {}", "the {}", "this place is the {}",
                  "come to the {} now", "{}", "look this is the {}")
PLAIN_TEMPLATES = ("look here", "what is this", "come here", "go now", "look at it")
VIEW_FEATURES = ("fridge", "stove", "sink", "sofa", "tv", "table", "bed", "wardrobe", "lamp", "bath",
                 "towel", "door", "shoes", "desk", "books", "plant")
# the objects each area shows most (weights before normalisation)
_AREA_OBJECTS = (
    {"fridge": 3, "stove": 3, "sink": 2, "table": 1},
    {"sofa": 3, "tv": 3, "table": 2, "plant": 1, "lamp": 1},
    {"bed": 4, "wardrobe": 2, "lamp": 2},
    {"bath": 3, "towel": 3, "sink": 2},
    {"bed": 4, "wardrobe": 2, "lamp": 1, "desk": 1},
    {"door": 4, "shoes": 3, "plant": 1},
    {"desk": 3, "books": 3, "lamp": 2},
)


def _vocabulary() -> list[str]:
    words = {w for t in NAME_TEMPLATES + PLAIN_TEMPLATES for w in t.split() if w != "{}"}
    names = [n for names in PLACE_NAMES for n in names]
    return names + sorted(words - set(names))


def _is_number(value: Any) -> bool:
    """A real number (a Python or numpy one), not a bool: what `check_non_negative` accepts before its bounds."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def _check_share(name: str, value: Any) -> None:
    """``value`` is a number in [0, 1]; a ValueError naming ``simulated_house``'s argument otherwise (a string such as
    "0.1" raised a raw TypeError in the comparison)."""
    check_non_negative(f"simulated_house: {name}", value)  # a finite number >= 0 (not a bool, a string or NaN)
    if value > 1:
        raise ValueError(f"simulated_house: {name} must be in [0, 1], got {value!r}")


def view_distributions(noise: float) -> np.ndarray:
    """:math:`p(\\text{feature} \\mid \\text{area})` (A×W): each area's objects mixed with a uniform background."""
    _check_share("view_noise", noise)
    table = np.zeros((len(AREAS), len(VIEW_FEATURES)))
    for a, objects in enumerate(_AREA_OBJECTS):
        for name, weight in objects.items():
            table[a, VIEW_FEATURES.index(name)] = weight
    table /= table.sum(1, keepdims=True)
    return (1 - noise) * table + noise / len(VIEW_FEATURES)


def corrupt(phonemes: str, rate: float, alphabet: str, rng: np.random.Generator) -> str:
    """Each phoneme substituted, deleted, or followed by an inserted one, each with probability ``rate / 3``; a
    substitution draws from the whole ``alphabet``, the phoneme itself included (so with probability
    ``rate / (3 * len(alphabet))`` a substituted phoneme is unchanged: the changed share is ``rate (1 - 1 / (3 |A|))``).

    >>> corrupt("kIC6n", 0.0, "kIC6n", np.random.default_rng(0))
    'kIC6n'
    """
    u = rng.random(len(phonemes))
    out = []
    for ch, r in zip(phonemes, u):
        if r < rate / 3:  # substitution: any phoneme of the alphabet, this one included
            out.append(alphabet[rng.integers(len(alphabet))])
        elif r < 2 * rate / 3:  # deletion
            continue
        elif r < rate:  # insertion after the phoneme
            out.append(ch + alphabet[rng.integers(len(alphabet))])
        else:
            out.append(ch)
    return "".join(out)


def _check(n_events: int, rate: float, name_rate: float, sigma: float, tokens: int) -> None:
    if isinstance(n_events, bool) or not isinstance(n_events, (int, np.integer)) or n_events < 1:
        raise ValueError(f"simulated_house: n_events must be a positive int, got {n_events!r}")
    _check_share("phoneme_error_rate", rate)
    _check_share("name_rate", name_rate)
    check_non_negative("simulated_house: position_noise", sigma)  # (a string raised a raw TypeError; NaN, inf refused)
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < 1:
        raise ValueError(f"simulated_house: view_tokens must be a positive int (tokens per view histogram), got "
                         f"{tokens!r}")


def _utterances(place: np.ndarray, name_rate: float, rng: np.random.Generator) -> list[list[str]]:
    has_name = rng.random(place.shape[0]) < name_rate
    synonym = rng.random(place.shape[0])
    template = rng.integers(1 << 30, size=place.shape[0])
    sentences = []
    for p, named, s, t in zip(place.tolist(), has_name.tolist(), synonym.tolist(), template.tolist()):
        if named:
            names = PLACE_NAMES[p]
            text = NAME_TEMPLATES[t % len(NAME_TEMPLATES)].format(names[int(s * len(names))])
        else:
            text = PLAIN_TEMPLATES[t % len(PLAIN_TEMPLATES)]
        sentences.append(text.split())
    return sentences


def _images(area: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    templates = np.random.default_rng(12345).random((len(AREAS), 64)) ** 3  # fixed per house, not per seed
    templates[4] = 0.7 * templates[2] + 0.3 * templates[4]  # the two bedrooms look alike
    return np.clip(templates[area] + 0.15 * rng.standard_normal((area.shape[0], 64)), 0, 1)


def simulated_house(n_events: int = 300, seed: int = 0, phoneme_error_rate: float = 0.05,
                    position_noise: float = 0.2, name_rate: float = 0.8, view_tokens: int = 6,
                    view_noise: float = 0.5, margin: float = 0.3, image: bool = False) -> dict[str, Any]:
    """Teaching events of a robot in the house (see the module docstring).

    Args:
        n_events: :math:`N`, number of teaching events.
        seed: seeds everything (the same seed gives the same house and events).
        phoneme_error_rate: probability that a phoneme undergoes a substitution, deletion or insertion (a
            substitution may draw the phoneme itself, see `corrupt`).
        position_noise: :math:`\\sigma` of the odometry noise, in metres.
        name_rate: probability that an utterance contains a place name.
        view_tokens: counts per view histogram.
        view_noise: weight of the uniform background in every view distribution.
        margin: distance of true positions from the walls, in metres.
        image: also return ``image`` (N×64 8×8 grey images).

    Returns:
        A dict: ``position`` (N×2), ``true_position`` (N×2), ``area`` and ``place`` (N int64, the
        true labels), ``words`` (N lists of clean words), ``word_counts`` (N×V), ``vocabulary``
        (V words), ``utterance`` (N noisy phoneme strings), ``phoneme_words`` (N lists of the noisy
        phonemes of each word, one per clean word: their concatenation is the utterance, so they give the
        true word boundaries; a word whose every phoneme was deleted is ``''`` there — drop those for a
        segmentation, e.g. ``[[w for w in ws if w] for ws in house["phoneme_words"]]``, which `NPYLM` and
        `segmentation_scores` take; no utterance is empty: when the noise deletes all of an utterance's phonemes,
        its first word keeps its first phoneme, without a random draw, so every other output is unchanged),
        ``name_words`` (the V place-name flags), ``view`` (N×W), ``view_features``, ``areas``, ``area_boxes``,
        ``area_place``, ``places``, ``place_names``, ``phonemes`` (word -> clean phoneme spelling), and ``image`` if
        asked.

    >>> house = simulated_house(100, seed=1)
    >>> house["position"].shape, house["word_counts"].shape, house["view"].shape, len(house["utterance"])
    ((100, 2), (100, 24), (100, 16), 100)
    """
    _check(n_events, phoneme_error_rate, name_rate, position_noise, view_tokens)
    # (None drew a new house at every call; -1 or 1.5 failed in numpy without naming the seed)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"simulated_house: seed must be an int >= 0 (the same seed gives the same house), got "
                         f"{seed!r}")
    if not isinstance(image, (bool, np.bool_)):
        raise ValueError(f"simulated_house: image must be True or False, got {image!r}")
    narrowest = float(np.minimum(AREA_BOXES[:, 2] - AREA_BOXES[:, 0], AREA_BOXES[:, 3] - AREA_BOXES[:, 1]).min())
    if not _is_number(margin) or not 0.0 <= margin < narrowest / 2:  # true positions must stay inside their area
        raise ValueError(f"simulated_house: margin must lie in [0, {narrowest / 2:g}) metres (half the narrowest "
                         f"area's side), got {margin!r}")  # ("0.1" raised a raw TypeError; NaN fails the comparison)
    rng = np.random.default_rng(seed)
    area = rng.integers(len(AREAS), size=n_events)
    place = AREA_PLACE[area]
    lo, hi = AREA_BOXES[area, :2] + margin, AREA_BOXES[area, 2:] - margin
    true_position = lo + (hi - lo) * rng.random((n_events, 2))
    position = true_position + position_noise * rng.standard_normal((n_events, 2))
    words = _utterances(place, name_rate, rng)
    vocabulary = _vocabulary()
    index = {w: i for i, w in enumerate(vocabulary)}
    counts = np.zeros((n_events, len(vocabulary)))
    rows = np.repeat(np.arange(n_events), [len(s) for s in words])
    np.add.at(counts, (rows, [index[w] for s in words for w in s]), 1)
    alphabet = "".join(sorted({ch for w in vocabulary for ch in PHONEMES[w]}))
    phoneme_words = [[corrupt(PHONEMES[w], phoneme_error_rate, alphabet, rng) for w in s] for s in words]
    for clean, noisy in zip(words, phoneme_words):
        if not any(noisy):  # every phoneme was deleted: keep the first one (no draw, the other events are unchanged)
            noisy[0] = PHONEMES[clean[0]][0]
    views = rng.multinomial(view_tokens, view_distributions(view_noise)[area]).astype(np.float64)
    names = {n for ns in PLACE_NAMES for n in ns}
    house = {
        "position": position, "true_position": true_position, "area": area, "place": place, "words": words,
        "word_counts": counts, "vocabulary": vocabulary, "utterance": ["".join(p) for p in phoneme_words],
        "phoneme_words": phoneme_words, "name_words": np.array([w in names for w in vocabulary]),
        "view": views, "view_features": list(VIEW_FEATURES), "areas": list(AREAS), "area_boxes": AREA_BOXES.copy(),
        "area_place": AREA_PLACE.copy(), "places": list(PLACES), "place_names": [list(n) for n in PLACE_NAMES],
        "phonemes": dict(PHONEMES),
    }
    if image:
        house["image"] = _images(area, rng)
    return house
