r"""The Pixyz presets `VI` (variational inference) and `ML` (maximum likelihood).

.. math::
    \mathcal{L}_{VI} = -\operatorname{mean}_n \mathbb{E}_{q(z|x_n)}\big[\log p(x_n, z) - \log q(z|x_n)\big],
    \qquad
    \mathcal{L}_{ML} = -\operatorname{mean}_n \log p(x_n)

Both keep Pixyz's signatures (mutable defaults aside), so ``VI(p, q, optimizer_params=...)``
and ``ML(p, ...)`` port unchanged (Pixyz's ``clip_grad_norm=False`` / ``clip_grad_value=False`` mean no clipping,
as ``None``). The ELBO is per batch row: a latent variable without a
batch (e.g. the weights of a Bayesian network, ``q(w)``) is drawn once per row, and
``log p(w) - log q(w)`` is counted once per row, i.e. the KL to the prior weighs as much as
one data point's likelihood. For the full-data objective of N rows, build the loss with
``Model`` and weight that KL by 1/N (see docs/training.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kizuna.distributions.base import Distribution
from kizuna.formula.log_prob import LogProb
from kizuna.losses.elbo import ELBO
from kizuna.models.model import Model


class VI(Model):
    """Minimises :math:`-\\mathrm{ELBO}(p, q)` averaged over the batch (module docstring).

    Args:
        p: the joint :math:`p(x, z)` (a product of distributions).
        approximate_dist: the variational distribution :math:`q(z|x)` (or :math:`q(z)`).
        other_distributions: further distributions to train.

    Other arguments: see `Model` (``compile``, ``validate``, ``scheduler`` and ``scheduler_params`` by
    keyword). ``train()`` / ``test()`` may be called without data when nothing is observed.

    >>> import torch
    >>> from torch import nn
    >>> from kizuna.distributions import Normal
    >>> prior = Normal(var=["mu"], loc=0.0, scale=1.0, name="p_prior")
    >>> lik = Normal(var=["x"], cond_var=["mu"], loc="mu", scale=1.0)
    >>> q = Normal(var=["mu"], loc=nn.Parameter(torch.zeros(1)), scale=nn.Parameter(torch.ones(1)), name="q")
    >>> print(VI(lik * prior, q).loss_cls)
    -mean(E_{q(mu)}[log p(x,mu) - log q(mu)])
    """

    def __init__(
        self,
        p: Distribution,
        approximate_dist: Distribution,
        other_distributions: Sequence[Distribution] = (),
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_params: Mapping[str, Any] | None = None,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        *,
        compile: bool | Mapping[str, Any] = False,
        validate: bool | None = None,
        scheduler: type | None = None,
        scheduler_params: Mapping[str, Any] | None = None,
    ) -> None:
        loss = -ELBO(p, approximate_dist).mean()
        super().__init__(
            loss,
            distributions=_unique([p, approximate_dist, *other_distributions]),
            optimizer=optimizer,
            optimizer_params=optimizer_params,
            clip_grad_norm=clip_grad_norm,
            clip_grad_value=clip_grad_value,
            compile=compile,
            validate=validate,
            scheduler=scheduler,
            scheduler_params=scheduler_params,
        )


class ML(Model):
    """Minimises the negative log-likelihood :math:`-\\log p` averaged over the batch.

    Args:
        p: the model, e.g. a classifier :math:`p(y|x)` or a density :math:`p(x)`.
        other_distributions: further distributions to train.

    Other arguments: see `Model` (``compile``, ``validate``, ``scheduler`` and ``scheduler_params`` by keyword).

    >>> import torch
    >>> from torch import nn
    >>> from kizuna.distributions import Normal
    >>> p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=1.0)
    >>> print(ML(p).loss_cls)
    mean(-log p(x))
    """

    def __init__(
        self,
        p: Distribution,
        other_distributions: Sequence[Distribution] = (),
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_params: Mapping[str, Any] | None = None,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        *,
        compile: bool | Mapping[str, Any] = False,
        validate: bool | None = None,
        scheduler: type | None = None,
        scheduler_params: Mapping[str, Any] | None = None,
    ) -> None:
        self.nll = -LogProb(p)
        super().__init__(
            self.nll.mean(),
            distributions=_unique([p, *other_distributions]),
            optimizer=optimizer,
            optimizer_params=optimizer_params,
            clip_grad_norm=clip_grad_norm,
            clip_grad_value=clip_grad_value,
            compile=compile,
            validate=validate,
            scheduler=scheduler,
            scheduler_params=scheduler_params,
        )


def _unique(dists: Sequence[Distribution]) -> list[Distribution]:
    return list({id(d): d for d in dists}.values())
