"""More Pixyz 0.3.3 compatibility (review s40): a subclass's own ``sample`` is what products, losses and trainers draw
through; ``Model(retain_graph=...)``; ``MixtureOfNormal(weight_modalities=...)`` and Pixyz's mixture log-density;
Pixyz checkpoints of ``ChannelConv(decomposed=True)``. Reference numbers: closed forms, torch.distributions, and (the
checkpoint and the mixture) numbers printed by the real Pixyz 0.3.3, stored inline (this test does not import Pixyz).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from kizuna.distributions import Distribution, MixtureOfNormal, Normal
from kizuna.distributions.base import XDict
from kizuna.flows import ChannelConv
from kizuna.losses import Expectation as E
from kizuna.losses import LogProb
from kizuna.models import Model
from kizuna.utils import get_dict_values


# ------------------------------------------------------------------ #1 a subclass's own sample
class ClampedPrior(Normal):
    """N(0, 1) over z (2 features) whose draws a user's ``sample`` clamps to [0, 0.5] (Pixyz's extension point)."""

    def __init__(self) -> None:
        super().__init__(loc=torch.tensor(0.0), scale=torch.tensor(1.0), var=["z"], features_shape=[2], name="p")

    def sample(self, x_dict={}, batch_n=None, sample_shape=(), return_all=True, reparam=False,  # noqa: B006
               sample_mean=False, **kwargs) -> XDict:
        out = super().sample(x_dict, batch_n=batch_n, sample_shape=sample_shape, return_all=return_all,
                             reparam=reparam, sample_mean=sample_mean, **kwargs)
        out["z"] = out["z"].clamp(0.0, 0.5)
        return out


class ShiftedPrior(Normal):
    """N(loc, 1) whose ``sample`` adds 10 to every draw (not idempotent: applied twice it would add 20)."""

    def __init__(self) -> None:
        super().__init__(var=["z"], features_shape=[2], name="p")
        self.m = nn.Parameter(torch.tensor([0.5, -1.0]))

    def forward(self) -> dict:
        return {"loc": self.m.unsqueeze(0), "scale": torch.ones(1, 2)}

    def sample(self, x_dict={}, batch_n=None, sample_shape=(), return_all=True, reparam=False,  # noqa: B006
               sample_mean=False, **kwargs) -> XDict:
        out = super().sample(x_dict, batch_n=batch_n, sample_shape=sample_shape, return_all=return_all,
                             reparam=reparam, sample_mean=sample_mean, **kwargs)
        out["z"] = out["z"] + 10.0
        return out


class Uniform01(Distribution):
    """A direct Distribution subclass with its own sample / get_log_prob (the pattern of Pixyz's
    EmpiricalDistribution): U(0, 1) over z, its log-density w (a parameter, 0)."""

    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=[], name="u", features_shape=[2])
        self.w = nn.Parameter(torch.tensor(0.0))

    @property
    def has_reparam(self) -> bool:
        return True

    def sample(self, x_dict={}, batch_n=None, sample_shape=(), return_all=True, reparam=False,  # noqa: B006
               sample_mean=False, **kwargs) -> XDict:
        v = torch.rand(batch_n or 1, 2) + 0 * self.w
        return {**x_dict, "z": v} if return_all else {"z": v}

    def get_log_prob(self, x_dict, sum_features=True, feature_dims=None, **kwargs):
        v = get_dict_values(x_dict, self.var)[0]
        lp = torch.zeros_like(v) + self.w
        return lp.sum(-1) if sum_features else lp


def _likelihood() -> Normal:
    return Normal(loc="z", scale=torch.tensor(1.0), var=["x"], cond_var=["z"], name="p")


def test_product_draws_through_the_overridden_sample() -> None:
    """Pixyz's product draws each factor through its ``sample``; kizuna's drew through the private ``_sample`` and
    ignored the override (z up to 4.1 from the clamped prior)."""
    torch.manual_seed(0)
    out = (ClampedPrior() * _likelihood()).sample(batch_n=1000)
    assert out["z"].shape == (1000, 2) and out["x"].shape == (1000, 2)
    assert float(out["z"].min()) == 0.0 and float(out["z"].max()) == 0.5
    shifted = ShiftedPrior()
    torch.manual_seed(0)
    direct = shifted.sample(batch_n=4000)["z"]
    torch.manual_seed(0)
    joint = (shifted * _likelihood()).sample(batch_n=4000)["z"]
    torch.testing.assert_close(joint, direct)  # the same draws: the override applied once, not twice
    assert abs(float(joint.mean(0)[0]) - 10.5) < 0.1 and abs(float(joint.mean(0)[1]) - 9.0) < 0.1


def test_expectation_draws_through_the_overridden_sample() -> None:
    """E_prior[log N(x=0 | z, 1)] with the clamped draws: the closed form over the clamped normal (Pixyz printed
    -1.93; kizuna printed -2.85, the unclamped value)."""
    # E[z^2] for z = clamp(N(0, 1), 0, 0.5): the middle part's integral plus 0.25 P(eps > 0.5)
    phi, cdf = stats.norm.pdf, stats.norm.cdf
    middle = (cdf(0.5) - 0.5) - 0.5 * phi(0.5)  # int_0^0.5 e^2 phi(e) de = [Phi(e) - e phi(e)]_0^0.5
    ez2 = middle + 0.25 * (1 - cdf(0.5))
    expected = 2 * (-0.5 * math.log(2 * math.pi) - 0.5 * ez2)
    torch.manual_seed(0)
    value = E(ClampedPrior(), LogProb(_likelihood()), sample_shape=[4000]).eval({"x": torch.zeros(1, 2)})
    assert value.shape == (1,)
    assert abs(float(value) - expected) < 0.01, (float(value), expected)


def test_sample_shape_and_means_go_through_the_override_once() -> None:
    """``sample_shape`` draws and ``sample_mean`` means, direct and inside a product, get the override once (a
    product passes ``sample_mean=True`` to it, as Pixyz's does)."""
    p = ShiftedPrior()
    torch.manual_seed(0)
    z = p.sample(batch_n=3, sample_shape=[5])["z"]
    assert z.shape == (5, 3, 2) and float(z.min()) > 5.0
    means = (p * _likelihood()).sample(sample_mean=True)
    torch.testing.assert_close(means["z"], torch.tensor([[10.5, 9.0]]))
    torch.testing.assert_close(means["x"], torch.tensor([[10.5, 9.0]]))
    torch.manual_seed(0)
    value, draws = E(p, LogProb(_likelihood()), sample_shape=[50]).eval({"x": torch.zeros(1, 2)}, return_dict=True)
    assert draws["z"].shape == (50, 1, 2) and float(draws["z"].detach().min()) > 5.0


def test_pathwise_gradient_through_the_override() -> None:
    """The override passes ``reparam`` on, so an expectation's gradient reaches the prior's parameter through it:
    d/dm E[log N(0 | z, 1)] = -mean(z) per feature, at the draws made (z = m + eps + 10)."""
    p = ShiftedPrior()
    torch.manual_seed(0)
    value, draws = E(p, LogProb(_likelihood()), sample_shape=[50]).eval({"x": torch.zeros(1, 2)}, return_dict=True)
    value.sum().backward()
    assert float(draws["z"].detach().min()) > 5.0  # drawn through the override
    torch.testing.assert_close(p.m.grad, -draws["z"].detach().mean((0, 1)))


def test_direct_distribution_subclass_in_product_loss_and_model() -> None:
    """A direct Distribution subclass with its own sample / get_log_prob is drawn by a product, an expectation and a
    Model (each raised 'u(z) (Uniform01) cannot be sampled')."""
    u, p = Uniform01(), _likelihood()
    torch.manual_seed(0)
    out = (u * p).sample(batch_n=3)
    assert out["z"].shape == (3, 2) and out["x"].shape == (3, 2)
    x = torch.randn(3, 2)
    torch.manual_seed(0)
    value = E(u, LogProb(p)).eval({"x": x})
    torch.manual_seed(0)
    reference = p.get_log_prob({"z": torch.rand(3, 2), "x": x})  # the override's own draw, one per data row
    torch.testing.assert_close(value, reference)
    model = Model(-E(u, LogProb(p)).mean(), distributions=[u, p], optimizer=torch.optim.SGD,
                  optimizer_params={"lr": 0.1})
    torch.manual_seed(0)
    loss = model.train({"x": x})
    torch.testing.assert_close(loss, -reference.mean())


def test_routing_is_decided_per_class() -> None:
    """kizuna's own classes keep their private draw methods (no extra work per call); a class with a user's
    ``sample`` and its subclasses are routed; a ``sample`` that does not return the variables is named."""
    from kizuna.distributions import JointDistribution

    for cls in (Normal, JointDistribution, MixtureOfNormal, Distribution):
        assert not hasattr(cls._sample, "_routed") and not hasattr(cls._sample_n, "_routed")
    assert ClampedPrior._sample._routed and Uniform01._sample_n._routed

    class Sub(ClampedPrior):
        pass

    torch.manual_seed(0)
    assert float((Sub() * _likelihood()).sample(batch_n=200)["z"].max()) == 0.5

    class Broken(Uniform01):
        def sample(self, x_dict={}, **kwargs) -> XDict:  # noqa: B006
            return {"y": torch.zeros(1, 2)}

    with pytest.raises(ValueError, match=r"^u\(z\): Broken\.sample must return a dict with its variables \['z'\], "
                                         r"got \['y'\]$"):
        (Broken() * _likelihood()).sample()


# ------------------------------------------------------------------ #4 Pixyz's keyword arguments
def test_model_retain_graph() -> None:
    """``Model(..., retain_graph=True)`` (Pixyz's) passes it to backward: a value given to ``train`` that carries a
    graph (a network's output computed once) is trained on twice; without it the second step raises torch's
    error. The steps are SGD's closed form for -mean log N(h | m, 1): m <- m + lr (mean(h) - m)."""
    torch.manual_seed(0)
    net = nn.Linear(2, 2)
    h = net(torch.randn(8, 2))  # carries a graph to net

    def fresh() -> Normal:
        return Normal(var=["x"], loc=nn.Parameter(torch.zeros(2)), scale=1.0, name="p")

    p = fresh()
    model = Model(-LogProb(p).mean(), distributions=[p], optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1},
                  retain_graph=True)
    model.train({"x": h})
    model.train({"x": h})
    target = h.detach().mean(0)
    after_one = 0.1 * target
    torch.testing.assert_close(p.loc.detach().reshape(2), after_one + 0.1 * (target - after_one))
    q = fresh()
    plain = Model(-LogProb(q).mean(), distributions=[q], optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1})
    plain.train({"x": h})
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        plain.train({"x": h})


