"""MLP-conditioned distributions against torch.distributions built from the same network outputs."""

from __future__ import annotations

import pytest
import torch
from torch import distributions as D
from torch.nn import functional as F

from kizuna.distributions import MLPBernoulli, MLPCategorical, MLPNormal

F64 = torch.float64


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(5, 3, generator=g, dtype=F64), "y": torch.randn(5, 2, 1, generator=g, dtype=F64)}


def test_normal_is_torch_normal_of_the_network_outputs_on_concatenated_conditions():
    torch.manual_seed(0)
    q = MLPNormal("z", ["x", "y"], [5, 8, 4]).double()
    c = inputs()
    h = q.net(torch.cat([c["x"], c["y"].flatten(1)], 1))  # cond_var order, features flattened
    ref = D.Normal(h[:, :4], F.softplus(h[:, 4:]) + 1e-4)
    z = ref.sample()
    torch.testing.assert_close(q.get_log_prob({**c, "z": z}), ref.log_prob(z).sum(1), rtol=1e-12, atol=1e-12)
    draw = q.sample(c, reparam=True)["z"]
    assert draw.shape == (5, 4) and draw.requires_grad
    torch.testing.assert_close(q.sample_mean(c), ref.mean)


def test_normal_with_a_shared_scale_learns_one_scale_per_feature():
    torch.manual_seed(0)
    p = MLPNormal("x", ["z"], [2, 6, 3], min_scale=1e-3, shared_scale=True).double()
    with torch.no_grad():
        p.raw_scale.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    z = torch.randn(4, 2, dtype=F64)
    ref = D.Normal(p.net(z), (F.softplus(p.raw_scale) + 1e-3).expand(4, 3))
    x = ref.sample()
    torch.testing.assert_close(p.get_log_prob({"x": x, "z": z}), ref.log_prob(x).sum(1))
    p.get_log_prob({"x": x, "z": z}).sum().backward()
    assert p.raw_scale.grad is not None and bool((p.raw_scale.grad != 0).all())


def test_bernoulli_and_categorical_use_logits():
    torch.manual_seed(0)
    c = inputs(1)
    p = MLPBernoulli("w", ["x"], [3, 5, 6]).double()
    w = (torch.rand(5, 6, dtype=F64) > 0.5).to(F64)
    torch.testing.assert_close(p.get_log_prob({**c, "w": w}), D.Bernoulli(logits=p.net(c["x"])).log_prob(w).sum(1))
    q = MLPCategorical("k", ["x", "y"], [5, 4]).double()
    logits = q.net(torch.cat([c["x"], c["y"].flatten(1)], 1))
    k = torch.tensor([0, 3, 1, 2, 3])
    torch.testing.assert_close(q.get_log_prob({**c, "k": F.one_hot(k, 4).to(F64)}),
                               D.Categorical(logits=logits).log_prob(k))
    draws = q.sample(c)["k"]
    assert draws.shape == (5, 4) and bool((draws.sum(1) == 1).all())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="MLPNormal: sizes must be"):
        MLPNormal("z", ["x"], [4])
    with pytest.raises(ValueError, match="one variable"):
        MLPBernoulli(["x", "y"], ["z"], [2, 3])
    with pytest.raises(ValueError, match="MLPCategorical: sizes must be"):
        MLPCategorical("y", ["x"], [4, 0])


