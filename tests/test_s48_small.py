"""Stop 48: a product with graph options refuses batch_n beside a call's ``sample_shape`` with Pixyz's rule named,
and one helper (`model_device`) gives the models' device for ``generator=`` and for the
uses of a model (`kizuna.metrics.likelihood`), with their two fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kizuna.distributions import Normal, validation
from kizuna.distributions.base import model_device
from kizuna.inference import _checks
from kizuna.metrics import likelihood


def _product(option: dict | None = None) -> Normal:
    """p(y|z) p(z): y ~ N(z, 1), z ~ N(0, 1) with two features; ``option`` set on the factor of y."""
    p = (Normal(loc="z", scale=torch.tensor(1.0), var=["y"], cond_var=["z"])
         * Normal(loc=torch.tensor(0.0), scale=torch.tensor(1.0), var=["z"], features_shape=[2]))
    if option is not None:
        p.graph.set_option(option, var=["y"])
    return p


def test_graph_options_with_batch_n_and_a_sample_shape_name_pixyz_s_rule() -> None:
    """With options a product passes the call's sample_shape to every factor as Pixyz does;
    p(y|z) then gets z's (3, 2, .) draws, which batch_n=2 cannot size; the error says why and what to do."""
    p = _product({"reparam": True})
    with pytest.raises(ValueError) as err:
        p.sample(batch_n=2, sample_shape=[3])
    assert str(err.value) == (
        "p(y|z): batch_n=2 but the parameters have batch size 3. With graph options a product passes the call's "
        "sample_shape=(3,) to every factor (as Pixyz does), so p(y|z) is given draws that already have it, beside "
        "batch_n=2; leave batch_n out (the draws fix the rows), or clear the options for draws of the whole product "
        "(docs/porting_from_pixyz.md, graph options)")
    torch.manual_seed(0)
    s = p.sample(sample_shape=[3])  # Pixyz's shapes: y drawn three times per draw of z
    assert s["z"].shape == (3, 1, 2) and s["y"].shape == (3, 3, 1, 2)
    p.graph.set_option({}, var=["y"])
    s = p.sample(batch_n=2, sample_shape=[3])  # without options: one draw of the whole product each
    assert s["z"].shape == (3, 2, 2) and s["y"].shape == (3, 2, 2)


# ------------------------------------------------------------------ model_device
def test_model_device_is_the_first_tensor_s_then_the_fallback() -> None:
    empty = Normal(loc="m", scale="s", var=["x"], cond_var=["m", "s"])  # its parameters are inputs: no tensor
    assert list(empty.parameters()) == [] and list(empty.buffers()) == []
    net = nn.Linear(2, 2)
    assert model_device(empty) == torch.get_default_device()  # generator='s default: torch's default device
    assert model_device(empty, fallback=None) is None  # the uses': None, the data keep their device
    assert model_device(empty, fallback=torch.device("meta")) == torch.device("meta")
    assert model_device(empty, {"m": torch.zeros(1, device="meta")}) == torch.device("meta")  # the inputs' device
    assert model_device([empty, net], fallback=None) == torch.device("cpu")
    assert not hasattr(likelihood, "_device") and _checks.model_device is model_device  # one helper


def test_a_model_on_the_meta_device() -> None:
    """Parameters before buffers, model by model, as both helpers did; a generator beside it is refused by name."""
    meta = nn.Linear(2, 2, device="meta")
    buffered = nn.Module()
    buffered.register_buffer("b", torch.zeros(1))
    for models, want in (([meta], "meta"), ([buffered, meta], "cpu"), ([meta, buffered], "meta")):
        assert model_device(models) == torch.device(want) == model_device(models, fallback=None)
    p = Normal(var=["x"], loc=torch.zeros(2), scale=torch.ones(2)).to("meta")
    assert model_device(p) == torch.device("meta") == model_device([p], fallback=None)
    with pytest.raises(ValueError) as err:
        p.sample(batch_n=1, generator=torch.Generator())
    assert str(err.value) == ("p(x): the generator is on cpu, the model on meta; give a generator on meta "
                              "(torch.Generator(device='meta')), or move the model")


def test_the_graph_options_explanation_is_only_added_where_it_applies() -> None:
    """Errors of values the user gave (a negative scale; a conditioning value of other rows than batch_n) keep their own
    message: the sample_shape rule is not their cause."""
    bad_scale = Normal(loc="z", scale="s", var=["y"], cond_var=["z", "s"]) * Normal(
        loc=torch.zeros(2), scale=torch.ones(2), var=["z"])
    bad_scale.graph.set_option({"reparam": True}, var=["y"])
    # (validation on explicitly: a torch.compile earlier in the process turns torch's default off, docs/performance.md)
    with validation(True), pytest.raises(ValueError) as err:
        bad_scale.sample({"s": -torch.ones(4, 2)}, batch_n=4, sample_shape=[3])
    assert "scale" in str(err.value) and "With graph options" not in str(err.value)
    chain = Normal(loc="z", scale=torch.tensor(1.0), var=["y"], cond_var=["z"]) * Normal(
        loc="x", scale=torch.tensor(1.0), var=["z"], cond_var=["x"])
    chain.graph.set_option({"reparam": True}, var=["y"])
    with pytest.raises(ValueError) as err:
        chain.sample({"x": torch.randn(4, 2)}, batch_n=2, sample_shape=[3])
    assert str(err.value).startswith("p(z|x): batch_n=2") and "With graph options" not in str(err.value)


def test_a_network_factor_refusing_drawn_rows_gets_the_graph_options_explanation() -> None:
    """A factor whose parameters come from a network names its conditioning values' batch size: the same cause."""

    class _Net(Normal):
        def __init__(self) -> None:
            super().__init__(var=["y"], cond_var=["z"], name="p")
            self.net = nn.Linear(2, 2)

        def forward(self, z: torch.Tensor) -> dict:
            return {"loc": self.net(z), "scale": torch.ones_like(z)}

    p = _Net() * Normal(loc=torch.zeros(2), scale=torch.ones(2), var=["z"])
    p.graph.set_option({"reparam": True}, var=["y"])
    with pytest.raises(ValueError) as err:
        p.sample(batch_n=2, sample_shape=[3])
    assert str(err.value).startswith("p(y|z): batch_n=2 but the ") and "have batch size 3. With graph options" in str(
        err.value)


@pytest.mark.parametrize("shape", [3, np.int64(3), torch.tensor(3), (np.int64(3),)],
                         ids=["int", "numpy", "tensor", "tuple"])
def test_a_whole_number_sample_shape_with_graph_options(shape: object) -> None:
    """``sample_shape=3`` is three draws (as ``[3]``): the explanation, not a TypeError from reading the number; a
    numpy integer or a 0-d tensor (which the factors take) too (stop 49: only a Python int got it)."""
    p = _product({"reparam": True})
    with pytest.raises(ValueError) as err:
        p.sample(batch_n=2, sample_shape=shape)
    assert "sample_shape=(3,) to every factor" in str(err.value)
