"""Metrics review fixes (stop 39): the log-likelihood's joint check, eval mode and integer arguments; bfloat16 inputs;
a seeded C2ST with a given estimator; clustering scores from a sparse contingency table.

References: the closed-form log p(x) of test_bounds' linear-Gaussian model, the same estimate in eval mode,
``sklearn.metrics`` (ARI, NMI), ``scipy.optimize.linear_sum_assignment`` on the dense table (accuracy), and the same
call on float32 inputs / an estimator given ``random_state=seed``.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from mc_reference import default_dtype
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_bounds import ExactPosterior, Likelihood, WrongPosterior, log_px, model
from torch import nn

import kizuna.metrics.clustering as clustering
from kizuna.distributions import Normal
from kizuna.metrics import (
    adjusted_rand_score,
    classifier_two_sample_test,
    clustering_accuracy,
    log_likelihood,
    normalized_mutual_info_score,
)
from kizuna.metrics.two_sample import _classifier


def _x(n=9):
    torch.manual_seed(0)
    return {"x": torch.randn(n, 3, dtype=torch.float64) * 2}


# ----------------------------------------------------------------- 1. the joint, not the decoder
def test_log_likelihood_refuses_a_decoder_without_the_prior_naming_the_latent():
    with default_dtype(torch.float64):
        x = _x()
        torch.testing.assert_close(log_likelihood(model(), ExactPosterior(), x, k=3), log_px(x["x"]),
                                   rtol=0, atol=1e-9)
        with pytest.raises(ValueError, match=r"p_joint is p\(x\|z\), conditioned on z, which q q\(z\|x\) draws: "
                                             r"the prior of z is missing.*p_x_given_z \* prior"):
            log_likelihood(Likelihood(), ExactPosterior(), x, k=3)


# ----------------------------------------------------------------- 2. eval mode, modes and statistics restored
class _Encoder(Normal):
    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))

    def forward(self, x):
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": nn.functional.softplus(s) + 1e-3}


class _Decoder(Normal):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 4))

    def forward(self, z):
        return {"loc": self.net(z), "scale": 1.0}


def test_log_likelihood_scores_in_eval_mode_and_leaves_modes_and_running_statistics_as_they_were():
    torch.manual_seed(0)
    p, q = _Decoder(), _Encoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    with torch.no_grad():  # running statistics away from their initial values, as after training
        q.net[1].running_mean.uniform_(-1, 1)
        q.net[1].running_var.uniform_(0.5, 2)
    x = {"x": torch.randn(40, 4) + 3}
    p.eval(), q.eval()
    torch.manual_seed(1)
    reference = log_likelihood(p * prior, q, x, k=20, k_chunk=7)

    q.train()
    p.train()
    p.net[1].eval()  # a mixed state: every module's own mode must come back
    modes = {name: m.training for d in (p, q) for name, m in d.named_modules(prefix=d.name)}
    stats = {k: v.clone() for k, v in q.net[1].state_dict().items()}
    torch.manual_seed(1)
    value = log_likelihood(p * prior, q, x, k=20, k_chunk=7)
    torch.testing.assert_close(value, reference, rtol=0, atol=0)
    assert {name: m.training for d in (p, q) for name, m in d.named_modules(prefix=d.name)} == modes
    for k, v in q.net[1].state_dict().items():
        assert torch.equal(v, stats[k]), k


# ----------------------------------------------------------------- 3. bfloat16 and float16 inputs
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_score_as_their_float32_values(dtype):
    torch.manual_seed(0)
    real, fake = torch.randn(150, 3).to(dtype), (torch.randn(150, 3) + 0.7).to(dtype)
    assert classifier_two_sample_test(real, fake) == classifier_two_sample_test(real.float(), fake.float())
    truth = torch.randint(0, 4, (60,))
    pred = torch.where(torch.rand(60) < 0.7, truth, torch.randint(0, 5, (60,))).to(dtype)
    for score in (clustering_accuracy, adjusted_rand_score, normalized_mutual_info_score):
        assert score(truth, pred) == score(truth, pred.float()) == score(truth.numpy(), pred.float().numpy())
        assert score(pred, truth) == score(pred.float(), truth)


# ----------------------------------------------------------------- 4. a seeded C2ST with a given estimator
def test_c2st_seed_sets_an_unset_random_state_of_a_given_estimator_and_leaves_the_estimator_alone():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(300, 4)), rng.normal(0.2, size=(300, 4))
    forest = RandomForestClassifier(20)
    runs = [classifier_two_sample_test(a, b, forest, seed=3) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    # the reference: the same estimator with random_state=seed given by hand
    assert runs[0] == classifier_two_sample_test(a, b, RandomForestClassifier(20, random_state=3), seed=3)
    assert forest.get_params()["random_state"] is None and not hasattr(forest, "estimators_")
    piped = make_pipeline(StandardScaler(), RandomForestClassifier(20))
    assert classifier_two_sample_test(a, b, piped, seed=3) == classifier_two_sample_test(a, b, piped, seed=3)
    assert _classifier(piped, 3, 100).get_params()["randomforestclassifier__random_state"] == 3
    assert piped.get_params()["randomforestclassifier__random_state"] is None
    assert _classifier(RandomForestClassifier(random_state=7), 3, 100).random_state == 7  # the caller's is kept


# ----------------------------------------------------------------- 5. numpy / torch integers for k and the sizes
def test_log_likelihood_takes_numpy_and_torch_integers():
    with default_dtype(torch.float64):
        x = _x(11)
        torch.manual_seed(2)
        expected = log_likelihood(model(), WrongPosterior(), x, k=7, batch_size=4, k_chunk=3)
        torch.manual_seed(2)
        got = log_likelihood(model(), WrongPosterior(), x, k=np.int64(7), batch_size=np.int32(4),
                             k_chunk=torch.tensor(3))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        for bad in (True, 7.0, np.float64(7), np.int64(0)):
            with pytest.raises(ValueError, match="k must be an integer >= 1"):
                log_likelihood(model(), WrongPosterior(), x, k=bad)


# ----------------------------------------------------------------- 6. sparse contingency
def _dense_accuracy(t, p):
    table = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(table, (t, p), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


@pytest.mark.parametrize("seed", range(4))
def test_clustering_scores_match_sklearn_and_dense_matching_on_random_labellings(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        n = int(rng.integers(1, 80))
        t = rng.integers(0, rng.integers(1, 12), n)
        p = rng.permutation(n) if rng.random() < 0.2 else rng.integers(0, rng.integers(1, 40), n)
        assert clustering_accuracy(t, p) == _dense_accuracy(np.unique(t, return_inverse=True)[1],
                                                            np.unique(p, return_inverse=True)[1])
        assert adjusted_rand_score(t, p) == pytest.approx(skm.adjusted_rand_score(t, p), abs=1e-12)
        assert normalized_mutual_info_score(t, p) == pytest.approx(skm.normalized_mutual_info_score(t, p), abs=1e-12)


def test_12000_singletons_need_no_dense_table():
    n = 12_000
    t, p = np.arange(n), np.random.default_rng(0).permutation(n)
    merged = t // 2  # pairs of the singletons merged: ARI, NMI below 1
    tracemalloc.start()
    try:
        ari, nmi = adjusted_rand_score(merged, p), normalized_mutual_info_score(merged, p)
        accuracy = clustering_accuracy(t, p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ari == pytest.approx(skm.adjusted_rand_score(merged, p), abs=1e-12)
    assert nmi == pytest.approx(skm.normalized_mutual_info_score(merged, p), abs=1e-12)
    assert accuracy == 1.0
    assert peak < 100e6  # (loose: a dense 12,000 x 12,000 table of int64 is 1.15 GB)
    assert adjusted_rand_score(t, p) == skm.adjusted_rand_score(t, p) == 1.0
    assert normalized_mutual_info_score(t, p) == pytest.approx(skm.normalized_mutual_info_score(t, p), abs=1e-12)


def test_a_matching_too_large_for_a_dense_table_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(clustering, "_MAX_MATCHING_CELLS", 8)
    # classes 0-2 and clusters 0-2 share samples (one group, 3 x 3 = 9 cells); class 3 / cluster 9 stand alone
    t = [0, 0, 1, 1, 2, 2, 3]
    p = [0, 1, 1, 2, 2, 0, 9]
    with pytest.raises(ValueError, match=r"matching 4 true classes with 4 predicted clusters needs a dense table of "
                                         r"3 classes x 3 clusters.*adjusted_rand_score"):
        clustering_accuracy(t, p)
    monkeypatch.setattr(clustering, "_MAX_MATCHING_CELLS", 9)
    assert clustering_accuracy(t, p) == _dense_accuracy(np.array(t), np.unique(p, return_inverse=True)[1])
