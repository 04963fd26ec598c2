"""Stop 49, review R1 of the transparent `Named` node (d3f051d). The node stands for its loss in ``modules()`` (it
shares the loss's submodules, not the loss), so `IterativeLoss`, which found its expectations in ``modules()``, missed a
named one and got wrong gradients with no warning; the node also took writes its loss did not see, let
``torch.nn.utils.parametrize`` strip the loss's parameter, and its ``nn.DataParallel`` replicas evaluated the original
loss. Each test checks by value against the same loss unnamed or an exact reference (enumeration, a closed form).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from mc_reference import assert_mc_close, standard_error
from test_s43_gradients import TH, _BernoulliChain, _chain_exact
from torch.nn.utils import parametrize

from kizuna.distributions import Bernoulli, Normal
from kizuna.formula.expr import Named
from kizuna.losses import Expectation, IterativeLoss, KullbackLeibler, Loss, Parameter, ValueLoss

F64 = torch.float64


# ------------------------------------------------------------------ 1. IterativeLoss with a named expectation
# the chain and its exact gradient by enumeration: stop 43's (tests/test_s43_gradients.py)


def _chain_gradient(named: bool, n: int = 20000) -> torch.Tensor:
    """Per-row gradient samples of the chain's IterativeLoss, its expectation named or not (seed 0)."""
    e = Expectation(_BernoulliChain(), (Parameter("z") + 2 * Parameter("z_prev") - 0.5) ** 2)
    loss = IterativeLoss((e.named("cost") if named else e).mean(), max_iter=3, update_value={"z": "z_prev"})
    th = torch.tensor(TH, dtype=F64).repeat(n, 1).requires_grad_()
    torch.manual_seed(0)
    value = loss.eval({"z_prev": torch.zeros(n, 1, dtype=F64), "th": th})
    return torch.autograd.grad(value, th)[0] * n  # row i's gradient sample (the loss is the mean over rows)


def test_iterative_loss_scores_a_named_carried_bernoulli_draw(one_thread: None) -> None:
    """A named score-function expectation in the step loss: the mean per-row gradient is the exact one ([3.425,
    1.223]), the same draws as unnamed give the same gradient; the named one gave [0.798, 0.798] (its score terms for
    later steps were dropped: `IterativeLoss` did not see the expectation in ``modules()``)."""
    exact = _chain_exact()
    torch.testing.assert_close(exact, torch.tensor([3.4253, 1.2231], dtype=F64), atol=1e-4, rtol=0)
    named, bare = _chain_gradient(True), _chain_gradient(False)
    assert_mc_close(named.mean(0), exact, standard_error(named), what="IterativeLoss, named expectation")
    torch.testing.assert_close(named, bare, rtol=1e-12, atol=1e-12)


class _Switch(Bernoulli):
    """q(y) = Bernoulli(sigmoid(l)), ``l`` given per row."""

    def __init__(self) -> None:
        super().__init__(var=["y"], cond_var=["l"], logits="l", name="q_y")


def test_iterative_loss_reaches_the_ancestor_of_a_named_carried_draw(one_thread: None) -> None:
    """z ~ N(y, 1) is carried, y ~ Bernoulli(sigmoid(l)) is not, the inner expectation over z named: d/dl = s (1 - s)
    exactly (0.2403 at l = 0.4); with the name hiding q_z from ``modules()``, y's score was left out (-0.020)."""
    n, l0 = 10000, 0.4
    s = 1 / (1 + math.exp(-l0))
    grads, reach = {}, {}
    for named in (False, True):
        q_z = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q_z")
        inner = Expectation(q_z, Parameter("z_prev") ** 2)
        loss = IterativeLoss(Expectation(_Switch(), inner.named("inner") if named else inner).mean(), max_iter=2,
                             update_value={"z": "z_prev"})
        logits = torch.full((n,), l0, dtype=F64, requires_grad=True)
        torch.manual_seed(1)
        value = loss.eval({"z_prev": torch.zeros(n, dtype=F64), "l": logits})
        grads[named] = torch.autograd.grad(value, logits)[0] * n
        reach[named] = loss._reach
    assert_mc_close(grads[True].mean(), s * (1 - s), standard_error(grads[True]), what="named ancestor")
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-12, atol=1e-12)
    assert reach[True] == reach[False] == {"l", "y", "z"}


# ------------------------------------------------------------------ 5. a number named directly
def test_named_built_from_a_number_is_that_constant() -> None:
    """``Named(3.0, "three")`` (any operator takes a number as its operand) evaluates to 3.0 under its name."""
    n = Named(3.0, "three")
    value, terms = n.eval({}, return_terms=True)
    assert float(value) == 3.0
    assert list(terms) == ["three"] and float(terms["three"]) == 3.0


