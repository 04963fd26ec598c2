"""Checkpoints: an interrupted run resumes bitwise; foreign files and other architectures are clear errors.

The resumed model's first step is validated (a new Model checks its first step) where the uninterrupted run's
third epoch was not: a Bernoulli decoder, whose fast kernel rounds differently from torch's formula, makes that
difference visible if validation changed the computation (it did until 2026-12-05).

Reference: the uninterrupted run itself (same seed), compared bitwise.
"""

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from kizuna import _io
from kizuna.distributions import Bernoulli, Normal
from kizuna.losses import Expectation, KullbackLeibler, LogProb
from kizuna.models import History, Model
from kizuna.nets import MLP


class Encoder(Normal):
    def __init__(self, hidden=16):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = MLP(6, hidden, 4)

    def forward(self, x):
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}


class Decoder(Normal):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = MLP(2, 16, 6)

    def forward(self, z):
        return {"loc": self.net(z), "scale": torch.ones(1)}


class BernoulliDecoder(Bernoulli):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = MLP(2, 16, 6)

    def forward(self, z):
        return {"probs": torch.sigmoid(self.net(z))}


def build(hidden=16, optimizer=torch.optim.Adam, decoder=Decoder):
    """A small VAE: its loss samples z, so resuming needs the RNG states, not just the weights."""
    torch.manual_seed(123)
    q, p = Encoder(hidden), decoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
    return Model(loss, distributions=[p, q], optimizer=optimizer, optimizer_params={"lr": 1e-2})


class Rows(Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i]}


X = torch.randn(100, 6, generator=torch.Generator().manual_seed(0))
V = torch.randn(30, 6, generator=torch.Generator().manual_seed(1))


def _data(kind):
    if kind == "dict":
        return {"x": X}, {"x": V}
    return DataLoader(Rows(X), batch_size=16, shuffle=True), DataLoader(Rows(V), batch_size=16)


@pytest.mark.parametrize(("kind", "decoder"), [("dict", Decoder), ("shuffled DataLoader", Decoder),
                                              ("dict", BernoulliDecoder)])
def test_an_interrupted_run_resumes_to_the_same_numbers(tmp_path, kind, decoder):
    data, valid = _data(kind)
    if decoder is BernoulliDecoder:
        data, valid = {"x": (X > 0).float()}, {"x": (V > 0).float()}
    straight = build(decoder=decoder)
    h_straight = straight.fit(data, epochs=4, batch_size=16, valid=valid, seed=5, quiet=True)
    path = tmp_path / "run.pt"
    first = build(decoder=decoder)
    first.fit(data, epochs=2, batch_size=16, valid=valid, seed=5, quiet=True, checkpoint=path)
    torch.manual_seed(999), np.random.seed(999), random.seed(999)  # the interruption scrambles every RNG
    resumed = build(decoder=decoder)
    resumed.load(path)
    assert resumed.epoch == 2 and len(resumed.history) == 2
    # the same script, re-run: seed is ignored once the model has trained, so the streams continue
    h_resumed = resumed.fit(data, epochs=2, batch_size=16, valid=valid, seed=5, quiet=True)
    assert h_resumed == h_straight and h_resumed["epoch"] == [1, 2, 3, 4]
    for (name, a), b in zip(straight.distributions.state_dict().items(), resumed.distributions.state_dict().values()):
        assert torch.equal(a, b), name
    states = [m.optimizer.state_dict()["state"].values() for m in (straight, resumed)]
    for a, b in zip(*states):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_load_without_unpickling_code_and_leave_the_global_rngs_alone(tmp_path):
    model, fresh = build(), build()  # building networks draws from the global generator: before the reference
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    model.fit({"x": X}, epochs=1, quiet=True, seed=0)  # fit's own stream: the global generators stay as they were
    path = tmp_path / "c.pt"
    model.save(path)
    raw = _io.load(path)  # checksummed; tensors, numbers, strings and containers only (weights_only)
    assert raw["format"] == "kizuna.checkpoint" and raw["epoch"] == 1 and raw["rng"] is not None
    fresh.load(path)
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], after[0]) and np.array_equal(expected[1], after[1]) and expected[2] == after[2]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))  # written atomically


class Schedule:
    """An object a safe load cannot rebuild."""


