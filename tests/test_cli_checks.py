"""The ``kizuna`` command's argument handling and the house demo without matplotlib (review of the CLI)."""

import shlex
import sys
from pathlib import Path

import pytest

from kizuna import robot_demo
from kizuna.cli import build_parser, main

NO_PLOT = ("no plot: kizuna.viz draws with matplotlib, which is not installed: pip install 'kizuna[demo]' (or: pip "
           "install matplotlib)")


def _stub_house_demo(monkeypatch):
    """robot_demo.main's own parsing kept; the run, the table and the figures recorded instead."""
    calls = []
    monkeypatch.setattr(robot_demo, "run", lambda *args: calls.append(("run", args)) or {"stub": True})
    monkeypatch.setattr(robot_demo, "_print", lambda result: None)
    monkeypatch.setattr(robot_demo, "save_figures", lambda result, out: calls.append(("figures", out)) or [])
    return calls


@pytest.mark.parametrize("out", ["-dashout", "--dashout", "-"])
def test_an_output_folder_beginning_with_a_dash_reaches_the_house_demo(monkeypatch, tmp_path, out):
    """``kizuna demo --out=-dashout`` created ./-dashout and then failed in robot_demo.main's parser ("argument --out:
    expected one argument"): the options were forwarded as "--out", "-dashout"."""
    monkeypatch.chdir(tmp_path)
    calls = _stub_house_demo(monkeypatch)
    assert main(["demo", "--quick", "--seed", "4", "--words", "phonemes", f"--out={out}"]) == 0
    assert calls == [("run", (4, 150, "phonemes", 3)), ("figures", Path(out))]
    assert (tmp_path / out).is_dir()


def test_the_house_demo_receives_every_option_as_one_item(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the output folder is created where the command runs
    seen = []
    monkeypatch.setattr(robot_demo, "main", lambda argv: seen.append(argv) or 0)
    assert main(["demo", "--out=-x", "--seed", "7", "--quick"]) == 0
    assert seen == [["--seed=7", "--out=-x", "--words=clean", "--quick"]]


@pytest.mark.parametrize(("argv", "suggestion", "parsed"), [
    (["--out", "-x", "demo"], "kizuna demo --out=-x", {"which": "house", "out": "-x"}),
    (["--seed", "3", "demo", "digits"], "kizuna demo digits --seed 3", {"which": "digits", "seed": 3}),
    (["--quick", "demo"], "kizuna demo --quick", {"which": "house", "quick": True}),
    (["--seed", "3"], "kizuna demo --seed 3", {"which": "house", "seed": 3}),
    (["--out=x"], "kizuna demo --out=x", {"out": "x"}),
    (["--seed=5", "demo", "house", "--quick"], "kizuna demo house --seed=5 --quick",
     {"which": "house", "seed": 5, "quick": True}),
    (["--quick", "--seed", "2", "demo", "digits", "--out", "o"], "kizuna demo digits --quick --seed 2 --out o",
     {"which": "digits", "seed": 2, "quick": True, "out": "o"}),
    (["--out", "demo", "demo"], "kizuna demo --out demo", {"which": "house", "out": "demo"}),  # a folder named demo
    (["--words", "phonemes", "demo", "--seed", "1"], "kizuna demo --words phonemes --seed 1",
     {"which": "house", "words": "phonemes", "seed": 1}),
    (["--out=my runs", "demo"], "kizuna demo '--out=my runs'", {"out": "my runs"}),
])
def test_the_suggestion_for_an_option_before_the_command_is_a_command_that_runs(capsys, argv, suggestion, parsed):
    """``kizuna --seed 3 demo digits`` suggested "kizuna demo --seed 3 demo digits", itself a usage error: the
    suggestion now moves the command first, keeps everything else, and parses to what was meant."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.rstrip("\n").endswith(f"is an option of the demo; put it after the command: {suggestion}"), err
    args = build_parser().parse_args(shlex.split(suggestion)[1:])
    assert args.command == "demo" and {k: getattr(args, k) for k in parsed} == parsed


def _block_matplotlib(monkeypatch):
    """As if matplotlib were not installed (its already imported submodules hidden too)."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_save_figures_without_matplotlib_says_how_to_install_it(monkeypatch, tmp_path):
    """It raised ModuleNotFoundError: No module named 'matplotlib.patches' (import of Rectangle first)."""
    _block_matplotlib(monkeypatch)
    with pytest.raises(ImportError) as err:
        robot_demo.save_figures({}, tmp_path)
    assert str(err.value) == NO_PLOT[len("no plot: "):]
    assert list(tmp_path.iterdir()) == []


def test_the_house_demo_without_matplotlib_prints_the_scores_and_exits_0(monkeypatch, tmp_path, capsys):
    """``kizuna demo`` crashed with a traceback after the whole run; it now ends as ``kizuna demo digits`` does."""
    _block_matplotlib(monkeypatch)
    monkeypatch.setattr(robot_demo, "run", lambda *args: {"stub": True})
    monkeypatch.setattr(robot_demo, "_print", lambda result: print("the scores"))
    assert main(["demo", "--quick", f"--out={tmp_path}"]) == 0
    assert capsys.readouterr().out == f"the scores\n{NO_PLOT}\n"


@pytest.mark.slow
def test_the_quick_house_demo_runs_without_matplotlib(monkeypatch, tmp_path, capsys):
    """The whole quick run (about 15 s) with matplotlib hidden: the table, then the same line as the digits demo."""
    _block_matplotlib(monkeypatch)
    assert main(["demo", "--quick", f"--out={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "SERKET GMM -> MLDA" in out and out.endswith(f"{NO_PLOT}\n")
    assert list(tmp_path.iterdir()) == []
