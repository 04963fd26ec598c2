"""A unary operation (``abs``, ``detach``, batch ``mean`` / ``sum``) of a number constant or of a `Parameter` given a
Python number, where it meets a float64 term (review J, stop 44, finding 3).

``LogProb(p) * Parameter("beta").abs()`` given 0.1 (or ``ValueLoss(0.1).abs()``, ``.detach()``, ``.mean()``,
``.sum()``) computed with 0.1 rounded to float32 in a float64 evaluation (1.5e-8 relative off), while ``-beta`` and
the binary operators kept the exact number, as the `Parameter` docstring promises. The value is now the float64 hand
value bit for bit; float32 evaluations, tensor-valued parameters, integers and the printed formula are as before.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from kizuna.distributions import Normal
from kizuna.losses import Expectation, LogProb, Parameter, ValueLoss

OPS = {
    "abs": lambda c: c.abs(),
    "abs()": lambda c: abs(c),
    "detach": lambda c: c.detach(),
    "mean": lambda c: c.mean(),
    "sum": lambda c: c.sum(),
    "mean of abs": lambda c: c.abs().mean(),
}
CONSTANTS = {
    "ValueLoss(0.1)": (lambda: ValueLoss(0.1), {}),
    "Parameter given 0.1": (lambda: Parameter("beta"), {"beta": 0.1}),
}
X64 = torch.tensor([0.3, 1.7, -2.2], dtype=torch.float64)


def _log_p(dtype: torch.dtype) -> LogProb:
    return LogProb(Normal(var=["x"], loc=0.0, scale=1.0, name="p").to(dtype))


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("constant", list(CONSTANTS))
def test_a_unary_op_of_a_number_is_the_exact_number_in_a_float64_evaluation(op: str, constant: str) -> None:
    build, given = CONSTANTS[constant]
    log_p = _log_p(torch.float64)
    base = log_p.eval({"x": X64})
    np.testing.assert_allclose(base.numpy(), stats.norm.logpdf(X64.numpy()), rtol=1e-15)
    for loss, hand in ((log_p * OPS[op](build()), 0.1 * base), (log_p + OPS[op](build()), base + 0.1),
                       (log_p * (1 - OPS[op](build())), (1 - 0.1) * base)):
        value = loss.eval({"x": X64, **given})
        assert value.dtype == torch.float64
        assert torch.equal(value, hand), (str(loss), (value - hand).abs().max().item())  # (float32's 0.1: 1.5e-8 off)


@pytest.mark.parametrize("make", [lambda: ValueLoss(-0.1), lambda: -ValueLoss(0.1), lambda: -Parameter("beta"),
                                  lambda: Parameter("nb")], ids=["ValueLoss(-0.1)", "-ValueLoss(0.1)", "-beta", "nb"])
def test_abs_of_a_negative_number_is_its_exact_magnitude(make) -> None:
    log_p = _log_p(torch.float64)
    value = (log_p * make().abs()).eval({"x": X64, "beta": 0.1, "nb": -0.1})
    assert torch.equal(value, 0.1 * log_p.eval({"x": X64}))


def test_the_mean_of_an_integer_parameter_is_exact_in_a_float64_evaluation() -> None:
    """An int given to a parameter: its mean is a float (as torch's mean of an integer term, in the default dtype
    before: 2**40 + 1 rounded to float32), its abs and sum stay integers computed as int64 (as before)."""
    log_p, n = _log_p(torch.float64), 2**40 + 1
    base = log_p.eval({"x": X64})
    assert torch.equal((log_p * Parameter("n").mean()).eval({"x": X64, "n": n}), n * base)
    ints = {"n": 3, "m": -4}
    abs_product = (Parameter("n").abs() * Parameter("m").abs()).eval(ints)
    assert abs_product.dtype == torch.int64 and abs_product.item() == 12
    sum_product = (Parameter("n").sum() * Parameter("m")).eval(ints)
    assert sum_product.dtype == torch.int64 and sum_product.item() == -12
    mean_product = (Parameter("n").mean() * Parameter("m")).eval(ints)
    assert mean_product.dtype == torch.get_default_dtype() and mean_product.item() == -12.0
    assert (Parameter("n").abs()).eval({"n": -3}).dtype == torch.int64  # alone: the parameter's tensor, as before


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("constant", list(CONSTANTS))
def test_a_float32_evaluation_is_unchanged(op: str, constant: str) -> None:
    """In float32 the number meets the float32 term as 0.1 did before: the value of ``log p * 0.1``."""
    build, given = CONSTANTS[constant]
    log_p = _log_p(torch.float32)
    x = X64.float()
    value = (log_p * OPS[op](build())).eval({"x": x, **given})
    assert value.dtype == torch.float32
    assert torch.equal(value, log_p.eval({"x": x}) * 0.1)
    alone = OPS[op](build()).eval(given)  # alone, the constant's tensor of the default dtype, as Pixyz's ValueLoss
    assert alone.dtype == torch.get_default_dtype() and alone.item() == pytest.approx(0.1)


def test_a_tensor_valued_parameter_is_unchanged() -> None:
    """A tensor given to the parameter is used as given: a float32 0.1 stays float32's 0.1; a per-row float64 tensor
    is combined row by row; a gradient reaches it through abs / mean, not through detach."""
    log_p = _log_p(torch.float64)
    base = log_p.eval({"x": X64})
    beta32 = torch.tensor(0.1)
    for op in OPS.values():
        value = (log_p * op(Parameter("beta"))).eval({"x": X64, "beta": beta32})
        assert torch.equal(value, base * beta32.abs())  # (0.1 rounded to float32: the tensor the user gave)
    w = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    value = (log_p * Parameter("w").abs()).eval({"x": X64, "w": w})
    assert torch.equal(value, base * w.detach().abs())
    (log_p * Parameter("w").mean()).eval({"x": X64, "w": w}).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), np.full(3, base.sum().item() / 3), rtol=1e-15)
    assert not (log_p * Parameter("w").detach()).eval({"x": X64, "w": w}).requires_grad


def test_a_named_unary_constant_is_still_reported() -> None:
    log_p = _log_p(torch.float64)
    value, terms = (log_p * ValueLoss(0.1).abs().named("c")).eval({"x": X64}, return_terms=True)
    assert torch.equal(value, 0.1 * log_p.eval({"x": X64}))
    assert "c" in terms and terms["c"].item() == pytest.approx(0.1)


def test_abs_of_a_per_row_constant_is_laid_out_for_the_draws_as_its_negation_is() -> None:
    """Inside an expectation over several draws per row, ``|w|`` of a per-row tensor constant is repeated for the
    draws, as ``w`` and ``-w`` are (it was the 'do not combine row by row' ValueError)."""
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q").double()
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, name="p").double()
    x = torch.tensor([[0.3], [1.0], [2.0]], dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    values = []
    for weight in (ValueLoss(w).abs(), ValueLoss(w.abs())):
        torch.manual_seed(1)
        values.append(Expectation(q, LogProb(p) * weight, sample_shape=(4,)).eval({"x": x}))
    assert torch.equal(values[0], values[1])


def test_the_printed_formula_is_unchanged() -> None:
    log_p = LogProb(Normal(var=["x"], loc=0.0, scale=1.0, name="p"))
    for c, text, tex in ((ValueLoss(0.1), "0.1", "0.1"), (Parameter("beta"), "beta", "\\beta")):
        assert str(log_p * c.abs()) == f"log p(x) * |{text}|"
        assert str(log_p * c.detach()) == f"log p(x) * detach({text})"
        assert str(log_p * (1 - c.mean())) == f"log p(x) * (1 - mean({text}))"
        assert str(log_p + c.sum()) == f"log p(x) + sum({text})"
        assert (log_p * c.abs()).loss_text == f"\\log p(x) \\cdot \\left|{tex}\\right|"
        assert (log_p * (1 - c.mean())).loss_text == \
            f"\\log p(x) \\cdot \\left(1 - \\operatorname{{mean}}\\left({tex}\\right)\\right)"
