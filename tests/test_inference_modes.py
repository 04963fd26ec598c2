"""The inference helpers on trained networks: eval mode, discrete latents, autoregressive decoders, shapes, inputs.

Most checks use p(z) = N(0, 1), p(x|z) = N(z 1, I_2), so x ~ N(0, I + 1 1^T) (scipy gives -log p(x)) and
p(z|x) = N(sum(x) / 3, 1/3). The encoder computes that posterior through a batch norm whose running statistics are
the identity (mean 0, variance + eps 1): in eval mode it is the exact posterior, with which every ELBO draw equals
log p(x); in training mode it normalises by the batch. The decoders pass their mean through a dropout.
"""

import itertools

import numpy as np
import pytest
import torch
from mc_reference import default_dtype
from scipy import stats
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, Categorical, MADEBernoulli, Normal, PixelCNNBernoulli, ProductOfNormal
from kizuna.inference import anomaly_score, cross_generate, impute_gibbs, impute_importance, infer_latent
from kizuna.inference.masked import masked_log_joint
from kizuna.nets import MLP


@pytest.fixture
def _float64():
    with default_dtype(torch.float64):
        yield


EPS = 2.0**-10


class BatchNormPosterior(Normal):
    """q(z|x) = p(z|x) = N(sum(bn(x)) / 3, 1/3); bn is the identity on its running statistics."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.bn = nn.BatchNorm1d(2, eps=EPS, affine=False)
        self.bn.running_var.fill_(1 - EPS)  # (x - 0) / sqrt(1 - eps + eps) = x exactly: eps is a power of 2

    def forward(self, x):
        h = self.bn(x)
        return {"loc": h.sum(1, keepdim=True) / 3, "scale": torch.full((len(x), 1), (1 / 3) ** 0.5)}


class DropoutDecoder(Normal):
    """p(v|z) = N(dropout(z) 1, I_2) for v = x or y."""

    def __init__(self, var="x"):
        super().__init__(var=[var], cond_var=["z"], name="p")
        self.drop = nn.Dropout(0.5)

    def forward(self, z):
        loc = self.drop(z.expand(-1, 2))
        return {"loc": loc, "scale": torch.ones_like(loc)}


def trained():
    """The joint, the encoder and its batch norm, in training mode as `Model.fit` leaves them."""
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="p_prior")
    lik, q = DropoutDecoder(), BatchNormPosterior()
    lik.train()
    q.train()
    return lik * prior, q, q.bn


def modes(*modules):
    return [m.training for module in modules for m in module.modules()]


def assert_untouched(p_joint, q, bn, before):
    assert modes(p_joint, q) == before
    assert torch.equal(bn.running_mean, torch.zeros(2)) and torch.equal(bn.running_var, torch.full((2,), 1 - EPS))
    assert int(bn.num_batches_tracked) == 0


def data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g) * 2
    mask = torch.tensor([[True, False], [False, True], [True, True], [False, False], [True, False], [False, True]])
    return x, mask[:n]


def test_elbo_score_runs_the_networks_in_eval_mode_whatever_the_batch(_float64):
    p_joint, q, bn = trained()
    p_joint.factors()[0].drop.eval()  # a mix of modes: each module gets its own back
    before = modes(p_joint, q)
    x, _ = data()
    exact = -stats.multivariate_normal(np.zeros(2), np.eye(2) + 1).logpdf(x.numpy())
    score = anomaly_score(p_joint, q, {"x": x}, method="elbo", k=7, k_chunk=3)
    np.testing.assert_allclose(score.numpy(), exact, rtol=0, atol=1e-10)  # the exact posterior: ELBO = log p(x)
    alone = anomaly_score(p_joint, q, {"x": x[:1]}, method="elbo", k=5)  # (training mode: one row was refused)
    copies = anomaly_score(p_joint, q, {"x": x[:1].expand(3, 2)}, method="elbo", k=5)
    np.testing.assert_allclose(alone.numpy(), exact[:1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(copies.numpy(), np.repeat(exact[:1], 3), rtol=0, atol=1e-10)
    assert_untouched(p_joint, q, bn, before)


@pytest.mark.parametrize("impute", ["importance", "gibbs"])
def test_imputers_run_the_networks_in_eval_mode(_float64, impute):
    def run(p_joint, q, x, mask):
        torch.manual_seed(0)
        if impute == "importance":
            return impute_importance(p_joint, q, {"x": x}, mask, k=30, n_samples=4, k_chunk=7)
        return impute_gibbs(p_joint, q, {"x": x}, mask, n_iter=3, n_samples=4)

    p_joint, q, bn = trained()
    before = modes(p_joint, q)
    x, mask = data()
    got = run(p_joint, q, x, mask)
    assert_untouched(p_joint, q, bn, before)
    one = run(p_joint, q, x[:1], mask[:1])  # one row (training mode: batch norm refused it)
    assert_untouched(p_joint, q, bn, before)
    p_joint.eval()
    q.eval()
    ref = run(p_joint, q, x, mask)  # the same draws with every network in eval mode
    assert torch.equal(got.mean, ref.mean) and torch.equal(got.samples, ref.samples)
    ref_one = run(p_joint, q, x[:1], mask[:1])
    assert torch.equal(one.mean, ref_one.mean) and torch.equal(one.samples, ref_one.samples)


def test_multimodal_helpers_run_the_networks_in_eval_mode(_float64):
    _, q, bn = trained()
    dec_y = DropoutDecoder("y")
    before = modes(q, dec_y)
    x, _ = data()
    post = x.sum(1, keepdim=True) / 3
    assert torch.equal(infer_latent(q, {"x": x})["z"], post)
    assert torch.equal(infer_latent(q, {"x": x[:1]})["z"], post[:1])  # (training mode: a raw batch norm error)
    assert torch.equal(cross_generate(q, dec_y, {"x": x}), post.expand(-1, 2))  # no dropout on the decoder
    assert modes(q, dec_y) == before
    assert torch.equal(bn.running_mean, torch.zeros(2)) and int(bn.num_batches_tracked) == 0


# a discrete latent z ~ Bernoulli(0.3) and 5 Bernoulli pixels; q(z|x) = p(z|x), which cannot be reparameterised
P = torch.tensor([[0.9, 0.8, 0.1, 0.2, 0.7], [0.1, 0.3, 0.9, 0.6, 0.2]], dtype=torch.float64)  # p(x_d = 1 | z)
PI = 0.3


def pixels_given(z):
    return z * P[1] + (1 - z) * P[0]


def log_joint_by_z(x):
    """log p(x, z) for z = 0, 1, (2, N)."""
    return torch.stack([(x * P[j].log() + (1 - x) * (1 - P[j]).log()).sum(-1) + np.log([1 - PI, PI][j])
                        for j in (0, 1)])


class PixelDecoder(Bernoulli):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")

    def forward(self, z):
        return {"probs": pixels_given(z)}


class DiscretePosterior(Bernoulli):
    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")

    def forward(self, x):
        lj = log_joint_by_z(x)
        return {"probs": torch.sigmoid(lj[1] - lj[0]).unsqueeze(-1)}


def test_elbo_score_of_a_discrete_latent_equals_the_enumerated_likelihood(_float64):
    prior = Bernoulli(var=["z"], probs=torch.tensor([PI]), name="p_prior")
    x = torch.tensor([[1.0, 1, 0, 0, 1], [0, 0, 1, 1, 0], [1, 0, 1, 0, 1], [0, 1, 0, 1, 0]])
    exact = -torch.logsumexp(log_joint_by_z(x), 0)  # -log p(x) by enumerating z
    torch.manual_seed(0)
    score = anomaly_score(PixelDecoder() * prior, DiscretePosterior(), {"x": x}, method="elbo", k=50, k_chunk=20)
    torch.testing.assert_close(score, exact, rtol=0, atol=1e-10)  # exact posterior: every draw gives log p(x)
    np.testing.assert_allclose(exact.numpy(), [1.3701, 2.5043, 4.7597, 4.9745], atol=1e-4)  # (the review's values)


def made_decoder():
    torch.manual_seed(0)
    return MADEBernoulli(4, hidden_features=[32], var="x", cond_var="z", context_features=1)


class ZeroEncoder(Normal):
    def __init__(self, var="x", dim=1):
        super().__init__(var=["z"], cond_var=[var], name="q")
        self.dim = dim

    def forward(self, **given):
        (v,) = given.values()
        return {"loc": torch.zeros(len(v), self.dim), "scale": torch.ones(len(v), self.dim)}


@pytest.mark.parametrize("kind", ["made", "pixelcnn", "renamed made"])
def test_autoregressive_decoders_are_refused_by_name(kind):
    prior = Normal(var=["z"], loc=torch.zeros(1), scale=torch.ones(1), name="p_prior")
    if kind == "pixelcnn":
        dec = PixelCNNBernoulli(2, 2, hidden_channels=4, n_layers=1, cond_var="z", context_features=1)
        x = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    else:
        dec = made_decoder() if kind == "made" else made_decoder().replace_var(x="w")
        x = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    var = dec.var[0]
    mask = torch.tensor([[False, True, False, True]]).reshape(x.shape)  # the observed entries come after missing ones
    z = torch.tensor([[0.3]])
    name = {"made": "MADEBernoulli", "pixelcnn": "PixelCNNBernoulli", "renamed made": "ReplaceVarDistribution"}[kind]
    if kind == "made":  # the sum of the observed entries' terms, returned before, is not log p(x_obs|z)
        completions = []
        for a, b in itertools.product([0.0, 1.0], repeat=2):
            xx = x.clone()
            xx[0, 0], xx[0, 2] = a, b
            completions.append(dec.get_log_prob({"x": xx, "z": z}))
        exact = torch.logsumexp(torch.stack(completions), 0)
        terms = dec.get_log_prob({"x": x, "z": z}, sum_features=False)
        assert not torch.allclose(torch.where(mask, terms, 0.0).sum(1), exact, atol=1e-3)
    renamed = r" \(a renamed MADEBernoulli\)" if kind == "renamed made" else ""
    with pytest.raises(ValueError, match=rf"probe: the decoder p\({var}\|z\) \({name}\).*autoregressive{renamed}: "):
        masked_log_joint(dec * prior, {var: x, "z": z}, var, mask, "probe")
    q = ZeroEncoder(var)
    with pytest.raises(ValueError, match=rf"impute_importance: the decoder .*\({name}\).*autoregressive"):
        impute_importance(dec * prior, q, {var: x}, mask, k=10)
    with pytest.raises(ValueError, match=rf"impute_gibbs: the decoder .*\({name}\).*autoregressive"):
        impute_gibbs(dec * prior, q, {var: x}, mask, n_iter=2)


class LabelDecoder(Categorical):
    """p(y|z) over 3 classes, one-hot."""

    def __init__(self):
        super().__init__(var=["y"], cond_var=["z"], name="p")
        self.lin = nn.Linear(2, 3)

    def forward(self, z):
        return {"logits": self.lin(z)}


class WideDecoder(Normal):
    """p(x|z) of 3 entries."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")

    def forward(self, z):
        loc = z.expand(-1, 3)
        return {"loc": loc, "scale": torch.ones_like(loc)}


