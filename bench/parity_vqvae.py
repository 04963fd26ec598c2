"""VQ-VAE, kizuna vs hand-written PyTorch: same encoder, codebook, decoder, data, batches, epochs and seeds.

kizuna trains stage 1 of the VQ-VAE as examples/vqvae.py builds it in its smoke configuration
(binarised digits, 8 × 8; encoder conv 4×4/2 to 32 channels, conv 3×3, conv 1×1 to 8; a codebook of
16 codes of dimension 8 on the 4 × 4 grid, initialised uniform in ±1/16; decoder conv 3×3 and a
transposed conv 4×4/2 to Bernoulli logits; 15 epochs, batches of 100, Adam 1e-3): the loss
``(-Expectation(q, LogProb(p)) + VQCommitment(q, 0.25)).mean()``, i.e. per image the Bernoulli
reconstruction term summed over pixels plus ``||sg[z_e] - e_k||^2 + 0.25 ||z_e - sg[e_k]||^2`` summed
over the grid and the code dimension (kizuna's codebook is trained by this loss, not by EMA
updates), with `Model.train` (torch's fused Adam). The reference is a hand-written step on deep copies
of the same three modules: nearest code by squared distance, ``z = z_e + (e_k - z_e).detach()``
(straight-through), ``F.binary_cross_entropy_with_logits`` summed over pixels, the two codebook terms
with the same beta, the encoder run once per step; Adam torch's default, or fused with
``--fused-reference``. Training draws no random numbers, so the first-step losses agree exactly and
the two columns differ only by the rounding of the two Adam implementations (and of the encoder's
second pass in kizuna's step, below).
One evaluation code for both (each trained set of modules wrapped in kizuna's `VectorQuantizer` and
the example's `Decoder`): the test reconstruction term ``-log p(x|z(k))`` in nats per image on 360
held-out images, and the codebook's perplexity (exp of the entropy of the code frequencies over all
test grid positions) and the number of codes used. Stage 2, the PixelCNN prior over the codes (and
so the example's bound ``-log p(x|z(k)) - log p(k)``), is left out: it trains a separate network on
frozen codes and is not part of the VQ step compared here.

Note: kizuna's step runs the encoder (forward and backward) and the nearest-code search twice, once in
``Expectation(q, ...)`` (sampling z) and once in ``VQCommitment`` (which calls ``q.encode`` again),
and builds one-hot codes the loss does not use; the hand-written step does each once (``--profile``
lists the operators, ``--split`` shows a plain Adam loop on kizuna's loss as slow as ``Model.train``).

    python bench/parity_vqvae.py                      # 3 seeds, the smoke example's stage 1
    python bench/parity_vqvae.py --fused-reference    # the reference with kizuna's Adam kernel
    python bench/parity_vqvae.py --quick              # seconds
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
from vqvae import SMOKE, Decoder, Encoder  # noqa: E402

from kizuna.distributions.vq import VectorQuantizer  # noqa: E402
from kizuna.losses import Expectation, LogProb, VQCommitment  # noqa: E402
from kizuna.models import Model  # noqa: E402

CFG = {k: SMOKE[k] for k in ("side", "downs", "codes", "dim", "ch", "epochs", "n_test")}
CFG.update({"batch": 100, "lr": 1e-3, "beta": 0.25})
QUICK = {**CFG, "ch": 8, "epochs": 1}


def modules(cfg: dict) -> tuple[VectorQuantizer, Decoder]:
    """``q`` and ``p`` in examples/vqvae.py's order of construction (so from its initial weights)."""
    q = VectorQuantizer(Encoder(cfg["side"], cfg["downs"], cfg["ch"], cfg["dim"]), cfg["codes"], cfg["dim"])
    return q, Decoder(cfg["downs"], cfg["ch"], cfg["dim"])


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
        flat = z_e.detach().movedim(1, -1)
        k = (flat.unsqueeze(-2) - self.codebook.weight.detach()).pow(2).sum(-1).argmin(-1)
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
    g = torch.Generator().manual_seed(seed)
    plan = [idx for _ in range(cfg["epochs"]) for idx in torch.randperm(len(x_train), generator=g).split(cfg["batch"])]
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
    agree(lambda: model.loss_cls.eval({"x": x}), lambda: ref.loss(x))

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
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the configuration's)")
    args = parser.parse_args()
    start(args, "VQ-VAE stage 1 (codebook and commitment terms, Bernoulli decoder) on binarised digits: "
                "kizuna vs hand-written PyTorch")
    cfg = dict(QUICK if args.quick else CFG)
    cfg["epochs"] = args.epochs or cfg["epochs"]
    print(f"  configuration: {cfg}")
    x_train, _, x_test, _ = binary_images("digits", seed=0, n_test=cfg["n_test"])
    quality_over_seeds(args, lambda seed: one_seed(seed, cfg, x_train, x_test))
    speed(args, cfg, x_train)


if __name__ == "__main__":
    main()
