r"""A latent space seen in two dimensions: principal-component projection and coloured scatter plots.

`pca_2d` projects latent vectors on their first two principal axes,

.. math:: Z - \bar Z = U S V^\top,\qquad Y = (Z - \bar Z)\,V_{:,1:2},\qquad
    \text{explained}_j = S_j^2 / \textstyle\sum_i S_i^2,

and `plot_latent_space` draws one scatter panel per ``(latent, labels, title)``: the same latents
coloured by true class and by learned cluster side by side show at a glance whether the clusters a
model found are the classes (SERKET's VAE+GMM tutorial shows its latent space this way).

An integer class has one colour wherever it is drawn, a function of its value alone (`class_colour`), so a class and
the cluster named after it (`match_clusters`) look alike whatever other classes a panel holds; string classes are
coloured by their rank among all the classes of a figure's panels (`ranked_classes`: one colour per class across the
figure; separately drawn figures agree when given the same ``colour_order``).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kizuna.metrics.clustering import _labels as _checked_labels
from kizuna.metrics.clustering import as_numpy
from kizuna.viz._backend import colormap, new_figure, save_figure

Panel = tuple[Any, Any, str]


def _as_matrix(z: Any, what: str) -> torch.Tensor:
    """``z`` as a float64 N×D tensor on the CPU (latents on a GPU are copied: the plots read them through numpy, and
    some devices have no float64)."""
    t = z.detach().cpu() if isinstance(z, torch.Tensor) else torch.as_tensor(np.asarray(z))
    if t.is_complex():  # (the cast dropped the imaginary part with only a warning)
        raise ValueError(f"{what}: latents are complex ({t.dtype}); give real latents (e.g. z.real, z.abs(), or "
                         "torch.view_as_real(z).flatten(1))")
    t = t.to(torch.float64)
    if t.dim() != 2 or t.shape[0] < 2 or t.shape[1] < 1:
        raise ValueError(f"{what}: latents must be N x D with N >= 2, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: latents contain NaN or inf")
    return t


def pca_2d(z: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two principal components of ``z`` (N×D) and the fraction of variance each explains.

    Each axis's sign is fixed so that its largest loading is positive (the result does not depend on
    the SVD routine). With ``D = 1`` the second coordinate is zero. Both are float64 tensors on the CPU, whatever the
    device of ``z``.

    >>> y, explained = pca_2d(torch.tensor([[0.0, 0.0], [2.0, 1.0], [4.0, 0.0]]))
    >>> y.round(decimals=4).tolist()
    [[-2.0, -0.3333], [0.0, 0.6667], [2.0, -0.3333]]
    >>> [round(float(e), 4) for e in explained]
    [0.9231, 0.0769]
    """
    t = _as_matrix(z, "pca_2d")
    centred = t - t.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2]  # k x D, k = min(2, D)
    flip = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * torch.where(flip == 0, torch.ones_like(flip), flip)
    coords = centred @ axes.T
    var = s**2
    explained = var[:2] / var.sum().clamp_min(torch.finfo(var.dtype).tiny)
    if coords.shape[1] == 1:
        coords = torch.cat([coords, torch.zeros_like(coords)], 1)
        explained = torch.cat([explained, torch.zeros_like(explained)])
    return coords, explained


_NONE_COLOUR = (0.6, 0.6, 0.6, 1.0)  # a cluster matched to no class (label -1)
_CYCLE = (("tab10", 10), ("tab20b", 20), ("tab20c", 16))  # (tab20c's last 4 are greys, like the "none" grey)
_N_BY_VALUE = 46  # integer classes 0..45 have a colour of their own


def class_colour(value: int) -> tuple[float, float, float, float]:
    """The colour of the integer class ``value``, a function of the value alone: tab10 for 0..9, tab20b for 10..29,
    tab20c's 16 colours for 30..45, the same 46 colours again beyond (``value % 46``; the plots colour integer
    classes by rank instead where any lies outside 0..45, so that no two share a colour); -1 (`match_clusters`'
    unmatched cluster) grey.

    >>> class_colour(3) == class_colour(49)  # 49 % 46 == 3
    True
    """
    if value == -1:
        return _NONE_COLOUR
    k = int(value) % sum(n for _, n in _CYCLE)
    for name, n in _CYCLE:
        if k < n:
            return tuple(float(c) for c in colormap(name)(k))  # type: ignore[return-value]
        k -= n
    raise AssertionError("unreachable")


def _by_value(classes: Any) -> bool:
    """Whether integer classes can be coloured by value (`class_colour`): all in 0..45, so that no two share a colour;
    beyond, they are coloured by rank like strings (two classes 46 apart shared one colour)."""
    return all(isinstance(c, str) or -1 <= c < _N_BY_VALUE for c in classes)  # (-1: the unmatched grey)


