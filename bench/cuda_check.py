"""Check that training and inference run on CUDA (when a GPU is present) and agree with the CPU.

Run: ``python bench/cuda_check.py`` on a machine with a GPU. Prints one line per check and the time of a
VAE epoch on CPU vs GPU (784-512-512-64, batch 128, 10,000 random binary images). Exits 1 on a failure; without a
GPU it prints that nothing was checked and exits 0, or 2 with ``--require-cuda`` (for a CI job on a GPU runner).

The checks: the VAE's KL term and decoder log-density from the same weights equal the CPU's (float32 rounding);
a fit lowers the loss with every parameter on the device; a fit resumed from a checkpoint ends with the parameters of
the uninterrupted fit, bitwise; IWAE ``log_likelihood`` is finite on the device and near the CPU's; a DDPM samples on
the device; the VAE+GMM module graph and the HMM run there. ``--device cpu --quick`` runs the same checks on the CPU
at a small size (the test suite does, so the script's own logic is checked on machines without a GPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, Normal
from kizuna.losses import Expectation, KullbackLeibler, LogProb
from kizuna.metrics import log_likelihood
from kizuna.models import Model
from kizuna.nets import MLP


class Q(Normal):
    def __init__(self, d: int, h: int, z: int) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = MLP(d, h, h, 2 * z)

    def forward(self, x):
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s) + 1e-4}


class P(Bernoulli):
    def __init__(self, d: int, h: int, z: int) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = MLP(z, h, h, d)

    def forward(self, z):
        return {"probs": torch.sigmoid(self.net(z))}


def vae(device: str, d: int = 784, h: int = 512, z: int = 64):
    torch.manual_seed(0)
    q, p = Q(d, h, z).to(device), P(d, h, z).to(device)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[z], name="p_prior").to(device)
    kl = KullbackLeibler(q, prior)
    loss = (kl - Expectation(q, LogProb(p))).mean()
    return Model(loss, distributions=[p, q], optimizer_params={"lr": 1e-3}), p * prior, q, kl


def check(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device to check against the CPU (default cuda)")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds): checks the script's logic")
    parser.add_argument("--require-cuda", action="store_true", help="exit 2 (not 0) when no CUDA device is present")
    args = parser.parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing was checked")
        return 2 if args.require_cuda else 0
    print(torch.__version__, torch.cuda.get_device_name() if device.startswith("cuda") else device)
    n, h, z, k = (512, 64, 8, 20) if args.quick else (10_000, 512, 64, 500)
    results = []
    x = (torch.rand(n, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()

    # the same weights give the same deterministic terms on both devices (float32 rounding: sums in other orders)
    values = {}
    for where in ("cpu", device):
        _, p_joint, q, kl = vae(where, h=h, z=z)
        zz = torch.randn(256, z, generator=torch.Generator().manual_seed(1)).to(where)
        batch = {"x": x[:256].to(where), "z": zz}
        with torch.no_grad():
            values[where] = (kl.eval(batch).cpu(), p_joint.factors()[0].get_log_prob(batch).cpu())
    same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-3) for a, b in zip(values["cpu"], values[device]))
    results.append(check(f"KL and decoder log-density on {device} equal the CPU's (same weights)", same))

    times = {}
    for where in ("cpu", device):
        model, *_ = vae(where, h=h, z=z)
        model.fit({"x": x}, epochs=1, batch_size=128, quiet=True, seed=0)  # warm-up
        _sync(where)
        t0 = time.perf_counter()
        history = model.fit({"x": x}, epochs=2, batch_size=128, quiet=True)
        _sync(where)
        times[where] = (time.perf_counter() - t0) / 2
        on_device = all(t.device.type == torch.device(where).type for t in model.distributions.parameters())
        results.append(check(f"fit on {where}", on_device and history["train"][-1] < history["train"][0],
                             f"losses {history['train']}"))
    print(f"VAE epoch (784-{h}-{h}-{z}, batch 128, N={n}): cpu {times['cpu']:.2f} s, {device} {times[device]:.2f} s")

    model, p_joint, q, _ = vae(device, h=h, z=z)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        model.fit({"x": x[:2000]}, epochs=1, batch_size=128, quiet=True, seed=1)
        model.save(path)
        model.fit({"x": x[:2000]}, epochs=1, batch_size=128, quiet=True)  # two epochs in all
        straight = [t.detach().clone() for t in model.distributions.parameters()]
        resumed, *_ = vae(device, h=h, z=z)
        resumed.load(path)
        resumed.fit({"x": x[:2000]}, epochs=1, batch_size=128, quiet=True)  # one more: `epochs` counts more epochs
        same = all(torch.equal(a, b) for a, b in zip(straight, resumed.distributions.parameters()))
        results.append(check(f"resume from a checkpoint on {device} gives the same parameters", same))
    ll = log_likelihood(p_joint, q, {"x": x[:200].to(device)}, k=k)
    cpu_model, cpu_joint, cpu_q, _ = vae("cpu", h=h, z=z)
    cpu_model.distributions.load_state_dict(model.distributions.state_dict())
    ll_cpu = log_likelihood(cpu_joint, cpu_q, {"x": x[:200]}, k=k)
    gap = (ll.mean().item() - ll_cpu.mean().item())
    results.append(check(f"log_likelihood on {device}", ll.device.type == torch.device(device).type
                         and bool(torch.isfinite(ll).all()) and abs(gap) < 0.5,
                         f"mean {ll.mean().item():.2f} nats, CPU {ll_cpu.mean().item():.2f} (other draws)"))
    results.append(check_ddpm(device))
    results.extend(check_modules(device, n_iter=5 if args.quick else 20))
    return 0 if all(results) else 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_ddpm(device: str) -> bool:
    from kizuna.distributions import DDPM, DiffusionReverse, DiffusionSchedule

    torch.manual_seed(0)
    net = MLP(3, 32, 2).to(device)
    p = DDPM(DiffusionReverse(lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype) / 50], 1)),
                              DiffusionSchedule.linear(50).to(device)), [2])
    draws = p.sample(batch_n=64)[p.var[0]]
    return check(f"DDPM sample on {device}", draws.device.type == torch.device(device).type
                 and bool(torch.isfinite(draws).all()), f"shape {tuple(draws.shape)}")


def check_modules(device: str, n_iter: int = 20) -> list[bool]:
    from kizuna import modules as km

    out = []
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g) * 3
    labels = torch.arange(600) % 3
    x = (torch.sigmoid(centres[labels] + torch.randn(600, 20, generator=g)) > 0.5).float()
    for where in ("cpu", device):
        obs = km.Observation(x.to(where))
        vae_m = km.VAE(4, epochs=3, batch_size=100)
        gmm = km.GMM(3, category=labels, algorithm="em")
        vae_m.connect(obs)
        gmm.connect(vae_m)
        km.Graph([gmm]).fit(n_iter=2, seed=0)
        out.append(check(f"VAE+GMM graph on {where}", gmm.posterior.device.type == torch.device(where).type,
                         f"accuracy {gmm.accuracy:.3f}"))
    hmm_x = torch.cat([torch.randn(200, 2, generator=g) + 4 * (i % 2) for i in range(4)]).to(device)
    hmm = km.HMM(2, n_iter=n_iter, random_state=0).fit(hmm_x)
    out.append(check(f"HMM fit on {device}", torch.as_tensor(hmm.predict(hmm_x)).numel() == 800,
                     f"score {hmm.score(hmm_x):.1f}"))
    return out


if __name__ == "__main__":
    sys.exit(main())
