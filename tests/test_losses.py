"""The loss algebra: values against direct torch computations, formula text, one evaluation."""

import math

import pytest
import torch
from mc_reference import default_dtype

from kizuna.distributions import Normal
from kizuna.losses import (
    ConstantVar,
    Expectation,
    KullbackLeibler,
    LogProb,
    MaxLoss,
    MinLoss,
    Parameter,
    Prob,
    ValueLoss,
)
from kizuna.losses import Expectation as E


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


class Encoder(Normal):
    """q(z|x), counting its forward calls."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return {"loc": x[:, :2] * 0.5, "scale": torch.nn.functional.softplus(x[:, 1:])}


class Decoder(Normal):
    """p(x|z), counting its forward calls."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.calls = 0

    def forward(self, z):
        self.calls += 1
        return {"loc": torch.cat([z, z.sum(1, keepdim=True)], 1), "scale": torch.ones(z.shape[0], 3)}


def vae():
    q, p = Encoder(), Decoder()
    prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="p_prior")
    return q, p, prior


# ----------------------------------------------------------------- arithmetic values
a, b = Parameter("a"), Parameter("b")
ARITHMETIC = {
    "a + b": (lambda: a + b, lambda x, y: x + y),
    "a - b": (lambda: a - b, lambda x, y: x - y),
    "a * b": (lambda: a * b, lambda x, y: x * y),
    "a / b": (lambda: a / b, lambda x, y: x / y),
    "a ** b": (lambda: a**b, lambda x, y: x**y),
    "-a": (lambda: -a, lambda x, y: -x),
    "abs": (lambda: (a - b).abs(), lambda x, y: (x - y).abs()),
    "mean": (lambda: (a * b).mean(), lambda x, y: (x * y).mean()),
    "sum": (lambda: (a * b).sum(), lambda x, y: (x * y).sum()),
    "2 + a": (lambda: 2 + a, lambda x, y: 2 + x),
    "3 - a": (lambda: 3 - a, lambda x, y: 3 - x),
    "a * 2.5": (lambda: a * 2.5, lambda x, y: x * 2.5),
    "1 / a": (lambda: 1 / a, lambda x, y: 1 / x),
    "2 ** a": (lambda: 2**a, lambda x, y: 2**x),
    "a ** 2": (lambda: a**2, lambda x, y: x**2),
    "min": (lambda: MinLoss(a, b), torch.minimum),
    "max": (lambda: MaxLoss(a, 2 * b), lambda x, y: torch.maximum(x, 2 * y)),
    "min number": (lambda: MinLoss(a, 0.5), lambda x, y: x.clamp(max=0.5)),
    "tensor": (lambda: a + ValueLoss(torch.tensor([1.0, 2, 3, 4])), lambda x, y: x + torch.tensor([1.0, 2, 3, 4])),
    "nested": (lambda: ((a - b) ** 2 / (1 + b.abs())).mean(), lambda x, y: ((x - y) ** 2 / (1 + y.abs())).mean()),
}


@pytest.mark.parametrize("case", list(ARITHMETIC))
def test_arithmetic_values_match_torch(case):
    make, direct = ARITHMETIC[case]
    x, y = torch.tensor([0.5, -1.0, 2.0, 0.25]), torch.tensor([1.5, 2.0, -0.5, 3.0])
    torch.testing.assert_close(make().eval({"a": x, "b": y}), direct(x, y), rtol=0, atol=0)


def test_log_prob_and_prob_values():
    p = Normal(var=["x"], cond_var=["m"], loc="m", scale=2.0)
    x = {"x": torch.tensor([[0.1, 0.2], [1.0, -3.0]]), "m": torch.tensor([[0.0, 1.0], [2.0, 0.0]])}
    expected = torch.distributions.Normal(x["m"], 2.0).log_prob(x["x"]).sum(1)
    torch.testing.assert_close(LogProb(p).eval(x), expected)
    torch.testing.assert_close(Prob(p).eval(x), expected.exp())
    torch.testing.assert_close(LogProb(p, sum_features=False).eval(x).sum(1), expected)


