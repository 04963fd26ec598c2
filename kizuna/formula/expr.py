"""`Loss`: a lazy expression over named variables, evaluated on a dict of values.

A loss is a tree. Leaves are formula terms (``LogProb``, ``KullbackLeibler``,
``Expectation``, ...) or values (`ValueLoss`, `Parameter`); inner nodes are arithmetic
(``+ - * / **``, unary minus, ``abs``, batch ``mean`` / ``sum``, ``min``, ``max``). One
evaluation computes every node once and keeps its value, so the named terms of a composite
loss (KL, reconstruction, ...) are reported from the same forward pass that produced the total
(``eval(..., return_terms=True)``).

Per-row terms have shape ``(batch,)``; ``.mean()`` / ``.sum()`` reduce over the batch.

A loss is an ``nn.Module`` whose submodules are the distributions it refers to (as in Pixyz),
so ``loss.to(device)`` moves them and ``loss(x_dict)`` is ``loss.eval(x_dict)``. The module
state is set up in ``__new__``, so a subclass may assign attributes before calling
``super().__init__``. ``eval`` keeps Pixyz's name and signature; it is not ``nn.Module.eval``
(switch the networks to evaluation mode with ``.train(False)``).
"""

from __future__ import annotations

import numbers
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kizuna._text import LATEX, TEXT, var_text
from kizuna.formula.memo import shared_parameters

Tensor = torch.Tensor


class EvalContext:
    """The values one evaluation sees, every node's result (keyed by node identity), the draws
    made so far, the evaluation's options (``batch_n``, ``sample_mean``), and whether the caller asked for
    the draws or the terms (``report``; a loop such as `IterativeLoss` gathers them only then). Inside an expectation
    over several draws per row, the values' ``rows`` hold ``copies`` copies of the batch's rows, sample-major
    (``copies`` 1 and ``rows`` None elsewhere): a tensor constant of one value per row of the batch, which does not
    combine with the draws' rows as given, is repeated alike (`_laid_out_for_draws`)."""

    __slots__ = ("values", "results", "samples", "options", "report", "copies", "rows")

    def __init__(self, values: dict[str, Any], samples: dict[str, Any] | None = None,
                 options: dict[str, Any] | None = None, report: bool = True) -> None:
        self.values = values
        self.results: dict[int, Tensor] = {}
        self.samples = {} if samples is None else samples
        self.options = {} if options is None else options
        self.report = report
        self.copies, self.rows = 1, None

    def child(self, values: dict[str, Any], draws: int = 1, rows: int | None = None) -> EvalContext:
        """A context with other values (inside an expectation); draws, options and ``report`` are shared. With
        ``draws`` > 1 the values are this context's rows repeated ``draws`` times, ``rows`` in all (an expectation's
        draws pooled, sample-major); otherwise they are laid out as this context's."""
        ctx = EvalContext(values, self.samples, self.options, self.report)
        ctx.copies, ctx.rows = (self.copies * draws, rows) if draws > 1 else (self.copies, self.rows)
        return ctx

    def value(self, node: Loss) -> Tensor:
        results, key = self.results, id(node)
        if key in results:
            return results[key]
        value = results[key] = node._value(self)
        return value


def _term_mean(value: Tensor) -> Tensor:
    """A term's batch mean, detached (an integer-valued term is averaged as a float)."""
    value = torch.as_tensor(value).detach()
    return (value if value.is_floating_point() else value.float()).mean()


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def values_dict(x_dict: Any, fn: str, owner: Any = None, names: Iterable[str] = ()) -> Mapping[str, Any]:
    """``x_dict`` checked to be the dict of the variables' values that an entry point takes (any ``Mapping``; ``{}``
    for None). Anything else (a bare tensor, array or list) is a TypeError naming the entry point, the type and the
    remedy: the entry points' ``x_dict or {}`` gave torch's "Boolean value of Tensor ... is ambiguous" (or numpy's,
    or "'list' object has no attribute 'values'"). Hot paths call it only for a value that is not a dict.

    Args:
        fn: the entry point (``"sample"``; ``"Model.train"`` where no ``owner`` is given).
        owner: a loss or a distribution, named before ``fn`` (its text is only built for the error).
        names: the variables it takes, for the message's example.
    """
    if type(x_dict) is dict or isinstance(x_dict, Mapping):
        return x_dict
    if x_dict is None or (type(x_dict) in (list, tuple) and not x_dict):  # ([] and () were taken as {}, as in Pixyz)
        return {}
    if owner is not None:
        fn = f"{f'the loss {owner}' if isinstance(owner, Loss) else owner.prob_text}: {fn}"
    listed = ", ".join(f"{n!r}: {n}" for n in names)
    if listed or owner is None:  # (a helper's list may be partial: its example then is the usual one)
        example = "e.g. {" + (listed or "'x': x") + "}"
    else:  # a distribution or a loss lists all it takes: it takes none
        example = "this one takes none: give {} or nothing"
    raise TypeError(f"{fn} takes a dict of the variables' values ({example}), got {type(x_dict).__name__}")


