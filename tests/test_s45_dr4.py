"""Diff review 4 (stop 45): the unbatched-condition exemption, prob_text at construction, batch_n with sample_shape
beside an unrelated batch, sizes given as 0-d arrays, and ``sample``'s docstring on ``batch_n``.

* The exemption for Pixyz's unbatched condition vector (``z`` of ``(2,)`` into ``nn.Linear(2, 3)``) skipped the
  "one row of parameters per row of its inputs" check whenever every condition was 1-D, a batch of scalars ``t`` of
  ``(B,)`` included: a network that pooled or dropped its rows drew silently. Now the network is asked, on the error
  path only, whether it reads the conditions as one row.
* ``Distribution.__init__`` read ``self.prob_text`` on every construction (for the features_shape message): a
  subclass whose ``prob_text`` reads an attribute set after ``super().__init__()`` could not be built.
* A product given a one-row condition, ``batch_n``, ``sample_shape`` and an unrelated batched value refused
  ("batch_n=8 ... batch size 10"): the rows came from the unrelated value, not from ``batch_n``.
* Sizes given as 0-d integer numpy arrays (``np.load(...)["dim"]``) worked before stop 45 and were refused by the
  shared size check.
* ``sample``'s docstring said a batched value fixes the batch even where ``batch_n`` is given; ``batch_n`` wins.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Distribution, Normal
from kizuna.models.ladder import LadderVAE
from kizuna.modules import NN


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def shapes(d: dict) -> dict:
    return {k: tuple(v.shape) for k, v in d.items()}


# ------------------------------------------------------------------ 1. a batch of scalars is not one vector
class _Scalars(Normal):
    """``q(z|t)`` with ``t`` a batch of scalars ``(B,)``; the bug: ``forward`` pools its rows to one, or keeps 2."""

    def __init__(self, bug: str, read: str) -> None:
        super().__init__(var=["z"], cond_var=["t"], name="q", features_shape=[2])
        self.layer, self.bug, self.read = nn.Linear(1, 4), bug, read

    def forward(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, pre = self.layer(t[:, None] if self.read == "t[:, None]" else t.unsqueeze(-1)).chunk(2, -1)
        if self.bug == "pool":
            loc, pre = loc.mean(0, keepdim=True), pre.mean(0, keepdim=True)
        else:
            loc, pre = loc[:2], pre[:2]
        return {"loc": loc, "scale": F.softplus(pre) + 0.1}


@pytest.mark.parametrize("read", ["t[:, None]", "t.unsqueeze(-1)"])
@pytest.mark.parametrize("sample_shape", [(), (3,)])
@pytest.mark.parametrize(("bug", "found", "beside"), [("pool", 1, {"x": torch.randn(7, 3)}), ("two", 2, {})])
def test_a_network_that_pools_or_drops_the_rows_of_a_batch_of_scalars_is_refused(
        read: str, sample_shape: tuple, bug: str, found: int, beside: dict) -> None:
    """Stop 45 drew ``z`` of (7, 2) (the pooled row broadcast to x's rows) and (2, 2); 9e9d31f refused, as it does a
    ``t`` of (B, 1). (``t.unsqueeze(-1)`` reads a one-row ``t`` of (1, 6) as (1, 6, 1), one row of 6: not one row of
    parameters of the 1-D call's shape.)"""
    q = _Scalars(bug, read)
    want = _exactly(f"q(z|t): the parameters have batch size {found} but the conditioning values (t) have batch "
                    "size 6; forward must return one row of parameters per row of its inputs (if t is one vector "
                    "without a batch dimension, give it one: t.unsqueeze(0), or draw with validation off as Pixyz "
                    "does)")
    with pytest.raises(ValueError, match=want):
        q.sample({"t": torch.randn(6), **beside}, sample_shape=sample_shape)


# ------------------------------------------------------------------ 2. prob_text read only for a message
def test_a_subclass_whose_prob_text_reads_its_own_attribute_is_built() -> None:
    """Stop 45: "AttributeError: 'Q' object has no attribute 'prob_text'" at construction; 9e9d31f built it. The
    message for a bad features_shape is unchanged, and names the distribution even where its prob_text cannot be
    read yet."""

    class Q(Normal):
        def __init__(self, features_shape: object = (2,)) -> None:
            super().__init__(var=["z"], cond_var=["x"], features_shape=features_shape)
            self.label = "enc"

        @property
        def prob_text(self) -> str:
            return f"q_{self.label}(z|x)"

    q = Q()
    assert q.prob_text == "q_enc(z|x)" and q.features_shape == (2,)
    with pytest.raises(ValueError, match=_exactly("Q p(z|x): features_shape[0] must be an integer >= 0, got -1")):
        Q([-1])
    with pytest.raises(ValueError, match=_exactly(
            "Normal p(x): features_shape must be a sequence of sizes (the shape of one draw, e.g. [2] or (2,) for "
            "vectors of 2; [] for scalars), got 3 (int)")):
        Normal(var=["x"], loc=0.0, scale=1.0, features_shape=3)


# ------------------------------------------------------------------ 3. batch_n with sample_shape beside unrelated rows
def test_a_product_given_one_row_batch_n_and_an_unrelated_batch_draws_batch_n_rows_per_draw() -> None:
    """As ``test_a_product_given_one_row_draws_batch_n_rows_per_draw`` (test_s45_pixyz_api.py) with an unrelated
    5-row ``u`` beside: ``batch_n=4`` is the batch, as without ``sample_shape`` and for the single ``a``; it refused
    "a(x|c): batch_n=8 but the conditioning values (c) have batch size 10". The draws: x = c + the first 8 standard
    normals, w (or y = x + noise) the next 8."""
    a = Normal(var=["x"], cond_var=["c"], loc="c", scale=1.0)
    b = Normal(var=["y"], cond_var=["x"], loc="x", scale=1.0)
    e = Normal(var=["w"], loc=0.0, scale=1.0, features_shape=[1])
    c, u = torch.full((1, 1), 3.0), torch.randn(5, 1)
    torch.manual_seed(0)
    noise = torch.cat([torch.randn(8), torch.randn(8)])
    for d, second in ((a * e, "w"), (b * a, "y"), ((a * e).replace_var(w="ww"), "ww")):
        torch.manual_seed(0)
        out = d.sample({"c": c, "u": u}, batch_n=4, sample_shape=[2], return_all=False)
        assert shapes(out) == {"x": (2, 4, 1), second: (2, 4, 1)}
        torch.testing.assert_close(out["x"].flatten(), 3.0 + noise[:8])
        rest = out[second].flatten() - (out["x"].flatten() if second == "y" else 0)
        torch.testing.assert_close(rest, noise[8:])
    torch.manual_seed(0)  # the marginal of x: y alone, the same draws
    out = (b * a).marginalize_var("x").sample({"c": c, "u": u}, batch_n=4, sample_shape=[2], return_all=False)
    assert shapes(out) == {"y": (2, 4, 1)}
    torch.testing.assert_close(out["y"].flatten(), 3.0 + noise[:8] + noise[8:])


# ------------------------------------------------------------------ 4. sizes given as 0-d arrays
def test_sizes_given_as_zero_d_integer_arrays_are_taken_as_their_numbers() -> None:
    """``np.load(...)["dim"]`` is a 0-d array: 9e9d31f took it as a size (features_shape, NN's widths), stop 45 refused
    "features_shape[0] must be an integer >= 0, got array(2)". 0-d integer tensors and numpy integers are sizes too;
    floats and bools, 0-d or not, are not."""
    p = Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[np.array(2), torch.tensor(3), np.int64(4)])
    assert p.features_shape == (2, 3, 4) and all(type(s) is int for s in p.features_shape)
    torch.manual_seed(0)
    want = torch.randn(1, 2, 3, 4)
    torch.manual_seed(0)
    torch.testing.assert_close(p.sample()["x"], want)
    net = NN(in_dim=np.array(3), out_dim=np.array(2, dtype=np.uint8), hidden=[np.array(8), torch.tensor(4)])
    assert (net.in_dim, net.out_dim, net.hidden) == (3, 2, (8, 4))
    assert all(type(s) is int for s in (net.in_dim, net.out_dim, *net.hidden))
    assert LadderVAE(5, [np.array(4)], [np.array(8)]) is not None
    for bad, text in ((np.array(2.0), "2.0"), (np.array(True), "True"), (torch.tensor(2.0), "2.0"),
                      (torch.tensor(True), "True"), (np.True_, "np.True_"), (np.array(-1), "-1")):
        with pytest.raises(ValueError, match=_exactly(f"Normal p(x): features_shape[0] must be an integer >= 0, "
                                                      f"got {text}")):
            Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[bad])
    with pytest.raises(ValueError, match=_exactly("NN nn: in_dim must be an integer >= 1, got 3.0")):
        NN(in_dim=np.array(3.0))
    with pytest.raises(ValueError, match=_exactly("NN nn: hidden[0] must be an integer >= 1, got 0")):
        NN(hidden=[np.array(0)])


