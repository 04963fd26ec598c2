r"""The joint density restricted to observed entries: :math:`\log p(x_{obs}, z)`.

For a decoder that factorises over the entries of :math:`x` (Bernoulli pixels, a diagonal
Normal, Poisson counts, ...) the missing entries integrate out of the joint:

.. math::

    p(x_{obs}, z) = \int p(x|z)\,p(z)\,dx_{mis} = p(z) \prod_{d \in obs} p(x_d|z),
    \qquad \log p(x_{obs}, z) = \log p(z) + \sum_d m_d \log p(x_d|z)

with the mask :math:`m_d = 1` on observed entries. A decoder whose log-density does not
split into one term per entry (a full-covariance Normal, a one-hot Categorical, a mixture)
cannot be restricted this way, and `masked_log_joint` says so. Factors of the joint whose
variables are absent altogether (a whole missing modality) integrate to one and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from kizuna.distributions.base import Distribution

Tensor = torch.Tensor


def decoder_of(p_joint: Distribution, var: str, who: str) -> Distribution:
    """The factor of ``p_joint`` that defines ``var`` (it must define ``var`` alone)."""
    owners = [f for f in p_joint.factors() if var in f.var]
    if not owners:
        raise ValueError(f"{who}: no factor of {p_joint.prob_text} defines {var}")
    f = owners[0]
    if f.var != [var]:
        raise ValueError(
            f"{who}: the factor {f.prob_text} defines {', '.join(f.var)} together; the masked variable {var} "
            "needs a factor of its own"
        )
    return f


def masked_log_prob(decoder: Distribution, values: Mapping[str, Any], mask: Tensor, who: str) -> Tensor:
    r""":math:`\sum_d m_d \log p(x_d|\cdot)` per row, for a decoder that factorises over entries."""
    var = decoder.var[0]
    x = values[var]
    try:
        per_entry = decoder.get_log_prob(values, sum_features=False)
    except (ValueError, NotImplementedError) as err:
        decoder.get_log_prob(values)  # a problem with the values themselves raises here, in its own words
        raise ValueError(_not_factorised(decoder, who, str(err))) from err
    if per_entry.shape != x.shape:
        shapes = f"its per-entry log-density has shape {tuple(per_entry.shape)}, {var} has {tuple(x.shape)}"
        raise ValueError(_not_factorised(decoder, who, shapes))
    per_entry = torch.where(mask, per_entry, torch.zeros_like(per_entry))
    return per_entry.flatten(1).sum(1)


def _not_factorised(decoder: Distribution, who: str, reason: str) -> str:
    return (
        f"{who}: the decoder {decoder.prob_text} ({decoder.distribution_name}) does not factorise over the entries "
        f"of {decoder.var[0]}, so its log-density cannot be restricted to the observed entries ({reason}); "
        "use a decoder with one independent factor per entry (Bernoulli, Normal, Poisson, ...)"
    )


def masked_log_joint(p_joint: Distribution, values: Mapping[str, Any], var: str, mask: Tensor, who: str) -> Tensor:
    r""":math:`\log p(x_{obs}, z, \dots)` per row: the decoder of ``var`` masked, other factors whole.

    Factors none of whose variables appear in ``values`` are marginalised out (left out).
    """
    total: Tensor | None = None
    for f in p_joint.factors():
        if var in f.var:
            term = masked_log_prob(decoder_of(p_joint, var, who), values, mask, who)
        elif not any(v in values for v in f.var):
            continue
        else:
            term = f.get_log_prob(values)
        total = term if total is None else total + term
    if total is None:
        raise ValueError(f"{who}: {p_joint.prob_text} has no factor over the given values")
    return total
