"""Checks shared by the tests of several graph modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kizuna.modules import ClassModule, Graph, load_module, save_module


class PriorSource(ClassModule):
    """A test parent: a fixed class prior (rows x classes) sent down to its children that receive a ``prior``, and
    sent up as its own ``posterior``."""

    accepts = ("posterior",)

    def __init__(self, prior: Any, name: str | None = None) -> None:
        super().__init__(prior.shape[1], name=name)
        self.prior = prior

    def _update(self, ctx: Any, forward: Any, backward: Any) -> tuple[Any, dict]:
        self.posterior = self.prior
        down = {c: self.message("prior", self.prior, receiver=c) for c in self.children if "prior" in c.receives}
        return self.message("posterior", self.prior), down


def loaded_optimiser_takes_the_modules_lr(build: Callable[[float], Any], path: Path) -> None:
    """After a load the optimiser trains at the loading module's ``lr``, not the saved one's, for a fresh module and a
    trained one alike, with the saved moments kept; with the same ``lr`` nothing changes. ``build(lr)``: a module with
    a default network and that learning rate, connected to its data."""
    saved = build(1e-3)
    Graph([saved]).fit(1, seed=0)
    save_module(saved, path)
    trained = build(0.5)
    Graph([trained]).fit(1, seed=1)
    for module in (build(0.5), trained):
        load_module(module, path)
        assert module.lr == 0.5 and [group["lr"] for group in module.optimizer.param_groups] == [0.5]
        assert module.optimizer.state  # the saved moments are kept
    same = build(1e-3)
    load_module(same, path)
    assert [group["lr"] for group in same.optimizer.param_groups] == [1e-3]


def serket_vae_gmm_mlda_graph() -> Graph:
    """SERKET's VAE + GMM + MLDA on a few random rows (image -> VAE -> GMM -> MLDA <- speech): the graph the render
    tests draw."""
    import numpy as np

    from kizuna import modules as km

    rng = np.random.default_rng(0)
    image = km.Observation(rng.random((6, 4)), name="image")
    speech = km.Observation(rng.integers(0, 3, (6, 5)).astype(float), name="speech")
    vae = km.VAE(2, hidden=(4,), epochs=1, name="vae").connect(image)
    gmm = km.GMM(2, name="gmm").connect(vae)
    return Graph([km.MLDA(2, name="mlda").connect(speech, gmm)])


# ------------------------------------------------------------------ peak memory of a script (Linux)
PEAK_PRELUDE = r"""
import gc, json, sys, warnings
import numpy as np, torch
torch.set_num_threads(1); warnings.simplefilter("ignore")

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

def peak(fn):
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = status("VmRSS")
    fn()
    return status("VmHWM") - base
"""

needs_peak_rss = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.access("/proc/self/clear_refs",
                                                                                          os.W_OK),
                                    reason="peak RSS is read from /proc (Linux)")


def peak_memory(script: str, *args: str) -> dict[str, float]:
    """Run `PEAK_PRELUDE` + ``script`` (which prints one JSON dict, its last line, of `peak(fn)` results) in a fresh
    interpreter on this checkout, one thread, and return that dict."""
    import kizuna

    root = str(Path(kizuna.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", PEAK_PRELUDE + script, *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
