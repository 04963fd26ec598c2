"""Pixyz 0.3.3 API spellings that a ported program uses unchanged (review stop 44, area R).

Each reference number below was printed by Pixyz 0.3.3 running the same program (scripts in
/work/exp/s44/fixR/px_ref.py and px_ref2.py); where it has a closed form, that is given too.
"""

from __future__ import annotations

import math

import pytest
import sympy
import torch
from torch import distributions as D
from torch import nn

from kizuna.distributions import Deterministic, EmpiricalDistribution, Normal, TorchDistribution
from kizuna.losses import (
    AdversarialJensenShannon,
    Expectation,
    IterativeLoss,
    KullbackLeibler,
    LogProb,
    Loss,
    Parameter,
)
from kizuna.models import Model

Z = torch.tensor([[0.5, -1.0], [1.0, 2.0]])


class SquaredLogProb(Loss):
    """A custom loss written the Pixyz way: ``forward(x_dict, **kwargs) -> (value, dict)`` and ``_symbol``."""

    def __init__(self, p: Normal) -> None:
        super().__init__(input_var=p.var + p.cond_var)
        self.p = p
        self.seen: dict[str, list[str]] = {}

    @property
    def _symbol(self) -> sympy.Symbol:
        return sympy.Symbol("\\log^2 " + self.p.prob_text)

    def forward(self, x_dict: dict = {}, **kwargs):  # noqa: B006 - Pixyz's signature
        self.seen = {"keys": sorted(x_dict), "kwargs": sorted(kwargs)}
        return self.p.get_log_prob(x_dict) ** 2 * kwargs.get("coef", 1), {"w": torch.tensor(7.0)}


def _prior() -> Normal:
    return Normal(loc=torch.tensor(0.0), scale=torch.tensor(1.0), var=["z"], features_shape=[2], name="p")


def _log_normal2(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)


def test_pixyz_style_loss_value_and_text() -> None:
    """F1: the value Pixyz's Loss.eval computes through forward (was a bare NotImplementedError)."""
    loss = SquaredLogProb(_prior()).mean()
    got = loss.eval({"z": Z})
    assert got.item() == pytest.approx(12.441471099853516, rel=1e-7)  # Pixyz 0.3.3: tensor(12.4415)
    assert got.item() == pytest.approx((_log_normal2(Z) ** 2).mean().item(), rel=1e-6)  # closed form
    leaf = SquaredLogProb(_prior())
    assert leaf.loss_text == "\\log^{2 p(z)}"  # Pixyz 0.3.3's loss_text: sympy.latex(_symbol)
    assert str(leaf) == "\\log^2 p(z)" and str(loss) == "mean(\\log^2 p(z))"  # kizuna's plain text (sympy's str)


def test_pixyz_style_loss_inputs_options_and_returned_dict() -> None:
    """F1: forward gets the input_var values only and the eval options; its dict joins return_dict (as Pixyz)."""
    inner = SquaredLogProb(_prior())
    value, out = inner.mean().eval({"z": Z, "extra": 1.0}, return_dict=True, coef=2.0)
    assert value.item() == pytest.approx(24.88294219970703, rel=1e-7)  # Pixyz 0.3.3
    assert sorted(out) == ["extra", "w", "z"] and out["w"].item() == 7.0  # Pixyz 0.3.3
    assert inner.seen == {"keys": ["z"], "kwargs": ["coef"]}  # Pixyz 0.3.3
    _, drawn = inner.mean().eval({"z": Z}, return_dict=True, return_all=False)
    assert sorted(drawn) == ["w"]  # Pixyz 0.3.3


def test_pixyz_style_loss_in_model_and_expectation() -> None:
    """F1: trained by Model (distributions given, as in Pixyz, or found in the loss) and inside an Expectation."""

    class R(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], name="r", features_shape=[2])
            self.mu = nn.Parameter(torch.zeros(2))

        def forward(self):
            return {"loc": self.mu, "scale": torch.ones(2)}

    want = [12.441471099853516, 11.375107765197754, 10.531659126281738]  # Pixyz 0.3.3, Adam lr 0.1
    for given in (True, False):
        r = R()
        loss = SquaredLogProb(r).mean()
        model = Model(loss, distributions=[r], optimizer_params={"lr": 0.1}) if given else \
            Model(loss, optimizer_params={"lr": 0.1})
        assert list(model.distributions) == [r]
        got = [model.train({"z": Z}).item() for _ in range(3)]
        assert got == pytest.approx(want, rel=1e-6)
    q = Normal(loc="x", scale=torch.tensor(1.0), var=["z"], cond_var=["x"], features_shape=[2], name="q")
    exp = Expectation(q, SquaredLogProb(_prior())).mean().eval({"x": Z}, sample_mean=True)
    assert exp.item() == pytest.approx(12.441471099853516, rel=1e-7)  # Pixyz 0.3.3 (the draw is q's mean, x)


