"""The fast paths of the training step against the slow ones they replace.

References: torch.distributions (kernels), ``Loss.eval`` (plans: same values, same random
stream, same gradients, same error messages), per-parameter ``isfinite`` (the fused gradient
check), and a rebuilt model (caches invalidated after ``load_state_dict``, relabelling, new
losses and new parameters). The last test runs ``bench/vae_step.py --quick``.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import distributions as D
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, Categorical, FactorizedBernoulli, Normal, StudentT, kernels, set_validation
from kizuna.losses import ELBO, IWAE, REINFORCE, ConstantVar, Expectation, KullbackLeibler, LogProb, Parameter
from kizuna.losses.plan import Plan, Unplannable, build
from kizuna.models import Model
from kizuna.models.speed import ParameterList, all_finite

ROOT = Path(__file__).resolve().parents[1]
D_X, D_Z = 5, 3


class Encoder(Normal):
    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Linear(D_X, 2 * D_Z).double()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s)}


class Decoder(Bernoulli):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Linear(D_Z, D_X).double()

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(z)}


class NormalDecoder(Normal):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Linear(D_Z, D_X).double()

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.net(z), "scale": torch.full_like(self.net.bias, 0.7).expand(z.shape[0], D_X)}


class ClassEncoder(Categorical):
    def __init__(self) -> None:
        super().__init__(var=["c"], cond_var=["x"], name="q_c")
        self.net = nn.Linear(D_X, D_X).double()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


class FactorizedDecoder(FactorizedBernoulli):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="f")
        self.net = nn.Linear(D_Z, D_X).double()

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(z)}


def prior(loc: float = 0.0, scale: float = 1.0) -> Normal:
    return Normal(var=["z"], loc=loc, scale=scale, features_shape=[D_Z], name="p_prior").double()


def data(seed: int = 0, n: int = 8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"x": (torch.rand(n, D_X, generator=gen, dtype=torch.float64) > 0.5).double()}


def losses() -> dict[str, object]:
    torch.manual_seed(0)
    q, p, pn = Encoder(), Decoder(), NormalDecoder()
    student = StudentT(var=["z"], df=4.0, loc=0.0, scale=1.0, features_shape=[D_Z], name="p_t").double()
    by_class = Normal(var=["x"], cond_var=["c"], loc="c", scale=1.0, name="p_c")
    return {
        "vae": (KullbackLeibler(q, prior()) - Expectation(q, LogProb(p))).mean(),
        "normal decoder, prior N(0.5, 2)": (KullbackLeibler(q, prior(0.5, 2.0)) - Expectation(q, LogProb(pn))).sum(),
        "monte carlo KL": (KullbackLeibler(q, student) - Expectation(q, LogProb(p))).mean(),
        "KL with dim": KullbackLeibler(q, prior(), dim=1).mean(),
        "ELBO": -ELBO(p * prior(), q, sample_shape=(3,)).mean(),
        "IWAE": -IWAE(p * prior(), q, k=4).mean(),
        "expectation with sample_shape": -Expectation(q, LogProb(p), sample_shape=(2,)).mean() / 2,
        "score function (categorical draws)": -Expectation(ClassEncoder(), LogProb(by_class)).mean(),
        "constants": (ConstantVar(Parameter("beta") * KullbackLeibler(q, prior()), {"beta": 0.5})
                      - Expectation(q, LogProb(p))).mean(),
    }


# ------------------------------------------------------------------------------ kernels
def test_kernels_match_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    loc, scale = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.rand(6, 4, generator=gen) + 0.1
    value = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(kernels.normal_log_prob(value, loc, scale), D.Normal(loc, scale).log_prob(value))
    torch.testing.assert_close(kernels.normal_log_prob_sum(value, loc, scale),
                               D.Independent(D.Normal(loc, scale), 1).log_prob(value))
    logits, grey = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.rand(6, 4, generator=gen).double()
    torch.testing.assert_close(kernels.bernoulli_log_prob(grey, logits), D.Bernoulli(logits=logits,
                               validate_args=False).log_prob(grey))
    torch.testing.assert_close(kernels.bernoulli_log_prob_sum(grey, logits),
                               D.Bernoulli(logits=logits, validate_args=False).log_prob(grey).sum(-1))
    q_loc, q_scale = torch.randn(6, 4, generator=gen).double(), torch.rand(6, 4, generator=gen).double() + 0.5
    torch.testing.assert_close(kernels.kl_normal_normal(loc, scale, q_loc, q_scale),
                               D.kl_divergence(D.Normal(loc, scale), D.Normal(q_loc, q_scale)))
    torch.testing.assert_close(kernels.kl_normal_standard(loc, scale),
                               D.kl_divergence(D.Normal(loc, scale), D.Normal(0.0, 1.0)))
    torch.testing.assert_close(kernels.sum_features(value.reshape(6, 2, 2)), value.sum(-1))
    torch.manual_seed(3)
    expected = D.Normal(loc, scale).rsample()
    torch.manual_seed(3)
    assert torch.equal(kernels.normal_rsample(loc, scale), expected)  # the same random stream


@pytest.mark.parametrize("layout", ["contiguous", "loc a chunk view", "scale transposed", "mixed dtypes"])
def test_normal_draw_is_torchs_random_stream_in_every_layout(layout: str) -> None:
    """The kernel's draw equals ``torch.distributions.Normal.rsample`` bitwise, whether it takes the
    ``randn_like`` path (contiguous scale of loc's shape and dtype) or the general one."""
    gen = torch.Generator().manual_seed(1)
    both = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    loc, raw = both.chunk(2, -1)  # loc: a (8, 3) view with stride (6, 1), as an encoder's output
    scale = F.softplus(raw).contiguous()
    if layout == "contiguous":
        loc = loc.contiguous()
    elif layout == "scale transposed":
        scale = F.softplus(torch.randn(3, 8, generator=gen, dtype=torch.float64)).T  # non-contiguous
    elif layout == "mixed dtypes":
        scale = scale.float()
    torch.manual_seed(5)
    expected = D.Normal(loc, scale).rsample()
    torch.manual_seed(5)
    assert torch.equal(kernels.normal_rsample(loc, scale), expected)


def test_eager_bernoulli_scores_and_checks_as_torch_does() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, grey = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.rand(6, 4, generator=gen).double()
    p = Bernoulli(var=["x"], cond_var=["l"], logits="l")
    reference = D.Bernoulli(logits=logits, validate_args=False).log_prob(grey)
    torch.testing.assert_close(p.get_log_prob({"x": grey, "l": logits}), reference.sum(-1))
    torch.testing.assert_close(p.get_log_prob({"x": grey, "l": logits}, sum_features=False), reference)
    assert p.get_dist({"l": logits}).base_dist._validate_args  # screened, then marked validated as torch would
    with pytest.raises(ValueError, match="parameter 'logits' of Bernoulli must satisfy Real"):
        p.get_dist({"l": torch.full((2, 4), math.nan)})
    n = Normal(var=["x"], cond_var=["m"], loc="m", scale=1.0)
    with pytest.raises(ValueError, match=r"value of x is invalid: Expected value argument .* support \(Real\(\)\)"):
        n.get_log_prob({"x": torch.full((2, 4), math.nan), "m": torch.zeros(2, 4)})


@pytest.mark.parametrize("constraint, values, expected", [
    (constraints.real, [0.0, -1e30, 5.0], True),
    (constraints.real, [math.inf, -math.inf, 1.0], True),  # a NaN sum, but every entry is real
    (constraints.real, [1.0, math.nan], False),
    (constraints.positive, [1e-30, 2.0], True),
    (constraints.positive, [0.0, 2.0], False),
    (constraints.positive, [math.nan, 2.0], False),
    (constraints.unit_interval, [0.0, 1.0, 0.5], True),
    (constraints.unit_interval, [0.0, 1.0 + 1e-6], False),
    (constraints.unit_interval, [math.nan, 0.5], False),
    (constraints.positive, [], True),
    (constraints.simplex, [[0.25, 0.75]], True),
])
def test_fast_constraint_checks_agree_with_torch(constraint: constraints.Constraint, values: list,
                                                 expected: bool) -> None:
    value = torch.tensor(values, dtype=torch.float64)
    assert bool(constraint.check(value).all()) is expected  # the reference
    assert kernels.satisfies(constraint, value) is expected
    assert bool(kernels.flags(constraint, value)) is expected


# -------------------------------------------------------------------------------- plans
@pytest.mark.parametrize("name", list(losses()))
def test_a_plan_gives_the_values_and_gradients_of_eval(name: str) -> None:
    loss = losses()[name]
    x = data()
    plan = build(loss, list(x))
    assert isinstance(plan, Plan), plan
    torch.manual_seed(1)
    expected, terms = loss.eval(x, return_terms=True)
    expected_grads = torch.autograd.grad(expected, [p for d in loss.distributions() for p in d.parameters()],
                                         allow_unused=True)
    torch.manual_seed(1)
    value, parts = plan.run(x)
    grads = torch.autograd.grad(value, [p for d in loss.distributions() for p in d.parameters()], allow_unused=True)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, expected_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert plan.labels() == list(terms)
    for part, mean in zip(parts, terms.values()):
        torch.testing.assert_close(part.detach().double().mean(), mean.double())


def test_what_a_plan_does_not_cover_is_left_to_eval() -> None:
    torch.manual_seed(0)
    q, p = Encoder(), Decoder()
    factorized = FactorizedDecoder()
    for loss, why in [(-REINFORCE(q, LogProb(p)).mean(), "REINFORCE"),
                      ((KullbackLeibler(q, prior()) - Expectation(q, LogProb(p.replace_var(z="w")))).mean(),
                       "ReplaceVarDistribution"),
                      (-Expectation(q, LogProb(factorized)).mean(), "FactorizedDecoder")]:  # overrides _log_prob
        result = build(loss, ["x", "w"])
        assert isinstance(result, Unplannable) and why in str(result)
        model = Model(loss, distributions=[q])
        torch.manual_seed(2)
        expected = loss.eval({"x": torch.zeros(4, D_X, dtype=torch.float64), "w": torch.zeros(4, D_Z).double()})
        torch.manual_seed(2)
        assert model.test({"x": torch.zeros(4, D_X).double(), "w": torch.zeros(4, D_Z).double()}) == expected.item()


def _eval_error(loss: object, x: dict[str, torch.Tensor]) -> str:
    with pytest.raises(ValueError) as err:
        loss.eval(x)
    return str(err.value)


@pytest.mark.parametrize("case", ["nan loc", "non-positive scale", "value outside [0, 1]", "nan Normal value"])
def test_a_plan_raises_the_errors_of_eval(case: str) -> None:
    torch.manual_seed(0)
    q, p, pn = Encoder(), Decoder(), NormalDecoder()
    x = data()
    loss = (KullbackLeibler(q, prior()) - Expectation(q, LogProb(p))).mean()
    if case == "nan loc":
        with torch.no_grad():
            q.net.bias[0] = math.nan
    elif case == "non-positive scale":
        q.forward = lambda x: {"loc": x[:, :D_Z], "scale": -torch.ones(x.shape[0], D_Z, dtype=x.dtype)}
    elif case == "value outside [0, 1]":
        x = {"x": x["x"] * 2}
    else:
        loss = -LogProb(pn).mean()
        x = {"x": torch.full((4, D_X), math.nan, dtype=torch.float64), "z": torch.zeros(4, D_Z).double()}
    expected = _eval_error(loss, x)
    plan = build(loss, list(x))
    with pytest.raises(ValueError) as err:
        plan.run(x)
    assert str(err.value) == expected
    set_validation(False)
    try:
        plan.run(x)  # no checks, no error
    finally:
        set_validation(True)


# ----------------------------------------------------------------- fused gradient check
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fused_finite_check_agrees_with_isfinite(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(4, 3, generator=gen).to(dtype), torch.randn(7, generator=gen).to(dtype)]
    assert all_finite(tensors) and all_finite([])
    assert all_finite([torch.full((3,), 3e38 if dtype != torch.float64 else 1e300, dtype=dtype)])  # huge: finite
    for bad in (math.nan, math.inf, -math.inf):
        broken = [t.clone() for t in tensors]
        broken[1][4] = bad
        assert not all_finite(broken)
        assert [bool(torch.isfinite(t).all()) for t in broken] == [True, False]  # the reference


def test_fit_names_the_parameter_whose_gradient_is_not_finite() -> None:
    torch.manual_seed(0)
    q, p = Encoder(), Decoder()
    model = Model((KullbackLeibler(q, prior()) - Expectation(q, LogProb(p))).mean(), distributions=[p, q])
    model.fit(data(), epochs=1, batch_size=4, quiet=True)
    p.net.bias.register_hook(lambda g: g * math.nan)
    before = [t.detach().clone() for t in model.distributions.parameters()]
    with pytest.raises(FloatingPointError, match=r"the gradient of p\(x\|z\)\.net\.bias is non-finite at epoch 2"):
        model.fit(data(), epochs=1, batch_size=4, quiet=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.distributions.parameters()))  # step not taken


