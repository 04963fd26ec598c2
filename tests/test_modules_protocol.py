"""The module protocol: typed messages, Observation, connect / update errors, the MP / SIR step,
the seeded samplers, and a sweep over every module of the table below.

Statistical tests use fixed seeds; each states its false-alarm rate.
"""

import math

import numpy as np
import pytest
import scipy.stats as st
import torch
from module_checks import PriorSource

from kizuna import modules as km
from kizuna.modules import (
    GMM,
    NN,
    VAE,
    ClassModule,
    GraphError,
    Message,
    MessageKindError,
    MessageShapeError,
    Module,
    Observation,
    combine,
)
from kizuna.modules.rng import rng_from, sample_classes, sample_dirichlet, sample_gamma
from kizuna.modules.symbols import encode_strings

torch.set_num_threads(1)


def blobs(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n // 2, 2, generator=g) - 3, torch.randn(n - n // 2, 2, generator=g) + 3])
    return x, torch.tensor([0] * (n // 2) + [1] * (n - n // 2))


# ----------------------------------------------------------------------------- messages
@pytest.mark.parametrize("kind, value, error, match", [
    ("belief", torch.zeros(2, 2), ValueError, "kind must be one of"),
    ("data", [[1.0]], TypeError, "value must be a tensor"),
    ("data", torch.zeros(2, 2, dtype=torch.long), TypeError, "floating"),
    ("latent", torch.zeros(3), MessageShapeError, r"2-D .* got shape \(3,\)"),
    ("latent", torch.tensor([[0.0, float("nan")]]), ValueError, "NaN or inf"),
    ("posterior", torch.tensor([[0.2, 0.2]]), ValueError, "rows must sum to 1"),
    ("prior", torch.tensor([[1.5, -0.5]]), ValueError, "non-negative"),
])
def test_message_validation(kind, value, error, match):
    with pytest.raises(error, match=match):
        Message("sender", None, "x", kind, value)


def test_message_converts_numpy_and_detaches():
    m = Message("a", "b", "z", "latent", np.ones((3, 2)))
    assert isinstance(m.value, torch.Tensor) and m.n == 3 and m.width == 2
    w = torch.ones(2, 2, requires_grad=True)
    assert not Message("a", None, "z", "latent", w * 2).value.requires_grad
    with pytest.raises(AttributeError):
        m.kind = "data"  # frozen


def test_observation():
    obs = Observation(np.arange(6).reshape(3, 2), name="obs")
    assert obs.data.dtype == torch.get_default_dtype() and obs.forward_message.kind == "data"
    assert not obs.learnable and obs.forward_message.sender == "obs"
    assert Observation(torch.zeros(5)).data.shape == (5, 1)
    with pytest.raises(ValueError, match="Observation observation: data contains inf at row 0, column 1"):
        Observation(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match=r"must be 2-D .*\(2, 3, 3\)"):
        Observation(np.zeros((2, 3, 3)))
    with pytest.raises(GraphError, match="leaf"):
        obs.connect(Observation(np.zeros((3, 2))))


# ----------------------------------------------------------------------------- connect / update
def test_connect_checks_kinds_naming_both_modules():
    gmm = GMM(2, name="gmm1")
    vae = VAE(2, name="vae1")
    expected = r"vae1 \(VAE\) accepts .*'data', 'latent'.*gmm1 \(GMM\) sends 'posterior'"
    with pytest.raises(MessageKindError, match=expected):
        vae.connect(gmm)
    assert isinstance(MessageKindError("x"), TypeError)
    with pytest.raises(TypeError, match="wrap arrays in kizuna.modules.Observation"):
        gmm.connect(np.zeros((3, 2)))
    with pytest.raises(GraphError, match="itself"):
        gmm.connect(gmm)
    obs = Observation(np.zeros((3, 2)))
    assert gmm.connect(obs) is gmm and obs.parent is gmm and gmm.children == [obs]
    with pytest.raises(GraphError, match="already a child"):
        gmm.connect(obs)


def test_sample_count_mismatch_is_named_at_first_update():
    nn_ = NN(hidden=(4,), epochs=1, name="nn1").connect(Observation(torch.zeros(5, 2), name="a"),
                                                         Observation(torch.zeros(4, 1), name="b"))
    with pytest.raises(MessageShapeError, match=r"nn1: .* a sends \(5, 2\), b sends \(4, 1\)"):
        nn_.update()


def test_prior_shape_mismatches_are_named():
    x, _ = blobs()
    gmm = GMM(2, name="gmm1", max_iter=2).connect(Observation(x))
    top = PriorSource(torch.full((40, 3), 1 / 3), name="top").connect(gmm)
    gmm.update()
    top.update()
    expected = r"gmm1 has 2 classes, but the prior message from top has shape \(40, 3\)"
    with pytest.raises(MessageShapeError, match=expected):
        gmm.update()
    gmm.receive_backward(Message("top", "gmm1", "c", "prior", torch.full((7, 2), 0.5)))
    with pytest.raises(MessageShapeError, match=r"backward message from top has shape \(7, 2\)"):
        gmm.update()
    with pytest.raises(MessageKindError, match="receives backward messages of kind"):
        gmm.receive_backward(Message("top", "gmm1", "z", "prior_mean", torch.zeros(40, 2)))


def test_update_order_and_missing_children_errors():
    with pytest.raises(GraphError, match="gmm1 has no children"):
        GMM(2, name="gmm1").update()
    x, _ = blobs()
    gmm = GMM(2, name="gmm1").connect(Observation(x))
    top = PriorSource(torch.full((40, 2), 0.5), name="top").connect(gmm)
    with pytest.raises(RuntimeError, match="child gmm1 has not sent a forward message yet"):
        top.update()


def test_several_parents_multiply_their_class_priors():
    x, _ = blobs()
    gmm = GMM(2, name="g").connect(Observation(x))
    a, b = torch.rand(40, 2) + 0.1, torch.rand(40, 2) + 0.1
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    for name, p in (("pa", a), ("pb", b)):
        PriorSource(p, name=name).connect(gmm)
    assert gmm.parents[0].name == "pa"
    with pytest.raises(GraphError, match="2 parents"):
        _ = gmm.parent
    gmm.receive_backward(Message("pa", "g", "c", "prior", a))
    gmm.receive_backward(Message("pb", "g", "c", "prior", b))
    expected = a * b / (a * b).sum(1, keepdim=True)
    torch.testing.assert_close(gmm.backward_in.value, expected)
    assert gmm.backward_in.sender == "pa+pb"
    # priors with no class in common on a row: named (the softmax of -inf was NaN, reported as such by Message)
    a[3], b[3] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    gmm.receive_backward(Message("pa", "g", "c", "prior", a))
    gmm.receive_backward(Message("pb", "g", "c", "prior", b))
    with pytest.raises(ValueError, match="row 3: the class priors of pa, pb have no class in common"):
        _ = gmm.backward_in


# ----------------------------------------------------------------------------- MP and SIR
def chain(rows):
    """c1 -> c2 -> x: the message into c2 and the exact posterior p(c2|x) by enumerating (c1, c2)."""
    p1 = torch.tensor([0.3, 0.7], dtype=torch.float64)
    trans = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]], dtype=torch.float64)
    means = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    x = torch.tensor(0.4, dtype=torch.float64)
    lik = torch.distributions.Normal(means, 1.0).log_prob(x).exp()
    joint = p1[:, None] * trans * lik[None, :]  # p(c1, c2, x), enumerated
    exact = joint.sum(0) / joint.sum()
    message = (p1[:, None] * trans).sum(0)
    return message.expand(rows, 3), torch.log(lik).expand(rows, 3), exact, message, lik


