"""The ``kizuna`` command: ``kizuna demo`` trains a VAE on scikit-learn's digits."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kizuna", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a VAE on scikit-learn's 8x8 digits and report log-likelihoods")
    demo.add_argument("--epochs", type=int, default=60)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--k", type=int, default=1000, help="importance samples for the log-likelihood")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from kizuna.demo import run_demo

        run_demo(epochs=args.epochs, seed=args.seed, k=args.k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
