"""matplotlib, imported only when a plot is drawn, rendered with the Agg backend.

The figures are built with matplotlib's object-oriented API (`matplotlib.figure.Figure` on a
`FigureCanvasAgg`), never through ``pyplot``: drawing needs no display and leaves the backend of a
user's interactive session alone.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "pip install 'kizuna[demo]' (or: pip install matplotlib)"


def new_figure(**kwargs: Any) -> Any:
    """A `matplotlib.figure.Figure` attached to an Agg canvas.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"kizuna.viz draws with matplotlib, which is not installed: {INSTALL_HINT}") from err
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def colormap(name: str) -> Any:
    """The registered matplotlib colormap ``name`` (``tab10``, ``tab20``, ``viridis``, ...)."""
    from matplotlib import colormaps

    return colormaps[name]
