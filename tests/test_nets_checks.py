"""kizuna.nets: the activation is a class (or a factory), not an instance; `UNet`'s step ``t`` has one of the
documented shapes and is finite."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from kizuna.nets import MADE, MLP, UNet


@pytest.mark.parametrize("make", [
    lambda: MLP(3, 2, activation=nn.Tanh()),  # no hidden layer: accepted silently before
    lambda: MLP(3, 4, 2, activation=nn.Tanh()),  # "Tanh.forward() missing 1 required positional argument" before
    lambda: MADE(3, [4], activation=nn.Tanh()),
])
def test_an_activation_instance_is_refused_naming_the_class_to_give(make) -> None:
    with pytest.raises(TypeError) as err:
        make()
    message = str(err.value)
    assert message.startswith(("MLP: activation must be", "MADE: activation must be"))
    assert "a module class such as nn.Tanh (not an instance, nn.Tanh())" in message and message.endswith("got Tanh()")


@pytest.mark.parametrize("make", [
    lambda a: MLP(3, 2, activation=a),
    lambda a: MLP(3, 4, 2, activation=a),
    lambda a: MADE(3, [4], activation=a),
])
def test_an_activation_that_makes_no_module_is_refused(make) -> None:
    with pytest.raises(TypeError, match=r"activation must be a module class such as nn.Tanh .* got 'tanh'$"):
        make("tanh")
    with pytest.raises(TypeError, match=r"activation must be .* calling .*tanh.*\(\) failed"):
        make(torch.tanh)  # a function of the input, not a factory


def test_activation_classes_and_factories_still_work() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    net = MLP(3, 4, 4, 2, activation=nn.Tanh)
    assert [type(m) for m in net] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert net[1] is not net[3]  # one module per hidden layer
    torch.testing.assert_close(net(x), net[4](torch.tanh(net[2](torch.tanh(net[0](x))))), rtol=0, atol=0)
    leaky = MLP(3, 4, 2, activation=functools.partial(nn.LeakyReLU, 0.2))
    assert isinstance(leaky[1], nn.LeakyReLU) and leaky[1].negative_slope == 0.2
    assert [type(m) for m in MLP(3, 2, activation=nn.Tanh)] == [nn.Linear]
    made = MADE(3, [8], activation=nn.Tanh)
    assert isinstance(made.activation, nn.Tanh)
    functional = MADE(3, [8], activation=lambda: torch.tanh)  # a factory returning a function: taken before, kept
    assert functional.activation is torch.tanh and functional(x).shape == (5, 1, 3)


def _net() -> UNet:
    torch.manual_seed(0)
    net = UNet((1, 8, 8), channels=8, channel_mults=(1, 2)).double().eval()
    with torch.no_grad():
        for p in net.out.parameters():  # away from the zero-initialised output
            p.add_(torch.randn_like(p))
    return net


def test_unet_takes_the_documented_shapes_of_t_and_refuses_others() -> None:
    net, x = _net(), torch.randn(4, 1, 8, 8, dtype=torch.float64)
    steps = torch.tensor([1.0, 50.0, 300.0, 999.0], dtype=torch.float64)
    per_row = net(x, steps)
    # the reference: each row alone with its own step
    rows = torch.cat([net(x[i:i + 1], steps[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(per_row, rows, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net(x, steps[:, None]), per_row, rtol=1e-12, atol=1e-12)  # (N, 1)
    every = net(x, 7)
    for t in (torch.tensor(7), torch.tensor([7]), torch.tensor([[7]]), torch.full((4,), 7)):
        torch.testing.assert_close(net(x, t), every, rtol=1e-12, atol=1e-12)
    for shape in ((2, 2), (1, 4), (4, 1, 1), (3,), (3, 1)):
        with pytest.raises(ValueError, match=r"^UNet: t must be one number or one per row \(4\), got shape "
                                             + r"\(" + ", ".join(map(str, shape)) + r",?\); give shape \(\), \(1,\), "
                                             r"\(1, 1\), \(4,\) or \(4, 1\)$"):
            net(x, torch.ones(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_unet_refuses_a_step_that_is_not_finite(bad) -> None:
    """A NaN step gave an output all NaN, silently."""
    net, x = _net(), torch.randn(3, 64, dtype=torch.float64)
    for t in (torch.tensor(bad), torch.tensor([1.0, bad, 3.0])):
        with pytest.raises(ValueError, match=r"^UNet: t has a NaN or infinite step; give finite steps$"):
            net(x, t)
    assert torch.isfinite(net(x, torch.tensor([1, 2, 3]))).all()  # integer steps: nothing to check
