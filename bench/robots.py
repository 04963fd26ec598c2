"""Scale of the robot modules: time per sweep at 10^3, 10^4 and 10^5 teaching events, and its growth.

For each size N of `kizuna.datasets.simulated_house`, one sweep of

* the GMM over the positions (blocked Gibbs, 10 components),
* the spatial-concept sampler (`ConceptSampler`, collapsed Gibbs over (concept, component) jointly,
  10 concepts, words and views, the GMM's likelihood as the position factor),
* NPYLM word segmentation over the N noisy phoneme utterances (blocked Gibbs with forward filtering /
  backward sampling),

each timed as the median of ``--repeats`` sweeps (process CPU time, so that the load of a shared machine
counts less), printed as seconds per sweep, microseconds per event, and the ratio of the per-event time
to that at the smallest N (1 = linear). The slope is the least-squares fit of log(time) against log(N).

Run: ``python bench/robots.py [--sizes 1000 10000 100000] [--repeats 3] [--only Concept]`` (``--quick``: 300 and
1000).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from kizuna import modules as km
from kizuna.datasets import simulated_house
from kizuna.modules.npylm import gibbs_sweep
from kizuna.modules.spatial_concept_gibbs import ConceptSampler, FixedPositions


def _median_cpu(step: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    return statistics.median(times)


def cases(n: int, seed: int = 0) -> dict[str, Callable[[], None]]:
    """One sweep of each module on a house of ``n`` events (state prepared outside the timing)."""
    house = simulated_house(n, seed=seed)
    gmm = km.GMM(10, max_iter=1, random_state=seed).fit(house["position"])
    x = house["position"]
    log_lik = (np.log(np.asarray(gmm.predict_proba(x)).clip(1e-300)) + np.asarray(gmm.score_samples(x))[:, None]
               - np.log(gmm.weights_))
    rng = np.random.default_rng(seed)
    sampler = ConceptSampler(FixedPositions(log_lik), [house["word_counts"], house["view"]], 10, 0.1, 0.1,
                             [0.5, 0.5], rng.integers(10, size=n), log_lik.argmax(1))
    seg = km.WordSegmenter(n_iter=1, random_state=seed).fit(house["utterance"])  # past the sequential start
    return {
        "GMM (blocked Gibbs)": lambda: gmm.fit(x),
        "SpatialConcept (collapsed Gibbs)": lambda: sampler.sweep(rng),
        "NPYLM segmentation": lambda: gibbs_sweep(seg.model_, seg.utterances_, seg.segmentation_, rng),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=None, help="time only the cases whose name contains this (e.g. Concept)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sizes = [300, 1000] if args.quick else args.sizes
    torch.set_num_threads(1)
    table: dict[str, list[float]] = {}
    for n in sizes:
        for name, step in cases(n).items():
            if args.only is not None and args.only not in name:
                continue
            seconds = _median_cpu(step, 1 if args.quick else args.repeats)
            table.setdefault(name, []).append(seconds)
            base = table[name][0] / sizes[0]
            print(f"N={n:>7d}  {name:34s} {seconds:8.2f} s/sweep  {1e6 * seconds / n:8.1f} us/event  "
                  f"x{seconds / n / base:5.2f} per event vs N={sizes[0]}", flush=True)
    if len(sizes) > 1:
        for name, secs in table.items():
            slope = np.polyfit(np.log(sizes), np.log(secs), 1)[0]
            print(f"slope of log(time) vs log(N), {name}: {slope:.2f} (1 = linear)")


if __name__ == "__main__":
    main()
