r"""MMVAE (Shi et al. 2019, arXiv:1911.03393): a mixture-of-experts posterior, sampled per expert.

.. math::
    p(x, y, z) = p(x|z)\,p(y|z)\,p(z), \qquad
    q(z|x, y) = \tfrac12\, q(z|x) + \tfrac12\, q(z|y)

The objective is the paper's *stratified ELBO* (its "ELBO" variant, one draw per expert; the
paper's headline runs use the stratified IWAE with DReG gradients instead):

.. math::
    \mathcal L = -\operatorname{mean}\ \frac1M \sum_{m=1}^M
        \mathbb E_{z \sim q(z|x_m)}\Big[\log p(x, y, z) - \log q(z|x, y)\Big]

Each term draws :math:`z` from one expert (reparameterised) and scores it under the whole
mixture (`MixtureOfNormal`), so every expert must explain all modalities: a draw from the
image expert is decoded into the label too, which is what makes cross generation work.
:math:`\lambda_y` up-weights the label's log-likelihood inside :math:`\log p(x, y, z)`, as in `mvae.py`.

Metrics (`_multimodal.evaluate`): coherence image→label and label→image (a logistic regression
trained on real images judges generated ones), latent agreement, and the test
:math:`\log p(x, y)` (IWAE with the mixture as proposal).

Run: ``python examples/mmvae.py`` (MNIST) or ``--smoke`` (digits).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _multimodal as shared  # noqa: E402
from _args import seed_arg  # noqa: E402

from kizuna.distributions import MixtureOfNormal  # noqa: E402
from kizuna.losses import Expectation as E  # noqa: E402
from kizuna.losses import LogProb  # noqa: E402
from kizuna.models import Model  # noqa: E402

SMOKE = {"z_dim": 8, "hidden": 128, "epochs": 20, "batch_size": 64, "k": 50, "label_weight": 1.0, "lr": 3e-3}
FULL = {"z_dim": 16, "hidden": 400, "epochs": 100, "batch_size": 100, "k": 1000, "label_weight": 1.0, "lr": 1e-3}


def build(spec: shared.Spec, z_dim: int, hidden: int, weights: Mapping[str, float] | None = None,
          lr: float = 1e-3) -> shared.Multimodal:
    """The MMVAE for the modalities of ``spec`` with the stratified ELBO."""
    names, weights = list(spec), dict(weights or {})
    experts = [shared.Encoder(spec, [m], z_dim, hidden, name="q") for m in names]
    q = MixtureOfNormal(experts, name="q")
    decoders = {m: shared.decoder(m, *spec[m], z_dim, hidden) for m in names}
    z_prior = shared.prior(z_dim)
    log_joint = shared.total([weights.get(m, 1.0) * LogProb(decoders[m]) for m in names]) + LogProb(z_prior)
    loss = -(shared.total([E(q_m, log_joint - LogProb(q)) for q_m in experts]) / float(len(names))).mean()
    model = Model(loss, distributions=[*experts, *decoders.values()], optimizer_params={"lr": lr})
    return shared.Multimodal(model, q, decoders, z_prior, q)


def run(smoke: bool = False, seed: int = 0) -> dict[str, float]:
    """Train on image + label and return coherence, latent agreement and log-likelihood."""
    cfg = SMOKE if smoke else FULL
    torch.manual_seed(seed)
    train, test, labels_train, labels_test = shared.image_label_data(smoke, seed)
    spec = {"x": (train["x"].shape[1], "bernoulli"), "y": (10, "categorical")}
    mm = build(spec, cfg["z_dim"], cfg["hidden"], {"y": cfg["label_weight"]}, cfg["lr"])
    seconds = shared.fit(mm.model, train, cfg["epochs"], cfg["batch_size"], seed)
    metrics = shared.evaluate(mm, train, test, labels_train, labels_test, cfg["k"], seed)
    return {**metrics, "train_seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="digits, a few seconds")
    parser.add_argument("--seed", type=seed_arg, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shared.report(run(smoke=args.smoke, seed=args.seed))
