"""Stop 48, fixer FP: the per-step cost of the memo's keys and of `Model`'s rollback list, cut without losing what
they see.

* `memoized`'s common miss (an owner with no watched module, outside autocast) asks only whether dynamo traces
  (`memo._tracing`), not ``torch.compiler.is_compiling`` (two calls); the full question is left to the slow branch.
* the held-tensor compare of a hit is inline; a ``torch.func.functional_call`` inside one evaluation is still seen,
  in the plain mode and in a mode with watched modules (references: ``F.linear`` with the swapped-in tensors).
* `Model` reads its forward writers (`_forward_writers`) once a step, not twice, and keeps their copies without a
  graph; a refused step still puts back the statistics (reference: the values before the step).
"""

from __future__ import annotations

import pytest
import torch
from test_s47_functional import _BNEncoder  # (the encoder with batch norm that stop 47's tests train)
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from kizuna.distributions import MLPBernoulli, Normal
from kizuna.formula import memo
from kizuna.formula.memo import memoized, shared_parameters
from kizuna.losses import KullbackLeibler
from kizuna.models import VAE, Model


class _Reader(nn.Module):
    """Reads ``net(x)`` through the memo (owner ``net``), as a distribution reads its parameters."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return memoized(self.net, "out", [x], self.net, x)


@pytest.mark.parametrize("layer", ["none", "dropout"], ids=["plain_mode", "watched_mode"])
def test_a_functional_call_inside_one_evaluation_is_seen_by_the_inline_compare(layer: str) -> None:
    """theta, then theta' by functional_call, then theta again, all in one evaluation: theta' gets its own value
    (F.linear with theta'), and theta's read after the call is served theta's entry, not theta''s."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    net = nn.Sequential(lin, nn.Dropout(0.5)).eval() if layer == "dropout" else nn.Sequential(lin)
    reader = _Reader(net)
    x = torch.randn(4, 3)
    w2, b2 = torch.randn(2, 3), torch.randn(2)
    with shared_parameters():
        first = reader(x)
        swapped = functional_call(reader, {"net.0.weight": w2, "net.0.bias": b2}, (x,))
        again = reader(x)
        swapped_again = functional_call(reader, {"net.0.weight": w2, "net.0.bias": b2}, (x,))
    torch.testing.assert_close(first, F.linear(x, lin.weight, lin.bias), rtol=0, atol=0)
    torch.testing.assert_close(swapped, F.linear(x, w2, b2), rtol=0, atol=0)
    torch.testing.assert_close(swapped_again, F.linear(x, w2, b2), rtol=0, atol=0)
    assert again is first  # (a hit: the entry of theta, the tensors held again)


def test_the_common_miss_asks_only_whether_dynamo_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once an owner is listed, a miss asks `_tracing` (one call) and never `_compiling` (is_compiling and
    is_scripting): the old miss path asked `_compiling` on every miss."""
    net = nn.Linear(3, 2)
    reader = _Reader(net)
    with shared_parameters():
        reader(torch.randn(2, 3))  # (the first miss lists the owner, in the slow branch)
    asked = []
    real = memo._compiling
    monkeypatch.setattr(memo, "_compiling", lambda: asked.append(1) or real())
    xs = [torch.randn(2, 3) for _ in range(3)]
    with shared_parameters():
        outs = [reader(x) for x in xs]
    assert asked == []
    for x, out in zip(xs, outs):
        torch.testing.assert_close(out, F.linear(x, net.weight, net.bias), rtol=0, atol=0)


def test_tracing_is_true_while_dynamo_traces() -> None:
    """`memo._tracing` is what keeps dynamo from reading (and guarding on) the kept listings: True in a trace."""
    fn = torch.compile(lambda x: x + 1 if memo._tracing() else x - 1, backend="eager", fullgraph=True)
    assert memo._tracing() is False
    assert torch.equal(fn(torch.zeros(2)), torch.ones(2))


def _bn_vae() -> tuple[VAE, _BNEncoder]:
    torch.manual_seed(0)
    q = _BNEncoder()
    p = MLPBernoulli("x", ["z"], [2, 8, 4], name="p")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="pz")
    return VAE(q, p, regularizer=KullbackLeibler(q, prior), optimizer_params={"lr": 1e-2}), q


def test_a_step_reads_the_forward_writers_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One `_forward_writers` read a step (the old step read them twice: for the test whether there are any, and
    again to keep them); the step's statistics are those of a plain BatchNorm1d given the same batch."""
    model, q = _bn_vae()
    calls = []
    real = Model._forward_writers
    monkeypatch.setattr(Model, "_forward_writers", lambda self: calls.append(1) or real(self))
    x = torch.bernoulli(torch.full((16, 4), 0.5))
    bn = q.net[1]
    h = q.net[0](x.to(model.dtype)).detach()
    expected = (0.9 * bn.running_mean + 0.1 * h.mean(0), 0.9 * bn.running_var + 0.1 * h.var(0, unbiased=True))
    model.train({"x": x})
    assert len(calls) == 1
    torch.testing.assert_close(bn.running_mean, expected[0])
    torch.testing.assert_close(bn.running_var, expected[1])


def test_a_refused_step_puts_back_the_statistics_kept_without_a_graph() -> None:
    """The copies a step keeps (taken with gradients off, not by a detach per tensor; given the writers read by the
    step) put back the exact values before the step: after writes in place, and after a refused step."""
    model, q = _bn_vae()
    x = torch.bernoulli(torch.full((16, 4), 0.5))
    model.train({"x": x})
    bn = q.net[1]
    tensors = (bn.running_mean, bn.running_var, bn.num_batches_tracked, bn.weight)
    before = [t.detach().clone() for t in tensors]
    restore = model._kept_forward(model._forward_writers())
    with torch.no_grad():
        for t in tensors:
            t.add_(1)
    restore()
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)
    assert bn.weight.requires_grad and isinstance(bn.weight, nn.Parameter)
    bad = x.to(model.dtype).clone()
    bad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError):
        model.train({"x": bad})
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)
