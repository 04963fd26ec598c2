r"""A VAE under an MLDA on SERKET's object data: vision learnt by a neural module, fused with sound and touch.

The fifty objects of SERKET's ``examples/mMLDA`` (10 categories) come with three histograms: visual
dense-SIFT (500 bins), sound MFCC (50) and tactile (15). SERKET's MNVAE+MLDA example feeds the latent
of a VAE on images to an MLDA with words; kizuna's MLDA takes class posteriors or counts, so the VAE's
latent goes through a GMM, as in SERKET's VAE+GMM+MLDA:

.. math::
    \text{vision} \to \text{VAE} \xrightarrow{z_n} \text{GMM} \xrightarrow{p(c_n|z_n)} \text{MLDA}
    \leftarrow \{\text{sound}, \text{touch}\}

The VAE (Gaussian likelihood, 4 latent dimensions) encodes the standardised :math:`\log(1 + \text{count})`
visual histogram; the MLDA sees 200 sound and 200 touch tokens and 20 class-word tokens from the GMM
(SERKET's 200 would let the GMM's partition override the other modalities, see
``serket_vae_gmm_mlda.py``). The MLDA's class prior flows back to the GMM, and the GMM's class means
back to the VAE. Reported next to it: the GMM on the latents of the VAE trained alone, the MLDA on
sound and touch alone, and the MLDA on the three histograms (no neural module; SERKET's object MLDA).

Data: ``mMLDA/`` of SERKET's examples, read from ``--data`` (default ``../shared/data/serket``); it is
for tests and benchmarks and is not shipped with kizuna.

Run: ``python examples/serket_mlda_vae.py [--smoke] [--seed 0] [--data DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402

from kizuna import modules as km  # noqa: E402

GMM_WEIGHT = 20.0
ROWS = {
    "integrated": "VAE+GMM+MLDA: MLDA",
    "integrated_gmm": "VAE+GMM+MLDA: its GMM",
    "gmm_on_vae": "GMM on VAE latents, no feedback",
    "sound_touch_mlda": "MLDA on sound + touch",
    "histogram_mlda": "MLDA on vision + sound + touch histograms",
}


def vision_features(counts: np.ndarray) -> np.ndarray:
    """Standardised :math:`\\log(1 + n)` of the visual histograms (float32, zero mean, unit variance)."""
    z = np.log1p(counts)
    return ((z - z.mean(0)) / (z.std(0) + 1e-6)).astype(np.float32)


def _vae(d: dict[str, np.ndarray], epochs: int) -> km.VAE:
    """The VAE on the visual features (its networks initialised from the graph's generator)."""
    return km.VAE(4, hidden=(64,), epochs=epochs, batch_size=50, likelihood="normal",
                  name="vae").connect(km.Observation(vision_features(d["vision"]), name="vision"))


def _mlda(d: dict[str, np.ndarray], sweeps: int, weights: list[float], modalities: list[str],
          *modules: km.Module) -> km.MLDA:
    """An MLDA over fresh observations of ``modalities`` and then ``modules``."""
    children = [km.Observation(d[k], name=k) for k in modalities]
    return km.MLDA(10, weights=weights, category=d["object"].astype(int), max_iter=sweeps,
                   name="mlda").connect(*children, *modules)


def run(smoke: bool = False, seed: int = 0, data: str | Path | None = None) -> dict[str, float]:
    """The integrated model and its parts alone; keys ``<row>_<metric>`` for `ROWS`."""
    d = S.objects(data)
    epochs, gmm_sweeps, sweeps, n_iter = (40, 30, 20, 3) if smoke else (100, 100, 100, 5)
    labels = d["object"].astype(int)
    gmm = km.GMM(10, category=labels, max_iter=gmm_sweeps, name="gmm").connect(_vae(d, epochs))
    mlda = _mlda(d, sweeps, [200, 200, GMM_WEIGHT], ["sound", "touch"], gmm)
    km.Graph([mlda]).fit(n_iter=n_iter, seed=seed)
    out = S.module_scores(mlda, "integrated") | S.module_scores(gmm, "integrated_gmm")
    alone = _vae(d, epochs)
    km.Graph([alone]).fit(n_iter=n_iter, seed=seed)
    lone_gmm = km.GMM(10, category=labels, max_iter=gmm_sweeps, name="gmm").connect(
        km.Observation(alone.latent, name="latent"))
    for model, key in ((lone_gmm, "gmm_on_vae"),
                       (_mlda(d, sweeps, [200, 200], ["sound", "touch"]), "sound_touch_mlda"),
                       (_mlda(d, sweeps, [200, 200, 200], ["vision", "sound", "touch"]), "histogram_mlda")):
        km.Graph([model]).fit(n_iter=n_iter, seed=seed)
        out |= S.module_scores(model, key)
    return out


if __name__ == "__main__":
    S.cli(run, __doc__, needs=S.OBJECTS)