def test_the_checked_parameter_list_follows_new_parameters_and_modules() -> None:
    torch.manual_seed(0)
    q, p = Encoder(), Decoder()
    modules = nn.ModuleList([q, p])
    listed = ParameterList()
    assert listed(modules) == list(modules.parameters())
    assert listed(modules) is listed(modules)  # cached: no walk over the modules per step
    q.extra = nn.Parameter(torch.zeros(2))  # registered after the model was built
    assert any(t is q.extra for t in listed(modules))
    p.net = nn.Linear(D_Z, D_X)
    assert any(t is p.net.weight for t in listed(modules))
    other = nn.ModuleList([p])
    assert listed(other) == list(other.parameters())


# --------------------------------------------------------------------- invalidation
def test_plans_follow_loaded_constants_and_recheck_them() -> None:
    torch.manual_seed(0)
    q, p, z_prior = Encoder(), Decoder(), prior()
    loss = (KullbackLeibler(q, z_prior) - Expectation(q, LogProb(p))).mean()
    model = Model(loss, distributions=[p, q, z_prior])
    x = data()
    model.train(x)  # the plan decides that the prior is N(0, 1)
    state = model.state_dict()
    state["distributions"] = {k: v.clone() for k, v in state["distributions"].items()}
    key = next(k for k in state["distributions"] if k.endswith("loc_"))
    state["distributions"][key].fill_(0.5)
    model.load_state_dict(state)
    torch.manual_seed(4)
    expected = loss.eval(x).item()
    torch.manual_seed(4)
    assert model.test(x) == pytest.approx(expected, rel=1e-12)  # not the N(0, 1) shortcut any more
    scale_key = next(k for k in state["distributions"] if k.endswith("scale_"))
    state["distributions"][scale_key].fill_(-1.0)
    model.load_state_dict(state)
    message = _eval_error(loss, x)
    assert "scale" in message
    with pytest.raises(ValueError) as err:
        model.test(x)
    assert str(err.value) == message


