"""MLDA: the blocked collapsed Gibbs sweep against exact enumeration and a sequential sweep; planted topics."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import gammaln

from kizuna import modules as km
from kizuna.metrics.clustering import clustering_accuracy
from kizuna.modules import ClassModule, Graph, Message, MessageKindError, Module, Observation, _backend
from kizuna.modules.lda import MLDA, GibbsChain, as_counts, sampler
from kizuna.modules.lda.algorithms import prior_once_per_sample
from kizuna.modules.lda.sampler import _blocks
from kizuna.modules.persistence import load_module, save_module

F64 = torch.float64
K, ALPHA, BETA = 2, 0.5, 0.5
C0 = torch.tensor([[2, 1, 0], [0, 0, 2], [1, 0, 1]])  # modality 0: 3 samples x 3 features
C1 = torch.tensor([[1, 0], [0, 1], [1, 1]])  # modality 1: 3 samples x 2 features
PRIOR = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]], dtype=F64)  # a parent's class prior


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
# the sweep's two backends (`kizuna.modules._backend`): the compiled one only where the extra ``fast`` is installed
NUMBA = pytest.mark.skipif(not _backend.numba_available(), reason="numba not installed (kizuna[fast])")
BACKENDS = ["torch", pytest.param("numba", marks=NUMBA)]


def tiny_tokens() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(doc, word, modality) of the 11 tokens of C0 and C1."""
    out = []
    for m, c in enumerate((C0, C1)):
        nz = c.nonzero()
        reps = c[nz[:, 0], nz[:, 1]]
        out.append((nz[:, 0].repeat_interleave(reps), nz[:, 1].repeat_interleave(reps),
                    torch.full((int(reps.sum()),), m)))
    return tuple(torch.cat(parts).numpy() for parts in zip(*out))


def exact_mean_theta(once_per_sample: bool = False, prior: torch.Tensor = PRIOR) -> np.ndarray:
    """E[(n_dk + alpha)/(n_d + K alpha)] under p(z|w) ∝ prod_i PRIOR[d_i, z_i] x the collapsed LDA joint
    (Griffiths & Steyvers 2004), by enumerating all 2^11 topic assignments; ``once_per_sample``: each
    token's prior factor to the power 1 / T_d (T_d the tokens of its sample), the prior once per sample."""
    doc, word, mod = tiny_tokens()
    z = np.array(list(itertools.product(range(K), repeat=len(doc))))  # (S, T)
    onehot = np.eye(K)[z]  # (S, T, K)
    n_dk = np.stack([onehot[:, doc == d].sum(1) for d in range(3)], 1)  # (S, 3, K)
    log_p = gammaln(n_dk + ALPHA).sum((1, 2)) - gammaln(n_dk.sum(2) + K * ALPHA).sum(1)
    for m, v in enumerate((3, 2)):
        n_kw = np.stack([onehot[:, (mod == m) & (word == w)].sum(1) for w in range(v)], 2)  # (S, K, V)
        log_p += gammaln(n_kw + BETA).sum((1, 2)) - gammaln(n_kw.sum(2) + v * BETA).sum(1)
    tokens = np.bincount(doc, minlength=3)[doc] if once_per_sample else np.ones(len(doc))
    log_p += (np.log(prior.numpy()[doc, z]) / tokens).sum(1)
    w = np.exp(log_p - log_p.max())
    theta = (n_dk + ALPHA) / (n_dk.sum(2, keepdims=True) + K * ALPHA)
    return np.einsum("s,sdk->dk", w / w.sum(), theta)


