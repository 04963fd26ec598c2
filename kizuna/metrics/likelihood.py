r"""Importance-weighted estimates of :math:`\log p(x)`, in bounded memory.

.. math:: \log p(x) \approx \log \frac1k \sum_{i=1}^k \frac{p(x, z_i)}{q(z_i|x)},\quad z_i \sim q(z|x)

The ``k`` samples are drawn in chunks of ``k_chunk`` and the data in batches of
``batch_size``; chunks are combined exactly with ``logsumexp`` (Burda et al. 2015,
arXiv:1509.00519).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from kizuna.losses.elbo import IWAE


def log_likelihood(
    p_joint: Any,
    q: Any,
    x_dict: Mapping[str, torch.Tensor],
    k: int = 5000,
    batch_size: int = 100,
    k_chunk: int = 500,
) -> torch.Tensor:
    """Per-row estimates of :math:`\\log p(x)` (nats), shape ``(N,)``, without gradients.

    Divide by ``log(2) * D`` for bits per dimension.
    """
    names = IWAE(p_joint, q, k=1).input_var
    missing = [v for v in names if v not in x_dict]
    if missing:
        raise ValueError(f"log_likelihood needs {', '.join(missing)} in the data, given {sorted(x_dict)}")
    n = next(iter(x_dict[v] for v in names)).shape[0]
    chunks = [min(k_chunk, k - start) for start in range(0, k, k_chunk)]
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = {v: t[start:start + batch_size] for v, t in x_dict.items()}
            parts = [IWAE(p_joint, q, k=c).eval(batch) + math.log(c) for c in chunks]
            out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
    return torch.cat(out)
