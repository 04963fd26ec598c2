"""The uses layer (stop 43): impute_gibbs refuses decoders that do not factorise over entries where a row is partly
observed (it refilled x_mis from p(x_mis|z), not p(x_mis|x_obs, z), without a word); a product / mixture of experts
is chosen only where every given modality feeds an expert that runs (a modality was dropped silently); a Dirichlet
decoder with entries missing is named as not factorising (its valid simplex rows were called outside the support);
n_samples takes numpy and 0-d tensor integers as k does."""

import numpy as np
import pytest
import torch

from kizuna.distributions import (
    Bernoulli,
    Categorical,
    Dirichlet,
    MixtureOfNormal,
    Multinomial,
    MultivariateNormal,
    Normal,
    ProductOfNormal,
)
from kizuna.inference import cross_generate, impute_gibbs, impute_importance, infer_latent, select_encoder
from kizuna.inference.masked import masked_log_prob

W = torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.6, -1.0], [0.2, 0.4]], dtype=torch.float64)
B = torch.tensor([0.5, -1.0, 0.3, 2.0], dtype=torch.float64)
L = torch.tensor([[1, 0, 0, 0], [0.9, 0.3, 0, 0], [0, 0, 0.5, 0], [0, 0, 0.4, 0.4]], dtype=torch.float64)
S = L @ L.T  # correlated decoder noise: p(x|z) does not factorise over entries
PC = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + W.T @ torch.linalg.inv(S) @ W)  # Cov[z|x]
K = PC @ W.T @ torch.linalg.inv(S)  # E[z|x] = K (x - b)


class FullCov(MultivariateNormal):
    """p(x|z) = N(W z + b, S), S full."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")

    def forward(self, z):
        return {"loc": z @ W.T + B, "scale_tril": L.expand(len(z), 4, 4)}


class ExactPosterior(MultivariateNormal):
    """q(z|x) = p(z|x) of the linear-Gaussian model."""

    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")

    def forward(self, x):
        return {"loc": (x - B) @ K.T, "scale_tril": torch.linalg.cholesky(PC).expand(len(x), 2, 2)}


class Enc(Normal):
    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = torch.nn.Linear(4, 2)

    def forward(self, x):
        return {"loc": self.net(x), "scale": torch.ones(len(x), 2)}


class Mult(Multinomial):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p", total_count=5)
        self.net = torch.nn.Linear(2, 4)

    def forward(self, z):
        return {"logits": self.net(z)}


class OneHot(Categorical):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = torch.nn.Linear(2, 4)

    def forward(self, z):
        return {"logits": self.net(z)}


class Simplex(Dirichlet):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = torch.nn.Linear(2, 4)

    def forward(self, z):
        return {"concentration": torch.nn.functional.softplus(self.net(z)) + 0.5}


def prior(dtype=None):
    return Normal(var=["z"], loc=torch.zeros(2, dtype=dtype), scale=torch.ones(2, dtype=dtype), name="p_prior")


def _run(impute, p_joint, q, x, mask):
    kwargs = {"k": 10} if impute is impute_importance else {"n_iter": 2}
    return impute(p_joint, q, {"x": x}, mask, n_samples=3, **kwargs)


def _not_factorised(helper, name, reason=r"its per-entry log-density has shape \(\d+,\), x has \(\d+, 4\)"):
    return (rf"^{helper}: the decoder p\(x\|z\) \({name}\) does not factorise over the entries of x, so its "
            rf"log-density cannot be restricted to the observed entries \({reason}\); use a decoder with one "
            r"independent factor per entry")


# ------------------------------------------------------------------ 1: impute_gibbs and non-factorising decoders
CASES = {  # decoder, data, partial mask (the values the old impute_gibbs gave are in the test's docstring)
    "full-covariance Normal": (lambda: FullCov() * prior(torch.float64), ExactPosterior,
                               torch.tensor([[1.5, 0.0, -0.5, 0.0]], dtype=torch.float64),
                               torch.tensor([[True, False, True, False]])),
    "Multinomial": (lambda: Mult() * prior(), Enc, torch.tensor([[2.0, 1.0, 0.0, 2.0]]),
                    torch.tensor([[True, False, True, True]])),
    "one-hot Categorical": (lambda: OneHot() * prior(), Enc, torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
                            torch.tensor([[True, False, True, True]])),
}


@pytest.mark.parametrize("impute", [impute_importance, impute_gibbs], ids=["importance", "gibbs"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_decoder_that_does_not_factorise_is_refused_by_both_imputations(impute, case):
    """impute_gibbs ran on these without a word: the full-covariance Normal with the exact posterior settled at mean
    [-4.35, -9.12] against the exact conditional's [0.685, 0.039]; 30 % of the one-hot rows held two ones; the
    Multinomial's completed rows summed to 4..9 instead of 5."""
    make, q, x, mask = CASES[case]
    torch.manual_seed(0)
    name = {"full-covariance Normal": "FullCov", "Multinomial": "Mult", "one-hot Categorical": "OneHot"}[case]
    with pytest.raises(ValueError, match=_not_factorised(impute.__name__, name, reason=".*")):
        _run(impute, make(), q(), x, mask)


