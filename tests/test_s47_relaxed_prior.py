"""Review RC (stop 47): a Gumbel-softmax label VAE written with a plain `Categorical` prior p(y) failed with "value of y
is outside the support (OneHot()) of Categorical", naming no cause; the error now names the relaxed draw and the
remedy, and the remedy (a `RelaxedCategorical` prior) scores the categorical log-likelihood Σ y log π."""
from __future__ import annotations

import pytest
import torch

from kizuna.distributions import Categorical, RelaxedCategorical


def test_a_relaxed_draw_under_a_categorical_prior_names_the_remedy():
    probs = torch.tensor([0.2, 0.3, 0.5])
    y = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]])
    prior = Categorical(var=["y"], probs=probs, features_shape=[3], name="p")
    with pytest.raises(ValueError, match=r"p\(y\): value of y is a relaxed draw \(rows on the simplex, not one-hot\), "
                                         r"which Categorical does not score: give its prior as a RelaxedCategorical"):
        prior.get_log_prob({"y": y})
    with pytest.raises(ValueError, match=r"outside the support"):  # not on the simplex: the plain error
        prior.get_log_prob({"y": torch.tensor([[0.5, 0.7, 0.2]])})
    relaxed = RelaxedCategorical(var=["y"], probs=probs, temperature=0.5, features_shape=[3], name="p")
    assert torch.allclose(relaxed.get_log_prob({"y": y}), (y * probs.log()).sum(-1), rtol=1e-6)
    hard = torch.nn.functional.one_hot(y.argmax(-1), 3).float()
    assert torch.allclose(prior.get_log_prob({"y": hard}), probs.log()[y.argmax(-1)], rtol=1e-6)
