"""`anomaly_score` on the linear-Gaussian model of test_bounds, where log p(x) is exact (scipy).

With q = p(z|x) every importance weight equals p(x), so both scores are -log p(x) to rounding.
With a wrong Gaussian q the ELBO score estimates -log p(x) + KL[q || p(z|x)] (closed form
from torch.distributions) and the IWAE score approaches -log p(x) as k grows.
"""

import numpy as np
import pytest
import torch
from mc_reference import assert_mc_close, default_dtype
from scipy import stats
from sklearn.metrics import roc_auc_score
from test_bounds import SIGMA, A, B, ExactPosterior, WrongPosterior, log_px, model, posterior_params
from torch import distributions as D

from kizuna.distributions import Normal
from kizuna.inference import anomaly_score


@pytest.fixture(autouse=True)
def _float64_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with default_dtype(torch.float64):
        yield
    torch.set_num_threads(threads)


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g) * 2


@pytest.mark.parametrize("method", ["iwae", "elbo"])
@pytest.mark.parametrize("k, batch_size, k_chunk", [(1, 100, 100), (9, 7, 4), (50, 16, 50)])
def test_exact_posterior_scores_are_the_exact_negative_log_likelihood(method, k, batch_size, k_chunk):
    x = _data()
    score = anomaly_score(model(), ExactPosterior(), {"x": x}, method=method, k=k, batch_size=batch_size,
                          k_chunk=k_chunk)
    assert score.shape == (40,) and not score.requires_grad
    torch.testing.assert_close(score, -log_px(x), rtol=0, atol=1e-9)


def test_elbo_score_is_the_nll_plus_the_posterior_gap():
    x = _data(8)
    torch.manual_seed(0)
    score = anomaly_score(model(), WrongPosterior(), {"x": x}, method="elbo", k=3000, k_chunk=700)
    # KL[q(z|x) || p(z|x)]: both Gaussian, the gap does not depend on x here
    q = WrongPosterior().get_dist({"x": x})
    mean, cov = posterior_params(x)
    gap = D.kl_divergence(D.MultivariateNormal(q.mean, torch.diag_embed(q.variance)),
                          D.MultivariateNormal(mean, cov.expand(8, 2, 2)))
    # the standard error of a mean of 3000 single-draw scores, from 400 single draws per row
    single = anomaly_score(model(), WrongPosterior(), {"x": x.repeat(400, 1)}, method="elbo", k=1)
    se = single.reshape(400, 8).std(0) / 3000**0.5
    assert_mc_close(score, -log_px(x) + gap, se, what="ELBO score")


def test_iwae_score_closes_the_gap_and_ranks_like_the_exact_likelihood():
    torch.manual_seed(3)
    x = model().sample(batch_n=200)["x"]  # draws of p(x); the last 50 pushed off the model's plane
    normal = torch.linalg.cross(torch.tensor(A)[:, 0], torch.tensor(A)[:, 1])
    x[150:] += 2.0 * normal / normal.norm()  # 2.0 / SIGMA = 3.3 noise standard deviations
    exact = -log_px(x)
    torch.manual_seed(1)
    iwae = anomaly_score(model(), WrongPosterior(), {"x": x}, k=1000, k_chunk=250)
    elbo = anomaly_score(model(), WrongPosterior(), {"x": x}, method="elbo", k=20)
    # IWAE_k <= log p(x) in expectation, so the score is above -log p(x), and close with k = 1000
    gap = (iwae - exact).mean().item()
    assert -0.01 < gap < 0.02
    assert (elbo - exact).mean().item() > 0.3  # the ELBO score keeps the posterior gap
    assert stats.spearmanr(iwae.numpy(), exact.numpy()).statistic > 0.999
    labels = np.r_[np.zeros(150), np.ones(50)]
    auc, auc_exact = roc_auc_score(labels, iwae.numpy()), roc_auc_score(labels, exact.numpy())
    assert auc > 0.9 and abs(auc - auc_exact) < 0.005