class Loss(nn.Module):
    """Base of every loss; see the module docstring.

    Subclasses implement ``_value(ctx)`` and ``_render(fmt)``, list their sub-losses in
    ``subterms()`` and the distributions they evaluate in ``_own_distributions()``;
    ``precedence`` controls parentheses (atoms bind tightest).

    A subclass written the Pixyz way works too (`_pixyz_style`): its own ``forward(self, x_dict, **kwargs)``
    returning ``(value, dict)`` and no ``_value``. Evaluating it calls ``self(x_dict, **kwargs)`` with the values of
    its ``input_var`` only and the evaluation's options (``batch_n``, ``sample_mean``, ...) as keywords, as Pixyz's
    ``Loss.eval`` does; the value is the tuple's first item, and the dict's values are added to the values drawn
    (``eval(..., return_dict=True)``, the next step of an `IterativeLoss`). It prints with its ``_symbol`` (a sympy
    expression, as Pixyz's: ``loss_text`` is ``sympy.latex(_symbol)``, ``str`` is sympy's plain text; a string as it
    is) or its own ``loss_text``, else its class name. ``loss.distributions()`` finds the distributions it holds.
    """

    precedence = 100
    is_operator = False
    # numpy defers to the loss's reflected operators (``np.ones(3) * loss`` is ``loss.__rmul__``, which refuses an
    # array) instead of building an array of losses, one per element
    __array_ufunc__ = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Loss:
        self = super().__new__(cls)
        nn.Module.__init__(self)  # before the subclass's __init__ assigns distributions or sub-losses
        self._input_var: list[str] = []
        self._label: str | None = None
        return self

    def __init__(self, input_var: Sequence[str] | None = ()) -> None:
        # (None: Pixyz's default; any sequence of names, a numpy array or dict keys too, whose truth is not asked)
        self._input_var = _unique(list(input_var) if input_var is not None else [])

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if isinstance(value, nn.Module):
            # registered as a submodule (for .to() and .parameters()) and kept as a plain attribute,
            # so that reading it on the evaluation path skips nn.Module.__getattr__
            self.__dict__[name] = value
        if "_dp_of" in self.__dict__ and type(self) is not Named:  # a data-parallel replica being filled in
            _dp_note_part(self, name, value)

    def _replicate_for_data_parallel(self) -> Loss:
        """nn.Module's (``nn.DataParallel``, ``torch.nn.parallel.replicate``), the replica marked with the loss it
        replicates and the replication it belongs to, so that the replicas of one loss in one replica of the tree are
        found one (`_dp_note_part`). A loss with no parameter or buffer in it (`_stateless`) is its own replica
        (there is nothing to copy to another device, and every node of it, bare or named, then holds the one loss)."""
        if _stateless(self):
            return self
        replica = super()._replicate_for_data_parallel()
        _dp_mark(self, replica)
        return replica

    def __getstate__(self) -> dict[str, Any]:
        """nn.Module's state, less a data-parallel replica's marks (`_dp_mark`): a copy of a replica is a loss of its
        own, not tied to the loss it was replicated from."""
        state = super().__getstate__()  # (nn.Module's: a copy, less a compiled forward)
        for mark in _DP_MARKS:
            state.pop(mark, None)
        return state

    # --------------------------------------------------------------- structure
    @property
    def input_var(self) -> list[str]:
        """The variables ``eval`` needs in its dict."""
        return list(self._input_var)

    def subterms(self) -> list[Loss]:
        """The sub-losses this node evaluates (operands, the function inside an expectation, ...)."""
        return []

    def named(self, label: str) -> Loss:
        """This term under a name for the per-term report (default: its formula): a `Named` node over this one, so
        that one node used in two losses may carry a name in each (this node is left as it is). It has this node's
        value (the node is computed once per evaluation, as any node), prints as this node, is reported as one term and
        has this node's module state under its paths (see `Named`). Naming a named loss again names its node anew (not
        a name over a name)."""
        if not isinstance(label, str):
            raise TypeError(f"named takes the term's label (a str), got {type(label).__name__} {label!r}")
        return Named(self, label)

    @property
    def label(self) -> str:
        return self._label or str(self)

    def labelled_terms(self) -> dict[str, Loss]:
        """The formula terms by label (the per-term report's keys): a node met twice is one term, and so is one node
        given the same name twice (``kl.named("KL")`` written at two places); two different terms that print alike
        are told apart as ``label`` and ``label (2)`` (the second replaced the first)."""
        out: dict[str, Loss] = {}
        for term in self.terms():
            if any(node is term or (type(node) is Named and type(term) is Named and _bare(node) is _bare(term)
                                    and node._label == term._label) for node in out.values()):
                continue
            label, k = term.label, 1
            while label in out:
                k += 1
                label = f"{term.label} ({k})"
            out[label] = term
        return out

    def terms(self) -> Iterator[Loss]:
        """The formula terms: the outermost non-arithmetic nodes (and explicitly named ones)."""
        if not self.is_operator or self._label is not None:
            yield self
            return
        for child in self.subterms():
            yield from child.terms()

    # -------------------------------------------------------------------- text
    def _render(self, fmt: dict[str, str]) -> str:
        """A Pixyz-style subclass's text (see the class docstring); kizuna's own losses define their own."""
        cls = type(self)
        if cls.loss_text is not Loss.loss_text:  # its own loss_text (Pixyz prints it)
            return str(self.loss_text)
        if cls._symbol is Loss._symbol:  # (Loss._symbol renders this loss: no symbol of its own)
            return cls.__name__
        symbol = self._symbol
        sympy = _sympy_of(symbol)
        if sympy is None:
            return str(symbol)
        text = sympy.latex(symbol) if fmt["paren"] == LATEX["paren"] else str(symbol)
        return fmt["paren"].format(text) if symbol.is_Add else text  # (a sum inside kizuna's operators)

    @property
    def _symbol(self) -> Any:
        """This loss's formula as a sympy symbol (its LaTeX), for a Pixyz-style loss that builds its ``_symbol`` from
        another's (``-self.loss1._symbol``)."""
        import sympy  # (not a dependency: only a Pixyz-style loss, written with sympy, reads it)

        return sympy.Symbol(self._render(LATEX))

    def _wrap(self, child: Loss, fmt: dict[str, str], min_precedence: int) -> str:
        text = child._render(fmt)
        return fmt["paren"].format(text) if child.precedence < min_precedence else text

    @property
    def loss_text(self) -> str:
        """The formula in LaTeX (Pixyz's ``loss_text``); ``str(loss)`` is the plain-text formula."""
        return self._render(LATEX)

    def to_latex(self) -> str:
        """The formula in LaTeX."""
        return self._render(LATEX)

    def __str__(self) -> str:
        return self._render(TEXT)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self})"

    # -------------------------------------------------------------- evaluation
    def _value(self, ctx: EvalContext) -> Tensor:
        """A Pixyz-style subclass's value, from its ``forward`` (see the class docstring); kizuna's own losses
        define their own."""
        cls = type(self)
        if not _pixyz_style(cls):
            raise NotImplementedError(
                f"{cls.__name__} defines no value: a Loss subclass implements kizuna's _value(self, ctx) (the value "
                "from ctx.values, the dict of the variables' values) or, as in Pixyz, forward(self, x_dict, "
                "**kwargs) returning (value, dict of the values it drew)")
        values = ctx.values
        out = self({k: values[k] for k in self._input_var if k in values}, **ctx.options)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], Mapping)):
            raise TypeError(
                f"{cls.__name__}.forward returned {type(out).__name__}: a Pixyz-style loss's forward(self, x_dict, "
                "**kwargs) returns (value, dict) (the dict of the values it drew, {} if none), as Pixyz's Loss.eval "
                "expects; or implement kizuna's _value(self, ctx), which returns the value")
        value, drawn = out
        for name, drawn_value in drawn.items():  # (one by one: an IterativeLoss step's dict notes each)
            ctx.samples[name] = drawn_value
        if isinstance(value, Tensor):
            return value
        try:
            return torch.as_tensor(value)
        except (TypeError, RuntimeError, ValueError):
            raise TypeError(f"{cls.__name__}.forward returned the value {value!r} (a {type(value).__name__}): the "
                            "first item must be a tensor or a number"[:300]) from None

    def eval(  # noqa: A003 - Pixyz's name for evaluating a loss (not nn.Module.eval, see the module docstring)
        self,
        x_dict: Mapping[str, Any] | None = None,
        return_dict: bool = False,
        return_all: bool = True,
        return_terms: bool = False,
        **options: Any,
    ) -> Any:
        """Evaluate on ``x_dict``.

        Args:
            x_dict: the values of the variables in ``input_var``.
            return_dict: also return the dict of values drawn while evaluating, with the inputs
                when ``return_all`` (Pixyz's defaults).
            return_terms: also return ``{term label: batch-mean value}`` of the formula terms,
                from the same evaluation.
            options: evaluation options, as in Pixyz: ``sample_mean=True`` replaces every draw
                of an expectation by the distribution's mean; ``batch_n`` is the number of rows
                drawn from distributions that have no batched input; ``mask`` weighs the steps of an
                `IterativeLoss` (Pixyz's). Other names are passed to every node and ignored by those
                that do not read them.

        Returns:
            the loss tensor, or a tuple ``(loss, dict)``, ``(loss, terms)`` or ``(loss, dict, terms)``.
        """
        if type(x_dict) is not dict:  # (a tensor's truth value was torch's error; a dict, the usual case, skips it)
            x_dict = values_dict(x_dict, "eval", self, self._input_var)
        x_dict = dict(x_dict) if x_dict else {}
        if not all(map(x_dict.__contains__, self._input_var)):
            missing = [v for v in self._input_var if v not in x_dict]
            given = ", ".join(sorted(x_dict)) or "nothing"
            raise ValueError(f"the loss {self} needs {', '.join(missing)}, but was given {given}")
        ctx = EvalContext(x_dict, options=options, report=return_dict or return_terms)
        with shared_parameters():
            loss = ctx.value(self)
        if not (return_dict or return_terms):
            return loss
        out: list[Any] = [loss]
        if return_dict:
            out.append({**x_dict, **ctx.samples} if return_all else dict(ctx.samples))
        if return_terms:
            out.append({label: _term_mean(ctx.results[id(t)]) for label, t in self.labelled_terms().items()})
        return tuple(out)

    def forward(self, x_dict: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """``loss(x_dict, ...)`` is ``loss.eval(x_dict, ...)`` (so that torch wrappers such as DDP apply)."""
        return self.eval(x_dict, **options)

    def nodes(self) -> Iterator[Loss]:
        """Every node of this loss's tree (itself, its sub-losses, theirs, ...), depth first."""
        stack: list[Loss] = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.subterms())

    def distributions(self) -> list[nn.Module]:
        """Every distribution this loss refers to (for optimisers), without repeats."""
        found: dict[int, Any] = {}
        for node in self.nodes():
            for d in node._own_distributions():
                found.setdefault(id(d), d)
        return list(found.values())

    def _own_distributions(self) -> list[nn.Module]:
        """The distributions this node evaluates itself (a Pixyz-style subclass: those it holds)."""
        return _held_distributions(self) if _pixyz_style(type(self)) else []

    # -------------------------------------------------------------- algebra
    def __add__(self, other: Any) -> Loss:
        return AddLoss(self, other)

    def __radd__(self, other: Any) -> Loss:
        return AddLoss(other, self)

    def __sub__(self, other: Any) -> Loss:
        return SubLoss(self, other)

    def __rsub__(self, other: Any) -> Loss:
        return SubLoss(other, self)

    def __mul__(self, other: Any) -> Loss:
        return MulLoss(self, other)

    def __rmul__(self, other: Any) -> Loss:
        return MulLoss(other, self)

    def __truediv__(self, other: Any) -> Loss:
        return DivLoss(self, other)

    def __rtruediv__(self, other: Any) -> Loss:
        return DivLoss(other, self)

    def __pow__(self, other: Any) -> Loss:
        return PowLoss(self, other)

    def __rpow__(self, other: Any) -> Loss:
        return PowLoss(other, self)

    def __neg__(self) -> Loss:
        return NegLoss(self)

    def abs(self) -> Loss:
        return AbsLoss(self)

    __abs__ = abs  # abs(loss), as the module docstring says

    def mean(self) -> Loss:
        """Average over the batch: :math:`\\frac{1}{N}\\sum_n \\mathcal{L}(x_n)`."""
        return BatchMean(self)

    def sum(self) -> Loss:
        """Sum over the batch."""
        return BatchSum(self)

    def detach(self) -> Loss:
        """The same value without a gradient (Pixyz's ``Loss.detach()``), e.g. a baseline or a reported term."""
        return Detach(self)

    def expectation(self, p: Any, sample_shape: Sequence[int] = ()) -> Loss:
        """:math:`\\mathbb{E}_{p}[\\text{self}]`, see `kizuna.losses.Expectation`."""
        from kizuna.losses.expectation import Expectation  # the terms build on this module

        return Expectation(p, self, sample_shape=sample_shape)

    def constant_var(self, constant_dict: Mapping[str, Any]) -> Loss:
        """This loss with some variables fixed to constants (Pixyz's ``Loss.constant_var``), see `ConstantVar`."""
        return ConstantVar(self, constant_dict)


