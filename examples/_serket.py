"""Shared pieces of the SERKET examples (``examples/serket_*.py``): data, settings, the parts, seeds, tables.

The examples reproduce naka-lab/Serket's ``examples/`` with `kizuna.modules` and report, next to each
integrated model, its parts trained alone. Their data are the files of those examples, copied to
``../shared/data/serket`` (see its README) **for tests and benchmarks only**: kizuna does not ship
them, so every script takes ``--data DIR`` (default: that folder) and stops with a clear error when
it is missing.

* `digits`: the 3,000 MNIST images of ``mnist3000.npz`` with their spoken-digit HAC histograms, in
  the order 0, 1, ..., 9, 0, 1, ... (the first ``n`` keep that order).
* `objects`: the 50 objects of ``mMLDA/`` (four histograms, object and motion categories).
* `FULL`, `SMOKE`: the hyper-parameters of full runs and of ``--smoke`` runs; `fit_graph` runs a graph
  with SERKET's VAE schedule (a long first update, shorter ones after) passed as ``Graph.fit(schedule=...)``.
* `image_vae`, `class_gmm`, `speech_mlda`, `DeafVAE`: SERKET's modules for the digit examples;
  `build_vae_gmm`, `build_vae_gmm_mlda`: the graphs several examples share.
* `cached`: results memoised per (tag, seed, smoke, data), so that ``serket_table.py``, which runs
  every example in one process, trains each part once; the results shared by several examples:
  `vae_gmm` (VAE+GMM and its paired control), `vae_gmm_mlda`, `gmm_on_vae` (GMM on the latents of a VAE
  trained alone, no feedback) and `speech_alone` (MLDA on the speech histograms alone).
* `cli`, `seed_table`: the command line of every example and the mean ± sd table over seeds.

Every graph runs with ``Graph.fit(seed=...)``, which initialises the networks and drives every sampler
from one generator, so a result depends on its seed only, not on what ran before it (the examples never
touch torch's global generator). The examples import nothing from each other, only from this file.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from _args import seed_arg

from kizuna import modules as km
from kizuna.metrics import adjusted_rand_score, clustering_accuracy, normalized_mutual_info_score

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "serket"
METRICS = ("accuracy", "ari", "nmi")


def data_dir(data: str | Path | None = None) -> Path:
    """The folder of SERKET's example data (``mnist3000.npz``, ``mMLDA/``, ``HMM/``); an error if absent."""
    path = DEFAULT_DATA if data is None else Path(data)
    if not path.is_dir():
        raise FileNotFoundError(
            f"SERKET example data not found at {path}. These examples need the data of naka-lab/Serket's "
            "examples (mnist3000.npz, mMLDA/, HMM/), which kizuna does not ship: pass --data DIR (docs/data.md, "
            "SERKET's example data).")
    return path


DIGITS = ("mnist3000.npz",)  # the files an example reads, relative to the data folder (`check_data`)
OBJECT_FILES = {"vision": "dsift.txt", "sound": "mfcc.txt", "touch": "tactile.txt", "angles": "angle.txt",
                "object": "Object_Category.txt", "motion": "Motion_Category.txt"}
OBJECTS = tuple(f"mMLDA/{f}" for f in OBJECT_FILES.values())
HMM = ("HMM/data.txt", "HMM/correct.txt")


def check_data(parser: argparse.ArgumentParser, data: str | Path | None, needs: Sequence[str] = DIGITS) -> None:
    """A usage error (``parser.error``) if the SERKET data folder ``data`` (`data_dir`) is absent or lacks a file
    of ``needs`` (paths inside it), before anything runs."""
    try:
        path = data_dir(data)
    except FileNotFoundError as err:
        parser.error(str(err))
    missing = [f for f in needs if not (path / f).is_file()]
    if missing:
        parser.error(f"the SERKET data folder {path} lacks {', '.join(missing)}, which this example reads "
                     "(docs/data.md, SERKET's example data)")


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Digits:
    """``image`` N×784 in [0, 1], ``speech`` N×2400 HAC counts of the spoken digit, ``label`` N."""

    image: np.ndarray
    speech: np.ndarray
    label: np.ndarray


