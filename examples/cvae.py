r"""Conditional VAE (Sohn et al. 2015; Kingma et al. 2014, arXiv:1406.5298) on (image, label) pairs.

.. math::
    p(x, z|y) = p(x|z,y)\,p(z),\qquad p(z) = \mathcal N(0, I)

    \mathcal L = \operatorname{mean}\Big(D_{KL}[q(z|x,y)\,\|\,p(z)] - \mathbb E_{q(z|x,y)}[\log p(x|z,y)]\Big)

Metrics: the held-out conditional log-likelihood :math:`\log p(x|y)` (importance-weighted with
``k`` draws of :math:`q(z|x,y)`), and whether the model generates the digit it is asked for:
images drawn by :math:`z \sim p(z),\ x \sim p(x|z,y{=}c)` for every class ``c`` are labelled by a
logistic-regression classifier trained on real training images; ``sample_accuracy`` is the share
that it labels ``c`` (chance: 10%). ``classifier_test_accuracy`` is that classifier on real test images.

Run: ``python examples/cvae.py`` (MNIST) or ``--smoke`` (digits).
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
    one_hot,
    report,
    standard_normal,
)

from kizuna.distributions import MLPBernoulli, MLPNormal  # noqa: E402
from kizuna.losses import Expectation as E  # noqa: E402
from kizuna.losses import KullbackLeibler, LogProb  # noqa: E402
from kizuna.metrics import bits_per_dim, log_likelihood  # noqa: E402
from kizuna.models import Model  # noqa: E402

N_CLASSES = 10
SMOKE = {"dataset": "digits", "z_dim": 8, "hidden": 128, "epochs": 60, "k": 200, "n_test": 360, "per_class": 50}
FULL = {"dataset": "mnist", "z_dim": 32, "hidden": 400, "epochs": 100, "k": 5000, "n_test": None, "per_class": 200}


def label_classifier(x_train: torch.Tensor, y_train: torch.Tensor):  # noqa: ANN201 - a scikit-learn estimator
    """Multinomial logistic regression on real images: the judge of generated ones."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=1.0).fit(x_train.numpy(), y_train.numpy())


def conditional_samples(p: MLPBernoulli, prior, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of every class: :math:`z \\sim p(z)`, then :math:`x \\sim p(x|z,y)`."""
    y = torch.arange(N_CLASSES).repeat_interleave(per_class)
    with torch.no_grad():
        z = prior.sample(batch_n=len(y))["z"]
        x = p.sample({"z": z, "y": one_hot(y, N_CLASSES)})["x"]
    return x, y


def run(smoke: bool = False, seed: int = 0, dataset: str | None = None) -> dict[str, float]:
    """Train the conditional VAE and return held-out :math:`\\log p(x|y)` and label accuracy of samples."""
    cfg = dict(SMOKE if smoke else FULL)
    if dataset is not None:
        cfg["dataset"] = dataset
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = binary_images(cfg["dataset"], seed=seed, n_test=cfg["n_test"])
    dim, h, zd = x_train.shape[1], cfg["hidden"], cfg["z_dim"]
    q = MLPNormal("z", ["x", "y"], [dim + N_CLASSES, h, h, zd], name="q")
    p = MLPBernoulli("x", ["z", "y"], [zd + N_CLASSES, h, h, dim], name="p")
    prior = standard_normal("z", zd)

    loss = (KullbackLeibler(q, prior) - E(q, LogProb(p))).mean()
    print(f"generative model: {p * prior}\ninference model : {q}\nloss            : {loss}")
    model = Model(loss, distributions=[p, q], optimizer_params={"lr": 1e-3})
    data = {"x": x_train, "y": one_hot(y_train, N_CLASSES)}
    seconds = fit(model, data, epochs=cfg["epochs"], batch_size=100, seed=seed, quiet=smoke)

    test = {"x": x_test, "y": one_hot(y_test, N_CLASSES)}
    ll = log_likelihood(p * prior, q, test, k=cfg["k"]).mean().item()
    judge = label_classifier(x_train, y_train)
    x_gen, y_gen = conditional_samples(p, prior, cfg["per_class"])
    sample_acc = float((judge.predict(x_gen.numpy()) == y_gen.numpy()).mean())
    real_acc = float((judge.predict(x_test.numpy()) == y_test.numpy()).mean())
    base = bernoulli_baseline(x_train, x_test)
    return {
        "test_ll_given_y": ll, "bits_per_dim": bits_per_dim(ll, dim), "baseline_ll": base,
        "sample_accuracy": sample_acc, "classifier_test_accuracy": real_acc,
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
