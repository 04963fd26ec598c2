"""Stop 48 mutation review (MB: losses, formula core, diffusion / flow-matching / energy distributions, samplers,
likelihood and two-sample metrics): tests that kill mutants the suite let through, each against an independent
reference (scipy.stats, closed forms, enumeration). Each runs in well under a second on one thread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from kizuna.distributions import DiffusionDecoder, DiffusionReverse, DiffusionSchedule

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread_seeded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    torch.set_num_threads(threads)


def test_discretised_decoder_with_many_narrow_bins_against_scipy() -> None:
    """The discretised decoder's log-probability of a bin much narrower than its standard deviation (4096 levels,
    sd ~ 0.9: each bin holds ~2e-4 of the mass, log Phi(lo) - log Phi(hi) ~ -4e-4) is log(Phi(b) - Phi(a)) as scipy
    computes it; the interval's stabilising clamp must not cap it (a clamp at -1e-3 gave -6.9 nats per entry
    whatever the bin)."""
    s = DiffusionSchedule(torch.tensor([0.8, 0.9], dtype=F64))
    rev = DiffusionReverse(lambda x, t: torch.zeros_like(x), s)  # mean x_1 / sqrt(1 - beta_1), variance beta_1
    bins = 4096
    dec = DiffusionDecoder(rev, bins=bins)
    levels = torch.tensor([[-1.0], [-0.5], [0.0], [0.25], [1.0]], dtype=F64)
    levels = ((levels + 1) / 2 * (bins - 1)).round() / (bins - 1) * 2 - 1  # on the grid
    x1 = torch.full((5, 1), 0.1, dtype=F64)
    logp = dec.get_log_prob({"x_1": x1, "x_0": levels}).numpy()
    m, sd, half = 0.1 / math.sqrt(0.2), math.sqrt(0.8), 1 / (bins - 1)
    lo = np.where(levels[:, 0].numpy() <= -1 + half / 2, -np.inf, levels[:, 0].numpy() - half)
    hi = np.where(levels[:, 0].numpy() >= 1 - half / 2, np.inf, levels[:, 0].numpy() + half)
    ref = np.log(stats.norm.cdf(hi, m, sd) - stats.norm.cdf(lo, m, sd))
    np.testing.assert_allclose(logp, ref, rtol=1e-7)


def test_annealed_langevin_denoising_step_is_tweedies() -> None:
    """``denoise=True`` ends with Tweedie's step x + sigma_L^2 s(x, L). For data that are a point mass at mu the
    noised data at level sigma are N(mu, sigma^2), whose score is -(x - mu) / sigma^2: Tweedie's step then returns mu
    exactly, wherever the chain ended (a step of sigma_L * s left x - (x - mu) / sigma_L)."""
    from kizuna.samplers import annealed_langevin_dynamics

    mu = torch.tensor([0.7, -1.3], dtype=F64)
    sigmas = [1.0, 0.5, 0.2]

    def score(x: torch.Tensor, i: int) -> torch.Tensor:
        return -(x - mu) / sigmas[i] ** 2

    gen = torch.Generator().manual_seed(1)
    x = annealed_langevin_dynamics(score, torch.zeros(64, 2, dtype=F64), sigmas, eps=1e-3, n_steps_each=3,
                                   denoise=True, generator=gen)
    torch.testing.assert_close(x, mu.expand(64, 2), rtol=0, atol=1e-12)


def test_a_probability_discriminator_scores_small_probabilities_as_binary_cross_entropy_does() -> None:
    """A discriminator that outputs probabilities (Pixyz's Deterministic) is scored with log d and log(1 - d) clamped
    only at -100, as torch's binary cross-entropy: with deterministic draws (one-hot categoricals) and d = 1e-6 on
    the data, 1 - 1e-7 on the generated draw, the discriminator's loss is exactly BCE's (~30 nats), and the generator's
    non-saturating loss -log d(x_q) likewise (a clamp at -10 gave ~20 nats)."""
    from torch.nn import functional as F

    from kizuna.distributions import Categorical, Deterministic
    from kizuna.losses import AdversarialJensenShannon

    class TableD(Deterministic):
        def __init__(self, table: torch.Tensor) -> None:
            super().__init__(var=["t"], cond_var=["x"], name="d")
            self.register_buffer("table", table)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"t": x @ self.table}

    table = torch.tensor([1e-6, 1 - 1e-7], dtype=F64)
    p = Categorical(var=["x"], probs=torch.tensor([1.0, 0.0], dtype=F64), name="p")  # always category 0
    q = Categorical(var=["x"], probs=torch.tensor([0.0, 1.0], dtype=F64), name="q")  # always category 1
    loss = AdversarialJensenShannon(p, q, TableD(table), batch_n=4)
    d_value = loss.d_loss().eval().item()
    ref = (F.binary_cross_entropy(table[:1], torch.ones(1, dtype=F64))
           + F.binary_cross_entropy(table[1:], torch.zeros(1, dtype=F64))).item()
    assert ref > 25
    assert math.isclose(d_value, ref, rel_tol=1e-9), (d_value, ref)
    g_value = loss.eval().item()  # non-saturating: -E_p[log(1 - d)] - E_q[log d]
    g_ref = -(math.log1p(-1e-6) + math.log(1 - 1e-7))
    assert math.isclose(g_value, g_ref, rel_tol=1e-6), (g_value, g_ref)


def test_c2st_p_value_and_held_out_size_against_enumeration() -> None:
    """The p-value is P(Bin(n_test, 1/2) >= correct), summed here from the binomial coefficients, and ``test_size``
    of each sample is held out, rounded (9 rows a side at 0.3: 2.7 -> 3 rows each, n_test = 6)."""
    from kizuna.metrics import classifier_two_sample_test

    rng = np.random.default_rng(0)
    for n, test_size, shift in ((9, 0.3, 0.0), (40, 0.5, 1.0), (60, 0.5, 0.0)):
        res = classifier_two_sample_test(rng.normal(size=(n, 2)), rng.normal(shift, size=(n, 2)), test_size=test_size)
        per = int(round(test_size * n))
        assert res.n_test == 2 * per, (n, test_size, res)
        correct = round(res.accuracy * res.n_test)
        ref = sum(math.comb(res.n_test, j) for j in range(correct, res.n_test + 1)) / 2 ** res.n_test
        assert math.isclose(res.p_value, ref, rel_tol=1e-12), (res, ref)


def _loo_setup(k: int, rows: int, sigma: float):
    from kizuna.distributions import Normal

    mu = torch.full((rows,), 0.7, dtype=F64, requires_grad=True)
    q = Normal(var=["x"], cond_var=["m", "s"], loc="m", scale="s", name="q")
    return mu, q, {"m": mu, "s": torch.full((rows,), sigma, dtype=F64)}


def test_reinforce_leave_one_out_gradient_is_the_hand_written_estimator() -> None:
    """REINFORCE with baseline="loo" and k draws per row gives, for a per-row f, the gradient
    1/k sum_j (f_j - b_j) d/dmu log N(x_j; mu, s^2) per row, b_j the mean of the OTHER k - 1 draws' f (Mnih &
    Rezende's leave-one-out baseline), on the draws it returns: checked against that formula written out by hand. For
    an f that mixes a per-row term with a batch mean (evaluated draw by draw: each draw's rows' summed score), the
    leave-one-out baseline of each row's value over the other draws enters the same way. (A mean over k instead of
    k - 1 keeps the estimator unbiased but is another baseline with another variance: only an exact comparison sees
    it.)"""
    from kizuna.losses import REINFORCE, Parameter

    k, rows, sigma = 4, 5, 1.3
    # a per-row f: f_j = x_j^2
    mu, q, given = _loo_setup(k, rows, sigma)
    value, draws = REINFORCE(q, Parameter("x") ** 2, sample_shape=(k,), baseline="loo").eval(given, return_dict=True)
    (grad,) = torch.autograd.grad(value.sum(), [mu])
    x = draws["x"].detach()
    assert x.shape == (k, rows)
    f = x**2
    baseline = (f.sum(0, keepdim=True) - f) / (k - 1)
    torch.testing.assert_close(value.detach(), f.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ((f - baseline) * (x - 0.7) / sigma**2).mean(0), rtol=1e-10, atol=1e-12)
    # a mixed f: f_jr = x_jr^2 - mean_r' x_jr' (draw j's batch mean), evaluated draw by draw
    mu, q, given = _loo_setup(k, rows, sigma)
    loss = REINFORCE(q, Parameter("x") ** 2 - Parameter("x").mean(), sample_shape=(k,), baseline="loo")
    value, draws = loss.eval(given, return_dict=True)
    (grad,) = torch.autograd.grad(value.sum(), [mu])
    x = draws["x"].detach().reshape(k, rows)
    f = x**2 - x.mean(1, keepdim=True)
    baseline = (f.sum(0, keepdim=True) - f) / (k - 1)
    torch.testing.assert_close(value.detach(), f.mean(0), rtol=1e-12, atol=1e-12)
    ref = ((f - baseline).sum(1, keepdim=True) * (x - 0.7) / sigma**2).mean(0)
    torch.testing.assert_close(grad, ref, rtol=1e-10, atol=1e-12)
