"""Run Pixyz 0.3.3's own programs against kizuna (imports rewritten) and against Pixyz itself.

What it runs, from a Pixyz source checkout (``git archive v0.3.3`` of masa-su/pixyz):

- the 23 example programs, ``tests/test_example_usage.py`` (each a ``test_run_*`` function, all marked
  ``performance``; they run here, the marker is not deselected);
- the unit tests, ``tests/distributions``, ``tests/losses``, ``tests/models`` (32 test items);
- the tutorial notebooks ``tutorial/English/01-DistributionAPITutorial``, ``02-LossAPITutorial`` (the two API
  tutorials) and ``03-ModelAPITutorial``: their code cells are read from the ``.ipynb`` JSON and run in order
  in one namespace, a cell whose last statement is an expression printing that value as a notebook displays it
  (``_repr_latex_()`` where the object has one, else ``repr``). A cell that raises is recorded and the next
  cells still run.

It copies them into a temporary directory and changes, for both targets alike:

- with ``--target kizuna`` only, the import lines: ``pixyz.distributions`` (and its submodules) ->
  ``kizuna.distributions``, ``pixyz.losses`` (and submodules) -> ``kizuna.losses``, ``pixyz.models`` ->
  ``kizuna.models``, ``pixyz.flows`` -> ``kizuna.flows``, ``pixyz.layers`` -> ``kizuna.nets``,
  ``pixyz.utils`` -> ``kizuna.utils`` (the table of ``docs/porting_from_pixyz.md``); no other line of a
  program is touched;
- for both targets, the one documented change: ``iter(loader).next()`` -> ``next(iter(loader))`` (torch 2's
  data-loader iterators have no ``.next()``);
- for both targets, data: the examples and unit tests download nothing (Pixyz's examples already use two mock
  MNIST / CIFAR-10 items in place of torchvision's datasets). The 03 tutorial downloads MNIST with
  torchvision: its ``from torchvision import ...`` / ``import torchvision`` lines are dropped and the cell that
  builds ``datasets.MNIST`` loaders is replaced by loaders over real MNIST digits from
  ``../shared/data/serket/mnist3000.npz`` (first 512 images to train, next 256 to test, the notebook's batch
  size 256 and loader arguments; pixels in [0, 1], flattened to 784 as the notebook's transform does). The
  00 overview (tensorboardX, matplotlib, MNIST) and 04 Deep Markov Model (a cart-pole data set made with gym)
  tutorials are not run.

CPU: ``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)`` (a conftest for pytest, the preamble of each
tutorial script); the programs' own epochs (2 for the examples, 3 in the 03 tutorial) are kept. The pytest
conftest also seeds numpy's global stream (``np.random.seed(0)``), for both targets: Pixyz's distributions and
Glow examples draw from it unseeded, so their numbers changed from run to run.

Usage (kizuna's venv runs the harness; ``--pixyz-python`` is a venv with ``pixyz==0.3.3`` and the same torch)::

    python3 -m venv pxenv && pxenv/bin/pip install torch==2.13.0 && pxenv/bin/pip install pixyz==0.3.3 \
        pytest tqdm scikit-learn
    git --git-dir=<mirror of masa-su/pixyz> archive v0.3.3 | tar -x -C pixyz-src
    .venv/bin/python bench/pixyz_programs.py pixyz-src --target both --pixyz-python pxenv/bin/python

``--only examples,unit,tutorials`` picks parts, ``-k`` passes a pytest ``-k`` expression, ``--isolate`` runs
each example in its own process (each from Pixyz's seed 1), ``--json`` writes the results and ``--from-json``
prints the table of saved ones. It prints one row a program: kizuna pass/fail (+ the first error line), pixyz
pass/fail, and for programs whose output both targets print, how many of the printed numbers agree (to 4
significant digits) and the largest relative difference (networks' and optimizers' settings left out).

Run of 2026-12-08 (torch 2.13.0 CPU, 1 thread; kizuna 541a833, a ``git archive`` snapshot; Pixyz 0.3.3 from
PyPI; Pixyz's source at tag v0.3.3; ``--target both --isolate``, about 3.5 CPU minutes a target):

- kizuna: examples 23/23, unit tests 30/32, tutorials 3/3 (no cell raised); Pixyz: 23/23, 32/32, 3/3.
- kizuna's two unit-test failures are the documented ``sample_mean`` differences
  (``TestMixtureDistribution::test_sample_mean``: 2/3, the mixture's mean, where Pixyz gives 1.0;
  ``TestRelaxedBernoulli::test_sample_mean``: ``probs`` where Pixyz raises ``NotImplementedError``).
- tutorials' printed numbers: 01 340/340 equal, 02 108/108 equal, 03 6/6 within 6.7e-7 relative (fused Adam).
- examples' printed numbers (each example alone, from seed 1): equal (to 4 digits) in cvae, distributions, gan,
  gmm, hvi, jmvae, jmvae_poe, maximum_likelihood, mvae, real_nvp_toy, vae, vae_model, vae_with_vae_class, vi
  (14); different in glow (``ChannelConv``'s rotation: numpy's stream in Pixyz, torch's in kizuna), m2
  (``RelaxedCategorical``'s likelihood), mmd_vae (``MMD``'s estimator), normalizing_flow_toy (``PlanarFlow``'s
  ``constraint_u`` default: with ``constraint_u=False`` kizuna prints Pixyz's 9.253), real_nvp, real_nvp_cond_,
  real_nvp_cond__, real_nvp_cifar, real_nvp_cond (``Preprocess``'s log-determinant: train losses 784 ln(256/255)
  = 3.07 apart; ``BatchNorm``'s running-statistics convention: test losses) -- each a deliberate difference in
  ``docs/porting_from_pixyz.md`` (checked by number for PlanarFlow and Preprocess, the others by reading the
  programs).
- without ``--isolate`` (the file's own order, one process): the same pass counts; numbers equal through cvae,
  distributions and gan, then different from glow on (glow draws from torch's stream in kizuna only, so every
  later example starts from another torch state).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MNIST_NPZ = REPO.parent / "shared" / "data" / "serket" / "mnist3000.npz"

IMPORT_MAP = [
    (r"pixyz\.distributions(?:\.\w+)*", "kizuna.distributions"),
    (r"pixyz\.losses(?:\.\w+)*", "kizuna.losses"),
    (r"pixyz\.models(?:\.\w+)*", "kizuna.models"),
    (r"pixyz\.flows(?:\.\w+)*", "kizuna.flows"),
    (r"pixyz\.layers(?:\.\w+)*", "kizuna.nets"),
    (r"pixyz\.utils(?:\.\w+)*", "kizuna.utils"),
]
IMPORT_LINE = re.compile(r"^(\s*)(from\s+\S+\s+import\s+.*|import\s+\S+.*)$")
NEXT_CALL = re.compile(r"iter\(([\w.]+)\)\.next\(\)")

TUTORIALS = ["01-DistributionAPITutorial", "02-LossAPITutorial", "03-ModelAPITutorial"]

CONFTEST = '''import numpy as np
import torch
torch.set_num_threads(1)
np.random.seed(0)  # harness: Pixyz's distributions and Glow examples draw from numpy's global stream, unseeded
'''
PYTEST_INI = """[pytest]
markers =
    performance: Pixyz's marker of its example programs
