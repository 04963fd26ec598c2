"""Imputation on a factor-analysis model, where p(x_mis | x_obs) is Gaussian in closed form.

p(z) = N(0, I_2), p(x|z) = N(Az + b, diag(psi^2)) over 5 entries, so x ~ N(b, S) with
S = A A^T + diag(psi^2) and, for observed entries O and missing M,
E[x_M | x_O] = b_M + S_MO S_OO^-1 (x_O - b_O), Cov = S_MM - S_MO S_OO^-1 S_OM (numpy below).
Monte-Carlo checks allow 5 standard errors measured from the draws (mc_reference.py).
"""

import numpy as np
import pytest
import torch
from mc_reference import assert_mc_close, default_dtype
from scipy import stats

from kizuna.distributions import Bernoulli, MultivariateNormal, Normal, Poisson
from kizuna.inference import impute_gibbs, impute_importance
from kizuna.inference.masked import masked_log_joint

G = np.random.default_rng(3)
A = G.normal(size=(5, 2))
B = G.normal(size=5)
PSI = np.array([0.3, 0.5, 0.4, 0.8, 0.6])
COV = A @ A.T + np.diag(PSI**2)
POST_COV = np.linalg.inv(np.eye(2) + A.T @ np.diag(PSI**-2) @ A)


@pytest.fixture(autouse=True)
def _float64_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    with default_dtype(torch.float64):
        yield
    torch.set_num_threads(threads)


class Likelihood(Normal):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")

    def forward(self, z):
        loc = z @ torch.as_tensor(A).T + torch.as_tensor(B)
        return {"loc": loc, "scale": torch.as_tensor(PSI).expand_as(loc)}


def posterior_mean(x):
    """E[z|x] for a complete row: POST_COV A^T diag(psi^-2) (x - b)."""
    return (x - torch.as_tensor(B)) @ torch.as_tensor(np.diag(PSI**-2) @ A @ POST_COV)


class Exact(MultivariateNormal):
    """q(z|x) = p(z|x) for complete rows: pseudo-Gibbs is then an exact Gibbs sampler."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")

    def forward(self, x):
        tril = torch.linalg.cholesky(torch.as_tensor(POST_COV))
        return {"loc": posterior_mean(x), "scale_tril": tril.expand(x.shape[0], 2, 2)}


class Proposal(Normal):
    """A factorised, inflated q(z|x): what an encoder gives, good enough as a proposal."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")

    def forward(self, x):
        loc = posterior_mean(x)
        return {"loc": loc, "scale": (1.5 * torch.as_tensor(POST_COV).diagonal().sqrt()).expand_as(loc)}


def model():
    return Likelihood() * Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="p_prior")


def conditional(x, observed):
    """The exact mean (all entries) and variance (0 on observed entries) of x_M given x_O."""
    o, m = np.flatnonzero(observed), np.flatnonzero(~observed)
    mean, var = x.copy(), np.zeros_like(x)
    gain = COV[np.ix_(m, o)] @ np.linalg.inv(COV[np.ix_(o, o)]) if len(o) else np.zeros((len(m), 0))
    mean[m] = B[m] + gain @ (x[o] - B[o])
    var[m] = np.diag(COV[np.ix_(m, m)] - gain @ COV[np.ix_(o, m)])
    return mean, var


def data():
    rng = np.random.default_rng(0)
    x = rng.multivariate_normal(B, COV, size=6)
    mask = rng.random((6, 5)) < 0.5
    mask[0], mask[1] = False, True  # an all-missing row (prior predictive) and a complete row
    mask[2] = [True, True, True, True, False]
    return x, mask


@pytest.mark.parametrize("defensive, rows", [
    (0.2, slice(None)),  # the default mixture
    (1.0, slice(None)),  # the prior alone as the proposal
    (0.0, [1, 2, 5]),  # the encoder alone: fine where most entries are observed (ESS ~10 elsewhere)
])
def test_importance_posterior_mean_converges_to_the_gaussian_conditional(defensive, rows):
    x, mask = (a[rows] for a in data())
    exact = np.stack([conditional(x[i], mask[i])[0] for i in range(len(x))])
    xt, mt = torch.as_tensor(x), torch.as_tensor(mask)
    xt[~mt] = float("nan")  # missing entries may hold anything
    torch.manual_seed(0)
    runs = torch.stack([impute_importance(model(), Proposal(), {"x": xt}, mt, k=2000, k_chunk=700,
                                          defensive=defensive).mean for _ in range(30)])
    assert torch.equal(runs[:, mt], torch.as_tensor(x)[mt].expand(30, -1))  # observed entries kept
    # 30 independent replicates: their mean within 5 standard errors (includes the O(1/k) self-normalisation bias)
    missing = ~mt
    assert_mc_close(runs.mean(0)[missing], exact[~mask], runs.std(0)[missing] / 30**0.5, what="E[x_mis|x_obs]")


