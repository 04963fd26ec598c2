r"""MADE: a masked autoencoder whose outputs are autoregressive (Germain et al. 2015, arXiv:1502.03509).

Each input :math:`i` gets a degree :math:`m(i) \in \{1..D\}`, its position in the ``order``; each
hidden unit a degree :math:`m(k)`. A weight from unit :math:`a` to hidden unit :math:`k` is kept when
:math:`m(k) \ge m(a)`, and a weight from hidden unit :math:`k` to output :math:`i` when
:math:`m(i) > m(k)`. Every path from input :math:`j` to output :math:`i` then has
:math:`m(j) \le \dots < m(i)`, so

.. math:: \frac{\partial\, \mathrm{out}_i}{\partial x_j} = 0 \quad \text{unless } m(j) < m(i).

Hidden degrees are spread cyclically over :math:`1..D-1` (deterministic: no random connectivity to
seed). A context vector (conditional MADE) feeds the first hidden layer without a mask; its units
may then take degree 0, so even the first output in the order depends on the context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from kizuna._data import check_context, check_count, check_int
from kizuna.nets.mlp import new_activation

Tensor = torch.Tensor


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 ``mask`` of shape ``(out, in)``."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        if mask.shape != (out_features, in_features):
            expected = (out_features, in_features)
            raise ValueError(f"MaskedLinear: mask has shape {tuple(mask.shape)}, expected {expected}")
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def _order(order: Sequence[int] | Tensor | None, n: int) -> Tensor:
    if order is None:
        return torch.arange(n)
    given = torch.as_tensor(order)
    if given.dtype == torch.bool or given.is_floating_point() or given.is_complex():  # ([0.9, 1.2] was [0, 1])
        raise ValueError(f"MADE: order must be a permutation of 0..{n - 1} (integers), got {given.tolist()}")
    order = given.long()
    if order.dim() != 1:  # a 2-D order was flattened silently
        raise ValueError(f"MADE: order must be one permutation of 0..{n - 1} (1-D), got shape {tuple(order.shape)}")
    if order.numel() != n or not torch.equal(order.sort().values, torch.arange(n)):
        raise ValueError(f"MADE: order must be a permutation of 0..{n - 1}, got {order.tolist()}")
    return order


class MADE(nn.Module):
    """Masked autoregressive network ``x (B, D) -> (B, n_params, D)`` (module docstring).

    Args:
        in_features: :math:`D`.
        hidden_features: sizes of the hidden layers (at least one, each at least 1).
        n_params: outputs per input (e.g. 2 for a Gaussian's mean and log-scale).
        context_features: size of an optional context vector (0: none).
        order: the autoregressive order: ``order[k]`` is the input that comes ``k``-th (default
            ``0..D-1``).
        activation: the hidden non-linearity: a module class (``nn.Tanh``, not ``nn.Tanh()``) or a function of no
            arguments returning one (a TypeError otherwise).

    >>> import torch
    >>> net = MADE(3, [16], n_params=2)
    >>> net(torch.randn(5, 3)).shape
    torch.Size([5, 2, 3])
    """

    def __init__(self, in_features: int, hidden_features: Sequence[int] = (64,), n_params: int = 1,
                 context_features: int = 0, order: Sequence[int] | Tensor | None = None,
                 activation: type[nn.Module] | Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        if isinstance(hidden_features, int | str) or not isinstance(hidden_features, Iterable):
            # (MADE(3, 4): "'int' object is not iterable")
            raise TypeError(f"MADE: hidden_features must be a sequence of layer sizes, e.g. [{hidden_features!r}], "
                            f"got {hidden_features!r}")
        hidden = list(hidden_features)
        if not hidden:
            raise ValueError("MADE: give at least one hidden layer")
        check_int("MADE: in_features", in_features, 1)  # (None: a raw TypeError from int())
        check_int("MADE: n_params", n_params, 1)
        check_count("MADE: context_features", context_features, 0)
        for i, size in enumerate(hidden):  # a zero-width layer cuts every input off the outputs
            check_count(f"MADE: hidden_features[{i}]", size, 1)
        # context_features=None: no context, as 0 (it was taken so before the checks)
        in_features, n_params, context_features = int(in_features), int(n_params), int(context_features or 0)
        hidden = [int(size) for size in hidden]
        self.in_features, self.n_params, self.context_features = in_features, n_params, context_features
        self.register_buffer("order", _order(order, in_features))
        degrees_in = torch.empty(in_features, dtype=torch.long)
        degrees_in[self.order] = torch.arange(1, in_features + 1)
        self.register_buffer("degrees", degrees_in)
        # hidden degrees cycle over 1..D-1 (0..D-1 with a context: degree-0 units see only the context)
        low = 0 if context_features else 1
        span = max(in_features - low, 1)
        layers: list[nn.Module] = []
        previous = degrees_in
        for size in hidden:
            deg = torch.arange(size) % span + low
            layers.append(MaskedLinear(previous.numel(), size, (deg[:, None] >= previous[None, :]).float()))
            previous = deg
        out_deg = degrees_in.repeat(n_params)
        self.hidden = nn.ModuleList(layers)
        out_mask = (out_deg[:, None] > previous[None, :]).float()
        self.output = MaskedLinear(previous.numel(), n_params * in_features, out_mask)
        self.context = nn.Linear(context_features, hidden[0]) if context_features else None
        self.activation = new_activation("MADE", activation, module=False)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"MADE: x must be (batch, {self.in_features}), got {tuple(x.shape)}")
        check_context("MADE", context, self.context_features, x.shape[0], broadcast=True)
        h = x
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and self.context is not None:
                h = h + self.context(context.reshape(context.shape[0], self.context_features))
            h = self.activation(h)
        return self.output(h).reshape(x.shape[0], self.n_params, self.in_features)
