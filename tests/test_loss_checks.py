"""IterativeLoss's Pixyz ``mask`` option and draw layout (a variable drawn once and several times per step: the layout
of the draw recorded), empty batches, and the losses' argument checks."""

import math

import pytest
import torch
from torch import nn

from kizuna.distributions import Normal
from kizuna.losses import (
    IWAE,
    MMD,
    ContrastiveDivergence,
    DenoisingScoreError,
    Expectation,
    IterativeLoss,
    KullbackLeibler,
    LogProb,
    ScoreMatchingError,
    SlicedScoreError,
    VQCommitment,
    WassersteinDistance,
    sliced_score_matching,
)


def _random_walk():
    p = Normal(var=["x"], cond_var=["x_prev"], loc="x_prev", scale=1.0)
    return p, IterativeLoss(-LogProb(p), series_var=["x"], update_value={"x": "x_prev"})


def _masked_loop(x, x0, mask):
    """Pixyz's masked loop written out: sum_t m[t, n] * -log N(x_t; x_{t-1}, 1), time-major x (T, N, D)."""
    total, prev = 0.0, x0
    for t in range(x.shape[0]):
        step = -torch.distributions.Normal(prev, 1.0).log_prob(x[t]).sum(-1)
        total = total + step * mask[t]
        prev = x[t]
    return total


# ------------------------------------------------------------------ mask (Pixyz's IterativeLoss.eval(x, mask=m))
def test_mask_reviewer_example_gives_pixyz_value():
    _, loss = _random_walk()
    x, x0 = torch.zeros(5, 2, 3), torch.zeros(2, 3)
    mask = torch.tensor([[1., 1.], [1., 1.], [1., 0.], [1., 0.], [0., 0.]])  # sequence 0: 4 steps, sequence 1: 2
    expected = mask.sum(0) * 3 * 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(loss.eval({"x": x, "x_prev": x0}, mask=mask), expected)  # [11.03, 5.51]


def test_mask_per_row_matches_hand_loop_time_major_and_batch_first():
    torch.manual_seed(0)
    p, loss = _random_walk()
    x, x0 = torch.randn(6, 3, 2), torch.randn(3, 2)
    mask = (torch.arange(6)[:, None] < torch.tensor([6, 4, 1])[None, :]).float()  # lengths 6, 4, 1
    expected = _masked_loop(x, x0, mask)
    torch.testing.assert_close(loss.eval({"x": x, "x_prev": x0}, mask=mask), expected)
    torch.testing.assert_close(loss.eval({"x": x, "x_prev": x0}, mask=mask.bool()), expected)  # a bool mask
    # batch-first: the series (N, T, D) and the mask (N, T)
    first = IterativeLoss(-LogProb(p), series_var=["x"], update_value={"x": "x_prev"}, series_dim=1)
    torch.testing.assert_close(first.eval({"x": x.transpose(0, 1), "x_prev": x0}, mask=mask.T), expected)
    # the mean over the batch of the masked sums (the mask reaches the IterativeLoss under .mean())
    torch.testing.assert_close(loss.mean().eval({"x": x, "x_prev": x0}, mask=mask), expected.mean())
    # the reported term (log p, the sign is the formula's) is the masked sum too
    _, terms = loss.eval({"x": x, "x_prev": x0}, mask=mask, return_terms=True)
    torch.testing.assert_close(terms["sum_{t=0}^{T-1} log p(x|x_prev)"], -expected.mean())


def test_mask_per_step_and_per_feature_step_loss():
    torch.manual_seed(1)
    p = Normal(var=["x"], cond_var=["x_prev"], loc="x_prev", scale=1.0)
    x, x0 = torch.randn(4, 2, 3), torch.randn(2, 3)
    w = torch.tensor([1.0, 0.5, 0.0, 2.0])
    # one weight per step on a step loss reduced over the batch
    loss = IterativeLoss(-LogProb(p).mean(), series_var=["x"], update_value={"x": "x_prev"})
    expected = (_masked_loop(x, x0, w[:, None].expand(4, 2))).mean()
    torch.testing.assert_close(loss.eval({"x": x, "x_prev": x0}, mask=w), expected)
    # a per-row mask on a per-feature step loss (N, D) weights each row's features
    per_feature = IterativeLoss(-LogProb(p, sum_features=False), series_var=["x"], update_value={"x": "x_prev"})
    mask = torch.tensor([[1., 1.], [1., 0.], [0., 1.], [1., 1.]])
    got = per_feature.eval({"x": x, "x_prev": x0}, mask=mask)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got.sum(-1), _masked_loop(x, x0, mask))


