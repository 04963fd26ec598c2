r"""Coupling layers: half of the features, unchanged, parameterise a transform of the other half.

With a binary mask :math:`m` (1 = kept) and :math:`x_m = m \odot x`:

* `AffineCoupling` (RealNVP, Dinh et al. 2016, arXiv:1605.08803):

  .. math:: z = x \odot \exp\big((1-m)\odot s(x_m)\big) + (1-m)\odot t(x_m), \qquad
            \log|\det J| = \textstyle\sum_i (1-m_i)\, s_i(x_m)

* `RationalQuadraticCoupling` (neural spline flow, Durkan et al. 2019, arXiv:1906.04032): each
  unmasked feature goes through a monotone rational-quadratic spline (`kizuna.flows.spline`)
  whose bins and knot derivatives come from a network of :math:`x_m`.

The Jacobian is triangular (kept features map to themselves), so its log-determinant is the sum
of the log-slopes of the transformed features. A context ``y`` makes the layer conditional: the
networks are called as ``net(x_m, y)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from kizuna._data import check_context, check_count
from kizuna.flows.base import Flow, Tensor, row_sum
from kizuna.flows.spline import MIN_BIN, rational_quadratic_spline
from kizuna.nets.mlp import MLP

_MAX_BINS = round(1 / MIN_BIN)  # the spline's smallest bin, a share of the interval

MASK_TYPES = ("channel_wise", "checkerboard")


def coupling_mask(x: Tensor, mask_type: str, inverse_mask: bool) -> Tensor:
    """The mask (1 = kept) broadcastable to ``x`` of shape ``(B, C)`` or ``(B, C, H, W)``.

    ``channel_wise`` keeps the first ``C // 2`` features (channels); ``checkerboard`` keeps the
    pixels with even ``row + column`` (on vectors: the even-indexed features). ``inverse_mask``
    swaps the roles.

    >>> coupling_mask(torch.zeros(1, 4), "channel_wise", False)
    tensor([[1., 1., 0., 0.]])
    >>> coupling_mask(torch.zeros(1, 1, 2, 3), "checkerboard", True)[0, 0]
    tensor([[0., 1., 0.],
            [1., 0., 1.]])
    """
    c = x.shape[1]
    if mask_type == "channel_wise":
        mask = (torch.arange(c, device=x.device) < c // 2).reshape(1, c, *([1] * (x.dim() - 2)))
    elif x.dim() == 4:
        h, w = x.shape[2:]
        mask = ((torch.arange(h, device=x.device)[:, None] + torch.arange(w, device=x.device)) % 2 == 0)[None, None]
    elif x.dim() == 2:
        mask = (torch.arange(c, device=x.device) % 2 == 0)[None]
    else:
        raise ValueError(f"checkerboard masks need inputs of shape (B, C) or (B, C, H, W), got {tuple(x.shape)}")
    if inverse_mask:
        mask = ~mask
    return mask.to(x.dtype)


class _ContextMLP(nn.Module):
    """``MLP(cat(x, y))`` with a zero last layer: a new coupling layer starts as the identity."""

    def __init__(self, in_features: int, context_features: int, hidden_features: int, out_features: int,
                 owner: str = "coupling") -> None:
        super().__init__()
        self.context_features, self.owner = context_features, owner
        self.net = MLP(in_features + context_features, hidden_features, hidden_features, out_features)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        check_context(self.owner, y, self.context_features, x.shape[0], broadcast=True)
        if y is None:
            return self.net(x)
        # one context row stands for every row of x, as in MADE, MAF and IAF
        # (the features' count given: reshape(rows, -1) failed on an empty batch)
        context = y.reshape(y.shape[0], self.context_features).expand(x.shape[0], self.context_features)
        return self.net(torch.cat([x, context], -1))


def _call(net: Callable[..., object], x: Tensor, y: Tensor | None) -> object:
    return net(x) if y is None else net(x, y)


class _Coupling(Flow):
    """Mask bookkeeping shared by the coupling layers."""

    def __init__(self, in_features: int, mask_type: str, inverse_mask: bool) -> None:
        super().__init__(in_features)
        if mask_type not in MASK_TYPES:
            raise ValueError(f"{type(self).__name__}: mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        self.mask_type = mask_type
        self.inverse_mask = inverse_mask

    def build_mask(self, x: Tensor) -> Tensor:
        return coupling_mask(x, self.mask_type, self.inverse_mask)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, mask_type={self.mask_type}, inverse_mask={self.inverse_mask}"


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether ``shape`` broadcasts against ``target`` without changing it."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


class AffineCoupling(_Coupling):
    """The RealNVP affine coupling layer (module docstring); Pixyz's signature.

    Args:
        in_features: features (vectors) or channels (images) of ``x``.
        mask_type: ``"channel_wise"`` or ``"checkerboard"``.
        scale_net, translate_net: networks for :math:`s` and :math:`t` (outputs shaped like ``x``, or broadcasting
            to it by torch's rules, e.g. ``(B, 1)`` or a ``(D,)`` parameter shared by every row; they are expanded to
            ``x``'s shape. A value per row must be ``(B, 1)``: a ``(B,)`` one lines up with the features).
        scale_translate_net: one network returning ``(s, t)`` instead.
        inverse_mask: transform the other half.
        hidden_features, context_features: with no network given, a zero-initialised MLP of two
            hidden layers (vectors only) over the kept features and the context, with
            :math:`s = \\tanh(\\cdot)` bounded for stable training.

    >>> import torch
    >>> f = AffineCoupling(4, hidden_features=8)
    >>> x = torch.randn(3, 4)
    >>> torch.allclose(f(x), x)   # zero-initialised: starts as the identity
    True
    """

    def __init__(self, in_features: int, mask_type: str = "channel_wise", scale_net: nn.Module | None = None,
                 translate_net: nn.Module | None = None, scale_translate_net: nn.Module | None = None,
                 inverse_mask: bool = False, hidden_features: int = 64, context_features: int = 0) -> None:
        super().__init__(in_features, mask_type, inverse_mask)
        if (scale_net is None) != (translate_net is None):
            raise ValueError("AffineCoupling: give both scale_net and translate_net, or scale_translate_net")
        if scale_net is not None and scale_translate_net is not None:
            raise ValueError("AffineCoupling: give scale_net and translate_net, or scale_translate_net, not both")
        self.scale_net, self.translate_net = scale_net, translate_net
        self.scale_translate_net = scale_translate_net
        self.default_net = None
        if scale_net is None and scale_translate_net is None:
            self.default_net = _ContextMLP(in_features, context_features, hidden_features, 2 * in_features,
                                           "AffineCoupling")
            self.row_dims = 1  # the default network takes vectors (a user's may take images)

    def get_parameters(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:math:`(1-m)\\odot s(x_m)` and :math:`(1-m)\\odot t(x_m)`."""
        mask = self.build_mask(x)
        xm = x * mask
        if self.default_net is not None:
            if x.dim() != 2:
                raise ValueError(f"AffineCoupling: the default network takes vectors (B, C); got {tuple(x.shape)}; "
                                 "pass scale_translate_net for images")
            raw_s, t = self.default_net(xm, y).chunk(2, -1)
            log_s = torch.tanh(raw_s)
        else:
            if self.scale_translate_net is not None:
                out = _call(self.scale_translate_net, xm, y)
                # one tensor stacking s and t has a dimension more than x: a (2, D) one is x's own (B, D) output at
                # batch size 2 as often as a stacked pair of (D,) parameters (return those as a tuple)
                if not (isinstance(out, (tuple, list)) and len(out) == 2
                        or isinstance(out, Tensor) and out.dim() == x.dim() + 1 and out.shape[0] == 2):
                    got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(f"AffineCoupling: scale_translate_net must return the pair (s, t), got {got} "
                                     f"(expected a tuple, or one tensor of {x.dim() + 1} dimensions stacking them)")
                log_s, t = out
                names = ("scale_translate_net's s", "scale_translate_net's t")
            else:
                log_s, t = _call(self.scale_net, xm, y), _call(self.translate_net, xm, y)
                names = ("scale_net", "translate_net")
            # a user's network of another shape failed deep in torch, or was broadcast against x into another
            # shape silently; one that broadcasts to x's shape (a (B, 1) scale, a per-channel (B, C, 1, 1), a (D,)
            # parameter shared by every row) is expanded, so the log-det sums the scale over every feature it
            # multiplies, row by row
            parts = []
            for name, part in zip(names, (log_s, t)):
                if not (isinstance(part, Tensor) and _broadcasts_to(part.shape, x.shape)):
                    got = tuple(part.shape) if isinstance(part, Tensor) else type(part).__name__
                    raise ValueError(f"AffineCoupling: {name} returned {got}, expected the shape of x, "
                                     f"{tuple(x.shape)} (or one that broadcasts to it)")
                parts.append(part.expand(x.shape))
            log_s, t = parts
        return log_s * (1 - mask), t * (1 - mask)

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        log_s, t = self.get_parameters(x, y)
        return x * torch.exp(log_s) + t, row_sum(log_s)

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        log_s, t = self.get_parameters(z, y)  # the kept half of z is the kept half of x
        return (z - t) * torch.exp(-log_s), -row_sum(log_s)


class RationalQuadraticCoupling(_Coupling):
    """Neural-spline coupling on vectors ``(batch, in_features)`` (module docstring).

    Args:
        in_features: the dimension of ``x``.
        num_bins: spline bins :math:`K` per feature.
        tail_bound: :math:`B`; outside :math:`[-B, B]` the layer is the identity.
        mask_type, inverse_mask: as in `AffineCoupling` (vectors).
        net: maps ``(x_m[, y])`` to ``(batch, in_features * (3K - 1))`` spline parameters (or
            ``(batch, in_features, 3K - 1)``; another shape is a ValueError); default a
            zero-initialised MLP (the layer then starts as the identity).
        hidden_features, context_features: the default network's sizes.
    """

    row_dims = 1

    def __init__(self, in_features: int, num_bins: int = 8, tail_bound: float = 3.0,
                 mask_type: str = "channel_wise", inverse_mask: bool = False, net: nn.Module | None = None,
                 hidden_features: int = 64, context_features: int = 0) -> None:
        super().__init__(in_features, mask_type, inverse_mask)
        check_count("RationalQuadraticCoupling: num_bins", num_bins, 2)
        if num_bins > _MAX_BINS:  # each bin is at least 1/1000 of the interval: more bins gave negative widths, NaN
            raise ValueError(f"RationalQuadraticCoupling: num_bins must be at most {_MAX_BINS} (each bin keeps at "
                             f"least a thousandth of the interval), got {num_bins}")
        if not 0 < float(tail_bound) < math.inf:  # 0 gave NaN at x = 0, a negative bound the identity everywhere
            raise ValueError(f"RationalQuadraticCoupling: tail_bound must be a finite number > 0, got {tail_bound}")
        self.num_bins, self.tail_bound = num_bins, float(tail_bound)
        n_out = in_features * (3 * num_bins - 1)
        self.net = net if net is not None else _ContextMLP(
            in_features, context_features, hidden_features, n_out, "RationalQuadraticCoupling")

    def _check(self, x: Tensor, what: str) -> None:
        super()._check(x, what)
        if x.dim() != 2:
            raise ValueError(f"RationalQuadraticCoupling: {what} must be (batch, {self.in_features}), "
                             f"got {tuple(x.shape)}")

    def _spline(self, x: Tensor, y: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        mask = self.build_mask(x)
        k = self.num_bins
        params = _call(self.net, x * mask, y)
        expected = (x.shape[0], x.shape[1] * (3 * k - 1))
        # (batch, in_features, 3K - 1) is the same layout, already split per feature
        if not isinstance(params, Tensor) or params.shape != expected and params.shape != (*x.shape, 3 * k - 1):
            got = tuple(params.shape) if isinstance(params, Tensor) else type(params).__name__
            raise ValueError(f"RationalQuadraticCoupling: net returned {got}, expected {expected} (batch, in_features "
                             f"* (3 * num_bins - 1)) spline parameters")
        params = params.reshape(x.shape[0], x.shape[1], 3 * k - 1)
        out, log_grad = rational_quadratic_spline(
            x, params[..., :k], params[..., k:2 * k], params[..., 2 * k:], inverse=inverse, bound=self.tail_bound)
        keep = mask.bool().expand_as(x)
        return torch.where(keep, x, out), row_sum(torch.where(keep, torch.zeros_like(log_grad), log_grad))

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._spline(x, y, inverse=False)

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._spline(z, y, inverse=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_bins={self.num_bins}, tail_bound={self.tail_bound}"
