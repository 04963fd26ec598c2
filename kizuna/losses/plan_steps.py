"""Plan steps of the loss classes (see `kizuna.losses.plan`): ``LOSS_STEPS[type(node)]``.

Each entry plans one node class exactly as its ``_value`` evaluates (subclasses that change
``_value`` are not in the table, so they are never planned by mistake).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import distributions as D

from kizuna.distributions import kernels
from kizuna.distributions.torch_dist import _VALIDATE
from kizuna.losses import operators as ops
from kizuna.losses.base import Loss
from kizuna.losses.divergences import KullbackLeibler, with_row
from kizuna.losses.elbo import ELBO, IWAE
from kizuna.losses.expectation import Expectation, average
from kizuna.losses.log_prob import LogProb, Prob
from kizuna.losses.plan import Builder, Unplannable
from kizuna.losses.plan_dists import draw, log_prob_slot, params_slot, torch_dist, validate
from kizuna.losses.values import ConstantVar, Parameter, ValueLoss

Planner = Callable[[Builder, Any, dict[str, int], dict[int, int]], int]


def _unary(b: Builder, node: ops._Unary, env: dict[str, int], results: dict[int, int]) -> int:
    a, out, op = b.loss(node.loss1, env, results), b.slot(), node._op

    def step(s: list[Any]) -> None:
        s[out] = op(s[a])

    b.add(step)
    return out


def _binary(b: Builder, node: ops._Binary, env: dict[str, int], results: dict[int, int]) -> int:
    a = b.loss(node.loss1, env, results)
    c = b.loss(node.loss2, env, results)
    out, op = b.slot(), node._op

    def step(s: list[Any]) -> None:
        s[out] = op(s[a], s[c])

    b.add(step)
    return out


def _value(b: Builder, node: ValueLoss, env: dict[str, int], results: dict[int, int]) -> int:
    out = b.slot()

    def step(s: list[Any]) -> None:
        s[out] = node._value(None)  # type: ignore[arg-type]  # a constant reads no context

    b.add(step)
    return out


def _parameter(b: Builder, node: Parameter, env: dict[str, int], results: dict[int, int]) -> int:
    name = node._input_var[0]
    if name not in env:
        raise Unplannable(f"{name} is missing")
    i, out = env[name], b.slot()

    def step(s: list[Any]) -> None:
        s[out] = torch.as_tensor(s[i])

    b.add(step)
    return out


def _constant_var(b: Builder, node: ConstantVar, env: dict[str, int], results: dict[int, int]) -> int:
    child = dict(env)
    for name, value in node.constant_var.items():
        child[name] = j = b.slot()

        def step(s: list[Any], j: int = j, value: Any = value) -> None:
            s[j] = value

        b.add(step)
    return b.loss(node.base_loss, child, {})


def _log_prob(b: Builder, node: LogProb, env: dict[str, int], results: dict[int, int]) -> int:
    out = log_prob_slot(b, node.p, env, node.sum_features)
    if type(node) is LogProb:
        return out
    prob = b.slot()

    def step(s: list[Any]) -> None:
        s[prob] = s[out].exp()

    b.add(step)
    return prob


def _expectation(b: Builder, node: Expectation, env: dict[str, int], results: dict[int, int]) -> int:
    n = math.prod(node.sample_shape)
    values = draw(b, node.p, env, n, reparam=True)
    f = b.loss(node.f, values, {})
    score = [log_prob_slot(b, g, values, True) for g in node.p.factors() if not g.has_reparam]
    if n == 1 and not score:
        return f  # a single pathwise draw: the expectation's value is f's
    out = b.slot()

    def step(s: list[Any]) -> None:
        value = s[f]
        if score:
            logp = s[score[0]]
            for i in score[1:]:
                logp = logp + s[i]
            value = value + value.detach() * (logp - logp.detach())
        s[out] = average(value, n)

    b.add(step)
    return out


def _iwae(b: Builder, node: IWAE, env: dict[str, int], results: dict[int, int]) -> int:
    values = draw(b, node.q, env, node.k, reparam=True)
    lp, lq = log_prob_slot(b, node.p, values, True), log_prob_slot(b, node.q, values, True)
    out, k = b.slot(), node.k

    def step(s: list[Any]) -> None:
        log_w = (s[lp] - s[lq]).reshape(k, -1)
        s[out] = torch.logsumexp(log_w, 0) - math.log(k)

    b.add(step)
    return out


def _kl(b: Builder, node: KullbackLeibler, env: dict[str, int], results: dict[int, int]) -> int:
    if node.method == "monte_carlo":
        return b.loss(node._mc, env, results)
    p, q, dim = node.p, node.q, node.dim
    pp, qp = params_slot(b, p, env), params_slot(b, q, env)
    names, kernel = kernels.KL.get((p.torch_class, q.torch_class), ((), None)) if dim is None else ((), None)
    standard = (p.torch_class, q.torch_class) == (D.Normal, D.Normal)
    decided: list[Any] = [None, None]  # q's constant parameters -> their kernel arguments (or None)
    out = b.slot()

    def constant_args(params: dict[str, Any], features: torch.Size, deferred: bool) -> Any:
        """The kernel arguments of constant q (``"standard"`` for N(0, 1)); None: use torch."""
        args = [params.get(n) for n in names]
        if len(params) != len(names) or not all(isinstance(a, torch.Tensor) and a.is_floating_point() for a in args):
            return None
        if (q._features_shape or torch.broadcast_shapes(*(a.shape for a in args))) != features:
            return None
        if standard and not deferred and not any(a.requires_grad for a in args) \
                and bool((args[0] == 0).all()) and bool((args[1] == 1).all()):
            return "standard"
        return args

    def q_args(s: list[Any], shape: torch.Size) -> Any:
        params, batched = s[qp]
        if batched:
            args = kernels.plain_args(params, names)
            return args if args is not None and args[0].shape == shape else None
        if b.traced:
            validate(s, q, qp)
            return constant_args(params, shape[1:], True)
        # constants: the same params object while unchanged, so decide (and check) once
        key = (id(params), shape, s[1] is not None, _VALIDATE[0])
        if decided[0] != key:
            validate(s, q, qp)
            decided[0], decided[1] = key, (params, constant_args(params, shape[1:], key[2]))
        return decided[1][1]

    def step(s: list[Any]) -> None:
        params, batched = s[pp]
        if kernel is not None and batched:
            p_args = kernels.plain_args(params, names)
            if p_args is not None:
                validate(s, p, pp)  # p before q, as eval builds them
            qa = q_args(s, p_args[0].shape) if p_args is not None else None
            if qa is not None:
                if s[qp][1]:
                    validate(s, q, qp)
                value = kernels.kl_normal_standard(*p_args) if qa == "standard" else kernel(*p_args, *qa)
                s[out] = kernels.sum_features(value)
                return
        independent = dim is None
        kl = D.kl_divergence(torch_dist(s, p, pp, independent), torch_dist(s, q, qp, independent))
        s[out] = with_row(kl) if independent else kl.sum(dim=dim)

    b.add(step)
    return out


LOSS_STEPS: dict[type[Loss], Planner] = {
    **{cls: _unary for cls in (ops.NegLoss, ops.AbsLoss, ops.BatchMean, ops.BatchSum)},
    **{cls: _binary for cls in (ops.AddLoss, ops.SubLoss, ops.MulLoss, ops.DivLoss, ops.PowLoss, ops.MinLoss,
                                ops.MaxLoss)},
    ValueLoss: _value,
    Parameter: _parameter,
    ConstantVar: _constant_var,
    LogProb: _log_prob,
    Prob: _log_prob,
    Expectation: _expectation,
    ELBO: _expectation,
    IWAE: _iwae,
    KullbackLeibler: _kl,
}
