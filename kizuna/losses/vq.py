r"""The codebook and commitment terms of a VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937).

.. math:: \|\mathrm{sg}[z_e(x)] - e_k\|^2 + \beta\,\|z_e(x) - \mathrm{sg}[e_k]\|^2

per row (summed over the grid and the code dimension): the first moves the chosen codes toward the
encoder's outputs, the second keeps the encoder near its codes.
"""

from __future__ import annotations

from kizuna._data import check_non_negative
from kizuna._text import LATEX
from kizuna.distributions.base import Distribution
from kizuna.distributions.vq import VectorQuantizer
from kizuna.formula.expr import EvalContext, Loss, Tensor


class VQCommitment(Loss):
    """The two terms of the module docstring, for the quantiser ``q``.

    >>> import torch
    >>> q = VectorQuantizer(torch.nn.Conv2d(1, 2, 1), 4, 2)
    >>> print(VQCommitment(q, 0.25))
    ||sg[z_e(x)] - e_k||^2 + 0.25 ||z_e(x) - sg[e_k]||^2
    """

    def __init__(self, q: VectorQuantizer, beta: float = 0.25) -> None:
        if not isinstance(q, VectorQuantizer):  # (another distribution failed at evaluation, reading .encode)
            given = q.prob_text if isinstance(q, Distribution) else repr(q)
            raise TypeError(f"VQCommitment: q must be a kizuna VectorQuantizer (the quantiser whose codebook and "
                            f"commitment terms these are), got {type(q).__name__} {given}"[:300])
        # (a negative beta pushed the encoder away from its code, a NaN one made the loss NaN)
        check_non_negative("VQCommitment: beta (the commitment weight)", beta)
        super().__init__(q.cond_var)
        self.q, self.beta = q, float(beta)

    def _own_distributions(self) -> list[VectorQuantizer]:
        return [self.q]

    def _value(self, ctx: EvalContext) -> Tensor:
        z_e, _, e = self.q.encode(ctx.values[self.q.cond_var[0]])
        codebook = (z_e.detach() - e).pow(2).flatten(1).sum(1)
        commitment = (z_e - e.detach()).pow(2).flatten(1).sum(1)
        return codebook + self.beta * commitment

    def _render(self, fmt: dict[str, str]) -> str:
        x = self.q.cond_var[0]
        if fmt is LATEX:
            return (rf"\|\mathrm{{sg}}[z_e({x})] - e_k\|^2 + {self.beta:g}\,\|z_e({x}) - \mathrm{{sg}}[e_k]\|^2")
        return f"||sg[z_e({x})] - e_k||^2 + {self.beta:g} ||z_e({x}) - sg[e_k]||^2"
