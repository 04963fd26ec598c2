"""The slot model of an utterance (`kizuna.modules.npylm_slot`, `WordSegmenter(prior_mode="slot")`): its
forward filtering / backward sampling against enumerating every segmentation with the mixture probability
of each word written out by hand, the concepts' name distribution against its Dirichlet-process formula,
the slot probabilities of the drawn words, and the module under a concept module (with ``relearn``)."""


import numpy as np
import pytest
from npylm_reference import segmentations, trained
from scipy import stats

from kizuna import modules as km
from kizuna.datasets import simulated_house
from kizuna.modules.npylm import BOS, EOS, NPYLM, gibbs_sweep
from kizuna.modules.npylm_slot import ConceptNames, sample_slot

LAMBDA, A = 0.3, 0.7


def _names() -> tuple[ConceptNames, np.ndarray, dict[str, np.ndarray]]:
    """Three events, two concepts; events 1 and 2 counted with hand-chosen slot probabilities."""
    resp = np.array([[0.7, 0.3], [0.9, 0.1], [0.2, 0.8]])
    names = ConceptNames(resp, LAMBDA, A)
    names.add(1, ["cd", "ab", "cd"], [0.9, 0.2, 0.5])
    names.add(2, ["ab", "d"], [0.6, 0.4])
    counts = {"cd": (0.9 + 0.5) * resp[1], "ab": 0.2 * resp[1] + 0.6 * resp[2], "d": 0.4 * resp[2]}
    return names, resp, counts


def _g(model: NPYLM, resp: np.ndarray, counts: dict[str, np.ndarray], w: str) -> float:
    """G_0(w) = sum_l r_0l (T_lw + a p0(w)) / (T_l + a), by the formula (p0 from the dictionary path)."""
    totals = sum(counts.values())
    t_w = counts.get(w, np.zeros(2))
    return float(sum(resp[0, l] * (t_w[l] + A * model.chars.p0(w)) / (totals[l] + A) for l in range(2)))


def test_name_distribution_matches_its_formula_and_add_remove_restore_it():
    rng = np.random.default_rng(0)
    model = trained(rng)
    names, resp, counts = _names()
    s = "abcda"
    table = names.table(0, s, model.chars.substring_p0(s, 4), 4)
    for a in range(len(s)):
        for k in range(1, min(4, len(s) - a) + 1):
            w = s[a:a + k]
            assert table[a, k] == pytest.approx(_g(model, resp, counts, w), rel=1e-12)
            assert names.prob(0, w, model.chars.p0(w)) == pytest.approx(table[a, k], rel=1e-12)
    before = {w: row.copy() for w, row in names.counts.items()}
    names.remove(2)
    names.add(2, ["ab", "d"], [0.6, 0.4])
    assert all(np.allclose(names.counts[w], before[w]) for w in before)
    with pytest.raises(RuntimeError, match="already counted"):
        names.add(2, ["ab"], [0.5])
    with pytest.raises(ValueError, match="simplex"):
        ConceptNames(np.array([[0.5, 0.2]]))
    with pytest.raises(ValueError, match="weight"):
        ConceptNames(resp, weight=1.0)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_slot_sampling_matches_enumeration(power):
    """Draws follow p(seg) ∝ [prod_i ((1-λ) p(w_i | w_{i-1}) + λ G_0(w_i)) p(EOS | w_m)]^power over every
    segmentation (chi-square, 1e-3), and each word's slot probability is λG / (λG + (1-λ) p_LM)."""
    rng = np.random.default_rng(1)
    model = trained(rng)
    names, resp, counts = _names()
    s = "abcda"
    segs = list(segmentations(s, 4))
    log_p = []
    for words in segs:
        prev, total = BOS, 0.0
        for w in words:
            total += np.log((1 - LAMBDA) * model.words.prob(w, (prev,)) + LAMBDA * _g(model, resp, counts, w))
            prev = w
        log_p.append(power * (total + np.log(model.words.prob(EOS, (prev,)))))
    p = np.exp(np.array(log_p) - max(log_p))
    p /= p.sum()
    draws = [sample_slot(model, s, 0, names, rng, power) for _ in range(4000)]
    observed = np.array([sum(tuple(d[0]) == w for d in draws) for w in segs])
    keep = 4000 * p > 5
    assert stats.chisquare(np.append(observed[keep], observed[~keep].sum()),
                           np.append(4000 * p[keep], 4000 * p[~keep].sum())).pvalue > 1e-3
    words, rho = draws[0]
    prev = BOS
    for w, r in zip(words, rho):
        slot, lm = LAMBDA * _g(model, resp, counts, w), (1 - LAMBDA) * model.words.prob(w, (prev,))
        assert r == pytest.approx(slot / (slot + lm), rel=1e-10)
        prev = w


def test_a_slot_sweep_keeps_the_name_counts_equal_to_the_segmentation():
    rng = np.random.default_rng(3)
    utterances = ["abcd", "cdab", "ab", "abab"]
    model = NPYLM("abcd", max_word_length=4)
    segs: list[list[str]] = [[] for _ in utterances]
    names = ConceptNames(np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]), LAMBDA, A)
    for _ in range(3):
        gibbs_sweep(model, utterances, segs, rng, names=names)
    assert all("".join(w) == u for w, u in zip(segs, utterances))
    assert names.words == segs
    want: dict[str, np.ndarray] = {}
    for n, (words, rho) in enumerate(zip(segs, names.slots)):
        assert all(0 < r < 1 for r in rho)
        for w, r in zip(words, rho):
            want[w] = want.get(w, np.zeros(2)) + r * names.resp[n]
    assert all(np.allclose(names.counts.get(w, 0), c) for w, c in want.items())
    assert np.allclose(names.totals, sum(want.values()))
    again = ConceptNames.counted(names.resp, segs, names.slots, LAMBDA, A)  # rebuilt for the next update
    assert all(np.allclose(again.counts[w], c) for w, c in want.items()) and again.slots == names.slots
    first = ConceptNames.counted(names.resp, [segs[0], [], segs[2], segs[3]], None, LAMBDA, A)
    assert first.words[1] is None and first.slots[0] == [LAMBDA] * len(segs[0])


def test_slot_segmenter_relearns_under_a_concept_module():
    house = simulated_house(120, seed=1)
    seg = km.WordSegmenter(n_iter=3, sweeps_per_update=1, prior_mode="slot", relearn=True)
    seg.connect(km.Observation(house["utterance"]))
    gmm = km.GMM(6, max_iter=5).connect(km.Observation(house["position"]))
    spco = km.SpatialConcept(6, sweeps=3).connect(gmm, seg, km.Observation(house["view"]))
    graph = km.Graph([spco])
    graph.fit(n_iter=1, seed=0)
    assert seg.prior_over == "classes" and not seg.relearned_
    graph.fit(n_iter=1, seed=0)
    assert seg.relearned_ and seg.backward_in.value.shape == (120, 6)
    assert all("".join(w) == u for w, u in zip(seg.segmentation_, house["utterance"]))
    assert seg.forward_message.value.shape == (120, len(seg.vocabulary_))
    with pytest.raises(ValueError, match="prior_mode"):
        km.WordSegmenter(prior_mode="lift")
    with pytest.raises(ValueError, match="slot_weight"):
        km.WordSegmenter(slot_weight=0.0)
