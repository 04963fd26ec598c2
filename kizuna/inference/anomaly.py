r"""Anomaly scores: the negative log-likelihood of each row under a trained latent-variable model.

A model :math:`p(x, z) = p(x|z)p(z)` with an encoder :math:`q(z|x)` scores a row by an
estimate of :math:`-\log p(x)`: rare rows, which the model finds improbable, score high.

* ``method="iwae"`` (default): the importance-weighted estimate with ``k`` samples,

  .. math:: s(x) = -\log \frac1k \sum_{i=1}^k \frac{p(x, z_i)}{q(z_i|x)}, \qquad z_i \sim q(z|x),

  whose expectation decreases to :math:`-\log p(x)` as ``k`` grows
  (Burda et al. 2015, arXiv:1509.00519);
* ``method="elbo"``: the negative evidence lower bound averaged over ``k`` draws,

  .. math:: s(x) = -\frac1k \sum_{i=1}^k \big[\log p(x, z_i) - \log q(z_i|x)\big]
      \;\approx\; -\log p(x) + D_{KL}\big[q(z|x)\,\|\,p(z|x)\big],

  which also counts how poorly the encoder fits the row (An & Cho 2015, "Variational
  autoencoder based anomaly detection using reconstruction probability", score by the
  :math:`\mathbb E_q[\log p(x|z)]` part alone).

Both are computed without gradients, ``batch_size`` rows and ``k_chunk`` draws at a time,
so memory is bounded by ``batch_size * k_chunk`` evaluations of the decoder whatever ``k``.
The networks run in eval mode (dropout off, batch norm on its running statistics, which scoring
leaves unchanged), so a row's score does not depend on the rows scored with it; each module is
returned to its own mode afterwards. The ELBO score takes any encoder it can sample and score,
discrete latents included; the IWAE score needs a reparameterisable one (see `log_likelihood`).
A ``p_joint`` conditioned on a latent that ``q`` draws (the decoder :math:`p(x|z)` without its prior
:math:`p(z)`) is refused by both methods, as `log_likelihood` refuses it: it has no :math:`p(x)`.
Floating data is converted to the floating dtype of the distributions that read it (not the prior: each
encoder that takes it as input by its network's first parameter, else each decoder by its widest parameter;
docs/uses.md) and each batch moved to the models' device; data with no rows,
or a NaN or infinite entry (named by variable, row and column), is refused by both methods, and so
is a row outside the model's support (a count of 2.5 under a Poisson decoder), in whichever batch
it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from kizuna._data import check_int, first_nonfinite, one_number
from kizuna.distributions.base import model_device
from kizuna.formula.expr import values_dict
from kizuna.inference._checks import as_tensors, batch_rows, in_model_dtype, require
from kizuna.losses import ELBO
from kizuna.metrics import log_likelihood
from kizuna.metrics.likelihood import dims_count, require_prior

Tensor = torch.Tensor
METHODS = ("iwae", "elbo")


def anomaly_score(
    p_joint: Any,
    q: Any,
    x_dict: Mapping[str, Tensor],
    method: str = "iwae",
    k: int = 100,
    batch_size: int = 100,
    k_chunk: int = 100,
) -> Tensor:
    r"""Per-row anomaly scores :math:`s(x) \approx -\log p(x)` (nats), shape ``(N,)``; higher = more anomalous.

    Args:
        p_joint: the generative model :math:`p(x, z)`, e.g. ``decoder * prior`` (the decoder alone is refused).
        q: the encoder :math:`q(z|x)`; reparameterisable for ``"iwae"`` (it is the IWAE proposal), any that can be
            sampled and scored (a discrete latent too) for ``"elbo"``.
        x_dict: the data, e.g. ``{"x": x}`` (tensors, numpy arrays or lists); every variable of ``p_joint`` that
            ``q`` does not draw must be given, with the same number of rows (other entries are ignored).
        method: ``"iwae"`` or ``"elbo"`` (see the module docstring).
        k: importance samples (``"iwae"``) or ELBO draws (``"elbo"``) per row.
        batch_size: rows evaluated at once.
        k_chunk: draws evaluated at once; chunks combine exactly (``logsumexp`` for IWAE,
            a weighted mean for the ELBO).

    Example:
        >>> from kizuna.distributions import Normal
        >>> prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
        >>> lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
        >>> class Posterior(Normal):  # q(z|x) = p(z|x) = N(x/2, 1/2)
        ...     def forward(self, x):
        ...         return {"loc": x / 2, "scale": torch.full_like(x, 0.5 ** 0.5)}
        >>> q = Posterior(var=["z"], cond_var=["x"], name="q")
        >>> x = torch.tensor([0.0, 4.0])  # p(x) = N(0, 2): the second row is rarer
        >>> anomaly_score(lik * prior, q, {"x": x}, k=3)  # q = p(z|x) gives -log p(x) exactly
        tensor([1.2655, 5.2655])
    """
    if method not in METHODS:
        raise ValueError(f"anomaly_score: method must be one of {', '.join(METHODS)}, got {method!r}")
    for name, value in (("k", k), ("batch_size", batch_size), ("k_chunk", k_chunk)):
        try:  # log_likelihood's rule (any integer: Python, numpy, a 0-d integer tensor; np.int64(5) was refused)
            check_int(f"anomaly_score: {name}", value, 1)
        except ValueError:
            raise ValueError(f"anomaly_score: {name} must be a positive integer, got {value!r}") from None
    k, batch_size, k_chunk = (int(one_number(v, arrays=False)) for v in (k, batch_size, k_chunk))
    # both methods (the ELBO of p(x|z) alone, E_q[log p(x|z)] + H[q], was returned as a score, several nats off)
    require_prior(p_joint, q, "anomaly_score", "the score would not be -log p(x)")
    names = ELBO(p_joint, q).input_var  # (the IWAE's, which refused a q that cannot be reparameterised)
    x_dict = values_dict(x_dict, "anomaly_score", names=names)  # (a bare tensor was torch's error in `require`)
    require(x_dict, names, "anomaly_score")
    # the model's variables only (another entry, e.g. ids of other rows, was checked by the "iwae" path alone), numpy
    # arrays and lists of numbers as tensors (as `log_likelihood` takes them; the uses' one conversion)
    x_dict = as_tensors({n: x_dict[n] for n in names}, names)
    batch_rows(x_dict, names, "anomaly_score")
    x_dict = in_model_dtype(x_dict, p_joint, q)  # each batch goes to the models' device as it is scored
    if method == "iwae":
        return -log_likelihood(p_joint, q, x_dict, k=k, batch_size=batch_size, k_chunk=k_chunk)
    return -_mean_elbo(p_joint, q, x_dict, k, batch_size, k_chunk)


def _mean_elbo(p_joint: Any, q: Any, x_dict: Mapping[str, Tensor], k: int, batch_size: int, k_chunk: int) -> Tensor:
    """The ELBO per row, averaged over ``k`` draws taken ``k_chunk`` at a time; batches are moved to the models'
    device and checked for non-finite values (named by variable, row and column), and the networks run in eval mode,
    as `log_likelihood` does. No gradient is taken, so q need not be reparameterisable."""
    n = batch_rows(x_dict, ELBO(p_joint, q).input_var, "anomaly_score")
    chunks = [min(k_chunk, k - start) for start in range(0, k, k_chunk)]
    bounds = {c: ELBO(p_joint, q, sample_shape=(c,)) for c in set(chunks)}
    device = model_device((p_joint, q), fallback=None)
    out = []
    from kizuna.modules.vae import evaluating  # (imported on use, as in log_likelihood: kizuna.modules is large)

    with torch.no_grad(), evaluating(p_joint, q):
        for start in range(0, n, batch_size):
            batch = {v: t[start:start + batch_size] if isinstance(t, Tensor) and t.dim() > 0 else t
                     for v, t in x_dict.items()}
            if device is not None:
                batch = {v: t.to(device) if isinstance(t, Tensor) else t for v, t in batch.items()}
            bad = first_nonfinite(batch, "anomaly_score: the data", torch.arange(start, min(start + batch_size, n)))
            if bad is not None:
                raise ValueError(f"{bad}; the ELBO of non-finite data is not defined")
            total = sum(bounds[c].eval(batch) * (c / k) for c in chunks)
            out.append(total)
    return torch.cat(out)


def score_bits_per_dim(score: Tensor, n_dims: int) -> Tensor:
    r"""A score in nats per row as bits per dimension: :math:`s / (D \log 2)`; ``n_dims`` a positive integer, checked
    as `kizuna.metrics.bits_per_dim` checks it (True and 2.5 gave numbers).

    >>> score_bits_per_dim(torch.tensor([64 * math.log(2)]), 64)
    tensor([1.])
    """
    return score / (dims_count("score_bits_per_dim", n_dims) * math.log(2))
