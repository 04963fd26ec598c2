"""Half precision (stop 44): a 16-bit DDPM's variational bound computed in float32, a 16-bit VQ-VAE on the CPU.

References. The bound: the same (16-bit rounded) weights in float32, given the same seed (so the same draws of x_t), and
a float32 model whose network rounds its input and output as the 16-bit network does (then only the network is in 16
bits: the bound must be that model's to float32 rounding). The difference to the float32 model is the network's own
rounding, held to 5 standard errors of the per-row paired difference (measured here, T = 100, 200 rows, Gaussian /
17-bin decoder: bfloat16 -1.1e-4 +- 3.3e-4 / -4.3e-5 +- 2.6e-4 nats on means of 7.75 / 13.73, float16 7e-8 +- 3.2e-5 /
-1.0e-5 +- 2.6e-5; computed in 16 bits the bound was 1.18 / 1.09 nats (bfloat16) and 0.09 / 0.11 (float16) too high,
27 and 16 paired standard errors). The quantiser: the nearest code by brute force in float64 over the 16-bit
encoder output and codebook (exact), positions whose two nearest codes are closer than float32's resolution left out.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from kizuna.distributions import DDPM, DiffusionDecoder, DiffusionReverse, DiffusionSchedule, Normal
from kizuna.distributions.vq import VectorQuantizer
from kizuna.losses import Expectation, LogProb, VQCommitment, diffusion_bound
from kizuna.models import Model

HALF = [torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


class LinEps(nn.Module):
    """eps(x, t) = W x + b; with ``rounding`` a float32 module computing as a ``rounding``-dtype one (input, weights
    and output rounded there), i.e. the 16-bit network's output in float32."""

    def __init__(self, rounding: torch.dtype | None = None) -> None:
        super().__init__()
        self.lin, self.rounding = nn.Linear(2, 2), rounding

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.rounding is None:
            return self.lin(x)
        dt = self.rounding
        return nn.functional.linear(x.to(dt), self.lin.weight.to(dt), self.lin.bias.to(dt)).to(x.dtype)


def three_models(dt: torch.dtype, bins: int | None = None) -> tuple[DDPM, DDPM, DDPM]:
    """A DDPM converted to ``dt`` by ``.to`` (the documented conversion), the same weights in float32, and those with
    the network rounding as ``dt``'s."""
    rev = DiffusionReverse(LinEps(), DiffusionSchedule.linear(100))
    p16 = DDPM(rev, [2], decoder=None if bins is None else DiffusionDecoder(rev, bins=bins)).to(dt)
    p32 = copy.deepcopy(p16).float()
    p32r = copy.deepcopy(p32)
    p32r.reverse.eps_net.rounding = dt
    return p16, p32, p32r


def bounds(models: tuple[DDPM, ...], x0: torch.Tensor) -> list[torch.Tensor]:
    out = []
    with torch.no_grad():
        for p in models:
            torch.manual_seed(1)
            out.append(diffusion_bound(p, exact_steps=True).eval({"x_0": x0.to(p.schedule.dtype)}))
    return out


@pytest.mark.parametrize("bins", [None, 17], ids=["gaussian", "discretised"])
@pytest.mark.parametrize("dt", HALF, ids=str)
def test_half_ddpm_bound_is_float32_and_the_float32_models(dt, bins):
    # levels k/8 - 1 of 17 bins: exact in 16 bits, so the three models see the same data
    x0 = torch.tensor([[-1.0, -0.5], [0.5, 1.0], [0.25, -0.75], [0.0, 0.125]]).repeat(50, 1)
    b16, b32, b32r = bounds(three_models(dt, bins), x0)
    assert b16.dtype == torch.float32  # (docs/families.md: "diffusion_bound's value is float32")
    assert b16.shape == (len(x0),) and bool(torch.isfinite(b16).all())
    # only the network in 16 bits: the bound is the float32 formula's on the 16-bit network's output
    torch.testing.assert_close(b16, b32r, rtol=1e-5, atol=1e-5)
    d = (b16 - b32).double()
    se = d.std().item() / math.sqrt(len(d))
    assert abs(d.mean().item()) <= 5 * se, (d.mean().item(), se, b16.mean().item(), b32.mean().item())


@pytest.mark.parametrize("dt", HALF, ids=str)
def test_half_ddpm_bound_terms_are_float32(dt):
    p16 = three_models(dt)[0]
    torch.manual_seed(1)
    value, terms = diffusion_bound(p16).eval({"x_0": torch.zeros(4, 2, dtype=dt)}, return_terms=True)
    assert value.dtype == torch.float32
    assert set(terms) == {"L_T", "L_{1:T-1}", "-L_0"}
    assert {t.dtype for t in terms.values()} == {torch.float32}


