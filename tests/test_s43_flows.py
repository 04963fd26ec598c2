"""Flow findings of the stop-43 review (area D).

1. `ActNorm` trained before its data-dependent initialisation ran (only through its inverse: a
   `TransformedDistribution` fitted by its likelihood; or one row at a time) stayed uninitialised, and its first
   training-mode forward (the distribution's ``sample()``) initialised it over the trained parameters. Now the first
   training-mode pass in either direction initialises it (an inverse from its input, so that the inverse comes out
   standardised), and parameters changed by training (one row at a time, in evaluation mode) count as initialised; a
   batch of one row, too few to initialise it, warns.
2. A flow distribution with a one-row context refused ``sample(batch_n=n, sample_shape=s)`` (the context repeated
   ``prod(s)`` times read as that many rows against ``n * prod(s)``); a conditional Normal draws ``(*s, n, ...)``.
3. Empty batches: ``reshape(0, -1)`` failed in the coupling layers' context network, in a flow distribution's context
   of two or more variables, and in ``Flatten``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import distributions as D

from kizuna.distributions import InverseTransformedDistribution, Normal, TransformedDistribution
from kizuna.flows import MAF, ActNorm, AffineCoupling, Flatten, FlowList, RationalQuadraticCoupling
from kizuna.flows.base import scoring_data

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _std_normal(var: str, n: int) -> Normal:
    return Normal(var=[var], loc=torch.zeros(n, dtype=F64), scale=torch.ones(n, dtype=F64))


def _data(n: int = 400) -> torch.Tensor:
    return torch.tensor([5.0, -3.0], dtype=F64) + torch.tensor([0.5, 2.0], dtype=F64) * torch.randn(n, 2, dtype=F64)


def _params(f: ActNorm) -> list[torch.Tensor]:
    return [f.bias.detach().clone(), f.log_scale.detach().clone()]


# ------------------------------------------------------------------ 1. ActNorm trained before its initialisation
def test_actnorm_first_used_through_its_inverse_initialises_there_to_the_gaussian_fit() -> None:
    """A TD scored through the inverse: the first training-mode pass standardises the inverse's output, so the
    one-layer flow of N(0, I) is the Gaussian fit of the data (the per-feature Normal with the data's mean and
    standard deviation, scipy's / torch's closed form)."""
    x = _data()
    act = ActNorm(2).double()
    q = TransformedDistribution(_std_normal("z0", 2), FlowList([act]), var=["x"])
    lp = q.get_log_prob({"x": x})
    assert bool(act.initialized)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    ref = D.Normal(mean, (var + act.eps).sqrt()).log_prob(x).sum(1)
    torch.testing.assert_close(lp, ref, rtol=1e-12, atol=1e-12)
    z0 = act.inverse(x)
    torch.testing.assert_close(z0.mean(0), torch.zeros(2, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(z0.var(0, unbiased=False), var / (var + act.eps), rtol=1e-12, atol=0)


def test_actnorm_fitted_through_its_inverse_keeps_its_parameters_when_its_td_is_sampled() -> None:
    """The review's repro: fit a TD by its likelihood, then ``sample()`` in training mode. Before: the sample's
    forward initialised the layer from the prior's draws (the bias went to about 0) and the NLL rose from 2.95 to
    20.98. Now the parameters and the NLL are unchanged and the draws follow the trained model."""
    x = _data()
    act = ActNorm(2).double()
    q = TransformedDistribution(_std_normal("z0", 2), FlowList([act]), var=["x"])
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        (-q.get_log_prob({"x": x}).mean()).backward()
        opt.step()
    trained, nll = _params(act), -q.get_log_prob({"x": x}).mean().item()
    assert q.training
    draws = q.sample(batch_n=4000)["x"]
    assert all(torch.equal(a, b) for a, b in zip(_params(act), trained))
    assert -q.get_log_prob({"x": x}).mean().item() == nll
    # the draws are the trained map (z0 + b) e^l of N(0, I): mean b e^l, standard deviation e^l (5 standard errors)
    scale = trained[1].exp()
    loc = trained[0] * scale
    assert ((draws.mean(0) - loc).abs() < 5 * scale / math.sqrt(4000)).all()


def test_actnorm_trained_one_row_at_a_time_is_not_reinitialised() -> None:
    """Before: the first training-mode batch of 60 rows initialised the layer over the parameters trained one row at
    a time. A one-row probe (``sample()``) still leaves a new layer to initialise from data."""
    probe = ActNorm(2).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a plain sample() of a new flow warned in this stop's first fix)
        with scoring_data():
            probe.inverse(torch.ones(1, 2, dtype=F64))
        probe.inverse(torch.randn(7, 2, dtype=F64))  # a draw's inverse, outside scoring_data
    assert not bool(probe.initialized)
    x = _data(60)
    torch.testing.assert_close(probe(x), (x - x.mean(0)) / (x.var(0, unbiased=False) + probe.eps).sqrt(),
                               rtol=1e-12, atol=1e-12)
    act = ActNorm(2).double()
    p = InverseTransformedDistribution(_std_normal("z", 2), act, var=["x"])
    opt = torch.optim.SGD(p.parameters(), lr=0.01)
    for i in range(20):
        opt.zero_grad()
        (-p.get_log_prob({"x": x[i:i + 1]}).mean()).backward()
        opt.step()
    trained = _params(act)
    z, logdet = act.forward_and_logdet(x)  # a training-mode batch of 60 rows
    assert bool(act.initialized)
    assert all(torch.equal(a, b) for a, b in zip(_params(act), trained))
    torch.testing.assert_close(z, (x + trained[0]) * trained[1].exp(), rtol=0, atol=0)
    torch.testing.assert_close(logdet, trained[1].sum().expand(60), rtol=0, atol=0)


def test_sampling_a_new_glow_style_flow_does_not_initialise_actnorm_from_the_prior() -> None:
    """An InverseTransformedDistribution samples through the inverse: sampling before training initialised ActNorm
    from the prior's draws in this stop's first fix (the data's first NLL 18.6 instead of 2.8); the data's first
    forward initialises it, as without the sample."""
    x = _data(80) * 3.0 + 5.0
    fresh, sampled = ActNorm(2).double(), ActNorm(2).double()
    p = InverseTransformedDistribution(_std_normal("z", 2), sampled, var=["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.sample(batch_n=50)
        p.sample()
    assert not bool(sampled.initialized)
    torch.testing.assert_close(sampled(x), fresh(x), rtol=0, atol=0)
    torch.testing.assert_close(_params(sampled), _params(fresh), rtol=0, atol=0)


def test_sampling_a_new_transformed_distribution_does_not_initialise_actnorm_from_the_prior() -> None:
    """A TransformedDistribution samples through the forward: sampling before its fit initialised ActNorm from the
    prior's draws (before this stop too), and the fit by likelihood then started from them (the data's first NLL
    18.58 instead of 2.82 in the note check); the likelihood's inverse over the data initialises it, as without the
    sample. A bare forward still initialises it (the documented first forward)."""
    x = _data(80) * 3.0 + 5.0
    fresh, sampled = ActNorm(2).double(), ActNorm(2).double()
    p = TransformedDistribution(_std_normal("z", 2), sampled, var=["x"])
    q = TransformedDistribution(_std_normal("z", 2), fresh, var=["x"])
    p.sample(batch_n=50)
    assert not bool(sampled.initialized)
    torch.testing.assert_close(p.get_log_prob({"x": x}), q.get_log_prob({"x": x}), rtol=0, atol=0)
    assert bool(sampled.initialized)
    torch.testing.assert_close(_params(sampled), _params(fresh), rtol=0, atol=0)
    bare = ActNorm(2).double()
    bare(x)
    assert bool(bare.initialized)


def test_actnorm_with_changed_parameters_counts_as_initialised() -> None:
    """Parameters trained in evaluation mode (or set by hand) are kept by the first training-mode forward (before:
    initialised over)."""
    x = _data(50)
    act = ActNorm(2).double().eval()
    p = InverseTransformedDistribution(_std_normal("z", 2), act, var=["x"])
    opt = torch.optim.SGD(p.parameters(), lr=0.01)
    opt.zero_grad()
    (-p.get_log_prob({"x": x}).mean()).backward()
    opt.step()
    assert not bool(act.initialized)
    trained = _params(act)
    act.train()(x)
    assert bool(act.initialized) and all(torch.equal(a, b) for a, b in zip(_params(act), trained))


def test_actnorm_state_dict_round_trip_keeps_the_flag_and_a_fresh_layer_still_initialises_forward() -> None:
    x = _data(80)
    act = ActNorm(2).double()
    with scoring_data():
        act.inverse(x)
    state = act.state_dict()
    assert set(state) == {"bias", "log_scale", "initialized"} and bool(state["initialized"])
    loaded = ActNorm(2).double()
    loaded.load_state_dict(state)
    assert bool(loaded.initialized)
    loaded(x + 10.0)  # training mode: keeps the loaded parameters
    assert all(torch.equal(a, b) for a, b in zip(_params(loaded), _params(act)))
    # the documented first forward of a fresh layer: z = (x - mean) / sqrt(var + eps)
    fresh = ActNorm(2).double()
    fresh.forward_and_logdet(x[:0])  # an empty batch neither initialises nor marks it
    fresh.inverse_and_logdet(x[:0])
    assert not bool(fresh.initialized)
    z = fresh(x)
    ref = (x - x.mean(0)) / (x.var(0, unbiased=False) + fresh.eps).sqrt()
    torch.testing.assert_close(z, ref, rtol=1e-12, atol=1e-12)
    assert bool(fresh.state_dict()["initialized"])


def test_actnorm_refuses_to_initialise_its_inverse_from_a_non_finite_batch() -> None:
    act = ActNorm(3)
    z = torch.randn(4, 3)
    z[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^ActNorm: the data-dependent initialisation needs a finite batch, got "
                                         r"non-finite z \(nan at row 1, channel 0\); the layer stays uninitialised"):
        with scoring_data():
            act.inverse(z)
    assert not bool(act.initialized) and not act.bias.any() and not act.log_scale.any()


# ------------------------------------------------------------------ 2. one-row context with batch_n and sample_shape
def _cond_flow(cls: type, layer: str):
    flow = MAF(2, [8], context_features=3) if layer == "MAF" else AffineCoupling(2, hidden_features=8,
                                                                                 context_features=3)
    for prm in flow.parameters():  # not the identity of a new layer
        torch.nn.init.normal_(prm, std=0.3)
    prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2))
    return cls(prior, flow, var=["x"], cond_var=["c"]), flow


@pytest.mark.parametrize("layer", ["MAF", "AffineCoupling"])
@pytest.mark.parametrize("cls", [TransformedDistribution, InverseTransformedDistribution])
def test_one_row_context_with_batch_n_and_sample_shape_draws_as_a_conditional_normal(cls, layer) -> None:
    p, flow = _cond_flow(cls, layer)
    c = torch.randn(1, 3)
    ref = Normal(var=["x"], cond_var=["c"], loc="c", scale=torch.ones(3)).sample({"c": c}, batch_n=5,
                                                                                 sample_shape=(3,))["x"]
    out = p.sample({"c": c}, batch_n=5, sample_shape=(3,))
    assert ref.shape == (3, 5, 3) and out["x"].shape == (3, 5, 2) and out["z"].shape == (3, 5, 2)
    assert torch.equal(out["c"], c)
    # each draw is the flow's map of its base point with the one context row
    base = out["z"].reshape(15, 2)
    mapped = flow(base, c) if cls is TransformedDistribution else flow.inverse(base, c)
    torch.testing.assert_close(out["x"].reshape(15, 2), mapped, rtol=0, atol=0)
    # scored as every family scores sample_shape draws: each row's density, summed over the batch
    lp = p.get_log_prob({"x": out["x"], "c": c})
    rows = p.get_log_prob({"x": out["x"].reshape(15, 2), "c": c.expand(15, 3)})
    assert lp.shape == (3,)
    torch.testing.assert_close(lp, rows.reshape(3, 5).sum(1), rtol=1e-6, atol=1e-5)


def test_one_row_condition_of_a_conditional_prior_with_batch_n_and_sample_shape() -> None:
    prior = Normal(var=["z"], cond_var=["c"], loc="c", scale=torch.ones(2))
    q = TransformedDistribution(prior, MAF(2, [8], context_features=2), var=["x"], cond_var=["c"])
    c = torch.tensor([[50.0, -50.0]])
    out = q.sample({"c": c}, batch_n=5, sample_shape=(3,))
    assert out["x"].shape == (3, 5, 2) and out["z"].shape == (3, 5, 2)
    assert ((out["z"] - c).abs() < 6).all()  # drawn around the one condition row (a new MAF is the identity)
    torch.testing.assert_close(out["x"], out["z"], rtol=0, atol=0)


@pytest.mark.parametrize("cls", [TransformedDistribution, InverseTransformedDistribution])
def test_a_one_row_context_variable_beside_a_batch_conditions_every_row(cls) -> None:
    """Two context variables, one of one row: ``sample`` drew one base row (the first variable's rows) against a
    context of five (a MAF error naming shapes the user never passed), with or without a ``sample_shape``."""
    prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2))
    flow = MAF(2, [8], context_features=3)
    for prm in flow.parameters():
        torch.nn.init.normal_(prm, std=0.3)
    p = cls(prior, flow, var=["x"], cond_var=["a", "b"])
    a, b = torch.randn(1, 1), torch.randn(5, 2)
    context = torch.cat([a.expand(5, 1), b], 1)
    out = p.sample({"a": a, "b": b})
    assert out["x"].shape == out["z"].shape == (5, 2)
    torch.testing.assert_close(out["x"], flow(out["z"], context) if cls is TransformedDistribution
                               else flow.inverse(out["z"], context), rtol=0, atol=0)
    for batch_n in (None, 5):
        out = p.sample({"a": a, "b": b}, batch_n=batch_n, sample_shape=(3,))
        assert out["x"].shape == (3, 5, 2) and p.get_log_prob(out).shape == (3,)
    with pytest.raises(ValueError, match=r"^p\(x\|a,b\): batch_n=5 but the conditioning value b has 4 rows; give "
                                         r"one row per draw, or one row for all$"):
        p.sample({"a": a, "b": b[:4]}, batch_n=5, sample_shape=(3,))


# ------------------------------------------------------------------ 3. empty batches
def test_conditional_coupling_layers_and_flatten_take_an_empty_batch() -> None:
    for flow in (AffineCoupling(4, hidden_features=8, context_features=2),
                 RationalQuadraticCoupling(4, hidden_features=8, context_features=2)):
        for y in (torch.zeros(0, 2), torch.zeros(1, 2)):  # a batch's rows, or one row for all
            z, logdet = flow.forward_and_logdet(torch.zeros(0, 4), y)
            x, logdet_inv = flow.inverse_and_logdet(z, y)
            assert z.shape == x.shape == (0, 4) and logdet.shape == logdet_inv.shape == (0,), type(flow).__name__
    f = Flatten((2, 2, 2))
    z, logdet = f.forward_and_logdet(torch.zeros(0, 2, 2, 2))
    assert z.shape == (0, 8) and logdet.shape == (0,)
    assert f.inverse(z).shape == (0, 2, 2, 2)
    # unchanged where it worked: scalar data (B,) as one feature, a one-feature context given as (B,)
    g = Flatten()
    assert g(torch.arange(3.0).unsqueeze(1)).shape == (3, 1)
    coupling = AffineCoupling(2, hidden_features=8, context_features=1)
    torch.testing.assert_close(coupling(torch.ones(3, 2), torch.arange(3.0)),
                               coupling(torch.ones(3, 2), torch.arange(3.0).unsqueeze(1)), rtol=0, atol=0)


def test_flow_distributions_with_a_conditional_coupling_or_two_context_variables_take_an_empty_batch() -> None:
    prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2))
    two = InverseTransformedDistribution(prior, MAF(2, [8], context_features=3), var=["x"], cond_var=["a", "b"])
    one = InverseTransformedDistribution(prior, two.flow, var=["x"], cond_var=["c"])
    x, a, b = torch.randn(4, 2), torch.randn(4, 1), torch.randn(4, 2, 1)
    # two context variables are their flattened values side by side (the reference: one variable holding them)
    torch.testing.assert_close(two.get_log_prob({"x": x, "a": a, "b": b}),
                               one.get_log_prob({"x": x, "c": torch.cat([a, b.flatten(1)], 1)}), rtol=0, atol=0)
    assert two.get_log_prob({"x": x[:0], "a": a[:0], "b": b[:0]}).shape == (0,)
    assert two.sample({"a": a[:0], "b": b[:0]})["x"].shape == (0, 2)
    for cls in (TransformedDistribution, InverseTransformedDistribution):
        p = cls(prior, AffineCoupling(2, hidden_features=8, context_features=2), var=["x"], cond_var=["c"])
        c = torch.zeros(0, 2)
        assert p.get_log_prob({"x": torch.zeros(0, 2), "c": c}).shape == (0,)
        assert p.sample({"c": c})["x"].shape == (0, 2)
