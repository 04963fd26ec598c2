r"""VQ-VAE with a PixelCNN prior over its codes, on binarised MNIST (digits for ``--smoke``).

.. math::
    q(k, z|x):\ k = \arg\min_j\|z_e(x) - e_j\|,\ z = e_k\ (\text{straight-through}),\qquad
    p(x|z) = \prod_d \mathrm{Bernoulli}(x_d; \pi_d(z)),\qquad p(k) = \mathrm{PixelCNN}(k)

Stage 1 trains the encoder, codebook and decoder on
:math:`-\mathbb{E}_{q}[\log p(x|z)] + \|\mathrm{sg}[z_e] - e_k\|^2 + 0.25\|z_e - \mathrm{sg}[e_k]\|^2`;
stage 2 fits the prior :math:`\max \mathbb{E}_q[\log p(k)]` on the frozen codes. Reported:
:math:`-\log p(x) \le -\log p(x|z(k)) - \log p(k)` on the test images, in nats and bits/dim,
next to the single-layer VAE of `examples/vae.py` (−95.0 nats, 0.175 bits/dim on the same data).

Run: ``python examples/vqvae.py`` (MNIST, 4,000 train / 1,000 test) or ``--smoke`` (digits).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import non_negative_int, seed_arg  # noqa: E402
from _common import bernoulli_baseline, binary_images, fit, report  # noqa: E402

from kizuna.distributions import Bernoulli, PixelCNNCategorical  # noqa: E402
from kizuna.distributions.vq import VectorQuantizer  # noqa: E402
from kizuna.losses import Expectation, LogProb, VQCommitment  # noqa: E402
from kizuna.models import Model  # noqa: E402

SMOKE = {"dataset": "digits", "side": 8, "downs": 1, "codes": 16, "dim": 8, "ch": 32, "epochs": 15,
         "prior_epochs": 15, "n_test": 360}
FULL = {"dataset": "mnist", "side": 28, "downs": 2, "codes": 64, "dim": 16, "ch": 64, "epochs": 30,
        "prior_epochs": 30, "n_test": None}


class Encoder(nn.Module):
    """Flat images -> ``(batch, dim, side / 2^downs, side / 2^downs)``."""

    def __init__(self, side: int, downs: int, ch: int, dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for _ in range(downs):
            layers += [nn.Conv2d(c, ch, 4, 2, 1), nn.ReLU()]
            c = ch
        self.side, self.net = side, nn.Sequential(*layers, nn.Conv2d(ch, ch, 3, 1, 1), nn.ReLU(), nn.Conv2d(ch, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, 1, self.side, self.side))


class Decoder(Bernoulli):
    """:math:`p(x|z)`: transposed convolutions back to the image, Bernoulli logits per pixel."""

    def __init__(self, downs: int, ch: int, dim: int) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        layers: list[nn.Module] = [nn.Conv2d(dim, ch, 3, 1, 1), nn.ReLU()]
        for i in range(downs):
            layers += [nn.ConvTranspose2d(ch, ch if i < downs - 1 else 1, 4, 2, 1)]
            layers += [nn.ReLU()] if i < downs - 1 else []
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(z).flatten(1)}


def bound_nats(q: VectorQuantizer, p: Decoder, prior: PixelCNNCategorical, x: torch.Tensor) -> torch.Tensor:
    """:math:`-\\log p(x|z(k)) - \\log p(k)` per image (an upper bound on :math:`-\\log p(x)`)."""
    with torch.no_grad():
        out = []
        for chunk in x.split(500):
            s = q.sample({"x": chunk})
            out.append(-(p.get_log_prob({"x": chunk, "z": s["z"]}) + prior.get_log_prob({"k": s["k"]})))
    return torch.cat(out)


def run(smoke: bool = False, seed: int = 0, epochs: int | None = None, prior_epochs: int | None = None
        ) -> dict[str, float]:
    """Train stage 1 and the prior; return the test bound (nats, bits/dim), codes used and CPU seconds.

    ``epochs`` and ``prior_epochs`` replace the configuration's (`FULL` or `SMOKE`) epochs of each stage (0: the
    stage stays untrained).
    """
    cfg = dict(SMOKE if smoke else FULL)
    for key, value in (("epochs", epochs), ("prior_epochs", prior_epochs)):
        if value is not None:
            if value < 0:
                raise ValueError(f"vqvae: {key} must be a non-negative integer, got {value}")
            cfg[key] = value
    torch.manual_seed(seed)
    x_train, _, x_test, _ = binary_images(cfg["dataset"], seed=seed, n_test=cfg["n_test"])
    grid = cfg["side"] // 2 ** cfg["downs"]
    q = VectorQuantizer(Encoder(cfg["side"], cfg["downs"], cfg["ch"], cfg["dim"]), cfg["codes"], cfg["dim"])
    p = Decoder(cfg["downs"], cfg["ch"], cfg["dim"])
    prior = PixelCNNCategorical(cfg["codes"], grid, grid, hidden_channels=64, n_layers=5, kernel_size=5)
    loss = (-Expectation(q, LogProb(p)) + VQCommitment(q, 0.25)).mean()
    prior_loss = -Expectation(q, LogProb(prior)).mean()
    print(f"model: {p} {prior}, {q}\nloss : {loss}\nprior: {prior_loss}")
    start = time.process_time()
    fit(Model(loss, distributions=[q, p], optimizer_params={"lr": 1e-3}), {"x": x_train}, epochs=cfg["epochs"],
        batch_size=100, seed=seed, quiet=True)
    fit(Model(prior_loss, distributions=[prior], optimizer_params={"lr": 1e-3}), {"x": x_train},
        epochs=cfg["prior_epochs"], batch_size=100, seed=seed, quiet=True)
    seconds = time.process_time() - start
    nats = bound_nats(q, p, prior, x_test)
    with torch.no_grad():
        used = q.sample({"x": x_test})["k"].argmax(-1).unique().numel()
    base = bernoulli_baseline(x_train, x_test)
    dim = x_train.shape[1]
    return {"test_nll_bound": nats.mean().item(), "bits_per_dim": nats.mean().item() / (dim * math.log(2)),
            "codes_used": float(used), "baseline_ll": base, "train_cpu_seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="digits, a short run (CI)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--epochs", type=non_negative_int, help="epochs of stage 1 (encoder, codebook, decoder)")
    parser.add_argument("--prior-epochs", type=non_negative_int, help="epochs of stage 2 (the PixelCNN prior)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report(run(smoke=args.smoke, seed=args.seed, epochs=args.epochs, prior_epochs=args.prior_epochs))
