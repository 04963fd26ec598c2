"""Ladder VAE, kizuna vs hand-written PyTorch: same networks, data, batches, epochs and seeds.

kizuna trains ``LadderVAE.loss(Parameter("beta")).mean()`` (the nested closed-form bound of the formula layer, the
warm-up's weight read from each batch) with `Model.train`; the reference computes the same objective by hand from the
same modules' raw outputs (one bottom-up pass, precision-weighted top-down posterior,
``torch.distributions.kl_divergence`` of Normals, Bernoulli log-likelihood), with its own copy of the initial
weights. Both use Adam and the same KL warm-up: kizuna the optimiser its `Model` builds (torch's fused kernel), the
reference torch's default Adam as such code is usually written, or the fused kernel with
``--fused-reference`` (then the step ratio is the formula layer's own cost). The speed section times
``Model.train`` against the reference's step.
One evaluation code for both: the held-out log-likelihood by importance sampling
(`kizuna.metrics.log_likelihood`, ``k`` samples) and the ELBO.

    python bench/parity_ladder_vae.py            # 3 seeds on binarised digits
    python bench/parity_ladder_vae.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from _parity import add_args, agree, quality_over_seeds, reference_adam, report_speed, start, train_timed
from torch import distributions as D
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from _common import binary_images  # noqa: E402

from kizuna.losses import ELBO, Parameter  # noqa: E402
from kizuna.metrics import log_likelihood  # noqa: E402
from kizuna.models import LadderVAE, Model  # noqa: E402

CFG = {"z_dims": [8, 4], "hidden": [128, 64], "epochs": 60, "warmup": 10, "k": 500}
QUICK = {"z_dims": [4, 2], "hidden": [16, 8], "epochs": 2, "warmup": 1, "k": 20}


def normal(head: torch.nn.Module, features: torch.Tensor) -> D.Normal:
    """A head's Normal from the features its last hidden layer gives (``head.head``, the output layer)."""
    loc, s = head.head(features).chunk(2, -1)
    return D.Normal(loc, F.softplus(s) + 1e-4, validate_args=False)


def reference_loss(m: LadderVAE, x: torch.Tensor, beta: float) -> torch.Tensor:
    """The two-layer bound by hand: one bottom-up pass d1 = f1(x), d2 = f2(d1); q(z2|x) from d2,
    q(z1|z2,x) ∝ q̂(z1|x) p(z1|z2) with q̂ from d1; KLs in closed form."""
    d1 = m.bottom_up[0](x)
    d2 = m.bottom_up[1](d1)
    q2 = normal(m.posteriors[1], d2)
    z2 = q2.rsample()
    q1_hat, p1 = normal(m.posteriors[0].factors_[0], d1), normal(m.priors[0], m.priors[0].body(z2))
    precision = q1_hat.scale.pow(-2) + p1.scale.pow(-2)
    loc = (q1_hat.loc * q1_hat.scale.pow(-2) + p1.loc * p1.scale.pow(-2)) / precision
    q1 = D.Normal(loc, precision.rsqrt(), validate_args=False)
    z1 = q1.rsample()
    recon = -F.binary_cross_entropy_with_logits(m.decoder.net(z1), x, reduction="none").sum(1)
    kl2 = D.kl_divergence(q2, D.Normal(torch.zeros_like(q2.loc), torch.ones_like(q2.scale), validate_args=False)).sum(1)
    kl1 = D.kl_divergence(q1, p1).sum(1)
    return (beta * (kl2 + kl1) - recon).mean()


def evaluate(m: LadderVAE, x_test: torch.Tensor, cfg: dict, seed: int) -> dict[str, float]:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        elbo = ELBO(m.p, m.q).eval({"x": x_test}).mean().item()
        ll = log_likelihood(m.p, m.q, {"x": x_test}, k=cfg["k"]).mean().item()
    return {"test log p(x) (IWAE k)": ll, "test ELBO": elbo}


def one_seed(seed: int, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    m_k = LadderVAE(x_train.shape[1], cfg["z_dims"], cfg["hidden"])
    m_r = copy.deepcopy(m_k)
    # kizuna's side trains with Model.train, the KL warm-up's weight read from the batch (the loss's "beta")
    model = Model(m_k.loss(Parameter("beta")).mean(), distributions=[m_k], optimizer_params={"lr": 1e-3})
    opt_r = reference_adam(m_r.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    epochs = [torch.randperm(len(x_train), generator=g).split(100) for _ in range(cfg["epochs"])]
    beta = [min(1.0, (e + 1) / cfg["warmup"]) for e in range(cfg["epochs"])]
    plan = [(e, idx) for e in range(cfg["epochs"]) for idx in epochs[e]]
    it_k, it_r = iter(plan), iter(plan)

    def k_step() -> None:
        e, idx = next(it_k)
        model.train({"x": x_train[idx], "beta": torch.tensor(beta[e])})

    def r_step() -> None:
        e, idx = next(it_r)
        opt_r.zero_grad()
        reference_loss(m_r, x_train[idx], beta[e]).backward()
        opt_r.step()

    order = [("kizuna", k_step), ("reference", r_step)]
    seconds = {name: train_timed(len(plan), step) for name, step in (order if seed % 2 == 0 else order[::-1])}
    return {name: {**evaluate(m, x_test, cfg, seed), "train seconds": seconds[name]}
            for name, m in (("kizuna", m_k), ("reference", m_r))}


def speed(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor) -> None:
    torch.manual_seed(0)
    m_k = LadderVAE(x_train.shape[1], cfg["z_dims"], cfg["hidden"])
    m_r = copy.deepcopy(m_k)
    opt_r = reference_adam(m_r.parameters(), 1e-3)
    loss, x = m_k.loss().mean(), x_train[:100]
    agree(lambda: loss.eval({"x": x}), lambda: reference_loss(m_r, x, 1.0), m_k.parameters(), m_r.parameters())
    model = Model(loss, distributions=[m_k], optimizer_params={"lr": 1e-3})

    def k_step() -> None:
        model.train({"x": x})

    def r_step() -> None:
        opt_r.zero_grad()
        reference_loss(m_r, x, 1.0).backward()
        opt_r.step()

    report_speed(args, k_step, r_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    args = parser.parse_args()
    start(args, "Ladder VAE (2 layers) on binarised digits: kizuna vs hand-written PyTorch")
    cfg = QUICK if args.quick else CFG
    x_train, _, x_test, _ = binary_images("digits", seed=0, n_test=360)
    quality_over_seeds(args, lambda seed: one_seed(seed, cfg, x_train, x_test))
    speed(args, cfg, x_train)


if __name__ == "__main__":
    main()
