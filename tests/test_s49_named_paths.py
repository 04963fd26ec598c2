"""Stop 49: a `Named` node is transparent for module state. Its ``state_dict`` keys were the unnamed loss's, but
``named_parameters`` / ``named_buffers`` / ``named_modules`` added a ``loss1.`` level, ``get_parameter`` of a state key
through a named operator reached another node (``(w * kl).mean().named("t")``: ``loss1`` read as the loss itself), so
``torch.distributed.checkpoint.state_dict.get_model_state_dict`` raised, and load errors named ``loss1.`` keys. Each
test compares the named loss with the same loss unnamed (built of the same nodes, so they hold the very same tensors)
or checks torch's invariant that a ``state_dict`` key is the path of its tensor.
"""

import copy
import pickle

import pytest
import torch
from test_s48_named_linear import _Encoder  # (stop 48's encoder of a named-loss VAE)
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from kizuna.distributions import Normal
from kizuna.formula.expr import _bare
from kizuna.losses import Expectation as E
from kizuna.losses import KullbackLeibler, LogProb, ValueLoss
from kizuna.models import Model


class _Decoder(Normal):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = torch.nn.Linear(2, 2)

    def forward(self, z):
        return {"loc": self.net(z), "scale": torch.ones_like(z)}


def _parts():
    """An encoder, a decoder, KL to a fixed prior (buffers), the reconstruction and a learned coefficient (a
    parameter held by the loss)."""
    torch.manual_seed(0)
    q, p = _Encoder(), _Decoder()
    prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="prior")
    w = ValueLoss(torch.nn.Parameter(torch.tensor(0.5)))
    return q, p, KullbackLeibler(q, prior), E(q, LogProb(p)), w


def _pairs():
    """(unnamed, named) losses over the same nodes: a named term, a named operator (the path ``loss1.…`` through
    it), names nested at two levels, one node bare and named, one node under two names."""
    q, p, kl, rec, w = _parts()
    return [
        (kl, kl.named("KL")),
        ((w * kl).mean(), (w * kl).mean().named("total")),
        ((w * kl - rec).mean(), ((w * kl).named("beta*KL") - rec.named("recon")).mean()),
        ((w * kl - rec).mean(), ((w.named("beta") * kl.named("KL")).named("wKL") - rec).mean().named("total")),
        (kl + kl, kl.named("KL") + kl),
        (kl + kl, kl + kl.named("KL")),
        (kl + kl, kl.named("A") + kl.named("B")),
    ]


PAIRS = range(len(_pairs()))


def _tensor_at(module, key):
    """The tensor at the path ``key`` (torch's ``get_parameter``, else ``get_buffer``)."""
    try:
        return module.get_parameter(key)
    except AttributeError:
        return module.get_buffer(key)


@pytest.mark.parametrize("i", PAIRS)
def test_every_path_is_the_unnamed_loss_s(i):
    bare, named = _pairs()[i]
    reference = bare.state_dict(keep_vars=True)
    assert list(named.state_dict(keep_vars=True)) == list(reference)
    for key, tensor in reference.items():  # torch's invariant: a state key is its tensor's path
        assert _tensor_at(named, key) is tensor, key
    for walk in ("named_parameters", "named_buffers"):
        for dup in (True, False):
            ours = [(k, id(t)) for k, t in getattr(named, walk)(remove_duplicate=dup)]
            assert ours == [(k, id(t)) for k, t in getattr(bare, walk)(remove_duplicate=dup)], (walk, dup)
    assert [k for k, _ in named.named_modules(remove_duplicate=False)] == [
        k for k, _ in bare.named_modules(remove_duplicate=False)]
    # each distinct module once, as torch lists them (since stop 50): where one loss stands under two nodes (bare and
    # named, or two names: pairs 4-6) the second node is listed too, its submodules (the loss's) not again; torch's
    # ``replicate`` needs every listed module's children listed (tests/test_s50_named_replicate.py)
    extra = ["loss2"] if i >= 4 else []
    assert [k for k, _ in named.named_modules()] == [k for k, _ in bare.named_modules()] + extra
    for path, module in named.named_modules():
        assert named.get_submodule(path) is module, path
    assert list(map(id, named.parameters())) == list(map(id, bare.parameters()))  # no repeats


def test_distributed_checkpoint_state_dict_round_trip():
    """``get_model_state_dict`` / ``set_model_state_dict`` (CPU, no process group) map names to state keys: on the
    named loss they give and take the unnamed loss's state (all the cases in one test: a named term and names
    beside the bare node worked before; a named operator raised)."""
    for i, (bare, named) in enumerate(_pairs()):
        state = get_model_state_dict(named)
        expected = get_model_state_dict(bare)
        assert list(state) == list(expected), i
        assert all(torch.equal(state[k], expected[k]) for k in expected), i
        changed = {k: v + 1.0 if v.is_floating_point() else v for k, v in expected.items()}
        set_model_state_dict(named, changed)
        after = bare.state_dict()
        assert all(torch.equal(after[k], changed[k]) for k in changed), i