def test_constant_var_fixes_a_variable():
    loss = ConstantVar(a * Parameter("beta"), {"beta": 4.0})
    assert loss.input_var == ["a"]
    x = torch.tensor([1.0, -2.0])
    torch.testing.assert_close(loss.eval({"a": x}), 4.0 * x)


def test_non_loss_operands_are_rejected():
    with pytest.raises(TypeError, match="cannot combine"):
        a + "b"
    with pytest.raises(TypeError, match="one variable name"):
        Parameter(["a", "b"])


# ------------------------------------------------------------------------ formula text
def test_vae_loss_prints_like_the_formula():
    q, p, prior = vae()
    loss = (KullbackLeibler(q, prior) - E(q, LogProb(p))).mean()
    assert str(loss) == "mean(KL[q(z|x)||p_{prior}(z)] - E_{q(z|x)}[log p(x|z)])"
    assert loss.to_latex() == (
        r"\operatorname{mean}\left(D_{\mathrm{KL}}\left[q(z|x)\,\|\,p_{prior}(z)\right] - "
        r"\mathbb{E}_{q(z|x)}\left[\log p(x|z)\right]\right)"
    )
    assert loss.input_var == ["x"]


c = Parameter("c")
TEXT = [  # (loss, text, LaTeX): parentheses exactly where the meaning needs them
    (lambda: a - (b - c), "a - (b - c)", r"a - \left(b - c\right)"),
    (lambda: a - b - c, "a - b - c", "a - b - c"),
    (lambda: a + (b - c), "a + b - c", "a + b - c"),
    (lambda: a * (b + c), "a * (b + c)", r"a \cdot \left(b + c\right)"),
    (lambda: a * b + c, "a * b + c", r"a \cdot b + c"),
    (lambda: -(a + b), "-(a + b)", r"-\left(a + b\right)"),
    (lambda: -a + b, "-a + b", "-a + b"),
    (lambda: (a + b) ** 2, "(a + b)^2", r"{\left(a + b\right)}^{2}"),
    (lambda: -(a**2), "-a^2", "-{a}^{2}"),
    (lambda: (-a) ** 2, "(-a)^2", r"{\left(-a\right)}^{2}"),
    (lambda: a ** (b + c), "a^(b + c)", r"{a}^{\left(b + c\right)}"),
    (lambda: a / (b * c), "a / (b * c)", r"\frac{a}{b \cdot c}"),
    (lambda: a / b * c, "a / b * c", r"\frac{a}{b} \cdot c"),
    (lambda: (a + b) / 2, "(a + b) / 2", r"\frac{a + b}{2}"),
    (lambda: 0.5 * (a - b).abs(), "0.5 * |a - b|", r"0.5 \cdot \left|a - b\right|"),
    (lambda: MinLoss(a, b + c).sum(), "sum(min(a, b + c))",
     r"\operatorname{sum}\left(\min\left(a, b + c\right)\right)"),
    (lambda: MaxLoss(a, 1), "max(a, 1)", r"\max\left(a, 1\right)"),
    # a negative constant binds like a unary minus; a log is a function application, bracketed as a power's base
    (lambda: ValueLoss(-2) ** 2, "(-2)^2", r"{\left(-2\right)}^{2}"),
    (lambda: a - (-2), "a - (-2)", r"a - \left(-2\right)"),
    (lambda: a + (-2), "a + (-2)", r"a + \left(-2\right)"),
    (lambda: a * (-2), "a * (-2)", r"a \cdot \left(-2\right)"),
    (lambda: a - torch.tensor(-3.0), "a - (-3)", r"a - \left(-3\right)"),
    (lambda: a ** -1, "a^(-1)", "{a}^{-1}"),
    (lambda: -ValueLoss(-2), "-(-2)", r"-\left(-2\right)"),
    (lambda: a - 2, "a - 2", "a - 2"),
    (lambda: LogProb(Normal(var=["x"], loc=0.0, scale=1.0)) ** 2, "(log p(x))^2", r"{\left(\log p(x)\right)}^{2}"),
    (lambda: -LogProb(Normal(var=["x"], loc=0.0, scale=1.0)), "-log p(x)", r"-\log p(x)"),
    (lambda: 2 * LogProb(Normal(var=["x"], loc=0.0, scale=1.0)), "2 * log p(x)", r"2 \cdot \log p(x)"),
    (lambda: Prob(Normal(var=["x"], loc=0.0, scale=1.0)) ** 2, "p(x)^2", "{p(x)}^{2}"),
]


