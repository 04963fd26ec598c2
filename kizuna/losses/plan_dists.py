"""Plan steps for distributions: parameters, log-densities, draws and analytic KL (see `kizuna.losses.plan`).

Only `TorchDistribution` subclasses that keep its evaluation methods, and products of them,
are planned; their parameters for the same input slots are computed once per run, as the
evaluation memo (`kizuna.distributions.memo`) does for ``eval``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import distributions as D
from torch import nn
from torch.distributions import constraints

from kizuna.distributions import kernels
from kizuna.distributions.base import Distribution, repeat_batch
from kizuna.distributions.joint import JointDistribution
from kizuna.distributions.torch_dist import _VALIDATE, TorchDistribution
from kizuna.losses.plan import Builder, Unplannable

_KEPT = ("_log_prob", "_sample", "get_log_prob", "_params", "_compute_params", "_torch_dist", "_new_torch_dist",
         "_dist_from", "_draw_from", "_log_prob_from", "_require", "_check_forward")


def _is_torch(d: Any) -> bool:
    cls = type(d)
    return isinstance(d, TorchDistribution) and all(getattr(cls, m) is getattr(TorchDistribution, m) for m in _KEPT)


def _is_joint(d: Any) -> bool:
    cls = type(d)
    return cls is JointDistribution and all(_is_torch(f) for f in d.factors())


def _need(d: Distribution, env: dict[str, int], names: list[str]) -> None:
    if any(n not in env for n in names):
        raise Unplannable(f"{d.prob_text} is missing inputs")  # eval raises the detailed error


# ------------------------------------------------------------------ parameters and checks
def params_slot(b: Builder, d: Any, env: dict[str, int]) -> int:
    """The slot holding ``(params, batched)`` of ``d`` for the inputs in ``env`` (one per input slots)."""
    if not _is_torch(d):
        raise Unplannable(f"{type(d).__name__} has no plan step")
    _need(d, env, d._cond_var)
    _constraints(d)
    cond = [(c, env[c]) for c in d._cond_var]
    key = (id(d), *(i for _, i in cond))
    if key not in b.params:
        b.params[key] = out = b.slot()
        b.add(_params_step(d, cond, out, b.traced))
    return b.params[key]


def _params_step(d: TorchDistribution, cond: list[tuple[str, int]], out: int, traced: bool) -> Any:
    compute = d._compute_params
    if not cond and not d._uses_forward and not d._from_var and not traced:
        names = [f"{k}_" for k in d._const_names]
        last: list[Any] = [None, None]

        def constants(s: list[Any]) -> None:  # the same tensors, unchanged: the same params object
            key = [(id(t), t._version) for t in map(d.__getattr__, names)]  # in-place changes bump _version
            if key != last[0]:
                last[0], last[1] = key, compute({})
            s[out] = last[1]

        return constants
    if d._uses_forward and not (d._const_names or d._static or d._from_var):
        allowed = frozenset(d.param_names)

        def from_forward(s: list[Any]) -> None:  # forward's dict as is (the usual conditional)
            params = d(**{c: s[i] for c, i in cond})
            if type(params) is not dict or not params.keys() <= allowed:
                params = dict(d._check_forward(params))  # raises the message of eval on a bad result
            s[out] = (params, True)

        return from_forward

    def step(s: list[Any]) -> None:
        s[out] = compute({c: s[i] for c, i in cond})

    return step


_CONSTRAINTS: dict[type, dict[str, list[constraints.Constraint]]] = {}
_DEPENDENT = type(constraints.dependent)  # constraints.is_dependent, which torch.compile does not trace


def _constraints(d: TorchDistribution) -> dict[str, list[constraints.Constraint]]:
    """The checks of each parameter of ``d``'s class (looked up when a plan is built, not per step)."""
    cls = type(d)
    if cls not in _CONSTRAINTS:
        table = d.torch_class.arg_constraints
        found: dict[str, list[constraints.Constraint]] = {}
        for key in (*d.param_names, *d.param_constraints):
            c = table.get(key) if isinstance(table, dict) else None
            found[key] = [c] if c is not None and not constraints.is_dependent(c) else []
            if key in d.param_constraints:
                found[key].append(d.param_constraints[key])
        _CONSTRAINTS[cls] = found
    return _CONSTRAINTS[cls]


def _wants_check(d: TorchDistribution, batched: bool) -> bool:
    """`TorchDistribution._needs_validation` without the global switch (the caller decided)."""
    return batched or not d._constants_checked or any(
        isinstance(getattr(d, f"{k}_"), nn.Parameter) for k in d._const_names)


def validate(s: list[Any], d: TorchDistribution, pslot: int) -> None:
    """Check the parameters in ``pslot`` once per run (or append the checks to the deferred list)."""
    cache, deferred = s[0], s[1]
    if (deferred is None and not _VALIDATE[0]) or ("v", pslot) in cache:
        return
    cache[("v", pslot)] = True
    params, batched = s[pslot]
    table = _CONSTRAINTS[type(d)]
    if deferred is not None:
        if _wants_check(d, batched):
            deferred.extend(kernels.flags(c, v) for k, v in params.items() for c in table.get(k, ()))
        return
    if not d._needs_validation(batched):
        return
    for key, value in params.items():
        for c in table.get(key, ()):
            if not kernels.satisfies(c, value):
                d._build(params, True)  # raises the detailed message of eval
                raise ValueError(f"{d.prob_text}: parameter '{key}' of {type(d).__name__} must satisfy {c}")
    if not batched:
        d._constants_checked = True


