"""What a distribution's network is given, named when it cannot take it (stop 44, H findings 2-4, and the rest of 1).

* A numpy array or a list as a conditioning value (``loss.eval({"x": x_np})`` after training on numpy, which
  ``Model.train`` converts) failed inside torch's ``linear.py`` with "linear(): argument 'input' (position 1) must be
  Tensor, not numpy.ndarray", naming neither the distribution nor the variable.
* A forgotten ``cond_var``, or ``forward``'s arguments named otherwise than ``cond_var``, gave Python's bare
  "forward() missing 1 required positional argument: 'x'" / "got an unexpected keyword argument 'x'".
* float64 data into a float32 network (``torch.from_numpy``) gave torch's "mat1 and mat2 must have the same dtype"
  wrapped, without the remedy that integer data already got.
* ``get_entropy``, ``sample_mean``, ``sample_variance``, ``get_params``, ``get_dist`` and the other overrides given a
  bare tensor gave torch's "Boolean value of Tensor with more than one value is ambiguous" (`values_dict`'s message
  now, as ``sample`` and ``get_log_prob`` got it in tests/test_s44_inputs.py).

Each test checks the whole message; the guards check that a network's own errors, and inputs it takes, are as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
import torch
from test_s44_inputs import Encoder  # q(z|x) with a network, as the README's quickstart writes one
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import (
    Categorical,
    Deterministic,
    DiffusionDecoder,
    DiffusionReverse,
    DiffusionSchedule,
    MixtureModel,
    MixtureOfNormal,
    Normal,
    RelaxedBernoulli,
)
from kizuna.losses import Expectation, KullbackLeibler, LogProb

X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))




class NoCond(Encoder):
    """The slip: cond_var forgotten (forward still takes x)."""

    def __init__(self) -> None:
        Normal.__init__(self, var=["z"], name="q")
        self.net = nn.Linear(3, 4)


class OtherName(Encoder):
    """The slip: forward's argument named otherwise than cond_var."""

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().forward(inputs)


class ExtraCond(Encoder):
    """The slip: a conditioning variable that forward does not take."""

    def __init__(self) -> None:
        Normal.__init__(self, var=["z"], cond_var=["x", "y"], name="q")
        self.net = nn.Linear(3, 4)


def _loss(q: Normal) -> Any:
    torch.manual_seed(0)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_{prior}")
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, name="p")
    return (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


# ------------------------------------------------------------------ H2: a condition that is not a tensor
@pytest.mark.parametrize(("value", "kind"), [(X.numpy(), "ndarray"), (X.tolist(), "list")], ids=["ndarray", "list"])
@pytest.mark.parametrize("call", ["eval", "sample", "get_log_prob"])
def test_a_condition_that_is_not_a_tensor_is_named(call: str, value: Any, kind: str) -> None:
    torch.manual_seed(0)
    q = Encoder()
    run = {"eval": lambda: _loss(q).eval({"x": value}), "sample": lambda: q.sample({"x": value}),
           "get_log_prob": lambda: q.get_log_prob({"x": value, "z": X[:, :2]})}[call]
    want = f"q(z|x): x must be a torch.Tensor, got {kind}: convert it (e.g. torch.as_tensor(x, dtype=torch.float32))"
    with pytest.raises(TypeError, match=_exactly(want)) as info:
        run()
    assert isinstance(info.value.__cause__, TypeError)  # torch's own error is kept as the cause


def test_a_deterministic_network_names_a_condition_that_is_not_a_tensor() -> None:
    class G(Deterministic):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"])
            self.net = nn.Linear(2, 3, dtype=torch.float64)

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"x": self.net(z)}

    with pytest.raises(TypeError, match=_exactly("p(x|z): z must be a torch.Tensor, got ndarray: convert it "
                                                 "(e.g. torch.as_tensor(z, dtype=torch.float64))")):
        G().sample({"z": np.zeros((4, 2))})


