"""MM: transition sampling by chi-square, and child + MM = HMM against enumeration and hmmlearn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hmmlearn import hmm as hl
from scipy import stats

from kizuna.metrics.clustering import clustering_accuracy
from kizuna.modules import GMM, ClassModule, Graph, Message, MessageKindError, MessageShapeError, Observation
from kizuna.modules import _forward_backward as fb
from kizuna.modules.hmm import HMM
from kizuna.modules.mm import MM, MarkovChain, transition_counts
from kizuna.modules.persistence import load_module, save_module

F64 = torch.float64
MEANS, SCALE = torch.tensor([-1.0, 0.5, 2.0], dtype=F64), 0.8
START = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
TRANS = torch.tensor([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]], dtype=F64)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class FixedGaussian(ClassModule):
    """A GMM with fixed, equally weighted 1-D components: sends its likelihood up (the protocol's
    convention: without the parent's prior) and keeps prior x likelihood as its posterior."""

    accepts = ("data",)
    receives = ("prior",)

    def __init__(self, means: torch.Tensor, scale: float, **kwargs) -> None:
        super().__init__(len(means), **kwargs)
        self.means, self.scale = means, scale

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(self.means, self.scale).log_prob(x)

    def _update(self, ctx, forward, backward):
        ll = self.log_likelihood(forward[0].value)
        prior = self.class_prior(backward, ll.shape[0])
        self.posterior = ctx.combine.bind(1000, ctx.generator)(torch.ones_like(ll) if prior is None else prior, ll)
        return self.message("posterior", torch.softmax(ll, 1)), {}


def sample_hmm(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = [int(torch.multinomial(START, 1, generator=g))]
    for _ in range(n - 1):
        z.append(int(torch.multinomial(TRANS[z[-1]], 1, generator=g)))
    z = torch.tensor(z)
    return (MEANS[z] + SCALE * torch.randn(n, generator=g, dtype=F64))[:, None], z


def enumerated_posterior(log_emit: torch.Tensor) -> torch.Tensor:
    """p(z_t = k | x) of one sequence by summing over all K^T paths."""
    t, k = log_emit.shape
    paths = torch.tensor(list(itertools.product(range(k), repeat=t)))
    lp = torch.log(START)[paths[:, 0]] + log_emit[torch.arange(t), paths].sum(1)
    lp = lp + torch.log(TRANS)[paths[:, :-1], paths[:, 1:]].sum(1)
    w = torch.softmax(lp, 0)
    return torch.einsum("s,stk->tk", w, torch.nn.functional.one_hot(paths, k).to(F64))


def hmm_pair(x: torch.Tensor, lengths, method: str = "mp") -> tuple[FixedGaussian, MM]:
    child = FixedGaussian(MEANS, SCALE).connect(Observation(x))
    mm = MM(lengths=lengths, transmat=TRANS, startprob=START, learnable=False).connect(child)
    Graph([mm]).fit(n_iter=3, method=method, seed=0)
    return child, mm


def test_gaussian_child_plus_mm_is_the_hmm_posterior():
    """Two sequences (5 and 3 steps): MM's posterior and, after one top-down pass, the child's own
    posterior equal the HMM's marginals by enumerating all paths, and hmmlearn's with the same parameters."""
    x, _ = sample_hmm(8, seed=0)
    child, mm = hmm_pair(x, [5, 3])
    log_emit = child.log_likelihood(x)
    exact = torch.cat([enumerated_posterior(log_emit[:5]), enumerated_posterior(log_emit[5:])])
    torch.testing.assert_close(mm.posterior, exact, atol=1e-12, rtol=0)
    torch.testing.assert_close(child.posterior, exact, atol=1e-12, rtol=0)
    torch.testing.assert_close(mm.forward_message.value, exact)  # no parent: up = posterior
    ref = hl.GaussianHMM(3, covariance_type="spherical", init_params="")
    ref.startprob_, ref.transmat_ = START.numpy(), TRANS.numpy()
    ref.means_, ref.covars_ = MEANS.numpy()[:, None], np.full(3, SCALE**2)
    np.testing.assert_allclose(mm.posterior.numpy(), ref.predict_proba(x.numpy(), [5, 3]), atol=1e-10)


def test_parent_prior_enters_the_posterior_but_not_the_up_message():
    """A parent's prior rho acts as an extra factor per step: the posterior is the enumerated
    p(z|x, rho); the message up excludes rho at its own step: p(z_t|x, rho) / rho_t, renormalised."""
    x, _ = sample_hmm(5, seed=1)
    rho = torch.softmax(torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=F64), 1)
    child = FixedGaussian(MEANS, SCALE).connect(Observation(x))
    mm = MM(transmat=TRANS, startprob=START, learnable=False).connect(child)
    child.update()
    mm.receive_backward(Message("parent", "mm", "c", "prior", rho))
    mm.update()
    exact = enumerated_posterior(child.log_likelihood(x) + torch.log(rho))
    torch.testing.assert_close(mm.posterior, exact, atol=1e-12, rtol=0)
    up = exact / rho
    torch.testing.assert_close(mm.forward_message.value, up / up.sum(1, keepdim=True), atol=1e-12, rtol=0)


def test_sir_posterior_converges_to_the_exact_one():
    x, _ = sample_hmm(8, seed=0)
    _, exact = hmm_pair(x, None)
    _, sir = hmm_pair(x, None, method="sir")
    # 1000 particles: each probability within 4.5 binomial standard errors (false alarm ~1e-4 in all)
    assert (sir.posterior - exact.posterior).abs().max() < 4.5 * 0.5 / np.sqrt(1000)


def chain_for_sampling(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, _ = sample_hmm(n, seed)
    return torch.log(START), torch.log(TRANS), FixedGaussian(MEANS, SCALE).log_likelihood(x)


def test_transition_sampler_matches_exact_counts_by_chi_square():
    """MM's sampled transitions ("sir") against the exact expected counts ("mp"): from each of 4,000
    independent posterior paths of a 60-step, two-sequence chain, one transition at a uniformly random
    position is binned (K^2 = 9 cells); its law is the exact counts / number of pairs. Pearson
    chi-square (8 dof), false-alarm rate 1e-3, fixed seed."""
    log_start, log_trans, log_emit = chain_for_sampling(60, seed=3)
    lengths = torch.tensor([35, 25])
    _, exact = transition_counts(log_start, log_trans, log_emit, lengths, False, 1, None)
    g = torch.Generator().manual_seed(0)
    paths = fb.sample_paths(log_start, log_trans, log_emit, lengths, 4000, g)
    starts_of_pairs = torch.cat([torch.arange(0, 34), torch.arange(35, 59)])  # pairs (t, t+1) inside a sequence
    pick = starts_of_pairs[torch.randint(len(starts_of_pairs), (4000,), generator=g)]
    rows = torch.arange(4000)
    cells = (paths[rows, pick] * 3 + paths[rows, pick + 1]).numpy()
    observed = np.bincount(cells, minlength=9)
    expected = (exact / exact.sum()).reshape(-1).numpy() * 4000
    assert exact.sum().item() == pytest.approx(len(starts_of_pairs))
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # the counts MM uses are the mean over paths: each entry within 4.5 standard errors of the exact one
    _, sampled = transition_counts(log_start, log_trans, log_emit, lengths, True, 4000,
                                   torch.Generator().manual_seed(5))
    per_path = torch.stack([torch.bincount(p[starts_of_pairs] * 3 + p[starts_of_pairs + 1], minlength=9)
                            for p in paths[:400]]).to(F64)
    se = per_path.std(0).reshape(3, 3) / np.sqrt(4000)
    assert ((sampled - exact).abs() <= 4.5 * se + 1e-9).all()


def serket_sample_idx(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """SERKET's MM inverse CDF, vectorised: it compares P[k] (not the cumulative sum) with the
    uniform draw, and an index of -1 (no hit) selects the last class."""
    hit = p[None, :] >= u[:, None] * p.sum()
    return np.where(hit.any(1), hit.argmax(1), len(p) - 1)


def test_chi_square_catches_serkets_biased_inverse_cdf():
    """The same ten-line test, run on SERKET's sampler and on ours for one class distribution:
    SERKET's fails (p < 1e-12), ours passes (false-alarm rate 1e-3)."""
    p = np.array([0.2, 0.5, 0.3])
    u = np.random.default_rng(0).random(5000)
    serket = np.bincount(serket_sample_idx(p, u), minlength=3)
    assert stats.chisquare(serket, p * 5000).pvalue < 1e-12
    ours = transition_counts(torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=F64)), torch.zeros(3, 3, dtype=F64),
                             torch.zeros(1, 3, dtype=F64), torch.tensor([1]), True, 5000,
                             torch.Generator().manual_seed(0))[0]
    assert stats.chisquare(ours.numpy() * 5000, p * 5000).pvalue > 1e-3


def test_mm_transition_em_is_baum_welch_with_fixed_emissions():
    """With the child's likelihood fixed, MM's "mp" learning (alpha -> 0) is Baum-Welch for (pi, A):
    30 iterations agree with `kizuna.modules.HMM` (params="st") to 1e-6. The "sir" counts (20 sampled
    paths per iteration) land within 0.03 of it; both are within 0.1 of the truth and their smoothed
    classes beat the child's own by 5 points (1,200 steps in 6 sequences)."""
    x, z = sample_hmm(1200, seed=4)
    lengths = [200] * 6
    ref = HMM(3, covariance_type="spherical", n_iter=30, tol=-np.inf, init_params="st", params="st")
    ref.means_, ref.covars_ = MEANS[:, None], torch.full((3,), SCALE**2, dtype=F64)
    ref.fit(x, lengths)
    results = {}
    for method in ("mp", "sir"):
        child = FixedGaussian(MEANS, SCALE).connect(Observation(x))
        mm = MM(alpha=1e-10, lengths=lengths, n_iter=30, n_samples=20).connect(child)
        Graph([mm]).fit(n_iter=1, method=method, seed=0)
        results[method] = mm.transmat_
        assert (mm.transmat_ - TRANS).abs().max() < 0.1
        alone = (child.forward_message.value.argmax(1) == z).double().mean()
        assert (mm.classes == z).double().mean() > alone + 0.05
        evidence = child.forward_message.value
    torch.testing.assert_close(results["mp"], ref.transmat_, atol=1e-6, rtol=0)
    # the estimator behind MM: the same learning on the evidence as an array, the HMM's posteriors
    chain = MarkovChain(alpha=1e-10, n_iter=30).fit(evidence.numpy(), lengths)
    np.testing.assert_allclose(chain.transmat_.numpy(), ref.transmat_.numpy(), atol=1e-6)
    np.testing.assert_allclose(chain.predict_proba(evidence.numpy(), lengths), ref.predict_proba(x, lengths),
                               atol=1e-6)
    assert chain.score(evidence, lengths) > MarkovChain(n_iter=0).fit(evidence, lengths).score(evidence, lengths)
    assert (results["sir"] - ref.transmat_).abs().max() < 0.03


class LearnedGaussian(FixedGaussian):
    """A learnable 1-D Gaussian child without mixing weights: one EM step per update on the
    responsibilities prior x likelihood (the HMM's M-step for the emissions when the prior is MM's)."""

    def _update(self, ctx, forward, backward):
        super()._update(ctx, forward, backward)  # the responsibilities under the current parameters
        x, resp = forward[0].value, self.posterior
        nk = resp.sum(0)
        self.means = (resp * x).sum(0) / nk
        self.scale = ((resp * (x - self.means) ** 2).sum(0) / nk).sqrt()
        return super()._update(ctx, forward, backward)  # messages of the new parameters


def test_learnable_child_plus_mm_is_an_ecm_algorithm_for_the_hmm():
    """Child (Gaussian M-step) and MM (transition EM) alternate as an expectation-conditional-maximisation
    algorithm for the HMM: its log-likelihood never decreases over 25 sweeps, ends within 0.5 nats of
    `kizuna.modules.HMM`'s Baum-Welch from the same start, and beats the child alone."""
    x, z = sample_hmm(400, seed=5)
    start_means = torch.tensor([-1.5, 0.0, 2.5], dtype=F64)
    child = LearnedGaussian(start_means.clone(), torch.ones(3, dtype=F64)).connect(Observation(x))
    mm = MM(alpha=1e-10, n_iter=3, lengths=[100] * 4).connect(child)
    graph = Graph([mm]).fit(n_iter=0, seed=0)
    history = []
    for _ in range(25):
        graph.update()
        log_emit = torch.distributions.Normal(child.means, child.scale).log_prob(x)
        history.append(fb.forward_log_likelihood(torch.log(mm.startprob_), torch.log(mm.transmat_), log_emit,
                                                 mm.lengths).sum().item())
    assert (np.diff(history) >= -1e-6).all()
    ref = HMM(3, covariance_type="spherical", n_iter=100, tol=1e-6, init_params="st", min_covar=1e-6)
    ref.means_, ref.covars_ = start_means[:, None], torch.ones(3, dtype=F64)
    assert history[-1] >= ref.fit(x, mm.lengths).score(x, mm.lengths) - 0.5
    alone = GMM(3, algorithm="em", random_state=0).fit(x.numpy()).predict(x.numpy())
    assert clustering_accuracy(z, mm.classes) > clustering_accuracy(z, alone) + 0.03


def test_errors_are_named(tmp_path):
    x, _ = sample_hmm(6, seed=0)
    with pytest.raises(MessageKindError, match="mm"):
        MM().connect(Observation(x))
    child = FixedGaussian(MEANS, SCALE).connect(Observation(x))
    with pytest.raises(MessageShapeError, match="4 states"):
        Graph([MM(4).connect(child)]).fit(1)
    child = FixedGaussian(MEANS, SCALE).connect(Observation(x))
    with pytest.raises(ValueError, match="lengths"):
        Graph([MM(lengths=[4, 4]).connect(child)]).fit(1)
    child = FixedGaussian(MEANS, SCALE).connect(Observation(x))
    mm = MM(alpha=0.5).connect(child)
    Graph([mm]).fit(2, seed=0)
    restored = load_module(MM(alpha=0.5).connect(FixedGaussian(MEANS, SCALE).connect(Observation(x))),
                           save_module(mm, tmp_path / "mm.pt"))
    torch.testing.assert_close(restored.transmat_, mm.transmat_)


@pytest.mark.parametrize("algorithm", ["em", "gibbs"])
def test_gmm_under_mm_is_an_hmm_and_does_not_collapse(algorithm):
    """A learnable GMM under MM: the parent's class prior replaces the GMM's mixing weights, so the pair is an
    HMM and mutual inference improves on the GMM alone. (With the weights counted as well, the most frequent
    class grew at every sweep and the chain collapsed onto it: 0.77 -> 0.42 accuracy in 4 sweeps.)"""
    x, z = sample_hmm(600, seed=3)
    alone = GMM(3, algorithm=algorithm, random_state=0).fit(x)
    acc_alone = clustering_accuracy(z, alone.predict(x))
    gmm = GMM(3, algorithm=algorithm, random_state=0, max_iter=20).connect(Observation(x))
    mm = MM(alpha=1.0).connect(gmm)
    graph = Graph([mm]).fit(n_iter=1, seed=0)
    history = [clustering_accuracy(z, mm.classes)]
    for _ in range(6):
        graph.update()
        history.append(clustering_accuracy(z, mm.classes))
    assert np.bincount(mm.classes.numpy(), minlength=3).min() > 60  # every state still in use
    assert history[-1] >= acc_alone + 0.03, (acc_alone, history)
    assert history[-1] >= history[0], history  # mutual inference helps rather than drifting to one state
    hmm = HMM(3, covariance_type="full", n_iter=100, random_state=0).fit(x)
    assert history[-1] >= clustering_accuracy(z, hmm.predict(x)) - 0.02


def test_labels_instead_of_evidence_are_named():
    """Integer labels as a column (N, 1) were read as one class's evidence and failed with 'a sequence has zero
    probability'; as a vector the error advised x.reshape(-1, 1), that very column. One-hot rows of the same labels
    give the Dirichlet-smoothed transition counts (numpy, by hand)."""
    z = np.array([0, 2, 1, 1, 0, 2, 2, 0, 1])
    lengths = [4, 5]
    for bad in (z[:, None], torch.as_tensor(z)[:, None], z.astype(float)[:, None]):
        with pytest.raises(ValueError, match=r"X has one column of integers, which reads as class labels.*np.eye"):
            MarkovChain(n_iter=1).fit(bad, lengths=lengths)
    for bad in (z, torch.as_tensor(z), z.tolist()):
        with pytest.raises(ValueError, match=r"X must be N×K class evidence .* got shape \(9,\).*one-hot"):
            MarkovChain(n_iter=1).fit(bad, lengths=lengths)
    with pytest.raises(ValueError, match="one column of integers"):
        MarkovChain(n_iter=1).fit(np.eye(3)[z], lengths=lengths).predict(z[:, None], lengths=lengths)
    counts = np.zeros((3, 3))
    for seq in (z[:4], z[4:]):
        np.add.at(counts, (seq[:-1], seq[1:]), 1)
    chain = MarkovChain(n_iter=1, alpha=0.5).fit(np.eye(3)[z], lengths=lengths)
    np.testing.assert_allclose(np.asarray(chain.transmat_), (counts + 0.5) / (counts.sum(1, keepdims=True) + 1.5),
                               rtol=1e-12)
    ones = MarkovChain(n_states=1, n_iter=1).fit(np.full((4, 1), 1.0))  # a one-class chain stays possible
    assert np.asarray(ones.transmat_).tolist() == [[1.0]]


def test_a_row_of_zero_evidence_is_named():
    """A row with no evidence for any class makes every sequence through it impossible: named by its row (it failed
    inside forward-backward as 'a sequence has zero probability'); a uniform row is the way to say 'unknown'."""
    x = np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1]]
    x[3] = 0.0
    with pytest.raises(ValueError, match=r"rows of zero evidence for every class \(rows 3\)"):
        MarkovChain(3).fit(x)
    x[3] = 1.0 / 3
    assert MarkovChain(3).fit(x).predict(x).shape == (8,)


