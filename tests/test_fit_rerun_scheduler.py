"""fit: re-running a finished early-stopped run, a non-finite validation loss, learning-rate schedulers
(``Model(scheduler=...)``: stepped per epoch, checkpointed, resumed bitwise), batch normalisation with a one-row
last batch and ``drop_last``, and Pixyz's ``clip_grad_norm=False``.

References: the uninterrupted run (bitwise), torch's own schedulers stepped by hand in a loop of one-epoch ``fit``
calls (bitwise), the closed-form ``StepLR`` sequence ``lr * gamma ** (epoch // step_size)``, and a run on the rows
``drop_last`` keeps."""

import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau, StepLR

from kizuna.distributions import Normal
from kizuna.losses import LogProb
from kizuna.models import ML, Model
from kizuna.models import checkpoint as ckpt


def _normal(dtype=torch.float32):
    return Normal(var=["x"], loc=nn.Parameter(torch.zeros(1, dtype=dtype)),
                  scale=nn.Parameter(torch.ones(1, dtype=dtype)))


def _model(lr=0.1, dtype=torch.float32, **kw):
    p = _normal(dtype)
    return Model(-LogProb(p).mean(), optimizer_params={"lr": lr}, **kw), p


def _state(model):
    return ([t.detach().clone() for t in model.distributions.parameters()],
            {k: {j: v.clone() if isinstance(v, torch.Tensor) else v for j, v in s.items()}
             for k, s in model.optimizer.state_dict()["state"].items()})


def _same_state(a, b):
    (pa, oa), (pb, ob) = a, b
    return all(torch.equal(x, y) for x, y in zip(pa, pb)) and oa.keys() == ob.keys() and all(
        all(torch.equal(torch.as_tensor(oa[k][j]), torch.as_tensor(ob[k][j])) for j in oa[k]) for k in oa)


G = torch.Generator().manual_seed(0)
X = {"x": torch.randn(40, 1, generator=G) + 3.0}
V = {"x": torch.randn(12, 1, generator=G) - 1.0}


# ------------------------------------------------------------- re-running a run that early stopping ended
def test_re_running_a_finished_early_stopped_script_is_a_no_op(tmp_path):
    """docs/training.md's re-runnable script, run twice after its run stopped early: the second run trained on from the
    restored best weights with the last epoch's optimizer state and wrote another model over the checkpoint."""
    path = tmp_path / "run.pt"

    def script():
        model, _ = _model(lr=0.3)
        if path.exists():
            model.load(path)
        model.fit(X, epochs=20 - model.epoch, batch_size=8, valid=V, patience=2, checkpoint=path, seed=0, quiet=True)
        return model

    first = script()
    assert first.history.stopped_epoch == first.epoch == first.history.best_epoch + 2 < 20
    saved, stamp = path.read_bytes(), path.stat().st_mtime_ns
    again = script()
    assert path.read_bytes() == saved and path.stat().st_mtime_ns == stamp  # not rewritten
    assert again.epoch == first.epoch and again.history == first.history
    assert _same_state(_state(again), _state(first))
    # a call without patience trains on (a new stage), as does an in-memory model's next call with patience
    again.fit(X, epochs=1, batch_size=8, valid=V, quiet=True)
    assert again.epoch == first.epoch + 1
    first.fit(X, epochs=1, batch_size=8, valid=V, patience=2, quiet=True)
    assert first.epoch == again.epoch


# ------------------------------------------------------------------- a non-finite validation loss
def test_a_non_finite_validation_loss_records_the_epoch_it_follows(tmp_path):
    """The epoch's steps were taken before validation: the message said "the parameters are unchanged" while
    model.epoch and the history counted one epoch fewer than the weights had (a later save wrote epoch 1 with
    epoch 2's weights). Reference: the same run without validation data, bitwise."""
    path = tmp_path / "r.pt"
    model, _ = _model(dtype=torch.float64)
    model.fit(X, epochs=1, batch_size=8, seed=5, quiet=True, checkpoint=path)
    saved = path.read_bytes()
    bad = {"x": V["x"].double().clone()}
    bad["x"][3] = 1e300
    message = (f"fit: the validation loss is inf at epoch 2, validation batch 1; non-finite terms: log p(x) = -inf;"
               f" the parameters are those after epoch 2's training steps, which model.epoch (2) and the history "
               f"count, with the validation loss nan; the checkpoint {path} (epoch 1) is untouched")
    with pytest.raises(FloatingPointError) as caught:
        model.fit(X, epochs=3, batch_size=8, valid=bad, seed=5, quiet=True, checkpoint=path)
    assert str(caught.value) == message, str(caught.value)
    reference, _ = _model(dtype=torch.float64)
    reference.fit(X, epochs=2, batch_size=8, seed=5, quiet=True)
    assert model.epoch == 2 and model.history.epoch == [1, 2] and math.isnan(model.history.valid[1])
    assert model.history.train == reference.history.train
    assert _same_state(_state(model), _state(reference))  # 10 steps: 2 epochs of 5
    assert int(next(iter(model.optimizer.state_dict()["state"].values()))["step"]) == 10
    assert path.read_bytes() == saved and ckpt.load(path)["epoch"] == 1


