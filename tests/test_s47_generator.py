"""Stop 47: ``sample(..., generator=g)`` draws from ``g`` for every family (`kizuna.distributions.base.drawing_from`).

Before, `Distribution.sample` ignored unknown keywords, so ``Normal(...).sample(generator=g)``, a product, a mixture, a
flow, an autoregressive model, ... accepted ``g`` and drew from torch's global generator (DDPM and FlowMatching alone
took it, and a product or a renamed product holding them dropped it). Now equally seeded generators give the same
draws, the global generator is not advanced, a generator seeded as the global one gives the draws made without one
(every draw goes through it, in the same order), and the generator is left where those draws leave the global one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from kizuna.distributions import (
    DDPM,
    Bernoulli,
    Categorical,
    DiffusionReverse,
    DiffusionSchedule,
    Distribution,
    FlowMatching,
    InverseTransformedDistribution,
    Laplace,
    MADEBernoulli,
    MixtureModel,
    MLPNormal,
    Normal,
    PixelCNNBernoulli,
    RelaxedCategorical,
    TransformedDistribution,
)
from kizuna.flows import MAF, PlanarFlow


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)  # (the networks' initial weights: fixed, whatever ran before)
    return build()


class OwnSample(Distribution):
    """A user's own ``sample`` (Pixyz's extension point) that draws with torch itself."""

    def __init__(self) -> None:
        super().__init__(["x"], name="u")

    def sample(self, x_dict: Any = None, batch_n: int | None = None, sample_shape: Any = (), return_all: bool = True,
               reparam: bool = False, sample_mean: bool = False, **kwargs: Any) -> dict:
        out = {"x": torch.randn(batch_n or 1, 2) * torch.rand(1)}
        return {**(x_dict or {}), **out} if return_all else out


def _eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x + 0.01 * t.to(x.dtype)[:, None]


def _families() -> dict[str, Callable[[], tuple[Distribution, dict]]]:
    """name -> () -> (distribution, its sample's inputs)."""
    cond = lambda: Normal(var=["y"], cond_var=["z"], loc="z", scale=0.5)  # noqa: E731
    prior = lambda: Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[3])  # noqa: E731

    def graph_options() -> tuple[Distribution, dict]:
        p = cond() * prior()
        p.graph.set_option({"reparam": True}, var=["y"])
        return p, {}

    def mixture() -> tuple[Distribution, dict]:
        comps = [Normal(var=["x"], loc=torch.tensor([-1.0, 2.0]), scale=0.3),
                 Laplace(var=["x"], loc=torch.tensor([1.0, 0.0]), scale=0.5)]
        return MixtureModel(comps, Categorical(var=["k"], probs=torch.tensor([0.4, 0.6]))), {}

    velocity = lambda x, t: 0.5 * x - t[:, None]  # noqa: E731
    reverse = DiffusionReverse(_eps, DiffusionSchedule.linear(6))
    laplace_decoder = Laplace(var=["x_0"], cond_var=["x_1"], loc="x_1", scale=0.1)
    x = torch.linspace(-1, 1, 12).reshape(6, 2)  # (6 rows: the batch_n of the tests)
    return {
        "Normal": lambda: (prior(), {}),
        "Bernoulli": lambda: (Bernoulli(var=["b"], probs=torch.full((5,), 0.4)), {}),
        "RelaxedCategorical": lambda: (RelaxedCategorical(var=["c"], probs=torch.tensor([0.2, 0.3, 0.5]),
                                                          temperature=0.5), {}),
        "MLPNormal q(z|x)": lambda: (_seeded(lambda: MLPNormal(["z"], ["x"], [2, 8, 3])), {"x": x}),
        "product p(y|z)p(z)": lambda: (cond() * prior(), {}),
        "product with graph options": graph_options,
        "marginal of a product": lambda: ((cond() * prior()).marginalize_var("z"), {}),
        "renamed Normal": lambda: (prior().replace_var(z="w"), {}),
        "renamed product": lambda: ((cond() * prior()).replace_var(z="w"), {}),
        "MixtureModel": mixture,
        "TransformedDistribution (planar)": lambda: (TransformedDistribution(
            Normal(var=["z0"], loc=0.0, scale=1.0, features_shape=[2]), _seeded(lambda: PlanarFlow(2)), var=["x"]), {}),
        "InverseTransformedDistribution (MAF)": lambda: (InverseTransformedDistribution(
            Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2]), _seeded(lambda: MAF(2, [8])), var=["x"]), {}),
        "MADEBernoulli": lambda: (_seeded(lambda: MADEBernoulli(4, [8])), {}),
        "PixelCNNBernoulli": lambda: (_seeded(lambda: PixelCNNBernoulli(1, 3, hidden_channels=4, n_layers=1,
                                                                        kernel_size=3)), {}),
        "DDPM, a Laplace decoder's draw": lambda: (DDPM(reverse, [2], decoder=laplace_decoder, noiseless_last=False),
                                                   {}),
        "FlowMatching in a product": lambda: (Normal(var=["y"], cond_var=["x"], loc="x", scale=0.5)
                                              * FlowMatching(velocity, [2], n_steps=2), {}),
        "own sample (Pixyz's extension point)": lambda: (OwnSample(), {}),
    }


