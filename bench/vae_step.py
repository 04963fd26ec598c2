"""VAE training step: kizuna vs hand-written PyTorch vs Pixyz vs Pyro, eager and compiled.

Two sizes, batch 128, Bernoulli likelihood (the decoder outputs probabilities), analytic KL to
N(0, I), Adam (lr 1e-3), the same initial weights and data for every implementation, a fresh
batch each step:

* ``mnist``: 784-512-512-64 (encoder 784-512-512-2x64, decoder 64-512-512-784);
* ``small``: 64-256-16.

Implementations: hand-written eager PyTorch as users write it (``F.binary_cross_entropy`` on the
decoder's probabilities, the closed-form KL; the baseline), the same step with torch's fused Adam
kernel (``fused=True``, which kizuna's `Model` picks), the same step with the kernels kizuna picks on
a CPU (fused Adam and the Bernoulli formula of ``bench/bernoulli_kernels.py``: against it the ratio
is the formula layer's own cost), kizuna ``Model.train`` (default: the
first evaluation validated), kizuna ``Model.fit`` (per step, one epoch of dict data with shuffling
and per-term logging) next to a hand-written epoch loop doing the same batching, kizuna with every
step validated (``validate=True``), kizuna with
``Model(..., compile=True)``, the hand-written step with ``torch.compile``, Pixyz (its own VAE,
analytic KL) and Pyro (SVI with ``Trace_ELBO``, and ``TraceMeanField_ELBO`` for the analytic
KL); peers that are not installed are skipped with the reason. Cases alternate in interleaved
repeats; the table gives the median time per step and the median ratio to the hand-written
eager step of the same repeat.

Run: ``python bench/vae_step.py [--sizes small,mnist] [--repeats 7] [--steps 50] [--threads 1]``;
``--quick`` is the smoke-test mode (no compilation, a few steps; < 30 s).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
import _vae_impls as impls  # noqa: E402

SIZES = {"mnist": (784, (512, 512), 64), "small": (64, (256,), 16)}
BATCH = 128


def agreement(size: tuple[int, tuple[int, ...], int], x: torch.Tensor) -> float:
    """|loss(kizuna) - loss(hand-written)| on the first step, same weights and same noise."""
    enc, dec = impls.nets(*size, seed=0)
    hand = impls.hand_step(enc, dec, [x])
    kiz = impls.kizuna_train(enc, dec, [x], size[2])
    torch.manual_seed(123)
    a = hand()
    torch.manual_seed(123)
    b = kiz()
    return abs(a - b)


def cases(size: tuple[int, tuple[int, ...], int], x: list[torch.Tensor], data: torch.Tensor, quick: bool
          ) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    enc, dec = impls.nets(*size, seed=0)
    z = size[2]
    found: dict[str, Callable[[], Any]] = {
        "hand-written": impls.hand_step(enc, dec, x),
        "hand-written fused Adam": impls.hand_fused(enc, dec, x),
        "hand-written same kernels": impls.hand_same_kernels(enc, dec, x),
        "kizuna Model.train": impls.kizuna_train(enc, dec, x, z),
        "kizuna validate=True": impls.kizuna_validated(enc, dec, x, z),
        "hand-written epoch loop": impls.hand_epoch(enc, dec, data, BATCH),
        "kizuna Model.fit": impls.kizuna_fit(enc, dec, data, z, BATCH),
    }
    skipped: dict[str, str] = {}
    if quick:
        skipped["compiled cases"] = "skipped in --quick (compilation takes longer than a smoke test)"
    else:
        for name, make in (("hand-written + torch.compile", impls.hand_compiled),
                           ("kizuna compile=True", impls.kizuna_compiled)):
            try:
                found[name] = make(enc, dec, x, z)
            except Exception as err:  # noqa: BLE001 - reported, the rest of the table still runs
                skipped[name] = f"{type(err).__name__}: {err}"
    for name, make in (("Pixyz", impls.pixyz_step), ("Pyro Trace_ELBO", impls.pyro_trace),
                       ("Pyro TraceMeanField_ELBO", impls.pyro_meanfield)):
        try:
            found[name] = make(enc, dec, x, z)
        except ImportError as err:
            skipped[name] = f"not installed ({err.name or err}); see bench/requirements.txt"
    return found, skipped


def run_size(name: str, args: argparse.Namespace) -> None:
    size = SIZES[name]
    d, hidden, z = size
    gen = torch.Generator().manual_seed(0)
    data = (torch.rand(BATCH * args.batches, d, generator=gen) > 0.5).float()
    x = list(data.split(BATCH))  # a fresh batch per step, in turn
    print(f"\n== {name}: {'-'.join(map(str, (d, *hidden, z)))}, batch {BATCH}, Bernoulli decoder, analytic KL, Adam ==")
    diff = agreement(size, x[0])
    print(f"AGREE {name} kizuna vs hand-written, first-step loss on identical weights and noise: "
          f"|diff| = {diff:.3g} {'ok' if diff < 1e-3 else 'MISMATCH'}")
    found, skipped = cases(size, x, data, args.quick)
    for case, why in skipped.items():
        print(f"  skipped {case}: {why}")
    per_call = {"hand-written epoch loop": args.batches, "kizuna Model.fit": args.batches}
    steps = max(1, args.steps)
    timed = {k: v for k, v in found.items()}
    calls = {k: max(1, steps // per_call.get(k, 1)) for k in timed}
    times = _timing.interleaved(timed, args.repeats, calls, warmup=3 if args.quick else 10,
                                 block_warmup=1 if args.quick else 3)
    for k, n in per_call.items():  # an epoch call takes several steps: report per step
        if k in times:
            times[k] = [t / n for t in times[k]]
    print(_timing.table(times, "hand-written"))
    same = _timing.ratios(times, "hand-written fused Adam")
    print(f"  kizuna Model.train vs hand-written with the same (fused) Adam kernel: {same['kizuna Model.train']:.3f}")
    same = _timing.ratios(times, "hand-written same kernels")
    print("  kizuna Model.train vs hand-written with the same kernels (fused Adam, the Bernoulli formula): "
          f"{same['kizuna Model.train']:.3f}")
    r = _timing.ratios(times, "hand-written epoch loop")
    print(f"  kizuna Model.fit vs hand-written epoch loop (same batching): {r['kizuna Model.fit']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _timing.add_common_args(parser, repeats=7, steps=50)
    parser.add_argument("--sizes", default="small,mnist", help="comma-separated: small, mnist")
    parser.add_argument("--batches", type=int, default=10, help="mini-batches per epoch for the fit cases")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.batches = min(args.repeats, 3), min(args.steps, 10), min(args.batches, 5)
    _timing.start(args, "VAE training step (median time per step; ratio to hand-written eager PyTorch)")
    warnings.filterwarnings("ignore", category=UserWarning, module="pyro")
    for name in args.sizes.split(","):
        run_size(name.strip(), args)


if __name__ == "__main__":
    main()
