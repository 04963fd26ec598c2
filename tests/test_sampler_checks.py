"""Checks of the sampler layer and of flow matching's pieces against hand-written references.

* Each sampler's draws against its OWN discrete-time law. With Gaussian data N(MU, V I) and the exact
  prediction, every step of ancestral DDPM, DDIM, Euler, Heun and Euler-Maruyama is affine in x plus Gaussian
  noise, so the law after the last step is Gaussian with a mean and a variance propagated here by hand, in
  float64, through the steps written from their papers (Ho et al. 2020 eq. 11; Song et al. 2021 eq. 12 and 16,
  arXiv:2010.02502; Karras et al. 2022 Alg. 1; the reverse SDE of Song et al. 2021, arXiv:2011.13456, with the
  marginal's own score). The draws' mean and variance must lie within 4 standard errors of those: no
  discretisation allowance, so a sampler with a variance 5-15% off fails (test_samplers.py compares with the
  data's law and must allow for discretisation).
* One DDIM step at eta = 0.3 against Song et al.'s eq. 12 with the same noise, on a DDPM and on a LinearPath
  (a != 1; Song's variance-preserving form after dividing x by sqrt(a^2 + b^2)), with non-Gaussian networks
  (DDIM's marginals do not depend on eta, so the moments cannot check its variance); one Euler-Maruyama step
  with the default diffusion against the reverse VE SDE.
* Scalar data (features_shape []): the ODE log-density of a linear velocity against its closed-form Gaussian
  push-forward, the velocity error by hand, 1-D optimal transport as the monotone (sorted) pairing.
* Bad input: a given start x, OTCoupling's data, sigma_min, eta and a diffusion callable are refused with a
  ValueError naming the sampler or distribution and what was given.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from kizuna.distributions import DiffusionReverse, DiffusionSchedule, FlowMatching, validation
from kizuna.distributions.flow_coupling import FlowInterpolant, OTCoupling, TimeUniform
from kizuna.losses import flow_matching_loss
from kizuna.losses.flow_matching import VelocityError
from kizuna.samplers import (
    DiffusionPath,
    GaussianPath,
    LinearPath,
    Prediction,
    ScorePath,
    ancestral,
    ddim,
    euler,
    euler_maruyama,
    guided,
    heun,
)

F64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=F64)
V = 0.25  # the data: N(MU, V I)
T = 200
BETAS = torch.linspace(1e-3, 0.1, T, dtype=F64)  # DiffusionSchedule.linear(200, 1e-3, 0.1), written out
AB = torch.cat([torch.ones(1, dtype=F64), torch.cumprod(1 - BETAS, 0)])  # alpha_bar_t, t = 0..T, by hand
N_DRAWS = 20000  # per dimension: SE of a variance of 0.25 is 0.0025, a 10% error 10 SE


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def gauss_pred(x: torch.Tensor, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """E[x_data | x] and E[eps | x] for x = a x_data + b eps, x_data ~ N(MU, V I)."""
    s2 = a * a * V + b * b
    return MU + a * V * (x - a * MU) / s2, b * (x - a * MU) / s2


def gauss_score(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """grad log N(x; a MU, (a^2 V + b^2) I), the marginal's own score."""
    return -(x - a * MU) / (a * a * V + b * b)


def s_of(t: int) -> float:
    """Karras's noise level of DDPM step t: sqrt((1 - alpha_bar) / alpha_bar)."""
    return math.sqrt((1 - AB[t].item()) / AB[t].item())


def ddpm(variance: str = "beta") -> DiffusionPath:
    def eps_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = AB[t[0]].item()
        return gauss_pred(x, math.sqrt(ab), math.sqrt(1 - ab))[1]

    return DiffusionPath(DiffusionReverse(eps_net, DiffusionSchedule(BETAS.clone()), variance=variance), [2])


def flow() -> LinearPath:
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x1, x0 = gauss_pred(x, t[0].item(), 1 - t[0].item())
        return x1 - x0  # E[x_1 - x_0 | x_t]

    return LinearPath(velocity, [2], dtype=F64)


