"""VQ-VAE, kizuna vs hand-written PyTorch: same encoder, codebook, decoder, prior, data, batches, epochs and seeds.

Stage 1 (the default, ``--stage vq``). kizuna trains stage 1 of the VQ-VAE as examples/vqvae.py builds it
in its smoke configuration (binarised digits, 8 × 8; encoder conv 4×4/2 to 32 channels, conv 3×3, conv
1×1 to 8; a codebook of 16 codes of dimension 8 on the 4 × 4 grid, initialised uniform in ±1/16; decoder
conv 3×3 and a transposed conv 4×4/2 to Bernoulli logits; 15 epochs, batches of 100, Adam 1e-3): the loss
``(-Expectation(q, LogProb(p)) + VQCommitment(q, 0.25)).mean()``, i.e. per image the Bernoulli
reconstruction term summed over pixels plus ``||sg[z_e] - e_k||^2 + 0.25 ||z_e - sg[e_k]||^2`` summed
over the grid and the code dimension (kizuna's codebook is trained by this loss, not by EMA
updates), with `Model.train` (torch's fused Adam). The reference is a hand-written step on deep copies
of the same three modules: nearest code by squared distance, ``z = z_e + (e_k - z_e).detach()``
(straight-through), ``F.binary_cross_entropy_with_logits`` summed over pixels, the two codebook terms
with the same beta, the encoder run once per step; Adam torch's default, or fused with
``--fused-reference``. Training draws no random numbers, so the first-step losses agree exactly and
the two columns differ only by the rounding of the two Adam implementations.
One evaluation code for both (each trained set of modules wrapped in kizuna's `VectorQuantizer` and
the example's `Decoder`): the test reconstruction term ``-log p(x|z(k))`` in nats per image on the 359
held-out images, and the codebook's perplexity (exp of the entropy of the code frequencies over all
test grid positions) and the number of codes used.

Stage 2 (``--stage prior``), the PixelCNN prior over the codes. For each seed stage 1 is trained once,
by kizuna alone as above, and frozen (``requires_grad_(False)``); then the example's prior
(`PixelCNNCategorical`: 16 codes one-hot in, a mask-A 5 × 5 convolution to 64 channels, 5 residual
mask-B layers, 16 logits out per grid position; 15 epochs, batches of 100, Adam 1e-3), built from
the example's initial weights, is trained by kizuna on ``-Expectation(q, LogProb(prior)).mean()``
with `Model.train`, and a deep copy of its network by a hand-written step on the same batches: the
frozen encoder's nearest codes (under ``no_grad``) → one-hot → the network's logits →
``F.cross_entropy`` summed over the grid, mean over the batch. One evaluation code for both trained
networks (each in a `PixelCNNCategorical`, with the same frozen quantiser and decoder): the test
``-log p(k)`` in nats per image and the example's bound ``-log p(x|z(k)) - log p(k)``
(`examples/vqvae.py`'s ``bound_nats``) in nats and bits/dim.

Note: kizuna's stage-1 step once ran the encoder (forward and backward) and the nearest-code search
twice, once in ``Expectation(q, ...)`` and once in ``VQCommitment``; ``VectorQuantizer.encode`` is now
memoised within one evaluation of the loss (docs/families.md, below the parity table). kizuna's step still
builds one-hot codes that the stage-1 loss does not use (``--profile`` lists the operators, ``--split``
compares a plain Adam loop on kizuna's loss with ``Model.train``).

    python bench/parity_vqvae.py                      # 3 seeds, the smoke example's stage 1
    python bench/parity_vqvae.py --fused-reference    # the reference with kizuna's Adam kernel
    python bench/parity_vqvae.py --stage prior        # 3 seeds, the smoke example's prior on frozen codes
    python bench/parity_vqvae.py --quick              # seconds (with --stage prior too)
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
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from _common import binary_images  # noqa: E402
from vqvae import SMOKE, Decoder, Encoder, bound_nats  # noqa: E402

from kizuna.distributions import PixelCNNCategorical  # noqa: E402
from kizuna.distributions.vq import VectorQuantizer  # noqa: E402
from kizuna.losses import Expectation, LogProb, VQCommitment  # noqa: E402
from kizuna.models import Model  # noqa: E402

CFG = {k: SMOKE[k] for k in ("side", "downs", "codes", "dim", "ch", "epochs", "n_test")}
CFG.update({"batch": 100, "lr": 1e-3, "beta": 0.25, "prior_epochs": SMOKE["prior_epochs"], "prior_ch": 64,
            "prior_layers": 5, "prior_kernel": 5})
QUICK = {**CFG, "ch": 8, "epochs": 1, "prior_epochs": 1, "prior_ch": 8, "prior_layers": 1}


def modules(cfg: dict) -> tuple[VectorQuantizer, Decoder]:
    """``q`` and ``p`` in examples/vqvae.py's order of construction (so from its initial weights)."""
    q = VectorQuantizer(Encoder(cfg["side"], cfg["downs"], cfg["ch"], cfg["dim"]), cfg["codes"], cfg["dim"])
    return q, Decoder(cfg["downs"], cfg["ch"], cfg["dim"])


