"""Data repeated for many draws is not copied where it is only scored.

An importance-weighted estimate with k draws per row evaluates every value with k rows per data row.
Without gradients, the data is held as a `RepeatedRows` (the repeated shape, no copy) and scored
against the draws block by block. References: the ordinary copy (`repeat_batch`) for every operation,
and a hand-written float64 IWAE on the same random numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import kizuna.losses.expectation as expectation
from kizuna.distributions import Bernoulli, Normal, validation
from kizuna.distributions.base import BLOCK_ELEMENTS, RepeatedRows, repeat_batch, repeat_rows_lazily
from kizuna.losses import IWAE
from kizuna.metrics import log_likelihood

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.fixture
def copies_made(monkeypatch):
    """Records, for every use of a `RepeatedRows` by an operation, whether that use made the copy."""
    made: list[bool] = []
    materialize = RepeatedRows.materialize
    monkeypatch.setattr(RepeatedRows, "materialize", lambda self: made.append(self._copy is None) or materialize(self))
    return made


def test_repeated_rows_behave_as_the_copy_in_every_operation():
    source = torch.randn(7, 3, 5)
    lazy, copy = RepeatedRows(source, 4), repeat_batch(source, 4)
    assert lazy.shape == copy.shape == (28, 3, 5) and lazy.dtype == copy.dtype and lazy.device == copy.device
    assert not lazy.requires_grad and isinstance(lazy, torch.Tensor)
    assert type(lazy + 1) is torch.Tensor  # results are ordinary tensors
    torch.testing.assert_close(lazy + 1, copy + 1, rtol=0, atol=0)
    torch.testing.assert_close(lazy[5:13], copy[5:13], rtol=0, atol=0)
    torch.testing.assert_close(lazy.sum(0), copy.sum(0), rtol=0, atol=0)
    torch.testing.assert_close(lazy.to(F64), copy.to(F64), rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([lazy, copy]), torch.cat([copy, copy]), rtol=0, atol=0)
    assert torch.equal(lazy.reshape(4, 7, 3, 5)[2], source)
    assert torch.equal(lazy, copy)
    assert repr(lazy) == "RepeatedRows(4 x (7, 3, 5))"


def test_only_large_values_without_gradients_are_left_unrepeated():
    big = torch.zeros(BLOCK_ELEMENTS // 10 + 1, 10)
    with torch.no_grad():
        assert type(repeat_rows_lazily(big, 2)) is RepeatedRows
        assert type(repeat_rows_lazily(big[:10], 2)) is torch.Tensor  # small: the copy is cheap
        assert repeat_rows_lazily(big, 1) is big
        assert repeat_rows_lazily(3.0, 5) == 3.0
    assert type(repeat_rows_lazily(big, 2)) is torch.Tensor  # with gradients: always the copy


class _Encoder(Normal):
    def __init__(self, d: int, h: int, z: int) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, 2 * z)).to(F64)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 0.1}


class _Decoder(Bernoulli):
    def __init__(self, d: int, h: int, z: int) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Sequential(nn.Linear(z, h), nn.Tanh(), nn.Linear(h, d)).to(F64)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"probs": torch.sigmoid(self.net(z))}


def _vae(d: int = 784, h: int = 32, z: int = 4):
    q, p = _Encoder(d, h, z), _Decoder(d, h, z)
    prior = Normal(var=["z"], loc=torch.zeros(z, dtype=F64), scale=torch.ones(z, dtype=F64), name="p_prior")
    return q, p, prior


def _hand_iwae(q: _Encoder, p: _Decoder, x: torch.Tensor, k: int) -> torch.Tensor:
    """The bound written out, drawing the same normal numbers as kizuna's reparameterised Normal."""
    loc, s = q.net(x).chunk(2, -1)
    scale = F.softplus(s) + 0.1
    eps = torch.empty(k, *loc.shape, dtype=F64).normal_()
    z = loc + eps * scale
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    log_q = (-0.5 * eps**2 - scale.log() - half_log_2pi).sum(-1)
    log_prior = (-0.5 * z**2 - half_log_2pi).sum(-1)
    eps_p = torch.finfo(F64).eps
    probs = torch.sigmoid(p.net(z)).clamp(eps_p, 1 - eps_p)
    log_lik = (x * probs.log() + (1 - x) * (1 - probs).log()).sum(-1)
    return torch.logsumexp(log_lik + log_prior - log_q, 0) - math.log(k)


