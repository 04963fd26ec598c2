"""The loss algebra: lazy formulas over named variables (see `kizuna.losses.base`)."""

from kizuna.losses.base import Loss
from kizuna.losses.divergences import KullbackLeibler
from kizuna.losses.elbo import ELBO, IWAE
from kizuna.losses.entropy import CrossEntropy, Entropy
from kizuna.losses.expectation import REINFORCE, Expectation
from kizuna.losses.iterative import IterativeLoss
from kizuna.losses.log_prob import LogProb, Prob
from kizuna.losses.mmd import MMD
from kizuna.losses.operators import (
    AbsLoss,
    AddLoss,
    BatchMean,
    BatchSum,
    DivLoss,
    MaxLoss,
    MinLoss,
    MulLoss,
    NegLoss,
    PowLoss,
    SubLoss,
)
from kizuna.losses.values import ConstantVar, Parameter, ValueLoss
from kizuna.losses.wasserstein import WassersteinDistance

__all__ = [
    "AbsLoss", "AddLoss", "BatchMean", "BatchSum", "ConstantVar", "CrossEntropy", "DivLoss", "ELBO",
    "Entropy", "Expectation", "IWAE", "IterativeLoss", "KullbackLeibler", "LogProb", "Loss", "MMD", "MaxLoss",
    "MinLoss",
    "MulLoss", "NegLoss", "Parameter", "PowLoss", "Prob", "REINFORCE", "SubLoss", "ValueLoss",
    "WassersteinDistance",
]
