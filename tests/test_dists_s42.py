"""Review of stop 42, the basic distribution classes (findings 1-4).

1. Parameters ``(B,)`` that ``forward`` computed, scored against data ``(B, 1)``: refused by name (each row's density
   was the sum over all ``B`` parameter rows); the legitimate readings around it keep their numbers.
2. `Concrete` accepts its own float32 draws under validation (the simplex within the value dtype's rounding, the
   helper `RelaxedCategorical` shares).
3. ``sample(sample_shape=3)`` is ``(3,)``, as `Expectation` reads it; a bad entry is named.
4. A float32 family scoring float64 data takes its Python-number constants exactly in float64; parameters computed by a
   network or given as tensors keep their dtype (as before stop 42: converting them cost 1.6-1.9x and gained nothing,
   review ``diffA.md`` finding 2), and a constant prior builds its float64 distribution once (finding 3).
5. The (B,)-parameters refusal names forward's output where the family declares ``features_shape=[1]`` (finding 6).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st
import torch
from torch import distributions as D
from torch import nn

from kizuna.distributions import (
    Bernoulli,
    Beta,
    Concrete,
    Gamma,
    Laplace,
    LogNormal,
    Normal,
    Poisson,
    RelaxedBernoulli,
    RelaxedCategorical,
    StudentT,
    validation,
)

F64 = torch.float64


# ------------------------------------------------------------- finding 1: (B,) parameters against (B, 1) data
class _Head(Normal):
    """p(y|x) = N(y; w.x + b, 1): a regression head whose forward squeezes its output to ``(B,)``."""

    def __init__(self, squeeze: bool = True, features_shape: tuple[int, ...] = ()) -> None:
        super().__init__(var=["y"], cond_var=["x"], name="p", features_shape=features_shape)
        self.net = nn.Linear(2, 1).double()
        self.squeeze = squeeze

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc = self.net(x)
        return {"loc": loc.squeeze(-1) if self.squeeze else loc, "scale": torch.ones_like(loc.squeeze(-1))
                if self.squeeze else torch.ones_like(loc)}


def _truth(p: _Head, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return D.Normal(p.net(x).squeeze(-1), 1.0).log_prob(y).detach()


ROWS_MESSAGE = ("p(y|x): y of shape (4, 1) against parameters of shape (4,) from forward(): read as (4,) draws of one "
                "row each, every draw would be scored against all 4 rows and the densities summed; parameters (4,) "
                "against data (4, 1): give both the same feature shape (squeeze the data, y.squeeze(-1), or keep the "
                "feature dimension in forward: no .squeeze(-1))")


@pytest.mark.parametrize("checks", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_forward_rows_against_data_of_one_feature_are_refused(checks: bool, grad: bool) -> None:
    torch.manual_seed(0)
    p, x, y = _Head(), torch.randn(4, 2, dtype=F64), torch.randn(4, 1, dtype=F64)
    with validation(checks), torch.set_grad_enabled(grad), pytest.raises(ValueError) as err:
        p.get_log_prob({"x": x, "y": y})  # (the no-grad path scores in blocks: the same check)
    assert str(err.value) == ROWS_MESSAGE


def test_forward_rows_against_draws_of_one_row_are_refused_naming_the_expansion() -> None:
    class Probs(Bernoulli):
        def __init__(self) -> None:
            super().__init__(var=["y"], cond_var=["x"], name="p")

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"probs": torch.sigmoid(x)}

    with pytest.raises(ValueError) as err:
        Probs().get_log_prob({"x": torch.randn(4, 3), "y": torch.ones(5, 1, 3)})
    assert str(err.value) == (
        "p(y|x): y of shape (5, 1, 3) against parameters of shape (4, 3) from forward(): read as (5,) draws of one "
        "row each, every draw would be scored against all 4 rows and the densities summed; to score each draw "
        "against every row, expand the draws to (5, 4, 3)")


def test_the_readings_around_it_keep_their_numbers() -> None:
    """Per row, draws of every row (``sample_shape``), one data row against every parameter row, Pixyz's ``(B, 1)``
    on both sides, and the expanded draws the message names: each against torch's own density."""
    torch.manual_seed(1)
    p, x = _Head(), torch.randn(4, 2, dtype=F64)
    loc = p.net(x).squeeze(-1).detach()
    y = torch.randn(4, dtype=F64)
    torch.testing.assert_close(p.get_log_prob({"x": x, "y": y}), _truth(p, x, y), rtol=1e-12, atol=0)
    draws = p.sample({"x": x}, sample_shape=(3,))["y"]  # (3, 4): draws of every row
    assert draws.shape == (3, 4)
    torch.testing.assert_close(p.get_log_prob({"x": x, "y": draws}),
                               D.Normal(loc, 1.0).log_prob(draws).sum(1), rtol=1e-12, atol=0)
    one = torch.randn(1, dtype=F64)  # one data row against every parameter row
    torch.testing.assert_close(p.get_log_prob({"x": x, "y": one}), D.Normal(loc, 1.0).log_prob(one),
                               rtol=1e-12, atol=0)
    column = torch.randn(4, 1, dtype=F64)  # Pixyz's (B, 1) parameters and data: one row against one row
    torch.testing.assert_close(_Head(squeeze=False).get_log_prob({"x": x, "y": column}).shape, torch.Size([4]))
    q = _Head(squeeze=False)
    torch.testing.assert_close(q.get_log_prob({"x": x, "y": column}),
                               D.Normal(q.net(x), 1.0).log_prob(column).squeeze(1).detach(), rtol=1e-12, atol=0)
    expanded = torch.randn(5, 1, dtype=F64).expand(5, 4)  # the message's remedy: each draw against every row
    torch.testing.assert_close(p.get_log_prob({"x": x, "y": expanded}),
                               D.Normal(loc, 1.0).log_prob(expanded).sum(1), rtol=1e-12, atol=0)