def propagate(steps, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance (per dimension) through steps x' = f(x, z), each affine in x and in z ~ N(0, 1):
    m' = f(m, 0), A = f(m + 1, 0) - m', s = f(m, 1) - m', v' = A^2 v + s^2."""
    for f in steps:
        zero = torch.zeros_like(mean)
        new = f(mean, zero)
        gain, scale = f(mean + 1, zero) - new, f(mean, zero + 1) - new
        mean, var = new, gain**2 * var + scale**2
    return mean, var


def song_eq12(z, ab_pair, eta, x0, e):
    """Song et al. eq. 12 with eq. 16's sigma, variance preserving (x = sqrt(ab) x0 + sqrt(1 - ab) eps), from the
    predictions (x0, e) at x."""
    ab, ab2 = ab_pair
    sig2 = eta**2 * (1 - ab2) / (1 - ab) * (1 - ab / ab2)
    return math.sqrt(ab2) * x0 + math.sqrt(max(1 - ab2 - sig2, 0.0)) * e + math.sqrt(sig2) * z


def song_eq12_general(z, coeffs, coeffs2, eta, x0, e):
    """eq. 12 on a path x = a x0 + b eps: x / r = (a/r) x0 + (b/r) eps is variance preserving with
    alpha_bar = a^2 / r^2, r^2 = a^2 + b^2 (the same predictions); the result times r'."""
    (a, b), (a2, b2) = coeffs, coeffs2
    r, r2 = math.hypot(a, b), math.hypot(a2, b2)
    return r2 * song_eq12(z, ((a / r) ** 2, (a2 / r2) ** 2), eta, x0, e)


# the reference steps, from noise to data; each returns (start mean, start variance, steps)
def ref_ddpm_ancestral(variance):
    def step(t):
        def f(x, z):  # Ho et al. eq. 11, in x_t; the last step returns the mean
            e = gauss_pred(x, math.sqrt(AB[t]), math.sqrt(1 - AB[t]))[1]
            beta = BETAS[t - 1].item()
            var = beta if variance == "beta" else (1 - AB[t - 1].item()) / (1 - AB[t].item()) * beta
            mean = (x - beta / math.sqrt(1 - AB[t].item()) * e) / math.sqrt(1 - beta)
            return mean + math.sqrt(var) * z if t > 1 else mean
        return f
    return torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64), [step(t) for t in range(T, 0, -1)]


DDPM_TS = list(range(T, -1, -T // 50))  # 50 steps 200, 196, ..., 0


def ref_ddpm_ddim(eta):
    def step(t, t2):
        ab, ab2 = AB[t].item(), AB[t2].item()
        return lambda x, z: song_eq12(z, (ab, ab2), eta, *gauss_pred(x, math.sqrt(ab), math.sqrt(1 - ab)))
    return torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64), [step(t, t2) for t, t2 in zip(DDPM_TS, DDPM_TS[1:])]


def karras_d(y, s):
    """Karras et al.'s dx/dsigma = (x - D(x; sigma)) / sigma, D the exact denoiser (y = x_data + sigma eps)."""
    return (y - gauss_pred(y, 1.0, s)[0]) / s


def ref_ddpm_euler():
    def step(s, s2):
        return lambda y, z: y + (s2 - s) * karras_d(y, s)
    ss = [s_of(t) for t in DDPM_TS]
    return torch.zeros(2, dtype=F64), torch.full((2,), 1 / AB[T].item(), dtype=F64), \
        [step(s, s2) for s, s2 in zip(ss, ss[1:])]


def ref_ddpm_heun():
    def step(s, s2):
        def f(y, z):  # Karras et al. Alg. 1: Euler at the last step (to sigma = 0)
            d = karras_d(y, s)
            ye = y + (s2 - s) * d
            return ye if s2 == 0 else y + (s2 - s) * 0.5 * (d + karras_d(ye, s2))
        return f
    ss = [s_of(t) for t in DDPM_TS[::2]]  # 25 steps
    return torch.zeros(2, dtype=F64), torch.full((2,), 1 / AB[T].item(), dtype=F64), \
        [step(s, s2) for s, s2 in zip(ss, ss[1:])]


def ref_ddpm_em():
    def step(s, s2):
        def f(y, z):  # the reverse VE SDE dy = -d[s^2]/ds score ds + sqrt(d[s^2]/ds) dw, s falling by h
            h, score = s - s2, gauss_score(y, 1.0, s)
            if s2 == 0:  # the last step: the probability-flow (noiseless) Euler step
                return y + h * s * score
            return y + 2 * s * h * score + math.sqrt(2 * s * h) * z
        return f
    ss = [s_of(t) for t in DDPM_TS]
    return torch.zeros(2, dtype=F64), torch.full((2,), 1 / AB[T].item(), dtype=F64), \
        [step(s, s2) for s, s2 in zip(ss, ss[1:])]


def flow_v(x, t):
    x1, x0 = gauss_pred(x, t, 1 - t)
    return x1 - x0


def flow_start():
    return torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)


def grid(n):
    return [i / n for i in range(n + 1)]


def ref_flow_euler(n):
    def step(t, t2):
        return lambda x, z: x + (t2 - t) * flow_v(x, t)
    return (*flow_start(), [step(t, t2) for t, t2 in zip(grid(n), grid(n)[1:])])


