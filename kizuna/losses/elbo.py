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
from collections.abc import Callable, Sequence

import torch

from kizuna._text import symbol
from kizuna.distributions.base import Distribution, require_distributions
from kizuna.distributions.moe import weights_score
from kizuna.formula.expr import EvalContext, Loss, Tensor
from kizuna.formula.log_prob import LogProb
from kizuna.losses.expectation import Expectation, collect_score, draw


class ELBO(Expectation):
    """:math:`\\mathbb{E}_{q}[\\log p - \\log q]` per batch row; ``p`` is the joint :math:`p(x,z)`."""

    def __init__(self, p: Distribution, q: Distribution, sample_shape: Sequence[int] = ()) -> None:
        super().__init__(q, LogProb(p) - LogProb(q), sample_shape=sample_shape)
        self.joint = p

    def _own_distributions(self) -> list[Distribution]:
        return [self.joint, self.p]


def _exclusive(a: Tensor, cumulate: Callable[[Tensor, int], Tensor], combine: Callable[[Tensor, Tensor], Tensor],
               empty: float) -> Tensor:
    """Over dim 0 of ``a``, ``combine`` of every entry but the one at each index (``cumulate``: the running ``combine``,
    ``empty``: its identity), from the running values before and after each index (no subtraction: exact for -inf and
    for one entry far above the others)."""
    pad = a.new_full((1, *a.shape[1:]), empty)
    before = torch.cat([pad, cumulate(a[:-1], 0)])
    after = torch.cat([cumulate(a[1:].flip(0), 0).flip(0), pad])
    return combine(before, after)


def _vimco_signal(log_w: Tensor) -> Tensor:
    r""":math:`L_k - b_j` for each draw ``j`` of each row (``log_w``: ``(k, rows)``, detached), where :math:`b_j` is
    VIMCO's baseline: the bound with :math:`\log w_j` replaced by the mean of the other draws' log-weights (a function
    of the other draws only, so that the score term keeps its mean), and :math:`L_1` for ``k=1`` (no other draw: no
    baseline). 0 where it is not finite, so that the term stays zero-valued (the value unchanged): a row whose weights
    are all 0 or NaN, or a draw whose other draws all have weight 0 (its baseline -inf; that draw's term is dropped)."""
    k = log_w.shape[0]
    if k == 1:
        signal = log_w
    else:
        mean_others = _exclusive(log_w, torch.cumsum, torch.add, 0.0) / (k - 1)
        others = _exclusive(log_w, torch.logcumsumexp, torch.logaddexp, -math.inf)
        signal = torch.logsumexp(log_w, 0) - torch.logaddexp(others, mean_others)
    return torch.where(signal.isfinite(), signal, 0.0)


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

    ``q`` must be reparameterisable (gradients flow through the draws). A `MixtureOfNormal` with learnable weights
    among the factors of ``q`` draws its expert without differentiating the choice: for its weights the bound adds the
    score-function term :math:`\\sum_j (L_k - b_j)\\,\\nabla_w \\log q(z_j)` (the experts' densities held fixed, as
    `Expectation` does, see `MixtureOfNormal`), zero-valued, so that their gradient is unbiased too. :math:`b_j` is
    VIMCO's leave-one-out baseline (Mnih & Rezende 2016, arXiv:1602.06725): the bound with :math:`\\log w_j` replaced
    by the mean of the other draws' log-weights, a function of the other draws only (for ``k=1``, :math:`b_1 = 0`).
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
        bound = torch.logsumexp(log_w, 0) - math.log(self.k)
        # a learnable mixture's draws: the weights' score of each (None without one: nothing added)
        score = weights_score([values.get(v) for v in self.q.var])
        if score is None:
            return bound
        collect_score(ctx, self.q, score, self.k)
        score = score - score.detach()
        return bound + (_vimco_signal(log_w.detach()) * score.reshape(log_w.shape)).sum(0)

    def _render(self, fmt: dict[str, str]) -> str:
        return fmt["iwae"].format(symbol(self.p, fmt), symbol(self.q, fmt), self.k)