def _pixyz_style(cls: type[Loss]) -> bool:
    """Whether a Loss subclass is written the Pixyz way: its own ``forward`` and no ``_value`` (see `Loss`)."""
    return cls.forward is not Loss.forward and cls._value is Loss._value


def _sympy_of(symbol: Any) -> Any:
    """The sympy module when ``symbol`` is a sympy expression (sympy already imported by whoever built it), else
    None."""
    import sys

    sympy = sys.modules.get("sympy")
    return sympy if sympy is not None and isinstance(symbol, sympy.Basic) else None


def _held_distributions(module: nn.Module) -> list[nn.Module]:
    """The distributions a module holds (not those inside them), and those of the losses it holds."""
    from kizuna.distributions.base import Distribution  # (the distributions build on this module)

    found: list[nn.Module] = []
    for child in module.children():
        if isinstance(child, Distribution):
            found.append(child)
        elif isinstance(child, Loss):
            found.extend(child.distributions())
        else:
            found.extend(_held_distributions(child))
    return found


# ------------------------------------------------------------------------- values
def as_loss(value: Any) -> Loss:
    """A Loss as is; a number or tensor as a `ValueLoss`; anything else is an error."""
    if isinstance(value, Loss):
        return value
    if isinstance(value, (numbers.Number, Tensor)):
        return ValueLoss(value)
    raise TypeError(f"cannot combine a loss with {type(value).__name__} ({value!r})")


class ValueLoss(Loss):
    """A constant (number or tensor; a tensor is a buffer, so ``.to()`` moves it), or a learnable coefficient: an
    ``nn.Parameter`` (``LogProb(p) * nn.Parameter(w)``) is registered as this node's parameter, so it is in
    ``loss.parameters()`` and ``.to()`` / ``.double()`` convert it in place, the same object, as a torch module's
    parameter (a buffer was replaced by a plain copy, and the user's parameter stopped receiving gradients).
    `Model` trains only its distributions' parameters: give such a coefficient to the optimizer yourself.

    An integer-valued constant is a float, as Pixyz's ``ValueLoss`` holds it (``torch.tensor(value, dtype=float)``):
    an integer number is kept as the Python float (``Parameter("b") * 2`` with ``b=3`` is ``tensor(6.)``, and
    ``Parameter("k") ** -1`` of an integer tensor ``k`` is ``1 / k``, not torch's error on integers to negative
    integer powers), an integer or boolean tensor is converted to the default float dtype once, here.

    A tensor constant combines with the other operand as torch broadcasts it (a ``(D,)`` per-feature weight, even
    where ``D`` is the batch size). Inside an `Expectation` (or `REINFORCE`) over several draws per row, one that does
    not combine so with the draws' ``n x batch`` rows but has the batch's leading size is one value per row
    (``LogProb(p) * w``, ``w`` of shape ``(B,)``): it is repeated for the draws, as the dict's values are.
    """

    def __init__(self, value: Any) -> None:
        super().__init__()
        if isinstance(value, nn.Parameter):
            self.value = value  # nn.Module.__setattr__ registers it as a parameter
        elif isinstance(value, Tensor):
            if not (value.is_floating_point() or value.is_complex()):
                value = value.to(torch.get_default_dtype())
            self.register_buffer("value", value, persistent=False)
        else:
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                value = float(value)
            self.value = value

    def terms(self) -> Iterator[Loss]:
        """A constant is a coefficient, not a term of the formula (unless it was named)."""
        if self._label is not None:
            yield self

    def _value(self, ctx: EvalContext) -> Tensor:
        value = self.value
        return value if isinstance(value, Tensor) else _number_tensor(value)

    @property
    def precedence(self) -> int:  # type: ignore[override]
        """A negative number binds like a unary minus: ``(-2)^2``, ``a - (-2)``, ``a * (-2)``."""
        return NegLoss.precedence if self._render(TEXT).startswith("-") else Loss.precedence

    def _render(self, fmt: dict[str, str]) -> str:
        if isinstance(self.value, Tensor) and self.value.numel() == 1:
            return f"{self.value.item():g}"
        return f"{self.value:g}" if isinstance(self.value, numbers.Real) else str(self.value)


class Parameter(Loss):
    """A variable read from the evaluation dict, e.g. a coefficient ``Parameter("beta")``.

    Its value is the value given as a tensor (``torch.as_tensor``: a Python float in the default dtype, an int as
    int64, a bool as bool). Where it meets another operand, a Python number given to it is used as the number itself,
    as a number constant is (`_operand`), also through ``-``, ``abs``, ``detach``, ``mean`` and ``sum``:
    ``Parameter("beta")`` given 0.1 in a float64 evaluation is 0.1, not 0.1 rounded to float32; an int stays an
    integer, computed as the int64 tensor it is (``Parameter("n") * Parameter("m")`` given 3 and 4 is ``tensor(12)``,
    int64, exact beyond 2**24; its ``mean()`` a float, as torch's mean of an integer term is), and a bool is its bool
    tensor."""

    def __init__(self, input_var: str) -> None:
        if not isinstance(input_var, str):
            raise TypeError(f"Parameter takes one variable name (str), got {input_var!r}")
        super().__init__([input_var])

    def _value(self, ctx: EvalContext) -> Tensor:
        value = ctx.values[self._input_var[0]]
        try:
            return torch.as_tensor(value)
        except (TypeError, RuntimeError, ValueError):  # ("new(): invalid data type 'str'", "could not infer dtype")
            raise TypeError(f"Parameter {self._input_var[0]!r}: its value must be a number or a tensor, got "
                            f"{type(value).__name__} {value!r}"[:300]) from None

    def _render(self, fmt: dict[str, str]) -> str:
        return var_text(self._input_var[0], fmt)  # LaTeX-safe, as the distributions' variables (x_t_1, gain%)