class PerFeatureOneHot(Categorical):  # D = 2 independent one-hot features of K = 3 levels: x (N, 2, 3)
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = torch.nn.Linear(2, 6)

    def forward(self, z):
        return {"logits": self.net(z).reshape(-1, 2, 3)}


class FlatEnc(Normal):
    def __init__(self):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = torch.nn.Linear(6, 2)

    def forward(self, x):
        return {"loc": self.net(x.reshape(len(x), -1)), "scale": torch.ones(len(x), 2)}


def test_gibbs_imputes_whole_missing_features_of_independent_one_hot_features():
    """Features independent given z, each observed or missing whole: p(x_mis|z) is p(x_mis|x_obs, z), and the sweeps
    are exact. This stop's first refusal of non-factorising decoders refused it (a row of D*K entries partly
    observed); a mask splitting one feature's one-hot group is still refused."""
    torch.manual_seed(0)
    x = torch.nn.functional.one_hot(torch.tensor([[0, 2], [1, 1], [2, 0], [0, 0]]), 3).float()
    features = torch.tensor([[True, False], [False, True], [True, True], [False, False]])
    mask = features[..., None].expand(4, 2, 3).contiguous()
    out = impute_gibbs(PerFeatureOneHot() * prior(), FlatEnc(), {"x": x}, mask, n_iter=3, n_samples=5)
    s = out.samples
    assert s.shape == (5, 4, 2, 3)
    assert bool(((s == 0) | (s == 1)).all()) and bool((s.sum(-1) == 1).all())  # every feature one-hot
    assert torch.equal(s[:, features], x[features].expand(5, -1, -1))  # observed features kept exactly
    split = mask.clone()
    split[0, 1, 0] = True  # one level of a missing feature observed
    with pytest.raises(ValueError, match="does not factorise over the entries of x"):
        impute_gibbs(PerFeatureOneHot() * prior(), FlatEnc(), {"x": x}, split, n_iter=2, n_samples=2)


def test_gibbs_names_the_per_entry_shape_of_a_full_covariance_normal():
    torch.manual_seed(0)
    make, q, x, mask = CASES["full-covariance Normal"]
    with pytest.raises(ValueError, match=_not_factorised("impute_gibbs", "FullCov")) as err:
        impute_gibbs(make(), q(), {"x": x}, mask, n_samples=3, n_iter=2)
    assert "has shape (3,), x has (3, 4)" in str(err.value)  # 3 chains of the one row


