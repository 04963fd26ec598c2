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

With Pixyz's ``weight_modalities`` :math:`(w_0, w_1, \dots, w_n)` (the prior's weight first) each
precision is weighted, the product of :math:`\mathcal{N}(0, I)^{w_0} \prod_i p_i^{w_i}`:

.. math::

    \tau = w_0 + \sum_{i \in \mathcal{P}} w_i \sigma_i^{-2}, \qquad
    \mu = \tau^{-1} \sum_{i \in \mathcal{P}} w_i \mu_i\, \sigma_i^{-2}, \qquad
    \sigma = \tau^{-1/2}

(with no expert present, :math:`\mathcal{N}(0, w_0^{-1} I)`; Pixyz gives :math:`\mathcal{N}(0, I)` there).

The product is a `Normal`: sampling, densities, entropy, moments and analytic KL are torch's.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import distributions as D
from torch import nn

from kizuna._data import one_number, warn_user
from kizuna._text import symbol, var_text
from kizuna.distributions.base import Distribution, Tensor
from kizuna.distributions.families import Normal
from kizuna.distributions.mixture import common_var, union_cond

# loc, scale (E, batch, *features), present mask (E, batch, 1...), the experts' weights (None: all 1)
Experts = tuple[Tensor, Tensor, Tensor, "list[float] | None"]


def normal_experts(p: Distribution | Sequence[Distribution], owner: str) -> list[Distribution]:
    """The experts as a list, checked to be Normal and over the same variable."""
    experts = [p] if isinstance(p, Distribution) else list(p)
    common_var(experts, owner)
    for e in experts:
        if e.torch_family is not D.Normal:
            raise TypeError(f"{owner} takes Normal experts; {e.prob_text} is a {e.distribution_name}")
    return experts


def warn_weights_not_learnt(weights: Any, owner: str, arg: str, fate: str, remedy: str) -> None:
    """A UserWarning, at the user's line, where the weights ``weights`` given as ``arg`` are a tensor that requires grad
    but are kept as fixed values (``fate``: how), so that no gradient reaches them and an optimiser given them steps a
    tensor the distribution no longer reads; ``remedy`` ends the message (`MixtureOfNormal`, `ProductOfNormal`)."""
    if isinstance(weights, Tensor) and weights.requires_grad:
        warn_user(f"{owner}: {arg} is a tensor that requires grad; {fate}, so no gradient reaches it{remedy}")


