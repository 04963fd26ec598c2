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

The first step out of a DDPM's or a score model's prior (from `GaussianPath.prior_level`: :math:`s_T` or
:math:`\sigma_1`, meant to be well above the data's) is DDIM's, in `heun` with η = 0 and in `euler_maruyama` (default
diffusion) with η = 1, the reverse SDE's own transition there. At that noise level :math:`\hat x_0` hardly moves
over the step (the noised data are nearly :math:`\mathcal{N}(\hat x_0, b^2 I)`), and DDIM's step, which holds
:math:`\hat x_0` fixed, is then exact for any step length; on an evenly spread DDPM grid the step is long (a cosine
schedule of 1000 steps sampled in 10 runs from :math:`s = 20291` to 6.36). Heun's trapezoid over it left an error
of the order of :math:`b` itself and Euler–Maruyama's noise is :math:`\sqrt{2 s h} \approx 1.4 s`: draws of data
with a standard deviation of 0.3 came out with 1.22 (Heun, 10 steps; 6.6 at 5) and 1.80 (Euler–Maruyama, 10
steps); with the DDIM step 0.269 (0.211; Euler's 0.237, 0.183) and 0.319 (`tests/test_sampler_first_step_half.py`).
A flow-matching path starts exactly at its prior (``prior_level`` None): its samplers are unchanged, and so is every
step from a time other than the prior's.

Every sampler takes ``n_steps`` (steps of one network evaluation each; Heun's make two, less one for the DDIM step
out of the prior and one where its last step is Euler's: 2n - 2 evaluations on a DDPM or a score model from its
prior, 1 at n = 1, and 2n on a flow-matching path) and a ``generator``. Classifier-free guidance is a path
(`kizuna.samplers.paths.Guided`).

Every sampler checks the network's output at each evaluation to have the draws' shape (a ValueError naming the
sampler, the path and both shapes: a (B, 1) velocity for (B, 2) draws was broadcast into wrong draws silently), and,
while validation is on (`kizuna.distributions.validation`), the draws it returns to be finite: a FloatingPointError
naming the sampler, the steps and the first non-finite entry (a network that emits NaN gave all-NaN draws silently).
The draws are read once, at the end: no device sync, nor any other work, per step.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from kizuna._data import check_count, check_shape, first_flagged, one_number
from kizuna.samplers.paths import GaussianPath, Prediction, Tensor, _check_draws, _noise, _sampling

Step = Callable[[GaussianPath, Tensor, float, float, Prediction, bool, torch.Generator | None], Tensor]


def _check_start(name: str, path: GaussianPath, n: int | None, x: Any) -> None:
    """A given start ``x``: a floating tensor of shape ``(N, *path.features_shape)`` (where the path states one, a
    shape by `check_shape`), finite while validation is on, and of ``n`` rows if ``n`` is given too; a
    ValueError naming the sampler otherwise (another width came back in garbage shapes, NaN gave NaN draws, ``n`` was
    silently ignored)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: x (the start) must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: x (the start) must be a floating tensor, got {x.dtype}")
    features = getattr(path, "features_shape", None)
    if features is not None:  # a user's path by the built-in paths' rule (its bare 2 raised a raw TypeError)
        features = check_shape(f"{name}: {type(path).__name__}.features_shape", features)
    if features is not None and (x.dim() < 1 or tuple(x.shape[1:]) != features):
        shape = ", ".join(map(str, ("N", *features)))
        raise ValueError(f"{name}: x (the start) must have shape ({shape}) for {type(path).__name__}'s "
                         f"features_shape {features}, got {tuple(x.shape)}")
    if n is not None and x.dim() >= 1 and n != x.shape[0]:
        raise ValueError(f"{name}: n={n} but the start x has {x.shape[0]} rows, shape {tuple(x.shape)}; "
                         "give one of them, or both alike")
    # (a lazy import: kizuna.distributions imports the samplers)
    from kizuna.distributions.torch_dist import validation_enabled
    if validation_enabled() and x.device.type != "meta":
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise ValueError(f"{name}: the start x holds {first_flagged(x.detach(), bad)}; it must be finite")


def _run(name: str, path: GaussianPath, step: Step, n: int | None, n_steps: int | None, x: Tensor | None,
         generator: torch.Generator | None, times: Sequence[float] | None, grad: bool) -> Tensor:
    check_count("sampler: n (draws)", n, 0)
    check_count("sampler: n_steps", n_steps, 1)
    grid = list(path.times(n_steps)) if times is None else path.check_times(times)
    if len(grid) < 2:
        raise ValueError("a sampler needs at least two times (one step)")
    if x is None:
        n = getattr(path, "n_draws", None) if n is None else n  # a conditional path's context rows (GaussianPath)
        x = path.prior(1 if n is None else n, generator)  # n = 0: no draws (an empty batch), as torch's
    else:
        _check_start(name, path, n, x)
    # the network's output is checked to have x's shape at each evaluation (`paths._checked`, on the host), the draws
    # to be finite once, at the end (`paths._check_draws`: no read of the device per step)
    with _sampling(name), torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        for tau, tau_next in zip(grid[:-1], grid[1:]):
            last = tau_next == path.end
            x = step(path, x, tau, tau_next, path.predict(x, tau), last, generator)
    _check_draws(name, x, f"{len(grid) - 1} steps (tau {grid[0]:.6g} -> {grid[-1]:.6g})",
                 f"{type(path).__name__}'s network (its velocity, score or noise prediction) returned NaN or inf, or "
                 "the steps diverged (sample with times= that stop earlier to find the step)")
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
        n: the number of draws (when ``x`` is not given; default: the rows of a conditional path's context,
            `GaussianPath.n_draws`, else one).
        n_steps: ``None``: every step (a DDPM's ancestral sampler runs the whole chain).
        x: the starting points at ``times[0]`` (default: draws from ``path.prior``): a floating tensor of shape
            ``(N, *path.features_shape)``, finite while validation is on, with ``n`` (if given too) equal to ``N``;
            else a ValueError. In the path's coordinates: a `DiffusionPath`'s state is
            :math:`y_t = x_t / \\sqrt{\\bar\\alpha_t}`, so a DDPM's noise :math:`x_T \\sim \\mathcal{N}(0, I)` enters as
            ``x_T / path.alpha_bar[-1].sqrt()`` (what ``path.prior`` draws; :math:`x_T` itself starts the chain
            :math:`\\sqrt{\\bar\\alpha_T}^{-1}` times too close to the mean and every draw collapses onto it). The
            draws come back as :math:`x_0` at the clean end (:math:`\\bar\\alpha_0 = 1`); ``times`` that stop before
            it return :math:`y` too. Flow matching's and a score model's state is :math:`x` itself.
        times: the times to visit (default ``path.times(n_steps)``): finite, strictly from the noise end to the
            data end, within the path (flow matching's [0, 1]; a noise level at least 0); else a ValueError.
        grad: keep the graph (differentiable draws).
    """
    return _run("ancestral", path, _ancestral_step, n, n_steps, x, generator, times, grad)


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
    value = one_number(eta)  # (a 0-d tensor or numpy number as its value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        # (the string "0.5" raised a raw TypeError; True was taken as 1, NaN as 0 by the step's eta > 0 test)
        raise ValueError(f"ddim: eta must lie in [0, 1] (a number; 0: deterministic, 1: ancestral), got {eta!r}")
    return _run("ddim", path, _ddim_step(float(value)), n, n_steps, x, generator, times, grad)


def _euler_step(path: GaussianPath, x: Tensor, tau: float, tau_next: float, pred: Prediction, last: bool,
                generator: torch.Generator | None) -> Tensor:
    return x + (tau_next - tau) * path.velocity(x, tau, pred)


def euler(path: GaussianPath, n: int | None = None, n_steps: int | None = None, x: Tensor | None = None,
          generator: torch.Generator | None = None, times: Sequence[float] | None = None,
          grad: bool = False) -> Tensor:
    """Euler's method on the probability-flow ODE (module docstring); arguments as `ancestral`."""
    return _run("euler", path, _euler_step, n, n_steps, x, generator, times, grad)


def _heun_step(prior: float | None) -> Step:
    out_of_prior = _ddim_step(0.0)

    def step(path: GaussianPath, x: Tensor, tau: float, tau_next: float, pred: Prediction, last: bool,
             generator: torch.Generator | None) -> Tensor:
        if tau == prior:
            return out_of_prior(path, x, tau, tau_next, pred, last, generator)
        h, u = tau_next - tau, path.velocity(x, tau, pred)
        x_euler = x + h * u
        if last and not path.clean_evaluable:
            return x_euler
        return x + h * 0.5 * (u + path.velocity(x_euler, tau_next))
    return step


def heun(path: GaussianPath, n: int | None = None, n_steps: int | None = None, x: Tensor | None = None,
         generator: torch.Generator | None = None, times: Sequence[float] | None = None,
         grad: bool = False) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1); arguments as `ancestral`.

    The first step, where it starts at the prior's noise level of a DDPM or a score model
    (`GaussianPath.prior_level`, from the default grid or from given ``times``), is DDIM's with η = 0 (one
    evaluation; on these paths Euler's step), exact where the noise dominates (module docstring): Heun's correction
    over that step, from :math:`s_T` to a level near the data's scale on an evenly spread DDPM grid, gave draws many
    times too wide. The last step is Euler's where the network is not defined at the clean end. On a flow-matching
    path every step is Heun's.
    """
    return _run("heun", path, _heun_step(path.prior_level()), n, n_steps, x, generator, times, grad)


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

    With the default diffusion, the first step, where it starts at the prior's noise level of a DDPM or a score model
    (`GaussianPath.prior_level`), is DDIM's with η = 1: the reverse SDE's exact transition while :math:`\\hat x_0`
    holds over the step, as it nearly does where the noise dominates (module docstring); Euler–Maruyama's own step
    there adds noise of about :math:`1.4 s_T` and gave draws many times too wide on an evenly spread DDPM grid. A
    given ``diffusion`` has no such closed form: every step is then Euler–Maruyama's (a DDPM or a score model then
    needs many steps). The last step is the noiseless Euler step.

    Args:
        diffusion: :math:`\\gamma(\\tau)`, a function of the time (a constant as ``lambda tau: 1.0``; a number
            is a TypeError); default `natural_diffusion` (the reverse SDE of the diffusion). Its value at each step
            must be a finite number >= 0; else a ValueError.
        Others: as `ancestral`.
    """
    if diffusion is not None and not callable(diffusion):  # (a constant 1.0 failed at the first step: "'float' object
        # is not callable"; 0.0 was taken as no diffusion given, the path's own)
        raise TypeError(f"euler_maruyama: diffusion must be a function of tau, gamma(tau) (e.g. lambda tau: 1.0 for a "
                        f"constant), or None for the path's own; got {reprlib.repr(diffusion)} "
                        f"({type(diffusion).__name__})")
    gamma = diffusion if diffusion is not None else (lambda tau: natural_diffusion(path, tau))
    prior, out_of_prior = (path.prior_level() if diffusion is None else None), _ddim_step(1.0)

    def step(path: GaussianPath, x: Tensor, tau: float, tau_next: float, pred: Prediction, last: bool,
             generator: torch.Generator | None) -> Tensor:
        if tau == prior:
            return out_of_prior(path, x, tau, tau_next, pred, last, generator)
        drift = x + (tau_next - tau) * path.velocity(x, tau, pred)
        if last:
            return drift
        h, g, b = abs(tau_next - tau), _diffusion_value(gamma, tau), path.coefficients(tau)[1]
        return drift - h * 0.5 * g**2 * pred.eps / b + g * math.sqrt(h) * _noise(x.shape, x, generator)

    return _run("euler_maruyama", path, step, n, n_steps, x, generator, times, grad)


def _diffusion_value(gamma: Callable[[float], Any], tau: float) -> Any:
    """:math:`\\gamma(\\tau)`, checked to be finite and at least 0 (a NaN gave NaN draws silently, infinity overflowed
    them): a number as a float; a tensor as it is (its gradient, and a per-row shape that broadcasts against the draws,
    kept), checked while validation is on (a read of the device a step)."""
    raw = gamma(tau)
    if isinstance(raw, Tensor) and (raw.dim() > 0 or raw.requires_grad):
        from kizuna.distributions.torch_dist import validation_enabled  # (a lazy import, as in _check_start)

        if validation_enabled() and not bool(((raw.detach() >= 0) & torch.isfinite(raw.detach())).all()):
            raise ValueError(f"euler_maruyama: diffusion(tau) must be finite and >= 0, got {raw!r} at tau={tau}")
        return raw
    value = one_number(raw)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
        raise ValueError(f"euler_maruyama: diffusion(tau) must be a finite number >= 0, got {raw!r} at tau={tau}")
    return float(value)


#: The samplers by name (``FlowMatching(sampler=...)`` picks one).
SAMPLERS = {"ancestral": ancestral, "ddim": ddim, "euler": euler, "heun": heun, "euler_maruyama": euler_maruyama}
