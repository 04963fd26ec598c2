r"""`UNet`: a small time-conditioned U-Net for the noise (or score, or velocity) network of image diffusion models.

The layout of Ho et al.'s DDPM network (2020, arXiv:2006.11239, appendix B), scaled down for a CPU: a sinusoidal
embedding of the step :math:`t` through a two-layer MLP; at each resolution ``blocks`` residual blocks
(GroupNorm, SiLU, 3×3 convolution, the embedding added per channel through SiLU and a linear map, GroupNorm,
SiLU, dropout, 3×3 convolution, a 1×1 convolution on the skip path where the width changes), the activations
kept for the way up; a stride-2
convolution between resolutions down and a nearest-neighbour upsampling with a 3×3 convolution up; two blocks at
the lowest resolution; on the way up each block reads the kept activation concatenated to its input; the output
convolution starts at zero, so an untrained network predicts zero.

It takes images ``(N, C, H, W)`` or flat rows ``(N, C·H·W)`` (as the MLP noise networks of `examples/diffusion.py`
do; then ``image_shape`` gives ``(C, H, W)``), with ``t`` a number per row (shape ``(N,)`` or ``(N, 1)``; one
number, a 0-D tensor or shape ``(1,)`` or ``(1, 1)``, is every row's; finite, checked while validating), and returns
the input's shape (with ``out_channels`` channels: e.g. twice ``C`` for ε and the learned variances' ``v``, flat rows
then twice as wide).
``H`` and ``W`` must be divisible by ``2 ** (len(channel_mults) - 1)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from kizuna._data import check_count, check_int
from kizuna.distributions.torch_dist import validation_enabled


def _real(value: object) -> bool:
    """A finite real number (not a bool, not a string; a one-element tensor too)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = float(value)
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _groups(channels: int) -> int:
    """The largest of 8, 4, 2, 1 dividing ``channels`` (GroupNorm's groups)."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class _Block(nn.Module):
    """Residual block :math:`x + f(x, e)` with the time embedding ``e`` added after the first convolution, through
    SiLU and a linear map per block (Ho et al.'s ``dense(nonlinearity(temb))``)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(F.silu(e))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """:math:`\\epsilon_\\theta(x_t, t)` as a U-Net (see the module docstring).

    Args:
        image_shape: ``(C, H, W)`` of one image.
        channels: width of the first resolution.
        channel_mults: width of each resolution as a multiple of ``channels``, from the input's down.
        blocks: residual blocks per resolution.
        dropout: dropout inside the blocks, a probability in ``[0, 1)``.
        n_freq: frequencies of the sinusoidal embedding of ``t`` (its ``sin`` and ``cos`` make ``2 * n_freq``
            inputs to the embedding MLP), at frequencies ``max_period ** (-k / n_freq)`` for ``k < n_freq``
            (improved-diffusion's form; Ho et al. divide by ``n_freq - 1``, reaching ``1 / max_period``); the
            embedding is computed in at least float32 and cast to the network's dtype after (as improved-diffusion's).
        out_channels: channels of the output (default: the input's ``C``).
        time_scale: ``t`` is multiplied by it before the embedding: the default suits steps ``1..T`` of a DDPM;
            a time in ``[0, 1]`` (flow matching) wants about ``1000``.

    >>> net = UNet((1, 8, 8), channels=16, channel_mults=(1, 2))
    >>> net(torch.randn(5, 64), torch.randint(1, 1001, (5,))).shape
    torch.Size([5, 64])
    """

    def __init__(self, image_shape: Sequence[int], channels: int = 32, channel_mults: Sequence[int] = (1, 2),
                 blocks: int = 1, dropout: float = 0.0, n_freq: int = 32, max_period: float = 10000.0,
                 out_channels: int | None = None, time_scale: float = 1.0) -> None:
        super().__init__()
        if len(tuple(image_shape)) != 3:
            raise ValueError(f"UNet: image_shape must be (channels, height, width), got {tuple(image_shape)}")
        for i, size in enumerate(image_shape):  # (8.5 was taken as 8)
            check_int(f"UNet: image_shape[{i}]", size, 1)
        shape = tuple(int(s) for s in image_shape)
        # (n_freq=0 built a network that ignores t; 2.5 channels or out_channels=0 failed with raw torch errors)
        for what, value in (("channels", channels), ("blocks", blocks), ("n_freq", n_freq),
                            *((f"channel_mults[{i}]", m) for i, m in enumerate(channel_mults))):
            check_int(f"UNet: {what}", value, 1)
        if out_channels is not None:
            check_count("UNet: out_channels", out_channels, 1)
        if not (_real(max_period) and max_period > 1):
            raise ValueError(f"UNet: max_period must be a finite number > 1, got {max_period!r}")
        if not _real(time_scale):  # (NaN made every output NaN)
            raise ValueError(f"UNet: time_scale must be a finite number, got {time_scale!r}")
        # (NaN passed torch's check at build and failed at the first training forward; 1 zeroes every block's branch)
        if not (_real(dropout) and 0 <= dropout < 1):
            raise ValueError(f"UNet: dropout must be a number in [0, 1), got {dropout!r}")
        dropout = float(dropout)
        mults = [int(m) for m in channel_mults]
        if not mults or min(mults) < 1 or channels < 1 or blocks < 1:
            raise ValueError(f"UNet: channels, every channel_mults entry and blocks must be positive, got "
                             f"channels={channels}, channel_mults={tuple(channel_mults)}, blocks={blocks}")
        factor = 2 ** (len(mults) - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(f"UNet: an image of {shape[1]}×{shape[2]} cannot be halved {len(mults) - 1} time(s); "
                             f"height and width must be divisible by {factor} (use fewer channel_mults)")
        self.image_shape, self.time_scale = shape, float(time_scale)
        self.n_freq, self.max_period = int(n_freq), float(max_period)
        emb_dim = 4 * channels
        self.embed = nn.Sequential(nn.Linear(2 * n_freq, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(shape[0], channels, 3, padding=1)
        widths = [channels * m for m in mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        kept, width = [channels], channels
        for level, w in enumerate(widths):
            for _ in range(blocks):
                self.down.append(_Block(width, w, emb_dim, dropout))
                width = w
                kept.append(width)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                kept.append(width)
        self.middle = nn.ModuleList([_Block(width, width, emb_dim, dropout), _Block(width, width, emb_dim, dropout)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(blocks + 1):
                self.up.append(_Block(width + kept.pop(), w, emb_dim, dropout))
                width = w
            if level > 0:
                self.upsample.append(nn.Conv2d(width, width, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(width), width)
        self.out = nn.Conv2d(width, shape[0] if out_channels is None else int(out_channels), 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._blocks, self._levels = blocks, len(widths)

    def frequencies(self, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
        """The embedding's frequencies ``max_period ** (-k / n_freq)``, computed in ``dtype`` (a buffer cast with the
        network to bfloat16 held them rounded)."""
        return torch.exp(-math.log(self.max_period) * torch.arange(self.n_freq, dtype=dtype, device=device)
                         / self.n_freq)

    @property
    def freq(self) -> torch.Tensor:
        """`frequencies` in the precision of the embedding's angle (at least float32), on the network's device."""
        weight = self.stem.weight
        return self.frequencies(torch.promote_types(weight.dtype, torch.float32), weight.device)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.dim() == 2
        if flat:
            if x.shape[1] != math.prod(self.image_shape):
                raise ValueError(f"UNet: rows of {x.shape[1]} values, but image_shape {self.image_shape} has "
                                 f"{math.prod(self.image_shape)}")
            h = x.reshape(x.shape[0], *self.image_shape)
        elif x.dim() == 4 and tuple(x.shape[1:]) == self.image_shape:
            h = x
        else:
            raise ValueError(f"UNet: x must be (N, {', '.join(map(str, self.image_shape))}) or flat rows, "
                             f"got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)  # a Python number is one step for every row
        n = x.shape[0]
        # one number (a 0-D tensor or shape (1,)) or one per row ((N,) or (N, 1)); (2, 2) for 4 rows was taken
        if not (t.dim() == 0 or (t.dim() in (1, 2) and t.shape[0] in (1, n) and t.numel() == t.shape[0])):
            raise ValueError(f"UNet: t must be one number or one per row ({n}), got shape {tuple(t.shape)}; give "
                             f"shape (), (1,), (1, 1), ({n},) or ({n}, 1)")
        # (NaN: all NaN out); while validating only, as the distributions check values (a check reads t back from
        # the device: a synchronisation per call on a GPU)
        if t.is_floating_point() and t.device.type != "meta" and validation_enabled() and not torch.isfinite(t).all():
            raise ValueError("UNet: t has a NaN or infinite step; give finite steps")
        if t.dim() == 0:
            t = t.expand(n)
        # the angle in at least float32, cast after (improved-diffusion's and diffusers' way): in bfloat16 the steps
        # 512..1023 were rounded to multiples of 4 before the sinusoid, and in float16 the angle was off by 0.4 rad
        dtype = torch.promote_types(x.dtype, torch.float32)
        angle = (t.to(dtype).reshape(-1, 1) * self.time_scale) * self.frequencies(dtype, x.device)
        e = self.embed(torch.cat([angle.sin(), angle.cos()], 1).to(self.embed[0].weight.dtype))
        h = self.stem(h)
        kept = [h]
        blocks, downs = iter(self.down), iter(self.downsample)
        for level in range(self._levels):
            for _ in range(self._blocks):
                h = next(blocks)(h, e)
                kept.append(h)
            if level < self._levels - 1:
                h = next(downs)(h)
                kept.append(h)
        for block in self.middle:
            h = block(h, e)
        ups, upsamples = iter(self.up), iter(self.upsample)
        for level in reversed(range(self._levels)):
            for _ in range(self._blocks + 1):
                h = next(ups)(torch.cat([h, kept.pop()], 1), e)
            if level > 0:
                h = next(upsamples)(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.out(F.silu(self.out_norm(h)))
        return out.flatten(1) if flat else out
