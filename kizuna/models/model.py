"""`Model`: an optimiser over the distributions of a loss: one step per call, or `fit` over epochs.

.. code-block:: python

    model = Model(loss, distributions=[p, q], optimizer=torch.optim.Adam,
                  optimizer_params={"lr": 1e-3})
    model.train({"x": x})   # one gradient step, returns the loss (a detached 0-d tensor; Pixyz's keeps its graph)
    model.test({"x": x})    # the loss without gradients
    history = model.fit({"x": x_train}, epochs=10, valid={"x": x_valid}, checkpoint="run.pt")

`Model.step` is the one training step: ``train`` and `fit` call it, and a subclass changes training
by overriding it (`kizuna.models.GAN` takes its discriminator's steps there). `fit` (in
`kizuna.models.fit`) is the one epoch loop, for one process or data-parallel under ``torchrun``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import numbers
import operator
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
from torch import nn

from kizuna._data import first_nonfinite, warn_user
from kizuna._io import make_folder
from kizuna.distributions.base import data_dtype_references
from kizuna.distributions.torch_dist import validation
from kizuna.formula.expr import Loss, _term_mean, values_dict
from kizuna.formula.memo import module_registrations
from kizuna.models import checkpoint as ckpt
from kizuna.models import distributed as ddp
from kizuna.models.batches import prepare
from kizuna.models.checkpoint import History

_Out = TypeVar("_Out")


class NonFiniteStep(FloatingPointError):
    """A step whose loss or gradient is not finite (the step was not taken).

    Attributes:
        what: what went non-finite (``"the loss is nan"``, ``"the gradient of q(z|x).net.0.weight is ..."``).
        detail: the non-finite input (a variable, row and column) or terms.
        outcome: what holds after it (``"the step was not taken: ..."``, ``"the parameters are unchanged"``); `fit`
            says what holds after its epoch instead.
    """

    def __init__(self, what: str, detail: str, outcome: str = "") -> None:
        super().__init__("; ".join(part for part in (what, detail, outcome) if part))
        self.what, self.detail, self.outcome = what, detail, outcome


class StepResult(NamedTuple):
    """What one step reports: the loss and each named term of the formula, as floats."""

    loss: float
    terms: dict[str, float]


NOT_TAKEN = "the step was not taken: the parameters are those after the last finite step"

# optimisers with torch's fused kernel (the update of every parameter in one call), and the options that
# choose an implementation: given any of them, the user's choice stands
_FUSABLE = (torch.optim.Adam, torch.optim.AdamW)
_IMPLEMENTATION_OPTIONS = ("fused", "foreach", "differentiable", "capturable")


def build_optimizer(optimizer: type[torch.optim.Optimizer], params: Sequence[nn.Parameter],
                    options: Mapping[str, Any] | None) -> torch.optim.Optimizer:
    """``optimizer(params, **options)``, with torch's fused kernel for Adam and AdamW.

    torch runs Adam's update as a Python loop over the parameters (eight operators each) unless asked
    for its fused kernel, which computes the same update in one call and differs only by rounding
    (about 1e-6 relative after 200 float32 steps). On a CPU the fused update made the VAE steps of
    ``bench/vae_step.py`` 15-19% faster. It is used when the class is exactly ``Adam`` or ``AdamW``, the
    options choose no implementation, and every parameter is a floating tensor on a device with the
    kernel; otherwise, or if torch refuses it, the optimiser is built as given.
    """
    options = dict(options or {})
    if not callable(optimizer):  # (an optimiser already built, or a name: "'Adam' object is not callable")
        built = isinstance(optimizer, torch.optim.Optimizer)
        name = type(optimizer).__name__ if built else str(optimizer)
        cls = next((c for c in dir(torch.optim) if c.lower() == name.lower()
                    and isinstance(getattr(torch.optim, c), type)), "Adam")
        lr = optimizer.defaults.get("lr", 1e-3) if built else 1e-3
        got = f"an optimizer already built ({name})" if built else f"{optimizer!r} ({type(optimizer).__name__})"
        raise TypeError(f"Model: optimizer must be an optimizer class, e.g. optimizer=torch.optim.{cls}, with its "
                        f"options in optimizer_params (e.g. optimizer_params={{'lr': {lr}}}): the Model builds it over "
                        f"its distributions' parameters; got {got}")
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.LBFGS):  # it raised a TypeError at step()
        raise ValueError("Model: torch.optim.LBFGS re-evaluates the loss through a closure at every step, which a "
                         "Model's step does not pass; use a first-order optimiser (Adam, SGD, ...)")
    if optimizer in _FUSABLE and not any(k in options for k in _IMPLEMENTATION_OPTIONS) and _fusable(params):
        try:
            return optimizer(params, fused=True, **options)
        except (RuntimeError, ValueError, TypeError):  # e.g. a dtype or device the kernel does not take
            pass
    return optimizer(params, **options)


def _fusable(params: Sequence[nn.Parameter]) -> bool:
    """Whether torch's fused kernel takes every parameter that can be trained: floating, on a device with the kernel.
    An integer or bool parameter (a frozen index table or mask kept as an ``nn.Parameter``) can never require grad,
    so the kernel never reaches it (it skips a parameter without a gradient): it does not count."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    return all(p.is_floating_point() and p.device.type in devices for p in params
               if p.is_floating_point() or p.is_complex())


def build_scheduler(scheduler: type | None, optimizer: torch.optim.Optimizer,
                    options: Mapping[str, Any] | None) -> Any:
    """``scheduler(optimizer, **options)``: a learning-rate scheduler over the model's optimizer, or None.

    Raises:
        TypeError: ``scheduler`` is not a class (e.g. a scheduler already built), or it cannot be built from
            ``options``, or what it builds has no ``step``, ``state_dict`` and ``load_state_dict``.
        ValueError: ``options`` without a scheduler.
    """
    if scheduler is None:
        if options:
            raise ValueError(f"Model: scheduler_params {options!r} were given without a scheduler; pass the "
                             "class too, e.g. scheduler=torch.optim.lr_scheduler.StepLR")
        return None
    if not isinstance(scheduler, type):
        raise TypeError(f"Model: scheduler must be a learning-rate scheduler class, e.g. "
                        f"torch.optim.lr_scheduler.StepLR, with its arguments in scheduler_params (the Model builds it "
                        f"over its own optimizer), got {scheduler!r}")
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"Model: scheduler_params must be a dict of {scheduler.__name__}'s keyword arguments, got "
                        f"{options!r}")
    options = dict(options or {})
    try:
        built = scheduler(optimizer, **options)
    except TypeError as err:  # (a missing or unknown argument: torch names it, not the Model's option)
        raise TypeError(f"Model: {scheduler.__name__}(optimizer, **scheduler_params) with scheduler_params "
                        f"{options!r} failed: {err}") from None
    missing = [name for name in ("step", "state_dict", "load_state_dict") if not callable(getattr(built, name, None))]
    if missing:
        raise TypeError(f"Model: scheduler {scheduler.__name__} has no {', '.join(missing)}; fit steps it after every "
                        "epoch and checkpoints its state_dict: give a torch.optim.lr_scheduler class")
    return built


_STEPPING = threading.local()


def _stepping() -> set[int]:
    """The ids of the models whose own (overridden) `step` runs in this thread (`_marking`)."""
    inside = getattr(_STEPPING, "ids", None)
    if inside is None:
        inside = _STEPPING.ids = set()
    return inside


@contextmanager
def _marking(model: Any) -> Iterator[None]:
    """``model`` marked in `_stepping` for the block: a `Model.train` called inside takes the base step (left marked
    afterwards if it was marked already, by a step further out; cleared on an exception too)."""
    inside = _stepping()
    first = id(model) not in inside
    inside.add(id(model))
    try:
        yield
    finally:
        if first:
            inside.discard(id(model))


def _mark_step(cls: type) -> None:
    """``cls``'s `step`, where it is a plain function other than `Model.step`, wrapped so that the model is marked while
    it runs (`_marking`): a step calling `Model.train` gets the base step there however the step was called (by
    `train`, `fit` or directly). Called when a `Model` class is made and when a model is built. A step written in the
    body of a `Model` class (``cls`` or a base) or assigned to one later is wrapped in the class that holds it; one a
    mixin that is no `Model` holds is wrapped into ``cls`` (the mixin may serve other classes), that copy found again at
    every model built (a copy kept for good left the class on the old step after the mixin's was assigned again or
    deleted; so did one of a base's step). The wrapper passes every argument on (``*args, **kwargs``: a step's own
    signature is kept, which ``inspect.signature`` reads through ``__wrapped__``). Other kinds of step (a
    ``staticmethod``, a ``classmethod``, a ``functools.partial``, a callable object) are left as they are: `train` and
    `fit` mark the model around their call of any step."""
    if getattr(cls.__dict__.get("step"), "_copied_step", False):
        del cls.step  # type: ignore[attr-defined]  # (a mixin's step wrapped here at an earlier build: found again)
    owner = next((k for k in cls.__mro__ if "step" in k.__dict__
                  and not getattr(k.__dict__["step"], "_copied_step", False)), None)
    if owner is None or owner is Model:
        return
    own = owner.__dict__["step"]
    if not isinstance(own, types.FunctionType) or getattr(own, "_marks_stepping", False):
        return

    @functools.wraps(own)
    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _marking(self):
            return own(self, *args, **kwargs)

    step._marks_stepping = True  # type: ignore[attr-defined]
    if issubclass(owner, Model):
        owner.step = step  # type: ignore[attr-defined]
    else:
        step._copied_step = True  # type: ignore[attr-defined]
        cls.step = step  # type: ignore[attr-defined]


def _inside_own_step(model: Any, step: Any) -> bool:
    """Whether a call of the plain function ``step`` (or the function a ``functools.wraps`` decorator wraps) on
    ``model`` (``model`` its first argument) is running in this thread, below the caller of the caller (read only for
    a step `_mark_step` has not wrapped: one assigned to the class after the model was built). Not found, so such a
    step called directly runs its body a second time (the model still takes one optimisation step): a decorator
    without ``functools.wraps``, a ``partialmethod`` or other callable, a step that rebinds its first argument. (A
    step that calls ``train`` from another thread recurses without end: the marks are per thread.)"""
    try:
        step = inspect.unwrap(step)  # (a step under a decorator made with functools.wraps: the function inside)
    except ValueError:  # a cycle of ``__wrapped__``
        return False
    code = getattr(step, "__code__", None)
    if code is None or not code.co_argcount:
        return False
    first = code.co_varnames[0]
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is code and frame.f_locals.get(first) is model:
            return True
        frame = frame.f_back
    return False