def test_plans_follow_new_losses_new_names_and_new_inputs() -> None:
    torch.manual_seed(0)
    q, p = Encoder(), Decoder()
    kl = KullbackLeibler(q, prior())
    loss = (kl - Expectation(q, LogProb(p))).mean()
    model = Model(loss, distributions=[p, q])
    x = data()
    model.fit(x, epochs=1, batch_size=8, quiet=True)
    kl.named("KL")  # after the plan was built: the next epoch reports the new name
    history = model.fit(x, epochs=1, batch_size=8, quiet=True)
    old = history.terms["KL[q(z|x)||p_{prior}(z)]"]
    assert math.isnan(history["KL"][0]) and history["KL"][1] > 0
    assert old[0] > 0 and math.isnan(old[1])
    model.loss_cls = 2 * kl.mean()  # a new training loss: train() returns its value before the step
    expected = model.loss_cls.eval(x).item()
    assert model.train(x) == expected
    with_extra = {**x, "unused": torch.zeros(3)}  # other input names: another plan
    expected = model.loss_cls.eval(with_extra).item()
    assert model.train(with_extra) == expected


def test_cached_decisions_follow_the_validation_switch_and_in_place_changes() -> None:
    torch.manual_seed(0)
    q, p, z_prior = Encoder(), Decoder(), prior()
    model = Model((KullbackLeibler(q, z_prior) - Expectation(q, LogProb(p))).mean(), distributions=[p, q])
    x = data()
    model.test(x)  # decided: the prior is N(0, 1), checked
    with torch.no_grad():
        z_prior.scale_.fill_(-1.0)  # an in-place change (its tensor version moves on)
    z_prior._constants_checked = False  # as after loading: constants are checked at their next use
    set_validation(False)
    try:
        model.test(x)  # no checks
    finally:
        set_validation(True)
    with pytest.raises(ValueError, match=r"p_\{prior\}\(z\): parameter 'scale' of Normal must satisfy"):
        model.test(x)  # the decision taken without validation is not reused with it


# ------------------------------------------------------------------------ bench smoke
def test_vae_step_bench_quick_runs_and_kizuna_agrees_with_hand_written_code() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "vae_step.py"), "--quick"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert text.startswith("VAE training step") and "machine:" in text
    for size in ("small", "mnist"):
        line = next(line for line in text.splitlines() if line.startswith(f"AGREE {size}"))
        assert line.endswith(" ok"), line
        diff = float(line.split("|diff| = ")[1].split()[0])
        assert diff < 1e-3
    assert text.count("kizuna Model.train") == 2 and text.count("hand-written epoch loop") >= 2
    for peer in ("Pixyz", "Pyro Trace_ELBO"):
        try:
            __import__("pixyz" if peer == "Pixyz" else "pyro")
        except ImportError:
            assert f"skipped {peer}: not installed" in text
