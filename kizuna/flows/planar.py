r"""`PlanarFlow`: a single-hidden-unit residual map (Rezende & Mohamed 2015, arXiv:1505.05770).

.. math::
    f(z) = z + \hat u \tanh(w^\top z + b), \qquad
    \log\left|\det J_f(z)\right| = \log\left|1 + \hat u^\top w\,(1 - \tanh^2(w^\top z + b))\right|

with :math:`\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2` and
:math:`m(a) = -1 + \log(1 + e^a)`, which keeps :math:`w^\top \hat u > -1`, so :math:`f` is invertible
(appendix A of the paper).

The inverse has no closed form but reduces to one scalar equation per row: with
:math:`a = w^\top z`, :math:`w^\top f(z) = a + w^\top \hat u \tanh(a + b)` is strictly increasing in
:math:`a` and lies within :math:`|w^\top \hat u|` of :math:`a`, so bisection on that interval finds
:math:`a`, and :math:`z = f(z) - \hat u \tanh(a + b)`. One Newton step taken with gradients on gives
the root its exact implicit-function gradient.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kizuna.flows.base import Flow, Tensor

_BISECTION_STEPS = 64  # halves an interval of width 2|w.u| below float64 resolution


class PlanarFlow(Flow):
    """``PlanarFlow(in_features)`` on inputs of shape ``(batch, in_features)`` (module docstring).

    Args:
        in_features: the dimension of ``z``.
        constraint_u: enforce :math:`w^\\top \\hat u > -1` (default); without it ``u`` is used as
            given and invertibility is the caller's responsibility (Pixyz's default, ``constraint_u=False``;
            Pixyz's own constraint divides by :math:`\\|w\\|` where the paper divides by :math:`\\|w\\|^2`, which
            does not keep :math:`w^\\top \\hat u > -1`). The parameters start as Pixyz's: ``w``, ``b``, ``u`` drawn
            in that order from :math:`U(\\pm 1/\\sqrt D)`.

    >>> import torch
    >>> f = PlanarFlow(2)
    >>> z = torch.randn(4, 2, dtype=torch.float64)
    >>> f = f.double()
    >>> torch.allclose(f.inverse(f(z)), z)
    True
    """

    row_dims = 1

    def __init__(self, in_features: int, constraint_u: bool = True) -> None:
        super().__init__(in_features)
        # Pixyz's start: w, b and u drawn in this order from U(-1/sqrt(D), 1/sqrt(D)), so that a seeded program
        # starts from Pixyz's numbers (with constraint_u=False it then computes Pixyz's flow)
        bound = 1.0 / in_features ** 0.5
        self.w = nn.Parameter(torch.empty(in_features).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.empty(()).uniform_(-bound, bound))
        self.u = nn.Parameter(torch.empty(in_features).uniform_(-bound, bound))
        self.constraint_u = constraint_u

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        """Pixyz's checkpoints load too: Pixyz keeps ``w`` and ``u`` of shape (1, D) and ``b`` of shape (1,), kizuna
        (D,) and (); a tensor of Pixyz's shape is read as kizuna's (the same numbers), any other shape is left to
        torch's size-mismatch error."""
        for name in ("w", "b", "u"):
            key, own = prefix + name, self._parameters[name]
            value = state_dict.get(key)
            if isinstance(value, Tensor) and own is not None and value.shape == (1, *own.shape):
                state_dict[key] = value.reshape(own.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def u_hat(self) -> Tensor:
        """:math:`\\hat u`, the constrained ``u`` (module docstring)."""
        if not self.constraint_u:
            return self.u
        wu = self.w @ self.u
        # w = 0 (a zero initialisation) makes the map the shift u tanh(b), invertible as it is: the correction's
        # 0 / 0 is taken as 0 (it gave NaN), by a floor on the denominator that leaves every other w unchanged
        ww = (self.w @ self.w).clamp_min(torch.finfo(self.w.dtype).tiny)
        return self.u + (F.softplus(wu) - 1.0 - wu) * self.w / ww

    def _check(self, x: Tensor, what: str) -> None:
        super()._check(x, what)
        if x.dim() != 2:
            raise ValueError(f"PlanarFlow: {what} must have shape (batch, {self.in_features}), got {tuple(x.shape)}")

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        u = self.u_hat()
        h = torch.tanh(x @ self.w + self.b)
        z = x + h.unsqueeze(-1) * u
        logdet = torch.log(torch.abs(1.0 + (1.0 - h ** 2) * (self.w @ u)))
        return z, logdet

    def _solve(self, target: Tensor, wu: Tensor) -> Tensor:
        """The root :math:`a` of :math:`a + w^\\top\\hat u \\tanh(a + b) = ` ``target`` (per row)."""
        with torch.no_grad():
            t, c, b = target.detach(), wu.detach(), self.b.detach()
            lo, hi = t - c.abs(), t + c.abs()
            for _ in range(_BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                above = mid + c * torch.tanh(mid + b) > t
                hi = torch.where(above, mid, hi)
                lo = torch.where(above, lo, mid)
            root = 0.5 * (lo + hi)
        # a Newton step from the (detached) root: same value, exact implicit gradient
        h = torch.tanh(root + self.b)
        g = root + wu * h - target
        return root - g / (1.0 + wu * (1.0 - h ** 2))

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        u = self.u_hat()
        wu = self.w @ u
        a = self._solve(z @ self.w, wu)
        h = torch.tanh(a + self.b)
        x = z - h.unsqueeze(-1) * u
        logdet = -torch.log(torch.abs(1.0 + (1.0 - h ** 2) * wu))
        return x, logdet
