r"""Learning curves of the single-layer VAE and Ladder VAEs trained with one recipe, side by side.

Each model is trained the way `examples/vae.py` trains the VAE (Adam 1e-3, batch 100, every training
image every epoch, no early stopping), optionally with the Ladder VAE's options (KL warm-up, a floor
on each layer's KL, IWAE training), and every ``--every`` epochs (and after the last) this script prints, for the same
held-out images and with the same evaluation code (`kizuna.metrics.log_likelihood`):

* the held-out :math:`\log p(x)` by the IWAE bound with ``--k`` samples of :math:`q` (a lower bound
  that tightens as ``k`` grows; ``k = 100`` tracks the ``k = 5,000`` figure within about a nat);
* the held-out ELBO and the ELBO of as many training images (their difference measures overfitting);
* each layer's KL per image (a layer with a KL near 0 is unused);
* for a Ladder VAE, the mean scale of :math:`p(z_1|z_2)` (``prior_scale``) and of the bottom-up term
  (``up_scale``: :math:`\hat\sigma` of :math:`\hat q(z_1|x)` for the product merge, :math:`\Delta\sigma`
  for the residual ones), over the held-out images and a draw of :math:`z_2`.

Models are given as ``vae`` or ``ladder:key=value,...`` with the keys of `LADDER` (``z_dims``,
``hidden`` and ``top_down`` as ``32/4``), e.g.::

    python examples/ladder_vae_curves.py vae ladder:depth=2,z_dims=32/4,hidden=400/50

Run: ``python examples/ladder_vae_curves.py [models] [--epochs 100 --every 10 --k 100 --n-eval 300]`` (MNIST), or
``--smoke`` (digits, 2 epochs, every epoch reported, ``k = 10``, 100 images evaluated: seconds) to check the script.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import fraction, non_negative_float, non_negative_int, positive_int, seed_arg  # noqa: E402
from _common import binary_images, standard_normal  # noqa: E402
from vae import build  # noqa: E402

from kizuna.formula.expr import Loss  # noqa: E402
from kizuna.losses import ELBO, IWAE, Expectation, KullbackLeibler, LogProb  # noqa: E402
from kizuna.metrics import log_likelihood  # noqa: E402
from kizuna.models import LadderVAE  # noqa: E402

FULL = {"dataset": "mnist", "epochs": 100, "every": 10, "k": 100, "n_eval": 300}
SMOKE = {"dataset": "digits", "epochs": 2, "every": 1, "k": 10, "n_eval": 100}
LADDER = {"z_dims": [32, 4], "hidden": [400, 50], "depth": 2, "warmup": 0, "free_nats": 0.0, "k_train": 1,
          "pretrain": 0, "merge": "product",
          "top_down": None, "dropout": 0.0, "max_prior_scale": 0.0}


def _sizes(text: str) -> list[int]:
    return [positive_int(v) for v in text.split("/")]


def _merge(text: str) -> str:
    if text not in ("product", "residual", "whitened"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give product, residual or whitened")
    return text


# each setting's type (`_args`'s): a wrong value is refused while parsing, before any data are loaded
SETTINGS = {"z_dims": _sizes, "hidden": _sizes, "top_down": _sizes, "depth": positive_int, "warmup": non_negative_int,
            "free_nats": non_negative_float, "k_train": positive_int, "pretrain": non_negative_int, "merge": _merge,
            "dropout": fraction, "max_prior_scale": non_negative_float}


def _ladder(x_dim: int, cfg: dict) -> LadderVAE:
    return LadderVAE(x_dim, cfg["z_dims"], cfg["hidden"], depth=cfg["depth"], merge=cfg["merge"],
                     top_down=cfg["top_down"], dropout=cfg["dropout"], max_prior_scale=cfg["max_prior_scale"] or None)


def parse_model(text: str) -> tuple[str, dict]:
    """``vae`` or ``ladder:key=value,...`` (keys of `LADDER`) as ``(kind, settings)``; a ValueError naming the spec
    for an unknown kind or setting, a wrong value, or settings `LadderVAE` refuses together (e.g. two ``z_dims`` and
    one ``hidden``)."""
    kind, _, rest = text.partition(":")
    if kind == "vae" and not rest:
        return kind, {}
    if kind != "ladder":
        raise ValueError(f"ladder_vae_curves: a model is 'vae' or 'ladder:key=value,...', got {text!r}")
    cfg = dict(LADDER)
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in SETTINGS:
            raise ValueError(f"ladder_vae_curves: {text!r}: unknown setting {key!r}; known: {sorted(SETTINGS)}")
        try:
            cfg[key] = SETTINGS[key](value)
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"ladder_vae_curves: {text!r}: {key}: {error}") from None
    if cfg["k_train"] > 1 and (cfg["warmup"] or cfg["free_nats"]):  # (the IWAE bound has neither: they were ignored)
        raise ValueError(f"ladder_vae_curves: {text!r}: warmup and free_nats weigh the ELBO's KL terms; k_train > 1 "
                         f"trains the IWAE bound, which has no KL term to weigh: give one or the other")
    with torch.random.fork_rng(devices=[]):  # a throwaway model, for LadderVAE's checks of the settings together
        try:
            _ladder(1, cfg)
        except ValueError as error:
            raise ValueError(f"ladder_vae_curves: {text!r}: {error}") from None
    return kind, cfg


def model_spec(text: str) -> str:
    """The command line's type of a model: ``text`` if `parse_model` takes it, a usage error otherwise."""
    try:
        parse_model(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("ladder_vae_curves: ")) from None
    return text