# ------------------------------------------------------------- finding 2: Concrete's own float32 draws
def test_concrete_scores_its_own_float32_draws_at_a_low_temperature_under_validation() -> None:
    """50 seeded batches of 128 draws at T = 0.1 (about 12% of them were refused: a float32 draw sums to 1 within
    1.5e-6, torch's simplex check allows 1e-6), each scored as torch's RelaxedOneHotCategorical scores it."""
    c = Concrete(var=["y"], logits=torch.zeros(3), temperature=0.1)
    reference = D.RelaxedOneHotCategorical(torch.tensor(0.1), logits=torch.zeros(3), validate_args=False)
    for seed in range(50):
        torch.manual_seed(seed)
        y = c.sample(batch_n=128)["y"]
        with validation(True):
            lp = c.get_log_prob({"y": y})
        torch.testing.assert_close(lp, reference.log_prob(y))


def test_the_simplex_tolerance_is_the_value_dtypes_and_shared_with_relaxed_categorical() -> None:
    c = Concrete(var=["y"], probs=torch.tensor([0.2, 0.3, 0.5]), temperature=0.5)
    r = RelaxedCategorical(var=["y"], probs=torch.tensor([0.2, 0.3, 0.5]), temperature=0.5)
    near = torch.tensor([[0.2, 0.3, 0.5 + 5e-6]])  # float32: within sqrt(eps) = 3.5e-4
    with validation(True):
        torch.testing.assert_close(c.get_log_prob({"y": near}),
                                   D.RelaxedOneHotCategorical(torch.tensor(0.5), torch.tensor([0.2, 0.3, 0.5]),
                                                              validate_args=False).log_prob(near))
        torch.testing.assert_close(r.get_log_prob({"y": near}), (near * torch.tensor([0.2, 0.3, 0.5]).log()).sum(1))
        for dist, message in ((c, r"p\(y\): value of y is outside the support \(Simplex\(\)\) of Concrete"),
                              (r, r"p\(y\): value of y must lie in Simplex\(\), found values outside")):
            with pytest.raises(ValueError, match=message):
                dist.get_log_prob({"y": torch.tensor([[0.2, 0.3, 0.51]])})
            with pytest.raises(ValueError, match=message):  # float64: torch's 1e-6
                dist.double().get_log_prob({"y": torch.tensor([[0.2, 0.3, 0.5 + 1e-5]], dtype=F64)})
            with pytest.raises(ValueError, match=message):
                dist.get_log_prob({"y": torch.tensor([[-0.1, 0.6, 0.5]], dtype=F64)})


# ------------------------------------------------------------- finding 3: sample_shape=3
def test_a_number_of_draws_is_a_sample_shape_of_one_dimension() -> None:
    p = Normal(var=["x"], loc=0.0, scale=1.0)
    torch.manual_seed(3)
    expected = p.sample(sample_shape=(3,))["x"]
    for n in (3, np.int64(3), torch.tensor(3)):
        torch.manual_seed(3)
        got = p.sample(sample_shape=n)["x"]
        assert got.shape == (3, 1)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert p.sample(batch_n=2, sample_shape=[2, np.int64(4)])["x"].shape == (2, 4, 2)


@pytest.mark.parametrize(("shape", "bad"), [((3.0,), "3.0"), (3.0, "3.0"), ("3", "'3'"), ((2, None), "None"),
                                            ((True,), "True")])
