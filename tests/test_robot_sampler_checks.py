"""Entry checks of the robot modules' low-level samplers: `gibbs_sweep`, `ConceptSampler`, `name_viterbi`."""

import numpy as np
import pytest

from kizuna.modules.npylm import NPYLM, gibbs_sweep
from kizuna.modules.npylm_name import NameSlots, name_viterbi
from kizuna.modules.npylm_slot import ConceptNames
from kizuna.modules.spatial_concept_gibbs import ConceptSampler, FixedPositions
from kizuna.robot_demo import main as demo_main


def _fitted(utterances, seed=0):
    """A model holding one sweep over ``utterances`` and their segmentations."""
    rng = np.random.default_rng(seed)
    model, segs = NPYLM("abc", 3), [[] for _ in utterances]
    gibbs_sweep(model, utterances, segs, rng)
    return model, segs, rng


# ---------------------------------------------------------------------- gibbs_sweep
@pytest.mark.parametrize("n_segs, pattern", [(1, r"2 utterances but 1 segmentations \(utterance 1 has none\)"),
                                             (3, r"2 utterances but 3 segmentations \(segmentations\[2\] has no")])
def test_gibbs_sweep_segmentations_one_per_utterance(n_segs, pattern):
    model, segs = NPYLM("abc", 3), [[] for _ in range(n_segs)]
    with pytest.raises(ValueError, match=pattern):  # 1: IndexError, 3: the third ignored
        gibbs_sweep(model, ["ab", "ba"], segs, np.random.default_rng(0))
    assert segs == [[] for _ in range(n_segs)] and model.words.restaurants == {}  # refused before any draw


def test_gibbs_sweep_boosts_one_per_utterance():
    with pytest.raises(ValueError, match=r"gibbs_sweep: 2 utterances but 1 boosts \(utterance 1 has none\)"):
        gibbs_sweep(NPYLM("abc", 3), ["ab", "ba"], [[], []], np.random.default_rng(0), boosts=[None])


def test_gibbs_sweep_names_one_row_per_utterance():
    names = ConceptNames(np.ones((1, 1)))
    with pytest.raises(ValueError, match=r"2 utterances but 1 names \(rows of its resp\)"):
        gibbs_sweep(NPYLM("abc", 3), ["ab", "ba"], [[], []], np.random.default_rng(0), names=names)


def test_gibbs_sweep_segmentation_must_spell_its_utterance():
    rng = np.random.default_rng(0)
    model = NPYLM("abc", 3)
    model.add_sentence(["ab"], rng)  # the model holds ["ab"], but the utterance is "abc"
    held, segs = model.state(), [["ab"]]
    with pytest.raises(ValueError, match=r"segmentation 0 \['ab'\] does not spell its utterance 'abc' \(it spells "
                                         r"'ab'\)"):  # it was removed and replaced by a segmentation of "abc"
        gibbs_sweep(model, ["abc"], segs, rng)
    assert model.state() == held and segs == [["ab"]]  # nothing moved


def test_gibbs_sweep_valid_input_still_sweeps():
    """Guards the existing behaviour: matching arguments sweep, and every segmentation spells its utterance."""
    utterances = ["abcab", "cab", "ab"]
    model, segs, rng = _fitted(utterances)
    gibbs_sweep(model, utterances, segs, rng, boosts=[None, lambda w: 2.0, None], n_candidates=3)
    assert ["".join(s) for s in segs] == utterances
    # the model holds one sentence per utterance: one customer per utterance after the begin-of-sentence
    assert model.words.restaurants[model.words._context(("\x02",))].c == len(utterances)


# ---------------------------------------------------------------------- ConceptSampler
def _sampler(**kw):
    args = dict(positions=FixedPositions(np.zeros((5, 2))), counts=[np.ones((5, 3))], n_concepts=3, alpha=1.0,
                gamma=0.1, betas=[0.5], c=np.zeros(5, int), i=np.zeros(5, int))
    args.update(kw)
    return ConceptSampler(**args)


