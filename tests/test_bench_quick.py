"""Every benchmark script runs: its quick mode (seconds) exits 0 and prints what it measures, and each parity bench's
first-step check between kizuna and the hand-written reference agrees, in the loss and in every parameter's gradient.
No time is asserted (speed is measured by the scripts, not by tests). Slow (about 1.5 minutes for all of them on one
CPU thread): run with ``pytest -m slow``; the check's own report (`_parity.grad_report`) is tested without it."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PARITY = sorted(p.name for p in (ROOT / "bench").glob("parity_*.py"))
# each script's other variants: the documented table rows that are not a script's default
VARIANTS = [("parity_flows.py", "--flow", "spline"), ("parity_gan.py", "--loss", "wgan-gp"),
            ("parity_vqvae.py", "--stage", "prior"), ("parity_diffusion.py", "--net", "unet"),
            ("parity_flow_matching.py", "--net", "unet")]
OTHERS = ["vae_step.py", "likelihood.py", "bernoulli_kernels.py", "robots.py", "mlda_sweep_ab.py"]


def _run(args: list[str]) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", PARITY + [" ".join(v) for v in VARIANTS])
def test_parity_bench_quick_runs_and_its_first_step_agrees(script: str) -> None:
    name, *variant = script.split()
    out = _run([f"bench/{name}", "--quick", *variant])
    assert "step" in out and "ratio" in out, out[-2000:]
    lines = [line for line in out.splitlines() if "AGREE" in line]
    losses = [line for line in lines if "first-step loss" in line]
    assert losses, out[-2000:]  # every parity bench checks its first step
    for line in losses:
        diff = re.search(r"\|diff\| = ([-+0-9.e]+)", line)
        assert diff and float(diff[1]) < 1e-4, line  # the same loss from the same weights and draws (float32 rounding)
    for line in losses + [line for line in lines if "gradients:" in line]:
        assert "MISMATCH" not in line, line  # a parameter with a gradient on one side only
        grads = re.search(r"gradients: max \|diff\| = ([-+0-9.e]+) \(relative ([-+0-9.e]+)\) over (\d+) tensors", line)
        assert grads and int(grads[3]) > 0, line  # every first-step check compares the gradients too
        # per tensor, max |a - b| / max(max |a|, max |b|): 0 to 5.5e-7 measured (float32, eps 1.2e-7; the sums in
        # other orders: the DDPM, the VAE, the Ladder VAE, the NCSN, the spline); a wrong detach or a missing
        # term gives 1e-2 and more (the VAE with its noise scale detached: 0.09)
        assert float(grads[2]) < 1e-5, line


@pytest.mark.slow
@pytest.mark.parametrize("script", OTHERS)
def test_bench_quick_runs(script: str) -> None:
    assert _run([f"bench/{script}", "--quick"]).strip()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ncsn", "ddpm", "dmm"])
def test_the_instruction_counts_steps_build_and_run(family: str) -> None:
    """`bench/instructions.py`'s steps (run under valgrind there): each family's kizuna and hand-written step builds
    and takes a step (the DDPM's failed with an AttributeError after its bench changed networks)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import _family_steps
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for case in ("kizuna Model.train", "hand-written"):
        _family_steps.FAMILIES[family](case)()


def test_agree_reports_a_gradient_difference_and_a_one_sided_gradient() -> None:
    """The first-step check's gradient report (`bench/_parity.py`): with equal losses, a term with no value but a
    gradient shows as a relative difference, and a stop-gradient that leaves a parameter with a gradient on one side
    only is a ``MISMATCH``; the parameters' ``.grad`` are put back."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from _parity import agree
    finally:
        sys.path.remove(str(ROOT / "bench"))
    torch.manual_seed(0)
    w, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    w_r, b_r = w.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    x = torch.randn(3)

    def line(reference: Callable[[], torch.Tensor]) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            agree(lambda: (w * x + b).exp().sum(), reference, [w, b], [w_r, b_r])
        assert w.grad is None and b.grad is None and w_r.grad is None and b_r.grad is None
        return out.getvalue()

    same = line(lambda: (w_r * x + b_r).exp().sum())
    assert "|diff| = 0;" in same and "max |diff| = 0 (relative 0) over 2 tensors" in same and "MISMATCH" not in same
    detached = line(lambda: (w_r * x + b_r.detach()).exp().sum())  # the same value, no gradient for b_r
    assert "|diff| = 0;" in detached
    assert "MISMATCH, a gradient on one side only: tensor 1 (3,) only on the kizuna side" in detached
    scaled = line(lambda: (w_r * x + b_r).exp().sum() + (b_r - b_r.detach()).sum())  # same value, other gradient
    relative = float(re.search(r"relative ([-+0-9.e]+)", scaled)[1])
    assert relative > 0.1 and "MISMATCH" not in scaled


def test_paired_timing_gives_the_ratio_of_two_known_costs_and_names_bad_input() -> None:
    """`bench/_timing.paired` (the single-step alternation behind the parity benches' ``--pairs``): a case that does
    the baseline's work twice measures about 2 against it (by this thread's CPU time: sleeping costs none), each side
    is called once per pair after the warm-up, and zero pairs is an error naming the argument."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from _timing import paired
    finally:
        sys.path.remove(str(ROOT / "bench"))
    calls = {"case": 0, "baseline": 0}

    def work() -> None:  # Python work on this thread (a torch kernel may run on other threads, unseen by its clock)
        sum(i * i for i in range(20_000))

    def baseline() -> None:
        calls["baseline"] += 1
        work()

    def case() -> None:
        calls["case"] += 1
        work()
        work()

    mine, theirs, median, ratio = paired(case, baseline, 40, warmup=2)
    assert calls == {"case": 42, "baseline": 42}
    assert 0 < theirs < mine
    assert 1.6 < ratio < 2.5 and 1.6 < median < 2.5, (ratio, median)
    with pytest.raises(ValueError, match="pairs"):
        paired(case, baseline, 0)
    with pytest.raises(ValueError, match="trim"):
        paired(case, baseline, 5, trim=0.5)


def test_mlda_sweep_ab_loads_an_earlier_sampler_and_leaves_no_folder(tmp_path, monkeypatch) -> None:
    """`bench/mlda_sweep_ab.py --ref REV` loads ``kizuna/modules/lda/sampler.py`` at REV from git: the loaded
    ``GibbsChain`` (a dataclass module, which needs its module registered) is usable, and its temporary folder is
    gone afterwards (the first version failed with an AttributeError and left one folder per run)."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: --ref reads an earlier revision from git")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("mlda_sweep_ab", ROOT / "bench" / "mlda_sweep_ab.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from kizuna.modules.lda import sampler

    earlier = bench.sampler_at("HEAD")
    loaded = sys.modules["sampler_ref"]
    assert issubclass(earlier, loaded.GibbsChain) and loaded.GibbsChain is not sampler.GibbsChain
    assert [f.name for f in dataclasses.fields(loaded.Tables)] == [f.name for f in dataclasses.fields(sampler.Tables)]
    assert list(tmp_path.iterdir()) == []
    sys.modules.pop("sampler_ref", None)


def test_cuda_check_runs_its_checks_on_the_cpu() -> None:
    """`bench/cuda_check.py --device cpu --quick`: the GPU check's own logic, on a machine without a GPU (review K,
    stop 44: its resume check compared 1 + 1 epochs with 1 + 2, so it failed on every GPU, and nothing ran it here).
    Every check passes on the CPU; without CUDA the plain run says nothing was checked (exit 2 when required)."""
    out = _run(["bench/cuda_check.py", "--device", "cpu", "--quick"])
    lines = [line for line in out.splitlines() if line.startswith(("ok", "FAIL"))]
    assert len(lines) == 9 and all(line.startswith("ok") for line in lines), out
    assert "resume from a checkpoint on cpu gives the same parameters" in out
    if not torch.cuda.is_available():
        done = subprocess.run([sys.executable, "bench/cuda_check.py", "--require-cuda"], capture_output=True,
                              text=True, cwd=ROOT)
        assert done.returncode == 2 and "nothing was checked" in done.stdout
