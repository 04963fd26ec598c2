"""Stop 42's loss fixes (review ``losses.md`` findings 1-3).

1. `CrossEntropy` in closed form with a constant ``p`` declared without ``features_shape``: ``H[p]`` counted once per
   feature of the KL (it was counted once), against ``torch.distributions``; its Monte-Carlo form names the remedy.
2. `MMD` / `WassersteinDistance` refuse a side with trainable parameters but no reparameterised sampler (it got no
   gradient, silently), with the adversarial losses' check and message.
3. A per-row tensor constant inside an expectation over several draws per row is repeated with the draws, as a dict
   value read by `Parameter` is (it was an error).

Review ``diffA.md`` of those fixes: a ``(D,)`` per-feature constant with ``D`` equal to the batch size keeps
broadcasting over the features (it was re-laid out as per-row, and crashed, finding 1); MMD / Wasserstein refuse only
where no side carries a gradient, and warn where another side does (finding 4); the ``features_shape`` message is
reached with ``sample_shape`` too (finding 5).
"""

import math

import pytest
import torch
import torch.distributions as TD
from torch import nn

from kizuna.distributions import Bernoulli, Categorical, MixtureModel, Normal
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
from kizuna.models import Model

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


@pytest.mark.parametrize("sample_shape", [(), (5,)])
def test_cross_entropy_monte_carlo_prior_without_features_names_features_shape(sample_shape):
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=0.5, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p")
    ce = CrossEntropy(prior, q, analytic=False, sample_shape=sample_shape)
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


