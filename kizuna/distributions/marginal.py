"""`MarginalizeVarDistribution`: :math:`p(x) = \\int p(x, z)\\, dz`.

Sampling draws the whole joint and drops the marginalised variables; the density is
intractable in general (estimate it with `kizuna.losses.IWAE`). The marginalised variables are
bound: a value of the same name given to ``sample``, or drawn by another factor of a product, is
not read (they are drawn inside), except one that the joint reads as an input (the empirical data of
an aggregate posterior).

Within the evaluation of a loss, a draw of the marginal records the joint's draws of the dropped
variables with it (in the evaluation's memo, keyed by the kept draws), so that an expectation's
score-function walk can score the joint's factors at the joint draw: :math:`\\nabla \\log p(x, z)`
at a joint draw is an unbiased score for :math:`\\mathbb{E}_{p(x)}[f(x)]`, while ``f`` sees ``x`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kizuna._text import var_text
from kizuna.distributions.base import Distribution, Tensor, XDict, batch_size_of, repeat_batch, single_factors
from kizuna.distributions.replace import graph_nodes
from kizuna.formula.memo import recall, remember, tagged

_HIDDEN = "hidden draws"  # the memo's tag of a marginal's draws of its integrated variables


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
        self._marginalized = list(dict.fromkeys(names))  # a name given twice is integrated once (∫ dy, not ∫∫ dy'dy')
        # Pixyz's graph keeps its nodes (the marginalised ones are just not listed): a product of this reads them
        self._graph_nodes = [v for v in graph_nodes(p) if v not in self._marginalized]

    @property
    def input_var(self) -> list[str]:
        return self._modules["p"].input_var  # (self.p, without nn.Module's attribute lookup: read per draw)

    def _check_fixed(self, fixed: list[str]) -> None:
        """The joint's check of the variables given to ``sample``: a product draws its other factors given a whole
        factor's variables (the all-or-none check of a single distribution refused ``z`` for ``∫ p(x|y)p(y|z)p(z)dy``,
        which the joint takes)."""
        self.p._check_fixed(fixed)

    def factors(self) -> list[Distribution]:
        """The single factors of the joint inside, the integrated variables' included, each scored at the joint draw
        that the marginal's draw came from (`HiddenDrawsFactor`): a draw of the marginal is a draw of the joint, so an
        expectation's score-function walk reads the joint's factors (a factor with fixed draws or a reparameterised
        sampler needs no term; the marginal's own density is intractable)."""
        cached = self.__dict__.get("_hidden_factors")
        if cached is None:  # a plain attribute: views of the joint's factors, not submodules
            cached = self.__dict__["_hidden_factors"] = [HiddenDrawsFactor(f, self) for f in single_factors(self.p)]
        return cached

    def hidden_draws(self, x_dict: Mapping[str, Any]) -> XDict:
        """The draws of the integrated variables made with the draws of the kept ones in ``x_dict`` (the very
        tensors a draw of this marginal returned in this evaluation)."""
        hidden = recall(self, _HIDDEN, [x_dict.get(v) for v in self._var])
        if hidden is None:
            raise ValueError(
                f"{self.prob_text}: no draw of {', '.join(self._marginalized)} was recorded with these values of "
                f"{', '.join(self._var)}; the joint's factors of a marginal are scored at the joint draw that a draw "
                "of the marginal made in the same loss evaluation"
            )
        return hidden

    def _drop_hidden(self, out: XDict) -> XDict:
        """``out`` without the integrated variables, which are recorded with the kept draws (see `hidden_draws`)."""
        kept = {k: v for k, v in out.items() if k not in self._marginalized}
        remember(self, _HIDDEN, [kept.get(v) for v in self._var], {k: out[k] for k in self._marginalized if k in out})
        return kept

    @property
    def has_reparam(self) -> bool:
        return self._modules["p"].has_reparam

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

    def _unbound(self, x_dict: XDict, batch_n: int | None) -> tuple[XDict, int | None]:
        """``x_dict`` without values named like an integrated variable: that variable is bound, drawn inside the
        marginal, never read from outside (a data batch that holds a ``z``, or the ``z`` of another factor of a
        product ``r(z) ∫ p(x|z)p(z)dz``, held it fixed and drew ``x`` from ``p(x|z)``; Pixyz's ``DistGraph`` passes its
        factors their inputs only). An integrated variable that the joint reads as an input is kept: the empirical
        ``x`` of an aggregate posterior ``∫ q(z|x) p_data(x) dx``. Also ``batch_n``: where nothing else left in the
        dict has rows, the rows of the values removed (as any value's rows size a draw of constants)."""
        inputs = self._modules["p"].input_var
        bound = [z for z in self._marginalized if z in x_dict and z not in inputs]
        if not bound:
            return x_dict, batch_n
        kept = {k: v for k, v in x_dict.items() if k not in bound}
        if batch_n is None and batch_size_of(kept) is None:
            batch_n = batch_size_of(x_dict)
        return kept, batch_n

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        x_dict, batch_n = self._unbound(x_dict, batch_n)
        return self._drop_hidden(self._modules["p"]._sample(x_dict, batch_n, reparam))

    def _sample_n(self, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
        x_dict, rows = self._unbound(x_dict, batch_n)
        repeated, _ = self._unbound(repeated, batch_n)
        return self._drop_hidden(self.p._sample_n(x_dict, repeated, n, rows, reparam))

    def _mean_values(self, x_dict: XDict, batch_n: int | None) -> XDict:
        x_dict, batch_n = self._unbound(x_dict, batch_n)
        return self._drop_hidden(self.p._mean_values(x_dict, batch_n))

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        raise NotImplementedError(
            f"{self} has no closed-form log-density; estimate it with kizuna.losses.IWAE"
        )


class HiddenDrawsFactor(Distribution):
    """A single factor ``f`` of the joint inside ``marginal``, scored at the joint draw: `get_log_prob` adds the
    integrated variables' draws recorded with the kept values it is given (`MarginalizeVarDistribution.hidden_draws`)
    to them. Its variables, parameters and sampler are ``f``'s (an expectation's score-function walk reads them);
    ``kept`` names the marginal's kept variables as this view calls them (a renamed marginal renames its views), and
    they are among its inputs."""

    def __init__(self, f: Distribution, marginal: MarginalizeVarDistribution,
                 kept: Sequence[str] | None = None) -> None:
        super().__init__(f.var, f.cond_var, f.name, f.features_shape)
        self.f = f  # a submodule: its parameters are this view's (`fixed_draws` reads them)
        self.__dict__["_marginal"] = marginal  # a plain attribute: the marginal holds its views
        self._kept = list(marginal.var if kept is None else kept)

    @property
    def input_var(self) -> list[str]:
        """``f``'s inputs and the marginal's kept variables, whose draws this view reads to find the joint draw."""
        own = self.f.var + self.f.input_var
        return self.f.input_var + [v for v in self._kept if v not in own]

    @property
    def has_reparam(self) -> bool:
        return self.f.has_reparam

    @property
    def distribution_name(self) -> str:
        return self.f.distribution_name

    def _factorized_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        return self.f._factorized_text(fmt, rename)

    def _factor_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        return self.f._factor_text(fmt, rename)

    def replace_var(self, **replace: str) -> Distribution:
        """The view of ``f`` renamed, reading the kept draws under their new names (the integrated variables are
        bound: no renaming of the marginal reaches them)."""
        own = set(self.f.var + self.f.cond_var + self.f.input_var)
        inner = {k: v for k, v in replace.items() if k in own}
        f = self.f.replace_var(**inner) if inner else self.f
        return HiddenDrawsFactor(f, self._marginal, [replace.get(v, v) for v in self._kept])

    def get_log_prob(self, x_dict: Mapping[str, Any], sum_features: bool = True,
                     feature_dims: Sequence[int] | None = None, **kwargs: Any) -> Tensor:
        """``log f`` at the joint draw: the integrated variables' recorded draws win over values of the same names
        in ``x_dict`` (they are bound inside the marginal)."""
        marginal = self._marginal
        kept = {v: x_dict.get(name) for v, name in zip(marginal.var, self._kept)}
        values = {**x_dict, **marginal.hidden_draws(kept)}
        return self.f.get_log_prob(values, sum_features, feature_dims)


def repeat_hidden(before: XDict, after: XDict, n: int) -> None:
    """Record, for the draws ``after`` (``before`` repeated ``n`` times along the batch, as ``sample_mean=True``
    repeats the means of several draws), the hidden draws recorded with ``before``, repeated alike."""
    repeated = {id(v): after[k] for k, v in before.items() if k in after}
    for owner, _, inputs, hidden in tagged(_HIDDEN):  # newest first: an outer marginal before the one inside it
        if inputs and all(id(t) in repeated for t in inputs):
            new = {k: repeat_batch(v, n) for k, v in hidden.items()}
            remember(owner, _HIDDEN, [repeated[id(t)] for t in inputs], new)
            repeated.update({id(hidden[k]): new[k] for k in hidden})