@pytest.mark.parametrize("i", PAIRS)
@pytest.mark.parametrize("strict", [True, False])
def test_load_errors_name_the_keys_the_user_sees(i, strict):
    bare, named = _pairs()[i]
    state = bare.state_dict()
    dropped = list(state)[-1]
    state.pop(dropped)
    state["loss1.bogus"] = torch.zeros(1)
    outcomes = []
    for loss in (bare, named):
        if strict:
            with pytest.raises(RuntimeError) as err:
                loss.load_state_dict(state)
            outcomes.append(str(err.value))
        else:
            result = loss.load_state_dict(state, strict=False)
            outcomes.append((sorted(result.missing_keys), sorted(result.unexpected_keys)))
    assert outcomes[1] == outcomes[0]
    assert (f'"{dropped}"' in outcomes[0]) if strict else outcomes[0] == ([dropped], ["loss1.bogus"])


def test_to_and_train_act_on_the_loss():
    """``.double()`` converts the loss's tensors, which the paths still reach; ``train(False)`` reaches every module
    and the loss inside each name; a named node's ``training`` is its loss's flag (all the cases in one test)."""
    for i, (bare, named) in enumerate(_pairs()):
        assert named.double() is named
        reference = bare.state_dict(keep_vars=True)
        assert all(t.dtype == torch.float64 for t in reference.values()), i
        assert all(_tensor_at(named, k) is t for k, t in reference.items()), i
        assert named.train(False) is named
        assert all(not m.training for _, m in named.named_modules()), i
        assert all(not m.training for node in named.nodes() for m in _bare(node).modules()), i  # inside names too
        _bare(named).train(True)
        assert named.training is True, i


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_the_node_and_its_loss_sharing_tensors(how):
    """A copy of (unnamed, named) holds its own tensors, reached by the copy's paths, and the named copy converts
    the unnamed copy's tensors (all the cases in one test)."""
    for i, pair in enumerate(_pairs()):
        twin_bare, twin = copy.deepcopy(pair) if how == "deepcopy" else pickle.loads(pickle.dumps(pair))
        reference = twin_bare.state_dict(keep_vars=True)  # the copy's own tensors
        assert list(twin.state_dict(keep_vars=True)) == list(reference), i
        assert all(_tensor_at(twin, k) is t for k, t in reference.items()), i
        assert not any(t is u for t, u in zip(reference.values(), pair[0].state_dict(keep_vars=True).values())), i
        twin.double()
        assert all(t.dtype == torch.float64 for t in twin_bare.state_dict().values()), i
        assert all(t.dtype == torch.float32 for t in pair[0].state_dict().values()), i


def test_named_operator_reads_the_operator_s_loss1():
    """``.loss1`` of a named operator is the operator's operand (the path ``loss1`` through it); of a named term it is
    the term (stop 48's accessor); `_bare` is the loss inside in both."""
    _, _, kl, _, w = _parts()
    inner = (w * kl).mean()
    named = inner.named("t")
    assert named.loss1 is inner.loss1 and named.get_submodule("loss1") is inner.loss1 and _bare(named) is inner
    assert kl.named("KL").loss1 is kl and _bare(kl.named("KL")) is kl


def test_model_checkpoint_of_a_named_loss(tmp_path):
    """A Model over a loss with named operators: its saved loss state is reachable by path, and ``Model.save`` /
    ``load`` and a whole-model ``torch.save`` / ``load`` round trip keep the values and the paths."""
    def build(named: bool):
        q, p, kl, rec, w = _parts()
        wkl = (w * kl).named("beta*KL") if named else w * kl
        loss = (wkl - rec.named("recon") if named else wkl - rec).mean()
        return Model(loss.named("total") if named else loss, distributions=[q, p]), w

    (bare, w_bare), (named, w_named) = build(False), build(True)
    held = named._loss_state()
    assert list(held) == list(bare._loss_state()) == ["loss.loss1.loss1.loss1.value"]
    for key, tensor in held.items():
        assert named.loss_cls.get_parameter(key.removeprefix("loss.")) is tensor is w_named.value
    assert [k for k, _ in named.loss_cls.named_parameters()] == [k for k, _ in bare.loss_cls.named_parameters()]
    with torch.no_grad():
        w_named.value.fill_(-1.5)
    named.save(tmp_path / "named.pt")
    bare.load(tmp_path / "named.pt")
    assert w_bare.value.item() == -1.5
    torch.save(named, tmp_path / "whole.pt")
    twin = torch.load(tmp_path / "whole.pt", weights_only=False)
    x = {"x": torch.randn(4, 2, generator=torch.Generator().manual_seed(1))}
    torch.manual_seed(2)
    expected = named.loss_cls.eval(x)
    torch.manual_seed(2)
    assert torch.equal(twin.loss_cls.eval(x), expected)
    state = twin.loss_cls.state_dict(keep_vars=True)
    assert all(_tensor_at(twin.loss_cls, k) is t for k, t in state.items())
    assert state["loss1.loss1.loss1.value"].item() == -1.5
