"""Early stopping per fit call, checkpoints of the losses' own state (an SGLD replay buffer, a learned coefficient),
time-major loader weights, state_dict snapshots, NAdam in float64 and printing a model of any modules."""

import copy

import pytest
import torch
from torch import nn

from kizuna.distributions import EnergyDistribution, Normal
from kizuna.losses import ContrastiveDivergence, IterativeLoss, LogProb, Parameter, ValueLoss
from kizuna.models import LadderVAE, Model
from kizuna.samplers import SGLD


def _normal(dtype=torch.float32):
    return Normal(var=["x"], loc=nn.Parameter(torch.zeros(1, dtype=dtype)), scale=1.0)


def _equal(a, b):
    return all(torch.equal(u, v) for u, v in zip(a, b))


# ------------------------------------------------------------------------------------------- 1. early stopping
def test_each_fit_call_has_its_own_early_stopping():
    """A second fit with new validation data was measured against the first call's best: it stopped after one epoch
    and put the first call's parameters back, silently."""
    g = torch.Generator().manual_seed(0)
    a, va = torch.randn(200, 1, generator=g), torch.randn(50, 1, generator=g)
    b, vb = torch.randn(200, 1, generator=g) + 5, torch.randn(50, 1, generator=g) + 5
    runs = []
    for patience in (3, None):  # the reference: the same second call without early stopping
        p = _normal()
        model = Model(-LogProb(p).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 0.05})
        model.fit({"x": a}, epochs=3, batch_size=200, valid={"x": va}, quiet=True, seed=0)
        h = model.fit({"x": b}, epochs=30, batch_size=200, valid={"x": vb}, patience=patience, quiet=True)
        runs.append((p.loc.detach().clone(), copy.deepcopy(h)))
    (loc, h), (loc_ref, h_ref) = runs
    assert all(x > y for x, y in zip(h.valid[3:], h.valid[4:]))  # the second call improves at every epoch
    assert h.epoch == list(range(1, 34)) and h.stopped_epoch is None and h.best_epoch == 33
    assert torch.equal(loc, loc_ref) and h == h_ref  # nothing restored: the run without patience, bitwise
    assert loc.item() > 3.0


def test_a_loss_weight_changed_between_calls_starts_a_new_early_stopping():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(200, 1, generator=g) + 5, torch.randn(50, 1, generator=g) + 5
    q = _normal()
    model = Model((-LogProb(q) * Parameter("w")).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 0.05})
    model.fit({"x": x, "w": 0.1}, epochs=3, batch_size=200, valid={"x": v, "w": 0.1}, quiet=True, seed=0)
    h = model.fit({"x": x, "w": 1.0}, epochs=5, batch_size=200, valid={"x": v, "w": 1.0}, patience=3, quiet=True)
    assert len(h) == 8 and h.stopped_epoch is None and h.best_epoch == 8  # it stopped at 6, epoch 3's weights back


def test_a_resumed_run_continues_its_early_stopping_bitwise(tmp_path):
    """The first fit after load continues the checkpoint's best epoch and count (the uninterrupted run's numbers)."""
    torch.manual_seed(0)
    x, v = torch.randn(20, 1) + 2, torch.randn(30, 1) - 1

    def build():
        p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=nn.Parameter(torch.ones(1)))
        return Model(-LogProb(p).mean(), optimizer_params={"lr": 0.3})

    straight = build()
    h = straight.fit({"x": x}, epochs=12, batch_size=8, valid={"x": v}, patience=3, seed=5, quiet=True)
    assert h.stopped_epoch is not None and h.stopped_epoch > 3
    path = tmp_path / "r.pt"
    first = build()
    first.fit({"x": x}, epochs=h.best_epoch + 1, batch_size=8, valid={"x": v}, patience=3, seed=5, quiet=True,
              checkpoint=path)
    resumed = build()
    resumed.load(path)
    h2 = resumed.fit({"x": x}, epochs=12 - resumed.epoch, batch_size=8, valid={"x": v}, patience=3, seed=5,
                     quiet=True)
    assert h2 == h and _equal(straight.distributions.parameters(), resumed.distributions.parameters())


# ------------------------------------------------------------------------------ 2. the SGLD buffer in checkpoints
def _ebm():
    torch.manual_seed(0)
    p = EnergyDistribution(nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1)), var=["x"])
    sampler = SGLD(p, [2], buffer_size=100, n_steps=3, step_size=0.02, noise_scale=0.1, low=-3, high=3)
    model = Model(ContrastiveDivergence(p, sampler, alpha=0.1), distributions=[p], optimizer_params={"lr": 2e-3})
    return model, sampler


