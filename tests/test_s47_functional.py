"""Stop 47, fixer F8: the refused step's batch-norm rollback after a conversion of the networks, the formula memo
under a ``torch.func.functional_call`` inside an evaluation (MAML written as a loss), and ``Model`` after a
``functional_call`` over a kizuna loss left plain tensors in a distribution (pytorch/pytorch#164759); the
``torch.func`` recipe of docs/training.md."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from kizuna.distributions import MLPBernoulli, MLPNormal, Normal, validation
from kizuna.formula import Loss
from kizuna.losses import KullbackLeibler, LogProb
from kizuna.models import VAE


class _BNEncoder(Normal):
    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.net(x)
        return {"loc": h[:, :2], "scale": nn.functional.softplus(h[:, 2:]) + 1e-3}


def _vae(q: nn.Module) -> VAE:
    p = MLPBernoulli("x", ["z"], [2, 8, 4], name="p")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="pz")
    return VAE(q, p, regularizer=KullbackLeibler(q, prior), optimizer_params={"lr": 1e-2})


def _double(model: VAE, q: _BNEncoder) -> None:
    model.distributions.double()


def _replace_bn(model: VAE, q: _BNEncoder) -> None:
    q.net[1] = nn.BatchNorm1d(8)


@pytest.mark.parametrize("change", [_double, _replace_bn], ids=["double", "bn_replaced"])
def test_a_refused_step_restores_the_live_batch_norm_statistics_after_the_networks_changed(change) -> None:
    """A step refused for a non-finite batch puts back the running statistics of the layers the model holds *now*:
    after ``.double()`` (which replaces every buffer) or a replaced BatchNorm, it restored the dead tensors found at
    the first step and left the bad batch's inf/NaN statistics in the live layer."""
    torch.manual_seed(0)
    q = _BNEncoder()
    model = _vae(q)
    x = torch.bernoulli(torch.full((16, 4), 0.5))
    model.train({"x": x})
    change(model, q)
    bn = q.net[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    bad = x.to(model.dtype).clone()
    bad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError):
        model.train({"x": bad})
    assert bn.running_mean.dtype == model.dtype
    assert torch.equal(bn.running_mean, before[0])
    assert torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2])


def _adapted(base: Loss, evaluate, alpha: float = 0.5):
    """One inner step of MAML: the loss with theta, its gradient (with a graph), the loss with theta'."""
    params = dict(base.named_parameters())
    inner = evaluate(None)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    new = {k: p - alpha * g for (k, p), g in zip(params.items(), grads)}
    return evaluate(new), inner


class _MAML(Loss):
    def __init__(self, base: Loss) -> None:
        super().__init__(input_var=["x", "z"])
        self.base = base

    def forward(self, x_dict, **kwargs):
        def evaluate(new):
            return self.base.eval(x_dict) if new is None else functional_call(self.base, new, (x_dict,))

        outer, inner = _adapted(self.base, evaluate)
        # the base loss with theta again, after the functional_call: theta's value, not theta''s
        self.seen = (inner.detach(), self.base.eval(x_dict).detach())
        return outer, {}


