"""Files that survive interruptions and say when they are damaged: one mechanism for every save.

`write_atomic` serialises with ``torch.save`` into a temporary file next to the target, prefixed
by a header line carrying the SHA-256 of the payload, flushes and fsyncs it, renames it over the
target and fsyncs the directory, so a kill at any moment leaves either the previous complete file
or the new one, never a mix. A symbolic link at the target stays a link (the file it points to is
the one replaced) and the replaced file keeps its permission bits. `load` (`decode`) verifies the
checksum before unpickling with ``weights_only=True``: a flipped byte, a truncated file or a pickle
that tries to run code is a ``ValueError`` naming the file, and nothing runs. `saved_as` tells which of kizuna's
saves (Model.save, save_module, Graph.save) wrote a path, so that a loader given another save's file names the
loader that reads it instead of calling it damaged.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import re
import socket
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

MAGIC = b"KIZUNA-SHA256 "  # the header of `save`'s files: Model.save checkpoints
# kizuna.modules' files (`kizuna.modules.persistence`): the header of save_module's files and of a saved graph's module
# files, the file that makes a directory a saved graph (Graph.save), and the names of its module files
MODULE_FORMAT = "kizuna.modules/2"
MODULE_MAGIC = f"{MODULE_FORMAT} sha256:".encode()
GRAPH_MANIFEST = "manifest.json"
GRAPH_MODULE_FILE = re.compile(r"module\d{3,}-[0-9a-f]{16}\.pt")


class SavedAs(NamedTuple):
    """What one of kizuna's saves wrote at a path (`saved_as`), in words for the error of a loader given it."""

    kind: str  # "checkpoint" (Model.save), "module" (save_module), "graph" (Graph.save: its directory or a file of it)
    what: str  # e.g. "a Model.save checkpoint"
    reader: str  # what reads it, e.g. "read it with Model.load"


