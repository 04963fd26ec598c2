"""Review F of stop 45, the core distributions (findings 1-3).

1. A constant given as a Python number is the number itself in the dtype of the tensors it meets, whatever the
   keyword order (``Normal(scale=0.1, loc=<float64>)`` held float32's 0.10000000149; a relaxed family's explicit
   temperature was always float32), for draws, moments and entropies; in a closed-form KL a prior given as numbers
   meets a float64 posterior with the exact numbers. References: torch.distributions in float64 with the numbers.
2. `Concrete`'s own float32 draws at a low temperature have a finite density (entries that rounded to exactly 0
   scored NaN): draws are raised to ``finfo.tiny``, scored as float64 scores the same draws; a value with an entry
   exactly 0 is refused under validation by name.
3. A constant distribution given values of zero rows draws zero rows (it drew one), and a product over an empty batch
   of a condition draws an empty batch; no batch information at all still draws one row.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from kizuna.distributions import (
    Bernoulli,
    Beta,
    BinaryConcrete,
    Categorical,
    Concrete,
    Gamma,
    Laplace,
    Normal,
    RelaxedBernoulli,
    RelaxedCategorical,
    StudentT,
    validation,
)
from kizuna.losses import KullbackLeibler

F64 = torch.float64


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# ------------------------------------------------------------- finding 1: numbers in the tensors' dtype
# (family, the number's keyword and value, the tensor keywords, torch's family, whether draws are pathwise)
_ORDER_CASES = [
    (Normal, ("scale", 0.1), {"loc": _t([1.0, 2.0])}, D.Normal, True),
    (Laplace, ("scale", 0.3), {"loc": _t([1.0, -2.0])}, D.Laplace, True),
    (StudentT, ("df", 3.3), {"loc": _t([0.5, 2.0]), "scale": _t([0.7, 1.1])}, D.StudentT, True),
    (Gamma, ("rate", 1.7), {"concentration": _t([0.6, 2.5])}, D.Gamma, True),
    (Beta, ("concentration1", 0.7), {"concentration0": _t([1.3, 2.9])}, D.Beta, True),
    (BinaryConcrete, ("temperature", 0.7), {"probs": _t([0.2, 0.5, 0.9])}, D.RelaxedBernoulli, True),
    (Concrete, ("temperature", 0.7), {"probs": _t([0.2, 0.3, 0.5])}, D.RelaxedOneHotCategorical, True),
    (RelaxedBernoulli, ("temperature", 0.7), {"probs": _t([0.2, 0.5, 0.9])}, D.RelaxedBernoulli, True),
    (RelaxedCategorical, ("temperature", 0.7), {"probs": _t([0.2, 0.3, 0.5])}, D.RelaxedOneHotCategorical, True),
]


@pytest.mark.parametrize("cls,number,tensors,torch_cls,_", _ORDER_CASES, ids=[c[0].__name__ for c in _ORDER_CASES])
def test_a_number_is_exact_in_the_tensors_dtype_whatever_the_keyword_order(cls, number, tensors, torch_cls, _):
    key, value = number
    reference_params = {key: torch.tensor(value, dtype=F64), **{k: v.unsqueeze(0).expand(4, *v.shape)
                                                                for k, v in tensors.items()}}
    reference = torch_cls(**reference_params)
    for first in (True, False):
        params = {key: value, **tensors} if first else {**tensors, key: value}
        p = cls(var=["x"], **params)
        got = p.get_params({})
        assert all(v.dtype == F64 for v in got.values()), (first, {k: v.dtype for k, v in got.items()})
        assert float(got[key].flatten()[0]) == value  # the number, not float32's
        torch.manual_seed(5)
        draws = p.sample(batch_n=4, reparam=True)["x"]
        torch.manual_seed(5)
        torch.testing.assert_close(draws, reference.rsample(), rtol=0, atol=0)  # torch's draws, the same seed
        if cls not in (BinaryConcrete, Concrete):  # (no closed-form moments: a TransformedDistribution)
            moment = p.sample_variance()
            assert moment.dtype == F64
            want = (D.Bernoulli(probs=tensors["probs"]).variance if cls is RelaxedBernoulli else
                    D.OneHotCategorical(probs=tensors["probs"]).variance if cls is RelaxedCategorical else
                    reference.variance[:1])
            torch.testing.assert_close(moment.reshape(want.shape), want, rtol=1e-15, atol=0)
            entropy = p.get_entropy()
            want = (D.Bernoulli(probs=tensors["probs"]).entropy().sum() if cls is RelaxedBernoulli else
                    D.OneHotCategorical(probs=tensors["probs"]).entropy() if cls is RelaxedCategorical else
                    reference.entropy()[0].sum())
            torch.testing.assert_close(entropy, want.reshape(1), rtol=1e-15, atol=0)


def test_normal_entropy_and_variance_of_a_number_first_against_the_closed_form() -> None:
    """The review's case: ``Normal(scale=0.1, loc=<float64>)``'s variance was float32 (off by 9e-10), its entropy off
    by 9.5e-8."""
    p = Normal(var=["x"], scale=0.1, loc=_t([1.0, 2.0]))
    variance = p.sample_variance()
    assert variance.dtype == F64
    torch.testing.assert_close(variance, torch.full((1, 2), 0.1 ** 2, dtype=F64), rtol=1e-15, atol=0)
    torch.testing.assert_close(p.get_entropy().item(), 2 * (0.5 + 0.5 * math.log(2 * math.pi) + math.log(0.1)),
                               rtol=1e-15, atol=0)


@pytest.mark.parametrize("prior_first", [False, True])
def test_a_prior_given_as_numbers_meets_a_float64_posterior_exactly_in_the_analytic_kl(prior_first) -> None:
    """KL[q||p] and KL[p||q] of a float64 posterior and a prior given as numbers (float32 buffers): torch's
    kl_divergence in float64 with the numbers (relative error was 3.1e-8: float32's 0.1)."""
    torch.manual_seed(0)
    m, s = torch.randn(4, 3, dtype=F64), torch.rand(4, 3, dtype=F64) + 0.3
    q = Normal(var=["z"], cond_var=["m", "s"], loc="m", scale="s", name="q")
    p = Normal(var=["z"], loc=0.0, scale=0.1, features_shape=[3])
    exact_p, exact_q = D.Normal(torch.zeros((), dtype=F64), torch.tensor(0.1, dtype=F64)), D.Normal(m, s)
    pair, reference = ((p, q), D.kl_divergence(exact_p, exact_q)) if prior_first else \
        ((q, p), D.kl_divergence(exact_q, exact_p))
    kl = KullbackLeibler(*pair).eval({"m": m, "s": s})
    assert kl.dtype == F64
    torch.testing.assert_close(kl, reference.sum(-1), rtol=1e-14, atol=0)
    # through torch's registry (Gamma has no kernel of its own), a number in the posterior's other parameter too
    c = torch.rand(4, 3, dtype=F64) + 0.5
    qg = Gamma(var=["z"], cond_var=["c"], concentration="c", rate=0.3, name="q")
    pg = Gamma(var=["z"], concentration=2.0, rate=0.7, features_shape=[3])
    kl = KullbackLeibler(qg, pg).eval({"c": c})
    reference = D.kl_divergence(D.Gamma(c, torch.tensor(0.3, dtype=F64)),
                                D.Gamma(torch.tensor(2.0, dtype=F64), torch.tensor(0.7, dtype=F64)))
    torch.testing.assert_close(kl, reference.sum(-1), rtol=1e-14, atol=0)


# ------------------------------------------------------------- finding 2: Concrete's float32 draws
def test_concrete_scores_its_own_float32_draws_at_a_low_temperature_finitely() -> None:
    """2,000 float32 draws at temperature 0.05 (255 had an entry rounded to exactly 0 and scored NaN, under validation
    too): every one scored finitely, as float64 scores the same draws; the draws are torch's, raised to finfo.tiny."""
    logits = torch.tensor([0.3, -1.0, 2.0])
    p = Concrete(var=["x"], temperature=0.05, logits=logits)
    torch.manual_seed(0)
    x = p.sample(batch_n=2000)["x"]
    torch.manual_seed(0)
    raw = D.RelaxedOneHotCategorical(torch.tensor(0.05), logits=logits.expand(2000, 3)).sample()
    tiny = torch.finfo(torch.float32).tiny
    assert bool((raw == 0).any())  # torch's own draws do round to a vertex here
    torch.testing.assert_close(x, raw.clamp_min(tiny), rtol=0, atol=0)
    reference = D.RelaxedOneHotCategorical(torch.tensor(0.05, dtype=F64), logits=logits.double(),
                                           validate_args=False).log_prob(x.double())
    assert bool(torch.isfinite(reference).all())
    for checked in (True, False):
        with validation(checked):
            lp = p.get_log_prob({"x": x})
        assert bool(torch.isfinite(lp).all())
        torch.testing.assert_close(lp.double(), reference, rtol=2e-6, atol=1e-4)
    # RelaxedCategorical draws the same way; BinaryConcrete's draws are clamped by torch (finite too)
    torch.manual_seed(0)
    assert bool((RelaxedCategorical(var=["x"], temperature=0.05, logits=logits).sample(batch_n=2000)["x"] > 0).all())
    b = BinaryConcrete(var=["x"], temperature=0.05, logits=logits)
    torch.manual_seed(0)
    with validation(True):
        assert bool(torch.isfinite(b.get_log_prob(b.sample(batch_n=2000))).all())


def test_concrete_refuses_a_value_with_an_entry_exactly_zero_under_validation() -> None:
    p = Concrete(var=["y"], temperature=0.5, probs=torch.tensor([0.2, 0.3, 0.5]))
    values = torch.tensor([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])
    with validation(True), pytest.raises(ValueError, match=(
            r"^p\(y\): value of y has an entry exactly 0 \(row 1\): the Concrete density is defined on the open "
            r"simplex only \(NaN at a vertex or a face; the family's own draws have none, unless a category has "
            r"probability 0\); score one-hot or hard values with RelaxedCategorical \(the categorical likelihood\), "
            r"or clamp them to torch.finfo\(torch.float32\).tiny$")):
        p.get_log_prob({"y": values})
    with validation(True), pytest.raises(ValueError, match=r"has an entry exactly 0 \(index \(2, 0\)\)"):
        p.get_log_prob({"y": values[[0, 0, 1]].unsqueeze(1)})  # three draws of one row each, the third at a vertex
    with validation(False):  # unchecked: torch's NaN (documented)
        assert bool(torch.isnan(p.get_log_prob({"y": values})[1]))


# ------------------------------------------------------------- finding 3: zero rows
_CONSTANTS = [
    ("N(0,1) numbers", lambda: Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2]), True),
    ("N(0.5,1) numbers", lambda: Normal(var=["z"], loc=0.5, scale=1.0, features_shape=[2]), True),
    ("Normal tensors", lambda: Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2)), True),
    ("Categorical", lambda: Categorical(var=["z"], probs=torch.tensor([0.3, 0.7])), False),
    ("Bernoulli", lambda: Bernoulli(var=["z"], probs=torch.tensor([0.3, 0.7])), False),
    ("RelaxedCategorical", lambda: RelaxedCategorical(var=["z"], probs=torch.tensor([0.3, 0.7])), True),
]


