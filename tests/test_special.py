"""Distributions that are not parametric families: Deterministic, EmpiricalDistribution, CustomProb."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from kizuna.distributions import CustomProb, Deterministic, EmpiricalDistribution, Normal

F64 = torch.float64
N_SE = 5.0  # moment checks at five standard errors: false-alarm rate 5.7e-7 each


class Decoder(Deterministic):
    """``x = W z + b``: a point mass at a linear map of ``z``."""

    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="f")
        self.lin = nn.Linear(2, 3, dtype=F64)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.lin(z)}


class Encoder(Normal):
    """``q(z|x) = N(z; a x, 0.1^2)`` with a learnable ``a``."""

    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.a = nn.Parameter(torch.tensor(2.0, dtype=F64))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.a * x, "scale": torch.full_like(x, 0.1)}


# ------------------------------------------------------------------------ Deterministic
class TestDeterministic:
    def test_forward_returns_the_value(self) -> None:
        d = Decoder()
        z = torch.randn(4, 2, dtype=F64)
        out = d(z=z)
        assert list(out) == ["x"]
        torch.testing.assert_close(out["x"], d.lin(z))

    def test_sample_returns_forward_with_grad(self) -> None:
        d = Decoder()
        z = torch.randn(4, 2, dtype=F64)
        s = d.sample({"z": z})
        assert set(s) == {"x", "z"} and s["z"] is z
        torch.testing.assert_close(s["x"], d.lin(z))
        assert s["x"].requires_grad and d.has_reparam
        s["x"].sum().backward()
        torch.testing.assert_close(d.lin.bias.grad, torch.full((3,), 4.0, dtype=F64))
        torch.testing.assert_close(d.sample_mean({"z": z}), d.lin(z))
        assert d.sample({"z": z}, reparam=True)["x"].requires_grad

    def test_sample_shape(self) -> None:
        d = Decoder()
        z = torch.randn(4, 2, dtype=F64)
        x = d.sample({"z": z}, sample_shape=(5,))["x"]
        assert x.shape == (5, 4, 3)
        torch.testing.assert_close(x, d.lin(z).expand(5, 4, 3))

    def test_has_no_density(self) -> None:
        d = Decoder()
        z = torch.randn(4, 2, dtype=F64)
        with pytest.raises(NotImplementedError, match=r"f\(x\|z\)"):
            d.get_log_prob({"z": z, "x": d.lin(z)})

    def test_in_a_product(self) -> None:
        """p(y|x) f(x|z) p(z): y given the deterministic x."""
        prior = Normal(var=["z"], loc=torch.zeros(2, dtype=F64), scale=1.0, name="p_prior")
        lik = Normal(var=["y"], cond_var=["x"], loc="x", scale=torch.tensor(0.5, dtype=F64))
        d = Decoder()
        joint = lik * d * prior
        assert str(joint) == "p(y,x,z) = p(y|x)f(x|z)p_{prior}(z)"
        s = joint.sample(batch_n=6, reparam=True)
        assert list(s) == ["z", "x", "y"]
        torch.testing.assert_close(s["x"], d.lin(s["z"]))
        np.testing.assert_allclose(
            lik.get_log_prob(s).detach().numpy(),
            stats.norm.logpdf(s["y"].detach().numpy(), s["x"].detach().numpy(), 0.5).sum(1),
            rtol=1e-10,
        )

    def test_base_class_needs_forward(self) -> None:
        with pytest.raises(NotImplementedError, match=r"p\(x\).*forward"):
            Deterministic(var=["x"]).sample()


# -------------------------------------------------------------- EmpiricalDistribution
class TestEmpirical:
    def test_sampling_returns_the_data(self) -> None:
        p_data = EmpiricalDistribution(var=["x"])
        assert p_data.var == ["x"] and p_data.cond_var == [] and p_data.input_var == ["x"]
        assert p_data.prob_text == "p_{data}(x)"
        x = torch.randn(5, 3)
        s = p_data.sample({"x": x})
        assert list(s) == ["x"] and s["x"] is x
        assert p_data.sample({"x": x}, return_all=False)["x"] is x
        with pytest.raises(ValueError, match=r"p_\{data\}\(x\) needs x"):
            p_data.sample(batch_n=5)
        with pytest.raises(NotImplementedError, match="log-density"):
            p_data.get_log_prob({"x": x})

    def test_several_variables(self) -> None:
        p_data = EmpiricalDistribution(var=["x", "y"])
        x, y = torch.randn(5, 3), torch.randn(5)
        s = p_data.sample({"x": x, "y": y, "other": 1})
        assert s["x"] is x and s["y"] is y and s["other"] == 1

    def test_product_with_an_encoder(self) -> None:
        """(q * p_data): x comes from the dict, z from q(z|x) = N(2x, 0.1^2)."""
        q = Encoder()
        joint = q * EmpiricalDistribution(var=["x"])
        assert joint.var == ["z", "x"] and joint.cond_var == [] and joint.input_var == ["x"]
        torch.manual_seed(0)
        x = torch.randn(4000, dtype=F64) * 3
        s = joint.sample({"x": x}, reparam=True)
        assert list(s) == ["x", "z"] and s["x"] is x
        noise = s["z"] - 2 * x  # N(0, 0.01)
        assert abs(noise.mean().item()) < N_SE * (0.01 / noise.numel()) ** 0.5
        assert abs(noise.var().item() - 0.01) < N_SE * 0.01 * (2 / (noise.numel() - 1)) ** 0.5
        # the draw is differentiable in q's parameters: d(sum z)/da = sum x
        s["z"].sum().backward()
        torch.testing.assert_close(q.a.grad, x.sum())

    def test_aggregate_posterior(self) -> None:
        """q(z) = ∫ q(z|x) p_data(x) dx: sampling still reads the data, and returns only z."""
        agg = (Encoder() * EmpiricalDistribution(var=["x"])).marginalize_var("x")
        assert agg.var == ["z"] and agg.input_var == ["x"]
        assert str(agg) == "q(z) = ∫ q(z|x)p_{data}(x)dx"  # named after the first operand, as Pixyz
        x = torch.arange(3, dtype=F64)
        assert list(agg.sample({"x": x}, return_all=False)) == ["z"]
        with pytest.raises(ValueError, match=r"q\(z\) needs x"):
            agg.sample(batch_n=3)

    def test_renamed(self) -> None:
        p_data = EmpiricalDistribution(var=["x"]).replace_var(x="image")
        assert p_data.var == ["image"] and p_data.input_var == ["image"]
        image = torch.randn(2, 4)
        out = p_data.sample({"image": image}, return_all=False)
        assert list(out) == ["image"] and out["image"] is image

    def test_product_with_sample_shape(self) -> None:
        joint = Encoder() * EmpiricalDistribution(var=["x"])
        x = torch.arange(3, dtype=F64)
        s = joint.sample({"x": x}, sample_shape=(2,))
        assert s["x"].shape == (2, 3) and s["z"].shape == (2, 3)
        torch.testing.assert_close(s["x"], x.expand(2, 3))


# ------------------------------------------------------------------------- CustomProb
MU, SIGMA = 0.7, 1.3


def energy(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Gaussian log-density, per feature."""
    return -0.5 * ((x - MU) / SIGMA) ** 2