def test_numpy_settings_are_saved_as_numbers_and_an_unsafe_state_is_refused_before_writing(tmp_path):
    """An optimizer's learning rate set from numpy after load (what docs/training.md suggests) was written as a numpy
    object, which torch.load(weights_only=True) refuses: the save replaced a good checkpoint with one that could not
    be read. numpy scalars and arrays are now saved as numbers and tensors; anything else a safe load refuses is a
    TypeError at save time, naming its class, and the file on disk is left as it was."""
    path = tmp_path / "run.pt"
    model = build()
    model.fit({"x": X}, epochs=1, quiet=True, seed=0, checkpoint=path)
    model = build()
    model.load(path)
    for group in model.optimizer.param_groups:
        group["lr"], group["betas"] = np.logspace(-3, -2, 2)[1], np.array([0.8, 0.99])
    model.fit({"x": X}, epochs=1, quiet=True, checkpoint=path)
    resumed = build()
    resumed.load(path)  # before: "cannot be read safely (Weights only load failed ..."
    group = resumed.optimizer.param_groups[0]
    assert resumed.epoch == 2 and type(group["lr"]) is float and group["lr"] == pytest.approx(0.01, rel=1e-15)
    assert torch.equal(torch.as_tensor(group["betas"]), torch.tensor([0.8, 0.99], dtype=torch.float64))
    before = path.read_bytes()
    for group in resumed.optimizer.param_groups:
        group["schedule"] = Schedule()
    with pytest.raises(TypeError, match=r"holds an object of .*Schedule, which a safe load \(weights_only\) refuses; "
                                        "nothing was written"):
        resumed.fit({"x": X}, epochs=1, quiet=True, checkpoint=path)
    assert path.read_bytes() == before
    build().load(path)


@pytest.mark.parametrize("key", ["history", "epoch", "shuffle", "optimizer_class"])
def test_a_state_lacking_an_entry_is_refused_before_anything_is_loaded(key):
    """A state without its "history" (a hand-built or older state) raised a raw KeyError after the weights and the
    optimizer's state had been loaded: the model was left half loaded."""
    trained = build()
    trained.fit({"x": X}, epochs=2, quiet=True, seed=0)
    state = trained.state_dict()
    del state[key]
    fresh = build()
    weights = {k: v.clone() for k, v in fresh.distributions.state_dict().items()}
    with pytest.raises(ValueError, match=rf"the checkpoint is not a whole model state: it lacks '{key}'"):
        fresh.load_state_dict(state)
    assert fresh.epoch == 0 and not fresh.optimizer.state_dict()["state"]
    for k, v in fresh.distributions.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_fit_checkpoints_every_epoch_and_early_stopping_saves_the_best(tmp_path):
    path = tmp_path / "run.pt"
    model = build()
    model.fit({"x": X}, epochs=3, quiet=True, seed=0, checkpoint=path)
    loaded = build()
    loaded.load(path)
    assert loaded.epoch == 3 and loaded.history == model.history
    p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=1.0)
    stopper = Model(-LogProb(p).mean(), optimizer_params={"lr": 0.3})
    stopper.fit({"x": torch.full((8, 1), 3.0)}, epochs=10, valid={"x": torch.full((4, 1), -1.0)}, patience=2,
                checkpoint=path, quiet=True, seed=0)
    q = Normal(var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=1.0)
    again = Model(-LogProb(q).mean(), optimizer_params={"lr": 0.3})
    again.load(path)
    assert again.history.stopped_epoch == 3 and again.history.best_epoch == 1
    assert torch.equal(q.loc, p.loc)  # the checkpoint holds the restored best parameters


def test_save_creates_a_missing_folder_as_save_module_does(tmp_path):
    """Model.save creates the folders of its path, as kizuna.modules.save_module and Graph.save do; it raised
    FileNotFoundError ('the directory ... does not exist')."""
    model = build()
    path = tmp_path / "runs" / "vae" / "c.pt"
    model.save(path)
    loaded = build(hidden=16)
    loaded.load(path)
    assert loaded.epoch == model.epoch
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]


def test_another_architecture_lists_the_offending_parameters(tmp_path):
    path = tmp_path / "c.pt"
    build().save(path)
    with pytest.raises(ValueError, match=r"another architecture; shape mismatch: q\(z\|x\)\.net\.0\.weight "
                                         r"is \(16, 6\) in the checkpoint, \(8, 6\) in the model"):
        build(hidden=8).load(path)
    p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(2)), scale=1.0)
    with pytest.raises(ValueError, match=r"missing from the checkpoint: p\(x\)\.loc \(2,\).*"
                                         r"in the checkpoint but not in the model: 0\.net\.0\.weight \(16, 2\)"):
        Model(-LogProb(p).mean()).load(path)
    with pytest.raises(ValueError, match=r"trained with torch\.optim\.adam\.Adam, "
                                         r"this model uses torch\.optim\.sgd\.SGD"):
        build(optimizer=torch.optim.SGD).load(path)


def test_foreign_files_are_not_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt is not a kizuna checkpoint"):
        build().load(junk)
    weights = tmp_path / "weights.pt"
    torch.save(build().distributions.state_dict(), weights)
    with pytest.raises(ValueError, match="weights.pt is not a kizuna checkpoint .*load_state_dict"):
        build().load(weights)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        build().load(tmp_path / "absent.pt")


