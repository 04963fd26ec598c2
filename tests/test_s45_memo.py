"""The per-evaluation parameter memo (`kizuna.formula.memo`) per computation, and the sample-dict cache's keys.

A term that reads a distribution under ``torch.no_grad()`` / ``torch.inference_mode()`` or with the network in eval
mode inside a training evaluation must not leave its graph-less or dropout-free parameters for the later terms;
`lru_cache_for_sample_dict` must not serve ``1.0`` the result computed for ``1``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kizuna.distributions import Normal
from kizuna.formula.expr import Loss
from kizuna.formula.memo import memoized, recall, remember, shared_parameters
from kizuna.losses import Expectation as E
from kizuna.losses import KullbackLeibler as KL
from kizuna.losses import LogProb
from kizuna.utils import lru_cache_for_sample_dict


class Enc(Normal):
    """q(z|x) = N(dropout(x) W^T + b, 1)."""

    def __init__(self, d: int, dropout: float = 0.0) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.l, self.d = nn.Linear(d, d), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.l(self.d(x)), "scale": torch.ones_like(x)}


class Dec(Normal):
    def __init__(self, d: int) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.l = nn.Linear(d, d)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.l(z), "scale": torch.ones_like(z)}


READS = {  # a detached read of q at the evaluation's x, each through another entry point
    "sample_mean": lambda q, x_dict: q.sample_mean(x_dict),
    "get_params": lambda q, x_dict: q.get_params(x_dict)["loc"],
    "get_dist": lambda q, x_dict: q.get_dist(x_dict).mean,
    "sample": lambda q, x_dict: q.sample(x_dict)["z"],
}


class Monitor(Loss):
    """A Pixyz-style term: a statistic of q read without gradients (a logged value, a baseline); with its own
    random state, so that a read that draws leaves the later terms' draws as they are without it."""

    def __init__(self, q: Enc, read: str, mode: str = "no_grad") -> None:
        super().__init__(q.input_var)
        self.q, self.read, self.mode = q, read, mode

    def forward(self, x_dict, **kwargs):
        with torch.random.fork_rng(), torch.no_grad() if self.mode == "no_grad" else torch.inference_mode():
            m = READS[self.read](self.q, x_dict)
        return m.norm(dim=-1).clone(), {}  # (clone: an inference tensor leaves inference mode as a normal one)


class GreedyRead(Loss):
    """A self-critical baseline's read: q in eval mode (dropout off), then back to training mode."""

    def __init__(self, q: Enc) -> None:
        super().__init__(q.input_var)
        self.q = q

    def forward(self, x_dict, **kwargs):
        self.q.eval()
        m = self.q.sample_mean(x_dict)
        self.q.train()
        return 0 * m.sum(-1), {}


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("read", sorted(READS))
def test_a_term_read_without_gradients_leaves_the_kl_its_closed_form_gradient(read: str, mode: str) -> None:
    """(Monitor(q) * 0 + KL[q||N(0,1)]).mean(): d/dW of mean_i 0.5 |W x_i + b|^2 is mean_i (W x_i + b) x_i^T, the
    closed form; the monitor read q under no_grad first (its graph-less parameters were reused: no gradient)."""
    torch.manual_seed(0)
    q, x = Enc(3), torch.randn(5, 3)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="prior")
    value = (0 * Monitor(q, read, mode) + KL(q, prior)).mean().eval({"x": x})
    value.backward()
    with torch.no_grad():
        loc = q.l(x)
    torch.testing.assert_close(value, (0.5 * loc.pow(2).sum(-1)).mean())
    assert q.l.weight.grad is not None, "the encoder got no gradient"
    torch.testing.assert_close(q.l.weight.grad, loc.T @ x / len(x))
    torch.testing.assert_close(q.l.bias.grad, loc.mean(0))


