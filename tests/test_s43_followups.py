"""Follow-ups of the stop-43 diff review (dr1): a GAN names its constant prior only where the prior's dtype or device
is what made the draw fail; a `_Binary` unpickled without its constant flags (pickled before they existed) keeps the
exact number path; a Python int given to a `Parameter` stays an exact int64; a graph's module file outside its
directory is named as such, not as a save_module file.

References: torch's own error texts (the same operation written by hand), torch.distributions' float64 density, the
same arithmetic on the tensors ``torch.as_tensor`` makes of the values (the pre-stop behaviour), and the exact error
texts of the loaders."""

from __future__ import annotations

import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from kizuna import modules as km
from kizuna.distributions import Deterministic, Normal
from kizuna.formula.expr import MaxLoss, _Binary
from kizuna.losses import AdversarialWassersteinDistance, LogProb, Parameter
from kizuna.models import GAN, Model
from kizuna.modules import GraphError

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest's fixture)


# ---------------------------------------------------------------- 1. a GAN's prior is blamed only where it is the cause
class Critic(Deterministic):
    def __init__(self) -> None:
        super().__init__(var=["t"], cond_var=["x"], name="f")
        self.net = nn.Linear(3, 1).double()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"t": self.net(x)}


class HalfConverted(Deterministic):
    """Converts its input itself (a float32 prior is right for it), but its second layer was left float32."""

    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="g")
        self.a, self.b = nn.Linear(2, 4).double(), nn.Linear(4, 3)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.b(self.a(z.double()))}


class Float32Inside(Deterministic):
    """float64 parameters throughout, converting its input itself, but multiplying by a float32 tensor it makes."""

    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="g")
        self.net = nn.Linear(2, 3).double()

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.net(z.double()) @ torch.eye(3)}


def _torch_error(compute) -> str:
    with pytest.raises(RuntimeError) as info:
        compute()
    return str(info.value)


@pytest.mark.parametrize(("generator", "reference"), [
    (HalfConverted, lambda: nn.Linear(4, 3)(torch.zeros(1, 4, dtype=F64))),
    (Float32Inside, lambda: torch.zeros(1, 3, dtype=F64) @ torch.eye(3)),
])
def test_a_dtype_error_of_the_generator_itself_is_left_as_torch_raised_it(generator, reference) -> None:
    """A float32 prior with a generator that converts its input itself: the generator's own dtype error (a layer left
    float32, a float32 tensor made in forward) is torch's RuntimeError, unchanged, not a ValueError blaming the prior
    (converting the prior, as that said, changed nothing); the prior's buffers are the same tensors after the check."""
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    buffers = dict(prior._buffers)
    model = GAN((generator() * prior).marginalize_var("z"), Critic(), adversarial=AdversarialWassersteinDistance)
    with pytest.raises(RuntimeError) as info:
        model.train({"x": torch.randn(4, 3, dtype=F64)})
    assert type(info.value) is RuntimeError and info.value.__cause__ is None
    assert str(info.value) == _torch_error(reference)
    assert all(prior._buffers[k] is v and v.dtype == torch.float32 for k, v in buffers.items())
    prior.to(F64)  # (the old message's remedy: the same error)
    with pytest.raises(RuntimeError, match="^" + re.escape(_torch_error(reference)) + "$"):
        model.train({"x": torch.randn(4, 3, dtype=F64)})


# ---------------------------------------------------------------- 2. a loss pickled before the constant flags existed
@pytest.mark.parametrize("missing", [("_constants",), ("_numeric", "_constants")])
@pytest.mark.parametrize("coefficient", ["constant", "parameter"])
def test_a_loss_unpickled_without_its_constant_flags_keeps_the_number_exact(missing, coefficient) -> None:
    """``(0.1 * LogProb(p)).mean()`` (or ``Parameter("b")`` given 0.1) pickled without ``_constants`` / ``_numeric``
    (as a version before them wrote it): unpickled, 0.1 is exact in the float64 evaluation (torch.distributions'
    density times 0.1 on float64), not 0.1 rounded to float32 (a relative error of 1.5e-8)."""
    p = Normal(var=["x"], loc=torch.zeros(3, dtype=F64), scale=torch.ones(3, dtype=F64))
    factor = 0.1 if coefficient == "constant" else Parameter("b")
    loss = (factor * LogProb(p)).mean()
    flags = {id(m): (m._numeric, m._constants) for m in loss.modules() if isinstance(m, _Binary)}
    for m in loss.modules():
        if isinstance(m, _Binary):
            for name in missing:
                del m.__dict__[name]
    loaded = pickle.loads(pickle.dumps(loss))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    want = (0.1 * torch.distributions.Normal(torch.zeros(3, dtype=F64), 1.0).log_prob(x).sum(-1)).mean()
    got = loaded.eval({"x": x, "b": 0.1})
    assert got.dtype == F64
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    assert sorted(flags.values()) == sorted((m._numeric, m._constants) for m in loaded.modules()
                                            if isinstance(m, _Binary))


# ---------------------------------------------------------------- 3. Python ints given to a Parameter
n, m, t = Parameter("n"), Parameter("m"), Parameter("t")