def test_pixyz_style_loss_builds_symbol_from_kizuna_losses() -> None:
    """F1: ``_symbol`` built from another loss's ``_symbol`` and forward from its ``eval``, as Pixyz's own losses."""

    class Twice(Loss):
        def __init__(self, loss1: Loss) -> None:
            super().__init__(input_var=loss1.input_var)
            self.loss1 = loss1

        @property
        def _symbol(self):
            return 2 * self.loss1._symbol

        def forward(self, x_dict, **kwargs):
            value, drawn = self.loss1.eval(x_dict, return_dict=True, **kwargs)
            return 2 * value, drawn

    twice = Twice(Parameter("a"))
    assert twice.loss_text == "2 a"  # Pixyz 0.3.3
    assert twice.eval({"a": torch.tensor(3.0)}).item() == 6.0  # Pixyz 0.3.3: tensor(6.)


def test_pixyz_style_step_loss_hands_its_dict_to_the_next_step() -> None:
    """F1: the dict a Pixyz-style forward returns is what an IterativeLoss's next step reads (Pixyz's update)."""

    class Step(Loss):
        def __init__(self) -> None:
            super().__init__(["h"])

        @property
        def _symbol(self):
            return sympy.Symbol("h")

        def forward(self, x_dict, **kwargs):
            return x_dict["h"].sum(-1), {"h": x_dict["h"] + 1}

    loop = IterativeLoss(Step(), max_iter=3, update_value={"h": "h"})
    torch.testing.assert_close(loop.eval({"h": torch.zeros(2, 1)}), torch.tensor([3.0, 3.0]))  # Pixyz: 0 + 1 + 2


def test_loss_subclass_errors_name_both_ways() -> None:
    """F1: a subclass with no value, or a forward returning a bare value, says what to write (was a bare error)."""

    class Nothing(Loss):
        pass

    with pytest.raises(NotImplementedError, match=r"Nothing defines no value: .*_value\(self, ctx\).*"
                                                  r"forward\(self, x_dict, \*\*kwargs\) returning \(value, dict"):
        Nothing(["x"]).eval({"x": torch.zeros(1)})
    assert str(Nothing()) == "Nothing"

    class Bare(Loss):
        def forward(self, x_dict, **kwargs):
            return x_dict["x"].sum()

    with pytest.raises(TypeError, match=r"Bare.forward returned Tensor: a Pixyz-style loss's forward\(self, x_dict, "
                                        r"\*\*kwargs\) returns \(value, dict\)"):
        Bare(["x"]).eval({"x": torch.zeros(1)})


class _G(Deterministic):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="g")
        self.fc = nn.Linear(2, 2)

    def forward(self, z):
        return {"x": self.fc(z)}


class _Dis(Deterministic):
    def __init__(self) -> None:
        super().__init__(var=["t"], cond_var=["x"], name="d")
        self.fc = nn.Linear(2, 1)

    def forward(self, x):
        return {"t": torch.sigmoid(self.fc(x))}


def test_loss_train_reaches_through_unary_wrappers() -> None:
    """F2: Pixyz's GAN loop: ``adv.mean()`` trained by Model, its discriminator by ``.loss_train`` (was an
    AttributeError); the numbers are Pixyz 0.3.3's from the same seed."""
    torch.manual_seed(0)
    prior = Normal(loc=torch.tensor(0.0), scale=torch.tensor(1.0), var=["z"], features_shape=[2], name="prior")
    p = (_G() * prior).marginalize_var("z")
    adv = AdversarialJensenShannon(EmpiricalDistribution(["x"]), p, discriminator=_Dis(), optimizer=torch.optim.Adam,
                                   optimizer_params={"lr": 1e-3})
    loss = adv.mean()
    x = torch.randn(8, 2)
    model = Model(loss, distributions=[p])
    got = [(model.train({"x": x}).item(), loss.loss_train({"x": x}).item()) for _ in range(3)]
    want = [(1.4265971183776855, 1.506120204925537), (1.3403552770614624, 1.4534196853637695),
            (1.4897819757461548, 1.5677845478057861)]  # Pixyz 0.3.3
    assert got == [pytest.approx(w, rel=1e-6) for w in want]
    assert loss.loss_test({"x": x}).item() == pytest.approx(1.5159201622009277, rel=1e-6)  # Pixyz 0.3.3
    wrapped = (-adv).sum().detach().abs()
    assert wrapped.loss_test({"x": x}).item() == pytest.approx(1.3289000988006592, rel=1e-6)  # Pixyz 0.3.3
    kl = KullbackLeibler(prior, prior).mean()
    assert not hasattr(kl, "loss_train")
    with pytest.raises(AttributeError, match="'BatchMean' object has no attribute 'loss_train': the loss inside it"):
        kl.loss_train({})


