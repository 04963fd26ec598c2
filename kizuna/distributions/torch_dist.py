"""`TorchDistribution`: a named-variable layer over one ``torch.distributions`` family.

Parameters come from three places, merged per call (in this order, as Pixyz's ``get_params``):

* ``forward(**cond)`` returning a dict (override it in a subclass; argument names are
  ``cond_var``) — batch first. A ``forward`` whose arguments are not ``cond_var``, a condition that is not a
  tensor (a numpy array) and an input in another dtype than the network's are named when the call fails
  (`raise_network_error`);
* a string naming a conditioning variable, used as the parameter as is
  (``Normal(var=["z"], cond_var=["m"], loc="m", scale=1.0)``);
* constants given at construction. A number or tensor is **copied** and stored as a buffer under
  its own name with a leading batch dimension of one (``Normal(loc=torch.zeros(3), scale=1.0)``
  has ``p.loc`` of shape ``(1, 3)`` and ``state_dict`` keys ``loc`` and ``scale``, as in Pixyz); a
  number is expanded to ``features_shape`` when one is given. An ``nn.Parameter`` is registered
  as it is (learnable, the caller's object) and gets its batch dimension when used.

Densities and samplers are torch's. A family may also define closed forms in its own class
(`_log_prob_kernel`, `_rsample_kernel`, `_kl_kernel`): the same formulas as torch, computed from
the parameter tensors without building a ``torch.distributions`` object; they are the only path
for that family (tested against torch in tests/test_families.py).

A constant given as a Python number, or as a list or tuple (nested) of numbers (``Normal(loc=[0.1, 2.0])``,
``Dirichlet(concentration=[...])``, ``covariance_matrix=[[...]]``: a float64 copy is kept outside the buffers,
`TorchDistribution._number_lists`), is the number itself in the dtype of the tensors it meets: the parameters from
the inputs and the constants given as tensors (the widest of their dtypes, whatever the keyword order:
``Normal(scale=0.1, loc=<float64>)`` holds a float64 0.1), for draws, densities, moments and entropies alike
(`TorchDistribution._numbers_like`); without any, its buffer's dtype (the default one, or ``.to()``'s: the exact numbers
after ``.double()``, `TorchDistribution._apply`). A scored value of a wider floating dtype than the parameters (float64
data, a float32 family): constants given as Python numbers, where the distribution holds them as given (no ``forward``
or ``get_params`` of a subclass), are taken exactly in the value's dtype (`TorchDistribution._scoring_params`; built
once per dtype for a constant distribution), and in a closed-form KL in the other side's where it is the wider
(`TorchDistribution.kl_to`). Parameters computed by a network or given as tensors are used in their own dtype: their
float32 values gain nothing in float64, and the value meets them as the family's arithmetic combines them (torch's
promotion; Bernoulli's kernel and torch's Gamma cast the value to the parameters' dtype).

Validation is torch's switch (``torch.distributions.Distribution.set_default_validate_args``,
or `validation` here): while it is on, parameters are checked by torch's own constructor and
scored values against the family's support; `kizuna.models.Model` has a per-model option. It adds
checks and changes no number: a checked evaluation computes with the same kernels as an unchecked one
(a model's validated first step and a resumed run's give the numbers of the steps after them).
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import re
import threading
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import distributions as D
from torch import nn
from torch.distributions import constraints

from kizuna._data import first_nonfinite, warn_user
from kizuna.distributions.base import (
    BLOCK_ELEMENTS,
    Distribution,
    RepeatedRows,
    Tensor,
    XDict,
    apply_keeping_exact,
    batch_size_of,
    repeat_batch,
    sum_rows,
)
from kizuna.formula.expr import values_dict
from kizuna.formula.memo import memoized, remember, shared_parameters

# the closed-form hooks a family may define (see TorchDistribution.__init_subclass__)
_HOOK_NAMES = ("_log_prob_kernel", "_rsample_kernel", "_kl_kernel", "_score_kernel")

# torch's message: "Expected parameter NAME (...) of distribution ... to satisfy the constraint
# CONSTRAINT, but found invalid values"; the constraint itself may contain ", " (Interval(a, b)).
_PARAM_ERROR = re.compile(r"Expected parameter (\w+) .*?to satisfy the constraint (.+?), but found")


# the innermost `validation` block's setting, per thread (a threading.local, which torch.compile
# traces, where it breaks the graph at ContextVar.get)
class _Checks(threading.local):
    def __init__(self) -> None:  # run in every thread: the attribute always exists (compiled steps guard on it)
        self.enabled: bool | None = None


_CHECKS = _Checks()


class _InGetParams(threading.local):
    """Per thread: the distributions whose own ``get_params`` is running (its ``super().get_params`` computes)."""

    def __init__(self) -> None:
        self.ids: set[int] = set()


_IN_GET_PARAMS = _InGetParams()


# torch's registries of hooks on every module (``register_module_forward_hook`` and friends, mutated in place):
# with none of them and none on the distribution, its module call is its ``forward`` (see `_compute_params`); a torch
# without them (the names are torch's own) always goes through the module call
try:
    from torch.nn.modules import module as _torch_module

    _GLOBAL_HOOKS: tuple[dict, ...] | None = tuple(getattr(_torch_module, name) for name in (
        "_global_backward_pre_hooks", "_global_backward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks",
        "_global_forward_hooks_always_called", "_global_forward_hooks_with_kwargs"))
    _HOOK_NAMES_OF_A_MODULE = {"_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"}
    if not hasattr(nn.Module, "_compiled_call_impl") or not _HOOK_NAMES_OF_A_MODULE <= vars(nn.Module()).keys():
        _GLOBAL_HOOKS = None  # e.g. torch 2.1, before module.compile() (its attribute)
except AttributeError:  # pragma: no cover - another torch's internals
    _GLOBAL_HOOKS = None
# torch's module call as torch defines it: a class that overrides it (or torch.fx, which patches it while tracing)
# goes through its own call
_MODULE_CALL = nn.Module.__call__
_is_transformed = torch._C._functorch.is_functorch_wrapped_tensor  # a tensor of grad / vmap / jvp (no storage)
_T = TypeVar("_T")
_PLAIN_CLASSES: dict[int, tuple[weakref.ref, bool]] = {}  # classes that keep torch's own module-call machinery


def _per_class(notes: dict[int, tuple[weakref.ref, _T]], cls: type, compute: Callable[[type], _T]) -> _T:
    """``compute(cls)``, noted once per class in ``notes``: keyed on ``id(cls)``, with a weak reference to the class
    whose callback drops the note when the class is freed (a dict keyed on the classes themselves kept every class
    alive, one defined in a function included, with all it refers to)."""
    entry = notes.get(id(cls))
    if entry is None:
        key = id(cls)
        entry = notes[key] = (weakref.ref(cls, lambda _, key=key: notes.pop(key, None)), compute(cls))
    return entry[1]


def _plain_call(cls: type) -> bool:
    """Whether ``cls`` keeps torch's own ``_call_impl`` and ``_wrapped_call_impl``."""
    return cls._call_impl is nn.Module._call_impl and cls._wrapped_call_impl is nn.Module._wrapped_call_impl


# The notes of `_per_class` are read through functions that dynamo runs as they are, once while it traces, and keeps
# the result as a constant (`torch.compiler.assume_constant_result`; the traced code is guarded on the class): traced,
# the lookup made dynamo take in the whole dict and guard on it, and a class freed while it went through the entries
# (the cyclic collector can run at any allocation) dropped its note: "RuntimeError: dictionary changed size during
# iteration", raised by dynamo as an internal error, which sent ``Model(compile=...)`` back to eager with a wrong reason
# (and a guard on the dict recompiled the step whenever a class was noted).
@torch.compiler.assume_constant_result
def _plain_class(cls: type) -> bool:
    """`_plain_call` of ``cls``, noted in `_PLAIN_CLASSES`."""
    return _per_class(_PLAIN_CLASSES, cls, _plain_call)


def module_call_is_forward(module: nn.Module) -> bool:
    """Whether torch's module call of ``module`` would run its ``forward`` and nothing else: no hook on it or on every
    module, no ``module.compile()``, no JIT trace, and torch's own call (a class that overrides ``__call__``,
    ``_call_impl`` or ``_wrapped_call_impl``, or torch.fx patching the call while tracing, keeps its call). Then the
    caller may run ``forward`` directly, without the call's two frames."""
    cls = type(module)
    return not (_GLOBAL_HOOKS is None or module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or module._compiled_call_impl is not None or any(_GLOBAL_HOOKS)
                or cls.__call__ is not _MODULE_CALL or not _plain_class(cls)
                or torch._C._get_tracing_state())


def validation_enabled() -> bool:
    """Whether parameters and values are checked: the innermost `validation` block's setting, else
    torch's default ``validate_args`` (``set_validation``)."""
    local = _CHECKS.enabled
    return bool(D.Distribution._validate_args) if local is None else local


def set_validation(enabled: bool) -> None:
    """Turn checking of parameters and values on or off for the process (torch's
    ``set_default_validate_args``, which the torch distributions kizuna builds follow too)."""
    D.Distribution.set_default_validate_args(bool(enabled))


class validation:  # noqa: N801 - used as a function: ``with validation(False):``
    """Checks on (or off) within the block, whatever the process default (as Pyro's
    ``validation_enabled``); ``kizuna.models.Model(validate=...)`` uses it for its steps.

    >>> from kizuna.distributions import Normal
    >>> with validation(False):
    ...     validation_enabled()
    False
    """

    __slots__ = ("enabled", "_outer")

    def __init__(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def __enter__(self) -> None:
        self._outer = _CHECKS.enabled
        _CHECKS.enabled = self.enabled

    def __exit__(self, *exc: object) -> None:
        _CHECKS.enabled = self._outer


def _takes_in_order(forward: Any, names: tuple[str, ...]) -> bool:
    """Whether ``forward(self, ...)`` is a plain function taking exactly ``names``, in this order, as ordinary
    parameters (no ``*args`` or ``**kwargs``, no keyword-only or positional-only ones, no others with defaults):
    read from its code object, not from ``inspect.signature``, which follows ``functools.wraps`` to the wrapped
    function and honours a hand-set ``__signature__`` (a wrapper taking ``**kwargs`` then got positional values)."""
    if not isinstance(forward, types.FunctionType):
        return False
    code = forward.__code__
    if code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS) or code.co_kwonlyargcount \
            or code.co_posonlyargcount:
        return False
    return code.co_varnames[1:code.co_argcount] == names


def positional_forward(self: Any, **cond: Tensor) -> dict[str, Tensor]:
    """The ``forward(**cond)`` of a distribution whose parameters are computed by its ``_forward_by_position(*values)``
    from the conditioning values in ``cond_var`` order (kizuna's MLP distributions: ``forward = positional_forward``).
    A class with this very function as its ``forward`` is evaluated through ``_forward_by_position`` directly, the
    values by position and without the keyword dicts; a subclass that overrides ``forward`` is called through its own
    forward."""
    return self._forward_by_position(*[cond[name] for name in self._cond_var])


