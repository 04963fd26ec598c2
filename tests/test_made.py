"""MADE (`kizuna.nets.MADE`) and `MADEBernoulli` against brute force.

* masks: the autograd Jacobian of the outputs in the inputs is zero exactly where the order says
  (output ``i`` depends on input ``j`` only if ``j`` comes before ``i``), and non-zero wherever a path
  is allowed; with a context, every output (the first included) depends on it;
* normalisation: the probabilities of all :math:`2^D` binary vectors add up to one (float64), with
  and without a context; per-feature log-probabilities add up to the total;
* sampling: Pearson chi-square of 20,000 sequential draws over the :math:`2^4` outcomes against the
  enumerated probabilities (false-alarm rate 1e-3 per test);
* errors name the problem.
"""

from __future__ import annotations

import itertools

import pytest
import scipy.stats as st
import torch
from torch import nn

from kizuna.distributions import MADEBernoulli
from kizuna.nets import MADE

F64 = torch.float64
ALPHA = 1e-3


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _all_binary(d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=F64)


def _jacobian(net: MADE, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """|d out / d x| summed over a batch of points and the n_params outputs: (D_out, D_in)."""
    total = 0
    for row in range(x.shape[0]):
        ctx = None if context is None else context[row:row + 1]
        jac = torch.autograd.functional.jacobian(lambda v, ctx=ctx: net(v.unsqueeze(0), ctx)[0], x[row])
        total = total + jac.abs().sum(0)
    return total


@pytest.mark.parametrize("order", [None, [3, 0, 4, 1, 2]], ids=["natural", "permuted"])
@pytest.mark.parametrize("hidden", [[16], [16, 16]], ids=["1-layer", "2-layers"])
def test_outputs_depend_exactly_on_earlier_inputs(order, hidden) -> None:
    net = MADE(5, hidden, n_params=2, order=order, activation=nn.Tanh).double()
    jac = _jacobian(net, torch.randn(4, 5, dtype=F64))
    position = torch.empty(5, dtype=torch.long)
    position[net.order] = torch.arange(5)
    allowed = position[None, :] < position[:, None]  # (output i, input j): j before i
    assert torch.all(jac[~allowed] == 0)
    assert torch.all(jac[allowed] > 0)


def test_context_reaches_every_output() -> None:
    net = MADE(4, [16], context_features=2, activation=nn.Tanh).double()
    x, c = torch.randn(3, 4, dtype=F64), torch.randn(3, 2, dtype=F64)
    jac_x = _jacobian(net, x, c)
    assert torch.all(jac_x[~(torch.arange(4)[None, :] < torch.arange(4)[:, None])] == 0)
    jac_c = torch.autograd.functional.jacobian(lambda v: net(x, v), c).abs().sum((0, 1, 3, 4))
    assert torch.all(jac_c > 0), "the first output in the order must see the context too"


@pytest.mark.parametrize("d", [1, 6, 10])
def test_probabilities_of_all_binary_vectors_add_up_to_one(d: int) -> None:
    p = MADEBernoulli(d, [32, 32]).double()
    x = _all_binary(d)
    total = p.get_log_prob({"x": x}).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-12)


def test_conditional_probabilities_add_up_to_one_for_every_context() -> None:
    p = MADEBernoulli(5, [32], cond_var=["c"], context_features=3, order=[4, 2, 0, 1, 3]).double()
    x = _all_binary(5)
    for c in torch.randn(4, 3, dtype=F64):
        logp = p.get_log_prob({"x": x, "c": c.expand(len(x), 3)})
        torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-12)
    per_feature = p.get_log_prob({"x": x, "c": torch.zeros(len(x), 3, dtype=F64)}, sum_features=False)
    assert per_feature.shape == x.shape
    torch.testing.assert_close(per_feature.sum(1), p.get_log_prob({"x": x, "c": torch.zeros(len(x), 3, dtype=F64)}))


def _chi_square(p, given: dict, d: int, n: int = 20_000) -> float:
    x = _all_binary(d)
    probs = p.get_log_prob({"x": x, **{k: v[:1].expand(len(x), -1) for k, v in given.items()}}).exp()
    with torch.no_grad():
        draws = p.sample({k: v[:1].expand(n, -1) for k, v in given.items()}, batch_n=n)["x"]
    index = (draws * 2 ** torch.arange(d - 1, -1, -1, dtype=F64)).sum(1).long()  # rows of _all_binary
    counts = torch.bincount(index, minlength=2 ** d).double()
    return st.chisquare(counts.numpy(), (probs * n).detach().numpy()).pvalue


def test_sequential_draws_follow_the_probabilities() -> None:
    p = MADEBernoulli(4, [16], order=[2, 0, 3, 1]).double()
    with torch.no_grad():
        for param in p.parameters():
            param.mul_(3.0)  # sharper conditionals: a wrong order would show
    assert _chi_square(p, {}, 4) > ALPHA


