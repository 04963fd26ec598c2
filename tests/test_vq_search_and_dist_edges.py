"""The VQ nearest-code search (a distance matrix, not every difference vector) and edge cases of the families.

References: the codes of the broadcast formula ``argmin_j sum_d (z_d - e_jd)^2`` (the search's old form) and of a
float64 brute force; the straight-through value and gradients recomputed by hand from those codes; the largest
tensor any operation of the search creates (seen by a dispatch mode) against the ``positions x K x D`` of the old
form; empty batches scored to shape ``(0,)`` with and without validation; the exact error messages.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import kizuna.distributions as K
from kizuna.distributions.vq import VectorQuantizer
from kizuna.losses import VQCommitment


@pytest.fixture(autouse=True)
def _seeded(one_thread):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def broadcast_codes(z_e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The old search: every difference vector, squared and summed; argmin's first index on ties."""
    return (z_e.detach().movedim(1, -1).unsqueeze(-2) - codebook.detach()).pow(2).sum(-1).argmin(-1)


# ------------------------------------------------------------------ VQ: the codes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 20.0])  # data and codes far from the origin: the centred distances
def test_vq_search_picks_the_codes_of_the_broadcast_formula(dtype: torch.dtype, offset: float) -> None:
    q = VectorQuantizer(nn.Identity(), n_codes=64, code_dim=16).to(dtype)
    with torch.no_grad():
        q.codebook.weight.copy_(torch.randn(64, 16, dtype=dtype) + offset)
    x = torch.randn(4, 16, 3, 5, dtype=dtype) + offset
    _, k, e = q.encode(x)
    assert k.shape == (4, 3, 5) and k.dtype == torch.int64
    assert torch.equal(k, broadcast_codes(x, q.codebook.weight))
    exact = broadcast_codes(x.double(), q.codebook.weight.double())
    assert torch.equal(k, exact)
    assert torch.equal(e, q.codebook.weight[k].movedim(-1, 1))


def test_vq_search_breaks_ties_to_the_lowest_index_as_before() -> None:
    q = VectorQuantizer(nn.Identity(), n_codes=40, code_dim=6)
    with torch.no_grad():
        w = torch.randn(40, 6)
        w[17] = w[5]  # duplicated codes: exact ties at every position
        w[39] = w[5]
        w[30] = w[12]
        q.codebook.weight.copy_(w)
    x = torch.randn(3, 6, 4, 4)
    x[0, :, 0, 0] = w[5]  # on a duplicated code itself
    x[1, :, 2, 3] = w[12]
    x[2] = w[5].view(6, 1, 1) + 1e-3 * torch.randn(6, 4, 4)  # near it: codes 5, 17, 39 tie
    _, k, _ = q.encode(x)
    assert torch.equal(k, broadcast_codes(x, w))
    assert k[0, 0, 0] == 5 and k[1, 2, 3] == 12 and (k[2] == 5).all()
    assert not torch.isin(k, torch.tensor([17, 39, 30])).any()
    assert torch.equal(q._encode(x)[1], k)  # deterministic


def test_unchecked_a_non_finite_position_spoils_its_own_code_only() -> None:
    """Without validation (every step after a Model's first) a NaN position got code 0 as before, but the search's
    common centre, the joint mean of positions and codes, was NaN: every other position got code 0 too. The search
    is centred on the codebook's mean now."""
    from kizuna.distributions import validation

    q = VectorQuantizer(nn.Identity(), n_codes=32, code_dim=8)
    x = torch.randn(2, 8, 4, 4)
    x[1, :, 2, 2] = float("nan")
    with validation(False):
        _, k, _ = q.encode(x)
    expected = broadcast_codes(x, q.codebook.weight)
    ok = torch.ones_like(k, dtype=torch.bool)
    ok[1, 2, 2] = False
    assert torch.equal(k[ok], expected[ok]) and len(set(k[ok].tolist())) > 1


def test_vq_search_promotes_mixed_dtypes_as_the_differences_did() -> None:
    q = VectorQuantizer(nn.Identity(), n_codes=32, code_dim=8)  # a float32 codebook
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)  # a float64 encoder output
    _, k, e = q.encode(x)
    assert torch.equal(k, broadcast_codes(x, q.codebook.weight.double()))
    assert e.dtype == torch.float32


