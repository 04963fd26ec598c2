"""Evaluation metrics."""

from kizuna.metrics.likelihood import log_likelihood

__all__ = ["log_likelihood"]
