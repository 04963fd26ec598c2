r"""Products of Gaussian experts (MVAE, Wu & Goodman 2018, arXiv:1802.05335).

The experts :math:`q_i(z|x_i) = \mathcal{N}(\mu_i, \sigma_i^2)` and a standard-normal prior
expert :math:`\mathcal{N}(0, I)` multiply to a Normal with precision-weighted parameters:

.. math::

    \tau = 1 + \sum_{i \in \mathcal{P}} \sigma_i^{-2}, \qquad
    \mu = \tau^{-1} \sum_{i \in \mathcal{P}} \mu_i\, \sigma_i^{-2}, \qquad
    \sigma = \tau^{-1/2}

where :math:`\mathcal{P}` holds the experts whose inputs are present (missing modalities are
left out; with none present the result is the prior). The weights are the precisions
:math:`1/\sigma_i^2`, as in Pixyz since 0.3.3 (earlier versions weighted by :math:`1/\sigma_i`).

The product is a `Normal`: sampling, densities, entropy, moments and analytic KL are torch's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import distributions as D
from torch import nn

from kizuna._text import symbol, var_text
from kizuna.distributions.base import Distribution, Tensor
from kizuna.distributions.families import Normal
from kizuna.distributions.mixture import common_var, union_cond

Experts = tuple[Tensor, Tensor, Tensor]  # loc, scale (E, batch, *features), present mask (E, batch, 1...)


def normal_experts(p: Distribution | Sequence[Distribution], owner: str) -> list[Distribution]:
    """The experts as a list, checked to be Normal and over the same variable."""
    experts = [p] if isinstance(p, Distribution) else list(p)
    common_var(experts, owner)
    for e in experts:
        if e.torch_family is not D.Normal:
            raise TypeError(f"{owner} takes Normal experts; {e.prob_text} is a {e.distribution_name}")
    return experts


def expert_loc_scale(e: Distribution, x_dict: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """``loc`` and ``scale`` of a Normal expert, batch first (constants have a batch of 1)."""
    dist = e.get_dist(x_dict, independent=False)
    return dist.mean, dist.stddev


def precision_product(loc: Tensor, scale: Tensor, present: Tensor | None = None, prior: bool = True
                      ) -> tuple[Tensor, Tensor]:
    r"""Product of the present experts (dim 0; ``None``: all) and, with ``prior``, :math:`\mathcal{N}(0, I)`; see
    the module docstring (`NormalProduct` takes it without the prior)."""
    # precisions relative to the smallest scale's (the prior's 1 included), each <= 1: the precisions themselves
    # overflowed for tiny scales (1e-20 in float32) and the mean was NaN; in ordinary cases these are the same
    # divisions and squares as the precisions' (a log-space form lost the last bit: 5 * 0.2 gave 1.0000001)
    masked = scale if present is None else torch.where(present, scale, torch.full_like(scale, torch.inf))
    smallest = masked.amin(0).clamp(max=1.0) if prior else masked.amin(0)
    relative = (smallest / masked).square()  # 0 for an absent expert
    total = relative.sum(0) + smallest.square() if prior else relative.sum(0)
    weighted = loc * relative if present is None else torch.where(present, loc * relative, torch.zeros_like(loc))
    return weighted.sum(0) / total, smallest / total.sqrt()


class ProductOfNormal(Normal):
    r""":math:`p(z|x_1..x_n) \propto \mathcal{N}(z; 0, I) \prod_i p_i(z|x_i)` (see module docstring).

    Args:
        p: the Normal experts, all over the same variable (their conditioning variables may
            differ). An expert with no conditioning variable has constant parameters.
        name: the symbol of the product.
        features_shape: the shape of the variable; needed only when no expert is present
            and no value of the variable is given.

    ``cond_var`` is the union of the experts' conditioning variables, but none is required:
    ``input_var`` is empty, and experts whose inputs are missing from ``x_dict`` are skipped.
    In a product ``q * p`` the product is still drawn after the factors that draw its
    conditioning variables, and their experts use the drawn values; inputs that no factor
    draws are optional (give them in ``x_dict``, or leave their experts out).

    Example:
        >>> qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
        >>> qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
        >>> q = ProductOfNormal([qx, qy], name="q", features_shape=[2])
        >>> print(q)
        q(z|x,y) ∝ N(z;0,I)q(z|x)q(z|y)
        >>> q.get_params({"x": torch.full((1, 2), 3.0)})["loc"]
        tensor([[1.5000, 1.5000]])
        >>> q.get_params({})["scale"]
        tensor([[1., 1.]])
    """

    def __init__(self, p: Sequence[Distribution], name: str = "p",
                 features_shape: Sequence[int] | torch.Size = ()) -> None:
        experts = normal_experts(p, type(self).__name__)
        super().__init__(var=experts[0].var, cond_var=union_cond(experts), name=name, features_shape=features_shape)
        self.p = nn.ModuleList(experts)
        self.register_buffer("prior_loc", torch.zeros(()), persistent=False)
        self.register_buffer("prior_scale", torch.ones(()), persistent=False)

    @property
    def input_var(self) -> list[str]:
        return []

    @property
    def distribution_name(self) -> str:
        return "Product of Normal"

    def _require(self, x_dict: Mapping[str, Any], names: Iterable[str]) -> None:
        # conditioning variables are optional: a missing one masks its expert out
        super()._require(x_dict, [n for n in names if n not in self._cond_var])

    def _expert_texts(self, fmt: dict[str, str]) -> str:
        return "".join(e._factorized_text(fmt, {}) for e in self.p)

    def _joint_text(self, fmt: dict[str, str]) -> str:
        factors = fmt["std_normal"].format(var_text(self._var[0], fmt)) + self._expert_texts(fmt)
        return fmt["proportional"].format(symbol(self, fmt), factors)

    # ------------------------------------------------------------ parameters
    def _experts(self, x_dict: Mapping[str, Any]) -> Experts | None:
        """The present experts' parameters, stacked on a leading expert dim (None if none)."""
        params = [expert_loc_scale(e, x_dict) for e in self.p if all(c in x_dict for c in e.cond_var)]
        if not params:
            return None
        features = {tuple(loc.shape[1:]) for loc, _ in params}
        if len(features) > 1:
            raise ValueError(
                f"{self.prob_text}: the experts disagree on the shape of {self._var[0]}: {sorted(features)}"
            )
        rows = {loc.shape[0] for loc, _ in params if loc.dim() > 0} - {1}
        if len(rows) > 1:  # (torch's broadcast error named no expert)
            present = [e for e in self.p if all(c in x_dict for c in e.cond_var)]
            listed = ", ".join(f"{e.prob_text}: {loc.shape[0]}" for e, (loc, _) in zip(present, params))
            raise ValueError(f"{self.prob_text}: the experts' inputs have different numbers of rows ({listed})")
        tensors = torch.broadcast_tensors(*[t for pair in params for t in pair])
        loc, scale = torch.stack(tensors[0::2]), torch.stack(tensors[1::2])
        return loc, scale, torch.ones((), dtype=torch.bool, device=loc.device).expand(loc.shape)

    def _prior_shape(self, x_dict: Mapping[str, Any]) -> torch.Size:
        value = x_dict.get(self._var[0])
        if self._features_shape:
            return self._features_shape
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[1:]
        raise ValueError(
            f"{self.prob_text}: no expert has its inputs ({', '.join(self._cond_var)}), so this is the prior "
            f"N(0, I), whose shape is unknown; give features_shape when building {type(self).__name__}"
        )

    def _compute_params(self, x_dict: Mapping[str, Any]) -> dict[str, Any]:
        experts = self._experts(x_dict)
        if experts is None:
            shape = (1, *self._prior_shape(x_dict))
            return {"loc": self.prior_loc.expand(shape), "scale": self.prior_scale.expand(shape)}
        loc, scale = precision_product(*experts)
        return {"loc": loc, "scale": scale}

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        """``{"loc", "scale"}`` of the product given the present conditioning variables."""
        return self._compute_params(cond)


