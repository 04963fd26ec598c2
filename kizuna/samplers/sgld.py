r"""`SGLD`: Langevin sampling of an energy model with a persistent replay buffer (Du & Mordatch 2019).

Each call draws starting points from a buffer of earlier samples (a fraction ``reinit`` restarted
from uniform noise), runs

.. math:: x_{k+1} = x_k + \frac{\lambda}{2}\nabla_x \log p_\theta(x_k) + \sigma z_k,\qquad z_k \sim \mathcal{N}(0, I)

for ``n_steps`` steps and writes the results back (arXiv:1903.08689). As in the paper, the step
:math:`\lambda` and the noise :math:`\sigma` are set separately (:math:`\sigma = \sqrt{\lambda}` is
exact Langevin dynamics); with ``clamp`` the chain stays in ``[low, high]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kizuna._data import check_count, check_non_negative, check_positive, check_shape
from kizuna.distributions.base import Distribution, Tensor
from kizuna.samplers.langevin import score_of
from kizuna.samplers.paths import _network_tensor


class SGLD(nn.Module):
    """Draws from :math:`p_\\theta(x)` (e.g. an `EnergyDistribution`) with a replay buffer (module docstring).

    Args:
        p: an unconditioned distribution with a (possibly unnormalised) log-density.
        features_shape: the shape of one draw.
        buffer_size: samples kept between calls (a buffer in ``state_dict``).
        reinit: the fraction of chains restarted from uniform noise at each call.
        n_steps, step_size, noise_scale: the chain's length, :math:`\\lambda > 0` and :math:`\\sigma \\ge 0`
            (0: noiseless gradient steps).
        low, high: the uniform initialisation range (and the clamp range).
        clamp: keep the chain in ``[low, high]``.
    """

    def __init__(self, p: Distribution, features_shape: Sequence[int], buffer_size: int = 10000,
                 reinit: float = 0.05, n_steps: int = 60, step_size: float = 10.0, noise_scale: float = 0.005,
                 low: float = -1.0, high: float = 1.0, clamp: bool = True) -> None:
        super().__init__()
        if p.cond_var:
            raise ValueError(f"SGLD samples an unconditioned distribution; {p.prob_text} is conditioned")
        check_count("SGLD: buffer_size", buffer_size, 1)
        check_count("SGLD: n_steps", n_steps, 0)
        # a sequence of sizes, by the paths' and DDPM's rule (a bare 2 or None raised a raw TypeError)
        features_shape = check_shape("SGLD: features_shape", features_shape)
        if p.features_shape and torch.Size(features_shape) != p.features_shape:  # (draws p could not score)
            raise ValueError(f"SGLD: features_shape {list(features_shape)} differs from the shape "
                             f"{list(p.features_shape)} that {p.prob_text} declares")
        # as langevin_dynamics: the chain must follow the score (a string raised a bare TypeError)
        check_positive("SGLD: step_size", step_size)
        check_non_negative("SGLD: noise_scale", noise_scale)  # 0: noiseless gradient steps
        if not (0.0 <= reinit <= 1.0 and math.isfinite(low) and math.isfinite(high) and low < high):
            # (a NaN or infinite bound made the whole buffer NaN)
            raise ValueError(f"SGLD: need 0 <= reinit <= 1 and low < high, got reinit={reinit!r}, low={low!r}, "
                             f"high={high!r}")
        buffer_size, n_steps = int(buffer_size), int(n_steps)
        self.p = p
        self.features_shape = torch.Size(features_shape)
        self.reinit, self.n_steps = reinit, n_steps
        self.step_size, self.noise_scale = float(step_size), float(noise_scale)
        self.low, self.high, self.clamp = low, high, clamp
        like = self._like()
        self.register_buffer("buffer", self._uniform(buffer_size, like if like is not None else torch.empty(0)))

    def _like(self) -> Tensor | None:
        """The tensor giving the energy model its dtype and device: its first floating parameter, else its first
        floating buffer (an exact or frozen energy held in buffers: a float64 one got a float32 buffer and float32
        draws), as the paths read a network (`kizuna.samplers.paths._network_tensor`); None when it has neither."""
        return _network_tensor(self.p)

    def _follow_model(self) -> None:
        """Convert the buffer (its contents kept) to the model's current dtype and device when the model was
        converted after this sampler was built (``p.double()``, ``p.to(device)``); nothing changes otherwise."""
        like = self._like()
        if like is not None and (self.buffer.dtype != like.dtype or self.buffer.device != like.device):
            self.buffer = self.buffer.to(dtype=like.dtype, device=like.device)

    def _uniform(self, n: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, *self.features_shape, dtype=like.dtype, device=like.device, generator=generator)
        return self.low + (self.high - self.low) * u

    def run(self, x: Tensor, n_steps: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """The chain from ``x`` (no gradients reach the parameters); its noise from ``generator`` (default torch's
        global one)."""
        check_count("SGLD: n_steps", n_steps, 0)  # (-1 ran no step silently, 2.5 failed in range())
        score = score_of(self.p)
        x = x.detach()
        with torch.no_grad():
            for _ in range(self.n_steps if n_steps is None else int(n_steps)):
                noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
                x = x + 0.5 * self.step_size * score(x) + self.noise_scale * noise
                if self.clamp:
                    x = x.clamp(self.low, self.high)
        return x

    def sample(self, batch_n: int, n_steps: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``batch_n`` draws started from the buffer (module docstring); they replace their buffer rows. Every random
        choice (rows, restarts, noise) comes from ``generator`` (default torch's global one), on the buffer's device.

        The buffer follows the model: converted to its dtype and device first if the model was moved after the
        sampler was built. Inside ``torch.inference_mode()`` the draws are those made under ``torch.no_grad()``
        (`kizuna.samplers.score_of`)."""
        check_count("SGLD.sample: batch_n", batch_n, 0)
        check_count("SGLD.sample: n_steps", n_steps, 0)  # before the buffer is touched
        self._follow_model()
        idx = torch.randint(0, self.buffer.shape[0], (batch_n,), device=self.buffer.device, generator=generator)
        start = self.buffer[idx]
        fresh = torch.rand(batch_n, device=start.device, generator=generator) < self.reinit
        start = torch.where(fresh.reshape(-1, *([1] * len(self.features_shape))),
                            self._uniform(batch_n, start, generator), start)
        x = self.run(start, n_steps, generator)
        if self.buffer.is_inference() and not torch.is_inference_mode_enabled():
            # a sampler built inside torch.inference_mode(), now sampled outside it: its buffer is an inference tensor,
            # which torch refuses to update in place there ("Inplace update to inference tensor outside InferenceMode")
            self.buffer = self.buffer.clone()
        self.buffer[idx] = x
        return x