def test_an_energy_model_resumes_bitwise_with_its_replay_buffer(tmp_path):
    """Built as the docs show (distributions=[p]), the checkpoint dropped the sampler's buffer: the resumed run
    restarted from a new uniform buffer and its numbers differed."""
    x = {"x": torch.randn(128, 2, generator=torch.Generator().manual_seed(0))}
    straight, s1 = _ebm()
    straight.fit(x, epochs=4, batch_size=32, seed=0, quiet=True)
    path = tmp_path / "ebm.pt"
    first, _ = _ebm()
    first.fit(x, epochs=2, batch_size=32, seed=0, quiet=True, checkpoint=path)
    resumed, s2 = _ebm()
    resumed.load(path)
    resumed.fit(x, epochs=2, batch_size=32, seed=0, quiet=True)
    assert resumed.history == straight.history
    assert _equal(straight.distributions.parameters(), resumed.distributions.parameters())
    assert torch.equal(s1.buffer, s2.buffer)
    assert resumed.state_dict()["loss"].keys() == {"loss.sampler.buffer"}  # the energy net is in "distributions"


def test_a_losses_state_of_another_shape_is_named():
    model, _ = _ebm()
    state = model.state_dict()
    other = Model(ContrastiveDivergence(model.distributions[0], SGLD(model.distributions[0], [2], buffer_size=7)),
                  distributions=[model.distributions[0]])
    with pytest.raises(ValueError, match=r"another architecture; shape mismatch: loss\.sampler\.buffer is \(100, 2\) "
                                         r"in the checkpoint, \(7, 2\) in the model"):
        other.load_state_dict(state)


# ------------------------------------------------------------------------------- 3. a learned loss coefficient
def _coefficient_model(clip=None, lr=0.05):
    p = _normal()
    s = nn.Parameter(torch.ones(()))
    nll = (-LogProb(p)).mean()
    model = Model(nll * s + (nll * 0 + s - 2.0) ** 2, distributions=[p], optimizer_params={"lr": lr},
                  clip_grad_norm=clip)
    model.optimizer.add_param_group({"params": [s]})
    return model, p, s


def test_a_learned_loss_coefficient_is_checkpointed(tmp_path):
    """ValueLoss's documented route (the user gives the coefficient to the optimizer): its Adam moments were saved,
    the coefficient itself was not, and a resumed run restarted it from 1."""
    x = {"x": torch.randn(64, 1, generator=torch.Generator().manual_seed(0)) + 2}
    a, pa, sa = _coefficient_model()
    a.fit(x, epochs=6, batch_size=16, seed=0, quiet=True)
    path = tmp_path / "c.pt"
    b, _, sb = _coefficient_model()
    b.fit(x, epochs=3, batch_size=16, seed=0, quiet=True, checkpoint=path)
    c, pc, sc = _coefficient_model()
    c.load(path)
    assert torch.equal(sc, sb) and sc.item() != 1.0
    c.fit(x, epochs=3, batch_size=16, seed=0, quiet=True)
    assert torch.equal(pc.loc, pa.loc) and torch.equal(sc, sa) and c.history == a.history


