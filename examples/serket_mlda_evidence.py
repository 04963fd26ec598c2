r"""SERKET's VAE+GMM+MLDA with SERKET's weights [200, 200]: how the MLDA turns its children's messages into
tokens, before (kizuna's rounding) and after (SERKET's truncation, or exact largest-remainder counts).

After the first update of SERKET's graph (the VAE trained 200 epochs before any message, then the GMM, then
the MLDA) the MLDA has heard two children: the speech histograms and the GMM's class posteriors, each
rescaled to 200 tokens a sample and made integer (`kizuna.modules.mlda_evidence`). This script runs that
first update on the VAE's first-update latents: the GMM (100 Gibbs sweeps) inside the graph, under its MLDA
parent, once per chain seed; then the MLDA (100 sweeps, as SERKET) on the speech and the GMM's message made
tokens by `mlda_evidence.token_counts` with each rounding, from the same seed — the chains are repeated
because their spread is larger than the differences sought — and prints the GMM's and the MLDA's accuracy.

The latents come from ``serket_gmm_samplers.py --updates 1 --dump DIR`` (``--latents DIR``; files
``first_update_blocked_seed<S>.npz``; with ``--smoke`` those of ``serket_gmm_samplers.py --smoke --updates 1
--dump DIR``, ``first_update_blocked_seed<S>_smoke.npz``, 500 digits) or, without it, from training the VAE
here (200 epochs, minutes).

Run: ``python examples/serket_mlda_evidence.py [--seeds 0 1 2] [--chains 0 1 2] [--latents DIR]
[--roundings round floor largest_remainder] [--sweeps 100] [--mlda-sweeps 100] [--serket-priors]
[--out results.jsonl] [--smoke]``
(``--serket-priors``: SERKET's MLDA hyper-parameters, alpha = beta = 1, instead of kizuna's 1/K).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402
from _args import output_file, positive_int, seed_arg  # noqa: E402

from kizuna import modules as km  # noqa: E402
from kizuna.modules.mlda_evidence import ROUNDINGS, token_counts  # noqa: E402

WEIGHTS = (200.0, 200.0)  # SERKET's VAE+GMM+MLDA: speech, then the GMM's posterior


def latents(seed: int, folder: str | None, data: str | None, smoke: bool = False) -> np.ndarray:
    """The VAE's latent means after SERKET's first update (200 epochs, no message yet; ``smoke``: `S.SMOKE`):
    ``folder``'s dump of ``serket_gmm_samplers.py`` (its ``_smoke`` file when ``smoke``), else trained here."""
    if folder is not None:
        with np.load(S.dump_file(folder, "blocked", seed, smoke)) as f:
            return f["latent"]
    s = S.SMOKE if smoke else S.SERKET
    d = S.digits(data, s.n)
    vae = S.image_vae(d, s)
    km.Graph([vae]).fit(n_iter=1, seed=seed)
    return np.asarray(vae.latent)


def gmm_message(z: np.ndarray, d: S.Digits, chain: int, sweeps: int) -> tuple[torch.Tensor, float]:
    """The GMM's first update inside SERKET's graph (under an MLDA parent, before any message from it):
    its forward message (the class posteriors N×K) and its accuracy; the graph's stream seeded by ``chain``."""
    gmm = km.GMM(10, category=d.label, max_iter=sweeps, name="gmm").connect(km.Observation(z, name="latent"))
    mlda = km.MLDA(10, weights=list(WEIGHTS), name="mlda").connect(km.Observation(d.speech, name="speech"), gmm)
    graph = km.Graph([mlda])
    ctx = graph.context(seed=chain)
    for module in graph.modules[:graph.modules.index(gmm) + 1]:  # the data and the GMM, not the MLDA
        module.update(ctx)
    return gmm.forward_message.value, float(gmm.accuracy)


def mlda_accuracy(d: S.Digits, message: torch.Tensor, rounding: str, chain: int, sweeps: int,
                  serket_priors: bool) -> tuple[float, list[float]]:
    """The MLDA's first update on the speech and the GMM's message, both made tokens by `token_counts`
    with SERKET's weights: its accuracy and the mean tokens a sample of each modality."""
    tokens = [token_counts(d.speech, WEIGHTS[0], rounding, "speech"),
              token_counts(message, WEIGHTS[1], rounding, "GMM message")]
    priors = {"alpha": 1.0, "beta": 1.0} if serket_priors else {}
    mlda = km.MLDA(10, category=d.label, max_iter=sweeps, random_state=chain, **priors).fit(tokens)
    return float(mlda.accuracy), [round(float(t.sum(1).double().mean()), 1) for t in tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seeds", type=seed_arg, nargs="+", default=[0, 1, 2], help="VAE seeds")
    parser.add_argument("--chains", type=seed_arg, nargs="+", default=[0, 1, 2], help="seeds of the GMM / MLDA chains")
    parser.add_argument("--roundings", nargs="+", choices=ROUNDINGS, default=list(ROUNDINGS))
    parser.add_argument("--latents", default=None, help="folder of serket_gmm_samplers.py --dump files "
                        "(with --smoke: of serket_gmm_samplers.py --smoke --dump, *_smoke.npz)")
    parser.add_argument("--sweeps", type=positive_int, default=100, help="GMM sweeps (SERKET: 100)")
    parser.add_argument("--mlda-sweeps", type=positive_int, default=100, help="MLDA sweeps (SERKET: 100)")
    parser.add_argument("--serket-priors", action="store_true", help="MLDA alpha = beta = 1 (SERKET's)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", type=output_file, default=None, help="append each result as a JSON line")
    parser.add_argument("--smoke", action="store_true", help="500 digits, a 15-epoch VAE (seconds)")
    args = parser.parse_args()
    if args.latents is not None:
        S.check_dump(parser, args.latents, args.seeds, args.smoke)
    S.check_data(parser, args.data)
    torch.set_num_threads(1)
    d = S.digits(args.data, S.SMOKE.n if args.smoke else None)
    summary: dict[str, list[float]] = {}
    for seed in args.seeds:
        z = latents(seed, args.latents, args.data, args.smoke)
        for chain in args.chains:
            message, gmm = gmm_message(z, d, chain, args.sweeps)
            for rounding in args.roundings:
                start = time.time()
                mlda, tokens = mlda_accuracy(d, message, rounding, chain, args.mlda_sweeps, args.serket_priors)
                result = {"seed": seed, "rounding": rounding, "chain": chain, "serket_priors": args.serket_priors,
                          "gmm": gmm, "mlda": mlda, "tokens": tokens, "seconds": round(time.time() - start, 1)}
                summary.setdefault(rounding, []).append(result["mlda"] - result["gmm"])
                print(json.dumps(result), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(result) + "\n")
    for rounding, gains in summary.items():
        print(f"{rounding:18s} MLDA - GMM accuracy: {S.mean_sd(gains)} over {len(gains)} runs "
              f"(median {statistics.median(gains):+.3f})")


if __name__ == "__main__":
    main()
