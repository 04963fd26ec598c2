"""NormalProduct and the Ladder VAE.

References: the normalised product of two Gaussian densities in closed form (scipy: the product's
log-density is the sum of the factors' minus log N(mu_1; mu_2, s_1^2 + s_2^2)); the Ladder VAE's nested
closed-form bound against a Monte-Carlo ELBO of the same joints (5 standard errors); the smoke
example's held-out log-likelihood against the independent-Bernoulli baseline.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from example_loader import run_smoke
from scipy import stats
from torch import distributions as D
from torch import nn
from torch.distributions import kl_divergence

from kizuna.distributions import Normal, NormalProduct
from kizuna.losses import ELBO, KullbackLeibler
from kizuna.models import LadderVAE
from kizuna.models.residual_normal import ResidualNormal

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def test_normal_product_is_the_normalised_product_of_densities() -> None:
    a = Normal(var=["z"], cond_var=["x"], loc="x", scale=torch.tensor([0.5, 2.0], dtype=F64), name="q")
    b = Normal(var=["z"], cond_var=["y"], loc="y", scale=torch.tensor([1.5, 0.3], dtype=F64), name="p")
    q = NormalProduct([a, b])
    x, y, z = (torch.randn(4, 2, dtype=F64) for _ in range(3))
    sa, sb = np.array([0.5, 2.0]), np.array([1.5, 0.3])
    expected = (stats.norm.logpdf(z, x, sa) + stats.norm.logpdf(z, y, sb) - stats.norm.logpdf(x, y, np.hypot(sa, sb)))
    np.testing.assert_allclose(q.get_log_prob({"x": x, "y": y, "z": z}).numpy(), expected.sum(1), rtol=1e-10)
    assert str(q) == "q(z|x,y) ∝ q(z|x)p(z|y)"
    with pytest.raises(ValueError, match="at least two"):
        NormalProduct([a])


@pytest.mark.parametrize("merge", ["product", "residual", "whitened"])
def test_ladder_bound_equals_the_monte_carlo_elbo(merge: str) -> None:
    m = LadderVAE(6, [3, 2], [8, 8], merge=merge).double()
    x = torch.bernoulli(torch.full((1, 6), 0.4, dtype=F64)).repeat(4000, 1)
    with torch.no_grad():
        closed = m.loss().eval({"x": x})
        mc = -ELBO(m.p, m.q).eval({"x": x})
    se = math.hypot(closed.std().item(), mc.std().item()) / math.sqrt(len(x))
    assert abs(closed.mean().item() - mc.mean().item()) < 5 * se
    assert closed.std() < mc.std()  # the closed-form KLs remove part of the variance
    assert str(m.loss(0.5)).startswith("0.5 * KL[q(z_2|x)||p_{prior}(z_2)]")
    grads = torch.autograd.grad(m.loss().eval({"x": x[:8]}).mean(), list(m.parameters()), allow_unused=True)
    assert all(g is not None for g in grads)  # every network, including the top-down priors, gets a gradient
    with pytest.raises(ValueError, match="one hidden width per stochastic layer"):
        LadderVAE(6, [3, 2], [8])
    with pytest.raises(ValueError, match="merge must be 'product', 'residual' or 'whitened'"):
        LadderVAE(6, [3, 2], [8, 8], merge="sum")


def _normals(prior_scale: float = 1.5) -> tuple[Normal, Normal]:
    p = Normal(var=["z"], cond_var=["y"], loc="y", scale=torch.tensor([prior_scale, 0.4], dtype=F64), name="p")
    b = Normal(var=["z"], cond_var=["x", "s"], loc="x", scale="s", name="b")
    return p, b


@pytest.mark.parametrize("whitened", [False, True])
def test_residual_normal_density_and_kl_against_closed_forms(whitened: bool) -> None:
    """N(mu_p + dmu, (s_p ds)^2) (whitened: N(mu_p + s_p dmu, (s_p ds)^2)): log-density against scipy,
    KL to p against the closed forms of the module docstring (whitened: a VAE's KL of N(dmu, ds^2))."""
    p, shift = _normals()
    q = ResidualNormal(p, shift, whitened=whitened)
    x, y, z = (torch.randn(5, 2, dtype=F64) for _ in range(3))
    s = torch.rand(5, 2, dtype=F64) + 0.3
    sp, dmu, ds = np.array([1.5, 0.4]), x.numpy(), s.numpy()
    values = {"x": x, "y": y, "z": z, "s": s}
    expected = stats.norm.logpdf(z.numpy(), y.numpy() + (sp * dmu if whitened else dmu), sp * ds).sum(1)
    np.testing.assert_allclose(q.get_log_prob(values).numpy(), expected, rtol=1e-10)
    kl = KullbackLeibler(q, p).eval(values).numpy()
    closed = (0.5 * ((dmu if whitened else dmu / sp) ** 2 + ds**2 - 1) - np.log(ds)).sum(1)
    np.testing.assert_allclose(kl, closed, rtol=1e-10)
    assert set(q.cond_var) == {"x", "s", "y"}


def test_product_kl_vanishes_as_the_bottom_up_scale_grows_residual_kl_does_not() -> None:
    """Why the product merge switches a layer off: KL[q || p] of q ∝ q̂ p falls monotonically to 0 as
    q̂'s scale grows (any bottom-up mean), so the KL's gradient always asks for a larger scale; the
    residual form's KL is smallest at Δσ = 1 and grows beyond it, like a VAE's KL to N(0, I)."""
    p, b = _normals()
    product, residual = NormalProduct([b, p]), ResidualNormal(p, b)
    scales = torch.logspace(-1, 3, 41, dtype=F64)
    x, y = torch.full((41, 2), 2.0, dtype=F64), torch.zeros(41, 2, dtype=F64)
    s = scales[:, None].expand(41, 2)
    values = {"x": x, "y": y, "s": s}
    kl_product = KullbackLeibler(product, p).eval(values)
    q = D.Normal(*[product.get_params(values)[k] for k in ("loc", "scale")])
    torch.testing.assert_close(kl_product, kl_divergence(q, D.Normal(0.0, torch.tensor([1.5, 0.4], dtype=F64))).sum(-1))
    assert bool((kl_product.diff() < 0).all()) and kl_product[-1] < 1e-5
    kl_residual = KullbackLeibler(residual, p).eval(values)
    assert bool((kl_residual[scales > 1].diff() > 0).all()) and kl_residual[-1] > 1e3


def _linear_shapes(module: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(layer.weight.shape) for layer in module.modules() if isinstance(layer, nn.Linear)]


def test_depth_gives_the_bottom_layer_the_vae_encoder_and_dropout_is_off_in_eval() -> None:
    m = LadderVAE(784, [32, 8], [400, 100], depth=2, dropout=0.3)
    assert _linear_shapes(m.posteriors[0].factors_[0]) == [(400, 784), (400, 400), (64, 400)]  # the VAE encoder
    assert _linear_shapes(m.decoder) == [(400, 32), (400, 400), (784, 400)]  # and its decoder's
    x, z = torch.bernoulli(torch.full((5, 784), 0.3)), torch.randn(5, 32)
    m.eval()
    a, b = (m.decoder.get_log_prob({"x": x, "z_1": z}) for _ in range(2))
    torch.testing.assert_close(a, b)
    m.train()
    assert not torch.allclose(m.decoder.get_log_prob({"x": x, "z_1": z}), a)
    for bad in ({"depth": 0}, {"dropout": 1.0}, {"dropout": -0.1}):
        with pytest.raises(ValueError, match=r"depth must be an integer >= 1|dropout must be in \[0, 1\)"):
            LadderVAE(6, [3], [8], **bad)
    # a latent of no units was built (a torch warning only), a negative width failed with "negative dimension"
    for z_dims, hidden, message in (([0, 4], [8, 8], r"z_dims\[0\] must be an integer >= 1, got 0"),
                                    ([-3, 4], [8, 8], r"z_dims\[0\] must be an integer >= 1, got -3"),
                                    ([3, 4], [8, 2.5], r"hidden\[1\] must be an integer >= 1, got 2.5")):
        with pytest.raises(ValueError, match=rf"^LadderVAE: {message}$"):
            LadderVAE(6, z_dims, hidden)


def test_free_nats_floor_each_kl_per_row() -> None:
    """One layer: loss(free_nats=l) - loss() = max(KL, l) - KL per row, KL from torch.distributions."""
    m = LadderVAE(6, [3], [8]).double()
    x = torch.bernoulli(torch.full((50, 6), 0.4, dtype=F64))
    with torch.no_grad():
        params = m.posteriors[0].get_params({"x": x})
        kl = kl_divergence(D.Normal(params["loc"], params["scale"]), D.Normal(0.0, 1.0)).sum(-1)
        level = kl.median().item()  # half the rows are floored
        torch.manual_seed(1)
        plain = m.loss().eval({"x": x})
        torch.manual_seed(1)
        floored = m.loss(free_nats=level).eval({"x": x})
    torch.testing.assert_close(floored - plain, kl.clamp(min=level) - kl)
    assert str(m.loss(0.5, free_nats=0.25)).startswith("0.5 * max(KL[q(z_1|x)||p_{prior}(z_1)], 0.25)")
    for bad in (-1.0, float("nan"), float("inf")):  # NaN gave the plain ELBO, silently
        with pytest.raises(ValueError, match=rf"^LadderVAE.loss: free_nats must be a finite number >= 0, got {bad}$"):
            m.loss(free_nats=bad)
    with pytest.raises(ValueError, match=r"^LadderVAE.loss: beta \(the KL terms' weight\) must be a finite number"):
        m.loss(float("nan"))
    from kizuna.losses import Parameter  # a weight read from the batch (the parity bench's KL warm-up) stays allowed

    warm = m.loss(Parameter("beta")).mean()
    assert warm.eval({"x": x, "beta": torch.tensor(0.0, dtype=F64)}).isfinite()


@pytest.mark.slow
def test_ladder_vae_smoke() -> None:
    m = run_smoke("ladder_vae")
    assert m["test_ll"] > m["baseline_ll"] + 3  # measured -19.4 vs -24.3 nats on the digits (free nats 0.5)
    assert m["test_ll"] >= m["test_elbo"] - 0.05


def test_max_prior_scale_bounds_the_prior_scales_and_starts_as_softplus() -> None:
    """max_prior_scale m: scale = m sigmoid(s + b) + 1e-4, equal to softplus(s) + 1e-4 at s = 0, below m + 1e-4."""
    bounded, free = (LadderVAE(6, [3, 2], [8, 8], merge="residual", max_prior_scale=m).double() for m in (1.0, None))
    z2 = torch.randn(7, 2, dtype=F64)
    with torch.no_grad():
        for m in (bounded, free):
            m.priors[0].head.weight.zero_()
            m.priors[0].head.bias.zero_()
        torch.testing.assert_close(bounded.priors[0].get_params({"z_2": z2})["scale"],
                                   torch.full((7, 3), math.log(2) + 1e-4, dtype=F64))
        torch.testing.assert_close(free.priors[0].get_params({"z_2": z2})["scale"],
                                   torch.full((7, 3), math.log(2) + 1e-4, dtype=F64))
        for m in (bounded, free):
            m.priors[0].head.bias.fill_(6.0)
        s = 6.0 + math.log(math.log(2) / (1 - math.log(2)))
        torch.testing.assert_close(bounded.priors[0].get_params({"z_2": z2})["scale"],
                                   torch.full((7, 3), 1 / (1 + math.exp(-s)) + 1e-4, dtype=F64))
        assert bool((bounded.priors[0].get_params({"z_2": z2})["scale"] < 1 + 1e-4).all())
        assert bool((free.priors[0].get_params({"z_2": z2})["scale"] > 6).all())
    with pytest.raises(ValueError, match="max_prior_scale must be a finite number > log 2"):
        LadderVAE(6, [3, 2], [8, 8], max_prior_scale=0.5)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_bottom_up_pass_runs_once_per_evaluation_and_is_shared(dropout: float) -> None:
    """Every q-hat above a bottom-up block reads the same d_i = f_i(d_{i-1}): in one evaluation of the bound (and of
    the IWAE estimate) each block runs once, so in training one dropout mask serves all layers above it (the heads
    ran the pass below them again, L(L+1)/2 block evaluations with a new mask each). The bound equals the
    two-layer bound written by hand with one bottom-up pass: q(z_2|x) from d_2, q(z_1|z_2, x) ∝ q̂(z_1|x) p(z_1|z_2)
    from d_1, KLs from torch.distributions (the same draws: one random stream)."""
    torch.manual_seed(0)
    m = LadderVAE(6, [3, 2], [8, 5], dropout=dropout).double()
    m.train(True)
    x = (torch.rand(7, 6, dtype=torch.float64) > 0.5).double()
    calls = [0, 0]
    for i, block in enumerate(m.bottom_up):
        block.register_forward_hook(lambda mod, inp, out, i=i: calls.__setitem__(i, calls[i] + 1))
    torch.manual_seed(1)
    value = m.loss().eval({"x": x})
    assert calls == [1, 1]
    from kizuna.losses import IWAE

    IWAE(m.p, m.q, k=4).eval({"x": x})
    assert calls == [2, 2]
    torch.manual_seed(1)
    d1 = m.bottom_up[0](x)
    d2 = m.bottom_up[1](d1)

    def normal(head: nn.Module, h: torch.Tensor) -> D.Normal:
        loc, s = head.head(h).chunk(2, -1)
        return D.Normal(loc, torch.nn.functional.softplus(s) + 1e-4)

    q2 = normal(m.posteriors[1], d2)
    z2 = q2.rsample()
    q1_hat = normal(m.posteriors[0].factors_[0], d1)
    prior1 = normal(m.priors[0], m.priors[0].body(z2))
    precision = q1_hat.scale.pow(-2) + prior1.scale.pow(-2)
    q1 = D.Normal((q1_hat.loc * q1_hat.scale.pow(-2) + prior1.loc * prior1.scale.pow(-2)) / precision,
                  precision.rsqrt())
    z1 = q1.rsample()
    recon = D.Bernoulli(logits=m.decoder.net(z1)).log_prob(x).sum(1)
    expected = (kl_divergence(q2, D.Normal(0.0, 1.0)).sum(1) + kl_divergence(q1, prior1).sum(1) - recon)
    torch.testing.assert_close(value, expected)


def test_the_examples_options_that_would_do_nothing_are_refused():
    """The full run trains on the IWAE bound without early stopping: a KL floor or warm-up given for it, or a
    validation k without early stopping, would be ignored (they were, silently)."""
    from example_loader import load_example

    run = load_example("ladder_vae").run
    with pytest.raises(ValueError, match="--free-nats applies to the ELBO objective"):
        run(free_nats=2.0)
    with pytest.raises(ValueError, match="--warmup applies to the ELBO objective"):
        run(warmup=20)
    with pytest.raises(ValueError, match="add --early-stopping"):
        run(k_val=100)


def test_early_stopping_keeps_the_trained_weights_of_a_run_shorter_than_the_warm_up():
    """With early stopping, validation ran only every 5 epochs after the warm-up: a run that ended before the first
    check (the smoke run with --epochs 9) loaded the initial weights back and reported the untrained model. The
    last epoch is now checked too, so two epochs of a 10-epoch warm-up keep the trained weights."""
    from example_loader import load_example

    ex = load_example("ladder_vae")
    cfg = dict(ex.SMOKE, epochs=2, warmup=10)
    torch.manual_seed(0)
    m = LadderVAE(6, [3, 2], [8, 8])
    x = (torch.rand(40, 6) > 0.5).float()
    initial = {k: v.clone() for k, v in m.state_dict().items()}
    ex.train(m, x, cfg, seed=0, verbose=False)
    assert any(not torch.equal(initial[k], v) for k, v in m.state_dict().items())
    assert [e + 1 for e in range(60) if ex._checked(e, dict(ex.SMOKE))] == list(range(10, 61, 5))  # as before
    assert [e + 1 for e in range(12) if ex._checked(e, dict(ex.SMOKE, epochs=12))] == [10, 12]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"x_dim": 0}, "x_dim must be an integer >= 1, got 0"),
    ({"x_dim": 2.5}, "x_dim must be an integer >= 1, got 2.5"),
    ({"depth": 1.5}, "depth must be an integer >= 1, got 1.5"),
    ({"depth": True}, "depth must be an integer >= 1, got True"),
    ({"top_down": [2.5]}, r"top_down\[0\] must be an integer >= 1, got 2.5"),
    ({"max_prior_scale": math.inf}, "max_prior_scale must be a finite number > log 2"),
])
def test_sizes_and_the_prior_scale_bound_are_checked(kwargs, message):
    """x_dim=0 built a model of no inputs; -1 / 2.5 failed inside torch; depth 1.5 in a list product; an infinite
    max_prior_scale in a "math domain error"."""
    with pytest.raises(ValueError, match=f"LadderVAE: {message}"):
        LadderVAE(**{"x_dim": 6, "z_dims": [4, 2], "hidden": [8, 8], **kwargs})
