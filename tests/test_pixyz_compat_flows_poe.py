"""Pixyz 0.3.3 compatibility of the normalisation flows and the product of experts (review s40, findings 2, 4, 5):
``ActNorm2d(C, scale)`` (Pixyz's second argument), Pixyz checkpoints of ``ActNorm2d`` and ``BatchNorm2d`` (Pixyz's
names and shapes), and ``ProductOfNormal(p, weight_modalities=...)``. The state dicts are written here in Pixyz's
format with known values (this test does not import Pixyz); references are the closed-form maps and products worked
out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from kizuna.distributions import ElementWiseProductOfNormal, Normal, ProductOfNormal, TransformedDistribution
from kizuna.flows import ActNorm, ActNorm2d, BatchNorm2d, FlowList

F64 = torch.float64


# ------------------------------------------------------------------ ActNorm2d(C, scale)
def _image_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 3, 4, 4, generator=g, dtype=F64) * torch.tensor([5.0, 0.5, 2.0], dtype=F64).view(
        1, 3, 1, 1) + 1.0


@pytest.mark.parametrize("make", [lambda: ActNorm2d(3, 2.0), lambda: ActNorm2d(3, scale=2.0)],
                         ids=["positional", "keyword"])
def test_actnorm_scale_gives_output_std_scale(make) -> None:
    """Pixyz's ActNorm2d(C, scale): the first training batch comes out with per-channel std ``scale``. Before: the
    positional 2.0 was read as eps (output std 0.96 with this batch), and ``scale=`` raised TypeError."""
    x = _image_batch()
    f = make().double().train()
    z = f(x)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    # closed form: b = -mean, l = log 2 - log(var + 1e-6) / 2
    log_scale = math.log(2.0) - 0.5 * torch.log(var + 1e-6)
    torch.testing.assert_close(z, (x - mean.view(1, 3, 1, 1)) * log_scale.exp().view(1, 3, 1, 1))
    # (std 2 sqrt(var / (var + eps)): 2 up to 4e-6 for channel 1, var 0.25)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.full((3,), 2.0, dtype=F64), atol=1e-5, rtol=0)
    torch.testing.assert_close(f.logdet_jacobian, (16 * log_scale.sum()).expand(64))
    assert f.scale == 2.0 and f.eps == 1e-6


def test_actnorm_scale_and_eps_checked() -> None:
    with pytest.raises(ValueError, match=r"^ActNorm: scale must be a positive finite number, got 0$"):
        ActNorm(2, scale=0)
    with pytest.raises(ValueError, match=r"^ActNorm: scale must be a positive finite number, got -2.0$"):
        ActNorm(2, -2.0)
    with pytest.raises(TypeError):  # eps is keyword-only: a third positional argument is refused
        ActNorm(2, 1.0, 1e-3)
    assert ActNorm(2, eps=1e-3).eps == 1e-3


# ------------------------------------------------------------------ Pixyz checkpoints of ActNorm2d
# bias b = (0.5, -1, 2), logs l = log(2, 0.5, 4) as Pixyz saves them: (1, C, 1, 1) each, no "initialised" flag.
PIXYZ_ACTNORM = {"bias": torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1),
                 "logs": torch.log(torch.tensor([2.0, 0.5, 4.0])).view(1, 3, 1, 1)}
# by hand, x = 1 everywhere: z = (1 + b) e^l = (1.5 * 2, 0 * 0.5, 3 * 4) = (3, 0, 12);
# log-det = H W (log 2 + log 0.5 + log 4) = 4 log 4 on 2 x 2 images
Z_OF_ONES = torch.tensor([3.0, 0.0, 12.0]).view(1, 3, 1, 1).expand(5, 3, 2, 2)
LOGDET = 4 * math.log(4.0)


def test_actnorm_loads_pixyz_state_dict_strictly() -> None:
    """Before: strict loading raised (missing log_scale / initialized, unexpected logs, size mismatch of bias)."""
    f = ActNorm2d(3)
    f.load_state_dict(PIXYZ_ACTNORM)
    assert bool(f.initialized)
    assert f.bias.shape == (3,) and f.log_scale.shape == (3,)
    f.train()  # a training forward keeps the loaded values (the layer counts as initialised)
    x = torch.ones(5, 3, 2, 2)
    torch.testing.assert_close(f(x), Z_OF_ONES)
    torch.testing.assert_close(f.logdet_jacobian, torch.full((5,), LOGDET))
    torch.testing.assert_close(f.inverse(Z_OF_ONES), x)
    assert set(f.state_dict()) == {"bias", "log_scale", "initialized"}


def test_actnorm_pixyz_keys_load_inside_a_flow_list() -> None:
    """The keys carry the layer's prefix (``flow_list.1.logs``) in a Pixyz FlowList's checkpoint."""
    flow = FlowList([ActNorm2d(3), ActNorm2d(3)])
    flow.load_state_dict({f"flow_list.{i}.{k}": v for i in (0, 1) for k, v in PIXYZ_ACTNORM.items()})
    z = flow.train()(torch.ones(5, 3, 2, 2))
    # by hand: the second layer maps (3, 0, 12) to ((3 + 0.5) 2, (0 - 1) 0.5, (12 + 2) 4) = (7, -0.5, 56)
    torch.testing.assert_close(z, torch.tensor([7.0, -0.5, 56.0]).view(1, 3, 1, 1).expand(5, 3, 2, 2))
    torch.testing.assert_close(flow.logdet_jacobian, torch.full((5,), 2 * LOGDET))


def test_actnorm_parameters_without_flag_count_as_initialised() -> None:
    """The review's p24: kizuna's names, no ``initialized``, strict=False. Before: the flag stayed False and the
    first training forward initialised over the loaded bias 5."""
    f = ActNorm2d(3)
    result = f.load_state_dict({"bias": torch.full((3,), 5.0), "log_scale": torch.full((3,), 1.0)}, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    f.train()(torch.randn(8, 3, 2, 2))
    torch.testing.assert_close(f.bias.data, torch.full((3,), 5.0))


def test_actnorm_own_checkpoint_round_trip_keeps_flag() -> None:
    """kizuna's own state (with its flag) loads as before: an uninitialised layer's state stays uninitialised."""
    fresh = ActNorm(3)
    g = ActNorm(3)
    g.load_state_dict(fresh.state_dict())
    assert not bool(g.initialized)


# ------------------------------------------------------------------ Pixyz checkpoints of BatchNorm2d
PIXYZ_BN = {"log_gamma": torch.tensor([0.1, -0.2, 0.3]).view(3, 1, 1),
            "beta": torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1),
            "running_mean": torch.tensor([0.5, -0.5, 1.0]).view(3, 1, 1),
            "running_var": torch.tensor([4.0, 0.25, 1.0]).view(3, 1, 1)}


def test_batchnorm2d_loads_pixyz_state_dict() -> None:
    """Before: size mismatch (Pixyz keeps (C, 1, 1), kizuna (C,)). Eval mode, eps 1e-12 (Pixyz adds none to a loaded
    running variance): z = e^g (x - m) / sqrt(v) + beta, log-det = H W sum(g - log(v) / 2)."""
    f = BatchNorm2d(3, eps=1e-12)
    f.load_state_dict(PIXYZ_BN)
    f.eval()
    x = torch.ones(2, 3, 2, 2)
    # by hand: channel 0: e^0.1 (1 - 0.5) / 2 + 1; channel 1: e^-0.2 (1.5) / 0.5 + 2; channel 2: e^0.3 * 0 + 3
    expected = torch.tensor([math.exp(0.1) * 0.25 + 1.0, math.exp(-0.2) * 3.0 + 2.0, 3.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(f(x), expected.expand(2, 3, 2, 2))
    logdet = 4 * ((0.1 - 0.5 * math.log(4.0)) + (-0.2 - 0.5 * math.log(0.25)) + 0.3)
    torch.testing.assert_close(f.logdet_jacobian, torch.full((2,), logdet))
    torch.testing.assert_close(f.inverse(f(x)), x)
    assert f.running_var.shape == (3,)


def test_batchnorm2d_refuses_pixyz_per_pixel_statistics() -> None:
    """A trained Pixyz BatchNorm2d averages over the batch only: running statistics (C, H, W), which kizuna's
    per-channel layer cannot hold; the error says why (before: torch's bare size mismatch)."""
    state = dict(PIXYZ_BN, running_mean=torch.zeros(3, 2, 2), running_var=torch.ones(3, 2, 2))
    with pytest.raises(RuntimeError, match=r"running_mean of shape \(3, 2, 2\) holds statistics per channel and pixel "
                                           r"\(Pixyz's BatchNorm2d averages over the batch only"):
        BatchNorm2d(3).load_state_dict(state)


# ------------------------------------------------------------------ ProductOfNormal(p, weight_modalities)
def _experts() -> list[Normal]:
    ea = Normal(var=["z"], cond_var=["a"], loc="a", scale=2.0, name="q")
    eb = Normal(var=["z"], cond_var=["b"], loc="b", scale=0.5, name="q")
    return [ea, eb]


A, B = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.5, -3.0]])


