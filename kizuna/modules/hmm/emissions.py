r"""Emission models of the HMM: Gaussian (four covariance types) and categorical, as functions of parameters.

Each emission model reads its parameters from a dict (``{"means_": ..., "covars_": ...}`` or
``{"emissionprob_": ...}``) and returns new ones; it never writes onto the estimator. The M-steps are the
closed-form maximisers of the EM objective given the posteriors :math:`\gamma_t(k)`:
:math:`\mu_k = \sum_t \gamma_t(k) x_t / \sum_t \gamma_t(k)`, the weighted scatter for :math:`\Sigma_k`
with its eigenvalues floored at ``min_covar`` (the constrained maximiser, so the likelihood never
decreases), and :math:`B_{k,v} \propto \sum_t \gamma_t(k) [x_t = v]`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kizuna._distances import kmeans
from kizuna.modules._forward_backward import computing_dtype
from kizuna.modules.gmm.algorithms import weighted_scatter
from kizuna.modules.gmm.normal_wishart import gaussian_log_prob, row_blocks
from kizuna.modules.validation import as_tensor, check_finite

Tensor = torch.Tensor
Params = dict[str, Any]
COVARIANCE_TYPES = ("diag", "full", "spherical", "tied")


def expansion_rounding(dtype: torch.dtype) -> float:
    """The rounding (nats a row) that `Gaussian.log_prob`'s float64 expansion may add to a diag / spherical
    log-emission of ``dtype`` before the differences are taken instead: the expansion is used while `expansion_error`
    is within it. 1e-7 for float32, which rounds an O(1) log-density about as much itself: the expansion while
    :math:`B \\sqrt{2D + 1} \\le 4.5 \\cdot 10^8` (one feature: states within about 16,000 standard deviations
    of the means' centre). 1e-10 for float64 (ten digits of an O(1) log-density; the differences give 1e-15): while
    :math:`B \\sqrt{2D + 1} \\le 4.5 \\cdot 10^5` (one feature: within about 510; 1,000 features: :math:`B \\le
    10^4`, 3.2 standard deviations a feature)."""
    return 1e-7 if torch.finfo(dtype).bits <= 32 else 1e-10


def expansion_error(b: float, d: int) -> float:
    """The rounding (nats) that `Gaussian.log_prob`'s float64 expansion may add to the log-density of a row near a
    state: :math:`\\epsilon_{64} B \\sqrt{2D + 1}`, :math:`B = \\max_k \\sum_d (\\mu_{kd} - c_d)^2 /
    \\sigma_{kd}^2` (the states' spread about the means' centre :math:`c`), D = ``d`` features. The expansion's terms
    are of size B and 2D + 1 of them are summed; their roundings add up as a random walk. Measured (one thread,
    MKL; rows drawn from the states; D = 1, 10, 100, 1000; 2, 5, 16 and 50 states; B spread evenly over the features,
    in one, or at random with variances over four decades): each row's own state within 0.7 of it; every entry
    within 1.2 :math:`\\epsilon_{64} \\sqrt{2D + 1} \\max(B, |\\log \\mathcal N|)` (an entry far down, a row far
    from that state, to that relative rounding, as the differences). Rows exactly on the line between two states,
    whose equal terms all round alike, reached 5 times that (a sum's :math:`\\epsilon D` worst case)."""
    return torch.finfo(torch.float64).eps * b * math.sqrt(2 * d + 1)


def entry(name: str, value: Tensor, mask: Tensor) -> str:
    """The first entry of ``value`` where ``mask`` holds, as ``"covars_[0, 1] = -1.0"``."""
    index = mask.nonzero()[0].tolist()
    return f"{name}[{', '.join(map(str, index))}] = {value[tuple(index)].item()}"


def check_shape(value: Tensor, name: str, shape: tuple[int, ...], owner: str, why: str = "") -> None:
    """Raise a ValueError naming ``name`` unless ``value`` has ``shape``."""
    if tuple(value.shape) != shape:
        raise ValueError(f"{owner}: {name} must be of shape {shape}{why}, got {tuple(value.shape)}")


def check_distributions(p: Tensor, name: str, owner: str) -> None:
    """Raise a ValueError naming ``name`` and the offending entry or row unless every row of ``p`` (the last
    axis) is a probability distribution: finite, non-negative and summing to 1 (to 1.1e-5 as ``torch.allclose``'s
    defaults, or the rounding of the row's sum in ``p``'s dtype where that is larger)."""
    bad = ~torch.isfinite(p) | (p < 0)
    if bool(bad.any()):
        raise ValueError(f"{owner}: {name} must hold probabilities (finite, >= 0), got {entry(name, p, bad)}")
    sums = p.sum(-1)
    off = (sums - 1).abs() > max(1.1e-5, p.shape[-1] * torch.finfo(p.dtype).eps)
    if bool(off.any()):
        where = "" if p.dim() == 1 else f" row {off.nonzero()[0].item()}"
        raise ValueError(f"{owner}: {name} rows must sum to 1, got{where} summing to {sums[off][0].item()}")


def sequences_refused(X: list | tuple, owner: str) -> ValueError:
    """The error for ``X`` given as a list of sequences: how to give their rows as one array and their lengths."""
    sizes = [x.shape[0] if getattr(x, "ndim", 0) > 0 else len(x) if isinstance(x, list | tuple) else 1 for x in X]
    which = "of different lengths" if len(set(sizes)) > 1 else "of lengths"
    rows = (" (if each array is one row of a single sequence: np.stack(X))" if len(set(sizes)) == 1
            and all(isinstance(x, np.ndarray | Tensor) and x.ndim == 1 for x in X) else "")
    return ValueError(f"{owner}: X is a list of {len(X)} sequence{'s' if len(X) != 1 else ''} {which} "
                      f"{sizes[:5]}{'...' if len(X) > 5 else ''}; give their rows as one array and their lengths: "
                      f"fit(np.concatenate(X), lengths=[len(x) for x in X]){rows}")


def as_sequences(X: Any, owner: str) -> Tensor:
    """``X`` (the rows of every sequence, one after the other) as a tensor (`as_tensor`). A list of sequences
    (hmmlearn's common mistake) is refused with how to give them: a list or tuple holding arrays or tensors (it
    stacked to one sequence of ``len(X)`` steps, silently a model of other features for equal-length 1-D ones), lists
    of different lengths (numpy's "inhomogeneous shape", which names neither the model nor ``lengths``) and nested
    lists three deep. A list of rows is taken as nested lists of numbers, as scikit-learn's ``X``."""
    if isinstance(X, list | tuple) and any(isinstance(x, np.ndarray | Tensor) and x.ndim > 0 for x in X):
        raise sequences_refused(X, owner)
    try:
        x = as_tensor(X, "X", owner)
    except ValueError:
        if isinstance(X, list | tuple) and len(X) > 1:
            raise sequences_refused(X, owner) from None
        raise
    if isinstance(X, list | tuple) and x.dim() > 2:  # nested lists of equal-length sequences
        raise sequences_refused(X, owner)
    return x


def floor_eigenvalues(s: Tensor, floor: float) -> Tensor:
    """The covariance :math:`\\Sigma \\succeq c I` that maximises the Gaussian likelihood of scatter ``s``."""
    evals, evecs = torch.linalg.eigh((s + s.mT) / 2)
    return (evecs * evals.clamp_min(floor)[..., None, :]) @ evecs.mT


class Gaussian:
    """Gaussian emissions: ``means_`` (K, D) and ``covars_`` shaped by ``covariance_type``."""

    names = ("means_", "covars_")

    def __init__(self, covariance_type: str, min_covar: float) -> None:
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"HMM: covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
        self.covariance_type, self.min_covar = covariance_type, min_covar

    def as_data(self, X: Any, owner: str) -> Tensor:
        x = as_sequences(X, owner)
        # integers as float64; half precision computes in float32 (its EM failed with non-finite counts)
        x = x.to(computing_dtype(x.dtype)) if x.is_floating_point() else x.double()
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"{owner} (gaussian): X must be (n_samples, n_features) with at least one sample, got "
                             f"shape {tuple(x.shape)}. Reshape your data with x.reshape(-1, 1) for one feature")
        if x.shape[1] == 0:
            raise ValueError(f"{owner} (gaussian): X has 0 feature(s) (shape={tuple(x.shape)}) while a minimum of 1 "
                             "is required.")
        check_finite(x, "X", owner)
        return x

    def check(self, p: Params, k: int, owner: str) -> None:
        """Raise a ValueError naming the parameter and its offending entry unless ``means_`` is finite and (k, D)
        and ``covars_`` has its type's shape and is finite and positive (definite) — as hmmlearn's
        "'diag' covars must be positive"; such parameters gave NaN scores and paths silently."""
        means, covars, kind = p["means_"], p["covars_"], self.covariance_type
        if means.dim() != 2 or means.shape[0] != k:
            raise ValueError(f"{owner}: means_ must be of shape ({k}, n_features), got {tuple(means.shape)}")
        if not bool(torch.isfinite(means).all()):
            raise ValueError(f"{owner}: means_ must be finite, got {entry('means_', means, ~torch.isfinite(means))}")
        d = means.shape[1]
        shape = {"diag": (k, d), "spherical": (k,), "full": (k, d, d), "tied": (d, d)}[kind]
        check_shape(covars, "covars_", shape, owner, f" for covariance_type {kind!r}, {k} states and {d} features")
        if kind in ("diag", "spherical"):
            bad = ~(torch.isfinite(covars) & (covars > 0))
            if bool(bad.any()):
                raise ValueError(f"{owner}: {kind!r} covars_ must be positive and finite, got "
                                 f"{entry('covars_', covars, bad)}")
            return
        finite = torch.isfinite(covars)
        scale = torch.where(finite, covars, 0.0).abs().amax((-2, -1), keepdim=True)
        bad = ~finite | ((covars - covars.mT).abs() > 1e-5 * scale)  # symmetric to rounding (an M-step's is)
        if bool(bad.any()):
            raise ValueError(f"{owner}: {kind!r} covars_ must be symmetric, positive-definite (and finite), got "
                             f"{entry('covars_', covars, bad)}")
        info = torch.linalg.cholesky_ex(covars).info.reshape(-1)
        if bool((info != 0).any()):
            which = "" if kind == "tied" else f" (state {int((info != 0).nonzero()[0])})"
            raise ValueError(f"{owner}: {kind!r} covars_ must be symmetric, positive-definite, got one that is "
                             f"not positive-definite{which} (after an EM step: a state's data nearly on a subspace; "
                             "raise min_covar, or fit in float64)")

    def full_covars(self, p: Params) -> Tensor:
        """(K, D, D) covariance matrices."""
        c, k, d = p["covars_"], p["means_"].shape[0], p["means_"].shape[-1]
        eye = torch.eye(d, dtype=c.dtype, device=c.device)
        full = {"diag": lambda: torch.diag_embed(c), "full": lambda: c,
                "spherical": lambda: c[:, None, None] * eye, "tied": lambda: c.expand(k, d, d)}[self.covariance_type]()
        if full.shape != (k, d, d):
            raise ValueError(f"HMM: covars_ has the wrong shape {tuple(c.shape)} for covariance_type "
                             f"{self.covariance_type!r} with {k} states and {d} features")
        return full

    def _from_full(self, full: Tensor, weights: Tensor) -> Tensor:
        if self.covariance_type == "diag":
            return torch.diagonal(full, dim1=-2, dim2=-1).clamp_min(self.min_covar)
        if self.covariance_type == "spherical":
            return torch.diagonal(full, dim1=-2, dim2=-1).mean(-1).clamp_min(self.min_covar)
        if self.covariance_type == "tied":
            return floor_eigenvalues((weights[:, None, None] * full).sum(0) / weights.sum(), self.min_covar)
        return floor_eigenvalues(full, self.min_covar)

    def init(self, x: Tensor, k: int, p: Params, which: str, g: torch.Generator, n_features: int | None = None,
             owner: str = "HMM") -> Params:
        """Initial ``means_`` (k-means) and ``covars_`` (the data covariance) where ``which`` or missing; k-means
        needs at least ``k`` samples (more states than samples gave duplicated means, variances at ``min_covar``
        and a spike of density, silently; hmmlearn and GaussianMixture refuse)."""
        out = dict(p)
        if "m" in which or p["means_"] is None:
            if x.shape[0] < k:
                raise ValueError(f"{owner}: {x.shape[0]} samples for {k} components (n_samples must be >= "
                                 "n_components to initialise the means by k-means; give fewer components, or means_ "
                                 "and init_params without 'm')")
            out["means_"] = kmeans(x, k, g)[0]
        if "c" in which or p["covars_"] is None:
            cov = torch.atleast_2d(torch.cov(x.T)) if x.shape[0] > 1 else torch.eye(x.shape[1], dtype=x.dtype)
            out["covars_"] = self._from_full(cov.to(x.device).expand(k, -1, -1), torch.ones(k, dtype=x.dtype))
        return out

    def log_prob(self, x: Tensor, p: Params) -> Tensor:
        """:math:`\\log \\mathcal N(x_t | \\mu_k, \\Sigma_k)` (N, K). Diagonal and spherical covariances: hmmlearn's
        expansion :math:`-\\tfrac12[\\sum_d x_d^2/\\sigma_{kd}^2 - 2 x_d\\mu_{kd}/\\sigma_{kd}^2 +
        \\mu_{kd}^2/\\sigma_{kd}^2 + \\log\\sigma_{kd}^2 + \\log 2\\pi]` about the means' centre :math:`c`, in float64
        whatever ``x``'s dtype (in float32 it lost up to 0.27 nats a row on states 100 apart with variance 1e-3): per
        block of rows (`row_blocks`), one product of :math:`[x^2, x]` with the weights :math:`-\\tfrac12[1/\\sigma^2,
        -2\\mu/\\sigma^2]` plus the constant per state, written into the result in ``x``'s dtype (float32: within half
        an ulp plus `expansion_rounding` of the density of its inputs). Float64 takes 70a0261's (B, 2D) x (2D, K)
        product, and its numbers; float32 below 16 states (K, 2D) x (2D, B), up to twice as fast, whose float64 rounding
        (up to 20 times the other's: 25-30 :math:`\\epsilon_{64} B` a row against 1-6 with 1000 features and up to 8
        states) stays below float32's. The expansion cancels where a state lies many standard deviations from :math:`c`:
        it rounds a row near a state by up to `expansion_error`, :math:`\\epsilon_{64} B \\sqrt{2D + 1}` for D features,
        :math:`B = \\max_k \\sum_d (\\mu_{kd} - c_d)^2 / \\sigma_{kd}^2` (a by-product of the constant; measured 3e-5
        nats for states 1e4 apart with variance 1e-4, :math:`B = 2.5 \\cdot 10^{11}`, one feature). Past
        `expansion_rounding` the differences :math:`(x_d - \\mu_{kd})^2/\\sigma_{kd}^2` are summed instead
        (`gaussian_log_prob` per block, in ``x``'s dtype: within a few of its ulps, at 2.5 times the product's time for
        5 states and 5 times for 50)."""
        means = p["means_"]
        n, d = x.shape
        if d != means.shape[-1]:
            raise ValueError(f"X has {d} features, but HMM is expecting {means.shape[-1]} features as input.")
        if self.covariance_type in ("diag", "spherical"):
            var, wide, k = p["covars_"], torch.float64, means.shape[0]
            var = var[:, None].expand_as(means) if var.dim() == 1 else var
            centre = means.to(wide).mean(0)  # a density does not change when x and the means shift together
            mu, prec = means.to(wide) - centre, 1.0 / var.to(wide)
            quad = (mu * mu * prec).sum(-1)  # (K,): each state's term of the constant, and the bound B
            out = x.new_empty(n, k)
            if expansion_error(float(quad.max()), d) > expansion_rounding(x.dtype):
                blocks = row_blocks(n, means.numel())
                for s in blocks:
                    out[s:s + blocks.step] = gaussian_log_prob(x[s:s + blocks.step], means, prec.to(x.dtype))
                return out
            weights = torch.cat([prec, -2.0 * mu * prec], 1).mul(-0.5)  # (K, 2D)
            const = -0.5 * (quad + (torch.log(var.to(wide)).sum(-1) + d * math.log(2 * math.pi)))  # 70a0261's
            # float32 below 16 states: (K, 2D) x (2D, B), up to twice as fast as (B, 2D) x (2D, K) there (one
            # thread), its rounding below float32's; otherwise 70a0261's (B, 2D) x (2D, K): with up to 8 states up
            # to 20 times more precise than the other (MKL sums it in parts; 1000 features), and from 16 states
            # 10-40% faster; a cache-sized block, not (N, 2D) temporaries
            few = k < 16 and torch.finfo(x.dtype).bits <= 32
            blocks = row_blocks(n, 2 * d + k)
            rows = min(n, blocks.step)
            buffer = torch.empty((2 * d, rows) if few else (rows, 2 * d), dtype=wide, device=x.device)
            for s in blocks:
                xb = x[s:s + blocks.step]
                stacked = buffer[:, :xb.shape[0]] if few else buffer[:xb.shape[0]].T  # [x^2; x] (2D, B)
                xc = stacked[d:].copy_(xb.T).sub_(centre[:, None])
                torch.mul(xc, xc, out=stacked[:d])
                if few:
                    out[s:s + blocks.step] = torch.addmm(const[:, None], weights, stacked).T
                elif out.dtype == wide:  # straight into the result
                    torch.addmm(const, stacked.T, weights.T, out=out[s:s + blocks.step])
                else:
                    out[s:s + blocks.step] = torch.addmm(const, stacked.T, weights.T)
            return out
        chol = torch.linalg.cholesky(self.full_covars(p))
        diff = (x[None] - means[:, None]).mT  # (K, D, N)
        maha = torch.linalg.solve_triangular(chol, diff, upper=False).pow(2).sum(1).T  # (N, K)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return -0.5 * (maha + logdet + d * torch.log(torch.tensor(2 * torch.pi, dtype=x.dtype)))

    def m_step(self, x: Tensor, gamma: Tensor, p: Params, which: str) -> Params:
        """New ``means_`` / ``covars_`` (those in ``which``); a state no step visits keeps its parameters."""
        out, nk = dict(p), gamma.sum(0)
        alive = nk > 1e-10 * x.shape[0]
        # the floor of a count divided by: 1e-300 rounds to 0 in float32 (0 / 0 = NaN for a state without mass, which
        # the tied covariance's weighted sum over states then spread: float32 fits failed where float64 ones ran)
        floor = max(1e-300, torch.finfo(nk.dtype).tiny)
        if "m" in which:
            # about the data's mean: gamma' x of data far from the origin lost float32's digits (means 3.6e-3 off at
            # 1000 for 20,000 rows, against 2.8e-5 centred; EM then stalled nats below the float64 fit)
            c = x.mean(0)
            centred = gamma.T @ (x - c) / nk.clamp_min(floor)[:, None] + c
            out["means_"] = torch.where(alive[:, None], centred, p["means_"])
        if "c" in which:
            means = out["means_"]
            # the scatter about each state's mean (E[xx'] - mu mu' cancels for data far from the origin)
            new = self._from_full(weighted_scatter(x, gamma, means) / nk.clamp_min(floor)[:, None, None], nk)
            out["covars_"] = new if self.covariance_type == "tied" else torch.where(
                alive.reshape(-1, *[1] * (new.dim() - 1)), new, p["covars_"])
        return out

    def sample(self, states: Tensor, p: Params, g: torch.Generator) -> Tensor:
        means = p["means_"]
        chol = torch.linalg.cholesky(self.full_covars(p))[states]
        eps = torch.randn(states.shape[0], means.shape[-1], generator=g, dtype=means.dtype).to(means.device)
        return means[states] + (chol @ eps[..., None]).squeeze(-1)


class Categorical:
    """Categorical emissions: ``emissionprob_`` (K, n_features)."""

    names = ("emissionprob_",)

    def __init__(self, covariance_type: str, min_covar: float) -> None:
        pass  # no settings: the signature is Gaussian's

    def as_data(self, X: Any, owner: str) -> Tensor:
        x = as_sequences(X, owner)
        if isinstance(X, list | tuple) and x.dim() == 2 and x.shape[1] > 1:  # lists of symbols: sequences, not rows
            raise sequences_refused(X, owner)
        x = x[:, 0] if x.dim() == 2 and x.shape[1] == 1 else x
        if x.is_floating_point():
            check_finite(x, "X", owner)
        if x.dim() != 1 or x.numel() == 0 or x.is_floating_point() and not bool((x == x.round()).all()):
            raise ValueError(f"{owner} (categorical): X must hold integer symbols, shape (N,) or (N, 1), got "
                             f"shape {tuple(as_tensor(X, 'X', owner).shape)} of dtype {x.dtype}")
        x = x.long()
        if bool((x < 0).any()):
            raise ValueError(f"{owner} (categorical): symbols must be >= 0, got {int(x.min())}")
        return x

    def init(self, x: Tensor, k: int, p: Params, which: str, g: torch.Generator, n_features: int | None = None,
             owner: str = "HMM") -> Params:
        out = dict(p)
        if "e" in which or p["emissionprob_"] is None:
            e = torch.rand(k, n_features, generator=g, dtype=torch.float64).to(x.device)
            out["emissionprob_"] = e / e.sum(1, keepdim=True)
        return out

    def check(self, p: Params, k: int, owner: str) -> None:
        """Raise a ValueError naming the offending entry or row unless ``emissionprob_`` is (k, n_features) with
        rows of probabilities summing to 1 (hmmlearn: "emissionprob_ rows must sum to 1")."""
        e = p["emissionprob_"]
        if e.dim() != 2 or e.shape[0] != k:
            raise ValueError(f"{owner}: emissionprob_ must be of shape ({k}, n_features), got {tuple(e.shape)}")
        check_distributions(e, "emissionprob_", owner)

    def log_prob(self, x: Tensor, p: Params) -> Tensor:
        e = p["emissionprob_"]
        if int(x.max()) >= e.shape[1]:
            raise ValueError(f"HMM: symbol {int(x.max())} outside the alphabet of {e.shape[1]}")
        return torch.log(e).T[x]

    def m_step(self, x: Tensor, gamma: Tensor, p: Params, which: str) -> Params:
        out, e = dict(p), p["emissionprob_"]
        if "e" in which:
            counts = torch.zeros_like(e).index_add_(1, x, gamma.T.to(e.dtype))
            total = counts.sum(1, keepdim=True)
            out["emissionprob_"] = torch.where(total > 0, counts / total.clamp_min(1e-300), e)
        return out

    def sample(self, states: Tensor, p: Params, g: torch.Generator) -> Tensor:
        return torch.multinomial(p["emissionprob_"][states].cpu(), 1, generator=g).to(states.device)


EMISSIONS: dict[str, type] = {"gaussian": Gaussian, "categorical": Categorical}