def test_importance_samples_follow_the_conditional_and_all_missing_rows_the_prior():
    x, mask = data()
    torch.manual_seed(1)
    out = impute_importance(model(), Proposal(), {"x": torch.as_tensor(x[:3])}, torch.as_tensor(mask[:3]),
                            k=20000, n_samples=20000, k_chunk=5000)
    assert out.samples.shape == (20000, 3, 5) and out.ess.shape == (3,)
    for i in (0, 2):  # 0: nothing observed -> N(b, S); 2: the last entry missing
        mean, var = conditional(x[i], mask[i])
        m = ~mask[i]
        draws = out.samples[:, i][:, m]
        n = min(out.ess[i].item(), 20000)  # resampled draws repeat particles: count the effective ones
        assert_mc_close(draws.mean(0), mean[m], (torch.as_tensor(var[m]) / n).sqrt(), what=f"row {i} mean")
        assert_mc_close(draws.var(0), var[m], torch.as_tensor(var[m]) * (2 / n) ** 0.5, what=f"row {i} variance")
    assert torch.equal(out.samples[:, 1], torch.as_tensor(x[1]).expand(20000, 5))  # a complete row stays


def test_gibbs_with_the_exact_posterior_samples_the_conditional():
    x, mask = data()
    # rows with most entries observed: with nothing observed the z-chain is AR(1) with coefficient
    # I - POST_COV (eigenvalues up to 0.993 here) and would need thousands of sweeps
    rows = [2, 4, 5]
    torch.manual_seed(2)
    n = 4000
    out = impute_gibbs(model(), Exact(), {"x": torch.as_tensor(x[rows])}, torch.as_tensor(mask[rows]),
                       n_iter=25, n_samples=n)
    for j, i in enumerate(rows):
        mean, var = conditional(x[i], mask[i])
        m = ~mask[i]
        draws = out.samples[:, j][:, m]  # independent chains: n independent draws
        assert_mc_close(draws.mean(0), mean[m], draws.std(0) / n**0.5, what=f"row {i} Gibbs mean")
        assert_mc_close(draws.var(0), var[m], torch.as_tensor(var[m]) * (2 / n) ** 0.5, what=f"row {i} Gibbs var")
        # the Rao-Blackwellised mean has the smaller error: E[x|z] varies less than x
        assert_mc_close(out.mean[j][m], mean[m], draws.std(0) / n**0.5, what=f"row {i} Gibbs RB mean")


def test_gibbs_deterministic_variant_keeps_observed_entries():
    x, mask = data()
    xt, mt = torch.as_tensor(x), torch.as_tensor(mask)
    out = impute_gibbs(model(), Proposal(), {"x": xt}, mt, n_iter=3, n_samples=2, draw=False)
    assert out.samples.shape == (2, 6, 5) and out.ess is None
    assert torch.equal(out.samples[:, mt], xt[mt].expand(2, -1))
    assert torch.isfinite(out.samples).all()


def test_masked_log_joint_against_scipy():
    probs = torch.tensor([[0.2, 0.7, 0.9], [0.5, 0.1, 0.4]])
    dec = Bernoulli(var=["x"], cond_var=["z"], probs="z")
    prior = Bernoulli(var=["z"], probs=torch.full((3,), 0.5), name="p_prior")
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    got = masked_log_joint(dec * prior, {"x": x, "z": probs}, "x", mask, "test")
    lp = stats.bernoulli(probs.numpy()).logpmf(x.numpy())
    ref = (lp * mask.numpy()).sum(1) + 3 * np.log(0.5)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    # a whole modality absent from the values integrates to one
    other = Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0)
    got2 = masked_log_joint(dec * other * prior, {"x": x, "z": probs}, "x", mask, "test")
    torch.testing.assert_close(got2, got)


@pytest.mark.parametrize("mask, init, error, match", [
    (torch.ones(6, 5), None, TypeError, "dtype torch.bool"),
    (np.ones((6, 5)), None, TypeError, "must hold booleans .True = observed., got a numpy array of dtype float64"),
    (torch.ones(6, 4, dtype=torch.bool), None, ValueError, r"shape \(6, 4\) but x has shape \(6, 5\)"),
    (torch.ones(6, 5, dtype=torch.bool), torch.zeros(3), ValueError, "init of shape"),
])
def test_bad_masks_and_inits_are_named(mask, init, error, match):
    x = torch.as_tensor(data()[0])
    for impute in (impute_importance, impute_gibbs):
        with pytest.raises(error, match=match):
            impute(model(), Proposal(), {"x": x}, mask, init=init)


