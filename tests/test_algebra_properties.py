"""Property tests of the algebra on random DAGs of Normal factors.

Each DAG has one to five nodes with random names; a node's mean is a parent variable (a
string parameter: ``Normal(var=["b"], cond_var=["a"], loc="a", ...)``), an external
conditioning variable, or a constant. The factors are multiplied in a random order with a
random bracketing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from kizuna.distributions import Distribution, Normal

F64 = torch.float64
BATCH = 3
SETTINGS = settings(max_examples=50, deadline=None)
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=3)


@dataclass
class Node:
    name: str
    parent: str | None  # a node, an external variable, or None (a constant mean)
    loc: float
    scale: float


@dataclass
class Dag:
    nodes: list[Node]
    external: list[str]
    features: tuple[int, ...]
    factors: list[Normal]  # one per node, in node (topological) order
    joint: Distribution  # the factors multiplied in ``order`` with a random bracketing
    order: list[int]

    def inputs(self) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        return {e: torch.randn(BATCH, *self.features, generator=gen, dtype=F64) for e in self.external}

    def scipy_log_prob(self, values: dict[str, torch.Tensor]) -> np.ndarray:
        total = np.zeros(BATCH)
        for n in self.nodes:
            loc = values[n.parent].numpy() if n.parent else n.loc
            lp = stats.norm.logpdf(values[n.name].numpy(), loc, n.scale)
            total += lp.reshape(BATCH, -1).sum(1)
        return total


def factor(node: Node, features: tuple[int, ...]) -> Normal:
    scale = torch.tensor(node.scale, dtype=F64)
    if node.parent is None:
        return Normal(var=[node.name], loc=torch.tensor(node.loc, dtype=F64), scale=scale, features_shape=features)
    return Normal(var=[node.name], cond_var=[node.parent], loc=node.parent, scale=scale)


@st.composite
def dags(draw: st.DrawFn) -> Dag:
    n = draw(st.integers(1, 5))
    n_ext = draw(st.integers(0, 2))
    names = draw(st.lists(NAMES, min_size=n + n_ext, max_size=n + n_ext, unique=True))
    own, external = names[:n], names[n:]
    nodes = []
    for i, name in enumerate(own):
        candidates = own[:i] + external
        parent = draw(st.none() | st.sampled_from(candidates)) if candidates else None
        nodes.append(Node(name, parent, draw(st.floats(-3, 3)), draw(st.floats(0.3, 2.0))))
    used = {nd.parent for nd in nodes}
    external = [e for e in external if e in used]
    features = draw(st.sampled_from([(), (2,)]))
    factors = [factor(nd, features) for nd in nodes]
    order = draw(st.permutations(range(n)))

    def bracket(fs: list[Distribution]) -> Distribution:
        if len(fs) == 1:
            return fs[0]
        k = draw(st.integers(1, len(fs) - 1))
        return bracket(fs[:k]) * bracket(fs[k:])

    joint = bracket([factors[i] for i in order]) if n > 1 else factors[0]
    return Dag(nodes, external, features, factors, joint, order)


@SETTINGS
@given(dags())
def test_var_and_cond_var(dag: Dag) -> None:
    ordered = [dag.nodes[i] for i in dag.order]
    # Pixyz's order: first appearance over each factor's variable, then its condition (the joint's own variables)
    own = {nd.name for nd in ordered}
    assert dag.joint.var == list(dict.fromkeys(v for nd in ordered for v in (nd.name, nd.parent) if v in own))
    expected_cond: list[str] = []
    for nd in ordered:
        if nd.parent in dag.external and nd.parent not in expected_cond:
            expected_cond.append(nd.parent)
    assert dag.joint.cond_var == expected_cond  # needed but not produced, each once
    assert dag.joint.factors() == [dag.factors[i] for i in dag.order]


@SETTINGS
@given(dags())
def test_sampling_order_respects_dependencies(dag: Dag) -> None:
    s = dag.joint.sample(dag.inputs(), batch_n=BATCH, return_all=False)
    keys = list(s)
    assert sorted(keys) == sorted(nd.name for nd in dag.nodes)
    for nd in dag.nodes:
        if nd.parent in keys:
            assert keys.index(nd.parent) < keys.index(nd.name)
        assert s[nd.name].shape == (BATCH, *dag.features)
    deep = dag.joint.sample(dag.inputs(), batch_n=BATCH, sample_shape=(2,), return_all=False)
    assert all(deep[nd.name].shape == (2, BATCH, *dag.features) for nd in dag.nodes)


@SETTINGS
@given(dags())
def test_log_prob_is_sum_of_factors(dag: Dag) -> None:
    s = dag.joint.sample(dag.inputs(), batch_n=BATCH)
    lp = dag.joint.get_log_prob(s)
    assert lp.shape == (BATCH,)
    parts = sum(f.get_log_prob(s) for f in dag.factors)
    torch.testing.assert_close(lp, parts, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lp.numpy(), dag.scipy_log_prob(s), rtol=1e-10)


@SETTINGS
@given(dags(), st.data())
def test_replace_then_back_is_identity(dag: Dag, data: st.DataObject) -> None:
    names = dag.joint.var + dag.joint.cond_var
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    forward = {v: v.upper() for v in chosen}  # upper case: never one of the drawn names
    renamed = dag.joint.replace_var(**forward)
    back = renamed.replace_var(**{new: old for old, new in forward.items()})
    def pixyz(names: list[str], rename: dict[str, str], single: bool) -> list[str]:
        """Pixyz's order after renaming: a single distribution keeps it; a product's renamed nodes go last."""
        if single:
            return [rename.get(v, v) for v in names]
        return [v for v in names if v not in rename] + [rename[v] for v in names if v in rename]

    single = len(dag.nodes) == 1
    assert renamed.var == pixyz(dag.joint.var, forward, single)
    assert renamed.cond_var == pixyz(dag.joint.cond_var, forward, single)
    backward = {new: old for old, new in forward.items()}
    assert (back.var, back.cond_var) == (pixyz(renamed.var, backward, single), pixyz(renamed.cond_var, backward,
                                                                                          single))
    assert sorted(back.var) == sorted(dag.joint.var) and back.prob_factorized_text == dag.joint.prob_factorized_text
    s = dag.joint.sample(dag.inputs(), batch_n=BATCH)
    s_renamed = {forward.get(k, k): v for k, v in s.items()}
    expected = dag.joint.get_log_prob(s)
    torch.testing.assert_close(renamed.get_log_prob(s_renamed), expected, rtol=0, atol=0)
    torch.testing.assert_close(back.get_log_prob(s), expected, rtol=0, atol=0)
    inputs = {forward.get(k, k): v for k, v in dag.inputs().items()}
    assert set(renamed.sample(inputs, batch_n=BATCH, return_all=False)) == set(renamed.var)


@SETTINGS
@given(dags(), st.data())
def test_marginalize_then_sample_keeps_exactly_the_rest(dag: Dag, data: st.DataObject) -> None:
    var = dag.joint.var
    if len(var) < 2:
        return
    dropped = data.draw(st.lists(st.sampled_from(var), min_size=1, max_size=len(var) - 1, unique=True))
    m = dag.joint.marginalize_var(dropped)
    kept = [v for v in var if v not in dropped]
    assert m.var == kept and m.cond_var == dag.joint.cond_var
    inputs = dag.inputs()
    full_order = list(dag.joint.sample(inputs, batch_n=BATCH, return_all=False))
    assert list(m.sample(inputs, batch_n=BATCH, return_all=False)) == [k for k in full_order if k in kept]
    assert set(m.sample(inputs, batch_n=BATCH)) == set(kept) | set(inputs)
