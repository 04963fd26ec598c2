"""Import a script from ``examples/`` by name, so tests can call its ``run(smoke=True)``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """The module ``examples/<name>.py`` (imported once, cached in ``sys.modules``)."""
    key = f"kizuna_example_{name}"
    if key in sys.modules:
        return sys.modules[key]
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no example script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def run_smoke(name: str, seed: int = 0) -> dict[str, float]:
    """``examples/<name>.py``'s ``run(smoke=True, seed=seed)`` on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return load_example(name).run(smoke=True, seed=seed)
    finally:
        torch.set_num_threads(threads)
