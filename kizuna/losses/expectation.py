r"""Expectations under a distribution: `Expectation` and `REINFORCE`.

.. math:: \mathbb{E}_{p(z|x)}[f(x, z)] \approx \frac{1}{S}\sum_{s=1}^S f(x, z_s),\quad z_s \sim p(z|x)

Gradients: factors of ``p`` with a reparameterised sampler are differentiated through the
draw (pathwise); the others get the score-function term
:math:`\mathbb{E}[f\,\nabla \log p]` through the surrogate
:math:`f + \bar f\,(\log p - \overline{\log p})` (bars: detached), whose value equals
:math:`f` and whose gradient is the unbiased estimator (Williams 1992). Over a marginal
:math:`p(x) = \int p(x, z)\,dz` the joint's factors are scored at the joint draw that the marginal's draw came from
(:math:`\nabla \log p(x, z)`, an unbiased score for :math:`\mathbb{E}_{p(x)}[f]`) while ``f`` sees ``x`` only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from kizuna._text import symbol
from kizuna.distributions.base import (
    Distribution,
    batch_size_of,
    repeat_batch,
    repeat_rows_lazily,
    single_factors,
)
from kizuna.distributions.marginal import repeat_hidden
from kizuna.formula.expr import EvalContext, Loss, Tensor, as_loss


def draw(p: Distribution, ctx: EvalContext, n: int, reparam: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """``n`` draws of ``p`` per row given the context's values (its parameters computed once per row).

    Returns (the context's values repeated ``n`` times along the batch with the draws, the draws);
    without gradients a large value is repeated lazily (`RepeatedRows`: scored without the copy);
    the draws are also recorded in ``ctx.samples`` (shape ``(n, batch, ...)`` when ``n > 1``). With
    the evaluation option ``sample_mean=True`` the draws are the means; ``batch_n`` sets the rows of
    a distribution without batched inputs.
    """
    names = p.input_var
    given = ctx.values
    if any(map(given.__contains__, p._var)):  # earlier values of the drawn variables are not its inputs
        own, inputs = set(p._var), set(names)
        given = {k: v for k, v in given.items() if k in inputs or k not in own}
    if not all(map(given.__contains__, names)):
        p._require(given, names)  # names what is missing
    options = ctx.options
    batch_n = options.get("batch_n") if options else None
    if batch_n is None:
        batch_n = batch_size_of(given, names)
        if batch_n is None:  # (not `or`: 0 rows given are the batch, not a missing one)
            batch_n = batch_size_of(given)
    repeated = given if n == 1 else {k: repeat_rows_lazily(v, n) for k, v in given.items()}
    if options and options.get("sample_mean"):
        means = p._mean_values(given, batch_n)
        new = {k: repeat_batch(v, n) for k, v in means.items()}
        if n > 1:  # a marginal's hidden means, recorded with its means, go with their copies
            repeat_hidden(means, new, n)
    elif n == 1:  # what `_sample_n` does for one draw, without its call
        new = p._sample(given, batch_n, reparam)
    else:
        new = p._sample_n(given, repeated, n, batch_n, reparam)
    if n == 1:
        ctx.samples.update(new)
    else:
        for k, v in new.items():
            ctx.samples[k] = v.reshape(n, v.shape[0] // n, *v.shape[1:])
    return {**repeated, **new}, new


def _per_row(score: Tensor, f: Tensor) -> Tensor:
    """A per-row score-function term shaped to multiply ``f``: one row's term over all of that row's entries when ``f``
    has per-feature dimensions (it broadcast along the last dimension instead, pairing entry j with row j). An ``f``
    that is one number (already reduced over the rows and draws, ``E_q[f.mean()]``) is a function of every draw
    together: its score term is the sum of every draw's (broadcast per row, it was 1 / (rows x draws) of the
    gradient, and the value came back one per row)."""
    if f.dim() == 0:
        return score.sum()
    extra = f.dim() - score.dim()
    return score.reshape(*score.shape, *([1] * extra)) if extra > 0 and score.dim() > 0 else score


def _is_number(value: Any) -> bool:
    """A number that ``float()`` takes (a Python or numpy number, a one-element array or tensor), not a string or a
    bool."""
    if isinstance(value, (str, bytes, bool)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def average(value: Tensor, n: int) -> Tensor:
    """Mean over the ``n`` sample copies of a per-row value of batch ``n*B``."""
    if n == 1 or value.dim() == 0:
        return value
    return value.reshape(n, value.shape[0] // n, *value.shape[1:]).mean(0)


def fixed_draws(f: Distribution) -> bool:
    """Whether the draws of ``f`` depend on no trainable parameter: it has no conditioning variables and
    none of its parameters requires grad (constants are buffers), so its score-function term is zero."""
    if f._cond_var:
        return False
    if not f._parameters and not f._modules:  # no parameters at all (constants are buffers): skip the walk
        return True
    return not any(q.requires_grad for q in f.parameters())


def score_log_prob(p: Distribution, values: dict[str, Any], pathwise: bool) -> Tensor | None:
    """Log-density of the factors of ``p`` that need the score function (None if none). With
    ``pathwise``, reparameterised factors and factors with `fixed_draws` (e.g. a uniform draw of a
    noise level) need none."""
    if pathwise and p.has_reparam:  # every factor reparameterised: none needs the score function
        return None
    total = None
    for f in single_factors(p):
        if pathwise and (f.has_reparam or fixed_draws(f)):
            continue
        lp = f.get_log_prob(values)
        total = lp if total is None else total + lp
    return total


class Expectation(Loss):
    """:math:`\\mathbb{E}_{p}[f]`, see the module docstring.

    Args:
        p: the distribution to sample from.
        f: the loss to average (numbers are allowed).
        sample_shape: draws per row, e.g. ``(10,)``; their mean is returned.

    >>> import torch
    >>> from kizuna.distributions import Normal
    >>> from kizuna.losses import LogProb
    >>> q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    >>> p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    >>> recon = Expectation(q, LogProb(p))
    >>> print(recon)
    E_{q(z|x)}[log p(x|z)]
    >>> recon.eval({"x": torch.zeros(3)}, return_dict=True)[1]["z"].shape
    torch.Size([3])
    """

    def __init__(self, p: Distribution, f: Loss | float | Tensor, sample_shape: Sequence[int] = ()) -> None:
        if not isinstance(p, Distribution):
            raise TypeError(f"Expectation: the distribution to draw from must be a kizuna distribution, got "
                            f"{type(p).__name__}")
        f = as_loss(f)
        super().__init__(p.input_var + [v for v in f.input_var if v not in p.var])
        self.p, self.f = p, f
        if isinstance(sample_shape, numbers.Integral) and not isinstance(sample_shape, bool):
            sample_shape = (int(sample_shape),)  # one number of draws (torch.Size(3) is a TypeError)
        try:
            self.sample_shape = torch.Size(sample_shape)
        except TypeError:
            raise TypeError(f"{type(self).__name__}: sample_shape must be a number of draws or a shape (a tuple of "
                            f"positive sizes), got {sample_shape!r}") from None
        if any(s < 1 for s in self.sample_shape):
            raise ValueError(f"{type(self).__name__}: sample_shape must hold positive sizes, got "
                             f"{tuple(self.sample_shape)}")

    def subterms(self) -> list[Loss]:
        return [self.f]

    def _own_distributions(self) -> list[Distribution]:
        return [self.p]

    def _value(self, ctx: EvalContext) -> Tensor:
        n = math.prod(self.sample_shape)
        values, _ = draw(self.p, ctx, n, reparam=True)
        f = ctx.child(values).value(self.f)
        logp = score_log_prob(self.p, values, pathwise=True)
        if logp is not None:
            f = f + f.detach() * _per_row(logp - logp.detach(), f)
        return f if n == 1 else average(f, n)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["expect"].format(symbol(self.p, fmt), self.f._render(fmt))


class REINFORCE(Expectation):
    """:math:`\\mathbb{E}_{p}[f]` with the score-function gradient for *every* factor of ``p``.

    .. math:: \\nabla \\mathbb{E}_p[f] = \\mathbb{E}_p[(f - b)\\nabla\\log p] + \\mathbb{E}_p[\\nabla f]

    Args:
        baseline: ``b``: a number, or ``"loo"`` for the leave-one-out mean of the other
            draws of the same row (needs ``sample_shape`` with more than one draw).
    """

    def __init__(self, p: Distribution, f: Loss | float | Tensor, sample_shape: Sequence[int] = (),
                 baseline: float | str | None = None) -> None:
        super().__init__(p, f, sample_shape)
        if not (baseline is None or (isinstance(baseline, str) and baseline == "loo")
                or _is_number(baseline) and math.isfinite(float(baseline))):  # (NaN made the value NaN)
            raise ValueError(f"REINFORCE: baseline must be a finite number, 'loo' or None, got {baseline!r}")
        if baseline == "loo" and math.prod(self.sample_shape) < 2:
            raise ValueError("REINFORCE(baseline='loo') needs sample_shape with at least two draws")
        self.baseline = baseline

    def _value(self, ctx: EvalContext) -> Tensor:
        n = math.prod(self.sample_shape)
        values, _ = draw(self.p, ctx, n, reparam=False)
        f = ctx.child(values).value(self.f)
        logp = score_log_prob(self.p, values, pathwise=False)
        fd = f.detach()
        if self.baseline == "loo":
            if fd.dim() == 0:
                raise ValueError(f"{self}: baseline='loo' needs f per row (one value per draw), got a scalar; take "
                                 "the mean outside: REINFORCE(q, f_per_row, ...).mean()")
            rows = fd.reshape(n, -1)
            b = ((rows.sum(0, keepdim=True) - rows) / (n - 1)).reshape(fd.shape)
        else:
            b = float(self.baseline or 0.0)
        return average(f + (fd - b) * _per_row(logp - logp.detach(), f), n)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["reinforce"].format(symbol(self.p, fmt), self.f._render(fmt))
