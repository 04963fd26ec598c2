"""VQ-VAE pieces: the quantiser, the PixelCNN prior over codes, the commitment loss.

References: the nearest code by brute force over the codebook; the straight-through gradient is the
identity to the encoder's output; the PixelCNN prior sums to one over every code grid of a tiny
case (enumeration) and its ancestral sampler matches its own probabilities (chi-square, false alarm
1e-4); the loss against a hand computation.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from example_loader import run_smoke
from scipy import stats
from torch import nn

from kizuna.distributions import PixelCNNCategorical
from kizuna.distributions.vq import VectorQuantizer
from kizuna.losses import VQCommitment


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def quantiser() -> VectorQuantizer:
    return VectorQuantizer(nn.Conv2d(1, 3, 1), n_codes=5, code_dim=3)


def test_quantiser_picks_the_nearest_code_and_passes_gradients_straight_through() -> None:
    q = quantiser()
    x = torch.randn(4, 1, 2, 2)
    z_e, k, e = q.encode(x)
    for b, i, j in itertools.product(range(4), range(2), range(2)):
        d = ((q.codebook.weight - z_e[b, :, i, j]) ** 2).sum(1)
        assert k[b, i, j] == d.argmin()
    s = q.sample({"x": x})
    torch.testing.assert_close(s["z"], e)  # the value is the code
    w = q.encoder.weight
    (g,) = torch.autograd.grad(s["z"].sum(), w)
    torch.testing.assert_close(g, torch.autograd.grad(z_e.sum(), w)[0])  # the gradient goes straight through
    torch.testing.assert_close(s["k"], torch.nn.functional.one_hot(k, 5).float())
    assert q.get_log_prob({"x": x, "k": s["k"], "z": e}).eq(0).all()
    other = torch.nn.functional.one_hot((k + 1) % 5, 5).float()
    assert q.get_log_prob({"x": x, "k": other, "z": e}).eq(-torch.inf).all()
    q64 = quantiser().double()  # the log-mass in the model's dtype (it was torch's default dtype)
    x64 = x.double()
    s64 = q64.sample({"x": x64})
    assert q64.get_log_prob({"x": x64, **s64}).dtype == torch.float64


def test_pixelcnn_prior_is_normalised_and_its_sampler_matches_it() -> None:
    p = PixelCNNCategorical(3, 2, 2, hidden_channels=8, n_layers=2, kernel_size=3)
    grids = torch.nn.functional.one_hot(torch.tensor(list(itertools.product(range(3), repeat=4))), 3)
    grids = grids.reshape(-1, 2, 2, 3).float()
    with torch.no_grad():
        probs = p.get_log_prob({"k": grids}).exp()
    assert abs(probs.sum().item() - 1) < 1e-5
    draws = p.sample(batch_n=20_000)["k"].argmax(-1).reshape(-1, 4)
    index = (draws * torch.tensor([27, 9, 3, 1])).sum(1)
    counts = torch.bincount(index, minlength=81).numpy()
    expected = probs.double().numpy()
    assert stats.chisquare(counts, expected / expected.sum() * counts.sum()).pvalue > 1e-4
    with pytest.raises(ValueError, match="codes of shape"):
        p.get_log_prob({"k": torch.zeros(1, 3, 3, 3)})


def test_commitment_loss_by_hand() -> None:
    q = quantiser()
    x = torch.randn(3, 1, 2, 2)
    value = VQCommitment(q, 0.5).eval({"x": x})
    z_e, _, e = q.encode(x)
    torch.testing.assert_close(value, 1.5 * (z_e - e).pow(2).flatten(1).sum(1))
    grads = torch.autograd.grad(value.sum(), [q.codebook.weight, *q.encoder.parameters()])
    assert all(g.abs().sum() > 0 for g in grads)
    assert np.isfinite(value.detach().numpy()).all()


def test_one_evaluation_encodes_once_and_matches_the_hand_written_loss() -> None:
    """The stage-1 VQ-VAE loss (reconstruction through the straight-through draw, plus the codebook and
    commitment terms) runs the encoder once per evaluation, and its value and every gradient equal the loss
    written by hand from one encoding."""
    from kizuna.distributions import Bernoulli
    from kizuna.losses import Expectation, LogProb

    class Decoder(Bernoulli):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"])
            self.net = nn.Conv2d(3, 1, 1)

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(z)}

    calls = []
    q = quantiser()
    q.encoder.register_forward_hook(lambda *_: calls.append(1))
    p = Decoder()
    decoder = p.net
    x = (torch.rand(4, 1, 2, 2) > 0.5).float()
    loss = (-Expectation(q, LogProb(p)) + VQCommitment(q, 0.25)).mean()
    value = loss.eval({"x": x})
    assert len(calls) == 1
    params = [*q.parameters(), *decoder.parameters()]
    grads = torch.autograd.grad(value, params)
    z_e, _, e = q.encode(x)  # outside an evaluation: a fresh encoding
    z = z_e + (e - z_e).detach()
    recon = -torch.nn.functional.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").flatten(1).sum(1)
    by_hand = (-recon + (z_e.detach() - e).pow(2).flatten(1).sum(1)
               + 0.25 * (z_e - e.detach()).pow(2).flatten(1).sum(1)).mean()
    torch.testing.assert_close(value, by_hand)
    for g, h in zip(grads, torch.autograd.grad(by_hand, params)):
        torch.testing.assert_close(g, h)


@pytest.mark.slow
def test_vqvae_smoke() -> None:
    m = run_smoke("vqvae")
    assert m["codes_used"] >= 8 and np.isfinite(m["test_nll_bound"])


def test_pixelcnn_categorical_sample_shape_without_batch_n() -> None:
    """(n, 1, H, W, K) one-hot draws as a plain family gives (it drew one grid for n draws and failed to reshape
    it: "shape '[4, 0, 2, 2, 3]' is invalid")."""
    torch.manual_seed(0)
    k = PixelCNNCategorical(3, 2, 2, hidden_channels=4, n_layers=1).sample(sample_shape=[4])["k"]
    assert k.shape == (4, 1, 2, 2, 3) and torch.equal(k.sum(-1), torch.ones(4, 1, 2, 2))


@pytest.mark.parametrize(("make", "message"), [
    (lambda: VectorQuantizer(nn.Conv2d(1, 2, 1), n_codes=0, code_dim=2), r"VectorQuantizer: n_codes must be an integer "
                                                                          r">= 1, got 0"),
    (lambda: VectorQuantizer(nn.Conv2d(1, 2, 1), n_codes=-1, code_dim=2), r"n_codes must be an integer >= 1, got -1"),
    (lambda: VectorQuantizer(nn.Conv2d(1, 2, 1), n_codes=3, code_dim=0), r"VectorQuantizer: code_dim must be an "
                                                                          r"integer >= 1, got 0"),
    (lambda: PixelCNNCategorical(0, 2, 2, hidden_channels=4, n_layers=1), r"PixelCNNCategorical: n_codes must be an "
                                                                           r"integer >= 1, got 0"),
    (lambda: PixelCNNCategorical(3, 0, 2, hidden_channels=4, n_layers=1), r"PixelCNNCategorical: height must be an "
                                                                           r"integer >= 1, got 0"),
    (lambda: PixelCNNCategorical(3, 2, -1, hidden_channels=4, n_layers=1), r"PixelCNNCategorical: width must be an "
                                                                            r"integer >= 1, got -1"),
], ids=["codes0", "codes-1", "dim0", "cat-codes0", "cat-height0", "cat-width-1"])
def test_arguments_are_checked_at_construction(make, message) -> None:
    """Before: n_codes=0 raised ZeroDivisionError, code_dim=0 and an empty code grid were accepted."""
    with pytest.raises(ValueError, match=message):
        make()


def test_commitment_weight_and_codes_scored_are_checked() -> None:
    """``VQCommitment(q, -1)`` / ``nan`` were accepted (a loss pushing the encoder away from its codes, a NaN loss);
    ``log_prob`` of one-hots over 9 codes when the codebook has 5 was -inf for every row, other shapes a raw broadcast
    error, and a position of zeros was read as code 0 (the argmax)."""
    q = VectorQuantizer(nn.Conv2d(1, 2, 1), n_codes=5, code_dim=2)
    for beta in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match=rf"^VQCommitment: beta \(the commitment weight\) must be a finite number "
                                             rf">= 0, got {beta!r}$"):
            VQCommitment(q, beta)
    x = torch.randn(4, 1, 3, 3)
    draw = q.sample({"x": x})
    assert torch.equal(q.get_log_prob(draw), torch.zeros(4))
    other = draw["k"].roll(1, -1)  # every position another code: -inf for every row, no error
    assert torch.equal(q.get_log_prob({**draw, "k": other}), torch.full((4,), -torch.inf))
    for k in (torch.nn.functional.one_hot(torch.zeros(4, 3, 3, dtype=torch.long), 9).float(), torch.zeros(4, 7)):
        with pytest.raises(ValueError, match=rf"^q\(k,z\|x\): k must be one-hot codes of shape \(4, 3, 3, 5\) \(batch, "
                                             rf"\*grid, n_codes\) for this x, got {re.escape(str(tuple(k.shape)))}$"):
            q.get_log_prob({**draw, "k": k})
    with pytest.raises(ValueError, match=r"k must be one-hot over its last dimension"):
        q.get_log_prob({**draw, "k": torch.zeros(4, 3, 3, 5)})


def test_the_code_prior_refuses_values_that_are_not_one_hot():
    """A row of zeros was scored as code 0, several ones or NaN as their argmax (a finite log-probability, silently);
    the quantiser and kizuna's Categorical already refused them."""
    from kizuna.distributions import validation

    p = PixelCNNCategorical(3, 2, 2, hidden_channels=8, n_layers=1)
    good = torch.nn.functional.one_hot(torch.randint(3, (2, 2, 2)), 3).float()
    assert p.get_log_prob({"k": good}).isfinite().all()
    for bad in (torch.zeros(2, 2, 2, 3), torch.ones(2, 2, 2, 3), torch.full((2, 2, 2, 3), float("nan"))):
        with validation(True), pytest.raises(ValueError, match="k must be one-hot over its last dimension"):
            p.get_log_prob({"k": bad})
