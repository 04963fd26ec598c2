r"""`ResNet`: the convolutional scale/translation network of RealNVP's image couplings.

The interface is Pixyz's ``pixyz.layers.ResNet`` (its RealNVP and Glow examples build their
`kizuna.flows.AffineCoupling` networks from it). The network follows Dinh et al. (2017,
arXiv:1605.08803, section 4.1): a concatenated ReLU of the normalised input, weight-normalised
convolutions (Salimans & Kingma 2016, arXiv:1602.07868), pre-activation residual blocks
(He et al. 2016, arXiv:1603.05027) and a 1×1 skip connection out of every block:

.. math:: h_0 = W_{in} * \mathrm{ReLU}([\hat x, -\hat x]),\quad h_k = h_{k-1} + B_k(h_{k-1}),\quad
          y = W_{out} * \mathrm{ReLU}\big(\mathrm{BN}(S_0 h_0 + \textstyle\sum_k S_k h_k)\big),

with :math:`\hat x = \mathrm{BN}(x)` (doubled when ``double_after_norm``) and :math:`S_k` 1×1 convolutions.

Pixyz's checkpoints load as they are: Pixyz wraps each convolution as ``.conv`` under torch's older ``weight_norm``,
so its keys are ``X.conv.weight_g``, ``X.conv.weight_v``, ``X.conv.bias`` where kizuna's (torch's parametrization)
are ``X.parametrizations.weight.original0``, ``X.parametrizations.weight.original1``, ``X.bias`` (the same tensors:
:math:`g` of shape ``(out, 1, 1, 1)``, :math:`V`, the bias); `ResNet` and `ResidualBlock` read the former as the
latter (`_read_pixyz_convs`). The rest of the layout (the batch norms, the blocks) is Pixyz's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from kizuna._data import check_int

# Pixyz's ``WNConv2d`` (``self.conv = nn.utils.weight_norm(nn.Conv2d(...))``): its key endings -> kizuna's
_PIXYZ_CONV_KEYS = {".conv.weight_g": ".parametrizations.weight.original0",
                    ".conv.weight_v": ".parametrizations.weight.original1", ".conv.bias": ".bias"}


def _read_pixyz_convs(module: nn.Module, state_dict: dict, prefix: str) -> None:
    """In a state dict being loaded into ``module`` at ``prefix``, rename each weight-normalised convolution's tensors
    saved under Pixyz's names (module docstring) to kizuna's: only for a path where ``module`` has one of its own
    weight-normalised convolutions (a parametrised ``nn.Conv2d``; a user's plain child named ``conv``, or one
    normalised by torch's legacy ``weight_norm``, keeps its keys: its own checkpoints loaded as Pixyz's and failed),
    saved with both of Pixyz's weight-norm tensors and none of kizuna's names; any other mix is left to torch's
    missing / unexpected key errors."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for theirs in _PIXYZ_CONV_KEYS:
            if key.endswith(theirs):
                conv = key[: -len(theirs)]
                try:
                    own_conv = module.get_submodule(conv[len(prefix):])
                except AttributeError:
                    break
                ours = isinstance(own_conv, nn.Conv2d) and hasattr(own_conv, "parametrizations")
                pixyz = conv + ".conv.weight_g" in state_dict and conv + ".conv.weight_v" in state_dict
                if ours and pixyz and not any(conv + own in state_dict for own in _PIXYZ_CONV_KEYS.values()):
                    for pixyz_end, own in _PIXYZ_CONV_KEYS.items():
                        if conv + pixyz_end in state_dict:
                            state_dict[conv + own] = state_dict.pop(conv + pixyz_end)
                break


class _ReadsPixyzConvs(nn.Module):
    """Loads Pixyz's names of its weight-normalised convolutions' tensors (`_read_pixyz_convs`)."""

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        _read_pixyz_convs(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _wn_conv(in_channels: int, out_channels: int, kernel_size: int, padding: int, bias: bool = True) -> nn.Module:
    """A weight-normalised 2-D convolution: :math:`W = g\\,V/\\|V\\|` per output channel."""
    return weight_norm(nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias))


class ResidualBlock(_ReadsPixyzConvs):
    """Pre-activation block :math:`x + W_2 * \\mathrm{ReLU}(\\mathrm{BN}(W_1 * \\mathrm{ReLU}(\\mathrm{BN}(x))))`
    with 3×3 weight-normalised convolutions that keep the channel count and the spatial size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_norm = nn.BatchNorm2d(channels)
        self.in_conv = _wn_conv(channels, channels, 3, 1, bias=False)
        self.out_norm = nn.BatchNorm2d(channels)
        self.out_conv = _wn_conv(channels, channels, 3, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.in_conv(F.relu(self.in_norm(x)))
        return x + self.out_conv(F.relu(self.out_norm(h)))


class ResNet(_ReadsPixyzConvs):
    """Residual network for the scale and translation of an image coupling (module docstring).

    Args:
        in_channels: channels of the input.
        mid_channels: channels of the intermediate layers.
        out_channels: channels of the output (e.g. twice the transformed channels: scale and shift).
        num_blocks: number of residual blocks.
        kernel_size: side of the first convolution's filters.
        padding: padding of the first convolution (``(kernel_size - 1) // 2`` keeps the size).
        double_after_norm: multiply the normalised input by 2 (RealNVP's first coupling of a scale).

    >>> net = ResNet(3, 8, 6, num_blocks=2, kernel_size=3, padding=1, double_after_norm=True)
    >>> net(torch.randn(4, 3, 16, 16)).shape
    torch.Size([4, 6, 16, 16])
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, num_blocks: int,
                 kernel_size: int, padding: int, double_after_norm: bool) -> None:
        super().__init__()
        # (2.5 channels were truncated, then "divisible by groups"; 1.5 blocks and None failed with TypeErrors)
        for name, value, least in (("in_channels", in_channels, 1), ("mid_channels", mid_channels, 1),
                                   ("out_channels", out_channels, 1), ("kernel_size", kernel_size, 1),
                                   ("num_blocks", num_blocks, 0), ("padding", padding, 0)):
            check_int(f"ResNet: {name}", value, least)
        self.double_after_norm = double_after_norm
        self.in_norm = nn.BatchNorm2d(in_channels)
        self.in_conv = _wn_conv(2 * in_channels, mid_channels, kernel_size, padding)
        self.in_skip = _wn_conv(mid_channels, mid_channels, 1, 0)
        self.blocks = nn.ModuleList([ResidualBlock(mid_channels) for _ in range(num_blocks)])
        self.skips = nn.ModuleList([_wn_conv(mid_channels, mid_channels, 1, 0) for _ in range(num_blocks)])
        self.out_norm = nn.BatchNorm2d(mid_channels)
        self.out_conv = _wn_conv(mid_channels, out_channels, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W) -> (N, out_channels, H', W')`` (the same H, W with size-keeping padding)."""
        if x.dim() != 4 or x.shape[1] != self.in_norm.num_features:  # (a BatchNorm "running_mean" error)
            raise ValueError(f"ResNet expects images (N, {self.in_norm.num_features}, H, W), got shape "
                             f"{tuple(x.shape)}")
        h = self.in_norm(x)
        if self.double_after_norm:
            h = 2.0 * h
        h = self.in_conv(F.relu(torch.cat((h, -h), dim=1)))
        skip = self.in_skip(h)
        for block, to_skip in zip(self.blocks, self.skips):
            h = block(h)
            skip = skip + to_skip(h)
        return self.out_conv(F.relu(self.out_norm(skip)))