class Model:
    """Trains the parameters of ``distributions`` to minimise ``loss``.

    The parameters up to ``retain_graph`` are Pixyz's, in Pixyz's order (``retain_graph`` is the eighth positional
    argument, as there); ``compile``, ``validate``, ``scheduler`` and ``scheduler_params`` are keyword-only.

    Args:
        loss: the training loss (must evaluate to a scalar, e.g. ``(...).mean()``).
        test_loss: the loss ``test`` reports (default: ``loss``).
        distributions: the modules whose parameters are optimised (default: every
            distribution the loss refers to). The optimizer holds all their parameters, frozen ones
            (``requires_grad`` False) too, as Pixyz's: torch's optimisers leave a parameter without a gradient
            as it is (weight decay included), and one unfrozen later trains from then on. Each step puts them
            in training mode (a submodule put in eval mode, e.g. a frozen batch norm, is switched back: see
            docs/training.md).
        optimizer: a ``torch.optim.Optimizer`` class. ``Adam`` and ``AdamW`` given no choice of
            implementation (none of ``fused``, ``foreach``, ``differentiable``, ``capturable``) use
            torch's fused kernel where every parameter allows it (`build_optimizer`).
        optimizer_params: its keyword arguments.
        clip_grad_norm, clip_grad_value: optional gradient clipping: a positive bound, or ``None`` (or ``False``,
            Pixyz's default) for none.
        compile: evaluate the loss (forward and backward) under ``torch.compile``: ``True``, or a dict
            of its keyword arguments (e.g. ``{"mode": "max-autotune"}``). Where compilation is
            unavailable (no C compiler, unsupported platform), or a compiled step fails where the eager one does
            not, a warning (at your line) names the compiler's error and training continues uncompiled, the failed
            step taken again eagerly from the state before it; where dynamo stops compiling without an error (its
            ``recompile_limit`` of graphs reached), a warning says so and
            ``compile_error`` is set too. Each model compiles a function of its own, so its graphs are its own
            (many compiled models in one process each compile) and freed with it. A name, mode, backend or
            inductor option ``torch.compile`` does not take (or any argument it refuses) is an error here.
            Checked steps run eagerly: the first step under ``validate=None``, and every step under
            ``validate=True`` (which therefore never compiles).
        validate: check parameters and values (torch's ``validate_args``) on every step (``True``),
            never (``False``), or, by default (``None``), on the first evaluation of each loss only:
            wrong shapes, supports and parameters show up at once with a message naming them, and
            later steps cost nothing extra; a non-finite loss or gradient is caught on every step.
        retain_graph: keep the autograd graph after each step's ``backward`` (Pixyz's option, passed to
            ``backward``): needed where a value given to ``train`` carries a graph that a later step goes
            through again (e.g. a network's output computed once outside the loss).
        scheduler: a learning-rate scheduler class (``torch.optim.lr_scheduler.StepLR``, ``ReduceLROnPlateau``,
            ...), built over the optimizer as ``scheduler(optimizer, **scheduler_params)`` and kept as
            ``model.scheduler``. `fit` steps it once after every epoch (``ReduceLROnPlateau`` with the epoch's
            validation loss, or its training loss without validation data; a submodel's, e.g. a GAN's
            ``d_model.scheduler``, with its own loss, the term `submodel_terms` names); its state is in `state_dict` and
            checkpoints, so a resumed run continues the learning-rate sequence exactly. ``train`` does not step it:
            a loop of your own calls ``model.scheduler.step()``.
        scheduler_params: its keyword arguments (e.g. ``{"step_size": 10, "gamma": 0.5}``).

    >>> import torch
    >>> from torch import nn
    >>> from kizuna.distributions import Normal
    >>> from kizuna.losses import LogProb
    >>> p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=1.0)
    >>> model = Model(-LogProb(p).mean(), optimizer_params={"lr": 0.1})
    >>> history = model.fit({"x": torch.full((20, 1), 3.0)}, epochs=100, batch_size=10, quiet=True, seed=0)
    >>> len(history["train"]), round(p.loc.item(), 2), round(history["log p(x)"][-1], 4)
    (100, 3.0, -0.9189)
    """

    extra_terms: tuple[str, ...] = ()  # names a subclass's step adds to the terms (e.g. GAN's "d_loss")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's step (a plain function: its own, a base's or a mixin's) is marked while it runs (`_mark_step`):
        a `train` called inside it takes the base step, whether the step was called by `train`, by `fit` or
        directly. A step assigned to the class after it was made is marked from the next model built
        (`Model.__init__`); `train` and `fit` mark the model around their call of any step."""
        super().__init_subclass__(**kwargs)
        _mark_step(cls)

    def __init__(
        self,
        loss: Loss,
        test_loss: Loss | None = None,
        distributions: Sequence[nn.Module] | None = None,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_params: Mapping[str, Any] | None = None,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        retain_graph: bool = False,
        *,
        compile: bool | Mapping[str, Any] = False,
        validate: bool | None = None,
        scheduler: type | None = None,
        scheduler_params: Mapping[str, Any] | None = None,
    ) -> None:
        if type(self) is not Model:  # a step assigned to the class after it was made (`__init_subclass__`)
            _mark_step(type(self))
        if not isinstance(loss, Loss):
            raise TypeError(f"Model needs a kizuna Loss, got {type(loss).__name__}")
        if test_loss is not None and not isinstance(test_loss, Loss):
            raise TypeError(f"Model: test_loss must be a kizuna Loss, got {type(test_loss).__name__}")
        self.loss_cls = loss
        self.test_loss_cls = test_loss if test_loss is not None else loss
        dists = list(distributions) if distributions is not None else loss.distributions()
        self.distributions = nn.ModuleList(dists)
        # every parameter, frozen ones (requires_grad False) too, as Pixyz's Model: torch's optimisers skip a parameter
        # whose gradient is None (weight decay and momentum included), so a frozen one is left as it is, and one
        # unfrozen later (a backbone fine-tuned after its head) trains (it was left out for good, silently)
        params = list(self.distributions.parameters())
        if not params:
            raise ValueError("Model: the distributions have no trainable parameters (none holds an nn.Parameter)")
        self.optimizer = build_optimizer(optimizer, params, optimizer_params)
        bounds = {"clip_grad_norm": clip_grad_norm, "clip_grad_value": clip_grad_value}
        for name, bound in bounds.items():
            if bound is False:  # Pixyz's default, "no clipping" (its presets pass it; it was refused)
                bounds[name] = None
            # NaN made every weight NaN behind a finite loss, and <= 0 reversed or stopped the steps: named here
            elif bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real)
                                        or not bound > 0):
                raise ValueError(f"Model: {name} must be a positive number or None, got {bound!r} (None or False: "
                                 "no clipping)")
        self.clip_grad_norm = bounds["clip_grad_norm"]
        self.clip_grad_value = bounds["clip_grad_value"]
        self.scheduler = build_scheduler(scheduler, self.optimizer, scheduler_params)
        self.validate = validate
        self.retain_graph = bool(retain_graph)
        self._params = params
        self._held = self._held_parameters()
        # the data's device (`device`), and their dtype where no distribution holds a floating tensor: the first
        # trainable parameter's, as before frozen parameters joined the optimizer (a frozen int64 index table or float64
        # constant listed first converted every batch to its dtype); the first floating one where none is trainable yet
        self._reference = _reference_parameter(params)
        # the data's dtype (`dtype`): the uses' rule (`data_dtype_references`) over the trained distributions and
        # the loss's (a frozen encoder left out of them still reads the data), their trainable parameters first; one
        # parameter per factor and dtype is kept, so that a later ``.double()`` of a part is followed
        self._dtype_refs = data_dtype_references(self.loss_cls.input_var, [*dists, *loss.distributions()],
                                                 trainable_first=True) or [self._reference]
        self._training: bool | None = None
        self._validated: set[int] = set()  # losses evaluated once with validation (validate=None)
        self._compile_args = _compile_args(compile)
        self._compiled: dict[int, Any] = {}
        self.compile_error: str | None = None
        self.epoch = 0  # epochs completed by fit (restored by load)
        self.history = History()
        self._shuffle: torch.Generator | None = None  # fit's shuffling stream (saved in checkpoints)
        self._rng: torch.Tensor | None = None  # fit's own torch random stream (saved in checkpoints)
        self._cuda_rng: torch.Tensor | None = None  # and the CUDA device's, on a GPU (saved too)
        self._best: dict[str, Any] | None = None  # best validation epoch, value and parameters
        # load_state_dict ran since the last fit: the next fit continues the restored early stopping (a resumed run)
        self._resumed = False
        self.parallel: Any = None  # the DistributedDataParallel wrapper while fit runs data-parallel
        # in a data-parallel step: this rank's rows over the global batch's, times the world size, so
        # that DDP's average of the ranks' gradients is the gradient of the global batch's mean loss
        self.row_weight = 1.0

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A model pickled before stop 44 has no ``_reference`` (its optimiser held the trainable parameters only):
        the first trainable parameter of its list, as it took the data's dtype and device then."""
        self.__dict__.update(state)
        if "_reference" not in state:
            params = state.get("_params") or [p for group in self.optimizer.param_groups for p in group["params"]]
            self._reference = _reference_parameter(params)
        if "_dtype_refs" not in state:  # (pickled before stop 46: the first trainable parameter's, as then)
            self._dtype_refs = [self._reference]

    @property
    def loss(self) -> Loss:
        """The training loss (Pixyz calls it ``loss_cls``)."""
        return self.loss_cls

    @property
    def device(self) -> torch.device:
        """The device the data are moved to: the first trainable parameter's (when the model was built)."""
        return self._reference.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype floating data are converted to, by the uses' rule
        (`kizuna.distributions.base.data_dtype_references`, as `kizuna.metrics.likelihood._dtype`): the widest of the
        dtypes of the distributions that take the data as a condition (a network's input: an encoder :math:`q(z|x)`),
        or, where none does, of those that score them (a decoder :math:`p(x|z)`), or, where none reads them, of all of
        them; factors are looked for among the trained distributions, inside a trained module that is not a
        distribution (a `LadderVAE`) and in the training loss (a frozen encoder left out of ``distributions``). A prior
        that never sees the data does not decide (a float32 learned prior listed before float64 networks fed them
        float32 data), nor does a module that holds no distribution (a learned loss coefficient); a bfloat16 encoder
        beside a float32 decoder gets bfloat16 data (the decoder widens them to score them).

        Trainable parameters first, the one difference from the uses: where a reader has a trainable floating
        parameter, frozen parameters do not decide (a frozen float64 constant kept as an ``nn.Parameter``, or a frozen
        float64 factor that only scores the data beside trained float32 networks, leaves the training in float32);
        where no reader has one (a frozen pretrained encoder), all their parameters decide, else their floating
        buffers (a parameter-free float64 decoder). The uses count every parameter alike: they evaluate a model whose
        parameters are all fixed, whether it was frozen for it or not. The tensors that count are chosen when the model
        is built; a later ``.to(dtype)`` of the networks is followed (not of a reader that holds buffers only: torch
        replaces them; the networks' parameters that widen such readers are followed)."""
        refs = self._dtype_refs
        dtype = refs[0].dtype
        for ref in refs[1:]:
            if ref.dtype is not dtype:
                dtype = torch.promote_types(dtype, ref.dtype)
        return dtype

    def __str__(self) -> str:
        # (a trained module that is not a distribution, e.g. a LadderVAE, has no prob_text: its class name)
        names = ", ".join(str(getattr(d, "prob_text", type(d).__name__)) for d in self.distributions)
        return f"Distributions (for training): {names}\nLoss function: {self.loss_cls}\nOptimizer: {self.optimizer}"

    # ------------------------------------------------------------------ steps
    def train(self, x_dict: Mapping[str, Any] | None = None, **options: Any) -> torch.Tensor:
        """One optimisation step on ``x_dict``; returns the loss before the step (detached, 0-d). A subclass that
        overrides `step` (and not `train`) is trained by its own step here too, as by `fit`; its `StepResult`'s loss
        is returned. A step that calls `train` gets the base step there, whether the step was called by `train`,
        by `fit` or directly (a step assigned to the class after this model was built, called directly, is found by
        its frame on the stack: `_inside_own_step` says which kinds are not).

        ``options`` go to the loss's evaluation (e.g. ``batch_n``), as in Pixyz. ``train_x_dict=`` (Pixyz's name of
        ``x_dict``) is taken as ``x_dict``.
        """
        if "train_x_dict" in options:
            x_dict = self._pixyz_data(x_dict, options, "train")
        # a subclass's own training step, which `fit` takes too (a class that overrides `train` as well, the GAN, calls
        # this one for its own part of the step)
        step = type(self).step
        if step is not Model.step and type(self).train is Model.train and id(self) not in _stepping():
            if not getattr(step, "_marks_stepping", False) and _inside_own_step(self, step):
                # a step assigned to the class after the model was built, called directly and calling `train`: the
                # base step (it ran the step's body again, once, before `train` got the base step inside it)
                return self._optimise(self._prepare(x_dict, "train"), options, terms=False)[0]
            with _marking(self):  # (any step: one not marked by `_mark_step` calling `train` gets the base step)
                loss = self.step({} if x_dict is None else x_dict, **options).loss
            if isinstance(loss, torch.Tensor):
                return loss.detach()
            return torch.tensor(loss, dtype=self.dtype, device=self.device)  # a float: in the model's dtype, as before
        return self._optimise(self._prepare(x_dict, "train"), options, terms=False)[0]

    def test(self, x_dict: Mapping[str, Any] | None = None, **options: Any) -> torch.Tensor:
        """The test loss on ``x_dict`` without gradients (detached, 0-d), with every network it runs in eval mode: the
        trained distributions are left in eval mode (as Pixyz's; the next step switches them back), every other
        module of the test loss (a frozen decoder, a fixed prior's network) gets its own mode back afterwards.
        ``test_x_dict=`` (Pixyz's name of ``x_dict``) is taken as ``x_dict``."""
        if "test_x_dict" in options:
            x_dict = self._pixyz_data(x_dict, options, "test")
        return self._assess(self._prepare(x_dict, "test"), options, terms=False)[0]

    def _pixyz_data(self, x_dict: Any, options: dict[str, Any], fn: str) -> Any:
        """The data given as ``{fn}_x_dict=`` (Pixyz's name of ``x_dict`` in ``Model.train`` / ``test``), taken out of
        ``options`` (it was passed to the loss as an option and ignored: "needs x, but was given nothing")."""
        data = options.pop(f"{fn}_x_dict")
        if x_dict is not None:
            raise TypeError(f"{type(self).__name__}.{fn} got both x_dict and {fn}_x_dict (Pixyz's name of x_dict): "
                            "give the data once")
        return data

    def step(self, batch: Mapping[str, Any], **options: Any) -> StepResult:
        """One optimisation step, reporting the loss and every named term from the same evaluation.

        This is the training step of `train` and `fit`: override it to change how a model trains
        (e.g. several optimisers), keeping its signature and its `StepResult`.

        Raises:
            FloatingPointError: the loss or a gradient is not finite; the step is not taken and the
                message names the non-finite terms (or parameters) and any non-finite input.
        """
        _, value, terms = self._optimise(self._prepare(batch, "step"), options, terms=True)
        return StepResult(value, terms)

    def evaluate(self, batch: Mapping[str, Any], **options: Any) -> StepResult:
        """The test loss and its terms without gradients (the validation step of `fit`)."""
        _, value, terms = self._assess(self._prepare(batch, "evaluate"), options, terms=True)
        return StepResult(value, terms)

    def _prepare(self, x_dict: Mapping[str, Any] | None, fn: str) -> dict[str, Any]:
        """The data of ``fn`` (``"train"``, ...) checked (`_values`), converted and moved (`prepare`)."""
        return prepare(self._values(x_dict, fn), self.dtype, self.device)

    def _values(self, x_dict: Any, fn: str) -> Mapping[str, Any]:
        """``x_dict`` checked to be a dict of the variables' values (``{}`` for None): a bare tensor or array was
        torch's "Boolean value of Tensor ... is ambiguous" (numpy's); the error names ``fn`` and the loss's
        variables."""
        if type(x_dict) is dict:
            return x_dict
        return values_dict(x_dict, f"{type(self).__name__}.{fn}", names=self.loss_cls.input_var)

    def _updated_in_forward(self) -> list[torch.Tensor]:
        """The tensors a training-mode forward pass writes (batch-norm running statistics and ``num_batches_tracked``,
        ActNorm's data-dependent start), in the trained distributions and in every other module the loss runs (a GAN
        discriminator's step draws from the generator, whose batch norm counts the draw): kept aside each step and put
        back when the step is not taken (see `_kept_forward`)."""
        return self._forward_writers()[0]

    def _forward_writers(self) -> tuple[list[torch.Tensor], list[nn.Module]]:
        """`_updated_in_forward`'s tensors, and the ActNorm layers among their modules. The modules are found once,
        and again after a module was registered anywhere (`module_registrations`: a batch-norm layer replaced after
        the first step); their tensors are read from them at each call: a conversion of the networks (``.double()``,
        ``.to(device)``) replaces every buffer, and the tensors found at the first step were the dead ones (a refused
        step put the statistics back into them and left the bad batch's in the live layers). The list of tensors is
        not kept across steps: ``_apply`` (every conversion, ``to_empty``) and ``torch.func.functional_call`` write
        the ``_buffers``/``_parameters`` dicts directly, with no hook to say so, and checking a kept list against
        the dicts costs as much as reading it again (about a microsecond for four ActNorm layers); a step reads it
        once."""
        count = module_registrations()
        found = self.__dict__.get("_forward_state")
        if found is None or found[0] != count:
            from kizuna.flows.normalization import ActNorm, _BatchNorm

            kinds = (nn.modules.batchnorm._NormBase, _BatchNorm, ActNorm)
            modules = [m for m in {id(m): m for m in (*self.distributions.modules(), *self.loss_cls.modules())
                                   }.values() if isinstance(m, kinds)]
            found = self.__dict__["_forward_state"] = (count, [d for m in modules for d in (m._buffers, m._parameters)],
                                                       [m for m in modules if isinstance(m, ActNorm)])
        return [t for d in found[1] for t in d.values() if t is not None], found[2]

    def _kept_forward(self, writers: tuple[list[torch.Tensor], list[nn.Module]] | None = None
                      ) -> Callable[[], None]:
        """What a training-mode forward writes (`_updated_in_forward`; ``writers``: `_forward_writers` read just now,
        by a caller that needed them too) kept as it is now; the function returned puts it back. An ActNorm's Python
        mirror of its ``initialized`` flag is cleared with it (the layer reads the flag again at its next pass): left
        True by the refused pass that had initialised the layer, the layer never initialised from the data after the
        flag and the parameters were put back."""
        state, actnorms = self._forward_writers() if writers is None else writers
        grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)  # (copies without a graph: cheaper than a detach per tensor)
        try:
            kept = [t.clone() for t in state]
        finally:
            torch.set_grad_enabled(grad)

        def restore() -> None:
            with torch.no_grad():
                for t, v in zip(state, kept):
                    t.copy_(v)
            for layer in actnorms:
                layer._known_initialized = False

        return restore

    def _held_parameters(self) -> tuple[list[dict[str, Any]], list[str], list[nn.Parameter], list[str]]:
        """Where each trained distribution holds the optimizer's parameters now: the ``_parameters`` dicts, the names
        in them, the parameters, and each one's name for an error (the distribution and the path in it), for
        `_check_held`."""
        trained = {id(p) for p in self._trained_parameters()}
        held: tuple[list[Any], list[str], list[nn.Parameter], list[str]] = ([], [], [], [])
        for dist in self.distributions:
            label = str(getattr(dist, "prob_text", type(dist).__name__))
            for path, module in dist.named_modules():
                if type(module._parameters) is not dict:  # (a ScriptModule's wrapper: functional_call cannot reach it)
                    continue
                for name, p in module._parameters.items():
                    if p is not None and id(p) in trained:
                        for kept, value in zip(held, (module._parameters, name, p,
                                                      f"{path + '.' if path else ''}{name} of {label}")):
                            kept.append(value)
        return held

    def _check_held(self) -> None:
        """Raise if a trained distribution holds a plain tensor where it held the optimizer's parameter: a
        ``torch.func.functional_call`` over a module that reaches the distribution by several paths (every kizuna
        loss does) leaves the tensors it was given in their place (pytorch/pytorch#164759), and the steps went on
        without changing the distribution, silently. One identity check per parameter (a parameter replaced by
        another ``nn.Parameter``, or moved by ``torch.nn.utils.parametrize``, is the user's change: left out of
        the check from then on)."""
        held = self.__dict__.get("_held")
        if held is None:  # (a model pickled before the check)
            held = self.__dict__["_held"] = self._held_parameters()
        dicts, names, params, labels = held
        if all(map(operator.is_, map(dict.get, dicts, names), params)):
            return
        now = list(map(dict.get, dicts, names))
        bad = [f"{label} (a {type(t).__name__}{' with requires_grad=False' if not t.requires_grad else ''})"
               for t, p, label in zip(now, params, labels)
               if t is not p and isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter)]
        if bad:
            raise RuntimeError(
                f"Model: the trained distributions hold plain tensors where the optimizer's parameters were: "
                f"{'; '.join(bad[:4])}{f' and {len(bad) - 4} more' if len(bad) > 4 else ''}. The steps would no "
                "longer change them. A torch.func.functional_call over a kizuna loss leaves the tensors it was given "
                "in place of the parameters of a distribution the loss holds at several module paths "
                "(pytorch/pytorch#164759): call functional_call on a module that holds each distribution once "
                "(docs/training.md, 'torch.func'), or put the parameters back (setattr(module, name, parameter), with "
                "the optimizer's parameter)")
        self.__dict__["_held"] = tuple([v for v, t, p in zip(kept, now, params) if t is p] for kept in held)

    def _optimise(self, batch: dict[str, Any], options: Mapping[str, Any], terms: bool
                  ) -> tuple[torch.Tensor, float, dict[str, float]]:
        self._check_held()
        writers = self._forward_writers()  # (`_updated_in_forward`, and the ActNorm layers: read once a step)
        compiled = self._compiles(self.loss_cls)
        if not writers[0] and not compiled:
            return self._step_once(batch, options, terms)
        restore = self._kept_forward(writers)
        rng = _rng_states(self.device) if compiled else None
        try:
            return self._step_once(batch, options, terms)
        except Exception as err:
            if isinstance(err, FloatingPointError) or not compiled or self.compile_error is not None:
                # the step was not taken (a non-finite loss or gradient; or, eager, the model's own error, e.g. batch
                # normalisation refusing a batch of one row, raised after the layer had counted it): what the forward
                # wrote as before it, like the parameters
                restore()
                raise
            # the compiled step failed: its forward (`_CompiledRunFailed`: after a graph break the earlier graphs had
            # run, and moved their batch-norm statistics, before a later one failed to compile) or its backward
            # (AOTAutograd compiles it lazily, at the first backward). The step again, eagerly, from the same state
            self.optimizer.zero_grad(set_to_none=True)
            return self._eagerly(err, rng, restore, lambda: self._step_once(batch, options, terms))

    def _eagerly(self, err: BaseException, rng: tuple[torch.Tensor, torch.Tensor | None], restore: Callable[[], None],
                 once: Callable[[], _Out]) -> _Out:
        """``once()``, the step or evaluation whose compiled run raised ``err``, again eagerly from the state before
        that run: what its forward wrote put back (``restore``, from `_kept_forward`; a partial compiled run counted
        the batch in the batch-norm statistics a second time), the random state ``rng`` (the draws of the eager
        step). Then the compiler's failure is reported and the model continues eagerly (`_compile_failed`). An
        error the eager run raises too (not finite, or the model's own) is raised, with the state put back again."""
        restore()
        _set_rng_states(self.device, rng)
        self._force_eager = True
        try:
            out = once()
        except Exception:
            restore()
            raise
        finally:
            self._force_eager = False
        self._compile_failed(err)
        return out

    def _compiles(self, loss_cls: Loss) -> bool:
        """Whether the next evaluation of ``loss_cls`` runs compiled (see `_evaluator`)."""
        if self._compile_args is None or self.compile_error is not None or self.__dict__.get("_force_eager") \
                or (self.parallel is not None and loss_cls is self.loss_cls):  # (`_evaluator`: data-parallel)
            return False
        checked = self.validate if self.validate is not None else id(loss_cls) not in self._validated
        return not checked

    def _compile_failed(self, err: BaseException) -> None:
        """Compilation failed where eager evaluation succeeds: say why once (the compiler's own error,
        `_compiler_error`), at the user's line (`warn_user`: a fixed stacklevel pointed into kizuna), and continue
        eagerly."""
        err = _compiler_error(err)
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        self.compile_error = f"{type(err).__name__}: {text[:300]}"
        warn_user(f"Model(compile=True): torch.compile is unavailable here ({self.compile_error}); "
                  "training continues without compilation", RuntimeWarning)

    def _compile_stopped(self, reason: str) -> None:
        """dynamo stopped compiling the loss's evaluation without an error (``reason``: its recompile limit reached)
        and ran it eagerly: say so once, at the user's line, and continue eagerly, rather than
        train uncompiled with ``compile_error`` None."""
        self.compile_error = f"torch.compile gave up: {reason[:300]}"
        warn_user(f"Model(compile=True): {self.compile_error}; training continues without compilation (a model "
                  "that needs more than torch._dynamo.config.recompile_limit graphs can raise that limit)",
                  RuntimeWarning)

    def _step_once(self, batch: dict[str, Any], options: Mapping[str, Any], terms: bool
                   ) -> tuple[torch.Tensor, float, dict[str, float]]:
        self._set_mode(True)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss, value, found = self._evaluate(self.loss_cls, batch, options, terms)
        except NonFiniteStep:
            raise
        except FloatingPointError as err:  # a distribution's parameters went non-finite: name the data first
            raise self._nonfinite(str(err), batch, {}) from None
        finite = math.isfinite(value)
        if not finite and self.parallel is None:
            raise self._nonfinite(f"the loss is {value}", batch, found)
        if not loss.requires_grad:  # (torch's "element 0 of tensors does not require grad")
            raise ValueError(f"Model: the loss {self.loss_cls} does not depend on any trainable parameter of the "
                             "distributions it trains (none of theirs reaches it, or they are frozen: requires_grad "
                             "False); pass the distributions whose parameters the loss reads")
        weight = self.row_weight if finite else math.nan  # data-parallel: nan tells every rank
        (loss if weight == 1.0 else loss * weight).backward(retain_graph=self.retain_graph)
        if self.parallel is not None:  # DDP averaged the distributions' gradients; the other trained parameters' too
            # (a learned loss coefficient stepped with each rank's own gradient: the ranks drifted apart, silently)
            loss_parameters = self._loss_parameters()
            if loss_parameters:
                ddp.average_gradients_(loss_parameters)
        if finite and all(p.grad is None for p in self._params):  # the first parameter with a gradient ends the scan
            # the loss depends on parameters, but on none of those this model trains (a GAN loss whose generator
            # term draws no sample from the generator): the step would change nothing, silently
            raise ValueError(f"Model: the loss {self.loss_cls} passes no gradient to any parameter of the "
                             "distributions it trains; the step would change nothing")
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            raise self._nonfinite(f"the loss is {value}", batch, found)
        self._check_gradients(value, found, batch)
        self.optimizer.step()
        return loss.detach(), value, found

    def _assess(self, batch: dict[str, Any], options: Mapping[str, Any], terms: bool
                ) -> tuple[torch.Tensor, float, dict[str, float]]:
        if not self._compiles(self.test_loss_cls):
            return self._assess_once(batch, options, terms)
        restore, rng = self._kept_forward(), _rng_states(self.device)
        try:
            return self._assess_once(batch, options, terms)
        except _CompiledRunFailed as err:  # the evaluation again, eagerly, from the same state, as a step's
            return self._eagerly(err, rng, restore, lambda: self._assess_once(batch, options, terms))

    def _assess_once(self, batch: dict[str, Any], options: Mapping[str, Any], terms: bool
                     ) -> tuple[torch.Tensor, float, dict[str, float]]:
        self._set_mode(False)
        # the test loss's other modules (a frozen decoder the loss reads, not trained here) in eval mode for the pass
        # too, each given its own mode back after it: left in training mode, they ran their dropout and moved their
        # batch-norm statistics with the test (validation) data
        others = self._untrained_modules(self.test_loss_cls)
        modes = list(map(_TRAINING, others))
        if True in modes:
            for module in others:
                module.training = False
        try:
            with torch.no_grad():
                loss, value, found = self._evaluate(self.test_loss_cls, batch, options, terms)
        except NonFiniteStep:
            raise
        except FloatingPointError as err:
            raise self._nonfinite(str(err), batch, {}, step=False) from None
        finally:
            if True in modes:
                for module, training in zip(others, modes):
                    module.training = training
        if not math.isfinite(value):
            raise self._nonfinite(f"the test loss is {value}", batch, found, step=False)
        return loss.detach(), value, found

    def _evaluate(self, loss_cls: Loss, batch: dict[str, Any], options: Mapping[str, Any], terms: bool
                  ) -> tuple[torch.Tensor, float, dict[str, float]]:
        """The loss tensor, its value and (with ``terms``) the term means, from one evaluation."""
        check = self.validate if self.validate is not None else id(loss_cls) not in self._validated
        with validation(check):
            out = self._evaluator(loss_cls, check)(batch, return_terms=terms, **options)
        self._validated.add(id(loss_cls))
        loss, found = out if terms else (out, {})
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"the loss {loss_cls} evaluates to shape {shape}; reduce it, e.g. with .mean()")
        if not found:
            return loss, loss.item(), {}
        with torch.no_grad():  # one device-to-host copy for the loss and every term
            values = torch.stack([loss.detach(), *(_term_mean(v).to(loss.dtype) for v in found.values())]).tolist()
        return loss, values[0], dict(zip(found, values[1:]))

    def _evaluator(self, loss_cls: Loss, checked: bool) -> Any:
        """What evaluates ``loss_cls``: its data-parallel wrapper in a distributed fit's training steps (eagerly
        ``loss_cls.eval`` in its evaluations without gradients, the validation pass), its compiled ``eval`` with
        ``compile=``, else ``loss_cls.eval`` (steps under validation run eagerly)."""
        if self.parallel is not None and loss_cls is self.loss_cls:
            # validation needs none of DDP's hooks, and its forward broadcasts the buffers (batch-norm statistics) on
            # the first evaluation after a step: a collective that a rank with no validation rows never joined, so
            # every rank hung until the process group's timeout (`fit` made the buffers equal after the training pass)
            return self.parallel if torch.is_grad_enabled() else loss_cls.eval
        if self._compile_args is None or checked or self.compile_error is not None or self.__dict__.get("_force_eager"):
            return loss_cls.eval
        fn = self._compiled.get(id(loss_cls))
        if fn is None:
            fn = self._compiled[id(loss_cls)] = _compiled_eval(self, loss_cls)
        return fn

    def _trained_parameters(self) -> list[torch.Tensor]:
        """Every parameter the optimizer trains, in its order: the distributions' and any the user gave it
        (``optimizer.add_param_group``, e.g. a learned loss coefficient), which are clipped and checked too."""
        groups = self.optimizer.param_groups
        key = [(id(group["params"]), len(group["params"])) for group in groups]
        cached = self.__dict__.get("_trained")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_trained"] = (key, [p for group in groups for p in group["params"]])
        return cached[1]

    def _loss_parameters(self) -> list[torch.Tensor]:
        """The parameters the optimizer trains beyond the distributions' (a learned loss coefficient)."""
        own = {id(p) for p in self.distributions.parameters()}
        return [p for p in self._trained_parameters() if id(p) not in own]

    def _loss_state(self) -> dict[str, torch.Tensor]:
        """The state the losses hold outside the distributions, by ``state_dict`` key (``loss.`` / ``test_loss.``
        and the key in that loss), the live tensors: a sampler's replay buffer (`kizuna.samplers.SGLD` in
        `ContrastiveDivergence`), a learned coefficient (an ``nn.Parameter`` in the formula) and any other module
        of a loss that is not a distribution. Distributions are left out: the trained ones are in
        ``distributions``, others (a fixed prior, a GAN's other player) are not this model's state, unless this
        model's optimizer trains their parameters."""
        from kizuna.distributions.base import Distribution

        trained = {id(p) for p in self._trained_parameters()}
        seen = {id(t) for t in self.distributions.state_dict(keep_vars=True).values()}
        out: dict[str, torch.Tensor] = {}
        for name, loss in (("loss", self.loss_cls), ("test_loss", self.test_loss_cls)):
            skip = {id(t) for m in loss.modules() if isinstance(m, Distribution)
                    for t in (*m.parameters(), *m.buffers())} - trained
            for key, t in loss.state_dict(keep_vars=True).items():
                if isinstance(t, torch.Tensor) and id(t) not in seen and id(t) not in skip:
                    seen.add(id(t))
                    out[f"{name}.{key}"] = t
        return out

    def _check_gradients(self, value: float, terms: Mapping[str, float], batch: Mapping[str, Any]) -> None:
        params = self._trained_parameters()
        if self.clip_grad_norm is not None:  # (a non-finite norm leaves the gradients unscaled: the bad ones are named)
            finite = bool(_clip_grad_norm(params, self.clip_grad_norm, keep_if_nonfinite=True)[1])
        else:
            finite = _all_finite([p.grad for p in params if p.grad is not None])
        if not finite:
            named = [*ckpt.named_parameters(self.distributions), *self._loss_state().items()]
            bad = [name for name, p in named if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
            if not bad:  # a parameter given to the optimizer that neither the distributions nor the losses hold
                bad = [f"the optimizer's parameter {i} (shape {tuple(p.shape)})" for i, p in enumerate(params)
                       if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
            self.optimizer.zero_grad(set_to_none=True)
            note = f"the loss {value:.6g} is finite" + (
                "" if self.parallel is None else " on this rank: another rank's loss or gradient was not")
            what = (f"the gradient of {', '.join(bad)} is non-finite" if bad else
                    f"the gradients' total norm (clip_grad_norm={self.clip_grad_norm:g}) is not finite although every "
                    "gradient is: their 2-norm overflows the parameters' dtype")
            raise self._nonfinite(what, batch, terms, note)
        if self.clip_grad_value is not None:
            nn.utils.clip_grad_value_(params, self.clip_grad_value)

    def _nonfinite(self, what: str, batch: Mapping[str, Any], terms: Mapping[str, float],
                   note: str = "", step: bool = True) -> NonFiniteStep:
        """The error of a non-finite step: the bad input first (a variable, row and column), else
        the terms that went non-finite."""
        data = first_nonfinite(batch, "the data")
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        if data is not None:
            detail = data
        elif bad:
            detail = "non-finite terms: " + "; ".join(f"{k} = {v}" for k, v in bad.items())
        elif terms:
            detail = "every term is finite (" + "; ".join(f"{k} = {v:.6g}" for k, v in terms.items()) + ")"
        else:
            detail = "the loss has no separate terms"
        if note:
            detail = f"{note}; {detail}"
        if not step:  # an evaluation (test, validation): nothing was to be taken
            return NonFiniteStep(what, detail, "the parameters are unchanged")
        return NonFiniteStep(what, detail, NOT_TAKEN)

    def _untrained_modules(self, loss: Loss) -> list[nn.Module]:
        """Every module ``loss`` holds that is not one of the trained distributions' (nor inside one), flat: what
        `_assess` puts in eval mode for the pass and back in its own mode after it (kept per loss, and found again
        where `_set_mode` finds the trained modules again). The loss's own nodes (`Loss`: ``KullbackLeibler``,
        ``.mean()``, ...) are left out, not the modules they hold: no loss node reads its ``training`` flag, and
        setting it on each of them, twice per evaluation, made ``test`` about 29% slower on a small VAE."""
        kept = self.__dict__.setdefault("_untrained", {})
        found = kept.get(id(loss))
        if found is None:
            trained = {id(m) for m in self.distributions.modules()}
            found = kept[id(loss)] = [m for m in loss.modules() if id(m) not in trained and not isinstance(m, Loss)]
        return found

    def _set_mode(self, training: bool) -> None:
        # switching walks every submodule: done when a module is in the other mode (train() and test() alternate, or
        # the user switched a network, e.g. p.eval() to sample between epochs), checked on a flat list of the modules.
        # Only the trained distributions: the loss's other modules keep the mode their owner gave them (`_assess`
        # switches them for its pass only)
        flat = self.__dict__.get("_flat_modules")
        if flat is None or self._training is None:
            flat = self.__dict__["_flat_modules"] = list(self.distributions.modules())
            self.__dict__.pop("_untrained", None)
        if self._training is not training or (not training) in map(_TRAINING, flat):  # a C-level scan
            self.distributions.train(training)
            self._training = training

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        data: Mapping[str, Any] | Iterable[Mapping[str, Any]],
        epochs: int = 1,
        batch_size: int = 128,
        valid: Mapping[str, Any] | Iterable[Mapping[str, Any]] | None = None,
        shuffle: bool = True,
        quiet: bool | None = None,
        patience: int | None = None,
        checkpoint: str | PathLike[str] | None = None,
        seed: int | None = None,
        distributed: bool | None = None,
        drop_last: bool = False,
    ) -> History:
        """Train for ``epochs`` more epochs; returns the (cumulative) `History`.

        See `kizuna.models.fit.fit` for the arguments; every epoch takes one `step` per mini-batch, and `scheduler`
        (when given) steps once after it.
        """
        from kizuna.models.fit import fit  # the loop builds on Model

        return fit(self, data, epochs=epochs, batch_size=batch_size, valid=valid, shuffle=shuffle, quiet=quiet,
                   patience=patience, checkpoint=checkpoint, seed=seed, distributed=distributed, drop_last=drop_last)

    def seed_streams(self, seed: int) -> None:
        """Start fit's random stream and shuffling generator from ``seed`` now, at any epoch (``fit(seed=...)`` does
        this only when a run starts, ``epoch == 0``): code that trains a model in several calls of `fit` and owns
        the randomness of each (a graph module seeded by its graph's generator) restarts them before each call."""
        check_seed(seed, "seed_streams")
        self._rng = torch.Generator().manual_seed(seed).get_state()
        self._cuda_rng = None  # a GPU's stream is seeded from this one when the run starts
        self._shuffle = torch.Generator().manual_seed((seed + 1) % 2**64)  # the same as seed + 1 below 2**64 - 1

    def submodels(self) -> list[Model]:
        """Further models this one's `step` trains (a GAN's discriminator); a data-parallel `fit` wraps
        each of them too."""
        return []

    def submodel_terms(self) -> list[str]:
        """The term of this model's `step` and `evaluate` results that is each submodel's own loss, in the order of
        `submodels` (a GAN's discriminator: ``"d_loss"``). `fit` steps a submodel's ``ReduceLROnPlateau`` with that
        term's epoch mean (its validation mean with ``valid``), as it steps this model's with this model's loss; a
        model whose submodel has one and that names no term here cannot be fitted (`fit` says so before training)."""
        return []

    def early_stop(self, epoch: int, valid_loss: float, patience: int | None) -> bool:
        """Track the best validation epoch; with ``patience`` run out, restore it and say stop.

        `fit` forgets the best epoch when a call starts (each call's early stopping is its own, measured on its
        validation data), except in the first call after `load_state_dict`, which continues the restored one."""
        models = [self, *self.submodels()]
        if self._best is None or valid_loss < self._best["value"]:
            def snapshot(model: Model) -> dict[str, Any]:
                return {k: v.detach().clone() for k, v in model.distributions.state_dict().items()}

            # the submodels' (a GAN's discriminator) too, and the parameters each optimizer trains beyond the
            # distributions (a learned loss coefficient): the best epoch is restored as a whole
            self._best = {"epoch": epoch, "value": valid_loss, "state": snapshot(self),
                          "submodels": [snapshot(m) for m in self.submodels()],
                          "loss_parameters": [[p.detach().clone() for p in m._loss_parameters()] for m in models]}
        self.history.best_epoch = self._best["epoch"]
        if patience is None or epoch - self._best["epoch"] < patience:
            return False
        self.distributions.load_state_dict(self._best["state"])
        for model, state in zip(self.submodels(), self._best.get("submodels", [])):
            model.distributions.load_state_dict(state)
        with torch.no_grad():
            for model, kept in zip(models, self._best.get("loss_parameters", [])):
                for p, v in zip(model._loss_parameters(), kept):
                    p.copy_(v)
        self.history.stopped_epoch = epoch
        return True

    # ------------------------------------------------------------ checkpoints
    def save(self, path: str | PathLike[str]) -> None:
        """Write `state_dict` as a checkpoint file (see `kizuna.models.checkpoint`).

        The file is written next to ``path``, fsynced and renamed over it, and carries a checksum, so
        an interruption never leaves a half-written checkpoint and a damaged file is an error. A missing
        folder of ``path`` is created (with its parents), as `kizuna.modules.save_module` does. In a
        data-parallel run every rank holds the same state: save from rank 0 only
        (``if kizuna.models.distributed.is_main(): model.save(path)``), as ``fit`` does.
        """
        models = [self, *self.submodels()]
        for model in models:  # `state_dict` gives the live tensors here: they are written at once, and copies of a
            model.__dict__["_live_state"] = True  # large model (on a GPU, in its memory) only added to the save's peak
        try:
            state = self.state_dict()
        finally:
            for model in models:
                model.__dict__.pop("_live_state", None)
        ckpt.save(path, state)

    def load(self, path: str | PathLike[str]) -> None:
        """Restore a checkpoint written by `save` into a Model built the same way (see `load_state_dict`).

        A file written by Pixyz's ``Model.save`` (``torch.save({"distributions": state_dict})``, the weights only)
        loads too: its weights are loaded into `distributions` (strictly, through the layers' readers of Pixyz's
        layouts), with a warning that nothing else is restored: the optimizer state, the epoch and the history stay
        as they are (Pixyz's ``Model.load`` restores the weights only as well).

        Raises:
            ValueError: the file is damaged or not a kizuna checkpoint, or its weights do not fit (the weights are
                then left as they were), or see `load_state_dict`.
        """
        weights = ckpt.pixyz_model_weights(path)
        if weights is None:
            self.load_state_dict(ckpt.load(path), source=str(path))
            return
        kept = {k: v.detach().clone() for k, v in self.distributions.state_dict().items()}
        try:
            self.distributions.load_state_dict(weights)
        except RuntimeError as err:  # (a strict load that fails has copied the entries that fit: put back)
            self.distributions.load_state_dict(kept)
            raise ValueError(f"{path} (a Pixyz Model.save file) does not fit these distributions: {err}") from err
        warnings.warn(f"{path} is a Pixyz Model.save file: its weights were loaded; the optimizer state, epoch and "
                      "history are not in it and were not restored", UserWarning, stacklevel=2)

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the next step: parameters, optimizer, learning-rate scheduler, the state the losses
        hold outside the distributions (a sampler's replay buffer, a learned coefficient: `_loss_state`), epoch,
        history, best validation epoch, and fit's shuffling generator and random stream.

        A snapshot: its tensors are copies (torch's ``state_dict`` holds the live ones, which later steps change), so
        that `load_state_dict` of it gives back the whole model as it was, weights and optimizer state included.
        Subclasses with more state (e.g. a second optimizer) extend this and `load_state_dict`.
        """
        snapshot = copy.deepcopy if not self.__dict__.get("_live_state") else lambda value: value  # (`save`: live)
        return {
            "distributions": snapshot(self.distributions.state_dict()),
            "optimizer": snapshot(self.optimizer.state_dict()),
            "optimizer_class": ckpt.class_name(self.optimizer),
            "scheduler": None if self.scheduler is None else snapshot(self.scheduler.state_dict()),
            "scheduler_class": None if self.scheduler is None else ckpt.class_name(self.scheduler),
            "loss": {k: snapshot(v.detach()) for k, v in self._loss_state().items()},
            "epoch": self.epoch,
            "history": self.history.to_dict(),
            "best": snapshot(self._best),
            "shuffle": None if self._shuffle is None else self._shuffle.get_state(),
            "rng": self._rng,
            "cuda_rng": self._cuda_rng,
            # the losses already evaluated once under validation (validate=None): a resumed run does not check its
            # first step again, which ran eagerly where the uninterrupted run was compiled (other random numbers)
            "validated": [name for name, loss in (("train", self.loss_cls), ("test", self.test_loss_cls))
                          if id(loss) in self._validated],
        }

    def load_state_dict(self, state: Mapping[str, Any], source: str = "the checkpoint") -> None:
        """Restore `state_dict`, so that `fit` continues exactly as if it had not been interrupted (the next `fit`
        call continues its early stopping too). ``state`` is copied, never kept: later steps leave it as it was.
        A state without the losses' state (``"loss"``, from before it was saved) leaves theirs as it is; one saved
        without a scheduler leaves this model's ``scheduler`` as built (it schedules from the loaded epoch on).

        Raises:
            ValueError: its parameters do not fit these distributions or the losses' state (the message lists
                missing / unexpected names and shape mismatches), or it was trained with another optimizer class, or
                with a learning-rate scheduler this model does not have (or of another class).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"{source}: a model state is a dict (Model.state_dict()), got {type(state).__name__}")
        missing = [k for k in ("distributions", "optimizer", "optimizer_class", "epoch", "history", "best", "shuffle")
                   if k not in state]
        if missing:  # (checked before anything is changed: a missing "history" raised a KeyError after the weights
            # and the optimiser were loaded, leaving the model half loaded)
            raise ValueError(f"{source} is not a whole model state: it lacks {', '.join(map(repr, missing))} "
                             "(give what Model.state_dict() returns)")
        ckpt.check_parameters(self.distributions, state["distributions"], source)
        held, saved_held = self._loss_state(), state.get("loss")
        if saved_held is not None:
            if not isinstance(saved_held, Mapping):
                raise ValueError(f"{source}: the losses' state ('loss') is a dict of tensors, got "
                                 f"{type(saved_held).__name__}")
            ckpt.check_state(held, saved_held, source)
        if state["optimizer_class"] != ckpt.class_name(self.optimizer):
            raise ValueError(f"{source} was trained with {state['optimizer_class']}, "
                             f"this model uses {ckpt.class_name(self.optimizer)}")
        saved_scheduler = state.get("scheduler")  # (None: saved without a scheduler, or before schedulers were saved)
        if saved_scheduler is not None:
            own = None if self.scheduler is None else ckpt.class_name(self.scheduler)
            if state.get("scheduler_class") != own:
                raise ValueError(f"{source} was trained with the learning-rate scheduler "
                                 f"{state.get('scheduler_class')}, "
                                 + ("this model has none (build it with scheduler=...)" if own is None
                                    else f"this model uses {own}"))
            if not isinstance(saved_scheduler, Mapping):
                raise ValueError(f"{source}: the scheduler's state ('scheduler') is a dict, got "
                                 f"{type(saved_scheduler).__name__}")
        try:  # everything else read first, so that a bad entry leaves the model as it was
            # (a copy: the history's lists were the state's own, which later epochs changed)
            epoch, history = int(state["epoch"]), History.from_dict(copy.deepcopy(state["history"]))
            shuffle = None
            if state["shuffle"] is not None:
                shuffle = torch.Generator()
                shuffle.set_state(state["shuffle"])
        except (TypeError, ValueError, KeyError, RuntimeError) as err:
            raise ValueError(f"{source}: its epoch, history or shuffling state cannot be read ({err})") from None
        weights = {k: v.clone() for k, v in self.distributions.state_dict().items()}
        optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        kept_dtypes = {id(p): p.dtype for p in self._trained_parameters()}
        saved_dtypes = {id(p): state["distributions"][name].dtype for name, p in self.distributions.named_parameters()
                        if isinstance(state["distributions"].get(name), torch.Tensor)}
        saved_dtypes.update((id(t), saved_held[key].dtype) for key, t in held.items() if saved_held is not None)
        scheduler_state = None if self.scheduler is None else copy.deepcopy(self.scheduler.state_dict())
        try:
            self.distributions.load_state_dict(state["distributions"])
            self._load_optimizer(state["optimizer"], saved_dtypes)
        except (ValueError, RuntimeError, KeyError) as err:  # leave the model as it was, not half loaded
            self.distributions.load_state_dict(weights)
            self._load_optimizer(optimizer_state, kept_dtypes)
            raise ValueError(f"{source} does not fit this model's optimiser (e.g. another set of trainable "
                             f"parameters): {err}") from None
        if saved_scheduler is not None:
            try:
                self.scheduler.load_state_dict(copy.deepcopy(dict(saved_scheduler)))
            except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as err:
                self.distributions.load_state_dict(weights)
                self._load_optimizer(optimizer_state, kept_dtypes)
                self.scheduler.load_state_dict(scheduler_state)
                raise ValueError(f"{source}: its scheduler state does not fit this model's "
                                 f"{type(self.scheduler).__name__}: {err}") from None
        if saved_held is not None:
            with torch.no_grad():
                for key, t in held.items():
                    t.copy_(saved_held[key])
        self.epoch, self.history = epoch, history
        self._best = copy.deepcopy(state["best"])
        self._resumed = True
        self._shuffle = shuffle
        self._rng = state.get("rng")
        self._cuda_rng = state.get("cuda_rng")  # (None from a CPU run or an older checkpoint: seeded at the next fit)
        self._training = None
        done = state.get("validated")
        if done is None:  # a checkpoint from before the key: its run had checked both losses by its first epoch's end
            done = ["train", "test"] if self.epoch > 0 else []
        for name, loss in (("train", self.loss_cls), ("test", self.test_loss_cls)):
            if name in done:
                self._validated.add(id(loss))

    def _load_optimizer(self, saved: Mapping[str, Any], dtypes: Mapping[int, torch.dtype]) -> None:
        """``optimizer.load_state_dict`` of a copy of ``saved``, then each state tensor back in its saved dtype where
        torch changed it and its parameter has the dtype it had when saved (``dtypes``: by the parameter's id).
        torch casts every floating state entry but ``step`` to its parameter's dtype (pytorch/pytorch#75224): NAdam's
        ``mu_product``, kept in float32, came back in float64 in a float64 model, and the resumed run differed. A
        state saved from a model of another dtype stays converted to this one's, as torch converts it. A state saved
        by an earlier kizuna, whose optimizer left out the frozen parameters, is laid out first (`_frozen_left_out`)."""
        saved = self._frozen_left_out(saved)
        self.optimizer.load_state_dict(copy.deepcopy(saved))  # (torch keeps the given tensors where no cast is due)
        indices = [index for group in saved["param_groups"] for index in group["params"]]
        for index, param in zip(indices, self._trained_parameters()):
            entries, live = saved["state"].get(index), self.optimizer.state.get(param)
            if not entries or live is None or dtypes.get(id(param)) != param.dtype:
                continue
            for key, value in entries.items():
                now = live.get(key)
                if isinstance(value, torch.Tensor) and isinstance(now, torch.Tensor) and now.dtype != value.dtype:
                    live[key] = now.to(value.dtype)

    def _frozen_left_out(self, saved: Mapping[str, Any]) -> Mapping[str, Any]:
        """``saved`` (an optimizer state) in this optimizer's layout, where it was saved by an earlier kizuna: its
        optimizer held only the parameters that required grad when it was built, and now holds the frozen ones too
        (each group lists its parameters by index). A saved group with fewer parameters than the live one is taken to
        hold the live group's parameters that require grad now, in order (the same parameters frozen as when it was
        saved): their indices are kept and each frozen parameter gets a new index without state, as it had none.
        ``saved`` as it is where every group has the live one's length (torch's own check then applies).

        Raises:
            ValueError: a shorter group whose length is not the number of parameters that require grad in the live
                group, or a state entry whose shape is not its parameter's under that mapping (the frozen parameters
                differ from those at saving), with what to do.
        """
        groups, live = saved.get("param_groups"), self.optimizer.param_groups
        if not isinstance(groups, Sequence) or len(groups) != len(live) or not all(
                isinstance(g, Mapping) and isinstance(g.get("params"), Sequence) for g in groups) or all(
                len(g["params"]) >= len(own["params"]) for g, own in zip(groups, live)):
            return saved  # (torch's load_state_dict names what does not fit)
        names = {id(p): name for name, p in self.distributions.named_parameters()}
        taken = [i for g in groups for i in g["params"]]
        fresh = iter(range(max(taken, default=-1) + 1, 2**62))
        state, layout = saved.get("state", {}), []
        for n, (group, own) in enumerate(zip(groups, live)):
            params = own["params"]
            if len(group["params"]) >= len(params):
                layout.append(group)
                continue
            trainable = [p for p in params if p.requires_grad]
            if len(group["params"]) != len(trainable):
                raise ValueError(
                    f"its optimizer's group {n} holds {len(group['params'])} parameters, this model's {len(params)}, "
                    f"{len(trainable)} of them requiring grad. A checkpoint saved by an earlier kizuna, whose "
                    f"optimizer left out the frozen parameters (requires_grad False), is loaded with the parameters "
                    "that required grad when it was saved; freeze the same parameters (p.requires_grad_(False)) "
                    "before loading it")
            indices = iter(group["params"])
            mapped = [next(indices) if p.requires_grad else next(fresh) for p in params]
            for index, p in zip(mapped, params):
                for key, value in (state.get(index) or {}).items():
                    if key in _PARAMETER_SHAPED and isinstance(value, torch.Tensor) and value.shape != p.shape:
                        raise ValueError(
                            f"it was saved by an earlier kizuna, whose optimizer left out the frozen parameters "
                            f"(requires_grad False); taken in order, its state {key!r} of shape {tuple(value.shape)} "
                            f"falls to {names.get(id(p), f'parameter {index}')} of shape {tuple(p.shape)}, so other "
                            "parameters were frozen when it was saved: freeze the same ones (p.requires_grad_(False)) "
                            "before loading it")
            layout.append({**group, "params": mapped})
        return {**saved, "param_groups": layout}

    def check_checkpoint_path(self, path: str | PathLike[str]) -> None:
        """Before training (``fit(checkpoint=...)``): ``path``'s folder created where missing, as `save` does, or an
        error naming why it cannot be (a file in the way, no permission, ``path`` itself an existing directory), not
        after the first epoch."""
        if Path(path).is_dir():
            raise IsADirectoryError(f"fit: cannot write the checkpoint {path}: it is an existing directory; give a "
                                    f"file path (e.g. {Path(path) / 'checkpoint.pt'})")
        make_folder(Path(path).parent, f"fit: cannot write the checkpoint {path}")


def check_seed(seed: Any, where: str) -> None:
    """``seed`` is one of torch's seeds: a Python integer (not a bool) in ``[-2**63, 2**64)`` (a negative one is taken
    modulo ``2**64``); a ValueError naming ``where`` and the value otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{where}: seed must be an integer, got {seed!r}")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"{where}: seed must lie in [-2**63, 2**64) (torch's seeds), got {seed}")


_ONES: dict[torch.device, torch.Tensor] = {}  # the unscale factor 1 per device (read, never written)
_FLAGS: dict[torch.device, torch.Tensor] = {}  # a zero non-finite flag per device, kept from a finite check


def _reference_parameter(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parameter whose device the data take (`Model.device`), and its dtype where the distributions hold no
    floating tensor (`Model.dtype`): the first that requires grad, else the first floating one, else the first."""
    return next((p for p in params if p.requires_grad), next((p for p in params if p.is_floating_point()), params[0]))


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float, keep_if_nonfinite: bool = False) -> torch.Tensor:
    r"""``torch.nn.utils.clip_grad_norm_(params, max_norm)`` (the 2-norm of all gradients together, each gradient
    scaled by :math:`\min(1, \text{max\_norm} / (\lVert g\rVert + 10^{-6}))`), the same numbers to the bit; returns
    the total norm. Where every gradient is on a CPU or one GPU in one dtype (the usual case; two C-level scans tell),
    torch's two fused kernels (``_foreach_norm``, ``_foreach_mul_``) called directly, without its grouping of the
    tensors by device and dtype, which costs more than the kernels on a small model (about 35 of 90 µs a step for
    the DMM's 19 gradients on one CPU thread); several dtypes (torch sums the norms group by group, in another
    order), several devices (they fail in ``torch.stack`` before anything is scaled), gradients that require grad
    (a backward with ``create_graph``), sparse ones and other devices are torch's own function.

    With ``keep_if_nonfinite``, a total norm that is not finite leaves every gradient as it was (torch scales each by
    the nan factor, or the finite ones by 0 for an infinite norm), so that the caller can tell which were non-finite;
    the total is then read (one synchronisation with the device) before the gradients are scaled."""
    return _clip_grad_norm(params, max_norm, keep_if_nonfinite)[0]


