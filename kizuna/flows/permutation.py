r"""Fixed permutations of the features (channels): `Permutation`, `Shuffle`, `Reverse`.

:math:`z_i = x_{\pi(i)}` along dimension 1 of ``(B, C)`` or ``(B, C, H, W)``; a permutation matrix
has :math:`|\det| = 1`, so :math:`\log|\det J| = 0`. Stacked between coupling or autoregressive
layers they let every feature be transformed (RealNVP, arXiv:1605.08803; MAF, arXiv:1705.07057).
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Sequence

import torch
from torch import nn

from kizuna._data import check_int
from kizuna.flows.base import Flow, Tensor


def _strict_load() -> bool:
    """Whether the ``nn.Module.load_state_dict`` call under way is strict. torch passes ``strict=True`` to every
    layer's ``_load_from_state_dict`` whatever its caller gave (it applies ``strict`` to the keys afterwards), so it is
    read from that call's frame; True where there is none (a layer loaded some other way)."""
    code = nn.Module.load_state_dict.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return bool(frame.f_locals.get("strict", True))
        frame = frame.f_back
    return True


class Permutation(Flow):
    """:math:`z_i = x_{\\pi(i)}` for ``permute_indices`` :math:`\\pi`, one permutation of 0..n-1 as
    integers (module docstring).

    The indices are buffers, so they travel with ``state_dict``. Pixyz keeps them outside its state (numpy
    arrays), so its checkpoints have no entry for them: a `Permutation` or `Reverse` fills them from the
    permutation it was built with when loading such a state; a `Shuffle` refuses (see `_load_from_state_dict`).

    >>> import torch
    >>> f = Permutation([2, 0, 1])
    >>> f(torch.tensor([[10.0, 20.0, 30.0]]))
    tensor([[30., 10., 20.]])
    """

    volume_preserving = True
    _built_at_random = False  # (`Shuffle`: its own permutation is not the one a Pixyz checkpoint was trained with)

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

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        """Pixyz's checkpoints load too: Pixyz keeps ``permute_indices`` and ``inv_permute_indices`` as numpy
        arrays, outside its ``state_dict``. A state with neither is read with the permutation this layer was built
        with, which for `Permutation` and `Reverse` is Pixyz's (the same indices, given or fixed by the size). A
        `Shuffle` drew its own at random, not the one the Pixyz model was trained with: a strict load refuses, naming
        the remedy; a ``strict=False`` one leaves it as it is, reported among the missing keys as torch does."""
        keys = [prefix + "permute_indices", prefix + "inv_permute_indices"]
        if not any(k in state_dict for k in keys):
            if not self._built_at_random:
                state_dict[keys[0]], state_dict[keys[1]] = self.permute_indices, self.inv_permute_indices
            elif _strict_load():
                n = self.permute_indices.numel()
                error_msgs.append(
                    f"{prefix}permute_indices: the state has no permutation for {type(self).__name__}({n}) (a Pixyz "
                    f"checkpoint: Pixyz keeps Shuffle's permutation outside its state_dict, drawn from numpy's "
                    f"random stream), and this layer's own random permutation {self.permute_indices.tolist()} is "
                    f"not the one the model was trained with: build Permutation(indices) with the permutation the "
                    f"Pixyz model used (its layer's permute_indices) in place of Shuffle({n}), then load")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.permute_indices), x.new_zeros(x.shape[0])

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return z.index_select(1, self.inv_permute_indices), z.new_zeros(z.shape[0])


class Shuffle(Permutation):
    """A random permutation of ``in_features`` (from ``seed`` if given, else torch's global generator).

    Pixyz's ``Shuffle`` draws from numpy's global stream (``np.random.permutation``), so the same seeds give
    another permutation here; and Pixyz's checkpoints do not hold it (a strict load refuses, see
    `Permutation._load_from_state_dict`). To port a Pixyz model, build ``Permutation(indices)`` with the
    permutation it used.
    """

    _built_at_random = True

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
