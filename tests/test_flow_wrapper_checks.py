"""The distribution wrappers around flows and masked networks, in the cases they used to get wrong.

* a flow distribution whose prior's variable is named like its own ``var`` (Pixyz allows it, and its ``sample``
  returns the flow's value under that name) returned the prior's draw from ``sample()``: checked against the flow
  applied by hand to the same base draw, in both directions, with and without a ``sample_shape``;
* `MADEBernoulli` and `PixelCNNBernoulli` refused to score their own draws made with a ``sample_shape``: checked against
  scoring each draw's slice on its own (summed as every family sums such draws), without a condition, with one per
  batch row and with one drawn beside the value;
* their ``sample`` refused one row of condition for ``batch_n`` rows, which ``get_log_prob`` takes: checked against the
  same row expanded by hand, under the same seed;
* floating data of another dtype than the flow's failed deep in the first network layer with torch's raw dtype error,
  after an ActNorm had initialised itself from that batch: now a ValueError naming the variable and both dtypes, before
  the flow runs.
"""

from __future__ import annotations

import pytest
import torch

from kizuna.distributions import (
    InverseTransformedDistribution,
    MADEBernoulli,
    Normal,
    PixelCNNBernoulli,
    TransformedDistribution,
)
from kizuna.flows import IAF, MAF, ActNorm, FlowList, Reverse

F64 = torch.float64
D = 3


def _randomised(flow: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.4 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


def _prior(var: str, dtype: torch.dtype = F64) -> Normal:
    return Normal(var=[var], loc=torch.zeros(D, dtype=dtype), scale=torch.ones(D, dtype=dtype), name="p_prior")


# ---------------------------------------------------------------- 1. prior's variable named like var
@pytest.mark.parametrize("cls", [TransformedDistribution, InverseTransformedDistribution])
@pytest.mark.parametrize("sample_shape", [(), (2,)])
def test_a_prior_variable_named_like_var_gives_the_flows_value_not_the_prior_draw(cls, sample_shape) -> None:
    flow = _randomised(FlowList([MAF(D, [8]), Reverse(D), MAF(D, [8])]).double())
    q = cls(_prior("z"), flow, var=["z"])
    torch.manual_seed(3)
    out = q.sample(batch_n=4, sample_shape=sample_shape)
    # the reference: the same base draw (same seed, as many rows), mapped by the flow by hand
    torch.manual_seed(3)
    n = 2 if sample_shape else 1
    base = _prior("z").sample(batch_n=4 * n)["z"]
    with torch.no_grad():
        mapped = flow(base) if cls is TransformedDistribution else flow.inverse(base)
    assert set(out) == {"z"}
    assert out["z"].shape == (*sample_shape, 4, D)
    torch.testing.assert_close(out["z"].reshape(4 * n, D), mapped, rtol=0, atol=1e-12)
    assert (out["z"].reshape(4 * n, D) - base).abs().max() > 0.1  # the flow is not the identity here
    # the same draw as without the hidden value, and as with a prior variable of another name
    torch.manual_seed(3)
    plain = q.sample(batch_n=4, sample_shape=sample_shape, return_hidden=False)
    torch.manual_seed(3)
    other = cls(_prior("z0"), flow, var=["z"]).sample(batch_n=4, sample_shape=sample_shape)
    assert torch.equal(plain["z"], out["z"]) and torch.equal(other["z"], out["z"])


# ---------------------------------------------------------------- 2. scoring draws made with a sample_shape
def _made(cond: bool) -> MADEBernoulli:
    torch.manual_seed(0)
    if cond:
        return _randomised(MADEBernoulli(4, [8], cond_var=["c"], context_features=2).double())
    return _randomised(MADEBernoulli(4, [8]).double())


def _pixelcnn(cond: bool) -> PixelCNNBernoulli:
    torch.manual_seed(0)
    if cond:
        return _randomised(PixelCNNBernoulli(2, 2, hidden_channels=4, n_layers=1, kernel_size=3, cond_var=["c"],
                                             context_features=2).double())
    return _randomised(PixelCNNBernoulli(2, 2, hidden_channels=4, n_layers=1, kernel_size=3).double())


@pytest.mark.parametrize("make", [_made, _pixelcnn])
@pytest.mark.parametrize("context", ["none", "per batch row", "drawn beside"])
def test_autoregressive_bernoulli_scores_its_draws_made_with_a_sample_shape(make, context) -> None:
    p = make(context != "none")
    g = torch.Generator().manual_seed(1)
    c = {"none": None, "per batch row": torch.randn(2, 2, generator=g, dtype=F64),
         "drawn beside": torch.randn(3, 2, 2, generator=g, dtype=F64)}[context]
    if c is None:
        x = p.sample(batch_n=2, sample_shape=(3,))["x"]
        given = {}
    else:
        x = p.sample({"c": c[0] if c.dim() == 3 else c}, sample_shape=(3,))["x"]
        given = {"c": c}
    assert x.shape == (3, 2, *p.features_shape)

    def slice_given(i):
        return {} if c is None else {"c": c[i] if c.dim() == 3 else c}

    lp = p.get_log_prob({"x": x, **given})
    ref = torch.stack([p.get_log_prob({"x": x[i], **slice_given(i)}).sum() for i in range(3)])
    assert lp.shape == (3,)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-12)
    per_feature = p.get_log_prob({"x": x, **given}, sum_features=False)
    ref_per_feature = torch.stack([p.get_log_prob({"x": x[i], **slice_given(i)}, sum_features=False)
                                   for i in range(3)])
    assert per_feature.shape == x.shape
    torch.testing.assert_close(per_feature, ref_per_feature, rtol=0, atol=1e-12)


