"""The Bernoulli log-mass from probabilities: torch's cross-entropy kernel against kizuna's formula.

A decoder that outputs probabilities is scored by :math:`x \\log p + (1 - x) \\log(1 - p)`. Written the
usual way, that is ``-F.binary_cross_entropy(p, x, reduction="none")``; torch's CPU kernels of that
operator (forward and backward) are not vectorised. kizuna's `Bernoulli` computes the same numbers on a
CPU as ``lerp(log1p(-p), log(p), x)`` (`kizuna.distributions.families.bernoulli_log_prob_from_probs`),
and uses the fused kernel elsewhere. This script times, per batch of 784-pixel rows:

* ``forward+backward``: the row sums' gradient with respect to the decoder's pre-activations (a
  training step's share: sigmoid, clamp, log-mass, sum);
* ``forward, no gradient``: the row sums alone (an importance-weighted likelihood estimate's share);

for torch.distributions' ``Bernoulli(probs=...).log_prob``, ``F.binary_cross_entropy`` (the baseline)
and kizuna's two formulas, interleaved, and prints each one's ratio to the baseline and the largest
difference of its row sums from the baseline's.

Run: ``python bench/bernoulli_kernels.py [--rows 128,1000] [--repeats 7] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import distributions as D

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

from kizuna.distributions.families import bernoulli_log_prob_from_probs  # noqa: E402

PIXELS = 784


def formulas() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Per-entry log-mass from (probabilities, values), by each implementation."""
    return {
        "F.binary_cross_entropy": lambda p, x: -F.binary_cross_entropy(p, x, reduction="none"),
        "torch.distributions": lambda p, x: D.Bernoulli(probs=p, validate_args=False).log_prob(x),
        "kizuna, CPU formula (lerp)": lambda p, x: bernoulli_log_prob_from_probs(p, x, fused=False),
        "kizuna, fused kernel": lambda p, x: bernoulli_log_prob_from_probs(p, x, fused=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _timing.add_common_args(parser, repeats=7, steps=20)
    parser.add_argument("--rows", default="128,1000", help="batch sizes (rows of 784 pixels)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats, args.steps = "64", 2, 3
    _timing.start(args, __doc__.splitlines()[0])
    gen = torch.Generator().manual_seed(0)
    for rows in (int(r) for r in args.rows.split(",")):
        pre = (torch.randn(rows, PIXELS, generator=gen) * 2).requires_grad_()  # unsaturated: no clamp acts
        x = (torch.rand(rows, PIXELS, generator=gen) < 0.3).float()
        reference = formulas()["F.binary_cross_entropy"](torch.sigmoid(pre), x).sum(-1).detach()
        train: dict[str, Callable[[], object]] = {}
        score: dict[str, Callable[[], object]] = {}
        diffs = {}
        for name, f in formulas().items():
            def step(f: Callable = f, pre: torch.Tensor = pre, x: torch.Tensor = x) -> None:
                f(torch.sigmoid(pre), x).sum(-1).sum().backward()

            def evaluate(f: Callable = f, pre: torch.Tensor = pre, x: torch.Tensor = x) -> torch.Tensor:
                with torch.no_grad():
                    return f(torch.sigmoid(pre), x).sum(-1)

            train[name], score[name] = step, evaluate
            diffs[name] = float((evaluate() - reference).abs().max())
        for what, cases in (("forward+backward", train), ("forward, no gradient", score)):
            times = _timing.interleaved(cases, args.repeats, args.steps, warmup=3)
            print(f"\n{rows} rows x {PIXELS} pixels, {what}:")
            print(_timing.table(times, "F.binary_cross_entropy",
                                notes={n: f"max |row sum - baseline| {d:.2g}" for n, d in diffs.items()}))


if __name__ == "__main__":
    main()
