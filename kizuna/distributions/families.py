r"""The parametric families: each wraps one ``torch.distributions`` class.

Densities, samplers, entropies and moments are torch's (Normal's density to rounding: through
:math:`z = (x-\mu)/\sigma`, see `Normal._log_prob_kernel`); these classes only name the
parameters and say which torch family they use (STYLE.md habit 1). Every family takes its
parameters as constructor keywords (constants, or the name of a conditioning variable) or
from ``forward(**cond)``; see `kizuna.distributions.torch_dist`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import distributions as D
from torch.distributions import constraints
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.nn import functional as F

from kizuna._data import one_number
from kizuna.distributions.base import Tensor, XDict, batch_size_of
from kizuna.distributions.torch_dist import TorchDistribution, validation_enabled
from kizuna.formula.expr import values_dict

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


class Normal(TorchDistribution):
    r"""Normal: :math:`\mathcal{N}(x; \mu, \sigma^2)`, parameters ``loc`` (μ), ``scale`` (σ > 0).

    >>> import torch
    >>> prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    >>> prior.sample(batch_n=3)["z"].shape
    torch.Size([3, 2])
    >>> prior.get_log_prob({"z": torch.zeros(1, 2)})  # -log(2 pi)
    tensor([-1.8379])
    >>> lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=0.5)  # p(x|z) = N(z, 0.5^2)
    >>> print(lik)
    p(x|z)
    """

    torch_class = D.Normal
    param_names = ("loc", "scale")

    def _log_prob_kernel(self, value: Tensor, params: dict[str, Any]) -> Tensor:
        r""":math:`-\tfrac12 z^2 - \log\sigma - \log\sqrt{2\pi}`, :math:`z = (x-\mu)/\sigma`: torch's value up to
        rounding, without :math:`\sigma^2`, which overflows (σ ≳ 2e19) or underflows (σ ≲ 1e-19) in float32 (torch's
        form gave NaN densities there, and NaN gradients through a product of experts with a tiny scale); two
        operators fewer."""
        z = (value - params["loc"]) / params["scale"]
        return -0.5 * z.pow(2) - params["scale"].log() - _LOG_SQRT_2PI

    def _score_kernel(self, value: Tensor, params: dict[str, Any]) -> Tensor:
        r""":math:`\nabla_x \log \mathcal{N}(x; \mu, \sigma^2) = -(x - \mu)/\sigma^2`, divided by σ twice (σ² may
        overflow or underflow, see `_log_prob_kernel`)."""
        scale = params["scale"]
        return (params["loc"] - value) / scale / scale

    def sample_variance(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        r"""See `Distribution.sample_variance`: :math:`\sigma^2` in the shape of the parameters broadcast
        together (torch's ``Normal.variance``), read from the parameters without building the torch
        distribution while validation is off (it checks the parameters when on)."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_variance", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        params = self._params(x_dict)
        shape = None if validation_enabled() else self._kernel_shape(params, None)
        if shape is None:
            return super().sample_variance(x_dict)
        return params["scale"].pow(2).expand(shape)

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        # (under torch.compile the general path: the plan's check of the buffers' version counters would break the
        # graph, or fail a fullgraph compilation)
        if reparam and self._numbers and not validation_enabled() and not torch.compiler.is_compiling():
            z = self._standard_draw(x_dict, batch_n)
            if z is not None:
                return {self._var[0]: z}
        return super()._sample(x_dict, batch_n, reparam)

    def _standard_draw(self, x_dict: XDict, batch_n: int | None) -> Tensor | None:
        r"""A reparameterised draw of :math:`\mathcal{N}(0, 1)` given as numbers (a GAN's or a flow's prior) without
        the parameters, the row count and the kernel's shape computed again at every draw: the draw `_draw` makes
        (`_rsample_kernel`'s ``randn`` of the rows and the parameters' features, the same numbers), from a plan kept
        while every buffer is unchanged (`_buffers_unchanged`); ``None`` where the general path must draw (another
        distribution, a subclass with its own parameters or draw, a buffer that requires grad or is a ``torch.func``
        transform's, `_buffers_transformed`; `_sample` leaves ``torch.compile`` to the general path)."""
        plan = self.__dict__.get("_standard_plan")
        if plan is None or not self._buffers_unchanged(plan[0]):
            if self._buffers_transformed():  # (no storage to stamp: the general path, the plan not kept)
                return None
            plan = self.__dict__["_standard_plan"] = self._plan_standard_draw()
        features = plan[1]
        if features is None:
            return None
        loc, scale = self._buffers["loc"], self._buffers["scale"]
        if loc.requires_grad or scale.requires_grad:
            return None
        rows = batch_n if batch_n is not None else batch_size_of(x_dict)
        if rows is None:  # no batch at all: one row (values with zero rows draw zero, as `_rows`)
            rows = 1
        return torch.randn((rows, *features), dtype=loc.dtype, device=loc.device)

    def _plan_standard_draw(self) -> tuple[Any, torch.Size | None]:
        """The buffers' stamp and the features of a standard-normal draw (`_standard_draw`), or ``None`` for them."""
        stamp = self._buffers_stamp()
        cls = type(self)
        plain = (cls._draw is TorchDistribution._draw and cls._rsample_kernel is Normal._rsample_kernel
                 and cls._compute_params is TorchDistribution._compute_params and cls._rows is TorchDistribution._rows
                 and cls._kernel_shape is TorchDistribution._kernel_shape and not self._parameters)
        if not (plain and self._is_standard_normal() and "loc" in self._buffers and "scale" in self._buffers):
            return stamp, None
        shape = self._kernel_shape(self._compute_params({}), 1)
        if shape is None or not shape or shape[0] != 1:
            return stamp, None
        return stamp, shape[1:]

    def _rsample_kernel(self, shape: torch.Size, params: dict[str, Any]) -> Tensor:
        r"""torch's draw :math:`\mu + \sigma\epsilon`, the same random stream as ``Normal.rsample``."""
        loc, scale = params["loc"], params["scale"]
        if self._numbers and self._is_standard_normal() and not (loc.requires_grad or scale.requires_grad):
            # N(0, 1) given as numbers (a GAN's or a flow's prior): 0 + ε·1 is ε to the bit, so the draw alone, one
            # operator instead of four (torch's randn is empty(shape).normal_(): the same random stream)
            return torch.randn(shape, dtype=loc.dtype, device=loc.device)
        if loc.shape == shape:  # one call instead of two; row-major like torch's empty(shape), the same numbers
            eps = torch.randn_like(loc, memory_format=torch.contiguous_format)
        else:
            eps = torch.empty(shape, dtype=loc.dtype, device=loc.device).normal_()
        return loc + eps * scale

    def _kl_kernel(self, other: TorchDistribution, params: dict[str, Any],
                   other_params: dict[str, Any]) -> Tensor | None:
        r"""torch's ``kl_normal_normal``:
        :math:`\tfrac12\big(r + \tfrac{(\mu_p-\mu_q)^2}{\sigma_q^2} - 1 - \log r\big)`,
        :math:`r = \sigma_p^2/\sigma_q^2`."""
        if type(other).torch_class is not D.Normal:
            return None
        p_loc, p_scale, q_loc, q_scale = params["loc"], params["scale"], other_params["loc"], other_params["scale"]
        if not (isinstance(p_loc, Tensor) and isinstance(p_scale, Tensor) and isinstance(q_loc, Tensor)
                and isinstance(q_scale, Tensor)):
            return None
        if other._numbers and other._is_standard_normal() and p_loc.shape == p_scale.shape \
                and q_loc.shape[1:] == p_loc.shape[1:] and q_scale.shape[1:] == p_loc.shape[1:] \
                and q_loc.dtype == p_loc.dtype == q_scale.dtype:
            # to N(0, 1) (the usual prior): torch's formula with the divisions by 1 and the subtraction of 0
            # left out, which changes no bit of the result; three operators fewer each way
            var_ratio = p_scale.pow(2)
            return 0.5 * (var_ratio + p_loc.pow(2) - 1 - var_ratio.log())
        var_ratio = (p_scale / q_scale).pow(2)
        t1 = ((p_loc - q_loc) / q_scale).pow(2)
        return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())

    def _is_standard_normal(self) -> bool:
        r"""Whether this is :math:`\mathcal{N}(0, 1)` in every feature, known without reading a tensor: loc
        and scale were given as the numbers 0 and 1, no ``get_params`` override of a subclass reads them, and their
        buffers still hold them (see
        `TorchDistribution._holds_numbers`: a later in-place write through ``.data``, ``prior.scale.data.fill_(2)``,
        is not seen and keeps the shortcut; write ``prior.scale.fill_(2)`` under ``torch.no_grad()`` instead)."""
        numbers = self._numbers
        return (numbers.get("loc") == 0.0 and numbers.get("scale") == 1.0 and not self._uses_forward
                and not self._from_var and not self._custom_get_params and not torch.compiler.is_compiling()
                and self._holds_numbers())


