"""`lru_cache_for_sample_dict` against the uncached computation (a freed tensor's ``id`` reused by a new batch, a
dict reused across batches, ``torch.inference_mode``), and `render`'s module-graph edges labelled with the message
kind they carry (review of stop 41, findings 1-3)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from module_checks import serket_vae_gmm_mlda_graph

from kizuna.distributions import Normal
from kizuna.utils import cache_maxsize, lru_cache_for_sample_dict, set_cache_maxsize
from kizuna.viz import render


@pytest.fixture
def restore_maxsize() -> Iterator[None]:
    before = cache_maxsize()
    yield
    set_cache_maxsize(before)


def make_encoder() -> torch.nn.Module:
    """A module with a cached ``get_params`` (made now: the decorator reads `cache_maxsize` when applied)."""

    class Enc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        @lru_cache_for_sample_dict()
        def get_params(self, x_dict: dict) -> dict:
            h = self.lin(x_dict["x"])
            return {"loc": h[:, :1], "scale": h[:, 1:].exp()}

    return Enc()


def test_a_new_tensor_at_a_freed_tensors_id_is_not_served_its_result() -> None:
    # the caller puts the next batch into the dict it passed: the keyed batch was freed (the cache kept the dict, not
    # the tensor), and a new tensor that CPython placed at its address (same id, version 0) got batch 0's result
    e = make_encoder()
    with torch.no_grad():
        x_dict = {"x": torch.zeros(1, 2)}
        old_id = id(x_dict["x"])
        e.get_params(x_dict)
        x_dict["x"] = torch.full((1, 2), 5.0)
        keep = []
        for k in range(2000):  # new batches until one lands at batch 0's address (none does while the cache holds it)
            t = torch.full((1, 2), 100.0 + k)
            if id(t) == old_id:
                break
            keep.append(t)
        got = e.get_params({"x": t})["loc"]
        torch.testing.assert_close(got, e.lin(t)[:, :1], rtol=0, atol=0)


@pytest.mark.parametrize("clear", [False, True])
@pytest.mark.parametrize("maxsize", [None, 20])
def test_a_dict_reused_across_batches_gives_each_batchs_own_result(restore_maxsize: None, maxsize: int | None,
                                                                   clear: bool) -> None:
    # the usual Pixyz loop: one dict, a new batch each step, a draw from the parameters (allocations in between);
    # with the dict cleared first, the old batch is freed just before the new one is made, at its address (the old
    # code served 299 of the 300 batches the previous batch's result; without clearing, stale hits came and went
    # with the allocation pattern)
    set_cache_maxsize(maxsize)
    e = make_encoder()
    with torch.no_grad():
        x_dict: dict = {}
        cached = []
        for i in range(300):
            if clear:
                x_dict.clear()
            x_dict["x"] = torch.full((1, 2), float(i))
            p = e.get_params(x_dict)
            z = p["loc"] + p["scale"] * torch.randn(1, 1)  # noqa: F841 (kept until the next step, as a sample)
            cached.append(p["loc"].item())
        true = e.lin(torch.arange(300.0).repeat_interleave(2).reshape(300, 2))[:, 0]
    np.testing.assert_allclose(cached, true.numpy(), rtol=1e-6, atol=1e-6)


def test_an_in_place_change_of_a_kept_batch_is_not_a_hit() -> None:
    e = make_encoder()
    with torch.no_grad():
        x = torch.ones(1, 2)
        e.get_params({"x": x})
        x.mul_(3.0)
        torch.testing.assert_close(e.get_params({"x": x})["loc"], e.lin(x)[:, :1], rtol=0, atol=0)


def test_cached_calls_work_under_inference_mode_with_the_uncached_numbers() -> None:
    # reading an inference tensor's _version raised "Inference tensors do not track version counter"
    e = make_encoder()
    x = torch.randn(3, 2)
    with torch.no_grad():
        want = e.lin(x)[:, :1]
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor
        for _ in range(2):  # computed each time, not cached (no version counter to see an in-place change by)
            torch.testing.assert_close(e.get_params({"x": xi})["loc"], want, rtol=0, atol=0)
        xi.add_(1.0)  # in place, untracked: a cached result would now be stale
        torch.testing.assert_close(e.get_params({"x": xi})["loc"], e.lin(xi)[:, :1], rtol=0, atol=0)
        inside = e.get_params({"x": x})["loc"]  # a normal tensor under inference mode: keyed, result an inference one
    torch.testing.assert_close(inside, want, rtol=0, atol=0)
    with torch.no_grad():  # the same call outside inference mode is not served the inference tensor computed inside
        outside = e.get_params({"x": x})["loc"]
    assert inside.is_inference() and not outside.is_inference()
    torch.testing.assert_close(outside, want, rtol=0, atol=0)


def test_a_module_built_under_inference_mode_is_computed_uncached() -> None:
    with torch.inference_mode():
        e = make_encoder()  # its parameters are inference tensors
        x = torch.randn(3, 2)
        torch.testing.assert_close(e.get_params({"x": x})["loc"], e.lin(x)[:, :1], rtol=0, atol=0)


def test_a_distribution_with_a_cached_get_params_samples_under_inference_mode() -> None:
    class Q(Normal):  # Pixyz's idiom: a cached get_params
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.fc = torch.nn.Linear(2, 4)

        @lru_cache_for_sample_dict()
        def get_params(self, params_dict: dict = {}, **kwargs: object) -> dict:  # noqa: B006 (Pixyz's signature)
            h = self.fc(params_dict["x"])
            return {"loc": h[:, :2], "scale": torch.nn.functional.softplus(h[:, 2:])}

    q, x = Q(), torch.randn(5, 2)
    with torch.no_grad():
        torch.manual_seed(1)
        want = q.sample({"x": x})["z"]
    with torch.inference_mode():
        torch.manual_seed(1)
        got = q.sample({"x": x.clone()})["z"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_module_graph_draws_each_message_kind_on_its_edge() -> None:
    # docs/families.md: "a module graph draws ... each message kind on its edge"; it was only a hover tooltip
    out = render(serket_vae_gmm_mlda_graph())
    drawn = {(a, b): attrs for a, b, attrs in re.findall(r'^  "(\w+)" -> "(\w+)" \[(.*)\];$', out.dot, re.M)}
    labels = {(a, b): dict(re.findall(r'(\w+)="([^"]*)"', attrs)).get("label") for (a, b), attrs in drawn.items()}
    assert labels == {("image", "vae"): "data", ("vae", "gmm"): "latent", ("speech", "mlda"): "data",
                      ("gmm", "mlda"): "posterior"}
    assert labels == {(e["from"], e["to"]): e["label"] for e in out.spec["edges"]}
    # a distribution's factor edges are unchanged: the factor is a tooltip, no label drawn
    p = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="p")
    assert re.search(r'"x" -> "z" \[style=solid, tooltip="[^"]*"\];', render(p).dot)
