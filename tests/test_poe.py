"""ProductOfNormal / ElementWiseProductOfNormal against the closed-form product in numpy float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, ElementWiseProductOfNormal, Normal, ProductOfNormal
from kizuna.losses import KullbackLeibler

F64 = torch.float64
D_IN, D_Z = 3, 2


class Expert(Normal):
    """q(z|cond): loc and softplus scale from a linear layer."""

    def __init__(self, cond: str, d_in: int = D_IN, var: str = "z") -> None:
        super().__init__(var=[var], cond_var=[cond], name="q")
        self.net = nn.Linear(d_in, 2 * D_Z).double()

    def forward(self, **cond: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(*cond.values()).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 0.1}


def numpy_product(params: list[tuple[np.ndarray, np.ndarray]], masks: list[np.ndarray] | None = None):
    """Precision-weighted product of experts and N(0, 1), float64."""
    prec, num = 1.0, 0.0
    for i, (loc, scale) in enumerate(params):
        m = 1.0 if masks is None else masks[i]
        prec = prec + m / scale**2
        num = num + m * loc / scale**2
    return num / prec, prec**-0.5


def expert_np(e: Normal, x_dict: dict) -> tuple[np.ndarray, np.ndarray]:
    p = e.get_params(x_dict)
    return p["loc"].detach().numpy(), p["scale"].detach().numpy()


@pytest.fixture
def setup() -> tuple[ProductOfNormal, list[Expert], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    experts = [Expert("x"), Expert("y"), Expert("w")]
    data = {k: torch.randn(4, D_IN, dtype=F64) for k in ("x", "y", "w")}
    return ProductOfNormal(experts, name="q", features_shape=[D_Z]), experts, data


@pytest.mark.parametrize("present", [("x", "y", "w"), ("y",), ("x", "w")])
def test_params_and_log_prob_match_closed_form(setup, present) -> None:
    q, experts, data = setup
    x_dict = {k: data[k] for k in present}
    ref_loc, ref_scale = numpy_product([expert_np(e, x_dict) for e in experts if e.cond_var[0] in present])
    params = q.get_params(x_dict)
    np.testing.assert_allclose(params["loc"].detach().numpy(), ref_loc, rtol=1e-12)
    np.testing.assert_allclose(params["scale"].detach().numpy(), ref_scale, rtol=1e-12)
    z = np.random.default_rng(3).normal(size=(4, D_Z))
    lp = q.get_log_prob({**x_dict, "z": torch.as_tensor(z)})
    np.testing.assert_allclose(lp.detach().numpy(), stats.norm.logpdf(z, ref_loc, ref_scale).sum(-1), rtol=1e-12)
    assert q.sample(x_dict)["z"].shape == (4, D_Z)


def test_no_expert_present_is_the_prior(setup) -> None:
    q, _, _ = setup
    params = q.get_params({})
    assert torch.equal(params["loc"], torch.zeros(1, D_Z)) and torch.equal(params["scale"], torch.ones(1, D_Z))
    assert q.sample(batch_n=5)["z"].shape == (5, D_Z)
    z = torch.randn(5, D_Z)
    np.testing.assert_allclose(q.get_log_prob({"z": z}).numpy(), stats.norm.logpdf(z.numpy()).sum(-1), rtol=1e-6)
    bare = ProductOfNormal([Expert("x")])
    assert bare.get_log_prob({"z": z}).shape == (5,)  # the shape comes from z
    with pytest.raises(ValueError, match="features_shape"):
        bare.sample(batch_n=2)


def test_constant_expert_broadcasts_over_the_batch() -> None:
    const = Normal(var=["z"], loc=torch.tensor([1.0, -2.0], dtype=F64), scale=torch.tensor([0.5, 2.0], dtype=F64))
    cond = Expert("x")
    q = ProductOfNormal([const, cond])
    x = torch.randn(3, D_IN, dtype=F64)
    ref_loc, ref_scale = numpy_product([(np.array([[1.0, -2.0]]), np.array([[0.5, 2.0]])), expert_np(cond, {"x": x})])
    np.testing.assert_allclose(q.get_params({"x": x})["loc"].detach().numpy(), ref_loc, rtol=1e-12)
    only_const = numpy_product([(np.array([[1.0, -2.0]]), np.array([[0.5, 2.0]]))])[1]
    np.testing.assert_allclose(q.get_params({})["scale"].numpy(), only_const, rtol=1e-12)  # batch of 1
    assert q.sample({}, batch_n=4)["z"].shape == (4, D_Z)


def test_analytic_kl_against_standard_normal(setup) -> None:
    q, experts, data = setup
    prior = Normal(var=["z"], loc=torch.zeros(D_Z, dtype=F64), scale=torch.ones(D_Z, dtype=F64), name="p_prior")
    kl = KullbackLeibler(q, prior)
    assert kl.method == "analytic" and kl.input_var == []
    x_dict = {"x": data["x"], "w": data["w"]}
    m, s = numpy_product([expert_np(e, x_dict) for e in experts if e.cond_var[0] in x_dict])
    ref = (0.5 * (s**2 + m**2 - 1) - np.log(s)).sum(-1)
    np.testing.assert_allclose(kl.eval(x_dict).detach().numpy(), ref, rtol=1e-10)


def test_reparam_gradients_reach_every_expert(setup) -> None:
    q, _, data = setup
    assert q.has_reparam
    z = q.sample(data, reparam=True)["z"]
    (z.pow(2).sum() + q.get_entropy(data).sum()).backward()
    for name, param in q.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_text(setup) -> None:
    q, _, _ = setup
    assert str(q) == "q(z|x,y,w) ∝ N(z;0,I)q(z|x)q(z|y)q(z|w)"
    assert q.to_latex() == r"q(z|x,y,w) \propto \mathcal{N}\left(z;0,I\right)q(z|x)q(z|y)q(z|w)"
    assert (q * Normal(var=["a"], cond_var=["z"], loc="z", scale=1.0)).prob_factorized_text == "q(z|x,y,w)p(a|z)"


def test_element_wise_masks_zero_elements() -> None:
    torch.manual_seed(1)
    expert = Expert("a", d_in=4)
    q = ElementWiseProductOfNormal(expert, name="q", features_shape=[D_Z])
    a = torch.randn(3, 4, dtype=F64)
    a[0, 1] = a[1, 0] = a[1, 3] = 0.0
    a[2] = 0.0  # a row with nothing observed: the prior
    params, masks = [], []
    for d in range(4):
        only_d = torch.zeros_like(a)
        only_d[:, d] = a[:, d]
        params.append(expert_np(expert, {"a": only_d}))
        masks.append((a[:, d] != 0).numpy()[:, None].astype(float))
    ref_loc, ref_scale = numpy_product(params, masks)
    got = q.get_params({"a": a})
    np.testing.assert_allclose(got["loc"].detach().numpy(), ref_loc, rtol=1e-12)
    np.testing.assert_allclose(got["scale"].detach().numpy(), ref_scale, rtol=1e-12)
    np.testing.assert_allclose(ref_loc[2], 0.0) and np.testing.assert_allclose(ref_scale[2], 1.0)
    assert str(q) == "q(z|a) ∝ N(z;0,I)prod_{d} q(z|a_d)"
    q.get_log_prob({"a": a, "z": torch.randn(3, D_Z, dtype=F64)}).sum().backward()
    assert all(p.grad is not None for p in expert.parameters())


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"q\(z\|x\).*\['z'\].*q\(u\|y\).*\['u'\]"):
        ProductOfNormal([Expert("x"), Expert("y", var="u")])
    with pytest.raises(TypeError, match="Normal experts.*Bernoulli"):
        ProductOfNormal([Expert("x"), Bernoulli(var=["z"], cond_var=["y"], probs="y")])
    with pytest.raises(ValueError, match="exactly one conditioning variable"):
        ElementWiseProductOfNormal(Normal(var=["z"], cond_var=["x", "y"], loc="x", scale="y"))
    two = ProductOfNormal([Expert("x"), Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0)])
    with pytest.raises(ValueError, match="disagree on the shape"):
        two.get_params({"x": torch.randn(2, D_IN, dtype=F64), "y": torch.randn(2, 5, dtype=F64)})


def test_experts_with_different_numbers_of_rows_are_named():
    from kizuna.distributions import Normal, ProductOfNormal

    qa = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    qb = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
    p = ProductOfNormal([qa, qb], name="q")
    with pytest.raises(ValueError, match=r"the experts' inputs have different numbers of rows "
                                         r"\(q\(z\|x\): 3, q\(z\|y\): 4\)"):
        p.sample({"x": torch.zeros(3, 2), "y": torch.zeros(4, 2)})
    assert p.sample({"x": torch.zeros(3, 2), "y": torch.zeros(1, 2)})["z"].shape == (3, 2)  # one row broadcasts


def test_tiny_scales_give_the_closed_form_not_nan() -> None:
    """Two experts of scale 1e-20 at 10 and 20 (float32): the precisions overflowed (1e40) and the mean was NaN; in
    log space the product is the closed form, mean 15 and scale 1e-20 / sqrt(2) (the prior's precision 1 vanishes).
    `NormalProduct` (no prior expert) likewise."""
    from kizuna.distributions import Normal, ProductOfNormal
    from kizuna.distributions.normal_product import NormalProduct

    a = Normal(var=["z"], cond_var=["x"], loc="x", scale=1e-20, name="q")
    b = Normal(var=["z"], cond_var=["y"], loc="y", scale=1e-20, name="q")
    given = {"x": torch.full((1, 1), 10.0), "y": torch.full((1, 1), 20.0)}
    for params in (ProductOfNormal([a, b], name="q").get_params(given), NormalProduct([a, b]).get_params(given)):
        torch.testing.assert_close(params["loc"], torch.full((1, 1), 15.0))
        torch.testing.assert_close(params["scale"].reshape(1, 1), torch.full((1, 1), 1e-20 / 2**0.5))
    # ordinary scales: precisions 1 (prior), 1/4 and 4, so the mean is (10/4 + 20 * 4) / 5.25, the scale 5.25^-0.5
    a, b = (Normal(var=["z"], cond_var=[v], loc=v, scale=s, name="q") for v, s in (("x", 2.0), ("y", 0.5)))
    params = ProductOfNormal([a, b], name="q").get_params(given)
    torch.testing.assert_close(params["loc"], torch.full((1, 1), 82.5 / 5.25))
    torch.testing.assert_close(params["scale"], torch.full((1, 1), 5.25**-0.5))