def test_a_learned_loss_coefficient_is_clipped_with_the_distributions():
    """clip_grad_norm read the parameters fixed at construction, without the coefficient the user gave the
    optimizer: the norm and the scaling differed from torch's over every trained parameter."""
    x = {"x": torch.randn(32, 1, generator=torch.Generator().manual_seed(1)) * 3 + 4}
    model, p, s = _coefficient_model(clip=0.5, lr=0.1)
    loc, w = p.loc.detach().clone().requires_grad_(), torch.ones((), requires_grad=True)  # torch by hand
    opt = torch.optim.Adam([{"params": [loc]}, {"params": [w]}], lr=0.1)
    for _ in range(3):
        model.train(x)
        opt.zero_grad()
        nll = -torch.distributions.Normal(loc, 1.0).log_prob(x["x"]).sum(-1).mean()
        (nll * w + (w - 2.0) ** 2).backward()
        nn.utils.clip_grad_norm_([loc, w], 0.5)
        opt.step()
    torch.testing.assert_close(p.loc.detach(), loc.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(s.detach(), w.detach(), rtol=1e-6, atol=1e-7)


def test_a_non_finite_gradient_of_a_learned_loss_coefficient_stops_the_step():
    """The non-finite gradient check skipped the coefficient: the step was taken and made it NaN."""
    x = {"x": torch.randn(32, 1, generator=torch.Generator().manual_seed(1))}
    q = _normal()
    k = nn.Parameter(torch.zeros(()))
    bad = Model((-LogProb(q)).mean() + ValueLoss(k) ** 0.5, distributions=[q])  # d sqrt(k) / dk at 0: inf
    bad.optimizer.add_param_group({"params": [k]})
    with pytest.raises(FloatingPointError, match=r"gradient of loss\.\S*value is non-finite; the loss .* is finite"):
        bad.train(x)
    assert k.item() == 0.0 and q.loc.item() == 0.0  # the step was not taken


def test_the_best_epoch_restores_a_learned_loss_coefficient_too():
    model, p, s = _coefficient_model()
    assert not model.early_stop(1, 1.0, patience=1)  # the best so far: kept
    best = (p.loc.detach().clone(), s.detach().clone())
    with torch.no_grad():
        p.loc.add_(1.0), s.add_(1.0)
    assert model.early_stop(2, 2.0, patience=1)  # worse: epoch 1 restored, as a whole
    assert torch.equal(p.loc, best[0]) and torch.equal(s.detach(), best[1])


# ---------------------------------------------------------------------------- 4. time-major loader batch weights
def test_epoch_means_of_time_major_loader_batches_weigh_sequences():
    """A batch of N time-major sequences (T x N x ...) was weighted by T: every batch alike."""
    g = torch.Generator().manual_seed(0)
    b1, b2 = {"x": torch.randn(10, 8, 1, generator=g)}, {"x": torch.randn(10, 2, 1, generator=g) + 4}
    p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=1.0)
    model = Model(IterativeLoss((-LogProb(p)).mean(), series_var=["x"], series_dim=0), optimizer=torch.optim.SGD,
                  optimizer_params={"lr": 0.0})
    h = model.fit([b1, b2], epochs=1, valid=[b1, b2], quiet=True, seed=0)
    l1, l2 = model.test(b1).item(), model.test(b2).item()
    assert h.train[0] == pytest.approx((8 * l1 + 2 * l2) / 10, rel=1e-6)  # 29.05, not the batches' mean 50.44
    assert h.valid[0] == pytest.approx((8 * l1 + 2 * l2) / 10, rel=1e-6)


# ------------------------------------------------------------------------------------- 5. state_dict snapshots
def test_a_state_dict_is_a_snapshot_that_restores_the_whole_model():
    """The weights and optimizer state were live references: a restored snapshot rolled back the epoch and history
    but kept the later weights and Adam moments."""
    p = _normal()
    model = Model(-LogProb(p).mean(), optimizer_params={"lr": 0.1})
    x = {"x": torch.randn(64, 1, generator=torch.Generator().manual_seed(0)) + 3}
    model.fit(x, epochs=2, quiet=True, seed=0)
    snap = model.state_dict()
    weights, moments = p.loc.detach().clone(), copy.deepcopy(model.optimizer.state_dict()["state"])
    model.fit(x, epochs=5, quiet=True)
    for _ in range(2):  # the snapshot is not changed by training after its load either
        model.load_state_dict(snap)
        assert model.epoch == 2 and len(model.history) == 2 and torch.equal(p.loc.detach(), weights)
        state = model.optimizer.state_dict()["state"]
        assert all(torch.equal(state[i][k], moments[i][k]) for i in moments for k in moments[i])
        model.fit(x, epochs=3, quiet=True)


