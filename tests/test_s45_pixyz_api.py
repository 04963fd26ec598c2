"""Regressions of stop 45's review L: differential fuzzing of the distribution API against Pixyz 0.3.3.

The Pixyz numbers and shapes below were printed by Pixyz 0.3.3 itself (the reviewer's scripts, run beside kizuna on
the same inputs and seeds); they are written in as constants, Pixyz is not imported.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from kizuna.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    MixtureModel,
    MixtureOfNormal,
    Normal,
    validation,
)

PORTING = Path(__file__).parents[1] / "docs" / "porting_from_pixyz.md"


def porting_row(start: str) -> str:
    """The row of the porting page's table of deliberate differences that starts with ``start``."""
    rows = [line for line in PORTING.read_text().splitlines() if line.startswith(start)]
    assert len(rows) == 1, f"{len(rows)} rows of docs/porting_from_pixyz.md start with {start!r}"
    return rows[0]


def shapes(d: dict) -> dict:
    return {k: tuple(v.shape) for k, v in d.items()}


# ------------------------------------------------------------------ 1. one-row condition, batch_n and sample_shape
def test_a_product_given_one_row_draws_batch_n_rows_per_draw() -> None:
    """``(a * e).sample({"c": c1}, batch_n=4, sample_shape=[2])`` with a one-row ``c``: Pixyz 0.3.3 draws x and w of
    (2, 4, 1), as the single distribution and ``batch_n`` alone do; kizuna refused ("batch_n=8 but the conditioning
    values (c) have batch size 2", numbers the caller never gave). The draws: x first, then w, each from torch's stream
    in order (x = c + the first 8 standard normals, w the next 8), the one row conditioning every row."""
    a = Normal(var=["x"], cond_var=["c"], loc="c", scale=1.0)
    b = Normal(var=["y"], cond_var=["x"], loc="x", scale=1.0)
    e = Normal(var=["w"], loc=0.0, scale=1.0, features_shape=[1])
    c = torch.full((1, 1), 3.0)
    torch.manual_seed(0)
    noise = torch.cat([torch.randn(8), torch.randn(8)])  # two draws of 8, as the two factors make them
    torch.manual_seed(0)
    out = (a * e).sample({"c": c}, batch_n=4, sample_shape=[2])
    assert shapes(out) == {"c": (1, 1), "x": (2, 4, 1), "w": (2, 4, 1)}  # Pixyz's shapes
    torch.testing.assert_close(out["x"].flatten(), 3.0 + noise[:8])
    torch.testing.assert_close(out["w"].flatten(), noise[8:])
    # Pixyz's x of the single distribution from seed 0: the product's x is the same draw
    pixyz_single = [4.540996074676514, 2.706571102142334, 0.8212106227874756, 3.5684313774108887,
                    1.9154776334762573, 1.6014045476913452, 3.4033467769622803, 3.838026285171509]
    torch.testing.assert_close(out["x"].flatten(), torch.tensor(pixyz_single))
    # a chain c -> x -> y (Pixyz's own compounding fails here): y drawn at each row's x
    torch.manual_seed(0)
    out = (b * a).sample({"c": c}, batch_n=4, sample_shape=[2])
    assert shapes(out) == {"c": (1, 1), "x": (2, 4, 1), "y": (2, 4, 1)}
    torch.testing.assert_close(out["x"].flatten(), 3.0 + noise[:8])
    torch.testing.assert_close(out["y"].flatten(), out["x"].flatten() + noise[8:])


# ------------------------------------------------------------------ 2. unrelated keys size the batch (kept, documented)
def test_unrelated_values_size_the_batch_as_documented() -> None:
    """Pixyz 0.3.3 reads only ``input_var``: ``p(z).sample({"foo": (3, 5)})`` draws z of (1, 2) (so do ``p(x|z)p(z)``
    and ``p(z)p(y)``, also with ``sample_mean=True``). kizuna keeps one row per row of the batch (a prior inside an
    expectation over a data batch), says so in ``sample``'s docstring and in the porting table, and ``batch_n=1``
    gives Pixyz's one shared draw, as the row says."""
    foo = {"foo": torch.ones(3, 5)}
    pz = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2))
    px = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    py = Normal(var=["y"], loc=torch.zeros(1), scale=torch.ones(1))
    pixyz = [{"z": (1, 2)}, {"z": (1, 2), "x": (1, 2)}, {"z": (1, 2), "y": (1, 1)}]
    for d, theirs in zip((pz, px * pz, pz * py), pixyz):
        ours = {k: (3, *s[1:]) for k, s in theirs.items()}
        assert shapes(d.sample(foo, return_all=False)) == ours
        assert shapes(d.sample(foo, return_all=False, sample_mean=True)) == ours
        assert shapes(d.sample(foo, batch_n=1, return_all=False)) == theirs
    row = porting_row("| `prior.sample(x_dict)` of a distribution none of whose inputs is batched")
    assert "one `z` per row of `x`, `(B, D)`" in row and "`prior.sample(d, batch_n=1)`" in row
    doc = " ".join(Distribution.sample.__doc__.split())
    assert "also one under a key that is none of this distribution's variables" in doc
    assert "give ``batch_n=1`` for that" in doc


