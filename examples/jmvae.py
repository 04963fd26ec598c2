r"""JMVAE-kl (Suzuki et al. 2016, arXiv:1611.01891): a joint encoder plus one encoder per modality.

.. math::
    p(x, y, z) = p(x|z)\,p(y|z)\,p(z)

    \mathcal L = -\operatorname{mean}\Big(\mathbb E_{q(z|x,y)}[\log p(x|z) + \lambda_y \log p(y|z)]
        - D_{KL}[q(z|x,y)\,\|\,p(z)]
        - \alpha \big(D_{KL}[q(z|x,y)\,\|\,q(z|x)] + D_{KL}[q(z|x,y)\,\|\,q(z|y)]\big)\Big)

The first two terms are the joint ELBO; the :math:`\alpha`-weighted KL terms pull each
unimodal encoder :math:`q(z|x)`, :math:`q(z|y)` toward the joint one, so that a missing
modality can be inferred and generated from the other (the paper's JMVAE-kl). :math:`\alpha`
is a hyperparameter; :math:`\lambda_y` (1 in the paper) up-weights the label, as in `mvae.py`.

Metrics (`_multimodal.evaluate`): coherence image→label and label→image (a logistic regression
trained on real images judges generated ones), latent agreement, and the test
:math:`\log p(x, y)` (IWAE with :math:`q(z|x,y)` as proposal).

Run: ``python examples/jmvae.py`` (MNIST) or ``--smoke`` (digits).
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

from kizuna.losses import Expectation as E  # noqa: E402
from kizuna.losses import KullbackLeibler, LogProb  # noqa: E402
from kizuna.models import Model  # noqa: E402

SMOKE = {"z_dim": 8, "hidden": 128, "epochs": 20, "batch_size": 64, "k": 50, "alpha": 1.0, "label_weight": 1.0,
         "lr": 3e-3}
FULL = {"z_dim": 16, "hidden": 400, "epochs": 100, "batch_size": 100, "k": 1000, "alpha": 1.0, "label_weight": 1.0,
        "lr": 1e-3}


def build(spec: shared.Spec, z_dim: int, hidden: int, alpha: float = 1.0, weights: Mapping[str, float] | None = None,
          lr: float = 1e-3) -> shared.Multimodal:
    """The JMVAE-kl for the modalities of ``spec``: joint encoder, unimodal encoders, decoders, loss."""
    names, weights = list(spec), dict(weights or {})
    q = shared.Encoder(spec, names, z_dim, hidden, name="q")
    unimodal = [shared.Encoder(spec, [m], z_dim, hidden, name="q") for m in names]
    decoders = {m: shared.decoder(m, *spec[m], z_dim, hidden) for m in names}
    z_prior = shared.prior(z_dim)
    recon = shared.total([weights.get(m, 1.0) * LogProb(decoders[m]) for m in names])
    pull = shared.total([KullbackLeibler(q, q_m) for q_m in unimodal])
    loss = (KullbackLeibler(q, z_prior) - E(q, recon) + alpha * pull).mean()
    model = Model(loss, distributions=[q, *unimodal, *decoders.values()], optimizer_params={"lr": lr})
    return shared.Multimodal(model, [q, *unimodal], decoders, z_prior, q)


def run(smoke: bool = False, seed: int = 0) -> dict[str, float]:
    """Train on image + label and return coherence, latent agreement and log-likelihood."""
    cfg = SMOKE if smoke else FULL
    torch.manual_seed(seed)
    train, test, labels_train, labels_test = shared.image_label_data(smoke, seed)
    spec = {"x": (train["x"].shape[1], "bernoulli"), "y": (10, "categorical")}
    mm = build(spec, cfg["z_dim"], cfg["hidden"], cfg["alpha"], {"y": cfg["label_weight"]}, cfg["lr"])
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