def _split(labels: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """(``[marker]`` or ``[]``, the other classes sorted, of one type: int64 when they are integers, or whole floats).
    Strings mixed with numbers (`match_clusters`' marker of an unmatched cluster: -1 among string classes, or a name
    such as "none" among integer classes, a mix np.unique cannot sort) put the marker apart."""
    values = labels.tolist()
    marker: list[Any] = []
    if labels.dtype == object:
        strings = sorted({v for v in values if isinstance(v, str)})
        numbers = {v for v in values if not isinstance(v, str)}
        if strings and numbers:
            if numbers == {-1} or len(strings) > 1 and len(numbers) == 1:
                marker, rest = [next(iter(numbers))], strings
            elif len(strings) == 1:
                marker, rest = [strings[0]], sorted(numbers)
            else:
                raise ValueError(f"labels mix several strings {strings[:3]} with several numbers "
                                 f"{sorted(numbers)[:3]}; give classes of one type (an unmatched cluster may be marked "
                                 "by one value)")
            classes = np.array(rest)
        else:
            classes = np.unique(labels)
    else:
        classes = np.unique(labels)
    if classes.dtype == object and all(isinstance(v, Integral) and not isinstance(v, bool | np.bool_)
                                       for v in classes.tolist()):
        classes = classes.astype(np.int64)  # (Python ints in an object array: coloured by value too)
    elif classes.dtype.kind == "f" and np.array_equal(classes, np.round(classes)) \
            and (np.abs(classes.astype(np.float64)) < 2**31).all():  # (in float16, 2**31 overflowed to inf: a warning)
        classes = classes.astype(np.int64)  # class ids as floats (a float tensor): 3.0 is class 3, coloured alike
    return marker, classes


def ranked_classes(label_arrays: Sequence[Any]) -> list[Any]:
    """The classes that are coloured by rank (all but integers and the unmatched marker) of several panels' labels,
    sorted: one ordering for the panels of a figure, so that a string class has one colour in all of them."""
    union: set[Any] = set()
    integers: set[int] = set()
    for labels in label_arrays:
        _, classes = _split(np.asarray(as_numpy(labels)))
        (integers if classes.dtype.kind in "iu" else union).update(classes.tolist())
    if not _by_value(integers):  # more integer classes than colours by value: ranked with the rest (-1, the
        union.update(integers - {-1})  # unmatched marker, stays grey)
    try:
        return sorted(union)
    except TypeError:  # strings in one panel, numbers in another
        return sorted(union, key=lambda v: (type(v).__name__, str(v)))


def _colours(labels: np.ndarray, order: Sequence[Any] | None = None) -> tuple[np.ndarray, dict[Any, Any]]:
    """(classes present, colour of each class). Integer labels are coloured by their value (`class_colour`; -1,
    "none", grey), so that a class has one colour in every panel and every figure whatever other classes a panel
    holds (a digit and the cluster matched to it). Other labels (strings, floats) are coloured by their rank in
    ``order`` (default: the classes present): the panels of one figure share one ``order`` (`ranked_classes`), so a
    string class keeps its colour across them; figures drawn separately agree only when given the same ``order``. A
    marker of unmatched clusters mixed with classes of the other type (`_split`) is grey."""
    marker, classes = _split(labels)
    values = classes.tolist()
    if classes.dtype.kind in "iu" and _by_value(values if order is None else [*values, *order]):
        palette = {c: class_colour(c) for c in values}
    else:
        unmatched = classes.dtype.kind in "iu" and -1 in values  # integer classes by rank: -1 stays the grey marker
        if unmatched:
            values = [c for c in values if c != -1]
        ranked = values if order is None else [c for c in order if not (unmatched and c == -1)]
        rank = {c: j for j, c in enumerate(ranked)}
        absent = [c for c in values if c not in rank]
        if absent:
            raise ValueError(f"colour_order {ranked[:5]} lacks the classes {absent[:5]}; give every class drawn")
        name = "tab10" if len(ranked) <= 10 else "tab20" if len(ranked) <= 20 else "viridis"
        base = colormap(name).resampled(max(len(ranked), 1))
        palette = {c: base(rank[c]) for c in values}
        if unmatched:
            palette[-1] = _NONE_COLOUR
            values = [-1, *values]
            classes = np.asarray(values, dtype=classes.dtype)
    if marker:
        return np.array([*marker, *values], dtype=object), {marker[0]: _NONE_COLOUR, **palette}
    return classes, palette


def check_panels(panels: Sequence[Panel],
                 what: str = "plot_latent_space") -> list[tuple[torch.Tensor, np.ndarray, str]]:
    """``(latent N×D float64 on the CPU, labels (N,) numpy, title)`` for each panel; a ValueError naming a bad one."""
    if not panels:
        raise ValueError(f"{what}: give at least one (latent, labels, title) panel")
    checked = []
    for i, panel in enumerate(panels):
        if len(panel) != 3:
            raise ValueError(f"{what}: panel {i} must be (latent, labels, title), got {len(panel)} items")
        z, labels, name = panel
        where = f"{what} panel {i} ({name!r})"
        lab = np.asarray(as_numpy(labels))  # (a tensor on any device; float16 and bfloat16, numpy lacks, as float32)
        t = _as_matrix(z, where)
        if lab.ndim != 1 or lab.shape[0] != t.shape[0]:
            raise ValueError(f"{where}: labels must be 1-D with {t.shape[0]} entries, got shape {lab.shape}")
        # a missing label (None, NaN, inf; among objects too) as kizuna.metrics names it (it was drawn as a class, or
        # a raw numpy TypeError for None)
        _checked_labels(lab, f"{where}: labels")
        checked.append((t, lab, str(name)))
    return checked


def draw_latent_space(ax: Any, z: Any, labels: np.ndarray, title: str, legend_title: str | None = None,
                      wrong: np.ndarray | None = None, colour_order: Sequence[Any] | None = None) -> None:
    """One scatter panel of `pca_2d` (``z``) on ``ax``, coloured by ``labels``.

    Args:
        ax: a matplotlib axis.
        z: latents N×D; labels: N labels (up to 20 get a legend, titled ``legend_title``).
        title: the panel's title.
        wrong: optional boolean mask of N points to circle in black (e.g. clustered into the wrong class).
        colour_order: the classes that are coloured by rank (strings, floats), in order: give panels drawn apart
            the same one (`ranked_classes` of all their labels) to colour a string class alike in all (default: the
            classes of ``labels``). An integer class is coloured by its value (`class_colour`), the same everywhere.
    """
    (z, labels, _), = check_panels([(z, labels, title)], "draw_latent_space")  # (a list, or the wrong length)
    if wrong is not None:
        wrong = np.asarray(as_numpy(wrong))
        if wrong.dtype != bool or wrong.shape != labels.shape:
            raise ValueError(f"draw_latent_space: wrong must be a boolean mask of {labels.shape[0]} points, got "
                             f"{wrong.dtype} of shape {wrong.shape}")
    coords, explained = pca_2d(z)
    classes, palette = _colours(labels, colour_order)
    xy = coords.numpy()  # (on the CPU: `pca_2d`)
    ax.scatter(xy[:, 0], xy[:, 1], c=[palette[c] for c in np.asarray(labels).tolist()], s=6, alpha=0.8,
               linewidths=0)
    if wrong is not None and wrong.any():
        ax.scatter(xy[wrong, 0], xy[wrong, 1], s=9, facecolors="none", edgecolors="black", linewidths=0.4,
                   label=f"wrong class ({int(wrong.sum())})")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"PC1 ({100 * float(explained[0]):.0f}% of variance)", fontsize=8)
    ax.set_ylabel(f"PC2 ({100 * float(explained[1]):.0f}%)", fontsize=8)
    ax.tick_params(labelsize=7)
    if len(classes) <= 20:
        for c in classes.tolist():
            ax.scatter([], [], color=palette[c], s=25, label="none" if c == -1 else str(c))
        handles, names = ax.get_legend_handles_labels()
        if wrong is not None and wrong.any():  # the "wrong" entry last
            handles, names = handles[1:] + handles[:1], names[1:] + names[:1]
        ax.legend(handles, names, title=legend_title, fontsize=7, title_fontsize=7, ncol=1, frameon=False,
                  loc="center left", bbox_to_anchor=(1.0, 0.5), handletextpad=0.2, borderaxespad=0.3)


