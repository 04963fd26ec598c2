"""VAE module: the KL to N(mu, I) against its closed form, the prior-mean message pulling the
latents, wrapping user VAEs, learning over updates, errors, and VAE+GMM on real MNIST digits."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, Normal
from kizuna.losses import KullbackLeibler
from kizuna.models import VAE as VAEModel
from kizuna.modules import (
    GMM,
    VAE,
    Graph,
    GraphError,
    Message,
    MessageShapeError,
    Observation,
    load_module,
    save_module,
)
from kizuna.nets import MLP

torch.set_num_threads(1)


def patterns(n=120, d=20, seed=0):
    """Binary rows from three fixed patterns with 5% flips."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(3, d, generator=g) > 0.5).float()
    labels = torch.arange(n) % 3
    flips = (torch.rand(n, d, generator=g) < 0.05).float()
    return (protos[labels] - flips).abs(), labels


class Encoder(Normal):  # a user q(h|o) with its own variable names
    def __init__(self, d, k):
        super().__init__(var=["h"], cond_var=["o"], name="q")
        self.net = MLP(d, 32, 2 * k)

    def forward(self, o):
        loc, s = self.net(o).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-3}


class Decoder(Bernoulli):  # p(o|h)
    def __init__(self, d, k):
        super().__init__(var=["o"], cond_var=["h"], name="p")
        self.net = MLP(k, 32, d)

    def forward(self, h):
        return {"probs": torch.sigmoid(self.net(h))}


def test_kl_to_the_prior_mean_matches_the_closed_form():
    torch.manual_seed(0)
    x, _ = patterns()
    vae = VAE(3, hidden=(16,), epochs=0, alpha=2.5).connect(Observation(x))
    vae.update()  # builds the networks; epochs=0 trains nothing
    mu = torch.randn(120, 3)
    params = vae.encoder.get_params({"x": x})
    m, s = params["loc"], params["scale"]
    closed = 0.5 * (s**2 + (m - mu) ** 2 - 1 - 2 * torch.log(s)).sum(1)
    batch = {"x": x, "mu": mu}
    torch.testing.assert_close(vae.kl.eval(batch), closed, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.manual_seed(1)
        total = vae.model.loss_cls.eval(batch)
        torch.manual_seed(1)
        expected = (vae.reconstruction_loss.eval(batch) + 2.5 * closed).mean()
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-4)


def test_the_prior_mean_message_pulls_the_latent_means():
    torch.manual_seed(0)
    x, labels = patterns()
    vae = VAE(2, hidden=(32,), epochs=20, batch_size=40, lr=3e-3).connect(Observation(x))
    vae.update()
    target = torch.where(labels.unsqueeze(1) == 0, 3.0, -3.0).expand(120, 2).contiguous()
    before = (vae.latent - target).norm(dim=1).mean()
    vae.receive_backward(Message("gmm", vae.name, "z", "prior_mean", target))
    vae.update()
    after = (vae.latent - target).norm(dim=1).mean()
    assert after < 0.5 * before, (before, after)


def test_wraps_user_encoder_decoder_and_a_kizuna_vae_model():
    torch.manual_seed(0)
    x, _ = patterns()
    q, p = Encoder(20, 2), Decoder(20, 2)
    vae = VAE(2, encoder=q, decoder=p, epochs=5, batch_size=40).connect(Observation(x))
    assert str(vae.model.loss_cls) == "mean(-E_{q(h|o)}[log p(o|h)] + KL[q(h|o)||p_{prior}(h|mu)])"
    vae.update()
    assert vae.encoder is q and vae.forward_message.variable == "h" and vae.latent.shape == (120, 2)
    q2, p2 = Encoder(20, 2), Decoder(20, 2)
    prior = Normal(var=["h"], loc=0.0, scale=1.0, features_shape=[2])
    wrapped = VAE(2, vae=VAEModel(q2, p2, regularizer=KullbackLeibler(q2, prior)), epochs=1).connect(Observation(x))
    wrapped.update()
    assert wrapped.encoder is q2 and wrapped.decoder is p2


