r"""SERKET's VAE+GMM with SERKET's own settings: the GMM's blocked Gibbs sampler against the collapsed one.

SERKET's script (``examples/VAE+GMM/VAE+GMM.py`` of naka-lab/Serket) trains ``VAE(18, epoch=200,
batch_size=500)`` and ``GMM(10)`` (100 collapsed Gibbs sweeps) and updates both five times. This script
runs the same graph with `kizuna.modules` under those settings — 200 VAE epochs and 100 Gibbs sweeps in
*every* update (`SERKET`), unlike the digit examples' shorter later updates — once with the GMM's blocked
sampler and once with the collapsed one (`serket_vae_gmm.use_sampler`), and prints the GMM's
Hungarian-matched accuracy, ARI and NMI after each update, and the time of the run.

Data: ``mnist3000.npz`` of SERKET's examples (``--data``, default ``../shared/data/serket``).

Run: ``python examples/serket_gmm_samplers.py [--seeds 0 1 2 3 4] [--samplers blocked collapsed]
[--out results.jsonl] [--smoke]``; each finished run is appended to ``--out`` as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402
import serket_vae_gmm as E  # noqa: E402
import torch  # noqa: E402

SERKET = replace(S.FULL, first_epochs=200, vae_epochs=200, gmm_sweeps=100, mlda_sweeps=100)


def run(seed: int, sampler: str, smoke: bool = False, data: str | None = None) -> dict[str, object]:
    """One VAE+GMM run: per update the GMM's accuracy / ARI / NMI (lists of ``n_iter``) and the seconds."""
    s = replace(S.SMOKE, vae_epochs=S.SMOKE.first_epochs) if smoke else SERKET
    d = S.digits(data, s.n)
    start = time.time()
    out: dict[str, object] = {"seed": seed, "sampler": sampler, "smoke": smoke}
    with E.use_sampler(sampler):
        graph, gmm = E.build(d, s, seed)
        per_update = []
        for i in range(s.n_iter):
            if i == 0:
                graph.fit(n_iter=1, seed=seed)
            else:
                graph.update()  # the generator set by fit continues
            per_update.append(S.module_scores(gmm, "gmm"))
    for metric in S.METRICS:
        out[metric] = [round(r[f"gmm_{metric}"], 4) for r in per_update]
    out["seconds"] = round(time.time() - start, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--samplers", nargs="+", choices=E.SAMPLERS, default=list(E.SAMPLERS))
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None, help="append each run as a JSON line to this file")
    parser.add_argument("--smoke", action="store_true", help="500 digits, 15 epochs, 3 updates (seconds)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for seed in args.seeds:
        for sampler in args.samplers:
            result = run(seed, sampler, args.smoke, args.data)
            print(json.dumps(result), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