def test_vq_straight_through_values_and_gradients_are_the_old_ones() -> None:
    q = VectorQuantizer(nn.Conv2d(3, 8, 1), n_codes=24, code_dim=8)
    x = torch.randn(5, 3, 4, 4)
    s = q.sample({"x": x})
    z_e = q.encoder(x)
    k = broadcast_codes(z_e, q.codebook.weight)
    e = q.codebook.weight[k].movedim(-1, 1)
    assert torch.equal(s["z"], (z_e + (e - z_e).detach()))  # bitwise: the same codes give the same value
    assert torch.equal(s["k"], nn.functional.one_hot(k, 24).float())
    upstream = torch.randn_like(s["z"])
    w, b = q.encoder.weight, q.encoder.bias
    got = torch.autograd.grad((s["z"] * upstream).sum(), [w, b])
    want = torch.autograd.grad((z_e * upstream).sum(), [w, b])  # straight through to the encoder
    for g, r in zip(got, want, strict=True):
        assert torch.allclose(g, r, rtol=0, atol=1e-6)  # (torch.allclose: assert_close imports DTensor, 2-3 s)
    # the codebook's gradient from the commitment loss: -2 sum (z_e - e_j) over the positions assigned to code j
    loss = VQCommitment(q, beta=0.25).eval({"x": x}).sum()
    (gw,) = torch.autograd.grad(loss, q.codebook.weight)
    per_pos = 2 * (e - z_e).detach().movedim(1, -1).reshape(-1, 8)
    want_w = torch.zeros_like(q.codebook.weight).index_add_(0, k.reshape(-1), per_pos)
    assert torch.allclose(gw, want_w, rtol=0, atol=1e-6)


