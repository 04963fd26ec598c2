"""Reliability of the formula layer and the trainer (issue 12): nothing lost, nothing silent, seeds
that reproduce, bad data caught at the data. Each check names what it guards in its docstring."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kizuna import _io
from kizuna.distributions import Bernoulli, Normal
from kizuna.losses import IWAE, Expectation, KullbackLeibler, LogProb
from kizuna.metrics import clustering_accuracy, log_likelihood
from kizuna.models import Model

ROOT = Path(__file__).resolve().parents[1]


class Encoder(Normal):
    def __init__(self, d: int = 6, z: int = 2, width: int = 16) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, 2 * z))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}


class Decoder(Bernoulli):
    def __init__(self, d: int = 6, z: int = 2) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Linear(z, d)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(z)}


def vae(width: int = 16) -> tuple[Model, Encoder, Decoder, Normal]:
    q, p = Encoder(width=width), Decoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    return Model((KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean(), distributions=[p, q]), q, p, prior


def data(n: int = 40) -> dict[str, torch.Tensor]:
    return {"x": (torch.rand(n, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()}


# ------------------------------------------------------------------------------ nothing lost
def _save_forever(path: str, width: int) -> None:  # runs in a forked child until killed
    torch.manual_seed(0)
    model, *_ = vae(width)
    for i in range(10**9):
        with torch.no_grad():
            for p in model.distributions.parameters():
                p.fill_(float(i % 2))  # every save is all zeros or all ones: a mix of two would show
        model.save(path)


def test_a_kill_during_save_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    """20 SIGKILLs at random moments of a save loop: the file always loads (checksum verified) and holds
    one complete save, never a mix of two."""
    import multiprocessing as mp

    path = tmp_path / "run.pt"
    ctx = mp.get_context("fork")
    rng = random.Random(0)
    for _ in range(20):
        child = ctx.Process(target=_save_forever, args=(str(path), 256))
        child.start()
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:  # the first complete save
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # then a kill at any moment of the following saves
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        model, *_ = vae(256)
        model.load(path)  # never raises: the file is a complete save
        values = torch.cat([p.flatten() for p in model.distributions.parameters()]).unique()
        assert len(values) == 1 and values.item() in (0.0, 1.0)
    model.save(path)
    assert not list(tmp_path.glob(".run.pt.*.tmp"))  # stale temporary files are cleaned up by the next save


def test_a_flipped_byte_or_a_truncated_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    model, *_ = vae()
    path = tmp_path / "c.pt"
    model.save(path)
    data_ = bytearray(path.read_bytes())
    data_[len(data_) // 2] ^= 0x01
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(data_))
    with pytest.raises(ValueError, match=r"flipped\.pt is damaged: its contents do not match their checksum"):
        vae()[0].load(flipped)
    short = tmp_path / "short.pt"
    short.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"short\.pt is damaged"):
        vae()[0].load(short)


class _Boom:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch HACKED",))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint carrying a pickled callable (with a valid checksum, so only weights_only stops it)."""
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    buffer = io.BytesIO()  # (written by hand: _io.encode refuses what a safe load would)
    torch.save({"format": "kizuna.checkpoint", "version": 1, "payload": _Boom()}, buffer)
    payload = buffer.getvalue()
    evil.write_bytes(_io.MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    with pytest.raises(ValueError, match=r"evil\.pt cannot be read safely .*nothing in it was run"):
        vae()[0].load(evil)
    assert not (tmp_path / "HACKED").exists()


def test_a_checkpoint_folder_that_cannot_be_made_is_refused_before_training(tmp_path: Path) -> None:
    """A missing folder is created, as Model.save does; one that cannot be (a file in its way) is an error before the
    first step, the parameters untouched."""
    model, q, *_ = vae()
    before = [p.detach().clone() for p in model.distributions.parameters()]
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(FileNotFoundError, match="folder .*a_file.*cannot be created"):
        model.fit(data(), epochs=1, checkpoint=tmp_path / "a_file" / "run.pt", quiet=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.distributions.parameters()))
    model.fit(data(), epochs=1, checkpoint=tmp_path / "runs" / "vae" / "run.pt", quiet=True)
    assert (tmp_path / "runs" / "vae" / "run.pt").is_file()


