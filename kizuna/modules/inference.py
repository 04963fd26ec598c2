r"""Combining a class message with a module's own likelihood: message passing or SIR.

A module with a categorical latent :math:`c_n \in \{1..K\}` receives a message
:math:`m_{nk}` (a class prior from its parent, or class posteriors from a child) and
computes its own log-likelihood :math:`\ell_{nk} = \log p(x_n \mid c_n = k)`. The combined
posterior is

.. math:: p(c_n = k \mid \cdot) = \frac{m_{nk}\, e^{\ell_{nk}}}{\sum_j m_{nj}\, e^{\ell_{nj}}}.

* ``"mp"`` (message passing) computes it exactly, in log space.
* ``"sir"`` (sampling-importance-resampling, SERKET's alternative when messages are too
  expensive to pass exactly; Nakamura et al. 2018, arXiv:1712.00929): per row draw
  :math:`P` candidate classes :math:`c^{(p)} \sim m_{n\cdot}` (the proposal), weight each by
  :math:`w_p \propto e^{\ell_{n c^{(p)}}}`, resample :math:`P` particles by the weights and
  return their empirical distribution. It converges to the ``"mp"`` posterior as
  :math:`P \to \infty` (bias :math:`O(1/P)`, noise :math:`O(1/\sqrt P)`).

Both are vectorised over rows (no Python loop over samples).

>>> msg = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
>>> ll = torch.log(torch.tensor([[0.2, 0.8], [0.5, 0.5]]))
>>> combine(msg, ll, "mp")
tensor([[0.2000, 0.8000],
        [0.9000, 0.1000]])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn import functional as F

Tensor = torch.Tensor
METHODS = ("mp", "sir")


def normalize(weights: Tensor) -> Tensor:
    """Rows scaled to sum to one (an error naming the row when a row sums to zero)."""
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError("class weights must be finite and non-negative")
    sums = weights.sum(1, keepdim=True)
    if (sums <= 0).any():
        row = int((sums <= 0).nonzero()[0, 0])
        raise ValueError(f"class weights of row {row} are all zero")
    return weights / sums


def sample_classes(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One class per row, :math:`c_n \\sim \\mathrm{Cat}(p_{n\\cdot})`, by inverting the CDF.

    >>> sample_classes(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    tensor([1, 0])
    """
    cdf = normalize(probs).cumsum(1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    # count the classes whose cumulative mass lies at or below u; zero-mass classes are never chosen
    idx = (cdf <= u * cdf[:, -1:]).sum(1)
    return idx.clamp_(max=probs.shape[1] - 1)


@contextmanager
def rng_from(generator: torch.Generator | None) -> Iterator[None]:
    """Run code that draws from torch's global generator (``torch.distributions``, dropout,
    ``rsample``) on a stream seeded from ``generator``, leaving the global state as it was.

    With ``generator=None`` the block uses (and advances) the global generator as usual.

    >>> g = torch.Generator().manual_seed(0)
    >>> with rng_from(g):
    ...     a = torch.randn(2)
    >>> with rng_from(torch.Generator().manual_seed(0)):
    ...     b = torch.randn(2)
    >>> bool((a == b).all())
    True
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng():  # the CPU state and every visible CUDA device's
        torch.manual_seed(seed)
        yield


def sample_gamma(concentration: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """:math:`\\mathrm{Gamma}(a, 1)` draws of the shape of ``concentration`` (Marsaglia & Tsang 2000),
    vectorised rejection sampling on ``generator``; :math:`a < 1` via :math:`G_{a+1} U^{1/a}`.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = sample_gamma(torch.full((20000,), 3.0), g)
    >>> round(x.mean().item(), 1)
    3.0
    """
    a = concentration
    if (a <= 0).any() or not torch.isfinite(a).all():
        raise ValueError("sample_gamma: concentrations must be positive and finite")
    boost = a < 1
    d = torch.where(boost, a + 1, a) - 1.0 / 3
    c = 1.0 / torch.sqrt(9 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while todo.any():
        x = torch.randn(a.shape, generator=generator, device=a.device, dtype=a.dtype)
        u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp(min=1e-300)))
        take = todo & ok
        out = torch.where(take, d * v, out)
        todo = todo & ~ok
    u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
    return torch.where(boost, out * u ** (1 / a), out)


def sample_dirichlet(concentration: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rows :math:`\\sim\\mathrm{Dir}(\\alpha_{n\\cdot})` as normalised Gamma draws (last dim is the simplex)."""
    g = sample_gamma(concentration, generator)
    # tiny concentrations can underflow every draw of a row to 0: fall back to the largest one
    g = torch.where(g.sum(-1, keepdim=True) > 0, g, F.one_hot(concentration.argmax(-1), g.shape[-1]).to(g.dtype))
    return g / g.sum(-1, keepdim=True)


def _check(message_probs: Tensor, log_likelihood: Tensor) -> None:
    if message_probs.dim() != 2 or message_probs.shape != log_likelihood.shape:
        raise ValueError(f"combine: the message {tuple(message_probs.shape)} and the log-likelihood "
                         f"{tuple(log_likelihood.shape)} must both be N x K")
    if torch.isnan(log_likelihood).any() or (log_likelihood == float("inf")).any():
        raise ValueError("combine: the log-likelihood contains NaN or +inf")


def _no_support(valid: Tensor, what: str) -> None:
    if not valid.all():
        row = int((~valid).nonzero()[0, 0])
        raise ValueError(f"combine: row {row} has no class with both message mass and likelihood ({what})")


def combine(message_probs: Tensor, log_likelihood: Tensor, method: str = "mp", n_particles: int = 1000,
            generator: torch.Generator | None = None) -> Tensor:
    """The posterior ``N×K`` of a class message times a likelihood (see the module docstring).

    Args:
        message_probs: :math:`m`, ``N×K`` non-negative (rows are normalised here).
        log_likelihood: :math:`\\ell`, ``N×K`` (``-inf`` allowed for impossible classes).
        method: ``"mp"`` (exact) or ``"sir"`` (sampling-importance-resampling).
        n_particles: :math:`P` for ``"sir"``.
        generator: random source for ``"sir"`` (``None``: torch's global generator).
    """
    if method not in METHODS:
        raise ValueError(f"combine: method must be one of {METHODS}, got {method!r}")
    _check(message_probs, log_likelihood)
    message = normalize(message_probs)
    if method == "mp":
        logits = torch.log(message) + log_likelihood
        _no_support(torch.isfinite(logits).any(1), "message passing")
        return torch.softmax(logits, 1)
    if n_particles < 1:
        raise ValueError(f"combine: n_particles must be positive, got {n_particles}")
    proposals = torch.multinomial(message, n_particles, replacement=True, generator=generator)  # N x P
    log_w = log_likelihood.gather(1, proposals)
    _no_support(torch.isfinite(log_w).any(1), f"every one of the {n_particles} particles has zero likelihood")
    weights = torch.softmax(log_w, 1)
    picks = torch.multinomial(weights, n_particles, replacement=True, generator=generator)
    particles = proposals.gather(1, picks)
    counts = torch.zeros_like(message).scatter_add_(1, particles, torch.ones_like(particles, dtype=message.dtype))
    return counts / n_particles
