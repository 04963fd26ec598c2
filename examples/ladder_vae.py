r"""A Ladder VAE (two stochastic layers) on binarised MNIST, next to the single-layer VAE's figure.

.. math::
    p(x, z_1, z_2) = p(x|z_1)\,p(z_1|z_2)\,p(z_2),\qquad
    q(z_1, z_2|x) = q(z_1|z_2, x)\,q(z_2|x),\quad q(z_1|z_2, x) \propto \hat q(z_1|x)\,p(z_1|z_2)

(`kizuna.models.LadderVAE`; the top-down posterior is a `NormalProduct`, or with ``merge`` NVAE's
residual form :math:`\mathcal N(\mu_p + \Delta\mu(x), (\sigma_p\Delta\sigma(x))^2)`, the full run's
default, with the prior's scale bounded by ``max_prior_scale``). Trained with Adam 1e-3,
batch 100, on the negative ELBO with the KL terms warmed up linearly from 0 to 1 over the first
``warmup`` epochs (Sønderby et al. 2016), optionally with a floor on each layer's KL (``free_nats``),
or on minus the IWAE bound with ``k_train`` samples (5 in the full run, as `examples/iwae.py` trains the
IWAE). With early stopping (the smoke run's default) a tenth of the
training images is held out and the weights with its best ELBO (``k_val = 1``) or IWAE estimate of
:math:`\log p(x)` with ``k_val`` samples are kept, checked every 5 epochs after the warm-up and after the
last epoch; without it every training image is used for ``epochs`` epochs, as `examples/vae.py` trains
the single-layer VAE (the full run's default: 100 epochs, the VAE's 784-400-400 encoder and decoder for the
bottom layer). The held-out
:math:`\log p(x)` is estimated with ``k`` importance samples of :math:`q(z_1, z_2|x)` (IWAE bound;
5,000 in full runs), as `examples/vae.py` reports the single-layer VAE (−95.0 nats on the 1,000 test
images) and `examples/iwae.py` the IWAE (−94.0 on the first 500, reported here as ``test_ll_first_500``).
Every setting can be changed from the command line (``--help``); docs/families.md gives the results,
docs/parity_log.md the runs behind the defaults.

Run: ``python examples/ladder_vae.py`` (MNIST, 4,000 train / 1,000 test) or ``--smoke`` (digits).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import fraction, non_negative_float, non_negative_int, positive_float, positive_int, positive_ints, seed_arg  # noqa: E402
from _common import bernoulli_baseline, binary_images, report  # noqa: E402

from kizuna.formula.expr import Loss  # noqa: E402
from kizuna.losses import ELBO, IWAE  # noqa: E402
from kizuna.metrics import bits_per_dim, log_likelihood  # noqa: E402
from kizuna.models import LadderVAE  # noqa: E402

SMOKE = {"dataset": "digits", "z_dims": [8, 4], "hidden": [128, 64], "depth": 1, "dropout": 0.0, "epochs": 60,
         "warmup": 10, "free_nats": 0.5, "k_train": 1, "early_stopping": True, "k_val": 1, "k": 200, "n_test": 360,
         "merge": "product", "top_down": None, "max_prior_scale": None}
FULL = {"dataset": "mnist", "z_dims": [32, 4], "hidden": [400, 50], "depth": 2, "dropout": 0.1, "epochs": 100,
        "warmup": 0, "free_nats": 1.0, "k_train": 5, "early_stopping": False, "k_val": 100, "k": 5000,
        "n_test": None, "merge": "residual", "top_down": [50], "max_prior_scale": 1.0}


def _objective(m: LadderVAE, cfg: dict, epoch: int) -> Loss:
    """The batch loss of one epoch: the warmed-up, floored negative ELBO, or minus the IWAE bound."""
    if cfg["k_train"] > 1:
        return -IWAE(m.p, m.q, k=cfg["k_train"]).mean()
    weight = min(1.0, (epoch + 1) / cfg["warmup"]) if cfg["warmup"] > 0 else 1.0
    return m.loss(weight, free_nats=cfg["free_nats"]).mean()


def _validation(m: LadderVAE, x_val: torch.Tensor, k_val: int) -> float:
    """The held-out ELBO (``k_val = 1``) or IWAE estimate of :math:`\\log p(x)` with ``k_val`` samples."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        if k_val == 1:
            return ELBO(m.p, m.q).eval({"x": x_val}).mean().item()
        return log_likelihood(m.p, m.q, {"x": x_val}, k=k_val).mean().item()


def _checked(epoch: int, cfg: dict) -> bool:
    """Whether early stopping validates after ``epoch`` (0-based): every 5 epochs once the KL warm-up is over, and
    after the last epoch, so that the trained weights are always a candidate (a run shorter than the warm-up kept
    the initial weights)."""
    warm = cfg["k_train"] > 1 or epoch + 1 >= cfg["warmup"]
    return (warm and (epoch + 1) % 5 == 0) or epoch + 1 == cfg["epochs"]


