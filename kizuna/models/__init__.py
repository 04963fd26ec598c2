"""Trainers over losses."""

from kizuna.models.model import Model
from kizuna.models.vae import VAE

__all__ = ["Model", "VAE"]
