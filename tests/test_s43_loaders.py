"""A valid kizuna file given to another save's loader names the loader that reads it (stop 43, area C finding 1).

Model.load of a save_module file said "no kizuna header: a truncated file", load_module of a Model.save checkpoint
"bad header; truncated or another format", and Graph.load of a file "missing manifest.json": a good file was reported
as damaged. A truly truncated or foreign file keeps its error."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from kizuna import modules as km
from kizuna.distributions import Normal
from kizuna.losses import LogProb
from kizuna.models import Model
from kizuna.modules import CorruptSaveError, GraphError


def _model() -> Model:
    return Model(-LogProb(Normal(var=["x"], loc=nn.Parameter(torch.zeros(2)), scale=1.0)).mean())


def _gmm() -> km.GMM:
    return km.GMM(2, algorithm="em", max_iter=2, name="gmm").connect(
        km.Observation(torch.arange(24.0).reshape(12, 2), name="obs"))


@pytest.fixture
def saves(tmp_path):
    """One file of each save: a Model.save checkpoint, a save_module file and a Graph.save directory."""
    _model().save(tmp_path / "model.pt")
    gmm = _gmm()
    graph = km.Graph([gmm])
    km.save_module(gmm, tmp_path / "gmm.pt")
    graph.save(tmp_path / "graph")
    return tmp_path


def _raises(kind: type[BaseException], message: str):
    return pytest.raises(kind, match="^" + re.escape(message) + "$")


def test_model_load_of_a_save_module_file_names_load_module(saves):
    path = saves / "gmm.pt"
    with _raises(ValueError, f"{path} is a kizuna.modules.save_module file, not a Model.save checkpoint; "
                             "read it with kizuna.modules.load_module(module, path)"):
        _model().load(path)


def test_load_module_of_a_checkpoint_names_model_load_and_stays_a_corrupt_save_error(saves):
    path = saves / "model.pt"
    with _raises(CorruptSaveError, f"{path} is a Model.save checkpoint, not a kizuna.modules.save_module file; "
                                   "read it with Model.load"):
        km.load_module(_gmm(), path)


@pytest.mark.parametrize(("name", "tail"), [
    ("model.pt", "; it is a Model.save checkpoint: read it with Model.load"),
    ("gmm.pt", "; it is a kizuna.modules.save_module file: read it with kizuna.modules.load_module(module, path)"),
    ("junk.pt", ""),
])
def test_graph_load_of_a_file_says_it_is_not_a_graph_directory(saves, name, tail):
    path = saves / name
    if name == "junk.pt":
        path.write_bytes(b"not a kizuna file")
    with _raises(FileNotFoundError, f"no saved kizuna graph at {path}: it is a file, not a saved graph directory "
                                    f"(Graph.save writes a directory){tail}"):
        km.Graph([_gmm()]).load(path)


def test_the_files_of_a_saved_graph_name_graph_load(saves):
    graph = saves / "graph"
    module_file = sorted(graph.glob("module*.pt"))[-1]
    with _raises(IsADirectoryError, f"{graph} is a directory, not a checkpoint file; give the file Model.save wrote; "
                                    "it is a saved graph directory: Graph.load reads it"):
        _model().load(graph)
    member = f"a module file of the saved graph directory {graph}"
    with _raises(ValueError, f"{module_file} is {member}, not a Model.save checkpoint; Graph.load reads that "
                             "directory"):
        _model().load(module_file)
    with _raises(GraphError, f"{module_file} is {member}, not a kizuna.modules.save_module file; Graph.load reads "
                             "that directory"):
        km.load_module(_gmm(), module_file)
    manifest = graph / "manifest.json"
    with _raises(FileNotFoundError, f"no saved kizuna graph at {manifest}: it is a file, not a saved graph directory "
                                    f"(Graph.save writes a directory); it is the manifest of the saved graph "
                                    f"directory {graph}: Graph.load reads that directory"):
        km.Graph([_gmm()]).load(manifest)


def test_truncated_and_foreign_files_keep_their_errors(saves):
    checkpoint, module = (saves / "model.pt").read_bytes(), (saves / "gmm.pt").read_bytes()
    cut = saves / "cut.pt"
    cut.write_bytes(checkpoint[:6])  # cut inside the header: nothing tells what wrote it
    with _raises(CorruptSaveError, f"{cut}: not a kizuna module file (bad header; truncated or another format)"):
        km.load_module(_gmm(), cut)
    cut.write_bytes(module[:6])
    with pytest.raises(ValueError, match=re.escape(f"{cut} is not a kizuna checkpoint (no kizuna header: a truncated "
                                                   "file")):
        _model().load(cut)
    cut.write_bytes(checkpoint[:-10])  # the right loader reports the damage
    with pytest.raises(ValueError, match=re.escape(f"{cut} is damaged")):
        _model().load(cut)
    cut.write_bytes(module[:-10])
    with _raises(CorruptSaveError, f"{cut}: checksum mismatch, the file was altered or truncated"):
        km.load_module(_gmm(), cut)
    with pytest.raises(FileNotFoundError, match=re.escape(f"no saved kizuna graph at {saves / 'nowhere'} (missing "
                                                          "manifest.json)")):
        km.Graph([_gmm()]).load(saves / "nowhere")
