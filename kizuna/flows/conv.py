r"""`ChannelConv`: the invertible 1×1 convolution of Glow (Kingma & Dhariwal 2018, arXiv:1807.03039).

Every pixel's channel vector is multiplied by one :math:`C \times C` matrix :math:`W`:

.. math:: z_{:,h,w} = W x_{:,h,w}, \qquad \log|\det J| = H W \log|\det W|.

With ``decomposed=True`` the matrix is kept in the LU form of the paper (sec. 3.2),
:math:`W = P L (U + \mathrm{diag}(\mathrm{sign}\cdot e^{\ell}))` with a fixed permutation :math:`P`, unit
lower-triangular :math:`L` and strictly upper-triangular :math:`U`, so
:math:`\log|\det W| = \sum \ell` costs :math:`O(C)`. On vectors ``(B, C)`` it is an invertible
linear layer (:math:`H = W = 1`).

In float16 or bfloat16 (a model moved to ``.half()``) :math:`\log|\det W|` and :math:`W^{-1}` are computed in
float32 and cast back (torch's ``slogdet`` and ``inv`` take no 16-bit matrices); the mixing itself runs in the
layer's dtype.

A Pixyz checkpoint loads as it is: Pixyz's decomposed layer keeps the same tensors under other names
(``p``, ``sign_s``, ``l``, ``u``, ``log_s``; see `ChannelConv._load_from_state_dict`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kizuna._data import computing_dtype
from kizuna.flows.base import Flow, Tensor


class ChannelConv(Flow):
    """Invertible 1×1 convolution, initialised with a random rotation (module docstring).

    >>> import torch
    >>> f = ChannelConv(3, decomposed=True).double()
    >>> x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    >>> torch.allclose(f.inverse(f(x)), x)
    True
    """

    def __init__(self, in_channels: int, decomposed: bool = False) -> None:
        super().__init__(in_channels)
        self.decomposed = decomposed
        rotation = torch.linalg.qr(torch.randn(in_channels, in_channels))[0]
        if not decomposed:
            self.weight = nn.Parameter(rotation)
            return
        p, lower, upper = torch.linalg.lu(rotation)
        diag = upper.diagonal()
        self.register_buffer("permutation", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(in_channels, in_channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_diag = nn.Parameter(torch.log(diag.abs()))

    # Pixyz's names of the decomposed layer's tensors (same shapes and meaning): Pixyz's name -> kizuna's
    _PIXYZ_NAMES = {"p": "permutation", "sign_s": "sign", "l": "lower", "u": "upper", "log_s": "log_diag"}

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Pixyz's checkpoints of ``ChannelConv(C, decomposed=True)`` load too: Pixyz keeps :math:`P`, the signs,
        :math:`L`, :math:`U` and :math:`\\ell` as ``p``, ``sign_s``, ``l``, ``u``, ``log_s`` (the same shapes and
        the same masking: only the strictly lower part of ``l`` and the strictly upper part of ``u`` are read), and
        its fixed mask is not saved. A state with Pixyz's names and none of kizuna's is read under kizuna's
        names; any other mix is left to torch's missing / unexpected key errors."""
        if self.decomposed and not any(prefix + own in state_dict for own in self._PIXYZ_NAMES.values()) \
                and any(prefix + theirs in state_dict for theirs in self._PIXYZ_NAMES):
            for theirs, own in self._PIXYZ_NAMES.items():
                if prefix + theirs in state_dict:
                    state_dict[prefix + own] = state_dict.pop(prefix + theirs)
            state_dict.setdefault(prefix + "lower_mask", self.lower_mask)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def matrix(self) -> Tensor:
        """:math:`W`."""
        if not self.decomposed:
            return self.weight
        eye = torch.eye(self.in_features, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_diag.exp())
        return self.permutation @ lower @ upper

    def _logdet_w(self) -> Tensor:
        if self.decomposed:
            return self.log_diag.sum()
        w = self.weight  # (16-bit: in float32, module docstring)
        return torch.linalg.slogdet(w.to(computing_dtype(w.dtype)))[1].to(w.dtype)

    def _inverse_matrix(self) -> Tensor:
        """:math:`W^{-1}`, in float32 for a 16-bit layer (module docstring)."""
        w = self.matrix()
        return torch.linalg.inv(w.to(computing_dtype(w.dtype))).to(w.dtype)

    def _check(self, x: Tensor, what: str) -> None:
        super()._check(x, what)
        if x.dim() not in (2, 4):
            raise ValueError(f"ChannelConv: {what} must be (B, C) or (B, C, H, W), got {tuple(x.shape)}")

    @staticmethod
    def _mix(matrix: Tensor, x: Tensor) -> Tensor:
        return torch.einsum("ij,bj...->bi...", matrix, x)

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        pixels = math.prod(x.shape[2:])  # (x[0, 0] failed on an empty batch)
        return self._mix(self.matrix(), x), (self._logdet_w() * pixels).expand(x.shape[0])

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        pixels = math.prod(z.shape[2:])
        return self._mix(self._inverse_matrix(), z), (-self._logdet_w() * pixels).expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"in_channels={self.in_features}, decomposed={self.decomposed}"
