"""`kizuna.metrics.log_likelihood` on the linear-Gaussian model of test_bounds (closed form)."""

import pytest
import torch
from mc_reference import default_dtype
from test_bounds import ExactPosterior, WrongPosterior, log_px, model

from kizuna.metrics import log_likelihood


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


def _data(n=37):
    torch.manual_seed(0)
    return {"x": torch.randn(n, 3) * 2}


def test_exact_posterior_gives_the_exact_log_marginal_whatever_the_chunking():
    x = _data()
    exact = log_px(x["x"])
    # with q = p(z|x) every importance weight equals p(x): chunks over data and over k must not matter
    for k, batch_size, k_chunk in [(1, 100, 500), (7, 5, 3), (64, 16, 64)]:
        est = log_likelihood(model(), ExactPosterior(), x, k=k, batch_size=batch_size, k_chunk=k_chunk)
        assert est.shape == (37,)
        torch.testing.assert_close(est, exact, rtol=0, atol=1e-9)


def test_wrong_posterior_estimate_approaches_the_exact_value_with_k():
    x = _data(200)
    exact = log_px(x["x"])
    torch.manual_seed(1)
    gap_small = (exact - log_likelihood(model(), WrongPosterior(), x, k=2, k_chunk=1)).mean().item()
    gap_large = (exact - log_likelihood(model(), WrongPosterior(), x, k=2000, k_chunk=256)).mean().item()
    # Jensen: the estimate is below log p(x) on average; with k=2000 the gap all but closes
    assert gap_small > 0.5
    assert 0 <= gap_large + 0.01 and gap_large < 0.02


def test_missing_variable_is_named():
    with pytest.raises(ValueError, match="needs x"):
        log_likelihood(model(), ExactPosterior(), {"y": torch.zeros(2, 3)}, k=2)

