"""`MMD` and `WassersteinDistance`: against numpy on the same draws, and closed forms."""

import math

import numpy as np
import pytest
import torch
from mc_reference import assert_mc_close, default_dtype, standard_error
from torch import nn

from kizuna.distributions import Deterministic, Normal
from kizuna.losses import MMD, WassersteinDistance


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


def _unit_normal(cond, name):
    """N(loc = the conditioning variable, I): the batch size comes from the data, as with q(z|x)."""
    return Normal(var=["z"], cond_var=[cond], loc=cond, scale=1.0, name=name)


def _same_draws(p, q, x, seed):
    """The draws a loss makes when evaluated right after ``torch.manual_seed(seed)``: p's, then q's."""
    torch.manual_seed(seed)
    xs = p.sample(x, reparam=True, return_all=False)["z"]
    return xs, q.sample(x, reparam=True, return_all=False)["z"]


def mmd_numpy(x, y, kernel, sigma_sqr):
    x, y = x.reshape(len(x), -1).numpy(), y.reshape(len(y), -1).numpy()

    def k(u, v):
        d = ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1)
        return np.exp(-d / sigma_sqr) if kernel == "gaussian" else sigma_sqr / (sigma_sqr + d)

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


@pytest.mark.parametrize("kernel", ["gaussian", "inv-multiquadratic"])
@pytest.mark.parametrize("sigma_sqr", [None, 0.7])
@pytest.mark.parametrize("features", [(3,), (2, 2)])
def test_mmd_matches_numpy_on_the_same_draws(kernel, sigma_sqr, features):
    p, q = _unit_normal("m", "p"), _unit_normal("n", "q")
    x = {"m": torch.randn(300, *features), "n": torch.randn(300, *features) + 0.5}
    torch.manual_seed(0)
    value = MMD(p, q, kernel=kernel, sigma_sqr=sigma_sqr).eval(x)
    xs, ys = _same_draws(p, q, x, seed=0)
    bandwidth = sigma_sqr if sigma_sqr is not None else 2.0 * math.prod(features)  # default: twice the dimension
    np.testing.assert_allclose(value.item(), mmd_numpy(xs, ys, kernel, bandwidth), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kernel", ["gaussian", "inv-multiquadratic"])
def test_mmd_in_float32_far_from_the_origin_matches_float64(kernel):
    """torch.cdist's matrix-product form cancels for rows far from the origin (64 float32 rows at 3,000: 0.194
    against 0.220, the diagonal's k(x, x) = 1 as 0.37); the distances are taken after centring."""
    g = torch.Generator().manual_seed(0)
    m = (3000.0 + torch.randn(64, 2, generator=g, dtype=torch.float64)).float()
    n = (3000.5 + torch.randn(64, 2, generator=g, dtype=torch.float64)).float()
    p = Normal(var=["z"], cond_var=["m"], loc="m", scale=1.0, name="p")
    q = Normal(var=["z"], cond_var=["n"], loc="n", scale=1.0, name="q")
    value = MMD(p, q, kernel=kernel).eval({"m": m, "n": n}, sample_mean=True)  # the draws are the means
    assert value.dtype == torch.float32
    expected = mmd_numpy(m.double(), n.double(), kernel, 4.0)
    np.testing.assert_allclose(value.item(), expected, rtol=2e-4)
    with pytest.raises(ValueError, match="sigma_sqr must be a positive finite number, got 0.0"):
        MMD(p, q, kernel=kernel, sigma_sqr=0.0)


def _expected_gaussian_mmd(delta, s, n):
    # x ~ N(mu1, I), y ~ N(mu2, I): x - y ~ N(delta, 2I) and per dimension
    # E exp(-(x-y)^2/s) = (1 + 4/s)^(-1/2) exp(-delta^2/(s + 4)); the V-statistic also averages
    # the n diagonal terms k(x, x) = 1 into E[k(x, x')]
    same = (1 + 4 / s) ** (-len(delta) / 2)
    cross = same * math.exp(-sum(d**2 for d in delta) / (s + 4))
    return 2 * (1 / n + (1 - 1 / n) * same) - 2 * cross


def test_gaussian_mmd_matches_closed_form():
    n, repeats, delta = 400, 40, [0.5, -0.3, 0.8]
    p, q = _unit_normal("m", "p"), _unit_normal("n", "q")
    x = {"m": torch.zeros(n, 3), "n": -torch.tensor(delta).expand(n, 3)}
    loss = MMD(p, q)
    torch.manual_seed(1)
    values = torch.stack([loss.eval(x) for _ in range(repeats)])
    expected = _expected_gaussian_mmd(delta, s=6.0, n=n)
    assert_mc_close(values.mean(), expected, standard_error(values), what="E[MMD^2] closed form")


def test_mmd_is_near_zero_for_equal_distributions_and_large_for_shifted():
    n = 500
    p, q = _unit_normal("m", "p"), _unit_normal("n", "q")
    torch.manual_seed(2)
    same = MMD(p, q).eval({"m": torch.zeros(n, 3), "n": torch.zeros(n, 3)}).item()
    shifted = MMD(p, q).eval({"m": torch.zeros(n, 3), "n": torch.full((n, 3), 2.0)}).item()
    # expectations: 2 (1 - (5/3)^(-3/2)) / n = 0.0035 for equal, 0.71 for the shift by 2
    assert 0 <= same < 0.01
    assert shifted > 0.5 and shifted > 50 * same


def test_mmd_rejects_bad_arguments():
    p = _unit_normal("m", "p")
    with pytest.raises(ValueError, match="unknown MMD kernel"):
        MMD(p, _unit_normal("n", "q"), kernel="laplacian")
    with pytest.raises(ValueError, match="same variables"):
        MMD(p, Normal(var=["y"], loc=0.0, scale=1.0))


def test_wasserstein_is_the_row_distance_of_the_draws():
    p, q = _unit_normal("m", "p"), _unit_normal("n", "q")
    x = {"m": torch.randn(50, 3), "n": torch.randn(50, 3)}
    torch.manual_seed(3)
    rows = WassersteinDistance(p, q).eval(x)
    torch.manual_seed(3)
    mean = WassersteinDistance(p, q).mean().eval(x)
    xs, ys = _same_draws(p, q, x, seed=3)
    distances = torch.linalg.vector_norm(xs - ys, dim=1)
    torch.testing.assert_close(rows, distances, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean, distances.mean(), rtol=1e-12, atol=1e-12)

    torch.manual_seed(3)
    l1 = WassersteinDistance(p, q, metric=nn.PairwiseDistance(p=1)).eval(x)
    torch.testing.assert_close(l1, (xs - ys).abs().sum(1), rtol=0, atol=1e-5)  # PairwiseDistance's eps


class PointMass(Deterministic):
    def __init__(self, cond, name):
        super().__init__(var=["z"], cond_var=[cond], name=name)
        self.cond = cond

    def forward(self, **cond):
        return {"z": cond[self.cond]}


def test_wasserstein_between_point_masses_is_their_distance():
    a = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    b = torch.tensor([[3.0, 5.0], [2.0, -1.0], [0.5, -0.5]])
    p, q = PointMass("a", "p"), PointMass("b", "q")
    expected = torch.tensor([5.0, 0.0, 1.0])
    torch.testing.assert_close(WassersteinDistance(p, q).eval({"a": a, "b": b}), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(WassersteinDistance(q, p).eval({"a": a, "b": b}), expected, rtol=0, atol=1e-15)
    # its gradient exists even where the points coincide (the norm's subgradient 0 there)
    a = a.clone().requires_grad_(True)
    WassersteinDistance(p, q).eval({"a": a, "b": b}).sum().backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad[0], (a - b)[0].detach() / 5.0)


class Copy(Deterministic):
    """The point mass at the conditioning variable ``m``, whatever its shape."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["m"], name="q")

    def forward(self, m):
        return {"x": m}


def test_mmd_and_wasserstein_take_scalar_data():
    """One value per row (shape (B,)): the direct formulas, as on the same data with one feature per row (both
    raised: dimension out of range)."""
    from kizuna.distributions.special import EmpiricalDistribution

    x, m = torch.randn(6), torch.randn(6)
    data = EmpiricalDistribution(["x"])
    torch.testing.assert_close(WassersteinDistance(data, Copy()).eval({"x": x, "m": m}), (x - m).abs())
    for kernel in ("gaussian", "inv-multiquadratic"):
        got = MMD(data, Copy(), kernel=kernel).eval({"x": x, "m": m})
        torch.testing.assert_close(got, torch.tensor(mmd_numpy(x, m, kernel, 2.0)))  # default σ²: twice 1 feature
        torch.testing.assert_close(got, MMD(data, Copy(), kernel=kernel).eval({"x": x[:, None], "m": m[:, None]}))
