r"""Denoising diffusion probabilistic model (Ho et al. 2020, arXiv:2006.11239), written as its formula.

.. math::
    p_\theta(x_0) = \int p(x_T) \prod_{t=2}^T p_\theta(x_{t-1}|x_t)\, p_\theta(x_0|x_1)\, dx_{1:T},
    \qquad q(x_t|x_0) = \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t) I)

trained on the simplified loss :math:`\mathbb E_{u(t)}\mathbb E_{q(x_t|x_0)}\|\epsilon - \epsilon_\theta(x_t, t)\|^2`
and evaluated with the variational bound :math:`L_T + \sum_t L_{t-1} + L_0` (`diffusion_bound`):
term by term over every ``t`` on the first ``n_exact`` test images (``test_bpd``), and with one
uniform ``t`` per image on the whole test set (``test_bpd_sampled_t``, unbiased but noisier).
Pixels are scaled to ``[-1, 1]``; :math:`p_\theta(x_0|x_1)` is the discretised Gaussian over the
data's grey levels (17 for the digits, 256 for Fashion-MNIST), so the bound is a code length for
the discrete images, reported in bits per dimension. Linear schedule :math:`\beta_t` from
:math:`10^{-4}` to 0.02, ``T = 1000``, :math:`\sigma_t^2 = \beta_t`; the noise predictor is an MLP of
the image and a sinusoidal embedding of ``t``, or with ``--net unet`` a small U-Net (`kizuna.nets.UNet`, Ho et
al.'s layout scaled down: 16 channels at 8×8 and 32 at 4×4 for the digits), which gives a much better bound for the
same steps at about twenty times the cost of a step on a CPU.

References for the figures: the uniform code :math:`\log_2(\text{levels})` and one independent
categorical per pixel fitted to the training images (add-one smoothing). Sample quality: a
classifier two-sample test (C2ST) between held-out images and samples rounded to the grey levels.

Run: ``python examples/diffusion.py`` (Fashion-MNIST) or ``--smoke`` (scikit-learn digits); ``--net unet`` for the
U-Net, ``--steps N`` to change the number of training steps, ``--variance learned`` for Nichol & Dhariwal's
learned variances trained with :math:`L_{hybrid}` (`kizuna.losses.hybrid_diffusion_loss`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import positive_int, seed_arg  # noqa: E402
from _common import GREY_LEVELS, images  # noqa: E402

from kizuna.distributions import DDPM, DiffusionDecoder, DiffusionReverse, DiffusionSchedule  # noqa: E402
from kizuna.losses import diffusion_bound, hybrid_diffusion_loss, simple_diffusion_loss  # noqa: E402
from kizuna.metrics import classifier_two_sample_test  # noqa: E402
from kizuna.models import Model  # noqa: E402
from kizuna.nets import UNet  # noqa: E402

SMOKE = {"dataset": "digits", "hidden": 256, "steps": 800, "batch": 128, "lr": 2e-3, "n_exact": 64, "n_eval": 150}
FULL = {"dataset": "fashion", "hidden": 1024, "steps": 20000, "batch": 128, "lr": 5e-4, "n_exact": 300, "n_eval": 1000}
# the U-Net of --net unet: (C, H, W), the first resolution's width and the widths' multiples per resolution
UNETS = {"digits": ((1, 8, 8), 16, (1, 2)), "fashion": ((1, 28, 28), 32, (1, 2, 2))}


class EpsNet(nn.Module):
    """:math:`\\epsilon_\\theta(x_t, t)`: an MLP of ``x_t`` and a sinusoidal embedding of ``t``."""

    def __init__(self, x_dim: int, hidden: int, n_freq: int = 16, out_dim: int | None = None) -> None:
        super().__init__()
        self.register_buffer("freq", torch.exp(-math.log(1000.0) * torch.arange(n_freq) / n_freq))
        self.net = nn.Sequential(nn.Linear(x_dim + 2 * n_freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim or x_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angle = t.to(x.dtype)[:, None] * self.freq
        return self.net(torch.cat([x, angle.sin(), angle.cos()], 1))


def pixel_baseline_bpd(x_train: torch.Tensor, x_test: torch.Tensor, levels: int) -> float:
    """Bits per dimension of one categorical per pixel (add-one smoothing) fitted to the training images."""
    index = lambda x: (x * (levels - 1)).round().long()  # noqa: E731
    counts = torch.ones(x_train.shape[1], levels)
    counts.scatter_add_(1, index(x_train).T, torch.ones(x_train.shape[1], len(x_train)))
    log_probs = (counts / counts.sum(1, keepdim=True)).log()
    return -log_probs.gather(1, index(x_test).T).mean().item() / math.log(2)


def bound_bpd(p: DDPM, x0: torch.Tensor, exact_steps: bool, batch: int = 100) -> tuple[float, float, dict[str, float]]:
    """The bound in bits per dimension: mean over the images, its standard error, and each term's mean."""
    bound = diffusion_bound(p, exact_steps=exact_steps)
    values, terms = [], {}
    with torch.no_grad():
        for i in range(0, len(x0), batch):
            value, parts = bound.eval({"x_0": x0[i:i + batch]}, return_terms=True)
            values.append(value)
            for key, v in parts.items():
                terms[key] = terms.get(key, 0.0) + v.item() * len(value)
    bits = torch.cat(values) / (x0.shape[1] * math.log(2))
    per_dim = {k: v / (len(x0) * x0.shape[1] * math.log(2)) for k, v in terms.items()}
    return bits.mean().item(), bits.std().item() / math.sqrt(len(bits)), per_dim


