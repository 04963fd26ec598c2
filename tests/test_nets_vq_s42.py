"""Stop 42 review of the nets, VQ and autoregressive distributions (findings 1-4).

References: the same draws with the one-row condition expanded by hand (same seed) for the autoregressive samplers;
the per-draw scores of each ``(batch, H, W, K)`` slice for the code prior's ``sample_shape`` draws; the embedding's
sinusoid in float64 (closed form) and by hand in float32 for a low-precision U-Net; a hand mask of the positions whose
``z`` is not their code for the quantiser's point mass.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from kizuna.distributions import MADEBernoulli, PixelCNNBernoulli, PixelCNNCategorical
from kizuna.distributions.vq import VectorQuantizer
from kizuna.nets import UNet


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _autoregressive(kind: str, cond_var: list[str]):
    if kind == "made":
        return MADEBernoulli(3, [8], cond_var=cond_var, context_features=5)
    return PixelCNNBernoulli(2, 2, hidden_channels=4, n_layers=1, kernel_size=3, cond_var=cond_var,
                             context_features=5)


# ------------------------------------------------------------------ finding 1


@pytest.mark.parametrize("kind", ["made", "pixelcnn"])
@pytest.mark.parametrize("order", [["y", "w"], ["w", "y"]])
def test_autoregressive_sample_takes_a_one_row_condition_beside_a_batch(kind: str, order: list[str]) -> None:
    """``sample({"y": 1 row, "w": 4 rows})`` raised "batch_n=1 but the conditioning values have 4 rows" when ``y``
    came first in ``cond_var``, and with a ``sample_shape`` a raw torch.cat error in either order; ``get_log_prob``
    took the same conditions. The reference: the same seed with ``y`` expanded to 4 rows by hand."""
    p = _autoregressive(kind, order)
    features = tuple(p.features_shape)
    y1, w4 = torch.randn(1, 2), torch.randn(4, 3)
    mixed, expanded = {"y": y1, "w": w4}, {"y": y1.expand(4, 2), "w": w4}
    for kw, shape in [({}, (4,)), ({"batch_n": 4}, (4,)), ({"sample_shape": (2,)}, (2, 4)),
                      ({"batch_n": 4, "sample_shape": (2, 3)}, (2, 3, 4))]:
        torch.manual_seed(1)
        got = p.sample(mixed, **kw)["x"]
        torch.manual_seed(1)
        want = p.sample(expanded, **kw)["x"]
        assert got.shape == (*shape, *features), kw
        assert torch.equal(got, want), kw
    # and the draws are scored with the same mixed conditions, one value per draw
    draws = p.sample(mixed, sample_shape=(2,))
    torch.testing.assert_close(p.get_log_prob(draws), p.get_log_prob({**draws, "y": y1.expand(4, 2)}))


def test_autoregressive_sample_names_its_rows_and_draws_an_empty_batch() -> None:
    """With a ``sample_shape``, a batch_n against 4 condition rows was reported as "batch_n=6 ... 8 rows" (the
    repeated counts); condition parts of 2 and 4 rows met a raw torch.cat error; a condition of 0 rows a raw
    reshape error (every other family draws an empty batch)."""
    p = _autoregressive("made", ["y", "w"])
    with pytest.raises(ValueError, match=r"^p\(x\|y,w\): batch_n=3 but the conditioning values have 4 rows; give one "
                                         r"row per draw, or one row for all$"):
        p.sample({"y": torch.randn(4, 2), "w": torch.randn(4, 3)}, batch_n=3, sample_shape=(2,))
    message = (r"^p\(x\|y,w\): the conditioning values have different numbers of rows \(y: 2, w: 4\); give each one "
               r"row per draw, or one row for all$")
    with pytest.raises(ValueError, match=message):
        p.sample({"y": torch.randn(2, 2), "w": torch.randn(4, 3)})
    with pytest.raises(ValueError, match=message):
        p.get_log_prob({"x": torch.zeros(4, 3), "y": torch.randn(2, 2), "w": torch.randn(4, 3)})
    empty = {"y": torch.zeros(0, 2), "w": torch.zeros(0, 3)}
    assert p.sample(empty)["x"].shape == (0, 3)
    assert p.sample(empty, sample_shape=(2,))["x"].shape == (2, 0, 3)


# ------------------------------------------------------------------ finding 2


def test_code_prior_scores_its_sample_shape_draws_one_value_per_draw() -> None:
    """``PixelCNNCategorical.get_log_prob`` refused its own ``sample(batch_n=4, sample_shape=(5,))`` draws ("codes of
    shape (4, 2, 2, 3), expected (2, 2, 3)"); every other family scores them one value per draw (summed over the batch
    and the features). The reference: each draw's (4, 2, 2, 3) slice scored on its own."""
    p = PixelCNNCategorical(3, 2, 2, hidden_channels=8, n_layers=1, kernel_size=3)
    k = p.sample(batch_n=4, sample_shape=(5,))["k"]
    assert k.shape == (5, 4, 2, 2, 3)
    with torch.no_grad():
        per_slice = torch.stack([p.get_log_prob({"k": k[i]}, sum_features=False) for i in range(5)])
        torch.testing.assert_close(p.get_log_prob({"k": k}), per_slice.flatten(1).sum(1))
        torch.testing.assert_close(p.get_log_prob({"k": k}, sum_features=False), per_slice)
        # the per-position terms are torch's categorical log-probabilities of the prior's logits
        logits = p.logits(k[0]).movedim(1, -1)
        reference = torch.distributions.Categorical(logits=logits).log_prob(k[0].argmax(-1))
        torch.testing.assert_close(per_slice[0], reference)
    with pytest.raises(ValueError, match=re.escape("p(k): codes of shape (5, 1, 3, 3, 3), expected (batch, 2, 2, 3) "
                                                   "(one-hot), or (*sample_shape, batch, 2, 2, 3) for draws made with "
                                                   "a sample_shape")):
        p.get_log_prob({"k": torch.zeros(5, 1, 3, 3, 3)})


