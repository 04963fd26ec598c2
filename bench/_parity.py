"""Shared by the parity scripts: the same model trained by kizuna and by hand-written PyTorch.

Each script defines, for one family, a network factory, kizuna's training step, a hand-written
training step on a copy of the same initial weights, and one evaluation function applied to both
trained networks. This module runs seeds, times steps in interleaved blocks (`_timing.interleaved`),
prints the two columns with the seeds' spread, and profiles kizuna's step (``--profile``).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from _timing import interleaved, paired, ratios

Step = Callable[[], Any]


def add_args(parser: argparse.ArgumentParser, seeds: int = 3) -> None:
    parser.add_argument("--seeds", type=int, default=seeds, help="seeds 0..n-1 for the quality columns")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats")
    parser.add_argument("--calls", type=int, default=20, help="steps per timing block")
    parser.add_argument("--profile", action="store_true",
                        help="profile kizuna's and the reference's step (cProfile, operator counts)")
    parser.add_argument("--split", action="store_true",
                        help="split kizuna's extra step time: Model.train, a plain loop on its loss, forward only")
    parser.add_argument("--quick", action="store_true", help="one seed, few steps (smoke test of the script)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=0,
                        help="also time N pairs of single steps, kizuna's and the reference's alternating (this "
                             "thread's CPU time; the most precise ratio on a shared machine: a few hundred to 1500)")
    parser.add_argument("--fused-reference", action="store_true",
                        help="the reference's Adam with torch's fused kernel, the implementation kizuna's Model "
                             "picks (default: torch's default Adam, as the reference is usually written)")


# the reference's Adam options (`start` sets them from --fused-reference)
REFERENCE_ADAM: dict[str, Any] = {}


def reference_adam(params: Any, lr: float, **options: Any) -> torch.optim.Adam:
    """The reference implementation's optimiser: torch's default Adam, or its fused kernel with
    ``--fused-reference`` (then the step ratio is kizuna's own cost, the optimiser's kernel being equal);
    ``options`` (e.g. ``betas``) go to Adam as well."""
    return torch.optim.Adam(params, lr=lr, **options, **REFERENCE_ADAM)


def spread(values: list[float]) -> str:
    """``mean ± sd (min–max)`` over seeds."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def train_timed(steps: int, step: Step) -> float:
    """Run ``step`` ``steps`` times; return the wall seconds."""
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - begin


def quality_table(rows: dict[str, dict[str, list[float]]]) -> str:
    """``metric: kizuna | reference`` lines, each with the seeds' spread."""
    lines = []
    for metric, cols in rows.items():
        lines.append(f"  {metric:28s} kizuna {spread(cols['kizuna']):40s} reference {spread(cols['reference'])}")
    return "\n".join(lines)


def step_ratio(kizuna: Step, reference: Step, repeats: int, calls: int,
               clock: Callable[[], float] = time.perf_counter) -> tuple[float, float, float]:
    """Median seconds per step of each (interleaved blocks, timed by ``clock``) and the median ratio
    kizuna / reference."""
    times = interleaved({"kizuna": kizuna, "reference": reference}, repeats, calls, warmup=5, block_warmup=2,
                        clock=clock)
    r = ratios(times, "reference")["kizuna"]
    return statistics.median(times["kizuna"]), statistics.median(times["reference"]), r


