"""The demo's integrated model (VAE+GMM+MLDA on digits and words) under several MLDA weightings.

MLDA turns a child's class posterior into class-word tokens next to the observed counts (10 words per
digit here). The default gives the posterior half the words' tokens per sample (5); equal or larger
weights, SERKET's ``[200, 200]`` included, make the topics follow the GMM's clusters. Full run (seed 0,
one thread, a minute or more per weighting): ``python examples/mlda_weights.py``; ``--smoke``: the demo's
quick settings (`kizuna.demo.QUICK`): 600 digits, 3 mutual-inference iterations, each with 15 VAE epochs, 20 GMM
and 30 MLDA sweeps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402

from kizuna import demo  # noqa: E402
from kizuna import modules as km  # noqa: E402

WEIGHTINGS = {"default (posterior: 5 tokens)": None, "[None, 10] (equal)": [None, 10],
              "[None, 100] (the old default)": [None, 100], "[200, 200] (SERKET's)": [200, 200]}


def run(smoke: bool = False, seed: int = 0) -> dict[str, float]:
    """MLDA accuracy of the integrated model for each of `WEIGHTINGS` (keys as there)."""
    cfg = demo.QUICK if smoke else demo.FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, words, labels = demo.load_demo_data(cfg.n)
        scores = {}
        for name, weights in WEIGHTINGS.items():
            vae = demo._vae(images, cfg, seed)
            gmm = demo._gmm(labels, cfg).connect(vae)
            mlda = demo._mlda(labels, cfg, weights).connect(km.Observation(words, name="words"), gmm)
            km.Graph([mlda]).fit(cfg.n_iter, seed=seed)
            scores[name] = mlda.accuracy
            print(f"{name:32s} MLDA accuracy {mlda.accuracy:.3f}, its GMM {gmm.accuracy:.3f}", flush=True)
        return scores
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="600 digits, 3 iterations of 15 VAE epochs, 20 GMM and 30 MLDA sweeps")
    parser.add_argument("--seed", type=seed_arg, default=0)
    args = parser.parse_args()
    run(args.smoke, args.seed)
