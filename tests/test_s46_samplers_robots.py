"""Stop 46: a network held in buffers gives FlowMatching and SGLD its dtype (as it gives the paths theirs), and
SpatialConcept.predict_position refuses words and rows without a word of the vocabulary by name."""

import numpy as np
import pytest
import torch
from torch import nn

from kizuna import modules as km
from kizuna.datasets import simulated_house
from kizuna.distributions import EnergyDistribution, FlowMatching
from kizuna.samplers import SGLD, LinearPath

A = torch.tensor([[0.5, 0.2], [-0.1, 0.4]], dtype=torch.float64)
B = torch.tensor([1.0, -0.5], dtype=torch.float64)


class Velocity(nn.Module):
    """v(x, t) = x A + b (an exact, frozen velocity), its tensors buffers or parameters."""

    def __init__(self, as_parameters: bool) -> None:
        super().__init__()
        if as_parameters:
            self.A, self.b = nn.Parameter(A.clone()), nn.Parameter(B.clone())
        else:
            self.register_buffer("A", A.clone())
            self.register_buffer("b", B.clone())

    def forward(self, x, t):
        return x @ self.A + self.b


class Quadratic(nn.Module):
    """E(x) = (x - mu) P (x - mu) / 2, its tensors buffers or parameters."""

    def __init__(self, as_parameters: bool) -> None:
        super().__init__()
        mu, prec = B.clone(), torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
        if as_parameters:
            self.mu, self.prec = nn.Parameter(mu), nn.Parameter(prec)
        else:
            self.register_buffer("mu", mu)
            self.register_buffer("prec", prec)

    def forward(self, x):
        d = x - self.mu
        return 0.5 * ((d @ self.prec) * d).sum(-1)


def _flow_draws(as_parameters: bool):
    fm = FlowMatching(Velocity(as_parameters), [2], n_steps=4, likelihood_steps=5)
    torch.manual_seed(0)
    return fm, fm.sample(batch_n=5)["x"]


def test_flow_matching_reads_a_buffer_only_network_dtype():
    """A float64 velocity held in buffers drew float32 noise and failed with torch's bare "expected m1 and m2 to have
    the same dtype"; it now samples and scores as the same network held in parameters (same seed: the same draws)."""
    fm, got = _flow_draws(False)
    ref_fm, ref = _flow_draws(True)
    assert fm.path().dtype == torch.float64 == LinearPath(fm.velocity_net, [2]).dtype
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    x = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(fm.get_log_prob({"x": x}), ref_fm.get_log_prob({"x": x}), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"x is torch\.float32, the velocity network torch\.float64; convert one"):
        fm.get_log_prob({"x": x.float()})


def test_sgld_reads_a_buffer_only_energy_dtype():
    """SGLD over a float64 energy held in buffers kept a float32 buffer and returned float32 draws; now float64 and the
    same draws as the same energy held in parameters (same seeds)."""
    out = []
    for as_parameters in (False, True):
        torch.manual_seed(1)
        s = SGLD(EnergyDistribution(Quadratic(as_parameters), var=["x"]), [2], buffer_size=6, n_steps=5,
                 step_size=0.01, noise_scale=0.1)
        out.append((s.buffer, s.sample(4, generator=torch.Generator().manual_seed(2))))
    (buf, draws), (ref_buf, ref_draws) = out
    assert buf.dtype == draws.dtype == torch.float64
    torch.testing.assert_close(buf, ref_buf, rtol=0, atol=0)
    torch.testing.assert_close(draws, ref_draws, rtol=0, atol=0)


@pytest.fixture(scope="module")
def fitted():
    house = simulated_house(60, seed=0)
    gmm = km.GMM(6, max_iter=5).connect(km.Observation(house["position"]))
    spco = km.SpatialConcept(6, sweeps=3, name="spco").connect(
        gmm, km.Observation(house["word_counts"], name="words"), km.Observation(house["view"]))
    km.Graph([spco]).fit(n_iter=1, seed=3)
    return house, gmm, spco


@pytest.mark.parametrize("words", [["kitchen"], "kitchen", [["kitchen", "here"]]])
def test_predict_position_refuses_words_naming_what_to_pass(fitted, words):
    """Words (as docs/robotics.md once called the argument) gave numpy's bare "could not convert string to float"."""
    house, _, spco = fitted
    v = len(house["vocabulary"])
    with pytest.raises(ValueError, match=rf"spco: predict_position takes word counts, an M x {v} array of counts over "
                                         r"the vocabulary of the first count child, Observation words \(the columns "
                                         r"of the counts it was given, e.g. simulated_house\(\.\.\.\)\['vocabulary'\]"):
        spco.predict_position(words)


def test_predict_position_refuses_rows_without_a_word(fitted):
    """A row of zeros (a word outside the vocabulary counts nothing) returned the prior's sharpest component, as if it
    were an answer; it is an error naming the rows. Rows with counts still follow the formula (reference below)."""
    house, gmm, spco = fitted
    v = len(house["vocabulary"])
    kitchen = house["vocabulary"].index("kitchen")
    y = np.zeros((3, v))
    y[1, kitchen] = 1
    with pytest.raises(ValueError, match=r"spco: word counts rows 0, 2 hold no word of the vocabulary: no evidence "
                                         r"for a place"):
        spco.predict_position(y)
    with pytest.raises(ValueError, match=r"word counts row 0 holds no word of the vocabulary"):
        spco.predict_position(np.zeros(v))
    y = np.asarray(house["word_counts"][:4], dtype=np.float64).copy()
    y[3] = 0
    y[3, kitchen] = 1e-3  # (a small count is evidence: not refused)
    got = spco.predict_position(y)
    pi, phi = spco.sampler_.weights()
    theta = spco.sampler_.feature_distributions(0)
    log_l = np.log(pi)[None, :] + y @ np.log(theta).T
    post = np.exp(log_l - log_l.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    score = (post @ phi) / np.sqrt(np.linalg.det(np.asarray(gmm.covariances_)))[None, :]
    np.testing.assert_array_equal(got, np.asarray(gmm.means_)[score.argmax(1)])


def test_the_vocabulary_named_for_a_word_segmenter():
    """With a WordSegmenter as the words child, the error points at its vocabulary_."""
    spco = km.SpatialConcept(3, name="spco").connect(
        km.GMM(2), km.WordSegmenter(min_count=1, name="seg"), km.Observation(np.ones((4, 3))))
    assert spco._vocabulary_text() == "the vocabulary of the first count child, WordSegmenter seg (its vocabulary_)"