"""

MNIST_CELL = '''# --- harness substitution (bench/pixyz_programs.py): no download, real MNIST digits from a file ---
import numpy as _np
_d = _np.load({npz!r})
_img = torch.from_numpy(_d["image"]).float()
_lab = torch.from_numpy(_d["label"]).long()
_train = torch.utils.data.TensorDataset(_img[:512], _lab[:512])
_test = torch.utils.data.TensorDataset(_img[512:768], _lab[512:768])
kwargs = {{'batch_size': batch_size, 'num_workers': 1, 'pin_memory': True}}
train_loader = torch.utils.data.DataLoader(_train, shuffle=True, **kwargs)
test_loader = torch.utils.data.DataLoader(_test, shuffle=False, **kwargs)
'''

RUNNER = '''import ast, json, sys, traceback, io, contextlib
import torch
torch.set_num_threads(1)
cells = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
results = []
for i, src in enumerate(cells):
    buf = io.StringIO()
    err = None
    try:
        tree = ast.parse(src)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        with contextlib.redirect_stdout(buf):
            exec(compile(tree, "<cell %d>" % i, "exec"), ns)
            if last is not None:
                value = eval(compile(last, "<cell %d>" % i, "eval"), ns)
                if value is not None:
                    shown = value._repr_latex_() if hasattr(value, "_repr_latex_") else repr(value)
                    print(shown)
    except BaseException as e:  # noqa: BLE001
        err = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1]
        buf.write(traceback.format_exc())
    results.append({"cell": i, "out": buf.getvalue(), "error": err})
json.dump(results, open(sys.argv[2], "w"))
'''

FLOAT = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")
# lines of a printed network or optimizer (Pixyz's print(p) / print(model) show them, kizuna's do not):
# module settings (eps=0.8, negative_slope=0.2), shapes, optimizer options (lr: 0.001); and Pixyz's LaTeX
# loss texts (print(model): `- 2.0 \log p(y|x)`), where kizuna prints plain text
SETTINGS = re.compile(r"\b\w+=-?\d|torch\.Size|^\s*(lr|eps|betas|weight_decay|momentum|alpha|lr_decay)\s*:"
                      r"|\\(left|mathbb|log|frac)\b")


def rewrite(text: str, target: str) -> str:
    """The only changes made to Pixyz's code: import lines (kizuna target) and ``iter(x).next()``."""
    out = []
    for line in text.splitlines(keepends=True):
        m = IMPORT_LINE.match(line)
        if target == "kizuna" and m and "pixyz" in line:
            for pat, rep in IMPORT_MAP:
                line = re.sub(pat, rep, line)
        line = NEXT_CALL.sub(r"next(iter(\1))", line)
        out.append(line)
    return "".join(out)


