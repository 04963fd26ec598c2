"""Score-function (REINFORCE) terms of expectations, against hand-written surrogates and exact gradients.

Found in a review (2026-12-05): the term of a renamed product counted a reparameterised factor twice; a per-feature
``f`` paired entry j with row j's score; a flow's base drew its parameters without a graph for a score-function
estimator; a marginal over a discrete variable with fixed draws could not be averaged over. Found in a second review:
an expectation over a marginal whose integrated factor needs a score-function term, and REINFORCE over any marginal,
raised (the joint's factors were scored without the integrated variables' draws). References: the closed
forms of the expectations (finite sums, Gaussian moments) and the same estimator written by hand on the same draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kizuna.distributions import Bernoulli, Categorical, Normal, TransformedDistribution
from kizuna.flows import MAF
from kizuna.formula.expr import EvalContext, Loss
from kizuna.losses import REINFORCE, Expectation

F64 = torch.float64


class Fn(Loss):
    """A loss computed by a Python function of the values (the test's f)."""

    def __init__(self, fn, inputs: list[str]) -> None:
        super().__init__(inputs)
        self.fn = fn

    def _value(self, ctx: EvalContext) -> torch.Tensor:
        return self.fn(ctx.values)

    def _render(self, fmt: dict[str, str]) -> str:
        return "f"


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def test_a_renamed_product_scores_only_its_discrete_factor() -> None:
    """E over (w, y) ~ N(0, σ²) × Bernoulli(sigmoid(l)), renamed z -> w, of w² + 3y: d/dσ = 2σ = 3.0 (pathwise only)
    and d/dl = 3 s(1 - s) (score function); the renamed product's whole density got a score term, which gave 0.40
    for σ."""
    grads = []
    for _ in range(200):
        sigma, logit = nn.Parameter(torch.tensor([1.5], dtype=F64)), nn.Parameter(torch.tensor([0.2], dtype=F64))
        q = (Normal(var=["z"], loc=0.0, scale=sigma) * Bernoulli(var=["y"], logits=logit)).replace_var(z="w")
        f = Fn(lambda v: v["w"].pow(2).sum(1) + 3 * v["y"].sum(1), ["w", "y"])
        Expectation(q, f).mean().eval({}, batch_n=100).backward()
        grads.append(torch.cat([sigma.grad, logit.grad]))
    g = torch.stack(grads)
    mean, se = g.mean(0), g.std(0) / math.sqrt(len(g))
    s = torch.sigmoid(torch.tensor(0.2, dtype=F64))
    exact = torch.tensor([3.0, 3 * s * (1 - s)], dtype=F64)
    assert ((mean - exact).abs() < 5 * se).all(), (mean, exact, se)


@pytest.mark.parametrize("estimator", [Expectation, REINFORCE])
def test_a_per_feature_f_pairs_each_row_with_its_own_score(estimator) -> None:
    """f of shape (B, D) with D == B: the surrogate's gradient is that of f + sg(f) (log q - sg(log q))[:, None] on the
    same draws (the score broadcast along the last dimension, pairing entry j with row j)."""
    logits = nn.Parameter(torch.tensor([[0.3], [-0.4], [1.0]], dtype=F64))

    class Q(Bernoulli):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": logits.expand(x.shape[0], 1)}

    w = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0], [4.0, -3.0, 1.0]], dtype=F64)
    x = torch.zeros(3, 1, dtype=F64)
    torch.manual_seed(4)
    estimator(Q(), Fn(lambda v: v["z"] * w, ["z"])).sum().eval({"x": x}).backward()
    got = logits.grad.clone()
    logits.grad = None
    torch.manual_seed(4)
    z = torch.bernoulli(torch.sigmoid(logits.detach()))
    log_q = torch.distributions.Bernoulli(logits=logits).log_prob(z).sum(1)
    f = z * w
    (f + f.detach() * (log_q - log_q.detach())[:, None]).sum().backward()
    torch.testing.assert_close(got, logits.grad)


