"""Energy-based models: `EnergyDistribution`, `ContrastiveDivergence` and the `SGLD` sampler.

References: ``scipy.stats.multivariate_normal`` (an energy's log-density is exact up to one
constant); the closed-form maximum-likelihood gradient of a Gaussian (contrastive divergence with
exact negatives is unbiased for it); the uniform law of restarted chains (Kolmogorov-Smirnov);
the Mann-Whitney AUC of the true mixture density on the 2-D task. Monte-Carlo checks at five
standard errors with fixed seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from kizuna.distributions import EnergyDistribution
from kizuna.losses import ContrastiveDivergence
from kizuna.models import Model
from kizuna.samplers import SGLD

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread_seeded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    torch.set_num_threads(threads)


class Quadratic(nn.Module):
    """E(x) = |x - theta|^2 / 2: the energy of N(theta, I)."""

    def __init__(self, theta: list[float]) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x - self.theta).pow(2).sum(-1)


class Fixed:
    """A stand-in sampler that returns given negatives."""

    def __init__(self, negatives: torch.Tensor) -> None:
        self.negatives = negatives

    def sample(self, batch_n: int) -> torch.Tensor:
        return self.negatives[:batch_n]


# ------------------------------------------------------------------ the distribution
def test_log_prob_is_exact_up_to_one_constant_and_score() -> None:
    p = EnergyDistribution(Quadratic([1.0, -2.0]), var=["x"])
    x = torch.randn(50, 2, dtype=F64) * 2
    lp = p.get_log_prob({"x": x}).detach().numpy()
    ref = stats.multivariate_normal([1.0, -2.0], np.eye(2)).logpdf(x.numpy())
    np.testing.assert_allclose(lp - ref, np.full(50, math.log(2 * math.pi)), rtol=1e-12)  # log Z = log 2 pi
    torch.testing.assert_close(p.score({"x": x}).detach(), -(x - torch.tensor([1.0, -2.0], dtype=F64)))
    assert str(p) == "p(x) ∝ exp(-E_p(x))" and p.to_latex() == r"p(x) \propto \exp\left(-E_p(x)\right)"
    assert [n for n, _ in p.named_parameters()] == ["energy.theta"]


def test_errors_name_the_problem() -> None:
    p = EnergyDistribution(lambda x: x.sum(-1, keepdim=True).repeat(1, 2), var=["x"])
    with pytest.raises(ValueError, match=r"one value per row of x \(batch 3\), got shape \(3, 2\)"):
        p.get_log_prob({"x": torch.zeros(3, 2)})
    with pytest.raises(NotImplementedError, match=r"p\(x\) \(EnergyDistribution\) cannot be sampled directly"):
        p.sample(batch_n=2)
    with pytest.raises(ValueError, match="unconditioned"):
        SGLD(EnergyDistribution(Quadratic([0.0]), var=["x"], cond_var=["y"]), [1])
    for alpha in (-1.0, float("nan"), float("inf")):  # (NaN was accepted: a NaN loss at every step)
        with pytest.raises(ValueError, match=rf"^ContrastiveDivergence: alpha must be a finite number >= 0, got "
                                             rf"{alpha!r}$"):
            ContrastiveDivergence(EnergyDistribution(Quadratic([0.0])), Fixed(torch.zeros(1, 1)), alpha=alpha)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"step_size": -1.0}, r"SGLD: step_size must be a positive finite number, got -1.0"),
    ({"step_size": 0.0}, r"SGLD: step_size must be a positive finite number, got 0.0"),
    ({"noise_scale": -1.0}, r"SGLD: noise_scale must be a finite number >= 0, got -1.0"),
    ({"noise_scale": float("nan")}, r"SGLD: noise_scale must be a finite number >= 0, got nan"),
    ({"features_shape": [0]}, r"SGLD: features_shape\[0\] must be an integer >= 1, got 0"),
    ({"buffer_size": 2.5}, r"SGLD: buffer_size must be an integer >= 1, got 2.5"),
    ({"n_steps": -1}, r"SGLD: n_steps must be an integer >= 0, got -1"),
    ({"reinit": 1.5}, r"SGLD: need 0 <= reinit <= 1 and low < high, got reinit=1.5"),
    # a NaN or infinite bound made the whole buffer NaN
    ({"low": float("nan")}, r"SGLD: need 0 <= reinit <= 1 and low < high, got reinit=0.05, low=nan"),
    ({"low": -float("inf")}, r"SGLD: need 0 <= reinit <= 1 and low < high, got reinit=0.05, low=-inf"),
], ids=["step-1", "step0", "noise-1", "noise-nan", "features0", "buffer2.5", "steps-1", "reinit1.5", "low-nan",
        "low-inf"])
def test_sgld_arguments_are_checked(kwargs, message) -> None:
    """Before: a negative step or noise scale and an empty draw shape were accepted."""
    p = EnergyDistribution(Quadratic([0.0, 0.0]), var=["x"])
    kwargs = {"features_shape": [2], **kwargs}
    with pytest.raises(ValueError, match=message):
        SGLD(p, **kwargs)
    sampler = SGLD(p, [2], buffer_size=4, noise_scale=0.0)  # no noise: deterministic gradient steps, kept
    assert sampler.sample(0).shape == (0, 2)
    with pytest.raises(ValueError, match=r"SGLD.sample: batch_n must be an integer >= 0, got -1"):
        sampler.sample(-1)
    # a call's n_steps: -1 ran no step and still wrote the start back into the buffer, 2.5 failed in range()
    before = sampler.buffer.clone()
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match=rf"^SGLD.sample: n_steps must be an integer >= 0, got {bad}$"):
            sampler.sample(3, n_steps=bad)
        with pytest.raises(ValueError, match=rf"^SGLD: n_steps must be an integer >= 0, got {bad}$"):
            sampler.run(torch.zeros(3, 2), n_steps=bad)
    assert torch.equal(sampler.buffer, before)


# ------------------------------------------------------------------ contrastive divergence
def test_contrastive_divergence_value_and_formula() -> None:
    energy = Quadratic([0.5])
    p = EnergyDistribution(energy, var=["x"])
    pos, neg = torch.randn(8, 1, dtype=F64), torch.randn(8, 1, dtype=F64) + 3
    loss = ContrastiveDivergence(p, Fixed(neg), alpha=0.2)
    e_pos, e_neg = energy(pos), energy(neg)
    expected = e_pos.mean() - e_neg.mean() + 0.2 * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
    value, drawn = loss.eval({"x": pos}, return_dict=True)
    torch.testing.assert_close(value, expected)
    assert torch.equal(drawn["x^-"], neg)
    assert str(loss) == ("-E_{p_{data}(x)}[log p(x)] + E_{q_{SGLD}(x)}[log p(x)] + 0.2 * "
                         "(E_{p_{data}(x)}[(log p(x))^2] + E_{q_{SGLD}(x)}[(log p(x))^2])")


def test_contrastive_divergence_gradient_is_the_likelihood_gradient() -> None:
    """With exact negatives from p_theta = N(theta, 1), E[grad CD] = theta - mean(data) = grad NLL."""
    energy = Quadratic([0.7])
    p = EnergyDistribution(energy, var=["x"])
    n = 200_000
    data = torch.randn(n, 1, dtype=F64, generator=torch.Generator().manual_seed(1)) - 1.0
    negatives = 0.7 + torch.randn(n, 1, dtype=F64, generator=torch.Generator().manual_seed(2))
    ContrastiveDivergence(p, Fixed(negatives), alpha=0.0).eval({"x": data}).backward()
    expected = 0.7 - data.mean().item()  # d/dtheta of -mean log N(x; theta, 1)
    assert abs(energy.theta.grad.item() - expected) < 5 * math.sqrt(1 / n)


# ------------------------------------------------------------------ SGLD
def test_sgld_buffer_restarts_and_persistence() -> None:
    p = EnergyDistribution(Quadratic([0.0, 0.0]), var=["x"])
    fresh = SGLD(p, [2], buffer_size=100, reinit=1.0, n_steps=0, low=-2.0, high=3.0)
    x = fresh.sample(20_000)
    assert stats.kstest(x[:, 0].numpy(), stats.uniform(-2, 5).cdf).pvalue > 1e-4  # every chain restarted
    kept = SGLD(p, [2], buffer_size=50, reinit=0.0, n_steps=3, step_size=0.1, noise_scale=0.0, low=-5.0, high=5.0)
    before = kept.buffer.clone()
    torch.manual_seed(3)
    idx = torch.randint(0, 50, (10,))
    torch.manual_seed(3)
    out = kept.sample(10)
    rows = before[idx]
    for _ in range(3):  # noiseless gradient steps on E = |x|^2 / 2
        rows = rows - 0.5 * 0.1 * rows
    torch.testing.assert_close(out, rows)
    assert torch.equal(kept.buffer[idx], out)  # written back
    assert "buffer" in kept.state_dict()


def test_sgld_with_langevin_noise_has_the_chain_variance() -> None:
    """noise_scale = sqrt(step): unadjusted Langevin on N(0, 1), stationary variance 1 / (1 - step / 4)."""
    p = EnergyDistribution(Quadratic([0.0]), var=["x"])
    step = 0.2
    sampler = SGLD(p, [1], buffer_size=10, reinit=1.0, n_steps=200, step_size=step, noise_scale=math.sqrt(step),
                   low=-10.0, high=10.0, clamp=False)
    x = sampler.sample(20_000).double()
    target = 1 / (1 - step / 4)
    assert abs(x.var().item() - target) < 5 * target * math.sqrt(2 / len(x))
    assert abs(x.mean().item()) < 5 * math.sqrt(target / len(x))


# ------------------------------------------------------------------ training on 2-D data
MODES, RADIUS, SD = 4, 2.0, 0.3
CENTRES = torch.stack([RADIUS * torch.cos(2 * math.pi * torch.arange(MODES) / MODES),
                       RADIUS * torch.sin(2 * math.pi * torch.arange(MODES) / MODES)], 1)


def ring(n: int, g: torch.Generator) -> torch.Tensor:
    return CENTRES[torch.randint(0, MODES, (n,), generator=g)] + SD * torch.randn(n, 2, generator=g)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    return stats.mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative))


class EnergyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def test_ebm_ranks_data_above_noise_and_sgld_covers_the_modes() -> None:
    """Four Gaussians (sd 0.3) on a circle, 250 CD steps with 15-step SGLD chains from a replay buffer.

    The energy must rank held-out data above uniform noise on [-3, 3]^2 with AUC >= 0.88 (the true
    mixture density reaches 0.95; seeds 0-2 gave 0.925-0.936), and every mode must hold at least 15%
    of the buffer within 3 sd (25% is perfect; seeds 0-2 gave 22-24%).
    """
    g = torch.Generator().manual_seed(1)
    p = EnergyDistribution(EnergyNet(), var=["x"])
    sampler = SGLD(p, [2], buffer_size=2000, reinit=0.05, n_steps=15, step_size=0.02, noise_scale=0.1,
                   low=-3.0, high=3.0)
    model = Model(ContrastiveDivergence(p, sampler, alpha=0.1), distributions=[p], optimizer_params={"lr": 2e-3})
    for _ in range(250):
        model.train({"x": ring(128, g)})
    data, noise = ring(2000, g), 6 * torch.rand(2000, 2, generator=g) - 3
    with torch.no_grad():
        score = auc(-p.get_energy({"x": data}).numpy(), -p.get_energy({"x": noise}).numpy())
    mixture = torch.logsumexp(-torch.cdist(torch.cat([data, noise]), CENTRES).pow(2) / (2 * SD**2), 1).numpy()
    assert score >= 0.88 and score >= auc(mixture[:2000], mixture[2000:]) - 0.07, score
    dist = torch.cdist(sampler.buffer, CENTRES)
    good = dist.min(1).values < 3 * SD
    shares = torch.bincount(dist.argmin(1)[good], minlength=MODES).float() / len(good)
    assert shares.min() >= 0.15, shares


def test_sgld_buffer_takes_the_models_dtype() -> None:
    p = EnergyDistribution(Quadratic([0.0, 0.0]), var=["x"]).double()
    sampler = SGLD(p, [2], buffer_size=10, n_steps=2)
    assert sampler.buffer.dtype == torch.float64 and sampler.sample(4).dtype == torch.float64


def test_sgld_buffer_follows_the_model_converted_after_the_sampler() -> None:
    """``p.double()`` after ``SGLD(p, ...)``: the buffer is converted (its rows kept) at the next draw, and training
    on float64 data works (it stayed float32: "mat1 and mat2 must have the same dtype")."""

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x).squeeze(-1)

    p = EnergyDistribution(Linear(), var=["x"])
    sampler = SGLD(p, [2], buffer_size=20, reinit=0.0, n_steps=0)
    before = sampler.buffer.clone()
    assert before.dtype == torch.float32
    p.double()
    torch.manual_seed(5)
    idx = torch.randint(0, 20, (6,))
    torch.manual_seed(5)
    out = sampler.sample(6)  # no steps, no restarts: the buffer's rows, converted
    assert sampler.buffer.dtype == F64 and out.dtype == F64
    assert torch.equal(out, before[idx].to(F64)) and torch.equal(sampler.buffer, before.to(F64))
    p.float()
    model = Model(ContrastiveDivergence(p, SGLD(p, [2], buffer_size=20, n_steps=2, step_size=0.1, noise_scale=0.1),
                                        alpha=0.1), distributions=[p])
    p.double()  # after the sampler and the model were built
    assert math.isfinite(float(model.train({"x": torch.randn(8, 2, dtype=F64)})))


def test_negatives_are_held_fixed_even_from_a_differentiable_sampler() -> None:
    """The negatives enter as data (the gradient is E_data[∇E] - E_model[∇E]); a sampler whose draws carry a graph back
    to the energy's parameters must not add a path through the chain."""
    energy = Quadratic([0.7])
    p = EnergyDistribution(energy, var=["x"])

    class Differentiable:
        def sample(self, n: int) -> torch.Tensor:  # depends on theta: a path the loss must not follow
            return energy.theta.expand(n, 1) + 1.0

    data = torch.zeros(5, 1, dtype=F64)
    ContrastiveDivergence(p, Differentiable(), alpha=0.0).eval({"x": data}).backward()
    negatives = energy.theta.detach() + 1.0  # E_neg = 1/2, its gradient in theta with x fixed: -(x - theta) = 1
    expected = (0.7 - data.mean()) - (-(negatives - 0.7)).item()
    torch.testing.assert_close(energy.theta.grad, torch.tensor([expected], dtype=F64))


def test_sgld_draws_from_a_given_generator() -> None:
    """``sample(..., generator=g)`` repeats with the same generator state and leaves torch's global stream as it
    was (the sampler had no generator argument: every draw moved the global stream)."""
    p = EnergyDistribution(Quadratic([0.0, 0.0]), var=["x"])
    a, b = SGLD(p, [2], buffer_size=16, n_steps=5, step_size=0.1), SGLD(p, [2], buffer_size=16, n_steps=5,
                                                                         step_size=0.1)
    b.load_state_dict(a.state_dict())
    state = torch.get_rng_state()
    x = a.sample(8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(x, b.sample(8, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(a.buffer, b.buffer)
    assert not torch.equal(x, b.sample(8, generator=torch.Generator().manual_seed(2)))
