"""Stop 50: a step assigned to a `Model` class after a model of it was built is not wrapped (`_mark_step` runs when a
class is made and when a model is built); called directly on that model, a step that calls `train` ran its body twice
(``train`` saw no mark, took the step again, and only that second run's ``train`` got the base step). `train` now
finds the step's own frame on the stack and takes the base step at once: the body runs once and the model takes
exactly one optimisation step, the same as ``Model.train`` once from the same start."""

import functools

import pytest
import torch
from test_s49_step_wrapper import _model, _via_train

from kizuna.models import Model


class _AssignedAfterBuild(Model):
    calls = 0


def _logged(f):
    """A decorator made with ``functools.wraps`` whose wrapper takes ``(*args, **kwargs)`` (the common form)."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


@pytest.mark.parametrize("decorate", [lambda f: f, _logged], ids=["plain", "functools.wraps"])
def test_a_step_assigned_after_the_model_was_built_runs_once_when_called_directly(decorate):
    """Plain, and under a ``functools.wraps`` decorator (diff review R2: the body ran twice there, the wrapper's code
    was looked for on the stack, not the wrapped function's)."""
    p, model = _model(_AssignedAfterBuild)
    ref_p, reference = _model(Model)  # same start (both seeded in _model's order: zeros), plain train once
    _AssignedAfterBuild.step = decorate(_via_train)  # after the build: not wrapped
    try:
        assert not getattr(type(model).step, "_marks_stepping", False)
        x = {"x": torch.tensor([[1.0, -2.0], [3.0, 0.5]])}
        result = model.step(x)
        assert _AssignedAfterBuild.calls == 1  # (2 before the fix)
        expected = reference.train(x)
        torch.testing.assert_close(p.loc.detach(), ref_p.loc.detach(), rtol=0, atol=0)  # one SGD step, not two
        assert result.loss == float(expected)
        _AssignedAfterBuild.calls = 0
        model.train(x)  # through train: the step once, its train the base step
        reference.train(x)
        assert _AssignedAfterBuild.calls == 1
        torch.testing.assert_close(p.loc.detach(), ref_p.loc.detach(), rtol=0, atol=0)
    finally:
        del _AssignedAfterBuild.step
        _AssignedAfterBuild.calls = 0


def test_a_recursive_helper_of_the_same_code_on_another_model_is_not_taken_for_the_step():
    """The frame found must hold this model: a step running on model A that trains model B (same class) directly
    gives B its own step (the body once more, on B), not B's base step."""
    _, a = _model(_AssignedAfterBuild)
    _, b = _model(_AssignedAfterBuild)
    order = []

    def outer(self, batch, **options):
        order.append(id(self))
        if self is a:
            b.train(batch)
        return Model.step(self, batch, **options)

    _AssignedAfterBuild.step = outer
    try:
        a.step({"x": torch.ones(1, 2)})
        assert order == [id(a), id(b)]
    finally:
        del _AssignedAfterBuild.step

