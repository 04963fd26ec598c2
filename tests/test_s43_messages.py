"""Stop 43: the message a class module sends each of several parents (`Module.message_to`), checked against
enumeration; and the classical nodes used as estimators (``MM.fit``'s posterior, ``set_params``, a node's own
``lengths`` outside a graph)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_hmm import enumerate_chain

from kizuna import modules as km
from kizuna.modules.base import Message

F64 = torch.float64
X = torch.tensor([[0.1], [0.9], [1.4], [2.2], [2.9], [0.6]], dtype=F64)
A = torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=F64)
PI = torch.tensor([0.5, 0.5], dtype=F64)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def exact_marginals(phi: torch.Tensor) -> torch.Tensor:
    """p(c_n = k | everything) of the chain (PI, A) with per-step factors ``phi`` (N x K), over all K^N paths."""
    paths, lp = enumerate_chain(torch.log(PI), torch.log(A), torch.log(phi))
    return torch.einsum("s,snk->nk", torch.softmax(lp, 0), torch.nn.functional.one_hot(paths, 2).to(F64))


def fixed_gmm(x: torch.Tensor, name: str) -> km.GMM:
    gmm = km.GMM(2, algorithm="em", random_state=0, name=name).fit(torch.cat([x, x + 0.1, x * 1.2]))
    gmm.learnable = False
    return gmm.connect(km.Observation(x, name=f"{name}_x"))


def own(gmm: km.GMM, x: torch.Tensor) -> torch.Tensor:
    """The GMM's likelihood p(x_n | c_n = k) normalised over k (its forward message)."""
    return torch.softmax(gmm._log_joint(x, mixing=False), 1)


def test_an_mm_and_an_nn_over_one_gmm_reach_the_exact_marginals():
    """The brief's graph (A report, finding 1): a fixed GMM with two parents, a fixed MM (a chain over its classes)
    and a fixed NN (a per-row factor from paired y). It is a tree, so message passing is exact: the GMM's and the
    MM's posteriors equal the enumeration (the MM was 0.096 off when both parents read the bare likelihood), and
    each parent read the GMM's likelihood times the other parent's prior."""
    y = torch.tensor([[0.0], [0.0], [1.0], [0.0], [1.0], [1.0]], dtype=F64)
    gmm = fixed_gmm(X, "g")
    mm = km.MM(2, transmat=A, startprob=PI, learnable=False, name="mm").connect(gmm)
    net = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        net.weight[:] = torch.tensor([[0.0, 1.0]])  # class 0 -> y = 0, class 1 -> y = 1
        net.bias.zero_()
    nn_ = km.NN(net, learnable=False, name="nn").connect(gmm, km.Observation(y, name="y"))
    km.Graph([mm, nn_]).fit(n_iter=10, seed=0)
    lam, unary = own(gmm, X), gmm.backward_messages["nn"].value  # the NN's factor as sent (nothing learns)
    exact = exact_marginals(lam * unary)
    torch.testing.assert_close(gmm.posterior, exact, rtol=0, atol=1e-12)
    torch.testing.assert_close(mm.posterior, exact, rtol=0, atol=1e-12)
    prior_mm = gmm.backward_messages["mm"].value
    for parent, other in ((mm, unary), (nn_, prior_mm)):
        sent = gmm.message_to(parent)
        assert (sent.sender, sent.receiver, sent.kind) == ("g", parent.name, "posterior")
        torch.testing.assert_close(sent.value, lam * other / (lam * other).sum(1, keepdim=True), rtol=0, atol=1e-15)


