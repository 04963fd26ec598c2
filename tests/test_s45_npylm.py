"""Stop 45, review H: the forward pass of NPYLM (and of the one-name model) under boosts whose product over a few
words leaves a float's range (``prior_mode="exact"`` at ``prior_weight=200``), a position where every word ending
there has boost 0, and the word-segmentation example's settings as usage errors.

Each forward pass is checked against enumerating every segmentation (`npylm_reference`)."""

import math

import numpy as np
import pytest
import torch
from example_loader import load_example
from npylm_reference import segmentations, trained
from scipy import stats
from test_segment_name import _enumerate, _model

from kizuna import modules as km
from kizuna.datasets import simulated_house
from kizuna.modules.npylm import NPYLM, LogBoost, gibbs_sweep
from kizuna.modules.npylm_name import name_backward, name_forward, name_table


def _logsumexp(log_p: np.ndarray) -> float:
    top = log_p.max()
    return float(top + np.log(np.exp(log_p - top).sum()))


def _enumerated(model, s: str, log_boost) -> tuple[list, np.ndarray]:
    """Every segmentation of ``s`` and :math:`\\log p(\\text{seg}, \\text{EOS}) + \\sum_w \\log \\text{boost}(w)`."""
    segs = list(segmentations(s, 4))
    return segs, np.array([model.log_prob(w) + sum(log_boost(x) for x in w) for w in segs])


