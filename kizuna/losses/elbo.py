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

import torch

from kizuna._text import symbol
from kizuna.distributions.base import Distribution, require_distributions
from kizuna.formula.expr import EvalContext, Loss, Tensor
from kizuna.formula.log_prob import LogProb
from kizuna.losses.expectation import Expectation, draw


class ELBO(Expectation):
    """:math:`\\mathbb{E}_{q}[\\log p - \\log q]` per batch row; ``p`` is the joint :math:`p(x,z)`."""

    def __init__(self, p: Distribution, q: Distribution, sample_shape: Sequence[int] = ()) -> None:
        super().__init__(q, LogProb(p) - LogProb(q), sample_shape=sample_shape)
        self.joint = p

    def _own_distributions(self) -> list[Distribution]:
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

    precedence = 35  # a function application (log 1/K sum ...): parenthesised as the base of a power

    def __init__(self, p: Distribution, q: Distribution, k: int = 5) -> None:
        require_distributions("IWAE", p=p, q=q)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"IWAE needs an integer k >= 1 (draws per row), got k={k!r}")
        if not q.has_reparam:
            raise ValueError(
                f"IWAE needs a reparameterisable proposal; {q.prob_text} ({q.distribution_name}) is not"
            )
        super().__init__(q.input_var + [v for v in p.var + p.input_var if v not in q.var])
        self.p, self.q, self.k = p, q, k

    def _own_distributions(self) -> list[Distribution]:
        return [self.p, self.q]

    def _value(self, ctx: EvalContext) -> Tensor:
        # q's parameters are computed once per row and shared by its k draws and their log-density
        # (see Distribution._sample_n): q(z|x) is one distribution for a row's draws even when its
        # network is stochastic (dropout)
        values, _ = draw(self.q, ctx, self.k, reparam=True)
        log_w = (self.p.get_log_prob(values) - self.q.get_log_prob(values)).reshape(self.k, -1)
        return torch.logsumexp(log_w, 0) - math.log(self.k)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["iwae"].format(symbol(self.p, fmt), symbol(self.q, fmt), self.k)