def _clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float, keep_if_nonfinite: bool
                    ) -> tuple[torch.Tensor, bool | None]:
    """`clip_grad_norm`'s total and, with ``keep_if_nonfinite``, whether it is finite (read once, before scaling: the
    trainer's check needs no second read); None without."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or grads[0].device.type not in _FOREACH_DEVICES or any(map(_REQUIRES_GRAD, grads)) \
            or len(set(map(_DTYPE, grads))) != 1:
        return _torch_clip_grad_norm(params, max_norm, keep_if_nonfinite)
    try:
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    except (RuntimeError, NotImplementedError):  # devices mixed, sparse or nested gradients: nothing scaled yet
        return _torch_clip_grad_norm(params, max_norm, keep_if_nonfinite)
    finite = None
    if keep_if_nonfinite:
        finite = math.isfinite(total.item())
        if not finite:
            return total, False
    torch._foreach_mul_(grads, torch.clamp(float(max_norm) / (total + 1e-6), max=1.0))
    return total, finite


def _torch_clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float, keep_if_nonfinite: bool
                          ) -> tuple[torch.Tensor, bool | None]:
    """torch's ``clip_grad_norm_``; with ``keep_if_nonfinite``, a non-finite total norm (torch's error, raised before
    anything is scaled) returned as ``nan`` with the gradients as they were."""
    if not keep_if_nonfinite:
        return nn.utils.clip_grad_norm_(params, max_norm), None
    try:
        return nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=True), True
    except RuntimeError as err:
        if "non-finite" not in str(err):  # (torch's words since 1.9: "... is non-finite, so it cannot be clipped")
            raise
        return torch.tensor(math.nan), False


_REQUIRES_GRAD, _DTYPE = operator.attrgetter("requires_grad"), operator.attrgetter("dtype")
_TRAINING = operator.attrgetter("training")
# the optimizer states of torch's optimisers that have their parameter's shape (Adam's moments, SGD's momentum, ...):
# checked when a checkpoint of an earlier kizuna is laid out (`Model._frozen_left_out`)
_PARAMETER_SHAPED = frozenset({"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_inf", "momentum_buffer", "sum",
                               "square_avg", "acc_delta", "grad_avg", "prev", "step_size", "ax"})


# the devices on which torch's clip_grad_norm_ takes its foreach kernels (its own choice; other devices: torch's)
_FOREACH_DEVICES = frozenset({"cpu", "cuda"})


def _all_finite(grads: list[torch.Tensor]) -> bool:
    """Whether every gradient is finite: AMP's fused non-finite check (the kernel ``GradScaler`` runs
    on every step, with an unscale factor of 1), one call per device, and one read; about a third of
    the time of a fused norm on a small VAE's gradients (25 against 75 microseconds on one CPU thread).
    Where the kernel is missing (a device or dtype without it), the fused norm."""
    if not grads:
        return True
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    try:
        found = []
        for device, group in by_device.items():
            ones = _ONES.get(device)
            if ones is None:
                ones = _ONES[device] = torch.ones(1, device=device)
            # the kernel only ever sets the flag (to 1, on a non-finite entry): a flag still 0 after a check is reused
            # (one allocation fewer per step); one that was set is dropped below
            flag = _FLAGS.pop(device, None)
            if flag is None:
                flag = torch.zeros(1, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(group, flag, ones)
            found.append((device, flag))
        if len(found) == 1:
            device, flag = found[0]
            finite = flag.item() == 0
        else:
            finite = bool(sum(f.cpu() for _, f in found).item() == 0)
        if finite:
            for device, flag in found:
                _FLAGS[device] = flag
        return finite
    except (RuntimeError, NotImplementedError):
        norms = [n.cpu() for group in by_device.values() for n in torch._foreach_norm(group)]
        return math.isfinite(torch.stack(norms).sum().item())


def _compile_args(option: Any) -> dict[str, Any] | None:
    """``compile=`` of `Model`: False, True or a dict of ``torch.compile`` keyword arguments."""
    if option is False or option is None:
        return None
    if option is True:
        return {}
    if isinstance(option, Mapping):
        args = dict(option)
        _check_compile_args(args)
        return args
    raise TypeError(f"Model: compile must be True, False or a dict of torch.compile arguments, got {option!r}")


def _check_compile_args(args: dict[str, Any]) -> None:
    """The user's own mistakes in ``compile=`` are errors at construction: a name ``torch.compile`` does not take, a
    mode or a backend name it does not know, and anything else ``torch.compile`` refuses when it wraps a function
    (compiling nothing): an inductor option that is not one (``options={"max_autotun": True}``) or of the wrong
    type, ``dynamic="yes"``. They fell back to eager with a warning that compilation was unavailable on this machine,
    from the second step on. A platform without the compiler still warns and trains eagerly: where torch's lists
    cannot be read, or dynamo does not run on this Python, the arguments are left to ``torch.compile``."""
    import inspect

    allowed = [name for name in inspect.signature(torch.compile).parameters if name != "model"]
    unknown = sorted(str(k) for k in args if k not in allowed)
    if unknown:
        raise TypeError(f"Model: compile= names {', '.join(map(repr, unknown))}, which torch.compile does not take; "
                        f"its arguments are {', '.join(allowed)}")
    if args.get("mode") is not None and args.get("options") is not None:  # (torch refuses both at the first step)
        raise TypeError("Model: compile= gives both mode and options, which torch.compile does not take together; "
                        "give one of them")
    mode, backend = args.get("mode"), args.get("backend")
    checks = torch.distributions.Distribution._validate_args  # (torch._dynamo's import patches torch: kept as it was)
    try:
        if mode is not None:
            from torch._inductor import list_mode_options

            modes = sorted(list_mode_options())
            if mode not in modes:
                raise ValueError(f"Model: compile={{'mode': {mode!r}}} is not one of torch.compile's modes "
                                 f"({', '.join(modes)})")
        if isinstance(backend, str):
            from torch._dynamo import list_backends

            backends = list_backends(exclude_tags=())
            if backend not in backends:
                raise ValueError(f"Model: compile={{'backend': {backend!r}}} is not one of torch.compile's backends "
                                 f"({', '.join(b for b in backends if 'TESTING' not in b)}), nor a callable")
        if args:
            from torch._dynamo import is_dynamo_supported

            if is_dynamo_supported():  # (else torch.compile refuses any arguments: the fallback's case)
                try:  # wraps, compiles nothing: torch's own checks of the arguments (inductor's options, dynamic=)
                    torch.compile(lambda: None, **_torch_compile_args(args))
                except ImportError:
                    raise
                except Exception as err:  # noqa: BLE001 - torch's checks raise RuntimeError, AssertionError, ...
                    raise ValueError(_refused_compile_args(args, err)) from err
    except (ImportError, RuntimeError):  # no compiler stack here: `_compiled_eval` warns and trains eagerly
        pass
    finally:
        torch.distributions.Distribution.set_default_validate_args(checks)


def _refused_compile_args(args: Mapping[str, Any], err: BaseException) -> str:
    """The error of ``compile=`` arguments ``torch.compile`` refused with ``err``: torch's first line, without its
    list of every inductor option, and for an option it does not know the known ones closest to it."""
    import difflib

    first = (str(err).strip().splitlines() or [""])[0].split(", known options are")[0][:300]
    text = f"Model: compile={dict(args)!r} is refused by torch.compile ({type(err).__name__}: {first})"
    options = args.get("options")
    if isinstance(options, Mapping) and first.startswith("Unexpected optimization option"):
        from torch._inductor import list_options

        known = list_options()
        for key in options:
            if str(key) in first and str(key).replace("-", "_") not in known:
                close = difflib.get_close_matches(str(key), known, n=3)
                text += f": {key!r} is not an inductor option (torch._inductor.list_options())"
                text += f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                break
    return text


def _torch_compile_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """``compile=``'s arguments for one ``torch.compile`` call: ``options`` copied (torch pops ``guard_filter_fn`` and
    ``use_aoti`` out of the dict it is given, so a second call, a test loss's, lost them)."""
    options = args.get("options")
    return {**args, "options": dict(options)} if isinstance(options, Mapping) else dict(args)


