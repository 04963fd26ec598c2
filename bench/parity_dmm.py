r"""Deep Markov Model, kizuna vs hand-written PyTorch: same networks, data, batches, epochs and seeds.

The smoke configuration of `examples/dmm.py` (Krishnan et al. 2017): 300 training and 100 test sequences
of the noisy ring model, T 15, D 12 sensors, z 2, hidden 32; a left-to-right GRU inference network, the
paper's combiner :math:`q(z_t|z_{t-1}, h_t)`, an MLP Normal transition :math:`p(z_t|z_{t-1})` and an MLP
Normal emission with one learned σ per sensor; batches of 50, 40 epochs, Adam 1e-2, gradient norm clipped
at 10. kizuna trains the example's formula
``E(rnn, IterativeLoss(KL(q, transition) - E(q, LogProb(emission)), ...)).mean()`` with `Model.train`
(torch's fused Adam); the reference is the step written by hand on deep copies of the same networks
(`hand_loss`: the GRU once, then for t = 1..T the combiner's loc / scale, the transition's, the
closed-form Gaussian KL summed over z, a reparameterised draw ``loc + randn * scale``, the emission's
Gaussian log-density summed over sensors; summed over time, averaged over sequences), then
``clip_grad_norm_`` and Adam (torch's default, or the fused kernel with ``--fused-reference``). Both see
the same minibatches in the same order; their draws come from one random stream, the second side
continuing it. The draws are made in the same order as kizuna's (one per step, after the KL), so the
first-step losses agree to rounding (``AGREE``).
One evaluation code for both trained networks (each side's distributions in the example's loss): the
held-out ELBO per time step (`examples/dmm.py`'s metric, ``-model.test / T``) and the one-step-ahead
prediction MSE (`examples/dmm.py`'s ``one_step_predictions``), under the same seed. The speed section
times ``Model.train`` against the reference's step on one batch.

    python bench/parity_dmm.py            # 3 seeds, the example's smoke configuration
    python bench/parity_dmm.py --quick    # seconds
    python bench/parity_dmm.py --fused-reference   # the reference with kizuna's Adam kernel
    python bench/parity_dmm.py --seeds 0 --compile  # speed only, kizuna's step under torch.compile
    python bench/parity_dmm.py --tiny --split       # speed only, networks shrunk to nothing: the formula's own cost
    python bench/parity_dmm.py --seeds 1 --pairs 1500   # also single steps alternating: the most precise ratio
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _parity import (
    add_args,
    agree,
    quality_over_seeds,
    reference_adam,
    report_speed,
    report_split,
    start,
    train_timed,
)
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from dmm import SMOKE, build, dmm_loss, one_step_predictions, ring_sequences  # noqa: E402

from kizuna.formula.memo import release_step, shared_parameters, step_mark  # noqa: E402
from kizuna.models import Model  # noqa: E402

CFG = {**SMOKE, "clip": 10.0}
QUICK = {**SMOKE, "n_train": 100, "n_test": 50, "epochs": 2, "clip": 10.0}
# networks shrunk to nothing: the speed section then measures the formula layer's own cost (``--tiny``)
TINY = {**CFG, "D": 2, "z_dim": 2, "hidden": 2, "batch": 4}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def kizuna_model(d: dict, cfg: dict, compile: bool = False) -> Model:  # noqa: A002 - Model's own argument
    """The example's model: its loss on its distributions, Adam, clipping at 10 (``compile``: `Model`'s
    ``compile=True``, the loss's forward and backward under ``torch.compile``)."""
    return Model(dmm_loss(d), distributions=list(d.values()), optimizer_params={"lr": cfg["lr"]},
                 clip_grad_norm=cfg["clip"], compile=compile)


