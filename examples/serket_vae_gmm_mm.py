r"""SERKET's VAE+GMM+MM example with `kizuna.modules`: a VAE under an HMM (GMM emissions + Markov model).

The 3,000 digits come in the order 0, 1, ..., 9, 0, 1, ... A Markov model over the GMM's classes
learns the transitions :math:`A_{ij} = p(c_{n+1}=j|c_n=i)` from the GMM's class posteriors and sends
each step the chain's message :math:`\mu_n(c)` (what the neighbouring steps say about :math:`c_n`) down
as a class prior, so the GMM's posterior becomes the HMM's smoothed marginal
:math:`p(c_n|z_{1:N}) \propto \mu_n(c_n)\,p(z_n|c_n)`; the GMM still sends its class means to the VAE
(Nakamura et al. 2018, arXiv:1712.00929):

.. math::
    \text{image} \to \text{VAE} \to \text{GMM} \to \text{MM},\qquad
    p(c_{1:N}) = \pi_{c_1}\prod_n A_{c_n c_{n+1}},\quad A_{i\cdot} \sim \mathrm{Dir}(\alpha).

Unlike SERKET's MM (independent per-step class draws, forward-only message), kizuna's MM counts
transitions by forward-backward and sends the two-sided message. Reported next to it: VAE+GMM without
the MM, and a GMM on the latents of a VAE trained alone.

Data: ``mnist3000.npz`` of SERKET's examples, read from ``--data`` (default ``../shared/data/serket``);
it is for tests and benchmarks and is not shipped with kizuna.

Run: ``python examples/serket_vae_gmm_mm.py [--smoke] [--seed 0] [--data DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402

from kizuna import modules as km  # noqa: E402

ROWS = {
    "vae_gmm_mm": "VAE+GMM+MM (integrated): GMM",
    "vae_gmm": "VAE+GMM, no MM",
    "gmm_on_vae": "GMM on VAE latents, no feedback",
}


def build(d: S.Digits, s: S.Settings) -> tuple[km.Graph, km.GMM]:
    """The integrated model: image -> VAE -> GMM -> MM (one sequence, in data order)."""
    _, gmm = S.build_vae_gmm(d, s)
    mm = km.MM(category=d.label, name="mm").connect(gmm)
    return km.Graph([mm]), gmm


def run(smoke: bool = False, seed: int = 0, data: str | Path | None = None) -> dict[str, float]:
    """The integrated model and its parts; keys ``<row>_<metric>`` for `ROWS`."""
    s = S.settings(smoke)
    graph, gmm = build(S.digits(data, s.n), s)
    S.fit_graph(graph, s, seed)
    vae_gmm = {k: v for k, v in S.vae_gmm(seed, smoke, data).items() if k.startswith("vae_gmm_")}
    return {**S.module_scores(gmm, "vae_gmm_mm"), **vae_gmm, **S.gmm_on_vae(seed, smoke, data)}


if __name__ == "__main__":
    S.cli(run, __doc__)
