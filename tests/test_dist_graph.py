"""Pixyz's ``dist.graph`` (`kizuna.distributions.dist_graph`): the graph's name and text, its networkx picture, and
Pixyz's per-factor options of ``sample`` and ``get_log_prob``; log-densities against scipy."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import scipy.stats as st
import torch

from kizuna.distributions import Bernoulli, Normal


def _chain() -> Normal:
    """p(x|y) p(y): x ~ N(y, 1), y ~ N(0, 1)."""
    return Normal(var=["x"], cond_var=["y"], loc="y", scale=1.0) * Normal(var=["y"], loc=0.0, scale=1.0)


def test_the_graph_is_a_view_of_the_distribution() -> None:
    normal = Normal(var=["x"], name="p")
    graph = normal.graph
    assert graph.name == "p"
    normal.name = "q"
    assert graph.name == "q"
    graph.name = "r"
    assert normal.name == "r"
    p = _chain()
    text = str(p.graph)
    assert str(p) in text and "p(y)" in text and "p(x|y)" in text
    assert [f.prob_text for f in p.graph.factors(sorted=True)] == ["p(y)", "p(x|y)"]
    assert p.graph.var == p.var and p.graph.input_var == [] and p.graph.has_reparam


def test_factor_options_set_the_draw_of_the_factor_that_starts_the_chain() -> None:
    """Pixyz's test_set_option: y drawn with batch_n 4 and sample_shape (2, 3), x given that y."""
    torch.manual_seed(0)
    p = _chain()
    p.graph.set_option(dict(batch_n=4, sample_shape=(2, 3)), ["y"])
    assert p.graph._factors_from_variable("y")[0].option == {"batch_n": 4, "sample_shape": (2, 3)}
    s = p.sample()
    assert s["y"].shape == (2, 3, 4) and s["x"].shape == (2, 3, 4)
    p.graph.set_option({}, ["y"])
    assert p._graph_options is None  # nothing left: the usual path
    y, x = s["y"].numpy().astype(np.float64), s["x"].numpy().astype(np.float64)
    per_entry = st.norm.logpdf(y) + st.norm.logpdf(x, loc=y)
    np.testing.assert_allclose(p.get_log_prob(s).numpy(), per_entry.reshape(2, -1).sum(1), rtol=1e-5)
    np.testing.assert_allclose(p.get_log_prob(s, sum_features=False).numpy(), per_entry, rtol=1e-5)
    np.testing.assert_allclose(p.get_log_prob(s, feature_dims=[-2]).numpy(), per_entry.sum(1), rtol=1e-5)
    np.testing.assert_allclose(p.get_log_prob(s, feature_dims=[0, 1]).numpy(), per_entry.sum((0, 1)), rtol=1e-5)
    assert p.get_log_prob(s, feature_dims=[]).shape == (2, 3, 4)


def test_draws_under_options_have_the_model_s_moments() -> None:
    """y ~ N(0, 1), x|y ~ N(y, 1): x has variance 2 and covariance 1 with y, drawn with the options."""
    torch.manual_seed(1)
    p = _chain()
    p.graph.set_option(dict(batch_n=20_000), ["y"])
    s = p.sample()
    y, x = s["y"].double(), s["x"].double()
    assert y.shape == (20_000,)
    assert abs(x.var().item() - 2.0) < 0.1 and abs(torch.mean(x * y).item() - 1.0) < 0.05


def test_options_through_a_factor_and_a_bernoulli_parent() -> None:
    """Pixyz's second case: a factor's option cleared through `_factors_from_variable(...)[0].option`; feature_dims."""
    torch.manual_seed(2)
    probs = torch.tensor([0.3, 0.8])
    p = Normal(var=["x"], cond_var=["y"], loc="y", scale=1.0) * Bernoulli(var=["y"], probs=probs)
    p.graph.set_option(dict(batch_n=3, sample_shape=(4,)), ["y"])
    s = p.sample()
    assert s["y"].shape == (4, 3, 2) and s["x"].shape == (4, 3, 2)
    p.graph._factors_from_variable("y")[0].option = {}
    assert p._graph_options is None
    y, x = s["y"].numpy().astype(np.float64), s["x"].numpy().astype(np.float64)
    per_entry = st.bernoulli.logpmf(y, probs.numpy().astype(np.float64)) + st.norm.logpdf(x, loc=y)
    np.testing.assert_allclose(p.get_log_prob(s, feature_dims=[-1]).numpy(), per_entry.sum(-1), rtol=1e-5)


