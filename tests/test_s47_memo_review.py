"""Stop 47's diff review of the memo keyed on the submodules' modes (tests/test_s46_memo_modes.py): TorchScript
networks, a compiled evaluation split by a graph break, and a submodule without a ``training`` flag."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from kizuna.distributions import Normal
from kizuna.formula.memo import memoized, shared_parameters
from kizuna.losses import KullbackLeibler as KL


def _encoder(net: nn.Module) -> Normal:
    class Q(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.net = net

        def forward(self, x):
            return {"loc": self.net(x), "scale": torch.ones_like(x)}

    return Q()


@pytest.mark.parametrize("wrap", ["script", "trace"])
def test_a_torchscript_network_gives_the_kl_of_the_plain_network(wrap: str) -> None:
    """A scripted or traced network (a ScriptModule has no Python ``forward`` on its type): the memo's walk of the
    submodules failed with an AttributeError on every evaluation; the KL is its closed form, as for the plain net."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    x = torch.randn(5, 3)
    net = torch.jit.script(plain) if wrap == "script" else torch.jit.trace(plain, x)
    prior = Normal(var=["z"], loc=torch.zeros(3), scale=torch.ones(3), features_shape=[3], name="p")
    got = KL(_encoder(net), prior).mean().eval({"x": x})
    m = plain(x).detach()
    assert torch.allclose(got.detach(), (m ** 2 / 2).sum(1).mean(), rtol=1e-6, atol=0)


def test_a_submodule_without_a_training_flag_is_read() -> None:
    """A module whose ``training`` attribute was deleted (plain attribute access raised) evaluates as before."""
    torch.manual_seed(0)
    class Scale(nn.Module):  # (a forward of its own: watched by the memo)
        def forward(self, x):
            return 2 * x

    net = nn.Sequential(nn.Linear(3, 3), Scale())
    del net[1].training
    x = torch.randn(4, 3)
    prior = Normal(var=["z"], loc=torch.zeros(3), scale=torch.ones(3), features_shape=[3], name="p")
    got = KL(_encoder(net), prior).mean().eval({"x": x})
    assert torch.allclose(got.detach(), ((2 * net[0](x)).detach() ** 2 / 2).sum(1).mean(), rtol=1e-6)


def test_a_compiled_evaluation_split_by_a_graph_break_keeps_its_memo() -> None:
    """Under torch.compile, a graph break inside the evaluation starts a new frame: the memo set up before it must
    serve the read after it (the network computed once, as eagerly), not be switched off for the evaluation."""
    net = nn.Linear(3, 3)
    calls: list[int] = []

    def compute(x):
        calls.append(1)
        return net(x)

    def step(x):
        with shared_parameters():
            a = memoized(net, "t", [x], compute, x)
            torch._dynamo.graph_break()
            b = memoized(net, "t", [x], compute, x)
        return a + b

    x = torch.randn(2, 3)
    eager = step(x)
    assert len(calls) == 1
    calls.clear()
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(step, backend="eager")(x)
    torch._dynamo.reset()
    assert len(calls) == 1
    assert torch.equal(compiled, eager)
