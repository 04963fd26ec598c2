r"""Generative adversarial networks (Goodfellow et al. 2014, arXiv:1406.2661), written as formulas.

.. math::
    p(x) = \int p(x|z)\,p(z)\,dz,\qquad p(x|z) = \delta(x - G(z)),\qquad p(z) = \mathcal N(0, I)

By default a WGAN-GP (Gulrajani et al. 2017, arXiv:1704.00028): a critic :math:`f(t|x)` (a
`Deterministic`) and

.. math::
    \min_G \max_f\ \mathbb E_{p_{data}(x)}[f(x)] - \mathbb E_{p(x)}[f(x)]
        - 10\,\mathbb E_{\hat x}[(\|\nabla f(\hat x)\|_2 - 1)^2],

five critic steps per generator step; with ``--loss js`` the original GAN with a Bernoulli
discriminator :math:`d(t|x)` and the non-saturating generator loss. The `GAN` preset alternates
steps on ``loss.d_loss()`` and on ``loss``.

Metric: sample quality by a classifier two-sample test (C2ST, Lopez-Paz & Oquab 2017,
arXiv:1610.06545): a logistic regression and (full runs) an MLP are trained to tell held-out real
images from generated ones; their held-out accuracy is reported (0.5: indistinguishable, 1.0: always told
apart), with the untrained generator and a second real sample as references. Generated images
are rounded to the data's grey levels first: real images are quantised, and a classifier would
otherwise separate them by the exact zeros of the border pixels alone.

Run: ``python examples/gan.py`` (Fashion-MNIST) or ``--smoke`` (scikit-learn digits).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402
from _common import GREY_LEVELS, c2st, images  # noqa: E402

from kizuna.distributions import Bernoulli, Deterministic, Normal  # noqa: E402
from kizuna.losses import AdversarialWassersteinDistance  # noqa: E402
from kizuna.models import GAN  # noqa: E402

SMOKE = {"dataset": "digits", "z_dim": 16, "hidden": 128, "steps": 150, "batch": 64, "lr": 1e-3, "n_eval": 350,
         "classifiers": ("logistic",)}
FULL = {"dataset": "fashion", "z_dim": 64, "hidden": 512, "steps": 4000, "batch": 64, "lr": 2e-4, "n_eval": 5000,
        "classifiers": ("logistic", "mlp")}


class Generator(Deterministic):
    """:math:`p(x|z) = \\delta(x - G(z))` with pixels in (0, 1)."""

    def __init__(self, z_dim: int, hidden: int, x_dim: int) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, x_dim), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.net(z)}


def mlp(x_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(x_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, 1))


class Critic(Deterministic):
    """The WGAN critic :math:`f(x)`, a real number per image."""

    def __init__(self, x_dim: int, hidden: int) -> None:
        super().__init__(var=["t"], cond_var=["x"], name="f")
        self.net = mlp(x_dim, hidden)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"t": self.net(x)}


class Discriminator(Bernoulli):
    """:math:`d(t|x)`: the probability that ``x`` is real."""

    def __init__(self, x_dim: int, hidden: int) -> None:
        super().__init__(var=["t"], cond_var=["x"], name="d")
        self.net = mlp(x_dim, hidden)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def build(loss: str, p: Any, x_dim: int, hidden: int, lr: float) -> GAN:
    """The `GAN` preset: WGAN-GP (``"wgan-gp"``) or the original non-saturating GAN (``"js"``)."""
    if loss == "wgan-gp":
        adam = {"lr": lr, "betas": (0.5, 0.9)}
        return GAN(p, Critic(x_dim, hidden), adversarial=AdversarialWassersteinDistance, d_steps=5,
                   optimizer_params=adam, d_optimizer_params=adam)
    if loss == "js":
        adam = {"lr": lr, "betas": (0.5, 0.999)}
        return GAN(p, Discriminator(x_dim, hidden), optimizer_params=adam, d_optimizer_params=adam)
    raise ValueError(f"unknown loss {loss!r}; choose 'wgan-gp' or 'js'")


def run(smoke: bool = False, seed: int = 0, dataset: str | None = None, loss: str = "wgan-gp") -> dict[str, float]:
    """Train the GAN and return the C2ST accuracies of its samples (and of the references)."""
    cfg = dict(SMOKE if smoke else FULL)
    cfg["dataset"] = dataset or cfg["dataset"]
    torch.manual_seed(seed)
    x_train, x_test = images(cfg["dataset"], seed)
    n_eval, x_dim = min(cfg["n_eval"], len(x_test)), x_train.shape[1]
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[cfg["z_dim"]], name="p_prior")
    p = (Generator(cfg["z_dim"], cfg["hidden"], x_dim) * prior).marginalize_var("z")
    model = build(loss, p, x_dim, cfg["hidden"], cfg["lr"])
    print(f"generator    : {p}\ngenerator loss: {model.loss_cls}\ndiscriminator loss: {model.d_model.loss_cls}")

    real, levels, kinds = x_test[:n_eval], GREY_LEVELS[cfg["dataset"]], cfg["classifiers"]
    with torch.no_grad():
        before = c2st(real, p.sample(batch_n=n_eval)["x"], levels, seed, kinds)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(1, cfg["steps"] + 1):
        batch = x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)]
        g_loss, d_loss = model.train({"x": batch})
        if not smoke and step % 500 == 0:
            print(f"step {step}: g_loss {g_loss:.3f}  d_loss {d_loss:.3f}", flush=True)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        after = c2st(real, p.sample(batch_n=n_eval)["x"], levels, seed, kinds)
    reference = c2st(real, x_train[torch.randperm(len(x_train), generator=g)[:n_eval]], levels, seed, kinds)
    out = {f"c2st_{k}": v for k, v in after.items()}
    out.update({f"c2st_{k}_untrained": v for k, v in before.items()})
    out.update({f"c2st_{k}_real": v for k, v in reference.items()})
    return {**out, "g_loss": g_loss, "d_loss": d_loss, "train_seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run on scikit-learn digits")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--dataset", choices=["digits", "fashion"], default=None)
    parser.add_argument("--loss", choices=["wgan-gp", "js"], default="wgan-gp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for key, value in run(smoke=args.smoke, seed=args.seed, dataset=args.dataset, loss=args.loss).items():
        print(f"{key}: {value:.4f}")
