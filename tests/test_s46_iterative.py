"""`IterativeLoss` (stop 46, review R9): a carried draw of a `MixtureOfNormal` with learnable weights gives the later
steps' costs the weights' score term (F1), and the evaluation option ``mask`` inside an expectation with several draws
per row is repeated as the values are, a time-major series too (F2).

References: F1, the closed form of a random walk with mixture increments (its gradient by autograd); F2, the
documented workaround (the mask as a series, ``step * Parameter("m")``), and the batch-first layout for the
time-major one.
"""

import math

import pytest
import torch
from mc_reference import default_dtype
from torch import nn

from kizuna.distributions import MixtureOfNormal, Normal
from kizuna.losses import Expectation, IterativeLoss, KullbackLeibler, LogProb, Parameter

MU, S = (-1.0, 3.0), 0.5  # the experts' increments and scale: z_t = z_{t-1} + m_t + S e_t, m_t in MU


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


class Expert(Normal):
    def __init__(self, mu, learn=False):
        super().__init__(var=["z"], cond_var=["z_prev"], name="q")
        self.mu = nn.Parameter(torch.tensor(mu)) if learn else mu

    def forward(self, z_prev):
        return {"loc": z_prev + self.mu, "scale": torch.full_like(z_prev, S)}


def _walk(weights, t_max, learn=False, renamed=False):
    q = MixtureOfNormal([Expert(MU[0], learn), Expert(MU[1], learn)], weights=weights, name="q")
    if renamed:  # the mixture renamed (a single factor wrapping it): z -> u
        return q, IterativeLoss(Expectation(q.replace_var(z="u", z_prev="u_prev"), Parameter("u") ** 2),
                                max_iter=t_max, update_value={"u": "u_prev"})
    return q, IterativeLoss(Expectation(q, Parameter("z") ** 2), max_iter=t_max, update_value={"z": "z_prev"})


def _closed_form_grad(w0, t_max):
    """d/dw of sum_t E[z_t^2] = sum_t t (E m^2 - (E m)^2 + S^2) + (t E m)^2 (z_0 = 0), the weights normalised."""
    w = torch.tensor(w0, requires_grad=True)
    pi, mu = w / w.sum(), torch.tensor(MU)
    mean, second = (pi * mu).sum(), (pi * mu ** 2).sum()
    loss = sum(t * (second - mean ** 2 + S ** 2) + (t * mean) ** 2 for t in range(1, t_max + 1))
    return torch.autograd.grad(loss, w)[0]


@pytest.mark.parametrize(("t_max", "renamed"), [(2, False), (3, False), (3, True)])
def test_carried_mixture_weights_gradient_matches_closed_form(t_max, renamed):
    """The choice of expert at step s changes every later step's cost through the carried z: the weights' gradient
    is sum_t E[f_t sum_{s<=t} grad log q(z_s)] (it was 58% / 41% of the exact one at T=2 / 3: the later steps' terms
    were dropped)."""
    w0, rows, seeds = [1.0, 2.0], 1000, 20  # the gradient of a row has sd 13 (T=2), 42 (T=3)
    w = nn.Parameter(torch.tensor(w0))
    loss = _walk(w, t_max, renamed=renamed)[1].mean()
    grads = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        grads.append(torch.autograd.grad(loss.eval({"u_prev" if renamed else "z_prev": torch.zeros(rows, 1)}), w)[0])
    g = torch.stack(grads)
    mean, se = g.mean(0), g.std(0) / math.sqrt(seeds)
    exact = _closed_form_grad(w0, t_max)
    assert ((mean - exact).abs() < 5 * se).all(), (mean.tolist(), se.tolist(), exact.tolist())


def test_has_learnable_weights():
    from kizuna.distributions.moe import has_learnable_weights

    fixed, learnable = _walk([1.0, 2.0], 2)[0], _walk(nn.Parameter(torch.tensor([1.0, 2.0])), 2)[0]
    other = Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0)
    assert not has_learnable_weights(fixed) and not has_learnable_weights(other * fixed)
    assert has_learnable_weights(learnable) and has_learnable_weights(other * learnable)
    assert has_learnable_weights(learnable.replace_var(z="u"))  # a renamed mixture (a single factor wrapping it)


