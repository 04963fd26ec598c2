"""The constant flags an operator keeps (stop 49, review R2 of e5377be): `_of_constants` reads them instead of
walking the tree, so they must be right for an operator written the Pixyz way (its own ``__init__``, not
``_Binary.__init__``) and after an operand is replaced. Reference: the float64 product computed by hand; a number
constant taken as a tensor of the default dtype is 0.3 rounded to float32 (a relative error of 4e-8)."""

from __future__ import annotations

import torch

from kizuna.distributions import Normal
from kizuna.formula import expr
from kizuna.losses import AddLoss, LogProb, ValueLoss

F64 = torch.float64


def density() -> tuple[Normal, dict[str, torch.Tensor], float]:
    p = Normal(var=["x"], loc=torch.zeros(2, dtype=F64), scale=torch.ones(2, dtype=F64), name="p")
    x = {"x": torch.ones(3, 2, dtype=F64)}
    return p, x, LogProb(p).eval(x)[0].item()


class PixyzStyleAdd(AddLoss):
    """An operator with its own ``__init__`` that sets its operands itself, as Pixyz's LossOperator subclasses do."""

    def __init__(self, loss1: expr.Loss, loss2: expr.Loss) -> None:
        expr.Loss.__init__(self, loss1.input_var + loss2.input_var)
        self.loss1, self.loss2 = loss1, loss2


def test_an_operator_that_skipped_the_base_init_is_still_a_constant() -> None:
    p, x, log_p = density()
    w = PixyzStyleAdd(ValueLoss(0.1), ValueLoss(0.2))
    assert expr._of_constants(w)
    assert (w * LogProb(p)).eval(x)[0].item() == (0.1 + 0.2) * log_p


def test_an_operand_replaced_after_building_is_seen_by_the_losses_built_on_it() -> None:
    p, x, log_p = density()
    m = ValueLoss(0.1) * ValueLoss(2.0)
    m.loss2 = ValueLoss(3.0)
    assert m._constants == (True, True) and expr._of_constants(m)
    assert (m * LogProb(p)).eval(x)[0].item() == (0.1 * 3.0) * log_p
    m.loss2 = LogProb(p)  # no longer a constant: the flags follow
    assert m._constants == (True, False) and not expr._of_constants(m)
    torch.testing.assert_close(m.eval(x), 0.1 * LogProb(p).eval(x), rtol=0, atol=0)