def _experts() -> tuple[Normal, Normal]:
    qa = Normal(loc="a", scale=torch.tensor(2.0), var=["z"], cond_var=["a"], name="q")
    qb = Normal(loc="b", scale=torch.tensor(0.5), var=["z"], cond_var=["b"], name="q")
    return qa, qb


# values of the mixture tests; Pixyz 0.3.3's MixtureOfNormal.get_log_prob printed, for the same experts and values,
# [-0.33253276, -0.78997606] with weight_modalities=[0.3, 0.7] and [-0.40076566, -0.95725340] by default
_MIX = {"a": torch.tensor([[1.0, 2.0]] * 2), "b": torch.tensor([[0.5, -1.0]] * 2),
        "z": torch.tensor([[0.3, -0.4], [1.0, 0.0]])}


def test_mixture_weight_modalities_and_pixyz_formula() -> None:
    """``weight_modalities`` is Pixyz's name of ``weights``; kizuna's log-density is the mixture's (closed form below)
    and the porting page's expression gives Pixyz's own numbers, logsumexp_k(w_k log p_k)."""
    qa, qb = _experts()
    mix = MixtureOfNormal([qa, qb], weight_modalities=[0.3, 0.7])
    torch.testing.assert_close(mix.weights, torch.tensor([0.3, 0.7]))
    la = torch.distributions.Normal(_MIX["a"], 2.0).log_prob(_MIX["z"]).sum(-1)
    lb = torch.distributions.Normal(_MIX["b"], 0.5).log_prob(_MIX["z"]).sum(-1)
    true = torch.log(0.3 * la.exp() + 0.7 * lb.exp())
    torch.testing.assert_close(mix.get_log_prob(_MIX), true)
    torch.testing.assert_close(mix.get_log_prob(_MIX), MixtureOfNormal([qa, qb], [0.3, 0.7]).get_log_prob(_MIX))
    # the porting page's row: Pixyz's value from the experts' log-densities and Pixyz's weights as given (1/K default)
    for w, pixyz in (([0.3, 0.7], [-0.33253276, -0.78997606]), ([0.5, 0.5], [-0.40076566, -0.95725340])):
        mix = MixtureOfNormal([qa, qb], weight_modalities=w)
        value = torch.logsumexp(torch.stack([w_k * e.get_log_prob(_MIX) for w_k, e in zip(w, mix.p)]), 0)
        torch.testing.assert_close(value, torch.tensor(pixyz), atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match=r"^MixtureOfNormal: weights and weight_modalities \(Pixyz's name of weights\) "
                                        r"are the same argument; give one, got weights=\[1\.0, 1\.0\] and "
                                        r"weight_modalities=\[0\.3, 0\.7\]$"):
        MixtureOfNormal([qa, qb], weights=[1.0, 1.0], weight_modalities=[0.3, 0.7])