def plot_latent_space(panels: Sequence[Panel], path: str | Path, title: str | None = None,
                      dpi: int = 110, colour_order: Sequence[Any] | None = None) -> Path:
    """Scatter plots of latents projected by `pca_2d`, one panel per ``(latent, labels, title)``.

    Args:
        panels: ``(latent N×D, labels N, title)`` triples; several panels may share one latent
            (e.g. coloured by true class and by learned cluster).
        path: the PNG file to write (its folder is created; ``.png`` is added to a name without an extension,
            another extension such as ``.pdf`` picks that format).
        title: a title above all panels.
        dpi: resolution of the file.
        colour_order: the ordering of the classes coloured by rank (strings, floats); default all the panels'
            classes (`ranked_classes`), so a class has one colour in every panel. An integer class is coloured by its
            value alone (`class_colour`), the same in every figure; a string class keeps its colour in a figure
            drawn separately only when both are given the same ``colour_order``.

    Returns:
        The path written (with the ``.png`` added, if it was).

    Raises:
        ImportError: matplotlib is missing (with the command that installs it).
        ValueError: a panel whose latents are not N×D real numbers or whose labels do not have N entries or have
            a missing one (None, NaN, inf); ``path`` is a directory.
    """
    checked = check_panels(panels)
    fig = new_figure(figsize=(4.2 * len(checked), 4.4), layout="constrained")
    axes = fig.subplots(1, len(checked), squeeze=False)[0]
    order = colour_order if colour_order is not None else ranked_classes([lab for _, lab, _ in checked])
    for ax, (t, lab, name) in zip(axes, checked):
        draw_latent_space(ax, t, lab, name, colour_order=order)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi, "plot_latent_space")
