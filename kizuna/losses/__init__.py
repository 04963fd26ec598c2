"""The loss algebra: lazy formulas over named variables (see `kizuna.losses.base`)."""

from kizuna.losses.base import (
    AbsLoss,
    AddLoss,
    BatchMean,
    BatchSum,
    ConstantVar,
    DivLoss,
    Loss,
    MaxLoss,
    MinLoss,
    MulLoss,
    NegLoss,
    Parameter,
    PowLoss,
    SubLoss,
    ValueLoss,
)
from kizuna.losses.divergences import KullbackLeibler
from kizuna.losses.elbo import ELBO, IWAE
from kizuna.losses.entropy import CrossEntropy, Entropy
from kizuna.losses.expectation import REINFORCE, Expectation
from kizuna.losses.log_prob import LogProb, Prob
from kizuna.losses.mmd import MMD
from kizuna.losses.wasserstein import WassersteinDistance

__all__ = [
    "AbsLoss", "AddLoss", "BatchMean", "BatchSum", "ConstantVar", "CrossEntropy", "DivLoss", "ELBO",
    "Entropy", "Expectation", "IWAE", "KullbackLeibler", "LogProb", "Loss", "MMD", "MaxLoss", "MinLoss",
    "MulLoss", "NegLoss", "Parameter", "PowLoss", "Prob", "REINFORCE", "SubLoss", "ValueLoss",
    "WassersteinDistance",
]
