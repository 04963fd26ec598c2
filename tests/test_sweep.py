"""One `EXAMPLES` table of every distribution class, swept by generic tests (STYLE.md habit 5).

Every concrete `Distribution` exported by `kizuna.distributions` has at least one entry (a
meta-test fails otherwise): the torch families, the non-parametric distributions, the
mixtures and products of experts, and the algebra (product, marginal, renaming). Each entry
is a small builder ``build(seed) -> (distribution, inputs)``: learnable parts are real
``nn.Parameter`` constants or small ``nn.Linear`` networks drawn from ``seed``, and ``inputs``
holds the conditioning values with batch ``B = 4`` (for an unconditioned distribution it is
empty and the sweeps pass ``batch_n=B``; for a distribution that cannot sample it also holds
the points to score).

The sweeps, each over the whole table:

* **class** - the builder makes the class it claims, and ``has_reparam`` is what it claims;
* **shapes** - ``sample`` gives ``(B, *features)`` per variable, ``(3, B, *features)`` with
  ``sample_shape=(3,)``, ``(5, ...)`` with ``batch_n=5`` when nothing is conditioned on;
  ``return_all=False`` returns the drawn variables only; a distribution that cannot sample
  raises NotImplementedError naming it;
* **density** - ``get_log_prob`` of its own sample is ``(B,)`` and finite, or a
  NotImplementedError naming the distribution when it has no density;
* **gradients** - a reparameterised draw carries ``grad_fn`` and its backward reaches every
  parameter (finite), a plain draw carries none; ``reparam=True`` is a ValueError where there is
  no reparameterised sampler; the backward of ``get_log_prob`` reaches every parameter;
* **save/load** - ``state_dict`` through ``torch.save`` into an instance built from another seed
  gives identical log-densities (or identical draws under a fixed seed, without a density);
* **dtype** - after ``.double()``, float64 inputs give float64 draws and log-densities;
* **text** - ``str(dist)`` and ``to_latex()`` are non-empty and ``str`` contains ``prob_text``.

Documented exceptions are declared in the table, not special-cased in the sweeps: a
`Deterministic` draw is its network's output, so even a plain draw carries ``grad_fn``
(``point_mass``); `MixtureOfNormal` picks its expert by a discrete draw, so no gradient of a draw
reaches its weights (``no_draw_grad``). Known bugs are strict ``xfail`` marks on the entries
that reveal them (``xfail``). The per-family densities and samplers are checked against scipy in
``tests/test_families.py``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import kizuna.distributions as kd
from kizuna.distributions import (
    Bernoulli,
    Beta,
    BinaryConcrete,
    Categorical,
    Concrete,
    CustomProb,
    Deterministic,
    Dirichlet,
    Distribution,
    ElementWiseProductOfNormal,
    EmpiricalDistribution,
    FactorizedBernoulli,
    Gamma,
    JointDistribution,
    Laplace,
    LogNormal,
    MarginalizeVarDistribution,
    MixtureModel,
    MixtureOfNormal,
    MixturePosterior,
    Multinomial,
    MultivariateNormal,
    Normal,
    Poisson,
    ProductOfNormal,
    RelaxedBernoulli,
    RelaxedCategorical,
    ReplaceVarDistribution,
    StudentT,
    TorchDistribution,
    VonMises,
)
from kizuna.distributions.base import batch_size_of
from kizuna.flows import IAF, MAF, AffineCoupling, FlowList, PlanarFlow, Reverse

B = 4  # batch rows of every example
D_IN = 2  # features of the conditioning inputs
K = 3  # features of the drawn variables
Tensor = torch.Tensor
XDict = dict[str, Any]
Built = tuple[Distribution, XDict]


@pytest.fixture(autouse=True)
def _seeded():
    """Draws use torch's global generator: seed it per test, and restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


# ------------------------------------------------------------------ building blocks
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g)


def _param(g: torch.Generator, *shape: int, positive: bool = False, sd: float = 1.0) -> nn.Parameter:
    """A learnable constant: N(0, sd^2) values, or values in [0.5, 1.5) with ``positive``."""
    value = torch.rand(*shape, generator=g) + 0.5 if positive else sd * _randn(g, *shape)
    return nn.Parameter(value)


