"""Writes the API reference pages (reST for Sphinx's autodoc) from each subpackage's ``__all__``.

One page per subpackage: its module docstring, then every public name, a class with its members and
bases, a function with its signature, a constant with its value, in the order of ``__all__``, so the
reference cannot silently omit a public name.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any


def _entry(module: str, name: str, obj: Any) -> str:
    target = f"{module}.{name}"
    if inspect.isclass(obj):
        return f".. autoclass:: {target}\n"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or callable(obj):
        return f".. autofunction:: {target}\n"
    if isinstance(obj, ModuleType):
        return f".. automodule:: {target}\n   :no-members:\n"
    return f".. autodata:: {target}\n   :no-value:\n\n   ``{type(obj).__name__}``: {_short(obj)}\n"


def _short(obj: Any, limit: int = 200) -> str:
    text = repr(obj).replace("`", "'")
    return text if len(text) <= limit else text[:limit] + " ..."


def page(module: ModuleType) -> str:
    """The reST page of one subpackage (its ``__all__`` in order)."""
    name = module.__name__
    lines = [name, "=" * len(name), "", f".. automodule:: {name}", "   :no-members:", ""]
    for public in module.__all__:
        lines.append(_entry(name, public, getattr(module, public)))
    return "\n".join(lines)


def write_api_pages(folder: Path, subpackages: Sequence[str]) -> list[str]:
    """Write ``folder/index.rst`` and one page per subpackage; returns the page names (``api/<name>``)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for sub in subpackages:
        text = page(importlib.import_module(f"kizuna.{sub}"))
        path = folder / f"{sub}.rst"
        if not path.exists() or path.read_text() != text:  # unchanged pages keep their time: no rebuild
            path.write_text(text)
        names.append(sub)
    index = "\n".join(["API reference", "=============", "",
                       "Every public name of each subpackage (its ``__all__``), with its signature and docstring.",
                       "", ".. toctree::", "   :maxdepth: 1", "", *(f"   {n}" for n in names), ""])
    if not (folder / "index.rst").exists() or (folder / "index.rst").read_text() != index:
        (folder / "index.rst").write_text(index)
    return [f"api/{n}" for n in names]
