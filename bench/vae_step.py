"""VAE training step: kizuna's formula layer vs the same model written by hand in PyTorch.

Prints the median time per step and the ratio to the hand-written baseline measured in the
same process (small model 64-256-16, batch 128, Bernoulli likelihood, analytic KL), with
validation on and off. Run: ``python bench/vae_step.py [--repeats 5] [--steps 200]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, Normal, set_validation
from kizuna.losses import Expectation, KullbackLeibler, LogProb
from kizuna.models import Model
from kizuna.nets import MLP

D, H, Z, B = 64, 256, 16, 128


class Encoder(Normal):
    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = MLP(D, H, 2 * Z)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s)}


class Decoder(Bernoulli):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = MLP(Z, H, D)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(z)}


def kizuna_step(x: torch.Tensor) -> Callable[[], float]:
    q, p = Encoder(), Decoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[Z], name="p_prior")
    model = Model((KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean(), distributions=[p, q])
    return lambda: model.train({"x": x})


def hand_step(x: torch.Tensor) -> Callable[[], float]:
    enc, dec = MLP(D, H, 2 * Z), MLP(Z, H, D)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()])

    def step() -> float:
        opt.zero_grad()
        loc, s = enc(x).chunk(2, -1)
        scale = F.softplus(s)
        z = loc + scale * torch.randn_like(scale)
        recon = -F.binary_cross_entropy_with_logits(dec(z), x, reduction="none").sum(1)
        kl = (0.5 * (scale**2 + loc**2 - 1) - scale.log()).sum(1)
        loss = (kl - recon).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def seconds_per_step(step: Callable[[], float], steps: int) -> float:
    for _ in range(20):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = (torch.rand(B, D) > 0.5).float()
    times: dict[str, list[float]] = {"hand-written": [], "kizuna": [], "kizuna, no validation": []}
    for _ in range(args.repeats):  # interleaved, so drift affects every case alike
        times["hand-written"].append(seconds_per_step(hand_step(x), args.steps))
        set_validation(True)
        times["kizuna"].append(seconds_per_step(kizuna_step(x), args.steps))
        set_validation(False)
        times["kizuna, no validation"].append(seconds_per_step(kizuna_step(x), args.steps))
        set_validation(True)
    base = statistics.median(times["hand-written"])
    print(f"VAE step {D}-{H}-{Z}, batch {B}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:24s} {med * 1e3:7.3f} ms/step   ratio {med / base:5.2f}")


if __name__ == "__main__":
    main()