@pytest.mark.parametrize("dt", HALF, ids=str)
def test_half_discretised_decoder_reads_lifted_data_as_16_bit(dt):
    """8-bit data rounded to 16 bits lie off the 256-level grid; lifted to float32 by the bound they are still read as
    their nearest level (as the 16-bit values are), and float32 data that are not 16-bit values are still checked."""
    rev = DiffusionReverse(LinEps(), DiffusionSchedule.linear(10))
    p16 = DDPM(rev, [2], decoder=DiffusionDecoder(rev, bins=256)).to(dt)
    x16 = (torch.randint(0, 256, (64, 2)) / 255 * 2 - 1).to(dt)
    x1 = torch.randn(64, 2)
    with torch.no_grad():
        direct = p16.decoder.get_log_prob({"x_0": x16, "x_1": x1})
        lifted = p16.decoder.get_log_prob({"x_0": x16.float(), "x_1": x1})
        torch.testing.assert_close(lifted, direct, rtol=0, atol=0)
        value = diffusion_bound(p16).eval({"x_0": x16})
    assert value.dtype == torch.float32 and bool(torch.isfinite(value).all())
    dequantised = torch.full((1, 2), 0.1 + 1e-4)  # no level of 256, nor a 16-bit value
    with pytest.raises(ValueError, match="not on the grid of bins=256 levels"):
        p16.decoder.get_log_prob({"x_0": dequantised, "x_1": x1[:1]})


# ------------------------------------------------------------------------------------------- VQ-VAE in 16 bits

class Dec(Normal):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.c = nn.Conv2d(3, 1, 1)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.c(z), "scale": torch.ones_like(z[:, :1])}


def nearest_codes(z_e: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force nearest codes in float64 (exact for 16-bit inputs) and whether each position is clear of a near-tie
    at float32's resolution."""
    d2 = (z_e.double().movedim(1, -1).unsqueeze(-2) - codes.double()).pow(2).sum(-1)
    two = d2.topk(2, -1, largest=False).values
    clear = (two[..., 1] - two[..., 0]) > 64 * torch.finfo(torch.float32).eps * two[..., 1].clamp(min=1)
    return d2.argmin(-1), clear


@pytest.mark.parametrize("dt", HALF, ids=str)
def test_half_vq_forward_loss_and_training_step_on_cpu(dt):
    q = VectorQuantizer(nn.Conv2d(1, 3, 1), n_codes=16, code_dim=3)
    with torch.no_grad():
        q.codebook.weight.normal_()  # codes spread like the encoder's outputs: many codes in use
    q, d = q.to(dt), Dec().to(dt)
    x = torch.randn(8, 1, 4, 4).to(dt)
    z_e, k, e = q.encode(x)
    assert z_e.dtype == e.dtype == dt and k.dtype == torch.long
    want, clear = nearest_codes(z_e, q.codebook.weight)
    assert bool(clear.float().mean() > 0.9) and len(k.unique()) > 3
    assert torch.equal(k[clear], want[clear])
    # at most 25 positions and codes torch's cdist takes the differences, which CPU torch lacks in 16 bits ("cdist" not
    # implemented for 'BFloat16'); above, its matrix product ran in 16 bits and chose other codes (bfloat16)
    small = VectorQuantizer(nn.Conv2d(1, 3, 1), n_codes=4, code_dim=3).to(dt)
    z_small, k_small, _ = small.encode(x[:2, :, :2, :2])
    want_small, clear_small = nearest_codes(z_small, small.codebook.weight)
    assert torch.equal(k_small[clear_small], want_small[clear_small]) and bool(clear_small.all())
    torch.testing.assert_close(e, q.codebook.weight[k].movedim(-1, 1), rtol=0, atol=0)
    draw = q.sample({"x": x})
    assert draw["k"].dtype == draw["z"].dtype == dt
    assert torch.equal(draw["k"].argmax(-1), k)
    assert q.get_log_prob({"x": x, **draw}).eq(0).all()
    commit = VQCommitment(q, 0.25).eval({"x": x})
    ref = (z_e.float() - e.float()).pow(2).flatten(1).sum(1) * 1.25
    assert commit.dtype == dt
    torch.testing.assert_close(commit.float(), ref, rtol=4 * torch.finfo(dt).eps, atol=0)
    before = q.codebook.weight.detach().clone()
    model = Model((VQCommitment(q, 0.25) - Expectation(q, LogProb(d))).mean(), distributions=[q, d])
    loss = model.train({"x": x})
    assert loss.dtype == dt and bool(torch.isfinite(loss))
    assert not torch.equal(q.codebook.weight.detach(), before)
    assert all(p.dtype == dt and bool(torch.isfinite(p).all()) for p in [*q.parameters(), *d.parameters()])
