"""RealNVP, kizuna vs hand-written PyTorch: same flow, data, batches, steps and seeds.

kizuna trains ``-LogProb(p).mean()`` with `Model.train` (gradient norm clipped at 50), where ``p`` is
``InverseTransformedDistribution(prior, FlowList([Preprocess(17), *realnvp(64, 4, 128)]))`` as
examples/flows.py builds it for digits (its smoke configuration: 4 layers of ActNorm, checkerboard
affine coupling and a fixed shuffle, 150 steps of 128 images, Adam 2e-3). The reference is a hand-written
step on a deep copy of the same layers that computes the change of variables itself from their raw
parameters: uniform dequantisation and logit with its log-Jacobian, ActNorm (initialised by hand from
the first batch), ``s, t = MLP(x * m)``, ``log s = tanh(s)``, masked, the permutation, a standard-normal
base; then ``clip_grad_norm_`` and Adam (torch's default, or fused with ``--fused-reference``).
Both runs draw the dequantisation noise from the same seed and the same minibatch indices.
One evaluation code for both trained flows: test bits/dim (kizuna's ``log_prob`` of the trained
layers, one fixed dequantisation draw per image, plus `Preprocess.bin_log_volume`), and the same
figure by the hand-written formula as a check. The example's best-validation checkpointing is left
out: both keep their last parameters.

    python bench/parity_realnvp.py            # 3 seeds, the smoke example's configuration
    python bench/parity_realnvp.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from _parity import (
    add_args,
    agree,
    grad_report,
    quality_over_seeds,
    reference_adam,
    report_speed,
    report_split,
    start,
    train_timed,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from flows import LEVELS, _prior, mean_log_prob, realnvp  # noqa: E402

from kizuna.datasets import load_digits, split  # noqa: E402
from kizuna.distributions import InverseTransformedDistribution  # noqa: E402
from kizuna.flows import ActNorm, AffineCoupling, FlowList, Permutation, Preprocess  # noqa: E402
from kizuna.losses import LogProb  # noqa: E402
from kizuna.models import Model  # noqa: E402

Build = Callable[[int, dict], InverseTransformedDistribution]
HandLogProb = Callable[..., torch.Tensor]  # (flow, x, initialise=...) -> log p(x̃) per row

CFG = {"layers": 4, "hidden": 128, "steps": 150, "batch": 128, "lr": 2e-3, "clip": 50.0}
QUICK = {"layers": 2, "hidden": 32, "steps": 20, "batch": 64, "lr": 2e-3, "clip": 50.0}


def build(d: int, cfg: dict) -> InverseTransformedDistribution:
    layers = [Preprocess(levels=LEVELS), *realnvp(d, cfg["layers"], cfg["hidden"])]
    return InverseTransformedDistribution(_prior(d), FlowList(layers), var=["x"])


def kizuna_model(p: InverseTransformedDistribution, cfg: dict) -> Model:
    return Model(-LogProb(p).mean(), distributions=[p], optimizer_params={"lr": cfg["lr"]},
                 clip_grad_norm=cfg["clip"])


def reference_preprocess(pre: Preprocess, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform dequantisation and logit by hand, and the row's log-Jacobian (also `parity_flows`)."""
    L, a = pre.levels, pre.alpha
    u = torch.rand_like(x)  # dequantisation, as Preprocess draws it
    v = (x * (L - 1) + u) / L
    q = 0.5 * a + (1 - a) * v
    h = torch.log(q) - torch.log1p(-q)
    logdet = (math.log((L - 1) / L) + math.log(1 - a) - torch.log(q) - torch.log1p(-q)).sum(1)
    return h, logdet


def reference_log_prob(flow: FlowList, x: torch.Tensor, initialise: bool = True) -> torch.Tensor:
    """log p(x̃) per row by the change of variables, from the layers' raw parameters only."""
    h, logdet = reference_preprocess(flow[0], x)
    for layer in list(flow)[1:]:
        if isinstance(layer, ActNorm):
            if initialise and not bool(layer.initialized):  # data-dependent initialisation on the first batch,
                # unless the parameters are no longer the new layer's zeros (kizuna's rule since stop 43: they are
                # kept; `agree_random` perturbs every parameter first)
                with torch.no_grad():
                    if not bool(layer.bias.any() or layer.log_scale.any()):
                        layer.bias.copy_(-h.mean(0))
                        layer.log_scale.copy_(-0.5 * torch.log(h.var(0, unbiased=False) + layer.eps))
                    layer.initialized.fill_(True)
            h = (h + layer.bias) * layer.log_scale.exp()
            logdet = logdet + layer.log_scale.sum()
        elif isinstance(layer, AffineCoupling):
            keep = (torch.arange(h.shape[1]) % 2 == 0) != layer.inverse_mask  # checkerboard on vectors
            m = keep.to(h.dtype)
            raw_s, t = layer.default_net.net(h * m).chunk(2, -1)
            log_s, t = torch.tanh(raw_s) * (1 - m), t * (1 - m)
            h = h * log_s.exp() + t
            logdet = logdet + log_s.sum(1)
        elif isinstance(layer, Permutation):
            h = h[:, layer.permute_indices]
        else:
            raise TypeError(f"no hand-written transform for {type(layer).__name__}")
    base = -0.5 * h.pow(2).sum(1) - 0.5 * h.shape[1] * math.log(2 * math.pi)
    return base + logdet


