"""Stop 43, area G: the WGAN-GP critic loss inside ``torch.inference_mode()``, ``GAN(data_term=False)`` with a
batch-normalised discriminator, and a GAN whose networks and constant prior are in different dtypes or devices.

References: the critic loss and its gradient penalty written by hand in PyTorch (autograd for the input gradient)
from the same draws; BatchNorm's running-mean update ``(1 - m) r + m mean`` in closed form; the exact error texts.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kizuna.distributions import Bernoulli, Deterministic, Normal
from kizuna.losses import AdversarialWassersteinDistance
from kizuna.models import GAN

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest's fixture)


class CondG(Deterministic):
    """:math:`x = W [z, y] + b`."""

    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z", "y"], name="g")
        self.net = nn.Linear(4, 3)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.net(torch.cat([z, y], -1))}


class CondCritic(Deterministic):
    """:math:`f(x, y) = \\mathrm{MLP}(x \\odot y)`: the product saves ``y`` for backward (an inference tensor
    cannot be saved)."""

    def __init__(self) -> None:
        super().__init__(var=["t"], cond_var=["x", "y"], name="f")
        self.net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"t": self.net(x * y)}


def _wgan_gp(d_steps: int = 1) -> tuple[GAN, CondG, CondCritic]:
    torch.manual_seed(0)
    g, c = CondG().double(), CondCritic().double()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="p_prior").to(F64)
    model = GAN((g * prior).marginalize_var("z"), c, adversarial=AdversarialWassersteinDistance, d_steps=d_steps,
                optimizer_params={"lr": 1e-2}, d_optimizer_params={"lr": 1e-2})
    return model, g, c


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {"x": torch.randn(6, 3, generator=gen, dtype=F64), "y": torch.randn(6, 3, generator=gen, dtype=F64)}


def _hand_critic_loss(g: CondG, c: CondCritic, x: torch.Tensor, y: torch.Tensor, lam: float = 10.0) -> float:
    """The WGAN-GP critic loss written by hand, drawing as the loss does: z ~ N(0, 1), then one weight per row."""
    z = torch.randn(x.shape[0], 1, dtype=F64)
    with torch.no_grad():
        fake = g.net(torch.cat([z, y], -1))
        eps = torch.rand(x.shape[0], 1, dtype=F64)
        gap = c.net(fake * y).mean() - c.net(x * y).mean()
    with torch.enable_grad():
        mixed = (eps * x + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(c.net(mixed * y).sum(), mixed)
    return (gap + lam * ((grad.norm(dim=1) - 1) ** 2).mean()).item()


def test_the_wgan_gp_critic_loss_inside_inference_mode_equals_the_no_grad_value_and_the_hand_written_one() -> None:
    """The gradient penalty takes its input gradient inside ``torch.inference_mode()`` too (it raised torch's bare
    "element 0 of tensors does not require grad"): ``GAN.test``, ``GAN.evaluate``, ``loss_test`` and
    ``d_loss().eval`` give there exactly the values of ``torch.no_grad()``, which equal the hand-written critic loss;
    data and conditions made inside inference mode are inference tensors (``y`` is saved by the critic's product)."""
    model, g, c = _wgan_gp()
    batch = _batch()
    model.train(batch)
    loss = model.loss_cls
    c.eval()
    torch.manual_seed(5)
    hand = _hand_critic_loss(g, c, batch["x"], batch["y"])

    def evaluations() -> list[float]:
        torch.manual_seed(5)
        g_loss, d_loss = model.test(batch_here())
        torch.manual_seed(5)
        evaluated = model.evaluate(batch_here())
        torch.manual_seed(5)
        tested = loss.loss_test(batch_here())
        torch.manual_seed(5)
        direct = loss.d_loss().eval(batch_here())
        return [g_loss.item(), d_loss.item(), evaluated.loss, evaluated.terms["d_loss"], tested.item(), direct.item()]

    batch_here = lambda: batch  # noqa: E731
    with torch.no_grad():
        reference = evaluations()
    with torch.inference_mode():
        batch_here = lambda: {k: v.clone() for k, v in batch.items()}  # noqa: E731 (inference tensors)
        assert all(v.is_inference() for v in batch_here().values())
        inside = evaluations()
    assert inside == reference
    # loss_test and d_loss().eval draw first, as the hand-written loss (test() and evaluate() draw the generator's
    # loss first)
    for value in reference[4:]:
        assert value == pytest.approx(hand, rel=1e-12, abs=1e-12)
    assert not c.training  # (loss_test set eval mode; the hand value used it too)


def test_the_gradient_penalty_still_trains_the_critic_as_written_by_hand() -> None:
    """The penalty's graph (``create_graph``) is kept when gradients are on: a critic step equals the hand-written
    step on the same draws (the penalty's parameters' gradient goes through the double backward)."""
    model, g, c = _wgan_gp()
    batch = _batch()
    c_ref = CondCritic().double()
    c_ref.load_state_dict(c.state_dict())
    opt = torch.optim.Adam(c_ref.parameters(), lr=1e-2)
    x, y = batch["x"], batch["y"]
    torch.manual_seed(9)
    z = torch.randn(6, 1, dtype=F64)
    with torch.no_grad():
        fake = g.net(torch.cat([z, y], -1))
    eps = torch.rand(6, 1, dtype=F64)
    mixed = (eps * x + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(c_ref.net(mixed * y).sum(), mixed, create_graph=True)
    hand = c_ref.net(fake * y).mean() - c_ref.net(x * y).mean() + 10 * ((grad.norm(dim=1) - 1) ** 2).mean()
    opt.zero_grad()
    hand.backward()
    opt.step()
    torch.manual_seed(9)
    d_loss = model.train_discriminator(batch)
    assert d_loss.item() == pytest.approx(hand.item(), rel=1e-12)
    for u, w in zip(c.parameters(), c_ref.parameters()):
        torch.testing.assert_close(u, w, rtol=0, atol=1e-14)


class BNG(Deterministic):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="g")
        self.net = nn.Linear(2, 3)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.net(z)}


