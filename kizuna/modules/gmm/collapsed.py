r"""Collapsed Gibbs sampling of a Bayesian Gaussian mixture, one point at a time (SERKET's GMM sampler).

The weights :math:`\pi` and the components :math:`(\mu_k, \Lambda_k)` are integrated out; each sweep
visits the points in order and draws every assignment from its exact conditional given all the others
(Neal 2000, "Markov chain sampling methods for Dirichlet process mixture models", algorithm 3 with
K fixed; Murphy 2007 for the Normal-Wishart algebra):

.. math::
    p(c_n = k \mid c_{-n}, X) \propto \pi^{\text{msg}}_{nk}\,(N_k^{-n} + \alpha_0)\; t_k^{-n}(x_n),

where :math:`t_k^{-n}` is component :math:`k`'s posterior predictive (a multivariate Student-t) given
the points assigned to it other than :math:`n`, and the factor :math:`(N_k^{-n} + \alpha_0)` is left out
without ``mixing`` (a parent's class prior :math:`\pi^{\text{msg}}` then takes the place of the weights, as
in `kizuna.modules.gmm.algorithms`). With the `SIR` strategy the message factor is the count of the point's
:math:`P` proposals :math:`c^{(p)} \sim \pi^{\text{msg}}_{n\cdot}` that fall on :math:`k` (drawing one particle
of a sampling-importance-resampling step with :math:`P` particles).

**What is vectorised.** The visit of the points is sequential by nature; its body is a few numpy
operations on K×D and K×D×D arrays. Every component keeps the inverse :math:`P_k = S_k^{-1}` of its
posterior scale and :math:`\log|S_k|`, so the predictive of all K components is one batched
matrix-vector product. The point's own component is scored *without* the point by the rank-one
downdate of `kizuna.modules.gmm.algorithms.leave_one_out` (no state change), and only when the point moves are the
two components changed, by Sherman-Morrison rank-one updates (:math:`u = x_n - m_k`):

.. math::
    \text{add: } S_k \leftarrow S_k + \tfrac{\kappa_k}{\kappa_k + 1} u u^\top,\qquad
    \text{remove: } S_k \leftarrow S_k - \tfrac{\kappa_k}{\kappa_k - 1} u u^\top.

A sweep that begins after ``REBUILD_AFTER`` moves first sums the statistics afresh from the labels and
recomputes every inverse, so rounding cannot accumulate beyond about that many updates; a downdate that
would keep less than ``MIN_RATIO`` of :math:`|S_k|` is recomputed from the statistics at once. Diagonal
covariances (independent Normal-Gamma factors) follow the same pattern per dimension.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from kizuna.modules.combine import SIR
from kizuna.modules.gmm.algorithms import ClassPrior, Fitted, _point_estimates, collapsed_conditional, hard_statistics
from kizuna.modules.gmm.normal_wishart import NormalWishart
from kizuna.modules.rng import normalize

Tensor = torch.Tensor
MIN_BLOCK, MAX_BLOCK = 4, 1024  # points scored at once while none moves (adapted as they do)
REBUILD_AFTER = 1000  # rank-one moves after which a sweep starts from statistics summed afresh
MIN_RATIO = 1e-6  # smallest |S'| / |S| accepted from a downdate before recomputing from the statistics


class _Components:
    """Posterior of K components from exact sufficient statistics, updated one point at a time.

    Arrays (float64 numpy): ``n`` (K) counts, ``sx`` (K×D) sums, ``sxx`` (K×D×D or K×D) outer sums or
    squares; ``kappa``, ``nu`` (K), ``m`` (K×D), ``inv`` (:math:`S_k^{-1}`, K×D×D, or :math:`1/s_k`, K×D),
    ``logdet`` (:math:`\\log|S_k|`), ``const`` (K) the x-free part of :math:`\\log t_k`.
    """

    def __init__(self, prior: NormalWishart, x: np.ndarray, z: np.ndarray) -> None:
        self.m0 = prior.m.cpu().numpy()
        self.kappa0, self.nu0 = prior.kappa.cpu().numpy(), prior.nu.cpu().numpy()
        self.s0 = prior.scale.cpu().numpy()
        self.diagonal, (self.k, self.d) = prior.diagonal, self.m0.shape
        self.n = np.bincount(z, minlength=self.k).astype(np.float64)
        self.sx = np.zeros((self.k, self.d))
        np.add.at(self.sx, z, x)
        self.sxx = np.zeros_like(self.s0)
        np.add.at(self.sxx, z, x**2 if self.diagonal else x[:, :, None] * x[:, None, :])
        self.kappa, self.nu, self.m = self.kappa0.copy(), self.nu0.copy(), self.m0.copy()
        self.moves = 0  # rank-one moves since the statistics were summed from the labels
        self.inv, self.logdet = np.zeros_like(self.s0), np.zeros(self.k)
        self.const, self.const_loo = np.zeros(self.k), np.zeros(self.k)
        self.refresh(np.arange(self.k))

    def refresh(self, ks: np.ndarray | list[int]) -> None:
        """Recompute components ``ks`` from their sufficient statistics (the Normal-Wishart update)."""
        ks = np.atleast_1d(ks)
        empty = ks[self.n[ks] == 0]
        self.sx[empty], self.sxx[empty] = 0.0, 0.0  # no rounding residue in an empty component
        n, kappa0 = self.n[ks], self.kappa0[ks]
        kappa = kappa0 + n
        m = (kappa0[:, None] * self.m0[ks] + self.sx[ks]) / kappa[:, None]
        if self.diagonal:
            s = self.s0[ks] + self.sxx[ks] + kappa0[:, None] * self.m0[ks] ** 2 - kappa[:, None] * m**2
            self.inv[ks], self.logdet[ks] = 1.0 / s, np.log(s).sum(1)
        else:
            m0 = self.m0[ks]
            s = (self.s0[ks] + self.sxx[ks] + kappa0[:, None, None] * m0[:, :, None] * m0[:, None, :]
                 - kappa[:, None, None] * m[:, :, None] * m[:, None, :])
            chol = np.linalg.cholesky(0.5 * (s + np.swapaxes(s, 1, 2)))
            eye = np.broadcast_to(np.eye(self.d), chol.shape)
            root = np.linalg.solve(chol, eye)  # L^{-1}: S^{-1} = L^{-T} L^{-1}
            self.inv[ks] = np.swapaxes(root, 1, 2) @ root
            self.logdet[ks] = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)
        self.kappa[ks], self.nu[ks], self.m[ks] = kappa, self.nu0[ks] + n, m
        self._derive(ks)

    def log_const(self, kappa: float, nu: float, logdet: float) -> float:
        """The part of :math:`\\log t` that does not depend on x (full: df :math:`\\nu-D+1`, scale
        :math:`\\frac{\\kappa+1}{\\kappa\\,df}S`; diagonal: df :math:`\\nu`, scales
        :math:`\\frac{\\kappa+1}{\\kappa\\nu}s_d`)."""
        d = self.d
        if self.diagonal:
            per_dim = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(math.pi * (kappa + 1) / kappa)
            return d * per_dim - 0.5 * logdet
        df = nu - d + 1
        return (math.lgamma((df + d) / 2) - math.lgamma(df / 2) - 0.5 * d * math.log(math.pi * (kappa + 1) / kappa)
                - 0.5 * logdet)

    def _derive(self, ks: list[int] | np.ndarray) -> None:
        """Per-component constants of the predictive with and without one of its points."""
        for k in ks:
            kappa, nu, logdet = self.kappa[k], self.nu[k], self.logdet[k]
            self.const[k] = self.log_const(kappa, nu, logdet)
            # without a point: kappa - 1, nu - 1, and |S'| = |S| ratio (the ratio is added per point)
            self.const_loo[k] = self.log_const(kappa - 1, nu - 1, logdet) if self.n[k] > 0 else math.nan
        self.shrink, self.c = self.kappa / (self.kappa + 1), np.where(self.n > 0, self.kappa, 2.0) / np.where(
            self.n > 0, self.kappa - 1, 1.0)

    def score(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:math:`\\log t_k(x_b)` (B×K) of a block of points under the current state, with each point's own
        component ``z`` scored without it (rank-one downdate); also ``ok`` (B: False where the downdate
        would lose its precision, MIN_RATIO), and :math:`u = x_b - m_k`, :math:`y = S_k^{-1}u` (K×B×D)."""
        u = x[None] - self.m[:, None]
        rows = np.arange(x.shape[0])
        if self.diagonal:
            y = u * self.inv[:, None]
            t = u * y  # (x_d - m_d)^2 / s_d
            lp = self.const - 0.5 * (self.nu + 1) * np.log1p(self.shrink[:, None, None] * t).sum(2).T
            to = t[z, rows]
            ratio = 1 - self.c[z, None] * to
            ok = ratio.min(1) > MIN_RATIO
            ratio = np.where(ok[:, None], ratio, 1.0)
            own = self.const_loo[z] - 0.5 * np.log(ratio).sum(1) \
                - 0.5 * self.nu[z] * np.log1p(self.c[z, None] * to / ratio).sum(1)
        else:
            y = np.matmul(u, self.inv)  # S^{-1} is symmetric
            q = np.einsum("kbd,kbd->bk", u, y)
            lp = self.const - 0.5 * (self.nu + 1) * np.log1p(self.shrink * q)
            qo = q[rows, z]
            ratio = 1 - self.c[z] * qo
            ok = ratio > MIN_RATIO
            ratio = np.where(ok, ratio, 1.0)
            own = self.const_loo[z] - 0.5 * np.log(ratio) - 0.5 * self.nu[z] * np.log1p(self.c[z] * qo / ratio)
        lp[rows, z] = own
        return lp, ok, u, y

    def move(self, x: np.ndarray, xx: np.ndarray, j: int, k: int, u: np.ndarray, y: np.ndarray) -> None:
        """Move a point from component j to k (``u``, ``y``: the K×D arrays of `log_predictive`)."""
        self.moves += 1
        self.n[j] -= 1
        self.n[k] += 1
        self.sx[j] -= x
        self.sx[k] += x
        self.sxx[j] -= xx
        self.sxx[k] += xx
        exact = [j] if self.n[j] == 0 else []
        for i, sign in ((j, -1.0), (k, 1.0)):
            if i in exact:
                continue
            kappa = self.kappa[i]
            g = kappa / (kappa + sign)  # kappa/(kappa+1) to add, kappa/(kappa-1) to remove
            if self.diagonal:
                ratio = 1 + sign * g * u[i] * y[i]
                if ratio.min() <= MIN_RATIO:
                    exact.append(i)
                    continue
                self.inv[i] /= ratio
                self.logdet[i] += np.log(ratio).sum()
            else:
                ratio = 1 + sign * g * float(u[i] @ y[i])
                if ratio <= MIN_RATIO:
                    exact.append(i)
                    continue
                self.inv[i] -= (sign * g / ratio) * np.outer(y[i], y[i])
                self.logdet[i] += math.log(ratio)
            self.m[i] = (kappa * self.m[i] + sign * x) / (kappa + sign)
            self.kappa[i] += sign
            self.nu[i] += sign
        self._derive([j, k])
        if exact:
            self.refresh(exact)

    def without(self, j: int, x: np.ndarray, xx: np.ndarray) -> float:
        """:math:`\\log t_j^{-n}(x)` recomputed from component j's statistics without the point (exact, slower)."""
        self.n[j] -= 1
        self.sx[j] -= x
        self.sxx[j] -= xx
        self.refresh([j])
        u = x - self.m[j]
        if self.diagonal:
            value = self.const[j] - 0.5 * (self.nu[j] + 1) * np.log1p(self.shrink[j] * u * u * self.inv[j]).sum()
        else:
            value = self.const[j] - 0.5 * (self.nu[j] + 1) * math.log1p(self.shrink[j] * float(u @ self.inv[j] @ u))
        self.n[j] += 1
        self.sx[j] += x
        self.sxx[j] += xx
        self.refresh([j])
        return float(value)