def test_bad_inputs_are_named():
    x, mask = (torch.as_tensor(a) for a in data())
    x_nan = x.clone()
    x_nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values at observed entries"):
        impute_importance(model(), Proposal(), {"x": x_nan}, torch.ones(6, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs x in x_dict"):
        impute_importance(model(), Proposal(), {"w": x}, mask, var="x")
    with pytest.raises(ValueError, match="say which variable"):
        impute_importance(model(), Proposal(), {"w": x}, mask)
    with pytest.raises(ValueError, match="disagree on the batch size .x has 6, c has 4"):
        impute_importance(model(), Proposal(), {"x": x, "c": torch.zeros(4)}, mask)
    with pytest.raises(ValueError, match="n_iter must be an integer >= 1, got 0"):
        impute_gibbs(model(), Proposal(), {"x": x}, mask, n_iter=0)
    # (an array: "no input variables to take the batch size from"; numpy arrays and lists of numbers are taken since
    # stop 47, tests/test_s47_uses_inputs.py; strings and ragged lists are not)
    for impute in (impute_importance, impute_gibbs):
        with pytest.raises(TypeError, match=f"{impute.__name__}: x must be a torch.Tensor, a numpy array or a "
                                            r"\(nested\) list of numbers, got a numpy array of dtype <U\d+"):
            impute(model(), Proposal(), {"x": x.numpy().astype(str)}, mask)


def test_invalid_values_keep_their_own_error():
    dec = Bernoulli(var=["x"], cond_var=["z"], probs="z")
    values = {"x": torch.full((2, 3), 2.0), "z": torch.full((2, 3), 0.5)}
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        masked_log_joint(dec, values, "x", torch.ones(2, 3, dtype=torch.bool), "test")


def test_decoder_that_cannot_be_masked_is_named():
    class FullCov(MultivariateNormal):
        def __init__(self):
            super().__init__(var=["x"], cond_var=["z"], name="p")

        def forward(self, z):
            loc = z @ torch.as_tensor(A).T
            return {"loc": loc, "covariance_matrix": torch.as_tensor(COV).expand(z.shape[0], 5, 5)}

    joint = FullCov() * Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="p_prior")
    x, mask = (torch.as_tensor(a) for a in data())
    with pytest.raises(ValueError, match=r"p\(x\|z\) \(FullCov\) does not factorise over the entries"):
        impute_importance(joint, Proposal(), {"x": x}, mask, k=4)


def test_small_defensive_shares_integer_data_and_sample_counts():
    """A prior share below one draw per chunk still gives round(alpha k) prior draws overall (a math domain error
    before: every chunk's share rounded to 0), and one below half a draw uses q alone; integer data is imputed in the
    model's floating dtype; n_samples must be positive (0 gave NaN means or torch's error)."""
    from kizuna.inference.impute import _Proposal

    proposal = _Proposal(model(), Proposal(), "x", 1000, 250, 0.002)
    assert sum(n for _, n in proposal.chunks) == 2 and proposal.alpha == pytest.approx(0.002)
    assert sum(q + n for q, n in proposal.chunks) == 1000
    x, mask = (torch.as_tensor(a) for a in data())
    x[~mask] = float("nan")
    torch.manual_seed(0)
    for share in (0.001, 0.0001):
        out = impute_importance(model(), Proposal(), {"x": x}, mask, k=1000, defensive=share)
        assert torch.isfinite(out.mean).all()
    counts = torch.nan_to_num(x).round().long()
    out = impute_importance(model(), Proposal(), {"x": counts}, mask, k=200)
    assert out.mean.is_floating_point() and torch.equal(out.mean[mask], counts[mask].to(out.mean.dtype))
    for impute in (impute_importance, impute_gibbs):
        with pytest.raises(ValueError, match="n_samples .* must be a positive integer, got 0"):
            impute(model(), Proposal(), {"x": x}, mask, n_samples=0)


RATE_A, RATE_B = np.array([0.5, -0.3, 0.8, 0.2]), np.array([0.3, 1.0, -0.2, 0.6])


class PoissonDecoder(Poisson):
    """p(x|z) = Poisson(exp(a z + b)) per entry, z one-dimensional."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")

    def forward(self, z):
        return {"rate": torch.exp(z * torch.as_tensor(RATE_A) + torch.as_tensor(RATE_B))}


class WideProposal(Normal):
    """q(z|x) = N(0, 1.5^2) whatever x: a proposal that covers the posterior of one scalar z."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")

    def forward(self, x):
        return {"loc": torch.zeros(x.shape[0], 1), "scale": torch.full((x.shape[0], 1), 1.5)}