def test_a_network_that_takes_arrays_itself_still_gets_them() -> None:
    class Converts(Encoder):
        def forward(self, x: Any) -> dict[str, torch.Tensor]:
            return super().forward(torch.as_tensor(x, dtype=torch.float32))

    torch.manual_seed(0)
    q = Converts()
    z = torch.zeros(6, 2)
    loc, scale = q.net(X).chunk(2, -1)
    want = torch.distributions.Normal(loc, F.softplus(scale) + 0.1).log_prob(z).sum(-1)
    torch.testing.assert_close(q.get_log_prob({"x": X.numpy(), "z": z}), want)


# ------------------------------------------------------------------ H3: forward's arguments and cond_var
def test_a_forgotten_cond_var_is_named() -> None:
    want = _exactly("q(z): forward(x) does not match cond_var=[]: forward gets the conditioning variables as keyword "
                    "arguments, and x is not in cond_var; build it with cond_var=['x']")
    with pytest.raises(TypeError, match=want):
        _loss(NoCond()).eval({"x": X})
    with pytest.raises(TypeError, match=want):
        NoCond().sample(batch_n=4)


def test_forward_arguments_named_otherwise_are_named() -> None:
    with pytest.raises(TypeError, match=_exactly(
            "q(z|x): forward(inputs) does not match cond_var=['x']: forward gets the conditioning variables as "
            "keyword arguments, and forward has no argument x and inputs is not in cond_var; name forward's "
            "arguments after cond_var (def forward(self, x)), or build it with cond_var=['inputs']")):
        _loss(OtherName()).eval({"x": X})


def test_a_conditioning_variable_forward_does_not_take_is_named() -> None:
    with pytest.raises(TypeError, match=_exactly(
            "q(z|x,y): forward(x) does not match cond_var=['x', 'y']: forward gets the conditioning variables as "
            "keyword arguments, and forward has no argument y; add y to forward's arguments "
            "(def forward(self, x, y)), or leave it out of cond_var")):
        ExtraCond().sample({"x": X, "y": X})


def test_a_deterministic_network_names_a_forgotten_cond_var() -> None:
    class G(Deterministic):
        def __init__(self) -> None:
            super().__init__(var=["x"])
            self.net = nn.Linear(2, 3)

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"x": self.net(z)}

    with pytest.raises(TypeError, match=_exactly(
            "p(x): forward(z) does not match cond_var=[]: forward gets the conditioning variables as keyword "
            "arguments, and z is not in cond_var; build it with cond_var=['z']")):
        G().sample(batch_n=2)


def test_a_type_error_inside_forward_is_the_networks_own() -> None:
    """forward's arguments bind: the TypeError came from inside it, and is not taken for a cond_var slip."""
    class Buggy(Encoder):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return super().forward(x, x)  # the user's own mistake

    with pytest.raises(TypeError, match=r"^Encoder\.forward\(\) takes 2 positional arguments but 3 were given$"):
        Buggy().sample({"x": X})


def test_a_forward_taking_keywords_gets_them() -> None:
    class Keywords(Encoder):
        def forward(self, **cond: torch.Tensor) -> dict[str, torch.Tensor]:
            return super().forward(cond["x"])

    torch.manual_seed(0)
    q = Keywords()
    z = torch.zeros(6, 2)
    loc, scale = q.net(X).chunk(2, -1)
    want = torch.distributions.Normal(loc, F.softplus(scale) + 0.1).log_prob(z).sum(-1)
    torch.testing.assert_close(q.get_log_prob({"x": X, "z": z}), want)


# ------------------------------------------------------------------ H4: an input of another dtype than the network's
def test_float64_data_into_a_float32_network_names_the_dtypes_and_the_remedy() -> None:
    torch.manual_seed(0)
    q = Encoder()
    want = _exactly("q(z|x): x is torch.float64, but its network takes torch.float32: convert it "
                    "(e.g. .to(torch.float32)), or the network to torch.float64 (e.g. model.double())")
    with pytest.raises(ValueError, match=want):
        _loss(q).eval({"x": X.double()})
    with pytest.raises(ValueError, match=want):
        q.sample({"x": X.double()})
    # the remedy: the data converted, or the network (then the float64 data give the float32 numbers, closely)
    z = torch.zeros(6, 2)
    value = q.get_log_prob({"x": X.double().to(torch.float32), "z": z})
    loc, scale = q.net(X).chunk(2, -1)
    torch.testing.assert_close(value, torch.distributions.Normal(loc, F.softplus(scale) + 0.1).log_prob(z).sum(-1))
    torch.testing.assert_close(q.double().get_log_prob({"x": X.double(), "z": z.double()}), value.double())


