"""GAN, kizuna vs hand-written PyTorch: same generator, discriminator, data, batches, noise, steps and seeds.

kizuna trains the `GAN` preset as examples/gan.py builds it on scikit-learn digits (its smoke
configuration: 16-d noise, MLPs of 128 units, batches of 64, Adam 1e-3): with ``--loss js`` (the
default here, the preset's own default loss) `AdversarialJensenShannon` with a Bernoulli
discriminator, Adam betas (0.5, 0.999), one discriminator step per generator step and the
non-saturating generator loss; with ``--loss wgan-gp`` (the example's default) the WGAN-GP critic, five
critic steps per generator step, gradient penalty 10, betas (0.5, 0.9). The reference is a
hand-written alternating step on deep copies of the same two networks: the discriminator's binary
cross-entropy on a real batch and a detached generator batch (``F.logsigmoid`` of the logits, as
kizuna's loss writes it; or the critic's gap and the penalty on random interpolates), then the
generator's non-saturating loss ``-E_G[log d]`` (or ``-E_G[f]``) on a fresh noise draw with the discriminator's
parameters frozen, as a careful hand-written step does (kizuna's `GAN` freezes them too). Both sides do the same
work: by default kizuna's `GAN` is built with ``data_term=False``, which leaves out, as the careful step does, the
data's term ``-E_data[log(1-d)]`` (``E_data[f]``) of the generator's loss (it has no generator gradient; Pixyz's
GAN evaluates it for the value it reports); with ``--reference-value`` kizuna's GAN is the default one, which
evaluates that term, and the reference's timed step computes it too (without a graph), so that both report the
same loss. The training, and so the quality columns, are the same either way. It draws the noise
(and the interpolation weights) in kizuna's order, so from one seed both draw the same numbers;
Adam is torch's default, or fused with ``--fused-reference``.
One evaluation code for both trained generators: the C2ST (logistic regression, as the smoke
example) of generated images, rounded to the 17 grey levels, against held-out images.

    python bench/parity_gan.py                    # 3 seeds, the smoke example's configuration, JS loss
    python bench/parity_gan.py --loss wgan-gp     # the example's default loss
    python bench/parity_gan.py --quick            # seconds
    python bench/parity_gan.py --seeds 0 --repeats 3 --calls 3 --pairs 800 [--reference-value]   # the step ratio
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from _parity import add_args, agree, quality_over_seeds, reference_adam, report_speed, start, train_timed
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from _common import GREY_LEVELS as LEVELS  # noqa: E402
from gan import Critic, Discriminator, Generator, c2st  # noqa: E402

from kizuna.datasets import load_digits, split  # noqa: E402
from kizuna.distributions import Normal  # noqa: E402
from kizuna.losses import AdversarialWassersteinDistance  # noqa: E402
from kizuna.losses.mmd import gaussian_kernel  # noqa: E402
from kizuna.models import GAN  # noqa: E402

CFG = {"z_dim": 16, "hidden": 128, "steps": 150, "batch": 64, "lr": 1e-3, "n_eval": 350}
QUICK = {"z_dim": 8, "hidden": 32, "steps": 20, "batch": 64, "lr": 1e-3, "n_eval": 200}
LOSSES = {"js": {"betas": (0.5, 0.999), "d_steps": 1}, "wgan-gp": {"betas": (0.5, 0.9), "d_steps": 5}}
PENALTY = 10.0
# --reference-value: the reference's generator step computes the value kizuna's reports (its data term, no graph)
REFERENCE_VALUE = {"value_term": False}


def nets(loss: str, d: int, cfg: dict) -> tuple[Generator, nn.Module]:
    disc = Critic(d, cfg["hidden"]) if loss == "wgan-gp" else Discriminator(d, cfg["hidden"])
    return Generator(cfg["z_dim"], cfg["hidden"], d), disc


def kizuna_gan(loss: str, gen: Generator, disc: nn.Module, cfg: dict, data_term: bool = True) -> GAN:
    """As examples/gan.py `build`s it; ``data_term=False``: the generator's step leaves out its loss's data term,
    as the careful reference does (`GAN`'s option)."""
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[cfg["z_dim"]], name="p_prior")
    p = (gen * prior).marginalize_var("z")
    adam = {"lr": cfg["lr"], "betas": LOSSES[loss]["betas"]}
    left_out = {} if data_term else {"data_term": False}  # (named only where used: an older kizuna, instructions.py
    if loss == "wgan-gp":  # --tree, builds the default GAN)
        return GAN(p, disc, adversarial=AdversarialWassersteinDistance, d_steps=5, optimizer_params=adam,
                   d_optimizer_params=adam, **left_out)
    return GAN(p, disc, optimizer_params=adam, d_optimizer_params=adam, **left_out)