def evaluate(p: InverseTransformedDistribution, x_test: torch.Tensor, seed: int,
             hand_log_prob: HandLogProb = reference_log_prob) -> dict[str, float]:
    """The same code for both trained flows: test bits/dim by kizuna's log_prob and by the hand formula."""
    d = x_test.shape[1]
    volume = p.flow[0].bin_log_volume(d)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        ll = mean_log_prob(p, x_test)
        torch.manual_seed(1000 + seed)
        with torch.no_grad():
            hand = hand_log_prob(p.flow, x_test, initialise=False).mean().item()
    bpd = lambda nats: -(nats + volume) / (d * math.log(2))  # noqa: E731
    return {"test bits/dim": bpd(ll), "test bits/dim (hand formula)": bpd(hand)}


def one_seed(seed: int, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor, build: Build = build,
             hand_log_prob: HandLogProb = reference_log_prob) -> dict[str, dict[str, float]]:
    """Train both from the same initial weights on the same batches and noise; evaluate both the same way."""
    torch.manual_seed(seed)
    p_k = build(x_train.shape[1], cfg)
    p_r = copy.deepcopy(p_k)
    model = kizuna_model(p_k, cfg)
    params = list(p_r.parameters())
    opt = reference_adam(params, cfg["lr"])
    g = torch.Generator().manual_seed(seed)
    batches = [x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)] for _ in range(cfg["steps"])]
    it_k, it_r = iter(batches), iter(batches)

    def k_step() -> None:
        model.train({"x": next(it_k)})

    def r_step() -> None:
        opt.zero_grad()
        (-hand_log_prob(p_r.flow, next(it_r)).mean()).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["clip"])
        opt.step()

    def run(step: object) -> float:
        torch.manual_seed(100 + seed)  # the same dequantisation noise for both runs
        return train_timed(cfg["steps"], step)  # type: ignore[arg-type]

    order = [("kizuna", k_step), ("reference", r_step)]
    seconds = {name: run(step) for name, step in (order if seed % 2 == 0 else order[::-1])}
    return {name: {**evaluate(p, x_test, seed, hand_log_prob), "train seconds": seconds[name]}
            for name, p in (("kizuna", p_k), ("reference", p_r))}


def speed(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor, build: Build = build,
          hand_log_prob: HandLogProb = reference_log_prob) -> None:
    """Seconds per training step, interleaved, from identical flows and one batch (``--split``: where
    kizuna's extra time lies)."""
    torch.manual_seed(0)
    p_k = build(x_train.shape[1], cfg)
    p_r = copy.deepcopy(p_k)
    model = kizuna_model(p_k, cfg)
    params = list(p_r.parameters())
    opt = reference_adam(params, cfg["lr"])
    x = x_train[:cfg["batch"]]
    agree(lambda: model.loss_cls.eval({"x": x}), lambda: -hand_log_prob(p_r.flow, x).mean(), p_k.parameters(), params)

    def r_step() -> None:
        opt.zero_grad()
        (-hand_log_prob(p_r.flow, x).mean()).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["clip"])
        opt.step()

    k_step = lambda: model.train({"x": x})  # noqa: E731
    report_speed(args, k_step, r_step, 100)
    if args.split:
        report_split(args, model, {"x": x}, k_step, r_step, lambda: -hand_log_prob(p_r.flow, x).mean())


def agree_random(build: Build, cfg: dict, x: torch.Tensor, hand_log_prob: HandLogProb = reference_log_prob,
                 seed: int = 7) -> None:
    """New coupling and autoregressive layers are the identity (zero last layers), so the first-step check passes
    whatever the transforms compute; here every parameter gets Gaussian noise (sd 0.05) first, and both
    log-densities and both gradients (copies of the same weights, the same dequantisation draw) are
    compared."""
    torch.manual_seed(seed)
    p = build(x.shape[1], cfg)
    with torch.no_grad():
        for param in p.parameters():
            param.add_(torch.randn_like(param), alpha=0.05)
    q = copy.deepcopy(p)
    values = []
    for log_prob in (lambda: p.get_log_prob({"x": x}), lambda: hand_log_prob(q.flow, x)):
        torch.manual_seed(seed)
        values.append(log_prob())
        values[-1].mean().backward()
    grads = grad_report([a.grad for a in p.parameters()], [b.grad for b in q.parameters()])
    print(f"  AGREE with random weights: log p(x) mean {values[0].mean().item():.4f} vs "
          f"{values[1].mean().item():.4f}, max |diff| per row {(values[0] - values[1]).abs().max().item():.3g}; "
          f"{grads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    args = parser.parse_args()
    start(args, "RealNVP (ActNorm + affine coupling + shuffle) on digits: kizuna vs hand-written PyTorch")
    cfg = QUICK if args.quick else CFG
    x, y = load_digits()
    x_train, _, x_test, _ = split(x, y, 0.2, seed=0)
    quality_over_seeds(args, lambda seed: one_seed(seed, cfg, x_train, x_test))
    speed(args, cfg, x_train)
    agree_random(build, cfg, x_train[:cfg["batch"]])  # the couplings start as the identity too


if __name__ == "__main__":
    main()
