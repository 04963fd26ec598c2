"""Energy-based model, kizuna vs hand-written PyTorch: same energy network, buffer, data, batches, draws and seeds.

kizuna trains the EBM as examples/ebm.py builds it in its smoke configuration (scikit-learn digits in
[0, 1], energy MLP 64-256-256-1 with SiLU, 200 steps, batches of 64 drawn with replacement, Adam 1e-3
with betas (0.0, 0.999)): `ContrastiveDivergence` with ``alpha`` 0.1 on an `EnergyDistribution`,
its negatives from `kizuna.samplers.SGLD` (replay buffer of 2,000 rows, 5% of the chains restarted
from uniform noise, 15 steps of size 1.0, noise 0.01, clamped to [0, 1]), trained by `Model.train`
(torch's fused Adam). The reference is a hand-written contrastive-divergence step on a deep copy of
the same energy network and a copy of the same initial buffer: indices into the buffer, the restart
coin flips, the uniform restarts (drawn for every row, as kizuna does), then per SGLD step the
energy's input gradient by autograd and one normal draw, clamped; the chains written back into
the buffer; the loss ``E[E(x+)] - E[E(x-)] + alpha (E[E(x+)^2] + E[E(x-)^2])``; Adam with the same
betas, torch's default or fused with ``--fused-reference``. Both draw from the same random state in
the same order, so the first-step losses agree exactly and the two columns differ only by the
rounding of the two Adam implementations (which SGLD's chains then amplify over the run).
One evaluation code for both trained energies (each wrapped in the same `EnergyDistribution`,
examples/ebm.py's ``auc`` and ``c2st``): the AUC with which -energy ranks held-out images above
uniform noise, above pixel-shuffled held-out images and above training images (0.5 without
overfitting; the first two saturate at 1.000 in this configuration), and the C2ST (logistic, 17 grey levels) of
300 rows of each side's replay buffer against held-out images.

    python bench/parity_ebm.py                      # 3 seeds, the smoke example's configuration
    python bench/parity_ebm.py --fused-reference    # the reference with kizuna's Adam kernel
    python bench/parity_ebm.py --quick              # seconds
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from _parity import add_args, agree, quality_over_seeds, reference_adam, report_speed, start, train_timed
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from ebm import GREY_LEVELS, SMOKE, Energy, auc, c2st, images  # noqa: E402

from kizuna.distributions import EnergyDistribution  # noqa: E402
from kizuna.losses import ContrastiveDivergence  # noqa: E402
from kizuna.models import Model  # noqa: E402
from kizuna.samplers import SGLD  # noqa: E402

CFG = {k: SMOKE[k] for k in ("hidden", "steps", "batch", "lr", "sgld_steps", "step_size", "noise", "alpha",
                             "buffer", "n_eval")}
CFG["reinit"] = 0.05
QUICK = {**CFG, "hidden": 64, "steps": 20, "sgld_steps": 5, "buffer": 500, "n_eval": 200}
BETAS = (0.0, 0.999)


def kizuna_model(energy: Energy, x_dim: int, cfg: dict) -> tuple[Model, SGLD]:
    """As examples/ebm.py's `run` builds it (the SGLD buffer is drawn here, from the global stream)."""
    p = EnergyDistribution(energy, var=["x"])
    sampler = SGLD(p, [x_dim], buffer_size=cfg["buffer"], reinit=cfg["reinit"], n_steps=cfg["sgld_steps"],
                   step_size=cfg["step_size"], noise_scale=cfg["noise"], low=0.0, high=1.0)
    loss = ContrastiveDivergence(p, sampler, alpha=cfg["alpha"])
    return Model(loss, distributions=[p], optimizer_params={"lr": cfg["lr"], "betas": BETAS}), sampler


class Reference:
    """Hand-written contrastive divergence with SGLD and a replay buffer on the raw energy network ``f``."""

    def __init__(self, f: nn.Module, buffer: torch.Tensor, cfg: dict) -> None:
        self.f, self.buffer, self.cfg = f, buffer.clone(), cfg
        self.opt = reference_adam(f.parameters(), cfg["lr"], betas=BETAS)

    def negatives(self, n: int) -> torch.Tensor:
        cfg = self.cfg
        idx = torch.randint(0, len(self.buffer), (n,))
        fresh = torch.rand(n) < cfg["reinit"]
        x = torch.where(fresh[:, None], torch.rand(n, self.buffer.shape[1]), self.buffer[idx])
        for _ in range(cfg["sgld_steps"]):
            x = x.detach().requires_grad_(True)
            grad, = torch.autograd.grad(self.f(x).sum(), x)
            with torch.no_grad():
                x = (x - 0.5 * cfg["step_size"] * grad + cfg["noise"] * torch.randn_like(x)).clamp(0.0, 1.0)
        self.buffer[idx] = x
        return x

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        neg = self.negatives(x.shape[0])
        e_pos, e_neg = self.f(x), self.f(neg)
        return e_pos.mean() - e_neg.mean() + self.cfg["alpha"] * (e_pos.pow(2).mean() + e_neg.pow(2).mean())

    def step(self, x: torch.Tensor) -> None:
        self.opt.zero_grad()
        self.loss(x).backward()
        self.opt.step()