# ------------------------------------------------------------------ 3. one unbatched condition vector
class _OneVector(Normal):
    """The reviewer's ``onedim.py`` network, with fixed weights: ``nn.Linear(2, 3)`` on a ``z`` of ``(2,)``."""

    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="q")
        self.lin = nn.Linear(2, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[0.5, -0.25], [1.0, 0.75], [-0.5, 0.25]]))
            self.lin.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.lin(z)
        return {"loc": h, "scale": nn.functional.softplus(h)}


def test_a_network_given_one_unbatched_vector_draws_as_pixyz_with_validation_off() -> None:
    """Pixyz 0.3.3 on ``z = [0.5, -1.0]`` (seed 0): ``sample`` x of (3,) with these numbers, ``sample_shape=[2]``
    (2, 3), ``reparam=True`` the same draw, ``sample_mean`` (3,), ``get_log_prob`` of x (3,) three values. kizuna
    gives them with validation off; with it on, `sample`'s check of the network's rows reads a 1-D condition as a
    batch of scalars (a time ``t`` of (B,), which one vector's shape cannot be told from: a probe of ``forward`` that
    tried let networks pooling such a batch draw silently, diff review 6) and says how to give one vector."""
    q = _OneVector()
    z = torch.tensor([0.5, -1.0])
    pixyz_draw = torch.tensor([2.1987648010253906, -0.594733476638794, -1.503218650817871])
    pixyz_second = torch.tensor([1.1897406578063965, -0.9849395155906677, -1.0365543365478516])
    with validation(True), pytest.raises(ValueError, match=re.escape(
            "q(x|z): the parameters have batch size 3 but the conditioning values (z) have batch size 2; forward "
            "must return one row of parameters per row of its inputs (if z is one vector without a batch dimension, "
            "give it one: z.unsqueeze(0), or draw with validation off as Pixyz does)")):
        q.sample({"z": z})
    with validation(True):
        assert q.sample({"z": z.unsqueeze(0)})["x"].shape == (1, 3)
    with validation(False):
        torch.manual_seed(0)
        torch.testing.assert_close(q.sample({"z": z})["x"], pixyz_draw)
        torch.manual_seed(0)
        torch.testing.assert_close(q.sample({"z": z}, sample_shape=[2])["x"], torch.stack([pixyz_draw, pixyz_second]))
        torch.manual_seed(0)
        torch.testing.assert_close(q.sample({"z": z}, reparam=True)["x"], pixyz_draw)
        torch.testing.assert_close(q.sample({"z": z}, sample_mean=True)["x"], torch.tensor([0.6, -0.45, -0.2]))
        torch.testing.assert_close(q.sample_mean({"z": z}), torch.tensor([0.6, -0.45, -0.2]))
        torch.testing.assert_close(q.get_log_prob({"z": z, "x": torch.tensor([0.2, 0.1, -0.3])}),
                                   torch.tensor([-1.0300639867782593, -0.8338717818260193, -0.4189816415309906]))
    # a batch of two such vectors is two rows, as before
    out = q.sample({"z": torch.stack([z, z])})
    assert out["x"].shape == (2, 3)


def test_a_network_that_returns_other_rows_than_its_batch_is_still_named() -> None:
    """The check the unbatched vector passes by stays for a batch: 4 rows in, 3 rows out is refused."""

    class Collapsing(Normal):
        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": z[:3], "scale": torch.ones(3, 2)}

    q = Collapsing(var=["x"], cond_var=["z"])
    with pytest.raises(ValueError, match=re.escape("p(x|z): the parameters have batch size 3 but the conditioning "
                                                   "values (z) have batch size 4; forward must return one row")):
        q.sample({"z": torch.zeros(4, 2)})


