"""`lru_cache_for_sample_dict` against the uncached computation after a fused optimizer's step (kizuna's default
Adam) and after freezing / unfreezing, and `Parameter` given a Python number in a float64 evaluation against the
same arithmetic on Python numbers (review of stop 43, area E, findings 1-3)."""

from __future__ import annotations

import pytest
import torch

from kizuna import utils
from kizuna.distributions import Normal
from kizuna.losses import Expectation, KullbackLeibler, LogProb, Parameter
from kizuna.models import Model
from kizuna.utils import lru_cache_for_sample_dict


def make_encoder_class(cached: bool = True) -> type[Normal]:
    """A Pixyz-style encoder whose ``get_params`` carries ``@lru_cache_for_sample_dict()`` (made now: each class has
    its own cache); ``cached=False``: the same network without it."""

    class Q(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.loc, self.pre_scale = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": self.loc(x), "scale": torch.nn.functional.softplus(self.pre_scale(x)) + 1e-3}

    if not cached:
        return Q

    class CachedQ(Q):
        @lru_cache_for_sample_dict()
        def get_params(self, params_dict: dict | None = None, **kwargs: object) -> dict:
            return super().get_params(params_dict, **kwargs)

    return CachedQ


class Decoder(Normal):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.loc = torch.nn.Linear(2, 4)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.loc(z), "scale": torch.ones(z.shape[0], 4)}


def vae(q: Normal) -> tuple[Model, KullbackLeibler]:
    """A VAE over ``q`` trained with kizuna's default optimizer set-up (Adam, fused where torch has the kernel),
    and its KL term."""
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    kl, p = KullbackLeibler(q, prior), Decoder()
    model = Model((kl - Expectation(q, LogProb(p))).mean(), distributions=[p, q], optimizer=torch.optim.Adam,
                  optimizer_params={"lr": 1e-2})
    return model, kl


# 1. an optimizer step, fused or not, invalidates the stored results
def test_cached_encoder_in_a_model_follows_the_default_fused_adam_step() -> None:
    """A fixed validation tensor scored before and after a training step on another batch: the cache served the
    parameters of before the step (the fused kernel leaves the in-place versions as they were)."""
    q = make_encoder_class()()
    model, kl = vae(q)
    assert model.optimizer.defaults.get("fused"), "the check needs kizuna's default fused Adam"
    x_val = torch.randn(8, 4)
    with torch.no_grad():
        before = kl.eval({"x": x_val}).mean().item()
    model.train({"x": torch.randn(8, 4) + 1.0})
    with torch.no_grad():
        served = kl.eval({"x": x_val}).mean().item()
    type(q).get_params.cache_clear()
    with torch.no_grad():
        fresh = kl.eval({"x": x_val}).mean().item()
    assert fresh != before  # the step changed the encoder
    assert served == fresh


def test_model_trains_twice_on_one_tensor_as_without_the_cache() -> None:
    """Full-batch training: the second step was served the first step's (freed) graph and raised torch's "Trying
    to backward through the graph a second time"; the losses now equal an uncached twin's, step by step."""
    cached_q, plain_q = make_encoder_class()(), make_encoder_class(cached=False)()
    plain_q.load_state_dict(cached_q.state_dict())
    x = torch.randn(8, 4)
    losses = []
    for q in (cached_q, plain_q):
        torch.manual_seed(1)
        model, _ = vae(q)
        losses.append([model.train({"x": x}).item() for _ in range(3)])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
