r"""SERKET's VAE+GMM example with `kizuna.modules`: a VAE and a GMM that learn from each other.

The VAE compresses each image :math:`o_n` to a latent :math:`z_n` and sends the latent means up; the
GMM clusters them and sends down the mean :math:`\mu_{c_n}` of each sample's class, which becomes the
VAE's prior (Nakamura et al. 2018, arXiv:1712.00929; Neuro-SERKET, arXiv:1910.08918):

.. math::
    \mathcal L_{\mathrm{VAE}} = \frac1N\sum_n\Big(-\mathbb E_{q(z|o_n)}[\log p(o_n|z)]
        + D_{KL}\big[q(z|o_n)\,\|\,\mathcal N(\mu_{c_n}, I)\big]\Big),\qquad
    c_n \sim p(c_n | z_{1:N}) \ \text{(GMM, Gibbs)}.

So the latents of images the GMM puts in one class are pulled together. SERKET's settings: 18 latent
dimensions, 10 classes, 5 mutual-inference iterations (the epochs and sweeps per iteration are in
`_serket.Settings`). Reported next to it, the parts trained alone: a GMM on the latents of the same
VAE trained for as many epochs with no feedback, and the integrated model's own GMM after its first
update (a VAE trained ``vae_epochs`` epochs alone, before any feedback).

Data: ``mnist3000.npz`` of SERKET's examples, read from ``--data`` (default
``../shared/data/serket``); it is for tests and benchmarks and is not shipped with kizuna.

Run: ``python examples/serket_vae_gmm.py [--smoke] [--seed 0] [--data DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402

from kizuna import modules as km  # noqa: E402

ROWS = {"vae_gmm": "VAE+GMM (integrated)", "gmm_on_vae": "GMM on VAE latents, no feedback",
        "first_update": "GMM on VAE latents after one update (no feedback yet)"}


def build(d: S.Digits, s: S.Settings, seed: int) -> tuple[km.Graph, km.GMM]:
    """The integrated model: image -> VAE -> GMM."""
    vae = S.image_vae(d, s, seed)
    gmm = S.class_gmm(d, s).connect(vae)
    return km.Graph([gmm]), gmm


def _integrated(seed: int, smoke: bool, data: str | None) -> dict[str, float]:
    s = S.settings(smoke)
    graph, gmm = build(S.digits(data, s.n), s, seed)
    graph.fit(n_iter=1, seed=seed)  # the VAE trained alone once (zero prior mean), then the GMM: no feedback yet
    first = S.module_scores(gmm, "first_update")
    graph.fit(n_iter=s.n_iter - 1, seed=seed + 1)  # the chains and networks continue; a fresh stream
    return {**S.module_scores(gmm, "vae_gmm"), **first}


def integrated(seed: int, smoke: bool, data: str | Path | None) -> dict[str, float]:
    """Accuracy / ARI / NMI of the VAE+GMM's classes, and of its GMM after the first update, before any
    feedback: a GMM on a VAE trained ``vae_epochs`` alone (memoised: other examples report it too)."""
    return S.cached("vae_gmm", _integrated, seed, smoke, data)


def run(smoke: bool = False, seed: int = 0, data: str | Path | None = None) -> dict[str, float]:
    """The integrated model and its image part alone (keys ``vae_gmm_*``, ``gmm_on_vae_*``)."""
    return {**integrated(seed, smoke, data), **S.gmm_on_vae(seed, smoke, data)}


if __name__ == "__main__":
    S.cli(run, __doc__)