@pytest.mark.parametrize(("make", "text", "latex"), TEXT, ids=[t[1] for t in TEXT])
def test_formula_text_and_latex(make, text, latex):
    loss = make()
    assert str(loss) == text
    assert loss.to_latex() == latex


def test_expectation_method_is_the_expectation_loss():
    q, p, _ = vae()
    x = torch.randn(4, 3)
    loss = LogProb(p).expectation(q)
    assert str(loss) == str(E(q, LogProb(p))) == "E_{q(z|x)}[log p(x|z)]"
    torch.manual_seed(0)
    value = loss.eval({"x": x})
    torch.manual_seed(0)
    torch.testing.assert_close(value, Expectation(q, LogProb(p)).eval({"x": x}))


# ---------------------------------------------------------------------- one evaluation
def _vae_loss():
    q, p, prior = vae()
    kl, recon = KullbackLeibler(q, prior), E(q, LogProb(p)).named("recon")
    return q, p, kl, recon, (kl - recon).mean()


def test_terms_come_from_the_same_evaluation():
    q, p, kl, recon, loss = _vae_loss()
    x = torch.randn(5, 3)
    torch.manual_seed(0)
    value, terms = loss.eval({"x": x}, return_terms=True)
    calls = (q.calls, p.calls)
    torch.manual_seed(0)
    plain = loss.eval({"x": x})
    # the terms cost no extra pass, and the decoder runs once per evaluation
    assert (q.calls - calls[0], p.calls - calls[1]) == calls
    assert p.calls == 2
    assert list(terms) == ["KL[q(z|x)||p_{prior}(z)]", "recon"]
    torch.testing.assert_close(value, plain)
    torch.testing.assert_close(terms["KL[q(z|x)||p_{prior}(z)]"] - terms["recon"], value)
    torch.testing.assert_close(terms["KL[q(z|x)||p_{prior}(z)]"], kl.eval({"x": x}).mean())


def test_each_network_runs_once_per_evaluation():
    q, p, *_, loss = _vae_loss()
    loss.eval({"x": torch.randn(5, 3)}, return_terms=True)
    assert (q.calls, p.calls) == (1, 1)


def test_named_relabels_a_term_and_its_text_is_kept():
    q, p, _ = vae()
    recon = E(q, LogProb(p)).named("recon")
    assert recon.label == "recon"
    assert str(recon) == "E_{q(z|x)}[log p(x|z)]"
    _, terms = (-recon).eval({"x": torch.randn(2, 3)}, return_terms=True)
    assert list(terms) == ["recon"]


def test_return_dict_and_return_all():
    q, p, kl, recon, loss = _vae_loss()
    x = torch.randn(5, 3)
    value, everything = loss.eval({"x": x}, return_dict=True)  # Pixyz's default return_all=True
    assert value.shape == () and sorted(everything) == ["x", "z"] and everything["x"] is x
    value, samples = loss.eval({"x": x}, return_dict=True, return_all=False)
    assert list(samples) == ["z"] and samples["z"].shape == (5, 2)
    value, samples, terms = loss.eval({"x": x}, return_dict=True, return_all=False, return_terms=True)
    assert list(samples) == ["z"] and len(terms) == 2
    _, many = E(q, LogProb(p), sample_shape=(7,)).eval({"x": x}, return_dict=True, return_all=False)
    assert many["z"].shape == (7, 5, 2)  # sample-major, like Distribution.sample(sample_shape=...)


