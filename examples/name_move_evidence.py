"""How much the slot model's concept evidence changes the name moves' acceptance (docs/robotics.md, "Name moves").

For each seed: a segmenter alone (20 sweeps), then two slot-model sweeps with the true places as the concepts
(hard r), then for every candidate pair of the name moves (`kizuna.modules.npylm_types`) that touches a place
name or the article "D6": the sequential predictive log-ratio new / old of the affected utterances under the
language model alone and under the slot model (mean of two seatings; the move is undone each time).

    python examples/name_move_evidence.py 1 0 3      # seeds (about 30 s each)
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


def main(seeds: list[int]) -> None:
    torch.set_num_threads(1)
    for seed in seeds:
        house = simulated_house(300, seed=seed)
        seg = WordSegmenter(n_iter=20, random_state=seed).fit(house["utterance"])
        place = np.asarray(house["place"])
        resp = np.full((len(place), place.max() + 1), 0.01)
        resp[np.arange(len(place)), place] = 1.0
        resp /= resp.sum(1, keepdims=True)
        rng = np.random.default_rng(seed)
        names = ConceptNames.counted(resp, seg.segmentation_, None, 0.2, 1.0)
        for _ in range(2):
            gibbs_sweep(seg.model_, seg.utterances_, seg.segmentation_, rng, names=names)
        print(f"seed {seed}: log p(new) - log p(old) of the affected utterances, nats")
        pairs = candidates(seg.segmentation_, seg.max_word_length)
        for pair in [p for p in pairs if any(n in "".join(p) for n in NAMES)]:
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
    main(parser.parse_args().seeds)
