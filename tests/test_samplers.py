"""The sampler layer (kizuna.samplers.paths / integrators) for DDPM, NCSN and flow-matching paths.

References: exact predictors of Gaussian and Gaussian-mixture data, written here from the closed
form of the noised marginal N(a mu_k, a^2 v + b^2) (posterior responsibilities for a mixture), for
every path; DDIM with eta = 1 against the DDPM's own reverse kernel (DiffusionReverse with the
posterior variance) driven by the same noise; guidance at weight 0 against the unconditional sampler,
bit for bit; sample moments at five standard errors plus the stated discretisation allowance; 2-D
mixtures by MMD against the data (below 3x the MMD of two data samples of the same size).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kizuna.distributions import DDPM, DiffusionReverse, DiffusionSchedule
from kizuna.samplers import (
    DiffusionPath,
    LinearPath,
    ScorePath,
    ancestral,
    ddim,
    euler,
    euler_maruyama,
    guided,
    heun,
    natural_diffusion,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


class Mixture:
    """Isotropic Gaussian mixture data: means (K, D), one variance v, equal weights."""

    def __init__(self, means: torch.Tensor, var: float) -> None:
        self.means, self.var = means.to(F64), var

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        k = torch.randint(0, len(self.means), (n,), generator=g)
        return self.means[k] + math.sqrt(self.var) * torch.randn(n, self.means.shape[1], generator=g, dtype=F64)

    def predict(self, x: torch.Tensor, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
        """E[x_data | x] and E[eps | x] for x = a x_data + b eps."""
        s2 = a * a * self.var + b * b
        diff = x[:, None, :] - a * self.means[None]  # (n, K, D)
        r = torch.softmax(-diff.pow(2).sum(-1) / (2 * s2), 1)[..., None]
        eps = (r * b * diff / s2).sum(1)
        x0 = (r * (self.means[None] + a * self.var * diff / s2)).sum(1)
        return x0, eps


GAUSS = Mixture(torch.tensor([[1.0, -0.5]]), 0.25)
RING = Mixture(torch.tensor([[2.0 * math.cos(k * math.pi / 2), 2.0 * math.sin(k * math.pi / 2)] for k in range(4)]),
               0.09)


def ddpm_path(data: Mixture, T: int = 200, variance: str = "beta") -> DiffusionPath:
    s = DiffusionSchedule(DiffusionSchedule.linear(T, 1e-3, 0.1).betas.double())
    ab = s.alpha_bar()

    def eps_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ab[t[0]].sqrt().item()
        return data.predict(x, a, math.sqrt(1 - a * a))[1]

    return DiffusionPath(DiffusionReverse(eps_net, s, variance=variance), [2])


def score_path(data: Mixture) -> ScorePath:
    sigmas = torch.logspace(math.log10(20.0), math.log10(0.01), 60, dtype=F64)

    def score(x: torch.Tensor, i: int) -> torch.Tensor:
        sigma = sigmas[i].item()
        return -data.predict(x, 1.0, sigma)[1] / sigma

    return ScorePath(score, sigmas, [2], dtype=F64)


def flow_path(data: Mixture) -> LinearPath:
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x1, x0 = data.predict(x, t[0].item(), 1 - t[0].item())
        return x1 - x0

    return LinearPath(velocity, [2], dtype=F64)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 0.5) -> float:
    k = lambda a, b: torch.exp(-torch.cdist(a, b).pow(2) / bandwidth)  # noqa: E731
    return (k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()).item()


FM_NOISE = lambda t: 1 - t  # noqa: E731  the natural diffusion of the linear path is infinite at t = 0
CASES = [  # (path factory, sampler, n_steps, kwargs)
    (ddpm_path, ancestral, None, {}), (ddpm_path, ddim, 50, {"eta": 0.0}), (ddpm_path, ddim, None, {"eta": 1.0}),
    (ddpm_path, euler, 100, {}), (ddpm_path, heun, 25, {}), (ddpm_path, euler_maruyama, 200, {}),
    (score_path, euler, 60, {}), (score_path, heun, 30, {}), (score_path, euler_maruyama, 60, {}),
    (score_path, ddim, 60, {"eta": 0.5}),
    (flow_path, euler, 50, {}), (flow_path, heun, 20, {}), (flow_path, ddim, 200, {"eta": 1.0}),
    (flow_path, euler_maruyama, 100, {"diffusion": FM_NOISE}),
]
IDS = [f"{f.__name__}-{s.__name__}-{kw}" for f, s, _, kw in CASES]


@pytest.mark.parametrize(("factory", "sampler", "n_steps", "kwargs"), CASES, ids=IDS)
def test_gaussian_moments(factory, sampler, n_steps, kwargs) -> None:
    """N((1, -0.5), 0.25 I): mean within 5 SE, variance within 5 SE + 0.02 (discretisation)."""
    n = 4000
    x = sampler(factory(GAUSS), n, n_steps, generator=torch.Generator().manual_seed(1), **kwargs)
    assert x.shape == (n, 2) and x.dtype == F64
    se_mean, se_var = math.sqrt(0.25 / n), 0.25 * math.sqrt(2 / n)
    assert (x.mean(0) - GAUSS.means[0]).abs().max() < 5 * se_mean, x.mean(0)
    assert (x.var(0) - 0.25).abs().max() < 5 * se_var + 0.02, x.var(0)


@pytest.mark.parametrize(("factory", "sampler", "n_steps", "kwargs"), CASES, ids=IDS)
def test_ring_mmd(factory, sampler, n_steps, kwargs) -> None:
    """Four modes (sd 0.3) on a circle: MMD^2 to the data below 3x that of two data samples."""
    g = torch.Generator().manual_seed(2)
    x = sampler(factory(RING), 1500, n_steps, generator=g, **kwargs)
    reference = sum(mmd2(RING.sample(1500, g), RING.sample(1500, g)) for _ in range(3)) / 3
    assert mmd2(x, RING.sample(1500, g)) < 3 * reference


def test_ddim_eta_one_is_the_ddpm_reverse_kernel() -> None:
    """Over all steps, DDIM with eta = 1 and the DDPM's ancestral kernel (posterior variance) give the
    same chain for the same noise: equal in law, step by step."""
    path = ddpm_path(GAUSS, T=50, variance="posterior")
    a = ddim(path, 300, None, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = ancestral(path, 300, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="every step"):
        ancestral(path, 3, n_steps=10)


def test_euler_is_ddim_eta_zero_for_a_ddpm() -> None:
    path = ddpm_path(RING, T=100)
    x = path.prior(200, torch.Generator().manual_seed(4))
    torch.testing.assert_close(euler(path, x=x, n_steps=20), ddim(path, x=x, n_steps=20), rtol=1e-10, atol=1e-10)


class CondEps(nn.Module):
    """A conditional noise predictor eps(x, t, y) with y = -1 the null label."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)
        self.emb = nn.Embedding(3, 2, dtype=F64)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * (t.to(x.dtype)[:, None] / 50) + self.emb(y + 1)


