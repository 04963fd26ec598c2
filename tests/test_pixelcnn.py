"""The masked convolutions of `kizuna.nets.PixelCNN` and `PixelCNNBernoulli` against brute force.

* masks: the autograd Jacobian of every pixel's logit in the input image is zero for the pixel
  itself and every later pixel in raster order (several layers deep, where a wrong mask "B" would
  leak), and the left and upper neighbours do reach it;
* normalisation: all :math:`2^9` binary 3×3 images have probabilities adding up to one (float64),
  with and without a context;
* sampling: Pearson chi-square of 20,000 raster-order draws of 2×2 images over the 16 outcomes
  (false-alarm rate 1e-3).
"""

from __future__ import annotations

import itertools

import pytest
import scipy.stats as st
import torch

from kizuna.distributions import PixelCNNBernoulli
from kizuna.nets import MaskedConv2d, PixelCNN

F64 = torch.float64
ALPHA = 1e-3


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _images(h: int, w: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=h * w)), dtype=F64).reshape(-1, 1, h, w)


def test_mask_layouts() -> None:
    a = MaskedConv2d(1, 1, 3, "A").mask[0, 0]
    b = MaskedConv2d(1, 1, 3, "B").mask[0, 0]
    assert torch.equal(a, torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 0]]))
    assert torch.equal(b, torch.tensor([[1.0, 1, 1], [1, 1, 0], [0, 0, 0]]))


def test_each_logit_depends_only_on_earlier_pixels() -> None:
    h, w = 5, 4
    net = PixelCNN(hidden_channels=8, n_layers=3, kernel_size=3).double()
    x = torch.rand(1, 1, h, w, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda v: net(v).flatten(), x).reshape(h * w, h * w).abs()
    raster = torch.arange(h * w)
    later_or_self = raster[None, :] >= raster[:, None]  # (output pixel, input pixel)
    assert torch.all(jac[later_or_self] == 0)
    for r, c in [(2, 2), (4, 3)]:  # the left neighbour and the three pixels above reach (r, c)
        out = r * w + c
        for dr, dc in [(0, -1), (-1, -1), (-1, 0), (-1, 1)]:
            assert jac[out, (r + dr) * w + c + dc] > 0, (r, c, dr, dc)


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "context"])
def test_probabilities_of_all_binary_images_add_up_to_one(conditional: bool) -> None:
    kw = {"cond_var": ["c"], "context_features": 2} if conditional else {}
    p = PixelCNNBernoulli(3, 3, hidden_channels=8, n_layers=2, kernel_size=3, **kw).double()
    x = _images(3, 3)
    given = {"c": torch.tensor([[0.7, -1.2]], dtype=F64).expand(len(x), 2)} if conditional else {}
    total = p.get_log_prob({"x": x, **given}).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-12)


def test_raster_draws_follow_the_probabilities() -> None:
    p = PixelCNNBernoulli(2, 2, hidden_channels=8, n_layers=2, kernel_size=3).double()
    with torch.no_grad():
        for param in p.parameters():
            param.mul_(2.0)  # sharper conditionals: a wrong order would show
    x = _images(2, 2)
    probs = p.get_log_prob({"x": x}).exp()
    n = 20_000
    with torch.no_grad():
        draws = p.sample(batch_n=n)["x"].reshape(n, 4)
    index = (draws * torch.tensor([8.0, 4, 2, 1], dtype=F64)).sum(1).long()  # rows of _images
    counts = torch.bincount(index, minlength=16).double()
    assert st.chisquare(counts.numpy(), (probs * n).detach().numpy()).pvalue > ALPHA


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="mask_type must be 'A' or 'B'"):
        MaskedConv2d(1, 1, 3, "C")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        MaskedConv2d(1, 1, 4, "A")
    p = PixelCNNBernoulli(3, 3, hidden_channels=4, n_layers=1)
    with pytest.raises(ValueError, match=r"expected \(batch, 1, 3, 3\)"):
        p.get_log_prob({"x": torch.zeros(2, 9)})