class Laplace(TorchDistribution):
    r"""Laplace: :math:`\frac{1}{2b}\exp(-|x-\mu|/b)`, parameters ``loc``, ``scale`` (b > 0)."""

    torch_class = D.Laplace
    param_names = ("loc", "scale")


class LogNormal(TorchDistribution):
    r"""Log-normal: :math:`\log x \sim \mathcal{N}(\mu, \sigma^2)`, parameters ``loc``, ``scale``."""

    torch_class = D.LogNormal
    param_names = ("loc", "scale")


class StudentT(TorchDistribution):
    r"""Student's t with ``df`` degrees of freedom, ``loc`` and ``scale``."""

    torch_class = D.StudentT
    param_names = ("df", "loc", "scale")


class Gamma(TorchDistribution):
    r"""Gamma: :math:`\frac{\beta^\alpha}{\Gamma(\alpha)} x^{\alpha-1} e^{-\beta x}`.

    Parameters ``concentration`` (α) and ``rate`` (β).
    """

    torch_class = D.Gamma
    param_names = ("concentration", "rate")


class Beta(TorchDistribution):
    r"""Beta: :math:`\frac{x^{a-1}(1-x)^{b-1}}{B(a,b)}`, ``concentration1`` (a), ``concentration0`` (b)."""

    torch_class = D.Beta
    param_names = ("concentration1", "concentration0")
    # torch checks them only inside its Dirichlet, whose error names "concentration"
    param_constraints = {"concentration1": constraints.positive, "concentration0": constraints.positive}


