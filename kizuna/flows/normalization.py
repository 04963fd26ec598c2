r"""Normalisation layers as flows: `ActNorm`, `BatchNorm1d`, `BatchNorm2d`.

All three are per-channel affine maps :math:`z_c = (x_c - \mu_c)\, e^{\ell_c}`-style, so on inputs
``(B, C)`` or ``(B, C, H, W)``

.. math:: \log|\det J| = H W \textstyle\sum_c \log|\text{scale}_c|.

* `ActNorm` (Glow, Kingma & Dhariwal 2018, arXiv:1807.03039): :math:`z = (x + b)\, e^{\ell}` with
  learnable :math:`b, \ell`, initialised from the first training batch so that it comes out with
  zero mean and standard deviation ``scale`` (1 by default) per channel: :math:`b = -\mu`,
  :math:`\ell = \log \text{scale} - \tfrac12 \log(\sigma^2 + \epsilon)` (Pixyz's ``ActNorm2d(C, scale)``). A
  first batch with a NaN or inf is refused (``ValueError``) and leaves the layer uninitialised. The first
  training-mode ``forward`` initialises it, once, and so does the first training-mode ``inverse`` over data: inside
  `kizuna.flows.base.scoring_data`, where a `TransformedDistribution`'s likelihood runs its flow backwards over the
  data, it initialises from its input :math:`z` so that ``inverse`` comes out standardised (:math:`\ell = \tfrac12
  \log(\sigma_z^2 + \epsilon) - \log \text{scale}`, :math:`b = \mu_z e^{-\ell}`). Any other inverse is a draw's
  (an `InverseTransformedDistribution`'s ``sample()`` through the inverse, or a hand-written sampler) and does not
  initialise it from the prior's draws; nor does a forward inside `kizuna.flows.base.drawing` (a
  `TransformedDistribution`'s ``sample()``). A layer whose parameters are no longer the new layer's zeros (trained
  through draws, one row at a time or in evaluation mode, or set by hand) counts as initialised at its next
  training-mode pass and keeps them; a batch of one value per channel (one vector row) does not initialise it.
  Before stop 43, a layer trained through its inverse or one row at a time stayed uninitialised, and its first
  training-mode forward of more rows (a flow distribution's ``sample()``) initialised it over the trained
  parameters. The flag ``initialized`` is a buffer: saved and loaded with the state dict.
* `BatchNorm1d` / `BatchNorm2d` (RealNVP, Dinh et al. 2016, arXiv:1605.08803, sec. 3.7): :math:`z = \frac{x -
  \mu}{\sqrt{\sigma^2 + \epsilon}}\, e^{\gamma} + \beta`, with the batch's :math:`\mu, \sigma^2` in training mode and
  their running averages in evaluation mode (:math:`\text{running} \leftarrow (1 - m)\,\text{running} +
  m\,\text{batch}`, torch's convention: ``momentum`` :math:`m \in [0, 1]`, 0.1 by default; torch's ``None``, a
  cumulative average, is not offered; the batch's variance is the biased one, the variance the layer normalises with
  (torch's ``nn.BatchNorm`` averages the unbiased one); a training batch with a NaN or inf leaves the running averages
  unchanged). In training mode the log-determinant treats the batch statistics as constants (as the paper and Pixyz
  do): it is the log-determinant of the per-row map :math:`x_i \mapsto z_i` with :math:`\mu, \sigma^2` fixed at the
  batch's values, not of the map of the whole batch (which is not invertible: adding a constant to every row of a
  channel leaves :math:`z` unchanged). ``inverse`` in training mode uses the statistics of the last training-mode
  ``forward`` (as Pixyz), so ``f.inverse(f(x))`` gives back ``x`` in both modes; before any training-mode ``forward``
  it uses the running averages. The stored batch statistics are constants (detached): the inverse passes no gradient
  to that earlier batch. Input of another floating dtype than the layer's (float64 data into a float32 layer) is
  computed in the promoted dtype, as ActNorm's, the statistics kept in the layer's.

Pixyz's checkpoints load as they are (see the ``_load_from_state_dict`` methods): Pixyz keeps ActNorm's
:math:`b, \ell` as ``bias`` and ``logs`` of shape ``(1, C, 1, 1)``, and BatchNorm2d's ``log_gamma``, ``beta``,
``running_mean``, ``running_var`` of shape ``(C, 1, 1)``; kizuna keeps them as ``(C,)``, :math:`\ell` as
``log_scale``. A trained Pixyz BatchNorm2d's running statistics are per channel and pixel, ``(C, H, W)`` (Pixyz
averages over the batch only): they do not load, with an error saying why.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kizuna._data import check_positive
from kizuna.flows.base import Flow, Tensor, is_drawing, is_scoring_data


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector ``(C,)`` shaped to broadcast against ``x`` (``(1, C)`` or ``(1, C, 1, 1)``)."""
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


