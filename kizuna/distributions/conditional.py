r"""Distributions with parameters from an MLP of the conditioning variables: the usual :math:`q(z|x)`, :math:`p(x|z)`.

Each is an ordinary kizuna distribution (`Normal`, `Bernoulli`, `Categorical`) whose ``forward`` feeds the
conditioning values, each flattened per row of its first dimension and concatenated in ``cond_var`` order, to a
`kizuna.nets.MLP` of ``sizes = [inputs, *hidden, features]``:

* `MLPNormal`: :math:`\mathcal N\big(z;\ \mu(x),\ \operatorname{diag}\sigma^2(x)\big)`,
  :math:`\sigma = \operatorname{softplus}(\cdot) + \sigma_{\min}`, the network giving both halves; with
  ``shared_scale=True`` the network gives :math:`\mu` and :math:`\sigma` is one learnt value per feature;
* `MLPBernoulli`: independent Bernoulli features with logits :math:`f(z)`;
* `MLPCategorical`: a one-hot categorical with logits :math:`f(x)` (a classifier :math:`q(y|x)`).

So a condition ``(B, 1, D)`` (one channel, a dataset's ``x[i:i+1]``) or ``(B, 1, 28, 28)`` is ``B`` rows, with
parameters ``(B, features)``, as ``x.reshape(B, -1)`` gives. Only where those rows do not hold the network's inputs are
a condition's leading dimensions rows: one drawn with ``sample_shape``, ``(S, B, D)`` with ``B > 1``, is ``S * B`` rows,
whose parameters come back as ``(S, B, features)``: the same network applied in ``forward`` gives those (``nn.Linear``
acts on the last dimension), so ``get_log_prob(draws, feature_dims=[2])`` scores each draw, ``(S, B)`` (a hand-written
importance-weighted bound). Draws ``(S, 1, D)`` for one data row are ``S`` rows, with parameters ``(S, features)`` (the
numbers of Pixyz's ``(S, 1, features)``): the default ``get_log_prob(draws)`` gives one value per draw, and
``feature_dims`` count the dimensions of ``(S, 1, features)`` where they go beyond the log-density's or the scored value
is one row (`_mlp_log_prob_dims`), so ``feature_dims=[2]`` gives ``(S, 1)`` there too. A scored value is read per row as
well: ``x`` of ``(B, 1, D)`` is ``B`` rows of ``D``, scored row against row against ``B`` rows of parameters (an ELBO of
such data, not broadcast to ``(B, B, D)``), and as the same ``B`` rows in every draw against parameters of draws
(``(S, B, features)``, or ``(S, features)`` where ``B = 1``: importance weights of one-channel data). Conditions without
a batch dimension (a number, a vector of the network's inputs) are a batch of one.

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

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kizuna._data import check_non_negative, one_number
from kizuna.distributions.base import RepeatedRows, _as_list, one_rows_expanded, sum_rows
from kizuna.distributions.families import Bernoulli, Categorical, Normal
from kizuna.distributions.torch_dist import TorchDistribution, positional_forward
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


def _network_input(values: Sequence[Tensor], in_features: int) -> tuple[Tensor, torch.Size | None]:
    """The conditioning values side by side as the network's rows ``(rows, in_features)``, in ``cond_var`` order
    (features flattened), and the leading shape its outputs get back (None: the rows as they are). One value of two
    dimensions is used as it is (no copy, no concatenation in the backward pass). A value without a batch dimension
    is a batch of one (one of the network's ``in_features`` inputs, or a number); a 1-D value of other length, one
    feature per row (a batch of scalar times): ``flatten(1)`` raised a bare IndexError on both. A value of more
    dimensions is read by `_leading`: rows of its first dimension where those hold the inputs (``(B, 1, D)``), else a
    draw made with ``sample_shape``, ``(S, B, D)``, is ``S * B`` rows whose outputs come back as ``(S, B, out)``, as
    the same network applied in ``forward`` gives (``nn.Linear`` acts on the last dimension; these were flattened into
    ``(S, B * D)`` and the network refused them). Several values are read by
    `_reading`; among them, one of one row is repeated for the others' rows."""
    if len(values) == 1:
        value = values[0]
        if value.dim() == 2:
            return value, None
        if _without_batch(value, in_features):
            return value.reshape(1, -1), None
        if value.dim() == 1:
            return value.unsqueeze(-1), None
        lead = _leading(value.shape, in_features)
        return (value.flatten(1), None) if lead is None else (value.reshape(-1, in_features), lead)
    if all(value.dim() == 2 for value in values):  # the usual case: rows side by side
        return torch.cat(one_rows_expanded(values), dim=-1), None  # one row beside a batch conditions every row
    reading = _reading(values, in_features)
    if reading is None:  # no reading fits the network: as before, so that its error names the shapes given
        parts = [value.flatten(1) if value.dim() > 1 else value.reshape(-1, 1) for value in values]
        return torch.cat(one_rows_expanded(parts), dim=-1), None
    shapes, lead = reading
    parts = [value.reshape(*rows, width).expand(*lead, width) for value, (rows, width) in zip(values, shapes)]
    return torch.cat(parts, dim=-1).reshape(-1, in_features), lead if len(lead) > 1 else None


def _leading(shape: torch.Size, in_features: int) -> torch.Size | None:
    """The dimensions of a condition of three or more dimensions that are rows. None (its first dimension is the rows,
    the others flattened) where those already hold the network's inputs: ``(B, 1, D)`` and ``(B, 1, 28, 28)`` are
    ``B`` rows, whose parameters are ``(B, features)`` (data of one channel, a dataset's ``x[i:i+1]``), also a draw
    ``(S, 1, D)`` for one data row; or where no reading fits. Else `_linear_lead`."""
    if math.prod(shape[1:]) == in_features:
        return None
    return _linear_lead(shape, in_features)


def _linear_lead(shape: torch.Size, in_features: int) -> torch.Size | None:
    """The rows of a condition of three or more dimensions as the same network written in a Pixyz ``forward`` reads
    them: all but the last where the last is the inputs (``nn.Linear``'s reading: a draw made with ``sample_shape``,
    ``(S, B, D)``), else the fewest leading ones whose trailing product is the inputs (``(S, B, 1, 28, 28)`` for 784
    inputs: ``S * B`` rows); None where none fits."""
    if shape[-1] == in_features:
        return shape[:-1]
    for k in range(2, len(shape)):
        if math.prod(shape[k:]) == in_features:
            return shape[:k]
    return None


def _reading(values: Sequence[Tensor], in_features: int,
             linear: bool = False) -> tuple[list[tuple[torch.Size, int]], torch.Size] | None:
    """How several conditions, not all of two dimensions, are the network's rows: each value's leading (row)
    shape and width, and the rows they broadcast to; None where no reading gives ``in_features`` inputs on rows that
    fit. A number is one row. A 1-D value is first read as one feature per row (a batch of scalars), else as one row
    of its entries (a value without a batch dimension: ``{"x": torch.zeros(2), "y": torch.tensor(1.0)}`` for 3
    inputs). A value of three or more dimensions is first read as rows of its first dimension, the others flattened
    (as one value is: `_leading`), then as ``nn.Linear`` reads it (rows all but the last dimension: a draw made with
    ``sample_shape``). Row shapes broadcast as torch's do, right-aligned (a condition per batch row beside draws
    ``(S, B, D)`` is the same for every draw), but only to one of them (``(5,)`` beside ``(5, 1)`` is not read as 5 x 5
    rows). ``linear``: the ``nn.Linear`` reading first (`_draws_lead`)."""
    for one_row in (False, True):
        for last in ((True, False) if linear else (False, True)):
            shapes = []
            for value in values:
                if value.dim() == 0:
                    shapes.append((torch.Size(), 1))
                elif value.dim() == 1:
                    shapes.append((torch.Size(), value.shape[0]) if one_row else (value.shape, 1))
                elif value.dim() == 2 or not last:
                    shapes.append((value.shape[:1], math.prod(value.shape[1:])))
                else:
                    shapes.append((value.shape[:-1], value.shape[-1]))
            if sum(width for _, width in shapes) != in_features:
                continue
            rows = [r for r, _ in shapes]
            try:
                lead = torch.broadcast_shapes(*rows)
            except RuntimeError:
                continue
            if len(lead) == 0 or lead in rows:
                return shapes, lead
    return None


def _apply_net(net: nn.Module, values: Sequence[Tensor], in_features: int) -> Tensor:
    """``net`` on the conditions' rows (`_network_input`), its outputs given the conditions' leading shape back."""
    rows, lead = _network_input(values, in_features)
    out = net(rows)
    return out if lead is None else out.reshape(*lead, out.shape[-1])


def _without_batch(value: Tensor, in_features: int) -> bool:
    """Whether one condition has no batch dimension: a number, or a vector of the network's ``in_features`` inputs
    (another 1-D value is a batch of scalars); the one rule `_network_input` and `_unbatched` read."""
    return value.dim() == 0 or (value.dim() == 1 and in_features != 1 and value.shape[0] == in_features)


def _unbatched(dist: Any, x_dict: Mapping[str, Any]) -> tuple[str, ...]:
    """The conditions of an MLP distribution given without a batch dimension, as `_network_input` reads them (a
    number, or a vector of the network's inputs; among several, the 1-D values it reads as one row each):
    `TorchDistribution._rows` then draws one row, as the density and the mean give (sample drew one row per
    feature)."""
    names = dist._cond_var
    if len(names) == 1:
        v = x_dict.get(names[0])
        if isinstance(v, Tensor) and _without_batch(v, dist._in_features):
            return (names[0],)
        return ()
    values = [x_dict.get(c) for c in names]
    if not all(isinstance(v, Tensor) for v in values) or all(v.dim() == 2 for v in values):
        return ()
    reading = _reading(values, dist._in_features)
    if reading is None:
        return ()
    return tuple(c for c, v, (rows, _) in zip(names, values, reading[0]) if v.dim() == 1 and not rows)


def _mlp_rows(dist: Any, params: dict[str, Any], x_dict: Mapping[str, Any], batch_n: int | None) -> int | None:
    """See `TorchDistribution._rows`: outputs of more than two dimensions come from conditions drawn with
    ``sample_shape`` (the network's features are one dimension), so their first dimension is the rows even when it
    is 1 (``sample_shape=(1,)``: that one leading row was read as a row to broadcast to another value's rows, and the
    draw refused it)."""
    if batch_n is None:
        for value in params.values():
            if isinstance(value, Tensor) and value.dim() > 2:
                return value.shape[0]
    return TorchDistribution._rows(dist, params, x_dict, batch_n)


def _mlp_value(dist: Any, value: Any, features: torch.Size, params: dict[str, Any]) -> Tensor:
    """See `TorchDistribution._value`: a scored value is read per first-dimension row, its entries flattened to one
    row's features, as the conditions are (`_leading`). A value ``(B, 1, D)`` (one channel) is ``B`` rows of ``D``:

    * against parameters of ``B`` rows, scored one row against one row (broadcast to ``(B, B, D)`` it was scored
      every row against every row: an ELBO of such data summed ``B`` reconstruction terms per row);
    * against parameters of draws ``(S, B, D)`` (a decoder given ``z`` drawn with ``sample_shape`` from an encoder of
      that data), the same ``B`` rows in every draw, and ``(1, 1, D)`` against ``(S, D)`` (the draws of one data row
      are ``S`` rows) one row against every draw: they were refused (``B > 1``), or broadcast to ``(1, S, D)`` and the
      ``S`` draws summed into one value (``B = 1``).

    Other values (a draw ``(S, B, D)``, one row ``(1, D)``) as `TorchDistribution._value`."""
    if isinstance(value, Tensor) and value.dim() > 2 and features and value.shape[1:] != features:
        n, entries = value.shape[0], math.prod(value.shape[1:])
        rows = next((v.shape[0] for v in params.values() if isinstance(v, Tensor) and v.dim() > 0), None)
        if value.dim() > len(features) + 1 and rows == n and entries == math.prod(features):
            shape = features  # the parameters' rows, each flattened to their features
        elif entries == features[-1] and value.shape[1:] != features[-1:] and (
                n == 1 or (len(features) > 1 and n == features[-2])):
            shape = features[-1:]  # rows of one row's features: the rows in each draw, or one row
        else:
            shape = None
        if shape is not None:
            if type(value) is RepeatedRows and value._copy is None:  # still lazy: the source rows, not a copy
                value = RepeatedRows(value.source.reshape(value.source.shape[0], *shape), value.n)
            else:
                value = value.reshape(n, *shape)
    return TorchDistribution._value(dist, value, features, params)


def _draws_lead(values: Sequence[Any], in_features: int) -> torch.Size | None:
    """The leading shape (two or more dimensions) of the network's outputs for these conditions as the same network
    written in a Pixyz ``forward`` gives it (``nn.Linear`` acts on the last dimension: draws ``(S, 1, D)`` of one data
    row give ``(S, 1, features)``), where the conditions have one; None otherwise."""
    if not values or not all(isinstance(v, Tensor) for v in values):
        return None
    if len(values) == 1:
        lead = _linear_lead(values[0].shape, in_features) if values[0].dim() > 2 else None
    elif all(v.dim() == 2 for v in values):
        return None
    else:
        reading = _reading(values, in_features, linear=True)
        lead = None if reading is None else reading[1]
    return lead if lead is not None and len(lead) > 1 else None


def _mlp_log_prob_dims(dist: Any, x_dict: Mapping[str, Any], dims: Sequence[int]) -> Tensor:
    """See `TorchDistribution._log_prob_dims`. Draws ``(S, 1, D)`` of one data row are ``S`` rows, with a
    log-density ``(S, D)`` against one row of the scored value, where the same network written in a Pixyz ``forward``
    gives ``(S, 1, D)`` (`_draws_lead`). ``dims`` count the dimensions of that layout where they go beyond the
    log-density's (``feature_dims=[2]`` gives ``(S, 1)``, as for ``B > 1`` draws ``(S, B, D)``; it was out of range),
    and where the value is one row against more, so that both layouts pair the same entries, unless a dimension
    named is one of its inserted 1s (a categorical's ``feature_dims=[]``, or ``[-1]``, give ``(S, 1)`` beside an
    encoder's ``(S, 1)``, not ``(S,)``, which broadcast to ``(S, S)``: a hand-written importance-weighted bound on a
    batch of one; ``feature_dims=[1]`` of one ``z`` against data ``(B, 1, D)`` still sums ``z``'s features). Only
    dimensions of size 1 are inserted: the numbers are the same. A value of as many rows as the parameters (data
    ``(B, 1, D)`` scored row against row) keeps the rows' layout (Pixyz's pairs every row with every row)."""
    lp = dist._elementwise_log_prob(x_dict)
    beyond = any(d >= lp.dim() for d in dims)
    if lp.dim() and (beyond or lp.shape[0] > 1 and _one_row(x_dict.get(dist._var[0]))):
        lead = _draws_lead([x_dict.get(c) for c in dist._cond_var], dist._in_features)
        if lead is not None and math.prod(lead) == lp.shape[0]:
            rank = len(lead) + lp.dim() - 1
            if beyond or not any(0 < (d % rank if -rank <= d < rank else d) < len(lead) for d in dims):
                lp = lp.reshape(*lead, *lp.shape[1:])
    return sum_rows(lp, dims)


def _one_row(value: Any) -> bool:
    """Whether a scored value of an MLP family (features in its last dimension) is one row: ``(1, ...)``, or a vector
    without a batch dimension."""
    return isinstance(value, Tensor) and (value.dim() < 2 or value.shape[0] == 1)


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
    _rows = _mlp_rows
    _value = _mlp_value
    _log_prob_dims = _mlp_log_prob_dims

    forward = positional_forward  # forward(**cond): _forward_by_position on the values in cond_var order

    def _forward_by_position(self, *values: Tensor) -> dict[str, Tensor]:
        """`forward` given the conditioning values in ``cond_var`` order (how the evaluation calls it)."""
        # not self.net: nn.Module's __getattr__ costs ~0.7 µs
        out = _apply_net(self._modules["net"], values, self._in_features)
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
    _rows = _mlp_rows
    _value = _mlp_value
    _log_prob_dims = _mlp_log_prob_dims

    forward = positional_forward  # forward(**cond): _forward_by_position on the values in cond_var order

    def _forward_by_position(self, *values: Tensor) -> dict[str, Tensor]:
        """`forward` given the conditioning values in ``cond_var`` order (how the evaluation calls it)."""
        return {"logits": _apply_net(self._modules["net"], values, self._in_features)}


class MLPCategorical(Categorical):
    """A one-hot categorical over ``var`` with logits from an MLP of ``cond_var`` (see `MLPNormal`)."""

    _in_features = 0  # the network's inputs (0 for an instance pickled before it: 1-D values one per row)

    def __init__(self, var: str | Sequence[str], cond_var: str | Sequence[str], sizes: Sequence[int],
                 name: str = "q") -> None:
        super().__init__(var=_one(var), cond_var=_as_list(cond_var, "cond_var"), name=name)
        sizes = _sizes(sizes, "MLPCategorical")
        self.net, self._in_features = MLP(*sizes), sizes[0]

    _unbatched_conditions = _unbatched
    _rows = _mlp_rows
    _value = _mlp_value
    _log_prob_dims = _mlp_log_prob_dims

    forward = positional_forward  # forward(**cond): _forward_by_position on the values in cond_var order

    def _forward_by_position(self, *values: Tensor) -> dict[str, Tensor]:
        """`forward` given the conditioning values in ``cond_var`` order (how the evaluation calls it)."""
        return {"logits": _apply_net(self._modules["net"], values, self._in_features)}
