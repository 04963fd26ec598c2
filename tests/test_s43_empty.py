"""Empty batches (review O, stop 43): a mixture with a conditional prior, the closed-form KL from a constant
MultivariateNormal to one from a network, and Multinomial's inner torch distributions (which followed torch's
process-wide validation setting instead of kizuna's). Non-empty batches are checked against torch.distributions,
empty ones for the exact shapes of the non-empty results with the batch dimension 0."""

from __future__ import annotations

import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

import kizuna.distributions as K
from kizuna.distributions import validation
from kizuna.losses import KullbackLeibler


def _net(family, make, features=(3,), var="x", **static):
    """``family`` over ``var`` (``features``) with its parameters ``make(lin(c))`` from a linear layer of ``c``
    (2 entries)."""
    class Net(family):
        def __init__(self) -> None:
            super().__init__(var=[var], cond_var=["c"], features_shape=list(features), **static)
            self.lin = nn.Linear(2, features[-1])

        def forward(self, c):
            return make(self.lin(c))

    torch.manual_seed(0)
    return Net()


def _normal_params(h):
    return {"loc": h, "scale": F.softplus(h) + 0.2}


# ------------------------------------------------------------------------------------- mixture, conditional prior
def _mixture():
    comps = [_net(K.Normal, _normal_params) for _ in range(2)]
    comps[1].lin.bias.data += 1.0
    prior = _net(K.Categorical, lambda h: {"logits": h}, features=(2,), var="z")
    return K.MixtureModel(comps, prior), comps, prior


def _mixture_results(mm, b):
    torch.manual_seed(1)
    c, x = torch.randn(b, 2), torch.randn(b, 3)
    z = torch.eye(2)[torch.arange(b) % 2]
    post = mm.posterior()
    given = {"x": x, "c": c}
    return {
        "log_prob": mm.get_log_prob(given),
        "return_hidden": mm.get_log_prob(given, return_hidden=True),
        "joint": mm.joint_log_prob(given),
        "log_prior": mm.log_prior({"c": c}),
        "sample": mm.sample({"c": c})["x"],
        "sample_hidden": mm.sample({"c": c}, return_hidden=True)["z"],
        "sample_mean": mm.sample_mean({"c": c}),
        "post_log_prob": post.get_log_prob({**given, "z": z}),
        "post_every": post.log_prob_every_state(given),
        "post_prob": post.prob().eval(given),
        "post_sample": post.sample(given)["z"],
        "post_probs": post.get_params(given)["probs"],
        "post_entropy": post.get_entropy(given),
    }, (c, x, z)


# the batch dimension of each result (Pixyz's (K, batch) layouts have it last)
_BATCH_DIM = {"return_hidden": 1, "post_every": 1, "post_prob": 1}


def test_a_mixture_with_a_conditional_prior_scores_and_infers_an_empty_batch():
    mm, comps, prior = _mixture()
    full, (c, x, z) = _mixture_results(mm, 3)
    # the numbers of the non-empty batch against torch
    with torch.no_grad():
        loc = torch.stack([d.lin(c) for d in comps], 1)
        mix = D.MixtureSameFamily(D.Categorical(logits=prior.lin(c)),
                                  D.Independent(D.Normal(loc, F.softplus(loc) + 0.2), 1))
        torch.testing.assert_close(full["log_prob"], mix.log_prob(x))
        comp_lp = mix.component_distribution.log_prob(x.unsqueeze(1))
        joint = mix.mixture_distribution.logits + comp_lp
        post_logits = joint - joint.logsumexp(-1, keepdim=True)
        torch.testing.assert_close(full["post_probs"], post_logits.exp())
        torch.testing.assert_close(full["post_log_prob"], D.OneHotCategorical(logits=post_logits).log_prob(z))
    # the empty batch: the same results with no rows
    empty, _ = _mixture_results(mm, 0)
    for key, value in full.items():
        shape = list(value.shape)
        shape[_BATCH_DIM.get(key, 0)] = 0
        assert tuple(empty[key].shape) == tuple(shape), key
        assert empty[key].dtype == value.dtype, key