class Reference:
    """The hand-written alternating step on the raw networks ``g`` (noise -> image) and ``d`` (image -> logit)."""

    def __init__(self, loss: str, g: nn.Module, d: nn.Module, cfg: dict) -> None:
        self.loss, self.g, self.d, self.z_dim = loss, g, d, cfg["z_dim"]
        betas, self.d_steps = LOSSES[loss]["betas"], LOSSES[loss]["d_steps"]
        self.opt_g = reference_adam(g.parameters(), cfg["lr"], betas=betas)
        self.opt_d = reference_adam(d.parameters(), cfg["lr"], betas=betas)
        self.value_term = REFERENCE_VALUE["value_term"]

    def d_loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fake = self.g(torch.randn(x.shape[0], self.z_dim))
        real_out, fake_out = self.d(x).squeeze(1), self.d(fake).squeeze(1)
        if self.loss == "js":
            return -(F.logsigmoid(real_out).mean() + F.logsigmoid(-fake_out).mean())
        eps = torch.rand(x.shape[0], 1)
        mixed = (eps * x + (1 - eps) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(self.d(mixed).sum(), mixed, create_graph=True)
        return fake_out.mean() - real_out.mean() + PENALTY * (grad.norm(dim=1) - 1).pow(2).mean()

    def g_loss(self, x: torch.Tensor, value_term: bool = False) -> torch.Tensor:
        """The generator's loss as a careful hand-written step has it: the generated batch's term only; with
        ``value_term`` also the data's term (no generator gradient), so that the value equals kizuna's loss (the
        first-step check; the timed step leaves it out)."""
        z = torch.randn(x.shape[0], self.z_dim)
        real_out = self.d(x).squeeze(1) if value_term else None
        fake_out = self.d(self.g(z)).squeeze(1)
        if self.loss == "js":
            loss = -F.logsigmoid(fake_out).mean()
            return loss if real_out is None else loss - F.logsigmoid(-real_out).mean()
        return -fake_out.mean() if real_out is None else real_out.mean() - fake_out.mean()

    def step(self, x: torch.Tensor) -> None:
        for _ in range(self.d_steps):
            self.opt_d.zero_grad()
            self.d_loss(x).backward()
            self.opt_d.step()
        self.opt_g.zero_grad()
        for t in self.d.parameters():  # no gradient of the discriminator in the generator's step
            t.requires_grad_(False)
        self.g_loss(x, value_term=self.value_term).backward()
        for t in self.d.parameters():
            t.requires_grad_(True)
        self.opt_g.step()


def mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared MMD (biased V-statistic), Gaussian kernel with the median squared distance of ``x``'s pairs."""
    sigma_sqr = torch.cdist(x, x).pow(2).median().item()
    k = lambda a, b: gaussian_kernel(a, b, sigma_sqr).mean()  # noqa: E731
    return (k(x, x) + k(y, y) - 2 * k(x, y)).item()


def evaluate(g: nn.Module, x_test: torch.Tensor, cfg: dict, seed: int) -> dict[str, float]:
    """The same code for both generators: C2ST and MMD² of ``n_eval`` samples against held-out images."""
    n = min(cfg["n_eval"], len(x_test))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        fake = g(torch.randn(n, cfg["z_dim"]))
    return {"C2ST (logistic)": c2st(x_test[:n], fake, LEVELS["digits"], seed, ("logistic",))["logistic"],
            "MMD² (x1000)": 1000 * mmd2(x_test[:n], fake)}


def one_seed(seed: int, loss: str, cfg: dict, x_train: torch.Tensor, x_test: torch.Tensor
             ) -> dict[str, dict[str, float]]:
    """Train both from the same initial weights on the same batches and noise; evaluate both the same way."""
    torch.manual_seed(seed)
    gen, disc = nets(loss, x_train.shape[1], cfg)
    gen_r, disc_r = copy.deepcopy(gen), copy.deepcopy(disc)
    model = kizuna_gan(loss, gen, disc, cfg)
    ref = Reference(loss, gen_r.net, disc_r.net, cfg)
    g = torch.Generator().manual_seed(seed)
    batches = [x_train[torch.randint(0, len(x_train), (cfg["batch"],), generator=g)] for _ in range(cfg["steps"])]
    it_k, it_r = iter(batches), iter(batches)

    def run(step: object) -> float:
        torch.manual_seed(100 + seed)  # the same noise for both runs
        return train_timed(cfg["steps"], step)  # type: ignore[arg-type]

    order = [("kizuna", lambda: model.train({"x": next(it_k)})), ("reference", lambda: ref.step(next(it_r)))]
    seconds = {name: run(step) for name, step in (order if seed % 2 == 0 else order[::-1])}
    return {name: {**evaluate(net, x_test, cfg, seed), "train seconds": seconds[name]}
            for name, net in (("kizuna", gen.net), ("reference", gen_r.net))}


def speed(args: argparse.Namespace, cfg: dict, x_train: torch.Tensor) -> None:
    """Seconds per training step (discriminator steps and a generator step), interleaved, one batch."""
    torch.manual_seed(0)
    gen, disc = nets(args.loss, x_train.shape[1], cfg)
    gen_r, disc_r = copy.deepcopy(gen), copy.deepcopy(disc)
    # the same work on both sides: kizuna's GAN as Pixyz's (its loss's data term evaluated in the generator's step)
    # against the reference computing that term too (--reference-value), or with data_term=False against the careful
    # reference, which leaves it out (the default)
    value = REFERENCE_VALUE["value_term"]
    model = kizuna_gan(args.loss, gen, disc, cfg, data_term=value)
    ref = Reference(args.loss, gen_r.net, disc_r.net, cfg)
    options = {} if value else {"omit_term_of": model.p_data}
    x = x_train[:cfg["batch"]]
    # one step is two losses (the discriminator's, then the generator's after the discriminator's update): each is
    # checked from the initial weights, with the gradients of both networks (the discriminator's step uses only
    # the discriminator's, the generator's step only the generator's; the others must agree as well)
    params_k, params_r = [*gen.parameters(), *disc.parameters()], [*gen_r.parameters(), *disc_r.parameters()]
    print("  discriminator loss:")
    agree(lambda: model.d_model.loss_cls.eval({"x": x}), lambda: ref.d_loss(x), params_k, params_r)
    print("  generator loss:")
    agree(lambda: model.loss_cls.eval({"x": x}, **options), lambda: ref.g_loss(x, value_term=value), params_k,
          params_r)
    title = "kizuna GAN.train" if value else "kizuna GAN(data_term=False).train"
    report_speed(args, lambda: model.train({"x": x}), lambda: ref.step(x), 100, kizuna_title=title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    parser.add_argument("--loss", choices=sorted(LOSSES), default="js")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the configuration's)")
    parser.add_argument("--reference-value", action="store_true",
                        help="kizuna's default GAN, whose generator step evaluates its loss's data term (Pixyz's "
                             "value), against a reference step that computes it too (without a graph, the "
                             "discriminator frozen); default: GAN(data_term=False) against the careful step, which "
                             "computes only the generated term")
    args = parser.parse_args()
    REFERENCE_VALUE["value_term"] = args.reference_value
    start(args, f"GAN ({args.loss}) on digits: kizuna vs hand-written PyTorch")
    cfg = dict(QUICK if args.quick else CFG)
    cfg["steps"] = args.steps or cfg["steps"]
    print(f"  configuration: {cfg}")
    x, y = load_digits()
    x_train, _, x_test, _ = split(x, y, 0.2, seed=0)
    n = min(cfg["n_eval"], len(x_test))
    real = c2st(x_test[:n], x_train[:n], LEVELS["digits"], 0, ("logistic",))["logistic"]
    print(f"  training images against the held-out ones (the floor): C2ST {real:.3f}, "
          f"MMD² (x1000) {1000 * mmd2(x_test[:n], x_train[:n]):.3f}")
    quality_over_seeds(args, lambda seed: one_seed(seed, args.loss, cfg, x_train, x_test))
    speed(args, cfg, x_train)


if __name__ == "__main__":
    main()
