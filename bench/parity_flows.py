"""MAF and neural spline flow, kizuna vs hand-written PyTorch: same flow, data, batches, steps and seeds.

The companion of `parity_realnvp.py` for the other density flows, on the same dequantised digits (17 grey
levels, `Preprocess(17)` first, 359 test images), with its seed handling, training loops, timing and
evaluation (imported from it; only the flow and its hand-written log-density differ):

* ``--flow maf``: the MAF of `examples/flows.py` (``maf(64, 4, 128)``: four `MAF` layers, MADE 64-128-128-128,
  with `Reverse` between), its smoke configuration (250 steps of 128 images, Adam 2e-3, gradient norm
  clipped at 50). The reference computes each MADE's shift and log-scale itself from the copied masked
  weights (``relu(x (W ⊙ M)ᵀ + b)`` per layer), ``z = (x - μ) e^{-α}`` and ``log|det| = -Σ α``.
* ``--flow spline``: a neural spline flow, four `RationalQuadraticCoupling` layers (checkerboard masks
  alternating, 8 bins, tail bound 4, zero-initialised MLP 64-128-128-1472 on the kept half) with a fixed
  `Shuffle` between, the same steps and optimiser. The reference evaluates the rational-quadratic spline
  itself (Durkan et al. 2019, arXiv:1906.04032, eqs. 4 and 5 with the knots of their section 3.1:
  softmax bin widths and heights with a minimum of 1e-3, softplus interior derivatives with a minimum of
  1e-3 and boundary derivatives 1, identity tails), from the coupling network's raw output.

kizuna trains ``-LogProb(p).mean()`` with `Model.train` (fused Adam); the reference a hand-written step on
a deep copy of the same layers (``clip_grad_norm_``, torch's default Adam, or the fused kernel with
``--fused-reference``). Both draw the dequantisation noise from the same seed and the same minibatches.
One evaluation code for both trained flows: test bits/dim by kizuna's ``log_prob`` (one fixed
dequantisation draw per image, plus `Preprocess.bin_log_volume`), and by the hand-written formula as a
check. Both keep their last parameters (no best-validation checkpoint).

    python bench/parity_flows.py --flow maf          # 3 seeds
    python bench/parity_flows.py --flow spline
    python bench/parity_flows.py --flow maf --quick  # seconds
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from _parity import add_args, quality_over_seeds, start
from parity_realnvp import agree_random, one_seed, reference_preprocess, speed
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from flows import LEVELS, _prior, maf  # noqa: E402  examples/flows.py

from kizuna.datasets import load_digits, split  # noqa: E402
from kizuna.distributions import InverseTransformedDistribution  # noqa: E402
from kizuna.flows import (  # noqa: E402
    MAF,
    Flow,
    FlowList,
    Permutation,
    Preprocess,
    RationalQuadraticCoupling,
    Reverse,
    Shuffle,
)

CFG = {
    "maf": {"layers": 4, "hidden": 128, "steps": 250, "batch": 128, "lr": 2e-3, "clip": 50.0},
    "spline": {"layers": 4, "hidden": 128, "bins": 8, "bound": 4.0, "steps": 250, "batch": 128, "lr": 2e-3,
               "clip": 50.0},
}
QUICK = {"layers": 2, "hidden": 32, "steps": 20}

MIN_BIN = MIN_DERIVATIVE = 1e-3  # the paper's (and nflows') defaults, kizuna's too


def spline_flow(d: int, n_layers: int, hidden: int, bins: int, bound: float) -> list[Flow]:
    """Rational-quadratic coupling (alternating checkerboard masks) + a fixed shuffle, per layer."""
    layers: list[Flow] = []
    for i in range(n_layers):
        layers += [RationalQuadraticCoupling(d, num_bins=bins, tail_bound=bound, mask_type="checkerboard",
                                             inverse_mask=bool(i % 2), hidden_features=hidden),
                   Shuffle(d, seed=i)]
    return layers


def build_maf(d: int, cfg: dict) -> InverseTransformedDistribution:
    layers = [Preprocess(levels=LEVELS), *maf(d, cfg["layers"], cfg["hidden"])]
    return InverseTransformedDistribution(_prior(d), FlowList(layers), var=["x"])


def build_spline(d: int, cfg: dict) -> InverseTransformedDistribution:
    layers = [Preprocess(levels=LEVELS), *spline_flow(d, cfg["layers"], cfg["hidden"], cfg["bins"], cfg["bound"])]
    return InverseTransformedDistribution(_prior(d), FlowList(layers), var=["x"])


def hand_spline(x: torch.Tensor, raw_w: torch.Tensor, raw_h: torch.Tensor, raw_d: torch.Tensor,
                bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The monotone rational-quadratic spline on [-bound, bound] (identity outside) and its log-slope,
    elementwise; ``raw_w``, ``raw_h`` ``(..., K)`` and ``raw_d`` ``(..., K-1)`` unconstrained."""
    k = raw_w.shape[-1]

    def knots(raw: torch.Tensor) -> torch.Tensor:  # K+1 positions from -bound to bound
        size = MIN_BIN + (1 - MIN_BIN * k) * raw.softmax(-1)
        inner = -bound + 2 * bound * size.cumsum(-1)[..., :-1]
        ends = inner.new_full((*inner.shape[:-1], 1), bound)
        return torch.cat([-ends, inner, ends], -1)

    xs, ys = knots(raw_w), knots(raw_h)
    # softplus(raw + c) + min is 1 at raw = 0: c = log(e^(1 - min) - 1); the end derivatives are 1
    inner_d = MIN_DERIVATIVE + F.softplus(raw_d + math.log(math.expm1(1 - MIN_DERIVATIVE)))
    one = inner_d.new_ones((*inner_d.shape[:-1], 1))
    deriv = torch.cat([one, inner_d, one], -1)

    inside = x.abs() <= bound
    xin = x.clamp(-bound, bound).unsqueeze(-1)
    b = torch.searchsorted(xs[..., 1:-1].contiguous(), xin, right=True)  # the bin holding x
    x0, x1 = xs.gather(-1, b), xs.gather(-1, b + 1)
    y0, y1 = ys.gather(-1, b), ys.gather(-1, b + 1)
    d0, d1 = deriv.gather(-1, b), deriv.gather(-1, b + 1)
    width, height = x1 - x0, y1 - y0
    slope = height / width
    t = (xin - x0) / width
    tt = t * (1 - t)
    den = slope + (d0 + d1 - 2 * slope) * tt
    y = y0 + height * (slope * t * t + d0 * tt) / den  # eq. 4
    log_slope = 2 * slope.log() + (d1 * t * t + 2 * slope * tt + d0 * (1 - t) ** 2).log() - 2 * den.log()  # eq. 5
    y, log_slope = y.squeeze(-1), log_slope.squeeze(-1)
    return torch.where(inside, y, x), torch.where(inside, log_slope, 0.0)