def test_constant_var_of_a_constant_var() -> None:
    """F5: fixing variables in two steps (was TypeError: 'dict' object is not callable)."""
    loss = (Parameter("a") * Parameter("b")).constant_var({"a": 2.0})
    assert loss.constant_dict == {"a": 2.0}  # Pixyz 0.3.3's attribute
    assert float(loss.constant_var({"b": 3.0}).eval({})) == 6.0  # Pixyz 0.3.3
    overlap = Parameter("a").constant_var({"a": 1.0}).constant_var({"a": 2.0})
    assert float(overlap.eval({})) == 1.0 and overlap.input_var == []  # Pixyz 0.3.3: the first call's value


class _R(Normal):
    def __init__(self) -> None:
        super().__init__(var=["x"], name="r")
        self.mu = nn.Parameter(torch.zeros(1))

    def forward(self):
        return {"loc": self.mu, "scale": torch.ones(1)}


def test_model_train_test_take_pixyz_data_names() -> None:
    """F4: ``train(train_x_dict=...)`` / ``test(test_x_dict=...)`` (was "needs x, but was given nothing")."""
    r = _R()
    model = Model(-LogProb(r).mean(), distributions=[r])
    x = torch.ones(4, 1)
    # Pixyz 0.3.3: 1.4189385175704956 (= -log N(1; 0, 1)), then 1.4179390668869019 after one Adam step (mu = 1e-3)
    assert model.train(train_x_dict={"x": x}).item() == pytest.approx(0.5 * math.log(2 * math.pi) + 0.5, rel=1e-7)
    assert model.test(test_x_dict={"x": x}).item() == pytest.approx(1.4179390668869019, rel=1e-6)
    with pytest.raises(TypeError, match="Model.train got both x_dict and train_x_dict"):
        model.train({"x": x}, train_x_dict={"x": x})


def test_model_positional_order_is_pixyzs() -> None:
    """F6: the 8th positional argument is retain_graph, as in Pixyz (it was compile, silently)."""
    r = _R()
    model = Model(-LogProb(r).mean(), None, [r], torch.optim.Adam, {}, None, None, True)
    assert model.retain_graph is True and model._compile_args is None  # Pixyz 0.3.3: retain_graph True
    with pytest.raises(TypeError, match="positional"):
        Model(-LogProb(r).mean(), None, [r], torch.optim.Adam, {}, None, None, False, True)


def test_porting_page_recipe_for_a_pixyz_family() -> None:
    """F3 (porting page): Pixyz's DistributionBase family written kizuna's way, and ``get_dist`` for ``set_dist`` /
    ``dist``: scipy's Cauchy log-density and Pixyz 0.3.3's ``q.dist`` moments."""

    class Cauchy(TorchDistribution):
        torch_class = D.Cauchy
        param_names = ("loc", "scale")

    p = Cauchy(loc=torch.tensor(0.0), scale=torch.tensor(2.0), var=["x"], features_shape=[2])
    # scipy.stats.cauchy.logpdf(1, 0, 2) + cauchy.logpdf(-3, 0, 2); Pixyz 0.3.3: tensor([-5.0776])
    assert p.get_log_prob({"x": torch.tensor([[1.0, -3.0]])}).item() == pytest.approx(-5.077552680474547, rel=1e-6)
    assert p.sample(batch_n=3)["x"].shape == (3, 2)
    q = Normal(loc="y", scale=torch.tensor(2.0), var=["x"], cond_var=["y"], name="q")
    dist = q.get_dist({"y": torch.tensor([[1.0, -1.0]])}, independent=False)
    torch.testing.assert_close(dist.mean, torch.tensor([[1.0, -1.0]]))  # Pixyz 0.3.3's q.dist.mean
    torch.testing.assert_close(dist.stddev, torch.tensor([[2.0, 2.0]]))  # Pixyz 0.3.3's q.dist.stddev
    assert q.torch_family is D.Normal and tuple(q.param_names) == ("loc", "scale")


def test_gan_takes_pixyzs_data_keywords() -> None:
    """F4 for the GAN: ``GAN.train(train_x_dict=...)`` / ``GAN.test(test_x_dict=...)`` give what ``x_dict`` gives
    (the names stayed in the options and the data were missing), from the same weights and seed."""
    from test_s43_gan import _batch, _wgan_gp

    results = []
    for keyword in (False, True):
        model, _, _ = _wgan_gp()
        torch.manual_seed(1)
        trained = model.train(train_x_dict=_batch()) if keyword else model.train(_batch())
        tested = model.test(test_x_dict=_batch()) if keyword else model.test(_batch())
        results.append([float(v) for v in (*trained, *tested)])
    assert results[0] == results[1]
    model, _, _ = _wgan_gp()
    with pytest.raises(TypeError, match="GAN.train got both x_dict and train_x_dict"):
        model.train(_batch(), train_x_dict=_batch())
