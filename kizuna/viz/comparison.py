"""One figure comparing clusterings of the same samples: accuracy, confusion tables, latent spaces.

Made for an integrated model next to its parts (the ``kizuna demo``): the top row gives each model's
Hungarian-matched accuracy (with the accuracy of random partitions as a floor) and the matched confusion
tables of the models chosen, side by side, so the gain of one model over another is seen where it
happens (which classes stop being confused); the bottom row shows latent spaces (`draw_latent_space`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kizuna.metrics import clustering_accuracy
from kizuna.metrics.clustering import as_numpy
from kizuna.viz._backend import new_figure, save_figure
from kizuna.viz.confusion import draw_confusion
from kizuna.viz.latent import Panel, check_panels, draw_latent_space, ranked_classes


def _accuracy_bars(ax: Any, names: list[str], accuracies: list[float], chance: float | None,
                   highlight: Sequence[int]) -> None:
    y = np.arange(len(names))[::-1]
    colours = ["#c44e52" if i in highlight else "#4c72b0" for i in range(len(names))]
    ax.barh(y, accuracies, color=colours, height=0.6)
    for yi, a in zip(y, accuracies):
        ax.text(min(a, 1.0) - 0.01, yi, f"{a:.3f}", ha="right", va="center", color="white", fontsize=8)
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle="--", linewidth=1)
        ax.text(chance + 0.01, y.max() + 0.45, f"random partitions {chance:.3f}", fontsize=7, color="grey",
                va="bottom")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.6, len(names) - 0.2)
    ax.set_xlabel("Hungarian-matched accuracy", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("accuracy of each model, no labels used", fontsize=9)


def plot_clustering_comparison(labels_true: Any, clusterings: Sequence[tuple[str, Any]], path: str | Path, *,
                               confusions: Sequence[int] = (), latent_panels: Sequence[Panel] = (),
                               latent_legends: Sequence[str | None] = (), mark_wrong: Sequence[bool] = (),
                               highlight: Sequence[int] = (), chance: float | None = None, title: str | None = None,
                               dpi: int = 110, colour_order: Sequence[Any] | None = None) -> Path:
    """Accuracy bars for every clustering, confusion tables for some, latent spaces below; a PNG file.

    Args:
        labels_true: the N true classes (only for scoring and naming clusters; no model saw them).
        clusterings: ``(name, N cluster ids)`` of each model.
        path: the PNG file to write (its folder is created; ``.png`` is added to a name without an extension,
            another extension such as ``.pdf`` picks that format).
        confusions: indices into ``clusterings`` whose matched confusion tables are drawn (left to right).
        latent_panels: ``(latent N×D, labels N, title)`` scatter panels for the bottom row.
        latent_legends: a legend title per latent panel (e.g. "digit", "cluster, named after its class").
        mark_wrong: per latent panel, circle the points whose label differs from ``labels_true``.
        highlight: indices into ``clusterings`` whose bars stand out (e.g. the integrated model).
        chance: the accuracy of random partitions, drawn as a dashed line.
        title: a title above the figure.
        dpi: resolution of the file.
        colour_order: the ordering of the latent panels' classes coloured by rank (strings); default all their
            classes (`ranked_classes`), so a class has one colour in every panel (integer classes: by value).

    Returns:
        The path written (with the ``.png`` added, if it was).

    Raises:
        ValueError: no clusterings, an index out of range, a bad latent panel, or ``path`` a directory.
    """
    if len(clusterings) == 0:
        raise ValueError("plot_clustering_comparison: give at least one (name, cluster ids) clustering")
    truth = np.asarray(as_numpy(labels_true))  # (a tensor on any device, bfloat16 too, as kizuna.metrics reads it)
    names = [name for name, _ in clusterings]
    preds = [np.asarray(as_numpy(pred)) for _, pred in clusterings]
    accuracies = [clustering_accuracy(truth, pred) for pred in preds]
    for what, indices in (("confusions", confusions), ("highlight", highlight)):
        if any(not 0 <= i < len(clusterings) for i in indices):
            raise ValueError(f"plot_clustering_comparison: {what} {list(indices)} must index the "
                             f"{len(clusterings)} clusterings")
    panels = check_panels(latent_panels, "plot_clustering_comparison") if latent_panels else []
    top = 1 + len(confusions)
    fig = new_figure(figsize=(4.6 * max(top, len(panels)), 4.3 * (1 + bool(panels))), layout="constrained")
    rows = fig.subfigures(1 + bool(panels), 1, squeeze=False)[:, 0]
    axes = rows[0].subplots(1, top, squeeze=False, width_ratios=[1.25] + [1.0] * len(confusions))[0]
    _accuracy_bars(axes[0], names, accuracies, chance, highlight)
    for ax, i in zip(axes[1:], confusions):
        draw_confusion(ax, truth, preds[i], names[i])
    if panels:
        bottom = rows[1].subplots(1, len(panels), squeeze=False)[0]
        order = colour_order if colour_order is not None else ranked_classes([lab for _, lab, _ in panels])
        for j, (ax, (z, lab, name)) in enumerate(zip(bottom, panels)):
            legend = latent_legends[j] if j < len(latent_legends) else None
            wrong = None
            if j < len(mark_wrong) and mark_wrong[j]:
                if len(lab) != len(truth):  # (a raw numpy broadcast error)
                    raise ValueError(f"plot_clustering_comparison: latent panel {j} ({name!r}) has {len(lab)} labels "
                                     f"but labels_true {len(truth)}; mark_wrong compares them point by point")
                wrong = np.asarray(lab != truth, dtype=bool)
            draw_latent_space(ax, z, lab, name, legend, wrong, colour_order=order)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi, "plot_clustering_comparison")
