"""Two diagnostics of the place names' segmentation on the robot house (docs/robotics.md, "The slot model").

``oracle``: NPYLM chains from the sequential start with the slot model in force from the first
utterance and the **true places** as the concepts (hard), against chains without it; place-name F.
``joint``: the joint log-probability of all utterances under a fresh NPYLM fitted to a segmentation
(sequential predictive probability after five rounds of hyper-parameter sampling, mean of three
seatings), for an alone chain's segmentation and for the true (noisy) one.

    python examples/slot_diagnostics.py oracle --seeds 0 1 --weights 0 0.2 0.5 --chains 3
    python examples/slot_diagnostics.py joint --seeds 0 1 2 3 4
    python examples/slot_diagnostics.py --smoke     # both, seed 0, 100 events, short chains: seconds (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import fraction, positive_int, seed_arg  # noqa: E402

from kizuna.datasets.house import simulated_house  # noqa: E402
from kizuna.modules import WordSegmenter  # noqa: E402
from kizuna.modules.npylm import NPYLM, gibbs_sweep  # noqa: E402
from kizuna.modules.npylm_slot import ConceptNames  # noqa: E402
from kizuna.robot_demo import place_name_f  # noqa: E402


def oracle(house: dict, weight: float, seed: int, sweeps: int = 20) -> float:
    """Place-name F of one chain (slot weight ``weight``; 0: no slot model) with the true places as concepts."""
    rng, utterances = np.random.default_rng(seed), house["utterance"]
    model = NPYLM("".join(sorted(set("".join(utterances)))), 10, 3)
    segmentation: list[list[str]] = [[] for _ in utterances]
    # (only 0 means none: NaN or -1 ran as 0 under their own label; ConceptNames refuses them)
    names = ConceptNames(np.eye(6)[house["place"]], weight, 1.0) if weight != 0 else None
    for _ in range(sweeps):
        gibbs_sweep(model, utterances, segmentation, rng, names=names)
    return place_name_f(house, segmentation)


def true_segmentation(house: dict) -> list[list[str]]:
    """The house's true segmentation of its utterances: each word's noisy phonemes, a word whose every phoneme was
    deleted ('' in ``phoneme_words``) left out."""
    return [[w for w in ws if w] for ws in house["phoneme_words"]]


def joint(house: dict, segmentation: list[list[str]], repeats: int = 3) -> float:
    """Mean over ``repeats`` seatings of log p(all utterances) under an NPYLM fitted to ``segmentation``."""
    totals = []
    for r in range(repeats):
        rng = np.random.default_rng(r)
        model = NPYLM("".join(sorted(set("".join(house["utterance"])))), 10, 3)
        for _ in range(5):
            for words in segmentation:
                model.add_sentence(words, rng)
            model.sample_hyperparameters(rng)
            for words in segmentation:
                model.remove_sentence(words, rng)
        total = 0.0
        for words in segmentation:
            total += model.log_prob(words)
            model.add_sentence(words, rng)
        totals.append(total)
    return float(np.mean(totals))


# teaching events of the house, oracle sweeps, the joint diagnostic's segmenter sweeps and seatings
FULL = {"events": 300, "sweeps": 20, "segmenter": 28, "repeats": 3}
SMOKE = {"events": 100, "sweeps": 2, "segmenter": 3, "repeats": 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("oracle", "joint"), nargs="?", default=None,
                        help="the diagnostic (required but with --smoke, which runs both by default)")
    parser.add_argument("--smoke", action="store_true",
                        help="100 teaching events, 2 oracle sweeps, 1 chain, a 3-sweep segmenter, 1 seating, seed 0")
    parser.add_argument("--seeds", type=seed_arg, nargs="+", default=None, help="default 0 1 (--smoke: 0)")
    parser.add_argument("--weights", type=fraction, nargs="+", default=[0.0, 0.2, 0.5],
                        help="oracle: slot weights, each in [0, 1) (0: no slot model)")
    parser.add_argument("--chains", type=positive_int, default=None,
                        help="oracle: chains per setting (default 3; --smoke: 1)")
    args = parser.parse_args(argv)
    if args.what is None and not args.smoke:
        parser.error("the following arguments are required: what (oracle or joint)")
    cfg = SMOKE if args.smoke else FULL
    seeds = args.seeds or ([0] if args.smoke else [0, 1])
    chains = args.chains or (1 if args.smoke else 3)
    for seed in seeds:
        house = simulated_house(cfg["events"], seed=seed)
        if args.what in ("oracle", None):
            for weight in args.weights:
                f = [oracle(house, weight, 1000 * seed + c, cfg["sweeps"]) for c in range(chains)]
                print(f"seed {seed} slot weight {weight}: place-name F {np.round(f, 3).tolist()} mean {np.mean(f):.3f}")
        if args.what in ("joint", None):
            chain = WordSegmenter(n_iter=cfg["segmenter"], random_state=seed).fit(house["utterance"]).segmentation_
            true = true_segmentation(house)
            print(f"seed {seed}: chain's place-name F {place_name_f(house, chain):.3f}, log p(chain's segmentation) "
                  f"{joint(house, chain, cfg['repeats']):.1f}, log p(true segmentation) "
                  f"{joint(house, true, cfg['repeats']):.1f}")


if __name__ == "__main__":
    main()
