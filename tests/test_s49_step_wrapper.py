"""Stop 49: a `Model` step that calls `train` gets the base step there however the step is given (in the subclass's
body, from a mixin that is no Model, assigned to the class after it was made, or on the instance), called by `train`,
by `fit` or directly; and the marking wrapper passes every call the step itself accepts (extra positional arguments,
the batch under another name, staticmethod, classmethod and functools.partial steps).

Before the fix only a step in the subclass's own body was marked, and neither `train` nor `fit` marked the model
themselves: a mixin's or an assigned step that calls `train` recursed without end. The wrapper took
``(self, batch, **options)`` and refused the other calls with a TypeError."""

import functools
import inspect

import pytest
import torch

from kizuna.distributions import Normal
from kizuna.losses import LogProb
from kizuna.models import Model
from kizuna.models.model import StepResult, _stepping


def _model(cls):
    p = Normal(var=["x"], loc=torch.nn.Parameter(torch.zeros(2)), scale=1.0, name="p")
    return p, cls(-LogProb(p).mean(), distributions=[p], optimizer=torch.optim.SGD, optimizer_params={"lr": 0.5})


def _via_train(self, batch, **options):
    """A step that logs around the base step: counts its calls and takes `train`'s step."""
    type(self).calls += 1
    if type(self).calls > 20:  # (a recursion, stopped early with a clear failure rather than a RecursionError)
        raise AssertionError("the step recursed")
    return StepResult(float(self.train(batch)), {})


class _LoggingMixin:  # not a Model: its step is inherited by the Model subclass below
    step = _via_train


class _ViaMixin(_LoggingMixin, Model):
    calls = 0


class _ViaMixinAgain(_ViaMixin):  # a subclass of it, with no step of its own
    calls = 0


class _OwnBody(Model):
    calls = 0
    step = _via_train


class _AssignedLater(Model):
    calls = 0


_AssignedLater.step = _via_train  # after the class was made: no __init_subclass__ saw it


class _OnInstance(Model):
    calls = 0


def _build(cls):
    p, m = _model(cls)
    if cls is _OnInstance:  # a step on the instance: fit calls it (train keeps the class's step, the base one)
        m.step = functools.partial(_via_train, m)
    return p, m


WAYS = [_OwnBody, _ViaMixin, _ViaMixinAgain, _AssignedLater, _OnInstance]


def _one_sgd_step(x):
    """The loc after one SGD step of lr 0.5 from 0 on the mean of -log N(x; loc, 1): the gradient at 0 is -mean(x)."""
    return 0.5 * x.mean(0)


def test_a_step_that_calls_train_takes_one_base_step_however_it_is_given():
    for cls in WAYS:
        _check_one_base_step(cls)


def _check_one_base_step(cls):
    torch.manual_seed(0)
    x = torch.randn(16, 2) + 3
    cls.calls = 0
    p, m = _build(cls)
    m.fit({"x": x}, epochs=1, batch_size=16, quiet=True)  # one batch: the step once, one base step
    assert cls.calls == 1, cls.__name__
    torch.testing.assert_close(p.loc.detach().flatten(), _one_sgd_step(x))
    assert not _stepping()

    p, m = _build(cls)
    loss = m.train({"x": x})
    # the step's loss is the base step's: -mean log N(x; 0, 1) summed over the two features (closed form)
    expected = (0.5 * x.pow(2).sum(1) + torch.log(torch.tensor(2 * torch.pi))).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(p.loc.detach().flatten(), _one_sgd_step(x))
    # train runs an instance's step only where the class's is overridden (as before): the base step, no call of it
    assert cls.calls == (1 if cls is _OnInstance else 2), cls.__name__

    p, m = _build(cls)
    calls = cls.calls
    m.step({"x": x})  # called directly: the body once, one base step
    assert cls.calls == calls + 1, cls.__name__
    torch.testing.assert_close(p.loc.detach().flatten(), _one_sgd_step(x))
    assert not _stepping()


