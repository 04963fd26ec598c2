r"""The GMM of SERKET's VAE+GMM on fixed latents: kizuna's blocked and collapsed samplers against SERKET's GMM.

Isolates the clustering step of SERKET's first update: the latents of the VAE trained 200 epochs (the
files of ``serket_gmm_samplers.py --updates 1 --dump DIR``) are clustered into 10 classes by 100 Gibbs
sweeps, from several seeds of the chain, by

* ``blocked``: `kizuna.modules.GMM` as it is (k-means start, blocked Gibbs, its data-set prior: :math:`m_0`
  the mean, :math:`S_0` the covariance, :math:`\nu_0 = D`, :math:`\alpha_0 = 1/K`);
* ``collapsed``: the same module and prior with ``GMM(algorithm="collapsed")``
  (`kizuna.modules.gmm.collapsed.collapsed_gibbs`);
* ``serket``: SERKET's GMM as its code runs it (naka-lab/Serket ``gmm/gmm.py``), here with the collapsed
  sampler: a uniformly random start, :math:`\kappa_0 = 1`, :math:`\nu_0 = D + 2`, :math:`S_0 = 0.1 I`,
  :math:`m_0` the mean, and weights :math:`N_k^{-n}` without a Dirichlet pseudo-count (:math:`\alpha_0 = 0`:
  an emptied class stays empty).

Run: ``python examples/serket_gmm_on_latents.py --latents DIR [--seeds 0 1] [--chains 0 1 2] [--sweeps 100]
[--smoke]``; ``--smoke`` reads the files of ``serket_gmm_samplers.py --smoke --updates 1 --dump DIR`` (500
digits, a 15-epoch VAE; named ``..._smoke.npz``) instead of the full run's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402
from _args import output_file, positive_int, seed_arg  # noqa: E402

from kizuna import modules as km  # noqa: E402
from kizuna.metrics import clustering_accuracy  # noqa: E402
from kizuna.modules.gmm.algorithms import NO_PARENT  # noqa: E402
from kizuna.modules.gmm.collapsed import collapsed_gibbs  # noqa: E402
from kizuna.modules.gmm.normal_wishart import NormalWishart  # noqa: E402

VARIANTS = ("blocked", "collapsed", "serket")


def serket_prior(x: torch.Tensor, k: int) -> NormalWishart:
    """SERKET's ``GaussWishart(dim, mean, 0.1)``: r0 = 1, nu0 = D + 2, m0 = the data mean, S0 = 0.1 I."""
    d = x.shape[1]
    ones = torch.ones(k, dtype=x.dtype)
    return NormalWishart(x.mean(0).expand(k, d).clone(), ones, ones * (d + 2),
                         (0.1 * torch.eye(d, dtype=x.dtype)).expand(k, d, d).clone())


def cluster(x: torch.Tensor, variant: str, chain: int, sweeps: int) -> np.ndarray:
    """Labels after ``sweeps`` sweeps of ``variant`` from chain seed ``chain``."""
    if variant == "serket":
        g = torch.Generator().manual_seed(chain)
        z = torch.randint(10, (x.shape[0],), generator=g)
        return collapsed_gibbs(x, serket_prior(x, 10), 0.0, z, sweeps, NO_PARENT, g).z.numpy()
    algorithm = "collapsed" if variant == "collapsed" else "gibbs"
    return km.GMM(10, algorithm=algorithm, max_iter=sweeps, random_state=chain).fit(x).fitted_.z.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--latents", required=True, help="folder of serket_gmm_samplers.py --dump files")
    parser.add_argument("--seeds", type=seed_arg, nargs="+", default=[0, 1])
    parser.add_argument("--chains", type=seed_arg, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--sweeps", type=positive_int, default=100)
    parser.add_argument("--out", type=output_file, default=None, help="append each result as a JSON line")
    parser.add_argument("--smoke", action="store_true",
                        help="read the files of serket_gmm_samplers.py --smoke --dump (*_smoke.npz, 500 digits)")
    args = parser.parse_args()
    S.check_dump(parser, args.latents, args.seeds, args.smoke)
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {}
    for seed in args.seeds:
        with np.load(S.dump_file(args.latents, "blocked", seed, args.smoke)) as f:
            x, labels = torch.as_tensor(f["latent"], dtype=torch.float64), f["labels"]
        for variant in args.variants:
            for chain in args.chains:
                start = time.time()
                acc = float(clustering_accuracy(labels, cluster(x, variant, chain, args.sweeps)))
                results.setdefault(variant, []).append(acc)
                line = {"seed": seed, "variant": variant, "chain": chain, "accuracy": round(acc, 4),
                        "seconds": round(time.time() - start, 1)}
                print(json.dumps(line), flush=True)
                if args.out:
                    with open(args.out, "a") as out:
                        out.write(json.dumps(line) + "\n")
    for variant, accs in results.items():
        print(f"{variant:10s} accuracy {S.mean_sd(accs)} over {len(accs)} runs")


if __name__ == "__main__":
    main()
