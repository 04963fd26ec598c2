"""The ``kizuna`` command: ``kizuna demo`` runs the robot house (spatial concepts), ``kizuna demo digits``
the VAE+GMM+MLDA digits demo."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

DESCRIPTION = """\
kizuna: deep generative models written as probabilistic formulas, and integrated models
connected from small ones (VAE, GMM, LDA/MLDA, Markov models) that learn from each other.

Run "kizuna demo" to see an integrated model learn without labels, "kizuna COMMAND --help"
for a command's options. Documentation: README.md and docs/ in the repository."""

DEMO_DESCRIPTION = """\
"kizuna demo" (house): a simulated robot learns the six places of a house and their names from
noisy positions, utterances and views (GMM + SpatialConcept), prints the integrated model against
each part alone and saves a map of the learned places and the learned-vs-true confusion to OUT/.

"kizuna demo digits": SERKET's VAE+GMM+MLDA, built with kizuna.modules, learns the classes of scikit-learn's 1,797
8x8 digits from two modalities without labels: the images and a synthetic "spoken word"
modality. Five sweeps of mutual inference; the parts are also trained alone for comparison.

Prints the accuracy of the integrated model next to its parts and saves a figure
(OUT/demo.png): accuracy of each model, their confusion matrices side by side, and
the VAE's latent space coloured by digit and by matched cluster.

Takes 20 to 40 s at one thread on a shared 2-core machine (--quick: 600 digits, 10 to 20 s). Needs the demo
extra: pip install -e ".[demo]" (scikit-learn, matplotlib)."""


def _version() -> str:
    from kizuna import __version__

    return f"kizuna {__version__}"


SEED_MAX = 2**64 - 1  # the largest seed torch.manual_seed takes (an unsigned 64-bit integer); numpy takes any


