"""kizuna.viz: one colour per class across panels and figures, observed modules shaded in `render`, and the plot
helpers' refusal of missing labels and complex latents (named as `kizuna.metrics` names a missing label)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kizuna import modules as km
from kizuna.metrics import clustering_accuracy
from kizuna.viz import (
    draw_latent_space,
    match_clusters,
    model_spec,
    plot_clustering_comparison,
    plot_latent_space,
    render,
)

GREY = (0.6, 0.6, 0.6, 1.0)


def _rgba(hex_colour: str) -> tuple[float, ...]:
    from matplotlib.colors import to_rgba

    return to_rgba(hex_colour)


def _point_colours(ax) -> np.ndarray:
    """The RGB of each point of the panel's scatter (alpha is the plot's 0.8)."""
    return ax.collections[0].get_facecolors()[:, :3]


def _captured(monkeypatch, module: str) -> list:
    """The figures a plot helper of ``kizuna.viz.<module>`` draws (its `save_figure` swapped for one keeping them)."""
    import importlib

    figures: list = []
    target = importlib.import_module(f"kizuna.viz.{module}")
    monkeypatch.setattr(target, "save_figure", lambda fig, path, dpi, what, **kw: figures.append(fig) or path)
    return figures


def test_an_integer_class_has_the_colour_of_its_value_whatever_the_other_classes():
    """Class 3 was tab10(3) in a panel of classes 0..9 and tab20(3) (another colour) in one holding 10 or 11: the
    palette depended on the largest label present. The expected colours are matplotlib's published hex values of
    tab10 (#d62728 is its 4th colour), tab20b and the grey of an unmatched cluster."""
    from kizuna.viz._backend import new_figure

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(12), 5)  # classes 0..11
    named = match_clusters(truth, np.minimum(truth, 7))  # 8 clusters, named after classes 0..7
    z = rng.normal(size=(60, 3))
    fig = new_figure()
    a, b, c = fig.subplots(1, 3)
    draw_latent_space(a, z, truth, "true class")
    draw_latent_space(b, z, named, "cluster, named after its class")
    draw_latent_space(c, z, truth % 4, "four classes")
    i = int(np.flatnonzero(truth == 3)[0])
    red = _rgba("#d62728")[:3]  # tab10's class 3
    for ax in (a, b, c):
        np.testing.assert_allclose(_point_colours(ax)[i], red, atol=1e-12)
    j = int(np.flatnonzero(truth == 11)[0])  # class 11: tab20b's second colour, #5254a3
    np.testing.assert_allclose(_point_colours(a)[j], _rgba("#5254a3")[:3], atol=1e-12)
    # class ids as floats (a float tensor) are the same classes: 3.0 is coloured as 3
    fig = new_figure()
    ax = fig.subplots()
    draw_latent_space(ax, z, torch.as_tensor(truth, dtype=torch.float32), "float ids")
    np.testing.assert_allclose(_point_colours(ax)[i], red, atol=1e-12)
    # -1, a cluster matched to no class, is grey next to the classes 0..9 of another panel
    fig = new_figure()
    ax = fig.subplots()
    draw_latent_space(ax, z[:4], np.array([-1, 0, 9, 45]), "with an unmatched cluster")
    # 45: the last of the 46 colours, tab20c's 16th (#dadaeb; its 4 greys left out), then 46 is 0's colour again
    expected = [GREY[:3], _rgba("#1f77b4")[:3], _rgba("#17becf")[:3], _rgba("#dadaeb")[:3]]
    np.testing.assert_allclose(_point_colours(ax), expected, atol=1e-12)
    from kizuna.viz.latent import class_colour

    assert class_colour(46) == class_colour(0) and class_colour(-1) == GREY
    assert len({class_colour(v) for v in range(46)}) == 46  # every value of one cycle its own colour


