"""Data-parallel `Model.fit` under torchrun: 2 gloo processes on localhost against a single process.

References: a single-process run with the same global batch (``batch_size * 2``), same data and
seed; the gradient of a per-row mean loss over the global batch equals the row-weighted mean of
the two ranks' gradients, so with the reparameterisation noise fixed per row (given as data, so
both runs see the same noise for the same row) the two runs differ only by float64 rounding
(summation order). ``DistributedSampler``'s own index sets for the sharding. The VAE module,
which samples its noise, is checked for identical ranks and against a single process loosely.

This file is also the worker script: ``python -m torch.distributed.run ... test_distributed.py OUT``.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kizuna.distributions import Bernoulli, Deterministic, Normal
from kizuna.losses import Expectation, KullbackLeibler, LogProb
from kizuna.models import Model
from kizuna.models import checkpoint as ckpt
from kizuna.models import distributed as ddp
from kizuna.models.batches import Batches
from kizuna.nets import MLP

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
D, Z, N = 12, 2, 101  # N odd: the last global batch (5 rows) splits 3 / 2, exercising the row weights


class Encoder(Normal):
    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = MLP(D, 16, 2 * Z)

    def forward(self, x):
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}


class Reparam(Deterministic):
    """z = loc(x) + scale(x) * eps with the noise eps given as data: the same draw for a row in any run."""

    def __init__(self, q):
        super().__init__(var=["z"], cond_var=["x", "eps"], name="r")
        self.q = [q]  # a list: q's parameters belong to q, not to this module

    def forward(self, x, eps):
        params = self.q[0].get_params({"x": x})
        return {"z": params["loc"] + params["scale"] * eps}


class Decoder(Bernoulli):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = MLP(Z, 16, D)

    def forward(self, z):
        return {"probs": torch.sigmoid(self.net(z))}


def build():
    torch.manual_seed(7)
    q, p = Encoder().double(), Decoder().double()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[Z], name="p_prior")
    loss = (KullbackLeibler(q, prior) - Expectation(Reparam(q), LogProb(p))).mean()
    return Model(loss, distributions=[p, q], optimizer_params={"lr": 1e-2})


def batch_norm_model():
    """q(z|x) with batch normalisation in its network, the fixed-noise VAE's loss."""
    torch.manual_seed(7)
    q, p = Encoder().double(), Decoder().double()
    q.net = nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2 * Z)).double()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[Z], name="p_prior")
    loss = (KullbackLeibler(q, prior) - Expectation(Reparam(q), LogProb(p))).mean()
    return Model(loss, distributions=[p, q], optimizer_params={"lr": 1e-2})


def data(n=N):
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(3, D, generator=g) > 0.5).double()
    x = (protos[torch.arange(n) % 3] - (torch.rand(n, D, generator=g) < 0.1).double()).abs()
    return {"x": x, "eps": torch.randn(n, Z, generator=g, dtype=torch.float64)}


def params(model):
    return [p.detach().clone() for p in model.distributions.parameters()]


def coefficient_model():
    """A learned loss coefficient s given to the optimizer (docs/training.md's route), float64, SGD."""
    p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(1, dtype=torch.float64)), scale=1.0)
    s = nn.Parameter(torch.ones((), dtype=torch.float64))
    nll = (-LogProb(p)).mean()
    model = Model(nll * s + (nll * 0 + s - 2.0) ** 2, distributions=[p], optimizer=torch.optim.SGD,
                  optimizer_params={"lr": 0.05})
    model.optimizer.add_param_group({"params": [s]})
    return model


def coefficient_data():
    return {"x": torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 3}


