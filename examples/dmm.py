r"""Deep Markov Model (Krishnan et al. 2017, arXiv:1609.09869) trained with `IterativeLoss`.

A nonlinear state-space model with neural transition and emission, and a structured inference
network that reads the observations with an RNN:

.. math::
    p(x_{1:T}, z_{1:T}) = \prod_t p(x_t|z_t)\,p(z_t|z_{t-1}),\qquad
    q(z_{1:T}|x_{1:T}) = \prod_t q(z_t|z_{t-1}, h_t),\quad h_t = \mathrm{GRU}(x_{1:t})

    \mathcal L = \operatorname{mean}\ \mathbb E_{p(h|x)}\Big[\sum_{t=0}^{T-1}
        D_{KL}[q(z_t|z_{t-1},h_t)\,\|\,p(z_t|z_{t-1})] - \mathbb E_{q(z_t|z_{t-1},h_t)}[\log p(x_t|z_t)]\Big]

:math:`p(h|x)` is the deterministic RNN (a point mass). The RNN runs left to right (the
"ST-L" inference network of the paper), so :math:`q` is a filter and predicts the next step.
`IterativeLoss` writes the sum over time: ``x`` and ``h`` are sliced at each step and the drawn
``z`` becomes the next step's ``z_prev`` (``update_value={"z": "z_prev"}``).

Data: a known nonlinear state-space model, a bump of activity moving around a ring of
``D`` sensors with a state-dependent speed:

.. math::
    \theta_t = \theta_{t-1} + 0.4 + 0.25 \sin\theta_{t-1} + 0.05\,\epsilon_t,\qquad
    x_{t,d} = \exp\big(3(\cos(\theta_t - 2\pi d/D) - 1)\big) + 0.1\,\eta_{t,d}

Metrics: the held-out ELBO per time step; the mean squared error of the one-step-ahead
prediction :math:`\mathbb E[x_{t+1}|x_{1:t}]` (by :math:`z_t \sim q`, :math:`z_{t+1} \sim
p(z_{t+1}|z_t)`, the emission mean) against predicting :math:`x_t` again, against a linear
AR(1) fitted by least squares, and against the true model given the true state (the floor).

Run: ``python examples/dmm.py`` or ``--smoke``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import seed_arg  # noqa: E402
from _common import fit, report  # noqa: E402

from kizuna.distributions import Deterministic, MLPNormal, Normal  # noqa: E402
from kizuna.losses import Expectation as E  # noqa: E402
from kizuna.losses import IterativeLoss, KullbackLeibler, LogProb  # noqa: E402
from kizuna.models import Model  # noqa: E402

SMOKE = {"n_train": 300, "n_test": 100, "T": 15, "D": 12, "z_dim": 2, "hidden": 32, "epochs": 40, "lr": 1e-2,
         "batch": 50}
FULL = {"n_train": 2000, "n_test": 500, "T": 25, "D": 16, "z_dim": 4, "hidden": 64, "epochs": 100, "lr": 3e-3,
        "batch": 50}


def ring_sequences(n: int, T: int, D: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences of the module docstring's model, batch first: (x N×T×D, θ N×T)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.empty(n, T)
    theta[:, 0] = 2 * math.pi * torch.rand(n, generator=g)
    for t in range(1, T):
        prev = theta[:, t - 1]
        theta[:, t] = prev + 0.4 + 0.25 * torch.sin(prev) + 0.05 * torch.randn(n, generator=g)
    return emit(theta, D) + 0.1 * torch.randn(n, T, D, generator=g), theta


def emit(theta: torch.Tensor, D: int) -> torch.Tensor:
    """The noise-free emission: a bump of width ~0.6 rad centred at θ over ``D`` sensors."""
    phase = 2 * math.pi * torch.arange(D) / D
    return torch.exp(3 * (torch.cos(theta.unsqueeze(-1) - phase) - 1))


class RNN(Deterministic):
    """:math:`h_{1:T} = \\mathrm{GRU}(x_{1:T})` (left to right), a point mass :math:`p(h|x)`."""

    def __init__(self, x_dim: int, hidden: int) -> None:
        super().__init__(var=["h"], cond_var=["x"], name="p")
        self.gru = nn.GRU(x_dim, hidden, batch_first=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h": self.gru(x)[0]}


class Combiner(Normal):
    """:math:`q(z_t|z_{t-1}, h_t)`.

    The paper's combiner: :math:`\\tfrac12(\\tanh(W z_{t-1} + b) + h_t)`, mapped linearly to loc and scale.
    """

    def __init__(self, z_dim: int, hidden: int) -> None:
        super().__init__(var=["z"], cond_var=["h", "z_prev"], name="q")
        self.from_z = nn.Linear(z_dim, hidden)
        self.out = nn.Linear(hidden, 2 * z_dim)

    def forward(self, h: torch.Tensor, z_prev: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.out(0.5 * (torch.tanh(self.from_z(z_prev)) + h)).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-4}


class Emission(Normal):
    """:math:`p(x_t|z_t) = \\mathcal N(\\mu(z_t), \\operatorname{diag}\\sigma^2)`, one learned σ per sensor."""

    def __init__(self, z_dim: int, x_dim: int, hidden: int) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, x_dim))
        self.log_scale = nn.Parameter(torch.zeros(1, x_dim))  # one row: broadcast against the batch

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        loc = self.net(z)
        return {"loc": loc, "scale": self.log_scale.exp()}


def build(cfg: dict) -> dict:
    zd, h = cfg["z_dim"], cfg["hidden"]
    return {
        "rnn": RNN(cfg["D"], h),
        "q": Combiner(zd, h),
        "transition": MLPNormal("z", ["z_prev"], [zd, h, zd], name="p"),  # p(z_t|z_{t-1})
        "emission": Emission(zd, cfg["D"], h),
    }


def dmm_loss(d: dict):  # noqa: ANN201 - a kizuna Loss
    """:math:`\\mathcal L` of the module docstring; sequences are batch first (``series_dim=1``)."""
    step = KullbackLeibler(d["q"], d["transition"]) - E(d["q"], LogProb(d["emission"]))
    over_time = IterativeLoss(step, series_var=["x", "h"], update_value={"z": "z_prev"}, series_dim=1)
    return E(d["rnn"], over_time).mean()


def one_step_predictions(d: dict, x: torch.Tensor, z_dim: int, draws: int = 20) -> torch.Tensor:
    """:math:`\\mathbb E[x_{t+1}|x_{1:t}]` for t = 1..T-1 by Monte Carlo: shape N×(T-1)×D."""
    n, T, _ = x.shape
    with torch.no_grad():
        h = d["rnn"].sample({"x": x})["h"]
        z = torch.zeros(draws * n, z_dim, dtype=h.dtype, device=h.device)  # (the model's dtype and device)
        preds = []
        for t in range(T - 1):
            h_t = h[:, t].repeat(draws, 1)
            z = d["q"].sample({"h": h_t, "z_prev": z})["z"]  # filtered z_t
            z_next = d["transition"].sample({"z_prev": z})["z"]
            preds.append(d["emission"].sample_mean({"z": z_next}).reshape(draws, n, -1).mean(0))
    return torch.stack(preds, 1)


def baselines(x_train: torch.Tensor, x_test: torch.Tensor, theta_test: torch.Tensor) -> dict[str, float]:
    """One-step MSE of repeating x_t, of a least-squares AR(1), and of the true model given θ_t; and the
    log-likelihood per step of one independent Gaussian per sensor (what the ELBO per step must beat)."""
    past, nxt = x_train[:, :-1].reshape(-1, x_train.shape[-1]), x_train[:, 1:].reshape(-1, x_train.shape[-1])
    design = torch.cat([past, torch.ones(len(past), 1)], 1)
    coef = torch.linalg.lstsq(design, nxt).solution
    test_past = torch.cat([x_test[:, :-1], torch.ones(*x_test.shape[:2], 1)[:, :-1]], -1)
    g = torch.Generator().manual_seed(1)
    prev = theta_test[:, :-1].unsqueeze(-1)
    draws = prev + 0.4 + 0.25 * torch.sin(prev) + 0.05 * torch.randn(*prev.shape[:2], 200, generator=g)
    oracle = emit(draws, x_test.shape[-1]).mean(2)  # E[x_{t+1} | θ_t] under the true model
    target = x_test[:, 1:]
    iid = torch.distributions.Normal(past.mean(0), past.std(0))
    return {
        "iid_gaussian_ll_per_step": iid.log_prob(x_test).sum(-1).mean().item(),
        "persistence_mse": (x_test[:, :-1] - target).pow(2).mean().item(),
        "ar1_mse": (test_past @ coef - target).pow(2).mean().item(),
        "true_model_mse": (oracle - target).pow(2).mean().item(),
    }


def run(smoke: bool = False, seed: int = 0) -> dict[str, float]:
    """Train the DMM; return the per-step ELBO and one-step prediction errors (per sensor)."""
    cfg = SMOKE if smoke else FULL
    torch.manual_seed(seed)
    x_train, _ = ring_sequences(cfg["n_train"], cfg["T"], cfg["D"], seed)
    x_test, theta_test = ring_sequences(cfg["n_test"], cfg["T"], cfg["D"], seed + 1000)
    d = build(cfg)
    loss = dmm_loss(d)
    print(f"generative step: {d['emission'] * d['transition']}\ninference step : {d['q']}\nloss: {loss}")
    model = Model(loss, distributions=list(d.values()), optimizer_params={"lr": cfg["lr"]}, clip_grad_norm=10.0)
    z0 = {"z_prev": torch.zeros(cfg["n_train"], cfg["z_dim"])}
    seconds = fit(model, {"x": x_train, **z0}, epochs=cfg["epochs"], batch_size=cfg["batch"], seed=seed, quiet=smoke)

    test = {"x": x_test, "z_prev": torch.zeros(cfg["n_test"], cfg["z_dim"])}
    elbo_per_step = -model.test(test) / cfg["T"]
    preds = one_step_predictions(d, x_test, cfg["z_dim"])
    return {
        "test_elbo_per_step": elbo_per_step,
        "dmm_mse": (preds - x_test[:, 1:]).pow(2).mean().item(),
        **baselines(x_train, x_test, theta_test),
        "train_cpu_seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="short sequences, a few epochs (CI)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report(run(smoke=args.smoke, seed=args.seed))
