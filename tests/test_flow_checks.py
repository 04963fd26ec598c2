"""Argument and shape checks of the flow layers and flow distributions, and the cases they used to get wrong.

* `Permutation` refuses float, boolean and non-1-D indices (as MADE's ``order``); `Shuffle` and `Reverse` check
  ``in_features`` as the other layers do;
* `rational_quadratic_spline` refuses a ``bound``, ``min_bin`` or ``min_derivative`` it cannot honour;
* a coupling layer's user network of the wrong output shape is named with the shape it returned and the one
  expected; one that broadcasts to ``x``'s shape (a ``(B, 1)`` scale, a per-channel ``(B, C, 1, 1)``) is taken, its
  log-determinant against autograd's;
* a flow distribution with several context variables takes one row of one of them as the row of every draw
  (against the same context expanded by hand), and scores draws made with a ``sample_shape`` (against scoring each
  draw's slice on its own, summed as the other families sum such draws); a value whose trailing dimensions are not
  the prior's features is not read as such draws, and its error names the shape it was given.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kizuna.distributions import InverseTransformedDistribution, Normal, TransformedDistribution
from kizuna.flows import MAF, AffineCoupling, Flow, Permutation, PlanarFlow, RationalQuadraticCoupling, Reverse, Shuffle
from kizuna.flows.spline import rational_quadratic_spline

F64 = torch.float64
Tensor = torch.Tensor


# ------------------------------------------------------------------ permutations
@pytest.mark.parametrize("indices, match", [
    ([0.7, 1.2, 2.9], r"permute_indices must be integers.*\[0\.7, 1\.2, 2\.9\]"),  # was truncated to [0, 1, 2]
    ([True, False], r"permute_indices must be integers.*\[True, False\].*bool"),  # was [1, 0]
    (torch.tensor([1.0, 0.0]), r"permute_indices must be integers.*float"),
    # was flattened into one permutation of 4 features
    ([[1, 0], [2, 3]], r"permute_indices must be one permutation of 0\.\.n-1 \(1-D\), got shape \(2, 2\)"),
])
def test_permutation_refuses_indices_that_are_not_one_integer_permutation(indices, match) -> None:
    with pytest.raises(ValueError, match=r"^Permutation: " + match):
        Permutation(indices)


@pytest.mark.parametrize("layer", [Shuffle, Reverse])
@pytest.mark.parametrize("value", [-1, 0, 2.5, True, None])
def test_shuffle_and_reverse_check_in_features(layer, value) -> None:
    with pytest.raises(ValueError, match=rf"^{layer.__name__}: in_features must be an integer >= 1, got {value!r}$"):
        layer(value)


def test_permutation_layers_still_take_integers_of_numpy_and_torch() -> None:
    # guards the good behaviour kept by the checks (passes on the code before them too)
    assert Permutation(np.array([2, 0, 1])).permute_indices.tolist() == [2, 0, 1]
    assert Reverse(np.int64(3)).permute_indices.tolist() == [2, 1, 0]
    assert sorted(Shuffle(torch.tensor(4), seed=1).permute_indices.tolist()) == [0, 1, 2, 3]
    x = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(Reverse(3)(x), x.flip(1))


# ------------------------------------------------------------------ spline arguments
def _spline_params(k: int, rows: int = 13) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.linspace(-2.99, 2.99, rows, dtype=F64)
    w, h, d = (torch.randn(1, n, dtype=F64).expand(rows, n) * 3 for n in (k, k, k - 1))
    return x, w, h, d


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_bin=0.2), r"min_bin must be at most 1/K = 1/8 .*got 0\.2"),  # non-monotone, NaN log-slopes
    (dict(min_bin=-0.01), r"min_bin must be a finite number >= 0"),
    (dict(bound=0.0), r"bound must be a positive finite number, got 0\.0"),
    (dict(bound=-3.0), r"bound must be a positive finite number, got -3\.0"),
    (dict(min_derivative=1.5), r"min_derivative must be < 1 .*got 1\.5"),  # a raw math domain error
    (dict(min_derivative=1.0), r"min_derivative must be < 1 .*got 1\.0"),
    (dict(min_derivative=-0.1), r"min_derivative must be a finite number >= 0"),
])
def test_spline_refuses_limits_it_cannot_honour(kwargs, match) -> None:
    x, w, h, d = _spline_params(8)
    with pytest.raises(ValueError, match=r"^rational_quadratic_spline: " + match):
        rational_quadratic_spline(x, w, h, d, **kwargs)


def test_spline_at_the_largest_min_bin_is_the_equal_bin_spline() -> None:
    # min_bin = 1/K leaves K equal bins (widths and heights): the map is then that of all-zero bin parameters
    # (guards the limit kept allowed, as RationalQuadraticCoupling allows 1000 bins of the default 1/1000)
    x, w, h, d = _spline_params(8)
    out, log_grad = rational_quadratic_spline(x, w, h, d, min_bin=1 / 8)
    ref, ref_grad = rational_quadratic_spline(x, torch.zeros_like(w), torch.zeros_like(h), d, min_bin=1 / 8)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(log_grad, ref_grad)
    assert bool((out.diff() > 0).all()) and bool(log_grad.isfinite().all())


# ------------------------------------------------------------------ coupling networks
class _Pair(nn.Module):
    def __init__(self, s_width: int, t_width: int) -> None:
        super().__init__()
        self.s, self.t = nn.Linear(3, s_width), nn.Linear(3, t_width)

    def forward(self, x):
        return self.s(x), self.t(x)


class _Out(nn.Module):
    def __init__(self, f) -> None:
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


@pytest.mark.parametrize("make, match", [
    (lambda: RationalQuadraticCoupling(3, net=nn.Linear(3, 5)),
     r"^RationalQuadraticCoupling: net returned \(4, 5\), expected \(4, 69\)"),
    (lambda: AffineCoupling(3, scale_net=nn.Linear(3, 3), translate_net=nn.Linear(3, 5)),
     r"^AffineCoupling: translate_net returned \(4, 5\), expected the shape of x, \(4, 3\)"),
    # shapes that broadcast against x into another shape (x was broadcast with them silently) or not at all (a
    # (D,) output, one value per feature for every row, broadcasts to x's shape: accepted, see
    # tests/test_dim_broadcast_promotion.py)
    (lambda: AffineCoupling(3, scale_net=_Out(lambda x: x[:, 0]), translate_net=nn.Linear(3, 3)),
     r"^AffineCoupling: scale_net returned \(4,\), expected the shape of x, \(4, 3\)"),
    (lambda: AffineCoupling(3, scale_net=_Out(lambda x: x[None].expand(2, 4, 3)), translate_net=nn.Linear(3, 3)),
     r"^AffineCoupling: scale_net returned \(2, 4, 3\), expected the shape of x, \(4, 3\)"),
    (lambda: AffineCoupling(3, scale_net=nn.Linear(3, 3), translate_net=_Out(lambda x: x[:1, :, None])),
     r"^AffineCoupling: translate_net returned \(1, 3, 1\), expected the shape of x, \(4, 3\)"),
    (lambda: AffineCoupling(3, scale_net=_Out(lambda x: x[:2]), translate_net=nn.Linear(3, 3)),
     r"^AffineCoupling: scale_net returned \(2, 3\), expected the shape of x, \(4, 3\)"),
    (lambda: AffineCoupling(3, scale_translate_net=_Pair(3, 2)),
     r"^AffineCoupling: scale_translate_net's t returned \(4, 2\), expected the shape of x, \(4, 3\)"),
    (lambda: AffineCoupling(3, scale_translate_net=nn.Linear(3, 6)),
     r"^AffineCoupling: scale_translate_net must return the pair \(s, t\), got shape \(4, 6\)"),
])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_a_coupling_network_of_the_wrong_shape_is_named(make, match, direction) -> None:
    layer = make()
    with pytest.raises(ValueError, match=match):
        getattr(layer, direction)(torch.randn(4, 3))


def _jacobian_logdet(layer: nn.Module, x: Tensor) -> Tensor:
    """log|det J| of each row's map, by autograd."""
    return torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(
        lambda v: layer.forward_and_logdet(v[None])[0][0], row))[1] for row in x])