def ref_flow_heun(n):
    def step(t, t2):
        def f(x, z):  # the velocity is defined at t = 1: every step corrected
            u = flow_v(x, t)
            return x + (t2 - t) * 0.5 * (u + flow_v(x + (t2 - t) * u, t2))
        return f
    return (*flow_start(), [step(t, t2) for t, t2 in zip(grid(n), grid(n)[1:])])


def ref_flow_ddim(n, eta):
    def step(t, t2):
        return lambda x, z: song_eq12_general(z, (t, 1 - t), (t2, 1 - t2), eta, *gauss_pred(x, t, 1 - t))
    return (*flow_start(), [step(t, t2) for t, t2 in zip(grid(n), grid(n)[1:])])


def ref_flow_em(n):
    def step(t, t2):
        def f(x, z):  # dx = [v + g^2/2 score] dt + g dw, g = 1 - t; the last step noiseless Euler
            h, g = t2 - t, 1 - t
            if t2 == 1:
                return x + h * flow_v(x, t)
            return x + h * (flow_v(x, t) + 0.5 * g * g * gauss_score(x, t, 1 - t)) + g * math.sqrt(h) * z
        return f
    return (*flow_start(), [step(t, t2) for t, t2 in zip(grid(n), grid(n)[1:])])


MOMENT_CASES = {  # id: (path, sampler, kwargs, reference)
    "ddpm-ancestral-beta": (lambda: ddpm("beta"), ancestral, {}, lambda: ref_ddpm_ancestral("beta")),
    "ddpm-ancestral-posterior": (lambda: ddpm("posterior"), ancestral, {}, lambda: ref_ddpm_ancestral("posterior")),
    **{f"ddpm-ddim-{eta}": (ddpm, ddim, {"eta": eta, "times": [s_of(t) for t in DDPM_TS]},
                            (lambda e: lambda: ref_ddpm_ddim(e))(eta)) for eta in (0.0, 0.3, 1.0)},
    "ddpm-euler": (ddpm, euler, {"times": [s_of(t) for t in DDPM_TS]}, ref_ddpm_euler),
    "ddpm-heun": (ddpm, heun, {"times": [s_of(t) for t in DDPM_TS[::2]]}, ref_ddpm_heun),
    "ddpm-euler_maruyama": (ddpm, euler_maruyama, {"times": [s_of(t) for t in DDPM_TS]}, ref_ddpm_em),
    "flow-euler": (flow, euler, {"n_steps": 20}, lambda: ref_flow_euler(20)),
    "flow-heun": (flow, heun, {"n_steps": 10}, lambda: ref_flow_heun(10)),
    **{f"flow-ddim-{eta}": (flow, ddim, {"eta": eta, "n_steps": 20}, (lambda e: lambda: ref_flow_ddim(20, e))(eta))
       for eta in (0.0, 0.3, 1.0)},
    "flow-euler_maruyama": (flow, euler_maruyama, {"n_steps": 50, "diffusion": lambda t: 1 - t},
                            lambda: ref_flow_em(50)),
}


@pytest.mark.parametrize("case", list(MOMENT_CASES))
def test_each_sampler_has_its_own_discrete_time_moments(case) -> None:
    """Draws' mean and variance within 4 SE of the hand-propagated law of the same discrete steps."""
    make_path, sampler, kwargs, reference = MOMENT_CASES[case]
    m, v, steps = reference()
    mean, var = propagate(steps, m, v)
    # the reference is a sampler of the data too (a guard on the reference itself, discretisation allowed)
    # (DDIM at eta = 1 over 50 or 20 respaced steps ends at a variance of 0.20 or 0.19: not the data's)
    assert (mean - MU).abs().max() < 0.01 and (var - V).abs().max() < 0.07, (mean, var)
    x = sampler(make_path(), N_DRAWS, generator=torch.Generator().manual_seed(11), **kwargs)
    assert x.shape == (N_DRAWS, 2) and x.dtype == F64
    se_mean, se_var = (var / N_DRAWS).sqrt(), var * math.sqrt(2 / (N_DRAWS - 1))
    assert ((x.mean(0) - mean).abs() < 4 * se_mean).all(), (x.mean(0), mean, se_mean)
    assert ((x.var(0) - var).abs() < 4 * se_var).all(), (x.var(0), var, se_var)