def test_maml_written_as_a_loss_equals_the_plain_two_step_computation() -> None:
    """A loss whose forward evaluates a base loss with theta, takes an inner step and evaluates it with theta' by
    ``functional_call`` (one evaluation): the memo served theta's parameters for theta' (2.4768 instead of 2.1152,
    a meta-gradient off by 0.50)."""
    torch.manual_seed(0)
    q = MLPNormal("z", ["x"], [3, 4, 2], name="q").double()
    base = -LogProb(q).mean()
    data = {"x": torch.randn(6, 3, dtype=torch.float64), "z": torch.randn(6, 2, dtype=torch.float64)}

    def plain(new):
        return base.eval(data) if new is None else functional_call(base, new, (data,))

    expected, inner = _adapted(base, plain)
    # the reference of the reference: a copy of the model holding theta' as its parameters
    grads = torch.autograd.grad(base.eval(data), list(base.parameters()))
    fresh = copy.deepcopy(base)
    with torch.no_grad():
        for p, g in zip(fresh.parameters(), grads):
            p.sub_(0.5 * g)
    assert torch.allclose(expected, fresh.eval(data), rtol=0, atol=1e-12)

    maml = _MAML(base)
    loss = maml.eval(data)
    assert torch.allclose(loss, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(loss, inner)  # (the step changed the loss: the test can tell them apart)
    assert torch.allclose(maml.seen[0], inner, rtol=0, atol=1e-12)
    assert torch.allclose(maml.seen[1], inner, rtol=0, atol=1e-12)
    ps = list(base.parameters())
    for got, want in zip(torch.autograd.grad(maml.eval(data), ps), torch.autograd.grad(_adapted(base, plain)[0], ps)):
        assert torch.allclose(got, want, rtol=0, atol=1e-10)


def test_a_step_after_functional_call_left_plain_tensors_in_a_distribution_is_refused() -> None:
    """``functional_call`` over a kizuna loss (the encoder at four module paths) leaves the given tensors in the
    encoder (pytorch/pytorch#164759): ``Model.train`` then ran and never moved the encoder. Refused, naming the
    parameters and the cause; the parameters put back, the model trains."""
    torch.manual_seed(0)
    q = MLPNormal("z", ["x"], [4, 8, 2], name="q")
    model = _vae(q)
    x = torch.bernoulli(torch.full((16, 4), 0.5))
    kept = dict(q.named_parameters())
    functional_call(model.loss_cls, {k: v.detach() for k, v in model.loss_cls.named_parameters()}, ({"x": x},))
    if all(p is kept[k] for k, p in q.named_parameters()):
        pytest.skip("this torch restores a module reachable from several paths (pytorch/pytorch#164759 fixed)")
    with pytest.raises(RuntimeError, match=re.escape(
            "Model: the trained distributions hold plain tensors where the optimizer's parameters were: "
            "net.0.weight of q(z|x) (a Tensor with requires_grad=False); net.0.bias of q(z|x)")) as err:
        model.train({"x": x})
    assert "pytorch/pytorch#164759" in str(err.value) and "docs/training.md, 'torch.func'" in str(err.value)
    for name, p in kept.items():  # put back, as the message says
        module_name, _, attr = name.rpartition(".")
        setattr(q.get_submodule(module_name), attr, p)
    before = kept["net.0.weight"].detach().clone()
    model.train({"x": x})
    assert not torch.equal(kept["net.0.weight"].detach(), before)


class _Functional(nn.Module):
    """docs/training.md's torch.func wrapper: each distribution once, the loss a plain attribute."""

    def __init__(self, loss: Loss, distributions) -> None:
        super().__init__()
        self.distributions = nn.ModuleList(distributions)
        object.__setattr__(self, "loss", loss)

    def forward(self, x_dict, **options):
        return self.loss.eval(x_dict, **options)


def test_the_torch_func_recipe_gives_the_per_sample_gradients_of_a_loop_and_leaves_the_model_trainable() -> None:
    torch.manual_seed(0)
    q = MLPNormal("z", ["x"], [4, 8, 2], name="q").double()
    model = _vae(q)
    model.distributions.double()
    x = torch.bernoulli(torch.full((5, 4), 0.5, dtype=torch.float64))
    f = _Functional(model.loss_cls, model.distributions)
    params = {k: v.detach() for k, v in f.named_parameters()}
    kept = dict(f.named_parameters())

    def sample_loss(ps, xi):
        return functional_call(f, ps, ({"x": xi[None]},), {"sample_mean": True})

    with validation(False):
        per_sample = vmap(grad(sample_loss), in_dims=(None, 0))(params, x)
    for i in range(len(x)):
        ps = [p for p in model.distributions.parameters()]
        loop = torch.autograd.grad(model.loss_cls.eval({"x": x[i:i + 1]}, sample_mean=True), ps)
        for (name, _), g in zip(f.named_parameters(), loop):
            assert torch.allclose(per_sample[name][i], g, rtol=0, atol=1e-10), name
    assert all(p is kept[k] for k, p in f.named_parameters())  # the parameters are the model's again
    before = kept["distributions.0.net.0.weight"].detach().clone()
    model.train({"x": x})
    assert not torch.equal(kept["distributions.0.net.0.weight"].detach(), before)


def test_a_scripted_network_trains_and_a_layer_replacing_its_buffer_runs_once() -> None:
    """Diff review 6: a distribution holding a ``torch.jit.script`` network could not train (the held-parameter check
    read the ScriptModule's dict wrapper with ``dict.get``); a layer that reassigns one of its buffers in its forward
    ran twice per evaluation (the memo recorded the tensors held before the forward, so the next read missed)."""
    from torch import nn

    from kizuna.distributions import Normal
    from kizuna.losses import Expectation, KullbackLeibler, LogProb
    from kizuna.models import Model

    class Counted(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls = self.calls + 1  # a buffer replaced, as a running statistic written `self.rm = ...` is
            return self.lin(x)

    for net in (torch.jit.script(nn.Linear(3, 4)), Counted()):
        class Q(Normal):
            def __init__(self, net):
                super().__init__(var=["z"], cond_var=["x"], name="q")
                self.net = net

            def forward(self, x):
                h = self.net(x)
                return {"loc": h[:, :2], "scale": nn.functional.softplus(h[:, 2:]) + 0.1}

        q = Q(net)
        prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), features_shape=[2], name="p")
        loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(prior))).mean()
        model = Model(loss, distributions=[q])
        assert torch.isfinite(model.train({"x": torch.randn(5, 3)}))
        if isinstance(net, Counted):
            assert net.calls.item() == 1
