"""`TorchDistribution`: a named-variable layer over one ``torch.distributions`` family.

Parameters come from three places, merged per call:

* constants given at construction (numbers / tensors become buffers, ``nn.Parameter``
  stays learnable) — these carry **no** batch dimension, their shape (or
  ``features_shape``) is the feature shape;
* ``forward(**cond)`` returning a dict (override it in a subclass; argument names are
  ``cond_var``) — batch first;
* a string naming a conditioning variable, used as the parameter as is
  (``Normal(var=["z"], cond_var=["m"], loc="m", scale=1.0)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import distributions as D
from torch import nn
from torch.distributions import constraints

from kizuna.distributions import kernels
from kizuna.distributions.base import Distribution, Tensor, XDict, batch_size_of
from kizuna.distributions.kernels import satisfies
from kizuna.distributions.memo import memoized

_VALIDATE = [True]
# torch's message: "Expected parameter NAME (...) of distribution ... to satisfy the constraint
# CONSTRAINT, but found invalid values"; the constraint itself may contain ", " (Interval(a, b)).
_PARAM_ERROR = re.compile(r"Expected parameter (\w+) .*?to satisfy the constraint (.+?), but found")


# families whose validation is exactly their arg_constraints (no other checks in __init__ / log_prob)
SCREENED: frozenset[type[D.Distribution]] = frozenset(
    {D.Normal, D.Bernoulli, D.Laplace, D.Poisson, D.Gamma, D.StudentT, D.Dirichlet})


def set_validation(enabled: bool) -> None:
    """Turn parameter and value validation on (default) or off, for speed."""
    _VALIDATE[0] = bool(enabled)


def validation_enabled() -> bool:
    return _VALIDATE[0]


def _recheck_constants(module: TorchDistribution, _keys: Any) -> None:
    module._constants_checked = False  # loaded values are validated at their next use


class TorchDistribution(Distribution):
    """A distribution of one torch family over a single variable (see module docstring).

    Subclasses set ``torch_class`` and ``param_names``; constructor keyword arguments named
    in ``param_names`` give constant parameters (or the name of a conditioning variable).
    """

    torch_class: ClassVar[type[D.Distribution]]
    param_names: ClassVar[tuple[str, ...]] = ()
    static_params: ClassVar[tuple[str, ...]] = ()  # plain Python values (e.g. total_count)
    validate_value: ClassVar[bool] = True  # check the support of scored values
    # checks torch leaves out or reports under an inner distribution's parameter names
    param_constraints: ClassVar[dict[str, constraints.Constraint]] = {}

    def __init__(
        self,
        var: str | Sequence[str] = ("x",),
        cond_var: str | Sequence[str] | None = None,
        name: str = "p",
        features_shape: Sequence[int] | torch.Size = (),
        **params: Any,
    ) -> None:
        super().__init__(var, cond_var, name, features_shape)
        if len(self._var) != 1:
            raise ValueError(f"{self.prob_text}: a {type(self).__name__} defines exactly one variable")
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no parameter {', '.join(unknown)}; "
                f"its parameters are {', '.join(self.param_names)}"
            )
        self._const_names: list[str] = []
        self._numbers: dict[str, float] = {}  # Python numbers: follow the inputs' dtype and device
        self._static: dict[str, Any] = {}
        self._from_var: dict[str, str] = {}
        for key, value in params.items():
            self._set_param(key, value)
        self._uses_forward = type(self).forward is not TorchDistribution.forward
        self._constants_checked = False
        self.register_load_state_dict_post_hook(_recheck_constants)
        if not self._uses_forward and not self._from_var:
            self.get_dist({})  # constant parameters: validate them now, not at first use

    def _set_param(self, key: str, value: Any) -> None:
        if value is None:
            return
        if key in self.static_params:
            self._static[key] = value
        elif isinstance(value, str):
            if value not in self._cond_var:
                raise ValueError(
                    f"{self.prob_text}: parameter {key}={value!r} names a variable that is not in "
                    f"cond_var {self._cond_var}"
                )
            self._from_var[key] = value
        elif isinstance(value, nn.Parameter):
            self.register_parameter(f"{key}_", value)
            self._const_names.append(key)
        else:
            tensor = torch.as_tensor(value)
            if not tensor.is_floating_point():
                tensor = tensor.to(torch.get_default_dtype())
            self.register_buffer(f"{key}_", tensor)
            self._const_names.append(key)
            if isinstance(value, (int, float)):
                self._numbers[key] = float(value)

    @property
    def has_reparam(self) -> bool:
        return bool(self.torch_class.has_rsample)

    @property
    def torch_family(self) -> type[D.Distribution]:
        return self.torch_class

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        """Map conditioning values to parameters; override in subclasses. See module docstring."""
        return {}

    # ------------------------------------------------------------ parameters
    def _params(self, x_dict: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Merged parameters and whether they carry a batch dimension (shared within an evaluation)."""
        inputs = [x_dict.get(k) for k in self._cond_var]  # None: an optional input is absent
        return memoized(self, "params", inputs, lambda: self._compute_params(x_dict))

    def _compute_params(self, x_dict: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        params: dict[str, Any] = dict(self._static)
        for key in self._const_names:
            params[key] = getattr(self, f"{key}_")
        batched = False
        if self._uses_forward:
            params.update(self._check_forward(self(**{k: x_dict[k] for k in self._cond_var})))
            batched = True
        for key, cond in self._from_var.items():
            params[key] = x_dict[cond]
            batched = True
        if batched and self._numbers:
            like = next((v for k, v in params.items() if k not in self._const_names
                         and isinstance(v, Tensor) and v.is_floating_point()), None)
            if like is not None:
                for key, number in self._numbers.items():
                    params[key] = torch.tensor(number, dtype=like.dtype, device=like.device)
        return params, batched

    def _check_forward(self, out: Any) -> Mapping[str, Any]:
        """``forward``'s result, checked: a dict naming only this family's parameters."""
        if not isinstance(out, Mapping):
            raise TypeError(
                f"{self.prob_text}: forward() must return a dict of parameters, got {type(out).__name__}"
            )
        bad = sorted(set(out) - set(self.param_names))
        if bad:
            raise ValueError(
                f"{self.prob_text}: forward() returned {', '.join(bad)}, which "
                f"{type(self).__name__} does not take (its parameters: {', '.join(self.param_names)})"
            )
        return out

    def get_params(self, x_dict: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """See `Distribution.get_params`."""
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        return self._params(x_dict)[0]

    def _check_params(self, params: dict[str, Any]) -> None:
        for key, constraint in self.param_constraints.items():
            value = params.get(key)
            if value is not None and not bool(constraint.check(torch.as_tensor(value)).all()):
                raise ValueError(
                    f"{self.prob_text}: parameter '{key}' of {type(self).__name__} must satisfy {constraint}; "
                    "got invalid values."
                )

    def _build(self, params: dict[str, Any], validate: bool) -> D.Distribution:
        if validate:
            self._check_params(params)
        # torch's own checks build a boolean tensor per parameter; a cheaper screen that passes makes
        # them redundant (a failing screen lets torch check, for its message)
        screened = validate and self._screened(params)
        try:
            dist = self.torch_class(**params, validate_args=validate and not screened)
        except ValueError as err:
            match = _PARAM_ERROR.search(str(err))
            if match:
                raise ValueError(
                    f"{self.prob_text}: parameter '{match.group(1)}' of {type(self).__name__} must satisfy "
                    f"{match.group(2)}; got invalid values. ({err})"
                ) from err
            raise ValueError(f"{self.prob_text}: invalid parameters for {type(self).__name__}: {err}") from err
        except RuntimeError as err:  # parameters whose shapes do not broadcast
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in params.items() if isinstance(v, Tensor))
            raise ValueError(f"{self.prob_text}: parameter shapes do not broadcast: {shapes} ({err})") from err
        except TypeError as err:
            raise TypeError(
                f"{self.prob_text}: cannot build {type(self).__name__} from parameters "
                f"{sorted(params)} (give them as constants or return them from forward): {err}"
            ) from err
        if screened:
            dist._validate_args = True  # as built with validate_args=True: values scored later are checked
        return dist

    def _screened(self, params: dict[str, Any]) -> bool:
        """Whether every parameter passes its torch constraint, for families whose validation is
        exactly their ``arg_constraints`` (see `kizuna.distributions.kernels.satisfies`)."""
        if self.torch_class not in SCREENED:
            return False
        table = self.torch_class.arg_constraints
        for key, value in params.items():
            constraint = table.get(key)
            if constraint is not None and not constraints.is_dependent(constraint) and \
                    not satisfies(constraint, value):
                return False
        return True

    def _torch_dist(self, x_dict: Mapping[str, Any], independent: bool = True) -> tuple[D.Distribution, bool]:
        """The torch distribution for these inputs (built once per evaluation, see `memo`)."""
        inputs = [x_dict.get(k) for k in self._cond_var]  # None: an optional input is absent
        return memoized(self, ("dist", independent), inputs, lambda: self._new_torch_dist(x_dict, independent))

    def _needs_validation(self, batched: bool) -> bool:
        """Buffer constants are checked once (at construction and after loading), not every call."""
        if not _VALIDATE[0]:
            return False
        return batched or not self._constants_checked or any(
            isinstance(getattr(self, f"{k}_"), nn.Parameter) for k in self._const_names)

    def _new_torch_dist(self, x_dict: Mapping[str, Any], independent: bool) -> tuple[D.Distribution, bool]:
        params, batched = self._params(x_dict)
        return self._dist_from(params, batched, independent), batched

    def _dist_from(self, params: dict[str, Any], batched: bool, independent: bool,
                   validate: bool | None = None) -> D.Distribution:
        """The torch distribution for merged ``params`` (validated unless ``validate`` is False)."""
        validate = self._needs_validation(batched) if validate is None else validate
        base = self._build(params, validate)
        if not batched and not self._constants_checked:
            self._constants_checked = True
        if not batched and self._features_shape:
            n_event = len(base.event_shape)
            target = self._features_shape[: len(self._features_shape) - n_event]
            if base.batch_shape != target:
                try:
                    base = base.expand(target)
                except (RuntimeError, ValueError) as err:
                    raise ValueError(
                        f"{self.prob_text}: features_shape {tuple(self._features_shape)} does not fit "
                        f"parameters of shape {tuple(base.batch_shape + base.event_shape)}"
                    ) from err
        n_features = len(base.batch_shape) - int(batched)
        if n_features < 0:
            raise ValueError(f"{self.prob_text}: parameters from forward() need a leading batch dimension")
        if independent and n_features > 0:
            return D.Independent(base, n_features, validate_args=False)
        return base

    def get_dist(self, x_dict: Mapping[str, Any] | None = None, independent: bool = True) -> D.Distribution:
        """A fresh ``torch.distributions`` object for these inputs; features are event dims."""
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        return self._torch_dist(x_dict, independent)[0]

    # ------------------------------------------------------ sample / density
    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        dist, batched = self._torch_dist(x_dict)
        return {self._var[0]: self._draw_from(dist, batched, x_dict, batch_n, reparam)}

    def _draw_from(self, dist: D.Distribution, batched: bool, x_dict: Mapping[str, Any], batch_n: int | None,
                   reparam: bool) -> Tensor:
        """A draw of ``batch_n`` rows from ``dist`` (see `_sample`)."""
        if batched:
            shape: tuple[int, ...] = ()
            if batch_n is not None and dist.batch_shape[0] == 1 and batch_n != 1:
                dist = dist.expand(torch.Size([batch_n]) + dist.batch_shape[1:])
            elif batch_n is not None and dist.batch_shape[0] != batch_n:
                raise ValueError(
                    f"{self.prob_text}: batch_n={batch_n} but the conditioning values have batch size "
                    f"{dist.batch_shape[0]}"
                )
        else:
            shape = (batch_n or batch_size_of(x_dict) or 1,)
        return dist.rsample(shape) if reparam and self.has_reparam else dist.sample(shape)

    def _check_value(self, value: Any, dist: D.Distribution, batched: bool) -> None:
        var = self._var[0]
        if not isinstance(value, Tensor):
            raise TypeError(f"{self.prob_text}: {var} must be a torch.Tensor, got {type(value).__name__}")
        features = dist.batch_shape[int(batched):] + dist.event_shape
        if value.dim() != len(features) + 1 or value.shape[1:] != features:
            raise ValueError(
                f"{self.prob_text}: {var} has shape {tuple(value.shape)}, expected "
                f"(batch, {', '.join(map(str, features))}) — features {tuple(features)}, "
                f"given {tuple(value.shape[1:])}"
            )
        if batched and dist.batch_shape[0] not in (1, value.shape[0]) and value.shape[0] != 1:
            raise ValueError(
                f"{self.prob_text}: {var} has batch size {value.shape[0]} but the parameters "
                f"have batch size {dist.batch_shape[0]}"
            )

    def _check_support(self, value: Tensor) -> None:
        """Checks of scored values that torch leaves out (e.g. Bernoulli's [0, 1]); none by default."""

    def _support_flags(self, value: Tensor) -> list[Tensor]:
        """`_check_support` as unread boolean tensors, for checks deferred to one read (see `kizuna.losses.plan`)."""
        return []

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        dist, batched = self._torch_dist(x_dict, independent=sum_features)
        return self._log_prob_from(dist, batched, x_dict[self._var[0]])

    def _log_prob_from(self, dist: D.Distribution, batched: bool, value: Any) -> Tensor:
        """``dist.log_prob(value)`` after the shape and support checks (see `_log_prob`)."""
        self._check_value(value, dist, batched)
        checked = self.validate_value and _VALIDATE[0]
        base = dist.base_dist if isinstance(dist, D.Independent) else dist
        if checked and type(base) in SCREENED and isinstance(value, Tensor) and \
                value.shape == dist.batch_shape + dist.event_shape and satisfies(base.support, value):
            checked = False  # every value is in the support: torch's elementwise check would pass
        dist._validate_args = checked
        if isinstance(dist, D.Independent):
            dist.base_dist._validate_args = checked
        if type(base) is D.Bernoulli and "logits" in base.__dict__ and isinstance(value, Tensor) \
                and base.logits.shape == value.shape and value.dim() > 0:
            # torch's formula with the minus sign after the sum over features (fewer operations)
            if base is dist:
                return kernels.bernoulli_log_prob(value, base.logits)
            if dist.reinterpreted_batch_ndims == value.dim() - 1:
                return kernels.bernoulli_log_prob_sum(value, base.logits)
        try:
            return dist.log_prob(value)
        except ValueError as err:
            raise ValueError(f"{self.prob_text}: value of {self._var[0]} is invalid: {err}") from err

    def _with_batch(self, value: Tensor, batched: bool) -> Tensor:
        return value if batched else value.unsqueeze(0)

    def get_entropy(self, x_dict: Mapping[str, Any] | None = None, sum_features: bool = True) -> Tensor:
        """See `Distribution.get_entropy`."""
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        dist, batched = self._torch_dist(x_dict, independent=sum_features)
        return self._with_batch(dist.entropy(), batched)

    def sample_mean(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        """See `Distribution.sample_mean`."""
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        dist, batched = self._torch_dist(x_dict)
        return self._with_batch(dist.mean, batched)

    def sample_variance(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        """See `Distribution.sample_variance`."""
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        dist, batched = self._torch_dist(x_dict)
        return self._with_batch(dist.variance, batched)
