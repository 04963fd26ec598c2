"""`ELBO` and `IWAE` on a linear-Gaussian model, where everything has a closed form.

p(z) = N(0, I_2), p(x|z) = N(Az + b, s^2 I_3): the marginal is p(x) = N(b, AA^T + s^2 I) (scipy
gives log p(x)) and the posterior is N(m(x), S) with S = (I + A^T A / s^2)^-1,
m(x) = S A^T (x - b) / s^2. With q = the exact posterior, log p(x,z) - log q(z|x) = log p(x) for
every z, so ELBO and IWAE equal log p(x) to rounding. With a wrong Gaussian q,
ELBO = log p(x) - KL[q || posterior] (closed form) and IWAE_k rises toward log p(x).
"""

import numpy as np
import pytest
import torch
from mc_reference import assert_mc_close, default_dtype, standard_error
from scipy import stats

from kizuna.distributions import Bernoulli, MultivariateNormal, Normal
from kizuna.losses import ELBO, IWAE

A = [[1.0, -0.5], [0.3, 2.0], [-1.2, 0.7]]
B = [0.5, -1.0, 2.0]
SIGMA = 0.6


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


class Likelihood(Normal):
    """p(x|z) = N(Az + b, s^2 I)."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.A, self.b = torch.tensor(A), torch.tensor(B)

    def forward(self, z):
        loc = z @ self.A.T + self.b
        return {"loc": loc, "scale": torch.full_like(loc, SIGMA)}


def posterior_params(x):
    a, b = torch.tensor(A), torch.tensor(B)
    cov = torch.linalg.inv(torch.eye(2) + a.T @ a / SIGMA**2)
    return (x - b) @ a @ cov / SIGMA**2, cov


class ExactPosterior(MultivariateNormal):
    """q(z|x) = p(z|x), full covariance."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")

    def forward(self, x):
        mean, cov = posterior_params(x)
        return {"loc": mean, "scale_tril": torch.linalg.cholesky(cov).expand(x.shape[0], 2, 2)}


class WrongPosterior(Normal):
    """A factorised q(z|x): shifted mean, inflated and decorrelated scale."""

    SHIFT, INFLATE = torch.tensor([0.4, -0.3]), 1.6

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")

    def forward(self, x):
        mean, cov = posterior_params(x)
        return {"loc": mean + self.SHIFT, "scale": (self.INFLATE * cov.diagonal().sqrt()).expand(x.shape[0], 2)}


def model():
    prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="p_prior")
    return Likelihood() * prior


def log_px(x):
    a, b = np.array(A), np.array(B)
    return torch.as_tensor(stats.multivariate_normal(b, a @ a.T + SIGMA**2 * np.eye(3)).logpdf(x.numpy()))


def data(n, seed):
    torch.manual_seed(seed)
    return model().sample(batch_n=n)["x"]


def kl_to_posterior(x, loc, scale):
    """KL[N(loc, diag scale^2) || N(m(x), S)] in closed form (numpy), per row."""
    mean, cov = (t.numpy() for t in posterior_params(x))
    prec = np.linalg.inv(cov)
    d = mean - loc.numpy()
    quad = np.einsum("ni,ij,nj->n", d, prec, d)
    trace = (np.diag(prec) * scale.numpy() ** 2).sum(1)
    return 0.5 * (trace + quad - 2 + np.linalg.slogdet(cov)[1] - 2 * np.log(scale.numpy()).sum(1))


