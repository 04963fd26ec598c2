r"""Gaussian probability paths: what diffusion, score-based and flow-matching models share.

Each family defines a path from a Gaussian to the data whose point at time :math:`\tau` is

.. math:: x_\tau = a(\tau)\, x_{\mathrm{data}} + b(\tau)\, \epsilon,\qquad \epsilon \sim \mathcal{N}(0, I),

and a network that predicts, at :math:`(x_\tau, \tau)`, the clean point and the noise
:math:`(\hat x_0, \hat\epsilon)` with :math:`x_\tau = a\hat x_0 + b\hat\epsilon` (an ε-network, a score
:math:`\nabla\log p_\tau = -\hat\epsilon/b`, or a velocity). The samplers (`kizuna.samplers.integrators`)
only see this interface, so one DDIM, Euler, Heun or Euler–Maruyama serves every family:

* `DiffusionPath` — a DDPM in Karras et al.'s variance-exploding coordinates (arXiv:2206.00364):
  :math:`y = x/\sqrt{\bar\alpha_t}`, :math:`\tau = s_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}`, so
  :math:`a = 1`, :math:`b = s` and :math:`dy/ds = \hat\epsilon`; Euler is then DDIM with η = 0.
  At :math:`s = 0` (``t = 0``) :math:`y = x_0`.
* `ScorePath` — a noise-conditional score network over levels :math:`\sigma_1 > \dots > \sigma_L`
  (NCSN): :math:`a = 1`, :math:`b = \sigma`, :math:`\hat\epsilon = -\sigma s(x, i)`.
* `LinearPath` — flow matching's path :math:`x_t = t x_1 + (1 - (1-\sigma_{min})t) x_0` (Lipman et
  al. 2023, arXiv:2210.02747), :math:`t` from 0 (noise) to 1 (data), from a velocity :math:`v(x, t)`:
  :math:`\hat\epsilon = x - t v`, :math:`\hat x_0 = x + (1-t) v` when :math:`\sigma_{min} = 0`.

This module needs only torch at import; the distributions hand their networks to it (duck-typed). A conditional
`DiffusionPath` reads its context's rows by the distributions' rule (`kizuna.distributions.flow_matching.
context_of_draws`), imported when it is used.
"""

from __future__ import annotations

import itertools
import math
import numbers
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch

from kizuna._data import check_count, check_shape, computing_dtype, first_flagged, noise_levels, sigma_min_value

Tensor = torch.Tensor


class Prediction(NamedTuple):
    """The network's reading of :math:`x_\\tau`: clean point and noise, :math:`x = a\\hat x_0 + b\\hat\\epsilon`,
    and the velocity where the network gives it (``v``, a flow-matching network): the ODE then takes it as it is
    (rebuilt from the clean point and the noise it lost float32 precision near the noise end, where it divides by
    :math:`\\tau`)."""

    x0: Tensor
    eps: Tensor
    v: Tensor | None = None


