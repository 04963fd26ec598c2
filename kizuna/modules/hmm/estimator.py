r"""`HiddenMarkovModel`: an HMM with Gaussian or categorical emissions, fitted by Baum-Welch (EM).

.. math::
    p(x_{0:T-1}, z_{0:T-1}) = \pi_{z_0}\, p(x_0|z_0) \prod_{t=1}^{T-1} A_{z_{t-1} z_t}\, p(x_t|z_t),\qquad
    p(x|z=k) = \mathcal N(x|\mu_k, \Sigma_k)\ \text{or}\ B_{k,x}

EM alternates the forward-backward E-step (`kizuna.modules._forward_backward`) with the closed-form
M-step :math:`\pi \propto \sum_b \gamma_{b,0} + a_\pi - 1`, :math:`A_{ij} \propto \sum_t \xi_t(i,j) + a_A - 1`
and the emissions' (`kizuna.modules.hmm.emissions`), so the log-likelihood never decreases with the default
priors of 1 (Baum et al. 1970; Rabiner 1989); with other Dirichlet priors EM is MAP estimation, and the log-posterior
(log-likelihood plus the priors' log-densities) is what never decreases, the log-likelihood in ``history_`` may dip.
The parameter and method names follow hmmlearn (``GaussianHMM`` / ``CategoricalHMM``), including
``fit(X, lengths)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from kizuna._data import check_count, check_int, check_non_negative, first_flagged
from kizuna.modules import _forward_backward as fb
from kizuna.modules._backend import resolve_backend
from kizuna.modules.estimator import Estimator
from kizuna.modules.hmm.emissions import EMISSIONS, check_distributions
from kizuna.modules.hmm.viterbi import viterbi
from kizuna.modules.rng import generator_for

Tensor = torch.Tensor
Lengths = Sequence[int] | Tensor | None
LETTERS = {"s": "startprob_", "t": "transmat_", "m": "means_", "c": "covars_", "e": "emissionprob_"}  # init_params
PARAMETERS = tuple(LETTERS.values())


def dirichlet_map(counts: Tensor, prior: float, previous: Tensor) -> Tensor:
    """The MAP probabilities :math:`\\propto \\max(n + a - 1, 0)` along the last axis; a row without any
    mass (a state no transition leaves, e.g. in a one-step sequence) keeps its ``previous`` values."""
    if not isinstance(prior, numbers.Real):  # hmmlearn's array of concentrations, in the counts' dtype and device
        prior = torch.as_tensor(prior, dtype=counts.dtype).to(counts.device)
    c = (counts + prior - 1.0).clamp_min(0.0)
    total = c.sum(-1, keepdim=True)
    return torch.where(total > 0, c / total.clamp_min(torch.finfo(c.dtype).tiny), previous)


class HiddenMarkovModel(Estimator):
    """Hidden Markov model (scikit-learn / hmmlearn API). Fitted parameters are torch tensors (arrays
    assigned by hand are converted); method outputs are arrays for array input, tensors for tensors.

    Args:
        n_components: number of hidden states K.
        emission: ``"gaussian"`` (rows of X are D-dim vectors) or ``"categorical"`` (X holds symbols
            ``0..n_features-1``, shape (N,) or (N, 1)).
        covariance_type: ``"diag"`` ``(K, D)``, ``"full"`` ``(K, D, D)``, ``"spherical"`` ``(K,)`` or
            ``"tied"`` ``(D, D)``: the shape of ``covars_``.
        min_covar: floor on the variances (eigenvalues of the covariances).
        startprob_prior, transmat_prior: Dirichlet concentrations (1.0: maximum likelihood).
        n_iter: maximum EM iterations; tol: stop when the log-likelihood gains less than this. As in hmmlearn, a
            negative ``tol`` is allowed: EM then stops early only if the log-likelihood falls by more than ``-tol``
            (``tol=-np.inf``: always run ``n_iter`` iterations), where scikit-learn's and kizuna's GaussianMixture
            refuse tol < 0.
        init_params, params: letters of the parameters to initialise / update: ``s`` startprob,
            ``t`` transmat, ``m`` means, ``c`` covars, ``e`` emissionprob (categorical).
        n_features: categorical alphabet size (inferred from the data when None).
        random_state: seed of the initialisation and of `sample` (see `kizuna.modules.rng`).
        backend: the Viterbi recursion of `decode` / `predict`: ``"auto"`` (numba when installed,
            ``pip install 'kizuna[fast]'``, and the data is on the CPU), ``"torch"`` or ``"numba"``; the same path
            and score wherever one path is the most probable, possibly different ones among exactly tied paths
            (`kizuna.modules.hmm.viterbi`).

    Example:
        >>> model = HiddenMarkovModel(2, n_iter=20, random_state=0)
        >>> x = torch.cat([torch.randn(50, 1) * 0.1, torch.randn(50, 1) * 0.1 + 3.0]).double()
        >>> model.fit(x).predict(x)[[0, 99]].tolist() in ([0, 1], [1, 0])
        True
    """

    estimator_type: ClassVar[str] = "density_estimator"
    startprob_: Any = None  # fitted (or assigned) parameters; class defaults keep __init__ to the parameters
    transmat_: Any = None
    means_: Any = None
    covars_: Any = None
    emissionprob_: Any = None
    history_: list[float] | None = None
    converged_: bool = False

    def __init__(self, n_components: int = 1, *, emission: str = "gaussian", covariance_type: str = "diag",
                 min_covar: float = 1e-3, startprob_prior: float = 1.0, transmat_prior: float = 1.0,
                 n_iter: int = 10, tol: float = 1e-2, init_params: str = "stmce", params: str = "stmce",
                 n_features: int | None = None, random_state: int | torch.Generator | None = None,
                 backend: str = "auto") -> None:
        self.n_components, self.emission, self.covariance_type = n_components, emission, covariance_type
        self.min_covar, self.startprob_prior, self.transmat_prior = min_covar, startprob_prior, transmat_prior
        self.n_iter, self.tol, self.init_params, self.params = n_iter, tol, init_params, params
        self.n_features, self.random_state, self.backend = n_features, random_state, backend

    # ----------------------------------------------------------------- settings, data and parameters
    @property
    def _owner(self) -> str:
        name = getattr(self, "name", None)
        return f"HMM {name}" if name else "HMM"

    def _emissions(self) -> Any:
        if self.emission not in EMISSIONS:
            raise ValueError(f"{self._owner}: emission must be one of {sorted(EMISSIONS)}, got {self.emission!r}")
        # numpy integers too (GridSearchCV over np.arange), as GaussianMixture and hmmlearn
        check_int(f"{self._owner}: n_components", self.n_components, 1)
        return EMISSIONS[self.emission](self.covariance_type, self.min_covar)

    def _check_settings(self) -> None:
        """The settings `fit` reads, checked (scikit-learn validates in ``fit``; a graph node also at construction):
        those of `_emissions`, ``n_iter`` (an integer >= 0), ``tol`` (a number) and the letters of ``init_params``
        and ``params``."""
        self._emissions()
        if self.n_iter is None:
            raise ValueError(f"{self._owner}: n_iter must be an integer >= 0, got None")
        check_count(f"{self._owner}: n_iter", self.n_iter, 0)
        tol = self.tol
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or math.isnan(tol):
            # (a string failed at the first comparison after an EM iteration; NaN never stopped)
            raise ValueError(f"{self._owner}: tol must be a number (the least log-likelihood gain an EM iteration "
                             f"must make to go on), got {tol!r}")
        # Dirichlet concentrations: NaN stopped learning the transitions silently (NaN MAP counts kept the previous
        # values), a negative one gave the identity matrix
        for what, value in (("startprob_prior", self.startprob_prior), ("transmat_prior", self.transmat_prior)):
            try:  # a number, or hmmlearn's array of concentrations
                array = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
            except (TypeError, ValueError):
                array = np.array([np.nan])
            if isinstance(value, bool) or array.size == 0 or not bool((np.isfinite(array) & (array > 0)).all()):
                raise ValueError(f"{self._owner}: {what} must be finite and > 0 (Dirichlet concentrations, a number or "
                                 f"an array; 1.0 is maximum likelihood), got {value!r}")
            # an array must broadcast to the parameter's shape without changing it ((K, K) for startprob_ made a
            # (K, K) start distribution, silently)
            k = int(self.n_components)
            shape = (k,) if what == "startprob_prior" else (k, k)
            if array.ndim > len(shape) or any(a not in (1, b) for a, b in zip(array.shape[::-1], shape[::-1])):
                raise ValueError(f"{self._owner}: {what} must be a number or an array of shape {shape} (or one that "
                                 f"broadcasts to it), got shape {array.shape}")
        check_non_negative(f"{self._owner}: min_covar", self.min_covar)
        for what, letters in (("init_params", self.init_params), ("params", self.params)):
            unknown = "".join(dict.fromkeys(c for c in letters if c not in LETTERS)) if isinstance(letters, str) \
                else None
            if unknown is None or unknown:
                named = ", ".join(f"{c} {n}" for c, n in LETTERS.items())
                got = f"unknown letters {unknown!r} in {letters!r}" if unknown else repr(letters)
                raise ValueError(f"{self._owner}: {what} must be a string of the letters {''.join(LETTERS)!r} "
                                 f"({named}), got {got}")

    def _data(self, X: Any, lengths: Lengths, fitting: bool = False) -> tuple[Tensor, Tensor]:
        """The data as a tensor and the sequences' lengths. Parameters already held as tensors (a fitted model) keep
        their dtype, floating data is cast to it (``predict`` on float32 data must not downcast a float64 model);
        parameters set by hand (numpy arrays) take the data's floating dtype. ``fitting``: only the parameters that
        `fit` keeps (those not in ``init_params``) count as held; the others are about to be set afresh, so a refit
        runs in the new data's dtype, as a fresh fit does."""
        x = self._emissions().as_data(X, self._owner)
        names = [n for c, n in LETTERS.items() if c not in self.init_params] if fitting else PARAMETERS
        held = next((v for v in map(lambda n: getattr(self, n), names) if isinstance(v, Tensor)), None)
        if held is not None and held.is_floating_point():
            dtype = fb.computing_dtype(held.dtype)  # (half-precision parameters set by hand: float32, as data)
            if x.is_floating_point() and x.dtype != dtype:
                x = x.to(dtype)
        else:
            dtype = x.dtype if x.is_floating_point() else torch.float64
        self._as_tensors(dtype, x.device)
        return x, fb.check_lengths(x.shape[0], lengths, x.device)

    def _as_tensors(self, dtype: torch.dtype, device: torch.device) -> None:
        """Parameters set by hand (numpy arrays, as in hmmlearn) become tensors of ``dtype`` on ``device``."""
        for name in PARAMETERS:
            if getattr(self, name) is not None:
                setattr(self, name, torch.as_tensor(getattr(self, name), dtype=dtype).to(device))

    def _emission_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._emissions().names}

    def _is_fitted(self) -> bool:
        return self.transmat_ is not None and all(v is not None for v in self._emission_params().values())

    def _log_chain(self) -> tuple[Tensor, Tensor]:
        self._check_fitted()
        k = int(self.n_components)
        if self.startprob_.shape != (k,) or self.transmat_.shape != (k, k):
            raise ValueError(f"{self._owner}: startprob_ must be ({k},) and transmat_ ({k}, {k}), got "
                             f"{tuple(self.startprob_.shape)} and {tuple(self.transmat_.shape)}")
        for name, p in (("startprob_", self.startprob_), ("transmat_", self.transmat_)):
            check_distributions(p, name, self._owner)  # a negative entry in a row summing to 1 gave NaN silently
        return torch.log(self.startprob_), torch.log(self.transmat_)

    def _checked_emissions(self) -> Any:
        """The emission model, after checking the emission parameters (once per call that reads them)."""
        emissions = self._emissions()
        emissions.check(self._emission_params(), int(self.n_components), self._owner)
        return emissions

    def _log_emit(self, x: Tensor) -> Tensor:
        return self._checked_emissions().log_prob(x, self._emission_params())

    def _init(self, x: Tensor, g: torch.Generator) -> None:
        k, opts = int(self.n_components), dict(dtype=x.dtype if x.is_floating_point() else torch.float64,
                                               device=x.device)
        if "s" in self.init_params or self.startprob_ is None:
            self.startprob_ = torch.full((k,), 1.0 / k, **opts)
        if "t" in self.init_params or self.transmat_ is None:
            self.transmat_ = torch.full((k, k), 1.0 / k, **opts)
        n_features = self.n_features if self.n_features is not None or x.is_floating_point() else int(x.max()) + 1
        new = self._emissions().init(x, k, self._emission_params(), self.init_params, g, n_features, self._owner)
        for name, value in new.items():
            setattr(self, name, value)

    # ----------------------------------------------------------------- EM
    def _m_step(self, x: Tensor, sm: fb.Smoothed) -> None:
        """The M-step of the parameters in ``params`` from the E-step ``sm``; raises, leaving every parameter as it
        was, when an expected count is not finite (a NaN would read as "no mass" and keep the old values)."""
        gamma = torch.exp(sm.log_gamma)
        for what, counts in (("start", sm.start_counts), ("transition", sm.trans_counts), ("state", gamma)):
            if not bool(torch.isfinite(counts).all()):
                raise ValueError(f"{self._owner}: the E-step's expected {what} counts are not finite "
                                 f"({first_flagged(counts, ~torch.isfinite(counts))}); the parameters were not updated")
        if "s" in self.params:
            self.startprob_ = dirichlet_map(sm.start_counts, self.startprob_prior, self.startprob_)
        if "t" in self.params:
            self.transmat_ = dirichlet_map(sm.trans_counts, self.transmat_prior, self.transmat_)
        new = self._emissions().m_step(x, gamma, self._emission_params(), self.params)
        for name, value in new.items():
            setattr(self, name, value)

    def fit(self, X: Any, lengths: Lengths = None) -> HiddenMarkovModel:
        """Baum-Welch from the initialisation given by ``init_params``; records ``history_`` (log p(X)). The
        parameters in ``init_params`` start afresh, whatever an earlier fit left (scikit-learn's ``fit``): a refit on
        float64 data after one on float32 data runs in float64."""
        self._check_settings()
        x, lengths = self._data(X, lengths, fitting=True)
        self._init(x, generator_for(self.random_state, "cpu"))
        self.history_, self.converged_ = [], False
        for _ in range(self.n_iter):
            sm = fb.forward_backward(*self._log_chain(), self._log_emit(x), lengths)
            self.history_.append(float(sm.log_likelihood.sum()))
            if len(self.history_) > 1 and self.history_[-1] - self.history_[-2] < self.tol:
                self.converged_ = True
                break
            self._m_step(x, sm)
        return self

    # ----------------------------------------------------------------- inference
    def score(self, X: Any, lengths: Lengths = None) -> float:
        """:math:`\\log p(X)` summed over the sequences (forward algorithm)."""
        x, lengths = self._data(X, lengths)
        return float(fb.forward_log_likelihood(*self._log_chain(), self._log_emit(x), lengths).sum())

    def score_samples(self, X: Any, lengths: Lengths = None) -> tuple[float, Any]:
        """(:math:`\\log p(X)`, posteriors :math:`p(z_t|X)` (N, K))."""
        x, lengths = self._data(X, lengths)
        sm = fb.forward_backward(*self._log_chain(), self._log_emit(x), lengths)
        return float(sm.log_likelihood.sum()), self._out(torch.exp(sm.log_gamma), X)

    def predict_proba(self, X: Any, lengths: Lengths = None) -> Any:
        """Posterior state probabilities :math:`p(z_t=k|X)`, (N, K)."""
        return self.score_samples(X, lengths)[1]

    def decode(self, X: Any, lengths: Lengths = None, algorithm: str = "viterbi") -> tuple[float, Any]:
        """(log-probability, states (N,)): Viterbi's :math:`\\max_z \\log p(X, z)`, or ``"map"``:
        the per-step argmax of the posteriors with :math:`\\sum_t \\log \\max_k p(z_t=k|X)`."""
        if algorithm == "viterbi":
            x, lengths = self._data(X, lengths)
            backend = resolve_backend(self.backend, self._owner, x.device)
            score, states = viterbi(*self._log_chain(), self._log_emit(x), lengths, backend)
            return float(score.sum()), self._out(states, X)
        if algorithm == "map":
            post = torch.as_tensor(self.predict_proba(X, lengths))
            best, states = post.max(-1)
            return float(torch.log(best).sum()), self._out(states, X)
        raise ValueError(f"{self._owner}.decode: algorithm must be 'viterbi' or 'map', got {algorithm!r}")

    def predict(self, X: Any, lengths: Lengths = None) -> Any:
        """Viterbi state sequence (N,)."""
        return self.decode(X, lengths)[1]

    def sample(self, n_samples: int = 1, random_state: int | torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One sequence of length ``n_samples`` from the model: (X, states), from the stream of ``random_state``
        (default: the estimator's). ``n_samples`` must be a positive int (as scikit-learn's ``GaussianMixture``;
        hmmlearn returns one step for 0)."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"{self._owner}: n_samples must be a positive int, got {n_samples!r}")
        n_samples = int(n_samples)
        g = generator_for(self.random_state if random_state is None else random_state, "cpu")
        values = [v for v in map(lambda n: getattr(self, n), PARAMETERS) if v is not None]
        if any(not isinstance(v, Tensor) for v in values):  # arrays assigned by hand (any of them, as `_data` takes)
            held = next((v for v in values if isinstance(v, Tensor) and v.is_floating_point()), None)
            self._as_tensors(torch.float64 if held is None else fb.computing_dtype(held.dtype),
                             torch.device("cpu") if held is None else held.device)
        log_start, log_trans = self._log_chain()
        u = torch.rand(n_samples, generator=g, dtype=log_trans.dtype).to(log_trans.device)
        cum_start, cum_trans = torch.cumsum(log_start.exp(), 0), torch.cumsum(log_trans.exp(), 1)
        states = torch.empty(n_samples, dtype=torch.long, device=log_trans.device)
        # a Markov chain is sequential: one searchsorted per step on a K-vector. The first cumulative sum strictly
        # above u times the row's total (u in [0, 1), so below the total): a state of probability 0 is never drawn,
        # neither at u == 0 (the first cumulative sum at or above u drew state 0 there, once per 2^24 float32
        # steps) nor at the top (the last states' zero mass)
        s = int(torch.searchsorted(cum_start, u[:1] * cum_start[-1], right=True).clamp_max(self.n_components - 1))
        states[0] = s
        for t in range(1, n_samples):
            s = int(torch.searchsorted(cum_trans[s], u[t:t + 1] * cum_trans[s, -1], right=True).clamp_max(
                self.n_components - 1))
            states[t] = s
        return self._checked_emissions().sample(states, self._emission_params(), g), states

    @property
    def n_features_in_(self) -> int:
        """Features seen in ``fit`` (Gaussian); 1 for categorical symbols."""
        self._check_fitted()
        return 1 if self.emission == "categorical" else int(torch.as_tensor(self.means_).shape[-1])
