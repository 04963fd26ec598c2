r"""The demo behind ``kizuna demo``: a robot learns the places of a house and their names, without labels.

On `kizuna.datasets.simulated_house` (300 teaching events: noisy positions, utterances, views) the
integrated model is SpCoA built from modules,

.. math::
    \text{positions} \to \text{GMM} \xrightarrow{p(x_n\mid i_n)} \text{SpatialConcept}
    \leftarrow \text{word counts},\ \text{view counts},

(`kizuna.modules.SpatialConcept`: concepts with a stick-breaking prior, each a mixture over the
GMM's position components, a word and a view distribution). It is compared, on the same events,
with each part alone (a GMM on the positions, LDA on the words, LDA on the views) and with SERKET's
shape (GMM on positions → MLDA with words and views); every one of these is given the true number
of places (6), which the integrated model infers. Scores: ARI of the concepts against the true
places, the number of concepts, and the place-name accuracy at 1,000 held-out positions (the word with the largest lift
:math:`p(w\mid x)/p(w)` must be a name of the true place; chance 1/6). ``--words phonemes`` replaces
the clean word counts by a `WordSegmenter` (NPYLM) on the noisy phoneme strings, connected under
the concept module, and also scores the segmentation of the place names (connected vs alone).

The map (``house_map.png``) shows the rooms, the events coloured by learned concept and, at each
position component of a concept, the concept's word of largest lift; ``confusion.png`` the learned-vs-true table.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from kizuna import modules as km
from kizuna.datasets.house import simulated_house
from kizuna.metrics import adjusted_rand_score
from kizuna.metrics.clustering import contingency


def name_accuracy(spco: km.SpatialConcept, house: dict[str, Any], test: dict[str, Any],
                  vocabulary: list[str]) -> float:
    """Share of held-out positions whose highest-lift word :math:`p(w\\mid x)/p(w)` names the true place."""
    lift = spco.predict_words(test["position"]) / spco.predict_words(house["position"]).mean(0, keepdims=True)
    best = [vocabulary[j] for j in lift.argmax(1)]
    return float(np.mean([w in test["place_names"][p] for w, p in zip(best, test["place"])]))


def place_name_f(house: dict[str, Any], segmentation: list[list[str]]) -> float:
    """F-score of the place-name tokens: recall over the true name spans, precision over the predicted words
    that overlap a true name span (a predicted word is right when it is exactly that span)."""
    names = {w for ns in house["place_names"] for w in ns}
    hit = true = pred = 0
    for words, noisy, seg in zip(house["words"], house["phoneme_words"], segmentation):
        a, gold = 0, []
        for w, p in zip(words, noisy):
            if w in names:
                gold.append((a, a + len(p)))
            a += len(p)
        a, spans = 0, []
        for w in seg:
            spans.append((a, a + len(w)))
            a += len(w)
        overlapping = {s for s in spans for g in gold if s[0] < g[1] and g[0] < s[1]}
        hit, true, pred = hit + len(set(gold) & overlapping), true + len(gold), pred + len(overlapping)
    p, r = hit / max(pred, 1), hit / max(true, 1)
    return 2 * p * r / (p + r) if p + r else 0.0


def parts(house: dict[str, Any], seed: int, sweeps: int = 50) -> dict[str, float]:
    """ARI of each part alone and of SERKET's GMM -> MLDA, every one given the true number of places (6)."""
    y = house["place"]
    gmm = km.GMM(6, random_state=seed, max_iter=sweeps).fit(house["position"])
    scores = {"positions alone (GMM, K = 6)": adjusted_rand_score(y, gmm.predict(house["position"]))}
    for key, name in (("word_counts", "words"), ("view", "views")):
        lda = km.MLDA(6, max_iter=sweeps, random_state=seed).fit([house[key]])
        scores[f"{name} alone (LDA, K = 6)"] = adjusted_rand_score(y, np.asarray(lda.predict([house[key]])))
    g = km.GMM(10, max_iter=10).connect(km.Observation(house["position"]))
    mlda = km.MLDA(6, category=y, max_iter=sweeps).connect(
        km.Observation(house["word_counts"]), km.Observation(house["view"]), g)
    km.Graph([mlda]).fit(5, seed=seed)
    scores["SERKET GMM -> MLDA (K = 6)"] = mlda.ari
    return scores


CONCEPT_OPTIONS = {"alpha": 1.0, "beta": [2.0, 0.5]}  # stick-breaking alpha; Dirichlet beta of words, views
SEGMENTER_OPTIONS = {"n_iter": 20, "sweeps_per_update": 2}  # first update, later ones (one chain)


