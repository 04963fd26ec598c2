r"""The three learning algorithms behind `kizuna.modules.GMM`, vectorised over samples.

Each takes data ``x`` (N×D, float64), an optional class prior ``pi_msg`` (N×K, the parent's
backward message) and returns the fitted parameters plus ``own`` — the module's own
:math:`\log p(x_n, c_n=k)` *without* the parent's prior (the forward message is its softmax)
— and ``resp``, the combined posterior :math:`\propto \pi^{\text{msg}}_{nk}\,e^{\text{own}_{nk}}`.

* ``gibbs`` — **blocked Gibbs** sampling (exact MCMC, not the parallel approximation of
  collapsed Gibbs): alternately draw :math:`\pi \sim \mathrm{Dir}(\alpha_0 + N_k)`,
  :math:`(\mu_k, \Lambda_k) \sim \mathcal{NW}(\cdot\mid\text{assigned data})`, then all
  assignments in parallel, :math:`c_n \sim p(c_n\mid x_n, \pi, \mu, \Lambda)\,\pi^{\text{msg}}_{n\cdot}`
  (they are conditionally independent given the parameters). The reported ``own`` is the
  Rao-Blackwellised **collapsed** conditional at the final state,
  :math:`p(c_n=k\mid c_{-n}, X) \propto (N_k^{-n}+\alpha_0)\, t_k^{-n}(x_n)` with the Student-t
  predictive of component ``k`` given the other points — SERKET's collapsed-Gibbs quantity.
* ``vb`` — mean-field variational Bayes (Bishop 2006, §10.2), the parent's prior multiplying
  the responsibilities.
* ``em`` — maximum likelihood EM with ``reg_covar`` added to the covariance diagonals.

With ``mixing=False`` (a GMM that has a parent module) the mixing weights drop out of ``own``
and of the assignments: the parent's class prior takes their place, so the GMM is its parent's
emission model (GMM + MM is exactly an HMM). Keeping the weights as well would count the most
frequent class twice at every update and, under a Markov model, collapse the chain onto it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from kizuna.modules.inference import combine, sample_classes, sample_dirichlet
from kizuna.modules.normal_wishart import NormalWishart, gaussian_log_prob

Tensor = torch.Tensor


@dataclass
class Fitted:
    """What an algorithm returns (``nw``/``alpha`` for the Bayesian ones, ``cov`` for EM)."""

    own: Tensor
    resp: Tensor
    weights: Tensor
    means: Tensor
    covariances: Tensor
    nw: NormalWishart | None = None
    alpha: Tensor | None = None
    z: Tensor | None = None
    history: list[float] | None = None


def statistics(x: Tensor, resp: Tensor, diagonal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Soft counts (K), sums (K×D) and outer sums (K×D×D) or sums of squares (K×D)."""
    counts = resp.sum(0)
    sum_x = resp.T @ x
    sum_xx = resp.T @ x**2 if diagonal else (resp.T.unsqueeze(1) * x.T.unsqueeze(0)) @ x
    return counts, sum_x, sum_xx


def _combine(own: Tensor, pi_msg: Tensor | None, method: str, n_particles: int,
             generator: torch.Generator | None) -> Tensor:
    if pi_msg is None:
        return torch.softmax(own, 1)
    return combine(pi_msg.to(own.dtype), own, method, n_particles, generator)


