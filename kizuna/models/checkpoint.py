"""What a training run records and saves: `History`, checkpoint files and RNG states.

A checkpoint is a dict written with ``torch.save`` and read back with
``torch.load(weights_only=True)``: it holds only tensors, numbers, strings, lists, tuples and
dicts (the numpy RNG key is stored as a tensor), so loading one never runs pickled code.
It carries everything that decides the next training step: the distributions' ``state_dict``, the optimizer state,
the learning-rate scheduler's state (``Model(scheduler=...)``), the state the losses hold outside the
distributions (a `kizuna.samplers.SGLD` replay buffer, a learned coefficient), the epoch count, the history, the
best validation epoch, fit's shuffling generator and fit's own torch random stream (fit draws inside a fork of
torch's generator seeded from it, so the global generators are neither used for its draws nor saved). Restoring
all of it makes an interrupted run continue with exactly the numbers of an uninterrupted one on a CPU; not saved:
python's ``random`` and numpy's global generators (a ``Dataset`` that augments with them does not resume bitwise)
and the CUDA generators (`rng_state` / `set_rng_state` capture all of these for a caller who needs them).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kizuna import _io

FORMAT = "kizuna.checkpoint"
VERSION = 1


@dataclass
class History:
    """Per-epoch records of `Model.fit`; every list is indexed like ``epoch``.

    Attributes:
        epoch: epoch numbers (1-based, counted over ``fit`` calls and resumed runs).
        train: batch-size-weighted mean training loss of each epoch.
        valid: mean validation (test) loss; ``nan`` for epochs run without validation data, or whose validation
            loss was not finite (`fit` recorded the epoch, whose training steps were taken, and raised).
        terms: ``{term label: [per-epoch mean]}`` from the training steps' own evaluations.
        valid_terms: the same for the validation passes.
        best_epoch: the epoch with the lowest validation loss so far in the last `fit` call with validation data
            (each call's early stopping starts afresh; a resumed run continues its checkpoint's), ``None`` without one.
        stopped_epoch: the epoch at which early stopping ended the last `fit` (``None`` otherwise).

    ``history["train"]``, ``history["valid"]``, ``history["epoch"]`` and
    ``history[label]`` (a term) index the lists.

    >>> h = History()
    >>> h.append(1, 2.0, 1.5, {"KL": 0.5}, {})
    >>> h["train"], h["KL"], len(h)
    ([2.0], [0.5], 1)
    """

    epoch: list[int] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    valid: list[float] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=dict)
    valid_terms: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_epoch: int | None = None

    def append(self, epoch: int, train: float, valid: float, terms: Mapping[str, float],
               valid_terms: Mapping[str, float]) -> None:
        """Record one epoch (terms missing in this or earlier epochs are ``nan``)."""
        done = len(self.epoch)
        self.epoch.append(epoch)
        self.train.append(train)
        self.valid.append(valid)
        for record, new in ((self.terms, terms), (self.valid_terms, valid_terms)):
            for key in list(record) + [k for k in new if k not in record]:
                record.setdefault(key, [math.nan] * done).append(float(new.get(key, math.nan)))

    def __len__(self) -> int:
        return len(self.epoch)

    def __getitem__(self, key: str) -> list[float] | list[int]:
        if key in ("epoch", "train", "valid"):
            return getattr(self, key)
        if key in self.terms:
            return self.terms[key]
        known = ["epoch", "train", "valid", *self.terms]
        raise KeyError(f"History has no record {key!r}; it has {', '.join(map(repr, known))}")

    def __eq__(self, other: object) -> bool:
        """Equal records; ``nan`` (an epoch without validation) equals ``nan``."""
        if not isinstance(other, History):
            return NotImplemented
        return _same(self.to_dict(), other.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> History:
        return cls(**{k: state[k] for k in cls.__dataclass_fields__})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


# ----------------------------------------------------------------- files
def save(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as a kizuna checkpoint, atomically, durably and with a checksum
    (`kizuna._io`: temporary file, fsync, rename; a kill leaves the previous checkpoint whole).
    A missing folder of ``path`` is created (with its parents), as `kizuna.modules.save_module` does; one that
    cannot be (a file in its way) is a FileNotFoundError saying why (`kizuna._io.make_folder`).

    The temporary file is named after the host, process and thread, with a random token, so threads and
    processes that save to the same path at once (every rank of a data-parallel run) never write into one
    file: the last rename wins.
    """
    _io.make_folder(Path(path).parent, f"save: cannot write the checkpoint {path}")
    _io.save({"format": FORMAT, "version": VERSION, **payload}, path)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint onto the CPU, checking its checksum and without unpickling code; a clear
    error naming the file for damaged or foreign files, and naming the loader of another kizuna save's
    (`kizuna._io.saved_as`: a save_module file, a saved graph)."""
    if Path(path).is_dir():
        kind = _io.saved_as(path)
        raise IsADirectoryError(f"{path} is a directory, not a checkpoint file; give the file Model.save wrote"
                                + ("" if kind is None else f"; it is {kind.what}: {kind.reader}"))
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint file {path}")
    data = Path(path).read_bytes()
    if not data.startswith(_io.MAGIC):
        if (kind := _io.saved_as(path)) is not None:
            raise ValueError(f"{path} is {kind.what}, not a Model.save checkpoint; {kind.reader}")
        hint = _torch_file_hint(path)
        raise ValueError(f"{path} is not a kizuna checkpoint (no kizuna header: a truncated file, or one written "
                         f"by torch.save or another program); Model.save writes one{'. ' + hint if hint else ''}")
    state = _io.decode(data, str(path))
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        held = sorted(map(str, state))[:5] if isinstance(state, dict) else type(state).__name__
        other = f", a {state['format']} file" if isinstance(state, dict) and "format" in state else ""
        raise ValueError(f"{path} is not a kizuna checkpoint (it holds {held}{other}); Model.save writes one "
                         "(kizuna.modules.save_module's files are read by kizuna.modules.load_module)")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{path} is a version {state['version']} kizuna checkpoint; this kizuna reads up to {VERSION}")
    return state


def _torch_state(path: str | os.PathLike[str]) -> Any:
    """What a file without kizuna's header holds, read by ``torch.load`` without running code (``weights_only``);
    None where torch cannot read it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file, or one holding objects (which are not run)
        return None


