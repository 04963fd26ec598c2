"""Argument types shared by the examples' command lines: a bad value is a usage error before anything runs.

The examples import this file with ``sys.path`` pointed at ``examples/``; nothing in the library imports it.

* `seed_arg`: an integer from 0 to `SEED_MAX` = 2**32 - 1, the range of scikit-learn's ``random_state`` and
  numpy's legacy seeds, which several examples pass it to, leaving room for the seeds they derive from it
  (``seed + 1000`` for torch, whose seeds end at 2**64 - 1); a larger one crashed after training.
* `wide_seed_arg`: an integer from 0 to 2**64 - 1, the ``kizuna`` command's own seed type (`kizuna.cli`), for an
  example that passes its seeds to torch and kizuna only.
* `positive_int`: an integer ≥ 1 (epochs, steps, sweeps, numbers of seeds where 0 would run nothing).
* `non_negative_int`: an integer ≥ 0 (where 0 is meaningful, e.g. an untrained stage).
* `positive_ints`: a comma-separated list of integers ≥ 1 (layer widths, e.g. ``32,16``).
* `non_negative_float`, `positive_float`, `fraction`: a finite number ≥ 0, > 0, or in [0, 1) (NaN and inf refused).
* `output_file`: a file to write (``--out``, ``--json``): its folder exists and is writable, and it is not a folder,
  checked before the work whose result it saves (a typo in the folder lost the first run's result); the file itself
  is not created or touched.
* `output_folder`: a folder to write into that exists or can be created (``--dump``), the ``kizuna`` command's own
  check (`kizuna.cli`; `kizuna.cli.make_folder` creates it).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from kizuna.cli import _folder as output_folder
from kizuna.cli import _seed as wide_seed_arg

__all__ = ["SEED_MAX", "fraction", "non_negative_float", "non_negative_int", "output_file", "output_folder",
           "positive_float", "positive_int", "positive_ints", "seed_arg", "wide_seed_arg"]

SEED_MAX = 2**32 - 1


def seed_arg(text: str) -> int:
    """A seed: an integer from 0 to `SEED_MAX` (a usage error otherwise, before anything runs)."""
    value = wide_seed_arg(text)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"invalid seed {value}: give an integer from 0 to 2**32 - 1 ({SEED_MAX}), "
                                         "the range of scikit-learn's random_state")
    return value


def output_file(text: str) -> Path:
    """A file the example writes (appends to or replaces): a usage error unless its folder exists and is writable
    and it is not itself a folder (or an existing file that cannot be written). Only checked; nothing is created."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: it is a folder (give a file name)")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"cannot write {text}: the file is not writable")
        return path
    folder = Path(os.path.abspath(path)).parent
    if not folder.exists():
        raise argparse.ArgumentTypeError(f"cannot write {text}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: the folder {folder} is not writable")
    return path


def _integer(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give {what}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"invalid value {value}: give {what}")
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1 (a usage error otherwise)."""
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (a usage error otherwise)."""
    return _integer(text, 0, "a non-negative integer")


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of integers of at least 1 (a usage error otherwise)."""
    return [_integer(v, 1, "positive integers separated by commas, e.g. 32,16") for v in text.split(",")]


def _finite(text: str, least: float, strict: bool, below: float, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give {what}") from None
    if not (math.isfinite(value) and (value > least if strict else value >= least) and value < below):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give {what}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0 (a usage error otherwise; NaN would pass a comparison with 0)."""
    return _finite(text, 0.0, False, math.inf, "a finite number >= 0")


def positive_float(text: str) -> float:
    """A finite number above 0 (a usage error otherwise)."""
    return _finite(text, 0.0, True, math.inf, "a finite number > 0")


def fraction(text: str) -> float:
    """A number in [0, 1) (a usage error otherwise), e.g. a dropout rate."""
    return _finite(text, 0.0, False, 1.0, "a number in [0, 1)")
