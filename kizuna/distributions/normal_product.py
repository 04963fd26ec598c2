r"""The normalised product of Gaussian factors over one variable.

.. math::
    q(z|\cdot) \propto \prod_i \mathcal{N}(z; \mu_i, \sigma_i^2)
    = \mathcal{N}\Big(z;\ \frac{\sum_i \mu_i\sigma_i^{-2}}{\sum_i \sigma_i^{-2}},\
        \big(\textstyle\sum_i \sigma_i^{-2}\big)^{-1}\Big)

The top-down inference of a Ladder VAE (Sønderby et al. 2016, arXiv:1602.02282) is such a product:
:math:`q(z_i|z_{i+1}, x) \propto \hat q(z_i|x)\, p(z_i|z_{i+1})`, a bottom-up likelihood term times the
generative prior of the layer. Unlike `ProductOfNormal` (MVAE), there is no standard-normal expert
and every factor is required.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kizuna._text import symbol
from kizuna.distributions.base import Distribution, Tensor
from kizuna.distributions.families import Normal
from kizuna.distributions.mixture import union_cond
from kizuna.distributions.poe import normal_experts, precision_product


class NormalProduct(Normal):
    """:math:`\\prod_i p_i(z|\\cdot)` normalised (module docstring).

    >>> a = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    >>> b = Normal(var=["z"], cond_var=["y"], loc="y", scale=2.0, name="p")
    >>> q = NormalProduct([a, b], name="q")
    >>> print(q)
    q(z|x,y) ∝ q(z|x)p(z|y)
    >>> q.get_params({"x": torch.zeros(1, 1), "y": torch.full((1, 1), 5.0)})["loc"]
    tensor([[1.]])
    """

    def __init__(self, factors: Sequence[Distribution], name: str = "q") -> None:
        factors = normal_experts(list(factors), type(self).__name__)
        if len(factors) < 2:
            raise ValueError("NormalProduct needs at least two factors")
        super().__init__(var=factors[0].var, cond_var=union_cond(factors, factors[0].var), name=name)
        self.factors_ = nn.ModuleList(factors)

    @property
    def distribution_name(self) -> str:
        return "Normal product"

    def _joint_text(self, fmt: dict[str, str]) -> str:
        inner = "".join(f._factorized_text(fmt, {}) for f in self.factors_)
        return fmt["proportional"].format(symbol(self, fmt), inner)

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        """Precision-weighted ``loc`` and ``scale`` of the factors given ``cond``."""
        params = [f.get_params(cond) for f in self.factors_]
        both = torch.broadcast_tensors(*[q["loc"] for q in params], *[q["scale"] for q in params])
        n = len(params)
        loc, scale = precision_product(torch.stack(both[:n]), torch.stack(both[n:]), prior=False)
        return {"loc": loc, "scale": scale}
