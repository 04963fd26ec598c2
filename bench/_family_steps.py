"""The NCSN, DDPM and Deep Markov Model training steps of ``parity_score.py`` / ``parity_diffusion.py`` /
``parity_dmm.py`` (kizuna's ``Model.train`` and the hand-written step, from the same weights and batch), for
``instructions.py --family``."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))


def _train_rows() -> torch.Tensor:
    from kizuna.datasets import load_digits, split

    x, y = load_digits()
    return split(x, y, 0.2, seed=0)[0]


def _adam(case: str) -> dict[str, bool]:
    """The hand-written step's Adam: torch's default, or its fused kernel (the one kizuna's Model picks)."""
    return {"fused": True} if case == "hand-written fused Adam" else {}


def ncsn(case: str) -> Callable[[], object]:
    """σ²-weighted denoising score matching over 8 noise levels (the bench's speed configuration)."""
    import parity_score as bench
    from score import SMOKE

    from kizuna.losses import Expectation, denoising_score_matching
    from kizuna.models import Model

    cfg, x_train = dict(SMOKE), _train_rows()
    torch.manual_seed(0)
    score_k, noise, levels = bench.build(x_train.shape[1], cfg)
    x = x_train[:cfg["batch"]]
    if case == "kizuna Model.train":
        rows = Expectation(levels, denoising_score_matching(score_k, noise, noise_weighting=True))
        model = Model(rows.mean(), distributions=[score_k], optimizer_params={"lr": cfg["lr"]})
        return lambda: model.train({"x": x})
    score_r = copy.deepcopy(score_k)
    opt = torch.optim.Adam(score_r.parameters(), lr=cfg["lr"], **_adam(case))

    def step() -> None:
        opt.zero_grad()
        bench.reference_loss(score_r, x).backward()
        opt.step()

    return step


def ddpm(case: str) -> Callable[[], object]:
    """L_simple with T = 1000 (the bench's speed configuration)."""
    import parity_diffusion as bench

    from kizuna.distributions import DiffusionSchedule
    from kizuna.losses import simple_diffusion_loss
    from kizuna.models import Model

    cfg, x_train = dict(bench.CFG), _train_rows()
    torch.manual_seed(0)
    net_k = bench.eps_net("mlp", "digits", x_train.shape[1], cfg["hidden"])  # the example's MLP, as the bench
    x0 = x_train[:cfg["batch"]] * 2 - 1
    if case == "kizuna Model.train":
        p = bench.model_of(net_k, cfg["T"])
        model = Model(simple_diffusion_loss(p.reverse).mean(), distributions=[p.reverse],
                      optimizer_params={"lr": cfg["lr"]})
        return lambda: model.train({"x_0": x0})
    net_r = copy.deepcopy(net_k)
    opt = torch.optim.Adam(net_r.parameters(), lr=cfg["lr"], **_adam(case))
    alpha_bar = DiffusionSchedule.linear(cfg["T"]).alpha_bar()

    def step() -> None:
        opt.zero_grad()
        bench.reference_loss(net_r, alpha_bar, x0).backward()
        opt.step()

    return step


def dmm(case: str, forward: bool = False) -> Callable[[], object]:
    """The Deep Markov Model's step: 15 time steps of the example's smoke configuration, a batch of 50
    sequences, gradient norm clipped at 10 (the bench's speed configuration). ``forward`` (or a case of
    `DMM_FORWARDS`): the loss's forward alone, with gradients, by hand or with kizuna's layers put back one at a
    time (`parity_dmm.layered_loss`; the cases are `parity_dmm.LAYERS`, then ``kizuna forward``)."""
    import parity_dmm as bench
    from dmm import build, ring_sequences

    cfg = bench.CFG
    x = ring_sequences(cfg["n_train"], cfg["T"], cfg["D"], 0)[0][:cfg["batch"]]
    torch.manual_seed(0)
    d = build(cfg)
    if forward:
        from kizuna.distributions import set_validation

        set_validation(False)  # as Model.train after its first step
        if case == "hand-written":
            return lambda: bench.hand_loss(d, x)
        if case == "kizuna forward":
            loss, batch = bench.dmm_loss(d), {"x": x, "z_prev": torch.zeros(len(x), cfg["z_dim"])}
            return lambda: loss.eval(batch)
        layers = bench.LAYERS.index(case)
        return lambda: bench.layered_loss(d, x, layers)
    if case == "kizuna Model.train":
        model = bench.kizuna_model(d, cfg)
        batch = {"x": x, "z_prev": torch.zeros(len(x), cfg["z_dim"])}
        return lambda: model.train(batch)
    params = [p for m in d.values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=cfg["lr"], **_adam(case))

    def step() -> None:
        opt.zero_grad()
        bench.hand_loss(d, x).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["clip"])
        opt.step()

    return step


def gan(case: str, loss: str = "js") -> Callable[[], object]:
    """`GAN.train` (``d_steps`` discriminator steps, then the generator's) on the smoke configuration's networks and
    one batch of 64 digits; the hand-written step is `parity_gan.Reference`'s careful one, and ``hand-written
    (value)`` the same step computing its loss's data term too (the value kizuna's GAN reports); ``kizuna
    data_term=False`` the GAN leaving that term out, as the careful step does."""
    import parity_gan as bench

    cfg, x_train = dict(bench.CFG), _train_rows()
    x = x_train[:cfg["batch"]]
    torch.manual_seed(0)
    gen, disc = bench.nets(loss, x.shape[1], cfg)
    if case.startswith("kizuna"):  # "kizuna Model.train": as Pixyz's GAN; "kizuna data_term=False": as the careful
        model = bench.kizuna_gan(loss, gen, disc, cfg, data_term=case == "kizuna Model.train")
        return lambda: model.train({"x": x})
    bench.REFERENCE_VALUE["value_term"] = case == "hand-written (value)"
    if "fused" in case:
        import _parity

        _parity.REFERENCE_ADAM["fused"] = True
    ref = bench.Reference(loss, gen.net, disc.net, cfg)
    return lambda: ref.step(x)


FAMILIES = {"ncsn": ncsn, "ddpm": ddpm, "dmm": dmm, "gan": gan,
            "wgan-gp": lambda case: gan(case, "wgan-gp")}
