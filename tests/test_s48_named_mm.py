"""Stop 48: ``Loss.named`` gives a labelled node over the loss (it changed the node itself, so one node named in two
losses was reported under the last name in both), and the Markov model's ``sample`` (every other classical module had
one).
"""

import copy
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

import kizuna.modules as km
from kizuna.distributions import Normal
from kizuna.formula import Loss
from kizuna.losses import Expectation as E
from kizuna.losses import KullbackLeibler, LogProb, Parameter, ValueLoss
from kizuna.models import Model


class Encoder(Normal):
    """q(z|x), counting its forward calls."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = torch.nn.Linear(2, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return {"loc": self.net(x), "scale": torch.ones_like(x)}


class Decoder(Normal):
    """p(x|z), counting its forward calls."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = torch.nn.Linear(2, 2)
        self.calls = 0

    def forward(self, z):
        self.calls += 1
        return {"loc": self.net(z), "scale": torch.ones_like(z)}


def _parts():
    torch.manual_seed(0)
    q, p = Encoder(), Decoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="prior")
    return q, p, KullbackLeibler(q, prior), E(q, LogProb(p))


def _counting(node: Loss) -> list[int]:
    """Counts the evaluations of ``node`` itself (its ``_value`` calls)."""
    calls = [0]
    compute = node._value

    def counted(ctx):
        calls[0] += 1
        return compute(ctx)

    node._value = counted
    return calls


# --------------------------------------------------------------------------------------------------------- named
def test_one_node_named_in_two_losses_reports_each_loss_s_name():
    """The review's case (RD finding 2): one KL node named "KL" in one loss and "beta*KL" in another; loss a reported
    ``['beta*KL']`` (the last name given)."""
    kl = KullbackLeibler(Normal(var=["z"], loc=0.0, scale=2.0, features_shape=[1], name="q"),
                         Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="p"))
    a = (kl.named("KL") * 1.0).mean()
    b = (kl.named("beta*KL") * 0.5).mean()
    value_a, terms_a = a.eval({}, return_terms=True)
    value_b, terms_b = b.eval({}, return_terms=True)
    exact = np.log(0.5) + (4.0 - 1.0) / 2  # KL(N(0, 2^2) || N(0, 1)) = log(1/2) + (4 + 0 - 1) / 2
    assert list(terms_a) == ["KL"] and list(terms_b) == ["beta*KL"]
    assert terms_a["KL"].item() == pytest.approx(exact, rel=1e-6)
    assert terms_b["beta*KL"].item() == pytest.approx(exact, rel=1e-6)
    assert value_b.item() == pytest.approx(0.5 * exact, rel=1e-6)
    assert kl.label == str(kl) == "KL[q(z)||p(z)]"  # the node itself is left unnamed
    assert kl.named("KL") is not kl


def test_fit_history_reports_each_loss_s_name():
    q, p, kl, rec = _parts()
    x = {"x": torch.randn(12, 2, generator=torch.Generator().manual_seed(1))}
    first = Model((kl.named("KL") - rec.named("rec")).mean(), distributions=[q, p])
    second = Model((kl.named("beta*KL") * 0.5 - rec).mean(), distributions=[q, p])  # built after the first
    history = first.fit(x, epochs=1, batch_size=6, quiet=True, seed=0)
    assert list(history.terms) == ["KL", "rec"]
    assert list(second.fit(x, epochs=1, batch_size=6, quiet=True, seed=0).terms) == [
        "beta*KL", "E_{q(z|x)}[log p(x|z)]"]


def test_named_values_and_gradients_equal_the_unnamed_loss_bitwise():
    q, p, kl, rec = _parts()
    x = {"x": torch.randn(5, 2, generator=torch.Generator().manual_seed(2))}
    params = list(q.parameters()) + list(p.parameters())
    out = []
    for loss in ((kl - 0.5 * rec).mean(), (kl.named("KL") - 0.5 * rec.named("rec")).mean(),
                 (kl - 0.5 * rec).mean().named("total")):
        torch.manual_seed(3)  # the expectation's draw
        value = loss.eval(x)
        out.append((value, torch.autograd.grad(value, params)))
    for value, grads in out[1:]:
        assert torch.equal(value, out[0][0])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, out[0][1]))