def _pixels(x: Tensor) -> int:
    """Values per channel in one row (1 for vectors); x[0, 0] failed on an empty batch."""
    return math.prod(x.shape[2:])


def _read_pixyz_shapes(module: nn.Module, state_dict: dict, prefix: str, names: tuple[str, ...],
                       pixyz_shape: Callable[[torch.Size], tuple[int, ...]]) -> None:
    """In a state dict being loaded into ``module``, reshape each tensor ``names`` that has Pixyz's shape of it
    (``pixyz_shape(own shape)``) to the module's shape (the same numbers); any other shape is left to torch's
    size-mismatch error."""
    for name in names:
        key, own = prefix + name, getattr(module, name)
        value = state_dict.get(key)
        if isinstance(value, Tensor) and isinstance(own, Tensor) and value.shape == pixyz_shape(own.shape):
            state_dict[key] = value.reshape(own.shape)


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance over the batch and spatial positions."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), x.var(dims, unbiased=False)


class ActNorm(Flow):
    """Per-channel affine layer with data-dependent initialisation (module docstring).

    Args:
        in_features: the number of channels :math:`C`.
        scale: the per-channel standard deviation of the first training batch's output (Pixyz's ``scale``,
            its second argument too); of the inverse's output when the first training-mode pass is an ``inverse``.
        eps: keyword only; added to the batch's variance in the initialisation.

    >>> import torch
    >>> f = ActNorm(2)
    >>> z = f(3.0 + 2.0 * torch.randn(500, 2))   # the first batch initialises it
    >>> z.mean(0).abs().max() < 1e-5, (z.std(0, unbiased=False) - 1).abs().max() < 1e-4
    (tensor(True), tensor(True))
    >>> z = ActNorm(2, 0.5)(3.0 + 2.0 * torch.randn(500, 2))
    >>> (z.std(0, unbiased=False) - 0.5).abs().max() < 1e-4
    tensor(True)
    """

    scale = 1.0  # (a module pickled whole before ``scale`` existed initialises as it did)
    _known_initialized = False  # (the mirror's default for a layer pickled whole before it existed)

    def __init__(self, in_features: int, scale: float = 1.0, *, eps: float = 1e-6) -> None:
        super().__init__(in_features)
        check_positive("ActNorm: scale", scale)
        check_positive("ActNorm: eps", eps)
        if scale < 1e-3:  # an eps given positionally, as the second argument was until Pixyz's order
            raise ValueError(f"ActNorm: scale={scale!r} would give every channel of the first batch a standard "
                             f"deviation of {scale!r}; the second argument is Pixyz's scale (it was eps before): "
                             f"pass eps={scale!r} by keyword")
        self.bias = nn.Parameter(torch.zeros(in_features))
        self.log_scale = nn.Parameter(torch.zeros(in_features))
        self.scale, self.eps = float(scale), eps
        self.register_buffer("initialized", torch.tensor(False))
        # a Python mirror of the flag once it is True: a training-mode pass of an initialised layer then reads no
        # tensor (reading the buffer is a host sync on a GPU and a data-dependent guard that stopped
        # torch.compile(fullgraph=True) of a flow distribution's likelihood)
        self._known_initialized = False

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Pixyz's checkpoints load too: Pixyz's ``ActNorm2d`` keeps ``bias`` and ``logs`` (kizuna's ``log_scale``)
        of shape ``(1, C, 1, 1)`` and saves no flag of its initialisation. ``logs`` is read as ``log_scale`` when
        the state has no ``log_scale``, a tensor of Pixyz's shape as kizuna's ``(C,)`` (the same numbers; any other
        shape is left to torch's size-mismatch error), and a state that gives both parameters but no
        ``initialized`` marks the layer initialised: the first training forward keeps the loaded values instead of
        initialising over them."""
        if prefix + "logs" in state_dict and prefix + "log_scale" not in state_dict:
            state_dict[prefix + "log_scale"] = state_dict.pop(prefix + "logs")
        _read_pixyz_shapes(self, state_dict, prefix, ("bias", "log_scale"), lambda own: (1, *own, 1, 1))
        if prefix + "initialized" not in state_dict and all(prefix + n in state_dict for n in ("bias", "log_scale")):
            state_dict[prefix + "initialized"] = torch.tensor(True)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._known_initialized = bool(self.initialized)

    def _uninitialised(self) -> bool:
        """Whether the layer awaits its initialisation; the buffer is read only until it is found True."""
        if self._known_initialized:
            return False
        if bool(self.initialized):  # (set through the buffer: a load, a hand-written reference)
            self._known_initialized = True
            return False
        return True

    def _first_use(self, x: Tensor, what: str) -> None:
        """The first training-mode pass of a layer not yet initialised (``what``: ``"x"`` forward, ``"z"`` an inverse
        that scores data, inside `scoring_data`; ``"draw"`` any other inverse, a draw's): the data-dependent
        initialisation from this batch, or the mark that the layer is initialised as it is (module docstring). An
        empty batch, one value per channel, or a draw changes nothing but that mark."""
        per_channel = x.numel() // max(x.shape[1], 1)  # (statistics over the batch and the pixels, as Glow: one
        # image of many pixels initialises it too)
        if per_channel == 0:
            return
        with torch.no_grad():
            changed = bool((self.bias != 0).any() | (self.log_scale != 0).any())
        if changed:  # trained without an initialising pass (through draws, one row at a time, in evaluation mode),
            # or set by hand: kept (a later forward initialised over the trained parameters)
            self.initialized.fill_(True)
            self._known_initialized = True
        elif per_channel > 1 and what != "draw":  # (one row: a probe such as sample() does not spoil it)
            self._initialize(x, what)

    def _initialize(self, x: Tensor, what: str = "x") -> None:
        """Forward (``what="x"``): ``forward(x)`` standardised; inverse (``what="z"``): ``inverse(x)`` standardised."""
        with torch.no_grad():
            mean, var = _channel_stats(x)
            # checked before any state changes (one check, at the initialising batch only): a NaN or inf would make
            # the bias or scale NaN for good, and every later output with it
            if not bool(torch.isfinite(mean).all() & torch.isfinite(var).all()):
                bad = (~torch.isfinite(x)).nonzero()
                where = f" ({x[tuple(bad[0])].item()} at row {bad[0, 0].item()}, channel {bad[0, 1].item()})" \
                    if len(bad) else " (its variance overflows)"
                raise ValueError(f"ActNorm: the data-dependent initialisation needs a finite batch, got non-finite "
                                 f"{what}{where}; the layer stays uninitialised (remove or impute the value)")
            log_scale = math.log(self.scale) - 0.5 * torch.log(var + self.eps)
            if what == "x":
                self.bias.copy_(-mean)
                self.log_scale.copy_(log_scale)
            else:  # x = z e^{-l} - b with mean 0 and standard deviation scale: l = -log_scale, b = mean e^{-l}
                self.bias.copy_(mean * log_scale.exp())
                self.log_scale.copy_(-log_scale)
            self.initialized.fill_(True)
            self._known_initialized = True

    def _check(self, x: Tensor, what: str) -> None:
        super()._check(x, what)
        if x.dim() not in (2, 4):
            raise ValueError(f"ActNorm: {what} must be (B, C) or (B, C, H, W), got {tuple(x.shape)}")

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.training and self._uninitialised():  # (a sample's forward over the prior's draws does not initialise
            # it: a TransformedDistribution sampled before its fit started from them, not from the data)
            self._first_use(x, "draw" if is_drawing() else "x")
        z = (x + _channel_view(self.bias, x)) * _channel_view(self.log_scale.exp(), x)
        return z, (self.log_scale.sum() * _pixels(x)).expand(x.shape[0])

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.training and self._uninitialised():  # (an inverse over data may be the first: a flow
            # distribution's likelihood; a draw's inverse, sampling through the flow, does not initialise it)
            self._first_use(z, "z" if is_scoring_data() else "draw")
        x = z * _channel_view((-self.log_scale).exp(), z) - _channel_view(self.bias, z)
        return x, (-self.log_scale.sum() * _pixels(z)).expand(z.shape[0])


class _BatchNorm(Flow):
    """Batch normalisation as a flow; ``n_dims`` is the input rank it accepts."""

    n_dims = 2

    def __init__(self, in_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__(in_features)
        check_positive(f"{type(self).__name__}: eps", eps)
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
            # torch's momentum=None (a cumulative average) is not offered: the running averages are a lerp
            raise ValueError(f"{type(self).__name__}: momentum must be a number in [0, 1] (the running averages' "
                             f"weight of each batch), got {momentum!r}")
        self.log_gamma = nn.Parameter(torch.zeros(in_features))
        self.beta = nn.Parameter(torch.zeros(in_features))
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(in_features))
        self.register_buffer("running_var", torch.ones(in_features))
        # the last training-mode forward's statistics, for the training-mode inverse (not saved in checkpoints)
        self.register_buffer("batch_mean", torch.zeros(in_features), persistent=False)
        self.register_buffer("batch_var", torch.ones(in_features), persistent=False)
        self._has_batch_stats = False

    def _check(self, x: Tensor, what: str) -> None:
        super()._check(x, what)
        if x.dim() != self.n_dims:
            shape = "(B, C)" if self.n_dims == 2 else "(B, C, H, W)"
            raise ValueError(f"{type(self).__name__}: {what} must be {shape}, got {tuple(x.shape)}")

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        if x.numel() // x.shape[1] < 2:  # as torch's BatchNorm: a variance of one value is 0, its log-det infinite
            raise ValueError(f"{type(self).__name__}: training needs more than one value per channel (the batch's "
                             f"statistics), got input of shape {tuple(x.shape)}; use larger batches, or eval() mode")
        mean, var = _channel_stats(x)
        with torch.no_grad():
            # a batch with a NaN or inf leaves the running statistics as they were (torch.where: no host-device sync);
            # they are kept in the layer's dtype: input of another dtype (float64 into a float32 layer) is computed
            # in the promoted dtype, as ActNorm's (torch's lerp refused the mix, "expected dtype float for `end`")
            finite = torch.isfinite(mean).all() & torch.isfinite(var).all()
            kept = self.running_mean.dtype
            self.running_mean.copy_(torch.where(finite, self.running_mean.lerp(mean.detach().to(kept),
                                                                               self.momentum), self.running_mean))
            self.running_var.copy_(torch.where(finite, self.running_var.lerp(var.detach().to(kept), self.momentum),
                                               self.running_var))
            self.batch_mean.copy_(mean.detach())
            self.batch_var.copy_(var.detach())
        self._has_batch_stats = True
        return mean, var

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        """A loaded state has no last batch (its statistics are not saved): the training-mode inverse uses the loaded
        running statistics until the next training-mode forward, not the batch this module saw before the load.

        Pixyz's checkpoints load too: Pixyz's ``BatchNorm2d`` keeps ``log_gamma``, ``beta``, ``running_mean`` and
        ``running_var`` of shape ``(C, 1, 1)``, read as kizuna's ``(C,)`` (the same numbers; any other shape is left
        to torch's size-mismatch error). Pixyz's ``BatchNorm2d`` averages over the batch only, so after its first
        training forward its running statistics are per channel *and pixel*, ``(C, H, W)``: those do not load into
        kizuna's per-channel layer (torch's size-mismatch error, with a line saying why)."""
        _read_pixyz_shapes(self, state_dict, prefix, ("log_gamma", "beta", "running_mean", "running_var"),
                           lambda own: (*own, 1, 1))
        for name in ("running_mean", "running_var"):
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.dim() == 3 and value.shape[0] == self.in_features \
                    and value.shape[1:].numel() > 1:
                error_msgs.append(
                    f"{prefix + name} of shape {tuple(value.shape)} holds statistics per channel and pixel (Pixyz's "
                    f"BatchNorm2d averages over the batch only, after its first training forward); kizuna's "
                    f"{type(self).__name__} keeps them per channel, ({self.in_features},): load the other tensors "
                    f"without the running statistics (strict=False) and re-estimate them in training mode")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._has_batch_stats = False

    def _log_scale(self, var: Tensor) -> Tensor:
        return self.log_gamma - 0.5 * torch.log(var + self.eps)

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        mean, var = self._stats(x)
        log_scale = self._log_scale(var)
        z = (x - _channel_view(mean, x)) * _channel_view(log_scale.exp(), x) + _channel_view(self.beta, x)
        return z, (log_scale.sum() * _pixels(x)).expand(x.shape[0])

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.training and self._has_batch_stats:  # the statistics the last forward used (Pixyz)
            mean, var = self.batch_mean, self.batch_var
        else:
            mean, var = self.running_mean, self.running_var
        log_scale = self._log_scale(var)
        x = (z - _channel_view(self.beta, z)) * _channel_view((-log_scale).exp(), z) + _channel_view(mean, z)
        return x, (-log_scale.sum() * _pixels(z)).expand(z.shape[0])


class BatchNorm1d(_BatchNorm):
    """Batch normalisation flow on vectors ``(B, C)`` (module docstring)."""

    n_dims = 2
    row_dims = 1


class BatchNorm2d(_BatchNorm):
    """Batch normalisation flow on images ``(B, C, H, W)``, statistics per channel (module docstring)."""

    n_dims = 4
    row_dims = 3