@pytest.mark.parametrize("sampler", [ancestral, ddim, euler, heun, euler_maruyama])
def test_guidance_weight_zero_is_the_unconditional_sampler(sampler) -> None:
    s = DiffusionSchedule(DiffusionSchedule.linear(30, 1e-3, 0.2).betas.double())
    rev = DiffusionReverse(CondEps(), s, context_var=["y"])
    y, null = torch.tensor([0, 1, 1, 0]), torch.full((4,), -1)
    cond, uncond = DiffusionPath(rev, [2], {"y": y}), DiffusionPath(rev, [2], {"y": null})
    extra = {"eta": 0.7} if sampler is ddim else {}
    with torch.no_grad():
        run = lambda p: sampler(p, 4, None, generator=torch.Generator().manual_seed(5), **extra)  # noqa: E731
        assert torch.equal(run(guided(cond, uncond, 0.0)), run(uncond))
        torch.testing.assert_close(run(guided(cond, uncond, 1.0)), run(cond))
        assert not torch.allclose(run(guided(cond, uncond, 3.0)), run(cond))


class CondEpsLearned(CondEps):
    """eps(x, t, y) and a variance interpolation v(x, t, y) in [-1, 1] that depends on the label."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([super().forward(x, t, y), torch.tanh(self.emb(y + 1) + 0.1 * x)], 1)


def test_guidance_with_a_learned_variance_keeps_the_conditional_models_variance() -> None:
    """w = 1 is the conditional sampler also with variance="learned": the step's variance came from the
    unconditional model at every w (GLIDE keeps the conditional one's); w = 0 stays the unconditional sampler."""
    s = DiffusionSchedule(DiffusionSchedule.linear(30, 1e-3, 0.2).betas.double())
    torch.manual_seed(0)
    rev = DiffusionReverse(CondEpsLearned(), s, context_var=["y"], variance="learned")
    y, null = torch.tensor([0, 1, 1, 0]), torch.full((4,), -1)
    cond, uncond = DiffusionPath(rev, [2], {"y": y}), DiffusionPath(rev, [2], {"y": null})
    with torch.no_grad():
        run = lambda p: ancestral(p, 4, None, generator=torch.Generator().manual_seed(5))  # noqa: E731
        assert torch.equal(run(guided(cond, uncond, 0.0)), run(uncond))
        torch.testing.assert_close(run(guided(cond, uncond, 1.0)), run(cond), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(run(cond), run(uncond))


def test_guided_ddpm_generates_each_class() -> None:
    """Guidance on exact class-conditional scores of two separated Gaussians puts draws in the named class."""
    data = {0: Mixture(torch.tensor([[-2.0, 0.0]]), 0.1), 1: Mixture(torch.tensor([[2.0, 0.0]]), 0.1)}
    both = Mixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.1)
    s = DiffusionSchedule(DiffusionSchedule.linear(100, 1e-3, 0.1).betas.double())
    ab = s.alpha_bar()

    def eps_net(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = ab[t[0]].sqrt().item()
        out = both.predict(x, a, math.sqrt(1 - a * a))[1]
        for k, d in data.items():
            out = torch.where((y == k)[:, None], d.predict(x, a, math.sqrt(1 - a * a))[1], out)
        return out

    rev = DiffusionReverse(eps_net, s, context_var=["y"])
    y = torch.tensor([0] * 200 + [1] * 200)
    path = guided(DiffusionPath(rev, [2], {"y": y}), DiffusionPath(rev, [2], {"y": torch.full((400,), -1)}), 2.0)
    x = ddim(path, 400, 25, generator=torch.Generator().manual_seed(6))
    assert ((x[:, 0] > 0).long() == y).float().mean() > 0.99


def test_ddpm_sample_runs_through_the_layer_and_paths_are_checked() -> None:
    s = DiffusionSchedule(DiffusionSchedule.linear(20, 1e-3, 0.2).betas.double())
    rev = DiffusionReverse(lambda x, t: 0.1 * x, s)
    p = DDPM(rev, [2])
    torch.manual_seed(7)
    a = p.sample(batch_n=5)["x_0"]
    torch.manual_seed(7)
    b = ancestral(p.path(), 5)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="eta must lie in"):
        ddim(p.path(), 2, eta=1.5)
    with pytest.raises(ValueError, match="not one of the trained steps"):
        p.path().predict(torch.zeros(1, 2, dtype=F64), 0.123)
    with pytest.raises(ValueError, match="pass diffusion="):
        natural_diffusion(LinearPath(lambda x, t: x, [2]), 0.0)
    with pytest.raises(ValueError, match="exceeds the 20 steps"):
        ddim(p.path(), 2, n_steps=21)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ScorePath(lambda x, i: x, [0.1, 1.0], [2])


def test_step_counts_and_levels_are_named_as_given() -> None:
    path = ScorePath(lambda x, i: -x, [3.0, 2.0, 1.0], [2])
    with pytest.raises(ValueError, match="n_steps=5 exceeds the model's 3 noise levels"):
        euler(path, 2, n_steps=5)
    assert euler(path, 2, n_steps=3).shape == (2, 2)
    from kizuna.samplers import annealed_langevin_dynamics

    with pytest.raises(ValueError, match=r"positive, finite and strictly decreasing, got \[1.0, 0.0\]"):
        annealed_langevin_dynamics(lambda x, i: -x, torch.zeros(2, 2), [1.0, 0.0])


def flow_path_sigma(data: Mixture, sigma_min: float) -> LinearPath:
    """Flow matching's path with noise ``sigma_min`` left at t = 1: x = t x1 + (1 - (1 - sigma_min) t) x0, its exact
    velocity E[x1 - (1 - sigma_min) x0 | x] from the Gaussian posterior."""
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tau = t[0].item()
        x1, x0 = data.predict(x, tau, 1 - (1 - sigma_min) * tau)
        return x1 - (1 - sigma_min) * x0

    return LinearPath(velocity, [2], sigma_min=sigma_min, dtype=F64)


def test_a_path_with_sigma_min_reads_back_its_velocity() -> None:
    """With sigma_min > 0 the prediction (x0, eps) of a linear path and its rates give back the network's velocity at
    every time, the ends included (every other sampler test has sigma_min = 0, where the rates' and the clean point's
    sigma_min terms vanish)."""
    path = flow_path_sigma(GAUSS, 0.5)
    x = torch.randn(50, 2, dtype=F64, generator=torch.Generator().manual_seed(6))
    for tau in (0.0, 0.3, 0.7, 1.0):
        t = torch.full((50,), tau, dtype=F64)
        torch.testing.assert_close(path.velocity(x, tau, path.predict(x, tau)), path.v(x, t), rtol=1e-10, atol=1e-10)
        a, b = path.coefficients(tau)
        pred = path.predict(x, tau)
        torch.testing.assert_close(a * pred.x0 + b * pred.eps, x, rtol=1e-10, atol=1e-10)
        da, db = path.rates(tau)  # the velocity the prediction implies (a guided path of such predictions uses it)
        torch.testing.assert_close(da * pred.x0 + db * pred.eps, path.v(x, t), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("sampler", "n_steps", "kwargs"), [(euler, 100, {}), (heun, 30, {}),
                                                             (ddim, 200, {"eta": 1.0})], ids=["euler", "heun", "ddim"])
def test_gaussian_moments_with_sigma_min(sampler, n_steps, kwargs) -> None:
    """N((1, -0.5), 0.25 I) through a path that leaves sigma_min = 0.5 of noise: the samples at t = 1 are
    x1 + 0.5 x0, N((1, -0.5), 0.5 I); mean within 5 SE, variance within 5 SE + 0.02."""
    n = 4000
    x = sampler(flow_path_sigma(GAUSS, 0.5), n, n_steps, generator=torch.Generator().manual_seed(1), **kwargs)
    se_mean, se_var = math.sqrt(0.5 / n), 0.5 * math.sqrt(2 / n)
    assert (x.mean(0) - GAUSS.means[0]).abs().max() < 5 * se_mean, x.mean(0)
    assert (x.var(0) - 0.5).abs().max() < 5 * se_var + 0.02, x.var(0)


def test_score_levels_given_as_numbers_are_kept_as_given() -> None:
    """[1.0, 0.5, 0.1] went through a float32 tensor: 0.1 became 0.10000000149, and a grid naming 0.1 was refused."""
    path = ScorePath(lambda x, i: -x, [1.0, 0.5, 0.1], [2])
    assert path.levels == [1.0, 0.5, 0.1]
    assert euler(path, 2, times=[1.0, 0.5, 0.1, 0.0]).shape == (2, 2)
    assert ScorePath(lambda x, i: -x, torch.tensor([1.0, 0.5, 0.1], dtype=F64), [2]).levels == [1.0, 0.5, 0.1]


def test_a_flow_path_steps_with_the_network_s_own_velocity_in_float32() -> None:
    """The velocity rebuilt from (x0, eps) divides float32 rounding by t: 0.17 off at t = 1e-6; now the network's own,
    bit for bit, and a float32 Euler run on a grid through t = 1e-6 stays within float32 rounding of float64."""
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # the exact velocity for N((1, -0.5), 0.25 I)
        tau = t[0].item()
        x1, x0 = GAUSS.predict(x.double(), tau, 1 - tau)
        return (x1 - x0).to(x.dtype)

    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 2, generator=g)
    path32 = LinearPath(velocity, [2], dtype=torch.float32)
    for tau in (1e-2, 1e-4, 1e-6):
        t = torch.full((64,), tau)
        assert torch.equal(path32.velocity(x, tau, path32.predict(x, tau)), path32.v(x, t))
    grid = [0.0, 1e-6] + [i / 20 for i in range(1, 21)]
    out32 = euler(path32, x=x.clone(), times=grid)
    out64 = euler(LinearPath(velocity, [2], dtype=F64), x=x.double(), times=grid)
    assert (out32.double() - out64).abs().max().item() < 1e-5


