"""`IterativeLoss`'s per-row ``mask`` for sequences of different lengths (review s44 L, F1).

The mask drops padded steps only from a step loss written per row: the masked loss must equal a hand-written loop
over each sequence's own steps only (torch.distributions, the same draws), whatever the padding holds and however
many padded steps there are. A step loss reduced over the batch inside the step (``.mean()`` / ``.sum()``) has
averaged the padded rows' costs into each step's value; the mask keeps Pixyz's numbers there (the reduced value
times each row's weight) and warns once per `IterativeLoss`.
"""

import warnings

import pytest
import torch
from mc_reference import default_dtype
from test_iterative import SX, SZ, A, C, Emission, Filter, Transition
from torch.distributions import Normal as TNormal
from torch.distributions import kl_divergence

from kizuna.losses import Expectation, IterativeLoss, KullbackLeibler, LogProb

LENGTHS = [5, 3, 1, 5, 2]  # real steps of each sequence; T = 5 without padding


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


def step_per_row(q):
    return KullbackLeibler(q, Transition()) - Expectation(q, LogProb(Emission()))


def padded(extra, fill, seed=0):
    """Sequences x (T×N×1, T = max length + ``extra``), padded with ``fill``, and the mask m (T×N, 1 on real steps)."""
    g = torch.Generator().manual_seed(seed)
    n, steps = len(LENGTHS), max(LENGTHS) + extra
    x = torch.randn(steps, n, 1, generator=g)
    m = torch.arange(steps)[:, None] < torch.tensor(LENGTHS)[None]
    if steps > max(LENGTHS):  # the real part is the same for every padding
        x[:max(LENGTHS)] = torch.randn(max(LENGTHS), n, 1, generator=torch.Generator().manual_seed(seed))
    x[~m] = fill
    return x, m


def noise(steps, n, seed):
    """The standard-normal draws of q at every step, in the order the batched evaluation makes them."""
    torch.manual_seed(seed)
    return [TNormal(torch.zeros(n, 1), torch.ones(n, 1)).rsample() for _ in range(steps)]


def hand_real_steps(q, x, z0, eps):
    """Per sequence: the sum over its own steps only of KL[q||p(z_t|z_{t-1})] - log p(x_t|z_t), row by row."""
    costs = []
    for n, length in enumerate(LENGTHS):
        z_prev, cost = z0[n:n + 1], 0.0
        for t in range(length):
            x_t = x[t, n:n + 1]
            params = q.get_params({"x": x_t, "z_prev": z_prev})
            q_t = TNormal(params["loc"], params["scale"])
            z_t = params["loc"] + eps[t][n:n + 1] * params["scale"]  # (TNormal.rsample's loc + eps * scale)
            kl = kl_divergence(q_t, TNormal(A * z_prev, SZ)).sum(-1)
            cost = cost + kl - TNormal(C * z_t, SX).log_prob(x_t).sum(-1)
            z_prev = z_t
        costs.append(cost)
    return torch.cat(costs)


@pytest.mark.parametrize("series_dim", [0, 1])
def test_a_per_row_step_under_a_mask_counts_each_sequences_own_steps_only(series_dim):
    q = Filter()
    z0 = torch.zeros(len(LENGTHS), 1)
    eps = noise(max(LENGTHS), len(LENGTHS), seed=3)
    x_real, _ = padded(0, 0.0)
    hand = hand_real_steps(q, x_real, z0, eps)
    hand_grads = torch.autograd.grad(hand.mean(), list(q.parameters()))
    loss = IterativeLoss(step_per_row(q), series_var=["x"], update_value={"z": "z_prev"}, series_dim=series_dim)
    for extra in (0, 10):  # padded steps after the longest sequence
        for fill in (0.0, 10.0):
            x, m = padded(extra, fill)
            if series_dim == 1:
                x, m = x.transpose(0, 1), m.T
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a per-row step loss: no warning
                torch.manual_seed(3)
                value = loss.eval({"x": x, "z_prev": z0}, mask=m)
            assert value.shape == (len(LENGTHS),)
            torch.testing.assert_close(value, hand, rtol=1e-12, atol=1e-12)
            grads = torch.autograd.grad(value.mean(), list(q.parameters()))
            for g, h in zip(grads, hand_grads):
                torch.testing.assert_close(g, h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_a_mask_over_a_step_reduced_over_the_batch_warns_once_and_keeps_pixyzs_numbers(reduce):
    q = Filter()
    step = getattr(step_per_row(q), reduce)()
    loss = IterativeLoss(step, series_var=["x"], update_value={"z": "z_prev"})
    x, m = padded(0, 10.0)
    z0 = torch.zeros(len(LENGTHS), 1)
    with pytest.warns(UserWarning) as caught:
        torch.manual_seed(3)
        value = loss.eval({"x": x, "z_prev": z0}, mask=m)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"the step loss {step} is reduced over the batch" in message
    assert "padded rows' costs still enter every row's loss" in message
    assert "Write the step loss per row, without .mean()/.sum() over the batch" in message
    # the numbers stay Pixyz's: step t's batch-reduced cost (padded rows included) times each row's weight
    torch.manual_seed(3)
    z_prev, pixyz = z0, 0.0
    for t, x_t in enumerate(x):
        params = q.get_params({"x": x_t, "z_prev": z_prev})
        q_t = TNormal(params["loc"], params["scale"])
        z_t = q_t.rsample()
        cost = kl_divergence(q_t, TNormal(A * z_prev, SZ)).sum(-1) - TNormal(C * z_t, SX).log_prob(x_t).sum(-1)
        pixyz = pixyz + getattr(cost, reduce)() * m[t].double()
        z_prev = z_t
    torch.testing.assert_close(value, pixyz, rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per IterativeLoss
        loss.eval({"x": x, "z_prev": z0}, mask=m)
    with pytest.warns(UserWarning, match="is reduced over the batch"):  # another instance warns again
        IterativeLoss(step, series_var=["x"], update_value={"z": "z_prev"}).eval({"x": x, "z_prev": z0}, mask=m)


def test_no_warning_without_a_mask_or_where_every_row_is_weighed_alike():
    q = Filter()
    loss = IterativeLoss(step_per_row(q).mean(), series_var=["x"], update_value={"z": "z_prev"})
    x, m = padded(0, 0.0)
    z0 = torch.zeros(len(LENGTHS), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss.eval({"x": x, "z_prev": z0})  # no mask
        loss.eval({"x": x, "z_prev": z0}, mask=torch.tensor([1.0, 1.0, 0.5, 0.0, 1.0]))  # (T,): whole steps
        loss.eval({"x": x, "z_prev": z0}, mask=torch.ones_like(m))  # per row, but every row alike
    with pytest.warns(UserWarning, match="is reduced over the batch"):  # (the check was not used up above)
        loss.eval({"x": x, "z_prev": z0}, mask=m)
