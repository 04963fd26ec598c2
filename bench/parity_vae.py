"""VAE, kizuna vs hand-written PyTorch: same networks, data, batches, epochs and seeds.

The smoke configuration of `examples/vae.py` (binarised digits, z 8, MLPs 64-128-128-16 and
8-128-128-64, Bernoulli decoder on probabilities, Normal encoder, batches of 100, Adam 1e-3). kizuna
trains the ELBO as the formula ``(KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()``
with `Model.train` (torch's fused Adam, `kizuna.models.model.build_optimizer`); the reference is the
step as users write it (`_vae_impls.hand_loss`: ``F.binary_cross_entropy`` on the decoder's
probabilities summed over pixels plus the closed-form Gaussian KL) on a copy of the same initial
weights, with torch's default Adam, or the fused kernel with ``--fused-reference`` (then the step
ratio is the formula layer's own cost). Both see the same minibatches in the same order; their
encoder noise comes from one random stream, the second side continuing it (``--same-stream``: both
from the same state, so the two runs differ only by rounding).
One evaluation code for both trained networks, each wrapped in the same kizuna distributions: the
held-out log-likelihood by importance sampling (`kizuna.metrics.log_likelihood`, ``k`` samples) and
the ELBO on 359 test images. The speed section times ``Model.train`` against the reference's step.

    python bench/parity_vae.py            # 3 seeds on binarised digits
    python bench/parity_vae.py --quick    # seconds
    python bench/parity_vae.py --fused-reference   # the reference with kizuna's Adam kernel
"""

from __future__ import annotations

import argparse
import copy
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
from _vae_impls import Decoder, Encoder, hand_loss, nets
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from _common import binary_images, standard_normal  # noqa: E402

from kizuna.losses import ELBO, Expectation, KullbackLeibler, LogProb  # noqa: E402
from kizuna.metrics import log_likelihood  # noqa: E402
from kizuna.models import Model  # noqa: E402

CFG = {"z": 8, "hidden": (128, 128), "epochs": 120, "lr": 1e-3, "batch": 100, "k": 500}
QUICK = {"z": 4, "hidden": (16, 16), "epochs": 2, "lr": 1e-3, "batch": 100, "k": 20}


def kizuna_model(enc: nn.Module, dec: nn.Module, z: int, lr: float) -> tuple[Model, Encoder, Decoder]:
    """The VAE as its formula (examples/vae.py): mean(KL[q(z|x) || p(z)] - E_q[log p(x|z)])."""
    q, p = Encoder(enc), Decoder(dec)  # each holds its own copy of the network
    loss = (KullbackLeibler(q, standard_normal("z", z)) - Expectation(q, LogProb(p))).mean()
    return Model(loss, distributions=[p, q], optimizer_params={"lr": lr}), q, p


def evaluate(enc: nn.Module, dec: nn.Module, x_test: torch.Tensor, cfg: dict, seed: int) -> dict[str, float]:
    """The same code for both trained networks: wrapped in kizuna's Encoder / Decoder, the IWAE
    estimate of log p(x) and the ELBO on the test images."""
    q, p = Encoder(enc), Decoder(dec)
    joint = p * standard_normal("z", cfg["z"])
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        elbo = ELBO(joint, q).eval({"x": x_test}).mean().item()
        ll = log_likelihood(joint, q, {"x": x_test}, k=cfg["k"]).mean().item()
    return {"test log p(x) (IWAE k)": ll, "test ELBO": elbo}


def one_seed(seed: int, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor, same_stream: bool = False
             ) -> dict[str, dict[str, float]]:
    enc, dec = nets(x_train.shape[1], cfg["hidden"], cfg["z"], seed)
    model, q, p = kizuna_model(enc, dec, cfg["z"], cfg["lr"])
    enc_r, dec_r = copy.deepcopy(enc), copy.deepcopy(dec)
    opt_r = reference_adam([*enc_r.parameters(), *dec_r.parameters()], cfg["lr"])
    g = torch.Generator().manual_seed(seed)
    plan = [idx for _ in range(cfg["epochs"]) for idx in torch.randperm(len(x_train), generator=g).split(cfg["batch"])]
    it_k, it_r = iter(plan), iter(plan)

    def k_step() -> None:
        model.train({"x": x_train[next(it_k)]})

    def r_step() -> None:
        opt_r.zero_grad()
        hand_loss(enc_r, dec_r, x_train[next(it_r)]).backward()
        opt_r.step()

    torch.manual_seed(seed)  # the training draws; with --same-stream each side's from the same state
    state = torch.random.get_rng_state()
    seconds = {}
    order = [("kizuna", k_step), ("reference", r_step)]
    for name, step in (order if seed % 2 == 0 else order[::-1]):
        if same_stream:
            torch.random.set_rng_state(state)
        seconds[name] = train_timed(len(plan), step)
    return {name: {**evaluate(e, d, x_test, cfg, seed), "train seconds": seconds[name]}
            for name, e, d in (("kizuna", q.net, p.net), ("reference", enc_r, dec_r))}


def speed(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor) -> None:
    enc, dec = nets(x_train.shape[1], cfg["hidden"], cfg["z"], 0)
    model, q, p = kizuna_model(enc, dec, cfg["z"], cfg["lr"])
    enc_r, dec_r = copy.deepcopy(enc), copy.deepcopy(dec)
    opt_r = reference_adam([*enc_r.parameters(), *dec_r.parameters()], cfg["lr"])
    x = x_train[:cfg["batch"]]
    agree(lambda: model.loss_cls.eval({"x": x}), lambda: hand_loss(enc_r, dec_r, x),
          [*q.net.parameters(), *p.net.parameters()], [*enc_r.parameters(), *dec_r.parameters()])

    def k_step() -> None:
        model.train({"x": x})

    def r_step() -> None:
        opt_r.zero_grad()
        hand_loss(enc_r, dec_r, x).backward()
        opt_r.step()

    report_speed(args, k_step, r_step)
    if args.split:
        report_split(args, model, {"x": x}, k_step, r_step, lambda: hand_loss(enc_r, dec_r, x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    parser.add_argument("--same-stream", action="store_true",
                        help="both sides draw their training noise from the same random state (default: one "
                             "stream, the second side continuing it, as the other parity scripts)")
    args = parser.parse_args()
    start(args, "VAE (Bernoulli decoder, Normal encoder) on binarised digits: kizuna vs hand-written PyTorch")
    cfg = QUICK if args.quick else CFG
    x_train, _, x_test, _ = binary_images("digits", seed=0, n_test=360)
    quality_over_seeds(args, lambda seed: one_seed(seed, cfg, x_train, x_test, args.same_stream))
    speed(args, cfg, x_train)


if __name__ == "__main__":
    main()