def hand_loss(d: dict, x: torch.Tensor) -> torch.Tensor:
    """The DMM's negative ELBO written by hand on the networks inside ``d`` (their torch modules only):
    mean over sequences of sum_t KL[q(z_t|z_{t-1},h_t) || p(z_t|z_{t-1})] - log p(x_t|z_t), z_t drawn by
    reparameterisation, z_0 = 0."""
    rnn, comb, trans, emis = d["rnn"].gru, d["q"], d["transition"].net, d["emission"]
    h = rnn(x)[0]
    z = x.new_zeros(x.shape[0], comb.from_z.in_features)
    total = x.new_zeros(())
    for t in range(x.shape[1]):
        loc, s = comb.out(0.5 * (torch.tanh(comb.from_z(z)) + h[:, t])).chunk(2, -1)
        scale = F.softplus(s) + 1e-4
        p_loc, p_s = trans(z).chunk(2, -1)
        p_scale = F.softplus(p_s) + 1e-4
        var_ratio = (scale / p_scale).pow(2)
        kl = 0.5 * (var_ratio + ((loc - p_loc) / p_scale).pow(2) - 1 - var_ratio.log()).sum(-1)
        z = loc + torch.randn_like(loc) * scale
        e_loc, e_scale = emis.net(z), emis.log_scale.exp()
        log_lik = (-((x[:, t] - e_loc) ** 2) / (2 * e_scale**2) - e_scale.log() - LOG_SQRT_2PI).sum(-1)
        total = total + (kl - log_lik)
    return total.mean()


LAYERS = ("kernels only", "+ module calls", "+ parameter merge", "+ memo", "+ KL entry", "+ draw entry",
          "+ log-density entry")


