"""Trainers over losses."""

from kizuna.models.checkpoint import History
from kizuna.models.gan import GAN
from kizuna.models.ladder import LadderVAE
from kizuna.models.model import Model
from kizuna.models.presets import ML, VI
from kizuna.models.residual_normal import ResidualNormal
from kizuna.models.vae import VAE

__all__ = ["GAN", "History", "LadderVAE", "ML", "Model", "ResidualNormal", "VAE", "VI"]
