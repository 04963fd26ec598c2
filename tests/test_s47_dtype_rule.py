"""Stop 47: one rule for the data's dtype (`kizuna.distributions.base.data_dtype_references`), read by `Model.dtype`
(trainable parameters first) and by the uses (`kizuna.metrics.likelihood._dtype`); a flow held in buffers has a
dtype (`_FlowDistribution._flow_dtype`)."""

import math

import pytest
import torch
from torch import nn

from kizuna.distributions import InverseTransformedDistribution, Normal
from kizuna.flows import Flow
from kizuna.losses import Expectation, KullbackLeibler, LogProb
from kizuna.metrics.likelihood import _dtype
from kizuna.models import Model

F32, F64 = torch.float32, torch.float64


class _Enc(Normal):
    """q(z|x): a linear network, with an optional scale parameter registered before it."""

    def __init__(self, scale_dtype=None):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        if scale_dtype is not None:
            self.s = nn.Parameter(torch.zeros(2, dtype=scale_dtype))
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return {"loc": h[:, :2], "scale": nn.functional.softplus(h[:, 2:]) + 0.1}


class _Dec(Normal):
    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.lin = nn.Linear(2, 4)

    def forward(self, z):
        loc = self.lin(z.to(self.lin.weight.dtype))
        return {"loc": loc, "scale": torch.ones_like(loc)}


def _prior(dtype=F32):
    return Normal(var=["z"], loc=nn.Parameter(torch.zeros(2, dtype=dtype)), scale=1.0, features_shape=[2],
                  name="prior")


def _vae(q, p, prior, dists):
    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
    return loss, Model(loss, distributions=dists)


def _same_step(loss, model, x):
    """model.train on float32 ``x`` gives the loss of the data in the model's dtype (same draws)."""
    torch.manual_seed(1)
    expected = loss.eval({"x": x.to(model.dtype)})
    torch.manual_seed(1)
    assert model.train({"x": x}).item() == expected.item()


class _Stem(Normal):
    """q(z|x): a stem layer that reads x, a trunk and a head; ``table`` adds a large parameter after the stem."""

    def __init__(self, table=False):
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.stem, self.trunk, self.head = nn.Linear(4, 64), nn.Linear(64, 64), nn.Linear(64, 4)
        if table:
            self.table = nn.Parameter(torch.zeros(512, 64))

    def forward(self, x):
        h = self.stem(x)
        h = self.trunk(h.to(self.trunk.weight.dtype)).relu()
        h = self.head(h.to(self.head.weight.dtype)).float()
        return {"loc": h[:, :2], "scale": nn.functional.softplus(h[:, 2:]) + 0.1}


@pytest.mark.parametrize("case", ["float32 stem, bfloat16 trunk", "bfloat16 layers, float32 table"])
def test_an_encoder_takes_the_dtype_of_its_first_layer(case):
    """An encoder's data are its first layer's input: its first parameter decides, whatever the dtype of most of its
    elements (a float32 stem before a large bfloat16 trunk, bfloat16 layers beside a large float32 table: both
    trained at the start of the stop and failed under the stop's own count of elements, diff review 4)."""
    torch.manual_seed(0)
    q = _Stem(table=case.endswith("table"))
    if case.startswith("float32"):
        q.trunk.bfloat16(), q.head.bfloat16()
        want = F32
    else:
        q.stem.bfloat16(), q.trunk.bfloat16(), q.head.bfloat16()
        want = torch.bfloat16
    p, prior = _Dec(), _prior()
    loss, model = _vae(q, p, prior, [q, p, prior])
    assert model.dtype == want
    assert torch.isfinite(model.train({"x": torch.randn(8, 4)}))


