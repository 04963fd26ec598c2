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

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, Normal
from kizuna.distributions.base import Distribution
from kizuna.losses import Expectation, KullbackLeibler, LogProb
from kizuna.models import Model
from kizuna.modules.base import Message, Module, check_width
from kizuna.modules.inference import rng_from
from kizuna.nets import MLP

LIKELIHOODS = ("bernoulli", "normal")
PRIOR_MEAN = "mu"


class _Encoder(Normal):
    """:math:`q(z|x) = \\mathcal N(\\mathrm{loc}(x), \\mathrm{diag}\\,\\mathrm{scale}(x)^2)` by an MLP."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = MLP(*sizes[:-1], 2 * sizes[-1])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-4}


class _BernoulliDecoder(Bernoulli):
    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = MLP(*sizes)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"probs": torch.sigmoid(self.net(z))}


class _NormalDecoder(Normal):
    """:math:`p(x|z) = \\mathcal N(\\mathrm{loc}(z), \\mathrm{diag}\\,\\sigma^2)`, a learnt :math:`\\sigma` per dim."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = MLP(*sizes)
        self.raw_scale = nn.Parameter(torch.zeros(sizes[-1]))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        loc = self.net(z)
        return {"loc": loc, "scale": (F.softplus(self.raw_scale) + 1e-3).expand_as(loc)}


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


class VAE(Module):
    """VAE module (see the module docstring).

    Args:
        latent_dim: :math:`D_z`.
        encoder, decoder: a user :math:`q(z|x)` (``Normal``) and :math:`p(x|z)`; default MLPs.
        vae: a ``kizuna.models.VAE`` whose encoder and decoder are reused (its loss is not).
        hidden: hidden layer sizes of the default MLPs.
        epochs, batch_size, lr: training per ``update`` (Adam).
        alpha: weight of the KL to :math:`\\mathcal N(\\mu_n, I)`.
        likelihood: ``"bernoulli"`` (data in [0, 1]) or ``"normal"`` for the default decoder.
    """

    accepts: ClassVar[tuple[str, ...]] = ("data", "latent")
    sends: ClassVar[str] = "latent"
    receives: ClassVar[tuple[str, ...]] = ("prior_mean",)

    def __init__(self, latent_dim: int, encoder: Distribution | None = None, decoder: Distribution | None = None,
                 vae: Model | None = None, hidden: Sequence[int] = (256,), epochs: int = 10, batch_size: int = 128,
                 lr: float = 1e-3, alpha: float = 1.0, likelihood: str = "bernoulli", name: str | None = None,
                 learnable: bool = True) -> None:
        super().__init__(name, learnable)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"VAE {self.name}: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if latent_dim < 1 or epochs < 0 or batch_size < 1 or alpha < 0:
            raise ValueError(f"VAE {self.name}: need latent_dim >= 1, epochs >= 0, batch_size >= 1, alpha >= 0")
        if vae is not None:
            if encoder is not None or decoder is not None:
                raise ValueError(f"VAE {self.name}: pass either vae= or encoder=/decoder=, not both")
            encoder, decoder = vae.distributions[0], vae.distributions[1]
        if (encoder is None) != (decoder is None):
            raise ValueError(f"VAE {self.name}: pass both encoder and decoder, or neither")
        self.latent_dim, self.hidden, self.likelihood = latent_dim, tuple(hidden), likelihood
        self.epochs, self.batch_size, self.lr, self.alpha = epochs, batch_size, lr, alpha
        self.encoder, self.decoder = encoder, decoder
        self.model: Model | None = None
        self.latent: torch.Tensor | None = None
        self.loss_history: list[float] = []
        if encoder is not None:
            self._build_model()

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

    def _ensure_model(self, data: torch.Tensor) -> None:
        if self.model is None:
            d = data.shape[1]
            self.encoder = _Encoder([d, *self.hidden, self.latent_dim])
            cls = _BernoulliDecoder if self.likelihood == "bernoulli" else _NormalDecoder
            self.decoder = cls([self.latent_dim, *reversed(self.hidden), d])
            self.encoder.to(device=data.device, dtype=data.dtype)
            self.decoder.to(device=data.device, dtype=data.dtype)
            self._build_model()
            self.in_dim = d

    @torch.no_grad()
    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Latent means :math:`\\mathbb E_{q}[z|x]` (N×D_z), computed in batches."""
        self.model._set_mode(False)  # through Model, so its train/eval bookkeeping stays right
        out = [self.encoder.sample_mean({self.data_var: b}) for b in data.split(max(self.batch_size, 1024))]
        return torch.cat(out)

    @torch.no_grad()
    def reconstruct(self, data: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathbb E_{p}[x|z=\\mathbb E_q[z|x]]`: the decoder mean at the latent means."""
        z = self.encode(data)
        return torch.cat([self.decoder.sample_mean({self.latent_var: b}) for b in z.split(1024)])

    # ---------------------------------------------------------------- protocol
    def _prior_mean(self, backward: Message | None, n: int, like: torch.Tensor) -> torch.Tensor:
        if backward is None:
            return torch.zeros(n, self.latent_dim, dtype=like.dtype, device=like.device)
        check_width(self, backward, self.latent_dim, "latent dimensions")
        return backward.value.to(dtype=like.dtype, device=like.device)

    def _update(self, forward: list[Message], backward: Message | None) -> tuple[Message, dict[Module, Message]]:
        if len(forward) != 1:
            raise ValueError(f"VAE {self.name} encodes one child's message, got {len(forward)} children")
        data = forward[0].value
        self._ensure_model(data)
        if self.likelihood == "bernoulli" and self.encoder.__class__ is _Encoder and (
                (data < 0).any() or (data > 1).any()):
            raise ValueError(f"VAE {self.name}: the Bernoulli decoder needs data in [0, 1] from {forward[0].sender}; "
                             "rescale it or pass likelihood='normal'")
        mu = self._prior_mean(backward, data.shape[0], data)
        if self.learnable and self.epochs > 0:
            with rng_from(self.generator):
                history = self.model.fit({self.data_var: data, PRIOR_MEAN: mu}, epochs=self.epochs,
                                         batch_size=self.batch_size, quiet=True)
            self.loss_history.append(history.train[-1])
        self.latent = self.encode(data)
        check_width(self, Message(self.name, None, "z", "latent", self.latent), self.latent_dim, "latent dimensions")
        return self.message("latent", self.latent, variable=self.latent_var), {}

    # ------------------------------------------------------------- persistence
    def config(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim, "likelihood": self.likelihood, "hidden": list(self.hidden)}

    def state_dict(self) -> dict[str, Any]:
        nets = None if self.model is None else {"encoder": self.encoder.state_dict(),
                                                 "decoder": self.decoder.state_dict(),
                                                 "in_dim": getattr(self, "in_dim", None)}
        return {**super().state_dict(), "nets": nets, "latent": self.latent, "loss_history": self.loss_history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        nets = state["nets"]
        if nets is not None:
            if self.model is None:
                if nets["in_dim"] is None:
                    raise ValueError(f"VAE {self.name}: the saved state holds user networks; build this module "
                                     "with the same encoder and decoder before loading")
                sent = [c.forward_message for c in self.children if c.forward_message is not None]
                like = sent[0].value if sent else torch.zeros(1, nets["in_dim"])
                self._ensure_model(like.new_zeros(1, nets["in_dim"]))
            self.encoder.load_state_dict(nets["encoder"])
            self.decoder.load_state_dict(nets["decoder"])
        self.latent, self.loss_history = state["latent"], list(state["loss_history"])
