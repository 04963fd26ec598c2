"""fit: a submodel's ``ReduceLROnPlateau`` (a GAN's ``d_model.scheduler``) steps with that submodel's own loss, the
term ``Model.submodel_terms`` names (``d_loss``), and resumes bitwise; a training step that batch normalisation
refuses (one row) leaves the statistics and counts its forward had updated as they were before it.

References: torch's ``ReduceLROnPlateau`` stepped by hand with the history's ``d_loss`` (bitwise), the uninterrupted
run (bitwise), the buffers saved before the failing step, and the run on the rows before it (bitwise)."""

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR

from kizuna.distributions import Bernoulli, Deterministic, Normal
from kizuna.losses import LogProb
from kizuna.models import GAN, Model


class _G(Deterministic):
    def __init__(self, norm=False):
        super().__init__(var=["x"], cond_var=["z"], name="g")
        self.net = nn.Sequential(nn.Linear(2, 8), *([nn.BatchNorm1d(8, momentum=None)] if norm else []), nn.ReLU(),
                                 nn.Linear(8, 3))

    def forward(self, z):
        return {"x": self.net(z)}


class _D(Bernoulli):
    def __init__(self):
        super().__init__(var=["t"], cond_var=["x"], name="d")
        self.net = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))

    def forward(self, x):
        return {"logits": self.net(x)}


def _gan(plateau=None, norm=False, d_steps=1):
    torch.manual_seed(0)
    prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), features_shape=[2], name="p_z")
    gan = GAN((_G(norm) * prior).marginalize_var("z"), _D(), d_steps=d_steps, optimizer_params={"lr": 1e-3},
              d_optimizer_params={"lr": 1e-3})
    if plateau is not None:
        gan.d_model.scheduler = ReduceLROnPlateau(gan.d_model.optimizer, **plateau)
        gan.scheduler = StepLR(gan.optimizer, step_size=2, gamma=0.5)
    return gan


_g = torch.Generator().manual_seed(1)
X = {"x": 0.5 * torch.randn(48, 3, generator=_g) + 2}
V = {"x": 0.5 * torch.randn(16, 3, generator=_g) + 2}


def _recorded(scheduler):
    seen, step = [], scheduler.step
    scheduler.step = lambda metrics: seen.append(metrics) or step(metrics)
    return seen


def _lr(model):
    return model.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("valid", [None, V])
def test_a_discriminators_plateau_steps_with_its_own_loss(valid):
    """The discriminator's scheduler got the generator's loss (its lr was cut 3 times while its own loss fell)."""
    gan = _gan({"patience": 0, "factor": 0.5})
    seen = _recorded(gan.d_model.scheduler)
    history = gan.fit(X, epochs=4, batch_size=16, valid=valid, quiet=True, seed=0)
    own = history.terms["d_loss"] if valid is None else history.valid_terms["d_loss"]
    assert seen == own and seen != (history.train if valid is None else history.valid)
    by_hand = ReduceLROnPlateau(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3), patience=0, factor=0.5)
    for value in own:
        by_hand.step(value)
    assert _lr(gan.d_model) == by_hand.optimizer.param_groups[0]["lr"]
    assert gan.d_model.scheduler.best == by_hand.best == min(own)


def test_a_discriminators_plateau_resumes_bitwise(tmp_path):
    """Interrupted at epoch 4 of 6 (a checkpoint, a fresh GAN, load), one bad epoch into the plateau's count: the
    uninterrupted run's players, optimizers, schedulers and history, bitwise. (``mode="max"``: the falling ``d_loss``
    makes every epoch after the first a bad one, so the rate is cut after epochs 3 and 5.)"""
    plateau, fit = {"patience": 1, "factor": 0.5, "mode": "max"}, {"batch_size": 16, "valid": V, "quiet": True,
                                                                   "seed": 0}
    whole = _gan(plateau, d_steps=2)
    whole.fit(X, epochs=6, **fit)
    path = tmp_path / "gan.pt"
    first = _gan(plateau, d_steps=2)
    first.fit(X, epochs=4, checkpoint=path, **fit)
    assert first.d_model.scheduler.num_bad_epochs == 1 and _lr(first.d_model) == 5e-4
    resumed = _gan(plateau, d_steps=2)
    resumed.load(path)
    resumed.fit(X, epochs=2, **fit)
    assert _lr(whole.d_model) == 2.5e-4 and _lr(whole) == 1e-3 * 0.5 ** 3
    assert resumed.history == whole.history
    for a, b in ((resumed, whole), (resumed.d_model, whole.d_model)):
        assert all(torch.equal(p, q) for p, q in zip(a.distributions.parameters(), b.distributions.parameters()))
        assert a.scheduler.state_dict() == b.scheduler.state_dict()
        sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
        assert all(torch.equal(sa[k][j], sb[k][j]) for k in sb for j in sb[k])
    assert whole.d_model.scheduler.best == max(whole.history.valid_terms["d_loss"])


