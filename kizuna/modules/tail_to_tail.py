r"""`TailToTail`: Neuro-SERKET's tail-to-tail node joining modules that explain the same events.

Two (or more) class modules :math:`m = 1..M` (an LDA on speech, a GMM on a VAE's latents, ...) each
send class posteriors :math:`P^{(m)}_{nk}` over their own labels. Their labels are arbitrary, so the
node first aligns every module's labels to the first one's: the permutation :math:`\sigma_m`
maximising the agreement :math:`\sum_n P^{(1)}_{n k} P^{(m)}_{n\sigma_m(k)}` (Hungarian algorithm on the
``K×K`` soft co-occurrence table; SERKET's ``TtoT`` swaps columns greedily on hard labels). With
the aligned, smoothed posteriors :math:`Q^{(m)} \propto P^{(m)}_{\cdot\sigma_m} + \epsilon`, each module
receives the **others'** belief as its class prior, mapped back to its own labels,

.. math:: \pi^{(m)}_{n\sigma_m(k)} \propto \prod_{j \neq m} Q^{(j)}_{nk},

(SERKET's ``examples/number_recog`` tail-to-tail; Taniguchi et al. 2020, arXiv:1910.08918) and the
node's own posterior, sent up, is the product of all of them. (SERKET's node sends the others'
product in the first module's label order to every module; mapping it back is what makes the
prior mean the same class for the receiver.)

A parent above the node (an MM, an MLDA) sends a class prior :math:`\rho_{nk}` over the node's labels, the
first module's. It is one more factor on the shared class, so it multiplies into what every module receives
and into the node's posterior, but not into the message sent up (which would count it twice, as a GMM's
forward message leaves out its parent's prior):

.. math:: \pi^{(m)}_{n\sigma_m(k)} \propto \rho_{nk} \prod_{j \neq m} Q^{(j)}_{nk}, \qquad
    \text{posterior}_{nk} \propto \rho_{nk} \prod_j Q^{(j)}_{nk}, \qquad \text{up}_{nk} \propto \prod_j Q^{(j)}_{nk}.

>>> import torch
>>> a = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
>>> b = a[:, [1, 0]]  # the same beliefs, labels swapped
>>> align(a, b).tolist()
[1, 0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from scipy.optimize import linear_sum_assignment

from kizuna.modules.base import Message, MessageShapeError, Module, check_width
from kizuna.modules.context import UpdateContext


def align(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The permutation ``sigma`` (K) with ``other[:, sigma]`` best agreeing with ``reference`` (Hungarian)."""
    agreement = (reference.T @ other).detach().cpu().double().numpy()  # K×K soft co-occurrences
    _, cols = linear_sum_assignment(-agreement)
    return torch.as_tensor(cols, dtype=torch.long)


class TailToTail(Module):
    """Joins the class posteriors of its children (see the module docstring).

    Args:
        smoothing: :math:`\\epsilon` added to every aligned posterior before the product (SERKET: 0.01).
    """

    accepts: ClassVar[tuple[str, ...]] = ("posterior",)
    sends_priors_down: ClassVar[bool] = True  # class priors to the children whose posteriors it takes
    sends: ClassVar[str] = "posterior"
    receives: ClassVar[tuple[str, ...]] = ("prior",)
    up_excludes_priors: ClassVar[bool] = True  # its parents' priors: see `Module.message_to`

    @dataclass
    class State(Module.State):
        """Also the joint posterior (with a parent's prior) and each child's label permutation."""

        posterior: torch.Tensor | None = None
        permutations: list[torch.Tensor] = field(default_factory=list)

    def __init__(self, smoothing: float = 0.01, name: str | None = None) -> None:
        super().__init__(name, learnable=False)
        if not smoothing >= 0 or smoothing == float("inf"):  # NaN too
            raise ValueError(f"TailToTail {self.name}: smoothing must be a finite number >= 0, got {smoothing}")
        self.smoothing = smoothing
        self.permutations: list[torch.Tensor] = []
        self.posterior: torch.Tensor | None = None

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        if len(forward) < 2:
            raise ValueError(f"TailToTail {self.name} joins at least two modules, got {len(forward)}")
        for msg in forward[1:]:
            if msg.width != forward[0].width:
                raise MessageShapeError(f"TailToTail {self.name}: {forward[0].sender} sends {forward[0].width} "
                                        f"classes but {msg.sender} sends {msg.width}")
        # the children's posteriors in one dtype (a float32 child beside a float64 one, e.g. a GMM on images beside
        # one on numpy features: torch's bare "expected m1 and m2 to have the same dtype"); each child's prior goes
        # back in its own posterior's dtype
        dtype = forward[0].value.dtype
        for m in forward[1:]:
            dtype = torch.promote_types(dtype, m.value.dtype)
        values = [m.value.to(dtype) for m in forward]
        ref = values[0]
        self.permutations = [torch.arange(ref.shape[1])] + [align(ref, v) for v in values[1:]]
        aligned = [v[:, s] + self.smoothing for v, s in zip(values, self.permutations)]
        log_q = torch.stack([torch.log(q / q.sum(1, keepdim=True)) for q in aligned])  # M×N×K
        total = log_q.sum(0)
        log_rho = None
        if backward is not None:  # a parent's class prior, over the first module's labels (the node's own)
            check_width(self, backward, ref.shape[1], "classes")
            log_rho = torch.log(backward.value.to(log_q.dtype))
        joint = total if log_rho is None else total + log_rho
        none = ~torch.isfinite(joint).any(1)
        if bool(none.any()):  # a softmax of a row of -inf is NaN, which the message check reported without the cause
            row = int(none.nonzero()[0])
            prior = "" if log_rho is None else f" and the prior of {backward.sender}"
            raise ValueError(f"TailToTail {self.name}: row {row}: the posteriors of "
                             f"{', '.join(m.sender for m in forward)}{prior} have no class in common (each class has "
                             "probability 0 under one of them), so their product is 0; use smoothing > 0 (SERKET: "
                             "0.01)")
        self.posterior = torch.softmax(joint, 1)
        down = {}
        for i, (child, sigma) in enumerate(zip(self.children, self.permutations)):
            if "prior" not in child.receives:
                continue
            # the other modules' product, summed without this one (total - log_own is nan where both are -inf)
            others = torch.cat([log_q[:i], log_q[i + 1:]]).sum(0)
            others = torch.softmax(others if log_rho is None else others + log_rho, 1)
            prior = torch.empty_like(others)
            prior[:, sigma] = others  # back to the child's own labels
            down[child] = self.message("prior", prior.to(forward[i].value.dtype), receiver=child)
        up = self.posterior if log_rho is None else torch.softmax(total, 1)  # the parent's prior left out
        return self.message("posterior", up), down
