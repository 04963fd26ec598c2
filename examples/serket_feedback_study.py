r"""Why feeding the GMM's class means back into the VAE barely helps on SERKET's digits: a controlled study.

SERKET's VAE+GMM trains the VAE with the prior :math:`\mathcal N(\mu_{c_n}, I)`, :math:`\mu_{c_n}` the mean
of the GMM class of sample :math:`n`, weighted by :math:`\alpha` (``examples/serket_vae_gmm.py``). Every
variant below starts from **one saved state** per seed (the integrated model after its first update: a
VAE trained ``first_epochs`` alone, then the GMM) and continues ``n_iter - 1`` updates with the same
networks, GMM chain and random streams; only what the VAE is told differs:

* ``none``: no feedback (the VAE keeps its :math:`\mathcal N(0, I)` prior);
* ``alpha=1``: SERKET's feedback;
* ``alpha=4``: the same means, pulled four times harder;
* ``oracle``: the means of the **true** classes of the current latents (labels used, for diagnosis only):
  what the feedback could do if the GMM's partition were right.

For each variant: the accuracy of the GMM at the end; the share of samples whose GMM class changed
since the saved state (how far the partition moved); and the accuracy of a **fresh** GMM (new k-means
start, as many sweeps in all) on the final latents, i.e. how clusterable the latent space became,
independent of the chain's history.

Run: ``python examples/serket_feedback_study.py [--seeds 5] [--smoke] [--data DIR]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serket as S  # noqa: E402
from _args import positive_int  # noqa: E402

from kizuna import modules as km  # noqa: E402

VARIANTS = ("none", "alpha=1", "alpha=4", "oracle")


class OracleMeansGMM(km.GMM):
    """A GMM that sends down the mean latent of each sample's **true** class instead of its own class's
    mean (labels are read from ``category``; a diagnostic, not a model)."""

    def _update(self, ctx: km.UpdateContext, forward: list[km.Message], backward: km.Message | None
                ) -> tuple[km.Message, dict[km.Module, km.Message]]:
        up, down = super()._update(ctx, forward, backward)
        z = forward[0].value
        labels = torch.as_tensor(np.asarray(self.category), device=z.device).long()
        onehot = torch.nn.functional.one_hot(labels).to(z.dtype)
        class_means = (onehot.T @ z) / onehot.sum(0)[:, None]
        for child, msg in down.items():
            down[child] = self.message("prior_mean", class_means[labels], receiver=child, variable=msg.variable)
        return up, down


def _continue(d: S.Digits, s: S.Settings, seed: int, saved: str, variant: str) -> dict[str, float]:
    """One variant continued from the saved first-update state (the same networks, chain and iteration,
    so the same VAE schedule); the variants differ only in how the VAE is built."""
    vae = S.image_vae(d, s, S.DeafVAE if variant == "none" else km.VAE, alpha=4.0 if variant == "alpha=4" else 1.0)
    gmm_class = OracleMeansGMM if variant == "oracle" else km.GMM  # a GMM's saved state loads into a subclass
    gmm = gmm_class(10, category=d.label, max_iter=s.gmm_sweeps, name="gmm").connect(vae)
    graph = km.Graph([gmm]).load(saved)
    before = gmm.classes.clone()
    S.fit_graph(graph, s, seed + 1, n_iter=s.n_iter - 1)
    fresh = S.class_gmm(d, s).set_params(max_iter=s.gmm_sweeps * s.n_iter)
    fresh.connect(km.Observation(vae.latent, name="latent"))
    km.Graph([fresh]).fit(n_iter=1, seed=seed + 2)
    return {"accuracy": S.module_scores(gmm, "m")["m_accuracy"],
            "moved": float((gmm.classes != before).float().mean()),
            "fresh": S.module_scores(fresh, "m")["m_accuracy"]}


def study(seed: int, smoke: bool, data: str | None) -> dict[str, dict[str, float]]:
    """Every variant of `VARIANTS` for one seed (one shared first update)."""
    s = S.settings(smoke)
    d = S.digits(data, s.n)
    graph, gmm = S.build_vae_gmm(d, s)
    S.fit_graph(graph, s, seed, n_iter=1)
    out = {"first update": {"accuracy": S.module_scores(gmm, "m")["m_accuracy"], "moved": 0.0,
                            "fresh": float("nan")}}
    with tempfile.TemporaryDirectory() as tmp:
        graph.save(tmp)
        for variant in VARIANTS:
            out[variant] = _continue(d, s, seed, tmp, variant)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seeds", type=positive_int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    S.check_data(parser, args.data)
    torch.set_num_threads(1)
    start = time.time()
    runs = [study(seed, args.smoke, args.data) for seed in range(args.seeds)]
    print(f"VAE+GMM feedback study, seeds 0..{args.seeds - 1} (mean ± sd), {time.time() - start:.0f} s")
    print("| variant | GMM accuracy at the end | share of classes changed | fresh GMM on the final latents |")
    print("|---|---|---|---|")
    for variant in ("first update", *VARIANTS):
        cells = []
        for key in ("accuracy", "moved", "fresh"):
            values = [r[variant][key] for r in runs]
            cells.append("—" if any(v != v for v in values) else S.mean_sd(values))
        print(f"| {variant} | " + " | ".join(cells) + " |")
    for variant in ("alpha=1", "alpha=4", "oracle"):
        gains = [r[variant]["accuracy"] - r["none"]["accuracy"] for r in runs]
        print(f"paired gain of {variant} over none: {statistics.fmean(gains):+.3f} "
              f"(per seed: {', '.join(f'{g:+.3f}' for g in gains)})")


if __name__ == "__main__":
    main()
