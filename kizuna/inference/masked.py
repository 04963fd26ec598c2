r"""The joint density restricted to observed entries: :math:`\log p(x_{obs}, z)`.

For a decoder that factorises over the entries of :math:`x` (Bernoulli pixels, a diagonal
Normal, Poisson counts, ...) the missing entries integrate out of the joint:

.. math::

    p(x_{obs}, z) = \int p(x|z)\,p(z)\,dx_{mis} = p(z) \prod_{d \in obs} p(x_d|z),
    \qquad \log p(x_{obs}, z) = \log p(z) + \sum_d m_d \log p(x_d|z)

with the mask :math:`m_d = 1` on observed entries. A decoder whose log-density does not
split into one term per entry (a full-covariance Normal, a one-hot Categorical, a mixture)
cannot be restricted this way, and `masked_log_joint` says so; nor can an autoregressive one
(`MADEBernoulli`, `PixelCNNBernoulli`, `PixelCNNCategorical`), whose term per entry
:math:`\log p(x_d|x_{<d}, z)` depends on the entries before it, missing ones included. Factors of
the joint whose variables are absent altogether (a whole missing modality) integrate to one and are left out.

The values at missing entries have no effect: before the decoder scores the row they are replaced
by a point of its support (`placeholder`: the decoder's mean, rounded for a discrete family such as
Poisson counts or Bernoulli 0/1, and 0 where the mean is not finite or not available), so a NaN gap or a
fractional filled-in count neither fails the decoder's support check nor leaks NaN into gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from kizuna.distributions.autoregressive import MADEBernoulli, PixelCNNBernoulli
from kizuna.distributions.base import Distribution, flat_rows
from kizuna.distributions.replace import ReplaceVarDistribution
from kizuna.distributions.vq import PixelCNNCategorical

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


def raise_for_autoregressive(decoder: Distribution, who: str) -> None:
    r"""An error where ``decoder`` (renamed or not) is autoregressive: its per-entry terms
    :math:`\log p(x_d|x_{<d}, \cdot)` have the data's shape but depend on the missing entries, so their sum over the
    observed entries is not :math:`\log p(x_{obs}|\cdot)` (it was returned without a word)."""
    base = decoder
    while isinstance(base, ReplaceVarDistribution):
        base = base.p
    if isinstance(base, (MADEBernoulli, PixelCNNBernoulli, PixelCNNCategorical)):
        v, given = decoder.var[0], ", ".join(decoder.cond_var)
        renamed = f" (a renamed {base.distribution_name})" if base is not decoder else ""
        reason = (f"it is autoregressive{renamed}: the term of each entry, log p({v}_d | {v}_<d"
                  f"{', ' + given if given else ''}), depends on the entries before it, missing ones included")
        raise ValueError(_not_factorised(decoder, who, reason))


def masked_log_prob(decoder: Distribution, values: Mapping[str, Any], mask: Tensor, who: str,
                    fill: Tensor | None = None) -> Tensor:
    r""":math:`\sum_d m_d \log p(x_d|\cdot)` per row, for a decoder that factorises over entries.

    Missing entries (mask False) are scored at `placeholder` (``fill``: the decoder's mean, if already
    computed) and their terms dropped, so their values have no effect.
    """
    raise_for_autoregressive(decoder, who)
    var = decoder.var[0]
    x = values[var]
    filler = None
    if isinstance(x, Tensor) and x.shape == mask.shape and not bool(mask.all()):
        filler = placeholder(decoder, values, x, fill)
        values = {**values, var: torch.where(mask, x, filler)}
    try:
        per_entry = decoder.get_log_prob(values, sum_features=False)
    except (ValueError, NotImplementedError) as err:
        raise_for_observed(decoder, values, var, filler, who)  # (before, with entries missing, every error was called
        # a decoder that does not factorise)
        raise ValueError(_not_factorised(decoder, who, str(err))) from err
    if per_entry.shape != x.shape:
        shapes = f"its per-entry log-density has shape {tuple(per_entry.shape)}, {var} has {tuple(x.shape)}"
        raise ValueError(_not_factorised(decoder, who, shapes))
    per_entry = torch.where(mask, per_entry, torch.zeros_like(per_entry))
    return flat_rows(per_entry).sum(1)  # (one value per row for scalar data, (N,): flatten(1) raised)


def raise_for_observed(decoder: Distribution, values: Mapping[str, Any], var: str, filler: Tensor | None,
                       who: str | None = None) -> None:
    """The decoder's own error (a 2 under a Bernoulli) where the observed values of ``var`` fall outside its support:
    ``values`` holds them with the missing entries at ``filler`` (`placeholder`; None: none missing). Nothing where
    the values score, or where the placeholder alone does not (outside a support of whole rows, such as zeros under a
    one-hot decoder: the decoder's matter, not the data's), or where the decoder has no density to check.

    ``who`` given (the entries of a row are scored apart, as `masked_log_prob` does): a decoder whose per-entry
    log-density at the placeholder alone lacks the shape of ``var`` is named as one that does not factorise, in
    ``who``'s words, before the data is blamed (a Dirichlet's mean lies on the simplex, but the observed entries of a
    simplex row beside it do not, and valid data was called outside the support). ``who`` None: the rows are scored
    whole (`impute_gibbs` with every row observed or missing in full), so the placeholder fills whole rows."""
    try:
        decoder.get_log_prob(values)
    except NotImplementedError:
        return
    except ValueError as err:
        if filler is not None:
            try:
                at_filler = decoder.get_log_prob({**values, var: filler}, sum_features=False)
            except (ValueError, NotImplementedError):
                return
            if who is not None and at_filler.shape != filler.shape:
                shapes = (f"its per-entry log-density has shape {tuple(at_filler.shape)}, {var} has "
                          f"{tuple(filler.shape)}")
                raise ValueError(_not_factorised(decoder, who, shapes)) from err
        raise


def placeholder(decoder: Distribution, values: Mapping[str, Any], x: Tensor, fill: Tensor | None = None) -> Tensor:
    """A value in the decoder's support for every entry of ``x``, scored in place of the missing ones.

    The decoder's mean given ``values`` (or ``fill``), rounded where the family is discrete (torch's
    support ``is_discrete``: Poisson, Binomial, Geometric counts, Bernoulli 0/1; a rounded mean of a count
    lies in its support, e.g. round(n p) in [0, n]), with 0 where the mean is not finite or the decoder has
    no closed-form mean. No gradient flows through it.
    """
    with torch.no_grad():
        if fill is None:
            try:
                fill = decoder.sample_mean(values)
            except NotImplementedError:
                fill = None
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        try:
            fill = torch.zeros(x.shape, dtype=dtype, device=x.device) if fill is None else \
                torch.broadcast_to(fill.detach().to(device=x.device, dtype=dtype), x.shape)
        except RuntimeError:  # a mean of another shape (the decoder's own error follows when it scores x)
            fill = torch.zeros(x.shape, dtype=dtype, device=x.device)
        support = getattr(getattr(decoder, "torch_class", None), "support", None)
        if getattr(support, "is_discrete", False):
            fill = fill.round()
        return torch.where(torch.isfinite(fill), fill, torch.zeros_like(fill))


def _not_factorised(decoder: Distribution, who: str, reason: str) -> str:
    return (
        f"{who}: the decoder {decoder.prob_text} ({decoder.distribution_name}) does not factorise over the entries "
        f"of {decoder.var[0]}, so its log-density cannot be restricted to the observed entries ({reason}); "
        "use a decoder with one independent factor per entry (Bernoulli, Normal, Poisson, ...)"
    )


def masked_log_joint(p_joint: Distribution, values: Mapping[str, Any], var: str, mask: Tensor, who: str,
                     fill: Tensor | None = None) -> Tensor:
    r""":math:`\log p(x_{obs}, z, \dots)` per row: the decoder of ``var`` masked, other factors whole.

    Factors none of whose variables appear in ``values`` are marginalised out (left out). ``fill``: the
    decoder's mean given ``values``, where the caller has it (see `masked_log_prob`).
    """
    total: Tensor | None = None
    for f in p_joint.factors():
        if var in f.var:
            term = masked_log_prob(decoder_of(p_joint, var, who), values, mask, who, fill)
        elif not any(v in values for v in f.var):
            continue
        else:
            term = f.get_log_prob(values)
        total = term if total is None else total + term
    if total is None:
        raise ValueError(f"{who}: {p_joint.prob_text} has no factor over the given values")
    return total
