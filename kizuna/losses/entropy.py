r"""`Entropy` :math:`H[p] = -\mathbb{E}_p[\log p]` and `CrossEntropy` :math:`H[p\|q] = -\mathbb{E}_p[\log q]`.

Both are analytic when torch has the closed forms (the entropy of the family; for the
cross-entropy also the KL, since :math:`H[p\|q] = H[p] + D_{KL}[p\|q]`), Monte Carlo
otherwise; ``.method`` says which.

The closed form of the cross-entropy holds only when :math:`p` and :math:`q` are over the same
variables. Over different ones, e.g. :math:`p = q(z|x)` and :math:`q = p(x|z)`, the cross-entropy is
:math:`-\mathbb{E}_{q(z|x)}[\log p(x|z)]` (the reconstruction term of an MMD-VAE, as Pixyz computes it):
a function of :math:`x` alone, always estimated by Monte Carlo.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import distributions as D
from torch.distributions.exp_family import ExponentialFamily

from kizuna._text import symbol
from kizuna.distributions.base import Distribution, require_distributions, sum_rows
from kizuna.formula.expr import EvalContext, Loss, Tensor
from kizuna.formula.log_prob import LogProb
from kizuna.losses.divergences import analytic_kl_available, analytic_option, monte_carlo_after_all, with_row
from kizuna.losses.expectation import Expectation


def analytic_entropy_available(p: Distribution) -> bool:
    """Whether torch has a closed-form entropy for the family of ``p`` (`Distribution.closed_form_family`)."""
    family = p.closed_form_family
    if family is None or family.entropy is D.Distribution.entropy:
        return False
    # the exponential-family entropy needs the family's carrier measure; e.g. Poisson has none
    return not (family.entropy is ExponentialFamily.entropy
                and family._mean_carrier_measure is ExponentialFamily._mean_carrier_measure)


def _method(available: bool, analytic: bool | None, what: str) -> str:
    if analytic and not available:
        raise ValueError(f"no analytic {what} in torch for these distributions; use analytic=None or False")
    return "analytic" if (available and analytic is not False) else "monte_carlo"


class Entropy(Loss):
    """:math:`H[p]` per batch row."""

    def __init__(self, p: Distribution, analytic: bool | None = None, sample_shape: Sequence[int] = (), *,
                 analytical: bool | None = None) -> None:
        require_distributions("Entropy", p=p)
        analytic = analytic_option(analytic, analytical, "Entropy")
        self.method = _method(analytic_entropy_available(p), analytic, f"entropy of {p.prob_text}")
        self.p = p
        self._mc = Expectation(p, -LogProb(p), sample_shape=sample_shape)
        super().__init__(p.input_var if self.method == "analytic" else self._mc.input_var)

    def subterms(self) -> list[Loss]:
        return [] if self.method == "analytic" else [self._mc]

    def _own_distributions(self) -> list[Distribution]:
        return [self.p]

    def _value(self, ctx: EvalContext) -> Tensor:
        if self.method == "monte_carlo":
            return ctx.value(self._mc)
        return self.p.get_entropy(ctx.values)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["entropy"].format(symbol(self.p, fmt))


class CrossEntropy(Loss):
    """:math:`H[p\\|q] = -\\mathbb{E}_p[\\log q]` per batch row (module docstring).

    Args:
        p: the distribution the expectation is taken under.
        q: the distribution scored; over the same variables as ``p`` (closed form where torch has one) or
            over others (``q(x|z)`` scored at draws of ``p(z|x)``: always Monte Carlo).
        analytic: True demands the closed form, False Monte Carlo, None picks the closed form when it applies.
        sample_shape: draws of ``p`` per row for the Monte Carlo estimate.

    >>> import torch
    >>> from kizuna.distributions import Normal
    >>> q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    >>> p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    >>> ce = CrossEntropy(q, p)  # -E_{q(z|x)}[log p(x|z)]: needs x only
    >>> ce.method, ce.input_var
    ('monte_carlo', ['x'])
    """

    def __init__(self, p: Distribution, q: Distribution,
                 analytic: bool | None = None, sample_shape: Sequence[int] = (), *,
                 analytical: bool | None = None) -> None:
        require_distributions("CrossEntropy", p=p, q=q)
        analytic = analytic_option(analytic, analytical, "CrossEntropy")
        same_vars = sorted(p.var) == sorted(q.var)
        available = same_vars and analytic_entropy_available(p) and analytic_kl_available(p, q)
        if analytic and not same_vars:
            raise ValueError(f"cross-entropy H[{p.prob_text}||{q.prob_text}]: the closed form needs both over the "
                             f"same variables ({p.var} vs {q.var}); use analytic=None or False")
        self.method = _method(available, analytic, f"cross-entropy H[{p.prob_text}||{q.prob_text}]")
        self._analytic_asked = analytic is True
        self.p, self.q = p, q
        self._mc = Expectation(p, -LogProb(q), sample_shape=sample_shape)
        # the Monte-Carlo estimate's inputs too: an analytic choice may fall back to it (see _value)
        inputs = p.input_var + q.input_var + self._mc.input_var if self.method == "analytic" else self._mc.input_var
        super().__init__(inputs)

    def subterms(self) -> list[Loss]:
        return [] if self.method == "analytic" else [self._mc]

    def _own_distributions(self) -> list[Distribution]:
        return [self.p, self.q]

    def _value(self, ctx: EvalContext) -> Tensor:
        """:math:`H[p] + D_{KL}[p\\|q]` per feature, summed over the features: the KL as `KullbackLeibler` computes
        it (a constant side broadcast to the other's batch and features), and ``p``'s entropy broadcast alike (a
        constant ``p`` without ``features_shape`` has the entropy of one feature, counted once per feature of the
        KL); Monte Carlo where torch's registry then has no closed form after all."""
        if self.method == "monte_carlo":
            return self._monte_carlo(ctx)
        try:
            fp, pp = self.p.kl_parts(ctx.values)
            fq, qp = self.q.kl_parts(ctx.values)
            kl = fp.kl_to(pp, fq, qp, per_feature=True)
        except NotImplementedError as err:
            return self._monte_carlo(ctx, err)
        return with_row(sum_rows(self.p.get_entropy(ctx.values, sum_features=False) + kl))

    def _monte_carlo(self, ctx: EvalContext, after: NotImplementedError | None = None) -> Tensor:
        """The Monte-Carlo estimate (``after``: the closed form's error, `monte_carlo_after_all`); where ``q`` refuses
        draws of ``p`` that are one number per row because ``p`` declares no ``features_shape`` (a constant prior
        draws one feature, whatever ``q``'s), an error saying so."""
        try:
            if after is not None:
                return monte_carlo_after_all(self, ctx, after, refuse=self._analytic_asked)
            return ctx.value(self._mc)
        except ValueError as err:
            drawn = [ctx.samples.get(v) for v in self.p.var]
            draws = len(self._mc.sample_shape)  # the draws' dimensions before the rows (sample_shape)
            if self.p.features_shape or not all(isinstance(v, Tensor) and v.dim() <= 1 + draws for v in drawn):
                raise
            raise ValueError(f"{self}: the Monte-Carlo estimate draws {self.p.prob_text} one number per row, since it "
                             f"declares no features_shape, and {self.q.prob_text} refuses them ({err}); declare "
                             f"{self.p.prob_text}'s features, features_shape=[D] for the D features of "
                             f"{self.q.prob_text}") from err

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["cross_entropy"].format(symbol(self.p, fmt), symbol(self.q, fmt))