class Dirichlet(TorchDistribution):
    r"""Dirichlet over the simplex of the last feature dimension, parameter ``concentration``."""

    torch_class = D.Dirichlet
    param_names = ("concentration",)


class VonMises(TorchDistribution):
    r"""Von Mises on the circle: :math:`\frac{e^{\kappa\cos(x-\mu)}}{2\pi I_0(\kappa)}`, ``loc``, ``concentration``."""

    torch_class = D.VonMises
    param_names = ("loc", "concentration")


class MultivariateNormal(TorchDistribution):
    r"""Full-covariance Normal over the last feature dimension.

    Parameters ``loc`` and one of ``covariance_matrix``, ``precision_matrix``, ``scale_tril``.
    """

    torch_class = D.MultivariateNormal
    param_names = ("loc", "covariance_matrix", "precision_matrix", "scale_tril")

    def get_params(self, params_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Tensor]:
        """`TorchDistribution.get_params`, ``loc``'s features checked against the matrix's size while validation is on
        (`_check_sizes`)."""
        params = super().get_params(params_dict, **kwargs)
        if validation_enabled():
            self._check_sizes(params)
        return params

    get_params._reads_parameters = False  # (the parameters as computed: draws and densities read them as before)

    def _check_params(self, params: dict[str, Any]) -> None:
        super()._check_params(params)
        self._check_sizes(params)

    def _check_sizes(self, params: Mapping[str, Any]) -> None:
        """``loc``'s features against the matrix's size: torch builds a MultivariateNormal of a loc of 2 features and a
        3 x 3 covariance, which failed only in ``log_prob`` or ``sample`` with its bare reshape or expand error.
        Checked at construction for constants, and while validation is on at `get_params` and at each evaluation for
        parameters from a network or a variable (a comparison of shapes, no read of the device)."""
        loc = params.get("loc")
        if not isinstance(loc, Tensor) or loc.dim() < 1:
            return
        for key in ("covariance_matrix", "precision_matrix", "scale_tril"):
            matrix = params.get(key)
            if isinstance(matrix, Tensor) and matrix.dim() >= 2 \
                    and not loc.shape[-1] == matrix.shape[-2] == matrix.shape[-1]:
                raise ValueError(f"{self.prob_text}: loc has {loc.shape[-1]} features but {key} is "
                                 f"{matrix.shape[-2]} x {matrix.shape[-1]}; a MultivariateNormal of d features takes a "
                                 f"loc of shape (..., d) and a {key} of shape (..., d, d)")


