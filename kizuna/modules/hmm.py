r"""A hidden Markov model with Gaussian or categorical emissions, fitted by Baum-Welch (EM).

.. math::
    p(x_{0:T-1}, z_{0:T-1}) = \pi_{z_0}\, p(x_0|z_0) \prod_{t=1}^{T-1} A_{z_{t-1} z_t}\, p(x_t|z_t),\qquad
    p(x|z=k) = \mathcal N(x|\mu_k, \Sigma_k)\ \text{or}\ B_{k,x}

EM alternates the forward-backward E-step (`kizuna.modules._forward_backward`) with the closed-form
M-step :math:`\pi \propto \sum_b \gamma_{b,0} + a_\pi - 1`, :math:`A_{ij} \propto \sum_t \xi_t(i,j) + a_A - 1`,
:math:`\mu_k = \sum_t \gamma_t(k) x_t / \sum_t \gamma_t(k)` and the weighted scatter for
:math:`\Sigma_k`, whose eigenvalues are floored at ``min_covar``. The floor is the constrained
maximiser of the EM objective, so the log-likelihood never decreases (Baum et al. 1970; Rabiner 1989).
The parameter and method names follow hmmlearn (``GaussianHMM`` / ``CategoricalHMM``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kizuna.modules import _forward_backward as fb
from kizuna.modules.gmm_inference import weighted_scatter

Tensor = torch.Tensor
COVARIANCE_TYPES = ("diag", "full", "spherical", "tied")
PARAMETERS = ("startprob_", "transmat_", "means_", "covars_", "emissionprob_")


def _out(value: Tensor, like: Any) -> Any:
    """Arrays in give arrays out; tensors give tensors."""
    return value if isinstance(like, Tensor) else value.cpu().numpy()


class HMM:
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
        n_iter: maximum EM iterations; tol: stop when the log-likelihood gains less than this.
        init_params, params: letters of the parameters to initialise / update: ``s`` startprob,
            ``t`` transmat, ``m`` means, ``c`` covars, ``e`` emissionprob (categorical).
        n_features: categorical alphabet size (inferred from the data when None).
        random_state: seed of the initialisation and of `sample`.

    Example:
        >>> import torch
        >>> model = HMM(2, n_iter=20, random_state=0)
        >>> x = torch.cat([torch.randn(50, 1) * 0.1, torch.randn(50, 1) * 0.1 + 3.0]).double()
        >>> model.fit(x).predict(x)[[0, 99]].tolist() in ([0, 1], [1, 0])
        True
    """

    def __init__(self, n_components: int = 1, emission: str = "gaussian", covariance_type: str = "diag",
                 min_covar: float = 1e-3, startprob_prior: float = 1.0, transmat_prior: float = 1.0,
                 n_iter: int = 10, tol: float = 1e-2, init_params: str = "stmce", params: str = "stmce",
                 n_features: int | None = None, random_state: int | None = None) -> None:
        if emission not in EMISSIONS:
            raise ValueError(f"HMM: emission must be one of {sorted(EMISSIONS)}, got {emission!r}")
        if int(n_components) < 1:
            raise ValueError(f"HMM: n_components must be >= 1, got {n_components}")
        self.n_components, self.emission, self.covariance_type = int(n_components), emission, covariance_type
        self.min_covar, self.startprob_prior, self.transmat_prior = min_covar, startprob_prior, transmat_prior
        self.n_iter, self.tol, self.init_params, self.params = n_iter, tol, init_params, params
        self.n_features, self.random_state = n_features, random_state
        self._emission = EMISSIONS[emission](self)
        self.history_: list[float] = []
        self.converged_ = False

    # ----------------------------------------------------------------- data and parameters
    def _data(self, X: Any, lengths: Sequence[int] | Tensor | None) -> tuple[Tensor, Tensor]:
        x = self._emission.as_data(X)
        self._as_tensors(x.dtype if x.is_floating_point() else torch.float64, x.device)
        return x, fb.check_lengths(x.shape[0], lengths, x.device)

    def _as_tensors(self, dtype: torch.dtype, device: torch.device) -> None:
        """Parameters set by hand (numpy arrays, as in hmmlearn) become tensors of ``dtype`` on ``device``."""
        for name in PARAMETERS:
            if getattr(self, name, None) is not None:
                setattr(self, name, torch.as_tensor(getattr(self, name), dtype=dtype).to(device))

    def _log_chain(self) -> tuple[Tensor, Tensor]:
        if not hasattr(self, "transmat_"):
            raise RuntimeError("HMM: not fitted; call fit() or set startprob_, transmat_ and the emission parameters")
        k = self.n_components
        if self.startprob_.shape != (k,) or self.transmat_.shape != (k, k):
            raise ValueError(f"HMM: startprob_ must be ({k},) and transmat_ ({k}, {k}), got "
                             f"{tuple(self.startprob_.shape)} and {tuple(self.transmat_.shape)}")
        for name, p in (("startprob_", self.startprob_), ("transmat_", self.transmat_)):
            if not torch.allclose(p.sum(-1), torch.ones((), dtype=p.dtype, device=p.device), atol=1e-6):
                raise ValueError(f"HMM: {name} rows must sum to 1")
        return torch.log(self.startprob_), torch.log(self.transmat_)

    def _log_emit(self, x: Tensor) -> Tensor:
        return self._emission.log_prob(x)

    def _generator(self, seed: int | None) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
        return g

    def _init(self, x: Tensor) -> None:
        k, opts = self.n_components, dict(dtype=x.dtype if x.is_floating_point() else torch.float64, device=x.device)
        if "s" in self.init_params or not hasattr(self, "startprob_"):
            self.startprob_ = torch.full((k,), 1.0 / k, **opts)
        if "t" in self.init_params or not hasattr(self, "transmat_"):
            self.transmat_ = torch.full((k, k), 1.0 / k, **opts)
        self._emission.init(x, self._generator(self.random_state))

    # ----------------------------------------------------------------- EM
    def fit(self, X: Any, lengths: Sequence[int] | Tensor | None = None) -> HMM:
        """Baum-Welch from the initialisation given by ``init_params``; records ``history_`` (log p(X))."""
        x, lengths = self._data(X, lengths)
        self._init(x)
        self.history_, self.converged_ = [], False
        for _ in range(self.n_iter):
            sm = fb.forward_backward(*self._log_chain(), self._log_emit(x), lengths)
            self.history_.append(float(sm.log_likelihood.sum()))
            if len(self.history_) > 1 and self.history_[-1] - self.history_[-2] < self.tol:
                self.converged_ = True
                break
            self._m_step(x, sm)
        return self

    def _m_step(self, x: Tensor, sm: fb.Smoothed) -> None:
        def dirichlet_map(counts: Tensor, prior: float) -> Tensor:
            c = (counts + prior - 1.0).clamp_min(0.0)
            return c / c.sum(-1, keepdim=True).clamp_min(torch.finfo(c.dtype).tiny)

        if "s" in self.params:
            self.startprob_ = dirichlet_map(sm.start_counts, self.startprob_prior)
        if "t" in self.params:
            self.transmat_ = dirichlet_map(sm.trans_counts, self.transmat_prior)
        self._emission.m_step(x, torch.exp(sm.log_gamma))

    # ----------------------------------------------------------------- inference
    def score(self, X: Any, lengths: Sequence[int] | Tensor | None = None) -> float:
        """:math:`\\log p(X)` summed over the sequences (forward algorithm)."""
        x, lengths = self._data(X, lengths)
        return float(fb.forward_log_likelihood(*self._log_chain(), self._log_emit(x), lengths).sum())

    def score_samples(self, X: Any, lengths: Sequence[int] | Tensor | None = None) -> tuple[float, Any]:
        """(:math:`\\log p(X)`, posteriors :math:`p(z_t|X)` (N, K))."""
        x, lengths = self._data(X, lengths)
        sm = fb.forward_backward(*self._log_chain(), self._log_emit(x), lengths)
        return float(sm.log_likelihood.sum()), _out(torch.exp(sm.log_gamma), X)

    def predict_proba(self, X: Any, lengths: Sequence[int] | Tensor | None = None) -> Any:
        """Posterior state probabilities :math:`p(z_t=k|X)`, (N, K)."""
        return self.score_samples(X, lengths)[1]

    def decode(self, X: Any, lengths: Sequence[int] | Tensor | None = None,
               algorithm: str = "viterbi") -> tuple[float, Any]:
        """(log-probability, states (N,)): Viterbi's :math:`\\max_z \\log p(X, z)`, or ``"map"``:
        the per-step argmax of the posteriors with :math:`\\sum_t \\log \\max_k p(z_t=k|X)`."""
        if algorithm == "viterbi":
            x, lengths = self._data(X, lengths)
            score, states = fb.viterbi(*self._log_chain(), self._log_emit(x), lengths)
            return float(score.sum()), _out(states, X)
        if algorithm == "map":
            post = torch.as_tensor(self.predict_proba(X, lengths))
            best, states = post.max(-1)
            return float(torch.log(best).sum()), _out(states, X)
        raise ValueError(f"HMM.decode: algorithm must be 'viterbi' or 'map', got {algorithm!r}")

    def predict(self, X: Any, lengths: Sequence[int] | Tensor | None = None) -> Any:
        """Viterbi state sequence (N,)."""
        return self.decode(X, lengths)[1]

    def sample(self, n_samples: int = 1, random_state: int | None = None) -> tuple[Tensor, Tensor]:
        """One sequence of length ``n_samples`` from the model: (X, states)."""
        g = self._generator(random_state)
        if hasattr(self, "transmat_") and not isinstance(self.transmat_, Tensor):
            self._as_tensors(torch.float64, torch.device("cpu"))
        log_start, log_trans = self._log_chain()
        u = torch.rand(n_samples, generator=g, dtype=log_trans.dtype).to(log_trans.device)
        cum_start, cum_trans = torch.cumsum(log_start.exp(), 0), torch.cumsum(log_trans.exp(), 1)
        states = torch.empty(n_samples, dtype=torch.long, device=log_trans.device)
        # a Markov chain is sequential: one searchsorted per step on a K-vector
        s = int(torch.searchsorted(cum_start, u[:1].clamp_max(cum_start[-1])).clamp_max(self.n_components - 1))
        states[0] = s
        for t in range(1, n_samples):
            s = int(torch.searchsorted(cum_trans[s], u[t:t + 1].clamp_max(cum_trans[s, -1])).clamp_max(
                self.n_components - 1))
            states[t] = s
        return self._emission.sample(states, g), states

    def __repr__(self) -> str:
        return (f"HMM(n_components={self.n_components}, emission={self.emission!r}, "
                f"covariance_type={self.covariance_type!r})")