def test_exact_posterior_log_weight_is_log_px_for_every_draw():
    x = data(7, seed=0)
    p, q = model(), ExactPosterior()
    torch.manual_seed(1)
    z = q.sample({"x": x}, sample_shape=(50,), return_all=False)["z"].reshape(350, 2)
    xs = x.repeat(50, 1)
    log_w = p.get_log_prob({"x": xs, "z": z}) - q.get_log_prob({"x": xs, "z": z})
    torch.testing.assert_close(log_w, log_px(x).repeat(50), atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss", ["elbo", "elbo_10", "iwae_1", "iwae_1000"])
def test_exact_posterior_makes_the_bounds_tight(loss):
    x = data(7, seed=0)
    p, q = model(), ExactPosterior()
    make = {"elbo": lambda: ELBO(p, q), "elbo_10": lambda: ELBO(p, q, sample_shape=(10,)),
            "iwae_1": lambda: IWAE(p, q, k=1), "iwae_1000": lambda: IWAE(p, q, k=1000)}
    torch.manual_seed(2)
    torch.testing.assert_close(make[loss]().eval({"x": x}), log_px(x), atol=1e-6, rtol=0)


def test_elbo_with_wrong_q_matches_log_px_minus_kl():
    x = data(5, seed=3)
    p, q = model(), WrongPosterior()
    exact = log_px(x) - torch.as_tensor(kl_to_posterior(x, **q.get_params({"x": x})))
    assert bool((exact < log_px(x) - 0.1).all())  # q is wrong enough for the gap to matter
    torch.manual_seed(4)
    n = 20_000
    elbo, draws = ELBO(p, q, sample_shape=(n,)).eval({"x": x}, return_dict=True)
    values = {"x": x.repeat(n, 1), "z": draws["z"].reshape(-1, 2)}
    log_w = (p.get_log_prob(values) - q.get_log_prob(values)).reshape(n, -1)
    torch.testing.assert_close(elbo, log_w.mean(0))
    assert_mc_close(elbo, exact, standard_error(log_w), what="ELBO vs log p(x) - KL")
    assert bool((elbo < log_px(x)).all())


def test_iwae_rises_toward_log_px_and_stays_below():
    """IWAE_k's gap to the exact log p(x) is below 0 (3 SE) for k = 1, 10, 100, 1000 and rises at each step by more
    than 3 standard errors of the paired difference (the same 8,000 rows: log p(x) cancels; the 100 -> 1000 gain,
    about Var(w)/(2k) ~ 0.005 here, at least 3.9 paired SE over 30 seeds). Ordering 100 and 1000 strictly on 500 rows,
    unpaired, failed on 6 of 60 seeds, and its 3-SE rises on 2 more; a bound capped at k = 100 fails here."""
    x = data(8000, seed=5)
    p, q = model(), WrongPosterior()
    torch.manual_seed(6)
    ks = (1, 10, 100, 1000)
    rows = [IWAE(p, q, k=k).eval({"x": x}) - log_px(x) for k in ks]  # per row, <= 0 in expectation
    gaps = [gap.mean().item() for gap in rows]
    for k, gap in zip(ks, rows):
        assert gap.mean().item() < 3 * standard_error(gap).item(), f"IWAE_{k} above log p(x): gaps {gaps}"
    for (k1, g1), (k2, g2) in zip(zip(ks, rows), zip(ks[1:], rows[1:])):
        rise, se = (g2 - g1).mean().item(), standard_error(g2 - g1).item()
        assert rise > 3 * se, f"IWAE_{k1} -> IWAE_{k2}: rise {rise}, paired SE {se}; gaps {gaps}"
    # IWAE_1 is the ELBO: in expectation log p(x) - KL
    q_params = q.get_params({"x": x})
    exact_elbo_gap = -kl_to_posterior(x, **q_params).mean()
    assert_mc_close(gaps[0], exact_elbo_gap, standard_error(rows[0]).item(), what="IWAE_1 vs ELBO")


def test_elbo_gradient_matches_closed_form():
    # q(z) = N(m, diag s^2) with m, s given per row: row i's gradient is one draw of the
    # estimator; d/dm ELBO = S^-1 (m(x) - m), d/ds ELBO = 1/s - diag(S^-1) s
    x = data(1, seed=7)
    mean, cov = posterior_params(x)
    prec = torch.linalg.inv(cov)
    n = 20_000
    loc = (mean + torch.tensor([0.4, -0.3])).expand(n, 2).clone().requires_grad_(True)
    scale = torch.tensor([[0.5, 0.2]]).expand(n, 2).clone().requires_grad_(True)
    q = Normal(var=["z"], cond_var=["m", "s"], loc="m", scale="s", name="q")
    torch.manual_seed(8)
    ELBO(model(), q).eval({"x": x.expand(n, 3), "m": loc, "s": scale}).sum().backward()
    expected_loc = (mean - loc.detach()[:1]) @ prec
    expected_scale = 1 / scale.detach()[:1] - prec.diagonal() * scale.detach()[:1]
    assert_mc_close(loc.grad.mean(0), expected_loc[0], standard_error(loc.grad), what="dELBO/dm")
    assert_mc_close(scale.grad.mean(0), expected_scale[0], standard_error(scale.grad), what="dELBO/ds")


class ShiftedLikelihood(Normal):
    """p(x|z, c) = N(Az + c, s^2 I): the offset is a variable, so each row can own a copy."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z", "c"], name="p")
        self.A = torch.tensor(A)

    def forward(self, z, c):
        loc = z @ self.A.T + c
        return {"loc": loc, "scale": torch.full_like(loc, SIGMA)}


@pytest.mark.parametrize("bound", ["elbo", "iwae_10"])
def test_model_gradient_with_exact_posterior_is_the_gradient_of_log_px(bound):
    # Fisher's identity: with q = p(z|x) held fixed, E[d/dc bound] = d/dc log p(x) =
    # (AA^T + s^2 I)^-1 (x - c) at c = b; each row's gradient is one draw of the estimator
    n = 5_000
    x = data(n, seed=9)
    offset = torch.tensor(B).expand(n, 3).clone().requires_grad_(True)
    prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="p_prior")
    p, q = ShiftedLikelihood() * prior, ExactPosterior()
    loss = ELBO(p, q) if bound == "elbo" else IWAE(p, q, k=10)
    torch.manual_seed(10)
    loss.eval({"x": x, "c": offset}).sum().backward()
    a = torch.tensor(A)
    expected = (x - torch.tensor(B)) @ torch.linalg.inv(a @ a.T + SIGMA**2 * torch.eye(3))
    error = offset.grad - expected
    assert_mc_close(error.mean(0), torch.zeros(3), standard_error(error), what=f"{bound} d/dc vs d/dc log p(x)")


def test_iwae_rejects_bad_arguments():
    p = model()
    with pytest.raises(ValueError, match="k >= 1"):
        IWAE(p, ExactPosterior(), k=0)
    with pytest.raises(ValueError, match="reparameterisable"):
        IWAE(p, Bernoulli(var=["z"], cond_var=["x"], probs="x", name="q"), k=5)