def make_folder(folder: Path, cannot: str) -> None:
    """``folder`` created with its parents where missing; a FileNotFoundError that starts with ``cannot`` and says why
    otherwise (a file in its way was pathlib's bare FileExistsError naming only that file; no permission), for
    every writer of kizuna's files (`kizuna.models.Model.save`, ``fit(checkpoint=...)``, `kizuna.modules.save_module`,
    a graph's ``save``)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((q for q in (folder, *folder.parents) if q.exists() and not q.is_dir()), None)
        why = f"{blocker} is a file" if blocker is not None else err.strerror or str(err)
        raise FileNotFoundError(f"{cannot}: the folder {folder} cannot be created ({why})") from None


def saved_as(path: str | os.PathLike[str]) -> SavedAs | None:
    """Which of kizuna's saves wrote ``path``, told by its header (a file) or its manifest (a directory), and what
    reads it; None for anything else (a foreign file, one cut inside its header, a missing path). A loader given
    another save's file names the right loader with it instead of calling the file truncated or damaged; only the
    header is read (and the payload of a file with kizuna.modules' header, `_modules_file`: save_module's and a saved
    graph's module files share it): whether the rest is whole is the right loader's check. Call it only where a
    loader refuses a file."""
    path = Path(path)
    graph = path if path.is_dir() else path.parent
    if (graph / GRAPH_MANIFEST).is_file() and (path == graph or path.name == GRAPH_MANIFEST
                                               or GRAPH_MODULE_FILE.fullmatch(path.name)):
        what = "a saved graph directory" if path == graph else (
            f"the manifest of the saved graph directory {graph}" if path.name == GRAPH_MANIFEST else
            f"a module file of the saved graph directory {graph}")
        return SavedAs("graph", what, "Graph.load reads it" if path == graph else "Graph.load reads that directory")
    try:
        with path.open("rb") as file:
            head = file.read(max(len(MAGIC), len(MODULE_MAGIC)))
    except OSError:  # missing, a directory, unreadable: the loader's own error says so
        return None
    if head.startswith(MAGIC):
        return SavedAs("checkpoint", "a Model.save checkpoint", "read it with Model.load")
    if head.startswith(MODULE_MAGIC):
        return _modules_file(path)
    return None


def _modules_file(path: Path) -> SavedAs:
    """What a file with kizuna.modules' header (`MODULE_MAGIC`) is, told by its payload: save_module's (a dict of the
    format, the module's manifest entry and its state, as `load_module` checks it), or a module file of a Graph.save
    directory taken out of it (the module's state alone: only Graph.load reads it, with the directory's manifest);
    one whose payload cannot be read (cut, altered) may be either. The payload is read on ``meta`` tensors (no
    memory for their values) and without running code (``weights_only``)."""
    try:
        payload = path.read_bytes().partition(b"\n")[2]
        blob = torch.load(io.BytesIO(payload), map_location="meta", weights_only=True)
    except Exception:  # noqa: BLE001 - torch raises several types for a damaged payload: it may be either
        return SavedAs("module", "a kizuna.modules file (save_module's, or a module file of a Graph.save directory)",
                       "read save_module's with kizuna.modules.load_module(module, path), a module file of a "
                       "Graph.save directory with Graph.load of that directory")
    if isinstance(blob, dict) and blob.get("format") == MODULE_FORMAT and "manifest" in blob and "state" in blob:
        return SavedAs("module", "a kizuna.modules.save_module file",
                       "read it with kizuna.modules.load_module(module, path)")
    return SavedAs("graph", "a module file of a Graph.save directory, outside that directory (one module's state, "
                            "which the directory's manifest.json describes)",
                   "Graph.load reads the directory it was saved in, not this file alone (nor does "
                   "kizuna.modules.load_module, which reads save_module's files)")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


NAME_KEEP = 120  # bytes of the target's name a temporary name keeps (a long name is cut and given a hash)
_HOST_KEEP = 64  # bytes of the host name (Linux's HOST_NAME_MAX): temporary names stay within NAME_MAX (255)


def _short(name: str, keep: int) -> str:
    """``name`` if its UTF-8 form has at most ``keep`` bytes, else its start and a hash of all of it (``keep`` bytes
    at most; the same for the same name, and different for names that differ only after the cut)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= keep:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return raw[:keep - 13].decode("utf-8", "ignore") + "~" + digest


def _host() -> str:
    """The host field of a temporary name: ``h`` and 12 hex digits of the host name's SHA-256, a fixed form with no
    dot, so that no temporary name of another host or another target parses as this host's (with the host name
    itself, host ``lab`` saving ``a.n01`` left ``.a.n01.lab.<pid>...``, which host ``n01.lab`` saving ``a`` read as its
    own)."""
    return "h" + hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _old_host() -> str:
    """The host field of the temporary names of earlier versions (the host name itself, shortened)."""
    return _short(socket.gethostname(), _HOST_KEEP)


def _prefix(path: Path) -> str:
    """The start, ``.<name>.``, shared by every temporary file of ``path``; a long name is shortened (`_short`)."""
    return f".{_short(path.name, NAME_KEEP)}."


def temporary_name(path: Path) -> Path:
    """A temporary file for ``path`` unique to this writer: ``.<name>.<host>.<pid>-<thread>-<token>.tmp``, with the
    host (`_host`: a hash of its name), process and native thread ids (which `remove_stale` reads) and a random
    token, so threads and processes saving to one path at once never share one. A long ``<name>`` is shortened
    (`_short`): the temporary name stays within NAME_MAX (255 bytes) for every name the file system accepts."""
    thread = threading.current_thread().native_id  # registers a thread not started by threading, for remove_stale
    return path.with_name(f"{_prefix(path)}{_host()}.{os.getpid()}-{thread}-{os.urandom(4).hex()}.tmp")


STALE_SECONDS = 24 * 3600  # another host's temporary file this old is an interrupted save's
# what follows a temporary name's prefix: h<12 hex>.<pid>-<thread>-<token>.tmp, or <host>.<pid>.tmp (older versions,
# whose host field can be ambiguous: read only with the host name itself)
_WRITER = re.compile(r"(?P<host>h[0-9a-f]{12})\.(?P<pid>\d+)-(?P<thread>\d+)-[0-9a-f]+\.tmp")
_OLD_WRITER = re.compile(r"(?P<host>.+)\.(?P<pid>\d+)\.tmp")


def _writer_alive(this_host: bool, pid: int, thread: int | None) -> bool:
    """Whether the writer that names a temporary file may still be writing it: on this host, whether its process
    runs, and for this process, whether its thread runs (``thread`` None: unknown, True); on another host, unknown
    (True)."""
    if not this_host:
        return True
    if pid == os.getpid():
        return thread is None or thread in {t.native_id for t in threading.enumerate()}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError, OverflowError):  # not a pid, or one we may not signal: it exists
        return True
    return True


def remove_stale(path: Path) -> None:
    """Remove temporary files an interrupted earlier save of ``path`` left behind: those of writers of this host that
    no longer run (processes, or threads of this process), and any a day old, never a live writer's (each writer,
    thread or process, keeps its own temporary file; the last rename wins)."""
    prefix = _prefix(path)
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for name in names:
        rest = name[len(prefix):]
        writer = _WRITER.fullmatch(rest)
        if writer is not None:
            this_host, thread = writer["host"] == _host(), int(writer["thread"])
        else:
            writer = _OLD_WRITER.fullmatch(rest)
            if writer is None:  # not a temporary name of this library: not ours to remove
                continue
            this_host, thread = writer["host"] == _old_host(), None
        stale = path.parent / name
        try:
            old = time.time() - stale.stat().st_mtime > STALE_SECONDS
            if old or not _writer_alive(this_host, int(writer["pid"]), thread):
                stale.unlink()
        except OSError:
            pass


# what torch.load(weights_only=True) reads back without an allow-list (containers aside), by exact type: an IntEnum
# is an int that it refuses, and a tensor subclass (a lazy module's UninitializedParameter, a MaskedTensor, a user's
# subclass) a tensor that it refuses, so those are checked by loading them back (`safe_payload`)
_SCALARS = frozenset({bool, int, float, complex, str, bytes, type(None)})
_PLAIN = _SCALARS | {torch.Tensor, torch.nn.Parameter, torch.dtype, torch.device, torch.Size}
_LAZY = ("an uninitialised lazy module (e.g. nn.LazyLinear): run one forward pass through it before saving, so that "
         "its parameters get their shapes")


def _is_plain(obj: Any) -> bool:
    return type(obj) in _PLAIN


def _plain(obj: Any) -> tuple[Any, bool]:
    """``obj`` with numpy scalars as Python numbers and numpy arrays as tensors, through dicts, lists and tuples, and
    whether everything in it is of a type `_is_plain` takes. (torch.load(weights_only=True) refuses numpy's classes: an
    optimizer's learning rate set from ``np.logspace`` made every checkpoint fit wrote unreadable.)"""
    if isinstance(obj, np.generic):  # first: np.float64 is a float
        value = obj.item()  # (a longdouble stays numpy, a datetime64 becomes a datetime: checked as they are)
        return (value, True) if type(value) in _SCALARS else (obj, False)
    if _is_plain(obj):
        return obj, True
    if isinstance(obj, np.ndarray):
        try:  # (a copy in the machine's byte order: torch takes no big-endian array)
            return torch.from_numpy(obj.astype(obj.dtype.newbyteorder("="))), True
        except (TypeError, ValueError):  # strings, objects, datetimes: torch holds no such tensor; checked as they are
            return obj, False
    if type(obj) in (dict, OrderedDict):  # (a state_dict is an OrderedDict)
        items = [(*_plain(k), *_plain(v)) for k, v in obj.items()]
        out = type(obj)((k, v) for k, _, v, _ in items)
        if type(obj) is OrderedDict and obj.__dict__:
            out.__dict__.update(obj.__dict__)  # a state_dict's _metadata (the modules' versions)
        return out, all(key_ok and ok for _, key_ok, _, ok in items)
    if type(obj) in (list, tuple):
        items = [_plain(v) for v in obj]
        return type(obj)(v for v, _ in items), all(ok for _, ok in items)
    return obj, False


def safe_payload(obj: Any, who: str) -> tuple[Any, bytes]:
    """``obj`` made plain (`_plain`) and its ``torch.save`` bytes, checked to load back with
    ``torch.load(weights_only=True)`` where it holds other types: a ``TypeError`` at save time naming the type
    refused, so that a save never replaces a readable file with an unreadable one (``who`` names the save)."""
    obj, plain = _plain(obj)
    buffer = io.BytesIO()
    try:
        torch.save(obj, buffer)
    except (pickle.PicklingError, AttributeError, TypeError) as err:  # e.g. a class defined inside a function
        raise TypeError(f"{who}: the state cannot be saved ({err}); nothing was written") from None
    payload = buffer.getvalue()
    if not plain:
        try:
            torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises several types; weights_only refuses code
            refused = _refused(err)
            advice = (_LAZY if ".Uninitialized" in refused else
                      "give tensors, numbers, strings and lists, tuples or dicts of them")
            raise TypeError(f"{who}: the state holds {refused}, which a safe load (weights_only) refuses; "
                            f"nothing was written: {advice}") from None
    return obj, payload


def _refused(err: BaseException) -> str:
    """The class a weights-only load refused, from torch's message (its first line is only advice)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"GLOBAL ([\w.]+)", text)  # ("Unsupported global: GLOBAL x.Y", "unsupported GLOBAL x.y")
    if found:
        return f"an object of {found.group(1)}"
    lines = [line.strip() for line in text.strip().splitlines()
             if line.strip() and not line.lstrip().startswith(("Weights only load failed", "Check the documentation"))]
    return (lines[0] if lines else type(err).__name__)[:200]


def encode(obj: Any, who: str = "save") -> bytes:
    """``obj`` as ``torch.save`` bytes behind a checksum header (`safe_payload`: numpy values as plain ones, and
    checked to load back safely)."""
    payload = safe_payload(obj, who)[1]
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _destination(path: Path) -> Path:
    """The file a save to ``path`` replaces: ``path`` itself, or for a symbolic link the file it points to (through
    every link of a chain), so that the link stays a link and its target gets the new contents. A dangling link is
    written through to the path it names when that path's directory exists; a link loop is an ``OSError``."""
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if target.is_symlink():  # realpath stops at a loop and returns a link
        raise OSError(errno.ELOOP, f"cannot save to {path}: a loop of symbolic links", str(path))
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: it is a symbolic link to {target}, whose directory "
                                f"{target.parent} does not exist")
    return target


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably (see the module docstring).

    A symbolic link at ``path`` stays a link: the file it points to is replaced (its temporary file is written beside
    it). The permission bits of the file replaced are kept (a 0600 file stays 0600); a new file gets the umask's."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: the directory {path.parent} does not exist")
    target = _destination(path)
    if target.is_dir():  # (the rename failed after the write, naming the temporary file)
        raise IsADirectoryError(f"cannot save to {path}: it is an existing directory; give a file path inside it "
                                f"(e.g. {path / 'model.pt'})")
    try:
        mode: int | None = os.stat(target).st_mode & 0o777  # read/write/execute bits, not setuid / setgid / sticky
    except FileNotFoundError:
        mode = None
    remove_stale(target)
    tmp = temporary_name(target)
    try:
        with open(tmp, "wb") as f:
            if mode is not None:  # before any byte is written: a private file's contents are never readable by others
                try:
                    os.chmod(tmp, mode)
                except OSError:  # a file system without permission bits: nothing to keep
                    pass
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # gone after the rename; this writer's own name: no one else removes it
    _fsync_dir(target.parent)
    return path


def save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`encode` ``obj`` and `write_atomic` it to ``path``."""
    return write_atomic(path, encode(obj, f"saving {path}"))


def decode(data: bytes, source: str, map_location: Any = "cpu") -> Any:
    """The object of `encode`'s bytes, checked; ``source`` names the file in errors."""
    if not data.startswith(MAGIC):
        raise ValueError(f"{source} is not a kizuna file with a checksum (it may be truncated, or written by "
                         "another program)")
    header, _, payload = data.partition(b"\n")
    expected = header[len(MAGIC):].decode(errors="replace")
    if hashlib.sha256(payload).hexdigest() != expected:
        raise ValueError(f"{source} is damaged: its contents do not match their checksum (a truncated or "
                         "altered file); restore it from a backup or save it again")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types; weights_only refuses code
        raise ValueError(f"{source} cannot be read safely (it holds {_refused(err)}); nothing in it was "
                         "run") from None


def load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """Read a file written by `save`, verifying its checksum (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    return decode(path.read_bytes(), str(path), map_location)
