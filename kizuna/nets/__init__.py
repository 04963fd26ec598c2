"""Reusable networks."""

from kizuna.nets.mlp import MLP

__all__ = ["MLP"]