def _linear(g: torch.Generator, n_in: int, n_out: int) -> nn.Linear:
    """An ``nn.Linear`` whose weights come from ``g`` (not from torch's global generator)."""
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(0.5 * _randn(g, n_out, n_in))
        lin.bias.copy_(0.5 * _randn(g, n_out))
    return lin


def _positive(h: Tensor) -> Tensor:
    return F.softplus(h) + 0.5


_NET_CLASSES: dict[type[TorchDistribution], type[TorchDistribution]] = {}


def _net_class(cls: type[TorchDistribution]) -> type[TorchDistribution]:
    """``cls`` with ``forward(**cond) = head(net(cat(cond)))``: the README's way to condition a family."""
    if cls not in _NET_CLASSES:

        def __init__(self: Any, net: nn.Module, head: Callable[[Tensor], dict[str, Tensor]], **kw: Any) -> None:
            cls.__init__(self, **kw)
            self.net = net
            self.head = head

        def forward(self: Any, **cond: Tensor) -> dict[str, Tensor]:
            return self.head(self.net(torch.cat([cond[c] for c in self.cond_var], -1)))

        _NET_CLASSES[cls] = type(f"Net{cls.__name__}", (cls,), {"__init__": __init__, "forward": forward})
    return _NET_CLASSES[cls]


def _cond(cls: type[TorchDistribution], g: torch.Generator, head: Callable[[Tensor], dict[str, Tensor]],
          n_out: int, var: str = "x", cond: str = "y", n_in: int = D_IN, name: str = "p", **const: Any
          ) -> TorchDistribution:
    """``cls(var|cond)`` whose parameters are ``head`` of a linear layer of ``cond``."""
    return _net_class(cls)(_linear(g, n_in, n_out), head, var=[var], cond_var=[cond], name=name, **const)


def _loc_scale(h: Tensor) -> dict[str, Tensor]:
    return {"loc": h[:, :K], "scale": _positive(h[:, K:])}


def _student(h: Tensor) -> dict[str, Tensor]:
    return {"df": _positive(h[:, :K]) + 2.0, "loc": h[:, K:2 * K], "scale": _positive(h[:, 2 * K:])}


def _gamma(h: Tensor) -> dict[str, Tensor]:
    return {"concentration": _positive(h[:, :K]), "rate": _positive(h[:, K:])}


def _von_mises(h: Tensor) -> dict[str, Tensor]:
    return {"loc": h[:, :K], "concentration": _positive(h[:, K:])}


def _mvn(h: Tensor) -> dict[str, Tensor]:
    """``loc`` and a lower-triangular ``scale_tril`` with a positive diagonal."""
    raw = h[:, K:].reshape(-1, K, K)
    tril = raw.tril(-1) + torch.diag_embed(_positive(raw.diagonal(dim1=-2, dim2=-1)))
    return {"loc": h[:, :K], "scale_tril": tril}


def _y(g: torch.Generator, n: int = D_IN) -> Tensor:
    return _randn(g, B, n)


def _normal_net(g: torch.Generator, var: str = "x", cond: str = "y", n_in: int = D_IN, name: str = "p"
                ) -> TorchDistribution:
    return _cond(Normal, g, _loc_scale, 2 * K, var=var, cond=cond, n_in=n_in, name=name)


def _normal_const(g: torch.Generator, var: str = "x", name: str = "p", sd: float = 1.0) -> Normal:
    return Normal(var=[var], loc=_param(g, K, sd=sd), scale=_param(g, K, positive=True), name=name)


class _Decoder(Deterministic):
    """A point mass at ``tanh(Linear(cond))`` (a GAN generator)."""

    def __init__(self, g: torch.Generator, cond: str = "y", n_in: int = D_IN) -> None:
        super().__init__(var=["x"], cond_var=[cond])
        self.net = _linear(g, n_in, K)

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        return {"x": torch.tanh(self.net(cond[self.cond_var[0]]))}


