"""The distribution algebra: products ``p * q``, ``marginalize_var`` and ``replace_var``.

Densities are checked against ``scipy.stats`` in float64; samplers against Monte-Carlo
moments whose tolerance is a stated number of standard errors (fixed seeds).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from kizuna.distributions import (
    Bernoulli,
    Distribution,
    JointDistribution,
    MarginalizeVarDistribution,
    MixtureOfNormal,
    Normal,
    ProductOfNormal,
    ReplaceVarDistribution,
)

F64 = torch.float64
# Five standard errors: a two-sided false-alarm rate of 5.7e-7 per moment checked.
N_SE = 5.0


def t64(value: float | list[float]) -> torch.Tensor:
    return torch.tensor(value, dtype=F64)


def root(var: str, loc: float, scale: float, name: str = "p", features: tuple[int, ...] = ()) -> Normal:
    """``N(var; loc, scale^2)`` with constant float64 parameters."""
    return Normal(var=[var], loc=t64(loc), scale=t64(scale), features_shape=features, name=name)


def link(var: str, parent: str, scale: float, name: str = "p") -> Normal:
    """``N(var; parent, scale^2)``: the parent variable is the mean (a string parameter)."""
    return Normal(var=[var], cond_var=[parent], loc=parent, scale=t64(scale), name=name)


class ScaledLink(Normal):
    """``N(x; a z, s^2)`` through ``forward``: a Normal subclass, as users write them."""

    def __init__(self, a: float, s: float) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.a, self.s = a, s

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.a * z, "scale": torch.full_like(z, self.s)}


class SumLink(Normal):
    """``N(x; z + y, 1)``: a factor with two conditioning variables."""

    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z", "y"], name="p")

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": z + y, "scale": torch.ones_like(z)}


# The chain p(x|z) p(z|w) p(w) used throughout.
SX, SZ, SW, MW = 0.5, 0.7, 1.2, 1.0


def chain() -> tuple[Normal, Normal, Normal]:
    return link("x", "z", SX), link("z", "w", SZ), root("w", MW, SW)


def chain_logpdf(s: dict[str, torch.Tensor]) -> np.ndarray:
    x, z, w = (s[k].numpy() for k in "xzw")
    return stats.norm.logpdf(x, z, SX) + stats.norm.logpdf(z, w, SZ) + stats.norm.logpdf(w, MW, SW)


def assert_mean(sample: torch.Tensor, mean: float, var: float) -> None:
    se = (var / sample.numel()) ** 0.5
    assert abs(sample.mean().item() - mean) < N_SE * se, (sample.mean().item(), mean, se)


def assert_var(sample: torch.Tensor, var: float) -> None:
    se = var * (2.0 / (sample.numel() - 1)) ** 0.5  # standard error of a Gaussian sample variance
    assert abs(sample.var().item() - var) < N_SE * se, (sample.var().item(), var, se)


# ---------------------------------------------------------------------------- product
class TestProduct:
    def test_two_factors_keys_order_and_text(self) -> None:
        p, prior = link("x", "z", 1.0), root("z", 0.0, 1.0, name="p_prior")
        joint = p * prior
        assert isinstance(joint, JointDistribution)
        assert joint.var == ["x", "z"] and joint.cond_var == [] and joint.input_var == []
        assert joint.factors() == [p, prior]
        s = joint.sample(batch_n=4)
        assert list(s) == ["z", "x"]  # z is drawn first: p(x|z) needs it
        assert all(v.shape == (4,) for v in s.values())

    @pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
    def test_ancestral_order_whatever_the_multiplication_order(self, perm: tuple[int, ...]) -> None:
        factors = chain()
        picked = [factors[i] for i in perm]
        joint = picked[0] * picked[1] * picked[2]
        # Pixyz's order: first appearance over each factor's variables, then its conditions (the joint's own only)
        own = {v for f in picked for v in f.var}
        assert joint.var == list(dict.fromkeys(v for f in picked for v in (*f.var, *f.cond_var) if v in own))
        assert joint.prob_factorized_text == "".join(f.prob_text for f in picked)
        torch.manual_seed(0)
        s = joint.sample(batch_n=3, return_all=False)
        assert list(s) == ["w", "z", "x"]

    def test_sampling_uses_the_values_it_just_drew(self) -> None:
        # With a tiny child scale, each child equals its parent: x comes from the z returned.
        joint = link("x", "z", 1e-9) * link("z", "w", 1e-9) * root("w", 0.0, 1.0)
        s = joint.sample(batch_n=50)
        torch.testing.assert_close(s["x"], s["w"], atol=1e-7, rtol=0)
        assert s["w"].std() > 0.3

    def test_log_prob_is_sum_of_factors_and_matches_scipy(self) -> None:
        px, pz, pw = chain()
        joint = px * pz * pw
        torch.manual_seed(1)
        s = joint.sample(batch_n=7)
        lp = joint.get_log_prob(s)
        assert lp.shape == (7,) and lp.dtype == F64
        parts = px.get_log_prob(s) + pz.get_log_prob(s) + pw.get_log_prob(s)
        torch.testing.assert_close(lp, parts, rtol=1e-12, atol=0)
        np.testing.assert_allclose(lp.numpy(), chain_logpdf(s), rtol=1e-10)

    def test_log_prob_with_features_sums_feature_dims(self) -> None:
        p, prior = link("x", "z", 0.3), root("z", 0.5, 2.0, features=(3,), name="p_prior")
        joint = p * prior
        s = joint.sample(batch_n=5)
        assert s["z"].shape == (5, 3) and s["x"].shape == (5, 3)
        expected = (stats.norm.logpdf(s["x"].numpy(), s["z"].numpy(), 0.3)
                    + stats.norm.logpdf(s["z"].numpy(), 0.5, 2.0)).sum(1)
        np.testing.assert_allclose(joint.get_log_prob(s).numpy(), expected, rtol=1e-10)

    def test_gaussian_chain_moments(self) -> None:
        """x = w + e_z + e_x: Var(x) = sx^2 + sz^2 + sw^2, Cov(x, w) = sw^2, E[x] = mw."""
        joint = link("x", "z", SX) * link("z", "w", SZ) * root("w", MW, SW)
        torch.manual_seed(2)
        s = joint.sample(batch_n=20000)
        var_x = SX**2 + SZ**2 + SW**2
        assert_mean(s["x"], MW, var_x)
        assert_var(s["x"], var_x)
        assert_var(s["z"], SZ**2 + SW**2)
        assert_var(s["x"] - s["z"], SX**2)  # the child's noise is independent of its parent
        # Cov(x, w) = Var(w) means x - w = e_z + e_x is uncorrelated with w; the product of
        # the two centred, independent terms has variance (sx^2 + sz^2) sw^2.
        cov = ((s["x"] - s["w"]) * (s["w"] - MW)).mean().item()
        se = ((SX**2 + SZ**2) * SW**2 / s["x"].numel()) ** 0.5
        assert abs(cov) < N_SE * se

    def test_chain_with_normal_subclass(self) -> None:
        """p(x|z) = N(2z, 0.5^2) written as a subclass; Var(x) = 0.25 + 4 (sz^2 + sw^2)."""
        px = ScaledLink(2.0, 0.5)
        joint = px * link("z", "w", SZ) * root("w", MW, SW)
        assert str(joint) == "p(x,z,w) = p(x|z)p(z|w)p(w)"
        torch.manual_seed(3)
        s = joint.sample(batch_n=20000)
        var_x = 0.25 + 4 * (SZ**2 + SW**2)
        assert_mean(s["x"], 2 * MW, var_x)
        assert_var(s["x"], var_x)
        small = {k: v[:6] for k, v in s.items()}
        expected = (stats.norm.logpdf(small["x"].numpy(), 2 * small["z"].numpy(), 0.5)
                    + stats.norm.logpdf(small["z"].numpy(), small["w"].numpy(), SZ)
                    + stats.norm.logpdf(small["w"].numpy(), MW, SW))
        np.testing.assert_allclose(joint.get_log_prob(small).numpy(), expected, rtol=1e-10)

    def test_nested_products_are_associative(self) -> None:
        a, b, c = chain()
        left, right = (a * b) * c, a * (b * c)
        assert left.factors() == right.factors() == [a, b, c]
        assert left.var == right.var and left.cond_var == right.cond_var
        assert str(left) == str(right) == "p(x,z,w) = p(x|z)p(z|w)p(w)"
        assert left.to_latex() == right.to_latex()
        # a conditional joint completed later
        partial = a * b
        assert partial.cond_var == ["w"]
        assert (partial * c).cond_var == [] and (c * partial).cond_var == []
        s = left.sample(batch_n=4)
        torch.testing.assert_close(left.get_log_prob(s), (c * (b * a)).get_log_prob(s), rtol=1e-12, atol=0)

    def test_conditional_joint(self) -> None:
        p, q = link("x", "z", 1.0), link("z", "y", 1.0, name="q")
        joint = p * q
        assert joint.var == ["x", "z"] and joint.cond_var == ["y"] and joint.input_var == ["y"]
        assert str(joint) == "p(x,z|y) = p(x|z)q(z|y)"
        with pytest.raises(ValueError, match=r"p\(x,z\|y\) needs y"):
            joint.sample(batch_n=2)
        y = t64([0.0, 1.0, 2.0])
        s = joint.sample({"y": y})
        assert s["y"] is y and s["x"].shape == (3,)
        expected = stats.norm.logpdf(s["x"].numpy(), s["z"].numpy(), 1) + stats.norm.logpdf(s["z"].numpy(), y, 1)
        np.testing.assert_allclose(joint.get_log_prob(s).numpy(), expected, rtol=1e-10)

    def test_cond_var_lists_each_needed_variable_once(self) -> None:
        joint = SumLink() * link("z", "y", 1.0) * link("y", "u", 1.0)
        assert joint.var == ["x", "z", "y"] and joint.cond_var == ["u"]
        joint2 = SumLink() * link("z", "y", 1.0)
        assert joint2.cond_var == ["y"]  # y conditions both factors, listed once

    def test_variable_defined_twice(self) -> None:
        p, q = link("x", "z", 1.0), root("x", 0.0, 1.0, name="q")
        with pytest.raises(ValueError, match=r"variable x is defined twice: by p\(x\|z\) and by q\(x\)"):
            p * q

    @pytest.mark.parametrize("factors", [
        [link("x", "z", 1.0), link("z", "x", 1.0, name="q")],
        [link("x", "y", 1.0), link("y", "z", 1.0), link("z", "x", 1.0), root("w", 0.0, 1.0)],
    ], ids=["two", "three+root"])
    def test_cycle(self, factors: list[Distribution]) -> None:
        with pytest.raises(ValueError, match="cycle") as err:
            JointDistribution(factors)
        for f in factors[:2]:
            assert f.prob_text in str(err.value)

    def test_modules_and_parameters_are_registered(self) -> None:
        prior = Normal(var=["z"], loc=nn.Parameter(torch.zeros(())), scale=1.0)
        joint = link("x", "z", 1.0) * prior
        assert [id(q) for q in joint.parameters()] == [id(prior.loc)]


# ------------------------------------------------------------------ sample() semantics
class TestSampleSemantics:
    def test_batch_n_defaults_to_one(self) -> None:
        joint = link("x", "z", 1.0) * root("z", 0.0, 1.0)
        assert joint.sample()["x"].shape == (1,)
        assert joint.sample(batch_n=6)["x"].shape == (6,)

    def test_batch_comes_from_x_dict(self) -> None:
        joint = link("x", "z", 1.0) * link("z", "y", 1.0) * root("w", 0.0, 1.0)
        s = joint.sample({"y": torch.zeros(5, dtype=F64)})
        assert {k: tuple(v.shape) for k, v in s.items()} == {"y": (5,), "z": (5,), "x": (5,), "w": (5,)}

    def test_x_dict_is_not_mutated_and_extra_keys_pass_through(self) -> None:
        joint = link("x", "z", 1.0) * link("z", "y", 1.0)
        given = {"y": torch.zeros(2, dtype=F64), "label": "kept"}
        s = joint.sample(given)
        assert list(given) == ["y", "label"]
        assert s["label"] == "kept" and s["y"] is given["y"]
        assert set(joint.sample(given, return_all=False)) == {"x", "z"}

    def test_sample_shape(self) -> None:
        # tiny scales: every draw equals its row's y, so rows must stay aligned with y
        joint = link("x", "z", 1e-9) * link("z", "y", 1e-9)
        y = torch.arange(4, dtype=F64) * 10
        s = joint.sample({"y": y}, sample_shape=(2, 3))
        assert s["y"] is y
        for k in "xz":
            assert s[k].shape == (2, 3, 4)
            torch.testing.assert_close(s[k], y.expand(2, 3, 4), atol=1e-6, rtol=0)

    def test_sample_shape_with_features_and_batch_n(self) -> None:
        joint = link("x", "z", 1.0) * root("z", 0.0, 1.0, features=(3,))
        s = joint.sample(batch_n=5, sample_shape=(2,))
        assert s["x"].shape == (2, 5, 3) and s["z"].shape == (2, 5, 3)
        assert joint.get_log_prob({k: v[0] for k, v in s.items()}).shape == (5,)

    def test_reparam_carries_gradient(self) -> None:
        loc = nn.Parameter(torch.zeros((), dtype=F64))
        joint = link("x", "z", 1.0) * Normal(var=["z"], loc=loc, scale=t64(1.0))
        s = joint.sample(batch_n=5, reparam=True)
        s["x"].sum().backward()
        # x = loc + e_z + e_x, so d(sum x)/d loc = batch size
        torch.testing.assert_close(loc.grad, t64(5.0))
        s = joint.sample(batch_n=5)
        assert not s["x"].requires_grad and not s["z"].requires_grad

    def test_reparam_refused_for_discrete_factor(self) -> None:
        joint = link("x", "z", 1.0) * Bernoulli(var=["z"], probs=0.5, name="q")
        joint.sample(batch_n=2)  # fine without reparam
        with pytest.raises(ValueError, match=r"reparam=True.*q\(z\)"):
            joint.sample(batch_n=2, reparam=True)


# ------------------------------------------------------------------------ marginalize
class TestMarginalize:
    def test_var_cond_var_and_type(self) -> None:
        px, pz, pw = chain()
        joint = px * pz * pw
        m = joint.marginalize_var(["z", "w"])
        assert isinstance(m, MarginalizeVarDistribution)
        assert m.var == ["x"] and m.cond_var == []
        assert joint.marginalize_var("z").var == ["x", "w"]
        cond = (px * pz).marginalize_var("z")
        assert cond.var == ["x"] and cond.cond_var == ["w"] and cond.input_var == ["w"]
        assert [id(q) for q in m.parameters()] == [id(q) for q in joint.parameters()]

    def test_sampling_drops_the_variable(self) -> None:
        px, pz, pw = chain()
        m = (px * pz * pw).marginalize_var("z")
        assert set(m.sample(batch_n=3)) == {"x", "w"}
        cond = (px * pz).marginalize_var(["z"])
        w = torch.zeros(3, dtype=F64)
        assert set(cond.sample({"w": w})) == {"w", "x"}
        assert set(cond.sample({"w": w}, return_all=False)) == {"x"}
        assert cond.sample({"w": w}, sample_shape=(2,))["x"].shape == (2, 3)

    def test_marginal_samples_follow_the_marginal(self) -> None:
        """∫∫ p(x|z)p(z|w)p(w) dz dw = N(mw, sx^2+sz^2+sw^2): Kolmogorov-Smirnov, alpha = 1e-4."""
        m = (link("x", "z", SX) * link("z", "w", SZ) * root("w", MW, SW)).marginalize_var(["z", "w"])
        torch.manual_seed(4)
        x = m.sample(batch_n=4000)["x"].numpy()
        result = stats.kstest(x, stats.norm(MW, (SX**2 + SZ**2 + SW**2) ** 0.5).cdf)
        assert result.pvalue > 1e-4

    def test_log_prob_points_to_iwae(self) -> None:
        m = (link("x", "z", 1.0) * root("z", 0.0, 1.0)).marginalize_var("z")
        with pytest.raises(NotImplementedError, match="IWAE"):
            m.get_log_prob({"x": torch.zeros(2, dtype=F64)})

    def test_unknown_or_conditioning_variable(self) -> None:
        joint = link("x", "z", 1.0) * link("z", "y", 1.0)
        with pytest.raises(ValueError, match=r"cannot marginalise u\b.*\['x', 'z'\]"):
            joint.marginalize_var("u")
        with pytest.raises(ValueError, match=r"cannot marginalise y\b"):
            joint.marginalize_var("y")

    def test_every_variable(self) -> None:
        joint = link("x", "z", 1.0) * root("z", 0.0, 1.0)
        with pytest.raises(ValueError, match=r"p\(x,z\): marginalising every variable"):
            joint.marginalize_var(["x", "z"])

    def test_marginalise_twice(self) -> None:
        m = (link("x", "z", 1.0) * link("z", "w", 1.0) * root("w", 0.0, 1.0)).marginalize_var("z")
        mm = m.marginalize_var("w")
        assert mm.var == ["x"] and set(mm.sample(batch_n=2)) == {"x"}


# ----------------------------------------------------------------------------- replace
class TestReplace:
    def test_conditioning_variable(self) -> None:
        p = link("x", "z", 0.5)
        r = p.replace_var(z="y")
        assert isinstance(r, ReplaceVarDistribution)
        assert r.var == ["x"] and r.cond_var == ["y"] and r.input_var == ["y"]
        y = t64([-1.0, 0.0, 3.0])
        s = r.sample({"y": y})
        assert set(s) == {"x", "y"} and s["y"] is y
        with pytest.raises(ValueError, match=r"p\(x\|y\) needs y"):
            r.sample({"z": y})
        x = t64([0.1, 0.2, 0.3])
        torch.testing.assert_close(r.get_log_prob({"x": x, "y": y}), p.get_log_prob({"x": x, "z": y}))
        np.testing.assert_allclose(r.get_log_prob({"x": x, "y": y}).numpy(), stats.norm.logpdf(x, y, 0.5))
        torch.testing.assert_close(r.sample_mean({"y": y}), p.sample_mean({"z": y}))

    def test_random_variable_is_returned_under_its_new_name(self) -> None:
        p = link("x", "z", 1.0)
        r = p.replace_var(x="u")
        s = r.sample({"z": torch.zeros(2, dtype=F64)}, return_all=False)
        assert list(s) == ["u"]

    def test_swap(self) -> None:
        p = link("x", "z", 0.5)
        r = p.replace_var(x="z", z="x")
        assert r.prob_text == "p(z|x)"
        a, b = t64([0.0, 1.0]), t64([2.0, -1.0])
        torch.testing.assert_close(r.get_log_prob({"z": a, "x": b}), p.get_log_prob({"x": a, "z": b}))
        s = r.sample({"x": t64([100.0])})
        assert abs(s["z"].item() - 100.0) < 10 and s["x"].item() == 100.0

    def test_replace_on_joint(self) -> None:
        px, pz, pw = chain()
        joint = px * pz * pw
        r = joint.replace_var(z="v", w="u")
        assert r.var == ["x", "v", "u"] and r.cond_var == []
        torch.manual_seed(5)
        s = r.sample(batch_n=4)
        assert list(s) == ["u", "v", "x"]
        back = {"x": s["x"], "z": s["v"], "w": s["u"]}
        torch.testing.assert_close(r.get_log_prob(s), joint.get_log_prob(back), rtol=1e-12, atol=0)
        np.testing.assert_allclose(r.get_log_prob(s).numpy(), chain_logpdf(back), rtol=1e-10)

    def test_replaced_factor_in_a_product(self) -> None:
        joint = link("x", "z", 1.0).replace_var(z="y") * root("y", 0.0, 1.0, name="q")
        assert joint.var == ["x", "y"] and joint.cond_var == []
        s = joint.sample(batch_n=3)
        assert list(s) == ["y", "x"]

    def test_replace_and_marginalise_compose(self) -> None:
        joint = link("x", "z", 1.0) * root("z", 0.0, 1.0)
        a = joint.replace_var(z="w").marginalize_var("w")
        b = joint.marginalize_var("z").replace_var(x="u")
        assert a.var == ["x"] and set(a.sample(batch_n=2)) == {"x"}
        assert b.var == ["u"] and set(b.sample(batch_n=2)) == {"u"}

    def test_replace_back_is_identity(self) -> None:
        joint = link("x", "z", 1.0) * root("z", 0.0, 1.0)
        back = joint.replace_var(z="w").replace_var(w="z")
        assert back.var == joint.var and str(back) == str(joint)
        s = joint.sample(batch_n=3)
        torch.testing.assert_close(back.get_log_prob(s), joint.get_log_prob(s), rtol=0, atol=0)

    def test_unknown_name(self) -> None:
        p = link("x", "z", 1.0)
        with pytest.raises(ValueError, match=r"p\(x\|z\): cannot replace w; its variables are \['x', 'z'\]"):
            p.replace_var(w="y")

    def test_collision(self) -> None:
        with pytest.raises(ValueError, match="same name"):
            link("x", "z", 1.0).replace_var(x="z")

    def test_helpers_read_the_new_names(self) -> None:
        p = Normal(var=["x"], cond_var=["z"], loc="z", scale=t64([1.0, 2.0]))
        r = p.replace_var(z="y", x="u")
        y = torch.randn(4, 2, dtype=F64)
        torch.testing.assert_close(r.sample_mean({"y": y}), y)
        torch.testing.assert_close(r.sample_variance({"y": y}), p.sample_variance({"z": y}))
        torch.testing.assert_close(r.get_entropy({"y": y}), p.get_entropy({"z": y}))
        assert r.get_params({"y": y})["loc"] is y
        assert r.get_dist({"y": y}).event_shape == (2,)
        assert Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[3]).replace_var(z="y").features_shape == (3,)

    def test_parameters_are_shared(self) -> None:
        loc = nn.Parameter(torch.zeros(()))
        p = Normal(var=["z"], loc=loc, scale=1.0)
        assert [id(q) for q in p.replace_var(z="y").parameters()] == [id(loc)]


# ----------------------------------------------------------- given variables in sample()
def test_product_sample_holds_given_factors_fixed():
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1e-6)
    z0 = torch.tensor([[5.0, -5.0], [1.0, 2.0], [0.0, 3.0]])
    out = (lik * prior).sample({"z": z0})
    assert out["z"] is z0  # kept, not redrawn
    torch.testing.assert_close(out["x"], z0, atol=1e-4, rtol=0)  # x drawn given the given z


def test_renamed_product_holds_a_given_factor_fixed_as_the_product_does():
    """``(lik * prior).replace_var(z="u").sample({"u": z})`` holds u fixed and draws x given it, the same draws as the
    unrenamed product given z (it was refused by the single-distribution check: 'x_dict gives u but not x')."""
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    joint = lik * prior
    renamed = joint.replace_var(z="u")
    z0 = torch.randn(3, 2)
    for shape in [(), (2,), (2, 4)]:
        torch.manual_seed(11)
        want = joint.sample({"z": z0}, sample_shape=shape)
        torch.manual_seed(11)
        got = renamed.sample({"u": z0}, sample_shape=shape)
        assert set(got) == {"u", "x"} and got["u"] is z0
        assert got["x"].shape == (*shape, 3, 2)
        torch.testing.assert_close(got["x"], want["x"], rtol=0, atol=0)


def test_giving_part_of_a_factor_is_an_error_and_a_whole_one_is_held_fixed():
    joint = MultivariateNormalPair() * Normal(var=["c"], cond_var=["a"], loc="a", scale=1.0)
    with pytest.raises(ValueError, match="gives a but not b"):
        joint.sample({"a": torch.zeros(2, 1)})
    held = joint.sample({"a": torch.zeros(2, 1), "b": torch.ones(2, 1)})  # a product holds a whole factor fixed
    assert held["a"].tolist() == [[0.0], [0.0]] and held["b"].tolist() == [[1.0], [1.0]] and held["c"].shape == (2, 1)
    # a single distribution redraws its own variable, as Pixyz (q00_given.py: N(0,1) given z = 7 returns Pixyz's
    # draw [1.5410, -0.2934] after torch.manual_seed(0), one row: the given value does not size the batch)
    single = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2])
    torch.manual_seed(0)
    out = single.sample({"z": torch.full((3, 2), 7.0)})["z"]
    torch.testing.assert_close(out, torch.tensor([[1.5410, -0.2934]]), rtol=0, atol=1e-4)
    pair = MultivariateNormalPair()  # a single factor given part of its variables redraws them all (no error)
    assert pair.sample({"a": torch.full((2, 1), 7.0)})["a"].shape == (1, 1)


class MultivariateNormalPair(Distribution):
    """A two-variable factor (a, b) ~ N(0, 1) each, for the partial-fixing check."""

    def __init__(self):
        super().__init__(var=["a", "b"], name="r")

    def _sample(self, x_dict, batch_n, reparam):
        n = batch_n or 1
        return {"a": torch.randn(n, 1), "b": torch.randn(n, 1)}


def test_batch_n_that_contradicts_the_inputs_is_an_error():
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    with pytest.raises(ValueError, match=r"batch_n=5 but the conditioning values \(z\) have batch size 4"):
        lik.sample({"z": torch.zeros(4, 2)}, batch_n=5)
    assert lik.sample({"z": torch.zeros(4, 2)}, batch_n=4)["x"].shape == (4, 2)


def test_distinct_terms_that_print_alike_are_both_reported():
    """Two different terms with the same formula text are two entries of the per-term report (the second replaced
    the first); one node used twice is one entry."""
    import torch

    from kizuna.distributions import Normal
    from kizuna.losses import Expectation, KullbackLeibler, LogProb

    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    kl = KullbackLeibler(q, Normal(var=["z"], loc=0.0, scale=1.0))
    first, second = Expectation(q, LogProb(p)), Expectation(q, LogProb(p))
    loss = (first - 2 * second + kl + kl).mean()
    torch.manual_seed(0)
    value, terms = loss.eval({"x": torch.zeros(3)}, return_terms=True)
    label = str(first)
    assert list(terms) == [label, f"{label} (2)", str(kl)]
    assert torch.isclose(value, terms[label] - 2 * terms[f"{label} (2)"] + 2 * terms[str(kl)])


def test_product_sample_shape_without_batch_n():
    """p(y|x)p(x) with sample_shape and no batch_n: (n, 1, 2) for both variables, as a plain Normal gives (it
    drew one row for n draws and failed to reshape it); the n draws are independent, with the closed-form
    moments x ~ N(1, 0.5^2), y | x ~ N(x, 2^2): E[y] = 1, Var[y] = 4.25, Cov[x, y] = 0.25."""
    p = link("y", "x", 2.0) * root("x", [1.0, 1.0], [0.5, 0.5], features=(2,))
    assert root("x", [1.0, 1.0], [0.5, 0.5], features=(2,)).sample(sample_shape=[4])["x"].shape == (4, 1, 2)
    out = p.sample(sample_shape=[4])
    assert out["x"].shape == out["y"].shape == (4, 1, 2)
    assert p.sample(sample_shape=[2, 3])["y"].shape == (2, 3, 1, 2)
    torch.manual_seed(0)
    n = 40000
    out = p.sample(sample_shape=[n])
    x, y = out["x"].reshape(n, 2).numpy(), out["y"].reshape(n, 2).numpy()
    assert np.all(np.abs(y.mean(0) - 1.0) < N_SE * np.sqrt(4.25 / n))
    assert np.all(np.abs(y.var(0) / 4.25 - 1) < N_SE * np.sqrt(2 / n))
    cov = ((x - x.mean(0)) * (y - y.mean(0))).mean(0)
    assert np.all(np.abs(cov - 0.25) < N_SE * np.sqrt((0.25 * 4.25 + 0.25**2) / n))


class _Affine(Normal):
    """p(x|z) = N(2z + 1, 0.5^2)."""

    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": 2 * z + 1, "scale": torch.full_like(z, 0.5)}


@pytest.mark.parametrize("rename, given, drawn", [({"x": "z", "z": "x"}, "x", "z"),  # a swap
                                                  ({"x": "y", "z": "x"}, "x", "y")])  # a chain
def test_a_renamed_product_given_a_name_that_it_reuses_draws_the_other_factor(rename, given, drawn) -> None:
    """The value given under a reused name is the renamed variable only (it also held the inner product's own
    variable of that name fixed, and the draw of that factor was skipped without an error)."""
    lik, prior = _Affine(), Normal(var=["z"], loc=0.3, scale=1.5, name="p")
    v = torch.linspace(-1.0, 1.0, 7).unsqueeze(1)
    torch.manual_seed(3)
    out = (lik * prior).replace_var(**rename).sample({given: v})
    torch.manual_seed(3)
    expected = (lik * prior).sample({"z": v})["x"]  # the same draw under the old names
    assert sorted(out) == sorted([given, drawn])
    torch.testing.assert_close(out[drawn], expected)
    assert torch.equal(out[given], v)


def test_a_renamed_product_of_experts_reads_a_missing_modality_in_its_helpers() -> None:
    """sample_mean / sample_variance / get_params of a renamed product of experts given one of two modalities: the
    present expert N(3, 1) and the prior N(0, 1) give precision 2, mean 3/2 (it asked for the absent modality)."""
    qa = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    qb = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
    poe = ProductOfNormal([qa, qb], name="q", features_shape=[2]).replace_var(x="a")
    given = {"a": torch.full((2, 2), 3.0)}
    torch.testing.assert_close(poe.sample_mean(given), torch.full((2, 2), 1.5))
    torch.testing.assert_close(poe.sample_variance(given), torch.full((2, 2), 0.5))
    torch.testing.assert_close(poe.get_params(given)["scale"], torch.full((2, 2), 0.5 ** 0.5))
    entropy = 2 * stats.norm(scale=0.5 ** 0.5).entropy()
    torch.testing.assert_close(poe.get_entropy(given), torch.full((2,), float(entropy)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_mixture_of_normals_refuses_weights_that_are_not_finite(bad) -> None:
    qa = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    qb = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
    with pytest.raises(ValueError, match="positive finite numbers"):
        MixtureOfNormal([qa, qb], weights=[1.0, bad])


def test_feature_dims_of_a_product_whose_factors_differ_in_rank_is_an_error_naming_them() -> None:
    """A scalar z and a vector x|z drawn with sample_shape: the same dims in both factors cannot give one value per
    draw (dims=[-1] summed z over the batch and broadcast: a wrong (4, 4) result); factors of one rank still add."""

    class Vector(Normal):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="p")

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": z.unsqueeze(-1).expand(*z.shape, 3), "scale": torch.ones(*z.shape, 3)}

    joint = Vector() * Normal(var=["z"], loc=0.0, scale=1.0, name="p")
    s = joint.sample(batch_n=4, sample_shape=[4])
    with pytest.raises(ValueError, match=r"feature_dims=\[-1\] \(the same dimensions in every factor\), the "
                                         r"log-density of p\(x\|z\) has shape \(4, 4\) and that of p\(z\) \(4,\)"):
        joint.get_log_prob(s, feature_dims=[-1])
    with pytest.raises(ValueError, match=r"feature_dims=\[2\] is out of range for the log-density of p\(z\)"):
        joint.get_log_prob(s, feature_dims=[2])
    same = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0) * Normal(var=["z"], loc=0.0, scale=1.0)
    t = same.sample(batch_n=4, sample_shape=[5])
    reference = (torch.distributions.Normal(t["z"], 1.0).log_prob(t["x"])
                 + torch.distributions.Normal(0.0, 1.0).log_prob(t["z"])).sum(0)
    torch.testing.assert_close(same.get_log_prob(t, feature_dims=[0]), reference)
    # a one-row factor (a value given for z alone) against the batch: one rank, sizes 1 and 4, added as by default
    pair = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0) * Normal(var=["z"], loc=0.0, scale=1.0)
    values = {"z": torch.tensor([[0.5, -0.5]]), "x": torch.linspace(-1.0, 1.0, 8).reshape(4, 2)}
    torch.testing.assert_close(pair.get_log_prob(values, feature_dims=[1]), pair.get_log_prob(values))


def test_terms_of_other_rows_and_a_parameter_that_is_not_a_number_are_named():
    """Terms evaluated on 2 and 3 rows failed with torch's "size of tensor a (2) must match"; a Parameter given a string
    or None with "new(): invalid data type 'str'" / "Could not infer dtype of NoneType"."""
    from kizuna.losses import KullbackLeibler, Parameter

    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    r = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="r")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_{prior}")
    with pytest.raises(ValueError, match=r"have shapes \(2,\) and \(3,\), which do not combine row by row"):
        (KullbackLeibler(q, prior) + KullbackLeibler(r, prior)).eval({"x": torch.zeros(2, 2), "y": torch.zeros(3, 2)})
    for value in ("0.5", None):
        with pytest.raises(TypeError, match=f"Parameter 'beta': its value must be a number or a tensor, got "
                                            f"{type(value).__name__}"):
            (Parameter("beta") * KullbackLeibler(q, prior)).eval({"beta": value, "x": torch.zeros(2, 2)})


# ------------------------------------------------------------------ review of stop 36
def test_numpy_on_the_left_of_a_loss_is_refused_as_on_the_right() -> None:
    """``np.ones(3) * loss`` built an object array of three losses (numpy looped over its elements); numpy now
    defers to the loss's reflected operator, which refuses an array as ``loss * np.ones(3)`` does."""
    from kizuna.losses import Parameter

    a = Parameter("a")
    for build in (lambda: np.ones(3) * a, lambda: np.ones(3) + a, lambda: np.ones(3) - a, lambda: a * np.ones(3)):
        with pytest.raises(TypeError, match="ndarray"):
            build()