class ConstantVar(Loss):
    """``base_loss`` evaluated with some variables fixed to constants.

    Example: ``ConstantVar(loss, {"beta": 4.0})`` no longer needs ``beta`` in the dict. The fixed values are
    ``constant_dict`` (Pixyz's attribute); ``constant_var({...})`` fixes more, as on every loss (where both fix a
    variable, this one's value is used, as in Pixyz).
    """

    def __init__(self, base_loss: Loss, constant_var: Mapping[str, Any]) -> None:
        super().__init__([v for v in base_loss.input_var if v not in constant_var])
        self.base_loss = base_loss
        self._constant_names = list(constant_var)
        self._numbers = {}  # the values that are not tensors; tensors are buffers, which .to() / .double() convert
        for i, (name, value) in enumerate(constant_var.items()):
            if isinstance(value, Tensor):
                self.register_buffer(f"_constant_{i}", value, persistent=False)
            else:
                self._numbers[name] = value

    @property
    def constant_dict(self) -> dict[str, Any]:
        """The fixed values, by variable name (tensors as this module holds them: converted by ``.to()``). (It was
        called ``constant_var``, which hid the method ``constant_var({...})`` that every Pixyz loss has.)"""
        return {name: self._numbers[name] if name in self._numbers else getattr(self, f"_constant_{i}")
                for i, name in enumerate(self._constant_names)}

    def subterms(self) -> list[Loss]:
        return [self.base_loss]

    def _value(self, ctx: EvalContext) -> Tensor:
        return ctx.child({**ctx.values, **self.constant_dict}).value(self.base_loss)

    @property
    def precedence(self) -> int:  # type: ignore[override]
        """The base loss's: it prints as the base loss (``2 * (a + b)`` printed ``2 * a + b``)."""
        return self.base_loss.precedence

    def _render(self, fmt: dict[str, str]) -> str:
        return self.base_loss._render(fmt)


# ---------------------------------------------------------------------- operators
# what a unary operator hands on from the loss inside it, as Pixyz's ``LossSelfOperator`` does (an adversarial loss's
# discriminator step and evaluation: ``AdversarialJensenShannon(...).mean().loss_train(x)``, as Pixyz's GAN calls it)
_HANDED_ON = frozenset(("loss_train", "loss_test"))


class _Unary(Loss):
    is_operator = True
    key = ""

    def __init__(self, loss: Any) -> None:
        loss = as_loss(loss)
        super().__init__(loss.input_var)
        self.loss1 = loss

    def __getattr__(self, name: str) -> Any:
        """``loss_train`` / ``loss_test`` of the loss inside (`_HANDED_ON`), where it has them; else nn.Module's
        lookup (submodules, parameters, buffers)."""
        if name in _HANDED_ON:
            inner = self.__dict__.get("loss1")
            if inner is not None and hasattr(inner, name):
                return getattr(inner, name)
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}': the loss inside it, "
                                 f"{inner}, is not an adversarial loss (only those have {name})")
        return super().__getattr__(name)

    def subterms(self) -> list[Loss]:
        return [self.loss1]

    def _value(self, ctx: EvalContext) -> Tensor:
        return self._op(ctx.value(self.loss1))

    def _op(self, a: Tensor) -> Tensor:
        raise NotImplementedError

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt[self.key].format(self.loss1._render(fmt))


class NegLoss(_Unary):
    key, precedence = "neg", 15  # binds looser than * and /: a * (-b)

    def _op(self, a: Tensor) -> Tensor:
        return -a

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["neg"].format(self._wrap(self.loss1, fmt, 31))


class AbsLoss(_Unary):
    key = "abs"

    def _op(self, a: Tensor) -> Tensor:
        return a.abs()


class BatchMean(_Unary):
    """``loss.mean()``: the mean of the loss's value over the batch (its every entry); a ValueError for a value with
    no entries (a batch of 0 rows), whose mean is NaN."""

    key = "mean"

    def _value(self, ctx: EvalContext) -> Tensor:  # _op inlined: the batch mean ends most training losses
        a = ctx.value(self.loss1)
        if not a.numel():  # (an empty batch's mean was NaN, silently)
            self._empty(a)
        try:
            return a.mean()
        except RuntimeError as err:
            return _integer_mean(a, err)

    def _op(self, a: Tensor) -> Tensor:
        if not a.numel():
            self._empty(a)
        try:
            return a.mean()
        except RuntimeError as err:
            return _integer_mean(a, err)

    def _empty(self, a: Tensor) -> None:
        what = ("an empty batch (0 rows); give at least one row" if a.dim() and a.shape[0] == 0
                else "no entries (no features)")
        raise ValueError(f"the loss {self}: the value to average has shape {tuple(a.shape)}, {what}: it has no mean")


class Detach(_Unary):
    """``loss.detach()``: the value of ``loss`` cut from the graph (no gradient reaches its parameters)."""

    key = "detach"

    def _op(self, a: Tensor) -> Tensor:
        return a.detach()


# the module state a `Named` node shares with its loss: the same dict and set objects, so that nn.Module's own walks
# (``named_parameters``, ``state_dict``, ``load_state_dict``, ``_apply``) find the loss's tensors under the loss's paths
_SHARED_STATE = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules", "_state_dict_hooks",
                 "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


