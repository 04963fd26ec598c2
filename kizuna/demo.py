r"""The demo behind ``kizuna demo digits``: an integrated model that learns digit classes from two modalities
(``kizuna demo`` runs the house, `kizuna.robot_demo`).

SERKET's VAE+GMM+MLDA (Nakamura et al. 2018, arXiv:1712.00929) built with `kizuna.modules`, on data
that comes with scikit-learn:

* **images**: the 1,797 8×8 digits bundled with scikit-learn, pixels scaled to [0, 1];
* **words**: a synthetic second modality, 10 "spoken words" per digit drawn (fixed seed) from a noisy
  class-dependent multinomial over 20 words. Digit :math:`c` says its own name (word :math:`c`) with
  probability 0.15, a "rhyme" it shares with digit :math:`c \pm 5` (word :math:`10 + c \bmod 5`) with
  probability 0.45, and any of the 20 words uniformly otherwise. The words alone tell the pair
  :math:`\{c, c+5\}` well and the digit within it poorly; the images confuse other digits (3 and 9,
  1 and 8), so each modality can resolve what the other cannot.

The integrated model (no labels are used; they only score the clusters):

.. math::
    \text{image} \to \text{VAE} \xrightarrow{z_n} \text{GMM} \xrightarrow{p(c_n|z_n)} \text{MLDA}
    \leftarrow \text{words}

The VAE sends latent means up and receives the mean of its GMM class as its prior mean; the GMM
sends its class posterior up and receives the MLDA's predicted class distribution as its class
prior; the MLDA sees the GMM's posterior as 5 class-word tokens next to the 10 words (MLDA's default
weights: a class posterior gets half the mean tokens per sample of the observed counts). Five sweeps
of mutual inference. It is compared with its parts trained alone in one figure (``demo.png``): the
accuracy of every model, the confusion tables of the image side alone, the words alone and the
integrated model side by side, and the VAE's latent space (PCA) coloured by digit and by the MLDA's
clusters, each named after the digit it is matched to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kizuna import modules as km
from kizuna.metrics import adjusted_rand_score, clustering_accuracy, normalized_mutual_info_score

DATA_SEED = 0
N_WORDS, N_TOKENS, P_NAME, P_RHYME = 20, 10, 0.15, 0.45
ROWS = {
    "gmm_on_vae": ("GMM on VAE latents (no feedback)", "image"),
    "vae_gmm": ("VAE+GMM (class means fed back)", "image"),
    "words_mlda": ("MLDA on the words alone", "words"),
    "integrated": ("VAE+GMM+MLDA: MLDA", "image + words"),
    "integrated_gmm": ("VAE+GMM+MLDA: its GMM", "image + words"),
}


@dataclass(frozen=True)
class Config:
    """Sizes of a demo run (`FULL` or `QUICK`)."""

    n: int | None  # digits used (None: all 1,797)
    latent_dim: int = 8
    hidden: tuple[int, ...] = (128,)
    vae_epochs: int = 30  # per sweep
    batch_size: int = 100
    gmm_sweeps: int = 50
    mlda_sweeps: int = 50
    mlda_starts: int = 8  # MLDA chains started at the first update, the most likely kept (`MLDA`'s n_init)
    n_iter: int = 5


FULL = Config(n=None)
QUICK = Config(n=600, vae_epochs=15, gmm_sweeps=20, mlda_sweeps=30, n_iter=3)


def word_distributions() -> np.ndarray:
    """The 10×20 table :math:`p(w|c)` of the synthetic words (rows sum to one)."""
    phi = np.full((10, N_WORDS), (1.0 - P_NAME - P_RHYME) / N_WORDS)
    for c in range(10):
        phi[c, c] += P_NAME
        phi[c, 10 + c % 5] += P_RHYME
    return phi


def spoken_words(labels: np.ndarray, seed: int = DATA_SEED) -> np.ndarray:
    """Per digit, the counts of ``N_TOKENS`` words drawn from `word_distributions` (N×20, float32)."""
    rng = np.random.default_rng(seed)
    phi = word_distributions()
    return np.stack([rng.multinomial(N_TOKENS, phi[c]) for c in labels]).astype(np.float32)


def load_demo_data(n: int | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(images N×64 in [0, 1], words N×20 counts, labels N): the first ``n`` of scikit-learn's digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # the demo's images come with scikit-learn
        raise SystemExit("kizuna demo needs scikit-learn and matplotlib: pip install 'kizuna[demo]'") from err
    digits = load_digits()
    labels = digits.target[:n].astype(np.int64)
    images = torch.as_tensor(digits.data[:n] / 16.0, dtype=torch.float32)
    return images, spoken_words(labels), labels


def _scores(labels: np.ndarray, classes: torch.Tensor, key: str) -> dict[str, float]:
    pred = classes.cpu().numpy()
    return {f"{key}_accuracy": clustering_accuracy(labels, pred), f"{key}_ari": adjusted_rand_score(labels, pred),
            f"{key}_nmi": normalized_mutual_info_score(labels, pred)}


def chance_accuracy(labels: np.ndarray, draws: int = 100, seed: int = 0) -> float:
    """Mean Hungarian-matched accuracy of uniformly random partitions into 10 clusters (a floor)."""
    rng = np.random.default_rng(seed)
    return float(np.mean([clustering_accuracy(labels, rng.integers(0, 10, len(labels))) for _ in range(draws)]))


def _vae(images: torch.Tensor, cfg: Config, seed: int) -> km.VAE:
    with torch.random.fork_rng(devices=[]):  # (seeded inside: the caller's global generator is left as it was)
        torch.manual_seed(seed)  # the networks' initial weights, where drawn from the global generator
        return km.VAE(cfg.latent_dim, hidden=cfg.hidden, epochs=cfg.vae_epochs, batch_size=cfg.batch_size,
                      name="vae").connect(km.Observation(images, name="image"))


def _gmm(labels: np.ndarray, cfg: Config) -> km.GMM:
    return km.GMM(10, category=labels, max_iter=cfg.gmm_sweeps, name="gmm")


def _mlda(labels: np.ndarray, cfg: Config, weights: list[float | None] | None) -> km.MLDA:
    return km.MLDA(10, weights=weights, category=labels, max_iter=cfg.mlda_sweeps, n_init=cfg.mlda_starts,
                   name="mlda")


def _parts(images: torch.Tensor, words: np.ndarray, labels: np.ndarray, cfg: Config,
           seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each part trained alone with the same epochs and sweeps in all: its clusters (by `ROWS` key), and
    the lone VAE's latents."""
    vae = _vae(images, cfg, seed)
    km.Graph([vae]).fit(cfg.n_iter, seed=seed)
    gmm = _gmm(labels, cfg).connect(km.Observation(vae.latent, name="latent"))
    km.Graph([gmm]).fit(cfg.n_iter, seed=seed)
    gmm2 = _gmm(labels, cfg).connect(_vae(images, cfg, seed))
    km.Graph([gmm2]).fit(cfg.n_iter, seed=seed)
    mlda = _mlda(labels, cfg, [None]).connect(km.Observation(words, name="words"))
    km.Graph([mlda]).fit(cfg.n_iter, seed=seed)
    return {"gmm_on_vae": gmm.classes, "vae_gmm": gmm2.classes, "words_mlda": mlda.classes}, vae.latent