@pytest.mark.parametrize("draw", [True, False])
def test_gibbs_names_a_decoder_whose_draws_do_not_have_the_data_shape(draw):
    torch.manual_seed(0)
    prior2 = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="p_prior")
    y, m = torch.tensor([0, 2, 1, 1]), torch.tensor([True, False, True, False])  # labels as indices
    with pytest.raises(ValueError, match=r"impute_gibbs: the decoder p\(y\|z\) \(LabelDecoder\) gives .* of shape "
                                         r"\(40, 3\) for y of shape \(40,\) \(4 rows x 10 chains\)"):
        impute_gibbs(LabelDecoder() * prior2, ZeroEncoder("y", 2), {"y": y}, m, n_iter=2, draw=draw)
    prior1 = Normal(var=["z"], loc=torch.zeros(1), scale=torch.ones(1), name="p_prior")
    for width in (2, 1):
        x = torch.randn(3, width)
        m = torch.rand(3, width) < 0.5
        with pytest.raises(ValueError, match=rf"decoder p\(x\|z\) \(WideDecoder\) gives .* of shape \(30, 3\) for "
                                             rf"x of shape \(30, {width}\)"):
            impute_gibbs(WideDecoder() * prior1, ZeroEncoder(), {"x": x}, m, n_iter=2, n_samples=10, draw=draw)


