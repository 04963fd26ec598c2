r"""Autoregressive distributions over binary pixels: `MADEBernoulli` and `PixelCNNBernoulli`.

In an order :math:`o_1, \dots, o_D` of the features,

.. math:: p(x \mid c) = \prod_{k=1}^{D} \mathrm{Bern}\big(x_{o_k};\ \sigma(f_{o_k}(x_{o_{<k}}, c))\big),

where one pass of a masked network :math:`f` gives every conditional's logit at once (MADE,
Germain et al. 2015, arXiv:1502.03509; PixelCNN, van den Oord et al. 2016, arXiv:1601.06759). The
log-density is exact and costs one pass; sampling is sequential, :math:`D` passes, each fixing the
next feature in the order. ``get_log_prob(..., sum_features=False)`` returns the per-feature
conditionals :math:`\log p(x_{o_k} | x_{o_{<k}}, c)`.

Scored values may be grey levels in ``[0, 1]`` (their log-density is then the negative binary
cross-entropy, as for `Bernoulli`); only binary values give a normalised probability. Draws made with a
``sample_shape``, ``(*sample_shape, batch, *features)``, are scored draw by draw and summed as every family
sums them (over every dimension but the first). One row of condition conditions every row, in ``sample``
(for any ``batch_n`` and ``sample_shape``) as in ``get_log_prob``, beside other conditions with a batch of rows too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from kizuna._data import check_count
from kizuna.distributions.base import (
    Distribution,
    Tensor,
    XDict,
    draws_as_rows,
    one_rows_expanded,
    repeat_batch,
    sum_rows,
)
from kizuna.distributions.torch_dist import validation_enabled
from kizuna.nets.made import MADE
from kizuna.nets.pixelcnn import PixelCNN


class _AutoregressiveBernoulli(Distribution):
    """Shared sampling and scoring; subclasses define ``logits(x, context)`` and ``order``."""

    net: torch.nn.Module

    def __init__(self, var: str | Sequence[str], cond_var: str | Sequence[str] | None, name: str,
                 features_shape: Sequence[int], context_features: int) -> None:
        super().__init__(var, cond_var, name, features_shape)
        if len(self._var) != 1:
            raise ValueError(f"{self.prob_text}: an autoregressive distribution defines exactly one variable")
        if bool(self._cond_var) != bool(context_features):
            raise ValueError(f"{self.prob_text}: give context_features (the size of the flattened cond_var values) "
                             "exactly when cond_var is given")

    @property
    def order(self) -> Tensor:
        """Flat feature indices in sampling order."""
        raise NotImplementedError

    def logits(self, x: Tensor, context: Tensor | None) -> Tensor:
        """The logits of every conditional, shaped like ``x``."""
        raise NotImplementedError

    def _context(self, x_dict: Mapping[str, Any]) -> Tensor | None:
        if not self._cond_var:
            return None
        # one row conditions every row (as a single context does in the networks), where torch.cat refused the mix;
        # (an empty batch failed reshape(0, -1))
        parts = one_rows_expanded([x_dict[c].reshape(x_dict[c].shape[0], math.prod(x_dict[c].shape[1:]))
                                   for c in self._cond_var])
        if any(part.shape[0] != parts[0].shape[0] for part in parts):  # (a raw torch.cat error)
            rows = ", ".join(f"{c}: {part.shape[0]}" for c, part in zip(self._cond_var, parts))
            raise ValueError(f"{self.prob_text}: the conditioning values have different numbers of rows ({rows}); "
                             "give each one row per draw, or one row for all")
        return torch.cat(parts, -1)

    def _check_value(self, x: Any) -> Tensor:
        """The checked value; integer and boolean values in the network's dtype (as the other families take them)."""
        var = self._var[0]
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.prob_text}: {var} must be a torch.Tensor, got {type(x).__name__}")
        if x.shape[1:] != self.features_shape:
            features = ', '.join(map(str, self.features_shape))
            raise ValueError(f"{self.prob_text}: {var} has shape {tuple(x.shape)}, expected (batch, {features}) "
                             f"(or (*sample_shape, batch, {features}) for draws made with a sample_shape)")
        if validation_enabled() and not bool(((x >= 0) & (x <= 1)).all()):
            raise ValueError(f"{self.prob_text}: value of {var} must lie in [0, 1], found values outside")
        want = next(self.net.parameters()).dtype
        if x.dtype != want:
            if x.is_floating_point():
                raise ValueError(f"{self.prob_text}: {var} is {x.dtype} but the network is {want}: convert one "
                                 f"(e.g. x.to({want}) or the distribution's .to({x.dtype}))")
            x = x.to(want)
        return x

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        # draws made with a sample_shape as rows of the network, their conditions alike; scored per draw (every family's
        # convention: one value per entry of the first dimension)
        value = x_dict[self._var[0]]
        x, x_dict, shape = draws_as_rows(value, x_dict, self.features_shape, self._cond_var) \
            if isinstance(value, Tensor) else (value, x_dict, None)
        x = self._check_value(x)
        logits = self.logits(x, self._context(x_dict))
        per_feature = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        if shape is not None:
            per_feature = per_feature.reshape(*shape, *self.features_shape)
        return sum_rows(per_feature) if sum_features else per_feature

    def _sample_n(self, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
        # the context of the un-repeated conditions (one-row parts expanded beside the others), then repeated for the
        # n draws, sample-major as `repeated` is: the base class repeated each condition on its own, so a one-row part
        # (n rows) met a batch (n * batch rows) in torch.cat
        context, rows = self._rows(x_dict, batch_n)
        return self._draw(repeat_batch(context, n), rows * n)

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        return self._draw(*self._rows(x_dict, batch_n))

    def _rows(self, x_dict: XDict, batch_n: int | None) -> tuple[Tensor | None, int]:
        """The context of one draw (one row per draw) and the number of draws: ``batch_n``, else the context's rows
        (after one-row parts are expanded: the first condition's rows made a one-row first condition decide), else 1."""
        context = self._context(x_dict)
        if context is None:
            return None, 1 if batch_n is None else batch_n
        n = context.shape[0] if batch_n is None else batch_n
        if context.shape[0] != n:
            if context.shape[0] != 1:
                raise ValueError(f"{self.prob_text}: batch_n={n} but the conditioning values have {context.shape[0]} "
                                 "rows; give one row per draw, or one row for all")
            context = context.expand(n, *context.shape[1:])  # one row conditions every draw (as in get_log_prob)
        return context, n

    def _draw(self, context: Tensor | None, n: int) -> XDict:
        """``n`` draws, one per row of ``context``, feature by feature in the order."""
        like = next(self.net.parameters())
        x = torch.zeros(n, *self.features_shape, dtype=like.dtype, device=like.device)
        if n == 0:
            return {self._var[0]: x}
        with torch.no_grad():
            flat = x.view(n, -1)
            for i in self.order.tolist():  # one pass per feature, in the order
                probs = torch.sigmoid(self.logits(x, context).reshape(n, -1)[:, i])
                flat[:, i] = torch.bernoulli(probs)
        return {self._var[0]: x}


class MADEBernoulli(_AutoregressiveBernoulli):
    """Binary vectors ``(batch, in_features)`` modelled by a MADE (module docstring).

    Args:
        in_features: :math:`D`.
        hidden_features: the MADE's hidden sizes.
        var, cond_var, name: as for every distribution; with ``cond_var`` the flattened values of
            those variables (``context_features`` in all) condition every factor.
        order: the autoregressive order (default ``0..D-1``).

    >>> import torch
    >>> p = MADEBernoulli(4, hidden_features=[16])
    >>> x = p.sample(batch_n=3)["x"]
    >>> x.shape, p.get_log_prob({"x": x}).shape
    (torch.Size([3, 4]), torch.Size([3]))
    """

    def __init__(self, in_features: int, hidden_features: Sequence[int] = (64,), var: str | Sequence[str] = ("x",),
                 cond_var: str | Sequence[str] | None = None, name: str = "p", context_features: int = 0,
                 order: Sequence[int] | Tensor | None = None) -> None:
        check_count("MADEBernoulli: in_features", in_features, 1)
        super().__init__(var, cond_var, name, (in_features,), context_features)
        self.net = MADE(in_features, hidden_features, n_params=1, context_features=context_features, order=order)

    @property
    def order(self) -> Tensor:
        return self.net.order

    def logits(self, x: Tensor, context: Tensor | None) -> Tensor:
        return self.net(x, context)[:, 0]


class PixelCNNBernoulli(_AutoregressiveBernoulli):
    """Binary images ``(batch, 1, height, width)`` modelled by a PixelCNN, raster order (module docstring).

    Args:
        height, width: the image size.
        hidden_channels, n_layers, kernel_size: the `kizuna.nets.PixelCNN`'s sizes.
        var, cond_var, name, context_features: as in `MADEBernoulli`.

    >>> import torch
    >>> p = PixelCNNBernoulli(3, 3, hidden_channels=8, n_layers=1)
    >>> p.sample(batch_n=2)["x"].shape
    torch.Size([2, 1, 3, 3])
    """

    def __init__(self, height: int, width: int, hidden_channels: int = 32, n_layers: int = 4, kernel_size: int = 5,
                 var: str | Sequence[str] = ("x",), cond_var: str | Sequence[str] | None = None, name: str = "p",
                 context_features: int = 0) -> None:
        check_count("PixelCNNBernoulli: height", height, 1)
        check_count("PixelCNNBernoulli: width", width, 1)
        super().__init__(var, cond_var, name, (1, height, width), context_features)
        self.net = PixelCNN(1, hidden_channels, n_layers, kernel_size, context_features=context_features)
        self.register_buffer("_order", torch.arange(height * width), persistent=False)

    @property
    def order(self) -> Tensor:
        return self._order

    def logits(self, x: Tensor, context: Tensor | None) -> Tensor:
        return self.net(x, context)