def test_a_named_node_is_evaluated_once_per_evaluation():
    """One node under two names (and bare) in one loss: computed once, its networks run once; the expectation's one
    draw gives every name the same value."""
    q, p, kl, rec = _parts()
    kl_calls, rec_calls = _counting(kl), _counting(rec)
    loss = (kl.named("A") + 2 * kl.named("B") + kl - rec.named("r1") - rec.named("r2")).mean()
    value, terms = loss.eval({"x": torch.randn(4, 2)}, return_terms=True)
    assert (kl_calls[0], rec_calls[0], q.calls, p.calls) == (1, 1, 1, 1)
    assert list(terms) == ["A", "B", "KL[q(z|x)||prior(z)]", "r1", "r2"]
    assert torch.equal(terms["A"], terms["B"]) and torch.equal(terms["r1"], terms["r2"])
    torch.testing.assert_close(3 * terms["A"] + terms["B"] - terms["r1"] - terms["r2"], value)


def test_the_same_name_given_twice_is_one_term():
    _, _, kl, rec = _parts()
    _, terms = (kl.named("KL") + kl.named("KL") - rec).mean().eval({"x": torch.randn(3, 2)}, return_terms=True)
    assert list(terms) == ["KL", "E_{q(z|x)}[log p(x|z)]"]


def test_named_prints_as_the_loss_and_renaming_replaces_the_name():
    _, _, kl, rec = _parts()
    for bare, named in [(kl, kl.named("KL")), ((kl - rec), (kl - rec).named("s")),
                        ((kl - rec) * 2, (kl - rec).named("s") * 2),
                        (ValueLoss(-2) * kl, ValueLoss(-2).named("c") * kl),  # no brackets around a left -2
                        (kl - ValueLoss(-2) * rec, kl - ValueLoss(-2).named("c") * rec),
                        (kl ** ValueLoss(-1), kl ** ValueLoss(-1).named("e")),
                        (-(kl + rec), -(kl + rec).named("s")), (E(rec.p, kl), E(rec.p, kl.named("KL")))]:
        assert str(named) == str(bare) and named.to_latex() == bare.to_latex() and repr(named) != ""
    renamed = kl.named("a").named("b")
    assert renamed.label == "b" and renamed.loss1 is kl and kl.label == str(kl)
    assert rec.named("rec").p is rec.p and rec.named("rec").sample_shape == rec.sample_shape  # read through
    with pytest.raises(TypeError, match="named takes the term's label \\(a str\\), got int 3"):
        kl.named(3)


def test_named_constants_and_parameters_stay_numbers():
    """A named number constant (or a parameter given a number) still meets the other operand as the Python number,
    in a float64 evaluation (not 0.1 rounded to float32), and is reported."""
    q = Normal(var=["x"], loc=torch.zeros(1, dtype=torch.float64), scale=torch.ones(1, dtype=torch.float64))
    x = torch.tensor([[0.3]], dtype=torch.float64)
    log_q = LogProb(q).eval({"x": x})
    for loss, number in ((ValueLoss(0.1).named("b") * LogProb(q), 0.1),
                         ((ValueLoss(0.1).named("b") * 2.0) * LogProb(q), 0.2),
                         (Parameter("beta").named("beta") * LogProb(q), 0.1)):
        value, terms = loss.eval({"x": x, "beta": 0.1}, return_terms=True)
        assert value.dtype == torch.float64 and torch.equal(value, number * log_q)
        assert "b" in terms or "beta" in terms


def test_named_loss_deepcopies_and_pickles():
    kl = KullbackLeibler(Normal(var=["z"], loc=0.5, scale=2.0, features_shape=[1], name="q"),
                         Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="p"))
    loss = (kl.named("KL") * 2.0 + kl.named("again")).mean()
    value, terms = loss.eval({}, return_terms=True)
    for twin in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        twin_value, twin_terms = twin.eval({}, return_terms=True)
        assert str(twin) == str(loss) and list(twin_terms) == ["KL", "again"]
        assert torch.equal(twin_value, value) and all(torch.equal(twin_terms[k], terms[k]) for k in terms)


# ------------------------------------------------------------------------------------------------- MM's sample
TRANSMAT = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.0, 0.7]]
STARTPROB = [0.2, 0.5, 0.3]


def _chain(cls=km.MarkovChain, **kwargs):
    return cls(n_iter=0, transmat=TRANSMAT, startprob=STARTPROB, **kwargs).fit(np.eye(3)[[0, 1, 2, 0]])


