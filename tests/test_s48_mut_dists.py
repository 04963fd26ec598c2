"""Stop 48 mutation review (area MA: distribution families and flows): reference-checked tests that kill mutants
which survived the suite. Each compares kizuna's numbers with an independent reference (scipy.stats,
torch.distributions / torch.nn, closed forms, enumeration, finite differences), on the fast paths that run with
validation off (as in Model's training steps after the first) as well as with it on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats as st
from torch import distributions as TD

from kizuna.distributions import Normal, validation

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ families
@pytest.mark.parametrize("checks", [True, False])
def test_normal_sample_variance_is_scale_squared_in_both_validation_modes(checks: bool) -> None:
    """``Normal.sample_variance`` is sigma^2 (scipy's ``norm.var``); with validation off it is read from the parameters
    by a shortcut (a mutant returning sigma there survived: the suite checks the moments with validation on only)."""
    scale = torch.tensor([0.5, 2.0, 3.0], dtype=F64)
    p = Normal(var=["x"], loc=torch.tensor([1.0, -2.0, 0.0], dtype=F64), scale=scale)
    with validation(checks):
        var = p.sample_variance()
    assert var.shape == (1, 3)
    np.testing.assert_allclose(var[0].numpy(), st.norm(0.0, scale.numpy()).var(), rtol=1e-12)



def test_inverse_transformed_distribution_scores_its_own_draw_as_a_fresh_value() -> None:
    """As above in the density-estimation direction: a reparameterised draw x = f^-1(z) scored in the same
    evaluation (memo) equals its fresh density log N(f(x)) + log|det J_f(x)|."""
    from kizuna.distributions import InverseTransformedDistribution
    from kizuna.flows import AffineCoupling, FlowList, Reverse
    from kizuna.losses import Expectation

    torch.manual_seed(0)
    f = FlowList([AffineCoupling(2, hidden_features=8), Reverse(2), AffineCoupling(2, hidden_features=8)]).double()
    with torch.no_grad():
        for p in f.parameters():
            p.normal_(0.0, 0.5)
    prior = Normal(var=["z"], loc=torch.zeros(2, dtype=F64), scale=torch.ones(2, dtype=F64))
    p = InverseTransformedDistribution(prior, f, var=["x"])
    value, draws = Expectation(p, p.log_prob()).eval({}, batch_n=5, return_dict=True)
    x = draws["x"].detach().clone()
    torch.testing.assert_close(value, p.get_log_prob({"x": x}))
    z, logdet = f.forward_and_logdet(x)
    torch.testing.assert_close(value.detach(), (TD.Normal(0.0, 1.0).log_prob(z).sum(1) + logdet).detach())



@pytest.mark.parametrize("lazy", [False, True])
def test_block_wise_scoring_of_many_rows_matches_torch(lazy: bool) -> None:
    """Without gradients and with validation off, more than BLOCK_ELEMENTS entries are scored block by block, the
    per-row parameters sliced with the block, and a value of repeated rows (`RepeatedRows`, an importance-weighted
    estimate's images) against a tiled copy of its source whose length is a multiple of the source's rows. 512
    features of 3 rows repeated 700 times: blocks of 2,046 rows (a block of 2,048 misaligned the tiled source;
    parameters not sliced scored every block with the first one's). Reference: torch.distributions.Normal."""
    from kizuna.distributions.base import BLOCK_ELEMENTS, RepeatedRows, repeat_batch

    g = torch.Generator().manual_seed(0)
    source = torch.randn(3, 512, generator=g, dtype=F64)
    n = 700
    assert n * source.numel() > BLOCK_ELEMENTS
    x = RepeatedRows(source, n) if lazy else repeat_batch(source, n)
    m = torch.randn(n * 3, 512, generator=g, dtype=F64)
    p = Normal(var=["x"], cond_var=["m"], loc="m", scale=0.7)
    with torch.no_grad(), validation(False):
        got = p.get_log_prob({"x": x, "m": m})
    want = TD.Normal(m, 0.7).log_prob(repeat_batch(source, n)).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)



def test_batchnorm_flow_running_statistics_follow_the_documented_update() -> None:
    """running <- (1 - m) running + m batch, the batch's variance the biased one (module docstring); evaluation mode
    then normalises with them: z = (x - running_mean) / sqrt(running_var + eps) e^gamma + beta, log-det
    sum(gamma - 1/2 log(running_var + eps))."""
    from kizuna.flows import BatchNorm1d

    g = torch.Generator().manual_seed(0)
    f = BatchNorm1d(3, momentum=0.25).double()
    xs = [torch.randn(50, 3, generator=g, dtype=F64) * 2 + 1 for _ in range(3)]
    mean, var = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    for x in xs:
        f(x)
        mean = 0.75 * mean + 0.25 * x.mean(0)
        var = 0.75 * var + 0.25 * x.var(0, unbiased=False)
    torch.testing.assert_close(f.running_mean, mean)
    torch.testing.assert_close(f.running_var, var)
    with torch.no_grad():
        f.log_gamma.copy_(torch.tensor([0.1, -0.2, 0.3]))
        f.beta.copy_(torch.tensor([1.0, 0.0, -1.0]))
    f.eval()
    x = torch.randn(4, 3, generator=g, dtype=F64)
    z, logdet = f.forward_and_logdet(x)
    want = (x - mean) / (var + f.eps).sqrt() * f.log_gamma.detach().exp() + f.beta.detach()
    torch.testing.assert_close(z.detach(), want)
    torch.testing.assert_close(logdet.detach(), (f.log_gamma.detach() - 0.5 * (var + f.eps).log()).sum().expand(4))



def test_decomposed_channel_conv_starts_as_a_rotation_and_reads_pixyz_signs() -> None:
    """``ChannelConv(C, decomposed=True)`` starts as a random rotation (class docstring: W W^T = I, |det W| = 1), and a
    Pixyz checkpoint (``p``, ``sign_s``, ``l``, ``u``, ``log_s``) gives Pixyz's matrix
    W = p (l * tril(1, -1) + I) (u * triu(1, 1) + diag(sign_s * exp(log_s))): the signs of the diagonal are part of
    W (leaving them out keeps a valid log-det but another map, silently, for a loaded Pixyz model)."""
    from kizuna.flows import ChannelConv

    torch.manual_seed(0)
    f = ChannelConv(4, decomposed=True).double()
    w = f.matrix().detach()
    torch.testing.assert_close(w @ w.T, torch.eye(4, dtype=F64), rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(1)
    p = torch.eye(4, dtype=F64)[[2, 0, 3, 1]]
    sign = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)
    l_, u_ = torch.randn(4, 4, generator=g, dtype=F64), torch.randn(4, 4, generator=g, dtype=F64)
    log_s = 0.3 * torch.randn(4, generator=g, dtype=F64)
    f.load_state_dict({"p": p, "sign_s": sign, "l": l_, "u": u_, "log_s": log_s})
    mask = torch.tril(torch.ones(4, 4, dtype=F64), -1)
    want = p @ (l_ * mask + torch.eye(4, dtype=F64)) @ (u_ * mask.T + torch.diag(sign * log_s.exp()))
    torch.testing.assert_close(f.matrix().detach(), want)
    x = torch.randn(3, 4, 2, 2, generator=g, dtype=F64)
    z, logdet = f.forward_and_logdet(x)
    torch.testing.assert_close(z.detach(), torch.einsum("ij,bjhw->bihw", want, x))
    torch.testing.assert_close(logdet.detach(), (4 * torch.linalg.slogdet(want)[1]).expand(3))



def test_pixelcnn_categorical_draws_follow_its_density_with_strong_dependencies() -> None:
    """Raster-order draws of the code grid have the distribution ``get_log_prob`` enumerates (chi-square over the
    2^4 grids of 2 codes on 2 x 2, 20,000 draws, fixed seed), with weights scaled up so that each position depends
    strongly on those before it (the untrained network's near-uniform conditionals hid a sampler that read the
    logits of position (j, i) at (i, j))."""
    from kizuna.distributions import PixelCNNCategorical

    torch.manual_seed(0)
    p = PixelCNNCategorical(2, 2, 2, hidden_channels=8, n_layers=2, kernel_size=3)
    with torch.no_grad():
        for w in p.parameters():
            w.mul_(3.0)
    grids = torch.nn.functional.one_hot(torch.tensor(list(itertools.product(range(2), repeat=4))), 2)
    grids = grids.reshape(-1, 2, 2, 2).float()
    with torch.no_grad():
        probs = p.get_log_prob({"k": grids}).exp().double()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.manual_seed(1)
    draws = p.sample(batch_n=20000)["k"].argmax(-1).reshape(-1, 4)
    counts = torch.bincount((draws * torch.tensor([8, 4, 2, 1])).sum(1), minlength=16).double()
    expected = probs / probs.sum() * 20000
    assert st.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-4, (counts, expected)