class GaussianPath:
    """The interface the samplers use (module docstring). Times run from noise to data."""

    #: whether the network may be evaluated at the clean end (Heun's last correction needs it)
    clean_evaluable: bool = False
    #: the time of the clean end
    end: float = 0.0

    #: the time of the noise end where the path has one (flow matching's 0); None: no fixed bound (a noise level)
    start: float | None = None

    #: the number of draws a sampler makes when neither ``n`` nor a start ``x`` is given: the rows of a conditional
    #: path's context (`DiffusionPath`, `kizuna.distributions.FlowMatching.path`); None: one
    n_draws: int | None = None

    def times(self, n_steps: int) -> list[float]:
        """``n_steps + 1`` times from the noise end to the clean end."""
        raise NotImplementedError

    def prior_level(self) -> float | None:
        """The time at which `prior` draws where that is a noise level whose :math:`\\mathcal{N}(0, b^2 I)` stands in
        for the noised data (a DDPM's :math:`s_T`, a score model's :math:`\\sigma_1`, well above the data's), not
        a fixed start; None where the prior is the path's exact start (flow matching) or the path does not say.
        `kizuna.samplers.heun` and `kizuna.samplers.euler_maruyama` take their step from this time as DDIM's
        (see there)."""
        return None

    def check_times(self, times: Sequence[Any]) -> list[float]:
        """Times given to a sampler as Python floats: finite, strictly monotone toward the clean end (``end``) and
        within the path (no time past ``end``, or before ``start``); a ValueError naming the first that is not (NaN
        drew NaN, [0, 2] on flow matching's [0, 1] ran past the data, a repeated time took a step of zero)."""
        try:
            grid = [float(t) for t in times]
        except (TypeError, ValueError):
            raise ValueError(f"sampler: times must be numbers, got {times!r}") from None
        if len(grid) < 2:
            raise ValueError("a sampler needs at least two times (one step)")
        # flow matching's 0 -> 1, noise levels falling to 0; a path without a start runs from its first time
        rising = self.start < self.end if self.start is not None else self.end > grid[0]
        for i, t in enumerate(grid):
            beyond = t > self.end if rising else t < self.end
            before = self.start is not None and (t < self.start if rising else t > self.start)
            if not math.isfinite(t) or beyond or before:
                span = f"[{self.start}, {self.end}]" if self.start is not None else f"toward {self.end}"
                raise ValueError(f"sampler: times[{i}] = {t} is outside the path ({type(self).__name__}'s times run "
                                 f"{span}, noise to data)")
            if i and (t <= grid[i - 1] if rising else t >= grid[i - 1]):
                raise ValueError(f"sampler: times must run strictly from the noise end to the data end ({self.end}); "
                                 f"times[{i - 1}] = {grid[i - 1]} then times[{i}] = {t}")
        return grid

    def coefficients(self, tau: float) -> tuple[float, float]:
        """:math:`(a(\\tau), b(\\tau))`."""
        raise NotImplementedError

    def rates(self, tau: float) -> tuple[float, float]:
        """:math:`(\\dot a(\\tau), \\dot b(\\tau))`, derivatives in this path's time."""
        raise NotImplementedError

    def predict(self, x: Tensor, tau: float) -> Prediction:
        """:math:`(\\hat x_0, \\hat\\epsilon)` at ``(x, tau)``."""
        raise NotImplementedError

    def prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of :math:`x` at the first time (the Gaussian end)."""
        raise NotImplementedError

    def ancestral_step(self, x: Tensor, tau: float, tau_next: float, pred: Prediction, noise: Tensor | None
                       ) -> Tensor:
        """One step of the model's own reverse kernel given the prediction (``noise`` None: its mean)."""
        raise NotImplementedError(f"{type(self).__name__} has no ancestral kernel; use ddim(..., eta=1)")

    def velocity(self, x: Tensor, tau: float, pred: Prediction | None = None) -> Tensor:
        """:math:`dx/d\\tau = \\dot a\\hat x_0 + \\dot b\\hat\\epsilon` (the probability-flow ODE)."""
        pred = self.predict(x, tau) if pred is None else pred
        if pred.v is not None:
            return pred.v
        da, db = self.rates(tau)
        return da * pred.x0 + db * pred.eps


def _noise(shape: Sequence[int], like: Tensor | None, generator: torch.Generator | None,
           dtype: torch.dtype | None = None, device: Any = None) -> Tensor:
    dtype = like.dtype if like is not None else (dtype or torch.get_default_dtype())
    device = like.device if like is not None else device
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


class _Sampling(threading.local):
    """Per thread: the name of the integrator that is running (`kizuna.samplers.integrators`), for `_checked`'s
    message; None outside one."""

    def __init__(self) -> None:
        self.sampler: str | None = None


_SAMPLING = _Sampling()


@contextmanager
def _sampling(name: str) -> Iterator[None]:
    """Within the block, `_checked`'s errors name the sampler ``name`` too (the paths' ``predict`` does not know it)."""
    outer, _SAMPLING.sampler = _SAMPLING.sampler, name
    try:
        yield
    finally:
        _SAMPLING.sampler = outer