def test_conditional_draws_follow_the_probabilities() -> None:
    p = MADEBernoulli(4, [16], cond_var=["c"], context_features=2).double()
    assert _chi_square(p, {"c": torch.tensor([[1.5, -2.0]], dtype=F64)}, 4) > ALPHA


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="order must be a permutation"):
        MADE(3, [8], order=[0, 0, 1])
    with pytest.raises(ValueError, match="at least one hidden layer"):
        MADE(3, [])
    # before: an order of floats was truncated ([0.9, 1.2] was [0, 1]); one width raised "'int' object is not iterable"
    with pytest.raises(ValueError, match=r"^MADE: order must be a permutation of 0..1 \(integers\), got \[0.89"):
        MADE(2, [4], order=[0.9, 1.2])
    with pytest.raises(TypeError, match=r"^MADE: hidden_features must be a sequence of layer sizes, e.g. \[4\]"):
        MADE(3, 4)
    with pytest.raises(ValueError, match="give context_features"):
        MADEBernoulli(3, [8], cond_var=["c"])
    p = MADEBernoulli(3, [8])
    with pytest.raises(ValueError, match=r"x has shape \(2, 4\), expected \(batch, 3\)"):
        p.get_log_prob({"x": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        p.get_log_prob({"x": torch.full((2, 3), 2.0)})
    with pytest.raises(ValueError, match="reparam"):
        p.sample(batch_n=2, reparam=True)
    net = MADE(3, [8], context_features=2)  # before: "mat1 and mat2 shapes cannot be multiplied"
    with pytest.raises(ValueError, match=r"MADE: the context must be \(batch, 2\).*got shape \(4, 3\)"):
        net(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"MADE: built without a context.*shape \(4, 2\)"):
        MADE(3, [8])(torch.zeros(4, 3), torch.zeros(4, 2))
    assert net(torch.zeros(4, 3), torch.zeros(1, 2)).shape == (4, 1, 3)  # one context for every row


def test_integer_and_boolean_values_are_scored_in_the_networks_dtype() -> None:
    """As the other families take them: integer or boolean bits give the float bits' log-probability; a floating
    value of another dtype than the network's is named."""
    from kizuna.distributions import PixelCNNBernoulli

    torch.manual_seed(0)
    p = MADEBernoulli(4, [8])
    x = torch.randint(0, 2, (3, 4))
    assert torch.equal(p.get_log_prob({"x": x}), p.get_log_prob({"x": x.float()}))
    assert torch.equal(p.get_log_prob({"x": x.bool()}), p.get_log_prob({"x": x.float()}))
    with pytest.raises(ValueError, match="x is torch.float64 but the network is torch.float32"):
        p.get_log_prob({"x": x.double()})
    q = PixelCNNBernoulli(3, 3, hidden_channels=4, n_layers=1)
    bits = torch.rand(2, 1, 3, 3) > 0.5
    assert torch.equal(q.get_log_prob({"x": bits}), q.get_log_prob({"x": bits.float()}))


def test_sample_shape_without_batch_n() -> None:
    """(n, 1, D) draws as a plain family gives (it drew one row for n draws: "shape '[4, 0, 3]' is invalid")."""
    torch.manual_seed(0)
    p = MADEBernoulli(3, hidden_features=[8])
    x = p.sample(sample_shape=[4])["x"]
    assert x.shape == (4, 1, 3) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert p.sample(sample_shape=[4], batch_n=2)["x"].shape == (4, 2, 3)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: MADE(3, [0]), r"MADE: hidden_features\[0\] must be an integer >= 1, got 0"),
    (lambda: MADE(3, [8, 0]), r"MADE: hidden_features\[1\] must be an integer >= 1, got 0"),
    (lambda: MADE(3, [-4]), r"MADE: hidden_features\[0\] must be an integer >= 1, got -4"),
    (lambda: MADE(3, [8], context_features=-1), r"MADE: context_features must be an integer >= 0, got -1"),
    (lambda: MADE(2.5, [8]), r"MADE: in_features must be an integer >= 1, got 2.5"),
    (lambda: MADE(3, [8], n_params=0), r"MADE: n_params must be an integer >= 1, got 0"),
    (lambda: MADEBernoulli(0, [8]), r"MADEBernoulli: in_features must be an integer >= 1, got 0"),
], ids=["hidden0", "hidden8-0", "hidden-4", "context-1", "in2.5", "nparams0", "bernoulli0"])
def test_arguments_are_checked_at_construction(make, message) -> None:
    """Before: a zero-width hidden layer was accepted (every output ignored every input); a negative size raised
    torch's "upper bound and lower bound inconsistent" or "negative dimension"."""
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_integer_sizes_are_taken() -> None:
    import numpy as np

    net = MADE(np.int64(3), [np.int64(8)], n_params=np.int64(2))
    assert net(torch.zeros(2, 3)).shape == (2, 2, 3)


def test_no_context_given_as_none_is_no_context():
    """``context_features=None`` meant no context before the argument checks, and raised a bare TypeError after them
    (MADE, PixelCNN, and MAF / IAF through MADE)."""
    from kizuna.nets import PixelCNN

    assert MADE(4, [8], context_features=None).context_features == 0
    assert PixelCNN(context_features=None).context_features == 0


def test_a_two_dimensional_order_is_refused():
    """An order given as a matrix was flattened silently (a 2×2 ``[[1, 0], [3, 2]]`` read as the order 1, 0, 3, 2)."""
    with pytest.raises(ValueError, match=r"order must be one permutation of 0..3 \(1-D\), got shape \(2, 2\)"):
        MADE(4, [8], order=[[1, 0], [3, 2]])
    assert MADE(4, [8], order=[1, 0, 3, 2]).order.tolist() == [1, 0, 3, 2]


def test_an_empty_batch_with_a_context_is_scored() -> None:
    # (the context was flattened with reshape(0, -1), which torch cannot size for zero rows)
    p = MADEBernoulli(3, [8], cond_var=["c"], context_features=2).double()
    logp = p.get_log_prob({"x": torch.zeros(0, 3, dtype=F64), "c": torch.zeros(0, 2, dtype=F64)})
    assert logp.shape == (0,)
    net = MADE(3, [8], 2, context_features=2)
    assert net(torch.zeros(0, 3), torch.zeros(0, 2)).shape == (0, 2, 3)