def sequential_mean_theta(n_sweeps: int, seed: int) -> np.ndarray:
    """The exact collapsed Gibbs sampler, one token at a time (the reference the vectorised sweep
    approximates), with the parent's prior multiplied in; E[theta] over the second half of the sweeps."""
    doc, word, mod = tiny_tokens()
    rng = np.random.default_rng(seed)
    z = rng.integers(K, size=len(doc))
    n_dk, n_mkw, n_mk = np.zeros((3, K)), [np.zeros((K, 3)), np.zeros((K, 2))], np.zeros((2, K))
    for i in range(len(doc)):
        n_dk[doc[i], z[i]] += 1
        n_mkw[mod[i]][z[i], word[i]] += 1
        n_mk[mod[i], z[i]] += 1
    total, kept = np.zeros((3, K)), 0
    for sweep in range(n_sweeps):
        for i in range(len(doc)):
            d, w, m = doc[i], word[i], mod[i]
            n_dk[d, z[i]] -= 1
            n_mkw[m][z[i], w] -= 1
            n_mk[m, z[i]] -= 1
            p = PRIOR.numpy()[d] * (n_dk[d] + ALPHA) * (n_mkw[m][:, w] + BETA) / (n_mk[m] + n_mkw[m].shape[1] * BETA)
            z[i] = rng.choice(K, p=p / p.sum())
            n_dk[d, z[i]] += 1
            n_mkw[m][z[i], w] += 1
            n_mk[m, z[i]] += 1
        if 2 * sweep >= n_sweeps:
            total += (n_dk + ALPHA) / (n_dk.sum(1, keepdims=True) + K * ALPHA)
            kept += 1
    return total / kept


def replicated_mean_theta(n_blocks: int, n_sweeps: int, replicas: int, seed: int,
                          prior: torch.Tensor = PRIOR, backend: str = "torch") -> np.ndarray:
    """`GibbsChain` on ``replicas`` independent copies of the tiny corpus (each copy its own samples and
    its own two modalities, so no counts are shared): E[theta] averaged over copies and sweeps."""
    g = torch.Generator().manual_seed(seed)
    chain = GibbsChain(3 * replicas, [3, 2] * replicas, K, ALPHA, BETA, F64, torch.device("cpu"))
    for r in range(replicas):
        for m, c in enumerate((C0, C1)):
            block = torch.zeros(3 * replicas, c.shape[1], dtype=torch.long)
            block[3 * r:3 * r + 3] = c
            chain.set_counts(2 * r + m, block, None, None, g)
    theta, _ = chain.run(n_sweeps, n_blocks, prior.repeat(replicas, 1), None, g, backend)
    return theta.reshape(replicas, 3, K).mean(0).numpy()


def test_sequential_reference_sweep_matches_enumeration():
    """3,000 sweeps of the token-by-token sampler: E[theta] within 0.03 of the enumerated value
    (Monte-Carlo error of ~1,500 correlated draws; fixed seed)."""
    np.testing.assert_allclose(sequential_mean_theta(3000, seed=0), exact_mean_theta(), atol=0.03)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocked_sweep_matches_the_exact_posterior(backend):
    """300 independent copies x 200 sweeps (30,000 draws, Monte-Carlo error ~0.001). With 16 blocks per
    sweep (each block 1/16 of the tokens, so a copy rarely has two tokens in one block) E[theta] is within
    0.005 of the exact value; fully parallel (1 block, AD-LDA with every token stale) shows its bias
    (about 0.02 here) and stays within 0.04."""
    exact = exact_mean_theta()
    np.testing.assert_allclose(replicated_mean_theta(16, 200, 300, seed=0, backend=backend), exact, atol=0.005)
    parallel = np.abs(replicated_mean_theta(1, 200, 300, seed=0, backend=backend) - exact).max()
    assert 0.005 < parallel < 0.04


@NUMBA
def test_sequential_sweep_of_the_compiled_backend_matches_the_exact_posterior():
    """One token per block (the sequential collapsed Gibbs sampler, affordable compiled: 3,300 blocks a sweep):
    the same copies and sweeps as above, E[theta] within 0.005 of the enumeration, unbiased where the
    fully parallel sweep is not."""
    np.testing.assert_allclose(replicated_mean_theta(11 * 300, 200, 300, seed=0, backend="numba"),
                               exact_mean_theta(), atol=0.005)


