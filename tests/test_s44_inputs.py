"""A bare tensor, array or list where an entry point takes the dict of the variables' values (stop 44, H finding 1).

``model.train(x)``, ``q.sample(x)``, ``q.get_log_prob(x)`` (instead of ``{"x": x}``) gave torch's "Boolean value of
Tensor with more than one value is ambiguous", numpy's truth-value error, "values expected sparse tensor layout" or
"'list' object has no attribute 'values'"; the inference helpers failed inside ``Tensor.__contains__``. Each now says
what ``loss.eval(x)`` says: the entry point, the variables it takes and the type it got (one shared check,
`kizuna.formula.expr.values_dict`). None, ``{}`` and other ``Mapping`` types keep working.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kizuna import inference
from kizuna.distributions import Bernoulli, Deterministic, Normal
from kizuna.losses import Expectation, KullbackLeibler, LogProb
from kizuna.models import GAN, Model

X = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
BARE = {"Tensor": X, "ndarray": X.numpy(), "list": X.tolist()}


class Encoder(Normal):
    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, scale = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(scale) + 0.1}


def _vae() -> tuple[Model, Encoder, Normal, Normal]:
    torch.manual_seed(0)
    q = Encoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    p = Normal(var=["x"], cond_var=["z"], loc=0.0, scale=1.0, features_shape=[3], name="p")
    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
    return Model(loss, distributions=[q], optimizer_params={"lr": 1e-2}), q, p, prior


class G(Deterministic):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"])
        self.net = nn.Linear(2, 3)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.net(z)}


class D(Bernoulli):
    def __init__(self) -> None:
        super().__init__(var=["t"], cond_var=["x"], name="d")
        self.net = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def _gan() -> GAN:
    torch.manual_seed(0)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    return GAN((G() * prior).marginalize_var("z"), D(), optimizer_params={"lr": 1e-3})


def _message(who: str, example: str, kind: str) -> str:
    return re.escape(f"{who} takes a dict of the variables' values (e.g. {{{example}}}), got {kind}") + "$"


def _model_cases() -> Iterator[Any]:
    for fn in ("train", "test", "step", "evaluate"):
        yield pytest.param(lambda a, fn=fn: getattr(_vae()[0], fn)(a), f"Model.{fn}", "'x': x", id=f"Model.{fn}")
    for fn in ("train", "test", "step", "evaluate", "train_discriminator"):
        yield pytest.param(lambda a, fn=fn: getattr(_gan(), fn)(a), f"GAN.{fn}", "'x': x", id=f"GAN.{fn}")


def _distribution_cases() -> Iterator[Any]:
    yield pytest.param(lambda a: _vae()[1].sample(a), "q(z|x): sample", "'x': x", id="sample")
    yield pytest.param(lambda a: _vae()[1].get_log_prob(a), "q(z|x): get_log_prob", "'z': z, 'x': x",
                       id="get_log_prob")
    yield pytest.param(lambda a: _vae()[1].get_prob(a), "q(z|x): get_prob", "'z': z, 'x': x", id="get_prob")
    yield pytest.param(lambda a: (_vae()[2] * _vae()[3]).get_log_prob(a), "p(x,z): get_log_prob", "'x': x, 'z': z",
                       id="joint.get_log_prob")


def _inference_cases() -> Iterator[Any]:
    mask = torch.ones(5, 3, dtype=torch.bool)

    def joint() -> Any:
        _, q, p, prior = _vae()
        return p * prior, q

    yield pytest.param(lambda a: inference.anomaly_score(*joint(), a, k=2), "anomaly_score", "'x': x",
                       id="anomaly_score")
    yield pytest.param(lambda a: inference.impute_importance(*joint(), a, mask, var="x", k=2), "impute_importance",
                       "'x': x", id="impute_importance")
    yield pytest.param(lambda a: inference.impute_gibbs(*joint(), a, mask, var="x"), "impute_gibbs", "'x': x",
                       id="impute_gibbs")
    yield pytest.param(lambda a: inference.infer_latent(joint()[1], a), "infer_latent", "'x': x", id="infer_latent")
    # (cross_generate names the modalities other than the decoder's: none here, so the generic example)
    yield pytest.param(lambda a: inference.cross_generate(joint()[1], _vae()[2], a), "cross_generate", "'x': x",
                       id="cross_generate")


@pytest.mark.parametrize("kind", list(BARE))
@pytest.mark.parametrize(("call", "who", "example"), [*_model_cases(), *_distribution_cases()])
def test_a_bare_value_is_refused_naming_the_entry_point(call: Any, who: str, example: str, kind: str) -> None:
    """Model.train/test/step/evaluate, the GAN's, sample, get_log_prob, get_prob: the eval message, with the
    variables the call takes (were torch's / numpy's truth-value errors and "values expected sparse tensor
    layout")."""
    with pytest.raises(TypeError, match=_message(who, example, type(BARE[kind]).__name__)):
        call(BARE[kind])


@pytest.mark.parametrize("kind", list(BARE))
@pytest.mark.parametrize(("call", "who", "example"), list(_inference_cases()))
def test_the_inference_helpers_refuse_a_bare_value(call: Any, who: str, example: str, kind: str) -> None:
    """anomaly_score, impute_*, infer_latent, cross_generate (were torch's "Tensor.__contains__ only supports
    Tensor or scalar", numpy's truth-value error or "'list' object has no attribute 'items'")."""
    with pytest.raises(TypeError, match=_message(who, example, type(BARE[kind]).__name__)):
        call(BARE[kind])


def test_eval_keeps_its_message() -> None:
    _, q, p, prior = _vae()
    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
    with pytest.raises(TypeError, match=_message(f"the loss {loss}: eval", "'x': x", "Tensor")):
        loss.eval(X)


@pytest.mark.parametrize("fn", ["log_prob", "prob"])
@pytest.mark.parametrize("value", [{"z": X[:, :2], "x": X}, X[:, :2]], ids=["dict", "Tensor"])
def test_log_prob_given_values_says_how_to_evaluate_it(fn: str, value: Any) -> None:
    """``q.log_prob(x_dict)`` (Pixyz-style confusion with get_log_prob) silently gave a loss; ``q.log_prob(x)`` a
    loss whose evaluation was torch's truth-value error."""
    q = _vae()[1]
    what = "log-density" if fn == "log_prob" else "density"
    expected = (f"q(z|x): {fn}() builds the {what} as a loss and takes no values (its first argument is "
                f"sum_features), got {type(value).__name__}; evaluate it with {fn}().eval({{'z': z, 'x': x}}), or "
                f"call get_{fn}({{'z': z, 'x': x}})")
    with pytest.raises(TypeError, match=re.escape(expected) + "$"):
        getattr(q, fn)(value)


def test_get_log_prob_of_none_names_the_missing_variables() -> None:
    """None was "'NoneType' object has no attribute 'values'"; now the usual missing-variable message."""
    with pytest.raises(ValueError, match="needs z, x"):
        _vae()[1].get_log_prob(None)


class Frozen(Mapping):
    """A Mapping that is no dict subclass."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@pytest.mark.parametrize("wrap", [dict, MappingProxyType, Frozen], ids=["dict", "MappingProxyType", "Mapping"])
def test_mappings_none_and_empty_dicts_keep_working(wrap: Any) -> None:
    """The numbers against torch.distributions; any Mapping is taken as the dict is."""
    model, q, p, prior = _vae()
    params = q.get_params({"x": X})
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    reference = torch.distributions.Normal(params["loc"], params["scale"]).log_prob(z).sum(-1)
    torch.testing.assert_close(q.get_log_prob(wrap({"z": z, "x": X})), reference)
    torch.testing.assert_close(q.get_prob(wrap({"z": z, "x": X})), reference.exp())
    torch.manual_seed(2)
    drawn = q.sample(wrap({"x": X}), return_all=False)["z"]
    torch.manual_seed(2)
    torch.testing.assert_close(drawn, params["loc"] + params["scale"] * torch.randn(5, 2))
    # the prior takes None and {} (its batch from batch_n)
    for given in (None, wrap({})):
        assert prior.sample(given, batch_n=4)["z"].shape == (4, 2)
    # Model.train/test: a Mapping gives the loss that a dict gives (the same seed, the same draws)
    torch.manual_seed(3)
    expected = model.test({"x": X})
    torch.manual_seed(3)
    torch.testing.assert_close(model.test(wrap({"x": X})), expected)
    torch.manual_seed(3)
    torch.testing.assert_close(model.train(wrap({"x": X})), expected)


def test_a_model_without_data_trains_on_none_and_empty_dicts() -> None:
    """A loss with no input variable (KL between two unconditional Normals: closed form) trains on None and {}."""
    q = Normal(var=["z"], loc=torch.tensor([1.0]), scale=torch.tensor([2.0]), name="q")
    q.loc = nn.Parameter(torch.tensor([1.0]))
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p")
    model = Model(KullbackLeibler(q, prior).mean(), distributions=[q], optimizer_params={"lr": 0.0})
    closed = torch.log(torch.tensor(0.5)) + (4.0 + 1.0) / 2 - 0.5  # KL[N(1, 2^2) || N(0, 1)]
    for given in (None, {}, MappingProxyType({})):
        torch.testing.assert_close(model.train(given), closed)
        torch.testing.assert_close(model.test(given), closed)


def test_empty_sequences_are_empty_dicts_and_an_inputless_message_says_so() -> None:
    """Diff review 1 (stop 44): ``sample([])`` / ``sample(())`` worked before (and in Pixyz) and were refused by the
    new check; a distribution with no inputs suggested ``{'x': x}``."""
    from kizuna.distributions import Normal

    p = Normal(var=["x"], loc=0.0, scale=1.0)
    assert p.sample([])["x"].shape == (1,) and p.sample(())["x"].shape == (1,)
    with pytest.raises(TypeError, match=r"p\(x\): sample takes a dict of the variables' values \(this one takes "
                                        r"none: give \{\} or nothing\), got Tensor"):
        p.sample(torch.ones(2))
