"""Normalising flows as kizuna distributions: RealNVP and MAF on 2-D data and on scikit-learn digits.

Each model is ``InverseTransformedDistribution(prior, flow, var=["x"])``, trained by maximum
likelihood with ``-LogProb(p).mean()``.

* **2-D** (``make_moons``, noise 0.1): test NLL in nats per point, against the best full-covariance
  Gaussian (the flow with no non-linear layer).
* **Digits** (8×8, grey levels 0..16, so :math:`L = 17`): `Preprocess(levels=17)` adds uniform noise
  :math:`u` to each level :math:`k` and applies a logit; the density of :math:`\\tilde x = (k+u)/16`
  bounds the probability of the levels, :math:`\\log P(k) \\ge \\log p(\\tilde x) - 64\\log 16`
  (`Preprocess.bin_log_volume`). Test bits/dim :math:`= -\\log_2 P(k) / 64`, one noise draw per
  test image. The baseline is exact: independent per-pixel categoricals over the 17 levels
  (add-one smoothing). Training keeps the parameters with the best validation loss (10% of the
  training images), since 1,438 training images overfit quickly.

    python examples/flows.py --smoke      # ~10 s
    python examples/flows.py              # full
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import make_moons

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402

from kizuna.datasets import load_digits, split  # noqa: E402
from kizuna.distributions import InverseTransformedDistribution, Normal  # noqa: E402
from kizuna.flows import MAF, ActNorm, AffineCoupling, Flow, FlowList, Preprocess, Reverse, Shuffle  # noqa: E402
from kizuna.losses import LogProb  # noqa: E402
from kizuna.models import Model  # noqa: E402

LEVELS = 17  # scikit-learn digits: grey levels 0..16


def _prior(d: int) -> Normal:
    return Normal(var=["z"], loc=torch.zeros(d), scale=torch.ones(d), name="p_prior")


def realnvp(d: int, n_layers: int, hidden: int) -> list[Flow]:
    """ActNorm + affine coupling (alternating checkerboard masks) + a fixed shuffle, per layer."""
    layers: list[Flow] = []
    for i in range(n_layers):
        layers += [ActNorm(d), AffineCoupling(d, "checkerboard", inverse_mask=bool(i % 2), hidden_features=hidden)]
        if d > 2:
            layers.append(Shuffle(d, seed=i))
    return layers


def maf(d: int, n_layers: int, hidden: int) -> list[Flow]:
    """MAF layers with the order reversed in between."""
    layers: list[Flow] = []
    for _ in range(n_layers):
        layers += [MAF(d, [hidden, hidden]), Reverse(d)]
    return layers


def mean_log_prob(p: InverseTransformedDistribution, x: torch.Tensor) -> float:
    was = p.training
    p.eval()
    with torch.no_grad():
        value = torch.cat([p.get_log_prob({"x": c}) for c in x.split(2000)]).mean().item()
    p.train(was)
    return value


def fit(p: InverseTransformedDistribution, x_train: torch.Tensor, x_val: torch.Tensor, steps: int, lr: float,
        batch: int, seed: int, check_every: int = 100) -> InverseTransformedDistribution:
    """Adam on ``-log p(x)``; returns ``p`` with its best-validation parameters (fixed validation noise)."""
    model = Model(-LogProb(p).mean(), distributions=[p], optimizer_params={"lr": lr}, clip_grad_norm=50.0)
    g = torch.Generator().manual_seed(seed)
    best, best_state = -math.inf, copy.deepcopy(p.state_dict())
    for step in range(1, steps + 1):
        model.train({"x": x_train[torch.randint(0, x_train.shape[0], (batch,), generator=g)]})
        if step % check_every == 0 or step == steps:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                val = mean_log_prob(p, x_val)
            if val > best:
                best, best_state = val, copy.deepcopy(p.state_dict())
    p.load_state_dict(best_state)
    return p


def two_d(smoke: bool, seed: int) -> dict[str, float]:
    x, _ = make_moons(6000, noise=0.1, random_state=seed)
    x = torch.tensor(x, dtype=torch.float32)
    x_train, x_val, x_test = x[:4000], x[4000:5000], x[5000:]
    mean, cov = x_train.mean(0), torch.cov(x_train.T)
    gaussian = torch.distributions.MultivariateNormal(mean, cov)
    out = {"moons_gaussian_nll": -gaussian.log_prob(x_test).mean().item()}
    steps, n_layers = (500, 4) if smoke else (5000, 8)
    for name, layers in (("realnvp", realnvp(2, n_layers, 64)), ("maf", maf(2, n_layers, 64))):
        p = InverseTransformedDistribution(_prior(2), FlowList(layers), var=["x"])
        fit(p, x_train, x_val, steps, 3e-3, 128 if smoke else 256, seed)
        out[f"moons_{name}_nll"] = -mean_log_prob(p, x_test)
    return out


def categorical_bpd(k_train: torch.Tensor, k_test: torch.Tensor, levels: int) -> float:
    """Exact test bits/dim of independent per-pixel categoricals (add-one smoothing)."""
    counts = torch.stack([torch.bincount(k_train[:, i], minlength=levels) for i in range(k_train.shape[1])]) + 1.0
    log_p = (counts / counts.sum(1, keepdim=True)).log()
    return -log_p.gather(1, k_test.T).T.sum(1).mean().item() / (k_train.shape[1] * math.log(2))


def digits(smoke: bool, seed: int) -> dict[str, float]:
    x, y = load_digits()  # levels k / 16
    x, y, x_test, _ = split(x, y, 0.2, seed=seed)
    x_train, _, x_val, _ = split(x, y, 0.1, seed=seed + 1)
    d = x.shape[1]
    k_train, k_test = (t.mul(LEVELS - 1).round().long() for t in (x_train, x_test))
    out = {"digits_categorical_bpd": categorical_bpd(k_train, k_test, LEVELS)}
    configs = {"realnvp": (realnvp(d, 6, 256) if not smoke else realnvp(d, 4, 128), 3000 if not smoke else 150),
               "maf": (maf(d, 5, 256) if not smoke else maf(d, 4, 128), 3000 if not smoke else 250)}
    for name, (layers, steps) in configs.items():
        pre = Preprocess(levels=LEVELS)
        p = InverseTransformedDistribution(_prior(d), FlowList([pre, *layers]), var=["x"])
        fit(p, x_train, x_val, steps, 1e-3 if not smoke else 2e-3, 128, seed, check_every=50)
        log_p_levels = mean_log_prob(p, x_test) + pre.bin_log_volume(d)  # bound on log P(k), nats
        out[f"digits_{name}_bpd"] = -log_p_levels / (d * math.log(2))
    return out


def run(smoke: bool = False, seed: int = 0) -> dict[str, float]:
    """2-D moons NLL (nats) and digits bits/dim for RealNVP, MAF and their baselines."""
    torch.manual_seed(seed)
    start = time.time()
    metrics = {**two_d(smoke, seed), **digits(smoke, seed)}
    metrics["seconds"] = time.time() - start
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a short run (CI)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for key, value in run(smoke=args.smoke, seed=args.seed).items():
        print(f"{key}: {value:.4f}")