def _checked(out: Any, x: Tensor, who: str, what: str = "the score", where: str = "") -> Tensor:
    """A network's output at ``x`` (a score, a velocity, a noise prediction), checked to be a tensor of ``x``'s shape;
    a ValueError naming ``who``, ``what`` and the sampler running it (`_sampling`) otherwise: a (B, 1) output for
    (B, D) draws was broadcast over the features into wrong draws silently, another width stopped with torch's bare
    broadcast error. The one check of every sampler (`LinearPath`, `ScorePath`, `DiffusionPath`,
    `kizuna.samplers.langevin_dynamics`): a comparison of shapes on the host, no read of the device."""
    if isinstance(out, Tensor) and out.shape == x.shape:
        return out
    sampler = _SAMPLING.sampler
    who = who if sampler is None or sampler == who else f"{sampler}: {who}"
    if not isinstance(out, Tensor):
        raise ValueError(f"{who}: {what} must be a torch.Tensor of x's shape {tuple(x.shape)}, got "
                         f"{type(out).__name__}{where}")
    raise ValueError(f"{who}: {what} has shape {tuple(out.shape)}, x has {tuple(x.shape)}{where}")


def _validation_enabled() -> bool:
    """`kizuna.distributions.validation_enabled`, imported at the call: kizuna.distributions imports this module, so it
    cannot be imported here at the top. A module global assigned at the first call, as before, made ``torch.compile``
    trace a sampler twice: dynamo guarded on the global being None, and the trace's own assignment failed that guard."""
    from kizuna.distributions.torch_dist import validation_enabled

    return validation_enabled()


def _check_draws(who: str, x: Tensor, after: str, hint: str) -> None:
    """The draws ``x`` a sampler returns, checked to be finite while validation is on
    (`kizuna.distributions.validation`; not on the meta device): a FloatingPointError naming the sampler ``who``, the
    steps taken (``after``), how many rows hold NaN or inf and the first such entry, and ``hint`` (what to look at). A
    network that emits NaN, or steps that diverge, gave all-NaN draws silently. Checked once, at the end (one read of
    the device a call): a flag kept per step, to name the first bad step, cost a reduction a step (a 50-step Euler run
    of a small network took 9-20% longer on one CPU thread); this check is about 1% of that run."""
    if not _validation_enabled() or x.device.type == "meta":
        return
    x = x.detach()
    if math.isfinite(x.sum().item()):  # (NaN and inf reach the sum: one reduction, half isfinite(x).all()'s time)
        return
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):  # finite draws whose sum overflowed (large float16 ones)
        return
    rows = int(bad.reshape(bad.shape[0], -1).any(1).sum()) if x.dim() else 1
    raise FloatingPointError(f"{who}: the draws are not finite after {after}: {rows} of {x.shape[0] if x.dim() else 1} "
                             f"rows hold NaN or inf (the first: {first_flagged(x, bad)}); {hint}")


def _snapped(grid: list[float], points: Tensor, floor: float) -> list[float]:
    """Each time of ``grid`` taken as the nearest of ``points`` (a path's trained steps or noise levels) where it is
    that point up to ``1e-6 * max(floor, |point|)`` (float32 rounding, or six decimals below ``floor``; the path's own
    times given back as a float32 tensor were refused as no trained step or level), any other time as it is.
    `DiffusionPath.check_times` takes ``floor`` 1 (its rule since it snapped: an absolute 1e-6 below
    :math:`s_t = 1`, so its times written with six decimals are its steps), `ScorePath.check_times` 0 (purely
    relative: a floor would take its end 0.0 as a level below 1e-6)."""
    out = []
    for tau in grid:
        exact = float(points[int(torch.argmin((points - tau).abs()))])
        out.append(exact if abs(exact - tau) <= 1e-6 * max(floor, abs(exact)) else tau)
    return out


def _grid(points: Sequence[float], n_steps: int | None) -> list[int]:
    """Indices of ``n_steps`` evenly spread points of ``points`` (first and last kept)."""
    n = len(points)
    if n_steps is None or n_steps >= n - 1:
        if n_steps is not None and n_steps > n - 1:
            raise ValueError(f"n_steps={n_steps} exceeds the {n - 1} steps this model was trained on")
        return list(range(n))
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    idx = torch.linspace(0, n - 1, n_steps + 1, dtype=torch.float64).round().long().tolist()
    return sorted(set(idx))


def _network_tensor(network: Any) -> Tensor | None:
    """The tensor that gives ``network`` its dtype and device, where it is an ``nn.Module`` or a bound method of one
    (``net``, ``net.score``): its first floating parameter, else its first floating buffer (an exact or frozen network
    held in buffers); None for another callable (a function, a lambda) or a module without floating tensors. The one
    rule of the paths and of the distributions and samplers built on a network (`kizuna.distributions.FlowMatching`,
    `kizuna.samplers.SGLD`)."""
    module = network if isinstance(network, torch.nn.Module) else getattr(network, "__self__", None)
    if not isinstance(module, torch.nn.Module):
        return None
    return next((t for t in itertools.chain(module.parameters(), module.buffers()) if t.is_floating_point()), None)


