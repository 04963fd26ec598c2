"""`Model`: an optimiser over the distributions of a loss, one step per call.

.. code-block:: python

    model = Model(loss, distributions=[p, q], optimizer=torch.optim.Adam,
                  optimizer_params={"lr": 1e-3})
    model.train({"x": x})   # one gradient step, returns the loss as a float
    model.test({"x": x})    # the loss without gradients
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kizuna.losses.base import Loss


class Model:
    """Trains the parameters of ``distributions`` to minimise ``loss``.

    Args:
        loss: the training loss (must evaluate to a scalar, e.g. ``(...).mean()``).
        test_loss: the loss ``test`` reports (default: ``loss``).
        distributions: the modules whose parameters are optimised (default: every
            distribution the loss refers to).
        optimizer: a ``torch.optim.Optimizer`` class.
        optimizer_params: its keyword arguments.
        clip_grad_norm, clip_grad_value: optional gradient clipping.
    """

    def __init__(
        self,
        loss: Loss,
        test_loss: Loss | None = None,
        distributions: Sequence[nn.Module] | None = None,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_params: Mapping[str, Any] | None = None,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
    ) -> None:
        if not isinstance(loss, Loss):
            raise TypeError(f"Model needs a kizuna Loss, got {type(loss).__name__}")
        self.loss_cls = loss
        self.test_loss_cls = test_loss if test_loss is not None else loss
        dists = list(distributions) if distributions is not None else loss.distributions()
        self.distributions = nn.ModuleList(dists)
        params = [p for p in self.distributions.parameters() if p.requires_grad]
        if not params:
            raise ValueError("Model: the distributions have no trainable parameters")
        self.optimizer = optimizer(params, **dict(optimizer_params or {}))
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self._training: bool | None = None
        self._params = params

    def __str__(self) -> str:
        names = ", ".join(str(d.prob_text) for d in self.distributions)
        return f"Distributions (for training): {names}\nLoss function: {self.loss_cls}\nOptimizer: {self.optimizer}"

    def _scalar(self, loss: torch.Tensor, which: Loss) -> float:
        """The loss as a float; an error if it is not a finite scalar."""
        if loss.dim() != 0:
            raise ValueError(f"the loss {which} evaluates to shape {tuple(loss.shape)}; reduce it, e.g. with .mean()")
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss {which} is {value}")
        return value

    def _set_mode(self, training: bool) -> None:
        # switching walks every submodule: do it when train() and test() alternate, not per step
        if self._training is not training:
            self.distributions.train(training)
            self._training = training

    def train(self, x_dict: Mapping[str, Any]) -> float:
        """One optimisation step on ``x_dict``; returns the loss before the step."""
        self._set_mode(True)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_cls.eval(x_dict)
        value = self._scalar(loss, self.loss_cls)
        loss.backward()
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm)
        if self.clip_grad_value is not None:
            nn.utils.clip_grad_value_(self._params, self.clip_grad_value)
        self.optimizer.step()
        return value

    def test(self, x_dict: Mapping[str, Any]) -> float:
        """The test loss on ``x_dict`` without gradients."""
        self._set_mode(False)
        with torch.no_grad():
            return self._scalar(self.test_loss_cls.eval(x_dict), self.test_loss_cls)
