"""Checks shared by the tests of several graph modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kizuna.modules import ClassModule, Graph, load_module, save_module


class PriorSource(ClassModule):
    """A test parent: a fixed class prior (rows x classes) sent down to its children that receive a ``prior``, and
    sent up as its own ``posterior``."""

    accepts = ("posterior",)

    def __init__(self, prior: Any, name: str | None = None) -> None:
        super().__init__(prior.shape[1], name=name)
        self.prior = prior

    def _update(self, ctx: Any, forward: Any, backward: Any) -> tuple[Any, dict]:
        self.posterior = self.prior
        down = {c: self.message("prior", self.prior, receiver=c) for c in self.children if "prior" in c.receives}
        return self.message("posterior", self.prior), down


def loaded_optimiser_takes_the_modules_lr(build: Callable[[float], Any], path: Path) -> None:
    """After a load the optimiser trains at the loading module's ``lr``, not the saved one's, for a fresh module and a
    trained one alike, with the saved moments kept; with the same ``lr`` nothing changes. ``build(lr)``: a module with
    a default network and that learning rate, connected to its data."""
    saved = build(1e-3)
    Graph([saved]).fit(1, seed=0)
    save_module(saved, path)
    trained = build(0.5)
    Graph([trained]).fit(1, seed=1)
    for module in (build(0.5), trained):
        load_module(module, path)
        assert module.lr == 0.5 and [group["lr"] for group in module.optimizer.param_groups] == [0.5]
        assert module.optimizer.state  # the saved moments are kept
    same = build(1e-3)
    load_module(same, path)
    assert [group["lr"] for group in same.optimizer.param_groups] == [1e-3]


def serket_vae_gmm_mlda_graph() -> Graph:
    """SERKET's VAE + GMM + MLDA on a few random rows (image -> VAE -> GMM -> MLDA <- speech): the graph the render
    tests draw."""
    import numpy as np

    from kizuna import modules as km

    rng = np.random.default_rng(0)
    image = km.Observation(rng.random((6, 4)), name="image")
    speech = km.Observation(rng.integers(0, 3, (6, 5)).astype(float), name="speech")
    vae = km.VAE(2, hidden=(4,), epochs=1, name="vae").connect(image)
    gmm = km.GMM(2, name="gmm").connect(vae)
    return Graph([km.MLDA(2, name="mlda").connect(speech, gmm)])