def test_one_ddim_step_of_a_ddpm_is_song_et_al_eq_12() -> None:
    """eta = 0.3, steps 150 -> 143 and 9 -> 0, a non-Gaussian epsilon network, the same noise."""
    w = torch.tensor([[0.7, -0.4], [0.3, 0.9]], dtype=F64)

    def eps_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w) + 0.01 * t[:, None].to(x.dtype)

    path = DiffusionPath(DiffusionReverse(eps_net, DiffusionSchedule(BETAS.clone())), [2])
    x = 1.5 * torch.randn(6, 2, dtype=F64)  # x_t, the DDPM's own coordinates
    for t, t2 in [(150, 143), (9, 0)]:
        ab, ab2 = AB[t].item(), AB[t2].item()
        y = ddim(path, x=x / math.sqrt(ab), times=[s_of(t), s_of(t2)], eta=0.3,
                 generator=torch.Generator().manual_seed(5))
        z = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
        tt = torch.full((6,), t, dtype=torch.long)
        e = eps_net(x, tt)
        ref = song_eq12(z, (ab, ab2), 0.3, (x - math.sqrt(1 - ab) * e) / math.sqrt(ab), e)
        torch.testing.assert_close(y * math.sqrt(ab2), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_one_ddim_step_of_a_linear_path_is_song_et_al_eq_12(sigma_min) -> None:
    """eta = 0.3 on x_t = t x_1 + (1 - (1 - sigma_min) t) x_0 (a = t != 1), a non-Gaussian velocity."""
    w = torch.tensor([[0.5, -0.8], [0.2, 0.6]], dtype=F64)

    def vel(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w) * (1 + t[:, None]) + 0.3

    path = LinearPath(vel, [2], sigma_min=sigma_min, dtype=F64)
    x = torch.randn(6, 2, dtype=F64)
    for t, t2 in [(0.3, 0.55), (0.0, 0.2), (0.8, 1.0)]:
        out = ddim(path, x=x, times=[t, t2], eta=0.3, generator=torch.Generator().manual_seed(4))
        z = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
        v = vel(x, torch.full((6,), t, dtype=F64))
        # from x = t x1 + b x0 and v = x1 - (1 - sigma_min) x0: x0 = x - t v, x1 = v + (1 - sigma_min) x0
        eps = x - t * v
        x1 = v + (1 - sigma_min) * eps
        b, b2 = 1 - (1 - sigma_min) * t, 1 - (1 - sigma_min) * t2
        ref = song_eq12_general(z, (t, b), (t2, b2), 0.3, x1, eps)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_one_euler_maruyama_step_of_a_ddpm_is_the_reverse_ve_sde() -> None:
    """The default diffusion: y' = y + 2 s h score + sqrt(2 s h) z, score = -eps/s, s falling by h (the reverse SDE
    of dy = sqrt(d[s^2]/ds) dw; a halved diffusion keeps the marginals, so the moments above cannot see it)."""
    w = torch.tensor([[0.7, -0.4], [0.3, 0.9]], dtype=F64)

    def eps_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w) + 0.01 * t[:, None].to(x.dtype)

    path = DiffusionPath(DiffusionReverse(eps_net, DiffusionSchedule(BETAS.clone())), [2])
    x = 1.5 * torch.randn(6, 2, dtype=F64)
    t, t2 = 150, 143
    s, s2 = s_of(t), s_of(t2)
    out = euler_maruyama(path, x=x / math.sqrt(AB[t].item()), times=[s, s2, 0.0],
                         generator=torch.Generator().manual_seed(6))
    z = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(6))
    y, h = x / math.sqrt(AB[t].item()), s - s2
    y2 = y - 2 * s * h * eps_net(x, torch.full((6,), t, dtype=torch.long)) / s + math.sqrt(2 * s * h) * z
    # the last step (to s = 0) is the noiseless Euler step y - s' eps
    ref = y2 - s2 * eps_net(y2 * math.sqrt(AB[t2].item()), torch.full((6,), t2, dtype=torch.long))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


# D1: scalar data (features_shape []) -----------------------------------------------------------------------------

B_LIN, C_LIN = 0.4, 0.3  # v(x, t) = B x + C t: x_1 = e^B x_0 + C (e^B - 1 - B) / B^2