def test_bad_arguments_are_named():
    x = {"x": _data(4)}
    with pytest.raises(ValueError, match="method must be one of iwae, elbo"):
        anomaly_score(model(), ExactPosterior(), x, method="recon")
    for name in ("k", "batch_size", "k_chunk"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            anomaly_score(model(), ExactPosterior(), x, **{name: 0})
        with pytest.raises(ValueError, match=f"{name} must be a positive integer, got True"):
            anomaly_score(model(), ExactPosterior(), x, **{name: True})
    with pytest.raises(ValueError, match="needs x in x_dict, but was given y"):
        anomaly_score(model(), ExactPosterior(), {"y": _data(4)})


def test_modalities_with_different_batch_sizes_are_named():
    joint = model() * Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0)
    with pytest.raises(ValueError, match="disagree on the batch size .x has 4, y has 3 rows"):
        anomaly_score(joint, ExactPosterior(), {"x": _data(4), "y": torch.zeros(3, 2)})


class NetworkPosterior(ExactPosterior):
    """The exact posterior with its mean from a float64 nn.Linear: a model whose parameters are float64."""

    def __init__(self):
        super().__init__()
        a, b = torch.as_tensor(A, dtype=torch.float64), torch.as_tensor(B, dtype=torch.float64)
        m = a @ posterior_params(torch.zeros(1, 3))[1] / SIGMA**2  # mean = (x - b) @ m
        self.net = torch.nn.Linear(3, 2, dtype=torch.float64)
        with torch.no_grad():
            self.net.weight.copy_(m.T)
            self.net.bias.copy_(-b @ m)

    def forward(self, x):
        cov = posterior_params(x[:1])[1]
        return {"loc": self.net(x), "scale_tril": torch.linalg.cholesky(cov).expand(x.shape[0], 2, 2)}


@pytest.mark.parametrize("method", ["iwae", "elbo"])
def test_float32_data_is_scored_in_the_dtype_of_a_float64_model(method):
    """Batches go to the parameters' dtype and device (float32 data made the float64 network raise 'mat1 and mat2
    must have the same dtype'); the score is scipy's exact -log p(x) of the float32 values."""
    x32 = _data(10).float()
    score = anomaly_score(model(), NetworkPosterior(), {"x": x32}, method=method, k=4, batch_size=3)
    assert score.dtype == torch.float64
    torch.testing.assert_close(score, -log_px(x32.double()), rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", ["iwae", "elbo"])
def test_empty_and_non_finite_data_are_named(method):
    """No rows: 'the data has no rows' for both methods (the ELBO raised torch.cat's 'expected a non-empty list');
    a NaN is named by row and column (the ELBO blamed the encoder: 'parameter loc ... is not finite')."""
    with pytest.raises(ValueError, match=r"anomaly_score: the data has no rows \(x has shape \(0, 3\)\)"):
        anomaly_score(model(), ExactPosterior(), {"x": torch.zeros(0, 3)}, method=method, k=2)
    x = _data(8)
    x[6, 1] = float("nan")
    with pytest.raises(ValueError, match=r"the data\['x'\] holds nan at row 6, column 1"):
        anomaly_score(model(), WrongPosterior(), {"x": x}, method=method, k=2, batch_size=4)


def test_log_likelihood_takes_numpy_arrays_and_lists_as_fit_does():
    """A dict of numpy arrays or lists was said to have no rows; the same numbers as for tensors, same seed."""
    from kizuna.distributions import Normal
    from kizuna.metrics import log_likelihood

    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="p_prior")
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    x = torch.linspace(-2.0, 2.0, 7).unsqueeze(1)
    torch.manual_seed(0)
    expected = log_likelihood(lik * prior, q, {"x": x}, k=50)
    for given in (x.numpy(), x.tolist()):
        torch.manual_seed(0)
        torch.testing.assert_close(log_likelihood(lik * prior, q, {"x": given}, k=50), expected)


@pytest.mark.parametrize("method", ["iwae", "elbo"])
def test_both_methods_ignore_other_entries_and_take_numpy(method):
    """Only the model's variables are read: an entry of other rows (ids) or with NaN (a label the model never reads)
    failed the "iwae" path only (or both); numpy arrays are taken as `log_likelihood` takes them (they were refused).
    With the exact posterior both scores are -log p(x) (scipy)."""
    x = _data(12)
    exact = -log_px(x)
    extra = {"ids": torch.arange(7), "label": torch.full((12,), float("nan"))}
    for data in ({"x": x, **extra}, {"x": x.numpy()}, {"x": x.tolist()}):
        score = anomaly_score(model(), ExactPosterior(), data, method=method, k=3)
        torch.testing.assert_close(torch.as_tensor(score), exact, rtol=0, atol=1e-9)
