r"""SERKET's VAE+GMM+MLDA example with `kizuna.modules`: images and speech classified together.

The VAE compresses each image, the GMM clusters the latents and sends its class posterior up to an
MLDA, which treats it as a second modality next to the spoken digit's HAC histogram; the MLDA sends
the class distribution it predicts, :math:`\sum_k \theta_{nk}\phi^{\mathrm{gmm}}_{kc}`, down to the
GMM as a class prior, and the GMM sends its class means down to the VAE (Nakamura et al. 2018,
arXiv:1712.00929):

.. math::
    \text{image} \to \text{VAE} \xrightarrow{z_n} \text{GMM} \xrightarrow{p(c_n|z_n)} \text{MLDA}
    \xleftarrow{\text{counts}} \text{speech}

**Modality weights.** MLDA turns each sample's message into ``weight`` tokens. With SERKET's weights
``[200, 200]`` the GMM's (nearly one-hot) posterior becomes 200 copies of one class word, against
200 speech tokens spread over 2,400 words: the class modality outweighs the speech by thousands of
nats per sample, every topic's class-word distribution becomes one-hot, and the MLDA reproduces the
GMM's partition — a fixed point the feedback cannot leave (see ``docs/serket_examples.md``). Weighting
the GMM's message by 20 tokens instead (``WEIGHTS``) lets the speech correct the image clusters and
the image clusters correct the speech; both settings are reported, next to the parts trained alone
(MLDA on speech, GMM on the latents of a VAE trained alone, VAE+GMM without speech).

Data: ``mnist3000.npz`` of SERKET's examples (images, speech HAC histograms, labels), read from
``--data`` (default ``../shared/data/serket``); it is for tests and benchmarks, not shipped with kizuna.

Run: ``python examples/serket_vae_gmm_mlda.py [--smoke] [--seed 0] [--data DIR]``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402
import serket_vae_gmm  # noqa: E402

from kizuna import modules as km  # noqa: E402

WEIGHTS = (200.0, 20.0)  # tokens per sample: speech, GMM posterior
SERKET_WEIGHTS = (200.0, 200.0)
ROWS = {
    "vae_gmm_mlda": "VAE+GMM+MLDA, weights [200, 20]: MLDA",
    "vae_gmm_mlda_gmm": "VAE+GMM+MLDA, weights [200, 20]: its GMM",
    "serket_weights": "VAE+GMM+MLDA, SERKET's weights [200, 200]: MLDA",
    "speech_mlda": "MLDA on speech alone",
    "vae_gmm": "VAE+GMM (images only, integrated)",
    "gmm_on_vae": "GMM on VAE latents, no feedback",
}


def build(d: S.Digits, s: S.Settings, seed: int, weights: Sequence[float] = WEIGHTS,
          mlda_class: type[km.MLDA] = km.MLDA) -> tuple[km.Graph, km.GMM, km.MLDA]:
    """The integrated model: image -> VAE -> GMM -> MLDA <- speech (``mlda_class`` builds the MLDA)."""
    vae = S.image_vae(d, s, seed)
    gmm = S.class_gmm(d, s).connect(vae)
    mlda = S.speech_mlda(d, s, weights, cls=mlda_class).connect(km.Observation(d.speech, name="speech"), gmm)
    return km.Graph([mlda]), gmm, mlda


def _integrated(seed: int, smoke: bool, data: str | None) -> dict[str, float]:
    s = S.settings(smoke)
    graph, gmm, mlda = build(S.digits(data, s.n), s, seed)
    S.fit_graph(graph, s, seed)
    return {**S.module_scores(mlda, "vae_gmm_mlda"), **S.module_scores(gmm, "vae_gmm_mlda_gmm")}


def integrated(seed: int, smoke: bool, data: str | Path | None) -> dict[str, float]:
    """The MLDA's and the GMM's scores in VAE+GMM+MLDA with `WEIGHTS` (memoised)."""
    return S.cached("vae_gmm_mlda", _integrated, seed, smoke, data)


def _serket_weights(seed: int, smoke: bool, data: str | None) -> dict[str, float]:
    s = S.settings(smoke)
    graph, _, mlda = build(S.digits(data, s.n), s, seed, SERKET_WEIGHTS)
    S.fit_graph(graph, s, seed)
    return S.module_scores(mlda, "serket_weights")


def run(smoke: bool = False, seed: int = 0, data: str | Path | None = None) -> dict[str, float]:
    """The integrated model (both weightings) and its parts alone; keys ``<row>_<metric>`` for `ROWS`."""
    return {**integrated(seed, smoke, data),
            **S.cached("vae_gmm_mlda_serket_weights", _serket_weights, seed, smoke, data),
            **S.speech_alone(seed, smoke, data), **serket_vae_gmm.integrated(seed, smoke, data),
            **S.gmm_on_vae(seed, smoke, data)}


if __name__ == "__main__":
    S.cli(run, __doc__)