def report_speed(args: argparse.Namespace, kizuna: Step, reference: Step, profile_steps: int = 200,
                 kizuna_title: str = "kizuna Model.train") -> None:
    """Print the interleaved step times and their ratio (`step_ratio`), by the wall clock and by this
    thread's CPU time (with one thread, less disturbed by other jobs on a shared machine), and with
    ``--profile`` both profiles and the operator counts."""
    repeats, calls = (3, 3) if args.quick else (args.repeats, args.calls)
    k, r, ratio = step_ratio(kizuna, reference, repeats, calls)
    print(f"  step time: kizuna {k * 1e3:.2f} ms, reference {r * 1e3:.2f} ms, ratio {ratio:.3f} "
          f"(median of interleaved repeats)")
    if args.threads == 1:
        k, r, ratio = step_ratio(kizuna, reference, repeats, calls, clock=time.thread_time)
        print(f"  step CPU time (this thread): kizuna {k * 1e3:.2f} ms, reference {r * 1e3:.2f} ms, "
              f"ratio {ratio:.3f} (median of interleaved repeats)")
    if args.pairs and args.threads != 1:
        print("  --pairs skipped: it times by this thread's CPU clock, which sees one thread only (use --threads 1)")
    if args.pairs and args.threads == 1:
        pairs = 20 if args.quick else args.pairs
        k, r, median, ratio = paired(kizuna, reference, pairs)
        print(f"  step CPU time, single steps alternating ({pairs} pairs): kizuna "
              f"{k * 1e3:.2f} ms, reference {r * 1e3:.2f} ms, ratio {ratio:.4f} (trimmed means; median of the "
              f"pairs' ratios {median:.4f})")
    if args.profile:
        print(profile(kizuna, profile_steps, kizuna_title))
        print(profile(reference, profile_steps, "hand-written step"))
        print(operator_counts(kizuna, reference))


def report_split(args: argparse.Namespace, model: Any, batch: dict[str, torch.Tensor], kizuna: Step,
                 reference: Step, reference_loss: Callable[[], torch.Tensor],
                 other_forwards: dict[str, Callable[[], Any]] | None = None) -> None:
    """Where kizuna's extra step time lies, by this thread's CPU time over interleaved blocks (ratios to
    the hand-written step, or forward to forward): ``Model.train``; a plain ``zero_grad`` / ``eval`` /
    ``backward`` / clip (where the Model clips) / Adam loop on the same loss (the difference is `Model`'s own
    work); the loss's forward
    pass alone without gradients, against the hand-written loss's; and ``other_forwards`` (name: a loss
    computed another way), also without gradients, against the same. Then the forward with gradients and the
    backward (forward + backward, less the forward) of both sides: where a step's difference lies, and what the
    optimiser's part is (the rest of the step)."""
    from kizuna.distributions import validation

    group = model.optimizer.param_groups[0]  # the same Adam as the Model's (fused or not)
    opt = torch.optim.Adam(group["params"], lr=group["lr"], betas=group["betas"], fused=group.get("fused"))
    clip = getattr(model, "clip_grad_norm", None)  # clipped as the Model clips (and as the references do)

    def loop() -> None:
        with validation(False):  # as Model.train after its first (validated) step
            opt.zero_grad()
            model.loss_cls.eval(batch).backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(group["params"], clip)
            opt.step()

    def forward() -> None:
        with validation(False), torch.no_grad():
            model.loss_cls.eval(batch)

    def reference_forward() -> None:
        with torch.no_grad():
            reference_loss()

    def forward_graded() -> None:  # the forward that a training step runs, its graph dropped
        with validation(False):
            model.loss_cls.eval(batch)

    def forward_backward() -> None:  # gradients accumulate on both sides (no zero_grad in either)
        with validation(False):
            model.loss_cls.eval(batch).backward()

    def reference_backward() -> None:
        reference_loss().backward()

    def without_gradients(fn: Callable[[], Any]) -> Step:
        def run() -> None:
            with validation(False), torch.no_grad():
                fn()
        return run

    others = {name: without_gradients(fn) for name, fn in (other_forwards or {}).items()}
    cases = {"Model.train": kizuna, "plain loop": loop, "reference": reference,
             "kizuna forward": forward, "reference forward": reference_forward, **others,
             "kizuna forward, gradients": forward_graded, "reference forward, gradients": reference_loss,
             "kizuna forward + backward": forward_backward, "reference forward + backward": reference_backward}
    repeats, calls = (3, 3) if args.quick else (args.repeats, args.calls)
    times = interleaved(cases, repeats, calls, warmup=5, block_warmup=2, clock=time.thread_time)
    steps, forwards = ratios(times, "reference"), ratios(times, "reference forward")
    print("  split (this thread's CPU time, median of interleaved repeats):")
    for name in ("Model.train", "plain loop", "reference"):
        print(f"    {name:20s} {statistics.median(times[name]) * 1e3:7.2f} ms  {steps[name]:.3f} of the reference step")
    for name in ("kizuna forward", *others, "reference forward"):
        print(f"    {name:20s} {statistics.median(times[name]) * 1e3:7.2f} ms  {forwards[name]:.3f} of the reference "
              "forward (no gradients)")
    graded = {side: statistics.median(times[f"{side} forward, gradients"]) for side in ("kizuna", "reference")}
    backward = {side: statistics.median(times[f"{side} forward + backward"]) - graded[side]
                for side in ("kizuna", "reference")}
    print(f"    with gradients: forward {graded['kizuna'] * 1e3:.2f} ms against {graded['reference'] * 1e3:.2f} ms, "
          f"backward (forward + backward less forward) {backward['kizuna'] * 1e3:.2f} ms against "
          f"{backward['reference'] * 1e3:.2f} ms; the rest of a step is zero_grad, clipping and the optimiser "
          "(Model's Adam against the reference's)")
    for name, fn in (("kizuna forward", forward), ("reference forward", reference_forward)):
        total, files = python_calls(fn)
        print(f"  Python calls of one {name}: {total} ({', '.join(f'{f} {n}' for f, n in files.most_common(12))})")


