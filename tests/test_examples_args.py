"""The examples' command lines: a bad value is a usage error (exit status 2, a message naming the option) before
anything is loaded or trained, and a meaningful edge value (``--epochs 0``) is taken as given.

`parsed` runs ``examples/<name>.py`` as ``__main__`` with `argparse` stopped right after parsing, so nothing
trains even where the old code accepted the value."""

from __future__ import annotations

import argparse
import runpy
import sys

import pytest
import torch
from example_loader import EXAMPLES, load_example


class _Parsed(Exception):
    """Raised in place of returning from ``parse_args``: the parsed namespace, nothing run after it."""


def parsed(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The namespace ``examples/<name>.py argv`` parses to (a `SystemExit` for a usage error)."""
    original = argparse.ArgumentParser.parse_args

    def stop(self: argparse.ArgumentParser, args: list[str] | None = None, namespace: object = None) -> None:
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    path = EXAMPLES / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    try:
        runpy.run_path(str(path), run_name="__main__")
    except _Parsed as done:
        return done.args[0]
    raise AssertionError(f"{name} never parsed its arguments")


def usage_error(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    """The message of the usage error ``examples/<name>.py argv`` gives (fails if it parses)."""
    with pytest.raises(SystemExit) as exit_:
        parsed(name, argv, monkeypatch)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("name", "argv", "message"), [
    ("diffusion", ["--smoke", "--steps", "0"], "argument --steps: invalid value 0: give a positive integer"),
    ("diffusion", ["--smoke", "--steps", "-1"], "argument --steps: invalid value -1: give a positive integer"),
    ("vqvae", ["--smoke", "--epochs", "-1"], "argument --epochs: invalid value -1: give a non-negative integer"),
    ("vqvae", ["--smoke", "--prior-epochs", "x"], "argument --prior-epochs: invalid value 'x'"),
])
def test_step_and_epoch_counts_are_checked(name, argv, message, monkeypatch, capsys):
    """``--steps 0`` ran the default 800 steps (``steps or cfg["steps"]``) and ``--steps -1`` none, then failed
    with an UnboundLocalError."""
    assert message in usage_error(name, argv, monkeypatch, capsys)


def test_zero_epochs_is_taken_as_given(monkeypatch):
    """vqvae's ``--epochs 0`` / ``--prior-epochs 0`` (an untrained stage) were replaced by the defaults."""
    args = parsed("vqvae", ["--smoke", "--epochs", "0", "--prior-epochs", "0"], monkeypatch)
    assert (args.epochs, args.prior_epochs) == (0, 0)
    given = []
    vqvae = load_example("vqvae")
    monkeypatch.setattr(vqvae, "fit", lambda model, data, epochs, **kw: given.append(epochs) or 0.0)
    vqvae.run(smoke=True, epochs=0, prior_epochs=0)  # nothing fitted: only the untrained model's test bound
    assert given == [0, 0]
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        vqvae.run(smoke=True, epochs=-1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        load_example("diffusion").run(smoke=True, steps=0)


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "0"], "argument --seeds: invalid value 0: give a positive integer"),
    (["--smoke", "--first-seed", "-1"], "argument --first-seed: invalid seed -1: give a non-negative integer"),
    (["--seeds", "2", "--first-seed", str(2**64 - 1)], "the last seed is above 2**64 - 1"),
    (["--words", "phonemes", "--chains", "0"], "argument --chains: invalid value 0: give a positive integer"),
    (["--new-utterances", "-3"], "argument --new-utterances: invalid value -3: give a non-negative integer"),
    (["--sweeps", "0"], "argument --sweeps: invalid value 0: give a positive integer"),
    (["--alpha", "nan"], "argument --alpha: invalid value 'nan': give a finite number > 0"),
    (["--beta", "0", "1"], "argument --beta: invalid value '0': give a finite number > 0"),
])
def test_robot_house_refuses_seeds_that_run_nothing_or_fail(argv, message, monkeypatch, capsys):
    """``--seeds 0`` ran no seed, then failed with an IndexError (rows[0]); ``--first-seed -1`` failed inside
    numpy's seeding."""
    robot_house = load_example("robot_house")

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("robot_house ran a seed")

    monkeypatch.setattr(robot_house, "run", no_run)
    with pytest.raises(SystemExit) as exit_:
        robot_house.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


SEEDED = sorted(p.stem for p in EXAMPLES.glob("*.py") if '"--seed"' in p.read_text() and not p.stem.startswith("_"))
SERKET = sorted(p.stem for p in EXAMPLES.glob("serket_*.py") if "S.cli(" in p.read_text())