def test_masked_log_joint_ignores_whatever_fills_the_gaps_of_counts_and_pixels():
    """Missing entries are scored at a support point and dropped: NaN, fractional or negative gaps gave
    "outside the support" errors for a Poisson decoder (and NaN gaps for a Bernoulli one) before."""
    z = torch.tensor([[0.3], [-1.2], [0.8]], requires_grad=True)
    counts = torch.tensor([[3.0, 0, 1, 2], [0, 5, 1, 0], [1, 1, 2, 0]])
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    prior = Normal(var=["z"], loc=torch.zeros(1), scale=torch.ones(1), name="p_prior")
    rate = np.exp(z.detach().numpy() * RATE_A + RATE_B)
    ref = (stats.poisson(rate).logpmf(counts.numpy()) * mask.numpy()).sum(1)
    ref += stats.norm.logpdf(z.detach().numpy())[:, 0]
    for gap in (float("nan"), 1.5, -1.0, 0.0):
        holes = torch.where(mask, counts, torch.tensor(gap))
        got = masked_log_joint(PoissonDecoder() * prior, {"x": holes, "z": z}, "x", mask, "test")
        np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-12)
        (grad,) = torch.autograd.grad(got.sum(), z)
        assert torch.isfinite(grad).all()
    probs = torch.tensor([[0.2, 0.7, 0.9, 0.4], [0.5, 0.1, 0.4, 0.3], [0.6, 0.6, 0.6, 0.6]])
    pixels = torch.tensor([[1.0, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0.25, 0]])
    dec = Bernoulli(var=["x"], cond_var=["w"], probs="w")
    ref = (stats.bernoulli(probs.numpy()).logpmf(pixels.numpy().round()) * mask.numpy()).sum(1)
    ref[2] += 0.25 * np.log(0.6) + 0.75 * np.log(0.4) - np.log(0.4)  # a grey level 0.25 scores as -BCE
    got = masked_log_joint(dec, {"x": torch.where(mask, pixels, torch.nan), "w": probs}, "x", mask, "test")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("init", ["default", "column means"])
def test_poisson_imputation_matches_quadrature(init):
    """E[x_mis | x_obs] for Poisson counts against a float64 grid quadrature over z (scipy densities); the default
    init and init=x.mean(0) (fractional counts) raised "outside the support" before."""
    counts = torch.tensor([[3.0, 0, 1, 2], [0, 5, 1, 0], [1, 1, 2, 0]])
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]], dtype=torch.bool)
    grid = np.linspace(-8, 8, 8001)
    rate = np.exp(grid[:, None] * RATE_A + RATE_B)  # (grid, 4)
    ref = counts.numpy().copy()
    for i in range(3):
        obs = mask[i].numpy()
        logw = stats.norm.logpdf(grid) + stats.poisson(rate[:, obs]).logpmf(counts[i].numpy()[obs]).sum(1)
        w = np.exp(logw - logw.max())
        ref[i, ~obs] = (w[:, None] * rate[:, ~obs]).sum(0) / w.sum()
    prior = Normal(var=["z"], loc=torch.zeros(1), scale=torch.ones(1), name="p_prior")
    kwargs = {} if init == "default" else {"init": counts.mean(0)}
    torch.manual_seed(0)
    out = impute_importance(PoissonDecoder() * prior, WideProposal(), {"x": counts}, mask, k=20000, **kwargs)
    assert torch.equal(out.mean[mask], counts[mask])
    np.testing.assert_allclose(out.mean.numpy(), ref, rtol=0.03)
    assert (out.samples[:, ~mask] == out.samples[:, ~mask].round()).all()  # completed rows hold counts


def test_data_without_rows_is_named():
    """(0, D) data: torch.cat's 'expected a non-empty list of Tensors' before."""
    x, mask = torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool)
    for impute in (impute_importance, impute_gibbs):
        with pytest.raises(ValueError, match=r"the data has no rows \(x has shape \(0, 5\)\)"):
            impute(model(), Proposal(), {"x": x}, mask, k=4) if impute is impute_importance else \
                impute(model(), Proposal(), {"x": x}, mask, n_iter=1)


