r"""`Flow` and `FlowList`: invertible maps with a tractable log-determinant.

A flow :math:`f` maps ``x`` to ``z = f(x)`` and reports, per batch row,

.. math:: \log \left| \det \frac{\partial f(x)}{\partial x} \right|

so that a density pushed through it follows the change of variables
:math:`\log p_X(x) = \log p_Z(f(x)) + \log|\det J_f(x)|` (Rezende & Mohamed 2015,
arXiv:1505.05770; Papamakarios et al. 2019, arXiv:1912.02762).

Pixyz's surface is kept: ``flow(x, y=None, compute_jacobian=True)`` returns ``z`` and stores the
log-determinant in ``flow.logdet_jacobian``; ``flow.inverse(z, y=None)`` returns ``x``. The
distributions never read that stored value: they call the pure methods ``forward_and_logdet``
and ``inverse_and_logdet``, which return the log-determinant with the result. ``y`` is an
optional context (conditional flows); layers that take none ignore it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from kizuna._data import as_sequence, check_count

Tensor = torch.Tensor
#: the shape of one row (the batch dimension left out): a tuple of sizes, None for a size not known; None for rows of
#: an unknown number of dimensions (see `Flow.row_shape`)
RowShape = tuple[int | None, ...] | None

_pass = threading.local()  # (per thread: a flow distribution's likelihood in one thread, a sample in another)


@contextmanager
def _passing(kind: str) -> Iterator[None]:
    before = getattr(_pass, "kind", None)
    _pass.kind = kind
    try:
        yield
    finally:
        _pass.kind = before


def scoring_data() -> contextlib.AbstractContextManager[None]:
    """The passes run in this block score data (a `TransformedDistribution`'s likelihood runs its flow backwards
    over the data): a data-dependent layer (`ActNorm`) may initialise from an inverse pass there, as from a forward
    pass. Outside it an inverse pass is a draw's (sampling from the prior through the inverse), and does not."""
    return _passing("data")


def drawing() -> contextlib.AbstractContextManager[None]:
    """The passes run in this block carry the prior's draws (a `TransformedDistribution`'s ``sample()`` runs its flow
    forwards over them): a data-dependent layer (`ActNorm`) does not initialise from them, in either direction."""
    return _passing("draw")


def is_scoring_data() -> bool:
    """Whether the current thread is inside `scoring_data` (and not in a `drawing` block opened inside it)."""
    return getattr(_pass, "kind", None) == "data"


def is_drawing() -> bool:
    """Whether the current thread is inside `drawing` (and not in a `scoring_data` block opened inside it)."""
    return getattr(_pass, "kind", None) == "draw"