class BND(Bernoulli):
    """A discriminator with batch normalisation (no random numbers)."""

    def __init__(self) -> None:
        super().__init__(var=["t"], cond_var=["x"], name="d")
        self.net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def _bn_gans() -> tuple[GAN, GAN, BND, BND]:
    torch.manual_seed(0)
    g1, d1 = BNG().double(), BND().double()
    g2, d2 = BNG().double(), BND().double()
    g2.load_state_dict(g1.state_dict())
    d2.load_state_dict(d1.state_dict())
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior").to(F64)
    full = GAN((g1 * prior).marginalize_var("z"), d1)
    short = GAN((g2 * prior).marginalize_var("z"), d2, data_term=False)
    return full, short, d1, d2


def test_data_term_false_with_a_batch_norm_discriminator_keeps_the_parameters_not_the_running_statistics() -> None:
    """As the docstring now says: the same parameters of both players bitwise, but the data term's forward (training
    mode) updates the discriminator's BatchNorm running mean once more per generator step, by the closed form
    ``r_full = (1 - m) ((1 - m) r0 + m mean(data)) + m mean(fake)`` against ``r_short = (1 - m) r0 + m mean(fake)``;
    so the validation losses, which run the discriminator in evaluation mode, differ."""
    assert "running statistics" in GAN.__doc__ and "validation losses" in GAN.__doc__
    full, short, d1, d2 = _bn_gans()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=gen, dtype=F64) + 2
    bn1, bn2 = d1.net[1], d2.net[1]
    m = bn1.momentum
    torch.manual_seed(7)
    full.train_discriminator({"x": x})
    torch.manual_seed(7)
    short.train_discriminator({"x": x})
    assert torch.equal(bn1.running_mean, bn2.running_mean)  # the discriminator steps are the same
    r0 = bn1.running_mean.clone()
    with torch.no_grad():
        data_mean = d1.net[0](x).mean(0)
    torch.manual_seed(8)
    full.train({"x": x}, adversarial_loss=False)  # the generator's step alone
    torch.manual_seed(8)
    short.train({"x": x}, adversarial_loss=False)
    fake_part = bn2.running_mean - (1 - m) * r0  # m mean(fake)
    torch.testing.assert_close(bn1.running_mean, (1 - m) * ((1 - m) * r0 + m * data_mean) + fake_part,
                               rtol=0, atol=1e-14)
    assert not torch.allclose(bn1.running_mean, bn2.running_mean)
    # fit with validation: parameters bitwise equal, buffers and validation d_loss differ
    full, short, d1, d2 = _bn_gans()
    valid = {"x": torch.randn(5, 3, generator=gen, dtype=F64) + 2}
    data = {"x": torch.randn(20, 3, generator=gen, dtype=F64) + 2}
    h1 = full.fit(data, epochs=2, batch_size=5, valid=valid, quiet=True, seed=0)
    h2 = short.fit(data, epochs=2, batch_size=5, valid=valid, quiet=True, seed=0)
    for u, w in zip([*full.p.parameters(), *d1.parameters()], [*short.p.parameters(), *d2.parameters()]):
        assert torch.equal(u, w)
    assert not torch.equal(d1.net[1].running_mean, d2.net[1].running_mean)
    assert h1.valid_terms["d_loss"] != h2.valid_terms["d_loss"]


