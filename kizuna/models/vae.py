"""`VAE`: the Pixyz preset for variational auto-encoders.

.. math:: \\mathcal{L} = \\operatorname{mean}\\big(-\\mathbb{E}_{q(z|x)}[\\log p(x|z)] + R\\big)

where ``R`` is the regulariser, usually :math:`D_{KL}[q(z|x)\\|p(z)]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kizuna.distributions.base import Distribution
from kizuna.formula.expr import Loss
from kizuna.formula.log_prob import LogProb
from kizuna.losses.expectation import Expectation
from kizuna.models.model import Model


class VAE(Model):
    """A `Model` whose loss is the negative ELBO built from ``encoder`` and ``decoder``.

    Args:
        encoder: :math:`q(z|x)`.
        decoder: :math:`p(x|z)`.
        other_distributions: further distributions to train (e.g. a learnable prior).
        regularizer: a Loss added per row, e.g. ``KullbackLeibler(q, prior)``.

    Other arguments: see `Model` (``compile``, ``validate``, ``scheduler`` and ``scheduler_params`` by keyword).
    """

    def __init__(
        self,
        encoder: Distribution,
        decoder: Distribution,
        other_distributions: Sequence[Distribution] = (),
        regularizer: Loss | None = None,
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
        loss = -Expectation(encoder, LogProb(decoder))
        if regularizer is not None:
            loss = loss + regularizer
        super().__init__(
            loss.mean(),
            distributions=[encoder, decoder, *other_distributions],
            optimizer=optimizer,
            optimizer_params=optimizer_params,
            clip_grad_norm=clip_grad_norm,
            clip_grad_value=clip_grad_value,
            compile=compile,
            validate=validate,
            scheduler=scheduler,
            scheduler_params=scheduler_params,
        )
