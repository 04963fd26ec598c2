"""Checks of five small contracts: a save never replaces a readable file with one a safe load refuses (tensor
subclasses included); `render` writes its image as every kizuna plot does; `lru_cache_for_sample_dict` keys the
autocast state; `datasets.split` names a bad argument; `render` draws one module of a larger graph.

Graphviz's ``dot`` is not needed: the image tests run a stand-in ``dot`` (a Python script that honours ``-T`` and
``-o`` and refuses formats it does not know, as dot does, case-sensitively), and the ones that run the real program
skip without it.
"""

from __future__ import annotations

import math
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kizuna import _io
from kizuna import modules as km
from kizuna.datasets import split
from kizuna.distributions import Normal
from kizuna.losses import LogProb
from kizuna.models import Model
from kizuna.utils import lru_cache_for_sample_dict
from kizuna.viz import model_spec, render


class Tagged(torch.Tensor):
    """A user's tensor subclass: ``torch.load(weights_only=True)`` refuses it."""


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# 1. _io: tensor subclasses go through the load-back check


@pytest.mark.parametrize("make, named", [
    (lambda: {"w": torch.ones(2).as_subclass(Tagged)}, "Tagged"),
    (lambda: nn.LazyLinear(3).state_dict(), "UninitializedParameter"),
])
def test_a_save_of_a_tensor_subclass_is_refused_and_keeps_the_readable_file(tmp_path: Path, make, named: str) -> None:
    path = tmp_path / "state.pt"
    _io.save({"w": torch.arange(3.0)}, path)
    good = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch warns that lazy modules are experimental)
        obj = make()
    with pytest.raises(TypeError, match=rf"holds an object of [\w.]*{named}.*nothing was written"):
        _io.save(obj, path)
    assert path.read_bytes() == good and leftovers(tmp_path, {"state.pt"}) == []
    assert torch.equal(_io.load(path)["w"], torch.arange(3.0))


def test_a_masked_tensor_is_refused_by_name(tmp_path: Path) -> None:
    from torch.masked import masked_tensor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (MaskedTensor is a prototype)
        m = masked_tensor(torch.ones(3), torch.tensor([True, False, True]))
    with pytest.raises(TypeError, match="MaskedTensor"):
        _io.save({"m": m}, tmp_path / "m.pt")
    assert leftovers(tmp_path, set()) == []


def test_a_model_with_an_unrun_lazy_layer_keeps_its_checkpoint_and_says_to_run_a_forward_pass(tmp_path: Path) -> None:
    """A model whose distribution holds an `nn.LazyLinear` not yet run: its save over a good checkpoint wrote a file
    that `Model.load` refused; it is now a TypeError that says what to do, and the good checkpoint stays."""

    class P(Normal):
        def __init__(self, lazy: bool) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.net = nn.Linear(2, 2)
            if lazy:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.extra = nn.LazyLinear(3)

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": self.net(z), "scale": torch.ones(1)}

    def model(lazy: bool) -> Model:
        p = P(lazy)
        return Model(-LogProb(p).mean(), distributions=[p], optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1})

    path = tmp_path / "ckpt.pt"
    good_model = model(False)
    good_model.save(path)
    good = path.read_bytes()
    with pytest.raises(TypeError, match=r"UninitializedParameter.*uninitialised lazy module.*one forward pass"):
        model(True).save(path)
    assert path.read_bytes() == good and leftovers(tmp_path, {"ckpt.pt"}) == []
    model(False).load(path)  # still readable


def test_plain_tensors_and_parameters_still_save_and_load(tmp_path: Path) -> None:
    state = {"t": torch.arange(4.0), "p": nn.Parameter(torch.ones(2)), "d": torch.float64, "s": torch.Size([2, 3]),
             "dev": torch.device("cpu"), "sd": nn.Linear(2, 2).state_dict()}
    _io.save(state, tmp_path / "s.pt")
    back = _io.load(tmp_path / "s.pt")
    assert torch.equal(back["t"], state["t"]) and type(back["p"]) is nn.Parameter
    assert back["d"] is torch.float64 and back["s"] == torch.Size([2, 3]) and back["dev"] == torch.device("cpu")
    assert all(torch.equal(back["sd"][k], v) for k, v in state["sd"].items())


# 2. render(filename=...): the suffix in any case, the folder created, written atomically, dot's reason in a ValueError

