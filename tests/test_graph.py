"""`Graph`: validation errors, SERKET's bottom-up order, seeding, MP / SIR on a small graph
against exact enumeration, and saving / loading whole graphs."""

import json
import os

import pytest
import torch
from module_checks import PriorSource

from kizuna.modules import GMM, MP, NN, SIR, VAE, Graph, GraphError, Observation, UpdateContext

torch.set_num_threads(1)


def blobs(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n // 2, 2, generator=g) - 3, torch.randn(n - n // 2, 2, generator=g) + 3])
    return x, [0] * (n // 2) + [1] * (n - n // 2)


def test_order_is_children_first_and_observations_are_found():
    x, _ = blobs()
    obs1, obs2 = Observation(x), Observation(x)
    vae = VAE(2, epochs=1, likelihood="normal").connect(obs1)
    gmm = GMM(2).connect(vae)
    top = NN(hidden=(4,), epochs=1).connect(gmm, obs2)
    graph = Graph([top, gmm, vae])
    names = [m.name for m in graph]
    assert names == ["observation0", "vae", "gmm", "observation1", "nn"]  # unnamed duplicates numbered
    assert graph["gmm"] is gmm
    with pytest.raises(KeyError, match="no module named 'lda'"):
        graph["lda"]


def test_cycle_is_named():
    x, _ = blobs()
    a = GMM(2, name="a").connect(Observation(x))
    b = NN(name="b").connect(a)
    a.children.append(b)  # connect() would refuse the kinds; build the cycle by hand
    b.parents.append(a)
    with pytest.raises(GraphError, match="cycle in the module graph: b -> a -> b"):
        Graph([b])


def test_unconnected_modules_and_missing_children_are_named():
    x, _ = blobs()
    g1 = GMM(2, name="g1").connect(Observation(x, name="o1"))
    g2 = GMM(2, name="g2").connect(Observation(x, name="o2"))
    with pytest.raises(GraphError, match=r"modules \['o2', 'g2'\] are not connected to o1"):
        Graph([g1, g2])
    with pytest.raises(GraphError, match="lonely has no children"):
        Graph([GMM(2, name="lonely")])
    top = PriorSource(torch.full((40, 2), 0.5), name="top").connect(g1)
    with pytest.raises(GraphError, match=r"g1's parent\(s\) \['top'\] are not in the graph"):
        Graph([g1])
    Graph([top])  # the parent brings its children along
    with pytest.raises(GraphError, match=r"repeated: \['g'\]"):
        Graph([NN(name="g").connect(GMM(2, name="g").connect(Observation(x)))])


def test_fit_is_seeded_passes_a_context_and_leaves_global_rng_and_modules_alone():
    x, labels = blobs()

    def run(seed, method="mp"):
        gmm = GMM(2, category=labels, max_iter=5, n_particles=20).connect(Observation(x))
        top = PriorSource(torch.full((40, 2), 0.5)).connect(gmm)
        params = gmm.get_params()
        graph = Graph([top]).fit(n_iter=2, method=method, seed=seed)
        assert gmm.get_params() == params  # configured through the context, not by setting attributes
        return gmm, graph

    state = torch.get_rng_state()
    (a, graph), (b, _) = run(0), run(0)
    assert torch.equal(state, torch.get_rng_state())
    torch.testing.assert_close(a.posterior, b.posterior)
    assert graph.iteration == 2 and isinstance(graph.context().combine, MP)
    sir, _ = run(0, "sir")  # 20 particles: SIR's posterior is a histogram of 20 draws, not MP's
    assert not torch.equal(sir.posterior, a.posterior) and bool(((sir.posterior * 20) % 1 == 0).all())
    assert a.accuracy == 1.0 and a.n_updates == 2
    with pytest.raises(ValueError, match="method must be one of"):
        Graph([GMM(2).connect(Observation(x))]).fit(1, method="bp")
    with pytest.raises(ValueError, match="seed must be None or a non-negative int"):
        Graph([GMM(2).connect(Observation(x))]).fit(1, seed=-3)


def exact_posterior(gmm, x, prior):
    """p(c_n = k | x_n) by enumeration: prior_nk N(x_n | mu_k, Sigma_k) / sum_j (...) — under a parent the
    parent's class prior takes the place of the GMM's mixing weights."""
    mu, cov = (torch.as_tensor(a, dtype=torch.float64) for a in (gmm.means_, gmm.covariances_))
    lik = torch.distributions.MultivariateNormal(mu, cov).log_prob(x.double().unsqueeze(1)).exp()
    joint = prior.double() * lik
    return joint / joint.sum(1, keepdim=True)


@pytest.mark.parametrize("method", ["mp", "sir"])
def test_schedules_on_a_two_node_graph_match_enumeration(method):
    """A frozen EM GMM under a parent's class prior: the combined posterior is exact for MP and
    agrees within a stated tolerance for SIR."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 2, generator=g, dtype=torch.float64) * 2
    gmm = GMM(3, algorithm="em", random_state=0).fit(x)
    gmm.learnable = False
    prior = torch.distributions.Dirichlet(torch.ones(3)).sample((300,)).double()
    gmm.connect(Observation(x))
    top = PriorSource(prior).connect(gmm)
    gmm.n_particles = 4000
    Graph([top]).fit(n_iter=2, method=method, seed=0)  # sweep 1 sends the prior down, sweep 2 uses it
    exact = exact_posterior(gmm, x, prior)
    if method == "mp":
        torch.testing.assert_close(gmm.posterior, exact, rtol=1e-9, atol=1e-9)
    else:
        # per entry the SIR estimate has sd <= sqrt(p(1-p)(1+cv^2)/P); 5 sd of p=1/2 with cv^2 <= 9
        # (weights of 3 classes under a Dirichlet proposal) gives false alarms < 1e-6 per entry
        tol = 5 * (0.25 * 10 / 4000) ** 0.5
        assert (gmm.posterior - exact).abs().max() < tol
        # and over all 900 entries the errors average out
        assert (gmm.posterior - exact).mean().abs() < 0.005


def test_a_float64_graph_saves_and_loads_bit_for_bit(tmp_path):
    """A float64 GMM graph: after save and load, every tensor of each module's state and the posterior are equal to
    the bit (`torch.equal`), and so is the next sweep (a save that rounded through float32 moved the posterior by
    3e-8, inside the float32 round trip test's default tolerance)."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 3, generator=g, dtype=torch.float64) + 4,
                   torch.randn(30, 3, generator=g, dtype=torch.float64) * 0.7])

    def build():
        gmm = GMM(2, algorithm="gibbs", max_iter=4).connect(Observation(x))
        return Graph([gmm]), gmm

    graph, gmm = build()
    graph.fit(n_iter=2, seed=3)
    graph.save(tmp_path / "saved")
    twin, gmm2 = build()
    twin.load(tmp_path / "saved")
    assert gmm2.posterior.dtype == torch.float64 and torch.equal(gmm2.posterior, gmm.posterior)

    def tensors(state):
        for value in (state.values() if isinstance(state, dict) else state if isinstance(state, list) else [state]):
            if isinstance(value, torch.Tensor):
                yield value
            elif isinstance(value, (dict, list)):
                yield from tensors(value)

    saved, loaded = list(tensors(gmm.state_dict())), list(tensors(gmm2.state_dict()))
    assert len(saved) == len(loaded) > 0
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(saved, loaded))
    graph.fit(n_iter=1, seed=4)
    twin.fit(n_iter=1, seed=4)
    assert torch.equal(gmm2.posterior, gmm.posterior)


