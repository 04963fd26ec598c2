r"""`IterativeLoss`: a step loss summed over the time steps of sequence variables.

.. math:: \mathcal{L} = \sum_{t=0}^{T-1} \mathcal{L}_{step}(x_t, h_{t-1})

Steps are numbered from 0, in the formula as in the evaluation. At step :math:`t` the
``series_var`` are replaced by their slice :math:`x_t` (time along ``series_dim``), the step
loss is evaluated, and ``update_value`` carries values to the next step: ``{"z": "z_prev"}``
makes the :math:`z_t` drawn at step :math:`t` the ``z_prev`` of step :math:`t+1` (``z_prev``
must be given for step 0). This is how recurrent latent-variable
models are written, e.g. the Deep Markov Model (Krishnan et al. 2017, arXiv:1609.09869) with
:math:`\mathcal{L}_{step} = D_{KL}[q(z_t|x_t, z_{t-1})\|p(z_t|z_{t-1})] - \mathbb{E}_{q}[\log p(x_t|z_t)]`.
The semantics follow Pixyz's ``IterativeLoss``.

Gradients: a draw that reaches later steps (carried by ``update_value``, or read by name at the next step) and gets the
score-function term (a discrete latent, ``REINFORCE``, ``reparam=False``, the choice of expert of a `MixtureOfNormal`
with learnable weights: its weights' score, `weights_score`) changes the costs of every later step, not only its own
step's. The score-function gradient is :math:`\sum_t \mathbb{E}[f_t \sum_{s \le t} \nabla \log
q(z_s|\cdot)]`: each step's value is multiplied, per row, by :math:`\exp(C_{<t} - \overline{C_{<t}})` (DiCE's "magic
box", of value exactly 1), with :math:`C_{<t}` the summed log-densities of the earlier steps' score-function draws
that reach later steps, so that its gradient gains :math:`f_t \nabla C_{<t}` (the unbiased estimator; without it a
carried Bernoulli state trained on a gradient 4x too small). Per row where the step loss is one value per row or a
linear batch reduction of such values (``E_q[f].mean()``), else over the whole batch. Pathwise (reparameterised)
draws need none: their gradient flows through the carried values (a mixture's draw: given the chosen expert; its
weights get the score term above).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from kizuna._data import warn_user
from kizuna._text import LATEX, var_text
from kizuna.distributions.base import Distribution
from kizuna.distributions.moe import has_learnable_weights
from kizuna.formula.expr import EvalContext, Loss, Tensor, _bare
from kizuna.formula.memo import release_step, step_mark
from kizuna.losses.elbo import IWAE
from kizuna.losses.expectation import (
    _MIXED,
    _REDUCED,
    _ROW,
    REINFORCE,
    Expectation,
    _kind,
    _linear,
    _per_row,
    _reductions,
    _rows,
)


def _draws_per_row(node: Loss) -> tuple[int, Any, str, str]:
    """``(draws per row, the distribution drawn, how they are asked for, how to ask for one)`` of an expectation or
    IWAE node; ``(1, None, "", "")`` for any other node."""
    if isinstance(node, Expectation):
        return math.prod(node.sample_shape), node.p, f"sample_shape={tuple(node.sample_shape)}", "sample_shape=()"
    if isinstance(node, IWAE):
        return node.k, node.q, f"IWAE's k={node.k}", "k=1, or an ELBO"
    return 1, None, "", ""


def _loss_modules(loss: Loss) -> list[Any]:
    """Every module in ``loss`` (``loss.modules()``) and the loss inside each `Named` node among them, once each: a
    named node stands for its loss in ``modules()`` (it shares the loss's submodules, not the loss), so a walk over
    ``modules()`` alone missed a named expectation (its draws lost their score terms and reach, stop 49)."""
    found: dict[int, Any] = {}
    for m in loss.modules():
        for node in (m, _bare(m)) if isinstance(m, Loss) else (m,):
            found.setdefault(id(node), node)
    return list(found.values())


def _may_score(node: Any) -> bool:
    """Whether ``node`` (an expectation, or `IWAE`) may give its draws the score-function term: a score-function draw
    (``REINFORCE``, ``reparam=False``, a distribution without a reparameterised sampler), or a draw of a
    `MixtureOfNormal` with learnable weights (its choice of expert: the weights' score, `weights_score`)."""
    if isinstance(node, Expectation) and (isinstance(node, REINFORCE) or not node.reparam or not node.p.has_reparam):
        return True
    p = _draws_per_row(node)[1]
    return p is not None and has_learnable_weights(p)


class _StepDraws(dict):
    """One step's draws (``EvalContext.samples``) that also notes the number of dimensions of every value written to
    each variable during the step: a variable drawn once per row ``(batch, ...)`` and several times per row
    ``(draws, batch, ...)`` in the same step keeps the later draw, and these tell which one it was. With ``scores``,
    the expectations add the score terms of their draws made once per row to ``scores`` (`collect_score`)."""

    __slots__ = ("dims", "scores")

    def __init__(self, scores: bool = False) -> None:
        super().__init__()
        self.dims: dict[str, set[int]] = {}
        self.scores: list[tuple[Distribution, Tensor]] | None = [] if scores else None

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, Tensor):
            self.dims.setdefault(key, set()).add(value.dim())
        super().__setitem__(key, value)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:  # (dict.update bypasses __setitem__)
        for key, value in dict(other, **kwargs).items():
            self[key] = value


class _StepTermSum(Loss):
    """A per-term record: the sum over steps of one term of the step loss (filled by the owner)."""

    def __init__(self, owner: IterativeLoss, term: Loss) -> None:
        super().__init__()
        self.owner, self.term = owner, term

    def _render(self, fmt: dict[str, str]) -> str:
        return self.owner._sum_text(fmt, self.term.label if fmt is not LATEX else self.term.to_latex())

    def _value(self, ctx: EvalContext) -> Tensor:
        raise RuntimeError("a step-term record is computed by its IterativeLoss")


class IterativeLoss(Loss):
    """:math:`\\sum_t \\mathcal{L}_{step}` over time steps (module docstring).

    Args:
        step_loss: the loss of one step: per row (one value per sequence, e.g. ``kl - E(q, LogProb(p))``), reduced
            outside (``IterativeLoss(...).mean()``), or reduced over the batch inside (``.mean()``, as Pixyz's
            examples write it); a ``mask`` for sequences of different lengths needs the per-row form (below).
        max_iter: the number of steps :math:`T`; default: the length of the first series variable.
        series_var: variables holding sequences, time along ``series_dim`` (time-major
            ``T×N×...`` by default); each step sees the slice :math:`x_t`.
        update_value: ``{source: target}``: after each step, ``target`` takes the value of
            ``source`` (drawn or given in that step); ``source`` is then dropped. A carried variable is drawn
            once per row (no ``sample_shape`` on its expectation). As in Pixyz, every other draw of a step is also
            among the next step's values, under its own name, if it was drawn once per row: a draw made several
            times per row (``sample_shape``, IWAE's ``k``, or inside such an expectation) is not (Pixyz carries
            its first draw), so that the next step's values stay one per row.
        slice_step: a distribution that produces the step's inputs itself (given ``t`` and the
            full sequences): the step loss becomes :math:`\\mathbb{E}_{slice\\_step}[\\mathcal{L}_{step}]`
            and the series are not sliced.
        timestep_var: a variable name (or a one-name list) through which each step sees its
            index ``t = 0, ..., T-1``.
        series_dim: the time dimension of the series: 0 (time-major, Pixyz's default) or 1
            (batch-first ``N×T×...``, which `Model.fit` can cut into mini-batches).

    Evaluation option ``mask`` (Pixyz's): ``loss.eval(x, mask=m)`` multiplies the loss of step :math:`t` by
    :math:`m_t`, for sequences of different lengths (0 after a sequence's end). ``m`` is ``(T,)``, one weight per
    step, or one weight per row and step laid out as the series: ``(T, N)`` time-major, ``(N, T)`` with
    ``series_dim=1``; a per-row weight multiplies the first (batch) dimension of the step loss's value (inside an
    expectation with several draws per row, ``E(q_w, IterativeLoss(...), sample_shape=(K,))``, the mask stays one row
    per row of the batch and weighs each of the row's draws, repeated as the expectation repeats the series). The step
    loss does not see ``mask``. The mask drops a padded step only from a step loss written per row: a step loss already
    reduced over the batch (``.mean()`` or ``.sum()`` inside the step, one value per step) has averaged the padded
    rows' costs into that value, and a per-row weight only multiplies it (it becomes one value per row, as in Pixyz),
    so the padding still enters every row's loss and gradient. That case keeps Pixyz's numbers and gives a
    UserWarning (once per `IterativeLoss`, when a step's value has no rows and the mask weighs the rows of some step
    differently); so does a step loss with rows of which a term is reduced over the batch inside
    (``kl.mean() - E(q, LogProb(p))``: the reduced term still holds the padded rows' costs), told from the formula.
    For sequences of different lengths write the step loss per row and reduce outside the sum::

        step = KullbackLeibler(q, prior) - E(q, LogProb(p))  # per row: no .mean() inside the step
        loss = IterativeLoss(step, series_var=["x"], update_value={"z": "z_prev"}, series_dim=1).mean()
        loss.eval({"x": x, "z_prev": z0}, mask=m)  # m[n, t] = t < length[n]: row n's sum over its own steps

    Each step is evaluated once; the per-step values of the step loss's terms are summed and
    reported as terms of this loss (``eval(..., return_terms=True)``, `Model.fit`'s history). Under a mask, a term
    is weighed as the step loss's value weighs it: per row where the step loss keeps its rows, and where the step
    loss reduces it over the batch (under ``.mean()`` or ``.sum()``) by the mean of the step's weights over the
    rows, which is the batch mean of the reduced value times each row's weight. So a step loss ``kl.mean()``
    reports the batch mean of the loss, ``loss.mean()``. (A term that the step loss takes both per row and reduced
    is weighed per row.)

    >>> import torch
    >>> from kizuna.distributions import Normal
    >>> from kizuna.losses import LogProb
    >>> p = Normal(var=["x"], cond_var=["x_prev"], loc="x_prev", scale=1.0)
    >>> loss = IterativeLoss(-LogProb(p).mean(), series_var=["x"], update_value={"x": "x_prev"})
    >>> print(loss)
    sum_{t=0}^{T-1} -mean(log p(x|x_prev))
    >>> x = torch.zeros(5, 2, 3)  # T=5 steps, N=2 sequences, 3 features
    >>> value = loss.eval({"x": x, "x_prev": torch.zeros(2, 3)})
    >>> torch.allclose(value, torch.tensor(5 * 3 * 0.9189385))  # 5 steps of 3 N(0;0,1) log-densities
    True
    """

    precedence = 35  # a sum written as one symbol: bracketed as the base of a power, (sum_t ...)^2
    _mask_warned = False  # (the default of an IterativeLoss pickled before the attribute: no warning given yet)

    def __init__(
        self,
        step_loss: Loss,
        max_iter: int | None = None,
        series_var: Sequence[str] = (),
        update_value: Mapping[str, str] | None = None,
        slice_step: Distribution | None = None,
        timestep_var: str | Sequence[str] | None = None,
        series_dim: int = 0,
    ) -> None:
        if not isinstance(step_loss, Loss):
            raise TypeError(f"IterativeLoss needs a kizuna Loss as step_loss, got {type(step_loss).__name__}")
        self.series_var = [series_var] if isinstance(series_var, str) else list(series_var)
        self.update_value = dict(update_value or {})
        if isinstance(timestep_var, str) or timestep_var is None:
            self.timestep_var = timestep_var
        else:
            names = list(timestep_var)
            if len(names) > 1:
                raise ValueError(f"IterativeLoss: timestep_var names one variable, got {names}")
            self.timestep_var = names[0] if names else None
        if max_iter is None and not self.series_var:
            raise ValueError("IterativeLoss needs max_iter or series_var (to know how many steps to take)")
        if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral)
                                     or max_iter < 1):  # (2.0 failed in range(), True ran one step)
            raise ValueError(f"IterativeLoss needs max_iter an integer >= 1, got {max_iter!r}")
        if series_dim not in (0, 1):
            raise ValueError(f"IterativeLoss: series_dim must be 0 (time-major) or 1 (batch-first), got {series_dim}")
        bad = {k: v for k, v in self.update_value.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise TypeError(f"IterativeLoss: update_value maps variable names to names, got {bad}")
        self.step_loss = Expectation(slice_step, step_loss) if slice_step is not None else step_loss
        # the draws per row of every node drawing a variable: one drawn several times per row is recorded as
        # (draws, batch, ...), and its steps are stacked after the draws dimension (see _draw_lead)
        self._draw_counts: dict[str, set[int]] = {}
        per_row: dict[str, set[int]] = {}  # the same, times the draws of the expectations around the node
        stack: list[tuple[Loss, int, str, str]] = [(self.step_loss, 1, "", "")]
        while stack:  # a carried value is one per row: several draws per row cannot be carried
            node, outer, outer_how, outer_once = stack.pop()
            n, p, how, once = _draws_per_row(node)
            if outer > 1:  # drawn inside an expectation with several draws per row: laid out (draws x batch, ...)
                how, once = (f"{how}, " if n > 1 else "") + outer_how, outer_once
            if p is not None:
                for v in p.var:
                    self._draw_counts.setdefault(v, set()).add(n)
                    per_row.setdefault(v, set()).add(n * outer)
                carried = [v for v in p.var if v in self.update_value]
                if n * outer > 1 and carried:
                    raise ValueError(
                        f"IterativeLoss: {node} draws {', '.join(carried)} {n * outer} times per row ({how}), but "
                        "update_value carries it to the next step, which takes one value per row: draw once per "
                        f"row in the step ({once}); to average over several trajectories, "
                        "repeat each sequence's row that many times in the batch")
            if n > 1:
                outer_how, outer_once = (f"inside {node}: {how}", once) if outer == 1 else (how, once)
            stack.extend((child, n * outer, outer_how, outer_once) for child in node.subterms())
        # only draws made once per row go into the next step's values (as the values of a step are one per row): a
        # variable drawn only several times per row is kept back, one drawn both ways is checked at each step
        self._several = frozenset(v for v, ns in per_row.items() if 1 not in ns)
        self._both = frozenset(v for v, ns in per_row.items() if 1 in ns and len(ns) > 1)
        # an expectation that may give its draws the score-function term (they may reach later steps: see _value)
        self._scoring = any(map(_may_score, _loss_modules(self.step_loss)))
        self._score_plan: tuple[Any, ...] | None = None
        self._mask_warned = False  # the warning of a per-row mask over a step loss reduced over the batch, given
        self.slice_step = slice_step
        self.max_iter = max_iter
        self.series_dim = series_dim
        needed = self.step_loss.input_var + self.series_var + list(self.update_value.values())
        super().__init__([v for v in needed if v != self.timestep_var])
        # the names a step reads from the values the previous step left: the carried sources, and the step loss's
        # inputs but those set anew at every step (the series, the step index, a carried target)
        renewed = {*self.series_var, self.timestep_var, *self.update_value.values()} - set(self.update_value)
        reach = set(self.update_value) | set(self.step_loss.input_var) - renewed - self._several
        # and the variables that a draw of those is drawn given (a discrete state that a carried Normal draw depends
        # on), following the inputs of the distributions drawn in the step
        drawn = [m.p for m in _loss_modules(self.step_loss) if isinstance(m, Expectation)]
        grew = True
        while grew:
            grew = False
            for p in drawn:
                if not reach.isdisjoint(p.var) and not reach.issuperset(p.input_var):
                    reach.update(p.input_var)
                    grew = True
        self._reach = frozenset(reach)
        self._records = [_StepTermSum(self, term) for term in self.step_loss.terms()]

    def subterms(self) -> list[Loss]:
        return [self.step_loss]

    def terms(self) -> Any:
        """The summed terms of the step loss (or this loss itself, once named)."""
        if self._label is not None:
            yield self
        else:
            yield from self._records

    # -------------------------------------------------------------------- text
    def _sum_text(self, fmt: dict[str, str], body: str) -> str:
        # the formula shows the indices the evaluation uses: t = 0, ..., max_iter - 1 (as Pixyz prints them)
        t = var_text(self.timestep_var, fmt) if self.timestep_var else "t"
        upper = str(self.max_iter - 1) if self.max_iter is not None else "T-1"
        if fmt is LATEX:
            return f"\\sum_{{{t}=0}}^{{{upper}}} {body}"
        return f"sum_{{{t}=0}}^{{{upper}}} {body}"

    def _render(self, fmt: dict[str, str]) -> str:
        # a body of + / - in brackets: `sum_t a + b` reads as (sum_t a) + b
        return self._sum_text(fmt, self._wrap(self.step_loss, fmt, 11))

    # -------------------------------------------------------------- evaluation
    def _steps(self, values: Mapping[str, Any]) -> int:
        lengths = {}
        for v in self.series_var:
            value = values[v]
            if not isinstance(value, Tensor) or value.dim() <= self.series_dim:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"IterativeLoss: series variable {v} needs a time dimension {self.series_dim}, "
                                 f"got {shape}")
            lengths[v] = value.shape[self.series_dim]
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ValueError(f"IterativeLoss: the series variables have different lengths along dim "
                             f"{self.series_dim}: {listed}")
        steps = self.max_iter if self.max_iter is not None else next(iter(lengths.values()))
        if steps < 1:  # (a sum of no steps was 0, and a raw "does not require grad" error in training)
            listed = ", ".join(f"{k} of shape {tuple(values[k].shape)}" for k in lengths)
            raise ValueError(f"IterativeLoss: the series have no time steps along dim {self.series_dim} ({listed})")
        short = {k: n for k, n in lengths.items() if n < steps}
        if short:
            raise ValueError(f"IterativeLoss: max_iter={steps} but {', '.join(short)} has only "
                             f"{min(short.values())} steps")
        return steps

    def _value(self, ctx: EvalContext) -> Tensor:
        values = dict(ctx.values)
        if ctx.copies > 1 and self.series_dim == 0:  # inside an expectation with several draws per row
            self._time_major_copies(values, ctx.copies, ctx.rows)
        series = {v: values[v] for v in self.series_var}
        steps = self._steps(values)
        total: Any = 0.0
        sums: list[Any] = [0.0] * len(self._records)
        drawn: dict[str, list[Tensor]] = {}
        leads: dict[str, set[int]] = {}  # per variable, whether its steps' draws had a draws dimension first
        mark, report = step_mark(), ctx.report
        # read once: the loop below runs at every time step
        timestep_var, dim, step_loss, options = self.timestep_var, self.series_dim, self.step_loss, ctx.options
        weights = None
        if options and options.get("mask") is not None:  # Pixyz's eval(..., mask=m): step t's loss times m[t]
            weights = self._step_weights(options["mask"], values, steps, ctx.copies, ctx.rows)
            options = {k: v for k, v in options.items() if k != "mask"}  # not the step loss's (Pixyz's neither)
        check = weights is not None and weights[0].dim() == 1 and not self._mask_warned  # (a per-row mask)
        sliced = series.items() if self.slice_step is None else ()
        updates = self.update_value.items()
        several, both = self._several, self._both
        reduced: list[bool] | None = None  # per term record, under a per-row mask: whether the step loss reduces it
        scoring = self._scoring
        drawn_score: Tensor | None = None  # per row: the log-densities of score-function draws that reach later steps
        for t in range(steps):
            if timestep_var is not None:
                values[timestep_var] = t
            for v, x in sliced:
                values[v] = x.select(dim, t)
            # fresh results (every node is evaluated anew at each step); the evaluation's options (sample_mean, batch_n)
            step = EvalContext(values, _StepDraws(scoring) if report or both or scoring else None, options, report)
            value = step.value(step_loss) if drawn_score is None else \
                self._with_score(step, drawn_score - drawn_score.detach())
            if weights is not None:
                # reduced over the batch (no rows), or partly (a term of a per-row value reduced: kl.mean() - E(...))
                if check and isinstance(value, Tensor) and (value.dim() == 0 or self._partly_reduced()):
                    check = False
                    self._warn_reduced(weights, partly=value.dim() > 0)
                value = self._weighted(value, weights[t], step_loss)
            total = total + value
            samples = step.samples
            if report:  # the terms' sums and the draws over time, for a caller who asked for them
                if reduced is None and weights is not None and weights[t].dim():
                    reduced = self._reduced_terms(step.results)
                for i, record in enumerate(self._records):
                    term = step.results[id(record.term)]
                    if weights is not None:  # weighed as the step loss's value is: a term that it reduces over the
                        # rows by the step's mean weight (the reduced value, times each row's weight, averages so)
                        term = self._weighted(term, weights[t].mean() if reduced and reduced[i] else weights[t],
                                              record.term)
                    sums[i] = sums[i] + term
                for k, v in samples.items():
                    drawn.setdefault(k, []).append(v)
                    leads.setdefault(k, set()).add(self._draw_lead(k, v, samples.dims.get(k, ())))
            if several or both:  # draws several per row are not the next step's values (Pixyz's carried the first)
                samples = {k: v for k, v in samples.items() if k not in several
                           and not (k in both and self._draw_lead(k, v, samples.dims.get(k, ())))}
            values.update(samples)
            if scoring:
                drawn_score = self._carried_scores(step.samples.scores, drawn_score)
            release_step(mark)  # the step's memo entries: its inputs are new tensors at the next step
            carried = []  # every source is read before any target is written (a swap works)
            for src, dst in updates:
                if src not in values:  # (a misspelt source left the target at its first value, silently)
                    raise ValueError(f"IterativeLoss: update_value carries {src} to {dst}, but step {t} has no "
                                     f"{src}; its variables: {', '.join(sorted(map(str, values)))}")
                carried.append((dst, values.pop(src)))
            values.update(carried)
        if report:
            for record, value in zip(self._records, sums):
                ctx.results[id(record)] = torch.as_tensor(value)
        for k, vs in drawn.items():  # the draws of every step, stacked along the time dimension
            if len(vs) == steps and all(v.shape == vs[0].shape for v in vs) and len(leads[k]) == 1:
                # several draws per row come as (draws, batch, ...): time goes after the draws dimension,
                # (draws, T, batch, ...) or (draws, batch, T, ...), as one draw's steps are laid out
                ctx.samples[k] = torch.stack(vs, next(iter(leads[k])) + self.series_dim)
        return torch.as_tensor(total)

    def _carried_scores(self, records: list[tuple[Distribution, Tensor]], carried: Tensor | None) -> Tensor | None:
        """``carried`` plus the log-densities (``records``: a step's score-function draws made once per row, each
        ``(distribution, per-row log-density)``) of the draws that reach later steps (`_reach`: a variable that the
        next step reads from the values, carried by ``update_value`` or an input of the step loss, or one that such a
        draw was drawn given). Others add no term (their score would be noise for the later steps' costs)."""
        reach = self._reach
        for p, logp in records:
            if logp.requires_grad and not reach.isdisjoint(p.var):
                carried = logp if carried is None else carried + logp
        return carried

    def _with_score(self, step: EvalContext, score: Tensor) -> Tensor:
        """The step loss's value (evaluated in ``step``) times ``exp(score)`` (``score``: the carried
        log-densities less themselves, 0 with their gradient; module docstring): per row where its value is one per
        row, and inside a linear batch reduction of such values (``E_q[f].mean()``: each row's value times its own
        row's factor, before the mean); the sum over the rows otherwise (a value that depends on every row's draws).
        The value is unchanged, bit for bit (times exactly 1)."""
        plan = self._score_plan
        if plan is None:
            memo: dict[int, str] = {}
            kind = _kind(self.step_loss, memo)
            linear = kind == _REDUCED and _linear(self.step_loss, memo)
            plan = self._score_plan = (kind, tuple(_reductions(self.step_loss, memo, [], set())) if linear else None)
        kind, reductions = plan
        rows = _rows(score)
        if reductions is not None:  # the reductions' per-row values, each row times its factor, before the reduction
            done = []
            for node, of_rows in reductions:
                if not of_rows:
                    continue
                value = step.value(node.loss1)
                if _rows(value) != rows:  # a term of one's own that is not one value per row: the whole batch's
                    for key in done:
                        del step.results[key]
                    break
                step.results[id(node)] = node._op(_times_exp(value, _per_row(score, value)))
                done.append(id(node))
            else:
                return step.value(self.step_loss)
        value = step.value(self.step_loss)
        per_row = kind == _ROW and _rows(value) == rows  # (a mixed value depends on every row's draws)
        return _times_exp(value, _per_row(score, value) if per_row else score.sum())

    def _draw_lead(self, k: str, v: Any, written: Iterable[int]) -> int:
        """1 when the draw ``v`` of ``k`` recorded at a step is several draws per row, ``(draws, batch, ...)``, else 0;
        ``written``: the numbers of dimensions of every value of ``k`` written during the step."""
        counts = self._draw_counts.get(k)
        if not counts or max(counts) == 1 or not isinstance(v, Tensor) or v.dim() < 2:
            return 0
        if 1 not in counts:  # only ever drawn several times per row
            return 1
        # drawn once per row by one node and several times by another: the later draw was recorded, and a draw
        # several times per row has one dimension more than a single draw
        written = set(written)
        if len(written) > 1:
            return int(v.dim() == max(written))
        return int(v.shape[0] in counts - {1})  # (only one of them ran at this step)

    def _reduced_terms(self, results: Mapping[int, Any]) -> list[bool]:
        """Per term record: whether every way from the step loss down to its term passes a node whose value at this
        step has no rows (0-d: the step loss reduces the term over the batch, e.g. under ``.mean()``), so that a
        per-row mask weighs the reduced value, as Pixyz's broadcast does. The walk follows `Loss.terms`: through
        unnamed operators, down to the terms."""
        seen: dict[int, set[bool]] = {}
        stack: list[tuple[Loss, bool]] = [(self.step_loss, False)]
        while stack:
            node, below = stack.pop()
            ways = seen.setdefault(id(node), set())
            if below in ways:
                continue
            ways.add(below)
            if node.is_operator and node._label is None:
                value = results.get(id(node))
                below = below or (isinstance(value, Tensor) and value.dim() == 0)
                stack.extend((child, below) for child in node.subterms())
        return [seen.get(id(record.term)) == {True} for record in self._records]

    def _time_major_copies(self, values: dict[str, Any], copies: int, rows: int | None) -> None:
        """Inside an expectation with several draws per row, whose values hold ``copies`` copies of the batch's rows
        (``rows`` in all, sample-major: `repeat_batch`), a time-major series ``(T, N, ...)`` was repeated along its
        first dimension, time, as ``(copies * T, N, ...)`` (a sum over ``copies * T`` steps, or a shape error): laid
        out in ``values`` as the series of those rows, ``(T, copies * N, ...)`` (copy ``i`` in rows ``i*N:(i+1)*N``, as
        the other values)."""
        for v in self.series_var:
            x = values[v]
            if isinstance(x, Tensor) and x.dim() > 1 and x.shape[0] % copies == 0 and x.shape[1] * copies == rows:
                steps = x.shape[0] // copies
                values[v] = x.reshape(copies, steps, *x.shape[1:]).transpose(0, 1).reshape(steps, rows, *x.shape[2:])

    def _step_weights(self, mask: Any, values: Mapping[str, Any], steps: int, copies: int = 1,
                      rows: int | None = None) -> tuple[Tensor, ...]:
        """The weights of each step from the evaluation option ``mask`` (checked): ``(T,)``, one per step, or one per
        row and step, ``(T, N)`` (time-major) / ``(N, T)`` (``series_dim=1``), as the series are laid out. Inside an
        expectation with several draws per row (its values hold ``copies`` copies of the batch's rows, ``rows`` in
        all, sample-major), a mask of one row per row of the batch is repeated as the values are."""
        layout = "(T, N)" if self.series_dim == 0 else "(N, T)"
        if not isinstance(mask, Tensor):
            raise TypeError(f"IterativeLoss: mask must be a tensor of step weights, (T,) or {layout}, got "
                            f"{type(mask).__name__}")
        if mask.dim() not in (1, 2):
            raise ValueError(f"IterativeLoss: mask must be (T,) (one weight per step) or {layout} (one per row and "
                             f"step, time along dim {self.series_dim} as the series), got shape {tuple(mask.shape)}")
        # T: the series' length (max_iter may take fewer of their steps), else max_iter
        length = values[self.series_var[0]].shape[self.series_dim] if self.series_var else steps
        time_dim = self.series_dim if mask.dim() == 2 else 0
        if mask.shape[time_dim] != length:
            which = f"the series' {length}" if self.series_var else f"max_iter={length}"
            raise ValueError(f"IterativeLoss: mask of shape {tuple(mask.shape)} has {mask.shape[time_dim]} steps "
                             f"along dim {time_dim}, expected {which} (shape (T,) or {layout})")
        x = values[self.series_var[0]] if self.series_var else None
        if x is not None and x.dim() > 1:
            rows = x.shape[1 - self.series_dim]
        if mask.dim() == 2 and copies > 1 and rows is not None and mask.shape[1 - time_dim] * copies == rows:
            mask = mask.repeat(copies, 1) if time_dim == 1 else mask.repeat(1, copies)  # as the values' copies
        if mask.dim() == 2 and x is not None and x.dim() > 1 and mask.shape[1 - time_dim] != rows:
            # (a step loss reduced over the batch would take any number)
            inside = (f": {rows // copies} rows repeated for the {copies} draws per row of an enclosing expectation; "
                      "give the mask one row per row of the batch" if copies > 1 and rows % copies == 0 else "")
            raise ValueError(f"IterativeLoss: mask of shape {tuple(mask.shape)} has {mask.shape[1 - time_dim]} rows, "
                             f"but the series {self.series_var[0]} of shape {tuple(x.shape)} has {rows}{inside} "
                             f"(shape (T,) or {layout})")
        if not mask.is_floating_point():  # a bool or 0/1 integer mask (Pixyz takes mask.float())
            mask = mask.to(torch.get_default_dtype())
        return mask.unbind(time_dim)

    def _partly_reduced(self) -> bool:
        """Whether the step loss, one value per row, has a term reduced over the batch inside (``kl.mean() - E(q,
        LogProb(p))``: `_kind`'s mixed kind, found once from the formula)."""
        kind = self.__dict__.get("_step_kind")  # (read from __dict__: an IterativeLoss unpickled has none yet)
        if kind is None:
            kind = self.__dict__["_step_kind"] = _kind(self.step_loss, {})
        return kind == _MIXED

    def _warn_reduced(self, weights: tuple[Tensor, ...], partly: bool = False) -> None:
        """Warn (once) that a per-row mask (``weights``: its steps) meets a step loss reduced over the batch (with
        ``partly``: a per-row step loss with a term reduced over the batch inside), if the mask weighs the rows of some
        step differently (padding): the reduced value holds the padded rows' costs."""
        mask = torch.stack(weights)
        if not bool((mask != mask[:, :1]).any()):  # every row weighed alike at each step: a (T,) mask, nothing mixed
            return
        self._mask_warned = True
        if partly:
            warn_user(f"IterativeLoss: the step loss {self.step_loss} is one value per row, but part of it is reduced "
                      "over the batch (a term under .mean() or .sum() inside the step, e.g. kl.mean() - E(q, "
                      "LogProb(p))): that part holds every row's cost, so the padded rows' costs still enter every "
                      "row's loss and gradient through it although the per-row mask drops their steps. Write every "
                      "term of the step loss per row (e.g. IterativeLoss(kl - E(q, LogProb(p)), ...).mean())")
            return
        warn_user(f"IterativeLoss: the step loss {self.step_loss} is reduced over the batch (one value per step, "
                  "e.g. by .mean() or .sum() inside the step), so the per-row mask only multiplies that value, which "
                  "holds every row's cost: the padded rows' costs still enter every row's loss and gradient (as in "
                  "Pixyz). Write the step loss per row, without .mean()/.sum() over the batch (e.g. "
                  "IterativeLoss(kl - E(q, LogProb(p)), ...).mean()), so that the mask can drop the padded rows' "
                  "steps")

    @staticmethod
    def _weighted(value: Any, weight: Tensor, loss: Loss) -> Tensor:
        """``value`` (of ``loss`` at one step) times the step's weight: one number, or one per row, along the first
        dimension of a per-row value (a value with no rows, reduced over the batch, becomes one value per row, as
        Pixyz's broadcast makes it)."""
        value = torch.as_tensor(value)
        weight = weight.to(value.device, value.dtype) if value.is_floating_point() else weight.to(value.device)
        if weight.dim() == 0 or value.dim() == 0:
            return value * weight
        if value.shape[0] != weight.shape[0]:
            raise ValueError(f"IterativeLoss: mask has {weight.shape[0]} rows per step, but the step loss {loss} "
                             f"has {value.shape[0]} (value of shape {tuple(value.shape)})")
        return value * weight.reshape(-1, *([1] * (value.dim() - 1)))


def _times_exp(value: Any, score: Tensor) -> Any:
    """``value * exp(score)`` for a ``score`` of value 0 (DiCE's magic box): ``value`` bit for bit (an infinite or
    NaN entry too, which an added ``value * score`` made NaN), with the gradient ``value * d score`` added; a
    value that cannot carry a gradient (not floating) is returned as it is."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        return value
    factor = torch.exp(score)
    return value * (factor if factor.dtype == value.dtype else factor.to(value.dtype))