class ScalarVelocity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1).double()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.stack([x, t.to(x.dtype)], 1)).squeeze(1)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_scalar_data_log_density_is_the_closed_form_push_forward(trace) -> None:
    """features_shape []: log p(x) of the linear flow against N(C (e^B - 1 - B)/B^2, e^{2B}) (Hutchinson's
    estimate is exact in one dimension: a Rademacher probe squared is 1)."""
    p = FlowMatching(lambda x, t: B_LIN * x + C_LIN * t, [], likelihood_steps=40, trace=trace)
    x = torch.randn(7, dtype=F64) * 2
    loc = C_LIN * (math.exp(B_LIN) - 1 - B_LIN) / B_LIN**2
    ref = torch.distributions.Normal(torch.tensor(loc, dtype=F64), torch.tensor(math.exp(B_LIN), dtype=F64)).log_prob(x)
    lp = p.get_log_prob({"x": x})
    assert lp.shape == (7,)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_scalar_data_losses_train(coupling) -> None:
    """Both couplings on x of shape (N,): one finite loss per row and a finite, non-zero gradient."""
    p = FlowMatching(ScalarVelocity(), [])
    loss = flow_matching_loss(p, coupling=coupling).eval({"x": torch.randn(16, dtype=F64)})
    assert loss.shape == (16,) and torch.isfinite(loss).all()
    loss.mean().backward()
    grads = [q.grad for q in p.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_scalar_velocity_error_is_the_squared_difference() -> None:
    p = FlowMatching(lambda x, t: B_LIN * x + C_LIN * t, [])
    q = FlowInterpolant(0.1, data_var="x")
    x0, x1, t = torch.randn(5, dtype=F64), torch.randn(5, dtype=F64), torch.rand(5, dtype=F64)
    xt = t * x1 + (1 - 0.9 * t) * x0
    got = VelocityError(p, q).eval({"x_0": x0, "x": x1, "x_t": xt, "t": t})
    torch.testing.assert_close(got, (B_LIN * xt + C_LIN * t - (x1 - 0.9 * x0)) ** 2)


def test_scalar_ot_coupling_is_the_sorted_pairing() -> None:
    """In one dimension the squared-distance OT plan pairs the data and the noise in rank order."""
    x1 = torch.randn(12, dtype=F64)
    x0 = OTCoupling().sample({"x_1": x1})["x_0"]
    assert x0.shape == (12,) and x0.dtype == F64
    assert torch.equal(x0.argsort(), x1.argsort())


# D2: a given start x ---------------------------------------------------------------------------------------------

SAMPLER_CALLS = [(ancestral, {}), (ddim, {"eta": 0.5}), (euler, {}), (heun, {}), (euler_maruyama, {})]


def small_ddpm() -> DiffusionPath:
    s = DiffusionSchedule(torch.linspace(1e-3, 0.2, 5, dtype=F64))
    return DiffusionPath(DiffusionReverse(lambda x, t: 0.1 * x, s), [2])


@pytest.mark.parametrize(("sampler", "kwargs"), SAMPLER_CALLS, ids=[s.__name__ for s, _ in SAMPLER_CALLS])
@pytest.mark.parametrize(("x", "n", "message"), [
    (torch.zeros(3, 5, dtype=F64), None, r"x \(the start\) must have shape \(N, 2\).*got \(3, 5\)"),
    (torch.zeros(3, dtype=F64), None, r"x \(the start\) must have shape \(N, 2\).*got \(3,\)"),
    (torch.zeros(3, 2, dtype=torch.long), None, "x \\(the start\\) must be a floating tensor, got torch.int64"),
    (torch.zeros(3, 2, dtype=F64), 5, "n=5 but the start x has 3 rows"),
    (torch.tensor([[0.0, 0.0], [0.0, math.nan]], dtype=F64), None, "the start x holds nan at row 1, column 1"),
    ([[0.0, 0.0]], None, "x \\(the start\\) must be a torch.Tensor, got list"),
], ids=["width", "1-d", "integer", "n-rows", "nan", "list"])
def test_a_given_start_is_checked_against_the_path(sampler, kwargs, x, n, message) -> None:
    path = small_ddpm() if sampler is ancestral else LinearPath(lambda x, t: -x, [2], dtype=F64)
    with pytest.raises(ValueError, match=f"^{sampler.__name__}: {message}"):
        sampler(path, n, None if sampler is ancestral else 3, x=x, **kwargs)


def test_a_given_start_of_the_right_shape_runs_and_nan_passes_without_validation() -> None:
    """Existing good behaviour kept: n equal to the rows, a guided path; validation off lets NaN through."""
    path = LinearPath(lambda x, t: -x, [2], dtype=F64)
    assert euler(path, 3, 2, x=torch.zeros(3, 2, dtype=F64)).shape == (3, 2)
    assert euler(guided(path, path, 2.0), None, 2, x=torch.zeros(4, 2, dtype=F64)).shape == (4, 2)
    with pytest.raises(ValueError, match=r"^heun: x \(the start\) must have shape \(N, 2\)"):
        heun(guided(path, path, 2.0), None, 2, x=torch.zeros(4, 3, dtype=F64))
    with validation(False):
        assert euler(path, None, 2, x=torch.full((2, 2), math.nan, dtype=F64)).isnan().all()


# D3: OTCoupling's data -------------------------------------------------------------------------------------------

def test_ot_coupling_checks_its_data_as_noise_like() -> None:
    ot = OTCoupling()
    # integer data: noise in the default dtype, as NoiseLike draws it (randn_like raised NotImplementedError)
    x0 = ot.sample({"x_1": torch.ones(4, 2, dtype=torch.long)})["x_0"]
    assert x0.shape == (4, 2) and x0.dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match=r"batch_n=3 but x_1 has 4 rows"):
        ot.sample({"x_1": torch.randn(4, 2)}, batch_n=3)
    bad = torch.randn(4, 2)
    bad[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"x_1'\] holds nan at row 2, column 1; optimal transport needs finite"):
        ot.sample({"x_1": bad})
    with pytest.raises(ValueError, match="pairs noise with the minibatch of x_1, got a 0-d tensor"):
        ot.sample({"x_1": torch.tensor(1.0)})
    # the OT loss on integer data reaches the model's own data check (a ValueError naming x)
    p = FlowMatching(lambda x, t: -x.float(), [2])
    with pytest.raises(ValueError, match="x must be a floating tensor, got torch.int64"):
        flow_matching_loss(p, coupling="ot").eval({"x": torch.ones(4, 2, dtype=torch.long)})