class RectifiedDecoder(Poisson):
    """p(x|z) = Poisson(relu(z)) per entry of two: rate 0, so count 3 impossible, for every z <= 0."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")

    def forward(self, z):
        return {"rate": torch.relu(z).expand(-1, 2)}


class NegativeProposal(Normal):
    """q(z|x) = N(-5, 0.1^2): every draw at z < 0, where a count of 3 has weight 0 (log-weight -inf)."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")

    def forward(self, x):
        return {"loc": torch.full((x.shape[0], 1), -5.0), "scale": torch.full((x.shape[0], 1), 0.1)}


def test_chunks_of_zero_weight_add_nothing_to_the_mean():
    """A row whose first chunks of draws all have weight 0 (log-weight -inf): the running maximum was -inf, so
    exp(-inf - -inf) = NaN entered the mean for good (mean NaN with ESS 42). Against quadrature over z:
    p(z|x_1 = 3) is proportional to z^3 e^{-z} N(z; 0, 1) on z > 0, E[x_2|x_1] = E[z|x_1]; 5 standard errors
    of a weighted mean of ESS draws."""
    grid = np.linspace(1e-6, 12, 120001)
    w = stats.poisson(grid).pmf(3) * stats.norm.pdf(grid)
    ref = (w * grid).sum() / w.sum()
    sd = np.sqrt((w * grid**2).sum() / w.sum() - ref**2)
    assert ref == pytest.approx(1.4758, abs=1e-4)
    x, mask = torch.tensor([[3.0, float("nan")]]), torch.tensor([[True, False]])
    prior = Normal(var=["z"], loc=torch.zeros(1), scale=torch.ones(1), features_shape=[1], name="p_prior")
    torch.manual_seed(0)  # k_chunk=2: the first chunk (a prior share of 1 in 5 overall) is all q, all at weight 0
    out = impute_importance(RectifiedDecoder() * prior, NegativeProposal(), {"x": x}, mask, k=4000, k_chunk=2)
    assert torch.isfinite(out.mean).all() and out.mean[0, 0] == 3.0
    assert_mc_close(out.mean[0, 1], ref, sd / out.ess[0].sqrt(), what="E[x_2 | x_1 = 3]")


def test_a_row_without_a_draw_of_finite_weight_is_named():
    """Row 1 (count 3) has weight 0 under every draw of q (no prior share): NaN weights and a torch error from
    multinomial before; row 0 (count 0, possible at rate 0) is fine."""
    x, mask = torch.tensor([[0.0, float("nan")], [3.0, float("nan")]]), torch.tensor([[True, False], [True, False]])
    prior = Normal(var=["z"], loc=torch.zeros(1), scale=torch.ones(1), features_shape=[1], name="p_prior")
    with pytest.raises(ValueError, match=r"row 1 has no draw of finite weight: the model gives its observed values "
                                         r"zero density under each of the 50 draws"):
        impute_importance(RectifiedDecoder() * prior, NegativeProposal(), {"x": x}, mask, k=50, defensive=0)
    with pytest.raises(ValueError, match=r"row 3 has no draw of finite weight"):  # counted over the batches
        impute_importance(RectifiedDecoder() * prior, NegativeProposal(), {"x": x[[0, 0, 0, 1]]}, mask[[0, 0, 0, 1]],
                          k=50, defensive=0, batch_size=3)


class TwoFactorDecoder(Normal):
    """p(x|z) = N(z_1 + z_2, 1) on both entries of x, z of three entries (the third unused)."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")

    def forward(self, z):
        return {"loc": z[:, :1].expand(-1, 2) + z[:, 1:2], "scale": torch.ones(len(z), 2)}


class MeanProposal(Normal):
    """q(z|x) = N(0.3 mean(x), 1) on each of three entries."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")

    def forward(self, x):
        return {"loc": x.nanmean(1, keepdim=True).nan_to_num().expand(-1, 3) * 0.3, "scale": torch.ones(len(x), 3)}


