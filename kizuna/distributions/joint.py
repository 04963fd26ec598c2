r"""`JointDistribution`: the product of factors, ``p * q``.

.. math:: p(x, z \mid y) = \prod_i p_i(\mathrm{var}_i \mid \mathrm{cond}_i)

Sampling is ancestral: factors run in dependency order (a factor after every factor that
defines one of its conditioning variables). The log-density is the sum of the factors'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kizuna.distributions.base import Distribution, Tensor, XDict
from kizuna.distributions.dist_graph import add_terms, inherited


def _order(factors: Sequence[Distribution]) -> list[Distribution]:
    """Topological order of the factors; raises on a variable defined twice or a cycle."""
    owner: dict[str, Distribution] = {}
    for f in factors:
        for v in f.var:
            if v in owner:
                raise ValueError(f"variable {v} is defined twice: by {owner[v].prob_text} and by {f.prob_text}")
            owner[v] = f
    # cond_var as well as input_var: experts of a product of experts take optional inputs
    deps = {
        id(f): {id(owner[c]) for c in f.cond_var + f.input_var if c in owner and owner[c] is not f}
        for f in factors
    }
    ordered: list[Distribution] = []
    done: set[int] = set()
    pending = list(factors)
    while pending:
        ready = [f for f in pending if deps[id(f)] <= done]
        if not ready:
            cycle = "".join(f.prob_text for f in pending)
            raise ValueError(f"the factors {cycle} condition on each other in a cycle; no ancestral order exists")
        for f in ready:
            ordered.append(f)
            done.add(id(f))
        pending = [f for f in pending if id(f) not in done]
    return ordered


class JointDistribution(Distribution):
    """The product of several distributions (built by ``p * q``; nested products are flattened).

    Args:
        factors: the distributions to multiply, in the order the formula lists them.

    >>> from kizuna.distributions import Normal
    >>> prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
    >>> lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    >>> joint = lik * prior
    >>> print(joint)
    p(x,z) = p(x|z)p_{prior}(z)
    >>> sorted(joint.sample(batch_n=4))  # z first, then x given z
    ['x', 'z']
    >>> print(joint.marginalize_var("z"))
    p(x) = ∫ p(x|z)p_{prior}(z)dz
    """

    def __init__(self, factors: Sequence[Distribution]) -> None:
        flat: list[Distribution] = []
        for f in factors:
            flat.extend(f.factors() if isinstance(f, JointDistribution) else [f])
        order = _order(flat)
        var = [v for f in flat for v in f.var]
        cond: list[str] = []
        for f in flat:
            cond.extend(c for c in f.cond_var if c not in var and c not in cond)
        # named after the first operand, as Pixyz names a product (q(z|x) * f(y|x) is q(z,y|x), not p)
        super().__init__(var, cond, factors[0].name if len(factors) else "p")
        self._factors = nn.ModuleList(flat)
        self._order = order
        self._graph_options = inherited(factors, flat)  # Pixyz's graph options of the operands, if any
        inputs: list[str] = []
        for f in flat:
            others = {v for g in flat if g is not f for v in g.var}
            inputs.extend(v for v in f.input_var if v not in others and v not in inputs)
        self._input_var = inputs

    @property
    def input_var(self) -> list[str]:
        return list(self._input_var)

    @property
    def has_reparam(self) -> bool:
        for f in self._order:  # the factors (a plain list: no nn.Module attribute lookup, no generator; read per draw)
            if not f.has_reparam:
                return False
        return True

    def factors(self) -> list[Distribution]:
        return list(self._factors)

    def _factorized_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        return "".join(f._factor_text(fmt, rename) for f in self._factors)

    def sample(self, x_dict: Mapping[str, Any] | None = None, batch_n: int | None = None,
               sample_shape: Sequence[int] | torch.Size = (), return_all: bool = True, reparam: bool = False,
               sample_mean: bool = False, **kwargs: Any) -> XDict:
        """See `Distribution.sample`; with Pixyz's graph options (`kizuna.distributions.dist_graph`) each factor
        draws with its own."""
        if self._graph_options is not None:
            return self._graph_options.sample(self, x_dict, return_all, dict(
                batch_n=batch_n, sample_shape=sample_shape, reparam=reparam, sample_mean=sample_mean, **kwargs))
        return super().sample(x_dict, batch_n, sample_shape, return_all, reparam, sample_mean)

    def get_log_prob(self, x_dict: Mapping[str, Any], sum_features: bool = True,
                     feature_dims: Sequence[int] | None = None, **kwargs: Any) -> Tensor:
        """See `Distribution.get_log_prob`; with Pixyz's graph options each factor is scored with its own."""
        if self._graph_options is not None:
            return self._graph_options.log_prob(self, x_dict, dict(
                sum_features=sum_features, feature_dims=feature_dims, **kwargs))
        return super().get_log_prob(x_dict, sum_features, feature_dims)

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        return self._ancestral(x_dict, lambda f, values: f._sample(values, batch_n, reparam))

    def _mean_values(self, x_dict: XDict, batch_n: int | None) -> XDict:
        """Ancestral means: each factor's mean given its parents' means (Pixyz's ``sample_mean=True``)."""
        return self._ancestral(x_dict, lambda f, values: f._mean_values(values, batch_n))

    def _ancestral(self, x_dict: XDict, draw: Callable[[Distribution, XDict], XDict]) -> XDict:
        values = dict(x_dict)
        new: XDict = {}
        for f in self._order:
            var = f._var
            if all(map(values.__contains__, var)) and not set(var) & set(f.input_var):
                continue  # held fixed: sample() was given this factor's variables
            f._require(values, f.input_var)
            out = draw(f, values)
            values.update(out)
            new.update(out)
        return new

    def _check_fixed(self, fixed: list[str]) -> None:
        for f in self._factors:
            given = [v for v in f.var if v in fixed]
            if given and len(given) != len(f.var):
                missing = [v for v in f.var if v not in fixed]
                raise ValueError(
                    f"{self.prob_text}: x_dict gives {', '.join(given)} but not {', '.join(missing)} of the "
                    f"factor {f.prob_text}; give all of its variables or none"
                )

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        """The sum of the factors' log-densities; with ``sum_features=False`` entry by entry, which needs them of one
        rank and sizes that agree (Pixyz's rule: e.g. ``y`` and ``x|y`` of the same shape), else an error naming two
        (`add_terms`)."""
        terms = [(f, f.get_log_prob(x_dict, sum_features)) for f in self._factors]
        if not sum_features:
            return add_terms(self, terms, "with sum_features=False")
        total = terms[0][1]
        for _, term in terms[1:]:
            total = total + term
        return total

    def _log_prob_dims(self, x_dict: XDict, dims: Sequence[int]) -> Tensor:
        """See `Distribution._log_prob_dims`: the factors' log-densities, each summed over ``dims`` (the same
        dimensions in every factor, as Pixyz), then added; they must then have one rank and sizes that agree (a scalar
        factor next to a vector one, drawn with ``sample_shape``, do not: its sum over ``-1`` ran over the batch and
        broadcast)."""
        terms = []
        for f in self._factors:
            try:
                terms.append((f, f._log_prob_dims(x_dict, dims)))
            except IndexError as err:
                raise ValueError(f"{self.prob_text}: feature_dims={list(dims)} is out of range for the log-density of "
                                 f"{f.prob_text} ({err}); the same dimensions are summed in every factor") from None
        return add_terms(self, terms, f"with feature_dims={list(dims)} (the same dimensions in every factor)")
