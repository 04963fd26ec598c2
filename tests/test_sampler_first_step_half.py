"""The first step out of a DDPM's or a score model's prior (Heun, Euler–Maruyama) and a DDPM in half precision.

References. Data N(MU, SD^2) with the exact noise prediction of the noised marginal written here from its closed form,
so every ODE step is affine in its start: the output's standard deviation is |gain| times the prior's, computed from
two starts with no sampling error, against (a) the probability-flow ODE's exact map, which takes the prior
N(0, 1/alpha-bar_T) to a spread of SD * sqrt((1 + s_T^2) / (s_T^2 + SD^2)) ~ SD, and (b) Euler (DDIM with eta = 0) on
the same grid. One step of each sampler out of the prior against Song et al.'s DDIM step (eq. 12 with eq. 16's sigma,
arXiv:2010.02502) written out in Karras's coordinates with the same noise, and a step from any other level against
Karras et al.'s Alg. 1 / the reverse VE SDE. Half precision: the schedule's table against the float32 model's, bit for
bit, and 1 - alpha-bar_1 against the float64 product; draws against the float32 model's with the same seed, within a
few units of the 16-bit format's epsilon (torch.finfo).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kizuna.distributions import DDPM, DiffusionForward, DiffusionPosterior, DiffusionReverse, DiffusionSchedule
from kizuna.samplers import DiffusionPath, ScorePath, ddim, euler, euler_maruyama, heun

F64 = torch.float64
MU, SD = 1.5, 0.3  # the data: N(MU, SD^2), one feature


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


class GaussEps(nn.Module):
    """The exact epsilon of N(MU, SD^2) data noised by ``alpha_bar``, computed in its input's dtype (as a network in
    that precision would); ``alpha_bar`` a buffer (``.half()`` converts it, as it would a network's weights)."""

    def __init__(self, alpha_bar: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("ab", alpha_bar.detach().clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.ab[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SD**2 + 1 - a)


def gauss_path(schedule: DiffusionSchedule) -> DiffusionPath:
    schedule = schedule.double()
    return DDPM(DiffusionReverse(GaussEps(schedule.alpha_bar()), schedule), [1]).path()


def ode_std(sampler, path: DiffusionPath, n_steps: int) -> float:
    """The exact standard deviation of an affine (deterministic) sampler's draws: |gain| x the prior's."""
    out = sampler(path, x=torch.tensor([[0.0], [1.0]], dtype=F64), n_steps=n_steps)
    return abs((out[1] - out[0]).item()) / math.sqrt(float(path.alpha_bar[-1]))


# ------------------------------------------------------------------ finding 1: the first step out of the prior
@pytest.mark.parametrize("n_steps", [5, 10])
def test_heun_on_a_cosine_ddpm_keeps_the_datas_spread(n_steps) -> None:
    """cosine(1000): s_T = 20291, and the evenly spread grid's first step ends at s = 3.1 (5 steps) or 6.4 (10).
    Heun's trapezoid over it gave a spread of 6.61 / 1.22 for the data's 0.3 (Euler 0.183 / 0.237). Now Heun's
    spread lies within 0.05 of Euler's and at least as near the exact ODE's (0.3000 here): 0.211 / 0.269."""
    path = gauss_path(DiffusionSchedule.cosine(1000))
    s_T = path.times(None)[0]
    exact = SD * math.sqrt((1 + s_T**2) / (s_T**2 + SD**2))
    assert exact == pytest.approx(0.3, abs=1e-6)
    h, e = ode_std(heun, path, n_steps), ode_std(euler, path, n_steps)
    assert e == pytest.approx(ode_std(ddim, path, n_steps), rel=1e-9)  # Euler is DDIM (eta = 0) on a DDPM
    assert abs(h - e) < 0.05, (h, e)
    assert abs(h - exact) <= abs(e - exact), (h, e)


@pytest.mark.parametrize("n_steps", [5, 10])
def test_euler_maruyama_on_a_cosine_ddpm_keeps_the_datas_spread(n_steps) -> None:
    """Euler–Maruyama's first step out of s_T added noise of about 1.4 s_T: a spread of 9.7 / 1.8 for the data's 0.3.
    Now its first step is the reverse SDE's own transition (DDIM with eta = 1): spread 0.344 / 0.319 (at most 0.4),
    mean within 5 standard errors of MU."""
    n = 20000
    x = euler_maruyama(gauss_path(DiffusionSchedule.cosine(1000)), n, n_steps,
                       generator=torch.Generator().manual_seed(1))
    assert bool(torch.isfinite(x).all())
    std = x.std().item()
    assert std <= 0.4, std
    assert abs(x.mean().item() - MU) < 5 * std / math.sqrt(n), x.mean()


def test_the_step_out_of_the_prior_is_ddims_and_other_steps_are_the_samplers_own() -> None:
    """A non-Gaussian network on linear(200, 1e-3, 0.1), the same noise: out of s_T, Heun's step is DDIM's with eta = 0
    and Euler–Maruyama's is DDIM's with eta = 1 (Song et al.'s eq. 12 in y = x / sqrt(alpha-bar): y' = x0 + (s'^2/s)
    eps + s' sqrt(1 - s'^2/s^2) z); from any other level (a given start at step 150) Heun keeps Karras et al.'s
    corrected step and Euler–Maruyama the reverse VE SDE's step; the last step (to s = 0) is Euler's in both."""
    w = torch.tensor([[0.7, -0.4], [0.3, 0.9]], dtype=F64)

    def eps_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w) + 0.01 * t[:, None].to(x.dtype)

    schedule = DiffusionSchedule(torch.linspace(1e-3, 0.1, 200, dtype=F64))
    path = DiffusionPath(DiffusionReverse(eps_net, schedule), [2])
    ab = schedule.alpha_bar()
    s_of = lambda t: math.sqrt((1 - ab[t].item()) / ab[t].item())  # noqa: E731
    eps = lambda y, t: eps_net(y * math.sqrt(ab[t].item()), torch.full((len(y),), t))  # noqa: E731
    y = 3.0 * torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(2)) * s_of(200)
    z = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    for t, t2 in [(200, 170), (150, 120)]:
        s, s2 = s_of(t), s_of(t2)
        times = [s, s2, 0.0]
        e = eps(y, t)
        if t == 200:  # out of the prior: DDIM
            y_heun = y + (s2 - s) * e
            y_em = (y - s * e) + s2**2 / s * e + s2 * math.sqrt(1 - (s2 / s) ** 2) * z
        else:  # Karras et al.'s Heun step; the reverse VE SDE y + 2 s h score + sqrt(2 s h) z, score = -eps / s
            y_euler = y + (s2 - s) * e
            y_heun = y + (s2 - s) * 0.5 * (e + eps(y_euler, t2))
            y_em = y - 2 * (s - s2) * e + math.sqrt(2 * s * (s - s2)) * z
        got_heun = heun(path, x=y, times=times)
        got_em = euler_maruyama(path, x=y, times=times, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(got_heun, y_heun - s2 * eps(y_heun, t2), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got_em, y_em - s2 * eps(y_em, t2), rtol=1e-10, atol=1e-10)


def test_a_score_model_takes_its_first_step_as_ddim_too() -> None:
    """An NCSN's prior N(0, sigma_1^2 I) (sigma_1 = 50 for data of spread 0.3), 3 steps: Heun's spread was 1.43 and
    Euler–Maruyama's 72; now 0.60 and below 3 (Euler 0.084: few levels far apart are a coarse grid for any of them).
    The prior level is sigma_1, and the first Heun step from it is Euler's (DDIM's)."""
    levels = torch.logspace(math.log10(50.0), -2, 10, dtype=F64)
    path = ScorePath(lambda x, i: -(x - MU) / (SD**2 + levels[i].item() ** 2), levels, [1], dtype=F64)
    x = torch.tensor([[0.0], [1.0]], dtype=F64)
    h = abs((lambda o: (o[1] - o[0]).item())(heun(path, x=x, n_steps=3))) * 50.0
    assert 0.3 <= h < 0.7, h
    em = euler_maruyama(path, 20000, 3, generator=torch.Generator().manual_seed(4))
    assert em.std().item() < 3, em.std()
    torch.testing.assert_close(heun(path, x=x, times=path.times(3)[:2]), euler(path, x=x, times=path.times(3)[:2]),
                               rtol=1e-12, atol=1e-12)
    assert path.prior_level() == levels[0].item()


# ------------------------------------------------------------------ finding 2: a DDPM in half precision
HALF = [torch.float16, torch.bfloat16]
SCHEDULES = {"linear": DiffusionSchedule.linear, "cosine": DiffusionSchedule.cosine}


def gauss_ddpm(make, dtype: torch.dtype | None = None, T: int = 1000) -> DDPM:
    """A DDPM of N(MU, SD^2) data over ``make(T)``, its network the exact epsilon; ``dtype``: converted by
    ``.to(dtype)``."""
    p = DDPM(DiffusionReverse(GaussEps(make(T).alpha_bar()), make(T), variance="posterior"), [1])
    return p if dtype is None else p.to(dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_a_half_precision_ddpm_keeps_the_float32_schedule(name, dtype) -> None:
    """In 16 bits 1 - alpha-bar_1 was 0 (beta_1 = 1e-4: 1 - beta_1 rounds to 1) and cosine's alpha-bar_T = 2.4e-9 was
    0; bfloat16 also put alpha-bar 10% off. Now the betas and the table stay float32 (the float32 model's, bit for
    bit), 1 - alpha-bar_1 is the float64 product's to float32's resolution at 1, the path has the float32 model's
    times, and only the model's dtype (schedule.dtype) is half; .double() afterwards gives the exact float64 betas."""
    make = SCHEDULES[name]
    ref, p = gauss_ddpm(make), gauss_ddpm(make, dtype)
    s = p.schedule
    exact = make(1000).double()
    ab = torch.cumprod(1 - exact.betas, 0)  # float64
    eps32 = torch.finfo(torch.float32).eps  # float32's resolution at 1: 1 - alpha-bar_1 (1e-4, 4.1e-5) is not 0
    assert (1 - s.alpha_bar()[1]).item() == pytest.approx(1 - ab[0].item(), abs=eps32)
    assert s.alpha_bar()[-1].item() == pytest.approx(ab[-1].item(), rel=1e-4)  # 4.04e-5, 2.43e-9: not 0
    assert torch.equal(s.betas, ref.schedule.betas) and torch.equal(s.constants(), ref.schedule.constants())
    assert p.path().times(None) == ref.path().times(None)
    assert s.dtype == dtype and s.betas.dtype == torch.float32 and s.constants().dtype == torch.float32
    assert torch.equal(p.to(torch.float64).schedule.betas, exact.betas)
    given = DiffusionSchedule(DiffusionSchedule.linear(10).betas.to(dtype))  # given in half precision: kept float32
    assert given.dtype == dtype and given.betas.dtype == torch.float32


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_noising_and_posterior_keep_their_variances(dtype) -> None:
    """q(x_1|x_0)'s scale sqrt(1 - alpha-bar_1) = 0.01 was 0, and the posterior variance at t = 2 0/0 (NaN): now
    both are the float64 values to the format's precision, in the data's dtype."""
    s = DiffusionSchedule.linear(1000).to(dtype)
    x0 = torch.full((3, 2), 0.5, dtype=dtype)
    ref = DiffusionSchedule.linear(1000).double()
    ab = ref.alpha_bar()
    scale = DiffusionForward(s, step=1).forward(x_0=x0)["scale"]
    assert scale.dtype == dtype
    torch.testing.assert_close(scale.double(), torch.full((3, 2), math.sqrt(1 - ab[1].item()), dtype=F64),
                               rtol=torch.finfo(dtype).eps, atol=0)
    post = DiffusionPosterior(s).forward(x_t=x0, x_0=x0, t=torch.full((3,), 2))["scale"] ** 2
    beta_tilde = (1 - ab[1]) / (1 - ab[2]) * ref.betas[1]
    torch.testing.assert_close(post.double(), torch.full((3, 2), beta_tilde.item(), dtype=F64),
                               rtol=4 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_half_precision_ddpm_draws_are_finite_and_the_float32_ones(name, dtype) -> None:
    """float16 cosine drew NaN, bfloat16 raised "the network is not defined at t = 0", DDPM.sample of float16
    linear(200) "times must run strictly ..." (s_1 = 0 = s_0). Now every sampler's draws are finite, and with the
    same seed (the chain runs in float32; the network in half precision) within 8 epsilons of the format (8 x 2^-7
    bfloat16, 8 x 2^-10 float16) times (1 + |x|) of the float32 model's, ancestral DDPM.sample included (then in the
    model's dtype; over 200 steps, the cheaper chain). A cosine schedule's deterministic samplers are checked for
    finite draws only: the network's own rounding is amplified by s_T = 20291 in x0 = y - s eps at the prior
    (DiffusionPath's docstring: a float32 model whose network rounds to 16 bits is as far off)."""
    tol = 8 * torch.finfo(dtype).eps
    ref, p = gauss_ddpm(SCHEDULES[name], T=200), gauss_ddpm(SCHEDULES[name], dtype, T=200)
    torch.manual_seed(6)
    x = p.sample(batch_n=64)["x_0"]
    torch.manual_seed(6)
    x32 = ref.sample(batch_n=64)["x_0"]
    assert x.dtype == dtype and bool(torch.isfinite(x).all())
    torch.testing.assert_close(x.float(), x32, rtol=tol, atol=tol)
    ref, p = gauss_ddpm(SCHEDULES[name]), gauss_ddpm(SCHEDULES[name], dtype)
    stochastic = [(ddim, {"n_steps": 20, "eta": 1.0}), (euler_maruyama, {"n_steps": 20})]
    for sampler, kw in stochastic + [(ddim, {"n_steps": 20}), (heun, {"n_steps": 10})]:
        x = sampler(p.path(), 256, generator=torch.Generator().manual_seed(5), **kw)
        assert bool(torch.isfinite(x).all()), (sampler.__name__, kw)
        if name == "linear" or (sampler, kw) in stochastic:
            x32 = sampler(ref.path(), 256, generator=torch.Generator().manual_seed(5), **kw)
            label = f"{sampler.__name__} {kw}"
            torch.testing.assert_close(x.to(x32.dtype), x32, rtol=tol, atol=tol,
                                       msg=lambda m, label=label: f"{label}: {m}")
            assert x.dtype == torch.float32  # the chain's dtype
