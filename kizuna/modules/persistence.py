"""Saving and loading modules and whole graphs: atomic, checksummed, and never running code.

A saved graph is a directory holding ``manifest.json`` and one ``moduleNNN-<hash>.pt`` per module. Each
module file is a header line, the SHA-256 of the rest, and the module's ``state_dict()`` written by
``torch.save`` (read back with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and
dicts only — a pickle that tries to run code is refused and nothing runs). The manifest lists, per
module, its name, class, architecture ``config``, children, file and that file's SHA-256, plus the
graph's iteration count, and carries the SHA-256 of its own body.

**Atomic.** Every file is written to a temporary file in the same directory, flushed, ``fsync``-ed and
renamed over its target (``os.replace``, atomic on POSIX and Windows), and the directory is synced.
Module files are named by their content, so writing them never touches the files of the previous save;
the manifest is renamed into place **last**, and only then are the files the previous manifest named
removed. A kill at any moment therefore leaves either the previous complete save or the new one — never a
mix. Saves into one directory take turns (an advisory lock, `LOCK`, where the platform has ``fcntl``), so two
overlapping saves cannot remove each other's files, and a load shares that lock while it reads the manifest and
the files it names, so that a save running meanwhile (training that checkpoints while another process evaluates
the latest save) cannot remove them under it. Other files are left alone (see `_remove_leftovers`): a
directory may hold a user's own files.

**Checked.** Loading verifies the manifest's own checksum and each file's against the manifest: a
flipped byte, a truncated file or manifest, a missing file or one from another save is a
`CorruptSaveError` naming the file. The manifest is then compared with the graph it loads into
(a `GraphError` listing every difference), all files are read and verified **before** any module is
changed, and a state that fails to load (found only then: a network of another shape) puts back every
module already loaded, so a failed load leaves the graph as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from kizuna._io import (
    GRAPH_MANIFEST,
    GRAPH_MODULE_FILE,
    MODULE_FORMAT,
    MODULE_MAGIC,
    STALE_SECONDS,
    make_folder,
    remove_stale,
    safe_payload,
    saved_as,
    write_atomic,
)
from kizuna.modules.base import GraphError, Module, Observation

FORMAT = MODULE_FORMAT
MAGIC = MODULE_MAGIC  # (kept in `kizuna._io` with Model.save's header: each loader names the other's files)
MANIFEST = GRAPH_MANIFEST
LOCK = ".kizuna-save.lock"  # the advisory lock that serialises saves into one directory (kept, empty)
MODULE_FILE = GRAPH_MODULE_FILE  # save_graph's content-named module files
OWN_TEMPORARY = re.compile(rf"\.({MODULE_FILE.pattern}|{re.escape(MANIFEST)})\..+\.tmp")


class CorruptSaveError(ValueError):
    """A saved file is missing, truncated, altered, from another save, or not safe to load; or `load_module` was given
    another kind of kizuna file (a Model.save checkpoint: the message names its loader)."""


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def describe(module: Module) -> dict[str, Any]:
    """The manifest entry of one module."""
    return {"name": module.name, "class": _qualified(type(module)), "config": module.config(),
            "children": [c.name for c in module.children]}


def _differences(saved: list[dict[str, Any]], modules: Sequence[Module], where: str = "the graph") -> list[str]:
    """What differs between saved manifest entries and ``modules`` (a state loads into its class or a subclass),
    each line saying what ``where`` (``"the graph"``, or ``"the module"`` for `load_module`) has instead."""
    current = [describe(m) for m in modules]
    names_s, names_c = [e["name"] for e in saved], [e["name"] for e in current]
    if names_s != names_c:
        if len(saved) == len(modules) == 1:
            return [f"module {names_s[0]!r} was saved but {where} is named {names_c[0]!r}"]
        return [f"modules {names_s} were saved but {where} has {names_c}"]
    diffs = []
    for s, c, m in zip(saved, current, modules):
        if s["class"] not in {_qualified(k) for k in type(m).__mro__}:
            diffs.append(f"{c['name']}: saved class {s['class']} but {where} has {c['class']}")
        for key in ("children", "config"):
            now = json.loads(json.dumps(c[key]))
            if key == "config" and isinstance(s[key], dict) and isinstance(now, dict):
                # a parameter added to a class's architecture after a save (HMM's n_features): an older save that
                # lacks it matches where the module leaves it at None (its default), as it was compared before
                now = {k: v for k, v in now.items() if k in s[key] or v is not None}
            if s[key] != now:
                diffs.append(f"{c['name']}: saved {key} {s[key]} but {where} has {c[key]}"
                             + (" (connect the same children, by name, before loading)" if key == "children" else ""))
    return diffs


def _device(modules: Sequence[Module]) -> torch.device:
    return next((m.data.device for m in modules if isinstance(m, Observation)), torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- files
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(state: dict[str, Any], who: str = "save_module") -> bytes:
    """A state as a checksummed blob: the header with the SHA-256 of the ``torch.save`` payload, then it
    (`safe_payload`: a ``TypeError`` naming ``who`` for what a safe load would refuse)."""
    payload = safe_payload(state, who)[1]
    return MAGIC + _sha(payload).encode() + b"\n" + payload


def unpack(data: bytes, where: Path, device: torch.device, expected_sha: str | None = None) -> Any:
    """The state in a blob written by `pack`, verified; a `CorruptSaveError` naming ``where`` otherwise."""
    header, newline, payload = data.partition(b"\n")
    if not header.startswith(MAGIC) or not newline:
        raise CorruptSaveError(f"{where}: not a kizuna module file (bad header; truncated or another format)")
    sha = header[len(MAGIC):].decode("ascii", "replace")
    if expected_sha is not None and _sha(data) != expected_sha:
        raise CorruptSaveError(f"{where}: the file's checksum differs from the manifest's (altered, truncated, "
                               "or from another save)")
    if _sha(payload) != sha:
        raise CorruptSaveError(f"{where}: checksum mismatch, the file was altered or truncated")
    try:
        return torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except Exception as err:  # weights_only refuses pickles that would run code: nothing ran
        raise CorruptSaveError(f"{where}: cannot be loaded safely ({type(err).__name__}: {str(err)[:200]})") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CorruptSaveError(f"{path}: missing (the save is incomplete)") from None


# ---------------------------------------------------------------------------------------------- graphs
def _previous_files(directory: Path) -> set[str]:
    """The module files the manifest now in ``directory`` names (none if there is no valid one)."""
    try:
        return {e["file"] for e in read_manifest(directory)["modules"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _remove_leftovers(directory: Path, previous: set[str], keep: set[str]) -> None:
    """Remove what earlier saves of this library left in ``directory`` and the new manifest does not name: the
    previous manifest's module files, content-named module files a day old (a save killed before its manifest;
    a younger one may be another process's save in progress), and temporary files of writers that no longer run
    (`kizuna._io.remove_stale`). Files of other names — a user's ``module_best.pt`` — are never touched."""
    now = time.time()
    for path in directory.iterdir():
        name = path.name
        try:
            if name in keep:
                continue
            if name in previous or (MODULE_FILE.fullmatch(name) and now - path.stat().st_mtime > STALE_SECONDS):
                path.unlink(missing_ok=True)
            elif (own := OWN_TEMPORARY.fullmatch(name)) is not None:
                remove_stale(directory / own.group(1))
        except OSError:  # vanished meanwhile, or not ours to remove: the save itself is complete
            pass


