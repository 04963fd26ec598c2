r"""`GMM`: a Bayesian Gaussian mixture module (SERKET's GMM) that also speaks scikit-learn.

.. math::
    \pi \sim \mathrm{Dir}(\alpha_0),\quad (\mu_k,\Lambda_k) \sim \mathcal{NW}(m_0,\kappa_0,\nu_0,S_0),\quad
    c_n \sim \pi^{\text{msg}}_{n\cdot}\,\pi,\quad x_n \sim \mathcal N(\mu_{c_n}, \Lambda_{c_n}^{-1}).

In a graph (Nakamura et al. 2018, arXiv:1712.00929) it clusters its child's forward message
(``data`` or a VAE's ``latent``), multiplies the class prior :math:`\pi^{\text{msg}}` of its
parent into the assignment posterior, and sends

* **up** its own class posterior :math:`\propto p(x_n, c_n=k)` *without* the parent's prior
  (so the parent does not count its own prior twice);
* **down**, to a child that receives ``prior_mean`` (a VAE), the mean :math:`m_{c_n}` of each
  sample's most probable class — the prior mean of that sample's latent (Neuro-SERKET,
  Taniguchi et al. 2020, arXiv:1910.08918).

``algorithm`` picks blocked Gibbs sampling (SERKET's choice, made exact and vectorised), variational
Bayes or EM; see `kizuna.modules.gmm_inference`. The constructor takes scikit-learn's names
and defaults (``BayesianGaussianMixture``); priors left at ``None`` are set from the data at
every fit/update: :math:`m_0` the data mean, :math:`S_0` the data covariance, :math:`\nu_0 = D`,
:math:`\alpha_0 = 1/K`. Arrays in give arrays out; tensors give tensors. Internally float64.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.concatenate([rng.normal(-3, 1, (50, 2)), rng.normal(3, 1, (50, 2))])
>>> gmm = GMM(2, algorithm="em", random_state=0).fit(x)
>>> sorted(np.round(gmm.weights_, 2).tolist())
[0.5, 0.5]
>>> bool(gmm.predict(x[:1]) != gmm.predict(x[-1:]))
True
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from kizuna.modules import gmm_inference as algo
from kizuna.modules.base import ClassModule, Message, Module
from kizuna.modules.inference import rng_from
from kizuna.modules.normal_wishart import NormalWishart, gaussian_log_prob

ALGORITHMS = ("gibbs", "vb", "em")
COVARIANCE_TYPES = ("full", "diag")
Tensor = torch.Tensor


class GMM(ClassModule):
    """Gaussian mixture module / estimator (see the module docstring).

    Args:
        n_components: :math:`K`.
        category: reference labels, only for ``accuracy`` / ``ari`` / ``nmi``.
        algorithm: ``"gibbs"``, ``"vb"`` or ``"em"`` (``method`` is the graph's MP/SIR switch).
        covariance_type: ``"full"`` or ``"diag"``.
        reg_covar: added to covariance diagonals (EM) and to :math:`S_0`.
        weight_concentration_prior, mean_precision_prior, mean_prior, degrees_of_freedom_prior, covariance_prior:
            :math:`\\alpha_0, \\kappa_0, m_0, \\nu_0, S_0` (``None``: from data).
        max_iter: Gibbs sweeps / VB or EM iterations per ``fit`` or ``update``.
        tol: convergence threshold of VB (responsibilities) and EM (objective).
        init_params: ``"kmeans"`` or ``"random"`` initial partition.
        n_particles: particles per sample when the graph runs ``method="sir"``.
        random_state: seed used when no graph generator is set.
    """

    accepts: ClassVar[tuple[str, ...]] = ("data", "latent")
    receives: ClassVar[tuple[str, ...]] = ("prior",)

    def __init__(self, n_components: int, category: Any = None, algorithm: str = "gibbs",
                 covariance_type: str = "full", reg_covar: float = 1e-6,
                 weight_concentration_prior: float | None = None, mean_precision_prior: float = 1.0,
                 mean_prior: Any = None, degrees_of_freedom_prior: float | None = None, covariance_prior: Any = None,
                 max_iter: int = 100, tol: float = 1e-3, init_params: str = "kmeans", n_particles: int = 200,
                 random_state: int | None = None, name: str | None = None, learnable: bool = True) -> None:
        super().__init__(n_components, category, name, learnable)
        for value, allowed, what in ((algorithm, ALGORITHMS, "algorithm"),
                                     (covariance_type, COVARIANCE_TYPES, "covariance_type"),
                                     (init_params, ("kmeans", "random"), "init_params")):
            if value not in allowed:
                raise ValueError(f"GMM {self.name}: {what} must be one of {allowed}, got {value!r}")
        if max_iter < 1 or reg_covar < 0 or mean_precision_prior <= 0:
            raise ValueError(f"GMM {self.name}: need max_iter >= 1, reg_covar >= 0 and mean_precision_prior > 0")
        self.n_components = n_components
        self.algorithm, self.covariance_type, self.init_params = algorithm, covariance_type, init_params
        self.reg_covar, self.max_iter, self.tol, self.n_particles = reg_covar, max_iter, tol, n_particles
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior, self.mean_prior = mean_precision_prior, mean_prior
        self.degrees_of_freedom_prior, self.covariance_prior = degrees_of_freedom_prior, covariance_prior
        self.random_state = random_state
        self.fitted_: algo.Fitted | None = None

    # ------------------------------------------------------------------ helpers
    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.generator is None and self.random_state is not None:
            self.generator = torch.Generator(device=device).manual_seed(self.random_state)
        return self.generator

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
        if tuple(m0.shape) != (d,) or tuple(s0.shape) != expected:
            raise ValueError(f"GMM {self.name}: mean_prior must have shape {(d,)} and covariance_prior {expected} "
                             f"for {d}-dimensional data, got {tuple(m0.shape)} and {tuple(s0.shape)}")
        nu0 = float(d) if self.degrees_of_freedom_prior is None else float(self.degrees_of_freedom_prior)
        if nu0 <= d - 1:
            raise ValueError(f"GMM {self.name}: degrees_of_freedom_prior must exceed D - 1 = {d - 1}, got {nu0}")
        ones = torch.ones(k, dtype=x.dtype, device=x.device)
        return NormalWishart(m0.expand(k, d).clone(), ones * self.mean_precision_prior, ones * nu0,
                             s0.expand(k, *expected).clone())

    def _alpha0(self) -> float:
        return 1.0 / self.n_components if self.weight_concentration_prior is None else self.weight_concentration_prior

    def _initial(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        f = self.fitted_
        if f is not None and f.resp.shape[0] == x.shape[0]:  # warm start across updates
            return f.z if f.z is not None else f.resp
        if self.init_params == "kmeans":
            z = algo.kmeans_labels(x, self.n_components, gen)
        else:
            z = torch.randint(self.n_components, (x.shape[0],), generator=gen, device=x.device)
        return z if self.algorithm == "gibbs" else F.one_hot(z, self.n_components).to(x.dtype)

    def _run(self, x: Tensor, pi_msg: Tensor | None, warm: bool) -> algo.Fitted:
        gen = self._generator(x.device)
        if not warm:
            self.fitted_ = None
        start, prior, diag = self._initial(x, gen), self._prior(x), self.covariance_type == "diag"
        mixing = not self.parents  # a parent's class prior replaces the mixing weights
        if self.algorithm == "gibbs":
            return algo.gibbs(x, prior, self._alpha0(), start, self.max_iter, pi_msg, self.method,
                              self.n_particles, gen, mixing)
        if self.algorithm == "vb":
            return algo.vb(x, prior, self._alpha0(), start, self.max_iter, self.tol, pi_msg, self.method,
                           self.n_particles, gen, mixing)
        return algo.em(x, start, self.max_iter, self.tol, self.reg_covar, diag, pi_msg, self.method,
                       self.n_particles, gen, mixing)

    def _fitted(self) -> algo.Fitted:
        if self.fitted_ is None:
            raise RuntimeError(f"GMM {self.name} is not fitted yet: call fit(X) or update()")
        return self.fitted_

    def _log_joint(self, x: Tensor, mixing: bool = True) -> Tensor:
        """:math:`\\log p(x, c=k)` under the fitted model: Student-t predictive (Bayesian) or Gaussian (EM);
        :math:`\\log p(x \\mid c=k)` without ``mixing``."""
        f = self._fitted()
        if x.shape[1] != f.means.shape[1]:
            raise ValueError(f"GMM {self.name} was fitted on {f.means.shape[1]}-dimensional data, got {x.shape[1]}")
        if f.nw is not None:
            log_lik = f.nw.log_predictive(x)
        else:
            log_lik = gaussian_log_prob(x, f.means, algo.precision_root(f.covariances))
        return log_lik + torch.log(f.weights) if mixing else log_lik

    # ---------------------------------------------------------------- protocol
    def _update(self, forward: list[Message], backward: Message | None) -> tuple[Message, dict[Module, Message]]:
        if len(forward) != 1:
            raise ValueError(f"GMM {self.name} clusters one child's message, got {len(forward)} children")
        msg = forward[0]
        x = msg.value.to(torch.float64)
        self.check_category(x.shape[0])
        pi_msg = self.class_prior(backward, x.shape[0])
        if self.learnable:
            self.fitted_ = self._run(x, pi_msg, warm=True)
            own, self.posterior = self.fitted_.own, self.fitted_.resp
        else:
            own = self._log_joint(x, mixing=not self.parents)
            self.posterior = algo._combine(own, pi_msg, self.method, self.n_particles, self.generator)
        self.posterior = self.posterior.to(msg.value.dtype)
        up = self.message("posterior", torch.softmax(own, 1).to(msg.value.dtype))
        means = self._fitted().means[self.classes].to(msg.value.dtype)
        down = {c: self.message("prior_mean", means, receiver=c, variable=msg.variable)
                for c in self.children if "prior_mean" in c.receives}
        return up, down

    # ------------------------------------------------------------- persistence
    def config(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "algorithm": self.algorithm,
                "covariance_type": self.covariance_type}

    def state_dict(self) -> dict[str, Any]:
        f = self.fitted_
        fitted = None if f is None else {
            "own": f.own, "resp": f.resp, "weights": f.weights, "means": f.means, "covariances": f.covariances,
            "z": f.z, "alpha": f.alpha, "history": f.history,
            "nw": None if f.nw is None else [f.nw.m, f.nw.kappa, f.nw.nu, f.nw.scale]}
        return {**super().state_dict(), "fitted": fitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        f = state["fitted"]
        if f is None:
            self.fitted_ = None
            return
        nw = None if f["nw"] is None else NormalWishart(*f["nw"])
        self.fitted_ = algo.Fitted(f["own"], f["resp"], f["weights"], f["means"], f["covariances"], nw=nw,
                                   alpha=f["alpha"], z=f["z"], history=f["history"])

    # ------------------------------------------------------------ scikit-learn
    def _as_x(self, X: Any) -> Tensor:
        t = X if isinstance(X, Tensor) else torch.as_tensor(np.asarray(X, dtype=np.float64))
        t = t.detach().to(torch.float64)
        if t.dim() != 2 or t.shape[0] == 0 or not torch.isfinite(t).all():
            raise ValueError(f"GMM {self.name}: X must be a finite non-empty N x D array, got shape {tuple(t.shape)}")
        return t

    @staticmethod
    def _out(value: Tensor, like: Any) -> Any:
        return value if isinstance(like, Tensor) else value.cpu().numpy()

    def fit(self, X: Any, y: Any = None) -> GMM:
        """Fit to ``X`` (N×D) from a fresh initialisation; ``y`` is ignored."""
        x = self._as_x(X)
        if x.shape[0] < self.n_components:
            raise ValueError(f"GMM {self.name}: {x.shape[0]} samples for {self.n_components} components")
        if self.random_state is not None:  # as in scikit-learn, an int seed makes every fit identical
            self.generator = torch.Generator(device=x.device).manual_seed(self.random_state)
        self.fitted_ = self._run(x, None, warm=False)
        self.posterior = self.fitted_.resp
        return self

    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """``fit(X)`` then the most probable class of every training sample."""
        return self._out(self.fit(X).posterior.argmax(1), X)

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
        with rng_from(self._generator(f.means.device)):
            y = torch.multinomial(f.weights, n_samples, replacement=True)
            eps = torch.randn(n_samples, f.means.shape[1], dtype=f.means.dtype, device=f.means.device)
        cov = f.covariances[y]
        noise = eps * cov.sqrt() if cov.dim() == 2 else (torch.linalg.cholesky(cov) @ eps.unsqueeze(-1)).squeeze(-1)
        return f.means[y] + noise, y

    @property
    def weights_(self) -> Any:
        """Mixing weights (posterior means for ``gibbs``/``vb``)."""
        return self._fitted().weights.cpu().numpy()

    @property
    def means_(self) -> Any:
        """Component means (posterior means :math:`m_k` for ``gibbs``/``vb``)."""
        return self._fitted().means.cpu().numpy()

    @property
    def covariances_(self) -> Any:
        """Covariances (:math:`\\mathbb E[\\Lambda_k]^{-1} = S_k/\\nu_k` for ``gibbs``/``vb``)."""
        return self._fitted().covariances.cpu().numpy()
