"""kizuna.viz: the PCA projection against scikit-learn, the plot file, and the errors."""

import sys

import numpy as np
import pytest
import torch

from kizuna.viz import confusion_table, match_clusters, pca_2d, plot_latent_space


def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) + 3.0
    coords, explained = pca_2d(z)
    ref = PCA(n_components=2).fit(z)
    ref_coords = ref.transform(z)
    # principal axes are defined up to sign: compare column by column after aligning the sign
    for j in range(2):
        sign = np.sign(ref_coords[:, j] @ coords[:, j].numpy())
        np.testing.assert_allclose(coords[:, j].numpy(), sign * ref_coords[:, j], atol=1e-10)
    np.testing.assert_allclose(explained.numpy(), ref.explained_variance_ratio_, rtol=1e-10)


def test_pca_signs_are_fixed_and_one_dimensional_latents_are_padded():
    z = torch.randn(50, 3, dtype=torch.float64)
    a, _ = pca_2d(z)
    b, _ = pca_2d(-z)  # flipping the data flips the axes, not the coordinates' convention
    torch.testing.assert_close(a, -b * torch.sign((a * -b).sum(0)))
    coords, explained = pca_2d(torch.arange(6.0).unsqueeze(1))
    assert coords.shape == (6, 2) and bool((coords[:, 1] == 0).all())
    assert explained.tolist() == [1.0, 0.0]


def test_plot_writes_one_panel_per_colouring(tmp_path):
    from matplotlib.image import imread

    rng = np.random.default_rng(1)
    z = rng.normal(size=(120, 4))
    labels = np.repeat(np.arange(6), 20)
    path = plot_latent_space([(z, labels, "true class"), (torch.as_tensor(z), torch.as_tensor(labels[::-1].copy()),
                                                          "cluster")], tmp_path / "sub" / "latent.png",
                             title="demo", dpi=50)
    assert path == tmp_path / "sub" / "latent.png" and path.is_file()
    image = imread(path)
    # two panels of 4.2 x 4.4 inches at 50 dpi
    assert image.shape[:2] == (220, 420)
    many = plot_latent_space([(z, np.arange(120) % 30, "30 classes, no legend")], tmp_path / "many.png", dpi=30)
    assert imread(many).shape[:2] == (132, 126)