def test_reconstructions_improve_over_updates():
    torch.manual_seed(0)
    x, _ = patterns()
    vae = VAE(3, hidden=(32,), epochs=5, batch_size=40, lr=3e-3).connect(Observation(x))
    vae.update()
    first = F.binary_cross_entropy(vae.reconstruct(x), x).item()
    for _ in range(3):
        vae.update()
    last = F.binary_cross_entropy(vae.reconstruct(x), x).item()
    assert vae.loss_history[-1] < 0.8 * vae.loss_history[0]
    assert last < 0.8 * first, (first, last)


def test_errors():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE(2, likelihood="poisson")
    with pytest.raises(ValueError, match=r"the decoder must be p\(o\|h\)"):
        VAE(2, encoder=Encoder(4, 2), decoder=Normal(var=["x"], cond_var=["h"], loc="h", scale=1.0))
    with pytest.raises(ValueError, match="both encoder and decoder"):
        VAE(2, encoder=Encoder(4, 2))
    vae = VAE(2, epochs=1, name="vae1").connect(Observation(torch.randn(10, 4), name="obs"))
    with pytest.raises(ValueError, match=r"vae1: the Bernoulli decoder needs data in \[0, 1\] from obs"):
        vae.update()
    vae = VAE(2, epochs=1, name="vae1").connect(Observation(torch.rand(10, 4)))
    vae.receive_backward(Message("gmm1", "vae1", "z", "prior_mean", torch.zeros(10, 3)))
    with pytest.raises(MessageShapeError, match=r"vae1 has 2 latent dimensions, .* from gmm1 has shape \(10, 3\)"):
        vae.update()


def test_vae_gmm_clusters_real_mnist_digits(shared_data):
    data = np.load(shared_data("serket/mnist3000.npz"))  # tests/conftest.py: skipped without ../shared
    x, labels = data["image"][:300], data["label"][:300]
    torch.manual_seed(0)
    vae = VAE(10, hidden=(128,), epochs=15, batch_size=50, lr=2e-3).connect(Observation(x))
    gmm = GMM(10, category=labels, max_iter=30).connect(vae)
    Graph([gmm]).fit(n_iter=4, seed=0)
    print(f"VAE+GMM on 300 MNIST digits: accuracy {gmm.accuracy:.3f}, ARI {gmm.ari:.3f}, NMI {gmm.nmi:.3f}")
    # chance (a random partition, Hungarian-matched) averages 0.18 here, at most 0.21 over 200 draws
    assert gmm.accuracy > 0.35
    assert gmm.ari > 0.15


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vae_gmm_on_all_3000_digits_against_training_separately(seed, shared_data):
    """SERKET's VAE+GMM example at full size: 5 sweeps of 20 VAE epochs with the GMM's prior
    means fed back, against the same VAE trained 100 epochs alone and a GMM fitted once, and a GMM given the
    integrated one's 5 updates on those latents (about 60 s per seed on one thread). Both GMMs keep the best of 4
    initial partitions (``n_init``): with one, the run can end with merged clusters (seed 0: 0.641 with one, 0.743
    with 4)."""
    data = np.load(shared_data("serket/mnist3000.npz"))  # tests/conftest.py: skipped without ../shared
    x, labels = data["image"], data["label"]
    torch.manual_seed(seed)
    vae = VAE(18, hidden=(256,), epochs=20, batch_size=100).connect(Observation(x))
    gmm = GMM(10, category=labels, n_init=4).connect(vae)
    Graph([gmm]).fit(n_iter=5, seed=seed)
    torch.manual_seed(seed)
    alone = VAE(18, hidden=(256,), epochs=100, batch_size=100).connect(Observation(x))
    separate = GMM(10, category=labels, n_init=4).connect(alone)
    Graph([separate]).fit(n_iter=1, seed=seed)
    # the GMM given as many sweeps as the integrated one's (5 updates): the GMM once had a fifth of them (review R7)
    fair = GMM(10, category=labels, n_init=4).connect(Observation(alone.latent))
    Graph([fair]).fit(n_iter=5, seed=seed)
    print(f"seed {seed}: integrated accuracy {gmm.accuracy:.3f} ARI {gmm.ari:.3f} NMI {gmm.nmi:.3f}; "
          f"separate, GMM once: accuracy {separate.accuracy:.3f} ARI {separate.ari:.3f} NMI {separate.nmi:.3f}; "
          f"GMM 5 updates: accuracy {fair.accuracy:.3f} ARI {fair.ari:.3f} NMI {fair.nmi:.3f}")
    assert gmm.accuracy > 0.6 and separate.accuracy > 0.5 and fair.accuracy > 0.5


