r"""`Squeeze` and `Unsqueeze`: trade spatial resolution for channels (RealNVP, arXiv:1605.08803, sec. 3.6);
`Flatten`: images to vectors.

`Squeeze` turns each :math:`2 \times 2` block of every channel into four channels,
:math:`(C, H, W) \to (4C, H/2, W/2)`; `Unsqueeze` is its inverse. Both only move entries, so
:math:`\log|\det J| = 0`.
"""

from __future__ import annotations

import math

from kizuna.flows.base import Flow, RowShape, Tensor


def squeeze2x2(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)``; channel ``4c + 2i + j`` holds pixel ``(i, j)`` of each block."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2x2(z: Tensor) -> Tensor:
    """The inverse of `squeeze2x2`: ``(B, 4C, H, W) -> (B, C, 2H, 2W)``."""
    b, c, h, w = z.shape
    z = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c // 4, 2 * h, 2 * w)


def _scaled(size: int | None, times: int = 1, over: int = 1) -> int | None:
    """``size * times // over``, None for a size not known (`Flow.row_shape`)."""
    return None if size is None else size * times // over


class Squeeze(Flow):
    """:math:`(C, H, W) \\to (4C, H/2, W/2)` (module docstring).

    >>> import torch
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> Squeeze()(x)[0, :, 0, 0]   # the top-left 2x2 block became four channels
    tensor([0., 1., 4., 5.])
    """

    volume_preserving = changes_shape = True
    row_dims = 3
    _squeezes = True  # (`Unsqueeze`: the other way round)

    def __init__(self) -> None:
        super().__init__(None)

    def row_shape(self, shape: RowShape, inverse: bool = False) -> RowShape:
        """See `Flow.row_shape`: ``(C, H, W)`` to ``(4C, H/2, W/2)`` (the other way for the inverse); None for rows
        that are not images (the layer refuses them)."""
        shape = super().row_shape(shape, inverse)
        if shape is None or len(shape) != 3:
            return None
        c, h, w = shape
        if self._squeezes != inverse:
            return _scaled(c, times=4), _scaled(h, over=2), _scaled(w, over=2)
        return _scaled(c, over=4), _scaled(h, times=2), _scaled(w, times=2)

    def _check(self, x: Tensor, what: str) -> None:
        super()._check(x, what)
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__}: {what} must be (B, C, H, W), got {tuple(x.shape)}")

    def _squeeze(self, x: Tensor, what: str) -> Tensor:
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"{type(self).__name__}: {what} needs even height and width, got {tuple(x.shape)}")
        return squeeze2x2(x)

    def _unsqueeze(self, z: Tensor, what: str) -> Tensor:
        if z.shape[1] % 4:
            raise ValueError(f"{type(self).__name__}: {what} needs a multiple of 4 channels, got {tuple(z.shape)}")
        return unsqueeze2x2(z)

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._squeeze(x, "x"), x.new_zeros(x.shape[0])

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._unsqueeze(z, "z"), z.new_zeros(z.shape[0])


class Unsqueeze(Squeeze):
    """:math:`(C, H, W) \\to (C/4, 2H, 2W)`, the inverse of `Squeeze`."""

    _squeezes = False

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._unsqueeze(x, "x"), x.new_zeros(x.shape[0])

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._squeeze(z, "z"), z.new_zeros(z.shape[0])


class Flatten(Flow):
    """:math:`(B, *s) \\to (B, \\prod s)`, log-determinant 0 (Pixyz's ``Flatten``).

    Args:
        in_size: the shape ``s`` of one input without the batch dimension. When not given, ``forward``
            records it (as Pixyz does), so ``inverse`` works after a forward pass.

    >>> import torch
    >>> f = Flatten((2, 3))
    >>> f(torch.ones(4, 2, 3)).shape, f.inverse(torch.ones(4, 6)).shape
    (torch.Size([4, 6]), torch.Size([4, 2, 3]))
    """

    volume_preserving = changes_shape = True

    def __init__(self, in_size: tuple[int, ...] | None = None) -> None:
        super().__init__(None)
        self.in_size = None if in_size is None else tuple(in_size)

    def row_shape(self, shape: RowShape, inverse: bool = False) -> RowShape:
        """See `Flow.row_shape`: ``s`` to ``(prod s,)``; the inverse gives ``in_size`` (None while it is unknown)."""
        if inverse:
            return self.in_size
        if shape is None and self.in_size is not None:
            shape = self.in_size
        return (None if shape is None or any(s is None for s in shape) else math.prod(shape),)  # type: ignore[misc]

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.in_size is not None and tuple(x.shape[1:]) != self.in_size:
            raise ValueError(f"Flatten: x has shape {tuple(x.shape)}, expected (batch, {self.in_size})")
        self.in_size = tuple(x.shape[1:])
        # (the size given: reshape(0, -1) failed on an empty batch)
        return x.reshape(x.shape[0], math.prod(x.shape[1:])), x.new_zeros(x.shape[0])

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.in_size is None:
            raise ValueError("Flatten: the input shape is unknown; give in_size or run forward first")
        size = math.prod(self.in_size)
        if z.shape[1:].numel() != size:
            raise ValueError(f"Flatten: z has shape {tuple(z.shape)}, {z.shape[1:].numel()} values per row; the "
                             f"inverse needs (batch, {size}) to give (batch, {', '.join(map(str, self.in_size))})")
        return z.reshape(z.shape[0], *self.in_size), z.new_zeros(z.shape[0])
