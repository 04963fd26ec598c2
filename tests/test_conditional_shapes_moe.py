"""Condition shapes of the MLP distributions (drawn with ``sample_shape``, without a batch dimension, empty), the
batch size of `MixtureOfNormal`'s draws, and empty batches of the conditional one-hot families (review of stop 41,
findings 3 to 6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D
from torch.nn import functional as F

from kizuna.distributions import (
    Categorical,
    Concrete,
    MixtureOfNormal,
    MLPBernoulli,
    MLPCategorical,
    MLPNormal,
    Normal,
    RelaxedCategorical,
    validation,
)

F64 = torch.float64


def _families(seed: int = 0) -> list:
    """An MLP distribution of each family over ``x`` (4 features) given ``z`` (2), with a valid value of ``x``."""
    torch.manual_seed(seed)
    rows = torch.arange(5)
    return [(MLPNormal("x", ["z"], [2, 8, 4], name="p").double(), torch.randn(5, 4, dtype=F64)),
            (MLPBernoulli("x", ["z"], [2, 8, 4]).double(), (torch.rand(5, 4) > 0.5).to(F64)),
            (MLPCategorical("x", ["z"], [2, 8, 4], name="p").double(), F.one_hot(rows % 4, 4).to(F64))]


# ------------------------------------------------------------------ finding 3: conditions drawn with sample_shape
@pytest.mark.parametrize("family", [0, 1, 2])
def test_a_condition_drawn_with_sample_shape_is_scored_as_the_network_applied_per_draw(family: int) -> None:
    """A condition of shape (S, B, D) (a draw made with ``sample_shape``) was flattened into (S, B * D) and the network
    refused it: its parameters, log-densities and means are those of the S per-draw calls stacked, and the
    log-density is torch's on the network's outputs."""
    p, x = _families()[family]
    z = torch.randn(3, 5, 2, dtype=F64)
    dims = [] if family == 2 else [2]  # a categorical's one-hot dimension is its event: no feature dimension left
    lp = p.get_log_prob({"x": x, "z": z}, feature_dims=dims)
    per_draw = torch.stack([p.get_log_prob({"x": x, "z": z[s]}) for s in range(3)])
    assert lp.shape == (3, 5)
    torch.testing.assert_close(lp, per_draw, rtol=1e-12, atol=1e-12)
    out = p.net(z)  # nn.Linear acts on the last dimension: the Pixyz way of writing the same network
    ref = {0: lambda: D.Normal(out[..., :4], F.softplus(out[..., 4:]) + 1e-4).log_prob(x).sum(-1),
           1: lambda: D.Bernoulli(logits=out).log_prob(x).sum(-1),
           2: lambda: D.Categorical(logits=out).log_prob(x.argmax(-1))}[family]()
    torch.testing.assert_close(lp, ref, rtol=1e-12, atol=1e-12)
    params, stacked = p.get_params({"z": z}), [p.get_params({"z": z[s]}) for s in range(3)]
    for key, value in params.items():
        torch.testing.assert_close(value, torch.stack([one[key] for one in stacked]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.sample_mean({"z": z}), torch.stack([p.sample_mean({"z": z[s]}) for s in range(3)]),
                               rtol=1e-12, atol=1e-12)
    assert p.sample({"z": z})["x"].shape == (3, 5, 4)


def test_a_manual_importance_weighted_bound_with_the_libraries_own_decoder() -> None:
    """The review's repro: ``p.get_log_prob(s, feature_dims=[2]) - q.get_log_prob(s, feature_dims=[2])`` on draws made
    with ``sample_shape`` failed in p(x|z)'s network; the log-weights are the per-draw ones, (S, B), also for one data
    row: its draws (S, 1, D) are S rows of the networks (a condition (B, 1, D) is B rows, as before stop 41), and
    ``feature_dims=[2]`` counts the dimensions of the (S, 1, features) a Pixyz ``forward`` gives (it was out of
    range); the default ``get_log_prob`` gives one log-weight per draw, the same numbers."""
    torch.manual_seed(0)
    q = MLPNormal("z", ["x"], [4, 8, 2]).double()
    p = MLPBernoulli("x", ["z"], [2, 8, 4]).double() * Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior").double()
    for rows in (5, 1):
        x = (torch.rand(rows, 4) > 0.5).to(F64)
        s = q.sample({"x": x}, sample_shape=(3,))
        lw = p.get_log_prob(s, feature_dims=[2]) - q.get_log_prob(s, feature_dims=[2])
        ref = torch.stack([p.get_log_prob({"x": x, "z": s["z"][k]}) - q.get_log_prob({"x": x, "z": s["z"][k]})
                           for k in range(3)])
        assert lw.shape == (3, rows)
        torch.testing.assert_close(lw, ref, rtol=1e-12, atol=1e-12)
        bound = torch.logsumexp(lw, 0) - math.log(3)
        assert bound.shape == (rows,) and bool(bound.isfinite().all())
        if rows == 1:
            torch.testing.assert_close(p.get_log_prob(s) - q.get_log_prob(s), ref[:, 0], rtol=1e-12, atol=1e-12)


def test_conditions_drawn_with_sample_shape_beside_others_images_and_one_draw() -> None:
    """Two conditions, one drawn (S, B, 2) and one given per batch row (B, 3), are the per-draw calls stacked (the
    given one is the same for every draw); image-shaped draws (S, B, 1, 2, 2) of a 4-input network are S * B rows; a
    draw of ``sample_shape=(1,)`` beside another value of B rows is drawn as (1, B, features) (its one leading row was
    taken as a row to broadcast to the other value's B rows, and refused)."""
    torch.manual_seed(0)
    m = MLPNormal("w", ["z", "y"], [5, 8, 2]).double()
    z, y = torch.randn(3, 5, 2, dtype=F64), torch.randn(5, 3, dtype=F64)
    loc = m.get_params({"z": z, "y": y})["loc"]
    torch.testing.assert_close(loc, torch.stack([m.get_params({"z": z[s], "y": y})["loc"] for s in range(3)]),
                               rtol=1e-12, atol=1e-12)
    assert m.sample({"z": z, "y": y})["w"].shape == (3, 5, 2)
    q = MLPNormal("z", ["x"], [4, 8, 2]).double()
    img = torch.rand(3, 5, 1, 2, 2, dtype=F64)
    torch.testing.assert_close(q.get_params({"x": img})["loc"],
                               torch.stack([q.get_params({"x": img[s]})["loc"] for s in range(3)]),
                               rtol=1e-12, atol=1e-12)
    p = MLPBernoulli("x", ["z"], [2, 8, 4]).double()
    one = torch.randn(1, 5, 2, dtype=F64)
    torch.manual_seed(1)
    a = p.sample({"z": one, "w": torch.zeros(5, 3)})["x"]
    torch.manual_seed(1)
    b = p.sample({"z": one[0]})["x"]
    assert a.shape == (1, 5, 4) and torch.equal(a[0], b)


# ------------------------------------------------------------- finding 6: several conditions without a batch dimension
def test_several_conditions_without_a_batch_dimension_are_a_batch_of_one() -> None:
    """``{"x": (2,), "y": 0-d}`` for a 3-input network was read as two rows of one feature each and the network
    refused it: it is one row, as the batched call ``{"x": (1, 2), "y": (1, 1)}`` (densities, parameters and draws
    equal); a 1-D value of the network's other inputs beside a batch is one row that conditions every row; a 1-D value
    read as one feature per row (a batch of scalar times) still is."""
    torch.manual_seed(0)
    q = MLPNormal("z", ["x", "y"], [3, 8, 2]).double()
    x, y, z = torch.rand(2, dtype=F64), torch.tensor(0.3, dtype=F64), torch.randn(2, dtype=F64)
    batched = {"x": x[None], "y": y.reshape(1, 1)}
    torch.testing.assert_close(q.get_log_prob({"x": x, "y": y, "z": z}), q.get_log_prob({**batched, "z": z[None]}),
                               rtol=0, atol=0)
    torch.testing.assert_close(q.get_params({"x": x, "y": y})["loc"], q.get_params(batched)["loc"], rtol=0, atol=0)
    for check in (True, False):
        with validation(check):
            torch.manual_seed(2)
            a = q.sample({"x": x, "y": y})["z"]
            torch.manual_seed(2)
            assert a.shape == (1, 2) and torch.equal(a, q.sample(batched)["z"])
    ys = torch.rand(4, 1, dtype=F64)
    torch.testing.assert_close(q.get_params({"x": x, "y": ys})["loc"],
                               q.get_params({"x": x[None].expand(4, 2), "y": ys})["loc"], rtol=0, atol=0)
    assert q.sample({"x": x, "y": ys})["z"].shape == (4, 2)
    t = torch.rand(5, dtype=F64)  # one time per row beside rows of 2 features
    timed = MLPBernoulli("w", ["t", "x"], [3, 4], name="p").double()
    xs = torch.rand(5, 2, dtype=F64)
    torch.testing.assert_close(timed.get_params({"t": t, "x": xs})["logits"],
                               timed.get_params({"t": t[:, None], "x": xs})["logits"], rtol=0, atol=0)


# --------------------------------------------------------------- finding 4: MixtureOfNormal's rows
def _experts() -> tuple[Normal, Normal]:
    qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q").double()
    qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=0.5, name="q").double()
    return qx, qy


