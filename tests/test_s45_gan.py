"""Stop 45, review N: the `GAN` preset with a layer shared by the generator and the discriminator, and its draws.

References: a hand-written PyTorch loop with two optimisers (the generator's holding the shared layer, the
discriminator's too), fed the same random stream, in float64; and `GAN.fit` against a `GAN.train` loop on the model's
own stream (a single process draws as before the data-parallel ranks got streams of their own). The data-parallel
checks (2 gloo ranks: the ranks' generator noise, the averaged gradient, a resumed run) run in the worker of
``tests/test_s45_fit.py``, with the model built here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kizuna.distributions import Bernoulli, Deterministic, Normal
from kizuna.models import GAN

F64 = torch.float64
ZD, XD, B = 2, 3, 6


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)


def gen_x(g, z):
    return g.sh(torch.tanh(g.net(z)))


def disc_logit(d, x):
    return d.out(d.drop(torch.tanh(d.sh(x))))


class Gen(Deterministic):
    """x = shared(tanh(net(z))): the shared layer is the generator's last."""

    def __init__(self, shared):
        super().__init__(var=["x"], cond_var=["z"], name="g")
        self.net, self.sh = nn.Linear(ZD, XD), shared
        self.seen = []  # the noise of every forward (for the data-parallel checks)

    def forward(self, z):
        self.seen.append(z.detach().clone())
        return {"x": gen_x(self, z)}


class Disc(Bernoulli):
    """logit = out(dropout(tanh(shared(x)))): the shared layer is the discriminator's first (or its own)."""

    def __init__(self, shared, dropout=0.0):
        super().__init__(var=["t"], cond_var=["x"], name="d")
        self.sh, self.drop, self.out = shared, nn.Dropout(dropout), nn.Linear(XD, 1)

    def forward(self, x):
        return {"logits": disc_logit(self, x)}


def build_gan(shared=True, optimizer=torch.optim.SGD, lr=0.1, dropout=0.0, **options):
    """A GAN whose players share a layer (or not); the modules built from seed 0, float64."""
    torch.manual_seed(0)
    layer = nn.Linear(XD, XD)
    g, d = Gen(layer).double(), Disc(layer if shared else nn.Linear(XD, XD), dropout).double()
    prior = Normal(var=["z"], loc=torch.zeros(ZD, dtype=F64), scale=torch.ones(ZD, dtype=F64), name="p_z")
    model = GAN((g * prior).marginalize_var("z"), d, optimizer=optimizer, optimizer_params={"lr": lr},
                d_optimizer=optimizer, d_optimizer_params={"lr": lr}, **options)
    return model, g, d


def gan_data(n=8):
    return {"x": torch.randn(n, XD, dtype=F64, generator=torch.Generator().manual_seed(5)) + 1}


def hand_written(g, d, batches, d_steps, data_term, optimizer):
    """The textbook loop: the discriminator's steps on detached fakes, then the generator's step on the non-saturating
    loss (with Pixyz's data term when asked); each optimiser over all of its player's parameters."""
    og, od = optimizer(g.parameters(), lr=0.1), optimizer(d.parameters(), lr=0.1)
    for real in batches:
        for _ in range(d_steps):
            z = torch.randn(real.shape[0], ZD, dtype=F64)
            with torch.no_grad():
                fake = gen_x(g, z)
            loss = -(F.logsigmoid(disc_logit(d, real)).mean() + F.logsigmoid(-disc_logit(d, fake)).mean())
            od.zero_grad()
            loss.backward()
            od.step()
        z = torch.randn(real.shape[0], ZD, dtype=F64)
        loss = -F.logsigmoid(disc_logit(d, gen_x(g, z))).mean()
        if data_term:  # -E_data[log(1 - d)]: no gradient for the generator, but one for the shared layer
            loss = -F.logsigmoid(-disc_logit(d, real)).mean() + loss
        og.zero_grad()
        loss.backward()
        og.step()


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam])
@pytest.mark.parametrize("method", ["train", "step"])
@pytest.mark.parametrize("data_term,d_steps", [(True, 1), (False, 1), (True, 2)])
def test_a_layer_shared_by_both_players_gets_the_generator_step_too(method, data_term, d_steps, optimizer):
    """The shared layer is in both optimisers: the generator's step updates it with the generator loss's gradient
    (through both networks). It was frozen with the discriminator's parameters, so only the discriminator trained
    it (with SGD the generator's step left it exactly as it was)."""
    model, g, d = build_gan(optimizer=optimizer, d_steps=d_steps, data_term=data_term)
    _, g_ref, d_ref = build_gan()
    assert g.sh is d.sh and g_ref.sh is d_ref.sh
    batches = [torch.randn(B, XD, dtype=F64, generator=torch.Generator().manual_seed(s)) + 1 for s in range(3)]
    torch.manual_seed(7)
    for real in batches:
        model.train({"x": real}) if method == "train" else model.step({"x": real})
    torch.manual_seed(7)
    hand_written(g_ref, d_ref, batches, d_steps, data_term, optimizer)
    for (name, got), (_, want) in zip([*g.named_parameters(), *d.named_parameters()],
                                      [*g_ref.named_parameters(), *d_ref.named_parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15, msg=name)
    assert all(t.requires_grad for t in [*g.parameters(), *d.parameters()])  # every flag given back


def test_the_generator_step_alone_trains_the_shared_layer_and_leaves_the_discriminator():
    """``train(adversarial_loss=False)``: one generator step, SGD: the shared layer moves by -lr x its gradient, the
    discriminator's own layer not at all; with disjoint players the discriminator is untouched."""
    for shared in (True, False):
        model, g, d = build_gan(shared=shared)
        real = gan_data()["x"]
        before = {k: v.detach().clone() for k, v in [("sh", g.sh.weight), ("d_sh", d.sh.weight), ("out", d.out.weight)]}
        torch.manual_seed(3)
        z = torch.randn(8, ZD, dtype=F64)
        grad = torch.autograd.grad(-F.logsigmoid(disc_logit(d, gen_x(g, z))).mean()
                                   - F.logsigmoid(-disc_logit(d, real)).mean(), g.sh.weight)[0]
        torch.manual_seed(3)
        model.train({"x": real}, adversarial_loss=False)
        torch.testing.assert_close(g.sh.weight.detach(), before["sh"] - 0.1 * grad, rtol=1e-14, atol=1e-16)
        assert torch.equal(d.out.weight, before["out"])
        assert d.sh.weight is g.sh.weight if shared else torch.equal(d.sh.weight, before["d_sh"])
        assert grad.abs().max() > 1e-3


def test_one_process_fit_draws_from_the_models_stream_as_before():
    """Not data-parallel: `fit` is a `train` loop on the model's stream (seed 0) over rows shuffled by seed 1's
    generator, bitwise (the ranks' own streams are derived only with more than one rank)."""
    data = gan_data()
    model, g, d = build_gan(optimizer=torch.optim.Adam, dropout=0.2)
    model.fit(data, epochs=3, batch_size=8, seed=0, quiet=True)
    loop, g_ref, d_ref = build_gan(optimizer=torch.optim.Adam, dropout=0.2)
    torch.set_rng_state(torch.Generator().manual_seed(0).get_state())
    order = torch.Generator().manual_seed(1)
    for _ in range(3):
        loop.train({"x": data["x"][torch.randperm(8, generator=order)]})
    for got, want in zip([*g.parameters(), *d.parameters()], [*g_ref.parameters(), *d_ref.parameters()]):
        assert torch.equal(got, want)
