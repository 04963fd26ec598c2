"""`Loss`: a lazy expression over named variables, evaluated on a dict of values.

A loss is a tree. Leaves are formula terms (``LogProb``, ``KullbackLeibler``,
``Expectation``, ...); inner nodes are arithmetic (``+ - * / **``, unary minus, ``abs``,
``mean``, ``sum``, ``min``, ``max``). One evaluation computes every node once and keeps
its value, so the named terms of a composite loss (KL, reconstruction, ...) are reported
from the same forward pass that produced the total (``eval(..., return_terms=True)``).

Per-row terms have shape ``(batch,)``; ``.mean()`` / ``.sum()`` reduce over the batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from kizuna._text import LATEX, TEXT
from kizuna.distributions.memo import shared_parameters

Tensor = torch.Tensor


class EvalContext:
    """The values one evaluation sees, and every node's result (keyed by node identity)."""

    __slots__ = ("values", "results", "samples")

    def __init__(self, values: dict[str, Any], samples: dict[str, Any] | None = None) -> None:
        self.values = values
        self.results: dict[int, Tensor] = {}
        self.samples = {} if samples is None else samples

    def child(self, values: dict[str, Any]) -> EvalContext:
        """A context with other values (inside an expectation); samples are shared."""
        return EvalContext(values, self.samples)

    def value(self, node: Loss) -> Tensor:
        key = id(node)
        if key not in self.results:
            self.results[key] = node._value(self)
        return self.results[key]


def _term_mean(value: Tensor) -> Tensor:
    """A term's batch mean, detached (an integer-valued term is averaged as a float)."""
    value = value.detach()
    return (value if value.is_floating_point() else value.float()).mean()


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


class Loss:
    """Base of every loss; see the module docstring.

    Subclasses implement ``_value(ctx)``, ``_render(fmt)`` and list their sub-losses in
    ``children()``; ``precedence`` controls parentheses (atoms bind tightest).
    """

    precedence = 100
    is_operator = False

    def __init__(self, input_var: Sequence[str] = ()) -> None:
        self._input_var = _unique(list(input_var))
        self._label: str | None = None

    # --------------------------------------------------------------- structure
    @property
    def input_var(self) -> list[str]:
        """The variables ``eval`` needs in its dict."""
        return list(self._input_var)

    def children(self) -> list[Loss]:
        return []

    def named(self, label: str) -> Loss:
        """Give this term a name for the per-term report (default: its formula)."""
        self._label = label
        return self

    @property
    def label(self) -> str:
        return self._label or str(self)

    def terms(self) -> Iterator[Loss]:
        """The formula terms: the outermost non-arithmetic nodes (and explicitly named ones)."""
        if not self.is_operator or self._label is not None:
            yield self
            return
        for child in self.children():
            yield from child.terms()

    # -------------------------------------------------------------------- text
    def _render(self, fmt: dict[str, str]) -> str:
        raise NotImplementedError

    def _wrap(self, child: Loss, fmt: dict[str, str], min_precedence: int) -> str:
        text = child._render(fmt)
        return fmt["paren"].format(text) if child.precedence < min_precedence else text

    @property
    def loss_text(self) -> str:
        """The formula as plain text (what ``print`` shows)."""
        return self._render(TEXT)

    def to_latex(self) -> str:
        """The formula in LaTeX."""
        return self._render(LATEX)

    def __str__(self) -> str:
        return self.loss_text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.loss_text})"

    # -------------------------------------------------------------- evaluation
    def _value(self, ctx: EvalContext) -> Tensor:
        raise NotImplementedError

    def eval(
        self,
        x_dict: Mapping[str, Any] | None = None,
        return_dict: bool = False,
        return_all: bool = False,
        return_terms: bool = False,
    ) -> Any:
        """Evaluate on ``x_dict``.

        Returns the loss tensor; with ``return_dict`` also the dict of values drawn while
        evaluating (plus the inputs when ``return_all``); with ``return_terms`` also a dict
        ``{term label: batch-mean value}`` of the formula terms, from the same evaluation.
        """
        x_dict = dict(x_dict or {})
        missing = [v for v in self._input_var if v not in x_dict]
        if missing:
            given = ", ".join(sorted(x_dict)) or "nothing"
            raise ValueError(f"the loss {self} needs {', '.join(missing)}, but was given {given}")
        ctx = EvalContext(x_dict)
        with shared_parameters():
            loss = ctx.value(self)
        out: list[Any] = [loss]
        if return_dict:
            out.append({**x_dict, **ctx.samples} if return_all else dict(ctx.samples))
        if return_terms:
            out.append({t.label: _term_mean(ctx.results[id(t)]) for t in self.terms()})
        return out[0] if len(out) == 1 else tuple(out)

    def distributions(self) -> list[Any]:
        """Every distribution this loss refers to (for optimisers), without repeats."""
        found: dict[int, Any] = {}
        stack: list[Loss] = [self]
        while stack:
            node = stack.pop()
            for d in node._own_distributions():
                found.setdefault(id(d), d)
            stack.extend(node.children())
        return list(found.values())

    def _own_distributions(self) -> list[Any]:
        return []

    # -------------------------------------------------------------- algebra
    def __add__(self, other: Any) -> Loss:
        return _ops.AddLoss(self, other)

    def __radd__(self, other: Any) -> Loss:
        return _ops.AddLoss(other, self)

    def __sub__(self, other: Any) -> Loss:
        return _ops.SubLoss(self, other)

    def __rsub__(self, other: Any) -> Loss:
        return _ops.SubLoss(other, self)

    def __mul__(self, other: Any) -> Loss:
        return _ops.MulLoss(self, other)

    def __rmul__(self, other: Any) -> Loss:
        return _ops.MulLoss(other, self)

    def __truediv__(self, other: Any) -> Loss:
        return _ops.DivLoss(self, other)

    def __rtruediv__(self, other: Any) -> Loss:
        return _ops.DivLoss(other, self)

    def __pow__(self, other: Any) -> Loss:
        return _ops.PowLoss(self, other)

    def __rpow__(self, other: Any) -> Loss:
        return _ops.PowLoss(other, self)

    def __neg__(self) -> Loss:
        return _ops.NegLoss(self)

    def abs(self) -> Loss:
        return _ops.AbsLoss(self)

    def mean(self) -> Loss:
        """Average over the batch: :math:`\\frac{1}{N}\\sum_n \\mathcal{L}(x_n)`."""
        return _ops.BatchMean(self)

    def sum(self) -> Loss:
        """Sum over the batch."""
        return _ops.BatchSum(self)

    def expectation(self, p: Any, sample_shape: Sequence[int] = ()) -> Loss:
        """:math:`\\mathbb{E}_{p}[\\text{self}]`, see `kizuna.losses.Expectation`."""
        from kizuna.losses.expectation import Expectation

        return Expectation(p, self, sample_shape=sample_shape)


# The operators subclass Loss, so they are imported once Loss exists.
from kizuna.losses import operators as _ops  # noqa: E402
