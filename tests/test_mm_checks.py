"""MarkovChain / MM: given parameters kept in the evidence's precision, integer evidence in float64, alpha checked
(review of kizuna/modules/mm/estimator.py), against closed forms."""

import math
import re

import numpy as np
import pytest
import torch

from kizuna.modules import MM, MarkovChain

X = np.eye(2)[[0, 1, 1]]  # the class path 0 -> 1 -> 1, certain


def test_transmat_and_startprob_given_as_lists_are_used_exactly():
    """Lists went through torch.as_tensor (float32) before float64: transmat_ held 0.30000001192092896 and the score
    was 1.3e-8 off the exact log(0.1 * 0.7 * 0.4)."""
    chain = MarkovChain(transmat=[[0.3, 0.7], [0.6, 0.4]], startprob=[0.1, 0.9], n_iter=0).fit(X)
    assert chain.transmat_.dtype == torch.float64 and chain.startprob_.dtype == torch.float64
    assert chain.transmat_.tolist() == [[0.3, 0.7], [0.6, 0.4]]
    assert chain.startprob_.tolist() == [0.1, 0.9]
    # p(path) = pi_0 A_01 A_11 with the one-hot evidence: the only path of nonzero probability
    assert chain.score(X) == pytest.approx(math.log(0.1 * 0.7 * 0.4), abs=1e-15, rel=0)
    assert chain.predict_proba(X).tolist() == X.tolist()


def test_mm_node_keeps_given_lists_exactly_too():
    mm = MM(transmat=[[0.3, 0.7], [0.6, 0.4]], startprob=[0.1, 0.9])
    p, a = mm._chain(2, torch.zeros(3, 2, dtype=torch.float64))
    assert a.tolist() == [[0.3, 0.7], [0.6, 0.4]] and p.tolist() == [0.1, 0.9]


def _closed_form(labels, k, alpha):
    """With certain (one-hot) evidence every expected count is the observed one: A_ij = (n_ij + a) / (n_i + K a),
    pi_k = ([k = c_0] + a) / (1 + K a), whatever the number of iterations; the score is log p(the path)."""
    n = np.zeros((k, k))
    np.add.at(n, (labels[:-1], labels[1:]), 1.0)
    a = (n + alpha) / (n.sum(1, keepdims=True) + k * alpha)
    p = (np.eye(k)[labels[0]] + alpha) / (1 + k * alpha)
    score = math.log(p[labels[0]]) + sum(math.log(a[i, j]) for i, j in zip(labels[:-1], labels[1:]))
    return p, a, score


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, bool])
def test_integer_one_hot_evidence_is_float64(dtype):
    """np.eye(2, dtype=np.int64)[labels] was computed in float32 (float rows in float64): estimates 1e-7 and the score
    5.6e-6 off."""
    labels = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 0] * 5)
    p, a, score = _closed_form(labels, 2, 1.0)
    x = np.eye(2, dtype=dtype)[labels]
    for evidence in (x, torch.from_numpy(x), x.tolist()):
        chain = MarkovChain().fit(evidence)
        assert chain.transmat_.dtype == torch.float64
        np.testing.assert_allclose(chain.transmat_.numpy(), a, rtol=0, atol=1e-15)
        np.testing.assert_allclose(chain.startprob_.numpy(), p, rtol=0, atol=1e-15)
        assert chain.score(evidence) == pytest.approx(score, rel=1e-14)


def test_float32_evidence_keeps_its_precision():
    chain = MarkovChain().fit(np.eye(2, dtype=np.float32)[[0, 1, 1, 0]])
    assert chain.transmat_.dtype == torch.float32


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0.0, -1.0, "1", True, None, [1.0]])
def test_alpha_must_be_a_finite_number_above_zero(bad):
    """alpha=inf was accepted and then failed as "no path of nonzero probability"; alpha="1" raised a raw TypeError."""
    message = re.escape(f"alpha must be a positive finite number, got {bad!r}")
    with pytest.raises(ValueError, match="^MarkovChain: " + message):
        MarkovChain(alpha=bad).fit(X)
    with pytest.raises(ValueError, match="^MM chain: " + message):
        MM(alpha=bad, name="chain")


@pytest.mark.parametrize("good", [1e-10, 2, np.float64(0.5), np.float32(3.0), np.int64(1)])
def test_alpha_accepts_real_numbers(good):
    MarkovChain(alpha=good, n_iter=1).fit(X)
    MM(alpha=good)