# D4: numbers -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma_min", [2.0, math.nan, -0.1, 1.0, "0.1", True])
def test_sigma_min_is_checked_by_the_interpolant_and_the_model(sigma_min) -> None:
    with pytest.raises(ValueError, match=r"FlowInterpolant: sigma_min \(the noise left at t = 1\) must be a number"):
        FlowInterpolant(sigma_min=sigma_min)
    with pytest.raises(ValueError, match=r"FlowMatching: sigma_min \(the noise left at t = 1\) must be a number"):
        FlowMatching(lambda x, t: -x, [2], sigma_min=sigma_min)


@pytest.mark.parametrize("eta", ["0.5", True, math.nan, 1.5, -0.1, None])
def test_ddim_eta_is_a_number_in_the_unit_interval(eta) -> None:
    with pytest.raises(ValueError, match=r"ddim: eta must lie in \[0, 1\] \(a number"):
        ddim(LinearPath(lambda x, t: -x, [2]), 3, 4, eta=eta)


def test_ddim_eta_as_a_0d_tensor_or_numpy_number_is_its_value() -> None:
    """Existing good behaviour kept."""
    path = LinearPath(lambda x, t: -x, [2], dtype=F64)
    ref = ddim(path, 3, 4, eta=0.5, generator=torch.Generator().manual_seed(2))
    for eta in (torch.tensor(0.5), np.float64(0.5)):
        torch.testing.assert_close(ddim(path, 3, 4, eta=eta, generator=torch.Generator().manual_seed(2)), ref)


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5, "1"])
def test_euler_maruyama_checks_the_diffusion_value(value) -> None:
    path = LinearPath(lambda x, t: -x, [2], dtype=F64)
    with pytest.raises(ValueError, match=r"euler_maruyama: diffusion\(tau\) must be a finite number >= 0, got .* at "
                                         r"tau=0.0"):
        euler_maruyama(path, 3, 4, diffusion=lambda t: value)
    # a 0-d tensor is its value (existing good behaviour)
    assert euler_maruyama(path, 3, 4, diffusion=lambda t: torch.tensor(1 - t)).shape == (3, 2)


def test_a_tensor_diffusion_keeps_its_gradient_and_its_rows() -> None:
    """``euler_maruyama``'s diffusion given as a tensor stays a tensor (its float conversion lost the gradient of a
    learnable gamma and refused a per-row one): the draws are those of the number, with d/dgamma equal to the finite
    difference of the draws' sum, and a (N, 1) gamma of equal rows gives the same draws; a negative one is named."""
    path = LinearPath(lambda x, t: -x, [3], dtype=torch.float64)
    x0 = torch.randn(4, 3, dtype=torch.float64)

    def draws(gamma) -> torch.Tensor:
        return euler_maruyama(path, x=x0, n_steps=4, diffusion=lambda t: gamma, grad=True,
                              generator=torch.Generator().manual_seed(5))

    g = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    out = draws(g)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), draws(0.3), rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(out.sum(), g)
    h = 1e-6
    numeric = (draws(0.3 + h).sum() - draws(0.3 - h).sum()) / (2 * h)
    assert math.isclose(grad.item(), numeric.item(), rel_tol=1e-6, abs_tol=1e-9)
    torch.testing.assert_close(draws(torch.full((4, 1), 0.3, dtype=torch.float64)).detach(), draws(0.3),
                               rtol=0, atol=1e-12)
    with validation(True), pytest.raises(ValueError, match=r"euler_maruyama: diffusion\(tau\) must be finite"):
        draws(torch.full((4, 1), -0.3, dtype=torch.float64))


