"""MixtureModel and its posterior against scipy densities, Bayes' rule and sampling statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from torch import nn

from kizuna.distributions import (
    Categorical,
    Dirichlet,
    Laplace,
    MixtureModel,
    MixturePosterior,
    Normal,
    RelaxedCategorical,
)

F64 = torch.float64
LOC_N, SCALE_N = np.array([-1.0, 0.5, 2.0]), np.array([0.7, 1.3, 2.0])
LOC_L, SCALE_L = np.array([1.5, -0.5, 0.0]), np.array([0.4, 1.1, 0.9])
PI = np.array([0.3, 0.7])


def t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=F64)


def make_mixture(logits: torch.Tensor | None = None) -> MixtureModel:
    normal = Normal(var=["x"], loc=t(LOC_N), scale=t(SCALE_N))
    laplace = Laplace(var=["x"], loc=t(LOC_L), scale=t(SCALE_L))
    prior = Categorical(var=["z"], logits=logits) if logits is not None else Categorical(var=["z"], probs=t(PI))
    return MixtureModel([normal, laplace], prior)


def reference_joint(x: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """log pi_k + log p_k(x), shape (batch, 2), from scipy."""
    ln = stats.norm.logpdf(x, LOC_N, SCALE_N).sum(-1)
    ll = stats.laplace.logpdf(x, LOC_L, SCALE_L).sum(-1)
    return np.log(pi) + np.stack([ln, ll], -1)


def test_log_prob_matches_scipy_logsumexp() -> None:
    x = np.random.default_rng(0).normal(size=(6, 3)) * 2
    lp = make_mixture().get_log_prob({"x": t(x)})
    assert lp.shape == (6,)
    np.testing.assert_allclose(lp.numpy(), logsumexp(reference_joint(x, PI), -1), rtol=1e-12)


class CondPrior(Categorical):
    """p(z|y): logits linear in y (batch, 1)."""

    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["y"])
        self.w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))

    def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": y * self.w}


def test_conditional_components_and_prior() -> None:
    comp0 = Normal(var=["x"], cond_var=["y"], loc="y", scale=t(np.ones(3)))
    comp1 = Laplace(var=["x"], loc=t(LOC_L), scale=t(SCALE_L))
    p = MixtureModel([comp0, comp1], CondPrior())
    assert p.cond_var == ["y"] and p.input_var == ["y"]
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 1))
    logits = y * np.array([1.0, -2.0])
    log_pi = logits - logsumexp(logits, -1, keepdims=True)
    ref = log_pi + np.stack([stats.norm.logpdf(x, y, 1.0).sum(-1),
                             stats.laplace.logpdf(x, LOC_L, SCALE_L).sum(-1)], -1)
    lp = p.get_log_prob({"x": t(x), "y": t(y)})
    np.testing.assert_allclose(lp.detach().numpy(), logsumexp(ref, -1), rtol=1e-12)
    assert p.sample({"y": t(y)})["x"].shape == (5, 3)


def test_posterior_is_bayes_rule() -> None:
    x = np.random.default_rng(2).normal(size=(7, 3))
    joint = reference_joint(x, PI)
    post = np.exp(joint - logsumexp(joint, -1, keepdims=True))
    q = make_mixture().posterior()
    assert isinstance(q, MixturePosterior) and q.var == ["z"] and q.cond_var == ["x"]
    np.testing.assert_allclose(q.get_params({"x": t(x)})["probs"].numpy(), post, rtol=1e-10)
    np.testing.assert_allclose(q.sample_mean({"x": t(x)}).numpy(), post, rtol=1e-10)
    z = np.eye(2)[[0, 1, 1, 0, 1, 0, 0]]
    lp = q.get_log_prob({"x": t(x), "z": t(z)})
    np.testing.assert_allclose(lp.numpy(), np.log((post * z).sum(-1)), rtol=1e-10)
    assert q.sample({"x": t(x)})["z"].sum(-1).eq(1).all()


def test_component_frequencies_chi_square() -> None:
    torch.manual_seed(0)
    n = 20000
    far = MixtureModel([Normal(var=["x"], loc=t([-50.0]), scale=t([1.0])),
                        Normal(var=["x"], loc=t([50.0]), scale=t([1.0]))], Categorical(var=["z"], probs=t(PI)))
    out = far.sample_with_hidden(batch_n=n)
    counts = out["z"].sum(0).numpy()
    assert stats.chisquare(counts, n * PI).pvalue > 1e-3  # false alarm 1e-3
    # the draw comes from the chosen component: the sign gives the component away
    assert torch.equal((out["x"][:, 0] > 0).long(), out["z"].argmax(-1))


def test_sample_mean_and_variance_closed_form() -> None:
    torch.manual_seed(1)
    p = make_mixture()
    mean = PI[0] * LOC_N + PI[1] * LOC_L
    second = PI[0] * (SCALE_N**2 + LOC_N**2) + PI[1] * (2 * SCALE_L**2 + LOC_L**2)
    var = second - mean**2
    np.testing.assert_allclose(p.sample_mean().numpy()[0], mean, rtol=1e-12)
    np.testing.assert_allclose(p.sample_variance().numpy()[0], var, rtol=1e-12)
    n = 40000
    x = p.sample(batch_n=n)["x"].numpy()
    se = np.sqrt(var / n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se)  # 5 standard errors per feature


def test_shapes_text_and_no_reparam() -> None:
    p = make_mixture()
    assert p.sample(batch_n=4, sample_shape=(2,))["x"].shape == (2, 4, 3)
    assert not p.has_reparam and p.hidden_var == ["z"]
    assert str(p) == "p(x) = sum_{z} p(z)p(x|z)"
    assert p.to_latex() == r"p(x) = \sum_{z} p(z)p(x|z)"
    assert p.replace_var(x="w").prob_factorized_text == "sum_{z} p(z)p(w|z)"
    joint = p * Normal(var=["y"], cond_var=["x"], loc="x", scale=1.0)
    assert joint.prob_factorized_text == "(sum_{z} p(z)p(x|z))p(y|x)"  # the sum's scope is bracketed
    with pytest.raises(ValueError, match="reparam"):
        p.sample(batch_n=2, reparam=True)
    with pytest.raises(ValueError, match="sum_features"):
        p.get_log_prob({"x": torch.zeros(2, 3, dtype=F64)}, sum_features=False)


def test_gradients_reach_components_and_prior() -> None:
    loc = nn.Parameter(t(LOC_N))
    logits = nn.Parameter(torch.zeros(2, dtype=F64))
    p = MixtureModel([Normal(var=["x"], loc=loc, scale=t(SCALE_N)),
                      Laplace(var=["x"], loc=nn.Parameter(t(LOC_L)), scale=t(SCALE_L))],
                     Categorical(var=["z"], logits=logits))
    p.get_log_prob({"x": torch.randn(5, 3, dtype=F64)}).sum().backward()
    for name, param in p.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_errors() -> None:
    prior = Categorical(var=["z"], probs=t(PI))
    with pytest.raises(ValueError, match=r"p\(x\).*\['x'\].*p\(y\).*\['y'\]"):
        MixtureModel([Normal(var=["x"], loc=0.0, scale=1.0), Normal(var=["y"], loc=0.0, scale=1.0)], prior)
    with pytest.raises(ValueError, match="3 components"):
        MixtureModel([Normal(var=["x"], loc=0.0, scale=1.0)] * 3, prior)
    with pytest.raises(ValueError, match="must not condition"):
        MixtureModel([Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)] * 2, prior)


def test_sample_shape_draws_score_per_draw_against_scipy() -> None:
    """x of shape (S, B, 3): logsumexp over the components per draw, then the sum over the batch rows (Pixyz's
    default) — not a logsumexp of log-densities already summed over the rows (the old, wrong value)."""
    x = np.random.default_rng(3).normal(size=(2, 4, 3)) * 2
    p = make_mixture()
    per_draw = logsumexp(reference_joint(x, PI), -1)  # (2, 4), scipy
    np.testing.assert_allclose(p.get_log_prob({"x": t(x)}).numpy(), per_draw.sum(1), rtol=1e-12)
    np.testing.assert_allclose(p.get_log_prob({"x": t(x)}, feature_dims=[2]).numpy(), per_draw, rtol=1e-12)
    np.testing.assert_allclose(p.get_log_prob({"x": t(x)}, feature_dims=[-1, 1]).numpy(), per_draw.sum(1),
                               rtol=1e-12)
    np.testing.assert_allclose(p.joint_log_prob({"x": t(x)}).numpy(), reference_joint(x, PI), rtol=1e-12)
    with pytest.raises(ValueError, match=r"does not factorise over the features of x: feature_dims=\[\] must "
                                         r"include its feature dimensions \[2\]"):
        p.get_log_prob({"x": t(x)}, feature_dims=[])
    with pytest.raises(ValueError, match=r"out of range"):
        p.get_log_prob({"x": t(x)}, feature_dims=[3])
    with pytest.raises(ValueError, match=r"use sum_features=True, with feature_dims=\[2\]"):
        p.get_log_prob({"x": t(x)}, sum_features=False)


def test_sample_shape_draws_of_a_scalar_mixture_and_conditional_components() -> None:
    """A scalar variable: feature_dims=[] gives one value per draw (the porting doc's promise); conditional
    components broadcast their (B, 3) parameters against (S, B, 3) draws."""
    one = torch.ones((), dtype=F64)  # a scalar variable, parameters in float64
    comps = [Normal(var=["x"], loc=-2.0 * one, scale=one), Normal(var=["x"], loc=2.0 * one, scale=1.5 * one)]
    p = MixtureModel(comps, Categorical(var=["z"], probs=t(PI)))
    x = np.random.default_rng(4).normal(size=(3, 5)) * 2
    ref = logsumexp(np.log(PI) + np.stack([stats.norm.logpdf(x, -2, 1), stats.norm.logpdf(x, 2, 1.5)], -1), -1)
    np.testing.assert_allclose(p.get_log_prob({"x": t(x)}, feature_dims=[]).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(p.get_log_prob({"x": t(x)}, sum_features=False).numpy(), ref, rtol=1e-12)
    # without feature_dims, number constants say nothing of the features: each row is one draw with 5 features, as a
    # plain family scores it (a scalar variable's sample_shape draws need feature_dims=[] or features_shape)
    rows = logsumexp(np.log(PI) + np.stack([stats.norm.logpdf(x, -2, 1).sum(1), stats.norm.logpdf(x, 2, 1.5).sum(1)],
                                           -1), -1)
    np.testing.assert_allclose(p.get_log_prob({"x": t(x)}).numpy(), rows, rtol=1e-12)

    comp0 = Normal(var=["x"], cond_var=["y"], loc="y", scale=t(np.ones(3)))
    q = MixtureModel([comp0, Laplace(var=["x"], loc=t(LOC_L), scale=t(SCALE_L))], Categorical(var=["z"], probs=t(PI)))
    rng = np.random.default_rng(5)
    y, xs = rng.normal(size=(4, 3)), rng.normal(size=(2, 4, 3))
    joint = np.log(PI) + np.stack([stats.norm.logpdf(xs, y, 1.0).sum(-1),
                                   stats.laplace.logpdf(xs, LOC_L, SCALE_L).sum(-1)], -1)
    np.testing.assert_allclose(q.get_log_prob({"x": t(xs), "y": t(y)}).numpy(), logsumexp(joint, -1).sum(1),
                               rtol=1e-12)


def test_sample_shape_without_batch_n_draws_one_row_per_draw() -> None:
    """sample(sample_shape=[n]) with nothing fixing the batch: (n, 1, 3) as a plain family gives (it drew one row
    and failed to reshape it), n independent draws with the mixture's mean and variance (closed form)."""
    p = make_mixture()
    assert p.sample(sample_shape=[4])["x"].shape == Normal(var=["x"], loc=t(LOC_N), scale=1.0).sample(
        sample_shape=[4])["x"].shape == (4, 1, 3)
    torch.manual_seed(0)
    n = 40000
    x = p.sample(sample_shape=[n])["x"].reshape(n, 3).numpy()
    mean = PI[0] * LOC_N + PI[1] * LOC_L
    second = PI[0] * (SCALE_N**2 + LOC_N**2) + PI[1] * (2 * SCALE_L**2 + LOC_L**2)
    var = second - mean**2
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(0) / var - 1) < 0.05)


