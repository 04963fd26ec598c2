"""The parametric families: each wraps one ``torch.distributions`` class.

Densities, samplers, entropies and moments are torch's; these classes only name the
parameters and say which torch family they use (STYLE.md habit 1). Every family takes its
parameters as constructor keywords (constants, or the name of a conditioning variable) or
from ``forward(**cond)``; see `kizuna.distributions.torch_dist`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import distributions as D
from torch.distributions import constraints

from kizuna.distributions.base import Tensor, XDict
from kizuna.distributions.kernels import flags, satisfies
from kizuna.distributions.torch_dist import TorchDistribution, validation_enabled


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


class Poisson(TorchDistribution):
    r"""Poisson: :math:`\lambda^x e^{-\lambda} / x!`, parameter ``rate`` (λ)."""

    torch_class = D.Poisson
    param_names = ("rate",)


class Bernoulli(TorchDistribution):
    r"""Bernoulli: :math:`p^x (1-p)^{1-x}`, parameter ``probs`` (or ``logits``).

    Scored values may lie anywhere in [0, 1] (grey-level pixels), as in Pixyz: the
    log-density is then the negative binary cross-entropy.
    """

    torch_class = D.Bernoulli
    param_names = ("probs", "logits")
    validate_value = False  # torch would demand 0 or 1; [0, 1] is checked here instead

    def _check_value(self, value: Any, dist: D.Distribution, batched: bool) -> None:
        """See `TorchDistribution._check_value`; values must lie in [0, 1]."""
        super()._check_value(value, dist, batched)
        self._check_support(value)

    def _check_support(self, value: Tensor) -> None:
        """See `TorchDistribution._check_support`."""
        if validation_enabled() and not satisfies(constraints.unit_interval, value):
            raise ValueError(f"{self.prob_text}: value of {self._var[0]} must lie in [0, 1], found values outside")

    def _support_flags(self, value: Tensor) -> list[Tensor]:
        """See `TorchDistribution._support_flags`."""
        return [flags(constraints.unit_interval, value)]


class FactorizedBernoulli(Bernoulli):
    r"""Bernoulli whose log-density counts only the entries equal to one.

    .. math:: \log p(x) = \sum_{d: x_d \neq 0} \log p_d

    Zeros mean "attribute not observed" (Vedantam et al. 2017, arXiv:1705.10762).
    """

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        per_feature = super()._log_prob(x_dict, sum_features=False)
        observed = x_dict[self._var[0]] != 0
        per_feature = per_feature * observed.to(per_feature.dtype)
        return per_feature.flatten(1).sum(1) if sum_features else per_feature


class Categorical(TorchDistribution):
    r"""Categorical over one-hot vectors (the last feature dimension), ``probs`` or ``logits``.

    Samples are one-hot, as in Pixyz; use ``.argmax(-1)`` for class indices.
    """

    torch_class = D.OneHotCategorical
    param_names = ("probs", "logits")


class _TorchMultinomial(D.Multinomial):
    """torch's Multinomial whose ``expand`` keeps the Binomial that ``entropy`` reads (torch 2.13 drops it)."""

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: Any = None) -> D.Multinomial:
        new = super().expand(batch_shape, _instance)
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

    def _check_value(self, value: Any, dist: D.Distribution, batched: bool) -> None:
        """See `TorchDistribution._check_value`; counts must add up to ``total_count``."""
        super()._check_value(value, dist, batched)
        total = (dist.base_dist if isinstance(dist, D.Independent) else dist).total_count
        if validation_enabled() and not bool((value.sum(-1) == total).all()):
            raise ValueError(f"{self.prob_text}: value of {self._var[0]} must add up to total_count={total}")

    def _support_flags(self, value: Tensor) -> list[Tensor]:
        """See `TorchDistribution._support_flags` (torch's default ``total_count`` is 1)."""
        return [(value.sum(-1) == self._static.get("total_count", 1)).all()]


class BinaryConcrete(TorchDistribution):
    r"""Binary Concrete (Gumbel-sigmoid) over (0, 1): ``temperature`` λ, ``probs`` or ``logits``.

    Draws are :math:`\sigma((\mathrm{logit}\,p + L)/\lambda)` with :math:`L` logistic noise, and values are scored
    with the Concrete density itself (Maddison et al. 2016, arXiv:1611.00712; torch's ``RelaxedBernoulli``).
    `RelaxedBernoulli` samples the same way but scores with the Bernoulli likelihood, as Pixyz does.
    """

    torch_class = D.RelaxedBernoulli
    param_names = ("temperature", "probs", "logits")
    param_constraints = {"temperature": constraints.positive}  # torch does not check it


class Concrete(TorchDistribution):
    r"""Concrete (Gumbel-softmax) over the open simplex of the last feature dimension: ``temperature``,
    ``probs`` or ``logits``.

    Draws are :math:`\mathrm{softmax}((\log p + G)/\lambda)` with Gumbel noise :math:`G`, scored with the
    Concrete density (Jang et al. 2016, arXiv:1611.01144; torch's ``RelaxedOneHotCategorical``, which takes
    one temperature for the whole batch). `RelaxedCategorical` samples the same way but scores with the
    categorical likelihood, as Pixyz does.
    """

    torch_class = D.RelaxedOneHotCategorical
    param_names = ("temperature", "probs", "logits")
    param_constraints = {"temperature": constraints.positive}  # torch does not check it