def _network_dtype(network: Any) -> torch.dtype | None:
    """The dtype of ``network`` (`_network_tensor`'s), None where it has none."""
    tensor = _network_tensor(network)
    return None if tensor is None else tensor.dtype


def _draw_dtype(dtype: torch.dtype | None, network: Any, level: Any = None) -> torch.dtype:
    """A path's prior dtype: ``dtype`` where given, else the network's (`_network_dtype`), else that of ``level``
    where it is a floating tensor (`LinearPath`'s ``sigma_min``), else torch's default dtype."""
    if dtype is not None:
        return dtype
    found = _network_dtype(network)
    if found is not None:
        return found
    if isinstance(level, Tensor) and level.is_floating_point():
        return level.dtype
    return torch.get_default_dtype()


class DiffusionPath(GaussianPath):
    """A DDPM's reverse process as a path (module docstring), in the scaled coordinates :math:`y`.

    The path's state, its prior's draws and so the samplers' draws are in the schedule's computing dtype
    (`kizuna._data.computing_dtype` of ``schedule.dtype``): float32 for a half-precision model, whose network still
    sees :math:`x_t` in its own dtype (`kizuna.distributions.DiffusionReverse.epsilon`). In 16 bits :math:`y` of a
    cosine schedule's prior reaches :math:`s_T \\approx 2\\cdot10^4`: float16 overflowed past 65504 (infinite draws),
    and a bfloat16 state biased the 1000-step ancestral chain (mean 2.08 and standard deviation 0.62 for data
    :math:`\\mathcal{N}(1.5, 0.3^2)`). The network's own rounding is still amplified by :math:`s` in
    :math:`\\hat x_0 = y - s\\hat\\epsilon`: from a cosine prior (:math:`s_T = 20291` for 1000 steps) the deterministic
    samplers (DDIM with η = 0, Euler, Heun) at 10 to 20 steps moved draws by up to 3.3 (a bfloat16 network) or 0.43
    (float16) from float32's, as a float32 model whose network rounds its input and output to 16 bits does; the
    stochastic samplers, and any sampler on a linear schedule, stayed within 0.03.

    Args:
        reverse: a `kizuna.distributions.DiffusionReverse` (its ``schedule``, ``epsilon`` and context).
        features_shape: the shape of one :math:`x_0`.
        context: values of the reverse process's context variables (a conditional model), batch first: one row per
            draw, or one row for every draw (as `kizuna.distributions.DDPM.sample` reads it); the samplers' ``n``
            defaults to its rows (`n_draws`), and a value of another number of rows than the draws is a ValueError
            naming both (`kizuna.distributions.flow_matching.context_of_draws`; torch's error came from inside the
            network). The attribute ``context`` is read at each use: a context set after the path was built
            (``path.context = {...}``, or one value of it replaced) conditions the later draws, and ``n_draws``
            follows its rows (the context read once per number of draws while it holds the same values).
    """

    def __init__(self, reverse: Any, features_shape: Sequence[int], context: Mapping[str, Tensor] | None = None
                 ) -> None:
        self.reverse, self.context = reverse, dict(context or {})
        self.features_shape = check_shape("DiffusionPath: features_shape", features_shape)
        who = f"DiffusionPath of {getattr(reverse, 'prob_text', type(reverse).__name__)}"
        # the values the network reads (other keys are passed as given)
        self._rows = _ContextRows(who, getattr(reverse, "context_var", None))
        self._rows.draws(self.context)  # (the values' rows checked against each other here)
        # host copies: the samplers read these tables as Python numbers at every step (about 14 reads a reverse step),
        # each of which was a device-to-host sync for a model on a GPU; the network's own tables stay on its device
        # in float64 from the schedule's float64 betas: 1 - alpha-bar of the float32 table's alpha-bar cancelled
        # (1.7e-4 relative at t = 1 of a linear schedule, 2.9e-3 of a cosine one of 4000 steps)
        ab = reverse.schedule._alpha_bar64().detach().to(device="cpu", dtype=torch.float64)
        self.alpha_bar = ab  # index t = step t, alpha_bar[0] = 1
        self.sigmas = ((1 - ab) / ab).sqrt()  # s_t, increasing in t; s_0 = 0

    @property
    def n_draws(self) -> int | None:  # type: ignore[override]
        """The rows of the context's conditioning values (`GaussianPath.n_draws`), of the context as it is now."""
        return self._rows.draws(self.context or {})

    def prior_level(self) -> float:
        return float(self.sigmas[-1])

    def times(self, n_steps: int | None) -> list[float]:
        T = len(self.sigmas) - 1
        steps = [T - i for i in _grid(list(range(T + 1)), n_steps)]
        return [float(self.sigmas[t]) for t in steps]

    def check_times(self, times: Sequence[Any]) -> list[float]:
        """`GaussianPath.check_times`, each time then taken as the trained step's :math:`s_t` where it is that step's
        up to float32 rounding (`_snapped`; the path's own times given as a float32 tensor were refused as no trained
        step), or up to 1e-6 below :math:`s_t = 1` (the times written with six decimals, as a config or a printout
        keeps them)."""
        return _snapped(super().check_times(times), self.sigmas, 1.0)

    def context_for(self, x: Tensor) -> dict[str, Tensor]:
        """The context (``self.context`` as it is now) with one row per row of ``x`` (class docstring)."""
        context = self.context or {}
        return self._rows(context, x.shape[0]) if context else context

    def step_of(self, s: float) -> int:
        """The integer step whose :math:`s_t` is ``s``."""
        t = int(torch.argmin((self.sigmas - s).abs()))
        if abs(float(self.sigmas[t]) - s) > 1e-9 * max(1.0, s):
            raise ValueError(f"DiffusionPath: s={s} is not one of the trained steps")
        return t

    def coefficients(self, tau: float) -> tuple[float, float]:
        return 1.0, tau

    def rates(self, tau: float) -> tuple[float, float]:
        return 0.0, 1.0

    def scaled_input(self, y: Tensor, tau: float) -> tuple[Tensor, Tensor]:
        """:math:`x_t = \\sqrt{\\bar\\alpha_t}\\, y` and the step ``t`` (a long tensor per row)."""
        t = self.step_of(tau)
        steps = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
        return y * math.sqrt(float(self.alpha_bar[t])), steps

    def predict(self, x: Tensor, tau: float) -> Prediction:
        if tau == 0:
            raise ValueError("DiffusionPath: the network is not defined at t = 0")
        xt, steps = self.scaled_input(x, tau)
        eps = _checked(self.reverse.epsilon(xt, steps, self.context_for(xt)), x, "DiffusionPath",
                       "the noise prediction")
        return Prediction(x - tau * eps, eps)

    def ancestral_step(self, x: Tensor, tau: float, tau_next: float, pred: Prediction, noise: Tensor | None
                       ) -> Tensor:
        """:math:`x_{t-1} \\sim p_\\theta(x_{t-1}|x_t)` by the reverse process's own mean and variance."""
        t = self.step_of(tau)
        if self.step_of(tau_next) != t - 1:
            raise ValueError("ancestral sampling of a DDPM runs over every step (n_steps=None); "
                             "for fewer steps use ddim(..., eta=1), the respaced ancestral sampler")
        xt, steps = self.scaled_input(x, tau)
        mean, var = self.reverse.mean_and_variance(xt, steps, pred.eps, self.context_for(xt))
        x_prev = mean if noise is None else mean + var.sqrt() * noise
        return x_prev / math.sqrt(float(self.alpha_bar[t - 1]))

    def prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        dtype = computing_dtype(self.reverse.schedule.dtype)  # (class docstring)
        x_T = _noise((n, *self.features_shape), None, generator, dtype, self.reverse.schedule.betas.device)
        return x_T / math.sqrt(float(self.alpha_bar[-1]))


