"""LDA's input and weight checks (review of kizuna/modules/lda): a list holding one matrix, non-numeric weights."""

import re

import numpy as np
import pytest
import torch

from kizuna.modules import LDA, MLDA, LatentDirichletAllocation, MultimodalLDA

X = np.array([[1, 2, 0], [0, 1, 3], [2, 0, 1]])
ONE_MATRIX = ("LatentDirichletAllocation: X must be one count matrix (documents × vocabulary), not a list of {n}; LDA "
              "has one modality (MultimodalLDA takes a list, one matrix per modality)")


@pytest.mark.parametrize("wrap", [lambda x: [x], lambda x: (torch.as_tensor(x),), lambda x: [x.tolist()],
                                  lambda x: [x, x]])
def test_lda_given_a_list_of_matrices_says_it_takes_one_matrix(wrap):
    """``fit([X])`` said "got shape (1, 3, 3) ... Reshape your data with x.reshape(1, -1) for one sample"."""
    xs = wrap(X)
    message = ONE_MATRIX.format(n="1 matrix" if len(xs) == 1 else f"{len(xs)} matrices")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        LatentDirichletAllocation(2, max_iter=2).fit(xs)
    fitted = LatentDirichletAllocation(2, max_iter=2, random_state=0).fit(X)
    for method in (fitted.transform, fitted.predict, fitted.score):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            method(xs)


def test_lda_still_takes_one_matrix_as_an_array_a_tensor_or_nested_lists():
    a = LatentDirichletAllocation(2, max_iter=3, random_state=0).fit(X).transform(X)
    b = LatentDirichletAllocation(2, max_iter=3, random_state=0).fit(X.tolist()).transform(X.tolist())
    np.testing.assert_array_equal(a, b)
    assert LatentDirichletAllocation(2, max_iter=3, random_state=0).fit(torch.as_tensor(X)).transform(
        torch.as_tensor(X)).shape == (3, 2)


@pytest.mark.parametrize("bad", ["10", b"10", float("inf"), float("nan"), 0, -5.0, True, [10]])
def test_a_weight_that_is_not_a_positive_number_is_refused_by_name(bad):
    """``weight="10"`` raised a raw TypeError ("'>' not supported between 'str' and 'int'") in _rescaled."""
    message = f"weight must be a positive finite number, got {bad!r}"
    with pytest.raises(ValueError, match="^" + re.escape(f"LatentDirichletAllocation: {message}")):
        LatentDirichletAllocation(2, max_iter=2, weight=bad).fit(X)
    with pytest.raises(ValueError, match="^" + re.escape(f"LDA lda: {message}")):
        LDA(2, weight=bad, name="lda")  # the graph node refuses it when built
    with pytest.raises(ValueError, match="^" + re.escape(f"MultimodalLDA: weights[0] must be a positive finite "
                                                         f"number, got {bad!r}")):
        MultimodalLDA(2, weights=[bad, None], max_iter=2).fit([X, X])
    with pytest.raises(ValueError, match="^" + re.escape(f"MLDA m: weights[1] must be a positive finite number, "
                                                         f"got {bad!r}")):
        MLDA(2, weights=[None, bad], name="m")


@pytest.mark.parametrize("bad", ["10", 10, 2.5])
def test_weights_must_be_a_list_per_modality(bad):
    with pytest.raises(ValueError, match="^" + re.escape(f"MultimodalLDA: weights must be a list with one weight "
                                                         f"(tokens per sample) or None per modality, got {bad!r}")):
        MultimodalLDA(2, weights=bad, max_iter=2).fit([X])


def test_numeric_weights_of_every_kind_still_rescale():
    """Python and numpy numbers, in a list, tuple or array: each row rescaled to 30 tokens ("round")."""
    for weights in ([30, None], (30.0, None), [np.int64(30), None], np.array([30.0, 30.0])):
        model = MultimodalLDA(2, weights=weights, max_iter=2, random_state=0).fit([X, X])
        assert model.n_features_in_ == 6
    lda = LatentDirichletAllocation(2, weight=np.float32(30), max_iter=2, random_state=0).fit(X)
    assert lda.components_.shape == (2, 3)


def test_the_rescaling_refuses_a_non_numeric_weight_by_name():
    from kizuna.modules.lda.sampler import as_counts

    with pytest.raises(ValueError, match=r"^m: the weight must be positive and finite, got '10'$"):
        as_counts(X, "10", "m")
    assert as_counts(X, 6, "m").sum(1).tolist() == [6, 6, 6]
