"""Plausible user slips named at construction (review W of stop 45, findings 1, 2 and 7).

* a bare number (or one object) where a sequence is due: ``features_shape=3`` in every distribution, ``[-2]`` (a raw
  integer overflow at the first draw), ``LadderVAE(5, 2, [8])``, ``NN(hidden=64)``, ``Graph(module)``,
  ``FlowList(flow)``: one rule (`kizuna._data.as_sequence` / `check_sizes`), refused with what to pass;
* ``Model(optimizer=<an optimizer instance>)`` / ``optimizer="adam"``: a TypeError saying to pass the class and
  ``optimizer_params`` (it was "'Adam' object is not callable");
* ``NN(in_dim=0)`` refused at construction; an HMM's negative ``tol`` is hmmlearn's and stays allowed.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import kizuna.distributions as D
import kizuna.modules as km
from kizuna.flows import ActNorm, FlowList, Reverse
from kizuna.losses import LogProb
from kizuna.models import GAN, LadderVAE, Model

SHAPE = r"features_shape must be a sequence of sizes \(the shape of one draw, e.g. \[2\] or \(2,\) for vectors of 2; " \
        r"\[\] for scalars\), got "

FAMILIES = {
    "Normal": lambda fs: D.Normal(var=["x"], loc=0.0, scale=1.0, features_shape=fs),
    "Bernoulli": lambda fs: D.Bernoulli(var=["x"], probs=0.3, features_shape=fs),
    "EnergyDistribution": lambda fs: D.EnergyDistribution(lambda x: x.pow(2).sum(-1), features_shape=fs),
}


# --- 1. a bare number where a shape is due ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_a_bare_number_or_a_non_positive_size_as_features_shape_is_named(family) -> None:
    """``features_shape=3`` was tuple()'s raw "'int' object is not iterable" (no class, no argument), and ``[-2]`` built
    a distribution whose first draw failed with "numel: integer multiplication overflow"."""
    build = FAMILIES[family]
    for bad, got in ((3, r"3 \(int\)"), ("3", r"'3' \(str\)"), (torch.tensor(3), r"tensor\(3\) \(Tensor\)")):
        with pytest.raises(ValueError, match=rf"^{family} p\(x\): {SHAPE}{got}$"):
            build(bad)
    for bad, at, value in (([-2], 0, "-2"), ([2, -1], 1, "-1"), ([2.5], 0, "2.5"), ([True], 0, "True")):
        with pytest.raises(ValueError, match=rf"^{family} p\(x\): features_shape\[{at}\] must be an integer >= 0, "
                                             rf"got {value}$"):
            build(bad)
    assert build([2, 0]).features_shape == (2, 0)  # torch's empty dimension, as a parameter of shape (0,) gives


def test_features_shape_given_as_any_sequence_of_integers_is_the_same_shape() -> None:
    """A list, tuple, torch.Size, 1-D tensor or numpy integers: one torch.Size of Python ints; the draws and densities
    are torch.distributions.Normal's."""
    shapes = ([2, 3], (2, 3), torch.Size([2, 3]), torch.tensor([2, 3]), np.array([2, 3]), [np.int64(2), 3])
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0))
    ref = torch.distributions.Normal(0.5, 2.0).log_prob(x).sum((1, 2))
    for shape in shapes:
        p = D.Normal(var=["x"], loc=0.5, scale=2.0, features_shape=shape)
        assert p.features_shape == torch.Size([2, 3]) and all(type(s) is int for s in p.features_shape)
        assert p.sample(batch_n=4)["x"].shape == (4, 2, 3)
        torch.testing.assert_close(p.get_log_prob({"x": x}), ref)


# --- 1. a bare number or one object where a list is due --------------------------------------------------------------

@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((5, 2, [8]), {}, r"z_dims must be a sequence of latent sizes, one per stochastic layer \(e.g. \[32, 16\]; \[32\] "
                      r"for one layer\), got 2 \(int\)"),
    ((5, [2], 8), {}, r"hidden must be a sequence of widths, one per stochastic layer \(e.g. \[400, 200\]; \[400\] "
                      r"for one layer\), got 8 \(int\)"),
    ((5, [2, 2], [8, 8]), {"top_down": 8},
     r"top_down must be a sequence of widths, one per prior p\(z_i\|z_\(i\+1\)\), got 8 \(int\)"),
    ((5, "2", [8]), {}, r"z_dims must be a sequence of latent sizes.* got '2' \(str\)"),
])
def test_ladder_vae_sizes_that_are_not_sequences_are_named(args, kwargs, message) -> None:
    """``LadderVAE(5, 2, [8])`` raised "object of type 'int' has no len()"."""
    with pytest.raises(ValueError, match=rf"^LadderVAE: {message}$"):
        LadderVAE(*args, **kwargs)