def save_graph(graph: Any, directory: str | Path) -> Path:
    """Write ``graph.modules``' states and the manifest into ``directory`` atomically; returns it. Saves into one
    directory are serialised (an advisory lock on ``.kizuna-save.lock`` where the platform has ``fcntl``): two
    overlapping saves removed each other's files (a module unchanged since the last save has the same file name in
    both), leaving a manifest that named a deleted file."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise NotADirectoryError(f"save: {d} is a file; a saved graph is a directory (give a directory path)")
    make_folder(d, f"save: cannot write the graph into {d}")
    with _directory_lock(d):
        return _save_graph_locked(graph, d)


_HELD = threading.local()  # the directories whose lock this thread holds (a save nested in a save: no deadlock)


@contextmanager
def _directory_lock(d: Path, shared: bool = False) -> Iterator[None]:
    """An exclusive advisory lock on ``d / LOCK`` while a save runs: other processes and threads wait for it (none
    where ``fcntl`` is missing: Windows); re-entered by the thread that holds it. ``shared``: a load's lock, which
    waits for a save and lets other loads run; taken only where a save made the lock file (a load writes nothing:
    a directory saved before saves took the lock, or one the reader may not write to, is read without it)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    key = str(d.resolve())
    held = _HELD.__dict__.setdefault("dirs", set())
    if key in held:
        yield
        return
    handle = None
    try:
        handle = open(d / LOCK, "rb" if shared else "a+b")  # noqa: SIM115 - closed below
    except OSError:  # no lock file (or no directory: the load says so), or one the reader may not open
        if not shared:
            raise
    if handle is not None and shared:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH)
        except OSError:  # a file system without flock (NFS mounted nolock, Lustre without -o flock): read unlocked
            handle.close()
            handle = None
    if handle is None:  # (outside the except blocks: the load's own error is not chained to the lock file's)
        yield
        return
    with handle:
        if not shared:
            fcntl.flock(handle, fcntl.LOCK_EX)
        mine = set() if shared else {key}  # a save nested in a save re-enters; a load only reads
        held.update(mine)
        try:
            yield
        finally:
            held.difference_update(mine)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _save_graph_locked(graph: Any, d: Path) -> Path:
    previous = _previous_files(d)
    entries = []
    # every state packed (and checked to load back safely) before any file is written
    blobs = [pack(m.state_dict(), f"save_graph: module {m.name}") for m in graph.modules]
    for i, (m, blob) in enumerate(zip(graph.modules, blobs)):
        sha = _sha(blob)
        entry = {**describe(m), "file": f"module{i:03d}-{sha[:16]}.pt", "sha256": sha}
        write_atomic(d / entry["file"], blob)
        entries.append(entry)
    body = {"format": FORMAT, "iteration": int(getattr(graph, "iteration", 0)), "modules": entries}
    text = json.dumps(body, indent=1, sort_keys=True)
    manifest = {"sha256": _sha(text.encode()), "body": body}
    write_atomic(d / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    _remove_leftovers(d, previous, {e["file"] for e in entries} | {MANIFEST})
    return d


def read_manifest(directory: Path) -> dict[str, Any]:
    """The verified body of ``directory``'s manifest."""
    path = directory / MANIFEST
    if directory.is_file():
        other = saved_as(directory)
        raise FileNotFoundError(f"no saved kizuna graph at {directory}: it is a file, not a saved graph directory "
                                "(Graph.save writes a directory)" + (f"; it is {other.what}: {other.reader}"
                                                                     if other is not None else ""))
    if not path.is_file():
        raise FileNotFoundError(f"no saved kizuna graph at {directory} (missing {MANIFEST})")
    try:
        manifest = json.loads(path.read_bytes())
        body, sha = manifest["body"], manifest["sha256"]
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptSaveError(f"{path}: not a readable manifest (truncated or altered: {err})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CorruptSaveError(f"{path}: format {body.get('format') if isinstance(body, dict) else None!r} is "
                               f"not {FORMAT!r}")
    if _sha(json.dumps(body, indent=1, sort_keys=True).encode()) != sha:
        raise CorruptSaveError(f"{path}: checksum mismatch, the manifest was altered")
    return body


def load_graph(graph: Any, directory: str | Path) -> None:
    """Load states written by `save_graph` into an identically built ``graph`` (all or nothing). The manifest and
    its files are read under the directory's lock, shared with other loads: a save into the directory meanwhile
    removed the previous manifest's files between the reads (a false "missing (the save is incomplete)")."""
    d = Path(directory)
    with _directory_lock(d, shared=True):
        body = read_manifest(d)
        diffs = _differences(body["modules"], graph.modules)
        if diffs:
            raise GraphError("the saved graph has a different architecture:\n  " + "\n  ".join(diffs))
        device = _device(graph.modules)
        blobs = [(_read(d / e["file"]), e) for e in body["modules"]]
    states = [unpack(blob, d / e["file"], device, e["sha256"]) for blob, e in blobs]
    _load_all(list(zip(graph.modules, states)))
    graph.iteration = int(body["iteration"])


def _load_all(pairs: list[tuple[Module, Any]]) -> None:
    """Load each state into its module, all or nothing: a state that does not fit (a network of another shape,
    found only by ``load_state_dict``) puts every module back as it was and is a `GraphError` naming the module."""
    restores = [m.snapshot() for m, _ in pairs]
    try:
        for m, state in pairs:
            try:
                m.load_state_dict(state)
            except Exception as err:
                raise GraphError(f"{m.name}: the saved state does not fit the module as built, nothing was loaded "
                                 f"({type(err).__name__}: {str(err)[:300]})") from err
    except BaseException:
        for restore in restores:
            restore()
        raise


# ---------------------------------------------------------------------------------------------- one module
def _check_module(module: Any, who: str) -> None:
    """A TypeError for what is not a graph module (an estimator such as `GaussianMixture` has no ``name``)."""
    if not isinstance(module, Module):
        raise TypeError(f"{who} takes a kizuna.modules graph module (e.g. GMM, MLDA, HMM, VAE), got "
                        f"{type(module).__name__}; an estimator such as GaussianMixture is saved with pickle or "
                        "joblib, as scikit-learn's")


def save_module(module: Module, path: str | Path) -> Path:
    """Write one module's manifest entry and state to the file ``path``, atomically and checksummed; its folder is
    created (with its parents) where missing, and one that cannot be (a file in its way, no permission) is a
    FileNotFoundError naming why."""
    _check_module(module, "save_module")
    p = Path(path)
    make_folder(p.parent, f"save_module: cannot write {p}")
    write_atomic(p, pack({"format": FORMAT, "manifest": json.dumps(describe(module)), "state": module.state_dict()},
                         f"save_module: module {module.name}"))
    return p


def _another_save(path: Path) -> str | None:
    """The error for `load_module` given another kizuna save's file (`kizuna._io.saved_as`): what it is and what reads
    it, instead of calling it truncated (None for any other file: a save_module file, a foreign or damaged one)."""
    other = saved_as(path)
    if other is None or other.kind == "module":
        return None
    return f"{path} is {other.what}, not a kizuna.modules.save_module file; {other.reader}"


def load_module(module: Module, path: str | Path) -> Module:
    """Load a state written by `save_module` into ``module``, which must have the saved class (or a subclass),
    config, name and children: connect children of the same names, in the same order, before loading (a
    topic model's MLDA is loaded into an MLDA connected to its observations, then ``transform`` works)."""
    _check_module(module, "load_module")
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a directory, not a saved module; give the file save_module wrote (a whole "
                                "graph's folder is read by Graph.load)")
    if not p.is_file():
        raise FileNotFoundError(f"no saved kizuna module at {p}")
    data = p.read_bytes()
    if not data.startswith(MAGIC) and (wrong := _another_save(p)) is not None:  # (a CorruptSaveError, as it was)
        raise CorruptSaveError(wrong)
    blob = unpack(data, p, _device([module, *module.children]))
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "manifest" not in blob or "state" not in blob:
        raise GraphError(_another_save(p) or f"{p}: not a saved kizuna module")
    diffs = _differences([json.loads(blob["manifest"])], [module], "the module")
    if diffs:
        raise GraphError(f"{p} holds a different module:\n  " + "\n  ".join(diffs))
    _load_all([(module, blob["state"])])
    return module
