r"""Pictures of models: `render` turns a distribution, a loss or a module graph into a graphical model.

What it reads is public structure only: a distribution's ``factors()`` and their ``var`` /
``cond_var`` / ``name`` (through renamed and marginalised distributions, to the factors inside them);
a loss's ``distributions()``, ``input_var`` and, for `IterativeLoss`, its ``series_var`` and
``update_value``; a `kizuna.modules.Graph`'s ``modules`` (a `Module`: it and those below it) with
their ``children``.
Nothing in the formula layer imports this module.

* Random variables are nodes (ellipses); observed ones are shaded: a loss's inputs (its data), or
  the names given in ``observed``. A module graph's `Observation`\ s are shaded boxes and its
  modules plain boxes (shaded too when named in ``observed``); each of its edges is labelled with the
  message kind it carries (``data``, ``latent``, ``posterior``: the child's ``sends``).
* Every factor :math:`p(v|c_1..c_n)` draws edges :math:`c_i \to v`, solid for generative factors and
  dashed for inference factors (names starting with ``q``: Pixyz's and kizuna's convention).
* Plates: everything sits in the data plate ``N`` (one row of the batch); the variables sliced
  over time by an `IterativeLoss` sit in a nested plate ``T``, and its ``update_value`` draws a
  dotted edge from a variable to the name that holds its previous value.
* Labels are LaTeX-able: the spec carries ``latex`` labels (``z_1`` -> ``z_{1}``,
  ``x_{tilde}`` kept), and ``latex=True`` writes them into the DOT text (for dot2tex).

`render` returns a `Rendering`: the DOT text (always, without Graphviz), a ``spec`` dict for
tools (Pyro's ``render_model`` is the anchor; its users ask for the spec, Pyro #3023), and an
image when the Graphviz ``dot`` program is installed and a ``filename`` is given.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from kizuna._text import latex_name, prob_text
from kizuna.distributions.base import Distribution, single_factors
from kizuna.formula.expr import Loss
from kizuna.losses.iterative import IterativeLoss
from kizuna.modules.base import Module, Observation
from kizuna.modules.graph import Graph
from kizuna.viz._backend import save_figure


@dataclass
class Rendering:
    """The picture of a model: Graphviz ``dot`` text, a ``spec`` dict, and the image file if one was drawn."""

    dot: str
    spec: dict[str, Any]
    image: Path | None = None

    def _repr_svg_(self) -> str | None:  # notebooks show the picture when Graphviz is there
        dot = shutil.which("dot")
        if dot is None:
            return None
        return subprocess.run([dot, "-Tsvg"], input=self.dot, capture_output=True, text=True, check=True).stdout


@dataclass
class _Spec:
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[dict[str, Any]] = field(default_factory=list)
    plates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def node(self, name: str, observed: bool, kind: str = "variable") -> None:
        entry = self.nodes.setdefault(name, {"name": name, "label": name, "latex": latex_name(name),
                                             "observed": observed, "kind": kind, "plate": "N"})
        entry["observed"] = entry["observed"] or observed

    def edge(self, src: str, dst: str, label: str, kind: str) -> None:
        edge = {"from": src, "to": dst, "label": label, "kind": kind}
        if edge not in self.edges:
            self.edges.append(edge)

    def as_dict(self) -> dict[str, Any]:
        return {"nodes": list(self.nodes.values()), "edges": list(self.edges), "plates": list(self.plates.values())}


def _atoms(p: Distribution) -> list[tuple[str, list[str], list[str]]]:
    """The single factors of ``p`` as ``(name, var, cond_var)``: a product's factors, and the factors inside a renamed
    (`replace_var`) or marginalised (`marginalize_var`) distribution, whose integrated variables stay latent nodes."""
    return [(f.name, f.var, f.cond_var) for f in single_factors(p)]


def _add_distribution(spec: _Spec, p: Distribution, observed: set[str]) -> None:
    for name, var, cond in _atoms(p):
        kind = "inference" if name.lstrip("\\").startswith(("q", "hat{q}")) else "generative"
        label = prob_text(name, var, cond)
        for v in var:
            spec.node(v, v in observed)
            for c in cond:
                spec.node(c, c in observed)
                spec.edge(c, v, label, kind)


def _iterative_nodes(loss: Loss) -> list[IterativeLoss]:
    return [node for node in loss.nodes() if isinstance(node, IterativeLoss)]


def _from_loss(spec: _Spec, loss: Loss, observed: set[str]) -> None:
    carried = {dst for it in _iterative_nodes(loss) for dst in it.update_value.values()}
    data = (set(loss.input_var) - carried) | observed  # a carried value's input is only its initial value
    for p in loss.distributions():
        _add_distribution(spec, p, data)
    for it in _iterative_nodes(loss):
        spec.plates["T"] = {"name": "T", "label": "T", "parent": "N"}
        step_vars = set(it.series_var) | set(it.update_value) | set(it.update_value.values())
        for p in it.distributions():
            for _, var, _ in _atoms(p):
                step_vars |= set(var)
        if it.timestep_var is not None and it.timestep_var in spec.nodes:  # the step's index: given, in the plate
            step_vars.add(it.timestep_var)
            spec.nodes[it.timestep_var]["observed"] = True
        for v in step_vars & set(spec.nodes):
            spec.nodes[v]["plate"] = "T"
        for src, dst in it.update_value.items():
            spec.node(src, src in data)
            spec.node(dst, dst in data)
            spec.edge(src, dst, "next step", "recurrence")


def _below(module: Module) -> list[Module]:
    """The modules a `Module` draws: it and every module and observation below it (its children, down to the data),
    in update order. The whole graph it sits in (every module connected to it, through parents and children) is
    checked and named as `Graph` does from its top modules, so one module of a larger graph draws its part of that
    graph, under the graph's names (a `Graph` of the module alone refused its parents)."""
    seen, stack, tops = {id(module)}, [module], []
    while stack:
        m = stack.pop()
        if not m.parents:
            tops.append(m)
        for n in m.children + m.parents:
            if id(n) not in seen:
                seen.add(id(n))
                stack.append(n)
    graph = Graph(tops or [module])  # (no top module: a cycle, which Graph names)
    below, stack = {id(module)}, [module]
    while stack:
        for child in stack.pop().children:
            if id(child) not in below:
                below.add(id(child))
                stack.append(child)
    return [m for m in graph.modules if id(m) in below]