def test_a_float32_scale_registered_before_a_float64_network_does_not_decide():
    """`Model.dtype` took each reader's first trainable parameter: the float32 scale the distribution holds itself
    (torch lists a module's own parameters before its submodules') made the data float32 and the float64 network
    refused them. The network's first parameter decides now."""
    torch.manual_seed(0)
    q = _Enc(scale_dtype=F32)
    q.lin.double()
    p, prior = _Dec(), _prior()
    loss, model = _vae(q, p, prior, [q, p, prior])
    assert model.dtype == F64 == _dtype(["x"], prior, q, p)
    _same_step(loss, model, torch.randn(8, 4))


def test_a_frozen_encoder_in_the_distributions_decides():
    """A frozen float64 encoder (the data's network input) beside a trained float32 decoder: `Model.dtype` left it out
    (frozen) and fed it float32 data, which it refused; the uses gave float64."""
    torch.manual_seed(0)
    q = _Enc().double().requires_grad_(False)
    p, prior = _Dec(), _prior()
    loss, model = _vae(q, p, prior, [q, p, prior])
    assert model.dtype == F64 == _dtype(["x"], prior, q, p)
    _same_step(loss, model, torch.randn(8, 4))


def test_a_frozen_float64_encoder_left_out_of_the_distributions_decides():
    """examples/vqvae.py's stage 2: a prior trained on the codes of a frozen encoder passed only in the loss. Its
    float64 encoder got the prior's float32 (`Model.dtype` read the trained distributions only); now float64, as the
    uses. The loss value is checked against the closed form E_q[-log N(z; m, 1)] of the encoder's Gaussian."""
    torch.manual_seed(0)
    q = _Enc().double().requires_grad_(False)
    prior = _prior()
    loss = -Expectation(q, LogProb(prior)).mean()
    model = Model(loss, distributions=[prior])
    assert model.dtype == F64 == _dtype(["x"], prior, q)
    x = torch.randn(8, 4)
    params = q.forward(x.double())
    loc, scale = params["loc"], params["scale"]
    # E_{z ~ N(loc, scale)}[-log N(z; 0, 1)] per dimension: (loc^2 + scale^2 + log 2pi) / 2 (prior mean 0)
    exact = ((loc**2 + scale**2 + math.log(2 * math.pi)) / 2).sum(-1).mean()
    values = torch.stack([model.test({"x": x}) for _ in range(400)])
    assert values.dtype == F64
    assert values.mean().item() == pytest.approx(exact.item(), abs=5 * values.std().item() / 20)


class _LinearDecoder(Normal):
    """p(x|z) = N(z W, 1) with W a float64 constant held in a buffer (no parameter)."""

    def __init__(self):
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.register_buffer("w", torch.tensor([[1.0, 0.5, -1.0, 2.0], [0.25, -2.0, 1.0, 0.5]], dtype=F64))

    def forward(self, z):
        return {"loc": z.to(self.w.dtype) @ self.w, "scale": torch.ones(1, 4, dtype=self.w.dtype)}


def test_a_parameter_free_float64_reader_decides_over_a_trained_prior():
    """A decoder of float64 constants (buffers only) reading x and z, with a trained float32 prior: `Model.dtype` fell
    back to the prior's parameter and rounded the data to float32; the uses gave float64. Checked against
    torch.distributions in float64."""
    p, prior = _LinearDecoder(), _prior()
    loss = -LogProb(p * prior).mean()
    model = Model(loss, distributions=[prior])
    assert model.dtype == F64 == _dtype(["x", "z"], p * prior)
    x64 = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 0.25]], dtype=F64) + 1e-9  # not float32 numbers
    z64 = torch.tensor([[0.3, -0.7], [1.1, 0.2]], dtype=F64) + 1e-9
    d = torch.distributions.Normal
    exact = -(d(z64 @ p.w, 1.0).log_prob(x64).sum(-1) + d(torch.zeros(2, dtype=F64), 1.0).log_prob(z64).sum(-1)).mean()
    value = model.test({"x": x64, "z": z64})
    assert value.dtype == F64 and value.item() == pytest.approx(exact.item(), rel=1e-14)