def test_float32_data_into_a_float64_network_and_a_convolution() -> None:
    q = Encoder().double()
    with pytest.raises(ValueError, match=_exactly(
            "q(z|x): x is torch.float32, but its network takes torch.float64: convert it (e.g. .to(torch.float64)), "
            "or the network to torch.float32 (e.g. model.float())")):
        q.sample({"x": X})

    class Conv(Normal):  # torch's words differ ("Input type (double) and bias type (float) should be the same")
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.net = nn.Conv1d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            loc, scale = self.net(x[:, None]).squeeze(-1).chunk(2, -1)
            return {"loc": loc, "scale": F.softplus(scale)}

    with pytest.raises(ValueError, match=_exactly(
            "q(z|x): x is torch.float64, but its network takes torch.float32: convert it (e.g. .to(torch.float32)), "
            "or the network to torch.float64 (e.g. model.double())")):
        Conv().sample({"x": X.double()})


def test_integer_data_keep_their_message_and_a_shape_error_its_own() -> None:
    q = Encoder()
    with pytest.raises(ValueError, match=_exactly("q(z|x): x is torch.uint8, but its network takes torch.float32: "
                                                  "convert it (e.g. .to(torch.float32))")):
        q.sample({"x": X.to(torch.uint8)})
    with pytest.raises(ValueError, match=r"^q\(z\|x\): forward\(\) failed on x of shape \(6, 5\): mat1 and mat2 "
                                         r"shapes cannot be multiplied"):
        q.sample({"x": torch.zeros(6, 5)})


# ------------------------------------------------------------------ H1's rest: a bare tensor to the other entry points
def _message(who: str, fn: str, example: str, kind: str) -> str:
    example = f"e.g. {{{example}}}" if example else "this one takes none: give {} or nothing"  # (inputless)
    return _exactly(f"{who}: {fn} takes a dict of the variables' values ({example}), got {kind}")


def _mixture() -> MixtureModel:
    return MixtureModel([Normal(var=["x"], loc=-2.0, scale=1.0), Normal(var=["x"], loc=2.0, scale=1.0)],
                        Categorical(var=["z"], probs=torch.tensor([0.3, 0.7])))