# --------------------------------------------------------------------------- seeds reproduce
RUN = textwrap.dedent("""
    import sys, torch, numpy
    sys.path.insert(0, {tests!r})
    from test_reliability import vae, data
    torch.manual_seed(int(sys.argv[1]))           # a different global state in each process
    torch.rand(int(sys.argv[1]) + 1)
    model, *_ = vae()                              # the networks are built from the global generator...
    torch.manual_seed(5)                           # ...so fix them; then disturb the global stream again
    model, *_ = vae()
    torch.rand(int(sys.argv[1]) + 3)
    state = torch.get_rng_state()
    model.fit(data(), epochs=3, batch_size=8, seed=0, quiet=True)
    assert torch.equal(state, torch.get_rng_state()), "fit touched torch's global generator"
    values = torch.cat([p.detach().flatten() for p in model.distributions.parameters()])
    print(repr(values.double().tolist()), repr(model.history.train))
""")


def test_fit_with_a_seed_is_bitwise_the_same_in_two_fresh_processes() -> None:
    """Two fresh interpreters with different global RNG states: the same parameters and history, bit for
    bit, and torch's global generator untouched by fit."""
    script = RUN.format(tests=str(ROOT / "tests"))
    outs = [subprocess.run([sys.executable, "-c", script, str(seed)], capture_output=True, text=True, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout for seed in (1, 2)]
    assert outs[0] == outs[1] and outs[0].strip()


# ------------------------------------------------------------------------- bad data, clear errors
def test_nan_in_the_data_names_the_variable_row_and_column() -> None:
    model, *_ = vae()
    x = data()["x"].clone()
    x[7, 3] = float("nan")
    with pytest.raises(FloatingPointError, match=r"the data\['x'\] holds nan at row 7, column 3"):
        model.train({"x": x})
    with pytest.raises(ValueError, match=r"data\['x'\] holds nan at row 7, column 3"):
        model.fit({"x": x}, epochs=1, quiet=True)
    q, p = Encoder(), Decoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    x[7, 3], x[12, 1] = 0.0, float("inf")
    with pytest.raises(ValueError, match=r"log_likelihood: the data\['x'\] holds inf at row 12, column 1"):
        log_likelihood(p * prior, q, {"x": x}, k=4, batch_size=5)


def test_a_0d_nan_in_the_data_names_the_variable() -> None:
    """A 0-d tensor in the data (a weight such as ``beta``) has no row: a NaN there is named by its variable, not an
    IndexError from looking for its row (as `Model.train` / `fit` and `check_finite` raised)."""
    from kizuna._data import first_nonfinite
    from kizuna.losses import Parameter
    from kizuna.modules.validation import check_finite

    nan = torch.tensor(float("nan"))
    assert first_nonfinite({"x": torch.zeros(3), "beta": nan}, "the data") == \
        "the data['beta'] holds nan (a 0-d tensor, its only value)"
    assert first_nonfinite({"s": torch.tensor(float("-inf"))}, "the data", torch.arange(3)) == \
        "the data['s'] holds -inf (a 0-d tensor, its only value)"
    assert first_nonfinite({"s": torch.tensor(1.0)}, "the data") is None
    with pytest.raises(ValueError, match=r"Owner: data contains NaN as its only value \(a 0-d tensor\)"):
        check_finite(nan, "data", "Owner")
    with pytest.raises(ValueError, match=r"Owner: data contains -inf at row 1 \("):
        check_finite(torch.tensor([0.0, float("-inf")]), "data", "Owner")
    with pytest.raises(ValueError, match=r"Owner: data contains inf at index \[1, 2, 3\]"):
        check_finite(torch.zeros(2, 3, 4).index_put_((torch.tensor(1), torch.tensor(2), torch.tensor(3)),
                                                     torch.tensor(float("inf"))), "data", "Owner")
    p = Decoder()
    model = Model((-LogProb(p) * Parameter("beta")).mean(), distributions=[p], optimizer=torch.optim.SGD,
                  optimizer_params={"lr": 0.1})
    x = data(8)["x"]
    with pytest.raises(FloatingPointError, match=r"the data\['beta'\] holds nan \(a 0-d tensor"):
        model.train({"x": x, "z": torch.zeros(8, 2), "beta": nan})
    with pytest.raises(ValueError, match=r"data\['beta'\] holds nan \(a 0-d tensor"):
        model.fit({"x": x, "z": torch.zeros(8, 2), "beta": nan}, epochs=1, batch_size=4, quiet=True)


def test_a_loader_batch_with_nan_names_the_epoch_and_step() -> None:
    model, *_ = vae()
    good = data(8)["x"]
    bad = good.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"at epoch 1, step 2; the data\['x'\] holds nan at row 2, column 0"):
        model.fit([{"x": good}, {"x": bad}], epochs=1, quiet=True)


