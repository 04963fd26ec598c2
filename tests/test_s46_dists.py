"""Distribution fixes of review R1 (stop 46), checked against torch.distributions and closed forms: the analytic KL's
declared-features check of a constant side whose parameters broadcast to its features, Concrete / RelaxedCategorical
given logits of an empty batch, 16-bit logits of the categorical families under validation, and MixtureOfNormal's
number weights against float64 experts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D

from kizuna.distributions import (
    Beta,
    Categorical,
    Concrete,
    Gamma,
    Laplace,
    MixtureOfNormal,
    Multinomial,
    Normal,
    RelaxedCategorical,
    validation,
)
from kizuna.distributions.families import on_simplex
from kizuna.losses import KullbackLeibler

F64 = torch.float64


# ---------------------------------------------------------------------------------- 1. KL, declared features
def test_kl_constant_side_whose_first_parameter_is_narrower_than_its_features() -> None:
    """A prior with one mean and a scale per feature (``features_shape=[4]``) against a posterior over 4 features: the
    KL of the broadcast parameters (torch's), as with the parameters the other way round; the check read the first
    parameter only, ``(1,)``, and refused the pair naming that shape."""
    torch.manual_seed(0)
    q = Normal(var=["z"], cond_var=["m"], loc="m", scale=0.5, features_shape=[4], name="q")
    m = torch.randn(3, 4)
    ref = D.kl_divergence(D.Normal(m, 0.5), D.Normal(torch.zeros(4), torch.full((4,), 2.0))).sum(-1)
    for loc, scale in ((torch.zeros(1), torch.full((4,), 2.0)), (torch.zeros(4), torch.full((1,), 2.0))):
        prior = Normal(var=["z"], loc=loc, scale=scale, features_shape=[4], name="p")
        with validation(True):
            torch.testing.assert_close(KullbackLeibler(q, prior).eval({"m": m}), ref, rtol=1e-6, atol=0)
            torch.testing.assert_close(KullbackLeibler(prior, q).eval({"m": m}),
                                       D.kl_divergence(D.Normal(loc.expand(4), scale.expand(4)),
                                                       D.Normal(m, 0.5)).sum(-1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("family, names", [(Beta, ("concentration1", "concentration0")),
                                           (Gamma, ("concentration", "rate")), (Laplace, ("loc", "scale")),
                                           (Normal, ("loc", "scale"))])
def test_kl_constant_sides_broadcast_to_their_features(family, names) -> None:
    """Features (3, 2); the first parameter (1,) or (2,) and the second (3, 2), both sides constant: torch's KL of the
    broadcast parameters, summed over the features."""
    features = (3, 2)
    for first in ((1,), (2,)):
        given = {names[0]: torch.full(first, 2.0), names[1]: torch.linspace(1.5, 3.0, 6).reshape(features)}
        p = family(var=["x"], features_shape=list(features), name="p", **given)
        other = {names[0]: torch.full(features, 1.5), names[1]: torch.full(features, 2.5)}
        q = family(var=["x"], features_shape=list(features), name="q", **other)
        ref = D.kl_divergence(family.torch_class(**{k: v.expand(features) for k, v in given.items()}),
                              family.torch_class(**other)).sum()
        with validation(True):
            torch.testing.assert_close(KullbackLeibler(p, q).eval({}), ref.reshape(1), rtol=1e-6, atol=0)


def test_kl_declared_features_still_refuse_other_features_naming_the_broadcast_shape() -> None:
    """A posterior of 3 features a row against that prior over 4: refused, the prior's parameters named as (4,) per
    row (their broadcast shape; the first parameter alone said (1,))."""
    q = Normal(var=["z"], cond_var=["m"], loc="m", scale=0.5, name="q")
    prior = Normal(var=["z"], loc=torch.zeros(1), scale=torch.full((4,), 2.0), features_shape=[4], name="p")
    with validation(True), pytest.raises(ValueError) as err:
        KullbackLeibler(q, prior).eval({"m": torch.zeros(2, 3)})
    assert str(err.value) == ("KL[q(z|m)||p(z)]: p(z) is over features of shape (4,) (parameters (4,) per row), "
                              "but q(z|m)'s parameters have (3,) per row")


# ----------------------------------------------------------------------- 2. relaxed categoricals, empty batch
def test_relaxed_categoricals_given_logits_take_an_empty_batch() -> None:
    """Logits of 0 rows from a variable: draws (0, 3) and log-densities (0,), as with probs= and as torch's Categorical
    of those logits (torch's inner Categorical checked them with the process default and failed reshaping them,
    named "parameter shapes do not broadcast"), with the checks on and off; a non-empty batch still gives torch's."""
    torch.manual_seed(0)
    cases = [Concrete(var=["y"], cond_var=["c"], logits="c", temperature=0.5),
             RelaxedCategorical(var=["y"], cond_var=["c"], logits="c", temperature=0.5)]
    empty = torch.zeros(0, 3)
    for check in (True, False):
        with validation(check):
            for p in cases:
                assert p.sample({"c": empty})["y"].shape == (0, 3), p
                assert p.sample({"c": empty}, sample_shape=(2,))["y"].shape == (2, 0, 3), p
                assert p.get_log_prob({"c": empty, "y": torch.zeros(0, 3)}).shape == (0,), p
            assert cases[1].sample_mean({"c": empty}).shape == (0, 3)
            ref_empty = D.Categorical(logits=empty, validate_args=False)  # (torch's own check fails reshaping them)
            assert cases[1].get_entropy({"c": empty}).shape == ref_empty.entropy().shape == (0,)
            logits = torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.5, -0.5]])
            y = cases[0].sample({"c": logits})["y"]
            ref = D.RelaxedOneHotCategorical(torch.tensor(0.5), logits=logits, validate_args=False).log_prob(y)
            torch.testing.assert_close(cases[0].get_log_prob({"c": logits, "y": y}), ref)