def prior_distribution(cfg: dict) -> PixelCNNCategorical:
    """The example's PixelCNN prior over the code grid (built after ``modules``, as the example does)."""
    grid = cfg["side"] // 2 ** cfg["downs"]
    return PixelCNNCategorical(cfg["codes"], grid, grid, hidden_channels=cfg["prior_ch"],
                               n_layers=cfg["prior_layers"], kernel_size=cfg["prior_kernel"])


def epoch_plan(n: int, epochs: int, batch: int, seed: int) -> list[torch.Tensor]:
    """The row indices of every batch: a fresh permutation each epoch, from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [idx for _ in range(epochs) for idx in torch.randperm(n, generator=g).split(batch)]


def nearest_codes(z_e: torch.Tensor, codebook: nn.Embedding) -> torch.Tensor:
    """Hand-written nearest code of every grid position of ``z_e`` (batch, D, *grid): indices (batch, *grid)."""
    flat = z_e.detach().movedim(1, -1)
    return (flat.unsqueeze(-2) - codebook.weight.detach()).pow(2).sum(-1).argmin(-1)


def kizuna_model(q: VectorQuantizer, p: Decoder, cfg: dict) -> Model:
    """Stage 1 as examples/vqvae.py trains it."""
    loss = (-Expectation(q, LogProb(p)) + VQCommitment(q, cfg["beta"])).mean()
    return Model(loss, distributions=[q, p], optimizer_params={"lr": cfg["lr"]})


class Reference:
    """The hand-written VQ-VAE step on the raw encoder, codebook (``nn.Embedding``) and decoder network."""

    def __init__(self, enc: nn.Module, codebook: nn.Embedding, dec: nn.Module, cfg: dict) -> None:
        self.enc, self.codebook, self.dec, self.beta = enc, codebook, dec, cfg["beta"]
        self.opt = reference_adam([*enc.parameters(), *codebook.parameters(), *dec.parameters()], cfg["lr"])

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        z_e = self.enc(x)  # (batch, D, H, W)
        k = nearest_codes(z_e, self.codebook)
        e = self.codebook(k).movedim(-1, 1)
        z = z_e + (e - z_e).detach()  # straight-through
        rec = F.binary_cross_entropy_with_logits(self.dec(z).flatten(1), x, reduction="none").sum(1)
        vq = (z_e.detach() - e).pow(2).flatten(1).sum(1) + self.beta * (z_e - e.detach()).pow(2).flatten(1).sum(1)
        return (rec + vq).mean()

    def step(self, x: torch.Tensor) -> None:
        self.opt.zero_grad()
        self.loss(x).backward()
        self.opt.step()


def evaluate(enc: nn.Module, codebook: nn.Embedding, dec: nn.Module, x_test: torch.Tensor, cfg: dict
             ) -> dict[str, float]:
    """The same code for both: the modules in kizuna's quantiser and the example's decoder; the test
    reconstruction nats per image, the codebook's perplexity and the codes used."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        q, p = modules(cfg)  # fresh wrappers (their own weights are replaced below)
        q.encoder, q.codebook, p.net = enc, codebook, dec
        s = q.sample({"x": x_test})
        nats = -p.get_log_prob({"x": x_test, "z": s["z"]}).mean().item()
        freq = s["k"].reshape(-1, cfg["codes"]).mean(0)
        entropy = -(freq * freq.clamp_min(1e-12).log()).sum().item()
    return {"test -log p(x|z) (nats)": nats, "codebook perplexity": math.exp(entropy),
            "codes used": float((freq > 0).sum())}