def test_a_constant_of_other_rows_is_named_like_a_term_of_other_rows() -> None:
    from kizuna.losses import Parameter

    loss = Parameter("a") + torch.ones(2)
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(2,\).*row by row"):
        loss.eval({"a": torch.zeros(3)})
    torch.testing.assert_close(loss.eval({"a": torch.zeros(2)}), torch.ones(2))


@pytest.mark.parametrize("given", [torch.zeros(3), torch.tensor(0.0), [1, 2], "a"])
def test_eval_refuses_what_is_not_a_dict(given) -> None:
    from kizuna.losses import Parameter

    with pytest.raises(TypeError, match="eval takes a dict.*got"):
        Parameter("a").eval(given)


def test_an_infix_operator_followed_by_a_minus_sign_is_bracketed() -> None:
    """``a - (-2 * b)`` printed ``a - -2 * b``: a right operand whose text starts with a minus sign is bracketed
    after +, - and * (text and LaTeX); a fraction or an exponent needs no brackets."""
    from kizuna.losses import Parameter, ValueLoss

    a, b = Parameter("a"), Parameter("b")
    cases = {
        a - (-2 * b): ("a - (-2 * b)", r"a - \left(-2 \cdot b\right)"),
        a + (-2 + b): ("a + (-2 + b)", r"a + \left(-2 + b\right)"),
        a * (-2 * b): ("a * (-2 * b)", r"a \cdot \left(-2 \cdot b\right)"),
        a - ValueLoss(-0.5) / b: ("a - (-0.5 / b)", r"a - \frac{-0.5}{b}"),
        a - (-b): ("a - (-b)", r"a - \left(-b\right)"),
        a / (-2 * b): ("a / (-2 * b)", r"\frac{a}{-2 \cdot b}"),
        -2 * a - b: ("-2 * a - b", r"-2 \cdot a - b"),
    }
    for loss, (text, latex) in cases.items():
        assert (str(loss), loss.loss_text) == (text, latex)
    x = {"a": torch.tensor(3.0), "b": torch.tensor(5.0)}
    assert float((a - (-2 * b)).eval(x)) == 13.0  # the value was always right: only the text misread