def python_calls(fn: Step) -> tuple[int, collections.Counter]:
    """The Python-level calls (cProfile's count, C functions included as "builtins") of one call of
    ``fn``, in total and by file (shortened to the path inside the package or repository)."""
    fn()
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    files: collections.Counter = collections.Counter()
    for (path, _, _), (_, calls, _, _, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        name = "builtins" if path == "~" else path.split("site-packages/")[-1].split("/kizuna/")[-1]
        files[name if "/" not in name or name.startswith("torch/") else name.rsplit("/", 2)[-2] + "/"
              + name.rsplit("/", 1)[-1]] += calls
    return sum(files.values()), files


def quality_over_seeds(args: argparse.Namespace, one_seed: Callable[[int], dict[str, dict[str, float]]]) -> None:
    """Run ``one_seed(seed)`` (``{"kizuna" | "reference": {metric: value}}``) for every seed, printing each
    seed's figures and then `quality_table`."""
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in range(1 if args.quick else args.seeds):
        for name, metrics in one_seed(seed).items():
            for metric, value in metrics.items():
                rows.setdefault(metric, {"kizuna": [], "reference": []})[name].append(value)
        print(f"seed {seed}: " + ", ".join(f"{m} {v['kizuna'][-1]:.3f} / {v['reference'][-1]:.3f}"
                                           for m, v in rows.items()), flush=True)
    print(quality_table(rows))


def grad_report(kizuna_grads: list[torch.Tensor | None], reference_grads: list[torch.Tensor | None]) -> str:
    """The gradient part of `agree`'s line: the largest absolute difference over all tensors, the largest
    relative one (per tensor, max |a - b| / max(max |a|, max |b|); 0 where both are exactly zero), and every
    tensor with a gradient on one side only (``MISMATCH``)."""
    worst_abs, worst_rel, largest, neither = 0.0, 0.0, 0.0, 0
    one_sided = []
    for i, (a, b) in enumerate(zip(kizuna_grads, reference_grads, strict=True)):
        if a is None and b is None:
            neither += 1
            continue
        if a is None or b is None:
            present = a if b is None else b
            side = "kizuna" if b is None else "reference"
            zero = " (all zero)" if not bool(present.any()) else ""
            one_sided.append(f"tensor {i} {tuple(present.shape)} only on the {side} side{zero}")
            continue
        if a.shape != b.shape:
            one_sided.append(f"tensor {i}: shapes {tuple(a.shape)} and {tuple(b.shape)}")
            continue
        diff = (a.double() - b.double()).abs().max().item()
        scale = max(a.abs().max().item(), b.abs().max().item())
        largest = max(largest, scale)
        rel = diff / scale if scale > 0 else 0.0
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, rel)
    n = len(kizuna_grads)
    text = (f"gradients: max |diff| = {worst_abs:.3g} (relative {worst_rel:.3g}) over {n} tensors "
            f"(largest |gradient| {largest:.3g}")
    text += f"; {neither} without a gradient on either side)" if neither else ")"
    if one_sided:
        text += f"; MISMATCH, a gradient on one side only: {', '.join(one_sided)}"
    return text


