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
the GMM's message by 20 tokens instead (``_serket.WEIGHTS``) lets the speech correct the image clusters and
the image clusters correct the speech; both settings are reported, next to the parts trained alone
(MLDA on speech, GMM on the latents of a VAE trained alone, VAE+GMM without speech).

Data: ``mnist3000.npz`` of SERKET's examples (images, speech HAC histograms, labels), read from
``--data`` (default ``../shared/data/serket``); it is for tests and benchmarks, not shipped with kizuna.

Run: ``python examples/serket_vae_gmm_mlda.py [--smoke] [--seed 0] [--data DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402

ROWS = {
    "vae_gmm_mlda": "VAE+GMM+MLDA, weights [200, 20]: MLDA",
    "vae_gmm_mlda_gmm": "VAE+GMM+MLDA, weights [200, 20]: its GMM",
    "serket_weights": "VAE+GMM+MLDA, SERKET's weights [200, 200]: MLDA",
    "speech_mlda": "MLDA on speech alone",
    "vae_gmm": "VAE+GMM (images only, integrated)",
    "gmm_on_vae": "GMM on VAE latents, no feedback",
}


def _serket_weights(seed: int, smoke: bool, data: str | None) -> dict[str, float]:
    s = S.settings(smoke)
    graph, _, mlda = S.build_vae_gmm_mlda(S.digits(data, s.n), s, S.SERKET_WEIGHTS)
    S.fit_graph(graph, s, seed)
    return S.module_scores(mlda, "serket_weights")


def run(smoke: bool = False, seed: int = 0, data: str | Path | None = None) -> dict[str, float]:
    """The integrated model (`_serket.build_vae_gmm_mlda`: image -> VAE -> GMM -> MLDA <- speech, both
    weightings) and its parts alone; keys ``<row>_<metric>`` for `ROWS`."""
    vae_gmm = {k: v for k, v in S.vae_gmm(seed, smoke, data).items() if k.startswith("vae_gmm_")}
    return {**S.vae_gmm_mlda(seed, smoke, data),
            **S.cached("vae_gmm_mlda_serket_weights", _serket_weights, seed, smoke, data),
            **S.speech_alone(seed, smoke, data), **vae_gmm, **S.gmm_on_vae(seed, smoke, data)}


if __name__ == "__main__":
    S.cli(run, __doc__)
