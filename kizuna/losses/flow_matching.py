r"""Flow-matching losses written with the loss algebra.

Conditional flow matching (Lipman et al. 2023, arXiv:2210.02747) regresses the model's velocity on
the velocity of a path conditioned on its two ends:

.. math::
    \mathcal{L}_{CFM} = \mathbb{E}_{u(t)}\,\mathbb{E}_{\pi(x_0|x_1)}\,\mathbb{E}_{q(x_t|x_0,x_1,t)}
        \big\|v_\theta(x_t, t) - (x_1 - (1-\sigma_{min})x_0)\big\|^2

per data row :math:`x_1`, with :math:`\pi` the independent Gaussian (``coupling="independent"``),
minibatch optimal transport (``"ot"``, OT-CFM) or pairs given in the data (``"given"``: rectified
flow's reflow). Its gradient equals that of the marginal flow-matching loss, whose minimiser is the
velocity that transports :math:`\mathcal{N}(0, I)` to the data.
"""

from __future__ import annotations

from kizuna._text import LATEX
from kizuna.distributions.flow_coupling import FlowInterpolant, NoiseLike, OTCoupling, TimeUniform
from kizuna.distributions.flow_matching import FlowMatching
from kizuna.formula.expr import EvalContext, Loss, Tensor
from kizuna.losses.expectation import Expectation

_TEXT = {"text": "||u_{0}({1}|{2},{3}) - v_θ({1},{0})||^2",
         "latex": r"\left\|u_{{{0}}}({1}|{2},{3}) - v_\theta({1},{0})\right\|^2"}


class VelocityError(Loss):
    """:math:`\\|v_\\theta(x_t, t) - (x_1 - (1-\\sigma_{min})x_0)\\|^2` per row (module docstring).

    Args:
        p: the flow-matching model whose velocity is scored.
        interpolant: the path :math:`q(x_t|x_0,x_1,t)` (its ``sigma_min`` and variable names).
    """

    def __init__(self, p: FlowMatching, interpolant: FlowInterpolant) -> None:
        if interpolant.data_var != p.var[0]:
            raise ValueError(f"VelocityError: the path's data variable {interpolant.data_var!r} is not "
                             f"{p.prob_text}'s variable {p.var[0]!r}")
        q = interpolant
        super().__init__([q.noise_var, q.data_var, q.var[0], q.t_var, *p.cond_var])
        self.p, self.q = p, q

    def _own_distributions(self) -> list[FlowMatching]:
        return [self.p]

    def _value(self, ctx: EvalContext) -> Tensor:
        q, v = self.q, ctx.values
        x0, x1, xt, t = v[q.noise_var], v[q.data_var], v[q.var[0]], v[q.t_var]
        self.p.check_data(x1, q.data_var)  # (another width was scored by a velocity that takes any)
        t = t.to(xt.dtype).reshape(-1)
        target = x1 - (1 - q.sigma_min) * x0
        context = {c: v[c] for c in self.p.cond_var}
        err = (self.p.velocity(xt, t, context) - target).pow(2)
        return err.flatten(1).sum(1) if err.dim() > 1 else err  # scalar data: one entry per row

    def _render(self, fmt: dict[str, str]) -> str:
        template = _TEXT["latex"] if fmt is LATEX else _TEXT["text"]
        return template.format(self.q.t_var, self.q.var[0], self.q.noise_var, self.q.data_var)


def flow_matching_loss(p: FlowMatching, coupling: str = "independent", noise_var: str = "x_0",
                       t_var: str = "t") -> Loss:
    """:math:`\\mathcal{L}_{CFM}` per row (module docstring), with the model's ``sigma_min``.

    >>> import torch
    >>> p = FlowMatching(lambda x, t: torch.zeros_like(x), [2])
    >>> print(flow_matching_loss(p))
    E_{u(t)}[E_{p(x_0)}[E_{q(x_t|x_0,x,t)}[||u_t(x_t|x_0,x) - v_θ(x_t,t)||^2]]]
    >>> print(flow_matching_loss(p, coupling="ot"))
    E_{u(t)}[E_{π(x_0|x)}[E_{q(x_t|x_0,x,t)}[||u_t(x_t|x_0,x) - v_θ(x_t,t)||^2]]]
    >>> flow_matching_loss(p).eval({"x": torch.randn(5, 2)}).shape
    torch.Size([5])
    """
    data = p.var[0]
    q = FlowInterpolant(p.sigma_min, noise_var=noise_var, data_var=data, t_var=t_var)
    inner: Loss = Expectation(q, VelocityError(p, q))
    if coupling == "independent":
        inner = Expectation(NoiseLike(noise_var, like_var=data, features_shape=p.features_shape), inner)
    elif coupling == "ot":
        inner = Expectation(OTCoupling(var=noise_var, data_var=data), inner)
    elif coupling != "given":
        raise ValueError(f"flow_matching_loss: coupling must be 'independent', 'ot' or 'given', got {coupling!r}")
    return Expectation(TimeUniform(t_var), inner)
