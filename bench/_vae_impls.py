"""The VAE step of ``vae_step.py`` written once per implementation, each from the same initial weights.

Every ``make(enc, dec, ...)`` copies the networks it is given, so all implementations start
from identical weights, and returns a function taking one step (returning the loss as a float).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, Normal
from kizuna.losses import Expectation, KullbackLeibler, LogProb
from kizuna.models import Model

Step = Callable[[], Any]
LR = 1e-3


def mlp(*sizes: int) -> nn.Sequential:
    """Linear layers with ReLU between them (the layout of `kizuna.nets.MLP`)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def nets(d: int, hidden: tuple[int, ...], z: int, seed: int) -> tuple[nn.Sequential, nn.Sequential]:
    torch.manual_seed(seed)
    return mlp(d, *hidden, 2 * z), mlp(z, *reversed(hidden), d)


# ----------------------------------------------------------------------- hand-written
def hand_loss(enc: nn.Module, dec: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """-ELBO per row, batch mean, as users write it: the decoder's probabilities scored with
    ``F.binary_cross_entropy``, plus the closed-form KL to N(0, I)."""
    loc, s = enc(x).chunk(2, -1)
    scale = F.softplus(s)
    z = loc + scale * torch.randn_like(scale)
    recon = F.binary_cross_entropy(torch.sigmoid(dec(z)), x, reduction="none").sum(-1)
    kl = (0.5 * (scale**2 + loc**2 - 1) - scale.log()).sum(-1)
    return (kl + recon).mean()


def cycle(batches: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """A fresh batch per call, in turn (as a training loop feeds them)."""
    state = [0]

    def next_batch() -> torch.Tensor:
        state[0] = (state[0] + 1) % len(batches)
        return batches[state[0]]

    return next_batch


def _hand(enc: nn.Module, dec: nn.Module, loss_fn: Callable[..., torch.Tensor], **adam: Any
          ) -> Callable[[torch.Tensor], float]:
    enc, dec = copy.deepcopy(enc), copy.deepcopy(dec)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=LR, **adam)

    def step(x: torch.Tensor) -> float:
        opt.zero_grad()
        loss = loss_fn(enc, dec, x)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def hand_step(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int = 0) -> Step:
    step, batch = _hand(enc, dec, hand_loss), cycle(x)
    return lambda: step(batch())


def hand_fused(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int = 0) -> Step:
    """The hand-written step with torch's fused Adam kernel (``fused=True``), the implementation kizuna's
    `Model` picks for Adam: against it, the ratio is the formula layer's cost alone."""
    step, batch = _hand(enc, dec, hand_loss, fused=True), cycle(x)
    return lambda: step(batch())


def hand_loss_same_kernels(enc: nn.Module, dec: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`hand_loss` with the Bernoulli log-mass computed as kizuna computes it on a CPU: the probabilities
    clamped to [eps, 1 - eps] (``hardtanh``) and ``lerp(log1p(-p), log(p), x)`` (torch's CPU
    cross-entropy kernels are not vectorised; see bench/bernoulli_kernels.py)."""
    loc, s = enc(x).chunk(2, -1)
    scale = F.softplus(s)
    z = loc + scale * torch.randn_like(scale)
    eps = torch.finfo(x.dtype).eps
    probs = F.hardtanh(torch.sigmoid(dec(z)), eps, 1 - eps)
    recon = torch.lerp((-probs).log1p(), probs.log(), x).sum(-1).neg()
    kl = (0.5 * (scale**2 + loc**2 - 1) - scale.log()).sum(-1)
    return (kl + recon).mean()


def hand_same_kernels(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int = 0) -> Step:
    """The hand-written step with the kernels kizuna picks: torch's fused Adam (``fused=True``) and the
    Bernoulli formula of `hand_loss_same_kernels`. Against it, the ratio is the formula layer's own cost."""
    step, batch = _hand(enc, dec, hand_loss_same_kernels, fused=True), cycle(x)
    return lambda: step(batch())


def hand_compiled(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int) -> Step:
    step, batch = _hand(enc, dec, torch.compile(hand_loss)), cycle(x)
    return lambda: step(batch())


def hand_epoch(enc: nn.Module, dec: nn.Module, data: torch.Tensor, batch: int) -> Step:
    """One epoch of shuffled mini-batches, logging the mean loss (what ``Model.fit`` does by hand)."""
    step = _hand(enc, dec, hand_loss)
    gen = torch.Generator().manual_seed(0)

    def epoch() -> float:
        order = torch.randperm(data.shape[0], generator=gen)
        total = 0.0
        for start in range(0, data.shape[0], batch):
            rows = order[start:start + batch]
            total += len(rows) * step(data[rows])
        return total / data.shape[0]

    return epoch


# ------------------------------------------------------------------------------ kizuna
class Encoder(Normal):
    def __init__(self, net: nn.Module) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = copy.deepcopy(net)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s)}