def test_a_tail_to_tail_beside_an_mm_is_exact_for_every_module():
    """The second parent a TailToTail joining the GMM with a second fixed GMM on paired data y: the T2T's prior to
    the GMM is that GMM's likelihood. Every posterior (both GMMs, the MM, the node) is the exact marginal."""
    y = torch.tensor([[0.2], [0.1], [1.1], [2.4], [2.7], [1.9]], dtype=F64)
    gmm, gmm2 = fixed_gmm(X, "g"), fixed_gmm(y, "g2")
    mm = km.MM(2, transmat=A, startprob=PI, learnable=False, name="mm").connect(gmm)
    t2t = km.TailToTail(smoothing=0.0, name="t2t").connect(gmm, gmm2)
    km.Graph([mm, t2t]).fit(n_iter=4, seed=0)
    sigma = t2t.permutations[1]
    unary = own(gmm2, y)[:, sigma]  # g2's likelihood in g's labels
    torch.testing.assert_close(gmm.backward_messages["t2t"].value, unary, rtol=0, atol=1e-15)
    exact = exact_marginals(own(gmm, X) * unary)
    for posterior in (gmm.posterior, mm.posterior, t2t.posterior, gmm2.posterior[:, sigma]):
        torch.testing.assert_close(posterior, exact, rtol=0, atol=1e-12)


def two_parent_gmm(dtype: torch.dtype = F64) -> tuple[km.GMM, km.MM, km.NN, torch.Tensor, torch.Tensor]:
    """A GMM under an MM and an NN (its source), with messages set by hand: (gmm, mm, nn, lambda, MM's prior)."""
    gmm = km.GMM(3, name="g").connect(km.Observation(torch.zeros(4, 1, dtype=dtype)))
    mm = km.MM(name="mm").connect(gmm)
    nn_ = km.NN(name="nn").connect(gmm, km.Observation(torch.zeros(4, 1, dtype=dtype)))
    g = torch.Generator().manual_seed(0)
    lam = torch.softmax(torch.randn(4, 3, generator=g, dtype=F64) * 3, 1).to(dtype)
    rho = torch.softmax(torch.randn(4, 3, generator=g, dtype=F64) * 3, 1).to(dtype)
    gmm.forward_message = gmm.message("posterior", lam)
    gmm.receive_backward(mm.message("prior", rho, receiver=gmm), mm)
    return gmm, mm, nn_, lam, rho


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16])
def test_message_to_multiplies_the_other_parents_priors_in_the_messages_dtype(dtype):
    gmm, mm, nn_, lam, rho = two_parent_gmm(dtype)
    assert gmm.message_to(mm) is gmm.forward_message  # the NN has sent no prior yet: nothing to multiply in
    sent = gmm.message_to(nn_)
    expected = lam.double() * rho.double()
    assert sent.value.dtype == dtype
    torch.testing.assert_close(sent.value.double(), expected / expected.sum(1, keepdim=True),
                               rtol=0, atol=1e-15 if dtype == F64 else 1e-6 if dtype == torch.float32 else 1e-3)


def test_one_parent_and_an_mlda_read_the_forward_message_itself():
    """One parent: the very object (single-parent graphs are unchanged bit for bit). An MLDA's theta carries its
    parents' priors already, so with two parents each still reads it as it is."""
    gmm = km.GMM(2, name="g").connect(km.Observation(torch.zeros(3, 1)))
    mm = km.MM(name="mm").connect(gmm)
    gmm.forward_message = gmm.message("posterior", torch.full((3, 2), 0.5))
    gmm.receive_backward(mm.message("prior", torch.tensor([[0.9, 0.1]] * 3), receiver=gmm), mm)
    assert gmm.message_to(mm) is gmm.forward_message
    mlda = km.MLDA(2, name="mlda").connect(km.Observation(torch.ones(3, 4)))
    top, nn_ = km.MM(name="top").connect(mlda), km.NN(name="nn").connect(mlda, km.Observation(torch.zeros(3, 1)))
    mlda.forward_message = mlda.message("posterior", torch.tensor([[0.3, 0.7]] * 3))
    for parent in (top, nn_):
        mlda.receive_backward(parent.message("prior", torch.tensor([[0.2, 0.8]] * 3), receiver=mlda), parent)
    assert mlda.message_to(top) is mlda.forward_message and mlda.message_to(nn_) is mlda.forward_message


