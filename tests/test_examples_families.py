"""The GAN, diffusion, score and energy-based examples run in smoke mode and show learning.

Each smoke run trains on the scikit-learn digits for a few seconds. Sample quality is judged by a
classifier two-sample test (C2ST, held-out accuracy; 0.5 = indistinguishable from real images);
references are the untrained model (or the initial replay buffer) and a second real sample.
"""

from __future__ import annotations

import math

from example_loader import run_smoke


def test_gan_smoke() -> None:
    m = run_smoke("gan")
    assert m["c2st_logistic_untrained"] > 0.95 and m["c2st_logistic_real"] < 0.6
    assert m["c2st_logistic"] < m["c2st_logistic_untrained"] - 0.1  # measured 0.76 after 150 WGAN-GP steps (stop 36)


def test_diffusion_smoke() -> None:
    m = run_smoke("diffusion")
    assert math.isfinite(m["test_bpd"]) and m["test_bpd_se"] < 0.1
    assert m["test_bpd"] < 0.5 * m["untrained_bpd"]  # measured 5.2 vs 14.7 bits/dim after 800 steps
    assert abs(m["test_bpd_sampled_t"] - m["test_bpd"]) < 5 * math.hypot(m["test_bpd_se"], m["test_bpd_sampled_t_se"])


def test_score_smoke() -> None:
    m = run_smoke("score")
    assert m["c2st_logistic_real"] < 0.6
    assert m["test_loss"] < 0.6 * m["test_loss_untrained"]  # measured 15.8 vs 32.0 (the held-out DSM loss)
    assert m["c2st_logistic"] < m["c2st_logistic_untrained"]  # 0.98 vs 1.0: a short run, far from real


def test_ebm_smoke() -> None:
    m = run_smoke("ebm")
    assert m["auc_vs_uniform"] > 0.95 and m["auc_vs_shuffled"] > 0.9
    assert m["c2st_logistic"] < m["c2st_logistic_initial"] - 0.2  # measured 0.53 from 1.0 (stop 36)