def test_mp_is_the_exact_posterior_of_a_chain():
    msg, ll, exact, _, _ = chain(4)
    torch.testing.assert_close(combine(msg, ll, "mp"), exact.expand(4, 3), rtol=1e-12, atol=1e-12)


def test_sir_agrees_with_the_exact_posterior_in_expectation():
    rows, p = 2000, 500
    msg, ll, exact, message, lik = chain(rows)
    est = combine(msg, ll, "sir", n_particles=p, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(est.sum(1), torch.ones(rows, dtype=est.dtype))
    # rows are independent: a z-test on their mean. Tolerance = 4.5 standard errors (two-sided
    # false-alarm rate 7e-6 per class) + the self-normalised importance-sampling bias bound
    # 3 (1 + cv^2) / P, cv^2 the squared coefficient of variation of the weights under the proposal.
    w_mean = (message * lik).sum()
    cv2 = (message * lik**2).sum() / w_mean**2 - 1
    se = est.std(0) / math.sqrt(rows)
    tol = 4.5 * se + 3 * (1 + cv2) / p
    assert ((est.mean(0) - exact).abs() <= tol).all(), (est.mean(0), exact, tol)


def test_combine_errors():
    msg = torch.tensor([[1.0, 0.0]])
    with pytest.raises(ValueError, match="row 0 has no class"):
        combine(msg, torch.tensor([[-math.inf, 0.0]]))
    with pytest.raises(ValueError, match="zero likelihood"):
        combine(msg, torch.tensor([[-math.inf, 0.0]]), "sir", n_particles=10)
    with pytest.raises(ValueError, match="method must be one of"):
        combine(msg, torch.zeros(1, 2), "bp")
    with pytest.raises(ValueError, match=r"must both be N x K"):
        combine(msg, torch.zeros(2, 2))


# ----------------------------------------------------------------------------- samplers
def test_sample_classes_chi_square():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.4], dtype=torch.float64)
    n = 20000
    draws = sample_classes(probs.expand(n, 5), torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=5).double()
    assert counts[3] == 0  # a zero-mass class is never drawn
    keep = probs > 0
    p = st.chisquare(counts[keep].numpy(), (n * probs[keep]).numpy()).pvalue
    assert p > 1e-3  # false-alarm rate 1e-3


