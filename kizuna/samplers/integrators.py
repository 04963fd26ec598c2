r"""One sampler layer for every Gaussian path (`kizuna.samplers.paths`): DDPM, NCSN and flow matching.

With :math:`(\hat x_0, \hat\epsilon)` the network's prediction at :math:`(x, \tau)` and
:math:`(a, b) \to (a', b')` the path's coefficients from one time to the next:

* `ancestral` — the model's own reverse kernel :math:`p_\theta(x_{t-1}|x_t)` (a DDPM, every step).
* `ddim` (Song et al. 2021, arXiv:2010.02502):
  :math:`x' = a'\hat x_0 + \sqrt{b'^2 - \sigma^2}\,\hat\epsilon + \sigma z`,
  :math:`\sigma^2 = \eta^2 b'^2\big(1 - (a b'/(a' b))^2\big)`; η = 1 is the ancestral sampler with the
  posterior variance over any subsequence of steps, η = 0 deterministic.
* `euler` and `heun` — the probability-flow ODE :math:`dx/d\tau = \dot a\hat x_0 + \dot b\hat\epsilon`
  in the path's time (Heun: Karras et al. 2022, arXiv:2206.00364, Alg. 1; its last step is Euler
  where the network is not defined at the clean end). For a DDPM or NCSN (:math:`a = 1, b = \sigma`)
  Euler is DDIM with η = 0.
* `euler_maruyama` — the SDE with the same marginals,
  :math:`dx = [u + \tfrac{\gamma^2}{2}\nabla\log p_\tau]\,dh + \gamma\, dw`, :math:`h` the sampling
  time and :math:`\nabla\log p_\tau = -\hat\epsilon/b`; the default :math:`\gamma^2 = 2b\,|\dot b - \dot a b/a|`
  is the diffusion's own (the reverse SDE of Song et al. 2021, arXiv:2011.13456). Its last step is
  the noiseless Euler (denoising) step.

Every sampler takes ``n_steps`` (steps of one network evaluation each; Heun's make two, less one where its last
step is Euler's: 2n - 1 evaluations on a DDPM or a score model, 2n on a flow-matching path) and a ``generator``.
Classifier-free guidance is a path (`kizuna.samplers.paths.Guided`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from kizuna._data import check_count
from kizuna.samplers.paths import GaussianPath, Prediction, Tensor, _noise

Step = Callable[[GaussianPath, Tensor, float, float, Prediction, bool, torch.Generator | None], Tensor]


def _run(path: GaussianPath, step: Step, n: int | None, n_steps: int | None, x: Tensor | None,
         generator: torch.Generator | None, times: Sequence[float] | None, grad: bool) -> Tensor:
    check_count("sampler: n (draws)", n, 0)
    check_count("sampler: n_steps", n_steps, 1)
    grid = list(path.times(n_steps)) if times is None else path.check_times(times)
    if len(grid) < 2:
        raise ValueError("a sampler needs at least two times (one step)")
    if x is None:
        x = path.prior(1 if n is None else n, generator)  # n = 0: no draws (an empty batch), as torch's
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        for tau, tau_next in zip(grid[:-1], grid[1:]):
            last = tau_next == path.end
            x = step(path, x, tau, tau_next, path.predict(x, tau), last, generator)
    return x


def _ancestral_step(path: GaussianPath, x: Tensor, tau: float, tau_next: float, pred: Prediction, last: bool,
                    generator: torch.Generator | None) -> Tensor:
    return path.ancestral_step(x, tau, tau_next, pred, None if last else _noise(x.shape, x, generator))


def ancestral(path: GaussianPath, n: int | None = None, n_steps: int | None = None, x: Tensor | None = None,
              generator: torch.Generator | None = None, times: Sequence[float] | None = None,
              grad: bool = False) -> Tensor:
    """Ancestral sampling with the model's reverse kernel; the last step returns its mean.

    Args:
        path: a path with an ancestral kernel (`DiffusionPath`, or guided over one).
        n: the number of draws (when ``x`` is not given).
        n_steps: ``None``: every step (a DDPM's ancestral sampler runs the whole chain).
        x: the starting points at ``times[0]`` (default: draws from ``path.prior``).
        times: the times to visit (default ``path.times(n_steps)``): finite, strictly from the noise end to the
            data end, within the path (flow matching's [0, 1]; a noise level at least 0); else a ValueError.
        grad: keep the graph (differentiable draws).
    """
    return _run(path, _ancestral_step, n, n_steps, x, generator, times, grad)


def _ddim_step(eta: float) -> Step:
    def step(path: GaussianPath, x: Tensor, tau: float, tau_next: float, pred: Prediction, last: bool,
             generator: torch.Generator | None) -> Tensor:
        (a, b), (a2, b2) = path.coefficients(tau), path.coefficients(tau_next)
        var = eta**2 * b2**2 * (1 - (a * b2 / (a2 * b)) ** 2) if eta > 0 else 0.0
        out = a2 * pred.x0 + math.sqrt(max(b2**2 - var, 0.0)) * pred.eps
        return out + math.sqrt(var) * _noise(x.shape, x, generator) if var > 0 else out
    return step


def ddim(path: GaussianPath, n: int | None = None, n_steps: int | None = None, eta: float = 0.0,
         x: Tensor | None = None, generator: torch.Generator | None = None,
         times: Sequence[float] | None = None, grad: bool = False) -> Tensor:
    """DDIM with :math:`\\eta \\in [0, 1]` (module docstring); arguments as `ancestral`."""
    if not 0 <= eta <= 1:
        raise ValueError(f"ddim: eta must lie in [0, 1], got {eta}")
    return _run(path, _ddim_step(float(eta)), n, n_steps, x, generator, times, grad)


def _euler_step(path: GaussianPath, x: Tensor, tau: float, tau_next: float, pred: Prediction, last: bool,
                generator: torch.Generator | None) -> Tensor:
    return x + (tau_next - tau) * path.velocity(x, tau, pred)


def euler(path: GaussianPath, n: int | None = None, n_steps: int | None = None, x: Tensor | None = None,
          generator: torch.Generator | None = None, times: Sequence[float] | None = None,
          grad: bool = False) -> Tensor:
    """Euler's method on the probability-flow ODE (module docstring); arguments as `ancestral`."""
    return _run(path, _euler_step, n, n_steps, x, generator, times, grad)


def _heun_step(path: GaussianPath, x: Tensor, tau: float, tau_next: float, pred: Prediction, last: bool,
               generator: torch.Generator | None) -> Tensor:
    h, u = tau_next - tau, path.velocity(x, tau, pred)
    x_euler = x + h * u
    if last and not path.clean_evaluable:
        return x_euler
    return x + h * 0.5 * (u + path.velocity(x_euler, tau_next))


def heun(path: GaussianPath, n: int | None = None, n_steps: int | None = None, x: Tensor | None = None,
         generator: torch.Generator | None = None, times: Sequence[float] | None = None,
         grad: bool = False) -> Tensor:
    """Heun's second-order method on the probability-flow ODE; arguments as `ancestral`."""
    return _run(path, _heun_step, n, n_steps, x, generator, times, grad)


def natural_diffusion(path: GaussianPath, tau: float) -> float:
    """:math:`\\gamma(\\tau) = \\sqrt{2b|\\dot b - \\dot a b/a|}`, the forward diffusion's own coefficient."""
    (a, b), (da, db) = path.coefficients(tau), path.rates(tau)
    if a == 0:
        raise ValueError(f"euler_maruyama: the path's own diffusion is infinite at tau={tau} (a = 0); "
                         "pass diffusion=, e.g. lambda tau: 1 - tau for flow matching")
    return math.sqrt(2 * b * abs(db - da * b / a))


def euler_maruyama(path: GaussianPath, n: int | None = None, n_steps: int | None = None,
                   diffusion: Callable[[float], float] | None = None, x: Tensor | None = None,
                   generator: torch.Generator | None = None, times: Sequence[float] | None = None,
                   grad: bool = False) -> Tensor:
    """Euler–Maruyama on the SDE with the ODE's marginals (module docstring).

    Args:
        diffusion: :math:`\\gamma(\\tau)`; default `natural_diffusion` (the reverse SDE of the diffusion).
        Others: as `ancestral`.
    """
    gamma = diffusion or (lambda tau: natural_diffusion(path, tau))

    def step(path: GaussianPath, x: Tensor, tau: float, tau_next: float, pred: Prediction, last: bool,
             generator: torch.Generator | None) -> Tensor:
        drift = x + (tau_next - tau) * path.velocity(x, tau, pred)
        if last:
            return drift
        h, g, b = abs(tau_next - tau), gamma(tau), path.coefficients(tau)[1]
        return drift - h * 0.5 * g**2 * pred.eps / b + g * math.sqrt(h) * _noise(x.shape, x, generator)

    return _run(path, step, n, n_steps, x, generator, times, grad)


#: The samplers by name (``FlowMatching(sampler=...)`` picks one).
SAMPLERS = {"ancestral": ancestral, "ddim": ddim, "euler": euler, "heun": heun, "euler_maruyama": euler_maruyama}