def test_sigma_min_may_be_a_0d_tensor() -> None:
    """``sigma_min`` as a 0-d tensor or array is its number in every flow path (FlowMatching and FlowInterpolant
    refused one after their range check was added; LinearPath never took one)."""
    for given in (torch.tensor(0.1), np.float64(0.1), np.array(0.1)):
        assert LinearPath(lambda x, t: x, [2], sigma_min=given).sigma_min == pytest.approx(0.1)
        assert FlowInterpolant(sigma_min=given).sigma_min == pytest.approx(0.1)
        FlowMatching(nn.Linear(3, 2), [2], sigma_min=given)
    with pytest.raises(ValueError, match=r"FlowMatching: sigma_min .* in \[0, 1\)"):
        FlowMatching(nn.Linear(3, 2), [2], sigma_min=torch.tensor([0.1, 0.2]))


# D5: a path's features_shape, a velocity that ignores x, TimeUniform's density off its support ---------------------

class UserPath(GaussianPath):
    """A user's path (not one of kizuna's): flow matching's straight line with the velocity -x (LinearPath's
    predictions for it, written out), its features_shape as given."""

    clean_evaluable, start, end = True, 0.0, 1.0

    def __init__(self, features_shape) -> None:
        self.features_shape = features_shape

    def times(self, n_steps: int | None) -> list[float]:
        return [i / n_steps for i in range(n_steps + 1)]

    def coefficients(self, tau: float) -> tuple[float, float]:
        return tau, 1 - tau

    def rates(self, tau: float) -> tuple[float, float]:
        return 1.0, -1.0

    def predict(self, x: torch.Tensor, tau: float) -> Prediction:
        v = -x
        return Prediction(x + (1 - tau) * v, x - tau * v, v)


@pytest.mark.parametrize(("sampler", "kwargs"), [(ddim, {"eta": 0.5}), (euler, {}), (heun, {}),
                                                 (euler_maruyama, {"diffusion": lambda t: 1 - t})],
                         ids=["ddim", "euler", "heun", "euler_maruyama"])
def test_a_user_paths_features_shape_follows_the_built_in_paths_rule(sampler, kwargs) -> None:
    """A user's path whose features_shape is a bare 2 (not (2,)): a ValueError naming it, as the built-in paths
    give (tuple() of it raised a raw TypeError in the start's check); sizes as check_shape takes them; a proper
    shape still runs, draw for draw as LinearPath with the same velocity."""
    x = torch.randn(3, 2, dtype=F64)
    with pytest.raises(ValueError, match=rf"^{sampler.__name__}: UserPath.features_shape must be a sequence of sizes "
                                         r"\(the shape of one draw, e.g. \[2\] or \(2,\).*got 2 \(int\)"):
        sampler(UserPath(2), None, 3, x=x, **kwargs)
    with pytest.raises(ValueError, match=rf"^{sampler.__name__}: UserPath.features_shape\[0\] must be an integer >= 1"):
        sampler(UserPath([-2]), None, 3, x=x, **kwargs)
    for shape in ((2,), [2], torch.Size([2])):
        got = sampler(UserPath(shape), None, 3, x=x, generator=torch.Generator().manual_seed(1), **kwargs)
        ref = sampler(LinearPath(lambda z, t: -z, [2], dtype=F64), None, 3, x=x,
                      generator=torch.Generator().manual_seed(1), **kwargs)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-15)


@pytest.mark.parametrize("build", [lambda s: LinearPath(lambda x, t: -x, s),
                                   lambda s: ScorePath(lambda x, i: -x, [1.0], s),
                                   lambda s: small_ddpm_of(s)], ids=["LinearPath", "ScorePath", "DiffusionPath"])
def test_a_built_in_paths_features_shape_that_is_a_bare_number_is_named(build) -> None:
    """LinearPath(v, 2): a ValueError naming features_shape (it was tuple()'s raw TypeError), the same rule as a user's
    path meets in the samplers."""
    name = type(build([2])).__name__
    with pytest.raises(ValueError, match=rf"^{name}: features_shape must be a sequence of sizes .*got 2 \(int\)"):
        build(2)
    with pytest.raises(ValueError, match=rf"^{name}: features_shape must be a sequence of sizes"):
        build(torch.tensor(2))
    assert build(torch.Size([2, 3])).features_shape == (2, 3)


def small_ddpm_of(features_shape) -> DiffusionPath:
    s = DiffusionSchedule(torch.linspace(1e-3, 0.2, 5, dtype=F64))
    return DiffusionPath(DiffusionReverse(lambda x, t: 0.1 * x, s), features_shape)


C_SHIFT = torch.tensor([0.5, -1.2], dtype=F64)