class Flow(nn.Module):
    """Base of every invertible layer.

    Args:
        in_features: the size of the feature (or channel) dimension ``x.shape[1]`` the layer
            expects, or ``None`` for layers that work on any size.

    Subclasses implement ``_forward(x, y) -> (z, logdet)`` and ``_inverse(z, y) -> (x, logdet)``,
    where ``logdet`` has shape ``(batch,)`` and the inverse's is
    :math:`\\log|\\det \\partial f^{-1}(z)/\\partial z| = -\\log|\\det J_f(x)|`.
    """

    #: ``log|det J| = 0`` for every input (permutations, reshapes): `FlowList` adds no such term
    volume_preserving: bool = False
    #: the output's shape differs from the input's (reshapes): a flow distribution's ``features_shape`` is then
    #: not its base distribution's
    changes_shape: bool = False
    #: the number of dimensions of one row the layer takes: 1 for vectors ``(B, D)`` (MAF, IAF, planar, spline,
    #: BatchNorm1d), 3 for images ``(B, C, H, W)`` (Squeeze, BatchNorm2d); None where it takes several (ActNorm,
    #: ChannelConv: either) or any
    row_dims: int | None = None

    def __init__(self, in_features: int | None = None) -> None:
        super().__init__()
        check_count(f"{type(self).__name__}: in_features", in_features, 1)  # None: any width (e.g. a FlowList's)
        self._in_features = None if in_features is None else int(in_features)
        self._logdet_jacobian: Tensor | None = None

    @property
    def in_features(self) -> int | None:
        return self._in_features

    @property
    def logdet_jacobian(self) -> Tensor | None:
        """The log-determinant stored by the last ``forward(..., compute_jacobian=True)`` (Pixyz)."""
        return self._logdet_jacobian

    @property
    def has_differentiable_inverse(self) -> bool:
        """Whether ``inverse`` is differentiable in its input and parameters (reparameterised sampling)."""
        return True

    # ------------------------------------------------------------ to override
    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not define _forward")

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not define _inverse")

    # ------------------------------------------------------------- public API
    def _check(self, x: Tensor, what: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: {what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"{type(self).__name__}: {what} needs a batch dimension, got shape {tuple(x.shape)}")
        if self._in_features is not None and x.shape[1] != self._in_features:
            raise ValueError(
                f"{type(self).__name__}: {what} has {x.shape[1]} features (dim 1 of shape {tuple(x.shape)}), "
                f"expected in_features={self._in_features}"
            )

    def forward_and_logdet(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z = f(x)`` and :math:`\\log|\\det J_f(x)|` per row."""
        self._check(x, "x")
        return self._forward(x, y)

    def inverse_and_logdet(self, z: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x = f^{-1}(z)`` and :math:`\\log|\\det J_{f^{-1}}(z)| = -\\log|\\det J_f(x)|` per row."""
        self._check(z, "z")
        return self._inverse(z, y)

    def forward(self, x: Tensor, y: Tensor | None = None, compute_jacobian: bool = True) -> Tensor:
        """``z = f(x)``; with ``compute_jacobian`` the log-determinant is kept in ``logdet_jacobian``."""
        z, logdet = self.forward_and_logdet(x, y)
        self._logdet_jacobian = logdet if compute_jacobian else None
        return z

    def inverse(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """``x = f^{-1}(z)``."""
        return self.inverse_and_logdet(z, y)[0]

    def row_shape(self, shape: RowShape, inverse: bool = False) -> RowShape:
        """The shape of one row of the output of ``forward`` (of ``inverse`` with ``inverse=True``) for input rows of
        ``shape`` (`RowShape`: None entries are sizes not known, None is an unknown number of dimensions), read from
        the layer's definition without running it (a pass would initialise a data-dependent layer such as `ActNorm`).
        A flow distribution reads the shape of its variable's rows from it where its prior's is not known (a
        conditional prior) or the flow reshapes, to score draws made with a ``sample_shape`` row by row.

        This default, for layers that keep the shape, returns ``shape``; rows of unknown shape are given the
        dimensions `row_dims` says, the first of ``in_features`` where that is set."""
        if shape is None and self.row_dims is not None:
            shape = (None,) * self.row_dims
        if shape and shape[0] is None and self._in_features is not None:
            shape = (self._in_features, *shape[1:])
        return shape

    def extra_repr(self) -> str:
        return f"in_features={self._in_features}" if self._in_features is not None else ""


def row_sum(t: Tensor) -> Tensor:
    """Sum over every dimension but the batch: ``(B, ...) -> (B,)``."""
    return t.flatten(1).sum(1) if t.dim() > 1 else t  # (reshape(0, -1) failed on an empty batch)


class FlowList(Flow):
    r"""The composition :math:`f_K \circ \dots \circ f_1`; log-determinants add up.

    >>> import torch
    >>> from kizuna.flows import ActNorm, FlowList, Reverse
    >>> f = FlowList([ActNorm(3), Reverse(3)])
    >>> x = torch.randn(5, 3)
    >>> z = f(x)
    >>> torch.allclose(f.inverse(z), x, atol=1e-5), f.logdet_jacobian.shape
    (True, torch.Size([5]))
    """

    def __init__(self, flow_list: Sequence[Flow]) -> None:
        # (one flow raised a raw "'ActNorm' object is not iterable")
        flows = list(as_sequence("FlowList: flow_list", flow_list, "a list of flows, e.g. FlowList([flow]) for one"))
        if not flows:
            raise ValueError("FlowList needs at least one flow")
        bad = [type(f).__name__ for f in flows if not isinstance(f, Flow)]
        if bad:
            raise TypeError(f"FlowList takes Flow layers, got {', '.join(bad)}")
        super().__init__(flows[0].in_features)
        self.flow_list = nn.ModuleList(flows)

    def __len__(self) -> int:
        return len(self.flow_list)

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flow_list)

    def __getitem__(self, i: int) -> Flow:
        return self.flow_list[i]

    @property
    def has_differentiable_inverse(self) -> bool:
        return all(f.has_differentiable_inverse for f in self.flow_list)

    def _check(self, x: Tensor, what: str) -> None:
        """Each layer checks its own input."""

    # The log-determinants of the layers that are not volume preserving are summed from the first (0 + a is a,
    # so this is the same sum as from zero, without a zeros tensor and an addition per permutation)
    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        total = None
        for flow in self.flow_list:
            x, logdet = flow.forward_and_logdet(x, y)
            if not flow.volume_preserving:
                total = logdet if total is None else total + logdet
        return x, x.new_zeros(x.shape[0]) if total is None else total

    def _inverse(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        total = None
        for flow in reversed(self.flow_list):
            z, logdet = flow.inverse_and_logdet(z, y)
            if not flow.volume_preserving:
                total = logdet if total is None else total + logdet
        return z, z.new_zeros(z.shape[0]) if total is None else total

    @property
    def volume_preserving(self) -> bool:  # type: ignore[override]
        return all(f.volume_preserving for f in self.flow_list)

    def row_shape(self, shape: RowShape, inverse: bool = False) -> RowShape:
        """See `Flow.row_shape`: the layers' shapes in turn (backwards for the inverse), so that a layer of known
        dimensions (a MAF's vectors, a `Squeeze`'s images, a `Flatten`'s output) fixes the rows it passes on."""
        for flow in reversed(self.flow_list) if inverse else self.flow_list:
            shape = flow.row_shape(shape, inverse)
        return shape