def test_blocks_in_storage_order_partition_the_tokens_uniformly():
    """`sampler._blocks` with ``in_order`` (large document-topic tables): every token in exactly one block, each
    block in storage order with its own uniforms, sizes n / B to one token, and a token's block uniform over
    the B blocks (chi-square over 1,500 sweeps, false-alarm rate 1e-3)."""
    g = torch.Generator().manual_seed(0)
    n, b = 103, 8
    seen = np.zeros((n, b), dtype=np.int64)
    for _ in range(1500):
        blocks = list(_blocks(n, b, True, F64, torch.device("cpu"), g))
        assert len(blocks) == b
        idx = torch.cat([i for i, _ in blocks])
        assert torch.equal(idx.sort().values, torch.arange(n))
        for j, (i, u) in enumerate(blocks):
            assert bool((i[1:] > i[:-1]).all()) and u.shape == (i.shape[0], 1)
            assert abs(i.shape[0] - n / b) < 1
            seen[i.numpy(), j] += 1
    assert stats.chisquare(seen[0]).pvalue > 1e-3 and stats.chisquare(seen[n - 1]).pvalue > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocked_sweep_in_storage_order_matches_the_exact_posterior(monkeypatch, backend):
    """The sweep that reads the tables in storage order (``SORT_ABOVE`` lowered so the tiny corpus takes it):
    E[theta] within 0.005 of the enumeration, as the random-order sweep (same copies, sweeps and blocks)."""
    monkeypatch.setattr(sampler, "SORT_ABOVE", 0)
    np.testing.assert_allclose(replicated_mean_theta(16, 200, 300, seed=2, backend=backend), exact_mean_theta(),
                               atol=0.005)


def test_draw_never_picks_a_trailing_zero_probability_category():
    """A uniform just below 1 times the total can round up to the total in float32; the draw stays on the
    categories of positive probability, and otherwise follows the inverse CDF."""
    p = torch.tensor([[1.0, 3.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0], [2.0, 0.0, 1.0, 1.0]], dtype=torch.float32)
    u = torch.tensor([[1.0 - 2.0**-24], [0.2], [0.6]], dtype=torch.float32)
    assert sampler._draw(p, None, u).tolist() == [1, 0, 2]


def test_prior_once_per_sample_targets_the_tempered_posterior():
    """MLDA(prior_per="sample") gives the chain pi_dk^(1/T_d): the chain's E[theta] (150 copies x 200 sweeps)
    matches the enumeration with the prior counted once per sample within 0.007 (measured 0.002-0.004 over
    seeds 0-2), and differs from the per-token posterior (by 0.04). The prior is a strong one: a weak prior
    tempered 4 times barely tells the two topics apart, and each copy's chain then sits in one labelling
    for long stretches (Monte-Carlo error ~0.01 at this size)."""
    strong = torch.tensor([[0.97, 0.03], [0.05, 0.95], [0.5, 0.5]], dtype=F64)
    tempered = prior_once_per_sample(strong, [C0, C1])
    totals = (C0.sum(1) + C1.sum(1)).double()[:, None]
    expected = strong ** (1 / totals)
    torch.testing.assert_close(tempered, expected / expected.sum(1, keepdim=True))
    exact = exact_mean_theta(once_per_sample=True, prior=strong)
    np.testing.assert_allclose(replicated_mean_theta(16, 200, 150, seed=1, prior=tempered), exact, atol=0.007)
    assert np.abs(exact - exact_mean_theta(prior=strong)).max() > 0.03


def planted(n: int, seed: int) -> tuple[list[torch.Tensor], np.ndarray]:
    """Four topics; modality 0 cannot tell topics 0 and 1 apart (they share their features), modality 1
    cannot tell 2 and 3 apart. Each sample: 85% its class's topic, 15% spread; 40 + 20 tokens."""
    rng = np.random.default_rng(seed)
    phi0 = np.zeros((4, 24))
    phi0[[0, 1], 0:8] = 1
    phi0[2, 8:16] = 1
    phi0[3, 16:24] = 1
    phi1 = np.zeros((4, 12))
    phi1[0, 0:4] = 1
    phi1[1, 4:8] = 1
    phi1[[2, 3], 8:12] = 1
    labels = rng.integers(4, size=n)
    theta = np.full((n, 4), 0.05)
    theta[np.arange(n), labels] = 0.85
    xs = []
    for phi, size in ((phi0, 40), (phi1, 20)):
        p = theta @ (phi / phi.sum(1, keepdims=True))
        xs.append(torch.as_tensor(np.stack([rng.multinomial(size, row) for row in p]), dtype=F64))
    return xs, labels


