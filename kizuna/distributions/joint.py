r"""`JointDistribution`: the product of factors, ``p * q``.

.. math:: p(x, z \mid y) = \prod_i p_i(\mathrm{var}_i \mid \mathrm{cond}_i)

Sampling is ancestral: factors run in dependency order (a factor after every factor that
defines one of its conditioning variables). The log-density is the sum of the factors'; a factor
whose values lack the draws' leading dimensions (a variable given to ``sample(..., sample_shape=...)``,
returned as it was given) has its per-row terms counted in every draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kizuna.distributions.base import Distribution, Tensor, XDict
from kizuna.distributions.dist_graph import add_terms, inherited
from kizuna.distributions.replace import graph_nodes
from kizuna.distributions.torch_dist import TorchDistribution
from kizuna.formula.memo import shared_parameters


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


def _own_lead(f: Distribution, x_dict: XDict) -> torch.Size | None:
    """The dimensions of the value of ``f`` before its features, where ``f`` states its features (declared, or those
    of constant parameters); None otherwise. Not evidence of draws: ``(S, B)`` draws of rows and ``(B, T)`` rows of
    ``T`` elements each (steps of a sequence) look alike there. `JointDistribution._per_draw` reads at most these
    dimensions of the value as draws and rows."""
    if len(f.var) != 1:
        return None
    value = x_dict.get(f.var[0])
    if not isinstance(value, Tensor) or value.dim() == 0:
        return None
    rank = len(f.features_shape)
    return value.shape[:value.dim() - rank] if rank and value.dim() > rank else None


def _draws_lead(f: Distribution, x_dict: XDict) -> torch.Size | None:
    """The leading shape ``(*sample_shape, rows)`` of the log-density of ``f`` per entry, where its value shows draws:
    ``f`` is a family whose parameters are computed from its conditioning values (one row per row of them), and its
    value has more dimensions than those parameters (``x`` of ``(S, B)`` against ``loc`` read from a given ``z`` of
    ``(B,)``, as ``sample({"z": z}, sample_shape=(S,))`` gives): the value's extra leading dimensions, then the
    parameters' rows, which must be the rows of a condition (its first dimension; one for a condition without a batch
    dimension). None otherwise: a factor with constant parameters (a prior) scores ``(S, B, D)`` draws and ``(B, T, D)``
    sequences alike, so says nothing about draws; nor does a value with the parameters' own dimensions (``(B, T, D)``
    against ``(B, T, D)``: a per-step factor of a sequence), one whose rows are not a condition's (parameters of one
    row against ``(B, T, D)``: ``T`` is not a row count), or, where ``f`` declares features, parameters without a
    dimension before them."""
    if len(f.var) != 1 or not isinstance(f, TorchDistribution) or not f._from_inputs():
        return None
    value = x_dict.get(f.var[0])
    if not isinstance(value, Tensor) or value.dim() == 0:
        return None
    try:  # the parameters' shape, rows first: their broadcast shape (a kernel family's), else the torch distribution's
        params = f._params(x_dict)
        shape = f._kernel_shape(params, None) if f._hooks.get("_log_prob_kernel") else None
        if shape is None:
            dist = f._torch_dist(x_dict, independent=False, params=params)
            shape = dist.batch_shape + dist.event_shape
        rank = len(f.features_shape)
        if len(shape) <= rank:  # no rows (or, where it declares features, no rows of them)
            return None
        value = f._value(value, shape[1:], params)  # as the family reads it (an MLP's (B, 1, D): B rows of D)
        if value.dim() <= len(shape):
            return None
        full = torch.broadcast_shapes(value.shape, shape)
    except (ValueError, TypeError, RuntimeError, NotImplementedError):
        return None
    lead = full[:len(full) - len(shape) + 1]
    unbatched = f._unbatched_conditions(x_dict)
    rows = {v.shape[0] if v.dim() and c not in unbatched else 1
            for c in f.cond_var if isinstance(v := x_dict.get(c), Tensor)}
    return lead if lead[-1] in rows else None


def _matched(lead: torch.Size, shape: torch.Size) -> torch.Size | None:
    """The longest end of ``lead`` that ``shape`` starts with (all of it: drawn with the draws; its rows only: given
    per row), None if none."""
    for m in range(min(len(lead), len(shape)), 0, -1):
        if shape[:m] == lead[len(lead) - m:]:
            return lead[len(lead) - m:]
    return None


def _rows_only(factors: Sequence[Distribution], x_dict: Mapping[str, Any]) -> bool:
    """Whether the values show that no factor has draws beside its rows, so that `JointDistribution._per_draw` would
    return the terms unchanged: the test before every joint log-density (shapes only, no call per value in the usual
    case); the analysis runs only where it fails. True for ``n >= 2`` where

    - every value of every factor's variables and conditions is a tensor of ``n`` rows (first dimension);
    - every value of a variable has one dimension, or two and a second that is not ``n`` or 1; or else it is
      ``(n, *features_shape)`` for a factor with (declared or constant) features, and has no dimension after the
      first of size ``n`` or 1 for a factor without.

    Why that suffices: `_per_draw` changes the terms only where a factor's `_draws_lead` is not None: a family with
    parameters computed from its conditions (whose rows are ``n``, or 1 for one without a batch dimension), whose value
    has more dimensions than those parameters, and whose dimension before the parameters' features broadcasts
    against their rows to a condition's rows, ``n`` or 1. For a factor without features that dimension comes after
    the value's first, so is not ``n`` or 1: excluded. For one with features the parameters need a dimension before
    them, so the value two or more: not one of one or two dimensions, nor ``(n, *features)``.
    Draws with a ``sample_shape`` beside values given per row fail the test: ``(S, B)`` beside ``(B,)`` has two first
    dimensions, and ``B`` after the first where ``S == B``. So do a batch of one, a feature size equal to the batch and
    a dimension of size 1 (one image channel), which then take the analysis; so do a factor with features whose value
    has more dimensions before them (a prior's ``(B, T, D)`` sequence), which the analysis returns as it is."""
    n = 0
    for f in factors:
        for name in f._var:
            if name not in x_dict:
                return False
            value = x_dict[name]
            if type(value) is not Tensor and not isinstance(value, Tensor):
                return False
            shape, ndim = value.shape, value.ndim
            if not ndim:
                return False
            if not n:
                n = shape[0]
                if n < 2:
                    return False
            elif shape[0] != n:
                return False
            if ndim > 2 or ndim == 2 and shape[1] in (n, 1):  # the features say what else
                features = f.features_shape
                later = shape[1:]
                if later != features if features else n in later or 1 in later:
                    return False
        for name in f._cond_var:
            if name not in x_dict:
                return False
            value = x_dict[name]
            if type(value) is not Tensor and not isinstance(value, Tensor) or not value.ndim or value.shape[0] != n:
                return False
    return True


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
        own = {v for f in flat for v in f.var}
        # Pixyz's order: its graph's nodes in insertion order, the union of the operands' graphs in operand order (a
        # single distribution adds its variables, then its conditions; a renamed or marginalised product keeps its own
        # graph's order, `graph_nodes`); var lists the nodes that a factor draws, cond_var the others. So p(x|y) *
        # p(z|x) * p(y) has var ['x', 'y', 'z'] (the factors' order gave ['x', 'z', 'y']: positional code ported from
        # Pixyz read z as y), and (p(x|c) * p(y)).replace_var(x='a') * p(c) has ['c', 'y', 'a']
        nodes = list(dict.fromkeys(v for f in factors for v in graph_nodes(f)))
        var = [v for v in nodes if v in own]
        cond = [v for v in nodes if v not in own]
        # named after the first operand, as Pixyz names a product (q(z|x) * f(y|x) is q(z,y|x), not p)
        super().__init__(var, cond, factors[0].name if len(factors) else "p")
        self._factors = nn.ModuleList(flat)
        self._order = order
        self._graph_nodes = nodes
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
        (`add_terms`). With ``sum_features=True``, one value per entry of the first dimension: for draws made with a
        ``sample_shape`` beside values given per row (`_per_draw`), the sum over the draw's rows of every factor."""
        if not sum_features:
            return add_terms(self, [(f, f.get_log_prob(x_dict, False)) for f in self._factors],
                             "with sum_features=False")
        terms = self._summed_terms(x_dict, [(f, {}) for f in self._factors])
        total = terms[0][1]
        for _, term in terms[1:]:
            if total.shape != term.shape and total.dim() == term.dim() == 1 and 1 not in (len(total), len(term)):
                return add_terms(self, terms, "with sum_features=True (one value per entry of the first dimension)")
            total = total + term
        return total

    def _summed_terms(self, x_dict: Mapping[str, Any], calls: Sequence[tuple[Distribution, Mapping[str, Any]]]
                      ) -> list[tuple[Distribution, Tensor]]:
        """``f.get_log_prob(x_dict, **kwargs)`` for each ``(f, kwargs)`` of ``calls`` (every factor, each summed per
        entry of the first dimension; Pixyz's graph options give each its own arguments), made per draw by `_per_draw`
        unless `_rows_only` shows there are no draws beside rows; the parameters are then computed once, for the
        densities and for `_draws_lead`."""
        if _rows_only(self._order, x_dict):
            return [(f, f.get_log_prob(x_dict, **kwargs)) for f, kwargs in calls]
        with shared_parameters():
            terms = [(f, f.get_log_prob(x_dict, **kwargs)) for f, kwargs in calls]
            return self._per_draw(x_dict, terms) if len(terms) > 1 else terms

    def _per_draw(self, x_dict: XDict, terms: list[tuple[Distribution, Tensor]]) -> list[tuple[Distribution, Tensor]]:
        """The factors' per-row log-densities ``terms`` made per draw. After ``sample({"z": z}, sample_shape=(S,))``
        ``z`` is ``(B,)`` as given and ``x`` is ``(S, B)``: ``log p(z)`` has one value per row and ``log p(x|z)`` one
        per draw (each summed over the rows).

        Only a factor whose parameters come from its conditions shows draws (`_draws_lead`: its value has more leading
        dimensions than the parameters read from its per-row conditions); the longest such shape is the draws'
        ``(*sample_shape, B)``. Where none does, the terms are returned as they are: one value per entry of the first
        dimension, as before draws were read (right for ``(B, T, D)`` sequences beside ``(B, D)`` values, which a
        prior's shapes cannot tell from draws). A factor whose values start with a shorter end of the draws' shape is
        counted in every draw: its sum times the entries of the dimensions it lacks after the first. Those values are
        its conditions and its variable, of which only the dimensions before its features where it states them; these
        are as they are where they broadcast against the draws' shape (one row against every row), and else may be
        rows, then elements of each row (a ``(B, T, D)`` sequence beside draws of ``B`` rows is ``B`` rows); where both
        fit (stated ``(B, B)`` or ``(B, 1)`` beside ``S == B`` draws), the term stays as it is, as before draws were
        read. A factor whose values start with no end of it, or a second factor showing draws of other sizes, is refused
        by name."""
        leads = [_draws_lead(f, x_dict) for f, _ in terms]
        longest = max((lead for lead in leads if lead is not None), key=len, default=None)
        if longest is None:  # no factor shows draws beside its rows: one value per row
            return terms
        end = len(longest)
        out = []
        for (f, term), lead in zip(terms, leads):
            stated = lead if lead is not None else _own_lead(f, x_dict)  # its value's dimensions before its features
            found = None
            if stated is not None:
                if stated == longest[end - len(stated):]:
                    found = stated  # the draws, or their last dimensions (given per row)
                elif all(a == b or 1 in (a, b) for a, b in zip(reversed(stated), reversed(longest))):
                    out.append((f, term))  # one row against every row (it conditions them all): as it is
                    continue
                elif lead is None:  # a prior's: rows, then elements of each row (a (B, T) sequence's steps)
                    found = _matched(longest, stated)
            if lead is None:
                names = [*f.cond_var, *f.input_var, *([] if stated is not None else f.var)]
                for value in map(x_dict.get, names):
                    match = _matched(longest, value.shape) if isinstance(value, Tensor) else None
                    if match is not None and (found is None or len(match) > len(found)):
                        found = match
            if found is None and stated is not None:
                owner = next(g for (g, _), other in zip(terms, leads) if other == longest)
                raise ValueError(
                    f"{self.prob_text}: the log-density of {f.prob_text} has one value per entry of {tuple(stated)} "
                    f"and that of {owner.prob_text} one per entry of {tuple(longest)} (draws, then rows); they cannot "
                    "be summed per draw (score the factors one by one)")
            if found is None or len(found) == end or term.dim() != 1 or term.shape[0] != found[0]:
                out.append((f, term))  # per draw already (or nothing says otherwise)
                continue
            repeats = math.prod(longest[1:end - len(found)])  # the draws' dimensions after the first that it lacks
            out.append((f, (term.sum() * repeats).expand(longest[0])))
        return out

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
