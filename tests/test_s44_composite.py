"""Composite distributions (review A, stop 44): mixture variances in float32 with large means (F1), options passed
through a renaming (F2), and one row of a condition beside another variable's batch for network-parameterised
distributions (F3)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import (
    Categorical,
    MixtureModel,
    MixtureOfNormal,
    Normal,
    TransformedDistribution,
)
from kizuna.flows import MAF, FlowList, Reverse

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------ F1
def _total_variance(w: list[float], mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """The law of total variance in float64 from the (float32-rounded) parameters: components stacked on dim 0."""
    w64 = torch.tensor(w, dtype=F64).reshape(-1, *[1] * (mu.dim() - 1))
    mu, sd = mu.double(), sd.double()
    mean = (w64 * mu).sum(0)
    return (w64 * (sd**2 + (mu - mean) ** 2)).sum(0)


def test_mixture_sample_variance_keeps_its_precision_in_float32_with_large_means() -> None:
    """Means 1000 and 1000.1, scales 0.1 (weights 0.3 / 0.7) in float32: the variance is 0.0121, not the 0 of the raw
    moments' cancellation; MixtureModel and MixtureOfNormal (per row and feature, conditional experts) against a
    float64 law of total variance of the same float32 parameters."""
    mu = torch.tensor([1000.0, 1000.1])  # float32, as the model holds them
    sd = torch.tensor([0.1, 0.1])
    ref = _total_variance([0.3, 0.7], mu, sd)
    mm = MixtureModel([Normal(var=["x"], loc=mu[0].item(), scale=0.1), Normal(var=["x"], loc=mu[1].item(), scale=0.1)],
                      Categorical(var=["z"], probs=torch.tensor([0.3, 0.7])))
    got = mm.sample_variance({})
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double().reshape(()), ref, rtol=1e-4, atol=0)
    # MixtureOfNormal, conditional experts over rows of two features (means 3000 around spreads of 1 and 0.1)
    x = torch.tensor([[1000.0, 3000.0], [1000.1, -3000.0], [5.0, 3000.5]])
    y = torch.tensor([[1000.1, 3000.5], [1000.0, -3000.5], [5.1, 3000.0]])
    qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=torch.tensor([0.1, 1.0]), name="q")
    qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=torch.tensor([0.1, 1.0]), name="q")
    moe = MixtureOfNormal([qx, qy], weights=[0.3, 0.7], name="q")
    got = moe.sample_variance({"x": x, "y": y})
    assert got.shape == (3, 2) and got.dtype == torch.float32
    ref = _total_variance([0.3, 0.7], torch.stack([x, y]), torch.tensor([0.1, 1.0]).expand(2, 3, 2))
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=0)
    assert bool((got > 0).all())


# ------------------------------------------------------------------------------------------------------ F2
def _mixture() -> MixtureModel:
    comps = [Normal(var=["x"], loc=-1.0, scale=1.0), Normal(var=["x"], loc=2.0, scale=0.5)]
    return MixtureModel(comps, Categorical(var=["z"], probs=torch.tensor([0.3, 0.7], dtype=F64))).double()


def test_renamed_mixture_passes_return_hidden_to_the_mixture() -> None:
    """``mm.replace_var(x="obs")`` with ``return_hidden=True``: the log-density of every component joint with its
    choice, shape (K, batch), equal to the unrenamed mixture's and to log w_k + log N(x; mu_k, sd_k) (it was log p(x),
    shape (batch,)); ``sample`` returns the component choice under its name, the same draws as the unrenamed mixture
    (and an option error speaks of the renamed distribution)."""
    mm = _mixture()
    renamed = mm.replace_var(x="obs")
    x = torch.linspace(-3, 3, 5, dtype=F64)[:, None]
    got = renamed.get_log_prob({"obs": x}, return_hidden=True)
    loc, scale = torch.tensor([[-1.0], [2.0]], dtype=F64), torch.tensor([[1.0], [0.5]], dtype=F64)
    ref = torch.tensor([[math.log(0.3)], [math.log(0.7)]], dtype=F64) + D.Normal(loc, scale).log_prob(x[:, 0])
    assert got.shape == (2, 5)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, mm.get_log_prob({"x": x}, return_hidden=True), rtol=0, atol=0)
    # without the option: log p(x), as before
    torch.testing.assert_close(renamed.get_log_prob({"obs": x}), torch.logsumexp(ref, 0), rtol=1e-12, atol=1e-12)
    torch.manual_seed(3)
    plain = mm.sample(batch_n=4, return_hidden=True)
    torch.manual_seed(3)
    out = renamed.sample(batch_n=4, return_hidden=True)
    assert sorted(out) == ["obs", "z"]
    torch.testing.assert_close(out["obs"], plain["x"], rtol=0, atol=0)
    torch.testing.assert_close(out["z"], plain["z"], rtol=0, atol=0)
    assert out["z"].shape == (4, 2) and bool((out["z"].sum(-1) == 1).all())
    assert sorted(renamed.sample({"c": torch.zeros(4, 1)}, return_hidden=True, return_all=False)) == ["obs", "z"]
    assert sorted(renamed.sample(batch_n=4)) == ["obs"]
    with pytest.raises(ValueError, match=r"^p\(obs\): return_hidden takes no sample_shape"):
        renamed.sample(batch_n=4, sample_shape=(2,), return_hidden=True)


def test_renamed_flow_returns_its_base_draw_as_the_flow_does() -> None:
    """A renamed TransformedDistribution returns the prior's draw z0 beside its variable (Pixyz's default; it was
    dropped): the same draws as the unrenamed flow, and obs = f(z0); ``return_hidden=False`` returns obs only."""
    torch.manual_seed(0)
    flow = FlowList([MAF(2, [8]), Reverse(2)]).double()
    p = TransformedDistribution(Normal(var=["z"], loc=torch.zeros(2, dtype=F64), scale=torch.ones(2, dtype=F64)),
                                flow, var=["x"])
    renamed = p.replace_var(x="obs")
    torch.manual_seed(1)
    plain = p.sample(batch_n=3)
    torch.manual_seed(1)
    out = renamed.sample(batch_n=3)
    assert sorted(out) == ["obs", "z"]
    torch.testing.assert_close(out["z"], plain["z"], rtol=0, atol=0)
    torch.testing.assert_close(out["obs"], plain["x"], rtol=0, atol=0)
    torch.testing.assert_close(out["obs"], flow(out["z"]), rtol=1e-12, atol=1e-12)
    assert sorted(renamed.sample(batch_n=3, return_hidden=False)) == ["obs"]
    # renamed onto the prior's variable: that name holds the flow's value (as an unrenamed flow named like its prior)
    onto = p.replace_var(x="z").sample(batch_n=3)
    assert sorted(onto) == ["z"] and onto["z"].shape == (3, 2)


# ------------------------------------------------------------------------------------------------------ F3
class _Net(Normal):
    """q(var|cond): loc and scale from a linear layer (a network-parameterised expert)."""

    def __init__(self, var: str, cond: str, d_in: int, d_out: int, rows: int | None = None) -> None:
        super().__init__(var=[var], cond_var=[cond], name="q", features_shape=[d_out])
        self.layer = nn.Linear(d_in, 2 * d_out, dtype=F64)
        self.rows = rows  # a broken network: this many rows whatever it is given

    def forward(self, **cond: torch.Tensor) -> dict[str, torch.Tensor]:
        (value,) = cond.values()
        loc, pre = self.layer(value).chunk(2, -1)
        if self.rows is not None:
            loc, pre = loc[:1].expand(self.rows, -1), pre[:1].expand(self.rows, -1)
        return {"loc": loc, "scale": F.softplus(pre) + 0.1}


def test_network_distribution_given_one_row_beside_another_variables_batch_conditions_every_row() -> None:
    """One row of y beside 4000 rows of x: a network's q(z|y) draws 4000 rows (it was refused: "the parameters have
    batch size 4000 but ... forward must return one row of parameters per row of its inputs"), alone, as an expert of
    a mixture (sample_each and sample: the mixture's mean and variance), and as a factor of a product (its density
    at the draws by hand); a network that returns another number of rows is still refused."""
    torch.manual_seed(0)
    n = 4000
    qx, qy = _Net("z", "x", 3, 2), _Net("z", "y", 4, 2)
    x = torch.randn(1, 3, dtype=F64).expand(n, 3)  # one value of x on every row: the draws' statistics are exact
    y = torch.randn(1, 4, dtype=F64)
    with torch.no_grad():
        px, py = qx.forward(x=x[:1]), qy.forward(y=y)
    se = 5 / math.sqrt(n)
    # alone: the same draws as with batch_n
    torch.manual_seed(1)
    alone = qy.sample({"x": x, "y": y})["z"]
    torch.manual_seed(1)
    torch.testing.assert_close(alone, qy.sample({"y": y}, batch_n=n)["z"], rtol=0, atol=0)
    # a mixture of network experts, either order
    for experts, iy in (([qx, qy], 1), ([qy, qx], 0)):
        m = MixtureOfNormal(experts)
        each = m.sample_each({"x": x, "y": y})
        assert each[0].shape == each[1].shape == (n, 2)
        z = each[iy]
        assert (z.mean(0) - py["loc"][0]).abs().max().item() < se * py["scale"].max().item()
        assert (z.std(0) / py["scale"][0] - 1).abs().max().item() < 0.05
        draws = m.sample({"x": x, "y": y})["z"]
        assert draws.shape == (n, 2)
        mean = 0.5 * (px["loc"][0] + py["loc"][0])
        var = 0.5 * (px["scale"][0] ** 2 + py["scale"][0] ** 2) + 0.25 * (px["loc"][0] - py["loc"][0]) ** 2
        assert ((draws.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all()
        torch.testing.assert_close(m.sample_variance({"x": x[:1], "y": y})[0], var, rtol=1e-12, atol=1e-12)
    # a factor of a product beside a factor conditioned on x
    qw = _Net("w", "x", 3, 3)
    for p in (qy * qw, qw * qy):
        out = p.sample({"x": x[:6], "y": y})
        assert out["z"].shape == (6, 2) and out["w"].shape == (6, 3)
        with torch.no_grad():
            pw = qw.forward(x=x[:6])
            ref = (D.Normal(py["loc"], py["scale"]).log_prob(out["z"]).sum(-1)
                   + D.Normal(pw["loc"], pw["scale"]).log_prob(out["w"]).sum(-1))
        torch.testing.assert_close(p.get_log_prob(out), ref, rtol=1e-12, atol=1e-12)
    # a network that returns 2 rows for its 6: refused, with the rows it returned
    broken = _Net("z", "y", 4, 2, rows=2)
    with pytest.raises(ValueError, match=r"^q\(z\|y\): the parameters have batch size 2 but the conditioning values "
                                         r"\(y\) have batch size 6; forward must return one row of parameters per "
                                         r"row of its inputs$"):
        broken.sample({"x": x[:6], "y": torch.randn(6, 4, dtype=F64)})


def test_mixture_of_normal_with_sample_shape_one_row_beside_a_batch() -> None:
    """sample_shape=(S,) with one row of y beside 6 rows of x (or with batch_n): draws (S, 6, 1), each row a draw of
    its own mixture (means 0.5 (x_b + y), by row), as a single expert draws it (it was refused: "the experts' inputs
    have different numbers of rows (q(z|x): 18, q(z|y): 3)")."""
    torch.manual_seed(0)
    qx = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    qy = Normal(var=["z"], cond_var=["y"], loc="y", scale=1.0, name="q")
    m = MixtureOfNormal([qx, qy]).double()
    x = torch.arange(6, dtype=F64)[:, None] * 4
    y = torch.tensor([[-3.0]], dtype=F64)
    s = 3000
    z = m.sample({"x": x, "y": y}, sample_shape=(s,))["z"]
    assert z.shape == (s, 6, 1)
    mean = 0.5 * (x + y)
    var = 1 + 0.25 * (x - y) ** 2
    assert ((z.mean(0) - mean).abs() < 5 * (var / s).sqrt()).all()
    assert m.sample({"y": y}, batch_n=5, sample_shape=(2,))["z"].shape == (2, 5, 1)
    assert m.sample({"x": x, "y": y}, batch_n=6, sample_shape=(2,))["z"].shape == (2, 6, 1)