def _is_weights(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def pixyz_model_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor] | None:
    """The weights in a file written by Pixyz's ``Model.save``, ``torch.save({"distributions": state_dict})``
    (exactly that one key, holding tensors): its ``distributions`` state; None for any other file (a kizuna
    checkpoint included)."""
    if not Path(path).is_file():
        return None
    with Path(path).open("rb") as file:
        if file.read(len(_io.MAGIC)) == _io.MAGIC:
            return None
    state = _torch_state(path)
    if isinstance(state, Mapping) and list(state) == ["distributions"] and _is_weights(state["distributions"]):
        return dict(state["distributions"])
    return None


def _torch_file_hint(path: str | os.PathLike[str]) -> str:
    """How to load the weights a torch file holds, where it holds some (the call named is one that works)."""
    state = _torch_state(path)
    if _is_weights(state):
        return ("It holds bare weights: load them with "
                "model.distributions.load_state_dict(torch.load(path)) (the optimizer state is not in it)")
    if isinstance(state, Mapping):
        inner = [k for k, v in state.items() if _is_weights(v)]
        if inner:
            return (f"It holds {sorted(map(str, state))[:5]}; load the weights under {inner[0]!r} with "
                    f"model.distributions.load_state_dict(torch.load(path)[{inner[0]!r}])")
    return ""


def class_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


# ------------------------------------------------------------ parameters
def _where(modules: nn.ModuleList, key: str) -> str:
    index, _, rest = key.partition(".")
    if index.isdigit() and int(index) < len(modules):
        text = getattr(modules[int(index)], "prob_text", type(modules[int(index)]).__name__)
        return f"{text}.{rest}"
    return key


def named_parameters(modules: nn.ModuleList) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` with names like ``q(z|x).net.0.weight``."""
    return [(_where(modules, k), p) for k, p in modules.named_parameters()]


def check_parameters(modules: nn.ModuleList, state: Mapping[str, torch.Tensor], path: Any) -> None:
    """An error listing every missing, unexpected and mis-shaped entry of ``state``."""
    check_state(modules.state_dict(), state, path, lambda key: _where(modules, key))


def check_state(own: Mapping[str, torch.Tensor], state: Mapping[str, Any], path: Any,
                name: Callable[[str], str] = str) -> None:
    """An error listing every entry of ``state`` missing from ``own``'s keys, unexpected, not a tensor or mis-shaped
    (``name`` shows a key of ``own``)."""
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and not isinstance(state[k], torch.Tensor)]
    mismatched = [k for k in own if isinstance(state.get(k), torch.Tensor)
                  and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing:
        problems.append("missing from the checkpoint: "
                        + ", ".join(f"{name(k)} {tuple(own[k].shape)}" for k in missing))
    if unexpected:
        problems.append("in the checkpoint but not in the model: "
                        + ", ".join(f"{k} {tuple(getattr(state[k], 'shape', ()))}" for k in unexpected))
    if wrong:
        problems.append("not a tensor in the checkpoint: " + ", ".join(
            f"{name(k)} ({type(state[k]).__name__})" for k in wrong))
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(
            f"{name(k)} is {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
            for k in mismatched))
    if problems:
        raise ValueError(f"{path} was saved from another architecture; " + "; ".join(problems))


# -------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """The global RNG states: python ``random``, numpy (legacy global), torch CPU and CUDA."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore `rng_state`; CUDA states are restored for the devices present."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    key = np_state["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, np_state["pos"], np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