def test_a_sample_shape_that_is_not_integers_is_named(shape: object, bad: str) -> None:
    p = Normal(var=["x"], loc=0.0, scale=1.0)
    with pytest.raises(TypeError) as err:
        p.sample(sample_shape=shape)
    assert str(err.value) == (f"p(x): sample_shape must be a number of draws or a shape (a tuple of positive integer "
                              f"sizes), got {shape!r} ({bad} is not an integer)")
    with pytest.raises(ValueError, match=r"^p\(x\): sample_shape must hold positive sizes, got \(0,\)$"):
        p.sample(sample_shape=0)


# ------------------------------------------------------------- finding 4: float64 data, float32 family
NUMBERS = [  # (family built from Python numbers, float64 data, scipy's log-density per entry)
    (Normal(var=["x"], loc=0.1, scale=0.3, features_shape=[2]), [[0.1, 0.7]], st.norm(0.1, 0.3).logpdf),
    (Laplace(var=["x"], loc=0.1, scale=0.3, features_shape=[2]), [[0.1, 0.7]], st.laplace(0.1, 0.3).logpdf),
    (LogNormal(var=["x"], loc=0.1, scale=0.3, features_shape=[2]), [[0.3, 1.7]],
     st.lognorm(0.3, scale=np.exp(0.1)).logpdf),
    (StudentT(var=["x"], df=3.3, loc=0.1, scale=0.3, features_shape=[2]), [[0.1, 0.7]],
     st.t(3.3, 0.1, 0.3).logpdf),
    (Gamma(var=["x"], concentration=2.1, rate=0.3, features_shape=[2]), [[0.1, 0.7]],
     st.gamma(2.1, scale=1 / 0.3).logpdf),
    (Beta(var=["x"], concentration1=1.3, concentration0=0.7, features_shape=[2]), [[0.1, 0.7]],
     st.beta(1.3, 0.7).logpdf),
    (Poisson(var=["x"], rate=0.3, features_shape=[2]), [[0.0, 3.0]], st.poisson(0.3).logpmf),
    (Bernoulli(var=["x"], probs=0.3, features_shape=[2]), [[1.0, 0.0]], st.bernoulli(0.3).logpmf),
    (RelaxedBernoulli(var=["x"], probs=0.3, features_shape=[2]), [[1.0, 0.0]], st.bernoulli(0.3).logpmf),
]


@pytest.mark.parametrize(("p", "data", "reference"), NUMBERS, ids=[type(p).__name__ for p, _, _ in NUMBERS])
@pytest.mark.parametrize("grad", [True, False])
def test_numbers_are_taken_exactly_in_the_dtype_of_float64_data(p: Normal, data: list, reference: object,
                                                                 grad: bool) -> None:
    x = torch.tensor(data, dtype=F64)
    with torch.set_grad_enabled(grad):
        lp = p.get_log_prob({"x": x})
    assert lp.dtype == F64
    np.testing.assert_allclose(lp.numpy(), np.sum(reference(x.numpy())), rtol=1e-12)
    assert p.get_log_prob({"x": x.float()}).dtype == torch.float32  # float32 data: as before
    assert p.sample()["x"].dtype == torch.float32  # draws keep the parameters' dtype


def test_float32_parameters_from_inputs_keep_their_dtype_against_float64_data() -> None:
    """Parameters from a network are not converted (as before stop 42): Bernoulli's kernel scores the data in the
    network's float32, as torch does with the data cast to it; the gradient reaches the float32 weights. A parameter
    read from a variable keeps its float32 values, while the number beside it (rate=0.3) is exact in float64."""
    class Decoder(Bernoulli):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.net = nn.Linear(2, 3)

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"probs": torch.sigmoid(self.net(z))}

    torch.manual_seed(4)
    dec, z = Decoder(), torch.randn(5, 2)
    x = torch.rand(5, 3, dtype=F64)  # grey values in [0, 1]
    lp = dec.get_log_prob({"z": z, "x": x})
    expected = D.Bernoulli(probs=torch.sigmoid(dec.net(z)), validate_args=False).log_prob(x.float()).sum(1)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, expected.detach())
    with validation(True):
        assert dec.get_log_prob({"z": z, "x": x.round()}).dtype == torch.float32
    lp.sum().backward()
    assert dec.net.weight.grad is not None and dec.net.weight.grad.dtype == torch.float32
    g = Gamma(var=["x"], cond_var=["a"], concentration="a", rate=0.3)
    a = torch.tensor([[2.1, 0.7]])
    x64 = torch.tensor([[0.1, 0.7]], dtype=F64)
    got = g.get_log_prob({"a": a, "x": x64})
    assert got.dtype == F64  # the variable's float32 tensor as it is (lgamma of it in float32); the number 0.3 exact
    rate = torch.full((1, 2), 0.3, dtype=F64)
    torch.testing.assert_close(got, D.Gamma(a, rate, validate_args=False).log_prob(x64).sum(1), rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.numpy(), st.gamma(a.double().numpy(), scale=1 / 0.3).logpdf(
        [[0.1, 0.7]]).sum(1), rtol=1e-8)