def one_seed(seed: int, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor) -> dict[str, dict[str, float]]:
    """Train both from the same initial weights on the same batches; evaluate both the same way."""
    torch.manual_seed(seed)
    q, p = modules(cfg)
    enc_r, cb_r, dec_r = copy.deepcopy(q.encoder), copy.deepcopy(q.codebook), copy.deepcopy(p.net)
    model, ref = kizuna_model(q, p, cfg), Reference(enc_r, cb_r, dec_r, cfg)
    plan = epoch_plan(len(x_train), cfg["epochs"], cfg["batch"], seed)
    it_k, it_r = iter(plan), iter(plan)
    order = [("kizuna", lambda: model.train({"x": x_train[next(it_k)]})),
             ("reference", lambda: ref.step(x_train[next(it_r)]))]
    seconds = {name: train_timed(len(plan), step) for name, step in (order if seed % 2 == 0 else order[::-1])}
    gap = max((a - b).abs().max().item() for a, b in zip(
        [*q.encoder.parameters(), *q.codebook.parameters(), *p.net.parameters()],
        [*enc_r.parameters(), *cb_r.parameters(), *dec_r.parameters()]))
    print(f"  seed {seed}: largest difference of the trained weights {gap:.3g}")
    return {name: {**evaluate(e, c, d, x_test, cfg), "train seconds": seconds[name]}
            for name, e, c, d in (("kizuna", q.encoder, q.codebook, p.net), ("reference", enc_r, cb_r, dec_r))}


def speed(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor) -> None:
    torch.manual_seed(0)
    q, p = modules(cfg)
    ref = Reference(copy.deepcopy(q.encoder), copy.deepcopy(q.codebook), copy.deepcopy(p.net), cfg)
    model = kizuna_model(q, p, cfg)
    x = x_train[:cfg["batch"]]
    agree(lambda: model.loss_cls.eval({"x": x}), lambda: ref.loss(x),
          [*q.encoder.parameters(), *q.codebook.parameters(), *p.net.parameters()],
          [*ref.enc.parameters(), *ref.codebook.parameters(), *ref.dec.parameters()])

    def k_step() -> None:
        model.train({"x": x})

    def r_step() -> None:
        ref.step(x)

    report_speed(args, k_step, r_step)
    if args.split:
        report_split(args, model, {"x": x}, k_step, r_step, lambda: ref.loss(x))


class PriorReference:
    """The hand-written prior step: the frozen encoder's nearest codes, one-hot, the PixelCNN's logits,
    the cross-entropy summed over the grid."""

    def __init__(self, enc: nn.Module, codebook: nn.Embedding, net: nn.Module, cfg: dict) -> None:
        self.enc, self.codebook, self.net, self.n_codes = enc, codebook, net, cfg["codes"]
        self.opt = reference_adam(net.parameters(), cfg["lr"])

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            k = nearest_codes(self.enc(x), self.codebook)  # (batch, H, W)
        logits = self.net(F.one_hot(k, self.n_codes).movedim(-1, 1).float())  # (batch, K, H, W)
        return F.cross_entropy(logits, k, reduction="none").flatten(1).sum(1).mean()

    def step(self, x: torch.Tensor) -> None:
        self.opt.zero_grad()
        self.loss(x).backward()
        self.opt.step()


def frozen_stage1(seed: int, cfg: dict, x_train: torch.Tensor) -> tuple[VectorQuantizer, Decoder, PixelCNNCategorical]:
    """Stage 1 trained by kizuna as in `one_seed` (same batches), then frozen; and the prior from the
    example's initial weights (built after ``q`` and ``p`` from the same seed)."""
    torch.manual_seed(seed)
    q, p = modules(cfg)
    prior = prior_distribution(cfg)
    model = kizuna_model(q, p, cfg)
    for idx in epoch_plan(len(x_train), cfg["epochs"], cfg["batch"], seed):
        model.train({"x": x_train[idx]})
    for module in (q, p):
        module.requires_grad_(False)
        module.eval()
    return q, p, prior


def prior_model(q: VectorQuantizer, prior: PixelCNNCategorical, cfg: dict) -> Model:
    """Stage 2 as examples/vqvae.py trains it."""
    return Model(-Expectation(q, LogProb(prior)).mean(), distributions=[prior], optimizer_params={"lr": cfg["lr"]})