class _Energy(nn.Module):
    """An unnormalised log-density ``-|x - mu|^2 + w.x``, one value per row."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__()
        self.mu = _param(g, K)
        self.w = _param(g, K)

    def forward(self, x: Tensor) -> Tensor:
        return -(x - self.mu).pow(2).sum(-1) + x @ self.w


def _prior_z(g: torch.Generator) -> Normal:
    return _normal_const(g, var="z", name="p_prior")


def _generative(g: torch.Generator) -> JointDistribution:
    """``p(x|z) p_prior(z)``, reparameterisable and unconditioned."""
    return _normal_net(g, var="x", cond="z", n_in=K) * _prior_z(g)


def _mixture(g: torch.Generator) -> MixtureModel:
    """Two overlapping constant Normal components (a posterior that is not one-sided) and a learnable prior."""
    components = [_normal_const(g, sd=0.3), _normal_const(g, sd=0.3)]
    return MixtureModel(components, Categorical(var=["z"], logits=_param(g, 2, sd=0.3)))


def _experts_inputs(g: torch.Generator) -> XDict:
    return {"x1": _y(g), "x2": _y(g)}


# The row (B, 3) of attributes for ElementWiseProductOfNormal: zeros are "not observed", and
# row 1 observes nothing (its product is the prior N(0, I)).
_OBSERVED = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])


# ------------------------------------------------------------------ the example table
@dataclass(frozen=True)
class Example:
    """One distribution and how it is expected to behave.

    Attributes:
        cls: the exported class this entry covers (the most derived exported class of the
            built object).
        build: ``seed -> (distribution, inputs)``; parameters depend on ``seed``.
        label: the test id (defaults to the class name).
        reparam: the expected ``has_reparam``.
        samples: False when ``sample`` raises NotImplementedError; ``inputs`` then hold the
            points to score.
        density: False when ``get_log_prob`` raises NotImplementedError.
        no_draw_grad: parameters a reparameterised draw is documented not to reach.
        point_mass: variables drawn by a `Deterministic` factor: the network's output itself,
            so even a plain draw carries ``grad_fn``, and repeated draws given the same
            inputs are equal.
        xfail: ``{test function name: reason}`` for known bugs (strict: a fix must remove it).
    """

    cls: type[Distribution]
    build: Callable[[int], Built]
    label: str = ""
    reparam: bool = True
    samples: bool = True
    density: bool = True
    no_draw_grad: tuple[str, ...] = ()
    point_mass: tuple[str, ...] = ()
    xfail: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.label or self.cls.__name__


def _family(cls: type[TorchDistribution], head: Callable[[Tensor], dict[str, Tensor]], n_out: int,
            reparam: bool = True, **const: Any) -> Example:
    """``cls(x|y)`` with parameters from a linear layer of ``y``."""
    def build(seed: int) -> Built:
        g = _gen(seed)
        return _cond(cls, g, head, n_out, **const), {"y": _y(g)}

    return Example(cls, build, label=f"{cls.__name__}-net", reparam=reparam)


def _constant(cls: type[TorchDistribution], make: Callable[[torch.Generator], dict[str, Any]],
              reparam: bool = True, label: str = "") -> Example:
    """``cls(x)`` with learnable constant parameters ``make(g)`` (no batch dimension)."""
    def build(seed: int) -> Built:
        return cls(var=["x"], **make(_gen(seed))), {}

    return Example(cls, build, label=label or f"{cls.__name__}-const", reparam=reparam)


def _built(cls: type[Distribution], build: Callable[[torch.Generator], Built], label: str = "",
           **kw: Any) -> Example:
    return Example(cls, lambda seed: build(_gen(seed)), label=label, **kw)


# ---- diffusion and energy models (kizuna.distributions.diffusion / energy)
class _EpsNet(nn.Module):
    """``eps(x_t, t) = Linear([x_t, t])``: a noise predictor for the diffusion entries."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__()
        self.lin = _linear(g, K + 1, K)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.lin(torch.cat([x, t.to(x.dtype)[:, None]], 1))


