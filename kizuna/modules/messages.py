"""Typed messages between modules, the shape checks on them, and the errors of the module layer.

See `kizuna.modules.base` for the table of kinds and the protocol that sends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

KINDS: tuple[str, ...] = ("data", "latent", "posterior", "prior", "prior_mean")
DEFAULT_VARIABLE = {"data": "x", "latent": "z", "posterior": "c", "prior": "c", "prior_mean": "z"}
_PROB_KINDS = ("posterior", "prior")
_ROW_SUM_ATOL = 1e-4


def _row_sum_tolerance(dtype: torch.dtype, k: int) -> float:
    """How far a row of ``k`` class probabilities held in ``dtype`` may sum from 1: ``max(1e-4, 2 k eps)``.

    Rounding the ``k`` entries to the dtype moves their sum by at most ``eps / 2`` (relative errors of ``eps / 2``
    on entries summing to 1), a normalisation done in the dtype (a softmax) by a few ``eps / 2`` more, and the
    ``k - 1`` additions of the check's own sum by ``eps / 2`` each near 1: below ``2 k eps`` for every ``k >= 1``. So
    float64 keeps 1e-4 for any realistic number of classes and float32 up to 419 (2.4e-4 at 1,000), while float16
    (eps 9.8e-4) and bfloat16 (eps 7.8e-3),
    whose rounding alone moves a row by ``eps / 2``, are no longer refused for their precision."""
    return max(_ROW_SUM_ATOL, 2 * k * torch.finfo(dtype).eps)


class MessageKindError(TypeError):
    """A module was connected to a child whose forward message it does not accept."""


class MessageShapeError(ValueError):
    """Two modules disagree about a message's shape (samples ``N``, classes ``K`` or dims ``D``)."""


class GraphError(ValueError):
    """A graph of modules is malformed (cycle, unconnected module, module without children)."""


@dataclass(frozen=True)
class Message:
    """A typed message between modules (the kinds are tabulated in `kizuna.modules.base`).

    Args:
        sender: name of the sending module.
        receiver: name of the receiving module, or ``None`` for a forward message (any parent).
        variable: the shared variable the message is about (``"x"``, ``"z"``, ``"c"``, ...).
        kind: one of ``KINDS``.
        value: an ``N×D`` (or ``N×K``) floating tensor; stored detached.

    >>> m = Message("gmm", None, "c", "posterior", torch.tensor([[0.25, 0.75]]))
    >>> m.n, m.width
    (1, 2)
    >>> Message("gmm", None, "c", "posterior", torch.tensor([[0.5, 0.6]]))
    Traceback (most recent call last):
    ...
    ValueError: posterior message from gmm: rows must sum to 1 (largest deviation 0.1, tolerance 0.0001 in float32)
    """

    sender: str
    receiver: str | None
    variable: str
    kind: str
    value: torch.Tensor

    def __post_init__(self) -> None:
        where = f"{self.kind} message from {self.sender}"
        if self.kind not in KINDS:
            raise ValueError(f"message from {self.sender}: kind must be one of {KINDS}, got {self.kind!r}")
        value = self.value
        if isinstance(value, np.ndarray):
            value = torch.as_tensor(value)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}: value must be a tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{where}: value must be a floating tensor, got {value.dtype}")
        if value.dim() != 2:
            raise MessageShapeError(f"{where}: value must be 2-D (N samples x width), got shape {tuple(value.shape)}")
        if value.shape[1] == 0:  # (a posterior of no classes passed the row-sum check, and an MLDA fitted on it)
            raise MessageShapeError(f"{where}: value has width 0 (shape {tuple(value.shape)}); a message holds at "
                                    "least one feature or class per row")
        if not torch.isfinite(value).all():
            raise ValueError(f"{where}: value contains NaN or inf")
        if self.kind in _PROB_KINDS:
            if (value < 0).any():
                raise ValueError(f"{where}: class probabilities must be non-negative")
            dev = (value.sum(1) - 1).abs().max().item() if value.numel() else 0.0
            tolerance = _row_sum_tolerance(value.dtype, value.shape[1])
            if dev > tolerance:
                raise ValueError(f"{where}: rows must sum to 1 (largest deviation {dev:.3g}, tolerance {tolerance:.3g} "
                                 f"in {str(value.dtype).replace('torch.', '')})")
        object.__setattr__(self, "value", value.detach())

    @property
    def n(self) -> int:
        """Number of samples (rows)."""
        return self.value.shape[0]

    @property
    def width(self) -> int:
        """Width of a row (``D`` or ``K``)."""
        return self.value.shape[1]


def check_same_shape(module: Any, a: Message, b: Message) -> None:
    """Raise `MessageShapeError` naming both senders when two messages differ in shape."""
    if a.value.shape != b.value.shape:
        raise MessageShapeError(f"{module.name}: {a.kind} messages from {a.sender} {tuple(a.value.shape)} and "
                                f"{b.sender} {tuple(b.value.shape)} differ in shape")


def check_width(module: Any, msg: Message, width: int, what: str) -> None:
    """Raise `MessageShapeError` unless ``msg`` has ``width`` columns (``what`` names them)."""
    if msg.width != width:
        raise MessageShapeError(f"{module.name} has {width} {what}, but the {msg.kind} message from {msg.sender} "
                                f"has shape {tuple(msg.value.shape)}")
