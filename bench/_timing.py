"""Timing helpers shared by the benchmark scripts: machine line, interleaved repeats, median ratios.

Every case is timed in blocks: each repeat runs one block of every case, in an order that
rotates from repeat to repeat, so that load on a shared machine and slow drift (thermal,
other processes) hit every case alike. A case's figure is the median over repeats of its
seconds per call; its ratio is the median over repeats of (case / baseline) within the same
repeat, which cancels most of the drift between repeats.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """One line naming the machine: CPU, torch version, threads (and GPU when one is used)."""
    line = f"{cpu_model()}; torch {torch.__version__}; {torch.get_num_threads()} thread(s)"
    if torch.cuda.is_available():
        line += f"; CUDA device {torch.cuda.get_device_name()}"
    return line


def add_common_args(parser: argparse.ArgumentParser, repeats: int = 7, steps: int = 100) -> None:
    """``--repeats``, ``--steps``, ``--threads``, ``--quick`` (the smoke-test mode)."""
    parser.add_argument("--repeats", type=int, default=repeats, help="interleaved repeats (median over them)")
    parser.add_argument("--steps", type=int, default=steps, help="timed calls per block")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="a short run (< 30 s) for smoke tests")


def start(args: argparse.Namespace, title: str) -> None:
    """Set the thread count and print the title and the machine line."""
    torch.set_num_threads(args.threads)
    print(title)
    print(f"machine: {machine_line()}")


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work so that a timer reads finished work (no-op on CPU)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], Any], calls: int, warmup: int = 3,
                     clock: Callable[[], float] = time.perf_counter) -> float:
    """Mean time of ``fn()`` over ``calls`` calls, after ``warmup`` untimed calls: wall time, or
    ``clock`` (e.g. ``time.thread_time``: this thread's CPU time, which other processes on a shared
    machine disturb less than the wall clock, for one-thread CPU work only)."""
    for _ in range(warmup):
        fn()
    sync()
    begin = clock()
    for _ in range(calls):
        fn()
    sync()
    return (clock() - begin) / calls


def interleaved(cases: Mapping[str, Callable[[], Any]], repeats: int, calls: int | Mapping[str, int],
                warmup: int = 20, block_warmup: int = 3,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of every case (``clock`` as in `seconds_per_call`), one block per case per
    repeat, in a rotating order.

    ``calls``: timed calls per block (one number, or one per case). Every case first gets
    ``warmup`` untimed calls (allocator, lazy initialisation, compilation).
    """
    names = list(cases)
    per = {n: calls if isinstance(calls, int) else calls[n] for n in names}
    for name in names:
        for _ in range(warmup):
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(seconds_per_call(cases[name], per[name], block_warmup, clock))
    return times


def ratios(times: Mapping[str, list[float]], baseline: str) -> dict[str, float]:
    """Median over repeats of ``case / baseline`` measured in the same repeat."""
    base = times[baseline]
    return {name: statistics.median(t / b if b else math.nan for t, b in zip(ts, base)) for name, ts in times.items()}


def table(times: Mapping[str, list[float]], baseline: str, unit: str = "ms", scale: float = 1e3,
          notes: Mapping[str, str] | None = None) -> str:
    """A text table: median time per call and median ratio to ``baseline`` for every case."""
    r = ratios(times, baseline)
    width = max(len(n) for n in times) + 2
    lines = [f"  {'implementation':{width}s} {unit + '/step':>10s}  {'ratio':>6s}  (vs {baseline}; median of "
             f"{len(times[baseline])} interleaved repeats)"]
    for name, ts in times.items():
        note = f"  {notes[name]}" if notes and name in notes else ""
        lines.append(f"  {name:{width}s} {statistics.median(ts) * scale:10.3f}  {r[name]:6.3f}{note}")
    return "\n".join(lines)


def paired(case: Callable[[], Any], baseline: Callable[[], Any], pairs: int, warmup: int = 30,
           trim: float = 0.2) -> tuple[float, float, float, float]:
    """One call of ``case`` and one of ``baseline``, alternating call by call (the order flipped at every pair),
    each timed by this thread's CPU time: a slow spell of the machine (another virtual machine on the same host
    is invisible to a guest's CPU clock) lasts many calls and so hits both sides of a pair alike, where blocks of
    calls (`interleaved`) put it on one side. Returns (the trimmed mean seconds per call of each, the median of
    the per-pair ratios, the ratio of the trimmed means); ``trim`` is the fraction cut from each end. For one-thread
    CPU work (the thread's clock does not see other threads or a GPU)."""
    if pairs < 1:
        raise ValueError(f"paired: pairs must be at least 1, got {pairs}")
    if not 0 <= trim < 0.5:
        raise ValueError(f"paired: trim is the fraction cut from each end, in [0, 0.5), got {trim}")
    for _ in range(warmup):
        case()
        baseline()
    clock = time.thread_time_ns
    mine: list[int] = []
    theirs: list[int] = []
    for i in range(pairs):
        for fn, out in ((case, mine), (baseline, theirs)) if i % 2 == 0 else ((baseline, theirs), (case, mine)):
            begin = clock()
            fn()
            out.append(clock() - begin)

    def trimmed(values: list[int]) -> float:
        values = sorted(values)
        cut = int(len(values) * trim)
        return statistics.mean(values[cut:len(values) - cut]) / 1e9

    median = statistics.median(a / b for a, b in zip(mine, theirs) if b > 0)
    mean_mine, mean_theirs = trimmed(mine), trimmed(theirs)
    return mean_mine, mean_theirs, median, mean_mine / mean_theirs