class Named(_Unary):
    """``loss.named(label)``: ``loss`` under a name for the per-term report. Its value is the loss's own (the same
    tensor: the loss is computed once per evaluation, in the evaluation's context, however many names it has); it
    prints as the loss (``str``, LaTeX, ``repr`` and ``_symbol``, which a Pixyz-style loss builds its own from).

    For module state the node is transparent: it holds the loss's own parameter, buffer and submodule dicts (the same
    objects, not copies) and not the loss as a submodule, so every path through it is the loss's path:
    ``state_dict`` keys, ``named_parameters`` / ``named_buffers`` / ``named_modules``, ``get_parameter`` /
    ``get_buffer`` / ``get_submodule`` (torch's invariant that a ``state_dict`` key is the path of its tensor holds,
    and tools built on it, such as ``torch.distributed.checkpoint.state_dict.get_model_state_dict``, work), and
    ``load_state_dict``'s missing and unexpected keys. A checkpoint of the unnamed loss loads into the named one and
    back. ``.to()`` / ``.double()`` convert the loss (its own ``_apply``), ``train(mode)`` sets the loss's mode and
    ``training`` is the loss's flag; a copy (``deepcopy``, pickle) keeps the node and its loss sharing their tensors.
    (Until stop 49 the loss was this node's submodule ``loss1``: ``named_parameters`` said ``loss1.p.loc`` where
    ``state_dict`` said ``p.loc``, and a path through a named operator, ``(kl * w).mean().named("t")``, reached
    another node or none.)

    Its state-dict and load hooks are the loss's as well (the same hook dicts): a hook registered through one name runs
    for every name of the loss and for the bare loss. ``modules()`` / ``named_modules()`` / ``children()`` list this
    node in place of the loss (the loss itself is not among them unless it is held bare too), so a walk that looks for
    a loss class there must also look at `_bare` of each node (`IterativeLoss` does, since stop 49: a named
    expectation was missed). Each distinct node is listed once, as torch lists any module: a loss held bare and
    named, or under two names, is listed once per node, its submodules once (until stop 50 the second node was left
    out, and torch's ``replicate``, which looks every listed module's children up among ``modules()``, raised
    ``KeyError``).

    Attributes it lacks are read from the loss inside (``E(q, f).named("recon").p``), ``.loss1`` too where the loss has
    one (an operator's first operand, as its paths say); where the loss has none, ``.loss1`` is the loss itself, as
    before. Its class attributes are its own (``is_operator`` is True, ``key``, ``terms``, its methods). A public
    attribute written through it is written on the loss, so the node never holds a value the loss does not evaluate
    with; writing one of its own class attributes, or deleting the loss's parameter, buffer or submodule through it
    (``torch.nn.utils.parametrize``, pruning), is refused with an error that says to do it on the loss itself (see
    `__setattr__`, `__delattr__`). ``nn.DataParallel``'s replica of it holds a replica of the loss, one for all the
    nodes of that loss in the replica (`_replicate_for_data_parallel`). `_bare` (and
    ``subterms()[0]``) is always the loss inside. It is a node of its own, an operator that hands on the loss's value:
    ``type`` and ``isinstance`` see `Named`, and kizuna's walks of a loss tree (the report's terms, an expectation's
    linear parts, the constant fast paths, `IterativeLoss`'s draws) look through it to the loss. The name is this
    node's, so one node named in two losses keeps each loss's name (naming changed the node itself: the last name
    given was reported in both)."""

    def __init__(self, loss: Any, label: str) -> None:
        loss = _bare(as_loss(loss))  # (a number too, as any operator's operand: ``Named(3.0, "three")``)
        Loss.__init__(self, loss.input_var)
        self._share(loss)
        self._label = label

    def _share(self, loss: Loss) -> None:
        """Hold ``loss`` (not as a submodule) and its module state (`_SHARED_STATE`, the same objects)."""
        state = self.__dict__
        state["_named_loss"] = loss
        state.pop("training", None)  # (the loss's flag: see `training`)
        for name in _SHARED_STATE:
            state[name] = loss.__dict__[name]

    def __setstate__(self, state: dict[str, Any]) -> None:
        """nn.Module's; a node pickled before stop 49 (its loss the submodule ``loss1``) is read as one of now."""
        loss = state.get("_modules", {}).get("loss1") if "_named_loss" not in state else None
        super().__setstate__(state)
        if loss is not None:
            self.__dict__.pop("loss1", None)
            self._share(loss)

    def __getattr__(self, name: str) -> Any:
        """nn.Module's lookup (the loss's submodules, parameters and buffers), else the loss's attribute."""
        try:
            return nn.Module.__getattr__(self, name)
        except AttributeError:
            inner = self.__dict__.get("_named_loss")
            if inner is None or name.startswith("__"):
                raise
            return getattr(inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        """A public attribute is the loss's: written on the loss (``n.beta = 0.5``, ``n.net = module``, a parameter or
        buffer), so the node never holds a value its loss does not evaluate with. A private one (``_label``, nn.Module's
        bookkeeping, ``__class__``) is the node's own; a class attribute of the node's own (``key``, ``is_operator``,
        a method) is refused, as the node would read its own where the loss evaluates with the loss's."""
        inner = self.__dict__.get("_named_loss")
        if inner is None or name.startswith("_"):
            super().__setattr__(name, value)
            if inner is not None and "_dp_of" in inner.__dict__:  # (a replica's buffer ``_x``: written on the loss)
                _dp_note_part(inner, name, value)
            return
        own = getattr(type(self), name, None)
        if own is not None and not isinstance(own, property):
            raise AttributeError(f"cannot set {name!r} on the named loss {self}: {name!r} is the Named node's own "
                                 f"({type(self).__name__}.{name}); set it on the loss itself (node.subterms()[0])")
        setattr(inner, name, value)

    def __delattr__(self, name: str) -> None:
        """A public attribute of the loss is deleted on the loss; a parameter, buffer or submodule is refused: the node
        shares them with its loss, and torch's tools that delete one through a module and put another thing in its
        place on that module's class (``torch.nn.utils.parametrize``) left the loss without it, bare or under any
        name. Apply those to the loss itself (``node.subterms()[0]``), which every name of it then sees."""
        state = self.__dict__
        inner = state.get("_named_loss")
        if inner is None or name.startswith("_"):
            super().__delattr__(name)
            return
        if any(name in state[d] for d in ("_parameters", "_buffers", "_modules")):
            raise AttributeError(f"cannot delete {name!r} through the named loss {self}: a Named node shares its "
                                 f"loss's parameters, buffers and submodules, so delete, parametrize or prune "
                                 f"{name!r} on the loss itself (node.subterms()[0]), which every name of it then sees")
        delattr(inner, name)

    def _replicate_for_data_parallel(self) -> Named:
        """nn.Module's (``nn.DataParallel``, ``torch.nn.parallel.replicate``), the replica node over a replica of the
        loss, whose module state it shares: ``replicate`` puts each replica's tensors and submodules into the node's
        dicts (the loss is not among ``modules()`` when it is held only under names), so they are the loss replica's,
        which the replica evaluates (the copied node held the original loss: a replica evaluated the original
        tensors). Where one loss stands under several nodes (bare and named, two names), the replica of the tree holds
        one replica of it, as the original holds one loss: ``replicate`` makes one per node, and the first tensor or
        submodule it writes into each tells which are the same (`_dp_note_part`), so the loss is evaluated once per
        evaluation there too (a sampled term drawn once, not once per name)."""
        loss = self._named_loss
        if _stateless(loss):
            return self  # (nothing to replicate: `Loss._replicate_for_data_parallel`)
        replica = super()._replicate_for_data_parallel()
        inner = loss._replicate_for_data_parallel()
        group = inner.__dict__["_dp_group"] = _DPGroup(inner, provisional=True)
        replica._share(inner)
        group.nodes.append(weakref.ref(replica))
        return replica

    @property
    def loss1(self) -> Any:  # type: ignore[override]
        """The loss's own ``loss1`` where it has one (a path ``loss1.…`` through this node is the loss's), else the
        loss (`_bare`)."""
        inner = self.__dict__["_named_loss"]
        return getattr(inner, "loss1", inner)

    @property
    def training(self) -> bool:  # type: ignore[override]
        """The loss's mode flag (nn.Module's ``training``), read and set on the loss (nn.Module's default, True,
        before the node holds one)."""
        inner = self.__dict__.get("_named_loss")
        return True if inner is None else inner.training

    @training.setter
    def training(self, mode: bool) -> None:
        inner = self.__dict__.get("_named_loss")
        if inner is not None:  # (nn.Module.__init__ sets it before the loss is held)
            inner.training = mode

    def train(self, mode: bool = True) -> Named:
        """The loss's ``train(mode)`` (its networks' modes), this node returned."""
        self._named_loss.train(mode)
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> Named:
        """The loss's own ``_apply`` (``.to()``, ``.double()``: a loss or distribution that converts its state its own
        way keeps that way), this node returned."""
        self._named_loss._apply(fn, recurse)
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The loss's ``state_dict`` (its keys, hooks and extra state)."""
        return self._named_loss.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The loss's ``load_state_dict``: its keys, and the loss's name in an error."""
        return self._named_loss.load_state_dict(*args, **kwargs)

    def _load_from_state_dict(self, *args: Any) -> None:
        # the loss's own (its class may load its way); nn.Module's load then walks the submodules, the loss's
        self._named_loss._load_from_state_dict(*args)

    def subterms(self) -> list[Loss]:
        return [self._named_loss]

    @property
    def precedence(self) -> int:  # type: ignore[override]
        return self._named_loss.precedence

    @property
    def _symbol(self) -> Any:
        """The loss's own ``_symbol`` (a Pixyz-style loss's sympy expression; `Loss._symbol` read here was the LaTeX
        text as a symbol, which a Pixyz-style loss over this node printed as plain text)."""
        return self._named_loss._symbol

    def __repr__(self) -> str:
        return repr(self._named_loss)

    def _value(self, ctx: EvalContext) -> Tensor:
        return ctx.value(self._named_loss)

    def _op(self, a: Tensor) -> Tensor:
        return a

    def _render(self, fmt: dict[str, str]) -> str:
        return self._named_loss._render(fmt)


class _DPGroup:
    """The replicas of one loss made for one replica of a tree by torch's ``replicate`` (`Named`'s replica makes its
    own, nn.Module's makes the bare loss's): ``one`` is the replica they all become, the bare loss's where it is
    listed (its parent holds it), else the first made; ``nodes`` the `Named` replicas that share its state; ``into``
    the group it was merged into."""

    __slots__ = ("one", "provisional", "nodes", "into", "__weakref__")

    def __init__(self, loss: Loss, provisional: bool) -> None:
        self.one = weakref.ref(loss)
        self.provisional = provisional
        self.nodes: list[weakref.ref[Named]] = []
        self.into: _DPGroup | None = None

    def find(self) -> _DPGroup:
        group = self
        while group.into is not None:
            group = group.into
        return group


# torch's ``replicate`` makes the replicas of every listed module first, then writes each part of replica j (a
# submodule's replica, a tensor's copy) into every replica that holds it: the replicas of one loss in replica j are
# those written the same part under the same name. Noted per thread and per replication (a call's first replica
# made after writes began starts the next one, and drops the last one's notes): (id of the loss replicated, name,
# id of the part) -> (the loss, the part, the group), weakly held
_DP_MARKS = ("_dp_of", "_dp_call", "_dp_group", "_dp_noted")


class _DPCalls(threading.local):
    def __init__(self) -> None:
        self.number = 0
        self.writing = False
        self.parts: dict[tuple[int, str, int], tuple[weakref.ref[Any], weakref.ref[Any], weakref.ref[_DPGroup]]] = {}


_DP_CALLS = _DPCalls()


def _stateless(loss: Loss) -> bool:
    """Whether ``loss`` holds no parameter or buffer and no submodule but such losses (a number constant, an
    operator over constants): nothing to copy to a device, so it is its own replica on every device. (Only
    its own state was asked until diff review R4: an operator over stateless losses was replicated, but its parts
    are all its own on every device, so the replicas of one such loss under two names were never found one.)"""
    stack = [loss]
    while stack:
        m = stack.pop()
        if m._parameters or m._buffers or not isinstance(m, Loss):
            return False
        stack.extend(c for c in m._modules.values() if c is not None)
    return True


def _dp_mark(original: Loss, replica: Loss) -> None:
    """Mark ``replica`` (just made by nn.Module's ``_replicate_for_data_parallel``) as a replica of ``original`` in the
    current replication of this thread, which begins here if the last one had begun writing parts."""
    calls = _DP_CALLS
    if calls.writing:
        calls.number += 1
        calls.writing = False
        calls.parts = {}
    state = replica.__dict__
    state["_dp_of"] = original
    state["_dp_call"] = (threading.get_ident(), calls.number)
    state.pop("_dp_group", None)


def _dp_note_part(replica: Loss, name: str, value: Any) -> None:
    """Note that ``replicate`` wrote ``value`` as ``name`` into ``replica`` (a replica of ``replica._dp_of``); where
    another replica of the same loss was written the same part in the same replication, the two are one: their
    groups merge, and every named node of either shares the state of the one kept (a bare loss's replica, which its
    parent holds, where there is one). A write that is not one of ``replicate``'s (a name the loss replicated has no
    parameter, buffer or submodule under, a second write of a name into one replica, or a replica of an earlier
    replication or of another thread) is not noted, nor is a submodule without state, which is its own replica on
    every device (`Loss._replicate_for_data_parallel`)."""
    if not isinstance(value, (nn.Module, torch.Tensor)):
        return
    state = replica.__dict__
    calls = _DP_CALLS
    original = state["_dp_of"]
    if state.get("_dp_call") != (threading.get_ident(), calls.number) or not (
            name in original._parameters or name in original._buffers or name in original._modules):
        return
    if value is original._modules.get(name):  # a submodule with no state is its own replica on every device: it
        return  # tells no replica of the tree from another
    noted = state.setdefault("_dp_noted", set())
    if name in noted:  # ``replicate`` writes each part once into each replica (a later write is not one of its own)
        return
    noted.add(name)
    calls.writing = True
    group = state.get("_dp_group")
    if group is None:
        group = state["_dp_group"] = _DPGroup(replica, provisional=False)
    group = group.find()
    key = (id(original), name, id(value))
    found = calls.parts.get(key)
    other = found[2]() if found is not None and found[0]() is original and found[1]() is value else None
    if other is None:
        calls.parts[key] = (weakref.ref(original), weakref.ref(value), weakref.ref(group))
        return
    other = other.find()
    if other is group:
        return
    kept, merged = (group, other) if other.provisional and not group.provisional else (other, group)
    one = kept.one()
    if one is None:
        return
    merged.into = kept
    for ref in merged.nodes:
        node = ref()
        if node is not None:
            node._share(one)
            kept.nodes.append(ref)
    kept.provisional = kept.provisional and merged.provisional


def _bare(loss: Loss) -> Loss:
    """The loss inside any `Named` node around ``loss`` (``loss`` itself if it is not named; a `Named` node holds a
    loss that is not named)."""
    return loss.__dict__["_named_loss"] if type(loss) is Named else loss


def _integer_mean(a: Tensor, err: RuntimeError) -> Tensor:
    """The batch mean of an integer-valued term, which torch's ``mean`` refuses, as a float in the default dtype (as
    `_term_mean` reports it); called only once ``mean`` failed (``err``), which is raised for a floating tensor."""
    if a.is_floating_point() or a.is_complex():
        raise err
    return a.to(torch.get_default_dtype()).mean()


class BatchSum(_Unary):
    key = "sum"

    def _op(self, a: Tensor) -> Tensor:
        return a.sum()


_INT64 = (-2**63, 2**63 - 1)


def _exact_scalar(number: int | float) -> Tensor:
    """A number of `_given_number` as the scalar tensor it is computed as: a (parameter's) int as int64, the tensor
    ``torch.as_tensor`` made of it (integer arithmetic, exact; ``n / m`` the default float dtype, as that tensor's),
    a float as float64."""
    return torch.tensor(number, dtype=torch.int64 if type(number) is int else torch.float64)


def _number_tensor(value: Any) -> Tensor:
    """A constant's value as a tensor: a real Python number in the default float dtype (as Pixyz's ``ValueLoss``
    holds it: ``ValueLoss(2)`` evaluates to ``tensor(2.)``, not an integer tensor), anything else as torch reads it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.get_default_dtype())
    return torch.as_tensor(value)