def evaluate_prior(q: VectorQuantizer, p: Decoder, net: nn.Module, x_test: torch.Tensor, cfg: dict
                   ) -> dict[str, float]:
    """The same code for both trained prior networks (each in a `PixelCNNCategorical`, with the frozen
    quantiser and decoder): the test -log p(k) per image and the example's bound, in nats and bits/dim."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        prior = prior_distribution(cfg)  # a fresh wrapper (its own network is replaced below)
        prior.net = net
        prior_nats = -prior.get_log_prob({"k": q.sample({"x": x_test})["k"]}).mean().item()
        bound = bound_nats(q, p, prior, x_test).mean().item()
    return {"test -log p(k) (nats)": prior_nats, "test bound (nats)": bound,
            "test bound (bits/dim)": bound / (x_test.shape[1] * math.log(2))}


def one_seed_prior(seed: int, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor) -> dict[str, dict[str, float]]:
    """Stage 1 once (kizuna), frozen; the prior trained by kizuna and by the hand-written step from the same
    initial weights on the same batches; both evaluated the same way."""
    q, p, prior = frozen_stage1(seed, cfg, x_train)
    net_r = copy.deepcopy(prior.net)
    model, ref = prior_model(q, prior, cfg), PriorReference(q.encoder, q.codebook, net_r, cfg)
    plan = epoch_plan(len(x_train), cfg["prior_epochs"], cfg["batch"], seed)  # as the example, each stage from `seed`
    it_k, it_r = iter(plan), iter(plan)
    order = [("kizuna", lambda: model.train({"x": x_train[next(it_k)]})),
             ("reference", lambda: ref.step(x_train[next(it_r)]))]
    seconds = {name: train_timed(len(plan), step) for name, step in (order if seed % 2 == 0 else order[::-1])}
    gap = max((a - b).abs().max().item() for a, b in zip(prior.net.parameters(), net_r.parameters()))
    print(f"  seed {seed}: largest difference of the trained prior weights {gap:.3g}")
    return {name: {**evaluate_prior(q, p, net, x_test, cfg), "train seconds": seconds[name]}
            for name, net in (("kizuna", prior.net), ("reference", net_r))}


def speed_prior(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor) -> None:
    """The prior's step on frozen stage-1 modules (their training does not change the step's cost, so
    they keep their initial weights here)."""
    torch.manual_seed(0)
    q, _ = modules(cfg)
    prior = prior_distribution(cfg)
    q.requires_grad_(False)
    q.eval()
    ref = PriorReference(q.encoder, q.codebook, copy.deepcopy(prior.net), cfg)
    model = prior_model(q, prior, cfg)
    x = x_train[:cfg["batch"]]
    agree(lambda: model.loss_cls.eval({"x": x}), lambda: ref.loss(x), prior.net.parameters(), ref.net.parameters())

    def k_step() -> None:
        model.train({"x": x})

    def r_step() -> None:
        ref.step(x)

    report_speed(args, k_step, r_step)
    if args.split:
        report_split(args, model, {"x": x}, k_step, r_step, lambda: ref.loss(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    parser.add_argument("--stage", choices=["vq", "prior"], default="vq",
                        help="vq: stage 1 (encoder, codebook, decoder); prior: the PixelCNN prior on frozen codes")
    parser.add_argument("--epochs", type=int, default=None, help="stage-1 epochs (default: the configuration's)")
    parser.add_argument("--prior-epochs", type=int, default=None,
                        help="the prior's epochs with --stage prior (default: the configuration's)")
    args = parser.parse_args()
    if args.stage == "vq":
        start(args, "VQ-VAE stage 1 (codebook and commitment terms, Bernoulli decoder) on binarised digits: "
                    "kizuna vs hand-written PyTorch")
    else:
        start(args, "VQ-VAE stage 2 (PixelCNN prior over the frozen codes) on binarised digits: "
                    "kizuna vs hand-written PyTorch")
    cfg = dict(QUICK if args.quick else CFG)
    cfg["epochs"] = args.epochs or cfg["epochs"]
    cfg["prior_epochs"] = args.prior_epochs or cfg["prior_epochs"]
    print(f"  configuration: {cfg}")
    x_train, _, x_test, _ = binary_images("digits", seed=0, n_test=cfg["n_test"])
    if args.stage == "vq":
        quality_over_seeds(args, lambda seed: one_seed(seed, cfg, x_train, x_test))
        speed(args, cfg, x_train)
    else:
        quality_over_seeds(args, lambda seed: one_seed_prior(seed, cfg, x_train, x_test))
        speed_prior(args, cfg, x_train)


if __name__ == "__main__":
    main()
