"""Flow matching, kizuna vs hand-written PyTorch: same network, data, batches, steps and seeds.

kizuna trains ``flow_matching_loss(p, coupling="ot").mean()`` with `Model.train`; the reference is
a hand-written OT-CFM step (scipy's ``linear_sum_assignment`` on the squared distances, straight
path, squared velocity error summed over features, mean over the batch). Both start from the
same initial weights and draw the same minibatch indices; Adam with cosine decay. One evaluation
code for both trained networks: test bits/dim by the exact ODE likelihood (RK4, exact trace, one
dequantisation draw per image, fixed) and the C2ST of Heun samples (25 steps, 50 evaluations).

    python bench/parity_flow_matching.py            # 3 seeds, the smoke example's configuration
    python bench/parity_flow_matching.py --quick    # seconds
    python bench/parity_flow_matching.py --net unet # the same with the example's U-Net velocity (``--net unet``)
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch
from _parity import add_args, agree, quality_over_seeds, reference_adam, report_speed, start, train_timed
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from flow_matching import LEVELS, velocity_net  # noqa: E402

from kizuna.datasets import load_digits, split  # noqa: E402
from kizuna.distributions import FlowMatching  # noqa: E402
from kizuna.distributions.flow_matching import ode_log_det  # noqa: E402
from kizuna.flows import Preprocess  # noqa: E402
from kizuna.losses import flow_matching_loss  # noqa: E402
from kizuna.metrics import classifier_two_sample_test  # noqa: E402
from kizuna.models import Model  # noqa: E402
from kizuna.samplers import LinearPath, heun  # noqa: E402

CFG = {"hidden": 256, "steps": 600, "batch": 128, "lr": 2e-3, "n_test": 120, "rk4": 8, "n_eval": 150}
QUICK = {"hidden": 64, "steps": 30, "batch": 64, "lr": 2e-3, "n_test": 20, "rk4": 2, "n_eval": 40}


def new_net(net: str, cfg: dict, d: int) -> torch.nn.Module:
    """The velocity network of ``--net``: the example's MLP or its U-Net (`examples/flow_matching.py --net unet`)."""
    return velocity_net(net, d, cfg["hidden"])


def kizuna_trainer(net: torch.nn.Module, cfg: dict, d: int = 64) -> tuple[Model, torch.optim.lr_scheduler.LRScheduler]:
    fm = FlowMatching(net, [d], var="z")
    model = Model(flow_matching_loss(fm, coupling="ot").mean(), distributions=[fm], optimizer_params={"lr": cfg["lr"]})
    return model, torch.optim.lr_scheduler.CosineAnnealingLR(model.optimizer, cfg["steps"])


def reference_loss(net: torch.nn.Module, x1: torch.Tensor) -> torch.Tensor:
    """Hand-written OT-CFM: uniform t, OT-paired noise, straight path, target x1 - x0."""
    t = torch.rand(x1.shape[0], dtype=x1.dtype)
    x0 = torch.randn_like(x1)
    rows, cols = linear_sum_assignment(torch.cdist(x0.double(), x1.double()).pow(2).numpy())
    perm = torch.empty(len(cols), dtype=torch.long)
    perm[torch.as_tensor(cols)] = torch.as_tensor(rows)
    x0 = x0[perm]
    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    return (net(xt, t) - (x1 - x0)).pow(2).sum(1).mean()


def evaluate(net: torch.nn.Module, pre: Preprocess, x_test: torch.Tensor, cfg: dict, seed: int) -> dict[str, float]:
    """The same code for both networks: bits/dim (exact ODE likelihood) and the C2ST of Heun samples."""
    d = x_test.shape[1]
    test = x_test[:cfg["n_test"]]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        z, logdet = pre.forward_and_logdet(test)
        z0, integral = ode_log_det(net, z, cfg["rk4"])
        logp = -0.5 * z0.pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi) + integral + logdet
        bpd = (-(logp + pre.bin_log_volume(d)) / (d * math.log(2))).mean().item()
        samples = pre.inverse(heun(LinearPath(net, [d]), cfg["n_eval"], 25))
    c2st = classifier_two_sample_test(x_test[:cfg["n_eval"]], samples, seed=seed).accuracy
    return {"test bits/dim": bpd, "C2ST (50 evaluations)": c2st}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    parser.add_argument("--net", choices=["mlp", "unet"], default="mlp", help="the velocity network")
    args = parser.parse_args()
    start(args, f"flow matching (OT-CFM, {args.net} velocity) on digits: kizuna vs hand-written PyTorch")
    cfg = QUICK if args.quick else CFG
    x, y = load_digits()
    x_train, _, x_test, _ = split(x, y, 0.2, seed=0)
    d, pre = x.shape[1], Preprocess(levels=LEVELS)
    quality_over_seeds(args, lambda seed: one_seed(seed, cfg, x_train, x_test, pre, d, args.net))
    speed(args, cfg, x_train, pre, d)


def one_seed(seed: int, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor, pre: Preprocess, d: int,
             net: str = "mlp") -> dict[str, dict[str, float]]:
    """Train both from the same initial weights on the same batches; evaluate both the same way."""
    torch.manual_seed(seed)
    net_k = new_net(net, cfg, d)
    net_r = copy.deepcopy(net_k)
    model, decay = kizuna_trainer(net_k, cfg, d)
    opt = reference_adam(net_r.parameters(), cfg["lr"])
    decay_r = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
    g = torch.Generator().manual_seed(seed)
    batches = [x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)] for _ in range(cfg["steps"])]
    it_k, it_r = iter(batches), iter(batches)

    def k_step() -> None:
        with torch.no_grad():
            z = pre(next(it_k))
        model.train({"z": z})
        decay.step()

    def r_step() -> None:
        with torch.no_grad():
            z = pre(next(it_r))
        opt.zero_grad()
        reference_loss(net_r, z).backward()
        opt.step()
        decay_r.step()

    order = [("kizuna", k_step), ("reference", r_step)]
    seconds = {name: train_timed(cfg["steps"], step) for name, step in (order if seed % 2 == 0 else order[::-1])}
    return {name: {**evaluate(net, pre, x_test, cfg, seed), "train seconds": seconds[name]}
            for name, net in (("kizuna", net_k), ("reference", net_r))}


def speed(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor, pre: Preprocess, d: int) -> None:
    """Seconds per training step, interleaved, from identical networks and batches."""
    torch.manual_seed(0)
    net_k = new_net(args.net, cfg, d)
    net_r = copy.deepcopy(net_k)
    model, _ = kizuna_trainer(net_k, cfg, d)
    opt = reference_adam(net_r.parameters(), cfg["lr"])
    with torch.no_grad():
        z = pre(x_train[:cfg["batch"]])
    agree(lambda: model.loss_cls.eval({"z": z}), lambda: reference_loss(net_r, z), net_k.parameters(),
          net_r.parameters())

    def r_step() -> None:
        opt.zero_grad()
        reference_loss(net_r, z).backward()
        opt.step()

    k_step = lambda: model.train({"z": z})  # noqa: E731
    report_speed(args, k_step, r_step, 100)


if __name__ == "__main__":
    main()
