"""Plots a person would rather look at than read.

matplotlib is imported only when a figure is drawn (``pip install 'kizuna[demo]'``), always with the
Agg backend through matplotlib's object-oriented API, so plotting needs no display and never changes
the backend of an interactive session. Nothing in the core library imports this package.
"""

from kizuna.viz.latent import pca_2d, plot_latent_space

__all__ = ["pca_2d", "plot_latent_space"]
