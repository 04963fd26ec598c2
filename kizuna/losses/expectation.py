r"""Expectations under a distribution: `Expectation` and `REINFORCE`.

.. math:: \mathbb{E}_{p(z|x)}[f(x, z)] \approx \frac{1}{S}\sum_{s=1}^S f(x, z_s),\quad z_s \sim p(z|x)

Gradients: factors of ``p`` with a reparameterised sampler are differentiated through the
draw (pathwise); the others get the score-function term
:math:`\mathbb{E}[f\,\nabla \log p]` through the surrogate
:math:`f + \bar f\,(\log p - \overline{\log p})` (bars: detached), whose value equals
:math:`f` and whose gradient is the unbiased estimator (Williams 1992). A `MixtureOfNormal` with learnable weights is
reparameterised given its chosen expert only: its weights get the score term of the choice, with
:math:`\log q(z)` at fixed experts as :math:`\log p` (`weights_score`). Over a marginal
:math:`p(x) = \int p(x, z)\,dz` the joint's factors are scored at the joint draw that the marginal's draw came from
(:math:`\nabla \log p(x, z)`, an unbiased score for :math:`\mathbb{E}_{p(x)}[f]`) while ``f`` sees ``x`` only.
``reparam=False`` (Pixyz's argument) draws every factor without the pathwise gradient: each gets the score-function
term, as `REINFORCE` does (Pixyz's draws then carry no gradient to ``p``'s parameters at all). A relaxed family
(`RelaxedBernoulli`, `RelaxedCategorical`, renamed or not) is refused there: it scores values with the discrete
likelihood, whose score at a relaxed draw has a non-zero mean (Pixyz's estimator is biased), and a float32 draw at a
low temperature rounds to the vertices, where its Concrete density is lost.

Only first derivatives are estimated for the score-function terms: the surrogate's second derivative is
:math:`\nabla^2 f + \bar f\,\nabla^2 \log p`, whose expectation lacks the terms
:math:`\mathbb{E}[\nabla f\,\nabla \log p^\top + \nabla \log p\,\nabla f^\top + f\,\nabla \log p\,\nabla \log p^\top]`
of :math:`\nabla^2 \mathbb{E}_p[f]`. Differentiating a gradient again (``torch.autograd.grad(..., create_graph=True)``:
gradient penalties, Hessian-vector products, MAML) through a score-function term does not estimate the second
derivative (for a Bernoulli with logit 0.4 and ``f = 2 - 3y``: -0.049 where it is +0.142); the pathwise terms are
differentiated exactly, to any order.

With ``sample_shape``, ``f`` is averaged over the draws as Pixyz does, once per draw of the batch: a per-row ``f`` is
evaluated once on the draws laid out as ``n x batch`` rows, the values given and a tensor constant of one value per
row (``LogProb(p) * w``, ``w`` of shape ``(batch,)``) repeated alike (and gets one score term per row); an ``f`` reduced
over the batch (``f.sum()``, ``g(f.mean())``, ``(f - f.mean())**2``) is evaluated on each draw's batch, so its value
does not depend on the number of draws, and its score term is that draw's (the sum over its rows), so the gradient's
variance falls with the draws. A linear batch reduction (``E_q[f.mean()]``, ``E_q[a * f.sum() - g.mean()]``) takes
the expectation inside it: the same value with the per-row score terms of ``E_q[f].mean()`` (with a number as
`REINFORCE`'s baseline too). The batch reductions
written with ``.mean()`` / ``.sum()`` are found in the formula; a term of one's own that reduces over the batch inside
its ``_value`` is seen only when its value is not one per row.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from kizuna._data import warn_user
from kizuna._text import symbol
from kizuna.distributions.base import (
    Distribution,
    batch_size_of,
    repeat_batch,
    repeat_rows_lazily,
    single_factors,
)
from kizuna.distributions.marginal import repeat_hidden
from kizuna.distributions.moe import weights_score
from kizuna.distributions.relaxed import _DiscreteScoring
from kizuna.distributions.replace import ReplaceVarDistribution
from kizuna.formula.expr import (
    AddLoss,
    BatchMean,
    BatchSum,
    DivLoss,
    EvalContext,
    Loss,
    MulLoss,
    Named,
    NegLoss,
    SubLoss,
    Tensor,
    ValueLoss,
    _bare,
    _Binary,
    _Unary,
    as_loss,
)
from kizuna.formula.memo import release_step, step_mark


def draw(p: Distribution, ctx: EvalContext, n: int, reparam: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """``n`` draws of ``p`` per row given the context's values (its parameters computed once per row).

    Returns (the context's values repeated ``n`` times along the batch with the draws, the draws);
    without gradients a large value is repeated lazily (`RepeatedRows`: scored without the copy);
    the draws are also recorded in ``ctx.samples`` (shape ``(n, batch, ...)`` when ``n > 1``). With
    the evaluation option ``sample_mean=True`` the draws are the means; ``batch_n`` sets the rows of
    a distribution without batched inputs.
    """
    names = p.input_var
    given = ctx.values
    if any(map(given.__contains__, p._var)):  # earlier values of the drawn variables are not its inputs
        own, inputs = set(p._var), set(names)
        given = {k: v for k, v in given.items() if k in inputs or k not in own}
    if not all(map(given.__contains__, names)):
        p._require(given, names)  # names what is missing
    options = ctx.options
    batch_n = options.get("batch_n") if options else None
    if batch_n is None:
        batch_n = batch_size_of(given, names)
        if batch_n is None:  # (not `or`: 0 rows given are the batch, not a missing one)
            batch_n = batch_size_of(given)
    repeated = given if n == 1 else {k: repeat_rows_lazily(v, n) for k, v in given.items()}
    if options and options.get("sample_mean"):
        means = p._mean_values(given, batch_n)
        new = {k: repeat_batch(v, n) for k, v in means.items()}
        if n > 1:  # a marginal's hidden means, recorded with its means, go with their copies
            repeat_hidden(means, new, n)
    elif n == 1:  # what `_sample_n` does for one draw, without its call
        new = p._sample(given, batch_n, reparam)
    else:
        new = p._sample_n(given, repeated, n, batch_n, reparam)
    if n == 1:
        ctx.samples.update(new)
    else:
        for k, v in new.items():
            ctx.samples[k] = v.reshape(n, v.shape[0] // n, *v.shape[1:])
    return {**repeated, **new}, new


def _per_row(score: Tensor, f: Tensor) -> Tensor:
    """A per-row score-function term shaped to multiply ``f``: one row's term over all of that row's entries when ``f``
    has per-feature dimensions (it broadcast along the last dimension instead, pairing entry j with row j). An ``f``
    that is one number (a term of one's own reduced over the rows of one draw) is a function of every row's draw
    together: its score term is the sum of every row's (broadcast per row, it was 1 / rows of the gradient, and the
    value came back one per row)."""
    if f.dim() == 0:
        return score.sum()
    extra = f.dim() - score.dim()
    return score.reshape(*score.shape, *([1] * extra)) if extra > 0 and score.dim() > 0 else score


def _baseline_like(b: Tensor, f: Tensor, loss: REINFORCE) -> Tensor:
    """The values ``b`` of a baseline given as a loss (detached) laid out against the values ``f`` of ``f`` (per row, or
    per draw), each row's baseline over all of that row's entries as `_per_row` lays out a score term; a baseline
    that does not broadcast to ``f``'s shape (it would change the value's shape) is refused."""
    b = b.detach()
    if f.dim() and b.dim():
        b = _per_row(b, f)
    try:
        fits = torch.broadcast_shapes(b.shape, f.shape) == f.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"{loss}: the baseline {loss.baseline} gives values of shape {tuple(b.shape)} where f gives "
                         f"{tuple(f.shape)}: a baseline must be one number, or one value per value of f (per row for "
                         "f per row, one number per draw for f reduced over the batch)")
    return b


def _is_number(value: Any) -> bool:
    """A number that ``float()`` takes (a Python or numpy number, a one-element array or tensor), not a string or a
    bool."""
    if isinstance(value, (str, bytes, bool)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def average(value: Tensor, n: int) -> Tensor:
    """Mean over the ``n`` sample copies of a per-row value of batch ``n*B``."""
    if n == 1 or value.dim() == 0:
        return value
    return value.reshape(n, value.shape[0] // n, *value.shape[1:]).mean(0)


# How the value of ``f`` depends on the rows of one draw (`_kind`): a constant; one value per row (from that row's
# draw); reduced over the batch (one number per draw); or a mix of the two (``(f - f.mean())**2``, or a term with a
# batch reduction inside, such as a nested expectation of a reduced ``f``), evaluated draw by draw.
_CONST, _ROW, _REDUCED, _MIXED = "const", "row", "reduced", "mixed"
_REDUCTIONS = (BatchMean, BatchSum)


def _kind(node: Loss, memo: dict[int, str]) -> str:
    """The `_CONST` / `_ROW` / `_REDUCED` / `_MIXED` kind of ``node`` (see above), walking the arithmetic nodes; a term
    (``LogProb``, ``KullbackLeibler``, ...) is one value per row unless a batch reduction is written inside it."""
    key = id(node)
    if key in memo:
        return memo[key]
    if isinstance(node, ValueLoss):
        kind = _ROW if isinstance(node.value, Tensor) and node.value.dim() else _CONST
    elif isinstance(node, _REDUCTIONS):
        kind = _kind(node.loss1, memo)
        kind = _REDUCED if kind == _ROW else kind
    elif isinstance(node, (_Unary, _Binary)):
        kinds = {_kind(child, memo) for child in node.subterms()} - {_CONST}
        kind = _CONST if not kinds else kinds.pop() if len(kinds) == 1 else _MIXED
    else:
        kind = _MIXED if any(isinstance(d, _REDUCTIONS) for d in node.nodes()) else _ROW
    memo[key] = kind
    return kind


def _linear(node: Loss, memo: dict[int, str]) -> bool:
    """Whether ``node`` (of kind `_REDUCED` or `_CONST`) is a linear combination, with constant coefficients, of batch
    reductions of per-row values: ``f.mean()``, ``a * f.sum() - g.mean() / 2``. Its expectation is that of the per-row
    values, reduced (the expectation goes inside)."""
    kind = _kind(node, memo)
    if kind == _CONST:
        return True
    if isinstance(node, _REDUCTIONS):
        return _kind(node.loss1, memo) == _ROW or _linear(node.loss1, memo)
    if isinstance(node, Named):  # (a name hands on its loss's value)
        return _linear(_bare(node), memo)
    if isinstance(node, NegLoss):
        return _linear(node.loss1, memo)
    if isinstance(node, (AddLoss, SubLoss)):
        return _linear(node.loss1, memo) and _linear(node.loss2, memo)
    if isinstance(node, MulLoss):
        k1, k2 = _kind(node.loss1, memo), _kind(node.loss2, memo)
        return (k1 == _CONST and _linear(node.loss2, memo)) or (k2 == _CONST and _linear(node.loss1, memo))
    if isinstance(node, DivLoss):
        return _kind(node.loss2, memo) == _CONST and _linear(node.loss1, memo)
    return False


def _reductions(node: Loss, memo: dict[int, str], out: list[tuple[Loss, bool]], seen: set[int]) -> list[Any]:
    """The batch reductions among the arithmetic nodes of ``node``, inner ones first, each with whether it reduces a
    per-row value (or numbers already reduced)."""
    if id(node) not in seen and isinstance(node, (_Unary, _Binary)):
        seen.add(id(node))
        for child in node.subterms():
            _reductions(child, memo, out, seen)
        if isinstance(node, _REDUCTIONS) and _kind(node.loss1, memo) != _CONST:  # (a constant's is taken as it is)
            out.append((node, _kind(node.loss1, memo) == _ROW))
    return out


def _block_reduce(node: Loss, value: Tensor, n: int) -> Tensor:
    """The batch reduction ``node`` (`BatchMean` / `BatchSum`) of ``value`` taken within each of the ``n`` draws: one
    number per draw, ``(n,)``, for a per-row value of ``n * batch`` rows, or for ``(n,)`` numbers already reduced."""
    if isinstance(node, BatchMean):
        if not value.numel():
            node._empty(value)  # the message of the batch mean of an empty batch
        if not (value.is_floating_point() or value.is_complex()):
            value = value.to(torch.get_default_dtype())  # (as BatchMean averages an integer-valued term)
        return value.reshape(n, value.numel() // n).mean(1)
    return value.reshape(n, value.numel() // n).sum(1)


def _rows(value: Any) -> int | None:
    """The leading dimension of a tensor (None for a number)."""
    return value.shape[0] if isinstance(value, Tensor) and value.dim() else None


def fixed_draws(f: Distribution) -> bool:
    """Whether the draws of ``f`` depend on no trainable parameter: it has no conditioning variables and
    none of its parameters requires grad (constants are buffers), so its score-function term is zero."""
    if f._cond_var:
        return False
    if not f._parameters and not f._modules:  # no parameters at all (constants are buffers): skip the walk
        return True
    return not any(q.requires_grad for q in f.parameters())


def require_pathwise_draws(owner: Any, *dists: Distribution, every: bool = True) -> None:
    """For a loss that reaches the parameters of ``dists`` only through their draws (no score-function term: MMD,
    Wasserstein, the adversarial losses), the sides with trainable parameters but no reparameterised sampler, whose
    draws carry no gradient. With ``every`` (the adversarial losses, which train each side): a ValueError naming
    ``owner`` (the loss, or its name) and the first such side (it would never train). Otherwise (MMD, Wasserstein): the
    ValueError only where no trainable side carries a gradient (the loss would train nothing); where another side does
    (a learnable mixture prior trained by another term, the loss pulling the encoder), one UserWarning naming the
    sides that get no gradient from this term."""
    trainable = [d for d in dists if any(t.requires_grad for t in d.parameters())]
    stuck = [d for d in trainable if not d.has_reparam]
    if not stuck:
        return
    first = stuck[0]
    if every or len(stuck) == len(trainable):
        raise ValueError(
            f"{owner}: {first.prob_text} ({first.distribution_name}) has trainable parameters but no "
            "reparameterised sampler, so its draws carry no gradient and it would never train; use a "
            "reparameterisable distribution (e.g. a relaxed one for discrete data)")
    names = ", ".join(f"{d.prob_text} ({d.distribution_name})" for d in stuck)
    trained = ", ".join(d.prob_text for d in trainable if d.has_reparam)
    warn_user(f"{owner}: {names} has trainable parameters but no reparameterised sampler, so this term gives it no "
              f"gradient (its draws carry none); the term trains {trained} only. Train it by another term, or use a "
              "reparameterisable distribution (e.g. a relaxed one for discrete data)")


def score_log_prob(p: Distribution, values: dict[str, Any], pathwise: bool) -> Tensor | None:
    """Log-density of the factors of ``p`` that need the score function (None if none). With
    ``pathwise``, reparameterised factors and factors with `fixed_draws` (e.g. a uniform draw of a
    noise level) need none. A relaxed family (`RelaxedBernoulli`, `RelaxedCategorical`) is refused: its
    `get_log_prob` is the discrete likelihood, whose score at a relaxed draw has a non-zero mean (a biased
    gradient), and the Concrete density of a float32 draw at a low temperature is lost where the draw rounds to a
    vertex. With ``pathwise``, a `MixtureOfNormal` with learnable weights among the factors adds the weights' score
    of its draw (`weights_score`): its draw is reparameterised given the chosen expert, but the choice is not."""
    # (the draws of p's own variables only: a draw of an outer expectation's mixture is that expectation's to score)
    total = weights_score([values.get(v) for v in p.var]) if pathwise else None
    if pathwise and p.has_reparam:  # every factor reparameterised: none needs the score function (weights aside)
        return total
    for f in single_factors(p):
        if pathwise and (f.has_reparam or fixed_draws(f)):
            continue
        inner = f
        while isinstance(inner, ReplaceVarDistribution):  # (a renamed relaxed family: q.replace_var(z="w"))
            inner = inner.p
        if isinstance(inner, _DiscreteScoring):
            raise ValueError(f"{f.prob_text} ({inner.distribution_name}) scores its values with the discrete "
                             "likelihood, which is not the density of its relaxed draws: a score-function gradient "
                             "(REINFORCE, reparam=False) over it would be biased. Use the pathwise gradient "
                             "(Expectation's default), or a Bernoulli / Categorical for a score-function estimator of "
                             "the discrete variable, or BinaryConcrete / Concrete for the relaxed density (in float64 "
                             "at low temperatures: float32 draws round to the vertices)")
        lp = f.get_log_prob(values)
        total = lp if total is None else total + lp
    return total


def collect_score(ctx: EvalContext, p: Distribution, logp: Tensor | None, n: int) -> None:
    """Where the evaluation collects the score terms of its draws (``ctx.samples.scores`` a list: the steps of
    `IterativeLoss`, whose later steps depend on a step's draws), ``(p, logp)``: the per-row log-density of the factors
    of ``p`` that get the score function (`score_log_prob`), for draws made once per row (``n`` 1, outside any
    expectation with several draws per row)."""
    if logp is not None and n == 1 and ctx.copies == 1:
        scores = getattr(ctx.samples, "scores", None)
        if scores is not None:
            scores.append((p, logp))


class Expectation(Loss):
    """:math:`\\mathbb{E}_{p}[f]`, see the module docstring.

    Args:
        p: the distribution to sample from.
        f: the loss to average (numbers are allowed).
        sample_shape: draws per row, e.g. ``(10,)``; the mean over them is returned. ``f`` is evaluated on each
            draw's batch, as in Pixyz: an ``f`` reduced over the batch (``LogProb(p).sum()``) gives the same value
            for any number of draws (see the module docstring).
        reparam: Pixyz's argument (also the fourth positional one, ``E(q, f, [3], False)``). ``True``: factors with a
            reparameterised sampler are differentiated through the draw, the others get the score-function term.
            ``False``: no draw is differentiated through, every factor gets the score-function term (the same
            expectation of the gradient; in Pixyz, ``False`` leaves ``p``'s parameters without a gradient).

    Only the first derivatives of the score-function terms are estimated: a second derivative taken through them
    (``create_graph=True``) estimates :math:`\\mathbb{E}[\\nabla^2 f + f\\,\\nabla^2 \\log p]`, not
    :math:`\\nabla^2 \\mathbb{E}_p[f]` (module docstring); pathwise terms are exact to any order.

    >>> import torch
    >>> from kizuna.distributions import Normal
    >>> from kizuna.losses import LogProb
    >>> q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    >>> p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    >>> recon = Expectation(q, LogProb(p))
    >>> print(recon)
    E_{q(z|x)}[log p(x|z)]
    >>> recon.eval({"x": torch.zeros(3)}, return_dict=True)[1]["z"].shape
    torch.Size([3])
    """

    reparam: bool = True

    def __init__(self, p: Distribution, f: Loss | float | Tensor, sample_shape: Sequence[int] = (),
                 reparam: bool = True) -> None:
        if not isinstance(p, Distribution):
            raise TypeError(f"Expectation: the distribution to draw from must be a kizuna distribution, got "
                            f"{type(p).__name__}")
        f = as_loss(f)
        super().__init__(p.input_var + [v for v in f.input_var if v not in p.var])
        self.p, self.f = p, f
        self._plan()
        if isinstance(sample_shape, numbers.Integral) and not isinstance(sample_shape, bool):
            sample_shape = (int(sample_shape),)  # one number of draws (torch.Size(3) is a TypeError)
        try:
            self.sample_shape = torch.Size(sample_shape)
        except TypeError:
            raise TypeError(f"{type(self).__name__}: sample_shape must be a number of draws or a shape (a tuple of "
                            f"positive sizes), got {sample_shape!r}") from None
        if any(s < 1 for s in self.sample_shape):
            raise ValueError(f"{type(self).__name__}: sample_shape must hold positive sizes, got "
                             f"{tuple(self.sample_shape)}")
        if not isinstance(reparam, numbers.Integral) or reparam not in (0, 1):  # (a bool, or 0 / 1)
            raise TypeError(f"{type(self).__name__}: reparam must be True or False, got {reparam!r}")
        self.reparam = bool(reparam)

    def subterms(self) -> list[Loss]:
        return [self.f]

    def _own_distributions(self) -> list[Distribution]:
        return [self.p]

    def _plan(self, baseline: Loss | None = None) -> tuple[Any, ...]:
        """``(f, its kind, whether it is linear, its batch reductions inner first)`` (`_kind`, `_linear`,
        `_reductions`), found once for ``self.f``; with ``baseline`` (`REINFORCE`'s ``b`` given as a loss, evaluated
        with ``f``), those of ``f - b``, found once for that pair."""
        key = "_f_plan" if baseline is None else "_fb_plan"
        plan = self.__dict__.get(key)
        if plan is None or plan[0] is not self.f or (baseline is not None and plan[4] is not baseline):
            node = self.f if baseline is None else SubLoss(self.f, baseline)
            memo: dict[int, str] = {}
            kind = _kind(node, memo)
            linear = kind != _MIXED and _linear(node, memo)
            plan = (self.f, kind, linear, tuple(_reductions(node, memo, [], set())))
            if baseline is not None:  # and the baseline's own kind
                plan += (baseline, _kind(baseline, memo))
            self.__dict__[key] = plan
        return plan

    def _value(self, ctx: EvalContext) -> Tensor:
        n, reparam = math.prod(self.sample_shape), self.reparam
        values, new = draw(self.p, ctx, n, reparam=reparam)
        if self._plan()[1] == _ROW:
            rows = _rows(next(iter(new.values())))
            f = ctx.child(values, n, rows).value(self.f)
            if n == 1 or _rows(f) == rows:  # one value per row: the draws pooled
                logp = score_log_prob(self.p, values, pathwise=reparam)
                collect_score(ctx, self.p, logp, n)
                if logp is not None:
                    f = f + f.detach() * _per_row(logp - logp.detach(), f)
                return f if n == 1 else average(f, n)
        return self._per_draw(ctx, values, new, n, pathwise=reparam, baseline=0.0)

    def _per_draw(self, ctx: EvalContext, values: dict[str, Any], new: dict[str, Any], n: int, pathwise: bool,
                  baseline: float | str | Loss) -> Tensor:
        """The mean over the ``n`` draws of ``f`` evaluated on each draw's batch (an ``f`` reduced over the batch),
        with one score term per draw (its rows' summed), or per row where the expectation goes inside a linear
        reduction. ``values`` / ``new``: `draw`'s (the draws laid out as ``n x batch`` rows). A baseline given as a
        loss (`REINFORCE`'s ``b``) is evaluated with ``f``, on the same draws."""
        b_node = baseline if isinstance(baseline, Loss) else None
        kind, linear, reductions = self._plan(b_node)[1:4]  # with a baseline loss: those of f - b
        logp = score_log_prob(self.p, values, pathwise)
        collect_score(ctx, self.p, logp, n)
        score = None if logp is None else logp - logp.detach()
        rows = _rows(next(iter(new.values())))
        # the expectation inside a linear batch reduction: per-row score terms, also with a number as the baseline
        # (spread over the rows of the draw below); a baseline loss is evaluated with f, draw by draw
        inside = linear and b_node is None and not isinstance(baseline, str)
        f = b = None
        if kind in (_REDUCED, _CONST):  # the reductions taken draw by draw on the pooled rows (one number per draw)
            child = ctx.child(values, n, rows)
            for node, of_rows in reductions:
                value = child.value(node.loss1)
                if of_rows:
                    if _rows(value) != rows:  # a term that is not one value per row: f evaluated draw by draw
                        break
                    if inside and score is not None:
                        value = value + value.detach() * _per_row(score, value)
                child.results[id(node)] = _block_reduce(node, value, n)
            else:
                f = child.value(self.f)
                if kind == _CONST:  # its score term's expectation is 0
                    return f
                if b_node is not None:
                    b = child.value(b_node)
        if f is None:  # f evaluated on each draw's batch, as Pixyz does
            size, mark, each, each_b = rows // n, step_mark(), [], []
            for i in range(n):
                block = {k: v[i * size:(i + 1) * size] for k, v in new.items()}
                child = ctx.child({**ctx.values, **block})
                each.append(child.value(self.f))
                if b_node is not None:
                    each_b.append(child.value(b_node))
                release_step(mark)  # this draw's memo entries (its inputs are new tensors at the next draw)
            f, inside = torch.stack(each), False
            if b_node is not None:
                b = torch.stack(each_b)
        if score is not None and inside and baseline != 0.0 and score.numel():
            # the number b is the baseline of f's value per draw: b / rows for each row's term, so that the score term
            # is sum_i (f's share of row i - b / rows) * score_i (with f.mean(): (f_i - b) score_i / rows)
            per_draw = score.reshape(n, score.numel() // n)
            f = f - baseline * per_draw.sum(1) / per_draw.shape[1]
        elif score is not None and not inside:
            fd = f.detach()
            if b is not None:
                baseline = _baseline_like(b, fd, self)
            elif baseline == "loo":
                if fd.dim() == 1:
                    raise ValueError(f"{self}: baseline='loo' needs f per row (one value per draw), got f reduced over "
                                     "the batch (one number per draw); take the mean outside: "
                                     "REINFORCE(q, f_per_row, ...).mean()")
                baseline = (fd.sum(0, keepdim=True) - fd) / (n - 1)
            per_draw = score.reshape(n, score.numel() // n).sum(1)  # a draw's score: the sum of its rows'
            f = f + (fd - baseline) * per_draw.reshape(n, *([1] * (f.dim() - 1)))
        return f.mean(0)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["expect"].format(symbol(self.p, fmt), self.f._render(fmt))


class REINFORCE(Expectation):
    """:math:`\\mathbb{E}_{p}[f]` with the score-function gradient for *every* factor of ``p``.

    .. math:: \\nabla \\mathbb{E}_p[f] = \\mathbb{E}_p[(f - b)\\nabla\\log p] + \\mathbb{E}_p[\\nabla f]

    The arguments are Pixyz's, in Pixyz's order: ``REINFORCE(q, f, ValueLoss(-7.0), sample_shape=[64])``. The value
    is :math:`\\mathbb{E}_p[f]`, whatever the baseline; Pixyz returns its surrogate
    :math:`\\mathbb{E}_p[\\mathrm{detach}(f - b)\\log p + f - b]` instead, whose gradient is the same (for Pixyz's
    number: ``Expectation(q, (f - b).detach() * LogProb(q) + f - b, sample_shape)``'s value).

    Args:
        b: the baseline (Pixyz's name; ``baseline=`` is kizuna's, give one of them): a number; a loss, evaluated on
            the same draws as ``f`` (Pixyz's ``ValueLoss(c)``, or a loss of the inputs, one value per row of a per-row
            ``f``, or one number per draw of an ``f`` reduced over the batch); or ``"loo"`` for the leave-one-out mean
            of the other draws of the same row (needs ``sample_shape`` with more than one draw, and ``f`` per row).
            It is subtracted from each draw's value of ``f`` in the score term only: it changes neither the value nor
            the gradient's expectation (for a baseline that does not depend on the draw), and its own parameters get
            no gradient from this loss (Pixyz's surrogate gives them :math:`-\\nabla b`). A number (or a constant
            loss, ``ValueLoss(c)``) with an ``f`` that is a linear batch reduction (``f.mean()``, ``f.sum()``) keeps the
            per-row score terms (module docstring): the number, the baseline of ``f``'s value, is spread evenly over
            the rows, :math:`\\sum_i (f_i - b)\\nabla\\log p_i / N` for ``f.mean()`` (one score term per draw,
            :math:`(\\bar f - b)\\sum_i \\nabla\\log p_i`, had a spread growing with the batch); a baseline loss is
            evaluated with ``f``, one score term per draw.
        sample_shape: draws per row, as for `Expectation`.
        reparam: Pixyz's argument, accepted: REINFORCE never differentiates through a draw, for ``True`` too (Pixyz's
            ``True`` also takes the pathwise gradient of a reparameterised draw, and scores the moved draw).
        baseline: kizuna's name of ``b``.

    As for `Expectation`, only the first derivatives are estimated (module docstring): a second derivative taken
    through the score-function term (``create_graph=True``) estimates
    :math:`\\mathbb{E}[\\nabla^2 f + (f - b)\\nabla^2\\log p]`, not :math:`\\nabla^2 \\mathbb{E}_p[f]`.
    """

    def __init__(self, p: Distribution, f: Loss | float | Tensor, b: float | str | Loss | None = None,
                 sample_shape: Sequence[int] = (), reparam: bool = True, *,
                 baseline: float | str | Loss | None = None) -> None:
        if isinstance(b, numbers.Integral) and not isinstance(b, bool):  # kizuna's third argument was sample_shape
            raise TypeError(f"REINFORCE: the third argument is the baseline b (Pixyz's order: REINFORCE(p, f, b, "
                            f"sample_shape, reparam)), got the integer {b!r}, which kizuna's older order read as "
                            f"sample_shape: pass sample_shape={b!r}, or a baseline as a float ({float(b)!r}), "
                            f"ValueLoss({b!r}) or baseline={b!r}")
        if b is not None and baseline is not None:
            raise TypeError(f"REINFORCE: the baseline was given twice, as b={b!r} (Pixyz's name) and "
                            f"baseline={baseline!r} (kizuna's): give one of them")
        if b is None:
            b = baseline
        if isinstance(b, (tuple, list, torch.Size)):  # kizuna's third argument was sample_shape
            raise TypeError(f"REINFORCE: the third argument is the baseline b (Pixyz's order: REINFORCE(p, f, b, "
                            f"sample_shape, reparam)), got the shape {b!r}: pass sample_shape={b!r}")
        super().__init__(p, f, sample_shape, reparam)
        if isinstance(b, Loss):
            self._input_var = list(dict.fromkeys(self._input_var + [v for v in b.input_var if v not in p.var]))
        elif not (b is None or (isinstance(b, str) and b == "loo")
                  or _is_number(b) and math.isfinite(float(b))):  # (NaN made the value NaN)
            raise ValueError(f"REINFORCE: baseline must be a finite number, 'loo' or None, got {b!r} (or a loss, "
                             "such as Pixyz's ValueLoss(c))")
        if isinstance(b, str) and math.prod(self.sample_shape) < 2:
            raise ValueError("REINFORCE(baseline='loo') needs sample_shape with at least two draws")
        self.baseline = b  # (a loss is registered as this node's sub-module: .to() moves it)

    def subterms(self) -> list[Loss]:
        return [self.f, self.baseline] if isinstance(self.baseline, Loss) else [self.f]

    def _baseline_at(self, ctx: EvalContext) -> float | str | Loss:
        """The baseline for this evaluation: ``"loo"``, a number, or the loss evaluated with ``f`` (one that depends
        on no variable is a number, evaluated here)."""
        b = self.baseline
        if b is None or isinstance(b, str):
            return b or 0.0
        if not isinstance(b, Loss):
            return float(b)
        if self._plan()[1] == _CONST:  # a constant f has no score term (as without a baseline)
            return 0.0
        if self._plan(b)[5] != _CONST:
            return b
        value = float(ctx.value(b).detach())
        if not math.isfinite(value):
            raise ValueError(f"{self}: the baseline {b} is {value}, not a finite number")
        return value

    def _value(self, ctx: EvalContext) -> Tensor:
        n = math.prod(self.sample_shape)
        values, new = draw(self.p, ctx, n, reparam=False)
        baseline = self._baseline_at(ctx)
        b_node = baseline if isinstance(baseline, Loss) else None
        if self._plan(b_node)[1] != _ROW:
            return self._per_draw(ctx, values, new, n, pathwise=False, baseline=baseline)
        n_rows = _rows(next(iter(new.values())))
        child = ctx.child(values, n, n_rows)
        f = child.value(self.f)
        b = None if b_node is None else child.value(b_node)
        if n > 1 and (_rows(f) != n_rows or b is not None and _rows(b) != n_rows):  # not one value per row: per draw
            return self._per_draw(ctx, values, new, n, pathwise=False, baseline=baseline)
        logp = score_log_prob(self.p, values, pathwise=False)
        collect_score(ctx, self.p, logp, n)
        fd = f.detach()
        if b is not None:
            b = _baseline_like(b, fd, self)
        elif baseline == "loo":  # (n > 1: f is one value per row)
            rows = fd.reshape(n, -1)
            b = ((rows.sum(0, keepdim=True) - rows) / (n - 1)).reshape(fd.shape)
        else:
            b = baseline
        return average(f + (fd - b) * _per_row(logp - logp.detach(), f), n)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["reinforce"].format(symbol(self.p, fmt), self.f._render(fmt))