def _figure(labels: np.ndarray, classes: dict[str, torch.Tensor], alone: torch.Tensor, joint: torch.Tensor,
            chance: float, path: Path, seed: int) -> Path:
    """The demo's figure: accuracies, confusion tables of the parts and the integrated model, latent spaces."""
    from kizuna.viz import match_clusters, plot_clustering_comparison

    keys = list(ROWS)
    mlda = classes["integrated"].cpu().numpy()
    return plot_clustering_comparison(
        labels, [(f"{ROWS[k][0]}\n[{ROWS[k][1]}]", classes[k].cpu().numpy()) for k in keys], path,
        confusions=[keys.index(k) for k in ("gmm_on_vae", "words_mlda", "integrated")],
        highlight=[keys.index("integrated"), keys.index("integrated_gmm")],
        latent_panels=[(alone, labels, "VAE trained alone: digits"),
                       (joint, labels, "VAE in VAE+GMM+MLDA: digits"),
                       (joint, match_clusters(labels, mlda), "VAE in VAE+GMM+MLDA: MLDA's clusters")],
        latent_legends=["digit", "digit", "cluster, named\nafter its\nmatched digit"], mark_wrong=[False, False, True],
        chance=chance, title=f"kizuna demo: {len(labels)} digits, images + words, seed {seed} "
                             "(confusion tables: rows true digit, columns matched cluster)")


