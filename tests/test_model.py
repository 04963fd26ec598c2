"""`Model` and the `VAE` preset: one optimisation step per call, against closed forms."""

import pytest
import torch
from torch import nn

from kizuna.distributions import Normal
from kizuna.losses import LogProb, ValueLoss
from kizuna.models import Model


def _learnable_normal():
    return Normal(var=["x"], loc=nn.Parameter(torch.zeros(3, dtype=torch.float64)),
                  scale=nn.Parameter(torch.ones(3, dtype=torch.float64)))


def test_maximum_likelihood_reaches_the_closed_form_mle():
    torch.manual_seed(0)
    data = torch.randn(500, 3, dtype=torch.float64) * torch.tensor([0.5, 2.0, 1.0]) + torch.tensor([1.0, -2.0, 3.0])
    p = _learnable_normal()
    model = Model(-LogProb(p).mean(), distributions=[p], optimizer=torch.optim.Adam,
                  optimizer_params={"lr": 0.05})
    for _ in range(1500):
        model.train({"x": data})
    # the Gaussian MLE is the sample mean and the (biased) sample standard deviation
    torch.testing.assert_close(p.loc.detach(), data.mean(0), atol=1e-3, rtol=0)
    torch.testing.assert_close(p.scale.detach(), data.std(0, unbiased=False), atol=1e-3, rtol=0)


def test_train_returns_the_loss_before_the_step_and_test_changes_nothing():
    p = _learnable_normal()
    x = torch.randn(10, 3, dtype=torch.float64)
    loss = -LogProb(p).mean()
    model = Model(loss, optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1})
    expected = loss.eval({"x": x}).item()
    before = [t.detach().clone() for t in p.parameters()]
    assert model.test({"x": x}) == pytest.approx(expected)
    assert all(torch.equal(a, b) for a, b in zip(before, p.parameters()))
    assert model.train({"x": x}) == pytest.approx(expected)
    assert not torch.equal(before[0], p.loc.detach())


def test_gradient_clipping_bounds_the_step():
    p = _learnable_normal()
    x = torch.full((4, 3), 100.0, dtype=torch.float64)  # a huge gradient on loc
    model = Model(-LogProb(p).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 1.0}, clip_grad_norm=0.5)
    model.train({"x": x})
    # SGD with lr 1 moves the parameters by exactly the clipped gradient: norm <= 0.5
    step = torch.cat([p.loc.detach(), p.scale.detach() - 1])
    assert step.norm().item() == pytest.approx(0.5, rel=1e-6)
    p2 = _learnable_normal()
    Model(-LogProb(p2).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 1.0},
          clip_grad_value=0.01).train({"x": x})
    assert p2.loc.detach().abs().max().item() == pytest.approx(0.01)


@pytest.mark.parametrize("case", ["float32", "float64", "some none", "mixed dtypes", "interleaved dtypes",
                                  "below the bound", "nan"])