def agree(kizuna: Callable[[], torch.Tensor], reference: Callable[[], torch.Tensor],
          kizuna_params: Iterable[torch.Tensor] = (), reference_params: Iterable[torch.Tensor] = (), seed: int = 5
          ) -> None:
    """Print both first-step losses from the same weights, batch and random stream, and their difference.

    With the two sides' parameters (the reference's are copies of kizuna's, in the same order), each loss is
    also backpropagated and the gradients are compared (`grad_report`): equal losses do not prove equal
    gradients (a detach in the wrong place, a missing term without value). Every parameter's ``.grad`` is put
    back as it was (``None`` before training), so the training that follows is unchanged."""
    kp, rp = list(kizuna_params), list(reference_params)
    if len(kp) != len(rp):
        raise ValueError(f"agree: {len(kp)} kizuna parameters against {len(rp)} reference parameters")
    saved = [p.grad for p in (*kp, *rp)]

    def side(step: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> tuple[float, list[torch.Tensor | None]]:
        for p in (*kp, *rp):  # the two sides may share frozen modules: each side's gradients alone
            p.grad = None
        torch.manual_seed(seed)
        loss = step()
        if params:
            loss.backward()
        return float(loss.detach()), [p.grad for p in params]

    try:
        with torch.random.fork_rng(devices=[]):
            a, kizuna_grads = side(kizuna, kp)
            b, reference_grads = side(reference, rp)
    finally:
        for p, grad in zip((*kp, *rp), saved, strict=True):
            p.grad = grad
    line = f"  AGREE first-step loss: kizuna {a:.6f}, reference {b:.6f}, |diff| = {abs(a - b):.3g}; "
    print(line + (grad_report(kizuna_grads, reference_grads) if kp else "gradients not compared"))


def profile(step: Step, n: int, title: str, top: int = 18) -> str:
    """cProfile of ``n`` calls of ``step``: the functions with the most own time."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        step()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return f"--- profile: {title} ({n} steps)\n" + "\n".join(out.getvalue().splitlines()[4:])


def count_operators(step: Step, n: int = 10) -> collections.Counter:
    """torch.profiler events (operators and record_function scopes) per call of ``step``, over ``n`` calls."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(3):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    counts: collections.Counter = collections.Counter()
    for event in prof.events():
        counts[event.name] += 1
    return collections.Counter({name: c / n for name, c in counts.items()})


def operator_counts(kizuna: Step, reference: Step, n: int = 10) -> str:
    """Per-step torch.profiler event counts of both steps: the total and every event whose count differs."""
    k, r = count_operators(kizuna, n), count_operators(reference, n)
    lines = [f"--- operator counts per step: kizuna {sum(k.values()):.1f}, reference {sum(r.values()):.1f}",
             f"  {'event':52s} {'kizuna':>7s} {'ref':>7s}"]
    for name in sorted(set(k) | set(r)):
        if k[name] != r[name]:
            lines.append(f"  {name:52s} {k[name]:7.1f} {r[name]:7.1f}")
    return "\n".join(lines)


def start(args: argparse.Namespace, title: str) -> None:
    torch.set_num_threads(args.threads)
    REFERENCE_ADAM.clear()
    if getattr(args, "fused_reference", False):
        REFERENCE_ADAM["fused"] = True
    from _timing import machine_line

    print(title)
    print(f"machine: {machine_line()}")
