"""`MLP`: a stack of linear layers with an activation between them."""

from __future__ import annotations

from torch import nn

from kizuna._data import check_int


class MLP(nn.Sequential):
    """``MLP(784, 512, 128)``: Linear(784, 512) -> activation -> Linear(512, 128).

    No activation after the last layer (the distribution maps outputs to parameters).
    """

    def __init__(self, *sizes: int, activation: type[nn.Module] = nn.ReLU) -> None:
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least an input and an output size, got {sizes}")
        for i, size in enumerate(sizes):  # (0 gave a constant network, -1 / 2.5 / "4" raw torch errors)
            check_int(f"MLP: sizes[{i}]", size, 1)
        sizes = tuple(int(s) for s in sizes)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)