def test_mixture_of_normal_one_row_beside_a_batch_whatever_the_experts_order() -> None:
    """One row of x beside 4000 of y: the draws have y's rows whatever the experts' order (with q(z|x) first, q(z|y)
    was drawn with batch_n=1, from the first expert's condition, and failed); the density is the mixture's computed by
    hand; each expert's draws are independent rows of its own distribution (the one-row expert is not one draw
    repeated) and the mixture's draws have its mean; one row beside none is none."""
    qx, qy = _experts()
    n = 4000
    given = {"x": torch.tensor([[-2.0]], dtype=F64), "y": torch.full((n, 1), 3.0, dtype=F64)}
    z = torch.linspace(-4, 5, n, dtype=F64)[:, None]
    ref = torch.logaddexp(math.log(0.5) + D.Normal(torch.tensor(-2.0, dtype=F64), 1.0).log_prob(z[:, 0]),
                          math.log(0.5) + D.Normal(torch.tensor(3.0, dtype=F64), 0.5).log_prob(z[:, 0]))
    se = 5 / math.sqrt(n)
    variance = 0.5 * (1 + 4) + 0.5 * (0.25 + 9) - 0.5**2  # E[z^2] - E[z]^2 of the mixture
    for ix, iy in ((0, 1), (1, 0)):
        m = MixtureOfNormal([qx, qy] if ix == 0 else [qy, qx])
        torch.testing.assert_close(m.get_log_prob({**given, "z": z}), ref, rtol=1e-12, atol=1e-12)
        torch.manual_seed(0)
        each = m.sample_each(given)
        assert each[ix].shape == each[iy].shape == (n, 1)
        assert abs(each[ix].mean().item() + 2.0) < se and abs(each[ix].std().item() - 1.0) < 0.05
        assert abs(each[iy].mean().item() - 3.0) < 0.5 * se and abs(each[iy].std().item() - 0.5) < 0.03
        draws = m.sample(given)["z"]
        assert draws.shape == (n, 1) and abs(draws.mean().item() - 0.5) < 5 * math.sqrt(variance / n)
        assert m.sample({**given, "y": given["y"][:0]})["z"].shape == (0, 1)


