"""Uses of a trained model: anomaly scores, imputation of missing entries, multimodal inference."""

from kizuna.inference.anomaly import anomaly_score
from kizuna.inference.impute import Imputation, impute_gibbs, impute_importance
from kizuna.inference.multimodal import coherence, cross_generate, infer_latent, modalities, select_encoder

__all__ = [
    "Imputation", "anomaly_score", "coherence", "cross_generate", "impute_gibbs", "impute_importance",
    "infer_latent", "modalities", "select_encoder",
]