def test_numpy_float64_and_integer_data_are_converted() -> None:
    model, *_ = vae()
    x = data()["x"]
    torch.manual_seed(0)
    reference = model.test({"x": x}).item()
    for given in (x.numpy().astype(np.float64), x.double(), x.numpy().astype(np.float32)):
        torch.manual_seed(0)
        assert model.test({"x": given}).item() == pytest.approx(reference, rel=1e-6)
    model.fit({"x": x.numpy().astype(np.float64)}, epochs=1, batch_size=8, quiet=True)
    # integers stay integers (they may be indices); a network that needs floats says so, naming the variable
    for given in (x.long(), x.numpy().astype(np.int32)):
        with pytest.raises(ValueError, match=r"q\(z\|x\): x is torch.int(64|32), but its network takes torch.float32"):
            model.test({"x": given})
    # a density scores integer values in its parameters' dtype: 0/1 counts for a Bernoulli
    p = Bernoulli(var=["x"], probs=torch.full((6,), 0.3))
    assert torch.equal(p.get_log_prob({"x": x.long()}), p.get_log_prob({"x": x}))


def test_arguments_out_of_range_are_value_errors_naming_them() -> None:
    model, q, p, prior = vae()
    x = data()
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        model.fit(x, batch_size=0)
    with pytest.raises(ValueError, match=r"IWAE needs an integer k >= 1 .*got k=0"):
        IWAE(p * prior, q, k=0)
    with pytest.raises(ValueError, match="log_likelihood: k_chunk must be an integer >= 1, got -1"):
        log_likelihood(p * prior, q, x, k=4, k_chunk=-1)
    with pytest.raises(ValueError, match="batch_n must be an integer >= 0, got -2"):
        prior.sample(batch_n=-2)
    with pytest.raises(ValueError, match=r"sample_shape must hold positive sizes, got \(0,\)"):
        prior.sample(sample_shape=(0,))
    with pytest.raises(ValueError, match=r"x_dict\['x'\] has no rows"):
        model.train({"x": x["x"][:0]})
    with pytest.raises(ValueError, match=r"fit: the variables of data must share their first \(batch\) dimension"):
        model.fit({"x": x["x"], "y": x["x"][:3]}, epochs=1)
    # an object array (a None among the numbers) gave torch's "can't convert np.ndarray of type numpy.object_"
    objects = x["x"].numpy().astype(object)
    objects[2, 1] = None
    with pytest.raises(TypeError, match=r"fit: data\['x'\] is a numpy array of Python objects; give numbers"):
        model.fit({"x": objects}, epochs=1, quiet=True)
    # a list of rows reached the networks whole ("linear(): argument 'input' must be Tensor, not list")
    with pytest.raises(TypeError, match=r"fit: data\['x'\] is a list of numbers; give a tensor or a numpy array"):
        model.fit({"x": x["x"].tolist()}, epochs=1, quiet=True)
    with pytest.raises(TypeError, match=r"x_dict\['x'\] is a list of numbers; give a tensor or a numpy array"):
        model.train({"x": x["x"].tolist()})
    # lists of strings (tokens) and of tensors still reach the distributions as given
    from kizuna.models.batches import prepare
    tokens = [["a", "b"], ["c"]]
    assert prepare({"tokens": tokens}, torch.float32, torch.device("cpu"))["tokens"] is tokens
    # numpy integers were refused as "must be an integer >= 1, got np.int64(8)"
    model.fit({"x": x["x"]}, epochs=np.int64(1), batch_size=np.int32(8), quiet=True)


