r"""Noise-conditional score network (Song & Ermon 2019, arXiv:1907.05600), written as its formula.

A score model :math:`s_\theta(\tilde x, i) \approx \nabla_{\tilde x}\log q_{\sigma_i}(\tilde x)` for the data
perturbed at each of ``L`` noise levels :math:`\sigma_1 > \dots > \sigma_L`, trained by denoising score
matching (Vincent 2011) with the weights :math:`\lambda(\sigma) = \sigma^2`:

.. math::
    \mathcal L = \operatorname{mean}\ \mathbb E_{u(i)}\,\mathbb E_{q(\tilde x|x,i)}\Big[\sigma_i^2\,\tfrac12
        \big\|s_\theta(\tilde x, i) - \nabla_{\tilde x}\log q(\tilde x|x,i)\big\|^2\Big],\qquad
    q(\tilde x|x,i) = \mathcal N(x, \sigma_i^2 I)

with :math:`u(i)` uniform over the levels (a one-hot `Categorical`). Samples come from annealed
Langevin dynamics from uniform noise, ending with the Tweedie denoising step. The network is an MLP
of the noisy image and the one-hot level whose output is divided by :math:`\sigma_i` (Song & Ermon
2020, arXiv:2006.09011). Levels: :math:`\sigma` geometric from 1 to 0.01 (0.03 for the digits, whose
17 grey levels are 0.0625 apart: below half a level the denoising task is rounding).

Metrics: the denoising score-matching loss on held-out images (``test_loss``; the untrained
model's for reference), and a classifier two-sample test (C2ST) between held-out images and samples rounded to the
data's grey levels: held-out accuracy of a logistic regression and (full runs) an MLP (0.5:
indistinguishable), with the untrained model and a second real sample as references.

Run: ``python examples/score.py`` (Fashion-MNIST) or ``--smoke`` (scikit-learn digits).
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
from _args import seed_arg  # noqa: E402
from _common import GREY_LEVELS, c2st, images  # noqa: E402

from kizuna.distributions import Categorical, Deterministic, Normal  # noqa: E402
from kizuna.losses import Expectation, Loss, denoising_score_matching  # noqa: E402
from kizuna.models import Model  # noqa: E402
from kizuna.samplers import annealed_langevin_dynamics  # noqa: E402

SMOKE = {"dataset": "digits", "hidden": 256, "levels": 8, "sigma_min": 0.03, "steps": 1000, "batch": 128,
         "lr": 2e-3, "langevin_steps": 20, "eps": 1e-4, "n_eval": 300, "classifiers": ("logistic",)}
FULL = {"dataset": "fashion", "hidden": 1024, "levels": 10, "sigma_min": 0.01, "steps": 8000, "batch": 128,
        "lr": 5e-4, "langevin_steps": 50, "eps": 5e-5, "n_eval": 1000, "classifiers": ("logistic", "mlp")}


class NoiseKernel(Normal):
    """:math:`q(\\tilde x|x, i) = \\mathcal N(x, \\sigma_i^2 I)`, ``i`` one-hot."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        super().__init__(var=["x_tilde"], cond_var=["x", "i"], name="q")
        self.register_buffer("sigmas", sigmas)

    def forward(self, x: torch.Tensor, i: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": x, "scale": (i @ self.sigmas)[:, None].expand_as(x)}


class ScoreNet(Deterministic):
    """:math:`s_\\theta(\\tilde x, i) = \\mathrm{MLP}(\\tilde x, i) / \\sigma_i`."""

    def __init__(self, x_dim: int, hidden: int, sigmas: torch.Tensor) -> None:
        super().__init__(var=["s"], cond_var=["x_tilde", "i"], name="s_θ")
        self.register_buffer("sigmas", sigmas)
        n = len(sigmas)
        self.net = nn.Sequential(nn.Linear(x_dim + n, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, x_dim))

    def forward(self, x_tilde: torch.Tensor, i: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"s": self.net(torch.cat([x_tilde, i], 1)) / (i @ self.sigmas)[:, None]}

    def at_level(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """The score at noise level ``level`` (an index), for the sampler."""
        one_hot = torch.zeros(len(x), len(self.sigmas), dtype=x.dtype, device=x.device)
        one_hot[:, level] = 1
        return self(x_tilde=x, i=one_hot)["s"]


def sample(score: ScoreNet, n: int, x_dim: int, cfg: dict, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(n, x_dim, generator=g, dtype=score.sigmas.dtype)  # (the model's dtype: .double() works)
    return annealed_langevin_dynamics(score.at_level, start, score.sigmas, eps=cfg["eps"],
                                      n_steps_each=cfg["langevin_steps"], denoise=True, generator=g)


def held_out(loss: Loss, x: torch.Tensor, seed: int, repeats: int = 5) -> float:
    """The loss on held-out images (levels and noise drawn with a fixed seed, ``repeats`` times)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return sum(loss.eval({"x": x}).item() for _ in range(repeats)) / repeats


def run(smoke: bool = False, seed: int = 0, dataset: str | None = None) -> dict[str, float]:
    """Train the score network; return the C2ST accuracies of annealed-Langevin samples."""
    cfg = dict(SMOKE if smoke else FULL)
    cfg["dataset"] = dataset or cfg["dataset"]
    torch.manual_seed(seed)
    x_train, x_test = images(cfg["dataset"], seed)
    x_dim, grey = x_train.shape[1], GREY_LEVELS[cfg["dataset"]]
    sigmas = torch.logspace(0, math.log10(cfg["sigma_min"]), cfg["levels"])
    levels = Categorical(var=["i"], probs=torch.full((cfg["levels"],), 1.0 / cfg["levels"]), name="u")
    noise, score = NoiseKernel(sigmas), ScoreNet(x_dim, cfg["hidden"], sigmas)
    loss = Expectation(levels, denoising_score_matching(score, noise, noise_weighting=True)).mean()
    print(f"loss: {loss}")
    model = Model(loss, distributions=[score], optimizer_params={"lr": cfg["lr"]})
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(model.optimizer, cfg["steps"])
    n_eval = min(cfg["n_eval"], len(x_test))
    real = x_test[:n_eval]
    untrained_loss = held_out(loss, x_test[:1000], seed)
    with torch.no_grad():  # the untrained reference (skipped in full runs: sampling is the costly part)
        before = c2st(real, sample(score, n_eval, x_dim, cfg, seed), grey, seed, cfg["classifiers"]) if smoke else {}
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(1, cfg["steps"] + 1):
        value = model.train({"x": x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)]})
        decay.step()
        if not smoke and step % 1000 == 0:
            print(f"step {step}: loss {value:.4f}", flush=True)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        after = c2st(real, sample(score, n_eval, x_dim, cfg, seed + 1), grey, seed, cfg["classifiers"])
    reference = c2st(real, x_train[torch.randperm(len(x_train), generator=g)[:n_eval]], grey, seed, cfg["classifiers"])
    out = {f"c2st_{k}": v for k, v in after.items()}
    out.update({f"c2st_{k}_untrained": v for k, v in before.items()})
    out.update({f"c2st_{k}_real": v for k, v in reference.items()})
    return {**out, "test_loss": held_out(loss, x_test[:1000], seed), "test_loss_untrained": untrained_loss,
            "train_seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run on scikit-learn digits")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--dataset", choices=["digits", "fashion"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for key, value in run(smoke=args.smoke, seed=args.seed, dataset=args.dataset).items():
        print(f"{key}: {value:.4f}")
