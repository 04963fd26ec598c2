"""The ``kizuna`` command: ``kizuna demo`` runs an integrated model (VAE+GMM+MLDA) on scikit-learn's digits."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
kizuna: deep generative models written as probabilistic formulas, and integrated models
connected from small ones (VAE, GMM, LDA/MLDA, Markov models) that learn from each other.

Run "kizuna demo" to see an integrated model learn without labels, "kizuna COMMAND --help"
for a command's options. Documentation: README.md and docs/ in the repository."""

DEMO_DESCRIPTION = """\
SERKET's VAE+GMM+MLDA, built with kizuna.modules, learns the classes of scikit-learn's 1,797
8x8 digits from two modalities without labels: the images and a synthetic "spoken word"
modality. Five sweeps of mutual inference; the parts are also trained alone for comparison.

Prints the accuracy of the integrated model next to its parts and saves a figure
(OUT/latent_space.png): accuracy of each model, their confusion matrices side by side, and
the VAE's latent space coloured by digit and by matched cluster.

Takes 30 s to a minute on one CPU core (--quick: 600 digits, 10 to 20 s). Needs the demo
extra: pip install -e ".[demo]" (scikit-learn, matplotlib)."""


def _version() -> str:
    from kizuna import __version__

    return f"kizuna {__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kizuna`` command (plain-text help, one sub-command per task)."""
    parser = argparse.ArgumentParser(prog="kizuna", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    demo = sub.add_parser("demo", help="an integrated model learns digit classes from images and words, "
                                       "without labels (30 s to a minute)",
                          description=DEMO_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--seed", type=int, default=0, help="seeds the networks and samplers (default 0)")
    demo.add_argument("--out", default="kizuna-demo-out", help="folder for the figure (default kizuna-demo-out)")
    demo.add_argument("--quick", action="store_true", help="600 digits, fewer epochs and sweeps (10 to 20 s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status.

    Without a command it prints the help and returns 0.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        from kizuna.demo import run_demo

        run_demo(seed=args.seed, out=args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
