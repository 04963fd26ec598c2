"""Regressions of stop 41's fixes. Review diffA: an MLP distribution's condition ``(B, 1, D)`` gave parameters
``(B, 1, features)`` (classifiers, regressors and analytic KLs that worked raised), and single-process ``fit`` refused a
one-row last batch up front for any model with batch normalisation, also where the layer sees more rows (an IWAE
decoder's ``k`` draws per row). Review diffB1: hand-written importance weights of one-channel data against draws made
with ``sample_shape`` (summed over the draws for one row, refused for more), and the porting guide's
``feature_dims=[2]`` recipe for a batch of one (out of range).

References: torch's own distributions and closed-form KL on the network's outputs for ``x.reshape(B, -1)``, the same
calls on ``x.squeeze(1)`` (bitwise), scipy's log-densities of the networks applied draw by draw, and a run on the rows
that train."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import distributions as D
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, MLPBernoulli, MLPCategorical, MLPNormal, Normal, torch_dist
from kizuna.distributions.base import RepeatedRows, repeat_batch
from kizuna.losses import ELBO, IWAE, KullbackLeibler, LogProb
from kizuna.models import Model

F64 = torch.float64


# ------------------------------------------------------------------ MLP distributions: a condition (B, 1, D)
def _one_channel(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 1, 6, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_a_classifier_and_a_regressor_given_one_channel_rows_read_them_flattened():
    """The review's repro (b1d_cat.py): q(y|x) with x of (4, 1, 6) scores one-hot labels (4, 3) as log_softmax of the
    network on x.reshape(4, 6); r(t|x) scores targets (4, 1) as torch's Normal; parameters are (B, features), the same
    as for x.squeeze(1) (the new reading gave (4, 1, 3) and refused the labels)."""
    torch.manual_seed(0)
    q = MLPCategorical("y", ["x"], [6, 8, 3]).double()
    r = MLPNormal("t", ["x"], [6, 8, 1], name="r").double()
    x = _one_channel()
    labels = torch.tensor([0, 1, 2, 1])
    y, t = F.one_hot(labels, 3).to(F64), torch.randn(4, 1, dtype=F64)
    reference = torch.log_softmax(q.net(x.reshape(4, 6)), -1)[torch.arange(4), labels]
    torch.testing.assert_close(q.get_log_prob({"x": x, "y": y}), reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(LogProb(q).eval({"x": x, "y": y}), reference, rtol=1e-12, atol=1e-12)
    out = r.net(x.reshape(4, 6))
    torch.testing.assert_close(r.get_log_prob({"x": x, "t": t}),
                               D.Normal(out[:, :1], F.softplus(out[:, 1:]) + 1e-4).log_prob(t).sum(-1),
                               rtol=1e-12, atol=1e-12)
    for dist in (q, r, MLPBernoulli("w", ["x"], [6, 8, 5]).double()):
        params, flat = dist.get_params({"x": x}), dist.get_params({"x": x.squeeze(1)})
        for key, value in params.items():
            assert value.shape == flat[key].shape == (4, value.shape[-1]) and torch.equal(value, flat[key])
    two = MLPNormal("w", ["x", "c"], [9, 8, 2]).double()  # several conditions: each flattened per row, side by side
    c = torch.randn(4, 1, 3, dtype=F64)
    params, flat = two.get_params({"x": x, "c": c}), two.get_params({"x": x.squeeze(1), "c": c.squeeze(1)})
    assert params["loc"].shape == (4, 2) and all(torch.equal(params[k], flat[k]) for k in flat)


def test_an_analytic_kl_of_an_encoder_given_one_channel_rows():
    """The review's repro (b1d.py): KL[q(z|x) || N(0, I)] with x of (4, 1, 6) is torch's closed form on the network's
    outputs for x.reshape(4, 6), per row (the new reading gave q parameters (4, 1, 2), which the prior refused)."""
    torch.manual_seed(0)
    q = MLPNormal("z", ["x"], [6, 8, 2]).double()
    prior = Normal(loc=torch.zeros(2, dtype=F64), scale=torch.ones(2, dtype=F64), var=["z"], features_shape=[2],
                   name="p_prior")
    x = _one_channel()
    out = q.net(x.reshape(4, 6))
    reference = D.kl_divergence(D.Normal(out[:, :2], F.softplus(out[:, 2:]) + 1e-4),
                                D.Normal(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))).sum(-1)
    torch.testing.assert_close(KullbackLeibler(q, prior).eval({"x": x}), reference, rtol=1e-12, atol=1e-12)


def test_an_elbo_of_one_channel_data_scores_each_row_against_its_own_decoder_row():
    """Data x of (4, 1, 6) are also the decoder's scored value: p(x|z) scores each row against its own row of logits
    (torch's Bernoulli on x.squeeze(1)); broadcast (4, 1, 6) against (4, 6), as the code before stop 41 did, scored
    every row against every row and the ELBO summed 4 reconstruction terms per row. The ELBO equals the one of
    x.squeeze(1) under the same seed, also without gradients on a lazily repeated value (IWAE's k copies)."""
    torch.manual_seed(0)
    q = MLPNormal("z", ["x"], [6, 8, 2]).double()
    p = MLPBernoulli("x", ["z"], [2, 8, 6], name="p").double()
    prior = Normal(loc=torch.zeros(2, dtype=F64), scale=torch.ones(2, dtype=F64), var=["z"], features_shape=[2],
                   name="p_prior")
    x = (_one_channel(1) > 0).to(F64)
    z = torch.randn(4, 2, dtype=F64)
    reference = D.Bernoulli(logits=p.net(z)).log_prob(x.squeeze(1)).sum(-1)
    torch.testing.assert_close(p.get_log_prob({"x": x, "z": z}), reference, rtol=1e-12, atol=1e-12)
    values = []
    for data in (x, x.squeeze(1)):
        torch.manual_seed(2)
        values.append(ELBO(p * prior, q).eval({"x": data}))
    assert values[0].shape == (4,) and torch.equal(values[0], values[1])
    with torch.no_grad():
        zs = torch.randn(12, 2, dtype=F64)
        lazy, copied = RepeatedRows(x, 3), repeat_batch(x.squeeze(1), 3)
        expected = D.Bernoulli(logits=p.net(zs)).log_prob(copied).sum(-1)
        torch.testing.assert_close(p.get_log_prob({"x": lazy, "z": zs}), expected, rtol=1e-12, atol=1e-12)
        with pytest.MonkeyPatch.context() as patch:  # the blocked scoring of many rows (no copy of the repeats)
            patch.setattr(torch_dist, "BLOCK_ELEMENTS", 8)
            torch.testing.assert_close(p.get_log_prob({"x": RepeatedRows(x, 3), "z": zs}), expected,
                                       rtol=1e-12, atol=1e-12)


def _iw_models():
    """q(z|x) and p(x|z) of 6 data features and 2 latents, in float64."""
    torch.manual_seed(0)
    return MLPNormal("z", ["x"], [6, 8, 2]).double(), MLPBernoulli("x", ["z"], [2, 8, 6], name="p").double()


def _bernoulli_ref(p, z, x):
    """scipy's log-pmf of ``x (B, D)`` under the decoder's logits at the draws ``z (S, B, 2)``, summed per row:
    (S, B) (the network applied draw by draw)."""
    with torch.no_grad():
        probs = torch.stack([torch.sigmoid(p.net(z[k])) for k in range(z.shape[0])]).numpy()
    return torch.from_numpy(stats.bernoulli.logpmf(x.numpy(), probs).sum(-1))


@pytest.mark.parametrize("rows", [1, 4])
def test_a_decoder_scores_one_channel_data_against_draws_of_its_encoder(rows):
    """Hand-written importance weights on one-channel data (review diffB1, finding 2): x of (B, 1, 6) is B rows, so
    ``q.sample({"x": x}, sample_shape=(3,))`` draws z of (3, B, 2), and p(x|z) scores x as (B, 6) in every draw. At
    B = 1 the decoder's parameters are (3, 6) and x (1, 1, 6) was broadcast to (1, 3, 6): the three draws summed into
    one value; at B = 4 x was refused against (3, 4, 6) with a shape error. Reference: scipy's Bernoulli per draw."""
    q, p = _iw_models()
    x = (torch.randn(rows, 1, 6, generator=torch.Generator().manual_seed(3), dtype=F64) > 0).to(F64)
    s = q.sample({"x": x}, sample_shape=(3,))
    assert s["z"].shape == (3, rows, 2)
    ref = _bernoulli_ref(p, s["z"], x.reshape(rows, 6))
    with torch.no_grad():
        torch.testing.assert_close(p.get_log_prob(s), ref.sum(-1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(p.get_log_prob(s, feature_dims=[2]), ref, rtol=1e-12, atol=1e-12)
        per_draw = torch.stack([p.get_log_prob({"x": x, "z": s["z"][k]}) for k in range(3)])
        torch.testing.assert_close(per_draw, ref, rtol=1e-12, atol=1e-12)
        # the log-weights of the product, as with the data given as (B, 6)
        prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior").double()
        flat = {"x": x.reshape(rows, 6), "z": s["z"]}
        torch.testing.assert_close((p * prior).get_log_prob(s) - q.get_log_prob(s),
                                   (p * prior).get_log_prob(flat) - q.get_log_prob(flat), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 4])
def test_the_porting_guides_importance_weights_hold_for_a_batch_of_one(rows):
    """docs/porting_from_pixyz.md's recipe ``p.get_log_prob(s, feature_dims=[2]) - q.get_log_prob(s, feature_dims=[2])``
    on draws ``s = q.sample({"x": x}, sample_shape=(3,))`` gives the (3, B) log-weights (review diffB1, finding 3):
    for B = 1 the decoder's log-density was (3, 6) and ``feature_dims=[2]`` out of range. Reference: scipy's Bernoulli
    and Normal log-densities of the same draws."""
    q, p = _iw_models()
    x = (torch.randn(rows, 6, generator=torch.Generator().manual_seed(4), dtype=F64) > 0).to(F64)
    s = q.sample({"x": x}, sample_shape=(3,))
    with torch.no_grad():
        lw = p.get_log_prob(s, feature_dims=[2]) - q.get_log_prob(s, feature_dims=[2])
        prm = q.get_params({"x": x})
        ref_q = stats.norm.logpdf(s["z"].numpy(), prm["loc"].numpy(), prm["scale"].numpy()).sum(-1)
        ref = _bernoulli_ref(p, s["z"], x) - torch.from_numpy(ref_q)
        assert lw.shape == (3, rows)
        torch.testing.assert_close(lw, ref, rtol=1e-12, atol=1e-12)
        # the default reading gives one log-weight per draw, summed over the rows (Pixyz's sum_samples)
        torch.testing.assert_close(p.get_log_prob(s) - q.get_log_prob(s), ref.sum(-1), rtol=1e-12, atol=1e-12)
        # a categorical decoder: its one-hot dimension is its event, so feature_dims=[] (scipy's multinomial log-pmf)
        torch.manual_seed(1)
        c = MLPCategorical("y", ["z"], [2, 8, 3], name="p").double()
        y = F.one_hot(torch.arange(rows) % 3, 3).to(F64)
        lw_c = c.get_log_prob({**s, "y": y}, feature_dims=[]) - q.get_log_prob(s, feature_dims=[2])
        probs = torch.stack([torch.softmax(c.net(s["z"][k]), -1) for k in range(3)]).numpy()
        ref_c = torch.from_numpy(stats.multinomial.logpmf(y.numpy(), 1, probs) - ref_q)
        assert lw_c.shape == (3, rows)
        torch.testing.assert_close(lw_c, ref_c, rtol=1e-12, atol=1e-12)
        if rows == 1:  # beyond even the (3, 1, 6) layout: named
            with pytest.raises(ValueError, match=r"p\(x\|z\): feature_dims=\[3\] is out of range for its log-density"):
                p.get_log_prob(s, feature_dims=[3])


# ------------------------------------------------------------------ fit: batch normalisation and one-row steps
class _NormedDecoder(Bernoulli):
    """p(x|z) with batch normalisation in its network (the review's bn_iwae.py)."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, z):
        return {"logits": self.net(z)}


def test_iwae_with_batch_norm_in_the_decoder_trains_on_a_one_row_last_batch():
    """33 rows in batches of 16 leave one row in each epoch's last step, but the decoder scores k=5 draws of it: its
    BatchNorm sees 80, 80 and 5 rows, and fit trains (it was refused before the first step)."""
    torch.manual_seed(0)
    q, p = MLPNormal("z", ["x"], [4, 8, 2]), _NormedDecoder()
    prior = Normal(loc=torch.zeros(2), scale=torch.ones(2), var=["z"], features_shape=[2], name="pz")
    model = Model(-IWAE(p * prior, q, k=5).mean(), distributions=[p, q])
    seen = []
    p.net[1].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]) if module.training else None)
    x = torch.bernoulli(torch.full((33, 4), 0.5), generator=torch.Generator().manual_seed(1))
    history = model.fit({"x": x}, epochs=2, batch_size=16, quiet=True, seed=0)
    assert seen == [80, 80, 5, 80, 80, 5] and model.epoch == 2
    assert all(torch.isfinite(torch.tensor(history.train)))
    assert int(next(iter(model.optimizer.state_dict()["state"].values()))["step"]) == 6


class _PooledMean(Normal):
    """p(y|x) whose network's batch norm sees one row whatever the batch (the rows are pooled first)."""

    def __init__(self):
        super().__init__(var=["y"], cond_var=["x"], name="p")
        self.net = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def forward(self, x):
        return {"loc": self.net(x.mean(0, keepdim=True)).expand(x.shape[0], 1), "scale": torch.ones(1)}


def test_a_batch_norm_that_sees_one_row_names_the_loader_batch_or_the_pooling():
    """A loader's batch of one row names the DataLoader's drop_last; a batch of 4 rows whose network pools them to
    one names that neither remedy helps; the first step's message says no earlier step was taken."""
    torch.manual_seed(0)
    x = torch.randn(17, 1, generator=torch.Generator().manual_seed(2))
    data = {"x": x, "y": 2 * x}

    class _Normed(Normal):
        def __init__(self):
            super().__init__(var=["y"], cond_var=["x"], name="p")
            self.net = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

        def forward(self, x):
            return {"loc": self.net(x), "scale": torch.ones(1)}

    model = Model(-LogProb(_Normed()).mean())
    torch_says = "(Expected more than 1 value per channel when training, got input size torch.Size([1, 4]))"
    with pytest.raises(ValueError) as caught:
        model.fit([{k: v[:16] for k, v in data.items()}, {k: v[16:] for k, v in data.items()}], quiet=True)
    assert str(caught.value) == (
        "fit: batch normalisation needs more than one value per channel in training, but the batch of epoch 1, step 2 "
        f"has 1 row {torch_says}; this step was not taken (the epoch's earlier step was); give the DataLoader "
        "drop_last=True (it leaves out each epoch's last, smaller batch) or another batch size")
    pooled = Model(-LogProb(_PooledMean()).mean())
    with pytest.raises(ValueError) as caught:
        pooled.fit(data, batch_size=4, quiet=True)
    assert str(caught.value) == (
        "fit: batch normalisation needs more than one value per channel in training, but the batch of epoch 1, step 1 "
        f"has 4 rows {torch_says}; this step was not taken; the layer's input holds fewer rows than the batch (a "
        "network that draws or pools to one row): batch normalisation cannot train there")