def _numbers_op(op: Any, a: Any, b: Any) -> Tensor:
    """Two number constants combined as torch combines two float64 scalars, in the default float dtype: Pixyz's
    ``ValueLoss`` values are tensors, so ``ValueLoss(1) / ValueLoss(0)`` is ``inf`` (not Python's ZeroDivisionError)
    and ``ValueLoss(-8) ** (1 / 3)`` is ``nan`` (not Python's complex root). Two ints (`Parameter` values,
    `_given_number`) are combined as int64 tensors, the tensors they were: ``Parameter("n") * Parameter("m")`` is an
    exact int64."""
    if type(a) is int and type(b) is int:
        return op(_exact_scalar(a), _exact_scalar(b))
    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
        f64 = torch.float64
        return op(torch.tensor(float(a), dtype=f64), torch.tensor(float(b), dtype=f64)).to(torch.get_default_dtype())
    return _number_tensor(op(a, b))


def _shape_of(value: Any) -> Any:
    """A term's shape for a message: a tensor's, or the type of a number."""
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _operand(loss: Loss, ctx: EvalContext, constants: bool = False) -> Any:
    """An operand's value: a number constant (named or not) as the Python number itself, which torch combines with the
    other operand in that operand's dtype and on its device (``0.1 * kl`` of a float64 model on a GPU); a tensor made of
    it was a CPU scalar in the default dtype, so a float64 evaluation computed with 0.1 rounded to float32. An integer
    constant is a Python float (`ValueLoss`), so an integer tensor combined with it gives the default float dtype.
    An operand built of constants and parameters (``constants``: `_of_constants`) whose values are all numbers
    (``Parameter("beta")`` given ``0.1``, ``1 - Parameter("beta")``) is a number too (`_given_number`; a Python int
    given to a parameter is an int, combined as an int64 tensor)."""
    if type(loss) is ValueLoss and not isinstance(loss.value, Tensor):
        if loss._label is not None:  # a named constant is a reported term: its value is recorded, the number used
            ctx.value(loss)  # (its tensor was the default dtype's: 0.1 rounded to float32 in a float64 evaluation)
        return loss.value
    if type(loss) is Named:  # the operand inside, its value recorded as the reported term (a number used as one)
        value = _operand(_bare(loss), ctx, constants)
        ctx.value(loss)
        return value
    if constants:
        number = _given_number(loss, ctx)
        if number is not None:
            return number
    return ctx.value(loss)