def test_half_precision_data_against_a_float32_family_is_unchanged() -> None:
    p = Bernoulli(var=["x"], probs=0.3, features_shape=[2])
    lp = p.get_log_prob({"x": torch.tensor([[1.0, 0.0]], dtype=torch.float16)})
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, torch.tensor([np.log(0.3) + np.log(0.7)], dtype=torch.float32))


class _Loc(Normal):
    """p(x|z) = N(x; net(z), 1): a float32 network's location."""

    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Linear(2, 2)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.net(z), "scale": torch.ones(())}


def test_network_parameters_are_not_converted_to_the_datas_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Normal head against float64 data: its float32 parameters are used as they are (torch's arithmetic meets them
    with the data), the numbers torch gives for the float32 parameters, no float64 copy of them made."""
    torch.manual_seed(2)
    p, z, x = _Loc(), torch.randn(3, 2), torch.randn(3, 2, dtype=F64)
    seen = []
    build = p._build
    monkeypatch.setattr(p, "_build", lambda params, independent: seen.append(params) or build(params, independent))
    with validation(True):
        lp = p.get_log_prob({"z": z, "x": x})
    assert [v.dtype for v in seen[0].values()] == [torch.float32, torch.float32]
    torch.testing.assert_close(lp, D.Normal(p.net(z), 1.0).log_prob(x).sum(1).detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("checks", [True, False])
def test_a_constant_prior_scoring_float64_values_makes_its_exact_constants_once(
        checks: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A constant prior scoring float64 draws: the distribution (under validation) and the exact float64 constants
    are made at the first call and kept while the buffers are unchanged (they were made at every call: +70% per
    call); a changed buffer is seen; nothing made inside inference_mode is kept (autograd refuses its tensors)."""
    p = Normal(var=["z"], loc=0.1, scale=0.3, features_shape=[2])
    z = torch.tensor([[0.4, -0.2], [1.0, 0.3]], dtype=F64)
    builds, fills = [], []
    build, full = p._build, torch.full
    monkeypatch.setattr(p, "_build", lambda params, independent: builds.append(1) or build(params, independent))
    monkeypatch.setattr(torch, "full", lambda *a, **k: fills.append(k.get("dtype")) or full(*a, **k))
    reference = st.norm(0.1, 0.3).logpdf(z.numpy()).sum(1)
    with validation(checks):
        for _ in range(3):
            np.testing.assert_allclose(p.get_log_prob({"z": z}).numpy(), reference, rtol=1e-12)
        assert (len(builds), fills) == (1 if checks else 0, [F64, F64])
        with torch.no_grad():
            p.scale.fill_(2.0)  # no longer the number given: used as the buffer holds it
        np.testing.assert_allclose(p.get_log_prob({"z": z}).numpy(), st.norm(0.1, 2.0).logpdf(z.numpy()).sum(1),
                                   rtol=1e-6)
        with torch.no_grad():
            p.scale.fill_(0.3)
        with torch.inference_mode():
            p.get_log_prob({"z": z})
        draws = z.clone().requires_grad_()
        lp = p.get_log_prob({"z": draws})  # (a tensor kept from inference_mode could not be saved for backward)
        lp.sum().backward()
    torch.testing.assert_close(draws.grad, -(z - 0.1) / 0.3 ** 2, rtol=1e-12, atol=0)


# ------------------------------------------------------------- finding 5 (diffA 6): declared features_shape=[1]
def test_forward_rows_against_a_declared_single_feature_name_forwards_output() -> None:
    torch.manual_seed(0)
    p = _Head(features_shape=(1,))
    with pytest.raises(ValueError) as err:
        p.get_log_prob({"x": torch.randn(4, 2, dtype=F64), "y": torch.randn(4, 1, dtype=F64)})
    assert str(err.value) == (
        "p(y|x): y of shape (4, 1) against parameters of shape (4,) from forward(): read as (4,) draws of one row "
        "each, every draw would be scored against all 4 rows and the densities summed; forward() returned parameters "
        "of shape (4,), but p(y|x) declares features_shape=[1] (the data's (4, 1)): keep the feature dimension in "
        "forward (parameters of shape (4, 1), no .squeeze(-1))")