# ------------------------------------------------------------------ 4. reparam=True without a reparameterised sampler
def test_reparam_refusal_is_in_the_porting_table_as_raised() -> None:
    """Pixyz 0.3.3 draws ``Categorical``, ``Bernoulli`` and ``Normal(z|y) * Categorical(y)`` with ``batch_n=2,
    reparam=True`` without the trick (y (2, 2); x (2, 1); y, z (2, 2)); kizuna refuses, and the porting table says so
    with the message it raises."""
    y = Categorical(var=["y"], probs=torch.tensor([0.3, 0.7]))
    z = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0)
    x = Bernoulli(var=["x"], probs=torch.tensor([0.5]))
    row = porting_row("| `sample(..., reparam=True)` on a family without a reparameterised sampler")
    message = row.split("a `ValueError` naming them: `", 1)[1].split("`", 1)[0]
    assert message == ("p(z,y): reparam=True but p(y) has no reparameterised sampler (use reparam=False, or a "
                       "relaxed distribution)")
    with pytest.raises(ValueError, match=re.escape(message)):
        (z * y).sample(batch_n=2, reparam=True)
    for d in (y, x):
        with pytest.raises(ValueError, match="has no reparameterised sampler"):
            d.sample(batch_n=2, reparam=True)
    # the remedies of the row: reparam=False gives Pixyz's shapes; the discrete factor drawn first, then the product
    # given it draws the rest reparameterised (the factor given is held, not drawn: it was refused all the same)
    assert shapes((z * y).sample(batch_n=2, reparam=False)) == {"y": (2, 2), "z": (2, 2)}
    assert shapes(x.sample(batch_n=2)) == {"x": (2, 1)}
    assert "`(q_z * q_y).sample(d, reparam=True)`" in row and "or an `Expectation`" in row
    scale = nn.Parameter(torch.tensor([0.5, 2.0]))

    class Scaled(Normal):
        def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": y, "scale": scale.expand_as(y)}

    q_z = Scaled(var=["z"], cond_var=["y"])
    d = y.sample(batch_n=3)
    torch.manual_seed(1)
    out = (q_z * y).sample(d, reparam=True)
    assert out["y"] is d["y"]
    torch.manual_seed(1)
    torch.testing.assert_close(out["z"], d["y"] + scale * torch.randn(3, 2))  # loc + scale * eps, pathwise
    out["z"].sum().backward()
    assert scale.grad is not None and bool((scale.grad != 0).all())


# ------------------------------------------------------------------ 5. MixtureOfNormal's row
def test_mixture_of_normal_row_names_the_differences_and_they_hold() -> None:
    """Pixyz 0.3.3's MixtureOfNormal splits the rows between the experts (stratified) and so has get_params /
    get_entropy; kizuna's is a mixture in every row. The porting row says so, and what it says holds."""
    row = porting_row("| `MixtureOfNormal(p, weight_modalities=w).get_log_prob(x)`")
    for claim in ("the first `floor(N w_0)` take expert 0's", "`get_params` and `get_entropy` are refused",
                  "`q.sample_each(x_dict)`", "picks an expert for each row at random"):
        assert claim in row
    qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=2.0, name="q")
    q = MixtureOfNormal([qx, qy], name="q")
    given = {"x": torch.zeros(4, 1), "y": torch.ones(4, 1)}
    with pytest.raises(NotImplementedError, match=re.escape("q(z|x,y) (Mixture of Normal) is not parametric")):
        q.get_params(given)
    with pytest.raises(NotImplementedError, match="has no closed-form entropy"):
        q.get_entropy(given)
    assert sorted(shapes(q.sample_each(given)).items()) == [(0, (4, 1)), (1, (4, 1))]
    torch.testing.assert_close(q.sample_mean(given), torch.full((4, 1), 0.5))  # (0 + 1) / 2
    torch.testing.assert_close(q.sample_variance(given), torch.full((4, 1), 2.75))  # (1 + 4) / 2 + 0.25


# ------------------------------------------------------------------ 6. the mixture posterior without its variable
def test_mixture_posterior_get_log_prob_without_the_hidden_variable() -> None:
    """Pixyz 0.3.3's ``posterior().get_log_prob({"x": x})`` (weights 0.3 / 0.7, components N(0, 1), N(2, 1)) is the
    (K, batch) table below, as ``log_prob().eval`` gives it; kizuna's refused ("p(z|x) needs z, but was given x").
    Given z, kizuna keeps each row's entry."""
    x = torch.tensor([[0.3], [2.0], [-1.0]])
    comps = [Normal(var=["x"], loc=torch.tensor([m]), scale=torch.tensor([1.0])) for m in (0.0, 2.0)]
    post = MixtureModel(comps, Categorical(var=["z"], probs=torch.tensor([0.3, 0.7]))).posterior()
    pixyz = torch.tensor([[-0.45450472831726074, -2.9036788940429688, -0.04184842109680176],
                          [-1.007206916809082, -0.05638110637664795, -3.1945507526397705]])
    pixyz_prob = torch.tensor([[0.6347622871398926, 0.05482116714119911, 0.9590151309967041],
                               [0.36523768305778503, 0.9451788663864136, 0.04098493233323097]])
    joint = torch.stack([torch.tensor([0.3, 0.7]).log()[k] - 0.5 * (x[:, 0] - m) ** 2 for k, m in enumerate((0., 2.))])
    closed = joint - torch.logsumexp(joint, 0)  # Bayes' rule, (K, batch)
    value = post.get_log_prob({"x": x})
    torch.testing.assert_close(value, pixyz)
    torch.testing.assert_close(value, closed)
    torch.testing.assert_close(value, post.log_prob().eval({"x": x}))
    torch.testing.assert_close(post.get_prob({"x": x}), pixyz_prob)
    torch.testing.assert_close(post.prob().eval({"x": x}), pixyz_prob)
    z = torch.eye(2)[[0, 1, 1]]
    torch.testing.assert_close(post.get_log_prob({"x": x, "z": z}), closed[[0, 1, 1], [0, 1, 2]])
    with pytest.raises(ValueError, match=re.escape("p(z|x) needs x, but was given nothing")):
        post.get_log_prob({})