def test_poe_weight_modalities_closed_form() -> None:
    """Pixyz's weighted precisions, weights (prior 1, a 0.5, b 2): tau = 1 + 0.5 / 4 + 2 * 4 = 9.125,
    mu = (0.5 a / 4 + 2 * 4 b) / tau, sigma = tau^-1/2 (Pixyz 0.3.3 prints loc (1.3288, -2.6027), scale 0.3310 for
    the review's p18, the same numbers). Before: TypeError for the keyword."""
    expected_loc = (0.125 * A + 8.0 * B) / 9.125
    for q in (ProductOfNormal(_experts(), weight_modalities=[1.0, 0.5, 2.0], name="q"),
              ProductOfNormal(_experts(), [1.0, 0.5, 2.0], name="q")):  # Pixyz's second positional argument
        params = q.get_params({"a": A, "b": B})
        torch.testing.assert_close(params["loc"], expected_loc)
        torch.testing.assert_close(params["scale"], torch.full((1, 2), 9.125 ** -0.5))
        z = torch.tensor([[0.3, -1.0]])
        ref = torch.distributions.Normal(expected_loc, 9.125 ** -0.5).log_prob(z).sum(-1)
        torch.testing.assert_close(q.get_log_prob({"a": A, "b": B, "z": z}), ref)
    assert q.weight_modalities == [1.0, 0.5, 2.0]
    torch.testing.assert_close(ProductOfNormal(_experts(), weight_modalities=torch.tensor([1.0, 0.5, 2.0]))
                               .get_params({"a": A, "b": B})["loc"], expected_loc)


