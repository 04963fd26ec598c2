"""Every benchmark script runs: its quick mode (seconds) exits 0 and prints what it measures, and each parity bench's
first-step check between kizuna and the hand-written reference agrees. No time is asserted (speed is measured by the
scripts, not by tests). Slow (about 1.5 minutes for all of them on one CPU thread): run with ``pytest -m slow``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY = sorted(p.name for p in (ROOT / "bench").glob("parity_*.py"))
OTHERS = ["vae_step.py", "likelihood.py", "bernoulli_kernels.py", "robots.py", "mlda_sweep_ab.py"]


def _run(args: list[str]) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", PARITY)
def test_parity_bench_quick_runs_and_its_first_step_agrees(script: str) -> None:
    out = _run([f"bench/{script}", "--quick"])
    assert "step" in out and "ratio" in out, out[-2000:]
    diffs = re.findall(r"AGREE.*?\|diff\| = ([-+0-9.e]+)", out)
    assert diffs, out[-2000:]  # every parity bench checks its first step
    for diff in diffs:
        assert float(diff) < 1e-4, out[-2000:]  # the same loss from the same weights and draws (float32 rounding)


@pytest.mark.slow
@pytest.mark.parametrize("script", OTHERS)
def test_bench_quick_runs(script: str) -> None:
    assert _run([f"bench/{script}", "--quick"]).strip()