FAMILIES = sorted(_families())


def _draw(name: str, generator: torch.Generator | None, **options: Any) -> tuple[Distribution, dict]:
    p, inputs = _families()[name]()
    rows = options.pop("batch_n", 6)
    return p, p.sample(inputs, batch_n=None if inputs else rows, return_all=False, generator=generator, **options)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", FAMILIES)
def test_equal_seeds_draw_equal_values_and_the_global_generator_is_not_advanced(name: str) -> None:
    p, inputs = _families()[name]()
    state = torch.get_rng_state()
    a, b, c = (p.sample(inputs, batch_n=6, return_all=False, generator=torch.Generator().manual_seed(seed))
               for seed in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), state), "the seeded draws advanced the global generator"
    assert _equal(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a), "another seed drew the same values"


@pytest.mark.parametrize("name", FAMILIES)
def test_a_generator_seeded_as_the_global_one_draws_the_default_draws(name: str) -> None:
    """Every draw goes through the generator, in the order the default draw takes them from the global generator;
    the generator is left where the default draw leaves the global one."""
    p, inputs = _families()[name]()
    torch.manual_seed(11)
    default = p.sample(inputs, batch_n=6, return_all=False)
    global_after = torch.get_rng_state()
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(11)
    seeded = p.sample(inputs, batch_n=6, return_all=False, generator=g)
    assert _equal(default, seeded)
    assert torch.equal(g.get_state(), global_after)
    assert torch.equal(torch.get_rng_state(), torch.Generator().manual_seed(5).get_state())


# (a product with graph options draws with a sample_shape factor by factor, which refuses these draws before and after
# stop 47: "p(y|z): batch_n=2 but the parameters have batch size 3"; a user's own sample here ignores sample_shape)
@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in ("own sample (Pixyz's extension point)",
                                                                   "product with graph options")])
def test_draws_with_a_sample_shape_come_from_the_generator(name: str) -> None:
    state = torch.get_rng_state()
    _, a = _draw(name, torch.Generator().manual_seed(7), batch_n=2, sample_shape=[3])
    _, b = _draw(name, torch.Generator().manual_seed(7), batch_n=2, sample_shape=[3])
    assert _equal(a, b) and all(v.shape[0] == 3 and v.dim() > 2 for v in a.values())
    torch.set_rng_state(state)
    p, inputs = _families()[name]()
    torch.manual_seed(7)
    assert _equal(a, p.sample(inputs, batch_n=None if inputs else 2, sample_shape=[3], return_all=False))


def test_a_mixture_with_return_hidden_and_a_flow_with_its_base_draw_come_from_the_generator() -> None:
    for name, options in (("MixtureModel", {"return_hidden": True}),
                          ("TransformedDistribution (planar)", {"return_hidden": True})):
        _, a = _draw(name, torch.Generator().manual_seed(2), **options)
        _, b = _draw(name, torch.Generator().manual_seed(2), **options)
        assert len(a) == 2 and _equal(a, b)