def reference_log_prob(flow: FlowList, x: torch.Tensor, initialise: bool = True) -> torch.Tensor:
    """log p(x̃) per row by the change of variables, from the layers' raw parameters and networks only."""
    h, logdet = reference_preprocess(flow[0], x)
    for layer in list(flow)[1:]:
        if isinstance(layer, MAF):  # z = (x - mu(x)) exp(-alpha(x)), the MADE by hand
            made, a = layer.made, h
            for lin in made.hidden:
                a = torch.relu(F.linear(a, lin.weight * lin.mask, lin.bias))
            out = F.linear(a, made.output.weight * made.output.mask, made.output.bias)
            mu, alpha = out.view(h.shape[0], 2, h.shape[1]).unbind(1)
            h = (h - mu) * torch.exp(-alpha)
            logdet = logdet - alpha.sum(1)
        elif isinstance(layer, RationalQuadraticCoupling):
            keep = (torch.arange(h.shape[1]) % 2 == 0) != layer.inverse_mask  # checkerboard on vectors
            k = layer.num_bins
            raw = layer.net.net(h * keep).view(h.shape[0], h.shape[1], 3 * k - 1)
            y, log_slope = hand_spline(h, raw[..., :k], raw[..., k:2 * k], raw[..., 2 * k:], layer.tail_bound)
            h = torch.where(keep, h, y)
            logdet = logdet + (log_slope * ~keep).sum(1)
        elif isinstance(layer, Reverse):
            h = h.flip(1)
        elif isinstance(layer, Permutation):
            h = h[:, layer.permute_indices]
        else:
            raise TypeError(f"no hand-written transform for {type(layer).__name__}")
    base = -0.5 * h.pow(2).sum(1) - 0.5 * h.shape[1] * math.log(2 * math.pi)
    return base + logdet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", choices=sorted(CFG), default="maf")
    add_args(parser)
    args = parser.parse_args()
    titles = {"maf": "MAF (MADE affine + reverse)",
              "spline": "neural spline flow (rational-quadratic coupling + shuffle)"}
    start(args, f"{titles[args.flow]} on digits: kizuna vs hand-written PyTorch")
    cfg = {**CFG[args.flow], **(QUICK if args.quick else {})}
    print(f"  configuration: {cfg}")
    build = build_maf if args.flow == "maf" else build_spline
    x, y = load_digits()
    x_train, _, x_test, _ = split(x, y, 0.2, seed=0)
    quality_over_seeds(args, lambda seed: one_seed(seed, cfg, x_train, x_test, build, reference_log_prob))
    agree_random(build, cfg, x_train[:cfg["batch"]], reference_log_prob)
    speed(args, cfg, x_train, build, reference_log_prob)


if __name__ == "__main__":
    main()
