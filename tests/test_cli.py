"""The README's commands and the demo behind the first of them (VAE+GMM+MLDA on digits and words)."""

import re
from pathlib import Path

import numpy as np
import pytest

from kizuna import demo
from kizuna.cli import main
from kizuna.demo import run_demo, spoken_words, word_distributions

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


def test_synthetic_words_follow_their_distribution():
    """Chi-square goodness of fit of each digit's word counts to its row of p(w|c) (scipy reference)."""
    from scipy.stats import chisquare

    labels = np.repeat(np.arange(10), 400)
    words = spoken_words(labels, seed=3)
    assert words.shape == (4000, 20) and (words.sum(1) == demo.N_TOKENS).all()
    phi = word_distributions()
    np.testing.assert_allclose(phi.sum(1), 1.0)
    pvalues = [chisquare(words[labels == c].sum(0), phi[c] * 400 * demo.N_TOKENS).pvalue for c in range(10)]
    # ten tests at level 0.001 each: a false alarm with probability below 1%
    assert min(pvalues) > 1e-3
    np.testing.assert_array_equal(spoken_words(labels, seed=3), words)  # a fixed seed fixes the data


def test_cli_passes_its_options_to_the_demo(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda **kw: calls.append(kw))
    assert main(["demo", "digits", "--quick", "--seed", "3", "--out", str(tmp_path)]) == 0
    assert main(["demo", "digits"]) == 0
    assert calls == [{"seed": 3, "out": str(tmp_path), "quick": True},
                     {"seed": 0, "out": "kizuna-demo-out", "quick": False}]


def test_cli_rejects_unknown_command():
    with pytest.raises(SystemExit):
        main(["nonsense"])


def test_quick_demo_integrates_the_two_modalities(capsys, tmp_path):
    # 600 digits, 3 sweeps. Measured (seed 0): integrated MLDA 0.78, words alone 0.67, GMM on VAE
    # latents 0.76, random partitions 0.16.
    result = run_demo(seed=0, out=tmp_path, quick=True)
    out = capsys.readouterr().out
    assert "image -> VAE(z in 8 dims) -> GMM(10) -> MLDA(10) <- words" in out
    assert f"latent space plot: {tmp_path / 'latent_space.png'}" in out
    assert (tmp_path / "latent_space.png").stat().st_size > 10_000
    assert result["chance_accuracy"] < 0.18
    for key in demo.ROWS:
        assert result[f"{key}_accuracy"] > result["chance_accuracy"] + 0.3
    assert result["integrated_accuracy"] > result["words_mlda_accuracy"] + 0.05
    assert result["integrated_nmi"] > max(result["words_mlda_nmi"], result["gmm_on_vae_nmi"])


@pytest.mark.slow
def test_demo_is_deterministic_given_the_seed(tmp_path, capsys):
    first = run_demo(seed=1, out=tmp_path / "a", quick=True)
    second = run_demo(seed=1, out=tmp_path / "b", quick=True)
    assert first == second


@pytest.mark.slow
def test_full_demo_reaches_the_readme_figures(capsys, tmp_path):
    # README (seed 0): integrated MLDA 0.953, GMM on VAE latents 0.764, words alone 0.727
    result = run_demo(seed=0, out=tmp_path)
    assert result["integrated_accuracy"] > 0.9
    assert result["integrated_accuracy"] > max(result["gmm_on_vae_accuracy"], result["words_mlda_accuracy"]) + 0.1
    assert result["integrated_gmm_accuracy"] > result["gmm_on_vae_accuracy"]
    assert result["chance_accuracy"] == pytest.approx(0.132, abs=0.002)  # no training involved