def test_mlda_recovers_planted_topics_that_no_single_modality_can():
    """Hungarian-matched accuracy: both modalities >= 0.95; each alone <= 0.8 (two topics merge);
    topics inferred from modality 0 alone for new samples (modality 1 missing) keep the 0/1 merge."""
    xs, labels = planted(160, seed=0)
    model = MLDA(4, max_iter=60, n_init=3, random_state=0, category=labels).fit(xs)
    assert model.accuracy >= 0.95
    for m in range(2):
        single = MLDA(4, max_iter=60, random_state=0).fit([xs[m]])
        assert clustering_accuracy(labels, single.posterior.argmax(1)) <= 0.8
    new, new_labels = planted(80, seed=1)
    assert clustering_accuracy(new_labels, model.predict(new)) >= 0.95
    partial = model.predict([new[0], None])
    assert 0.6 <= clustering_accuracy(new_labels, partial) <= 0.8
    for phi, v in zip(model.topic_word_, (24, 12)):
        assert phi.shape == (4, v)
        torch.testing.assert_close(phi.sum(1), torch.ones(4, dtype=F64))


def test_weights_rescale_each_sample_as_in_serket():
    counts = as_counts(torch.tensor([[1.0, 3.0], [0.0, 0.0], [0.2, 0.2]]), 200.0, "test")
    assert counts.tolist() == [[50, 150], [0, 0], [100, 100]]
    with pytest.raises(ValueError, match="non-negative"):
        as_counts(torch.tensor([[-1.0, 1.0]]), None, "modality 0")


class FixedClasses(ClassModule):
    """A child sending fixed class posteriors (as a GMM would) and recording the prior it receives."""

    accepts = ("data",)
    receives = ("prior",)

    def _update(self, ctx, forward, backward):
        self.received = self.class_prior(backward, forward[0].n)
        self.posterior = forward[0].value
        return self.message("posterior", forward[0].value), {}


def test_mlda_module_with_a_class_child_and_a_parent_prior():
    """MLDA over a word modality and a child's class posteriors (weight 50): topic posteriors up, the
    child's predicted class distribution (theta @ phi) down; a parent's prior pulls the topics."""
    xs, labels = planted(120, seed=2)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels) % 2, 2).to(F64) * 0.9 + 0.05
    child = FixedClasses(2).connect(Observation(onehot))
    mlda = MLDA(4, weights=[None, 50], category=labels, max_iter=40, n_init=3).connect(Observation(xs[0]), child)
    Graph([mlda]).fit(n_iter=2, seed=0)
    assert mlda.accuracy >= 0.95  # words split {0,1},{2},{3}; the class child splits 0 from 1
    assert mlda.forward_message.kind == "posterior" and mlda.forward_message.value.shape == (120, 4)
    assert child.received is not None  # the child used MLDA's prior in its second update
    down = child.backward_messages[mlda.name].value
    torch.testing.assert_close(down, mlda.posterior @ mlda.topic_word_[1], atol=1e-6, rtol=0)
    assert clustering_accuracy(labels % 2, down.argmax(1)) >= 0.95
    # a parent's prior that puts every sample in topic 0 pulls the posterior mass there
    before = mlda.posterior[:, 0].mean()
    prior = torch.full((120, 4), 0.02, dtype=F64)
    prior[:, 0] = 0.94
    mlda.receive_backward(Message("parent", mlda.name, "c", "prior", prior))
    mlda.update()
    assert mlda.posterior[:, 0].mean() > before + 0.2


def test_errors_and_persistence(tmp_path):
    xs, _ = planted(20, seed=3)
    with pytest.raises(ValueError, match="agree on the number of samples"):
        MLDA(2).fit([xs[0], xs[1][:10]])
    with pytest.raises(ValueError, match="weights"):
        MLDA(2, weights=[1.0]).fit(xs)
    with pytest.raises(MessageKindError, match="mlda"):
        MLDA(2).connect(Observation(xs[0]), _LatentSender().connect(Observation(xs[0])))
    with pytest.raises(ValueError, match="alpha"):
        MLDA(2, alpha=1.0, doc_topic_prior=1.0)
    model = MLDA(3, max_iter=10, random_state=0).connect(Observation(xs[0], name="a"), Observation(xs[1], name="b"))
    Graph([model]).fit(1, seed=0)
    fresh = MLDA(3, max_iter=10, random_state=0, learnable=False).connect(Observation(xs[0], name="a"),
                                                                          Observation(xs[1], name="b"))
    load_module(fresh, save_module(model, tmp_path / "mlda.pt"))
    for a, b in zip(fresh.topic_word_, model.topic_word_):
        torch.testing.assert_close(a, b)
    Graph([fresh]).fit(1, seed=0)  # recognition with the loaded topics
    assert clustering_accuracy(model.classes, fresh.classes) >= 0.9


