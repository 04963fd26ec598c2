"""The MLDA sweep on each backend of this tree (torch, numba) against the ``lda`` package's, and optionally an
earlier commit's, in one process.

Time per sweep by difference of two fits (1 and ``--hi`` sweeps: set-up cancels), all interleaved with the
order rotating every repeat; with ``--ref`` the earlier sampler is ``kizuna/modules/lda/sampler.py`` at that
revision, loaded from git into a temporary module and put in place of `GibbsChain` for its fits (torch path).
Corpus: `modules.corpus` with
two modalities (300 + 200 features, 30 + 20 tokens per document, 20 planted topics), as in ``bench/modules.py``;
``lda.LDA`` runs on the joined vocabulary (the same tokens).

Run: ``python bench/mlda_sweep_ab.py --n 100000 --hi 4 --repeats 5 [--ref e396d50] [--backends torch,numba]
[--n-blocks 16] [--threads 1] [--quick]`` (numba needs ``kizuna[fast]``; ``--n-blocks 100000000 --backends
numba``: the sequential sampler, compiled).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modules import corpus  # noqa: E402

from kizuna.modules import MLDA  # noqa: E402
from kizuna.modules.lda import algorithms  # noqa: E402


def sampler_at(ref: str) -> type:
    """`GibbsChain` of ``kizuna/modules/lda/sampler.py`` at git revision ``ref``."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "-C", str(root), "show", f"{ref}:kizuna/modules/lda/sampler.py"],
                          check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as folder:  # loaded, then removed: the run leaves no folder behind
        path = Path(folder) / "sampler_ref.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location("sampler_ref", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses (and pickling) look the module up by name
        spec.loader.exec_module(module)

    class Earlier(module.GibbsChain):
        def run(self, *args: object) -> object:  # an earlier run() takes no backend argument
            return super().run(*args[:5])

    return Earlier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="documents")
    parser.add_argument("--hi", type=int, default=4, help="sweeps of the longer fit")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref", default="", help="git revision of an earlier sampler to compare (none by default)")
    parser.add_argument("--backends", default="torch,numba", help="this tree's backends to measure")
    parser.add_argument("--n-blocks", type=int, default=16,
                        help="blocks per sweep of this tree's fits (at least the tokens: the sequential sampler)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="500 documents, one repeat: the smoke test")
    args = parser.parse_args()
    if args.quick:
        args.n, args.hi, args.repeats = 500, 2, 1
    torch.set_num_threads(args.threads)
    logging.getLogger("lda").setLevel(logging.ERROR)
    import lda

    counts = corpus(args.n, (300, 200), (30, 20), seed=1)
    joined = np.hstack(counts)
    current = algorithms.GibbsChain

    def mlda_with(chain: type, backend: str, blocks: int = args.n_blocks):
        def fit(m: int) -> None:
            algorithms.GibbsChain = chain
            try:
                MLDA(20, max_iter=m, doc_topic_prior=0.1, topic_word_prior=0.01, random_state=0,
                     backend=backend, n_blocks=blocks).fit(counts)
            finally:
                algorithms.GibbsChain = current
        return fit

    fits = {f"kizuna {args.ref}": mlda_with(sampler_at(args.ref), "torch", 16)} if args.ref else {}
    fits.update({f"kizuna {b}": mlda_with(current, b) for b in args.backends.split(",")})
    fits["lda.LDA"] = lambda m: lda.LDA(20, n_iter=m, alpha=0.1, eta=0.01, random_state=0, refresh=10**9).fit(joined)
    for fit in fits.values():  # warm-up (the numba kernel's first load)
        fit(1)
    names, times = list(fits), {name: [] for name in fits}
    print(f"N = {args.n} documents, {int(joined.sum())} tokens; sweeps 1 and {args.hi}; {args.repeats} repeats")
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            a = time.perf_counter()
            fits[name](1)
            b = time.perf_counter()
            fits[name](args.hi)
            c = time.perf_counter()
            times[name].append(((c - b) - (b - a)) / (args.hi - 1))
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f}" for k, v in times.items()) + " ms/sweep", flush=True)
    for name in names:
        print(f"{name:18s} median {statistics.median(times[name]) * 1e3:8.0f} ms/sweep")
    for name in names[:-1]:
        ratio = statistics.median(a / b for a, b in zip(times[name], times["lda.LDA"]))
        print(f"{name} / lda.LDA: median over repeats {ratio:.2f}")


if __name__ == "__main__":
    main()