def test_heun_on_a_flow_evaluates_its_velocity_twice_a_step() -> None:
    """The velocity is defined at the data end, so Heun corrects the last step too: 2 n_steps evaluations (the
    docs said 2 n_steps - 1, which holds where the network is undefined at the clean end)."""
    from kizuna.distributions import FlowMatching

    calls = [0]

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return -x

    for n in (25, 10):
        calls[0] = 0
        FlowMatching(velocity, [2], n_steps=n).sample(batch_n=3)
        assert calls[0] == 2 * n


def test_sampler_arguments_are_named() -> None:
    from kizuna.distributions import FlowMatching

    path = ddpm_path(GAUSS, T=50)
    with pytest.raises(ValueError, match=r"sampler: n_steps must be an integer >= 1, got 10.0"):
        ddim(path, 2, 10.0)
    with pytest.raises(ValueError, match=r"sampler: n \(draws\) must be an integer >= 0, got -1"):
        ddim(path, -1, 10)
    with pytest.raises(ValueError, match=r"FlowMatching: n_steps must be an integer >= 1, got 2.7"):
        FlowMatching(lambda x, t: -x, [2], n_steps=2.7)
    with pytest.raises(ValueError, match=r"FlowMatching: likelihood_steps must be an integer >= 1, got 0"):
        FlowMatching(lambda x, t: -x, [2], likelihood_steps=0)
    with pytest.raises(ValueError, match="one process over the same times"):
        guided(flow_path(GAUSS), path, 2.0)
    other = ddpm_path(GAUSS, T=60)
    with pytest.raises(ValueError, match="one process over the same times"):
        guided(path, other, 2.0)
    cond, uncond = flow_path(GAUSS), flow_path(RING)  # a guided path is the same process: nested guidance is taken
    nested = guided(guided(cond, uncond, 1.5), uncond, 2.0)
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(9))
    t = torch.full((5,), 0.5, dtype=F64)
    once = uncond.v(x, t) + 1.5 * (cond.v(x, t) - uncond.v(x, t))
    torch.testing.assert_close(nested.velocity(x, 0.5), uncond.v(x, t) + 2.0 * (once - uncond.v(x, t)))


