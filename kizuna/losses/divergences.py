r"""`KullbackLeibler`: :math:`D_{KL}[p\|q] = \mathbb{E}_p[\log p - \log q]`.

Analytic through ``torch.distributions.kl_divergence`` when torch registers a formula for
the two families; Monte Carlo otherwise. ``.method`` says which.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from torch import distributions as D

from kizuna._data import one_number
from kizuna._text import symbol
from kizuna.distributions.base import Distribution, require_distributions
from kizuna.formula.expr import EvalContext, Loss, Tensor
from kizuna.formula.log_prob import LogProb
from kizuna.losses.expectation import Expectation


def with_row(value: Tensor) -> Tensor:
    """Give a per-row value the batch dimension unbatched (constant) parameters leave out."""
    return value if value.dim() > 0 else value.unsqueeze(0)


def monte_carlo_after_all(loss: Any, ctx: EvalContext, err: NotImplementedError, refuse: bool) -> Tensor:
    """A closed-form term (``loss.p`` against ``loss.q``) whose pair torch's registry matched by a general rule that
    then cannot compute it: its Monte-Carlo estimate ``loss._mc`` from now on (a property of the pair, not of the
    values), or, with ``refuse`` (the closed form was demanded), an error naming the pair."""
    if refuse:
        raise ValueError(f"{loss}: torch has no closed form for {loss.p.distribution_name} against "
                         f"{loss.q.distribution_name} after all ({err}); use analytic=None") from None
    loss.method = "monte_carlo"
    return ctx.value(loss._mc)


def analytic_kl_available(p: Distribution, q: Distribution) -> bool:
    """Whether torch's KL registry has a closed form for the families of ``p`` and ``q``
    (`Distribution.closed_form_family`)."""
    fp, fq = p.closed_form_family, q.closed_form_family
    if fp is None or fq is None:
        return False
    return D.kl._dispatch_kl(fp, fq) is not NotImplemented


def analytic_option(analytic: bool | None, analytical: bool | None, owner: str) -> bool | None:
    """``analytic``, or Pixyz's spelling ``analytical`` of the same option (a program ported from Pixyz passes
    ``analytical=``); both given and different is an error."""
    if analytical is None:
        return analytic
    if analytic is not None and bool(analytic) != bool(analytical):
        raise ValueError(f"{owner}: analytic={analytic} and analytical={analytical} disagree (they are one option)")
    return bool(analytical)


def kl_dim(dim: Any) -> int | tuple[int, ...] | None:
    """`KullbackLeibler`'s ``dim`` as Pixyz reads it (``if self.dim:``): a falsy one (None, False, 0, an empty list,
    a 0-d tensor or array holding 0) is the default, every feature dimension summed, one value per row (a sum over the
    batch here made a ported program's loss another number, silently); otherwise an integer, or a sequence of them, a
    0-d integer tensor or array being its number. Anything else (1.5, "1", True) is a TypeError naming ``dim``."""
    def integer(value: Any) -> int:
        number = one_number(value)
        if isinstance(number, bool) or not isinstance(number, numbers.Integral):
            raise TypeError(f"KullbackLeibler: dim must be an integer or a sequence of integers (the dimensions of "
                            f"the per-feature KL to sum over), got {dim!r}")
        return int(number)

    if dim is None or dim is False:
        return None
    if isinstance(dim, Sequence) and not isinstance(dim, str):
        return tuple(integer(d) for d in dim) or None
    return integer(dim) or None


class KullbackLeibler(Loss):
    """:math:`D_{KL}[p\\|q]` per batch row (see the module docstring).

    >>> import torch
    >>> from kizuna.distributions import Normal, StudentT
    >>> q = Normal(var=["z"], cond_var=["m"], loc="m", scale=1.0, name="q")
    >>> prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
    >>> kl = KullbackLeibler(q, prior)
    >>> print(kl, kl.method)
    KL[q(z|m)||p_{prior}(z)] analytic
    >>> kl.eval({"m": torch.tensor([0.0, 2.0])})  # m^2 / 2
    tensor([0., 2.])
    >>> KullbackLeibler(q, StudentT(var=["z"], df=3.0, loc=0.0, scale=1.0)).method
    'monte_carlo'

    Args:
        p, q: distributions over the same variables.
        analytic: ``None`` picks analytic when available; ``True`` demands it; ``False``
            forces Monte Carlo (``analytical=``, Pixyz's name for it, is accepted too).
        sample_shape: draws per row for the Monte-Carlo estimate.
        dim: as in Pixyz, the dimensions of the per-feature (analytic) KL to sum over;
            ``None`` sums every feature dimension, giving one value per row. As in Pixyz (whose ``if self.dim:``
            reads them so), ``0``, ``False`` and an empty list mean ``None``: the batch dimension is never summed here
            (sum over rows with the algebra, ``kl.sum()``). A 0-d integer tensor or array is its number (`kl_dim`).
    """

    def __init__(self, p: Distribution, q: Distribution, analytic: bool | None = None,
                 sample_shape: Sequence[int] = (), dim: int | Sequence[int] | None = None, *,
                 analytical: bool | None = None) -> None:
        require_distributions("KullbackLeibler", p=p, q=q)
        analytic = analytic_option(analytic, analytical, "KullbackLeibler")
        if sorted(p.var) != sorted(q.var):
            raise ValueError(f"KL[{p.prob_text}||{q.prob_text}] needs both over the same variables: {p.var} vs {q.var}")
        fp, fq = p.features_shape, q.features_shape
        if fp and fq and fp != fq:
            raise ValueError(f"KL[{p.prob_text}||{q.prob_text}]: {p.prob_text} has features_shape {tuple(fp)} but "
                             f"{q.prob_text} has {tuple(fq)}")
        available = analytic_kl_available(p, q)
        if analytic and not available:
            raise ValueError(
                f"no analytic KL between {p.distribution_name} {p.prob_text} and "
                f"{q.distribution_name} {q.prob_text} in torch's registry; use analytic=None or False"
            )
        self.method = "analytic" if (available and analytic is not False) else "monte_carlo"
        self._analytic_asked = analytic is True
        dim = kl_dim(dim)
        if dim is not None and self.method != "analytic":
            raise ValueError(f"KL[{p.prob_text}||{q.prob_text}]: dim= needs the analytic KL, which is not available")
        self.dim = dim
        self.p, self.q = p, q
        self._mc = Expectation(p, LogProb(p) - LogProb(q), sample_shape=sample_shape)
        # the Monte-Carlo estimate's inputs too: an analytic choice may fall back to it (see _value)
        inputs = p.input_var + q.input_var + self._mc.input_var if self.method == "analytic" else self._mc.input_var
        super().__init__(inputs)

    def subterms(self) -> list[Loss]:
        return [] if self.method == "analytic" else [self._mc]

    def _own_distributions(self) -> list[Distribution]:
        return [self.p, self.q]

    def _value(self, ctx: EvalContext) -> Tensor:
        if self.method == "monte_carlo":
            return ctx.value(self._mc)
        try:
            return self._analytic(ctx)
        except NotImplementedError as err:  # torch's registry matched a general rule that cannot compute this pair
            return monte_carlo_after_all(self, ctx, err, refuse=self._analytic_asked or self.dim is not None)

    def _analytic(self, ctx: EvalContext) -> Tensor:
        fp, pp = self.p.kl_parts(ctx.values)
        fq, qp = self.q.kl_parts(ctx.values)
        if self.dim is not None:
            per_feature = fp.kl_to(pp, fq, qp, per_feature=True)
            try:
                return per_feature.sum(dim=self.dim)
            except IndexError as err:
                raise ValueError(f"{self}: dim={self.dim} is out of range for the per-feature KL of shape "
                                 f"{tuple(per_feature.shape)}") from err
        return fp.kl_to(pp, fq, qp)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["kl"].format(symbol(self.p, fmt), symbol(self.q, fmt))

    def __repr__(self) -> str:
        return f"KullbackLeibler({self.loss_text}, method={self.method!r})"