def test_a_plain_module_beside_readers_does_not_decide_and_alone_it_does():
    """A module holding no distribution (a learned loss coefficient) given to the uses beside the distributions was
    counted as a network reading the data (float64 data for float32 networks); it decides only where nothing else
    reads them (a classifier given alone to `coherence`), as in `Model.dtype`."""
    torch.manual_seed(0)
    q, p, prior = _Enc(), _Dec(), _prior()
    coef = nn.Module()
    coef.log_beta = nn.Parameter(torch.zeros((), dtype=F64))
    _, model = _vae(q, p, prior, [coef, q, p, prior])
    assert model.dtype == F32 == _dtype(["x"], coef, prior, q, p)
    assert _dtype(["generated"], nn.Linear(3, 2).double()) == F64


def test_the_trained_parameters_decide_the_model_every_parameter_the_uses():
    """The one documented difference (`Model.dtype`): a frozen float64 factor scoring x beside a trained float32 one
    leaves training in float32; the uses, evaluating fixed parameters, count it (float64). Where no reader is
    trainable both count all (above)."""
    frozen = Normal(var=["x"], loc=nn.Parameter(torch.zeros(4, dtype=F64), requires_grad=False), scale=1.0,
                    features_shape=[4], name="r")
    trained = Normal(var=["x"], loc=nn.Parameter(torch.zeros(4)), scale=1.0, features_shape=[4], name="t")
    model = Model(-(LogProb(frozen) + LogProb(trained)).mean(), distributions=[frozen, trained])
    assert model.dtype == F32
    assert _dtype(["x"], frozen, trained) == F64


# --- a flow held in buffers: its dtype is checked and narrower values converted -----------------------------------


class _BufferFlow(Flow):
    """z = x W with W a constant held in a buffer (no parameter)."""

    def __init__(self, dtype):
        super().__init__(2)
        self.register_buffer("w", torch.tensor([[2.0, 0.5], [-1.0, 1.5]], dtype=dtype))

    def _forward(self, x, y):
        return x @ self.w, torch.linalg.slogdet(self.w)[1].expand(x.shape[0])

    def _inverse(self, z, y):
        return z @ torch.linalg.inv(self.w), (-torch.linalg.slogdet(self.w)[1]).expand(z.shape[0])


def _buffer_flow(dtype):
    prior = Normal(var=["z"], loc=torch.zeros(2, dtype=dtype), scale=torch.ones(2, dtype=dtype))
    return InverseTransformedDistribution(prior, _BufferFlow(dtype), var=["x"])


def test_a_float64_flow_in_buffers_converts_float32_data():
    """The flow's dtype was read from parameters only: float32 data reached the float64 constants unconverted and the
    product failed in torch's words. Checked against the change of variables in float64."""
    p = _buffer_flow(F64)
    x = torch.tensor([[0.3, -1.2], [2.0, 0.1], [-0.4, 0.9]])
    lp = p.get_log_prob({"x": x})
    w = p.flow.w
    exact = torch.distributions.Normal(0.0, 1.0).log_prob(x.double() @ w).sum(-1) + torch.linalg.slogdet(w)[1]
    assert lp.dtype == F64
    torch.testing.assert_close(lp, exact, rtol=1e-14, atol=0)


def test_a_float32_flow_in_buffers_refuses_float64_data_naming_both():
    p = _buffer_flow(F32)
    with pytest.raises(ValueError, match=r"^p\(x\): x is torch\.float64 but the flow is torch\.float32: convert one "
                                         r"\(e\.g\. \.to\(torch\.float32\) on the value, or the distribution's "
                                         r"\.to\(torch\.float64\)\)$"):
        p.get_log_prob({"x": torch.zeros(3, 2, dtype=F64)})


