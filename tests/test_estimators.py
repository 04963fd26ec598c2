"""Gradients of `Expectation` and `REINFORCE` against hand-derived ones.

Trick used throughout: each row gets its own copy of the parameters (a leaf of shape
``(n, ...)``), so after ``loss.sum().backward()`` row i's gradient is one independent draw of
the estimator; their mean is the estimate and their std / sqrt(n) its standard error.
Tolerance: ``N_SE`` (5) standard errors (see ``mc_reference``).
"""

import pytest
import torch
from mc_reference import assert_mc_close, default_dtype, standard_error
from torch import distributions as D

from kizuna.distributions import Bernoulli, Normal
from kizuna.losses import REINFORCE, Expectation, Parameter

N = 20_000
MU, SIGMA = 0.7, 1.3  # E[x^2] = mu^2 + sigma^2: d/dmu = 2 mu, d/dsigma = 2 sigma


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


def _normal(cls=Normal):
    return cls(var=["x"], cond_var=["m", "s"], loc="m", scale="s", name="q")


def _leaves(n, *values):
    return [torch.full((n,), v, requires_grad=True) for v in values]


def test_gradcheck_of_a_reparameterised_expectation():
    def expected_square(mu, sigma):
        torch.manual_seed(0)  # the same noise at every evaluation: a smooth function of (mu, sigma)
        return Expectation(_normal(), Parameter("x") ** 2, sample_shape=(5,)).eval({"m": mu, "s": sigma})

    mu = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    sigma = torch.tensor([0.5, 1.0, 1.7], requires_grad=True)
    assert torch.autograd.gradcheck(expected_square, (mu, sigma))


def test_pathwise_gradient_is_exact_per_draw_and_unbiased():
    mu, sigma = _leaves(N, MU, SIGMA)
    torch.manual_seed(1)
    value, draws = Expectation(_normal(), Parameter("x") ** 2).eval({"m": mu, "s": sigma}, return_dict=True)
    value.sum().backward()
    x = draws["x"].detach()
    # x = mu + sigma eps: d x^2/dmu = 2x, d x^2/dsigma = 2x eps = 2x (x - mu)/sigma
    torch.testing.assert_close(mu.grad, 2 * x)
    torch.testing.assert_close(sigma.grad, 2 * x * (x - MU) / SIGMA)
    assert_mc_close(mu.grad.mean(), 2 * MU, standard_error(mu.grad), what="pathwise d/dmu")
    assert_mc_close(sigma.grad.mean(), 2 * SIGMA, standard_error(sigma.grad), what="pathwise d/dsigma")


def test_score_function_gradient_for_bernoulli():
    # E[f(y)] = a (1 - t) + b t, so d/dt = b - a; one draw: f(y) (y/t - (1-y)/(1-t)),
    # whose variance is b^2/t + a^2/(1-t) - (b-a)^2 exactly
    a, b, t = 2.0, -1.0, 0.3
    f = a + (b - a) * Parameter("y")
    q = Bernoulli(var=["y"], cond_var=["t"], probs="t", name="q")
    assert not q.has_reparam
    sd = (b**2 / t + a**2 / (1 - t) - (b - a) ** 2) ** 0.5

    (theta,) = _leaves(N, t)
    torch.manual_seed(2)
    value, draws = Expectation(q, f).eval({"t": theta}, return_dict=True)
    value.sum().backward()
    y = draws["y"]
    torch.testing.assert_close(value, a + (b - a) * y)  # the surrogate leaves the value alone
    torch.testing.assert_close(theta.grad, (a + (b - a) * y) * (y / t - (1 - y) / (1 - t)))
    assert_mc_close(theta.grad.mean(), b - a, sd / N**0.5, what="score d/dt, one draw per row")

    # one parameter, many draws: the gradient is the average over sample_shape
    theta = torch.tensor([t], requires_grad=True)
    Expectation(q, f, sample_shape=(N,)).eval({"t": theta}).sum().backward()
    assert_mc_close(theta.grad[0], b - a, sd / N**0.5, what="score d/dt, sample_shape")


class _NormalWithoutRsample(D.Normal):
    has_rsample = False


class ScoreOnlyNormal(Normal):
    """A Normal whose torch family offers no rsample: kizuna must take the score path."""

    torch_class = _NormalWithoutRsample