def test_ladder_vae_takes_any_sequence_of_integer_sizes() -> None:
    """Tuples and numpy integers build the model a list of ints builds (same layer shapes)."""
    a = LadderVAE(5, (3, np.int64(2)), np.array([8, 6]), top_down=(4,))
    b = LadderVAE(5, [3, 2], [8, 6], top_down=[4])
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]


def test_nn_module_hidden_and_dims_are_checked_at_construction() -> None:
    """``NN(hidden=64)`` raised "'int' object is not iterable"; ``NN(in_dim=0)`` was taken and failed only when the
    graph ran."""
    widths = r"hidden must be a sequence of layer widths, e.g. \(64,\) or \[128, 64\], got "
    for hidden, got in ((64, r"64 \(int\)"), ("64", r"'64' \(str\)")):
        with pytest.raises(ValueError, match=rf"^NN nn: {widths}{got}$"):
            km.NN(hidden=hidden)
    with pytest.raises(ValueError, match=r"^NN nn: hidden\[1\] must be an integer >= 1, got 0$"):
        km.NN(hidden=[8, 0])
    for key, bad in (("in_dim", 0), ("out_dim", -1), ("in_dim", 2.5), ("out_dim", True)):
        with pytest.raises(ValueError, match=rf"^NN nn: {key} must be an integer >= 1, got {bad!r}$"):
            km.NN(**{key: bad})
    nn_ = km.NN(in_dim=np.int64(3), out_dim=2, hidden=np.array([16, 8]))
    assert (nn_.in_dim, nn_.out_dim, nn_.hidden) == (3, 2, (16, 8))
    assert all(type(v) is int for v in (nn_.in_dim, *nn_.hidden)) and km.NN().in_dim is None


def test_nn_module_with_checked_dims_builds_the_default_mlp_of_those_widths() -> None:
    """Given in_dim / out_dim / hidden as numpy integers, the default MLP is built at the first update with those
    widths (3 -> 16 -> 8 -> 1) and its predictions are the network's output."""
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    nn_ = km.NN(in_dim=np.int64(3), out_dim=np.int64(1), hidden=np.array([16, 8]), target=x[:, :1], epochs=1,
                random_state=0)
    nn_.connect(km.Observation(x)).update()
    linear = [tuple(m.weight.shape) for m in nn_.net.modules() if isinstance(m, torch.nn.Linear)]
    assert linear == [(16, 3), (8, 16), (1, 8)]
    with torch.no_grad():
        torch.testing.assert_close(nn_.prediction, nn_.net(x))


def test_graph_and_flow_list_given_one_object_say_to_pass_a_list() -> None:
    """``Graph(gmm)`` / ``FlowList(ActNorm(6))`` raised "'GMM' object is not iterable"; a list of one still works."""
    x = torch.cat([torch.randn(10, 2) - 4, torch.randn(10, 2) + 4])
    gmm = km.GMM(2, name="g").connect(km.Observation(x))
    with pytest.raises(TypeError, match=r"^Graph: modules must be a list of modules, e.g. Graph\(\[gmm\]\) for one, "
                                        r"got GMM\(name='g', .*\(GMM\)$"):
        km.Graph(gmm)
    assert [m.name for m in km.Graph([gmm]).modules] == ["observation", "g"]
    with pytest.raises(TypeError, match=r"^FlowList: flow_list must be a list of flows, e.g. FlowList\(\[flow\]\) for "
                                        r"one, got ActNorm\(in_features=6\) \(ActNorm\)$"):
        FlowList(ActNorm(6))
    f = FlowList((ActNorm(3), Reverse(3)))  # any sequence of flows, one FlowList too
    x = torch.randn(4, 3)
    torch.testing.assert_close(FlowList(f)(x), f(x))