def _log_message(pi_msg: Tensor | None, method: str, n_particles: int, generator: torch.Generator | None,
                 shape: tuple[int, int]) -> np.ndarray | None:
    """The message factor of one sweep, in log (N×K): :math:`\\log\\pi^{\\text{msg}}` (``"mp"``) or the log
    count of each class among P proposals drawn from it (``"sir"``); ``None`` without a message."""
    if pi_msg is None:
        return None
    if tuple(pi_msg.shape) != shape:
        raise ValueError(f"collapsed_gibbs: the class prior must be N x K = {shape}, got {tuple(pi_msg.shape)}")
    msg = normalize(pi_msg.to(torch.float64))
    if method == "mp":
        weights = msg
    else:
        if n_particles < 1:
            raise ValueError(f"collapsed_gibbs: n_particles must be positive, got {n_particles}")
        proposals = torch.multinomial(msg, n_particles, replacement=True, generator=generator)
        weights = torch.zeros_like(msg).scatter_add_(1, proposals, torch.ones_like(proposals, dtype=msg.dtype))
    with np.errstate(divide="ignore"):
        return np.log(weights.cpu().numpy())


def _labels(z: Tensor, n: int, k: int) -> Tensor:
    """Assignments from labels (N) or from responsibilities (N×K, their argmax), checked."""
    z = z.argmax(1) if z.dim() == 2 and z.shape[1] == k else z
    if z.shape != (n,) or z.dtype.is_floating_point or bool(((z < 0) | (z >= k)).any()):
        raise ValueError(f"collapsed_gibbs: the start must be N = {n} labels in [0, {k}) or N x K "
                         f"responsibilities, got shape {tuple(z.shape)}, dtype {z.dtype}")
    return z