def _learned_schedule(g: torch.Generator) -> Any:
    """A learnable 4-step schedule (betas in [0.05, 0.3))."""
    return kd.DiffusionSchedule(nn.Parameter(0.05 + 0.25 * torch.rand(4, generator=g)))


def _reverse(g: torch.Generator) -> Any:
    return kd.DiffusionReverse(_EpsNet(g), kd.DiffusionSchedule.linear(4, 0.05, 0.3))


_STEPS = torch.tensor([1, 2, 4, 3])  # every beta up to T = 4 is reached by some row


# ---- flows and autoregressive models (kizuna.distributions.transformed / autoregressive)
def _redrawn(module: Any, g: torch.Generator, sd: float = 0.3) -> Any:
    """``module`` with every parameter redrawn N(0, sd^2) from ``g`` (new flow layers are the identity)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(sd * torch.randn(p.shape, generator=g))
    return module


EXAMPLES: list[Example] = [
    # ---- torch families: conditioned through forward(), constants, a named variable
    _family(Normal, _loc_scale, 2 * K),
    _constant(Normal, lambda g: {"loc": _param(g, 2, K), "scale": 0.5}, label="Normal-const-2x3"),
    _built(Normal, lambda g: (Normal(var=["x"], cond_var=["y"], loc="y", scale=_param(g, D_IN, positive=True)),
                              {"y": _y(g)}), label="Normal-named-var"),
    _family(Laplace, _loc_scale, 2 * K),
    _constant(LogNormal, lambda g: {"loc": _param(g, K), "scale": _param(g, K, positive=True)}),
    _family(StudentT, _student, 3 * K),
    _family(Gamma, _gamma, 2 * K),
    _constant(Beta, lambda g: {"concentration1": _param(g, K, positive=True),
                               "concentration0": _param(g, K, positive=True)}),
    _family(Dirichlet, lambda h: {"concentration": _positive(h)}, K),
    _family(VonMises, _von_mises, 2 * K, reparam=False),
    _family(MultivariateNormal, _mvn, K + K * K),
    _family(Poisson, lambda h: {"rate": _positive(h)}, K, reparam=False),
    _family(Bernoulli, lambda h: {"logits": h}, K, reparam=False),
    _constant(FactorizedBernoulli, lambda g: {"logits": _param(g, K)}, reparam=False),
    _family(Categorical, lambda h: {"logits": h}, K, reparam=False),
    _constant(Multinomial, lambda g: {"total_count": 3, "logits": _param(g, K)}, reparam=False),
    _family(RelaxedBernoulli, lambda h: {"logits": h}, K, temperature=0.5),
    _family(BinaryConcrete, lambda h: {"logits": h}, K, temperature=0.5),
    _constant(Concrete, lambda g: {"temperature": _param(g, (), positive=True), "logits": _param(g, K)}),
    # the temperature shapes the relaxed draws only: the (discrete) log-density has no gradient for it
    _constant(RelaxedCategorical, lambda g: {"temperature": 0.5, "logits": _param(g, K)}),
    # ---- not parametric families
    _built(Deterministic, lambda g: (_Decoder(g), {"y": _y(g)}), density=False, point_mass=("x",)),
    _built(EmpiricalDistribution, lambda g: (EmpiricalDistribution(var=["x"]), {"x": _randn(g, B, K)}),
           density=False),
    _built(CustomProb, lambda g: (CustomProb(_Energy(g), var=["x"]), {"x": _randn(g, B, K)}),
           reparam=False, samples=False),
    # ---- mixtures and products of experts
    _built(MixtureModel, lambda g: (_mixture(g), {}), label="MixtureModel-const", reparam=False),
    _built(MixtureModel, lambda g: (MixtureModel([_normal_net(g), _normal_net(g)],
                                                 _cond(Categorical, g, lambda h: {"logits": h}, 2, var="z")),
                                    {"y": _y(g)}), label="MixtureModel-net", reparam=False),
    _built(MixturePosterior, lambda g: (_mixture(g).posterior(), {"x": _randn(g, B, K)}), reparam=False),
    _built(ProductOfNormal, lambda g: (ProductOfNormal([_normal_net(g, "z", "x1"), _normal_net(g, "z", "x2"),
                                                        _normal_const(g, "z")], features_shape=[K]),
                                       _experts_inputs(g))),
    _built(ElementWiseProductOfNormal, lambda g: (ElementWiseProductOfNormal(_normal_net(g, "z", "a", n_in=3)),
                                                  {"a": _randn(g, B, 3) * _OBSERVED})),
    # The expert is chosen by a discrete draw: no gradient reaches the weights (class docstring).
    _built(MixtureOfNormal, lambda g: (MixtureOfNormal([_normal_net(g, "z", "x1"), _normal_net(g, "z", "x2")],
                                                       weights=_param(g, 2, positive=True)), _experts_inputs(g)),
           no_draw_grad=("weights",)),
    # ---- algebra
    _built(JointDistribution, lambda g: (_generative(g), {}), label="Joint-reparam"),
    _built(JointDistribution, lambda g: (_normal_net(g, "z", "y", name="q")
                                         * _cond(Bernoulli, g, lambda h: {"logits": h}, K, "x", "z", n_in=K),
                                         {"y": _y(g)}), label="Joint-discrete", reparam=False),
    _built(JointDistribution, lambda g: (_mixture(g) * _normal_net(g, "w", "x", n_in=K), {}),
           label="Joint-with-mixture", reparam=False),
    _built(JointDistribution, lambda g: (_Decoder(g, "z", K) * _prior_z(g), {}), label="Joint-generator",
           density=False, point_mass=("x",)),
    _built(MarginalizeVarDistribution, lambda g: (_generative(g).marginalize_var(["z"]), {}), density=False),
    _built(MarginalizeVarDistribution, lambda g: ((_normal_net(g, "z", "y", name="q")
                                                   * _normal_net(g, "x", "z", n_in=K)).marginalize_var(["z"]),
                                                  {"y": _y(g)}), label="Marginalize-conditional", density=False),
    _built(ReplaceVarDistribution, lambda g: (_normal_net(g).replace_var(y="c", x="w"), {"c": _y(g)})),
    _built(ReplaceVarDistribution, lambda g: (_generative(g).replace_var(z="u", x="w"), {}), label="Replace-joint"),
    _built(ReplaceVarDistribution, lambda g: (_Decoder(g).replace_var(x="w", y="c"), {"c": _y(g)}),
           label="Replace-deterministic", density=False, point_mass=("w",)),
    _built(ReplaceVarDistribution, lambda g: (CustomProb(_Energy(g), var=["x"]).replace_var(x="w"),
                                              {"w": _randn(g, B, K)}),
           label="Replace-custom", reparam=False, samples=False),
    # ---- diffusion and energy models
    _built(kd.DiffusionForward, lambda g: (kd.DiffusionForward(_learned_schedule(g)),
                                           {"x_0": _randn(g, B, K), "t": _STEPS})),
    _built(kd.DiffusionPosterior, lambda g: (kd.DiffusionPosterior(_learned_schedule(g)),
                                             {"x_t": _randn(g, B, K), "x_0": _randn(g, B, K),
                                              "t": _STEPS.clamp(min=2)})),
    _built(kd.DiffusionReverse, lambda g: (_reverse(g), {"x_t": _randn(g, B, K), "t": _STEPS})),
    _built(kd.DiffusionDecoder, lambda g: (kd.DiffusionDecoder(_reverse(g), bins=9), {"x_1": _randn(g, B, K)}),
           reparam=False),
    _built(kd.DDPM, lambda g: (kd.DDPM(_reverse(g), features_shape=[K]), {}), density=False),
    _built(kd.EnergyDistribution, lambda g: (kd.EnergyDistribution(_Energy(g)), {"x": _randn(g, B, K)}),
           reparam=False, samples=False),
    # ---- flow matching, hierarchical and discrete-latent models (helpers without parameters --
    # FlowInterpolant, TimeUniform, OTCoupling -- and the quantiser are tested in their own files)
    _built(kd.FlowMatching, lambda g: (kd.FlowMatching(_EpsNet(g), [K], n_steps=2, likelihood_steps=2), {})),
    _built(kd.NormalProduct, lambda g: (kd.NormalProduct([_normal_net(g, "x", "y", name="q"),
                                                          _normal_net(g, "x", "w")]),
                                        {"y": _y(g), "w": _y(g)})),
    _built(kd.PixelCNNCategorical, lambda g: (_redrawn(kd.PixelCNNCategorical(3, 2, 2, hidden_channels=4, n_layers=1,
                                                                              kernel_size=3), g), {}), reparam=False),
    # ---- flows and autoregressive models
    _built(kd.TransformedDistribution, lambda g: (kd.TransformedDistribution(
        _prior_z(g), _redrawn(FlowList([PlanarFlow(K), PlanarFlow(K)]), g), var=["x"]), {}),
           label="Transformed-planar"),
    _built(kd.TransformedDistribution, lambda g: (kd.TransformedDistribution(
        _normal_net(g, "z", "y", name="q"), _redrawn(IAF(K, [8], context_features=D_IN), g), var=["w"],
        cond_var=["y"], name="q"), {"y": _y(g)}), label="Transformed-IAF-conditional"),
    _built(kd.InverseTransformedDistribution, lambda g: (kd.InverseTransformedDistribution(
        _prior_z(g), _redrawn(FlowList([MAF(K, [8]), Reverse(K), MAF(K, [8])]), g), var=["x"]), {}),
           label="InverseTransformed-MAF"),
    _built(kd.InverseTransformedDistribution, lambda g: (kd.InverseTransformedDistribution(
        _prior_z(g), _redrawn(AffineCoupling(K, hidden_features=8, context_features=D_IN), g), var=["x"],
        cond_var=["y"]), {"y": _y(g)}), label="InverseTransformed-coupling-conditional"),
    _built(kd.MADEBernoulli, lambda g: (_redrawn(kd.MADEBernoulli(K, [8], cond_var=["y"], context_features=D_IN), g),
                                        {"y": _y(g)}), reparam=False),
    _built(kd.PixelCNNBernoulli, lambda g: (_redrawn(kd.PixelCNNBernoulli(2, 3, hidden_channels=4, n_layers=1,
                                                                          kernel_size=3), g), {}), reparam=False),
    # ---- MLP-conditioned distributions (kizuna.distributions.conditional)
    _built(kd.MLPNormal, lambda g: (_redrawn(kd.MLPNormal("x", ["y"], [D_IN, 8, K]), g), {"y": _y(g)})),
    _built(kd.MLPNormal, lambda g: (_redrawn(kd.MLPNormal("x", ["y"], [D_IN, 8, K], shared_scale=True), g),
                                    {"y": _y(g)}), label="MLPNormal-shared-scale"),
    _built(kd.MLPBernoulli, lambda g: (_redrawn(kd.MLPBernoulli("x", ["y"], [D_IN, 8, K]), g), {"y": _y(g)}),
           reparam=False),
    _built(kd.MLPCategorical, lambda g: (_redrawn(kd.MLPCategorical("x", ["y"], [D_IN, 8, K]), g), {"y": _y(g)}),
           reparam=False),
]

IDS = [ex.id for ex in EXAMPLES]


def sweep(examples: list[Example] = EXAMPLES) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Parametrise a test over ``examples``; an entry's ``xfail`` marks it where it names the test."""

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        params = [
            pytest.param(ex, id=ex.id, marks=[pytest.mark.xfail(strict=True, reason=ex.xfail[test.__name__])]
                         if test.__name__ in ex.xfail else [])
            for ex in examples
        ]
        return pytest.mark.parametrize("ex", params)(test)

    return decorate


