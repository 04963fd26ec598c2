"""Plots a person would rather look at than read.

matplotlib is imported only when a figure is drawn (``pip install 'kizuna[demo]'``), always with the
Agg backend through matplotlib's object-oriented API, so plotting needs no display and never changes
the backend of an interactive session. Nothing in the core library imports this package;
`render` draws graphical models as Graphviz DOT.
"""

from kizuna.viz.comparison import plot_clustering_comparison
from kizuna.viz.confusion import confusion_table, draw_confusion, match_clusters
from kizuna.viz.latent import draw_latent_space, pca_2d, plot_latent_space
from kizuna.viz.render import Rendering, model_spec, render, to_dot

__all__ = ["Rendering", "confusion_table", "draw_confusion", "draw_latent_space", "match_clusters", "model_spec",
           "pca_2d", "plot_clustering_comparison", "plot_latent_space", "render", "to_dot"]