def evaluate(f: nn.Module, buffer: torch.Tensor, x_train: torch.Tensor, x_test: torch.Tensor, cfg: dict, seed: int
             ) -> dict[str, float]:
    """The same code for both trained energies: examples/ebm.py's AUCs (and held-out against training
    images: 0.5 without overfitting) and the buffer's C2ST."""
    p = EnergyDistribution(f, var=["x"])
    g = torch.Generator().manual_seed(1000 + seed)
    uniform = torch.rand(len(x_test), x_test.shape[1], generator=g)
    shuffled = torch.stack([row[torch.randperm(x_test.shape[1], generator=g)] for row in x_test])
    n = min(cfg["n_eval"], len(x_test))
    rows = buffer[torch.randperm(len(buffer), generator=g)[:n]]
    return {"AUC vs uniform": auc(p, x_test, uniform), "AUC vs shuffled": auc(p, x_test, shuffled),
            "AUC vs training images": auc(p, x_test, x_train[:len(x_test)]),
            "C2ST of the buffer": c2st(x_test[:n], rows, GREY_LEVELS["digits"], seed, ("logistic",))["logistic"]}


def one_seed(seed: int, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor) -> dict[str, dict[str, float]]:
    """Train both from the same weights and buffer on the same batches and draws; evaluate both the same way."""
    torch.manual_seed(seed)
    energy = Energy(x_train.shape[1], cfg["hidden"])
    energy_r = copy.deepcopy(energy)
    model, sampler = kizuna_model(energy, x_train.shape[1], cfg)
    ref = Reference(energy_r, sampler.buffer, cfg)
    g = torch.Generator().manual_seed(seed)
    batches = [x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)] for _ in range(cfg["steps"])]
    it_k, it_r = iter(batches), iter(batches)

    def run(step: object) -> float:
        torch.manual_seed(100 + seed)  # the same SGLD draws for both runs
        return train_timed(cfg["steps"], step)  # type: ignore[arg-type]

    order = [("kizuna", lambda: model.train({"x": next(it_k)})), ("reference", lambda: ref.step(next(it_r)))]
    seconds = {name: run(step) for name, step in (order if seed % 2 == 0 else order[::-1])}
    gap = max((a - b).abs().max().item() for a, b in zip(energy.parameters(), energy_r.parameters()))
    print(f"  seed {seed}: largest difference of the trained weights {gap:.3g}")
    return {name: {**evaluate(f, buf, x_train, x_test, cfg, seed), "train seconds": seconds[name]}
            for name, f, buf in (("kizuna", energy, sampler.buffer), ("reference", energy_r, ref.buffer))}


def speed(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor) -> None:
    """Seconds per training step (SGLD chains and the parameter step), interleaved, one batch."""
    torch.manual_seed(0)
    energy = Energy(x_train.shape[1], cfg["hidden"])
    energy_r = copy.deepcopy(energy)
    model, sampler = kizuna_model(energy, x_train.shape[1], cfg)
    ref = Reference(energy_r, sampler.buffer, cfg)
    x = x_train[:cfg["batch"]]
    agree(lambda: model.loss_cls.eval({"x": x}), lambda: ref.loss(x), energy.parameters(), energy_r.parameters())
    report_speed(args, lambda: model.train({"x": x}), lambda: ref.step(x), 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the configuration's)")
    args = parser.parse_args()
    start(args, "EBM (contrastive divergence, SGLD with a replay buffer) on digits: kizuna vs hand-written PyTorch")
    cfg = dict(QUICK if args.quick else CFG)
    cfg["steps"] = args.steps or cfg["steps"]
    print(f"  configuration: {cfg}")
    x_train, x_test = images("digits", 0)
    n = min(cfg["n_eval"], len(x_test))
    print(f"  training images against the held-out ones (the floor): C2ST "
          f"{c2st(x_test[:n], x_train[:n], GREY_LEVELS['digits'], 0, ('logistic',))['logistic']:.3f}")
    quality_over_seeds(args, lambda seed: one_seed(seed, cfg, x_train, x_test))
    speed(args, cfg, x_train)


if __name__ == "__main__":
    main()
