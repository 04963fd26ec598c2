"""Score matching (NCSN), kizuna vs hand-written PyTorch: same score network, levels, data, batches, seeds.

kizuna trains ``Expectation(u(i), denoising_score_matching(s, q, noise_weighting=True)).mean()``
(`examples/score.py --smoke`); the reference is a hand-written σ²-weighted denoising score matching
step (uniform level, :math:`\\tilde x = x + \\sigma_i\\epsilon`, :math:`\\tfrac{\\sigma_i^2}{2}\\|s(\\tilde x, i) +
\\epsilon/\\sigma_i\\|^2` summed over pixels, mean over the batch). Both start from the same weights and
batches. One evaluation code for both: the held-out loss written by hand (fixed levels and noise)
and the C2ST of annealed-Langevin samples (`kizuna.samplers`, the example's settings) and of
Euler–Maruyama samples of the same model through the sampler layer (`ScorePath`; 50 evaluations, or one per
noise level when the model has fewer than 50: 8 in the configurations here).

    python bench/parity_score.py            # 3 seeds
    python bench/parity_score.py --quick    # seconds
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
from score import GREY_LEVELS, SMOKE, NoiseKernel, ScoreNet, c2st, sample  # noqa: E402

from kizuna.datasets import load_digits, split  # noqa: E402
from kizuna.distributions import Categorical  # noqa: E402
from kizuna.losses import Expectation, denoising_score_matching  # noqa: E402
from kizuna.models import Model  # noqa: E402
from kizuna.samplers import ScorePath, euler_maruyama  # noqa: E402

QUICK = {**SMOKE, "hidden": 32, "steps": 20, "batch": 32, "n_eval": 40, "langevin_steps": 2}


def build(x_dim: int, cfg: dict) -> tuple[ScoreNet, NoiseKernel, Categorical]:
    sigmas = torch.logspace(0, math.log10(cfg["sigma_min"]), cfg["levels"])
    levels = Categorical(var=["i"], probs=torch.full((cfg["levels"],), 1.0 / cfg["levels"]), name="u")
    return ScoreNet(x_dim, cfg["hidden"], sigmas), NoiseKernel(sigmas), levels


def reference_rows(score: ScoreNet, x: torch.Tensor, i: torch.Tensor, x_tilde: torch.Tensor) -> torch.Tensor:
    """σ_i²/2 ||s(x̃, i) + (x̃ - x)/σ_i²||² per row."""
    sigma = (i @ score.sigmas)[:, None]
    s = score.net(torch.cat([x_tilde, i], 1)) / sigma
    return (0.5 * sigma.pow(2) * (s + (x_tilde - x) / sigma.pow(2)).pow(2)).sum(1)


def reference_loss(score: ScoreNet, x: torch.Tensor) -> torch.Tensor:
    """The σ²-weighted DSM loss by hand: a uniform level per row (drawn as one ``torch.multinomial`` call over the
    rows, the numbers a uniform categorical draws), then the noisy input."""
    n = len(score.sigmas)
    level = torch.multinomial(x.new_full((1, n), 1.0 / n), x.shape[0], replacement=True).reshape(-1)
    i = torch.nn.functional.one_hot(level, n).to(x.dtype)
    x_tilde = x + (i @ score.sigmas)[:, None] * torch.randn_like(x)
    return reference_rows(score, x, i, x_tilde).mean()


def evaluate(score: ScoreNet, x_test: torch.Tensor, cfg: dict, seed: int) -> dict[str, float]:
    """The same code for both: held-out loss (fixed draws), C2ST of Langevin and of EM samples."""
    n, d = len(score.sigmas), x_test.shape[1]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        held = sum(reference_loss(score, x_test).item() for _ in range(5)) / 5
        langevin = sample(score, cfg["n_eval"], d, cfg, seed)
        path = ScorePath(score.at_level, score.sigmas, [d])
        em = euler_maruyama(path, cfg["n_eval"], n_steps=50 if n >= 50 else n, x=0.5 + path.prior(cfg["n_eval"]))
    real, grey = x_test[:cfg["n_eval"]], GREY_LEVELS["digits"]
    return {"held-out DSM loss": held,
            "C2ST annealed Langevin": c2st(real, langevin, grey, seed, ("logistic",))["logistic"],
            f"C2ST Euler-Maruyama ({min(n, 50)} evals)": c2st(real, em, grey, seed, ("logistic",))["logistic"]}


def one_seed(seed: int, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    score_k, noise, levels = build(x_train.shape[1], cfg)
    score_r = copy.deepcopy(score_k)
    loss = Expectation(levels, denoising_score_matching(score_k, noise, noise_weighting=True)).mean()
    model = Model(loss, distributions=[score_k], optimizer_params={"lr": cfg["lr"]})
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(model.optimizer, cfg["steps"])
    opt = reference_adam(score_r.parameters(), cfg["lr"])
    decay_r = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
    g = torch.Generator().manual_seed(seed)
    batches = [x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)] for _ in range(cfg["steps"])]
    it_k, it_r = iter(batches), iter(batches)

    def k_step() -> None:
        model.train({"x": next(it_k)})
        decay.step()

    def r_step() -> None:
        opt.zero_grad()
        reference_loss(score_r, next(it_r)).backward()
        opt.step()
        decay_r.step()

    order = [("kizuna", k_step), ("reference", r_step)]
    seconds = {name: train_timed(cfg["steps"], step) for name, step in (order if seed % 2 == 0 else order[::-1])}
    return {name: {**evaluate(s, x_test, cfg, seed), "train seconds": seconds[name]}
            for name, s in (("kizuna", score_k), ("reference", score_r))}


def speed(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor) -> None:
    torch.manual_seed(0)
    score_k, noise, levels = build(x_train.shape[1], cfg)
    score_r = copy.deepcopy(score_k)
    rows = Expectation(levels, denoising_score_matching(score_k, noise, noise_weighting=True))
    model = Model(rows.mean(), distributions=[score_k], optimizer_params={"lr": cfg["lr"]})
    opt = reference_adam(score_r.parameters(), cfg["lr"])
    x = x_train[:cfg["batch"]]
    with torch.no_grad():  # the same draws scored by both: kizuna's per-row loss against the formula by hand
        value, drawn = rows.eval({"x": x}, return_dict=True)
        by_hand = reference_rows(score_r, x, drawn["i"], drawn["x_tilde"])
    print(f"  AGREE per-row loss on kizuna's draws: |diff| max = {(value - by_hand).abs().max().item():.3g}")
    agree(lambda: model.loss_cls.eval({"x": x}), lambda: reference_loss(score_r, x), score_k.parameters(),
          score_r.parameters())

    def r_step() -> None:
        opt.zero_grad()
        reference_loss(score_r, x).backward()
        opt.step()

    k_step = lambda: model.train({"x": x})  # noqa: E731
    report_speed(args, k_step, r_step)
    if args.split:
        report_split(args, model, {"x": x}, k_step, r_step, lambda: reference_loss(score_r, x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    args = parser.parse_args()
    start(args, "NCSN (σ²-weighted DSM) on digits: kizuna vs hand-written PyTorch")
    cfg = QUICK if args.quick else SMOKE
    x, y = load_digits()
    x_train, _, x_test, _ = split(x, y, 0.2, seed=0)
    quality_over_seeds(args, lambda seed: one_seed(seed, cfg, x_train, x_test))
    speed(args, cfg, x_train)


if __name__ == "__main__":
    main()
