"""Stop 46, numerical stability (review R12): constants given as lists of numbers are exact in float64 as numbers
are (`TorchDistribution._number_lists`), and a float32 `DiffusionSchedule` builds its table in float64
(`DiffusionSchedule._compute_constants`)."""

from __future__ import annotations

import pytest
import torch
from torch import distributions as D

import kizuna.distributions as K

F64 = torch.float64
LOC = [0.1, 1e6 + 0.1]  # float32 holds 0.10000000149 and 1000000.125
CONC = [1.8388992347690003, 1107.6568186022612, 0.0019382760341689457, 9568.03344402848]
PROBS = [0.1, 0.2, 0.3, 0.4]
COV = [[1.0, 0.3], [0.3, 2.0 + 1e-7]]


def _simplex_point() -> torch.Tensor:
    x = torch.tensor([[1.821670007082898e-04, 0.1, 1e-3, 0.0]], dtype=F64)
    x[0, 3] = 1 - x[0, :3].sum()
    return x


def _cases() -> list[tuple[str, object, object, dict]]:
    """(name, kizuna distribution factory, torch float64 reference, float64 value)."""
    x2 = torch.tensor([[0.1, 1e6 + 0.1], [0.1 + 1e-3, 1e6 + 0.1 - 2e-3]], dtype=F64)
    onehot = torch.eye(4, dtype=F64)
    return [
        ("normal", lambda: K.Normal(var=["x"], loc=LOC, scale=1e-3),
         D.Independent(D.Normal(torch.tensor(LOC, dtype=F64), torch.tensor(1e-3, dtype=F64)), 1), x2),
        ("normal_tuple", lambda: K.Normal(var=["x"], loc=tuple(LOC), scale=[1e-3, 0.3]),
         D.Independent(D.Normal(torch.tensor(LOC, dtype=F64), torch.tensor([1e-3, 0.3], dtype=F64)), 1), x2),
        ("dirichlet", lambda: K.Dirichlet(var=["x"], concentration=CONC),
         D.Dirichlet(torch.tensor(CONC, dtype=F64)), _simplex_point()),
        ("categorical", lambda: K.Categorical(var=["x"], probs=PROBS),
         D.OneHotCategorical(torch.tensor(PROBS, dtype=F64)), onehot),
        ("mvn", lambda: K.MultivariateNormal(var=["x"], loc=LOC, covariance_matrix=COV),
         D.MultivariateNormal(torch.tensor(LOC, dtype=F64), torch.tensor(COV, dtype=F64)), x2),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_list_constants_exact_in_float64(case: tuple) -> None:
    """Scored on float64 data, after ``.double()``, and in entropy: torch.distributions' float64 values of the same
    numbers (a float32 buffer kept 1000000.125 for 1e6 + 0.1: -300.5 instead of 11.98)."""
    _, make, ref, x = case
    want = ref.log_prob(x)
    p = make()
    torch.testing.assert_close(p.get_log_prob({"x": x}), want, rtol=1e-12, atol=1e-12)
    pd = make().double()
    torch.testing.assert_close(pd.get_log_prob({"x": x}), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pd.get_entropy(), ref.entropy().reshape(1), rtol=1e-12, atol=1e-12)


def test_list_constants_double_buffers_and_float32_unchanged() -> None:
    """``.double()`` holds the given numbers bitwise; float32 buffers are the float32 rounding (as before), and a
    float32 density is float32 arithmetic on them."""
    p = K.Dirichlet(var=["x"], concentration=CONC)
    assert torch.equal(p.concentration, torch.tensor([CONC], dtype=torch.float32))
    assert p.double().concentration.flatten().tolist() == CONC
    m = K.MultivariateNormal(var=["x"], loc=LOC, covariance_matrix=COV).double()
    assert m.loc.flatten().tolist() == LOC and m.covariance_matrix[0].tolist() == COV
    n = K.Normal(var=["x"], loc=LOC, scale=1e-3)
    x = torch.tensor([[0.1, 1e6 + 0.1]])
    want = D.Normal(torch.tensor(LOC), torch.tensor(1e-3)).log_prob(x).sum(1)
    assert torch.equal(n.get_log_prob({"x": x}), want)


def test_list_constant_follows_a_float64_input() -> None:
    """A list constant meets a float64 conditioning value as a number does: exact in float64."""
    p = K.Normal(var=["x"], cond_var=["m"], loc="m", scale=[1e-3, 0.1])
    m = torch.tensor([[0.0, 1e6]], dtype=F64)
    x = m + 1e-4
    want = D.Normal(m, torch.tensor([1e-3, 0.1], dtype=F64)).log_prob(x).sum(1)
    torch.testing.assert_close(p.get_log_prob({"x": x, "m": m}), want, rtol=1e-12, atol=1e-12)


def test_list_constant_in_a_float64_kl() -> None:
    """A prior given as lists against a float64 posterior: the closed-form KL takes the exact numbers."""
    from kizuna.losses import KullbackLeibler

    q = K.Normal(var=["x"], cond_var=["m"], loc="m", scale=[0.1, 0.2])
    prior = K.Normal(var=["x"], loc=LOC, scale=[1e-3, 0.3])
    m = torch.tensor([[0.1, 1e6 + 0.1]], dtype=F64)
    want = D.kl_divergence(D.Normal(m, torch.tensor([0.1, 0.2], dtype=F64)),
                           D.Normal(torch.tensor(LOC, dtype=F64), torch.tensor([1e-3, 0.3], dtype=F64))).sum(1)
    torch.testing.assert_close(KullbackLeibler(q, prior).eval({"m": m}), want, rtol=1e-12, atol=1e-12)


def test_loaded_list_constant_wins() -> None:
    """A loaded buffer that differs from the numbers given is used (float64 scoring, ``.double()``); one that holds
    them keeps them exact."""
    x = torch.tensor([[0.5, 3.0]], dtype=F64)
    p = K.Normal(var=["x"], loc=LOC, scale=1.0)
    p.load_state_dict({"loc": torch.tensor([[0.25, 2.5]]), "scale": torch.tensor(1.0).reshape(p.scale.shape)})
    want = D.Normal(torch.tensor([0.25, 2.5], dtype=F64), 1.0).log_prob(x).sum(1)
    torch.testing.assert_close(p.get_log_prob({"x": x}), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.double().get_log_prob({"x": x}), want, rtol=1e-12, atol=1e-12)
    q = K.Normal(var=["x"], loc=LOC, scale=1.0)
    q.load_state_dict(K.Normal(var=["x"], loc=LOC, scale=1.0).state_dict())
    assert q.double().loc.flatten().tolist() == LOC
    r = K.Normal(var=["x"], loc=LOC, scale=1.0)  # a buffer reassigned with another shape: used as it is
    r.loc = torch.tensor([[0.5, 1.0, 2.0]])
    assert r.double().loc.flatten().tolist() == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("name,T", [("linear", 1000), ("cosine", 1000), ("cosine", 4000)])
def test_float32_diffusion_table_is_the_float64_one_rounded(name: str, T: int) -> None:
    """A float32 schedule's table is the float64 schedule's cast to float32 (1 - alpha-bar_t 1.7e-4 to 2.9e-3
    relative off at small t when built in float32), and the posterior q(x_{t-1}|x_t, x_0) at t = 2..5 the float64
    one (its scale 1e-3 off before)."""
    s32 = getattr(K.DiffusionSchedule, name)(T)
    s64 = getattr(K.DiffusionSchedule, name)(T).double()
    t = torch.arange(1, T + 1)
    c32 = s32.coefficients(t, torch.zeros(T, 1))
    c64 = s64.coefficients(t, torch.zeros(T, 1, dtype=F64))
    for key in ("one_minus_alpha_bar", "one_minus_alpha_bar_prev", "alpha_bar", "beta", "alpha"):
        got, want = c32[key].double(), c64[key].float().double()
        rel = ((got - want).abs() / want.abs().clamp_min(1e-300)).max().item()
        assert rel <= 1e-7, (key, rel)
    gen = torch.Generator().manual_seed(0)
    tt = torch.arange(2, 6)
    x0 = torch.randn(4, 50, generator=gen, dtype=F64).float()
    xt = torch.randn(4, 50, generator=gen, dtype=F64).float()
    p32 = K.DiffusionPosterior(s32).get_params({"x_t": xt, "x_0": x0, "t": tt})
    p64 = K.DiffusionPosterior(s64).get_params({"x_t": xt.double(), "x_0": x0.double(), "t": tt})
    for key in ("loc", "scale"):
        torch.testing.assert_close(p32[key].double(), p64[key], rtol=1e-6, atol=1e-6)


def test_learnable_schedule_table_in_float64_keeps_its_graph() -> None:
    """A learnable float32 schedule: the same table as a fixed one of the same betas, and gradients reach the
    betas."""
    betas = torch.linspace(1e-4, 0.02, 100)
    fixed = K.DiffusionSchedule(betas.clone())
    learnt = K.DiffusionSchedule(torch.nn.Parameter(betas.clone()))
    assert torch.equal(learnt.constants().detach(), fixed.constants())
    want = K.DiffusionSchedule(betas.double()).constants().float()
    assert torch.equal(fixed.constants(), want)
    learnt.constants()[:, 2].sum().backward()
    assert learnt.betas.grad is not None and bool(torch.isfinite(learnt.betas.grad).all())