def test_a_given_chain_that_is_not_probabilities_is_named():
    """MarkovChain's check of a given transmat / startprob named neither the matrix nor the entry ('transmat rows and
    startprob must be probability vectors'); it names them as HMM's parameter checks do, and accepts a valid chain."""
    evidence = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    cases = [({"transmat": [[0.7, 0.3], [0.6, 0.6]]}, r"transmat rows must sum to 1, got row 1 summing to 1\.2"),
             ({"transmat": [[1.2, -0.2], [0.5, 0.5]]}, r"transmat must hold probabilities .*transmat\[0, 1\] = -0\.2"),
             ({"startprob": [float("nan"), 1.0]}, r"startprob must hold probabilities .*startprob\[0\] = nan")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            MarkovChain(2, n_iter=0, **kwargs).fit(evidence)
    MarkovChain(2, n_iter=0, transmat=[[0.9, 0.1], [0.2, 0.8]], startprob=[0.5, 0.5]).fit(evidence)


def test_n_iter_must_be_a_whole_number():
    """``MarkovChain(n_iter=2.5)`` ran 2 iterations silently (int(n_iter)); a node refuses it when built. A whole
    number of iterations as a numpy integer gives the same chain as the int."""
    evidence = np.eye(3)[[0, 2, 1, 1, 0, 2, 2, 0, 1]] * 0.8 + 0.1
    for bad in (2.5, -1, None, "3"):
        with pytest.raises(ValueError, match=rf"^MarkovChain: n_iter must be an integer >= 0, got {bad!r}$"):
            MarkovChain(n_iter=bad).fit(evidence)
    with pytest.raises(ValueError, match=r"^MM mm: n_iter must be an integer >= 0, got 2.5$"):
        MM(n_iter=2.5)
    two = MarkovChain(n_iter=2).fit(evidence)
    assert torch.equal(MarkovChain(n_iter=np.int64(2)).fit(evidence).transmat_, two.transmat_)



def test_a_parents_prior_without_a_class_the_evidence_allows_is_named():
    """A parent's prior giving 0 to every class the child's evidence allows at a step: forward-backward's error blamed
    the child's evidence ("log p(x_t|k) = -inf for every k"), which was valid; the prior is named now."""
    from test_tail_to_tail import Fixed

    f64 = torch.float64
    lam = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.3, 0.7]], dtype=f64)
    child = Fixed(lam, "c").connect(Observation(torch.zeros(3, 1)))
    mm = MM(name="mm").connect(child)
    child.update()
    mm.receive_backward(Message("parent", "mm", "c", "prior", torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.5, 0.5]],
                                                                             dtype=f64)))
    with pytest.raises(ValueError, match=r"MM mm: row 0: the prior of parent gives probability 0 to every class the "
                                         r"posterior of c allows"):
        mm.update()