@pytest.mark.parametrize("defensive, k_chunk", [(0.2, 250), (0.6, 1), (1.0, 7)])
def test_a_prior_without_features_shape_draws_like_one_with_it(defensive, k_chunk):
    """Normal(var=["z"], loc=0.0, scale=1.0) drew one number per row against q's (N, 3) draws: torch.cat's
    "Tensors must have same number of dimensions" before. Its draws and its density (summed over z's entries)
    must be those of the same prior given features_shape=[3]: the same numbers exactly, whatever the chunks (the
    second case starts with a chunk drawn from the prior alone, the third never draws from q)."""
    x = torch.tensor([[2.0, float("nan")], [1.0, 0.5], [float("nan"), float("nan")]])
    mask = ~x.isnan()
    outs = []
    for shape in ({}, {"features_shape": [3]}):
        prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior", **shape)
        torch.manual_seed(0)
        outs.append(impute_importance(TwoFactorDecoder() * prior, MeanProposal(), {"x": x}, mask, k=40,
                                      k_chunk=k_chunk, defensive=defensive, batch_size=2))
    for got, want in zip(outs[0].__dict__.values(), outs[1].__dict__.values(), strict=True):
        assert torch.equal(got, want)
    assert torch.isfinite(outs[0].mean).all()


def test_a_prior_whose_draws_cannot_make_the_encoders_is_named():
    """A prior of two entries against q's three: torch.cat's "Sizes of tensors must match" before."""
    x, mask = torch.tensor([[2.0, float("nan")]]), torch.tensor([[True, False]])
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    named = r"the prior p_\{prior\}\(z\) draws z of shape \(2,\) \(q: \(3,\)\) per row.*features_shape"
    with pytest.raises(ValueError, match=named):
        impute_importance(TwoFactorDecoder() * prior, MeanProposal(), {"x": x}, mask, k=10)


class LinearDecoder(Normal):
    """p(x|z) = N(W z + c, 0.5^2), a network layer in ``dtype``."""

    def __init__(self, dtype):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.layer = torch.nn.Linear(2, 5, dtype=dtype)

    def forward(self, z):
        loc = self.layer(z)
        return {"loc": loc, "scale": torch.full_like(loc, 0.5)}


class LinearEncoder(Normal):
    """q(z|x) = N(V x + d, 1), a network layer in ``dtype``."""

    def __init__(self, dtype):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.layer = torch.nn.Linear(5, 2, dtype=dtype)

    def forward(self, x):
        loc = self.layer(x)
        return {"loc": loc, "scale": torch.ones_like(loc)}


