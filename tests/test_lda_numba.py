"""The compiled collapsed Gibbs sweep (`kizuna.modules._numba_kernels.gibbs_sweep`, optional extra ``fast``): draw
for draw the torch sweep (every block count, prior or not, fixed topics, storage order, float32 / float64), and
with one token per block draw for draw the sequential collapsed Gibbs sampler written out token by token here;
the estimators on both backends; the backend option's errors. (Against enumeration: tests/test_mlda.py.)"""

import numpy as np
import pytest
import torch

from kizuna.modules import _backend
from kizuna.modules.lda import LDA, MLDA, GibbsChain, sampler

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
needs_numba = pytest.mark.skipif(not _backend.numba_available(), reason="numba not installed (kizuna[fast])")


def small_chain(dtype=F64, seed=0, n=40, sizes=(30, 20), k=5):
    g = torch.Generator().manual_seed(seed)
    chain = GibbsChain(n, list(sizes), k, 0.3, 0.1, dtype, torch.device("cpu"))
    for m, v in enumerate(sizes):
        chain.set_counts(m, torch.poisson(torch.full((n, v), 0.6), generator=g).long(), None, None, g)
    return chain, torch.rand(n, k, generator=g, dtype=F64), g


@needs_numba
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("n_blocks", [1, 16, 10**6])
@pytest.mark.parametrize("in_order", [False, True])
def test_equals_the_torch_sweep_draw_for_draw(monkeypatch, dtype, n_blocks, in_order):
    monkeypatch.setattr(sampler, "SORT_ABOVE", 0 if in_order else 1 << 20)
    for with_prior, fixed in ((True, False), (False, False), (True, True)):
        runs = []
        for backend in ("torch", "numba"):
            chain, prior, g = small_chain(dtype, n=40 if n_blocks < 100 else 6)  # one token a block: few tokens
            phi = torch.rand(50, 5, generator=torch.Generator().manual_seed(9), dtype=dtype) if fixed else None
            theta, phi_hat = chain.run(4, n_blocks, prior if with_prior else None, phi, g, backend)
            runs.append((torch.cat(chain.z), theta, phi_hat, g.get_state()))
        for a, b in zip(*runs):
            assert torch.equal(a, b)  # topics, estimates and the generator's state after the run


def sequential_sweeps(doc, word, mod, z, sizes, k, alpha, beta, prior, n_sweeps, g):
    """The collapsed Gibbs sampler from its definition (Griffiths & Steyvers 2004, with the class prior):
    tokens one at a time in a fresh random order, each drawn by the inverse CDF of
    p(z_i = k | rest) ∝ prior_dk (n_dk + α)(n_kw + β)/(n_k + V_m β) with its own assignment removed, from the
    order and uniforms the module's generator gives (`sampler._sweep_draws`)."""
    offsets = np.cumsum([0, *sizes])
    n_dk, n_wk, n_mk = np.zeros((prior.shape[0], k)), np.zeros((offsets[-1], k)), np.zeros((len(sizes), k))
    np.add.at(n_dk, (doc, z), 1)
    np.add.at(n_wk, (word, z), 1)
    np.add.at(n_mk, (mod, z), 1)
    vbeta = np.array(sizes, dtype=float) * beta
    for _ in range(n_sweeps):
        order, u, _ = sampler._sweep_draws(len(doc), len(doc), False, F64, torch.device("cpu"), g)
        for i, ui in zip(order.tolist(), u[:, 0].tolist()):
            d, w, m = doc[i], word[i], mod[i]
            n_dk[d, z[i]] -= 1
            n_wk[w, z[i]] -= 1
            n_mk[m, z[i]] -= 1
            p = (n_dk[d] + alpha) * prior[d] * ((n_wk[w] + beta) / (n_mk[m] + vbeta[m]))
            cdf = np.cumsum(p)
            target = min(ui * cdf[-1], np.nextafter(cdf[-1], 0.0))
            z[i] = min(int(np.searchsorted(cdf, target, side="right")), k - 1)
            n_dk[d, z[i]] += 1
            n_wk[w, z[i]] += 1
            n_mk[m, z[i]] += 1
    return z


@needs_numba
def test_one_token_per_block_is_the_sequential_sampler_draw_for_draw():
    chain, prior, g = small_chain(seed=1)
    doc, z0 = torch.cat(chain.docs).numpy(), torch.cat(chain.z).numpy().copy()
    mod = np.concatenate([np.full(len(d), m) for m, d in enumerate(chain.docs)])
    word = torch.cat([w + chain.offsets[m] for m, w in enumerate(chain.words)]).numpy()
    g_ref = torch.Generator().set_state(g.get_state())
    chain.run(5, len(doc), prior, None, g, "numba")
    expected = sequential_sweeps(doc, word, mod, z0, chain.sizes, 5, 0.3, 0.1, prior.numpy(), 5, g_ref)
    assert np.array_equal(torch.cat(chain.z).numpy(), expected)


def corpus(n, v, seed):
    g = torch.Generator().manual_seed(seed)
    topics = torch.rand(3, v, generator=g, dtype=F64) ** 4
    theta = torch.distributions.Dirichlet(torch.full((3,), 0.3, dtype=F64)).sample((n,))
    return torch.poisson(30 * theta @ (topics / topics.sum(1, keepdim=True)), generator=g)


@needs_numba
def test_estimators_are_the_same_on_both_backends():
    xs = [corpus(60, 25, 0), corpus(60, 15, 1)]
    fits = [MLDA(3, max_iter=20, n_init=2, random_state=0, backend=b).fit(xs) for b in ("torch", "numba")]
    assert torch.equal(fits[0].posterior, fits[1].posterior)
    assert all(torch.equal(a, b) for a, b in zip(fits[0].topic_word_, fits[1].topic_word_))
    new = [corpus(20, 25, 2), None]  # fixed topics, a missing modality
    assert torch.equal(fits[0].transform(new), fits[1].transform(new))
    lda = [LDA(3, max_iter=10, random_state=0, backend=b).fit(xs[0]) for b in ("torch", "numba")]
    assert torch.equal(lda[0].topic_word_, lda[1].topic_word_)


def test_backend_errors_name_the_problem(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        MLDA(2, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        LDA(2, backend="cython").fit(corpus(10, 5, 0))
    monkeypatch.setattr(_backend, "numba_available", lambda: False)
    with pytest.raises(ImportError, match=r"kizuna\[fast\]"):
        MLDA(2, backend="numba")
    x = corpus(10, 5, 0)
    auto = LDA(2, max_iter=3, random_state=0).fit(x)  # without numba: the torch path, the same chain
    assert torch.equal(auto.topic_word_, LDA(2, max_iter=3, random_state=0, backend="torch").fit(x).topic_word_)