def test_a_string_class_keeps_its_colour_across_the_panels_of_a_figure(monkeypatch, tmp_path):
    """String classes are coloured by rank: "b" was the 2nd of ["a", "b"] in one panel and the 1st of ["b", "c"] in the
    next, so it changed colour; the panels of one figure now share one ordering (and a separately drawn figure agrees
    when given the same ``colour_order``)."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 2))
    first = np.array(["a", "b", "a", "b", "a", "b"])
    second = np.array(["b", "c", "b", "c", "b", "c"])
    figures = _captured(monkeypatch, "latent")
    plot_latent_space([(z, first, "first"), (z, second, "second")], tmp_path / "x.png")
    a, b = figures[0].axes[:2]
    np.testing.assert_array_equal(_point_colours(a)[1], _point_colours(b)[0])  # "b" in both panels
    assert not np.array_equal(_point_colours(a)[0], _point_colours(a)[1])  # "a" != "b"
    assert not np.array_equal(_point_colours(b)[0], _point_colours(b)[1])  # "b" != "c"
    assert not np.array_equal(_point_colours(a)[0], _point_colours(b)[1])  # "a" != "c"
    # a figure drawn on its own with the same ordering gives "c" the colour it had beside the other panel
    plot_latent_space([(z, second, "alone")], tmp_path / "y.png", colour_order=["a", "b", "c"])
    np.testing.assert_array_equal(_point_colours(figures[1].axes[0]), _point_colours(b))
    with pytest.raises(ValueError, match=r"lacks the classes \['c'\]"):
        plot_latent_space([(z, second, "alone")], tmp_path / "y.png", colour_order=["a", "b"])
    # the comparison figure's latent panels share one ordering too
    figures = _captured(monkeypatch, "comparison")
    truth = np.array([0, 1, 0, 1, 0, 1])
    plot_clustering_comparison(truth, [("m", truth)], tmp_path / "c.png",
                               latent_panels=[(z, first, "first"), (z, second, "second")])
    bottom = [ax for ax in figures[0].axes if ax.get_title() in ("first", "second")]
    np.testing.assert_array_equal(_point_colours(bottom[0])[1], _point_colours(bottom[1])[0])


def test_render_shades_observed_modules_of_a_graph():
    """``observed=["gmm"]`` was checked against the node names and then ignored for a module graph."""
    rng = np.random.default_rng(0)
    image = km.Observation(rng.random((6, 4)), name="image")
    gmm = km.GMM(2, name="gmm").connect(image)
    spec = model_spec(km.Graph([gmm]), observed=["gmm"])
    assert {n["name"]: n["observed"] for n in spec["nodes"]} == {"image": True, "gmm": True}
    lines = render(km.Graph([gmm]), observed=["gmm"]).dot.splitlines()
    assert '    "gmm" [label="gmm\\nGMM", shape=box, style=filled, fillcolor="gray80"];' in lines
    assert '    "image" [label="image", shape=box, style=filled, fillcolor="gray80"];' in lines
    # a Module alone, and without observed= the module stays a plain box
    assert '    "gmm" [label="gmm\\nGMM", shape=box, style=filled, fillcolor="gray80"];' in \
        render(gmm, observed=["gmm"]).dot.splitlines()
    assert '    "gmm" [label="gmm\\nGMM", shape=box];' in render(km.Graph([gmm])).dot.splitlines()


@pytest.mark.parametrize(("labels", "shown", "index"), [
    ([0, 1, None, 1], "None", 2),
    (np.array([0, 1, float("nan"), 1], dtype=object), "nan", 2),
    ([0.0, 1.0, 1.0, float("inf")], "inf", 3),
    (np.array(["a", None, "b", "a"], dtype=object), "None", 1),
])
def test_missing_labels_are_refused_as_the_metrics_refuse_them(tmp_path, labels, shown, index):
    """None gave a raw numpy TypeError; NaN among objects and inf were drawn as one more class. The message is the one
    `kizuna.metrics` gives for the same labels (its reference), after the panel's name."""
    z = np.random.default_rng(0).normal(size=(4, 2))
    with pytest.raises(ValueError) as reference:
        clustering_accuracy(labels, [0, 0, 1, 1])
    tail = str(reference.value).removeprefix("labels_true")
    assert tail == f" has a missing label ({shown}) at index {index}: every sample needs a label"
    with pytest.raises(ValueError) as err:
        plot_latent_space([(z, labels, "a")], tmp_path / "x.png")
    assert str(err.value) == f"plot_latent_space panel 0 ('a'): labels{tail}"
    from kizuna.viz._backend import new_figure

    with pytest.raises(ValueError, match=r"^draw_latent_space panel 0 \('b'\): labels has a missing label"):
        draw_latent_space(new_figure().subplots(), z, labels, "b")
    with pytest.raises(ValueError, match=r"^plot_clustering_comparison panel 0 \('c'\): labels has a missing label"):
        plot_clustering_comparison([0, 0, 1, 1], [("m", [0, 0, 1, 1])], tmp_path / "c.png",
                                   latent_panels=[(z, labels, "c")])
    assert not any(tmp_path.iterdir())


def test_complex_latents_are_refused():
    """The cast to float64 dropped the imaginary part with only a warning."""
    from kizuna.viz import pca_2d

    z = np.random.default_rng(0).normal(size=(5, 2))
    with pytest.raises(ValueError, match=r"^pca_2d: latents are complex \(torch.complex128\)"):
        pca_2d(z + 1j * z)
    with pytest.raises(ValueError, match=r"panel 0 \('a'\): latents are complex \(torch.complex64\)"):
        plot_latent_space([(torch.randn(5, 2, dtype=torch.complex64), [0, 1, 0, 1, 0], "a")], "unused.png")


def test_integer_classes_beyond_the_colours_by_value_are_coloured_by_rank():
    """Classes 0 and 46 (or 100 and 146) shared one colour (value % 46); beyond 0..45 the classes of a panel are now
    coloured by rank, each its own colour."""
    from kizuna.viz.latent import _colours

    for labels in ([0, 46, 0], [100, 146, 100], [1000, 2000, 3000]):
        classes, palette = _colours(np.asarray(labels))
        assert len({tuple(palette[c]) for c in classes}) == len(set(labels))
    classes, palette = _colours(np.asarray([3, 7]))  # within 0..45: by value
    from kizuna.viz.latent import class_colour
    assert tuple(palette[3]) == class_colour(3)


def test_the_unmatched_marker_stays_grey_when_integer_classes_are_coloured_by_rank():
    """With a class of 46 or more the integer classes are coloured by rank; -1 (`match_clusters`' unmatched cluster)
    took the first colour, that of class 0 in a figure coloured by value."""
    from kizuna.viz.latent import _NONE_COLOUR, _colours, ranked_classes

    classes, palette = _colours(np.asarray([-1, 0, 50, 0]))
    assert list(classes) == [-1, 0, 50] and palette[-1] == _NONE_COLOUR
    assert len({tuple(palette[c]) for c in classes}) == 3
    order = ranked_classes([np.asarray([-1, 0, 50]), np.asarray([3, 50])])
    assert -1 not in order
    _, shared = _colours(np.asarray([-1, 3]), order)
    assert shared[-1] == _NONE_COLOUR
