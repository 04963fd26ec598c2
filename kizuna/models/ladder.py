r"""A Ladder VAE (Sønderby et al. 2016, arXiv:1602.02282): several stochastic layers, built with the algebra.

Generative model, top-down, :math:`z_L \to \dots \to z_1 \to x`:

.. math:: p(x, z_{1:L}) = p(x|z_1)\,\prod_{i=1}^{L-1} p(z_i|z_{i+1})\; p(z_L),\qquad p(z_L) = \mathcal{N}(0, I).

Inference: a deterministic bottom-up pass :math:`d_i = f_i(d_{i-1})`, :math:`d_0 = x`, gives each layer
a Gaussian likelihood term :math:`\hat q(z_i|x)`; the top-down pass multiplies it with the
generative prior of the same layer (`NormalProduct`, precision-weighted):

.. math:: q(z_L|x) = \hat q(z_L|x),\qquad q(z_i|z_{i+1}, x) \propto \hat q(z_i|x)\,p(z_i|z_{i+1}),

so the posterior shares the generative top-down path (NVAE, Vahdat & Kautz 2020, arXiv:2007.03898,
uses the same split with residual cells). The ELBO is written with closed-form KLs, nested as the
hierarchy is:

.. math:: \mathcal{L} = D_{KL}[q(z_L|x)\|p(z_L)] + \mathbb{E}_{q(z_L|x)}\Big[D_{KL}[q(z_{L-1}|z_L,x)\|p(z_{L-1}|z_L)]
    + \dots - \mathbb{E}_{q(z_1|z_2,x)}[\log p(x|z_1)]\Big].
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from kizuna._data import check_int, check_non_negative, check_sizes
from kizuna.distributions import Bernoulli, Distribution, Normal
from kizuna.distributions.base import Tensor
from kizuna.distributions.normal_product import NormalProduct
from kizuna.formula.expr import Loss
from kizuna.formula.memo import memoized
from kizuna.losses import Expectation, KullbackLeibler, LogProb, MaxLoss
from kizuna.models.residual_normal import ResidualNormal


class _NormalHead(Normal):
    """:math:`\\mathcal{N}(\\mu, \\sigma^2)` from a network of one conditioning variable.

    The scale is :math:`\\operatorname{softplus}(s) + 10^{-4}`, or with ``max_scale`` :math:`m`,
    :math:`m\\,\\operatorname{sigmoid}(s + b) + 10^{-4}` with :math:`b` chosen so that both start equal at
    :math:`s = 0` (:math:`\\log 2`; needs :math:`m > \\log 2`).
    """

    def __init__(self, var: str, cond: str, body: nn.Module, in_features: int, out_features: int, name: str,
                 max_scale: float | None = None) -> None:
        super().__init__(var=[var], cond_var=[cond], name=name)
        self.body, self.head = body, nn.Linear(in_features, 2 * out_features)
        self.max_scale = max_scale
        self.offset = None if max_scale is None else math.log(math.log(2) / (max_scale - math.log(2)))

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        loc, s = self.head(self.body(cond[self._cond_var[0]])).chunk(2, -1)
        if self.max_scale is None:
            return {"loc": loc, "scale": F.softplus(s) + 1e-4}
        return {"loc": loc, "scale": self.max_scale * torch.sigmoid(s + self.offset) + 1e-4}


class _BottomUp(nn.Module):
    """:math:`d_i = f_i(d_{i-1})`, :math:`d_0 = x`: the first blocks of the bottom-up pass. Within one evaluation each
    block runs once on its input (the parameter memo, `kizuna.formula.memo`), so every :math:`\\hat q` above a block
    reads the same :math:`d_i` (and, in training, the same dropout mask) instead of running the pass below it
    again."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        d = x
        for block in self.blocks:
            d = memoized(block, "bottom-up", (d,), block, d)
        return d