def test_guided_flow_paths_combine_the_velocities() -> None:
    """Guidance of two flow paths: v_w = v_u + w (v_c - v_u), the velocity the combined prediction implies."""
    cond, uncond = flow_path(GAUSS), flow_path(RING)
    x = torch.randn(20, 2, dtype=F64, generator=torch.Generator().manual_seed(8))
    for tau in (0.0, 0.4, 0.9):
        t = torch.full((20,), tau, dtype=F64)
        expected = uncond.v(x, t) + 2.5 * (cond.v(x, t) - uncond.v(x, t))
        g = guided(cond, uncond, 2.5)
        torch.testing.assert_close(g.velocity(x, tau, g.predict(x, tau)), expected, rtol=1e-10, atol=1e-10)
        pred = g.predict(x, tau)
        da, db = g.rates(tau)
        torch.testing.assert_close(da * pred.x0 + db * pred.eps, expected, rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------ review of stop 36
@pytest.mark.parametrize("sigmas", [[float("inf"), 1.0], [float("nan")], [1.0, float("nan"), 0.5], [1.0, 2.0], []])
def test_score_path_refuses_non_finite_or_unordered_levels(sigmas) -> None:
    """An infinite or NaN level passed the order check (a comparison with NaN is False) and every draw was NaN."""
    with pytest.raises(ValueError, match="ScorePath: sigmas must be positive, finite and strictly decreasing"):
        ScorePath(lambda x, i: -x, sigmas, [2])


@pytest.mark.parametrize("sigma_min", [-1.0, float("nan"), 1.0, 2.0, True, "0.1"])
def test_linear_path_checks_sigma_min(sigma_min) -> None:
    """-1 divided by zero in DDIM's step, NaN drew NaN, 2 ran: FlowMatching's range [0, 1) is checked here too."""
    with pytest.raises(ValueError, match=r"LinearPath: sigma_min .* must be a number in \[0, 1\)"):
        LinearPath(lambda x, t: -x, [2], sigma_min=sigma_min)
    LinearPath(lambda x, t: -x, [2], sigma_min=0.0)


@pytest.mark.parametrize("make", [lambda shape: ScorePath(lambda x, i: -x, [1.0], shape),
                                  lambda shape: LinearPath(lambda x, t: -x, shape)])
def test_paths_name_a_bad_features_shape(make) -> None:
    for shape in ([-1], [0], [2.5], [2, -3]):
        with pytest.raises(ValueError, match=r"features_shape\[\d\] must be an integer >= 1"):
            make(shape)


def test_annealed_langevin_takes_numpy_steps() -> None:
    """``eps=np.float32(0.1)`` was refused as not positive: a numpy float is a number, a bool is not."""
    import numpy as np

    from kizuna.samplers import annealed_langevin_dynamics

    x0 = torch.zeros(4, 2, dtype=F64)
    runs = []
    for eps in (0.1, np.float32(0.1), np.float64(0.1)):
        g = torch.Generator().manual_seed(0)
        runs.append(annealed_langevin_dynamics(lambda x, i: -x, x0, [1.0, 0.5], float(eps) if eps == 0.1 else eps,
                                               n_steps_each=3, generator=g))
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-6, atol=1e-7)  # float32(0.1) is 0.1 to 1e-8
    torch.testing.assert_close(runs[2], runs[0])
    for bad in (True, -0.1, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="eps .* must be a positive finite number"):
            annealed_langevin_dynamics(lambda x, i: -x, x0, [1.0, 0.5], bad, n_steps_each=1)