def test_message_to_a_row_the_other_priors_rule_out_follows_the_priors():
    """A forward message rounded to 0 stands at the smallest normal number (the module's own likelihood is never 0
    there), so a co-parent's prior that rules out the classes it allows decides the row (this stop's first version
    raised; diff review 3 found it on a float32 graph)."""
    gmm, mm, nn_, lam, rho = two_parent_gmm()
    gmm.forward_message = gmm.message("posterior", torch.tensor([[1.0, 0.0, 0.0]] + [[1 / 3] * 3] * 3, dtype=F64))
    gmm.receive_backward(Message("mm", "g", "c", "prior", torch.tensor([[0.0, 0.5, 0.5]] + [[1 / 3] * 3] * 3,
                                                                       dtype=F64)), mm)
    torch.testing.assert_close(gmm.message_to(nn_).value[0], torch.tensor([0.0, 0.5, 0.5], dtype=F64),
                               rtol=0, atol=1e-300)


# ----------------------------------------------------------------- the nodes as estimators (H report 2, 3, 5)
Z = np.repeat([0, 1, 0, 1], 15)
EVIDENCE = np.eye(2)[Z] * 0.7 + 0.15
SERIES = np.random.default_rng(0).normal(np.repeat([0, 3, 0, 3], 25)[:, None], 0.5, (100, 1))


def test_mm_fit_sets_the_posterior_of_the_data_fitted_even_after_a_graph_run():
    x = np.random.default_rng(0).normal(Z[:, None] * 4.0, 1.0, (60, 1))
    mm = km.MM(category=Z).connect(km.GMM(2, algorithm="em", random_state=0).connect(km.Observation(x)))
    km.Graph([mm]).fit(n_iter=2, seed=0)
    flipped = np.eye(2)[1 - Z] * 0.7 + 0.15
    mm.fit(flipped)
    reference = km.MarkovChain().fit(flipped).predict_proba(flipped)
    np.testing.assert_allclose(mm.posterior.numpy(), reference, rtol=0, atol=1e-15)
    assert mm.n_classes == 2 and np.array_equal(mm.classes.numpy(), mm.predict(flipped))
    assert km.MM(category=Z).fit(EVIDENCE).accuracy == 1.0  # (a fresh node: "no posterior yet: call ... fit")