def _block(n_in: int, widths: Sequence[int], dropout: float) -> nn.Sequential:
    """``Linear -> ReLU (-> Dropout)`` for each width: a deterministic layer of the ladder."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(n_in, w), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        n_in = w
    return nn.Sequential(*layers)


class _BernoulliHead(Bernoulli):
    def __init__(self, var: str, cond: str, net: nn.Module, name: str) -> None:
        super().__init__(var=[var], cond_var=[cond], name=name)
        self.net = net

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        return {"logits": self.net(cond[self._cond_var[0]])}


class LadderVAE(nn.Module):
    """The model of the module docstring for binary data.

    Args:
        x_dim: data features.
        z_dims: latent sizes from the bottom layer up, e.g. ``[32, 16]``.
        hidden: widths of the bottom-up layers :math:`f_i` (one per stochastic layer); the top-down
            networks use the same widths.
        depth: hidden layers in each bottom-up block :math:`f_i` and each top-down prior network
            (``depth=2`` with ``hidden[0] = 400`` gives the bottom layer the single-layer VAE's
            784-400-400 encoder); the decoder :math:`p(x|z_1)` always has two hidden layers of ``hidden[0]``.
        dropout: dropout rate after every hidden layer of every network (0: none); a regulariser
            for small training sets, off in ``eval()`` mode, where the densities are evaluated.
        merge: how the bottom-up term of a layer below the top meets its prior :math:`p(z_i|z_{i+1})`:
            ``"product"`` (Sønderby et al.: :math:`q \\propto \\hat q(z_i|x)\\,p(z_i|z_{i+1})`, a
            `NormalProduct`), ``"residual"`` (NVAE: :math:`q = \\mathcal{N}(\\mu_p + \\Delta\\mu(x),
            (\\sigma_p\\Delta\\sigma(x))^2)`, a `ResidualNormal`) or ``"whitened"`` (the shift in prior
            scales, :math:`\\mu_p + \\sigma_p\\Delta\\mu(x)`, whose KL is the VAE's KL of
            :math:`\\mathcal{N}(\\Delta\\mu, \\Delta\\sigma^2)` to :math:`\\mathcal{N}(0, I)`). Trained without
            KL warm-up, the product switches its lower layers off (the bottom-up scale :math:`\\hat\\sigma`
            grows without bound, which sends the KL to 0); the residual forms have a VAE-like KL.
        top_down: widths of the prior networks :math:`p(z_i|z_{i+1})`, bottom up (``depth`` hidden
            layers each); by default ``hidden[i]``, the bottom-up width of the same layer.
        max_prior_scale: an upper bound :math:`m` on the scales of :math:`p(z_i|z_{i+1})` (a sigmoid
            instead of a softplus; ``None``: unbounded). The KL terms are unchanged when
            :math:`q(z_i|\\cdot)`, :math:`p(z_i|z_{i+1})` and what reads :math:`z_i` are rescaled together,
            so nothing in the bound fixes the scale of a lower layer: with the residual merges it drifts
            upwards under Adam (docs/families.md), and the model fits (and over-fits) faster than the
            single-layer VAE, whose :math:`\\mathcal{N}(0, I)` prior pins it. ``1`` keeps it no wider than that prior.

    Attributes: ``p`` (the joint :math:`p(x, z_{1:L})`), ``q`` (the joint posterior), ``prior``,
    ``decoder``, ``priors`` (:math:`p(z_i|z_{i+1})`, bottom up), ``posteriors`` (:math:`q(z_i|\\cdot)`).

    >>> m = LadderVAE(10, [4, 2], [16, 8])
    >>> print(m.p)
    p(x,z_1,z_2) = p(x|z_1)p(z_1|z_2)p_{prior}(z_2)
    >>> print(m.q)
    q(z_1,z_2|x) = q(z_1|x,z_2)q(z_2|x)
    >>> print(m.loss())
    KL[q(z_2|x)||p_{prior}(z_2)] + E_{q(z_2|x)}[KL[q(z_1|x,z_2)||p(z_1|z_2)] - E_{q(z_1|x,z_2)}[log p(x|z_1)]]
    """

    def __init__(self, x_dim: int, z_dims: Sequence[int], hidden: Sequence[int], x_var: str = "x",
                 depth: int = 1, dropout: float = 0.0, merge: str = "product",
                 top_down: Sequence[int] | None = None, max_prior_scale: float | None = None) -> None:
        super().__init__()
        # sequences, one size per stochastic layer (a bare 2 raised a raw "object of type 'int' has no len()"); a
        # width of 0 built a latent of no units, -3 failed with a raw "negative dimension" error
        z_dims = check_sizes("LadderVAE: z_dims", z_dims, "a sequence of latent sizes, one per stochastic layer "
                             "(e.g. [32, 16]; [32] for one layer)")
        hidden = check_sizes("LadderVAE: hidden", hidden, "a sequence of widths, one per stochastic layer "
                             "(e.g. [400, 200]; [400] for one layer)")
        if len(z_dims) < 1 or len(hidden) != len(z_dims):
            raise ValueError(f"LadderVAE: give one hidden width per stochastic layer, got z_dims={list(z_dims)}, "
                             f"hidden={list(hidden)}")
        check_int("LadderVAE: x_dim", x_dim, 1)  # (0 built a model of no inputs; -1 and 2.5 failed inside torch)
        check_int("LadderVAE: depth", depth, 1)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LadderVAE: dropout must be in [0, 1), got {dropout}")
        if merge not in ("product", "residual", "whitened"):
            raise ValueError(f"LadderVAE: merge must be 'product', 'residual' or 'whitened', got {merge!r}")
        self.x_var, self.merge, L = x_var, merge, len(z_dims)
        top_down = list(hidden[:-1]) if top_down is None else list(check_sizes(
            "LadderVAE: top_down", top_down, "a sequence of widths, one per prior p(z_i|z_(i+1))"))
        if len(top_down) != L - 1:
            raise ValueError(f"LadderVAE: give one positive top-down width per prior p(z_i|z_(i+1)) (L - 1 = {L - 1}), "
                             f"got top_down={top_down}")
        if max_prior_scale is not None and not math.log(2) < max_prior_scale < math.inf:
            raise ValueError(f"LadderVAE: max_prior_scale must be a finite number > log 2 (the initial scale), got "
                             f"{max_prior_scale}")
        names = [f"z_{i + 1}" for i in range(L)]
        sizes = [x_dim, *hidden]
        self.bottom_up = nn.ModuleList(_block(sizes[i], [sizes[i + 1]] * depth, dropout) for i in range(L))
        likelihood_terms = []
        for i in range(L):  # d_i = f_i(d_{i-1}), computed once per evaluation and shared by every q-hat above it
            name = "q" if i == L - 1 else "\\hat{q}"  # the top layer's term is its posterior
            likelihood_terms.append(_NormalHead(names[i], x_var, _BottomUp(self.bottom_up[:i + 1]), sizes[i + 1],
                                                z_dims[i], name=name))
        self.prior = Normal(var=[names[-1]], loc=0.0, scale=1.0, features_shape=[z_dims[-1]], name="p_prior")
        self.priors = nn.ModuleList(
            _NormalHead(names[i], names[i + 1], _block(z_dims[i + 1], [top_down[i]] * depth, dropout), top_down[i],
                        z_dims[i], "p", max_scale=max_prior_scale)
            for i in range(L - 1))
        decoder = nn.Sequential(_block(z_dims[0], [hidden[0]] * 2, dropout), nn.Linear(hidden[0], x_dim))
        self.decoder = _BernoulliHead(x_var, names[0], decoder, "p")
        posteriors: list[Distribution] = [
            NormalProduct([likelihood_terms[i], self.priors[i]], name="q") if merge == "product"
            else ResidualNormal(self.priors[i], likelihood_terms[i], name="q", whitened=merge == "whitened")
            for i in range(L - 1)]
        posteriors.append(likelihood_terms[-1])
        self.posteriors = nn.ModuleList(posteriors)

    @property
    def p(self) -> Distribution:
        joint: Distribution = self.decoder
        for f in [*self.priors, self.prior]:
            joint = joint * f
        return joint

    @property
    def q(self) -> Distribution:
        joint: Distribution = self.posteriors[0]
        for f in self.posteriors[1:]:
            joint = joint * f
        return joint

    def loss(self, beta: float | Loss = 1.0, free_nats: float = 0.0) -> Loss:
        """The negative ELBO per row (module docstring).

        Args:
            beta: weight of every KL term (KL warm-up).
            free_nats: a floor :math:`\\lambda` on each layer's KL per row,
                :math:`\\max(D_{KL}[q(z_i|\\cdot)\\|p(z_i|\\cdot)], \\lambda)` ("free bits", Kingma et al. 2016,
                arXiv:1606.04934): a layer whose KL is below the floor gets no gradient pushing it to the
                prior, which keeps the top layers from collapsing. 0 gives the ELBO.
        """
        check_non_negative("LadderVAE.loss: free_nats", free_nats)  # (NaN gave the plain ELBO, silently)
        if isinstance(beta, numbers.Real):  # a formula (Parameter("beta")) or a tensor weight is taken as given
            check_non_negative("LadderVAE.loss: beta (the KL terms' weight)", beta)

        def weight(kl: Loss) -> Loss:
            kl = MaxLoss(kl, free_nats) if free_nats > 0 else kl
            return beta * kl if beta != 1 else kl

        recon = Expectation(self.posteriors[0], LogProb(self.decoder))
        inner: Loss | None = None  # what E_{q(z_{i+1}|.)} averages
        for i in range(len(self.posteriors) - 1):
            kl = weight(KullbackLeibler(self.posteriors[i], self.priors[i]))
            inner = Expectation(self.posteriors[i + 1], kl - recon if inner is None else kl + inner)
        top = weight(KullbackLeibler(self.posteriors[-1], self.prior))
        return top - recon if inner is None else top + inner
