"""dtypes: a half-precision DDPM's discretised decoder, a path's draws in its network's dtype, two examples' helpers.

References. The decoder's log-probability of a bin, log(Phi(b) - Phi(a)), from ``scipy.stats.norm.logcdf`` in float64
with the mean mu_theta(x_1, 1) written out from the schedule's coefficients and a network whose weights and inputs are
dyadic (its output exact in 16 bits); the float32 model on the same (16-bit rounded) weights, to the 16-bit format's
epsilon (``torch.finfo``). The bound's mean over many rows against the float32 model's, within its Monte Carlo error.
Paths: the draws' dtype, and the samplers' output against the same steps taken by hand from the same prior draw.
Examples: the float64 helper's output against the float32 one on the same weights.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from example_loader import load_example
from scipy import stats
from torch import nn

from kizuna.distributions import DDPM, DiffusionDecoder, DiffusionReverse, DiffusionSchedule
from kizuna.losses import diffusion_bound, hybrid_diffusion_loss
from kizuna.samplers import ddim, euler, euler_maruyama, heun
from kizuna.samplers.paths import LinearPath, ScorePath

F64 = torch.float64
HALF = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


class LinEps(nn.Module):
    """eps(x, t) = W x + b; ``out`` outputs (2d: epsilon and v, with learned variances)."""

    def __init__(self, d: int = 2, out: int | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(d, out or d)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def schedule() -> DiffusionSchedule:
    # beta_1 = 0.01: the decoder's sd 0.1 spreads over several of 17 bins (log-probabilities of -0.5 to -10)
    return DiffusionSchedule.linear(10, beta_1=0.01, beta_T=0.2)


def half_model(dt: torch.dtype, bins: int = 17, net: nn.Module | None = None, **kw) -> DDPM:
    rev = DiffusionReverse(net or LinEps(), schedule(), **kw).to(dt)
    return DDPM(rev, [rev.eps_net.lin.in_features], decoder=DiffusionDecoder(rev, bins=bins))


def as_float32(p: DDPM, bins: int) -> DDPM:
    """The same (16-bit rounded) weights in float32."""
    rev = copy.deepcopy(p.reverse).float()
    return DDPM(rev, p.features_shape, decoder=DiffusionDecoder(rev, bins=bins))


# ------------------------------------------------------------------ finding 1: the discretised decoder in 16 bits

@pytest.mark.parametrize("dt", HALF)
def test_half_decoder_log_prob_against_scipy(dt):
    """Dyadic weights and x_1: the network's output is exact in 16 bits, so the 16-bit model's log p(x_0|x_1) is the
    float64 hand computation's (scipy's logcdf) to float32 rounding, returned in float32."""
    net = LinEps()
    with torch.no_grad():
        net.lin.weight.copy_(torch.tensor([[0.5, -0.25], [0.125, 1.0]]))
        net.lin.bias.copy_(torch.tensor([0.25, -0.5]))
    bins = 17
    p = half_model(dt, bins, net)
    x1 = torch.tensor([[0.25, -0.5], [0.75, 0.125], [-1.0, 1.0]])
    x0 = torch.tensor([[0.25, -0.5], [0.375, 0.0], [-1.0, 1.0]])  # levels k/8 - 1 (bins = 17)
    logp = p.decoder.get_log_prob({"x_0": x0.to(dt), "x_1": x1.to(dt)}, sum_features=False)
    assert logp.dtype == torch.float32
    # by hand: mu = (x_1 - beta_1 / sqrt(1 - abar_1) eps) / sqrt(alpha_1), sd = sqrt(beta_1), from the schedule's table
    c = {k: v.double().item() for k, v in p.schedule.coefficients(torch.tensor([1]), torch.zeros(1, 1)).items()}
    eps = x1.double().numpy() @ np.array([[0.5, -0.25], [0.125, 1.0]]).T + np.array([0.25, -0.5])
    mu = (x1.double().numpy() - c["beta"] / math.sqrt(c["one_minus_alpha_bar"]) * eps) / math.sqrt(c["alpha"])
    sd, half = math.sqrt(c["beta"]), 1 / (bins - 1)
    x = x0.double().numpy()
    hi = np.where(x >= 1 - half / 2, np.inf, (x + half - mu) / sd)
    lo = np.where(x <= -1 + half / 2, -np.inf, (x - half - mu) / sd)
    log_hi, log_lo = stats.norm.logcdf(hi), stats.norm.logcdf(lo)
    expected = log_hi + np.log1p(-np.exp(log_lo - log_hi))
    assert expected.min() < -3 and expected.max() > -1  # bins in the bulk and in a tail
    np.testing.assert_allclose(logp.detach().double().numpy(), expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("bins", [17, 256])
def test_half_decoder_matches_float32_model(dt, bins):
    """The same weights in float32: log p(x_0|x_1) to the 16-bit epsilon (the network's rounding), for 8-bit data too
    (whose 256 levels lie off the grid by up to a quarter (float16) or half (bfloat16) of a level in 16 bits); off-grid
    data is still refused."""
    p16 = half_model(dt, bins, LinEps(4))
    p32 = as_float32(p16, bins)
    k = torch.randint(0, bins, (64, 4))
    x0 = (k.double() / (bins - 1) * 2 - 1).float()
    x1 = (x0 + 0.2 * torch.randn(64, 4)).to(dt).float()  # representable in dt
    lp32 = p32.decoder.get_log_prob({"x_0": x0, "x_1": x1}, sum_features=False)
    lp16 = p16.decoder.get_log_prob({"x_0": x0.to(dt), "x_1": x1.to(dt)}, sum_features=False)
    assert lp16.dtype == torch.float32 and torch.isfinite(lp16).all()
    assert lp32.min() < -3  # bins in the tails, where the mean's rounding shows most
    eps = torch.finfo(dt).eps
    torch.testing.assert_close(lp16, lp32, rtol=eps, atol=eps)
    # float32 data to the 16-bit model: the same values
    torch.testing.assert_close(p16.decoder.get_log_prob({"x_0": x0, "x_1": x1.to(dt)}, sum_features=False), lp16)
    if dt == torch.bfloat16 and bins == 256:
        return  # (bfloat16 holds 8-bit levels to half a level: no grid left to check)
    off = x0.clone()
    off[0, 0] = -1 + 0.5 * 2 / (bins - 1)  # half-way between two levels
    with pytest.raises(ValueError, match=f"is not on the grid of bins={bins} levels"):
        p16.decoder.get_log_prob({"x_0": off.to(dt), "x_1": x1.to(dt)})


@pytest.mark.parametrize("dt", HALF)
def test_half_bound_and_hybrid_loss(dt):
    """diffusion_bound (sampled and exact steps) and hybrid_diffusion_loss of a 16-bit DDPM with the discretised
    decoder: finite and float32; the bound's mean over 4000 rows is the float32 model's within 5 standard errors."""
    bins = 17
    p16 = half_model(dt, bins, LinEps(2))
    p32 = as_float32(p16, bins)
    x0 = torch.tensor([[-1.0, -0.5], [0.5, 1.0]]).repeat(2000, 1)
    with torch.no_grad():
        b16 = diffusion_bound(p16, exact_steps=True).eval({"x_0": x0.to(dt)})
        b32 = diffusion_bound(p32, exact_steps=True).eval({"x_0": x0})
        sampled = diffusion_bound(p16).eval({"x_0": x0[:8].to(dt)})
    for value in (b16, sampled):
        assert value.dtype == torch.float32 and value.shape == (len(value),) and torch.isfinite(value).all()
    se = math.hypot(b16.std().item(), b32.std().item()) / math.sqrt(len(x0))
    assert abs(b16.mean().item() - b32.mean().item()) < 5 * se + 4 * torch.finfo(dt).eps * b32.mean().abs().item()
    learned = half_model(dt, bins, LinEps(2, 4), variance="learned")
    loss = hybrid_diffusion_loss(learned).eval({"x_0": x0[:8].to(dt)})
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    grads = [q.grad for q in learned.reverse.eps_net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------ finding 2: a path's draws from float64 levels

class _Score(nn.Module):
    """A noise-conditional score s(x, i) = (W x + b) / sigma_i over levels built with numpy (float64 whatever the
    network); ``score`` is the same as a bound method."""

    def __init__(self, sigmas):
        super().__init__()
        self.lin, self.sigmas = nn.Linear(2, 2), [float(v) for v in sigmas]

    def forward(self, x, i):
        return self.lin(x) / self.sigmas[i]

    def score(self, x, i):
        return self(x, i)


@pytest.mark.parametrize("net_dtype", [torch.float32, F64])
@pytest.mark.parametrize("level_dtype", [torch.float32, F64])
def test_score_path_draws_in_the_score_networks_dtype(net_dtype, level_dtype):
    """The draws take the score network's dtype (an nn.Module, or a bound method of one), not that of ``sigmas``: a
    float32 network given float64 levels from numpy drew float64 and stopped in its first layer with torch's "mat1 and
    mat2 must have the same dtype" (review diffB1, finding 4); a float64 network draws float64 whatever the levels.
    The samplers' output is the Euler-Maruyama / DDIM chain run by hand from the same prior draw."""
    sigmas = torch.tensor(np.geomspace(1.0, 0.01, 4), dtype=level_dtype)
    net = _Score(sigmas).to(net_dtype)
    for score in (net, net.score):
        path = ScorePath(score, sigmas, [2])
        assert path.dtype == net_dtype
        with torch.no_grad():
            out = ddim(path, 3, n_steps=3, eta=0.0, generator=torch.Generator().manual_seed(5))
            x = path.prior(3, torch.Generator().manual_seed(5))  # DDIM, eta = 0, by hand: x + (s' - s) eps_hat
            levels = path.times(3)
            for s, s_next in zip(levels[:-1], levels[1:]):  # the last step to 0 is Tweedie's, x - s eps_hat
                x = x + (s_next - s) * (-s * net(x, path.levels.index(s)))
            assert heun(path, 3, n_steps=3).dtype == net_dtype
        assert out.dtype == net_dtype and x.dtype == net_dtype
        torch.testing.assert_close(out, x, rtol=1e-6 if net_dtype == torch.float32 else 1e-12, atol=1e-6)
    # an explicit dtype wins; a function (no module to read) draws in torch's default dtype, whatever the levels
    assert ScorePath(net, sigmas, [2], dtype=torch.bfloat16).dtype == torch.bfloat16
    assert ScorePath(lambda x, i: net(x, i), sigmas, [2]).dtype == torch.get_default_dtype()


def test_a_float32_score_network_samples_from_numpy_levels():
    """The review's repro: ``ScorePath(net, torch.tensor(np.geomspace(1, .01, 5)), [2])`` with a float32 network and
    ``euler_maruyama``: float32 draws (it stopped with torch's "mat1 and mat2 must have the same dtype")."""
    sigmas = torch.tensor(np.geomspace(1.0, 0.01, 5))
    assert sigmas.dtype == F64
    with torch.no_grad():
        out = euler_maruyama(ScorePath(_Score(sigmas), sigmas, [2]), 4, 5, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (4, 2) and bool(out.isfinite().all())


class _Velocity(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, t):
        return self.lin(x)


def test_linear_path_draws_in_the_velocity_networks_dtype():
    """A velocity network (nn.Module or bound method) gives the draws' dtype, whatever ``sigma_min``'s; another
    callable keeps the rule of before: a floating 0-d ``sigma_min``'s dtype, else torch's default; ``dtype=`` wins."""
    for dtype in (torch.float32, F64):
        net = _Velocity().to(dtype)
        for velocity in (net, net.forward):
            for sigma_min in (0.01, torch.tensor(0.01, dtype=F64), torch.tensor(0.01, dtype=torch.float32)):
                path = LinearPath(velocity, [4], sigma_min=sigma_min)
                assert path.dtype == dtype
                with torch.no_grad():
                    out = euler(path, 3, n_steps=2, generator=torch.Generator().manual_seed(1))
                    x = path.prior(3, torch.Generator().manual_seed(1))  # Euler by hand, t = 0, 1/2
                    for t in (0.0, 0.5):
                        x = x + 0.5 * net(x, t)
                assert out.dtype == dtype
                torch.testing.assert_close(out, x, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-6)
    net64 = nn.Linear(4, 4).double()
    path = LinearPath(lambda x, t: net64(x), [4], sigma_min=torch.tensor(0.01, dtype=F64))
    assert path.dtype == F64 and path.sigma_min == 0.01
    with torch.no_grad():
        assert euler(path, 3, n_steps=2).dtype == F64
    assert LinearPath(lambda x, t: net64(x), [4], sigma_min=0.01).dtype == torch.get_default_dtype()
    assert LinearPath(_Velocity(), [4], dtype=F64).dtype == F64


# ------------------------------------------------------------------ finding 3: the examples' helpers in float64

def test_score_example_sample_in_float64():
    ex = load_example("score")
    sigmas = torch.logspace(0, math.log10(0.03), 4)
    score32 = ex.ScoreNet(4, 8, sigmas)
    score64 = copy.deepcopy(score32).double()
    cfg = {"eps": 1e-4, "langevin_steps": 2}
    s32 = ex.sample(score32, 3, 4, cfg, 0)
    s64 = ex.sample(score64, 3, 4, cfg, 0)
    assert s32.dtype == torch.float32 and s64.dtype == F64
    assert torch.isfinite(s64).all() and s64.shape == (3, 4)


def test_dmm_example_one_step_predictions_in_float64():
    ex = load_example("dmm")
    d32 = ex.build({"z_dim": 2, "hidden": 6, "D": 3})
    d64 = {k: copy.deepcopy(v).double() for k, v in d32.items()}
    x = torch.randn(4, 5, 3)
    torch.manual_seed(2)
    p32 = ex.one_step_predictions(d32, x, 2, draws=3)
    torch.manual_seed(2)
    p64 = ex.one_step_predictions(d64, x.double(), 2, draws=3)
    assert p64.dtype == F64 and p64.shape == (4, 4, 3)
    assert torch.isfinite(p64).all() and p32.shape == p64.shape
