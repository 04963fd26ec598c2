r"""MVAE (Wu & Goodman 2018, arXiv:1802.05335): a product-of-experts posterior over image and label.

.. math::
    p(x, y, z) = p(x|z)\,p(y|z)\,p(z), \qquad
    q(z|x_S) \propto p(z) \prod_{m \in S} \tilde q(z|x_m)

One Gaussian expert per modality times the prior expert :math:`\mathcal N(0, I)`
(`ProductOfNormal`), so one inference network serves every subset :math:`S` of modalities.
The paper's sub-sampled objective sums the ELBO of the joint and of each single modality,

.. math::
    \mathcal L = -\operatorname{mean}\Big(\mathrm{ELBO}(x, y) + \mathrm{ELBO}(x) + \mathrm{ELBO}(y)\Big),\qquad
    \mathrm{ELBO}(x_S) = \mathbb E_{q(z|x_S)}\Big[\sum_{m\in S}\lambda_m \log p(x_m|z)\Big]
        - D_{KL}[q(z|x_S)\,\|\,p(z)]

(with two modalities these are all the subsets; with more, the paper adds the ELBOs of a few
random subsets at each step: ``random_subsets`` here, the `RandomSubsets` loss).
:math:`\lambda_m` weights a modality's log-likelihood, as the paper does, to keep a 10-way
label from being drowned by hundreds of pixels.

Metrics (`_multimodal.evaluate`): coherence image→label and label→image (a logistic regression
trained on real images judges generated ones), latent agreement, and the test
:math:`\log p(x, y)` (IWAE with the product of experts as proposal).

Run: ``python examples/mvae.py`` (MNIST) or ``--smoke`` (digits).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _multimodal as shared  # noqa: E402
from _args import seed_arg  # noqa: E402

from kizuna.distributions import ProductOfNormal  # noqa: E402
from kizuna.formula.expr import EvalContext  # noqa: E402
from kizuna.losses import Expectation as E  # noqa: E402
from kizuna.losses import KullbackLeibler, LogProb, Loss  # noqa: E402
from kizuna.models import Model  # noqa: E402

SMOKE = {"z_dim": 8, "hidden": 128, "epochs": 20, "batch_size": 64, "k": 50, "label_weight": 30.0, "lr": 3e-3}
FULL = {"z_dim": 16, "hidden": 400, "epochs": 100, "batch_size": 100, "k": 1000, "label_weight": 50.0, "lr": 1e-3}


def neg_elbo(q: ProductOfNormal, decoders: Mapping[str, object], names: Sequence[str],
             weights: Mapping[str, float], z_prior: object) -> Loss:
    r""":math:`-\mathrm{ELBO}(x_S)`: the subset's weighted reconstructions under :math:`q(z|x_S)`, and its KL."""
    recon = shared.total([weights.get(m, 1.0) * LogProb(decoders[m]) for m in names])
    return KullbackLeibler(q, z_prior) - E(q, recon)


class RandomSubsets(Loss):
    """The sum of ``n`` of ``losses``, a fresh random choice (without replacement) at every evaluation."""

    def __init__(self, losses: Sequence[Loss], n: int) -> None:
        if not 1 <= n <= len(losses):
            raise ValueError(f"RandomSubsets: n must be between 1 and {len(losses)}, got {n}")
        super().__init__([v for loss in losses for v in loss.input_var])
        self.losses, self.n = list(losses), n

    def children(self) -> list[Loss]:
        return self.losses

    def _value(self, ctx: EvalContext) -> torch.Tensor:
        chosen = torch.randperm(len(self.losses))[: self.n].tolist()
        return shared.total([ctx.value(self.losses[i]) for i in chosen])

    def _render(self, fmt: dict[str, str]) -> str:
        return f"random {self.n} of {{{', '.join(loss._render(fmt) for loss in self.losses)}}}"


def build(spec: shared.Spec, z_dim: int, hidden: int, weights: Mapping[str, float] | None = None,
          random_subsets: int = 0, lr: float = 1e-3) -> shared.Multimodal:
    """The MVAE for the modalities of ``spec``, with its sub-sampled loss.

    ``random_subsets``: with more than two modalities, how many of the other subsets (two or
    more modalities, not all) add their ELBO at each step.
    """
    names, weights = list(spec), dict(weights or {})
    experts = [shared.Encoder(spec, [m], z_dim, hidden, name="q") for m in names]
    q = ProductOfNormal(experts, name="q", features_shape=[z_dim])
    decoders = {m: shared.decoder(m, *spec[m], z_dim, hidden) for m in names}
    z_prior = shared.prior(z_dim)

    def term(subset: Sequence[str]) -> Loss:  # q(z|x_S) ∝ N(0, I) prod_{m in S} q(z|x_m), the same experts
        qs = q if list(subset) == names else ProductOfNormal([experts[names.index(m)] for m in subset], name="q")
        return neg_elbo(qs, decoders, subset, weights, z_prior)

    loss = shared.total([term(names), *[term([m]) for m in names]])
    others = [c for r in range(2, len(names)) for c in itertools.combinations(names, r)]
    if random_subsets:
        loss = loss + RandomSubsets([term(c) for c in others], random_subsets)
    loss = loss.mean()
    model = Model(loss, distributions=[*experts, *decoders.values()], optimizer_params={"lr": lr})
    return shared.Multimodal(model, q, decoders, z_prior, q)


def run(smoke: bool = False, seed: int = 0) -> dict[str, float]:
    """Train on image + label and return coherence, latent agreement and log-likelihood."""
    cfg = SMOKE if smoke else FULL
    torch.manual_seed(seed)
    train, test, labels_train, labels_test = shared.image_label_data(smoke, seed)
    spec = {"x": (train["x"].shape[1], "bernoulli"), "y": (10, "categorical")}
    mm = build(spec, cfg["z_dim"], cfg["hidden"], weights={"y": cfg["label_weight"]}, lr=cfg["lr"])
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