# ------------------------------------------------------------------ helpers of the sweeps
def _exported_classes() -> set[type[Distribution]]:
    abstract = {Distribution, TorchDistribution}
    found = {getattr(kd, n) for n in kd.__all__}
    return {c for c in found if isinstance(c, type) and issubclass(c, Distribution) and c not in abstract}


def _most_derived_exported(obj: Distribution) -> type:
    exported = _exported_classes()
    return next(c for c in type(obj).__mro__ if c in exported)


def _conditioning(dist: Distribution, inputs: XDict) -> XDict:
    """The entries of ``inputs`` that ``sample`` takes (not the points a density-only entry scores)."""
    return {k: v for k, v in inputs.items() if k not in dist.var or k in dist.input_var}


def _draw(dist: Distribution, inputs: XDict, **kw: Any) -> XDict:
    """``dist.sample`` given ``inputs``, with ``batch_n=B`` when the inputs fix no batch size."""
    given = _conditioning(dist, inputs)
    return dist.sample(given, batch_n=None if batch_size_of(given) else B, **kw)


def _points(ex: Example, dist: Distribution, inputs: XDict) -> XDict:
    """Values to score: a draw (without gradient), or the given points if it cannot sample."""
    if not ex.samples:
        return dict(inputs)
    with torch.no_grad():
        return _draw(dist, inputs)


