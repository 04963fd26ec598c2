"""float32 forward-backward in log space over long sequences (stop 43, area K finding 1).

When one step makes the scaled recursions decline (a state the chain cannot reach explains a row ~100 nats better
than the reachable ones: below float32's smallest normaliser, 9.9e-32), the whole block runs the log-space loops.
These kept unnormalised messages, which grow like the log-likelihood so far; float32 rounding at that size drifted
through the recursion, so posteriors came out far above 1 and the log-likelihood nats off. float64 declines only
below 1e-200, so on the same chains it takes the fast path: an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kizuna.modules import _forward_backward as fb

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
F64 = torch.float64
START = torch.tensor([0.5, 0.5, 0.0], dtype=F64)  # state 2 cannot start
TRANS = torch.tensor([[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.1, 0.9]], dtype=F64)


def chain(n: int, offset: float, firsts: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log start, log trans, log-emissions (n, 3)) in float32: log-emissions around ``offset`` (the size of a
    ~300-dimensional Gaussian's log-density), where the rows ``firsts`` (the sequences' first steps) favour the state
    that cannot start by 100 nats."""
    g = torch.Generator().manual_seed(seed)
    log_emit = torch.randn(n, 3, generator=g, dtype=F64) * 3 + offset
    for row in firsts:
        log_emit[row] = torch.tensor([-100.0, -100.0, 0.0], dtype=F64) + offset
    return torch.log(START).float(), torch.log(TRANS).float(), log_emit.float()


def takes_log_space(log_start, log_trans, log_emit, lengths) -> bool:
    lengths = torch.as_tensor(lengths)
    return fb._scaled_forward_backward(log_start, log_trans, fb.pad(log_emit, lengths), lengths) is None


@pytest.mark.parametrize("lengths", [[2000], [1200, 800]])
def test_float32_log_space_posteriors_counts_and_likelihood_match_float64(lengths):
    """Posteriors are distributions equal to float64's (they reached 968 at 2,000 steps, 2.2e4 in the block of two
    sequences), and so are the cavities (0.1 off), expected counts (1e-2 relative) and log p(x) (1e-5 relative; now
    1e-7, as the fast path's rounding)."""
    firsts = list(np.cumsum([0] + lengths[:-1]))
    chain32 = chain(sum(lengths), -1000.0, firsts)
    chain64 = tuple(v.double() for v in chain32)  # the same numbers
    assert takes_log_space(*chain32, lengths) and not takes_log_space(*chain64, lengths)
    sm32, sm64 = fb.forward_backward(*chain32, lengths), fb.forward_backward(*chain64, lengths)
    gamma = sm32.log_gamma.exp().double()
    assert sm32.log_gamma.dtype == torch.float32 and bool((gamma <= 1.0).all())
    torch.testing.assert_close(gamma.sum(1), torch.ones(gamma.shape[0], dtype=F64), atol=1e-5, rtol=0)
    torch.testing.assert_close(gamma, sm64.log_gamma.exp(), atol=1e-5, rtol=0)
    torch.testing.assert_close(sm32.log_cavity.exp().double(), sm64.log_cavity.exp(), atol=1e-5, rtol=0)
    torch.testing.assert_close(sm32.trans_counts.double(), sm64.trans_counts, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(sm32.start_counts.double(), sm64.start_counts, atol=1e-5, rtol=0)
    for loglik in (sm32.log_likelihood, fb.forward_log_likelihood(*chain32, lengths)):
        assert loglik.dtype == torch.float32
        torch.testing.assert_close(loglik.double(), sm64.log_likelihood, rtol=1e-6, atol=0)


def test_float32_hmm_score_and_posteriors_match_hmmlearn_in_log_space():
    """Through the estimator: a 3-state diagonal Gaussian HMM in 50 dimensions that cannot start in state 2, on 2,000
    steps drawn from it whose first row is 3.5 in every dimension (so float32 runs in log space). `score` and
    `predict_proba` on float32 data equal hmmlearn's on the same numbers (the score was 2.5 nats off, 1.8e-5 relative;
    posteriors reached 1.99 and were 0.99 off)."""
    from hmmlearn import hmm as hl

    from kizuna.modules import HiddenMarkovModel

    d = 50
    start, trans = START.numpy(), TRANS.numpy()
    means, covars = np.repeat([[0.0], [1.0], [2.0]], d, axis=1), np.ones((3, d))
    ref = hl.GaussianHMM(3, covariance_type="diag", init_params="")
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = start, trans, means, covars
    rng = np.random.default_rng(0)
    states = [0]
    for _ in range(1999):
        states.append(rng.choice(3, p=trans[states[-1]]))
    x = (means[states] + rng.standard_normal((2000, d))).astype(np.float32)
    x[0] = 3.5  # 100 nats more likely under state 2 than under state 1, 400 more than under state 0
    model = HiddenMarkovModel(3, covariance_type="diag", init_params="")
    model.startprob_, model.transmat_, model.means_, model.covars_ = (v.astype(np.float32)
                                                                      for v in (start, trans, means, covars))
    xt, lengths = model._data(x, None)
    assert xt.dtype == torch.float32 and takes_log_space(*model._log_chain(), model._log_emit(xt), lengths)
    post = np.asarray(model.predict_proba(x), dtype=np.float64)
    np.testing.assert_allclose(post.sum(1), 1.0, atol=1e-5, rtol=0)
    np.testing.assert_allclose(post, ref.predict_proba(x.astype(np.float64)), atol=1e-4, rtol=0)
    assert model.score(x) == pytest.approx(ref.score(x.astype(np.float64)), rel=1e-6)


def test_float32_log_space_path_draws_follow_the_posterior():
    """Forward filtering, backward sampling from the log-space loop: every draw is a possible path, and the draws'
    frequencies match float64's posteriors. For each step and state with posterior g in (0.05, 0.95),
    (frequency - g)^2 / (g (1 - g) / S) has mean 1 for exact draws; the drifted filter's logits (rounded to 0.1 nats
    at that size) gave 2.2."""
    n, draws = 2000, 1000
    chain32 = chain(n, -1000.0, [0], seed=1)
    assert takes_log_space(*chain32, [n])
    paths = fb.sample_paths(*chain32, n_samples=draws, generator=torch.Generator().manual_seed(1))
    assert bool((START[paths[:, 0]] > 0).all() & (TRANS[paths[:, :-1], paths[:, 1:]] > 0).all())
    gamma = fb.forward_backward(*(v.double() for v in chain32)).log_gamma.exp()
    freq = torch.nn.functional.one_hot(paths, 3).double().mean(0)
    inside = (gamma > 0.05) & (gamma < 0.95)
    z2 = ((freq - gamma) ** 2 * draws / (gamma * (1 - gamma)))[inside]
    assert z2.numel() > 1000 and float(z2.mean()) < 1.3
