r"""Fixed permutations of the features (channels): `Permutation`, `Shuffle`, `Reverse`.

:math:`z_i = x_{\pi(i)}` along dimension 1 of ``(B, C)`` or ``(B, C, H, W)``; a permutation matrix
has :math:`|\det| = 1`, so :math:`\log|\det J| = 0`. Stacked between coupling or autoregressive
layers they let every feature be transformed (RealNVP, arXiv:1605.08803; MAF, arXiv:1705.07057).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from kizuna._data import check_int
from kizuna.flows.base import Flow, Tensor


class Permutation(Flow):
    """:math:`z_i = x_{\\pi(i)}` for ``permute_indices`` :math:`\\pi`, one permutation of 0..n-1 as
    integers (module docstring).

    The indices are buffers, so they travel with ``state_dict``.

    >>> import torch
    >>> f = Permutation([2, 0, 1])
    >>> f(torch.tensor([[10.0, 20.0, 30.0]]))
    tensor([[30., 10., 20.]])
    """

    volume_preserving = True

    def __init__(self, permute_indices: Sequence[int] | Tensor) -> None:
        given = torch.as_tensor(permute_indices)
        # as MADE's order: floats were truncated ([0.7, 1.2, 2.9] was [0, 1, 2]), booleans taken as 0/1 and a 2-D
        # array flattened into one permutation, each silently (an empty list is a float tensor: named below)
        if given.numel() and (given.dtype == torch.bool or given.is_floating_point() or given.is_complex()):
            shown = given.tolist() if isinstance(permute_indices, Tensor) else permute_indices
            raise ValueError(f"Permutation: permute_indices must be integers (a permutation of 0..n-1), got "
                             f"{shown} ({given.dtype})")
        if given.dim() != 1:
            raise ValueError(f"Permutation: permute_indices must be one permutation of 0..n-1 (1-D), got shape "
                             f"{tuple(given.shape)}")
        indices = given.long()
        n = indices.numel()
        if n == 0 or not torch.equal(indices.sort().values, torch.arange(n)):
            raise ValueError(f"Permutation: permute_indices must be a permutation of 0..n-1, got {indices.tolist()}")
        super().__init__(n)
        self.register_buffer("permute_indices", indices)
        self.register_buffer("inv_permute_indices", torch.argsort(indices))

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.permute_indices), x.new_zeros(x.shape[0])

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return z.index_select(1, self.inv_permute_indices), z.new_zeros(z.shape[0])


class Shuffle(Permutation):
    """A random permutation of ``in_features`` (from ``seed`` if given, else torch's global generator)."""

    def __init__(self, in_features: int, seed: int | None = None) -> None:
        # checked here: -1 and 2.5 were raw torch errors from randperm
        check_int(f"{type(self).__name__}: in_features", in_features, 1)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        super().__init__(torch.randperm(operator.index(in_features), generator=generator))


class Reverse(Permutation):
    """Reverses the order of the ``in_features`` features."""

    def __init__(self, in_features: int) -> None:
        # checked here: True built a one-feature layer, 2.5 failed as "not a permutation"
        check_int(f"{type(self).__name__}: in_features", in_features, 1)
        n = operator.index(in_features)
        super().__init__(torch.arange(n - 1, -1, -1))

    # flip is the same map as the index_select of the reversed indices, and its backward is a flip too (an
    # index_select's backward fills a zeros tensor by index_add)
    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return z.flip(1), z.new_zeros(z.shape[0])
