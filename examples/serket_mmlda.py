r"""SERKET's multilayered multimodal LDA (``examples/mMLDA``) with `kizuna.modules`: objects and motions.

Fifty recorded actions, each an object handled with a motion. An object MLDA clusters three
modalities of the object (visual dense-SIFT, sound MFCC and tactile histograms, 200 tokens each)
into 10 categories, a motion MLDA clusters the joint-angle histograms (200 tokens) into 10, and a
top MLDA clusters the two posteriors (100 tokens each), learning which objects go with which
motions and sending each lower MLDA its predicted class distribution as a prior (Attamimi et al.
2016; Nakamura et al. 2018, arXiv:1712.00929):

.. math::
    \{\text{vision}, \text{sound}, \text{touch}\} \to \text{MLDA}_{\text{object}} \to
    \text{MLDA}_{\text{top}} \leftarrow \text{MLDA}_{\text{motion}} \leftarrow \text{angles}

Scored: the object MLDA against the object categories and the motion MLDA against the motion
categories, in the hierarchy and trained alone. An MLDA multiplies its parent's prior into the
conditional of *every token* (SERKET's bias), so a document of :math:`T` tokens meets the prior
:math:`T` times (600 for an object); the row "prior once per sample" uses ``MLDA(prior_per="sample")``,
which takes the :math:`T`-th root of the prior so that it counts once, as a GMM's does.

The 50 actions hold 17 distinct (object, motion) pairs, and neither category determines the other
(motion 1 goes with objects 0, 1 and 2; object 0 with motions 1 and 5). A top level of SERKET's 10
topics cannot hold the pairs, so its prior merges categories; the rows "top of 20 topics" give it room.

Data: ``mMLDA/`` of SERKET's examples, read from ``--data`` (default ``../shared/data/serket``); it is
for tests and benchmarks and is not shipped with kizuna.

Run: ``python examples/serket_mmlda.py [--smoke] [--seed 0] [--data DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402

from kizuna import modules as km  # noqa: E402

ROWS = {
    "object_in_hierarchy": "hierarchy (SERKET): object MLDA",
    "motion_in_hierarchy": "hierarchy (SERKET): motion MLDA",
    "object_once": "hierarchy, prior once per sample: object MLDA",
    "motion_once": "hierarchy, prior once per sample: motion MLDA",
    "object_top20": "hierarchy, top of 20 topics (SERKET): object MLDA",
    "motion_top20": "hierarchy, top of 20 topics (SERKET): motion MLDA",
    "object_alone": "object MLDA alone",
    "motion_alone": "motion MLDA alone",
}


def _lower(d: dict[str, np.ndarray], sweeps: int, prior_per: str) -> tuple[km.MLDA, km.MLDA]:
    obs = {k: km.Observation(d[k], name=k) for k in ("vision", "sound", "touch", "angles")}
    objects = km.MLDA(10, [200, 200, 200], category=d["object"].astype(int), max_iter=sweeps, prior_per=prior_per,
                      name="object").connect(obs["vision"], obs["sound"], obs["touch"])
    motions = km.MLDA(10, [200], category=d["motion"].astype(int), max_iter=sweeps, prior_per=prior_per,
                      name="motion").connect(obs["angles"])
    return objects, motions


def hierarchy(d: dict[str, np.ndarray], sweeps: int, prior_per: str = "token",
              top_topics: int = 10) -> tuple[km.Graph, km.MLDA, km.MLDA]:
    """The three-MLDA model; the lower MLDAs count the top's prior once per ``prior_per``, the top has
    ``top_topics`` topics."""
    objects, motions = _lower(d, sweeps, prior_per)
    top = km.MLDA(top_topics, weights=[100, 100], max_iter=sweeps, name="top").connect(objects, motions)
    return km.Graph([top]), objects, motions


def run(smoke: bool = False, seed: int = 0, data: str | Path | None = None) -> dict[str, float]:
    """The hierarchy (SERKET's prior, and once per sample) and the lower MLDAs alone; keys ``<row>_<metric>``."""
    d = S.objects(data)
    sweeps, n_iter = (20, 3) if smoke else (100, 5)
    out: dict[str, float] = {}
    for tag, prior_per, top_topics in (("in_hierarchy", "token", 10), ("once", "sample", 10),
                                       ("top20", "token", 20)):
        graph, objects, motions = hierarchy(d, sweeps, prior_per, top_topics)
        graph.fit(n_iter=n_iter, seed=seed)
        out.update(S.module_scores(objects, f"object_{tag}") | S.module_scores(motions, f"motion_{tag}"))
    for module in _lower(d, sweeps, "token"):
        km.Graph([module]).fit(n_iter=n_iter, seed=seed)
        out.update(S.module_scores(module, f"{module.name}_alone"))
    return out


if __name__ == "__main__":
    S.cli(run, __doc__, needs=S.OBJECTS)