def test_markov_chain_sample_follows_the_chain():
    """The transitions of a long draw and the first states of many draws against ``transmat_`` and ``startprob_``
    (chi-square per row; a transition of probability 0 never drawn)."""
    chain = _chain()
    X, states = chain.sample(20000, random_state=0)
    assert states.shape == (20000,) and states.dtype == torch.long
    assert torch.equal(X, torch.eye(3, dtype=torch.float64)[states])  # one-hot evidence, which fit reads
    counts = torch.zeros(3, 3, dtype=torch.float64).index_put_((states[:-1], states[1:]),
                                                               torch.ones(19999, dtype=torch.float64),
                                                               accumulate=True)
    assert counts[2, 1] == 0
    for row, probs in zip(counts, chain.transmat_):
        keep = probs > 0
        assert stats.chisquare(row[keep], row.sum() * probs[keep]).pvalue > 1e-4
    g = torch.Generator().manual_seed(1)
    starts = torch.stack([chain.sample(1, random_state=g)[1][0] for _ in range(600)])
    observed = torch.bincount(starts, minlength=3).double()
    assert stats.chisquare(observed, 600 * torch.as_tensor(STARTPROB)).pvalue > 1e-4
    # and fitting the draw with counts alone (alpha -> 0, one-hot evidence) gives the empirical frequencies
    refit = km.MarkovChain(alpha=1e-12, n_iter=1).fit(X)
    torch.testing.assert_close(refit.transmat_, counts / counts.sum(1, keepdim=True))


def test_markov_chain_sample_random_state():
    chain = _chain(random_state=5)
    assert torch.equal(chain.sample(50)[1], chain.sample(50)[1])  # an int: the same stream at every call
    assert torch.equal(chain.sample(50, random_state=7)[1], _chain().sample(50, random_state=7)[1])
    assert not torch.equal(chain.sample(50, random_state=7)[1], chain.sample(50)[1])
    g = torch.Generator().manual_seed(3)
    first, second = chain.sample(50, random_state=g)[1], chain.sample(50, random_state=g)[1]
    assert not torch.equal(first, second)  # a generator goes on
    torch.manual_seed(0)
    a = _chain().sample(30)[1]
    torch.manual_seed(0)
    assert torch.equal(a, _chain().sample(30)[1])  # None: seeded from torch's stream


def test_markov_chain_sample_errors():
    with pytest.raises(km.NotFittedError,
                       match="^MarkovChain is not fitted yet: call fit\\(X\\) \\(or update\\(\\) in a graph\\) first$"):
        km.MarkovChain().sample(3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=f"^MarkovChain: n_samples must be a positive int, got {bad!r}$"):
            _chain().sample(bad)


def test_mm_node_samples_from_its_chain_with_its_random_state():
    z = torch.tensor([0] * 20 + [1] * 20 + [0] * 20)
    x = z[:, None] * 4.0 + torch.randn(60, 1, generator=torch.Generator().manual_seed(0))
    mm = km.MM(random_state=4).connect(km.GMM(2, algorithm="em", random_state=0).connect(km.Observation(x)))
    with pytest.raises(km.NotFittedError, match="^MM mm is not fitted yet: call fit"):
        mm.sample(3)
    km.Graph([mm]).fit(n_iter=2, seed=0)
    X, states = mm.sample(40)
    assert X.shape == (40, 2) and torch.equal(states, mm.sample(40)[1])
    twin = km.MarkovChain(n_iter=0, transmat=mm.transmat_, startprob=mm.startprob_, random_state=4)
    assert torch.equal(twin.fit(np.eye(2)[[0, 1]]).sample(40)[1], states)  # the chain's law, the node's stream
    assert mm.get_params()["random_state"] == 4


# ------------------------------------------------------------------------------ named: state, printing (review dr1)
def _coef_loss(named: bool):
    """The review's loss: a KL times a learned coefficient minus the reconstruction, named or not (a7d2b36 kept the
    coefficient under ``loss.loss1.loss1.loss2.value``)."""
    q, p, kl, rec = _parts()
    w = ValueLoss(torch.nn.Parameter(torch.tensor(1.0)))
    loss = (kl * (w.named("beta") if named else w) - (rec.named("recon") if named else rec)).mean()
    return Model(loss, distributions=[q, p]), w