# ------------------------------------------------------------------ #5 Pixyz checkpoints of ChannelConv
# the state dict of Pixyz 0.3.3's ChannelConv(3, decomposed=True) (np.random.seed(6), then every parameter moved as
# by training), an input, and Pixyz's forward output and log-determinant for it
_PIXYZ_CC = {
    "l": [0.43768, -0.298099, 0.21554, -1.007265, 0.558533, 0.05331, 0.160069, 0.108146, 1.580659],
    "log_s": [-0.326654, 0.170424, -0.256348],
    "u": [-0.342046, -0.607595, 0.44152, 0.328385, -0.133433, 0.016502, -0.771341, 0.19918, 0.093097],
    "p": [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0],
    "sign_s": [1.0, -1.0, 1.0],
}
_PIXYZ_X = [0.90034, -0.198539, 0.663961, 0.983224, 0.127675, 0.152227, -1.10831, -0.645176, 0.833943, -0.396778,
            1.393257, 0.301171, 1.999296, -1.27128, -0.234116, 0.084797, -0.390315, 0.829905, 0.292745, -0.683715,
            1.58619, 1.133239, 0.275637, 0.892277]
_PIXYZ_Z = [0.780957, -0.393056, 1.505739, 0.513902, -1.08454, 0.226817, -0.443099, -0.473154, 0.940073, -0.41089,
            1.767491, 1.234211, 1.6613, 0.625168, 0.140235, 0.919128, -1.907923, -0.0378, -0.115909, -0.051393,
            2.379647, -0.920915, -0.225047, 0.870547]
