r"""`HMM` as a graph node: an HMM over its child's message, taking a class prior from a parent.

The child sends data or latents (N×D, or symbols for categorical emissions) in sequence order, cut by
``lengths``. Each ``update`` runs ``n_iter`` Baum-Welch iterations (continuing from the last state) with
the parent's class prior :math:`\rho_{nk}` as an extra factor of step :math:`n`, then smooths. With
:math:`\mu_{nk}` the chain's message into step :math:`n` (from every other step) and
:math:`\lambda_{nk} = p(x_n | z_n = k)`:

* ``posterior`` :math:`\propto \mu_n \lambda_n \rho_n` (the smoothed marginal);
* **up**: :math:`\propto \mu_n \lambda_n` (excluding the parent's prior, the protocol's convention; with several
  parents each reads it times the other parents' priors, `kizuna.modules.Module.message_to`);
* **down**, to a child that receives ``prior_mean`` (a VAE), the Gaussian mean of each sample's most
  probable state, as `kizuna.modules.GMM` does.

`HMM` is also the scikit-learn / hmmlearn estimator `HiddenMarkovModel`. (A `GMM` under an `MM` is the
same model split in two modules; see ``docs/modules_classical.md``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kizuna.modules import _forward_backward as fb
from kizuna.modules._backend import check_backend
from kizuna.modules.base import ClassModule, Message, Module
from kizuna.modules.context import UpdateContext
from kizuna.modules.hmm.estimator import HiddenMarkovModel, Lengths
from kizuna.modules.rng import on_cpu
from kizuna.modules.validation import not_fitted

Tensor = torch.Tensor


def own_lengths(owner: str, own: Sequence[int] | Tensor, n: int, device: torch.device) -> Tensor:
    """A node's own ``lengths`` (its constructor's, which its graph updates use) for ``n`` rows given to its ``fit`` /
    ``score`` / ``predict`` without lengths (they were ignored: the rows were one sequence, another model than the
    graph's); lengths that do not cut the rows are refused, naming them."""
    try:
        return fb.check_lengths(n, own, device)
    except ValueError as err:
        raise ValueError(f"{owner}: the lengths given to its constructor do not cut X ({err}); pass lengths=... with "
                         f"this X (lengths=[{n}]: one sequence)") from None


class HMM(ClassModule, HiddenMarkovModel):
    """HMM module / estimator (see `HiddenMarkovModel` for the model and the other arguments).

    Args:
        n_components: number of hidden states K.
        category: reference labels, for ``accuracy`` / ``ari`` / ``nmi`` only.
        lengths: the lengths of the sequences the samples form (``None``: one sequence), in a graph and in
            ``fit`` / ``score`` / ``predict`` / ... called without ``lengths`` (data of another number of rows is then
            refused: pass its own ``lengths``).
        n_particles: particles of the `SIR` posterior in a graph.
        name, learnable: see `kizuna.modules.Module`.

    Example:
        >>> from kizuna.modules import Graph, Observation
        >>> z = torch.tensor([0] * 30 + [1] * 30)
        >>> x = z[:, None] * 3.0 + 0.5 * torch.randn(60, 1, generator=torch.Generator().manual_seed(0))
        >>> hmm = HMM(2, category=z, n_iter=10).connect(Observation(x.double()))
        >>> _ = Graph([hmm]).fit(n_iter=2, seed=0)
        >>> hmm.accuracy
        1.0
    """

    accepts: ClassVar[tuple[str, ...]] = ("data", "latent")
    receives: ClassVar[tuple[str, ...]] = ("prior",)
    scheduled: ClassVar[tuple[str, ...]] = ("n_iter",)
    architecture: ClassVar[tuple[str, ...]] = ("n_components", "emission", "covariance_type", "n_features")

    @dataclass
    class State(ClassModule.State):
        """Also the chain's and the emissions' parameters, and the last `fit`'s log-likelihoods and convergence (as
        GMM's fitted history and the VAE's loss history)."""

        startprob_: Tensor | None = None
        transmat_: Tensor | None = None
        means_: Tensor | None = None
        covars_: Tensor | None = None
        emissionprob_: Tensor | None = None
        history_: list[float] | None = None
        converged_: bool = False

    def __init__(self, n_components: int = 1, category: Any = None, *, emission: str = "gaussian",
                 covariance_type: str = "diag", min_covar: float = 1e-3, startprob_prior: float = 1.0,
                 transmat_prior: float = 1.0, n_iter: int = 10, tol: float = 1e-2, init_params: str = "stmce",
                 params: str = "stmce", n_features: int | None = None, lengths: Sequence[int] | None = None,
                 n_particles: int = 1000, random_state: int | torch.Generator | None = None, name: str | None = None,
                 learnable: bool = True, backend: str = "auto") -> None:
        ClassModule.__init__(self, n_components, category, name, learnable, random_state)
        HiddenMarkovModel.__init__(
            self, n_components, emission=emission, covariance_type=covariance_type, min_covar=min_covar,
            startprob_prior=startprob_prior, transmat_prior=transmat_prior, n_iter=n_iter, tol=tol,
            init_params=init_params, params=params, n_features=n_features, random_state=random_state,
            backend=backend)
        self.lengths, self.n_particles = lengths, n_particles
        self._check_settings()  # a node reports bad settings when the graph is built
        check_backend(backend, self._owner)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """See `Stateful.load_state_dict`; a save from before ``history_`` and ``converged_`` were saved loads
        without a history."""
        super().load_state_dict({"history_": None, "converged_": False, **state})

    def _data(self, X: Any, lengths: Lengths, fitting: bool = False) -> tuple[Tensor, Tensor]:
        """See `HiddenMarkovModel._data`; without ``lengths`` the node's own ``lengths`` cut the data (`own_lengths`),
        in ``fit``, ``score``, ``predict`` and the others as in a graph."""
        if lengths is None and self.lengths is not None:
            x, _ = super()._data(X, None, fitting)
            return x, own_lengths(self._owner, self.lengths, x.shape[0], x.device)
        return super()._data(X, lengths, fitting)

    def fit(self, X: Any, lengths: Lengths = None) -> HMM:
        """See `HiddenMarkovModel.fit`; also sets ``posterior`` (the training sequence's smoothed marginals). Without
        ``lengths`` the node's own cut the data."""
        super().fit(X, lengths)
        x, lengths = self._data(X, lengths)
        self.posterior = torch.exp(fb.forward_backward(*self._log_chain(), self._log_emit(x), lengths).log_gamma)
        return self

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        if len(forward) != 1:
            raise ValueError(f"HMM {self.name} models one child's sequence, got {len(forward)} children")
        msg = forward[0]
        x, lengths = self._data(msg.value, self.lengths)
        self.check_category(msg.n)
        missing = [n for n in ("startprob_", "transmat_", *self._emissions().names) if getattr(self, n) is None]
        if missing and not self.learnable:  # (it ran its random initialisation as the "fixed" model, silently)
            raise not_fitted(f"{self._owner} is not fitted yet: with learnable=False it keeps its parameters, and it "
                             f"has no {', '.join(missing)}; call fit(X), or set them, or load a fitted state first")
        if not self._is_fitted():
            self._init(x, on_cpu(ctx.generator))
        prior = self.class_prior(backward, msg.n)
        log_rho = 0.0 if prior is None else torch.log(prior.to(dtype=self.transmat_.dtype))
        for _ in range(int(ctx.setting(self.name, "n_iter", self.n_iter)) if self.learnable else 0):
            self._m_step(x, fb.forward_backward(*self._log_chain(), self._log_emit(x) + log_rho, lengths))
        log_emit = self._log_emit(x)
        mu = fb.forward_backward(*self._log_chain(), log_emit + log_rho, lengths).log_cavity
        down_prior = torch.softmax(mu + log_rho, 1)
        self.posterior = ctx.combine.bind(int(self.n_particles), ctx.generator)(down_prior, log_emit)
        dtype = msg.value.dtype
        up = self.message("posterior", torch.softmax(mu + log_emit, 1).to(dtype))
        down = {}
        if self.emission == "gaussian":
            means = self.means_[self.classes].to(dtype)
            down = {c: self.message("prior_mean", means, receiver=c, variable=msg.variable)
                    for c in self.children if "prior_mean" in c.receives}
        return up, down
