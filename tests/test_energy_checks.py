"""Input checks of the energy-model stack: `ContrastiveDivergence`, `EnergyDistribution`, `SGLD` and the Langevin
samplers (review s37). Each error is checked by its exact message; each accepted input against a value computed
by hand (the closed-form energy, gradient or Tweedie step)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import kizuna.losses.contrastive as contrastive_module
from kizuna.distributions import EnergyDistribution
from kizuna.losses import ContrastiveDivergence
from kizuna.samplers import SGLD, annealed_langevin_dynamics, langevin_dynamics, score_of


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


class Fixed:
    """A sampler without a declared draw shape that returns given negatives."""

    def __init__(self, negatives: torch.Tensor) -> None:
        self.negatives = negatives

    def sample(self, batch_n: int) -> torch.Tensor:
        return self.negatives[:batch_n]


def _scaled_quadratic() -> tuple[nn.Parameter, EnergyDistribution]:
    theta = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    return theta, EnergyDistribution(lambda x: 0.5 * theta * x.pow(2).sum(-1), var=["x"])


# ------------------------------------------------------------------ 1. negatives of the data's shape
def test_cd_refuses_an_sgld_of_another_features_shape_before_drawing() -> None:
    """Before: SGLD([1]) on 2-D data broadcast into a wrong loss (dθ -0.566 instead of about -2)."""
    theta, p = _scaled_quadratic()
    sampler = SGLD(p, [1], buffer_size=50, n_steps=0, low=-3, high=3)
    before = sampler.buffer.clone()
    loss = ContrastiveDivergence(p, sampler, alpha=0.0)
    message = ("ContrastiveDivergence: the sampler draws x of shape (64, 1) but the data has shape (64, 2): the "
               "features after the batch dimension must match in number (SGLD's features_shape should be [2])")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        loss.eval({"x": torch.randn(64, 2, dtype=torch.float64)})
    assert torch.equal(sampler.buffer, before)  # refused before the chain ran


def test_cd_refuses_an_mlp_sampler_of_another_shape_by_name() -> None:
    """Before: a raw 'mat1 and mat2 shapes cannot be multiplied' from inside the chain."""
    mlp = EnergyDistribution(nn.Linear(2, 1), var=["x"])
    loss = ContrastiveDivergence(mlp, SGLD(mlp, [3], buffer_size=10, n_steps=1))
    message = "the sampler draws x of shape (8, 3) but the data has shape (8, 2)"
    with pytest.raises(ValueError, match=re.escape(message)):
        loss.eval({"x": torch.randn(8, 2)})


def test_cd_checks_the_draws_of_a_sampler_without_a_declared_shape() -> None:
    _, p = _scaled_quadratic()
    loss = ContrastiveDivergence(p, Fixed(torch.zeros(5, 1, dtype=torch.float64)), alpha=0.0)
    message = ("ContrastiveDivergence: the sampler draws x of shape (5, 1) but the data has shape (5, 2): the "
               "features after the batch dimension must match in number (SGLD's features_shape should be [2])")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        loss.eval({"x": torch.randn(5, 2, dtype=torch.float64)})


def test_cd_of_matching_shapes_has_the_hand_computed_gradient() -> None:
    """E = θ|x|²/2: d loss / dθ = mean |x+|²/2 - mean |x-|²/2 (alpha 0), computed from the tensors themselves."""
    theta, p = _scaled_quadratic()
    loss = ContrastiveDivergence(p, SGLD(p, [2], buffer_size=100, n_steps=0, low=-3, high=3), alpha=0.0)
    x = torch.randn(256, 2, dtype=torch.float64)
    value, drawn = loss.eval({"x": x}, return_dict=True)
    value.backward()
    neg = drawn["x^-"]
    assert neg.shape == x.shape
    expected = 0.5 * x.pow(2).sum(-1).mean() - 0.5 * neg.pow(2).sum(-1).mean()
    torch.testing.assert_close(theta.grad, expected)
    torch.testing.assert_close(value.detach(), expected)  # θ = 1


# ------------------------------------------------------------------ 2. empty batch
def test_cd_refuses_an_empty_batch() -> None:
    """Before: NaN (the means over no rows)."""
    mlp = EnergyDistribution(nn.Linear(2, 1), var=["x"])
    sampler = SGLD(mlp, [2], buffer_size=10, n_steps=1)
    before = sampler.buffer.clone()
    with pytest.raises(ValueError, match=r"^ContrastiveDivergence: the data x has no rows \(shape \(0, 2\)\)$"):
        ContrastiveDivergence(mlp, sampler).eval({"x": torch.randn(0, 2)})
    assert torch.equal(sampler.buffer, before)


# ------------------------------------------------------------------ 3. score of a missing variable
def test_score_names_a_missing_variable_as_get_log_prob_does() -> None:
    """Before: a bare KeyError 'x'."""
    p = EnergyDistribution(lambda x: 0.5 * x.pow(2).sum(-1), var=["x"])
    with pytest.raises(ValueError, match=r"^p\(x\) needs x, but was given nothing$"):
        p.score({})
    with pytest.raises(ValueError, match=r"^p\(x\) needs x, but was given nothing$"):
        p.get_log_prob({})
    q = EnergyDistribution(lambda x, y: 0.5 * (x - y).pow(2).sum(-1), var=["x"], cond_var=["y"])
    with pytest.raises(ValueError, match=r"^p\(x\|y\) needs y, but was given x$"):
        q.score({"x": torch.zeros(2, 1)})


# ------------------------------------------------------------------ 4. declared features_shape
def test_declared_features_shape_is_checked() -> None:
    """Before: values of 3 features were scored by a distribution of 2 (get_log_prob gave -3, score a (4, 3))."""
    p = EnergyDistribution(lambda x: x.pow(2).sum(-1), var=["x"], features_shape=[2])
    message = r"^p\(x\): x has shape \(4, 3\), expected \(batch, 2\)$"
    with pytest.raises(ValueError, match=message):
        p.get_log_prob({"x": torch.ones(4, 3)})
    with pytest.raises(ValueError, match=message):
        p.score({"x": torch.ones(4, 3)})
    with pytest.raises(ValueError, match=r"^p\(x\): x has shape \(4,\), expected \(batch, 2\)$"):
        p.get_log_prob({"x": torch.ones(4)})
    x = torch.tensor([[1.0, 2.0], [0.0, -3.0]])
    torch.testing.assert_close(p.get_log_prob({"x": x}), torch.tensor([-5.0, -9.0]))  # -|x|²
    torch.testing.assert_close(p.score({"x": x}).detach(), -2 * x)
    assert "features_shape" in EnergyDistribution.__doc__
    # undeclared (the default): any shape the energy takes
    free = EnergyDistribution(lambda x: x.pow(2).sum(-1), var=["x"])
    torch.testing.assert_close(free.get_log_prob({"x": torch.ones(4, 3)}), torch.full((4,), -3.0))


def test_sgld_refuses_a_features_shape_other_than_the_declared_one() -> None:
    p = EnergyDistribution(lambda x: x.pow(2).sum(-1), var=["x"], features_shape=[2])
    with pytest.raises(ValueError, match=r"^SGLD: features_shape \[3\] differs from the shape \[2\] that p\(x\) "
                                         r"declares$"):
        SGLD(p, [3], buffer_size=4)
    assert SGLD(p, [2], buffer_size=4, n_steps=1).sample(3).shape == (3, 2)


# ------------------------------------------------------------------ 5. sampler inputs
def test_langevin_refuses_an_integer_start_by_name() -> None:
    """Before: torch's 'only Tensors of floating point dtype can require gradients'."""
    p = EnergyDistribution(lambda x: 0.5 * x.pow(2).sum(-1), var=["x"])
    start = torch.zeros(3, 1, dtype=torch.long)
    message = (r"^{}: x must be a floating-point tensor, got dtype torch.int64 \(convert it, e.g. x.float\(\)\)$")
    with pytest.raises(TypeError, match=message.format("langevin_dynamics")):
        langevin_dynamics(score_of(p), start, 0.1, 2)
    with pytest.raises(TypeError, match=message.format("annealed_langevin_dynamics")):
        annealed_langevin_dynamics(lambda x, i: -x, start, [1.0, 0.1], n_steps_each=1)
    with pytest.raises(TypeError, match=r"^langevin_dynamics: x must be a torch.Tensor, got list$"):
        langevin_dynamics(score_of(p), [[0.0]], 0.1, 2)


