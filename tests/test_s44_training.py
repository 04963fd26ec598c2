"""Stop 44, area M: `Model`'s evaluation mode for the networks a loss runs but does not train, frozen parameters in
the optimizer, and the non-finite-gradient message under ``clip_grad_norm``.

References: the loss written by hand in PyTorch with the networks in eval mode (``torch.distributions``' Normal and
KL), hand-written torch training loops over the same networks, and the exact error texts.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Normal
from kizuna.losses import KullbackLeibler, LogProb
from kizuna.models import Model
from kizuna.models.model import clip_grad_norm

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest's fixture)

F64 = torch.float64
TD = torch.distributions


class Net(Normal):
    """:math:`\\mathcal N(y; \\mu(x), \\sigma(x))` with a Linear-BatchNorm-ReLU-Dropout-Linear network."""

    def __init__(self, name: str) -> None:
        super().__init__(var=["y"], cond_var=["x"], name=name)
        self.net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}


def _data(n: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    return {"x": x, "y": x[:, :1] - x[:, 1:2] + 0.1 * torch.randn(n, 1, generator=g, dtype=F64)}


def _by_hand(q: Net, r: Net, data: dict[str, torch.Tensor]) -> float:
    """``mean(KL[q(y|x) || r(y|x)] - log q(y|x))`` with both networks in eval mode, in torch."""
    modes = [(m, m.training) for m in (*q.modules(), *r.modules())]
    q.eval()
    r.eval()
    with torch.no_grad():
        dq, dr = (TD.Normal(**d.forward(data["x"])) for d in (q, r))
        value = (TD.kl_divergence(dq, dr).sum(-1) - dq.log_prob(data["y"]).sum(-1)).mean().item()
    for m, training in modes:
        m.training = training
    return value


def _frozen_prior_model() -> tuple[Model, Net, Net]:
    """A model training q(y|x) with a KL to r(y|x), a fixed network (frozen, outside ``distributions``) that has
    batch normalisation and dropout."""
    torch.manual_seed(0)
    q, r = Net("q").double(), Net("r").double()
    r.requires_grad_(False)
    model = Model((KullbackLeibler(q, r) - LogProb(q)).mean(), distributions=[q], optimizer=torch.optim.SGD,
                  optimizer_params={"lr": 0.05})
    return model, q, r


# ------------------------------------------------------------------ 1. evaluation puts the untrained networks in eval
def test_test_runs_the_untrained_network_in_eval_mode_and_leaves_it_as_it_was() -> None:
    model, q, r = _frozen_prior_model()
    data = _data()
    bn = r.net[1]
    stats = [t.clone() for t in bn.buffers()]
    assert r.training  # a fresh module is in training mode: the user's mode, to be given back
    expected = _by_hand(q, r, data)
    torch.manual_seed(1)
    a = model.test(data).item()
    torch.manual_seed(2)  # another random state: dropout off, so the same value
    b = model.test(data).item()
    assert a == b
    assert a == pytest.approx(expected, rel=1e-12, abs=0)
    assert all(torch.equal(s, t) for s, t in zip(stats, bn.buffers()))  # running statistics, num_batches_tracked
    assert r.training and all(m.training for m in r.modules())  # its own mode back
    assert not q.training  # the trained distribution: left in eval mode, as Pixyz's test (the next step switches it)
    r.eval()  # the user's eval mode is kept too
    model.test(data)
    assert not any(m.training for m in r.modules())


def test_fit_validation_runs_the_untrained_network_in_eval_mode() -> None:
    model, q, r = _frozen_prior_model()
    data, valid = _data(32), _data(20)
    r.eval()  # a fixed network in eval mode: the training steps do not switch it (only the trained ones)
    stats = [t.clone() for t in r.net[1].buffers()]
    history = model.fit(data, epochs=2, batch_size=8, valid=valid, quiet=True, seed=0)
    assert all(torch.equal(s, t) for s, t in zip(stats, r.net[1].buffers()))
    assert not any(m.training for m in r.modules()) and q.training
    assert history["valid"][-1] == pytest.approx(_by_hand(q, r, valid), rel=1e-12, abs=0)
    # in training mode, the steps move its statistics (its owner's choice) and validation does not
    r.train()
    stats = [t.clone() for t in r.net[1].buffers()]
    history = model.fit(data, epochs=1, batch_size=32, shuffle=False, valid=valid, quiet=True)
    moved = r.net[1].running_mean.clone()
    assert not torch.equal(stats[0], moved)  # the one training step (one batch) moved it, validation did not:
    assert r.net[1].num_batches_tracked.item() == stats[2].item() + 1
    assert r.training and all(m.training for m in r.modules())
    assert history["valid"][-1] == pytest.approx(_by_hand(q, r, valid), rel=1e-12, abs=0)


# --------------------------------------------------------------- 2. frozen parameters are in the optimizer
class Reg(Normal):
    def __init__(self) -> None:
        super().__init__(var=["y"], cond_var=["x"], name="p")
        self.backbone, self.head = nn.Linear(3, 8), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.head(torch.tanh(self.backbone(x))), "scale": torch.ones_like(x[:, :1])}


def test_a_backbone_frozen_when_the_model_is_built_trains_after_unfreezing_as_a_torch_loop() -> None:
    torch.manual_seed(0)
    p = Reg()
    ref = copy.deepcopy(p)
    data = {k: v.float() for k, v in _data().items()}
    p.backbone.requires_grad_(False)
    model = Model(-LogProb(p).mean(), optimizer_params={"lr": 1e-2})  # Adam: torch's fused kernel
    assert sum(len(g["params"]) for g in model.optimizer.param_groups) == 4  # every parameter, as Pixyz's
    ref.backbone.requires_grad_(False)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, fused=True)  # the hand-written loop (Pixyz's optimizer)

    def hand_step() -> None:
        opt.zero_grad(set_to_none=True)
        dist = TD.Normal(**ref.forward(data["x"]))
        (-dist.log_prob(data["y"]).sum(-1).mean()).backward()
        opt.step()

    w0 = p.backbone.weight.clone()
    for _ in range(3):
        model.train(data)
        hand_step()
    assert torch.equal(p.backbone.weight, w0) and not model.optimizer.state[p.backbone.weight]
    p.backbone.requires_grad_(True)
    ref.backbone.requires_grad_(True)
    for _ in range(3):
        model.train(data)
        hand_step()
    assert (p.backbone.weight - w0).abs().max().item() > 1e-3  # it trains (it stayed out of the optimizer for good)
    for a, b in zip(p.parameters(), ref.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("optimizer, options", [
    (torch.optim.Adam, {"lr": 0.1, "weight_decay": 0.5}),
    (torch.optim.Adam, {"lr": 0.1, "weight_decay": 0.5, "fused": False, "foreach": False}),
    (torch.optim.Adam, {"lr": 0.1, "weight_decay": 0.5, "foreach": True}),
    (torch.optim.AdamW, {"lr": 0.1, "weight_decay": 0.5}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.5}),
], ids=["adam-fused", "adam-loop", "adam-foreach", "adamw-fused", "sgd"])
def test_frozen_parameters_in_the_optimizer_are_left_as_they_are(optimizer, options) -> None:
    """Weight decay does not touch a frozen parameter (torch skips a parameter without a gradient), and the others
    train to the bit as with an optimizer over the trainable ones only (the old construction)."""
    torch.manual_seed(0)
    p = Reg()
    ref = copy.deepcopy(p)
    data = {k: v.float() for k, v in _data().items()}
    for d in (p, ref):
        d.backbone.weight.requires_grad_(False)
    model = Model(-LogProb(p).mean(), optimizer=optimizer, optimizer_params=options)
    held = {id(t) for g in model.optimizer.param_groups for t in g["params"]}
    assert id(p.backbone.weight) in held
    if optimizer is not torch.optim.SGD and "fused" not in options and "foreach" not in options:
        assert model.optimizer.param_groups[0]["fused"]
    trainable = [t for t in ref.parameters() if t.requires_grad]
    opt = optimizer(trainable, **({"fused": True} if optimizer is not torch.optim.SGD and "fused" not in options
                                  and "foreach" not in options else {}), **options)
    w0 = p.backbone.weight.clone()
    for _ in range(4):
        model.train(data)
        opt.zero_grad(set_to_none=True)
        (-TD.Normal(**ref.forward(data["x"])).log_prob(data["y"]).sum(-1).mean()).backward()
        opt.step()
    assert torch.equal(p.backbone.weight, w0) and not model.optimizer.state[p.backbone.weight]
    for a, b in zip(p.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_a_model_built_with_every_parameter_frozen_says_so_at_its_step() -> None:
    torch.manual_seed(0)
    p = Reg().requires_grad_(False)
    model = Model(-LogProb(p).mean())
    data = {k: v.float() for k, v in _data().items()}
    with pytest.raises(ValueError, match=r"does not depend on any trainable parameter .* requires_grad False"):
        model.train(data)
    p.requires_grad_(True)
    before = p.head.bias.clone()
    model.train(data)
    assert not torch.equal(before, p.head.bias)


# ------------------------------------------------------- 4. the non-finite gradient named under clip_grad_norm
class Sqrt(Normal):
    """:math:`\\mathcal N(x; b, \\sqrt{|a|} + 1)` at ``a = 0``: ``a``'s gradient is nan, ``b``'s finite."""

    def __init__(self, big: float = 1.0, n: int = 1) -> None:
        super().__init__(var=["x"], name="p")
        self.a, self.b, self.big = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(n)), big

    def forward(self) -> dict[str, torch.Tensor]:
        return {"loc": self.b * self.big, "scale": self.a.abs().sqrt() + 1.0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("clip", [{}, {"clip_grad_value": 1.0}, {"clip_grad_norm": 1.0}])
def test_the_non_finite_gradient_is_named_alone_with_every_clipping(dtype, clip) -> None:
    p = Sqrt().to(dtype)
    model = Model(-LogProb(p).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1}, **clip)
    with pytest.raises(FloatingPointError) as info:
        model.train({"x": torch.ones(3, 1)})
    assert str(info.value).startswith("the gradient of p(x).a is non-finite; the loss ")
    assert p.a.grad is None and p.b.item() == 0.0  # the step was not taken


def test_a_total_norm_that_overflows_is_said_so() -> None:
    """Every gradient finite (``b``'s entries are -3e38), their 2-norm (4.2e38) inf in float32: the message says so
    (it named no parameter: "the gradient of  is non-finite"). The loss: 2 (1/2 + log(2 pi) / 2) = 2.83788."""
    p = Sqrt(big=3e38, n=2)
    p.a.requires_grad_(False)
    model = Model(-LogProb(p).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1}, clip_grad_norm=1.0)
    with pytest.raises(FloatingPointError) as info:
        model.train({"x": torch.ones(3, 2)})
    assert str(info.value) == (
        "the gradients' total norm (clip_grad_norm=1) is not finite although every gradient is: their 2-norm "
        "overflows the parameters' dtype; the loss 2.83788 is finite; the loss has no separate terms; the step was "
        "not taken: the parameters are those after the last finite step")


@pytest.mark.parametrize("dtypes", [[torch.float32] * 3, [torch.float32, torch.float64, torch.float32]],
                         ids=["fused path", "torch's function"])
def test_clip_grad_norm_keeps_non_finite_gradients_when_asked(dtypes) -> None:
    params = [nn.Parameter(torch.zeros(2, dtype=dt)) for dt in dtypes]
    grads = [torch.tensor([3.0, 4.0], dtype=dt) for dt in dtypes]
    grads[1][0] = float("nan")
    for t, g in zip(params, grads):
        t.grad = g.clone()
    total = clip_grad_norm(params, 1.0, keep_if_nonfinite=True)
    assert total.isnan().item()
    assert all(torch.equal(t.grad.nan_to_num(7.0), g.nan_to_num(7.0)) for t, g in zip(params, grads))
    grads[1][0] = 0.0  # finite: clipped as torch clips
    for t, g in zip(params, grads):
        t.grad = g.clone()
    copies = [nn.Parameter(t.detach().clone()) for t in params]
    for c, g in zip(copies, grads):
        c.grad = g.clone()
    assert torch.equal(clip_grad_norm(params, 1.0, keep_if_nonfinite=True), nn.utils.clip_grad_norm_(copies, 1.0))
    assert all(torch.equal(t.grad, c.grad) for t, c in zip(params, copies))
