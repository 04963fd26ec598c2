"""Found by reviews of the networks, the plotting helpers and the families (stop 35): zero-row draws, required sizes
given as None or fractions, and labels the plots could not draw. Each failed (or gave a wrong answer) before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kizuna.distributions import Categorical, MADEBernoulli, MixtureModel, MixtureOfNormal, Normal, PixelCNNBernoulli
from kizuna.nets import MADE, PixelCNN, ResNet, UNet
from kizuna.viz import match_clusters, plot_clustering_comparison, plot_latent_space
from kizuna.viz.latent import draw_latent_space


def test_zero_rows_are_zero_rows():
    """batch_n=0 drew one row (MADE, PixelCNN: ``batch_n or 1``) or failed with an IndexError (Categorical, a mixture
    over it); a mixture of experts given zero rows said "batch_n=1"; ``Normal`` is the reference."""
    assert Normal(var=["x"], loc=torch.zeros(3), scale=1.0).sample(batch_n=0)["x"].shape == (0, 3)
    assert MADEBernoulli(3, [8]).sample(batch_n=0)["x"].shape == (0, 3)
    assert PixelCNNBernoulli(2, 2, hidden_channels=4, n_layers=1).sample(batch_n=0)["x"].shape[0] == 0
    assert Categorical(var=["x"], probs=torch.tensor([0.3, 0.7])).sample(batch_n=0)["x"].shape == (0, 2)
    parts = [Normal(var=["x"], loc=float(k), scale=1.0, features_shape=[1]) for k in range(2)]
    mixture = MixtureModel(parts, Categorical(var=["z"], probs=torch.tensor([0.5, 0.5])))
    assert mixture.sample(batch_n=0)["x"].shape == (0, 1)
    experts = [Normal(var=["z"], cond_var=["a"], loc="a", scale=1.0) for _ in range(2)]
    assert MixtureOfNormal(experts).sample({"a": torch.zeros(0, 2)})["z"].shape == (0, 2)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: MADE(None, [8]), "MADE: in_features must be an integer >= 1, got None"),
    (lambda: MADE(3, [8], n_params=None), "MADE: n_params must be an integer >= 1, got None"),
    (lambda: PixelCNN(hidden_channels=None), "PixelCNN: hidden_channels must be an integer >= 1, got None"),
    (lambda: PixelCNN(n_layers=None), "PixelCNN: n_layers must be an integer >= 0, got None"),
    (lambda: ResNet(3, 2.5, 6, 1, 3, 1, False), "ResNet: mid_channels must be an integer >= 1, got 2.5"),
    (lambda: ResNet(3, 8, 6, 1.5, 3, 1, False), "ResNet: num_blocks must be an integer >= 0, got 1.5"),
    (lambda: ResNet(3, 8, 6, 1, 3, None, False), "ResNet: padding must be an integer >= 0, got None"),
    (lambda: UNet((1, 8.5, 8)), r"UNet: image_shape\[1\] must be an integer >= 1, got 8.5"),
    (lambda: UNet((1, 8, 8), time_scale=float("nan")), "UNet: time_scale must be a finite number, got nan"),
    (lambda: UNet((1, 8, 8), max_period="1e4"), "UNet: max_period must be a finite number > 1, got '1e4'"),
])
def test_network_sizes_are_checked(build, message):
    """None and fractions were truncated or failed inside (int(None), "divisible by groups"); a NaN time scale made
    every output NaN."""
    with pytest.raises(ValueError, match=message):
        build()


def test_a_resnet_given_other_channels_is_named():
    """A raw batch-norm error ("running_mean should contain 2 elements not 3") before."""
    with pytest.raises(ValueError, match=r"ResNet expects images \(N, 3, H, W\), got shape \(2, 2, 8, 8\)"):
        ResNet(3, 8, 6, 1, 3, 1, False)(torch.randn(2, 2, 8, 8))


def test_clusters_matched_to_none_are_plotted_and_bad_panels_named(tmp_path):
    """`match_clusters(..., unmatched="none")` among integer classes could not be plotted (np.unique of ints and a
    string); mark_wrong with a panel of other rows failed in a numpy broadcast; draw_latent_space did not check its
    labels or its mask."""
    import matplotlib

    matplotlib.use("svg")
    from kizuna.viz._backend import new_figure

    rng = np.random.default_rng(0)
    z, truth = rng.normal(size=(40, 3)), np.repeat([0, 1], 20)
    pred = np.repeat([0, 1, 2, 3], 10)
    labels = match_clusters(truth, pred, unmatched="none")
    assert "none" in labels.tolist()
    plot_latent_space([(z, labels, "matched")], tmp_path / "a.png")
    plot_clustering_comparison(truth, [("k", pred)], tmp_path / "b.png", latent_panels=[(z, labels, "k")])
    with pytest.raises(ValueError, match=r"latent panel 0 \('p'\) has 20 labels but labels_true 40"):
        plot_clustering_comparison(truth, [("k", pred)], tmp_path / "c.png",
                                   latent_panels=[(z[:20], pred[:20], "p")], mark_wrong=[True])
    ax = new_figure().subplots()
    with pytest.raises(ValueError, match=r"draw_latent_space panel 0 \('t'\): labels must be 1-D with 40 entries"):
        draw_latent_space(ax, z, truth[:5], "t")
    with pytest.raises(ValueError, match="wrong must be a boolean mask of 40 points"):
        draw_latent_space(ax, z, truth, "t", wrong=np.zeros(5, dtype=bool))
    draw_latent_space(ax, z, truth.tolist(), "t")  # a list of labels (an AttributeError on .dtype before)


def test_categorical_logits_may_mask_a_category_with_minus_infinity():
    """torch takes -inf logits (a category of probability 0); they were refused as "must be finite". A row with no
    category left, NaN and +inf stay refused."""
    logits = torch.tensor([0.0, -float("inf"), 1.0])
    p = Categorical(var=["x"], logits=logits)
    ref = torch.distributions.OneHotCategorical(logits=logits)
    torch.testing.assert_close(p.get_entropy(), ref.entropy().reshape(1))
    torch.testing.assert_close(p.get_log_prob({"x": torch.tensor([[0.0, 0.0, 1.0]])}),
                               ref.log_prob(torch.tensor([0.0, 0.0, 1.0])).reshape(1))
    torch.manual_seed(0)
    assert p.sample(batch_n=500)["x"][:, 1].sum() == 0
    with pytest.raises(ValueError, match="is -inf in every category of a row"):
        Categorical(var=["x"], logits=torch.tensor([-float("inf"), -float("inf")]))
    from kizuna.distributions import RelaxedCategorical

    relaxed = RelaxedCategorical(var=["x"], logits=logits)  # (refused before too)
    assert relaxed.sample(batch_n=200)["x"][:, 1].max() == 0
    torch.testing.assert_close(relaxed.get_entropy(), ref.entropy().reshape(1))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="must be finite"):
            Categorical(var=["x"], logits=torch.tensor([bad, 0.0]))
