"""Evaluation metrics."""

from kizuna.metrics.clustering import adjusted_rand_score, clustering_accuracy, normalized_mutual_info_score
from kizuna.metrics.likelihood import bits_per_dim, log_likelihood
from kizuna.metrics.segmentation import SegmentationScores, segmentation_scores
from kizuna.metrics.two_sample import TwoSampleResult, classifier_two_sample_test

__all__ = [
    "adjusted_rand_score", "bits_per_dim", "clustering_accuracy", "log_likelihood", "normalized_mutual_info_score",
    "SegmentationScores", "segmentation_scores", "TwoSampleResult", "classifier_two_sample_test",
]
