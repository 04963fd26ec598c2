"""The examples of the uses, run with ``--smoke`` on scikit-learn's digits: each must show learning.

Chance levels: ROC-AUC 0.5; coherence 0.1 (ten classes); latent ratio 1 (a random pairing of
rows, see `_multimodal.latent_agreement`). Margins below are far from the smoke runs' values
(seed 0, given in the comments) yet far from chance too.
"""

import math
import re
from pathlib import Path

import torch
from example_loader import run_smoke


def test_anomaly_detection_beats_chance_and_the_pixel_baseline():
    m = run_smoke("anomaly_detection")  # seed 0: IWAE 0.85, ELBO 0.86, PCA 0.84, pixels 0.43
    assert m["auc_iwae_0"] > 0.75 and m["auc_elbo_0"] > 0.75
    assert m["auc_iwae_0"] > m["auc_pixels_0"] + 0.2
    assert 0.0 <= m["auc_pca_0"] <= 1.0 and m["auc_iwae_mean"] == m["auc_iwae_0"]


def test_imputation_beats_mean_imputation_on_both_masks():
    m = run_smoke("imputation")  # seed 0: MSE 0.092 / 0.094 (random) and 0.107 / 0.111 (block) vs 0.133 / 0.134
    for mask in ("random", "block"):
        baseline = m[f"{mask}_mean_mse"]
        for method in ("importance", "gibbs"):
            assert m[f"{mask}_{method}_mse"] < 0.9 * baseline, (mask, method)
            assert m[f"{mask}_{method}_accuracy"] > m[f"{mask}_mean_accuracy"] + 0.03, (mask, method)


def _assert_multimodal_learned(m, x_to_y):
    assert m["coherence_x_to_y"] > x_to_y  # chance 0.1
    assert m["coherence_y_to_x"] > 0.6  # judged by a logistic regression scoring 0.905-0.933 on the smoke test split
    assert m["latent_ratio_x"] < 0.7 and m["latent_ratio_y"] < 0.7  # chance 1
    # log p(x, y) must beat independent fair-coin pixels and a uniform label: -(64 log 2 + log 10) = -46.7 nats
    assert m["test_log_p_xy"] > -(64 * math.log(2) + math.log(10)) + 10


def test_jmvae_learns_both_directions():
    # seeds 0-2 (2026-12-06): 0.78-0.83, 0.89-1.00, <= 0.16 / 0.26, -20.9
    _assert_multimodal_learned(run_smoke("jmvae"), x_to_y=0.6)


def test_mvae_learns_both_directions():
    # seeds 0, 2 (2026-12-06): 0.76, 0.70; 1.00; <= 0.40 / 0.25; -21.0 (seed 1: 0.60, 2026-12-07)
    _assert_multimodal_learned(run_smoke("mvae"), x_to_y=0.5)


def test_mmvae_learns_both_directions():
    # seeds 0-3 (2026-12-07): 0.61-0.77, 0.66-1.00, <= 0.23 / 0.26, -22.0
    _assert_multimodal_learned(run_smoke("mmvae"), x_to_y=0.5)


def test_the_uses_guide_runs(capsys):
    """docs/uses.md's snippets, executed in order in one namespace."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "uses.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace: dict = {}
        for block in blocks:
            exec(compile(block, "docs/uses.md", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "rarest test digit" in out and "Brier score" in out
    # ten epochs of the snippet's MVAE already carry the label from the image well past chance (0.1)
    assert float(out.split("coherence after 10 epochs: ")[1].split()[0]) > 0.3
