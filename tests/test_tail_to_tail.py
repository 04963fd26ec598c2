"""Neuro-SERKET's tail-to-tail node: label alignment, the priors it sends, and two modules learning together."""

import numpy as np
import pytest
import torch

from kizuna import modules as km
from kizuna.metrics import adjusted_rand_score
from kizuna.modules.base import Message
from kizuna.modules.tail_to_tail import TailToTail, align


class Fixed(km.ClassModule):
    """A class module that sends a fixed posterior and records the prior it receives."""

    receives = ("prior",)
    accepts = ("data",)

    def __init__(self, posterior, name):
        super().__init__(posterior.shape[1], name=name)
        self.fixed = posterior

    def _update(self, ctx, forward, backward):
        self.posterior = self.fixed
        return self.message("posterior", self.fixed), {}


def test_align_recovers_a_permutation():
    rng = np.random.default_rng(0)
    p = torch.as_tensor(rng.dirichlet(np.ones(4) * 0.3, size=50))
    sigma = torch.tensor([2, 0, 3, 1])
    assert torch.equal(p[:, sigma][:, align(p, p[:, sigma])], p)


def test_priors_are_the_other_modules_beliefs_in_the_receivers_labels():
    a = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]], dtype=torch.float64)
    b_own = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.3, 0.5, 0.2]], dtype=torch.float64)
    perm = torch.tensor([1, 2, 0])  # b's label j is a's label perm^-1...
    b = torch.empty_like(b_own)
    b[:, perm] = b_own  # b calls a's class k "perm[k]"
    data = km.Observation(np.zeros((3, 1)))
    ma, mb = Fixed(a, "a").connect(data), Fixed(b, "b").connect(km.Observation(np.zeros((3, 1))))
    tt = TailToTail(smoothing=0.0).connect(ma, mb)
    km.Graph([tt]).fit(1, seed=0)
    assert torch.equal(tt.permutations[1], perm)
    # a receives b's belief in a's labels; b receives a's belief in b's labels
    torch.testing.assert_close(ma.backward_in.value, b_own)
    want_b = torch.empty_like(a)
    want_b[:, perm] = a
    torch.testing.assert_close(mb.backward_in.value, want_b)
    joint = a * b_own
    torch.testing.assert_close(tt.posterior, joint / joint.sum(1, keepdim=True))


def test_two_gmms_on_two_modalities_help_each_other():
    """Each modality separates a different pair of three classes; joined, both GMMs find all three."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 60)
    x1 = np.where(y[:, None] == 2, 4.0, 0.0) + rng.normal(size=(180, 2))  # classes 0 and 1 overlap
    x2 = np.where(y[:, None] == 0, 4.0, 0.0) + rng.normal(size=(180, 2))  # classes 1 and 2 overlap
    g1 = km.GMM(3, category=y, max_iter=15).connect(km.Observation(x1))
    g2 = km.GMM(3, category=y, max_iter=15).connect(km.Observation(x2))
    alone = max(adjusted_rand_score(y, km.GMM(3, algorithm="em", random_state=0).fit_predict(x)) for x in (x1, x2))
    tt = TailToTail().connect(g1, g2)
    km.Graph([tt]).fit(4, seed=0)
    assert adjusted_rand_score(y, tt.posterior.argmax(1).numpy()) > max(alone, 0.8)


def test_errors():
    with pytest.raises(ValueError):
        TailToTail(smoothing=-1)
    p = torch.full((2, 2), 0.5)
    tt = TailToTail().connect(Fixed(p, "a").connect(km.Observation(np.zeros((2, 1)))))
    with pytest.raises(ValueError, match="at least two"):
        tt._update(km.UpdateContext(), [Message("a", None, "c", "posterior", p)], None)


def test_hard_posteriors_without_smoothing_give_finite_priors():
    """One-hot posteriors have log 0 = -inf entries: each prior is the sum of the other modules' log-beliefs (the
    total minus one's own was -inf - (-inf) = nan and the prior message was refused)."""
    a = torch.eye(3, dtype=torch.float64)[[0, 1]]
    ma = Fixed(a, "a").connect(km.Observation(np.zeros((2, 1))))
    mb = Fixed(a.clone(), "b").connect(km.Observation(np.zeros((2, 1))))
    tt = TailToTail(smoothing=0.0).connect(ma, mb)
    km.Graph([tt]).fit(1, seed=0)
    torch.testing.assert_close(ma.backward_in.value, a)
    torch.testing.assert_close(mb.backward_in.value, a)
    torch.testing.assert_close(tt.posterior, a)


def test_children_of_two_dtypes_are_joined_in_the_wider_one_and_get_priors_in_their_own():
    """A float32 child beside a float64 one (a GMM on images beside one on numpy features) stopped Graph.fit with
    torch's bare "expected m1 and m2 to have the same dtype". The posteriors are joined in float64, with the values
    of the all-float64 case, and each child's prior comes back in its own dtype."""
    a = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]], dtype=torch.float32)
    b = torch.tensor([[0.1, 0.6, 0.3], [0.6, 0.2, 0.2], [0.2, 0.3, 0.5]], dtype=torch.float64)
    runs = []
    for first in (a, a.double()):
        ma = Fixed(first, "a").connect(km.Observation(np.zeros((3, 1))))
        mb = Fixed(b, "b").connect(km.Observation(np.zeros((3, 1))))
        tt = TailToTail(smoothing=0.01).connect(ma, mb)
        km.Graph([tt]).fit(1, seed=0)
        runs.append((tt.posterior, ma.backward_in.value, mb.backward_in.value))
    (post, prior_a, prior_b), (post64, prior_a64, prior_b64) = runs
    assert post.dtype == torch.float64 and torch.equal(post, post64)
    assert prior_a.dtype == torch.float32 and torch.equal(prior_a, prior_a64.float())
    assert prior_b.dtype == torch.float64 and torch.equal(prior_b, prior_b64)
