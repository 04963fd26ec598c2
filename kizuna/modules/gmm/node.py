r"""`GMM`: the Bayesian Gaussian mixture as a graph node (SERKET's GMM); also its scikit-learn estimator.

In a graph (Nakamura et al. 2018, arXiv:1712.00929) it clusters its child's forward message
(``data`` or a VAE's ``latent``), multiplies the class prior :math:`\pi^{\text{msg}}` of its
parent into the assignment posterior, and sends

* **up** its own class posterior :math:`\propto p(x_n, c_n=k)` *without* the parent's prior
  (so the parent does not count its own prior twice); with several parents each reads it times the *other*
  parents' priors (`kizuna.modules.Module.message_to`);
* **down**, to a child that receives ``prior_mean`` (a VAE), the mean :math:`m_{c_n}` of each
  sample's most probable class — the prior mean of that sample's latent (Neuro-SERKET,
  Taniguchi et al. 2020, arXiv:1910.08918).

A GMM that has a parent drops its own mixing weights: the parent's prior takes their place (GMM + MM
is an HMM). Updates continue the previous state. Everything else — the model, the algorithms, the
scikit-learn methods — is `kizuna.modules.gmm.GaussianMixture`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kizuna.modules.base import ClassModule, Message, Module
from kizuna.modules.context import UpdateContext
from kizuna.modules.gmm import algorithms as algo
from kizuna.modules.gmm.estimator import GaussianMixture


class GMM(ClassModule, GaussianMixture):
    """Gaussian mixture module / estimator (see `GaussianMixture` for the model and every argument).

    Args:
        n_components: :math:`K`.
        category: reference labels, only for ``accuracy`` / ``ari`` / ``nmi``.
        name, learnable: see `kizuna.modules.Module`.

    >>> from kizuna.modules import Graph, Observation
    >>> x = torch.cat([torch.randn(20, 2) - 4, torch.randn(20, 2) + 4])
    >>> gmm = GMM(2, category=[0] * 20 + [1] * 20, max_iter=20).connect(Observation(x))
    >>> _ = Graph([gmm]).fit(n_iter=2, seed=0)
    >>> gmm.accuracy, gmm.forward_message.value.shape
    (1.0, torch.Size([40, 2]))
    """

    accepts: ClassVar[tuple[str, ...]] = ("data", "latent")
    receives: ClassVar[tuple[str, ...]] = ("prior",)
    scheduled: ClassVar[tuple[str, ...]] = ("max_iter",)
    architecture: ClassVar[tuple[str, ...]] = ("n_components", "algorithm", "covariance_type")

    @dataclass
    class State(ClassModule.State):
        """Also the fitted parameters and the chain's last assignments."""

        fitted_: algo.Fitted | None = None

    def __init__(self, n_components: int, category: Any = None, *, algorithm: str = "gibbs",
                 covariance_type: str = "full", reg_covar: float = 1e-6,
                 weight_concentration_prior: float | None = None, mean_precision_prior: float = 1.0,
                 mean_prior: Any = None, degrees_of_freedom_prior: float | None = None, covariance_prior: Any = None,
                 max_iter: int = 100, tol: float = 1e-3, init_params: str = "kmeans", n_local_trials: int | None = 1,
                 n_init: int = 1, n_particles: int = 200,
                 random_state: int | torch.Generator | None = None, name: str | None = None,
                 learnable: bool = True) -> None:
        ClassModule.__init__(self, n_components, category, name, learnable, random_state)
        GaussianMixture.__init__(
            self, n_components, algorithm=algorithm, covariance_type=covariance_type, reg_covar=reg_covar,
            weight_concentration_prior=weight_concentration_prior, mean_precision_prior=mean_precision_prior,
            mean_prior=mean_prior, degrees_of_freedom_prior=degrees_of_freedom_prior,
            covariance_prior=covariance_prior, max_iter=max_iter, tol=tol, init_params=init_params,
            n_local_trials=n_local_trials, n_init=n_init, n_particles=n_particles, random_state=random_state)
        self._validate()  # a node reports bad settings when the graph is built, not at its first update

    def fit(self, X: Any, y: Any = None) -> GMM:
        """See `GaussianMixture.fit`; also sets ``posterior`` (the training samples' responsibilities)."""
        super().fit(X, y)
        self.posterior = self.fitted_.resp
        return self

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        if len(forward) != 1:
            raise ValueError(f"GMM {self.name} clusters one child's message, got {len(forward)} children")
        msg = forward[0]
        x = msg.value.to(torch.float64)
        self.check_category(x.shape[0])
        parent = algo.ClassPrior(self.class_prior(backward, x.shape[0]),
                                 ctx.combine.bind(self.n_particles, ctx.generator),
                                 # the mixing weights give way to a parent's class prior; a parent that sends none
                                 # (an NN whose target this is) leaves them (they were dropped: uniform classes)
                                 mixing=not any(p.sends_prior_to(self) for p in self.parents))
        if self.learnable:
            self.fitted_ = self._run(x, parent, ctx.generator, warm=True,
                                     max_iter=ctx.setting(self.name, "max_iter", self.max_iter))
            own, posterior = self.fitted_.own, self.fitted_.resp
        else:
            own = self._log_joint(x, mixing=parent.mixing)
            posterior = parent.posterior(own)
        self.posterior = posterior.to(msg.value.dtype)
        up = self.message("posterior", torch.softmax(own, 1).to(msg.value.dtype))
        means = self._fitted().means[self.classes].to(msg.value.dtype)
        down = {c: self.message("prior_mean", means, receiver=c, variable=msg.variable)
                for c in self.children if "prior_mean" in c.receives}
        return up, down
