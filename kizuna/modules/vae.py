r"""`VAE`: a variational auto-encoder module whose latent prior mean comes from its parent.

Neuro-SERKET (Taniguchi et al. 2020, arXiv:1910.08918; SERKET's VAE module) trains a VAE
whose prior is centred on a per-sample mean :math:`\mu_n` sent down by the parent (a GMM
sends the mean of the class of :math:`x_n`):

.. math::
    \mathcal L = \frac1N\sum_n \Big(-\mathbb E_{q(z|x_n)}[\log p(x_n|z)]
    + \alpha\, D_{KL}\big[q(z|x_n)\,\|\,\mathcal N(\mu_n, I)\big]\Big),

with :math:`\mu_n = 0` before the first message. The module **is** a kizuna model: the loss
is written with the formula layer (``KullbackLeibler``, ``Expectation``, ``LogProb``), any
encoder :math:`q(z|x)` (a ``Normal``) and decoder :math:`p(x|z)` built with it can be passed
in, and each ``update`` runs ``epochs`` epochs of ``Model.fit`` over minibatches of the
``N`` observations, then sends the latent means :math:`\mathbb E_q[z|x_n]` (N×D) up.

>>> import torch
>>> from kizuna.modules import Observation
>>> x = (torch.rand(64, 20) > 0.5).float()
>>> vae = VAE(2, epochs=1, batch_size=32).connect(Observation(x))
>>> vae.update()
>>> tuple(vae.forward_message.value.shape), vae.forward_message.kind
((64, 2), 'latent')
>>> print(vae.model.loss_cls)
mean(-E_{q(z|x)}[log p(x|z)] + KL[q(z|x)||p_{prior}(z|mu)])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from kizuna._data import check_int, check_non_negative, check_positive
from kizuna.distributions import MLPBernoulli, MLPNormal, Normal
from kizuna.distributions.base import Distribution
from kizuna.losses import Expectation, KullbackLeibler, LogProb
from kizuna.models import Model
from kizuna.modules.base import Message, Module, check_width
from kizuna.modules.context import UpdateContext
from kizuna.modules.rng import draw_seed, rng_from
from kizuna.modules.state import added_field, follow_data, take_learning_rate
from kizuna.modules.validation import not_fitted

LIKELIHOODS = ("bernoulli", "normal")
PRIOR_MEAN = "mu"


def _names(encoder: Distribution, decoder: Distribution) -> tuple[str, str]:
    """The data and latent variable names of a user encoder q(z|x) and decoder p(x|z)."""
    if len(encoder.var) != 1 or len(encoder.cond_var) != 1:
        raise ValueError(f"VAE: the encoder must be q(z|x), one variable and one condition, got {encoder.prob_text}")
    z, x = encoder.var[0], encoder.cond_var[0]
    if decoder.var != [x] or decoder.cond_var != [z]:
        raise ValueError(f"VAE: the decoder must be p({x}|{z}) to match the encoder {encoder.prob_text}, "
                         f"got {decoder.prob_text}")
    if PRIOR_MEAN in (x, z):
        raise ValueError(f"VAE: the variable name {PRIOR_MEAN!r} is reserved for the prior mean")
    return x, z


@contextmanager
def evaluating(*modules: torch.nn.Module) -> Iterator[None]:
    """``modules`` in eval mode for the block, each returned to its own mode afterwards (so a trainer's
    record of the mode stays true)."""
    modes = [[m.training for m in module.modules()] for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes):
            for m, training in zip(module.modules(), mode):
                m.training = training


class VAE(Module):
    """VAE module (see the module docstring).

    Args:
        latent_dim: :math:`D_z`.
        encoder, decoder: a user :math:`q(z|x)` (``Normal``) and :math:`p(x|z)`; default MLPs.
        vae: a ``kizuna.models.VAE`` whose encoder and decoder are reused (its loss is not).
        hidden: hidden layer sizes of the default MLPs.
        epochs, batch_size, lr: training per ``update`` (Adam); ``epochs`` may follow a graph's schedule.
        alpha: weight of the KL to :math:`\\mathcal N(\\mu_n, I)`.
        likelihood: ``"bernoulli"`` (data in [0, 1]) or ``"normal"`` for the default decoder.
        name, learnable, random_state: see `kizuna.modules.Module`.
    """

    accepts: ClassVar[tuple[str, ...]] = ("data", "latent")
    sends: ClassVar[str] = "latent"
    receives: ClassVar[tuple[str, ...]] = ("prior_mean",)
    scheduled: ClassVar[tuple[str, ...]] = ("epochs",)
    architecture: ClassVar[tuple[str, ...]] = ("latent_dim", "likelihood", "hidden")

    @dataclass
    class State(Module.State):
        """Also the networks, the input size of the default ones, the latents, the loss history and the optimiser's
        state (Adam's moments; a save written before it was kept loads with a fresh optimiser)."""

        in_dim: int | None = None
        encoder: Distribution | None = None
        decoder: Distribution | None = None
        latent: torch.Tensor | None = None
        loss_history: list[float] = field(default_factory=list)
        optimizer: torch.optim.Optimizer | None = added_field()

    def __init__(self, latent_dim: int, encoder: Distribution | None = None, decoder: Distribution | None = None,
                 vae: Model | None = None, hidden: Sequence[int] = (256,), epochs: int = 10, batch_size: int = 128,
                 lr: float = 1e-3, alpha: float = 1.0, likelihood: str = "bernoulli", name: str | None = None,
                 learnable: bool = True, random_state: int | torch.Generator | None = None) -> None:
        super().__init__(name, learnable, random_state)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"VAE {self.name}: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        # counts are integers (epochs=2.5 trained 2, 0.9 none, silently) and the numbers finite
        for what, value, least in (("latent_dim", latent_dim, 1), ("epochs", epochs, 0), ("batch_size", batch_size, 1)):
            check_int(f"VAE {self.name}: {what}", value, least)
        check_positive(f"VAE {self.name}: lr", lr)
        check_non_negative(f"VAE {self.name}: alpha", alpha)
        if vae is not None:
            if encoder is not None or decoder is not None:
                raise ValueError(f"VAE {self.name}: pass either vae= or encoder=/decoder=, not both")
            encoder, decoder = vae.distributions[0], vae.distributions[1]
        if (encoder is None) != (decoder is None):
            raise ValueError(f"VAE {self.name}: pass both encoder and decoder, or neither")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Iterable):  # ("64" built layers of 6 and 4)
            raise ValueError(f"VAE {self.name}: hidden must be a sequence of layer widths, e.g. (256,), got "
                             f"{hidden!r}")
        hidden = tuple(hidden)
        for i, width in enumerate(hidden):  # (8.5 built 8 units, True 1)
            check_int(f"VAE {self.name}: hidden[{i}]", width, 1)
        self.latent_dim, self.hidden, self.likelihood, self.vae = latent_dim, hidden, likelihood, vae
        self.epochs, self.batch_size, self.lr, self.alpha = epochs, batch_size, lr, alpha
        self.encoder, self.decoder = encoder, decoder
        self.model: Model | None = None
        self.optimizer: torch.optim.Optimizer | None = None  # the model's, once it is built
        self.in_dim: int | None = None
        self.latent: torch.Tensor | None = None
        self.loss_history: list[float] = []
        if encoder is not None:
            self._build_model()

    def _hidden_params(self) -> tuple[str, ...]:
        default = ("encoder", "decoder") if self.in_dim is not None else ()  # networks built from `hidden`
        return (*super()._hidden_params(), *default)

    # ------------------------------------------------------------------ model
    def _build_model(self) -> None:
        x, z = _names(self.encoder, self.decoder)
        self.data_var, self.latent_var = x, z
        self.prior = Normal(var=[z], cond_var=[PRIOR_MEAN], loc=PRIOR_MEAN, scale=1.0, name="p_prior")
        self.kl = KullbackLeibler(self.encoder, self.prior)
        self.reconstruction_loss = -Expectation(self.encoder, LogProb(self.decoder))
        loss = (self.reconstruction_loss + self.kl if self.alpha == 1.0
                else self.reconstruction_loss + self.alpha * self.kl).mean()
        self.model = Model(loss, distributions=[self.encoder, self.decoder], optimizer=torch.optim.Adam,
                           optimizer_params={"lr": self.lr})
        self.optimizer = self.model.optimizer

    def _default_networks(self, d: int, like: torch.Tensor, generator: torch.Generator | None) -> None:
        """MLPs for ``d`` input features, initialised from ``generator`` (through `rng_from`)."""
        sizes = [d, *self.hidden, self.latent_dim]
        with rng_from(generator):
            self.encoder = MLPNormal("z", ["x"], sizes, name="q")
            self.decoder = (MLPBernoulli("x", ["z"], sizes[::-1], name="p") if self.likelihood == "bernoulli"
                            else MLPNormal("x", ["z"], sizes[::-1], name="p", min_scale=1e-3, shared_scale=True))
        self.encoder.to(device=like.device, dtype=like.dtype)
        self.decoder.to(device=like.device, dtype=like.dtype)
        self.in_dim = d
        self._build_model()

    def _input(self, data: Any, who: str) -> torch.Tensor:
        """``data`` as a tensor for the networks (a numpy array converted), once they exist; a clear error otherwise
        (an ``AttributeError`` of None or of the array's ``split`` before)."""
        if self.encoder is None:
            raise not_fitted(f"VAE {self.name}: {who} needs the networks, built at the first update(); call update() "
                             "(or Graph.fit) first, or give encoder= and decoder=")
        if isinstance(data, np.ndarray):
            data = torch.as_tensor(data)
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"VAE {self.name}: {who} takes a tensor or a numpy array, got {type(data).__name__}")
        like = next((p for p in self.encoder.parameters() if p.is_floating_point()), None)
        return data if like is None or not data.is_floating_point() else data.to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Latent means :math:`\\mathbb E_{q}[z|x]` (N×D_z), computed in batches in eval mode (``data``: a tensor or
        a numpy array)."""
        data = self._input(data, "encode")
        with evaluating(self.encoder):
            out = [self.encoder.sample_mean({self.data_var: b}) for b in data.split(max(self.batch_size, 1024))]
        return torch.cat(out)

    @torch.no_grad()
    def reconstruct(self, data: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathbb E_{p}[x|z=\\mathbb E_q[z|x]]`: the decoder mean at the latent means."""
        z = self.encode(self._input(data, "reconstruct"))
        with evaluating(self.decoder):
            return torch.cat([self.decoder.sample_mean({self.latent_var: b}) for b in z.split(1024)])

    # ---------------------------------------------------------------- protocol
    def _prior_mean(self, backward: Message | None, n: int, like: torch.Tensor) -> torch.Tensor:
        if backward is None:
            return torch.zeros(n, self.latent_dim, dtype=like.dtype, device=like.device)
        check_width(self, backward, self.latent_dim, "latent dimensions")
        return backward.value.to(dtype=like.dtype, device=like.device)

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        if len(forward) != 1:
            raise ValueError(f"VAE {self.name} encodes one child's message, got {len(forward)} children")
        data = forward[0].value
        if self.model is None:
            self._default_networks(data.shape[1], data, ctx.generator)
        elif self.in_dim is not None:  # default networks, e.g. loaded from a save of another dtype; user ones as given
            follow_data([self.encoder, self.decoder], self.model.optimizer, data)
        if self.likelihood == "bernoulli" and self.in_dim is not None and ((data < 0).any() or (data > 1).any()):
            raise ValueError(f"VAE {self.name}: the Bernoulli decoder needs data in [0, 1] from {forward[0].sender}; "
                             "rescale it or pass likelihood='normal'")
        if self.in_dim is None:  # user networks: their latent width checked before training (it trained on a broadcast
            # prior and failed after, with the networks, the loss history and Adam's state changed)
            with torch.no_grad():
                first = self.encode(data[:1])
            check_width(self, Message(self.name, None, "z", "latent", first), self.latent_dim, "latent dimensions")
        mu = self._prior_mean(backward, data.shape[0], data)
        epochs = ctx.setting(self.name, "epochs", self.epochs)
        if self.learnable and epochs > 0:
            # fit's own streams (its draws and its batch order) start from the graph's generator at every update;
            # a context without one (UpdateContext()) leaves them to fit, which continues them
            if ctx.generator is not None:
                self.model.seed_streams(draw_seed(ctx.generator))
            history = self.model.fit({self.data_var: data, PRIOR_MEAN: mu}, epochs=epochs,
                                     batch_size=self.batch_size, quiet=True)
            self.loss_history.append(history.train[-1])
        self.latent = self.encode(data)
        check_width(self, Message(self.name, None, "z", "latent", self.latent), self.latent_dim, "latent dimensions")
        return self.message("latent", self.latent, variable=self.latent_var), {}

    # ------------------------------------------------------------- persistence
    def _before_load(self, state: dict[str, Any]) -> None:
        """Build the default networks a saved state holds weights of (user networks must be given again), with a fresh
        optimiser: the saved one's state is loaded into it, and a save written before that state was kept trains
        on with the fresh one (earlier training's Adam moments here are dropped). A save of a default-network VAE
        never updated (no networks) returns this one to the unfitted state: the next update builds the networks as
        for a freshly built module."""
        if state["encoder"] is None:
            if self.model is not None and self.in_dim is None:  # user networks: their save always holds them
                raise ValueError(f"VAE {self.name}: the saved state holds no networks (a default-network VAE saved "
                                 "before its first update), but this module was built with user networks")
            self.model, self.optimizer = None, None  # undone by `snapshot`'s restore if a later load fails
            return
        if self.model is not None:
            self.model.optimizer.state.clear()
            return
        if state["in_dim"] is None:
            raise ValueError(f"VAE {self.name}: the saved state holds user networks; build this module "
                             "with the same encoder and decoder before loading")
        sent = [m for m in (c.message_to(self) for c in self.children) if m is not None]
        like = sent[0].value if sent else torch.zeros(1, state["in_dim"])
        self._default_networks(int(state["in_dim"]), like, torch.Generator())  # the weights are overwritten

    def _after_load(self) -> None:
        take_learning_rate(self.optimizer, self.lr)
