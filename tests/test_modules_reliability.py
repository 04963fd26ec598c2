"""Reliability of the module layer (issue 12): saves survive kills and refuse damaged files, seeds
reproduce across processes, bad data is named where it enters.

* **Kills.** A child process saves a graph in a loop and is killed (SIGKILL) at random moments, 24 times;
  after each kill the directory loads, and the loaded graph is one complete save (every module carries
  the same save number), never a mix of two.
* **Damage.** A flipped byte anywhere in a module file or the manifest, a truncated file or manifest, a
  missing file, a file from another save, and a pickle that would run code are each a `CorruptSaveError`
  naming the file; the code does not run, and a failed load leaves the graph as it was.
* **Seeds.** The same seeded `Graph.fit` in two fresh processes whose global generators differ gives
  bitwise the same states, and leaves the global generator as it was (`test_modules_protocol` checks
  every module class in one process; `test_docs_seeded_snippets_reproduce` runs the docs' snippets).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_reliability import dead_pid

from kizuna import modules as km
from kizuna.modules.persistence import MAGIC, CorruptSaveError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_graph(n: int = 20000) -> tuple[km.Graph, km.GMM]:
    """An observation, a GMM and a parent: three module files, the GMM's holding an n×4 posterior."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    gmm = km.GMM(4, algorithm="em", max_iter=2, name="gmm").connect(km.Observation(x, name="x"))
    top = km.MM(name="top").connect(gmm)
    return km.Graph([top]), gmm


def mark(graph: km.Graph, k: int) -> None:
    """Make save number ``k`` recognisable in every module's state."""
    for m in graph.modules:
        m.n_updates = k
    graph["gmm"].posterior = torch.full((graph["gmm"].children[0].data.shape[0], 4), float(k))


def _save_forever(directory: str, first: int) -> None:
    torch.set_num_threads(1)
    graph, _ = small_graph()
    for k in range(first, first + 10**6):
        mark(graph, k)
        graph.save(directory)