class Decoder(Bernoulli):
    def __init__(self, net: nn.Module) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = copy.deepcopy(net)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"probs": torch.sigmoid(self.net(z))}


def kizuna_model(enc: nn.Module, dec: nn.Module, z: int, **options: Any) -> Model:
    q, p = Encoder(enc), Decoder(dec)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[z], name="p_prior")
    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
    return Model(loss, distributions=[p, q], optimizer=torch.optim.Adam, optimizer_params={"lr": LR}, **options)


def kizuna_train(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int, **options: Any) -> Step:
    model, batch = kizuna_model(enc, dec, z, **options), cycle(x)
    return lambda: model.train({"x": batch()})


def kizuna_validated(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int) -> Step:
    """Every step checked (``Model(validate=True)``: torch's validate_args on each evaluation)."""
    return kizuna_train(enc, dec, x, z, validate=True)


def kizuna_compiled(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int) -> Step:
    return kizuna_train(enc, dec, x, z, compile=True)


def kizuna_fit(enc: nn.Module, dec: nn.Module, data: torch.Tensor, z: int, batch: int) -> Step:
    model = kizuna_model(enc, dec, z)
    return lambda: model.fit({"x": data}, epochs=1, batch_size=batch, quiet=True, seed=0)


# ------------------------------------------------------------------------------- peers
def pixyz_step(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int) -> Step:
    """Pixyz's own VAE: Normal encoder, Bernoulli decoder (probs), analytic KL, its Model."""
    from pixyz import distributions as pd
    from pixyz import losses as pl
    from pixyz.models import Model as PixyzModel

    class Inference(pd.Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.net = copy.deepcopy(enc)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            loc, s = self.net(x).chunk(2, -1)
            return {"loc": loc, "scale": F.softplus(s)}

    class Generator(pd.Bernoulli):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.net = copy.deepcopy(dec)

        def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"probs": torch.sigmoid(self.net(z))}

    q, p = Inference(), Generator()
    prior = pd.Normal(loc=torch.tensor(0.0), scale=torch.tensor(1.0), var=["z"], features_shape=[z], name="p_prior")
    loss = (pl.KullbackLeibler(q, prior) - pl.Expectation(q, pl.LogProb(p))).mean()
    model = PixyzModel(loss, distributions=[p, q], optimizer=torch.optim.Adam, optimizer_params={"lr": LR})
    # Pixyz memoises parameters by the identity of the input tensors (an lru_cache of 20 calls that is
    # never cleared), so feeding the same tensor twice reuses a freed graph: give it a fresh view per step.
    batch = cycle(x)
    return lambda: model.train({"x": batch()[:]}).item()


def _pyro(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int, elbo: str) -> Step:
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

    enc, dec = copy.deepcopy(enc), copy.deepcopy(dec)
    tag = elbo  # separate names in Pyro's global parameter store for each case

    def model(x: torch.Tensor) -> None:
        pyro.module(f"decoder_{tag}", dec)
        with pyro.plate("data", x.shape[0]):
            loc, scale = x.new_zeros((x.shape[0], z)), x.new_ones((x.shape[0], z))
            latent = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(latent)).to_event(1), obs=x)

    def guide(x: torch.Tensor) -> None:
        pyro.module(f"encoder_{tag}", enc)
        with pyro.plate("data", x.shape[0]):
            loc, s = enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(s)).to_event(1))

    loss = Trace_ELBO() if elbo == "trace" else TraceMeanField_ELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), loss=loss)
    batch = cycle(x)
    return lambda: svi.step(batch())  # the ELBO summed over the batch (Pyro's convention)


def pyro_trace(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int) -> Step:
    return _pyro(enc, dec, x, z, "trace")


def pyro_meanfield(enc: nn.Module, dec: nn.Module, x: list[torch.Tensor], z: int) -> Step:
    return _pyro(enc, dec, x, z, "meanfield")