class ElementWiseProductOfNormal(ProductOfNormal):
    r"""Each element of one input is an expert: :math:`p(z|x) \propto \mathcal{N}(0, I)\prod_d p(z|x_d)`.

    The single expert :math:`p(z|x)` takes ``x`` of shape ``(batch, D)``; expert :math:`d`
    sees ``x`` with every element but :math:`d` set to zero. Elements equal to zero mean
    "not observed" and their experts are left out, row by row (Wu & Goodman 2018,
    arXiv:1802.05335, the attribute experts of CelebA).

    Args:
        p: a Normal :math:`p(z|x)` with exactly one conditioning variable.
        name, features_shape: see `ProductOfNormal`.
    """

    def __init__(self, p: Distribution, name: str = "p", features_shape: Sequence[int] | torch.Size = ()) -> None:
        if isinstance(p, Distribution) and len(p.cond_var) != 1:
            raise ValueError(
                f"ElementWiseProductOfNormal needs an expert with exactly one conditioning variable; "
                f"{p.prob_text} has {len(p.cond_var)}"
            )
        super().__init__([p], name, features_shape)

    def _expert_texts(self, fmt: dict[str, str]) -> str:
        x = self._cond_var[0]
        return fmt["prod"].format("d", self.p[0]._factorized_text(fmt, {x: f"{x}_d"}))

    def _experts(self, x_dict: Mapping[str, Any]) -> Experts | None:
        name = self._cond_var[0]
        if name not in x_dict:
            return None
        x = x_dict[name]
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"{self.prob_text}: {name} must have shape (batch, D), got {getattr(x, 'shape', x)}")
        b, d = x.shape
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        masked = (x.unsqueeze(0) * eye.unsqueeze(1)).reshape(d * b, d)  # copy k keeps element k only
        loc, scale = expert_loc_scale(self.p[0], {name: masked})
        loc, scale = (t.expand(d * b, *t.shape[1:]).reshape(d, b, *t.shape[1:]) for t in (loc, scale))
        present = (x != 0).T.reshape(d, b, *[1] * (loc.dim() - 2))
        return loc, scale, present