def test_clip_grad_norm_equals_torchs_to_the_bit(case):
    """`kizuna.models.model.clip_grad_norm` (the trainer's clipping) against torch's clip_grad_norm_ on copies of the
    same gradients: the total norm and every clipped gradient equal to the bit, on its fused path (one device and
    dtype) and where it hands the work to torch (several dtypes, whose norms torch sums group by group: 40 gradients
    alternating float32 and float64 gave another last bit of the total on 86 of 300 seeds when summed in order)."""
    from kizuna.models.model import clip_grad_norm

    g = torch.Generator().manual_seed(0 if case == "interleaved dtypes" else 3)  # 0: the sums in order differ
    shapes = [(7,), (3, 4), (1,), (5, 2), (2, 2, 2)]
    dtypes = {"float64": [torch.float64] * 5, "mixed dtypes": [torch.float32, torch.float64] * 2 + [torch.float32]}
    if case == "interleaved dtypes":
        shapes = [(int(n),) for n in torch.randint(1, 30, (40,), generator=g)]
        dtypes[case] = [torch.float32, torch.float64] * 20
    params = [nn.Parameter(torch.zeros(s, dtype=dt)) for s, dt in
              zip(shapes, dtypes.get(case, [torch.float32] * 5))]
    scale = 1e-3 if case == "below the bound" else 10.0
    grads = [scale * torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    if case == "some none":
        grads[1] = grads[3] = None
    if case == "nan":
        grads[2][0] = float("nan")

    def clipped(fn):
        for p, gr in zip(params, grads):
            p.grad = None if gr is None else gr.clone()
        total = fn(params, 2.5)
        return total, [None if p.grad is None else p.grad.clone() for p in params]

    total, got = clipped(clip_grad_norm)
    expected_total, expected = clipped(nn.utils.clip_grad_norm_)
    assert total.dtype == expected_total.dtype
    assert torch.equal(total, expected_total) or (total.isnan().item() and expected_total.isnan().item())
    for a, b in zip(got, expected):
        assert (a is None and b is None) or torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    if case == "below the bound":
        assert all(torch.equal(a, b) for a, b in zip(got, grads))  # scaled by exactly 1


def test_bad_losses_are_clear_errors():
    p = _learnable_normal()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="reduce it"):
        Model(-LogProb(p)).train({"x": x})
    with pytest.raises(FloatingPointError, match="nan"):
        Model(-LogProb(p).mean() * ValueLoss(float("nan"))).train({"x": x})
    with pytest.raises(ValueError, match="needs x"):
        Model(-LogProb(p).mean()).train({"y": x})
    with pytest.raises(TypeError, match="kizuna Loss"):
        Model(torch.tensor(1.0))
    fixed = Normal(var=["x"], loc=0.0, scale=1.0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Model(-LogProb(fixed).mean())
    # a loss that reads none of the trained distributions' parameters, or only frozen ones: torch's "element 0 of
    # tensors does not require grad" before
    with pytest.raises(ValueError, match=r"^Model: the loss .* does not depend on any trainable parameter"):
        Model(-LogProb(fixed.double()).mean(), distributions=[p]).train({"x": x})
    frozen = Model(-LogProb(p).mean())
    p.requires_grad_(False)
    with pytest.raises(ValueError, match=r"does not depend on any trainable parameter .* requires_grad False"):
        frozen.train({"x": x})


def test_distributions_default_to_those_of_the_loss_and_move_with_dtype():
    p = _learnable_normal()
    model = Model(-LogProb(p).mean())
    assert list(model.distributions) == [p]
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2]).double()
    assert prior.sample(batch_n=3)["z"].dtype == torch.float64


def test_train_and_test_switch_the_modules_mode():
    p = _learnable_normal()
    model = Model(-LogProb(p).mean())
    x = torch.randn(4, 3, dtype=torch.float64)
    model.test({"x": x})
    assert not p.training
    model.train({"x": x})
    assert p.training
    model.test({"x": x})
    assert not p.training
    # a network switched by hand between steps (e.g. to sample) is switched back by the next step, whichever it is
    from kizuna.distributions import MLPNormal

    q = MLPNormal("x", ["y"], [2, 4, 3])
    model = Model(-LogProb(q).mean())
    batch = {"x": torch.randn(4, 3), "y": torch.randn(4, 2)}
    model.train(batch)
    q.net.eval()
    model.train(batch)
    assert all(m.training for m in q.modules())
    model.test(batch)
    assert not any(m.training for m in q.modules())
    next(q.net.children()).train()  # one layer deep inside
    model.test(batch)
    assert not any(m.training for m in q.modules())


def test_train_and_test_need_no_data_when_nothing_is_observed():
    # KL[q || N(2, 0.5^2)] in closed form (torch.distributions) needs no x_dict
    from kizuna.losses import KullbackLeibler

    q = _learnable_normal()
    target = Normal(var=["x"], loc=torch.full((3,), 2.0, dtype=torch.float64),
                    scale=torch.full((3,), 0.5, dtype=torch.float64))
    model = Model(KullbackLeibler(q, target).mean(), optimizer_params={"lr": 0.05})
    exact = torch.distributions.kl_divergence(q.get_dist({}), target.get_dist({})).item()
    assert model.test() == pytest.approx(exact)
    for _ in range(300):
        model.train()
    assert model.test() < 1e-3 * exact