class _LargestTensor(TorchFunctionMode):
    """The largest number of elements of any tensor a torch function or tensor method returns (a function mode: a
    dispatch mode's first use costs 2-3 s of imports)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_vq_search_makes_no_positions_by_codes_by_dim_tensor() -> None:
    # a CIFAR-sized latent: 32 x 8 x 8 positions, K = 512 codes of D = 64; the differences took 2 x 256 MiB
    n, k_codes, d = 32 * 8 * 8, 512, 64
    q = VectorQuantizer(nn.Identity(), n_codes=k_codes, code_dim=d)
    x = torch.randn(32, d, 8, 8)
    with torch.no_grad(), _LargestTensor() as seen:
        _, k, _ = q._encode(x)
    assert seen.largest <= n * k_codes, (seen.largest, n * k_codes * d)  # the distance matrix at most
    assert torch.equal(k[:2], broadcast_codes(x[:2], q.codebook.weight))


# ------------------------------------------------------------------ families: empty batches

F = 3
PC = torch.tensor([0.2, 0.3, 0.5])
FAMILIES = {
    "Normal": lambda: K.Normal(var="x", loc=0.3, scale=0.7, features_shape=[F]),
    "Laplace": lambda: K.Laplace(var="x", loc=0.3, scale=0.7, features_shape=[F]),
    "LogNormal": lambda: K.LogNormal(var="x", loc=0.3, scale=0.7, features_shape=[F]),
    "StudentT": lambda: K.StudentT(var="x", df=3.0, loc=0.3, scale=0.7, features_shape=[F]),
    "Gamma": lambda: K.Gamma(var="x", concentration=2.0, rate=0.3, features_shape=[F]),
    "Beta": lambda: K.Beta(var="x", concentration1=2.0, concentration0=3.0, features_shape=[F]),
    "Dirichlet": lambda: K.Dirichlet(var="x", concentration=torch.ones(F)),
    "VonMises": lambda: K.VonMises(var="x", loc=0.3, concentration=2.0, features_shape=[F]),
    "MultivariateNormal": lambda: K.MultivariateNormal(var="x", loc=torch.zeros(F), covariance_matrix=2 * torch.eye(F)),
    "Poisson": lambda: K.Poisson(var="x", rate=2.0, features_shape=[F]),
    "Bernoulli": lambda: K.Bernoulli(var="x", probs=0.3, features_shape=[F]),
    "FactorizedBernoulli": lambda: K.FactorizedBernoulli(var="x", probs=0.3, features_shape=[F]),
    "Categorical": lambda: K.Categorical(var="x", probs=PC),
    "Multinomial": lambda: K.Multinomial(var="x", total_count=4, probs=PC),
    "BinaryConcrete": lambda: K.BinaryConcrete(var="x", temperature=0.5, probs=PC),
    "Concrete": lambda: K.Concrete(var="x", temperature=0.5, probs=PC),
    "RelaxedBernoulli": lambda: K.RelaxedBernoulli(var="x", probs=PC),
    "RelaxedCategorical": lambda: K.RelaxedCategorical(var="x", probs=PC),
}


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_an_empty_batch_scores_to_no_rows(family: str, validate: bool) -> None:
    p = FAMILIES[family]()
    with K.validation(validate):
        x = p.sample(batch_n=0)["x"]
        assert x.shape[0] == 0
        lp = p.get_log_prob({"x": x})
        assert lp.shape == (0,)
        with torch.enable_grad():  # the graph-building path too
            assert p.get_log_prob({"x": x}).shape == (0,)
        assert p.get_log_prob({"x": x}, sum_features=False).shape[0] == 0


# ------------------------------------------------------------------ families: named errors


@pytest.mark.parametrize("family,hint", [("BinaryConcrete", "RelaxedBernoulli"), ("Concrete", "RelaxedCategorical")])
def test_concrete_moments_raise_a_named_error(family: str, hint: str) -> None:
    p = FAMILIES[family]()
    for call, what in [(p.sample_mean, "mean"), (p.sample_variance, "variance"),
                       (lambda: p.sample(batch_n=2, sample_mean=True), "mean")]:
        with pytest.raises(NotImplementedError,
                           match=rf"^p\(x\) \({family}\) has no closed-form {what}; {hint} draws the same way"):
            call()
    joint = K.Normal(var="y", cond_var="x", loc="x", scale=1.0) * p
    with pytest.raises(NotImplementedError, match=rf"^p\(x\) \({family}\) has no closed-form mean"):
        joint.sample(batch_n=2, sample_mean=True)


CONDITIONAL = {
    "Normal": lambda: K.Normal(var="x", cond_var="m", loc="m", scale=1.0),
    "RelaxedBernoulli": lambda: K.RelaxedBernoulli(var="x", cond_var="m", probs="m"),
    "Bernoulli": lambda: K.Bernoulli(var="x", cond_var="m", probs="m"),
}


@pytest.mark.parametrize("family", sorted(CONDITIONAL))
@pytest.mark.parametrize("sample_mean", [False, True])
def test_sample_mean_with_conflicting_rows_raises_the_draws_error(family: str, sample_mean: bool) -> None:
    p = CONDITIONAL[family]()
    m = torch.full((3, 2), 0.25)
    with pytest.raises(ValueError, match=r"^p\(x\|m\): batch_n=5 but the conditioning values \(m\) have batch size 3$"):
        p.sample({"m": m}, batch_n=5, sample_mean=sample_mean)
    # rows that fit: one row of conditions expanded to batch_n, the mean being the parameter
    mean = p.sample({"m": m[:1]}, batch_n=4, sample_mean=True)["x"]
    assert torch.equal(mean, m[:1].expand(4, 2))


# ------------------------------------------------------------------ ProductOfNormal in a product


def test_a_product_of_normals_is_drawn_after_the_factors_of_its_inputs_as_documented() -> None:
    qx = K.Normal(var="z", cond_var="x", loc="x", scale=0.01)
    qy = K.Normal(var="z", cond_var="y", loc="y", scale=0.01)
    poe = K.ProductOfNormal([qx, qy], features_shape=[1])
    px = K.Normal(var="x", loc=100.0, scale=0.01, features_shape=[1])
    joint = poe * px
    assert [f.prob_text for f in joint._order] == ["p(x)", "p(z|x,y)"]
    s = joint.sample(batch_n=3, sample_mean=True)
    # the x-expert with the drawn x: precision-weighted with the N(0, 1) prior, 100 * 1e4 / (1e4 + 1)
    assert torch.allclose(s["z"], torch.full((3, 1), 100 * 1e4 / (1e4 + 1)), rtol=1e-6, atol=0)
    doc = " ".join(K.ProductOfNormal.__doc__.split())
    assert "drawn after the factors that draw its conditioning variables" in doc
    assert "does not wait" not in doc
