r"""Importance-weighted estimates of :math:`\log p(x)` in bounded memory, and bits per dimension.

.. math:: \log p(x) \approx \log \frac1k \sum_{i=1}^k \frac{p(x, z_i)}{q(z_i|x)},\quad z_i \sim q(z|x)

The ``k`` samples are drawn in chunks of ``k_chunk`` and the data in batches of
``batch_size`` (or as a DataLoader batches it); chunks are combined exactly with
``logsumexp`` (Burda et al. 2015, arXiv:1509.00519), so memory grows with
``batch_size * k_chunk``, not with ``k``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from kizuna._data import check_int, first_nonfinite, one_number
from kizuna.distributions.base import Distribution, data_dtype_references, model_device, widest_dtype
from kizuna.distributions.torch_dist import validation
from kizuna.losses.elbo import IWAE
from kizuna.models.batches import prepare


def log_likelihood(
    p_joint: Distribution,
    q: Distribution,
    x_dict: Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]],
    k: int = 5000,
    batch_size: int = 100,
    k_chunk: int = 500,
    validate: bool | None = None,
) -> torch.Tensor:
    """Per-row estimates of :math:`\\log p(x)` (nats), shape ``(N,)``, without gradients.

    Args:
        p_joint: the joint :math:`p(x, z)`.
        q: the proposal :math:`q(z|x)` (reparameterisable).
        x_dict: a dict of tensors (rows along the first dimension), or a DataLoader (any
            iterable) of such dicts; batches are moved to the device of the distributions.
        k: importance samples per row.
        batch_size: rows per evaluation for dict data.
        k_chunk: samples per evaluation.
        validate: check parameters and values (torch's ``validate_args``) in every evaluation
            (``True``), in none (``False``), or, by default, once per batch: one draw per row of
            each batch is evaluated with checks (on a fork of the random stream, so the estimate is
            the same with and without it; a value outside the support, such as a count of 2.5 under
            a Poisson decoder, is refused in whichever batch it is: checked in the first batch only,
            it got a finite estimate past it), and the estimate runs unchecked, through the
            families' closed-form kernels, which score large batches in bounded blocks (checked
            throughout, an estimate with k = 5,000 took 1.3x the time and 1.7x the memory of a
            hand-written one).

    The networks of ``p_joint`` and ``q`` are evaluated in eval mode (dropout off, batch norm on its running
    statistics, which scoring leaves unchanged), as `Model.test` evaluates them, and each module is returned to its
    own mode afterwards.

    The estimate is a lower bound in expectation that tightens as ``k`` grows; see
    `bits_per_dim` to report it per dimension.
    """
    for name, value in (("k", k), ("batch_size", batch_size), ("k_chunk", k_chunk)):
        check_int(f"log_likelihood: {name}", value, 1)  # any integer: Python, numpy, a 0-d integer tensor
    k, batch_size, k_chunk = (int(one_number(v, arrays=False)) for v in (k, batch_size, k_chunk))
    names = IWAE(p_joint, q, k=1).input_var
    require_prior(p_joint, q, "log_likelihood", "the estimate would not be log p(x)")
    chunks = [min(k_chunk, k - start) for start in range(0, k, k_chunk)]
    device = model_device((p_joint, q), fallback=None)
    dtype = _dtype(names, p_joint, q)  # the data's: that of the distributions that read them
    out = []
    probe = validate is None  # check each batch once, on one draw per row, then run unchecked
    from kizuna.modules.vae import evaluating  # (kizuna.modules imports kizuna.metrics)

    with torch.no_grad(), evaluating(p_joint, q):
        for rows, batch in _batches(x_dict, names, batch_size, dtype, device or torch.device("cpu")):
            if device is not None:
                batch = {v: t.to(device) if isinstance(t, torch.Tensor) else t for v, t in batch.items()}
            bad = first_nonfinite(batch, "log_likelihood: the data", rows)
            if bad is not None:
                raise ValueError(f"{bad}; a log-likelihood of non-finite data is not defined")
            if probe:  # every batch: the support is a property of each row (a row past the first was not checked)
                _check(p_joint, q, batch, device)
            with validation(bool(validate)):
                parts = [IWAE(p_joint, q, k=c).eval(batch) + math.log(c) for c in chunks]
            out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
    if not out:
        raise ValueError("log_likelihood: the data has no rows")
    return torch.cat(out)


def require_prior(p_joint: Distribution, q: Distribution, who: str, consequence: str) -> None:
    """A ValueError where ``p_joint`` is conditioned on a latent that ``q`` draws: the latent's prior :math:`p(z)` is
    missing from it (``p`` passed for ``p * prior``), so the weights :math:`p(x, z) / q(z|x)` of `log_likelihood`,
    `kizuna.inference.anomaly_score` and `kizuna.inference.impute_importance` would leave it out; ``consequence``
    says what would be wrong, in ``who``'s words."""
    drawn = [v for v in p_joint.cond_var if v in q.var]
    if drawn:
        latents = ", ".join(drawn)
        raise ValueError(
            f"{who}: p_joint is {p_joint.prob_text}, conditioned on {latents}, which q {q.prob_text} draws: the prior "
            f"of {latents} is missing, so {consequence}; pass the joint, e.g. p_x_given_z * prior")


def _check(p_joint: Distribution, q: Distribution, batch: Mapping[str, Any], device: torch.device | None) -> None:
    """One checked evaluation of one draw per row (wrong shapes, supports and parameters raise here,
    naming them), on a fork of the random stream so the estimate's draws are unchanged."""
    accelerator = device is not None and device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else "cuda"), validation(True):
        IWAE(p_joint, q, k=1).eval(batch)


