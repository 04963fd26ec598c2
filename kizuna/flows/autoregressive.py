r"""Autoregressive affine flows built on `kizuna.nets.MADE`: `MAF` and `IAF`.

Both are triangular affine maps whose shift :math:`\mu_i` and log-scale :math:`\alpha_i` depend on the
earlier features (in the MADE order) of the layer's *input*, so the layer's ``forward`` runs in one
network pass and its ``inverse`` needs :math:`D` sequential passes.

* `MAF` (Papamakarios et al. 2017, arXiv:1705.07057) — the density direction is parallel:

  .. math:: z_i = (x_i - \mu_i(x_{<i}))\, e^{-\alpha_i(x_{<i})}, \qquad \log|\det J| = -\textstyle\sum_i \alpha_i

  Use it with `InverseTransformedDistribution` (fast exact likelihood, slow sampling).

* `IAF` (Kingma et al. 2016, arXiv:1606.04934, eq. 10) — the sampling direction is parallel:

  .. math:: x_i = z_i\, e^{\alpha_i(z_{<i})} + \mu_i(z_{<i}), \qquad \log|\det J| = \textstyle\sum_i \alpha_i

  Use it with `TransformedDistribution`, e.g. as a VAE posterior (fast sampling and fast density
  of its own samples; the density of other points needs the slow inverse).

The networks' last layers start at zero, so a new layer is the identity. A context ``y``
(conditional flow) is fed to the MADE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kizuna._data import check_context
from kizuna.flows.base import Flow, Tensor
from kizuna.nets.made import MADE


class _AutoregressiveAffine(Flow):
    """Shared MADE bookkeeping; ``sign`` is -1 for MAF (``z = (x - mu) e^{-a}``) and +1 for IAF."""

    sign = 1.0
    row_dims = 1

    def __init__(self, in_features: int, hidden_features: Sequence[int] = (64, 64), context_features: int = 0,
                 order: Sequence[int] | Tensor | None = None) -> None:
        super().__init__(in_features)
        self.made = MADE(in_features, hidden_features, n_params=2, context_features=context_features, order=order)
        nn.init.zeros_(self.made.output.weight)
        nn.init.zeros_(self.made.output.bias)

    def _check(self, x: Tensor, what: str) -> None:
        super()._check(x, what)
        if x.dim() != 2:
            raise ValueError(f"{type(self).__name__}: {what} must be (batch, {self.in_features}), got {tuple(x.shape)}")

    def _params(self, inp: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        mu, alpha = self.made(inp, y).unbind(1)  # one backward node (a stack), not two selects
        return mu, alpha

    def _affine(self, inp: Tensor, mu: Tensor, alpha: Tensor) -> Tensor:
        """The map of the parallel direction, given its parameters."""
        if self.sign > 0:
            return inp * torch.exp(alpha) + mu
        return (inp - mu) * torch.exp(-alpha)

    def _unaffine(self, out: Tensor, mu: Tensor, alpha: Tensor) -> Tensor:
        if self.sign > 0:
            return (out - mu) * torch.exp(-alpha)
        return out * torch.exp(alpha) + mu

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        check_context(type(self).__name__, y, self.made.context_features, x.shape[0], broadcast=True)
        mu, alpha = self._params(x, y)
        return self._affine(x, mu, alpha), self.sign * alpha.sum(1)

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        check_context(type(self).__name__, y, self.made.context_features, z.shape[0], broadcast=True)
        # pass k fixes the inputs of degree k+1: their parameters depend only on inputs already fixed
        x = torch.zeros_like(z)
        degrees = self.made.degrees
        alpha = z.new_zeros(z.shape)
        for k in range(self.in_features):
            mu, alpha = self._params(x, y)
            x = torch.where(degrees == k + 1, self._unaffine(z, mu, alpha), x)
        return x, -self.sign * alpha.sum(1)


class MAF(_AutoregressiveAffine):
    """Masked autoregressive flow layer (module docstring).

    Args:
        in_features: :math:`D`.
        hidden_features: the MADE's hidden sizes.
        context_features: size of the context ``y`` (0: unconditional).
        order: the autoregressive order (default ``0..D-1``; alternate with ``Reverse`` between layers).

    >>> import torch
    >>> f = MAF(3, hidden_features=[8])
    >>> x = torch.randn(4, 3)
    >>> torch.allclose(f(x), x)   # a new layer is the identity
    True
    """

    sign = -1.0


class IAF(_AutoregressiveAffine):
    """Inverse autoregressive flow layer (module docstring); arguments as in `MAF`."""

    sign = 1.0