@pytest.mark.parametrize("impute", ["importance", "gibbs"])
def test_an_init_that_is_not_finite_where_data_is_missing_is_named(_float64, impute):
    p_joint, q, _ = trained()
    x, mask = data()
    run = ((lambda **kw: impute_importance(p_joint, q, {"x": x}, mask, k=20, **kw)) if impute == "importance"
           else (lambda **kw: impute_gibbs(p_joint, q, {"x": x}, mask, n_iter=2, **kw)))
    init = torch.tensor([0.5, float("nan")])  # e.g. the training mean of data with gaps
    with pytest.raises(ValueError, match=rf"impute_{impute}: init has NaN or infinite values where x is missing "
                                         r"\(3 entries, first at row 0, feature 1\)"):
        run(init=init)
    with pytest.raises(ValueError, match="init has NaN or infinite values"):
        run(init=torch.full((6, 2), float("inf")))
    # NaN where x is observed is never read: the same result as any finite value there
    at_observed = torch.where(mask, float("nan"), 0.25)
    torch.manual_seed(1)
    got = run(init=at_observed)
    torch.manual_seed(1)
    ref = run(init=torch.full((6, 2), 0.25))
    assert torch.equal(got.mean, ref.mean) and torch.equal(got.samples, ref.samples)


class MLPExpert(Normal):
    def __init__(self, var, dim):
        super().__init__(var=["z"], cond_var=[var], name="q")
        self.net = MLP(dim, 8, 4)

    def forward(self, **given):
        loc, s = self.net(*given.values()).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}


