"""MixtureModel's checks of its prior's one-hot length against the number of components, and MixtureOfNormal's
weights given as a float64 tensor (references: scipy.stats and hand-written log-densities)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from kizuna.distributions import Categorical, Normal
from kizuna.distributions.mixture import MixtureModel
from kizuna.distributions.moe import MixtureOfNormal

F64 = torch.float64


class CondPrior(Categorical):
    """p(z|y) over ``classes`` classes, logits ``y * (0, 1, ..., classes - 1)``; counts its forward calls."""

    def __init__(self, classes: int) -> None:
        super().__init__(var=["z"], cond_var=["y"])
        self.classes = classes
        self.calls = 0

    def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"logits": y[:, :1] * torch.arange(self.classes, dtype=y.dtype)}


def f64(value: float) -> torch.Tensor:
    """A float64 constant (the components' numbers are checked against scipy in float64)."""
    return torch.tensor(float(value), dtype=F64)


def components(k: int) -> list[Normal]:
    return [Normal(var=["x"], loc=10.0 * i, scale=1.0) for i in range(k)]


# ------------------------------------------------------------------ D1: conditional prior of the wrong length
@pytest.mark.parametrize(("classes", "k"), [(2, 3), (3, 2)])
def test_conditional_prior_length_checked_when_sampling(classes: int, k: int) -> None:
    m = MixtureModel(components(k), CondPrior(classes))
    y = torch.zeros(50, 1)
    for draw in (lambda: m.sample({"y": y}), lambda: m.sample({"y": y}, return_hidden=True),
                 lambda: m.sample_with_hidden({"y": y}), lambda: m.sample({"y": y}, sample_shape=(2,))):
        with pytest.raises(ValueError, match=rf"prior p\(z\|y\).*length {classes}.*{k} components"):
            draw()


@pytest.mark.parametrize(("classes", "k"), [(2, 3), (3, 2)])
def test_conditional_prior_length_checked_when_scoring(classes: int, k: int) -> None:
    m = MixtureModel(components(k), CondPrior(classes))
    x, y = torch.zeros(4), torch.zeros(4, 1)
    uses = {
        "get_log_prob": lambda: m.get_log_prob({"x": x, "y": y}),
        "joint_log_prob": lambda: m.joint_log_prob({"x": x, "y": y}),
        "log_prior": lambda: m.log_prior({"y": y}),
        "posterior": lambda: m.posterior().get_params({"x": x, "y": y}),
        "sample_mean": lambda: m.sample_mean({"y": y}),
        "sample_variance": lambda: m.sample_variance({"y": y}),
    }
    for use in uses.values():
        with pytest.raises(ValueError, match=rf"prior p\(z\|y\).*length {classes}.*{k} components"):
            use()


def test_renamed_conditional_prior_length_checked() -> None:
    m = MixtureModel(components(3), CondPrior(2).replace_var(z="w"))
    with pytest.raises(ValueError, match=r"prior p\(w\|y\).*length 2.*3 components"):
        m.get_log_prob({"x": torch.zeros(4), "y": torch.zeros(4, 1)})
    with pytest.raises(ValueError, match=r"prior p\(w\|y\).*length 2.*3 components"):
        m.sample({"y": torch.zeros(4, 1)})


def test_conditional_prior_declared_features_shape_checked_at_construction() -> None:
    prior = Categorical(var=["z"], cond_var=["y"], logits="y", features_shape=(2,))
    with pytest.raises(ValueError, match=r"prior p\(z\|y\).*length 2.*3 components"):
        MixtureModel(components(3), prior)


def test_conditional_prior_of_right_length_unchanged() -> None:
    """Guards existing behaviour (passes on the old code too): the numbers against a hand-written mixture, and the
    prior's network run once per evaluation (the check reads the parameters its density uses)."""
    prior = CondPrior(3)
    m = MixtureModel([Normal(var=["x"], loc=f64(i), scale=f64(1 + i)) for i in range(3)], prior)
    x = torch.randn(5, dtype=F64)
    y = torch.randn(5, 1, dtype=F64)
    log_pi = torch.log_softmax(y * torch.arange(3, dtype=F64), -1)
    comps = torch.stack([torch.tensor(stats.norm(i, 1 + i).logpdf(x.numpy())) for i in range(3)], -1)
    ref = torch.logsumexp(log_pi + comps, -1)
    prior.calls = 0
    assert torch.allclose(m.get_log_prob({"x": x, "y": y}), ref, atol=1e-12, rtol=0)
    assert prior.calls == 1
    prior.calls = 0
    mean = m.sample_mean({"y": y})
    assert prior.calls == 1
    assert torch.allclose(mean, (log_pi.exp() * torch.arange(3, dtype=F64)).sum(-1), atol=1e-12, rtol=0)
    assert m.sample({"y": y})["x"].shape == (5,)


# ------------------------------------------------------------------ D2: prior with extra feature dimensions
@pytest.mark.parametrize("shape", [(2, 2), (1, 2), (3, 2)])
def test_prior_with_extra_feature_dims_refused(shape: tuple[int, ...]) -> None:
    prior = Categorical(var=["z"], probs=torch.full(shape, 0.5))
    with pytest.raises(ValueError, match=rf"prior p\(z\) .*shape {re_shape(shape)}.*2 components.*shape \(2,\)"):
        MixtureModel(components(2), prior)


def re_shape(shape: tuple[int, ...]) -> str:
    return r"\(" + r", ".join(map(str, shape)) + r"\)"


def test_prior_of_wrong_length_refused() -> None:
    """Refused on the old code too; the message now gives the length found and what is needed."""
    with pytest.raises(ValueError, match=r"prior p\(z\).*length 3.*2 components"):
        MixtureModel(components(2), Categorical(var=["z"], probs=torch.ones(3) / 3))


def test_prior_of_shape_k_unchanged() -> None:
    """Guards existing behaviour: a prior over (K,) against scipy."""
    m = MixtureModel([Normal(var=["x"], loc=f64(-1), scale=f64(1)), Normal(var=["x"], loc=f64(2), scale=f64(0.5))],
                     Categorical(var=["z"], probs=torch.tensor([0.3, 0.7], dtype=F64)))
    x = torch.linspace(-3, 3, 7, dtype=F64)
    ref = np.log(0.3 * stats.norm(-1, 1).pdf(x.numpy()) + 0.7 * stats.norm(2, 0.5).pdf(x.numpy()))
    assert torch.allclose(m.get_log_prob({"x": x}), torch.tensor(ref), atol=1e-12, rtol=0)


# ------------------------------------------------------------------ D3: MixtureOfNormal's float64 weights
def moe_setup() -> tuple[Normal, Normal, dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=2.0, name="q")
    x, y, z = (torch.randn(6, 1, dtype=F64) for _ in range(3))
    ref = np.log(0.3 * stats.norm(x.numpy(), 1).pdf(z.numpy()) + 0.7 * stats.norm(y.numpy(), 2).pdf(z.numpy()))
    return qx, qy, {"x": x, "y": y, "z": z}, torch.tensor(ref.squeeze(1))


@pytest.mark.parametrize("double", [False, True])
def test_moe_float64_tensor_weights_exact(double: bool) -> None:
    qx, qy, data, ref = moe_setup()
    q = MixtureOfNormal([qx, qy], weights=torch.tensor([0.3, 0.7], dtype=F64))
    q = q.double() if double else q
    assert q.weights.dtype == F64
    assert (q.get_log_prob(data) - ref).abs().max().item() < 1e-12
    # the weights as renormalised: exactly 0.3 and 0.7 in float64
    assert torch.allclose(q.log_weights(data)[1].exp(), torch.tensor([0.3, 0.7], dtype=F64), atol=1e-15, rtol=0)


def test_moe_number_weights_unchanged() -> None:
    """Guards existing behaviour: weights as numbers, exact after .double()."""
    qx, qy, data, ref = moe_setup()
    q = MixtureOfNormal([qx, qy], weights=[0.3, 0.7]).double()
    assert (q.get_log_prob(data) - ref).abs().max().item() < 1e-12


def test_moe_tensor_weights_dtypes_and_copy() -> None:
    qx, qy, _, _ = moe_setup()
    given = torch.tensor([1.0, 3.0])
    q = MixtureOfNormal([qx, qy], weights=given)
    assert q.weights.dtype == torch.float32  # a float32 tensor stays float32 (as before)
    given.fill_(5.0)  # the caller's tensor stays theirs (it was the buffer itself)
    assert q.weights.tolist() == [1.0, 3.0]
    ints = MixtureOfNormal([qx, qy], weights=torch.tensor([1, 3]))
    assert ints.weights.dtype == torch.get_default_dtype()  # an integer tensor in the default dtype (as before)
