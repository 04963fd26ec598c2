"""Time one VAE module update at 1 thread and at torch's default thread count, interleaved, in one run.

Why: torch uses as many intra-op threads as cores by default. On a small model and a machine whose cores
are busy with other work (a shared server, a laptop running a build), the threads wait for each other and
one update can take several times longer than on a single thread. This prints the ratio on this machine
now; docs/performance.md quotes it.

    python bench/threads.py [--rounds 5] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def one_update(threads: int, epochs: int, images: torch.Tensor) -> float:
    """Seconds for one update (``epochs`` epochs) of a fresh VAE module on the digits, at ``threads`` threads."""
    from kizuna import modules as km

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = km.VAE(8, hidden=(128,), epochs=epochs, batch_size=100).connect(km.Observation(images))
    start = time.perf_counter()
    vae.update()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().data / 16.0, dtype=torch.float32)
    default = torch.get_num_threads()
    counts = sorted({1, default})
    times: dict[int, list[float]] = {n: [] for n in counts}
    one_update(1, 1, images)  # warm-up
    for _ in range(args.rounds):
        for n in counts:
            times[n].append(one_update(n, args.epochs, images))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"VAE module update, 1,797 digits, {args.epochs} epochs, {args.rounds} interleaved rounds; "
          f"{os.cpu_count()} cores, load average {load:.1f}")
    for n in counts:
        print(f"  {n} thread(s){' (torch default)' if n == default else ''}: median "
              f"{statistics.median(times[n]):.3f} s, min {min(times[n]):.3f} s")
    if default > 1:
        print(f"  default / one thread: {statistics.median(times[default]) / statistics.median(times[1]):.2f}x")


if __name__ == "__main__":
    main()
