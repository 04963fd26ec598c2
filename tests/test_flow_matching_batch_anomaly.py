"""Stop 41 fixes: `FlowMatching` / `DDPM` draws with a context and ``batch_n``, `FlowMatching` scoring its own
``sample_shape`` draws; `anomaly_score` checking every batch's support and taking numpy integers,
`score_bits_per_dim`'s check, `coherence` converting samples for a torch classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from kizuna.distributions import DDPM, DiffusionReverse, DiffusionSchedule, FlowMatching, Normal, Poisson
from kizuna.inference import anomaly_score, coherence
from kizuna.inference.anomaly import score_bits_per_dim
from kizuna.metrics import bits_per_dim, log_likelihood


class _Affine(nn.Module):
    """``v(x, t, c) = a x + c`` (``b`` without a context), float64: the flow ``x_1 = e^a x_0 + c (e^a - 1) / a``,
    so ``x_1 ~ N(c (e^a - 1) / a, e^{2a})`` per feature."""

    def __init__(self, a: float = 0.4, b: float = 0.7) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, *c: torch.Tensor) -> torch.Tensor:
        return self.a * x + (c[0] if c else self.b)


def _closed_form(x: torch.Tensor, shift: torch.Tensor | float, a: float = 0.4) -> np.ndarray:
    """log N(x; shift (e^a - 1) / a, e^{2a}) per entry."""
    mean = np.asarray(shift, dtype=np.float64) * math.expm1(a) / a
    return stats.norm(mean, math.exp(a)).logpdf(x.detach().numpy())


def _flow_matching() -> FlowMatching:
    return FlowMatching(_Affine(), [2], context_var=["c"], n_steps=4, likelihood_steps=20)


def _ddpm() -> DDPM:
    schedule = DiffusionSchedule(DiffusionSchedule.linear(5).betas.double())
    return DDPM(DiffusionReverse(lambda x, t, c: 0.1 * x + c, schedule, context_var=["c"]), [2], noiseless_last=False)


MODELS = {"FlowMatching": (_flow_matching, "x"), "DDPM": (_ddpm, "x_0")}


@pytest.mark.parametrize("which", MODELS)
def test_one_row_of_context_conditions_every_draw(which: str) -> None:
    """batch_n draws from one row of context are the draws from that row repeated batch_n times, noise for noise
    (the context's one row was the number of draws: 1 of 5 asked for); with a sample_shape too."""
    make, var = MODELS[which]
    p = make()
    c = torch.tensor([[3.0, -3.0]], dtype=torch.float64)
    torch.manual_seed(0)
    got = p.sample({"c": c}, batch_n=5)[var]
    torch.manual_seed(0)
    expected = p.sample({"c": c.expand(5, 2).clone()})[var]
    assert got.shape == (5, 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.manual_seed(1)
    got = p.sample({"c": c}, batch_n=5, sample_shape=[4])[var]
    torch.manual_seed(1)
    expected = p.sample({"c": c.expand(20, 2).clone()})[var].reshape(4, 5, 2)
    assert got.shape == (4, 5, 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("which", MODELS)
def test_a_context_of_other_rows_than_batch_n_is_refused(which: str) -> None:
    """3 rows of context with batch_n=5 gave 3 draws silently; the error names both counts (the user's batch_n, not
    batch_n times the sample_shape)."""
    make, var = MODELS[which]
    p = make()
    c = torch.zeros(3, 2, dtype=torch.float64)
    for sample_shape in ([], [4]):
        with pytest.raises(ValueError, match=r"batch_n=5 but the conditioning value c has 3 rows; give one row per "
                                             r"draw, or one row for all"):
            p.sample({"c": c}, batch_n=5, sample_shape=sample_shape)
    assert p.sample({"c": c}, sample_shape=[4])[var].shape == (4, 3, 2)  # the context's rows without batch_n
    assert p.sample({"c": c}, batch_n=3)[var].shape == (3, 2)


def test_flow_matching_scores_its_sample_shape_draws() -> None:
    """Draws of shape (S, B, D) score one value per draw (summed over its rows and features, as every family sums
    them): the closed-form log-density, and the sum of scoring each draw's rows alone (they were refused)."""
    a = 0.4
    p = FlowMatching(_Affine(a), [2], likelihood_steps=20)
    torch.manual_seed(0)
    draws = p.sample(batch_n=3, sample_shape=[4])["x"]
    with torch.no_grad():
        got = p.get_log_prob({"x": draws})
        each = torch.stack([p.get_log_prob({"x": draws[i]}).sum() for i in range(4)])
    assert got.shape == (4,)
    torch.testing.assert_close(got, each, rtol=1e-12, atol=1e-12)
    expected = _closed_form(draws, 0.7, a).reshape(4, -1).sum(1)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_conditional_flow_matching_scores_its_sample_shape_draws_row_by_row() -> None:
    """A context of one row per batch row conditions that row in every draw; one row of context conditions all."""
    a = 0.4
    p = FlowMatching(_Affine(a), [2], context_var=["c"], likelihood_steps=20)
    c = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]], dtype=torch.float64)
    torch.manual_seed(0)
    draws = p.sample({"c": c}, sample_shape=[4])["x"]
    with torch.no_grad():
        got = p.get_log_prob({"x": draws, "c": c})
        each = torch.stack([p.get_log_prob({"x": draws[i], "c": c}).sum() for i in range(4)])
        one = p.get_log_prob({"x": draws, "c": c[:1]})
    torch.testing.assert_close(got, each, rtol=1e-12, atol=1e-12)
    c_np = c.numpy()
    np.testing.assert_allclose(got.numpy(), _closed_form(draws, c_np, a).reshape(4, -1).sum(1), atol=1e-6)
    np.testing.assert_allclose(one.numpy(), _closed_form(draws, c_np[:1], a).reshape(4, -1).sum(1), atol=1e-6)


