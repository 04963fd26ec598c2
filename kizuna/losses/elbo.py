r"""Evidence lower bounds: `ELBO` and the importance-weighted `IWAE`.

.. math::
    \mathrm{ELBO} = \mathbb{E}_{q(z|x)}[\log p(x,z) - \log q(z|x)] \le \log p(x)

    \mathrm{IWAE}_k = \mathbb{E}_{z_{1:k} \sim q}\Big[\log \frac1k \sum_{i=1}^k
        \frac{p(x, z_i)}{q(z_i|x)}\Big],\qquad \mathrm{ELBO} = \mathrm{IWAE}_1 \le
        \mathrm{IWAE}_k \le \mathrm{IWAE}_{k+1} \le \log p(x)

(Burda et al. 2015, arXiv:1509.00519).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from kizuna.distributions.base import repeat_batch
from kizuna.distributions.torch_dist import TorchDistribution
from kizuna.losses.base import EvalContext, Loss, Tensor
from kizuna.losses.expectation import Expectation, draw
from kizuna.losses.log_prob import LogProb


class ELBO(Expectation):
    """:math:`\\mathbb{E}_{q}[\\log p - \\log q]` per batch row; ``p`` is the joint :math:`p(x,z)`."""

    def __init__(self, p: Any, q: Any, sample_shape: Sequence[int] = ()) -> None:
        super().__init__(q, LogProb(p) - LogProb(q), sample_shape=sample_shape)
        self.joint = p

    def _own_distributions(self) -> list[Any]:
        return [self.joint, self.p]


class IWAE(Loss):
    """The importance-weighted bound with ``k`` samples per row (module docstring).

    >>> import torch
    >>> from kizuna.distributions import Normal
    >>> prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
    >>> lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    >>> q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    >>> bound = IWAE(lik * prior, q, k=100)
    >>> print(bound)
    log 1/100 sum_k p(x,z)/q(z|x)
    >>> bound.eval({"x": torch.zeros(5)}).shape
    torch.Size([5])

    ``q`` must be reparameterisable (gradients flow through the draws).
    """

    def __init__(self, p: Any, q: Any, k: int = 5) -> None:
        if k < 1:
            raise ValueError(f"IWAE needs k >= 1, got {k}")
        if not q.has_reparam:
            raise ValueError(
                f"IWAE needs a reparameterisable proposal; {q.prob_text} ({q.distribution_name}) is not"
            )
        super().__init__(q.input_var + [v for v in p.var + p.input_var if v not in q.var])
        self.p, self.q, self.k = p, q, k

    def _own_distributions(self) -> list[Any]:
        return [self.p, self.q]

    def _value(self, ctx: EvalContext) -> Tensor:
        shared = self._draw_once(ctx)
        if shared is not None:
            values, log_q = shared
        else:
            values, _ = draw(self.q, ctx, self.k, reparam=True)
            log_q = self.q.get_log_prob(values).reshape(self.k, -1)
        log_w = self.p.get_log_prob(values).reshape(self.k, -1) - log_q
        return torch.logsumexp(log_w, 0) - math.log(self.k)

    def _draw_once(self, ctx: EvalContext) -> tuple[dict[str, Any], Tensor] | None:
        """With a proposal of one torch family conditioned on the data: its parameters once per row
        (not once per draw), ``k`` draws from it and their log-density; None otherwise.

        The draws are the ones `draw` makes (the same random stream), and :math:`q(z|x)` is one
        distribution for the ``k`` draws of a row even when its network is stochastic (dropout).
        """
        q, k = self.q, self.k
        if not isinstance(q, TorchDistribution) or k == 1 or not q.input_var:
            return None
        q._require(ctx.values, q.input_var)
        dist, batched = q._torch_dist(ctx.values)
        rows = dist.batch_shape[0] if batched and dist.batch_shape else None
        if rows is None or any(isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] != rows
                               for v in ctx.values.values()):
            return None  # unbatched, or rows that broadcast: draw() handles them
        z = dist.rsample((k,))  # (k, B, *features): rows i*B:(i+1)*B of the flattened draws are copy i
        log_q = dist.log_prob(z)
        own = set(q.var)
        values = {name: repeat_batch(v, k) for name, v in ctx.values.items() if name not in own}
        values[q.var[0]] = z.reshape(-1, *z.shape[2:])
        ctx.samples[q.var[0]] = z
        return values, log_q

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["iwae"].format(self.p.prob_text, self.q.prob_text, self.k)