class Poisson(TorchDistribution):
    r"""Poisson: :math:`\lambda^x e^{-\lambda} / x!`, parameter ``rate`` (λ)."""

    torch_class = D.Poisson
    param_names = ("rate",)


def bernoulli_log_prob_from_probs(probs: Tensor, value: Tensor, fused: bool) -> Tensor:
    r""":math:`x \log p + (1 - x) \log(1 - p)` per entry, with ``probs`` clamped to :math:`[\epsilon, 1 - \epsilon]`
    as torch clamps them (by ``hardtanh``: see `Bernoulli._log_prob_kernel`). ``fused``: torch's
    ``binary_cross_entropy`` kernel, its sign changed in place (one pass; the kernel's backward does not read
    its result); otherwise ``lerp(log1p(-p), log(p), x)``, vectorised operators (faster on a CPU, where torch's
    cross-entropy kernels are not vectorised). The two agree up to rounding."""
    if value.dtype != probs.dtype:  # lerp and the cross-entropy take one dtype: the probabilities' (float64 data
        # against a network's float32 probabilities is scored in float32; a Python-number probs is already exact in a
        # wider value's dtype, `TorchDistribution._scoring_params`)
        value = value.to(probs.dtype)
    eps = torch.finfo(probs.dtype).eps
    probs = F.hardtanh(probs, eps, 1 - eps)  # a new tensor: ours to overwrite when no gradient needs it
    if not fused:
        if (torch.is_grad_enabled() and probs.requires_grad) or \
                torch.broadcast_shapes(probs.shape, value.shape) != probs.shape:
            return torch.lerp((-probs).log1p(), probs.log(), value)
        return probs.neg().log1p_().lerp_(probs.log_(), value)  # two temporaries, as the fused kernel
    if probs.shape != value.shape:
        probs, value = torch.broadcast_tensors(probs, value)
    return F.binary_cross_entropy(probs, value, reduction="none").neg_()


class Bernoulli(TorchDistribution):
    r"""Bernoulli: :math:`p^x (1-p)^{1-x}`, parameter ``probs`` (or ``logits``).

    Scored values may lie anywhere in [0, 1] (grey-level pixels), as in Pixyz: the
    log-density is then the negative binary cross-entropy.
    """

    torch_class = D.Bernoulli
    param_names = ("probs", "logits")

    def _check_support(self, value: Tensor, dist: D.Distribution) -> None:
        """See `TorchDistribution._check_support`: values must lie in [0, 1] (torch demands 0 or 1)."""
        if not bool(constraints.unit_interval.check(value).all()):
            raise ValueError(f"{self.prob_text}: value of {self._var[0]} must lie in [0, 1], found values outside")

    def _log_prob_kernel(self, value: Tensor, params: dict[str, Any]) -> Tensor:
        r"""torch's formula: :math:`x \log p + (1 - x) \log(1 - p)`, i.e. :math:`-\mathrm{BCE}`, from
        the logits, or from ``probs`` clamped to :math:`[\epsilon, 1 - \epsilon]` as torch clamps them
        (computed without the round trip through logits: equal to torch's up to rounding). The clamp is
        ``hardtanh``, whose backward is one kernel; its gradient is that of torch's ``clamp`` except at the
        two bounds themselves, where hardtanh passes none.

        On a CPU the probabilities' formula is ``lerp(log1p(-p), log(p), x)``: torch's CPU kernels of
        ``binary_cross_entropy`` (forward and backward) are not vectorised, and took 4.5 ms of a 128 × 784
        batch's forward and backward where these vectorised operators take 1.7 ms (3.2 ms against 0.7 ms
        forward alone; ``bench/bernoulli_kernels.py``). On other devices the fused cross-entropy kernel is
        one pass, and is used, its sign changed in place (its backward does not read its result)."""
        logits = params.get("logits")
        if logits is None:
            probs = params["probs"]
            return bernoulli_log_prob_from_probs(probs, value, fused=probs.device.type != "cpu")
        if logits.shape != value.shape:
            logits, value = torch.broadcast_tensors(logits, value)
        return F.binary_cross_entropy_with_logits(logits, value, reduction="none").neg_()


