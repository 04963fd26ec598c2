"""Modules vs their references: time per iteration on the same data and work, and how it grows with N.

kizuna.modules against scikit-learn, hmmlearn and the ``lda`` package (Cython collapsed Gibbs):

* GMM, full covariances: ``algorithm="em"`` vs ``GaussianMixture`` (and with diagonal covariances, both
  ``covariance_type="diag"``); ``"vb"`` vs ``BayesianGaussianMixture``
  (finite Dirichlet prior, the same model); a blocked Gibbs sweep (``"gibbs"``, the module's default),
  reported next to a ``BayesianGaussianMixture`` iteration (not the same algorithm: the closest reference).
* HMM, Gaussian emissions: a Baum-Welch iteration vs ``hmmlearn.GaussianHMM`` (one sequence of N steps),
  then the forward log-likelihood (``score``) and ``decode`` (Viterbi, each backend) on the same parameters.
* LDA / MLDA: a collapsed Gibbs sweep (kizuna: its default blocked sampler, 16 blocks a sweep; each backend,
  torch and numba, the same chain draw for draw) vs
  ``lda.LDA`` (sequential), on Reuters (``lda.datasets.load_reuters``) and on synthetic corpora with
  planted topics; MLDA's two modalities against ``lda`` on the concatenated vocabulary (the same tokens,
  topics and counts; MLDA normalises the topic-word counts per modality).

Time per iteration is measured by difference: one fit with ``lo`` iterations and one with ``hi``, with
the iteration limit reached every time (``tol=0`` or ``-inf``: no early stop), so initialisation and
set-up cancel: ``(t(hi) - t(lo)) / (hi - lo)``. kizuna and the reference alternate within every repeat
(the order flips from one repeat to the next); a figure is the median over repeats, a ratio the median
over repeats of kizuna / reference measured in the same repeat. The slope is the least-squares fit of
log(time per iteration) against log(N): 1 is linear.

Run: ``python bench/modules.py [--quick] [--full] [--repeats 3] [--threads 1] [--only gmm,hmm,lda] [--sizes N,...]
[--backends torch,numba]`` (the backends measured side by side, interleaved; numba needs ``kizuna[fast]``)
(``--only viterbi``: the Viterbi rows alone; ``--sizes 100000``: one size, e.g. for the guards at N = 10^5)
(``--full`` adds N = 10^6 for the GMM; ``--quick`` is the smoke-test run, under 30 s).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved, machine_line, ratios  # noqa: E402

from kizuna.modules import GMM, HMM, LDA, MLDA  # noqa: E402

Fit = Callable[[int], Any]


# ---------------------------------------------------------------------------------------------- data
def gmm_data(n: int, d: int = 18, k: int = 10, seed: int = 0) -> np.ndarray:
    """N points of a K-component, D-dim Gaussian mixture with random full covariances (the shape of a
    VAE latent under a GMM in the SERKET graph: D = 18, K = 10)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (k, d))
    roots = rng.normal(0, 0.3, (k, d, d)) + np.eye(d)
    z = rng.integers(0, k, n)
    x = rng.normal(size=(n, d))
    for j in range(k):
        x[z == j] = means[j] + x[z == j] @ roots[j]
    return x


def hmm_data(n: int, k: int = 8, d: int = 4, seed: int = 0) -> np.ndarray:
    """One sequence of N steps: sticky state runs (mean length 20), Gaussian emissions around K means."""
    rng = np.random.default_rng(seed)
    runs = rng.geometric(1 / 20, n)
    z = np.repeat(rng.integers(0, k, n), runs)[:n]
    return rng.normal(0, 4, (k, d))[z] + rng.normal(size=(n, d))


