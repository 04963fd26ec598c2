"""Pixyz's API in the core classes (issue 11): the behaviour Pixyz programs rely on.

Written from Pixyz 0.3.3's documented semantics; numbers are closed forms or the values Pixyz prints
for the same call (noted where used). These tests describe the core items the lead implements
(distributions/base.py, torch_dist.py, joint.py, marginal.py, losses/base.py, models/model.py, gan.py):
until those land, most of them fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kizuna.distributions import Bernoulli, Categorical, Deterministic, MixtureModel, Normal, RelaxedBernoulli
from kizuna.losses import CrossEntropy, Expectation, KullbackLeibler, LogProb
from kizuna.models import GAN, Model

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------ constants: copied, named, batch dim of one
def test_constant_parameters_are_copied_not_aliased() -> None:
    ones = torch.ones(3)
    p = Normal(loc=torch.zeros(3), scale=ones)
    ones.mul_(5)  # the caller changes its tensor: p must not change
    assert torch.equal(p.get_params()["scale"].reshape(-1), torch.ones(3))
    other = Normal(loc=torch.zeros(3), scale=ones)  # built from the same (now 5) tensor
    other.load_state_dict(Normal(loc=torch.zeros(3), scale=torch.full((3,), 2.0)).state_dict())
    assert torch.equal(ones, torch.full((3,), 5.0))  # loading into `other` leaves the caller's tensor alone
    assert torch.equal(p.get_params()["scale"].reshape(-1), torch.ones(3))


def test_constants_are_attributes_with_a_batch_dim_of_one_and_pixyz_state_dict_keys() -> None:
    p = Normal(var=["x"], loc=torch.zeros(4), scale=torch.ones(4))
    assert p.loc.shape == (1, 4) and p.scale.shape == (1, 4)
    assert set(p.state_dict()) == {"loc", "scale"}
    p.loc[0] = torch.arange(4.0)  # Pixyz's EM-for-GMM example writes the parameters in place
    torch.testing.assert_close(p.sample_mean(), torch.arange(4.0)[None])
    prior = Categorical(var=["z"], probs=torch.full((3,), 1 / 3))
    prior.probs[0] = torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(prior.get_log_prob({"z": torch.eye(3)}), torch.tensor([0.2, 0.3, 0.5]).log())


def test_a_pixyz_checkpoint_loads() -> None:
    # Pixyz 0.3.3 saves Normal(loc=zeros(2, 3), scale=ones) as {"loc": (1, 2, 3), "scale": (1, 2, 3)}
    state = {"loc": torch.full((1, 2, 3), 0.5), "scale": torch.full((1, 2, 3), 2.0)}
    q = Normal(loc=torch.zeros(2, 3), scale=torch.ones(2, 3))
    q.load_state_dict(state)
    x = torch.zeros(1, 2, 3)
    torch.testing.assert_close(q.get_log_prob({"x": x}),
                               torch.distributions.Normal(0.5, 2.0).log_prob(x).sum().reshape(1))


# ------------------------------------------------------------------ sample_mean and keyword options
def test_sample_mean_on_distributions_products_and_mixtures() -> None:
    assert Normal(loc=0.0, scale=1.0).sample(sample_mean=True)["x"].item() == 0.0
    joint = Normal(var=["x"], loc=0.0, scale=1.0) * Normal(var=["y"], cond_var=["x"], loc="x", scale=1.0)
    assert joint.sample(sample_mean=True)["y"].item() == 0.0
    mix = MixtureModel([Normal(loc=0.0, scale=1.0), Normal(loc=1.0, scale=1.0)],
                       Categorical(probs=torch.tensor([1.0, 2.0])))
    # the mixture's mean sum_k pi_k mu_k = 2/3 (Pixyz returns 1.0, the mean of the most probable component:
    # a deliberate difference, see docs/porting_from_pixyz.md)
    assert mix.sample(sample_mean=True)["x"].item() == pytest.approx(2 / 3)


def test_loss_eval_with_sample_mean_uses_the_mean_instead_of_a_draw() -> None:
    p = Normal(loc=0.0, scale=1.0)
    value = Expectation(p, p.log_prob()).eval({}, sample_mean=True)
    assert value.item() == pytest.approx(-HALF_LOG_2PI, abs=1e-6)  # log N(0; 0, 1), as Pixyz


@pytest.mark.parametrize("build", [
    lambda: Normal(loc=0.0, scale=1.0),
    lambda: Normal(var=["x"], cond_var=["y"], loc="y", scale=1.0) * Normal(var=["y"], loc=0.0, scale=1.0),
])
def test_unknown_keyword_options_are_ignored(build) -> None:
    dist = build()
    x_dict = dist.sample(unknown_opt=None)
    assert dist.get_log_prob(x_dict, unknown_opt=None).shape == (1,)


# ------------------------------------------------------------------ shapes: sample_shape, feature_dims, batch of one
def test_get_log_prob_scores_draws_made_with_sample_shape() -> None:
    p = Normal(loc=0.0, scale=1.0)
    draw = p.sample(batch_n=4, sample_shape=(2, 3))
    assert draw["x"].shape == (2, 3, 4)
    per_draw = torch.distributions.Normal(0.0, 1.0).log_prob(draw["x"])
    torch.testing.assert_close(p.get_log_prob(draw, feature_dims=[]), per_draw)
    torch.testing.assert_close(p.get_log_prob(draw, feature_dims=[-2]), per_draw.sum(-2))
    torch.testing.assert_close(p.get_log_prob(draw, feature_dims=[0, 1]), per_draw.sum((0, 1)))


def test_values_and_conditions_without_a_batch_dim_get_a_batch_of_one() -> None:
    p = Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[2])
    torch.testing.assert_close(p.get_log_prob({"x": torch.zeros(2)}), torch.tensor([-2 * HALF_LOG_2PI]))
    cond = Normal(var=["x"], cond_var=["m"], loc="m", scale=1.0, features_shape=[5])
    assert cond.sample({"m": 0})["x"].shape == (1, 5)  # Pixyz's tutorial: sample({"mu_var": 0})
    rb = RelaxedBernoulli(var=["x"], temperature=torch.tensor(0.5), probs=torch.ones(2))
    assert rb.get_log_prob({"x": torch.tensor([0.0, 1.0])}).item() == pytest.approx(-15.9424, abs=1e-3)  # Pixyz


# ------------------------------------------------------------------ names and construction
def test_name_is_settable_on_single_distributions_products_and_marginals() -> None:
    p = Normal(var=["x"], loc=0.0, scale=1.0)
    p.name = "q"
    assert p.prob_text == "q(x)"
    joint = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0) * Normal(var=["z"], loc=0.0, scale=1.0)
    joint.name = "p_{all}"
    assert joint.prob_text == "p_{all}(x,z)"
    marginal = joint.marginalize_var(["z"])
    marginal.name = "q"
    assert marginal.prob_text == "q(x)"


def test_a_distribution_without_parameters_is_valid_until_used() -> None:
    p = Normal(var=["x"], name="p")  # Pixyz allows it (a placeholder, or parameters set later)
    assert p.prob_text == "p(x)"
    with pytest.raises((ValueError, TypeError), match="loc"):
        p.sample()


def test_get_params_keys_in_pixyzs_order() -> None:
    dist = Normal(var=["x"], cond_var=["y"], loc="y", scale=1.0)
    assert list(dist.get_params({"y": torch.ones(1)})) == ["loc", "scale"]
    renamed = dist.replace_var(y="z")
    assert list(renamed.get_params({"z": torch.ones(1)})) == ["loc", "scale"]


# ------------------------------------------------------------------ losses
def test_a_loss_is_an_nn_module() -> None:
    p = Normal(var=["x"], loc=0.0, scale=1.0)
    loss = CrossEntropy(p, p)
    assert isinstance(loss, nn.Module)
    assert loss.to("cpu") is loss


def test_loss_text_is_latex() -> None:
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
    kl = KullbackLeibler(q, prior)
    assert kl.loss_text == kl.to_latex()
    assert kl.loss_text.startswith("D_{")


def test_eval_with_return_dict_returns_the_inputs_too() -> None:
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0)
    p = Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0)
    e = Expectation(q, p.log_prob())
    zero = torch.zeros(1)
    _, out = e.eval({"y": zero, "x": zero, "w": zero}, return_dict=True)
    assert set(out) == {"w", "x", "y", "z"}
    _, drawn = e.eval({"y": zero, "x": zero}, return_dict=True, return_all=False)
    assert set(drawn) == {"z"}


# ------------------------------------------------------------------ models
def _model() -> tuple[Model, torch.Tensor]:
    class Decoder(Bernoulli):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"])
            self.fc = nn.Linear(2, 3)

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"probs": torch.sigmoid(self.fc(z))}

    p = Decoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2])
    loss = -Expectation(prior, LogProb(p)).mean()
    return Model(loss, distributions=[p], optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1}), \
        torch.ones(4, 3)


def test_model_train_and_test_return_a_detached_scalar_tensor() -> None:
    model, x = _model()
    for value in (model.train({"x": x}), model.test({"x": x})):
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
        assert math.isfinite(value.item())


def test_model_train_passes_keyword_options_to_the_loss() -> None:
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2])
    q = Normal(var=["z"], loc=nn.Parameter(torch.zeros(2)), scale=1.0, features_shape=[2], name="q")
    model = Model(KullbackLeibler(q, prior).mean() - Expectation(q, LogProb(prior)).mean(), distributions=[q])
    assert isinstance(model.train(batch_n=5), torch.Tensor)  # Pixyz's VI example: model.train(batch_size=...)
    assert isinstance(model.test(batch_n=5), torch.Tensor)


def test_gan_train_returns_tensors() -> None:
    class Generator(Deterministic):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.fc = nn.Linear(2, 2)

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"x": self.fc(z)}

    class Discriminator(Deterministic):
        def __init__(self) -> None:
            super().__init__(var=["t"], cond_var=["x"], name="d")
            self.fc = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"t": torch.sigmoid(self.fc(x))}

    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2])
    p = (Generator() * prior).marginalize_var("z")
    model = GAN(p, Discriminator(), optimizer=torch.optim.Adam, d_optimizer=torch.optim.Adam)
    g_loss, d_loss = model.train({"x": torch.randn(8, 2)})
    assert isinstance(g_loss, torch.Tensor) and isinstance(d_loss, torch.Tensor)  # Pixyz: loss.item()
