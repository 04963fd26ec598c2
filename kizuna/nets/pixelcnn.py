r"""A small PixelCNN: masked convolutions over one-channel images (van den Oord et al. 2016, arXiv:1601.06759).

Pixels are ordered row by row (raster order). A convolution's kernel is masked so that the output
at pixel :math:`(r, c)` sees only pixels before it: rows above, and the pixels to the left in the
same row. Mask ``"A"`` (first layer) also hides the centre pixel itself; mask ``"B"`` (later layers)
keeps the centre, which there holds features of earlier pixels only. So

.. math::
    \frac{\partial\, \mathrm{logit}_{r,c}}{\partial x_{r',c'}} = 0
    \quad\text{unless } (r', c') \text{ precedes } (r, c).

Stacked masked convolutions have a known blind spot (a triangle of earlier pixels up and to the
right is never seen; van den Oord et al. 2016b, arXiv:1606.05328); the model is still a valid,
exactly normalised autoregressive model. With one input channel no colour masks are needed.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kizuna._data import check_context, check_count, check_int

Tensor = torch.Tensor


def _check_kernel(name: str, value: Any, mask_type: str) -> None:
    """An odd integer kernel size, at least 3 for mask "A" (1 for "B"); a ValueError naming the argument and value."""
    minimum = 3 if mask_type == "A" else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum or value % 2 != 1:
        why = " (a 1×1 mask-A kernel hides its only pixel: the layer sees nothing)" if mask_type == "A" else ""
        raise ValueError(f"{name} must be odd and an integer >= {minimum}{why}, got {value!r}")


class MaskedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (odd square kernel, "same" padding) whose kernel sees only earlier pixels.

    Args:
        kernel_size: odd; at least 3 for mask ``"A"`` (a 1×1 mask-A kernel sees no pixel at all).
        mask_type: ``"A"`` hides the centre pixel (first layer), ``"B"`` keeps it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str) -> None:
        if mask_type not in ("A", "B"):
            raise ValueError(f"MaskedConv2d: mask_type must be 'A' or 'B', got {mask_type!r}")
        _check_kernel("MaskedConv2d: kernel_size", kernel_size, mask_type)
        check_count("MaskedConv2d: in_channels", in_channels, 1)
        check_count("MaskedConv2d: out_channels", out_channels, 1)
        kernel_size = int(kernel_size)
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        c = kernel_size // 2
        mask = torch.ones(kernel_size, kernel_size)
        mask[c, c + (1 if mask_type == "B" else 0):] = 0
        mask[c + 1:] = 0
        self.mask_type = mask_type
        self.register_buffer("mask", mask.expand(out_channels, in_channels, -1, -1).clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    """``x (B, C, H, W) -> logits (B, out_channels, H, W)`` with raster-order dependencies.

    A mask-A convolution, ``n_layers`` residual mask-B convolutions, and a 1×1 head.

    Args:
        in_channels, out_channels: image channels in, parameters per pixel out.
        hidden_channels: feature maps in between.
        n_layers: residual masked layers.
        kernel_size: the first layer's kernel (odd, at least 3: its mask "A" hides the centre);
            ``hidden_kernel_size`` the others' (odd, at least 1).
        context_features: size of an optional context vector, added as a per-channel bias after the
            first layer (a conditional PixelCNN); the context is ``(batch, context_features)`` (features
            flattened) with the batch of ``x``, or one row for every image.

    >>> import torch
    >>> PixelCNN(hidden_channels=8, n_layers=1)(torch.zeros(2, 1, 5, 5)).shape
    torch.Size([2, 1, 5, 5])
    """

    def __init__(self, in_channels: int = 1, hidden_channels: int = 32, n_layers: int = 4, kernel_size: int = 5,
                 hidden_kernel_size: int = 3, out_channels: int = 1, context_features: int = 0) -> None:
        super().__init__()
        for name, value, minimum in [("in_channels", in_channels, 1), ("hidden_channels", hidden_channels, 1),
                                     ("n_layers", n_layers, 0), ("out_channels", out_channels, 1),
                                     ("context_features", context_features, 0)]:
            # required sizes: None refused (a raw TypeError); context_features=None is no context
            (check_count if name == "context_features" else check_int)(f"PixelCNN: {name}", value, minimum)
        _check_kernel("PixelCNN: kernel_size", kernel_size, "A")
        _check_kernel("PixelCNN: hidden_kernel_size", hidden_kernel_size, "B")
        self.context_features = int(context_features or 0)  # None: no context, as 0
        self.conv_in = MaskedConv2d(in_channels, hidden_channels, kernel_size, "A")
        self.layers = nn.ModuleList(
            MaskedConv2d(hidden_channels, hidden_channels, hidden_kernel_size, "B") for _ in range(int(n_layers)))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden_channels, hidden_channels, 1), nn.ReLU(),
                                  nn.Conv2d(hidden_channels, out_channels, 1))
        self.context = nn.Linear(context_features, hidden_channels) if context_features else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"PixelCNN: x must be (batch, channels, height, width), got {tuple(x.shape)}")
        if x.shape[1] != self.conv_in.in_channels:
            raise ValueError(f"PixelCNN: x has {x.shape[1]} channels but the network was built with "
                             f"in_channels={self.conv_in.in_channels}; got shape {tuple(x.shape)}")
        check_context("PixelCNN", context, self.context_features, x.shape[0], broadcast=True)
        h = self.conv_in(x)
        if self.context is not None:
            h = h + self.context(context.reshape(context.shape[0], self.context_features))[:, :, None, None]
        for layer in self.layers:
            h = h + layer(F.relu(h))
        return self.head(h)
