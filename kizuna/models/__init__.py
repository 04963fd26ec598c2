"""Trainers over losses."""

from kizuna.models.model import Model

__all__ = ["Model"]