def test_every_seeded_example_is_checked():
    assert len(SEEDED) >= 20 and "serket_hmm" in SERKET and "ladder_vae" in SEEDED


@pytest.mark.parametrize("name", SEEDED + SERKET)
def test_a_negative_seed_is_a_usage_error(name, monkeypatch, capsys):
    """``--seed -1`` reached torch.manual_seed or numpy as a traceback (after loading data, in the SERKET
    examples); every example's --seed is now the ``kizuna`` command's seed type."""
    smoke = name in SERKET or '"--smoke"' in (EXAMPLES / f"{name}.py").read_text()
    argv = ["--smoke"] * smoke + ["--seed", "-1"]
    assert "argument --seed: invalid seed -1: give a non-negative integer" in usage_error(name, argv, monkeypatch,
                                                                                         capsys)
    assert parsed(name, argv[:-1] + ["7"], monkeypatch).seed == 7


@pytest.mark.parametrize("name", ["flows", "iwae", "ladder_vae", "jmvae"])
def test_a_seed_past_scikit_learns_range_is_a_usage_error(name, monkeypatch, capsys):
    """Seeds up to 2**64 - 1 were accepted, then crashed after training: scikit-learn's random_state (make_moons, the
    multimodal examples' classifier) takes 0 .. 2**32 - 1, and torch.manual_seed(seed + 1) overflowed at 2**64 - 1."""
    for seed in (2**32, 2**64 - 1):
        assert (f"argument --seed: invalid seed {seed}: give an integer from 0 to 2**32 - 1 (4294967295)"
                in usage_error(name, ["--smoke", "--seed", str(seed)], monkeypatch, capsys))
    assert parsed(name, ["--smoke", "--seed", str(2**32 - 1)], monkeypatch).seed == 2**32 - 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--free-nats", "nan"], "argument --free-nats: invalid value 'nan': give a finite number >= 0"),
    (["--dropout", "1"], "argument --dropout: invalid value '1': give a number in [0, 1)"),
    (["--z-dims", "0,4"], "argument --z-dims: invalid value 0: give positive integers separated by commas"),
    (["--hidden", "8,x"], "argument --hidden: invalid value 'x': give positive integers separated by commas"),
    (["--depth", "0"], "argument --depth: invalid value 0: give a positive integer"),
    (["--max-prior-scale", "-1"], "argument --max-prior-scale: invalid value '-1': give a finite number > 0"),
])
def test_ladder_vae_settings_are_usage_errors(argv, message, monkeypatch, capsys):
    """``--free-nats nan`` trained without the floor silently, ``--z-dims 0,4`` a latent of no units; the others
    were tracebacks from the model after the data had loaded."""
    assert message in usage_error("ladder_vae", ["--smoke", *argv], monkeypatch, capsys)


@pytest.mark.parametrize(("name", "argv", "message"), [
    ("anomaly_detection", ["--smoke", "--held-out", "12"], "argument --held-out: invalid choice: 12"),
    ("name_move_evidence", ["-1"], "argument seeds: invalid seed -1"),
    ("one_name_evidence", ["1", "-2"], "argument seeds: invalid seed -2"),
    ("slot_diagnostics", ["oracle", "--chains", "0"], "argument --chains: invalid value 0: give a positive integer"),
    ("serket_table", ["--seed-list", "0", "-1"], "argument --seed-list: invalid seed -1"),
    ("serket_feedback_study", ["--seeds", "0"], "argument --seeds: invalid value 0: give a positive integer"),
    ("serket_gmm_samplers", ["--updates", "0"], "argument --updates: invalid value 0: give a positive integer"),
    ("serket_mlda_evidence", ["--chains", "-1"], "argument --chains: invalid seed -1"),
    ("ladder_vae", ["--smoke", "--epochs", "-1"], "argument --epochs: invalid value -1: give a non-negative integer"),
    ("ladder_vae", ["--smoke", "--k", "0"], "argument --k: invalid value 0: give a positive integer"),
    ("ladder_vae_curves", ["vae", "--every", "0"], "argument --every: invalid value 0: give a positive integer"),
    ("word_segmentation", ["--first", "0"], "argument --first: invalid value 0: give a positive integer"),
])
def test_counts_and_classes_are_checked(name, argv, message, monkeypatch, capsys):
    """A held-out class outside 0-9 trained every model, then failed in the PCA baseline; a count of 0 or below
    where it means nothing ran nothing, or failed later."""
    assert message in usage_error(name, argv, monkeypatch, capsys)