# ---------------------------------------------------------------------------------------------- KL, empty batch
def _positive(h):
    return F.softplus(h) + 0.5


# family, its parameters from a layer's output h, torch's class, whether the features are its event
_KL_FAMILIES = {
    "Normal": (K.Normal, _normal_params, D.Normal, False),
    "Laplace": (K.Laplace, lambda h: {"loc": h, "scale": _positive(h)}, D.Laplace, False),
    "Gamma": (K.Gamma, lambda h: {"concentration": _positive(h), "rate": _positive(-h)}, D.Gamma, False),
    "Beta": (K.Beta, lambda h: {"concentration1": _positive(h), "concentration0": _positive(-h)}, D.Beta, False),
    "Bernoulli": (K.Bernoulli, lambda h: {"probs": torch.sigmoid(h)}, D.Bernoulli, False),
    "Poisson": (K.Poisson, lambda h: {"rate": _positive(h)}, D.Poisson, False),
    "Categorical": (K.Categorical, lambda h: {"probs": torch.softmax(h, -1)}, D.OneHotCategorical, True),
    "Dirichlet": (K.Dirichlet, lambda h: {"concentration": _positive(h)}, D.Dirichlet, True),
    "MultivariateNormal": (K.MultivariateNormal, lambda h: {"loc": h, "scale_tril": torch.diag_embed(_positive(h))},
                           D.MultivariateNormal, True),
}


def test_kl_between_a_constant_and_a_network_of_every_family_on_an_empty_batch_is_empty():
    """Both directions; KL[constant MultivariateNormal || network] raised a bare ZeroDivisionError (torch's
    Mahalanobis term divides by the constant's rows)."""
    for name, (family, make, torch_class, event) in _KL_FAMILIES.items():
        q = _net(family, make)
        const = make(torch.tensor([0.3, -0.2, 0.5]))
        p = family(var=["x"], **{k: nn.Parameter(v) for k, v in const.items()})
        for first, second in ((p, q), (q, p)):
            c = torch.randn(3, 2)
            with torch.no_grad():
                tq = torch_class(**make(q.lin(c)))
                tp = torch_class(**const).expand(tq.batch_shape)
                if not event:
                    tq, tp = D.Independent(tq, 1), D.Independent(tp, 1)
                ref = D.kl_divergence(tp, tq) if first is p else D.kl_divergence(tq, tp)
            torch.testing.assert_close(KullbackLeibler(first, second).eval({"c": c}).detach(), ref, msg=name)
            kl = KullbackLeibler(first, second).eval({"c": torch.zeros(0, 2)})
            assert kl.shape == (0,) and kl.dtype == torch.float32, name
            kl.sum().backward()  # an empty loss still backpropagates (zero gradients), as a computed one does
            assert q.lin.weight.grad is not None and not q.lin.weight.grad.any(), name
            q.zero_grad()


def test_the_per_feature_kl_of_an_empty_batch_has_the_per_feature_shape():
    make = _KL_FAMILIES["MultivariateNormal"][1]
    q = _net(K.MultivariateNormal, make)
    p = K.MultivariateNormal(var=["x"], **make(torch.tensor([0.3, -0.2, 0.5])))
    # (dim=() keeps the per-feature KL: one value per row for a multivariate normal, whose features are its event)
    assert KullbackLeibler(p, q, dim=()).eval({"c": torch.zeros(4, 2)}).shape == (4,)
    assert KullbackLeibler(p, q, dim=()).eval({"c": torch.zeros(0, 2)}).shape == (0,)
    p.double(), q.double()
    kl = KullbackLeibler(p, q).eval({"c": torch.zeros(0, 2, dtype=torch.float64)})
    assert kl.shape == (0,) and kl.dtype == torch.float64