def tutorial_cells(src: Path, name: str, target: str, mnist_npz: Path = MNIST_NPZ) -> list[str]:
    nb = json.loads((src / "tutorial" / "English" / f"{name}.ipynb").read_text())
    cells = []
    for c in nb["cells"]:
        if c["cell_type"] != "code":
            continue
        code = "".join(c["source"])
        if "datasets.MNIST(" in code:
            code = MNIST_CELL.format(npz=str(mnist_npz))
        code = "\n".join(
            ln for ln in code.splitlines()
            if not re.match(r"\s*(from torchvision import|import torchvision)", ln)
        )
        cells.append(rewrite(code, target))
    return cells


def env_for(target: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    if target == "kizuna":
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_pytest(src: Path, work: Path, target: str, python: str, parts: list[str], kexpr: str | None,
               timeout: int, isolate: bool) -> dict[str, dict]:
    tdir = work / target / "tests"
    shutil.copytree(src / "tests", tdir)
    for f in tdir.rglob("*.py"):
        f.write_text(rewrite(f.read_text(), target))
    (tdir / "conftest.py").write_text(CONFTEST)
    (tdir / "pytest.ini").write_text(PYTEST_INI)
    paths = []
    if "examples" in parts:
        paths.append("test_example_usage.py")
    if "unit" in parts:
        paths += ["distributions", "losses", "models"]
    if not paths:
        return {}
    base = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(tdir / "pytest.ini"),
            "--rootdir", str(tdir), "-o", "junit_logging=system-out"]
    runs = []  # (junit xml, pytest arguments)
    if isolate and "examples" in parts:
        src_text = (tdir / "test_example_usage.py").read_text()
        for name in re.findall(r"^def (test_run_\w+)", src_text, flags=re.M):
            runs.append((tdir / f"report-{name}.xml", [f"test_example_usage.py::{name}"]))
        paths = [p for p in paths if p != "test_example_usage.py"]
    if paths:
        runs.append((tdir / "report.xml", paths))
    results: dict[str, dict] = {}
    log = []
    for xml, args in runs:
        cmd = base + [f"--junitxml={xml}", *args] + (["-k", kexpr] if kexpr else [])
        proc = subprocess.run(cmd, cwd=tdir, env=env_for(target), capture_output=True, text=True,
                              timeout=timeout)
        log.append(" ".join(args) + "\n" + proc.stdout + proc.stderr)
        if not xml.exists():
            results[" ".join(args)] = {"ok": False, "out": "",
                                       "error": ((proc.stdout + proc.stderr).strip().splitlines() or ["?"])[-1]}
            continue
        results.update(read_junit(xml))
    (work / f"{target}-pytest.log").write_text("\n".join(log))
    return results


