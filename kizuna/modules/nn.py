r"""`NN`: a neural map between modules, trained by gradient (SERKET's NN module, simplified).

``nn.connect(source, target)``: the network :math:`f` learns to predict the target child's
forward message from the source child's (or from a fixed ``target=`` tensor with one child)
by minibatch Adam on the mean squared error

.. math:: \mathcal L(f) = \frac1N\sum_n \lVert y_n - f(x_n)\rVert^2 .

It sends its predictions :math:`f(x_n)` up (``latent``, N×out). When the source is a class
module (its message is a ``posterior`` N×K and it receives ``prior``), the NN also sends it a
class prior down: the Gaussian likelihood of each target under the prediction of each class,

.. math:: \pi_{nk} \propto \exp\!\Big(-\frac{\lVert y_n - f(e_k)\rVert^2}{2\sigma^2}\Big),\qquad
    \sigma^2 = \frac{1}{ND}\sum_n \lVert y_n - f(x_n)\rVert^2,

(:math:`e_k` the one-hot class) — so paired data (e.g. a second modality) steers the
clustering, which is what SERKET's NN backward message is for (Nakamura et al. 2018,
arXiv:1712.00929), computed in closed form here instead of by a second optimisation.
:math:`\sigma^2` and the distances are computed in at least float32 (half-precision messages
included; the prior is sent in the target's dtype).

An ``update`` is all or nothing: a loss or gradient that goes non-finite in training (a
learning rate too large; Adam in float16, whose second moment and ``eps`` underflow to 0) is a
``FloatingPointError`` naming the module, the epoch and the step, and the network, the
optimiser's state, ``prediction`` and ``mse`` are put back as they were before the update.

>>> import torch
>>> from kizuna.modules import Observation
>>> x = torch.randn(200, 3)
>>> nn_ = NN(torch.nn.Linear(3, 1), target=x @ torch.tensor([[1.0], [-2.0], [0.5]]), epochs=300, lr=0.05)
>>> nn_.connect(Observation(x)).update()
>>> bool(nn_.mse < 1e-3)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from kizuna._data import check_count, check_int, check_positive, check_sizes, first_flagged
from kizuna._distances import squared_distances
from kizuna.models.model import _all_finite
from kizuna.modules.base import Message, MessageShapeError, Module
from kizuna.modules.context import UpdateContext
from kizuna.modules.rng import rng_from
from kizuna.modules.state import added_field, follow_data, take_learning_rate
from kizuna.modules.validation import as_matrix
from kizuna.nets import MLP


class NN(Module):
    """Neural map module (see the module docstring).

    Args:
        net: a ``torch.nn.Module`` from ``in_dim`` to ``out_dim`` features (default: an MLP
            built at the first update, sizes from the messages).
        in_dim, out_dim: checked against the messages when given.
        target: a fixed ``N×out`` target (then connect one child); else the second child's message.
        hidden: hidden sizes of the default MLP.
        epochs, batch_size, lr: training per ``update``; ``epochs`` may follow a graph's schedule.
        name, learnable, random_state: see `kizuna.modules.Module`.
    """

    accepts: ClassVar[tuple[str, ...]] = ("data", "latent", "posterior")
    sends: ClassVar[str] = "latent"
    scheduled: ClassVar[tuple[str, ...]] = ("epochs",)
    architecture: ClassVar[tuple[str, ...]] = ("in_dim", "out_dim", "hidden")
    sends_priors_down: ClassVar[bool] = False  # a class prior to its source only, where that takes one

    @dataclass
    class State(Module.State):
        """Also the network, its predictions, their mean squared error and the optimiser's state (Adam's moments; a
        save written before it was kept loads with a fresh optimiser)."""

        net: nn.Module | None = None
        prediction: torch.Tensor | None = None
        mse: float | None = None
        optimizer: torch.optim.Optimizer | None = added_field()

    def __init__(self, net: nn.Module | None = None, in_dim: int | None = None, out_dim: int | None = None,
                 target: Any = None, hidden: Sequence[int] = (64,), epochs: int = 50, batch_size: int = 128,
                 lr: float = 1e-3, name: str | None = None, learnable: bool = True,
                 random_state: int | torch.Generator | None = None) -> None:
        super().__init__(name, learnable, random_state)
        # counts are integers (epochs=0.5 trained nothing, batch_size=2.5 failed in split_with_sizes, in_dim=0 failed
        # only when the graph ran); hidden a sequence of widths (64 raised "'int' object is not iterable")
        check_int(f"NN {self.name}: epochs", epochs, 0)
        check_int(f"NN {self.name}: batch_size", batch_size, 1)
        check_count(f"NN {self.name}: in_dim", in_dim, 1, arrays=True)  # (None: taken from the messages)
        check_count(f"NN {self.name}: out_dim", out_dim, 1, arrays=True)
        check_positive(f"NN {self.name}: lr", lr)
        hidden = check_sizes(f"NN {self.name}: hidden", hidden, "a sequence of layer widths, e.g. (64,) or [128, 64]")
        in_dim, out_dim = (None if dim is None else int(dim) for dim in (in_dim, out_dim))  # (numpy ints: JSON-able)
        self.net, self.in_dim, self.out_dim, self.hidden = net, in_dim, out_dim, hidden
        self._builds_net = net is None  # the default MLP: kizuna moves it to the data's dtype and device
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        if target is not None and getattr(target, "ndim", 2) != 2:
            raise ValueError(f"NN {self.name}: target must be N x out, got shape {tuple(target.shape)}")
        self.target = None if target is None else as_matrix(target, "target", f"NN {self.name}", dtype=None)
        self.optimizer: torch.optim.Optimizer | None = None
        self.prediction: torch.Tensor | None = None
        self.mse: float | None = None

    def _inputs(self, forward: list[Message]) -> tuple[torch.Tensor, torch.Tensor]:
        want = 1 if self.target is not None else 2
        if len(forward) != want:
            raise ValueError(f"NN {self.name} needs {want} child(ren) ({'source' if want == 1 else 'source, target'}), "
                             f"got {len(forward)}")
        x = forward[0].value
        y = self.target.to(dtype=x.dtype, device=x.device) if self.target is not None else forward[1].value
        if y.shape[0] != x.shape[0]:
            raise MessageShapeError(f"NN {self.name}: the target has {y.shape[0]} rows but {forward[0].sender} "
                                    f"sends {x.shape[0]}")
        for dim, got, what in ((self.in_dim, x.shape[1], "in_dim"), (self.out_dim, y.shape[1], "out_dim")):
            if dim is not None and dim != got:
                raise MessageShapeError(f"NN {self.name}: {what}={dim} but the messages have {got} columns")
        return x, y

    def _ensure(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None) -> None:
        """The default MLP (initialised from ``generator``) and the optimizer, at the first update."""
        if self.net is None:
            with rng_from(generator):
                self.net = MLP(x.shape[1], *self.hidden, y.shape[1])
            self.net.to(device=x.device, dtype=x.dtype)
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)

    def _check_output(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The network's output for one row has the target's width (a (N, 3) output against an (N, 1) target trained
        every column on the one target by broadcasting, and an (N,) output on an N x N loss, silently)."""
        was = self.net.training
        self.net.eval()  # one row: batch normalisation in its evaluation mode, no dropout draw
        try:
            with torch.no_grad():
                out = self.net(x[:1])
        except RuntimeError as err:  # raw torch errors ("mat1 and mat2 must have the same dtype", "... shapes ...")
            text = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            weight = next((p for p in self.net.parameters() if p.is_floating_point()), None)
            if weight is not None and weight.dtype != x.dtype and ("dtype" in text or "scalar type" in text):
                raise MessageShapeError(f"NN {self.name}: the network computes in {weight.dtype} but the messages "
                                        f"are {x.dtype}: convert one of them (a user network is used as given, "
                                        f"e.g. net.to({x.dtype}))") from None
            raise MessageShapeError(f"NN {self.name}: the network fails on one row of {x.shape[1]} inputs: "
                                    f"{text}") from err
        finally:
            self.net.train(was)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, y.shape[1]):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MessageShapeError(f"NN {self.name}: the network returns {shape} for one row of {x.shape[1]} "
                                    f"inputs, but the target has {y.shape[1]} column(s): it must return (N, "
                                    f"{y.shape[1]})")

    def _train(self, x: torch.Tensor, y: torch.Tensor, epochs: int, generator: torch.Generator | None
               ) -> tuple[int, int] | None:
        """``epochs`` epochs of minibatch Adam on the squared error (computed in at least float32: a float16 loss
        overflowed for targets beyond about 256); returns the (epoch, step) of the last step. A FloatingPointError
        where the loss or a gradient is not finite (that step is not taken; `_update` undoes the earlier ones)."""
        self.net.train()
        n, last = x.shape[0], None
        for epoch in range(1, epochs + 1):
            device = x.device if generator is None else generator.device
            order = torch.randperm(n, generator=generator, device=device).to(x.device)
            for step, idx in enumerate(order.split(self.batch_size), 1):
                self.optimizer.zero_grad(set_to_none=True)
                out, target = self.net(x[idx]), y[idx]
                wide = torch.promote_types(torch.promote_types(out.dtype, target.dtype), torch.float32)
                loss = ((out.to(wide) - target.to(wide)) ** 2).sum(1).mean()
                value = loss.item()
                if not math.isfinite(value):
                    raise self._nonfinite(f"the loss is {value} at epoch {epoch}, step {step}", last)
                loss.backward()
                if not _all_finite([p.grad for p in self.net.parameters() if p.grad is not None]):
                    bad = [k for k, p in self.net.named_parameters()
                           if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
                    raise self._nonfinite(f"the gradient of {', '.join(bad)} is non-finite at epoch {epoch}, step "
                                          f"{step} (the loss {value:.6g} is finite)", last)
                self.optimizer.step()
                last = (epoch, step)
        return last

    def _nonfinite(self, what: str, last: tuple[int, int] | None) -> FloatingPointError:
        """The error of a non-finite loss, gradient or prediction (see `_update`); ``last``: the (epoch, step) of
        the last training step taken, if any."""
        weights = [k for k, p in self.net.named_parameters() if not bool(torch.isfinite(p).all())]
        if weights:
            what += f" (the weights {', '.join(weights)} are non-finite" + (
                ")" if last is None else f": the step at epoch {last[0]}, step {last[1]} made them so)")
        hint = ""
        if last is not None:  # a step was taken: the learning rate, or Adam in float16
            half = any(p.dtype == torch.float16 for p in self.net.parameters())
            hint = ("; in float16, Adam's second moment (0.001 g^2) underflows to 0, and its eps (1e-8) with it, so "
                    "a step divides by 0: give float32 or bfloat16 data" if half
                    else f"; e.g. a smaller lr than {self.optimizer.param_groups[0]['lr']:g}")
        return FloatingPointError(f"NN {self.name}: {what}; the update was undone (the network, its optimiser's "
                                  f"state, prediction and mse are as before it){hint}")

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        x, y = self._inputs(forward)
        restore = self.snapshot()  # all or nothing: the network, Adam's state, prediction and mse
        modes = [] if self.net is None else [(m, m.training) for m in self.net.modules()]
        try:
            return self._learn(ctx, x, y, forward)
        except BaseException:
            if self.net is not None:
                self.net.zero_grad(set_to_none=True)
            restore()
            for m, training in modes:
                m.training = training
            raise

    def _learn(self, ctx: UpdateContext, x: torch.Tensor, y: torch.Tensor, forward: list[Message]
               ) -> tuple[Message, dict[Module, Message]]:
        self._ensure(x, y, ctx.generator)
        if self._builds_net:  # e.g. loaded from a save of another dtype; a user network is left as given
            follow_data([self.net], self.optimizer, x)
        self._check_output(x, y)
        epochs = ctx.setting(self.name, "epochs", self.epochs)
        last = None
        if self.learnable and epochs > 0:
            with rng_from(ctx.generator):  # dropout and other global-RNG draws of a user network
                last = self._train(x, y, epochs, ctx.generator)
        self.net.eval()
        with torch.no_grad():
            self.prediction = self.net(x)
            bad = ~torch.isfinite(self.prediction)
            if bool(bad.any()):  # e.g. weights that overflowed at the last step
                raise self._nonfinite(f"the network's prediction holds {first_flagged(self.prediction, bad)}", last)
            # in at least float32: a float16 residual of a target of scale 400 overflowed to inf
            wide = torch.promote_types(torch.promote_types(y.dtype, self.prediction.dtype), torch.float32)
            residual = ((y.to(wide) - self.prediction.to(wide)) ** 2).mean()
        self.mse = float(residual)
        down: dict[Module, Message] = {}
        source = self.children[0]
        if forward[0].kind == "posterior" and "prior" in source.receives:
            down[source] = self.message("prior", self.class_prior(y, residual), receiver=source, variable="c")
        return self.message("latent", self.prediction, variable="y"), down

    def sends_prior_to(self, child: Module) -> bool:
        """See `Module.sends_prior_to`: the class prior goes to the source child (the first) only."""
        return bool(self.children) and child is self.children[0] and "prior" in child.receives

    @torch.no_grad()
    def class_prior(self, y: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """:math:`\\pi_{nk} \\propto \\exp(-\\lVert y_n - f(e_k)\\rVert^2 / 2\\sigma^2)` (see the module docstring),
        computed in at least float32 (torch has no half-precision ``cdist`` on the CPU, and a float16 distance
        overflows at 256) and returned in ``y``'s dtype."""
        source = self.children[0].message_to(self).value
        # the one-hot classes in the source's dtype, which the network takes, and its outputs in the target's (a
        # float32 source with a float64 target failed here, in torch's matrix product, after training)
        per_class = self.net(torch.eye(source.shape[1], dtype=source.dtype, device=source.device))  # K x out
        wide = torch.promote_types(y.dtype, torch.float32)
        dist2 = squared_distances(y.to(wide), per_class.to(dtype=wide, device=y.device))
        variance = torch.as_tensor(variance, dtype=wide, device=y.device)
        return torch.softmax(-dist2 / (2 * variance.clamp(min=1e-12)), 1).to(y.dtype)

    def _before_load(self, state: dict[str, Any]) -> None:
        """Build the default MLP a saved state holds weights of, sized by those weights (its children need not
        have sent messages yet: a module loaded before its graph's first sweep), and a fresh optimiser: the saved
        one's state is loaded into it, and a save written before that state was kept trains on with the fresh one
        (Adam's moments of earlier training here do not belong to the loaded weights)."""
        self.optimizer = None
        if self.net is not None:
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
            return
        if state["net"] is None:
            return
        weights = [w for k, w in state["net"].items() if k.endswith("weight") and w.dim() == 2]
        if len(weights) != len(self.hidden) + 1:
            raise ValueError(f"NN {self.name}: the saved network has {len(weights)} linear layers but the default "
                             f"MLP with hidden={self.hidden} has {len(self.hidden) + 1}; build this module with "
                             "the same network before loading")
        like = weights[0]
        self._ensure(like.new_empty(0, weights[0].shape[1]), like.new_empty(0, weights[-1].shape[0]),
                     torch.Generator())  # the weights are overwritten

    def _after_load(self) -> None:
        take_learning_rate(self.optimizer, self.lr)