def _is_random(ex: Example, dist: Distribution, var: str) -> bool:
    """Whether repeated draws of ``var`` given the same inputs differ (not a point mass, not the data)."""
    return var not in ex.point_mass and not isinstance(dist, EmpiricalDistribution)


def _fingerprint(ex: Example, dist: Distribution, inputs: XDict, points: XDict) -> Tensor:
    """What a saved state must reproduce: log-densities, or draws under a fixed seed."""
    with torch.no_grad():
        if ex.density:
            return dist.get_log_prob(points)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            out = _draw(dist, inputs)
        return torch.cat([out[v].flatten() for v in dist.var])


def _not_implemented(dist: Distribution) -> Any:
    """A NotImplementedError naming the distribution, or the factor of a product responsible."""
    names = "|".join(re.escape(f.prob_text) for f in [dist, *dist.factors()])
    return pytest.raises(NotImplementedError, match=names)


# ------------------------------------------------------------------ meta-tests
def test_every_exported_distribution_has_an_example() -> None:
    missing = _exported_classes() - {ex.cls for ex in EXAMPLES}
    assert not missing, f"no EXAMPLES entry for {sorted(c.__name__ for c in missing)}"


def test_example_ids_are_unique() -> None:
    assert len(set(IDS)) == len(IDS)


