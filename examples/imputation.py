r"""Imputation with a VAE: complete images with missing pixels, compared with mean imputation.

A Bernoulli VAE :math:`p(x|z)p(z)` with encoder :math:`q(z|x)` is trained on complete binarised
images. Test images then lose pixels under two masks, *random* (each pixel missing with
probability 1/2) and *block* (the lower half missing), and the missing pixels are predicted by

* ``importance``: the posterior mean :math:`\mathbb E[x_{mis}|x_{obs}]` by importance resampling
  (`kizuna.inference.impute_importance`, weights :math:`p(x_{obs}|z)p(z)/r(z)` under the defensive proposal
  :math:`r(z) = 0.8\,q(z|\tilde x) + 0.2\,p(z)`, its default);
* ``gibbs``: pseudo-Gibbs sampling (`kizuna.inference.impute_gibbs`, Rezende et al. 2014,
  arXiv:1401.4082);
* ``mean``: the baseline, each pixel's mean over the training images.

Both samplers start from the mean-imputed image. Reported on the missing pixels only: the
mean squared error of the predicted probability (the Brier score) and the accuracy of
thresholding it at 1/2.

Run: ``python examples/imputation.py`` (MNIST, 4,000 train / 1,000 test) or ``--smoke`` (digits).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _multimodal as shared  # noqa: E402
from _args import seed_arg  # noqa: E402

from kizuna.datasets import load_digits, load_mnist, split  # noqa: E402
from kizuna.inference import impute_gibbs, impute_importance  # noqa: E402

Tensor = torch.Tensor
SMOKE = {"dataset": "digits", "z_dim": 8, "hidden": 128, "epochs": 30, "batch_size": 64, "lr": 3e-3, "k": 200,
         "n_test": 200, "gibbs_iter": 20}
FULL = {"dataset": "mnist", "z_dim": 16, "hidden": 400, "epochs": 50, "batch_size": 100, "lr": 1e-3, "k": 1000,
        "n_test": 1000, "gibbs_iter": 50}


def masks(x: Tensor, seed: int) -> dict[str, Tensor]:
    """``random``: each pixel observed with probability 1/2; ``block``: the upper half observed."""
    side = math.isqrt(x.shape[1])
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(x.shape[1]) // side
    return {"random": torch.rand(x.shape, generator=g) < 0.5, "block": (rows < side // 2).expand(x.shape)}


def errors(predicted: Tensor, truth: Tensor, mask: Tensor) -> tuple[float, float]:
    """Brier score and accuracy on the missing entries (mask False)."""
    p, t = predicted[~mask], truth[~mask]
    return ((p - t) ** 2).mean().item(), ((p > 0.5).float() == t).float().mean().item()


def run(smoke: bool = False, seed: int = 0) -> dict[str, float]:
    """Train the VAE, impute under both masks, and return the errors of each method."""
    cfg = SMOKE if smoke else FULL
    x, y = (load_digits if cfg["dataset"] == "digits" else load_mnist)(binarize=True)
    x_tr, _, x_te, _ = split(x, y, test_fraction=0.2, seed=seed)
    x_te = x_te[: cfg["n_test"]]
    torch.manual_seed(seed)
    model, q, p_joint = shared.image_vae(x.shape[1], cfg["z_dim"], cfg["hidden"], cfg["lr"])
    shared.fit(model, {"x": x_tr}, cfg["epochs"], cfg["batch_size"], seed)
    pixel_mean = x_tr.mean(0)
    metrics: dict[str, float] = {}
    for name, mask in masks(x_te, seed).items():
        predictions = {
            "mean": torch.where(mask, x_te, pixel_mean),
            "gibbs": impute_gibbs(p_joint, q, {"x": x_te}, mask, n_iter=cfg["gibbs_iter"], init=pixel_mean).mean,
            "importance": impute_importance(p_joint, q, {"x": x_te}, mask, k=cfg["k"], init=pixel_mean).mean,
        }
        for method, predicted in predictions.items():
            brier, accuracy = errors(predicted, x_te, mask)
            metrics[f"{name}_{method}_mse"] = brier
            metrics[f"{name}_{method}_accuracy"] = accuracy
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="digits, a few seconds")
    parser.add_argument("--seed", type=seed_arg, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shared.report(run(smoke=args.smoke, seed=args.seed))