def test_named_state_has_the_unnamed_keys_and_loads_an_unnamed_or_old_save(tmp_path):
    """dr1 finding 1: ``Named`` put its loss under ``loss1.``, so a named learned coefficient's checkpoint key grew a
    segment and a save from a7d2b36 (the unnamed loss's keys) was refused as another architecture."""
    (bare, w_bare), (named, w_named) = _coef_loss(False), _coef_loss(True)
    assert list(named._loss_state()) == list(bare._loss_state()) == ["loss.loss1.loss1.loss2.value"]
    assert named._loss_state()["loss.loss1.loss1.loss2.value"] is w_named.value
    with torch.no_grad():
        w_bare.value.fill_(0.25)
    bare.save(tmp_path / "old.pt")  # the keys a7d2b36 wrote, named or not
    named.load(tmp_path / "old.pt")
    assert w_named.value.item() == 0.25
    with torch.no_grad():
        w_named.value.fill_(-1.5)
    named.save(tmp_path / "new.pt")
    for model, w in ((bare, w_bare), (_coef_loss(True))):
        model.load(tmp_path / "new.pt")
        assert w.value.item() == -1.5
    # the loss's own state_dict: names at two levels add nothing; load_state_dict takes the unnamed loss's state
    kl = _parts()[2]
    coef = ValueLoss(torch.nn.Parameter(torch.tensor(3.0)))
    bare_loss, named_loss = (kl * coef).mean(), (kl.named("KL") * coef.named("c")).mean().named("total")
    assert list(named_loss.state_dict()) == list(bare_loss.state_dict())
    state = {k: v + 1 if k.endswith("loss2.value") else v for k, v in bare_loss.state_dict().items()}
    named_loss.load_state_dict(state)
    assert coef.value.item() == 4.0 and list(map(id, named_loss.parameters())) == list(map(id, bare_loss.parameters()))
    twin = copy.deepcopy(named_loss).double()  # the tensors still move with .to(); copies keep the keys
    assert list(twin.state_dict()) == list(bare_loss.state_dict())
    assert twin.state_dict()["loss1.loss2.value"].dtype == torch.float64
    assert list(pickle.loads(pickle.dumps(named_loss)).state_dict()) == list(bare_loss.state_dict())


class _AB(Loss):
    """A Pixyz-style loss ``a + b`` with a sympy ``_symbol`` (dr1 pixyz.py)."""

    def __init__(self):
        super().__init__(["a", "b"])

    @property
    def _symbol(self):
        import sympy

        return sympy.Symbol("a") + sympy.Symbol("b")

    def forward(self, x_dict, **kwargs):
        return x_dict["a"] + x_dict["b"], {}


class _Neg(Loss):
    """A Pixyz-style wrapper that builds its ``_symbol`` from its loss's."""

    def __init__(self, loss1):
        super().__init__(loss1.input_var)
        self.loss1 = loss1

    @property
    def _symbol(self):
        return -self.loss1._symbol

    def forward(self, x_dict, **kwargs):
        return -self.loss1.eval(x_dict), {}


def test_pixyz_style_wrapper_over_a_named_loss_prints_its_sympy_formula():
    """dr1 finding 3: the named node's ``_symbol`` was its LaTeX as a symbol, printed as ``-\\left(a + b\\right)``."""
    pytest.importorskip("sympy")
    values = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    for inner in (_AB(), _AB().named("ab")):
        wrapper = _Neg(inner)
        assert str(wrapper) == "(-a - b)" and wrapper.loss_text == "\\left(- a - b\\right)"
        value, terms = wrapper.eval(values, return_terms=True)
        assert value.item() == -3.0 and list(terms) == ["(-a - b)"]


def test_named_repr_is_the_loss_s_and_the_node_is_its_own_class():
    """dr1 finding 4: ``repr`` showed ``Named(...)``; a7d2b36 printed the node's own repr (without the name)."""
    kl = _parts()[2]
    assert repr(kl.named("KL")) == repr(kl) and repr(kl).startswith("KullbackLeibler(")
    assert repr(ValueLoss(-2).named("c")) == "ValueLoss(-2)"
    assert repr((kl + 1).named("s")) == repr(kl + 1)
    named = kl.named("KL")  # a node of its own class (documented): the loss inside is .loss1
    assert not isinstance(named, KullbackLeibler) and named.loss1 is kl


def test_markov_chain_sample_reads_hand_assigned_lists_in_float64():
    """dr1 finding 7: a ``transmat_`` assigned as a list was read in float32 (X float32, rows rounded through it),
    while the HMM reads hand-assigned parameters in float64."""
    chain, reference = _chain(random_state=2), _chain(random_state=2)
    chain.transmat_, chain.startprob_ = TRANSMAT, STARTPROB
    reference.transmat_ = torch.tensor(TRANSMAT, dtype=torch.float64)
    reference.startprob_ = torch.tensor(STARTPROB, dtype=torch.float64)
    X, states = chain.sample(200)
    assert X.dtype == torch.float64 and torch.equal(states, reference.sample(200)[1])
    assert torch.equal(X, torch.eye(3, dtype=torch.float64)[states])
    chain.transmat_ = [[0.6, 0.5, 0.0], [0.1, 0.8, 0.1], [0.3, 0.0, 0.7]]
    with pytest.raises(ValueError, match="^MarkovChain: transmat rows must sum to 1, got row 0 summing to 1\\.1$"):
        chain.sample(3)