class _PoissonDecoder(Poisson):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.lin = nn.Linear(2, 3)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"rate": nn.functional.softplus(self.lin(z)) + 0.1}


class _Encoder(Normal):
    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.lin = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, scale = self.lin(x).chunk(2, -1)
        return {"loc": loc, "scale": nn.functional.softplus(scale) + 0.5}


@pytest.mark.parametrize("row", [0, 25])
def test_a_row_outside_the_support_is_refused_in_any_batch(row: int) -> None:
    """A count of 2.5 under a Poisson decoder (p(x) = 0) in the third batch of 10 got a finite, ordinary IWAE score;
    it is refused with the same error as in the first batch, by both methods and by log_likelihood."""
    torch.manual_seed(0)
    p_joint = _PoissonDecoder() * Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    q = _Encoder()
    x = torch.poisson(torch.full((30, 3), 2.0))
    x[row, 1] = 2.5
    messages = set()
    for method in ("iwae", "elbo"):
        with pytest.raises(ValueError, match=r"value of x is outside the support \(IntegerGreaterThan") as err:
            anomaly_score(p_joint, q, {"x": x}, method=method, k=3, batch_size=10)
        messages.add(str(err.value))
    with pytest.raises(ValueError, match="outside the support") as err:
        log_likelihood(p_joint, q, {"x": x}, k=3, batch_size=10)
    messages.add(str(err.value))
    assert len(messages) == 1


def _normal_model() -> tuple:
    """p(x|z) = N(z, 1), p(z) = N(0, 1), q(z|x) = p(z|x) = N(x/2, 1/2): every score is -log N(x; 0, 2) exactly."""

    class Posterior(Normal):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": x / 2, "scale": torch.full_like(x, 0.5 ** 0.5)}

    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    return lik * prior, Posterior(var=["z"], cond_var=["x"], name="q")


def test_anomaly_score_takes_the_integers_log_likelihood_takes() -> None:
    p_joint, q = _normal_model()
    x = torch.tensor([0.0, 4.0, -1.5], dtype=torch.float64)
    expected = -stats.norm(0, math.sqrt(2)).logpdf(x.numpy())
    for method in ("iwae", "elbo"):
        got = anomaly_score(p_joint, q, {"x": x}, method=method, k=np.int64(5), batch_size=np.int32(2),
                            k_chunk=torch.tensor(3))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)  # (a model of no tensors: float32)
    for bad in (True, 2.5, np.int64(0)):
        with pytest.raises(ValueError, match=r"anomaly_score: k must be a positive integer, got"):
            anomaly_score(p_joint, q, {"x": x}, k=bad)


def test_score_bits_per_dim_checks_n_dims_as_bits_per_dim_does() -> None:
    score = torch.tensor([64 * math.log(2), 32 * math.log(2)], dtype=torch.float64)
    for n in (64, np.int64(64), torch.tensor(64)):
        torch.testing.assert_close(score_bits_per_dim(score, n), torch.tensor([1.0, 0.5], dtype=torch.float64))
    for n in (True, 2.5, torch.tensor(True), torch.tensor(2.0), 0, -3):
        with pytest.raises(ValueError, match=r"^score_bits_per_dim needs a positive (integer )?number of dimensions"):
            score_bits_per_dim(score, n)
        with pytest.raises(ValueError, match=r"^bits_per_dim needs a positive (integer )?number of dimensions"):
            bits_per_dim(-score, n)


def test_coherence_gives_a_torch_classifier_its_dtype() -> None:
    """numpy, float64 and float32 samples give a float32 network's accuracy (numpy failed with "must be Tensor",
    float64 with "mat1 and mat2 must have the same dtype"); a float64 network takes float32 samples alike."""
    torch.manual_seed(0)
    x = torch.randn(40, 4)
    for clf in (nn.Linear(4, 3), nn.Linear(4, 3).double()):
        with torch.no_grad():
            predicted = clf(x.to(clf.weight.dtype)).argmax(1)
        labels = predicted.clone()
        labels[::3] = (labels[::3] + 1) % 3  # 14 of 40 wrong
        expected = float((predicted == labels).double().mean())
        assert expected == pytest.approx(26 / 40)
        for samples in (x, x.double(), x.numpy(), x.double().numpy()[:, ::-1][:, ::-1]):
            assert coherence(samples, labels, clf) == expected