def test_eval_with_a_missing_variable_names_it():
    q, p, kl, recon, loss = _vae_loss()
    with pytest.raises(ValueError, match=r"needs x, but was given y"):
        loss.eval({"y": torch.randn(2, 3)})
    with pytest.raises(ValueError, match=r"needs beta"):
        (loss * Parameter("beta")).eval({"x": torch.randn(2, 3)})


def test_distributions_lists_every_distribution_once():
    q, p, kl, recon, loss = _vae_loss()
    assert {id(d) for d in loss.distributions()} == {id(q), id(p), id(kl.q)}
    assert len(loss.distributions()) == 3


def test_elbo_value_is_per_row():
    q, p, prior = vae()
    x = torch.randn(6, 3)
    loss = KullbackLeibler(q, prior) - E(q, LogProb(p))
    assert loss.eval({"x": x}).shape == (6,)
    assert math.isfinite(loss.mean().eval({"x": x}).item())


def test_negated_operands_are_parenthesised():
    a, b = Parameter("a"), Parameter("b")
    assert str(a - (-b)) == "a - (-b)"
    assert str(a + -b) == "a + (-b)"
    assert str(a * -b) == "a * (-b)"
    assert str(-(a * b)) == "-(a * b)"
    assert (a - (-b)).eval({"a": 1.0, "b": 2.0}).item() == 3.0


def test_negative_constants_print_as_they_evaluate():
    """(-2)^2 is 4: it printed as -2^2, which reads as -4."""
    square = ValueLoss(-2) ** 2
    assert str(square) == "(-2)^2" and square.eval({}).item() == 4.0
    a = Parameter("a")
    assert (a - (-2)).eval({"a": 1.0}).item() == 3.0 and str(a - (-2)) == "a - (-2)"
    # on the left a negative constant reads the same with or without brackets: none, as Pixyz prints it
    assert str(ValueLoss(-2) * a) == "-2 * a" and str(-2 * a) == "-2 * a" and str(a * (-2)) == "a * (-2)"
    # a sum over time is one symbol: bracketed as the base of a power
    from kizuna.losses import IterativeLoss

    q = Normal(var=["x"], cond_var=["h"], loc="h", scale=1.0)
    steps = IterativeLoss(LogProb(q).mean(), series_var=["x", "h"], max_iter=3)
    assert str(steps**2) == "(sum_{t=0}^{2} mean(log p(x|h)))^2"
    assert (steps**2).to_latex().startswith(r"{\left(\sum_{t=0}^{2}")


def test_constants_are_coefficients_not_terms():
    p = Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[3])
    x = torch.randn(4, 3)
    lp = LogProb(p)
    loss = (lp * 2).mean() / 4
    value, terms = loss.eval({"x": x}, return_terms=True)
    assert list(terms) == [str(lp)]
    torch.testing.assert_close(terms[str(lp)], p.get_log_prob({"x": x}).mean())
    torch.testing.assert_close(value, p.get_log_prob({"x": x}).mean() / 2)


def test_a_learnable_coefficient_is_a_parameter_of_the_loss():
    """``LogProb(p) * nn.Parameter(w)``: w is the loss's parameter (it was a non-persistent buffer, missing from
    ``loss.parameters()``, and ``.double()`` replaced it with a plain copy that no longer reached the user's w)."""
    from torch import nn

    p = Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[2])
    w = nn.Parameter(torch.tensor(2.0, dtype=torch.float32))
    loss = (LogProb(p) * w).mean() + ValueLoss(1) / w  # (1 / w would be a tensor, computed once, here)
    assert any(q is w for q in loss.parameters()) and len(list(loss.parameters())) == 1
    x = torch.randn(3, 2, dtype=torch.float32)
    loss.eval({"x": x}).backward()
    torch.testing.assert_close(w.grad, (p.get_log_prob({"x": x}).mean() - 1 / w.detach() ** 2).float())
    loss.double()  # converted in place, as a torch module's parameter: still the user's w
    assert w.dtype == torch.float64 and isinstance(w, nn.Parameter)
    assert [q for q in loss.parameters()] == [w] and all(q is w for q in loss.parameters())
    w.grad = None
    value = loss.eval({"x": x.double()})
    assert value.dtype == torch.float64
    value.backward()
    assert w.grad is not None and w.grad.dtype == torch.float64
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)
    before = w.detach().clone()
    optimizer.step()
    assert not torch.equal(w.detach(), before)
    assert str(LogProb(p) * w) == f"log p(x) * {w.item():g}"