def _table(scores: dict[str, float]) -> str:
    lines = [f"  {'model':36s} {'modalities':14s} {'accuracy':>8s} {'ARI':>6s} {'NMI':>6s}"]
    for key, (name, modalities) in ROWS.items():
        lines.append(f"  {name:36s} {modalities:14s} {scores[key + '_accuracy']:8.3f} {scores[key + '_ari']:6.3f} "
                     f"{scores[key + '_nmi']:6.3f}")
    return "\n".join(lines)


def run_demo(seed: int = 0, out: str | Path = "kizuna-demo-out", quick: bool = False,
             threads: int | None = 1) -> dict[str, float]:
    """Train the integrated model and its parts, print the table, save the figure.

    Args:
        seed: seeds the networks and every sampler (the data are fixed); same seed, same figures.
        out: folder for the figure ``demo.png``.
        quick: 600 digits and fewer epochs / sweeps (for tests).
        threads: torch threads during the run (restored afterwards); ``None`` leaves them as they are.

    Returns:
        ``<row>_accuracy``, ``<row>_ari``, ``<row>_nmi`` for each row of `ROWS`, and ``chance_accuracy``.
    """
    cfg = QUICK if quick else FULL
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(cfg, seed, Path(out))
    finally:
        torch.set_num_threads(before)


def _run(cfg: Config, seed: int, out: Path) -> dict[str, float]:
    start = time.time()
    images, words, labels = load_demo_data(cfg.n)
    print("kizuna demo: SERKET's VAE+GMM+MLDA learns digit classes from images and words, without labels")
    print(f"data  : {len(labels)} scikit-learn digits (8x8 images) + synthetic words ({N_TOKENS} per digit "
          f"from {N_WORDS}: own name p={P_NAME}, a rhyme shared with digit c+-5 p={P_RHYME}, noise)")
    print(f"model : image -> VAE(z in {cfg.latent_dim} dims) -> GMM(10) -> MLDA(10) <- words; "
          f"{cfg.n_iter} sweeps of mutual inference")
    classes, alone_latent = _parts(images, words, labels, cfg, seed)
    vae = _vae(images, cfg, seed)
    gmm = _gmm(labels, cfg).connect(vae)
    mlda = _mlda(labels, cfg, None).connect(km.Observation(words, name="words"), gmm)  # default weights
    graph = km.Graph([mlda])
    for sweep in range(1, cfg.n_iter + 1):
        if sweep == 1:
            graph.fit(1, seed=seed)  # sets the seeded generator every module draws from
        else:
            graph.update()
        print(f"sweep {sweep}/{cfg.n_iter}: MLDA accuracy {mlda.accuracy:.3f}, GMM accuracy {gmm.accuracy:.3f}")
    classes.update(integrated=mlda.classes, integrated_gmm=gmm.classes)
    scores = {name: value for key in ROWS for name, value in _scores(labels, classes[key], key).items()}
    scores["chance_accuracy"] = chance_accuracy(labels)
    print(f"\nunsupervised classification of the {len(labels)} digits (Hungarian-matched accuracy, ARI, NMI; "
          f"random partitions score {scores['chance_accuracy']:.3f}), {time.time() - start:.0f} s:")
    print(_table(scores))
    try:
        path = _figure(labels, classes, alone_latent, vae.latent, scores["chance_accuracy"], out / "demo.png", seed)
        print(f"\nfigure (accuracies, confusion tables, latent spaces): {path}")
    except ImportError as err:
        print(f"\nno plot: {err}")
    return scores
