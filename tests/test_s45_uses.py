"""Review stop 45, area D (the uses layer): a decoder given without its prior is refused by `anomaly_score` (both
methods) and `impute_importance` (whatever ``defensive``), as `log_likelihood` refuses it; the data's floating dtype
is that of the distributions that read them (the widest of their parameters', else buffers'), so float64
parameter-free experts of a `ProductOfNormal` and float64 factors beside float32 ones are not rounded to float32,
whatever the order of the factors, and a learned prior wider than the networks does not decide it."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from kizuna.distributions import Normal, ProductOfNormal
from kizuna.inference import anomaly_score, cross_generate, impute_importance, infer_latent
from kizuna.metrics import log_likelihood

F64 = torch.float64


class Posterior(Normal):
    """q(z|x) = p(z|x) = N(x/2, 1/2) for z ~ N(0, 1), x|z ~ N(z, 1) (no tensors of its own: the dtype is p's)."""

    def forward(self, x):
        return {"loc": x / 2, "scale": torch.full_like(x, 0.5 ** 0.5)}


def _lik() -> Normal:
    return Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, name="p").double()  # float64 buffer, no parameter


def _prior(dtype: torch.dtype = F64) -> Normal:
    return Normal(var=["z"], loc=torch.zeros(1, dtype=dtype), scale=torch.ones(1, dtype=dtype), name="p_prior")


X = torch.tensor([[0.0], [1.0 / 3.0], [4.0], [-2.0 ** 0.5]], dtype=F64)
EXACT = -stats.norm(0.0, 2.0 ** 0.5).logpdf(X.numpy()[:, 0])  # -log p(x), p(x) = N(0, 2)


def _missing_prior(who: str, consequence: str) -> str:
    return re.escape(f"{who}: p_joint is p(x|z), conditioned on z, which q q(z|x) draws: the prior of z is missing, "
                     f"so {consequence}; pass the joint, e.g. p_x_given_z * prior")


# ------------------------------------------------------------------ 1. anomaly_score without the prior
@pytest.mark.parametrize("method", ["iwae", "elbo"])
def test_anomaly_score_refuses_a_decoder_without_its_prior_for_both_methods(method: str) -> None:
    """The ELBO score of p(x|z) alone, -E_q[log p(x|z)] - H[q], was returned as -log p(x), nats off; with the exact
    posterior the score of the joint is -log p(x) itself (scipy)."""
    q = Posterior(var=["z"], cond_var=["x"], name="q")
    with pytest.raises(ValueError, match="^" + _missing_prior("anomaly_score", "the score would not be -log p(x)")):
        anomaly_score(_lik(), q, {"x": X}, method=method, k=3)
    score = anomaly_score(_lik() * _prior(), q, {"x": X}, method=method, k=3)
    np.testing.assert_allclose(score.numpy(), EXACT, rtol=1e-13)


def test_log_likelihood_keeps_its_words_for_a_decoder_without_its_prior() -> None:
    q = Posterior(var=["z"], cond_var=["x"], name="q")
    with pytest.raises(ValueError, match="^" + _missing_prior("log_likelihood", "the estimate would not be log p(x)")):
        log_likelihood(_lik(), q, {"x": X}, k=3)


# ------------------------------------------------------------------ 2. impute_importance without the prior
@pytest.mark.parametrize("defensive", [0.0, 0.2, 1.0])
def test_impute_importance_refuses_a_decoder_without_its_prior_whatever_defensive(defensive: float) -> None:
    """defensive=0, which the old error advised, weighted by p(x_obs|z) / q(z|x~) without p(z) and returned the mean of
    another posterior (1.17 off the exact Gaussian conditional in the review's factor-analysis model)."""
    q = Posterior(var=["z"], cond_var=["x"], name="q")
    x = torch.tensor([[1.0, math.nan]], dtype=F64)
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, name="p").double()
    with pytest.raises(ValueError, match="^" + _missing_prior(
            "impute_importance", "the importance weights would not be those of p(z|x_obs)")):
        impute_importance(lik, q, {"x": x}, torch.tensor([[True, False]]), k=10, defensive=defensive)


def test_impute_importance_still_advises_defensive_0_where_the_prior_is_there_but_cannot_be_drawn() -> None:
    """q draws z and an auxiliary w of which p has no factor: p(z) is there (no missing-prior error), but the factors
    over q's variables do not make a draw of q; the advice stays."""
    class Row(Normal):  # q(z|x) from the first entry: N(x_1 / 2, 1), a proposal wider than p(z|x_1)
        def forward(self, x):
            return {"loc": x[:, :1] / 2, "scale": torch.ones_like(x[:, :1])}

    aux = Normal(var=["w"], loc=torch.zeros(1, dtype=F64), scale=torch.ones(1, dtype=F64), name="q")
    q = Row(var=["z"], cond_var=["x"], name="q") * aux
    lik = Normal(var=["x"], cond_var=["z"], loc="z", scale=torch.ones(2, dtype=F64), name="p")
    p_joint = lik * _prior()
    x, mask = torch.tensor([[1.5, math.nan]], dtype=F64), torch.tensor([[True, False]])
    with pytest.raises(ValueError, match=re.escape(
            "impute_importance: the factors of p(x,z) over z, w do not form a prior to draw from; use defensive=0")):
        impute_importance(p_joint, q, {"x": x}, mask, k=10, defensive=0.2)