def test_prior_must_be_a_categorical() -> None:
    comps = [Normal(var=["x"], loc=0.0, scale=1.0), Normal(var=["x"], loc=1.0, scale=1.0)]
    for prior in (Normal(var=["z"], loc=torch.zeros(2, dtype=F64), scale=1.0),
                  Dirichlet(var=["z"], concentration=torch.ones(2, dtype=F64))):
        with pytest.raises(ValueError, match=r"prior must be a Categorical .* got (Normal|Dirichlet) p\(z\).*"
                                             "not be normalised"):
            MixtureModel(comps, prior)
    # a RelaxedCategorical scores one-hot vectors as a Categorical: a normalised mixture (scipy)
    p = MixtureModel(comps, RelaxedCategorical(var=["z"], probs=t(PI)))
    x = np.linspace(-2, 2, 5)
    ref = logsumexp(np.log(PI) + np.stack([stats.norm.logpdf(x, 0, 1), stats.norm.logpdf(x, 1, 1)], -1), -1)
    np.testing.assert_allclose(p.get_log_prob({"x": t(x)}).numpy(), ref, rtol=1e-12)


def test_a_conditional_components_network_runs_once_per_log_density() -> None:
    """The per-draw scoring reads a conditional component's feature count from its parameters: shared with the
    density (it ran every component's network three times per direct get_log_prob, twice before that change)."""
    calls = []

    class Component(Normal):
        def __init__(self, i: int) -> None:
            super().__init__(var=["x"], cond_var=["h"], name=f"p_{i}")
            self.lin = nn.Linear(2, 4)

        def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
            calls.append(self)
            loc, s = self.lin(h).chunk(2, -1)
            return {"loc": loc, "scale": s.exp()}

    mix = MixtureModel([Component(0), Component(1)], Categorical(var=["z"], probs=torch.ones(2) / 2))
    h, x = torch.randn(5, 2), torch.randn(5, 2)
    lp = mix.get_log_prob({"x": x, "h": h})
    assert len(calls) == 2
    comps = [torch.distributions.Normal(**c.forward(h)).log_prob(x).sum(-1) for c in mix.distributions]
    torch.testing.assert_close(lp, torch.logsumexp(torch.stack(comps, -1) + math.log(0.5), -1))