class FactorizedBernoulli(Bernoulli):
    r"""Bernoulli whose log-density counts only the non-zero entries (ones, and grey values in (0, 1]).

    .. math:: \log p(x) = \sum_{d: x_d \neq 0} \log p_d

    Zeros mean "attribute not observed" (Vedantam et al. 2017, arXiv:1705.10762).
    """

    def _elementwise_log_prob(self, x_dict: XDict) -> Tensor:
        """See `TorchDistribution._elementwise_log_prob`: entries equal to zero count for nothing."""
        per_feature = super()._elementwise_log_prob(x_dict)
        observed = torch.as_tensor(x_dict[self._var[0]]) != 0
        return per_feature * observed.to(per_feature.dtype)


def _init_over_categorical(dist: D.Distribution, probs: Tensor | None, logits: Tensor | None,
                           validate_args: bool | None) -> None:
    """Initialise ``dist``, a torch distribution that reads its parameters from an inner ``Categorical``
    (``OneHotCategorical``, ``Multinomial``, ``ExpRelaxedCategorical``), with that inner one built with ``dist``'s
    ``validate_args``, and checking the parameter given, not one derived from it.

    torch 2.13 builds the inner one with the process default, so with kizuna's validation off it still
    checked the probabilities on every construction (a simplex check and a host sync) and the indices in
    every ``log_prob``; and parameters without entries (an empty batch), for which kizuna turns the checks
    off, failed in torch's check ("cannot reshape tensor of 0 elements"). The inner one checks the parameter given:
    ``probs`` (non-negative), or ``logits`` once normalised (not NaN: refusing NaN, +inf and a row all -inf); torch's
    outer check read ``probs`` also where ``logits`` were given, the probabilities derived from them held to its fixed
    1e-6 simplex tolerance, which a bfloat16 softmax misses (it sums to 1 within 4e-3): ordinary 16-bit logits were
    refused as "parameter 'probs' must satisfy Simplex()".
    """
    dist._categorical = D.Categorical(probs, logits, validate_args=validate_args)
    D.Distribution.__init__(dist, dist._categorical.batch_shape, dist._categorical.param_shape[-1:],
                            validate_args=False)
    _validating_as_asked(dist, validate_args)


def _validating_as_asked(dist: D.Distribution, validate_args: bool | None) -> None:
    """``dist``, initialised with ``validate_args=False`` (its parameters checked elsewhere), validating its values as
    ``validate_args`` asks (None: torch's process default)."""
    del dist._validate_args  # (set by torch's __init__) the class's default, or the one asked for
    if validate_args is not None:
        dist._validate_args = validate_args


class _TorchOneHotCategorical(D.OneHotCategorical):
    """torch's OneHotCategorical whose inner ``Categorical`` follows its ``validate_args``
    (`_init_over_categorical`)."""

    def __init__(self, probs: Tensor | None = None, logits: Tensor | None = None,
                 validate_args: bool | None = None) -> None:
        _init_over_categorical(self, probs, logits, validate_args)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: Any = None) -> D.OneHotCategorical:
        return super().expand(batch_shape, self._get_checked_instance(_TorchOneHotCategorical, _instance))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """torch's draw; probabilities that are one row broadcast over the batch (a constant prior
        expanded to the rows of the data) are drawn from that row in one call (``torch.multinomial``
        over expanded rows is ten times slower), and made one-hot without reading indices back."""
        probs = self._categorical.probs
        batch = probs.shape[:-1]
        if len(batch) == 0 or any(stride != 0 for stride in probs.stride()[:-1]):
            return super().sample(sample_shape)
        shape = torch.Size(sample_shape) + batch
        if shape.numel() == 0:  # no rows (batch_n=0): nothing to draw (row 0 does not exist)
            return probs.new_zeros(shape + probs.shape[-1:])
        index = torch.multinomial(probs[(0,) * len(batch)].detach(), shape.numel(), True).reshape(shape)
        return probs.new_zeros(shape + probs.shape[-1:]).scatter_(-1, index.unsqueeze(-1), 1.0)