def test_a_factor_s_options_win_over_the_caller_s_and_the_caller_s_over_the_graph_s() -> None:
    """Pixyz's order: the graph's options, the caller's arguments, the factor's options."""
    p = _chain()
    p.graph.set_option(dict(batch_n=3), ["y"])
    s = p.sample(batch_n=None)
    assert s["y"].shape == (3,) and s["x"].shape == (3,)
    # the caller's sample_shape reaches every factor (as in Pixyz): x draws two per row of y's two by three
    s = p.sample(sample_shape=(2,))
    assert s["y"].shape == (2, 3) and s["x"].shape == (2, 2, 3)
    p.graph.set_option({}, ["y"])
    p.graph.set_option(dict(batch_n=3))  # the graph's own: every call's batch_n (None by default) overrides it
    assert p.graph.global_option == {"batch_n": 3}
    assert p.sample()["y"].shape == (1,) and p.sample(batch_n=5)["y"].shape == (5,)


def test_a_single_distribution_keeps_its_options_for_the_products_made_from_it() -> None:
    """As Pixyz: an atom's own sample does not read its options; p * q takes them over, and the product's own options
    then override them (the atom's stay as they were)."""
    py = Normal(var=["y"], loc=0.0, scale=1.0)
    px = Normal(var=["x"], cond_var=["y"], loc="y", scale=1.0)
    py.graph.set_option(dict(batch_n=4), ["y"])
    assert py.sample(batch_n=5)["y"].shape == (5,) and py.sample()["y"].shape == (1,)
    p = px * py
    assert p.sample()["y"].shape == (4,)
    p.graph.set_option(dict(batch_n=7), ["y"])
    assert p.sample()["y"].shape == (7,) and (px * py).sample()["y"].shape == (4,)
    assert py.graph._factors_from_variable("y")[0].option == {"batch_n": 4}


def test_a_given_variable_is_held_fixed_with_options_as_without() -> None:
    p = _chain()
    y = torch.full((3,), 100.0)
    p.graph.set_option(dict(reparam=False), ["x"])
    s = p.sample({"y": y})
    assert torch.equal(s["y"], y) and abs(s["x"].mean().item() - 100.0) < 5


def test_options_survive_a_copy_and_a_pickle() -> None:
    p = _chain()
    p.graph.set_option(dict(batch_n=4), ["y"])
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert q.sample()["x"].shape == (4,)
        assert p.sample()["x"].shape == (4,)


def test_a_product_scored_entry_by_entry_needs_factors_of_one_shape() -> None:
    p = Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[3]) * Normal(var=["z"], loc=0.0, scale=1.0,
                                                                           features_shape=[2])
    s = p.sample(batch_n=4)
    with pytest.raises(ValueError, match=r"sum_features=False, the log-density of p\(x\) has shape \(4, 3\) and that "
                                         r"of p\(z\) \(4, 2\); they cannot be added"):
        p.get_log_prob(s, sum_features=False)
    p.graph.set_option(dict(sum_features=False), ["x"])  # the factors then differ in rank: named too
    with pytest.raises(ValueError, match=r"with these options, the log-density of p\(x\) has shape \(4, 3\) and "
                                         r"that of p\(z\) \(4,\)"):
        p.get_log_prob(s)


def test_visible_graph_is_pixyz_s_networkx_graph_of_the_variables() -> None:
    p = (Normal(var=["x"], cond_var=["y", "w"], loc="y", scale="w")
         * Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0) * Normal(var=["z"], loc=0.0, scale=1.0))
    g = p.graph.visible_graph()
    assert set(g.edges) == {("$y$", "$x$"), ("$w$", "$x$"), ("$z$", "$y$")}
    d = p.graph.visible_graph(dotmode=True)
    assert set(d.edges) == {("y", "x"), ("w", "x"), ("z", "y")}
    assert d.nodes["x"]["texlbl"] == "$x$"


def test_bad_options_are_named() -> None:
    p = _chain()
    with pytest.raises(ValueError, match="no factor defines 'v'"):
        p.graph.set_option({"batch_n": 2}, ["v"])
    with pytest.raises(TypeError, match="a dict of keyword arguments, got list"):
        p.graph.set_option([("batch_n", 2)], ["y"])
    renamed = p.replace_var(x="u")
    for var in (["y"], []):  # a renamed or marginalised product draws without options: refused, not ignored
        with pytest.raises(ValueError, match="graph options are kept by products and single distributions; this is "
                                             "a ReplaceVarDistribution"):
            renamed.graph.set_option({"batch_n": 2}, var)
    with pytest.raises(ValueError, match="this is a MarginalizeVarDistribution"):
        p.marginalize_var("y").graph.set_option({"batch_n": 2})
    assert p._graph_options is None and renamed._graph_options is None
