r"""β-VAE (Higgins et al. 2017): a heavier KL term pushes the latents to disentangle.

.. math::
    \mathcal L_\beta = \operatorname{mean}\Big(\beta\, D_{KL}[q(z|x)\,\|\,p(z)] - \mathbb E_{q(z|x)}[\log p(x|z)]\Big),
    \qquad \beta = 1 \text{ is the VAE}

Data: ``size × size`` binary images of one disc, drawn here from three known factors (column and
row of the centre, radius) on a grid, dSprites-like (Matthey et al. 2017); every combination
appears once, so the factors are independent and uniform.

Metric: the mutual information gap (Chen et al. 2018, arXiv:1802.04942) of the posterior means,
with mutual information estimated from histograms (20 bins per latent, the factors are discrete):

.. math::
    \mathrm{MIG} = \frac1K \sum_{k=1}^K \frac{I(z_{j^{(k)}}; v_k) - \max_{j \ne j^{(k)}} I(z_j; v_k)}{H(v_k)},
    \qquad j^{(k)} = \arg\max_j I(z_j; v_k)

It is 1 when each factor is carried by one latent alone and 0 when a factor is spread evenly
over two. Reconstruction is reported as :math:`-\mathbb E_q[\log p(x|z)]` per image (nats) and as
the squared error of the decoder mean summed over pixels.

Run: ``python examples/beta_vae.py`` (β = 1, 4, 8, five seeds each) or ``--smoke`` (β = 1, 4, one seed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402
from _common import fit, report, standard_normal  # noqa: E402

from kizuna.distributions import MLPBernoulli, MLPNormal  # noqa: E402
from kizuna.losses import Expectation as E  # noqa: E402
from kizuna.losses import KullbackLeibler, LogProb  # noqa: E402
from kizuna.models import Model  # noqa: E402

SMOKE = {"size": 12, "levels": (8, 8, 3), "z_dim": 5, "hidden": 128, "epochs": 150, "betas": (1.0, 4.0), "seeds": 1}
FULL = {"size": 16, "levels": (12, 12, 4), "z_dim": 6, "hidden": 256, "epochs": 300, "betas": (1.0, 4.0, 8.0),
        "seeds": 5}
FACTORS = ("column", "row", "radius")


def discs(size: int, levels: tuple[int, int, int]) -> tuple[torch.Tensor, np.ndarray]:
    """Every combination of the factor grid drawn as a disc; returns (binary images N×size², factors N×3).

    Factor ``k`` takes ``levels[k]`` evenly spaced values: the centre's column and row, and the radius.

    .. math:: x_{ij} = \\mathbb 1\\big[(i - c_y)^2 + (j - c_x)^2 \\le r^2\\big]
    """
    nx, ny, nr = levels
    radius = np.linspace(1.5, 3.5, nr)
    cx = np.linspace(radius[-1], size - 1 - radius[-1], nx)
    cy = np.linspace(radius[-1], size - 1 - radius[-1], ny)
    grid = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nr), indexing="ij"), -1).reshape(-1, 3)
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    d2 = (ii[None] - cy[grid[:, 1], None, None]) ** 2 + (jj[None] - cx[grid[:, 0], None, None]) ** 2
    img = (d2 <= radius[grid[:, 2], None, None] ** 2).astype(np.float32)
    return torch.tensor(img.reshape(len(grid), -1)), grid


def factor_gaps(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> np.ndarray:
    """Per factor :math:`(I(z_{j^{(k)}}; v_k) - \\max_{j \\ne j^{(k)}} I(z_j; v_k)) / H(v_k)` (histogram estimate).

    Args:
        codes: N×J latent codes (posterior means), each binned into ``bins`` equal-width bins.
        factors: N×K discrete factors.
    """
    from sklearn.metrics import mutual_info_score

    binned = [np.digitize(c, np.histogram_bin_edges(c, bins)[1:-1]) for c in codes.T]
    gaps = []
    for v in factors.T:
        mi = np.sort([mutual_info_score(v, b) for b in binned])[::-1]
        gaps.append((mi[0] - mi[1]) / mutual_info_score(v, v))
    return np.array(gaps)


def mutual_information_gap(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> float:
    """MIG (module docstring): the mean of `factor_gaps`."""
    return float(factor_gaps(codes, factors, bins).mean())


def train_beta_vae(x: torch.Tensor, beta: float, cfg: dict, seed: int, show: bool = False
                   ) -> tuple[MLPNormal, MLPBernoulli, dict]:
    """Fit one β-VAE (printing its loss if ``show``); returns the encoder, decoder and its figures."""
    torch.manual_seed(seed)
    dim, h, zd = x.shape[1], cfg["hidden"], cfg["z_dim"]
    q = MLPNormal("z", ["x"], [dim, h, h, zd], name="q")
    p = MLPBernoulli("x", ["z"], [zd, h, h, dim], name="p")
    prior = standard_normal("z", zd)
    kl, recon = KullbackLeibler(q, prior), E(q, LogProb(p))
    loss = (beta * kl - recon).mean()
    if show:
        print(f"beta={beta:g}  loss: {loss}")
    model = Model(loss, distributions=[p, q], optimizer_params={"lr": 1e-3})
    fit(model, {"x": x}, epochs=cfg["epochs"], batch_size=64, seed=seed)
    with torch.no_grad():
        mean = q.sample_mean({"x": x})
        recon_mean = torch.sigmoid(p.get_params({"z": mean})["logits"])
        figures = {
            "kl": kl.eval({"x": x}).mean().item(),
            "recon_nats": -recon.eval({"x": x}).mean().item(),
            "recon_mse": ((recon_mean - x) ** 2).sum(1).mean().item(),
        }
    return q, p, figures


def run(smoke: bool = False, seed: int = 0) -> dict[str, float]:
    """MIG, KL and reconstruction for each β, averaged over ``seeds`` runs starting at ``seed``."""
    cfg = SMOKE if smoke else FULL
    x, factors = discs(cfg["size"], cfg["levels"])
    out: dict[str, float] = {}
    for beta in cfg["betas"]:
        rows = []
        for s in range(seed, seed + cfg["seeds"]):
            q, _, figures = train_beta_vae(x, beta, cfg, s, show=s == seed)
            with torch.no_grad():
                codes = q.sample_mean({"x": x}).numpy()
            gaps = factor_gaps(codes, factors)
            figures["mig"] = float(gaps.mean())
            figures.update({f"gap_{name}": float(g) for name, g in zip(FACTORS, gaps)})
            rows.append(figures)
        for key in rows[0]:
            out[f"{key}_beta{beta:g}"] = float(np.mean([r[key] for r in rows]))
        if cfg["seeds"] > 1:
            out[f"mig_std_beta{beta:g}"] = float(np.std([r["mig"] for r in rows]))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small grid, one seed (CI)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report(run(smoke=args.smoke, seed=args.seed))
