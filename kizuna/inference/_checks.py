"""Input checks shared by the inference helpers: variables present, data as tensors, one batch size, masks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from kizuna.distributions.base import model_device
from kizuna.metrics.likelihood import _dtype as model_dtype  # (the rule of log_likelihood's data)

Tensor = torch.Tensor


def require(x_dict: Mapping[str, Any], names: Iterable[str], who: str) -> None:
    """An error naming the variables of ``names`` missing from ``x_dict``."""
    missing = [n for n in names if n not in x_dict]
    if missing:
        given = ", ".join(sorted(x_dict)) or "nothing"
        raise ValueError(f"{who} needs {', '.join(missing)} in x_dict, but was given {given}")


def in_model_dtype(x_dict: Mapping[str, Any], *dists: Any) -> dict[str, Any]:
    """Floating data in the floating dtype of the distributions that read them (`model_dtype`: of the factors whose
    ``var`` or ``cond_var`` holds a variable of ``x_dict``, not of a prior that never sees the data: each encoder by
    its network's first parameter, else each decoder by its widest, `data_dtype_references`; float32 data for a
    float64 model)."""
    dtype = model_dtype(x_dict, *dists)
    if dtype is None:
        return dict(x_dict)
    return {v: t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t for v, t in x_dict.items()}


def on_models(x_dict: Mapping[str, Any], *dists: Any) -> dict[str, Any]:
    """`in_model_dtype`, with the tensors moved to the models' device (where they have one)."""
    device = model_device(dists, fallback=None)
    return {k: v.to(device) if isinstance(v, Tensor) and device is not None else v
            for k, v in in_model_dtype(x_dict, *dists).items()}


