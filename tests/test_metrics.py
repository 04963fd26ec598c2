"""`kizuna.metrics.log_likelihood` on the linear-Gaussian model of test_bounds (closed form)."""

import pytest
import torch
from conftest import torch_objects
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



def _bernoulli_vae(d: int = 784, z: int = 4):
    from torch import nn

    from kizuna.distributions import Bernoulli, Normal

    class Enc(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.net = nn.Linear(d, 2 * z)

        def forward(self, x):
            loc, s = self.net(x).chunk(2, -1)
            return {"loc": loc, "scale": nn.functional.softplus(s) + 0.1}

    class Dec(Bernoulli):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.net = nn.Linear(z, d)

        def forward(self, z):
            return {"probs": torch.sigmoid(4 * self.net(z))}  # saturated entries exercise the clamp

    torch.manual_seed(3)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[z], name="p_prior")
    return Dec() * prior, Enc()


@pytest.mark.parametrize("validate", [None, False])
def test_unchecked_estimates_equal_the_checked_ones_draw_for_draw(validate):
    """By default one checked evaluation (on a fork of the random stream) precedes an unchecked
    estimate, whose Bernoulli kernel scores the 3 x 700 rows in blocks: the same draws and, up to
    rounding, the same figures as torch.distributions' objects on every evaluation (`torch_objects`, checked)."""
    p, q = _bernoulli_vae()
    x = {"x": (torch.rand(7, 784, generator=torch.Generator().manual_seed(0)) > 0.5).double()}
    torch.manual_seed(11)
    with torch_objects(p, q):
        checked = log_likelihood(p, q, x, k=2100, batch_size=3, k_chunk=700, validate=True)
    torch.manual_seed(11)
    fast = log_likelihood(p, q, x, k=2100, batch_size=3, k_chunk=700, validate=validate)
    torch.testing.assert_close(fast, checked, rtol=1e-12, atol=1e-9)


def test_the_default_check_names_a_value_outside_the_support():
    p, q = _bernoulli_vae(d=5)
    with pytest.raises(ValueError, match="must lie in"):
        log_likelihood(p, q, {"x": torch.full((4, 5), 2.0)}, k=3)
    # unchecked, a value outside [0, 1] gives a number (the binary cross-entropy extends to it)
    assert log_likelihood(p, q, {"x": torch.full((4, 5), 0.5)}, k=3, validate=False).shape == (4,)


def test_large_batches_scored_without_gradients_keep_a_familys_own_masking():
    """`FactorizedBernoulli` counts only the entries equal to one; scored in blocks without gradients
    (more than 2^20 entries) it must still, against torch's Bernoulli summed over those entries."""
    from kizuna.distributions import FactorizedBernoulli, validation

    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(1400, 784, generator=gen).clamp(0.01, 0.99)
    x = (torch.rand(1400, 784, generator=gen) > 0.5).double()
    p = FactorizedBernoulli(var=["x"], cond_var=["p"], probs="p")
    reference = (torch.distributions.Bernoulli(probs=probs).log_prob(x) * (x != 0)).sum(-1)
    with torch.no_grad(), validation(False):
        torch.testing.assert_close(p.get_log_prob({"x": x, "p": probs}), reference)


def test_log_likelihood_keeps_float64_data_of_a_model_without_tensors() -> None:
    """A model whose networks hold no parameter or buffer (parameters computed in float64 by its forwards) had its
    float64 data rounded to the default float32: estimates 3e-8 off the closed form, reported as float64. With the
    exact posterior as q every importance estimate is exact: log N(x; 0, 1 + S^2)."""
    import math

    import numpy as np
    from scipy import stats as st

    from kizuna.distributions import Normal
    from kizuna.inference import anomaly_score
    from kizuna.metrics import log_likelihood

    d, s = 3, 0.7

    class Post(Normal):
        def __init__(self):
            super().__init__(var=["z"], cond_var=["x"], name="q")

        def forward(self, x):
            return {"loc": x / (1 + s**2), "scale": torch.full_like(x, math.sqrt(s**2 / (1 + s**2)))}

    class Lik(Normal):
        def __init__(self):
            super().__init__(var=["x"], cond_var=["z"], name="p")

        def forward(self, z):
            return {"loc": z, "scale": torch.full_like(z, s)}

    class Prior(Normal):
        def __init__(self):
            super().__init__(var=["z"], name="p_prior", features_shape=[d])

        def forward(self):
            return {"loc": torch.zeros(d, dtype=torch.float64), "scale": torch.ones(d, dtype=torch.float64)}

    x = torch.tensor([[0.31, -1.7, 2.2], [1.234567, 0.1, 0.2]], dtype=torch.float64)
    exact = st.norm(0, math.sqrt(1 + s**2)).logpdf(x.numpy()).sum(1)
    for got in (log_likelihood(Lik() * Prior(), Post(), {"x": x}, k=4), -anomaly_score(Lik() * Prior(), Post(),
                                                                                         {"x": x}, k=4)):
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), exact, rtol=1e-14)