@pytest.mark.parametrize("make,pathwise", [c[1:] for c in _CONSTANTS], ids=[c[0] for c in _CONSTANTS])
def test_a_constant_distribution_draws_zero_rows_for_values_of_zero_rows(make, pathwise) -> None:
    p = make()
    for reparam in (False, True) if pathwise else (False,):
        for checked in (False, True):
            with validation(checked):
                assert p.sample({"y": torch.zeros(0, 3)}, reparam=reparam)["z"].shape == (0, 2)
                assert p.sample({"y": torch.zeros(3, 3)}, reparam=reparam)["z"].shape == (3, 2)
                assert p.sample({}, reparam=reparam)["z"].shape == (1, 2)  # no batch at all: one row
    assert p.sample({"y": torch.zeros(0, 3)}, sample_mean=True)["z"].shape == (0, 2)


def test_a_product_over_an_empty_batch_of_a_condition_draws_an_empty_batch() -> None:
    """p(x|z,c)p(z) over c of 0 rows failed with "the parameters have batch size 0 but batch_n=1"."""
    pz = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2])
    px = Normal(var=["x"], cond_var=["z", "c"], loc="z", scale="c")
    joint = px * pz
    for rows in (3, 0):
        out = joint.sample({"c": torch.ones(rows, 2)})
        assert out["z"].shape == out["x"].shape == (rows, 2)
        lp = joint.get_log_prob(out)
        assert lp.shape == (rows,)
        reference = D.Normal(out["z"], 1.0).log_prob(out["x"]).sum(-1) + D.Normal(0.0, 1.0).log_prob(out["z"]).sum(-1)
        torch.testing.assert_close(lp, reference)
