r"""Distributions defined by a flow: `TransformedDistribution` and `InverseTransformedDistribution`.

Both push a base distribution (the ``prior``, over one variable) through an invertible
`kizuna.flows.Flow` :math:`f` and score points exactly by the change of variables.

* `TransformedDistribution` — the sampling direction (Pixyz's name; e.g. a flow posterior
  :math:`q(z_K|x)` in variational inference, Rezende & Mohamed 2015, arXiv:1505.05770):

  .. math:: z_0 \sim p(z_0),\quad x = f(z_0),\qquad
            \log p(x) = \log p(z_0) - \log|\det J_f(z_0)|,\quad z_0 = f^{-1}(x).

* `InverseTransformedDistribution` — the density-estimation direction (RealNVP, MAF):

  .. math:: z = f(x),\qquad \log p(x) = \log p(z) + \log|\det J_f(x)|,\qquad
            x = f^{-1}(z),\ z \sim p(z) \text{ to sample}.

A conditional flow takes its context from ``cond_var`` (one variable: its tensor as is; several:
their flattened values concatenated, a variable given one row repeated for every row), passed to every
layer as ``y``. The prior may be conditional as well; the distribution's ``cond_var`` is the union.

The density is one value per row. Draws made with a ``sample_shape``, ``(*sample_shape, batch, *features)``,
are scored row by row, with a condition given per batch row taken for each draw, and summed as every family sums
such draws: over every dimension but the first. The features' shape is the prior's where the flow keeps it;
for a conditional prior (whose shape is known only from its condition) or a reshaping flow (`Squeeze`,
`Flatten`) it is read from the flow's layers without running them (`kizuna.flows.Flow.row_shape`: a MAF takes
vectors, a `Squeeze` images, ...). Where even that is unknown (a conditional prior under layers that take
vectors and images alike, such as `ActNorm` alone) a value is scored as one batch of rows.

Values go to the flow in its parameters' dtype (its floating buffers' for a flow without floating parameters):
integer data and floating values of a narrower dtype are converted, floating values of a wider dtype (the data, the
context, the prior's draw) are refused before the flow runs (outside ``torch.autocast``), naming both dtypes.

Scoring a draw of the same evaluation needs no inverse: while a loss is evaluated, a
reparameterised draw records its base point and log-determinant (see `kizuna.formula.memo`),
and ``get_log_prob`` of that very tensor reuses them. So an IAF posterior costs one network pass
per layer in an ELBO; any other point is scored through the inverse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from kizuna._data import first_nonfinite
from kizuna.distributions.base import (
    Distribution,
    Tensor,
    XDict,
    _as_list,
    as_sample_shape,
    batch_size_of,
    draws_as_rows,
    flat_rows,
    one_rows_expanded,
    sum_rows,
)
from kizuna.distributions.flow_matching import sample_n_with_context
from kizuna.distributions.torch_dist import validation_enabled
from kizuna.flows.base import Flow, RowShape, drawing, scoring_data
from kizuna.formula.memo import memoized
from kizuna.utils import _autocast_state


class _FlowDistribution(Distribution):
    """Argument checks and context handling shared by both directions."""

    def __init__(self, prior: Distribution, flow: Flow, var: str | Sequence[str],
                 cond_var: str | Sequence[str] | None, name: str) -> None:
        kind = type(self).__name__
        if not isinstance(prior, Distribution):
            raise TypeError(f"{kind}: prior must be a kizuna Distribution, got {type(prior).__name__}")
        if not isinstance(flow, Flow):
            raise TypeError(f"{kind}: flow must be a kizuna.flows.Flow (or FlowList), got {type(flow).__name__}")
        if len(prior.var) != 1:
            raise ValueError(f"{kind}: the prior must define one variable, {prior.prob_text} defines {prior.var}")
        flow_cond = _as_list(cond_var, "cond_var")
        var_list = _as_list(var, "var")
        if len(var_list) != 1:
            raise ValueError(f"{kind}: var must be one variable, got {var_list}")
        cond = list(dict.fromkeys(prior.cond_var + flow_cond))
        if prior.var[0] in cond:
            raise ValueError(f"{kind}: the prior's variable {prior.var[0]} cannot also be a conditioning variable")
        # a reshaping flow gives the variable another shape than the prior's: left unknown (not guessed by a pass
        # through the flow, which would initialise data-dependent layers such as ActNorm)
        reshaped = any(getattr(m, "changes_shape", False) for m in flow.modules())
        super().__init__(var_list, cond, name, () if reshaped else prior.features_shape)
        self.prior = prior
        self.flow = flow
        self._flow_cond = flow_cond

    @property
    def flow_cond_var(self) -> list[str]:
        """The variables whose values form the flow's context ``y``."""
        return list(self._flow_cond)

    @property
    def distribution_name(self) -> str:
        return f"{type(self).__name__}({self.prior.distribution_name})"

    def _flow_dtype(self) -> torch.dtype | None:
        """The dtype of the flow's first floating parameter, else of its first floating buffer (a parameter-free flow
        of float64 constants is float64: it took float32 values unchecked, and a float64 matrix product then failed in
        torch's words), as `kizuna.distributions.base.dtype_references` reads a module; None for a flow without
        floating tensors (it computes in any). The first, not the widest: this runs on every evaluation, and reading
        every parameter's dtype costs about 280 µs on a 16-layer RealNVP, 5% of its forward pass (a flow's layers
        share one dtype; mixed ones fail inside it)."""
        for tensors in (self.flow.parameters(), self.flow.buffers()):
            dtype = next((t.dtype for t in tensors if t.is_floating_point()), None)
            if dtype is not None:
                return dtype
        return None

    def _check_dtype(self, value: Tensor, what: str) -> Tensor:
        """A floating ``value`` (``what`` names it) in the flow's dtype, checked before the flow runs: one of a narrower
        dtype (float16 data into a float32 flow) is converted, which loses nothing; a wider one (float64 into float32)
        is refused, naming both dtypes (it failed in the first layer with a network, with torch's "mat1 and mat2 must
        have the same dtype", naming neither the variable nor the dtype wanted, after an ActNorm had initialised itself
        from that very batch). Not under ``torch.autocast``, which computes in mixed dtypes by design."""
        want = self._flow_dtype()
        if want is None or not value.is_floating_point() or value.dtype == want or _autocast_state():
            return value
        if torch.promote_types(value.dtype, want) == want:
            return value.to(want)
        raise ValueError(f"{self.prob_text}: {what} is {value.dtype} but the flow is {want}: convert one (e.g. "
                         f".to({want}) on the value, or the distribution's .to({value.dtype}))")

    def _context(self, x_dict: Mapping[str, Any]) -> Tensor | None:
        if not self._flow_cond:
            return None
        if len(self._flow_cond) == 1:
            context = x_dict[self._flow_cond[0]]
            if isinstance(context, Tensor):
                context = self._check_dtype(context, f"the flow's context {self._flow_cond[0]}")
            return context
        # one row conditions every row (as a single context does in the layers), where torch.cat refused the mix
        # (flat_rows: reshape(rows, -1) failed on an empty batch)
        parts = one_rows_expanded([flat_rows(x_dict[c]) for c in self._flow_cond])
        if any(part.shape[0] != parts[0].shape[0] for part in parts):
            shapes = ", ".join(f"{c} {tuple(x_dict[c].shape)}" for c in self._flow_cond)
            raise ValueError(f"{self.prob_text}: the flow's context variables have different numbers of rows "
                             f"({shapes}); give each one row per row of {self._var[0]}, or one row for all")
        context = torch.cat(parts, -1)
        context = self._check_dtype(context, f"the flow's context ({', '.join(self._flow_cond)})")
        return context

    #: whether ``var`` is the flow's input, the prior's variable its output (`InverseTransformedDistribution`)
    _var_is_flow_input = False

    def _row_shape(self) -> RowShape:
        """The shape of one row of ``var`` as the flow's layers give it from the prior's (`Flow.row_shape`; None
        entries: sizes not known, None: not known at all). A conditional prior's features are not known (``()``)."""
        return self.flow.row_shape(tuple(self.prior.features_shape) or None, self._var_is_flow_input)

    def _rows(self, value: Tensor, x_dict: Mapping[str, Any]) -> tuple[Tensor, Mapping[str, Any], torch.Size | None]:
        """`draws_as_rows` with this distribution's features and conditioning variables. Where ``features_shape``
        is not known (a conditional prior's, a reshaping flow's: ``()``, the losses read it so) the row shape the
        flow gives (`_row_shape`) is taken, its unknown sizes from the value: draws ``(S, B, D)`` of a VAE's IAF
        posterior over an encoder went to the flow whole, whose first layer refused them as ``B`` features. A value
        whose trailing dimensions do not fit, or any value where the row shape is not known, is scored as it is."""
        features = self.features_shape
        if not features and (shape := self._row_shape()) is not None:
            lead = value.dim() - len(shape)
            if lead > 1 and all(s is None or s == v for s, v in zip(shape, value.shape[lead:])):
                features = value.shape[lead:]
        return draws_as_rows(value, x_dict, features, self.input_var)

    def _per_draw(self, log_prob: Tensor, shape: torch.Size | None) -> Tensor:
        """The density of each row summed as `get_log_prob` sums draws made with a ``sample_shape``: every dimension
        of ``(*sample_shape, batch)`` but the first (Pixyz's convention, as the other families)."""
        return log_prob if shape is None else sum_rows(log_prob.reshape(shape))

    def _memo_inputs(self, value: Tensor, x_dict: Mapping[str, Any]) -> list[Any]:
        return [value, *(x_dict.get(c) for c in self._cond_var)]

    def forward(self, x: Tensor, y: Tensor | None = None, compute_jacobian: bool = True) -> Tensor:
        """The flow applied to ``x`` (context ``y``); with ``compute_jacobian`` its log-determinant per row
        is kept in `logdet_jacobian` (Pixyz's ``forward``)."""
        return self.flow(x, y, compute_jacobian=compute_jacobian)

    def inverse(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The inverse flow applied to ``z`` (context ``y``), without the log-determinant (Pixyz)."""
        return self.flow.inverse(z, y)

    @property
    def logdet_jacobian(self) -> Tensor | None:
        """:math:`\\log|\\det J_f(x)|` per row from the last ``forward(..., compute_jacobian=True)``."""
        return self.flow.logdet_jacobian

    def sample(self, x_dict: Mapping[str, Any] | None = None, batch_n: int | None = None,
               sample_shape: Sequence[int] | torch.Size = (), return_all: bool = True, reparam: bool = False,
               sample_mean: bool = False, return_hidden: bool = True, **kwargs: Any) -> XDict:
        """See `Distribution.sample`; with ``return_hidden`` (Pixyz's default) also the prior's draw that the flow
        mapped to each returned value, under the prior's variable (the base point :math:`z_0`), in the same shape.
        Where the prior's variable is named like ``var`` (as Pixyz allows), that name holds the flow's value and the
        base point is not returned. Inside a product or a loss only ``var`` is drawn."""
        if not return_hidden or sample_mean or self.prior.var[0] == self._var[0]:
            return super().sample(x_dict, batch_n, sample_shape, return_all, reparam, sample_mean, **kwargs)
        captured: list[Tensor] = []
        self.__dict__["_base_draws"] = captured  # (a plain attribute, not a buffer; removed below)
        try:
            out = super().sample(x_dict, batch_n, sample_shape, return_all, reparam, sample_mean, **kwargs)
        finally:
            self.__dict__.pop("_base_draws", None)
        if len(captured) == 1:  # (one draw: a value given for ``var`` is redrawn, as Pixyz)
            shape = as_sample_shape(self.prob_text, sample_shape)  # (a bare number of draws n is (n,))
            base, n = captured[0], math.prod(shape)
            out[self.prior.var[0]] = base.reshape(*shape, base.shape[0] // n, *base.shape[1:]) if shape else base
        return out

    def _sample_n(self, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
        """See `Distribution._sample_n`. Where the draws have more rows than one (``batch_n``, else the inputs' most
        rows) and an input has one row (one row conditions every row), the inputs are made one row per draw before
        they are repeated (`sample_n_with_context`): repeated ``n`` times, the one row read as ``n`` rows against the
        ``rows * n`` drawn, and every conditional layer refused it (``sample({"c": c[:1]}, batch_n=5,
        sample_shape=(3,))``; a conditional Normal draws ``(3, 5, ...)`` there, and so does this now; an input of
        other rows is a ValueError naming both counts). Otherwise the repeated inputs, as before (a loss scores the
        draws with them: a reparameterised draw's memo then spares the inverse)."""
        rows = batch_n if batch_n is not None else batch_size_of(x_dict)
        if rows is None or rows == 1 or not any(
                isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == 1 for v in x_dict.values()):
            return super()._sample_n(x_dict, repeated, n, batch_n, reparam)
        return sample_n_with_context(self, x_dict, n, batch_n, reparam)

    def _draw_base(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> Tensor:
        """A draw of the prior's variable, as many rows as the context when nothing else says."""
        if batch_n is None and not self.prior.cond_var:  # the context's rows: a one-row variable beside a batch
            # conditions every row (the first variable's rows gave one base row against a batch of context)
            rows = [v.shape[0] for c in self._flow_cond if isinstance(v := x_dict.get(c), Tensor) and v.dim() > 0]
            # without a context, the other values' rows, as every family draws (`batch_size_of`: an unrelated key of
            # a data dict too); it drew one row, and with a sample_shape failed ("shape '[2, 0, 2]' is invalid")
            batch_n = next((r for r in rows if r != 1), rows[0] if rows else batch_size_of(x_dict))
        inputs = {k: x_dict[k] for k in self.prior.input_var}
        base = self.prior._sample(inputs, batch_n, reparam)[self.prior.var[0]]
        base = self._check_dtype(base, f"the prior's draw of {self.prior.var[0]}")  # before the flow runs (`_value`)
        captured = self.__dict__.get("_base_draws")
        if captured is not None:  # this distribution's own `sample` with return_hidden
            captured.append(base)
        return base

    def _base_log_prob(self, base: Tensor, x_dict: Mapping[str, Any]) -> Tensor:
        inputs = {k: x_dict[k] for k in self.prior.input_var}
        return self.prior.get_log_prob({**inputs, self.prior.var[0]: base})

    def _value(self, x_dict: Mapping[str, Any], sum_features: bool) -> Tensor:
        if not sum_features:
            raise ValueError(f"{self.prob_text}: a flow's density is one value per row (the change of variables "
                             "couples its features): sum_features=False and feature_dims are not supported; "
                             "use sum_features=True")
        value = x_dict[self._var[0]]
        if not isinstance(value, Tensor):
            raise TypeError(f"{self.prob_text}: {self._var[0]} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():  # integer or boolean data in the flow's float dtype, as the families take
            # them (a raw "mat1 and mat2 must have the same dtype" in the first layer)
            like = next((t.dtype for t in self.parameters() if t.is_floating_point()), torch.get_default_dtype())
            value = value.to(self._flow_dtype() or like)
        value = self._check_dtype(value, self._var[0])
        if validation_enabled():  # before the flow runs: a NaN would spread over the batch (ActNorm's initialisation,
            # BatchNorm's statistics) and the prior's check would name its variable and the wrong row
            nonfinite = first_nonfinite({self._var[0]: value}, "x_dict")
            if nonfinite is not None:
                raise ValueError(f"{self.prob_text}: {nonfinite} (not a number a flow can score); remove or impute it")
        return value


class TransformedDistribution(_FlowDistribution):
    """:math:`x = f(z_0)`, :math:`z_0 \\sim` ``prior`` (module docstring).

    Args:
        prior: the base distribution :math:`p(z_0)` (or :math:`q(z_0|x)`), over one variable.
        flow: :math:`f`, a `Flow` or `FlowList`.
        var: the name of :math:`x`.
        name: the symbol in formulas.
        cond_var: the variables forming the flow's context (conditional flow). Pixyz's positional
            order ``(prior, flow, var, name)`` is kept, so give it by keyword.

    >>> import torch
    >>> from kizuna.distributions import Normal
    >>> from kizuna.flows import PlanarFlow
    >>> q0 = Normal(var=["z0"], loc=torch.zeros(2), scale=torch.ones(2))
    >>> q = TransformedDistribution(q0, PlanarFlow(2), var=["z"], name="q")
    >>> print(q)
    q(z)
    >>> q.get_log_prob(q.sample(batch_n=3)).shape
    torch.Size([3])
    """

    def __init__(self, prior: Distribution, flow: Flow, var: str | Sequence[str], name: str = "p",
                 cond_var: str | Sequence[str] | None = None) -> None:
        super().__init__(prior, flow, var, cond_var, name)

    @property
    def has_reparam(self) -> bool:
        return self.prior.has_reparam

    @property
    def flow_input_var(self) -> list[str]:
        """The prior's variable, which the flow maps to ``var`` (Pixyz)."""
        return self.prior.var

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        # the base's parameters with their graph (the evaluation's memo keeps them for a later log-density: a
        # score-function estimator differentiates it); without reparameterisation only the flow runs without one
        base = self._draw_base(x_dict, batch_n, reparam)
        with nullcontext() if reparam else torch.no_grad(), drawing():  # (ActNorm does not initialise from draws)
            x, logdet = self.flow.forward_and_logdet(base if reparam else base.detach(), self._context(x_dict))
        if reparam:  # score this draw later in the same evaluation without the inverse
            memoized(self, "inverse", self._memo_inputs(x, x_dict), lambda: (base, -logdet))
        return {self._var[0]: x}

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        x, x_dict, shape = self._rows(self._value(x_dict, sum_features), x_dict)
        base, logdet = memoized(self, "inverse", self._memo_inputs(x, x_dict), lambda: self._scored(x, x_dict))
        return self._per_draw(self._base_log_prob(base, x_dict) + logdet, shape)

    def _scored(self, x: Tensor, x_dict: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        with scoring_data():  # the inverse runs over data here: ActNorm may initialise from it (a draw's may not)
            return self.flow.inverse_and_logdet(x, self._context(x_dict))


class InverseTransformedDistribution(_FlowDistribution):
    """:math:`z = f(x) \\sim` ``prior``: exact likelihood through the flow (module docstring).

    Arguments as in `TransformedDistribution` (here ``cond_var`` comes before ``name``, as in Pixyz);
    ``flow`` maps data to the prior's variable.

    >>> import torch
    >>> from kizuna.distributions import Normal
    >>> from kizuna.flows import MAF
    >>> prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="p_prior")
    >>> p = InverseTransformedDistribution(prior, MAF(2, hidden_features=[8]), var=["x"])
    >>> x = torch.zeros(1, 2)
    >>> torch.allclose(p.get_log_prob({"x": x}), prior.get_log_prob({"z": x}))  # a new MAF is the identity
    True
    """

    _var_is_flow_input = True

    def __init__(self, prior: Distribution, flow: Flow, var: str | Sequence[str],
                 cond_var: str | Sequence[str] | None = None, name: str = "p") -> None:
        super().__init__(prior, flow, var, cond_var, name)

    @property
    def has_reparam(self) -> bool:
        return self.prior.has_reparam and self.flow.has_differentiable_inverse

    @property
    def flow_output_var(self) -> list[str]:
        """The prior's variable, which the flow maps data to (Pixyz)."""
        return self.prior.var

    def inference(self, x_dict: Mapping[str, Any], return_all: bool = True) -> XDict:
        """``{prior variable: f(x)}``: the data mapped to the base space (Pixyz); with ``return_all`` beside the
        entries of ``x_dict`` (where the prior's variable is named like ``var``, that name then holds ``f(x)``)."""
        x_dict = dict(x_dict)
        self._require(x_dict, self._var + self._flow_cond)
        x = x_dict[self._var[0]]
        if isinstance(x, Tensor):
            x = self._check_dtype(x, self._var[0])
        z = self.flow(x, self._context(x_dict), compute_jacobian=False)
        return {**x_dict, self.prior.var[0]: z} if return_all else {self.prior.var[0]: z}

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        base = self._draw_base(x_dict, batch_n, reparam)  # its parameters with their graph (see the other direction)
        with nullcontext() if reparam else torch.no_grad():
            x, logdet = self.flow.inverse_and_logdet(base if reparam else base.detach(), self._context(x_dict))
        if reparam:
            memoized(self, "forward", self._memo_inputs(x, x_dict), lambda: (base, -logdet))
        return {self._var[0]: x}

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        x, x_dict, shape = self._rows(self._value(x_dict, sum_features), x_dict)
        base, logdet = memoized(self, "forward", self._memo_inputs(x, x_dict),
                                lambda: self.flow.forward_and_logdet(x, self._context(x_dict)))
        return self._per_draw(self._base_log_prob(base, x_dict) + logdet, shape)
