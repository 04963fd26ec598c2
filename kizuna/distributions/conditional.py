r"""Distributions with parameters from an MLP of the conditioning variables: the usual :math:`q(z|x)`, :math:`p(x|z)`.

Each is an ordinary kizuna distribution (`Normal`, `Bernoulli`, `Categorical`) whose ``forward`` feeds the
conditioning values, flattened and concatenated in ``cond_var`` order, to a `kizuna.nets.MLP` of
``sizes = [inputs, *hidden, features]``:

* `MLPNormal`: :math:`\mathcal N\big(z;\ \mu(x),\ \operatorname{diag}\sigma^2(x)\big)`,
  :math:`\sigma = \operatorname{softplus}(\cdot) + \sigma_{\min}`, the network giving both halves; with
  ``shared_scale=True`` the network gives :math:`\mu` and :math:`\sigma` is one learnt value per feature;
* `MLPBernoulli`: independent Bernoulli features with logits :math:`f(z)`;
* `MLPCategorical`: a one-hot categorical with logits :math:`f(x)` (a classifier :math:`q(y|x)`).

>>> import torch
>>> q = MLPNormal("z", ["x"], [4, 16, 2])                     # q(z|x), an encoder
>>> p = MLPBernoulli("x", ["z"], [2, 16, 4], name="p")         # p(x|z), a decoder
>>> print(q.prob_text, p.prob_text)
q(z|x) p(x|z)
>>> s = q.sample({"x": torch.rand(3, 4)})
>>> tuple(s["z"].shape), tuple(p.get_log_prob({"x": torch.ones(3, 4), "z": s["z"]}).shape)
((3, 2), (3,))
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kizuna._data import check_non_negative, one_number
from kizuna.distributions.base import _as_list, one_rows_expanded
from kizuna.distributions.families import Bernoulli, Categorical, Normal
from kizuna.distributions.torch_dist import positional_forward
from kizuna.nets import MLP

Tensor = torch.Tensor


def _one(var: str | Sequence[str]) -> list[str]:
    names = [var] if isinstance(var, str) else list(var)
    if len(names) != 1:
        raise ValueError(f"an MLP-conditioned distribution is over one variable, got {names}")
    return names


def _sizes(sizes: Sequence[int], cls: str) -> list[int]:
    given = sizes
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.tolist()
    try:
        sizes = [one_number(s) for s in sizes] if not isinstance(sizes, (str, bytes)) else None
    except TypeError:  # (not iterable)
        sizes = None
    if sizes is None or len(sizes) < 2 or any(
            isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
        # (int() took 8.5 as 8 and True as 1, silently)
        raise ValueError(f"{cls}: sizes must be [inputs, *hidden, features], all positive integers, got {given!r}")
    return [int(s) for s in sizes]


def _side_by_side(values: Sequence[Tensor], in_features: int) -> Tensor:
    """The conditioning values side by side, in ``cond_var`` order (features flattened); one value is used
    as it is (no copy, no concatenation in the backward pass). A value without a batch dimension is a batch of
    one (one of the network's ``in_features`` inputs, or a number); a 1-D value of other length, one feature per row
    (a batch of scalar times): ``flatten(1)`` raised a bare IndexError on both. Among several values, one of one row
    is repeated for the others' rows."""
    if len(values) == 1:
        value = values[0]
        if value.dim() == 2:
            return value
        if _without_batch(value, in_features):
            return value.reshape(1, -1)
        if value.dim() == 1:
            return value.unsqueeze(-1)
        return value.flatten(1)
    parts = [value.flatten(1) if value.dim() > 1 else value.reshape(-1, 1) for value in values]
    return torch.cat(one_rows_expanded(parts), dim=-1)  # one row beside a batch conditions every row


def _without_batch(value: Tensor, in_features: int) -> bool:
    """Whether one condition has no batch dimension: a number, or a vector of the network's ``in_features`` inputs
    (another 1-D value is a batch of scalars); the one rule `_side_by_side` and `_unbatched` read."""
    return value.dim() == 0 or (value.dim() == 1 and in_features != 1 and value.shape[0] == in_features)


def _unbatched(dist: Any, x_dict: Mapping[str, Any]) -> tuple[str, ...]:
    """The one condition of an MLP distribution given without a batch dimension, as `_side_by_side` reads it (a
    number, or a vector of the network's inputs): `TorchDistribution._rows` then draws one row, as the density and
    the mean give (sample drew one row per feature)."""
    names = dist._cond_var
    if len(names) != 1:
        return ()
    v = x_dict.get(names[0])
    if isinstance(v, Tensor) and _without_batch(v, dist._in_features):
        return (names[0],)
    return ()


class MLPNormal(Normal):
    """A diagonal Normal over ``var`` whose mean (and scale) come from an MLP of ``cond_var``.

    Args:
        var: the variable (``"z"`` or ``["z"]``).
        cond_var: the conditioning variables, concatenated in this order.
        sizes: ``[inputs, *hidden, features]``.
        name: the distribution's name in formulas.
        min_scale: :math:`\\sigma_{\\min}`, added to the softplus.
        shared_scale: one learnt scale per feature instead of a scale from the network.
    """

    _in_features = 0  # the network's inputs (0 for an instance pickled before it: 1-D values one per row)

    def __init__(self, var: str | Sequence[str], cond_var: str | Sequence[str], sizes: Sequence[int], name: str = "q",
                 min_scale: float = 1e-4, shared_scale: bool = False) -> None:
        super().__init__(var=_one(var), cond_var=_as_list(cond_var, "cond_var"), name=name)
        sizes = _sizes(sizes, "MLPNormal")
        if isinstance(min_scale, torch.Tensor) and min_scale.numel() == 1:  # (a 0-d tensor was taken by float())
            min_scale = min_scale.item()
        check_non_negative("MLPNormal: min_scale", min_scale)  # (a negative one let the scale reach 0 or below)
        self._in_features = sizes[0]
        self.min_scale, self.shared_scale = float(min_scale), bool(shared_scale)
        self.net = MLP(*sizes) if shared_scale else MLP(*sizes[:-1], 2 * sizes[-1])
        self.raw_scale = nn.Parameter(torch.zeros(sizes[-1])) if shared_scale else None

    _unbatched_conditions = _unbatched

    forward = positional_forward  # forward(**cond): _forward_by_position on the values in cond_var order

    def _forward_by_position(self, *values: Tensor) -> dict[str, Tensor]:
        """`forward` given the conditioning values in ``cond_var`` order (how the evaluation calls it)."""
        # not self.net: nn.Module's __getattr__ costs ~0.7 µs
        out = self._modules["net"](_side_by_side(values, self._in_features))
        if self.raw_scale is not None:
            return {"loc": out, "scale": (F.softplus(self.raw_scale) + self.min_scale).expand_as(out)}
        loc, s = out.chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + self.min_scale}


