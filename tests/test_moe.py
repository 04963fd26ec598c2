"""MixtureOfNormal against numpy logsumexp of scipy densities, masking and sampling statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Laplace, MixtureOfNormal, Normal

F64 = torch.float64
D_IN, D_Z = 3, 2


class Expert(Normal):
    """q(z|cond): loc and softplus scale from a linear layer."""

    def __init__(self, cond: str, var: str = "z") -> None:
        super().__init__(var=[var], cond_var=[cond], name="q")
        self.net = nn.Linear(D_IN, 2 * D_Z).double()

    def forward(self, **cond: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(*cond.values()).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 0.1}


def params_np(e: Normal, x_dict: dict) -> tuple[np.ndarray, np.ndarray]:
    p = e.get_params(x_dict)
    return p["loc"].detach().numpy(), p["scale"].detach().numpy()


@pytest.fixture
def setup() -> tuple[MixtureOfNormal, list[Expert], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    experts = [Expert("x"), Expert("y"), Expert("w")]
    data = {k: torch.randn(5, D_IN, dtype=F64) for k in ("x", "y", "w")}
    return MixtureOfNormal(experts, weights=[1.0, 2.0, 5.0], name="q"), experts, data


@pytest.mark.parametrize("present", [("x", "y", "w"), ("x", "w"), ("y",)])
def test_log_prob_matches_numpy(setup, present) -> None:
    q, experts, data = setup
    x_dict = {k: data[k] for k in present}
    z = np.random.default_rng(0).normal(size=(5, D_Z))
    idx = [i for i, e in enumerate(experts) if e.cond_var[0] in present]
    w = np.array([1.0, 2.0, 5.0])[idx]
    comps = [stats.norm.logpdf(z, *params_np(experts[i], x_dict)).sum(-1) for i in idx]
    ref = logsumexp(np.log(w / w.sum())[:, None] + np.stack(comps), 0)
    lp = q.get_log_prob({**x_dict, "z": torch.as_tensor(z)})
    np.testing.assert_allclose(lp.detach().numpy(), ref, rtol=1e-12)
    assert q.sample(x_dict)["z"].shape == (5, D_Z)
    assert sorted(q.sample_each(x_dict)) == idx


def test_expert_frequencies_chi_square() -> None:
    torch.manual_seed(1)
    far = [Normal(var=["z"], cond_var=[c], loc=c, scale=1.0) for c in ("x", "y", "w")]
    q = MixtureOfNormal(far, weights=torch.tensor([1.0, 2.0, 5.0]))
    n = 20000
    inputs = {"x": torch.full((n, 1), -50.0), "y": torch.full((n, 1), 0.0), "w": torch.full((n, 1), 50.0)}
    z = q.sample(inputs)["z"][:, 0]
    counts = np.array([(z < -25).sum(), (z.abs() < 25).sum(), (z > 25).sum()])
    assert counts.sum() == n
    assert stats.chisquare(counts, n * np.array([1, 2, 5]) / 8).pvalue > 1e-3  # false alarm 1e-3
    z = q.sample({"x": inputs["x"], "w": inputs["w"]})["z"][:, 0]  # y missing: weights 1/6, 5/6
    assert stats.chisquare([(z < 0).sum(), (z > 0).sum()], [n / 6, 5 * n / 6]).pvalue > 1e-3


def test_moments_closed_form_and_monte_carlo(setup) -> None:
    q, experts, data = setup
    w = np.array([1.0, 2.0, 5.0]) / 8
    ps = [params_np(e, data) for e in experts]
    mean = sum(wi * m for wi, (m, _) in zip(w, ps))
    var = sum(wi * (s**2 + m**2) for wi, (m, s) in zip(w, ps)) - mean**2
    np.testing.assert_allclose(q.sample_mean(data).detach().numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(q.sample_variance(data).detach().numpy(), var, rtol=1e-10)
    torch.manual_seed(2)
    n = 4000
    z = q.sample(data, sample_shape=(n,))["z"].detach().numpy()  # (n, 5, D_Z)
    assert np.all(np.abs(z.mean(0) - mean) < 5 * np.sqrt(var / n))  # 5 standard errors


def test_gradients_reach_every_expert(setup) -> None:
    q, _, data = setup
    assert q.has_reparam
    draws = q.sample_each(data)
    (sum(d.pow(2).sum() for d in draws.values()) - q.get_log_prob({**data, "z": draws[0]}).sum()).backward()
    for name, param in q.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    q.zero_grad()
    q.sample(data, reparam=True)["z"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in q.parameters())


def test_learnable_weights_get_gradients(setup) -> None:
    _, experts, data = setup
    weights = nn.Parameter(torch.ones(3, dtype=F64))
    q = MixtureOfNormal(experts, weights=weights)
    q.get_log_prob({**data, "z": torch.randn(5, D_Z, dtype=F64)}).sum().backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0


def test_text_and_errors(setup) -> None:
    q, _, _ = setup
    assert str(q) == "q(z|x,y,w) = w_0 q(z|x) + w_1 q(z|y) + w_2 q(z|w)"
    assert q.to_latex() == "q(z|x,y,w) = w_{0} q(z|x) + w_{1} q(z|y) + w_{2} q(z|w)"
    joint = q * Normal(var=["a"], cond_var=["z"], loc="z", scale=1.0)
    assert joint.prob_factorized_text == "(w_0 q(z|x) + w_1 q(z|y) + w_2 q(z|w))p(a|z)"
    with pytest.raises(ValueError, match="no expert has its inputs"):
        q.get_log_prob({"z": torch.zeros(2, D_Z, dtype=F64)})
    with pytest.raises(ValueError, match=r"q\(z\|x\).*\['z'\].*q\(u\|y\).*\['u'\]"):
        MixtureOfNormal([Expert("x"), Expert("y", var="u")])
    with pytest.raises(TypeError, match="Normal experts.*Laplace"):
        MixtureOfNormal([Expert("x"), Laplace(var=["z"], cond_var=["y"], loc="y", scale=1.0)])
    with pytest.raises(ValueError, match="positive"):
        MixtureOfNormal([Expert("x"), Expert("y")], weights=[1.0, 0.0])
    with pytest.raises(ValueError, match="sum_features"):
        q.get_log_prob({"x": torch.zeros(2, D_IN, dtype=F64), "z": torch.zeros(2, D_Z, dtype=F64)}, False)


def test_moments_with_a_constant_expert_keep_the_batch_shape() -> None:
    """An expert with constant parameters already has a batch dimension of one: the mixture's mean and variance have
    the batch's shape (a second leading dimension made eval(sample_mean=True) score 4 x 4 rows)."""
    from kizuna.distributions import MixtureOfNormal, Normal

    cond = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    const = Normal(var=["z"], loc=torch.tensor([1.0, 2.0]), scale=torch.tensor([1.0, 3.0]), name="q")
    m = MixtureOfNormal([cond, const], features_shape=[2])
    x = torch.zeros(4, 2)
    mean, var = m.sample_mean({"x": x}), m.sample_variance({"x": x})
    assert mean.shape == (4, 2) and var.shape == (4, 2)
    # equal weights: mean (0 + mu) / 2, variance E[s² + m²] - mean²
    mu, s2 = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 9.0])
    torch.testing.assert_close(mean, (mu / 2).expand(4, 2))
    torch.testing.assert_close(var, ((1.0 + s2 + mu**2) / 2 - (mu / 2) ** 2).expand(4, 2))