def digits(data: str | Path | None, n: int | None = None) -> Digits:
    """The first ``n`` (default all 3,000) digits of ``mnist3000.npz``, in their 0..9 order."""
    path = data_dir(data) / "mnist3000.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the SERKET data folder must hold mnist3000.npz")
    with np.load(path) as f:
        return Digits(f["image"][:n], f["modality2"][:n], f["label"][:n])


def objects(data: str | Path | None) -> dict[str, np.ndarray]:
    """The four modalities of SERKET's 50 objects (50 rows each) and the object / motion categories."""
    folder = data_dir(data) / "mMLDA"
    names = OBJECT_FILES
    missing = [f for f in names.values() if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: the SERKET data folder must hold mMLDA/")
    return {k: np.loadtxt(folder / f) for k, f in names.items()}


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """Hyper-parameters of the digit examples.

    SERKET: an 18-dim VAE (128 hidden units) trained 200 epochs per update in batches of 500, a GMM of
    10 classes by 100 collapsed-Gibbs sweeps, an MLDA of 10 topics with weights [200, 200] by 100
    sweeps, and 5 mutual-inference iterations. Here the VAE trains SERKET's 200 epochs in the first
    update (before any feedback) and 40 in each later one, and the GMM / MLDA run 50 / 30 sweeps per
    update (their chains continue across updates, so the totals are 360 epochs and 250 / 150 sweeps).
    The long first update matters: with 40 epochs there, the GMM's first partition is made on an
    under-trained VAE and the feedback locks its mistakes in (see ``docs/serket_examples.md``).
    """

    n: int | None  # digits used (None: all 3,000)
    first_epochs: int  # VAE epochs in the first update
    vae_epochs: int  # VAE epochs in every later update
    batch_size: int
    gmm_sweeps: int
    mlda_sweeps: int
    n_iter: int = 5
    latent_dim: int = 18
    hidden: tuple[int, ...] = (128,)
    lr: float = 1e-3
    speech_weight: float = 200.0  # tokens per sample of the speech histogram in every MLDA


FULL = Settings(n=None, first_epochs=200, vae_epochs=40, batch_size=500, gmm_sweeps=50, mlda_sweeps=30)
SMOKE = Settings(n=500, first_epochs=15, vae_epochs=15, batch_size=100, gmm_sweeps=20, mlda_sweeps=15, n_iter=3)
# SERKET's own script: 200 VAE epochs and 100 Gibbs sweeps in every update
SERKET = Settings(n=None, first_epochs=200, vae_epochs=200, batch_size=500, gmm_sweeps=100, mlda_sweeps=100)


def settings(smoke: bool) -> Settings:
    """`SMOKE` or `FULL`."""
    return SMOKE if smoke else FULL


# ------------------------------------------------------------------------------------------- scores
def scores(labels: np.ndarray, classes: np.ndarray | torch.Tensor, prefix: str) -> dict[str, float]:
    """Hungarian-matched accuracy, ARI and NMI of ``classes`` against ``labels``, keys ``prefix_metric``."""
    pred = classes.cpu().numpy() if isinstance(classes, torch.Tensor) else np.asarray(classes)
    return {f"{prefix}_accuracy": float(clustering_accuracy(labels, pred)),
            f"{prefix}_ari": float(adjusted_rand_score(labels, pred)),
            f"{prefix}_nmi": float(normalized_mutual_info_score(labels, pred))}


def module_scores(module: km.ClassModule, prefix: str) -> dict[str, float]:
    """`scores` of a class module's ``classes`` against its ``category``."""
    return scores(module.category, module.classes, prefix)


# -------------------------------------------------------------------------------------------- parts
def image_vae(d: Digits, s: Settings, cls: type[km.VAE] = km.VAE, alpha: float = 1.0) -> km.VAE:
    """SERKET's VAE (``cls``) on the images, connected to their observation; its networks are initialised
    from the graph's generator at its first update."""
    return cls(s.latent_dim, hidden=s.hidden, epochs=s.first_epochs, batch_size=s.batch_size, lr=s.lr, alpha=alpha,
               name="vae").connect(km.Observation(d.image, name="image"))


class DeafVAE(km.VAE):
    r"""A VAE that receives no prior mean from its parent (the GMM sends its class means only to children
    that receive them) and ignores one in a loaded state: the paired control of the feedback, with the
    prior :math:`\mathcal N(0, I)`."""

    receives: ClassVar[tuple[str, ...]] = ()

    def _update(self, ctx: km.UpdateContext, forward: list[km.Message], backward: km.Message | None
                ) -> tuple[km.Message, dict[km.Module, km.Message]]:
        return super()._update(ctx, forward, None)


def schedule(graph: km.Graph, s: Settings) -> dict[str, dict[str, list[int]]]:
    """SERKET's VAE schedule: ``s.first_epochs`` in the first update, ``s.vae_epochs`` in every later one."""
    return {m.name: {"epochs": [s.first_epochs, s.vae_epochs]} for m in graph.modules if isinstance(m, km.VAE)}


def fit_graph(graph: km.Graph, s: Settings, seed: int, n_iter: int | None = None) -> km.Graph:
    """``n_iter`` (default ``s.n_iter``) sweeps with `schedule`; a loaded graph continues its schedule."""
    return graph.fit(n_iter=s.n_iter if n_iter is None else n_iter, seed=seed, schedule=schedule(graph, s))


SAMPLERS = {"blocked": "gibbs", "collapsed": "collapsed"}  # a --sampler option: the GMM's algorithm


def class_gmm(d: Digits, s: Settings, algorithm: str = "gibbs") -> km.GMM:
    """SERKET's GMM of 10 classes (blocked Gibbs sampling, or SERKET's own collapsed sampler with
    ``algorithm="collapsed"``), not yet connected."""
    return km.GMM(10, category=d.label, algorithm=algorithm, max_iter=s.gmm_sweeps, name="gmm")


def speech_mlda(d: Digits, s: Settings, weights: Sequence[float], prior_per: str = "token") -> km.MLDA:
    """An MLDA of 10 topics counting its parent's prior once per ``prior_per``, not yet connected; its first
    child is to be the speech."""
    return km.MLDA(10, list(weights), category=d.label, max_iter=s.mlda_sweeps, prior_per=prior_per, name="mlda")


# ------------------------------------------------------------------------------------ shared graphs
WEIGHTS = (200.0, 20.0)  # tokens per sample in VAE+GMM+MLDA: speech, GMM posterior
SERKET_WEIGHTS = (200.0, 200.0)


def build_vae_gmm(d: Digits, s: Settings, vae: type[km.VAE] = km.VAE, alpha: float = 1.0, algorithm: str = "gibbs"
                  ) -> tuple[km.Graph, km.GMM]:
    """image -> VAE (``vae``) -> GMM (``algorithm``)."""
    gmm = class_gmm(d, s, algorithm).connect(image_vae(d, s, vae, alpha))
    return km.Graph([gmm]), gmm


def build_vae_gmm_mlda(d: Digits, s: Settings, weights: Sequence[float] = WEIGHTS, prior_per: str = "token"
                       ) -> tuple[km.Graph, km.GMM, km.MLDA]:
    """image -> VAE -> GMM -> MLDA <- speech."""
    gmm = class_gmm(d, s).connect(image_vae(d, s))
    mlda = speech_mlda(d, s, weights, prior_per).connect(km.Observation(d.speech, name="speech"), gmm)
    return km.Graph([mlda]), gmm, mlda


_CACHE: dict[tuple, dict[str, float]] = {}


def cached(tag: str, compute: Callable[[int, bool, str | None], dict[str, float]], seed: int, smoke: bool,
           data: str | Path | None) -> dict[str, float]:
    """``compute(seed, smoke, data)``, memoised per (tag, seed, smoke, data) for this process."""
    k = (tag, seed, smoke, None if data is None else str(Path(data).resolve()))
    if k not in _CACHE:
        _CACHE[k] = dict(compute(seed, smoke, data))
    return dict(_CACHE[k])


def _vae_gmm(seed: int, smoke: bool, data: str | None, algorithm: str = "gibbs") -> dict[str, float]:
    """VAE+GMM and a paired control: after the first update (VAE trained alone, then the GMM) the graph is
    saved; one copy continues with the class means fed back, the other with a `DeafVAE`, from the same
    networks, GMM chain and iteration count (hence the same schedule)."""
    s = settings(smoke)
    d = digits(data, s.n)
    graph, gmm = build_vae_gmm(d, s, algorithm=algorithm)
    fit_graph(graph, s, seed, n_iter=1)
    out = module_scores(gmm, "first_update")
    with tempfile.TemporaryDirectory() as tmp:
        graph.save(tmp)
        for key, vae in (("vae_gmm", km.VAE), ("no_feedback", DeafVAE)):
            graph, gmm = build_vae_gmm(d, s, vae, algorithm=algorithm)
            graph.load(tmp)
            fit_graph(graph, s, seed + 1, n_iter=s.n_iter - 1)
            out.update(module_scores(gmm, key))
    return out


def vae_gmm(seed: int, smoke: bool, data: str | Path | None, algorithm: str = "gibbs") -> dict[str, float]:
    """Accuracy / ARI / NMI of VAE+GMM's classes (``vae_gmm``), of its GMM after the first update
    (``first_update``) and of the paired control continued without feedback (``no_feedback``), the GMM
    sampling with ``algorithm``."""
    tag = "vae_gmm" if algorithm == "gibbs" else f"vae_gmm_{algorithm}"
    return cached(tag, functools.partial(_vae_gmm, algorithm=algorithm), seed, smoke, data)


def _vae_gmm_mlda(seed: int, smoke: bool, data: str | None) -> dict[str, float]:
    s = settings(smoke)
    graph, gmm, mlda = build_vae_gmm_mlda(digits(data, s.n), s)
    fit_graph(graph, s, seed)
    return {**module_scores(mlda, "vae_gmm_mlda"), **module_scores(gmm, "vae_gmm_mlda_gmm")}


def vae_gmm_mlda(seed: int, smoke: bool, data: str | Path | None) -> dict[str, float]:
    """The MLDA's and the GMM's scores in VAE+GMM+MLDA with `WEIGHTS` (memoised)."""
    return cached("vae_gmm_mlda", _vae_gmm_mlda, seed, smoke, data)


def _gmm_on_vae(seed: int, smoke: bool, data: str | None, algorithm: str = "gibbs") -> dict[str, float]:
    s = settings(smoke)
    d = digits(data, s.n)
    vae = image_vae(d, s)
    fit_graph(km.Graph([vae]), s, seed)  # no parent: it never receives a prior mean
    gmm = class_gmm(d, s, algorithm).connect(km.Observation(vae.latent, name="latent"))
    km.Graph([gmm]).fit(n_iter=s.n_iter, seed=seed)
    return module_scores(gmm, "gmm_on_vae")


def gmm_on_vae(seed: int, smoke: bool, data: str | Path | None, algorithm: str = "gibbs") -> dict[str, float]:
    """The image part alone: a GMM (``algorithm``) on the latents of a VAE trained with no feedback, with as
    many VAE epochs and Gibbs sweeps in all as the integrated models (``n_iter`` updates of each)."""
    tag = "gmm_on_vae" if algorithm == "gibbs" else f"gmm_on_vae_{algorithm}"
    return cached(tag, functools.partial(_gmm_on_vae, algorithm=algorithm), seed, smoke, data)


def _speech_alone(seed: int, smoke: bool, data: str | None) -> dict[str, float]:
    s = settings(smoke)
    d = digits(data, s.n)
    mlda = speech_mlda(d, s, [s.speech_weight]).connect(km.Observation(d.speech, name="speech"))
    km.Graph([mlda]).fit(n_iter=s.n_iter, seed=seed)
    return module_scores(mlda, "speech_mlda")


def speech_alone(seed: int, smoke: bool, data: str | Path | None) -> dict[str, float]:
    """The speech part alone: MLDA on the speech histograms (weight 200), as many sweeps in all as the
    integrated models."""
    return cached("speech_alone", _speech_alone, seed, smoke, data)


# -------------------------------------------------------------------------------------- seeds, table
def cli(run: Callable[..., dict[str, float]], doc: str | None, options: argparse.ArgumentParser | None = None,
        needs: Sequence[str] = DIGITS) -> None:
    """The command line of an example: ``--smoke``, ``--seed``, ``--data`` and the example's own ``options`` (a
    parser made with ``add_help=False``, whose arguments reach ``run`` by name and show in ``--help``); prints every
    metric. ``needs``: the data files it reads (`check_data`)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0],
                                     parents=[options] if options is not None else [])
    parser.add_argument("--smoke", action="store_true", help="a small subset, a few seconds (CI)")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--data", default=None, help=f"SERKET's example data (default {DEFAULT_DATA})")
    args = vars(parser.parse_args())
    check_data(parser, args["data"], needs)
    torch.set_num_threads(1)
    start = time.time()
    metrics = run(**args)
    width = max(map(len, metrics))
    for name, value in metrics.items():
        print(f"{name:{width}s}  {value:.4f}")
    print(f"({time.time() - start:.1f} s)")


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` (sample standard deviation) with three decimals."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def seed_table(title: str, rows: Mapping[str, str], runs: Sequence[Mapping[str, float]]) -> str:
    """Markdown rows ``| title | model | accuracy | ARI | NMI |`` (mean ± sd over ``runs``) for each
    ``rows`` prefix -> label."""
    lines = []
    for prefix, label in rows.items():
        cells = [mean_sd([r[f"{prefix}_{m}"] for r in runs]) for m in METRICS]
        lines.append(f"| {title} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dump_file(folder: str | Path, sampler: str, seed: int, smoke: bool) -> Path:
    """The file `run` writes with ``dump=folder`` for ``sampler`` and ``seed``: ``_smoke`` before ``.npz``
    when ``smoke`` (500 digits, not the full run's 3,000)."""
    return Path(folder) / f"first_update_{sampler}_seed{seed}{'_smoke' if smoke else ''}.npz"


def check_dump(parser: argparse.ArgumentParser, folder: str, seeds: list[int], smoke: bool) -> None:
    """Stop with a usage error unless ``folder`` (a reader's ``--latents``) holds the blocked sampler's dump of
    every seed, ``--smoke`` or not as the reader runs; the error names the missing files, the command that
    writes them, and ``--smoke`` to pass or drop when the folder holds the other kind's files."""
    lacking = [seed for seed in seeds if not dump_file(folder, "blocked", seed, smoke).is_file()]
    if not lacking:
        return
    missing = ", ".join(str(dump_file(folder, "blocked", seed, smoke)) for seed in lacking)
    command = (f"examples/serket_gmm_samplers.py --dump {shlex.quote(folder)} --seeds {' '.join(map(str, lacking))} "
               f"--samplers blocked --updates 1{' --smoke' if smoke else ''}")
    other = [dump_file(folder, "blocked", seed, not smoke) for seed in lacking]
    hint = ""
    if all(f.is_file() for f in other):
        hint = (f"; {folder} has {', '.join(f.name for f in other)}, written "
                + ("without --smoke: drop --smoke" if smoke else "with --smoke: pass --smoke"))
    parser.error(f"--latents {folder}: missing {missing} (write them with {command}){hint}")
