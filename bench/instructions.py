"""Training-step cost in CPU instructions (valgrind's callgrind): repeatable on a loaded machine.

Wall-clock ratios (``vae_step.py``) drift by tens of percent when other processes share the cores;
instruction counts do not: the same binary, inputs and steps give the same count whatever else runs.
Each case runs in its own ``valgrind --tool=callgrind`` process; collection is switched on only
around the timed steps (a ten-line C shim compiled here with the system's C compiler calls
callgrind's client requests), so Python's start-up and torch's import are not counted.

Run: ``python bench/instructions.py [--sizes small,mnist] [--steps 20] [--cases ...]``; with ``--family ncsn``,
``ddpm`` or ``dmm`` the steps of ``parity_score.py`` / ``parity_diffusion.py`` / ``parity_dmm.py`` instead of
the VAE's (cases ``hand-written``, ``hand-written fused Adam`` and ``kizuna Model.train``; ``--sizes`` is
ignored). ``--tree DIR`` counts with kizuna imported from another checkout (the benchmark's files and the
examples stay this tree's), e.g. a worktree at the commit before a change, so that one bench gives both sides of
a before/after. ``--family dmm --layers`` counts the DMM loss's forward with kizuna's layers put back one at a
time (``parity_dmm.layered_loss``), then kizuna's own. Each child runs with ``PYTHONHASHSEED=0``, so that a count
repeats. Needs
``valgrind`` and its header ``valgrind/callgrind.h`` (Debian: valgrind), and a C compiler.
Instructions are a proxy for time: they count Python's and torch's work alike, not cache misses or
memory bandwidth, so a ratio of instructions is closest to a ratio of times for small models.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHIM = """#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void cg_stop(void) { CALLGRIND_DUMP_STATS; CALLGRIND_STOP_INSTRUMENTATION; }
"""
SIZES = {"mnist": (784, (512, 512), 64), "small": (64, (256,), 16)}
CASES = ["hand-written", "hand-written fused Adam", "hand-written same kernels", "kizuna Model.train",
         "kizuna validate=True", "kizuna Model.fit"]
BATCH = 128


def build_shim(where: Path) -> Path:
    source, lib = where / "cgshim.c", where / "libcgshim.so"
    source.write_text(SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(source)], check=True)
    return lib


def child(case: str, size: str, steps: int, shim: str, family: str = "vae", layers: bool = False) -> None:
    """Runs inside valgrind: warm up, then ``steps`` steps with collection on."""
    import torch

    sys.path.insert(0, str(HERE))
    import _vae_impls as impls

    torch.set_num_threads(1)
    if family != "vae":
        import _family_steps

        step = _family_steps.dmm(case, forward=True) if layers else _family_steps.FAMILIES[family](case)
        _collect(step, steps, shim)
        return
    d, hidden, z = SIZES[size]
    enc, dec = impls.nets(d, hidden, z, seed=0)
    data = (torch.rand(BATCH * 4, d, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    x = list(data.split(BATCH))
    make = {"hand-written": lambda: impls.hand_step(enc, dec, x),
            "hand-written fused Adam": lambda: impls.hand_fused(enc, dec, x),
            "hand-written same kernels": lambda: impls.hand_same_kernels(enc, dec, x),
            "kizuna Model.train": lambda: impls.kizuna_train(enc, dec, x, z),
            "kizuna validate=True": lambda: impls.kizuna_validated(enc, dec, x, z),
            "hand-written epoch loop": lambda: impls.hand_epoch(enc, dec, data, BATCH),
            "kizuna Model.fit": lambda: impls.kizuna_fit(enc, dec, data, z, BATCH)}[case]
    _collect(make(), steps if "fit" not in case and "epoch" not in case else max(1, steps // 4), shim)


def _collect(step: Any, calls: int, shim: str) -> None:
    for _ in range(3):
        step()
    lib = ctypes.CDLL(shim)
    lib.cg_start()
    for _ in range(calls):
        step()
    lib.cg_stop()


def count(case: str, size: str, steps: int, shim: Path, out: Path, family: str = "vae",
          tree: Path | None = None, layers: bool = False) -> float:
    """Instructions per step of one case (one valgrind run); with ``tree``, kizuna imported from that checkout."""
    prefix = out / f"cg.{re.sub(r'[^a-z]+', '_', case.lower())}.{size}"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={prefix}.%p",
           sys.executable, __file__, "--child", case, "--sizes", size, "--steps", str(steps), "--shim", str(shim),
           "--family", family] + (["--layers"] if layers else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **_import_from(tree)})
    total = 0
    for f in out.glob(f"{prefix.name}.*.1"):  # the dump made by cg_stop (the file without .1: start-up and exit)
        for line in f.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    per_call = 4 if ("fit" in case or "epoch" in case) else 1
    return total / (steps if per_call == 1 else max(1, steps // 4) * per_call)


def _import_from(tree: Path | None) -> dict[str, str]:
    """The environment that makes the child import kizuna from ``tree`` (another checkout, e.g. a worktree at an
    older commit); the benchmark's own files and the examples stay this tree's."""
    if tree is None:
        return {}
    tree = tree.resolve()
    if not (tree / "kizuna" / "__init__.py").is_file():
        sys.exit(f"--tree {tree}: no kizuna package there (give the root of a kizuna checkout)")
    paths = [str(tree), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,mnist")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    parser.add_argument("--family", default="vae", choices=["vae", "ncsn", "ddpm", "dmm", "gan", "wgan-gp"],
                        help="the VAE step (default) or the NCSN / DDPM / DMM / GAN (JS, WGAN-GP) step of the parity "
                             "benches")
    parser.add_argument("--layers", action="store_true",
                        help="with --family dmm: the loss's forward (with gradients) with kizuna's layers put back "
                             "one at a time (parity_dmm.layered_loss), then kizuna's own")
    parser.add_argument("--tree", type=Path, help="count with kizuna (and the examples) from this checkout, "
                        "e.g. a worktree at an older commit: a before/after of a change, by the same bench")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shim", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.sizes, args.steps, args.shim, args.family, args.layers)
        return
    if shutil.which("valgrind") is None:
        sys.exit("needs valgrind (Debian package valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        shim = build_shim(where)
        cases = [c.strip() for c in args.cases.split(",")]
        if args.layers:  # the DMM loss's forward, kizuna's layers put back one at a time
            if args.family != "dmm":
                sys.exit("--layers needs --family dmm")
            sys.path.insert(0, str(HERE))
            import parity_dmm

            cases = ["hand-written", *parity_dmm.LAYERS, "kizuna forward"]
            args.sizes = args.family
        elif args.family != "vae":
            cases = [c for c in cases if c in ("hand-written", "hand-written fused Adam", "kizuna Model.train")]
            if args.family in ("gan", "wgan-gp"):  # also the reference that reports kizuna's value, and kizuna's
                cases.insert(1, "hand-written (value)")  # GAN without it (the careful reference's work)
                cases.append("kizuna data_term=False")
            args.sizes = args.family
        if "kizuna Model.fit" in cases and "hand-written epoch loop" not in cases:
            cases.append("hand-written epoch loop")
        for size in args.sizes.split(","):
            found = {case: count(case, size, args.steps, shim, where, args.family, args.tree, args.layers)
                     for case in cases}
            base = found["hand-written"]
            where_from = f", kizuna from {args.tree}" if args.tree else ""
            what = "per forward of the loss, with gradients" if args.layers else "per step"
            print(f"\n== {size}: instructions {what} ({args.steps} steps, callgrind{where_from}) ==")
            previous = base
            for case, n in found.items():
                if args.layers:
                    print(f"  {case:28s} {n / 1e6:10.3f} M   ratio {n / base:.3f}   {(n - previous) / 1e3:+8.0f} k")
                    previous = n
                    continue
                ref = found["hand-written epoch loop"] if case == "kizuna Model.fit" else base
                print(f"  {case:28s} {n / 1e6:10.2f} M   ratio {n / ref:.3f}"
                      + ("  (vs hand-written epoch loop)" if case == "kizuna Model.fit" else ""))
            if "hand-written fused Adam" in found and "kizuna Model.train" in found:
                same = found["kizuna Model.train"] / found["hand-written fused Adam"]
                print(f"  kizuna Model.train vs hand-written with the same (fused) Adam kernel: ratio {same:.3f}")
            if "hand-written same kernels" in found and "kizuna Model.train" in found:
                same = found["kizuna Model.train"] / found["hand-written same kernels"]
                print("  kizuna Model.train vs hand-written with the same kernels (fused Adam, the Bernoulli "
                      f"formula): ratio {same:.3f}")


if __name__ == "__main__":
    main()