def test_a_feature_width_the_network_does_not_take_names_the_distribution() -> None:
    model, *_ = vae()
    with pytest.raises(ValueError, match=r"q\(z\|x\): forward\(\) failed on x of shape \(40, 5\)"):
        model.train({"x": torch.zeros(40, 5)})


def test_a_kl_between_different_feature_shapes_names_both() -> None:
    a = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_a")
    b = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[3], name="p_b")
    with pytest.raises(ValueError, match=r"p_\{a\}\(z\) has features_shape \(2,\) but p_\{b\}\(z\) has \(3,\)"):
        KullbackLeibler(a, b)


def test_error_messages_never_dump_a_whole_tensor() -> None:
    big = torch.full((1000,), -1.0)
    with pytest.raises(ValueError) as err:
        Normal(var=["x"], loc=torch.zeros(1000), scale=big)
    assert len(str(err.value)) < 300 and "-1., -1." not in str(err.value)


# ---------------------------------------------------------------------- the NaN guard, nothing silent
class Exploding(Normal):
    """q(z|x) whose network emits nan from its second call on (as a diverging network would)."""

    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Linear(6, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        loc, s = self.net(x).chunk(2, -1)
        if self.calls >= 3:
            loc = loc * float("nan")
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}


@pytest.mark.parametrize("validate", [None, True])
def test_a_network_emitting_nan_mid_training_is_a_floating_point_error(validate: bool | None) -> None:
    q, p = Exploding(), Decoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    model = Model((KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean(), validate=validate)
    with pytest.raises(FloatingPointError, match=r"fit: .* at epoch 1, step 3"):
        model.fit(data(24), epochs=1, batch_size=8, shuffle=False, quiet=True)


def test_nothing_silent() -> None:
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    assert prior.sample(batch_n=0)["z"].shape == (0, 2)
    with pytest.raises(ValueError, match="labels_true has a missing label"):
        clustering_accuracy(np.array([0.0, np.nan, 1.0]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="constant parameter loc of Normal must be finite"):
        Normal(var=["x"], loc=float("inf"), scale=1.0)


def dead_pid() -> int:
    """A process id that no process has, checked: above the largest Linux ``pid_max`` (2**22) and macOS's 99,998. (A
    process started and waited for gave a pid that a busy machine could give to a new process before the check.)"""
    pid = 2**22 + 1
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def test_a_save_removes_dead_writers_temporary_files_but_not_a_live_ones(tmp_path: Path) -> None:
    """Two processes saving to one path each write their own temporary file: a save removes what an interrupted
    writer of this host left (its process gone) and never a running writer's file (it removed every one, so the
    other writer's rename failed with FileNotFoundError)."""
    import socket

    from kizuna import _io

    path = tmp_path / "run.pt"
    host = socket.gethostname()
    dead = tmp_path / f".run.pt.{host}.{dead_pid()}.tmp"  # a process that has exited
    alive = tmp_path / f".run.pt.{host}.{os.getppid()}.tmp"  # a running process (this test's parent)
    elsewhere = tmp_path / ".run.pt.another-host.1.tmp"  # another host's writer: unknown, recent: kept
    for f in (dead, alive, elsewhere):
        f.write_bytes(b"partial")
    _io.save({"x": torch.zeros(1)}, path)
    assert not dead.exists() and alive.exists() and elsewhere.exists()
    old = time.time() - _io.STALE_SECONDS - 10
    os.utime(elsewhere, (old, old))
    _io.save({"x": torch.zeros(1)}, path)
    assert not elsewhere.exists() and alive.exists()


def test_threads_saving_to_one_path_all_succeed_and_a_reader_sees_only_whole_files(tmp_path: Path) -> None:
    """Threads of one process each write their own temporary file (the name carries the thread and a random token):
    every save succeeds and a reader only ever sees a complete file. With one temporary file per process, 58 of 120
    saves raised FileNotFoundError and a reader saw a file still being written."""
    import threading

    path = tmp_path / "race.pt"
    _io.save({"k": torch.zeros(1)}, path)
    errors: list[str] = []
    damaged: list[str] = []
    done = threading.Event()

    def writer(k: int) -> None:
        for _ in range(25):
            try:
                _io.save({"k": torch.full((50000,), float(k))}, path)
            except Exception as err:  # noqa: BLE001 - any failure is the defect
                errors.append(f"{type(err).__name__}: {err}")

    def reader() -> None:
        while not done.is_set():
            try:
                k = _io.load(path)["k"]
                if len(k) > 1 and len(k.unique()) != 1:
                    damaged.append("a mix of two saves")
            except ValueError as err:
                damaged.append(str(err))

    writers = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    watcher.join()
    assert errors == [] and damaged == []
    assert len(_io.load(path)["k"]) == 50000
    assert not list(tmp_path.glob(".race.pt.*.tmp"))


def test_a_save_keeps_a_live_threads_temporary_file_and_removes_a_finished_threads(tmp_path: Path) -> None:
    """Temporary names differ between threads and between saves of one thread; a save removes the temporary file a
    finished thread of this process left, never that of a thread of this process still running."""
    import threading

    path = tmp_path / "run.pt"
    names: dict[str, Path] = {}
    release, written = threading.Event(), threading.Event()

    def name_and_wait(key: str, wait: bool) -> None:
        names[key] = _io.temporary_name(path)
        names[key].write_bytes(b"partial")
        if wait:
            written.set()
            release.wait(30)

    live = threading.Thread(target=name_and_wait, args=("live", True))
    finished = threading.Thread(target=name_and_wait, args=("finished", False))
    live.start()
    finished.start()
    finished.join()
    assert written.wait(30)  # the live thread has written its file (on a loaded machine it had not yet: KeyError)
    try:
        assert names["live"] != names["finished"] != _io.temporary_name(path) != _io.temporary_name(path)
        _io.save({"x": torch.zeros(1)}, path)
        assert names["live"].exists() and not names["finished"].exists()
    finally:
        release.set()
        live.join()
    _io.save({"x": torch.zeros(1)}, path)
    assert not names["live"].exists()  # its thread has ended
    assert _io.load(path)["x"].shape == (1,)


def test_the_longest_name_the_file_system_accepts_can_be_saved(tmp_path: Path) -> None:
    """The temporary name keeps at most `_io.NAME_KEEP` bytes of the target's name (its start and a hash of all of
    it), so a 254- or 255-byte name saves; two long names that differ only at the end keep apart, and a dead writer's
    temporary file of a long name is still removed. Before, a 254-character name raised ENAMETOOLONG."""

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    for name in ("a" * (limit - 4) + ".pt", "a" * (limit - 3) + ".pt", "é" * ((limit - 3) // 2) + ".pt"):
        assert len(name.encode()) <= limit
        _io.save({"n": len(name)}, tmp_path / name)
        assert _io.load(tmp_path / name) == {"n": len(name)}
        assert len(_io.temporary_name(tmp_path / name).name.encode()) <= limit
    one, two = tmp_path / ("b" * 240 + "1.pt"), tmp_path / ("b" * 240 + "2.pt")
    assert _io._prefix(one) != _io._prefix(two)
    dead = one.with_name(f"{_io._prefix(one)}{_io._host()}.{dead_pid()}-1-0123abcd.tmp")
    other = two.with_name(f"{_io._prefix(two)}{_io._host()}.{dead_pid()}-1-0123abcd.tmp")
    dead.write_bytes(b"partial")
    other.write_bytes(b"partial")
    _io.save({"x": 1}, one)
    assert not dead.exists() and other.exists()  # only the temporary files of the path saved to


def test_another_hosts_temporary_file_of_another_target_is_never_read_as_this_hosts(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """Host ``lab`` is saving ``a.n01``: its temporary file is ``.a.n01.<host lab>.<pid>-...``. Host ``n01.lab``
    saving ``a`` (prefix ``.a.``) read the rest, ``n01.lab.<pid>...``, as its own name and pid, found no such process
    and removed the live file; the host field is now a fixed-form hash, which no such rest can match."""
    import socket
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    monkeypatch.setattr(socket, "gethostname", lambda: "lab")
    theirs = _io.temporary_name(tmp_path / "a.n01")
    theirs = theirs.with_name(re.sub(r"\.\d+-", f".{done.stdout.strip()}-", theirs.name))  # a pid absent here
    theirs.write_bytes(b"partial")
    monkeypatch.setattr(socket, "gethostname", lambda: "n01.lab")
    _io.save({"x": 1}, tmp_path / "a")
    assert theirs.exists()


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="symbolic links")
def test_a_save_through_a_symbolic_link_keeps_the_link_and_updates_its_target(tmp_path: Path) -> None:
    """A save to a symbolic link replaces the file it points to (through a chain of links, relative to the link's
    folder) and the link stays a link; before, the link was replaced by a regular file and its target left stale. A
    dangling link is written through when its target's folder exists, else refused with the link untouched; a loop of
    links is refused."""
    store, links = tmp_path / "store", tmp_path / "links"
    store.mkdir()
    links.mkdir()
    _io.save({"v": 1}, store / "real.pt")
    (links / "mid.pt").symlink_to(Path("..") / "store" / "real.pt")
    (links / "link.pt").symlink_to("mid.pt")
    _io.save({"v": 2}, links / "link.pt")
    assert (links / "link.pt").is_symlink() and (links / "mid.pt").is_symlink()
    assert _io.load(store / "real.pt") == {"v": 2} and _io.load(links / "link.pt") == {"v": 2}
    assert sorted(p.name for p in store.iterdir()) == ["real.pt"]  # no temporary file left, in either folder
    assert sorted(p.name for p in links.iterdir()) == ["link.pt", "mid.pt"]

    (links / "dangling.pt").symlink_to(Path("..") / "store" / "new.pt")
    _io.save({"v": 3}, links / "dangling.pt")
    assert (links / "dangling.pt").is_symlink() and _io.load(store / "new.pt") == {"v": 3}

    (links / "nowhere.pt").symlink_to(tmp_path / "missing" / "x.pt")
    with pytest.raises(FileNotFoundError, match="symbolic link to .*missing"):
        _io.save({"v": 4}, links / "nowhere.pt")
    assert (links / "nowhere.pt").is_symlink() and not (tmp_path / "missing").exists()

    (links / "a.pt").symlink_to("b.pt")
    (links / "b.pt").symlink_to("a.pt")
    with pytest.raises(OSError, match="loop"):
        _io.save({"v": 5}, links / "a.pt")
    assert (links / "a.pt").is_symlink() and (links / "b.pt").is_symlink()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_a_save_over_a_file_keeps_its_permission_bits(tmp_path: Path) -> None:
    """A 0600 (private) file stays 0600 after a save over it, and a 0640 one 0640; before, the replacement had the
    umask's default (0644). A new file still gets the umask's default."""
    old_umask = os.umask(0o022)
    try:
        for mode in (0o600, 0o640):
            path = tmp_path / f"private{mode:o}.pt"
            _io.save({"v": 1}, path)
            path.chmod(mode)
            _io.save({"v": 2}, path)
            assert path.stat().st_mode & 0o7777 == mode and _io.load(path) == {"v": 2}
        fresh = tmp_path / "fresh.pt"
        _io.save({"v": 1}, fresh)
        assert fresh.stat().st_mode & 0o7777 == 0o644
        special = tmp_path / "setgid.pt"  # the permission bits are kept, not setuid / setgid / sticky
        _io.save({"v": 1}, special)
        special.chmod(0o2750)
        _io.save({"v": 2}, special)
        assert special.stat().st_mode & 0o7777 == 0o750
    finally:
        os.umask(old_umask)


def test_nan_in_numpy_data_or_a_list_is_named_like_nan_in_a_tensor() -> None:
    """`first_nonfinite` names a non-finite entry of a floating numpy array (any float type, either byte order) or a
    nested list of numbers as it names one of a tensor; it skipped them, so log_likelihood given batches of numpy
    arrays with an inf failed inside a network (TypeError from linear) instead of naming the entry."""
    from kizuna._data import first_nonfinite

    x = np.zeros((4, 3))
    x[2, 1] = np.nan
    for value in (x, x.astype(np.float32), x.astype(">f8"), x.astype(np.longdouble), x.tolist(),
                  tuple(map(tuple, x.tolist()))):
        assert first_nonfinite({"n": np.arange(3), "x": value}, "the data") == \
            "the data['x'] holds nan at row 2, column 1", type(value)
    assert first_nonfinite({"x": x}, "the data", torch.arange(10, 14)) == "the data['x'] holds nan at row 12, column 1"
    assert first_nonfinite({"x": np.array(-np.inf)}, "d") == "d['x'] holds -inf (a 0-d tensor, its only value)"
    assert first_nonfinite({"x": np.zeros(3), "i": np.arange(3), "s": ["a", "b"], "r": [[1.0], [1.0, 2.0]],
                            "e": np.zeros((0, 2)), "t": [torch.zeros(2)]}, "d") is None

    q, p = Encoder(), Decoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    batch = data()["x"][:5].numpy().copy()
    batch[3, 4] = np.inf
    with pytest.raises(ValueError, match=r"log_likelihood: the data\['x'\] holds inf at row 3, column 4"):
        log_likelihood(p * prior, q, [{"x": batch}], k=4)


class _BNEncoder(Normal):
    """q(z|x) through Linear -> BatchNorm -> Dropout -> Linear: running statistics and a train / eval switch."""

    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}


class _LinearDecoder(Normal):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Linear(2, 4)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.net(z), "scale": torch.ones(1)}


def _bn_model() -> Model:
    torch.manual_seed(0)
    q, p = _BNEncoder(), _LinearDecoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    return Model((KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean(), distributions=[p, q],
                 optimizer_params={"lr": 1e-2})


def test_a_non_finite_step_leaves_running_statistics_and_the_mode_as_they_were() -> None:
    """A NaN in a batch: the step raises and the batch-norm statistics are those before it, like the parameters
    (they were NaN for good, and every later test() NaN); a network switched to eval() by the user between steps
    trains in training mode again at the next step (the Model's cached mode kept it in eval mode)."""
    model = _bn_model()
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    model.train({"x": x})
    bn = model.distributions[1].net[1]
    before = {k: v.clone() for k, v in model.distributions.state_dict().items()}
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(FloatingPointError):
        model.train({"x": bad})
    after = model.distributions.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert torch.isfinite(bn.running_mean).all() and np.isfinite(model.test({"x": x}).item())
    model.distributions[1].eval()  # e.g. to sample between epochs
    model.train({"x": x})
    assert model.distributions[1].training and bn.training


def test_a_checkpoint_that_does_not_fit_the_optimiser_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    """The same parameter names but another optimiser layout: loading fails with an error naming the file, and
    the model keeps its own weights (they had been overwritten before the optimiser's state was refused)."""
    saved = _bn_model()
    saved.train({"x": torch.randn(8, 4)})
    path = tmp_path / "run.pt"
    saved.save(path)
    torch.manual_seed(5)
    q, p = _BNEncoder(), _LinearDecoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    other = Model((KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean(), distributions=[p, q])
    # another optimiser layout (a frozen parameter no longer changes it: the optimiser holds every parameter)
    other.optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    own = {k: v.clone() for k, v in other.distributions.state_dict().items()}
    with pytest.raises(ValueError, match="run.pt does not fit this model's optimiser"):
        other.load(path)
    assert all(torch.equal(own[k], v) for k, v in other.distributions.state_dict().items())


def test_a_non_finite_test_loss_does_not_speak_of_a_step() -> None:
    model = _bn_model()
    x = torch.randn(8, 4)
    model.train({"x": x})
    bad = x.clone()
    bad[2, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"the data\['x'\] holds inf at row 2, column 0; the parameters are "
                                                 r"unchanged$"):
        model.test({"x": bad})


def test_checks_take_a_tensor_or_array_of_one_number_and_lists_with_empty_rows_are_named() -> None:
    """The number checks added to the Markov chain, LDA, the simulated house and the MLP distributions refused a
    0-d tensor or array that had worked before (``MarkovChain(alpha=torch.tensor(1.))``); a list of rows starting with
    an empty one reached the networks as a list; a big-endian array gave torch's raw error when saved."""
    from kizuna import _io
    from kizuna.datasets import simulated_house
    from kizuna.distributions import MLPNormal
    from kizuna.models.batches import prepare
    from kizuna.modules.mm.estimator import MarkovChain

    MarkovChain(alpha=torch.tensor(1.0), n_iter=0).fit(np.eye(2)[[0, 1, 1]])
    MarkovChain(alpha=np.array(1.0), n_iter=0).fit(np.eye(2)[[0, 1, 1]])
    assert simulated_house(n_events=5, phoneme_error_rate=torch.tensor(0.1), seed=0)["position"].shape[0] == 5
    for sizes in (torch.tensor([4, 8, 2]), (s for s in [4, 8, 2]), np.array([4, 8, 2])):
        assert MLPNormal("z", "x", sizes).net[0].in_features == 4
    with pytest.raises(TypeError, match=r"x_dict\['x'\] is a list of numbers"):
        prepare({"x": [[], [1.0]]}, torch.float32, torch.device("cpu"))
    assert torch.equal(_io._plain(np.arange(3, dtype=">f8"))[0], torch.arange(3, dtype=torch.float64))


def test_a_count_given_as_a_numpy_array_or_a_one_element_vector_is_still_refused_by_name() -> None:
    """The number checks take a 0-d tensor (torch functions take it too) and, for real numbers, a 0-d array; a count
    as a numpy array, or any shape (1,) value, went through them once and failed later in torch or numpy."""
    from kizuna.distributions import DiffusionSchedule
    from kizuna.nets import MADE

    with pytest.raises(ValueError, match=r"T must be an integer >= 1, got array\(10\)"):
        DiffusionSchedule.linear(T=np.array(10))
    with pytest.raises(ValueError, match=r"in_features must be an integer >= 1, got array\(\[3\]\)"):
        MADE(np.array([3]), [8])
    assert DiffusionSchedule.linear(T=torch.tensor(10)).T == 10