def _from_graph(spec: _Spec, modules: list[Module], observed: set[str]) -> None:
    for m in modules:  # an Observation is data; a module named in ``observed`` is shaded as given too
        spec.node(m.name, isinstance(m, Observation) or m.name in observed,
                  "observation" if isinstance(m, Observation) else "module")
        spec.nodes[m.name]["label"] = m.name if isinstance(m, Observation) else f"{m.name}\n{type(m).__name__}"
        for child in m.children:
            spec.edge(child.name, m.name, child.sends, "message")


def model_spec(obj: Any, observed: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The graph of ``obj`` as a dict: ``nodes``, ``edges``, ``plates`` (module docstring)."""
    spec = _Spec(plates={"N": {"name": "N", "label": "N", "parent": None}})
    if isinstance(observed, str):  # one name (a set of its characters shaded the wrong nodes, silently)
        observed = [observed]
    observed_set = set(observed)
    loss = getattr(obj, "loss_cls", None)  # a kizuna Model: the picture of the loss it trains
    if isinstance(loss, Loss):
        obj = loss
    if isinstance(obj, Loss):
        _from_loss(spec, obj, observed_set)
    elif isinstance(obj, Distribution):
        _add_distribution(spec, obj, observed_set)
    elif isinstance(obj, Graph | Module):
        _from_graph(spec, obj.modules if isinstance(obj, Graph) else _below(obj), observed_set)
    else:
        raise TypeError("render: expected a kizuna Distribution, Loss, Model, modules.Graph or Module, "
                        f"got {type(obj).__name__}")
    unknown = sorted(observed_set - set(spec.nodes))
    if unknown:
        raise ValueError(f"render: observed names {unknown} are not variables of the model ({sorted(spec.nodes)})")
    return spec.as_dict()


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_STYLE = {"generative": "solid", "inference": "dashed", "recurrence": "dotted", "message": "solid"}


def to_dot(spec: dict[str, Any], latex: bool = False, name: str = "model") -> str:
    """Graphviz ``dot`` text of a `model_spec` (deterministic: the same model gives the same text).

    Every edge carries its spec ``label`` as a ``tooltip`` (shown on hover in SVG); a module graph's message edges
    also draw it as the edge's ``label``, so the message kind shows in every image format. ``spec`` is the dict
    `model_spec` returns; anything else is a TypeError (a string or a model failed inside with "string indices must be
    integers"; `render` takes a model)."""
    if not isinstance(spec, dict) or not {"nodes", "edges", "plates"} <= spec.keys():
        what = f"a dict of keys {sorted(map(str, spec))}" if isinstance(spec, dict) else type(spec).__name__
        raise TypeError(f"to_dot takes the dict of model_spec(obj) (keys nodes, edges, plates), got {what}; for a "
                        "model call to_dot(model_spec(obj)), or render(obj).dot")
    lines = [f"digraph {_quote(name)} {{", "  rankdir=TB;", '  node [fontname="Helvetica"];']

    def node_line(n: dict[str, Any], indent: str) -> str:
        shape = "ellipse" if n["kind"] == "variable" else "box"
        fill = ', style=filled, fillcolor="gray80"' if n["observed"] else ""
        label = f"${n['latex']}$" if latex and n["kind"] == "variable" else n["label"]
        return f"{indent}{_quote(n['name'])} [label={_quote(label)}, shape={shape}{fill}];"

    def plate(p: dict[str, Any], indent: str) -> None:
        lines.append(f"{indent}subgraph {_quote('cluster_' + p['name'])} {{")
        lines.append(f'{indent}  label={_quote(p["label"])}; labeljust=r; labelloc=b; style=rounded;')
        lines.extend(node_line(n, indent + "  ") for n in spec["nodes"] if n["plate"] == p["name"])
        for child in (c for c in spec["plates"] if c["parent"] == p["name"]):
            plate(child, indent + "  ")
        lines.append(f"{indent}}}")

    for p in (p for p in spec["plates"] if p["parent"] is None):
        plate(p, "  ")
    for e in spec["edges"]:  # a message edge shows its kind on the edge (a factor's name: a tooltip, not drawn)
        shown = f"label={_quote(e['label'])}, " if e["kind"] == "message" else ""
        lines.append(f"  {_quote(e['from'])} -> {_quote(e['to'])} [style={_STYLE[e['kind']]}, {shown}"
                     f"tooltip={_quote(e['label'])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass
class _DotPicture:
    """Graphviz's picture of DOT text, drawn for `kizuna.viz._backend.save_figure` as a matplotlib figure is: so that
    `render` writes its image as every kizuna plot does (the format the suffix names, in any case; ``.png`` added to
    a name without one; the folder created; written atomically by `kizuna._io.write_atomic`)."""

    program: str
    dot: str
    path: Path

    def savefig(self, out: BinaryIO, dpi: int, format: str) -> None:  # (matplotlib's names)
        drawn = subprocess.run([self.program, f"-T{format}"], input=self.dot.encode(), capture_output=True)
        if drawn.returncode != 0:
            reason = drawn.stderr.decode(errors="replace").strip() or f"exit status {drawn.returncode}"
            raise ValueError(f"render: Graphviz's dot cannot draw {str(self.path)!r} in the format {format!r} (the "
                             f"file's suffix): {reason}; nothing was written")
        out.write(drawn.stdout)


def render(obj: Any, filename: str | Path | None = None, observed: list[str] | tuple[str, ...] = (),
           latex: bool = False) -> Rendering:
    """The picture of a distribution, loss or module graph (module docstring).

    Args:
        obj: a `Distribution` (a product shows every factor), a `Loss` (or a `kizuna.models.Model`: its loss), or a
            `modules.Graph` / `Module` (a module and everything below it, down to its observations: for a module
            inside a larger graph, its part of that graph; render the `Graph` or its top module for all of it).
        filename: where to draw the image (its suffix, in any case, is the format, e.g. ``.png``, ``.svg``; a name
            without one gets ``.png``; its folder is created; written atomically, as every kizuna plot); drawn only
            when Graphviz's ``dot`` is installed (``Rendering.image`` is None otherwise).
        observed: names to shade besides a loss's inputs (for a module graph: module names, shaded like its
            `Observation` nodes).
        latex: write LaTeX labels (``$z_{1}$``) into the DOT text.

    Raises:
        ValueError: ``dot`` cannot draw the image (e.g. a format it does not know; its reason is given), or
            ``filename`` is a directory.

    >>> from kizuna.distributions import Bernoulli, Normal
    >>> p = Bernoulli(var=["x"], cond_var=["z"], probs="z") * Normal(var=["z"], loc=0.0, scale=1.0)
    >>> print(render(p, observed=["x"]).dot.splitlines()[5])
        "x" [label="x", shape=ellipse, style=filled, fillcolor="gray80"];
    """
    spec = model_spec(obj, observed)
    dot = to_dot(spec, latex)
    image = None
    program = shutil.which("dot")
    if filename is not None and program is not None:
        image = save_figure(_DotPicture(program, dot, Path(filename)), filename, 0, "render")
    return Rendering(dot, spec, image)

