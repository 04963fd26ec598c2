r"""Langevin dynamics driven by a score :math:`s(x) \approx \nabla_x \log p(x)`.

.. math:: x_{k+1} = x_k + \frac{\alpha}{2} s(x_k) + \sqrt{\alpha}\, z_k,\qquad z_k \sim \mathcal{N}(0, I)

Annealed Langevin dynamics (Song & Ermon 2019, arXiv:1907.05600) runs ``n_steps_each`` such steps
at each noise level :math:`\sigma_1 > \dots > \sigma_L` with the noise-conditional score
:math:`s(x, i)` and step :math:`\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2`. For a fixed step the chain's
stationary law is not exactly :math:`p` (for :math:`\mathcal{N}(\mu, s^2)` the variance is
:math:`s^2/(1 - \alpha/(4s^2))`); the bias vanishes as :math:`\alpha \to 0`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from kizuna._data import check_count, check_positive, noise_levels
from kizuna.distributions.base import Distribution, Tensor
from kizuna.distributions.energy import autograd_values, input_leaf, outside_inference_mode
from kizuna.samplers.paths import _check_draws, _checked


def score_of(p: Distribution, var: str | None = None, **given: Tensor) -> Callable[[Tensor], Tensor]:
    """:math:`x \\mapsto \\nabla_x \\log p(x|\\text{given})` by autograd (exact for unnormalised densities), without a
    graph; the same under ``torch.no_grad()`` and inside ``torch.inference_mode()``
    (`kizuna.distributions.energy.input_leaf`).

    >>> from kizuna.distributions import Normal
    >>> s = score_of(Normal(var=["x"], loc=1.0, scale=2.0, features_shape=[1]))
    >>> s(torch.tensor([[3.0]]))  # -(x - 1) / 4
    tensor([[-0.5000]])
    """
    name = var or p.var[0]

    def eager_score(x: Tensor) -> Tensor:
        with outside_inference_mode(), torch.enable_grad():  # also inside torch.inference_mode() (`input_leaf`)
            x = input_leaf(x)
            lp = p.get_log_prob({**autograd_values(given), name: x})
            (g,) = torch.autograd.grad(lp.sum(), x)
        return g

    # while compiling: this frame runs eagerly (the real modes, the leaf and autograd.grad outside any graph), the
    # log-density's frames inside it are traced
    compiled_score = torch.compiler.disable(eager_score, recursive=False)

    def score(x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return compiled_score(x)
        return eager_score(x)

    return score


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def langevin_dynamics(score: Callable[[Tensor], Tensor], x: Tensor, step_size: float, n_steps: int,
                      generator: torch.Generator | None = None) -> Tensor:
    """``n_steps`` Langevin steps of size ``step_size`` (α) from ``x`` (module docstring); no gradients.

    The score's value is checked to have ``x``'s shape at every step (a ValueError), and, while validation is on
    (`kizuna.distributions.validation`), the draws it returns to be finite: a FloatingPointError naming the sampler and
    the first non-finite entry (a score that returns NaN, or a step size too large for it, gave all-NaN draws
    silently), read once at the end (no device sync per step).

    Args:
        score: :math:`s(x)`, e.g. ``score_of(p)`` or a score network.
        x: the starting points, batch first.
        generator: a ``torch.Generator`` on ``x``'s device for reproducible noise.
    """
    _check_arguments(x, step_size, n_steps)
    x = _langevin(score, x, float(step_size), int(n_steps), generator, "langevin_dynamics")
    _check_draws("langevin_dynamics", x, f"{n_steps} steps of step_size {step_size}", _HINT)
    return x


def _check_arguments(x: Any, step_size: Any, n_steps: Any) -> None:
    """`langevin_dynamics`' arguments (also each level's of `annealed_langevin_dynamics`)."""
    if n_steps is None:
        raise ValueError("langevin_dynamics: n_steps must be an integer >= 0, got None")
    check_count("langevin_dynamics: n_steps", n_steps, 0)  # 2.5 raised a bare TypeError from range()
    check_positive("langevin_dynamics: step_size", step_size)  # (inf: every draw NaN; a string: a bare TypeError)
    _check_start("langevin_dynamics", x)


_HINT = "the score returned NaN or inf, or the step size is too large for it (the chain diverged)"


def _langevin(score: Callable[[Tensor], Tensor], x: Tensor, step_size: float, n_steps: int,
              generator: torch.Generator | None, who: str) -> Tensor:
    """``n_steps`` Langevin steps from ``x``, the score checked (`kizuna.samplers.paths._checked`)."""
    x = x.detach().clone()
    with torch.no_grad():
        for _ in range(n_steps):
            s = _checked(score(x), x, who)
            x = x + 0.5 * step_size * s + step_size**0.5 * _noise(x, generator)
    return x


def annealed_langevin_dynamics(score: Callable[[Tensor, int], Tensor], x: Tensor, sigmas: Sequence[float] | Tensor,
                               eps: float = 2e-5, n_steps_each: int = 100, denoise: bool = False,
                               generator: torch.Generator | None = None) -> Tensor:
    """Song & Ermon's annealed Langevin dynamics (module docstring); no gradients.

    Args:
        score: :math:`s(x, i)` for noise level ``i`` (index into ``sigmas``, largest first).
        x: the starting points (e.g. uniform noise).
        sigmas: the noise levels :math:`\\sigma_1 > \\dots > \\sigma_L`.
        eps: the step at the smallest level.
        denoise: end with the Tweedie step :math:`x + \\sigma_L^2 s(x, L)`
            (Jolicoeur-Martineau et al. 2020, arXiv:2009.05475), removing the last level's noise.
    """
    levels = noise_levels("annealed_langevin_dynamics", sigmas)
    _check_start("annealed_langevin_dynamics", x)
    check_positive("annealed_langevin_dynamics: eps (the step at the smallest level)", eps)  # numpy floats too
    eps = float(eps)
    who = "annealed_langevin_dynamics"
    for i, sigma in enumerate(levels):
        alpha = eps * sigma**2 / levels[-1] ** 2
        _check_arguments(x, alpha, n_steps_each)  # (langevin_dynamics' at each level)
        x = _langevin(_at_level(score, i), x, alpha, int(n_steps_each), generator, who)
    if denoise:
        with torch.no_grad():
            # as every Langevin step (a (B, 1) score was broadcast silently)
            s = _checked(score(x, len(levels) - 1), x, who, where=" (the denoising step)")
            x = x + levels[-1] ** 2 * s
    # (one finiteness check over every level, at the end)
    _check_draws(who, x, f"{len(levels)} noise levels of {n_steps_each} steps each"
                 + (" and the denoising step" if denoise else ""), _HINT)
    return x


def _check_start(who: str, x: Any) -> None:
    """``x`` is a floating-point tensor (an integer one raised torch's bare "only Tensors of floating point dtype can
    require gradients" from the score)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: x must be a floating-point tensor, got dtype {x.dtype} (convert it, e.g. x.float())")


def _at_level(score: Callable[[Tensor, int], Tensor], i: int) -> Callable[[Tensor], Any]:
    return lambda x: score(x, i)