# ---------------------------------------------------------------------------------- 3. 16-bit logits
_BF16_LOGITS = torch.tensor([[0.267578125, 1.34375, -1.28125, 0.064453125]], dtype=torch.bfloat16)  # softmax sums
# to 0.9978 in bfloat16 (torch's simplex check of the derived probabilities: a 1e-6 tolerance)
_F16_LOGITS = torch.tensor([[-0.2161865234375, 2.314453125, -4.9375, 3.185546875]], dtype=torch.float16)  # 0.9995


@pytest.mark.parametrize("logits", [_BF16_LOGITS, _F16_LOGITS], ids=["bfloat16", "float16"])
def test_categorical_families_take_16_bit_logits_under_validation(logits) -> None:
    """16-bit logits (which have no constraint but to define probabilities) are scored, drawn from and their entropy
    computed under validation, as torch with validate_args=False computes them; they were refused as "parameter
    'probs' ... must satisfy Simplex()" for the rounding of the probabilities derived from them."""
    torch.manual_seed(0)
    dtype = logits.dtype
    x = torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=dtype)
    ref = D.OneHotCategorical(logits=logits, validate_args=False)
    with validation(True):
        cat = Categorical(var=["x"], cond_var=["l"], logits="l", features_shape=[4])
        torch.testing.assert_close(cat.get_log_prob({"l": logits, "x": x}), ref.log_prob(x), rtol=0, atol=0)
        assert math.isclose(cat.get_log_prob({"l": logits, "x": x}).item(),
                            logits.double().log_softmax(-1)[0, 1].item(), abs_tol=1e-2)
        draw = cat.sample({"l": logits})["x"]
        assert draw.dtype == dtype and draw.shape == (1, 4) and draw.sum().item() == 1
        torch.testing.assert_close(cat.get_entropy({"l": logits}), ref.entropy(), rtol=0, atol=0)

        rel = RelaxedCategorical(var=["x"], cond_var=["l"], logits="l", features_shape=[4], temperature=0.5)
        torch.testing.assert_close(rel.get_log_prob({"l": logits, "x": x}), ref.log_prob(x), rtol=0, atol=0)
        torch.testing.assert_close(rel.get_entropy({"l": logits}), ref.entropy(), rtol=0, atol=0)
        torch.testing.assert_close(rel.sample_mean({"l": logits}), ref.mean, rtol=0, atol=0)
        soft = rel.sample({"l": logits})["x"]
        assert soft.dtype == dtype and on_simplex(soft)

        con = Concrete(var=["x"], cond_var=["l"], logits="l", features_shape=[4], temperature=0.5)
        soft = con.sample({"l": logits})["x"]
        assert soft.dtype == dtype and soft.shape == (1, 4)
        relaxed = D.RelaxedOneHotCategorical(torch.tensor(0.5, dtype=dtype), logits=logits, validate_args=False)
        y = torch.tensor([[0.25, 0.5, 0.125, 0.125]], dtype=dtype)
        torch.testing.assert_close(con.get_log_prob({"l": logits, "x": y}), relaxed.log_prob(y), rtol=0, atol=0)

        mult = Multinomial(var=["x"], cond_var=["l"], logits="l", features_shape=[4], total_count=3)
        counts = torch.tensor([[1.0, 2.0, 0.0, 0.0]], dtype=dtype)
        ref_mult = D.Multinomial(3, logits=logits, validate_args=False)
        torch.testing.assert_close(mult.get_log_prob({"l": logits, "x": counts}), ref_mult.log_prob(counts),
                                   rtol=0, atol=0)
        assert mult.sample({"l": logits})["x"].sum().item() == 3

        # logits that define no probabilities are refused, naming the logits; invalid probs= as before
        bad = logits.clone()
        bad[0, 1] = float("inf")
        with pytest.raises(FloatingPointError, match=r"^p\(x\|l\): parameter logits of Categorical is not finite$"):
            cat.get_log_prob({"l": bad, "x": x})
        with pytest.raises(FloatingPointError, match=r"parameter logits of RelaxedCategorical is not finite$"):
            rel.sample({"l": bad})
        probs = Categorical(var=["x"], cond_var=["l"], probs="l", features_shape=[4])
        with pytest.raises(ValueError, match=r"^p\(x\|l\): parameter 'probs' of Categorical must satisfy Simplex\(\); "
                                             r"got invalid values$"):
            probs.get_log_prob({"l": torch.tensor([[0.5, 0.7, -0.2, 0.0]], dtype=dtype), "x": x})