def test_bad_panels_are_named(tmp_path):
    z = np.zeros((10, 2))
    with pytest.raises(ValueError, match=r"panel 1 \('b'\): labels must be 1-D with 10 entries"):
        plot_latent_space([(z, np.zeros(10), "a"), (z, np.zeros(9), "b")], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"panel 0 \('a'\): latents must be N x D"):
        plot_latent_space([(np.zeros(10), np.zeros(10), "a")], tmp_path / "x.png")
    with pytest.raises(ValueError, match="NaN"):
        pca_2d(np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="at least one"):
        plot_latent_space([], tmp_path / "x.png")
    # NaN among float labels: a KeyError: nan from the palette before (named as kizuna.metrics names it)
    with pytest.raises(ValueError, match=r"panel 0 \('a'\): labels has a missing label \(nan\) at index 2"):
        plot_latent_space([(z, np.array([0.0, 1.0, np.nan] + [0.0] * 7), "a")], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"panel 0 \('a'\): labels has a missing label \(nan\) at index 0"):
        plot_latent_space([(z, torch.tensor([np.nan] * 2 + [0.0] * 8), "a")], tmp_path / "x.png")


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `import matplotlib.figure` fail
    with pytest.raises(ImportError, match=r"pip install 'kizuna\[demo\]'"):
        plot_latent_space([(np.zeros((4, 2)), np.zeros(4), "a")], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_core_does_not_import_matplotlib():
    import subprocess

    code = ("import sys, kizuna, kizuna.modules, kizuna.models, kizuna.viz; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # even importing kizuna.viz defers matplotlib to the first plot


def test_confusion_table_tells_unmatched_clusters_from_a_class_named_minus_one_and_takes_strings():
    """The unmatched column is found by the matching itself, not by the name -1: a true class labelled -1 clustered
    perfectly lies on the diagonal (it went to the "none" column: accuracy 0.6 for a perfect clustering), and string
    labels with more clusters than classes work (a KeyError '-1' before)."""
    table, classes = confusion_table([-1, -1, 0, 0, 1], [0, 0, 1, 1, 2])
    assert classes.tolist() == [-1, 0, 1] and table.tolist() == [[2, 0, 0], [0, 2, 0], [0, 0, 1]]
    table, classes = confusion_table(["a", "a", "b"], ["x", "y", "z"])
    assert classes.tolist() == ["a", "b"] and table.sum() == 3 and table.shape == (2, 3)
    assert table[:, 2].sum() == 1  # the cluster left without a class
    assert match_clusters(["a", "a", "b"], ["x", "y", "z"]).tolist().count(-1) == 1


def test_a_class_keeps_its_colour_in_every_panel():
    """Integer classes are coloured by their value: digit 3 has one colour whether a panel holds all classes or not, and
    "none" (-1) is grey (tab10 was resampled to the number of classes present, shifting every colour)."""
    from kizuna.viz.latent import _colours

    _, full = _colours(np.arange(10))
    _, some = _colours(np.array([-1, 2, 3, 7]))
    assert all(some[c] == full[c] for c in (2, 3, 7)) and some[-1] != full[0]


def test_string_classes_with_unmatched_clusters_are_drawn(tmp_path):
    """`match_clusters` of string classes marks a cluster matched to no class -1, a number among strings: the plots
    failed sorting that mix ("'<' not supported between 'int' and 'str'"); -1 is grey, the classes keep their
    colours."""
    from kizuna.viz.latent import _colours

    labels = match_clusters(["a", "b", "b", "a"], ["x", "y", "z", "x"])
    assert labels.tolist() == ["a", "b", -1, "a"]
    classes, palette = _colours(labels)
    assert classes.tolist() == [-1, "a", "b"] and palette[-1] == (0.6, 0.6, 0.6, 1.0)
    assert palette["a"] != palette["b"] and palette["a"] == _colours(np.array(["a", "b"]))[1]["a"]
    out = plot_latent_space([(np.random.default_rng(0).normal(size=(4, 2)), labels, "clusters")], tmp_path / "s.png",
                            dpi=20)
    assert out.is_file()


def test_plots_return_the_path_they_wrote(tmp_path):
    """A name without an extension: matplotlib writes name.png, which is now the path returned (it returned the bare
    name, which did not exist); an existing directory as the path is refused (it wrote <dir>.png beside it)."""
    from kizuna.viz import plot_clustering_comparison

    z, t = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    out = plot_latent_space([(z, t, "x")], tmp_path / "figure", dpi=20)
    assert out == tmp_path / "figure.png" and out.is_file() and not (tmp_path / "figure").exists()
    out = plot_clustering_comparison(t, [("a", t)], str(tmp_path / "cmp"), dpi=20)
    assert out == tmp_path / "cmp.png" and out.is_file()
    assert plot_latent_space([(z, t, "x")], tmp_path / "x.pdf", dpi=20) == tmp_path / "x.pdf"
    (tmp_path / "d").mkdir()
    for plot in (lambda p: plot_latent_space([(z, t, "x")], p), lambda p: plot_clustering_comparison(t, [("a", t)], p)):
        with pytest.raises(ValueError, match="is a directory"):
            plot(tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.png", "d", "figure.png", "x.pdf"]


def test_a_failure_while_writing_a_figure_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    """A figure is drawn in memory and written atomically (temporary file, rename): an encoder that fails half-way
    (a full disk, a kill) leaves the previous image as it was and no temporary file. matplotlib wrote to the path
    itself, so the previous image was truncated to what the encoder had written."""
    from PIL import Image

    from kizuna.viz import plot_clustering_comparison

    z, t = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    path = plot_latent_space([(z, t, "x")], tmp_path / "latent.png", dpi=20)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def fail_half_way(image, fp, filename, *args):
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(Image.SAVE, "PNG", fail_half_way)
    for plot in (lambda: plot_latent_space([(z, t, "y")], path, dpi=30),
                 lambda: plot_clustering_comparison(t, [("a", t)], path, dpi=30)):
        with pytest.raises(OSError, match="No space left"):
            plot()
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latent.png"]
    monkeypatch.undo()
    path.chmod(0o600)
    assert plot_latent_space([(z, t, "y")], path, dpi=30) == path and path.read_bytes() != before
    assert path.read_bytes().startswith(b"\x89PNG")
    assert sys.platform == "win32" or path.stat().st_mode & 0o777 == 0o600  # the file's permissions are kept
    assert plot_latent_space([(z, t, "x")], tmp_path / "x.svg", dpi=20).read_bytes().lstrip().startswith(b"<?xml")