def test_detach_is_pixyz_detach() -> None:
    """Pixyz's ``loss.detach()``: the same value, no gradient; printed ``detach(...)``."""
    from kizuna.losses import Detach, Parameter

    w = torch.tensor(2.0, requires_grad=True)
    loss = (Parameter("a") * 3).detach() + Parameter("a")
    value = loss.eval({"a": w})
    assert value.item() == 8.0
    assert torch.autograd.grad(value, w)[0].item() == 1.0  # only the undetached term's gradient
    assert isinstance((Parameter("a")).detach(), Detach)
    assert str(Parameter("a").detach().mean()) == "mean(detach(a))"


def test_a_marginal_of_a_product_takes_a_whole_factors_values_as_the_product_does() -> None:
    """``∫ p(x|y)p(y|z)p(z)dy`` given ``z`` draws x given z (as the product does: y ~ p(y|z), x ~ p(x|y)); it was
    refused by the all-or-none check of a single distribution. Against the closed form: x | z ~ N(z, 1 + 0.01²)."""
    px = Normal(var=["x"], cond_var=["y"], loc="y", scale=1.0, name="p")
    py = Normal(var=["y"], cond_var=["z"], loc="z", scale=0.01, name="p")
    pz = Normal(var=["z"], loc=0.0, scale=1.0, name="p")
    m = (px * py * pz).marginalize_var(["y"])
    z = torch.full((40_000, 1), 5.0)
    out = m.sample({"z": z})
    assert sorted(out) == ["x", "z"] and torch.equal(out["z"], z)
    se = math.sqrt((1 + 1e-4) / 40_000)
    assert abs(out["x"].mean().item() - 5.0) < 5 * se
    assert abs(out["x"].var().item() - (1 + 1e-4)) < 5 * (1 + 1e-4) * math.sqrt(2 / 40_000)