def test_anomaly_detection_run_refuses_classes_outside_0_to_9():
    with pytest.raises(ValueError, match="held-out classes are 0-9"):
        load_example("anomaly_detection").run(smoke=True, held_out=(12,))


def test_ladder_vae_zero_epochs_is_an_evaluation_of_the_untrained_model(monkeypatch):
    assert parsed("ladder_vae", ["--smoke", "--epochs", "0"], monkeypatch).epochs == 0


def ran(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``examples/<name>.py argv`` as ``__main__`` (for checks made after parsing)."""
    path = EXAMPLES / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    runpy.run_path(str(path), run_name="__main__")


@pytest.mark.parametrize(("name", "argv", "message"), [
    ("serket_hmm", ["--smoke", "--data", "{tmp}/nowhere"], "pass --data DIR (docs/data.md, SERKET's example data)"),
    ("serket_vae_gmm", ["--data", "{tmp}/nowhere"], "SERKET example data not found at {tmp}/nowhere"),
    ("serket_feedback_study", ["--smoke", "--data", "{tmp}/nowhere"], "pass --data DIR (docs/data.md"),
    ("serket_gmm_samplers", ["--smoke", "--data", "{tmp}/nowhere"], "pass --data DIR (docs/data.md"),
    ("serket_mlda_evidence", ["--smoke", "--data", "{tmp}/nowhere"], "pass --data DIR (docs/data.md"),
    ("serket_table", ["--smoke", "--data", "{tmp}/nowhere"], "pass --data DIR (docs/data.md"),
    ("serket_gmm_on_latents", ["--latents", "{tmp}/nowhere", "--seeds", "3"],
     "missing {tmp}/nowhere/first_update_blocked_seed3.npz (write them with examples/serket_gmm_samplers.py --dump"),
    ("word_segmentation", ["--smoke", "--data", "{tmp}/br-phono.txt"],
     "the Brent corpus is not at {tmp}/br-phono.txt: pass --data FILE (docs/data.md, The Brent corpus)"),
])
def test_missing_data_is_a_usage_error_naming_the_guide(name, argv, message, tmp_path, monkeypatch, capsys):
    """A missing data folder or file was a FileNotFoundError traceback (a numpy one for --latents), and the Brent
    corpus's pointed to "DESIGN.md, Data", which is not in the repository."""
    with pytest.raises(SystemExit) as exit_:
        ran(name, [a.format(tmp=tmp_path) for a in argv], monkeypatch)
    assert exit_.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert "DESIGN.md" not in (EXAMPLES / f"{name}.py").read_text()


# --- every example takes --smoke; the analysis scripts' smoke runs ----------------------------------------------------

EXAMPLE_SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))
REQUIRED = {"serket_gmm_on_latents": ["--latents", "DIR"]}  # an example's required arguments beside --smoke


@pytest.mark.parametrize("name", EXAMPLE_SCRIPTS)
def test_every_example_parses_smoke(name, monkeypatch):
    """Every example takes ``--smoke`` (five analysis scripts refused it as an unrecognised argument)."""
    assert len(EXAMPLE_SCRIPTS) >= 40
    assert parsed(name, ["--smoke", *REQUIRED.get(name, [])], monkeypatch).smoke is True


