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
`_serket.Settings`). Reported next to it: the integrated model's own GMM after its first update
(a VAE trained ``first_epochs`` alone, then the GMM: no feedback yet); a paired control that continues
from that same state with the VAE deaf to the class means (so the difference is the feedback alone);
and the parts trained alone, a GMM on the latents of a VAE trained as many epochs with no feedback.

Data: ``mnist3000.npz`` of SERKET's examples, read from ``--data`` (default
``../shared/data/serket``); it is for tests and benchmarks and is not shipped with kizuna.

``--sampler collapsed`` runs every GMM with the collapsed Gibbs sampler of
`kizuna.modules.gmm_collapsed` (SERKET's, one point at a time) instead of the module's blocked one.

Run: ``python examples/serket_vae_gmm.py [--smoke] [--seed 0] [--data DIR] [--sampler blocked|collapsed]``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402

from kizuna import modules as km  # noqa: E402
from kizuna.modules import gmm_collapsed, gmm_inference  # noqa: E402

SAMPLERS = ("blocked", "collapsed")

ROWS = {"vae_gmm": "VAE+GMM (integrated)",
        "no_feedback": "the same after its first update, continued without feedback",
        "first_update": "the same after its first update (no feedback yet)",
        "gmm_on_vae": "GMM on VAE latents, no feedback"}


def build(d: S.Digits, s: S.Settings, seed: int) -> tuple[km.Graph, km.GMM]:
    """The integrated model: image -> VAE -> GMM."""
    vae = S.image_vae(d, s, seed)
    gmm = S.class_gmm(d, s).connect(vae)
    return km.Graph([gmm]), gmm


def _integrated(seed: int, smoke: bool, data: str | None) -> dict[str, float]:
    """The integrated model and a paired control: after the first update (VAE trained alone, then the
    GMM) the graph is saved; one copy continues with the class means fed back, the other with the VAE
    deaf to them, from the same networks, GMM chain and random streams."""
    s = S.settings(smoke)
    d = S.digits(data, s.n)
    graph, gmm = build(d, s, seed)
    graph.fit(n_iter=1, seed=seed)
    out = S.module_scores(gmm, "first_update")
    with tempfile.TemporaryDirectory() as tmp:
        graph.save(tmp)
        for key, feedback in (("vae_gmm", True), ("no_feedback", False)):
            graph, gmm = build(d, s, seed)
            graph.load(tmp)
            vae = gmm.children[0]
            vae.epochs = s.vae_epochs
            if not feedback:
                vae.receives = ()  # the GMM sends its class means only to children that receive them
                vae.backward_messages.clear()
            graph.fit(n_iter=s.n_iter - 1, seed=seed + 1)
            out.update(S.module_scores(gmm, key))
    return out


def integrated(seed: int, smoke: bool, data: str | Path | None) -> dict[str, float]:
    """Accuracy / ARI / NMI of the VAE+GMM's classes, of its GMM after the first update (before any
    feedback) and of the paired control continued without feedback (memoised: other examples report it)."""
    return S.cached("vae_gmm", _integrated, seed, smoke, data)


@contextmanager
def use_sampler(sampler: str) -> Iterator[None]:
    """Every `km.GMM` with ``algorithm="gibbs"`` samples with ``sampler``: ``"blocked"`` (the module's own)
    or ``"collapsed"`` (`gmm_collapsed.collapsed_gibbs`, same inputs and outputs), for the duration of the block.
    (Until the module takes the choice as an option of its own.)"""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    blocked = gmm_inference.gibbs
    gmm_inference.gibbs = gmm_collapsed.collapsed_gibbs if sampler == "collapsed" else blocked
    try:
        yield
    finally:
        gmm_inference.gibbs = blocked


def run(smoke: bool = False, seed: int = 0, data: str | Path | None = None,
        sampler: str = "blocked") -> dict[str, float]:
    """The integrated model, its paired controls and its image part alone (keys ``<row>_<metric>``), every
    GMM sampling with ``sampler`` (see `use_sampler`)."""
    with use_sampler(sampler):
        if sampler == "blocked":
            return {**integrated(seed, smoke, data), **S.gmm_on_vae(seed, smoke, data)}
        return {**S.cached("vae_gmm_collapsed", _integrated, seed, smoke, data),
                **S.cached("gmm_on_vae_collapsed", S._gmm_on_vae, seed, smoke, data)}


if __name__ == "__main__":
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--sampler", choices=SAMPLERS, default="blocked",
                         help="the GMM's Gibbs sampler (default: the module's blocked one)")
    known, rest = options.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    S.cli(functools.partial(run, sampler=known.sampler), __doc__)
