"""Diff review 3 (stop 44) on the network-input messages, the 16-bit discretised decoder and the 'one row per row'
check.

* 250bb95 replaced a network's own TypeError or AttributeError with "<c> must be a torch.Tensor" whenever some
  condition was not a tensor (a list of strings that forward tokenises, an optional None), an AttributeError becoming
  a TypeError; and gave dtype advice for any RuntimeError with "type" in it where an input held integers (a device
  mismatch, a network's "unknown cell type"). Now the non-tensor message is given only where torch's own code refused
  that very condition, and the dtype advice only for torch's dtype messages.
* 89f828a read float32 data that a 16-bit model's dtype holds exactly as 16-bit data, so 8-bit data scaled as
  (k - 128) / 128 (each exact in bfloat16, up to half a level off the grid) were snapped to the grid and scored
  silently; the float32 model refuses them. Now only the levels rounded to the model's dtype are read so.
* 7ee2b62 broadcast a network's single row whenever it returned one: a network that collapsed the 3 rows of its
  condition to one, beside another variable's 6 rows, drew 6 rows. Refused again (a one-row condition still
  conditions every row).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Deterministic, DiffusionDecoder, DiffusionReverse, DiffusionSchedule, Normal
from kizuna.distributions.diffusion import DDPM
from kizuna.losses import diffusion_bound

TEXT = ["abc", "banana", "kiwi"]
X = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


# ------------------------------------------------------------------ forward's own errors beside odd conditions
class _Own(Normal):
    """q(z|c,x): ``c`` a list of strings (tokenised here), None (an optional mask) or an integer label (embedded);
    forward then raises ``error`` (the user's own bug)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(var=["z"], cond_var=["c", "x"], name="q", features_shape=[2])
        self.emb, self.lin, self.error = nn.Embedding(10, 2), nn.Linear(4, 4), error

    def forward(self, c: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(c, list):
            h = torch.tensor([[float(len(t)), float(t.count("a"))] for t in c])
        else:
            h = torch.zeros_like(x) if c is None else self.emb(c)
        self.lin(torch.cat([h, x], -1))
        raise self.error


_BUGS = {
    "TypeError": TypeError("unsupported operand type(s) for +: 'Tensor' and 'NoneType'"),
    "AttributeError": AttributeError("'Tensor' object has no attribute 'no_such_method'"),
}


@pytest.mark.parametrize("bug", list(_BUGS))
@pytest.mark.parametrize("c", [TEXT, None], ids=["list_of_strings", "None"])
def test_forwards_own_error_beside_a_condition_that_is_not_a_tensor_is_unchanged(c: Any, bug: str) -> None:
    error = _BUGS[bug]
    with pytest.raises(type(error), match=_exactly(str(error))) as info:
        _Own(error).sample({"c": c, "x": X})
    assert info.value is error and type(info.value) is type(error)


def test_a_deterministic_networks_attribute_error_stays_an_attribute_error() -> None:
    class Det(Deterministic):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["text"])

        def forward(self, text: list[str]) -> dict[str, torch.Tensor]:
            return {"z": torch.tensor([len(t) for t in text]).float().no_such()}

    with pytest.raises(AttributeError, match=_exactly("'Tensor' object has no attribute 'no_such'")):
        Det().sample({"text": TEXT})


def test_torchs_refusal_of_a_list_forward_built_is_not_laid_on_the_condition() -> None:
    """forward tokenises its list and gives torch another list (its bug): torch's own message, not "text must be a
    torch.Tensor" (the condition is a list by design)."""
    class Tok(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["text"], name="q", features_shape=[2])
            self.lin = nn.Linear(1, 4)

        def forward(self, text: list[str]) -> dict[str, torch.Tensor]:
            loc, pre = self.lin([[float(len(t))] for t in text]).chunk(2, -1)  # (forgot torch.tensor)
            return {"loc": loc, "scale": F.softplus(pre)}

    with pytest.raises(TypeError, match=_exactly("linear(): argument 'input' (position 1) must be Tensor, not list")):
        Tok().sample({"text": TEXT})


def test_a_numpy_condition_read_as_a_tensor_is_named() -> None:
    """BatchNorm reads ``input.dim()`` of an array, kizuna's MLP too, and ``torch.tanh`` / ``torch.cat`` called in
    forward refuse it: each names the condition (diff review 4: the narrowed check left these with torch's bare
    AttributeError / TypeError, which H's review found unhelpful)."""
    from kizuna.distributions import MLPNormal

    class BN(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.bn = nn.BatchNorm1d(2)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": self.bn(x), "scale": torch.ones(x.shape[0], 2)}

    class Tanh(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q", features_shape=[2])

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": torch.tanh(x), "scale": torch.ones(2)}

    message = _exactly("q(z|x): x must be a torch.Tensor, got ndarray: convert it (e.g. torch.as_tensor(x, "
                       "dtype=torch.float32))")
    for dist in (BN(), MLPNormal("z", ["x"], [2, 4, 2], name="q")):
        with pytest.raises(TypeError, match=message):
            dist.sample({"x": X.numpy()})
    # a builtin torch function called in forward itself leaves no frame of torch's: its own message names the type
    with pytest.raises(TypeError, match=_exactly("tanh(): argument 'input' (position 1) must be Tensor, not "
                                                 "numpy.ndarray")):
        Tanh().sample({"x": X.numpy()})


class _Mine(Normal):
    """forward's own bugs beside a condition that is not a tensor by design (diff review 5): none is the condition's."""

    def __init__(self, bug: str) -> None:
        super().__init__(var=["z"], cond_var=["c"], name="q", features_shape=[2])
        self.lin, self.bug = nn.Linear(1, 4), bug

    def forward(self, c: Any) -> dict[str, torch.Tensor]:
        if self.bug == "built list":
            h = [[float(len(t))] for t in c].float()  # a list forward built, not c
        elif self.bug == "split":
            h = c.split()  # a string method on the list of strings (str.split, not Tensor.split)
        elif self.bug == "settings":
            h = c["x"] * {"scale": 1.0}.scale  # another dict
        elif self.bug == "converted, other array":
            h = torch.as_tensor(c[:, :1], dtype=torch.float32)
            h = h * np.ones(1).to(h)  # c converted; another array's .to
        else:
            h = torch.tanh(np.ones((len(c), 1)))  # c converted (not used); another array to torch
        loc, pre = self.lin(h).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(pre)}


@pytest.mark.parametrize(("bug", "c", "kind", "message"), [
    ("built list", TEXT, AttributeError, "'list' object has no attribute 'float'"),
    ("split", TEXT, AttributeError, "'list' object has no attribute 'split'"),
    ("settings", {"x": X}, AttributeError, "'dict' object has no attribute 'scale'"),
    ("converted, other array", X.numpy(), AttributeError, "'numpy.ndarray' object has no attribute 'to'"),
    ("another array", X.numpy(), TypeError, "tanh(): argument 'input' (position 1) must be Tensor, not numpy.ndarray"),
])
def test_forwards_own_error_on_another_object_is_not_laid_on_the_condition(bug: str, c: Any, kind: type,
                                                                            message: str) -> None:
    with pytest.raises(kind, match=_exactly(message)):
        _Mine(bug).sample({"c": c})


# ------------------------------------------------------------------ dtype advice only for torch's dtype messages
class _Lab(Normal):
    """Class-conditional q(z|y) with an integer label ``y`` (embedded), raising ``message`` after the embedding."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(var=["z"], cond_var=["y"], name="q", features_shape=[2])
        self.emb, self.message = nn.Embedding(10, 4), message

    def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.emb(y)
        if self.message:
            raise RuntimeError(self.message)
        loc, pre = h.chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(pre)}


@pytest.mark.parametrize("message", [
    # torch's GPU device mismatch (same dtype on two devices), raised by hand: no GPU needed
    "Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) should be the same or input should be a "
    "MKLDNN tensor and weight is a dense tensor",
    "unknown cell type 'gru2'",  # the network's own
], ids=["device_mismatch", "own_type_word"])
def test_a_runtime_error_with_type_in_it_is_not_taken_for_an_integer_labels_dtype(message: str) -> None:
    y = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match=_exactly(f"q(z|y): forward() failed on y of shape (3,): {message}")) as info:
        _Lab(message).sample({"y": y})
    assert type(info.value.__cause__) is RuntimeError and str(info.value.__cause__) == message


def test_a_float64_input_beside_an_integer_label_is_the_one_named() -> None:
    """torch names Double and Float: the float64 input is at fault, not the label the embedding takes."""
    class Both(_Lab):
        def __init__(self) -> None:
            Normal.__init__(self, var=["z"], cond_var=["x", "y"], name="q", features_shape=[2])
            self.emb, self.lin = nn.Embedding(10, 4), nn.Linear(2, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            loc, pre = (self.emb(y) + self.lin(x)).chunk(2, -1)
            return {"loc": loc, "scale": F.softplus(pre)}

    with pytest.raises(ValueError, match=_exactly(
            "q(z|x,y): x is torch.float64, but its network takes torch.float32: convert it (e.g. .to(torch.float32)), "
            "or the network to torch.float64 (e.g. model.double())")):
        Both().sample({"x": X.double(), "y": torch.tensor([1, 2, 3])})
    # and the label alone: no advice, torch's own message
    with pytest.raises(ValueError, match=r"^q\(z\|y\): forward\(\) failed on y of shape \(3,\): Expected tensor for "
                                         r"argument #1 'indices'"):
        _Lab().sample({"y": torch.tensor([1.0, 2.0, 3.0])})


def test_an_integer_input_torch_names_still_gets_the_advice() -> None:
    """A uint8 image into a convolution: torch names "unsigned char"; a LayerNorm's "mixed dtype" names no type."""
    class Conv(Normal):
        def __init__(self, norm: bool) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.net = nn.LayerNorm(2) if norm else nn.Conv1d(1, 2, 2)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.net(x) if isinstance(self.net, nn.LayerNorm) else self.net(x[:, None]).squeeze(-1)
            return {"loc": h, "scale": torch.ones_like(h)}

    want = _exactly("q(z|x): x is torch.uint8, but its network takes torch.float32: convert it "
                    "(e.g. .to(torch.float32))")
    for norm in (False, True):
        with pytest.raises(ValueError, match=want):
            Conv(norm).sample({"x": X.to(torch.uint8)})


# ------------------------------------------------------------------ the 16-bit discretised decoder's grid
class _Eps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _ddpm(dt: torch.dtype) -> DDPM:
    torch.manual_seed(0)
    rev = DiffusionReverse(_Eps(), DiffusionSchedule.linear(10))
    return copy.deepcopy(DDPM(rev, [2], decoder=DiffusionDecoder(rev, bins=256))).to(dt)


K = torch.arange(256).reshape(128, 2)


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16], ids=str)
def test_a_16_bit_decoder_refuses_float32_data_off_the_grid_as_the_float32_model(dt: torch.dtype) -> None:
    """(k - 128) / 128 (the /256 mistake): every value exact in bfloat16 and float16, up to half a level off the
    grid. Refused by the decoder and the bound, as the float32 model refuses them; the levels rounded to the model's
    dtype are read as its 16-bit values (the very numbers of the 16-bit data)."""
    wrong = (K.float() - 128) / 128
    assert bool((wrong.to(dt).float() == wrong).all())
    x1 = torch.zeros(128, 2)
    want = "x_0 is not on the grid of bins=256 levels"
    for model in (_ddpm(torch.float32), _ddpm(dt)):
        with pytest.raises(ValueError, match=want):
            model.decoder.get_log_prob({"x_0": wrong, "x_1": x1})
        with pytest.raises(ValueError, match=want):
            diffusion_bound(model).eval({"x_0": wrong})
    p16 = _ddpm(dt)
    right = (K / 255 * 2 - 1).to(dt)
    with torch.no_grad():
        direct = p16.decoder.get_log_prob({"x_0": right, "x_1": x1})
        torch.testing.assert_close(p16.decoder.get_log_prob({"x_0": right.float(), "x_1": x1}), direct, rtol=0, atol=0)