class Categorical(TorchDistribution):
    r"""Categorical over one-hot vectors (the last feature dimension), ``probs`` or ``logits``.

    Samples are one-hot, as in Pixyz; use ``.argmax(-1)`` for class indices.
    """

    torch_class = _TorchOneHotCategorical
    param_names = ("probs", "logits")

    def _check_support(self, value: Tensor, dist: D.Distribution) -> None:
        """See `TorchDistribution._check_support`; a relaxed draw (rows of non-negative numbers adding up to 1 that
        are not one-hot: a `RelaxedCategorical` / Gumbel-softmax variable) is named, with the remedy (it was "outside
        the support (OneHot())", which named no cause; scored without the check, it counts as log π of its argmax)."""
        try:
            super()._check_support(value, dist)
        except ValueError as err:
            if value.is_floating_point() and bool(torch.isfinite(value).all()) and bool((value >= 0).all()) \
                    and bool(((value.sum(-1) - 1).abs() <= 1e-4).all()):
                raise ValueError(
                    f"{self.prob_text}: value of {self._var[0]} is a relaxed draw (rows on the simplex, not one-hot), "
                    f"which {type(self).__name__} does not score: give its prior as a RelaxedCategorical (the same "
                    f"probs / logits and a temperature), or score a hard one-hot (e.g. the argmax)") from err
            raise


class _TorchMultinomial(D.Multinomial):
    """torch's Multinomial whose inner ``Categorical`` and ``Binomial`` follow its ``validate_args``
    (`_init_over_categorical`: torch 2.13 builds them with the process default, so ``validation(False)`` still
    checked the probabilities, and logits of an empty batch failed), whose ``expand`` keeps the Binomial that
    ``entropy`` reads (torch 2.13 drops it), and whose ``entropy`` of an empty batch is empty."""

    def __init__(self, total_count: int = 1, probs: Tensor | None = None, logits: Tensor | None = None,
                 validate_args: bool | None = None) -> None:
        if not isinstance(total_count, int):  # torch's own refusal (`Multinomial._set_param` makes it an int)
            raise NotImplementedError("inhomogeneous total_count is not supported")
        self.total_count = total_count
        _init_over_categorical(self, probs, logits, validate_args)
        self._binomial = D.Binomial(total_count, probs=self.probs, validate_args=validate_args)

    def entropy(self) -> Tensor:
        """torch's entropy; with no rows the inner Categorical's (empty, of the batch shape): torch's sum over the
        Binomial's support reads its largest count, and ``max()`` of no entries failed with a raw RuntimeError."""
        if self.batch_shape.numel() == 0:
            return self._categorical.entropy()
        return super().entropy()

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: Any = None) -> D.Multinomial:
        new = super().expand(batch_shape, self._get_checked_instance(_TorchMultinomial, _instance))
        new._binomial = self._binomial.expand(torch.Size(batch_shape) + self.event_shape)
        return new


class Multinomial(TorchDistribution):
    r"""Multinomial counts over the last feature dimension: ``total_count`` (int), ``probs`` or ``logits``.

    Scored counts must add up to ``total_count`` (torch alone accepts any smaller total).
    """

    torch_class = _TorchMultinomial
    param_names = ("total_count", "probs", "logits")
    static_params = ("total_count",)
    param_constraints = {"total_count": constraints.nonnegative_integer}

    def _set_param(self, key: str, value: Any) -> None:
        """``total_count`` as a Python int: torch's Multinomial takes nothing else, and a whole number of another
        type (5.0, ``torch.tensor(5)``, ``np.int64(5)``) failed at first use as an "inhomogeneous total_count"."""
        if key == "total_count" and value is not None and not isinstance(value, str) and type(value) is not int:
            number = one_number(value)
            if isinstance(number, bool) or not isinstance(number, numbers.Real) or not float(number).is_integer() \
                    or number < 0:
                shown = tuple(value.shape) if isinstance(value, Tensor) and value.dim() else repr(value)
                raise ValueError(f"Multinomial: total_count must be one whole number >= 0 (a Python int), got "
                                 f"{shown}")
            value = int(number)
        super()._set_param(key, value)

    def _check_support(self, value: Tensor, dist: D.Distribution) -> None:
        """See `TorchDistribution._check_support`; counts must also add up to ``total_count``."""
        super()._check_support(value, dist)
        total = dist.total_count
        if not bool((value.sum(-1) == total).all()):
            raise ValueError(f"{self.prob_text}: value of {self._var[0]} must add up to total_count={total}")


