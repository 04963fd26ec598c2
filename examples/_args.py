"""Argument types shared by the examples' command lines: a bad value is a usage error before anything runs.

The examples import this file with ``sys.path`` pointed at ``examples/``; nothing in the library imports it.

* `seed_arg`: an integer from 0 to 2**64 - 1, the ``kizuna`` command's own seed type (`kizuna.cli`).
* `positive_int`: an integer ≥ 1 (epochs, steps, sweeps, numbers of seeds where 0 would run nothing).
* `non_negative_int`: an integer ≥ 0 (where 0 is meaningful, e.g. an untrained stage).
"""

from __future__ import annotations

import argparse

from kizuna.cli import _seed as seed_arg

__all__ = ["non_negative_int", "positive_int", "seed_arg"]


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
