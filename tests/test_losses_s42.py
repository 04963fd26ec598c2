"""Stop 42's loss fixes (review ``losses.md`` findings 1-3).

1. `CrossEntropy` in closed form with a constant ``p`` declared without ``features_shape``: ``H[p]`` counted once per
   feature of the KL (it was counted once), against ``torch.distributions``; its Monte-Carlo form names the remedy.
2. `MMD` / `WassersteinDistance` refuse a side with trainable parameters but no reparameterised sampler (it got no
   gradient, silently), with the adversarial losses' check and message.
3. A per-row tensor constant inside an expectation over several draws per row is repeated with the draws, as a dict
   value read by `Parameter` is (it was an error).
"""

import pytest
import torch
import torch.distributions as TD
from torch import nn

from kizuna.distributions import Bernoulli, Normal
from kizuna.losses import (
    MMD,
    REINFORCE,
    AdversarialJensenShannon,
    CrossEntropy,
    Expectation,
    LogProb,
    Parameter,
    WassersteinDistance,
)

B, D = 3, 4


# ------------------------------------------------------------------ 1. CrossEntropy, a prior without features
def test_cross_entropy_normal_prior_without_features_counts_entropy_per_feature():
    x = torch.randn(B, D)
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=0.5, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p")  # no features_shape: broadcast over q's 4 features
    ce = CrossEntropy(prior, q)
    assert ce.method == "analytic"
    ref = (TD.Normal(0.0, 1.0).entropy() + TD.kl_divergence(TD.Normal(0.0, 1.0), TD.Normal(x, 0.5))).sum(-1)
    torch.testing.assert_close(ce.eval({"x": x}), ref)
    declared = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[D], name="p")
    torch.testing.assert_close(CrossEntropy(declared, q).eval({"x": x}), ref)
    # the other order (the entropy already per feature of the conditional side)
    ref_qp = (TD.Normal(x, 0.5).entropy() + TD.kl_divergence(TD.Normal(x, 0.5), TD.Normal(0.0, 1.0))).sum(-1)
    torch.testing.assert_close(CrossEntropy(q, prior).eval({"x": x}), ref_qp)


def test_cross_entropy_bernoulli_prior_without_features_counts_entropy_per_feature():
    logits = torch.randn(B, D)
    q = Bernoulli(var=["z"], cond_var=["l"], logits="l")
    prior = Bernoulli(var=["z"], probs=0.3)
    ref = (TD.Bernoulli(0.3).entropy()
           + TD.kl_divergence(TD.Bernoulli(torch.full((B, D), 0.3)), TD.Bernoulli(logits=logits))).sum(-1)
    torch.testing.assert_close(CrossEntropy(prior, q).eval({"l": logits}), ref)


def test_cross_entropy_one_feature_and_two_constants_unchanged():
    x = torch.randn(B)  # one feature per row: the entropy counted once
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=0.5)
    prior = Normal(var=["z"], loc=0.0, scale=1.0)
    ref = TD.Normal(0.0, 1.0).entropy() + TD.kl_divergence(TD.Normal(0.0, 1.0), TD.Normal(x, 0.5))
    torch.testing.assert_close(CrossEntropy(prior, q).eval({"x": x}), ref)
    other = Normal(var=["z"], loc=1.0, scale=2.0, features_shape=[D])  # two constants: one row
    ref2 = (TD.Normal(0.0, 1.0).entropy() + TD.kl_divergence(TD.Normal(0.0, 1.0), TD.Normal(1.0, 2.0))) * D
    torch.testing.assert_close(CrossEntropy(Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[D]), other).eval(),
                               ref2.reshape(1))


def test_cross_entropy_monte_carlo_prior_without_features_names_features_shape():
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=0.5, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p")
    ce = CrossEntropy(prior, q, analytic=False)
    with pytest.raises(ValueError, match=r"H\[p\(z\)\|\|q\(z\|x\)\]: the Monte-Carlo estimate draws p\(z\) one number "
                                         r"per row, since it declares no features_shape.*features_shape=\[D\]"):
        ce.eval({"x": torch.randn(B, D)})