# ------------------------------------------------------------------ 5. sample's docstring on batch_n
def test_a_given_batch_n_is_the_batch_beside_unrelated_rows_as_documented() -> None:
    """The docstring said any batched value fixes the batch, also under an unrelated key; a given ``batch_n`` wins
    (``prior.sample({"x": x5}, batch_n=3)`` draws 3 rows), and it now says so."""
    doc = " ".join(Distribution.sample.__doc__.split())
    assert ("batch_n: the batch size. Given, it is the batch, whatever the rows of the values in ``x_dict`` under "
            "keys that are none of this distribution's inputs") in doc
    assert "Without it, the largest leading dimension among the values in ``x_dict``" in doc
    pz = Normal(var=["z"], loc=torch.tensor([1.0, -1.0]), scale=torch.tensor([2.0, 0.5]))
    x5 = {"x": torch.ones(5, 3)}
    for kw, lead in (({}, ()), ({"sample_shape": [2]}, (2,))):
        torch.manual_seed(0)
        want = torch.tensor([1.0, -1.0]) + torch.tensor([2.0, 0.5]) * torch.randn(*lead, 3, 2)
        torch.manual_seed(0)
        torch.testing.assert_close(pz.sample(x5, batch_n=3, return_all=False, **kw)["z"], want)
    assert pz.sample(x5, return_all=False)["z"].shape == (5, 2)  # without it: x's rows


def test_ddpm_keeps_a_features_shape_given_as_an_iterator():
    """The check read a generator of sizes to its end and the model then got an empty shape (seen by the DR4 fixer)."""
    from kizuna.distributions import DDPM, DiffusionReverse, DiffusionSchedule

    p = DDPM(DiffusionReverse(lambda x, t: x, DiffusionSchedule.linear(10)), iter([2]))
    assert p.features_shape == (2,) and p.prior.features_shape == (2,)