def test_sample_shape_draws_score_per_draw_against_scipy(setup) -> None:
    """z of shape (S, B, D_Z) with (B, D_IN) inputs: logsumexp over the experts per draw, then the sum over the rows
    (it was the logsumexp of per-expert log-densities already summed over the rows)."""
    q, experts, data = setup
    x_dict = {"x": data["x"], "w": data["w"]}
    z = np.random.default_rng(1).normal(size=(2, 5, D_Z)) * 2
    w = np.array([1.0, 5.0])
    comps = [stats.norm.logpdf(z, *params_np(experts[i], x_dict)).sum(-1) for i in (0, 2)]  # (2, 5) each
    per_draw = logsumexp(np.log(w / w.sum())[:, None, None] + np.stack(comps), 0)
    lp = q.get_log_prob({**x_dict, "z": torch.as_tensor(z)})
    np.testing.assert_allclose(lp.detach().numpy(), per_draw.sum(1), rtol=1e-12)
    lp = q.get_log_prob({**x_dict, "z": torch.as_tensor(z)}, feature_dims=[-1])
    np.testing.assert_allclose(lp.detach().numpy(), per_draw, rtol=1e-12)
    with pytest.raises(ValueError, match=r"feature_dims=\[\] must include its feature dimensions \[2\]"):
        q.get_log_prob({**x_dict, "z": torch.as_tensor(z)}, feature_dims=[])