def test_a_non_finite_validation_loss_in_a_model_test_still_says_unchanged():
    model, _ = _model(dtype=torch.float64)
    with pytest.raises(FloatingPointError, match=r"^the test loss is inf; the loss has no separate terms; "
                                                 r"the parameters are unchanged$"):
        model.test({"x": torch.full((2, 1), 1e300, dtype=torch.float64)})


# --------------------------------------------------------------------------- learning-rate schedulers
def _lr(model):
    return model.optimizer.param_groups[0]["lr"]


def _scheduled_run(path, epochs, stop=None, **kw):
    """One fit(epochs=1) per epoch with a checkpoint (the lr after each epoch recorded); ``stop``: interrupted
    there, then a fresh model loads the checkpoint and finishes."""
    lrs, model = [], None
    for start in ([0, stop] if stop else [0]):
        model, _ = _model(**kw)
        if start:
            model.load(path)
        while model.epoch < (stop if start == 0 and stop else epochs):
            model.fit(X, epochs=1, batch_size=8, seed=3, quiet=True, checkpoint=path, **kw.get("fit", {}))
            lrs.append(_lr(model))
    return model, lrs


def test_a_step_lr_resumes_across_its_decay_bitwise(tmp_path):
    """A scheduler outside the checkpoint restarted at the resume: [.., 0.005, 0.005, 0.005, 0.0025] instead of
    [.., 0.005, 0.005, 0.0025, 0.0025], and other parameters. StepLR halves at epochs 2, 4, 6; interrupted at 2."""
    options = {"scheduler": StepLR, "scheduler_params": {"step_size": 2, "gamma": 0.5}}
    whole, _ = _model(**options)
    whole.fit(X, epochs=6, batch_size=8, seed=3, quiet=True)  # one call: the same as a call per epoch
    straight, lrs = _scheduled_run(tmp_path / "a.pt", 6, **options)
    resumed, lrs_resumed = _scheduled_run(tmp_path / "b.pt", 6, stop=2, **options)
    assert lrs == lrs_resumed == [0.1 * 0.5 ** (epoch // 2) for epoch in range(1, 7)]
    assert _lr(whole) == lrs[-1] and whole.history == straight.history == resumed.history
    assert _same_state(_state(whole), _state(straight)) and _same_state(_state(straight), _state(resumed))
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()
    assert ckpt.load(tmp_path / "b.pt")["scheduler"]["last_epoch"] == 6


def test_reduce_on_plateau_steps_on_the_validation_loss_and_resumes_bitwise(tmp_path):
    """Reference: torch's ReduceLROnPlateau stepped by hand with each epoch's validation loss. The valid loss rises
    every epoch (the data's mean is 3, the validation's -1), so the lr is cut after epochs 4 and 7; interrupted at
    epoch 5, one bad epoch into the count, which the checkpoint carries."""
    plateau = {"patience": 2, "factor": 0.5}
    reference, _ = _model(lr=0.05)
    by_hand, lrs = ReduceLROnPlateau(reference.optimizer, **plateau), []
    for _ in range(9):
        reference.fit(X, epochs=1, batch_size=8, valid=V, seed=3, quiet=True)
        by_hand.step(reference.history.valid[-1])
        lrs.append(_lr(reference))
    assert lrs == [0.05] * 3 + [0.025] * 3 + [0.0125] * 3
    options = {"lr": 0.05, "scheduler": ReduceLROnPlateau, "scheduler_params": plateau}
    path = tmp_path / "p.pt"
    first, _ = _model(**options)
    first.fit(X, epochs=5, batch_size=8, valid=V, seed=3, quiet=True, checkpoint=path)
    assert first.scheduler.num_bad_epochs == 1
    resumed, _ = _model(**options)
    resumed.load(path)
    resumed.fit(X, epochs=4, batch_size=8, valid=V, seed=3, quiet=True)
    assert _lr(resumed) == lrs[-1]
    assert (resumed.history.train, resumed.history.valid) == (reference.history.train, reference.history.valid)
    assert _same_state(_state(resumed), _state(reference))
    assert resumed.scheduler.state_dict() == by_hand.state_dict()


def test_reduce_on_plateau_takes_the_training_loss_without_validation_data():
    reference, _ = _model()
    by_hand = ReduceLROnPlateau(reference.optimizer, mode="max", patience=1)  # max: every epoch is a bad one
    for _ in range(5):
        reference.fit(X, epochs=1, batch_size=8, seed=3, quiet=True)
        by_hand.step(reference.history.train[-1])
    model, _ = _model(scheduler=ReduceLROnPlateau, scheduler_params={"mode": "max", "patience": 1})
    model.fit(X, epochs=5, batch_size=8, seed=3, quiet=True)
    assert model.scheduler.best == by_hand.best == max(model.history.train)
    assert _lr(model) == _lr(reference) == 0.1 * 0.1 ** 2
    assert _same_state(_state(model), _state(reference))


def test_train_leaves_the_scheduler_to_the_caller():
    model, _ = _model(scheduler=StepLR, scheduler_params={"step_size": 1, "gamma": 0.5})
    for _ in range(3):
        model.train(X)
    assert _lr(model) == 0.1
    model.scheduler.step()
    assert _lr(model) == 0.05


def test_bad_scheduler_arguments_are_named():
    model, _ = _model()
    built = StepLR(model.optimizer, step_size=2)
    with pytest.raises(TypeError, match=r"Model: scheduler must be a learning-rate scheduler class, e.g. "
                                        r"torch.optim.lr_scheduler.StepLR, with its arguments in scheduler_params .* "
                                        r"got <torch.optim.lr_scheduler.StepLR object"):
        _model(scheduler=built)
    with pytest.raises(TypeError, match="Model: scheduler must be a learning-rate scheduler class.*got 'StepLR'"):
        _model(scheduler="StepLR")
    with pytest.raises(ValueError, match=r"Model: scheduler_params \{'step_size': 2\} were given without a "
                                         r"scheduler; pass the class too"):
        _model(scheduler_params={"step_size": 2})
    with pytest.raises(TypeError, match=r"Model: StepLR\(optimizer, \*\*scheduler_params\) with scheduler_params "
                                        r"\{'gamma': 0.5\} failed: .*step_size"):
        _model(scheduler=StepLR, scheduler_params={"gamma": 0.5})
    with pytest.raises(TypeError, match="Model: scheduler_params must be a dict of StepLR's keyword arguments, got 2"):
        _model(scheduler=StepLR, scheduler_params=2)
    assert _model(scheduler_params={})[0].scheduler is None


def test_a_checkpoint_with_a_scheduler_needs_one_of_its_class(tmp_path):
    path, plain = tmp_path / "s.pt", tmp_path / "n.pt"
    model, _ = _model(scheduler=StepLR, scheduler_params={"step_size": 1})
    model.fit(X, epochs=1, batch_size=8, seed=0, quiet=True, checkpoint=path)
    with pytest.raises(ValueError, match=f"{path} was trained with the learning-rate scheduler "
                                         "torch.optim.lr_scheduler.StepLR, this model has none"):
        _model()[0].load(path)
    other, _ = _model(scheduler=ExponentialLR, scheduler_params={"gamma": 0.9})
    before = _state(other)
    with pytest.raises(ValueError, match="this model uses torch.optim.lr_scheduler.ExponentialLR"):
        other.load(path)
    assert _same_state(_state(other), before) and other.epoch == 0
    unscheduled, _ = _model()
    unscheduled.fit(X, epochs=1, batch_size=8, seed=0, quiet=True, checkpoint=plain)
    later, _ = _model(scheduler=StepLR, scheduler_params={"step_size": 1, "gamma": 0.5})
    later.load(plain)  # a checkpoint without a scheduler: the model's schedules from the loaded epoch on
    assert later.epoch == 1 and later.scheduler.last_epoch == 0
    later.fit(X, epochs=1, batch_size=8, quiet=True)
    assert _lr(later) == 0.05


# ------------------------------------------------------------- batch normalisation and drop_last
class _NormedMean(Normal):
    def __init__(self):
        super().__init__(var=["y"], cond_var=["x"], name="p")
        self.net = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def forward(self, x):
        return {"loc": self.net(x), "scale": torch.ones(1)}


def _batch_norm_model():
    torch.manual_seed(0)
    return Model(-LogProb(_NormedMean()).mean(), optimizer_params={"lr": 0.01})


def _rows(n):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, generator=g)
    return {"x": x, "y": 2 * x + 0.1 * torch.randn(n, 1, generator=g)}


def test_a_one_row_last_batch_under_batch_norm_is_named_at_its_step():
    """97 rows in batches of 16: torch's "Expected more than 1 value per channel" at the last step, after 6 steps, is
    named with the epoch, the step, its rows and the remedies; the 6 steps taken are those of the first 96 rows (a
    single process checks at the failing step, not before the first: a layer may see more rows than the batch)."""
    model, reference = _batch_norm_model(), _batch_norm_model()
    with pytest.raises(ValueError) as caught:
        model.fit(_rows(97), batch_size=16, shuffle=False, quiet=True, seed=0)
    assert str(caught.value) == (
        "fit: batch normalisation needs more than one value per channel in training, but the batch of epoch 1, step 7 "
        "has 1 row (Expected more than 1 value per channel when training, got input size torch.Size([1, 4])); this "
        "step was not taken (the epoch's 6 earlier steps were); pass fit(..., drop_last=True) (each epoch leaves out "
        "its last, smaller batch), or choose another batch_size than 16 (one that leaves the last batch at least 2 "
        "rows)")
    reference.fit({k: v[:96] for k, v in _rows(97).items()}, batch_size=16, shuffle=False, quiet=True, seed=0)
    assert _same_state(_state(model), _state(reference)) and model.epoch == 0
    # every buffer: torch had counted the refused batch in num_batches_tracked (7), which the step now puts back
    assert all(torch.equal(a, b) for a, b in zip(model.distributions.buffers(), reference.distributions.buffers()))
    assert int(model.distributions[0].net[1].num_batches_tracked) == 6
    with pytest.raises(ValueError, match=r"epoch 1, step 1 has 1 row \(.*\); this step was not taken; choose "
                                         r"batch_size >= 2 \(batch_size=1 gives every step one row\)$"):
        _batch_norm_model().fit(_rows(8), batch_size=1, drop_last=True, quiet=True)


def test_drop_last_leaves_out_the_last_short_batch():
    """Without shuffling, 97 rows with drop_last train exactly as their first 96 rows; shuffled, 6 steps an epoch."""
    kept, reference = _batch_norm_model(), _batch_norm_model()
    kept.fit(_rows(97), epochs=2, batch_size=16, shuffle=False, drop_last=True, quiet=True, seed=0)
    reference.fit({k: v[:96] for k, v in _rows(97).items()}, epochs=2, batch_size=16, shuffle=False, quiet=True,
                  seed=0)
    assert kept.history == reference.history and _same_state(_state(kept), _state(reference))
    assert all(torch.equal(a, b) for a, b in zip(kept.distributions.buffers(), reference.distributions.buffers()))
    shuffled = _batch_norm_model()
    shuffled.fit(_rows(97), epochs=2, batch_size=16, drop_last=True, quiet=True, seed=0)
    assert int(next(iter(shuffled.optimizer.state_dict()["state"].values()))["step"]) == 12


def test_drop_last_arguments_are_checked():
    model = _batch_norm_model()
    with pytest.raises(ValueError, match=r"fit: drop_last cuts dict data; a DataLoader drops its own last batch "
                                         r"\(DataLoader\(..., drop_last=True\)\)"):
        model.fit([_rows(4)], drop_last=True, quiet=True)
    with pytest.raises(TypeError, match="fit: drop_last must be True or False, got 1"):
        model.fit(_rows(20), drop_last=1, quiet=True)
    with pytest.raises(ValueError, match="fit: drop_last=True leaves no batch: the data have 20 rows, fewer than a "
                                         "batch of 32"):
        model.fit(_rows(20), batch_size=32, drop_last=True, quiet=True)


# ------------------------------------------------------------------------ Pixyz's clip_grad_*=False
def test_pixyz_false_means_no_clipping():
    """Pixyz's ML / VI / VAE default to clip_grad_norm=False, clip_grad_value=False ("no clipping"); it was refused."""
    runs = []
    for options in ({}, {"clip_grad_norm": False, "clip_grad_value": False}):
        torch.manual_seed(0)
        p = _normal()
        model = ML(p, optimizer_params={"lr": 0.5}, **options)
        assert model.clip_grad_norm is None and model.clip_grad_value is None
        model.fit(X, epochs=2, batch_size=8, seed=0, quiet=True)
        runs.append(_state(model))
    assert _same_state(*runs)
    for name in ("clip_grad_norm", "clip_grad_value"):
        for bad in (True, float("nan"), -1.0):
            with pytest.raises(ValueError, match=f"Model: {name} must be a positive number or None, got "
                                                 rf"{bad!r} \(None or False: no clipping\)"):
                ML(_normal(), **{name: bad})