class ScorePath(GaussianPath):
    """A noise-conditional score :math:`s(x, i) \\approx \\nabla_x\\log p_{\\sigma_i}(x)` as a path (NCSN).

    Args:
        score: ``score(x, i)`` for level index ``i`` (into ``sigmas``, largest first), of the shape of ``x`` (a
            sampler refuses another shape, a 0-d or per-feature output too, which was broadcast silently).
        sigmas: the levels :math:`\\sigma_1 > \\dots > \\sigma_L`; the path ends at :math:`\\sigma = 0`,
            reached by the Tweedie step :math:`\\hat x_0 = x + \\sigma_L^2 s(x, L)`.
        features_shape: the shape of one :math:`x`.
        dtype, device: of the prior's draws (default: the score network's dtype where ``score`` is an ``nn.Module``
            or a bound method of one, that of its first floating parameter or buffer; else torch's default dtype; the
            CPU). The dtype of ``sigmas`` is not read: levels built with numpy are float64 whatever the network (a
            float32 network got float64 draws and stopped with torch's "mat1 and mat2 must have the same dtype"); a
            float64 network given as a function (a lambda) needs ``dtype=torch.float64``.
    """

    def __init__(self, score: Callable[[Tensor, int], Tensor], sigmas: Sequence[float] | Tensor,
                 features_shape: Sequence[int], dtype: torch.dtype | None = None, device: Any = None) -> None:
        levels = noise_levels("ScorePath", sigmas)
        self.score, self.levels = score, levels
        self.features_shape = check_shape("ScorePath: features_shape", features_shape)
        self.dtype = _draw_dtype(dtype, score)
        self.device = device

    def times(self, n_steps: int | None) -> list[float]:
        if n_steps is not None and n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps}")
        if n_steps is not None and n_steps > len(self.levels):
            raise ValueError(f"ScorePath: n_steps={n_steps} exceeds the model's {len(self.levels)} noise levels (one "
                             "step from each level used, the last one to sigma = 0)")
        idx = [0] if n_steps == 1 else _grid(self.levels, None if n_steps is None else n_steps - 1)
        return [self.levels[i] for i in idx] + [0.0]

    def prior_level(self) -> float:
        return self.levels[0]

    def check_times(self, times: Sequence[Any]) -> list[float]:
        """`GaussianPath.check_times`, each time then taken as the model's level where it is that level up to float32
        rounding (`_snapped`, as `DiffusionPath.check_times`; the path's own times given as a float32 tensor were
        refused as not one of the levels). Relative only: the end 0.0 is never taken as a level, however small."""
        return _snapped(super().check_times(times), torch.tensor(self.levels, dtype=torch.float64), 0.0)

    def coefficients(self, tau: float) -> tuple[float, float]:
        return 1.0, tau

    def rates(self, tau: float) -> tuple[float, float]:
        return 0.0, 1.0

    def predict(self, x: Tensor, tau: float) -> Prediction:
        if tau not in self.levels:
            raise ValueError(f"ScorePath: sigma={tau} is not one of the model's levels")
        eps = -tau * _checked(self.score(x, self.levels.index(tau)), x, "ScorePath", "the score")
        return Prediction(x - tau * eps, eps)

    def prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.levels[0] * _noise((n, *self.features_shape), None, generator, self.dtype, self.device)