def eps_net(net: str, dataset: str, x_dim: int, hidden: int, heads: int = 1) -> nn.Module:
    """The noise predictor: ``"mlp"`` (`EpsNet`) or ``"unet"`` (`kizuna.nets.UNet` of the images' shape), with
    ``heads = 2`` returning the learned variances' ``v`` beside ε."""
    if net == "mlp":
        return EpsNet(x_dim, hidden, out_dim=heads * x_dim)
    if net == "unet":
        shape, channels, mults = UNETS[dataset]
        return UNet(shape, channels=channels, channel_mults=mults, out_channels=heads * shape[0])
    raise ValueError(f"unknown noise network {net!r}; choose 'mlp' or 'unet'")


def run(smoke: bool = False, seed: int = 0, dataset: str | None = None, net: str = "mlp",
        steps: int | None = None, schedule: str = "linear", variance: str = "beta") -> dict[str, float]:
    """Train the DDPM; return the test bound (bits/dim), the baselines and the samples' C2ST accuracy."""
    cfg = dict(SMOKE if smoke else FULL)
    cfg["dataset"] = dataset or cfg["dataset"]
    if steps is not None:
        if steps < 1:
            raise ValueError(f"diffusion: steps must be a positive integer, got {steps}")
        cfg["steps"] = steps
    torch.manual_seed(seed)
    x_train, x_test = images(cfg["dataset"], seed)
    levels, x_dim = GREY_LEVELS[cfg["dataset"]], x_train.shape[1]
    schedule = DiffusionSchedule.cosine(1000) if schedule == "cosine" else DiffusionSchedule.linear(1000)
    learned = variance == "learned"
    reverse = DiffusionReverse(eps_net(net, cfg["dataset"], x_dim, cfg["hidden"], 2 if learned else 1), schedule,
                               variance=variance)
    p = DDPM(reverse, [x_dim], decoder=DiffusionDecoder(reverse, bins=levels))
    loss = (hybrid_diffusion_loss(p) if learned else simple_diffusion_loss(reverse)).mean()
    print(f"model : {p}\nloss  : {loss}\nbound : {diffusion_bound(p)}")
    model = Model(loss, distributions=[reverse], optimizer_params={"lr": cfg["lr"]})
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(model.optimizer, cfg["steps"])
    test = x_test * 2 - 1
    untrained = bound_bpd(p, test[:cfg["n_exact"]], exact_steps=False)[0]
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(1, cfg["steps"] + 1):
        batch = x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)] * 2 - 1
        value = model.train({"x_0": batch})
        decay.step()
        if not smoke and step % 1000 == 0:
            print(f"step {step}: simple loss {value:.4f}", flush=True)
    seconds = time.perf_counter() - start
    bpd, se, terms = bound_bpd(p, test[:cfg["n_exact"]], exact_steps=True)
    bpd_all, se_all, _ = bound_bpd(p, test, exact_steps=False)
    n_eval = min(cfg["n_eval"], len(x_test))
    with torch.no_grad():
        samples = (p.sample(batch_n=n_eval)["x_0"].clamp(-1, 1) + 1) / 2
    samples = (samples * (levels - 1)).round() / (levels - 1)
    c2st = classifier_two_sample_test(x_test[:n_eval], samples, seed=seed).accuracy
    return {
        "test_bpd": bpd, "test_bpd_se": se, "test_bpd_sampled_t": bpd_all, "test_bpd_sampled_t_se": se_all,
        "bpd_L_T": terms["L_T"], "bpd_L_1:T-1": terms["L_{1:T-1}"], "bpd_L_0": -terms["-L_0"],
        "untrained_bpd": untrained,
        "pixel_baseline_bpd": pixel_baseline_bpd(x_train, x_test, levels), "uniform_bpd": math.log2(levels),
        "c2st_logistic": c2st, "final_simple_loss": value, "train_seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run on scikit-learn digits")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--dataset", choices=["digits", "fashion"], default=None)
    parser.add_argument("--net", choices=["mlp", "unet"], default="mlp", help="the noise predictor")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="training steps (default: 800 smoke, 20,000 full)")
    parser.add_argument("--schedule", choices=["linear", "cosine"], default="linear",
                        help="Ho et al.'s linear or Nichol & Dhariwal's cosine noise schedule")
    parser.add_argument("--variance", choices=["beta", "posterior", "learned"], default="beta",
                        help="the reverse steps' variances: fixed (beta, posterior) or learned with L_hybrid")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for key, value in run(smoke=args.smoke, seed=args.seed, dataset=args.dataset, net=args.net,
                          steps=args.steps, schedule=args.schedule, variance=args.variance).items():
        print(f"{key}: {value:.4f}")
