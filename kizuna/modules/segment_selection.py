r"""How well a segmentation's words predict the places: the score a concept module chooses hypotheses by.

Several word segmentations of the same utterances (independent NPYLM chains, `WordSegmenter` with
``n_chains > 1``) are competing hypotheses of the robot's lexicon, as the particles of SpCoSLAM
(Taniguchi et al. 2017) each carry their own segmentation. The concept module knows which events
belong together (its concept posterior :math:`r_{nl} = p(c_n{=}l \mid \cdot)`); a segmentation whose
words name the places predicts, for an event it has not seen, that event's concept from its words
alone. The score of a hypothesis with word counts :math:`X` (N×V) is the leave-one-out log predictive
probability of the concepts given the words, averaged over the concept posterior:

.. math::
    S(X) = \sum_n \sum_l r_{nl} \log p(c_n{=}l \mid x_n, X_{-n}, r_{-n}),\qquad
    p(c_n{=}l \mid x_n, \cdot) \propto (N^{-n}_l + \epsilon)\,
    \frac{\Gamma(T^{-n}_{l\cdot} + V\beta)}{\Gamma(T^{-n}_{l\cdot} + |x_n| + V\beta)}
    \prod_v \frac{\Gamma(T^{-n}_{lv} + x_{nv} + \beta)}{\Gamma(T^{-n}_{lv} + \beta)},

with the soft counts :math:`N^{-n}_l = \sum_{m \ne n} r_{ml}` and :math:`T^{-n}_{lv} = \sum_{m \ne n} r_{ml} x_{mv}`
(the Dirichlet-multinomial predictive of event :math:`n`'s bag of words under concept :math:`l`, the
collapsed word distribution of SpCoA). :math:`S` is, up to the constant :math:`-H(C)`, a leave-one-out
estimate of the mutual information between the words and the concepts (SpCoA selects place words by
that information). Leaving the event out matters: with its own words in the counts every segmentation,
even one that glues a whole utterance into one word, predicts its own event perfectly.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, logsumexp

from kizuna._data import check_positive


def concept_log_predictive(counts: np.ndarray, resp: np.ndarray, beta: float = 0.5, eps: float = 1e-3) -> float:
    """:math:`S(X)` of the module docstring.

    Args:
        counts: ``N×V`` word counts of one segmentation hypothesis.
        resp: ``N×L`` concept posterior (rows sum to one; one-hot for hard assignments).
        beta: :math:`\\beta` of the concepts' symmetric Dirichlet over words.
        eps: :math:`\\epsilon`, keeps an empty concept's prior weight positive.

    Returns:
        The score in nats (larger: the words predict the concepts better).
    """
    x = np.asarray(counts, dtype=np.float64)
    r = np.asarray(resp, dtype=np.float64)
    if x.ndim != 2 or r.ndim != 2 or x.shape[0] != r.shape[0]:
        raise ValueError(f"concept_log_predictive: counts N×V and resp N×L must have the same N, got {x.shape} and "
                         f"{r.shape}")
    if x.shape[1] == 0:  # (gammaln(0) - gammaln(0): NaN)
        raise ValueError("concept_log_predictive: counts have no word columns (V = 0): there is no vocabulary to score")
    # (NaN passed every `< 0` and `<= 0`: the score was NaN, silently)
    if not (np.isfinite(x).all() and np.isfinite(r).all()) or (x < 0).any() or (r < 0).any():
        raise ValueError("concept_log_predictive: counts and resp must be finite and non-negative")
    check_positive("concept_log_predictive: beta", beta)
    check_positive("concept_log_predictive: eps", eps)
    if r.shape[0] and not np.allclose(r.sum(1), 1.0):
        bad = int(np.argmax(~np.isclose(r.sum(1), 1.0)))
        raise ValueError(f"concept_log_predictive: every row of resp must sum to one (a concept posterior); row {bad} "
                         f"sums to {r[bad].sum():g}")
    v = x.shape[1]
    topic = r.T @ x  # L×V soft counts of every word in every concept
    sizes = r.sum(0)  # L soft event counts
    score = 0.0
    for n in range(x.shape[0]):
        t = topic - r[n][:, None] * x[n][None, :]  # leave event n out
        t = t.clip(0.0)  # rounding
        used = x[n] > 0
        log_lik = (gammaln(t.sum(1) + v * beta) - gammaln(t.sum(1) + x[n].sum() + v * beta)
                   + (gammaln(t[:, used] + x[n, used] + beta) - gammaln(t[:, used] + beta)).sum(1))
        log_post = np.log((sizes - r[n]).clip(0.0) + eps) + log_lik
        score += float(r[n] @ (log_post - logsumexp(log_post)))
    return score