def test_save_load_round_trip_and_architecture_check(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(60, 8)

    def build(k=2):
        vae = VAE(2, hidden=(8,), epochs=1, batch_size=20).connect(Observation(x))
        gmm = GMM(k, max_iter=3).connect(vae)
        return Graph([gmm]), vae, gmm

    graph, vae, gmm = build()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        graph.fit(n_iter=2, seed=0)
        assert os.listdir(tmp_path) == []  # nothing is written unless asked
    finally:
        os.chdir(cwd)
    graph.save(tmp_path / "saved")
    manifest = json.loads((tmp_path / "saved" / "manifest.json").read_text())["body"]
    assert [m["name"] for m in manifest["modules"]] == ["observation", "vae", "gmm"]
    assert manifest["iteration"] == 2
    twin, vae2, gmm2 = build()
    twin.load(tmp_path / "saved")
    assert twin.iteration == 2
    torch.testing.assert_close(gmm2.posterior, gmm.posterior)
    torch.testing.assert_close(vae2.encode(x), vae.encode(x))
    torch.testing.assert_close(vae2.backward_in.value, vae.backward_in.value)
    twin.fit(n_iter=1, seed=1)  # a loaded graph keeps learning
    other, _, _ = build(k=3)
    with pytest.raises(GraphError, match=r"gmm: saved config .*'n_components': 2.* graph has .*'n_components': 3"):
        other.load(tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match="no saved kizuna graph"):
        other.load(tmp_path / "nowhere")


def test_a_schedule_sets_vae_epochs_per_sweep_and_continues_over_fits():
    """SERKET's schedule: many VAE epochs in the first update, fewer afterwards. The VAE's trainer counts
    epochs over calls: 3 + 1 + 1 after three sweeps, + 1 after a fourth in a second fit."""
    x, _ = blobs()
    vae = VAE(2, hidden=(4,), epochs=7, batch_size=20, likelihood="normal").connect(Observation(x))
    gmm = GMM(2, max_iter=2).connect(vae)
    graph = Graph([gmm]).fit(n_iter=3, seed=0, schedule={"vae": {"epochs": [3, 1]}, "gmm": {"max_iter": [1]}})
    assert vae.model.epoch == 5 and vae.epochs == 7  # the setting is read from the context, not written
    graph.fit(n_iter=1, seed=1, schedule={"vae": {"epochs": lambda i: 10 if i == 0 else 2}})
    assert vae.model.epoch == 7 and graph.iteration == 4
    ctx = UpdateContext(schedule={"vae": {"epochs": [200, 40]}})
    assert [ctx.at(i).setting("vae", "epochs", 0) for i in (0, 1, 5)] == [200, 40, 40]


@pytest.mark.parametrize("schedule, match", [
    ({"lda": {"max_iter": [1]}}, "no module named 'lda' in the graph"),
    ({"vae": {"lr": [1e-3]}}, r"module 'vae' takes \('epochs',\) from a schedule, not 'lr'"),
    ({"gmm": {"max_iter": []}}, "must be a non-empty list"),
    ({"gmm": {"max_iter": 5}}, "must be a non-empty list"),
    # scheduled counts: 2.5 epochs trained 2, -3 none, "3" three, None a raw TypeError from int()
    ({"vae": {"epochs": [2.5]}}, r"schedule: vae.epochs entry 0 must be an integer >= 0, got 2.5"),
    ({"vae": {"epochs": [3, -3]}}, r"schedule: vae.epochs entry 1 must be an integer >= 0, got -3"),
    ({"vae": {"epochs": ["3"]}}, r"schedule: vae.epochs entry 0 must be an integer >= 0, got '3'"),
    ({"gmm": {"max_iter": [None]}}, r"schedule: gmm.max_iter entry 0 must be an integer >= 0, got None"),
    ({"vae": {"epochs": lambda i: 1.5}}, r"schedule: vae.epochs at iteration 0 must be an integer >= 0, got 1.5"),
])
def test_schedule_errors_name_the_module_and_setting(schedule, match):
    x, _ = blobs()
    gmm = GMM(2).connect(VAE(2, epochs=1, likelihood="normal").connect(Observation(x)))
    with pytest.raises(ValueError, match=match):
        Graph([gmm]).fit(n_iter=1, seed=0, schedule=schedule)


def test_repr_shows_the_tree_and_hyper_parameters():
    x, labels = blobs()
    obs = Observation(x, name="points")
    gmm = GMM(2, category=labels, max_iter=7, name="gmm").connect(obs)
    top = PriorSource(torch.full((40, 2), 0.5), name="top").connect(gmm)
    graph = Graph([top])
    text = repr(graph)
    assert text.splitlines()[0] == "Graph(3 modules, 0 sweeps done)"
    assert "    GMM(name='gmm', n_components=2, max_iter=7)" in text
    assert "      Observation(name='points', shape=(40, 2), dtype=torch.float32)" in text
    assert repr(gmm) == "GMM(name='gmm', n_components=2, max_iter=7) <- points"


def test_verbose_fit_shows_a_progress_bar_with_accuracies(capsys):
    x, labels = blobs()
    gmm = GMM(2, category=labels, max_iter=3).connect(Observation(x))
    Graph([gmm]).fit(n_iter=2, seed=0, verbose=True)
    err = capsys.readouterr().err
    assert "graph" in err and "2/2" in err and "gmm=1.000" in err
    Graph([GMM(2, max_iter=3).connect(Observation(x))]).fit(n_iter=2, seed=0, verbose=False)
    assert capsys.readouterr().err == ""


def test_update_without_a_context_uses_the_module_stream():
    """SERKET's own loop, ``m.update()``: message passing and the module's stream from random_state."""
    x, labels = blobs()
    runs = []
    for _ in range(2):
        gmm = GMM(2, category=labels, max_iter=3, random_state=5).connect(Observation(x))
        gmm.update()
        gmm.update()
        runs.append(gmm.posterior)
    torch.testing.assert_close(runs[0], runs[1])
    with pytest.raises(ValueError, match="n_particles must be a positive int"):
        SIR(n_particles=0)


def test_update_with_a_context_moves_the_schedule_on_as_fit_does():
    """A hand-written loop of ``update(ctx)`` ran every sweep at the iteration the context was made at: max_iter 5,
    5, 5 where fit runs 5, 7, 9."""
    import numpy as np

    x = np.random.default_rng(0).normal(size=(40, 2))
    schedule = {"gmm": {"max_iter": [5, 7, 9]}}
    gmm = GMM(2, algorithm="vb", max_iter=100, tol=0).connect(Observation(x))
    graph = Graph([gmm])
    ctx = graph.context(seed=0, schedule=schedule)
    runs = []
    for _ in range(3):
        graph.update(ctx)
        runs.append(gmm.n_iter_)
    assert runs == [5, 7, 9] and graph.iteration == 3
    fitted = GMM(2, algorithm="vb", max_iter=100, tol=0).connect(Observation(x))
    Graph([fitted]).fit(3, seed=0, schedule=schedule)
    assert fitted.n_iter_ == 9 and torch.equal(fitted.posterior, gmm.posterior)


def test_a_child_given_twice_in_one_connect_and_a_message_of_no_columns_are_refused():
    """``connect(o, o)`` made o a child twice (its modality counted twice, silently; two calls were refused); a
    posterior of width 0 passed the row-sum check and an MLDA fitted on it."""
    from kizuna.modules import MLDA, Message
    from kizuna.modules.base import MessageShapeError

    o = Observation(torch.rand(5, 3))
    with pytest.raises(GraphError, match="observation is already a child of mlda"):
        MLDA(2).connect(o, o)
    assert o.parents == []
    with pytest.raises(MessageShapeError, match=r"value has width 0 \(shape \(5, 0\)\)"):
        Message("a", None, "c", "posterior", torch.zeros(5, 0))


def test_update_with_a_context_for_a_later_iteration_keeps_it():
    """examples/serket_gmm_samplers.py updates the modules one by one first (the graph's iteration stays 0), then
    calls graph.update(ctx.at(i)): the context's own, later iteration is kept (taking the graph's repeated the first
    entry of the schedule)."""
    import numpy as np

    x = np.random.default_rng(0).normal(size=(40, 2))
    gmm = GMM(2, algorithm="vb", max_iter=100, tol=0).connect(Observation(x))
    graph = Graph([gmm])
    ctx = graph.context(seed=0, schedule={"gmm": {"max_iter": [5, 7, 9]}})
    for m in graph.modules:
        m.update(ctx)
    runs = [gmm.n_iter_]
    for i in (1, 2):
        graph.update(ctx.at(i))
        runs.append(gmm.n_iter_)
    assert runs == [5, 7, 9]


def test_overlapping_saves_into_one_directory_take_turns(tmp_path):
    """Save O; then save B (the same states as O, so its module files have O's names) is paused before its manifest
    while another process saves A (other states) into the same directory. Without a lock A removed O's files, which
    were B's, and B's manifest, renamed last, named deleted files: no loadable save. With the lock, A waits for B,
    then replaces it: the directory holds A's save, complete."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from kizuna.modules import persistence

    script = tmp_path / "other.py"
    ready = tmp_path / "ready"
    script.write_text(
        "import sys, torch\n"
        "from kizuna import modules as km\n"
        "torch.manual_seed(0)\n"
        "x = torch.cat([torch.randn(30, 2) - 3, torch.randn(30, 2) + 3])\n"
        "g = km.Graph([km.GMM(2, max_iter=2, name='g').connect(km.Observation(x, name='x'))]); g.fit(1, seed=1)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        f"g.save({str(tmp_path / 'save')!r})\n")

    def build(seed):
        torch.manual_seed(0)
        x = torch.cat([torch.randn(30, 2) - 3, torch.randn(30, 2) + 3])
        g = Graph([GMM(2, max_iter=2, name="g").connect(Observation(x, name="x"))])
        g.fit(1, seed=seed)
        return g

    d = tmp_path / "save"
    build(0).save(d)  # O
    real, other = persistence.write_atomic, []

    def paused(path, data):
        if Path(path).name == persistence.MANIFEST and not other:
            other.append(subprocess.Popen([sys.executable, str(script)]))
            deadline = time.monotonic() + 120
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.5)  # long enough for the other save to finish, were it not waiting for the lock
        return real(path, data)

    persistence.write_atomic = paused
    try:
        build(0).save(d)  # B
    finally:
        persistence.write_atomic = real
    assert other[0].wait(timeout=120) == 0
    loaded = build(2).load(d)  # (it raised CorruptSaveError: a file the manifest names was missing)
    assert torch.equal(torch.as_tensor(loaded.modules[1].means_), torch.as_tensor(build(1).modules[1].means_))  # A's


def test_update_after_a_load_starts_a_fresh_context(tmp_path):
    """`update()` right after `load` starts a fresh context (a random seed, "mp"), as the docs say; it kept the
    context of the graph's own earlier fit (its method, schedule and stream: here SIR with max_iter 0, which learned
    nothing)."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(30, 2) - 3, torch.randn(30, 2) + 3])
    a = Graph([GMM(2, max_iter=2, name="g").connect(Observation(x, name="x"))])
    a.fit(1, seed=0)
    a.save(tmp_path / "s")
    b = Graph([GMM(2, max_iter=2, name="g").connect(Observation(x, name="x"))])
    b.fit(1, seed=5, method="sir", schedule={"g": {"max_iter": [0]}})
    b.load(tmp_path / "s")
    assert b._context is None
    b.update()
    assert b._context is not None and b._context.schedule != {"g": {"max_iter": [0]}}