def test_iwae_without_gradients_scores_the_data_without_copying_it(monkeypatch, copies_made):
    q, p, prior = _vae()
    x = (torch.rand(20, 784, dtype=F64) > 0.5).to(F64)
    k = 100  # 2,000 rows of 784 pixels: more than one block, so the data is left unrepeated
    assert k * x.numel() > BLOCK_ELEMENTS
    bound = IWAE(p * prior, q, k=k)
    with torch.no_grad(), validation(False):  # as log_likelihood runs it (checked, values are copied)
        torch.manual_seed(1)
        lazy = bound.eval({"x": x})
        torch.manual_seed(1)
        reference = _hand_iwae(q, p, x, k)
    assert copies_made == []  # the repeated images were scored against the source, never copied
    torch.testing.assert_close(lazy, reference, rtol=0, atol=1e-9)
    # the same numbers as the ordinary copy, and as the evaluation with gradients
    monkeypatch.setattr(expectation, "repeat_rows_lazily", repeat_batch)
    with torch.no_grad(), validation(False):
        torch.manual_seed(1)
        copied = bound.eval({"x": x})
    torch.manual_seed(1)
    with validation(False):
        with_grad = bound.eval({"x": x})
    assert torch.equal(lazy, copied)
    torch.testing.assert_close(with_grad.detach(), lazy, rtol=0, atol=1e-12)


def test_log_likelihood_leaves_the_data_unrepeated_and_matches_the_hand_written_estimate(copies_made):
    q, p, prior = _vae()
    x = (torch.rand(30, 784, dtype=F64) > 0.5).to(F64)
    torch.manual_seed(2)
    estimate = log_likelihood(p * prior, q, {"x": x}, k=200, batch_size=15, k_chunk=100, validate=False)
    assert copies_made == []
    torch.manual_seed(2)
    with torch.no_grad():
        parts = [torch.stack([_hand_iwae(q, p, xb, 100) + math.log(100) for _ in range(2)])
                 for xb in x.split(15)]
    reference = torch.cat([torch.logsumexp(s, 0) - math.log(200) for s in parts])
    torch.testing.assert_close(estimate, reference, rtol=0, atol=1e-9)


def test_a_repeated_value_that_a_network_reads_is_copied_once_and_gives_the_same_numbers(monkeypatch, copies_made):
    """A value repeated for the draws and conditioned on by another network (p(y|x, z)) is copied
    when that network reads it, once; the numbers are those of the ordinary copy."""

    class _Both(Normal):
        def __init__(self) -> None:
            super().__init__(var=["y"], cond_var=["x", "z"], name="p_y")
            self.net = nn.Linear(784 + 4, 3).to(F64)

        def forward(self, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": self.net(torch.cat([x, z], -1)), "scale": torch.ones(3, dtype=F64)}

    q, p, prior = _vae()
    data = {"x": (torch.rand(20, 784, dtype=F64) > 0.5).to(F64), "y": torch.randn(20, 3, dtype=F64)}
    bound = IWAE(p * _Both() * prior, q, k=100)
    with torch.no_grad(), validation(False):
        torch.manual_seed(3)
        lazy = bound.eval(data)
    assert copies_made.count(True) == 1  # x, when p_y's network reads it
    monkeypatch.setattr(expectation, "repeat_rows_lazily", repeat_batch)
    with torch.no_grad(), validation(False):
        torch.manual_seed(3)
        copied = bound.eval(data)
    assert torch.equal(lazy, copied)


def test_a_network_that_reads_its_input_as_numpy_gets_an_ordinary_tensor():
    """Networks are given the copy, never the lazy value: ``.numpy()`` needs storage."""

    class _NumpyLoc(Normal):
        def __init__(self) -> None:
            super().__init__(var=["y"], cond_var=["x"], name="p_y")

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            assert type(x) is torch.Tensor
            return {"loc": torch.as_tensor(x.numpy()[:, :3].copy()), "scale": torch.ones(3, dtype=F64)}

    q, p, prior = _vae()
    data = {"x": (torch.rand(20, 784, dtype=F64) > 0.5).to(F64), "y": torch.randn(20, 3, dtype=F64)}
    bound = IWAE(p * _NumpyLoc() * prior, q, k=100)
    with torch.no_grad(), validation(False):
        value = bound.eval(data)
    assert value.shape == (20,) and torch.isfinite(value).all()


def test_inference_mode_gives_the_numbers_of_no_grad():
    q, p, prior = _vae()
    x = (torch.rand(20, 784, dtype=F64) > 0.5).to(F64)
    bound = IWAE(p * prior, q, k=100)
    with validation(False):
        torch.manual_seed(4)
        with torch.inference_mode():
            inference = bound.eval({"x": x})
        torch.manual_seed(4)
        with torch.no_grad():
            no_grad = bound.eval({"x": x})
    assert torch.equal(inference, no_grad)