def test_leave_one_out_needs_f_per_row() -> None:
    q = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1])
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    from kizuna.losses import LogProb

    with pytest.raises(ValueError, match="baseline='loo' needs f per row"):
        REINFORCE(q, LogProb(p).mean(), sample_shape=(2,), baseline="loo").eval({"x": torch.zeros(3, 1)})


def test_a_marginal_over_fixed_discrete_draws_is_averaged_pathwise() -> None:
    """z ~ ∫ N(z; y μ, 1) Bernoulli(y; 0.3) dy (a mixture prior written as a marginal): d/dμ E[z²] = 0.3 · 2μ, the
    discrete factor's draws fixed (no term), the Gaussian's reparameterised (the marginal's intractable density was
    asked for)."""
    mu, m = _bernoulli_marginal()
    grads = []
    for _ in range(200):
        mu.grad = None
        Expectation(m, Fn(lambda v: v["z"].pow(2).reshape(v["z"].shape[0], -1).sum(1), ["z"])).mean().eval(
            {}, batch_n=200).backward()
        grads.append(mu.grad.item())
    g = torch.tensor(grads)
    assert abs(g.mean().item() - 0.6) < 5 * g.std().item() / math.sqrt(len(g))


def _mixture_marginal() -> tuple[torch.Tensor, torch.Tensor, object]:
    """x ~ ∫ N(x; μ_z, 0.1²) Categorical(z; softmax θ) dz with θ and μ trainable: (θ, μ, the marginal)."""
    theta = nn.Parameter(torch.tensor([0.3, -0.2, 0.5], dtype=F64))
    mus = nn.Parameter(torch.tensor([-2.0, 0.0, 3.0], dtype=F64))

    class Prior(Categorical):
        def __init__(self) -> None:
            super().__init__(var=["z"], name="pz")
            self.theta = theta

        def forward(self) -> dict[str, torch.Tensor]:
            return {"logits": self.theta[None]}

    class Lik(Normal):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="px")
            self.mus = mus

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": (z * self.mus).sum(-1, keepdim=True), "scale": torch.full_like(z[:, :1], 0.1)}

    return theta, mus, (Lik() * Prior()).marginalize_var("z")


@pytest.mark.parametrize("cls", [Expectation, REINFORCE])
def test_a_marginal_over_a_trainable_discrete_variable_is_scored_at_the_joint_draw(cls) -> None:
    """E_{p(x)}[-(x - 1)²] with x ~ ∫ N(x; μ_z, 0.1²) Categorical(z; softmax θ) dz: the gradient is the hand-written
    estimator on the same draws (f · ∇ log π_z, and f · ∇ log N(x; μ_z, 0.1²) for REINFORCE, which draws x without
    the reparameterisation; z read off x: the components are 20 scales apart), and its mean over draws is the exact
    gradient of Σ_z π_z (-(μ_z - 1)² - 0.01). Both raised (the joint's factors were scored without z)."""
    theta, mus, marg = _mixture_marginal()
    f = Fn(lambda v: -(v["x"] - 1).pow(2).sum(1), ["x"])
    loss, d = cls(marg, f).mean().eval({}, batch_n=50, return_dict=True)
    assert set(d) == {"x"}  # f and the caller see the kept variable only
    got = torch.autograd.grad(loss, [theta, mus], retain_graph=True)  # x keeps its graph for the hand-written one
    x = d["x"]
    z = (x - mus.detach()).abs().argmin(1)
    fx = -(x - 1).pow(2).sum(1)
    logp = torch.log_softmax(theta, 0)[z]
    if cls is REINFORCE:
        logp = logp + torch.distributions.Normal(mus[z], 0.1).log_prob(x[:, 0])
    want = torch.autograd.grad((fx + fx.detach() * (logp - logp.detach())).mean(), [theta, mus], allow_unused=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, torch.zeros_like(g) if w is None else w)

    grads, values = [], []
    for _ in range(200):
        v = cls(marg, f).mean().eval({}, batch_n=100)
        grads.append(torch.cat(torch.autograd.grad(v, [theta, mus])))
        values.append(v.detach())
    g, val = torch.stack(grads), torch.stack(values)
    pi = torch.softmax(theta, 0)
    exact = (pi * (-(mus - 1).pow(2) - 0.01)).sum()
    exact_grad = torch.cat(torch.autograd.grad(exact, [theta, mus]))
    se = g.std(0) / math.sqrt(len(g))
    assert ((g.mean(0) - exact_grad).abs() < 5 * se).all(), (g.mean(0), exact_grad, se)
    assert abs(val.mean() - exact.detach()) < 5 * val.std() / math.sqrt(len(val))