def test_a_step_assigned_after_a_model_was_built_runs_once_under_train_and_fit():
    """The model was built before the assignment, so its class's step is not wrapped: `train` and `fit` mark the
    model themselves."""

    class Late(Model):
        calls = 0

    torch.manual_seed(0)
    x = torch.randn(16, 2) + 3
    p, m = _model(Late)
    Late.step = _via_train
    m.train({"x": x})
    assert Late.calls == 1
    torch.testing.assert_close(p.loc.detach().flatten(), _one_sgd_step(x))
    p.loc.data.zero_()
    m.fit({"x": x}, epochs=1, batch_size=16, quiet=True)
    assert Late.calls == 2
    torch.testing.assert_close(p.loc.detach().flatten(), _one_sgd_step(x))
    assert not _stepping()


def test_the_wrapped_step_takes_every_call_the_step_takes_and_keeps_its_signature():
    class Extra(Model):
        def step(self, data, scale=1.0, **options):
            return StepResult(scale * float(self.test(data)), {})

    torch.manual_seed(0)
    x = torch.randn(8, 2) + 1
    expected = float((0.5 * x.pow(2).sum(1) + torch.log(torch.tensor(2 * torch.pi))).mean())  # loc 0, scale 1
    _, m = _model(Extra)
    assert m.step({"x": x}).loss == pytest.approx(expected, rel=1e-6)
    assert m.step({"x": x}, 2.0).loss == pytest.approx(2 * expected, rel=1e-6)  # an extra positional argument
    assert m.step(data={"x": x}, scale=3.0).loss == pytest.approx(3 * expected, rel=1e-6)  # the batch by its name
    assert str(inspect.signature(Extra.step)) == "(self, data, scale=1.0, **options)"
    assert str(inspect.signature(m.step)) == "(data, scale=1.0, **options)"
    assert Extra.step.__wrapped__.__qualname__.endswith("Extra.step")


def _free(self, batch, **options):  # a partial of it has no descriptor: m.step(batch) is _free(None, batch)
    assert self is None
    return StepResult(3.0, {})


def _plain(batch, **options):
    return StepResult(1.0, {})


class _Static(Model):
    step = staticmethod(_plain)


class _ClassMethod(Model):
    @classmethod
    def step(cls, batch, **options):
        assert cls is _ClassMethod
        return StepResult(2.0, {})


class _Partial(Model):
    step = functools.partial(_free, None)


@pytest.mark.parametrize(("cls", "value"), [(_Static, 1.0), (_ClassMethod, 2.0), (_Partial, 3.0)],
                         ids=["staticmethod", "classmethod", "partial"])
def test_staticmethod_classmethod_and_partial_steps_are_left_callable(cls, value):
    x = torch.randn(8, 2)
    p, m = _model(cls)
    assert m.step({"x": x}).loss == value
    assert float(m.train({"x": x})) == value  # train takes the override (it trains nothing: loc stays 0)
    history = m.fit({"x": x}, epochs=1, batch_size=8, quiet=True)
    assert history["train"] == [value]
    assert not p.loc.detach().any()


def test_a_subclass_follows_its_base_s_step_when_it_is_assigned_again_or_deleted():
    """A base's step assigned after the class was made was copied, wrapped, into the subclass when a model was built,
    and kept: assigned again, or deleted, the subclass kept the old one (review R3 of stop 49). It is wrapped where it
    is held now; a mixin's step (wrapped into the class) is found again at every model built."""

    class Base(Model):
        pass

    class Sub(Base):
        pass

    def first(self, batch, **options):
        return 1.0

    def second(self, batch, **options):
        return 2.0

    torch.manual_seed(0)
    x = torch.randn(16, 2) + 3
    Base.step = first
    assert _model(Sub)[1].step({"x": x}) == 1.0
    Base.step = second
    assert _model(Sub)[1].step({"x": x}) == 2.0
    assert "step" not in Sub.__dict__
    del Base.step
    p, m = _model(Sub)
    m.step({"x": x})  # the base step: one SGD step
    torch.testing.assert_close(p.loc.detach().flatten(), _one_sgd_step(x))

    class Mixin:
        def step(self, batch, **options):
            return 3.0

    class Mixed(Mixin, Model):
        pass

    assert _model(Mixed)[1].step({"x": x}) == 3.0
    Mixin.step = first
    assert _model(Mixed)[1].step({"x": x}) == 1.0