def sweeps(x: Tensor, prior: NormalWishart, alpha0: float, z: Tensor, pi_msg: Tensor | None, method: str = "mp",
           n_particles: int = 200, generator: torch.Generator | None = None, mixing: bool = True) -> Iterator[Tensor]:
    """Collapsed Gibbs sweeps from assignments ``z``, without end: yields the assignments (N, long) after each.

    Args:
        x, prior, alpha0, z, generator: as in `collapsed_gibbs`.
        pi_msg: the parent's class prior (N×K) or None.
        method: ``"mp"`` (the prior multiplies each conditional) or ``"sir"`` (the count of ``n_particles``
            proposals drawn from it, afresh every sweep).
        n_particles: proposals per point for ``"sir"``.
        mixing: keep :math:`(N_k^{-n} + \alpha_0)` (False under a parent).
    """
    if method not in ("mp", "sir"):
        raise ValueError(f"collapsed_gibbs: method must be 'mp' or 'sir', got {method!r}")
    if x.dim() != 2 or x.shape[1] != prior.dim or alpha0 < 0:
        raise ValueError(f"collapsed_gibbs: x must be N x {prior.dim} and alpha0 >= 0, got {tuple(x.shape)}, {alpha0}")
    n, k = x.shape[0], prior.m.shape[0]
    device, xs = x.device, x.detach().to(torch.float64).cpu().numpy()
    labels = _labels(z, n, k).cpu().numpy().astype(np.int64)
    comp: _Components | None = None
    fixed = _log_message(pi_msg, method, n_particles, generator, (n, k)) if method == "mp" else None
    while True:
        log_msg = fixed if method == "mp" else _log_message(pi_msg, method, n_particles, generator, (n, k))
        uniforms = torch.rand(n, generator=generator, dtype=torch.float64, device=device).cpu().numpy()
        if comp is None or comp.moves >= REBUILD_AFTER:
            comp = _Components(prior, xs, labels)  # exact, from the labels
        i, block = 0, MIN_BLOCK
        while i < n:
            i, block = _visit(comp, xs, labels, i, block, uniforms, log_msg, alpha0 if mixing else None)
        yield torch.as_tensor(labels.copy(), device=device)