def _bernoulli_marginal() -> tuple[torch.Tensor, object]:
    """z ~ ∫ N(z; y μ, 1) Bernoulli(y; 0.3) dy with μ trainable: (μ, the marginal)."""
    mu = nn.Parameter(torch.tensor([1.0], dtype=F64))

    class Z(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["y"], name="p")

        def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": y * mu, "scale": torch.ones_like(y)}

    return mu, (Z() * Bernoulli(var=["y"], probs=torch.tensor([0.3], dtype=F64))).marginalize_var("y")


def test_reinforce_over_a_marginal_over_fixed_discrete_draws() -> None:
    """REINFORCE over z ~ ∫ N(z; y μ, 1) Bernoulli(y; 0.3) dy scores p(z|y) at the joint draw (it raised: p(z|y)
    needs y): d/dμ E[z²] = 0.3 · 2μ."""
    mu, m = _bernoulli_marginal()
    f = Fn(lambda v: v["z"].pow(2).reshape(v["z"].shape[0], -1).sum(1), ["z"])
    grads = []
    for _ in range(200):
        grads.append(torch.autograd.grad(REINFORCE(m, f).mean().eval({}, batch_n=200), mu)[0].item())
    g = torch.tensor(grads)
    assert abs(g.mean().item() - 0.6) < 5 * g.std().item() / math.sqrt(len(g))


def test_renamed_and_nested_marginals_find_their_joint_draws() -> None:
    """A renamed marginal and a marginal of a marginal, with several draws per row, score the joint's factors at
    the draw the marginal made: the renamed one gives the plain marginal's value and gradient on the same draws."""
    theta, mus, marg = _mixture_marginal()
    f = Fn(lambda v: -(v["x"] - 1).pow(2).sum(1), ["x"])
    g = Fn(lambda v: -(v["w"] - 1).pow(2).sum(1), ["w"])
    noise = Normal(var=["u"], cond_var=["x"], loc="x", scale=1.0, name="pu")
    nested = (noise * marg.p).marginalize_var("z").marginalize_var("x")
    h = Fn(lambda v: -(v["u"] - 1).pow(2).sum(1), ["u"])
    for cls in (Expectation, REINFORCE):
        values = []
        for p, fn in ((marg, f), (marg.replace_var(x="w"), g), (nested, h)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(3)
                loss = cls(p, fn, sample_shape=(4,)).mean().eval({}, batch_n=5)
            values.append((loss, torch.autograd.grad(loss, [theta, mus])))
        torch.testing.assert_close(values[1], values[0])
        assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in values[2][1])


@pytest.mark.parametrize("cls", [Expectation, REINFORCE])
def test_sample_mean_over_a_marginal_with_several_draws(cls) -> None:
    """``sample_mean=True`` repeats the means of several draws, the integrated variables' means with them: the same
    value and gradient as one draw (several raised: no joint draw was recorded with the repeated means)."""
    mu, m = _bernoulli_marginal()
    f = Fn(lambda v: v["z"].pow(2).reshape(v["z"].shape[0], -1).sum(1), ["z"])
    out = []
    for n in (1, 3):
        loss = cls(m, f, sample_shape=(n,)).mean().eval({}, batch_n=2, sample_mean=True)
        out.append((loss, torch.autograd.grad(loss, mu)))
    torch.testing.assert_close(out[1], out[0])


