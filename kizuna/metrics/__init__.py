"""Evaluation metrics."""

from kizuna.metrics.likelihood import bits_per_dim, log_likelihood

__all__ = ["bits_per_dim", "log_likelihood"]
