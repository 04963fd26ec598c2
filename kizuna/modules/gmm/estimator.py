r"""`GaussianMixture`: the scikit-learn facade of the Bayesian Gaussian mixture (`kizuna.modules.GMM`'s estimator).

.. math::
    \pi \sim \mathrm{Dir}(\alpha_0),\quad (\mu_k,\Lambda_k) \sim \mathcal{NW}(m_0,\kappa_0,\nu_0,S_0),\quad
    c_n \sim \pi,\quad x_n \sim \mathcal N(\mu_{c_n}, \Lambda_{c_n}^{-1}).

``algorithm`` picks blocked Gibbs sampling (exact and vectorised), SERKET's collapsed Gibbs sampler
(`kizuna.modules.gmm.collapsed`), variational Bayes or EM (`kizuna.modules.gmm.algorithms`). The
constructor takes scikit-learn's names and defaults (``BayesianGaussianMixture``); priors left at ``None``
are set from the data at every fit: :math:`m_0` the data mean, :math:`S_0` the data covariance,
:math:`\nu_0 = D`, :math:`\alpha_0 = 1/K`. Arrays in give arrays out; tensors give tensors. Internally float64.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.concatenate([rng.normal(-3, 1, (50, 2)), rng.normal(3, 1, (50, 2))])
>>> gmm = GaussianMixture(2, algorithm="em", random_state=0).fit(x)
>>> sorted(np.round(gmm.weights_, 2).tolist())
[0.5, 0.5]
>>> bool(gmm.predict(x[:1]) != gmm.predict(x[-1:]))
True
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from kizuna._distances import kmeans
from kizuna.modules.estimator import Estimator
from kizuna.modules.gmm import algorithms as algo
from kizuna.modules.gmm.collapsed import collapsed_gibbs
from kizuna.modules.gmm.normal_wishart import NormalWishart, gaussian_log_prob
from kizuna.modules.rng import generator_for, rng_from
from kizuna.modules.validation import as_matrix, check_n_features

ALGORITHMS = ("gibbs", "collapsed", "vb", "em")
COVARIANCE_TYPES = ("full", "diag")
INIT_PARAMS = ("kmeans", "random")
Tensor = torch.Tensor


def start_score(fitted: algo.Fitted, parent: algo.ClassPrior = algo.NO_PARENT) -> float:
    """How well a run explains its data, to choose among ``n_init`` starts:
    :math:`\\sum_n \\log\\sum_k \\pi^{\\text{msg}}_{nk}\\, e^{\\text{own}_{nk}}` (without a parent's prior,
    :math:`\\sum_n \\log\\sum_k e^{\\text{own}_{nk}}`), with ``own`` the run's :math:`\\log p(x_n, c_n=k)` — for the
    samplers the collapsed conditional given the other samples' classes, for VB / EM the last E step's."""
    own = fitted.own
    if parent.probs is not None:
        own = own + torch.log(parent.probs.to(own.dtype).clamp(min=1e-300))
    return float(torch.logsumexp(own, 1).sum())


class GaussianMixture(Estimator):
    """Bayesian Gaussian mixture estimator (see the module docstring).

    Args:
        n_components: :math:`K`.
        algorithm: ``"gibbs"`` (blocked Gibbs), ``"collapsed"`` (SERKET's collapsed Gibbs sampler, one point at a
            time, `kizuna.modules.gmm.collapsed`), ``"vb"`` or ``"em"``.
        covariance_type: ``"full"`` or ``"diag"``.
        reg_covar: added to covariance diagonals (EM) and to :math:`S_0`.
        weight_concentration_prior, mean_precision_prior, mean_prior, degrees_of_freedom_prior, covariance_prior:
            :math:`\\alpha_0, \\kappa_0, m_0, \\nu_0, S_0` (``None``: from data).
        max_iter: Gibbs sweeps / VB or EM iterations per ``fit`` (per ``update`` in a graph); EM counts as
            scikit-learn does: an initial M step from the start, then ``max_iter`` E and M steps.
        tol: convergence threshold of VB (responsibilities) and EM (objective).
        init_params: ``"kmeans"`` (k-means++ seeding then Lloyd iterations, `kizuna._distances.kmeans`, the HMM's
            start too) or ``"random"`` initial partition.
        n_local_trials: candidates per centre of the k-means++ seeding of ``init_params="kmeans"``. ``1`` (the
            default): plain k-means++, the draws of every GMM result recorded so far (bitwise the start before stop
            48). ``None``: scikit-learn's greedy seeding (``KMeans``' ``2 + int(log n_components)`` candidates, the
            one that lowers the summed squared distances most kept; the HMM's start), which ends far less often in a
            poor start (on SERKET's HMM points, below 0.9 accuracy at 0.55% of seeds instead of 5%). The default
            will become ``None`` once the recorded figures are re-run with it.
        n_init: initial partitions tried by ``fit`` (and by a graph node's first ``update``); the run of highest
            `start_score` is kept (scikit-learn's ``n_init``; a node's later updates continue that run).
        n_particles: particles per sample when a graph combines a class prior by SIR.
        random_state: seed of ``fit`` and ``sample`` (see `kizuna.modules.rng`).
    """

    estimator_type: ClassVar[str] = "density_estimator"
    fitted_: algo.Fitted | None = None  # set by fit (a class default keeps __init__ to the parameters)
    n_local_trials: int | None = 1  # (an estimator or node pickled before stop 48 has none: it seeds as then)

    def __init__(self, n_components: int = 1, *, algorithm: str = "gibbs", covariance_type: str = "full",
                 reg_covar: float = 1e-6, weight_concentration_prior: float | None = None,
                 mean_precision_prior: float = 1.0, mean_prior: Any = None,
                 degrees_of_freedom_prior: float | None = None, covariance_prior: Any = None, max_iter: int = 100,
                 tol: float = 1e-3, init_params: str = "kmeans", n_local_trials: int | None = 1, n_init: int = 1,
                 n_particles: int = 200, random_state: int | torch.Generator | None = None) -> None:
        self.n_components, self.algorithm, self.covariance_type = n_components, algorithm, covariance_type
        self.reg_covar, self.weight_concentration_prior = reg_covar, weight_concentration_prior
        self.mean_precision_prior, self.mean_prior = mean_precision_prior, mean_prior
        self.degrees_of_freedom_prior, self.covariance_prior = degrees_of_freedom_prior, covariance_prior
        self.max_iter, self.tol, self.init_params, self.n_init = max_iter, tol, init_params, n_init
        self.n_local_trials = n_local_trials
        self.n_particles, self.random_state = n_particles, random_state

    # ------------------------------------------------------------------ checks and inputs
    @property
    def _owner(self) -> str:
        name = getattr(self, "name", None)
        return f"GMM {name}" if name else type(self).__name__

    def _validate(self) -> None:
        """Every parameter in range (scikit-learn validates in ``fit``; a graph node also at construction)."""
        k = self.n_components
        # numpy integers too (GridSearchCV over np.arange); non-integer max_iter failed in range()
        for what, value in (("n_components", k), ("n_init", self.n_init), ("max_iter", self.max_iter)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{self._owner}: {what} must be a positive int, got {value!r}")
        trials = self.n_local_trials
        if trials is not None and (isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1):
            raise ValueError(f"{self._owner}: n_local_trials must be a positive int (1: plain k-means++) or None "
                             f"(scikit-learn's 2 + int(log n_components)), got {trials!r}")
        for value, allowed, what in ((self.algorithm, ALGORITHMS, "algorithm"),
                                     (self.covariance_type, COVARIANCE_TYPES, "covariance_type"),
                                     (self.init_params, INIT_PARAMS, "init_params")):
            if value not in allowed:
                raise ValueError(f"{self._owner}: {what} must be one of {allowed}, got {value!r}")
        if not (0 <= self.reg_covar < math.inf and 0 < self.mean_precision_prior < math.inf):
            raise ValueError(f"{self._owner}: need reg_covar >= 0 and mean_precision_prior > 0, both finite, got "
                             f"{self.reg_covar}, {self.mean_precision_prior}")
        alpha = self.weight_concentration_prior
        if alpha is not None and not 0 < alpha < math.inf:  # a Dirichlet's concentration; <= 0 is no distribution
            raise ValueError(f"{self._owner}: weight_concentration_prior must be > 0 and finite (or None: "
                             f"1 / n_components), got {alpha!r}")
        if not self.tol >= 0:
            raise ValueError(f"{self._owner}: tol must be >= 0, got {self.tol!r}")

    def _as_x(self, X: Any) -> Tensor:
        return as_matrix(X, "X", self._owner)

    def _is_fitted(self) -> bool:
        return self.fitted_ is not None

    def _fitted(self) -> algo.Fitted:
        self._check_fitted()
        return self.fitted_

    # ------------------------------------------------------------------ the model
    def _prior(self, x: Tensor) -> NormalWishart:
        n, d = x.shape
        k, diag = self.n_components, self.covariance_type == "diag"
        m0 = x.mean(0) if self.mean_prior is None else torch.as_tensor(self.mean_prior, dtype=x.dtype).to(x.device)
        if self.covariance_prior is not None:
            s0 = torch.as_tensor(self.covariance_prior, dtype=x.dtype).to(x.device)
        else:
            s0 = x.var(0, correction=int(n > 1)) if diag else torch.atleast_2d(torch.cov(x.T, correction=int(n > 1)))
        s0 = s0 + (self.reg_covar if diag else self.reg_covar * torch.eye(d, dtype=x.dtype, device=x.device))
        expected = (d,) if diag else (d, d)
        for what, value in (("mean_prior", m0), ("covariance_prior", s0)):  # (NaN passed `<= 0`: NaN weights)
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{self._owner}: {what} must be finite, got {value.tolist()}")
        if tuple(m0.shape) != (d,) or tuple(s0.shape) != expected:
            raise ValueError(f"{self._owner}: mean_prior must have shape {(d,)} and covariance_prior {expected} "
                             f"for {d}-dimensional data, got {tuple(m0.shape)} and {tuple(s0.shape)}")
        # the Wishart's scale: positive definite, whether given or taken from the data (a constant feature with
        # reg_covar=0 gave NaN posteriors silently, or a raw Cholesky error)
        bayesian = self.algorithm != "em"  # (EM reads no prior)
        bad = (self.covariance_prior is not None or bayesian) and (
            bool((s0 <= 0).any()) if diag else not bool(torch.linalg.cholesky_ex(s0).info == 0))
        if bad and self.covariance_prior is not None:
            raise ValueError(f"{self._owner}: covariance_prior must be positive definite "
                             f"{'(every entry > 0)' if diag else '(a symmetric matrix with a Cholesky factor)'}")
        if bad:
            flat = torch.nonzero((s0 if diag else torch.diagonal(s0)) <= 0).flatten().tolist()
            why = (f"feature(s) {flat} have zero variance" if flat else "the features are linearly dependent")
            raise ValueError(f"{self._owner}: the prior's scale, the data's covariance plus reg_covar, is not positive "
                             f"definite: {why}; set reg_covar > 0 (e.g. 1e-6) or give covariance_prior")
        nu0 = float(d) if self.degrees_of_freedom_prior is None else float(self.degrees_of_freedom_prior)
        if not d - 1 < nu0 < math.inf:
            raise ValueError(f"{self._owner}: degrees_of_freedom_prior must be finite and exceed D - 1 = {d - 1}, got "
                             f"{nu0}")
        ones = torch.ones(k, dtype=x.dtype, device=x.device)
        return NormalWishart(m0.expand(k, d).clone(), ones * self.mean_precision_prior, ones * nu0,
                             s0.expand(k, *expected).clone())

    def _alpha0(self) -> float:
        return 1.0 / self.n_components if self.weight_concentration_prior is None else self.weight_concentration_prior

    def _initial(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """A new initial partition (labels for the samplers, one-hot responsibilities for VB / EM)."""
        if self.init_params == "kmeans":
            trials = None if self.n_local_trials is None else int(self.n_local_trials)
            z = kmeans(x, self.n_components, gen, n_local_trials=trials)[1]
        else:
            z = torch.randint(self.n_components, (x.shape[0],), generator=gen, device=x.device)
        return z if self.algorithm in ("gibbs", "collapsed") else F.one_hot(z, self.n_components).to(x.dtype)

    def _run(self, x: Tensor, parent: algo.ClassPrior, gen: torch.Generator, warm: bool,
             max_iter: int | None = None) -> algo.Fitted:
        """The chosen algorithm on ``x``: from the last state when ``warm`` and the sizes agree, else from
        ``n_init`` initial partitions, keeping the run of highest `start_score`."""
        prior = self._prior(x)
        n_iter = self.max_iter if max_iter is None else max_iter
        f = self.fitted_
        if warm and f is not None and f.resp.shape[0] == x.shape[0]:  # continue the previous update
            return self._from(x, f.z if f.z is not None else f.resp, prior, n_iter, parent, gen)
        best: tuple[float, algo.Fitted] | None = None
        for _ in range(int(self.n_init)):
            fitted = self._from(x, self._initial(x, gen), prior, n_iter, parent, gen)
            score = start_score(fitted, parent) if self.n_init > 1 else 0.0
            if best is None or score > best[0]:
                best = (score, fitted)
        return best[1]

    def _from(self, x: Tensor, start: Tensor, prior: NormalWishart, n_iter: int, parent: algo.ClassPrior,
              gen: torch.Generator) -> algo.Fitted:
        try:
            return self._algorithm(x, start, prior, n_iter, parent, gen)
        except torch.linalg.LinAlgError as err:  # (a raw "linalg.cholesky: ... not positive-definite" before)
            if self.algorithm == "em":
                raise
            raise ValueError(
                f"{self._owner}: a component's posterior scale S_N is not positive definite in "
                f"{str(x.dtype).replace('torch.', '')} ({str(err).splitlines()[0][:120]}): the features are linearly "
                "dependent or nearly so at the data's scale (e.g. a duplicated column of values near 1e4), so "
                f"reg_covar={self.reg_covar:g} is lost to rounding; standardise the features, drop the dependent ones, "
                "or raise reg_covar") from None

    def _algorithm(self, x: Tensor, start: Tensor, prior: NormalWishart, n_iter: int, parent: algo.ClassPrior,
                   gen: torch.Generator) -> algo.Fitted:
        if self.algorithm == "gibbs":
            return algo.gibbs(x, prior, self._alpha0(), start, n_iter, parent, gen)
        if self.algorithm == "collapsed":
            return collapsed_gibbs(x, prior, self._alpha0(), start, n_iter, parent, gen)
        if self.algorithm == "vb":
            return algo.vb(x, prior, self._alpha0(), start, n_iter, self.tol, parent)
        return algo.em(x, start, n_iter, self.tol, self.reg_covar, self.covariance_type == "diag", parent)

    def _log_joint(self, x: Tensor, mixing: bool = True) -> Tensor:
        """:math:`\\log p(x, c=k)` under the fitted model: Student-t predictive (Bayesian) or Gaussian (EM);
        :math:`\\log p(x \\mid c=k)` without ``mixing``."""
        f = self._fitted()
        check_n_features(x, f.means.shape[1], self._owner)
        log_lik = f.nw.log_predictive(x) if f.nw is not None else gaussian_log_prob(
            x, f.means, algo.precision_root(f.covariances))
        return log_lik + torch.log(f.weights) if mixing else log_lik

    # ------------------------------------------------------------------ scikit-learn
    def fit(self, X: Any, y: Any = None) -> GaussianMixture:
        """Fit to ``X`` (N×D) from a fresh initialisation; ``y`` is ignored."""
        self._validate()
        x = self._as_x(X)
        if x.shape[0] < self.n_components:
            raise ValueError(f"{self._owner}: {x.shape[0]} samples for {self.n_components} components "
                             "(n_samples must be >= n_components)")
        self.fitted_ = self._run(x, algo.NO_PARENT, generator_for(self.random_state, x.device), warm=False)
        return self

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """``fit(X).predict(X)``, as in scikit-learn: the most probable component of every training sample under
        the fitted model (for ``gibbs`` and ``collapsed`` the posterior predictive, not the chain's last
        leave-one-out responsibilities, which can differ for a few points near a boundary)."""
        return self.fit(X).predict(X)

    def predict_proba(self, X: Any) -> Any:
        """:math:`p(c=k\\mid x)` (N×K) under the fitted model."""
        return self._out(torch.softmax(self._log_joint(self._as_x(X)), 1), X)

    def predict(self, X: Any) -> Any:
        """The most probable component of every row of ``X``."""
        return self._out(self._log_joint(self._as_x(X)).argmax(1), X)

    def score_samples(self, X: Any) -> Any:
        """:math:`\\log p(x_n)` per row (the posterior predictive for ``gibbs``/``vb``)."""
        return self._out(torch.logsumexp(self._log_joint(self._as_x(X)), 1), X)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean of :meth:`score_samples`."""
        return float(torch.logsumexp(self._log_joint(self._as_x(X)), 1).mean())

    def sample(self, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """``(X, y)`` drawn from the fitted point estimates ``weights_, means_, covariances_``."""
        f = self._fitted()
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"{self._owner}: n_samples must be a positive int, got {n_samples!r}")
        n_samples = int(n_samples)  # (a numpy integer too, as scikit-learn's)
        with rng_from(generator_for(self.random_state, f.means.device)):
            y = torch.multinomial(f.weights, n_samples, replacement=True)
            eps = torch.randn(n_samples, f.means.shape[1], dtype=f.means.dtype, device=f.means.device)
        cov = f.covariances[y]
        noise = eps * cov.sqrt() if cov.dim() == 2 else (torch.linalg.cholesky(cov) @ eps.unsqueeze(-1)).squeeze(-1)
        return f.means[y] + noise, y

    @property
    def n_features_in_(self) -> int:
        """Number of features seen in ``fit``."""
        return self._fitted().means.shape[1]

    @property
    def weights_(self) -> Any:
        """Mixing weights (posterior means for ``gibbs``/``vb``)."""
        return self._fitted().weights.cpu().numpy()

    @property
    def means_(self) -> Any:
        """Component means (posterior means :math:`m_k` for ``gibbs``/``vb``)."""
        return self._fitted().means.cpu().numpy()

    @property
    def n_iter_(self) -> int:
        """Iterations of the kept run in the last ``fit`` (or graph update): VB / EM iterations, or Gibbs sweeps."""
        return self._fitted().n_iter

    @property
    def converged_(self) -> bool | None:
        """VB and EM: whether the last ``fit`` met ``tol`` within ``max_iter`` iterations (scikit-learn's
        ``converged_``); ``None`` for ``gibbs`` and ``collapsed``: a sampler has no convergence test (run more
        sweeps, or compare chains)."""
        return self._fitted().converged

    @property
    def lower_bound_(self) -> float:
        """EM: the mean log-likelihood of the training data under the fitted model (``score(X)`` on the training data
        after ``fit``; in a graph, with the parent's class prior). scikit-learn's ``GaussianMixture.lower_bound_`` is
        that of the model before its last M step (its last E step's), lower by the last iteration's gain (less than
        ``tol`` when that gain is below the previous one's, as it usually is once converged). Not defined for the
        Bayesian algorithms, whose evidence bound is not computed: an AttributeError says so."""
        f = self._fitted()
        if not f.history:
            raise AttributeError(f"{self._owner}: lower_bound_ is EM's mean log-likelihood; algorithm="
                                 f"{self.algorithm!r} does not compute a bound (score(X) is the mean posterior "
                                 "predictive log-density)")
        return f.history[-1]

    @property
    def covariances_(self) -> Any:
        """Covariances (:math:`\\mathbb E[\\Lambda_k]^{-1} = S_k/\\nu_k` for ``gibbs``/``vb``)."""
        return self._fitted().covariances.cpu().numpy()