def _shape_text(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


# torch's words for an input whose dtype is not the network's: "mat1 and mat2 must have the same dtype, but got Double
# and Float", "expected m1 and m2 to have the same dtype", "expected scalar type Double but found Float", "mixed dtype
# (CPU): all inputs must share same datatype", "\"softplus_cpu\" not implemented for 'Long'" and a convolution's
# "Input type (double) and bias type (float) should be the same" (where the two types differ: the same type twice,
# "Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor)", is a device mismatch). Other messages
# with "type" in them (a network's own "unknown cell type") are not about the inputs' dtypes.
_DTYPE_ERROR = re.compile(r"same dtype|expected (?:object of )?scalar type|scalar type of|mixed dtype|not implemented "
                          r"for '|Input type \((?P<input>[^()]*)\) and (?:weight|bias) type \((?P<weight>[^()]*)\)",
                          re.IGNORECASE)
_DEVICE_WORDS = re.compile(r"torch\.|cuda\.?|mps\.?|xpu\.?|cpu\.?|tensor$|type$", re.IGNORECASE)
# integer and boolean dtypes in torch's messages ("Long", "long int", "unsigned char", "Bool", ...)
_INTEGER_WORDS = re.compile(r"\b(?:long|int|short|byte|char|bool|u?int(?:8|16|32|64))\b", re.IGNORECASE)
_NAMES_A_DTYPE = re.compile(r"\b(?:double|float|half|bfloat16|float(?:16|32|64))\b", re.IGNORECASE)
# torch's words for an argument that is not a tensor ("linear(): argument 'input' (position 1) must be Tensor, not
# numpy.ndarray", "expected Tensor as element 1 in argument 0, but got list", "conv1d() received an invalid combination
# of arguments - got (numpy.ndarray, Parameter, ...)")
_NOT_A_TENSOR = re.compile(r"must be (?:Tensor|tuple of Tensors), not |expected Tensor as element \d+ in argument \d+, "
                           r"but got |received an invalid combination of arguments - got \(")
_TORCH_DIR = os.path.dirname(torch.__file__)
_NETWORK_DTYPE_METHOD = {torch.float64: "double", torch.float32: "float", torch.float16: "half",
                         torch.bfloat16: "bfloat16"}


def raise_network_error(dist: Distribution, err: Exception, inputs: Mapping[str, Any]) -> None:
    """Raise the error naming ``dist`` and the input at fault for its network call ``dist.forward(**inputs)`` that
    raised ``err``, where the cause is one of these (else return; the caller re-raises ``err`` or wraps it):

    * ``forward``'s arguments do not take the conditioning variables by name (a forgotten ``cond_var``, or arguments
      named otherwise): Python's "forward() missing 1 required positional argument" named neither. Told apart from a
      TypeError inside the network by binding the inputs to ``forward``'s signature;
    * a conditioning value that is not a tensor (a numpy array, a list) given as it is to torch: torch's "linear():
      argument 'input' must be Tensor, not numpy.ndarray" from inside the network. Only where torch's own code
      refused that very object, or an attribute was read on it ("'numpy.ndarray' object has no attribute 'dim'"),
      `_torch_refused`: a condition that forward takes as it is (a list of strings it tokenises, an optional
      ``None``) leaves forward's own errors as they are;
    * an input whose dtype is not the network's (integers, booleans, float64 into a float32 network): torch's "mat1
      and mat2 must have the same dtype" (`_DTYPE_ERROR`; integer inputs only where torch names an integer type, or
      no type).

    Only called on the error path."""
    if isinstance(err, torch.OutOfMemoryError):
        return
    if isinstance(err, (TypeError, AttributeError)):
        if isinstance(err, TypeError):
            _raise_if_unbound(dist, err, inputs)
        odd = _torch_refused(err, inputs)
        if odd:
            want = next((p.dtype for p in dist.parameters() if p.is_floating_point()), torch.get_default_dtype())
            listed = ", ".join(odd)
            kinds = ", ".join(sorted({type(v).__name__ for v in odd.values()}))
            example = next(iter(odd))
            raise TypeError(f"{dist.prob_text}: {listed} must be a torch.Tensor, got {kinds}: convert it (e.g. "
                            f"torch.as_tensor({example}, dtype={want}))") from err
    if isinstance(err, RuntimeError) and (found := _DTYPE_ERROR.search(str(err))) is not None:
        if found["input"] is not None \
                and _DEVICE_WORDS.sub("", found["input"]).lower() == _DEVICE_WORDS.sub("", found["weight"]).lower():
            return  # the same dtype on two devices
        want = next((p.dtype for p in dist.parameters() if p.is_floating_point()), None)
        text = str(err)
        # floats where the parameters differ; integers and booleans where torch names an integer type (an integer
        # label for an embedding is not the fault of a float64 input), or no type at all ("mixed dtype")
        floats = {k: v.dtype for k, v in inputs.items() if isinstance(v, Tensor) and v.is_floating_point()
                  and want is not None and v.dtype != want}
        integers = {k: v.dtype for k, v in inputs.items() if isinstance(v, Tensor) and not v.is_floating_point()}
        named = _INTEGER_WORDS.search(text) is not None
        integers_too = named or not (floats or _NAMES_A_DTYPE.search(text))
        bad = {k: floats[k] if k in floats else integers[k] for k in inputs
               if k in floats or (integers_too and k in integers)}
        if bad:
            want = want or torch.get_default_dtype()
            listed = ", ".join(f"{k} is {dtype}" for k, dtype in bad.items())
            wide = sorted({dtype for dtype in bad.values() if dtype.is_floating_point}, key=str)
            other = f", or the network to {wide[0]} (e.g. model.{_NETWORK_DTYPE_METHOD[wide[0]]}())" \
                if len(wide) == 1 and wide[0] in _NETWORK_DTYPE_METHOD else ""
            # (torch's error chained: `kizuna.losses.adversarial` reads it to name a GAN's constant prior left in
            # another dtype than the networks, whose draws these are)
            raise ValueError(f"{dist.prob_text}: {listed}, but its network takes {want}: convert it "
                             f"(e.g. .to({want})){other}") from err


def _torch_refused(err: TypeError | AttributeError, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The conditions that are not tensors (nor numbers or None) that the network failed on as they are: ``err`` is
    torch's "must be Tensor, not <their type>" raised in torch's code (a module's ``forward``, a functional) holding
    that very object, or an AttributeError for a tensor's attribute read on that very object (``x.dim()`` of an array
    in torch's BatchNorm or in kizuna's MLP; Python records the object, ``err.obj``). Else nothing, and forward's own
    error stands: a condition that forward takes as it is (a list of strings it tokenises, a dict of settings, an array
    it converts) may sit beside its own bug, which is neither raised on it nor about a tensor's attribute. (A builtin
    torch function called in forward itself, ``torch.tanh(x)``, leaves no frame of torch's: its own message, which
    names the type, stands.)"""
    odd = {k: v for k, v in inputs.items() if v is not None and not isinstance(v, (Tensor, numbers.Number))}
    if not odd:
        return {}
    if isinstance(err, AttributeError):
        obj, name = getattr(err, "obj", None), getattr(err, "name", None)
        if obj is None or not isinstance(name, str) or not hasattr(Tensor, name) or hasattr(str, name):
            return {}  # (a string method, ``batch.split()`` on a list of strings, is not read as a tensor's)
        return {k: v for k, v in odd.items() if v is obj}
    text = str(err)
    if _NOT_A_TENSOR.search(text) is None:
        return {}
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame if tb is not None else None
    if frame is None or not frame.f_code.co_filename.startswith(_TORCH_DIR):
        return {}
    held = {id(v) for v in frame.f_locals.values()}
    return {k: v for k, v in odd.items() if id(v) in held and _type_text(v) in text}


def _type_text(value: Any) -> str:
    """A value's type as torch's argument errors write it: ``list``, ``numpy.ndarray``."""
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _raise_if_unbound(dist: Distribution, err: TypeError, inputs: Mapping[str, Any]) -> None:
    """The error for a ``forward`` that cannot take ``inputs`` (its conditioning variables) as keyword arguments,
    naming ``cond_var``, forward's arguments and the fix; nothing where they bind (then ``err`` came from inside)."""
    try:
        signature = inspect.signature(dist.forward)
    except (TypeError, ValueError):  # no signature to read (a builtin)
        return
    try:
        signature.bind(**inputs)
    except TypeError:
        pass
    else:
        return
    kind = inspect.Parameter
    params = signature.parameters.values()
    names = [p.name for p in params if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)]
    missing = [p.name for p in params if p.default is kind.empty
               and p.kind not in (kind.VAR_POSITIONAL, kind.VAR_KEYWORD) and p.name not in inputs]
    unknown = [] if any(p.kind is kind.VAR_KEYWORD for p in params) else [k for k in inputs if k not in names]
    cond = list(inputs)
    shown = ", ".join(("*" if p.kind is kind.VAR_POSITIONAL else "**" if p.kind is kind.VAR_KEYWORD else "") + p.name
                      for p in params)
    problems = [f"forward has no argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"] if unknown else []
    if missing:
        problems.append(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in cond_var")
    if missing and unknown:
        fix = f"name forward's arguments after cond_var (def forward(self, {', '.join(cond)})), or build it with " \
              f"cond_var={[*[k for k in cond if k not in unknown], *missing]}"
    elif missing:
        fix = f"build it with cond_var={cond + missing}"
    elif unknown:
        fix = f"add {', '.join(unknown)} to forward's arguments (def forward(self, {', '.join(names + unknown)})), " \
              "or leave it out of cond_var"
    else:  # e.g. a positional-only argument
        problems = [str(err)]
        fix = f"make its arguments the conditioning variables: def forward(self, {', '.join(cond)})"
    raise TypeError(f"{dist.prob_text}: forward({shown}) does not match cond_var={cond}: forward gets the "
                    f"conditioning variables as keyword arguments, and {' and '.join(problems)}; {fix}") from None


def _kl_shapes_error(p: Distribution, q: Distribution, mine: D.Distribution, theirs: D.Distribution) -> ValueError:
    """The error for a closed-form KL whose two sides' parameters do not broadcast, naming both shapes."""
    shapes = [tuple(d.batch_shape + d.event_shape) for d in (mine, theirs)]
    return ValueError(f"KL[{p.prob_text}||{q.prob_text}]: the parameters do not broadcast: {shapes[0]} and {shapes[1]}")


def _row_features(d: D.Distribution) -> torch.Size:
    """The per-row feature shape of ``d``, a side's torch distribution (`TorchDistribution._build`): the shape of its
    parameters broadcast together, after the batch dimension, with the family's event dimensions (a Categorical's K).
    All the parameters: the first one alone read ``(1,)`` for a prior ``Normal(loc=torch.zeros(1),
    scale=torch.full((4,), 2.0), features_shape=[4])`` and refused it against a posterior over 4 features, naming a
    wrong shape."""
    return d.batch_shape[1:] + d.event_shape


def _check_declared_features(p: TorchDistribution, p_dist: D.Distribution, q: TorchDistribution,
                             q_dist: D.Distribution) -> None:
    """A side that declares ``features_shape`` against the other side's parameters of other features: refused, as
    its log-density refuses such values (a prior over 1 feature broadcast against q's 3 in the closed form, summing
    3 KLs to N(0, 1), while the Monte-Carlo path refused the pair). Scalar parameters broadcast as before. ``p_dist``,
    ``q_dist``: the two sides' torch distributions of these parameters (`_row_features`)."""
    for declared, own_dist, found_in, found_dist in ((p, p_dist, q, q_dist), (q, q_dist, p, p_dist)):
        if not declared._features_shape:
            continue
        # the parameters' own row shapes on both sides (a family's event dimensions, e.g. a Categorical's K, in both)
        want, got = _row_features(own_dist), _row_features(found_dist)
        if len(want) and len(got) and got != want:
            raise ValueError(f"KL[{p.prob_text}||{q.prob_text}]: {declared.prob_text} is over features of shape "
                             f"{tuple(declared._features_shape)} (parameters {tuple(want)} per row), but "
                             f"{found_in.prob_text}'s parameters have {tuple(got)} per row")


class TorchDistribution(Distribution):
    """A distribution of one torch family over a single variable (see module docstring).

    Subclasses set ``torch_class`` and ``param_names``; constructor keyword arguments named
    in ``param_names`` give constant parameters (or the name of a conditioning variable).
    A distribution may be built without some parameters (``Normal(var=["x"])``); using it
    before they are given is an error that names them.
    """

    torch_class: ClassVar[type[D.Distribution]]
    param_names: ClassVar[tuple[str, ...]] = ()
    _param_set: ClassVar[frozenset[str]] = frozenset()  # param_names as a set (set per subclass)
    _hooks: ClassVar[dict[str, bool]] = {}  # set per subclass, see __init_subclass__
    _takes_args: ClassVar[bool] = True  # set per subclass, see __init_subclass__
    # per instance (set in __init__; these class values, the general path, serve an instance pickled before them)
    _forward_only = False
    _by_position_cond: list[str] | None = None
    _positional_forward: Any = None
    _positional_call: Any = None
    _number_lists: Mapping[str, Tensor] = types.MappingProxyType({})  # (set in __init__: constants given as lists)
    _numbers_only = False  # (set in __init__: every constant given as numbers, `_compute_params`)
    static_params: ClassVar[tuple[str, ...]] = ()  # plain Python values (e.g. total_count)
    validate_value: ClassVar[bool] = True  # check the support of scored values
    moments_hint: ClassVar[str] = ""  # appended to the error of a family without a closed-form mean or variance
    # checks torch leaves out or reports under an inner distribution's parameter names
    param_constraints: ClassVar[dict[str, constraints.Constraint]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._param_set = frozenset(cls.param_names)
        # which closed-form hooks this family defines, fixed with the class (a constant that the evaluation
        # reads without a call, and that a compiled step can guard on)
        cls._hooks = {name: getattr(cls, name) is not getattr(TorchDistribution, name) for name in _HOOK_NAMES}
        # a subclass's own get_params (Pixyz's place for a cache, ``@lru_cache_for_sample_dict()``): every
        # evaluation, draw and density then reads the parameters through it, as Pixyz's do
        # (a get_params that only presents the parameters otherwise, e.g. a posterior's probabilities, is marked
        # ``_reads_parameters = False`` and left out)
        cls._custom_get_params = cls.get_params is not TorchDistribution.get_params \
            and getattr(cls.get_params, "_reads_parameters", True)
        # `_params` hands its input values to `_compute_params` (a subclass's own `_compute_params` gets x_dict only)
        cls._takes_args = cls._compute_params is TorchDistribution._compute_params

    def __init__(
        self,
        var: str | Sequence[str] = ("x",),
        cond_var: str | Sequence[str] | None = None,
        name: str = "p",
        features_shape: Sequence[int] | torch.Size = (),
        **params: Any,
    ) -> None:
        super().__init__(var, cond_var, name, features_shape)
        if len(self._var) != 1:
            raise ValueError(f"{self.prob_text}: a {type(self).__name__} defines exactly one variable")
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no parameter {', '.join(unknown)}; "
                f"its parameters are {', '.join(self.param_names)}"
            )
        self._const_names: list[str] = []
        self._numbers: dict[str, float] = {}  # Python numbers: follow the inputs' dtype and device exactly
        # lists / tuples (nested) of Python numbers, as float64 CPU tensors of their shape: the same (`_number_tensor`)
        self._number_lists: dict[str, Tensor] = {}
        self._static: dict[str, Any] = {}
        self._from_var: dict[str, str] = {}
        self._expand: dict[str, torch.Size] = {}  # constants broadcast to features_shape at use
        for key, value in params.items():
            self._set_param(key, value)
        self._uses_forward = type(self).forward is not TorchDistribution.forward
        # every parameter from forward (the usual conditional distribution): its result is the parameters
        self._forward_only = self._uses_forward and not (self._from_var or self._const_names or self._static)
        # every constant given as a number or a list of numbers: with no parameter from the inputs, the numbers meet no
        # other tensor and keep their buffers' dtype (`_numbers_like` is None; `_compute_params`, every score)
        self._numbers_only = all(k in self._numbers or k in self._number_lists for k in self._const_names)
        # the cond_var list when the class's forward takes exactly these variables by position in this order, or is
        # `positional_forward` (then its `_forward_by_position` computes the parameters): it is then called with the
        # values by position (`_positional_call`: that forward, or None for `_forward_by_position`), as a hand-written
        # loop calls a network, while the class still has that forward (`_positional_forward`); else None (an instance
        # pickled before these attributes: by name)
        self._positional_forward = forward = type(self).forward
        self._by_position_cond, self._positional_call = None, None
        if self._uses_forward:
            if forward is positional_forward:  # `_forward_by_position`, looked up at each call (`_compute_params`)
                self._by_position_cond = self._cond_var
            elif _takes_in_order(forward, tuple(self._cond_var)):
                self._by_position_cond, self._positional_call = self._cond_var, forward
        if not self._uses_forward and not self._from_var and self._const_names and self._complete() \
                and not any(getattr(self, key).is_meta for key in self._const_names):  # (meta: no values to check)
            self._check_constants()

    # ------------------------------------------------------------ construction
    def _set_param(self, key: str, value: Any) -> None:
        if value is None:
            return
        if key in self.static_params:
            self._static[key] = value
        elif isinstance(value, str):
            if value not in self._cond_var:
                raise ValueError(
                    f"{self.prob_text}: parameter {key}={value!r} names a variable that is not in "
                    f"cond_var {self._cond_var}"
                )
            self._from_var[key] = value
        elif isinstance(value, nn.Parameter):
            self.register_parameter(key, value)
            self._const_names.append(key)
        else:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._numbers[key] = float(value)
            if isinstance(value, Tensor) and value.requires_grad:
                # (an optimiser given the tensor stepped it while the distribution kept its copy: nothing trained)
                warn_user(f"{self.prob_text}: parameter {key} is a tensor that requires grad; a constant is copied "
                          "into a buffer, so no gradient reaches the tensor and later changes to it are not seen. To "
                          f"learn {key}, pass nn.Parameter(...) (or compute it in forward)")
            try:
                tensor = torch.as_tensor(value).detach().clone()  # a copy: the caller's tensor stays theirs
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(f"{self.prob_text}: parameter {key} must be a number, a tensor, a variable "
                                f"name or an nn.Parameter, got {type(value).__name__}") from err
            if not tensor.is_floating_point():
                tensor = tensor.to(torch.get_default_dtype())
            if isinstance(value, (list, tuple)) and value and _all_numbers(value):
                # (its float32 buffer alone rounded 1e6 + 0.1 to 1000000.125 for float64 scoring and .double())
                self._number_lists[key] = torch.tensor(value, dtype=torch.float64, device="cpu")
            event_dim = getattr(self.torch_class.arg_constraints.get(key), "event_dim", 0)
            if tensor.dim() < event_dim:  # e.g. a number as a MultivariateNormal's loc: a vector is needed
                raise ValueError(f"{self.prob_text}: parameter {key} of {type(self).__name__} needs at least "
                                 f"{event_dim} dimension(s) (one sample's shape), got {tuple(tensor.shape)}")
            if tensor.dim() == 0 and self._features_shape and _per_element(self.torch_class, key):
                tensor = tensor.expand(self._features_shape).clone()
            self.register_buffer(key, tensor.unsqueeze(0).contiguous())
            self._const_names.append(key)

    def _complete(self) -> bool:
        given = set(self._const_names) | set(self._from_var) | set(self._static)
        return self._missing(given) == []

    def _missing(self, given: set[str]) -> list[str]:
        """Required parameters absent from ``given``, from the torch class's signature: those without
        a default, and one of each group of alternatives whose defaults are all ``None``
        (``probs`` or ``logits``; ``covariance_matrix``, ``precision_matrix`` or ``scale_tril``)."""
        required, optional = _signature(self.torch_class)
        missing = [n for n in required if n in self.param_names and n not in given]
        group = [n for n in optional if n in self.param_names]
        if group and not given & set(group):
            missing.append(" or ".join(group))
        return missing

    def _check_constants(self) -> None:
        """Constant parameters: finite, valid for the family, and defining ``features_shape``."""
        for key in self._const_names:
            value = getattr(self, key)
            if key == "logits" and issubclass(self.torch_class, (D.Categorical, D.OneHotCategorical, D.Multinomial,
                                                                 D.RelaxedOneHotCategorical)) \
                    and value.dim() > 0 and not bool(torch.isnan(value).any() | (value == math.inf).any()):
                # -inf logits mask a category (torch takes them); a row with no category left is no distribution
                if bool((value == -math.inf).all(-1).any()):
                    raise ValueError(f"{self.prob_text}: constant parameter logits of {type(self).__name__} is -inf in "
                                     "every category of a row (no category left)")
                continue
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{self.prob_text}: constant parameter {key} of {type(self).__name__} must be "
                                 f"finite, got non-finite values (shape {tuple(value.shape)})")
        try:
            with validation(True):
                dist = self._build(self._compute_params({}), independent=False)
        except ValueError as err:
            if not self._features_shape or "broadcast" not in str(err):
                raise
            raise ValueError(f"{self.prob_text}: the constant parameters do not fit features_shape "
                             f"{tuple(self._features_shape)}: {err}") from None
        features = dist.batch_shape[1:] + dist.event_shape
        if self._features_shape and features != self._features_shape:
            # constants that broadcast to features_shape are expanded to it (views, at each use)
            n_event = len(dist.event_shape)
            batch = torch.Size([1]) + self._features_shape[:len(self._features_shape) - n_event]
            if not _broadcasts(dist.batch_shape, batch):
                raise ValueError(f"{self.prob_text}: features_shape {tuple(self._features_shape)} does not fit "
                                 f"parameters of shape {tuple(features)}")
            table = self.torch_class.arg_constraints
            for key in self._const_names:
                if key not in table:
                    continue  # not an elementwise parameter (e.g. a temperature)
                event_dim = getattr(table.get(key), "event_dim", 0)
                value = getattr(self, key)
                self._expand[key] = batch + value.shape[value.dim() - event_dim:] if event_dim else batch
            with validation(True):
                dist = self._build(self._compute_params({}), independent=False)
            features = dist.batch_shape[1:] + dist.event_shape
            if features != self._features_shape:
                raise ValueError(f"{self.prob_text}: features_shape {tuple(self._features_shape)} does not fit "
                                 f"parameters of shape {tuple(features)}")
        self._features_shape = torch.Size(features)

    @property
    def has_reparam(self) -> bool:
        return bool(self.torch_class.has_rsample)

    @property
    def torch_family(self) -> type[D.Distribution]:
        return self.torch_class

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        """Map conditioning values to parameters; override in subclasses. See module docstring."""
        return {}

    # ------------------------------------------------------------ parameters
    def _params(self, x_dict: Mapping[str, Any]) -> dict[str, Any]:
        """The merged parameters for these inputs, each with a leading batch dimension (shared within
        one evaluation, see `kizuna.formula.memo`); through a subclass's own ``get_params`` where it has one."""
        try:  # the input values in cond_var order: the memo's key, and forward's arguments
            inputs = args = list(map(x_dict.__getitem__, self._cond_var))
        except KeyError:  # an input is absent (None in the key; `_compute_params` names it, or it is optional)
            inputs, args = list(map(x_dict.get, self._cond_var)), None
        if self._custom_get_params and id(self) not in _IN_GET_PARAMS.ids:
            return memoized(self, "params", inputs, self._params_by_get_params, x_dict)
        if self._takes_args:
            return memoized(self, "params", inputs, self._compute_params, x_dict, args)
        return memoized(self, "params", inputs, self._compute_params, x_dict)

    def _params_by_get_params(self, x_dict: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters from the subclass's ``get_params`` given the conditioning values; its call of
        ``super().get_params`` computes them (`_compute_params`)."""
        ids = _IN_GET_PARAMS.ids
        ids.add(id(self))
        try:
            out = self.get_params({k: x_dict[k] for k in self._cond_var if k in x_dict})
        finally:
            ids.discard(id(self))
        if not isinstance(out, Mapping):
            raise TypeError(f"{self.prob_text}: get_params must return a dict of parameters, got {type(out).__name__}")
        return out if type(out) is dict else dict(out)

    def _from_inputs(self) -> bool:
        """Whether parameters come from the inputs (their rows are the batch) or are all constant."""
        return self._uses_forward or bool(self._from_var)

    def _compute_params(self, x_dict: Mapping[str, Any], args: list[Any] | None = None) -> dict[str, Any]:
        """The parameters for the values in ``x_dict``: forward's, then those named by variables, the constants
        and the static ones. ``args``: the values of ``cond_var`` in its order, when the caller has them."""
        params: dict[str, Any] = {}
        if self._uses_forward:
            cond = self._cond_var
            if args is None:
                try:
                    args = list(map(x_dict.__getitem__, cond))
                except KeyError:
                    self._require(x_dict, cond)  # names what is missing
                    raise
            if not torch.is_grad_enabled():  # a network gets ordinary tensors (it may call .numpy())
                args = [v.materialize() if type(v) is RepeatedRows else v for v in args]
            try:
                if not module_call_is_forward(self):
                    out = self(**dict(zip(cond, args)))  # torch's module call: hooks, module.compile(), a JIT trace
                elif self._by_position_cond is cond and type(self).forward is self._positional_forward \
                        and "forward" not in self.__dict__:
                    # what torch's call does without any of those, without its two frames
                    call = self._positional_call  # None: `positional_forward`'s class, through _forward_by_position
                    out = self._forward_by_position(*args) if call is None else call(self, *args)
                else:
                    out = self.forward(**dict(zip(cond, args)))
            except Exception as err:  # a network that cannot take these inputs: name the one at fault
                inputs = dict(zip(cond, args))
                raise_network_error(self, err, inputs)  # forward's arguments, a non-tensor, a dtype
                if not isinstance(err, RuntimeError) or isinstance(err, torch.OutOfMemoryError):
                    raise  # the network's own error
                # e.g. a feature width the network does not take
                shapes = ", ".join(f"{k} of shape {_shape_text(v)}" for k, v in inputs.items())
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                raise ValueError(f"{self.prob_text}: forward() failed on {shapes}: {first}") from err
            if type(out) is not dict or not out.keys() <= self._param_set:
                out = self._check_forward(out)
            if self._forward_only:  # all from forward (the usual case)
                return dict(out)
            params.update(out)
        for key, cond in self._from_var.items():
            if cond not in x_dict:
                self._require(x_dict, self._cond_var)
            value = x_dict[cond]
            if isinstance(value, Tensor) and not value.is_floating_point():
                # an integer or boolean value as a parameter (loc="m" with m int64): a floating one, in the constants'
                # dtype (sampling failed with "normal_kernel_cpu not implemented for 'Long'", Bernoulli's log-density
                # in torch.finfo)
                floats = _floating_like(self._buffers.values())  # (the widest: independent of the keyword order)
                value = value.to(floats[0] if floats is not None else torch.get_default_dtype())
            if isinstance(value, Tensor) and value.shape == self._features_shape and value.dim():
                # a condition of the declared features' shape has no batch dimension: a batch of one (sample drew
                # one row per feature, while its density and mean took it as one row)
                value = value.unsqueeze(0)
            params[key] = value
        # the (dtype, device) of the tensors the numbers meet, found when a number needs it; None where they meet none
        # (every constant given as numbers and no parameter from the inputs: `_numbers_only`, known without looking)
        like: Any = None if not params and self._numbers_only else False
        for key in self._const_names:
            if key in params:
                continue
            if key in self._parameters:  # an nn.Parameter given as a constant: no batch dimension yet
                value = self._parameters[key].unsqueeze(0)
            else:
                value = self._buffers[key]
            if like is not None and (key in self._numbers or key in self._number_lists):
                if like is False:  # (all the tensors, whatever the keyword order: `_numbers_like`; the inputs' alone
                    # where every constant is given as numbers)
                    like = _floating_like(params.values()) if self._numbers_only else self._numbers_like(params)
                if like is not None and (value.dtype != like[0] or value.device != like[1]):
                    # the number itself in the inputs' precision while the buffer holds it; a buffer changed since
                    # (load_state_dict, an annealed scale's fill_) is converted, not replaced by the old number
                    value = self._number_tensor(key, value.shape, like[0], like[1]) \
                        if self._holds_numbers() else value.to(dtype=like[0], device=like[1])
            if key in self._expand:
                value = value.expand(self._expand[key])
            params[key] = value
        for key, value in self._static.items():
            params.setdefault(key, value)
        return params

    def _numbers_like(self, params: Mapping[str, Any]) -> tuple[torch.dtype, torch.device] | None:
        """The dtype and device that the constants given as Python numbers take in `_compute_params`: those of the
        floating tensors they meet, the parameters from the inputs (``params``, forward's and the variables') and the
        constants given as tensors, the widest dtype among them (torch's promotion, in which the family's arithmetic
        combines them) and the first one's device; None where there is none (the numbers keep their buffers' dtype:
        the default dtype, or the one ``.to()`` gave them). Found among all of them, not among those placed before
        the number: ``Normal(scale=0.1, loc=<float64>)`` held float32's 0.10000000149 where ``Normal(loc=<float64>,
        scale=0.1)`` held 0.1, and a relaxed family's temperature, given first, was always float32."""
        found = _floating_like(params.values())
        rest = [self._parameters[k] if k in self._parameters else self._buffers[k] for k in self._const_names
                if k not in self._numbers and k not in self._number_lists and k not in params]
        if rest:
            more = _floating_like(rest)
            if found is None:
                found = more
            elif more is not None:
                found = (torch.promote_types(found[0], more[0]), found[1])
        return found

    def _buffers_stamp(self) -> list[tuple[Any, int | None, int | None]]:
        """Each buffer with torch's version counter (advanced by every in-place write to the tensor: ``fill_``,
        ``copy_``, ``load_state_dict``) and the address of its storage (which a reassignment of ``.data`` changes), to
        tell later with `_buffers_unchanged` whether any buffer changed.

        An in-place write through ``.data`` (``p.scale.data.fill_(2)``, ``p.probs.data.copy_(...)``) or through a
        numpy view is not seen: torch does not count it as a change (its version counter is not advanced), so the
        caches built on this stamp (`_constant_dist`, `_holds_numbers` and the standard-normal KL shortcut) keep the
        old value. Write to the buffer itself under ``torch.no_grad()`` (``with torch.no_grad(): p.scale.fill_(2)``),
        or assign it anew (``p.scale = torch.full(...)``, ``p.scale.data = ...``)."""
        return [(t, None, None) if t is None else (t, t._version, t.data_ptr()) for t in self._buffers.values()]

    def _buffers_unchanged(self, stamp: list[tuple[Any, int | None, int | None]] | None) -> bool:
        """Whether every buffer is the tensor recorded in ``stamp`` (`_buffers_stamp`) at the same version, on the same
        storage (see `_buffers_stamp` for the writes this cannot see)."""
        buffers = self._buffers
        if stamp is None or len(stamp) != len(buffers):
            return False
        for tensor, (seen, version, address) in zip(buffers.values(), stamp):
            if tensor is not seen or (tensor is not None and (tensor._version != version
                                                              or tensor.data_ptr() != address)):
                return False
        return True

    def _buffers_transformed(self) -> bool:
        """Whether a buffer is a tensor of a ``torch.func`` transform (``grad``'s, ``vmap``'s: put in by
        ``functional_call``, as ``stack_module_state`` ensembling does), which has no storage to stamp and holds the
        values of one transform only: the caches built on `_buffers_stamp` are then passed by (`_constant_dist`
        builds without keeping, `_holds_numbers` says no, the standard-normal shortcuts are not taken), as inside
        ``torch.inference_mode`` or ``torch.compile``. Asked only where a cache missed."""
        return any(t is not None and _is_transformed(t) for t in self._buffers.values())

    def _apply(self, fn: Any, recurse: bool = True) -> TorchDistribution:
        """``.to()`` / ``.double()``: a constant given as a Python number (or a list of numbers) that still holds it
        holds the exact numbers in the new dtype (a cast of float32(0.1) to float64 kept 0.10000000149: densities off
        by 1e-8 to 4e-7; a list's 1e6 + 0.1 stayed 1000000.125, a density with scale 1e-3 312 nats off). A buffer of
        another shape than the list's (reassigned since) is converted as it is."""
        exact = {key: torch.tensor(float(number), dtype=torch.float64, device="cpu")
                 for key, number in self._numbers.items()}
        exact.update((key, numbers) for key, numbers in self._number_lists.items()
                     if (b := self._buffers.get(key)) is not None and b.shape[1:] == numbers.shape)
        return apply_keeping_exact(self, lambda: super(TorchDistribution, self)._apply(fn, recurse), exact)

    def _holds_numbers(self) -> bool:
        """Whether every constant given as a Python number (or a list of numbers, `_number_lists`) still holds it, in
        its buffer's dtype: checked by value once, and again only after a buffer changed (`_buffers_unchanged`; not
        after an in-place write through ``.data``, see `_buffers_stamp`)."""
        if self._buffers_unchanged(self.__dict__.get("_numbers_seen")):
            return True
        if self._buffers_transformed():  # (read by value, a vmap's batch failed as data-dependent control flow)
            return False
        for key, number in (*self._numbers.items(), *self._number_lists.items()):
            value = self._buffers.get(key)
            if type(number) is Tensor and value is not None:
                if value.shape[1:] != number.shape:  # (a buffer reassigned with another shape)
                    value = None
                else:
                    number = number.to(dtype=value.dtype, device=value.device)  # (as a number meets the buffer)
            if value is None or not bool((value == number).all()):
                self.__dict__.pop("_numbers_seen", None)
                return False
        self.__dict__["_numbers_seen"] = self._buffers_stamp()
        return True

    def _number_tensor(self, key: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The constant ``key`` given as a Python number (`_numbers`) or a list of numbers (`_number_lists`), exact in
        ``dtype`` (rounded once, from the numbers), on ``device``, of ``shape`` (the parameter's, which the numbers
        broadcast to)."""
        number = self._numbers.get(key)
        if number is not None:
            return torch.full(shape, number, dtype=dtype, device=device)
        return self._number_lists[key].to(dtype=dtype, device=device).expand(shape)

    def _check_forward(self, out: Any) -> Mapping[str, Any]:
        """``forward``'s result, checked: a dict naming only this family's parameters."""
        if type(out) is not dict and not isinstance(out, Mapping):
            raise TypeError(
                f"{self.prob_text}: forward() must return a dict of parameters, got {type(out).__name__}"
            )
        if out.keys() <= self._param_set:
            return out
        bad = sorted(set(out) - set(self.param_names))
        if bad:
            raise ValueError(
                f"{self.prob_text}: forward() returned {', '.join(bad)}, which "
                f"{type(self).__name__} does not take (its parameters: {', '.join(self.param_names)})"
            )
        return out

    def get_params(self, params_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Tensor]:
        """See `Distribution.get_params`: forward's outputs, then variables, then constants."""
        if type(params_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            params_dict = values_dict(params_dict, "get_params", self, self.input_var)
        x_dict = dict(params_dict or {})
        self._require(x_dict, self._cond_var)
        ids = _IN_GET_PARAMS.ids
        if id(self) in ids:  # called by a subclass's get_params: compute them
            return dict(self._params(x_dict))
        ids.add(id(self))
        try:
            return dict(self._params(x_dict))
        finally:
            ids.discard(id(self))

    # ------------------------------------------------------- torch objects
    def _torch_dist(self, x_dict: Mapping[str, Any], independent: bool = True, reuse: bool = True,
                    params: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> D.Distribution:
        """The torch distribution for these inputs (built once per evaluation, see `memo`; with ``reuse``,
        one whose parameters are all buffers is built once while they are unchanged, see `_constant_dist`),
        from ``params`` where the caller has them (`_params`' for these inputs: outside an evaluation, which has no
        memo, reading them again ran the network a second time). ``dtype``: ``params`` are `_scoring_params`' for a
        value of that dtype (its Python-number constants exact in it), a distribution of its own."""
        if reuse and not self._uses_forward and not self._from_var and not self._parameters \
                and not self._custom_get_params and not torch.compiler.is_compiling() \
                and not torch.is_inference_mode_enabled():  # (is_compiling first: dynamo breaks the graph at the other)
            return self._constant_dist(independent, dtype)
        inputs = list(map(x_dict.get, self._cond_var))
        return memoized(self, ("dist", independent) if dtype is None else ("dist", independent, dtype), inputs,
                        lambda: self._build(self._params(x_dict) if params is None else params, independent))

    def _constant_dist(self, independent: bool, dtype: torch.dtype | None = None) -> D.Distribution:
        """The torch distribution of a distribution whose parameters are all constants held in buffers (a
        prior, a uniform choice of noise level), kept between evaluations while every buffer is the same
        tensor at the same version (torch's counter of in-place writes: ``fill_``, ``load_state_dict``) on the same
        storage (a reassigned ``.data``; an in-place write through ``.data`` is not seen, see `_buffers_stamp`),
        per validation setting: building it costs more than drawing from it (torch's Categorical normalises
        its probabilities on every construction). Its tensors are buffers, which hold no autograd graph
        (none is kept from inside ``torch.inference_mode``, whose tensors autograd refuses to save). With ``dtype``,
        the one scoring a value of that wider dtype, its Python-number constants exact in it (`_scoring_params`),
        kept alike."""
        key = (independent, validation_enabled()) if dtype is None else (independent, validation_enabled(), dtype)
        cache = self.__dict__.get("_dist_cache")
        if cache is None:
            cache = self.__dict__["_dist_cache"] = {}
        hit = cache.get(key)
        if hit is not None and self._buffers_unchanged(hit[0]):
            return hit[1]
        params = self._compute_params({})
        if dtype is not None:
            params = self._with_exact_numbers(params, dtype)
        dist = self._build(params, independent)
        if not self._buffers_transformed():  # (a transform's tensors: built, not kept)
            cache[key] = (self._buffers_stamp(), dist)
        return dist

    def _build(self, params: dict[str, Any], independent: bool) -> D.Distribution:
        """The torch distribution for merged ``params``; features (all but the first batch
        dimension) become event dimensions when ``independent``."""
        missing = self._missing(set(params))
        if missing:
            raise ValueError(f"{self.prob_text}: {type(self).__name__} has no value for {', '.join(missing)}; "
                             "give it as a constant, as the name of a conditioning variable, or from forward()")
        validate = validation_enabled()
        if validate:
            self._check_params(params)
        try:  # parameters without entries (an empty batch) hold nothing to check, and torch's checks fail reshaping
            # them (a Categorical's logits (0, K): "cannot reshape tensor of 0 elements"), named a broadcast error below
            dist = self.torch_class(**params, validate_args=validate and not _without_entries(params))
        except ValueError as err:
            bad = [k for k, v in params.items() if isinstance(v, Tensor) and v.is_floating_point()
                   and not bool(torch.isfinite(v).all())]
            if bad:  # a network that emitted nan / inf: a numerical failure, not a wrong argument
                raise FloatingPointError(f"{self.prob_text}: parameter {', '.join(bad)} of {type(self).__name__} "
                                         "is not finite") from None
            odd = {k: v for k, v in params.items() if not isinstance(v, (Tensor, numbers.Number))}
            if odd:  # e.g. a numpy array or a list given for a variable that a parameter reads
                listed = ", ".join(f"{self._from_var[k]} (its {k})" if k in self._from_var else k for k in odd)
                kinds = ", ".join(sorted({type(v).__name__ for v in odd.values()}))
                raise TypeError(f"{self.prob_text}: {listed} must be a torch.Tensor, got {kinds}") from None
            match = _PARAM_ERROR.search(str(err))
            if match:
                raise ValueError(
                    f"{self.prob_text}: parameter '{match.group(1)}' of {type(self).__name__} must satisfy "
                    f"{match.group(2)}; got invalid values"
                ) from None
            raise ValueError(f"{self.prob_text}: invalid parameters for {type(self).__name__}: {err}") from err
        except NotImplementedError as err:  # torch's own limit (e.g. a Multinomial's inhomogeneous total_count)
            raise ValueError(f"{self.prob_text}: torch's {self.torch_class.__name__} does not support these "
                             f"parameters: {err}") from None
        except RuntimeError as err:  # parameters whose shapes do not broadcast
            shapes = ", ".join(f"{k} {_shape_text(v)}" for k, v in params.items() if isinstance(v, Tensor))
            raise ValueError(f"{self.prob_text}: parameter shapes do not broadcast: {shapes}") from err
        except TypeError as err:
            raise TypeError(
                f"{self.prob_text}: cannot build {type(self).__name__} from parameters "
                f"{sorted(params)} (give them as constants or return them from forward): {err}"
            ) from err
        if len(dist.batch_shape) == 0:
            raise ValueError(f"{self.prob_text}: parameters from forward() need a leading batch dimension "
                             f"(got {', '.join(f'{k} {_shape_text(v)}' for k, v in params.items())})")
        n_features = len(dist.batch_shape) - 1
        if independent and n_features > 0:
            return D.Independent(dist, n_features, validate_args=False)
        return dist

    def _check_params(self, params: dict[str, Any]) -> None:
        for key, constraint in self.param_constraints.items():
            value = params.get(key)
            if value is not None and not bool(constraint.check(torch.as_tensor(value)).all()):
                raise ValueError(
                    f"{self.prob_text}: parameter '{key}' of {type(self).__name__} must satisfy {constraint}; "
                    "got invalid values"
                )

    def get_dist(self, x_dict: Mapping[str, Any] | None = None, independent: bool = True) -> D.Distribution:
        """A fresh ``torch.distributions`` object for these inputs; features are event dims."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "get_dist", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        return self._torch_dist(x_dict, independent, reuse=False)

    # --------------------------------------------------- closed-form hooks
    @classmethod
    def _has_hook(cls, name: str) -> bool:
        """Whether this family defines the closed-form hook ``name`` (fixed when the class is made)."""
        return cls._hooks[name]

    def _log_prob_kernel(self, value: Tensor, params: dict[str, Any]) -> Tensor | None:
        """The elementwise log-density from the parameters, or None to use torch's (see module docstring)."""
        return None

    def _rsample_kernel(self, shape: torch.Size, params: dict[str, Any]) -> Tensor | None:
        """A reparameterised draw of ``shape`` (torch's random stream), or None to use torch's."""
        return None

    def _kl_kernel(self, other: TorchDistribution, params: dict[str, Any],
                   other_params: dict[str, Any]) -> Tensor | None:
        """The elementwise KL to ``other``, or None to use torch's registry."""
        return None

    def _score_kernel(self, value: Tensor, params: dict[str, Any]) -> Tensor | None:
        r"""The score :math:`\nabla_x \log p(x)` elementwise from the parameters, or None."""
        return None

    def closed_form_score(self, x_dict: Mapping[str, Any]) -> Tensor | None:
        """See `Distribution.closed_form_score`: the family's `_score_kernel`, shaped like the value."""
        if not self._has_hook("_score_kernel"):
            return None
        params = self._scoring_params(x_dict)[0]
        shape = self._kernel_shape(params, None)
        value = x_dict[self._var[0]]
        if shape is None or not isinstance(value, Tensor) or value.dim() != len(shape):
            return None
        score = self._score_kernel(value, params)
        return None if score is None else score.expand(value.shape)

    def kl_parts(self, x_dict: Mapping[str, Any]) -> tuple[TorchDistribution, dict[str, Any]]:
        """See `Distribution.kl_parts`."""
        return self, self._params(x_dict)

    def _kl_dist(self, params: dict[str, Any]) -> D.Distribution:
        """The torch distribution of `closed_form_family` whose closed-form KL `kl_to` takes (per feature)."""
        return self._build(params, False)

    def kl_to(self, params: dict[str, Any], other: TorchDistribution, other_params: dict[str, Any],
              per_feature: bool = False) -> Tensor:
        r""":math:`D_{KL}[self\|other]` in closed form from both parameter sets, per row (or per feature):
        the family's `_kl_kernel` when it has one, else torch's registry (validation adds the checks only). A side's
        constants given as Python numbers are taken exactly in the other side's dtype where it is the wider one
        (`_numbers_exact_in`; a prior ``Normal(loc=0., scale=0.1)`` against a float64 posterior: 0.1, not float32's
        0.10000000149, as its log-density of a float64 value takes it)."""
        if self._holds_numbers_as_given() or other._holds_numbers_as_given():
            found = _floating_like([*params.values(), *other_params.values()])
            if found is not None:
                params = self._numbers_exact_in(params, found[0])
                other_params = other._numbers_exact_in(other_params, found[0])
        if validation_enabled():  # the checks of both parameter sets; the computation below is the same
            _check_declared_features(self, self._build(params, not per_feature), other,
                                     other._build(other_params, not per_feature))
        if self._hooks["_kl_kernel"]:
            try:
                kl = self._kl_kernel(other, params, other_params)
            except RuntimeError as err:  # e.g. data of 5 features against a prior of 2: named as torch's path does
                if "must match the size" not in str(err):
                    raise
                raise _kl_shapes_error(self, other, self._build(params, False), other._build(other_params, False)) \
                    from err
            if kl is not None:
                return kl if per_feature else sum_rows(kl)
        # per feature (each side's own event dimensions only), then summed over the features: a constant side
        # without features_shape has fewer batch dimensions than the other, so wrapping each in Independent gave
        # the pair different event ranks, which torch has no KL for
        mine, theirs = self._kl_dist(params), other._kl_dist(other_params)
        try:
            shape = _broadcast(mine.batch_shape, theirs.batch_shape)
            if shape.numel() == 0 and mine.event_shape == theirs.event_shape:  # an empty batch: torch's
                # MultivariateNormal KL against a network's divides by the rows of its scale (0 // 0, a bare
                # ZeroDivisionError, with a constant side first); different events are left to torch's error
                kl = _empty_kl(shape, params, other_params)
            else:
                if mine.batch_shape != theirs.batch_shape:  # a constant side's one row against the batch: torch's
                    # Bernoulli KL indexes one side by a mask of the other's shape, it does not broadcast
                    mine, theirs = mine.expand(shape), theirs.expand(shape)
                kl = D.kl_divergence(mine, theirs)
        except NotImplementedError:  # no closed form for this pair after all (KullbackLeibler falls back)
            raise
        except RuntimeError as err:  # shapes that do not broadcast
            raise _kl_shapes_error(self, other, mine, theirs) from err
        kl = kl if kl.dim() > 0 else kl.unsqueeze(0)
        return kl if per_feature else sum_rows(kl)

    # ------------------------------------------------------ sample / density
    def _rows(self, params: dict[str, Any], x_dict: Mapping[str, Any], batch_n: int | None) -> int | None:
        """The number of rows to draw: ``batch_n``; else the parameters' rows; parameters with one row
        (constants) broadcast to the rows of the other values in ``x_dict`` (zero rows too: an empty batch draws
        none); one row where no value has a batch dimension."""
        if batch_n is not None:
            return batch_n
        rows = self._param_rows(params)
        if rows != 1:
            return rows
        unbatched = self._unbatched_conditions(x_dict)
        if unbatched:  # conditions without a batch dimension are one row, not their features as rows; the other values'
            # rows still broadcast the parameters
            x_dict = {k: v for k, v in x_dict.items() if k not in unbatched}
        rows = batch_size_of(x_dict)
        return 1 if rows is None else rows  # no batch at all: one row; values with zero rows: zero rows

    def _param_rows(self, params: dict[str, Any]) -> int:
        """The parameters' own rows: the first dimension of the first batched tensor parameter (1 without one)."""
        for k, v in params.items():  # a plain loop: this runs at every draw
            if isinstance(v, Tensor) and v.dim() > 0 and k not in self._static:
                return v.shape[0]
        return 1

    def _unbatched_conditions(self, x_dict: Mapping[str, Any]) -> tuple[str, ...]:
        """The conditioning values given without a batch dimension (`_compute_params` makes them one row): those of the
        declared features' shape that a parameter is read from. Subclasses whose ``forward`` reads them so say which
        (the MLP distributions)."""
        if not (self._from_var and self._features_shape):
            return ()
        return tuple(c for c in self._from_var.values()
                     if isinstance(v := x_dict.get(c), Tensor) and v.dim() and v.shape == self._features_shape)

    def _draw(self, params: dict[str, Any], x_dict: Mapping[str, Any], batch_n: int | None, n: int,
              reparam: bool) -> Tensor:
        """``n`` draws per row (a leading draw dimension when ``n > 1``)."""
        rows = self._rows(params, x_dict, batch_n)
        if batch_n is None and rows != 1 and self._uses_forward and validation_enabled():  # a check (Model checks
            # its first step; a training step draws without it) of the network's own rows
            unbatched = self._unbatched_conditions(x_dict)
            # the conditions' row counts: the network's rows must be one of them (a one-row condition beside a batch
            # conditions every row; a set of context rows may be pooled into each row of another condition)
            given = set()  # (a loop: dynamo broke the graph at a walrus in a comprehension, "Read uninitialized cell")
            for c in self._cond_var:
                v = x_dict.get(c) if c not in unbatched else None
                if isinstance(v, Tensor) and v.dim() > 0:
                    given.add(v.shape[0])
            own = self._param_rows(params)  # (``rows`` where it is not 1; one row is broadcast to the other values')
            # one row is taken where a condition has one row (a one-row condition beside another variable's batch:
            # those rows are not the network's), or as before where its conditions have the rows drawn; one row for 3
            # rows of its own condition beside another variable's 6 is a network that collapsed its rows
            if given and own not in given and rows not in given:  # a network that returned other rows than given
                raise self._rows_error(own, x_dict, None)
        lead = (n,) if n > 1 else ()
        if reparam and self._hooks["_rsample_kernel"] and self.has_reparam:
            if validation_enabled():  # the parameters' checks; the draw is the kernel's either way
                self._torch_dist(x_dict, params=params)
            shape = self._kernel_shape(params, rows)
            if shape is not None:
                z = self._rsample_kernel(torch.Size(lead) + shape if lead else shape, params)
                if z is not None:
                    return z
        dist = self._torch_dist(x_dict, params=params)
        batch = dist.batch_shape
        if rows is not None and rows != batch[0]:
            if batch[0] != 1:
                raise self._rows_error(batch[0], x_dict, rows)
            dist = dist.expand(torch.Size([rows]) + batch[1:])
        return dist.rsample(lead) if reparam and self.has_reparam else dist.sample(lead)

    def _rows_error(self, found: int, x_dict: Mapping[str, Any], batch_n: int | None) -> ValueError:
        """The error for parameters of ``found`` rows that do not fit ``batch_n`` or the conditioning values."""
        given = batch_size_of(x_dict, self._cond_var)
        inputs = f"the conditioning values ({', '.join(self._cond_var)}) have batch size {given}"
        if given == found:
            return ValueError(f"{self.prob_text}: batch_n={batch_n} but {inputs}")
        asked = f"batch_n={batch_n}" if batch_n is not None else inputs
        # conditions of one dimension are a batch of scalars (a time t of (B,)) or one vector without a batch
        # dimension, which the shape cannot tell apart: the check reads them as a batch, and says how to give a vector
        # (Pixyz draws it as it is; a probe of forward to tell them apart let networks pooling such a batch through)
        flat = [c for c in self._cond_var if isinstance(v := x_dict.get(c), Tensor) and v.dim() == 1]
        vector = (f" (if {', '.join(flat)} {'is one vector' if len(flat) == 1 else 'are vectors'} without a batch "
                  f"dimension, give {'it' if len(flat) == 1 else 'them'} one: "
                  f"{', '.join(c + '.unsqueeze(0)' for c in flat)}, or draw with validation off as Pixyz does)"
                  if flat and len(flat) == len(self._cond_var) else "")
        return ValueError(f"{self.prob_text}: the parameters have batch size {found} but {asked}"
                          + (f" ({inputs})" if batch_n is not None and given is not None else "")
                          + ("; forward must return one row of parameters per row of its inputs"
                             if given is not None else "") + vector)

    def _kernel_shape(self, params: dict[str, Any], rows: int | None) -> torch.Size | None:
        """The broadcast shape of the parameters with ``rows`` rows, if they are all tensors."""
        shape = None
        static = self._static
        for key, v in params.items():
            if static and key in static:
                continue
            if not isinstance(v, Tensor):
                return None
            if shape is None:
                shape = v.shape
            else:
                found = v.shape
                if found != shape:
                    shape = _broadcast(shape, found)
        if not shape:  # no tensor parameter, or a scalar one
            return None
        if rows is not None and rows != shape[0]:
            if shape[0] != 1:
                raise ValueError(f"{self.prob_text}: batch_n={rows} but the parameters have batch size {shape[0]}")
            shape = torch.Size([rows]) + shape[1:]
        return shape

    def _sample(self, x_dict: XDict, batch_n: int | None, reparam: bool) -> XDict:
        return {self._var[0]: self._draw(self._params(x_dict), x_dict, batch_n, 1, reparam)}

    def _sample_n(self, x_dict: XDict, repeated: XDict, n: int, batch_n: int | None, reparam: bool) -> XDict:
        """See `Distribution._sample_n`: the parameters once per row, ``n`` draws from them; the
        parameters repeated for the rows of ``repeated`` are remembered for this evaluation."""
        if n == 1:
            return self._sample(x_dict, batch_n, reparam)
        params = self._params(x_dict)
        z = self._draw(params, x_dict, batch_n, n, reparam)
        if self._from_inputs():
            remember(self, "params", [repeated.get(k) for k in self._cond_var],
                     {k: _repeat_rows(v, n) if k not in self._static else v for k, v in params.items()})
        return {self._var[0]: z.reshape(n * z.shape[1], *z.shape[2:])}

    def _mean_values(self, x_dict: XDict, batch_n: int | None) -> XDict:
        """See `Distribution._mean_values`."""
        dist = self._torch_dist(x_dict)
        rows = self._rows(self._params(x_dict), x_dict, batch_n)
        mean = self._moment(dist, "mean")
        if rows is not None and rows != mean.shape[0]:
            if mean.shape[0] != 1:  # the draw's error (torch's expand error named neither)
                raise self._rows_error(mean.shape[0], x_dict, rows)
            mean = mean.expand(rows, *mean.shape[1:])
        return {self._var[0]: mean}

    def _value(self, value: Any, features: torch.Size, params: dict[str, Any]) -> Tensor:
        """The scored value with its batch dimension (a value without one is a batch of one); integer
        and boolean values are converted to the parameters' floating dtype."""
        var = self._var[0]
        if not isinstance(value, Tensor):
            raise TypeError(f"{self.prob_text}: {var} must be a torch.Tensor, got {type(value).__name__}")
        given = value.shape
        if value.dim() == len(features):
            value = value.unsqueeze(0)
        n = len(features)
        if value.dim() < n + 1 or (n and value.shape[-n:] != features):
            raise ValueError(
                f"{self.prob_text}: {var} has shape {tuple(given)}, expected "
                f"(batch, {', '.join(map(str, features))}) — features {tuple(features)}, "
                f"given {tuple(value.shape[1:])}"
            )
        if not value.is_floating_point():
            like = next((v for v in params.values() if isinstance(v, Tensor) and v.is_floating_point()), None)
            value = value.to(like.dtype if like is not None else torch.get_default_dtype())
        return value

    def _check_rows(self, value: Tensor, rows: int, features: torch.Size) -> None:
        """The scored value's rows (its dimension before ``features``; those before it are draws) against the
        parameters' ``rows``: equal, or either one row (it broadcasts).

        Draws of one row against parameters that ``forward`` computed for more rows are refused: every draw would be
        scored against every row and those densities summed. A network returning ``(B,)`` (a regression head ending
        in ``.squeeze(-1)``) against data ``(B, 1)`` read the data as ``B`` draws of one row, each row's density then
        the sum over all ``B`` parameter rows: the right shape, numbers off by about a factor of ``B``, and every
        prediction trained towards the mean of all targets. Parameters read from a variable keep that reading
        (``x`` of ``(S, 1)`` against ``loc`` read from a ``z`` of ``(B,)``: each draw against every row, as a product
        scores it, tests/test_marginal_joint_draws.py)."""
        at = value.dim() - len(features) - 1
        got = value.shape[at]
        if rows not in (1, got) and got != 1:
            raise ValueError(f"{self.prob_text}: {self._var[0]} has batch size {got} but the parameters have "
                             f"batch size {rows}")
        if got == 1 and rows != 1 and at and self._uses_forward:
            shape = tuple(value.shape)
            if features or shape != (rows, 1):
                remedy = f"; to score each draw against every row, expand the draws to {(*shape[:at], rows, *features)}"
            elif self._features_shape == (1,):  # the data has the declared shape: forward's output does not
                remedy = (f"; forward() returned parameters of shape ({rows},), but {self.prob_text} declares "
                          f"features_shape=[1] (the data's ({rows}, 1)): keep the feature dimension in forward "
                          f"(parameters of shape ({rows}, 1), no .squeeze(-1))")
            else:
                remedy = (f"; parameters ({rows},) against data ({rows}, 1): give both the same feature shape "
                          f"(squeeze the data, {self._var[0]}.squeeze(-1), or keep the feature dimension in forward: "
                          "no .squeeze(-1))")
            raise ValueError(
                f"{self.prob_text}: {self._var[0]} of shape {shape} against parameters of shape "
                f"{(rows, *features)} from forward(): read as {shape[:at]} draws of one row each, every draw would be "
                f"scored against all {rows} rows and the densities summed{remedy}")

    def _check_support(self, value: Tensor, dist: D.Distribution) -> None:
        """The support check of scored values (while validation is on); families may extend it. An empty batch has
        nothing to check (torch fails to reshape it when checking an ``independent`` support: `MultivariateNormal`)."""
        if self.validate_value and value.numel() and not bool(dist.support.check(value).all()):
            nonfinite = first_nonfinite({self._var[0]: value}, "x_dict") if value.is_floating_point() else None
            if nonfinite is not None:
                raise ValueError(f"{self.prob_text}: {nonfinite} (not a number in the support ({dist.support}) of "
                                 f"{type(self).__name__}); remove or impute it")
            raise ValueError(f"{self.prob_text}: value of {self._var[0]} is outside the support "
                             f"({dist.support}) of {type(self).__name__}")

    def _log_prob(self, x_dict: XDict, sum_features: bool) -> Tensor:
        if sum_features and not torch.is_grad_enabled() and \
                type(self)._elementwise_log_prob is TorchDistribution._elementwise_log_prob:
            with shared_parameters():  # the parameters once, whichever path scores them
                summed = self._summed_in_blocks(x_dict)
                return summed if summed is not None else sum_rows(self._elementwise_log_prob(x_dict))
        lp = self._elementwise_log_prob(x_dict)
        return sum_rows(lp) if sum_features else lp

    def _summed_in_blocks(self, x_dict: XDict) -> Tensor | None:
        """Without gradients, the per-row log-density of many rows from the family's kernel, applied to
        blocks of rows and summed block by block, so that the kernel's elementwise temporaries (a
        clamped copy of ``probs``, the per-entry log-densities) stay at ``BLOCK_ELEMENTS`` entries
        instead of the whole batch (an IWAE estimate with k = 500 draws of 100 images scores 50,000
        rows of 784 pixels: 157 MB per temporary). The same kernel and the same sums as
        `_elementwise_log_prob`, used only where a family does not override that (FactorizedBernoulli
        masks its entries); a batch that fits one block is scored at once (that path's kernel call, with the
        parameters and shape found here); None where that path applies unchanged (validation on, no kernel,
        a compiled trace, values broadcast along the rows)."""
        if not self._hooks["_log_prob_kernel"] or validation_enabled():
            return None
        params = self._scoring_params(x_dict)[0]
        shape = self._kernel_shape(params, None)
        if shape is None:
            return None
        if shape.numel() <= BLOCK_ELEMENTS or shape[0] < 2:  # one block: the elementwise path, its work not redone
            lp = self._kernel_log_prob(x_dict, params, shape)
            return None if lp is None else sum_rows(lp)
        if torch.compiler.is_compiling():
            return None
        value = self._value(x_dict[self._var[0]], shape[1:], params)
        rows = shape[0]
        if value.dim() != len(shape) or value.shape[0] != rows:
            return None
        step = max(1, BLOCK_ELEMENTS // max(1, shape.numel() // rows))
        source = value.source if type(value) is RepeatedRows and value._copy is None else None
        if source is not None:  # blocks of whole copies of the source rows, scored against one tiled block
            b = source.shape[0]
            step = max(b, step // b * b)
            tiled = repeat_batch(source, step // b)
        parts = []
        for start in range(0, rows, step):
            block = {k: v[start:start + step] if k not in self._static and isinstance(v, Tensor)
                     and v.dim() > 0 and v.shape[0] == rows else v for k, v in params.items()}
            lp = self._log_prob_kernel(value[start:start + step] if source is None else
                                       tiled[:min(step, rows - start)], block)
            if lp is None:
                return None
            parts.append(sum_rows(lp))
        return torch.cat(parts)

    def _log_prob_dims(self, x_dict: XDict, dims: Sequence[int]) -> Tensor:
        """See `Distribution._log_prob_dims`."""
        return sum_rows(self._elementwise_log_prob(x_dict), dims)

    def _scoring_params(self, x_dict: Mapping[str, Any]) -> tuple[dict[str, Any], torch.dtype | None]:
        """The parameters that score the value of ``var`` in ``x_dict``: `_params`', with the constants given as Python
        numbers taken exactly in the value's floating dtype where it is the wider one (float64 data against a float32
        prior: ``0.1``, not float32's 0.10000000149, as numbers follow a conditioning value's dtype,
        `_compute_params`), where the distribution holds them as given (no ``forward`` or ``get_params`` of a subclass
        could have replaced them); and that dtype where they were converted (else None). Parameters computed by a
        network or given as tensors keep their dtype (their float32 values gain no precision in float64, and scoring
        in float64 cost a float32 decoder 1.6-1.9x its time)."""
        params = self._params(x_dict)
        # (`_holds_numbers_as_given`, inline: every score; the usual case, a network, returns here)
        numbers = self._numbers or self._number_lists
        if not numbers or self._uses_forward or self._custom_get_params:
            return params, None
        value = x_dict.get(self._var[0])
        if not isinstance(value, Tensor):
            return params, None
        dtype = value.dtype
        for key in numbers:  # the first number's dtype, the value's in the usual case (a plain loop: every score)
            v = params.get(key)
            if isinstance(v, Tensor):
                if v.dtype == dtype or not dtype.is_floating_point:
                    return params, None
                break
        exact = self._with_exact_numbers(params, dtype)
        return (params, None) if exact is params else (exact, dtype)

    def _holds_numbers_as_given(self) -> bool:
        """Whether some constants were given as Python numbers (or lists of numbers) and the parameters hold them as
        given: no ``forward`` or ``get_params`` of a subclass could have replaced them (`_scoring_params`,
        `_numbers_exact_in`)."""
        return bool(self._numbers or self._number_lists) and not self._uses_forward and not self._custom_get_params

    def _numbers_exact_in(self, params: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
        """``params`` with the constants given as Python numbers exact in ``dtype`` where it is the wider one
        (`_with_exact_numbers`) and the distribution holds them as given (`_holds_numbers_as_given`); else ``params``
        itself. For a closed-form KL (`kl_to`): a prior given as numbers meets the other side's float64 parameters
        with the exact numbers, as its log-density meets a float64 value (`_scoring_params`)."""
        if not self._holds_numbers_as_given() or not dtype.is_floating_point:
            return params
        return self._with_exact_numbers(params, dtype)

    def _with_exact_numbers(self, params: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
        """``params`` with each constant given as a Python number (or a list of numbers), held in a narrower dtype than
        ``dtype``, replaced by the exact numbers in ``dtype`` (``params`` itself where the buffers no longer hold the
        numbers given: `_holds_numbers`). The tensors are made once per dtype and device and kept while the buffers
        are unchanged (`_buffers_stamp`), as `_constant_dist` keeps its distribution (not inside
        ``torch.inference_mode``, whose tensors autograd refuses to save, nor while compiling, nor for buffers of a
        ``torch.func`` transform: `_holds_numbers` says no to them)."""
        wanted = [(key, v) for key in (*self._numbers, *self._number_lists)
                  if isinstance(v := params.get(key), Tensor) and v.dtype != dtype
                  and torch.promote_types(v.dtype, dtype) == dtype]
        if not wanted:
            return params
        keep = not torch.compiler.is_compiling() and not torch.is_inference_mode_enabled()  # (order: `_torch_dist`)
        cache = self.__dict__.setdefault("_exact_cache", {})
        slot = (dtype, wanted[0][1].device)
        hit = cache.get(slot) if keep else None
        if hit is None or not self._buffers_unchanged(hit[0]) \
                or any(key not in hit[1] or hit[1][key].shape != v.shape for key, v in wanted):
            if not self._holds_numbers():
                return params
            hit = (self._buffers_stamp(), {key: self._number_tensor(key, v.shape, dtype, v.device)
                                           for key, v in wanted})
            if keep:
                cache[slot] = hit
        out = dict(params)
        out.update(hit[1])
        return out

    def _kernel_log_prob(self, x_dict: XDict, params: dict[str, Any], shape: torch.Size) -> Tensor | None:
        """The family's kernel on the checked value, per feature entry, for parameters of broadcast ``shape``
        (`_kernel_shape`); None where the family's kernel declines."""
        value = x_dict[self._var[0]]
        if type(value) is not Tensor or value.shape != shape or not value.is_floating_point():
            # anything but a floating value of the parameters' very shape (the usual case, which passes both
            # checks) is checked, and converted or given its batch dimension
            value = self._value(value, shape[1:], params)
            self._check_rows(value, shape[0], shape[1:])
        return self._log_prob_kernel(value, params)

    def _elementwise_log_prob(self, x_dict: XDict) -> Tensor:
        """The log-density per feature entry (the event dimensions of the family reduced)."""
        params, dtype = self._scoring_params(x_dict)
        checking = validation_enabled()
        checked = None
        if checking:  # the checks (parameters, the value's shape, rows and support); they change no number below
            checked = self._dist_and_value(x_dict, params, dtype)
            self._check_support(checked[1], checked[0])
        shape = self._kernel_shape(params, None) if self._hooks["_log_prob_kernel"] else None
        if shape is not None:
            lp = self._kernel_log_prob(x_dict, params, shape)
            if lp is not None:
                return lp
        dist, value = checked if checked is not None else self._dist_and_value(x_dict, params, dtype)
        if not value.numel():  # an empty batch: torch's TransformedDistribution (Concrete) fails reshaping it
            return value.new_zeros(value.shape[:value.dim() - len(dist.event_shape)])
        dist._validate_args = False  # checked above, with a message naming the variable
        return dist.log_prob(value)

    def _dist_and_value(self, x_dict: XDict, params: dict[str, Any], dtype: torch.dtype | None = None
                        ) -> tuple[D.Distribution, Tensor]:
        """The torch distribution (its parameters checked while validation is on) and the scored value, given its
        batch dimension and converted, its rows checked against the parameters'. ``dtype``: ``params`` are
        `_scoring_params`' for a value of that dtype, their Python-number constants exact in it (a distribution of
        their own, kept per dtype for a constant one, `_constant_dist`)."""
        dist = self._torch_dist(x_dict, independent=False, params=params) if dtype is None else \
            self._torch_dist(x_dict, independent=False, params=params, dtype=dtype)  # (a subclass's takes no dtype)
        features = dist.batch_shape[1:] + dist.event_shape
        value = self._value(x_dict[self._var[0]], features, params)
        self._check_rows(value, dist.batch_shape[0], features)
        return dist, value

    def get_entropy(self, x_dict: Mapping[str, Any] | None = None, sum_features: bool = True,
                    feature_dims: Sequence[int] | None = None) -> Tensor:
        """See `Distribution.get_entropy`."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "get_entropy", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        try:
            entropy = self._torch_dist(x_dict, independent=False).entropy()
        except NotImplementedError as err:  # torch's bare NotImplementedError('') (Poisson, VonMises)
            raise NotImplementedError(f"{self.prob_text} ({self.distribution_name}) has no closed-form entropy; the "
                                      "Entropy loss estimates it by Monte Carlo") from err
        return sum_rows(entropy, feature_dims) if sum_features else entropy

    def sample_mean(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        """See `Distribution.sample_mean`."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_mean", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        return self._moment(self._torch_dist(x_dict), "mean")

    def sample_variance(self, x_dict: Mapping[str, Any] | None = None) -> Tensor:
        """See `Distribution.sample_variance`."""
        if type(x_dict) is not dict:  # (a bare tensor was torch's "Boolean value of Tensor ... is ambiguous")
            x_dict = values_dict(x_dict, "sample_variance", self, self.input_var)
        x_dict = dict(x_dict or {})
        self._require(x_dict, self._cond_var)
        return self._moment(self._torch_dist(x_dict), "variance")

    def _moment(self, dist: D.Distribution, name: str) -> Tensor:
        """``dist.mean`` or ``dist.variance``; torch's bare NotImplementedError('') (BinaryConcrete, Concrete: a
        TransformedDistribution) named, as `get_entropy` names a missing entropy."""
        try:
            return getattr(dist, name)
        except NotImplementedError as err:
            raise NotImplementedError(f"{self.prob_text} ({self.distribution_name}) has no closed-form {name}"
                                      f"{self.moments_hint}") from err


def _floating_like(values: Any) -> tuple[torch.dtype, torch.device] | None:
    """The widest dtype (torch's promotion) among the floating tensors in ``values`` and the first one's device; None
    without one."""
    dtype = device = None
    for v in values:
        if isinstance(v, Tensor) and v.is_floating_point():
            if dtype is None:
                dtype, device = v.dtype, v.device
            elif v.dtype != dtype:
                dtype = torch.promote_types(dtype, v.dtype)
    return None if dtype is None else (dtype, device)


def _all_numbers(value: list[Any] | tuple[Any, ...]) -> bool:
    """Whether ``value`` is a list or tuple (nested) of Python numbers only (``int`` / ``float``, no ``bool``, as a
    constant given as one number: `TorchDistribution._set_param`)."""
    return all((isinstance(v, (int, float)) and not isinstance(v, bool))
               or (isinstance(v, (list, tuple)) and _all_numbers(v)) for v in value)


def _without_entries(params: Mapping[str, Any]) -> bool:
    """Whether a tensor among ``params`` has no entries (an empty batch: nothing for torch's checks, which fail)."""
    return any(isinstance(v, Tensor) and v.numel() == 0 for v in params.values())


def _empty_kl(shape: torch.Size, *param_sets: Mapping[str, Any]) -> Tensor:
    """The KL of a pair of batch ``shape`` without entries: zeros of that shape in the parameters' dtype, attached to
    their graph as a computed KL is (a loss summed over it still backpropagates, zero gradients)."""
    values = [v for params in param_sets for v in params.values() if isinstance(v, Tensor) and v.is_floating_point()]
    like = _floating_like(values)
    if like is None:
        return torch.zeros(shape)
    kl = torch.zeros(shape, dtype=like[0], device=like[1])
    for v in values:
        if v.requires_grad:
            kl = kl + v.sum()
    return kl


def _broadcast(a: torch.Size, b: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes(a, b)`` for two shapes, dimension by dimension (right-aligned, as torch does): about
    0.5 µs a call on a CPU against about 10 µs for torch's general function, which every log-density and draw of
    parameters of different shapes calls (a constant's single row against the batch, a noise level per row
    against the features). Shapes that do not broadcast get torch's own error. The pairs seen are remembered (a
    step meets the same few pairs every time). The usual pairs are told first, by comparing the shapes alone: a
    parameter with one row against the batch's rows, or with the features only (a trailing part of the other)."""
    n, m = len(a), len(b)
    if n == m:
        if a[1:] == b[1:] and n:
            if b[0] == 1:
                return a
            if a[0] == 1:
                return b
    elif n > m:
        if a[n - m:] == b:
            return a
    elif b[m - n:] == a:
        return b
    if torch.compiler.is_compiling():  # a traced lookup would specialise the graph on the shapes (dynamic batches)
        return _broadcast_shapes(a, b)
    found = _BROADCASTS.get((a, b))
    if found is not None:
        return found
    found = _broadcast_shapes(a, b)
    if len(_BROADCASTS) < 1024:  # a bounded table: shapes that change every call (growing sequences) stop adding
        _BROADCASTS[a, b] = found
    return found


_BROADCASTS: dict[tuple[torch.Size, torch.Size], torch.Size] = {}


def _broadcast_shapes(a: torch.Size, b: torch.Size) -> torch.Size:
    """`_broadcast`'s computation."""
    if len(a) != len(b):
        pad = (1,) * abs(len(a) - len(b))
        a, b = (pad + tuple(a), tuple(b)) if len(a) < len(b) else (tuple(a), pad + tuple(b))
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return torch.broadcast_shapes(torch.Size(a), torch.Size(b))
    return torch.Size(out)


def _per_element(cls: type[D.Distribution], key: str) -> bool:
    """Whether ``key`` is an elementwise parameter of ``cls`` (a number then fills ``features_shape``)."""
    constraint = cls.arg_constraints.get(key)
    return constraint is not None and getattr(constraint, "event_dim", 0) == 0


def _broadcasts(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


_SIGNATURES: dict[int, tuple[weakref.ref, tuple[list[str], list[str]]]] = {}  # `_per_class` notes of `_signature`


@torch.compiler.assume_constant_result  # (see `_plain_class`)
def _signature(cls: type[D.Distribution]) -> tuple[list[str], list[str]]:
    """The parameters ``cls.__init__`` requires, and those that default to ``None`` (alternatives)."""
    return _per_class(_SIGNATURES, cls, _read_signature)


def _read_signature(cls: type[D.Distribution]) -> tuple[list[str], list[str]]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    required = [p.name for p in params if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    optional = [p.name for p in params if p.default is None and p.name != "validate_args"]
    return required, optional


def _repeat_rows(value: Any, n: int) -> Any:
    """A parameter repeated for ``n`` draws per row (sample-major); one row is left to broadcast."""
    if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] == 1:
        return value
    return value.unsqueeze(0).expand(n, *value.shape).reshape(n * value.shape[0], *value.shape[1:])
