"""The bottom of the formula layer: the `Loss` expression, its evaluation context and arithmetic.

Everything above imports from here and nothing here imports from above: `kizuna.distributions`
imports `kizuna.formula` at the top level (for ``p.log_prob()``), and `kizuna.losses` builds its
terms (KL, expectations, ELBO, ...) on both. ``kizuna.losses`` re-exports every public name.
"""

from kizuna.formula.expr import (
    AbsLoss,
    AddLoss,
    BatchMean,
    BatchSum,
    ConstantVar,
    Detach,
    DivLoss,
    EvalContext,
    Loss,
    MaxLoss,
    MinLoss,
    MulLoss,
    NegLoss,
    Parameter,
    PowLoss,
    SubLoss,
    ValueLoss,
    as_loss,
)
from kizuna.formula.log_prob import LogProb, Prob

__all__ = [
    "AbsLoss", "AddLoss", "BatchMean", "BatchSum", "Detach", "ConstantVar", "DivLoss", "EvalContext", "LogProb", "Loss",
    "MaxLoss", "MinLoss", "MulLoss", "NegLoss", "Parameter", "PowLoss", "Prob", "SubLoss", "ValueLoss", "as_loss",
]