# --------------------------------------------------------------------------------- 4. mixture weights, float64
def _mixture(weights=(0.3, 0.7)):
    qa = Normal(var=["z"], cond_var=["a"], loc="a", scale=1.0, name="qa")
    qb = Normal(var=["z"], cond_var=["b"], loc="b", scale=2.0, name="qb")
    return MixtureOfNormal([qa, qb], weights=list(weights), name="q")


def test_mixture_number_weights_are_exact_against_float64_experts() -> None:
    """Weights 0.3 and 0.7 held in float32 mix float64 experts with the numbers themselves (they were float32's
    0.30000001192 and 0.69999998808): the mean, the variance and the log-density of the closed form in float64."""
    q = _mixture()
    a, b = torch.zeros(2, 1, dtype=F64), torch.ones(2, 1, dtype=F64)
    assert q.weights.dtype == torch.float32
    mean = q.sample_mean({"a": a, "b": b})
    assert mean.dtype == F64 and (mean - 0.7).abs().max().item() <= 1e-15
    variance = 0.3 * 1.0 + 0.7 * 4.0 + 0.3 * 0.7 ** 2 + 0.7 * 0.3 ** 2
    assert (q.sample_variance({"a": a, "b": b}) - variance).abs().max().item() <= 1e-15
    z = torch.tensor([[0.5], [-1.25]], dtype=F64)
    w = torch.tensor([0.3, 0.7], dtype=F64)
    one = torch.ones((), dtype=F64)
    ref = torch.logsumexp(torch.stack([w[0].log() + D.Normal(0 * one, one).log_prob(z),
                                       w[1].log() + D.Normal(one, 2 * one).log_prob(z)]), 0).squeeze(-1)
    torch.testing.assert_close(q.get_log_prob({"a": a, "b": b, "z": z}), ref, rtol=1e-15, atol=0)
    with torch.no_grad():  # weights the buffer no longer holds as given: its own values, cast up
        q.weights.copy_(torch.tensor([0.25, 0.75]))
    assert (q.sample_mean({"a": a, "b": b}) - 0.75).abs().max().item() <= 1e-15


def test_mixture_number_weights_unchanged_for_float32_experts() -> None:
    """float32 experts: the float32 weights as before, bit for bit."""
    q = _mixture()
    a, b = torch.zeros(2, 1), torch.ones(2, 1)
    w = torch.tensor([0.3, 0.7])
    logw = w.log() - torch.logsumexp(w.log(), 0)
    assert torch.equal(q.log_weights({"a": a, "b": b}, torch.float32)[1], logw)
    assert torch.equal(q.sample_mean({"a": a, "b": b}), (logw.exp().reshape(-1, 1, 1) * torch.stack([a, b])).sum(0))
