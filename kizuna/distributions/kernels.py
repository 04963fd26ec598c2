r"""Closed forms for the training hot path, computed from parameter tensors directly.

Building a ``torch.distributions`` object per call costs Python time (argument broadcasting,
validation loops, ``Independent`` wrappers, registry dispatch) that dominates the step of a
small model. For the families a VAE step uses most, these kernels compute **the same
numbers as torch** from the parameters:

.. math::
    \log \mathcal{N}(x; \mu, \sigma^2) = -\frac{(x-\mu)^2}{2\sigma^2} - \log\sigma - \tfrac12\log 2\pi,
    \qquad \log \mathrm{Bern}(x; \ell) = -\mathrm{BCE}(\ell, x)

.. math::
    D_{KL}[\mathcal{N}(\mu_p, \sigma_p^2)\|\mathcal{N}(\mu_q, \sigma_q^2)]
    = \tfrac12\Big(r + \tfrac{(\mu_p-\mu_q)^2}{\sigma_q^2} - 1 - \log r\Big),\ r = \sigma_p^2/\sigma_q^2,
    \qquad D_{KL}[\mathcal{N}(\mu, \sigma^2)\|\mathcal{N}(0, 1)] = \tfrac12(\sigma^2 + \mu^2 - 1) - \log\sigma

(the formulas, and the draw :math:`\mu + \sigma\epsilon`, are torch's own, so values and
random streams agree). They are used by `kizuna.losses.plan` only in the plain case —
parameters from ``forward`` that all have the value's shape — and every other case, and
every error message, goes through torch.distributions. Each kernel is tested against torch
in ``tests/test_speed_paths.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import distributions as D
from torch.distributions import constraints
from torch.nn import functional as F

Tensor = torch.Tensor
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


def normal_log_prob(value: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Elementwise Normal log-density (torch's formula)."""
    return -((value - loc) ** 2) / (2 * scale**2) - scale.log() - _LOG_SQRT_2PI


def bernoulli_log_prob(value: Tensor, logits: Tensor) -> Tensor:
    """Elementwise Bernoulli log-mass from logits; values in [0, 1] give minus the cross-entropy."""
    return -F.binary_cross_entropy_with_logits(logits, value, reduction="none")


def normal_rsample(loc: Tensor, scale: Tensor) -> Tensor:
    """One reparameterised draw per entry: :math:`\\mu + \\sigma\\epsilon` (torch's random stream).

    torch fills a new contiguous tensor of ``loc``'s shape; ``randn_like`` of a contiguous ``scale``
    of that shape fills the same layout in the same order (the same numbers) with less overhead.
    """
    if scale.is_contiguous() and scale.shape == loc.shape and scale.dtype == loc.dtype:
        return loc + torch.randn_like(scale) * scale
    return loc + torch.randn(loc.shape, dtype=loc.dtype, device=loc.device) * scale


def kl_normal_normal(p_loc: Tensor, p_scale: Tensor, q_loc: Tensor, q_scale: Tensor) -> Tensor:
    """Elementwise KL between Normals (torch's formula)."""
    var_ratio = (p_scale / q_scale).pow(2)
    t1 = ((p_loc - q_loc) / q_scale).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


def kl_normal_standard(loc: Tensor, scale: Tensor) -> Tensor:
    """Elementwise KL from a Normal to the standard Normal (the same value, fewer operations)."""
    return 0.5 * (scale**2 + loc**2 - 1) - scale.log()


def sum_features(value: Tensor) -> Tensor:
    """Sum every dimension but the first (batch) one, as ``Independent`` does."""
    if value.dim() == 1:
        return value
    if value.dim() == 2:
        return value.sum(-1)
    return value.reshape(value.shape[0], -1).sum(-1)


def normal_log_prob_sum(value: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Normal log-density summed over features."""
    return sum_features(normal_log_prob(value, loc, scale))


def bernoulli_log_prob_sum(value: Tensor, logits: Tensor) -> Tensor:
    """Bernoulli log-mass summed over features; negated after the sum (exact, and one op on rows only)."""
    return -sum_features(F.binary_cross_entropy_with_logits(logits, value, reduction="none"))


# torch family -> (parameter names in argument order, elementwise kernel, kernel summed over features)
LOG_PROB: dict[type[D.Distribution], tuple[tuple[str, ...], Callable[..., Tensor], Callable[..., Tensor]]] = {
    D.Normal: (("loc", "scale"), normal_log_prob, normal_log_prob_sum),
    D.Bernoulli: (("logits",), bernoulli_log_prob, bernoulli_log_prob_sum),
}
RSAMPLE: dict[type[D.Distribution], tuple[tuple[str, ...], Callable[..., Tensor]]] = {
    D.Normal: (("loc", "scale"), normal_rsample),
}
KL: dict[tuple[type[D.Distribution], type[D.Distribution]], tuple[tuple[str, ...], Callable[..., Tensor]]] = {
    (D.Normal, D.Normal): (("loc", "scale"), kl_normal_normal),
}


def plain_args(params: dict[str, Any], names: Sequence[str]) -> list[Tensor] | None:
    """``params`` in the order of ``names`` if they are exactly these, all floating tensors of one
    non-empty shape; otherwise None (the caller then builds the torch distribution)."""
    if len(params) != len(names):
        return None
    args = [params.get(n) for n in names]
    first = args[0]
    if not isinstance(first, Tensor) or not first.is_floating_point() or first.dim() == 0 or first.numel() == 0:
        return None
    for a in args[1:]:
        if not isinstance(a, Tensor) or a.shape != first.shape or a.dtype != first.dtype:
            return None
    return args


def satisfies(constraint: constraints.Constraint, value: Any) -> bool:
    """``bool(constraint.check(value).all())``, with fewer kernel launches for common constraints.

    ``real`` holds iff the sum is not NaN (a NaN entry always makes the sum NaN; only ``inf - inf``
    can make a NaN-free sum NaN, and then the exact check decides); ``positive`` iff the minimum is
    positive; ``unit_interval`` iff min >= 0 and max <= 1 (torch's min / max propagate NaN).
    """
    if isinstance(value, Tensor) and value.is_floating_point() and value.numel() > 0:
        if constraint is constraints.real:
            total = value.sum().item()
            if total == total:
                return True
        elif constraint is constraints.positive:
            return value.min().item() > 0
        elif constraint is constraints.unit_interval:
            lo, hi = torch.aminmax(value)
            return bool(lo.item() >= 0 and hi.item() <= 1)
    return bool(constraint.check(torch.as_tensor(value)).all())


def flags(constraint: constraints.Constraint, value: Any) -> Tensor:
    """``constraint.check(value).all()`` as a tensor, without reading it (for deferred checks)."""
    return constraint.check(torch.as_tensor(value)).all()
