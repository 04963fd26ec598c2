"""Checks of data shared by the trainer, the likelihood estimates and the modules: bad values are
reported as data (the variable, row and column), not as a complaint about a distribution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def first_nonfinite(x_dict: Mapping[str, Any], what: str, rows: torch.Tensor | None = None) -> str | None:
    """A sentence naming the first non-finite entry of ``x_dict`` (variable, row, column), or None.

    ``rows``: the data rows of the batch (its row ``i`` is row ``rows[i]`` of the data).
    """
    for key, value in x_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() \
                and not bool(torch.isfinite(value).all()):
            bad = (~torch.isfinite(value)).nonzero()[0].tolist()
            row = bad[0] if rows is None or value.dim() == 0 else int(rows[bad[0]])
            entry = value[tuple(bad)].item()
            where = f"row {row}" + (f", column {', '.join(map(str, bad[1:]))}" if len(bad) > 1 else "")
            return f"{what}['{key}'] holds {entry} at {where}"
    return None
