"""Regressions of stop 43's Pixyz review P: Pixyz checkpoints of image flows load (docs/porting_from_pixyz.md).

1. Pixyz's ``Preprocess`` saves its :math:`\\alpha` as a buffer ``data_constraint`` (``tensor([0.05])``); kizuna's keeps
   ``alpha`` as a float, and refused the key (so every Pixyz RealNVP / Glow checkpoint, also through ``Model.load``).
2. Pixyz's ``ResNet`` wraps each weight-normalised convolution as ``.conv`` under torch's old ``weight_norm``
   (``X.conv.weight_g`` / ``X.conv.weight_v`` / ``X.conv.bias``); kizuna's keys are torch's parametrization's
   (``X.parametrizations.weight.original0`` / ``original1``, ``X.bias``): all refused.

The Pixyz-format state dicts are built here from kizuna modules by the inverse renaming (Pixyz is not imported); the
layout is checked against the key names and shapes of the real Pixyz 0.3.3 ``ResNet(2, 4, 4, 1, 3, 1, False)``
(recorded from it), and the outputs after loading against the module the state came from. Against the real Pixyz,
the review's scratch (s43/fixP/v_resnet_real_pixyz.py) loads Pixyz ResNets strictly with outputs equal (max |diff| 0).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from kizuna.distributions import InverseTransformedDistribution, Normal
from kizuna.flows import AffineCoupling, FlowList, Preprocess, Reverse, Squeeze, Unsqueeze
from kizuna.models import ML
from kizuna.nets import ResidualBlock, ResNet

_WN_G, _WN_V = ".parametrizations.weight.original0", ".parametrizations.weight.original1"

# the real Pixyz 0.3.3 ResNet(2, 4, 4, num_blocks=1, kernel_size=3, padding=1, double_after_norm=False).state_dict()
PIXYZ_RESNET_KEYS = {
    "in_norm.weight": (2,), "in_norm.bias": (2,), "in_norm.running_mean": (2,), "in_norm.running_var": (2,),
    "in_norm.num_batches_tracked": (), "in_conv.conv.bias": (4,), "in_conv.conv.weight_g": (4, 1, 1, 1),
    "in_conv.conv.weight_v": (4, 4, 3, 3), "in_skip.conv.bias": (4,), "in_skip.conv.weight_g": (4, 1, 1, 1),
    "in_skip.conv.weight_v": (4, 4, 1, 1), "blocks.0.in_norm.weight": (4,), "blocks.0.in_norm.bias": (4,),
    "blocks.0.in_norm.running_mean": (4,), "blocks.0.in_norm.running_var": (4,),
    "blocks.0.in_norm.num_batches_tracked": (), "blocks.0.in_conv.conv.weight_g": (4, 1, 1, 1),
    "blocks.0.in_conv.conv.weight_v": (4, 4, 3, 3), "blocks.0.out_norm.weight": (4,), "blocks.0.out_norm.bias": (4,),
    "blocks.0.out_norm.running_mean": (4,), "blocks.0.out_norm.running_var": (4,),
    "blocks.0.out_norm.num_batches_tracked": (), "blocks.0.out_conv.conv.bias": (4,),
    "blocks.0.out_conv.conv.weight_g": (4, 1, 1, 1), "blocks.0.out_conv.conv.weight_v": (4, 4, 3, 3),
    "skips.0.conv.bias": (4,), "skips.0.conv.weight_g": (4, 1, 1, 1), "skips.0.conv.weight_v": (4, 4, 1, 1),
    "out_norm.weight": (4,), "out_norm.bias": (4,), "out_norm.running_mean": (4,), "out_norm.running_var": (4,),
    "out_norm.num_batches_tracked": (), "out_conv.conv.bias": (4,), "out_conv.conv.weight_g": (4, 1, 1, 1),
    "out_conv.conv.weight_v": (4, 4, 1, 1),
}


def _to_pixyz(state: dict) -> dict:
    """kizuna's weight-normalised conv keys -> Pixyz's ``WNConv2d`` keys (the inverse of the loader's renaming)."""
    convs = {k[: -len(_WN_G)] for k in state if k.endswith(_WN_G)}
    out = {}
    for key, value in state.items():
        if key.endswith(_WN_G):
            key = key[: -len(_WN_G)] + ".conv.weight_g"
        elif key.endswith(_WN_V):
            key = key[: -len(_WN_V)] + ".conv.weight_v"
        elif key.endswith(".bias") and key[: -len(".bias")] in convs:
            key = key[: -len(".bias")] + ".conv.bias"
        out[key] = value
    return out


def _trained_resnet(seed: int, *args) -> ResNet:
    """A ResNet with weights moved off their start and batch-norm statistics from three training batches."""
    torch.manual_seed(seed)
    net = ResNet(*args)
    with torch.no_grad():
        for t in net.parameters():
            t.add_(0.3 * torch.randn_like(t))
        for _ in range(3):
            net(2.0 * torch.randn(5, args[0], 6, 6) + 1.0)
    return net


# ------------------------------------------------------------------ 1. Preprocess's data_constraint
def test_preprocess_reads_pixyz_data_constraint():
    """Pixyz's ``{"data_constraint": tensor([0.05])}`` loads strictly into ``Preprocess()`` (float32, and moved to
    float64 by a ``.double()`` Pixyz model), and the layer computes what it did."""
    x = torch.round(torch.rand(3, 6, dtype=torch.float64) * 255) / 255
    for value in (torch.tensor([0.05]), torch.tensor([0.05]).double(), torch.tensor([0.05], dtype=torch.float64)):
        f = Preprocess(dequantize=False).double()
        before = f(x)
        assert f.load_state_dict({"data_constraint": value}).missing_keys == []
        assert f.alpha == 0.05 and torch.equal(f(x), before), value
    f = FlowList([Preprocess(), Reverse(4)])
    f.load_state_dict({"flow_list.0.data_constraint": torch.tensor([0.05])})  # Reverse: no indices (Pixyz's)
    assert torch.equal(f.flow_list[1].permute_indices, torch.tensor([3, 2, 1, 0]))
    # a layer built with Pixyz's value in another alpha: kizuna's alpha=0.1 against Pixyz's 0.1 in float32
    Preprocess(alpha=0.1).load_state_dict({"data_constraint": torch.tensor([0.1])})


def test_preprocess_refuses_another_data_constraint():
    """A Pixyz constraint other than the layer's ``alpha`` is an error naming both values (strict or not): loading it
    would give another flow."""
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=re.escape(
                "flow_list.0.data_constraint: the state's Pixyz Preprocess constraint (alpha) is 0.1, this layer's "
                "alpha is 0.05: build Preprocess(alpha=0.1) to load it")):
            FlowList([Preprocess()]).load_state_dict({"flow_list.0.data_constraint": torch.tensor([0.1])},
                                                     strict=strict)
    with pytest.raises(RuntimeError, match=re.escape(
            "data_constraint: the Pixyz Preprocess constraint (alpha) is one float (tensor([0.05])), got a tensor of "
            "shape (2,) (torch.float32)")):
        Preprocess().load_state_dict({"data_constraint": torch.tensor([0.05, 0.05])})