class _ShuffledConcepts(km.WordSegmenter):
    """A control: the segmenter sees the concept posterior with its rows permuted across the events (a
    permutation fixed by ``shuffle_seed``), the same concepts attached to the wrong events, so that what the
    concepts' place information does is told apart from what the prior's form does."""

    def __init__(self, shuffle_seed: int = 0, **options: Any) -> None:
        super().__init__(**options)
        self.shuffle_seed = shuffle_seed

    def _shuffled(self, concepts: np.ndarray | None) -> np.ndarray | None:
        if concepts is None:
            return None
        return concepts[np.random.default_rng(self.shuffle_seed).permutation(len(concepts))]

    def _sweeps(self, schedule: list[float], rng: np.random.Generator, boosts: list | None = None,
                concepts: np.ndarray | None = None) -> None:
        super()._sweeps(schedule, rng, boosts, self._shuffled(concepts))

    def _select(self, rng: np.random.Generator, concepts: np.ndarray | None) -> None:
        super()._select(rng, self._shuffled(concepts))


def integrated(house: dict[str, Any], seed: int, words: str = "clean", n_iter: int = 5, sweeps: int = 30,
               split_merge: int | None = None, concept: dict[str, Any] | None = None,
               segmenter: dict[str, Any] | None = None, shuffle_concepts: bool = False
               ) -> tuple[km.SpatialConcept, km.GMM, km.WordSegmenter | None, km.WordSegmenter | None]:
    """GMM + SpatialConcept over word counts (``"clean"``) or a WordSegmenter on the phonemes, and views
    (``split_merge``: proposals per sweep, None: the module's default; ``concept``: SpatialConcept options
    replacing `CONCEPT_OPTIONS`'s; ``segmenter``: WordSegmenter options replacing `SEGMENTER_OPTIONS`'s,
    e.g. ``{"n_chains": 4}``: chains the concept module chooses among). With phonemes, also the paired
    control: a copy of the segmenter after its first update (before any message from the concept module)
    continued by as many sweeps without it (`WordSegmenter.resume`: its language model chooses the chain).
    With ``shuffle_concepts`` the segmenter receives the concept posterior with its rows permuted across the
    events (a control: the concepts' form without their place information).

    The concept module's settings (`CONCEPT_OPTIONS`, ``sweeps``) were chosen on seeds 0-4 among ten
    (docs/robotics.md, "Settings") and checked on seeds 5-9: :math:`\alpha = 1` (with 0.1 the chain merges
    two places on two seeds of five), a smoother word distribution than view distribution
    (:math:`\beta` 2.0 and 0.5: an utterance holds one name among filler words), 30 sweeps an update."""
    gmm = km.GMM(10, max_iter=10, name="gmm").connect(km.Observation(house["position"], name="position"))
    seg = None
    if words == "clean":
        word_child: km.Module = km.Observation(house["word_counts"], name="words")
    else:
        seg_options = {**SEGMENTER_OPTIONS, **(segmenter or {}), "name": "segmenter"}
        seg = _ShuffledConcepts(**seg_options, shuffle_seed=seed) if shuffle_concepts else \
            km.WordSegmenter(**seg_options)
        word_child = seg.connect(km.Observation(house["utterance"], name="phonemes"))
    options = {} if split_merge is None else {"split_merge": split_merge}
    options = {**CONCEPT_OPTIONS, **(concept or {}), **options}
    spco = km.SpatialConcept(10, category=house["place"], sweeps=sweeps, name="spco", **options).connect(
        gmm, word_child, km.Observation(house["view"], name="view"))
    graph = km.Graph([spco])
    if seg is None:
        graph.fit(n_iter, seed=seed)
        return spco, gmm, seg, None
    graph.fit(1, seed=seed)  # the segmenter's first update has no prior yet
    paired = copy.deepcopy(seg)  # the paired control continues from here without the concept prior
    graph.fit(n_iter - 1, seed=seed)
    # with relearn, the update that first gets the concepts starts again (n_iter sweeps): so does the control
    sweeps = (n_iter - 1) * seg.sweeps_per_update + (seg.n_iter - seg.sweeps_per_update) * seg.relearn
    paired.resume(sweeps, np.random.default_rng(seed), restart=seg.relearn)
    return spco, gmm, seg, paired