def test_poe_weight_modalities_subsets_and_zero_weights() -> None:
    """A missing modality is left out (its weight too); a weight-0 expert counts as absent; no expert present gives
    the prior alone, N(0, 1/w0)."""
    q = ProductOfNormal(_experts(), weight_modalities=[0.3, 1.0, 3.0], name="q", features_shape=[2])
    params = q.get_params({"a": A})  # tau = 0.3 + 1/4
    torch.testing.assert_close(params["loc"], (A / 4) / 0.55)
    torch.testing.assert_close(params["scale"], torch.full((1, 2), 0.55 ** -0.5))
    params = q.get_params({})
    torch.testing.assert_close(params["scale"], torch.full((1, 2), 0.3 ** -0.5))
    torch.testing.assert_close(params["loc"], torch.zeros(1, 2))
    q0 = ProductOfNormal(_experts(), weight_modalities=[2.0, 0.0, 1.5], name="q")
    torch.testing.assert_close(q0.get_params({"a": A, "b": B})["loc"], (6.0 * B) / 8.0)  # tau = 2 + 1.5 * 4
    torch.testing.assert_close(q0.get_params({"a": A})["scale"], torch.full((1, 2), 0.5 ** 0.5))
    no_prior = ProductOfNormal(_experts(), weight_modalities=[0.0, 1.0, 3.0], name="q")  # tau = 1/4 + 12
    torch.testing.assert_close(no_prior.get_params({"a": A, "b": B})["loc"], (A / 4 + 12 * B) / 12.25)
    torch.testing.assert_close(no_prior.get_params({"a": A})["scale"], torch.full((1, 2), 2.0))