def train(m: LadderVAE, x_train: torch.Tensor, cfg: dict, seed: int, verbose: bool) -> float:
    """Adam 1e-3, batch 100; returns CPU seconds.

    With ``early_stopping`` the last tenth of ``x_train`` is held out and the weights with its best ELBO
    or, with ``k_val > 1``, IWAE estimate (checked every 5 epochs after the warm-up, and after the last epoch) are
    kept; without it every training image is used for ``epochs`` epochs, as `examples/vae.py` trains.
    """
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(m.parameters(), lr=1e-3)
    n_val = len(x_train) // 10 if cfg["early_stopping"] else 0
    x_fit, x_val = (x_train[:-n_val], x_train[-n_val:]) if n_val else (x_train, None)
    best, best_state = -math.inf, copy.deepcopy(m.state_dict())
    start = time.process_time()
    for epoch in range(cfg["epochs"]):
        m.train()
        loss = _objective(m, cfg, epoch)
        for idx in torch.randperm(len(x_fit), generator=g).split(100):
            optimizer.zero_grad()
            loss.eval({"x": x_fit[idx]}).backward()
            optimizer.step()
        if x_val is not None and _checked(epoch, cfg):
            m.eval()
            val = _validation(m, x_val, cfg["k_val"])
            if val > best:
                best, best_state = val, copy.deepcopy(m.state_dict())
            if verbose:
                print(f"epoch {epoch + 1}: validation {'ELBO' if cfg['k_val'] == 1 else 'log p(x)'} {val:.2f}",
                      flush=True)
    if x_val is not None:
        m.load_state_dict(best_state)
    m.eval()
    return time.process_time() - start


def run(smoke: bool = False, seed: int = 0, dataset: str | None = None, **overrides: object) -> dict[str, float]:
    """Train the Ladder VAE and return the held-out figures (nats per image, bits per pixel).

    ``overrides`` replace entries of the configuration (`FULL` or `SMOKE`), e.g. ``depth=2``.
    """
    cfg = dict(SMOKE if smoke else FULL)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"ladder_vae.run: unknown settings {sorted(unknown)}; known: {sorted(cfg)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg.update(given)
    cfg["dataset"] = dataset or cfg["dataset"]
    ignored = [k for k in ("warmup", "free_nats") if k in given] if cfg["k_train"] > 1 else []
    if ignored:  # the IWAE bound has no per-layer KL to warm up or floor
        raise ValueError(f"ladder_vae: {', '.join('--' + k.replace('_', '-') for k in ignored)} applies to the ELBO "
                         f"objective; with --k-train {cfg['k_train']} the model trains on the IWAE bound: add "
                         "--k-train 1")
    if "k_val" in given and not cfg["early_stopping"]:
        raise ValueError("ladder_vae: --k-val sets the early-stopping estimate; add --early-stopping (this "
                         "configuration trains for --epochs without it)")
    if len(cfg["z_dims"]) == 1:  # one layer (the single-layer VAE): no prior network to size
        cfg["top_down"] = None
    torch.manual_seed(seed)
    x_train, _, x_test, _ = binary_images(cfg["dataset"], seed=seed, n_test=cfg["n_test"])
    dim = x_train.shape[1]
    m = LadderVAE(dim, cfg["z_dims"], cfg["hidden"], depth=cfg["depth"], dropout=cfg["dropout"],
                  merge=cfg["merge"], top_down=cfg["top_down"], max_prior_scale=cfg["max_prior_scale"])
    print(f"generative model: {m.p}\ninference model : {m.q}\nloss            : {_objective(m, cfg, 10**6)}")
    print(f"settings        : {cfg}", flush=True)
    seconds = train(m, x_train, cfg, seed, verbose=not smoke)
    with torch.no_grad():
        elbo = ELBO(m.p, m.q).eval({"x": x_test}).mean().item()
    torch.manual_seed(seed + 1)  # the evaluation draws, as examples/iwae.py
    ll = log_likelihood(m.p, m.q, {"x": x_test}, k=cfg["k"])
    base = bernoulli_baseline(x_train, x_test)
    out = {"test_ll": ll.mean().item(), "test_elbo": elbo, "bits_per_dim": bits_per_dim(ll.mean().item(), dim),
           "baseline_ll": base, "k": float(cfg["k"]), "train_cpu_seconds": seconds}
    if len(x_test) > 500:  # examples/iwae.py evaluates on the first 500 test images
        out["test_ll_first_500"] = ll[:500].mean().item()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="digits, a short run (CI)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--dataset", choices=["digits", "mnist", "fashion"], default=None)
    parser.add_argument("--z-dims", type=positive_ints, help="latent sizes bottom up, e.g. 32,16")
    parser.add_argument("--hidden", type=positive_ints, help="bottom-up widths, e.g. 400,200")
    parser.add_argument("--depth", type=positive_int, help="hidden layers per bottom-up block and prior network")
    parser.add_argument("--dropout", type=fraction, help="dropout after every hidden layer")
    parser.add_argument("--epochs", type=non_negative_int)
    parser.add_argument("--warmup", type=non_negative_int,
                        help="epochs of linear KL warm-up (0: none; ELBO training only)")
    parser.add_argument("--free-nats", type=non_negative_float,
                        help="floor on each layer's KL per image (ELBO training only)")
    parser.add_argument("--k-train", type=positive_int, help="train on the IWAE bound with this many samples (1: ELBO)")
    stopping = parser.add_mutually_exclusive_group()
    stopping.add_argument("--early-stopping", dest="early_stopping", action="store_const", const=True,
                          help="stop on a held-out tenth of the training images (the smoke default)")
    stopping.add_argument("--no-early-stopping", dest="early_stopping", action="store_const", const=False,
                          help="train on all training images for --epochs epochs, as examples/vae.py (the full "
                               "default)")
    parser.add_argument("--k-val", type=positive_int, help="early stopping on the held-out IWAE estimate with this k "
                        "(1: the held-out ELBO)")
    parser.add_argument("--k", type=positive_int, help="importance samples of the held-out log p(x)")
    parser.add_argument("--top-down", type=positive_ints, help="widths of the prior networks p(z_i|z_(i+1)), e.g. 50")
    parser.add_argument("--max-prior-scale", type=positive_float, help="upper bound on the scales of p(z_i|z_(i+1))")
    parser.add_argument("--merge", choices=["product", "residual", "whitened"],
                        help="posterior of the lower layers: precision-weighted product or NVAE's residual form")
    args = vars(parser.parse_args())
    torch.set_num_threads(1)
    report(run(**args))