_PIXYZ_LOGDET = -1.6503127813339233


def test_channel_conv_loads_a_pixyz_checkpoint() -> None:
    """Pixyz's names ``l, log_s, u, p, sign_s`` load into kizuna's layer, which then maps Pixyz's input to Pixyz's
    output with Pixyz's log-determinant (it raised missing / unexpected keys)."""
    shapes = {"l": (3, 3), "u": (3, 3), "p": (3, 3), "log_s": (3,), "sign_s": (3,)}
    state = {k: torch.tensor(v).reshape(shapes[k]) for k, v in _PIXYZ_CC.items()}
    f = ChannelConv(3, decomposed=True)
    f.load_state_dict(state)
    x = torch.tensor(_PIXYZ_X).reshape(2, 3, 2, 2)
    z = f(x, compute_jacobian=True)
    torch.testing.assert_close(z, torch.tensor(_PIXYZ_Z).reshape(2, 3, 2, 2), atol=2e-5, rtol=0)
    torch.testing.assert_close(f.logdet_jacobian, torch.full((2,), _PIXYZ_LOGDET), atol=1e-5, rtol=0)
    torch.testing.assert_close(f.inverse(z), x, atol=1e-5, rtol=0)
    # (the loaded tensors under kizuna's names; the fixed mask kept; a checkpoint nested under a prefix loads too)
    torch.testing.assert_close(f.permutation, state["p"])
    torch.testing.assert_close(f.lower_mask, torch.tril(torch.ones(3, 3), -1))
    outer = nn.Sequential(ChannelConv(3, decomposed=True))
    outer.load_state_dict({f"0.{k}": v for k, v in state.items()})
    torch.testing.assert_close(outer[0](x), z)


class PlainSignaturePrior(Normal):
    """A user's ``sample`` with Pixyz's older signature: no ``reparam``, no ``sample_mean``."""

    def __init__(self) -> None:
        super().__init__(loc=torch.tensor(0.0), scale=torch.tensor(1.0), var=["z"], features_shape=[2], name="p")

    def sample(self, x_dict={}, batch_n=None, sample_shape=(), return_all=True) -> XDict:  # noqa: B006
        out = super().sample(x_dict, batch_n=batch_n, sample_shape=sample_shape, return_all=return_all)
        out["z"] = out["z"].clamp(0.0, 0.5)
        return out


def test_an_override_without_reparam_is_drawn_from_and_one_without_sample_mean_is_named() -> None:
    """The routing passed ``reparam`` (and ``sample_mean`` for means) to every override: one without them, ignored by
    the draws before the routing, failed with a bare TypeError in every loss. ``reparam`` is passed where taken; the
    mean of an override that takes no ``sample_mean`` is an error naming what the override must take."""
    torch.manual_seed(0)
    value = E(PlainSignaturePrior(), LogProb(_likelihood()), sample_shape=[4000]).eval({"x": torch.zeros(1, 2)})
    torch.manual_seed(0)
    clamped = E(ClampedPrior(), LogProb(_likelihood()), sample_shape=[4000]).eval({"x": torch.zeros(1, 2)})
    assert torch.equal(value, clamped)
    with pytest.raises(TypeError, match=r"draw from PlainSignaturePrior through its own sample, which must take the "
                                        r"keyword\(s\) sample_mean \(Pixyz's signature"):
        E(PlainSignaturePrior(), LogProb(_likelihood())).eval({"x": torch.zeros(1, 2)}, sample_mean=True)
