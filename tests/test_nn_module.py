"""NN module: learns a known linear map, fits a nonlinear one, sends a class prior that recovers
the classes behind paired data, and reports bad wiring."""

import pytest
import torch

from kizuna.modules import GMM, NN, Graph, MessageShapeError, Observation

torch.set_num_threads(1)


def test_learns_a_known_linear_map():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.5, 3.0]])
    b = torch.tensor([0.3, -0.7])
    x = torch.randn(256, 3, generator=g)
    y = x @ a + b
    torch.manual_seed(0)
    nn_ = NN(torch.nn.Linear(3, 2), target=y, epochs=200, batch_size=64, lr=0.05).connect(Observation(x))
    Graph([nn_]).fit(n_iter=1, seed=0)
    torch.testing.assert_close(nn_.net.weight.detach().T, a, atol=2e-3, rtol=0)
    torch.testing.assert_close(nn_.net.bias.detach(), b, atol=2e-3, rtol=0)
    assert nn_.forward_message.kind == "latent" and nn_.forward_message.value.shape == (256, 2)
    assert nn_.mse < 1e-5


def test_default_mlp_fits_a_nonlinear_map_from_a_second_child():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(300, 1, generator=g) * 6 - 3
    y = torch.sin(x)
    torch.manual_seed(0)
    nn_ = NN(hidden=(32,), epochs=1, lr=1e-2, batch_size=32).connect(Observation(x), Observation(y))
    nn_.update()
    first = nn_.mse
    for _ in range(20):
        nn_.update()
    assert nn_.mse < 0.1 * first and nn_.mse < 0.02, (first, nn_.mse)


def test_class_prior_down_to_a_gmm_recovers_the_pairing():
    """Images-and-words style: a GMM over ambiguous data x, an NN from its posterior to paired
    data y that separates the classes; the NN's prior message makes the GMM find them."""
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(200) % 2
    x = torch.randn(200, 2, generator=g) + labels.unsqueeze(1) * 1.0  # overlapping
    y = torch.where(labels.unsqueeze(1) == 1, 2.0, -2.0) + 0.3 * torch.randn(200, 1, generator=g)
    torch.manual_seed(0)
    gmm = GMM(2, category=labels, max_iter=20, random_state=0).connect(Observation(x))
    alone = GMM(2, category=labels, max_iter=20, random_state=0).fit(x).accuracy
    nn_ = NN(hidden=(16,), epochs=30, lr=1e-2, batch_size=50).connect(gmm, Observation(y))
    Graph([nn_]).fit(n_iter=6, seed=0)
    prior = gmm.backward_in
    assert prior.kind == "prior" and prior.sender == nn_.name and prior.value.shape == (200, 2)
    assert alone < 0.8 and gmm.accuracy > max(0.9, alone + 0.15), (gmm.accuracy, alone)


def test_wiring_errors():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match=r"nn1 needs 2 child\(ren\) \(source, target\), got 1"):
        NN(name="nn1").connect(Observation(x)).update()
    with pytest.raises(MessageShapeError, match="in_dim=3 but the messages have 2 columns"):
        NN(in_dim=3, target=torch.zeros(10, 1), name="nn1").connect(Observation(x)).update()
    with pytest.raises(MessageShapeError, match="the target has 9 rows but observation sends 10"):
        NN(target=torch.zeros(9, 1)).connect(Observation(x)).update()
    with pytest.raises(ValueError, match="target must be N x out"):
        NN(target=torch.zeros(9))


def test_a_default_mlp_loads_before_its_first_update(tmp_path):
    """The default MLP is built lazily from the messages; a module loaded before its graph's first sweep has none
    yet, so the network is sized by the saved weights and must compute what the saved one did."""
    from kizuna.modules import load_module, save_module

    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(20, 2, generator=g, dtype=torch.float64) + 4 * k for k in range(3)])
    p = torch.rand(60, 6, generator=g, dtype=torch.float64)

    def build():
        gmm = GMM(3, name="g").connect(Observation(x, name="x"))
        return NN(hidden=(8,), epochs=2, name="nn").connect(gmm, Observation(p, name="p"))

    saved = build()
    Graph([saved]).fit(1, seed=0)
    save_module(saved, tmp_path / "nn.pt")
    fresh = build()
    load_module(fresh, tmp_path / "nn.pt")
    probe = torch.eye(3, dtype=torch.float64)
    assert torch.equal(fresh.net(probe), saved.net(probe)) and next(fresh.net.parameters()).dtype == torch.float64
    Graph([fresh]).fit(1, seed=1)  # and it trains on from there
    wrong = NN(hidden=(8, 8), epochs=2, name="nn").connect(GMM(3, name="g").connect(Observation(x, name="x")),
                                                           Observation(p, name="p"))
    wrong.hidden = (8,)  # the config check passes; the saved weights still name two layers
    wrong_state = saved.state_dict()
    wrong_state["net"] = {**wrong_state["net"], "4.weight": torch.zeros(6, 8, dtype=torch.float64)}
    with pytest.raises(ValueError, match="the saved network has 3 linear layers but the default MLP"):
        wrong.load_state_dict(wrong_state)