def _saved_then_another_trained(build, path):
    """A graph trained one sweep and saved at ``path``; then another built alike and trained two sweeps of its own
    (Adam moments of other weights), and its VAE."""
    saved = build()
    saved.fit(1, seed=0)
    saved.save(path)
    other = build()
    other.fit(2, seed=5)
    return other, next(m for m in other.modules if isinstance(m, VAE))


def test_a_load_into_a_trained_module_takes_the_saved_optimiser_state(tmp_path):
    """docs/modules.md: a load restores the optimiser's state saved with the weights: a VAE that had trained before
    the load replaces Adam's moments of its own training by the saved ones, as a freshly built one takes them."""
    x, _ = patterns(60, 8)

    def build():
        return Graph([VAE(2, hidden=(8,), epochs=2, batch_size=20).connect(Observation(x))])

    used, vae = _saved_then_another_trained(build, tmp_path / "graph")
    fresh = build()
    fresh.load(tmp_path / "graph")
    used.load(tmp_path / "graph")
    for graph in (used, fresh):
        graph.fit(1, seed=3)  # and they train on alike
    weights = [[p.detach() for p in g.modules[-1].encoder.parameters()] for g in (used, fresh)]
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    assert vae.model.optimizer.state


def test_a_failed_graph_load_keeps_the_vaes_optimiser_state(tmp_path, monkeypatch):
    """A load replaces a trained VAE's Adam moments by the saved ones; when a later module's state then fails to
    load, the whole load is undone, the moments included."""
    x, _ = patterns(60, 8)

    def build():
        vae = VAE(2, hidden=(8,), epochs=2, batch_size=20, name="vae").connect(Observation(x))
        return Graph([GMM(3, name="g").connect(vae)])

    graph, vae = _saved_then_another_trained(build, tmp_path / "graph")
    moments = {k: v.clone() for k, v in vae.model.optimizer.state_dict()["state"][0].items()}

    def fail(self, state):
        raise RuntimeError("a state that does not fit")

    monkeypatch.setattr(GMM, "load_state_dict", fail)
    with pytest.raises(Exception, match="does not fit"):
        graph.load(tmp_path / "graph")
    kept = vae.model.optimizer.state_dict()["state"][0]
    assert all(torch.equal(kept[k], v) for k, v in moments.items())


def _vae_gmm(x):
    vae = VAE(2, hidden=(8,), epochs=2, batch_size=20, name="vae").connect(Observation(x))
    return Graph([GMM(3, name="g").connect(vae)])


def _weights(graph):
    vae = graph["vae"]
    return [p.detach().clone() for p in [*vae.encoder.parameters(), *vae.decoder.parameters()]]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def test_a_later_fit_seed_reseeds_the_vaes_training():
    """docs/modules.md "Randomness": the VAE's training streams (fit's draws and batch order) start from the graph's
    generator at every update, so a second `Graph.fit` with another seed trains already-trained modules
    differently; the same seeds on fresh builds give the same run, bit for bit."""
    x, _ = patterns(60, 8)
    runs = {}
    for key, seed in (("a", 1), ("b", 2), ("c", 1)):
        graph = _vae_gmm(x)
        graph.fit(1, seed=0)
        graph.fit(1, seed=seed)  # the VAE updates first, with the prior mean the GMM sent at the first sweep
        runs[key] = (_weights(graph), graph["vae"].latent.clone())
    assert not _same(runs["a"][0], runs["b"][0]) and not torch.equal(runs["a"][1], runs["b"][1])
    assert _same(runs["a"][0], runs["c"][0]) and torch.equal(runs["a"][1], runs["c"][1])