def test_context_is_checked_as_mades() -> None:
    """A wrong context is named as MADE names it (before: 3 rows out for 1 image in, torch's "mat1 and mat2 shapes
    cannot be multiplied", or a broadcasting error)."""
    net = PixelCNN(hidden_channels=4, n_layers=1, context_features=3)
    with pytest.raises(ValueError, match=r"PixelCNN: the context must be \(batch, 3\) with the batch of x \(1\).*"
                                         r"got shape \(3, 3\)"):
        net(torch.zeros(1, 1, 3, 3), torch.randn(3, 3))
    for bad in [(2, 5), (3, 3)]:
        with pytest.raises(ValueError, match=rf"PixelCNN: the context must be \(batch, 3\).*\(2, or 1\).*"
                                             rf"got shape \({bad[0]}, {bad[1]}\)"):
            net(torch.zeros(2, 1, 3, 3), torch.zeros(*bad))
    with pytest.raises(ValueError, match=r"PixelCNN: built with context_features=3 but no context was given"):
        net(torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"PixelCNN: built without a context.*shape \(2, 3\)"):
        PixelCNN(hidden_channels=4, n_layers=1)(torch.zeros(2, 1, 3, 3), torch.zeros(2, 3))
    assert net(torch.zeros(2, 1, 3, 3), torch.zeros(1, 3)).shape == (2, 1, 3, 3)  # one context for every image
    assert net(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3)).shape == (2, 1, 3, 3)  # features flattened
    p = PixelCNNBernoulli(2, 2, hidden_channels=4, n_layers=1, cond_var=["c"], context_features=3)
    with pytest.raises(ValueError, match=r"PixelCNN: the context must be \(batch, 3\).*got shape \(2, 4\)"):
        p.get_log_prob({"x": torch.zeros(2, 1, 2, 2), "c": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match=r"PixelCNN: the context must be \(batch, 3\).*got shape \(2, 4\)"):
        p.sample({"c": torch.zeros(2, 4)})


def test_sample_shape_without_batch_n() -> None:
    """(n, 1, C, H, W) draws as a plain family gives (it drew one image for n draws and failed to reshape it)."""
    torch.manual_seed(0)
    p = PixelCNNBernoulli(2, 2, hidden_channels=4, n_layers=1)
    x = p.sample(sample_shape=[4])["x"]
    assert x.shape == (4, 1, 1, 2, 2) and set(x.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(("make", "message"), [
    (lambda: PixelCNN(n_layers=-1, hidden_channels=4), r"PixelCNN: n_layers must be an integer >= 0, got -1"),
    (lambda: PixelCNN(hidden_channels=0), r"PixelCNN: hidden_channels must be an integer >= 1, got 0"),
    (lambda: PixelCNN(hidden_channels=4, kernel_size=1), r"PixelCNN: kernel_size must be odd.*>= 3.*got 1"),
    (lambda: PixelCNN(hidden_channels=4, kernel_size=-1), r"PixelCNN: kernel_size must be odd.*>= 3.*got -1"),
    (lambda: PixelCNN(hidden_channels=4, kernel_size=4), r"PixelCNN: kernel_size must be odd.*got 4"),
    (lambda: PixelCNN(hidden_channels=4, hidden_kernel_size=2), r"PixelCNN: hidden_kernel_size must be odd.*got 2"),
    (lambda: PixelCNN(hidden_channels=4, context_features=-1), r"PixelCNN: context_features must be an integer >= 0"),
    (lambda: PixelCNN(in_channels=0, hidden_channels=4), r"PixelCNN: in_channels must be an integer >= 1, got 0"),
    (lambda: MaskedConv2d(1, 1, 1, "A"), r"MaskedConv2d: kernel_size must be odd and an integer >= 3.*got 1"),
    (lambda: PixelCNNBernoulli(0, 3, hidden_channels=4), r"PixelCNNBernoulli: height must be an integer >= 1, got 0"),
    (lambda: PixelCNNBernoulli(-1, 3, hidden_channels=4), r"PixelCNNBernoulli: height must be an integer >= 1, got -1"),
    (lambda: PixelCNNBernoulli(3, 0, hidden_channels=4), r"PixelCNNBernoulli: width must be an integer >= 1, got 0"),
], ids=["layers-1", "hidden0", "kernel1", "kernel-1", "kernel4", "hiddenkernel2", "context-1", "in0", "maskA1",
        "height0", "height-1", "width0"])
def test_arguments_are_checked_at_construction(make, message) -> None:
    """Before: n_layers=-1 and a 0×3 image were accepted, and kernel_size=1 built a first layer whose mask "A" is all
    zeros (the model never saw a pixel); a negative size raised torch's "negative dimension" error."""
    with pytest.raises(ValueError, match=message):
        make()


def test_kernels_that_see_something_are_taken_and_channels_are_checked() -> None:
    net = PixelCNN(hidden_channels=4, n_layers=1, kernel_size=3, hidden_kernel_size=1)  # 1×1 mask "B" keeps the centre
    assert net(torch.zeros(2, 1, 3, 3)).shape == (2, 1, 3, 3)
    assert torch.equal(MaskedConv2d(1, 1, 1, "B").mask, torch.ones(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"PixelCNN: x has 2 channels but the network was built with in_channels=1"):
        net(torch.zeros(1, 2, 3, 3))  # before: torch's conv error


def test_an_empty_batch_with_a_context_is_scored() -> None:
    # (the context was flattened with reshape(0, -1), which torch cannot size for zero rows)
    net = PixelCNN(1, 8, 2, context_features=3)
    assert net(torch.zeros(0, 1, 4, 4), torch.zeros(0, 3)).shape == (0, 1, 4, 4)