class G(Deterministic):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="g")
        self.net = nn.Linear(2, 3)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.net(z)}


class C(Deterministic):
    def __init__(self) -> None:
        super().__init__(var=["t"], cond_var=["x"], name="f")
        self.net = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"t": self.net(x)}


@pytest.mark.parametrize("adversarial", [None, AdversarialWassersteinDistance])
def test_a_float64_gan_with_a_float32_constant_prior_names_the_prior_and_the_conversion(adversarial) -> None:
    """Networks made ``.double()`` with the constant prior left in float32: a ValueError naming the prior, both
    dtypes and the ``.to()`` that converts it (torch's bare "mat1 and mat2 must have the same dtype" from the
    generator's first layer, chained); converted, it trains."""
    kw = {} if adversarial is None else {"adversarial": adversarial}
    disc = C().double() if adversarial is not None else BND().double()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    model = GAN((G().double() * prior).marginalize_var("z"), disc, **kw)
    x = {"x": torch.randn(4, 3, dtype=F64)}
    with pytest.raises(ValueError) as info:
        model.train(x)
    assert str(info.value) == (
        f"{model.loss_cls}: g(x) cannot draw: its parameters are torch.float64 on cpu, but the constants of "
        "p_{prior}(z) are torch.float32 on cpu (convert it too: its .to(torch.float64)): a distribution without "
        "parameters is not converted by the networks' .double() / .to()")
    assert isinstance(info.value.__cause__, RuntimeError) and "dtype" in str(info.value.__cause__)
    prior.to(torch.float64)
    g_loss, d_loss = model.train(x)
    assert g_loss.dtype == d_loss.dtype == F64


def test_networks_on_another_device_than_the_constant_prior_name_the_device() -> None:
    """The same for a device (``meta`` stands in for a GPU): the error names ``.to('meta')``."""
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    model = GAN((G().to("meta") * prior).marginalize_var("z"), C().to("meta"),
                adversarial=AdversarialWassersteinDistance)
    with pytest.raises(ValueError, match=r"g\(x\) cannot draw: its parameters are torch\.float32 on meta, but the "
                                         r"constants of p_\{prior\}\(z\) are torch\.float32 on cpu \(convert it too: "
                                         r"its \.to\('meta'\)\)"):
        model.loss_cls.eval({"x": torch.randn(4, 3, device="meta")})


def test_other_draw_errors_are_left_as_they_were() -> None:
    """A failure that is not a dtype or device mismatch (a generator of the wrong width) keeps torch's own error,
    and a prior in the networks' dtype is not blamed for a dtype error elsewhere."""
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[5], name="p_prior")
    model = GAN((G() * prior).marginalize_var("z"), C(), adversarial=AdversarialWassersteinDistance)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        model.train({"x": torch.randn(4, 3)})

    class Half(G):
        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"x": self.net(z.double())}

    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    model = GAN((Half() * prior).marginalize_var("z"), C(), adversarial=AdversarialWassersteinDistance)
    with pytest.raises(RuntimeError, match="must have the same dtype"):
        model.train({"x": torch.randn(4, 3)})
