"""Smoke runs of the SERKET sampler and evidence scripts (slow: each trains a small VAE)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
needs_data = pytest.mark.shared_data("serket/mnist3000.npz")  # tests/conftest.py


def run(script, *args):
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         check=True, timeout=900)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
@needs_data
def test_both_samplers_from_one_first_vae_update(tmp_path):
    rows = run("serket_gmm_samplers.py", "--smoke", "--seeds", "0", "--dump", str(tmp_path))
    assert [r["sampler"] for r in rows] == ["blocked", "collapsed"]
    for r in rows:
        assert len(r["accuracy"]) == 3 and min(r["accuracy"]) > 0.3  # chance is 0.125
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first_update_blocked_seed0_smoke.npz",
                                                          "first_update_collapsed_seed0_smoke.npz"]


@pytest.mark.slow
@needs_data
def test_vae_gmm_example_takes_the_sampler():
    sys.path.insert(0, str(EXAMPLES))
    import serket_vae_gmm as E

    out = E.run(smoke=True, seed=0, sampler="collapsed")
    assert out["vae_gmm_accuracy"] > 0.3 and out["gmm_on_vae_accuracy"] > 0.3
    with pytest.raises(ValueError, match="sampler must be one of"):
        E.run(smoke=True, seed=0, sampler="gibbs")


@pytest.mark.slow
@needs_data
def test_evidence_script_runs_every_rounding():
    rows = run("serket_mlda_evidence.py", "--smoke", "--seeds", "0", "--chains", "0", "--sweeps", "10",
               "--mlda-sweeps", "10")
    assert [r["rounding"] for r in rows] == ["round", "floor", "largest_remainder"]
    assert all(r["mlda"] > 0.2 and r["gmm"] > 0.2 for r in rows)
