"""`kizuna.viz.render`: pictures of models, against golden DOT files and the model's own structure.

The golden files in tests/golden/ were checked by eye once (every factor's edges, the observed data
shaded, inference edges dashed, the time plate of the DMM, the SERKET graph's messages) and are
compared byte for byte; the spec is checked against the distributions' var / cond_var directly.
Regenerate them with ``KIZUNA_UPDATE_GOLDEN=1 pytest tests/test_render.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from example_loader import load_example
from module_checks import serket_vae_gmm_mlda_graph

from kizuna.distributions import Normal
from kizuna.losses import Expectation as E
from kizuna.losses import KullbackLeibler, LogProb
from kizuna.viz import model_spec, render

GOLDEN = Path(__file__).resolve().parent / "golden"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"render_{name}.dot"
    if os.environ.get("KIZUNA_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} differs; regenerate with KIZUNA_UPDATE_GOLDEN=1 if intended"


def edges(spec: dict) -> set[tuple[str, str, str]]:
    return {(e["from"], e["to"], e["kind"]) for e in spec["edges"]}


def test_vae() -> None:
    vae = load_example("vae")
    q, p, prior = vae.build(8, 2, 4)
    loss = (KullbackLeibler(q, prior) - E(q, LogProb(p))).mean()
    out = render(loss)
    check_golden("vae", out.dot)
    assert edges(out.spec) == {("z", "x", "generative"), ("x", "z", "inference")}
    nodes = {n["name"]: n for n in out.spec["nodes"]}
    assert nodes["x"]["observed"] and not nodes["z"]["observed"]
    assert render(p * prior).spec["nodes"][0]["observed"] is False  # a distribution alone: nothing observed


def test_m2() -> None:
    m2 = load_example("m2")
    d = m2.build(8, 2, 4)
    out = render(m2.m2_loss(d, 0.1))
    check_golden("m2", out.dot)
    observed = {n["name"] for n in out.spec["nodes"] if n["observed"]}
    assert observed == {"x", "y", "x_u", "y_u"}  # y_u: every class, enumerated in the data (an input)
    assert ("y", "x", "generative") in edges(out.spec) and ("x_u", "y_u", "inference") in edges(out.spec)


def test_dmm() -> None:
    dmm = load_example("dmm")
    d = dmm.build({"z_dim": 2, "hidden": 4, "D": 3})
    out = render(dmm.dmm_loss(d))
    check_golden("dmm", out.dot)
    plates = {n["name"]: n["plate"] for n in out.spec["nodes"]}
    assert plates["x"] == plates["z"] == plates["z_prev"] == "T"
    assert [n["name"] for n in out.spec["nodes"] if n["observed"]] == ["x"]  # z_prev carries z: latent
    assert ("z", "z_prev", "recurrence") in edges(out.spec) and ("z_prev", "z", "generative") in edges(out.spec)
    assert {"name": "T", "label": "T", "parent": "N"} in out.spec["plates"]


def test_jmvae() -> None:
    jmvae = load_example("jmvae")
    mm = jmvae.build({"x": (8, "bernoulli"), "y": (3, "categorical")}, 2, 4)
    out = render(mm.model.loss_cls, latex=True)
    check_golden("jmvae", out.dot)
    assert {("x", "z", "inference"), ("y", "z", "inference"), ("z", "x", "generative"),
            ("z", "y", "generative")} <= edges(out.spec)


def test_serket_vae_gmm_mlda() -> None:
    out = render(serket_vae_gmm_mlda_graph())
    check_golden("serket_vae_gmm_mlda", out.dot)
    assert edges(out.spec) == {("image", "vae", "message"), ("vae", "gmm", "message"),
                               ("speech", "mlda", "message"), ("gmm", "mlda", "message")}
    kinds = {n["name"]: (n["kind"], n["observed"]) for n in out.spec["nodes"]}
    assert kinds["image"] == ("observation", True) and kinds["gmm"] == ("module", False)


def test_spec_labels_errors_and_image(tmp_path: Path) -> None:
    p = Normal(var=["z_1"], cond_var=["x_u"], loc="x_u", scale=1.0, name="q")
    spec = model_spec(p, observed=["x_u"])
    assert {n["name"]: n["latex"] for n in spec["nodes"]} == {"z_1": "z_{1}", "x_u": "x_{u}"}
    assert "$z_{1}$" in render(p, latex=True).dot
    # LaTeX's special characters are escaped (a bare % starts a comment, $ ends the formula); commands pass through
    from kizuna._text import latex_name

    assert [latex_name(n) for n in ["x%", "a#b_1", "p&q", "$y", "x\\%", "\\hat{x}"]] == \
        ["x\\%", "a\\#b_{1}", "p\\&q", "\\$y", "x\\%", "\\hat{x}"]
    with pytest.raises(ValueError, match=r"observed names \['w'\]"):
        render(p, observed=["w"])
    # one name as a string: its characters were the names (observed="xz" shaded x and z of a model without "xz")
    assert [n["observed"] for n in model_spec(p, observed="x_u")["nodes"]] == [False, True]
    with pytest.raises(ValueError, match=r"observed names \['xu'\] are not variables"):
        model_spec(p, observed="xu")
    with pytest.raises(TypeError, match="expected a kizuna Distribution"):
        render(torch.nn.Linear(2, 2))
    out = render(p, filename=tmp_path / "model.svg")
    if shutil.which("dot") is None:
        assert out.image is None
    else:
        assert out.image is not None and out.image.read_text().lstrip().startswith(("<?xml", "<svg"))


def test_renamed_and_marginalised_distributions_keep_their_edges() -> None:
    """``replace_var`` and ``marginalize_var`` keep the factors inside them: p(x|z)p(y|z)p(z) with z renamed to h
    draws h -> x and h -> y; with z integrated out, z stays a latent (unshaded) node with its edges."""
    j = (Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0) * Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0)
         * Normal(var=["z"], loc=0.0, scale=1.0))
    renamed = model_spec(j.replace_var(z="h"), observed=["x"])
    assert edges(renamed) == {("h", "x", "generative"), ("h", "y", "generative")}
    assert {e["label"] for e in renamed["edges"]} == {"p(x|h)", "p(y|h)"}
    marginal = model_spec(j.marginalize_var("z"), observed=["x", "y"])
    assert edges(marginal) == {("z", "x", "generative"), ("z", "y", "generative")}
    assert {n["name"]: n["observed"] for n in marginal["nodes"]} == {"x": True, "y": True, "z": False}
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q").replace_var(x="w")
    assert edges(model_spec(q)) == {("w", "z", "inference")}


def test_a_model_renders_its_loss_and_a_step_index_sits_in_the_time_plate() -> None:
    from kizuna.losses import IterativeLoss
    from kizuna.models import Model

    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=torch.nn.Parameter(torch.ones(1)), name="p")
    loss = (KullbackLeibler(q, prior) - E(q, LogProb(p))).mean()
    assert render(Model(loss)).dot == render(loss).dot
    step = Normal(var=["x"], cond_var=["x_prev", "t"], loc="x_prev", scale=1.0)
    it = IterativeLoss(-LogProb(step).mean(), series_var=["x"], update_value={"x": "x_prev"}, timestep_var="t")
    nodes = {n["name"]: n for n in model_spec(it)["nodes"]}
    assert nodes["t"]["plate"] == "T" and nodes["t"]["observed"]
