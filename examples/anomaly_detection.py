r"""Anomaly detection with a VAE: train on the normal classes, score a held-out class by :math:`-\log p(x)`.

A Bernoulli VAE :math:`p(x|z)p(z)` with encoder :math:`q(z|x)` is trained on binarised images
of every class but one. Each test image is scored by `kizuna.inference.anomaly_score`,

.. math:: s(x) = -\log \frac1k \sum_{i=1}^k \frac{p(x, z_i)}{q(z_i|x)}, \quad z_i \sim q(z|x)

(IWAE with ``k = 100``, and the negative ELBO averaged over 10 draws for comparison), and the
ROC-AUC measures how well the score separates the held-out class (anomalies) from held-out
images of the normal classes. Baselines: the reconstruction error of a PCA fitted on the
normal training images, and :math:`-\log p(x)` under one independent Bernoulli per pixel.

Run: ``python examples/anomaly_detection.py`` (Fashion-MNIST, several held-out classes) or
``--smoke`` (scikit-learn digits, digit 0 held out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _multimodal as shared  # noqa: E402
from _args import seed_arg  # noqa: E402

from kizuna.datasets import load_digits, load_fashion_mnist, split  # noqa: E402
from kizuna.distributions import Bernoulli  # noqa: E402
from kizuna.inference import anomaly_score  # noqa: E402

Tensor = torch.Tensor
SMOKE = {"dataset": "digits", "held_out": (0,), "z_dim": 8, "hidden": 128, "epochs": 30, "batch_size": 64,
         "lr": 3e-3, "k": 100, "k_elbo": 10, "pca": 8}
FULL = {"dataset": "fashion", "held_out": (1, 5, 6, 8), "z_dim": 16, "hidden": 400, "epochs": 20, "batch_size": 128,
        "lr": 1e-3, "k": 100, "k_elbo": 10, "pca": 32}


def load(dataset: str, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Binarised ``x_train, y_train, x_test, y_test``."""
    if dataset == "digits":
        return split(*load_digits(binarize=True), test_fraction=0.3, seed=seed)
    x_tr, y_tr = load_fashion_mnist("train", binarize=True)
    x_te, y_te = load_fashion_mnist("test", binarize=True)
    return x_tr, y_tr, x_te, y_te


def pca_error(train: Tensor, test: Tensor, n: int) -> Tensor:
    """Squared reconstruction error of ``test`` under a PCA with ``n`` components fitted on ``train``."""
    from sklearn.decomposition import PCA

    pca = PCA(n, random_state=0).fit(train.numpy())
    recon = pca.inverse_transform(pca.transform(test.numpy()))
    return torch.as_tensor(((test.numpy() - recon) ** 2).sum(1))


def pixel_nll(train: Tensor, test: Tensor) -> Tensor:
    r""":math:`-\log p(x)` under one Bernoulli per pixel fitted on ``train`` (add-one smoothing)."""
    probs = (train.sum(0) + 1) / (len(train) + 2)
    return -Bernoulli(var=["x"], probs=probs).get_log_prob({"x": test})


def auc(normal: Tensor, anomalous: Tensor) -> float:
    """ROC-AUC of a score (higher = more anomalous) with the anomalies as positives."""
    from sklearn.metrics import roc_auc_score

    labels = [0] * len(normal) + [1] * len(anomalous)
    return float(roc_auc_score(labels, torch.cat([normal, anomalous]).numpy()))


def held_out_class(cfg: dict, data: tuple[Tensor, ...], c: int, seed: int) -> dict[str, float]:
    """Train on every class but ``c``; the AUC of each score on normal test images vs class ``c``."""
    x_tr, y_tr, x_te, y_te = data
    train, normal = x_tr[y_tr != c], x_te[y_te != c]
    anomalous = torch.cat([x_te[y_te == c], x_tr[y_tr == c]]) if cfg["dataset"] == "digits" else x_te[y_te == c]
    torch.manual_seed(seed)
    model, q, p_joint = shared.image_vae(train.shape[1], cfg["z_dim"], cfg["hidden"], cfg["lr"])
    shared.fit(model, {"x": train}, cfg["epochs"], cfg["batch_size"], seed)
    scores = {}
    for method, k in (("iwae", cfg["k"]), ("elbo", cfg["k_elbo"])):
        s = anomaly_score(p_joint, q, {"x": torch.cat([normal, anomalous])}, method=method, k=k)
        scores[method] = (s[: len(normal)], s[len(normal):])
    scores["pca"] = (pca_error(train, normal, cfg["pca"]), pca_error(train, anomalous, cfg["pca"]))
    scores["pixels"] = (pixel_nll(train, normal), pixel_nll(train, anomalous))
    return {f"auc_{name}_{c}": auc(*pair) for name, pair in scores.items()}


def run(smoke: bool = False, seed: int = 0, held_out: tuple[int, ...] | None = None) -> dict[str, float]:
    """ROC-AUC of the VAE scores and the baselines, per held-out class (and their mean)."""
    cfg = dict(SMOKE if smoke else FULL)
    classes = held_out if held_out is not None else cfg["held_out"]
    if any(c not in range(10) for c in classes):
        raise ValueError(f"anomaly_detection: held-out classes are 0-9, got {tuple(classes)}")
    data = load(cfg["dataset"], seed)
    metrics: dict[str, float] = {}
    for c in classes:
        metrics.update(held_out_class(cfg, data, c, seed))
    for name in ("iwae", "elbo", "pca", "pixels"):
        values = [v for k, v in metrics.items() if k.startswith(f"auc_{name}_")]
        metrics[f"auc_{name}_mean"] = sum(values) / len(values)
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="digits, a few seconds")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--held-out", type=int, nargs="+", choices=range(10), metavar="CLASS",
                        help="classes 0-9 to hold out (default: see FULL / SMOKE)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shared.report(run(smoke=args.smoke, seed=args.seed, held_out=tuple(args.held_out) if args.held_out else None))