@pytest.mark.parametrize("model_dtype, data_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_floating_data_and_init_are_imputed_in_the_models_dtype(model_dtype, data_dtype):
    """Float64 data for a float32 network (both imputers), float32 data for a float64 one (impute_gibbs) failed in
    forward() ("Double and Float"); anomaly_score converted them. The results must be those of the data converted
    by hand."""
    torch.manual_seed(1)
    dec, enc = LinearDecoder(model_dtype), LinearEncoder(model_dtype)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior").to(model_dtype)
    x, mask = (torch.as_tensor(a) for a in data())
    x, init, mask = x[:6].to(data_dtype), x[:6].nanmean(0).to(data_dtype), mask[:6]
    for impute, kwargs in ((impute_importance, {"k": 30}), (impute_gibbs, {"n_iter": 3})):
        runs = []
        for given, fill in ((x, init), (x.to(model_dtype), init.to(model_dtype))):
            torch.manual_seed(0)
            runs.append(impute(dec * prior, enc, {"x": given}, mask, init=fill, **kwargs))
        assert runs[0].mean.dtype == runs[0].samples.dtype == model_dtype
        for got, want in zip(runs[0].__dict__.values(), runs[1].__dict__.values(), strict=True):
            assert got is want is None or torch.equal(got, want)


def test_scalar_tensors_the_models_do_not_read_are_let_through():
    """A 0-d tensor in x_dict that no model reads was refused ("must have a leading batch dimension"), where
    anomaly_score lets it through; one the models read is still refused. The results are those without it."""
    x, mask = (torch.as_tensor(a) for a in data())
    runs = []
    for extra in ({"t": torch.tensor(2.0)}, {}):
        torch.manual_seed(0)
        runs.append((impute_importance(model(), Proposal(), {"x": x, **extra}, mask, k=20),
                     impute_gibbs(model(), Proposal(), {"x": x, **extra}, mask, n_iter=2)))
    for got, want in zip(runs[0], runs[1], strict=True):
        assert torch.equal(got.mean, want.mean) and torch.equal(got.samples, want.samples)
    with pytest.raises(ValueError, match="x must have a leading batch dimension, got a scalar"):
        impute_gibbs(model(), Proposal(), {"x": torch.tensor(1.0)}, torch.tensor(True))


class _Noisy(Normal):
    """p(x|z): every entry of x is z plus unit noise (x of shape (N,) or (N, d), z of shape (N, 1))."""

    def __init__(self, width: int | None) -> None:
        super().__init__(var=["x"], cond_var=["z"])
        self.width = width

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        loc = z[:, 0] if self.width is None else z.expand(-1, self.width)
        return {"loc": loc, "scale": torch.ones_like(loc)}


class _Mean(Normal):
    """q(z|x): N(mean of the observed-looking x, 1), shape (N, 1)."""

    def __init__(self) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc = (x if x.dim() == 1 else x.mean(1)).unsqueeze(1)
        return {"loc": loc, "scale": torch.ones_like(loc)}


def test_imputation_with_a_one_dimensional_latent_and_scalar_data():
    """A prior without features_shape against q's (N, 1) draws (torch.cat of (n,) and (n, 1) failed), and data of one
    value per row, x of shape (N,) (flatten(1) failed): against the Gaussian conditional, E[x_2 | x_1 = 2] = 1 for
    x_d = z + e_d, z ~ N(0, 1) (variance 1 + 1/2), and the prior predictive N(0, 2) for a missing scalar."""
    prior = Normal(var=["z"], loc=0.0, scale=1.0, name="p_prior")
    torch.manual_seed(0)
    out = impute_importance(_Noisy(2) * prior, _Mean(), {"x": torch.tensor([[2.0, float("nan")]])},
                            torch.tensor([[True, False]]), k=4000, n_samples=2000)
    assert out.mean[0, 0] == 2.0 and abs(out.mean[0, 1].item() - 1.0) < 0.1
    assert abs(out.samples[:, 0, 1].var().item() - 1.5) < 0.2
    torch.manual_seed(1)
    x, mask = torch.tensor([0.5, float("nan"), -1.0]), torch.tensor([True, False, True])
    out = impute_importance(_Noisy(None) * prior, _Mean(), {"x": x}, mask, k=4000, n_samples=2000)
    assert out.mean[0] == 0.5 and out.mean[2] == -1.0
    assert abs(out.mean[1].item()) < 0.15 and abs(out.samples[:, 1].var().item() - 2.0) < 0.3


def test_imputation_counts_are_checked():
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="p_prior")
    args = (_Noisy(2) * prior, _Mean(), {"x": torch.tensor([[2.0, 0.0]])}, torch.tensor([[True, False]]))
    for name, bad in (("k", 2.5), ("batch_size", 0), ("k_chunk", -1)):
        with pytest.raises(ValueError, match=f"impute_importance: {name} must be an integer >= 1, got {bad}"):
            impute_importance(*args, **{name: bad})
    with pytest.raises(ValueError, match="impute_gibbs: n_iter must be an integer >= 1, got 2.5"):
        impute_gibbs(*args, n_iter=2.5)


def test_a_one_hot_decoder_with_a_whole_row_missing_is_named_as_not_factorising():
    """With every row observed the error said the decoder does not factorise; with a row missing it named the
    support of the placeholder the imputation scores in the gap (all zeros, not one-hot), none of the caller's data."""
    from kizuna.distributions import Categorical

    class OneHot(Categorical):
        def __init__(self):
            super().__init__(var=["y"], cond_var=["z"], name="p")
            self.net = torch.nn.Linear(2, 4)

        def forward(self, z):
            return {"logits": self.net(z)}

    class Q(Normal):
        def __init__(self):
            super().__init__(var=["z"], cond_var=["y"], name="q")
            self.net = torch.nn.Linear(4, 2)

        def forward(self, y):
            return {"loc": self.net(y), "scale": torch.ones(len(y), 2)}

    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    y = torch.eye(4)[[0, 1, 2]]
    for mask in (torch.ones(3, 4, dtype=torch.bool), torch.tensor([[True] * 4, [False] * 4, [True] * 4])):
        with pytest.raises(ValueError, match=r"p\(y\|z\) \(OneHot\) does not factorise over the entries of y"):
            impute_importance(OneHot() * prior, Q(), {"y": y}, mask, k=10)


@pytest.mark.parametrize("impute", [impute_importance, impute_gibbs], ids=["importance", "gibbs"])
@pytest.mark.parametrize("missing", [False, True], ids=["all observed", "some missing"])
def test_an_observed_value_outside_the_support_is_named_by_the_decoder(impute, missing):
    """An observed 2 under a Bernoulli decoder: with entries missing, impute_importance called the decoder one that
    does not factorise (and told the user to use a Bernoulli), and impute_gibbs imputed it silently."""
    class Dec(Bernoulli):
        def forward(self, z):
            return {"logits": z.expand(-1, 3)}

    class Enc(Normal):
        def forward(self, x):
            return {"loc": x.mean(1, keepdim=True), "scale": torch.ones(len(x), 1)}

    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="p_prior")
    p, q = Dec(var=["x"], cond_var=["z"]), Enc(var=["z"], cond_var=["x"], name="q")
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[0, 2] = not missing
    kwargs = {"k": 10} if impute is impute_importance else {"n_iter": 2}
    with pytest.raises(ValueError, match=r"p\(x\|z\): value of x must lie in \[0, 1\]"):
        impute(p * prior, q, {"x": x}, mask, **kwargs)
    x[0, 1] = 1.0  # the same row in the support imputes
    impute(p * prior, q, {"x": x}, mask, **kwargs)


