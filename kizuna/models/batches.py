"""The mini-batches `Model.fit` trains on, and the checks of data at the data.

`Batches` cuts a dict of tensors (and per-row lists) into mini-batches (or passes a ``DataLoader``'s dicts through),
moving them to the model's device and dtype. `prepare` converts what a user passes (numpy arrays become tensors,
floating data takes the model's dtype, integer and boolean data keep theirs), and `first_nonfinite` names the first
non-finite entry of a variable (its row and column), so that bad data is reported as data and not
as a complaint about a distribution's parameters.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from kizuna._data import first_nonfinite
from kizuna.distributions.base import batch_size_of

__all__ = ["Batch", "Batches", "first_nonfinite", "prepare"]


def prepare(x_dict: Mapping[str, Any], dtype: torch.dtype | None, device: torch.device, what: str = "x_dict"
            ) -> dict[str, Any]:
    """``x_dict`` with numpy arrays as tensors and floating tensors in the model's ``dtype`` (``None``: a model
    without floating tensors, whose data keep their floating dtype) and on its ``device`` (integer and boolean
    tensors keep their type: the distributions convert them where a density needs floats). A tensor with no rows
    is an error naming the variable."""
    out: dict[str, Any] = {}
    for key, value in x_dict.items():
        if _numbers_in_lists(value):
            # (a list of rows reached the networks whole: "linear(): argument 'input' must be Tensor, not list")
            raise TypeError(f"{what}['{key}'] is a {type(value).__name__} of numbers; give a tensor or a numpy "
                            "array (e.g. torch.tensor(...))")
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"{what}['{key}'] is a numpy array of Python objects; give numbers (objects such as "
                                "strings go in a list)")
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            if value.dim() > 0 and value.shape[0] == 0:
                raise ValueError(f"{what}['{key}'] has no rows (shape {tuple(value.shape)})")
            if value.is_floating_point() and dtype is not None and value.dtype != dtype:
                value = value.to(device=device, dtype=dtype)
            elif value.device != device:
                value = value.to(device)
        out[key] = value
    return out


class Batch(NamedTuple):
    """One mini-batch: its row count, its values, the data rows it holds (dict data; ``None`` for a
    loader's batches) and the rows of the global batch it belongs to (data-parallel runs)."""

    n: int
    values: dict[str, Any]
    rows: torch.Tensor | None
    total: int


class Batches:
    """The mini-batches ``fit`` trains on: ``(rows, dict)`` pairs moved to the model's device.

    ``data`` is a dict of tensors cut along their first dimension, and of lists or tuples holding one item per row
    (strings a network tokenises), cut and shuffled with them (numbers and 0-d tensors are passed to every batch as
    they are; a list of another length is an error), or a re-iterable of dicts such as a ``DataLoader``.
    Names are checked against ``needed`` up front (for a loader, on its dataset's first item
    when that is what its batches are built from) and again on every loader batch. ``time_major`` names the
    variables the loss reads time first (``T x N x ...``): a loader batch holding one counts ``N`` rows (its
    weight in the epoch means), not ``T``. ``drop_last``: dict data leave out their last (global) batch when it is
    not full.
    """

    def __init__(self, data: Any, what: str, needed: Sequence[str], batch_size: int,
                 time_major: Sequence[str] = (), drop_last: bool = False) -> None:
        self.what, self.needed, self.batch_size, self.drop_last = what, list(needed), batch_size, drop_last
        self.time_major = list(time_major)
        self.tensors: dict[str, Any] | None = None
        self.loader: Iterable[Any] | None = None
        if isinstance(data, Mapping):
            self.tensors = _check_tensors(data, what)
            self._check_names(self.tensors)
            bad = first_nonfinite(self.tensors, what)
            if bad is not None:
                raise ValueError(f"fit: {bad}; remove or impute the non-finite entries before training")
        elif isinstance(data, (torch.Tensor, np.ndarray)):
            raise TypeError(f"fit: {what} is a bare {type(data).__name__}; kizuna needs variable names: "
                            f"pass a dict such as {{'x': {what}}}")
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
            self.loader = data
            first = _peek(data)
            if first is not None:
                self._check_item(first, "its first item")
        else:
            raise TypeError(f"fit: {what} must be a dict of tensors or a DataLoader of dicts, "
                            f"got {type(data).__name__}")

    def _check_names(self, keys: Mapping[str, Any]) -> None:
        missing = [v for v in self.needed if v not in keys]
        if missing:
            given = ", ".join(sorted(keys)) or "nothing"
            raise ValueError(f"fit: the loss needs {', '.join(missing)} in {self.what}, but it has {given}")

    def _check_item(self, item: Any, where: str) -> None:
        if not isinstance(item, Mapping):
            raise TypeError(
                f"fit: {self.what} yields {type(item).__name__} ({where}); kizuna needs variable names: make the "
                "dataset return dicts such as {'x': x, 'y': y} (a TensorDataset returns tuples), or pass the "
                "dict of tensors {'x': x, 'y': y} to fit directly")
        self._check_names(item)

    def iterate(self, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device,
                shard: tuple[int, int] = (0, 1)) -> Iterable[Batch]:
        """Yield the `Batch` es; dict data is permuted with ``generator`` when one is given.

        With ``shard=(rank, world)`` dict data is cut into global batches of ``batch_size * world``
        rows and this rank gets rows ``rank, rank + world, ...`` of each (``DistributedSampler``'s
        interleaving, without its padding; a rank with no rows of the last global batch gets a stand-in
        row with ``n = 0``, so that every rank takes the same steps). With ``drop_last`` a last global batch of fewer
        than ``batch_size * world`` rows is left out.
        A loader is expected to shard itself (a ``DistributedSampler``).
        """
        if self.tensors is None:
            assert self.loader is not None
            for i, item in enumerate(self.loader, 1):
                self._check_item(item, f"batch {i}")
                values = prepare(item, dtype, device, f"{self.what} batch {i}")
                n = _rows_of(values, self.time_major)
                yield Batch(n, values, None, n)
            return
        n = next(v.shape[0] for v in self.tensors.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        rank, world = shard
        for start in range(0, n, self.batch_size * world):
            stop = min(start + self.batch_size * world, n)
            if self.drop_last and stop - start < self.batch_size * world:
                return
            rows = order[start + rank:stop:world] if world > 1 else order[start:stop]
            n_rows = len(rows)
            if n_rows == 0:  # no row of the last global batch: a stand-in row, weighted zero (see fit)
                rows = order[start:start + 1]
            values = {k: _rows(v, rows) for k, v in self.tensors.items()}
            yield Batch(n_rows, prepare(values, dtype, device, self.what), rows, stop - start)


def _rows_of(values: Mapping[str, Any], time_major: Sequence[str]) -> int:
    """The rows (sequences) of a loader batch: dimension 1 of its first time-major variable (``T x N x ...``), else
    the largest leading dimension (`batch_size_of`); at least 1."""
    for name in time_major:
        value = values.get(name)
        if isinstance(value, torch.Tensor) and value.dim() > 1:
            return value.shape[1]
    return batch_size_of(values) or 1


def _numbers_in_lists(value: Any) -> bool:
    """Whether ``value`` is a (nested) list or tuple of numbers, read down its first items: data a network needs as a
    tensor (a list of rows reached it whole: "linear(): argument 'input' must be Tensor, not list"). Lists of strings
    (tokens) and of tensors stay as given."""
    if type(value) not in (list, tuple) or not value:
        return False
    return isinstance(_first_item(value), numbers.Number)


def _first_item(value: list[Any] | tuple[Any, ...]) -> Any:
    """The first item of a nested list that is not itself a list (empty lists skipped: ``[[], [1]]`` is numbers);
    None where there is none."""
    for item in value:
        if type(item) not in (list, tuple):
            return item
        found = _first_item(item)
        if found is not None:
            return found
    return None


def _check_tensors(data: Mapping[str, Any], what: str) -> dict[str, Any]:
    for k, v in data.items():  # (torch's own error named neither the variable nor the cause)
        if isinstance(v, np.ndarray) and v.dtype == object:
            raise TypeError(f"fit: {what}['{k}'] is a numpy array of Python objects; give numbers (per-row objects "
                            "such as strings go in a list, one item per row)")
        if _numbers_in_lists(v):
            raise TypeError(f"fit: {what}['{k}'] is a {type(v).__name__} of numbers; give a tensor or a numpy "
                            "array (e.g. torch.tensor(...))")
    out = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in data.items()}
    sizes = {k: v.shape[0] for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if not sizes:
        given = ", ".join(map(str, out)) or "nothing"
        raise ValueError(f"fit: {what} has no tensor with a batch dimension (given: {given})")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: {n}" for k, n in sizes.items())
        raise ValueError(f"fit: the variables of {what} must share their first (batch) dimension, got {listed}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError(f"fit: {what} has no rows")
    for k, v in out.items():  # a per-row list (strings a network tokenises) was passed whole and in its own order
        # to every batch while the tensors were shuffled and cut: rows silently paired with other rows' items
        if isinstance(v, (list, tuple)) and len(v) != n:
            tensors = ", ".join(sizes)
            raise ValueError(
                f"fit: {what}['{k}'] is a {type(v).__name__} of {len(v)} items, but the tensors of {what} ({tensors}) "
                f"have {n} rows; fit cuts and shuffles a list or tuple with the rows, one item per row: give {n} "
                "items (a value the same for every batch goes in as a number or a 0-d tensor, or into the network "
                "itself)")
    return out


def _rows(value: Any, rows: torch.Tensor) -> Any:
    """The ``rows`` of a variable: of a tensor's first dimension, of a list's or tuple's items (one per row, checked
    by `_check_tensors`); numbers and 0-d tensors as they are."""
    if isinstance(value, (list, tuple)):
        picked = [value[i] for i in rows.tolist()]
        return tuple(picked) if isinstance(value, tuple) else picked
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    return value[rows.to(value.device)]


def _peek(data: Iterable[Any]) -> Any:
    """The first item of ``data`` without iterating it (iterating would consume RNG draws)."""
    from torch.utils.data import DataLoader, IterableDataset, default_collate, default_convert

    if isinstance(data, DataLoader):
        dataset = data.dataset
        if data.collate_fn not in (default_collate, default_convert) or isinstance(dataset, IterableDataset):
            return None  # a custom collate may build the dicts itself: checked on the first batch
        try:
            if len(dataset) == 0:  # type: ignore[arg-type]
                return None
            # a dataset may draw random numbers (augmentation): the item is read without moving torch's, Python's
            # or numpy's global stream (fit promises to leave them as they were; the peek drew once, before fit's
            # own stream was entered)
            py_state, np_state = random.getstate(), np.random.get_state()
            try:
                with torch.random.fork_rng(devices=[]):
                    return dataset[0]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        except (TypeError, IndexError, KeyError, NotImplementedError):
            return None
    if isinstance(data, Sequence) and len(data) > 0:
        return data[0]
    return None


