"""DDPM, kizuna vs hand-written PyTorch: same ε-network, schedule, data, batches, steps and seeds.

kizuna trains ``simple_diffusion_loss(reverse).mean()`` with `Model.train`; the reference is a
hand-written :math:`L_\\mathrm{simple}` step (uniform ``t``, Gaussian ε, squared error summed over
pixels, mean over the batch). Both start from the same weights and batches; Adam with cosine decay
(the smoke configuration of `examples/diffusion.py`). One evaluation code for both trained networks:
the variational bound summed over every ``t`` (`diffusion_bound(p, exact_steps=True)`, tested
against closed forms) in bits/dim on the first test images, and the C2ST of 50-step DDIM samples.

    python bench/parity_diffusion.py            # 3 seeds
    python bench/parity_diffusion.py --quick    # seconds
    python bench/parity_diffusion.py --net unet # the same with the example's U-Net (``--net unet``)
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch
from _parity import (
    add_args,
    agree,
    quality_over_seeds,
    reference_adam,
    report_speed,
    report_split,
    start,
    train_timed,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from _common import GREY_LEVELS as LEVELS  # noqa: E402
from diffusion import eps_net  # noqa: E402

from kizuna.datasets import load_digits, split  # noqa: E402
from kizuna.distributions import DDPM, DiffusionDecoder, DiffusionReverse, DiffusionSchedule  # noqa: E402
from kizuna.losses import diffusion_bound, simple_diffusion_loss  # noqa: E402
from kizuna.metrics import classifier_two_sample_test  # noqa: E402
from kizuna.models import Model  # noqa: E402
from kizuna.samplers import ddim  # noqa: E402

CFG = {"hidden": 256, "steps": 800, "batch": 128, "lr": 2e-3, "n_exact": 64, "n_eval": 150, "T": 1000}
QUICK = {"hidden": 32, "steps": 20, "batch": 32, "lr": 2e-3, "n_exact": 4, "n_eval": 30, "T": 50}


def new_net(args: argparse.Namespace, cfg: dict, x_dim: int) -> torch.nn.Module:
    """The noise network of ``--net``: the example's MLP (its ``hidden`` from the configuration) or U-Net."""
    return eps_net(args.net, "digits", x_dim, cfg["hidden"])


def model_of(net: torch.nn.Module, T: int, x_dim: int = 64) -> DDPM:
    reverse = DiffusionReverse(net, DiffusionSchedule.linear(T))
    return DDPM(reverse, [x_dim], decoder=DiffusionDecoder(reverse, bins=LEVELS["digits"]))


def linear_alpha_bar(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """abar_0..abar_T (abar_0 = 1) of Ho et al.'s linear schedule, in float64: 1 - abar of float32 values cancels
    (1.7e-4 relative at t = 1)."""
    betas = torch.linspace(beta_1, beta_T, T, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def reference_loss(net: torch.nn.Module, alpha_bar: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Hand-written L_simple: t ~ U{1..T}, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, ||eps - eps_net||^2; the
    coefficients in float64 (``alpha_bar``: `linear_alpha_bar`), then cast to the data's dtype."""
    t = torch.randint(1, len(alpha_bar), (x0.shape[0],))
    ab = alpha_bar[t][:, None]
    eps = torch.randn_like(x0)
    signal, noise = ab.sqrt().to(x0.dtype), (1 - ab).sqrt().to(x0.dtype)
    return (eps - net(signal * x0 + noise * eps, t)).pow(2).sum(1).mean()


def evaluate(net: torch.nn.Module, x_test: torch.Tensor, cfg: dict, seed: int) -> dict[str, float]:
    """The same code for both networks: the exact-sum bound (bits/dim) and the C2ST of DDIM samples."""
    p = model_of(net, cfg["T"])
    test = x_test[:cfg["n_exact"]] * 2 - 1
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        bound = diffusion_bound(p, exact_steps=True).eval({"x_0": test})
        samples = (ddim(p.path(), cfg["n_eval"], 50).clamp(-1, 1) + 1) / 2
    levels = LEVELS["digits"] - 1
    samples = (samples * levels).round() / levels
    c2st = classifier_two_sample_test(x_test[:cfg["n_eval"]], samples, seed=seed).accuracy
    return {"test bits/dim (all t)": (bound.mean() / (test.shape[1] * math.log(2))).item(),
            "C2ST (DDIM, 50 steps)": c2st}


def one_seed(args: argparse.Namespace, seed: int, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor
             ) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    net_k = new_net(args, cfg, x_train.shape[1])
    net_r = copy.deepcopy(net_k)
    p = model_of(net_k, cfg["T"])
    model = Model(simple_diffusion_loss(p.reverse).mean(), distributions=[p.reverse],
                  optimizer_params={"lr": cfg["lr"]})
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(model.optimizer, cfg["steps"])
    opt = reference_adam(net_r.parameters(), cfg["lr"])
    decay_r = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
    alpha_bar = linear_alpha_bar(cfg["T"])
    g = torch.Generator().manual_seed(seed)
    batches = [x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)] * 2 - 1
               for _ in range(cfg["steps"])]
    it_k, it_r = iter(batches), iter(batches)

    def k_step() -> None:
        model.train({"x_0": next(it_k)})
        decay.step()

    def r_step() -> None:
        opt.zero_grad()
        reference_loss(net_r, alpha_bar, next(it_r)).backward()
        opt.step()
        decay_r.step()

    order = [("kizuna", k_step), ("reference", r_step)]
    seconds = {name: train_timed(cfg["steps"], step) for name, step in (order if seed % 2 == 0 else order[::-1])}
    return {name: {**evaluate(net, x_test, cfg, seed), "train seconds": seconds[name]}
            for name, net in (("kizuna", net_k), ("reference", net_r))}


def speed(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor) -> None:
    torch.manual_seed(0)
    net_k = new_net(args, cfg, x_train.shape[1])
    net_r = copy.deepcopy(net_k)
    p = model_of(net_k, cfg["T"])
    model = Model(simple_diffusion_loss(p.reverse).mean(), distributions=[p.reverse],
                  optimizer_params={"lr": cfg["lr"]})
    opt = reference_adam(net_r.parameters(), cfg["lr"])
    alpha_bar = linear_alpha_bar(cfg["T"])
    x0 = x_train[:cfg["batch"]] * 2 - 1
    agree(lambda: model.loss_cls.eval({"x_0": x0}), lambda: reference_loss(net_r, alpha_bar, x0), net_k.parameters(),
          net_r.parameters())

    def r_step() -> None:
        opt.zero_grad()
        reference_loss(net_r, alpha_bar, x0).backward()
        opt.step()

    k_step = lambda: model.train({"x_0": x0})  # noqa: E731
    report_speed(args, k_step, r_step)
    if args.split:
        report_split(args, model, {"x_0": x0}, k_step, r_step, lambda: reference_loss(net_r, alpha_bar, x0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    parser.add_argument("--net", choices=["mlp", "unet"], default="mlp",
                        help="the noise network: examples/diffusion.py's MLP or its U-Net")
    args = parser.parse_args()
    start(args, f"DDPM (L_simple, {args.net} noise network) on digits: kizuna vs hand-written PyTorch")
    cfg = QUICK if args.quick else CFG
    x, y = load_digits()
    x_train, _, x_test, _ = split(x, y, 0.2, seed=0)
    quality_over_seeds(args, lambda seed: one_seed(args, seed, cfg, x_train, x_test))
    speed(args, cfg, x_train)


if __name__ == "__main__":
    main()
