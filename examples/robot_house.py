"""The robot house, five seeds: the integrated spatial-concept model against each of its parts (issue 14).

Each seed draws a house of 300 teaching events (`kizuna.datasets.simulated_house`) and runs, on the
same events, GMM + SpatialConcept over the clean word counts and the views, the parts alone (GMM on
positions, LDA on words, LDA on views, each given the true 6 places) and SERKET's GMM -> MLDA; with
``--words phonemes`` the words come from a WordSegmenter (NPYLM) on the noisy phoneme strings
connected under the concept module, and the place names' segmentation F is compared with the same
segmenter alone. See `kizuna.robot_demo` for the definitions of the scores.

    python examples/robot_house.py --seeds 5
    python examples/robot_house.py --seeds 5 --first-seed 5        # seeds 5-9 (held out when choosing settings)
    python examples/robot_house.py --seeds 5 --alpha 0.1 --beta 0.5 0.5 --sweeps 10   # default alpha, beta
    python examples/robot_house.py --seeds 5 --split-merge 2      # with split-merge moves
    python examples/robot_house.py --seeds 5 --words phonemes
    python examples/robot_house.py --seeds 5 --words phonemes --chains 4   # four chains, the concepts choose
    python examples/robot_house.py --seeds 5 --words phonemes --prior-mode slot --relearn   # the slot model
    python examples/robot_house.py --seeds 5 --words phonemes --prior-mode slot --type-moves 20  # name moves
    python examples/robot_house.py --seeds 5 --words phonemes --prior-mode name --type-moves 20  # one-name model
    python examples/robot_house.py --seeds 5 --words phonemes --prior-mode name --type-moves 20 --shuffle-concepts
    python examples/robot_house.py --seeds 5 --words phonemes --prior-mode name --type-moves 20 --new-utterances 300
    python examples/robot_house.py --smoke
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import non_negative_int, output_file, positive_float, positive_int, wide_seed_arg  # noqa: E402

from kizuna.cli import SEED_MAX  # noqa: E402
from kizuna.robot_demo import _print, run  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=positive_int, default=5, help="seeds 0 .. N-1 (default 5)")
    parser.add_argument("--words", choices=("clean", "phonemes"), default="clean")
    parser.add_argument("--out", type=output_file, default=None, help="append one JSON line per seed to this file")
    parser.add_argument("--split-merge", type=non_negative_int, default=None, metavar="S",
                        help="split-merge proposals per concept sweep (0: none; default: SpatialConcept's)")
    parser.add_argument("--first-seed", type=wide_seed_arg, default=0, help="seeds FIRST .. FIRST+N-1 (default 0)")
    parser.add_argument("--sweeps", type=positive_int, default=30, help="concept sweeps per update (default 30)")
    parser.add_argument("--alpha", type=positive_float, default=None,
                        help="stick-breaking alpha (default: the demo's, 1.0)")
    parser.add_argument("--beta", type=positive_float, nargs=2, default=None, metavar=("WORDS", "VIEWS"),
                        help="Dirichlet beta of the word and view distributions (default: the demo's, 2.0 0.5)")
    parser.add_argument("--chains", type=positive_int, default=None, metavar="R",
                        help="phonemes: segmentation chains the concepts choose among (default 1)")
    parser.add_argument("--prior-mode", choices=("sir", "exact", "slot", "name"), default=None,
                        help="phonemes: how the concept module's belief enters the segmentation (default 'sir')")
    parser.add_argument("--sweeps-per-update", type=non_negative_int, default=None, metavar="S",
                        help="phonemes: segmentation sweeps of every update after the first (default 2)")
    parser.add_argument("--relearn", action="store_true",
                        help="phonemes: the segmenter starts again when the concepts first come down")
    parser.add_argument("--type-moves", type=non_negative_int, default=None, metavar="M",
                        help="phonemes: name moves (type-level MH) after every segmentation sweep (default 0)")
    parser.add_argument("--shuffle-concepts", action="store_true",
                        help="phonemes, a control: the segmenter gets the concept posterior with its rows permuted "
                             "across the events (the concepts' form without their place information)")
    parser.add_argument("--new-utterances", type=non_negative_int, default=0, metavar="N",
                        help="phonemes: also segment N utterances of a new draw of the house with the fitted "
                             "segmenters (WordSegmenter.segment) and report the place names' F on them")
    parser.add_argument("--smoke", action="store_true", help="one seed, 150 events, 2 iterations")
    args = parser.parse_args(argv)
    if args.first_seed + (1 if args.smoke else args.seeds) - 1 > SEED_MAX:
        parser.error(f"--first-seed {args.first_seed} with --seeds {args.seeds}: the last seed is above 2**64 - 1")
    concept = {k: v for k, v in (("alpha", args.alpha), ("beta", args.beta)) if v is not None}
    segmenter = {k: v for k, v in (("n_chains", args.chains), ("prior_mode", args.prior_mode),
                                    ("relearn", args.relearn or None), ("sweeps_per_update", args.sweeps_per_update),
                                    ("type_moves", args.type_moves))
                 if v is not None}
    rows = []
    for seed in range(args.first_seed, args.first_seed + (1 if args.smoke else args.seeds)):
        result = run(seed, 150 if args.smoke else 300, args.words, 2 if args.smoke else 5, args.split_merge,
                     args.sweeps, concept, segmenter or None, args.shuffle_concepts,
                     args.new_utterances)
        _print(result)
        row = {k: v for k, v in result.items() if k not in ("model", "house")}
        rows.append(row)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    keys = ["ari", "n_concepts"] + [k for k in ("name_accuracy", "name_f_connected", "name_f_paired", "name_f_alone",
                                                                "name_f_new_connected", "name_f_new_paired",
                                                                "name_f_new_alone", "name_f_new_connected_placed")
                                     if rows[0].get(k) is not None]
    print(f"mean over {len(rows)} seeds: " + ", ".join(f"{k} {np.mean([r[k] for r in rows]):.3f}" for k in keys))
    for name in rows[0]["parts"]:
        print(f"  {name:40s} mean ARI {np.mean([r['parts'][name] for r in rows]):.3f}")
    return rows


if __name__ == "__main__":
    main()
