"""The ``--smoke`` dump of ``serket_gmm_samplers.py`` and its two readers (stop 43, review R, F2).

``serket_gmm_samplers.py --smoke --dump DIR`` writes ``first_update_<sampler>_seed<S>_smoke.npz``; neither
``serket_gmm_on_latents.py --latents DIR`` (whose usage error told the user to run the command just run) nor
``serket_mlda_evidence.py --smoke --latents DIR`` (a raw FileNotFoundError after loading the data) read it. Now
both read the ``_smoke`` files when they run with ``--smoke``, and a missing file is a usage error naming it, the
command that writes it, and ``--smoke`` to pass or drop when the folder holds the other kind's files.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from example_loader import EXAMPLES, load_example
from test_examples_args import ran

from kizuna.metrics import clustering_accuracy


def _error(name, argv, monkeypatch, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        ran(name, argv, monkeypatch)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _write(path) -> None:
    np.savez(path, latent=np.zeros((2, 2)), labels=np.zeros(2, dtype=int))


@pytest.mark.parametrize("name", ["serket_gmm_on_latents", "serket_mlda_evidence"])
@pytest.mark.parametrize("smoke", [False, True])
def test_a_missing_dump_names_the_file_and_the_command_that_writes_it(name, smoke, tmp_path, monkeypatch, capsys):
    """Old: gmm_on_latents said "write them with examples/serket_gmm_samplers.py --dump FOLDER" whatever was run
    (and had no --smoke); mlda_evidence loaded the data and died with a FileNotFoundError traceback."""
    _write(tmp_path / "first_update_blocked_seed1.npz")  # seed 1 is there; 4 and 3 are missing
    flag = ["--smoke"] if smoke else []
    err = _error(name, ["--latents", str(tmp_path), "--seeds", "1", "4", "3", *flag], monkeypatch, capsys)
    suffix = "_smoke" if smoke else ""
    missing = ", ".join(str(tmp_path / f"first_update_blocked_seed{s}{suffix}.npz") for s in ((1, 4, 3) if smoke
                                                                                              else (4, 3)))
    seeds = "1 4 3" if smoke else "4 3"
    assert err == (f"{name}.py: error: --latents {tmp_path}: missing {missing} (write them with "
                   f"examples/serket_gmm_samplers.py --dump {tmp_path} --seeds {seeds} --samplers blocked "
                   f"--updates 1{' --smoke' if smoke else ''})")


@pytest.mark.parametrize("name", ["serket_gmm_on_latents", "serket_mlda_evidence"])
@pytest.mark.parametrize("smoke", [False, True])
def test_a_folder_of_the_other_kind_says_to_pass_or_drop_smoke(name, smoke, tmp_path, monkeypatch, capsys):
    """Old: the smoke dump gave gmm_on_latents the usage error above (no hint) and mlda_evidence a traceback."""
    _write(tmp_path / f"first_update_blocked_seed0{'' if smoke else '_smoke'}.npz")
    err = _error(name, ["--latents", str(tmp_path), "--seeds", "0", *(["--smoke"] if smoke else [])],
                 monkeypatch, capsys)
    expected = "without --smoke: drop --smoke" if smoke else "with --smoke: pass --smoke"
    other = "first_update_blocked_seed0.npz" if smoke else "first_update_blocked_seed0_smoke.npz"
    assert err.endswith(f"); {tmp_path} has {other}, written {expected}")


def test_gmm_on_latents_with_smoke_clusters_the_smoke_file(tmp_path, monkeypatch, capsys):
    """The accuracy printed is that of the blocked GMM on the ``_smoke`` file's latents (computed here)."""
    g = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 12)
    latent = 6.0 * g.normal(size=(10, 2))[labels] + g.normal(size=(120, 2))
    np.savez(load_example("serket_gmm_samplers").S.dump_file(tmp_path, "blocked", 0, True), latent=latent,
             labels=labels)
    threads = torch.get_num_threads()
    try:
        ran("serket_gmm_on_latents", ["--smoke", "--latents", str(tmp_path), "--seeds", "0", "--chains", "0",
                                      "--variants", "blocked", "--sweeps", "3"], monkeypatch)
    finally:
        torch.set_num_threads(threads)
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    x = torch.as_tensor(latent, dtype=torch.float64)
    reference = clustering_accuracy(labels, load_example("serket_gmm_on_latents").cluster(x, "blocked", 0, 3))
    assert (line["seed"], line["variant"], line["accuracy"]) == (0, "blocked", round(float(reference), 4))


@pytest.mark.slow  # three processes, each importing torch: ~25 s on a loaded 2-core machine
@pytest.mark.shared_data("serket/mnist3000.npz")  # tests/conftest.py
def test_the_smoke_dump_is_read_by_both_readers_with_smoke(tmp_path):
    def run(script, *args):
        out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    dump = run("serket_gmm_samplers.py", "--smoke", "--seeds", "0", "--samplers", "blocked", "--updates", "1",
               "--dump", str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["first_update_blocked_seed0_smoke.npz"]
    with np.load(tmp_path / "first_update_blocked_seed0_smoke.npz") as f:
        assert f["latent"].shape[0] == f["labels"].shape[0] == 500
    assert [(r["sampler"], r["smoke"], len(r["accuracy"])) for r in dump] == [("blocked", True, 1)]
    rows = run("serket_gmm_on_latents.py", "--smoke", "--latents", str(tmp_path), "--seeds", "0", "--chains", "0",
               "--sweeps", "5")
    assert [r["variant"] for r in rows] == ["blocked", "collapsed", "serket"]
    rows = run("serket_mlda_evidence.py", "--smoke", "--latents", str(tmp_path), "--seeds", "0", "--chains", "0",
               "--sweeps", "5", "--mlda-sweeps", "5", "--roundings", "round")
    assert [(r["seed"], r["rounding"]) for r in rows] == [(0, "round")] and 0.0 < rows[0]["gmm"] <= 1.0