@pytest.mark.parametrize("fused", [False, True])
def test_a_step_of_an_optimizer_made_before_the_step_hook_invalidates_the_cache(name: str, fused: bool) -> None:
    """Every ``torch.optim`` step counts, fused or not, also for an optimizer made before the cache registered its
    step hook (the hook is global): the result after the step equals the uncached computation."""
    hooks = getattr(utils, "_STEP_HOOK", [])
    if hooks:  # as in a session whose first cache is made after the optimizer: the decorator below registers it
        hooks.pop().remove()
    net = torch.nn.Linear(3, 2)
    try:
        opt = getattr(torch.optim, name)(net.parameters(), lr=0.1, fused=fused)
    except RuntimeError as err:  # a torch without the CPU kernel
        pytest.skip(f"no fused {name} here: {err}")

    class Cached(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        @lru_cache_for_sample_dict()
        def params(self, x_dict: dict) -> torch.Tensor:
            return self.net(x_dict["x"])

    m, x = Cached(), torch.randn(4, 3)
    first = m.params({"x": x})
    assert m.params({"x": x}) is first  # cached while nothing changes
    first.sum().backward()
    opt.step()
    after = m.params({"x": x})
    assert not torch.equal(after, first)
    assert torch.equal(after, net(x))


# 2. requires_grad of the parameters and of the inputs is part of the key
def test_a_result_computed_frozen_is_not_served_after_unfreezing() -> None:
    """Frozen, then unfrozen, on the same tensors: the graph-less result of the frozen call was served, and the
    encoder got no gradient (and so never trained); now its gradients equal the uncached computation's."""
    q = make_encoder_class()()
    x, z = torch.randn(8, 4), torch.randn(8, 2)
    q.requires_grad_(False)
    assert not q.get_log_prob({"x": x, "z": z}).requires_grad
    q.requires_grad_(True)
    served = q.get_log_prob({"x": x, "z": z}).mean()
    assert served.requires_grad
    grads = torch.autograd.grad(served, [q.loc.weight, q.pre_scale.weight])
    type(q).get_params.cache_clear()
    fresh = q.get_log_prob({"x": x, "z": z}).mean()
    for got, want in zip(grads, torch.autograd.grad(fresh, [q.loc.weight, q.pre_scale.weight]), strict=True):
        assert torch.equal(got, want)


def test_an_input_set_to_require_grad_after_a_first_call_gets_its_gradient() -> None:
    """``x.requires_grad_()`` after a first call with ``x`` (input gradients, saliency): ``autograd.grad`` returned
    None; now it equals the gradient of the uncached computation."""
    q = make_encoder_class()()
    x, z = torch.randn(4, 4), torch.randn(4, 2)
    q.get_log_prob({"x": x, "z": z})
    x.requires_grad_()
    (got,) = torch.autograd.grad(q.get_log_prob({"x": x, "z": z}).sum(), x, allow_unused=True)
    assert got is not None
    x_copy = x.detach().clone().requires_grad_()  # another tensor: computed anew
    (want,) = torch.autograd.grad(q.get_log_prob({"x": x_copy, "z": z}).sum(), x_copy)
    assert torch.equal(got, want)


# 3. Parameter given a Python number follows the evaluation's dtype
@pytest.mark.parametrize("form", ["b * lp", "lp * b", "(1 - b) * lp", "b ** 2 * lp", "lp / b", "b * c * lp"])
def test_parameter_given_a_python_float_is_exact_in_a_float64_evaluation(form: str) -> None:
    """``Parameter("b")`` given 0.1 was a float32 tensor: a float64 loss was computed with 0.10000000149 (relative
    error 1.5e-8). It is now the number, as a number constant (`ValueLoss`) is: the value equals the same formula
    on Python numbers and the float64 log-density exactly."""
    p = Normal(var=["x"], loc=torch.zeros(3, dtype=torch.float64), scale=torch.full((3,), 0.7, dtype=torch.float64))
    x = torch.randn(5, 3, dtype=torch.float64)
    b, c, lp = Parameter("b"), Parameter("c"), LogProb(p)
    loss = eval(form, {"b": b, "c": c, "lp": lp})
    want = eval(form, {"b": 0.1, "c": 0.3, "lp": p.get_log_prob({"x": x})})
    got = loss.eval({"x": x, "b": 0.1, "c": 0.3})
    assert got.dtype == torch.float64
    assert torch.equal(got, want)


def test_a_named_parameter_given_a_number_is_reported_and_a_tensor_one_is_used_as_given() -> None:
    """The number is used, and the parameter's value is still reported as a term; a tensor value is used as given."""
    p = Normal(var=["x"], loc=torch.zeros(3, dtype=torch.float64), scale=torch.ones(3, dtype=torch.float64))
    x = torch.randn(5, 3, dtype=torch.float64)
    loss = (Parameter("b").named("beta") * LogProb(p)).mean()
    value, terms = loss.eval({"x": x, "b": 0.1}, return_terms=True)
    assert torch.equal(value, (0.1 * p.get_log_prob({"x": x})).mean())
    assert terms["beta"].item() == pytest.approx(0.1)
    _, terms = (Parameter("b") * LogProb(p)).mean().eval({"x": x, "b": 0.1}, return_terms=True)
    assert terms["b"].item() == pytest.approx(0.1)  # a parameter is a reported term, named or not
    beta = torch.tensor(0.1)  # a tensor is taken as given (float32 here), as torch combines it
    assert torch.equal(loss.eval({"x": x, "b": beta}), (beta * p.get_log_prob({"x": x})).mean())
