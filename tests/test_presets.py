"""The presets `ML`, `VI` and `VAE`: Pixyz's signatures, and their optima against closed forms / scikit-learn."""

import inspect

import numpy as np
import pytest
import torch
from mc_reference import default_dtype
from sklearn.linear_model import LogisticRegression
from torch import nn

from kizuna.distributions import Categorical, Normal
from kizuna.models import ML, VAE, VI

# the argument names of pixyz.models.{VAE, VI, ML} (pixyz/models/*.py), in order
PIXYZ = {
    VAE: ["encoder", "decoder", "other_distributions", "regularizer", "optimizer", "optimizer_params",
          "clip_grad_norm", "clip_grad_value"],
    VI: ["p", "approximate_dist", "other_distributions", "optimizer", "optimizer_params", "clip_grad_norm",
         "clip_grad_value"],
    ML: ["p", "other_distributions", "optimizer", "optimizer_params", "clip_grad_norm", "clip_grad_value"],
}


@pytest.fixture(autouse=True)
def _float64():
    with default_dtype(torch.float64):
        yield


@pytest.mark.parametrize("preset", list(PIXYZ), ids=lambda c: c.__name__)
def test_signatures_are_pixyz_s(preset):
    params = inspect.signature(preset).parameters
    positional = [n for n, p in params.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert positional == PIXYZ[preset]
    # kizuna's own, by keyword
    assert [n for n in params if n not in positional] == ["compile", "validate", "scheduler", "scheduler_params"]


def test_presets_pass_compile_and_validate_to_model():
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    q = Normal(var=["z"], cond_var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=1.0, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
    for model in (VAE(q, p, other_distributions=[], validate=True, compile={"mode": "reduce-overhead"}),
                  VI(p * prior, q, validate=False, compile=True), ML(q, validate=True, compile=True)):
        assert model.validate is not None and model._compile_args is not None
    assert VAE(q, p).validate is None and VAE(q, p)._compile_args is None  # Model's defaults


def test_presets_take_a_scheduler_that_fit_steps_per_epoch():
    """The presets build the scheduler over their optimizer as `Model` does: the learning rates `fit` leaves after each
    epoch are those of torch's StepLR stepped by hand over an optimizer of the same rate."""
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    q = Normal(var=["z"], cond_var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=1.0, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
    options = {"optimizer_params": {"lr": 0.1}, "scheduler": torch.optim.lr_scheduler.StepLR,
               "scheduler_params": {"step_size": 2, "gamma": 0.5}}
    data = {"x": torch.randn(8, 1, generator=torch.Generator().manual_seed(0)), "z": torch.zeros(8, 1)}
    by_hand = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), 2, 0.5)
    expected = []
    for _ in range(5):
        by_hand.optimizer.step()
        by_hand.step()
        expected.append(by_hand.get_last_lr()[0])
    for model in (VAE(q, p, **options), VI(p * prior, q, **options), ML(q, **options)):
        assert isinstance(model.scheduler, torch.optim.lr_scheduler.StepLR)
        seen = []
        for _ in range(5):
            model.fit(data, epochs=1, batch_size=8, quiet=True, seed=0)
            seen.append(model.optimizer.param_groups[0]["lr"])
        assert seen == expected == [0.1, 0.05, 0.05, 0.025, 0.025]
    with pytest.raises(ValueError, match="scheduler_params .* were given without a scheduler"):
        ML(q, scheduler_params={"step_size": 2})


def test_ml_of_a_normal_is_the_sample_mean_and_std():
    data = torch.randn(400, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.5, 2.0]) + 1.0
    p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(2)), scale=nn.Parameter(torch.ones(2)))
    model = ML(p, optimizer_params={"lr": 0.05})
    assert str(model.loss_cls) == "mean(-log p(x))"
    model.fit({"x": data}, epochs=800, batch_size=400, quiet=True, seed=0)
    torch.testing.assert_close(p.loc.detach(), data.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(p.scale.detach(), data.std(0, unbiased=False), atol=1e-4, rtol=0)


class Classifier(Categorical):
    def __init__(self):
        super().__init__(var=["y"], cond_var=["x"], name="p")
        self.linear = nn.Linear(2, 3)

    def forward(self, x):
        return {"logits": self.linear(x)}


def test_ml_of_a_linear_classifier_is_unpenalised_logistic_regression():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    x = np.array([[0, 0], [1.5, 0.5], [0.5, 1.5]])[labels] + rng.normal(size=(300, 2))  # overlapping: finite MLE
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(x, labels)
    nll = -np.mean(np.log(reference.predict_proba(x)[np.arange(300), labels]))
    torch.manual_seed(0)
    model = ML(Classifier(), optimizer_params={"lr": 0.05})
    data = {"x": torch.tensor(x), "y": nn.functional.one_hot(torch.tensor(labels), 3).double()}
    history = model.fit(data, epochs=500, batch_size=300, quiet=True, seed=0)
    assert history["train"][0] > nll + 0.1  # it learned ...
    assert model.test(data) == pytest.approx(nll, abs=1e-6)  # ... up to the maximum likelihood


M0, S0, SIGMA, N = 1.0, 2.0, 1.5, 20


class Likelihood(Normal):
    """p(x_1..x_N | mu) = prod_i N(x_i; mu, sigma^2): the N observations are the features of one row."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["mu"], name="p")

    def forward(self, mu):
        return {"loc": mu.expand(-1, N), "scale": torch.full((1,), SIGMA)}


def test_vi_on_a_conjugate_normal_model_reaches_the_exact_posterior():
    x = 3 + SIGMA * torch.randn(N, generator=torch.Generator().manual_seed(0))
    precision = 1 / S0**2 + N / SIGMA**2  # Normal-Normal conjugacy
    post_mean, post_std = (M0 / S0**2 + x.sum().item() / SIGMA**2) / precision, precision**-0.5
    prior = Normal(var=["mu"], loc=M0, scale=S0, features_shape=[1], name="p_prior")
    q = Normal(var=["mu"], loc=nn.Parameter(torch.zeros(1)), scale=nn.Parameter(torch.ones(1)), name="q")
    model = VI(Likelihood() * prior, q, optimizer_params={"lr": 0.02})
    assert str(model.loss_cls) == "-mean(E_{q(mu)}[log p(x,mu) - log q(mu)])"
    # 64 copies of the one data row: 64 draws of mu per step, so the gradient noise is 8x smaller
    data = {"x": x.expand(64, N)}
    model.fit(data, epochs=500, batch_size=64, quiet=True, seed=0)
    model.optimizer.param_groups[0]["lr"] = 0.002
    model.fit(data, epochs=200, batch_size=64, quiet=True)
    # the Gaussian family holds the posterior: q reaches it up to the remaining SGD noise
    assert abs(q.loc.item() - post_mean) < 0.03 * post_std
    assert q.scale.item() == pytest.approx(post_std, rel=0.03)


def test_vi_without_data_fits_q_to_the_target():
    target = Normal(var=["z"], loc=torch.tensor([2.0]), scale=torch.tensor([0.5]), name="p")
    q = Normal(var=["z"], loc=nn.Parameter(torch.zeros(1)), scale=nn.Parameter(torch.ones(1)), name="q")
    model = VI(target, q, optimizer_params={"lr": 0.02})  # minimises KL[q||p] (one draw per step)

    def kl():  # closed form, torch.distributions
        return torch.distributions.kl_divergence(q.get_dist({}), target.get_dist({})).item()

    assert kl() == pytest.approx(np.log(0.5) + (1 + 4) / (2 * 0.25) - 0.5)
    torch.manual_seed(0)
    for _ in range(1500):
        model.train()
    # the optimum is q = p; what remains is the SGD noise of a one-sample gradient
    assert kl() < 0.01 and abs(q.loc.item() - 2.0) < 0.05 and abs(q.scale.item() - 0.5) < 0.05


def test_other_distributions_are_trained_once():
    p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=1.0)
    extra = Normal(var=["y"], loc=nn.Parameter(torch.zeros(1)), scale=1.0)
    model = ML(p, other_distributions=[extra, p])
    assert list(model.distributions) == [p, extra]
    assert len(model.optimizer.param_groups[0]["params"]) == 2


def test_presets_name_an_argument_that_is_not_a_distribution():
    """VAE(q, "p"), VI(p, "q") and ML(None) ended in "'str' object has no attribute 'var'"."""
    from kizuna.distributions import Normal
    from kizuna.losses import Expectation, LogProb
    from kizuna.models import ML, VI

    p = Normal(var=["x"], loc=torch.nn.Parameter(torch.zeros(1)), scale=1.0)
    for build in (lambda: VI(p, "q"), lambda: ML(None), lambda: LogProb("p")):
        with pytest.raises(TypeError, match="give a kizuna distribution"):
            build()
    with pytest.raises(TypeError, match="Expectation: the distribution to draw from must be a kizuna distribution"):
        Expectation("q", LogProb(p))