class _NormalEncoder(Normal):
    """q(z|x): a reparameterised Normal with a network."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Linear(3, 4)

    def forward(self, x):
        h = self.net(x)
        return {"loc": h[:, :2], "scale": nn.functional.softplus(h[:, 2:]) + 0.1}


def _mixture(learnable):
    """p(z): two Normal components at -1 and 1 (their locations learnable or constant)."""
    locs = [torch.full((2,), s) for s in (-1.0, 1.0)]
    comps = [Normal(var=["z"], loc=nn.Parameter(m) if learnable else m, scale=1.0) for m in locs]
    return MixtureModel(comps, Categorical(var=["k"], probs=torch.tensor([0.5, 0.5])), name="p")


@pytest.mark.parametrize("loss", [MMD, WassersteinDistance])
def test_sample_distances_warn_for_a_side_trained_elsewhere_and_pull_the_other(loss):
    """An InfoVAE-style term with a learnable mixture prior (trained by another term's log p(z)): built, with a warning
    naming the prior, and the encoder's gradient that of the same term against the constant mixture."""
    torch.manual_seed(0)
    enc, x = _NormalEncoder(), torch.randn(8, 3)
    message = (f"{loss.__name__}: p(z) (Mixture Model) has trainable parameters but no reparameterised sampler, so "
               "this term gives it no gradient (its draws carry none); the term trains q(z|x) only")
    with pytest.warns(UserWarning, match=message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        term = loss(enc, _mixture(True))
    grads = []
    for made in (term, loss(enc, _mixture(False))):
        enc.zero_grad()
        torch.manual_seed(1)
        value = made.eval({"x": x}).sum()
        value.backward()
        grads.append((value.detach(), enc.net.weight.grad.clone()))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    assert grads[0][1].abs().sum() > 0
    # no side that carries a gradient: refused, as before; the adversarial losses refuse any such side
    with pytest.raises(ValueError, match=r"has trainable parameters but no reparameterised sampler, so its draws carry "
                                         r"no gradient and it would never train"):
        loss(_Encoder(), _mixture(True))
    with pytest.raises(ValueError, match=r"AdversarialJensenShannon: p\(z\) \(Mixture Model\) has trainable"):
        AdversarialJensenShannon(enc, _mixture(True), Bernoulli(var=["t"], cond_var=["z"], logits="z"))


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


def test_per_row_table_built_of_constants_and_parameters_is_repeated_for_the_draws():
    """``Parameter("beta") * w * LogProb(p)``: the per-row table ``beta * w`` is not a bare constant; the first fix
    repeated only a bare one, so this order was refused where ``LogProb(p) * Parameter("beta") * w`` worked."""
    q, p = _model()
    x, w, beta = torch.randn(4), torch.arange(1.0, 5.0), torch.tensor(0.5)
    values = {"x": x, "beta": beta}
    by_dict = _same_seed(Expectation(q, LogProb(p) * Parameter("beta") * Parameter("w"), sample_shape=(3,)),
                         {**values, "w": w})
    for sign, f in ((1.0, Parameter("beta") * w * LogProb(p)), (-1.0, -(w * Parameter("beta")) * LogProb(p))):
        table_first = _same_seed(Expectation(q, f, sample_shape=(3,)), values)
        torch.testing.assert_close(table_first, sign * by_dict, rtol=0, atol=0)


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


# ------------------------------------------------------------------ diffA 1: a (D,) constant with D == batch size
def _weighted(w, make):
    q, p = _model()
    return make(q, p, w)


WEIGHTED = {  # a per-feature weight w of shape (D,) (or (1, D), broadcast by hand), inside draws of q
    "expectation": lambda q, p, w: Expectation(q, LogProb(p, sum_features=False) * w, sample_shape=(5,)),
    "summed": lambda q, p, w: Expectation(q, (LogProb(p, sum_features=False) * w).sum(), sample_shape=(5,)),
    "reinforce": lambda q, p, w: REINFORCE(q, LogProb(p, sum_features=False) * w, sample_shape=(5,)),
    "added": lambda q, p, w: Expectation(q, LogProb(p, sum_features=False) + w, sample_shape=(5,)),
}


@pytest.mark.parametrize("batch", [3, 4])
@pytest.mark.parametrize("kind", sorted(WEIGHTED))
def test_per_feature_constant_keeps_broadcasting_when_features_equal_batch(kind, batch):
    """D = 4 features: at B = 4 the weight was read as one value per row and re-laid out for the draws (a crash);
    it broadcasts over the features at every batch size, as the (1, D) weight broadcast by hand does."""
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x = torch.randn(batch, 4)
    got = _same_seed(_weighted(w, WEIGHTED[kind]), {"x": x})
    by_hand = _same_seed(_weighted(w[None], WEIGHTED[kind]), {"x": x})
    torch.testing.assert_close(got, by_hand, rtol=0, atol=0)
    if kind == "expectation":  # closed form with the draws at the means (z = x): log N(x; x, 1) * w per feature
        value = _weighted(w, WEIGHTED[kind]).eval({"x": x}, sample_mean=True)
        torch.testing.assert_close(value, (-0.5 * math.log(2 * math.pi) * w).expand(batch, 4))


@pytest.mark.parametrize("batch", [3, 4])
def test_per_row_constant_with_batch_size_features_matches_parameter(batch):
    """The per-row reading where the weight does not broadcast over the features: w of (B,) against log p per row."""
    q, p = _model()
    x, w = torch.randn(batch, 4), torch.arange(1.0, batch + 1)
    as_constant = _same_seed(Expectation(q, LogProb(p) * w, sample_shape=(5,)), {"x": x})
    as_parameter = _same_seed(Expectation(q, LogProb(p) * Parameter("w"), sample_shape=(5,)), {"x": x, "w": w})
    torch.testing.assert_close(as_constant, as_parameter, rtol=0, atol=0)
    assert as_constant.shape == (batch,)


class _LinearEncoder(Normal):
    """q(z|x) = N(z; net(x), 1), four features."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Linear(4, 4)

    def forward(self, x):
        return {"loc": self.net(x), "scale": torch.ones(())}


def test_fit_whose_last_batch_has_as_many_rows_as_features():
    """10 rows in batches of 6: the last batch has 4 rows, D = 4 (it crashed there); the weights trained equal those
    of the (1, D) weight broadcast by hand."""
    trained = []
    for w in (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([[1.0, 2.0, 3.0, 4.0]])):
        torch.manual_seed(0)
        enc = _LinearEncoder()
        p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, name="p")
        loss = -Expectation(enc, LogProb(p, sum_features=False) * w, sample_shape=(5,)).mean()
        Model(loss, distributions=[enc]).fit({"x": torch.randn(10, 4)}, epochs=1, batch_size=6, quiet=True, seed=0)
        trained.append(enc.net.weight.detach().clone())
    torch.testing.assert_close(trained[0], trained[1], rtol=0, atol=0)