def read_junit(xml: Path) -> dict[str, dict]:
    results = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        cls = case.get("classname", "").split(".")
        name = "/".join([c for c in cls if c not in ("tests",)] + [case.get("name", "")])
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skipped = case.find("skipped")
        out_el = case.find("system-out")
        err = None
        if bad is not None:
            msg = (bad.get("message") or bad.text or "").strip().splitlines()
            err = msg[0] if msg else "failed"
        results[name] = {"ok": bad is None and skipped is None, "error": err,
                         "out": out_el.text if out_el is not None and out_el.text else "",
                         "time": float(case.get("time", 0))}
    return results


def run_tutorials(src: Path, work: Path, target: str, python: str, timeout: int,
                  mnist_npz: Path = MNIST_NPZ) -> dict[str, dict]:
    tdir = work / target / "tutorials"
    tdir.mkdir(parents=True)
    runner = tdir / "_runner.py"
    runner.write_text(RUNNER)
    results = {}
    for name in TUTORIALS:
        cells = tutorial_cells(src, name, target, mnist_npz)
        cj, rj = tdir / f"{name}.cells.json", tdir / f"{name}.out.json"
        cj.write_text(json.dumps(cells))
        (tdir / f"{name}.py").write_text("\n\n# ---- cell ----\n".join(cells))
        proc = subprocess.run([python, str(runner), str(cj), str(rj)], cwd=tdir, env=env_for(target),
                              capture_output=True, text=True, timeout=timeout)
        if not rj.exists():
            results[f"tutorial/{name}"] = {"ok": False, "error": proc.stderr.strip().splitlines()[-1:],
                                           "out": "", "cells": []}
            continue
        cres = json.loads(rj.read_text())
        errs = [f"cell {c['cell']}: {c['error']}" for c in cres if c["error"]]
        results[f"tutorial/{name}"] = {"ok": not errs, "error": errs[0] if errs else None,
                                       "errors": errs, "cells": cres,
                                       "out": "".join(c["out"] for c in cres)}
    return results


def numbers(text: str) -> list[float]:
    """The numbers a program printed (values, losses), leaving out networks' and optimizers' settings."""
    lines = [ln for ln in (text or "").splitlines() if not SETTINGS.search(ln)]
    return [float(x) for x in FLOAT.findall("\n".join(lines))]