def test_components_with_scalar_constants_score_rows_of_features() -> None:
    """Components whose constants are numbers (no features_shape) broadcast against rows of features: the feature
    count is unknown, so each row is one draw (the per-draw scoring took every entry for a draw: -4.803 where scipy
    gives -3.450); and a posterior far in a tail is exact (it read the probabilities its get_params presents, which
    torch clamps: -15.94 where Bayes' rule gives -1600)."""
    comps = [Normal(var=["x"], loc=0.0, scale=1.0, name="p_0"), Normal(var=["x"], loc=3.0, scale=1.0, name="p_1")]
    mix = MixtureModel(comps, Categorical(var=["z"], probs=torch.tensor([0.5, 0.5])))
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 1.5]], dtype=torch.float64)
    expected = logsumexp(np.stack([stats.norm.logpdf(x.numpy(), m, 1.0).sum(1) for m in (0.0, 3.0)]) + np.log(0.5), 0)
    np.testing.assert_allclose(mix.get_log_prob({"x": x}).numpy(), expected, rtol=1e-6)
    far = MixtureModel([Normal(var=["x"], loc=torch.zeros(2), scale=1.0, name="p_0"),
                        Normal(var=["x"], loc=torch.full((2,), 40.0), scale=1.0, name="p_1")],
                       Categorical(var=["z"], probs=torch.tensor([0.5, 0.5])))
    post = far.posterior()
    points = torch.tensor([[0.0, 0.0], [40.0, 40.0]])
    wrong = torch.eye(2)[[1, 0]]  # the other component for each point
    torch.testing.assert_close(post.get_log_prob({"x": points, "z": wrong}), torch.tensor([-1600.0, -1600.0]))


def test_return_hidden_of_a_mixture_is_pixyzs():
    """Pixyz's return_hidden: sample adds the component choice, get_log_prob gives log p(x, z = k) of every component
    as (K, batch); both were ignored (log p(x) came back)."""
    import math as _math

    from kizuna.distributions import Categorical, MixtureModel, Normal

    parts = [Normal(var=["y"], loc=float(k), scale=1.0, features_shape=[1]) for k in range(3)]
    mix = MixtureModel(parts, Categorical(var=["z"], probs=torch.full((3,), 1 / 3)))
    out = mix.sample(batch_n=4, return_hidden=True)
    assert sorted(out) == ["y", "z"] and out["z"].shape == (4, 3)
    y = torch.tensor([[0.5]])
    joint = mix.get_log_prob({"y": y}, return_hidden=True)
    expected = torch.tensor([[-0.5 * (0.5 - k) ** 2 - 0.5 * _math.log(2 * _math.pi) + _math.log(1 / 3)]
                             for k in range(3)])
    torch.testing.assert_close(joint, expected)
    torch.testing.assert_close(torch.logsumexp(joint, 0), mix.get_log_prob({"y": y}))