def _visit(comp: _Components, x: np.ndarray, labels: np.ndarray, start: int, block: int, uniforms: np.ndarray,
           log_msg: np.ndarray | None, alpha0: float | None) -> tuple[int, int]:
    """Visit points ``start``, ``start + 1``, ... in order until the first that moves (or the block's end):
    every point of the block is scored and drawn against the current state at once, which is exactly the
    sequential sampler as long as no point moves. Returns the next point to visit and the next block size."""
    b = slice(start, min(x.shape[0], start + block))
    z = labels[b]
    log_p, ok, u, y = comp.score(x[b], z)
    rows = np.arange(z.shape[0])
    own = log_p[rows, z]  # a copy (fancy indexing)
    if alpha0 is not None:
        with np.errstate(divide="ignore"):
            log_n = np.log(comp.n + alpha0)
            log_p += log_n
            log_p[rows, z] += np.log(comp.n[z] - 1 + alpha0) - log_n[z]
    if log_msg is not None:
        log_p += log_msg[b]
    new = _draw(log_p, uniforms[b])
    change = (new != z) | ~ok
    if not change.any():
        return b.stop, min(MAX_BLOCK, 2 * block)
    p = int(change.argmax())
    i, j = start + p, int(z[p])
    xx = x[i] ** 2 if comp.diagonal else np.outer(x[i], x[i])
    if not ok[p]:  # the downdate lost its precision: the point's own component from its statistics
        log_p[p, j] += comp.without(j, x[i], xx) - own[p]
        new[p] = _draw(log_p[p:p + 1], uniforms[i:i + 1])[0]
    if new[p] != j:
        comp.move(x[i], xx, j, int(new[p]), u[:, p], y[:, p])
        labels[i] = new[p]
    return i + 1, max(MIN_BLOCK, min(MAX_BLOCK, 2 * (p + 1)))