@pytest.mark.parametrize("mask_type", ["channel_wise", "checkerboard"])
def test_a_coupling_scale_that_broadcasts_to_x_scales_every_feature(mask_type) -> None:
    # one scale per row, (B, 1), multiplies each transformed feature: its log-determinant counts it once per feature
    torch.manual_seed(0)
    f = AffineCoupling(4, mask_type, scale_net=_Out(lambda x: torch.tanh(x.sum(1, keepdim=True))),
                       translate_net=nn.Linear(4, 4)).to(F64)
    x = torch.randn(3, 4, dtype=F64)
    z, logdet = f.forward_and_logdet(x)  # was a ValueError: scale_net returned (3, 1)
    assert z.shape == x.shape
    torch.testing.assert_close(logdet, _jacobian_logdet(f, x))
    back, inv_logdet = f.inverse_and_logdet(z)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inv_logdet, -logdet)
    # a (B, 1) translation likewise, and a (1, D) scale shared by every row
    g = AffineCoupling(4, mask_type, scale_net=_Out(lambda x: 0.3 * torch.ones(1, 4, dtype=x.dtype)),
                       translate_net=_Out(lambda x: x.sum(1, keepdim=True))).to(F64)
    torch.testing.assert_close(g.forward_and_logdet(x)[1], _jacobian_logdet(g, x))
    torch.testing.assert_close(g.inverse(g(x)), x)


