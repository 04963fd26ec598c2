"""`kizuna.nets.UNet`: the time-conditioned U-Net noise network of image diffusion models.

References: finite differences (``torch.autograd.gradcheck``) for the gradient, the network's definition for its
shapes and skip connections (every resolution's activation reaches the way up), and the simple diffusion loss of
predicting zero (1 per entry) for learning.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kizuna.datasets import load_digits
from kizuna.distributions import DiffusionReverse, DiffusionSchedule
from kizuna.losses import simple_diffusion_loss
from kizuna.models import Model
from kizuna.nets import UNet


def _random_output(net: UNet, seed: int = 0) -> UNet:
    """The output convolution starts at zero; give it random weights to see through it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.out.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return net


@pytest.mark.parametrize(("shape", "mults", "blocks"), [((1, 8, 8), (1, 2), 1), ((3, 16, 12), (1, 2, 3), 2),
                                                         ((1, 28, 28), (1, 2, 2), 1), ((2, 5, 7), (1,), 1)])
def test_output_has_the_inputs_shape_flat_or_as_images_and_starts_at_zero(shape, mults, blocks) -> None:
    torch.manual_seed(0)
    net = UNet(shape, channels=8, channel_mults=mults, blocks=blocks)
    x = torch.randn(3, *shape)
    t = torch.tensor([1, 500, 1000])
    assert torch.equal(net(x, t), torch.zeros_like(x))  # zero-initialised output: an untrained net predicts 0
    _random_output(net)
    out = net(x, t)
    assert out.shape == x.shape
    torch.testing.assert_close(net(x.flatten(1), t), out.flatten(1))  # flat rows are the same images


def test_the_output_depends_on_the_step_and_on_distant_pixels() -> None:
    torch.manual_seed(0)
    net = _random_output(UNet((1, 8, 8), channels=8, channel_mults=(1, 2)).eval())
    x = torch.randn(1, 1, 8, 8)
    t = torch.tensor([10])
    base = net(x, t)
    assert (net(x, torch.tensor([900])) - base).abs().max() > 1e-3  # conditioned on t
    moved = x.clone()
    moved[0, 0, 7, 7] += 1.0  # one corner pixel: through the 4×4 level it reaches the opposite corner
    assert (net(moved, t) - base)[0, 0, 0, 0].abs() > 1e-6


def test_gradient_is_finite_differences() -> None:
    torch.manual_seed(0)
    net = _random_output(UNet((1, 4, 4), channels=4, channel_mults=(1, 2), n_freq=4).double())
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([3, 700])
    assert torch.autograd.gradcheck(lambda v: net(v, t), (x,), eps=1e-6, atol=1e-5)
    # and with respect to the parameters, through every block
    w = net.down[0].conv1.weight
    assert torch.autograd.gradcheck(lambda v: torch.func.functional_call(net, {"down.0.conv1.weight": v}, (x, t)),
                                    (w.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"image_shape": (8, 8)}, r"image_shape must be \(channels, height, width\)"),
    ({"image_shape": (1, 6, 6), "channel_mults": (1, 2, 2)}, "must be divisible by 4"),
    ({"image_shape": (1, 8, 8), "channel_mults": ()}, "channel_mults"),
    ({"image_shape": (1, 8, 8), "blocks": 0}, r"^UNet: blocks must be an integer >= 1, got 0$"),
    # before: n_freq=0 built a network that ignores t, the others failed with raw torch errors
    ({"image_shape": (1, 8, 8), "n_freq": 0}, r"^UNet: n_freq must be an integer >= 1, got 0$"),
    ({"image_shape": (1, 8, 8), "out_channels": 0}, r"^UNet: out_channels must be an integer >= 1, got 0$"),
    ({"image_shape": (1, 8, 8), "channels": 2.5}, r"^UNet: channels must be an integer >= 1, got 2.5$"),
    ({"image_shape": (1, 8, 8), "channel_mults": (1, -2)}, r"^UNet: channel_mults\[1\] must be an integer >= 1"),
    ({"image_shape": (1, 8, 8), "max_period": float("nan")}, r"^UNet: max_period must be a finite number > 1"),
])
def test_bad_arguments_are_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)


def test_inputs_of_another_shape_are_named() -> None:
    net = UNet((1, 8, 8), channels=8)
    with pytest.raises(ValueError, match=r"rows of 63 values, but image_shape \(1, 8, 8\) has 64"):
        net(torch.zeros(2, 63), torch.ones(2))
    with pytest.raises(ValueError, match=r"x must be \(N, 1, 8, 8\) or flat rows, got \(2, 1, 4, 16\)"):
        net(torch.zeros(2, 1, 4, 16), torch.ones(2))
    with pytest.raises(ValueError, match=r"t must be one number or one per row \(2\), got shape \(3,\)"):
        net(torch.randn(2, 64), torch.ones(3))