class Rows(Dataset):
    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors["x"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


# --------------------------------------------------------------- the worker
def worker(out):
    """Runs on each rank; writes what it saw to OUT/rank<r>.pt."""
    torch.set_num_threads(1)
    rank, res = int(os.environ["RANK"]), {}
    saves = []
    real_save = ckpt.save
    ckpt.save = lambda path, payload: (saves.append(str(path)), real_save(path, payload))

    model = build()  # fixed-noise VAE: 3 epochs with a checkpoint, then resumed for 2 more
    model.fit(data(), epochs=3, batch_size=8, seed=0, checkpoint=out / "run.pt")  # distributed=None: auto
    res["initialised_by_fit"] = dist.is_initialized()
    res["saves"] = list(saves)
    res["checkpoint_epoch"] = ckpt.load(out / "run.pt")["epoch"]  # readable at once: rank 0 wrote it, then a barrier
    resumed = build()
    resumed.load(out / "run.pt")
    resumed.fit(data(), epochs=2, batch_size=8)
    res["history"], res["params"] = resumed.history.train, params(resumed)
    res["terms"] = resumed.history.terms

    sharded = build()  # a DataLoader with a DistributedSampler vs the same rows as dict data
    sampler = DistributedSampler(Rows(data(100)), shuffle=False)
    sharded.fit(DataLoader(Rows(data(100)), batch_size=8, sampler=sampler), epochs=2, seed=1)
    as_dict = build()
    as_dict.fit(data(100), epochs=2, batch_size=8, shuffle=False, seed=1)
    res["loader"], res["loader_dict"] = sharded.history.train, as_dict.history.train
    res["sampler_epoch"], res["loader_params"] = sampler.epoch, params(sharded)

    rows = [(0, 8), (16, 24), (32, 40)] if rank == 0 else [(8, 16), (24, 32)]  # uneven: rank 1 runs out first
    uneven = build()
    uneven.fit([{k: v[i:j] for k, v in data().items()} for i, j in rows], epochs=2, seed=2)
    res["uneven"], res["uneven_params"] = uneven.history.train, params(uneven)

    y = torch.zeros(20, 1, dtype=torch.float64)  # row 1 (rank 1's first batch, no shuffling): (y - loc)^2 = inf
    y[1] = 1e300
    nan_model = Model(-LogProb(Normal(var=["y"], loc=nn.Parameter(torch.zeros(1, dtype=torch.float64)),
                                      scale=1.0)).mean())
    before = params(nan_model)
    try:
        nan_model.fit({"y": y}, epochs=1, batch_size=4, shuffle=False)
    except FloatingPointError as err:
        res["nan_error"] = str(err)
    res["nan_unchanged"] = all(torch.equal(a, b) for a, b in zip(before, params(nan_model)))

    try:
        build().fit({k: v[: 50 + rank] for k, v in data().items()}, epochs=1)
    except ValueError as err:
        res["mismatch_error"] = str(err)

    coef = coefficient_model()  # a learned loss coefficient: DDP held only the distributions' parameters
    coef.fit(coefficient_data(), epochs=2, batch_size=8, seed=0)
    res["coefficient"] = [t.detach().clone() for t in coef._trained_parameters()]

    bn = batch_norm_model()  # batch-norm statistics: each rank's own shard's until the end of each pass
    bn.fit(data(40), epochs=2, batch_size=5, seed=0)
    res["bn_buffers"] = [b.clone() for b in bn.distributions.buffers()]
    try:  # 22 rows in global batches of 10: the last one gives each rank 1 row
        batch_norm_model().fit(data(22), epochs=1, batch_size=5, seed=0)
    except ValueError as err:
        res["bn_error"] = str(err)

    from kizuna.modules import GMM, VAE, Graph, Observation  # the VAE module: each update runs Model.fit on its data

    torch.manual_seed(3)
    vae = VAE(2, hidden=(16,), epochs=4, batch_size=16, lr=3e-3).connect(Observation(data()["x"].float()))
    for _ in range(2):
        vae.update()
    res["vae_params"] = params(vae.model)
    res["vae_latent"], res["vae_loss"] = vae.latent, vae.loss_history
    vae2, gmm = VAE(2, hidden=(16,), epochs=2, batch_size=16), GMM(3)  # a graph: replicated on every rank
    vae2.connect(Observation(data()["x"].float()))
    gmm.connect(vae2)
    Graph([vae2, gmm]).fit(n_iter=2, seed=0)  # the same seed on every rank
    res["graph_posterior"], res["graph_latent"] = gmm.posterior, vae2.latent
    gmm3 = GMM(3, init_params="random").connect(Observation(data()["x"].float()[:, :4]))
    Graph([gmm3]).fit(n_iter=2)  # no seed: rank 0 draws one and sends it, so the replicas still agree
    res["seedless_posterior"] = gmm3.posterior
    guide = GUIDE.read_text().split("```python\n")[1].split("```")[0]  # the script in docs/distributed.md
    os.chdir(out)
    for run in ("guide", "guide_resumed"):
        scope = {"__name__": "__main__"}
        exec(compile(guide, str(GUIDE), "exec"), scope)
        res[run] = (scope["model"].epoch, scope["history"]["train"], params(scope["model"]))
    torch.save(res, out / f"rank{rank}.pt")


# ---------------------------------------------------------------- the tests
def test_a_graph_without_a_seed_draws_the_same_samples_on_every_rank(ranks):
    assert torch.equal(ranks[0]["seedless_posterior"], ranks[1]["seedless_posterior"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(log: str) -> bool:
    """Whether a run failed because its port, free when `_free_port` chose it, was taken before the master bound it
    (another process on the machine): such a run is started again on another port."""
    return "EADDRINUSE" in log or "Address already in use" in log or "address already in use" in log


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    for _ in range(3):  # (a new port when the chosen one was taken meanwhile: `_port_taken`)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(Path(__file__).resolve()), str(out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        if done.returncode == 0 or not _port_taken(done.stdout + done.stderr):
            break
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_both_ranks_end_with_identical_parameters_and_history(ranks):
    a, b = ranks
    for key in ("params", "loader_params", "uneven_params", "vae_params"):
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key
    assert a["history"] == b["history"] and a["terms"] == b["terms"]
    assert torch.equal(a["vae_latent"], b["vae_latent"]) and a["vae_loss"] == b["vae_loss"]
    assert torch.equal(a["graph_posterior"], b["graph_posterior"]) and torch.equal(a["graph_latent"], b["graph_latent"])


def test_matches_a_single_process_run_with_the_global_batch(ranks):
    """3 epochs + a resumed 2 on 2 ranks of batch 8 == 5 epochs of batch 16 in one process.
    float64: the only differences are summation orders (~1e-16), amplified a little by Adam."""
    single = build()
    single.fit(data(), epochs=5, batch_size=16, seed=0)
    got = ranks[0]
    assert ranks[0]["initialised_by_fit"]
    history, reference = torch.tensor(got["history"]), torch.tensor(single.history.train)
    print(f"\nDDP vs one process: epoch losses differ by {((history - reference).abs() / reference).max():.3g} "
          f"(relative), parameters by {max((x - y).abs().max() for x, y in zip(got['params'], params(single))):.3g}")
    torch.testing.assert_close(history, reference, rtol=1e-9, atol=0)
    for key, values in single.history.terms.items():
        torch.testing.assert_close(torch.tensor(got["terms"][key]), torch.tensor(values), rtol=1e-9, atol=1e-12)
    for x, y in zip(got["params"], params(single)):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    assert single.history.train[-1] < 0.9 * single.history.train[0]  # and it learnt something


def test_the_guide_script_trains_and_resumes(ranks):
    for r in ranks:
        (epoch, train, _), (resumed_epoch, resumed_train, _) = r["guide"], r["guide_resumed"]
        assert epoch == resumed_epoch == 3 and resumed_train == train
        assert train[-1] < 0.8 * train[0]  # the digits VAE learns (42.9 -> 31.9 nats here)
    assert all(torch.equal(x, y) for x, y in zip(ranks[0]["guide"][2], ranks[1]["guide"][2]))


def test_checkpoints_come_from_rank_0_only(ranks):
    assert len(ranks[0]["saves"]) == 3 and ranks[1]["saves"] == []
    assert ranks[0]["checkpoint_epoch"] == ranks[1]["checkpoint_epoch"] == 3


def test_a_loader_with_a_distributed_sampler_shards_like_dict_data(ranks):
    for r in ranks:
        torch.testing.assert_close(torch.tensor(r["loader"]), torch.tensor(r["loader_dict"]), rtol=1e-12, atol=0)
        assert r["sampler_epoch"] == 2  # set_epoch was called every epoch


def test_uneven_loaders_join_with_zero_rows(ranks):
    """Rank 1 has 2 batches, rank 0 has 3: the third step is rank 0's rows alone, as in one process."""
    single = build()
    single.fit([{k: v[i:j] for k, v in data().items()} for i, j in [(0, 16), (16, 32), (32, 40)]], epochs=2, seed=2)
    for r in ranks:
        torch.testing.assert_close(torch.tensor(r["uneven"]), torch.tensor(single.history.train), rtol=1e-9, atol=0)
        for x, y in zip(r["uneven_params"], params(single)):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


def test_a_nan_on_one_rank_stops_every_rank(ranks):
    assert "the loss is inf at epoch 1, step 1 on rank 1" in ranks[1]["nan_error"]
    assert "is non-finite at epoch 1, step 1 on rank 0; the loss" in ranks[0]["nan_error"]
    assert "another rank's loss or gradient was not" in ranks[0]["nan_error"]
    assert ranks[0]["nan_unchanged"] and ranks[1]["nan_unchanged"]


def test_batch_norm_statistics_are_the_same_on_every_rank_and_one_row_shards_are_named(ranks):
    """DDP broadcasts rank 0's buffers at the start of each forward, so after the last step of a pass every rank
    held its own shard's update of the running statistics: validation, the early-stopping snapshot and the model fit
    returned differed between ranks (parameters were equal). And a last global batch that gives a rank one row
    failed inside torch's batch norm on that rank ("Expected more than 1 value per channel")."""
    a, b = ranks
    assert len(a["bn_buffers"]) == 3  # running mean, variance, batches tracked
    assert all(torch.equal(x, y) for x, y in zip(a["bn_buffers"], b["bn_buffers"]))
    assert not torch.equal(a["bn_buffers"][0], torch.zeros(16, dtype=torch.float64))  # they were updated
    for r in ranks:
        assert r["bn_error"] == (
            "fit(distributed): the model normalises batches in training (BatchNorm1d net.1 of q(z|x)), which needs "
            "at least 2 rows per rank in each step, but 22 rows in global batches of 5 x 2 ranks leave a rank 1 "
            "row(s) in the last step (2 rows over 2 ranks); choose batch_size or the number of rows so that the last "
            "global batch gives every rank at least 2, or pass drop_last=True (each epoch leaves its last, smaller "
            "global batch out; a DataLoader: drop_last=True and a DistributedSampler)")


def test_a_learned_loss_coefficient_is_averaged_like_the_distributions(ranks):
    """The optimizer's parameters beyond the distributions (a learned coefficient) were outside DDP: each rank stepped
    its own with its own shard's gradient (rank 0 s -1.25, rank 1 s -0.70, one process -0.98). Now the same on both
    ranks, and the run of one process with the global batch (16 rows) to float64 rounding."""
    a, b = ranks[0]["coefficient"], ranks[1]["coefficient"]
    assert len(a) == 2 and all(torch.equal(x, y) for x, y in zip(a, b))
    single = coefficient_model()
    single.fit(coefficient_data(), epochs=2, batch_size=16, seed=0)
    for x, y in zip(a, single._trained_parameters()):
        torch.testing.assert_close(x, y.detach(), rtol=1e-9, atol=1e-12)
    assert abs(a[1].item() - 1.0) > 0.1  # the coefficient moved


def test_different_data_on_the_ranks_is_a_clear_error(ranks):
    for r in ranks:
        assert "the number of rows of data (-1: a loader) differs between ranks (from 50 to 51" in r["mismatch_error"]


def test_the_vae_module_trains_like_one_process(ranks):
    """The module samples z from torch's global generator: each rank draws a stream of its own for its
    rows (derived every epoch from the common one and the rank, since stop 45), the single process one
    stream for all rows, so the runs agree to Monte-Carlo precision only. Over seeds 3..12 the
    loss_history of the two runs differed by at most 1.1% (mean 0.65%); 3% leaves about 3x that."""
    from kizuna.modules import VAE, Observation

    torch.manual_seed(3)
    vae = VAE(2, hidden=(16,), epochs=4, batch_size=32, lr=3e-3).connect(Observation(data()["x"].float()))
    for _ in range(2):
        vae.update()
    got, reference = torch.tensor(ranks[0]["vae_loss"]), torch.tensor(vae.loss_history)
    print(f"\nVAE module, 2 ranks vs one process: loss_history differs by {((got / reference) - 1).abs().max():.3g}")
    torch.testing.assert_close(got, reference, rtol=0.03, atol=0)
    assert ranks[0]["vae_loss"][1] < 0.97 * ranks[0]["vae_loss"][0]  # it learns (8.22 -> 7.71 here)


def test_shards_are_distributed_sampler_index_sets():
    """Each rank's rows of each global batch: DistributedSampler(shuffle=False)'s interleaving,
    and together the global batch of a single process (same shuffle)."""
    x = torch.arange(40.0).unsqueeze(1)
    batches = Batches({"x": x}, "data", ["x"], 4)
    cpu, f32 = torch.device("cpu"), torch.float32
    for r in range(2):
        rows = torch.cat([b.values["x"][:, 0] for b in batches.iterate(None, f32, cpu, (r, 2))])
        assert rows.long().tolist() == list(DistributedSampler(range(40), 2, r, shuffle=False))
    single = [b.values["x"] for b in batches.iterate(torch.Generator().manual_seed(5), f32, cpu)]
    shards = [list(Batches({"x": x}, "data", ["x"], 2).iterate(torch.Generator().manual_seed(5), f32, cpu, (r, 2)))
              for r in range(2)]
    for k, whole in enumerate(single):
        together = torch.cat([shards[0][k].values["x"], shards[1][k].values["x"]])
        assert sorted(together[:, 0].tolist()) == sorted(whole[:, 0].tolist())


def test_distributed_true_without_torchrun_is_a_clear_error(monkeypatch):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="launch the script with `torchrun --nproc_per_node N"):
        build().fit(data(), epochs=1, distributed=True)
    assert not ddp.resolve(None) and not ddp.resolve(False)


class Generator(Deterministic):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"])
        self.net = nn.Linear(2, 3)

    def forward(self, z):
        return {"x": self.net(z)}


class Discriminator(Bernoulli):
    def __init__(self):
        super().__init__(var=["t"], cond_var=["x"], name="d")
        self.net = nn.Linear(3, 1)

    def forward(self, x):
        return {"logits": self.net(x)}


def test_one_rank_group(tmp_path, monkeypatch):
    """A world of one: auto mode stays off, distributed=True runs the synchronised path and agrees
    with the plain run (the gradient is scaled by its rows and back: rounding only)."""
    from kizuna.models import GAN

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert not ddp.resolve(None) and ddp.resolve(True)
        plain, synced = build(), build()
        plain.fit(data(), epochs=2, batch_size=16, seed=0)
        synced.fit(data(), epochs=2, batch_size=16, seed=0, distributed=True)
        torch.testing.assert_close(torch.tensor(synced.history.train), torch.tensor(plain.history.train),
                                   rtol=1e-12, atol=0)
        mixed = []  # float64 and float32 parameters (two buffers) and one the loss never uses (no gradient)
        g = torch.Generator().manual_seed(0)
        batch = {"x": torch.randn(30, 2, dtype=torch.float64, generator=g) + 1,
                 "y": torch.randn(30, 2, generator=g) - 1}
        for distributed in (False, True):
            p, r, unused = (Normal(var=[v], loc=nn.Parameter(torch.zeros(2, dtype=dt)), scale=1.0, name=v)
                            for v, dt in (("x", torch.float64), ("y", torch.float32), ("u", torch.float32)))
            model = Model(-LogProb(p).mean() - LogProb(r).mean(), distributions=[p, r, unused],
                          optimizer=torch.optim.SGD, optimizer_params={"lr": 0.3})
            model.fit(batch, epochs=3, batch_size=8, seed=0, distributed=distributed)
            mixed.append([p.loc.detach().clone(), r.loc.detach().clone(), unused.loc.detach().clone()])
        for x, y in zip(*mixed):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
        assert torch.equal(mixed[1][2], torch.zeros(2)) and mixed[1][1].dtype == torch.float32
        torch.testing.assert_close(mixed[1][0], batch["x"].mean(0), atol=0.2, rtol=0)  # SGD went to the means
        # a GAN (its own step: discriminator steps, then the generator's) trains data-parallel too
        histories = []
        for distributed in (False, True):
            torch.manual_seed(0)
            gan = GAN((Generator() * Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior"))
                      .marginalize_var("z"), Discriminator(), optimizer_params={"lr": 1e-2})
            histories.append(gan.fit({"x": torch.randn(24, 3) + 2}, epochs=2, batch_size=8, seed=0,
                                     distributed=distributed))
        assert histories[1]["d_loss"] == pytest.approx(histories[0]["d_loss"], rel=1e-5)
        assert histories[1]["train"] == pytest.approx(histories[0]["train"], rel=1e-5)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