def test_a_kill_at_any_moment_leaves_the_previous_complete_save(tmp_path):
    directory = tmp_path / "saves"
    graph, _ = small_graph()
    mark(graph, -1)
    graph.save(directory)  # a complete save exists before the first kill
    ctx = multiprocessing.get_context("fork")  # the child inherits the imported torch: a start takes ms
    rng = random.Random(0)
    last, interrupted = -1, 0
    for round_ in range(24):
        child = ctx.Process(target=_save_forever, args=(str(directory), 1000 * round_))
        child.start()
        time.sleep(rng.uniform(0.02, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        names = [p.name for p in directory.iterdir()]
        interrupted += any(n.endswith(".tmp") for n in names) or sum(n.endswith(".pt") for n in names) > 3
        twin, gmm = small_graph()
        twin.load(directory)
        numbers = {m.n_updates for m in twin.modules if not isinstance(m, km.Observation)}  # no saved state
        assert len(numbers) == 1, f"a mix of saves {numbers}"
        k = numbers.pop()
        assert bool((gmm.posterior == k).all())
        assert k == last or 1000 * round_ <= k < 1000 * (round_ + 1)  # the previous save, or one of this round
        last = k
    print(f"\n{interrupted} of 24 kills interrupted a save (temporary or previous files left)")
    assert interrupted >= 3  # the kills do land inside saves


def fitted(tmp_path: Path) -> tuple[km.Graph, Path]:
    graph, _ = small_graph(200)
    graph.fit(n_iter=2, seed=0)
    return graph, graph.save(tmp_path / "saved")


def module_file(directory: Path, name: str) -> Path:
    entry = next(e for e in json.loads((directory / "manifest.json").read_text())["body"]["modules"]
                 if e["name"] == name)
    return directory / entry["file"]


def load_fails(directory: Path, match: str) -> None:
    twin, gmm = small_graph(200)
    before = {k: v for k, v in vars(gmm).items() if not k.startswith("_")}
    with pytest.raises(CorruptSaveError, match=match):
        twin.load(directory)
    assert gmm.posterior is None and gmm.fitted_ is None and before.keys() == {
        k for k in vars(gmm) if not k.startswith("_")}  # a failed load changed nothing


@pytest.mark.parametrize("where", ["header", "payload", "end"])
def test_a_flipped_byte_in_a_module_file_is_named(tmp_path, where):
    _, directory = fitted(tmp_path)
    path = module_file(directory, "gmm")
    data = bytearray(path.read_bytes())
    i = {"header": len(MAGIC) + 3, "payload": len(data) // 2, "end": len(data) - 1}[where]
    data[i] ^= 0x10
    path.write_bytes(bytes(data))
    load_fails(directory, f"{path.name}.*(checksum|header|altered)")


def test_truncated_files_and_manifests_and_missing_files_are_named(tmp_path):
    graph, directory = fitted(tmp_path)
    path = module_file(directory, "gmm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    load_fails(directory, f"{path.name}: .*checksum")
    path.write_bytes(data)
    manifest = directory / "manifest.json"
    text = manifest.read_bytes()
    manifest.write_bytes(text[: len(text) // 2])
    load_fails(directory, "manifest.json: not a readable manifest")
    manifest.write_bytes(text.replace(b'"n_updates"', b'"n_updates"').replace(b'"iteration": 2', b'"iteration": 3'))
    load_fails(directory, "manifest.json: checksum mismatch")
    manifest.write_bytes(text)
    path.unlink()
    load_fails(directory, f"{path.name}: missing")


def test_a_file_from_another_save_is_refused(tmp_path):
    graph, directory = fitted(tmp_path)
    graph.fit(n_iter=1, seed=1)
    other = graph.save(tmp_path / "other")
    mine, theirs = module_file(directory, "gmm"), module_file(other, "gmm")
    mine.write_bytes(theirs.read_bytes())  # a complete, valid file: but not the one this manifest names
    load_fails(directory, f"{mine.name}: the file's checksum differs from the manifest's")


class Exploit:
    """A pickle whose loading would run code (create a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    graph, directory = fitted(tmp_path)
    marker = tmp_path / "pwned"
    path = module_file(directory, "gmm")
    payload = pickle.dumps({"state": Exploit(marker)}, protocol=2)
    blob = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    path.write_bytes(blob)
    manifest = json.loads((directory / "manifest.json").read_text())
    for entry in manifest["body"]["modules"]:  # a consistent manifest: only weights_only stands in the way
        if entry["name"] == "gmm":
            entry["sha256"] = hashlib.sha256(blob).hexdigest()
    body = json.dumps(manifest["body"], indent=1, sort_keys=True)
    manifest["sha256"] = hashlib.sha256(body.encode()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    load_fails(directory, f"{path.name}: cannot be loaded safely")
    assert not marker.exists()
    single = tmp_path / "one.pt"
    single.write_bytes(blob)
    with pytest.raises(CorruptSaveError, match="one.pt: cannot be loaded safely"):
        km.load_module(small_graph(200)[1], single)
    assert not marker.exists()


def test_save_module_is_atomic_and_checked(tmp_path):
    graph, _ = fitted(tmp_path)
    path = km.save_module(graph["gmm"], tmp_path / "gmm.pt")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSaveError, match="gmm.pt: checksum mismatch"):
        km.load_module(small_graph(200)[1], path)
    # an estimator is not a graph module: an AttributeError ("no attribute 'name'") before; pickle keeps it
    estimator = km.GaussianMixture(2, random_state=0).fit(np.random.default_rng(0).normal(size=(30, 2)))
    for call in (lambda: km.save_module(estimator, tmp_path / "e.pt"), lambda: km.load_module(estimator, path)):
        with pytest.raises(TypeError, match=r"takes a kizuna.modules graph module .*got GaussianMixture; an estimator "
                                            r"such as GaussianMixture is saved with pickle"):
            call()
    assert not (tmp_path / "e.pt").exists()
    copy = pickle.loads(pickle.dumps(estimator))
    np.testing.assert_array_equal(copy.predict_proba(np.zeros((3, 2))), estimator.predict_proba(np.zeros((3, 2))))


def test_a_save_removes_only_what_this_library_wrote(tmp_path):
    """Only the previous manifest's files, a killed save's module files once a day old, and temporary files of
    writers that no longer run go; a user's files and a live writer's temporary file stay, byte for byte."""
    graph, directory = fitted(tmp_path)
    gmm = graph["gmm"]
    first = {e["file"] for e in json.loads((directory / "manifest.json").read_text())["body"]["modules"]}
    km.save_module(gmm, directory / "module_g_best.pt")  # the user's own files, names like ours
    best = gmm.posterior.clone()
    (directory / "modules_notes.pt").write_bytes(b"user data")
    (directory / ".notes.pt.tmp").write_bytes(b"another program's")
    host = socket.gethostname()
    dead = dead_pid()
    live = directory / f".module009-{'a' * 16}.pt.{host}.{os.getpid()}.tmp"  # this process: writing
    gone = directory / f".module009-{'b' * 16}.pt.{host}.{dead}.tmp"  # its process has exited
    young, old = directory / f"module009-{'c' * 16}.pt", directory / f"module009-{'d' * 16}.pt"
    for path in (live, gone, young, old):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    user = {n: (directory / n).read_bytes() for n in ("module_g_best.pt", "modules_notes.pt", ".notes.pt.tmp")}
    mark(graph, 5)  # a different state: new content-named files
    graph.save(directory)
    second = {e["file"] for e in json.loads((directory / "manifest.json").read_text())["body"]["modules"]}
    assert len(first - second) == 2  # the GMM and the parent changed; the observation saves nothing new
    assert {p.name for p in directory.iterdir()} == second | set(user) | {"manifest.json", live.name, young.name,
                                                                       ".kizuna-save.lock"}  # (saves take turns)
    assert all((directory / n).read_bytes() == data for n, data in user.items())
    twin, twin_gmm = small_graph(200)
    km.load_module(twin_gmm, directory / "module_g_best.pt")
    assert torch.equal(twin_gmm.posterior, best)


def nn_graph(net: torch.nn.Module) -> km.Graph:
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(20, 2, generator=g, dtype=torch.float64) + 4 * k for k in range(3)])
    gmm = km.GMM(3, name="g").connect(km.Observation(x, name="x"))
    return km.Graph([km.NN(net, epochs=2, name="nn").connect(gmm, km.Observation(x[:, :1] * 2, name="p"))])


def state_bytes(graph: km.Graph) -> list[bytes]:
    out = []
    for m in graph.modules:
        buffer = io.BytesIO()
        torch.save(m.state_dict(), buffer)
        out.append(buffer.getvalue())
    return out


def test_a_state_that_fails_to_load_puts_every_module_back(tmp_path):
    """The GMM loads before the NN's network turns out to have other layers: the load is undone, the GMM's
    state, the NN's fields set before its network and the iteration count are as before, byte for byte."""
    saved = nn_graph(torch.nn.Linear(3, 1).double()).fit(2, seed=0)
    saved.save(tmp_path / "saved")
    km.save_module(saved["nn"], tmp_path / "nn.pt")
    graph = nn_graph(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)).double()).fit(1, seed=5)
    before = state_bytes(graph)
    assert graph["g"].state_dict()["n_updates"] != saved["g"].state_dict()["n_updates"]
    with pytest.raises(km.GraphError, match=r"(?s)nn: the saved state does not fit .*Missing key"):
        graph.load(tmp_path / "saved")
    assert state_bytes(graph) == before and graph.iteration == 1
    with pytest.raises(km.GraphError, match="nn: the saved state does not fit"):
        km.load_module(graph["nn"], tmp_path / "nn.pt")
    assert state_bytes(graph) == before
    graph.fit(1, seed=6)  # and it still runs


def test_serket_loop_continues_bitwise_after_a_load(tmp_path):
    """``update()`` without a context draws from the module's own stream, saved with it: save after two updates,
    load into a fresh module, update once more — the same as three uninterrupted updates."""
    x = small_graph(200)[1].children[0].data

    def build(random_state=0):
        return km.GMM(3, max_iter=3, random_state=random_state, name="g").connect(km.Observation(x, name="x"))

    uninterrupted, saved = build(), build()
    for _ in range(3):
        uninterrupted.update()
    saved.update(), saved.update()
    km.save_module(saved, tmp_path / "g.pt")
    loaded = build(random_state=None)  # the saved stream wins over a fresh one
    km.load_module(loaded, tmp_path / "g.pt")
    loaded.update()
    assert torch.equal(loaded.fitted_.resp, uninterrupted.fitted_.resp)
    assert not torch.equal(saved.fitted_.resp, uninterrupted.fitted_.resp)  # the third update did change it
    state = saved.state_dict()
    del state["stream_state"]  # a save from before the stream was saved: it loads and restarts the stream
    older = build()
    older.load_state_dict(state)
    older.update()
    restarted = build()
    restarted.load_state_dict({**saved.state_dict(), "stream_state": None})
    restarted.update()
    assert older.stream_state is not None and torch.equal(older.fitted_.resp, restarted.fitted_.resp)


# ---------------------------------------------------------------------------------------------- seeds
SEEDED_RUN = """
import hashlib, sys, torch
torch.set_num_threads(1)
torch.manual_seed(int(sys.argv[1])); torch.rand(int(sys.argv[1]) * 7 + 1)  # a different global state
from kizuna import modules as km
g = torch.Generator().manual_seed(0)
labels = torch.arange(120) % 3
x = (torch.rand(120, 12, generator=g) < 0.2 + 0.6 * (labels[:, None] == torch.arange(12) % 3)).float()
vae = km.VAE(2, hidden=(16,), epochs=3, batch_size=40).connect(km.Observation(x))
gmm = km.GMM(3, category=labels, max_iter=5).connect(vae)
mlda = km.MLDA(3, weights=[None, 10], max_iter=5).connect(km.Observation(x * 3), gmm)
state = torch.get_rng_state()
graph = km.Graph([km.MM().connect(mlda)]).fit(n_iter=2, seed=0)
assert torch.equal(state, torch.get_rng_state()), "the global generator moved"
digest = hashlib.sha256()
for m in graph.modules:
    for key, value in sorted(m.state_dict().items()):
        digest.update(repr((key, value)).encode())
        for t in ([value] if isinstance(value, torch.Tensor) else []):
            digest.update(t.numpy().tobytes())
print(digest.hexdigest())
"""


DIGEST = """
def digest(graphs):
    h = hashlib.sha256()
    for graph in graphs:
        for m in graph.modules:
            for key, value in sorted(m.state_dict().items()):
                h.update(repr((m.name, key, value)).encode())
                for t in ([value] if isinstance(value, torch.Tensor) else []):
                    h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()
"""

SNIPPETS = """
import pathlib, re, textwrap
for doc in ("docs/modules.md", "docs/modules_classical.md", "docs/reliability.md"):
    for i, code in enumerate(re.findall(r"```python\\n(.*?)```", pathlib.Path(doc).read_text(), re.S)):
        if "seed=0" in code and "from kizuna import" in code:  # complete programs (fragments continue one)
            scope = {}
            exec(compile(textwrap.dedent(code), f"{doc} snippet {i}", "exec"), scope)
            graphs = [v for v in scope.values() if isinstance(v, km.Graph)]
            tops = [v for v in scope.values() if isinstance(v, km.Module) and v.children and not v.parents]
            graphs += [km.Graph([v]) for v in tops if not any(v in g.modules for g in graphs)]
            assert graphs, f"{doc} snippet {i} builds no graph"
            print(doc, i, digest(graphs))
"""


def run_twice(code: str) -> list[str]:
    """``code`` in two fresh processes at once, with global generators seeded 1 and 2: their outputs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", code, seed], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT, env=env) for seed in ("1", "2")]
    outs = []
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
        outs.append(out.strip())
    return outs


def test_a_seeded_graph_is_bitwise_the_same_in_two_fresh_processes():
    """VAE + GMM + MLDA + MM with seed=0, from two different global RNG states in two processes."""
    first, second = run_twice(SEEDED_RUN)
    assert first == second and len(first) == 64


@pytest.mark.slow
def test_docs_seeded_snippets_reproduce():
    """Every snippet of docs/modules.md, modules_classical.md and reliability.md that says ``seed=0`` (and is a
    complete program, importing kizuna), run in two fresh processes from different global RNG states: the
    same states of every module, bit for bit."""
    header = SEEDED_RUN.split("from kizuna import modules as km")[0] + "from kizuna import modules as km\n"
    first, second = run_twice(header + DIGEST + SNIPPETS)
    assert first == second and first.count("docs/") >= 4, first


# ---------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("data, dtype", [
    (np.arange(6).reshape(3, 2), torch.get_default_dtype()),  # integers are converted
    (np.ones((3, 2), dtype=bool), torch.get_default_dtype()),
    (np.ones((3, 2)), torch.float64),  # float64 stays float64
    (torch.ones(3, 2, dtype=torch.float16), torch.float16),
    ([[1, 2], [3, 4]], torch.get_default_dtype()),
])
def test_observation_converts_numbers(data, dtype):
    assert km.Observation(data).data.dtype == dtype


@pytest.mark.parametrize("data, error, match", [
    (np.array([["a", "b"]]), TypeError, r"Observation obs: data must hold numbers \(float or int\), got dtype <U1"),
    (np.ones((2, 2), dtype=complex), ValueError, "Observation obs: Complex data not supported"),
    (np.array([[0.0, 1.0], [np.inf, 2.0]]), ValueError, "Observation obs: data contains inf at row 1, column 0"),
    (np.zeros((0, 3)), ValueError, r"data has 0 sample\(s\)"),
    # ragged lists: numpy's own "inhomogeneous shape" message named neither the module nor the rows' lengths
    ([[1.0, 2.0], [3.0]], ValueError, r"Observation obs: the rows of data have different lengths \(1, 2\); give a "),
    ([[[1.0], [2.0]], [[3.0], [4.0, 5.0]]], ValueError, "Observation obs: the nested lists of data are not rectangul"),
    ([[1.0, 2.0], np.array(3.0)], ValueError, "Observation obs: the nested lists of data are not rectangul"),
])
def test_observation_names_bad_data(data, error, match):
    with pytest.raises(error, match=match):
        km.Observation(data, name="obs")


def test_messages_never_dump_a_tensor():
    x = np.zeros((5000, 40))
    x[4321, 17] = np.nan
    with pytest.raises(ValueError) as err:
        km.Observation(x)
    assert "row 4321, column 17" in str(err.value) and len(str(err.value)) < 200
    with pytest.raises(ValueError) as err:
        km.GMM(2).fit(x)
    assert "row 4321, column 17" in str(err.value) and len(str(err.value)) < 200


def test_the_vae_modules_widths_and_its_encode_before_update_are_named() -> None:
    """``VAE(hidden="64")`` built hidden layers of 6 and 4 units, 8.5 built 8 and True 1, silently; ``encode`` before
    the first update and ``encode`` of a numpy array raised AttributeErrors of None and of ``split``."""
    for hidden, message in (("64", "hidden must be a sequence of layer widths"), (64, "hidden must be a sequence"),
                            ((8.5,), r"hidden\[0\] must be an integer >= 1, got 8.5"),
                            ((16, True), r"hidden\[1\] must be an integer >= 1, got True")):
        with pytest.raises(ValueError, match=message):
            km.VAE(2, hidden=hidden)
    x = torch.rand(30, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vae = km.VAE(2, hidden=(8,), epochs=1, random_state=0).connect(km.Observation(x))
    with pytest.raises(km.NotFittedError, match=r"VAE vae: encode needs the networks, built at the first update"):
        vae.encode(x)
    vae.update()
    torch.testing.assert_close(vae.encode(x.numpy()), vae.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(vae.reconstruct(x.numpy()), vae.reconstruct(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="encode takes a tensor or a numpy array, got list"):
        vae.encode(x.tolist())
