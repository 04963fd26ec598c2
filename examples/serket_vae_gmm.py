r"""SERKET's VAE+GMM example with `kizuna.modules`: a VAE and a GMM that learn from each other.

The VAE compresses each image :math:`o_n` to a latent :math:`z_n` and sends the latent means up; the
GMM clusters them and sends down the mean :math:`\mu_{c_n}` of each sample's class, which becomes the
VAE's prior (Nakamura et al. 2018, arXiv:1712.00929; Neuro-SERKET, arXiv:1910.08918):

.. math::
    \mathcal L_{\mathrm{VAE}} = \frac1N\sum_n\Big(-\mathbb E_{q(z|o_n)}[\log p(o_n|z)]
        + D_{KL}\big[q(z|o_n)\,\|\,\mathcal N(\mu_{c_n}, I)\big]\Big),\qquad
    c_n = \arg\max_k p(c_n = k | z_{1:N}) \ \text{(the GMM's most probable class, fitted by Gibbs)}.

So the latents of images the GMM puts in one class are pulled together. SERKET's settings: 18 latent
dimensions, 10 classes, 5 mutual-inference iterations (the epochs and sweeps per iteration are in
`_serket.Settings`). Reported next to it: the integrated model's own GMM after its first update
(a VAE trained ``first_epochs`` alone, then the GMM: no feedback yet); a paired control that continues
from that same state with the VAE deaf to the class means (so the difference is the feedback alone);
and the parts trained alone, a GMM on the latents of a VAE trained as many epochs with no feedback.

Data: ``mnist3000.npz`` of SERKET's examples, read from ``--data`` (default
``../shared/data/serket``); it is for tests and benchmarks and is not shipped with kizuna.

``--sampler collapsed`` runs every GMM with ``algorithm="collapsed"``, the collapsed Gibbs sampler of
`kizuna.modules.gmm.collapsed` (SERKET's, one point at a time), instead of the blocked one.

Run: ``python examples/serket_vae_gmm.py [--smoke] [--seed 0] [--data DIR] [--sampler blocked|collapsed]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402

ROWS = {"vae_gmm": "VAE+GMM (integrated)",
        "no_feedback": "the same after its first update, continued without feedback",
        "first_update": "the same after its first update (no feedback yet)",
        "gmm_on_vae": "GMM on VAE latents, no feedback"}


def run(smoke: bool = False, seed: int = 0, data: str | Path | None = None,
        sampler: str = "blocked") -> dict[str, float]:
    """The integrated model (`_serket.build_vae_gmm`: image -> VAE -> GMM), its paired controls
    (`_serket.vae_gmm`) and its image part alone (keys ``<row>_<metric>``), every GMM sampling with
    ``sampler``: ``"blocked"`` (``GMM(algorithm="gibbs")``) or ``"collapsed"`` (SERKET's sampler)."""
    if sampler not in S.SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(S.SAMPLERS)}, got {sampler!r}")
    algorithm = S.SAMPLERS[sampler]
    return {**S.vae_gmm(seed, smoke, data, algorithm), **S.gmm_on_vae(seed, smoke, data, algorithm)}


if __name__ == "__main__":
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--sampler", choices=S.SAMPLERS, default="blocked",
                         help="the GMM's Gibbs sampler (default: the module's blocked one)")
    S.cli(run, __doc__, options)