@pytest.mark.parametrize(("formula", "values", "reference"), [
    (n * m, {"n": 3, "m": 4}, lambda v: v["n"] * v["m"]),
    (n + m, {"n": 2**24 + 1, "m": 0}, lambda v: v["n"] + v["m"]),
    (n * m, {"n": 2**40 + 1, "m": 3}, lambda v: v["n"] * v["m"]),
    (n * m, {"n": np.int64(3), "m": 4}, lambda v: v["n"] * v["m"]),
    (n ** m, {"n": 2, "m": -1}, lambda v: v["n"] ** v["m"]),
    (MaxLoss(n, m), {"n": 3, "m": 4}, lambda v: torch.maximum(v["n"], v["m"])),
    (n * t, {"n": 3, "t": torch.tensor([1, 2])}, lambda v: v["n"] * v["t"]),
    (n * t, {"n": 3, "t": torch.tensor([True, False])}, lambda v: v["n"] * v["t"]),
    ((n - m) * t, {"n": 5, "m": 2, "t": torch.tensor([1, 2])}, lambda v: (v["n"] - v["m"]) * v["t"]),
    (n * m, {"n": True, "m": 2}, lambda v: v["n"] * v["m"]),
    ((n * m) * t, {"n": 3, "m": 0.1, "t": torch.ones(2, dtype=F64)},
     lambda v: (v["n"] * torch.tensor(0.1, dtype=F64)) * v["t"]),  # (0.1 exact: float64)
], ids=["3*4", "2**24+1", "2**40+1", "numpy-int", "2**-1", "max", "int-tensor", "bool-tensor", "(5-2)*t", "bool",
        "int*float-f64"])
def test_ints_given_to_parameters_are_exact_integers(formula, values, reference) -> None:
    """Ints (and bools) given to Parameters compute as the int64 (bool) tensors ``torch.as_tensor`` makes of them,
    exactly (``n * m`` of 3 and 4 is ``tensor(12)`` int64, 2**24 + 1 is not rounded to float32); an int meeting a
    float given to another Parameter in a float64 formula is exact in float64."""
    got = formula.eval(values)
    want = reference({k: torch.as_tensor(v) for k, v in values.items()})
    assert got.dtype == want.dtype
    assert torch.equal(got, want)


def test_the_parameter_docstring_says_what_its_value_is() -> None:
    """The value is ``torch.as_tensor``'s: int64 for an int, bool for a bool, the default dtype for a float."""
    assert Parameter("n").eval({"n": 3}).dtype == torch.int64
    assert Parameter("n").eval({"n": True}).dtype == torch.bool
    assert Parameter("n").eval({"n": 0.5}).dtype == torch.get_default_dtype()
    assert "an int as\n    int64, a bool as bool" in Parameter.__doc__


# ---------------------------------------------------------------- 4. a graph's module file outside its directory
def _gmm() -> km.GMM:
    return km.GMM(2, algorithm="em", max_iter=2, name="gmm").connect(
        km.Observation(torch.arange(24.0).reshape(12, 2), name="obs"))


def _model() -> Model:
    return Model(-LogProb(Normal(var=["x"], loc=nn.Parameter(torch.zeros(2)), scale=1.0)).mean())


def _raises(kind: type[BaseException], message: str):
    return pytest.raises(kind, match="^" + re.escape(message) + "$")


LONE = ("a module file of a Graph.save directory, outside that directory (one module's state, which the directory's "
        "manifest.json describes)")
LONE_READER = ("Graph.load reads the directory it was saved in, not this file alone (nor does "
               "kizuna.modules.load_module, which reads save_module's files)")


def test_a_module_file_of_a_saved_graph_outside_its_directory_is_named_with_graph_load(tmp_path) -> None:
    """Copied out of its directory, a Graph.save module file was called a save_module file by Model.load and
    Graph.load, which sent the user to load_module, which refused it ("not a saved kizuna module")."""
    gmm = _gmm()
    km.Graph([gmm]).save(tmp_path / "graph")
    (tmp_path / "lone").mkdir()
    lone = tmp_path / "lone" / "gmm.pt"
    shutil.copy(sorted((tmp_path / "graph").glob("module*.pt"))[-1], lone)
    with _raises(ValueError, f"{lone} is {LONE}, not a Model.save checkpoint; {LONE_READER}"):
        _model().load(lone)
    with _raises(GraphError, f"{lone} is {LONE}, not a kizuna.modules.save_module file; {LONE_READER}"):
        km.load_module(_gmm(), lone)
    with _raises(FileNotFoundError, f"no saved kizuna graph at {lone}: it is a file, not a saved graph directory "
                                    f"(Graph.save writes a directory); it is {LONE}: {LONE_READER}"):
        km.Graph([_gmm()]).load(lone)
    # a save_module file is still named as one, and load_module reads it
    km.save_module(gmm, tmp_path / "gmm.pt")
    with _raises(ValueError, f"{tmp_path / 'gmm.pt'} is a kizuna.modules.save_module file, not a Model.save "
                             "checkpoint; read it with kizuna.modules.load_module(module, path)"):
        _model().load(tmp_path / "gmm.pt")
    km.load_module(_gmm(), tmp_path / "gmm.pt")


def test_a_module_file_whose_payload_is_cut_is_named_as_either_kind(tmp_path) -> None:
    """A file with kizuna.modules' header whose payload does not read (cut) may be either kind: both readers are
    named; load_module still reports the damage itself."""
    gmm = _gmm()
    km.save_module(gmm, tmp_path / "gmm.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes((tmp_path / "gmm.pt").read_bytes()[:-10])
    with _raises(ValueError, f"{cut} is a kizuna.modules file (save_module's, or a module file of a Graph.save "
                             "directory), not a Model.save checkpoint; read save_module's with "
                             "kizuna.modules.load_module(module, path), a module file of a Graph.save directory "
                             "with Graph.load of that directory"):
        _model().load(cut)
    with _raises(km.CorruptSaveError, f"{cut}: checksum mismatch, the file was altered or truncated"):
        km.load_module(_gmm(), cut)