@pytest.mark.parametrize("arg, value, name", [
    ("alpha", -1.0, "alpha"), ("alpha", float("nan"), "alpha"),
    ("gamma", 0.0, "gamma"), ("gamma", float("inf"), "gamma"),
    ("betas", [-0.5], r"betas\[0\]"), ("betas", [float("nan")], r"betas\[0\]")])
def test_concept_sampler_concentrations_positive_finite(arg, value, name):
    with pytest.raises(ValueError, match=rf"ConceptSampler: {name} must be a positive finite number, got"):
        _sampler(**{arg: value})  # alpha = -1 gave NaN conditionals, sampled silently


def test_concept_sampler_n_concepts():
    with pytest.raises(ValueError, match=r"ConceptSampler: n_concepts must be an integer >= 1, got 0"):
        _sampler(n_concepts=0, c=np.zeros(5, int))


@pytest.mark.parametrize("rows", [4, 6])
def test_concept_sampler_counts_rows_match_positions(rows):
    with pytest.raises(ValueError, match=rf"counts\[0\] has shape \({rows}, 3\), expected N×V with N = 5 rows"):
        _sampler(counts=[np.ones((rows, 3))])  # numpy: "array is not broadcastable to correct shape"


def test_concept_sampler_counts_finite_non_negative():
    y = np.ones((5, 3))
    y[2, 1] = -1.0
    with pytest.raises(ValueError, match=r"counts\[0\] must be finite and non-negative, got -1.0 at row 2, column 1"):
        _sampler(counts=[y])


@pytest.mark.parametrize("arg, n", [("c", 4), ("i", 6)])
def test_concept_sampler_labels_one_per_event(arg, n):
    with pytest.raises(ValueError, match=rf"ConceptSampler: {arg} has shape \({n},\), expected \(5,\)"):
        _sampler(**{arg: np.zeros(n, int)})


@pytest.mark.parametrize("arg, labels, pattern", [
    ("c", [0, 0, 3, 0, 0], r"c\[2\] = 3 is out of range 0..2 \(n_concepts = 3\)"),  # IndexError
    ("c", [0, -1, 0, 0, 0], r"c\[1\] = -1 is out of range 0..2"),  # counted silently in the last concept
    ("i", [0, 0, 0, 0, 2], r"i\[4\] = 2 is out of range 0..1 \(position components = 2\)")])
def test_concept_sampler_labels_in_range(arg, labels, pattern):
    with pytest.raises(ValueError, match=pattern):
        _sampler(**{arg: np.array(labels)})


def test_fixed_positions_two_dimensional():
    with pytest.raises(ValueError, match=r"FixedPositions: log_lik is N×K .* got shape \(5,\)"):
        FixedPositions(np.zeros(5))


def test_concept_sampler_valid_counts_by_hand():
    """Guards the existing behaviour: the counts of a valid start, computed by hand."""
    y = np.arange(15.0).reshape(5, 3)
    c, i = np.array([0, 2, 2, 1, 0]), np.array([1, 0, 1, 1, 0])
    s = _sampler(counts=[y], c=c, i=i)
    assert s.state.n_l.tolist() == [2, 1, 2]
    assert s.state.n_lk.tolist() == [[1, 1], [0, 1], [1, 1]]
    assert s.state.sums[0].tolist() == [(y[0] + y[4]).tolist(), y[3].tolist(), (y[1] + y[2]).tolist()]


# ---------------------------------------------------------------------- name_viterbi
@pytest.mark.parametrize("n, pattern", [(5, r"name_viterbi: n = 5 but the slots hold 2 utterances .* n is in 0..1"),
                                        (-1, r"name_viterbi: n must be an integer >= 0, got -1")])
def test_name_viterbi_n_is_a_row_of_the_slots(n, pattern):
    slots = NameSlots(np.ones((2, 1)))
    with pytest.raises(ValueError, match=pattern):  # 5: IndexError; -1 read the last row
        name_viterbi(NPYLM("abc\x04", 3), "abc", slots, n)


