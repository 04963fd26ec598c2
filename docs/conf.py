"""Sphinx configuration of kizuna's documentation: the docs/ pages as chapters, and an API reference.

Build: ``python -m sphinx -W docs build/docs`` (``pip install -e ".[docs]"``), then open
``build/docs/index.html``. Warnings are errors, so a broken reference or docstring fails the build (the
test suite builds it: tests/test_docs.py).

Why Sphinx (and not MkDocs + mkdocstrings): kizuna's docstrings state their math in reST (``.. math::``
blocks and ``:math:`` roles) in Google style; Sphinx's autodoc + napoleon render both as they are written,
and myst-parser reads the Markdown chapters, whose ``$...$`` math it renders too. mkdocstrings renders
Markdown docstrings, so every ``.. math::`` of the package would have to be rewritten.

The API pages are generated here, at configuration time, from each subpackage's ``__all__``: a new public
name appears in the reference without editing any page (they are written to docs/api/, not kept in git).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _api import write_api_pages  # noqa: E402 - docs/_api.py, next to this file

import kizuna  # noqa: E402

project = "kizuna"
author = "kizuna developers"
copyright = "2026, kizuna developers"  # noqa: A001 - Sphinx's name
release = version = kizuna.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "results", "images", "**/__pycache__"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields, so dataclass fields are not described twice
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True, "undoc-members": False}
autodoc_inherit_docstrings = False  # a method's doc is its own; torch's reST is not ours to check
autoclass_content = "both"  # the class docstring and the __init__ docstring (Args: of the constructor)

html_theme = "alabaster"
html_title = f"kizuna {release}"
html_static_path: list[str] = []

API_PAGES = write_api_pages(HERE / "api", kizuna.SUBPACKAGES)


def _foreign(app: object, what: str, name: str, obj: object, skip: bool, options: object) -> bool | None:
    """Skip class attributes that are other libraries' callables (``fn = torch.maximum``): not kizuna's API."""
    target = getattr(obj, "fget", obj)
    module = getattr(target, "__module__", None)
    if callable(target) and not isinstance(target, type) and module is not None and not module.startswith("kizuna"):
        return True
    return None


def setup(app: object) -> None:
    app.connect("autodoc-skip-member", _foreign)  # type: ignore[attr-defined]