def _seed(text: str) -> int:
    """A seed argument: an integer from 0 to `SEED_MAX` (a usage error otherwise, before anything runs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: give a non-negative integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {value}: give a non-negative integer")
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"invalid seed {value}: give an integer from 0 to 2**64 - 1 ({SEED_MAX})")
    return value


def _folder(text: str) -> str:
    """An output folder: an existing writable folder, or one that can be created (checked before training, not after).

    Only checked: argparse calls this for ``--help``, for a usage error and for the default too, so nothing is
    created here; `make_folder` creates it when the command runs.
    """
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"the folder {text} is not writable")
        return text
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists() and parent != parent.parent:  # the nearest existing folder above it
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create the folder {text}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot create the folder {text}: {parent} is not writable")
    return text


def make_folder(parser: argparse.ArgumentParser, text: str) -> None:
    """Create the output folder ``text`` (checked by `_folder`) when the command runs; a usage error if it cannot."""
    try:
        Path(text).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"cannot create the folder {text}: {err.strerror or err}")


DEMO_OPTIONS = frozenset({"--seed", "--out", "--quick", "--words"})


DEMO_VALUE_OPTIONS = frozenset({"--seed", "--out", "--words"})  # the demo's options that take a value


def demo_option(word: str) -> str | None:
    """The demo option that ``word`` (its part before any "=") names, as the demo's parser reads it: the full name, or
    an abbreviation, a prefix of exactly one of its options (``--se`` for ``--seed``; ``--help`` counted, so ``--``
    and ``--h`` name none); None if it names no demo option.

    >>> demo_option("--se=3"), demo_option("--q"), demo_option("--"), demo_option("3")
    ('--seed', '--quick', None, None)
    """
    name = word.split("=")[0]
    if name in DEMO_OPTIONS:
        return name
    if not name.startswith("--") or name == "--":
        return None
    matches = [option for option in (*DEMO_OPTIONS, "--help") if option.startswith(name)]
    return matches[0] if len(matches) == 1 and matches[0] in DEMO_OPTIONS else None


def _spelled_out(word: str) -> str:
    """``word`` with an abbreviated demo option written in full (``--se=3`` gives ``--seed=3``)."""
    option = demo_option(word)
    return word if option is None else option + word[len(word.split("=")[0]):]


def command_first(argv: list[str]) -> list[str]:
    """``argv`` with the command (``demo`` and its ``house`` / ``digits``) moved before the options typed ahead of it,
    their abbreviations written in full: ``--se 3 demo digits`` gives ``demo digits --seed 3``; without ``demo``,
    ``demo`` is put first."""
    i, before = 0, []
    while i < len(argv) and argv[i] != "demo":  # skip the options (and their values) typed before the command
        option = _spelled_out(argv[i])
        takes_value = option in DEMO_VALUE_OPTIONS and i + 1 < len(argv) \
            and demo_option(argv[i + 1]) is None  # (not "--out=x": one item; "--out --quick": no value)
        # an option and its value as one item, "--out=-x", so that a value beginning with "-" reads as a value
        before.append(f"{option}={argv[i + 1]}" if takes_value and argv[i + 1].startswith("-") else option)
        if takes_value and not argv[i + 1].startswith("-"):
            before.append(argv[i + 1])
        i += 2 if takes_value else 1
    if i >= len(argv):
        return ["demo", *before]
    end = i + 2 if i + 1 < len(argv) and argv[i + 1] in ("house", "digits") else i + 1
    return [*argv[i:end], *before, *argv[end:]]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kizuna`` command (plain-text help, one sub-command per task)."""
    parser = argparse.ArgumentParser(prog="kizuna", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    demo = sub.add_parser("demo", help="a robot learns the places of a house and their names without labels; "
                                       "'kizuna demo digits': digit classes from images and words",
                          description=DEMO_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("which", nargs="?", choices=("house", "digits"), default="house",
                      help="house (default): the robot house (kizuna.robot_demo); digits: the VAE+GMM+MLDA demo")
    demo.add_argument("--seed", type=_seed, default=0,
                      help="an integer from 0 to 2**64 - 1: seeds the simulated house and every sampler (house), the "
                           "networks and samplers (digits); default 0")
    demo.add_argument("--out", type=_folder, default="kizuna-demo-out",
                      help="folder for the figures (created if missing; default kizuna-demo-out)")
    demo.add_argument("--quick", action="store_true", help="a quick run: 150 events (house); 600 digits, fewer "
                                                           "epochs and sweeps (digits, 10 to 20 s)")
    demo.add_argument("--words", choices=("clean", "phonemes"), default="clean",
                      help="house: the utterances as clean word counts (default) or as noisy phoneme strings "
                           "segmented into words by a WordSegmenter with its default prior (prior_mode='sir'); the "
                           "place names' lift the README quotes is the one-name model's: python examples/"
                           "robot_house.py --words phonemes --prior-mode name --type-moves 20 (docs/robotics.md)")
    demo.set_defaults(command_parser=demo)  # its usage errors show the demo's usage line
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status.

    Without a command it prints the help and returns 0.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    option = demo_option(argv[0]) if argv else None  # (argparse said "invalid choice: '3' (choose from 'demo')";
    if option is not None:  # an abbreviation such as --se too, which the demo's parser takes after the command)
        parser.error(f"{option} is an option of the demo; put it after the command: "
                     f"{shlex.join(['kizuna', *command_first(argv)])}")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo" and args.which == "digits" and args.words != "clean":
        args.command_parser.error("--words applies to the house demo, not to 'kizuna demo digits'")
    if args.command == "demo":
        make_folder(args.command_parser, args.out)
    if args.command == "demo" and args.which == "digits":
        from kizuna.demo import run_demo

        run_demo(seed=args.seed, out=args.out, quick=args.quick)
    elif args.command == "demo":
        from kizuna.robot_demo import main as robot_demo

        # one item per option, "--out=VALUE": a value beginning with "-" (--out=-dashout) is not read as an option
        return robot_demo([f"--seed={args.seed}", f"--out={args.out}", f"--words={args.words}"]
                          + (["--quick"] if args.quick else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
