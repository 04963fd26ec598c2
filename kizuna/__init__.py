"""kizuna: deep generative models as probabilistic formulas, connected into integrated models."""

__version__ = "0.1.0"
