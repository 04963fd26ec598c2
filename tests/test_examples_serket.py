"""The SERKET examples (examples/serket_*.py) learn what they claim.

Smoke runs (one thread, a subset and fewer sweeps) check every model against chance: a random
partition scored by Hungarian matching averages 0.17 on the 500 smoke digits (at most 0.21 over 200
draws), 0.36 on the 50 objects (at most 0.46), 0.30 on the 100 HMM points. Where the gap is
robust at smoke scale (seeds 0-2) the integrated model is also checked against its parts. The full
claims, i.e. the table of ``docs/serket_examples.md``, are ``slow`` tests. The data are SERKET's
example files under ``../shared/data/serket``; without them these tests are skipped.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from example_loader import load_example, run_smoke

from kizuna import modules as km
from kizuna.metrics import clustering_accuracy

pytestmark = pytest.mark.shared_data("serket/mnist3000.npz", "serket/mMLDA", "serket/HMM")  # tests/conftest.py


def _chance(labels, draws=200, seed=0):
    rng = np.random.default_rng(seed)
    k = len(np.unique(labels))
    return max(clustering_accuracy(labels, rng.integers(0, k, len(labels))) for _ in range(draws))


def test_chance_levels_quoted_above(shared_data):
    labels = np.load(shared_data("serket/mnist3000.npz"))["label"][:500]
    assert _chance(labels) < 0.22
    objects = np.loadtxt(shared_data("serket/mMLDA/Object_Category.txt"))
    assert _chance(objects) < 0.47


def test_vae_gmm_clusters_digits():
    m = run_smoke("serket_vae_gmm")
    # measured (seeds 0, 1, 2): integrated 0.546 / 0.450 / 0.426, GMM on the lone VAE's latents 0.498 / 0.478 / 0.514
    # (the order flips between seeds)
    assert m["vae_gmm_accuracy"] > 0.4 and m["gmm_on_vae_accuracy"] > 0.4
    assert m["vae_gmm_nmi"] > 0.4


def test_vae_gmm_mm_clusters_digits():
    m = run_smoke("serket_vae_gmm_mm")
    assert m["vae_gmm_mm_accuracy"] > 0.4  # measured 0.496; the MM's gain needs full runs (slow test)


@pytest.mark.filterwarnings("ignore:mlda. modality 0:UserWarning")  # SERKET's own lopsided weights, on purpose
def test_vae_gmm_mlda_fuses_speech_and_images():
    m = run_smoke("serket_vae_gmm_mlda")
    # measured (seeds 0, 1, 2): integrated MLDA 0.810 / 0.738 / 0.784, GMM on VAE latents 0.498 / 0.478 / 0.514,
    # speech alone 0.714 / 0.682 / 0.854 (so "beats speech alone" is left to the slow test)
    assert m["vae_gmm_mlda_accuracy"] > m["gmm_on_vae_accuracy"] + 0.15
    assert m["vae_gmm_mlda_accuracy"] > 0.6 and m["speech_mlda_accuracy"] > 0.5
    # SERKET's weights [200, 200]: the MLDA copies the image clusters and loses the speech (0.530 / 0.482 / 0.440)
    assert m["serket_weights_accuracy"] < m["vae_gmm_mlda_accuracy"] - 0.15


@pytest.mark.filterwarnings("ignore:mlda. modality 0:UserWarning")  # SERKET's own lopsided weights, on purpose
def test_vae_gmm_mlda_mm_runs_above_chance():
    m = run_smoke("serket_vae_gmm_mlda_mm")
    assert m["vae_gmm_mlda_mm_accuracy"] > 0.5


def test_hmm_example_recovers_the_cycle():
    m = run_smoke("serket_hmm")
    # the four states visited in order 0,1,2,3,...; the one-start GMM alone merges two blobs at this seed (0.75),
    # GMM+MM does not, with or without the order (test_hmm_gap_is_the_gmm_alones_merges_not_the_cycle)
    assert m["gmm_mm_accuracy"] >= m["gmm_accuracy"]
    assert m["gmm_mm_accuracy"] > 0.95 and m["baum_welch_accuracy"] > 0.95
    # the controls: the GMM alone with four starts, GMM+MM on the shuffled order (measured 0.99 / 0.99)
    assert m["gmm_restarts_accuracy"] > 0.95 and m["gmm_mm_shuffled_accuracy"] > 0.95


def test_mmlda_prior_once_per_sample_does_not_hurt():
    m = run_smoke("serket_mmlda")
    for key in ("object", "motion"):
        assert m[f"{key}_alone_accuracy"] > 0.6 and m[f"{key}_once_accuracy"] > 0.6
        # the prior counted once per object keeps the lower MLDAs within 0.1 of training alone
        assert m[f"{key}_once_accuracy"] > m[f"{key}_alone_accuracy"] - 0.1


@pytest.mark.filterwarnings("ignore:mlda. modality 0:UserWarning")  # SERKET's own lopsided weights, on purpose
def test_vae_under_mlda_on_objects():
    m = run_smoke("serket_mlda_vae")
    # the GMM in the integrated model gains from the MLDA's prior in accuracy. Smoke runs (50 objects), seeds 0-2:
    # accuracy 0.52 / 0.66 / 0.60 against 0.50 / 0.44 / 0.44 alone (seed 0: one object); ARI 0.331 / 0.484 / 0.521
    # against 0.365 / 0.268 / 0.270, so the ARI gain is not robust at smoke scale (seed 0 loses 0.034) and is not
    # asserted (it was, +0.03, while the VAE's training streams continued from update to update)
    assert m["integrated_gmm_accuracy"] > m["gmm_on_vae_accuracy"]
    assert m["integrated_accuracy"] > 0.6 and m["histogram_mlda_accuracy"] > 0.6


def test_examples_import_only_the_shared_files_and_configure_through_the_library():
    """No example imports another (shared parts live in _serket.py), and none sets a module's settings
    between sweeps (the VAE schedule is Graph.fit's, the prior's weighting an MLDA option)."""
    import re

    root = Path(__file__).resolve().parents[1] / "examples"
    for path in sorted(root.glob("serket_*.py")) + [root / "_serket.py"]:
        text = path.read_text()
        assert not re.search(r"^import serket_|^from serket_", text, re.M), path.name
        assert not re.search(r"\.(epochs|receives|alpha|method|generator) = ", text), path.name
    s = load_example("serket_vae_gmm").S
    d = s.Digits(np.zeros((4, 784)), np.ones((4, 10)), np.arange(4))
    _, _, mlda = s.build_vae_gmm_mlda(d, s.SMOKE, prior_per="sample")
    assert mlda.prior_per == "sample"


def test_missing_data_is_a_clear_error(tmp_path):
    S = load_example("serket_vae_gmm").S
    with pytest.raises(FileNotFoundError, match="pass --data DIR"):
        S.data_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="mnist3000.npz"):
        S.digits(tmp_path)


@pytest.mark.parametrize("example, lacks", [
    ("serket_vae_gmm", "mnist3000.npz"),
    ("serket_hmm", "HMM/data.txt, HMM/correct.txt"),
    ("serket_mmlda", "mMLDA/dsift.txt, mMLDA/mfcc.txt"),
])
def test_a_data_folder_without_the_examples_files_is_a_usage_error(tmp_path, example, lacks):
    """A --data folder that exists but lacks the files an example reads ended in a FileNotFoundError traceback after
    the example had started; it is a usage error (exit 2) naming the files, before anything runs."""
    import subprocess
    import sys

    from example_loader import EXAMPLES

    done = subprocess.run([sys.executable, str(EXAMPLES / f"{example}.py"), "--smoke", "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"the SERKET data folder {tmp_path} lacks {lacks}" in done.stderr
    assert "Traceback" not in done.stderr


def test_seed_table_is_mean_and_sample_sd():
    S = load_example("serket_vae_gmm").S
    runs = [{"a_accuracy": x, "a_ari": 0.0, "a_nmi": 1.0} for x in (0.5, 0.7)]
    row = S.seed_table("ex", {"a": "model a"}, runs)
    assert row == "| ex | model a | 0.600 ± 0.141 | 0.000 ± 0.000 | 1.000 ± 0.000 |"


@pytest.mark.slow
def test_full_vae_gmm_mlda_claims():
    """Full size, seed 0 (about 2.5 CPU minutes): fusion is above either modality alone — well above the speech
    (0.808 against 0.731), level with the GMM on a VAE trained alone (0.808 against 0.806; the margin was 0.1 before
    the VAE's training streams were reseeded at every update, 2026-12-06) — and SERKET's weights are far below it
    (0.616). Over the recorded five seeds (docs/serket_examples.md) the MLDA is above both parts at four (seed 3:
    0.750 against 0.752), 0.819 against 0.740 on average. (The integrated model's GMM is below the GMM alone on
    average now, 0.710 against 0.740, above it at two seeds of five: not asserted.)"""
    m = load_example("serket_vae_gmm_mlda").run(seed=0)
    assert m["vae_gmm_mlda_accuracy"] > m["speech_mlda_accuracy"] + 0.05
    assert m["vae_gmm_mlda_accuracy"] > m["gmm_on_vae_accuracy"]
    assert m["serket_weights_accuracy"] < m["vae_gmm_mlda_accuracy"] - 0.1


@pytest.mark.slow
def test_full_vae_gmm_mm_claims():
    m = load_example("serket_vae_gmm_mm").run(seed=0)
    assert m["vae_gmm_mm_accuracy"] > m["vae_gmm_accuracy"]


@pytest.mark.slow
def test_full_hmm_claims_over_five_seeds(one_thread):
    runs = [load_example("serket_hmm").run(seed=s) for s in range(5)]
    assert np.mean([r["gmm_mm_accuracy"] for r in runs]) >= np.mean([r["gmm_accuracy"] for r in runs])
    assert np.mean([r["baum_welch_accuracy"] for r in runs]) > 0.95


def _merged(gmm):
    """Two of the four blobs in one component and another component empty (what the GMM alone falls into)."""
    sizes = np.bincount(gmm.classes.numpy(), minlength=4)
    return sizes.min() == 0 and sizes.max() >= 45 and gmm.accuracy <= 0.76


@pytest.mark.slow
def test_hmm_gap_is_the_gmm_alones_merges_not_the_cycle(one_thread):
    """Full size, seeds 0-4 (about 20 s): the table's GMM+MM 1.000 against 0.892 for the GMM alone is not the
    4-cycle. GMM+MM on the points in a shuffled order (no cycle to read) scores 0.97-0.99, within 0.03 of GMM+MM;
    every GMM-alone run (one start, and four starts, `n_init=4`) either scores at least 0.95 — then the shuffled
    GMM+MM is not above it by more than 0.01 — or has merged two blobs into one component and emptied another;
    and at every seed one of the two GMM-alone runs does not merge. Measured: one start merges at seeds 0 and 1,
    four starts at seed 3 (all its starts at 0.95-0.98 after the first update, merged at the third)."""
    hmm = load_example("serket_hmm")
    x, states = hmm.load(None)
    for seed in range(5):
        fitted = hmm.models(x, states, sweeps=100, n_iter=5, seed=seed)
        integrated, shuffled = fitted["gmm_mm"].accuracy, fitted["gmm_mm_shuffled"].accuracy
        assert integrated == 1.0 and not _merged(fitted["gmm_mm_shuffled"]), seed
        assert shuffled >= integrated - 0.03, (seed, shuffled)
        alone = [fitted["gmm"], fitted["gmm_restarts"]]
        for gmm in alone:
            assert _merged(gmm) or (gmm.accuracy >= 0.95 and shuffled <= gmm.accuracy + 0.01), (seed, gmm.accuracy)
        assert max(gmm.accuracy for gmm in alone) >= integrated - 0.03, seed


def test_table_merges_seed_sets_run_in_separate_processes(tmp_path):
    table = load_example("serket_table")
    run = {f"{p}_{m}": v for p in table.importlib.import_module("serket_hmm").ROWS for m, v in
           (("accuracy", 1.0), ("ari", 0.5), ("nmi", 0.0))}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(table.json.dumps({"serket_hmm": [run, run]}))
    b.write_text(table.json.dumps({"serket_hmm": [{**run, "gmm_mm_accuracy": 0.7}]}))
    merged = table.merge([a, b])
    assert "| GMM+MM (HMM) | GMM+MM = HMM (integrated): GMM | 0.900 ± 0.173 |" in merged
    assert merged.endswith("seeds per example: serket_hmm: 3")
    b.write_text(table.json.dumps({"nope": []}))
    with pytest.raises(ValueError, match="unknown example 'nope'"):
        table.merge([a, b])


def test_document_shows_the_recorded_five_seed_table():
    """docs/serket_examples.md's table is the one the recorded per-seed runs give (no hand-edited figures)."""
    table = load_example("serket_table")
    root = Path(__file__).resolve().parents[1]
    merged = table.merge([root / "docs" / "results" / "serket_table.json"])
    rows, counts = merged.split("\n\nseeds per example: ")
    assert all(c.endswith(": 5") for c in counts.split(", ")) and len(counts.split(", ")) == len(table.EXAMPLES)
    assert rows in (root / "docs" / "serket_examples.md").read_text()


def test_feedback_study_oracle_sends_the_true_class_means(tmp_path):
    study = load_example("serket_feedback_study")
    x = torch.rand(60, 6, generator=torch.Generator().manual_seed(0))
    labels = np.arange(60) % 3

    def build(gmm_class):
        vae = km.VAE(2, hidden=(8,), epochs=2, batch_size=20).connect(km.Observation(x))
        return km.Graph([gmm_class(3, category=labels, max_iter=3, name="gmm").connect(vae)]), vae

    graph, vae = build(km.GMM)
    gmm = graph["gmm"]
    graph.fit(n_iter=1, seed=0)
    own = vae.backward_messages[gmm.name].value
    torch.testing.assert_close(own, torch.as_tensor(gmm.means_)[gmm.classes].to(own.dtype))  # SERKET: its classes
    saved = graph.save(tmp_path / "first")
    graph, vae = build(study.OracleMeansGMM)  # the same state, loaded into the oracle's subclass
    gmm = graph.load(saved)["gmm"]
    graph.fit(n_iter=1, seed=1)
    sent = vae.backward_messages[gmm.name].value
    z = vae.latent
    expected = torch.stack([z[torch.as_tensor(labels == c)].mean(0) for c in range(3)])[torch.as_tensor(labels)]
    torch.testing.assert_close(sent, expected)


def test_feedback_study_smoke_runs_every_variant():
    study = load_example("serket_feedback_study")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = study.study(0, smoke=True, data=None)
    finally:
        torch.set_num_threads(threads)
    assert set(out) == {"first update", *study.VARIANTS}
    for variant in study.VARIANTS:
        assert 0.2 < out[variant]["accuracy"] <= 1 and 0 <= out[variant]["moved"] <= 1
        assert 0.2 < out[variant]["fresh"] <= 1
