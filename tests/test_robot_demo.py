"""The robot-house demo (``kizuna demo``) and its example script: they run and report what they claim."""

import os
from pathlib import Path

import numpy as np
import pytest

from kizuna import robot_demo
from kizuna.cli import main
from kizuna.datasets import simulated_house


def test_cli_runs_the_robot_house_by_default(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(robot_demo, "main", lambda argv: calls.append(argv) or 0)
    monkeypatch.chdir(tmp_path)  # the default output folder is created where the command runs
    assert main(["demo", "--quick", "--seed", "2", "--out", str(tmp_path)]) == 0
    assert main(["demo"]) == 0
    assert main(["demo", "--words", "phonemes"]) == 0
    assert calls == [["--seed=2", f"--out={tmp_path}", "--words=clean", "--quick"],  # one item each: --out=-x too
                     ["--seed=0", "--out=kizuna-demo-out", "--words=clean"],
                     ["--seed=0", "--out=kizuna-demo-out", "--words=phonemes"]]


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--seed", "-1"], "invalid seed -1: give a non-negative integer"),
    (["demo", "digits", "--seed", "x"], "invalid seed 'x'"),
    (["demo", "--seed", str(2**64)], f"invalid seed {2**64}: give an integer from 0 to 2**64 - 1"),
    (["demo", "--seed", str(10**30)], "give an integer from 0 to 2**64 - 1"),
    (["demo", "--out", "{file}"], "exists and is not a folder"),
    (["demo", "digits", "--words", "phonemes"], "--words applies to the house demo"),
])
def test_bad_demo_arguments_are_usage_errors_before_anything_runs(monkeypatch, tmp_path, capsys, argv, message):
    """A negative seed, a file given as the output folder, --words for the digits: exit status 2 and the reason, before
    any training (a traceback after the training before)."""
    monkeypatch.setattr(robot_demo, "main", lambda argv: pytest.fail("the demo ran"))
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(SystemExit) as stop:
        main([a.replace("{file}", str(afile)) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err
    assert err.startswith("usage: kizuna demo")  # the demo's usage line (--words showed the top-level one)


def test_the_largest_seed_the_cli_takes_is_the_largest_torch_and_numpy_take(monkeypatch, tmp_path):
    """2**64 - 1 passes to the demo; 2**64 is a usage error (test above), not a traceback from torch.manual_seed after
    the run started. The bound is torch's: 2**64 - 1 seeds torch's and numpy's generators, 2**64 not torch's."""
    import torch

    from kizuna.cli import SEED_MAX

    assert SEED_MAX == 2**64 - 1
    with torch.random.fork_rng():  # the global generator is left as it was
        torch.manual_seed(SEED_MAX)
    torch.Generator().manual_seed(SEED_MAX)
    np.random.default_rng(SEED_MAX)
    with pytest.raises((RuntimeError, ValueError, OverflowError)):
        torch.Generator().manual_seed(SEED_MAX + 1)
    calls = []
    monkeypatch.setattr(robot_demo, "main", lambda argv: calls.append(argv) or 0)
    assert main(["demo", "--seed", str(SEED_MAX), "--out", str(tmp_path)]) == 0
    assert calls[0][0] == f"--seed={SEED_MAX}"


def test_parsing_the_arguments_creates_no_folder(monkeypatch, tmp_path, capsys):
    """argparse checks --out (and its default) without creating it: a usage error or --help leaves the working folder
    as it was (it created ./kizuna-demo-out, and the --out folder with --help); the command creates it when it runs."""
    from kizuna import demo

    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(robot_demo, "main", lambda argv: calls.append(argv) or 0)
    monkeypatch.setattr(demo, "run_demo", lambda **kw: calls.append(kw))
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--frobnicate"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--out", "a/b/c", "--help"])
    assert stop.value.code == 0
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--seed", "-1", "--out", "d/e"])
    assert stop.value.code == 2
    assert list(tmp_path.iterdir()) == [] and calls == []
    assert main(["demo", "--out", "f/g"]) == 0 and (tmp_path / "f" / "g").is_dir()
    assert main(["demo", "digits", "--out", "h"]) == 0 and (tmp_path / "h").is_dir()
    assert main(["demo"]) == 0 and (tmp_path / "kizuna-demo-out").is_dir()
    assert len(calls) == 3


def test_an_output_folder_that_cannot_be_created_is_a_usage_error(monkeypatch, tmp_path, capsys):
    """A path below a file, or whose nearest existing folder is not writable, is refused while parsing (exit 2)."""
    monkeypatch.setattr(robot_demo, "main", lambda argv: pytest.fail("the demo ran"))
    (tmp_path / "afile").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    for out, message in [(tmp_path / "afile" / "sub", f"cannot create the folder {tmp_path / 'afile' / 'sub'}: "
                                                      f"{tmp_path / 'afile'} is not a folder"),
                         (locked / "x" / "y", f"{locked} is not writable"),
                         (locked, f"the folder {locked} is not writable")]:
        with pytest.raises(SystemExit) as stop:
            main(["demo", "--out", str(out)])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "locked"] and not any(locked.iterdir())


