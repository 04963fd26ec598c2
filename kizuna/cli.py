"""The ``kizuna`` command: ``kizuna demo`` runs an integrated model (VAE+GMM+MLDA) on scikit-learn's digits."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="kizuna", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="VAE+GMM+MLDA learns digit classes from images and words, without labels; "
                                       "prints the accuracy table and saves a latent-space plot")
    demo.add_argument("--seed", type=int, default=0, help="seeds the networks and samplers (default 0)")
    demo.add_argument("--out", default="kizuna-demo-out", help="folder for the plot (default kizuna-demo-out/)")
    demo.add_argument("--quick", action="store_true", help="600 digits, fewer epochs and sweeps (a few seconds)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from kizuna.demo import run_demo

        run_demo(seed=args.seed, out=args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
