r"""Pictures of models: `render` turns a distribution, a loss or a module graph into a graphical model.

What it reads is public structure only: a distribution's ``factors()`` and their ``var`` /
``cond_var`` / ``name`` (through renamed and marginalised distributions, to the factors inside them);
a loss's ``distributions()``, ``input_var`` and, for `IterativeLoss`, its ``series_var`` and
``update_value``; a `kizuna.modules.Graph`'s ``modules`` with their ``children``.
Nothing in the formula layer imports this module.

* Random variables are nodes (ellipses); observed ones are shaded: a loss's inputs (its data), or
  the names given in ``observed``. A module graph's `Observation`\ s are shaded boxes and its
  modules plain boxes (shaded too when named in ``observed``).
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
from typing import Any

from kizuna._text import latex_name, prob_text
from kizuna.distributions.base import Distribution, single_factors
from kizuna.formula.expr import Loss
from kizuna.losses.iterative import IterativeLoss
from kizuna.modules.base import Module, Observation
from kizuna.modules.graph import Graph


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


def _from_graph(spec: _Spec, graph: Graph, observed: set[str]) -> None:
    for m in graph.modules:  # an Observation is data; a module named in ``observed`` is shaded as given too
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
        _from_graph(spec, obj if isinstance(obj, Graph) else Graph([obj]), observed_set)
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
    """Graphviz ``dot`` text of a `model_spec` (deterministic: the same model gives the same text)."""
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
    for e in spec["edges"]:
        lines.append(f"  {_quote(e['from'])} -> {_quote(e['to'])} [style={_STYLE[e['kind']]}, "
                     f"tooltip={_quote(e['label'])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(obj: Any, filename: str | Path | None = None, observed: list[str] | tuple[str, ...] = (),
           latex: bool = False) -> Rendering:
    """The picture of a distribution, loss or module graph (module docstring).

    Args:
        obj: a `Distribution` (a product shows every factor), a `Loss` (or a `kizuna.models.Model`: its loss), or a
            `modules.Graph` / `Module`.
        filename: where to draw the image (its suffix is the format, e.g. ``.png``, ``.svg``); drawn only
            when Graphviz's ``dot`` is installed (``Rendering.image`` is None otherwise).
        observed: names to shade besides a loss's inputs (for a module graph: module names, shaded like its
            `Observation` nodes).
        latex: write LaTeX labels (``$z_{1}$``) into the DOT text.

    >>> from kizuna.distributions import Bernoulli, Normal
    >>> p = Bernoulli(var=["x"], cond_var=["z"], probs="z") * Normal(var=["z"], loc=0.0, scale=1.0)
    >>> print(render(p, observed=["x"]).dot.splitlines()[5])
        "x" [label="x", shape=ellipse, style=filled, fillcolor="gray80"];
    """
    spec = model_spec(obj, observed)
    dot = to_dot(spec, latex)
    image = None
    if filename is not None and shutil.which("dot") is not None:
        image = Path(filename)
        fmt = image.suffix.lstrip(".") or "png"
        subprocess.run([str(shutil.which("dot")), f"-T{fmt}", "-o", str(image)], input=dot, text=True, check=True)
    return Rendering(dot, spec, image)