def _check_draws(draws: list, segs: list, log_p: np.ndarray) -> None:
    """The draws follow exp(log_p) normalised (chi-square, 1e-3) and none has weight 0."""
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    n = len(draws)
    counts = np.array([sum(tuple(d) == w for d in draws) for w in segs])
    assert counts[p == 0].sum() == 0
    keep = n * p > 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(n * p[keep], n * p[~keep].sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def _viterbi(model, s: str, boost) -> tuple[str, ...]:
    table, eos = model.bigram_table(s, boost)
    return tuple(model._backward(s, model.forward(table, viterbi=True), table, eos, None))


def _lift(w: str) -> float:
    """Log boosts: e^700 for "a" (so the scales of rows a few symbols apart differ by e^2100) and a little for two
    other words; the segmentations of the rest of the string stay uncertain."""
    return {"a": 700.0, "cd": 3.0, "bc": -1.5}.get(w, 0.0)


def test_boosts_far_past_the_float_range_in_product_match_enumeration():
    """Boosts of e^700 on four words in a row: the draws, the Viterbi path and the total equal the enumeration's (the
    rescaling factor, a product of several boosts, overflowed: "no segmentation ... has positive probability")."""
    rng = np.random.default_rng(2)
    model = trained(rng)
    s = "aaaabcdb"
    boost = LogBoost(_lift)
    segs, log_p = _enumerated(model, s, _lift)
    _check_draws(model.sample(s, rng, n=3000, boost=boost), segs, log_p)
    assert _viterbi(model, s, boost) == segs[int(np.argmax(log_p))]
    assert model.log_evidence(s, boost) == pytest.approx(_logsumexp(log_p), rel=1e-13)


def test_a_position_where_every_word_ending_there_has_boost_0_is_skipped():
    """Every word ending after the "d" has boost 0: no segmentation cuts there (the forward row of no mass reset its
    scale to 0, and the next factor raised a raw OverflowError)."""
    rng = np.random.default_rng(3)
    model = trained(rng)
    s = "aaabcdabca"

    def log_boost(w: str) -> float:
        return -math.inf if w.endswith("d") else _lift(w)

    segs, log_p = _enumerated(model, s, log_boost)
    assert np.isfinite(log_p).sum() < len(segs)  # (some segmentations are ruled out)
    boost = LogBoost(log_boost)
    _check_draws(model.sample(s, rng, n=3000, boost=boost), segs, log_p)
    assert _viterbi(model, s, boost) == segs[int(np.argmax(log_p))]
    assert model.log_evidence(s, boost) == pytest.approx(_logsumexp(log_p), rel=1e-13)


def test_no_segmentation_of_positive_boost_names_the_position():
    """Every word ending at the end of "abcd" ends in "d": a ValueError naming them (it was "no segmentation of
    'abcd' has positive probability", blaming the data)."""
    model = trained(np.random.default_rng(4))
    boost = LogBoost(lambda w: -math.inf if w.endswith("d") else 0.0)
    with pytest.raises(ValueError, match=r"no segmentation of 'abcd' has positive weight under the boost: every word "
                                         r"ending at position 4 \('d', 'cd', 'bcd', 'abcd'\) has boost 0"):
        model.sample("abcd", np.random.default_rng(0), boost=boost)
    assert model.log_evidence("abcd", boost) == -math.inf


def test_a_boost_raised_past_the_float_range_is_named():
    """A boost of e^600 at power 2 (a temperature of 1/2) is e^1200: a ValueError naming the power (it was an
    infinite table, blamed on the data)."""
    model = trained(np.random.default_rng(5))
    boost = LogBoost(lambda w: 600.0 if w == "ab" else 0.0)
    with pytest.raises(ValueError, match=r"the boosts raised to the power 2.0 leave a float's range \(the largest "
                                         r"boost is 3.77\d*e\+260, to the power 2.0 exp\(1200\)"):
        model.sample("abcd", np.random.default_rng(0), boost=boost, power=2.0)


def test_name_forward_under_large_boosts_matches_enumeration():
    """The one-name model's transitions into every word "a" (language-model word or slot) multiplied by e^700: the
    total, the draws and the Viterbi path follow the enumeration with the boosts (the pass overflowed to NaN rows)."""
    rng = np.random.default_rng(6)
    model, slots = _model(rng)
    s = "aaaabcd"
    states, log_p = _enumerate(model, slots, s)
    log_p = log_p + np.array([sum(_lift(w) for w in words) for words, _ in states])
    x, eos = name_table(model, s, 0, slots)
    lift = np.array([[_lift(s[a:a + k]) if a + k <= len(s) else 0.0 for k in range(x.shape[1])]
                     for a in range(len(s))])
    x = x * np.exp(lift)[:, :, None, None, None]
    alpha, log_scale = name_forward(x)
    draws = [name_backward(s, alpha, x, eos, rng) for _ in range(3000)]
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    index = {(tuple(w), slot): i for i, (w, slot) in enumerate(states)}
    counts = np.bincount([index[(tuple(w), slot)] for w, slot in draws], minlength=len(states))
    keep = 3000 * p > 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(3000 * p[keep], 3000 * p[~keep].sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    best = name_backward(s, name_forward(x, viterbi=True)[0], x, eos, None)
    assert (tuple(best[0]), best[1]) == tuple(states[int(log_p.argmax())])
    total = math.log(float((alpha[len(s)] * eos).sum())) + log_scale[len(s)]
    assert total == pytest.approx(_logsumexp(log_p), rel=1e-13)


@pytest.mark.parametrize("log_boost", [200.0, 700.0])
def test_exact_prior_sweep_with_large_log_boosts(log_boost):
    """`gibbs_sweep(exact_prior=True)` with boosts e^200 and e^700 on "ab" and "c": every utterance spelled by them
    is cut into them (the most boosted words), the others spelled right (it raised "no segmentation ... has positive
    probability")."""
    rng = np.random.default_rng(0)
    model = NPYLM("abc", max_word_length=10, char_order=2)
    utts = ["".join(rng.choice(["ab", "c", "bca"], rng.integers(1, 6))) for _ in range(30)]
    seg = [[] for _ in utts]
    gibbs_sweep(model, utts, seg, rng)
    boosts = [LogBoost(lambda w: log_boost if w in ("ab", "c") else 0.0) for _ in utts]
    gibbs_sweep(model, utts, seg, rng, boosts=boosts, exact_prior=True)
    for s, words in zip(utts, seg):
        assert "".join(words) == s
        if not s.replace("ab", "").replace("c", ""):
            assert words == [w for w in s.replace("ab", " ab ").replace("c", " c ").split()]


def test_exact_prior_under_a_spatial_concept_at_prior_weight_200():
    """The reviewer's graph (60 utterances of the simulated house): lifts of e^300 and more run (it raised "no
    segmentation of 'w^tIzDIs' has positive probability")."""
    torch.manual_seed(0)
    house = simulated_house(60, seed=0)
    seg = km.WordSegmenter(n_iter=2, sweeps_per_update=1, prior_mode="exact", prior_weight=200.0, name="seg")
    spco = km.SpatialConcept(4, sweeps=2).connect(km.GMM(4, max_iter=2).connect(km.Observation(house["position"])),
                                                  seg.connect(km.Observation(house["utterance"])))
    km.Graph([spco]).fit(2, seed=0)
    q = seg.backward_in.value.double()
    assert (200.0 * (q.log() - q.mean(0, keepdim=True).log())).max() > 300
    assert ["".join(w) for w in seg.segmentation_] == seg.utterances_


@pytest.mark.parametrize(("argv", "message"), [
    (["--anneal", "nan"], "argument --anneal: invalid value 'nan': give a finite number > 0"),
    (["--anneal", "0"], "argument --anneal: invalid value '0': give a finite number > 0"),
    (["--max-word-length", "0"], "argument --max-word-length: invalid value 0: give a positive integer"),
    (["--max-word-length", "-1"], "argument --max-word-length: invalid value -1: give a positive integer"),
    (["--char-order", "0"], "argument --char-order: invalid value 0: give a positive integer"),
    (["--init-length", "0"], "argument --init-length: invalid value 0: give a positive integer"),
])
def test_word_segmentation_settings_are_usage_errors(argv, message, tmp_path, capsys):
    """Usage errors before the corpus is read (a missing --data is not what is reported); they were tracebacks from
    the library after the corpus had loaded (``--anneal`` only after the first fit)."""
    with pytest.raises(SystemExit) as exit_:
        load_example("word_segmentation").main([*argv, "--data", str(tmp_path / "nowhere.txt")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Brent corpus" not in err
