"""The ``kizuna`` command: ``kizuna demo`` runs the robot house (spatial concepts), ``kizuna demo digits``
the VAE+GMM+MLDA digits demo."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="kizuna", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a robot learns the places of a house and their names (spatial concepts); "
                                       "'kizuna demo digits': VAE+GMM+MLDA learns digit classes from images and words")
    demo.add_argument("which", nargs="?", choices=("house", "digits"), default="house",
                      help="house (default): the robot house; digits: the VAE+GMM+MLDA digits demo")
    demo.add_argument("--seed", type=int, default=0, help="seeds the networks and samplers (default 0)")
    demo.add_argument("--out", default="kizuna-demo-out", help="folder for the plot (default kizuna-demo-out/)")
    demo.add_argument("--quick", action="store_true", help="600 digits, fewer epochs and sweeps (a few seconds)")
    args = parser.parse_args(argv)
    if args.command == "demo" and args.which == "digits":
        from kizuna.demo import run_demo

        run_demo(seed=args.seed, out=args.out, quick=args.quick)
    elif args.command == "demo":
        from kizuna.robot_demo import main as robot_demo

        return robot_demo(["--seed", str(args.seed), "--out", args.out] + (["--quick"] if args.quick else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