def test_mask_with_max_iter_takes_the_series_length():
    p = Normal(var=["x"], cond_var=["x_prev"], loc="x_prev", scale=1.0)
    loss = IterativeLoss(-LogProb(p), max_iter=3, series_var=["x"], update_value={"x": "x_prev"})
    x, x0 = torch.randn(5, 2, 3), torch.randn(2, 3)
    mask = torch.ones(5, 2)
    mask[1, 0] = 0.0
    torch.testing.assert_close(loss.eval({"x": x, "x_prev": x0}, mask=mask), _masked_loop(x[:3], x0, mask))


@pytest.mark.parametrize("mask, error, match", [
    (torch.ones(4, 2), ValueError, r"mask of shape \(4, 2\) has 4 steps along dim 0, expected the series' 5"),
    (torch.ones(5, 3), ValueError, r"mask of shape \(5, 3\) has 3 rows, but the series x of shape \(5, 2, 3\) has 2"),
    (torch.ones(5, 2, 1), ValueError, r"mask must be \(T,\) .* or \(T, N\) .* got shape \(5, 2, 1\)"),
    ([[1.0, 1.0]] * 5, TypeError, r"mask must be a tensor of step weights, \(T,\) or \(T, N\), got list"),
])
def test_mask_shape_errors(mask, error, match):
    _, loss = _random_walk()
    with pytest.raises(error, match=match):
        loss.eval({"x": torch.zeros(5, 2, 3), "x_prev": torch.zeros(2, 3)}, mask=mask)


def test_mask_rows_checked_against_the_step_loss():
    # no series to count the rows: a step given its rows by max_iter and a carried value
    p = Normal(var=["x"], cond_var=["x_prev"], loc="x_prev", scale=1.0)
    loss = IterativeLoss(Expectation(p, LogProb(p)), max_iter=3, update_value={"x": "x_prev"})
    with pytest.raises(ValueError, match=r"mask has 4 rows per step, but the step loss E_\{p\(x\|x_prev\)\}.* has 2"):
        loss.eval({"x_prev": torch.zeros(2, 3)}, mask=torch.ones(3, 4))


def test_mask_time_major_given_to_batch_first_is_refused():
    p = Normal(var=["x"], cond_var=["x_prev"], loc="x_prev", scale=1.0)
    loss = IterativeLoss(-LogProb(p), series_var=["x"], update_value={"x": "x_prev"}, series_dim=1)
    with pytest.raises(ValueError, match=r"has 2 steps along dim 1, expected the series' 5 \(shape \(T,\) or \(N, T\)"):
        loss.eval({"x": torch.zeros(2, 5, 3), "x_prev": torch.zeros(2, 3)}, mask=torch.ones(5, 2))


# ------------------------------------------------------------------ empty batches
def test_batch_mean_of_an_empty_batch_is_refused():
    qz = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p0")
    px = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    vae = (KullbackLeibler(qz, prior) - Expectation(qz, LogProb(px))).mean()
    with pytest.raises(ValueError, match=r"the loss mean\(KL\[q\(z\|x\)\|\|p0\(z\)\] - .*shape \(0,\), an empty batch"):
        vae.eval({"x": torch.zeros(0, 3)})
    assert torch.isfinite(vae.eval({"x": torch.zeros(2, 3)}))  # (guard: a batch with rows)


def test_iterative_loss_over_an_empty_batch_is_refused():
    p = Normal(var=["x"], cond_var=["x_prev"], loc="x_prev", scale=1.0)
    loss = IterativeLoss(-LogProb(p).mean(), series_var=["x"], update_value={"x": "x_prev"})
    with pytest.raises(ValueError, match=r"mean\(log p\(x\|x_prev\)\).*shape \(0,\), an empty batch"):
        loss.eval({"x": torch.zeros(5, 0, 3), "x_prev": torch.zeros(0, 3)})


def test_zero_rows_given_are_the_batch_not_another_values_rows():
    qz = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    px = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    # an unrelated value with 4 rows made the draw ask for 4 rows of q(z|x) ("batch_n=4 but ... batch size 0")
    value = Expectation(qz, LogProb(px)).eval({"x": torch.zeros(0, 3), "y": torch.zeros(4, 3)})
    assert value.shape == (0,)
    p = Normal(var=["x"], cond_var=["a"], loc="a", scale=1.0)
    q = Normal(var=["x"], cond_var=["b"], loc="b", scale=1.0)
    for options in ({}, {"sample_mean": True}):  # MMD's own check is reached (was "batch_n=7" / a raw expand error)
        with pytest.raises(ValueError, match=r"no rows to compare \(draws of shapes \(0, 3\) and \(7, 3\)\)"):
            MMD(p, q).eval({"a": torch.zeros(0, 3), "b": torch.zeros(7, 3)}, **options)