# ------------------------------------------------------------------ 2. parametrize through a name
class _Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_parametrize_through_a_name_is_refused_and_the_loss_is_left_whole() -> None:
    """``register_parametrization`` on a named node is refused before it changes anything (it deleted the shared
    parameter and put its property on the node's class only: every evaluation of the loss then raised); on the loss
    itself it works and every name of it sees it."""
    w = ValueLoss(torch.nn.Parameter(torch.tensor(0.5)))
    named = w.named("beta")
    with pytest.raises(AttributeError, match="on the loss itself"):
        parametrize.register_parametrization(named, "value", _Double())
    assert type(named) is Named and list(w._parameters) == ["value"] and not w._modules
    assert w.eval({}).item() == 0.5 and (w * 2).eval({}).item() == 1.0 and named.eval({}).item() == 0.5
    assert list(w.state_dict()) == ["value"]
    parametrize.register_parametrization(w, "value", _Double())
    assert w.eval({}).item() == 1.0 and named.eval({}).item() == 1.0


# ------------------------------------------------------------------ 4. writes through a name
class _Scaled(Loss):
    """beta * base: a plain attribute (an annealed weight, say) times a buffer."""

    def __init__(self) -> None:
        super().__init__([])
        self.beta = 1.0
        self.register_buffer("base", torch.tensor(2.0))

    def _value(self, ctx):  # noqa: ANN001, ANN202
        return self.beta * self.base

    def _render(self, fmt):  # noqa: ANN001, ANN202
        return "S"


def test_a_plain_attribute_written_through_a_name_is_the_losss() -> None:
    """``n.beta = 0.5`` sets the loss's weight: the node, the loss and the loss's other names evaluate 0.5 * 2 (the
    node kept 0.5 for itself while every evaluation used the loss's 1.0)."""
    s = _Scaled()
    n, other = s.named("S"), s.named("T")
    n.beta = 0.5
    assert s.beta == 0.5 and n.beta == 0.5
    assert float(n.eval({})) == 1.0 and float(s.eval({})) == 1.0 and float(other.eval({})) == 1.0
    del n.beta
    assert not hasattr(s, "beta") and not hasattr(n, "beta")


def test_a_module_written_through_a_name_agrees_with_every_path() -> None:
    """``n.net = a`` then ``s.net = b``: the node's attribute, ``get_submodule``, ``named_modules`` and ``state_dict``
    all say b (the node kept a stale a beside the loss's b)."""
    s = _Scaled()
    n = s.named("S")
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    n.net = a
    assert s.net is a and s.get_submodule("net") is a
    s.net = b
    assert n.net is b and n.get_submodule("net") is b and dict(n.named_modules())["net"] is b
    assert torch.equal(n.state_dict()["net.weight"], b.weight)


class _Encoder(Normal):
    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = torch.nn.Linear(2, 2)

    def forward(self, x):  # noqa: ANN001, ANN202
        return {"loc": self.net(x), "scale": torch.ones_like(x)}


def _kl() -> tuple[KullbackLeibler, ValueLoss]:
    torch.manual_seed(0)
    prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="prior")
    return KullbackLeibler(_Encoder(), prior), ValueLoss(torch.nn.Parameter(torch.tensor(0.5)))


def test_deleting_the_losss_state_through_a_name_is_refused_and_node_attributes_stay_its_own() -> None:
    """``del n.p`` is refused (it unregistered the loss's distribution, which the loss still evaluated), and so is a
    write of the node's own class attribute (``key``), which the node would read while the loss kept its own."""
    kl, _ = _kl()
    n = kl.named("KL")
    x = {"x": torch.randn(4, 2, generator=torch.Generator().manual_seed(2))}
    keys, before = list(kl.state_dict()), kl.eval(x)
    with pytest.raises(AttributeError, match="on the loss itself"):
        del n.p
    with pytest.raises(AttributeError, match="Named node's own"):
        n.key = "other"
    assert list(kl.state_dict()) == keys and list(n.state_dict()) == keys and n.key == ""
    torch.testing.assert_close(n.eval(x), before, rtol=0, atol=0)


# ------------------------------------------------------------------ 3. nn.DataParallel's replicate
def test_a_replica_of_a_named_loss_evaluates_the_replicas_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's ``replicate`` on CPU, its broadcast replaced by copies (replica j's tensors are the original's + j): the
    replica of ``(w.named("w") * kl).mean()`` equals the unnamed loss's replica (it evaluated the original w, 0.5, with
    the replica's KL), and the original is left as it was."""
    rep = importlib.import_module("torch.nn.parallel.replicate")
    monkeypatch.setattr(rep, "_broadcast_coalesced_reshape", lambda tensors, devices, detach=False: [
        [(t.detach() if detach else t) + j for t in tensors] for j in range(len(devices))])
    monkeypatch.setattr(rep, "_get_device_index", lambda d, optional=False: 0)
    x = {"x": torch.randn(4, 2, generator=torch.Generator().manual_seed(2))}
    values = {}
    for named in (False, True):
        kl, w = _kl()
        loss = ((w.named("w") if named else w) * kl).mean()
        original = loss.eval(x)
        replicas = rep.replicate(loss, devices=["cpu", "cpu"], detach=True)
        values[named] = [r.eval(x) for r in replicas]
        assert float(replicas[1].get_submodule("loss1.loss1").value) == 1.5
        torch.testing.assert_close(loss.eval(x), original, rtol=0, atol=0)
        assert isinstance(w.value, torch.nn.Parameter) and w.value.item() == 0.5
    torch.testing.assert_close(values[True], values[False], rtol=0, atol=0)
    assert float(values[True][1]) != float(values[True][0])