def test_reinforce_through_a_flow_reaches_the_base_networks() -> None:
    """The base's parameters keep their graph when the flow's draw is not reparameterised: REINFORCE's gradient on the
    base network equals the hand-written sum f · ∇ log q on the same draws (it was None)."""
    torch.set_default_dtype(F64)
    try:
        class Base(Normal):
            def __init__(self) -> None:
                super().__init__(var=["u"], cond_var=["c"], name="p")
                self.layer = nn.Linear(1, 2)

            def forward(self, c: torch.Tensor) -> dict[str, torch.Tensor]:
                return {"loc": self.layer(c), "scale": torch.ones(c.shape[0], 2)}

        base = Base()
        q = TransformedDistribution(base, MAF(2, hidden_features=[4]), var=["x"])
        c = torch.ones(3, 1)
        torch.manual_seed(1)
        REINFORCE(q, Fn(lambda v: v["x"].pow(2).sum(1), ["x"])).sum().eval({"c": c}).backward()
        got = base.layer.weight.grad.clone()
        base.zero_grad()
        torch.manual_seed(1)
        with torch.no_grad():
            x = q.sample({"c": c})["x"]
        (x.pow(2).sum(1) * q.get_log_prob({"c": c, "x": x})).sum().backward()
        torch.testing.assert_close(got, base.layer.weight.grad)
    finally:
        torch.set_default_dtype(torch.float32)


def test_the_batch_of_a_prior_draw_does_not_depend_on_the_dicts_order() -> None:
    """A distribution without inputs draws as many rows as the values' batch: a one-row coefficient listed first (a
    `Parameter` read from the dict) no longer decides it (one z was shared by all five rows, or an error with
    sample_shape)."""
    from kizuna.losses import LogProb, Parameter

    prior = Normal(var=["z"], loc=0.0, scale=1.0)
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    for shape in ((), (3,)):
        loss = Expectation(prior, LogProb(p), sample_shape=shape) * Parameter("beta")
        for values in ({"x": torch.zeros(5), "beta": torch.tensor([2.0])},
                       {"beta": torch.tensor([2.0]), "x": torch.zeros(5)}):
            value, draws = loss.eval(values, return_dict=True)
            assert value.shape == (5,) and draws["z"].shape == (*shape, 5)


def test_the_score_function_of_an_f_reduced_to_one_number_is_unbiased():
    """E_q[f.mean()] with q not reparameterisable: the mean over rows is a function of every draw together, so its
    score term sums every draw's; broadcast per row it was 1 / (rows x draws) of the gradient (0.031 for 0.25 over 8
    rows, 0.0065 with 5 draws). Exact gradient: d/dθ E[mean z] = σ'(0) = 0.25; 3,000 runs, 5 standard errors."""
    class Z(Loss):
        def __init__(self) -> None:
            super().__init__(["z"])

        def _value(self, ctx):  # noqa: ANN001, ANN202
            return ctx.values["z"].sum(-1)

        def _render(self, fmt):  # noqa: ANN001, ANN202
            return "z"

    class Q(Bernoulli):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.th = nn.Parameter(torch.zeros(1))

        def forward(self, x):  # noqa: ANN001, ANN202
            return {"probs": torch.sigmoid(self.th + 0 * x)}

    torch.manual_seed(0)
    q, x = Q(), torch.zeros(8, 1)
    for loss in (Expectation(q, Z().mean()).mean(), REINFORCE(q, Z().mean(), baseline=0.3).mean(),
                 Expectation(q, Z().mean(), sample_shape=5).mean()):
        value = loss.eval({"x": x})
        assert value.dim() == 0  # one number (it came back one per row)
        grads = torch.stack([torch.autograd.grad(loss.eval({"x": x}), q.th)[0] for _ in range(3000)])
        assert abs(grads.mean().item() - 0.25) < 5 * grads.std().item() / 3000**0.5, str(loss)
    for baseline in (float("nan"), float("inf")):  # (the value was NaN)
        with pytest.raises(ValueError, match="REINFORCE: baseline must be a finite number"):
            REINFORCE(q, Z(), baseline=baseline)
