"""`MarginalizeVarDistribution`: :math:`p(x) = \\int p(x, z)\\, dz`.

Sampling draws the whole joint and drops the marginalised variables; the density is
intractable in general (estimate it with `kizuna.losses.IWAE`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kizuna._text import var_text
from kizuna.distributions.base import Distribution, Tensor, XDict


class MarginalizeVarDistribution(Distribution):
    """``p.marginalize_var(["z"])``: ``p`` with ``z`` integrated out."""

    def __init__(self, p: Distribution, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in p.var]
        if unknown:
            raise ValueError(f"{p.prob_text}: cannot marginalise {', '.join(unknown)}; its variables are {p.var}")
        kept = [v for v in p.var if v not in names]
        if not kept:
            raise ValueError(f"{p.prob_text}: marginalising every variable leaves no distribution")
        super().__init__(kept, p.cond_var, p.name)
        self.p = p
        self._marginalized = list(names)

    @property
    def input_var(self) -> list[str]:
        return self.p.input_var

    def factors(self) -> list[Distribution]:
        """The factors of the joint inside, the integrated variables' included: a draw of the marginal is a draw of
        the joint, so an expectation's score-function walk reads the joint's factors (a factor with fixed draws or a
        reparameterised sampler needs no term; the marginal's own density is intractable)."""
        return self.p.factors()

    @property
    def has_reparam(self) -> bool:
        return self.p.has_reparam

    def _factorized_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        # The integrated variables are bound: an outer renaming does not reach them, and one
        # that would capture them (``replace_var(x="z")`` over ``∫ p(x|z)p(z)dz``) primes them.
        free = [v for v in [*self._var, *self._cond_var, *self.input_var] if v not in self._marginalized]
        taken = {rename.get(v, v) for v in free}
        inner = dict(rename)
        for z in self._marginalized:
            bound = z
            while bound in taken:
                bound += "'"
            taken.add(bound)
            inner[z] = bound
        text = self.p._factorized_text(fmt, inner)
        for z in self._marginalized:  # ∫ ∫ p(x,z,w) dz dw, one integral sign per variable
            text = fmt["integral"].format(text, var_text(inner[z], fmt))
        return text

    def _factor_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        """Bracketed, so that the integral's scope stays clear inside a product."""
        return fmt["paren"].format(self._factorized_text(fmt, rename))

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        out = self.p._sample(x_dict, batch_n, reparam)
        return {k: v for k, v in out.items() if k not in self._marginalized}

    def _sample_n(self, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
        out = self.p._sample_n(x_dict, repeated, n, batch_n, reparam)
        return {k: v for k, v in out.items() if k not in self._marginalized}

    def _mean_values(self, x_dict: XDict, batch_n: int | None) -> XDict:
        out = self.p._mean_values(x_dict, batch_n)
        return {k: v for k, v in out.items() if k not in self._marginalized}

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        raise NotImplementedError(
            f"{self} has no closed-form log-density; estimate it with kizuna.losses.IWAE"
        )