class _LatentSender(Module):
    accepts = ("data",)
    sends = "latent"

    def _update(self, ctx, forward, backward):
        return self.message("latent", forward[0].value), {}


def test_sample_needs_one_length_per_modality_and_fit_tokens_in_each():
    """``sample(3, [5])`` on two modalities returned one matrix (zip stopped at the shorter list); one length per
    modality gives rows of those sums. A modality that rounds to no tokens (probability rows) is named in fit."""
    xs, _ = planted(30, seed=4)
    model = MLDA(2, max_iter=5, random_state=0).fit(xs)
    for bad in ([5], [5, 5, 5]):
        with pytest.raises(ValueError, match=rf"^MLDA mlda.sample: n_tokens must be an int or 2 lengths, one per "
                                             rf"modality, got {len(bad)}$"):
            model.sample(3, bad)
    out, theta = model.sample(3, [5, 7], random_state=0)
    assert len(out) == 2 and theta.shape == (3, 2)
    assert [o.shape for o in out] == [(3, 24), (3, 12)]
    assert out[0].sum(1).tolist() == [5.0] * 3 and out[1].sum(1).tolist() == [7.0] * 3
    # numpy integers are integers (list(np.int64(5)) failed with a TypeError); 0 or fractional lengths and counts of
    # documents are named (0 failed inside torch.multinomial)
    out, _ = model.sample(np.int64(2), np.int64(4), random_state=0)
    assert [o.sum(1).tolist() for o in out] == [[4.0, 4.0], [4.0, 4.0]]
    out, _ = model.sample(2, np.array([3, 6]), random_state=0)
    assert [o.sum(1).tolist() for o in out] == [[3.0, 3.0], [6.0, 6.0]]
    for bad in (0, [5, 0], 2.5, None):
        with pytest.raises(ValueError, match=rf"^MLDA mlda.sample: n_tokens must be integers >= 1 \(tokens per "
                                             rf"document, one per modality\), got {re.escape(repr(bad))}$"):
            model.sample(3, bad)
    with pytest.raises(ValueError, match=r"^MLDA mlda.sample: n_samples must be an integer >= 1, got 0$"):
        model.sample(0, 5)
    probabilities = xs[1] / xs[1].sum(1, keepdim=True)
    with pytest.raises(ValueError, match=r"^MLDA mlda: modality 1 holds no tokens after rounding to counts; "):
        MLDA(2, max_iter=5, random_state=0).fit([xs[0], probabilities])


def test_the_node_computes_in_its_widest_childs_dtype_whatever_their_order():
    """The node took its dtype from its first child: with an integer word-count observation first (float32, as
    observations take integers) a float64 graph ran the topics in float32 and sent a float32 prior to its float64 GMM;
    with the GMM first, float64."""
    g = torch.Generator().manual_seed(0)
    lab = torch.arange(60) % 2
    words = torch.poisson(torch.tensor([[20.0, 1, 5], [1.0, 20, 5]])[lab], generator=g).long()
    x = torch.randn(60, 2, dtype=F64, generator=g) * 1.5 + lab[:, None].double()
    for order in ("gmm first", "words first"):
        gmm = km.GMM(2, name="gmm", max_iter=3).connect(km.Observation(x, name="x"))
        w = km.Observation(words, name="w")
        mlda = km.MLDA(2, name="mlda").connect(*((gmm, w) if order == "gmm first" else (w, gmm)))
        km.Graph([mlda]).fit(n_iter=2, seed=0)
        assert mlda.posterior.dtype == F64, order
        assert gmm.backward_messages["mlda"].value.dtype == F64, order