@pytest.mark.parametrize("times, message", [
    ([0.0, float("nan"), 1.0], r"times\[1\] = nan is outside the path"),
    ([0.0, 2.0], r"times\[1\] = 2.0 is outside the path .*\[0.0, 1.0\]"),
    ([-0.5, 1.0], r"times\[0\] = -0.5 is outside the path"),
    ([0.0, 0.5, 0.5, 1.0], r"strictly .* times\[1\] = 0.5 then times\[2\] = 0.5"),
    ([1.0, 0.0], r"strictly"),
    (["a", 1.0], r"times must be numbers"),
    ([0.0], r"at least two times"),
])
def test_given_times_are_checked_against_the_path(times, message) -> None:
    """A flow-matching path runs 0 -> 1: NaN drew NaN, [0, 2] integrated past the data, a repeated time took a step of
    zero; each is named. Times within the path, in order, sample as before (the default grid given explicitly gives
    the default sampler's draws to the bit)."""
    path = LinearPath(lambda x, t: -x, [2], dtype=F64)
    with pytest.raises(ValueError, match=message):
        euler(path, 2, times=times)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(euler(path, 4, n_steps=5, generator=g1),
                               euler(path, 4, times=[i / 5 for i in range(6)], generator=g2), rtol=0, atol=0)