class ConstantVelocity(nn.Module):
    """v(x, t) = c with c a parameter: the output requires grad, but not through x."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Parameter(C_SHIFT.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.c.expand_as(x)


@pytest.mark.parametrize(("trace", "n_probes"), [("exact", 1), ("hutchinson", 1), ("hutchinson", 3)])
def test_a_velocity_that_ignores_x_has_divergence_zero(trace, n_probes) -> None:
    """dx/dt = c moves x_1 back to x_0 = x_1 - c with no change of volume: log p(x) is the standard normal log-density
    of x - c exactly (autograd raised "appears to not have been used in the graph" for a velocity of its parameters
    alone); its gradient in c is sum_rows (x - c)."""
    velocity = ConstantVelocity()
    p = FlowMatching(velocity, [2], likelihood_steps=5, trace=trace, n_probes=n_probes)
    x = torch.randn(6, 2, dtype=F64) * 2
    ref = torch.distributions.Normal(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)).log_prob(x - C_SHIFT).sum(1)
    lp = p.get_log_prob({"x": x})
    torch.testing.assert_close(lp.detach(), ref, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(lp.sum(), velocity.c)
    torch.testing.assert_close(grad, (x - C_SHIFT).sum(0), rtol=0, atol=1e-12)
    with torch.no_grad():  # the log-likelihood's usual context: the divergence keeps its own graph
        torch.testing.assert_close(p.get_log_prob({"x": x}), ref, rtol=0, atol=1e-12)


class NoGradVelocity(nn.Module):
    """A linear velocity computed without autograd: its divergence (the trace of W) is not 0."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2).double()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.lin(x)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_a_velocity_without_a_graph_is_named_not_given_divergence_zero(trace) -> None:
    """Under torch.inference_mode(), or with a velocity that runs under no_grad (or of t alone, or a constant), the
    output has no graph: the divergence cannot be computed, and taking it as 0 gave log p(x) silently off (a linear
    velocity: -5.3975 where -5.1708 is right). A named error, and inference_mode's says to use no_grad."""
    lin = nn.Linear(2, 2).double()
    p = FlowMatching(lambda x, t: lin(x), [2], likelihood_steps=3, trace=trace)
    x = torch.randn(4, 2, dtype=F64)
    named = r"needs autograd, but torch.inference_mode\(\) is on: compute the log-likelihood under torch.no_grad"
    with torch.inference_mode(), pytest.raises(ValueError, match=named):
        p.get_log_prob({"x": x})
    for velocity in (NoGradVelocity(), lambda x, t: C_SHIFT.expand_as(x), lambda x, t: t[:, None] * C_SHIFT):
        q = FlowMatching(velocity, [2], likelihood_steps=3, trace=trace)
        with pytest.raises(ValueError, match=r"needs autograd, but the velocity's output has no autograd graph"):
            q.get_log_prob({"x": x})


def test_time_uniform_log_prob_off_its_support_is_scipys() -> None:
    """U[0, 1]'s log-density as scipy.stats.uniform.logpdf: 0 on the closed interval, -inf outside (torch's Uniform
    too, which also gives -inf at its open end 1 and at NaN), NaN at NaN (it was 0: NaN fails both comparisons).
    With validation on, NaN or a value outside is a ValueError naming it, as a torch family's support check."""
    u = TimeUniform()
    values = [math.nan, -0.5, 0.0, 0.25, 1.0, 1.5, math.inf, -math.inf]
    t = torch.tensor(values, dtype=F64)
    ref = torch.from_numpy(stats.uniform.logpdf(np.array(values)))
    with validation(False):
        torch.testing.assert_close(u.get_log_prob({"t": t}), ref, equal_nan=True, rtol=0, atol=0)
    off, zero, one = torch.tensor([-0.5, 1.5, math.inf, -math.inf], dtype=F64), torch.zeros((), dtype=F64), \
        torch.ones((), dtype=F64)
    with validation(False):
        torch.testing.assert_close(u.get_log_prob({"t": off}),
                                   torch.distributions.Uniform(zero, one, validate_args=False).log_prob(off))
    with validation(True):
        torch.testing.assert_close(u.get_log_prob({"t": t[2:5]}), torch.zeros(3, dtype=F64), rtol=0, atol=0)
        with pytest.raises(ValueError, match=r"^u\(t\): x_dict\['t'\] holds nan at row 1 \(not a number in the support "
                                             r"\[0, 1\] of TimeUniform\); remove or impute it"):
            u.get_log_prob({"t": torch.tensor([0.5, math.nan])})
        with pytest.raises(ValueError, match=r"^u\(t\): value of t is outside the support \[0, 1\] of TimeUniform"):
            u.get_log_prob({"t": torch.tensor([0.5, 1.5])})


def test_time_uniform_scores_integer_times() -> None:
    """The integer times 0 and 1 score 0 in the default dtype, 2 -inf (a long zeros tensor failed on its -inf fill)."""
    u = TimeUniform()
    torch.testing.assert_close(u.get_log_prob({"t": torch.tensor([0, 1])}), torch.zeros(2))
    with validation(False):
        torch.testing.assert_close(u.get_log_prob({"t": torch.tensor([1, 2])}), torch.tensor([0.0, -math.inf]))