class Energy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(MU, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((x - self.mu) / SIGMA) ** 2


class TestCustomProb:
    def test_features_are_summed(self) -> None:
        p = CustomProb(energy, var=["x"])
        x = torch.randn(6, 4, dtype=F64)
        lp = p.get_log_prob({"x": x})
        assert lp.shape == (6,)
        torch.testing.assert_close(lp, energy(x).sum(1))
        torch.testing.assert_close(p.get_log_prob({"x": x}, sum_features=False), energy(x))
        # after adding the normaliser it is scipy's Gaussian density
        log_z = 0.5 * math.log(2 * math.pi * SIGMA**2)
        np.testing.assert_allclose((lp - 4 * log_z).numpy(), stats.norm.logpdf(x.numpy(), MU, SIGMA).sum(1),
                                   rtol=1e-12)

    def test_numerically_normalised_density_matches_scipy(self) -> None:
        """Normalise by quadrature (trapezoid on a wide grid) and compare to scipy."""
        p = CustomProb(energy, var=["x"])
        grid = torch.linspace(MU - 12 * SIGMA, MU + 12 * SIGMA, 20001, dtype=F64)
        log_z = math.log(torch.trapezoid(p.get_prob({"x": grid}), grid).item())
        x = torch.tensor([-2.0, 0.0, 0.7, 3.5], dtype=F64)
        np.testing.assert_allclose((p.get_log_prob({"x": x}) - log_z).numpy(), stats.norm.logpdf(x.numpy(), MU, SIGMA),
                                   rtol=1e-8)

    def test_learnable_module_registers_parameters(self) -> None:
        fn = Energy()
        p = CustomProb(fn, var=["x"], distribution_name="Gaussian energy")
        assert p.distribution_name == "Gaussian energy"
        assert [id(q) for q in p.parameters()] == [id(fn.mu)]
        assert "log_prob_function.mu" in p.state_dict()
        x = torch.randn(5, 2, dtype=F64)
        p.get_log_prob({"x": x}).sum().backward()
        # d/dmu sum -0.5((x-mu)/s)^2 = sum (x - mu)/s^2
        torch.testing.assert_close(fn.mu.grad, ((x - MU) / SIGMA**2).sum())

    def test_not_learnable_hides_parameters(self) -> None:
        fn = Energy()
        p = CustomProb(fn, var=["x"], learnable=False)
        assert list(p.parameters()) == [] and dict(p.state_dict()) == {}
        x = torch.randn(5, 2, dtype=F64)
        torch.testing.assert_close(p.get_log_prob({"x": x}), energy(x).sum(1))

    def test_several_variables(self) -> None:
        p = CustomProb(lambda x, y: -(x - y) ** 2, var=["x", "y"])
        x, y = torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
        torch.testing.assert_close(p.get_log_prob({"x": x, "y": y}), -((x - y) ** 2).sum(1))
        with pytest.raises(ValueError, match="needs y"):
            p.get_log_prob({"x": x})

    def test_a_function_reduced_over_the_batch_is_named(self) -> None:
        """``lambda x: energy(x).sum()`` gives one number for the batch: ``LogProb(p).mean()`` was the batch's total
        taken as every row's log-density (6 times too large here), silently."""
        p = CustomProb(lambda x: energy(x).sum(), var=["x"])
        with pytest.raises(ValueError, match=r"one log-density per row, shape \(6,\) .* returned shape \(\)"):
            p.get_log_prob({"x": torch.randn(6, 4, dtype=F64)})
        one = CustomProb(lambda x: energy(x).sum(), var=["x"])  # one row's log-density as one number is that row's
        assert one.get_log_prob({"x": torch.ones(1, 4, dtype=F64)}).shape == (1,)
        q = CustomProb(lambda x: energy(x)[:2], var=["x"])
        with pytest.raises(ValueError, match=r"returned shape \(2, 4\)"):
            q.get_log_prob({"x": torch.randn(6, 4, dtype=F64)})

    def test_in_a_product_and_not_sampleable(self) -> None:
        p = CustomProb(energy, var=["x"])
        q = Normal(var=["z"], cond_var=["x"], loc="x", scale=torch.tensor(1.0, dtype=F64), name="q")
        joint = q * p
        x, z = torch.randn(4, dtype=F64), torch.randn(4, dtype=F64)
        torch.testing.assert_close(joint.get_log_prob({"x": x, "z": z}),
                                   energy(x) + torch.as_tensor(stats.norm.logpdf(z.numpy(), x.numpy(), 1.0)))
        with pytest.raises(NotImplementedError, match=r"p\(x\) \(Custom PDF\) cannot be sampled"):
            p.sample(batch_n=2)