def run(seed: int = 0, n_events: int = 300, words: str = "clean", n_iter: int = 5,
        split_merge: int | None = None, sweeps: int = 30, concept: dict[str, Any] | None = None,
        segmenter: dict[str, Any] | None = None, shuffle_concepts: bool = False,
        new_utterances: int = 0) -> dict[str, Any]:
    """One seed: the integrated model and its parts on the same house (see the module docstring;
    ``sweeps``, ``concept``, ``segmenter`` and ``shuffle_concepts`` as in `integrated`; the segmenter alone gets
    the same options). With phonemes and ``new_utterances`` > 0, the fitted segmenters also segment that many
    utterances of a new draw of the house (seed 20,000 + ``seed``) by `WordSegmenter.segment`, and the place
    names' F on them is reported (``name_f_new_*``; under the one-name model also with the concept posterior at
    the new positions, ``name_f_new_connected_placed``)."""
    house = simulated_house(n_events, seed=seed)
    test = simulated_house(1000, seed=10_000 + seed)
    start = time.perf_counter()
    spco, gmm, seg, paired = integrated(house, seed, words, n_iter, sweeps, split_merge, concept, segmenter,
                                         shuffle_concepts)
    vocabulary = house["vocabulary"] if seg is None else seg.vocabulary_
    result: dict[str, Any] = {
        "seed": seed, "words": words, "ari": spco.ari, "n_concepts": spco.n_concepts_,
        "n_nonempty": spco.n_nonempty_,
        "name_accuracy": name_accuracy(spco, house, test, vocabulary) if seg is None else None,
        "seconds": time.perf_counter() - start, "parts": parts(house, seed), "model": spco, "house": house,
        "vocabulary": vocabulary}
    if seg is not None:
        options = {**SEGMENTER_OPTIONS, **(segmenter or {})}
        first, later = options["n_iter"], options["sweeps_per_update"]  # as many sweeps as the connected one:
        options["n_iter"] = first + later * (n_iter - 1) + (first - later) * bool(options.get("relearn"))
        alone = km.WordSegmenter(**options, random_state=seed).fit(house["utterance"])
        result["name_f_connected"] = place_name_f(house, seg.segmentation_)
        result["name_f_paired"] = place_name_f(house, paired.segmentation_)
        result["name_f_alone"] = place_name_f(house, alone.segmentation_)
        if new_utterances:
            new = simulated_house(new_utterances, seed=20_000 + seed)
            for key, module in (("connected", seg), ("paired", paired), ("alone", alone)):
                result[f"name_f_new_{key}"] = place_name_f(new, module.segment(new["utterance"]))
            if seg.prior_mode == "name":
                # the places known: the concept posterior at the positions where the utterances were heard
                result["name_f_new_connected_placed"] = place_name_f(new, seg.segment(
                    new["utterance"], concepts=spco.predict_concepts(new["position"])))
                # the connected language model alone, NAME standing for every name
                result["name_f_new_connected_plain"] = place_name_f(new, [seg.model_.viterbi(u)
                                                                         for u in new["utterance"]])
        for key, module in (("connected", seg), ("paired", paired), ("alone", alone)):  # name moves accepted / tried
            records = [r for r in module.type_records_ if r["changed"]]
            result[f"type_moves_{key}"] = (sum(r["accepted"] for r in records), len(records))
            result[f"type_moves_{key}_accepted"] = [("split " if r["split"] else "merge ") + " ".join(r["pair"])
                                                    for r in records if r["accepted"]]
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"seed {result['seed']}, words: {result['words']} ({result['seconds']:.0f} s)")
    accuracy = result["name_accuracy"]
    print(f"  {'integrated (GMM + SpatialConcept)':40s} ARI {result['ari']:.3f}  concepts {result['n_concepts']} "
          f"(true 6; {result['n_nonempty']} non-empty)"
          + ("" if accuracy is None else f"  place-name accuracy {accuracy:.3f} (chance 0.167)"))
    for name, ari in result["parts"].items():
        print(f"  {name:40s} ARI {ari:.3f}")
    if result["words"] != "clean":
        print("  (the parts and SERKET's GMM -> MLDA above read the clean word counts; the integrated model the "
              "segmenter's words)")
    if "name_f_connected" in result:
        print(f"  place-name segmentation F: connected {result['name_f_connected']:.3f}, paired control "
              f"{result['name_f_paired']:.3f} (same first update, no concept prior after it), "
              f"alone {result['name_f_alone']:.3f}")
    if "name_f_new_connected" in result:
        print(f"  the same on new utterances (segment()): connected {result['name_f_new_connected']:.3f}, paired "
              f"control {result['name_f_new_paired']:.3f}, alone {result['name_f_new_alone']:.3f}"
              + (f"; connected, places known {result['name_f_new_connected_placed']:.3f}, without its name slot "
                 f"{result['name_f_new_connected_plain']:.3f}" if "name_f_new_connected_plain" in result else ""))


