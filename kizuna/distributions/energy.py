r"""`EnergyDistribution`: an energy network as an unnormalised distribution.

.. math:: p_\theta(x) = \frac{\exp(-E_\theta(x))}{Z_\theta},\qquad Z_\theta = \int \exp(-E_\theta(x))\,dx

``log_prob`` returns :math:`-E_\theta(x)`, which is :math:`\log p_\theta(x)` **up to the constant**
:math:`\log Z_\theta`: differences between points (rankings, density ratios, the score
:math:`\nabla_x \log p_\theta(x) = -\nabla_x E_\theta(x)`) are exact, absolute values are not, and
:math:`Z_\theta` changes with :math:`\theta` (so never maximise ``log_prob`` of data alone: train with
`kizuna.losses.ContrastiveDivergence` or score matching). It cannot be sampled directly; draw with
Langevin dynamics (`kizuna.samplers`). Du & Mordatch 2019, arXiv:1903.08689.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from kizuna._text import LATEX, format_name, symbol
from kizuna.distributions.base import Distribution, Tensor, XDict


def autograd_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every inference tensor (made inside ``torch.inference_mode()``) copied to a normal tensor, which
    autograd may save for backward (an energy ``x * y`` of a conditioning value ``y`` made there raised "Inference
    tensors cannot be saved for backward"); call it under `outside_inference_mode`, as `input_leaf`."""
    return {k: v.clone() if isinstance(v, Tensor) and v.is_inference() else v for k, v in values.items()}


def outside_inference_mode() -> contextlib.AbstractContextManager[Any]:
    """``torch.inference_mode(False)`` where inference mode is on, else nothing: where a score takes its input gradient
    (`input_leaf`). Entering ``inference_mode(False)`` when it was off cost about 9 us a score (5% of an energy
    score of a 64-256-1 network on 64 rows). While ``torch.compile`` traces, always ``inference_mode(False)``, which
    dynamo traces (reading the mode, ``torch.is_inference_mode_enabled()``, broke the graph)."""
    if torch.compiler.is_compiling():
        return torch.inference_mode(False)
    return torch.inference_mode(False) if torch.is_inference_mode_enabled() else contextlib.nullcontext()


def input_leaf(x: Tensor) -> Tensor:
    """``x`` as a new leaf that requires grad, to take an input gradient (a score) in any grad mode. Call it, and the
    gradient, under ``outside_inference_mode(), torch.enable_grad()``: inside ``torch.inference_mode()`` a tensor
    made there is an inference tensor, whose ``requires_grad_`` autograd ignores (torch's "element 0 of tensors does
    not require grad"); it is copied to a normal tensor (others are detached, not copied), so that the gradient is
    the one taken under ``torch.no_grad()``.

    While ``torch.compile`` traces, the leaf is made outside the graph (`_eager_leaf`, one graph break): the gradient
    taken of it, ``torch.autograd.grad``, runs outside the graph anyway (dynamo does not trace it), and needs the leaf
    there (dynamo broke the graph here twice instead, at ``is_inference`` and at the ``requires_grad_`` leaf it cannot
    give out of a graph). `kizuna.samplers.score_of` runs its whole frame eagerly while compiling instead (the
    log-density's frames inside it traced), so its leaf is made here eagerly."""
    if torch.compiler.is_compiling():
        return _eager_leaf(x)
    return (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)


@torch.compiler.disable
def _eager_leaf(x: Tensor) -> Tensor:
    """`input_leaf` outside ``torch.compile``'s graph, entering `outside_inference_mode` itself (a traced score
    loss's or gradient penalty's leaf)."""
    with outside_inference_mode():
        return (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)