class MLPBernoulli(Bernoulli):
    """Independent Bernoulli features over ``var`` with logits from an MLP of ``cond_var`` (see `MLPNormal`)."""

    _in_features = 0  # the network's inputs (0 for an instance pickled before it: 1-D values one per row)

    def __init__(self, var: str | Sequence[str], cond_var: str | Sequence[str], sizes: Sequence[int],
                 name: str = "p") -> None:
        super().__init__(var=_one(var), cond_var=_as_list(cond_var, "cond_var"), name=name)
        sizes = _sizes(sizes, "MLPBernoulli")
        self.net, self._in_features = MLP(*sizes), sizes[0]

    _unbatched_conditions = _unbatched

    forward = positional_forward  # forward(**cond): _forward_by_position on the values in cond_var order

    def _forward_by_position(self, *values: Tensor) -> dict[str, Tensor]:
        """`forward` given the conditioning values in ``cond_var`` order (how the evaluation calls it)."""
        return {"logits": self._modules["net"](_side_by_side(values, self._in_features))}


class MLPCategorical(Categorical):
    """A one-hot categorical over ``var`` with logits from an MLP of ``cond_var`` (see `MLPNormal`)."""

    _in_features = 0  # the network's inputs (0 for an instance pickled before it: 1-D values one per row)

    def __init__(self, var: str | Sequence[str], cond_var: str | Sequence[str], sizes: Sequence[int],
                 name: str = "q") -> None:
        super().__init__(var=_one(var), cond_var=_as_list(cond_var, "cond_var"), name=name)
        sizes = _sizes(sizes, "MLPCategorical")
        self.net, self._in_features = MLP(*sizes), sizes[0]

    _unbatched_conditions = _unbatched

    forward = positional_forward  # forward(**cond): _forward_by_position on the values in cond_var order

    def _forward_by_position(self, *values: Tensor) -> dict[str, Tensor]:
        """`forward` given the conditioning values in ``cond_var`` order (how the evaluation calls it)."""
        return {"logits": self._modules["net"](_side_by_side(values, self._in_features))}
