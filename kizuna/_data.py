"""Checks of data shared by the trainer, the likelihood estimates and the modules: bad values are
reported as data (the variable, row and column), not as a complaint about a distribution."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def _floating(value: Any) -> torch.Tensor | np.ndarray | None:
    """``value`` as a non-empty floating tensor or numpy array to check, or None (nothing to check): a tensor or a
    numpy array as it is (no copy), a list or tuple (nested) of numbers as a numpy array; integers, booleans and
    anything else are None."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() and value.numel() else None
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value)
        except (ValueError, TypeError, RuntimeError):  # ragged, or holding what numpy cannot read (a CUDA tensor)
            return None
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size:
        return value
    return None


def first_nonfinite(x_dict: Mapping[str, Any], what: str, rows: torch.Tensor | None = None) -> str | None:
    """A sentence naming the first non-finite entry of ``x_dict`` (variable, row, column), or None.

    Floating tensors, numpy arrays and (nested) lists of numbers are checked; a numpy array is read in place and
    copied only to name a non-finite entry. ``rows``: the data rows of the batch (its row ``i`` is row ``rows[i]``
    of the data).
    """
    for key, value in x_dict.items():
        checked = _floating(value)
        if isinstance(checked, torch.Tensor):
            if not bool(torch.isfinite(checked).all()):
                return f"{what}['{key}'] holds {first_flagged(checked, ~torch.isfinite(checked), rows)}"
        elif checked is not None:
            finite = np.asarray(np.isfinite(checked))  # an array, for a 0-d one too
            if not bool(finite.all()):  # named from a float64 copy: torch reads no longdouble, nor another byte order
                tensor = torch.from_numpy(np.array(checked, dtype=np.float64))
                return f"{what}['{key}'] holds {first_flagged(tensor, ~torch.from_numpy(finite), rows)}"
    return None


def first_flagged(value: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor | None = None) -> str:
    """The first entry of ``value`` where ``mask`` holds (row-major) and where it is: ``"nan at row 3, column 1"``
    (``rows``: the data rows of ``value``'s rows, to name the row of the data); a 0-d tensor's one value as such."""
    bad = mask.nonzero()[0].tolist()
    entry = value[tuple(bad)].item()
    if not bad:  # a 0-d tensor: one value, no row
        return f"{entry} (a 0-d tensor, its only value)"
    row = bad[0] if rows is None else int(rows[bad[0]])
    return f"{entry} at row {row}" + (f", column {', '.join(map(str, bad[1:]))}" if len(bad) > 1 else "")


