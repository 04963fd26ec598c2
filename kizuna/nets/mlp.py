"""`MLP`: a stack of linear layers with an activation between them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from kizuna._data import check_int


def new_activation(what: str, activation: Any, module: bool = True) -> Callable[..., Any]:
    """``activation()``: a new activation layer from a module class (``nn.Tanh``) or a function of no arguments that
    returns one (``functools.partial(nn.LeakyReLU, 0.2)``); with ``module=False`` (`MADE`) any callable it returns.

    Raises:
        TypeError: naming ``activation``: an instance such as ``nn.Tanh()`` (the networks make one per layer from the
            class ``nn.Tanh``), something not callable, or a callable that needs arguments (``torch.tanh``) or
            returns no module.
    """
    if isinstance(activation, nn.Module):  # (raised "Tanh.forward() missing 1 required positional argument")
        name = ("nn." if type(activation).__module__.startswith("torch.nn") else "") + type(activation).__name__
        raise TypeError(f"{what}: activation must be a module class such as {name} (not an instance, "
                        f"{name}()) or a function returning a new module; got {activation!r}")
    if not callable(activation):
        raise TypeError(f"{what}: activation must be a module class such as nn.Tanh (not an instance, nn.Tanh()) "
                        f"or a function returning a new module; got {activation!r}")
    try:
        layer = activation()
    except TypeError as err:
        raise TypeError(f"{what}: activation must be a module class such as nn.Tanh (not nn.Tanh()) or a function of "
                        f"no arguments returning a new module; calling {activation!r}() failed: {err}") from err
    if not (isinstance(layer, nn.Module) if module else callable(layer)):
        raise TypeError(f"{what}: activation() must return a {'module' if module else 'callable'} (give a module "
                        f"class such as nn.Tanh), got {type(layer).__name__} from {activation!r}")
    return layer


class MLP(nn.Sequential):
    """``MLP(784, 512, 128)``: Linear(784, 512) -> activation -> Linear(512, 128).

    No activation after the last layer (the distribution maps outputs to parameters). ``activation`` is a module
    class (``nn.Tanh``, not ``nn.Tanh()``) or a function of no arguments returning a new module: each hidden layer
    gets its own (`new_activation`; checked even without a hidden layer).
    """

    def __init__(self, *sizes: int, activation: type[nn.Module] | Callable[[], nn.Module] = nn.ReLU) -> None:
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least an input and an output size, got {sizes}")
        for i, size in enumerate(sizes):  # (0 gave a constant network, -1 / 2.5 / "4" raw torch errors)
            check_int(f"MLP: sizes[{i}]", size, 1)
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) == 2:  # no hidden layer: checked all the same (an instance was accepted silently)
            new_activation("MLP", activation)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(new_activation("MLP", activation))
        super().__init__(*layers)