def place_labels(result: dict[str, Any]) -> list[tuple[np.ndarray, str]]:
    """The map's labels: for every position component of a major concept (at least ``min_share`` of the events),
    the mean position of its events and the concept's word of largest lift among the words of its first count
    child (the house's words, or the segmenter's with phonemes: the house's list read by the segmenter's indices put
    another place's name on the map)."""
    house, spco = result["house"], result["model"]
    classes = spco.classes.numpy()
    theta = spco.sampler_.feature_distributions(0)
    lift = theta / theta.mean(0, keepdims=True)
    components = spco.sampler_.state.i
    labels = []
    for c, k in sorted({(c, k) for c, k in zip(classes.tolist(), components.tolist())}):
        members = (classes == c) & (components == k)
        if members.mean() >= spco.min_share:
            labels.append((house["position"][members].mean(0), result["vocabulary"][int(lift[c].argmax())]))
    return labels


def save_figures(result: dict[str, Any], out: Path) -> list[Path]:
    """The house map with the learned places and their names, and the learned-vs-true confusion.

    Raises:
        ImportError: matplotlib is not installed (`kizuna.viz`'s message, which says how to install it).
    """
    from kizuna.viz._backend import new_figure, save_figure

    fig = new_figure(figsize=(7, 5.6))  # first: without matplotlib, kizuna.viz's ImportError saying how to install it
    from matplotlib.patches import Rectangle  # drawn on an Agg canvas: the user's backend is left alone

    house, spco = result["house"], result["model"]
    classes = spco.classes.numpy()
    out.mkdir(parents=True, exist_ok=True)
    ax = fig.add_subplot()
    for (x0, y0, x1, y1), name in zip(house["area_boxes"], house["areas"]):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5))
        ax.text(x0 + 0.1, y1 - 0.3, name, fontsize=7, color="grey")
    ax.scatter(*house["position"].T, c=classes, cmap="tab10", s=12, vmin=0, vmax=9)
    for xy, word in place_labels(result):
        ax.text(*xy, word, fontsize=11, weight="bold", ha="center", bbox={"facecolor": "white", "alpha": 0.7})
    ax.set(xlim=(-0.5, 10.5), ylim=(-0.5, 8.5), aspect="equal",
           title=f"learned places (ARI {result['ari']:.2f}, {result['n_concepts']} concepts)")
    paths = [out / "house_map.png", out / "confusion.png"]
    save_figure(fig, paths[0], 110, "kizuna demo", bbox_inches="tight")  # atomically: never a truncated image
    table = contingency(house["place"], classes)  # columns: the concepts that occur, in increasing id
    fig = new_figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.imshow(table, cmap="Blues")
    for (i, j), v in np.ndenumerate(table):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set(yticks=range(len(house["places"])), yticklabels=house["places"], xlabel="learned concept",
           xticks=range(table.shape[1]), xticklabels=[str(c) for c in np.unique(classes)],
           title="true place vs learned concept")
    save_figure(fig, paths[1], 110, "kizuna demo", bbox_inches="tight")  # atomically: never a truncated image
    return paths


def main(argv: list[str] | None = None) -> int:
    """``kizuna demo [--seed S] [--out DIR] [--words clean|phonemes] [--quick]`` (``--quick``: 150 events and 3
    iterations instead of 300 and 5)."""
    from kizuna.cli import _folder, _seed, make_folder

    parser = argparse.ArgumentParser(prog="kizuna demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=_seed, default=0)
    parser.add_argument("--out", type=_folder, default="kizuna-demo-out", help="folder for the figures")
    parser.add_argument("--words", choices=("clean", "phonemes"), default="clean")
    parser.add_argument("--quick", action="store_true", help="150 events, 3 iterations")
    args = parser.parse_args(argv)
    make_folder(parser, args.out)
    result = run(args.seed, 150 if args.quick else 300, args.words, 3 if args.quick else 5)
    _print(result)
    try:
        paths = save_figures(result, Path(args.out))
    except ImportError as err:  # as the digits demo (kizuna.demo): the scores are printed, the figures need matplotlib
        print(f"no plot: {err}")
        return 0
    for path in paths:
        print(f"saved {path}")
    return 0