def test_poe_default_weights_unchanged() -> None:
    """No weights (or all 1): the unweighted product, tau = 1 + 1/4 + 4."""
    for w in (None, [1.0, 1.0, 1.0]):
        params = ProductOfNormal(_experts(), weight_modalities=w).get_params({"a": A, "b": B})
        torch.testing.assert_close(params["loc"], (A / 4 + 4 * B) / 5.25)
    assert ProductOfNormal(_experts()).weight_modalities == [1.0, 1.0, 1.0]


def test_poe_weight_modalities_errors() -> None:
    with pytest.raises(ValueError, match=r"^ProductOfNormal: weight_modalities needs 3 numbers \(the prior's weight, "
                                         r"then one for each of the 2 experts\), got 2: \[0.5, 2.0\]$"):
        ProductOfNormal(_experts(), weight_modalities=[0.5, 2.0])
    with pytest.raises(ValueError, match=r"^ProductOfNormal: weight_modalities must be finite numbers >= 0, "
                                         r"got \[1.0, -1.0, 2.0\]$"):
        ProductOfNormal(_experts(), weight_modalities=[1.0, -1.0, 2.0])
    with pytest.raises(ValueError, match=r"got 'q' \(as in Pixyz, name is the third argument: give name=...\)$"):
        ProductOfNormal(_experts(), "q")
    q = ProductOfNormal(_experts(), weight_modalities=[0.0, 0.0, 1.0], name="q", features_shape=[2])
    with pytest.raises(ValueError, match=r"^q\(z\|a,b\): no expert of weight > 0 has its inputs \(a, b\) and the "
                                         r"prior's weight is 0 \(weight_modalities=\[0.0, 0.0, 1.0\]\)"):
        q.get_params({"a": A})


def test_elementwise_poe_still_unweighted() -> None:
    """ElementWiseProductOfNormal (no weights in Pixyz either): expert d sees element d; tau = 1 + 2 * 1."""
    e = Normal(var=["z"], cond_var=["x"], loc="x", scale=1.0, name="q")
    q = ElementWiseProductOfNormal(e, name="q")
    params = q.get_params({"x": torch.tensor([[2.0, 4.0]])})
    torch.testing.assert_close(params["loc"], torch.tensor([[2.0, 4.0]]) / 3)  # each expert: (2, 0) and (0, 4)


# ------------------------------------------------------------------ docs/flows_autoregressive.md's sampling sentence
def test_flow_distribution_with_prior_named_like_var_returns_flow_output() -> None:
    """A prior over ``x`` and ``var=["x"]``: ``sample`` returns the flow's output under ``x`` (as Pixyz); the prior's
    draw is not returned."""
    f = ActNorm(2)
    with torch.no_grad():
        f.bias.fill_(100.0), f.initialized.fill_(True)
    p = TransformedDistribution(Normal(var=["x"], loc=torch.zeros(2), scale=torch.ones(2)), f, var=["x"])
    out = p.sample(batch_n=50)
    assert list(out) == ["x"] and bool((out["x"] > 90).all())


def test_an_eps_given_as_actnorms_second_argument_is_named_and_old_pickles_initialise() -> None:
    """``ActNorm(C, 1e-5)`` meant eps=1e-5 before the second argument became Pixyz's scale: it would now give outputs
    of standard deviation 1e-5, silently; it is refused with the remedy. A module pickled whole before ``scale``
    existed has no such attribute: it initialises with scale 1 as it did."""
    import pickle

    with pytest.raises(ValueError, match=r"ActNorm: scale=1e-05 would give every channel .* pass eps=1e-05 by keyword"):
        ActNorm(3, 1e-5)
    layer = ActNorm(3)
    del layer.__dict__["scale"]  # as an instance pickled by the code before
    layer = pickle.loads(pickle.dumps(layer))
    z = layer(torch.randn(400, 3) * 3 + 1)
    assert (z.std(0, unbiased=False) - 1).abs().max() < 1e-4