def one_number(value: Any, arrays: bool = True) -> Any:
    """A 0-d tensor or numpy array as its number (for the checks below, which take them as torch and numpy code do;
    a shape (1,) one is refused as before: its callers could not use it; ``arrays=False``: not a numpy array, for counts
    that torch functions take, as they take a 0-d tensor but not an array); anything else as it is."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_meta:
        return value.item()
    if arrays and isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def computing_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the classical modules (HMM, MM, LDA) and the metrics compute in for floating data of ``dtype``:
    ``dtype`` itself, float16 and bfloat16 (any float narrower than 32 bits) lifted to float32 (numpy has no
    bfloat16). In half precision a sum of per-step log-terms stops growing (a MarkovChain on float16 evidence scored
    -1806 where the float64 forward algorithm gives -6219), an HMM's EM failed with non-finite counts, and LDA's count
    tables stop counting by ones at 2048 (float16) / 256 (bfloat16)."""
    return torch.float32 if dtype.is_floating_point and torch.finfo(dtype).bits < 32 else dtype


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside kizuna (the user's line), however deep the library's own
    calls are (a fixed ``stacklevel`` pointed into kizuna or past the program for subclasses of other depths)."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__))
    level, frame = 2, sys._getframe(1)  # stacklevel 1 is this function, 2 its caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def sigma_min_value(owner: str, value: Any) -> float:
    """A flow path's ``sigma_min`` (the noise left at ``t = 1``) as a float in [0, 1): a number, or a 0-d tensor or
    array; else a ValueError naming ``owner`` (the string "0.1" raised a raw TypeError; 2.0 or NaN built a path that
    never reaches the data)."""
    number = one_number(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real) or not 0 <= number < 1:
        raise ValueError(f"{owner}: sigma_min (the noise left at t = 1) must be a number in [0, 1), got {value!r}")
    return float(number)


def check_count(name: str, value: Any, minimum: int, arrays: bool = False) -> None:
    """``value`` is None or an integer (a Python or numpy one, or a 0-d integer tensor; not a bool, not a float) of at
    least ``minimum``; a ValueError naming the argument and the value otherwise (``name``: e.g.
    ``"MADE: in_features"``). ``arrays``: a 0-d integer numpy array too (`one_number`), for a size that the caller
    turns into an ``int`` (``np.load(...)["dim"]`` or an h5py scalar, which torch.Size and nn.Linear take)."""
    if value is None:
        return
    value = one_number(value, arrays=arrays)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_int(name: str, value: Any, minimum: int, arrays: bool = False) -> None:
    """As `check_count`, for an argument that must be given: None is refused too."""
    if value is None:
        raise ValueError(f"{name} must be an integer >= {minimum}, got None")
    check_count(name, value, minimum, arrays)


def check_non_negative(name: str, value: Any) -> None:
    """``value`` is a finite real number >= 0 (not a bool; NaN passes a test of ``< 0``); a ValueError naming the
    argument otherwise."""
    value = one_number(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    """``value`` is a finite real number > 0 (not a bool; a 0-d tensor or array is taken as its number); a
    ValueError naming the argument otherwise."""
    value = one_number(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def noise_levels(name: str, sigmas: Any) -> list[float]:
    """A score model's noise levels :math:`\\sigma_1 > \\dots > \\sigma_L > 0` as Python floats (a float32 tensor of
    them rounded 0.1 to 0.10000000149, which then was no level); a ValueError naming ``name`` unless they are
    positive, finite and strictly decreasing (NaN passed the order test, and an infinite level made every draw NaN)."""
    levels = [float(s) for s in (sigmas.flatten() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if not levels or any(a <= b for a, b in zip(levels, levels[1:])) or levels[-1] <= 0 \
            or not all(map(math.isfinite, levels)):
        raise ValueError(f"{name}: sigmas must be positive, finite and strictly decreasing, got {levels}")
    return levels


def as_sequence(name: str, value: Any, what: str, error: type[Exception] = TypeError) -> tuple[Any, ...]:
    """``value`` (a list, tuple or other iterable; not a string) as a tuple; else ``error`` naming ``name``, the value
    and what to pass (``what``, e.g. ``"a list of modules, e.g. Graph([gmm])"``): a bare number or one object where a
    sequence is due raised a raw "'int' object is not iterable" (or "'GMM' object ..."), and a string was taken
    letter by letter ("64" built layers of 6 and 4 units)."""
    if not isinstance(value, (str, bytes)):
        try:
            return tuple(value)
        except TypeError:  # (not iterable: a number, a 0-d tensor, one module or flow)
            pass
    text = repr(value)
    if "\n" in text or len(text) > 80:  # (a module's repr lists its layers)
        text = f"<one {type(value).__name__}>"
    raise error(f"{name} must be {what}, got {text} ({type(value).__name__})")


def check_sizes(name: str, sizes: Any, what: str, minimum: int = 1) -> tuple[int, ...]:
    """``sizes`` (a sequence of integers >= ``minimum``: a shape, layer widths) as a tuple of Python ints; a ValueError
    naming ``name`` otherwise: one that is not a sequence (`as_sequence`; ``what`` says what to pass) or a size that
    is not such an integer (``name[i]``: -2 built a shape whose draws failed with a raw integer overflow). A size may
    be a Python or numpy integer or a 0-d integer tensor or numpy array (`check_count` with ``arrays``)."""
    sizes = as_sequence(name, sizes, what, ValueError)
    for i, size in enumerate(sizes):
        check_int(f"{name}[{i}]", size, minimum, arrays=True)
    return tuple(int(one_number(size)) for size in sizes)


def check_shape(name: str, shape: Any, minimum: int = 1) -> tuple[int, ...]:
    """A features shape as a tuple of integers >= ``minimum`` (1: what a sampler can draw; a distribution's also
    takes 0, torch's empty dimension); a ValueError naming ``name`` otherwise (a bare number too: ``tuple()`` of 2
    raised a raw TypeError)."""
    return check_sizes(name, shape, "a sequence of sizes (the shape of one draw, e.g. [2] or (2,) for vectors of 2; "
                                    "[] for scalars)", minimum)


def check_context(layer: str, y: torch.Tensor | None, context_features: int, rows: int,
                  broadcast: bool = False) -> None:
    """A clear error for a missing, unexpected or wrongly sized context ``y`` of a conditional layer (its features
    flattened: ``(rows, context_features)``); ``broadcast`` also accepts one row for all ``rows`` rows of ``x``."""
    if not context_features:
        if y is not None:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"{layer}: built without a context (context_features=0) but given one of shape {shape}; "
                             "build it with context_features=... to condition it")
        return
    if y is None:
        raise ValueError(f"{layer}: built with context_features={context_features} but no context was given")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{layer}: the context must be a torch.Tensor, got {type(y).__name__}")
    batches = (1, rows) if broadcast else (rows,)
    if y.dim() == 0 or y.shape[0] not in batches or y.shape[1:].numel() != context_features:
        ones = ", or 1" if broadcast and rows != 1 else ""
        raise ValueError(f"{layer}: the context must be (batch, {context_features}) with the batch of x "
                         f"({rows}{ones}), features flattened; got shape {tuple(y.shape)}")


def pop_pixyz_constant(state_dict: dict, key: str, expected: float, error_msgs: list[str], what: str, here: str,
                       remedy: str) -> None:
    """For a ``_load_from_state_dict`` hook: a Pixyz checkpoint's one-float buffer ``key`` (Pixyz keeps as a buffer a
    constant that kizuna keeps as a number, e.g. ``Preprocess``'s alpha, a relaxed family's default temperature) is
    popped from ``state_dict`` and checked to equal ``expected``, compared in the entry's precision or float32's where
    that is finer (Pixyz saves float32: ``0.05`` saved in float32 and moved to float64 is still 0.05). Any other
    value or shape is appended to ``error_msgs`` (an error strict or not: loading it would give another model),
    naming ``what`` the entry is (``"Pixyz Preprocess constraint (alpha)"``), ``here`` (``"this layer's alpha"``) and
    ``remedy``, formatted with the value (``remedy.format(value)``). Nothing is done without the key."""
    if key not in state_dict:
        return
    value = state_dict.pop(key)
    if not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()):
        shown = f"a tensor of shape {tuple(value.shape)} ({value.dtype})" if isinstance(value, torch.Tensor) \
            else repr(value)
        error_msgs.append(f"{key}: the {what} is one float (tensor([{expected}])), got {shown}")
        return
    dtype = value.dtype if torch.finfo(value.dtype).eps > torch.finfo(torch.float32).eps else torch.float32
    if not bool(value.reshape(()).to(dtype) == torch.tensor(expected, dtype=dtype)):
        error_msgs.append(f"{key}: the state's {what} is {value.item():.8g}, {here} is {expected!r}: "
                          + remedy.format(f"{value.item():.8g}"))