def test_mixture_of_normal_experts_of_different_rows_are_named_and_a_one_row_expert_is_drawn_per_row() -> None:
    """Experts given 3 and 5 rows: the error names each expert's rows (it named a ``batch_n=3`` the user never gave);
    an expert that draws one row where the others draw 5 (one that sizes itself by its own inputs only) is drawn again
    for each row, not repeated."""
    qx, qy = _experts()
    with pytest.raises(ValueError, match=r"^p\(z\|x,y\): the experts' inputs have different numbers of rows "
                                         r"\(q\(z\|x\): 3, q\(z\|y\): 5\)$"):
        MixtureOfNormal([qx, qy]).sample({"x": torch.zeros(3, 1, dtype=F64), "y": torch.zeros(5, 1, dtype=F64)})

    class OwnRows(Normal):
        def _rows(self, params, x_dict, batch_n):  # noqa: ANN001, ANN202 - the rows of its own parameters only
            return batch_n if batch_n is not None else params["loc"].shape[0]

    own = OwnRows(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q").double()
    m = MixtureOfNormal([own, qy])
    torch.manual_seed(0)
    each = m.sample_each({"x": torch.zeros(1, 1, dtype=F64), "y": torch.zeros(500, 1, dtype=F64)})
    assert each[0].shape == (500, 1) and abs(each[0].std().item() - 1.0) < 0.15


# ------------------------------------------------------- finding 5: empty batches of the conditional one-hot families
def test_conditional_one_hot_families_take_an_empty_batch() -> None:
    """0 rows of a condition: draws (0, 3) and log-densities (0,), as MLPNormal and the unconditional families give
    (torch's check failed reshaping the empty logits and the error said "parameter shapes do not broadcast"), with the
    checks on and off; the checks still refuse invalid parameters of a non-empty batch."""
    torch.manual_seed(0)
    cases = [(MLPCategorical("y", ["c"], [4, 3]), torch.zeros(0, 4)),
             (Categorical(var=["y"], cond_var=["c"], probs="c"), torch.zeros(0, 3)),
             (RelaxedCategorical(var=["y"], cond_var=["c"], probs="c"), torch.zeros(0, 3)),
             (Concrete(var=["y"], cond_var=["c"], probs="c", temperature=0.5), torch.zeros(0, 3))]
    for check in (True, False):
        with validation(check):
            for p, c in cases:
                assert p.sample({"c": c})["y"].shape == (0, 3), p
                assert p.get_log_prob({"c": c, "y": torch.zeros(0, 3)}).shape == (0,), p
            for p, c in cases[1:3]:
                assert p.sample_mean({"c": c}).shape == (0, 3) and p.get_entropy({"c": c}).shape == (0,)
    with pytest.raises(ValueError, match=r"p\(y\|c\): parameter 'probs' of Categorical must satisfy"):
        cases[1][0].sample({"c": torch.tensor([[0.5, 0.7, -0.2]])})