# ------------------------------------------------------------------ 3. the data's floating dtype
def test_infer_latent_and_cross_generate_keep_float64_for_parameter_free_float64_experts() -> None:
    """The product's own N(0, I) buffers, made in the default float32, were the first floating tensor: float64 data
    were rounded to float32 (6.7e-8 off the closed form, a float32 latent)."""
    qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=0.5, name="q").double()
    qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=2.0, name="q").double()
    q = ProductOfNormal([qx, qy], name="q", features_shape=[3])  # no .double() on the product
    x = torch.tensor([[0.1, 1 / 3, 2 ** 0.5]], dtype=F64)
    y = torch.tensor([[-0.7, 1 / 7, 3 ** 0.5]], dtype=F64)
    for given, ref in [({"x": x}, x * 4 / 5), ({"x": x, "y": y}, (4 * x + y / 4) / (1 + 4 + 1 / 4))]:
        z = infer_latent(q, given)["z"]  # precision-weighted mean with the N(0, 1) prior expert
        assert z.dtype == F64
        np.testing.assert_allclose(z.numpy(), ref.numpy(), rtol=1e-15, atol=1e-16)
    p_y = Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0, name="p").double()
    y_hat = cross_generate(q, p_y, {"x": x})
    assert y_hat.dtype == F64
    np.testing.assert_allclose(y_hat.numpy(), (x * 4 / 5).numpy(), rtol=1e-15, atol=1e-16)


@pytest.mark.parametrize("order", ["prior32 * lik64", "lik64 * prior32"])
@pytest.mark.parametrize("method", ["iwae", "elbo"])
def test_scores_do_not_depend_on_the_order_of_factors_of_two_dtypes(order: str, method: str) -> None:
    """Parameter-free factors, a float32 prior and a float64 decoder: the first buffer decided, so prior32 * lik64 was
    scored in float32 (5.9e-6 off) and lik64 * prior32 in float64; now float64 both ways (scipy's -log p(x))."""
    p_joint = _prior(torch.float32) * _lik() if order.startswith("prior") else _lik() * _prior(torch.float32)
    q = Posterior(var=["z"], cond_var=["x"], name="q")
    score = anomaly_score(p_joint, q, {"x": X}, method=method, k=3)
    assert score.dtype == F64
    np.testing.assert_allclose(score.numpy(), EXACT, rtol=1e-13)
    if method == "iwae":
        ll = log_likelihood(p_joint, q, {"x": X}, k=3)
        assert ll.dtype == F64
        np.testing.assert_allclose(ll.numpy(), -EXACT, rtol=1e-13)


def test_a_float32_network_beside_float64_buffers_gets_float32_data() -> None:
    """Parameters before buffers: a float32 encoder with a float64 prior (built from numpy values, say) takes float32
    data (the widest of all tensors would feed it float64). The first parameter or buffer of p_joint, then of q, was
    the prior's float64 buffer, and the encoder refused the data. The encoder is the exact posterior, so the ELBO
    score is -log p(x) (to float32's precision)."""

    class Encoder(Normal):
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.net = torch.nn.Linear(1, 1)
            with torch.no_grad():
                self.net.weight.fill_(0.5)
                self.net.bias.zero_()

        def forward(self, x):
            return {"loc": self.net(x), "scale": torch.full_like(x, 0.5 ** 0.5)}

    q = Encoder()
    score = anomaly_score(_prior(F64) * _lik().float(), q, {"x": X}, method="elbo", k=2)
    np.testing.assert_allclose(score.numpy(), EXACT, rtol=1e-6)
    z = infer_latent(q, {"x": X})["z"]
    assert z.dtype == torch.float32
    np.testing.assert_allclose(z.numpy(), X.numpy() / 2, rtol=1e-7)


# ------------------------------------------------------------------ 4. a learned prior wider than the networks
class _NetEncoder(Normal):
    """q(z|x) = N(x/2, 1/2), the exact posterior for z ~ N(0, 1), x|z ~ N(z, 1), through a network (weights exact in
    bfloat16)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = torch.nn.Linear(1, 1).to(dtype)
        with torch.no_grad():
            self.net.weight.fill_(0.5)
            self.net.bias.zero_()

    def forward(self, x):
        return {"loc": self.net(x), "scale": torch.full_like(x, 0.5 ** 0.5)}


class _NetDecoder(Normal):
    """p(x|z) = N(z, 1) through a network."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = torch.nn.Linear(1, 1).to(dtype)
        with torch.no_grad():
            self.net.weight.fill_(1.0)
            self.net.bias.zero_()

    def forward(self, z):
        return {"loc": self.net(z), "scale": torch.ones_like(z)}