def test_save_writes_the_live_tensors_and_a_gan_save_too(tmp_path, monkeypatch):
    """`state_dict` copies every tensor (a snapshot); `save` writes the live ones at once, without the copies that
    would only add to its peak memory (half as much again; on a GPU, in its memory), and loads back the same."""
    from kizuna.models import GAN

    copies = []
    deepcopy = torch.Tensor.__deepcopy__
    monkeypatch.setattr(torch.Tensor, "__deepcopy__", lambda self, memo: copies.append(1) or deepcopy(self, memo))
    p = _normal()
    model = Model(-LogProb(p).mean(), optimizer_params={"lr": 0.1})
    model.fit({"x": torch.randn(64, 1, generator=torch.Generator().manual_seed(0))}, epochs=2, quiet=True, seed=0)
    model.state_dict()
    assert copies, "state_dict is a snapshot"
    copies.clear()
    model.save(tmp_path / "m.pt")
    assert not copies and "_live_state" not in model.__dict__
    again = Model(-LogProb(_normal()).mean(), optimizer_params={"lr": 0.1})
    again.load(tmp_path / "m.pt")
    assert torch.equal(again.distributions[0].loc, p.loc) and again.epoch == 2

    from kizuna.distributions import Deterministic

    class G(Deterministic):
        def __init__(self):
            super().__init__(var=["x"], cond_var=["z"], name="g")
            self.net = nn.Linear(2, 1)

        def forward(self, z):
            return {"x": self.net(z)}

    class D(Deterministic):
        def __init__(self):
            super().__init__(var=["t"], cond_var=["x"], name="f")
            self.net = nn.Linear(1, 1)

        def forward(self, x):
            return {"t": self.net(x)}

    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2])
    from kizuna.losses import AdversarialWassersteinDistance

    gan = GAN((G() * prior).marginalize_var("z"), D(), adversarial=AdversarialWassersteinDistance)
    gan.train({"x": torch.randn(8, 1)})
    copies.clear()
    gan.save(tmp_path / "g.pt")
    assert not copies and "_live_state" not in gan.d_model.__dict__
    from kizuna.models import checkpoint

    saved = checkpoint.load(tmp_path / "g.pt")["discriminator"]["distributions"]["0.net.weight"]
    assert torch.equal(saved, gan.d_model.distributions[0].net.weight)


# ----------------------------------------------------------------------------------------- 6. NAdam in float64
def _nadam(dtype):
    p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(3, dtype=dtype)), scale=nn.Parameter(torch.ones(3, dtype=dtype)))
    return Model(-LogProb(p).mean(), optimizer=torch.optim.NAdam, optimizer_params={"lr": 0.05})


def test_nadam_in_float64_resumes_bitwise(tmp_path):
    """torch casts NAdam's float32 mu_product to the parameters' float64 when it loads the optimizer state."""
    x = {"x": (torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 2 + 1).double()}
    a = _nadam(torch.float64)
    a.fit(x, epochs=8, batch_size=64, seed=0, quiet=True)
    path = tmp_path / "s.pt"
    b = _nadam(torch.float64)
    b.fit(x, epochs=3, batch_size=64, seed=0, quiet=True, checkpoint=path)
    c = _nadam(torch.float64)
    c.load(path)
    assert c.optimizer.state_dict()["state"][0]["mu_product"].dtype == torch.float32
    c.fit(x, epochs=5, batch_size=64, seed=0, quiet=True)
    assert _equal(a.distributions.parameters(), c.distributions.parameters()) and a.history == c.history
    # a float32 run loaded into a float64 model: its state converted to float64 as torch converts it, and it trains
    f32 = _nadam(torch.float32)
    f32.fit({"x": x["x"].float()}, epochs=2, batch_size=64, seed=0, quiet=True, checkpoint=path)
    d = _nadam(torch.float64)
    d.load(path)
    assert d.optimizer.state_dict()["state"][0]["exp_avg"].dtype == torch.float64
    d.fit(x, epochs=1, batch_size=64, quiet=True)


# ---------------------------------------------------------------------------------------------- 7. printing
def test_a_model_of_any_modules_prints():
    m = LadderVAE(6, [3, 2], [8, 8])
    text = str(Model(m.loss().mean(), distributions=[m]))
    assert text.startswith("Distributions (for training): LadderVAE\nLoss function: ")
    model, sampler = _ebm()
    assert "p(x), SGLD\n" in str(Model(model.loss_cls, distributions=[model.distributions[0], sampler]))



def test_fit_leaves_the_networks_in_training_mode_with_or_without_valid_data():
    """docs/uses.md says fit leaves the networks in training mode; with ``valid`` the validation pass, the last thing
    an epoch does, left them in evaluation mode (dropout off), so the mode after fit depended on ``valid``."""

    class Net(Normal):
        def __init__(self):
            super().__init__(var=["y"], cond_var=["x"], scale=1.0)
            self.net = nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Linear(4, 1))

        def forward(self, x):
            return {"loc": self.net(x)}

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2, generator=g), torch.randn(40, 1, generator=g)
    for valid in (None, {"x": x[:10], "y": y[:10]}):
        f = Net()
        model = Model(-LogProb(f).mean(), distributions=[f])
        model.fit({"x": x, "y": y}, epochs=2, batch_size=20, valid=valid, quiet=True, seed=0)
        assert all(m.training for m in f.modules()), valid