def test_torchs_module_hooks_still_run_when_a_distribution_computes_its_parameters():
    """The parameters come from the network's ``forward`` directly when torch's module call would do nothing else
    (no hooks on the distribution or on every module, no ``module.compile()``, no JIT trace); with any of those, the
    module call: each kind of hook fires, and a pre-hook that changes the inputs changes the parameters."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    from kizuna.losses import KullbackLeibler

    torch.manual_seed(0)
    q = MLPNormal("z", ["x"], [3, 8, 2])
    prior = MLPNormal("z", ["y"], [3, 8, 2], name="p")
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    kl = KullbackLeibler(q, prior)
    plain = kl.eval({"x": x, "y": y})
    expected = torch.distributions.kl_divergence(
        D.Normal(*_loc_scale(q, x)), D.Normal(*_loc_scale(prior, y))).sum(-1)
    torch.testing.assert_close(plain, expected)
    seen = []
    handles = [q.register_forward_hook(lambda m, args, kwargs, out: seen.append(("hook", sorted(kwargs))),
                                       with_kwargs=True),
               register_module_forward_hook(lambda m, args, out: seen.append(("global", type(m).__name__)))]
    torch.testing.assert_close(kl.eval({"x": x, "y": y}), plain)
    assert ("hook", ["x"]) in seen and ("global", "MLPNormal") in seen
    for h in handles:
        h.remove()
    seen.clear()
    # a pre-hook that doubles x: the parameters are those of 2x
    handle = q.register_forward_pre_hook(lambda m, args, kwargs: (args, {"x": 2 * kwargs["x"]}), with_kwargs=True)
    doubled = torch.distributions.kl_divergence(
        D.Normal(*_loc_scale(q, 2 * x)), D.Normal(*_loc_scale(prior, y))).sum(-1)
    torch.testing.assert_close(kl.eval({"x": x, "y": y}), doubled)
    handle.remove()
    handle = register_module_forward_pre_hook(lambda m, args: seen.append(type(m).__name__))
    kl.eval({"x": x, "y": y})
    handle.remove()
    assert seen.count("MLPNormal") == 2  # both distributions went through the module call
    seen.clear()
    torch.testing.assert_close(kl.eval({"x": x, "y": y}), plain)  # hooks removed: the direct call again
    assert seen == []


def _loc_scale(p, x):
    loc, s = p.net(x).chunk(2, -1)
    return loc, F.softplus(s) + p.min_scale


def test_a_class_with_its_own_module_call_keeps_it():
    """A distribution class that overrides ``__call__`` (or torch's ``_call_impl``) computes its parameters through
    it, as before the direct forward call: the override's change of ``loc`` is in the density."""
    calls = []

    class Shifted(MLPNormal):
        def __call__(self, *args, **kwargs):
            calls.append(1)
            out = super().__call__(*args, **kwargs)
            return {"loc": out["loc"] + 100.0, "scale": out["scale"]}

    class Impl(MLPNormal):
        def _call_impl(self, *args, **kwargs):
            calls.append(2)
            return super()._call_impl(*args, **kwargs)

    torch.manual_seed(0)
    x, z = torch.randn(4, 3), torch.zeros(4, 2)
    for cls, tag in ((Shifted, 1), (Impl, 2)):
        p = cls("z", ["x"], [3, 8, 2], name="p")
        loc, scale = _loc_scale(p, x)
        expected = D.Normal(loc + (100.0 if tag == 1 else 0.0), scale).log_prob(z).sum(-1)
        torch.testing.assert_close(p.get_log_prob({"x": x, "z": z}), expected)
        assert calls.count(tag) == 1


def test_forward_gets_each_input_by_its_name_whatever_the_signatures_order():
    """A network's ``forward`` that takes ``cond_var`` in its order is called with the values by position; one that
    takes them in another order, with other parameters, with ``**kwargs``, or replaced on the instance, by name: each
    sees every value under its own name (against the parameters written by hand)."""
    from kizuna.distributions import Normal

    a, b = torch.randn(4, 2), torch.randn(4, 2) + 5.0
    x = torch.zeros(4, 2)

    def expected(loc):
        return D.Normal(loc, torch.ones_like(loc)).log_prob(x).sum(-1)

    class InOrder(Normal):
        def forward(self, a, b):
            return {"loc": a - 2 * b, "scale": torch.ones_like(a)}

    class Swapped(Normal):
        def forward(self, b, a):
            return {"loc": a - 2 * b, "scale": torch.ones_like(a)}

    class Defaulted(Normal):
        def forward(self, a, b, shift=0.0):
            return {"loc": a - 2 * b + shift, "scale": torch.ones_like(a)}

    class Keywords(Normal):
        def forward(self, **cond):
            return {"loc": cond["a"] - 2 * cond["b"], "scale": torch.ones_like(cond["a"])}

    for cls in (InOrder, Swapped, Defaulted, Keywords):
        p = cls(var=["x"], cond_var=["a", "b"])
        torch.testing.assert_close(p.get_log_prob({"a": a, "b": b, "x": x}), expected(a - 2 * b))
        assert p.sample({"a": a, "b": b})["x"].shape == x.shape
    assert InOrder(var=["x"], cond_var=["a", "b"])._by_position_cond is not None
    assert Swapped(var=["x"], cond_var=["a", "b"])._by_position_cond is None
    # a forward replaced on the instance (after construction) is called by name
    p = InOrder(var=["x"], cond_var=["a", "b"])
    p.forward = lambda b, a: {"loc": b - 2 * a, "scale": torch.ones_like(a)}
    torch.testing.assert_close(p.get_log_prob({"a": a, "b": b, "x": x}), expected(b - 2 * a))
    # the cond_var order of the distribution, not the dict's order, decides nothing: names do
    p = InOrder(var=["x"], cond_var=["b", "a"])
    torch.testing.assert_close(p.get_log_prob({"a": a, "b": b, "x": x}), expected(a - 2 * b))



def test_a_wrapped_or_replaced_forward_gets_its_inputs_by_name():
    """Two ways the positional call went wrong: a ``functools.wraps`` wrapper taking ``**kwargs`` (its signature read
    through ``__wrapped__`` said ``(self, a, b)``: TypeError), and a class's ``forward`` replaced after an instance was
    built (the instance kept the old decision: a and b swapped, silently)."""
    import functools

    from kizuna.distributions import Normal

    a, b = torch.randn(4, 2), torch.randn(4, 2) + 5.0
    x = torch.zeros(4, 2)

    def expected(loc):
        return D.Normal(loc, torch.ones_like(loc)).log_prob(x).sum(-1)

    def by_name(fn):
        @functools.wraps(fn)
        def wrapper(self, **kwargs):
            return fn(self, **kwargs)
        return wrapper

    class Wrapped(Normal):
        @by_name
        def forward(self, a, b):
            return {"loc": a - 2 * b, "scale": torch.ones_like(a)}

    p = Wrapped(var=["x"], cond_var=["a", "b"])
    torch.testing.assert_close(p.get_log_prob({"a": a, "b": b, "x": x}), expected(a - 2 * b))

    class Patched(Normal):
        def forward(self, a, b):
            return {"loc": a - 2 * b, "scale": torch.ones_like(a)}

    p = Patched(var=["x"], cond_var=["a", "b"])
    torch.testing.assert_close(p.get_log_prob({"a": a, "b": b, "x": x}), expected(a - 2 * b))
    original = Patched.forward
    try:
        Patched.forward = lambda self, b, a: {"loc": a - 2 * b, "scale": torch.ones_like(a)}
        torch.testing.assert_close(p.get_log_prob({"a": a, "b": b, "x": x}), expected(a - 2 * b))
    finally:
        Patched.forward = original


def test_mlp_distributions_are_called_by_position_and_a_subclass_forward_still_wins():
    """The evaluation calls kizuna's MLP distributions through ``_forward_by_position`` (the values in cond_var
    order, no keyword dicts): the same numbers as their public ``forward(**cond)`` for two inputs given in any dict
    order; a subclass that overrides ``forward`` alone is called through its own forward (by name)."""
    torch.manual_seed(0)
    c = inputs(2)
    q = MLPNormal("z", ["x", "y"], [5, 8, 4]).double()
    assert q._by_position_cond is q._cond_var
    by_name = q.forward(y=c["y"], x=c["x"])
    z = torch.randn(5, 4, dtype=F64)
    ref = D.Normal(by_name["loc"], by_name["scale"]).log_prob(z).sum(1)
    # (the density through z = (x - mu) / sigma: torch's value to rounding)
    torch.testing.assert_close(q.get_log_prob({"y": c["y"], "z": z, "x": c["x"]}), ref, rtol=1e-14, atol=1e-14)
    for cls in (MLPBernoulli, MLPCategorical):
        p = cls("w", ["y", "x"], [5, 3]).double()
        logits = p.forward(x=c["x"], y=c["y"])["logits"]
        torch.testing.assert_close(logits, p.net(torch.cat([c["y"].flatten(1), c["x"]], 1)), rtol=0, atol=0)

    class Shifted(MLPNormal):
        def forward(self, **cond):
            out = super().forward(**cond)
            return {"loc": out["loc"] + 100.0, "scale": out["scale"]}

    s = Shifted("z", ["x", "y"], [5, 8, 4]).double()
    s.load_state_dict(q.state_dict())
    assert s._by_position_cond is None  # its own forward(**cond): by name
    torch.testing.assert_close(s.get_log_prob({**c, "z": z + 100.0}), ref)

    class ShiftedByPosition(MLPNormal):  # the by-position function overridden: forward and the evaluation use it
        def _forward_by_position(self, *values):
            out = super()._forward_by_position(*values)
            return {"loc": out["loc"] + 100.0, "scale": out["scale"]}

    s = ShiftedByPosition("z", ["x", "y"], [5, 8, 4]).double()
    s.load_state_dict(q.state_dict())
    torch.testing.assert_close(s.forward(**c)["loc"], by_name["loc"] + 100.0)
    torch.testing.assert_close(s.get_log_prob({**c, "z": z + 100.0}), ref)


def test_the_evaluation_follows_forward_and_forward_by_position_wherever_they_are_replaced():
    """The review's cases for the by-position call: a subclass whose own ``forward`` differs from its
    ``_forward_by_position`` is evaluated through its forward; a ``_forward_by_position`` replaced on an instance, or
    on the class after an instance was built, is what both ``forward`` and the evaluation use (the evaluation had kept
    the function it found at construction). Each case against the public ``forward``'s own output."""
    torch.manual_seed(0)
    c = inputs(3)

    def shifted(fn):
        def run(self, *values):
            out = fn(self, *values)
            return {"loc": out["loc"] + 100.0, "scale": out["scale"]}
        return run

    class Both(MLPNormal):  # forward and _forward_by_position in one class, forward not the plain adapter
        def _forward_by_position(self, *values):
            return super()._forward_by_position(*values)

        def forward(self, **cond):
            out = super().forward(**cond)
            return {"loc": out["loc"] + 100.0, "scale": out["scale"]}

    p = Both("z", ["x", "y"], [5, 8, 4]).double()
    torch.testing.assert_close(p.sample_mean(c), p.forward(**c)["loc"], rtol=0, atol=0)
    assert float(p.sample_mean(c).detach().mean()) > 50

    q = MLPNormal("z", ["x", "y"], [5, 8, 4]).double()
    q._forward_by_position = shifted(MLPNormal._forward_by_position).__get__(q)  # on the instance
    torch.testing.assert_close(q.sample_mean(c), q.forward(**c)["loc"], rtol=0, atol=0)
    assert float(q.sample_mean(c).detach().mean()) > 50

    r = MLPNormal("z", ["x", "y"], [5, 8, 4]).double()
    original = MLPNormal._forward_by_position
    try:
        MLPNormal._forward_by_position = shifted(original)  # on the class, after r was built
        torch.testing.assert_close(r.sample_mean(c), r.forward(**c)["loc"], rtol=0, atol=0)
        assert float(r.sample_mean(c).detach().mean()) > 50
    finally:
        MLPNormal._forward_by_position = original


def test_a_draw_asks_has_reparam_each_time_and_a_property_torch_class_is_allowed():
    """A reparameterised draw goes through the family's kernel only while ``has_reparam`` says so, asked at the draw
    (a class flag fixed at class creation kept drawing with gradients after ``has_reparam`` was patched to False), and
    a subclass may give ``torch_class`` as a property (the flag's computation failed at class creation)."""
    from kizuna.distributions import Normal

    x = torch.zeros(2, 3, requires_grad=True)

    class Patched(Normal):
        pass

    Patched.has_reparam = property(lambda self: False)
    p = Patched(var=["z"], cond_var=["x"], loc="x", scale=1.0)
    assert not p._sample({"x": x}, None, True)["z"].requires_grad

    class ByProperty(Normal):
        @property
        def torch_class(self):
            return D.Normal

    q = ByProperty(var=["z"], cond_var=["x"], loc="x", scale=1.0)
    assert q._sample({"x": x}, None, True)["z"].requires_grad


def test_a_string_cond_var_is_one_variable_and_a_value_without_a_batch_is_a_batch_of_one():
    """``cond_var="h1"`` became the variables h and 1 (``list("h1")``), and a condition without a batch dimension
    raised a bare IndexError in ``flatten(1)``; a 1-D value of another length than the network's inputs is one
    feature per row (a batch of scalar times)."""
    torch.manual_seed(0)
    q = MLPNormal("z", "h1", [4, 2])
    assert q.cond_var == ["h1"] and str(q) == "q(z|h1)"
    x = torch.rand(4)
    one = q.sample_mean({"h1": x})
    torch.testing.assert_close(one, q.sample_mean({"h1": x[None]}), rtol=0, atol=0)
    assert one.shape == (1, 2)
    t = torch.rand(5)
    timed = MLPBernoulli("y", ["t"], [1, 8, 3], name="p")
    torch.testing.assert_close(timed.get_params({"t": t})["logits"], timed.get_params({"t": t[:, None]})["logits"],
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="min_scale must be a finite number >= 0, got -1"):
        MLPNormal("z", "x", [2, 2], min_scale=-1)


def test_one_row_condition_beside_a_batch_conditions_every_row() -> None:
    """An MLP distribution of two conditions, one given as one row and the other as 8: the one row conditions every
    row (torch.cat refused the mix, and the first step's row check compared the network's 8 rows with the first
    condition's 1): the density and the draws are those of the row repeated by hand, with and without checks."""
    from kizuna.distributions import validation

    torch.manual_seed(0)
    q = MLPNormal("z", ["x", "y"], [5, 16, 2])
    x1, y, z = torch.rand(1, 3), torch.rand(8, 2), torch.randn(8, 2)
    for check in (True, False):
        with validation(check):
            torch.testing.assert_close(q.get_log_prob({"z": z, "x": x1, "y": y}),
                                       q.get_log_prob({"z": z, "x": x1.expand(8, 3), "y": y}), rtol=0, atol=0)
            torch.manual_seed(1)
            a = q.sample({"x": x1, "y": y})["z"]
            torch.manual_seed(1)
            b = q.sample({"x": x1.expand(8, 3), "y": y})["z"]
            assert a.shape == (8, 2) and torch.equal(a, b)


def test_a_network_may_pool_a_context_set_into_each_row() -> None:
    """A forward whose second condition is a set of context rows pooled into each row of the first (a neural process's
    encoder): its rows are the first condition's, one of the conditions' row counts, and the first step's row check
    takes them (it compared them with the largest count, 10, and refused); rows matching no condition are still
    named."""
    from torch import nn

    from kizuna.distributions import Normal, validation

    class Pooled(Normal):
        def __init__(self, rows: int | None = None) -> None:
            super().__init__(var=["z"], cond_var=["x", "ctx"], name="q")
            self.lin, self.rows = nn.Linear(4, 2), rows

        def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> dict:
            n = x.shape[0] if self.rows is None else self.rows
            pooled = ctx.mean(0, keepdim=True).expand(n, -1)
            return {"loc": self.lin(torch.cat([x[:1].expand(n, -1), pooled], -1)), "scale": torch.ones(n, 2)}

    x, ctx = torch.randn(3, 2), torch.randn(10, 2)
    with validation(True):
        assert Pooled().sample({"x": x, "ctx": ctx})["z"].shape == (3, 2)
        with pytest.raises(ValueError, match=r"q\(z\|x,ctx\): the parameters have batch size 5"):
            Pooled(rows=5).sample({"x": x, "ctx": ctx})
