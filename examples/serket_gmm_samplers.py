r"""SERKET's VAE+GMM with SERKET's own settings: the GMM's blocked Gibbs sampler against the collapsed one.

SERKET's script (``examples/VAE+GMM/VAE+GMM.py`` of naka-lab/Serket) trains ``VAE(18, epoch=200,
batch_size=500)`` and ``GMM(10)`` (100 collapsed Gibbs sweeps) and updates both five times. This script
runs the same graph with `kizuna.modules` under those settings — 200 VAE epochs and 100 Gibbs sweeps in
*every* update (`_serket.SERKET`), unlike the digit examples' shorter later updates — once with the GMM's blocked
sampler and once with the collapsed one (``GMM(algorithm="collapsed")``), from the same first VAE update
(200 epochs before any message: trained once per seed and shared), and prints the GMM's Hungarian-matched
accuracy, ARI and NMI after each update, and the time of the run.

Data: ``mnist3000.npz`` of SERKET's examples (``--data``, default ``../shared/data/serket``).

Run: ``python examples/serket_gmm_samplers.py [--seeds 0 1 2 3 4] [--samplers blocked collapsed]
[--settings serket|full] [--updates 5] [--out results.jsonl] [--dump DIR] [--smoke]``; each finished
run is appended to ``--out`` as one JSON line. ``--dump DIR`` saves each sampler's state after the first
update as ``DIR/first_update_<sampler>_seed<S>.npz`` (``..._seed<S>_smoke.npz`` with ``--smoke``), the
``--latents DIR`` of ``serket_gmm_on_latents.py`` and ``serket_mlda_evidence.py``: they read the blocked
sampler's files, the ``_smoke`` ones when they too run with ``--smoke`` (`_serket.dump_file`,
`_serket.check_dump`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _args import output_file, output_folder, positive_int, seed_arg  # noqa: E402

from kizuna import modules as km  # noqa: E402
from kizuna.cli import make_folder  # noqa: E402


def _scores(gmm: km.GMM) -> dict[str, float]:
    return S.module_scores(gmm, "gmm")


def run(seed: int, samplers: list[str], smoke: bool = False, data: str | None = None,
        dump: str | None = None, updates: int | None = None, settings: str = "serket") -> list[dict[str, object]]:
    """One seed: the VAE's first update (200 epochs, no prior yet: the same for every sampler) is trained
    once and saved; each sampler then continues from it (GMM update, then ``n_iter - 1`` sweeps of VAE and
    GMM; ``updates`` overrides ``n_iter``; ``settings="full"``: the digit examples' `_serket.FULL`, 40 epochs
    and 50 sweeps in later updates). Returns per sampler the GMM's accuracy / ARI / NMI after each
    update and the seconds (the shared first VAE update counted in each). ``dump``: a folder where each
    sampler's state after the first update is saved (``latent``, the GMM's ``z``, ``labels``)."""
    s = replace(S.SMOKE, vae_epochs=S.SMOKE.first_epochs) if smoke else S.SERKET if settings == "serket" else S.FULL
    s = s if updates is None else replace(s, n_iter=updates)
    d = S.digits(data, s.n)
    start = time.time()
    graph, gmm = S.build_vae_gmm(d, s)
    ctx = graph.context(seed=seed, schedule=S.schedule(graph, s))
    vae = gmm.children[0]
    for m in graph.modules[:graph.modules.index(vae) + 1]:  # the data and the VAE's first update
        m.update(ctx)
    shared, results = time.time() - start, []
    with tempfile.TemporaryDirectory() as tmp:
        saved = km.save_module(vae, Path(tmp) / "vae.kz")
        state = ctx.generator.get_state()
        for sampler in samplers:
            begin = time.time()
            graph, gmm = S.build_vae_gmm(d, s, algorithm=S.SAMPLERS[sampler])
            km.load_module(gmm.children[0], saved)
            ctx = graph.context(seed=seed, schedule=S.schedule(graph, s))
            ctx.generator.set_state(state)
            gmm.update(ctx)
            per_update = [_scores(gmm)]
            if dump is not None:
                Path(dump).mkdir(parents=True, exist_ok=True)
                np.savez(S.dump_file(dump, sampler, seed, smoke),
                         latent=np.asarray(gmm.children[0].latent), z=gmm.fitted_.z.numpy(), labels=d.label)
            for i in range(1, s.n_iter):
                graph.update(ctx.at(i))
                per_update.append(_scores(gmm))
            out: dict[str, object] = {"seed": seed, "sampler": sampler, "smoke": smoke, "settings": settings}
            for metric in S.METRICS:
                out[metric] = [round(r[f"gmm_{metric}"], 4) for r in per_update]
            out["seconds"] = round(shared + time.time() - begin, 1)
            results.append(out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seeds", type=seed_arg, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--samplers", nargs="+", choices=S.SAMPLERS, default=list(S.SAMPLERS))
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", type=output_file, default=None, help="append each run as a JSON line to this file")
    parser.add_argument("--settings", choices=("serket", "full"), default="serket",
                        help="serket: 200 epochs and 100 sweeps every update; full: the digit examples' FULL")
    parser.add_argument("--updates", type=positive_int, default=None, help="mutual-inference updates (default 5)")
    parser.add_argument("--dump", type=output_folder, default=None,
                        help="save each run's state after the first update here (file names end in _smoke.npz with "
                             "--smoke)")
    parser.add_argument("--smoke", action="store_true", help="500 digits, 15 epochs, 3 updates (seconds)")
    args = parser.parse_args()
    S.check_data(parser, args.data)
    if args.dump is not None:  # (checked by its type; created now, before the work, rather than after it)
        make_folder(parser, args.dump)
    torch.set_num_threads(1)
    for seed in args.seeds:
        for result in run(seed, args.samplers, args.smoke, args.data, args.dump, args.updates, args.settings):
            print(json.dumps(result), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
