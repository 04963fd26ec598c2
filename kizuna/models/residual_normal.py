r"""A Normal posterior written relative to its prior: NVAE's residual parameterisation.

.. math::
    q(z|\cdot) = \mathcal{N}\big(z;\ \mu_p + \Delta\mu,\ (\sigma_p\,\Delta\sigma)^2\big),
    \qquad
    D_{KL}[q\,\|\,p] = \sum_d \tfrac12\Big(\frac{\Delta\mu_d^2}{\sigma_{p,d}^2} + \Delta\sigma_d^2 - 1\Big)
        - \log \Delta\sigma_d

where :math:`p = \mathcal{N}(\mu_p, \sigma_p^2)` is the generative prior of the layer (e.g.
:math:`p(z_i|z_{i+1})`) and :math:`(\Delta\mu, \Delta\sigma)` come from the bottom-up features of
:math:`x` (Vahdat & Kautz 2020, arXiv:2007.03898, eq. 2).

Unlike the precision-weighted product :math:`q \propto \hat q\,p` (`NormalProduct`), whose KL to
:math:`p` goes to 0 as the bottom-up scale :math:`\hat\sigma` grows without bound (one direction
switches a whole layer off, and Adam follows even a vanishing gradient along it), this KL has its
minimum at :math:`\Delta\mu = 0, \Delta\sigma = 1` like a single-layer VAE's KL to
:math:`\mathcal{N}(0, I)`, and with :math:`\mu_p = 0, \sigma_p = 1` the layer *is* that VAE's posterior.
"""

from __future__ import annotations

from kizuna.distributions.base import Distribution, Tensor
from kizuna.distributions.families import Normal
from kizuna.distributions.mixture import union_cond
from kizuna.distributions.poe import normal_experts


class ResidualNormal(Normal):
    """:math:`\\mathcal{N}(\\mu_p + \\Delta\\mu, (\\sigma_p\\Delta\\sigma)^2)` (module docstring).

    Args:
        prior: the Normal :math:`p` the posterior is written relative to.
        shift: a Normal over the same variable whose ``loc`` is :math:`\\Delta\\mu` and whose
            ``scale`` is :math:`\\Delta\\sigma` (its own density is not used).
        name: the name in formulas.
        whitened: measure the shift in prior scales, :math:`\\mu_p + \\sigma_p\\Delta\\mu`: then
            :math:`q` is the affine image :math:`z = \\mu_p + \\sigma_p u` of
            :math:`u \\sim \\mathcal{N}(\\Delta\\mu, \\Delta\\sigma^2)` and, KL being invariant under it,
            :math:`D_{KL}[q\\|p] = D_{KL}[\\mathcal{N}(\\Delta\\mu, \\Delta\\sigma^2)\\|\\mathcal{N}(0, I)]`
            whatever the prior: the single-layer VAE's KL of the bottom-up term.

    >>> import torch
    >>> p = Normal(var=["z"], cond_var=["y"], loc="y", scale=2.0, name="p")
    >>> d = Normal(var=["z"], cond_var=["x"], loc="x", scale=0.5, name="d")
    >>> q = ResidualNormal(p, d)
    >>> print(q.prob_text)
    q(z|x,y)
    >>> params = q.get_params({"x": torch.ones(1, 1), "y": torch.full((1, 1), 3.0)})
    >>> params["loc"].item(), params["scale"].item()
    (4.0, 1.0)
    """

    def __init__(self, prior: Distribution, shift: Distribution, name: str = "q", whitened: bool = False) -> None:
        prior, shift = normal_experts([prior, shift], type(self).__name__)
        super().__init__(var=prior.var, cond_var=union_cond([shift, prior], prior.var), name=name)
        self.prior, self.shift, self.whitened = prior, shift, bool(whitened)

    @property
    def distribution_name(self) -> str:
        return "Normal (residual)"

    def forward(self, **cond: Tensor) -> dict[str, Tensor]:
        """``loc`` :math:`= \\mu_p + \\Delta\\mu` and ``scale`` :math:`= \\sigma_p\\Delta\\sigma` given ``cond``."""
        p, d = self.prior.get_params(cond), self.shift.get_params(cond)
        shift = p["scale"] * d["loc"] if self.whitened else d["loc"]
        return {"loc": p["loc"] + shift, "scale": p["scale"] * d["scale"]}