def compare(a: dict, b: dict) -> str:
    """Printed numbers of one program on both targets: agreeing count / compared, largest relative difference."""
    if "cells" in a and "cells" in b and a["cells"] and b["cells"]:
        pairs = [(numbers(x["out"]), numbers(y["out"])) for x, y in zip(a["cells"], b["cells"])]
    else:
        pairs = [(numbers(a.get("out", "")), numbers(b.get("out", "")))]
    same = total = 0
    worst = 0.0
    ragged = 0
    for na, nb in pairs:
        if not na and not nb:
            continue
        if len(na) != len(nb):
            ragged += 1
        for x, y in zip(na, nb):
            total += 1
            rel = abs(x - y) / max(abs(x), abs(y), 1e-12)
            worst = max(worst, rel)
            same += rel < 5e-4 or abs(x - y) < 1e-6
    if total == 0:
        return "-"
    s = f"{same}/{total} agree, max rel {worst:.2g}"
    if ragged:
        s += f" ({ragged} output(s) with different counts)"
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pixyz_src", type=Path, help="a Pixyz source checkout (v0.3.3)")
    ap.add_argument("--target", choices=["kizuna", "pixyz", "both"], default="both")
    ap.add_argument("--pixyz-python", default=None, help="python of a venv with pixyz==0.3.3 (pixyz target)")
    ap.add_argument("--kizuna-python", default=sys.executable)
    ap.add_argument("--only", default="examples,unit,tutorials")
    ap.add_argument("-k", dest="kexpr", default=None)
    ap.add_argument("--timeout", type=int, default=3000, help="seconds for each pytest / tutorial run")
    ap.add_argument("--mnist-npz", type=Path, default=MNIST_NPZ,
                    help="the MNIST digits the 03 tutorial trains on (default ../shared/data/serket/mnist3000.npz)")
    ap.add_argument("--isolate", action="store_true",
                    help="each example program in its own pytest process (each starts from Pixyz's seed 1, so "
                         "one example's different draws do not shift the next ones' numbers)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="work here (kept) instead of a temp dir")
    ap.add_argument("--from-json", type=Path, nargs="+", default=None,
                    help="print the table of earlier runs' --json files (merged) instead of running")
    args = ap.parse_args()
    if args.from_json:
        res = {}
        for f in args.from_json:
            for t, r in json.loads(f.read_text()).items():
                res.setdefault(t, {}).update(r)
        table(res, [t for t in ("kizuna", "pixyz") if t in res])
        return
    parts = args.only.split(",")
    targets = ["kizuna", "pixyz"] if args.target == "both" else [args.target]
    if "pixyz" in targets and not args.pixyz_python:
        ap.error("--pixyz-python is needed for the pixyz target")
    work = (args.keep or Path(tempfile.mkdtemp(prefix="pixyz_programs_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.pixyz_src = args.pixyz_src.resolve()
    res: dict[str, dict[str, dict]] = {}
    for t in targets:
        py = args.kizuna_python if t == "kizuna" else args.pixyz_python
        r = run_pytest(args.pixyz_src, work, t, py, parts, args.kexpr, args.timeout, args.isolate)
        if "tutorials" in parts:
            r.update(run_tutorials(args.pixyz_src, work, t, py, args.timeout, args.mnist_npz))
        res[t] = r
    table(res, targets)
    print(f"work dir: {work}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


def table(res: dict[str, dict[str, dict]], targets: list[str]) -> None:
    names = list(dict.fromkeys(n for t in targets for n in res[t]))
    width = max([len(n) for n in names] + [10])
    print(f"{'program':<{width}}  " + "  ".join(f"{t:<6}" for t in targets) + "  numbers / first error")
    for n in names:
        cols, notes = [], []
        for t in targets:
            r = res[t].get(n)
            cols.append("-" if r is None else ("pass" if r["ok"] else "FAIL"))
            if r is not None and not r["ok"]:
                notes.append(f"[{t}] {r['error']}")
        if len(targets) == 2 and n in res["kizuna"] and n in res["pixyz"]:
            c = compare(res["kizuna"][n], res["pixyz"][n])
            if c != "-":
                notes.insert(0, c)
        print(f"{n:<{width}}  " + "  ".join(f"{c:<6}" for c in cols) + "  " + " | ".join(notes))
    for t in targets:
        groups: dict[str, list[int]] = {}
        for n, r in res[t].items():
            g = ("examples" if n.startswith("test_example_usage") else
                 "tutorials" if n.startswith("tutorial/") else "unit tests")
            groups.setdefault(g, [0, 0])
            groups[g][0] += r["ok"]
            groups[g][1] += 1
        print(f"{t}: " + ", ".join(f"{g} {p}/{m}" for g, (p, m) in groups.items()))


if __name__ == "__main__":
    main()