@sweep()
def test_example_builds_its_class(ex: Example) -> None:
    dist, inputs = ex.build(0)
    assert _most_derived_exported(dist) is ex.cls
    assert dist.has_reparam is ex.reparam
    assert all(isinstance(v, Tensor) and v.shape[0] == B for v in inputs.values())
    if ex.cls is not EmpiricalDistribution:
        assert any(True for _ in dist.parameters()), "give the entry learnable parameters"


# ------------------------------------------------------------------ shapes
@sweep()
def test_sample_shapes(ex: Example) -> None:
    dist, inputs = ex.build(0)
    if not ex.samples:
        with _not_implemented(dist):
            _draw(dist, inputs)
        return
    given = _conditioning(dist, inputs)
    out = _draw(dist, inputs)
    # a flow distribution also returns the prior's draw it mapped (Pixyz's return_hidden=True)
    hidden = set(dist.prior.var) if isinstance(dist, (kd.TransformedDistribution, kd.InverseTransformedDistribution)) \
        else set()
    assert set(out) == set(dist.var) | set(given) | hidden
    conditions = {k: v for k, v in given.items() if k not in dist.var}  # not the data of an empirical
    assert all(out[k] is v for k, v in conditions.items())  # inputs are returned as given
    assert all(out[v].shape[0] == B for v in dist.var)
    assert set(_draw(dist, inputs, return_all=False)) == set(dist.var) | hidden

    many = _draw(dist, inputs, sample_shape=(3,))
    assert all(many[k] is v for k, v in conditions.items())
    for v in dist.var:
        assert many[v].shape == (3, *out[v].shape), v
        if _is_random(ex, dist, v):  # three independent draws, not one repeated
            assert not (torch.equal(many[v][0], many[v][1]) and torch.equal(many[v][1], many[v][2])), v

    if not dist.cond_var and not dist.input_var:
        five = dist.sample(batch_n=5)
        assert all(five[v].shape == (5, *out[v].shape[1:]) for v in dist.var)