def _given_number(loss: Loss, ctx: EvalContext) -> int | float | None:
    """The Python number a part built of constants and parameters (`_of_constants`) is, where every value in it is a
    real number (a number constant, a `Parameter` given a Python number rather than a tensor), its operators computed
    as `_exact_scalar` tensors (a float on float64, as `_number` computes them; a parameter's int on int64, as its
    tensor was: ``n * m`` of ints is the int, exact); None where one is a tensor (or not a real number, or a
    parameter's bool, which stays its bool tensor). Parameters and named parts are recorded as reported terms. (A
    parameter's float was a tensor of the default dtype: ``Parameter("beta")`` given 0.1 was 0.1 rounded to float32 in
    a float64 evaluation; so was ``abs``, ``detach``, ``mean`` or ``sum`` of a number constant or of such a parameter:
    ``LogProb(p) * Parameter("beta").abs()``.)"""
    kind = type(loss)
    if kind is Named:  # the number inside; its value recorded as the reported term
        number = _given_number(_bare(loss), ctx)
        ctx.value(loss)
        return number
    if kind is ValueLoss:
        value = loss.value
        if isinstance(value, Tensor) or not isinstance(value, numbers.Real):
            return None
        if loss._label is not None:  # a named constant is a reported term: its value is recorded, the number used
            ctx.value(loss)
        return float(value)
    if kind is Parameter:
        value = ctx.values.get(loss._input_var[0])
        if isinstance(value, Tensor) or not isinstance(value, numbers.Real) or isinstance(value, bool):
            return None
        if isinstance(value, numbers.Integral):  # (numpy's too) an int64 tensor's value, computed as one
            value = int(value)
            if not _INT64[0] <= value <= _INT64[1]:  # (its tensor's error: as_tensor overflows)
                return None
        else:
            value = float(value)
        ctx.value(loss)  # a parameter is a reported term (`terms`): its value is recorded, the number used
        return value
    results, key = ctx.results, ~id(loss)  # once per evaluation, as `_number`
    if key not in results:
        if kind is NegLoss:
            part = _given_number(loss.loss1, ctx)
            number = None if part is None else -part
        elif kind in _NUMBER_UNARY:
            # abs, detach, or the batch mean / sum of one number (the number), computed by the node's own op on the
            # number's `_exact_scalar`: an int's abs and sum an int, its mean a float (as `_integer_mean`'s)
            part = _given_number(loss.loss1, ctx)
            if type(part) is int and not _INT64[0] <= part <= _INT64[1]:
                part = None  # (-(-2**63), past int64: computed on the tensors, as before)
            elif part is not None and kind is BatchMean:
                part = float(part)
            number = None if part is None else loss._op(_exact_scalar(part)).item()
        else:  # a _Binary (`_of_constants`)
            a, b = _given_number(loss.loss1, ctx), _given_number(loss.loss2, ctx)
            number = None if a is None or b is None else loss._op(_exact_scalar(a), _exact_scalar(b)).item()
        results[key] = number  # type: ignore[assignment]
        if number is not None and loss._label is not None:
            ctx.value(loss)
    return results[key]  # type: ignore[return-value]


def _numeric(loss: Loss) -> bool:
    """Whether ``loss`` is made of number constants only (``ValueLoss(0.1).named("b") * 2``, ``-ValueLoss(0.1)``):
    its value is then a number, computed exactly (`_number`) where it meets another operand."""
    if type(loss) is ValueLoss:  # (a real number: a complex one combines as torch combines it, not folded)
        return isinstance(loss.value, numbers.Real) and not isinstance(loss.value, Tensor)
    if type(loss) is Named:
        return _numeric(_bare(loss))
    if type(loss) is NegLoss:
        return _numeric(loss.loss1)
    return isinstance(loss, _Binary) and not isinstance(loss, _Elementwise) and all(loss._numeric)


def _number(loss: Loss, ctx: EvalContext) -> float:
    """The Python number of a `_numeric` loss, its operators computed on float64 as torch computes them (so that
    ``ValueLoss(1) / ValueLoss(0)`` is inf, as `_numbers_op` gives it); a named part's value is recorded as a reported
    term. (Such a product was a tensor of the default dtype: 0.1 * 2 rounded to float32 in a float64 evaluation.)"""
    if type(loss) is ValueLoss:
        return _operand(loss, ctx)
    if type(loss) is Named:  # the number inside; its value recorded as the reported term
        ctx.value(loss)
        return _number(_bare(loss), ctx)
    results, key = ctx.results, ~id(loss)  # computed once per evaluation, as ctx.value does (a shared constant was
    if key in results:  # computed again at every use: 2^n times for n doublings)
        return results[key]  # type: ignore[return-value]
    if loss._label is not None:
        ctx.value(loss)
    if type(loss) is NegLoss:
        number = -_number(loss.loss1, ctx)
    else:
        f64 = torch.float64
        number = loss._op(torch.tensor(float(_number(loss.loss1, ctx)), dtype=f64),
                          torch.tensor(float(_number(loss.loss2, ctx)), dtype=f64)).item()
    results[key] = number  # type: ignore[assignment]
    return number


_NUMBER_UNARY = (AbsLoss, Detach, BatchMean, BatchSum)  # the unary operators besides NegLoss: one number's is a number


def _of_constants(loss: Loss) -> bool:
    """Whether ``loss`` is built of constants and `Parameter` values only (``w``, ``Parameter("beta") * w``, ``-w``,
    ``w.abs()``, ``Parameter("beta").mean()``): a per-row table of them (`_laid_out_for_draws`), not a term evaluated
    on the draws."""
    if type(loss) in (ValueLoss, Parameter):
        return True
    if type(loss) is Named:
        return _of_constants(_bare(loss))
    if type(loss) is NegLoss or type(loss) in _NUMBER_UNARY:
        return _of_constants(loss.loss1)
    # an operator's own flags, found when it was built (a shared node reached by many paths was walked by each: a
    # constant doubled 22 times, ``c = c + c``, took 2^23 calls and seconds to build ``c * x``)
    if not isinstance(loss, _Binary):
        return False
    flags = loss.__dict__.get("_constants")  # (a subclass that skipped _Binary.__init__ has only the class default)
    return all(flags) if flags is not None else _of_constants(loss.loss1) and _of_constants(loss.loss2)