@pytest.mark.parametrize("a", [0.05, 0.7, 1.0, 4.5])
def test_sample_gamma_against_scipy(a):
    x = sample_gamma(torch.full((20000,), a, dtype=torch.float64), torch.Generator().manual_seed(1))
    assert st.kstest(x.numpy(), st.gamma(a).cdf).pvalue > 1e-3  # false-alarm rate 1e-3


def test_sample_dirichlet_moments():
    alpha = torch.tensor([0.5, 2.0, 3.5], dtype=torch.float64)
    x = sample_dirichlet(alpha.expand(20000, 3), torch.Generator().manual_seed(2))
    mean, a0 = alpha / alpha.sum(), alpha.sum()
    sd = torch.sqrt(mean * (1 - mean) / (a0 + 1) / 20000)
    assert ((x.mean(0) - mean).abs() < 4.5 * sd).all()  # 4.5 sigma: false-alarm rate 7e-6 per coordinate
    assert torch.allclose(x.sum(1), torch.ones(20000, dtype=torch.float64))


def test_rng_from_is_reproducible_and_leaves_the_global_state():
    state = torch.get_rng_state()
    with rng_from(torch.Generator().manual_seed(5)):
        a = torch.rand(3)
    with rng_from(torch.Generator().manual_seed(5)):
        b = torch.rand(3)
    assert torch.equal(a, b) and torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------- module sweep
def _gmm(alg):
    return lambda: (GMM(2, algorithm=alg, max_iter=5, random_state=0), torch.randn(30, 2))


def _counts():
    return torch.poisson(torch.full((30, 5), 3.0), generator=torch.Generator().manual_seed(1))