def test_sample_shape_without_batch_n() -> None:
    """Constant experts, nothing fixing the batch: (n, 1, D) draws as a plain Normal gives (it failed to reshape
    one row), with the mixture's mean (closed form)."""
    locs = [torch.tensor([-1.0, 2.0], dtype=F64), torch.tensor([3.0, 0.0], dtype=F64)]
    q = MixtureOfNormal([Normal(var=["z"], loc=m, scale=torch.ones(2, dtype=F64)) for m in locs], weights=[1.0, 3.0])
    torch.manual_seed(0)
    n = 20000
    z = q.sample(sample_shape=[n])["z"]
    assert z.shape == (n, 1, 2)
    mean, var = np.array([2.0, 0.5]), 1 + np.array([0.25 * 1 + 0.75 * 9 - 2.0**2, 0.25 * 4 - 0.5**2])
    assert np.all(np.abs(z.reshape(n, 2).mean(0).numpy() - mean) < 5 * np.sqrt(var / n))


def test_double_gives_weights_given_as_numbers_exactly() -> None:
    """Weights given as numbers were cast from their float32 rounding by .double() (0.30000001192); the mixture's
    log-density was then 5.7e-9 relative off scipy's. A tensor of weights is converted as given."""
    import numpy as np
    from scipy import stats as st

    from kizuna.distributions import MixtureOfNormal, Normal

    m = MixtureOfNormal([Normal(var=["z"], loc=0.0, scale=1.0, name="a"), Normal(var=["z"], loc=1.0, scale=1.0,
                                                                              name="b")], weights=[0.3, 0.7]).double()
    assert m.weights.tolist() == [0.3, 0.7]
    z = torch.tensor([[-0.4], [0.9]], dtype=torch.float64)
    ref = np.log(0.3 * st.norm.pdf(z.numpy()[:, 0]) + 0.7 * st.norm.pdf(z.numpy()[:, 0], 1.0))
    np.testing.assert_allclose(m.get_log_prob({"z": z}).detach().numpy(), ref, rtol=1e-14)


@pytest.mark.parametrize("how", ["built on meta", "moved to meta"])
def test_a_mixture_on_the_meta_device_gets_its_numbers_back_from_to_empty(how: str) -> None:
    """Deferred initialisation: a mixture (and a `Normal` with constant parameters) built under
    ``torch.device("meta")`` failed in its value checks, and one moved to ``meta`` failed in ``to_empty``. Weights
    and constants given as numbers come back exactly; the log-density then matches scipy's."""
    def build():
        return MixtureOfNormal([Normal(var=["z"], loc=0.0, scale=1.0, name="a"),
                                Normal(var=["z"], loc=1.0, scale=0.3, name="b")], weights=[0.3, 0.7])

    if how == "built on meta":
        with torch.device("meta"):
            m = build()
    else:
        m = build().to("meta")
    m = m.to_empty(device="cpu").double()
    assert m.weights.tolist() == [0.3, 0.7]
    z = torch.tensor([[-0.4], [0.9]], dtype=torch.float64)
    ref = np.log(0.3 * stats.norm.pdf(z.numpy()[:, 0]) + 0.7 * stats.norm.pdf(z.numpy()[:, 0], 1.0, 0.3))
    np.testing.assert_allclose(m.get_log_prob({"z": z}).detach().numpy(), ref, rtol=1e-14)


def test_default_weights_come_back_from_the_meta_device() -> None:
    """A mixture built on the meta device with the default (equal) weights got uninitialised memory from to_empty
    (weights like 1e-42, then a draw failed)."""
    with torch.device("meta"):
        m = MixtureOfNormal([Normal(var=["z"], loc=0.0, scale=1.0, name="a"), Normal(var=["z"], loc=1.0, scale=1.0,
                                                                                  name="b")])
    m = m.to_empty(device="cpu")
    assert m.weights.tolist() == [1.0, 1.0]
    assert torch.isfinite(m.sample(batch_n=3)["z"]).all()
