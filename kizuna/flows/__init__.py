"""Invertible layers with tractable log-determinants (see `kizuna.flows.base`).

Combine them with `FlowList` and turn them into distributions with
`kizuna.distributions.TransformedDistribution` (sampling direction) or
`kizuna.distributions.InverseTransformedDistribution` (density-estimation direction).
"""

from kizuna.flows.autoregressive import IAF, MAF
from kizuna.flows.base import Flow, FlowList
from kizuna.flows.conv import ChannelConv
from kizuna.flows.coupling import AffineCoupling, RationalQuadraticCoupling
from kizuna.flows.normalization import ActNorm, BatchNorm1d, BatchNorm2d
from kizuna.flows.permutation import Permutation, Reverse, Shuffle
from kizuna.flows.planar import PlanarFlow
from kizuna.flows.preprocess import Preprocess
from kizuna.flows.reshape import Flatten, Squeeze, Unsqueeze

ActNorm2d = ActNorm  # Pixyz's name (and signature: ActNorm2d(in_features, scale=1.0))

__all__ = [
    "IAF", "MAF", "ActNorm", "ActNorm2d", "AffineCoupling", "BatchNorm1d", "BatchNorm2d", "ChannelConv", "Flow",
    "Flatten", "FlowList", "Permutation", "PlanarFlow", "Preprocess", "RationalQuadraticCoupling", "Reverse", "Shuffle",
    "Squeeze", "Unsqueeze",
]