def test_name_viterbi_valid_n():
    """Guards the existing behaviour: a valid row gives a segmentation of the utterance."""
    words, slot = name_viterbi(NPYLM("abc\x04", 3), "abc", NameSlots(np.ones((2, 1))), 1)
    assert "".join(words) == "abc" and (slot is None or 0 <= slot < len(words))


def test_sample_name_and_evidence_check_n_too():
    """`sample_name` and `name_log_evidence` go through the same table as `name_viterbi`: the same check."""
    from kizuna.modules.npylm_name import name_log_evidence, sample_name

    slots = NameSlots(np.ones((2, 1)))
    with pytest.raises(ValueError, match=r"sample_name: n = 2 but the slots hold 2 utterances"):
        sample_name(NPYLM("abc\x04", 3), "abc", 2, slots, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"name_log_evidence: n must be an integer >= 0, got -1"):
        name_log_evidence(NPYLM("abc\x04", 3), "abc", -1, slots)


def test_name_sweep_needs_one_row_per_utterance():
    """Three utterances against slots of two rows: named before any utterance is redrawn (it was an IndexError
    mid-sweep)."""
    from kizuna.modules.npylm_name import name_sweep

    segs = [["abc"], ["ab", "c"], ["a", "bc"]]
    kept = [list(w) for w in segs]
    with pytest.raises(ValueError, match=r"name_sweep: 3 utterances, 3 segmentations and 2 rows"):
        name_sweep(NPYLM("abc\x04", 3), ["abc", "abc", "abc"], segs, NameSlots(np.ones((2, 1))),
                   np.random.default_rng(0))
    assert segs == kept


# ---------------------------------------------------------------------- robot_demo
def test_demo_main_docstring_names_quick():
    assert "--quick" in demo_main.__doc__


def test_fractional_labels_are_refused_and_whole_floats_taken():
    """A fractional concept label (2.7 was truncated to 2, silently) is named; whole numbers given as floats are the
    integers they hold (the counts by concept are those of the integer labels)."""
    with pytest.raises(ValueError, match=r"ConceptSampler: c must be integer labels, got 2.7 at index 1"):
        _sampler(c=np.array([0.0, 2.7, 1.0, 0.0, 0.0]))
    as_floats = _sampler(c=np.array([0.0, 2.0, 1.0, 0.0, 2.0]))
    as_ints = _sampler(c=np.array([0, 2, 1, 0, 2]))
    assert as_floats.state.n_l.tolist() == as_ints.state.n_l.tolist() == [2, 1, 2]


def test_gaussian_positions_check_their_components():
    """`GaussianPositions`' initial components: one per position, within the prior's K (a z of other length was a raw
    torch error; one out of range, an IndexError deep in index_add_)."""
    import torch

    from kizuna.modules.gmm.normal_wishart import NormalWishart
    from kizuna.modules.spatial_concept_gibbs import GaussianPositions

    k, d = 2, 2
    prior = NormalWishart(m=torch.zeros(k, d, dtype=torch.float64), kappa=torch.ones(k, dtype=torch.float64),
                          nu=torch.full((k,), 3.0, dtype=torch.float64),
                          scale=torch.eye(d, dtype=torch.float64).expand(k, d, d).clone())
    x = np.random.default_rng(0).normal(size=(4, d))
    with pytest.raises(ValueError, match=r"GaussianPositions: z has shape \(3,\), expected \(4,\)"):
        GaussianPositions(x, prior, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match=r"GaussianPositions: z\[2\] = 2 is out of range 0..1 \(components = 2\)"):
        GaussianPositions(x, prior, np.array([0, 1, 2, 0]))
    g = GaussianPositions(x, prior, np.array([0, 1, 1, 0]))
    assert g.count.tolist() == [2.0, 2.0]
    np.testing.assert_allclose(g.sum.numpy(), np.stack([x[[0, 3]].sum(0), x[[1, 2]].sum(0)]))
