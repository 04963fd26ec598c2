"""Run every SERKET example over several seeds and print the table of ``docs/serket_examples.md``.

Each example's ``run(seed=...)`` is called for seeds ``0 .. n-1`` in one process, so the parts that
several examples share (a GMM on the latents of a VAE trained alone, MLDA on speech alone, VAE+GMM)
are trained once per seed (see `_serket.cached`). Prints one markdown row per model:
accuracy (Hungarian-matched), ARI and NMI as mean ± sample standard deviation over the seeds, then
the wall time of each example.

Data: SERKET's example files, read from ``--data`` (default ``../shared/data/serket``); they are for
tests and benchmarks and are not shipped with kizuna.

Run: ``python examples/serket_table.py --seeds 5 [--smoke] [--only serket_hmm ...] [--data DIR] [--json FILE]``.
To use both cores, run disjoint seed sets in two processes, each writing its JSON, then print the
merged table: ``--seed-list 0 1 2 --json a.json`` and ``--seed-list 3 4 --json b.json``, then
``--merge a.json b.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402
from _args import output_file, positive_int, seed_arg  # noqa: E402

EXAMPLES = {
    "serket_vae_gmm": "VAE+GMM",
    "serket_vae_gmm_mm": "VAE+GMM+MM",
    "serket_vae_gmm_mlda": "VAE+GMM+MLDA",
    "serket_vae_gmm_mlda_mm": "VAE+GMM+MLDA+MM",
    "serket_mlda_vae": "VAE+GMM+MLDA, objects",
    "serket_mmlda": "mMLDA, objects / motions",
    "serket_hmm": "GMM+MM (HMM)",
}
HEADER = "| example | model | accuracy | ARI | NMI |\n|---|---|---|---|---|"


def table(names: list[str], seeds: int | list[int], smoke: bool, data: str | None, raw: Path | None = None) -> str:
    """Run ``names`` over seeds ``0 .. seeds-1`` (or the listed seeds), printing each example's rows as it
    finishes; returns them all.

    With ``raw``, every seed's metrics are also written there as JSON (``{example: [metrics per seed]}``).
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    rows, times, runs_of = [], [], {}
    print(HEADER, flush=True)
    for name in names:
        module = importlib.import_module(name)
        start = time.time()
        runs = runs_of[name] = [module.run(smoke=smoke, seed=seed, data=data) for seed in seed_list]
        if raw is not None:
            raw.write_text(json.dumps(runs_of, indent=1))
        times.append(f"{name}: {time.time() - start:.0f} s")
        rows.append(S.seed_table(EXAMPLES[name], module.ROWS, runs))
        print(rows[-1], flush=True)
    print("\nwall time per example (" + ("smoke, " if smoke else "") + f"seeds {seed_list}, parts shared across "
          "examples are counted where first trained): " + "; ".join(times))
    return HEADER + "\n" + "\n".join(rows)


def _saved_runs(f: Path) -> dict[str, list[dict[str, float]]]:
    """The runs a ``--json`` file holds (``{example: [{metric: value}, ...]}``); a ValueError naming the file when
    it cannot be read or is not such a file."""
    try:
        saved = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{f}: cannot be read ({error.__class__.__name__}: {error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{f}: not a --json file of this script (invalid JSON: {error})") from None
    if not isinstance(saved, dict) or not all(
            isinstance(runs, list) and all(isinstance(run, dict) for run in runs) for runs in saved.values()):
        raise ValueError(f"{f}: not a --json file of this script (expected {{example: [{{metric: value}}, ...]}})")
    return saved


def merge(files: list[Path]) -> str:
    """The table of the runs saved by several ``--json`` files (their seed sets are concatenated)."""
    runs_of: dict[str, list[dict[str, float]]] = {}
    for f in files:
        for name, runs in _saved_runs(f).items():
            if name not in EXAMPLES:
                raise ValueError(f"{f}: unknown example {name!r}; expected one of {list(EXAMPLES)}")
            keys = [f"{prefix}_{m}" for prefix in importlib.import_module(name).ROWS for m in S.METRICS]
            for i, run in enumerate(runs):
                bad = next((k for k in keys if isinstance(run.get(k), bool)
                            or not isinstance(run.get(k), (int, float)) or not math.isfinite(run[k])), None)
                if bad is not None:
                    raise ValueError(f"{f}: {name}, run {i}: no number for {bad!r} (got {run.get(bad)!r}); "
                                     "not a --json file of this script, or of another version of it")
            runs_of.setdefault(name, []).extend(runs)
    if empty := [n for n, runs in runs_of.items() if not runs]:
        raise ValueError(f"no runs of {', '.join(empty)} in {', '.join(map(str, files))}")
    rows = [S.seed_table(EXAMPLES[n], importlib.import_module(n).ROWS, runs_of[n]) for n in EXAMPLES if n in runs_of]
    counts = ", ".join(f"{n}: {len(runs_of[n])}" for n in EXAMPLES if n in runs_of)
    return HEADER + "\n" + "\n".join(rows) + f"\n\nseeds per example: {counts}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=positive_int, default=5, help="seeds 0 .. n-1 (default 5)")
    parser.add_argument("--smoke", action="store_true", help="the examples' smoke settings")
    parser.add_argument("--only", nargs="+", choices=list(EXAMPLES), default=list(EXAMPLES))
    parser.add_argument("--data", default=None, help=f"SERKET's example data (default {S.DEFAULT_DATA})")
    parser.add_argument("--seed-list", type=seed_arg, nargs="+", default=None, help="run these seeds instead of 0..n-1")
    parser.add_argument("--json", type=output_file, default=None, help="also write every seed's metrics to this file")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="print the table of these --json files and exit (nothing is run)")
    args = parser.parse_args()
    if args.merge:
        try:
            print(merge(args.merge))
        except ValueError as error:
            parser.error(f"--merge: {error}")
        return
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    needs = {"serket_hmm": S.HMM, "serket_mlda_vae": S.OBJECTS, "serket_mmlda": S.OBJECTS}
    S.check_data(parser, args.data, list(dict.fromkeys(f for name in args.only for f in needs.get(name, S.DIGITS))))
    torch.set_num_threads(1)
    start = time.time()
    table(args.only, args.seed_list if args.seed_list else args.seeds, args.smoke, args.data, args.json)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