def test_a_flow_posterior_imputes_and_infers_only_its_own_variable():
    """A flow distribution's sample also returns the prior's draw (Pixyz's return_hidden): impute_importance with the
    default defensive mixture failed with KeyError 'z0', and infer_latent returned z0 beside z."""
    from kizuna.distributions import TransformedDistribution
    from kizuna.flows import FlowList, PlanarFlow
    from kizuna.inference import infer_latent

    class Decoder(Normal):
        def forward(self, z):  # noqa: ANN001, ANN202
            return {"loc": z.expand(-1, 2), "scale": torch.ones(len(z), 2)}

    class Encoder(Normal):
        def forward(self, x):  # noqa: ANN001, ANN202
            return {"loc": x.nan_to_num().mean(1, keepdim=True), "scale": torch.ones(len(x), 1)}

    torch.manual_seed(0)
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[1], name="p_prior")
    q = TransformedDistribution(Encoder(var=["z0"], cond_var=["x"], name="q"), FlowList([PlanarFlow(1)]), var=["z"],
                                name="q")
    x, mask = torch.tensor([[2.0, float("nan")]]), torch.tensor([[True, False]])
    for defensive in (0.0, 0.2):
        out = impute_importance(Decoder(var=["x"], cond_var=["z"]) * prior, q, {"x": x}, mask, k=400,
                                defensive=defensive)
        assert out.mean[0, 0] == 2.0 and torch.isfinite(out.mean).all()
    gibbs = impute_gibbs(Decoder(var=["x"], cond_var=["z"]) * prior, q, {"x": x}, mask, n_iter=3)
    assert torch.isfinite(gibbs.mean).all()
    assert sorted(infer_latent(q, {"x": torch.zeros(3, 2)}, sample=True)) == ["z"]


@pytest.mark.parametrize("defensive", ["a", True, None, float("nan"), -0.1, 1.5])
def test_a_defensive_share_that_is_not_a_number_in_the_unit_interval_is_named(defensive):
    x, mask = data()
    with pytest.raises(ValueError, match=r"defensive .* must be a number in \[0, 1\]"):
        impute_importance(model(), Proposal(), {"x": torch.as_tensor(x[:3])}, torch.as_tensor(mask[:3]),
                          defensive=defensive)


def test_gibbs_imputes_rows_of_a_one_hot_decoder_with_entries_missing():
    """The first sweep's support check scored the placeholder (a rounded mean: zeros where no category has
    probability above 0.5, not one-hot) and blamed the caller's valid data; a placeholder outside a support of whole
    rows is not the data's fault, and an invalid observed row is still named."""
    from kizuna.distributions import Categorical

    class OneHot(Categorical):
        def __init__(self):
            super().__init__(var=["y"], cond_var=["z"], name="p")
            self.net = torch.nn.Linear(2, 3)

        def forward(self, z):
            return {"probs": torch.softmax(0 * self.net(z), -1)}

    class Q(Normal):
        def __init__(self):
            super().__init__(var=["z"], cond_var=["y"], name="q")
            self.net = torch.nn.Linear(3, 2)

        def forward(self, y):
            return {"loc": self.net(y), "scale": torch.ones(len(y), 2)}

    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    y = torch.eye(3)[[0, 1, 2, 0]]
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0] = False
    out = impute_gibbs(OneHot() * prior, Q(), {"y": y}, mask, n_iter=3, n_samples=2)
    assert torch.equal(out.samples[:, 1:], y[1:].expand(2, 3, 3))  # the observed rows kept
    assert torch.equal(out.samples[:, 0].sum(-1), torch.ones(2))  # the missing row drawn one-hot
    y[1] = torch.tensor([0.0, 2.0, 0.0])
    with pytest.raises(ValueError, match=r"p\(y\|z\): value of y is outside the support"):
        impute_gibbs(OneHot() * prior, Q(), {"y": y}, torch.ones(4, 3, dtype=torch.bool), n_iter=1)