def test_a_name_marginalised_twice_is_integrated_once() -> None:
    px = Normal(var=["x"], cond_var=["y"], loc="y", scale=1.0, name="p")
    py = Normal(var=["y"], loc=0.0, scale=1.0, name="p")
    m = (px * py).marginalize_var(["y", "y"])
    assert str(m) == str((px * py).marginalize_var(["y"])) == "p(x) = ∫ p(x|y)p(y)dy"


def test_a_named_number_constant_keeps_its_value_in_a_float64_evaluation() -> None:
    """``ValueLoss(0.1).named("beta") * log p`` computed with 0.1 rounded to float32 (1.5e-8 relative off) in a
    float64 evaluation; an unnamed constant was exact. Both are exact now (scipy's log-density times 0.1), and the
    named one is still reported."""
    from scipy import stats as st

    from kizuna.losses import LogProb, ValueLoss

    q = Normal(var=["x"], loc=0.0, scale=1.0).double()
    x = torch.tensor([0.3, 1.7], dtype=torch.float64)
    value, terms = (ValueLoss(0.1).named("beta") * LogProb(q)).eval({"x": x}, return_terms=True)
    np.testing.assert_allclose(value.numpy(), 0.1 * st.norm.logpdf(x.numpy()), rtol=1e-15)
    assert value.dtype == torch.float64 and "beta" in terms