def test_it_learns_the_noise_of_the_digits() -> None:
    """As the DDPM's noise network on the digits: 120 Adam steps take the simple loss (the squared error of the
    predicted noise summed over the 64 pixels, whose expectation for predicting zero is 64) well below that of the
    untrained net."""
    torch.manual_seed(0)
    x = load_digits()[0] * 2 - 1
    reverse = DiffusionReverse(UNet((1, 8, 8), channels=8, channel_mults=(1, 2)), DiffusionSchedule.linear(1000))
    loss = simple_diffusion_loss(reverse).mean()
    model = Model(loss, distributions=[reverse], optimizer_params={"lr": 3e-3})
    g = torch.Generator().manual_seed(0)
    held_out = {"x_0": x[:256]}
    torch.manual_seed(1)
    before = model.test(held_out).item()
    for _ in range(120):
        model.train({"x_0": x[256:][torch.randint(0, len(x) - 256, (64,), generator=g)]})
    torch.manual_seed(1)
    after = model.test(held_out).item()
    assert before == pytest.approx(64.0, rel=0.05)  # the zero prediction: E||eps||^2 = D
    assert after < 0.25 * before  # 10.6 here


def test_time_scale_multiplies_the_step_before_the_embedding() -> None:
    """A time in [0, 1] (flow matching) with ``time_scale=1000`` is the step ``1000 t`` of the default network."""
    torch.manual_seed(0)
    scaled = _random_output(UNet((1, 8, 8), channels=8, time_scale=1000.0))
    plain = UNet((1, 8, 8), channels=8)
    plain.load_state_dict(scaled.state_dict())
    x, t = torch.randn(4, 64), torch.rand(4)
    torch.testing.assert_close(scaled(x, t), plain(x, t * 1000))
    assert (scaled(x, t) - plain(x, t)).abs().max() > 1e-4


def test_the_examples_build_their_u_nets_for_each_option() -> None:
    """`examples/diffusion.py`'s ``--net unet`` (with ``--variance learned``: ε and v side by side, which
    `DiffusionReverse` reads and whose v = 1 ends give σ² = β_t) and `examples/flow_matching.py`'s ``--net unet``
    take the digits' flat rows; an unknown choice is named."""
    from example_loader import load_example

    diffusion, flow = load_example("diffusion"), load_example("flow_matching")
    x, t = torch.randn(3, 64), torch.tensor([1, 10, 1000])
    assert diffusion.eps_net("unet", "digits", 64, 8)(x, t).shape == (3, 64)
    two = diffusion.eps_net("unet", "digits", 64, 8, heads=2)
    assert two(x, t).shape == (3, 128)
    schedule = DiffusionSchedule.linear(1000)
    _, var = DiffusionReverse(two, schedule, variance="learned").mean_and_variance(x, t)
    # the zero-initialised output is v = 0: halfway between log β_t and log β̃_t, the geometric mean of the two
    _, beta = DiffusionReverse(two, schedule, variance="beta").mean_and_variance(x, t, eps=torch.zeros_like(x))
    _, post = DiffusionReverse(two, schedule, variance="posterior").mean_and_variance(x, t, eps=torch.zeros_like(x))
    torch.testing.assert_close(var, (beta * post).sqrt().expand_as(x))
    velocity = flow.velocity_net("unet", 64, 8)
    assert velocity(x, torch.rand(3)).shape == (3, 64) and velocity.time_scale == 1000.0
    for make in (lambda: diffusion.eps_net("cnn", "digits", 64, 8), lambda: flow.velocity_net("cnn", 64, 8)):
        with pytest.raises(ValueError, match="unknown .* network 'cnn'"):
            make()


def test_a_number_step_is_the_step_of_every_row():
    torch.manual_seed(0)
    net = UNet((1, 8, 8), channels=16, channel_mults=(1, 2))
    with torch.no_grad():
        for p in net.parameters():  # away from the zero-initialised output
            p.add_(0.01 * torch.randn_like(p))
        x = torch.randn(3, 64)
        assert torch.equal(net(x, 5), net(x, torch.full((3,), 5)))


@pytest.mark.parametrize(("sizes", "message"), [
    ((3, 0, 2), r"^MLP: sizes\[1\] must be an integer >= 1, got 0$"),
    ((3, -1), r"^MLP: sizes\[1\] must be an integer >= 1, got -1$"),
    ((3, 2.5), r"^MLP: sizes\[1\] must be an integer >= 1, got 2.5$"),
    ((3, "4"), r"^MLP: sizes\[1\] must be an integer >= 1, got '4'$"),
])
def test_mlp_sizes_are_checked(sizes, message) -> None:
    """``MLP(3, 0, 2)`` built a network whose output ignores its input; the others failed inside torch."""
    from kizuna.nets import MLP

    with pytest.raises(ValueError, match=message):
        MLP(*sizes)
    assert MLP(3, np.int64(4), 2)(torch.zeros(5, 3)).shape == (5, 2)