def test_adam_given_no_implementation_is_fused_and_makes_torchs_default_update():
    """Adam and AdamW use torch's fused kernel unless the options choose an implementation; the
    parameters after 100 steps are those of torch's default (per-parameter) Adam up to rounding."""
    from kizuna.models.model import build_optimizer

    torch.manual_seed(0)
    data = torch.randn(200, 3, dtype=torch.float64) * 2 + 1
    runs = {}
    for name, params in (("kizuna", {"lr": 0.05}), ("torch default", {"lr": 0.05, "foreach": False})):
        p = _learnable_normal()
        model = Model(-LogProb(p).mean(), distributions=[p], optimizer=torch.optim.Adam, optimizer_params=params)
        assert bool(model.optimizer.defaults.get("fused")) == (name == "kizuna")
        for _ in range(100):
            model.train({"x": data})
        runs[name] = [t.detach().clone() for t in p.parameters()]
    for a, b in zip(runs["kizuna"], runs["torch default"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert not torch.equal(a, _learnable_normal().loc.detach())  # they moved

    weight = [nn.Parameter(torch.zeros(2))]
    assert build_optimizer(torch.optim.AdamW, weight, {"lr": 1e-3}).defaults["fused"] is True
    for options in ({"fused": False}, {"foreach": True}, {"differentiable": True}):  # the user's choice stands
        assert not build_optimizer(torch.optim.Adam, weight, options).defaults.get("fused")
    assert not build_optimizer(torch.optim.SGD, weight, {"lr": 0.1}).defaults.get("fused")  # Adam's only

    class MyAdam(torch.optim.Adam):  # a subclass may change the step: built as given
        pass

    assert not build_optimizer(MyAdam, weight, {}).defaults.get("fused")
    complex_weight = [nn.Parameter(torch.zeros(2, dtype=torch.complex64))]
    assert not build_optimizer(torch.optim.Adam, complex_weight, {}).defaults.get("fused")


def test_clipping_bounds_and_patience_are_checked() -> None:
    """clip_grad_norm=nan made every weight NaN behind a finite loss; <= 0 reversed or stopped the steps; patience
    True or 2.5 was taken."""
    import numpy as np

    p = _learnable_normal()
    for name in ("clip_grad_norm", "clip_grad_value"):
        for bad in (float("nan"), 0.0, -1.0, True):
            with pytest.raises(ValueError, match=f"Model: {name} must be a positive number or None, got"):
                Model(-LogProb(p).mean(), **{name: bad})
    model = Model(-LogProb(p).mean(), clip_grad_norm=np.float32(1.0))
    x = {"x": torch.randn(8, 3, dtype=torch.float64)}
    for bad in (True, 2.5, 0):
        with pytest.raises(ValueError, match="fit: patience .* an integer >= 1, got"):
            model.fit(x, epochs=1, valid=x, patience=bad, quiet=True)


def test_lbfgs_is_refused_and_a_later_fit_resets_the_early_stop() -> None:
    """LBFGS raised a TypeError at the first step (no closure); history.stopped_epoch kept an earlier fit's stop."""
    p = _learnable_normal()
    with pytest.raises(ValueError, match="LBFGS re-evaluates the loss through a closure"):
        Model(-LogProb(p).mean(), optimizer=torch.optim.LBFGS)
    model = Model(-LogProb(p).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 0.0})
    x = {"x": torch.randn(8, 3, dtype=torch.float64)}
    model.fit(x, epochs=5, valid=x, patience=1, quiet=True)  # lr 0: no improvement, stopped at epoch 2
    assert model.history.stopped_epoch == 2
    model.fit(x, epochs=1, quiet=True)
    assert model.history.stopped_epoch is None
