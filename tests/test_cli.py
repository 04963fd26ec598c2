"""The ``kizuna`` command, the README's commands and the demo behind the first of them (VAE+GMM+MLDA on
digits and words)."""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kizuna
from kizuna import demo
from kizuna.cli import build_parser, main
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
    monkeypatch.chdir(tmp_path)  # the default output folder is created where the command runs (not in the checkout)
    assert main(["demo", "digits", "--quick", "--seed", "3", "--out", str(tmp_path)]) == 0
    assert main(["demo", "digits"]) == 0
    assert calls == [{"seed": 3, "out": str(tmp_path), "quick": True},
                     {"seed": 0, "out": "kizuna-demo-out", "quick": False}]


def test_cli_rejects_unknown_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["nonsense"])
    assert exit_.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"kizuna {kizuna.__version__}"
    assert importlib.metadata.version("kizuna") == kizuna.__version__


def test_bare_kizuna_prints_the_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kizuna [-h] [--version] COMMAND ...")
    assert "kizuna demo" in out and "demo " in out.split("commands:")[1]


def _helps():
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices  # argparse keeps them only here
    return {"kizuna": parser.format_help(), **{f"kizuna {k}": p.format_help() for k, p in subparsers.items()}}


def test_help_texts_are_plain_text():
    """No reST markup (double backquotes, roles, directives) in what ``--help`` prints."""
    for name, text in _helps().items():
        assert not re.search(r"``|`[^`]+`_?|:[a-z]+:`|^\.\. ", text, re.M), (name, text)


def test_demo_help_says_what_it_does_and_how_long_it_takes():
    text = _helps()["kizuna demo"]
    assert "VAE+GMM+MLDA" in text and "without labels" in text and "saves a figure" in text
    # measured (seed 0, one thread, 2026-12-06, the README's figures): full 19 s of wall time on the shared 2-core
    # machine when idle, 36 s beside other work (the help said "30 s to a minute", the README "a few minutes" and
    # "13-16 s a seed"); --quick 9 s
    assert "20 to 40 s at one thread on a shared 2-core machine (--quick: 600 digits, 10 to 20 s)" in text
    readme = (ROOT / "README.md").read_text()
    assert readme.count("20 to 40 s") == 3 and "a few minutes on a loaded" not in readme and "13–16 s" not in readme


def test_console_entry_points_and_lazy_subpackages():
    """``python -m kizuna --version`` and ``kizuna.<subpackage>`` in a fresh interpreter: ``import kizuna``
    does not import torch; reading a subpackage imports it."""
    code = ("import sys, kizuna; assert 'torch' not in sys.modules; "
            "assert kizuna.distributions.Normal.__name__ == 'Normal' and 'kizuna.modules' not in sys.modules; "
            "assert {'distributions', 'losses', 'models', 'modules'} <= set(dir(kizuna)); "
            "print(sorted(set(kizuna.__all__) - {'__version__'}) == sorted(kizuna.SUBPACKAGES))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr
    version = subprocess.run([sys.executable, "-m", "kizuna", "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"kizuna {kizuna.__version__}"
    with pytest.raises(AttributeError, match="module 'kizuna' has no attribute 'nope'; its subpackages are"):
        kizuna.nope  # noqa: B018


def test_quick_demo_integrates_the_two_modalities(capsys, tmp_path):
    # 600 digits, 3 sweeps. Measured (seed 0, 2026-12-06): integrated MLDA 0.85, words alone 0.77, GMM on VAE
    # latents 0.66, random partitions 0.16.
    torch.manual_seed(123)
    before = torch.get_rng_state()
    result = run_demo(seed=0, out=tmp_path, quick=True)
    # the caller's global generator is left as it was (it was reseeded with the demo's seed)
    assert torch.equal(torch.get_rng_state(), before)
    out = capsys.readouterr().out
    assert "image -> VAE(z in 8 dims) -> GMM(10) -> MLDA(10) <- words" in out
    assert f"figure (accuracies, confusion tables, latent spaces): {tmp_path / 'demo.png'}" in out
    assert (tmp_path / "demo.png").stat().st_size > 10_000
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
    # README (seed 0): integrated MLDA 0.800; image side alone 0.746 (no feedback) / 0.765 (fed back);
    # words alone 0.720; the integrated model's GMM 0.768
    result = run_demo(seed=0, out=tmp_path)
    assert result["integrated_accuracy"] == pytest.approx(0.800, abs=0.03)
    parts = ("gmm_on_vae", "vae_gmm", "words_mlda")
    assert result["integrated_accuracy"] > max(result[f"{k}_accuracy"] for k in parts) + 0.01
    assert result["integrated_gmm_accuracy"] > result["gmm_on_vae_accuracy"]
    assert result["chance_accuracy"] == pytest.approx(0.132, abs=0.002)  # no training involved


def test_the_digits_demo_figures_agree_across_the_documents():
    """docs/serket_examples.md showed `kizuna demo` (now the robot house) with an older digits run (integrated MLDA
    0.953 / 0.899) while README.md had been re-measured (0.781 / 0.711); the rows must agree."""
    root = ROOT
    readme, serket = ((root / p).read_text() for p in ("README.md", "docs/serket_examples.md"))
    rows = [re.findall(r"^ *(VAE\+GMM\+MLDA: .*|GMM on VAE.*|VAE\+GMM \(.*|MLDA on the words.*)$", text, re.M)
            for text in (readme, serket)]
    assert len(rows[0]) == 5 and rows[0] == rows[1]
    assert "## `kizuna demo digits`" in serket
    assert "`kizuna demo` needs only scikit-learn's digits" not in (root / "docs/data.md").read_text()
    assert "`kizuna demo` runs on one thread" not in (root / "docs/performance.md").read_text()


def test_a_demo_option_before_the_command_says_where_it_goes(capsys):
    """``kizuna --seed 3`` said "invalid choice: '3' (choose from 'demo')"; it now says the option is the demo's."""
    from kizuna.cli import main

    for argv in (["--seed", "3"], ["--quick"], ["--out=x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "is an option of the demo; put it after the command: kizuna demo" in capsys.readouterr().err