def _moe() -> MixtureOfNormal:
    return MixtureOfNormal([Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q"),
                            Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")], name="q")


def _joint_with_options() -> Any:
    joint = Normal(var=["x"], cond_var=["y"], loc="y", scale=1.0) * Normal(var=["y"], loc=0.0, scale=1.0)
    joint.graph.set_option({"batch_n": 2}, ["y"])
    return joint


class G(Deterministic):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"])

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": 2 * z}


def _cases() -> Iterator[Any]:
    q = "q(z|x)"
    for fn in ("get_entropy", "sample_mean", "sample_variance", "get_params", "get_dist"):
        yield pytest.param(lambda a, fn=fn: getattr(Encoder(), fn)(a), q, fn, "'x': x", id=f"Normal.{fn}")
    relaxed = "p(x|t)"
    for fn in ("get_entropy", "sample_mean", "sample_variance"):
        yield pytest.param(lambda a, fn=fn: getattr(RelaxedBernoulli(var=["x"], cond_var=["t"], probs="t",
                                                                     temperature=0.5), fn)(a),
                           relaxed, fn, "'t': t", id=f"RelaxedBernoulli.{fn}")
    yield pytest.param(lambda a: G().sample_mean(a), "p(x|z)", "sample_mean", "'z': z", id="Deterministic.sample_mean")
    decoder = DiffusionDecoder(DiffusionReverse(lambda x, t: x, DiffusionSchedule(torch.linspace(0.01, 0.3, 4))),
                               bins=4)
    yield pytest.param(lambda a: decoder.sample_mean(a), "p(x_0|x_1)", "sample_mean", "'x_1': x_1",
                       id="DiffusionDecoder.sample_mean")
    for fn in ("sample_mean", "sample_variance", "sample_with_hidden"):
        yield pytest.param(lambda a, fn=fn: getattr(_mixture(), fn)(a), "p(x)", fn, "", id=f"MixtureModel.{fn}")
    yield pytest.param(lambda a: _mixture().sample(a, return_hidden=True), "p(x)", "sample", "",
                       id="MixtureModel.sample(return_hidden)")
    for fn in ("sample_each", "sample_mean", "sample_variance"):
        yield pytest.param(lambda a, fn=fn: getattr(_moe(), fn)(a), "q(z|x,y)", fn, "'x': x, 'y': y",
                           id=f"MixtureOfNormal.{fn}")
    for fn in ("get_entropy", "sample_mean", "sample_variance", "get_params", "get_dist"):
        yield pytest.param(lambda a, fn=fn: getattr(Encoder().replace_var(x="w"), fn)(a), "q(z|w)", fn, "'w': w",
                           id=f"replace_var.{fn}")
    yield pytest.param(lambda a: _joint_with_options().sample(a), "p(x,y)", "sample", "",
                       id="graph_options.sample")
    yield pytest.param(lambda a: _joint_with_options().get_log_prob(a), "p(x,y)", "get_log_prob", "'x': x, 'y': y",
                       id="graph_options.get_log_prob")


@pytest.mark.parametrize("kind", ["Tensor", "ndarray", "list"])
@pytest.mark.parametrize(("call", "who", "fn", "example"), list(_cases()))
def test_a_bare_value_is_refused_naming_the_entry_point(call: Any, who: str, fn: str, example: str,
                                                        kind: str) -> None:
    value = {"Tensor": X, "ndarray": X.numpy(), "list": X.tolist()}[kind]
    with pytest.raises(TypeError, match=_message(who, fn, example, kind)):
        call(value)


@pytest.mark.parametrize("wrap", [dict, MappingProxyType], ids=["dict", "MappingProxyType"])
def test_the_moments_still_take_mappings_and_none(wrap: Any) -> None:
    torch.manual_seed(0)
    q = Encoder()
    loc, scale = q.net(X).chunk(2, -1)
    ref = torch.distributions.Normal(loc, F.softplus(scale) + 0.1)
    given = wrap({"x": X})
    torch.testing.assert_close(q.get_entropy(given), ref.entropy().sum(-1))
    torch.testing.assert_close(q.sample_mean(given), ref.mean)
    torch.testing.assert_close(q.sample_variance(given), ref.variance)
    torch.testing.assert_close(q.get_params(given)["loc"], ref.loc)
    torch.testing.assert_close(q.get_dist(given).mean, ref.mean)
    mixture = _mixture()  # 0.3 N(-2, 1) + 0.7 N(2, 1): mean 0.8, variance 1 + 0.3 * 0.7 * 4^2 = 4.36
    torch.testing.assert_close(mixture.sample_mean(None if wrap is dict else wrap({})), torch.tensor([0.8]))
    torch.testing.assert_close(mixture.sample_variance(wrap({})), torch.tensor([4.36]))


def test_a_gan_still_names_its_constant_prior_left_in_float32() -> None:
    """The dtype message keeps torch's error as its cause: a GAN whose generator (a network distribution) was made
    ``.double()`` beside a float32 constant prior still names the prior and its ``.to()`` (`kizuna.losses.adversarial`
    reads the cause), not the z it drew."""
    from kizuna.losses import AdversarialWassersteinDistance
    from kizuna.models import GAN

    class Generator(Normal):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="g")
            self.net = nn.Linear(2, 6)

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            loc, scale = self.net(z).chunk(2, -1)
            return {"loc": loc, "scale": F.softplus(scale) + 0.1}

    class Critic(Deterministic):
        def __init__(self) -> None:
            super().__init__(var=["t"], cond_var=["x"], name="f")
            self.net = nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"t": self.net(x)}

    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    model = GAN((Generator().double() * prior).marginalize_var("z"), Critic().double(),
                adversarial=AdversarialWassersteinDistance)
    with pytest.raises(ValueError, match=re.escape(
            "g(x) cannot draw: its parameters are torch.float64 on cpu, but the constants of p_{prior}(z) are "
            "torch.float32 on cpu (convert it too: its .to(torch.float64))")):
        model.train({"x": X.double()[:, :3]})
