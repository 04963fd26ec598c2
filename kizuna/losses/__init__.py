"""The loss algebra: lazy formulas over named variables (the bottom of the algebra is `kizuna.formula`)."""

from kizuna.formula import (
    AbsLoss,
    AddLoss,
    BatchMean,
    BatchSum,
    ConstantVar,
    Detach,
    DivLoss,
    LogProb,
    Loss,
    MaxLoss,
    MinLoss,
    MulLoss,
    NegLoss,
    Parameter,
    PowLoss,
    Prob,
    SubLoss,
    ValueLoss,
)
from kizuna.losses.adversarial import (
    AdversarialJensenShannon,
    AdversarialKullbackLeibler,
    AdversarialWassersteinDistance,
)
from kizuna.losses.contrastive import ContrastiveDivergence
from kizuna.losses.diffusion import (
    NoisePredictionError,
    SumOverSteps,
    diffusion_bound,
    hybrid_diffusion_loss,
    simple_diffusion_loss,
)
from kizuna.losses.divergences import KullbackLeibler
from kizuna.losses.elbo import ELBO, IWAE
from kizuna.losses.entropy import CrossEntropy, Entropy
from kizuna.losses.expectation import REINFORCE, Expectation
from kizuna.losses.flow_matching import VelocityError, flow_matching_loss
from kizuna.losses.iterative import IterativeLoss
from kizuna.losses.mmd import MMD
from kizuna.losses.score import (
    DenoisingScoreError,
    ScoreMatchingError,
    SlicedScoreError,
    denoising_score_matching,
    sliced_score_matching,
)
from kizuna.losses.vq import VQCommitment
from kizuna.losses.wasserstein import WassersteinDistance

__all__ = [
    "AbsLoss", "AddLoss", "BatchMean", "BatchSum", "Detach", "ConstantVar", "CrossEntropy", "DivLoss", "ELBO",
    "Entropy", "Expectation", "IWAE", "IterativeLoss", "KullbackLeibler", "LogProb", "Loss", "MMD", "MaxLoss",
    "MinLoss",
    "MulLoss", "NegLoss", "Parameter", "PowLoss", "Prob", "REINFORCE", "SubLoss", "ValueLoss",
    "WassersteinDistance",
    "AdversarialJensenShannon", "AdversarialKullbackLeibler", "AdversarialWassersteinDistance",
    "ContrastiveDivergence", "DenoisingScoreError", "NoisePredictionError", "ScoreMatchingError",
    "SlicedScoreError", "SumOverSteps", "denoising_score_matching", "diffusion_bound", "hybrid_diffusion_loss",
    "simple_diffusion_loss",
    "sliced_score_matching", "VQCommitment", "VelocityError", "flow_matching_loss",
]