class LinearPath(GaussianPath):
    """Flow matching's path (module docstring) with a velocity :math:`v(x, t)`, ``t`` in ``[0, 1]``.

    Args:
        velocity: ``velocity(x, t)`` with ``t`` a tensor of shape ``(batch,)``, of the shape of ``x`` (a sampler
            refuses another shape, a 0-d or per-feature output too, which was broadcast silently).
        features_shape: the shape of one :math:`x_1`.
        sigma_min: the noise left at ``t = 1``.
        dtype, device: of the prior's draws (default: the velocity network's dtype where ``velocity`` is an
            ``nn.Module`` or a bound method of one, as `ScorePath`'s; for another callable, as before, the dtype of
            ``sigma_min`` where it is a floating 0-d tensor, else torch's default dtype; the CPU).
            `kizuna.distributions.FlowMatching.path` passes its network's dtype and device.
        n_draws: the samplers' default number of draws (`GaussianPath.n_draws`; default one), e.g. the rows of a
            context the velocity closes over (`kizuna.distributions.FlowMatching.path` passes them).
    """

    clean_evaluable, start, end = True, 0.0, 1.0

    def __init__(self, velocity: Callable[[Tensor, Tensor], Tensor], features_shape: Sequence[int],
                 sigma_min: float = 0.0, dtype: torch.dtype | None = None, device: Any = None,
                 n_draws: int | None = None) -> None:
        # (FlowMatching's range: a negative one divided by zero in DDIM's step, NaN gave NaN draws)
        self.v, self.sigma_min = velocity, sigma_min_value("LinearPath", sigma_min)
        self.features_shape = check_shape("LinearPath: features_shape", features_shape)
        self.dtype = _draw_dtype(dtype, velocity, sigma_min)
        check_count("LinearPath: n_draws", n_draws, 0)
        self.device, self.n_draws = device, None if n_draws is None else int(n_draws)

    def times(self, n_steps: int | None) -> list[float]:
        n = 50 if n_steps is None else n_steps
        if n < 1:
            raise ValueError(f"n_steps must be at least 1, got {n}")
        return [i / n for i in range(n + 1)]

    def coefficients(self, tau: float) -> tuple[float, float]:
        return tau, 1 - (1 - self.sigma_min) * tau

    def rates(self, tau: float) -> tuple[float, float]:
        return 1.0, -(1 - self.sigma_min)

    def predict(self, x: Tensor, tau: float) -> Prediction:
        v = _checked(self.v(x, torch.full((x.shape[0],), tau, dtype=x.dtype, device=x.device)), x, "LinearPath",
                     "the velocity")
        eps = x - tau * v  # from x = t x1 + b x0 and v = x1 - (1 - sigma_min) x0
        a, b = self.coefficients(tau)
        x0 = (x - b * eps) / a if a > 0 else v + (1 - self.sigma_min) * eps
        return Prediction(x0, eps, v)

    def prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return _noise((n, *self.features_shape), None, generator, self.dtype, self.device)