def test_a_directory_given_as_the_file_is_named(tmp_path):
    """``save(dir)`` failed in the rename with an error naming the temporary file, and ``load(dir)`` said there was no
    checkpoint file; a module's save / load the same."""
    from kizuna import modules as km

    folder = tmp_path / "runs"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"cannot save to .*runs: it is an existing directory; give a file "
                                                r"path inside it \(e.g. .*runs/model.pt\)"):
        build().save(folder)
    with pytest.raises(IsADirectoryError, match="runs is a directory, not a checkpoint file"):
        build().load(folder)
    gmm = km.GMM(2, algorithm="em", random_state=0).fit(torch.randn(20, 2).double().numpy())
    with pytest.raises(IsADirectoryError, match="cannot save to .*runs: it is an existing directory"):
        km.save_module(gmm, folder)
    with pytest.raises(IsADirectoryError, match="runs is a directory, not a saved module"):
        km.load_module(km.GMM(2, algorithm="em"), folder)
    assert list(folder.iterdir()) == []  # no temporary file left


def test_history_records_and_pads_missing_terms():
    h = History()
    h.append(1, 2.0, float("nan"), {"a": 1.0}, {})
    h.append(2, 1.5, 0.5, {"a": 0.5, "b": 3.0}, {"a": 0.25})
    assert h["train"] == [2.0, 1.5] and h["a"] == [1.0, 0.5] and h["epoch"] == [1, 2]
    assert np.isnan(h["b"][0]) and h["b"][1] == 3.0 and np.isnan(h.valid_terms["a"][0])
    assert History.from_dict(h.to_dict()).to_dict().keys() == h.to_dict().keys()
    with pytest.raises(KeyError, match="no record 'c'; it has 'epoch', 'train', 'valid', 'a', 'b'"):
        h["c"]


def test_a_checkpoint_path_that_is_a_directory_is_refused_before_training(tmp_path):
    """fit(checkpoint=<an existing directory>) is an error naming the path before any epoch is trained (it failed
    only when the first epoch's checkpoint was written)."""
    (tmp_path / "ck").mkdir()
    model = build()
    with pytest.raises(IsADirectoryError, match="ck: it is an existing directory"):
        model.fit({"x": X}, epochs=3, checkpoint=tmp_path / "ck", quiet=True)
    assert model.epoch == 0 and list((tmp_path / "ck").iterdir()) == []


def test_saves_keep_a_state_dicts_metadata_and_refuse_numpy_values_a_safe_load_cannot_read(tmp_path):
    """A state_dict's ``_metadata`` (the modules' versions) was dropped by the numpy conversion; numpy integer keys are
    plain ints; a longdouble, a datetime64 and an array of strings (which torch holds in no tensor) are refused before
    anything is written, naming what is refused, and the file on disk is left as it was."""
    net = nn.BatchNorm1d(3)
    path = tmp_path / "s.pt"
    _io.save({"net": net.state_dict(), np.int64(3): np.float32(0.5)}, path)
    back = _io.load(path)
    assert back["net"]._metadata == net.state_dict()._metadata and back[3] == 0.5 and type(back[3]) is float
    before = path.read_bytes()
    for bad in (np.longdouble(0.1), np.datetime64("2020-01-01"), np.array(["x", "y"])):
        with pytest.raises(TypeError, match=r"the state holds an object of numpy\..*nothing was written"):
            _io.save({"value": bad}, path)
        assert path.read_bytes() == before


def test_rng_state_round_trip_through_a_safe_checkpoint(tmp_path) -> None:
    """`rng_state` / `set_rng_state` (the generators a checkpoint does not save, for a caller who needs them):
    python's ``random``, numpy's legacy global generator (with a cached Gaussian) and torch's, saved through a file
    read with ``weights_only=True``, give the same next draws as the uninterrupted generators."""
    from kizuna.models import checkpoint as ckpt

    random.seed(1)
    np.random.seed(2)
    np.random.standard_normal()  # leaves the second Gaussian of the pair cached (has_gauss)
    torch.manual_seed(3)
    path = tmp_path / "rng.pt"
    torch.save(ckpt.rng_state(), path)
    expected = (random.random(), np.random.standard_normal(), np.random.rand(3).tolist(), torch.rand(4))
    random.seed(10)
    np.random.seed(20)
    torch.manual_seed(30)
    ckpt.set_rng_state(torch.load(path, weights_only=True))
    found = (random.random(), np.random.standard_normal(), np.random.rand(3).tolist(), torch.rand(4))
    assert found[:3] == expected[:3]
    assert torch.equal(found[3], expected[3])