def test_gibbs_still_imputes_whole_missing_rows_of_a_full_covariance_normal():
    """Rows observed or missing in full need no factorisation: a missing row is drawn whole from p(x|z). With the
    exact posterior the chains of an all-missing row sample the prior predictive N(b, W W^T + S) (closed form; the
    z-chain is autoregressive with coefficient I - Cov[z|x], eigenvalues 0.89 and 0.96: 50 sweeps from init b leave
    a variance deficit of 0.96^100 = 2 %)."""
    torch.manual_seed(0)
    x = torch.tensor([[1.5, 0.2, -0.5, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [False] * 4])
    n = 1000
    out = impute_gibbs(FullCov() * prior(torch.float64), ExactPosterior(), {"x": x}, mask, n_iter=50, n_samples=n,
                       init=B)
    assert torch.equal(out.samples[:, 0], x[0].expand(n, 4))
    cov = W @ W.T + S
    drawn = out.samples[:, 1]
    se = (cov.diagonal() / n).sqrt()
    assert ((drawn.mean(0) - B).abs() < 5 * se).all(), (drawn.mean(0), B)
    assert ((drawn.var(0) / cov.diagonal() - 1).abs() < 5 * (2 / n) ** 0.5).all(), (drawn.var(0), cov.diagonal())


# ------------------------------------------------------------------ 3: Dirichlet rows with entries missing
@pytest.mark.parametrize("impute", [impute_importance, impute_gibbs], ids=["importance", "gibbs"])
def test_a_dirichlet_decoder_with_entries_missing_is_named_as_not_factorising(impute):
    """The rows lie on the simplex; filling a gap with the decoder's mean takes a row off it, and the error blamed the
    data ("p(x|z): value of x is outside the support (Simplex()) of Simplex")."""
    torch.manual_seed(0)
    x = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    mask = torch.tensor([[True, False, True, True], [True, True, False, False]])
    with pytest.raises(ValueError, match=_not_factorised(impute.__name__, "Simplex")):
        _run(impute, Simplex() * prior(), Enc(), x, mask)


def test_masked_log_prob_names_a_dirichlet_decoder_and_still_blames_invalid_data_under_a_factorising_one():
    torch.manual_seed(0)
    dec = Simplex()
    z = torch.randn(2, 2)
    x = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    mask = torch.tensor([[True, False, True, True], [True] * 4])
    with pytest.raises(ValueError, match=r"^test: the decoder p\(x\|z\) \(Simplex\) does not factorise .*has shape "
                                         r"\(2,\), x has \(2, 4\)"):
        masked_log_prob(dec, {"x": x, "z": z}, mask, "test")
    # a factorising decoder: an observed value outside its support is still the data's fault, in its own words
    bernoulli = Bernoulli(var=["x"], cond_var=["z"], probs="z")
    x = torch.tensor([[1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match=r"^p\(x\|z\): value of x must lie in \[0, 1\]"):
        masked_log_prob(bernoulli, {"x": x, "z": torch.full((2, 4), 0.3)}, mask, "test")


# ------------------------------------------------------------------ 4: n_samples as numpy / 0-d tensor integers
@pytest.mark.parametrize("impute", [impute_importance, impute_gibbs], ids=["importance", "gibbs"])
@pytest.mark.parametrize("count", [np.int64(3), torch.tensor(3), 3], ids=["numpy", "tensor", "int"])
def test_n_samples_takes_any_integer_as_k_does(impute, count):
    """np.int64(3) and torch.tensor(3) were refused: "n_samples ... must be a positive integer, got np.int64(3)"."""
    torch.manual_seed(0)
    x = torch.tensor([[0.5, 1.0, 0.0, 0.2], [0.1, 0.0, 0.3, 1.0]])
    mask = torch.tensor([[True, False, True, True], [True] * 4])
    diag = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0)
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    p = diag * Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[4], name="p_prior")
    kwargs = {"k": 10} if impute is impute_importance else {"n_iter": 2}
    out = impute(p, q, {"x": x}, mask, n_samples=count, **kwargs)
    assert out.samples.shape == (3, 2, 4)
    assert torch.equal(out.samples[:, mask], x[mask].expand(3, -1))


@pytest.mark.parametrize("impute", [impute_importance, impute_gibbs], ids=["importance", "gibbs"])
@pytest.mark.parametrize("bad", [np.int64(0), torch.tensor(2.5), True, 2.5, None, torch.tensor([3])],
                         ids=["np0", "float tensor", "bool", "float", "None", "1-d tensor"])
def test_n_samples_that_is_not_a_positive_integer_is_named(impute, bad):
    x = torch.tensor([[0.5, 1.0]])
    q = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0) * Normal(var=["z"], loc=0.0, scale=1.0,
                                                                       features_shape=[2], name="p_prior")
    with pytest.raises(ValueError, match=rf"^{impute.__name__}: n_samples \(completed rows per row\) must be a "
                                         r"positive integer, got "):
        impute(p, q, {"x": x}, torch.tensor([[True, False]]), n_samples=bad)


