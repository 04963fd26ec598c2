r"""The three learning algorithms behind `kizuna.modules.GMM`: pure functions of data and messages.

Each takes data ``x`` (N×D, float64) and a `ClassPrior` — the parent's class prior :math:`\pi^{\text{msg}}`
(N×K, or none), the strategy that joins it with the likelihood (`kizuna.modules.combine.MP` or
`kizuna.modules.combine.SIR`) and whether the mixing weights are the GMM's own — and returns a `Fitted`:
the parameters plus ``own`` — the module's own :math:`\log p(x_n, c_n=k)` *without* the parent's prior
(the forward message is its softmax) — and ``resp``, the combined posterior
:math:`\propto \pi^{\text{msg}}_{nk}\,e^{\text{own}_{nk}}`. Randomness comes only from the ``generator``
argument (and the strategy's own). Vectorised over samples.

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

from kizuna.modules.combine import MP, Combine
from kizuna.modules.gmm.normal_wishart import NormalWishart, gaussian_log_prob, row_blocks, student_t_log_prob
from kizuna.modules.rng import sample_classes, sample_dirichlet

Tensor = torch.Tensor


@dataclass(frozen=True)
class ClassPrior:
    """How a parent's class prior enters the assignments.

    Args:
        probs: :math:`\\pi^{\\text{msg}}` (N×K), or ``None`` before (or without) a parent's message.
        combine: the strategy joining it with the likelihood.
        mixing: keep the GMM's own mixing weights; ``False`` under a parent, whose prior takes their place.
    """

    probs: Tensor | None = None
    combine: Combine = MP()
    mixing: bool = True

    def posterior(self, own: Tensor) -> Tensor:
        """:math:`\\propto \\pi^{\\text{msg}}_{nk} e^{\\text{own}_{nk}}` (``softmax(own)`` without a prior)."""
        if self.probs is None:
            return torch.softmax(own, 1)
        return self.combine(self.probs.to(own.dtype), own)


NO_PARENT = ClassPrior()


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
    n_iter: int = 0  # iterations (sweeps) this run took
    converged: bool | None = None  # VB / EM: whether ``tol`` was met; None for the samplers (no convergence test)


def statistics(x: Tensor, resp: Tensor, diagonal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Soft counts (K), sums (K×D) and outer sums (K×D×D) or sums of squares (K×D)."""
    counts = resp.sum(0)
    sum_x = resp.T @ x
    sum_xx = resp.T @ x**2 if diagonal else weighted_scatter(x, resp)
    return counts, sum_x, sum_xx