def test_autoregressive_bernoulli_still_names_a_value_of_the_wrong_shape() -> None:
    p = _made(False)
    with pytest.raises(ValueError, match=r"^p\(x\): x has shape \(3, 2, 5\), expected \(batch, 4\) "
                                         r"\(or \(\*sample_shape, batch, 4\) for draws made with a sample_shape\)$"):
        p.get_log_prob({"x": torch.zeros(3, 2, 5, dtype=F64)})


# ---------------------------------------------------------------- 3. one row of condition for batch_n rows
@pytest.mark.parametrize("make", [_made, _pixelcnn])
@pytest.mark.parametrize("sample_shape", [(), (2,)])
def test_autoregressive_bernoulli_draws_batch_n_rows_from_one_row_of_condition(make, sample_shape) -> None:
    p = make(True)
    c1 = torch.randn(1, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.manual_seed(5)
    x = p.sample({"c": c1}, batch_n=3, sample_shape=sample_shape)["x"]
    torch.manual_seed(5)
    ref = p.sample({"c": c1.expand(3, 2)}, sample_shape=sample_shape)["x"]
    assert x.shape == (*sample_shape, 3, *p.features_shape)
    assert torch.equal(x, ref)
    torch.testing.assert_close(p.get_log_prob({"x": x, "c": c1}), p.get_log_prob({"x": x, "c": c1.expand(3, 2)}),
                               rtol=0, atol=1e-12)


def test_autoregressive_bernoulli_refuses_other_row_counts_of_condition() -> None:
    p = _made(True)
    with pytest.raises(ValueError, match=r"^p\(x\|c\): batch_n=3 but the conditioning values have 2 rows; give one "
                                         r"row per draw, or one row for all$"):
        p.sample({"c": torch.zeros(2, 2, dtype=F64)}, batch_n=3)


# ---------------------------------------------------------------- 4. data of another dtype than the flow's
@pytest.mark.parametrize("dtype", [torch.float64])
def test_a_flow_refuses_data_of_another_float_dtype_before_actnorm_initialises(dtype) -> None:
    act = ActNorm(2)
    p = InverseTransformedDistribution(Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2)),
                                       FlowList([act, MAF(2, [4])]), var=["x"])
    x = torch.randn(5, 2).to(dtype)
    with pytest.raises(ValueError, match=rf"^p\(x\): x is {dtype} but the flow is torch\.float32: convert one "
                                         rf"\(e\.g\. \.to\(torch\.float32\) on the value, or the distribution's "
                                         rf"\.to\({dtype}\)\)$"):
        p.get_log_prob({"x": x})
    assert not bool(act.initialized)
    with pytest.raises(ValueError, match=rf"^p\(x\): x is {dtype} but the flow is torch\.float32"):
        p.inference({"x": x})
    assert not bool(act.initialized)
    lp = p.get_log_prob({"x": x.float()})  # the flow's dtype: taken, and initialises ActNorm
    assert lp.dtype == torch.float32 and bool(act.initialized)


def test_a_flow_refuses_a_prior_draw_or_a_context_of_another_float_dtype() -> None:
    act = ActNorm(D)
    q = TransformedDistribution(_prior("z0"), FlowList([act, IAF(D, [8])]), var=["z"])  # float64 prior
    with pytest.raises(ValueError, match=r"^p\(z\): the prior's draw of z0 is torch\.float64 but the flow is "
                                         r"torch\.float32"):
        q.sample(batch_n=5)
    assert not bool(act.initialized)
    act = ActNorm(D)
    q = InverseTransformedDistribution(_prior("z0", torch.float32), FlowList([act, MAF(D, [8], context_features=2)]),
                                       var=["x"], cond_var=["c"])
    with pytest.raises(ValueError, match=r"^p\(x\|c\): the flow's context c is torch\.float64 but the flow is "
                                         r"torch\.float32"):
        q.get_log_prob({"x": torch.randn(5, D), "c": torch.randn(5, 2, dtype=F64)})
    assert not bool(act.initialized)


def test_data_of_a_narrower_float_dtype_is_converted_as_before() -> None:
    """float16 data into a float32 flow lose nothing in the conversion: scored as their float32 values (an elementwise
    flow took them before the dtype check too; one with a network failed in its first layer)."""
    x = torch.randn(5, 2).half()
    for layers in ([ActNorm(2)], [ActNorm(2), MAF(2, [4])]):
        p = InverseTransformedDistribution(Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2)),
                                           FlowList(layers), var=["x"])
        lp = p.get_log_prob({"x": x})
        assert lp.dtype == torch.float32
        torch.testing.assert_close(lp, p.get_log_prob({"x": x.float()}))


def test_integer_data_and_autocast_are_still_taken() -> None:
    # guards what the dtype check leaves alone (passes on the code before it too)
    p = InverseTransformedDistribution(Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2)),
                                       FlowList([ActNorm(2), MAF(2, [4])]), var=["x"])
    k = torch.tensor([[0, 1], [2, 3], [1, 1]])
    torch.testing.assert_close(p.get_log_prob({"x": k}), p.get_log_prob({"x": k.float()}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert p.get_log_prob({"x": k.bfloat16()}).shape == (3,)
