"""Stop 48: `Model.train` goes through a subclass's own `step`, as `fit` does (docs/training.md: `step` is the training
step behind both); before, `train` took the base step and silently skipped the override."""

import torch

from kizuna.distributions import Normal
from kizuna.losses import LogProb
from kizuna.models import Model
from kizuna.models.model import StepResult


class _Counting(Model):
    """A model whose step only evaluates (no optimisation), counting its calls."""

    calls = 0

    def step(self, batch, **options):
        type(self).calls += 1
        value = self.test(batch)
        return StepResult(float(value), {})


def _model(cls):
    p = Normal(var=["x"], loc=torch.nn.Parameter(torch.zeros(2)), scale=1.0, name="p")
    return p, cls(-LogProb(p).mean(), distributions=[p], optimizer=torch.optim.SGD, optimizer_params={"lr": 0.5})


def test_train_and_fit_both_take_an_overridden_step():
    torch.manual_seed(0)
    x = torch.randn(16, 2) + 3
    p, m = _model(_Counting)
    m.fit({"x": x}, epochs=1, batch_size=16, quiet=True)
    loss = m.train({"x": x})
    assert _Counting.calls == 2
    assert not p.loc.detach().any()  # the override takes no step: nothing moved
    # the returned loss is the override's: -mean log N(x; 0, 1) summed over the two features (scipy-free closed form)
    expected = (0.5 * x.pow(2).sum(1) + torch.log(torch.tensor(2 * torch.pi))).mean()
    assert loss.dim() == 0 and not loss.requires_grad
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


def test_the_base_step_is_unchanged():
    """Without an override `train` keeps its own path: one SGD step of the mean negative log-likelihood."""
    torch.manual_seed(0)
    x = torch.randn(16, 2) + 3
    p, m = _model(Model)
    loss = m.train({"x": x})
    expected = (0.5 * x.pow(2).sum(1) + torch.log(torch.tensor(2 * torch.pi))).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.loc.detach().flatten(), 0.5 * x.mean(0))  # gradient of the loss at 0 is -mean(x)


def test_a_step_that_calls_train_itself_and_the_loss_keeps_the_model_dtype():
    """A subclass whose step wraps `train` (e.g. logging around it) gets the base step there, not a recursion; a float
    loss comes back in the model's dtype (float64 here), as `train`'s own loss does."""

    class ViaTrain(Model):
        calls = 0

        def step(self, batch, **options):
            type(self).calls += 1
            return StepResult(float(self.train(batch)), {})

    p = Normal(var=["x"], loc=torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)),
               scale=torch.tensor(1.0, dtype=torch.float64), name="p")
    m = ViaTrain(-LogProb(p).mean(), distributions=[p], optimizer=torch.optim.SGD, optimizer_params={"lr": 0.5})
    x = torch.randn(16, 2, dtype=torch.float64) + 3
    loss = m.train({"x": x})
    assert loss.dtype == torch.float64
    expected = (0.5 * x.pow(2).sum(1) + torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(p.loc.detach().flatten(), 0.5 * x.mean(0))  # one base step taken
    assert ViaTrain.calls == 1
    m.fit({"x": x}, epochs=1, batch_size=16, quiet=True)  # fit through the same step: no recursion either
    assert ViaTrain.calls == 2  # once per batch, as before


def test_a_step_called_directly_runs_once_and_a_copy_made_inside_it_trains_normally():
    """An overridden step that wraps `train`, called directly, runs its body once (one base step); a copy of the model
    made inside the step is a model of its own (its `train` takes its own step again, not the base one forever)."""
    import copy

    class ViaTrain(Model):
        calls = 0
        copies = []

        def step(self, batch, **options):
            type(self).calls += 1
            if not self.copies:
                self.copies.append(copy.deepcopy(self))
            return StepResult(float(self.train(batch)), {})

    p, m = _model(ViaTrain)
    x = torch.randn(16, 2) + 3
    m.step({"x": x})
    assert ViaTrain.calls == 1
    torch.testing.assert_close(p.loc.detach().flatten(), 0.5 * x.mean(0))  # one base step
    twin = ViaTrain.copies[0]
    twin.train({"x": x})  # through its own step (calls 2), whose train then takes the base step
    assert ViaTrain.calls == 2