# ------------------------------------------------------------------ argument checks
def _p():
    return Normal(var=["x"], cond_var=["a"], loc="a", scale=1.0)


@pytest.mark.parametrize("build, match", [
    (lambda: MMD(_p(), "q"), r"MMD: q must be a kizuna distribution, got str 'q'"),
    (lambda: MMD(_p(), nn.Linear(2, 2)), r"MMD: q must be a kizuna distribution, got Linear"),
    (lambda: WassersteinDistance(_p(), "q"), r"WassersteinDistance: q must be a kizuna distribution, got str"),
    (lambda: ContrastiveDivergence("p", None), r"ContrastiveDivergence: p must be a kizuna distribution, got str"),
    (lambda: ScoreMatchingError("s"), r"ScoreMatchingError: score must be a kizuna distribution, got str"),
    (lambda: SlicedScoreError(nn.Linear(2, 2)), r"SlicedScoreError: score must be a kizuna distribution, got Linear"),
    (lambda: DenoisingScoreError(_p(), "q"), r"DenoisingScoreError: noise must be a kizuna distribution, got str"),
    (lambda: sliced_score_matching(_p(), "v"), r"sliced_score_matching: projection must be a kizuna distribution"),
    (lambda: VQCommitment(_p()), r"VQCommitment: q must be a kizuna VectorQuantizer .* got Normal p\(x\|a\)"),
])
def test_losses_refuse_what_is_not_a_distribution(build, match):
    with pytest.raises(TypeError, match=match):
        build()


# ------------------------------------------------------------------ IterativeLoss's draws over time
@pytest.mark.parametrize("series_dim", [0, 1])
def test_several_draws_per_row_are_stacked_after_the_draws_dimension(series_dim):
    torch.manual_seed(2)
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    step = Expectation(q, LogProb(lik), sample_shape=(4,)).mean()
    x = torch.randn(2, 5, 3) if series_dim == 1 else torch.randn(5, 2, 3)
    _, d = IterativeLoss(step, series_var=["x"], series_dim=series_dim).eval({"x": x}, return_dict=True,
                                                                              sample_mean=True)
    # each draw is q's mean, x_t: draws first, then the series' own layout
    assert d["z"].shape == (4, *x.shape)
    torch.testing.assert_close(d["z"], x.expand(4, *x.shape))


@pytest.mark.parametrize("series_dim", [0, 1])
@pytest.mark.parametrize("rows, features", [(4, 3), (2, 2)])  # (2, 2): as many rows and features as draws
@pytest.mark.parametrize("multi_last", [False, True])
def test_a_variable_drawn_once_and_several_times_per_step_is_stacked_as_its_recorded_draw(series_dim, rows, features,
                                                                                        multi_last):
    # z is drawn twice per row by one term and once by the other: the step records the later draw, (2, N, D) or
    # (N, D), and the steps are stacked in that draw's layout (a single draw was stacked as (N, T, D) time-major)
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, features_shape=[features], name="q")
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, features_shape=[features])
    several, once = Expectation(q, LogProb(lik), sample_shape=(2,)), Expectation(q, LogProb(lik))
    step = once + several if multi_last else several + once
    x = torch.randn(rows, 5, features) if series_dim == 1 else torch.randn(5, rows, features)
    _, d = IterativeLoss(step, series_var=["x"], series_dim=series_dim).eval({"x": x}, return_dict=True,
                                                                              sample_mean=True)
    # each draw is q's mean, x_t: laid out as the series, after the draws dimension when there is one
    ref = x.expand(2, *x.shape) if multi_last else x
    assert d["z"].shape == ref.shape
    torch.testing.assert_close(d["z"], ref)


def test_iwae_draws_cannot_be_carried():
    q = Normal(var=["z"], cond_var=["x", "z_prev"], loc="z_prev", scale=1.0, name="q")
    prior = Normal(var=["z"], cond_var=["z_prev"], loc="z_prev", scale=1.0, name="p_prior")
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    with pytest.raises(ValueError, match=r"draws z 5 times per row \(IWAE's k=5\), but update_value carries it"):
        IterativeLoss(IWAE(lik * prior, q, k=5).mean(), series_var=["x"], update_value={"z": "z_prev"})
    # (guard) one draw per row is carried
    loss = IterativeLoss(IWAE(lik * prior, q, k=1).mean(), series_var=["x"], update_value={"z": "z_prev"})
    assert torch.isfinite(loss.eval({"x": torch.randn(4, 2, 3), "z_prev": torch.zeros(2, 3)}))
