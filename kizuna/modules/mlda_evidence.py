r"""Turning a child's message into the tokens an MLDA counts: rescaling to a weight, then integers.

An MLDA counts tokens, so every modality it hears becomes an N×V matrix of non-negative integers. With a
modality weight :math:`w` (SERKET's ``weights``) each row is first rescaled to sum to :math:`w`,
:math:`t_{nv} = w\,x_{nv} / \sum_u x_{nu}` (a child's class posterior :math:`p(c_n = v)` becomes
:math:`w\,p(c_n = v)` class-word tokens; a histogram keeps its shape with :math:`w` tokens), and then made
integer. How decides what the MLDA sees:

* ``"round"`` — :math:`\mathrm{round}(t_{nv})`, kizuna's MLDA until now: about :math:`w` tokens a row.
* ``"floor"`` — :math:`\lfloor t_{nv} \rfloor`, **what SERKET does**: its MLDA casts the rescaled matrix
  to ``int32`` (naka-lab/Serket ``mlda/__init__.py``: negatives set to 0, rows divided by their sums —
  a zero row left as it is —, times the weight, ``np.array(..., dtype=np.int32)``), deterministically,
  without sampling; each count becomes that many tokens. Every feature below :math:`1/w` of its row's mass
  is dropped and a row keeps fewer than :math:`w` tokens: on SERKET's spoken digits (2,400 HAC features,
  about 205 counts over 125 features a sample) a weight of 200 leaves **127 tokens over 76 features** on
  average, against 204 over 125 with ``"round"``, so next to the GMM's ~200 class-word tokens the speech
  carries less weight than the equal weights suggest.
* ``"largest_remainder"`` — exactly :math:`w` tokens a row (for an integer :math:`w`): the floors, then one
  more token for each of the :math:`w - \sum_v \lfloor t_{nv} \rfloor` largest remainders (Hamilton's
  apportionment), so every count is within one token of :math:`t_{nv}`.

Without a weight the counts are used as they are (rounded, with a warning where that changes them). The MLDA
takes the choice as ``MLDA(..., rounding=...)`` (default ``"round"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kizuna.modules.lda.sampler import ROUNDINGS, _rescaled, as_counts

Tensor = torch.Tensor
__all__ = ["ROUNDINGS", "rescaled", "token_counts"]


def rescaled(x: Any, weight: float | None, what: str = "counts") -> Tensor:
    """The rows of ``x`` (N×V, finite and non-negative) rescaled to sum to ``weight`` as SERKET computes
    it, :math:`(x_{nv} / \\sum_u x_{nu})\\,w` in float64 (a zero row stays zero); ``x`` itself without a weight."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 2:
        raise ValueError(f"{what}: counts must be N x V, got shape {tuple(t.shape)}")
    t = t.double()
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{what}: counts must be finite and non-negative")
    return t if weight is None else _rescaled(t, weight, what)


def token_counts(x: Any, weight: float | None, rounding: str = "round", what: str = "counts") -> Tensor:
    """Integer token counts (N×V long) of ``x`` rescaled to ``weight`` per row (see the module docstring):
    what ``MLDA(weights=..., rounding=...)`` counts (`kizuna.modules.lda.sampler.as_counts`).

    Args:
        x: counts or probabilities, N×V (array or tensor), finite and non-negative.
        weight: tokens per row, or None to keep ``x``'s own totals.
        rounding: ``"round"``, ``"floor"`` (SERKET's) or ``"largest_remainder"``.
        what: a name for error messages.

    >>> token_counts([[0.996, 0.003, 0.001], [0.5, 0.25, 0.25]], 200, "floor").tolist()
    [[199, 0, 0], [100, 50, 50]]
    >>> token_counts([[0.996, 0.003, 0.001]], 200, "largest_remainder").tolist()
    [[199, 1, 0]]
    """
    return as_counts(rescaled(x, None, what), weight, what, rounding)