def test_a_per_channel_image_scale_counts_every_pixel() -> None:
    # (B, C, 1, 1) from scale_translate_net on images (B, C, H, W): the log-determinant sums it over the pixels
    class PerChannel(nn.Module):
        def forward(self, x):
            pooled = torch.tanh(x.mean((2, 3), keepdim=True))
            return pooled, x.flip(1)

    torch.manual_seed(1)
    f = AffineCoupling(2, scale_translate_net=PerChannel()).to(F64)
    x = torch.randn(2, 2, 3, 3, dtype=F64)
    _, logdet = f.forward_and_logdet(x)
    ref = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(
        lambda v: f.forward_and_logdet(v[None])[0][0], row).reshape(18, 18))[1] for row in x])
    torch.testing.assert_close(logdet, ref)
    torch.testing.assert_close(f.inverse(f(x)), x)


def test_a_spline_network_may_return_its_parameters_per_feature() -> None:
    # (batch, in_features, 3K - 1) is the layout the layer reshapes to: the same map as the flat output
    # (guards behaviour kept by the check; passes on the code before it too)
    flat = nn.Linear(3, 3 * 23)
    nn.init.normal_(flat.weight)

    class PerFeature(nn.Module):
        def forward(self, x):
            return flat(x).reshape(x.shape[0], 3, 23)

    x = torch.randn(4, 3)
    torch.testing.assert_close(RationalQuadraticCoupling(3, net=PerFeature())(x),
                               RationalQuadraticCoupling(3, net=flat)(x), rtol=0, atol=0)


# ------------------------------------------------------------------ flow distributions
def _prior(var: str, n: int) -> Normal:
    return Normal(var=[var], loc=torch.zeros(n, dtype=F64), scale=torch.ones(n, dtype=F64))


def _randomised(flow: nn.Module) -> nn.Module:
    flow.to(F64)
    with torch.no_grad():
        for t in flow.parameters():
            t.add_(0.5 * torch.randn_like(t))
    return flow


def test_one_context_row_beside_others_conditions_every_row() -> None:
    p = InverseTransformedDistribution(_prior("z", 3), _randomised(MAF(3, [8], context_features=3)), var=["x"],
                                       cond_var=["a", "b"])
    x, a, b = torch.randn(5, 3, dtype=F64), torch.randn(1, 1, dtype=F64), torch.randn(5, 2, dtype=F64)
    got = p.get_log_prob({"x": x, "a": a, "b": b})  # was a raw torch.cat error
    ref = p.get_log_prob({"x": x, "a": a.expand(5, 1), "b": b})
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(p.get_log_prob({"x": x, "a": a.expand(5, 1), "b": b[:1]}),
                               p.get_log_prob({"x": x, "a": a.expand(5, 1), "b": b[:1].expand(5, 2)}), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"context variables have different numbers of rows \(a \(3, 1\), b \(5, 2\)"):
        p.get_log_prob({"x": x, "a": torch.randn(3, 1, dtype=F64), "b": b})