def test_place_name_f_on_hand_cases():
    house = {"place_names": [["kitchen"]], "words": [["the", "kitchen"]], "phoneme_words": [["D6", "kIC6n"]]}
    assert robot_demo.place_name_f(house, [["D6", "kIC6n"]]) == 1.0
    assert robot_demo.place_name_f(house, [["D6kIC6n"]]) == 0.0  # the name's span was not found
    # one of two overlapping predicted words is wrong: precision 0, recall 0
    assert robot_demo.place_name_f(house, [["D6k", "IC6n"]]) == 0.0


@pytest.mark.slow
def test_quick_demo_runs_and_saves_its_figures(tmp_path, capsys):
    assert robot_demo.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "integrated" in out and "SERKET" in out
    assert (tmp_path / "house_map.png").stat().st_size > 0 and (tmp_path / "confusion.png").stat().st_size > 0


def test_name_accuracy_is_perfect_for_an_oracle():
    house, test = simulated_house(60, seed=0), simulated_house(40, seed=1)

    class Oracle:
        def predict_words(self, x):
            names = [house["vocabulary"].index(n[0]) for n in house["place_names"]]
            out = np.full((len(x), len(house["vocabulary"])), 0.01)
            place = test["place"] if len(x) == 40 else house["place"]
            out[np.arange(len(x)), np.array(names)[place]] = 1.0
            return out / out.sum(1, keepdims=True)

    assert robot_demo.name_accuracy(Oracle(), house, test, house["vocabulary"]) == pytest.approx(1.0)


def test_the_shuffled_concepts_control_permutes_the_posterior_rows_the_same_way_every_update():
    """`--shuffle-concepts`: the segmenter sees the concept posterior's rows permuted across events, one fixed
    permutation (the same at every update, so the concepts stay attached to the same wrong events)."""
    seg = robot_demo._ShuffledConcepts(shuffle_seed=3, prior_mode="name", name="segmenter")
    assert seg.prior_mode == "name" and seg._shuffled(None) is None
    resp = np.random.default_rng(0).dirichlet(np.ones(4), size=50)
    once, again = seg._shuffled(resp), seg._shuffled(resp)
    perm = np.random.default_rng(3).permutation(50)
    assert np.array_equal(once, resp[perm]) and np.array_equal(once, again)
    assert not np.array_equal(once, resp)
    assert np.array_equal(np.sort(once, axis=0), np.sort(resp, axis=0))  # the same rows, moved


@pytest.mark.slow
def test_new_utterances_are_segmented_by_the_fitted_segmenters(capsys):
    """``run(..., new_utterances=N)``: the place names' F of `WordSegmenter.segment` on a new draw of the house,
    for the connected, paired and alone segmenters, printed beside the fit's own."""
    result = robot_demo.run(0, 120, "phonemes", 2, sweeps=5, segmenter={"prior_mode": "name", "n_iter": 3},
                            new_utterances=20)
    for key in ("connected", "paired", "alone", "connected_plain", "connected_placed"):
        assert 0.0 <= result[f"name_f_new_{key}"] <= 1.0
    robot_demo._print(result)
    assert "new utterances (segment())" in capsys.readouterr().out


def test_the_map_labels_places_with_the_words_of_the_concepts_own_count_child():
    """With phonemes the concept's words are the segmenter's: the labels were looked up in the house's word list by
    the segmenter's indices (kitchen labelled 'hall'). Each label is the word of largest lift, computed here by
    hand from the chain's counts, in the segmenter's vocabulary."""
    result = robot_demo.run(0, 60, "phonemes", 2, sweeps=3, segmenter={"n_iter": 2})
    spco = result["model"]
    vocabulary = result["vocabulary"]
    assert vocabulary != simulated_house(60, seed=0)["vocabulary"]
    sampler = spco.sampler_
    counts, beta = sampler.state.sums[0], sampler.betas[0]
    theta = (counts + beta) / (counts.sum(1, keepdims=True) + counts.shape[1] * beta)
    best = {c: vocabulary[int(np.argmax(theta[c] / theta.mean(0)))] for c in range(theta.shape[0])}
    labels = robot_demo.place_labels(result)
    assert labels
    classes = spco.classes.numpy()
    for _, word in labels:
        assert word in vocabulary and word in best.values()
    assert {w for _, w in labels} <= {best[c] for c in set(classes.tolist())}
