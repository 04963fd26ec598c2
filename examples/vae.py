r"""Variational auto-encoder (Kingma & Welling 2013, arXiv:1312.6114), written as its formula.

.. math::
    p(x, z) = p(x|z)\,p(z),\qquad p(z) = \mathcal N(0, I),\qquad
    p(x|z) = \prod_d \mathrm{Bernoulli}(x_d;\ \pi_d(z))

    \mathcal L = \operatorname{mean}\Big(D_{KL}[q(z|x)\,\|\,p(z)] - \mathbb E_{q(z|x)}[\log p(x|z)]\Big)
    = -\operatorname{mean}\,\mathrm{ELBO}

Metrics: the held-out log-likelihood :math:`\log p(x)` estimated by importance sampling with
``k`` draws from :math:`q(z|x)` (IWAE bound, Burda et al. arXiv:1509.00519; ``k = 5000`` in full
runs), the ELBO, bits per dimension, and the same for one independent Bernoulli per pixel.

Run: ``python examples/vae.py`` (MNIST, 4,000 train / 1,000 test) or ``--smoke`` (digits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402
from _common import (  # noqa: E402
    bernoulli_baseline,
    binary_images,
    fit,
    report,
    standard_normal,
)

from kizuna.distributions import MLPBernoulli, MLPNormal  # noqa: E402
from kizuna.losses import ELBO, KullbackLeibler  # noqa: E402
from kizuna.metrics import bits_per_dim, log_likelihood  # noqa: E402
from kizuna.models import VAE  # noqa: E402

SMOKE = {"dataset": "digits", "z_dim": 8, "hidden": 128, "epochs": 120, "k": 200, "n_test": 360}
FULL = {"dataset": "mnist", "z_dim": 32, "hidden": 400, "epochs": 100, "k": 5000, "n_test": None}


def build(x_dim: int, z_dim: int, hidden: int) -> tuple:
    """The encoder :math:`q(z|x)`, decoder :math:`p(x|z)` and prior :math:`p(z)`."""
    q = MLPNormal("z", ["x"], [x_dim, hidden, hidden, z_dim], name="q")
    p = MLPBernoulli("x", ["z"], [z_dim, hidden, hidden, x_dim], name="p")
    prior = standard_normal("z", z_dim)
    return q, p, prior


def run(smoke: bool = False, seed: int = 0, dataset: str | None = None) -> dict[str, float]:
    """Train the VAE and return the held-out figures (nats per image, bits per pixel)."""
    cfg = dict(SMOKE if smoke else FULL)
    if dataset is not None:
        cfg["dataset"] = dataset
    torch.manual_seed(seed)
    x_train, _, x_test, _ = binary_images(cfg["dataset"], seed=seed, n_test=cfg["n_test"])
    dim = x_train.shape[1]
    q, p, prior = build(dim, cfg["z_dim"], cfg["hidden"])

    # the VAE preset builds mean(-E_q[log p(x|z)] + KL[q(z|x)||p(z)]), i.e. the formula above
    model = VAE(q, p, regularizer=KullbackLeibler(q, prior), optimizer_params={"lr": 1e-3})
    print(f"generative model: {p * prior}\ninference model : {q}\nloss            : {model.loss_cls}")
    seconds = fit(model, {"x": x_train}, epochs=cfg["epochs"], batch_size=100, seed=seed, quiet=smoke)

    p_joint = p * prior
    with torch.no_grad():
        elbo = ELBO(p_joint, q).eval({"x": x_test}).mean().item()
    ll = log_likelihood(p_joint, q, {"x": x_test}, k=cfg["k"]).mean().item()
    base = bernoulli_baseline(x_train, x_test)
    return {
        "test_ll": ll, "test_elbo": elbo, "bits_per_dim": bits_per_dim(ll, dim),
        "baseline_ll": base, "baseline_bits_per_dim": bits_per_dim(base, dim),
        "k": float(cfg["k"]), "train_cpu_seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="digits, a few epochs (CI)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--dataset", choices=["digits", "mnist", "fashion"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report(run(smoke=args.smoke, seed=args.seed, dataset=args.dataset))
