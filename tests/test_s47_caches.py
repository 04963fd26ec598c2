"""Stop 47: caches keyed on what they hold. `DiffusionSchedule`'s table follows a replaced betas tensor
(``schedule.betas = t``, ``.data = t``, ``load_state_dict(..., assign=True)``, ``functional_call``: the old table was
served, a DDPM bound 4.85 instead of 287.34); a distribution's caches are passed by for buffers of a ``torch.func``
transform (``grad`` w.r.t. a prior's loc failed at ``data_ptr``, ``stack_module_state`` + ``vmap`` ensembling failed as
data-dependent control flow); `lru_cache_for_sample_dict` sees forward hooks and pre-hooks added or removed."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from kizuna.distributions import DDPM, DiffusionReverse, DiffusionSchedule, MLPNormal, Normal, validation
from kizuna.losses import KullbackLeibler, diffusion_bound
from kizuna.utils import lru_cache_for_sample_dict

OLD = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
NEW = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64)


def _closed_form(betas: torch.Tensor) -> torch.Tensor:
    """alpha-bar_{0:T} = (1, prod_{s<=t} (1 - beta_s)) in float64."""
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas.double(), 0)])


class _Holder(nn.Module):
    def __init__(self, sched: DiffusionSchedule) -> None:
        super().__init__()
        self.sched = sched

    def forward(self) -> torch.Tensor:
        return self.sched.alpha_bar()


def _assign(s: DiffusionSchedule) -> None:
    s.betas = NEW.clone()


def _data(s: DiffusionSchedule) -> None:
    s.betas.data = NEW.clone()


def _load_assign(s: DiffusionSchedule) -> None:
    s.load_state_dict({"betas": NEW.clone()}, assign=True)


@pytest.mark.parametrize("replace", [_assign, _data, _load_assign], ids=["attribute", "data", "load_assign"])
def test_schedule_table_follows_replaced_betas(replace: Callable[[DiffusionSchedule], None]) -> None:
    s = DiffusionSchedule(OLD.clone())
    assert torch.equal(s.alpha_bar(), _closed_form(OLD))  # the table built
    replace(s)
    assert torch.equal(s.alpha_bar(), _closed_form(NEW))  # was the old one's: 1, .9, .72, .504
    assert torch.equal(s.constants(), DiffusionSchedule(NEW.clone()).constants())


def test_schedule_table_in_and_after_functional_call() -> None:
    s = DiffusionSchedule(OLD.clone())
    s.alpha_bar()
    inside = functional_call(_Holder(s), {"sched.betas": NEW.clone()}, ())
    assert torch.equal(inside, _closed_form(NEW))
    assert torch.equal(s.alpha_bar(), _closed_form(OLD))  # its own betas again after the call


def test_schedule_grad_through_functional_call_not_kept() -> None:
    s = DiffusionSchedule(OLD.clone())
    s.alpha_bar()
    g = grad(lambda b: functional_call(_Holder(s), {"sched.betas": b}, ()).sum())(NEW.clone())
    leaf = NEW.clone().requires_grad_()
    _closed_form(leaf).sum().backward()
    assert torch.allclose(g, leaf.grad, rtol=1e-12, atol=0)  # the old table (no graph) gave zeros
    assert not torch._C._functorch.is_functorch_wrapped_tensor(s._constants)
    assert torch.equal(s.alpha_bar(), _closed_form(OLD))


def test_schedule_meta_init_then_assign() -> None:
    sd = DiffusionSchedule.cosine(4).state_dict()
    with torch.device("meta"):
        s = DiffusionSchedule.cosine(4)
    s.load_state_dict(sd, assign=True)
    out = s.alpha_bar()
    assert not out.is_meta  # the table of the meta betas was kept
    assert torch.equal(out, DiffusionSchedule.cosine(4).alpha_bar())


class _Eps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=torch.float64)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _ddpm(sched: DiffusionSchedule) -> DDPM:
    torch.manual_seed(0)
    return DDPM(DiffusionReverse(_Eps(), sched), features_shape=[2])


def _bound(p: DDPM, x0: torch.Tensor) -> float:
    torch.manual_seed(5)
    return diffusion_bound(p, exact_steps=True).mean().eval({"x_0": x0}).item()


def test_ddpm_bound_after_load_state_dict_assign() -> None:
    x0 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    trained = _ddpm(DiffusionSchedule.cosine(10).double())
    reference = _bound(trained, x0)
    copied = _ddpm(DiffusionSchedule.linear(10).double())
    _bound(copied, x0)
    copied.load_state_dict(trained.state_dict())  # (an in-place copy: followed before too)
    assigned = _ddpm(DiffusionSchedule.linear(10).double())
    before = _bound(assigned, x0)
    assigned.load_state_dict(trained.state_dict(), assign=True)
    assert before != reference
    assert _bound(copied, x0) == reference
    assert _bound(assigned, x0) == reference  # was the linear schedule's bound


# ------------------------------------------------------------------ torch.func over a distribution's buffers
class _LogProb(nn.Module):
    def __init__(self, d: Normal) -> None:
        super().__init__()
        self.d = d

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.d.log_prob().eval({"z": z})


def _cached_tensors(d: Normal) -> list[torch.Tensor]:
    out = [v for _, dist in d.__dict__.get("_dist_cache", {}).values() for v in (dist.mean, dist.stddev)]
    return out + [t for stamp in [d.__dict__.get("_numbers_seen") or []] for t, _, _ in stamp if t is not None]


@pytest.mark.parametrize("validate", [True, False])
def test_grad_wrt_constant_prior_loc(validate: bool) -> None:
    z = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="pz").double()
    wrapper = _LogProb(prior)
    wrapper(z)  # the caches filled with the prior's own buffers
    loc = torch.full((1, 2), 0.3, dtype=torch.float64)
    with validation(validate):
        g = grad(lambda m: functional_call(wrapper, {"d.loc": m}, (z,)).sum())(loc)
    assert torch.allclose(g, (z - 0.3).sum(0, keepdim=True), rtol=1e-12, atol=0)  # d/dloc sum log N(z; loc, 1)
    assert not any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in _cached_tensors(prior))
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(wrapper(z), ref, rtol=1e-14, atol=0)


class _VAEKL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = MLPNormal("z", ["x"], [3, 4, 2], name="q").double()
        self.prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="pz").double()
        self.loss = KullbackLeibler(self.q, self.prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.loss.eval({"x": x})


@pytest.mark.parametrize("validate", [False, True])
def test_vmap_ensemble_over_stacked_buffers(validate: bool) -> None:
    torch.manual_seed(0)
    models = [_VAEKL() for _ in range(3)]
    x = torch.randn(4, 3, dtype=torch.float64)
    loop = torch.stack([m(x) for m in models])
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    with validation(validate):
        out = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, x)
    assert torch.allclose(out, loop, rtol=1e-14, atol=0)
    assert torch.allclose(torch.stack([m(x) for m in models]), loop, rtol=0, atol=0)


class _Sampler(nn.Module):
    def __init__(self, d: Normal) -> None:
        super().__init__()
        self.d = d

    def forward(self) -> torch.Tensor:
        return self.d.sample(batch_n=4, reparam=True)["z"]


def test_vmap_prior_draw_over_stacked_buffers() -> None:
    priors = [Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="pz").double() for _ in range(2)]
    with torch.no_grad():
        priors[1].loc.fill_(1.0)
    buffers = stack_module_state(priors)[1]
    sampler = _Sampler(copy.deepcopy(priors[0]).to("meta"))
    with validation(False):  # (the draw's fast path for N(0, 1) stamped the buffers: data_ptr of a BatchedTensor)
        torch.manual_seed(3)
        out = vmap(lambda b: functional_call(sampler, {"d." + k: v for k, v in b.items()}, ()),
                   randomness="same")(buffers)
    torch.manual_seed(3)
    eps = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(out[0], eps)
    assert torch.equal(out[1], eps + 1)


# ------------------------------------------------------------------ lru_cache_for_sample_dict and hooks
class _Q(Normal):
    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.lin = nn.Linear(3, 2, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.lin(x)
        return {"loc": h, "scale": torch.ones_like(h)}

    @lru_cache_for_sample_dict()
    def get_params(self, params_dict: dict | None = None, **kwargs: object) -> dict[str, torch.Tensor]:
        return super().get_params(params_dict, **kwargs)


def test_lru_cache_sees_forward_hooks() -> None:
    torch.manual_seed(0)
    q, x = _Q(), torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        plain = x @ q.lin.weight.T + q.lin.bias
    assert torch.equal(q.get_params({"x": x})["loc"], plain)
    handle = q.lin.register_forward_hook(lambda m, i, o: o * 3)
    assert torch.equal(q.get_params({"x": x})["loc"], plain * 3)  # was the cached plain
    handle.remove()
    assert torch.equal(q.get_params({"x": x})["loc"], plain)
    handle = q.lin.register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    with torch.no_grad():
        assert torch.equal(q.get_params({"x": x})["loc"], (2 * x) @ q.lin.weight.T + q.lin.bias)
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: o + 1 if m is q.lin else None)
    try:
        assert torch.equal(q.get_params({"x": x})["loc"], plain + 1)
    finally:
        handle.remove()
    assert torch.equal(q.get_params({"x": x})["loc"], plain)


def test_the_schedule_under_torch_func_and_with_betas_that_require_grad():
    """Diff review 5: the exact-betas shortcut (`_betas64`) gave a zero gradient at the schedule's own betas under
    ``torch.func.grad`` (52.48 by autograd in float64), served ``vmap`` over two schedules the first one's table, and a
    buffer made to require grad after its table was kept got no gradient (a second backward failed)."""
    from torch.func import functional_call, grad, vmap

    from kizuna.distributions import DiffusionSchedule

    class W(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.s = DiffusionSchedule.linear(10)

        def forward(self):
            return self.s._table()[1:, 2].sum()

    w = W()
    b = w.s.betas.detach().clone()

    def f(betas):
        return functional_call(w, {"s.betas": betas}, ())

    b64 = b.double().requires_grad_()
    want, = torch.autograd.grad(torch.cumprod(1 - b64, 0).sum(), b64)
    assert torch.allclose(grad(f)(b).double(), want, rtol=1e-5)
    both = vmap(f)(torch.stack([b, b * 1.5]))
    assert torch.equal(both, torch.stack([f(b), f(b * 1.5)]))
    s = DiffusionSchedule.linear(20)
    s.alpha_bar()  # the table kept
    s.betas.requires_grad_(True)
    for _ in range(2):
        (s.alpha_bar().sum() + s.alpha_bar().sum()).backward()
    assert s.betas.grad is not None and s.betas.grad.abs().sum() > 0
