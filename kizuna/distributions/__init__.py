"""Distributions over named variables (see `kizuna.distributions.base`)."""

from kizuna.distributions.autoregressive import MADEBernoulli, PixelCNNBernoulli
from kizuna.distributions.base import Distribution
from kizuna.distributions.conditional import MLPBernoulli, MLPCategorical, MLPNormal
from kizuna.distributions.diffusion import (
    DDPM,
    DiffusionDecoder,
    DiffusionForward,
    DiffusionPosterior,
    DiffusionReverse,
    DiffusionSchedule,
)
from kizuna.distributions.energy import EnergyDistribution
from kizuna.distributions.families import (
    Bernoulli,
    Beta,
    BinaryConcrete,
    Categorical,
    Concrete,
    Dirichlet,
    FactorizedBernoulli,
    Gamma,
    Laplace,
    LogNormal,
    Multinomial,
    MultivariateNormal,
    Normal,
    Poisson,
    StudentT,
    VonMises,
)
from kizuna.distributions.flow_coupling import reflow_coupling
from kizuna.distributions.flow_matching import FlowMatching
from kizuna.distributions.joint import JointDistribution
from kizuna.distributions.marginal import MarginalizeVarDistribution
from kizuna.distributions.mixture import MixtureModel, MixturePosterior
from kizuna.distributions.moe import MixtureOfNormal
from kizuna.distributions.normal_product import NormalProduct
from kizuna.distributions.poe import ElementWiseProductOfNormal, ProductOfNormal
from kizuna.distributions.relaxed import RelaxedBernoulli, RelaxedCategorical
from kizuna.distributions.replace import ReplaceVarDistribution
from kizuna.distributions.special import CustomProb, Deterministic, EmpiricalDistribution
from kizuna.distributions.torch_dist import TorchDistribution, set_validation, validation, validation_enabled
from kizuna.distributions.transformed import InverseTransformedDistribution, TransformedDistribution
from kizuna.distributions.vq import PixelCNNCategorical

__all__ = [
    "Bernoulli", "Beta", "BinaryConcrete", "Categorical", "Concrete", "CustomProb", "Deterministic", "Dirichlet",
    "Distribution",
    "ElementWiseProductOfNormal", "EmpiricalDistribution", "FactorizedBernoulli", "Gamma", "JointDistribution",
    "Laplace", "LogNormal", "MLPBernoulli", "MLPCategorical", "MLPNormal",
    "MarginalizeVarDistribution", "MixtureModel", "MixtureOfNormal", "MixturePosterior", "Multinomial",
    "MultivariateNormal", "Normal", "Poisson", "ProductOfNormal",
    "RelaxedBernoulli", "RelaxedCategorical", "ReplaceVarDistribution", "StudentT", "TorchDistribution",
    "VonMises", "set_validation", "validation", "validation_enabled",
    "DDPM", "DiffusionDecoder", "DiffusionForward", "DiffusionPosterior", "DiffusionReverse", "DiffusionSchedule",
    "EnergyDistribution", "NormalProduct",
    "PixelCNNCategorical",
    "FlowMatching", "reflow_coupling",
    "InverseTransformedDistribution", "MADEBernoulli", "PixelCNNBernoulli", "TransformedDistribution",
]