def _draw(log_p: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One class per row of the unnormalised log-probabilities by inverting the CDF at ``uniforms``: the
    number of cumulative sums at or below :math:`u \\sum_k p_k` (as `inference.sample_classes`)."""
    cdf = np.exp(log_p - log_p.max(1, keepdims=True)).cumsum(1)
    return np.minimum((cdf <= uniforms[:, None] * cdf[:, -1:]).sum(1), log_p.shape[1] - 1)


def collapsed_gibbs(x: Tensor, prior: NormalWishart, alpha0: float, z: Tensor, n_sweeps: int, parent: ClassPrior,
                    generator: torch.Generator | None) -> Fitted:
    """``n_sweeps`` collapsed Gibbs sweeps from ``z``, with the contract of `kizuna.modules.gmm.algorithms.gibbs`
    (``GMM(algorithm="collapsed")``).

    Args:
        x: data N×D.
        prior: the Normal-Wishart prior of the K components (full or diagonal).
        alpha0: symmetric Dirichlet concentration of the weights.
        z: initial assignments (N labels, or N×K responsibilities: their argmax).
        n_sweeps: sweeps over all points.
        parent: the parent's class prior (``probs`` N×K or None), its strategy (`MP`: exact; `SIR`: P proposals
            per point and sweep, see the module docstring) and ``mixing`` (keep :math:`(N_k^{-n} + \alpha_0)`;
            False under a parent, whose prior replaces it).
        generator: random source (uniforms, SIR proposals).

    Returns:
        `Fitted` at the final assignments: ``own`` the Rao-Blackwellised collapsed conditional
        :math:`\\log[(N_k^{-n}+\alpha_0)\\,t_k^{-n}(x_n)]` (the message up), ``resp`` it combined with the
        parent's prior, the posterior ``nw``/``alpha``, point estimates, and ``z``.
    """
    if n_sweeps < 0:
        raise ValueError(f"collapsed_gibbs: n_sweeps must be >= 0, got {n_sweeps}")
    k = prior.m.shape[0]
    z = _labels(z, x.shape[0], k).to(x.device)
    sir = isinstance(parent.combine, SIR)
    n_particles = (parent.combine.n_particles or 1000) if sir else 1
    chain = sweeps(x, prior, alpha0, z, parent.probs, "sir" if sir else "mp", n_particles, generator, parent.mixing)
    for _ in range(n_sweeps):
        z = next(chain)
    counts, sum_x, sum_xx = hard_statistics(x, z, k, prior.diagonal)
    nw, alpha = prior.posterior(counts, sum_x, sum_xx), counts + alpha0
    own = collapsed_conditional(x, z, prior, alpha0, parent.mixing)
    return Fitted(own, parent.posterior(own), *_point_estimates(nw, alpha), nw=nw, alpha=alpha, z=z,
                  n_iter=n_sweeps)
