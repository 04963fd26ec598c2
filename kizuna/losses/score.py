r"""Score matching: fit :math:`s_\theta(x) \approx \nabla_x \log p_{data}(x)` without a normaliser.

* Exact (Hyvärinen 2005): :math:`J = \mathbb{E}_{p_{data}}[\operatorname{tr}(\nabla_x s_\theta(x))
  + \frac12\|s_\theta(x)\|^2]` (one backward pass per dimension) — `ScoreMatchingError`.
* Sliced (Song et al. 2019, arXiv:1905.07088): with random projections :math:`v \sim p_v`,
  :math:`\mathbb{E}[v v^\top] = I`,
  :math:`J = \mathbb{E}_{p_{data}}\mathbb{E}_{p_v}[v^\top \nabla_x (v^\top s_\theta(x))
  + \frac12 (v^\top s_\theta(x))^2]` — `SlicedScoreError` (``variance_reduction`` replaces the
  last term by its expectation :math:`\frac12\|s_\theta\|^2`, valid for Gaussian :math:`v`).
* Denoising (Vincent 2011): :math:`\mathbb{E}_{p_{data}(x)}\mathbb{E}_{q(\tilde x|x)}
  [\frac12\|s_\theta(\tilde x) - \nabla_{\tilde x}\log q(\tilde x|x)\|^2]`, whose minimiser is the score of
  the noised data :math:`q(\tilde x) = \int q(\tilde x|x)p_{data}(x)dx` — `DenoisingScoreError`;
  ``noise_weighting`` multiplies it by the noise variance :math:`\sigma^2` (Song & Ermon 2019,
  arXiv:1907.05600, for noise-conditional scores).

A score model is either a network :math:`s_\theta(\cdot)` written as a `Deterministic`
conditioned on the scored variable, whose one output is the score, or any distribution that
defines the scored variable with a (possibly unnormalised) log-density, whose score
:math:`\nabla_x \log p_\theta(x)` is taken by autograd (e.g. an `EnergyDistribution`).
The scored variable is treated as data (no gradient flows into its draw).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from kizuna._data import check_int
from kizuna._text import LATEX, prob_text, symbol, var_text
from kizuna.distributions.base import flat_rows, require_distributions, sum_rows
from kizuna.distributions.energy import autograd_values, input_leaf, outside_inference_mode
from kizuna.formula.expr import EvalContext, Loss, Tensor
from kizuna.losses.expectation import Expectation


def _is_network(score: Any, var: str) -> bool:
    """A score network is conditioned on the scored variable; a density defines it."""
    return var not in score.var and var in score.cond_var


def _check_model(who: str, score: Any, var: str) -> None:
    require_distributions(who, score=score)  # (a string or a bare network failed later, reading .var)
    if var in score.var:
        return
    if var not in score.cond_var:
        raise ValueError(f"the score model {score.prob_text} must be conditioned on {var}, the scored variable "
                         "(a score network), or define it (a density)")
    if len(score.var) != 1:
        raise ValueError(f"the score network {score.prob_text} must output one variable (the score)")


def score_value(score: Any, values: dict[str, Any], var: str, create_graph: bool = True,
                wrt_x: bool = True) -> tuple[Tensor, Tensor]:
    """``(x, s(x))``: the scored variable as a leaf, and the model's score at it.

    Where the score is differentiated with respect to ``x`` (``wrt_x``, or a density's autograd score) ``x`` is a new
    leaf (`input_leaf`) in any grad mode, inside ``torch.inference_mode()`` too, where the result is the one taken
    under ``torch.no_grad()``; a caller that differentiates ``s`` again does so under ``outside_inference_mode()``.

    Args:
        create_graph: keep the graph of a density's autograd score (to train through it); without
            it the family's closed-form score is used when it has one (a fixed target score).
        wrt_x: the caller differentiates the score with respect to ``x`` (the exact and sliced
            objectives), so ``x`` requires grad; without it a network's score is evaluated at ``x``
            as data, and backward computes no gradient for ``x`` (denoising score matching).
    """
    network = _is_network(score, var)
    if not create_graph and not network:  # a target score: the family's closed form if it has one
        closed = score.closed_form_score(values)
        if closed is not None:
            return values[var], closed
    derivative = wrt_x or not network
    # a derivative with respect to x also inside torch.inference_mode() (`input_leaf`): there torch.enable_grad() gave
    # the score no graph, so the exact and sliced errors of a network dropped their trace term silently (taken as a
    # score that ignores x) and a density's score raised torch's "element 0 of tensors does not require grad"
    with outside_inference_mode() if derivative else contextlib.nullcontext(), torch.enable_grad():
        x = input_leaf(values[var]) if derivative else values[var].detach()
        given = {**(autograd_values(values) if derivative else values), var: x}
        if network:
            s = score.sample(given, return_all=False)[score.var[0]]
        else:
            (s,) = torch.autograd.grad(score.get_log_prob(given).sum(), x, create_graph=create_graph)
    if s.shape != x.shape:
        raise ValueError(f"the score of {var} has shape {tuple(s.shape)}, but {var} has {tuple(x.shape)}")
    return x, s


def score_text(score: Any, var: str, fmt: dict[str, str]) -> str:
    """``s_θ(x,σ)`` for a network, ``∇_x log p(x)`` for a density."""
    if _is_network(score, var):
        return prob_text(score.name, score.cond_var, [], fmt)
    grad = r"\nabla_{{{}}}" if fmt is LATEX else "∇_{}"
    return grad.format(var_text(var, fmt)) + " " + fmt["log"].format(symbol(score, fmt))


class ScoreMatchingError(Loss):
    """:math:`\\operatorname{tr}(\\nabla_x s(x)) + \\frac12\\|s(x)\\|^2` per row (Hyvärinen 2005; module docstring)."""

    precedence = 10  # its formula is a sum

    def __init__(self, score: Any, var: str = "x") -> None:
        _check_model("ScoreMatchingError", score, var)
        super().__init__([var] + [v for v in getattr(score, "input_var", []) if v != var])
        self.score, self.var = score, var

    def _own_distributions(self) -> list[Any]:
        return [self.score]

    def _value(self, ctx: EvalContext) -> Tensor:
        create = torch.is_grad_enabled()  # a graph of the trace only to train with (an evaluation takes none)
        # also under no_grad (Model.test, validation) and inside torch.inference_mode() (`score_value`): the value taken
        # with gradients, as SlicedScoreError's
        with outside_inference_mode(), torch.enable_grad():
            x, s = score_value(self.score, ctx.values, self.var)
            trace = x.new_zeros(x.shape[0])
            # the columns inside too: a new view (scalar data's unsqueeze, images' flatten) made under no_grad had no
            # graph, so the trace term was dropped silently (the value was 1/2||s||^2 alone)
            flat = flat_rows(s)
            for i in range(flat.shape[1] if flat.requires_grad else 0):  # a score that ignores x: trace 0
                (g,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=create, retain_graph=True,
                                           allow_unused=True)
                if g is not None:
                    trace = trace + flat_rows(g)[:, i]
        return trace + 0.5 * sum_rows(s.pow(2))

    def _render(self, fmt: dict[str, str]) -> str:
        s = score_text(self.score, self.var, fmt)
        return (r"\operatorname{{tr}}(\nabla_{1} {0}) + \frac{{1}}{{2}}\|{0}\|^2" if fmt is LATEX
                else "tr(∇_{1} {0}) + 1/2||{0}||^2").format(s, self.var)


class SlicedScoreError(Loss):
    """:math:`v^\\top\\nabla_x(v^\\top s(x)) + \\frac12(v^\\top s(x))^2` per row (module docstring).

    Args:
        score: the score model.
        var: the scored variable.
        projection: the variable holding :math:`v` (drawn by an enclosing expectation).
        variance_reduction: use :math:`\\frac12\\|s(x)\\|^2` for the last term (SSM-VR).
    """

    precedence = 10  # its formula is a sum

    def __init__(self, score: Any, var: str = "x", projection: str = "v", variance_reduction: bool = False) -> None:
        _check_model("SlicedScoreError", score, var)
        super().__init__([var, projection] + [v for v in getattr(score, "input_var", []) if v != var])
        self.score, self.var, self.projection, self.variance_reduction = score, var, projection, variance_reduction

    def _own_distributions(self) -> list[Any]:
        return [self.score]

    def _value(self, ctx: EvalContext) -> Tensor:
        create = torch.is_grad_enabled()  # a graph of the derivative only to train with (an evaluation takes none)
        # also under no_grad (Model.test, validation): the projection's graph is needed; and inside
        # torch.inference_mode() (`score_value`), where a projection drawn there is copied (`autograd_values`: autograd
        # cannot save an inference tensor for backward)
        with outside_inference_mode(), torch.enable_grad():
            values = autograd_values(ctx.values)
            x, s = score_value(self.score, values, self.var)
            v = values[self.projection]
            if v.shape != x.shape:
                raise ValueError(
                    f"the projection {self.projection} has shape {tuple(v.shape)}, {self.var} has {tuple(x.shape)}")
            vs = sum_rows(v * s)
            (g,) = torch.autograd.grad(vs.sum(), x, create_graph=create, allow_unused=True) if vs.requires_grad \
                else (None,)
        last = sum_rows(s.pow(2)) if self.variance_reduction else vs.pow(2)
        return (0.0 if g is None else sum_rows(g * v)) + 0.5 * last  # g None: a score that ignores x

    def _render(self, fmt: dict[str, str]) -> str:
        s, v, x = score_text(self.score, self.var, fmt), self.projection, self.var
        if fmt is LATEX:
            last = r"\|{0}\|^2" if self.variance_reduction else r"({1}^\top {0})^2"
            return (r"{1}^\top \nabla_{2}({1}^\top {0}) + \frac{{1}}{{2}}" + last).format(s, v, x)
        last = "||{0}||^2" if self.variance_reduction else "({1}^T {0})^2"
        return ("{1}^T ∇_{2}({1}^T {0}) + 1/2 " + last).format(s, v, x)


class DenoisingScoreError(Loss):
    """:math:`\\frac12\\|s(\\tilde x) - \\nabla_{\\tilde x}\\log q(\\tilde x|x)\\|^2` per row (module docstring).

    Args:
        score: the score model, evaluated at the draw of ``noise``.
        noise: the noise kernel :math:`q(\\tilde x|x)` (e.g. a `Normal` with ``loc="x"``).
        noise_weighting: multiply by the noise variance (mean over features) of each row.
    """

    precedence = 20  # its formula is a product

    def __init__(self, score: Any, noise: Any, noise_weighting: bool = False) -> None:
        require_distributions("DenoisingScoreError", noise=noise)
        var = noise.var[0]
        _check_model("DenoisingScoreError", score, var)
        others = [v for v in getattr(score, "input_var", []) if v != var]
        super().__init__([var] + noise.input_var + others)
        self.score, self.noise, self.var, self.noise_weighting = score, noise, var, noise_weighting

    def _own_distributions(self) -> list[Any]:
        return [self.score, self.noise]

    def _value(self, ctx: EvalContext) -> Tensor:
        _, s = score_value(self.score, ctx.values, self.var, wrt_x=False)
        target = score_value(self.noise, ctx.values, self.var, create_graph=False)[1].detach()
        out = 0.5 * sum_rows((s - target).pow(2))
        if self.noise_weighting:
            out = out * flat_rows(self.noise.sample_variance(ctx.values)).mean(1)
        return out

    def _render(self, fmt: dict[str, str]) -> str:
        s, target = score_text(self.score, self.var, fmt), score_text(self.noise, self.var, fmt)
        text = (r"\frac{{1}}{{2}}\|{} - {}\|^2" if fmt is LATEX else "1/2||{} - {}||^2").format(s, target)
        return ("\\sigma^2 " if fmt is LATEX else "σ^2 ") + text if self.noise_weighting else text


def denoising_score_matching(score: Any, noise: Any, noise_weighting: bool = False) -> Loss:
    """:math:`\\mathbb{E}_{q(\\tilde x|x)}[\\frac12\\|s(\\tilde x) - \\nabla\\log q(\\tilde x|x)\\|^2]` per row.

    >>> from kizuna.distributions import Normal
    >>> q = Normal(var=["x_tilde"], cond_var=["x"], loc="x", scale=0.1, name="q")
    >>> p = Normal(var=["x_tilde"], loc=0.0, scale=1.0, features_shape=[2])
    >>> print(denoising_score_matching(p, q))
    E_{q(x_tilde|x)}[1/2||∇_x_tilde log p(x_tilde) - ∇_x_tilde log q(x_tilde|x)||^2]
    """
    return Expectation(noise, DenoisingScoreError(score, noise, noise_weighting))


def sliced_score_matching(score: Any, projection: Any, var: str = "x", n_projections: int = 1,
                          variance_reduction: bool = False) -> Loss:
    """:math:`\\mathbb{E}_{p_v(v)}[v^\\top\\nabla_x(v^\\top s(x)) + \\frac12(v^\\top s(x))^2]` per row.

    Args:
        projection: :math:`p_v(v)`, e.g. ``Normal(var=["v"], loc=0.0, scale=1.0, features_shape=[D])``.
        n_projections: projections per data point (their mean is taken).

    >>> from kizuna.distributions import Normal
    >>> p_v = Normal(var=["v"], loc=0.0, scale=1.0, features_shape=[2], name="p_v")
    >>> p = Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[2])
    >>> print(sliced_score_matching(p, p_v))
    E_{p_{v}(v)}[v^T ∇_x(v^T ∇_x log p(x)) + 1/2 (v^T ∇_x log p(x))^2]
    """
    check_int("sliced_score_matching: n_projections", n_projections, 1)  # 0 and -2 were taken as 1
    require_distributions("sliced_score_matching", projection=projection)
    shape: Sequence[int] = (int(n_projections),) if n_projections > 1 else ()
    error = SlicedScoreError(score, var, projection.var[0], variance_reduction)
    return Expectation(projection, error, sample_shape=shape)
