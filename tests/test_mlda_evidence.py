"""MLDA evidence (`kizuna.modules.mlda_evidence`): SERKET's truncation against a line-by-line numpy replica of
what its MLDA does, kizuna's rounding against `mlda.as_counts`, and the largest-remainder apportionment
against its definition."""

import numpy as np
import pytest
import torch

from kizuna.modules import MLDA
from kizuna.modules import mlda_evidence as ev
from kizuna.modules.lda.sampler import as_counts


def serket_replica(data: np.ndarray, weight: float) -> np.ndarray:
    """naka-lab/Serket mlda/__init__.py, the facts of its update(): negatives to 0, rows over their sums
    (a zero sum divides by 1), times the weight, cast to int32."""
    data = data.copy()
    data[data < 0] = 0
    divider = np.where(data.sum(1) == 0, 1, data.sum(1))
    data = (data.T / divider).T * weight
    return np.array(data, dtype=np.int32)


def inputs():
    rng = np.random.default_rng(0)
    posterior = rng.dirichlet(np.full(10, 0.05), size=300)  # peaked class posteriors, like a GMM's
    histogram = rng.poisson(0.08, size=(300, 2400)).astype(float)  # sparse HAC-like counts
    histogram[5] = 0.0  # an empty row
    return posterior, histogram


@pytest.mark.parametrize("weight", [200, 20, 37.5])
def test_floor_is_serkets_truncation(weight):
    for x in inputs():
        got = ev.token_counts(x, weight, "floor")
        np.testing.assert_array_equal(got.numpy(), serket_replica(x, weight))
        assert got.dtype == torch.long


def test_round_is_what_kizunas_mlda_does():
    for x in inputs():
        np.testing.assert_array_equal(ev.token_counts(x, 200, "round").numpy(), as_counts(x, 200, "x").numpy())
        np.testing.assert_array_equal(ev.token_counts(x, None).numpy(), as_counts(x, None, "x").numpy())


def test_largest_remainder_keeps_every_token_and_each_count_within_one():
    for x in inputs():
        t = ev.rescaled(x, 200).numpy()
        got = ev.token_counts(x, 200, "largest_remainder").numpy()
        nonzero = x.sum(1) > 0
        np.testing.assert_array_equal(got.sum(1)[nonzero], 200)
        assert (got[~nonzero] == 0).all()
        assert (np.abs(got - t) < 1).all()
        for row, ti in zip(got[:20], t[:20]):  # the extra tokens go to the largest remainders
            low = np.floor(ti)
            extra = row - low
            assert set(np.unique(extra)) <= {0, 1}
            if extra.sum():
                assert (ti - low)[extra == 1].min() >= (ti - low)[extra == 0].max() - 1e-12


def test_floor_drops_what_is_below_one_token():
    got = ev.token_counts([[0.996, 0.003, 0.001], [0.0, 0.0, 0.0]], 200, "floor")
    assert got.tolist() == [[199, 0, 0], [0, 0, 0]]
    assert ev.token_counts([[0.996, 0.003, 0.001]], 200, "round").tolist() == [[199, 1, 0]]


def test_errors():
    with pytest.raises(ValueError, match="rounding"):
        ev.token_counts([[1.0]], 2, "ceil")
    with pytest.raises(ValueError, match="non-negative"):
        ev.token_counts([[1.0, -1.0]], 2, "floor")
    with pytest.raises(ValueError, match="N x V"):
        ev.token_counts([1.0, 2.0], 2)
    with pytest.raises(ValueError, match="weight"):
        ev.token_counts([[1.0, 2.0]], 0)


@pytest.mark.parametrize("rounding", ["floor", "largest_remainder"])
def test_the_mlda_takes_the_rounding(rounding):
    """``MLDA(weights=w, rounding=r)`` learns exactly what an MLDA without weights learns from the tokens
    `token_counts` makes (same seed): the option reaches the sampler."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(40, 6, generator=g, dtype=torch.float64), 1)
    words = torch.poisson(torch.full((40, 5), 4.0, dtype=torch.float64), generator=g)
    fitted = MLDA(3, [50, None], rounding=rounding, max_iter=20, random_state=0).fit([probs, words])
    tokens = ev.token_counts(probs, 50, rounding)
    if rounding == "largest_remainder":
        assert (tokens.sum(1) == 50).all()
    else:
        assert (tokens.sum(1) <= 50).all() and (tokens.sum(1) < 50).any()
    reference = MLDA(3, None, max_iter=20, random_state=0).fit([tokens.double(), words])
    torch.testing.assert_close(fitted.doc_topic_, reference.doc_topic_)
    with pytest.raises(ValueError, match="rounding must be one of"):
        MLDA(3, rounding="ceil").fit([words])


def test_half_precision_counts_are_counted_in_float32(monkeypatch):
    """float16 input kept its precision in the chain's count tables, which count by ones only to 2048: two samples
    of 6000 tokens gave a document-topic table summing to 4096 (torch backend), or a bare NotImplementedError under
    numba. The chain now counts in float32 at least, on both backends: every token counted."""
    from kizuna.modules import MultimodalLDA
    from kizuna.modules.lda import sampler

    tables = []

    class Recorded(sampler.Tables):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tables.append(self)

    monkeypatch.setattr(sampler, "Tables", Recorded)
    x = np.zeros((2, 4))
    x[0, :2] = x[1, 2:] = 3000
    for backend in ("torch", "auto"):
        tables.clear()
        model = MultimodalLDA(2, max_iter=5, random_state=0, backend=backend).fit([x.astype(np.float16)])
        assert tables[-1].n_dk.dtype == torch.float32 and float(tables[-1].n_dk.sum()) == 12000
        assert np.isfinite(np.asarray(model.doc_topic_)).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -1.0])
def test_concentrations_and_weights_must_be_positive_and_finite(bad):
    """NaN or inf concentrations were accepted (the check was ``p <= 0``) and the fit gave NaN estimates; an infinite
    weight gave negative token counts (-2^63) and then an unrelated error."""
    from kizuna.modules import MultimodalLDA

    x = [np.array([[1.0, 3.0], [2.0, 2.0]])]
    for kwargs in ({"alpha": bad}, {"beta": bad}, {"doc_topic_prior": bad}):
        with pytest.raises(ValueError, match="concentrations must be positive and finite"):
            MultimodalLDA(2, max_iter=2, random_state=0, **kwargs).fit(x)
    with pytest.raises(ValueError, match="weight must be positive and finite"):
        ev.token_counts([[1.0, 3.0]], bad)


def test_round_rescales_float32_counts_in_float64_as_token_counts_does():
    """A float32 row rescaled in float32 landed on the other side of .5 now and then (102 of 20,000 random rows
    with half-integer weights): `as_counts` and `token_counts` (float64) gave different tokens."""
    g = np.random.default_rng(1)
    for _ in range(3000):  # small integer counts, half-integer weights: rows that land near .5 once rescaled
        x, weight = g.integers(0, 20, (1, 6)).astype(np.float32), float(g.integers(1, 400)) / 2
        assert torch.equal(as_counts(x, weight, "x", "round"), ev.token_counts(x, weight, "round"))