class Candidate:
    """A model, its joint ``p``, posterior ``q``, per-layer KLs and the training loss of an epoch."""

    def __init__(self, kind: str, cfg: dict, x_dim: int, z_dim: int, hidden: int) -> None:
        self.kind, self.cfg = kind, cfg
        if kind == "vae":
            q, p, prior = build(x_dim, z_dim, hidden)
            self.modules = torch.nn.ModuleList([q, p, prior])
            self.p, self.q = p * prior, q
            self.kls = [KullbackLeibler(q, prior)]
            self._loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
        else:
            m = _ladder(x_dim, cfg)
            self.modules, self.ladder = m, m
            self.p, self.q = m.p, m.q
            self.kls = [KullbackLeibler(m.posteriors[i], m.priors[i]) for i in range(len(m.priors))]
            self.kls.append(KullbackLeibler(m.posteriors[-1], m.prior))
            if cfg["pretrain"]:  # the bottom layer alone, as a VAE with a standard-normal prior on z_1
                bottom = m.posteriors[0] if not m.priors else (
                    m.posteriors[0].factors_[0] if cfg["merge"] == "product" else m.posteriors[0].shift)
                prior = standard_normal("z_1", cfg["z_dims"][0])
                self._pretrain = (KullbackLeibler(bottom, prior) - Expectation(bottom, LogProb(m.decoder))).mean()
        self.optimizer = torch.optim.Adam(self.modules.parameters(), lr=1e-3)

    def loss(self, epoch: int) -> Loss:
        """The batch loss of ``epoch`` (0-based)."""
        if self.kind == "vae":
            return self._loss
        cfg, m = self.cfg, self.ladder
        if epoch < cfg["pretrain"]:
            return self._pretrain
        if cfg["k_train"] > 1:
            return -IWAE(m.p, m.q, k=cfg["k_train"]).mean()
        weight = min(1.0, (epoch + 1) / cfg["warmup"]) if cfg["warmup"] > 0 else 1.0
        return m.loss(weight, free_nats=cfg["free_nats"]).mean()

    def measure(self, x_test: torch.Tensor, x_train: torch.Tensor, k: int, seed: int) -> dict[str, float]:
        """Held-out log p(x) (IWAE, ``k``), held-out and training ELBO, KL per layer (held-out)."""
        self.modules.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = {"ll": log_likelihood(self.p, self.q, {"x": x_test}, k=k).mean().item(),
                   "elbo": ELBO(self.p, self.q).eval({"x": x_test}).mean().item(),
                   "train_elbo": ELBO(self.p, self.q).eval({"x": x_train}).mean().item()}
            samples = self.q.sample({"x": x_test})
            for i, kl in enumerate(self.kls):
                out[f"kl{i + 1}"] = kl.eval(samples).mean().item()
            if self.kind == "ladder" and self.ladder.priors:  # the scales of the bottom layer's two terms
                m = self.ladder
                out["prior_scale"] = m.priors[0].get_params(samples)["scale"].mean().item()
                term = m.posteriors[0].factors_[0] if m.merge == "product" else m.posteriors[0].shift
                out["up_scale"] = term.get_params(samples)["scale"].mean().item()
        self.modules.train()
        return out


def main(models: list[str], epochs: int, every: int, k: int, n_eval: int, seed: int, dataset: str = "mnist") -> None:
    """Train each model of ``models`` for ``epochs`` on ``dataset`` (`binary_images`), printing its curves."""
    specs = [(text, *parse_model(text)) for text in models]  # every spec checked before the data load
    x_train, _, x_test, _ = binary_images(dataset, seed=seed)
    x_eval, x_fit_eval = x_test[:n_eval], x_train[:n_eval]
    for text, kind, cfg in specs:
        torch.manual_seed(seed)
        c = Candidate(kind, cfg, x_train.shape[1], 32, 400)
        print(f"== {text} {cfg}\n   p = {c.p}\n   q = {c.q}", flush=True)
        g = torch.Generator().manual_seed(seed)
        start = time.process_time()
        for epoch in range(epochs):
            loss = c.loss(epoch)
            for idx in torch.randperm(len(x_train), generator=g).split(100):
                c.optimizer.zero_grad()
                loss.eval({"x": x_train[idx]}).backward()
                c.optimizer.step()
            if (epoch + 1) % every == 0 or epoch + 1 == epochs:  # (and the last epoch's, whatever --every)
                r = c.measure(x_eval, x_fit_eval, k, seed + 1)
                kls = " ".join(f"{key} {v:.2f}" for key, v in r.items() if key.startswith(("kl", "prior", "up")))
                print(f"   epoch {epoch + 1:3d}: log p(x) {r['ll']:.2f}  ELBO {r['elbo']:.2f}  "
                      f"train ELBO {r['train_elbo']:.2f}  {kls}  ({time.process_time() - start:.0f} CPU-s)",
                      flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=model_spec, default=["vae", "ladder"],
                        help="vae or ladder:key=value,... (default: vae ladder)")
    parser.add_argument("--smoke", action="store_true", help="digits, 2 epochs, small evaluation (seconds; CI)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="default 100 (--smoke: 2)")
    parser.add_argument("--every", type=positive_int, default=None, help="default 10 (--smoke: 1)")
    parser.add_argument("--k", type=positive_int, default=None,
                        help="importance samples of the held-out log p(x); default 100 (--smoke: 10)")
    parser.add_argument("--n-eval", type=positive_int, default=None,
                        help="held-out (and training) images evaluated; default 300 (--smoke: 100)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = dict(SMOKE if args.smoke else FULL)
    given = {key: getattr(args, key) for key in ("epochs", "every", "k", "n_eval")}
    cfg.update({key: value for key, value in given.items() if value is not None})
    main(args.models, cfg["epochs"], cfg["every"], cfg["k"], cfg["n_eval"], args.seed, cfg["dataset"])