def test_the_hutchinson_probes_of_a_flow_matching_factor_come_from_the_generator() -> None:
    """A product's `get_log_prob` dropped the keyword (its factor's Hutchinson probes then came from the global
    generator); a renamed flow passed it on."""
    fm = FlowMatching(lambda x, t: torch.tanh(x) * (1 + t[:, None]), [2], trace="hutchinson", likelihood_steps=2)
    p = Normal(var=["y"], cond_var=["x"], loc="x", scale=0.5) * fm
    values = {"x": torch.linspace(-1, 1, 8).reshape(4, 2), "y": torch.zeros(4, 2)}
    state = torch.get_rng_state()
    one = p.get_log_prob(values, generator=torch.Generator().manual_seed(5))
    two = p.get_log_prob(values, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(one, two)
    torch.manual_seed(5)
    assert torch.equal(p.get_log_prob(values), one)
    renamed = fm.replace_var(x="w")
    torch.manual_seed(5)
    want = renamed.get_log_prob({"w": values["x"]})
    assert torch.equal(renamed.get_log_prob({"w": values["x"]}, generator=torch.Generator().manual_seed(5)), want)
    assert torch.equal(renamed.get_prob({"w": values["x"]}, generator=torch.Generator().manual_seed(5)), want.exp())


def test_means_draw_nothing_from_the_generator() -> None:
    p = Normal(var=["y"], cond_var=["z"], loc="z", scale=0.5) * Normal(var=["z"], loc=1.5, scale=1.0,
                                                                       features_shape=[3])
    g, state = torch.Generator().manual_seed(1), torch.get_rng_state()
    out = p.sample(batch_n=2, sample_mean=True, generator=g, return_all=False)
    assert torch.equal(out["y"], torch.full((2, 3), 1.5)) and torch.equal(out["z"], out["y"])
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(1).get_state())
    assert torch.equal(torch.get_rng_state(), state)


def test_nested_calls_draw_on_from_the_generators_stream() -> None:
    """A draw with the same generator inside a seeded draw continues its stream (it did not restart it); another
    generator inside it has its own stream, and the outer one continues after it."""
    inner = Normal(var=["a"], loc=0.0, scale=1.0, features_shape=[2])
    g, h = torch.Generator(), torch.Generator()

    class Outer(Distribution):
        def __init__(self, other: torch.Generator) -> None:
            super().__init__(["x"], name="o")
            self.other = other

        def sample(self, x_dict: Any = None, batch_n: int | None = None, return_all: bool = True,
                   **kwargs: Any) -> dict:
            first = torch.randn(2, 2)
            second = inner.sample(batch_n=2, generator=self.other)["a"]
            return {"x": torch.cat([first, second, torch.randn(2, 2)])}

    g.manual_seed(9)
    same = Outer(g).sample(generator=g)["x"]
    torch.manual_seed(9)
    assert torch.equal(same, torch.randn(6, 2)) and torch.equal(g.get_state(), torch.get_rng_state())
    g.manual_seed(9), h.manual_seed(4)
    other = Outer(h).sample(generator=g)["x"]
    torch.manual_seed(9)
    want_outer = torch.randn(2, 2), torch.randn(2, 2)
    torch.manual_seed(4)
    assert torch.equal(other, torch.cat([want_outer[0], torch.randn(2, 2), want_outer[1]]))


@pytest.mark.parametrize("name", ["Normal", "product p(y|z)p(z)", "MixtureModel", "MADEBernoulli", "renamed product"])
def test_a_generator_that_is_not_one_is_a_type_error_naming_the_distribution(name: str) -> None:
    p, inputs = _families()[name]()
    with pytest.raises(TypeError, match=rf"^{p.prob_text.replace('(', '[(]').replace(')', '[)]')}: generator must "
                                        r"be a torch.Generator or None, got int$"):
        p.sample(inputs, batch_n=2, generator=3)


def test_a_generator_on_another_device_is_a_value_error_naming_both() -> None:
    p = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[3]).to("meta")
    with pytest.raises(ValueError, match=r"^p\(z\): the generator is on cpu, the model on meta; give a generator on "
                                         r"meta"):
        p.sample(batch_n=2, generator=torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_generator_draws_a_cuda_models_values() -> None:
    p = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[3]).cuda()
    cpu, cuda = torch.get_rng_state(), torch.cuda.get_rng_state()
    a = p.sample(batch_n=4, generator=torch.Generator("cuda").manual_seed(3))["z"]
    b = p.sample(batch_n=4, generator=torch.Generator("cuda").manual_seed(3))["z"]
    assert a.is_cuda and torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(), cuda)
    torch.cuda.manual_seed(3)
    assert torch.equal(p.sample(batch_n=4)["z"], a)
    with pytest.raises(ValueError, match=r"the generator is on cpu, the model on cuda:0"):
        p.sample(batch_n=4, generator=torch.Generator())


def test_other_unknown_options_are_still_ignored_as_in_pixyz() -> None:
    p = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[3])
    torch.manual_seed(0)
    want = p.sample(batch_n=2)["z"]
    torch.manual_seed(0)
    assert torch.equal(p.sample(batch_n=2, some_pixyz_option=True)["z"], want)