def smoke_output(name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> list[str]:
    """The lines ``examples/<name>.py --smoke`` prints, run on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ran(name, ["--smoke"], monkeypatch)
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out.splitlines()


def numbers(line: str, *labels: str) -> list[float]:
    """The number after each of ``labels`` in ``line``."""
    return [float(line.split(label, 1)[1].split()[0].rstrip(",")) for label in labels]


def test_ladder_vae_curves_smoke_prints_each_models_curves_and_learns(monkeypatch, capsys):
    lines = smoke_output("ladder_vae_curves", monkeypatch, capsys)
    assert [line.split()[1] for line in lines if line.startswith("== ")] == ["vae", "ladder"]
    curves = [line for line in lines if "log p(x)" in line]
    assert [int(line.split("epoch")[1].split(":")[0]) for line in curves] == [1, 2, 1, 2]
    for first, last in (curves[:2], curves[2:]):
        ll, elbo = numbers(last, "log p(x)", "  ELBO")
        assert ll >= elbo - 0.01  # the IWAE bound is above the ELBO (both rounded to 0.01)
        assert elbo > numbers(first, "  ELBO")[0]  # the held-out ELBO rises from the first epoch to the second
    assert "prior_scale" in curves[2] and "kl2" in curves[2] and "kl2" not in curves[0]


def test_name_move_evidence_smoke_prints_log_ratios_and_their_difference(monkeypatch, capsys):
    lines = smoke_output("name_move_evidence", monkeypatch, capsys)
    assert lines[0] == "seed 1: log p(new) - log p(old) of the affected utterances, nats"
    moves = lines[1:]
    assert 1 <= len(moves) <= 3 and all(line.split()[0] in ("split", "merge") for line in moves)
    for line in moves:
        lm, slot, evidence = numbers(line, " LM", " slot", "concept evidence")
        assert evidence == pytest.approx(slot - lm, abs=0.11)  # (each printed to 0.1)


def test_one_name_evidence_smoke_prints_the_four_models(monkeypatch, capsys):
    lines = smoke_output("one_name_evidence", monkeypatch, capsys)
    assert lines[0].startswith("seed 1: ") and "utterances glued" in lines[0]
    assert [line[:18].strip() for line in lines[1:]] == ["lm", "slot", "name marginal", "name slot given"]
    for line in lines[1:]:
        split, glued, diff = numbers(line, " split ", " glued ", "split - glued")
        assert split < 0 and glued < 0 and diff == pytest.approx(split - glued, abs=0.11)


def test_one_name_evidence_sizes_the_word_limit_from_the_glued_words(monkeypatch, capsys):
    """On ``simulated_house(60, seed=1)`` "D6" glued to "b&ITmrOum" is 11 phonemes; the script's NPYLM of 10
    refused it (ValueError: ... 'D6b&ITmrOum' ... is longer than max_word_length=10). Split and glued are now scored
    with a limit of the longest word (11 there; the segmenter's 10 where every word fits)."""
    from kizuna.datasets.house import simulated_house

    one_name = load_example("one_name_evidence")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_name.main([1], events=60, repeats=1)
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "seed 1: 44 utterances glued; words up to 11 phonemes; joint log p, nats (split - glued)"
    assert [line[:18].strip() for line in lines[1:]] == ["lm", "slot", "name marginal", "name slot given"]
    for line in lines[1:]:
        split_lp, glued_lp, diff = numbers(line, " split ", " glued ", "split - glued")
        assert split_lp < 0 and glued_lp < 0 and diff == pytest.approx(split_lp - glued_lp, abs=0.11)
    split, glued, _, _ = one_name.segmentations(simulated_house(60, seed=1))
    assert "D6b&ITmrOum" in {w for words in glued for w in words}
    assert max(len(w) for words in split for w in words) == 9
    assert one_name.word_limit(split, glued) == 11 and one_name.word_limit(split) == 10
    assert one_name.word_limit() == 10 and one_name.word_limit([["a" * 12]], [["b"]]) == 12
    assert one_name.word_limit(*one_name.segmentations(simulated_house(100, seed=1))[:2]) == 10  # --smoke's house


def test_slot_diagnostics_smoke_runs_both_diagnostics(monkeypatch, capsys):
    lines = smoke_output("slot_diagnostics", monkeypatch, capsys)
    assert [line.split(":")[0] for line in lines] == ["seed 0 slot weight 0.0", "seed 0 slot weight 0.2",
                                                      "seed 0 slot weight 0.5", "seed 0"]
    for line in lines[:3]:
        assert 0 <= numbers(line, " mean ")[0] <= 1
    f, chain, true = numbers(lines[3], "place-name F", "log p(chain's segmentation)", "log p(true segmentation)")
    assert 0 <= f <= 1 and chain < 0 and true < 0


def test_slot_diagnostics_needs_what_without_smoke(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        ran("slot_diagnostics", [], monkeypatch)
    assert exit_.value.code == 2
    assert "the following arguments are required: what (oracle or joint)" in capsys.readouterr().err


def test_the_image_examples_share_one_data_loader_and_one_c2st():
    """``images``, ``c2st`` and the grey levels were copied into diffusion, score, gan and ebm; they are
    ``examples/_common.py``'s, imported by the four."""
    for name in ("diffusion", "score", "gan", "ebm"):
        text = (EXAMPLES / f"{name}.py").read_text()
        assert "def images(" not in text and "def c2st(" not in text and '"digits": 17' not in text
        module = load_example(name)
        assert module.images.__code__.co_filename == str(EXAMPLES / "_common.py")
        assert name == "diffusion" or module.c2st.__code__.co_filename == str(EXAMPLES / "_common.py")