class BinaryConcrete(TorchDistribution):
    r"""Binary Concrete (Gumbel-sigmoid) over (0, 1): ``temperature`` λ, ``probs`` or ``logits``.

    Draws are :math:`\sigma((\mathrm{logit}\,p + L)/\lambda)` with :math:`L` logistic noise, and values are scored
    with the Concrete density itself (Maddison et al. 2016, arXiv:1611.00712; torch's ``RelaxedBernoulli``).
    `RelaxedBernoulli` samples the same way but scores with the Bernoulli likelihood, as Pixyz does.
    """

    torch_class = D.RelaxedBernoulli
    param_names = ("temperature", "probs", "logits")
    param_constraints = {"temperature": constraints.positive}  # torch does not check it
    moments_hint = "; RelaxedBernoulli draws the same way and has the Bernoulli's moments"


def on_simplex(value: Tensor) -> bool:
    """Whether every row of ``value`` (the last dimension) lies in the simplex: non-negative entries summing to 1
    within the rounding of the value's dtype, the square root of its epsilon (3e-4 in float32; torch's 1e-6 in
    float64). A float32 Concrete draw at a low temperature sums to 1 within about 1e-5 only, and torch's ``Simplex``
    check (a fixed 1e-6) refused the family's own draws under validation (`Concrete`, `RelaxedCategorical`)."""
    if not value.is_floating_point():
        return bool(constraints.simplex.check(value).all())
    tol = max(1e-6, torch.finfo(value.dtype).eps ** 0.5)
    return bool((value >= 0).all() & ((value.sum(-1) - 1).abs() <= tol).all())


class _PositiveExp(D.transforms.ExpTransform):
    """torch's ``exp`` from the log-space Concrete draw to the simplex, its results below the dtype's smallest normal
    number (``torch.finfo(dtype).tiny``) raised to it, as torch's ``RelaxedBernoulli`` clamps its draws: a float32 draw
    at a low temperature has entries :math:`e^{-150}` that rounded to exactly 0, where the Concrete density (through
    ``log x``) is NaN. A category of probability 0 (a logit of -inf, its log-space draw -inf) stays exactly 0. The
    draws torch makes otherwise, bit for bit. In 16 bits the smallest normal number is not negligible (6.1e-5 in
    float16: it moved 99 % of the entries of a 300-category draw and pushed draws of 600 categories off the simplex),
    so there only the entries that are exactly 0 are raised, to the smallest subnormal number (6e-8 in float16)."""

    def _call(self, x: Tensor) -> Tensor:
        info = torch.finfo(x.dtype)
        y = x.exp()
        if info.bits < 32:
            y = torch.where(y == 0, info.tiny * info.eps, y)  # (tiny * eps: the smallest subnormal number)
        else:
            y = y.clamp_min(info.tiny)
        return torch.where(x == -math.inf, 0.0, y)


class _TorchExpRelaxedCategorical(ExpRelaxedCategorical):
    """torch's ``ExpRelaxedCategorical`` whose inner ``Categorical`` follows its ``validate_args``
    (`_init_over_categorical`: torch 2.13 builds it with the process default, so logits of an empty batch failed also
    with validation off, and 16-bit logits were refused for the rounding of the probabilities derived from them)."""

    def __init__(self, temperature: Tensor, probs: Tensor | None = None, logits: Tensor | None = None,
                 validate_args: bool | None = None) -> None:
        self.temperature = temperature
        _init_over_categorical(self, probs, logits, validate_args)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: Any = None) -> ExpRelaxedCategorical:
        return super().expand(batch_shape, self._get_checked_instance(_TorchExpRelaxedCategorical, _instance))