# ------------------------------------------------------------------ 2. MMD / Wasserstein: draws without a gradient
class _Encoder(Bernoulli):
    """q(z|x): a Bernoulli with a network (no reparameterised sampler)."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Linear(1, 3)

    def forward(self, x):
        return {"logits": self.net(x)}


@pytest.mark.parametrize("loss", [MMD, WassersteinDistance])
def test_sample_distances_refuse_trainable_side_without_reparameterised_sampler(loss):
    q = _Encoder()
    prior = Bernoulli(var=["z"], probs=0.9, features_shape=[3], name="p")
    message = (f"{loss.__name__}: q(z|x) (_Encoder) has trainable parameters but no reparameterised sampler, so its "
               "draws carry no gradient and it would never train")
    for args in ((q, prior), (prior, q)):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
            loss(*args)
    # a constant Bernoulli (nothing to train) is accepted, and the adversarial losses refuse as before
    value = loss(prior, Bernoulli(var=["z"], probs=0.2, features_shape=[3])).eval({}, batch_n=5)
    assert torch.isfinite(value).all()
    d = Bernoulli(var=["t"], cond_var=["z"], logits="z")
    with pytest.raises(ValueError, match=r"AdversarialJensenShannon: q\(z\|x\) \(_Encoder\) has trainable parameters"):
        AdversarialJensenShannon(q, prior, d)


# ------------------------------------------------------------------ 3. per-row tensor constants over several draws
def _model():
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0)
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    return q, p


def _same_seed(loss, values, seed=5):
    torch.manual_seed(seed)
    return loss.eval(values)


@pytest.mark.parametrize("reduced", [False, True])
def test_per_row_constant_in_expectation_matches_parameter_over_draws(reduced):
    q, p = _model()
    x, w = torch.randn(4), torch.arange(1.0, 5.0)

    def f(weight):
        term = LogProb(p) * weight
        return term.mean() if reduced else term

    for n in (1, 3):
        as_constant = _same_seed(Expectation(q, f(w), sample_shape=(n,)), {"x": x})
        as_parameter = _same_seed(Expectation(q, f(Parameter("w")), sample_shape=(n,)), {"x": x, "w": w})
        torch.testing.assert_close(as_constant, as_parameter, rtol=0, atol=0)
        assert as_constant.shape == (() if reduced else (4,))
    # closed form with the draws at the means (z = x): log N(x; x, 1) * w per row
    value = Expectation(q, f(w), sample_shape=(3,)).eval({"x": x}, sample_mean=True)
    ref = -0.5 * torch.log(torch.tensor(2 * torch.pi)) * w
    torch.testing.assert_close(value, ref.mean() if reduced else ref)


def test_per_row_constant_gradient_in_reinforce_and_nested_expectation():
    q, p = _model()
    x = torch.randn(4)
    w = nn.Parameter(torch.arange(1.0, 5.0))
    w_dict = torch.arange(1.0, 5.0).requires_grad_()
    for make in (lambda weight: REINFORCE(q, LogProb(p) * weight, sample_shape=(3,)),
                 lambda weight: Expectation(q, Expectation(q, LogProb(p) * weight, sample_shape=(2,)),
                                            sample_shape=(3,))):
        w.grad = w_dict.grad = None
        as_constant = _same_seed(make(w), {"x": x})
        as_parameter = _same_seed(make(Parameter("w")), {"x": x, "w": w_dict})
        torch.testing.assert_close(as_constant, as_parameter, rtol=0, atol=0)
        as_constant.sum().backward()
        as_parameter.sum().backward()
        torch.testing.assert_close(w.grad, w_dict.grad)
        assert w.grad.abs().sum() > 0


def test_per_feature_constant_in_expectation_stays_per_feature():
    q, p = _model()
    x, w = torch.randn(4, 2), torch.tensor([1.0, 3.0])  # leading size 2, not the batch's 4: a per-feature weight
    value = Expectation(q, LogProb(p, sum_features=False) * w, sample_shape=(3,)).eval({"x": x}, sample_mean=True)
    ref = (-0.5 * torch.log(torch.tensor(2 * torch.pi)) * w).expand(4, 2)
    torch.testing.assert_close(value, ref)


def test_constant_of_other_rows_names_parameter_remedy():
    q, p = _model()
    loss = Expectation(q, LogProb(p) * torch.ones(5), sample_shape=(3,))
    with pytest.raises(ValueError, match=r"shapes \(12,\) and \(5,\), which do not combine row by row .*a tensor "
                                         r"constant is laid out with the rows only where its leading size is the "
                                         r"batch's.*Parameter\(name\)"):
        loss.eval({"x": torch.randn(4)})