# ------------------------------------------------------------------ density
@sweep()
def test_log_prob_of_own_sample(ex: Example) -> None:
    dist, inputs = ex.build(0)
    points = _points(ex, dist, inputs)
    if not ex.density:
        with _not_implemented(dist):
            dist.get_log_prob(points)
        return
    lp = dist.get_log_prob(points)
    assert lp.shape == (B,)
    assert torch.isfinite(lp).all()


# ------------------------------------------------------------------ gradients
@sweep()
def test_reparam_draw_reaches_every_parameter(ex: Example) -> None:
    dist, inputs = ex.build(0)
    if not ex.reparam:  # an error, not a silent fallback to draws without gradient
        with pytest.raises(ValueError, match="reparam"):
            _draw(dist, inputs, reparam=True)
        return
    params = dict(dist.named_parameters())
    out = _draw(dist, inputs, reparam=True, return_all=False)
    if not params:
        return  # the data itself (EmpiricalDistribution): nothing to differentiate
    assert all(out[v].grad_fn is not None for v in out)
    many = _draw(dist, inputs, reparam=True, sample_shape=(2,), return_all=False)
    assert all(many[v].grad_fn is not None for v in many)
    g = _gen(1)  # random weights: a plain sum of a simplex draw would have zero gradient
    loss = sum((value * torch.randn(value.shape, generator=g)).sum() for value in out.values())
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
    for name, grad in grads.items():
        if name.split(".")[-1] in ex.no_draw_grad:
            assert grad is None, f"{name} was documented not to get a gradient from a draw"
        else:
            assert grad is not None, f"no gradient reaches {name}"
            assert torch.isfinite(grad).all(), name


@sweep()
def test_plain_draw_carries_no_gradient(ex: Example) -> None:
    dist, inputs = ex.build(0)
    if not ex.samples:
        return
    out = _draw(dist, inputs, return_all=False)
    for v, value in out.items():
        if v in ex.point_mass:  # a point mass *is* its network's output: always differentiable
            assert value.grad_fn is not None, v
        else:
            assert value.grad_fn is None, v


@sweep([ex for ex in EXAMPLES if ex.density])
def test_log_prob_gradient_reaches_every_parameter(ex: Example) -> None:
    dist, inputs = ex.build(0)
    points = _points(ex, dist, inputs)
    params = dict(dist.named_parameters())
    assert params, "give the entry learnable parameters"
    grads = torch.autograd.grad(dist.get_log_prob(points).sum(), list(params.values()), allow_unused=True)
    for name, grad in zip(params, grads):
        assert grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(grad).all(), name


# ------------------------------------------------------------------ save / load
@sweep()
def test_state_dict_round_trip(ex: Example) -> None:
    dist, inputs = ex.build(0)
    fresh, _ = ex.build(1)
    points = _points(ex, dist, inputs)
    expected = _fingerprint(ex, dist, inputs, points)
    state = dist.state_dict()
    assert set(state) == set(fresh.state_dict())
    if state:  # the other seed really builds another distribution
        assert not torch.equal(_fingerprint(ex, fresh, inputs, points), expected)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(_fingerprint(ex, fresh, inputs, points), expected)


# ------------------------------------------------------------------ dtype
@sweep()
def test_double_gives_float64(ex: Example) -> None:
    dist, inputs = ex.build(0)
    dist = dist.double()
    inputs = {k: v.double() for k, v in inputs.items()}
    if ex.samples:
        out = _draw(dist, inputs, return_all=False)
        assert {v: t.dtype for v, t in out.items()} == dict.fromkeys(out, torch.float64)
        many = _draw(dist, inputs, sample_shape=(2,), return_all=False)
        assert all(t.dtype == torch.float64 for t in many.values())
    if ex.density:
        points = _points(ex, dist, inputs)
        assert dist.get_log_prob(points).dtype == torch.float64


# ------------------------------------------------------------------ text
@sweep()
def test_text_names_the_distribution(ex: Example) -> None:
    dist, _ = ex.build(0)
    text = str(dist)
    assert text and dist.prob_text in text
    assert dist.to_latex()
