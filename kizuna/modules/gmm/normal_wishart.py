r"""Normal-Wishart conjugate algebra for Gaussian mixtures, vectorised over components.

Full covariance (Murphy 2007, "Conjugate Bayesian analysis of the Gaussian distribution";
Bishop 2006, §10.2), with :math:`S` the *inverse* scale of the Wishart (scikit-learn's
``covariance_prior``):

.. math::
    \Lambda \sim \mathcal W(\nu, S^{-1}),\quad \mu\mid\Lambda \sim \mathcal N(m, (\kappa\Lambda)^{-1}).

Given :math:`N` points with sums :math:`\sum x`, :math:`\sum x x^\top` the posterior is
:math:`\kappa_N = \kappa+N,\ \nu_N = \nu+N,\ m_N = (\kappa m + \sum x)/\kappa_N,\
S_N = S + \sum x x^\top + \kappa m m^\top - \kappa_N m_N m_N^\top`, and the posterior
predictive is a multivariate Student-t

.. math:: p(x\mid X) = t_{\nu_N-D+1}\Big(x \,\Big|\, m_N,\ \frac{\kappa_N+1}{\kappa_N(\nu_N-D+1)} S_N\Big).

Diagonal covariance uses independent Normal-Gamma factors per dimension,
:math:`\lambda_d \sim \mathrm{Gamma}(\nu/2, \text{rate}=s_d/2)`, whose predictive is a product of
univariate Student-t with :math:`\nu_N` degrees of freedom and scale
:math:`s_{N,d}(\kappa_N+1)/(\kappa_N\nu_N)`. Counts may be fractional (responsibilities).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kizuna.modules.rng import sample_gamma

Tensor = torch.Tensor
BLOCK_ELEMENTS = 1 << 17  # temporaries per block of rows (`row_blocks`): 1 MiB in float64


@dataclass(frozen=True)
class NormalWishart:
    """Parameters with a batch of components: ``m`` (K×D), ``kappa`` and ``nu`` (K), ``scale``
    the inverse scale ``S`` (K×D×D, full) or ``s`` (K×D, diagonal)."""

    m: Tensor
    kappa: Tensor
    nu: Tensor
    scale: Tensor

    @property
    def diagonal(self) -> bool:
        return self.scale.dim() == self.m.dim()

    @property
    def dim(self) -> int:
        return self.m.shape[-1]

    def posterior(self, counts: Tensor, sum_x: Tensor, sum_xx: Tensor) -> NormalWishart:
        """Update by data statistics (counts K, sums K×D, outer sums K×D×D or squares K×D)."""
        kappa_n, nu_n = self.kappa + counts, self.nu + counts
        m_n = (self.kappa.unsqueeze(-1) * self.m + sum_x) / kappa_n.unsqueeze(-1)
        if self.diagonal:
            s_n = self.scale + sum_xx + self.kappa.unsqueeze(-1) * self.m**2 - kappa_n.unsqueeze(-1) * m_n**2
        else:
            outer = self.m.unsqueeze(-1) * self.m.unsqueeze(-2)
            outer_n = m_n.unsqueeze(-1) * m_n.unsqueeze(-2)
            s_n = self.scale + sum_xx + self.kappa[..., None, None] * outer - kappa_n[..., None, None] * outer_n
            s_n = 0.5 * (s_n + s_n.transpose(-1, -2))
        return NormalWishart(m_n, kappa_n, nu_n, s_n)

    def log_predictive(self, x: Tensor, pairwise: bool = True) -> Tensor:
        """:math:`\\log p(x\\mid\\text{component})`: every row of ``x`` (N×D) under every component
        (N×K) when ``pairwise``, else row ``b`` under component ``b`` (``x`` B×D, result B)."""
        d = self.dim
        if self.diagonal:
            df = self.nu.unsqueeze(-1)
            scale2 = self.scale * (self.kappa.unsqueeze(-1) + 1) / (self.kappa.unsqueeze(-1) * df)
            const = torch.lgamma((df + 1) / 2) - torch.lgamma(df / 2) - 0.5 * torch.log(df * math.pi * scale2)

            def per_row(xb: Tensor) -> Tensor:  # const - (df + 1) / 2 * log1p(diff**2 / (scale2 * df)), in place
                diff = xb.unsqueeze(-2) - self.m if pairwise else xb - self.m
                sq = _promoted(diff.square_(), scale2, df, const)
                return sq.div_(scale2 * df).log1p_().mul_((df + 1) / 2).neg_().add_(const).sum(-1)

            return diagonal_rows(x, self.m, per_row) if pairwise else per_row(x)
        df = self.nu - d + 1
        c = (self.kappa + 1) / (self.kappa * df)
        if pairwise:
            quad, logdet_s = self.quadratic(x)
        else:  # one component per row: a batch of Cholesky factors
            chol = torch.linalg.cholesky(self.scale)
            y = torch.linalg.solve_triangular(chol, (x - self.m).unsqueeze(-1), upper=False)
            quad = y.squeeze(-1).square().sum(-1)
            logdet_s = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return student_t_log_prob(quad / c, logdet_s + d * torch.log(c), df, d)

    def quadratic(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(:math:`(x_n-m_k)^\\top S_k^{-1}(x_n-m_k)` N×K, :math:`\\log|S_k|` K) for full covariances:
        one Cholesky factor per component, then batched GEMMs (`squared_mahalanobis`)."""
        chol = torch.linalg.cholesky(self.scale)  # S = L L^T, so u^T S^{-1} u = |u^T L^{-T}|^2
        eye = torch.eye(self.dim, dtype=chol.dtype, device=chol.device).expand_as(chol)
        inv = torch.linalg.solve_triangular(chol, eye, upper=False)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return squared_mahalanobis(x, self.m, inv.transpose(-1, -2)), logdet

    def log_marginal(self, prior: NormalWishart, counts: Tensor) -> Tensor:
        """:math:`\\log p(X)` of the data that turned ``prior`` into this posterior (per component)."""
        d = self.dim
        if self.diagonal:
            nu0, nu_n = prior.nu.unsqueeze(-1), self.nu.unsqueeze(-1)
            per_dim = (-0.5 * counts.unsqueeze(-1) * math.log(math.pi) + torch.lgamma(nu_n / 2) - torch.lgamma(nu0 / 2)
                       + 0.5 * nu0 * torch.log(prior.scale) - 0.5 * nu_n * torch.log(self.scale)
                       + 0.5 * (torch.log(prior.kappa) - torch.log(self.kappa)).unsqueeze(-1))
            return per_dim.sum(-1)
        return (-0.5 * counts * d * math.log(math.pi) + torch.special.multigammaln(self.nu / 2, d)
                - torch.special.multigammaln(prior.nu / 2, d) + 0.5 * prior.nu * torch.logdet(prior.scale)
                - 0.5 * self.nu * torch.logdet(self.scale) + 0.5 * d * (torch.log(prior.kappa) - torch.log(self.kappa)))

    def mean_precision(self) -> Tensor:
        """:math:`\\mathbb E[\\Lambda] = \\nu S^{-1}` (K×D×D) or :math:`\\nu/s` (K×D)."""
        if self.diagonal:
            return self.nu.unsqueeze(-1) / self.scale
        return self.nu[..., None, None] * torch.cholesky_inverse(torch.linalg.cholesky(self.scale))

    def expected_log_det(self) -> Tensor:
        """:math:`\\mathbb E[\\log|\\Lambda|]` (Bishop eq. 10.65)."""
        d = self.dim
        if self.diagonal:
            return (torch.digamma(self.nu / 2).unsqueeze(-1) - torch.log(self.scale / 2)).sum(-1)
        i = torch.arange(d, dtype=self.nu.dtype, device=self.nu.device)
        return torch.digamma((self.nu.unsqueeze(-1) - i) / 2).sum(-1) + d * math.log(2) - torch.logdet(self.scale)

    def expected_mahalanobis(self, x: Tensor) -> Tensor:
        """:math:`\\mathbb E[(x-\\mu)^\\top\\Lambda(x-\\mu)] = D/\\kappa + \\nu (x-m)^\\top S^{-1}(x-m)`, N×K."""
        if self.diagonal:
            precision = self.nu.unsqueeze(-1) / self.scale
            quad = diagonal_rows(x, self.m, lambda xb: _weighted_squares(xb, self.m, precision))
        else:
            quad = self.nu * self.quadratic(x)[0]
        return self.dim / self.kappa + quad

    def sample(self, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw :math:`(\\mu_k, R_k)` per component, :math:`R_k` the lower Cholesky factor of
        :math:`\\Lambda_k` (full) or :math:`\\lambda_k` itself (diagonal). Bartlett decomposition."""
        def randn(shape: torch.Size) -> Tensor:
            return torch.randn(shape, generator=generator, dtype=self.m.dtype, device=self.m.device)

        if self.diagonal:
            lam = sample_gamma(self.nu.unsqueeze(-1).expand_as(self.scale) / 2, generator) * 2 / self.scale
            mu = self.m + randn(self.m.shape) / torch.sqrt(self.kappa.unsqueeze(-1) * lam)
            return mu, lam
        d = self.dim
        i = torch.arange(d, dtype=self.nu.dtype, device=self.nu.device)
        diag = torch.sqrt(2 * sample_gamma((self.nu.unsqueeze(-1) - i) / 2, generator))  # chi^2_{nu - i}
        a = torch.tril(randn(self.scale.shape), -1) + torch.diag_embed(diag)
        chol_w = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(self.scale)))
        r = chol_w @ a  # Lambda = R R^T, R lower triangular with a positive diagonal
        root = torch.sqrt(self.kappa)[..., None, None] * r
        eps = randn(self.m.shape).unsqueeze(-1)
        mu = self.m + torch.linalg.solve_triangular(root.transpose(-1, -2), eps, upper=True).squeeze(-1)
        return mu, r


def gaussian_log_prob(x: Tensor, mu: Tensor, precision: Tensor) -> Tensor:
    """:math:`\\log\\mathcal N(x_n\\mid\\mu_k,\\Lambda_k^{-1})` (N×K) from the lower Cholesky factor of
    :math:`\\Lambda_k` (K×D×D) or a diagonal precision (K×D)."""
    d = x.shape[-1]
    if precision.dim() == mu.dim():
        logdet = torch.log(precision).sum(-1)
        def per_row(xb: Tensor) -> Tensor:  # 0.5 * (logdet - (diff**2 * precision).sum(-1) - ...), in place
            return 0.5 * (logdet - _weighted_squares(xb, mu, precision) - d * math.log(2 * math.pi))

        return diagonal_rows(x, mu, per_row)
    logdet = torch.log(torch.diagonal(precision, dim1=-2, dim2=-1)).sum(-1)
    return logdet - 0.5 * squared_mahalanobis(x, mu, precision) - 0.5 * d * math.log(2 * math.pi)


def row_blocks(n: int, per_row: int) -> range:
    """Starts of blocks of rows whose temporaries (``per_row`` elements a row) fit in cache (``BLOCK_ELEMENTS``):
    streaming N×K×D temporaries through memory, not their size, is what costs at large N."""
    return range(0, n, max(256, BLOCK_ELEMENTS // max(1, per_row)))


def _promoted(t: Tensor, *others: Tensor) -> Tensor:
    """``t`` in the dtype an out-of-place operation with ``others`` computes in (``t`` itself when it is in it): the
    in-place chains below then give the values of their out-of-place forms, mixed dtypes included."""
    dtype = t.dtype
    for o in others:
        dtype = torch.promote_types(dtype, o.dtype)
    return t.to(dtype)


def _weighted_squares(x: Tensor, m: Tensor, precision: Tensor) -> Tensor:
    """``((x.unsqueeze(-2) - m) ** 2 * precision).sum(-1)`` (B×K) with one B×K×D temporary, worked in place."""
    return _promoted((x.unsqueeze(-2) - m).square_(), precision).mul_(precision).sum(-1)


def diagonal_rows(x: Tensor, m: Tensor, per_row: Callable[[Tensor], Tensor]) -> Tensor:
    """``per_row(x[block])`` (B×K) for each block of rows of ``x`` (N×D) against the K×D ``m`` (`row_blocks`):
    the diagonal paths' B×K×D differences stay under ``BLOCK_ELEMENTS``, memory linear in N×K, and each row's
    value is the one ``per_row(x)`` gives (the same elementwise arithmetic, a row's sum over D alone). The callers
    work on their B×K×D difference in place (the same operations in the same order: the same values)."""
    if x.dim() != 2 or m.dim() != 2:  # (no block of rows to take: the broadcast as it is)
        return per_row(x)
    n, k = x.shape[0], m.shape[0]
    blocks = row_blocks(n, k * m.shape[1])
    if len(blocks) <= 1:
        return per_row(x)
    first = per_row(x[:blocks.step])
    out = first.new_empty(n, k)  # (the dtype the arithmetic promotes to)
    out[:blocks.step] = first
    for s in blocks[1:]:
        out[s:s + blocks.step] = per_row(x[s:s + blocks.step])
    return out


def squared_mahalanobis(x: Tensor, m: Tensor, root: Tensor) -> Tensor:
    """:math:`\\|(x_n - m_k)^\\top R_k\\|^2` (N×K) for ``x`` N×D, ``m`` K×D, ``root`` K×D×D.

    One batched GEMM over the components per block of rows (`row_blocks`): O(N K D^2) time, memory linear in N.
    """
    n, d = x.shape
    out = x.new_empty(n, m.shape[0])
    blocks = row_blocks(n, m.shape[0] * d)
    for s in blocks:
        diff = x[s:s + blocks.step].unsqueeze(0) - m.unsqueeze(1)  # K×B×D
        y = torch.matmul(diff, root)
        out[s:s + blocks.step] = (y * y).sum(-1).T
    return out


def student_t_log_prob(maha: Tensor, logdet: Tensor, df: Tensor, d: int) -> Tensor:
    """:math:`\\log t_{\\nu}(x\\mid m, \\Sigma)` from :math:`(x-m)^\\top\\Sigma^{-1}(x-m)`, :math:`\\log|\\Sigma|`
    and :math:`\\nu` (broadcast together)."""
    return (torch.lgamma((df + d) / 2) - torch.lgamma(df / 2) - 0.5 * d * torch.log(df * math.pi)
            - 0.5 * logdet - (df + d) / 2 * torch.log1p(maha / df))