class _TorchRelaxedOneHotCategorical(D.RelaxedOneHotCategorical):
    """torch's ``RelaxedOneHotCategorical`` whose draws have no entry of exactly 0 (`_PositiveExp`), over an
    `_TorchExpRelaxedCategorical`; its density is torch's."""

    def __init__(self, temperature: Tensor, probs: Tensor | None = None, logits: Tensor | None = None,
                 validate_args: bool | None = None) -> None:
        base = _TorchExpRelaxedCategorical(temperature, probs, logits, validate_args=validate_args)
        # (the parameter given is checked by the base: torch's check here read the probabilities derived from logits)
        D.TransformedDistribution.__init__(self, base, [_PositiveExp()], validate_args=False)
        _validating_as_asked(self, validate_args)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: Any = None) -> D.RelaxedOneHotCategorical:
        return super().expand(batch_shape, self._get_checked_instance(_TorchRelaxedOneHotCategorical, _instance))


class Concrete(TorchDistribution):
    r"""Concrete (Gumbel-softmax) over the open simplex of the last feature dimension: ``temperature``,
    ``probs`` or ``logits``.

    Draws are :math:`\mathrm{softmax}((\log p + G)/\lambda)` with Gumbel noise :math:`G`, scored with the
    Concrete density (Jang et al. 2016, arXiv:1611.01144; torch's ``RelaxedOneHotCategorical``, which takes
    one temperature for the whole batch). `RelaxedCategorical` samples the same way but scores with the
    categorical likelihood, as Pixyz does.

    An entry of a draw below the dtype's smallest normal number, ``torch.finfo(dtype).tiny`` (1.2e-38 in float32),
    is raised to it (in 16 bits only an entry of exactly 0, to the smallest subnormal number, 6e-8 in float16), as
    torch's ``RelaxedBernoulli`` clamps its draws: a float32 draw at a low temperature has
    entries that rounded to exactly 0 (255 of 2,000 draws at temperature 0.05 with logits (0.3, -1, 2)), where the
    density, computed through ``log x``, was NaN. Every draw of the family has a finite density (that of the point
    drawn, the same as float64 scoring of it), unless a category has probability 0 (a logit of -inf), which is
    exactly 0 in every draw. A value with an entry exactly 0 (a vertex or a face of the simplex, e.g. a one-hot
    label) has no Concrete density: validation refuses it, naming the row; unchecked, its density is NaN.
    `RelaxedCategorical` scores such values.
    """

    torch_class = _TorchRelaxedOneHotCategorical
    param_names = ("temperature", "probs", "logits")
    param_constraints = {"temperature": constraints.positive}  # torch does not check it
    moments_hint = "; RelaxedCategorical draws the same way and has the categorical's moments"

    def _build(self, params: dict[str, Any], independent: bool) -> D.Distribution:
        temperature = params.get("temperature")
        if isinstance(temperature, Tensor) and temperature.numel() != 1:  # torch broadcasts it into a B x B result
            raise ValueError(f"{self.prob_text}: {type(self).__name__} takes one temperature for the whole batch "
                             f"(torch's RelaxedOneHotCategorical), got one of shape {tuple(temperature.shape)}")
        return super()._build(params, independent)

    def _check_support(self, value: Tensor, dist: D.Distribution) -> None:
        """See `TorchDistribution._check_support`: the simplex within the rounding of the value's dtype
        (`on_simplex`), which the family's own float32 draws at a low temperature need; and no entry of exactly 0,
        where the density is NaN (the family's own draws have none, see the class docstring)."""
        if not (self.validate_value and value.numel()):
            return
        if not on_simplex(value):
            super()._check_support(value, dist)  # (torch's tighter check then fails too, and names the value)
        zero = (value == 0).any(-1)
        if bool(zero.any()):
            row = tuple(torch.nonzero(zero)[0].tolist())
            where = f"row {row[0]}" if len(row) == 1 else f"index {row}"
            raise ValueError(f"{self.prob_text}: value of {self._var[0]} has an entry exactly 0 ({where}): the "
                             f"{type(self).__name__} density is defined on the open simplex only (NaN at a vertex or a "
                             "face; the family's own draws have none, unless a category has probability 0); score "
                             "one-hot or hard values with RelaxedCategorical (the categorical likelihood), or clamp "
                             f"them to torch.finfo({value.dtype}).tiny")