class Guided(GaussianPath):
    """Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598) of two paths over the same times.

    .. math:: \\hat\\epsilon_w = \\hat\\epsilon_\\varnothing + w(\\hat\\epsilon_c - \\hat\\epsilon_\\varnothing)

    (and the same for :math:`\\hat x_0`): ``scale`` :math:`w = 0` is the unconditional model exactly,
    :math:`w = 1` the conditional one, :math:`w > 1` guides (Ho & Salimans' weight is :math:`w - 1`).
    At :math:`w = 0` the conditional network is not evaluated. An ancestral step of a DDPM with a learned variance
    takes the variance from the conditional model (GLIDE, Nichol et al. 2022, arXiv:2112.10741, whose guided
    sampler keeps the conditional half's variance).
    """

    def __init__(self, conditional: GaussianPath, unconditional: GaussianPath, scale: float) -> None:
        for role, path in (("conditional", conditional), ("unconditional", unconditional)):
            if not isinstance(path, GaussianPath) and not all(
                    callable(getattr(path, attr, None)) for attr in ("times", "coefficients", "predict")):
                # (a network given as it is: "'function' object has no attribute 'times'")
                raise TypeError(f"guided: {role} must be a path (a GaussianPath: LinearPath(velocity, features_shape), "
                                f"ScorePath(score, sigmas, features_shape), a model's .path()), got "
                                f"{type(path).__name__}; wrap the network in its path")
        times = unconditional.times(None)
        if conditional.times(None) != times or any(conditional.coefficients(t) != unconditional.coefficients(t)
                                                   for t in times):
            raise ValueError(f"guided: the conditional and unconditional paths must be one process over the same "
                             f"times (the same times and coefficients: kind, schedule and levels), got a "
                             f"{type(conditional).__name__} and a {type(unconditional).__name__} that differ")
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            # (NaN made every draw NaN; the string "2" was read as 2)
            raise ValueError(f"guided: scale must be a finite number (0: unconditional, 1: conditional), got {scale!r}")
        self.cond, self.uncond, self.scale = conditional, unconditional, float(scale)
        # the shape of one x, for the samplers' check of a given start (None: a path that states none)
        self.features_shape = getattr(unconditional, "features_shape", None)
        self.clean_evaluable = conditional.clean_evaluable and unconditional.clean_evaluable
        self.start, self.end = unconditional.start, unconditional.end

    @property
    def n_draws(self) -> int | None:  # type: ignore[override]
        """The draws a conditional context asks for: the conditional path's, as a rule (read now: a `DiffusionPath`'s
        context may be set anew)."""
        rows = getattr(self.cond, "n_draws", None)
        return rows if rows is not None else getattr(self.uncond, "n_draws", None)

    def times(self, n_steps: int | None) -> list[float]:
        return self.uncond.times(n_steps)

    def prior_level(self) -> float | None:
        return self.uncond.prior_level()

    def check_times(self, times: Sequence[Any]) -> list[float]:
        """The unconditional path's `GaussianPath.check_times` (a `DiffusionPath`'s or a `ScorePath`'s own times given
        as a float32 tensor were refused by the generic check, at w = 0 too)."""
        return self.uncond.check_times(times)

    def coefficients(self, tau: float) -> tuple[float, float]:
        return self.uncond.coefficients(tau)

    def rates(self, tau: float) -> tuple[float, float]:
        return self.uncond.rates(tau)

    def predict(self, x: Tensor, tau: float) -> Prediction:
        u = self.uncond.predict(x, tau)
        if self.scale == 0:
            return u
        c = self.cond.predict(x, tau)
        w = self.scale
        v = None if u.v is None or c.v is None else u.v + w * (c.v - u.v)
        return Prediction(u.x0 + w * (c.x0 - u.x0), u.eps + w * (c.eps - u.eps), v)

    def velocity(self, x: Tensor, tau: float, pred: Prediction | None = None) -> Tensor:
        if pred is None and self.scale == 0:
            return self.uncond.velocity(x, tau)
        return GaussianPath.velocity(self, x, tau, pred)

    def prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.uncond.prior(n, generator)

    def ancestral_step(self, x: Tensor, tau: float, tau_next: float, pred: Prediction, noise: Tensor | None
                       ) -> Tensor:
        # the guided mean; a learned variance from the conditional model, as GLIDE's sampler (w = 0: the
        # unconditional model's, so that it is that model's sampler exactly; it was the unconditional one's at any w)
        return (self.uncond if self.scale == 0 else self.cond).ancestral_step(x, tau, tau_next, pred, noise)