class EnergyDistribution(Distribution):
    """:math:`p_\\theta(x|y) \\propto \\exp(-E_\\theta(x, y))` (module docstring).

    Args:
        energy: ``energy(x, **cond) -> (batch,)`` (or ``(batch, 1)``) energies; an ``nn.Module``'s
            parameters are trained with the distribution.
        var: the variable it scores (one).
        cond_var: conditioning variables, passed to ``energy`` as keywords.
        name: the symbol used in formulas.
        features_shape: the shape of one value of ``var`` without the batch dimension; when given (not empty),
            every value scored (``get_log_prob``, ``score``) must have shape ``(batch, *features_shape)``, a
            ValueError otherwise, and `kizuna.samplers.SGLD` must draw that shape. Empty (the default): any shape
            the energy accepts.

    >>> from torch import nn
    >>> p = EnergyDistribution(lambda x: 0.5 * x.pow(2).sum(-1), var=["x"])  # N(0, I) up to log Z
    >>> print(p)
    p(x) ∝ exp(-E_p(x))
    >>> p.get_log_prob({"x": torch.tensor([[0.0], [2.0]])})
    tensor([-0., -2.])
    >>> p.score({"x": torch.tensor([[1.0, -2.0]])}).detach()
    tensor([[-1.,  2.]])
    """

    def __init__(self, energy: Callable[..., Tensor], var: str | Sequence[str] = ("x",),
                 cond_var: str | Sequence[str] | None = None, name: str = "p",
                 features_shape: Sequence[int] = ()) -> None:
        super().__init__(var, cond_var, name, features_shape)
        if len(self._var) != 1:
            raise ValueError(f"{self.prob_text}: an EnergyDistribution scores exactly one variable")
        self.energy = energy

    def _energy_text(self, fmt: dict[str, str]) -> str:
        args = ",".join(self._var + self._cond_var)
        label = f"E_{self._name}" if len(self._name) == 1 else f"E_{{{format_name(self._name)}}}"
        return (r"\exp\left(-{}({})\right)" if fmt is LATEX else "exp(-{}({}))").format(label, args)

    def _joint_text(self, fmt: dict[str, str]) -> str:
        return fmt["proportional"].format(symbol(self, fmt), self._energy_text(fmt))

    def get_energy(self, x_dict: Mapping[str, Any]) -> Tensor:
        """:math:`E_\\theta(x)` per row."""
        self._require(x_dict, self._var + self._cond_var)
        x = x_dict[self._var[0]]
        self._check_shape(x)
        out = self.energy(x, **{k: x_dict[k] for k in self._cond_var})
        if not isinstance(out, Tensor):
            out = torch.as_tensor(out)
        rows = x.shape[0]
        if out.dim() == 0 or out.shape[0] != rows or out.numel() != rows:
            raise ValueError(f"{self.prob_text}: the energy must give one value per row of {self._var[0]} "
                             f"(batch {rows}), got shape {tuple(out.shape)}")
        return out if out.dim() == 1 else out.reshape(rows)

    def _check_shape(self, x: Any) -> None:
        """``x`` has the declared ``features_shape`` after its batch dimension (nothing to check without one)."""
        features = self._features_shape
        if features and tuple(getattr(x, "shape", ())[1:]) != tuple(features):
            raise ValueError(f"{self.prob_text}: {self._var[0]} has shape {tuple(getattr(x, 'shape', ()))}, expected "
                             f"(batch, {', '.join(map(str, features))})")

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        return -self.get_energy(x_dict)

    def score(self, x_dict: Mapping[str, Any]) -> Tensor:
        """:math:`\\nabla_x \\log p_\\theta(x) = -\\nabla_x E_\\theta(x)`, exact (Z does not depend on x).

        Differentiable in the parameters (``create_graph``) when gradients are enabled. Under ``torch.no_grad()`` and
        inside ``torch.inference_mode()`` the same values, without a graph (`input_leaf`; inference mode raised
        torch's "element 0 of tensors does not require grad").
        """
        self._require(x_dict, self._var + self._cond_var)  # (a missing value raised a bare KeyError)
        x = x_dict[self._var[0]]
        self._check_shape(x)
        create = torch.is_grad_enabled()
        with outside_inference_mode(), torch.enable_grad():  # also inside torch.inference_mode() (`input_leaf`)
            x = input_leaf(x)
            e = self.get_energy({**autograd_values(x_dict), self._var[0]: x})
            # -dE/dx by a gradient output of -1 on the sum: no separate negation of the (batch, ...) gradient
            (g,) = torch.autograd.grad(e.sum(), x, grad_outputs=e.new_full((), -1.0), create_graph=create)
        return g

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        raise NotImplementedError(
            f"{self.prob_text} (EnergyDistribution) cannot be sampled directly: its normaliser is unknown; "
            "draw with Langevin dynamics (kizuna.samplers.SGLD or langevin_dynamics)")
