"""Checking data where it enters the module layer: arrays become tensors, bad values are named.

Data given to an `Observation` or to a scikit-learn method is converted as scikit-learn converts it:
numpy arrays, lists and tensors of floating, integer or boolean numbers become floating tensors;
anything else (strings, complex numbers, objects that are not numbers) is refused with a message
naming the expected dtype. NaN and inf are refused with the first bad row and column; messages show
shapes and single values, never a whole array.

>>> as_matrix([[1, 2], [3, 4]], "X", "GMM gmm").dtype
torch.float64
>>> as_matrix([[1.0, float("nan")]], "X", "GMM gmm")
Traceback (most recent call last):
...
ValueError: GMM gmm: X contains NaN at row 0, column 1 (values must be finite: no NaN or inf)
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np
import scipy.sparse
import torch

Tensor = torch.Tensor


class NotFittedError(RuntimeError, ValueError, AttributeError):
    """A method that needs a fitted model was called before ``fit`` (or ``update``).

    A `RuntimeError`, and a `ValueError` / `AttributeError` as scikit-learn's ``NotFittedError``. Raise it
    with `not_fitted`: when scikit-learn is loaded the error is also an instance of scikit-learn's class
    (kizuna does not import scikit-learn, an optional dependency, only to define an exception).
    """


@functools.cache
def _with_sklearn(base: type) -> type:
    return type("NotFittedError", (NotFittedError, base), {"__module__": __name__})


def not_fitted(message: str) -> NotFittedError:
    """A `NotFittedError` (also scikit-learn's ``NotFittedError`` when scikit-learn is loaded)."""
    sklearn_exceptions = sys.modules.get("sklearn.exceptions")
    if sklearn_exceptions is None:
        return NotFittedError(message)
    return _with_sklearn(sklearn_exceptions.NotFittedError)(message)


def first_nonfinite(t: Tensor) -> tuple[tuple[int, ...], float] | None:
    """The index and value of the first NaN / inf of ``t`` in storage order, or ``None``."""
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    index = tuple(int(i) for i in bad.nonzero()[0])
    return index, float(t[index])


def check_finite(t: Tensor, what: str, owner: str) -> None:
    """Raise a `ValueError` naming ``owner``, ``what`` and the first bad row and column."""
    found = first_nonfinite(t)
    if found is None:
        return
    index, value = found
    if len(index) == 0:
        where = "as its only value (a 0-d tensor)"
    elif len(index) == 1:
        where = f"at row {index[0]}"
    elif len(index) == 2:
        where = f"at row {index[0]}, column {index[1]}"
    else:
        where = f"at index {list(index)}"
    kind = "NaN" if value != value else ("inf" if value > 0 else "-inf")
    raise ValueError(f"{owner}: {what} contains {kind} {where} (values must be finite: no NaN or inf)")


def as_tensor(data: Any, what: str, owner: str) -> Tensor:
    """``data`` as a tensor of numbers; a `TypeError` / `ValueError` naming the expected dtype otherwise."""
    if isinstance(data, Tensor):
        t = data.detach()
        if t.is_complex():
            raise ValueError(f"{owner}: Complex data not supported; {what} must be real (float or int), got {t.dtype}")
        return t
    if scipy.sparse.issparse(data):
        raise TypeError(f"{owner}: sparse data was passed for {what}, but dense data is required (sparse input is "
                        "not supported); use X.toarray() to convert it to a dense numpy array")
    try:
        a = data if isinstance(data, np.ndarray) else np.asarray(data)
    except ValueError as err:  # numpy's "inhomogeneous shape": rows of different lengths
        if "inhomogeneous" not in str(err):
            raise
        lengths = sorted({len(row) for row in data if hasattr(row, "__len__") and getattr(row, "ndim", 1) > 0})
        which = (f"the rows of {what} have different lengths ({', '.join(map(str, lengths))})" if len(lengths) > 1
                 else f"the nested lists of {what} are not rectangular (inner lists of different lengths)")
        raise ValueError(f"{owner}: {which}; give a rectangular array (every row of one length)") from None
    if a.dtype.kind == "c":
        raise ValueError(f"{owner}: Complex data not supported; {what} must be real (float or int), got {a.dtype}")
    if a.dtype.kind not in "biuf":
        try:
            a = np.asarray(a, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{owner}: {what} must hold numbers (float or int), got dtype {a.dtype}: {err}") from None
    return torch.from_numpy(np.array(a, copy=True))  # a copy: read-only and memory-mapped arrays are fine


def as_matrix(data: Any, what: str, owner: str, dtype: torch.dtype | None = torch.float64,
              min_samples: int = 1) -> Tensor:
    """An ``N×D`` finite floating tensor (``dtype``; ``None`` keeps a floating input's dtype, else the default).

    Raises:
        ValueError: not 2-D, fewer than ``min_samples`` rows, no columns, NaN or inf (first bad row and column).
        TypeError: values that are not numbers.
    """
    t = as_tensor(data, what, owner)
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.dim() != 2:
        raise ValueError(f"{owner}: {what} must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}. Reshape "
                         "your data with x.reshape(-1, 1) for one feature or x.reshape(1, -1) for one sample")
    if t.shape[0] < min_samples:
        raise ValueError(f"{owner}: {what} has {t.shape[0]} sample(s) (shape={tuple(t.shape)}) while a minimum of "
                         f"{min_samples} is required.")
    if t.shape[1] == 0:
        raise ValueError(f"{owner}: {what} has 0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 is "
                         "required.")
    check_finite(t, what, owner)
    return t


def check_n_features(x: Tensor, expected: int, owner: str) -> None:
    """scikit-learn's message when ``x`` has a different number of features than the fitted model."""
    if x.shape[1] != expected:
        raise ValueError(f"X has {x.shape[1]} features, but {owner} is expecting {expected} features as input.")
