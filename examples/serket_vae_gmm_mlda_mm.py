r"""SERKET's VAE+GMM+MLDA+MM example with `kizuna.modules`: images, speech and the order of the digits.

The VAE+GMM+MLDA model of ``serket_vae_gmm_mlda.py`` with a Markov model over the MLDA's topics on
top: the digits come in the order 0, 1, ..., 9, 0, ..., the MM learns the topic transitions and sends
the chain's message down to the MLDA as a class prior, so the MLDA's posterior is the smoothed
marginal of an HMM whose emissions are the two modalities (Nakamura et al. 2018, arXiv:1712.00929):

.. math::
    \text{image} \to \text{VAE} \to \text{GMM} \to \text{MLDA} \leftarrow \text{speech},\qquad
    \text{MLDA} \to \text{MM}.

The MLDA weights the GMM's message by 20 tokens (``_serket.WEIGHTS``; SERKET's 200 lets
the image clusters override the speech, see that example). An MLDA multiplies its parent's prior
into the conditional of every one of a sample's 220 tokens (SERKET's bias), so the MM's message
counts 220 times against the sample's own evidence once; the model is run that way and with
``MLDA(prior_per="sample")``, which takes the 220th root of the prior so that it counts once.
Reported next to them: the same model without the MM, MLDA on speech alone, and a GMM on the
latents of a VAE trained alone.

Data: ``mnist3000.npz`` of SERKET's examples, read from ``--data`` (default ``../shared/data/serket``);
it is for tests and benchmarks and is not shipped with kizuna.

Run: ``python examples/serket_vae_gmm_mlda_mm.py [--smoke] [--seed 0] [--data DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402

from kizuna import modules as km  # noqa: E402

ROWS = {
    "vae_gmm_mlda_mm": "VAE+GMM+MLDA+MM, prior per token (SERKET): MLDA",
    "once_per_sample": "VAE+GMM+MLDA+MM, prior once per sample: MLDA",
    "vae_gmm_mlda": "VAE+GMM+MLDA, no MM: MLDA",
    "speech_mlda": "MLDA on speech alone",
    "gmm_on_vae": "GMM on VAE latents, no feedback",
}


def build(d: S.Digits, s: S.Settings, prior_per: str = "token") -> tuple[km.Graph, km.MLDA]:
    """The integrated model: VAE+GMM+MLDA (weights `_serket.WEIGHTS`) with an MM on top."""
    _, _, mlda = S.build_vae_gmm_mlda(d, s, prior_per=prior_per)
    mm = km.MM(category=d.label, name="mm").connect(mlda)
    return km.Graph([mm]), mlda


def run(smoke: bool = False, seed: int = 0, data: str | Path | None = None) -> dict[str, float]:
    """The integrated model (both prior semantics) and its parts; keys ``<row>_<metric>`` for `ROWS`."""
    s = S.settings(smoke)
    d = S.digits(data, s.n)
    out = {}
    for key, prior_per in (("vae_gmm_mlda_mm", "token"), ("once_per_sample", "sample")):
        graph, mlda = build(d, s, prior_per)
        S.fit_graph(graph, s, seed)
        out.update(S.module_scores(mlda, key))
    without = {k: v for k, v in S.vae_gmm_mlda(seed, smoke, data).items() if not k.startswith("vae_gmm_mlda_gmm")}
    return {**out, **without, **S.speech_alone(seed, smoke, data), **S.gmm_on_vae(seed, smoke, data)}


if __name__ == "__main__":
    S.cli(run, __doc__)