@pytest.mark.parametrize("read", sorted(READS))
def test_a_weight_zero_term_read_without_gradients_leaves_the_vae_gradient_unchanged(read: str) -> None:
    """KL - E with and without 0 * Monitor before it, same seed: equal value and equal encoder and decoder gradients
    (autograd is linear; the monitor adds 0). Model.train moves the encoder (it did not move at all)."""
    torch.manual_seed(0)
    q, p, x = Enc(2), Dec(2), torch.randn(8, 2)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="prior")
    grads = []
    for loss in ((KL(q, prior) - E(q, LogProb(p))).mean(),
                 (0 * Monitor(q, read) + KL(q, prior) - E(q, LogProb(p))).mean()):
        q.zero_grad()
        p.zero_grad()
        torch.manual_seed(1)
        value = loss.eval({"x": x})
        value.backward()
        assert q.l.weight.grad is not None, "the encoder got no gradient"
        grads.append((value, q.l.weight.grad.clone(), p.l.weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    from kizuna.models import Model

    before = q.l.weight.detach().clone()
    Model((0 * Monitor(q, read) + KL(q, prior) - E(q, LogProb(p))).mean(), distributions=[q, p],
          optimizer_params={"lr": 0.1}).train({"x": x})
    assert (q.l.weight - before).abs().max() > 1e-3


def test_an_eval_mode_read_leaves_the_train_mode_kl_its_dropout() -> None:
    """(0 * GreedyRead(q) + KL).mean() in training mode equals the KL with dropout on, by hand with the same seed
    (the KL's encoder call is the only draw of the random generator); the eval-mode read's dropout-free parameters
    were reused (the dropout-free KL, about half)."""
    torch.manual_seed(0)
    q, x = Enc(50, dropout=0.5), torch.randn(4, 50)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="prior")
    torch.manual_seed(3)
    with torch.no_grad():
        by_hand = (0.5 * q.l(q.d(x)).pow(2).sum(-1)).mean()
        dropout_free = (0.5 * q.l(x).pow(2).sum(-1)).mean()
    torch.manual_seed(3)
    value = (0 * GreedyRead(q) + KL(q, prior)).mean().eval({"x": x})
    assert q.training
    torch.testing.assert_close(value, by_hand)
    assert abs(value.item() - dropout_free.item()) > 1.0


def test_the_memo_serves_a_computation_only_entries_of_its_grad_and_training_mode() -> None:
    """At the memo: an entry computed without gradients is recomputed for a computation with them (and then the new
    one is shared); one with gradients is read under no_grad; the owner's training mode is part of the key; a
    record made by `remember` without gradients is still found by `recall` (a value, not a computation)."""
    owner, a, calls = nn.Linear(1, 1), torch.zeros(1), []

    def compute(v: int) -> int:
        calls.append(v)
        return v

    with torch.enable_grad(), shared_parameters():
        with torch.no_grad():
            assert memoized(owner, "t", [a], compute, 1) == 1
            assert memoized(owner, "t", [a], compute, 2) == 1  # shared among computations without gradients
        assert memoized(owner, "t", [a], compute, 3) == 3  # not the graph-less entry
        assert memoized(owner, "t", [a], compute, 4) == 3
        with torch.no_grad():
            assert memoized(owner, "t", [a], compute, 5) == 3  # an entry with gradients serves one without
        owner.eval()
        assert memoized(owner, "t", [a], compute, 6) == 6  # another training mode
        owner.train()
        assert memoized(owner, "t", [a], compute, 7) == 3  # the training-mode entry again
        with torch.inference_mode():
            remember(owner, "r", [a], "hidden")
        assert recall(owner, "r", [a]) == "hidden"
    assert calls == [1, 3, 6]


class _Scaled(torch.nn.Module):
    @lru_cache_for_sample_dict()
    def params(self, d):
        return d["x"] * d["k"]


@pytest.mark.parametrize("first, then", [(1, 1.0), (1.0, 1), (True, 1.0), (1.0, True), (2, 2.0)])
def test_the_sample_dict_cache_keys_a_number_by_its_type(first, then) -> None:
    """`{"x": x, "k": 1}` then `{"x": x, "k": 1.0}` on an int64 x: the second result is x * 1.0 (float32, as the
    undecorated computation gives), not the stored int64 result (1, 1.0 and True are equal and hash alike)."""
    m, x = _Scaled(), torch.arange(3)
    m.params({"x": x, "k": first})
    result = m.params({"x": x, "k": then})
    assert result.dtype == (x * then).dtype
    torch.testing.assert_close(result, x * then)
    assert m.params({"x": x, "k": then}) is result  # the same call is still served from the cache


def test_two_expectation_nodes_draw_independently_and_one_node_used_twice_shares_its_draw() -> None:
    """README: parameters are shared, draws are not. With q(z|x) = N(x, 1) and f(z) = log N(x | z, 1) per row,
    E1 - E2 for two separate nodes is f(z1) - f(z2) with z1, z2 the next two draws of the generator (by hand, same
    seed: nonzero), and E1 - E1 is 0 for every row."""

    class Q(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")

        def forward(self, x):
            return {"loc": x, "scale": torch.ones_like(x)}

    class P(Normal):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="p")

        def forward(self, z):
            return {"loc": z, "scale": torch.ones_like(z)}

    q, p, x = Q(), P(), torch.randn(5, 1)
    e1, e2 = E(q, LogProb(p)), E(q, LogProb(p))
    torch.manual_seed(7)
    two = (e1 - e2).eval({"x": x})
    torch.manual_seed(7)
    z1, z2 = x + torch.randn_like(x), x + torch.randn_like(x)
    f = [torch.distributions.Normal(z, 1.0).log_prob(x).sum(-1) for z in (z1, z2)]
    torch.testing.assert_close(two, f[0] - f[1])
    assert (two != 0).all()
    torch.testing.assert_close((e1 - e1).eval({"x": x}), torch.zeros(5))