class _Pair(Model):
    """A model whose step trains a second model (as a GAN's), naming that one's loss ``name`` (or none)."""

    def __init__(self, name):
        p, q = (Normal(var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=1.0, name=n) for n in ("p", "q"))
        super().__init__(-LogProb(p).mean())
        self.other, self.name = Model(-LogProb(q).mean()), name

    def submodels(self):
        return [self.other]

    def submodel_terms(self):
        return [] if self.name is None else [self.name]


ONE = {"x": torch.randn(8, 1, generator=_g)}


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")  # (the submodel never steps)
def test_a_submodel_plateau_needs_its_loss_named():
    for name, named in ((None, "none for it"), ("d_loss", "'d_loss', not one of them")):
        model = _Pair(name)
        model.other.scheduler = ReduceLROnPlateau(model.other.optimizer)
        with pytest.raises(ValueError) as caught:
            model.fit(ONE, epochs=1, quiet=True)
        assert str(caught.value) == (
            "fit: submodel 0 of _Pair (Model) has a ReduceLROnPlateau, which steps with that submodel's own epoch "
            "loss: one of the model's training terms ('log p(x)'), named by _Pair.submodel_terms(), which names "
            f"{named}; override submodel_terms() to name it, or give the submodel another scheduler")
        assert model.epoch == 0
    model = _Pair(None)
    model.other.scheduler = StepLR(model.other.optimizer, step_size=1, gamma=0.5)  # takes no loss: fine
    model.fit(ONE, epochs=1, quiet=True)
    assert _lr(model.other) == 0.0005


# ------------------------------------------------------------------ a step batch normalisation refuses
class _Normed(Normal):
    def __init__(self, momentum):
        super().__init__(var=["y"], cond_var=["x"], name="p")
        self.net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8, momentum=momentum), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return {"loc": self.net(x), "scale": torch.ones(1)}


def _normed(momentum):
    torch.manual_seed(0)
    return Model(-LogProb(_Normed(momentum)).mean(), optimizer_params={"lr": 0.01})


_h = torch.Generator().manual_seed(2)
XY = {"x": torch.randn(33, 3, generator=_h), "y": torch.randn(33, 1, generator=_h)}


def _buffers(model):
    return {k: v.clone() for k, v in model.distributions.named_buffers()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_refused_one_row_step_leaves_the_batch_norm_state_as_before_it(momentum):
    """torch counts the batch in ``num_batches_tracked`` (and, with a momentum, nothing else) before it refuses one
    row; with ``momentum=None`` the count weighs every later batch: fit on with ``drop_last`` gave other running
    statistics than the run on the 32 rows before the failing step."""
    model, reference = _normed(momentum), _normed(momentum)
    before = _buffers(model)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        model.train({k: v[:1] for k, v in XY.items()})  # the step itself, outside fit
    assert _equal(_buffers(model), before)
    with pytest.raises(ValueError, match=r"epoch 1, step 3 has 1 row .*; this step was not taken \(the epoch's 2 "):
        model.fit(XY, batch_size=16, shuffle=False, quiet=True, seed=0)
    reference.fit({k: v[:32] for k, v in XY.items()}, batch_size=16, shuffle=False, quiet=True, seed=0)
    after = _buffers(model)
    assert _equal(after, _buffers(reference)) and int(after["0.net.1.num_batches_tracked"]) == 2
    for m in (model, reference):  # the remedy the message names, from there
        m.fit(XY, epochs=2, batch_size=16, shuffle=False, quiet=True, drop_last=True)
    assert _equal(_buffers(model), _buffers(reference))
    assert all(torch.equal(p, q) for p, q in zip(*(m.distributions.parameters() for m in (model, reference))))


def test_a_gan_step_refused_in_the_generators_batch_norm_leaves_its_state_as_before_it():
    """The discriminator's step draws from the generator, whose batch norm counted the refused draw: the generator's
    ``num_batches_tracked`` was 7 after 6 steps."""
    gan, reference = _gan(norm=True, d_steps=2), _gan(norm=True, d_steps=2)
    rows = {"x": X["x"][:33]}
    with pytest.raises(ValueError, match=r"epoch 1, step 3 has 1 row"):
        gan.fit(rows, batch_size=16, shuffle=False, quiet=True, seed=0)
    reference.fit({"x": rows["x"][:32]}, batch_size=16, shuffle=False, quiet=True, seed=0)
    after = _buffers(gan)
    assert _equal(after, _buffers(reference)) and int(after["0.p._factors.0.net.1.num_batches_tracked"]) == 6
    for a, b in ((gan, reference), (gan.d_model, reference.d_model)):
        assert all(torch.equal(p, q) for p, q in zip(a.distributions.parameters(), b.distributions.parameters()))
