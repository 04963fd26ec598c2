"""The VAE+GMM+MLDA+MM graph: time per mutual-inference iteration, split per module, as N grows.

The integrated model of ``examples/serket_vae_gmm_mlda_mm.py`` (SERKET's digits example with a Markov
model on top) built with `kizuna.modules`, on synthetic data shaped like SERKET's ``mnist3000``:
images N×784 in [0, 1] (ten prototypes, pixels flipped and blurred by noise) and spoken-digit
histograms N×2400 (about 190 counts a row over ten class distributions), the classes in the order
0, 1, ..., 9, 0, ... (what the MM learns)::

    image -> VAE -> GMM -> MLDA <- speech,   MLDA -> MM

Per update, by default, the example's full settings (`examples/_serket.py` ``FULL``): the VAE trains 40
epochs in batches of 500, the GMM runs 50 blocked Gibbs sweeps, the MLDA 30 collapsed Gibbs sweeps
(weights [200, 20] tokens a sample), the MM 10 Baum-Welch iterations. Each iteration updates every
module once, children first (`kizuna.modules.Graph.update`); the first iteration also builds the
networks and the Gibbs chains, so the table shows it apart from the median of the later ones. There is
no reference implementation of the whole graph to compare with (SERKET is not packaged); the slope is the
least-squares fit of log(time per iteration) against log(N), 1 being linear.

Run: ``python bench/graph.py [--quick] [--full] [--iters 3] [--threads 1]`` (``--full`` adds N = 10^5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine_line  # noqa: E402
from modules import slope  # noqa: E402

from kizuna import modules as km  # noqa: E402

MODULES = ("vae", "gmm", "mlda", "mm")


def mnist_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images N×784 in [0, 1], speech counts N×2400, labels N = 0, 1, ..., 9, 0, ...)."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 10
    field = rng.normal(size=(10, 28, 28))
    for _ in range(3):  # blur: neighbouring pixels of a prototype agree, as strokes do
        field = (field + np.roll(field, 1, 1) + np.roll(field, 1, 2) + np.roll(field, -1, 1)
                 + np.roll(field, -1, 2)) / 5
    protos = (field > np.quantile(field, 0.87, axis=(1, 2), keepdims=True)).reshape(10, 784).astype(np.float32)
    flips = rng.random((n, 784), dtype=np.float32) < 0.05
    image = np.clip(np.abs(protos[label] - flips) * 0.9 + rng.random((n, 784), dtype=np.float32) * 0.1, 0, 1)
    words = rng.dirichlet(np.full(2400, 0.02), 10)
    counts = rng.poisson(190, n)
    speech = np.zeros((n, 2400), dtype=np.float32)
    for c in range(10):  # one multinomial draw per class block of rows
        rows = np.flatnonzero(label == c)
        speech[rows] = rng.multinomial(counts[rows], words[c]).astype(np.float32)
    return image.astype(np.float32), speech, label


def build(n: int, args: argparse.Namespace, seed: int = 0) -> tuple[km.Graph, dict[str, km.Module]]:
    """The graph of ``examples/serket_vae_gmm_mlda_mm.py`` on `mnist_like` data."""
    image, speech, label = mnist_like(n, seed)
    torch.manual_seed(seed)
    vae = km.VAE(18, hidden=(128,), epochs=args.vae_epochs, batch_size=500, lr=1e-3, name="vae").connect(
        km.Observation(image, name="image"))
    gmm = km.GMM(10, category=label, max_iter=args.gmm_sweeps, name="gmm").connect(vae)
    mlda = km.MLDA(10, weights=[200.0, 20.0], category=label, max_iter=args.mlda_sweeps, name="mlda").connect(
        km.Observation(speech, name="speech"), gmm)
    mm = km.MM(category=label, name="mm").connect(mlda)
    return km.Graph([mm]), {"vae": vae, "gmm": gmm, "mlda": mlda, "mm": mm}


def run(n: int, args: argparse.Namespace) -> list[dict[str, float]]:
    """Seconds per module for each of ``args.iters`` mutual-inference iterations (observations take none)."""
    graph, named = build(n, args)
    ctx = graph.context(seed=0)  # the seeded generator and strategy fit(n_iter=...) passes to every module
    names = {id(m): name for name, m in named.items()}
    out = []
    for i in range(args.iters):
        times = dict.fromkeys(MODULES, 0.0)
        for m in graph.modules:
            begin = time.perf_counter()
            m.update(ctx.at(i))
            if id(m) in names:
                times[names[id(m)]] += time.perf_counter() - begin
        out.append(times)
    mlda = named["mlda"]
    print(f"  N={n}: MLDA accuracy after {args.iters} iteration(s) {mlda.accuracy:.3f} (a sanity check, not a result)")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--iters", type=int, default=3, help="mutual-inference iterations per N")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="N = 300 and 1,000 with light settings (< 30 s)")
    parser.add_argument("--full", action="store_true", help="add N = 10^5")
    parser.add_argument("--vae-epochs", type=int, default=40)
    parser.add_argument("--gmm-sweeps", type=int, default=50)
    parser.add_argument("--mlda-sweeps", type=int, default=30)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.iters, args.vae_epochs, args.gmm_sweeps, args.mlda_sweeps = 2, 2, 5, 5
    sizes = [300, 1000] if args.quick else [10**3, 10**4] + ([10**5] if args.full else [])
    print("VAE+GMM+MLDA+MM (kizuna.modules): seconds per mutual-inference iteration, split per module")
    print(f"machine: {machine_line()}")
    print(f"per update: VAE {args.vae_epochs} epochs (batch 500), GMM {args.gmm_sweeps} Gibbs sweeps, "
          f"MLDA {args.mlda_sweeps} sweeps (weights [200, 20]), MM 10 Baum-Welch iterations; "
          f"{args.iters} iteration(s) per N")
    begin = time.perf_counter()
    results = {n: run(n, args) for n in sizes}
    header = f"{'N':>7s} {'iteration':>10s} " + " ".join(f"{m + ' s':>9s}" for m in MODULES) + f" {'total s':>9s}"
    print("\n" + header)
    later: dict[int, dict[str, float]] = {}
    for n, its in results.items():
        first = its[0]
        rest = its[1:] or its
        later[n] = {m: statistics.median(t[m] for t in rest) for m in MODULES}
        for label, row in (("first", first), ("later" if len(its) > 1 else "(only)", later[n])):
            cells = " ".join(f"{row[m]:9.3f}" for m in MODULES)
            print(f"{n:7d} {label:>10s} {cells} {sum(row.values()):9.3f}")
        shares = " ".join(f"{m} {later[n][m] / sum(later[n].values()):.0%}" for m in MODULES)
        print(f"{'':7s} {'share':>10s} {shares}")
    if len(sizes) > 1:
        ns = list(later)
        slopes = {m: slope(ns, [later[n][m] for n in ns]) for m in MODULES}
        total = slope(ns, [sum(later[n].values()) for n in ns])
        print(f"{'slope':>18s} " + " ".join(f"{slopes[m]:9.2f}" for m in MODULES) + f" {total:9.2f}"
              f"   (log time vs log N, later iterations, N {min(ns)}-{max(ns)})")
    print(f"\n({time.perf_counter() - begin:.0f} s)")


if __name__ == "__main__":
    main()