def test_given_times_of_a_noise_level_path_fall_to_zero() -> None:
    path = ScorePath(lambda x, i: -x, [2.0, 1.0, 0.5], [2], dtype=F64)
    assert euler(path, 2, times=[2.0, 0.5, 0.0]).shape == (2, 2)
    for times in ([2.0, -1.0], [0.5, 2.0]):
        with pytest.raises(ValueError, match="sampler: times"):
            euler(path, 2, times=times)


def test_a_ddpm_paths_own_times_as_a_float32_tensor_are_its_steps() -> None:
    """Given times are taken as Python floats; the path's own times as a float32 tensor (rounded) were then refused
    as no trained step. Each is the trained step's s_t up to float32 rounding, and DDIM over them equals DDIM over
    the same number of steps (the same draws from the same seed)."""
    rev = DiffusionReverse(lambda x, t: torch.zeros_like(x), DiffusionSchedule.linear(50))
    path = DiffusionPath(rev, [2])
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = ddim(path, 3, n_steps=5, generator=g1)
    b = ddim(path, 3, times=torch.tensor(path.times(5), dtype=torch.float32), generator=g2)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    with pytest.raises(ValueError, match="is not one of the trained steps"):
        ddim(path, 3, times=[float(path.times(5)[0]) * 0.99, 0.0])


def test_a_given_ddpm_start_is_in_the_paths_scaled_coordinates() -> None:
    """What the samplers' ``x`` says (review C, stop 44: the docstring said only "the starting points"): a
    `DiffusionPath`'s state is y = x_t / sqrt(abar_t), so a DDPM's own noise x_T ~ N(0, I) enters divided by
    sqrt(abar_T) and then gives the draws of the default start exactly; x_T itself collapses the draws onto the mean
    (their variance is far below the data's 0.25)."""
    path = ddpm_path(GAUSS, T=50)
    default = ddim(path, 400, eta=0.0, generator=torch.Generator().manual_seed(4))
    x_T = torch.randn(400, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    scaled = ddim(path, x=x_T / path.alpha_bar[-1].sqrt(), eta=0.0)
    torch.testing.assert_close(scaled, default, rtol=1e-12, atol=1e-12)
    assert 0.15 < float(default.var(0).mean()) < 0.35  # the data's variance, 0.25 (400 draws)
    assert float(ddim(path, x=x_T, eta=0.0).var(0).mean()) < 0.05
