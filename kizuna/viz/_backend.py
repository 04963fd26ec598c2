"""matplotlib, imported only when a plot is drawn, rendered with the Agg backend.

The figures are built with matplotlib's object-oriented API (`matplotlib.figure.Figure` on a
`FigureCanvasAgg`), never through ``pyplot``: drawing needs no display and leaves the backend of a
user's interactive session alone.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from kizuna._io import write_atomic

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


def save_figure(fig: Any, path: str | Path, dpi: int, what: str, **savefig: Any) -> Path:
    """Write ``fig`` to ``path`` (its folder created) and return the path written: a name without an extension gets
    ``.png`` (what matplotlib would add), so the returned path is the file. ``savefig``: more arguments of
    matplotlib's ``savefig`` (e.g. ``bbox_inches="tight"``).

    The image is drawn in memory in the format of the extension, then written atomically (`kizuna._io.write_atomic`:
    a temporary file beside it, fsync, rename), so a failure or a kill while drawing or writing leaves the previous
    file whole, never a truncated image.

    Raises:
        ValueError: ``path`` is an existing directory (matplotlib would write ``<dir>.png`` beside it).
    """
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{what}: the path {str(out)!r} is a directory; give a file name such as "
                         f"{str(out / 'figure.png')!r}")
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    fig.savefig(image, dpi=dpi, format=out.suffix[1:].lower(), **savefig)  # the format matplotlib reads from a path
    write_atomic(out, image.getvalue())
    return out


def colormap(name: str) -> Any:
    """The registered matplotlib colormap ``name`` (``tab10``, ``tab20``, ``viridis``, ...)."""
    from matplotlib import colormaps

    return colormaps[name]
