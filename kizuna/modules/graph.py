"""`Graph`: validates a set of connected modules and runs mutual inference in SERKET's order.

One iteration of :meth:`Graph.fit` updates every module once, **children before parents**
(bottom-up, as SERKET's examples do): each module reads the fresh forward messages of its
children and the backward message its parent sent during the previous iteration, then sends
its own messages. Repeating the sweep alternates bottom-up posteriors and top-down priors
until they agree (Nakamura et al. 2018, arXiv:1712.00929).

>>> import torch
>>> from kizuna.modules import GMM, Observation
>>> x = torch.cat([torch.randn(20, 2) - 4, torch.randn(20, 2) + 4])
>>> gmm = GMM(2, category=[0] * 20 + [1] * 20).connect(Observation(x))
>>> graph = Graph([gmm]).fit(n_iter=3, seed=0)
>>> [m.name for m in graph.modules]
['observation', 'gmm']
>>> gmm.accuracy
1.0
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kizuna._data import as_sequence
from kizuna.models.distributed import common_seed
from kizuna.modules.base import ClassModule, GraphError, Module, Observation
from kizuna.modules.combine import SIR, Combine, strategy
from kizuna.modules.context import Schedule, UpdateContext, check_schedule
from kizuna.modules.persistence import load_graph, save_graph
from kizuna.modules.rng import generator_for


def _post_order(roots: Sequence[Module]) -> list[Module]:
    """Every module reachable through ``children``, children first; a cycle is a `GraphError`."""
    order: list[Module] = []
    state: dict[int, str] = {}  # id -> "open" while on the DFS path, "done" afterwards

    def visit(m: Module, path: list[Module]) -> None:
        if state.get(id(m)) == "done":
            return
        if state.get(id(m)) == "open":
            cycle = path[path.index(m):] + [m]
            raise GraphError("cycle in the module graph: " + " -> ".join(x.name for x in cycle))
        state[id(m)] = "open"
        for child in m.children:
            visit(child, path + [m])
        state[id(m)] = "done"
        order.append(m)

    for root in roots:
        visit(root, [])
    return order


def _components(modules: list[Module]) -> list[list[Module]]:
    """Connected components of the undirected parent/child graph, in ``modules`` order."""
    seen: set[int] = set()
    comps = []
    for start in modules:
        if id(start) in seen:
            continue
        comp, stack = [], [start]
        seen.add(id(start))
        while stack:
            m = stack.pop()
            comp.append(m)
            for n in m.children + m.parents:
                if id(n) not in seen:
                    seen.add(id(n))
                    stack.append(n)
        comps.append(comp)
    return comps


class Graph:
    """A validated integrated model.

    Args:
        modules: the modules to run; their children (observations included) are added. The update order (children
            first, depth first from these modules in this order) is also the order of the modules' draws from
            the generator ``fit(seed=...)`` shares, so listing the same modules in another order gives another
            (equally valid) random run.

    Raises:
        GraphError: a cycle (named), a module without children, a parent outside the graph,
            modules not connected to the rest (named), or two modules with the same name; from `update`, `fit` and
            `save` too, when the wiring changed after the graph was built (a parent or a child connected to one of
            its modules: the graph would run without it): build a new ``Graph([...])``.
    """

    def __init__(self, modules: Sequence[Module]) -> None:
        # (one module raised a raw "'GMM' object is not iterable")
        modules = list(as_sequence("Graph: modules", modules, "a list of modules, e.g. Graph([gmm]) for one"))
        if not modules:
            raise GraphError("Graph needs at least one module")
        for m in modules:
            if not isinstance(m, Module):
                raise TypeError(f"Graph: expected Module instances, got {type(m).__name__}")
        order = _post_order(modules)
        self._validate(order)
        self._name_uniquely(order)
        self.modules: list[Module] = order
        self._wiring = self._wiring_of(order)
        self.iteration = 0  # sweeps run so far (a second fit continues the schedule)
        self._context: UpdateContext | None = None

    @staticmethod
    def _validate(order: list[Module]) -> None:
        """The wiring checks of the constructor on ``order`` (every module reachable through its ``children``)."""
        members = {id(m) for m in order}
        for m in order:
            if not isinstance(m, Observation) and not m.children:
                raise GraphError(f"{m.name} has no children: connect it to an Observation or another module")
            outside = [p.name for p in m.parents if id(p) not in members]
            if outside:
                raise GraphError(f"{m.name}'s parent(s) {outside} are not in the graph; add them to Graph([...])")
        comps = _components(order)
        if len(comps) > 1:
            rest = [m.name for comp in comps[1:] for m in comp]
            raise GraphError(f"modules {rest} are not connected to {comps[0][0].name} and the rest of the graph")

    @staticmethod
    def _wiring_of(modules: list[Module]) -> list[tuple[Any, ...]]:
        """Each module's children and parents by their positions in ``modules`` (a module outside it by identity),
        to tell a change of wiring after construction. Positions, not identities: a deep copy or an unpickled graph
        (new objects, the same wiring) runs as the original."""
        at = {id(m): i for i, m in enumerate(modules)}
        return [(len(m.children), *(at.get(id(c), ("outside", id(c))) for c in m.children),
                 *(at.get(id(p), ("outside", id(p))) for p in m.parents)) for m in modules]

    def _check_wiring(self) -> None:
        """Re-run the constructor's checks if a module was connected (or its ``parents`` / ``children`` edited)
        since the graph was built: it ran the modules collected then, so a parent connected afterwards never ran
        while its child dropped its own class weights for that parent's prior (silently another model)."""
        now = self._wiring_of(self.modules)
        if "_wiring" not in self.__dict__:  # a graph pickled before stop 45: its wiring now, checked once
            self._validate(_post_order(self.modules))
            self._wiring = now
        if now == self._wiring:
            return
        order = _post_order(self.modules)  # a cycle is named
        members = {id(m) for m in self.modules}
        for m in self.modules:
            added = [c.name for c in m.children if id(c) not in members]
            if added:
                raise GraphError(f"{m.name}'s child(ren) {added} are not in the graph (connected after it was built);"
                                 " build a new Graph([...]) with them")
        self._validate(order)
        raise GraphError("the wiring of modules "
                         f"{[m.name for m, w, v in zip(self.modules, self._wiring, now) if v != w]} "
                         "changed after the graph was built; build a new Graph([...])")

    @staticmethod
    def _name_uniquely(order: list[Module]) -> None:
        """Number unnamed modules that share a name (``observation0``, ``observation1``...)."""
        named = [m.name for m in order if m.named]
        dup = sorted({n for n in named if named.count(n) > 1})
        if dup:
            raise GraphError(f"module names must be unique in a graph; repeated: {dup}")
        counts: dict[str, int] = {}
        for m in order:
            counts[m.name] = counts.get(m.name, 0) + 1
        index: dict[str, int] = {}
        for m in order:
            if not m.named and counts[m.name] > 1:
                base = m.name
                i = index.get(base, 0)
                while f"{base}{i}" in counts:
                    i += 1
                index[base] = i + 1
                m._rename(f"{base}{i}")
                counts[m.name] = 1

    def __iter__(self) -> Iterator[Module]:
        return iter(self.modules)

    def __getitem__(self, name: str) -> Module:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(f"no module named {name!r} in the graph; names: {[m.name for m in self.modules]}")

    def __repr__(self) -> str:
        """The modules as a tree from the top, each with its hyper-parameters."""
        lines = [f"Graph({len(self.modules)} modules, {self.iteration} sweeps done)"]
        shown: set[int] = set()

        def walk(m: Module, depth: int) -> None:
            again = id(m) in shown
            lines.append("  " * depth + ("^ " + m.name + " (above)" if again else repr(m).split(" <- ")[0]))
            shown.add(id(m))
            for child in [] if again else m.children:
                walk(child, depth + 1)

        for top in [m for m in self.modules if not m.parents]:
            walk(top, 1)
        return "\n".join(lines)

    def context(self, method: str | Combine = "mp", seed: int | None = None, schedule: Schedule | None = None,
                n_particles: int | None = None) -> UpdateContext:
        """A fresh update context at the graph's current iteration (what `fit` builds).

        Args:
            method: ``"mp"`` or ``"sir"``, or a strategy object (``km.MP()``, ``km.SIR(n_particles=...)``).
            seed: seeds the generator every module draws from (``None``: a fresh random seed, the same on
                every rank of a ``torch.distributed`` run, so that replicated modules stay identical).
            schedule: per-module settings by iteration (`kizuna.modules.context`), checked here.
            n_particles: SIR particles per sample for every module (``None``: each module's own); with a strategy
                object ``km.SIR()`` it fills in the count left at ``None``, and one that gives another count is
                refused (the count was ignored).
        """
        combine = strategy(method, n_particles)
        if isinstance(combine, SIR) and n_particles is not None and combine.n_particles != n_particles:
            if combine.n_particles is not None:
                raise ValueError(f"Graph: method={combine!r} and n_particles={n_particles!r} give two particle "
                                 "counts; give it once")
            combine = combine.bind(n_particles)
        device = next(m.data.device for m in self.modules if isinstance(m, Observation))
        bad_seed = f"Graph: seed must be None or a non-negative int below 2**64 (Python or numpy), got {seed!r}"
        if seed is None:
            generator = torch.Generator(device=device).manual_seed(common_seed())
        elif isinstance(seed, torch.Generator):  # (generator_for takes one as it is)
            raise ValueError(bad_seed)
        else:  # random_state's rule: numpy integers were refused, 2**64 was torch's "Overflow when unpacking long long"
            try:
                generator = generator_for(seed, device)
            except ValueError:
                raise ValueError(bad_seed) from None
        check_schedule(schedule or {}, {m.name: m.scheduled for m in self.modules})
        return UpdateContext(combine, generator, self.iteration, dict(schedule or {}))

    def update(self, ctx: UpdateContext | None = None) -> Graph:
        """One bottom-up sweep: ``update(ctx)`` every module, children first.

        Args:
            ctx: the context (from `context`: combination, generator, schedule); ``None``: the one of the last
                `fit` (or a fresh `context`). Either is taken at least at the graph's current iteration, so a
                schedule (``{"vae": {"epochs": [200, 40]}}``) moves on with every sweep, as in `fit` (a context
                passed in kept the iteration it was made at: every sweep ran the first entry); a context asked for
                a later iteration (``ctx.at(i)``) keeps its own.
        """
        self._check_wiring()
        if ctx is None:
            self._context = self._context if self._context is not None else self.context()
            ctx = self._context
        ctx = ctx.at(max(ctx.iteration, self.iteration))
        for m in self.modules:
            m.update(ctx)
        self.iteration += 1
        return self

    def fit(self, n_iter: int, method: str | Combine = "mp", seed: int | None = None,
            schedule: Schedule | None = None, verbose: bool | None = None) -> Graph:
        """Run ``n_iter`` sweeps of mutual inference.

        Args:
            n_iter: number of bottom-up sweeps (a Python or numpy integer).
            method, seed, schedule: see `context`. Every module draws from one generator seeded by
                ``seed``; torch's global generator is left untouched.
            verbose: a progress bar (sweeps, and each class module's accuracy when it has labels);
                ``None``: only when stderr is a terminal.
        """
        if isinstance(n_iter, bool) or not isinstance(n_iter, numbers.Integral) or n_iter < 0:
            raise ValueError(f"Graph.fit: n_iter must be a non-negative int (Python or numpy), got {n_iter!r}")
        self._check_wiring()
        self._context = self.context(method, seed, schedule)
        quiet = not (sys.stderr.isatty() if verbose is None else verbose)
        with tqdm(range(n_iter), desc="graph", unit="sweep", disable=quiet, dynamic_ncols=True) as bar:
            for _ in bar:
                self.update()
                if not quiet:
                    bar.set_postfix(self._progress())
        return self

    def _progress(self) -> dict[str, str]:
        """Each class module's accuracy (when it has reference labels)."""
        return {m.name: f"{m.accuracy:.3f}" for m in self.modules
                if isinstance(m, ClassModule) and m.category is not None and m.posterior is not None}

    def save(self, directory: str | Path) -> Path:
        """Write every module's state and a JSON manifest to ``directory``, atomically (see `persistence`)."""
        self._check_wiring()
        return save_graph(self, directory)

    def load(self, directory: str | Path) -> Graph:
        """Restore states saved by :meth:`save` into this (identically built) graph, and its iteration count; the
        context of an earlier `fit` is dropped, so that `update` starts a fresh one (as the docs say; it kept that
        fit's method, schedule and stream)."""
        load_graph(self, directory)
        self._context = None
        return self
