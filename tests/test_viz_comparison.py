"""kizuna.viz's cluster matching and confusion tables against brute force, and the comparison figure."""

import itertools

import numpy as np
import pytest

from kizuna.metrics import clustering_accuracy
from kizuna.viz import confusion_table, match_clusters, plot_clustering_comparison


def _brute_force_best_names(truth, pred):
    """The renaming of clusters to classes with the most agreements, by enumerating every one-to-one map."""
    classes, clusters = np.unique(truth), np.unique(pred)
    best, best_hits = None, -1
    for perm in itertools.permutations(classes, len(clusters)):
        names = dict(zip(clusters, perm))
        hits = sum(names[p] == t for t, p in zip(truth, pred))
        if hits > best_hits:
            best, best_hits = names, hits
    return best, best_hits


@pytest.mark.parametrize("seed", range(5))
def test_matching_is_the_best_one_to_one_renaming(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.7, (truth * 3 + 5) % 7, rng.integers(0, 7, 60)) + 10  # ids 10..16
    pred = np.where(np.isin(pred, np.unique(pred)[:4]), pred, pred[0])  # four clusters, four classes
    matched = match_clusters(truth, pred)
    _, best_hits = _brute_force_best_names(truth, pred)
    assert (matched == truth).sum() == best_hits
    assert clustering_accuracy(truth, pred) == pytest.approx(best_hits / 60)
    # renaming is one-to-one: each cluster gets one class, two clusters never share one
    pairs = set(zip(pred.tolist(), matched.tolist()))
    assert len(pairs) == len({p for p, _ in pairs}) == len({m for _, m in pairs})


def test_confusion_table_has_the_matched_samples_on_its_diagonal():
    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(5), 30)
    pred = np.where(rng.random(150) < 0.8, (truth + 2) % 5, rng.integers(0, 5, 150))
    table, classes = confusion_table(truth, pred)
    assert classes.tolist() == list(range(5)) and table.shape == (5, 5)
    assert table.sum() == 150 and (table.sum(1) == 30).all()
    assert np.trace(table) / 150 == pytest.approx(clustering_accuracy(truth, pred))
    # more clusters than classes: the extra cluster's samples go to a last "none" column
    table, _ = confusion_table([0, 0, 1, 1, 1], [4, 4, 7, 7, 9])
    assert table.tolist() == [[2, 0, 0], [0, 2, 1]]


def test_comparison_figure_is_written_and_bad_indices_are_named(tmp_path):
    from matplotlib.image import imread

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 20)
    z = rng.normal(size=(60, 4)) + truth[:, None]
    runs = [("noisy", rng.integers(0, 3, 60)), ("good", (truth + 1) % 3)]
    path = plot_clustering_comparison(truth, runs, tmp_path / "f" / "cmp.png", confusions=[0, 1], highlight=[1],
                                      latent_panels=[(z, truth, "digits"), (z, match_clusters(truth, runs[0][1]),
                                                                            "clusters")],
                                      latent_legends=["class", "cluster"], mark_wrong=[False, True], chance=0.4,
                                      title="t", dpi=40)
    image = imread(path)
    assert image.shape[:2] == (round(4.3 * 2 * 40), round(4.6 * 3 * 40))  # 3 top panels, 2 rows
    with pytest.raises(ValueError, match=r"confusions \[2\] must index the 2 clusterings"):
        plot_clustering_comparison(truth, runs, tmp_path / "x.png", confusions=[2])
    with pytest.raises(ValueError, match=r"panel 0 \('a'\): labels must be 1-D with 60 entries"):
        plot_clustering_comparison(truth, runs, tmp_path / "x.png", latent_panels=[(z, truth[:5], "a")])
    for chance in (None, 0.3):  # crashed inside numpy with chance, drew an empty figure without
        with pytest.raises(ValueError, match="at least one"):
            plot_clustering_comparison(truth, [], tmp_path / "empty.png", chance=chance)
    assert not (tmp_path / "empty.png").exists()


def test_unmatched_clusters_are_not_read_as_a_class_named_minus_one():
    """With a real class -1, unmatched clusters were also named -1: [-1, -1, 0, 0] for t=[-1, -1, 0, 0], p=[0, 9, 1, 1],
    so accuracy computed from it was 1.0 instead of 0.75. The default -1 is now refused there, ``unmatched=`` names
    them otherwise; without an unmatched cluster a class -1 is fine."""
    t, p = [-1, -1, 0, 0], [0, 9, 1, 1]
    with pytest.raises(ValueError, match=r"unmatched=-1 \(the default\) is one of the classes"):
        match_clusters(t, p)
    named = match_clusters(t, p, unmatched=-2)
    assert named.tolist() == [-1, -2, 0, 0]
    assert np.mean(np.asarray(t) == named) == clustering_accuracy(t, p) == 0.75
    assert match_clusters(t, [5, 5, 1, 1]).tolist() == [-1, -1, 0, 0]  # every cluster matched: no ambiguity
    with pytest.raises(ValueError, match="unmatched=0 is one of the classes"):
        match_clusters(t, p, unmatched=0)
    assert sorted(match_clusters([0, 0, 1], [4, 5, 6], unmatched="none").tolist(), key=str) == [0, 1, "none"]