def test_data_the_bound_lifted_are_read_as_their_16_bit_values() -> None:
    """Inside `reading_lifted_data` (the bound's lifting), float32 data are the 16-bit data they were: levels computed
    in bfloat16 (up to a quarter level off the rounded levels) score as the bfloat16 data do."""
    from kizuna.distributions.diffusion import reading_lifted_data

    p16 = _ddpm(torch.bfloat16)
    data = K.to(torch.bfloat16) / 255 * 2 - 1  # computed in bfloat16
    x1 = torch.zeros(128, 2)
    with torch.no_grad():
        direct = p16.decoder.get_log_prob({"x_0": data, "x_1": x1})
        with pytest.raises(ValueError, match="x_0 is not on the grid of bins=256 levels"):
            p16.decoder.get_log_prob({"x_0": data.float(), "x_1": x1})  # (not the levels rounded: float32's check)
        with reading_lifted_data(torch.bfloat16):
            lifted = p16.decoder.get_log_prob({"x_0": data.float(), "x_1": x1})
    torch.testing.assert_close(lifted, direct, rtol=0, atol=0)


# ------------------------------------------------------------------ one row of parameters for a batch
class _Rows(Normal):
    def __init__(self, pool: bool) -> None:
        super().__init__(var=["z"], cond_var=["y"], name="q", features_shape=[2])
        self.layer, self.pool = nn.Linear(4, 4), pool

    def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, pre = self.layer(y).chunk(2, -1)
        if self.pool:  # the bug: the batch averaged to one row
            loc, pre = loc.mean(0, keepdim=True), pre.mean(0, keepdim=True)
        return {"loc": loc, "scale": F.softplus(pre) + 0.1}