def test_constants_combined_with_each_other_stay_exact_in_a_float64_evaluation() -> None:
    """``ValueLoss(0.1).named("b") * 2.0`` (and ``-ValueLoss(0.1)``, ``(0.1 + 0.2) * 3``) were tensors of the default
    dtype: 0.2 rounded to float32 (3e-9 off) where they met a float64 term. They are now computed in float64 as
    numbers (Python's own 0.1 * 2, (0.1 + 0.2) * 3) and meet the other operand in its dtype; alone they are still
    a tensor of the default dtype, as Pixyz's ValueLoss, and a named part is still reported."""
    from scipy import stats as st

    from kizuna.losses import LogProb, ValueLoss

    q = Normal(var=["x"], loc=0.0, scale=1.0).double()
    x = torch.tensor([0.3, 1.7], dtype=torch.float64)
    logpdf = st.norm.logpdf(x.numpy())
    for constant, number in ((ValueLoss(0.1).named("b") * 2.0, 0.1 * 2.0), (-ValueLoss(0.1), -0.1),
                             ((ValueLoss(0.1) + 0.2) * 3, (0.1 + 0.2) * 3), (2.0 ** ValueLoss(0.5), 2.0 ** 0.5)):
        value, terms = (LogProb(q) + constant).eval({"x": x}, return_terms=True)
        assert value.dtype == torch.float64
        np.testing.assert_allclose(value.numpy(), logpdf + number, rtol=1e-14, atol=0)  # (float32: 3e-9 off)
    assert "b" in (LogProb(q) + ValueLoss(0.1).named("b") * 2.0).eval({"x": x}, return_terms=True)[1]
    alone = (ValueLoss(0.1) * 2).eval({})
    assert alone.dtype == torch.get_default_dtype() and alone.item() == pytest.approx(0.2)
    assert (LogProb(q).mean() * (ValueLoss(1) / ValueLoss(0))).eval({"x": x}).item() == -math.inf