def kmeans_labels(x: Tensor, k: int, generator: torch.Generator | None, n_iter: int = 20) -> Tensor:
    """k-means++ seeding then Lloyd iterations (the initial partition of every algorithm)."""
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    centres = x[first]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(1).values ** 2
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centres = torch.cat([centres, x[torch.multinomial(weights, 1, generator=generator)]])
    labels = torch.cdist(x, centres).argmin(1)
    for _ in range(n_iter):
        oh = F.one_hot(labels, k).to(x.dtype)
        counts = oh.sum(0, keepdim=True).T
        centres = torch.where(counts > 0, oh.T @ x / counts.clamp(min=1), centres)
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def _point_estimates(nw: NormalWishart, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    cov = nw.scale / nw.nu.unsqueeze(-1) if nw.diagonal else nw.scale / nw.nu[:, None, None]
    return alpha / alpha.sum(), nw.m, cov  # E[pi], E[mu], E[Lambda]^{-1}


def collapsed_conditional(x: Tensor, z: Tensor, prior: NormalWishart, alpha0: float, mixing: bool = True) -> Tensor:
    """:math:`\\log[(N_k^{-n}+\\alpha_0)\\,t_k^{-n}(x_n)]` (N×K): every point left out of its own component.

    Without ``mixing`` (a parent's class prior takes the place of the weights) only :math:`\\log t_k^{-n}(x_n)`.
    """
    k = prior.m.shape[0]
    oh = F.one_hot(z, k).to(x.dtype)
    counts, sum_x, sum_xx = statistics(x, oh, prior.diagonal)
    own = prior.posterior(counts, sum_x, sum_xx).log_predictive(x)
    xx = x**2 if prior.diagonal else x.unsqueeze(-1) * x.unsqueeze(-2)
    loo_prior = NormalWishart(prior.m[z], prior.kappa[z], prior.nu[z], prior.scale[z])
    loo = loo_prior.posterior(counts[z] - 1, sum_x[z] - x, sum_xx[z] - xx)
    own = own.scatter(1, z.unsqueeze(1), loo.log_predictive(x, pairwise=False).unsqueeze(1))
    return own + torch.log(counts - oh + alpha0) if mixing else own


def gibbs_sweep(x: Tensor, prior: NormalWishart, alpha0: float, z: Tensor, pi_msg: Tensor | None, method: str,
                n_particles: int, generator: torch.Generator | None, mixing: bool = True) -> Tensor:
    """One blocked Gibbs sweep: draw :math:`\\pi, \\mu, \\Lambda` given ``z``, then every new ``z_n``."""
    k = prior.m.shape[0]
    counts, sum_x, sum_xx = statistics(x, F.one_hot(z, k).to(x.dtype), prior.diagonal)
    log_pi = torch.log(sample_dirichlet(counts + alpha0, generator).clamp(min=1e-300))
    mu, root = prior.posterior(counts, sum_x, sum_xx).sample(generator)
    log_lik = gaussian_log_prob(x, mu, root)
    probs = _combine(log_pi + log_lik if mixing else log_lik, pi_msg, method, n_particles, generator)
    return sample_classes(probs, generator)


def gibbs(x: Tensor, prior: NormalWishart, alpha0: float, z: Tensor, n_sweeps: int, pi_msg: Tensor | None,
          method: str, n_particles: int, generator: torch.Generator | None, mixing: bool = True) -> Fitted:
    """Blocked Gibbs sweeps from assignments ``z`` (see the module docstring)."""
    for _ in range(n_sweeps):
        z = gibbs_sweep(x, prior, alpha0, z, pi_msg, method, n_particles, generator, mixing)
    counts, sum_x, sum_xx = statistics(x, F.one_hot(z, prior.m.shape[0]).to(x.dtype), prior.diagonal)
    nw, alpha = prior.posterior(counts, sum_x, sum_xx), counts + alpha0
    own = collapsed_conditional(x, z, prior, alpha0, mixing)
    return Fitted(own, _combine(own, pi_msg, method, n_particles, generator), *_point_estimates(nw, alpha),
                  nw=nw, alpha=alpha, z=z)


def vb(x: Tensor, prior: NormalWishart, alpha0: float, resp: Tensor, max_iter: int, tol: float,
       pi_msg: Tensor | None, method: str, n_particles: int, generator: torch.Generator | None,
       mixing: bool = True) -> Fitted:
    """Variational Bayes iterations from responsibilities ``resp``."""
    d = x.shape[1]
    eps = 10 * torch.finfo(x.dtype).eps
    for _ in range(max_iter):
        counts, sum_x, sum_xx = statistics(x, resp, prior.diagonal)
        nw, alpha = prior.posterior(counts + eps, sum_x, sum_xx), alpha0 + counts + eps
        own = (0.5 * nw.expected_log_det() - 0.5 * d * math.log(2 * math.pi) - 0.5 * nw.expected_mahalanobis(x))
        if mixing:
            own = own + torch.digamma(alpha) - torch.digamma(alpha.sum())
        new = _combine(own, pi_msg, method, n_particles, generator)
        change = (new - resp).abs().max().item()
        resp = new
        if change < tol:
            break
    return Fitted(own, resp, *_point_estimates(nw, alpha), nw=nw, alpha=alpha)


def _em_m_step(x: Tensor, resp: Tensor, diagonal: bool, reg_covar: float) -> tuple[Tensor, Tensor, Tensor]:
    counts = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
    means = resp.T @ x / counts.unsqueeze(1)
    diff = x.unsqueeze(1) - means  # N x K x D
    if diagonal:
        cov = (resp.unsqueeze(-1) * diff**2).sum(0) / counts.unsqueeze(1) + reg_covar
    else:
        cov = torch.einsum("nk,nkd,nke->kde", resp, diff, diff) / counts[:, None, None]
        cov = cov + reg_covar * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return counts / x.shape[0], means, cov


def precision_root(cov: Tensor) -> Tensor:
    """A triangular ``R`` with ``R R^T = cov^{-1}`` (or the diagonal precision ``1/cov``)."""
    if cov.dim() == 2:
        return 1.0 / cov
    chol = torch.linalg.cholesky(cov)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
    return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)


def em(x: Tensor, resp: Tensor, max_iter: int, tol: float, reg_covar: float, diagonal: bool,
       pi_msg: Tensor | None, method: str, n_particles: int, generator: torch.Generator | None,
       mixing: bool = True) -> Fitted:
    """EM iterations from ``resp``; ``history`` holds the mean objective after each M step,

    .. math:: \\frac1N\\sum_n\\log\\sum_k \\pi^{\\text{msg}}_{nk} w_k \\mathcal N(x_n\\mid\\mu_k,\\Sigma_k).
    """
    history: list[float] = []
    log_msg = 0.0 if pi_msg is None else torch.log(pi_msg.to(x.dtype))
    for _ in range(max_iter):
        weights, means, cov = _em_m_step(x, resp, diagonal, reg_covar)
        own = gaussian_log_prob(x, means, precision_root(cov))
        if mixing:
            own = own + torch.log(weights)
        history.append(torch.logsumexp(own + log_msg, 1).mean().item())
        resp = _combine(own, pi_msg, method, n_particles, generator)
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            break
    return Fitted(own, resp, weights, means, cov, history=history)
