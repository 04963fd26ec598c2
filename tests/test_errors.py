"""Every error names its offender: the distribution, the variable or parameter, what was expected.

One table, ``BAD_EXAMPLES``: an id, a call that must fail, the exception type, and the
fragments (regular expressions) its message must contain.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

from kizuna.distributions import (
    Bernoulli,
    Deterministic,
    Distribution,
    EmpiricalDistribution,
    Gamma,
    JointDistribution,
    Normal,
)
from kizuna.losses import LogProb


def p_x_z() -> Normal:
    return Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)


def prior3() -> Normal:
    return Normal(var=["z"], loc=torch.zeros(3), scale=1.0, name="p_prior")


def q_z_y() -> Normal:
    return Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")


class NormalWith(Normal):
    """``p(x|z)`` whose ``forward`` returns a fixed dict built from ``z``."""

    def __init__(self, make: Callable[[torch.Tensor], Any]) -> None:
        super().__init__(var=["x"], cond_var=["z"])
        self.make = make

    def forward(self, z: torch.Tensor) -> Any:
        return self.make(z)


class BadDeterministic(Deterministic):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="f")

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": z}


Z4 = torch.zeros(4)

BAD_EXAMPLES: list[tuple[str, Callable[[], object], type[Exception], list[str]]] = [
    # missing variables
    ("sample-missing-cond", lambda: p_x_z().sample(), ValueError, [r"p\(x\|z\) needs z", "given nothing"]),
    ("sample-missing-cond-other-given", lambda: p_x_z().sample({"y": Z4}), ValueError,
     [r"p\(x\|z\) needs z, but was given y"]),
    ("log-prob-missing-var", lambda: p_x_z().get_log_prob({"z": Z4}), ValueError, [r"p\(x\|z\) needs x"]),
    ("joint-missing-input", lambda: (p_x_z() * q_z_y()).sample(batch_n=2), ValueError,
     [r"p\(x,z\|y\) needs y"]),
    ("joint-log-prob-missing-latent", lambda: (p_x_z() * q_z_y()).get_log_prob({"x": Z4, "y": Z4}), ValueError,
     [r"needs z"]),
    ("replaced-missing-new-name", lambda: p_x_z().replace_var(z="y").sample({"z": Z4}), ValueError,
     [r"p\(x\|y\) needs y"]),
    ("replaced-helper-missing-new-name", lambda: p_x_z().replace_var(z="y").sample_mean({"z": Z4}), ValueError,
     [r"p\(x\|y\) needs y"]),
    ("marginal-missing-input", lambda: (p_x_z() * q_z_y()).marginalize_var("z").sample(), ValueError,
     [r"p\(x\|y\) needs y"]),
    ("empirical-missing-data", lambda: EmpiricalDistribution(var=["x"]).sample(batch_n=3), ValueError,
     [r"p_\{data\}\(x\) needs x"]),
    # shapes
    ("feature-shape", lambda: prior3().get_log_prob({"z": torch.zeros(4, 2)}), ValueError,
     [r"p_\{prior\}\(z\)", r"z has shape \(4, 2\)", r"features \(3,\)", r"given \(2,\)"]),
    ("feature-dims-missing", lambda: prior3().get_log_prob({"z": Z4}), ValueError,
     [r"z has shape \(4,\)", r"features \(3,\)", r"given \(4,\)"]),  # a row without a batch dimension
    ("batch-size", lambda: p_x_z().get_log_prob({"x": torch.zeros(3), "z": Z4}), ValueError,
     [r"p\(x\|z\)", "x has batch size 3", "parameters have batch size 4"]),
    ("features-shape-vs-params", lambda: Normal(var=["z"], loc=torch.zeros(3), scale=1.0, features_shape=[2]),
     ValueError, [r"features_shape \(2,\)", r"loc \(1, 3\)"]),
    ("value-not-a-tensor", lambda: p_x_z().get_log_prob({"x": [0.0] * 4, "z": Z4}), TypeError,
     [r"p\(x\|z\): x must be a torch.Tensor", "list"]),
    ("value-outside-support", lambda: Gamma(var=["x"], concentration=1.0, rate=1.0).get_log_prob(
        {"x": torch.tensor([-1.0])}), ValueError, [r"p\(x\): value of x is outside the support"]),
    # invalid parameters
    ("negative-scale", lambda: Normal(var=["z"], loc=0.0, scale=-1.0), ValueError,
     [r"p\(z\)", "parameter 'scale' of Normal"]),
    ("negative-scale-from-forward",
     lambda: NormalWith(lambda z: {"loc": z, "scale": -torch.ones_like(z)}).sample({"z": Z4}), ValueError,
     [r"p\(x\|z\)", "parameter 'scale'"]),
    ("probs-above-one", lambda: Bernoulli(var=["x"], probs=1.5), ValueError, ["parameter 'probs' of Bernoulli"]),
    ("probs-below-zero", lambda: Bernoulli(var=["x"], probs=torch.tensor([0.5, -0.1])), ValueError,
     ["parameter 'probs'"]),
    ("forward-unknown-key", lambda: NormalWith(lambda z: {"loc": z, "std": z.exp()}).sample({"z": Z4}), ValueError,
     [r"p\(x\|z\)", r"forward\(\) returned std", "loc, scale"]),
    ("forward-not-a-dict", lambda: NormalWith(lambda z: z).sample({"z": Z4}), TypeError,
     [r"p\(x\|z\)", r"forward\(\) must return a dict", "Tensor"]),
    ("string-param-not-cond", lambda: Normal(var=["z"], cond_var=["y"], loc="w", scale=1.0), ValueError,
     [r"p\(z\|y\)", "loc='w'", r"cond_var \['y'\]"]),
    ("string-param-no-cond", lambda: Normal(var=["z"], loc="x", scale=1.0), ValueError, ["loc='x'"]),
    ("unknown-constructor-param", lambda: Normal(var=["z"], loc=0.0, sigma=1.0), TypeError,
     ["Normal has no parameter sigma", "loc, scale"]),
    ("reparam-discrete", lambda: Bernoulli(var=["x"], probs=0.5, name="q").sample(batch_n=2, reparam=True),
     ValueError, [r"q\(x\)", "reparam=True", "no reparameterised sampler"]),
    ("reparam-discrete-factor",
     lambda: (p_x_z() * Bernoulli(var=["z"], probs=0.5, name="q")).sample(batch_n=2, reparam=True),
     ValueError, [r"p\(x,z\)", r"q\(z\) has no reparameterised sampler"]),
    ("deterministic-wrong-key", lambda: BadDeterministic().sample({"z": Z4}), ValueError,
     [r"f\(x\|z\)", r"keys \['x'\]", r"got \['y'\]"]),
    # declaring variables
    ("two-vars-one-family", lambda: Normal(var=["z", "y"], loc=0.0, scale=1.0), ValueError,
     [r"p\(z,y\)", "Normal defines exactly one variable"]),
    ("var-and-cond", lambda: Normal(var=["z"], cond_var=["z"], loc=0.0, scale=1.0), ValueError,
     [r"\['z'\] cannot be both"]),
    ("var-twice", lambda: Deterministic(var=["z", "z"]), ValueError, [r"listed twice in var=\['z', 'z'\]"]),
    ("no-var", lambda: Normal(var=[], loc=0.0, scale=1.0), ValueError, ["Normal needs at least one variable"]),
    ("var-not-str", lambda: Normal(var=[1], loc=0.0, scale=1.0), TypeError, ["var must be variable names", "1"]),
    # algebra
    ("defined-twice", lambda: p_x_z() * Normal(var=["x"], loc=0.0, scale=1.0, name="q"), ValueError,
     [r"variable x is defined twice: by p\(x\|z\) and by q\(x\)"]),
    ("cycle", lambda: JointDistribution([p_x_z(), Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")]),
     ValueError, ["cycle", r"p\(x\|z\)", r"q\(z\|x\)"]),
    ("multiply-by-number", lambda: p_x_z() * 2, TypeError, ["unsupported operand", "Normal", "int"]),
    ("marginalise-unknown", lambda: p_x_z().marginalize_var("u"), ValueError, ["cannot marginalise u"]),
    ("marginalise-cond", lambda: p_x_z().marginalize_var("z"), ValueError,
     ["cannot marginalise z", r"variables are \['x'\]"]),
    ("marginalise-all", lambda: (p_x_z() * prior3()).marginalize_var(["x", "z"]), ValueError,
     [r"p\(x,z\): marginalising every variable"]),
    ("marginal-log-prob", lambda: (p_x_z() * prior3()).marginalize_var("z").get_log_prob({"x": torch.zeros(2, 3)}),
     NotImplementedError, [r"p\(x\) = ∫ p\(x\|z\)p_\{prior\}\(z\)dz", "IWAE"]),
    ("replace-unknown", lambda: p_x_z().replace_var(w="y"), ValueError,
     [r"p\(x\|z\): cannot replace w", r"\['x', 'z'\]"]),
    ("replace-collision", lambda: p_x_z().replace_var(x="z"), ValueError,
     [r"replace_var\(\{'x': 'z'\}\)", "same name"]),
    ("joint-feature-dims", lambda: (p_x_z() * prior3()).get_log_prob({"x": torch.zeros(2, 3), "z": torch.zeros(2, 3)},
                                                                      feature_dims=[5]),
     ValueError, [r"p\(x,z\)", r"feature_dims=\[5\] is out of range"]),
    ("mean-of-no-features", lambda: LogProb(Normal(var=["x"], loc=0.0, scale=1.0, features_shape=[0]),
                                            sum_features=False).mean().eval({"x": torch.zeros(4, 0)}),
     ValueError, [r"shape \(4, 0\), no entries \(no features\): it has no mean"]),  # (not "0 rows"; was NaN)
    ("single-feature-dims", lambda: prior3().get_log_prob({"z": torch.zeros(2, 3)}, feature_dims=[5]),
     ValueError, [r"p_\{prior\}\(z\)", r"feature_dims=\[5\] is out of range"]),  # (a raw IndexError)
]


@pytest.mark.parametrize(("call", "exc", "fragments"), [pytest.param(*row[1:], id=row[0]) for row in BAD_EXAMPLES])
def test_error_names_the_offender(call: Callable[[], object], exc: type[Exception], fragments: list[str]) -> None:
    with pytest.raises(exc) as err:
        call()
    message = str(err.value)
    for fragment in fragments:
        assert re.search(fragment, message), f"{fragment!r} not in {message!r}"


def _renamed_error(call: Callable[[], object], exc: type[Exception]) -> str:
    with pytest.raises(exc) as err:
        call()
    assert isinstance(err.value.__cause__, exc)  # chained from the inner distribution's error
    return str(err.value)


def test_errors_of_a_renamed_distribution_name_its_new_variables() -> None:
    """``p.replace_var(x="y", z="w")`` is p(y|w): an error raised inside p while drawing or scoring names y and w and
    p(y|w), not x, z and p(x|z) (which the user of the renamed distribution never wrote)."""
    from kizuna.distributions.torch_dist import validation

    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, features_shape=[2])
    r = p.replace_var(x="y", z="w")
    w = torch.zeros(3, 2)
    cases = [
        (lambda: r.get_log_prob({"y": torch.zeros(3, 5), "w": w}), ValueError, r"^p\(y\|w\): y has shape \(3, 5\)"),
        (lambda: r.get_log_prob({"y": torch.zeros(4, 2), "w": w}), ValueError, r"^p\(y\|w\): y has batch size 4"),
        (lambda: r.get_log_prob({"y": [1.0, 2.0], "w": w}), TypeError, r"^p\(y\|w\): y must be a torch.Tensor"),
        (lambda: r.sample({"w": w}, batch_n=5), ValueError, r"^p\(y\|w\): batch_n=5 but"),
        (lambda: r.sample({"w": w}, batch_n=5, sample_shape=(2,)), ValueError, r"^p\(y\|w\): batch_n=5 but"),
        (lambda: r.get_log_prob({"y": torch.zeros(2, 3, 5), "w": w}, feature_dims=[2]), ValueError, r"^p\(y\|w\)"),
    ]
    for call, exc, pattern in cases:
        message = _renamed_error(call, exc)
        assert re.search(pattern, message), message
        assert not re.search(r"\b[xz]\b", message), message
    b = Bernoulli(var=["x"], cond_var=["z"], probs="z").replace_var(x="y", z="w")
    with validation(True):
        message = _renamed_error(lambda: b.get_log_prob({"y": torch.full((3, 2), 2.0), "w": torch.full((3, 2), 0.5)}),
                                 ValueError)
    assert message.startswith("p(y|w): value of y must lie in [0, 1]"), message
    # a swap is translated in one pass: x reads z and z reads x
    swapped = p.replace_var(x="z", z="x")
    message = _renamed_error(lambda: swapped.get_log_prob({"z": torch.zeros(3, 5), "x": w}), ValueError)
    assert message.startswith("p(z|x): z has shape (3, 5)"), message
    # a renamed product given part of a factor names the factor's new variables
    pair = Normal(var=["a"], loc=0.0, scale=1.0) * Normal(var=["c"], cond_var=["a"], loc="a", scale=1.0)
    two = JointDistribution([_Pair(), Normal(var=["c"], cond_var=["a"], loc="a", scale=1.0)]).replace_var(a="u")
    message = _renamed_error(lambda: two.sample({"u": torch.zeros(2, 1)}), ValueError)
    assert "gives u but not b" in message and "factor r(u,b)" in message, message
    assert pair.replace_var(a="u").sample({"u": torch.zeros(2, 1)})["c"].shape == (2, 1)


class _Pair(Distribution):
    """A two-variable factor r(a, b), for the partial-fixing message."""

    def __init__(self) -> None:
        super().__init__(var=["a", "b"], name="r")


def test_constant_parameters_of_different_shapes() -> None:
    with pytest.raises(ValueError, match=r"p\(z\).*loc.*scale"):
        Normal(var=["z"], loc=torch.zeros(3), scale=torch.ones(2))



def test_loaded_constants_are_validated_at_their_next_use() -> None:
    """Buffer constants are checked once, not every call; loading new values re-arms the check."""
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2])
    prior.get_log_prob({"z": torch.zeros(1, 2)})  # checked, valid
    prior.load_state_dict({"loc": torch.zeros(1, 2), "scale": -torch.ones(1, 2)})
    with pytest.raises(ValueError, match="scale"):
        prior.get_log_prob({"z": torch.zeros(1, 2)})


def test_learnable_constants_are_validated_every_call() -> None:
    scale = torch.nn.Parameter(torch.ones(2))
    p = Normal(var=["z"], loc=0.0, scale=scale)
    with torch.no_grad():
        scale.fill_(-1.0)  # an optimiser step could do this
    with pytest.raises(ValueError, match="scale"):
        p.get_log_prob({"z": torch.zeros(1, 2)})


def test_forward_must_return_a_dict_of_the_familys_parameters() -> None:
    """`forward`'s result is checked on every call: a name the family does not take and a non-mapping are
    errors that name the problem; any mapping of its own parameters (not only a dict) is accepted, with the
    same density as torch's."""
    from types import MappingProxyType

    class Net(Normal):
        def __init__(self, out: Callable[[torch.Tensor], Any]) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.out = out

        def forward(self, z: torch.Tensor) -> Any:
            return self.out(z)

    z, x = torch.randn(4, 2), torch.randn(4, 2)
    unknown = r"forward\(\) returned mean, which Net does not take \(its parameters: loc, scale\)"
    with pytest.raises(ValueError, match=unknown):
        Net(lambda z: {"loc": z, "mean": z}).get_log_prob({"x": x, "z": z})
    with pytest.raises(TypeError, match=r"forward\(\) must return a dict of parameters, got tuple"):
        Net(lambda z: (z, z.exp())).get_log_prob({"x": x, "z": z})
    proxy = Net(lambda z: MappingProxyType({"loc": z, "scale": torch.ones_like(z)}))
    expected = torch.distributions.Normal(z, 1.0).log_prob(x).sum(-1)
    torch.testing.assert_close(proxy.get_log_prob({"x": x, "z": z}), expected)


def test_a_networks_own_index_error_is_not_taken_for_feature_dims() -> None:
    """``feature_dims=[1]`` is valid; an IndexError raised inside the network is the network's, not an out-of-range
    ``feature_dims`` (the check named feature_dims and hid the traceback into forward)."""

    class Q(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")

        def forward(self, x: torch.Tensor) -> dict:
            return {"loc": x[:, :3] + x[:, 7].unsqueeze(1), "scale": torch.ones_like(x[:, :3])}

    with pytest.raises(IndexError, match="out of bounds"):
        Q().get_log_prob({"x": torch.randn(2, 4), "z": torch.randn(2, 3)}, feature_dims=[1])
