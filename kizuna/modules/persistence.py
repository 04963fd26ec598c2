"""Saving and loading modules and whole graphs (nothing is written unless asked).

A saved graph is a directory holding ``manifest.json`` (format, and per module: name, class,
architecture ``config`` and children) and one ``moduleNNN.pt`` per module (its
``state_dict()``: learnt parameters, posteriors and last messages, loaded with
``torch.load(weights_only=True)``). Loading compares the manifest with the graph it loads
into and raises a `GraphError` listing every difference, so a state never lands in a
different architecture.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kizuna.modules.base import GraphError, Module, Observation

FORMAT = "kizuna.modules/1"


def describe(module: Module) -> dict[str, Any]:
    """The manifest entry of one module."""
    return {"name": module.name, "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "config": module.config(), "children": [c.name for c in module.children]}


def _differences(saved: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[str]:
    names_s, names_c = [e["name"] for e in saved], [e["name"] for e in current]
    if names_s != names_c:
        return [f"modules {names_s} were saved but the graph has {names_c}"]
    diffs = []
    for s, c in zip(saved, current):
        for key in ("class", "children", "config"):
            if s[key] != c[key]:
                diffs.append(f"{c['name']}: saved {key} {s[key]} but the graph has {c[key]}")
    return diffs


def _device(modules: Sequence[Module]) -> torch.device:
    return next((m.data.device for m in modules if isinstance(m, Observation)), torch.device("cpu"))


def save_graph(graph: Any, directory: str | Path) -> Path:
    """Write ``graph.modules``' states and ``manifest.json`` into ``directory``; returns it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, m in enumerate(graph.modules):
        entry = describe(m)
        entry["file"] = f"module{i:03d}.pt"
        torch.save(m.state_dict(), d / entry["file"])
        entries.append(entry)
    (d / "manifest.json").write_text(json.dumps({"format": FORMAT, "modules": entries}, indent=2))
    return d


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no saved kizuna graph at {path.parent} (missing {path.name})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise GraphError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    return manifest


def load_graph(graph: Any, directory: str | Path) -> None:
    """Load states written by `save_graph` into an identically built ``graph``."""
    d = Path(directory)
    manifest = _read_manifest(d / "manifest.json")
    current = [describe(m) for m in graph.modules]
    diffs = _differences(manifest["modules"], current)
    if diffs:
        raise GraphError("the saved graph has a different architecture:\n  " + "\n  ".join(diffs))
    device = _device(graph.modules)
    for entry, m in zip(manifest["modules"], graph.modules):
        m.load_state_dict(torch.load(d / entry["file"], map_location=device, weights_only=True))


def save_module(module: Module, path: str | Path) -> Path:
    """Write one module's manifest entry and state to the file ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "manifest": json.dumps(describe(module)), "state": module.state_dict()}, p)
    return p


def load_module(module: Module, path: str | Path) -> Module:
    """Load a state written by `save_module` into ``module`` (same class and config)."""
    blob = torch.load(Path(path), map_location=_device([module, *module.children]), weights_only=True)
    if blob.get("format") != FORMAT:
        raise GraphError(f"{path}: not a saved kizuna module")
    diffs = _differences([json.loads(blob["manifest"])], [describe(module)])
    if diffs:
        raise GraphError(f"{path} holds a different module:\n  " + "\n  ".join(diffs))
    module.load_state_dict(blob["state"])
    return module