@pytest.mark.parametrize("order", ["p * prior", "prior * p"])
@pytest.mark.parametrize(("net", "wide"), [(torch.bfloat16, torch.float32), (torch.float32, F64)],
                         ids=["bf16 nets, float32 prior", "float32 nets, float64 prior"])
def test_a_learned_prior_wider_than_the_networks_does_not_decide_the_datas_dtype(net, wide, order) -> None:
    """bf16 networks beside a learned prior mean kept in float32 (float32 networks, a float64 one), as `Model.fit`
    trains them: the widest of all parameters fed the networks the prior's dtype, which they refused ("x is
    torch.float32, but its network takes torch.bfloat16"); before that, the first parameter decided, so p * prior ran
    and prior * p was refused. The data take the dtype of the decoder and encoder that read them: the scores equal
    those of the same model with the prior's mean a constant buffer (which never decided), and, with the exact
    posterior, scipy's -log p(x) to the networks' precision."""
    q, p = _NetEncoder(net), _NetDecoder(net)
    x = torch.tensor([[0.0], [0.5], [4.0], [-1.5]], dtype=F64)  # exact in bfloat16
    exact = -stats.norm(0.0, 2.0 ** 0.5).logpdf(x.numpy()[:, 0])

    def prior(loc: torch.Tensor) -> Normal:
        return Normal(var=["z"], loc=loc, scale=torch.ones(1, dtype=wide), name="p_prior")

    learned, constant = prior(torch.nn.Parameter(torch.zeros(1, dtype=wide))), prior(torch.zeros(1, dtype=wide))
    assert [t.dtype for t in learned.parameters()] == [wide]

    def joint(pr: Normal) -> Normal:
        return p * pr if order == "p * prior" else pr * p

    scores = {}
    for name, pr in (("learned", learned), ("constant", constant)):
        out = []
        for method in ("elbo", "iwae"):
            torch.manual_seed(0)
            out.append(anomaly_score(joint(pr), q, {"x": x}, method=method, k=4))
        torch.manual_seed(0)
        out.append(-log_likelihood(joint(pr), q, {"x": x}, k=4))
        scores[name] = out
    rtol = 1e-2 if net == torch.bfloat16 else 1e-6  # (2.5e-3 and 4.8e-8 off)
    for got, same in zip(scores["learned"], scores["constant"], strict=True):
        assert got.dtype == wide  # the prior's log-density promotes the sum, as it did in p * prior before
        torch.testing.assert_close(got, same, rtol=0, atol=0)
        np.testing.assert_allclose(got.double().numpy(), exact, rtol=rtol)


@pytest.mark.parametrize(("net", "wide"), [(torch.bfloat16, torch.float32), (torch.float32, F64)],
                         ids=["bf16 nets, float32 prior", "float32 nets, float64 prior"])
def test_impute_importance_with_a_learned_prior_wider_than_the_networks(net, wide) -> None:
    """The defensive share of the draws comes from the prior, in its dtype: torch.cat made every draw the prior's
    float32 (float64), which the bf16 (float32) decoder refused, "p(x|z): z is torch.float32, but its network takes
    torch.bfloat16", whatever the factor order (before, prior * p was refused at the data already). The prior's draws
    now take q's dtype. z ~ N(0, 1), x | z ~ N((z, z), I): E[x_2 | x_1] = x_1 / 2 (Monte Carlo, k = 4000: ~0.01)."""

    class Encoder(Normal):  # q(z|x) = N(x_1 / 2, 1/2) = p(z|x_1)
        def __init__(self) -> None:
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.net = torch.nn.Linear(2, 1).to(net)
            with torch.no_grad():
                self.net.weight.copy_(torch.tensor([[0.5, 0.0]]))
                self.net.bias.zero_()

        def forward(self, x):
            return {"loc": self.net(x), "scale": torch.full_like(x[:, :1], 0.5 ** 0.5)}

    class Decoder(Normal):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.net = torch.nn.Linear(1, 2).to(net)
            with torch.no_grad():
                self.net.weight.fill_(1.0)
                self.net.bias.zero_()

        def forward(self, z):
            loc = self.net(z)
            return {"loc": loc, "scale": torch.ones_like(loc)}

    prior = Normal(var=["z"], loc=torch.nn.Parameter(torch.zeros(1, dtype=wide)), scale=torch.ones(1, dtype=wide),
                   name="p_prior")
    x = torch.tensor([[1.0, math.nan], [-2.0, math.nan]], dtype=F64)
    mask = torch.tensor([[True, False], [True, False]])
    torch.manual_seed(0)
    result = impute_importance(prior * Decoder(), Encoder(), {"x": x}, mask, k=4000)  # defensive=0.2
    np.testing.assert_allclose(result.mean[:, 1].double().numpy(), [0.5, -1.0], atol=0.05)
    np.testing.assert_array_equal(result.mean[:, 0].double().numpy(), [1.0, -2.0])
