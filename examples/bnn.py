r"""Bayesian neural network by variational inference over its weights (Blundell et al. 2015, arXiv:1505.05424).

A one-hidden-layer ReLU network :math:`f(x; w)` with all weights and biases in one vector ``w``:

.. math::
    p(y, w|x) = p(y|x,w)\,p(w),\qquad p(w) = \mathcal N(0, I),\qquad
    p(y|x,w) = \prod_n \mathcal N\big(y_n;\ f(x_n; w),\ \sigma^2\big)

    q(w) = \mathcal N\big(w;\ \mu,\ \operatorname{diag}\operatorname{softplus}(\rho)^2\big)
    \quad\text{(mean field)},\qquad
    \mathcal L = -\mathbb E_{q(w)}\big[\log p(y, w|x) - \log q(w)\big]

The whole training set is *one* observation (``x`` and ``y`` are vectors of ``N`` features in a
batch of one row), so the `VI` preset's :math:`-\mathrm{ELBO}(p, q)` is the full-data ELBO with the
KL to the prior counted once.

Data: the toy problem of Hernández-Lobato & Adams (2015, arXiv:1502.05336):
:math:`y = x^3 + \varepsilon,\ \varepsilon \sim \mathcal N(0, 3^2)`, 20 training inputs uniform on
:math:`[-4, 4]` (``y`` is standardised for training).

Metrics: held-out log predictive density per point on :math:`[-4, 4]`,
:math:`\log \frac1S \sum_s p(y^*|x^*, w_s)` with :math:`w_s \sim q(w)`, next to the true noise
density (the best possible) and a Gaussian fitted to ``y`` that ignores ``x``; the RMSE of the
predictive mean; and the epistemic standard deviation of :math:`f(x; w)` under :math:`q` inside the
data range against outside it (:math:`5 \le |x| \le 7`): the network should know it does not know.

Run: ``python examples/bnn.py`` or ``--smoke``.
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

from kizuna.distributions import Normal  # noqa: E402
from kizuna.models import VI  # noqa: E402

NOISE = 3.0
SMOKE = {"n_train": 20, "hidden": 50, "steps": 3000, "lr": 1e-2, "n_test": 500, "draws": 500}
FULL = {"n_train": 20, "hidden": 50, "steps": 30000, "lr": 5e-3, "n_test": 2000, "draws": 2000}


def toy_data(n: int, seed: int, low: float = -4.0, high: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:math:`x \\sim U[low, high]`, :math:`y = x^3 + \\varepsilon`, :math:`\\varepsilon \\sim N(0, 9)`."""
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(n, generator=g)
    return x, x ** 3 + NOISE * torch.randn(n, generator=g)


def n_weights(hidden: int) -> int:
    return 3 * hidden + 1  # W1 (1×H), b1 (H), W2 (H×1), b2 (1)


def network(x: torch.Tensor, w: torch.Tensor, hidden: int) -> torch.Tensor:
    """:math:`f(x; w) = W_2^\\top \\operatorname{relu}(W_1 x + b_1) / \\sqrt H + b_2`, per row of ``w`` (S×W).

    The :math:`1/\\sqrt H` keeps the prior's function variance independent of the width (Neal 1996),
    so that :math:`p(w) = \\mathcal N(0, I)` is a sensible prior over functions.
    """
    w1, b1, w2, b2 = w.split([hidden, hidden, hidden, 1], dim=-1)
    h = torch.relu(x.unsqueeze(-1) * w1.unsqueeze(1) + b1.unsqueeze(1))  # S×N×H
    return (h * w2.unsqueeze(1)).sum(-1) / math.sqrt(hidden) + b2


class Likelihood(Normal):
    """:math:`p(y|x,w) = \\mathcal N(y;\\ f(x; w),\\ \\sigma^2)` for every point of ``x``."""

    def __init__(self, hidden: int, noise: float) -> None:
        super().__init__(var=["y"], cond_var=["x", "w"], name="p")
        self.hidden, self.noise = hidden, noise

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
        loc = network(x, w, self.hidden)
        return {"loc": loc, "scale": torch.full_like(loc, self.noise)}


class MeanField(Normal):
    """:math:`q(w) = \\mathcal N(\\mu, \\operatorname{diag}\\operatorname{softplus}(\\rho)^2)`, learnable ``μ, ρ``."""

    def __init__(self, dim: int, init_scale: float = 1e-2) -> None:
        super().__init__(var=["w"], name="q")
        self.mu = nn.Parameter(0.5 * torch.randn(dim))
        self.rho = nn.Parameter(torch.full((dim,), math.log(math.expm1(init_scale))))

    def forward(self) -> dict[str, torch.Tensor]:
        return {"loc": self.mu.unsqueeze(0), "scale": F.softplus(self.rho).unsqueeze(0)}


def predictive(lik: Likelihood, q: MeanField, x: torch.Tensor, draws: int) -> torch.Tensor:
    """:math:`f(x; w_s)` for ``draws`` weight vectors :math:`w_s \\sim q(w)`: shape draws×len(x)."""
    with torch.no_grad():
        w = q.sample(batch_n=draws)["w"]
        return network(x.expand(draws, -1), w, lik.hidden)


def run(smoke: bool = False, seed: int = 0) -> dict[str, float]:
    """Fit q(w) by VI; return held-out log predictive density, RMSE and the epistemic spread in and out of range."""
    cfg = SMOKE if smoke else FULL
    torch.manual_seed(seed)
    x, y = toy_data(cfg["n_train"], seed)
    x_test, y_test = toy_data(cfg["n_test"], seed + 1000)
    scale = y.std().item()  # standardise y; x is already of order one
    lik = Likelihood(cfg["hidden"], NOISE / scale)
    prior = Normal(var=["w"], loc=0.0, scale=1.0, features_shape=[n_weights(cfg["hidden"])], name="p_prior")
    q = MeanField(n_weights(cfg["hidden"]))
    model = VI(lik * prior, q, optimizer_params={"lr": cfg["lr"]})
    print(f"model: {lik * prior}\nq    : {q}\nloss : {model.loss_cls}")
    data = {"x": x.unsqueeze(0), "y": (y / scale).unsqueeze(0)}  # the whole data set is one row
    seconds = fit(model, [data] * cfg["steps"], epochs=1, seed=seed)

    f_test = predictive(lik, q, x_test.unsqueeze(0), cfg["draws"]) * scale
    log_dens = torch.distributions.Normal(f_test, NOISE).log_prob(y_test)  # draws × n_test
    lpd = (torch.logsumexp(log_dens, 0) - math.log(cfg["draws"])).mean().item()
    rmse = (f_test.mean(0) - y_test).pow(2).mean().sqrt().item()
    oracle = torch.distributions.Normal(x_test ** 3, NOISE).log_prob(y_test).mean().item()
    ignore_x = torch.distributions.Normal(y.mean(), y.std()).log_prob(y_test).mean().item()
    inside = torch.linspace(-4, 4, 81)
    outside = torch.cat([torch.linspace(-7, -5, 21), torch.linspace(5, 7, 21)])
    std_in = predictive(lik, q, inside.unsqueeze(0), cfg["draws"]).std(0).mean().item() * scale
    std_out = predictive(lik, q, outside.unsqueeze(0), cfg["draws"]).std(0).mean().item() * scale
    return {
        "test_log_predictive": lpd, "oracle_log_predictive": oracle, "ignore_x_log_predictive": ignore_x,
        "test_rmse": rmse, "epistemic_std_inside": std_in, "epistemic_std_outside": std_out,
        "train_cpu_seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="fewer steps (CI)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report(run(smoke=args.smoke, seed=args.seed))