def expert_loc_scale(e: Distribution, x_dict: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """``loc`` and ``scale`` of a Normal expert, batch first (constants have a batch of 1)."""
    dist = e.get_dist(x_dict, independent=False)
    return dist.mean, dist.stddev


def precision_product(loc: Tensor, scale: Tensor, present: Tensor | None = None, prior: bool = True,
                      weights: Sequence[float] | None = None, prior_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    r"""Product of the present experts (dim 0; ``None``: all) and, with ``prior``, :math:`\mathcal{N}(0, I)`; see
    the module docstring (`NormalProduct` takes it without the prior). ``weights`` (one number >= 0 per expert; 0:
    as absent) and ``prior_weight`` (>= 0) weight the precisions (Pixyz's ``weight_modalities``)."""
    # precisions relative to the smallest scale's (the prior's 1 included), each <= 1: the precisions themselves
    # overflowed for tiny scales (1e-20 in float32) and the mean was NaN; in ordinary cases these are the same
    # divisions and squares as the precisions' (a log-space form lost the last bit: 5 * 0.2 gave 1.0000001)
    prior = prior and prior_weight > 0  # a prior of weight 0 is no factor
    masked = scale if present is None else torch.where(present, scale, torch.full_like(scale, torch.inf))
    if weights is not None:
        w = torch.tensor(weights, dtype=scale.dtype, device=scale.device).reshape(-1, *[1] * (scale.dim() - 1))
        masked = torch.where(w > 0, masked, torch.inf)  # weight 0: as absent (its scale no reference, no NaN)
    smallest = masked.amin(0).clamp(max=1.0) if prior else masked.amin(0)
    relative = (smallest / masked).square()  # 0 for an absent expert
    if weights is not None:
        relative = relative * w
    total = relative.sum(0) + prior_weight * smallest.square() if prior else relative.sum(0)
    weighted = loc * relative if present is None else torch.where(present, loc * relative, torch.zeros_like(loc))
    return weighted.sum(0) / total, smallest / total.sqrt()


class ProductOfNormal(Normal):
    r""":math:`p(z|x_1..x_n) \propto \mathcal{N}(z; 0, I) \prod_i p_i(z|x_i)` (see module docstring).

    Args:
        p: the Normal experts, all over the same variable (their conditioning variables may
            differ). An expert with no conditioning variable has constant parameters.
        weight_modalities: Pixyz's weights of the precisions, ``len(p) + 1`` finite numbers >= 0,
            the prior's first, then one per expert (module docstring); ``None``: all 1. An expert
            of weight 0 counts as absent. They are fixed numbers: a tensor is read as its values, and one
            that requires grad (an ``nn.Parameter``) is not learnt (a UserWarning says so).
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

    def __init__(self, p: Sequence[Distribution], weight_modalities: Sequence[float] | Tensor | None = None,
                 name: str = "p", features_shape: Sequence[int] | torch.Size = ()) -> None:
        experts = normal_experts(p, type(self).__name__)
        weights = self._check_weights(weight_modalities, len(experts))
        super().__init__(var=experts[0].var, cond_var=union_cond(experts), name=name, features_shape=features_shape)
        self.p = nn.ModuleList(experts)
        self.weight_modalities = weights  # (Pixyz's attribute: the prior's weight first)
        self._weighted = any(w != 1.0 for w in weights)
        self.register_buffer("prior_loc", torch.zeros(()), persistent=False)
        self.register_buffer("prior_scale", torch.ones(()), persistent=False)

    def _check_weights(self, weights: Any, n: int) -> list[float]:
        """``weight_modalities`` as ``n + 1`` floats (all 1 for ``None``); a ValueError naming the problem otherwise."""
        if weights is None:
            return [1.0] * (n + 1)
        owner = type(self).__name__
        if isinstance(weights, Tensor):  # (an nn.Parameter was turned into numbers silently: learnt nowhere)
            warn_weights_not_learnt(weights, owner, "weight_modalities", "its values are read as fixed numbers",
                                    " (the product's weights are not learnable)")
            weights = weights.tolist() if weights.dim() == 1 else weights
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            hint = " (as in Pixyz, name is the third argument: give name=...)" if isinstance(weights, str) else ""
            raise ValueError(f"{owner}: weight_modalities must be a sequence of {n + 1} numbers (the prior's weight, "
                             f"then one per expert), got {weights!r}{hint}")
        values = [one_number(w) for w in weights]
        if len(values) != n + 1:
            raise ValueError(f"{owner}: weight_modalities needs {n + 1} numbers (the prior's weight, then one for each "
                             f"of the {n} experts), got {len(values)}: {values}")
        for w in values:
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0 <= w < math.inf:
                raise ValueError(f"{owner}: weight_modalities must be finite numbers >= 0, got {values}")
        return [float(w) for w in values]

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
        """The present experts' parameters, stacked on a leading expert dim, and their weights (None if none)."""
        present = [(e, w) for e, w in zip(self.p, self.weight_modalities[1:]) if all(c in x_dict for c in e.cond_var)]
        params = [expert_loc_scale(e, x_dict) for e, _ in present]
        if not params:
            return None
        features = {tuple(loc.shape[1:]) for loc, _ in params}
        if len(features) > 1:
            raise ValueError(
                f"{self.prob_text}: the experts disagree on the shape of {self._var[0]}: {sorted(features)}"
            )
        rows = {loc.shape[0] for loc, _ in params if loc.dim() > 0} - {1}
        if len(rows) > 1:  # (torch's broadcast error named no expert)
            listed = ", ".join(f"{e.prob_text}: {loc.shape[0]}" for (e, _), (loc, _) in zip(present, params))
            raise ValueError(f"{self.prob_text}: the experts' inputs have different numbers of rows ({listed})")
        tensors = torch.broadcast_tensors(*[t for pair in params for t in pair])
        loc, scale = torch.stack(tensors[0::2]), torch.stack(tensors[1::2])
        weights = [w for _, w in present] if self._weighted else None
        return loc, scale, torch.ones((), dtype=torch.bool, device=loc.device).expand(loc.shape), weights

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
        prior_weight = self.weight_modalities[0]
        if prior_weight == 0 and (experts is None or experts[3] is not None and not any(experts[3])):
            raise ValueError(f"{self.prob_text}: no expert of weight > 0 has its inputs ({', '.join(self._cond_var)}) "
                             f"and the prior's weight is 0 (weight_modalities={self.weight_modalities}): the product "
                             f"is no distribution")
        if experts is None:
            shape = (1, *self._prior_shape(x_dict))
            scale = self.prior_scale if prior_weight == 1 else self.prior_scale * prior_weight ** -0.5
            return {"loc": self.prior_loc.expand(shape), "scale": scale.expand(shape)}
        loc, scale, present, weights = experts
        loc, scale = precision_product(loc, scale, present, weights=weights, prior_weight=prior_weight)
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
        super().__init__([p], name=name, features_shape=features_shape)

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
        return loc, scale, present, None