@pytest.mark.parametrize("make", [
    lambda: km.GMM(2, algorithm="em", random_state=0),
    lambda: km.HMM(2, n_iter=3, random_state=0),
    lambda: km.LDA(2, max_iter=5, random_state=0, backend="torch"),
], ids=["GMM", "HMM", "LDA"])
def test_set_params_derives_category_and_n_classes_as_the_constructor(make):
    z = np.repeat([0, 1, 2], 20)
    x = np.random.default_rng(0).poisson(np.where(z[:, None] == np.arange(9) // 3, 8.0, 0.2)).astype(np.float64)
    node = make().set_params(category=z.tolist(), n_components=3)
    assert isinstance(node.category, np.ndarray) and np.array_equal(node.category, z) and node.n_classes == 3
    node.fit(x)
    assert 0 <= node.accuracy <= 1  # (a list category raised AttributeError here)
    mm = km.MM(name="mm").connect(node.connect(km.Observation(x)))
    km.Graph([mm]).fit(n_iter=1, seed=0)  # (MessageShapeError: node has 2 classes, but the prior ... (60, 3))
    assert node.posterior.shape == (60, 3) == mm.posterior.shape


def test_set_params_refuses_what_the_constructor_refuses_naming_it():
    gmm = km.GMM(2, algorithm="em")
    with pytest.raises(ValueError, match=r"^GMM: category must be a 1-D array of labels, got shape \(1, 4\)$"):
        gmm.set_params(category=np.array([[0, 0, 1, 1]]))
    with pytest.raises(ValueError, match=r"^GMM: the number of classes must be a positive int, got 0$"):
        gmm.set_params(n_components=0)
    assert gmm.n_components == 2 == gmm.n_classes and gmm.category is None
    assert km.MM().set_params(n_states=np.int64(3)).n_classes == 3


def test_hmm_node_uses_its_own_lengths_outside_a_graph():
    node = km.HMM(2, lengths=[50, 50], random_state=0, n_iter=5).fit(SERIES)
    est = km.HiddenMarkovModel(2, random_state=0, n_iter=5).fit(SERIES, [50, 50])
    assert node.score(SERIES) == est.score(SERIES, [50, 50])  # -76.787; one sequence: -81.669
    np.testing.assert_array_equal(node.predict_proba(SERIES), est.predict_proba(SERIES, [50, 50]))
    np.testing.assert_array_equal(node.posterior.numpy(), est.predict_proba(SERIES, [50, 50]))
    np.testing.assert_array_equal(node.predict(SERIES[:80], lengths=[80]), est.predict(SERIES[:80]))
    with pytest.raises(ValueError, match=r"^HMM hmm: the lengths given to its constructor do not cut X \(lengths "
                                         r"must be positive and sum to the number of rows 80, got \[50, 50\]\); "
                                         r"pass lengths=\.\.\. with this X \(lengths=\[80\]: one sequence\)$"):
        node.score(SERIES[:80])


def test_mm_node_uses_its_own_lengths_outside_a_graph():
    node = km.MM(lengths=[30, 30]).fit(EVIDENCE)
    est = km.MarkovChain().fit(EVIDENCE, [30, 30])
    torch.testing.assert_close(node.transmat_, est.transmat_, rtol=0, atol=0)
    assert node.score(EVIDENCE) == est.score(EVIDENCE, [30, 30])
    np.testing.assert_array_equal(node.predict_proba(EVIDENCE), est.predict_proba(EVIDENCE, [30, 30]))
    with pytest.raises(ValueError, match=r"^MM mm: the lengths given to its constructor do not cut X"):
        node.predict(EVIDENCE[:10])


def test_a_likelihood_that_rounds_to_zero_beside_a_co_parents_zero_prior_does_not_stop_the_graph():
    """float32, one pair whose x says one class and y the other, 60 standard deviations apart: the GMM's normalised
    likelihood rounds to [1, 0] and the NN's prior to [0, 1]. message_to took their logs and raised 'row 5 ... is 0'
    (this stop's first version); the old shared message ran. The likelihood now stands at the smallest normal
    number where it rounds to 0, so the message to the MM follows the NN there."""
    g = torch.Generator().manual_seed(0)
    n = 1000
    z = torch.tensor(([0] * 50 + [1] * 50) * (n // 100))
    x = z[:, None] * 60.0 + 0.3 * torch.randn(n, 2, generator=g)
    y = z[:, None] * 60.0 + 0.3 * torch.randn(n, 2, generator=g)
    y[5] = 60.0
    gmm = km.GMM(2, algorithm="em", name="g", random_state=0).fit(x)
    gmm.connect(km.Observation(x, name="x"))
    mm = km.MM(2, lengths=[n], name="mm").connect(gmm)
    net = km.NN(name="nn").connect(gmm, km.Observation(y, name="y"))
    km.Graph([mm, net]).fit(n_iter=5, seed=0)
    lam, prior = gmm.forward_message.value[5], gmm.backward_messages["nn"].value[5]
    assert lam.min() == 0 and prior[lam.argmax()] == 0  # the case of the report: no class both allow
    msg = gmm.message_to(mm).value
    assert bool(torch.isfinite(msg).all()) and torch.allclose(msg.sum(1), torch.ones(n))
    assert msg[5].argmax() == prior.argmax()