class NoReparamNormal(Normal):
    """A Normal that declares itself non-reparameterisable (STYLE.md habit 8's fake)."""

    @property
    def has_reparam(self):
        return False


def _check_score_gradient_of_square(cls):
    mu, sigma = _leaves(N, MU, SIGMA)
    q = _normal(cls)
    assert not q.has_reparam
    torch.manual_seed(3)
    value, draws = Expectation(q, Parameter("x") ** 2, sample_shape=(4,)).eval({"m": mu, "s": sigma},
                                                                               return_dict=True)
    value.sum().backward()
    x = draws["x"].detach()  # (4, N)
    # score path: mean over draws of x^2 d log N(x; mu, sigma) = x^2 (x-mu)/sigma^2 and x^2 ((x-mu)^2/sigma^3 - 1/sigma)
    torch.testing.assert_close(mu.grad, (x**2 * (x - MU) / SIGMA**2).mean(0))
    torch.testing.assert_close(sigma.grad, (x**2 * ((x - MU) ** 2 / SIGMA**3 - 1 / SIGMA)).mean(0))
    assert_mc_close(mu.grad.mean(), 2 * MU, standard_error(mu.grad), what="score d/dmu")
    assert_mc_close(sigma.grad.mean(), 2 * SIGMA, standard_error(sigma.grad), what="score d/dsigma")


def test_score_path_for_a_family_without_rsample():
    _check_score_gradient_of_square(ScoreOnlyNormal)


def test_score_path_for_a_distribution_declaring_no_reparam():
    _check_score_gradient_of_square(NoReparamNormal)


def _reinforce_grads(baseline, n, k=4):
    (mu,) = _leaves(n, MU)
    loss = REINFORCE(_normal(), Parameter("x") ** 2, sample_shape=(k,), baseline=baseline)
    value, draws = loss.eval({"m": mu, "s": torch.full((n,), SIGMA)}, return_dict=True)
    torch.testing.assert_close(value, (draws["x"] ** 2).mean(0))  # the value is the plain MC average
    value.sum().backward()
    return mu.grad


def test_reinforce_is_unbiased_and_baselines_reduce_variance():
    # per draw, with x = mu + sigma eps, g = (x^2 - b)(x - mu)/sigma^2 has variance
    # mu^4/sigma^2 + 14 mu^2 + 15 sigma^2 for b = 0 and 8 mu^2 + 10 sigma^2 for b = E[x^2];
    # averaged over k = 4 draws: 8.08 and 5.21 (the leave-one-out baseline: ~5.80, by simulation)
    n, k = 100_000, 4  # n rows: the variances are estimated to ~1.5%
    torch.manual_seed(4)
    grads = {name: _reinforce_grads(b, n, k) for name, b in
             [("none", None), ("constant", MU**2 + SIGMA**2), ("loo", "loo")]}
    for name, g in grads.items():
        assert_mc_close(g.mean(), 2 * MU, standard_error(g), what=f"REINFORCE baseline={name}")
    var = {name: g.var().item() for name, g in grads.items()}
    expected = {"none": (MU**4 / SIGMA**2 + 14 * MU**2 + 15 * SIGMA**2) / k,
                "constant": (8 * MU**2 + 10 * SIGMA**2) / k}
    for name, v in expected.items():
        assert abs(var[name] / v - 1) < 0.1, f"variance of REINFORCE baseline={name}: {var[name]} vs {v}"
    assert var["constant"] < 0.85 * var["none"] and var["loo"] < 0.85 * var["none"], var


def test_reinforce_uses_the_score_path_even_for_a_reparameterisable_family():
    (mu,) = _leaves(N, MU)
    torch.manual_seed(5)
    value, draws = REINFORCE(_normal(), Parameter("x") ** 2).eval({"m": mu, "s": torch.full((N,), SIGMA)},
                                                                  return_dict=True)
    value.sum().backward()
    x = draws["x"]
    assert not x.requires_grad
    torch.testing.assert_close(mu.grad, x**2 * (x - MU) / SIGMA**2)


def test_reinforce_loo_needs_several_draws():
    with pytest.raises(ValueError, match="at least two draws"):
        REINFORCE(_normal(), Parameter("x") ** 2, baseline="loo")
