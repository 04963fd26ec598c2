"""Stop 45 review fixes in the classical modules and the module graph (reviews B finding 1, C finding 1 and minors).

* HMM / MarkovChain: a list of sequences is refused with the ``np.concatenate`` / ``lengths=`` advice, as
  docs/modules_classical.md says. A list of equal-length 1-D arrays was fitted without a word as ONE sequence of
  ``len(X)`` steps with ``T`` features; equal-length 2-D ones gave the generic shape error without the advice.
  Nested lists of numbers (scikit-learn's rows) are still rows.
* Graph: a parent or child connected to one of its modules after it was built made it run without that module (the
  GMM under a new MM dropped its mixing weights for a prior never sent); `update` / `fit` / `save` now raise the
  constructor's `GraphError`. `Graph.fit` takes a numpy integer ``n_iter`` as seeds and schedules do.
"""

import re

import numpy as np
import pytest
import torch

from kizuna import modules as km
from kizuna.modules import GraphError

ADVICE = "give their rows as one array and their lengths: fit(np.concatenate(X), lengths=[len(x) for x in X])"
ROWS = " (if each array is one row of a single sequence: np.stack(X))"


def refused(owner: str, n: int, which: str, sizes: list[int], rows: str = "") -> str:
    """The exact message (anchored regex) of a list of sequences refused."""
    plural = "s" if n != 1 else ""
    return "^" + re.escape(f"{owner}: X is a list of {n} sequence{plural} {which} {sizes}; {ADVICE}{rows}") + "$"


def test_a_list_of_equal_length_sequences_is_refused_with_the_lengths_advice() -> None:
    rng = np.random.default_rng(0)
    u1, u2 = rng.normal(size=50), rng.normal(size=50)
    s1, s2 = rng.normal(size=(50, 2)), rng.normal(size=(50, 2))
    hmm = km.HiddenMarkovModel(2, random_state=0)
    # equal-length univariate sequences: was a fit of ONE sequence of 2 steps, 50 features (means_ (2, 50))
    with pytest.raises(ValueError, match=refused("HMM", 2, "of lengths", [50, 50], ROWS)):
        hmm.fit([u1, u2])
    with pytest.raises(ValueError, match=refused("HMM", 3, "of lengths", [50, 50, 50], ROWS)):
        hmm.fit((torch.as_tensor(u1), torch.as_tensor(u2), torch.as_tensor(u1)))  # a tuple of tensors
    # equal-length 2-D sequences: was "X must be (n_samples, n_features) ... got shape (2, 50, 2)"
    with pytest.raises(ValueError, match=refused("HMM", 2, "of lengths", [50, 50])):
        hmm.fit([s1, s2])
    with pytest.raises(ValueError, match=refused("HMM", 1, "of lengths", [50])):
        hmm.fit([s1])  # one sequence in a list
    with pytest.raises(ValueError, match=refused("HMM", 2, "of lengths", [50, 50])):
        hmm.fit([s1.tolist(), s2.tolist()])  # nested lists three deep
    hmm.fit(s1)
    with pytest.raises(ValueError, match=refused("HMM", 2, "of lengths", [50, 50])):
        hmm.predict([s1, s2])  # every method reads X the same way
    # categorical: arrays of symbols, and lists of more than one symbol each (rows hold one symbol)
    c1, c2 = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    cat = km.HiddenMarkovModel(2, emission="categorical", random_state=0)
    with pytest.raises(ValueError, match=refused("HMM", 2, "of lengths", [40, 40], ROWS)):
        cat.fit([c1, c2])
    with pytest.raises(ValueError, match=refused("HMM", 2, "of lengths", [3, 3])):
        cat.fit([[0, 1, 1], [1, 0, 2]])
    # MarkovChain: was "X must be 2-D (n_samples, n_features), got shape (2, 20, 3)"
    e1, e2 = rng.dirichlet(np.ones(3), 20), rng.dirichlet(np.ones(3), 20)
    with pytest.raises(ValueError, match=refused("MarkovChain", 2, "of lengths", [20, 20])):
        km.MarkovChain().fit([e1, e2])
    with pytest.raises(ValueError, match=refused("MarkovChain", 2, "of lengths", [20, 20])):
        km.MarkovChain().fit([e1.tolist(), e2.tolist()])
    with pytest.raises(ValueError, match=refused("MM mm", 2, "of lengths", [20, 20])):
        km.MM(3, name="mm").fit([e1, e2])
    # different lengths keep their message
    with pytest.raises(ValueError, match=refused("MarkovChain", 2, "of different lengths", [20, 5])):
        km.MarkovChain().fit([e1, e2[:5]])