def _rng_states(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's CPU generator state and, for a CUDA device, that device's (a GPU model draws there)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_states(device: torch.device, states: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


class _CompiledRunFailed(Exception):
    """A compiled evaluation raised ``error`` (its ``__cause__``): the model's step or evaluation is taken again
    eagerly from the state before it (`Model._eagerly`), which tells the compiler's failure from the model's own
    error. (Retried inside the evaluation, the retry found the batch-norm statistics that the graphs before a graph
    break had already moved.)"""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


def _compiler_error(err: BaseException) -> BaseException:
    """The compiler's own error behind ``err``, a compiled run's failure: torch wraps a backend's error
    (``inner_exception``; ``BackendCompilerFailed``'s message is only "backend='...' raised:"), and a distribution
    rewraps a RuntimeError raised in its network's call, a compiler's among them, as "forward() failed on z of shape
    ..." (`TorchDistribution._compute_params`, the original kept as ``__cause__``)."""
    if isinstance(err, _CompiledRunFailed):
        err = err.error
    found: BaseException | None = err
    seen: set[int] = set()
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        inner = getattr(found, "inner_exception", None)
        if isinstance(inner, BaseException):
            return inner
        if type(found).__module__.startswith(("torch._dynamo", "torch._inductor")):
            return found
        found = found.__cause__
    return err


def _own_code(method: Any) -> Any:
    """``method`` (a loss's bound ``eval``) as a function of its own code object, bound to the same loss: dynamo keeps
    its compiled graphs per code object, at most ``torch._dynamo.config.recompile_limit`` (8) of them, each guarded
    on the loss object, so every model compiling the shared ``Loss.eval`` filled one cache and from the 5th model (9th
    without a test loss of its own) on, every model ran eagerly, silently. The copy's cache is this model's alone and
    is freed with it. A callable that is not a plain Python method is compiled as it is."""
    func = getattr(method, "__func__", None)
    owner = getattr(method, "__self__", None)
    if not isinstance(func, types.FunctionType) or owner is None:
        return method
    copy_ = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__,
                               func.__closure__)
    copy_.__kwdefaults__ = func.__kwdefaults__
    copy_.__qualname__, copy_.__doc__, copy_.__module__ = func.__qualname__, func.__doc__, func.__module__
    return types.MethodType(copy_, owner)


_DYNAMO_LIMIT_PREFIX = "torch._dynamo hit config."  # convert_frame's warning when it stops compiling a code object
_watched = threading.local()  # the notes of the compiled evaluation running in this thread (`_DynamoGaveUp`)


class _DynamoGaveUp(logging.Filter):
    """Notes, for the compiled evaluation running in the thread, dynamo's warning that a code object reached its
    recompile limit (``torch._dynamo.config.recompile_limit``, or the accumulated one): from then on dynamo runs it
    eagerly and says so only in its log. The record itself is let through."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging's name
        notes = getattr(_watched, "notes", None)
        if notes is not None and isinstance(record.msg, str) and record.msg.startswith(_DYNAMO_LIMIT_PREFIX):
            try:
                text = record.getMessage()
            except Exception:  # noqa: BLE001 - a record torch formats differently: its template
                text = record.msg
            notes.append(" ".join(line.strip() for line in text.splitlines()[:3]))
        return True


_DYNAMO_FILTER = _DynamoGaveUp()


def _watch_dynamo() -> None:
    """Install `_DynamoGaveUp` on dynamo's frame converter's logger (once; a filter object is added only once)."""
    logging.getLogger("torch._dynamo.convert_frame").addFilter(_DYNAMO_FILTER)


def _compiled_eval(model: Model, loss_cls: Loss) -> Any:
    """``loss_cls.eval`` under ``torch.compile``, as a function of the model's own (`_own_code`). Where compilation
    is unavailable a warning says why and the model continues eagerly; a compiled run that fails raises
    `_CompiledRunFailed`, and the model takes the step (or the evaluation) again eagerly from the state before it: a
    failure there too is the model's own error, raised as it is; else the compiler's, reported as unavailable
    compilation (`Model._eagerly`). Where dynamo gives up without an error (its recompile limit reached), the
    run's result stands (dynamo ran it eagerly) and
    `Model._compile_stopped` says so: a warning, ``compile_error`` set, the model eager from then on."""
    # torch.compile's first use turns torch.distributions' default argument checks off for the whole
    # process (torch._dynamo patches torch on first use); keep the user's setting (`set_validation`)
    checks = torch.distributions.Distribution._validate_args
    own = _own_code(loss_cls.eval)
    _watch_dynamo()
    try:
        compiled = torch.compile(own, **_torch_compile_args(model._compile_args or {}))
    except Exception as err:  # noqa: BLE001 - e.g. an unsupported Python version or platform
        model._compile_failed(err)
        return loss_cls.eval
    finally:
        torch.distributions.Distribution.set_default_validate_args(checks)

    def run(batch: Mapping[str, Any], **options: Any) -> Any:
        if model.compile_error is not None:
            return loss_cls.eval(batch, **options)
        outer, notes = getattr(_watched, "notes", None), []
        _watched.notes = notes
        try:
            out = compiled(batch, **options)
        except Exception as err:  # noqa: BLE001 - decided by the caller: the compiler's failure or the model's error
            raise _CompiledRunFailed(err) from err
        finally:
            _watched.notes = outer
        if notes:
            model._compile_stopped(notes[0])
        return out

    run.own = own  # type: ignore[attr-defined]  # (the model's own copy: tests check it is freed with the model)
    return run
