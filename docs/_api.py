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


def public_names(module: ModuleType) -> list[str]:
    """``__all__``, or for a module without one its own public functions and classes in source order."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, obj in vars(module).items() if not name.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__]


def home(module: ModuleType, public: str) -> str | None:
    """The other subpackage that defines and exports ``public`` too (``kizuna.formula`` for the `Loss`
    that ``kizuna.losses`` re-exports), or None: an object is described once, where it is defined."""
    obj = getattr(module, public)
    defined = getattr(obj, "__module__", None) or ""
    parts = defined.split(".")
    if len(parts) < 2 or parts[0] != "kizuna" or f"kizuna.{parts[1]}" == module.__name__:
        return None
    try:
        other = importlib.import_module(f"kizuna.{parts[1]}")
    except ImportError:
        return None
    return other.__name__ if getattr(other, public, None) is obj and public in public_names(other) else None


def page(module: ModuleType) -> str:
    """The reST page of one subpackage (its `public_names` in order; re-exports link to their home page)."""
    name = module.__name__
    lines = [name, "=" * len(name), "", f".. automodule:: {name}", "   :no-members:", ""]
    again = [(public, home(module, public)) for public in public_names(module)]
    reexported = [f":obj:`{public} <{where}.{public}>`" for public, where in again if where]
    if reexported:
        lines += [f"Also importable from here (described on their own pages): {', '.join(reexported)}.", ""]
    for public, where in again:
        if where is None:
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