def test_save_load_fit_continues_the_uninterrupted_run_bit_for_bit(tmp_path):
    """Save after two sweeps, load into a freshly built graph and fit the remaining sweeps: the VAE's weights, its
    latent message and the GMM's estimates equal those of the run never saved (the optimiser's state is saved
    with the module, and the training streams start from each fit's generator)."""
    x, _ = patterns(60, 8)
    straight = _vae_gmm(x)
    straight.fit(2, seed=0)
    straight.fit(2, seed=1)
    saved = _vae_gmm(x)
    saved.fit(2, seed=0)
    saved.save(tmp_path / "graph")
    resumed = _vae_gmm(x)
    resumed.load(tmp_path / "graph")
    resumed.fit(2, seed=1)
    assert _same(_weights(resumed), _weights(straight))
    assert torch.equal(resumed["vae"].forward_message.value, straight["vae"].forward_message.value)
    assert torch.equal(resumed["g"].posterior, straight["g"].posterior)
    assert torch.equal(resumed["g"].fitted_.means, straight["g"].fitted_.means)
    assert resumed["vae"].loss_history == straight["vae"].loss_history


def test_a_save_without_the_optimiser_state_still_loads(tmp_path, monkeypatch):
    """A save written before the optimiser's state was kept loads with a fresh optimiser on the loaded weights."""
    from kizuna.modules.state import Stateful

    x, _ = patterns(60, 8)
    saved = _vae_gmm(x)
    saved.fit(1, seed=0)
    with monkeypatch.context() as m:  # the old format: no "optimizer" entry
        m.setattr(VAE, "state_dict", lambda self: {k: v for k, v in Stateful.state_dict(self).items()
                                                   if k != "optimizer"})
        saved.save(tmp_path / "graph")
    for graph in (_vae_gmm(x), saved):  # into a fresh module, and into one that has trained
        graph.load(tmp_path / "graph")
        assert _same(_weights(graph), _weights(saved)) and not graph["vae"].model.optimizer.state
        graph.fit(1, seed=1)
        assert graph["vae"].model.optimizer.state


def test_loading_an_unfitted_save_returns_a_trained_vae_to_the_unfitted_state(tmp_path):
    """A default-network VAE saved before its first update holds no networks: loading it into a trained VAE returns
    that one to the unfitted state, so its next update builds the networks as a freshly built module's does, and a
    later load of a trained save still finds networks to load into."""
    x, _ = patterns(60, 8)

    def build():
        return VAE(2, hidden=(8,), epochs=1, batch_size=20, name="v").connect(Observation(x))

    save_module(build(), tmp_path / "fresh.pt")
    trained = build()
    Graph([trained]).fit(1, seed=0)
    save_module(trained, tmp_path / "trained.pt")
    trained_weights = [p.detach().clone() for p in trained.encoder.parameters()]
    load_module(trained, tmp_path / "fresh.pt")
    assert trained.model is None and trained.encoder is None and trained.optimizer is None
    Graph([trained]).fit(1, seed=1)
    reference = build()
    Graph([reference]).fit(1, seed=1)
    assert _same([p.detach() for p in trained.encoder.parameters()],
                 [p.detach() for p in reference.encoder.parameters()])
    assert torch.equal(trained.latent, reference.latent) and trained.optimizer is trained.model.optimizer
    load_module(trained, tmp_path / "trained.pt")
    assert _same([p.detach() for p in trained.encoder.parameters()], trained_weights)


def test_a_vae_with_user_networks_refuses_a_save_without_networks(tmp_path):
    """A VAE built with user networks always saves them: a state without networks (a default-network VAE saved
    before its first update) is an error naming the problem, and the module is left as it was."""
    x, _ = patterns(60, 8)
    save_module(VAE(2, hidden=(8,), name="v").connect(Observation(x)), tmp_path / "fresh.pt")
    torch.manual_seed(0)
    user = VAE(2, Encoder(8, 2), Decoder(8, 2), hidden=(8,), epochs=1, batch_size=20, name="v")
    user.connect(Observation(x))
    model, encoder = user.model, user.encoder
    with pytest.raises(GraphError, match="holds no networks"):
        load_module(user, tmp_path / "fresh.pt")
    assert user.model is model and user.encoder is encoder
    Graph([user]).fit(1, seed=0)


