"""kizuna: deep generative models as probabilistic formulas, connected into integrated models.

The subpackages are imported on first use, so ``import kizuna`` is cheap (it does not import torch) and
``kizuna.distributions``, ``kizuna.modules``, ... work without importing them one by one:

>>> import kizuna
>>> kizuna.distributions.Normal.__name__
'Normal'
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

SUBPACKAGES = ("datasets", "distributions", "flows", "formula", "inference", "losses", "metrics", "models", "modules",
               "nets", "samplers", "utils", "viz")
__all__ = ["__version__", *SUBPACKAGES]


def __getattr__(name: str) -> ModuleType:
    """``kizuna.<subpackage>`` imports that subpackage the first time it is read (PEP 562)."""
    if name in SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")  # also binds it on the package
    raise AttributeError(f"module 'kizuna' has no attribute {name!r}; its subpackages are {', '.join(SUBPACKAGES)}")


def __dir__() -> list[str]:
    return sorted({*globals(), *SUBPACKAGES})