# ------------------------------------------------------------------ 2. ResNet's weight-normalised convolutions
PIXYZ_ARGS = (2, 4, 4, 1, 3, 1, False)  # PIXYZ_RESNET_KEYS's


@pytest.mark.parametrize("args", [(3, 8, 6, 2, 3, 1, True), PIXYZ_ARGS, (2, 4, 4, 0, 3, 1, False)])
def test_resnet_loads_a_pixyz_state_dict_strictly(args):
    """A Pixyz-format state (for ``PIXYZ_ARGS``: the real Pixyz ResNet's keys and shapes) loads strictly into a fresh
    ResNet, which then computes the source's outputs (training and evaluation mode); its own ``state_dict`` is kizuna's
    again."""
    source = _trained_resnet(0, *args)
    pixyz_state = _to_pixyz(source.state_dict())
    if args == PIXYZ_ARGS:
        assert {k: tuple(v.shape) for k, v in pixyz_state.items()} == PIXYZ_RESNET_KEYS
    # in_conv, in_skip, out_conv: 3 each; per block in_conv 2 (no bias), out_conv 3, its skip 3 (Pixyz's 25 and 9)
    assert sum(k.endswith((".conv.weight_g", ".conv.weight_v", ".conv.bias")) for k in pixyz_state) == 9 + 8 * args[3]
    target = _trained_resnet(1, *args)
    result = target.load_state_dict(pixyz_state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert list(target.state_dict()) == list(source.state_dict())
    x = torch.randn(4, args[0], 6, 6)
    for mode in (False, True):
        source.train(mode)
        target.train(mode)
        with torch.no_grad():
            assert torch.equal(target(x), source(x)), mode


def test_residual_block_reads_pixyz_names_where_not_mixed():
    """A residual block on its own reads Pixyz's names too (the same output); a convolution given both kinds of names
    is not renamed: torch's unexpected-key error names Pixyz's key."""
    source = _trained_resnet(0, 2, 4, 4, 1, 3, 1, False).blocks[0].eval()
    target = ResidualBlock(4).eval()
    target.load_state_dict(_to_pixyz(source.state_dict()))
    x = torch.randn(3, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))
    state = source.state_dict()
    state["in_conv.conv.weight_g"] = state["in_conv" + _WN_G].clone()
    with pytest.raises(RuntimeError, match=re.escape('Unexpected key(s) in state_dict: "in_conv.conv.weight_g"')):
        target.load_state_dict(state)