def test_what_the_advice_gives_and_rows_as_nested_lists_are_still_accepted() -> None:
    rng = np.random.default_rng(1)
    s1, s2 = rng.normal(size=(30, 2)), rng.normal(size=(20, 2))
    x = np.concatenate([s1, s2])
    ref = km.HiddenMarkovModel(2, n_iter=3, random_state=0).fit(x, lengths=[30, 20])
    rows = km.HiddenMarkovModel(2, n_iter=3, random_state=0).fit(x.tolist(), lengths=[30, 20])  # rows as lists
    assert torch.equal(rows.means_, ref.means_) and torch.equal(rows.transmat_, ref.transmat_)
    symbols = rng.integers(0, 3, 40)
    cat = km.HiddenMarkovModel(2, emission="categorical", n_iter=3, random_state=0)
    ref = cat.fit(symbols, lengths=[25, 15]).emissionprob_.clone()
    for given in (symbols.tolist(), [[int(s)] for s in symbols]):  # (N,) and (N, 1) as lists
        assert torch.equal(cat.fit(given, lengths=[25, 15]).emissionprob_, ref)
    e = rng.dirichlet(np.ones(3), 30)
    ref = km.MarkovChain(n_iter=2).fit(e, lengths=[10, 20]).transmat_
    assert torch.equal(km.MarkovChain(n_iter=2).fit(e.tolist(), lengths=[10, 20]).transmat_, ref)


def stale_graph() -> tuple[km.GMM, km.Graph]:
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 1, generator=gen) - 1.5, torch.randn(10, 1, generator=gen) + 1.5]).double()
    g = km.GMM(2, name="g", algorithm="em", max_iter=5, random_state=0).connect(km.Observation(x, name="o"))
    return g, km.Graph([g]).fit(1, seed=0)


def test_a_graph_refuses_to_run_or_save_after_a_parent_is_connected_to_one_of_its_modules(tmp_path) -> None:
    g, graph = stale_graph()
    before = g.posterior.clone()
    km.MM(2, name="mm").connect(g)  # after the graph was built: it ran without mm, g without its weights
    message = "^" + re.escape("g's parent(s) ['mm'] are not in the graph; add them to Graph([...])") + "$"
    with pytest.raises(GraphError, match=message):
        km.Graph([g])  # the constructor's own error
    with pytest.raises(GraphError, match=message):
        graph.fit(1, seed=1)
    with pytest.raises(GraphError, match=message):
        graph.update()
    with pytest.raises(GraphError, match=message):
        graph.save(tmp_path / "g")
    assert torch.equal(g.posterior, before) and graph.iteration == 1 and not (tmp_path / "g").exists()


def two_gmms_joined() -> tuple[list[km.Module], km.Graph]:
    """o1 <- g1, o2 <- g2, joined by a TailToTail t: the modules and their graph, fitted once."""
    x = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    o1, o2 = km.Observation(x, name="o1"), km.Observation(x + 1, name="o2")
    g1 = km.GMM(2, name="g1", algorithm="em", max_iter=2, random_state=0).connect(o1)
    g2 = km.GMM(2, name="g2", algorithm="em", max_iter=2, random_state=0).connect(o2)
    t = km.TailToTail(name="t").connect(g1, g2)
    return [o1, o2, g1, g2, t], km.Graph([t]).fit(1, seed=0)


def test_a_graph_refuses_a_child_connected_after_it_was_built_and_any_other_rewiring() -> None:
    (o1, _, g1, g2, t), graph = two_gmms_joined()
    g3 = km.GMM(2, name="g3", algorithm="em", max_iter=2).connect(km.Observation(torch.zeros(20, 2), name="o3"))
    t.connect(g3)  # a child (with its observation) the graph never collected
    with pytest.raises(GraphError, match="^" + re.escape(
            "t's child(ren) ['g3'] are not in the graph (connected after it was built); build a new Graph([...]) "
            "with them") + "$"):
        graph.fit(1, seed=0)
    # a new edge between two modules of the graph: no module outside, still not the graph that was checked
    (o1, _, g1, g2, t), graph = two_gmms_joined()
    g2.connect(o1)
    with pytest.raises(GraphError, match="^" + re.escape(
            "the wiring of modules ['o1', 'g2'] changed after the graph was built; build a new Graph([...])") + "$"):
        graph.update()


def test_graph_fit_takes_a_numpy_integer_n_iter() -> None:
    g, graph = stale_graph()
    graph.fit(np.int64(2), seed=1)
    h, reference = stale_graph()
    reference.fit(2, seed=1)
    assert graph.iteration == reference.iteration == 3 and torch.equal(g.posterior, h.posterior)
    for bad in (True, np.bool_(True), 2.0, np.float64(2.0), -1, np.int64(-1)):
        with pytest.raises(ValueError, match="^" + re.escape(
                f"Graph.fit: n_iter must be a non-negative int (Python or numpy), got {bad!r}") + "$"):
            graph.fit(bad, seed=0)
