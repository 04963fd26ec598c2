r"""Energy-based model trained by contrastive divergence with SGLD (Du & Mordatch 2019, arXiv:1903.08689).

.. math::
    p_\theta(x) = \frac{e^{-E_\theta(x)}}{Z_\theta},\qquad
    \mathcal L = \mathbb E_{p_{data}}[E_\theta(x^+)] - \mathbb E_{q_{SGLD}}[E_\theta(x^-)]
        + \alpha\,\big(\mathbb E[E_\theta(x^+)^2] + \mathbb E[E_\theta(x^-)^2]\big)

(`ContrastiveDivergence`, written with :math:`\log p_\theta = -E_\theta`). The negatives
:math:`x^-` come from short SGLD chains :math:`x \leftarrow x - \frac\lambda2\nabla_x E_\theta(x) + \sigma z`
started from a persistent replay buffer (5% restarted from uniform noise), clamped to the pixel
range; the energy is an MLP.

Metrics: the AUC with which the energy ranks held-out images above uniform-noise images and above
pixel-shuffled images (same grey-level histogram, no structure); sample quality of the replay
buffer by a classifier two-sample test (C2ST) against held-out images, rounded to the data's grey
levels (0.5: indistinguishable; a logistic regression and, in full runs, an MLP), with the initial
buffer and a second real sample as references.

Run: ``python examples/ebm.py`` (Fashion-MNIST) or ``--smoke`` (scikit-learn digits).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from scipy import stats
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402
from _common import GREY_LEVELS, c2st, images  # noqa: E402

from kizuna.distributions import EnergyDistribution  # noqa: E402
from kizuna.losses import ContrastiveDivergence  # noqa: E402
from kizuna.models import Model  # noqa: E402
from kizuna.samplers import SGLD  # noqa: E402

SMOKE = {"dataset": "digits", "hidden": 256, "steps": 200, "batch": 64, "lr": 1e-3, "sgld_steps": 15,
         "step_size": 1.0, "noise": 0.01, "alpha": 0.1, "buffer": 2000, "n_eval": 300, "classifiers": ("logistic",)}
FULL = {"dataset": "fashion", "hidden": 512, "steps": 1500, "batch": 64, "lr": 2e-4, "sgld_steps": 20,
        "step_size": 1.0, "noise": 0.01, "alpha": 0.1, "buffer": 10000, "n_eval": 2000,
        "classifiers": ("logistic", "mlp")}


class Energy(nn.Module):
    """:math:`E_\\theta(x)`: an MLP with SiLU activations, one value per image."""

    def __init__(self, x_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def auc(p: EnergyDistribution, positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(log p(x+) > log p(x-)): the Mann-Whitney AUC of the unnormalised log-density."""
    with torch.no_grad():
        a, b = p.get_log_prob({"x": positive}).numpy(), p.get_log_prob({"x": negative}).numpy()
    return float(stats.mannwhitneyu(a, b).statistic / (len(a) * len(b)))


def run(smoke: bool = False, seed: int = 0, dataset: str | None = None) -> dict[str, float]:
    """Train the EBM; return the energy's AUCs and the C2ST accuracies of the replay buffer."""
    cfg = dict(SMOKE if smoke else FULL)
    cfg["dataset"] = dataset or cfg["dataset"]
    torch.manual_seed(seed)
    x_train, x_test = images(cfg["dataset"], seed)
    x_dim, grey = x_train.shape[1], GREY_LEVELS[cfg["dataset"]]
    p = EnergyDistribution(Energy(x_dim, cfg["hidden"]), var=["x"])
    sampler = SGLD(p, [x_dim], buffer_size=cfg["buffer"], reinit=0.05, n_steps=cfg["sgld_steps"],
                   step_size=cfg["step_size"], noise_scale=cfg["noise"], low=0.0, high=1.0)
    loss = ContrastiveDivergence(p, sampler, alpha=cfg["alpha"])
    print(f"model: {p}\nloss : {loss}")
    model = Model(loss, distributions=[p], optimizer_params={"lr": cfg["lr"], "betas": (0.0, 0.999)})
    n_eval = min(cfg["n_eval"], len(x_test))
    real = x_test[:n_eval]
    before = c2st(real, sampler.buffer[:n_eval], grey, seed, cfg["classifiers"])
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(1, cfg["steps"] + 1):
        value = model.train({"x": x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)]})
        if not smoke and step % 500 == 0:
            print(f"step {step}: loss {value:.4f}", flush=True)
    seconds = time.perf_counter() - start
    buffer = sampler.buffer[torch.randperm(len(sampler.buffer), generator=g)[:n_eval]]
    after = c2st(real, buffer, grey, seed, cfg["classifiers"])
    reference = c2st(real, x_train[torch.randperm(len(x_train), generator=g)[:n_eval]], grey, seed, cfg["classifiers"])
    shuffled = torch.stack([row[torch.randperm(x_dim, generator=g)] for row in x_test])
    out = {"auc_vs_uniform": auc(p, x_test, torch.rand(len(x_test), x_dim, generator=g)),
           "auc_vs_shuffled": auc(p, x_test, shuffled)}
    out.update({f"c2st_{k}": v for k, v in after.items()})
    out.update({f"c2st_{k}_initial": v for k, v in before.items()})
    out.update({f"c2st_{k}_real": v for k, v in reference.items()})
    return {**out, "final_loss": value, "train_seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run on scikit-learn digits")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--dataset", choices=["digits", "fashion"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for key, value in run(smoke=args.smoke, seed=args.seed, dataset=args.dataset).items():
        print(f"{key}: {value:.4f}")