def test_a_shared_constant_is_computed_once_and_a_complex_one_is_not_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A constant doubled 22 times (``c = c + c``, one node used twice at each level) was computed at every use once
    number constants were folded: 2^22 additions; it is computed once per node and evaluation. Building on it walked
    the shared node by every path (2^23 calls of `_of_constants`, seconds; the test timed it against 5 s); the
    operators' own flags are read now. Counted, not timed: a few calls per level. A complex constant nested in
    arithmetic raised ``float() argument must be ... not 'complex'``; it combines as torch combines it."""
    from kizuna.formula import expr
    from kizuna.losses import Parameter, ValueLoss

    calls = {"_of_constants": 0, "_given_number": 0, "_number": 0}
    for name in calls:
        real = getattr(expr, name)
        monkeypatch.setattr(expr, name, lambda *a, _real=real, _name=name: calls.__setitem__(_name, calls[_name] + 1)
                            or _real(*a))
    c = ValueLoss(1.0)
    for _ in range(22):
        c = c + c
    value = (c * Parameter("x")).eval({"x": torch.ones(2, dtype=torch.float64)})
    assert value.tolist() == [2.0 ** 22] * 2
    assert calls["_of_constants"] <= 4 * 23, calls  # (2^23 before)
    assert calls["_given_number"] + calls["_number"] <= 4 * 23, calls  # once per node and evaluation
    nested = ((ValueLoss(1j) * 2) * Parameter("x")).eval({"x": torch.ones(2)})
    assert nested.tolist() == [2j, 2j]