def test_a_network_that_collapses_its_rows_beside_another_batch_is_refused() -> None:
    y3, x6 = torch.randn(3, 4), torch.randn(6, 3)
    want = _exactly("q(z|y): the parameters have batch size 1 but the conditioning values (y) have batch size 3; "
                    "forward must return one row of parameters per row of its inputs")
    with pytest.raises(ValueError, match=want):
        _Rows(pool=True).sample({"y": y3, "x": x6})
    with pytest.raises(ValueError, match=want):
        _Rows(pool=True).sample({"y": y3, "x": x6}, sample_shape=(2,))


def test_a_one_row_condition_beside_another_batch_still_conditions_every_row() -> None:
    q = _Rows(pool=False)
    y1, x6 = torch.randn(1, 4), torch.randn(6, 3)
    torch.manual_seed(1)
    z = q.sample({"y": y1, "x": x6})["z"]
    torch.manual_seed(1)
    torch.testing.assert_close(z, q.sample({"y": y1}, batch_n=6)["z"], rtol=0, atol=0)
    with torch.no_grad():
        params = q.forward(y=y1)
        ref = torch.distributions.Normal(params["loc"], params["scale"]).log_prob(z).sum(-1)
    torch.testing.assert_close(q.get_log_prob({"y": y1, "z": z}), ref)
    assert np.isfinite(ref.numpy()).all() and z.shape == (6, 2)


def test_data_computed_in_bfloat16_pass_the_bound_and_float32_off_grid_data_do_not() -> None:
    """Data computed in bfloat16 go through diffusion_bound as before 89f828a (the bound reads them as the 16-bit
    values they were); float32 data off the grid stay refused."""
    from kizuna.losses import diffusion_bound

    p16 = _ddpm(torch.bfloat16)
    data = K.to(torch.bfloat16) / 255 * 2 - 1  # up to a quarter level off the rounded levels
    with torch.no_grad():
        value = diffusion_bound(p16).eval({"x_0": data})
    assert value.dtype == torch.float32 and bool(torch.isfinite(value).all())
    with pytest.raises(ValueError, match="x_0 is not on the grid of bins=256 levels"):
        diffusion_bound(p16).eval({"x_0": (K.float() - 128) / 128})
