"""Squared distances far from the origin (`kizuna._distances`) and the k-means seeding of the GMM and HMM built on
them, against float64 references."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from kizuna._distances import kmeans, squared_distances


def _far_clusters(offset: float = 3000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three tight clusters 0.3 apart, shifted far from the origin, in float32."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [0.3, 0.0], [0.0, 0.3]], dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(100)
    return (centres[y] + 0.02 * torch.randn(300, 2, generator=g, dtype=torch.float64) + offset).float(), y


@pytest.mark.parametrize("rows", [10, 300])  # below and above the 25 rows where torch.cdist takes a matrix product
def test_squared_distances_match_float64_far_from_the_origin(rows):
    x, _ = _far_clusters()
    x, y = x[:rows], x.flip(0)[:rows]
    exact = ((x.double()[:, None] - y.double()[None]) ** 2).sum(-1)
    got = squared_distances(x, y)
    assert got.dtype == torch.float32 and got.shape == (rows, rows)
    np.testing.assert_allclose(got.double().numpy(), exact.numpy(), atol=2e-4)  # float32 of unit-scale values
    assert squared_distances(x, x).diagonal().abs().max() < 1e-4  # torch.cdist alone: up to 0.25 here
    assert squared_distances(x[:0], y).shape == (0, rows)


@pytest.mark.parametrize("seed", range(3))
def test_kmeans_seeding_finds_the_clusters_far_from_the_origin(seed):
    x, y = _far_clusters()
    centres, labels = kmeans(x, 3, torch.Generator().manual_seed(seed))  # the start of the GMM and of the HMM
    assert adjusted_rand_score(y, labels) == 1.0  # before: about 0 (every distance lost to cancellation)
    assert adjusted_rand_score(y, torch.cdist(x.double(), centres.double()).argmin(1)) == 1.0


def test_gaussian_hmm_in_float32_far_from_the_origin_matches_the_centred_float64_fit():
    """The diagonal Gaussian emissions' log-density expands (x - mu)^2, which cancelled for float32 data at 3,000 (every
    state scored alike: ARI about 0); about the means' centre it does not. A density is unchanged by shifting the data,
    so the fit must match the same data centred at the origin in float64: same states, same log-likelihood."""
    from kizuna.modules.hmm import HiddenMarkovModel

    x, y = _far_clusters()
    far = HiddenMarkovModel(3, random_state=0).fit(x.numpy())
    centred = x.double().numpy() - 3000.0
    near = HiddenMarkovModel(3, random_state=0).fit(centred)
    assert adjusted_rand_score(y, far.predict(x.numpy())) == 1.0
    assert adjusted_rand_score(y, near.predict(centred)) == 1.0
    np.testing.assert_allclose(far.score(x.numpy()), near.score(centred), rtol=1e-3)