def test_a_failed_graph_load_of_an_unfitted_save_keeps_the_trained_vae(tmp_path, monkeypatch):
    """Loading an unfitted save sets the VAE's model aside; when a later module's state then fails to load, the
    whole load is undone: the VAE keeps its model, networks and optimiser, and trains on."""
    x, _ = patterns(60, 8)
    _vae_gmm(x).save(tmp_path / "graph")  # never fitted
    graph = _vae_gmm(x)
    graph.fit(1, seed=0)
    vae = graph["vae"]
    model, weights = vae.model, _weights(graph)

    def fail(self, state):
        raise RuntimeError("a state that does not fit")

    monkeypatch.setattr(GMM, "load_state_dict", fail)
    with pytest.raises(Exception, match="does not fit"):
        graph.load(tmp_path / "graph")
    monkeypatch.undo()
    assert vae.model is model and vae.optimizer is model.optimizer and _same(_weights(graph), weights)
    graph.fit(1, seed=1)


def test_a_loaded_optimiser_takes_the_modules_learning_rate(tmp_path):
    """docs/modules.md: after a load the optimiser trains at the loading VAE's ``lr``, not the saved one's (it kept
    1e-3 while ``module.lr`` said 0.5)."""
    from module_checks import loaded_optimiser_takes_the_modules_lr

    x, _ = patterns(60, 8)
    loaded_optimiser_takes_the_modules_lr(
        lambda lr: VAE(2, hidden=(8,), epochs=1, batch_size=20, lr=lr, name="v").connect(Observation(x)),
        tmp_path / "v.pt")


@pytest.mark.parametrize("saved_dtype, data_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_a_vae_over_a_vae_loaded_from_a_save_of_another_dtype_trains_in_the_datas(tmp_path, saved_dtype,
                                                                                 data_dtype):
    """A VAE stacked on a VAE sizes its default networks at a load from the child's restored message, in the saved
    dtype; the next update moves the networks and Adam's moments to the data's dtype (the same Parameter objects;
    ``step`` keeps its dtype): it failed with "mat1 and mat2 must have the same dtype"."""
    x, _ = patterns(60, 8)

    def build(dtype):
        low = VAE(3, hidden=(8,), epochs=1, batch_size=20, name="low").connect(Observation(x.to(dtype)))
        top = VAE(2, hidden=(8,), epochs=1, batch_size=20, likelihood="normal", name="top").connect(low)
        return Graph([top])

    saved = build(saved_dtype)
    saved.fit(1, seed=0)
    saved.save(tmp_path / "graph")
    loaded = build(data_dtype)
    loaded.load(tmp_path / "graph")
    params = {name: list(loaded[name].model.optimizer.param_groups[0]["params"]) for name in ("low", "top")}
    steps = {name: [s["step"].dtype for s in loaded[name].model.optimizer.state.values()] for name in ("low", "top")}
    loaded.fit(1, seed=1)
    for name in ("low", "top"):
        vae = loaded[name]
        nets = [*vae.encoder.parameters(), *vae.decoder.parameters()]
        assert all(p.dtype == data_dtype for p in nets) and vae.latent.dtype == data_dtype
        assert all(a is b for a, b in zip(params[name], nets)) and len(params[name]) == len(nets)
        state = vae.model.optimizer.state.values()
        assert all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == data_dtype for s in state)
        assert [s["step"].dtype for s in state] == steps[name]


def test_an_update_without_a_generator_trains_from_fits_own_streams():
    """SERKET's own loop with a context that has no generator (``UpdateContext()``): the VAE crashed drawing its
    training seed from None; it trains, its streams continued by fit (and torch's global generator) as before, and a
    seeded global generator reproduces it."""
    from kizuna.modules.context import UpdateContext

    x = torch.rand(40, 6, generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        vae = VAE(2, hidden=(8,), epochs=1, batch_size=20).connect(Observation(x))
        vae.update(UpdateContext())
        runs.append(vae.latent.clone())
    assert runs[0].shape == (40, 2) and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])