class MLPDecoder(Normal):
    def __init__(self):
        super().__init__(var=["y"], cond_var=["z", "c"], name="p")
        self.net = MLP(3, 8, 3)

    def forward(self, z, c):
        return {"loc": self.net(torch.cat([z, c], 1)), "scale": torch.ones(len(z), 3)}


def test_multimodal_helpers_convert_float64_data_for_a_float32_model():
    torch.manual_seed(0)
    q = ProductOfNormal([MLPExpert("x", 4), MLPExpert("y", 3)], name="q", features_shape=[2])
    dec = MLPDecoder()
    x, c = torch.randn(5, 4), torch.randn(5, 1)
    ref_z = infer_latent(q, {"x": x})["z"]
    got_z = infer_latent(q, {"x": x.double()})["z"]  # (a raw dtype error before)
    assert got_z.dtype == torch.float32 and torch.equal(got_z, ref_z)
    ref = cross_generate(q, dec, {"x": x, "c": c})
    got = cross_generate(q, dec, {"x": x.double(), "c": c.double()})
    assert got.dtype == torch.float32 and torch.equal(got, ref)


def test_coherence_scores_a_network_classifier_in_eval_mode() -> None:
    """A classifier network with dropout gave 0.32 / 0.285 / 0.345 on three identical calls (training mode): it is
    run in eval mode, its modes given back, and the result is that of the network in eval mode."""
    from kizuna.inference import coherence

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    x, y = torch.randn(200, 4), torch.randint(0, 3, (200,))
    with torch.no_grad():
        expected = float((net.eval()(x).argmax(1) == y).double().mean())
    net.train()
    net[1].eval()  # a submodule in its own mode: kept
    values = {coherence(x, y, net) for _ in range(3)}
    assert values == {expected}
    assert net.training and not net[1].training and net[0].training
