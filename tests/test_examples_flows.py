"""The smoke runs of ``examples/flows.py`` and ``examples/autoregressive.py`` learn (seed 0).

Margins are stated against baselines computed in the same run: a full-covariance Gaussian on the
2-D moons (nats per point), independent per-pixel categoricals on the digits' 17 grey levels
(bits/dim, exact), and independent per-pixel Bernoullis on binarised digits (nats per image, exact).
The measured smoke figures (seed 0) are in the comments; the margins leave room for other BLAS
builds and seeds.
"""

from __future__ import annotations

import math

from example_loader import run_smoke


def test_flows_smoke_beats_its_baselines() -> None:
    m = run_smoke("flows")
    # moons: Gaussian 1.91, RealNVP 1.14, MAF 1.26 nats (seeds 1, 2: MAF 1.46, 1.22)
    assert m["moons_realnvp_nll"] < m["moons_gaussian_nll"] - 0.3, m
    assert m["moons_maf_nll"] < m["moons_gaussian_nll"] - 0.3, m
    # digits: categorical 2.42, RealNVP 2.19, MAF 2.27 bits/dim
    assert m["digits_realnvp_bpd"] < m["digits_categorical_bpd"] - 0.1, m
    assert m["digits_maf_bpd"] < m["digits_categorical_bpd"] - 0.05, m


def test_autoregressive_smoke_beats_independent_pixels() -> None:
    m = run_smoke("autoregressive")
    # independent 24.3, MADE 17.5, PixelCNN 20.2 nats per 64-pixel image
    assert m["made_nll"] < m["baseline_nll"] - 3.0, m
    assert m["pixelcnn_nll"] < m["baseline_nll"] - 2.0, m
    for name in ("baseline", "made", "pixelcnn"):
        assert math.isclose(m[f"{name}_bpd"], m[f"{name}_nll"] / (64 * math.log(2)), rel_tol=1e-9)
    assert 0.0 <= m["pixelcnn_sample_mean"] <= 1.0
