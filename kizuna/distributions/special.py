"""Distributions that are not parametric families.

* `Deterministic`: a point mass at ``forward(**cond)`` (a generator network, a decoder mean).
* `EmpiricalDistribution`: the data itself, :math:`p_{data}(x)`; "sampling" returns the
  given values (GAN losses take expectations under it).
* `CustomProb`: an unnormalised log-density given as a function (energy-based models).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kizuna.distributions.base import Distribution, Tensor, XDict
from kizuna.distributions.torch_dist import module_call_is_forward, raise_network_error
from kizuna.formula.expr import values_dict


class Deterministic(Distribution):
    """A point mass: ``forward(**cond)`` returns ``{var_name: value}`` (batch first).

    Its draws are differentiable (``has_reparam``); it has no density.
    """

    def __init__(self, var: str | Sequence[str], cond_var: str | Sequence[str] | None = None,
                 name: str = "p", features_shape: Sequence[int] = ()) -> None:
        super().__init__(var, cond_var, name, features_shape)

    @property
    def has_reparam(self) -> bool:
        return True

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError(f"{self.prob_text}: a Deterministic subclass must define forward()")

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        cond = {k: x_dict[k] for k in self._cond_var}
        try:  # torch's module call where it would run forward alone (hooks, compile, a trace: module_call_is_forward)
            out = self.forward(**cond) if module_call_is_forward(self) else self(**cond)
        except (TypeError, AttributeError) as err:  # (a dtype's RuntimeError is left as torch's: a GAN names the
            # constant prior whose draws it is, `kizuna.losses.adversarial`; an AttributeError not read on a condition
            # that is not a tensor is forward's own, as it is)
            raise_network_error(self, err, cond)  # forward's arguments or a value that torch refused as not a tensor
            raise
        if type(out) is dict and len(out) == len(self._var) and all(map(out.__contains__, self._var)):
            return dict(out)  # (the usual case, without building two sets)
        if not isinstance(out, Mapping) or set(out) != set(self._var):
            got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
            raise ValueError(f"{self.prob_text}: forward() must return a dict with keys {self._var}, got {got}")
        return dict(out)

    def sample_mean(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_mean", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        return self._sample(x_dict, None, True)[self._var[0]]


class EmpiricalDistribution(Distribution):
    """:math:`p_{data}(x)`: sampling returns the values of ``var`` found in ``x_dict``."""

    def __init__(self, var: str | Sequence[str], name: str = "p_{data}") -> None:
        super().__init__(var, None, name)

    @property
    def input_var(self) -> list[str]:
        return list(self._var)

    @property
    def has_reparam(self) -> bool:
        return True

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        return {v: x_dict[v] for v in self._var}


class CustomProb(Distribution):
    """A distribution given by its (possibly unnormalised) log-density function.

    Args:
        log_prob_function: maps the value of ``var`` (batch first) to log-densities of shape
            ``(batch,)`` or ``(batch, *features)`` (features are then summed). With several
            variables it is called with them as keyword arguments.
        var: the variables it scores.
        distribution_name: how ``distribution_name`` reports it.
        learnable: register the function's parameters (if it is an ``nn.Module``) for training;
            with ``False`` they are neither in ``parameters()`` nor in ``state_dict()``.
    """

    def __init__(self, log_prob_function: Callable[..., Tensor], var: str | Sequence[str],
                 distribution_name: str = "Custom PDF", learnable: bool = True, name: str = "p") -> None:
        super().__init__(var, None, name)
        if learnable and isinstance(log_prob_function, nn.Module):
            self.log_prob_function = log_prob_function
        else:
            # a plain attribute: nn.Module.__setattr__ would register a module (and train it)
            object.__setattr__(self, "_function", log_prob_function)
        self._learnable = learnable
        self._dist_name = distribution_name

    @property
    def distribution_name(self) -> str:
        return self._dist_name

    def _fn(self) -> Callable[..., Tensor]:
        return self.log_prob_function if "log_prob_function" in self._modules else self._function

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        fn = self._fn()
        out = fn(x_dict[self._var[0]]) if len(self._var) == 1 else fn(**{v: x_dict[v] for v in self._var})
        out = torch.as_tensor(out)
        value = x_dict[self._var[0]]
        if out.dim() == 0 and isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == 1:
            out = out.reshape(1)  # one row's log-density as one number
        if isinstance(value, Tensor) and value.dim() > 0 and (out.dim() == 0 or out.shape[0] != value.shape[0]):
            # a function that reduced over the batch (``.sum()``) gave one number, which ``.mean()`` then took as
            # every row's log-density (the batch's total as the mean, silently)
            raise ValueError(f"{self.prob_text}: log_prob_function must return one log-density per row, shape "
                             f"({value.shape[0]},) or ({value.shape[0]}, ...), for {self._var[0]} of shape "
                             f"{tuple(value.shape)}; it returned shape {tuple(out.shape)} (reduced over the batch?)")
        if sum_features and out.dim() > 1:
            out = out.flatten(1).sum(1)
        return out