def _laid_out_for_draws(ctx: EvalContext, loss1: Loss, loss2: Loss, a: Any, b: Any) -> tuple[Tensor, Tensor] | None:
    """Operands that did not combine, inside an expectation over several draws per row (``ctx.copies`` > 1): a tensor
    constant (a `ValueLoss`, or one built of constants and parameters, `_of_constants`) of the batch's leading size
    (``ctx.rows / ctx.copies``) against the draws' ``ctx.rows`` rows is one value per row, repeated for the draws
    (sample-major, as the dict's values are); None otherwise. Only here, where the operands fail to broadcast as
    given, so that a constant that broadcast (a ``(D,)`` per-feature weight with ``D`` the batch size) keeps its
    meaning."""
    copies, rows = ctx.copies, ctx.rows
    if copies <= 1 or rows is None or rows % copies:
        return None
    pair = [a, b]
    for i, (loss, other) in enumerate(((loss1, b), (loss2, a))):
        value = pair[i]
        if (_of_constants(loss) and isinstance(value, Tensor) and value.dim() and value.shape[0] * copies == rows
                and isinstance(other, Tensor) and other.dim() and other.shape[0] == rows):
            pair[i] = value.repeat(copies, *[1] * (value.dim() - 1))
            return pair[0], pair[1]
    return None


class _Binary(Loss):
    is_operator = True
    key = ""
    right_min = 0  # precedence the right operand needs to go without parentheses
    _numeric: tuple[bool, bool] = (False, False)  # which operands are number constants only (`_numeric`)
    _constants: tuple[bool, bool] = (False, False)  # which are built of constants and parameters (`_of_constants`)

    def __init__(self, loss1: Any, loss2: Any) -> None:
        loss1, loss2 = as_loss(loss1), as_loss(loss2)
        super().__init__(loss1.input_var + loss2.input_var)
        self.loss1, self.loss2 = loss1, loss2
        self._find_constants()

    def _find_constants(self) -> None:
        loss1, loss2 = self.loss1, self.loss2
        self._numeric = (_numeric(loss1), _numeric(loss2))
        self._constants = (_of_constants(loss1), _of_constants(loss2))

    def __setattr__(self, name: str, value: Any) -> None:
        """An operand replaced after the node was built (``m.loss2 = ValueLoss(3.0)``) finds the operands' flags again:
        kept from the old operand, a number constant was evaluated as a tensor of the default dtype (0.3 rounded to
        float32 in a float64 evaluation), by this node and by every loss built on it (`_of_constants`)."""
        super().__setattr__(name, value)
        if name in ("loss1", "loss2") and "_constants" in self.__dict__ and not self.__dict__.get("_is_replica"):
            self._find_constants()  # (a data-parallel replica is given its operands' copies, flags and all, unfilled)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled: ``_numeric`` / ``_constants`` are found again from its operands (unpickled before it), always
        (it is cheap): a loss pickled by an earlier version lacks them (the class defaults, no constants, took the
        fast path, which evaluated ``0.1 * LogProb(p)``'s 0.1 as a float32 tensor again in a float64 model), or holds
        them by an earlier rule (``Parameter("x") * Parameter("b").abs()`` took ``b``'s abs as a term, rounded to
        float32)."""
        super().__setstate__(state)
        self._find_constants()

    def subterms(self) -> list[Loss]:
        return [self.loss1, self.loss2]

    def _value(self, ctx: EvalContext) -> Tensor:
        loss1, loss2 = self.loss1, self.loss2
        numeric, constants = self._numeric, self._constants
        if not (constants[0] or constants[1]):  # no constant: the usual case, no calls
            a, b = ctx.value(loss1), ctx.value(loss2)
        else:  # number constants (and parameters given numbers), computed exactly, meet the other operand as numbers
            a = _number(loss1, ctx) if numeric[0] else _operand(loss1, ctx, constants[0])
            b = _number(loss2, ctx) if numeric[1] else _operand(loss2, ctx, constants[1])
            if not (isinstance(a, Tensor) or isinstance(b, Tensor)):
                return _numbers_op(self._op, a, b)
        try:
            return self._op(a, b)
        except RuntimeError as err:  # terms of other rows (or a constant of other rows): torch's "size of tensor a
            if "must match the size" not in str(err):  # (2) must match ..."
                raise
            laid_out = _laid_out_for_draws(ctx, loss1, loss2, a, b)  # a per-row constant against the draws' rows
            if laid_out is not None:
                try:
                    return self._op(*laid_out)
                except RuntimeError as again:
                    if "must match the size" not in str(again):
                        raise
            hint = ""
            if any(type(t) is ValueLoss and isinstance(t.value, Tensor) and t.value.dim()
                   for t in (_bare(loss1), _bare(loss2))):
                hint = ("; a tensor constant is laid out with the rows only where its leading size is the batch's, "
                        "in an expectation's draws: pass other values in the dict, read with Parameter(name)")
            raise ValueError(f"{self}: the terms {loss1} and {loss2} have shapes {_shape_of(a)} and "
                             f"{_shape_of(b)}, which do not combine row by row (evaluated on other rows?){hint}") \
                from None

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    def _render(self, fmt: dict[str, str]) -> str:
        # a negative constant on the left reads the same bracketed or not (-2 * a is (-2) * a): none, as Pixyz prints
        loss1 = self.loss1
        left = loss1._render(fmt) if type(_bare(loss1)) is ValueLoss else self._wrap(loss1, fmt, self.precedence)
        right = self._wrap(self.loss2, fmt, self.right_min or self.precedence)
        if right.startswith("-") and fmt[self.key].startswith("{0} "):
            # a - (-b), a - (-2 * b), a * (-2 * b): an infix operator followed by a minus sign (a negation, a negative
            # constant, or a product or sum that starts with one) is bracketed; a fraction or an exponent is not
            right = fmt["paren"].format(right)
        return fmt[self.key].format(left, right)


class AddLoss(_Binary):
    key, precedence = "add", 10

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class SubLoss(_Binary):
    key, precedence, right_min = "sub", 10, 11

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return a - b


class MulLoss(_Binary):
    key, precedence = "mul", 20

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b


class DivLoss(_Binary):
    key, precedence, right_min = "div", 20, 21

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return a / b

    def _render(self, fmt: dict[str, str]) -> str:
        if fmt is LATEX:  # \frac groups its operands itself
            return fmt["div"].format(self.loss1._render(fmt), self.loss2._render(fmt))
        return super()._render(fmt)


class PowLoss(_Binary):
    key, precedence, right_min = "pow", 40, 100

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        return a**b

    def _render(self, fmt: dict[str, str]) -> str:
        # the base in parentheses unless it is an atom: (-2)^2, (log p(x))^2, (a * b)^2; LaTeX braces the exponent,
        # so a negative one needs none there ({a}^{-1}), text does (a^(-1))
        exponent = self.loss2._render(fmt) if fmt is LATEX and self.loss2.precedence == NegLoss.precedence \
            else self._wrap(self.loss2, fmt, 100)
        return fmt["pow"].format(self._wrap(self.loss1, fmt, 41), exponent)


class _Elementwise(_Binary):
    """A function of two losses written ``f(a, b)``; subclasses set ``key`` and ``fn``."""

    precedence = 100
    fn: Any = None

    def _op(self, a: Tensor, b: Tensor) -> Tensor:
        if isinstance(a, Tensor) != isinstance(b, Tensor):  # a number in the tensor's promoted dtype, on its device
            t = a if isinstance(a, Tensor) else b
            a, b = (torch.as_tensor(v, dtype=torch.result_type(t, v), device=t.device) for v in (a, b))
        return type(self).fn(torch.as_tensor(a), torch.as_tensor(b))

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt[self.key].format(self.loss1._render(fmt), self.loss2._render(fmt))


class MinLoss(_Elementwise):
    """Elementwise minimum of two losses."""

    key, fn = "min", torch.minimum


class MaxLoss(_Elementwise):
    """Elementwise maximum of two losses."""

    key, fn = "max", torch.maximum