def _kmeans(x: Tensor, k: int, g: torch.Generator, n_iter: int = 20) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) then Lloyd steps: (k, D) centres."""
    pick = lambda w: int(torch.multinomial(w.cpu().double(), 1, generator=g))  # noqa: E731
    centres = x[[pick(torch.ones(x.shape[0]))]]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).amin(1) ** 2
        centres = torch.cat([centres, x[[pick(d2 + 1e-12)]]])
    for _ in range(n_iter):
        assign = torch.cdist(x, centres).argmin(1)
        onehot = torch.nn.functional.one_hot(assign, k).to(x.dtype)
        n = onehot.sum(0)
        centres = torch.where(n[:, None] > 0, onehot.T @ x / n.clamp_min(1)[:, None], centres)
    return centres


def _floor_eigenvalues(s: Tensor, floor: float) -> Tensor:
    """The covariance :math:`\\Sigma \\succeq c I` that maximises the Gaussian likelihood of scatter ``s``."""
    evals, evecs = torch.linalg.eigh((s + s.mT) / 2)
    return (evecs * evals.clamp_min(floor)[..., None, :]) @ evecs.mT


class _Gaussian:
    """Gaussian emissions: ``means_`` (K, D) and ``covars_`` shaped by ``covariance_type``."""

    def __init__(self, hmm: HMM) -> None:
        if hmm.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"HMM: covariance_type must be one of {COVARIANCE_TYPES}, got {hmm.covariance_type!r}")
        self.hmm = hmm

    def as_data(self, X: Any) -> Tensor:
        x = torch.as_tensor(X)
        x = x if x.is_floating_point() else x.double()
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"HMM (gaussian): X must be (n_samples, n_features), got shape {tuple(x.shape)}")
        return x

    def full_covars(self) -> Tensor:
        """(K, D, D) covariance matrices."""
        h = self.hmm
        c, k, d = h.covars_, h.n_components, h.means_.shape[-1]
        eye = torch.eye(d, dtype=c.dtype, device=c.device)
        full = {"diag": lambda: torch.diag_embed(c), "full": lambda: c,
                "spherical": lambda: c[:, None, None] * eye, "tied": lambda: c.expand(k, d, d)}[h.covariance_type]()
        if full.shape != (k, d, d):
            raise ValueError(f"HMM: covars_ has the wrong shape {tuple(c.shape)} for covariance_type "
                             f"{h.covariance_type!r} with {k} states and {d} features")
        return full

    def _from_full(self, full: Tensor, weights: Tensor) -> Tensor:
        h = self.hmm
        if h.covariance_type == "diag":
            return torch.diagonal(full, dim1=-2, dim2=-1).clamp_min(h.min_covar)
        if h.covariance_type == "spherical":
            return torch.diagonal(full, dim1=-2, dim2=-1).mean(-1).clamp_min(h.min_covar)
        if h.covariance_type == "tied":
            return _floor_eigenvalues((weights[:, None, None] * full).sum(0) / weights.sum(), h.min_covar)
        return _floor_eigenvalues(full, h.min_covar)

    def init(self, x: Tensor, g: torch.Generator) -> None:
        h, k = self.hmm, self.hmm.n_components
        if "m" in h.init_params or not hasattr(h, "means_"):
            h.means_ = _kmeans(x, k, g)
        if "c" in h.init_params or not hasattr(h, "covars_"):
            cov = torch.atleast_2d(torch.cov(x.T)) if x.shape[0] > 1 else torch.eye(x.shape[1], dtype=x.dtype)
            h.covars_ = self._from_full(cov.to(x.device).expand(k, -1, -1), torch.ones(k, dtype=x.dtype))

    def log_prob(self, x: Tensor) -> Tensor:
        h = self.hmm
        if x.shape[1] != h.means_.shape[-1]:
            raise ValueError(f"HMM: X has {x.shape[1]} features, the model {h.means_.shape[-1]}")
        chol = torch.linalg.cholesky(self.full_covars())
        diff = (x[None] - h.means_[:, None]).mT  # (K, D, N)
        maha = torch.linalg.solve_triangular(chol, diff, upper=False).pow(2).sum(1).T  # (N, K)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return -0.5 * (maha + logdet + x.shape[1] * torch.log(torch.tensor(2 * torch.pi, dtype=x.dtype)))

    def m_step(self, x: Tensor, gamma: Tensor) -> None:
        h = self.hmm
        nk = gamma.sum(0)
        alive = nk > 1e-10 * x.shape[0]  # a state no step visits keeps its parameters
        if "m" in h.params:
            h.means_ = torch.where(alive[:, None], gamma.T @ x / nk.clamp_min(1e-300)[:, None], h.means_)
        if "c" in h.params:
            second = weighted_scatter(x, gamma) / nk.clamp_min(1e-300)[:, None, None]
            scatter = second - h.means_[:, :, None] * h.means_[:, None, :]
            new = self._from_full(scatter, nk)
            h.covars_ = new if h.covariance_type == "tied" else torch.where(
                alive.reshape(-1, *[1] * (new.dim() - 1)), new, h.covars_)

    def sample(self, states: Tensor, g: torch.Generator) -> Tensor:
        h = self.hmm
        chol = torch.linalg.cholesky(self.full_covars())[states]
        eps = torch.randn(states.shape[0], h.means_.shape[-1], generator=g, dtype=h.means_.dtype).to(h.means_.device)
        return h.means_[states] + (chol @ eps[..., None]).squeeze(-1)


class _Categorical:
    """Categorical emissions: ``emissionprob_`` (K, n_features)."""

    def __init__(self, hmm: HMM) -> None:
        self.hmm = hmm

    def as_data(self, X: Any) -> Tensor:
        x = torch.as_tensor(X)
        x = x[:, 0] if x.dim() == 2 and x.shape[1] == 1 else x
        if x.dim() != 1 or x.numel() == 0 or x.is_floating_point() and not bool((x == x.round()).all()):
            raise ValueError(f"HMM (categorical): X must hold integer symbols, shape (N,) or (N, 1), got "
                             f"{tuple(torch.as_tensor(X).shape)} {torch.as_tensor(X).dtype}")
        x = x.long()
        if bool((x < 0).any()):
            raise ValueError("HMM (categorical): symbols must be >= 0")
        return x

    def init(self, x: Tensor, g: torch.Generator) -> None:
        h = self.hmm
        if h.n_features is None:
            h.n_features = int(x.max()) + 1
        if "e" in h.init_params or not hasattr(h, "emissionprob_"):
            e = torch.rand(h.n_components, h.n_features, generator=g, dtype=torch.float64).to(x.device)
            h.emissionprob_ = e / e.sum(1, keepdim=True)

    def log_prob(self, x: Tensor) -> Tensor:
        h = self.hmm
        if int(x.max()) >= h.emissionprob_.shape[1]:
            raise ValueError(f"HMM: symbol {int(x.max())} outside the alphabet of {h.emissionprob_.shape[1]}")
        return torch.log(h.emissionprob_).T[x]

    def m_step(self, x: Tensor, gamma: Tensor) -> None:
        h = self.hmm
        if "e" in h.params:
            counts = torch.zeros_like(h.emissionprob_).index_add_(1, x, gamma.T.to(h.emissionprob_.dtype))
            total = counts.sum(1, keepdim=True)
            h.emissionprob_ = torch.where(total > 0, counts / total.clamp_min(1e-300), h.emissionprob_)

    def sample(self, states: Tensor, g: torch.Generator) -> Tensor:
        return torch.multinomial(self.hmm.emissionprob_[states].cpu(), 1, generator=g).to(states.device)


EMISSIONS: dict[str, type] = {"gaussian": _Gaussian, "categorical": _Categorical}