def test_a_load_into_a_trained_module_takes_the_saved_optimiser_state(tmp_path):
    """docs/modules.md: a load restores the optimiser's state saved with the weights, so a graph that had trained
    before the load continues exactly as a freshly built one loaded from the same save (its NN's own Adam moments,
    which belong to other weights, are replaced)."""
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(20, 2, generator=g, dtype=torch.float64) + 4 * k for k in range(3)])
    p = torch.rand(60, 6, generator=g, dtype=torch.float64)

    def build():
        gmm = GMM(3, name="g").connect(Observation(x, name="x"))
        return Graph([NN(hidden=(8,), epochs=3, name="nn").connect(gmm, Observation(p, name="p"))])

    saved = build()
    saved.fit(1, seed=0)
    saved.save(tmp_path / "graph")
    used, fresh = build(), build()
    used.fit(2, seed=5)  # its own training: Adam moments of other weights
    for graph in (used, fresh):
        graph.load(tmp_path / "graph")
        graph.fit(1, seed=3)
    probe = torch.eye(3, dtype=torch.float64)
    nets = [next(m for m in graph.modules if isinstance(m, NN)).net for graph in (used, fresh)]
    assert torch.equal(nets[0](probe), nets[1](probe))


def _nn_graph():
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(20, 2, generator=g) + 4 * k for k in range(3)])
    p = torch.rand(60, 6, generator=g)
    gmm = GMM(3, name="g").connect(Observation(x, name="x"))
    return Graph([NN(hidden=(8,), epochs=3, batch_size=16, name="nn").connect(gmm, Observation(p, name="p"))])


def _net(graph):
    return [w.detach().clone() for w in graph["nn"].net.parameters()]


def test_save_load_fit_continues_the_uninterrupted_run_bit_for_bit(tmp_path):
    """The optimiser's state (Adam's moments) is saved with the module: save after two sweeps, load into a freshly
    built graph (or the module alone into a fresh module) and fit on equals the run never saved, bit for bit: the
    network, its predictions and the GMM that the NN's class prior steers."""
    from kizuna.modules import load_module, save_module

    straight = _nn_graph()
    straight.fit(2, seed=0)
    straight.fit(2, seed=1)
    saved = _nn_graph()
    saved.fit(2, seed=0)
    saved.save(tmp_path / "graph")
    save_module(saved["nn"], tmp_path / "nn.pt")
    resumed = _nn_graph()
    resumed.load(tmp_path / "graph")
    one = _nn_graph()
    one.load(tmp_path / "graph")
    load_module(one["nn"], tmp_path / "nn.pt")  # the module file holds the same state
    for graph in (resumed, one):
        graph.fit(2, seed=1)
        assert all(torch.equal(a, b) for a, b in zip(_net(graph), _net(straight)))
        assert torch.equal(graph["nn"].prediction, straight["nn"].prediction)
        assert torch.equal(graph["g"].posterior, straight["g"].posterior)


def test_a_save_without_the_optimiser_state_still_loads(tmp_path, monkeypatch):
    """A save written before the optimiser's state was kept loads with a fresh optimiser on the loaded weights."""
    from kizuna.modules.state import Stateful

    saved = _nn_graph()
    saved.fit(1, seed=0)
    with monkeypatch.context() as m:  # the old format: no "optimizer" entry
        m.setattr(NN, "state_dict", lambda self: {k: v for k, v in Stateful.state_dict(self).items()
                                                  if k != "optimizer"})
        saved.save(tmp_path / "graph")
    for graph in (_nn_graph(), saved):  # into a fresh module, and into one that has trained
        graph.load(tmp_path / "graph")
        assert all(torch.equal(a, b) for a, b in zip(_net(graph), _net(saved)))
        assert graph["nn"].optimizer is None or not graph["nn"].optimizer.state  # fresh (or built at the update)
        graph.fit(1, seed=1)
        assert graph["nn"].optimizer.state


def test_a_loaded_optimiser_takes_the_modules_learning_rate(tmp_path):
    """docs/modules.md: after a load the optimiser trains at the loading module's ``lr``, not the saved one's (it
    kept 1e-3 while ``module.lr`` said 0.5), for a module that had trained and a fresh one alike."""
    from module_checks import loaded_optimiser_takes_the_modules_lr

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(30, 3, generator=g), torch.randn(30, 2, generator=g)
    loaded_optimiser_takes_the_modules_lr(
        lambda lr: NN(hidden=(4,), epochs=1, lr=lr, target=t, name="nn").connect(Observation(x)), tmp_path / "nn.pt")


