r"""SERKET's HMM example with `kizuna.modules`: a GMM and a Markov model make a hidden Markov model.

SERKET's ``examples/HMM`` clusters 100 points in 2-D that visit four Gaussian blobs (the corners of
the unit square, standard deviation 0.2) in the cyclic order 0, 1, 2, 3, 0, ... with a GMM of 4
classes. Connecting a Markov model above the GMM turns it into an HMM: the MM learns the transitions
between the GMM's classes and sends each step the chain's message as a class prior, so the GMM's
posterior is the HMM's smoothed marginal (Nakamura et al. 2018, arXiv:1712.00929):

.. math::
    p(x_{1:N}, c_{1:N}) = \pi_{c_1}\prod_{n>1} A_{c_{n-1}c_n}\prod_n \mathcal N(x_n|\mu_{c_n}, \Sigma_{c_n}).

Reported: the GMM+MM model, the GMM alone, and `kizuna.modules.HMM` fitted by Baum-Welch (EM) as
a reference for the same model.

Data: ``HMM/data.txt`` and ``HMM/correct.txt`` of SERKET's examples, read from ``--data`` (default
``../shared/data/serket``); they are for tests and benchmarks and are not shipped with kizuna.

Run: ``python examples/serket_hmm.py [--smoke] [--seed 0] [--data DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402

from kizuna import modules as km  # noqa: E402

ROWS = {"gmm_mm": "GMM+MM = HMM (integrated): GMM", "gmm": "GMM alone",
        "baum_welch": "HMM by Baum-Welch (kizuna.modules.HMM)"}


def load(data: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(points 100×2, true states 100) of SERKET's HMM example."""
    folder = S.data_dir(data) / "HMM"
    if not (folder / "data.txt").is_file():
        raise FileNotFoundError(f"{folder / 'data.txt'} is missing: the SERKET data folder must hold HMM/")
    return np.loadtxt(folder / "data.txt"), np.loadtxt(folder / "correct.txt").astype(np.int64)


def run(smoke: bool = False, seed: int = 0, data: str | Path | None = None) -> dict[str, float]:
    """Accuracy / ARI / NMI of the three models (keys ``<row>_<metric>`` for `ROWS`)."""
    x, states = load(data)
    sweeps, n_iter = (30, 3) if smoke else (100, 5)
    gmm = km.GMM(4, category=states, max_iter=sweeps, name="gmm").connect(km.Observation(x, name="points"))
    mm = km.MM(category=states, name="mm").connect(gmm)
    km.Graph([mm]).fit(n_iter=n_iter, seed=seed)
    alone = km.GMM(4, category=states, max_iter=sweeps, name="gmm").connect(km.Observation(x, name="points"))
    km.Graph([alone]).fit(n_iter=n_iter, seed=seed)
    hmm = km.HMM(4, covariance_type="full", n_iter=100, random_state=seed).fit(x)
    return {**S.module_scores(gmm, "gmm_mm"), **S.module_scores(alone, "gmm"),
            **S.scores(states, np.asarray(hmm.predict(x)), "baum_welch")}


if __name__ == "__main__":
    S.cli(run, __doc__, needs=S.HMM)