# ------------------------------------------------------------------------------------------------- Multinomial
@pytest.mark.parametrize("key", ["logits", "probs"])
@pytest.mark.parametrize("checks", [True, False], ids=["validated", "unvalidated"])
def test_multinomial_from_a_network_scores_and_has_an_entropy_on_an_empty_batch(key, checks):
    make = (lambda h: {"logits": h}) if key == "logits" else (lambda h: {"probs": torch.softmax(h, -1)})
    m = _net(K.Multinomial, make, total_count=4)
    c = torch.randn(3, 2)
    x = torch.tensor([[4.0, 0, 0], [1, 2, 1], [0, 1, 3]])
    with validation(checks):
        with torch.no_grad():
            ref = D.Multinomial(4, **make(m.lin(c)))
            torch.testing.assert_close(m.get_log_prob({"x": x, "c": c}), ref.log_prob(x))
            torch.testing.assert_close(m.get_entropy({"c": c}), ref.entropy())
        c0, x0 = torch.zeros(0, 2), torch.zeros(0, 3)
        assert m.get_log_prob({"x": x0, "c": c0}).shape == (0,)
        entropy = m.get_entropy({"c": c0})
        assert entropy.shape == (0,) and entropy.dtype == torch.float32
        assert m.get_entropy({"c": c0}, sum_features=False).shape == (0,)
        assert m.sample({"c": c0})["x"].shape == (0, 3)


def test_multinomial_with_extra_feature_dimensions_has_an_empty_entropy_of_the_right_shape():
    m = _net(K.Multinomial, lambda h: {"logits": h}, features=(2, 3), total_count=4)
    c = torch.randn(5, 2, 2)
    with torch.no_grad():
        ref = D.Multinomial(4, logits=m.lin(c))
        torch.testing.assert_close(m.get_entropy({"c": c}, sum_features=False), ref.entropy())
    assert m.get_entropy({"c": torch.zeros(0, 2, 2)}, sum_features=False).shape == (0, 2)
    assert m.get_entropy({"c": torch.zeros(0, 2, 2)}).shape == (0,)


def test_multinomial_follows_kizunas_validation_setting_not_torchs_default():
    """Probabilities off the simplex: refused under validation; inside ``validation(False)`` not checked, as a
    Normal's negative scale is not, even with torch's process default on (torch's inner Categorical followed it)."""
    assert D.Distribution._validate_args  # torch's process default (the case that leaked)
    probs = torch.tensor([[0.5, 0.7, -0.2], [0.2, 0.3, 0.5]])  # the first row is off the simplex
    m = _net(K.Multinomial, lambda h: {"probs": probs[: h.shape[0]]}, total_count=4)
    c = torch.zeros(2, 2)
    x = torch.tensor([[4.0, 0, 0], [1, 2, 1]])
    with pytest.raises(ValueError, match=r"^p\(x\|c\): parameter 'probs' of Net must satisfy Simplex\(\); got invalid "
                                         r"values$"):
        m.get_log_prob({"x": x, "c": c})
    with validation(False):
        got = m.get_log_prob({"x": x, "c": c})
    D.Distribution.set_default_validate_args(False)
    try:  # torch's own numbers without its checks (it clamps the probabilities)
        ref = D.Multinomial(4, probs=probs).log_prob(x)
    finally:
        D.Distribution.set_default_validate_args(True)
    torch.testing.assert_close(got, ref)
    assert torch.isfinite(got).all()


def test_a_one_row_multinomial_is_expanded_to_the_rows_drawn():
    """A guard for the Multinomial with its own ``__init__`` (torch's ``expand`` then needs the subclass named)."""
    probs = torch.tensor([0.2, 0.3, 0.5])
    m = K.Multinomial(var=["x"], total_count=4, probs=probs)
    x = m.sample(batch_n=5)["x"]
    assert x.shape == (5, 3) and (x.sum(-1) == 4).all()
    assert m.sample(batch_n=0)["x"].shape == (0, 3)
    torch.testing.assert_close(m.get_entropy(), D.Multinomial(4, probs=probs).entropy().reshape(1))