# Diff review 2 (stop 47): the first unified rule let a DDPM's noise kernel (buffers only, float32 on purpose) decide.
class _Eps(torch.nn.Module):
    """A tiny ε-network ``eps(x_t, t)``."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 4)

    def forward(self, x, t):
        return self.lin(torch.cat([x, t.to(x.dtype).unsqueeze(-1) / 100], -1))


def _ddpm(dtype):
    from kizuna.distributions import DiffusionReverse, DiffusionSchedule
    from kizuna.losses import simple_diffusion_loss

    torch.manual_seed(0)
    rev = DiffusionReverse(_Eps(), DiffusionSchedule.linear(100))
    return rev, simple_diffusion_loss(rev).mean()


def test_a_float64_network_with_the_default_schedule_gets_float64_data():
    """A float64 ε-network beside the default (float32) schedule: the kernel's float32 buffers decided and the
    network refused the data ("mat1 and mat2 must have the same dtype"); before this stop it trained in float64."""
    rev, loss = _ddpm(F64)
    rev.eps_net.double()
    model = Model(loss, distributions=[rev])
    assert model.dtype == F64
    x = torch.rand(6, 4) * 2 - 1
    torch.manual_seed(1)
    got = model.test({"x_0": x})
    torch.manual_seed(1)
    assert got.dtype == F64 and torch.equal(got, loss.eval({"x_0": x.double()}))


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_a_half_precision_ddpm_takes_half_precision_data(half):
    """``rev.to(bfloat16)`` converts the network and the schedule's data marker (its table stays float32): the data
    come in the network's dtype, as `DiffusionSchedule.dtype` says (the table's float32 decided)."""
    rev, loss = _ddpm(half)
    rev.to(half)
    model = Model(loss, distributions=[rev])
    assert model.dtype == half == rev.schedule.dtype


def test_a_bfloat16_network_keeping_its_layernorm_in_float32_takes_bfloat16_input():
    """Mixed precision by hand (the network in bfloat16, its LayerNorm in float32): the encoder takes its first
    layer's dtype (bfloat16); the widest fed it float32 data, which it refused."""

    class Enc(Normal):
        def __init__(self):
            super().__init__(var=["z"], cond_var=["x"], name="q")
            self.l1, self.ln, self.l2 = torch.nn.Linear(12, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 8)

        def forward(self, x):
            loc, s = self.l2(self.ln(self.l1(x)).to(self.l2.weight.dtype)).chunk(2, -1)
            return {"loc": loc, "scale": torch.nn.functional.softplus(s) + 1e-3}

    torch.manual_seed(0)
    q = Enc().to(torch.bfloat16)
    q.ln.float()
    prior = Normal(var=["z"], loc=torch.zeros(4, dtype=torch.bfloat16), scale=torch.ones(4, dtype=torch.bfloat16),
                   features_shape=[4], name="prior")
    model = Model(KullbackLeibler(q, prior).mean(), distributions=[q])
    assert model.dtype == torch.bfloat16
    assert torch.isfinite(model.train({"x": torch.rand(5, 12)}))


def test_a_frozen_first_layer_decides_and_an_epsilon_network_converted_alone_gets_its_dtype():
    """The last look of stop 47: an encoder whose float32 first layer is frozen before a trained bfloat16 trunk took
    the trunk's dtype (the first *trainable* parameter) and failed; a DDPM whose ε-network alone was converted to
    bfloat16 took the float32 schedule's marker."""
    torch.manual_seed(0)
    q = _Stem()
    q.trunk.bfloat16(), q.head.bfloat16()
    q.stem.requires_grad_(False)
    p, prior = _Dec(), _prior()
    loss, model = _vae(q, p, prior, [q, p, prior])
    assert model.dtype == F32 == _dtype(["x"], prior, q, p)
    assert torch.isfinite(model.train({"x": torch.randn(8, 4)}))
    rev, loss = _ddpm(torch.bfloat16)
    rev.eps_net.bfloat16()
    assert Model(loss, distributions=[rev]).dtype == torch.bfloat16