def _flow_distributions():
    yield TransformedDistribution(_prior("z0", 2), _randomised(PlanarFlow(2)), var=["x"])
    yield InverseTransformedDistribution(_prior("z", 2), _randomised(MAF(2, [8])), var=["x"])


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("batch", [3, 2])  # 2 == in_features passed the flow's feature count
@pytest.mark.parametrize("sample_shape", [[4], [2, 3]])
def test_sample_shape_draws_are_scored_as_each_draw_on_its_own(index, batch, sample_shape) -> None:
    q = list(_flow_distributions())[index]
    s = q.sample(batch_n=batch, sample_shape=sample_shape, return_hidden=False)["x"]  # (*sample_shape, batch, 2)
    got = q.get_log_prob({"x": s})  # was an error blaming the flow's own variable
    flat = s.reshape(-1, batch, 2)
    per_draw = torch.stack([q.get_log_prob({"x": flat[i]}) for i in range(flat.shape[0])])
    # as the other families: every dimension of (*sample_shape, batch) but the first summed
    ref = per_draw.reshape(*sample_shape, batch).flatten(1).sum(1)
    assert got.shape == (sample_shape[0],)
    torch.testing.assert_close(got, ref)
    # and the same sum as a Normal's over such draws where the flow is the identity
    ident = InverseTransformedDistribution(_prior("z", 2), MAF(2, [8]).to(F64), var=["x"])
    torch.testing.assert_close(ident.get_log_prob({"x": s}), _prior("x", 2).get_log_prob({"x": s}))


def test_sample_shape_draws_of_a_conditional_flow_take_their_context_per_row() -> None:
    p = InverseTransformedDistribution(_prior("z", 2), _randomised(MAF(2, [8], context_features=3)), var=["x"],
                                       cond_var=["c"])
    c = torch.randn(3, 3, dtype=F64)
    s = p.sample({"c": c}, sample_shape=[4], return_all=False, return_hidden=False)["x"]  # (4, 3, 2)
    ref = torch.stack([p.get_log_prob({"x": s[i], "c": c}).sum() for i in range(4)])
    torch.testing.assert_close(p.get_log_prob({"x": s, "c": c}), ref)  # one context per batch row
    drawn = torch.randn(4, 3, 3, dtype=F64)  # a context drawn beside x: one per draw
    ref = torch.stack([p.get_log_prob({"x": s[i], "c": drawn[i]}).sum() for i in range(4)])
    torch.testing.assert_close(p.get_log_prob({"x": s, "c": drawn}), ref)


class _Double(Flow):
    """x -> 2x, whatever x's shape (the prior then checks the value's shape)."""

    def _forward(self, x, y):
        return 2 * x, torch.full((x.shape[0],), math.log(2) * x[0].numel())

    def _inverse(self, z, y):
        return z / 2, torch.full((z.shape[0],), -math.log(2) * z[0].numel())


@pytest.mark.parametrize("make, match", [
    (lambda: TransformedDistribution(Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[784]), _Double(),
                                     var=["x"]),
     r"z has shape \(3, 1, 28, 28\), expected \(batch, 784\) .* given \(1, 28, 28\)"),
    (lambda: TransformedDistribution(Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[784]), PlanarFlow(784),
                                     var=["x"]),
     r"^PlanarFlow: z has 1 features \(dim 1 of shape \(3, 1, 28, 28\)\), expected in_features=784"),
    (lambda: InverseTransformedDistribution(Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[784]),
                                            MAF(784, [8]), var=["x"]),
     r"^MAF: x has 1 features \(dim 1 of shape \(3, 1, 28, 28\)\), expected in_features=784"),
])
def test_a_mis_shaped_value_is_named_in_the_shape_it_was_given(make, match) -> None:
    # images (3, 1, 28, 28) scored by a prior of 784 features: not read as draws of a sample_shape (3, 1, 28) of
    # 28 features, (84, 28), which the error then named
    with pytest.raises(ValueError, match=match):
        make().get_log_prob({"x": torch.randn(3, 1, 28, 28)})
