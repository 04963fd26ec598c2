r"""Randomness in the module layer: one policy, and samplers that draw from a given generator.

**The policy.** Every draw a module makes comes from a ``torch.Generator`` it is handed:

* inside ``update(ctx)`` (a `Graph` sweep), from ``ctx.generator`` — ``Graph.fit(seed=...)`` seeds one
  generator shared by every module of the graph, so a run depends on its seed and on the graph as built:
  the modules update in the order `Graph` finds them (children first, starting from the modules in the
  order they are listed), and that order is the order of their draws from the shared generator, so
  ``Graph([m])`` and ``Graph([g2, m])`` over the same modules are two runs of the same model;
* in the scikit-learn methods (``fit``, ``transform``, ``sample``, ...) and in ``update()`` called
  without a context, from `generator_for` ``(random_state)``: an ``int`` gives the same stream at every
  ``fit`` (scikit-learn's rule), ``None`` a stream seeded by one draw from torch's global generator (so
  ``torch.manual_seed`` makes it reproducible, as ``np.random.seed`` does for scikit-learn), and a
  ``torch.Generator`` is used as it is.

Code that can only draw from torch's *global* generator (``torch.distributions``, dropout, network
initialisation) runs inside `rng_from` ``(generator)``, which forks the global state, seeds it from the
generator and restores it afterwards: torch's global generator is never advanced by a seeded run.
A module that trains with `kizuna.models.Model.fit`, whose own random streams would otherwise continue from
call to call, starts them before every update from `draw_seed` ``(generator)`` (the VAE module).

The samplers below are vectorised over rows and draw only from the generator they are given.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

Tensor = torch.Tensor
SEED_BOUND = 2**62


def generator_for(random_state: int | torch.Generator | None, device: torch.device | str | None = None
                  ) -> torch.Generator:
    """The generator of ``random_state`` on ``device`` (see the module docstring).

    >>> a = torch.rand(2, generator=generator_for(3))
    >>> bool((a == torch.rand(2, generator=generator_for(3))).all())
    True
    >>> generator_for(-1)
    Traceback (most recent call last):
    ...
    ValueError: random_state must be None, an int in [0, 2**64) or a torch.Generator, got -1
    """
    if isinstance(random_state, torch.Generator):
        return random_state
    if random_state is None:
        seed = int(torch.randint(0, SEED_BOUND, (1,)))
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool) \
            and 0 <= random_state < 2**64:
        seed = int(random_state)  # (2**64 and above failed in torch's manual_seed without naming random_state)
    else:
        raise ValueError(f"random_state must be None, an int in [0, 2**64) or a torch.Generator, got {random_state!r}")
    return torch.Generator(device=torch.device("cpu") if device is None else device).manual_seed(seed)


def on_cpu(generator: torch.Generator | None) -> torch.Generator:
    """``generator`` if it is a CPU generator, else a CPU generator seeded by one draw from it (``None``:
    from torch's global generator), for code that samples CPU tensors."""
    if generator is not None and generator.device.type == "cpu":
        return generator
    seed_from = None if generator is None else generator
    device = "cpu" if generator is None else generator.device
    seed = int(torch.randint(0, SEED_BOUND, (1,), generator=seed_from, device=device))
    return torch.Generator().manual_seed(seed)


def draw_seed(generator: torch.Generator) -> int:
    """One seed in ``[0, 2**62)`` drawn from ``generator`` (on its device), to start a stream that ``generator``
    decides: `rng_from`'s, or a `kizuna.models.Model`'s training streams.

    >>> draw_seed(torch.Generator().manual_seed(0)) == draw_seed(torch.Generator().manual_seed(0))
    True
    """
    return int(torch.randint(0, SEED_BOUND, (1,), generator=generator, device=generator.device))


@contextmanager
def rng_from(generator: torch.Generator | None) -> Iterator[None]:
    """Run code that draws from torch's global generator (``torch.distributions``, dropout, network
    initialisation) on a stream seeded from ``generator``, leaving the global state as it was.

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
    seed = draw_seed(generator)
    with torch.random.fork_rng():  # the CPU state and every visible CUDA device's
        torch.manual_seed(seed)
        yield


def normalize(weights: Tensor) -> Tensor:
    """Rows scaled to sum to one (an error naming the row when a row sums to zero)."""
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError("class weights must be finite and non-negative")
    sums = weights.sum(1, keepdim=True)
    if (sums <= 0).any():
        row = int((sums <= 0).nonzero()[0, 0])
        raise ValueError(f"class weights of row {row} are all zero")
    return weights / sums


def _tensor_of(who: str, name: str, value: Any, what: str, floating: bool = False) -> Tensor:
    """``value`` checked to be a torch tensor (a floating one with ``floating``); a TypeError naming ``who``, ``name``
    and ``what`` to pass otherwise (a list failed with "'<=' not supported between instances of 'list' and 'int'")."""
    if isinstance(value, Tensor) and (value.is_floating_point() or not floating):
        return value
    kind = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
    raise TypeError(f"{who}: {name} must be a {'floating ' if floating else ''}torch.Tensor ({what}), got {kind}")


def sample_classes(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One class per row, :math:`c_n \\sim \\mathrm{Cat}(p_{n\\cdot})`, by inverting the CDF. ``probs``: a 2-D tensor
    of non-negative weights, one row per draw (a ValueError otherwise; one distribution is ``probs[None]``).

    >>> sample_classes(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    tensor([1, 0])
    """
    _tensor_of("sample_classes", "probs", probs, "one row of class weights per draw")
    if probs.dim() != 2:  # (1-D: torch's bare "Dimension out of range")
        raise ValueError(f"sample_classes: probs must be 2-D, one row of class weights per draw, got shape "
                         f"{tuple(probs.shape)}" + ("; for one draw pass probs[None]" if probs.dim() == 1 else ""))
    cdf = normalize(probs).cumsum(1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    # count the classes whose cumulative mass lies at or below u; zero-mass classes are never chosen
    idx = (cdf <= u * cdf[:, -1:]).sum(1)
    return idx.clamp_(max=probs.shape[1] - 1)


def _gamma_parts(a: Tensor, generator: torch.Generator | None, who: str = "sample_gamma"
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Marsaglia & Tsang's ``Gamma(a', 1)`` draws with :math:`a' = a + 1` where :math:`a < 1`, the uniforms
    :math:`U` that turn them into :math:`\\mathrm{Gamma}(a, 1)` there, and that mask (`sample_gamma`)."""
    _tensor_of(who, "concentration", a, "e.g. torch.tensor([1.0, 1.0])", floating=True)
    if (a <= 0).any() or not torch.isfinite(a).all():
        raise ValueError(f"{who}: concentrations must be positive and finite")
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
    return out, u, boost


def sample_gamma(concentration: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """:math:`\\mathrm{Gamma}(a, 1)` draws of the shape of ``concentration`` (Marsaglia & Tsang 2000),
    vectorised rejection sampling on ``generator``; :math:`a < 1` via :math:`G_{a+1} U^{1/a}`, which rounds to 0
    for tiny :math:`a` (about half the draws at :math:`a = 10^{-3}` in float64): `sample_log_gamma` keeps them.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = sample_gamma(torch.full((20000,), 3.0), g)
    >>> round(x.mean().item(), 1)
    3.0
    """
    a = concentration
    out, u, boost = _gamma_parts(a, generator)
    return torch.where(boost, out * u ** (1 / a), out)


def sample_log_gamma(concentration: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """:math:`\\log G` for the draws :math:`G` of `sample_gamma` (the same draws from ``generator``), computed as
    :math:`\\log G_{a+1} + \\log(U)/a` for :math:`a < 1`, so that no draw underflows however small :math:`a`.

    >>> g = torch.Generator().manual_seed(0)
    >>> bool(torch.isfinite(sample_log_gamma(torch.full((1000,), 1e-3, dtype=torch.float64), g)).all())
    True
    """
    return _log_gamma(concentration, generator, "sample_log_gamma")


def _log_gamma(a: Tensor, generator: torch.Generator | None, who: str) -> Tensor:
    """`sample_log_gamma`, its errors naming ``who``."""
    out, u, boost = _gamma_parts(a, generator, who)
    # (``torch.rand`` can return 0: its log stays finite, as its Gamma draw rounds to 0 in `sample_gamma`)
    return torch.where(boost, torch.log(out) + torch.log(u.clamp(min=torch.finfo(u.dtype).tiny)) / a, torch.log(out))


def sample_dirichlet(concentration: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rows :math:`\\sim\\mathrm{Dir}(\\alpha_{n\\cdot})` as normalised Gamma draws (last dim is the simplex),
    normalised in log space (`sample_log_gamma`, then a softmax): with tiny concentrations every Gamma draw of a row
    can round to 0 (at :math:`\\alpha = 10^{-3}` in float64 about half of each), and the row was then given to the
    largest concentration, component 0 under a symmetric prior (mean share 0.41 instead of 1/3 for
    :math:`\\mathrm{Dir}(10^{-3}\\cdot 1_3)`). Same draws from ``generator`` as ``sample_gamma(concentration)``
    normalised, equal to it to rounding where nothing underflows.

    >>> g = torch.Generator().manual_seed(0)
    >>> theta = sample_dirichlet(torch.full((4, 3), 1e-3, dtype=torch.float64), g)
    >>> torch.allclose(theta.sum(-1), torch.ones(4, dtype=torch.float64))
    True
    """
    return torch.softmax(_log_gamma(concentration, generator, "sample_dirichlet"), -1)