def own_draws(p: Any, x_dict: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    """``p.sample(x_dict, return_all=False, **options)`` restricted to ``p``'s own variables: a flow distribution's
    ``sample`` also returns the prior's draw it mapped (Pixyz's ``return_hidden``), which is not one of them."""
    return {n: t for n, t in p.sample(x_dict, return_all=False, **options).items() if n in p.var}


def _numbers(value: Any) -> Tensor | None:
    """``value`` as a tensor (numpy's dtype) where it is a numpy array or a (nested) list of numbers (booleans,
    integers, floats); None otherwise (a ragged list, strings, objects, complex numbers, anything else)."""
    if isinstance(value, list):
        if _holds_tensors(value):  # a list of rows as tensors: stacked (numpy failed on those that require grad, and
            try:  # read bf16 / meta / CUDA ones as ragged); rows of different shapes are refused by name
                return torch.stack(value) if all(isinstance(v, Tensor) for v in value) else None
            except RuntimeError:
                return None
        try:
            value = np.asarray(value)
        except (ValueError, TypeError):  # ragged: numpy's "inhomogeneous shape"
            return None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        return None
    if not (value.flags.c_contiguous and value.flags.writeable):  # (torch warns of read-only arrays)
        value = np.array(value, order="C")  # (not np.ascontiguousarray: it made a 0-d array shape (1,))
    return torch.from_numpy(value)


def _holds_tensors(value: list[Any]) -> bool:
    """Whether the (nested) list ``value`` holds a tensor (looked for along its first elements)."""
    while isinstance(value, (list, tuple)) and value:
        if any(isinstance(v, Tensor) for v in value):
            return True
        value = value[0]
    return False


def _given_as(value: Any) -> str:
    """What ``value`` is, for an error: its type, a numpy array's dtype, a list that is ragged or not of numbers."""
    if isinstance(value, np.ndarray):
        return f"a numpy array of dtype {value.dtype}"
    if isinstance(value, list):
        if _holds_tensors(value):
            return "a list of tensors that torch.stack cannot stack (rows of different shapes, or not all tensors)"
        try:
            kind = np.asarray(value).dtype
        except ValueError:
            return "a ragged list (rows of different lengths)"
        except TypeError:
            return "a list of objects"
        return f"a list of {'strings' if kind.kind in 'US' else 'objects' if kind.kind == 'O' else kind}"
    return type(value).__name__


def as_tensors(x_dict: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """``x_dict`` with the numpy arrays and (nested) lists of numbers among ``names`` as tensors (as `anomaly_score`
    and `log_likelihood` take them; `on_models` then sets their dtype and device); anything else stays as given, for
    `batch_rows` to refuse (a ragged list, strings). The one conversion of data for the uses' helpers (infer_latent,
    cross_generate and the imputations refused numpy arrays and lists: "x must be a torch.Tensor, got ndarray")."""
    out = dict(x_dict)
    for name in names:
        tensor = _numbers(x_dict.get(name))
        if tensor is not None:
            out[name] = tensor
    return out


def batch_rows(x_dict: Mapping[str, Any], names: Iterable[str], who: str) -> int:
    """The common number of rows of the tensors ``x_dict[name]``; an error naming any two that differ, or no rows."""
    rows: dict[str, int] = {}
    for name in names:
        value = x_dict[name]
        if not isinstance(value, Tensor):
            raise TypeError(f"{who}: {name} must be a torch.Tensor, a numpy array or a (nested) list of numbers, got "
                            f"{_given_as(value)}")
        if value.dim() == 0:
            raise ValueError(f"{who}: {name} must have a leading batch dimension, got a scalar")
        rows[name] = value.shape[0]
    if not rows:
        raise ValueError(f"{who}: no input variables to take the batch size from")
    if len(set(rows.values())) > 1:
        sizes = ", ".join(f"{k} has {v}" for k, v in rows.items())
        raise ValueError(f"{who}: the inputs disagree on the batch size ({sizes} rows)")
    n = next(iter(rows.values()))
    if n == 0:
        shapes = ", ".join(f"{k} has shape {tuple(x_dict[k].shape)}" for k in rows)
        raise ValueError(f"{who}: the data has no rows ({shapes})")
    return n


def check_mask(mask: Any, x: Tensor, var: str, who: str) -> Tensor:
    """``mask`` (a tensor, numpy array or nested list of booleans) as a boolean tensor on ``x``'s device, checked to
    have ``x``'s shape (True = observed)."""
    if isinstance(mask, (np.ndarray, list)):  # (refused: "the mask of x must be a boolean torch.Tensor, got ndarray")
        tensor = _numbers(mask)
        if tensor is not None and tensor.dtype != torch.bool:
            raise TypeError(
                f"{who}: the mask of {var} must hold booleans (True = observed), got {_given_as(mask)}; "
                "use a comparison such as np.asarray(mask) > 0"
            )
        mask = mask if tensor is None else tensor
    if not isinstance(mask, Tensor):
        raise TypeError(f"{who}: the mask of {var} must be a boolean torch.Tensor, numpy array or (nested) list, got "
                        f"{_given_as(mask)}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{who}: the mask of {var} must have dtype torch.bool (True = observed), got {mask.dtype}; "
            "use mask.bool() or a comparison such as mask > 0"
        )
    if mask.shape != x.shape:
        raise ValueError(
            f"{who}: the mask of {var} has shape {tuple(mask.shape)} but {var} has shape {tuple(x.shape)}"
        )
    mask = mask.to(x.device)
    if not bool(torch.isfinite(x[mask]).all()):
        raise ValueError(f"{who}: {var} has NaN or infinite values at observed entries (mask True)")
    return mask


def fill_missing(x: Tensor, mask: Tensor, init: Tensor | None, var: str, who: str) -> Tensor:
    """``x`` with its missing entries replaced by ``init``.

    The default ``init`` is the mean of each feature over the rows where it is observed
    (0 where no row observes it), i.e. mean imputation within the batch. A given ``init`` must be finite where
    ``x`` is missing (elsewhere it is not read).
    """
    given = init is not None
    if init is None:
        m = mask.to(x.dtype)
        counts = m.sum(0)
        total = torch.where(mask, x, torch.zeros_like(x)).sum(0)
        init = torch.where(counts > 0, total / counts.clamp_min(1), torch.zeros_like(total))
    elif not isinstance(init, Tensor):
        raise TypeError(f"{who}: init must be a torch.Tensor, got {type(init).__name__}")
    try:
        init = torch.broadcast_to(init.to(device=x.device, dtype=x.dtype), x.shape)
    except RuntimeError as err:
        raise ValueError(
            f"{who}: init of shape {tuple(init.shape)} does not broadcast to {var}'s shape {tuple(x.shape)}"
        ) from err
    bad = ~mask & ~torch.isfinite(init)
    if given and bool(bad.any()):  # (the encoder was blamed: "q(z|x): parameter loc of Q is not finite")
        first = [int(i) for i in bad.nonzero()[0]]
        where = f"row {first[0]}" + (f", feature {first[1] if len(first) == 2 else tuple(first[1:])}"
                                     if len(first) > 1 else "")
        raise ValueError(
            f"{who}: init has NaN or infinite values where {var} is missing ({int(bad.sum())} entries, first at "
            f"{where}); init fills the missing entries fed to the encoder and must be finite there"
        )
    return torch.where(mask, x, init)
