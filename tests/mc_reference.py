"""Shared harness for the statistical reference tests of the losses.

Monte-Carlo estimates are compared with their reference within ``N_SE`` standard errors,
the standard error being measured from the same draws (sample std / sqrt(n)). Under the
normal approximation a 5-SE two-sided check has a false-alarm rate of 5.7e-7 per
comparison; seeds are fixed, so a run is reproducible either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

N_SE = 5.0


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Run a block with another default dtype (constants of distributions follow it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def standard_error(draws: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Standard error of the mean of ``draws`` along ``dim``."""
    return draws.std(dim) / draws.shape[dim] ** 0.5


def assert_mc_close(estimate: Any, reference: Any, se: Any, n_se: float = N_SE, what: str = "") -> None:
    """``|estimate - reference| <= n_se * se`` elementwise, with a readable failure message."""
    estimate, reference, se = (torch.as_tensor(t, dtype=torch.float64) for t in (estimate, reference, se))
    err = (estimate - reference).abs()
    assert bool((se > 0).all()), f"{what}: a zero standard error makes the check vacuous ({se})"
    assert bool((err <= n_se * se).all()), (
        f"{what}: estimate {estimate.tolist()} vs reference {reference.tolist()}; "
        f"error {err.tolist()} exceeds {n_se} standard errors {(n_se * se).tolist()}"
    )