# ------------------------------------------------------------------ 1 + 2 through Model.load (a Glow-like flow)
class _ST(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet(12, 4, 24, 1, 3, 1, True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_s, t = torch.chunk(self.resnet(x), 2, dim=1)
        return torch.tanh(log_s), t


def _glow(seed: int) -> tuple[ML, InverseTransformedDistribution]:
    torch.manual_seed(seed)
    prior = Normal(loc=torch.tensor(0.0), scale=torch.tensor(1.0), var=["z"], features_shape=[3, 4, 4])
    flow = FlowList([Preprocess(), Squeeze(), AffineCoupling(12, mask_type="channel_wise", scale_translate_net=_ST()),
                     Unsqueeze()])
    p = InverseTransformedDistribution(prior=prior, flow=flow, var=["x"])
    return ML(p, optimizer=torch.optim.Adam, optimizer_params={"lr": 1e-2}), p


def test_model_load_reads_a_pixyz_image_flow_save_file(tmp_path: Path):
    """Pixyz's ``ML.save`` of ``Preprocess -> Squeeze -> coupling(ResNet) -> Unsqueeze`` (``data_constraint`` and
    Pixyz's conv names) loads through ``Model.load``: the same weights and the same log-likelihood."""
    x = torch.round(torch.rand(2, 3, 4, 4) * 255) / 255
    trained, p = _glow(0)
    trained.train({"x": x})
    state = _to_pixyz(trained.distributions.state_dict())
    prefix = next(name for name, m in trained.distributions.named_modules() if isinstance(m, Preprocess))
    state[prefix + ".data_constraint"] = torch.tensor([0.05])
    path = tmp_path / "pixyz_glow.pt"
    torch.save({"distributions": state}, path)
    fresh, q = _glow(1)
    with pytest.warns(UserWarning, match="is a Pixyz Model.save file: its weights were loaded"):
        fresh.load(path)
    for (name, a), b in zip(trained.distributions.state_dict().items(), fresh.distributions.state_dict().values()):
        assert torch.equal(a, b), name
    p.eval()
    q.eval()
    torch.manual_seed(3)
    expected = p.get_log_prob({"x": x})
    torch.manual_seed(3)
    assert torch.equal(q.get_log_prob({"x": x}), expected)


def test_a_resnet_subclass_with_a_plain_child_named_conv_loads_its_own_checkpoint() -> None:
    """Its keys end in .conv.bias as a Pixyz weight-normalised convolution's do: the renaming hook turned
    net.conv.bias into net.bias (diff review 4); only a convolution saved with weight_g and weight_v is Pixyz's."""
    class Net(ResNet):
        def __init__(self) -> None:
            super().__init__(in_channels=2, mid_channels=4, out_channels=2, num_blocks=1, kernel_size=3, padding=1,
                             double_after_norm=False)
            self.conv = nn.Conv2d(2, 2, 1)

    holder = nn.Sequential()
    holder.add_module("net", Net())
    other = nn.Sequential()
    other.add_module("net", Net())
    assert str(other.load_state_dict(holder.state_dict())) == "<All keys matched successfully>"
    for a, b in zip(holder.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_resnet_subclass_with_a_legacy_weight_normalised_child_named_conv_loads_its_own_checkpoint() -> None:
    """Its keys end in .conv.weight_g / .conv.weight_v / .conv.bias as a Pixyz WNConv2d's do (torch's legacy
    weight_norm keeps them): only a path where the ResNet has one of its own parametrised convolutions is renamed
    (diff review 5)."""
    class Net(ResNet):
        def __init__(self) -> None:
            super().__init__(in_channels=2, mid_channels=4, out_channels=2, num_blocks=1, kernel_size=3, padding=1,
                             double_after_norm=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (torch deprecates the legacy weight_norm)
                self.conv = nn.utils.weight_norm(nn.Conv2d(2, 2, 1))

    holder = nn.Sequential()
    holder.add_module("net", Net())
    other = nn.Sequential()
    other.add_module("net", Net())
    assert str(other.load_state_dict(holder.state_dict())) == "<All keys matched successfully>"