@pytest.mark.parametrize("saved_dtype, data_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_a_default_mlp_loaded_from_a_save_of_another_dtype_trains_in_the_datas(tmp_path, saved_dtype, data_dtype):
    """The default MLP is built in the saved weights' dtype at a load; the next update moves it and Adam's moments to
    the data's dtype (the same Parameter objects, so the optimiser's references hold; ``step`` keeps its dtype):
    it failed with "mat1 and mat2 must have the same dtype". A user network is left as given."""
    from kizuna.modules import load_module, save_module

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(30, 3, generator=g), torch.randn(30, 2, generator=g)

    def build(dtype, net=None):
        return NN(net, hidden=(4,), epochs=1, target=t, name="nn").connect(Observation(x.to(dtype)))

    saved = build(saved_dtype)
    Graph([saved]).fit(1, seed=0)
    save_module(saved, tmp_path / "nn.pt")
    loaded = build(data_dtype)
    load_module(loaded, tmp_path / "nn.pt")
    params = list(loaded.net.parameters())
    steps = [s["step"].dtype for s in loaded.optimizer.state.values()]
    Graph([loaded]).fit(1, seed=1)
    assert all(p.dtype == data_dtype for p in loaded.net.parameters())
    assert all(a is b for a, b in zip(params, loaded.net.parameters()))
    assert loaded.optimizer.param_groups[0]["params"] == params
    assert all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == data_dtype for s in loaded.optimizer.state.values())
    assert [s["step"].dtype for s in loaded.optimizer.state.values()] == steps
    assert loaded.prediction.dtype == data_dtype

    torch.manual_seed(0)
    user = build(data_dtype, torch.nn.Linear(3, 2).to(saved_dtype))
    with pytest.raises(MessageShapeError, match=rf"the network computes in {saved_dtype} but the messages are "
                                                rf"{data_dtype}"):  # a user network is used as given, named
        Graph([user]).fit(1, seed=0)


def test_a_network_of_another_width_than_the_target_and_fractional_counts_are_named():
    """A Linear(2, 3) network against a 1-column target trained all three outputs on that column by broadcasting
    (mse 6e-8, no error), and an (N,) output trained on an N x N loss; epochs=0.5 trained nothing, batch_size=2.5
    failed in split_with_sizes; MM's n_samples=2.5 ran with 2 and n_particles=0 failed only under SIR; a VAE with
    a 3-wide encoder and latent_dim=1 trained its epochs on a broadcast prior before failing."""
    from kizuna.distributions import Bernoulli, Normal
    from kizuna.modules import MM, VAE

    x, y = torch.randn(50, 2), torch.randn(50, 1)
    wide = NN(torch.nn.Linear(2, 3), target=y, epochs=1).connect(Observation(x))
    with pytest.raises(MessageShapeError, match=r"the network returns \(1, 3\) for one row of 2 inputs, but the target "
                                                r"has 1 column\(s\)"):
        wide.update()

    class Flat(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x)[:, 0]

    with pytest.raises(MessageShapeError, match=r"the network returns \(1,\) for one row"):
        NN(Flat(2, 1), target=y, epochs=1).connect(Observation(x)).update()
    for kwargs, message in (({"epochs": 0.5}, "epochs must be an integer >= 0, got 0.5"),
                            ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
                            ({"lr": float("nan")}, "lr must be a positive finite number, got nan")):
        with pytest.raises(ValueError, match=message):
            NN(target=y, **kwargs)
    for kwargs, message in (({"n_samples": 2.5}, "n_samples must be an integer >= 1, got 2.5"),
                            ({"n_particles": 0}, "n_particles must be an integer >= 1, got 0")):
        with pytest.raises(ValueError, match=message):
            MM(2, **kwargs)
    for kwargs, message in (({"epochs": 2.5}, "epochs must be an integer >= 0, got 2.5"),
                            ({"latent_dim": 2.5}, "latent_dim must be an integer >= 1, got 2.5"),
                            ({"alpha": float("nan")}, "alpha must be a finite number >= 0, got nan")):
        with pytest.raises(ValueError, match=message):
            VAE(**{"latent_dim": 2, **kwargs})

    class Encoder(Normal):
        def __init__(self):
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.net = torch.nn.Linear(4, 6)

        def forward(self, x):
            loc, s = self.net(x).chunk(2, -1)
            return {"loc": loc, "scale": torch.nn.functional.softplus(s) + 1e-3}

    class Decoder(Bernoulli):
        def __init__(self):
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.net = torch.nn.Linear(3, 4)

        def forward(self, z):
            return {"logits": self.net(z)}

    encoder = Encoder()
    before = [w.detach().clone() for w in encoder.parameters()]
    vae = VAE(1, encoder=encoder, decoder=Decoder(), epochs=3).connect(Observation(torch.rand(30, 4).round()))
    with pytest.raises(MessageShapeError, match="1 latent dimensions"):
        vae.update()
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters())) and vae.loss_history == []


def test_a_user_network_of_another_dtype_or_input_width_is_named():
    """A float32 network on float64 messages, and a network of another input width, failed in training with torch's
    "mat1 and mat2 must have the same dtype" / "shapes cannot be multiplied"."""
    x, y = torch.randn(20, 2, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    with pytest.raises(MessageShapeError, match=r"the network computes in torch.float32 but the messages are "
                                                r"torch.float64: convert one of them"):
        NN(torch.nn.Linear(2, 1), target=y, epochs=1).connect(Observation(x)).update()
    with pytest.raises(MessageShapeError, match=r"the network fails on one row of 2 inputs: mat1 and mat2 shapes"):
        NN(torch.nn.Linear(3, 1).double(), target=y, epochs=1).connect(Observation(x)).update()