# ------------------------------------------------------------------ finding 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_unet_time_embedding_is_computed_in_float32_for_a_low_precision_network(dtype: torch.dtype) -> None:
    """A U-Net cast to bfloat16 rounded the step to bfloat16 before the sinusoid (steps 900..903 one output) and float16
    put the angle off by 0.4 rad; improved-diffusion and diffusers build the embedding in float32 and cast it after.
    References: the embedding by hand in float32, cast to ``dtype``; the closed form in float64."""
    net = UNet((1, 4, 4), channels=8, channel_mults=(1,), n_freq=32)
    with torch.no_grad():
        net.out.weight.normal_()
    net = net.to(dtype)
    seen = []
    net.embed[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(1, 1, 4, 4).to(dtype)
    t = torch.tensor([900, 901])
    with torch.no_grad():
        out = net(x.expand(2, 1, 4, 4), t)
    assert not torch.equal(out[0], out[1])  # neighbouring steps are told apart
    k = torch.arange(32, dtype=torch.float32)
    angle = t.float()[:, None] * torch.exp(-math.log(1e4) * k / 32)
    assert torch.equal(seen[0], torch.cat([angle.sin(), angle.cos()], 1).to(dtype))
    exact = t.double()[:, None] * 1e4 ** (-k.double() / 32)
    tol = torch.finfo(dtype).eps  # the cast's rounding of a value in [-1, 1], where the angle was off by up to 3.6 rad
    torch.testing.assert_close(seen[0].double(), torch.cat([exact.sin(), exact.cos()], 1), atol=tol, rtol=0)


# ------------------------------------------------------------------ finding 4


def test_quantiser_scores_z_as_well_as_the_code() -> None:
    """``log q(k, z|x)`` compared ``k`` only: a ``z`` of noise with the right code scored 0, and ``sum_features=False``
    gave one value per row. The point mass is at ``(k(x), e_k)``: the sampler's ``z`` (``z_e + (e_k - z_e)``, off
    from ``e_k`` by rounding here, with the encoder's outputs near 1000) scores 0, a ``z`` moved by 0.01 at one
    position -inf there. The reference: a hand mask of the moved positions."""
    encoder = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        encoder.bias.fill_(1000.0)
    q = VectorQuantizer(encoder, n_codes=4, code_dim=2)
    x = torch.randn(3, 1, 2, 2)
    draw = q.sample({"x": x})
    _, _, e = q.encode(x)
    assert (draw["z"] - e).abs().max() > 0  # the rounding the comparison must allow
    assert torch.equal(q.get_log_prob(draw), torch.zeros(3))
    assert torch.equal(q.get_log_prob(draw, sum_features=False), torch.zeros(3, 2, 2))
    moved = draw["z"].clone()
    moved[1, 0, 1, 0] += 0.01
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[1, 1, 0] = True
    want = torch.zeros(3, 2, 2).masked_fill(mask, -torch.inf)
    assert torch.equal(q.get_log_prob({**draw, "z": moved}, sum_features=False), want)
    assert torch.equal(q.get_log_prob({**draw, "z": moved}), torch.tensor([0.0, -torch.inf, 0.0]))
    noise = torch.randn_like(draw["z"]) * 100
    assert torch.equal(q.get_log_prob({**draw, "z": noise}), torch.full((3,), -torch.inf))
    with pytest.raises(ValueError, match=re.escape("q(k,z|x): z must be the codes' vectors of shape (3, 2, 2, 2) "
                                                   "(batch, code_dim, *grid) for this x, got (3, 2, 4)")):
        q.get_log_prob({**draw, "z": draw["z"].flatten(2)})