def corpus(n: int, sizes: tuple[int, ...] = (500,), tokens: tuple[int, ...] = (50,), k: int = 20,
           seed: int = 0) -> list[np.ndarray]:
    """Counts (N×V_m, one matrix per modality) of documents with planted topics: :math:`\\theta_d \\sim
    \\mathrm{Dir}(0.1)`, :math:`\\phi^m_k \\sim \\mathrm{Dir}(0.05)`, ``tokens[m]`` tokens per document."""
    rng = np.random.default_rng(seed)
    theta = rng.dirichlet(np.full(k, 0.1), n)
    cum_theta = np.cumsum(theta, 1)
    out = []
    for v, length in zip(sizes, tokens):
        phi = rng.dirichlet(np.full(v, 0.05), k)
        topic = np.minimum((rng.random((n, length, 1)) > cum_theta[:, None, :]).sum(-1), k - 1)
        flat = (np.cumsum(phi, 1) + np.arange(k)[:, None]).ravel()  # row k of the CDFs lives in [k, k+1]
        word = np.minimum(np.searchsorted(flat, topic + rng.random((n, length))) - topic * v, v - 1)
        doc = np.repeat(np.arange(n), length)
        out.append(np.bincount(doc * v + word.ravel(), minlength=n * v).reshape(n, v).astype(np.int64))
    return out


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One row per kizuna fit (by backend label, "" when there is one): fits of kizuna and of the reference with
    a given number of iterations."""

    group: str
    name: str
    reference: str
    n: int
    kizuna: dict[str, Fit]
    ref: Fit
    lo: int
    hi: int
    times: dict[str, list[float]] = field(default_factory=dict)


def per_iteration(fit: Fit, lo: int, hi: int) -> float:
    """Seconds per iteration: (t(fit(hi)) - t(fit(lo))) / (hi - lo)."""
    begin = time.perf_counter()
    fit(lo)
    middle = time.perf_counter()
    fit(hi)
    end = time.perf_counter()
    return ((end - middle) - (middle - begin)) / (hi - lo)


def measure(case: Case, repeats: int) -> Case:
    """Warm-up, then ``repeats`` interleaved measurements of every fit (the order rotates every repeat)."""
    impls = {**case.kizuna, "reference": case.ref}
    for fit in impls.values():
        fit(case.lo)
    case.times = {name: [] for name in impls}
    names = list(impls)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            case.times[name].append(per_iteration(impls[name], case.lo, case.hi))
    return case


def iterations(n: int, base: int = 10**4) -> tuple[int, int]:
    """(lo, hi): more iterations at small N, so that the difference stands out of the noise."""
    return 1, 1 + max(4, min(20, int(8 * base / n)))


def gmm_cases(sizes: list[int]) -> list[Case]:
    from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

    common = dict(covariance_type="full", random_state=0, init_params="random")
    diag = {**common, "covariance_type": "diag"}
    cases = []
    for n in sizes:
        x = gmm_data(n)
        lo, hi = iterations(n)
        cases += [
            Case("GMM", "EM iteration", "sklearn GaussianMixture", n,
                 {"": lambda m, x=x: GMM(10, algorithm="em", max_iter=m, tol=0, **common).fit(x)},
                 lambda m, x=x: GaussianMixture(10, max_iter=m, tol=0, **common).fit(x), lo, hi),
            Case("GMM", "EM iteration (diag)", "sklearn GaussianMixture", n,
                 {"": lambda m, x=x: GMM(10, algorithm="em", max_iter=m, tol=0, **diag).fit(x)},
                 lambda m, x=x: GaussianMixture(10, max_iter=m, tol=0, **diag).fit(x), lo, hi),
            Case("GMM", "VB iteration", "sklearn BayesianGaussianMixture", n,
                 {"": lambda m, x=x: GMM(10, algorithm="vb", max_iter=m, tol=0, **common).fit(x)},
                 lambda m, x=x: BayesianGaussianMixture(
                     n_components=10, max_iter=m, tol=0, weight_concentration_prior_type="dirichlet_distribution",
                     **common).fit(x), lo, hi),
            Case("GMM", "Gibbs sweep", "sklearn BGM iteration (not the same algorithm)", n,
                 {"": lambda m, x=x: GMM(10, algorithm="gibbs", max_iter=m, **common).fit(x)},
                 lambda m, x=x: BayesianGaussianMixture(
                     n_components=10, max_iter=m, tol=0, weight_concentration_prior_type="dirichlet_distribution",
                     **common).fit(x), lo, hi),
        ]
    return cases


def hmm_cases(sizes: list[int]) -> list[Case]:
    from hmmlearn.hmm import GaussianHMM

    cases = []
    for n in sizes:
        x = hmm_data(n)
        lo, hi = iterations(n, 2 * 10**4)
        for cov in ("diag", "full"):
            cases.append(Case(
                "HMM", f"Baum-Welch iteration ({cov})", "hmmlearn GaussianHMM", n,
                {"": lambda m, x=x, cov=cov: HMM(8, covariance_type=cov, n_iter=m, tol=-math.inf,
                                                 random_state=0).fit(x)},
                lambda m, x=x, cov=cov: GaussianHMM(8, covariance_type=cov, n_iter=m, tol=-math.inf,
                                                    random_state=0).fit(x), lo, hi))
    return cases


def lda_cases(sizes: list[int], reuters: bool, backends: list[str]) -> list[Case]:
    import lda

    cases = []
    corpora: list[tuple[str, list[np.ndarray], int]] = []
    if reuters:
        corpora.append(("LDA (Reuters, 20 topics)", [lda.datasets.load_reuters()], 20))
    corpora += [("LDA (synthetic, 20 topics)", corpus(n), 20) for n in sizes]
    corpora += [("MLDA (2 modalities, 20 topics)", corpus(n, (300, 200), (30, 20), seed=1), 20) for n in sizes]
    for name, counts, k in corpora:
        n = counts[0].shape[0]
        lo, hi = iterations(n, 2 * 10**3)
        model = LDA if len(counts) == 1 else MLDA
        x = counts[0] if len(counts) == 1 else counts
        joined = np.hstack(counts)
        cases.append(Case(
            name.split(" ")[0], "collapsed Gibbs sweep " + name[name.index("("):], "lda.LDA", n,
            {b: lambda m, x=x, k=k, model=model, b=b: model(k, max_iter=m, doc_topic_prior=0.1, topic_word_prior=0.01,
                                                            random_state=0, backend=b).fit(x) for b in backends},
            lambda m, joined=joined, k=k: lda.LDA(k, n_iter=m, alpha=0.1, eta=0.01, random_state=0,
                                                 refresh=10**9).fit(joined), lo, hi))
    return cases


# ------------------------------------------------------------------------- HMM inference (score, Viterbi)
def hmm_inference(sizes: list[int], repeats: int, backends: list[str],
                  viterbi_only: bool = False) -> list[tuple[str, int, float, float, float]]:
    """Forward log-likelihood and Viterbi (every backend, interleaved in one run) of kizuna vs hmmlearn with the
    same parameters, on the same data (``viterbi_only``: Viterbi alone, and the emissions alone)."""
    from hmmlearn.hmm import GaussianHMM

    rows = []
    for n in sizes:
        x = hmm_data(n)
        ref = GaussianHMM(8, covariance_type="diag", n_iter=5, random_state=0).fit(x)
        models = {}
        for b in backends:
            ours = models[b] = HMM(8, covariance_type="diag", init_params="", backend=b)
            ours.startprob_, ours.transmat_, ours.means_ = ref.startprob_, ref.transmat_, ref.means_
            ours.covars_ = ref._covars_  # hmmlearn's covars_ property returns full matrices
        ours, xt = models[backends[0]], torch.as_tensor(x)
        calls = max(1, min(50, 10**5 // n))
        cases = [("forward log-likelihood", {"": lambda ours=ours, xt=xt: ours.score(xt)}),
                 ("Viterbi decode", {b: lambda m=m, xt=xt: m.decode(xt) for b, m in models.items()})]
        if viterbi_only:  # where the time goes: the emissions alone
            cases = cases[1:] + [("kizuna's Gaussian emissions alone",
                                  {"": lambda ours=ours, xt=xt: ours._log_emit(xt)})]
        for what, mine in cases:
            theirs = ref.score if what.startswith("forward") else ref.decode  # emissions: against the whole decode
            fns = {**mine, "hmmlearn": lambda theirs=theirs, x=x: theirs(x)}
            times = interleaved(fns, repeats, calls, warmup=1, block_warmup=0)
            r = ratios(times, "hmmlearn")
            for label in mine:
                name = f"{what} [{label}]" if label else what
                rows.append((name, n, statistics.median(times[label]), statistics.median(times["hmmlearn"]), r[label]))
    return rows


# ---------------------------------------------------------------------------------------------- report
def slope(ns: list[int], ts: list[float]) -> float:
    """Least-squares slope of log t against log N (nan with fewer than two positive points)."""
    pts = [(math.log(n), math.log(t)) for n, t in zip(ns, ts) if t > 0]
    if len(pts) < 2:
        return math.nan
    mx, my = statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts)
    return sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)


HEADER = f"{'module':6s} {'case':50s} {'N':>8s} {'kizuna ms/it':>13s} {'ref ms/it':>10s} {'ratio':>6s}  reference"


def row(c: Case) -> str:
    """One measured case: median ms per iteration of each kizuna fit and of the reference, median ratios."""
    ref, r, lines = statistics.median(c.times["reference"]), ratios(c.times, "reference"), []
    for label in c.kizuna:
        kz, name = statistics.median(c.times[label]), f"{c.name} [{label}]" if label else c.name
        lines.append(f"{c.group:6s} {name:50s} {c.n:8d} {kz * 1e3:13.3f} {ref * 1e3:10.3f} {r[label]:6.2f}  "
                     f"{c.reference}")
    return "\n".join(lines)


def print_slopes(cases: list[Case]) -> None:
    print(f"\n{'module':6s} {'case':50s} {'N range':>15s} {'kizuna slope':>12s} {'ref slope':>10s}")
    groups: dict[tuple[str, str], list[Case]] = {}
    for c in cases:
        groups.setdefault((c.group, c.name), []).append(c)
    for (group, name), cs in groups.items():
        if len(cs) < 2:
            continue
        ns = [c.n for c in cs]
        ref = slope(ns, [statistics.median(c.times["reference"]) for c in cs])
        for label in cs[0].kizuna:
            kz = slope(ns, [statistics.median(c.times[label]) for c in cs])
            shown = f"{name} [{label}]" if label else name
            print(f"{group:6s} {shown:50s} {f'{min(ns)}-{max(ns)}':>15s} {kz:12.2f} {ref:10.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median over them)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (< 30 s): the smoke test")
    parser.add_argument("--full", action="store_true", help="add N = 10^6 for the GMM")
    parser.add_argument("--sizes", default="",
                        help="comma-separated N to measure instead of 10^3, 10^4, 10^5 (e.g. 100000 for the guards)")
    parser.add_argument("--backends", default="torch,numba",
                        help="backends of the HMM's Viterbi and the LDA / MLDA sweep (torch, numba), measured together")
    parser.add_argument("--only", default="gmm,hmm,lda",
                        help="comma-separated subset of gmm, hmm, lda, viterbi (viterbi: the Viterbi rows alone)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # convergence warnings: every fit stops at its iteration limit on purpose
    for name in ("hmmlearn", "lda"):
        logging.getLogger(name).setLevel(logging.ERROR)
    only, backends = set(args.only.split(",")), args.backends.split(",")
    sizes = [500, 2000] if args.quick else [10**3, 10**4, 10**5]
    sizes = [int(n) for n in args.sizes.split(",")] if args.sizes else sizes
    repeats = 1 if args.quick else args.repeats
    with threadpool_limits(limits=args.threads):
        print("kizuna.modules vs scikit-learn / hmmlearn / lda: time per iteration (same data, same iterations)")
        print(f"machine: {machine_line()}; BLAS: "
              + ", ".join(f"{p['internal_api']} {p['num_threads']} thread(s)" for p in threadpool_info()))
        import hmmlearn
        import lda
        import sklearn
        print(f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, hmmlearn {hmmlearn.__version__}, "
              f"lda {getattr(lda, '__version__', '?')}; {repeats} interleaved repeat(s); backends {backends}"
              + (f" (numba {__import__('numba').__version__})" if "numba" in backends else ""))
        cases: list[Case] = []
        if "gmm" in only:
            cases += gmm_cases(sizes + ([10**6] if args.full and not args.quick else []))
        if "hmm" in only:
            cases += hmm_cases(sizes)
        if "lda" in only:
            cases += lda_cases([200, 1000] if args.quick else sizes, not (args.quick or args.sizes), backends)
        begin = time.perf_counter()
        print("\n" + HEADER)
        for case in cases:
            print(row(measure(case, repeats)), flush=True)
        print_slopes(cases)
        if only & {"hmm", "viterbi"}:
            print(f"\n{'HMM inference (same parameters)':42s} {'N':>8s} {'kizuna ms':>10s} {'hmmlearn ms':>12s} "
                  f"{'ratio':>6s}")
            for what, n, kz, ref, r in hmm_inference(sizes, repeats, backends, viterbi_only="hmm" not in only):
                print(f"{what:42s} {n:8d} {kz * 1e3:10.3f} {ref * 1e3:12.3f} {r:6.2f}")
        print(f"\n({time.perf_counter() - begin:.0f} s)")


if __name__ == "__main__":
    main()
