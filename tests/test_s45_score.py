"""Score-matching losses inside ``torch.inference_mode()`` (stop 45, review E).

There ``torch.enable_grad()`` gives no graph, so the score of a network did not require grad: `ScoreMatchingError`,
`SlicedScoreError` and `sliced_score_matching` took it for a score that ignores x and dropped the trace term silently
(0.4959 for -2.3727), and a density's autograd score raised torch's "element 0 of tensors does not require grad".
References: the closed forms of an affine score s(x) = Wx + c (trace tr W, projected term vᵀWv) and of a Gaussian's
score -x/σ², and the same evaluation under ``torch.no_grad()`` (bitwise).
"""

from __future__ import annotations

import pytest
import torch
from test_score import A, Affine, B, projection  # s(x) = W x + c, and p_v = N(0, I) in 2-D

from kizuna.distributions import Deterministic, EnergyDistribution, Normal
from kizuna.losses import DenoisingScoreError, ScoreMatchingError, SlicedScoreError, sliced_score_matching

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread_seeded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    torch.set_num_threads(threads)


def _rows(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _in_modes(loss, values: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The loss's value with gradients, under no_grad and inside inference_mode (the values made in each mode, so
    that inside inference mode they are inference tensors), each from the same seed."""
    out = {}
    for mode in ("grad", "no_grad", "inference"):
        ctx = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference": torch.inference_mode}[mode]()
        with ctx:
            torch.manual_seed(seed)
            out[mode] = loss.eval({k: v.clone() for k, v in values.items()}).detach()
    return out


@pytest.mark.parametrize("kind", ["exact", "sliced", "sliced_vr"])
def test_a_score_network_keeps_its_trace_inside_inference_mode(kind: str) -> None:
    """s(x) = -A(x - B): tr(∇s) = -tr A, vᵀ∇(vᵀs) = -vᵀAv; inside inference mode the trace was 0."""
    net = Affine(-A, A @ B)
    x, v = _rows(4, 1), _rows(4, 2)
    s = -(x - B) @ A.T
    if kind == "exact":
        loss, values, hand = ScoreMatchingError(net), {"x": x}, -torch.trace(A) + 0.5 * s.pow(2).sum(1)
    else:
        vr = kind == "sliced_vr"
        loss, values = SlicedScoreError(net, "x", "v", variance_reduction=vr), {"x": x, "v": v}
        last = s.pow(2).sum(1) if vr else (v * s).sum(1).pow(2)
        hand = -((v @ A) * v).sum(1) + 0.5 * last
    out = _in_modes(loss, values)
    torch.testing.assert_close(out["grad"], hand, rtol=1e-12, atol=1e-12)
    assert torch.equal(out["no_grad"], out["grad"])
    assert torch.equal(out["inference"], out["no_grad"])


@pytest.mark.parametrize("reduction", [False, True])
def test_sliced_score_matching_inside_inference_mode_is_the_no_grad_value(reduction: bool) -> None:
    """sliced_score_matching(n_projections=4), the projections drawn inside inference mode (inference tensors): the
    numbers of no_grad and of the evaluation with gradients, from the same seed (max |diff| was 10.3)."""
    loss = sliced_score_matching(Affine(-A, A @ B), projection(), n_projections=4, variance_reduction=reduction)
    out = _in_modes(loss, {"x": _rows(5, 3)}, seed=7)
    assert torch.equal(out["no_grad"], out["grad"])
    assert torch.equal(out["inference"], out["no_grad"])
    torch.manual_seed(7)  # the same projections by hand: the mean over the 4 of -vᵀAv + ½(vᵀs)² (or ½||s||²)
    v = projection().sample(batch_n=5, sample_shape=[4])["v"]
    s = -(_rows(5, 3) - B) @ A.T
    last = s.pow(2).sum(-1) if reduction else (v * s).sum(-1).pow(2)
    torch.testing.assert_close(out["inference"], (-((v @ A) * v).sum(-1) + 0.5 * last).mean(0), rtol=1e-12, atol=0)


def test_densities_as_score_models_inside_inference_mode() -> None:
    """A Normal N(0, 2²) and the EnergyDistribution with the same score -x/4 as the score model, and DSM with an
    energy noise kernel (no closed-form score): torch's "element 0 of tensors does not require grad" before; now
    the closed forms -D/σ² + ½||x/σ²||², -||v||²/σ² + ½(vᵀx/σ²)² and ½||-x̃/4 + (x̃ - y)/0.25||²."""
    normal = Normal(var=["x"], loc=torch.zeros(2, dtype=F64), scale=2.0)
    energy = EnergyDistribution(lambda x: x.pow(2).sum(-1) / 8, var=["x"])
    noise = EnergyDistribution(lambda x, y: 2.0 * (x - y).pow(2).sum(-1), var=["x"], cond_var=["y"], name="q")
    x, v, y = _rows(4, 4), _rows(4, 5), _rows(4, 6)
    exact = -2 / 4 + 0.5 * (x / 4).pow(2).sum(1)
    sliced = -v.pow(2).sum(1) / 4 + 0.5 * (v * x / 4).sum(1).pow(2)
    denoising = 0.5 * (-x / 4 + (x - y) / 0.25).pow(2).sum(1)
    for model in (normal, energy):
        for loss, values, hand in [(ScoreMatchingError(model), {"x": x}, exact),
                                   (SlicedScoreError(model, "x", "v"), {"x": x, "v": v}, sliced),
                                   (DenoisingScoreError(model, noise), {"x": x, "y": y}, denoising)]:
            out = _in_modes(loss, values)
            torch.testing.assert_close(out["inference"], hand, rtol=1e-12, atol=1e-12)
            assert torch.equal(out["inference"], out["no_grad"])


class _NoiseConditional(Deterministic):
    """s(x, σ) = -A x / σ: tr(∇s) = -tr A / σ."""

    def __init__(self) -> None:
        super().__init__(var=["s"], cond_var=["x", "sigma"], name="s_theta")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"s": -(x @ A.T) / sigma}


def test_a_conditioning_value_made_inside_inference_mode() -> None:
    """A noise level made inside inference mode is an inference tensor, which autograd cannot save for backward (the
    network divides by it): it is copied, and the trace -tr A / σ is kept."""
    x, sigma = _rows(3, 8), torch.tensor([[0.5], [1.0], [2.0]], dtype=F64)
    s = -(x @ A.T) / sigma
    hand = -torch.trace(A) / sigma[:, 0] + 0.5 * s.pow(2).sum(1)
    out = _in_modes(ScoreMatchingError(_NoiseConditional(), "x"), {"x": x, "sigma": sigma})
    torch.testing.assert_close(out["inference"], hand, rtol=1e-12, atol=1e-12)
    assert torch.equal(out["inference"], out["no_grad"])


def test_data_made_inside_inference_mode_trains_outside_it() -> None:
    """Data made inside inference mode (inference tensors) evaluated with gradients: torch's "Setting requires_grad=
    True on inference tensor outside InferenceMode is not allowed" before. The gradient of the mean exact objective
    of s(x) = W x in W is I + W (XᵀX)/n."""
    with torch.inference_mode():
        x = _rows(6, 9)
    w0 = torch.tensor([[-1.2, 0.4], [0.1, -0.8]], dtype=F64)
    net = Affine(w0, torch.zeros(2, dtype=F64))
    net.c.requires_grad_(False)
    value = ScoreMatchingError(net).eval({"x": x}).mean()
    (grad,) = torch.autograd.grad(value, net.w)
    xs = x.clone()
    torch.testing.assert_close(value.detach(), torch.trace(w0) + 0.5 * (xs @ w0.T).pow(2).sum(1).mean(),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, torch.eye(2, dtype=F64) + w0 @ (xs.T @ xs) / 6, rtol=1e-12, atol=1e-12)
