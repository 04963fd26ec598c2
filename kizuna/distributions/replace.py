"""`ReplaceVarDistribution`: the same distribution over renamed variables.

``p.replace_var(z="y")`` turns :math:`p(x|z)` into :math:`p(x|y)`: inputs are read under
the new names and samples are returned under them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kizuna.distributions.base import Distribution, Tensor, XDict, _with_values
from kizuna.formula.expr import values_dict


def graph_nodes(p: Distribution) -> list[str]:
    """The variables and conditions of ``p`` in the order that Pixyz's graph of it (``DistGraph``) holds them, which
    fixes the order of a product's ``var`` and ``cond_var``: a single distribution's variables, then its conditions;
    a product's (`JointDistribution`), a renamed (`relabelled`) or marginalised distribution's as it records them (a
    marginalised variable is left out: it is not listed, and no other variable takes its place)."""
    nodes = p.__dict__.get("_graph_nodes")
    return list(nodes) if nodes is not None else list(dict.fromkeys(p.var + p.cond_var))


def relabelled(nodes: Sequence[str], rename: Mapping[str, str]) -> list[str]:
    """``nodes`` renamed as Pixyz renames its graph's nodes (networkx's ``relabel_nodes(graph, rename, copy=False)``):
    each renamed node is taken out and added again at the end, in the order networkx renames them. That is the
    graph's order, or, where a new name is also an old one (a chain ``x -> z, z -> w``), the reverse of networkx's
    topological order of the renaming (`_chain_order`): ``z -> w`` before ``x -> z``, so ``[x, y, z]`` becomes
    ``[y, w, z]``. A renaming that no order resolves (a swap ``x <-> y``, which Pixyz refuses) takes the graph's
    order; a name renamed to itself stays where it is, as does one not among ``nodes``."""
    present = set(nodes)
    order = [n for n in nodes if n in rename]
    if rename.keys() & set(rename.values()):
        order = _chain_order(rename) or order
    moved = [n for n in order if n in present and rename[n] != n]
    gone = set(moved)
    return [n for n in nodes if n not in gone] + [rename[n] for n in moved]


def _chain_order(rename: Mapping[str, str]) -> list[str] | None:
    """The order in which networkx renames nodes whose old and new names overlap: the reverse of
    ``nx.topological_sort(nx.DiGraph(list(rename.items())))`` without its self-loops (generation by generation, each
    in the graph's order); None where the renaming has a cycle."""
    graph = list(dict.fromkeys(n for edge in rename.items() for n in edge))
    edges = {old: new for old, new in rename.items() if old != new}
    indegree = dict.fromkeys(graph, 0)
    for new in edges.values():
        indegree[new] += 1
    generation = [n for n in graph if indegree[n] == 0]
    order: list[str] = []
    while generation:
        order.extend(generation)
        following = []
        for n in generation:
            if n in edges:
                indegree[edges[n]] -= 1
                if indegree[edges[n]] == 0:
                    following.append(edges[n])
        generation = following
    return order[::-1] if len(order) == len(graph) else None


class ReplaceVarDistribution(Distribution):
    """``p`` with variables renamed by ``replace`` (old name -> new name)."""

    def __init__(self, p: Distribution, replace: Mapping[str, str]) -> None:
        names = list(dict.fromkeys(p.var + p.cond_var + p.input_var))
        unknown = [k for k in replace if k not in names]
        if unknown:
            raise ValueError(f"{p.prob_text}: cannot replace {', '.join(unknown)}; its variables are {names}")
        rename = dict(replace)
        var = [rename.get(v, v) for v in p.var]
        cond = [rename.get(v, v) for v in p.cond_var]
        # Pixyz's graph after renaming its nodes in place (networkx's relabel_nodes(copy=False) re-adds each renamed
        # node at the end: `relabelled`); a renamed product lists its variables and conditions in that order (a single
        # distribution keeps its own order; a product it is a factor of reads the graph's, `graph_nodes`)
        nodes = relabelled(graph_nodes(p), rename)
        factors = p.factors()
        if not (len(factors) == 1 and factors[0] is p):
            own = set(var)
            var = [v for v in nodes if v in own]
            cond = [v for v in nodes if v not in own]
        if len(set(var + cond)) != len(var + cond):
            raise ValueError(f"{p.prob_text}: replace_var({rename}) would give two variables the same name")
        super().__init__(var, cond, p.name, p.features_shape)
        self.p = p
        self._rename = rename
        self._inverse = {new: old for old, new in rename.items()}
        self._graph_nodes = nodes

    @property
    def input_var(self) -> list[str]:
        return [self._rename.get(v, v) for v in self.p.input_var]

    def factors(self) -> list[Distribution]:
        """``p``'s factors, each under this renaming: a renamed product is the product of its renamed factors, which
        the score-function walk of an expectation and the inference helpers read one by one (a renamed product of a
        reparameterised and a discrete factor got a score-function term for the whole product, counting the
        reparameterised factor's gradient twice)."""
        inner = self.p.factors()
        if len(inner) == 1 and inner[0] is self.p:
            return [self]
        cached = self.__dict__.get("_renamed_factors")
        if cached is None:
            cached = []
            for f in inner:
                own = set(f.var + f.cond_var + f.input_var)
                rename = {k: v for k, v in self._rename.items() if k in own}
                cached.append(f.replace_var(**rename) if rename else f)
            self.__dict__["_renamed_factors"] = cached  # a plain attribute: views, not submodules
        return cached

    @property
    def has_reparam(self) -> bool:
        return self.p.has_reparam

    def _compose(self, rename: Mapping[str, str]) -> dict[str, str]:
        """An outer renaming (over the new names) expressed over ``p``'s names."""
        composed = {old: rename.get(new, new) for old, new in self._rename.items()}
        for k, v in rename.items():
            if k not in self._inverse and k not in composed:
                composed[k] = v
        return composed

    def _factorized_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        return self.p._factorized_text(fmt, self._compose(rename))

    def _factor_text(self, fmt: dict[str, str], rename: Mapping[str, str]) -> str:
        return self.p._factor_text(fmt, self._compose(rename))

    def _renamed_error(self, err: ValueError | TypeError) -> ValueError | TypeError:
        """``err``, raised inside ``p``, as this distribution's error (only on the error path): its message with ``p``'s
        ``prob_text`` at the start as this one's and ``p``'s variable names, where they stand as whole words, as their
        new names (``p(x|z): x has shape ...`` of ``p.replace_var(x="y", z="w")`` reads ``p(y|w): y has shape
        ...``), in the same exception class; ``err`` itself where the message names nothing renamed or the class
        cannot be built from a message."""
        message = str(err)
        head = f"{self.p.prob_text}:"
        start = f"{self.prob_text}:" if message.startswith(head) else ""
        rest = message[len(head):] if start else message
        old = sorted((k for k, v in self._rename.items() if k != v), key=len, reverse=True)
        if old:  # one pass, so that a swap (x -> z, z -> x) is not applied twice
            words = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, old)) + r")(?!\w)")
            rest = words.sub(lambda m: self._rename[m.group(1)], rest)
        renamed = start + rest
        if renamed == message:
            return err
        try:
            return type(err)(renamed)
        except Exception:  # noqa: BLE001 - a subclass whose constructor takes other arguments: keep it
            return err

    def _inner(self, x_dict: XDict) -> XDict:
        """``x_dict`` under ``p``'s names: a renamed variable's value under its old name; every other value under its
        own name, except those named like one of ``p``'s renamed variables (outside, that name is gone or now means
        another variable: in a swap ``x <-> z`` the value given for the new ``x`` is ``p``'s ``z`` only; kept as
        ``x`` too, it held ``p``'s own ``x`` fixed, and a product skipped that factor's draw)."""
        inverse, rename = self._inverse, self._rename
        inner = {k: v for k, v in x_dict.items() if k not in inverse and k not in rename}
        inner.update({inverse[k]: v for k, v in x_dict.items() if k in inverse})
        return inner

    def _given(self, x_dict: Mapping | None, fn: str) -> XDict:
        """``_inner`` for the public helper ``fn``, checked first so that errors use the new names (the inputs ``p``
        needs: an expert of a product of experts is optional)."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, fn, self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self.input_var)
        return self._inner(x_dict)

    def _outer(self, out: Mapping[str, Any]) -> XDict:
        """``p``'s draws under the new names. A further value that ``p`` returns beside its variables (a mixture's
        component choice, a flow's base draw) keeps its own name, unless one of this distribution's variables now has
        that name (a renamed variable or condition): it is left out, as a flow whose prior's variable is named like its
        own returns only the flow's value there."""
        renamed = {self._rename.get(k, k): v for k, v in out.items() if k in self.p.var}
        if len(renamed) == len(out):
            return renamed
        taken = {*self._var, *self._cond_var, *self.input_var}
        return {**renamed, **{k: v for k, v in out.items() if k not in self.p.var and k not in taken}}

    def _single(self) -> bool:
        """Whether ``p`` is one distribution, not a product: its own ``sample`` and ``get_log_prob`` then take the
        caller's keyword options (a renamed product draws without graph options, `kizuna.distributions.dist_graph`)."""
        factors = self.p.factors()
        return len(factors) == 1 and factors[0] is self.p

    def sample(self, x_dict: Mapping[str, Any] | None = None, batch_n: int | None = None,
               sample_shape: Sequence[int] | torch.Size = (), return_all: bool = True, reparam: bool = False,
               sample_mean: bool = False, **kwargs: Any) -> XDict:
        """See `Distribution.sample`. Where ``p`` is one distribution, its own ``sample`` draws, with the keyword
        options (as Pixyz's ``ReplaceVarDistribution`` passes them on): a renamed `MixtureModel` with
        ``return_hidden=True`` also returns its component choice, a renamed flow its base draw (both were dropped)."""
        if not ((kwargs or type(self.p).sample is not Distribution.sample) and self._single()) \
                or not isinstance(x_dict, Mapping | None):  # (not a dict: `Distribution.sample` names it)
            return super().sample(x_dict, batch_n, sample_shape, return_all, reparam, sample_mean)
        given = _with_values(x_dict, self) if x_dict else {}
        self._require(given, self.input_var)  # named with the new names
        try:
            out = self.p.sample(self._inner(given), batch_n=batch_n, sample_shape=sample_shape, return_all=False,
                                reparam=reparam, sample_mean=sample_mean, **kwargs)
        except NotImplementedError as err:
            raise NotImplementedError(f"{self.prob_text}: {err}") from err
        except (ValueError, TypeError) as err:
            raise self._renamed_error(err) from err
        out = self._outer(out)
        return {**given, **out} if return_all else out

    def get_log_prob(self, x_dict: Mapping[str, Any], sum_features: bool = True,
                     feature_dims: Sequence[int] | None = None, **kwargs: Any) -> Tensor:
        r"""See `Distribution.get_log_prob`. Where ``p`` is one distribution, keyword options reach it (as Pixyz's
        ``ReplaceVarDistribution`` passes them on): a renamed `MixtureModel` with ``return_hidden=True`` gives
        :math:`\log p(x, z = k)`, shape ``(K, batch)`` (it gave :math:`\log p(x)`)."""
        if not (kwargs and self._single() and isinstance(x_dict, Mapping)):
            return super().get_log_prob(x_dict, sum_features, feature_dims)
        x_dict = _with_values(x_dict, self)
        self._require(x_dict, self._var + self.input_var)  # named with the new names
        try:
            return self.p.get_log_prob(self._inner(x_dict), sum_features=sum_features, feature_dims=feature_dims,
                                       **kwargs)
        except NotImplementedError as err:
            raise NotImplementedError(f"{self.prob_text}: {err}") from err
        except (ValueError, TypeError) as err:
            raise self._renamed_error(err) from err

    def _check_fixed(self, fixed: list[str]) -> None:
        """``p``'s check of the variables given to ``sample`` (a product holds a whole factor's fixed), over ``p``'s
        names: without it, the all-or-none check of a single distribution refused a renamed product given one
        factor's variables."""
        try:
            self.p._check_fixed([self._inverse.get(v, v) for v in fixed])
        except (ValueError, TypeError) as err:
            raise self._renamed_error(err) from err

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        try:
            out = self.p._sample(self._inner(x_dict), batch_n, reparam)
        except NotImplementedError as err:  # name the renamed distribution, not the inner one
            raise NotImplementedError(f"{self.prob_text}: {err}") from err
        except (ValueError, TypeError) as err:
            raise self._renamed_error(err) from err
        return self._outer(out)

    def _sample_n(self, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
        try:
            out = self.p._sample_n(self._inner(x_dict), self._inner(repeated), n, batch_n, reparam)
        except (ValueError, TypeError) as err:
            raise self._renamed_error(err) from err
        return self._outer(out)

    def _mean_values(self, x_dict: XDict, batch_n: int | None) -> XDict:
        try:
            out = self.p._mean_values(self._inner(x_dict), batch_n)
        except (ValueError, TypeError) as err:
            raise self._renamed_error(err) from err
        return {self._rename.get(k, k): v for k, v in out.items()}

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        try:
            return self.p.get_log_prob(self._inner(x_dict), sum_features)
        except NotImplementedError as err:
            raise NotImplementedError(f"{self.prob_text}: {err}") from err
        except (ValueError, TypeError) as err:
            raise self._renamed_error(err) from err

    def _log_prob_dims(self, x_dict: XDict, dims: Sequence[int]) -> Tensor:
        try:
            return self.p._log_prob_dims(self._inner(x_dict), dims)
        except (ValueError, TypeError) as err:
            raise self._renamed_error(err) from err

    def get_entropy(self, x_dict: Mapping | None = None, sum_features: bool = True,
                    feature_dims: Sequence[int] | None = None) -> Tensor:
        return self.p.get_entropy(self._given(x_dict, "get_entropy"), sum_features, feature_dims)

    def sample_mean(self, x_dict: Mapping | None = None) -> Tensor:
        return self.p.sample_mean(self._given(x_dict, "sample_mean"))

    def sample_variance(self, x_dict: Mapping | None = None) -> Tensor:
        return self.p.sample_variance(self._given(x_dict, "sample_variance"))

    @property
    def torch_family(self):  # noqa: ANN201 - see Distribution.torch_family
        return self.p.torch_family

    @property
    def closed_form_family(self):  # noqa: ANN201 - see Distribution.closed_form_family
        return self.p.closed_form_family

    def get_dist(self, x_dict: Mapping | None = None, independent: bool = True):  # noqa: ANN201
        return self.p.get_dist(self._given(x_dict, "get_dist"), independent)

    def kl_parts(self, x_dict: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        return self.p.kl_parts(self._inner(dict(x_dict)))

    def get_params(self, params_dict: Mapping | None = None, **kwargs: Any) -> dict[str, Tensor]:
        return self.p.get_params(self._given(params_dict, "get_params"))