def layered_loss(d: dict, x: torch.Tensor, layers: int) -> torch.Tensor:
    """`hand_loss` computed from kizuna's own pieces, with the first ``layers`` of kizuna's layers between
    the loop and the networks (`LAYERS`; the loss's nodes — `IterativeLoss`, `Expectation`,
    `KullbackLeibler`, `LogProb` — are the last layer, kizuna's own forward). 0: each distribution's
    ``forward`` and the Normal family's closed-form KL, draw and log-density kernels called directly, in the
    hand-written order; 1: the distributions called as modules; 2: through the parameter merge
    (``_compute_params``); 3: through the evaluation's parameter memo (``_params``); 4: the KL through
    ``kl_to``; 5: the draw through ``_sample``; 6: the log-density through ``get_log_prob``. Every layer
    gives the same value to the bit; the differences of their times say what each layer costs."""
    q, transition, emission = d["q"], d["transition"], d["emission"]

    def params(dist: Any, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if layers < 2:  # the conditioning values by name, as the parameter merge passes them
            inputs = {k: values[k] for k in dist._cond_var}
            return dist.forward(**inputs) if layers == 0 else dist(**inputs)
        return dist._compute_params(values) if layers == 2 else dist._params(values)

    with shared_parameters():
        h = d["rnn"].forward(x)["h"]
        values = {"z_prev": x.new_zeros(x.shape[0], q.from_z.in_features)}
        total = x.new_zeros(())
        mark = step_mark()
        for t in range(x.shape[1]):
            values["h"], values["x"] = h[:, t], x[:, t]
            q_params, p_params = params(q, values), params(transition, values)
            kl = q.kl_to(q_params, transition, p_params) if layers >= 4 else \
                q._kl_kernel(transition, q_params, p_params).sum(-1)
            values["z"] = q._sample(values, None, True)["z"] if layers >= 5 else \
                q._rsample_kernel(q_params["loc"].shape, q_params)
            log_lik = emission.get_log_prob(values) if layers >= 6 else \
                emission._log_prob_kernel(values["x"], params(emission, values)).sum(-1)
            total = total + (kl - log_lik)
            values["z_prev"] = values.pop("z")
            release_step(mark)
    return total.mean()


def evaluate(d: dict, x_test: torch.Tensor, cfg: dict, seed: int) -> dict[str, float]:
    """The same code for both trained networks: the example's loss on the test sequences (ELBO per time
    step) and its one-step-ahead prediction MSE, from the same random state."""
    loss = dmm_loss(d)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        value = loss.eval({"x": x_test, "z_prev": torch.zeros(len(x_test), cfg["z_dim"])}).item()
        mse = (one_step_predictions(d, x_test, cfg["z_dim"]) - x_test[:, 1:]).pow(2).mean().item()
    return {"test ELBO per step": -value / cfg["T"], "one-step MSE x1000": 1000 * mse}


def one_seed(seed: int, cfg: dict) -> dict[str, dict[str, float]]:
    x_train, _ = ring_sequences(cfg["n_train"], cfg["T"], cfg["D"], seed)  # as examples/dmm.py's run(seed)
    x_test, _ = ring_sequences(cfg["n_test"], cfg["T"], cfg["D"], seed + 1000)
    torch.manual_seed(seed)
    d = build(cfg)
    d_r = copy.deepcopy(d)
    model = kizuna_model(d, cfg)
    params_r = [p for m in d_r.values() for p in m.parameters()]
    opt_r = reference_adam(params_r, cfg["lr"])
    g = torch.Generator().manual_seed(seed)
    plan = [idx for _ in range(cfg["epochs"]) for idx in torch.randperm(len(x_train), generator=g).split(cfg["batch"])]
    it_k, it_r = iter(plan), iter(plan)

    def k_step() -> None:
        idx = next(it_k)
        model.train({"x": x_train[idx], "z_prev": torch.zeros(len(idx), cfg["z_dim"])})

    def r_step() -> None:
        opt_r.zero_grad()
        hand_loss(d_r, x_train[next(it_r)]).backward()
        torch.nn.utils.clip_grad_norm_(params_r, cfg["clip"])
        opt_r.step()

    torch.manual_seed(seed)  # the training draws: one stream, the second side continuing it
    seconds = {}
    order = [("kizuna", k_step), ("reference", r_step)]
    for name, step in (order if seed % 2 == 0 else order[::-1]):
        seconds[name] = train_timed(len(plan), step)
    return {name: {**evaluate(dd, x_test, cfg, seed), "train seconds": seconds[name]}
            for name, dd in (("kizuna", d), ("reference", d_r))}


def speed(args: argparse.Namespace, cfg: dict) -> None:
    x_train, _ = ring_sequences(cfg["n_train"], cfg["T"], cfg["D"], 0)
    torch.manual_seed(0)
    d = build(cfg)
    d_r = copy.deepcopy(d)
    model = kizuna_model(d, cfg, compile=args.compile)
    params_r = [p for m in d_r.values() for p in m.parameters()]
    opt_r = reference_adam(params_r, cfg["lr"])
    x = x_train[:cfg["batch"]]
    batch = {"x": x, "z_prev": torch.zeros(len(x), cfg["z_dim"])}
    agree(lambda: model.loss_cls.eval(batch), lambda: hand_loss(d_r, x),
          [p for m in d.values() for p in m.parameters()], params_r)

    def k_step() -> None:
        model.train(batch)

    def r_step() -> None:
        opt_r.zero_grad()
        hand_loss(d_r, x).backward()
        torch.nn.utils.clip_grad_norm_(params_r, cfg["clip"])
        opt_r.step()

    if args.compile:  # the first steps compile the unrolled 15-step loss (minutes on one core)
        start_s = time.perf_counter()
        for _ in range(3):
            k_step()
        print(f"  compile=True: the first three steps took {time.perf_counter() - start_s:.0f} s"
              + (f" (not compiled: {model.compile_error})" if model.compile_error else ""))
    report_speed(args, k_step, r_step, kizuna_title="kizuna Model.train" + (" (compile=True)" if args.compile else ""))
    if args.split:
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # the same draws: the same loss both ways
            torch.manual_seed(5)
            values = []
            for layers in range(len(LAYERS)):
                torch.manual_seed(5)
                values.append(layered_loss(d_r, x, layers).item())
            torch.manual_seed(5)
            reference = hand_loss(d_r, x).item()
            worst = max(abs(v - reference) for v in values)
            print(f"  the loss with kizuna's layers added one by one, against the reference: |diff| <= {worst:.3g}")
        report_split(args, model, batch, k_step, r_step, lambda: hand_loss(d_r, x),
                     {name: (lambda layers=i: layered_loss(d, x, layers)) for i, name in enumerate(LAYERS)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    parser.add_argument("--compile", action="store_true",
                        help="time kizuna's step with Model(compile=True) (speed section only)")
    parser.add_argument("--tiny", action="store_true",
                        help="the speed section only, on networks shrunk to nothing (D 2, z 2, hidden 2, batch 4): "
                             "the formula layer's own cost per step")
    args = parser.parse_args()
    start(args, "Deep Markov Model (GRU inference network, combiner, MLP transition and emission) on ring "
                "sequences: kizuna vs hand-written PyTorch")
    if args.tiny:
        speed(args, TINY)
        return
    cfg = QUICK if args.quick else CFG
    quality_over_seeds(args, lambda seed: one_seed(seed, cfg))
    speed(args, cfg)


if __name__ == "__main__":
    main()