def _context_of_draws(who: str, context: Mapping[str, Tensor], rows: int | None) -> tuple[dict[str, Tensor], int]:
    """`kizuna.distributions.flow_matching.context_of_draws` for a sampler's ``rows`` draws (its ``n``)."""
    from kizuna.distributions.flow_matching import context_of_draws  # (lazy: kizuna.distributions imports this module)

    return context_of_draws(who, context, rows, "n")


class _ContextRows:
    """A conditional path's context read for its draws (`_context_of_draws`: one row for every draw, or one per draw;
    another number of rows a ValueError that names ``who``), once per number of rows while the context holds the same
    values: `DiffusionPath` calls it at every network evaluation, with the context as it is then (a public attribute).

    The values are compared by identity: a context set anew, or one of its values replaced, is read again (the last
    reading per number of rows is kept); a value changed in place is seen, the reading holding views of it.

    Args:
        who: the path's text, for the messages.
        names: the conditioning variables (the values the network reads); None: every value of the context.
    """

    def __init__(self, who: str, names: Sequence[str] | None = None) -> None:
        self.who, self.names = who, None if names is None else list(names)
        self._by_rows: dict[int, tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...]]] = {}

    def conditioning(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """The values of ``context`` that the network reads."""
        return {c: v for c, v in context.items() if self.names is None or c in self.names}

    def draws(self, context: Mapping[str, Any]) -> int | None:
        """The number of draws ``context`` asks for (its conditioning values' rows); None without conditioning."""
        conditioning = self.conditioning(context)
        return _context_of_draws(self.who, conditioning, None)[1] if conditioning else None

    def __call__(self, context: Mapping[str, Any], rows: int) -> dict[str, Any]:
        """``context`` with its conditioning values as ``rows`` rows (the other values as they are)."""
        key = (*context, *map(id, context.values()))  # (the names and the values' identities; ints compare fast)
        last = self._by_rows.get(rows)
        if last is not None and last[0] == key:
            return last[1]
        conditioning = self.conditioning(context)
        out = {**context, **_context_of_draws(self.who, conditioning, rows)[0]} if conditioning else dict(context)
        # (the values held with their ids: an id is not reused while its value is kept)
        self._by_rows[rows] = (key, out, tuple(context.values()))
        return out


def guided(conditional: GaussianPath, unconditional: GaussianPath, scale: float) -> Guided:
    """See `Guided`."""
    return Guided(conditional, unconditional, scale)