def torch_dist(s: list[Any], d: TorchDistribution, pslot: int, independent: bool) -> D.Distribution:
    """The torch distribution of the parameters in ``pslot``, built once per run."""
    key = (pslot, independent)
    dist = s[0].get(key)
    if dist is None:
        params, batched = s[pslot]
        if s[1] is not None:
            validate(s, d, pslot)
            dist = d._dist_from(params, batched, independent, validate=False)
        else:
            dist = d._dist_from(params, batched, independent)
        s[0][key] = dist
    return dist


def _value_checks(s: list[Any], d: TorchDistribution, support: constraints.Constraint | None, value: Any) -> bool:
    """Check a scored value (kernel path); False sends the caller to torch's path for the error."""
    if s[1] is not None:
        if d.validate_value and support is not None:
            s[1].append(kernels.flags(support, value))
        s[1].extend(d._support_flags(value))
        return True
    if d.validate_value and support is not None and d._needs_validation(True) and \
            not kernels.satisfies(support, value):
        return False
    d._check_support(value)
    return True


# ------------------------------------------------------------------------ log-density
def log_prob_slot(b: Builder, d: Any, env: dict[str, int], sum_features: bool) -> int:
    """The slot of ``d.get_log_prob(values, sum_features)``."""
    _need(d, env, d.var + d.input_var)
    if _is_joint(d):
        if not sum_features and len(d.factors()) > 1:
            raise Unplannable("sum_features=False on a product")
        parts = [log_prob_slot(b, f, env, sum_features) for f in d.factors()]
        out = b.slot()

        def total(s: list[Any]) -> None:
            value = s[parts[0]]
            for i in parts[1:]:
                value = value + s[i]
            s[out] = value

        b.add(total)
        return out
    pslot = params_slot(b, d, env)
    vslot, out = env[d._var[0]], b.slot()
    names, per_entry, summed = kernels.LOG_PROB.get(d.torch_class, ((), None, None))
    kernel = summed if sum_features else per_entry
    support = d.torch_class.support if kernel is not None else None

    def step(s: list[Any]) -> None:
        params, batched = s[pslot]
        value = s[vslot]
        if kernel is not None and batched and isinstance(value, torch.Tensor):
            args = kernels.plain_args(params, names)
            if args is not None and value.shape == args[0].shape:
                if s[1] is None and not _VALIDATE[0]:
                    s[out] = kernel(value, *args)
                    return
                validate(s, d, pslot)
                if _value_checks(s, d, support, value):
                    s[out] = kernel(value, *args)
                    return
        dist = torch_dist(s, d, pslot, sum_features)
        if s[1] is not None and isinstance(value, torch.Tensor):
            if d.validate_value and not isinstance(dist.support, _DEPENDENT):
                s[1].append(kernels.flags(dist.support, value))
            s[1].extend(d._support_flags(value))
        s[out] = d._log_prob_from(dist, batched, value)

    b.add(step)
    return out


# ------------------------------------------------------------------------------ draws
def draw(b: Builder, p: Any, env: dict[str, int], n: int, reparam: bool) -> dict[str, int]:
    """Plan of `kizuna.losses.expectation.draw`: the env with ``p``'s new draws (inputs repeated ``n`` times)."""
    if not (_is_torch(p) or _is_joint(p)):
        raise Unplannable(f"{type(p).__name__} has no plan step")
    own, inputs = set(p.var), set(p.input_var)
    base: dict[str, int] = {}
    for k, i in env.items():
        if k in inputs or k not in own:
            base[k] = i if n == 1 else _repeat(b, i, n)
    _need(p, base, p.input_var)
    groups = ([base[k] for k in p.input_var], list(base.values()))

    def batch_n(s: list[Any]) -> int:  # batch_size_of(base, p.input_var) or batch_size_of(base) or n
        for group in groups:
            rows = next((s[i].shape[0] for i in group if isinstance(s[i], torch.Tensor) and s[i].dim() > 0), 0)
            if rows:
                return rows
        return n

    values = dict(base)
    factors = p._order if _is_joint(p) else [p]
    for f in factors:
        if all(v in values for v in f.var) and not set(f.var) & set(f.input_var):
            continue  # held fixed, as JointDistribution._sample does
        _need(f, values, f.input_var)
        values[f._var[0]] = _sample_slot(b, f, dict(values), batch_n, reparam)
    return values


def _repeat(b: Builder, i: int, n: int) -> int:
    out = b.slot()

    def step(s: list[Any]) -> None:
        s[out] = repeat_batch(s[i], n)

    b.add(step)
    return out


def _sample_slot(b: Builder, d: TorchDistribution, values: dict[str, int], batch_n: Callable[[list[Any]], int],
                 reparam: bool) -> int:
    pslot, out = params_slot(b, d, values), b.slot()
    names, kernel = kernels.RSAMPLE.get(d.torch_class, ((), None)) if reparam and d.has_reparam else ((), None)
    items = list(values.items())

    def step(s: list[Any]) -> None:
        params, batched = s[pslot]
        rows = batch_n(s)
        if kernel is not None and batched:
            args = kernels.plain_args(params, names)
            if args is not None and rows == args[0].shape[0]:
                validate(s, d, pslot)
                s[out] = kernel(*args)
                return
        dist = torch_dist(s, d, pslot, True)
        s[out] = d._draw_from(dist, batched, {k: s[i] for k, i in items}, rows, reparam)

    b.add(step)
    return out

