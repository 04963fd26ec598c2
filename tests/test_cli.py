"""The README's commands and the demo behind the first of them."""

import re
from pathlib import Path

import pytest

from kizuna.cli import main
from kizuna.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", text, re.S)


def test_ci_runs_the_readme_test_command():
    test_cmd = _readme_commands()[1].strip()
    assert "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_readme_demo_command_runs_the_demo():
    assert _readme_commands()[0].strip().endswith("kizuna demo")


def test_demo_smoke_learns_better_than_the_independent_baseline(capsys):
    # 15 epochs are enough for the VAE to pass one-Bernoulli-per-pixel (-24.8 nats/digit)
    result = run_demo(epochs=15, seed=0, k=50)
    out = capsys.readouterr().out
    assert "p(x,z) = p(x|z)p_{prior}(z)" in out
    assert result["iwae_ll"] > result["baseline_ll"] + 2.0
    assert result["iwae_ll"] >= result["elbo"] - 0.1


def test_cli_rejects_unknown_command():
    with pytest.raises(SystemExit):
        main(["nonsense"])


@pytest.mark.slow
def test_full_demo_reaches_the_readme_figures(capsys):
    # README: baseline -24.76, ELBO -18.26, IWAE(k=1000) -17.72 nats per held-out digit (seed 0)
    result = run_demo(epochs=60, seed=0, k=1000)
    assert result["baseline_ll"] == pytest.approx(-24.76, abs=0.01)  # deterministic: no training
    assert result["elbo"] > -18.8
    assert result["iwae_ll"] > -18.2