FAKE_DOT = """\
import sys
args = sys.argv[1:]
fmt = next(a[2:] for a in args if a.startswith("-T"))
with open(sys.argv[0] + ".log", "a") as log:
    log.write(" ".join(args) + "\\n")
if fmt not in ("png", "svg", "pdf", "dot"):
    sys.stderr.write('Format: "%s" not recognized. Use one of: png svg pdf dot\\n' % fmt)
    sys.exit(1)
data = ("%s:" % fmt).encode() + sys.stdin.buffer.read()
if "-o" in args:
    with open(args[args.index("-o") + 1], "wb") as f:
        f.write(data)
else:
    sys.stdout.buffer.write(data)
"""


@pytest.fixture
def fake_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in ``dot`` alone on PATH (the real one, if any, is hidden); returns its log of arguments."""
    if sys.platform == "win32":
        pytest.skip("the stand-in dot is a script with a #! line")
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / "dot"
    program.write_text(f"#!{sys.executable}\n{FAKE_DOT}")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))
    return folder / "dot.log"


def normal() -> Normal:
    return Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, name="p")


def test_render_takes_an_upper_case_suffix_and_creates_the_folder(tmp_path: Path, fake_dot: Path) -> None:
    out = tmp_path / "pictures" / "new" / "model.PNG"
    rendering = render(normal(), filename=out)
    assert rendering.image == out
    assert out.read_bytes() == b"png:" + rendering.dot.encode()  # what dot drew, the DOT text as given
    assert fake_dot.read_text().split() == ["-Tpng"]  # the format in lower case; written by kizuna, not dot -o
    assert leftovers(out.parent, {"model.PNG"}) == []  # no temporary file left
    bare = render(normal(), filename=tmp_path / "pictures" / "bare")
    assert bare.image == tmp_path / "pictures" / "bare.png" and bare.image.read_bytes().startswith(b"png:")


def test_render_names_a_format_dot_refuses_and_keeps_the_previous_file(tmp_path: Path, fake_dot: Path) -> None:
    out = tmp_path / "model.xyz"
    out.write_bytes(b"previous picture")
    with pytest.raises(ValueError, match=r"render: .*model\.xyz.*format 'xyz'.*not recognized.*nothing was written"):
        render(normal(), filename=out)
    assert out.read_bytes() == b"previous picture" and leftovers(tmp_path, {"model.xyz", "bin"}) == []
    with pytest.raises(ValueError, match="is a directory"):
        render(normal(), filename=tmp_path)


def test_without_dot_render_gives_the_dot_text_and_writes_nothing(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert shutil.which("dot") is None
    rendering = render(normal(), filename=tmp_path / "new" / "model.PNG", observed=["x"])
    assert rendering.image is None and not (tmp_path / "new").exists()
    assert rendering.dot == render(normal(), observed=["x"]).dot
    assert '"z" -> "x" [style=solid' in rendering.dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot (apt-get install graphviz)")
def test_graphviz_draws_upper_case_suffixes_into_a_new_folder(tmp_path: Path) -> None:
    png = render(normal(), filename=tmp_path / "a" / "model.PNG").image
    assert png is not None and png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    svg = render(normal(), filename=tmp_path / "b" / "c" / "model.SVG").image
    assert svg is not None and "<svg" in svg.read_text()
    with pytest.raises(ValueError, match=r"format 'xyz'.*not recognized"):
        render(normal(), filename=tmp_path / "model.xyz")
    assert not (tmp_path / "model.xyz").exists()


# 3. lru_cache_for_sample_dict and torch.autocast


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0

    @lru_cache_for_sample_dict()
    def get_params(self, x_dict: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        return self.lin(x_dict["x"])


def test_a_result_computed_under_autocast_is_not_returned_outside_it_nor_the_other_way_round() -> None:
    e, x = Encoder(), torch.randn(3, 4)
    exact = nn.functional.linear(x, e.lin.weight, e.lin.bias)  # float32, uncached
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nn.functional.linear(x, e.lin.weight, e.lin.bias)  # what autocast computes, uncached
        inside = e.get_params({"x": x})
    outside = e.get_params({"x": x})
    assert outside.dtype == torch.float32 and torch.equal(outside, exact)
    assert inside.dtype == torch.bfloat16 and torch.equal(inside, low)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert e.get_params({"x": x}) is inside  # the same state: still cached
    assert e.get_params({"x": x}) is outside and e.calls == 2
    with torch.autocast("cpu", dtype=torch.float16):  # another autocast dtype: another result
        assert e.get_params({"x": x}).dtype == torch.float16 and e.calls == 3
    e2 = Encoder()
    first = e2.get_params({"x": x})  # outside first, then inside
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert e2.get_params({"x": x}).dtype == torch.bfloat16
    assert torch.equal(first, nn.functional.linear(x, e2.lin.weight, e2.lin.bias))


# 4. datasets.split names a bad seed or test_fraction


@pytest.mark.parametrize("seed", [None, 1.5, "3", -1, True, np.array(3)])
def test_split_refuses_a_bad_seed_by_name(seed: object) -> None:
    with pytest.raises(ValueError, match=r"split: seed must be an integer >= 0, got"):
        split(torch.zeros(10, 2), torch.arange(10), seed=seed)


def test_split_refuses_a_seed_torch_cannot_take() -> None:
    with pytest.raises(ValueError, match=r"split: seed must be below 2\*\*64"):
        split(torch.zeros(10, 2), torch.arange(10), seed=2**64)


@pytest.mark.parametrize("fraction", ["0.2", None, True, math.nan, 0.0, 1.0, torch.ones(2)])
def test_split_refuses_a_bad_test_fraction_by_name(fraction: object) -> None:
    with pytest.raises(ValueError, match=r"split: test_fraction must be a number in \(0, 1\)"):
        split(torch.zeros(10, 2), torch.arange(10), test_fraction=fraction)


@pytest.mark.parametrize("seed, fraction", [(0, 0.2), (3, 0.3), (np.int64(3), 0.3), (torch.tensor(7), 0.25),
                                            (2**64 - 1, torch.tensor(0.2)), (5, np.float64(0.5))])
def test_split_of_a_valid_seed_is_torch_randperm_of_that_seed(seed: object, fraction: object) -> None:
    n = 21
    x, y = torch.arange(n * 2.0).reshape(n, 2), torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_test = round(n * float(fraction))
    x_tr, y_tr, x_te, y_te = split(x, y, test_fraction=fraction, seed=seed)
    assert torch.equal(y_te, perm[:n_test]) and torch.equal(y_tr, perm[n_test:])
    assert torch.equal(x_te, x[perm[:n_test]]) and torch.equal(x_tr, x[perm[n_test:]])


# 5. render(module) for a module inside a larger graph


def serket_graph() -> dict[str, km.Module]:
    rng = np.random.default_rng(0)
    img = km.Observation(rng.random((6, 4)), name="img")
    words = km.Observation(rng.integers(0, 3, (6, 5)).astype(float), name="words")
    gmm = km.GMM(2, name="gmm").connect(img)
    mlda = km.MLDA(2, name="mlda").connect(words, gmm)
    return {"img": img, "words": words, "gmm": gmm, "mlda": mlda}


def edges(spec: dict) -> set[tuple[str, str]]:
    return {(e["from"], e["to"]) for e in spec["edges"]}


def test_a_module_with_a_parent_renders_itself_and_what_is_below_it() -> None:
    g = serket_graph()
    spec = render(g["gmm"]).spec
    assert [(n["name"], n["kind"], n["observed"]) for n in spec["nodes"]] == [("img", "observation", True),
                                                                              ("gmm", "module", False)]
    assert edges(spec) == {("img", "gmm")}
    assert render(g["gmm"], observed=["gmm"]).spec["nodes"][1]["observed"]
    with pytest.raises(ValueError, match=r"observed names \['mlda'\]"):  # not in the drawn part
        render(g["gmm"], observed=["mlda"])
    assert model_spec(g["img"])["nodes"] == [{"name": "img", "label": "img", "latex": "img", "observed": True,
                                              "kind": "observation", "plate": "N"}]
    whole = render(km.Graph([g["mlda"]]))
    assert render(g["mlda"]).dot == whole.dot  # the top module: the whole graph, as before
    assert edges(whole.spec) == {("img", "gmm"), ("words", "mlda"), ("gmm", "mlda")}


def test_a_module_sharing_an_observation_with_another_top_module_renders() -> None:
    """Two top modules read one observation: a `Graph` of either alone refused the observation's other parent."""
    obs = km.Observation(np.random.default_rng(1).random((6, 3)), name="obs")
    a = km.GMM(2, name="a").connect(obs)
    km.GMM(3, name="b").connect(obs)
    assert edges(render(a).spec) == {("obs", "a")}


def test_unnamed_modules_of_one_graph_get_the_graphs_names() -> None:
    """Two unnamed observations below one module are named apart (``observation0``, ``observation1``) as `Graph` names
    them, so rendering a part never merges two nodes of one name."""
    rng = np.random.default_rng(2)
    o1, o2 = km.Observation(rng.random((6, 3))), km.Observation(rng.random((6, 3)))
    gmm = km.GMM(2, name="gmm").connect(o1)
    km.MLDA(2, name="top").connect(o2, gmm)
    names = [n["name"] for n in render(gmm).spec["nodes"]]
    assert names == [o1.name, "gmm"] and o1.name != o2.name