@pytest.mark.parametrize("weights", ["fixed", "frozen"])
def test_mixture_without_learnable_weights_unchanged(weights):
    """Fixed weights (a buffer) switch nothing on; frozen ones (a Parameter without grad) record no score: the value
    and the experts' gradients are those of the loss without the carried scores, bit for bit."""
    w = [1.0, 2.0] if weights == "fixed" else nn.Parameter(torch.tensor([1.0, 2.0]), requires_grad=False)
    q, it = _walk(w, 3, learn=True)
    assert it._scoring is (weights == "frozen")
    params = [q.p[0].mu, q.p[1].mu]
    results = []
    for scoring in (it._scoring, False):
        it._scoring = scoring
        torch.manual_seed(0)
        value = it.mean().eval({"z_prev": torch.zeros(50, 1)})
        results.append((value, *torch.autograd.grad(value, params)))
    assert all(torch.equal(a, b) for a, b in zip(*results))


# F2: a sequence model with a per-sequence global latent w averaged over K draws (N=3 rows of lengths 4, 2, 1)
class _Qz(Normal):
    def __init__(self):
        super().__init__(var=["z"], cond_var=["z_prev", "w", "x"], name="q")

    def forward(self, z_prev, w, x):
        return {"loc": 0.5 * z_prev + w + 0.1 * x, "scale": torch.full_like(z_prev, 0.3)}


class _Pz(Normal):
    def __init__(self):
        super().__init__(var=["z"], cond_var=["z_prev"], name="p")

    def forward(self, z_prev):
        return {"loc": 0.9 * z_prev, "scale": torch.ones_like(z_prev)}


def _nested(series_dim, masked_series, k):
    q, pz = _Qz(), _Pz()
    px = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, name="p")
    qw = Normal(var=["w"], cond_var=["c"], loc="c", scale=1.0, name="r")
    step = KullbackLeibler(q, pz) - Expectation(q, LogProb(px))  # per row
    if masked_series:
        step = step * Parameter("m")
    series = ["x", "m"] if masked_series else ["x"]
    inner = IterativeLoss(step, series_var=series, update_value={"z": "z_prev"}, series_dim=series_dim)
    return Expectation(qw, inner, sample_shape=(k,))


def _nested_data(series_dim):
    n, t_max = 3, 4
    torch.manual_seed(1)
    x, c = torch.randn(n, t_max, 1), torch.randn(n, 1)
    m = torch.tensor([[t < length for t in range(t_max)] for length in [4, 2, 1]])
    if series_dim == 0:  # time-major
        x, m = x.transpose(0, 1).contiguous(), m.T.contiguous()
    return {"x": x, "z_prev": torch.zeros(n, 1), "c": c}, m


@pytest.mark.parametrize("series_dim", [1, 0])
def test_mask_inside_expectation_with_several_draws(series_dim):
    """``mask=`` weighs each of a row's K draws as it weighs the row: the documented workaround's value. Batch-first,
    it was refused ("the series x of shape (15, 4, 1) has 15" rows); time-major, the series was repeated along time
    (20 steps, then a shape error, the workaround too)."""
    data, m = _nested_data(series_dim)
    torch.manual_seed(0)
    reference = _nested(series_dim, True, 5).eval({**data, "m": m.double()})
    torch.manual_seed(0)
    value = _nested(series_dim, False, 5).eval(data, mask=m)
    assert torch.allclose(value, reference, rtol=1e-12, atol=0)
    if series_dim == 0:  # the same draws as batch-first: the same numbers
        data1, m1 = _nested_data(1)
        torch.manual_seed(0)
        assert torch.allclose(value, _nested(1, False, 5).eval(data1, mask=m1), rtol=1e-12, atol=0)


def test_time_major_series_of_one_row_inside_expectation_with_several_draws():
    """One sequence (N=1), time-major, inside 5 draws per row: the series was read as 5*T steps of one row (broadcast
    against the 5 draws), a sum of 20 steps instead of 4, silently; now its value is the batch-first one's."""
    data, _ = _nested_data(0)
    data0 = {"x": data["x"][:, :1], "z_prev": data["z_prev"][:1], "c": data["c"][:1]}
    data1 = {**data0, "x": data0["x"].transpose(0, 1).contiguous()}
    values = []
    for series_dim, d in ((0, data0), (1, data1)):
        torch.manual_seed(0)
        values.append(_nested(series_dim, False, 5).eval(d))
    assert torch.allclose(values[0], values[1], rtol=1e-12, atol=0)


def test_mask_of_wrong_rows_inside_expectation_names_the_copies():
    data, m = _nested_data(1)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4\) has 2 rows, but the series x of shape \(15, 4, 1\) "
                                         r"has 15: 3 rows repeated for the 5 draws per row of an enclosing "
                                         r"expectation; give the mask one row per row of the batch"):
        _nested(1, False, 5).eval(data, mask=m[:2])