def hard_statistics(x: Tensor, z: Tensor, k: int, diagonal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """`statistics` of hard assignments ``z``: the points sorted by component, one GEMM per component
    (O(N D^2) instead of the O(N K D^2) of weighting every point by a one-hot row)."""
    counts = torch.bincount(z, minlength=k).to(x.dtype)
    sum_x = x.new_zeros(k, x.shape[1]).index_add_(0, z, x)
    if diagonal:
        return counts, sum_x, x.new_zeros(k, x.shape[1]).index_add_(0, z, x**2)
    groups = x.index_select(0, torch.argsort(z)).split(counts.long().tolist())
    return counts, sum_x, torch.stack([g.T @ g for g in groups])


def weighted_scatter(x: Tensor, resp: Tensor, centres: Tensor | None = None) -> Tensor:
    """:math:`\\sum_n r_{nk} (x_n - c_k)(x_n - c_k)^\\top` (K×D×D; :math:`c_k = 0` without ``centres``):
    a batched GEMM over the components per block of rows (`row_blocks`), memory linear in N."""
    n, d = x.shape
    k = resp.shape[1]
    out = x.new_zeros(k, d, d)
    blocks = row_blocks(n, k * d)
    for s in blocks:
        xs = x[s:s + blocks.step].unsqueeze(0)
        xs = xs.expand(k, -1, -1) if centres is None else xs - centres.unsqueeze(1)  # K×B×D
        out += (xs * resp[s:s + blocks.step].T.unsqueeze(-1)).transpose(1, 2) @ xs
    return out


def _point_estimates(nw: NormalWishart, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    cov = nw.scale / nw.nu.unsqueeze(-1) if nw.diagonal else nw.scale / nw.nu[:, None, None]
    return alpha / alpha.sum(), nw.m, cov  # E[pi], E[mu], E[Lambda]^{-1}


def collapsed_conditional(x: Tensor, z: Tensor, prior: NormalWishart, alpha0: float, mixing: bool = True) -> Tensor:
    """:math:`\\log[(N_k^{-n}+\\alpha_0)\\,t_k^{-n}(x_n)]` (N×K): every point left out of its own component.

    Without ``mixing`` (a parent's class prior takes the place of the weights) only :math:`\\log t_k^{-n}(x_n)`.
    The leave-one-out predictive of a point's own component is a rank-one downdate of that component's
    posterior (`leave_one_out`), so the cost is that of the N×K predictive, O(N K D^2).
    """
    k = prior.m.shape[0]
    oh = F.one_hot(z, k).to(x.dtype)
    counts, sum_x, sum_xx = hard_statistics(x, z, k, prior.diagonal)
    post = prior.posterior(counts, sum_x, sum_xx)
    if prior.diagonal:
        own, quadratic = post.log_predictive(x), None
    else:
        quadratic = post.quadratic(x)
        df = post.nu - prior.dim + 1
        c = (post.kappa + 1) / (post.kappa * df)
        own = student_t_log_prob(quadratic[0] / c, quadratic[1] + prior.dim * torch.log(c), df, prior.dim)
    loo = leave_one_out(x, z, post, quadratic)
    bad = ~torch.isfinite(loo)
    if bool(bad.any()):  # the downdate lost its precision: those points from their sufficient statistics
        i, zi = bad.nonzero().squeeze(1), z[bad]
        xx = x[i] ** 2 if prior.diagonal else x[i].unsqueeze(-1) * x[i].unsqueeze(-2)
        exact = NormalWishart(prior.m[zi], prior.kappa[zi], prior.nu[zi], prior.scale[zi]).posterior(
            counts[zi] - 1, sum_x[zi] - x[i], sum_xx[zi] - xx)
        loo = loo.index_put((i,), exact.log_predictive(x[i], pairwise=False))
    own = own.scatter(1, z.unsqueeze(1), loo.unsqueeze(1))
    return own + torch.log(counts - oh + alpha0) if mixing else own


def leave_one_out(x: Tensor, z: Tensor, post: NormalWishart,
                  quadratic: tuple[Tensor, Tensor] | None = None, min_ratio: float = 1e-6) -> Tensor:
    """:math:`\\log t^{-n}_{z_n}(x_n)` (N): the predictive of each point under its own component's posterior
    without it, by the rank-one downdate (:math:`u = x_n - m_k`, :math:`c = \\kappa_k/(\\kappa_k - 1)`)

    .. math::
        \\kappa' = \\kappa_k - 1,\\ \\nu' = \\nu_k - 1,\\ x_n - m' = c\\,u,\\ S' = S_k - c\\,u u^\\top,\\quad
        |S'| = |S_k|(1 - c q),\\ u^\\top S'^{-1} u = \\frac{q}{1 - c q},\\ q = u^\\top S_k^{-1} u

    (matrix determinant lemma and Sherman-Morrison; per dimension for a diagonal ``post``). ``quadratic``:
    `NormalWishart.quadratic` of ``x`` when already computed (full covariances). Points whose downdate keeps
    less than ``min_ratio`` of :math:`|S_k|` (or of a diagonal scale) get ``nan``: the caller recomputes them
    from their component's counts without them.
    """
    d = post.dim
    kappa, nu = post.kappa[z], post.nu[z]
    c = kappa / (kappa - 1)
    if post.diagonal:
        u = x - post.m[z]
        s = post.scale[z] - c.unsqueeze(-1) * u**2
        ok = (s > min_ratio * post.scale[z]).all(-1)
        df = (nu - 1).unsqueeze(-1)
        scale2 = s.clamp_min(torch.finfo(s.dtype).tiny) * c.unsqueeze(-1) / df  # s (kappa' + 1) / (kappa' nu')
        per_dim = student_t_log_prob((c.unsqueeze(-1) * u) ** 2 / scale2, torch.log(scale2), df, 1)
        return torch.where(ok, per_dim.sum(-1), torch.nan)
    quad, logdet = post.quadratic(x) if quadratic is None else quadratic
    q = quad.gather(1, z.unsqueeze(1)).squeeze(1)
    ratio = 1 - c * q
    ok = ratio > min_ratio
    ratio = torch.where(ok, ratio, torch.ones_like(ratio))
    df = nu - d  # (nu - 1) - d + 1
    ct = c / df  # (kappa' + 1) / (kappa' df) with kappa' = kappa - 1
    lp = student_t_log_prob(c**2 * q / ratio / ct, logdet[z] + torch.log(ratio) + d * torch.log(ct), df, d)
    return torch.where(ok, lp, torch.nan)


def gibbs_sweep(x: Tensor, prior: NormalWishart, alpha0: float, z: Tensor, parent: ClassPrior,
                generator: torch.Generator | None) -> Tensor:
    """One blocked Gibbs sweep: draw :math:`\\pi, \\mu, \\Lambda` given ``z``, then every new ``z_n``."""
    counts, sum_x, sum_xx = hard_statistics(x, z, prior.m.shape[0], prior.diagonal)
    log_pi = torch.log(sample_dirichlet(counts + alpha0, generator).clamp(min=1e-300))
    mu, root = prior.posterior(counts, sum_x, sum_xx).sample(generator)
    log_lik = gaussian_log_prob(x, mu, root)
    return sample_classes(parent.posterior(log_pi + log_lik if parent.mixing else log_lik), generator)


def gibbs(x: Tensor, prior: NormalWishart, alpha0: float, z: Tensor, n_sweeps: int, parent: ClassPrior,
          generator: torch.Generator | None) -> Fitted:
    """Blocked Gibbs sweeps from assignments ``z`` (see the module docstring)."""
    for _ in range(n_sweeps):
        z = gibbs_sweep(x, prior, alpha0, z, parent, generator)
    counts, sum_x, sum_xx = hard_statistics(x, z, prior.m.shape[0], prior.diagonal)
    nw, alpha = prior.posterior(counts, sum_x, sum_xx), counts + alpha0
    own = collapsed_conditional(x, z, prior, alpha0, parent.mixing)
    return Fitted(own, parent.posterior(own), *_point_estimates(nw, alpha), nw=nw, alpha=alpha, z=z,
                  n_iter=n_sweeps)


def vb(x: Tensor, prior: NormalWishart, alpha0: float, resp: Tensor, max_iter: int, tol: float,
       parent: ClassPrior) -> Fitted:
    """Variational Bayes iterations from responsibilities ``resp``; ``max_iter=0`` (a graph's schedule freezing the
    module) learns nothing: ``resp`` is returned as it is, with the parameters and ``own`` it gives."""
    d = x.shape[1]
    eps = 10 * torch.finfo(x.dtype).eps

    def parameters(resp: Tensor) -> tuple[NormalWishart, Tensor, Tensor]:
        counts, sum_x, sum_xx = statistics(x, resp, prior.diagonal)
        nw, alpha = prior.posterior(counts + eps, sum_x, sum_xx), alpha0 + counts + eps
        own = (0.5 * nw.expected_log_det() - 0.5 * d * math.log(2 * math.pi) - 0.5 * nw.expected_mahalanobis(x))
        if parent.mixing:
            own = own + torch.digamma(alpha) - torch.digamma(alpha.sum())
        return nw, alpha, own

    if max_iter == 0:  # (the loop below never set ``own``: an UnboundLocalError)
        nw, alpha, own = parameters(resp)
        return Fitted(own, resp, *_point_estimates(nw, alpha), nw=nw, alpha=alpha, n_iter=0, converged=False)
    n_iter, converged = 0, False
    while n_iter < max_iter:
        n_iter += 1
        nw, alpha, own = parameters(resp)
        new = parent.posterior(own)
        change = (new - resp).abs().max().item()
        resp = new
        if change < tol:
            converged = True
            break
    return Fitted(own, resp, *_point_estimates(nw, alpha), nw=nw, alpha=alpha, n_iter=n_iter, converged=converged)


def _em_m_step(x: Tensor, resp: Tensor, diagonal: bool, reg_covar: float) -> tuple[Tensor, Tensor, Tensor]:
    counts = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
    means = resp.T @ x / counts.unsqueeze(1)
    if diagonal:
        cov = _diag_scatter(x, resp, means) / counts.unsqueeze(1) + reg_covar
    else:
        cov = weighted_scatter(x, resp, means) / counts[:, None, None]
        cov = cov + reg_covar * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return counts / x.shape[0], means, cov


def _diag_scatter(x: Tensor, resp: Tensor, means: Tensor, first: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """:math:`\\sum_n r_{nk} (x_{nd} - \\mu_{kd})^2` (K×D), the two-pass form: the weighted squared differences a
    block of rows at a time (`row_blocks`): B×K×D temporaries, not N×K×D. With ``first``, also the weighted
    differences :math:`\\sum_n r_{nk} (x_{nd} - \\mu_{kd})` from the same pass: ``(first moments, scatter)``."""
    blocks = row_blocks(x.shape[0], means.numel())
    sq = means.new_zeros(means.shape)
    s1 = means.new_zeros(means.shape) if first else None
    for s in blocks:
        diff = x[s:s + blocks.step].unsqueeze(1) - means  # B x K x D
        r = resp[s:s + blocks.step]
        if s1 is not None:
            s1 += torch.einsum("bk,bkd->kd", r, diff)
        sq += torch.einsum("bk,bkd->kd", r, diff.square_())
    return sq if s1 is None else (s1, sq)


# The diagonal EM's fast path (float64): both steps as GEMMs of the data centred at its mean, as scikit-learn's
# expansion of the squares, (x - m)^2 = x^2 - 2 x m + m^2, where the centring keeps the cancellation small. A
# component is computed by the two-pass forms instead (`_diag_scatter`, `gaussian_log_prob`) where the expansion
# could lose the values: in the M step where its terms cancel by more than three digits, or (large N) where the
# typical rounding of the GEMM's length-N sums, sqrt(N) eps S_2, exceeds `_M_REL_ERROR` of the variance; in the E
# step where the worst-case rounding of its length-(2D+1) dot products, (2D+3) eps times their terms' sizes, could
# exceed `_E_ABS_ERROR`. The E check
# takes the largest squared centred coordinate of each feature over all points, the M check the largest
# cancellation over the features: data with a far outlier, or components far apart compared with their widths
# (tens of standard deviations from the data's mean in a feature), send most components through the two-pass
# forms, at about the old code's cost (bench/README.md).
_M_CANCEL = 1e-3  # the M step's expanded scatter of a component kept when at least this fraction of its sum of squares
_M_REL_ERROR = 1e-10  # ... and when sqrt(N) eps S_2 (typical rounding of the sums, not a bound) is below this of it
_E_ABS_ERROR = 1e-9  # the E step's bound on the rounding error of the expanded log-densities (absolute)


class _CentredData:
    """``x`` (N×D) centred at its mean ``shift``, as one (2D+1)×N matrix ``[(x - shift)^2, x - shift, 1]^T``: the
    M step's counts, sums and sums of squares are one GEMM with it, the E step's log-densities another. Rows of
    N (not N×(2D+1)): the E step's K×N result then has the components outermost, whose reductions over the
    components (the posterior, the objective) run along contiguous rows, several times faster at K = 10 than
    over the 10 entries of an N×K row."""

    def __init__(self, x: Tensor) -> None:
        self.shift = x.mean(0)
        xc = (x - self.shift).T.contiguous()
        self.dim = x.shape[1]
        self.feats_t = torch.cat([xc * xc, xc, xc.new_ones(1, x.shape[0])])
        self.reach = self.feats_t[:self.dim].amax(1)  # the largest squared centred coordinate, per dimension


def _em_m_step_diag(x: Tensor, data: _CentredData, resp: Tensor, reg_covar: float
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """`_em_m_step` (diagonal): counts, sums and sums of squares of the centred data in one GEMM.

    With :math:`R_k = \\sum_n r_{nk}`, centred sums :math:`S_1, S_2` and :math:`c_k = \\mu_k - \\text{shift}`, the
    means are :math:`(S_1 + R\\,\\text{shift}) / (R + 10\\epsilon)` (`_em_m_step`'s ``resp.T @ x / counts``, an
    empty component's 0 included) and the scatter :math:`S_2 - 2 c S_1 + c^2 R` (its
    :math:`\\sum_n r_{nk}(x_n - \\mu_k)^2`), every term at most :math:`2 S_2`. Its relative error is about
    :math:`S_2/\\text{scatter}` times the GEMM's relative rounding of a length-N sum (which grows with N:
    1e-12 at N = 2e4, 2e-11 at N = 2e6 where three digits cancel). A component is summed by `_diag_scatter`
    instead where the scatter is below `_M_CANCEL` of :math:`S_2` (more than three digits cancelled) or below
    :math:`\\sqrt N\\,\\epsilon\\,S_2 /` `_M_REL_ERROR` (an estimate of the typical rounding, measured 15-25 times
    above the actual error; the three digits decide up to N ~ 2e5). Such a component's mean, good only to
    about :math:`\\epsilon\\,|c|` from the centred sums, is corrected in the same pass,
    :math:`\\mu + \\sum_n r_{nk}(x_n - \\mu) / (R + 10\\epsilon)` less the 10ε term, so it is
    ``resp.T @ x / counts`` to rounding of the differences (exact for a component narrower than
    :math:`\\epsilon\\,|c|`, and at offsets like 1e8 where summing ``x`` itself would lose it); its scatter about the
    corrected mean is summed again where the correction takes more than three digits off."""
    d = data.dim
    eps = torch.finfo(x.dtype).eps
    stats = resp.T @ data.feats_t.T  # K × (2D+1): S_2, S_1, R
    total = stats[:, -1:]
    counts = total + 10 * eps
    square, first = stats[:, :d], stats[:, d:2 * d]
    means = (first + total * data.shift) / counts
    c = means - data.shift
    scatter = square - 2 * c * first + c * c * total
    cancel = max(_M_CANCEL, math.sqrt(x.shape[0]) * eps / _M_REL_ERROR)
    bad = (scatter < cancel * square).any(1)
    if bool(bad.any()):
        k = bad.nonzero().squeeze(1)
        sq = _diag_scatter(x, resp[:, k], means[k])
        scatter[k] = sq
        # the centred sums' mean is good to about eps (|mean| + |c| + the data's reach): where that could move the
        # scatter by _M_REL_ERROR, correct it by sum r (x - mean) and sum the scatter again (a narrow component far
        # from the shift, or one at a large offset; rare, so a pass more there and none elsewhere)
        slack = math.sqrt(x.shape[0]) * eps * (means[k].abs() + c[k].abs() + data.reach.sqrt())
        loose = (total[k] * slack * slack > _M_REL_ERROR * sq).any(1)
        if bool(loose.any()):
            j = k[loose]
            approx = means[j]
            diff, sq = _diag_scatter(x, resp[:, j], approx, first=True)
            shift = (diff - 10 * eps * approx) / counts[j]  # (sum_n r x - counts approx) / counts
            means[j] = approx + shift
            # the scatter about the corrected mean, by the data's own move (the 10 eps of the count is no spread:
            # taken into the move, 1000 equal points at 1e8 got variance 4.9e-20 for 0 and no error)
            # (review R5: the count's 10 eps moves the stored mean by ``bias``; it is spread of the data only where
            # it is above the stored mean's rounding, as in resp.T @ x / counts: a near-empty component)
            bias = 10 * eps * approx / counts[j]
            shift = (diff - torch.where(bias.abs() > eps * means[j].abs(), 10 * eps * approx, 0.0)) / counts[j]
            moved = shift * (2 * diff - total[j] * shift)  # sum r (x - approx)^2 - sum r (x - mean)^2
            scatter[j] = sq - moved
            again = (moved > _M_CANCEL * sq).any(1)
            if bool(again.any()):
                i = j[again]
                scatter[i] = _diag_scatter(x, resp[:, i], means[i])
    counts = counts.squeeze(1)
    return counts / x.shape[0], means, scatter / counts.unsqueeze(1) + reg_covar


def _em_log_joint_diag(x: Tensor, data: _CentredData, weights: Tensor | None, means: Tensor, cov: Tensor
                       ) -> Tensor:
    """``gaussian_log_prob(x, means, 1 / cov) (+ log weights)`` (N×K, the transpose of a K×N tensor) from one GEMM
    of the centred data, to `_E_ABS_ERROR` (absolute, a bound); the components whose expanded log-densities could be
    off by more by `gaussian_log_prob` itself.

    The bound: entry (n, k) is a dot product of length 2D+1 plus a constant, whose terms are at most
    :math:`p_{kd}(c_{kd}^2 + (x_{nd} - \\text{shift}_d)^2)` in absolute value (:math:`c = \\mu - \\text{shift}`),
    so its rounding error is below :math:`(2D+3)\\,\\epsilon \\sum_d p_{kd}(c_{kd}^2 + \\max_n (x_{nd} -
    \\text{shift}_d)^2)`, which is compared with `_E_ABS_ERROR`; the actual error is usually far below it (100-400
    times on ordinary data at D = 128-512), but features that repeat one value reach a sizeable part of it (8.5e-10
    at D = 2048 at 0.95 of a sqrt(2D+3) estimate, review R5). The maximum is over all points: one far point sends
    every component through the two-pass form (see the fast path's note above)."""
    prec = precision_root(cov)
    c = means - data.shift
    log_w = torch.log(weights) if weights is not None else prec.new_zeros(prec.shape[0])
    const = 0.5 * (torch.log(prec).sum(1) - (c * c * prec).sum(1) - data.dim * math.log(2 * math.pi)) + log_w
    coef = torch.cat([-0.5 * prec, c * prec, prec.new_zeros(prec.shape[0], 1)], 1)  # K × (2D+1)
    own = torch.addmm(const.unsqueeze(1), coef, data.feats_t)  # K×N
    # |error| of entry (n, k) <= (2D+3) eps sum_d p_kd ((x_nd - shift_d)^2 + (m_kd - shift_d)^2), the bound compared
    # with `_E_ABS_ERROR` (1e-9: at 1e-10 it turned the fast path off from D ~ 128 on ordinary data, where the error
    # was 100-400 times below it; the typical sqrt(2D+3) in its place was exceeded 8-fold by features repeating one
    # value, review R5)
    bound = (2 * data.dim + 3) * torch.finfo(x.dtype).eps * (prec * (c * c + data.reach)).sum(1)
    bad = bound > _E_ABS_ERROR
    if bool(bad.any()):
        k = bad.nonzero().squeeze(1)
        own[k] = gaussian_log_prob(x, means[k], prec[k]).T + log_w[k].unsqueeze(1)
    return own.T


def _not_positive(bad: list[int]) -> None:
    raise ValueError(f"GMM: the covariance of component(s) {bad} is not positive definite (duplicate points, or "
                     "fewer distinct points than dimensions in a component); a larger reg_covar keeps it so")


def precision_root(cov: Tensor) -> Tensor:
    """A triangular ``R`` with ``R R^T = cov^{-1}`` (or the diagonal precision ``1/cov``)."""
    if cov.dim() == 2:
        zero = ~(cov > 0).all(-1)  # a zero variance gave an infinite precision, then NaN densities, silently
        if bool(zero.any()):
            _not_positive([int(k) for k in torch.nonzero(zero).flatten()])
        return 1.0 / cov
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        _not_positive([int(k) for k in torch.nonzero(info).flatten()])
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
    return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)


def em(x: Tensor, resp: Tensor, max_iter: int, tol: float, reg_covar: float, diagonal: bool,
       parent: ClassPrior = NO_PARENT) -> Fitted:
    """EM from ``resp`` as scikit-learn's ``GaussianMixture`` counts it: an initial M step from ``resp``, then
    ``max_iter`` iterations of an E step and an M step, so ``max_iter=n`` returns the parameters of scikit-learn's
    ``max_iter=n`` from the same start. ``history`` holds the mean objective after each M step (``n_iter + 1``
    entries, the initial M step's first),

    .. math:: \\frac1N\\sum_n\\log\\sum_k \\pi^{\\text{msg}}_{nk} w_k \\mathcal N(x_n\\mid\\mu_k,\\Sigma_k),

    and ``history[-1]`` is that of the returned parameters. The run stops early, converged, by scikit-learn's test:
    after iteration :math:`i \\ge 2` when the objectives before its M step and before the previous one (``history[-2]``
    and ``history[-3]``) differ by less than ``tol``; so ``n_iter`` and ``converged`` are scikit-learn's too.

    ``max_iter=0`` (a graph's schedule freezing the module) learns nothing: ``resp`` is returned as it is, with the
    parameters of the initial M step from it, their ``own`` and their objective.

    Diagonal covariances in float64 take the GEMM forms (`_em_m_step_diag`, `_em_log_joint_diag`: the values of the
    two-pass forms to the tolerances stated there, at a fraction of their time where few components fall back) and,
    without a parent's prior, one pass of exponentials for the posterior and the objective.
    """
    history: list[float] = []
    log_msg = 0.0 if parent.probs is None else torch.log(parent.probs.to(x.dtype))
    fast = diagonal and x.dtype == torch.float64  # (the GEMM forms: `_em_m_step_diag`, `_em_log_joint_diag`)
    data = _CentredData(x) if fast else None
    joint = fast and parent.probs is None  # the posterior (softmax) and the objective from one pass of exponentials

    def parameters(resp: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        if data is not None:
            weights, means, cov = _em_m_step_diag(x, data, resp, reg_covar)
            own = _em_log_joint_diag(x, data, weights if parent.mixing else None, means, cov)
        else:
            weights, means, cov = _em_m_step(x, resp, diagonal, reg_covar)
            own = gaussian_log_prob(x, means, precision_root(cov))
            if parent.mixing:
                own = own + torch.log(weights)
        if joint:
            top = own.amax(1, keepdim=True)
            post = (own - top).exp_()
            total = post.sum(1, keepdim=True)
            history.append((top + torch.log(total)).mean().item())
            return weights, means, cov, own, post.div_(total)
        history.append(torch.logsumexp(own + log_msg, 1).mean().item())
        return weights, means, cov, own, None

    def posterior(own: Tensor, post: Tensor | None) -> Tensor:
        return parent.posterior(own) if post is None else post

    weights, means, cov, own, post = parameters(resp)  # the initial M step (scikit-learn's ``_initialize``)
    n_iter, converged = 0, False
    while n_iter < max_iter:
        n_iter += 1
        weights, means, cov, own, post = parameters(posterior(own, post))
        if n_iter > 1 and abs(history[-2] - history[-3]) < tol:
            converged = True
            break
    if n_iter > 0:  # the returned model's E step (with max_iter=0, resp stays as given)
        resp = posterior(own, post)
    return Fitted(own.contiguous(), resp.contiguous(), weights, means, cov, history=history, n_iter=n_iter,
                  converged=converged)  # (the diagonal fast path's are transposes of K×N tensors)
