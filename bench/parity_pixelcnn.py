"""PixelCNN, kizuna vs hand-written PyTorch: same masked convolutions, data, batches, steps and seeds.

The PixelCNN of `examples/autoregressive.py` on binarised digits (8 × 8, one channel; a mask-A 5 × 5
convolution to 32 channels, 3 residual mask-B 3 × 3 layers, a 1 × 1 head; Adam 3e-3, batches of 64
drawn with replacement), trained for a fixed number of steps without the example's best-validation
selection. kizuna trains `PixelCNNBernoulli` by maximum likelihood, the formula ``-LogProb(p).mean()``,
with `Model.train` (torch's fused Adam, `kizuna.models.model.build_optimizer`); the reference is a
hand-written step on a deep copy of the same network (`kizuna.nets.PixelCNN`, masks included):
``F.binary_cross_entropy_with_logits`` on the network's logits, summed over the 64 pixels, mean over
the batch, with torch's default Adam, or the fused kernel with ``--fused-reference`` (then the step
ratio is the formula layer's own cost). The loss draws nothing, so the two runs differ only by
rounding (the Adam kernels, the order of the sums).
One evaluation code for both trained networks: each put in a `PixelCNNBernoulli`, the exact test
negative log-likelihood (``get_log_prob``) in nats per image and in bits/dim on 359 test images. The
speed section times ``Model.train`` against the reference's step.

    python bench/parity_pixelcnn.py            # 3 seeds on binarised digits
    python bench/parity_pixelcnn.py --quick    # seconds
    python bench/parity_pixelcnn.py --fused-reference   # the reference with kizuna's Adam kernel
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
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from _common import binary_images  # noqa: E402

from kizuna.distributions import PixelCNNBernoulli  # noqa: E402
from kizuna.losses import LogProb  # noqa: E402
from kizuna.models import Model  # noqa: E402

CFG = {"side": 8, "hidden": 32, "layers": 3, "kernel": 5, "steps": 1000, "lr": 3e-3, "batch": 64}
QUICK = {**CFG, "hidden": 8, "layers": 1, "steps": 30}


def distribution(cfg: dict) -> PixelCNNBernoulli:
    return PixelCNNBernoulli(cfg["side"], cfg["side"], hidden_channels=cfg["hidden"], n_layers=cfg["layers"],
                             kernel_size=cfg["kernel"])


def reference_loss(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hand-written -log p(x): every pixel's logit from one pass of the masked network."""
    return F.binary_cross_entropy_with_logits(net(x), x, reduction="none").flatten(1).sum(1).mean()


def evaluate(net: nn.Module, x_test: torch.Tensor, cfg: dict) -> dict[str, float]:
    """The same code for both trained networks: the exact test NLL of a `PixelCNNBernoulli` holding ``net``."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        p = distribution(cfg)  # a fresh wrapper (its own network is replaced below)
        p.net = net
        nll = -p.get_log_prob({"x": x_test}).mean().item()
    d = x_test[0].numel()
    return {"test NLL (nats/image)": nll, "test bits/dim": nll / (d * math.log(2))}


def one_seed(seed: int, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    p = distribution(cfg)
    net_r = copy.deepcopy(p.net)
    model = Model(-LogProb(p).mean(), distributions=[p], optimizer_params={"lr": cfg["lr"]})
    opt_r = reference_adam(net_r.parameters(), cfg["lr"])
    g = torch.Generator().manual_seed(seed)
    batches = [x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)] for _ in range(cfg["steps"])]
    it_k, it_r = iter(batches), iter(batches)

    def k_step() -> None:
        model.train({"x": next(it_k)})

    def r_step() -> None:
        opt_r.zero_grad()
        reference_loss(net_r, next(it_r)).backward()
        opt_r.step()

    order = [("kizuna", k_step), ("reference", r_step)]
    seconds = {name: train_timed(cfg["steps"], step) for name, step in (order if seed % 2 == 0 else order[::-1])}
    gap = max((a - b).abs().max().item() for a, b in zip(p.net.parameters(), net_r.parameters()))
    print(f"  seed {seed}: largest difference of the trained weights {gap:.3g}")
    return {name: {**evaluate(net, x_test, cfg), "train seconds": seconds[name]}
            for name, net in (("kizuna", p.net), ("reference", net_r))}


def speed(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor) -> None:
    torch.manual_seed(0)
    p = distribution(cfg)
    net_r = copy.deepcopy(p.net)
    model = Model(-LogProb(p).mean(), distributions=[p], optimizer_params={"lr": cfg["lr"]})
    opt_r = reference_adam(net_r.parameters(), cfg["lr"])
    x = x_train[:cfg["batch"]]
    agree(lambda: model.loss_cls.eval({"x": x}), lambda: reference_loss(net_r, x), p.net.parameters(),
          net_r.parameters())

    def k_step() -> None:
        model.train({"x": x})

    def r_step() -> None:
        opt_r.zero_grad()
        reference_loss(net_r, x).backward()
        opt_r.step()

    report_speed(args, k_step, r_step)
    if args.split:
        report_split(args, model, {"x": x}, k_step, r_step, lambda: reference_loss(net_r, x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the configuration's)")
    args = parser.parse_args()
    start(args, "PixelCNN (Bernoulli) on binarised digits: kizuna vs hand-written PyTorch")
    cfg = dict(QUICK if args.quick else CFG)
    cfg["steps"] = args.steps or cfg["steps"]
    print(f"  configuration: {cfg}")
    x_train, _, x_test, _ = binary_images("digits", seed=0, n_test=360)
    shape = (1, cfg["side"], cfg["side"])
    quality_over_seeds(args, lambda seed: one_seed(seed, cfg, x_train.reshape(-1, *shape),
                                                   x_test.reshape(-1, *shape)))
    speed(args, cfg, x_train.reshape(-1, *shape))


if __name__ == "__main__":
    main()