def test_abs_of_a_loss_a_draw_count_of_zero_and_an_unknown_baseline() -> None:
    """abs(loss) is AbsLoss (the module docstring lists abs; only .abs() existed); sample_shape with a zero and a
    REINFORCE baseline that is neither a number nor 'loo' are named when built (an IndexError, and a float()
    failure at evaluation, before)."""
    from kizuna.distributions import Normal
    from kizuna.losses import ELBO, REINFORCE, LogProb, Parameter

    p = Normal(var=["z"], loc=0.0, scale=1.0)
    z = torch.tensor([[-1.5], [0.5]])
    torch.testing.assert_close(abs(LogProb(p)).eval({"z": z}), LogProb(p).eval({"z": z}).abs())
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0)
    with pytest.raises(ValueError, match=r"ELBO: sample_shape must hold positive sizes, got \(0,\)"):
        ELBO(lik * p, q, sample_shape=(0,))
    with pytest.raises(ValueError, match="REINFORCE: baseline must be a finite number, 'loo' or None, got 'mean'"):
        REINFORCE(q, Parameter("z"), baseline="mean")
    import numpy as np

    for number in (torch.tensor(0.5), np.array(0.5), np.float32(0.5), 1):  # numbers as before
        assert float(REINFORCE(q, Parameter("z"), baseline=number).baseline) == float(number)


def test_constant_var_tensors_follow_the_loss_to_another_dtype() -> None:
    """``ConstantVar``'s constants were a plain dict: ``.double()`` left a float32 tensor, evaluated as
    0.10000000149 in a float64 model. Tensors are buffers now (converted), numbers stay as given."""
    from kizuna.distributions import Normal
    from kizuna.formula.expr import ConstantVar
    from kizuna.losses import LogProb

    base = LogProb(Normal(var=["x"], cond_var=["m", "s"], loc="m", scale="s"))
    loss = ConstantVar(base, {"m": torch.tensor([[0.1]], dtype=torch.float32), "s": 0.5}).double()
    assert loss.constant_dict["m"].dtype == torch.float64 and loss.constant_dict["s"] == 0.5
    got = loss.eval({"x": torch.tensor([[0.3]], dtype=torch.float64)})
    m = float(torch.tensor(0.1, dtype=torch.float32))  # the float32 tensor given, converted exactly
    want = -0.5 * ((0.3 - m) / 0.5) ** 2 - math.log(0.5 * math.sqrt(2 * math.pi))
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want, rel=1e-15)


def test_expectation_takes_a_number_of_draws_as_its_sample_shape() -> None:
    """``sample_shape=3`` failed with torch's "'int' object is not iterable"; a number is that many draws, the same
    estimate as ``(3,)`` from the same stream; other values are named."""
    p = Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[2])
    q = Normal(var=["y"], cond_var=["x"], loc="x", scale=1.0)
    y = torch.zeros(4, 2)
    torch.manual_seed(0)
    a = E(p, LogProb(q), sample_shape=3).eval({"y": y})
    torch.manual_seed(0)
    assert torch.equal(a, E(p, LogProb(q), sample_shape=(3,)).eval({"y": y}))
    for bad in ("3", 2.5):
        with pytest.raises(TypeError, match=r"sample_shape must be a number of draws or a shape"):
            E(p, LogProb(q), sample_shape=bad)