# --- 2. Model(optimizer=...) given an instance or a name --------------------------------------------------------------

def _loss_and_params():
    p = D.Normal(var=["x"], loc=torch.nn.Parameter(torch.zeros(2)), scale=1.0)
    return -LogProb(p).mean(), p


def test_an_optimizer_instance_or_name_is_a_type_error_saying_to_pass_the_class() -> None:
    """``optimizer=torch.optim.Adam(params)`` (the PyTorch idiom) and ``optimizer="adam"`` raised "'Adam' object is not
    callable" / "'str' object is not callable"."""
    loss, p = _loss_and_params()
    head = r"^Model: optimizer must be an optimizer class, e.g. optimizer=torch.optim\.{cls}, with its options in " \
           r"optimizer_params \(e.g. optimizer_params=\{{'lr': {lr}\}}\): the Model builds it over its " \
           r"distributions' parameters; got {got}$"
    with pytest.raises(TypeError, match=head.format(cls="SGD", lr="0.1", got=r"an optimizer already built \(SGD\)")):
        Model(loss, optimizer=torch.optim.SGD(p.parameters(), lr=0.1))
    for name, cls in (("adam", "Adam"), ("SGD", "SGD"), ("rmsprop", "RMSprop"), ("nesterov", "Adam")):
        with pytest.raises(TypeError, match=head.format(cls=cls, lr="0.001", got=rf"'{name}' \(str\)")):
            Model(loss, optimizer=name)
    with pytest.raises(TypeError, match=head.format(cls="Adam", lr="0.001", got=r"None \(NoneType\)")):
        Model(loss, optimizer=None)


def test_an_optimizer_class_or_factory_still_builds_and_steps() -> None:
    """A class or any callable that builds one from the parameters (functools.partial) is taken: one SGD step moves
    the mean by lr times the gradient of -log N(x; mu, 1), mean over rows: mu - mean(x)."""
    x = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    for optimizer, params in ((torch.optim.SGD, {"lr": 0.5}), (functools.partial(torch.optim.SGD, lr=0.5), None)):
        loss, p = _loss_and_params()
        model = Model(loss, optimizer=optimizer, optimizer_params=params)
        model.train({"x": x})
        torch.testing.assert_close(p.loc.detach(), 0.5 * x.mean(0))


def test_a_gans_discriminator_optimizer_instance_is_named_too() -> None:
    """GAN builds its discriminator's optimiser through Model: the same TypeError, not "'Adam' object is not
    callable"."""
    class G(D.Normal):
        def __init__(self):
            super().__init__(var=["x"], cond_var=["z"], scale=1.0)
            self.net = torch.nn.Linear(2, 3)

        def forward(self, z):
            return {"loc": self.net(z)}

    class Disc(D.Bernoulli):
        def __init__(self):
            super().__init__(var=["t"], cond_var=["x"], name="d")
            self.net = torch.nn.Linear(3, 1)

        def forward(self, x):
            return {"logits": self.net(x)}

    prior = D.Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    d = Disc()
    with pytest.raises(TypeError, match=r"^Model: optimizer must be an optimizer class.*got an optimizer already "
                                        r"built \(Adam\)$"):
        GAN((G() * prior).marginalize_var("z"), d, d_optimizer=torch.optim.Adam(d.parameters()))


# --- 7. HMM tol (hmmlearn's meaning kept) -----------------------------------------------------------------------------

def test_a_negative_hmm_tol_keeps_hmmlearns_meaning() -> None:
    """Not refused (unlike GaussianMixture's, scikit-learn's rule): hmmlearn stops when the gain is below ``tol``, so a
    negative one runs every iteration while the log-likelihood rises (``tol=-np.inf`` is hmmlearn's idiom for a fixed
    number of iterations, used against hmmlearn in the parity tests). A pin of the documented behaviour."""
    x = torch.cat([torch.randn(30, 1) * 0.1, torch.randn(30, 1) * 0.1 + 3.0]).double()
    a = km.HiddenMarkovModel(2, tol=-1.0, n_iter=5, random_state=0).fit(x)
    b = km.HiddenMarkovModel(2, tol=-np.inf, n_iter=5, random_state=0).fit(x)
    assert len(a.history_) == 5 and a.history_ == b.history_
