r"""Monotone rational-quadratic splines (Durkan et al. 2019, arXiv:1906.04032; Gregory & Delbourgo 1982).

On :math:`[-B, B]` the map is piecewise: in bin :math:`k`, with knots :math:`(x_k, y_k)`, width
:math:`w_k`, height :math:`h_k`, slope :math:`s_k = h_k / w_k`, knot derivatives :math:`\delta_k,
\delta_{k+1}` and :math:`\xi = (x - x_k)/w_k \in [0, 1]`,

.. math::
    g(x) = y_k + \frac{h_k\,[s_k \xi^2 + \delta_k \xi(1-\xi)]}{s_k + (\delta_{k+1} + \delta_k - 2 s_k)\,\xi(1-\xi)},
    \qquad
    g'(x) = \frac{s_k^2\,[\delta_{k+1}\xi^2 + 2 s_k \xi(1-\xi) + \delta_k (1-\xi)^2]}
                 {[s_k + (\delta_{k+1} + \delta_k - 2 s_k)\,\xi(1-\xi)]^2}.

Outside :math:`[-B, B]` it is the identity; the boundary derivatives are 1, so the map is
continuously differentiable. The inverse solves the quadratic in :math:`\xi` (eq. 29 of the paper)
with the root taken without cancellation, :math:`\xi = 2c / (-b - \sqrt{b^2 - 4ac})` for :math:`b \ge 0` and
:math:`(-b + \sqrt{b^2 - 4ac}) / 2a` for :math:`b < 0` (:math:`-c/b` where :math:`a = 0`), clamped to :math:`[0, 1]`
(in float32 the root of a wide, flat bin can fall just outside it, which made the log-slope NaN).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from kizuna._data import check_non_negative, check_positive

Tensor = torch.Tensor


# the smallest bin (a share of the interval) and slope the splines keep by default
MIN_BIN = 1e-3

def _knots(unnormalised: Tensor, bound: float, minimum: float) -> tuple[Tensor, Tensor]:
    """Knot positions ``(..., K+1)`` from ``-bound`` to ``bound`` and bin sizes ``(..., K)``."""
    k = unnormalised.shape[-1]
    sizes = minimum + (1.0 - minimum * k) * torch.softmax(unnormalised, -1)
    inner = torch.cumsum(sizes[..., :-1], -1) * (2.0 * bound) - bound
    end = inner.new_full((*inner.shape[:-1], 1), bound)  # the ends exactly, as constants
    knots = torch.cat([-end, inner, end], -1)
    return knots, knots[..., 1:] - knots[..., :-1]


def rational_quadratic_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool = False,
    bound: float = 3.0,
    min_bin: float = MIN_BIN,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Apply the spline (or its inverse) elementwise; returns ``(out, log|d out / d x|)``.

    Args:
        x: values, any shape ``S``.
        widths, heights: unnormalised bin widths and heights, shape ``S + (K,)`` (softmax-normalised).
        derivatives: unconstrained interior knot derivatives, shape ``S + (K-1,)``; zeros give
            derivative 1, so all-zero parameters give the identity.
        inverse: apply :math:`g^{-1}` instead of :math:`g`.
        bound: :math:`B`, the half-width of the spline's interval, a finite number > 0.
        min_bin, min_derivative: lower limits keeping bins and slopes away from zero: ``min_bin`` a share
            of the interval, ``0 <= min_bin <= 1 / K``; ``0 <= min_derivative < 1`` (below the boundary
            derivative 1, so that zero parameters give the identity).
    """
    k = widths.shape[-1]
    # numbers only (no tensor synchronisation): a min_bin above 1/K left the other bins negative sizes (a non-monotone
    # map, NaN log-slopes), a bound <= 0 gave NaN or the identity, a min_derivative >= 1 a raw math domain error
    check_positive("rational_quadratic_spline: bound", bound)
    check_non_negative("rational_quadratic_spline: min_bin", min_bin)
    if min_bin * k > 1:  # (1/K itself: K equal bins)
        raise ValueError(f"rational_quadratic_spline: min_bin must be at most 1/K = 1/{k} (K = {k} bins, each "
                         f"at least min_bin of the interval), got {min_bin!r}")
    check_non_negative("rational_quadratic_spline: min_derivative", min_derivative)
    if not min_derivative < 1:
        raise ValueError(f"rational_quadratic_spline: min_derivative must be < 1 (the derivative at the interval's "
                         f"ends), got {min_derivative!r}")
    if heights.shape[-1] != k or derivatives.shape[-1] != k - 1:
        raise ValueError(
            f"rational_quadratic_spline: need K widths, K heights and K-1 derivatives, got "
            f"{widths.shape[-1]}, {heights.shape[-1]}, {derivatives.shape[-1]}"
        )
    cw, w = _knots(widths, bound, min_bin)
    ch, h = _knots(heights, bound, min_bin)
    shift = math.log(math.expm1(1.0 - min_derivative))  # softplus(0 + shift) + min = 1
    d = F.pad(min_derivative + F.softplus(derivatives + shift), (1, 1), value=1.0)

    inside = (x > -bound) & (x < bound)  # at ±B itself the identity: g(±B) = ±B, g'(±B) = 1 (the bin formula rounded)
    xc = x.clamp(-bound, bound)
    knots = ch if inverse else cw
    idx = (xc.unsqueeze(-1) >= knots[..., 1:k]).sum(-1, keepdim=True)

    def pick(t: Tensor, offset: int = 0) -> Tensor:
        return t.gather(-1, idx + offset).squeeze(-1)

    xk, wk, yk, hk, dk, dk1 = pick(cw), pick(w), pick(ch), pick(h), pick(d), pick(d, 1)
    sk = hk / wk
    curvature = dk1 + dk - 2.0 * sk
    if inverse:
        delta = xc - yk
        a = hk * (sk - dk) + delta * curvature
        b = hk * dk - delta * curvature
        c = -sk * delta
        # clamped: in float32 the root can land just outside its bin (past 1 for a wide, flat bin), and
        # then ξ(1-ξ) < 0 can make the log-slope's argument negative (a NaN log-determinant)
        # the root without cancellation on either sign of b: 2c / (-b - √D) for b >= 0, its equal (-b + √D) / 2a for
        # b < 0 (a wide, flat bin between steep end derivatives; the first form lost three digits in float32 there),
        # -c / b where a = 0 (the quadratic is then linear); each division's unused side made safe (no NaN gradient)
        sq = torch.sqrt((b * b - 4.0 * a * c).clamp_min(0.0))
        pos = b >= 0
        linear = a == 0
        den_pos = torch.where(pos, -b - sq, torch.ones_like(b))
        den_neg = torch.where(pos | linear, torch.ones_like(a), 2.0 * a)
        den_lin = torch.where(~pos & linear, b, torch.ones_like(b))
        xi = torch.where(pos, (2.0 * c) / den_pos,
                         torch.where(linear, -c / den_lin, (-b + sq) / den_neg)).clamp(0.0, 1.0)
    else:
        xi = (xc - xk) / wk
    rest = 1 - xi
    xi_rest = xi * rest  # ξ(1-ξ), shared by g, g' and their denominator
    den = sk + curvature * xi_rest
    if inverse:
        out = (xk + xi * wk).clamp(-bound, bound)  # xk + wk can round one ulp past the last knot
    else:
        out = yk + hk * (sk * xi * xi + dk * xi_rest) / den
    log_grad = 2 * torch.log(sk) + torch.log(dk1 * xi * xi + 2 * sk * xi_rest + dk * rest * rest) - 2 * torch.log(den)
    if inverse:
        log_grad = -log_grad
    return torch.where(inside, out, x), torch.where(inside, log_grad, 0.0)