def bits_per_dim(log_lik_nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """Negative log-likelihood in bits per dimension.

    .. math:: \\mathrm{bpd} = -\\frac{\\log p(x)}{D \\ln 2}

    For 8-bit images modelled as a density on :math:`[0, 1]^D` (pixels divided by 256 and
    dequantised with uniform noise), the discrete likelihood is
    :math:`\\log p(x) - D\\ln 256`, i.e. add 8 bits per dimension to this value. With pixels divided by 255 (kizuna's
    loaders), the bins have width 1/255 and the offset is :math:`\\log_2 255 \\approx 7.994` bits per dimension
    (`kizuna.flows.Preprocess` computes that bin volume itself).

    >>> round(bits_per_dim(-784 * math.log(2), 784), 6)
    1.0
    """
    return -log_lik_nats / (dims_count("bits_per_dim", dims) * math.log(2))


def dims_count(who: str, dims: Any) -> int:
    """``dims`` as a positive number of dimensions (an integer: Python, numpy, an integer tensor of one element); a
    ValueError naming ``who`` otherwise (a bool or 2.5 is no count of dimensions)."""
    if isinstance(dims, bool) or not isinstance(dims, numbers.Integral | torch.Tensor) or (isinstance(
            dims, torch.Tensor) and (dims.numel() != 1 or dims.is_floating_point() or dims.dtype == torch.bool)):
        raise ValueError(f"{who} needs a positive integer number of dimensions, got {dims!r}")
    if int(dims) < 1:
        raise ValueError(f"{who} needs a positive number of dimensions, got {int(dims)}")
    return int(dims)


def _dtype(data: Iterable[str], *dists: Any) -> torch.dtype | None:
    """The floating dtype that floating data of the variables ``data`` are converted to for the models ``dists`` (and a
    plain network given alone, such as `coherence`'s classifier): `Model.dtype`'s rule
    (`kizuna.distributions.base.data_dtype_references`), the widest dtype of the distributions that read them, those
    that take them as a network input (the encoder :math:`q(z|x)`) first, else those that score them (the decoder
    :math:`p(x|z)`, not a prior :math:`p(z)`), else the whole models; of their floating parameters, else of their
    floating buffers; ``None`` without any: the data keep their floating dtype (float64 data were rounded to the
    default float32 for a model of no tensors). Every parameter counts, frozen or not (`Model.dtype` takes the
    trainable ones first, the dtype it trains in): the uses evaluate a model whose parameters are all fixed, whether
    it was frozen for it or not, and round no data below the precision of a part that reads them.

    Conditions first, so a bfloat16 encoder beside a float32 decoder gets bfloat16 data (the widest of both fed the
    encoder float32 data, which it refused); the decoder then scores the data rounded to bfloat16, also where the
    encoder casts its own input (which before this rule got float32 data: a log-likelihood 0.02 nats apart in one
    such model); keep the encoder in float32 to score float32 data. Only the readers, so bf16 networks beside a
    learned prior mean kept in float32 get bf16 data, as `Model.fit` trains them. Parameters before buffers, so a
    float32 network beside float64 constants (a parameter-free decoder built from numpy values) gets float32 data.
    The widest, not the first, so the choice does not depend on the order of the factors (the first buffer made
    ``prior32 * decoder64`` of parameter-free factors float32, ``decoder64 * prior32`` float64) and float64 experts of
    a `ProductOfNormal` are not fed float32 data because of the product's own default-dtype prior buffers."""
    return widest_dtype(data_dtype_references(data, dists, trainable_first=False))


def _batches(data: Any, names: list[str], batch_size: int, dtype: torch.dtype | None, device: torch.device
             ) -> Iterator[tuple[torch.Tensor | None, dict[str, Any]]]:
    """Batches of ``data`` with ``names`` checked, each with the data rows it holds (for dict data); a dict
    is cut along its first dimension. Numpy arrays and lists become tensors, floating ones in the models' ``dtype``,
    as `fit` takes them (a dict of numpy arrays was said to have no rows)."""
    if isinstance(data, Mapping):
        _check_names(data, names, "")
        data = prepare({v: np.asarray(t) if isinstance(t, list) else t for v, t in data.items()}, dtype, device,
                       "log_likelihood: x_dict")
        sizes = {v: t.shape[0] for v, t in data.items() if isinstance(t, torch.Tensor) and t.dim() > 0}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{v}: {n}" for v, n in sizes.items())
            raise ValueError(f"log_likelihood: the variables must share their first (batch) dimension, got {listed}")
        n = next(iter(sizes.values()), 0)
        for start in range(0, n, batch_size):
            rows = torch.arange(start, min(start + batch_size, n))
            yield rows, {v: t[start:start + batch_size] if v in sizes else t for v, t in data.items()}
        return
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes, torch.Tensor)):
        raise TypeError(f"log_likelihood needs a dict of tensors or a DataLoader of dicts, got {type(data).__name__}")
    for i, batch in enumerate(data, 1):
        if not isinstance(batch, Mapping):
            raise TypeError(f"log_likelihood: batch {i} is a {type(batch).__name__}; kizuna needs variable names: "
                            "make the dataset return dicts such as {'x': x}")
        _check_names(batch, names, f" (batch {i})")
        yield None, prepare({v: np.asarray(t) if isinstance(t, list) else t for v, t in batch.items()}, dtype, device,
                            f"log_likelihood: batch {i}")


def _check_names(batch: Mapping[str, Any], names: list[str], where: str) -> None:
    missing = [v for v in names if v not in batch]
    if missing:
        raise ValueError(f"log_likelihood needs {', '.join(missing)} in the data{where}, given {sorted(batch)}")