# ------------------------------------------------------------------ 2: experts over several modalities
class PairExpert(Normal):  # q(z|x,y): one expert over a pair of modalities
    def __init__(self):
        super().__init__(var=["z"], cond_var=["x", "y"], name="q")

    def forward(self, x, y):
        return {"loc": x + y, "scale": torch.full_like(x, 0.5)}


class WExpert(Normal):
    def __init__(self):
        super().__init__(var=["z"], cond_var=["w"], name="q")

    def forward(self, w):
        return {"loc": w, "scale": torch.full_like(w, 0.5)}


def _data(n=3):
    g = torch.Generator().manual_seed(0)
    return {m: torch.randn(n, 2, generator=g) for m in "xyw"}


EXPERTS = {"product": lambda: ProductOfNormal([PairExpert(), WExpert()], name="q", features_shape=[2]),
           "mixture": lambda: MixtureOfNormal([PairExpert(), WExpert()], name="q", features_shape=[2])}


@pytest.mark.parametrize("kind", list(EXPERTS))
@pytest.mark.parametrize("given", ["x", "xw", "yw"])
def test_a_modality_that_feeds_no_running_expert_is_an_error(kind, given):
    """x alone: the pair expert was skipped and the product returned the prior, one row for three (and cross_generate
    decoded it); x with w: the result was w's alone, x ignored. The mixture ignored x beside w too."""
    q, d = EXPERTS[kind](), _data()
    other = "y" if "x" in given else "x"
    lone = "x" if "x" in given else "y"
    msg = (rf"^no encoder infers z from exactly {', '.join(sorted(given))}; the encoders are q\(z\|x,y,w\) \(no "
           rf"expert of q\(z\|x,y,w\) can use {lone} without {other}: give its other inputs too, or add an encoder or "
           r"expert for this subset\)$")
    given_dict = {m: d[m] for m in given}
    with pytest.raises(ValueError, match=msg):
        select_encoder(q, given)
    with pytest.raises(ValueError, match=msg):
        infer_latent(q, given_dict)
    decoder = Normal(var=["v"], cond_var=["z"], loc="z", scale=1.0, name="p")
    with pytest.raises(ValueError, match=msg):
        cross_generate(q, decoder, given_dict)


def test_experts_whose_inputs_are_given_still_run_with_n_rows():
    """The product's closed form: the prior N(0, 1) and experts of scale 0.5 (precision 4) give precision 1 + 4 per
    expert present and the precision-weighted mean."""
    q, d = EXPERTS["product"](), _data()
    torch.testing.assert_close(infer_latent(q, {"x": d["x"], "y": d["y"]})["z"], 4 * (d["x"] + d["y"]) / 5)
    torch.testing.assert_close(infer_latent(q, {"w": d["w"]})["z"], 4 * d["w"] / 5)
    torch.testing.assert_close(infer_latent(q, d)["z"], 4 * (d["x"] + d["y"] + d["w"]) / 9)
    mix = EXPERTS["mixture"]()
    torch.testing.assert_close(infer_latent(mix, {"x": d["x"], "y": d["y"], "w": d["w"]})["z"],
                               (d["x"] + d["y"] + d["w"]) / 2)
    decoder = Normal(var=["w"], cond_var=["z"], loc="z", scale=1.0, name="p")
    torch.testing.assert_close(cross_generate(q, decoder, d), 4 * (d["x"] + d["y"]) / 5)


def test_a_renamed_product_of_experts_is_read_in_its_own_names():
    q = EXPERTS["product"]().replace_var(x="a")
    d = _data()
    with pytest.raises(ValueError, match=r"no expert of q\(z\|a,y,w\) can use a without y"):
        infer_latent(q, {"a": d["x"]})
    torch.testing.assert_close(infer_latent(q, {"a": d["x"], "y": d["y"]})["z"], 4 * (d["x"] + d["y"]) / 5)