EXAMPLES = {
    "gmm-gibbs": _gmm("gibbs"),
    "gmm-collapsed": _gmm("collapsed"),
    "gmm-vb": _gmm("vb"),
    "gmm-em": _gmm("em"),
    "gmm-diag": lambda: (GMM(2, covariance_type="diag", max_iter=5, random_state=0), torch.randn(30, 2)),
    "vae-bernoulli": lambda: (VAE(3, hidden=(8,), epochs=1, batch_size=10), torch.rand(30, 6)),
    "vae-normal": lambda: (VAE(3, hidden=(8,), epochs=1, likelihood="normal"), torch.randn(30, 6)),
    "nn": lambda: (NN(hidden=(4,), epochs=1, target=torch.randn(30, 2)), torch.randn(30, 3)),
    "lda": lambda: (km.LDA(2, max_iter=5), _counts()),
    "mlda": lambda: (km.MLDA(2, max_iter=5, weights=[10]), _counts()),
    "mm": lambda: (km.MM(n_iter=2), torch.randn(30, 2)),
    "hmm-gaussian": lambda: (km.HMM(2, n_iter=3, covariance_type="full"), torch.randn(30, 2).double()),
    "spatial-concept": lambda: (km.SpatialConcept(3, sweeps=3, n_init=2), torch.randn(30, 2)),
    "tail-to-tail": lambda: (km.TailToTail(), torch.randn(30, 2)),
    "word-segmenter": lambda: (km.WordSegmenter(max_word_length=4, n_iter=2, min_count=1),
                               encode_strings(["abcab", "cabc", "ababc"] * 10)),
}


def _em_gmm(data, k=2, name="gmm"):
    return GMM(k, algorithm="em", random_state=0, name=name).connect(Observation(data, name=f"{name}-data"))


CHILDREN = {
    "mm": lambda data: (_em_gmm(data),),
    "spatial-concept": lambda data: (_em_gmm(data, 3), Observation(_counts(), name="words")),
    "tail-to-tail": lambda data: (_em_gmm(data, name="a"), _em_gmm(data + 1, name="b")),
}


def _connected(name):
    module, data = EXAMPLES[name]()
    return module.connect(*CHILDREN.get(name, lambda d: (Observation(d),))(data)), data


def test_every_module_class_of_this_layer_is_in_the_sweep():
    exported = {getattr(km, n) for n in km.__all__}
    bases = {Module, ClassModule, Observation}
    modules = {c for c in exported if isinstance(c, type) and issubclass(c, Module)} - bases
    covered = {type(make()[0]) for make in EXAMPLES.values()}
    assert modules <= covered, f"no sweep entry for {sorted(c.__name__ for c in modules - covered)}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_sweep_update_message_and_round_trip(name, tmp_path):
    torch.manual_seed(0)
    module, data = _connected(name)
    km.Graph([module]).fit(n_iter=1, seed=0)
    up = module.forward_message
    assert up.kind == module.sends and up.sender == module.name and up.n == data.shape[0]
    assert isinstance(module, Module) and module.n_updates == 1
    path = km.save_module(module, tmp_path / "m.pt")
    twin, _ = _connected(name)
    km.load_module(twin, path)
    torch.testing.assert_close(twin.forward_message.value, up.value)
    for key, value in module.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(twin.state_dict()[key], value)
    if isinstance(module, ClassModule):
        torch.testing.assert_close(twin.posterior, module.posterior)
    km.Graph([twin]).fit(n_iter=1, seed=1)  # a loaded module keeps learning
    with pytest.raises(GraphError, match="different module"):
        km.load_module(GMM(3, algorithm="em").connect(Observation(data)), path)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_sweep_graph_fit_is_reproducible_and_leaves_the_global_generator(name):
    """Two runs of a seeded graph from different global RNG states: bitwise the same messages, and torch's
    global generator as it was (networks too are initialised from the graph's generator)."""
    outs = []
    for global_seed in (1, 2):
        torch.manual_seed(0)  # the same data
        module, _ = _connected(name)
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        km.Graph([module]).fit(n_iter=2, seed=0)
        assert torch.equal(torch.get_rng_state(), state)
        outs.append(module.forward_message.value)
    assert torch.equal(outs[0], outs[1])


