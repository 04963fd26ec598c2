r"""A latent space seen in two dimensions: principal-component projection and coloured scatter plots.

`pca_2d` projects latent vectors on their first two principal axes,

.. math:: Z - \bar Z = U S V^\top,\qquad Y = (Z - \bar Z)\,V_{:,1:2},\qquad
    \text{explained}_j = S_j^2 / \textstyle\sum_i S_i^2,

and `plot_latent_space` draws one scatter panel per ``(latent, labels, title)``: the same latents
coloured by true class and by learned cluster side by side show at a glance whether the clusters a
model found are the classes (SERKET's VAE+GMM tutorial shows its latent space this way).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kizuna.viz._backend import colormap, new_figure, save_figure

Panel = tuple[Any, Any, str]


def _as_matrix(z: Any, what: str) -> torch.Tensor:
    t = z.detach() if isinstance(z, torch.Tensor) else torch.as_tensor(np.asarray(z))
    t = t.to(torch.float64)
    if t.dim() != 2 or t.shape[0] < 2 or t.shape[1] < 1:
        raise ValueError(f"{what}: latents must be N x D with N >= 2, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: latents contain NaN or inf")
    return t


def pca_2d(z: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two principal components of ``z`` (N×D) and the fraction of variance each explains.

    Each axis's sign is fixed so that its largest loading is positive (the result does not depend on
    the SVD routine). With ``D = 1`` the second coordinate is zero.

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


def _colours(labels: np.ndarray) -> tuple[np.ndarray, dict[Any, Any]]:
    """(classes present, colour of each class). Integer labels from -1 to 19 are coloured by their value (tab10, or
    tab20 beyond 9; -1, "none", grey), so that a class has one colour in every panel whatever other classes a panel
    holds (a digit and the cluster matched to it); other labels by their rank among those present. Strings mixed with
    numbers (`match_clusters`' marker of an unmatched cluster: -1 among string classes, or a name such as "none"
    among integer classes, a mix np.unique cannot sort) put the marker first, in grey."""
    values = labels.tolist()
    if labels.dtype == object:
        strings = sorted({v for v in values if isinstance(v, str)})
        numbers = {v for v in values if not isinstance(v, str)}
        if strings and numbers:
            if numbers == {-1} or len(strings) > 1 and len(numbers) == 1:
                marker, rest = next(iter(numbers)), strings
            elif len(strings) == 1:
                marker, rest = strings[0], sorted(numbers)
            else:
                raise ValueError(f"labels mix several strings {strings[:3]} with several numbers "
                                 f"{sorted(numbers)[:3]}; give classes of one type (an unmatched cluster may be marked "
                                 "by one value)")
            classes, palette = _palette(np.array(rest))
            return np.array([marker, *classes.tolist()], dtype=object), {marker: _NONE_COLOUR, **palette}
    return _palette(np.unique(labels))


def _palette(classes: np.ndarray) -> tuple[np.ndarray, dict[Any, Any]]:
    """Colours of sorted ``classes`` of one type (see `_colours`)."""
    values = classes.tolist()
    if classes.dtype.kind in "iu" and values and min(values) >= -1 and max(values) <= 19:
        base = colormap("tab10" if max(values) <= 9 else "tab20")
        return classes, {c: _NONE_COLOUR if c == -1 else base(c) for c in values}
    name = "tab10" if len(values) <= 10 else "tab20" if len(values) <= 20 else "viridis"
    base = colormap(name).resampled(max(len(values), 1))
    return classes, {c: base(j) for j, c in enumerate(values)}


def check_panels(panels: Sequence[Panel],
                 what: str = "plot_latent_space") -> list[tuple[torch.Tensor, np.ndarray, str]]:
    """``(latent N×D float64, labels (N,), title)`` for each panel; a ValueError naming a bad one."""
    if not panels:
        raise ValueError(f"{what}: give at least one (latent, labels, title) panel")
    checked = []
    for i, panel in enumerate(panels):
        if len(panel) != 3:
            raise ValueError(f"{what}: panel {i} must be (latent, labels, title), got {len(panel)} items")
        z, labels, name = panel
        where = f"{what} panel {i} ({name!r})"
        lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        t = _as_matrix(z, where)
        if lab.ndim != 1 or lab.shape[0] != t.shape[0]:
            raise ValueError(f"{where}: labels must be 1-D with {t.shape[0]} entries, got shape {lab.shape}")
        if lab.dtype.kind in "fc" and np.isnan(lab).any():
            raise ValueError(f"{where}: {int(np.isnan(lab).sum())} labels are NaN; give every point a label")
        checked.append((t, lab, str(name)))
    return checked


def draw_latent_space(ax: Any, z: Any, labels: np.ndarray, title: str, legend_title: str | None = None,
                      wrong: np.ndarray | None = None) -> None:
    """One scatter panel of `pca_2d` (``z``) on ``ax``, coloured by ``labels``.

    Args:
        ax: a matplotlib axis.
        z: latents N×D; labels: N labels (up to 20 get a legend, titled ``legend_title``).
        title: the panel's title.
        wrong: optional boolean mask of N points to circle in black (e.g. clustered into the wrong class).
    """
    (z, labels, _), = check_panels([(z, labels, title)], "draw_latent_space")  # (a list, or the wrong length)
    if wrong is not None:
        wrong = np.asarray(wrong)
        if wrong.dtype != bool or wrong.shape != labels.shape:
            raise ValueError(f"draw_latent_space: wrong must be a boolean mask of {labels.shape[0]} points, got "
                             f"{wrong.dtype} of shape {wrong.shape}")
    coords, explained = pca_2d(z)
    classes, palette = _colours(labels)
    xy = coords.numpy()
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
                      dpi: int = 110) -> Path:
    """Scatter plots of latents projected by `pca_2d`, one panel per ``(latent, labels, title)``.

    Args:
        panels: ``(latent N×D, labels N, title)`` triples; several panels may share one latent
            (e.g. coloured by true class and by learned cluster).
        path: the PNG file to write (its folder is created; ``.png`` is added to a name without an extension,
            another extension such as ``.pdf`` picks that format).
        title: a title above all panels.
        dpi: resolution of the file.

    Returns:
        The path written (with the ``.png`` added, if it was).

    Raises:
        ImportError: matplotlib is missing (with the command that installs it).
        ValueError: a panel whose latents are not N×D or whose labels do not have N entries or are NaN; ``path``
            is a directory.
    """
    checked = check_panels(panels)
    fig = new_figure(figsize=(4.2 * len(checked), 4.4), layout="constrained")
    axes = fig.subplots(1, len(checked), squeeze=False)[0]
    for ax, (t, lab, name) in zip(axes, checked):
        draw_latent_space(ax, t, lab, name)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi, "plot_latent_space")
