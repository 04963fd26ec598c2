r"""Pixyz's ``dist.graph``: a distribution's factors as a graph, with Pixyz's per-factor options.

``p.graph`` is a view of ``p`` (nothing is copied): its name is ``p``'s, its factors are ``p``'s factors, and
``graph.visible_graph()`` is the ``networkx`` graph of the variables that Pixyz draws (an edge from each
conditioning variable to each variable of a factor; names in ``$...$`` for LaTeX labels, or plain with
``dotmode=True`` and a ``texlbl`` attribute per node, for ``dot2tex``). kizuna's own picture of a model is
`kizuna.viz.render`.

``graph.set_option(options, var)`` gives the factors of a product that define ``var`` keyword arguments that their
``sample`` and ``get_log_prob`` calls take before the caller's (Pixyz's ``Factor.option``), e.g. ``batch_n`` and
``sample_shape`` for the factor that starts the ancestral draw; without ``var`` the options are the graph's own,
which the caller's arguments override (Pixyz's ``global_option``: so only options that are not arguments of the
call reach the factors). ``set_option({}, var)`` clears them. As in Pixyz, a single distribution's own ``sample``
and ``get_log_prob`` do not read its options: a product made from it takes them over (``p * q`` keeps every
operand's options, which the product's own then override). A renamed or marginalised product draws without them
and refuses them.

>>> import torch
>>> from kizuna.distributions import Normal
>>> p = Normal(var=["x"], cond_var=["y"], loc="y", scale=1.0) * Normal(var=["y"], loc=0.0, scale=1.0)
>>> p.graph.set_option(dict(batch_n=4, sample_shape=(2, 3)), ["y"])
>>> s = p.sample()
>>> s["y"].shape, s["x"].shape
(torch.Size([2, 3, 4]), torch.Size([2, 3, 4]))
>>> p.graph.set_option({}, ["y"])
>>> p.get_log_prob(s).shape
torch.Size([2])

The options are read by ``sample`` and ``get_log_prob`` called on the distribution, as Pixyz's programs call them.
A loss (`kizuna.losses`) does not read them: it draws and scores through the distributions' evaluation entry points
with its own options (``eval(..., batch_n=..., sample_mean=...)``), where Pixyz's losses, which call ``sample``,
would see them (docs/porting_from_pixyz.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kizuna.formula.expr import values_dict


class GraphOptions:
    """The options `DistGraph.set_option` stored on a distribution: the graph's own (``global_option``) and each
    factor's, by the factor's position in ``factors()``."""

    __slots__ = ("global_option", "factor_options")

    def __init__(self) -> None:
        self.global_option: dict[str, Any] = {}
        self.factor_options: dict[int, dict[str, Any]] = {}

    def empty(self) -> bool:
        return not self.global_option and not any(self.factor_options.values())

    def merged(self, index: int, call: Mapping[str, Any]) -> dict[str, Any]:
        """Pixyz's order: the graph's options, then the caller's arguments, then the factor's own."""
        return {**self.global_option, **call, **self.factor_options.get(index, {})}

    # -------------------------------------------------------------- sample
    def sample(self, dist: Any, x_dict: Mapping[str, Any] | None, return_all: bool, call: dict[str, Any]) -> dict:
        """A product's ``sample`` with the options: its factors in ancestral order, each with its own options, from
        the values drawn before it (Pixyz's ``DistGraph.sample``); a factor whose variables are given is held fixed,
        as without options."""
        factors = dist.factors()
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample", dist, dist.input_var)
        x_dict = dict(x_dict or {})
        dist._require(x_dict, dist.input_var)

        def draw(f: Any, values: dict[str, Any]) -> dict[str, Any]:
            opts = self.merged(factors.index(f), call)
            inputs = {k: values[k] for k in f.input_var if k in values}
            try:
                return f.sample(inputs, **{k: v for k, v in opts.items() if k != "return_all"}, return_all=False)
            except ValueError as e:
                shape, rows = opts.get("sample_shape"), opts.get("batch_n")
                # the cause: values this call drew, which carry the sample_shape, refused for their rows (a factor's
                # own wording: its parameters' or its conditioning values' batch size, "batch_n=... but ...")
                from kizuna.distributions.base import as_sample_shape  # (base imports this module)

                try:  # read as the factors read it: a number of draws of any integer type (numpy's, a 0-d tensor)
                    shape = () if shape is None else tuple(as_sample_shape("sample", shape))
                except (TypeError, ValueError):  # a sample_shape the factor refused for itself: its own message
                    raise e from None
                drawn = [v for k, v in inputs.items() if k not in x_dict and isinstance(v, torch.Tensor)
                         and tuple(v.shape[:len(shape)]) == shape] if shape else []
                if not (drawn and rows is not None and f"batch_n={rows} but" in str(e)):
                    raise
                raise ValueError(
                    f"{e}. With graph options a product passes the call's sample_shape={shape} to every factor "
                    f"(as Pixyz does), so {f.prob_text} is given draws that already have it, beside batch_n={rows}; "
                    "leave batch_n out (the draws fix the rows), or clear the options for draws of the whole product "
                    "(docs/porting_from_pixyz.md, graph options)") from e

        new = dist._ancestral(x_dict, draw)  # the product's own loop: order, variables held fixed, inputs required
        return {**x_dict, **new} if return_all else new

    # --------------------------------------------------------- log-density
    def log_prob(self, dist: Any, x_dict: Mapping[str, Any], call: dict[str, Any]) -> Any:
        """A product's ``get_log_prob`` with the options: the sum of its factors' log-densities, each computed with
        its own options (Pixyz's ``DistGraph``); `add_terms` names two that cannot be added. Where every factor sums
        its features (``sum_features`` without ``feature_dims``), they are made per draw as without options (draws
        with a ``sample_shape`` beside values given per row, `JointDistribution._summed_terms`)."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "get_log_prob", dist, dist.var + dist.input_var)
        factors = dist.factors()
        calls = [(f, self.merged(factors.index(f), call)) for f in dist._order]
        if all(kwargs.get("sum_features", True) and kwargs.get("feature_dims") is None for _, kwargs in calls):
            terms = dist._summed_terms(x_dict, calls)
        else:
            terms = [(f, f.get_log_prob(x_dict, **kwargs)) for f, kwargs in calls]
        return add_terms(dist, terms, "with these options")


def add_terms(dist: Any, terms: list[tuple[Any, Any]], how: str) -> Any:
    """The sum of the factors' log-densities ``terms`` (factor, value): values of one rank whose sizes agree or are 1
    (a constant factor's one row against the batch); values of different ranks or sizes are named, since a
    broadcast between them adds entries that do not belong together (Pixyz: 'have different sizes')."""
    (first, total), rest = terms[0], terms[1:]
    for f, term in rest:
        a, b = tuple(total.shape), tuple(term.shape)
        if len(a) != len(b) or any(m != n and 1 not in (m, n) for m, n in zip(a, b)):
            raise ValueError(f"{dist.prob_text}: {how}, the log-density of {first.prob_text} has shape {a} and that of "
                             f"{f.prob_text} {b}; they cannot be added entry by entry (score the factors one by one)")
        total = total + term
    return total


def inherited(operands: Sequence[Any], flat: Sequence[Any]) -> GraphOptions | None:
    """The options of a product of ``operands`` (its factors ``flat``): each operand's options, for its factors, and
    the operands' own (Pixyz's ``DistGraph.united``, which keeps each factor's options)."""
    out = GraphOptions()
    for d in operands:
        options = d._graph_options
        if options is None:
            continue
        out.global_option.update(options.global_option)
        for i, f in enumerate(d.factors()):
            if options.factor_options.get(i):
                out.factor_options[next(j for j, g in enumerate(flat) if g is f)] = dict(options.factor_options[i])
    return None if out.empty() else out


class _Shown:
    """The names of the distribution a view shows (``_shown``), as Pixyz's factors and graphs give them."""

    _shown: Any

    @property
    def var(self) -> list[str]:
        return self._shown.var

    @property
    def cond_var(self) -> list[str]:
        return self._shown.cond_var

    @property
    def input_var(self) -> list[str]:
        return self._shown.input_var

    @property
    def prob_text(self) -> str:
        return self._shown.prob_text


class Factor(_Shown):
    """One factor of a distribution's graph (Pixyz's ``Factor``): the factor's distribution (``dist``) and the
    options its ``sample`` and ``get_log_prob`` take (``option``, stored on the graph's distribution)."""

    def __init__(self, owner: Any, index: int, dist: Any) -> None:
        self._owner, self._index, self.dist = owner, index, dist
        self._shown = dist

    @property
    def option(self) -> dict[str, Any]:
        options = self._owner._graph_options
        return {} if options is None else dict(options.factor_options.get(self._index, {}))

    @option.setter
    def option(self, option: Mapping[str, Any]) -> None:
        _set(self._owner, None, {self._index: option})

    def __str__(self) -> str:
        return f"{self.dist.prob_text}:\n{self.dist!r}"

    def __repr__(self) -> str:
        return f"Factor({self.dist.prob_text}, option={self.option})"


def _check_options(option: Any, where: str) -> dict[str, Any]:
    if not isinstance(option, Mapping):
        raise TypeError(f"{where}: the options are a dict of keyword arguments, got {type(option).__name__}")
    bad = [k for k in option if not isinstance(k, str)]
    if bad:
        raise TypeError(f"{where}: option names are strings, got {bad}")
    return dict(option)


def _set(dist: Any, global_option: Mapping[str, Any] | None, factor_options: Mapping[int, Mapping[str, Any]]) -> None:
    """Store options on ``dist`` (none left: the attribute is removed, so its calls take the usual path)."""
    options = dist._graph_options or GraphOptions()
    if global_option is not None:
        options.global_option = _check_options(global_option, f"{dist.prob_text}.graph.set_option")
    for index, option in factor_options.items():
        options.factor_options[index] = _check_options(option, f"{dist.prob_text}.graph.set_option")
    dist._graph_options = None if options.empty() else options


class DistGraph(_Shown):
    """Pixyz's ``dist.graph`` for ``dist``: see the module docstring."""

    def __init__(self, dist: Any) -> None:
        self._dist = self._shown = dist

    @property
    def name(self) -> str:
        return self._dist.name

    @name.setter
    def name(self, name: str) -> None:
        self._dist.name = name

    @property
    def global_option(self) -> dict[str, Any]:
        options = self._dist._graph_options
        return {} if options is None else dict(options.global_option)

    def _graph_factors(self) -> list[Any]:
        factors = self._dist.factors()
        if len(factors) > 1 and not hasattr(self._dist, "_order"):  # a renamed or marginalised product
            raise ValueError(f"{self._dist.prob_text}: graph options are kept by products and single distributions; "
                             f"this is a {type(self._dist).__name__}, which draws and scores without them: renaming "
                             "or marginalising a distribution discards its graph options (set them on the renamed or "
                             "marginalised distribution's product with others instead)")
        return factors

    def factors(self, sorted: bool = False) -> list[Factor]:  # noqa: A002 - Pixyz's argument name
        """The factors (``sorted``: in the order a draw visits them)."""
        factors = self._dist.factors()
        if sorted and hasattr(self._dist, "_order"):
            return [Factor(self._dist, factors.index(f), f) for f in self._dist._order]
        return [Factor(self._dist, i, f) for i, f in enumerate(factors)]

    def _factors_from_variable(self, var_name: str) -> list[Factor]:
        """The factors that define ``var_name`` (Pixyz's private method, which its tests use)."""
        found = [Factor(self._dist, i, f) for i, f in enumerate(self._graph_factors()) if var_name in f.var]
        if not found:
            raise ValueError(f"{self._dist.prob_text}: no factor defines {var_name!r}; its variables are "
                             f"{self._dist.var}")
        return found

    def set_option(self, option_dict: Mapping[str, Any], var: Sequence[str] = ()) -> None:
        """Give the factors that define ``var`` these keyword arguments for their ``sample`` and ``get_log_prob``
        (taken before the caller's); without ``var``, the graph's own options (the caller's win). ``{}`` clears."""
        if isinstance(var, str):
            var = [var]
        self._graph_factors()  # a renamed or marginalised product: refused
        if not var:
            _set(self._dist, option_dict, {})
            return
        targets = {f._index for name in var for f in self._factors_from_variable(name)}
        _set(self._dist, None, {i: option_dict for i in targets})

    @property
    def has_reparam(self) -> bool:
        return self._dist.has_reparam

    def visible_graph(self, dotmode: bool = False) -> Any:
        """The variables as a ``networkx.DiGraph`` (Pixyz's): an edge from each conditioning variable of a factor to
        each of its variables, names as ``$name$`` (``dotmode``: plain names, the LaTeX one as ``texlbl``)."""
        import networkx as nx  # torch's own dependency

        graph = nx.DiGraph()
        for f in self._dist.factors():
            for v in f.var:
                for c in f.cond_var:
                    graph.add_edge(c, v) if dotmode else graph.add_edge(f"${c}$", f"${v}$")
        if dotmode:
            for v in list(graph):
                graph.add_node(v, texlbl=f"${v}$")
        return graph

    def __str__(self) -> str:
        factors = "\n".join(str(f) for f in self.factors(sorted=True))
        return f"Distribution:\n  {self._dist}\nFactors:\n{factors}"

    def __repr__(self) -> str:
        return f"DistGraph({self._dist.prob_text})"
