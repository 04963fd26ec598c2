"""A marginal's integrated variable is bound when sampling, and a product scores draws made with a ``sample_shape``
beside values given per row (review of stop 41, findings 1 and 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from kizuna.distributions import Bernoulli, EmpiricalDistribution, JointDistribution, MLPNormal, Normal

N_SE = 5.0  # moment checks at five standard errors
SCALE = 0.5  # x | z ~ N(z, 0.5²), z ~ N(0, 1): p(x) = N(0, 1.25)
F64 = torch.float64


def likelihood() -> Normal:
    return Normal(var=["x"], cond_var=["z"], loc="z", scale=SCALE)


def prior(**kwargs: object) -> Normal:
    return Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior", **kwargs)


def assert_marginal_moments(x: torch.Tensor) -> None:
    """``x`` has the moments of p(x) = N(0, 1 + 0.5²), at five standard errors."""
    n, var = x.numel(), 1.0 + SCALE**2
    assert abs(x.mean().item()) < N_SE * math.sqrt(var / n)
    assert abs(x.var().item() - var) < N_SE * var * math.sqrt(2.0 / (n - 1))


# ---------------------------------------------------------------- finding 1: a marginal's bound variable
class TestMarginalBindsItsVariable:
    N = 20000

    def test_a_value_of_the_integrated_name_given_to_sample_is_not_read(self) -> None:
        m = (likelihood() * prior()).marginalize_var("z")
        z = torch.full((self.N,), 100.0)
        s = m.sample({"z": z}, batch_n=self.N)
        assert s["z"] is z  # returned as given: it is not the marginal's variable
        assert_marginal_moments(s["x"])
        # without batch_n, its rows still size the draw (as any value's rows size a draw of constants)
        assert_marginal_moments(m.sample({"z": z})["x"])
        # the repeated (sample_shape) and the means' paths alike
        x = m.sample({"z": z[:5000]}, sample_shape=(4,))["x"]
        assert x.shape == (4, 5000)
        assert_marginal_moments(x)
        torch.testing.assert_close(m.sample({"z": z[:3]}, sample_mean=True)["x"], torch.zeros(3))

    def test_another_factor_of_a_product_defining_it_does_not_reach_the_marginal(self) -> None:
        r = Normal(var=["z"], loc=100.0, scale=1.0, name="r")
        j = r * (likelihood() * prior()).marginalize_var("z")  # r(z) ∫ p(x|z)p(z)dz: x independent of r's z
        s = j.sample(batch_n=self.N)
        assert abs(s["z"].mean().item() - 100.0) < N_SE / math.sqrt(self.N)
        assert_marginal_moments(s["x"])

    def test_an_aggregate_posterior_still_reads_its_empirical_data(self) -> None:
        """∫ q(z|x) p_data(x) dx: the integrated x is an input (the data), read on purpose."""
        q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1e-3, name="q")
        agg = (q * EmpiricalDistribution(var=["x"])).marginalize_var("x")
        x = torch.tensor([-3.0, 0.0, 5.0])
        z = agg.sample({"x": x}, return_all=False)["z"]
        torch.testing.assert_close(z, x, atol=0.01, rtol=0)
        with pytest.raises(NotImplementedError, match="no closed-form log-density"):
            agg.get_log_prob({"z": z, "x": x})


# ---------------------------------------------------------------- finding 2: rows beside draws
def reference(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """log p(x, z) per entry of the first dimension of ``x`` (``(*sample_shape, B)``): the sum over the others of
    log N(x; z, 0.5²) + log N(z; 0, 1), ``z`` given per row (``(B,)``, counted in every draw)."""
    lik = stats.norm(z, SCALE).logpdf(x).reshape(x.shape[0], -1).sum(1)
    return lik + math.prod(x.shape[1:-1]) * stats.norm(0, 1).logpdf(z).sum()


class TestJointScoresDrawsBesideRows:
    @pytest.mark.parametrize(("sample_shape", "batch"), [((3,), 3), ((3,), 4), ((2, 3), 4), ((5,), 1)])
    def test_a_given_variable_counts_in_every_draw(self, sample_shape: tuple[int, ...], batch: int) -> None:
        j = likelihood() * prior()
        z = torch.randn(batch, dtype=F64)
        s = j.sample({"z": z}, sample_shape=sample_shape)  # z (B,) as given, x (*sample_shape, B)
        assert s["z"] is z and s["x"].shape == (*sample_shape, batch)
        expected = reference(s["x"].numpy(), z.numpy())
        np.testing.assert_allclose(j.get_log_prob(s).numpy(), expected, rtol=1e-10)

    @pytest.mark.parametrize("declared", ["prior", "both"])
    @pytest.mark.parametrize("batch", [2, 4])
    def test_with_features_declared(self, batch: int, declared: str) -> None:
        """``both``: the likelihood declares them too (its parameters, rows of them, read from z, show the draws)."""
        lik = likelihood() if declared == "prior" else Normal(
            var=["x"], cond_var=["z"], loc="z", scale=SCALE, features_shape=[2])
        j = lik * prior(features_shape=[2])
        z = torch.randn(batch, 2, dtype=F64)
        s = j.sample({"z": z}, sample_shape=(2,))
        expected = stats.norm(z.numpy(), SCALE).logpdf(s["x"].numpy()).sum((1, 2)) + stats.norm(0, 1).logpdf(
            z.numpy()).sum()
        np.testing.assert_allclose(j.get_log_prob(s).numpy(), expected, rtol=1e-10)

    def test_the_gradient_of_a_given_rows_factor_counts_every_draw(self) -> None:
        loc = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))
        j = likelihood() * Normal(var=["z"], loc=loc, scale=1.0, name="p_prior")
        z = torch.randn(4, dtype=F64)
        s = j.sample({"z": z}, sample_shape=(3,))
        j.get_log_prob(s).sum().backward()
        torch.testing.assert_close(loc.grad, 3 * (z - 0.3).sum())  # d/dloc Σ_draws Σ_rows log N(z; loc, 1)

    @pytest.mark.parametrize("given", ["none", "x"])
    def test_draws_of_every_factor_are_unchanged(self, given: str) -> None:
        """Every factor with the draws' dimensions (all drawn; x given and z drawn): one value per draw, as before."""
        j = likelihood() * prior()
        x = torch.randn(3)
        s = j.sample({"x": x} if given == "x" else {}, batch_n=3, sample_shape=(3,))  # (float32 draws)
        lp = stats.norm(s["z"].numpy(), SCALE).logpdf(s["x"].numpy()) + stats.norm(0, 1).logpdf(s["z"].numpy())
        np.testing.assert_allclose(j.get_log_prob(s).numpy(), lp.sum(1), rtol=1e-5)

    def test_a_dimension_of_size_one_is_read_against_the_rows(self) -> None:
        """x of (S, 1) against loc read from z of (B,), S == B: each draw is scored against every row, and z counts in
        every draw (the cheap test before the analysis lets no dimension of size 1 through)."""
        j = likelihood() * prior()
        z, x = torch.randn(3, dtype=F64), torch.randn(3, 1, dtype=F64)
        np.testing.assert_allclose(j.get_log_prob({"x": x, "z": z}).numpy(), reference(x.numpy(), z.numpy()),
                                   rtol=1e-10)

    def test_values_given_per_row_skip_the_analysis(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The usual case (every value n rows, no dimension after the first of size n or 1) is the plain sum of the
        factors, without the per-draw analysis, which costs every joint log-density in an ELBO or an M2 step."""
        def analysed(*args: object) -> None:
            raise AssertionError("the per-draw analysis ran")

        class Decoder(Bernoulli):
            def __init__(self) -> None:
                super().__init__(var=["x"], cond_var=["z"], name="p")
                self.net = torch.nn.Linear(8, 6)

            def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
                return {"logits": self.net(z)}

        monkeypatch.setattr(JointDistribution, "_per_draw", analysed)
        dec, pz = Decoder(), Normal(var=["z"], loc=torch.zeros(8), scale=torch.ones(8), name="p_prior")
        values = {"x": (torch.rand(5, 6) > 0.5).float(), "z": torch.randn(5, 8)}
        torch.testing.assert_close((dec * pz).get_log_prob(values),
                                   dec.get_log_prob(values) + pz.get_log_prob(values))

    def test_rows_that_are_not_the_draws_rows_are_refused_by_name(self) -> None:
        j = Normal(var=["x"], cond_var=["c"], loc="c", scale=1.0) * Normal(
            var=["w"], loc=0.0, scale=1.0, features_shape=[2], name="p_w")
        values = {"x": torch.randn(3, 4), "c": torch.randn(4), "w": torch.randn(3, 2)}  # 3 draws of 4 rows; 3 rows
        message = ("p(x,w|c): the log-density of p_{w}(w) has one value per entry of (3,) and that of p(x|c) one per "
                   "entry of (3, 4) (draws, then rows); they cannot be summed per draw (score the factors one by one)")
        with pytest.raises(ValueError) as err:
            j.get_log_prob(values)
        assert str(err.value) == message
        # the same with features declared on the conditional family (its parameters, rows of them, show the draws)
        j = Normal(var=["x"], cond_var=["c"], loc="c", scale=1.0, features_shape=[2]) * Normal(
            var=["w"], loc=0.0, scale=1.0, features_shape=[2], name="p_w")
        with pytest.raises(ValueError) as err:
            j.get_log_prob({"x": torch.randn(3, 4, 2), "c": torch.randn(4, 2), "w": torch.randn(3, 2)})
        assert str(err.value) == message

    @pytest.mark.parametrize("batch", [3, 4])
    def test_one_row_per_draw_conditions_every_row(self, batch: int) -> None:
        """w (3, 1, 2) under a prior with features (2,), beside 3 draws of x given c (B,): one row per draw, as it is
        (at B == 3 it could also be 3 rows of one step each; both readings fit, and the term stays as it was)."""
        j = Normal(var=["x"], cond_var=["c"], loc="c", scale=1.0) * Normal(
            var=["w"], loc=0.0, scale=1.0, features_shape=[2], name="p_w")
        c, x, w = (torch.randn(*shape, dtype=F64) for shape in [(batch,), (3, batch), (3, 1, 2)])
        expected = stats.norm(c.numpy(), 1.0).logpdf(x.numpy()).sum(1) + stats.norm.logpdf(w.numpy()).sum((1, 2))
        np.testing.assert_allclose(j.get_log_prob({"x": x, "c": c, "w": w}).numpy(), expected, rtol=1e-10)

    @pytest.mark.parametrize("batch", [3, 4])
    def test_with_graph_options_as_without(self, batch: int) -> None:
        """Pixyz's graph options (`dist_graph`) score each factor with its own arguments; summed per row, the terms
        are made per draw as without options (S == B was added silently, S != B refused)."""
        j = likelihood() * prior()
        j.graph.set_option(dict(reparam=False), ["x"])  # an option that changes no number
        z = torch.randn(batch, dtype=F64)
        s = j.sample({"z": z}, sample_shape=(3,))
        assert s["z"] is z and s["x"].shape == (3, batch)
        np.testing.assert_allclose(j.get_log_prob(s).numpy(), reference(s["x"].numpy(), z.numpy()), rtol=1e-10)


# ---------------------------------------------------------------- sequences beside per-row values (review diffB1, 1)
DW, DZ, T = 3, 2, 5


def per_row(*parts: np.ndarray) -> np.ndarray:
    """The per-entry log-densities ``parts`` summed per entry of their first dimension, then added."""
    return sum(part.reshape(part.shape[0], -1).sum(1) for part in parts)


def sequence_priors(features: str) -> tuple[Normal, Normal]:
    """N(0, I) priors of a global latent w (features (DW,)) and of per-step latents z (features (DZ,)), the features
    from constant parameters or declared."""
    if features == "constant":
        return (Normal(var=["w"], loc=torch.zeros(DW, dtype=F64), scale=torch.ones(DW, dtype=F64), name="p_w"),
                Normal(var=["z"], loc=torch.zeros(DZ, dtype=F64), scale=torch.ones(DZ, dtype=F64), name="p_z"))
    return (Normal(var=["w"], loc=0.0, scale=1.0, features_shape=[DW], name="p_w"),
            Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[DZ], name="p_z"))


class TestSequencesBesideRows:
    """``(B, T, D)`` values of per-step factors beside ``(B, D)`` values of per-row factors are ``B`` rows, each the
    sum of its steps: a prior's shapes do not tell ``T`` steps from draws, so only a factor whose parameters are read
    from its conditions shows draws (its value with more leading dimensions than they have). They were read as
    ``(B, T)`` draws of rows: refused for B != T, and for B == T the per-row factor summed over the batch in every
    row."""

    @pytest.mark.parametrize("features", ["constant", "declared"])
    @pytest.mark.parametrize("batch", [4, 5])  # B != T, B == T
    def test_a_global_latent_beside_per_step_latents(self, batch: int, features: str) -> None:
        p_w, p_z = sequence_priors(features)
        g = torch.Generator().manual_seed(batch)
        w, z = torch.randn(batch, DW, dtype=F64, generator=g), torch.randn(batch, T, DZ, dtype=F64, generator=g)
        expected = per_row(stats.norm.logpdf(w.numpy()), stats.norm.logpdf(z.numpy()))
        j = p_w * p_z
        np.testing.assert_allclose(j.get_log_prob({"w": w, "z": z}).numpy(), expected, rtol=1e-10)
        j.graph.set_option(dict(reparam=False), ["z"])  # with graph options (an option that changes no number)
        np.testing.assert_allclose(j.get_log_prob({"w": w, "z": z}).numpy(), expected, rtol=1e-10)

    def test_priors_alone_show_no_draws(self) -> None:
        """x (3, 4, 2) beside w (3, 2), both under priors with features (2,): 3 rows of 4 steps, as each factor alone
        reads it (this was refused as 3 draws of 4 rows)."""
        j = Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[2]) * Normal(
            var=["w"], loc=0.0, scale=1.0, features_shape=[2], name="p_w")
        x, w = torch.randn(3, 4, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
        np.testing.assert_allclose(j.get_log_prob({"x": x, "w": w}).numpy(),
                                   per_row(stats.norm.logpdf(x.numpy()), stats.norm.logpdf(w.numpy())), rtol=1e-10)

    @pytest.mark.parametrize("batch", [4, 5])
    def test_draws_beside_a_sequence_count_it_in_every_draw(self, batch: int) -> None:
        """x drawn with sample_shape=(3,) from p(x|z) given z (B, T, DZ): 3 draws of B rows (x has a dimension more
        than its parameters); the given sequence and the global latent count in every draw."""
        p_w, p_z = sequence_priors("constant")
        j = Normal(var=["x"], cond_var=["z"], loc="z", scale=SCALE, name="p_x") * p_z * p_w
        g = torch.Generator().manual_seed(batch)
        w, z = torch.randn(batch, DW, dtype=F64, generator=g), torch.randn(batch, T, DZ, dtype=F64, generator=g)
        s = j.sample({"w": w, "z": z}, sample_shape=(3,))
        assert s["x"].shape == (3, batch, T, DZ)
        given = stats.norm.logpdf(w.numpy()).sum() + stats.norm.logpdf(z.numpy()).sum()
        expected = per_row(stats.norm(z.numpy(), SCALE).logpdf(s["x"].numpy())) + given
        np.testing.assert_allclose(j.get_log_prob(s).numpy(), expected, rtol=1e-10)

    @pytest.mark.parametrize("transition", ["network", "declared"])
    @pytest.mark.parametrize("batch", [4, 5])
    def test_a_per_step_transition_beside_a_per_row_factor(self, batch: int, transition: str) -> None:
        """A DMM-like product: p(z_t|z_{t-1}) scored at every step, z and z_prev (B, T, DZ), beside p(w), w (B, DW);
        the transition an MLP, or loc="z_prev" with features declared. Then x drawn from p(x|z) with
        sample_shape=(3,) (features declared with the transition's): both count in every draw."""
        if transition == "network":
            p_t = MLPNormal("z", ["z_prev"], [DZ, 8, DZ], name="p").double()
        else:
            p_t = Normal(var=["z"], cond_var=["z_prev"], loc="z_prev", scale=SCALE, features_shape=[DZ], name="p")
        p_w, _ = sequence_priors("constant")
        g = torch.Generator().manual_seed(batch)
        w = torch.randn(batch, DW, dtype=F64, generator=g)
        z, z_prev = (torch.randn(batch, T, DZ, dtype=F64, generator=g) for _ in range(2))
        with torch.no_grad():  # the transition's parameters, step by step (B * T rows of DZ)
            params = p_t.get_params({"z_prev": z_prev.reshape(batch * T, DZ)})
        steps = stats.norm(params["loc"].numpy(), params["scale"].numpy()).logpdf(z.reshape(batch * T, DZ).numpy())
        rows = per_row(steps.reshape(batch, T, DZ), stats.norm.logpdf(w.numpy()))
        values = {"w": w, "z": z, "z_prev": z_prev}
        with torch.no_grad():
            np.testing.assert_allclose((p_t * p_w).get_log_prob(values).numpy(), rows, rtol=1e-10)
            p_x = Normal(var=["x"], cond_var=["z"], loc="z", scale=SCALE, name="p_x",
                         features_shape=[DZ] if transition == "declared" else [])
            j = p_x * p_t * p_w
            s = j.sample(values, sample_shape=(3,))
            expected = per_row(stats.norm(z.numpy(), SCALE).logpdf(s["x"].numpy())) + rows.sum()
            np.testing.assert_allclose(j.get_log_prob(s).numpy(), expected, rtol=1e-10)

    @pytest.mark.parametrize("batch", [4, 5])
    def test_a_condition_of_one_row_shows_no_draws(self, batch: int) -> None:
        """p(z|c) with loc="c" and c one row (1, DZ), shared by every row and step: its parameters' one row says
        nothing of z's (B, T) (T is not a condition's rows), so z (B, T, DZ) is B rows beside w (B, DW)."""
        p_t = Normal(var=["z"], cond_var=["c"], loc="c", scale=SCALE, name="p")
        p_w, _ = sequence_priors("constant")
        g = torch.Generator().manual_seed(batch)
        w, z = torch.randn(batch, DW, dtype=F64, generator=g), torch.randn(batch, T, DZ, dtype=F64, generator=g)
        c = torch.randn(1, DZ, dtype=F64, generator=g)
        expected = per_row(stats.norm(c.numpy(), SCALE).logpdf(z.numpy()), stats.norm.logpdf(w.numpy()))
        np.testing.assert_allclose((p_t * p_w).get_log_prob({"w": w, "z": z, "c": c}).numpy(), expected, rtol=1e-10)
