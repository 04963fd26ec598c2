"""How much the slot model's concept evidence changes the name moves' acceptance (docs/robotics.md, "Name moves").

For each seed: a segmenter alone (20 sweeps), then two slot-model sweeps with the true places as the concepts
(hard r), then for every candidate pair of the name moves (`kizuna.modules.npylm_types`) that touches a place
name or the article "D6": the sequential predictive log-ratio new / old of the affected utterances under the
language model alone and under the slot model (mean of two seatings; the move is undone each time).

    python examples/name_move_evidence.py 1 0 3      # seeds (about 30 s each)
    python examples/name_move_evidence.py --smoke    # 100 events, 3 sweeps, the first 3 pairs: seconds (CI)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402

from kizuna.datasets.house import simulated_house  # noqa: E402
from kizuna.modules.npylm import gibbs_sweep  # noqa: E402
from kizuna.modules.npylm_slot import ConceptNames  # noqa: E402
from kizuna.modules.npylm_types import candidates, type_move  # noqa: E402
from kizuna.modules.word_segmenter import WordSegmenter  # noqa: E402

NAMES = {"kIC6n", "bEdrum", "b&Trum", "lIvIN", "l7nJ", "st^di", "hOl", "Entr6ns", "D6"}  # noise-free spellings


FULL = {"events": 300, "sweeps": 20, "pairs": None}
SMOKE = {"events": 100, "sweeps": 3, "pairs": 3}


def main(seeds: list[int], events: int = 300, sweeps: int = 20, pairs: int | None = None) -> None:
    """The log-ratios of each seed's name moves on a house of ``events`` teaching events after ``sweeps`` segmenter
    sweeps; ``pairs``: only the first so many candidate pairs (None: all)."""
    torch.set_num_threads(1)
    for seed in seeds:
        house = simulated_house(events, seed=seed)
        seg = WordSegmenter(n_iter=sweeps, random_state=seed).fit(house["utterance"])
        place = np.asarray(house["place"])
        resp = np.full((len(place), place.max() + 1), 0.01)
        resp[np.arange(len(place)), place] = 1.0
        resp /= resp.sum(1, keepdims=True)
        rng = np.random.default_rng(seed)
        names = ConceptNames.counted(resp, seg.segmentation_, None, 0.2, 1.0)
        for _ in range(2):
            gibbs_sweep(seg.model_, seg.utterances_, seg.segmentation_, rng, names=names)
        print(f"seed {seed}: log p(new) - log p(old) of the affected utterances, nats")
        chosen = [p for p in candidates(seg.segmentation_, seg.max_word_length) if any(n in "".join(p) for n in NAMES)]
        for pair in chosen[:pairs]:
            out = []
            for slot in (None, names):
                values = []
                for rep in range(2):
                    model, slot2, segs = copy.deepcopy((seg.model_, slot, seg.segmentation_))
                    r = type_move(model, segs, np.random.default_rng(rep), slot2, pair=pair)
                    values.append(r["log_new"] - r["log_old"])
                out.append(float(np.mean(values)))
            if r["changed"]:
                move = "split" if r["split"] else "merge"
                print(f"  {move} {pair[0]:>9s} {pair[1]:<9s} sites {len(r['changed']):3d}  "
                      f"LM {out[0]:7.1f}  slot {out[1]:7.1f}  concept evidence {out[1] - out[0]:6.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", type=seed_arg, nargs="*", default=[1], help="house seeds (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="100 teaching events, 3 segmenter sweeps, the first 3 candidate pairs (seconds; CI)")
    args = parser.parse_args()
    main(args.seeds, **(SMOKE if args.smoke else FULL))