def test_step_sizes_given_as_strings_are_refused_by_name() -> None:
    """Before: bare TypeErrors ("'>' not supported between 'str' and 'int'", 'must be real number, not str')."""
    p = EnergyDistribution(lambda x: 0.5 * x.pow(2).sum(-1), var=["x"])
    with pytest.raises(ValueError, match=r"^langevin_dynamics: step_size must be a positive finite number, got '0.1'$"):
        langevin_dynamics(score_of(p), torch.zeros(3, 1), "0.1", 2)
    with pytest.raises(ValueError, match=r"^SGLD: step_size must be a positive finite number, got '1'$"):
        SGLD(p, [2], step_size="1")
    with pytest.raises(ValueError, match=r"^SGLD: noise_scale must be a finite number >= 0, got '0.1'$"):
        SGLD(p, [2], noise_scale="0.1")
    # numeric steps still run: one noiseless-in-expectation check, x + α/2 s(x) + √α z with s = -x
    x = torch.ones(4, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    out = langevin_dynamics(lambda z: -z, x, 0.5, 1, generator=g)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(out, x - 0.25 * x + 0.5**0.5 * z)


def test_denoising_step_checks_the_score_shape() -> None:
    """Before: a (3, 1) score was broadcast into the (3, 2) x by the final Tweedie step."""
    with pytest.raises(ValueError, match=r"^annealed_langevin_dynamics: the score has shape \(3, 1\), x has \(3, 2\) "
                                         r"\(the denoising step\)$"):
        annealed_langevin_dynamics(lambda x, i: -x[:, :1], torch.zeros(3, 2), [1.0, 0.1], n_steps_each=0,
                                   denoise=True)
    x = torch.tensor([[1.0, -2.0], [0.5, 4.0], [0.0, 1.0]])
    out = annealed_langevin_dynamics(lambda z, i: -z, x, [1.0, 0.1], n_steps_each=0, denoise=True)
    torch.testing.assert_close(out, x + 0.1**2 * -x)  # Tweedie: x + σ_L² s(x)


# ------------------------------------------------------------------ 6. the documented gradient
def test_module_docstring_gradient_with_the_regulariser() -> None:
    """The loss has the maximum-likelihood gradient only at alpha 0; with alpha the documented extra term
    2α(E[E+ ∇E+] + E[E- ∇E-]) is added (checked by hand for E = θ|x|²/2)."""
    doc = contrastive_module.__doc__
    assert r"has that gradient (in" in doc and r"when :math:`\alpha = 0`" in doc
    assert r"2\alpha\,(\mathbb{E}[E_\theta(x^+)\nabla_\theta E_\theta(x^+)]" in doc
    theta, p = _scaled_quadratic()
    x, neg = torch.randn(32, 2, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64) * 2
    alpha = 0.3
    ContrastiveDivergence(p, Fixed(neg), alpha=alpha).eval({"x": x}).backward()
    h_pos, h_neg = 0.5 * x.pow(2).sum(-1), 0.5 * neg.pow(2).sum(-1)  # dE/dθ; E = θ h with θ = 1
    ml = h_pos.mean() - h_neg.mean()
    extra = 2 * alpha * ((h_pos * h_pos).mean() + (h_neg * h_neg).mean())
    torch.testing.assert_close(theta.grad, ml + extra)


# ------------------------------------------------------------------ 7. every evaluation advances the sampler
def test_evaluation_without_gradients_advances_the_sampler_as_documented() -> None:
    doc = ContrastiveDivergence.__doc__
    assert "Model.test" in doc and "replay buffer" in doc and "random stream" in doc
    _, p = _scaled_quadratic()
    sampler = SGLD(p, [2], buffer_size=8, n_steps=1)
    x = torch.randn(8, 2, dtype=torch.float64)
    before, state = sampler.buffer.clone(), torch.random.get_rng_state()
    with torch.no_grad():
        ContrastiveDivergence(p, sampler).eval({"x": x})
    assert not torch.equal(sampler.buffer, before)
    assert not torch.equal(torch.random.get_rng_state(), state)


def test_cd_takes_draws_of_another_shape_with_the_same_features_for_an_energy_that_flattens():
    """Images (B, 1, 2, 2) and an SGLD drawing (B, 4) for an energy of the flattened input: a valid use (the loss is
    the hand-computed one), which the first shape check refused."""
    torch.manual_seed(0)
    theta = torch.nn.Parameter(torch.tensor(1.0))
    e = EnergyDistribution(lambda x: 0.5 * theta * x.flatten(1).pow(2).sum(-1), var=["x"])
    sampler = SGLD(e, [4], buffer_size=100, n_steps=0, low=-1, high=1)
    cd = ContrastiveDivergence(e, sampler, alpha=0.0)
    x = torch.randn(16, 1, 2, 2)
    value, samples = cd.eval({"x": x}, return_dict=True)
    negative = samples["x^-"]
    assert negative.shape == (16, 4)
    expected = 0.5 * x.flatten(1).pow(2).sum(-1).mean() - 0.5 * negative.pow(2).sum(-1).mean()
    torch.testing.assert_close(value, expected)