def test_two_unnamed_parents_of_one_name_are_named_and_a_graph_s_numbering_moves_their_messages():
    """A child kept its backward messages under the sender's name: two unnamed parents of one class (both 'prior
    source' under the default name) overwrote each other silently, and a Graph's numbering (priorsource0, ...) left
    the old entry behind, multiplied in at every later sweep."""
    x, _ = blobs()
    a, b = torch.rand(40, 2) + 0.1, torch.rand(40, 2) + 0.1
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    gmm = GMM(2, name="g").connect(Observation(x))
    pa, pb = PriorSource(a).connect(gmm), PriorSource(b).connect(gmm)
    assert pa.name == pb.name == "priorsource"
    gmm.update()
    pa.update()
    with pytest.raises(GraphError, match="g has two parents named 'priorsource'"):
        pb.update()
    # a Graph numbers them, and the message pa sent before moves with its name
    gmm = GMM(2, name="g").connect(Observation(x))
    pa, pb = PriorSource(a).connect(gmm), PriorSource(b).connect(gmm)
    gmm.update()
    pa.update()
    km.Graph([pa, pb])
    assert (pa.name, pb.name) == ("priorsource0", "priorsource1")
    assert list(gmm.backward_messages) == ["priorsource0"]
    assert gmm.backward_messages["priorsource0"].sender == "priorsource0"
    pb.update()
    torch.testing.assert_close(gmm.backward_in.value, a * b / (a * b).sum(1, keepdim=True))
    assert gmm.backward_in.sender == "priorsource0+priorsource1"


def test_a_gmm_that_is_an_nn_s_target_keeps_its_mixing_weights():
    """An NN sends a class prior to its source child only; a GMM that is its target dropped its mixing weights (it
    has a parent) and received no prior: uniform classes. Now it clusters as the same GMM alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(270, 1, generator=g, dtype=torch.float64),
                   2.5 + torch.randn(30, 1, generator=g, dtype=torch.float64)])
    s = torch.randn(300, 2, generator=g, dtype=torch.float64)
    alone = GMM(2, algorithm="em", random_state=0).connect(Observation(x))
    km.Graph([alone]).fit(1, seed=0)
    target = GMM(2, algorithm="em", random_state=0).connect(Observation(x))
    net = NN(in_dim=2, epochs=1).connect(Observation(s, name="src"), target)
    km.Graph([net]).fit(1, seed=0)
    assert target.backward_in is None and not net.sends_prior_to(target)
    torch.testing.assert_close(target.posterior, alone.posterior)
    assert sorted(np.round(np.asarray(target.weights_), 2)) == [0.32, 0.68]  # not uniform (0.503 / 0.497 before)


def test_tail_to_tail_settings_and_conflicting_posteriors_are_named():
    with pytest.raises(ValueError, match="smoothing must be a finite number >= 0, got nan"):
        km.TailToTail(smoothing=float("nan"))
    x, _ = blobs()
    one, two = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    hard_a = torch.stack([one] + [two] * 20 + [one] * 19)  # b's labels are swapped to agree on rows 1-39 ...
    hard_b = torch.stack([one] + [one] * 20 + [two] * 19)  # ... and then disagree wholly on row 0
    ga, gb = GMM(2, name="ga").connect(Observation(x)), GMM(2, name="gb").connect(Observation(x))
    a, b = PriorSource(hard_a, name="a").connect(ga), PriorSource(hard_b, name="b").connect(gb)
    t2t = km.TailToTail(smoothing=0).connect(a, b)
    for m in (ga, gb, a, b):
        m.update()
    with pytest.raises(ValueError, match="row 0: the posteriors of a, b have no class in common"):
        t2t.update()


def test_a_schedule_entry_that_is_not_a_dict_is_named():
    x, _ = blobs()
    gmm = GMM(2, name="g").connect(Observation(x))
    with pytest.raises(ValueError, match=r"schedule: 'g' must map its settings to their values"):
        km.Graph([gmm]).fit(1, seed=0, schedule={"g": [1]})
