"""Check that training and inference run on CUDA (when a GPU is present) and agree with the CPU.

Run: ``python bench/cuda_check.py`` on a machine with a GPU. Prints one line per check and the time of a
VAE epoch on CPU vs GPU (784-512-512-64, batch 128, 10,000 random binary images). Exits 1 on a failure.
"""

from __future__ import annotations

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
    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
    return Model(loss, distributions=[p, q], optimizer_params={"lr": 1e-3}), p * prior, q


def check(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    print(torch.__version__, torch.cuda.get_device_name())
    results = []
    x = (torch.rand(10_000, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    times = {}
    for device in ("cpu", "cuda"):
        model, p_joint, q = vae(device)
        model.fit({"x": x}, epochs=1, batch_size=128, quiet=True, seed=0)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        history = model.fit({"x": x}, epochs=2, batch_size=128, quiet=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times[device] = (time.perf_counter() - t0) / 2
        on_device = all(t.device.type == device for t in model.distributions.parameters())
        results.append(check(f"fit on {device}", on_device and history["train"][-1] < history["train"][0],
                             f"losses {history['train']}"))
    print(f"VAE epoch (784-512-512-64, batch 128, N=10000): cpu {times['cpu']:.2f} s, cuda {times['cuda']:.2f} s")
    model, p_joint, q = vae("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        model.fit({"x": x[:2000]}, epochs=1, batch_size=128, quiet=True, seed=1)
        model.save(path)
        model.fit({"x": x[:2000]}, epochs=1, batch_size=128, quiet=True)
        straight = [t.detach().clone() for t in model.distributions.parameters()]
        resumed, _, _ = vae("cuda")
        resumed.load(path)
        resumed.fit({"x": x[:2000]}, epochs=2, batch_size=128, quiet=True)
        same = all(torch.equal(a, b) for a, b in zip(straight, resumed.distributions.parameters()))
        results.append(check("resume from a checkpoint on cuda gives the same parameters", same))
    ll = log_likelihood(p_joint, q, {"x": x[:200].cuda()}, k=500)
    results.append(check("log_likelihood on cuda", ll.device.type == "cuda" and bool(torch.isfinite(ll).all()),
                         f"mean {ll.mean().item():.2f} nats"))
    results.extend(check_modules())
    return 0 if all(results) else 1


def check_modules() -> list[bool]:
    from kizuna import modules as km

    out = []
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g) * 3
    labels = torch.arange(600) % 3
    x = (torch.sigmoid(centres[labels] + torch.randn(600, 20, generator=g)) > 0.5).float()
    for device in ("cpu", "cuda"):
        obs = km.Observation(x.to(device))
        vae_m = km.VAE(4, epochs=3, batch_size=100)
        gmm = km.GMM(3, category=labels, algorithm="em")
        vae_m.connect(obs)
        gmm.connect(vae_m)
        km.Graph([gmm]).fit(n_iter=2, seed=0)
        out.append(check(f"VAE+GMM graph on {device}", gmm.posterior.device.type == device,
                         f"accuracy {gmm.accuracy:.3f}"))
    hmm_x = torch.cat([torch.randn(200, 2) + 4 * (i % 2) for i in range(4)]).cuda()
    hmm = km.HMM(2, n_iter=20, random_state=0).fit(hmm_x)
    out.append(check("HMM fit on cuda", torch.as_tensor(hmm.predict(hmm_x)).numel() == 800,
                     f"score {hmm.score(hmm_x):.1f}"))
    return out


if __name__ == "__main__":
    sys.exit(main())
