"""Symbol strings (phonemes, characters) as the ``N×D`` float rows that module messages carry.

Row ``n`` holds the Unicode code points of string ``n``, padded with zeros (the NUL character is
not allowed in a string), so an `Observation` of strings is an ordinary ``data`` message and the
strings come back unchanged.

>>> rows = encode_strings(["ab", "c"])
>>> rows.tolist()
[[97.0, 98.0], [99.0, 0.0]]
>>> decode_strings(rows)
['ab', 'c']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def is_strings(data: Any) -> bool:
    """Whether ``data`` is a non-empty list or tuple of ``str``."""
    return isinstance(data, (list, tuple)) and len(data) > 0 and all(isinstance(s, str) for s in data)


def encode_strings(strings: Sequence[str]) -> torch.Tensor:
    """``N×max_len`` float64 code points, zero-padded (an error for empty strings or NUL characters); ``0×0`` for no
    string."""
    width = max((len(s) for s in strings), default=0)  # (an empty list raised max()'s bare "empty sequence")
    out = np.zeros((len(strings), width))
    for i, s in enumerate(strings):
        if not s or "\x00" in s:
            raise ValueError(f"string {i} ({s!r}) is empty or contains the NUL character")
        out[i, :len(s)] = [ord(ch) for ch in s]
    return torch.as_tensor(out)


def decode_strings(rows: Any) -> list[str]:
    """The strings that :func:`encode_strings` encoded."""
    a = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    return ["".join(chr(int(c)) for c in row if c > 0) for row in a]
