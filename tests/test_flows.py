"""One `FLOWS` table of every flow layer, swept by generic tests against autograd (STYLE.md habits 5, 9).

Every class exported by `kizuna.flows` has at least one entry (a meta-test fails otherwise). An
entry builds ``(flow, x, y)`` in float64 from a seed: parameters are redrawn at random (new coupling
and autoregressive layers start as the identity, which would make the checks trivial), ``x`` is a
batch of valid inputs and ``y`` the context of a conditional layer (or ``None``).

The sweeps, each over the whole table:

* **log-determinant** - ``forward_and_logdet``'s value per row equals ``log|det|`` of the Jacobian
  of that row's map computed by ``torch.autograd.functional.jacobian`` (float64, 1e-8);
* **inverse** - ``inverse_and_logdet(forward(x))`` gives back ``x`` and minus the log-determinant;
  for bijections also ``forward(inverse(z)) = z`` at fresh points and the inverse's log-determinant
  against its own autograd Jacobian;
* **Pixyz surface** - ``flow(x)`` stores ``logdet_jacobian``, ``compute_jacobian=False`` clears it,
  ``flow.inverse`` is the inverse;
* **gradients** - every parameter gets a finite gradient from ``z`` and the log-determinant;
* **save/load** - a ``state_dict`` through ``torch.save`` into an instance built from another seed
  reproduces ``z`` and the log-determinant;
* **float32** - the layer runs in single precision and stays invertible.

`BatchNorm1d`/`BatchNorm2d` are swept in evaluation mode (running statistics; in training mode the
map of one row depends on the batch: tested on its own below) and `ActNorm` after its data-dependent initialisation.
`Preprocess` draws dequantisation noise: the sweeps seed torch's generator before each call, so the
Jacobian is that of the map with the noise held fixed (its module docstring).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import kizuna.flows as kf
from kizuna.flows import (
    IAF,
    MAF,
    ActNorm,
    AffineCoupling,
    BatchNorm1d,
    BatchNorm2d,
    ChannelConv,
    Flatten,
    Flow,
    FlowList,
    Permutation,
    PlanarFlow,
    Preprocess,
    RationalQuadraticCoupling,
    Reverse,
    Shuffle,
    Squeeze,
    Unsqueeze,
)

F64 = torch.float64
B = 3
Tensor = torch.Tensor
Built = tuple[Flow, Tensor, "Tensor | None"]


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize(flow: nn.Module, g: torch.Generator, sd: float = 0.3) -> None:
    """Redraw every parameter N(0, sd^2) (masks and permutations are buffers and stay)."""
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(sd * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _x(g: torch.Generator, *shape: int, sd: float = 1.0) -> Tensor:
    return sd * torch.randn(B, *shape, generator=g, dtype=F64)


class _ConvScaleShift(nn.Module):
    """A 3x3 convolution returning ``(tanh(s), t)`` for image coupling layers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.conv(x).chunk(2, 1)
        return torch.tanh(s), t


class _ContextLinear(nn.Module):
    """``Linear(cat(x, y))``: a Pixyz-style network taking the context as a second argument."""

    def __init__(self, n: int, n_ctx: int) -> None:
        super().__init__()
        self.lin = nn.Linear(n + n_ctx, n)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.lin(torch.cat([x, y], -1))


@dataclass(frozen=True)
class Example:
    """A flow layer and what it is expected to do.

    Attributes:
        cls: the exported class this entry covers.
        build: ``seed -> (flow, x, y)`` in float64.
        label: the test id.
        bijective: ``forward(inverse(z)) = z`` for any ``z`` (not `Preprocess`, which rounds).
        noisy: the forward map draws noise: seed before every call.
    """

    cls: type[Flow]
    build: Callable[[int], Built]
    label: str = ""
    bijective: bool = True
    noisy: bool = False

    @property
    def id(self) -> str:
        return self.label or self.cls.__name__


def _entry(cls: type[Flow], make: Callable[[torch.Generator], Built], label: str = "", **kw) -> Example:
    def build(seed: int) -> Built:
        g = _gen(seed)
        flow, x, y = make(g)
        return flow.double(), x, y
    return Example(cls, build, label=label, **kw)


def _random(flow: Flow, g: torch.Generator, sd: float = 0.3) -> Flow:
    _randomize(flow, g, sd)
    return flow


def _normed(flow: Flow, x: Tensor, g: torch.Generator) -> Flow:
    """A normalisation layer after a training pass on ``4 x`` (moves its statistics), then eval."""
    flow = flow.double()
    flow(4.0 * x + 1.0)
    if not isinstance(flow, ActNorm):
        _randomize(flow, g)
    return flow.eval()


def _batchnorm(cls: type[Flow], *shape: int) -> Callable[[torch.Generator], Built]:
    def make(g: torch.Generator) -> Built:
        x = _x(g, *shape)
        flow = cls(shape[0], momentum=0.5)
        return _normed(flow, x, g), x, None
    return make


def _actnorm(*shape: int) -> Callable[[torch.Generator], Built]:
    def make(g: torch.Generator) -> Built:
        x = _x(g, *shape)
        return _normed(ActNorm(shape[0]), x, g), x, None
    return make


def _composite(g: torch.Generator) -> Built:
    x = _x(g, 4)
    act = ActNorm(4).double()
    act(x)
    flow = FlowList([AffineCoupling(4, hidden_features=8), Reverse(4), MAF(4, [8]), act, PlanarFlow(4)])
    return _random(flow, g), x, None


def _grid(g: torch.Generator, levels: int, n: int) -> Tensor:
    return torch.randint(0, levels, (B, n), generator=g).to(F64) / (levels - 1)


FLOWS: list[Example] = [
    _entry(PlanarFlow, lambda g: (_random(PlanarFlow(3), g, 0.8), _x(g, 3), None)),
    _entry(PlanarFlow, lambda g: (_random(PlanarFlow(3, constraint_u=False), g, 0.3), _x(g, 3), None),
           label="PlanarFlow-unconstrained"),
    _entry(AffineCoupling, lambda g: (_random(AffineCoupling(4, hidden_features=8), g), _x(g, 4), None)),
    _entry(AffineCoupling, lambda g: (_random(AffineCoupling(5, "checkerboard", inverse_mask=True, hidden_features=8,
                                                             context_features=2), g), _x(g, 5), _x(g, 2)),
           label="AffineCoupling-checkerboard-context"),
    _entry(AffineCoupling, lambda g: (_random(AffineCoupling(2, "checkerboard", scale_translate_net=_ConvScaleShift(2)),
                                              g), _x(g, 2, 2, 4), None), label="AffineCoupling-image"),
    _entry(AffineCoupling, lambda g: (_random(AffineCoupling(3, scale_net=_ContextLinear(3, 2),
                                                             translate_net=_ContextLinear(3, 2)), g),
                                      _x(g, 3), _x(g, 2)), label="AffineCoupling-pixyz-nets"),
    _entry(RationalQuadraticCoupling, lambda g: (_random(RationalQuadraticCoupling(4, num_bins=5, tail_bound=2.0,
                                                                                   hidden_features=8), g, 0.5),
                                                 _x(g, 4, sd=1.5), None)),
    _entry(RationalQuadraticCoupling, lambda g: (_random(RationalQuadraticCoupling(
        5, num_bins=4, mask_type="checkerboard", inverse_mask=True, hidden_features=8, context_features=2), g, 0.5),
        _x(g, 5), _x(g, 2)), label="RationalQuadraticCoupling-context"),
    _entry(ActNorm, _actnorm(3)),
    _entry(ActNorm, _actnorm(2, 3, 3), label="ActNorm-image"),
    _entry(BatchNorm1d, _batchnorm(BatchNorm1d, 3)),
    _entry(BatchNorm2d, _batchnorm(BatchNorm2d, 2, 3, 3)),
    _entry(ChannelConv, lambda g: (_random(ChannelConv(3), g, 0.5), _x(g, 3, 2, 2), None)),
    _entry(ChannelConv, lambda g: (_random(ChannelConv(3, decomposed=True), g, 0.5), _x(g, 3, 2, 2), None),
           label="ChannelConv-LU"),
    _entry(ChannelConv, lambda g: (_random(ChannelConv(4), g, 0.5), _x(g, 4), None), label="ChannelConv-vector"),
    _entry(Squeeze, lambda g: (Squeeze(), _x(g, 2, 4, 2), None)),
    _entry(Flatten, lambda g: (Flatten((2, 3, 2)), _x(g, 2, 3, 2), None)),
    _entry(Unsqueeze, lambda g: (Unsqueeze(), _x(g, 8, 2, 1), None)),
    _entry(Permutation, lambda g: (Permutation([2, 0, 3, 1]), _x(g, 4), None)),
    _entry(Permutation, lambda g: (Permutation([1, 2, 0]), _x(g, 3, 2, 2), None), label="Permutation-image"),
    _entry(Shuffle, lambda g: (Shuffle(5, seed=int(torch.randint(0, 1000, (), generator=g))), _x(g, 5), None)),
    _entry(Reverse, lambda g: (Reverse(4), _x(g, 4), None)),
    _entry(Preprocess, lambda g: (Preprocess(levels=17), _grid(g, 17, 4), None), bijective=False, noisy=True),
    _entry(Preprocess, lambda g: (Preprocess(levels=256, alpha=0.1, dequantize=False), _grid(g, 256, 4), None),
           label="Preprocess-centre", bijective=False),
    _entry(MAF, lambda g: (_random(MAF(4, [16]), g), _x(g, 4), None)),
    _entry(MAF, lambda g: (_random(MAF(4, [16, 16], context_features=2, order=[3, 1, 0, 2]), g), _x(g, 4), _x(g, 2)),
           label="MAF-context-order"),
    _entry(IAF, lambda g: (_random(IAF(4, [16]), g), _x(g, 4), None)),
    _entry(IAF, lambda g: (_random(IAF(3, [8], context_features=2), g), _x(g, 3), _x(g, 2)), label="IAF-context"),
    _entry(FlowList, _composite),
]

IDS = [ex.id for ex in FLOWS]


def sweep(test: Callable[..., None]) -> Callable[..., None]:
    return pytest.mark.parametrize("ex", FLOWS, ids=IDS)(test)


def sweep_bijective(test: Callable[..., None]) -> Callable[..., None]:
    """Over the entries that are bijections (all but `Preprocess`, which rounds back to grey levels)."""
    chosen = [ex for ex in FLOWS if ex.bijective]
    return pytest.mark.parametrize("ex", chosen, ids=[ex.id for ex in chosen])(test)


def _call(ex: Example, fn: Callable[[], object]) -> object:
    """``fn()``, with torch's generator reseeded first when the layer draws noise."""
    if ex.noisy:
        torch.manual_seed(123)
    return fn()


def _row_logdets(ex: Example, fn: Callable[[Tensor, Tensor | None], Tensor], v: Tensor, y: Tensor | None) -> Tensor:
    """``log|det|`` of each row's block of the autograd Jacobian of ``fn`` over the whole batch.

    The batch is differentiated at once (rows must not interact: the off-diagonal blocks are
    checked to be zero), so a noisy layer sees the same noise as in the call being checked.
    """
    n = v[0].numel()
    jac = torch.autograd.functional.jacobian(lambda flat: _call(ex, lambda: fn(flat.reshape(v.shape), y)).flatten(),
                                             v.flatten(), vectorize=True)
    blocks = jac.reshape(v.shape[0], n, v.shape[0], n)
    eye = torch.eye(v.shape[0], dtype=torch.bool)
    assert not blocks.permute(0, 2, 1, 3)[~eye].any(), "rows of the batch influence each other"
    return torch.stack([torch.linalg.slogdet(blocks[b, :, b])[1] for b in range(v.shape[0])])


# ------------------------------------------------------------------ meta-tests
def test_every_exported_flow_has_an_example() -> None:
    exported = {getattr(kf, n) for n in kf.__all__}
    classes = {c for c in exported if isinstance(c, type) and issubclass(c, Flow) and c is not Flow}
    missing = classes - {ex.cls for ex in FLOWS}
    assert not missing, f"no FLOWS entry for {sorted(c.__name__ for c in missing)}"


def test_ids_are_unique() -> None:
    assert len(set(IDS)) == len(IDS)


@sweep
def test_builds_its_class(ex: Example) -> None:
    flow, x, y = ex.build(0)
    assert type(flow) is ex.cls and x.dtype == F64


# ------------------------------------------------------------------ log-determinants
@sweep
def test_logdet_matches_autograd_jacobian(ex: Example) -> None:
    flow, x, y = ex.build(0)
    z, logdet = _call(ex, lambda: flow.forward_and_logdet(x, y))
    assert logdet.shape == (B,) and z.shape[0] == B
    expected = _row_logdets(ex, lambda v, c: flow.forward_and_logdet(v, c)[0], x, y)
    torch.testing.assert_close(logdet, expected, rtol=1e-8, atol=1e-8)


@sweep
def test_inverse_inverts_forward(ex: Example) -> None:
    flow, x, y = ex.build(0)
    z, logdet = _call(ex, lambda: flow.forward_and_logdet(x, y))
    back, inv_logdet = flow.inverse_and_logdet(z, y)
    torch.testing.assert_close(back, x, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(inv_logdet, -logdet, rtol=1e-8, atol=1e-8)


@sweep_bijective
def test_forward_inverts_inverse_and_its_logdet(ex: Example) -> None:
    flow, x, y = ex.build(0)
    z = flow(x, y)
    z = z + 0.1 * torch.randn(z.shape, generator=_gen(5), dtype=F64)
    x2, inv_logdet = flow.inverse_and_logdet(z, y)
    torch.testing.assert_close(flow(x2, y), z, rtol=1e-8, atol=1e-8)
    expected = _row_logdets(ex, lambda v, c: flow.inverse_and_logdet(v, c)[0], z, y)
    torch.testing.assert_close(inv_logdet, expected, rtol=1e-7, atol=1e-7)


# ------------------------------------------------------------------ Pixyz surface
@sweep
def test_pixyz_forward_stores_logdet(ex: Example) -> None:
    flow, x, y = ex.build(0)
    z, logdet = _call(ex, lambda: flow.forward_and_logdet(x, y))
    assert torch.equal(_call(ex, lambda: flow(x, y)), z)
    assert torch.equal(flow.logdet_jacobian, logdet)
    _call(ex, lambda: flow(x, y, compute_jacobian=False))
    assert flow.logdet_jacobian is None
    assert torch.equal(flow.inverse(z, y), flow.inverse_and_logdet(z, y)[0])


# ------------------------------------------------------------------ gradients
@sweep
def test_gradient_reaches_every_parameter(ex: Example) -> None:
    flow, x, y = ex.build(0)
    params = dict(flow.named_parameters())
    if not params:
        assert ex.cls in (Squeeze, Unsqueeze, Flatten, Permutation, Shuffle, Reverse, Preprocess)
        return
    z, logdet = _call(ex, lambda: flow.forward_and_logdet(x, y))
    weights = torch.randn(z.shape, generator=_gen(3), dtype=F64)
    grads = torch.autograd.grad((z * weights).sum() + logdet.sum(), list(params.values()), allow_unused=True)
    for name, grad in zip(params, grads):
        assert grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(grad).all(), name


# ------------------------------------------------------------------ save / load, precision
@sweep
def test_state_dict_round_trip(ex: Example) -> None:
    flow, x, y = ex.build(0)
    fresh, _, _ = ex.build(1)
    fresh.train(flow.training)
    expected = _call(ex, lambda: flow.forward_and_logdet(x, y))
    if any(True for _ in flow.parameters()):  # the other seed really builds another layer
        assert not torch.equal(_call(ex, lambda: fresh.forward_and_logdet(x, y))[0], expected[0])
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    got = _call(ex, lambda: fresh.forward_and_logdet(x, y))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@sweep
def test_float32(ex: Example) -> None:
    flow, x, y = ex.build(0)
    flow = flow.float()
    x32, y32 = x.float(), None if y is None else y.float()
    z, logdet = _call(ex, lambda: flow.forward_and_logdet(x32, y32))
    assert z.dtype == torch.float32 and logdet.dtype == torch.float32
    # 1e-3: the random splines are steep in places (slopes near 1e-3 amplify float32 rounding)
    torch.testing.assert_close(flow.inverse(z, y32), x32, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ layer-specific checks
class _Inverse(nn.Module):
    """``flow.inverse`` as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: Tensor) -> Tensor:
        return self.flow.inverse(z)


def test_planar_inverse_has_the_implicit_gradient() -> None:
    """The root found by bisection gets its gradient from one Newton step: gradcheck in float64."""
    inv = _Inverse(_random(PlanarFlow(3), _gen(2), 0.8).double())
    names = ["flow.w", "flow.u", "flow.b"]

    def inverse(w: Tensor, u: Tensor, b: Tensor, z: Tensor) -> Tensor:
        return torch.func.functional_call(inv, dict(zip(names, (w, u, b))), (z,))

    params = dict(inv.named_parameters())
    args = [params[n].detach().clone().requires_grad_() for n in names] + [_x(_gen(3), 3).requires_grad_()]
    assert torch.autograd.gradcheck(inverse, args)


def test_planar_with_w_zero_is_the_shift_and_has_finite_gradients() -> None:
    """w = 0 (e.g. a zero initialisation): z = x + u tanh(b), log-det 0, gradients finite (the constraint's
    0 / 0 gave NaN everywhere); other w keep the paper's u-hat (w^T u-hat = -1 + softplus(w^T u))."""
    f = PlanarFlow(3).double()
    with torch.no_grad():
        f.w.zero_()
        f.b.fill_(0.7)
    x = _x(_gen(4), 3).double()
    z, logdet = f(x), f.logdet_jacobian
    torch.testing.assert_close(z, x + math.tanh(0.7) * f.u.detach(), rtol=0, atol=1e-15)
    torch.testing.assert_close(logdet, torch.zeros(len(x), dtype=torch.float64))
    (z.sum() + logdet.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in f.parameters())
    g = _random(PlanarFlow(3), _gen(5), 0.8).double()
    wu = (g.w @ g.u).item()
    torch.testing.assert_close((g.w @ g.u_hat()).item(), -1 + math.log1p(math.exp(wu)), rtol=1e-12, atol=0)


def test_squeeze_layout_matches_pixyz() -> None:
    """Pixyz's documented example: a 4x4 image 1..16 squeezes to these four 2x2 channels."""
    a = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    expected = torch.tensor([[[1, 3], [9, 11]], [[2, 4], [10, 12]], [[5, 7], [13, 15]], [[6, 8], [14, 16]]])
    assert torch.equal(Squeeze()(a)[0], expected.float())
    assert torch.equal(Unsqueeze()(Squeeze()(a)), a)


def test_actnorm_initialises_from_the_first_training_batch() -> None:
    x = 3.0 + 2.0 * torch.randn(400, 2, 3, 3, generator=_gen(0))
    f = ActNorm(2)
    z = f(x)
    dims = [0, 2, 3]
    torch.testing.assert_close(z.mean(dims), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(dims, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    before = f.bias.detach().clone()
    f(x + 5.0)  # later batches do not re-initialise
    assert torch.equal(f.bias.detach(), before) and bool(f.initialized)


def test_actnorm_refuses_to_initialise_from_a_non_finite_batch() -> None:
    """A NaN (or inf) in the initialising batch raises, naming its row, and leaves the layer uninitialised (before:
    the bias and scale of its channel became NaN for good); the next clean batch initialises it as usual."""
    f = ActNorm(3)
    before = {k: v.clone() for k, v in f.state_dict().items()}
    for bad in (float("nan"), float("inf")):
        x = torch.randn(4, 3, generator=_gen(30))
        x[1, 0] = bad
        with pytest.raises(ValueError, match=rf"ActNorm: the data-dependent initialisation needs a finite batch.*"
                                             rf"{bad} at row 1, channel 0.*stays uninitialised"):
            f(x)
        assert all(torch.equal(v, before[k]) for k, v in f.state_dict().items()) and not bool(f.initialized)
    x = 3.0 + 2.0 * torch.randn(50, 3, generator=_gen(31))
    z = f(x)
    assert bool(f.initialized) and z.mean(0).abs().max() < 1e-5


def test_batchnorm_running_statistics_skip_a_non_finite_batch() -> None:
    """A training batch with a NaN leaves the running averages as they were (before: NaN for good, so every later
    evaluation-mode output was NaN); a clean batch then updates them as usual."""
    f = BatchNorm1d(3, momentum=0.5).double()
    f(1.0 + torch.randn(6, 3, dtype=F64, generator=_gen(32)))
    mean, var = f.running_mean.clone(), f.running_var.clone()
    x = torch.randn(6, 3, dtype=F64, generator=_gen(33))
    x[1, 0] = float("nan")
    f(x)  # the batch's own output is NaN in channel 0 (its statistics are); the stored averages are untouched
    assert torch.equal(f.running_mean, mean) and torch.equal(f.running_var, var)
    clean = 2.0 + torch.randn(6, 3, dtype=F64, generator=_gen(34))
    f(clean)
    torch.testing.assert_close(f.running_mean, 0.5 * mean + 0.5 * clean.mean(0))
    torch.testing.assert_close(f.running_var, 0.5 * var + 0.5 * clean.var(0, unbiased=False))
    assert torch.isfinite(f.eval()(clean)).all()


def test_batchnorm_training_uses_batch_statistics() -> None:
    x = 2.0 + 3.0 * torch.randn(256, 3, generator=_gen(1), dtype=F64)
    f = BatchNorm1d(3, momentum=1.0).double()
    z, logdet = f.forward_and_logdet(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(3, dtype=F64), atol=1e-4, rtol=0)
    # with momentum 1 the running statistics are this batch's: evaluation mode gives the same map
    torch.testing.assert_close(f.eval().forward_and_logdet(x)[1], logdet)
    torch.testing.assert_close(logdet[0], -0.5 * torch.log(x.var(0, unbiased=False) + f.eps).sum())


@pytest.mark.parametrize("cls, shape", [(BatchNorm1d, (20, 100)), (BatchNorm2d, (10, 3, 4, 4))])
def test_batchnorm_inverse_undoes_forward_in_both_modes(cls: type[Flow], shape: tuple[int, ...]) -> None:
    """Pixyz's doctest (pixyz/flows/normalizations.py): in training mode ``f.inverse(f(x))`` is ``x`` (the inverse
    uses the batch statistics the forward used; with the running averages the 1d case was 401.5 off). float32: each
    value is recovered to a few ulps of its size (|x| < 6: 1e-5), Pixyz's doctest asks sum < 0.1."""
    g = _gen(21)
    x = 2.0 + 3.0 * torch.randn(*shape, generator=g)
    f = cls(shape[1])
    _randomize(f, g)  # non-trivial gamma and beta
    z, logdet = f.forward_and_logdet(x)
    back, inv_logdet = f.inverse_and_logdet(z)
    assert (back - x).abs().max() < 1e-5 and (back - x).abs().sum() < 0.1
    torch.testing.assert_close(inv_logdet, -logdet)
    f.eval()  # the running averages (momentum 0.1 from the start values): the same round trip
    z_eval = f(x)
    assert (f.inverse(z_eval) - x).abs().max() < 1e-5
    assert not torch.allclose(z_eval, z, atol=1e-2)  # evaluation mode is another map


def test_batchnorm_training_inverse_before_any_forward_uses_running_statistics() -> None:
    f = BatchNorm1d(3, momentum=0.5).double()
    z = torch.randn(4, 3, dtype=F64, generator=_gen(22))
    x = f.inverse(z)  # running averages at their start (0, 1): x = z * sqrt(1 + eps)
    torch.testing.assert_close(x, z * math.sqrt(1 + f.eps))
    assert "batch_mean" not in f.state_dict()  # the last batch's statistics are not part of a checkpoint


def test_batchnorm_load_forgets_the_batch_seen_before_it() -> None:
    """After ``load_state_dict`` the training-mode inverse uses the loaded running statistics (the last batch is not
    saved), not the batch this module saw before the load."""
    saved = BatchNorm1d(3, momentum=0.5).double()
    saved(1.0 + torch.randn(6, 3, dtype=F64, generator=_gen(24)))
    f = BatchNorm1d(3, momentum=0.5).double()
    f(5.0 + 3.0 * torch.randn(6, 3, dtype=F64, generator=_gen(25)))  # another batch, kept for its own inverse
    f.load_state_dict(saved.state_dict())
    z = torch.randn(4, 3, dtype=F64, generator=_gen(26))
    mean, var = saved.running_mean, saved.running_var
    expected = (z - f.beta) * torch.exp(-(f.log_gamma - 0.5 * torch.log(var + f.eps))) + mean
    torch.testing.assert_close(f.inverse(z), expected.detach())


def test_batchnorm_training_logdet_follows_the_per_row_map_with_fixed_statistics() -> None:
    """The training-mode log-determinant (docstring: the statistics as constants, RealNVP and Pixyz) is that of the
    per-row map x_i -> (x_i - mu) / sqrt(var + eps) e^gamma + beta with mu, var the batch's, by autograd's Jacobian;
    the map of the whole batch (statistics depending on x) is singular: shifting a channel in every row is lost."""
    g = _gen(23)
    x = 1.0 + 2.0 * torch.randn(5, 3, generator=g, dtype=F64)
    f = BatchNorm1d(3).double()
    _randomize(f, g)
    _, logdet = f.forward_and_logdet(x)
    mu, var = x.mean(0), ((x - x.mean(0)) ** 2).mean(0)  # by hand: biased batch variance
    gamma, beta = f.log_gamma.detach(), f.beta.detach()

    def row_map(xi: Tensor) -> Tensor:
        return (xi - mu) / torch.sqrt(var + f.eps) * gamma.exp() + beta

    for i in range(5):
        jac = torch.autograd.functional.jacobian(row_map, x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1])
        torch.testing.assert_close(f(x)[i], row_map(x[i]))
    full = torch.autograd.functional.jacobian(lambda t: f.forward_and_logdet(t)[0], x).reshape(15, 15)
    shift = torch.zeros(5, 3, dtype=F64)
    shift[:, 1] = 1.0  # the same shift of channel 1 in every row
    torch.testing.assert_close(full @ shift.reshape(15), torch.zeros(15, dtype=F64), atol=1e-12, rtol=0)


def test_spline_is_identity_at_zero_parameters_and_outside_its_interval() -> None:
    from kizuna.flows.spline import rational_quadratic_spline

    x = torch.linspace(-5, 5, 101, dtype=F64)
    zeros = torch.zeros(101, 6, dtype=F64)
    out, log_grad = rational_quadratic_spline(x, zeros, zeros, zeros[:, :5], bound=3.0)
    torch.testing.assert_close(out, x)
    torch.testing.assert_close(log_grad, torch.zeros_like(x))
    g = _gen(4)  # one random spline, applied to every x
    w, h, d = (torch.randn(k, generator=g, dtype=F64).expand(101, k) for k in (6, 6, 5))
    out, _ = rational_quadratic_spline(x, w, h, d, bound=3.0)
    outside = x.abs() > 3.0
    assert torch.equal(out[outside], x[outside])
    assert (out.diff() > 0).all(), "the spline must be increasing"



def _hand_spline(x: float, w: Tensor, h: Tensor, d: Tensor, bound: float, m: float = 1e-3) -> tuple[Tensor, Tensor]:
    """One value through the spline, written out per knot and per bin (Durkan et al. 2019, eqs. 4-5)."""
    k = w.numel()
    xs, ys = [torch.tensor(-bound, dtype=F64)], [torch.tensor(-bound, dtype=F64)]
    for i in range(k):  # knots: softmax sizes with a minimum, scaled to [-B, B]
        xs.append(xs[-1] + 2 * bound * (m + (1 - m * k) * torch.softmax(w, 0)[i]))
        ys.append(ys[-1] + 2 * bound * (m + (1 - m * k) * torch.softmax(h, 0)[i]))
    xs[-1], ys[-1] = torch.tensor(bound, dtype=F64), torch.tensor(bound, dtype=F64)
    c = math.log(math.exp(1 - m) - 1)  # softplus(0 + c) + m = 1
    ds = [torch.tensor(1.0, dtype=F64), *(m + torch.log1p(torch.exp(v + c)) for v in d), torch.tensor(1.0, dtype=F64)]
    if abs(x) > bound:
        return torch.tensor(x, dtype=F64), torch.tensor(0.0, dtype=F64)
    b = max(i for i in range(k) if i == 0 or x >= xs[i])
    s = (ys[b + 1] - ys[b]) / (xs[b + 1] - xs[b])
    t = (x - xs[b]) / (xs[b + 1] - xs[b])
    den = s + (ds[b + 1] + ds[b] - 2 * s) * t * (1 - t)
    y = ys[b] + (ys[b + 1] - ys[b]) * (s * t ** 2 + ds[b] * t * (1 - t)) / den
    slope = s ** 2 * (ds[b + 1] * t ** 2 + 2 * s * t * (1 - t) + ds[b] * (1 - t) ** 2) / den ** 2
    return y, torch.log(slope)


def test_spline_matches_a_hand_written_reference() -> None:
    """Values, log-slopes and parameter gradients against `_hand_spline`; the inverse undoes it."""
    from kizuna.flows.spline import rational_quadratic_spline

    g = _gen(11)
    n, k, bound = 40, 5, 2.5
    x = torch.linspace(-3, 3, n, dtype=F64)
    raw = torch.randn(n, 3 * k - 1, generator=g, dtype=F64, requires_grad=True)
    w, h, d = raw[:, :k], raw[:, k:2 * k], raw[:, 2 * k:]
    out, log_grad = rational_quadratic_spline(x, w, h, d, bound=bound)
    (out.sum() + log_grad.sum()).backward()
    got_grad, raw.grad = raw.grad, None
    hand = [_hand_spline(float(x[i]), w[i], h[i], d[i], bound) for i in range(n)]
    hand_out, hand_log = torch.stack([a for a, _ in hand]), torch.stack([b for _, b in hand])
    torch.testing.assert_close(out, hand_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_grad, hand_log, rtol=1e-12, atol=1e-12)
    (hand_out.sum() + hand_log.sum()).backward()
    torch.testing.assert_close(got_grad, raw.grad, rtol=1e-10, atol=1e-10)
    back, back_log = rational_quadratic_spline(out, w, h, d, inverse=True, bound=bound)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back_log, -log_grad, rtol=1e-10, atol=1e-10)

def test_spline_inverse_in_float32_stays_in_its_bin_with_finite_log_slopes() -> None:
    """Steep random splines (sigma 20) in float32: the inverse's root is clamped to its bin, so no NaN log-slope and
    no point outside [-B, B] (before the clamp, in 200k such points: 6 NaN log-determinants, 54 points outside)."""
    from kizuna.flows.spline import rational_quadratic_spline

    g = _gen(0)
    n, k, bound = 20000, 8, 3.0
    w, h, d = (torch.randn(n, m, generator=g) * 20.0 for m in (k, k, k - 1))
    y = (torch.rand(n, generator=g) * 2 - 1) * bound
    y[:200], y[200:400] = bound, -bound
    # the reviewer's case: a wide, flat bin whose float32 root fell past its right end (log-slope NaN)
    w[0] = torch.tensor([6.343760967254639, 30.009769439697266, -7.412032604217529, 14.269143104553223,
                         -6.710489273071289, 17.44367218017578, -6.367461204528809, -14.77410888671875])
    h[0] = torch.tensor([17.160511016845703, -44.13097381591797, -6.178350925445557, 21.782140731811523,
                         -7.965890884399414, -16.060697555541992, 19.432483673095703, -11.101054191589355])
    d[0] = torch.tensor([-2.824021816253662, 32.05265808105469, -0.9761404991149902, 34.51720428466797,
                         -4.698940277099609, -9.741063117980957, -39.45707321166992])
    y[0] = -2.9400229454040527
    x, log_grad = rational_quadratic_spline(y, w, h, d, inverse=True, bound=bound)
    assert torch.isfinite(log_grad).all(), f"{int((~torch.isfinite(log_grad)).sum())} non-finite log-slopes"
    assert (x.abs() <= bound).all(), f"{int((x.abs() > bound).sum())} points outside [-B, B]"
    x64, _ = rational_quadratic_spline(y.double(), w.double(), h.double(), d.double(), inverse=True, bound=bound)
    assert (x64.abs() <= bound).all()
    assert abs(float(x[0]) - float(x64[0])) < 1e-3  # 2.9640 against 2.9630, inside bin 1 ([-2.994, 2.964])


BAD = [
    (lambda: AffineCoupling(4)(torch.zeros(2, 3)), "AffineCoupling: x has 3 features"),
    (lambda: AffineCoupling(4, mask_type="stripes"), "mask_type must be one of"),
    (lambda: AffineCoupling(4, scale_net=nn.Identity()), "give both scale_net and translate_net"),
    (lambda: Squeeze()(torch.zeros(1, 1, 3, 4)), "even height and width"),
    (lambda: Squeeze()(torch.zeros(2, 4)), r"Squeeze: x must be \(B, C, H, W\)"),
    (lambda: Unsqueeze()(torch.zeros(1, 3, 2, 2)), "multiple of 4 channels"),
    (lambda: Permutation([0, 0, 1]), "permutation of 0..n-1"),
    (lambda: Preprocess(17)(torch.full((1, 3), 1.5)), "must lie in \\[0, 1\\]"),
    (lambda: FlowList([]), "at least one flow"),
    (lambda: FlowList([nn.Linear(2, 2)]), "FlowList takes Flow layers"),
    (lambda: MAF(3)(torch.zeros(2, 3, 1)), "MAF: x must be \\(batch, 3\\)"),
    (lambda: MAF(3, context_features=2)(torch.zeros(2, 3)), "context_features=2 but no context"),
    (lambda: PlanarFlow(2)(torch.zeros(2)), "needs a batch dimension"),
    (lambda: BatchNorm2d(2)(torch.zeros(2, 2)), r"BatchNorm2d: x must be \(B, C, H, W\)"),
    (lambda: RationalQuadraticCoupling(3, num_bins=1), "num_bins must be an integer >= 2, got 1"),
    # above 1 / min_bin bins the widths went negative (a non-monotone spline, NaN log-dets); a bound <= 0 gave NaN at
    # 0 or the identity everywhere
    (lambda: RationalQuadraticCoupling(3, num_bins=2000), "num_bins must be at most 1000"),
    (lambda: RationalQuadraticCoupling(3, tail_bound=0.0), "tail_bound must be a finite number > 0, got 0.0"),
    (lambda: RationalQuadraticCoupling(3, tail_bound=-2.0), "tail_bound must be a finite number > 0, got -2.0"),
    # NaN passed the range check (x < 0) | (x > 1) before, and gave a NaN z
    (lambda: Preprocess(17)(torch.tensor([[0.5, float("nan")]])),
     r"Preprocess: x must lie in \[0, 1\].*got nan at row 0, column 1; remove or impute it"),
    # off the grid of 17 levels: the bits/dim bound does not hold (before: a value, silently)
    (lambda: Preprocess(17, dequantize=False)(torch.tensor([[0.5, 0.03]])),
     r"Preprocess: x must lie on the grid of levels=17 grey levels k / 16, got 0.0299.* at row 0, column 1 \(k = 0.48"),
    # wrong contexts gave raw torch errors before ("mat1 and mat2 shapes cannot be multiplied", "size of tensor a")
    (lambda: MAF(4, [8], context_features=2)(torch.randn(5, 4), torch.randn(5, 3)),
     r"MAF: the context must be \(batch, 2\) with the batch of x \(5, or 1\).*got shape \(5, 3\)"),
    (lambda: MAF(4, [8], context_features=2)(torch.randn(5, 4), torch.randn(3, 2)), r"MAF: .*got shape \(3, 2\)"),
    (lambda: IAF(4, [8], context_features=2).inverse(torch.randn(5, 4), torch.randn(3, 2)),
     r"IAF: .*got shape \(3, 2\)"),
    (lambda: MAF(4, [8])(torch.randn(5, 4), torch.randn(5, 2)), r"MAF: built without a context.*shape \(5, 2\)"),
    (lambda: AffineCoupling(4, hidden_features=8)(torch.randn(5, 4), torch.randn(5, 2)),
     r"AffineCoupling: built without a context \(context_features=0\) but given one of shape \(5, 2\)"),
    (lambda: AffineCoupling(4, hidden_features=8, context_features=2)(torch.randn(5, 4), torch.randn(3, 2)),
     r"AffineCoupling: the context must be \(batch, 2\) with the batch of x \(5, or 1\).*got shape \(3, 2\)"),
    (lambda: AffineCoupling(4, hidden_features=8, context_features=2)(torch.randn(5, 4)),
     "AffineCoupling: built with context_features=2 but no context"),
    (lambda: RationalQuadraticCoupling(4, hidden_features=8, context_features=2)(torch.randn(5, 4), torch.randn(5, 3)),
     r"RationalQuadraticCoupling: the context must be \(batch, 2\).*got shape \(5, 3\)"),
    # widths and constants that were accepted before (a layer of no features, a NaN log-scale at the first batch, a
    # ZeroDivisionError, a raw TypeError of lerp with momentum=None, running averages overshooting with momentum 1.5)
    (lambda: ActNorm(0), "ActNorm: in_features must be an integer >= 1, got 0"),
    (lambda: ChannelConv(0), "ChannelConv: in_features must be an integer >= 1, got 0"),
    (lambda: PlanarFlow(0), "PlanarFlow: in_features must be an integer >= 1, got 0"),
    (lambda: ActNorm(2.5), "ActNorm: in_features must be an integer >= 1, got 2.5"),
    (lambda: ActNorm(2, eps=-1.0), "ActNorm: eps must be a positive finite number, got -1.0"),
    (lambda: BatchNorm1d(2, eps=float("nan")), "BatchNorm1d: eps must be a positive finite number, got nan"),
    (lambda: BatchNorm1d(2, momentum=None), r"BatchNorm1d: momentum must be a number in \[0, 1\].*got None"),
    (lambda: BatchNorm2d(2, momentum=1.5), r"BatchNorm2d: momentum must be a number in \[0, 1\].*got 1.5"),
    # before: "shape '[4, 2, 3]' is invalid for input of size 20"
    (lambda: Flatten((2, 3)).inverse(torch.ones(4, 5)),
     r"Flatten: z has shape \(4, 5\), 5 values per row; the inverse needs \(batch, 6\) to give \(batch, 2, 3\)"),
]


@pytest.mark.parametrize("make", [
    lambda: AffineCoupling(4, hidden_features=8, context_features=2),
    lambda: RationalQuadraticCoupling(4, num_bins=4, hidden_features=8, context_features=2),
    lambda: MAF(4, [8], context_features=2),
], ids=["AffineCoupling", "RationalQuadraticCoupling", "MAF"])
def test_one_context_row_stands_for_every_row(make) -> None:
    """One context row conditions every row of x, as the same row repeated does (the coupling layers refused it
    while MADE, MAF and IAF took it)."""
    g = torch.Generator().manual_seed(3)
    flow = _random(make().double(), g)
    x, y = _x(g, 4), torch.randn(1, 2, generator=g, dtype=F64)
    z1, ld1 = flow.forward_and_logdet(x, y)
    z2, ld2 = flow.forward_and_logdet(x, y.expand(B, 2))
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)
    torch.testing.assert_close(ld1, ld2, rtol=0, atol=0)
    torch.testing.assert_close(flow.inverse(z1, y), x, rtol=1e-9, atol=1e-9)


def test_preprocess_takes_every_grid_level_and_checks_the_grid_only_while_validating() -> None:
    """Every level k / (L-1) as float32 or float64 rounds it passes the grid check (L = 17, 256); with validation off
    an off-grid value is not checked (one check less per step), while the range check (NaN included) stays on."""
    from kizuna.distributions import validation

    for levels in (17, 256):
        for dtype in (torch.float32, F64):
            x = (torch.arange(levels, dtype=F64) / (levels - 1)).to(dtype)[None]
            assert torch.isfinite(Preprocess(levels, dequantize=False)(x)).all()
    with validation(False):
        Preprocess(17, dequantize=False)(torch.tensor([[0.5, 0.03]]))
        with pytest.raises(ValueError, match="must lie in"):
            Preprocess(17)(torch.tensor([[float("nan")]]))


@pytest.mark.parametrize("make, match", BAD, ids=[m.split(":")[0][:30] for _, m in BAD])
def test_bad_inputs_name_the_problem(make: Callable[[], object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_flowlist_sums_the_log_determinants_of_the_layers_that_change_volume():
    """FlowList adds no term for permutations and reshapes (``volume_preserving``), and its log-determinant is
    bit for bit the sum from zero over every layer's, forward and inverse; a stack of volume-preserving layers
    has log-determinant 0."""
    torch.manual_seed(0)
    layers = [Reverse(6), MAF(6, [8]), Shuffle(6, seed=1), AffineCoupling(6, hidden_features=8), Reverse(6),
              MAF(6, [8])]
    for layer in layers:  # away from the identity initialisation
        for p in layer.parameters():
            p.data.normal_(0, 0.3)
    flow = FlowList(layers)
    x = torch.randn(5, 6, dtype=torch.float64)
    flow.double()
    z, logdet = flow.forward_and_logdet(x)
    h, total = x, torch.zeros(5, dtype=torch.float64)
    for layer in layers:
        h, ld = layer.forward_and_logdet(h)
        total = total + ld
    assert torch.equal(z, h) and torch.equal(logdet, total)
    back, inv = flow.inverse_and_logdet(z)
    h, total = z, torch.zeros(5, dtype=torch.float64)
    for layer in reversed(layers):
        h, ld = layer.inverse_and_logdet(h)
        total = total + ld
    assert torch.equal(back, h) and torch.equal(inv, total)
    assert torch.allclose(back, x, atol=1e-10)
    assert [layer.volume_preserving for layer in layers] == [True, False, True, False, True, False]
    assert not flow.volume_preserving
    still = FlowList([Reverse(6), Shuffle(6, seed=2)])
    assert still.volume_preserving
    assert torch.equal(still.forward_and_logdet(x.float())[1], torch.zeros(5))
    assert torch.equal(still.inverse_and_logdet(x.float())[1], torch.zeros(5))


def test_reverse_is_the_permutation_of_the_reversed_indices():
    """`Reverse` flips dimension 1 (its own faster path): the same values, log-determinants and gradients as the
    general `Permutation` with indices D-1, ..., 0, on vectors and on images, both ways."""
    g = torch.Generator().manual_seed(0)
    for shape in [(5, 6), (3, 4, 2, 2)]:
        fast, general = Reverse(shape[1]), Permutation(list(range(shape[1] - 1, -1, -1)))
        x = torch.randn(shape, generator=g, requires_grad=True)
        weights = torch.randn(shape, generator=g)
        for way in ("forward_and_logdet", "inverse_and_logdet"):
            (a, la), (b, lb) = getattr(fast, way)(x), getattr(general, way)(x)
            assert torch.equal(a, b) and torch.equal(la, lb)
            ga, = torch.autograd.grad((a * weights).sum(), x)
            gb, = torch.autograd.grad((b * weights).sum(), x)
            assert torch.equal(ga, gb)


# ------------------------------------------------- edge cases found in review (2026-12-05)
def test_a_reshaping_flow_leaves_the_variables_shape_to_the_data() -> None:
    """A flow with a reshape gives the variable another shape than its prior's: ``features_shape`` is left unknown
    rather than the prior's (which made a KL against a distribution over the variable's real shape an error)."""
    from kizuna.distributions import InverseTransformedDistribution, Normal
    from kizuna.losses import KullbackLeibler

    prior = Normal(var=["z"], loc=torch.zeros(16), scale=torch.ones(16))
    p = InverseTransformedDistribution(prior, Flatten((1, 4, 4)), var=["x"])
    assert p.features_shape == ()
    q = Normal(var=["x"], loc=torch.zeros(1, 4, 4), scale=torch.ones(1, 4, 4), name="q")
    assert KullbackLeibler(p, q).method == "monte_carlo"
    kept = InverseTransformedDistribution(prior, Reverse(16), var=["x"])
    assert kept.features_shape == (16,)
    x = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(p.get_log_prob({"x": x}), prior.get_log_prob({"z": x.reshape(3, 16)}))


def test_batch_norm_refuses_one_value_per_channel_in_training() -> None:
    """As torch's BatchNorm: a training batch of one row has variance 0 (an infinite log-determinant)."""
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm1d(3).forward_and_logdet(torch.randn(1, 3))
    flow = BatchNorm2d(2)
    flow.forward_and_logdet(torch.randn(1, 2, 3, 3))  # one image has 9 values per channel: fine
    flow.eval()
    z, logdet = BatchNorm1d(3).eval().forward_and_logdet(torch.randn(1, 3))
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()


def test_preprocess_without_alpha_keeps_the_logit_finite_in_float32() -> None:
    """With alpha = 0, 255 + u rounds to 256 in float32 for u within 8e-6 of 1 (3 of 784,000 white pixels here gave
    an infinite logit and log-determinant); the value is kept inside (0, 1) in the input's precision."""
    torch.manual_seed(0)
    z, logdet = Preprocess(256, alpha=0.0).forward_and_logdet(torch.ones(1000, 784))
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()


def test_a_flow_distribution_returns_its_base_draw_as_pixyz() -> None:
    """``sample`` of a flow distribution also returns the prior's draw that the flow mapped (Pixyz's
    ``return_hidden=True`` default; `TransformedDistribution` always adds it there): ``x`` is the flow of that very
    draw, in both directions and with a sample shape (given ``x``, both are drawn afresh, as Pixyz);
    ``return_hidden=False`` returns ``x`` only, and inside a product only the product's variables are drawn. It
    returned ``x`` alone, and ignored ``return_hidden``."""
    from kizuna.distributions import InverseTransformedDistribution, Normal, TransformedDistribution

    prior = Normal(var=["z"], loc=torch.zeros(2, dtype=F64), scale=torch.ones(2, dtype=F64), name="p_prior")
    flow = FlowList([AffineCoupling(2, hidden_features=8), Reverse(2)]).double()
    with torch.no_grad():
        for t in flow.parameters():
            t.add_(0.3 * torch.randn_like(t))
    inverse = InverseTransformedDistribution(prior, flow, var=["x"])
    forward = TransformedDistribution(prior, flow, var=["x"])
    for p, push in ((inverse, flow.inverse), (forward, lambda z: flow(z, compute_jacobian=False))):
        out = p.sample(batch_n=5)
        assert sorted(out) == ["x", "z"] and out["z"].shape == (5, 2)
        torch.testing.assert_close(out["x"], push(out["z"]), rtol=1e-12, atol=1e-12)
        shaped = p.sample(batch_n=4, sample_shape=[3])
        assert shaped["z"].shape == shaped["x"].shape == (3, 4, 2)
        torch.testing.assert_close(shaped["x"].reshape(12, 2), push(shaped["z"].reshape(12, 2)), rtol=1e-12,
                                   atol=1e-12)
        assert sorted(p.sample(batch_n=2, return_hidden=False)) == ["x"]
        assert sorted(p.sample(batch_n=2, return_all=False)) == ["x", "z"]
        given = torch.full((2, 2), 7.0, dtype=F64)  # redrawn, as Pixyz (prior draw, then the flow overwrites x)
        redrawn = p.sample({"x": given})
        assert sorted(redrawn) == ["x", "z"] and redrawn["z"].shape == (1, 2) and not (redrawn["x"] == 7.0).any()
        torch.testing.assert_close(redrawn["x"], push(redrawn["z"]), rtol=1e-12, atol=1e-12)
    other = Normal(var=["y"], cond_var=["x"], loc="x", scale=1.0, name="q")
    assert sorted((other * inverse).sample(batch_n=3)) == ["x", "y"]
    assert "_base_draws" not in inverse.__dict__


def test_the_spline_inverse_keeps_float32_precision_on_steep_bins_and_is_the_identity_at_the_bound() -> None:
    """The root 2c / (-b - √D) cancels where b < 0 (a wide, flat bin between steep end derivatives): in float32 the
    inverse was 5.7e-5 off where the slope allows 4e-8, and its log-det 0.042 nats off. Against float64 on the same
    float32 parameters, over random steep splines; exactly at ±B the map is the identity (log-det 0, slope 1)."""
    from kizuna.flows.spline import rational_quadratic_spline as rqs

    w = torch.tensor([[-2.862694, -0.1633237, 0.4918343, 2.6458857, 1.0596396, 1.7839317]])
    h = torch.tensor([[1.0570573, 2.4499109, 0.4334615, -3.0172567, -2.9511375, 4.4060369]])
    d = torch.tensor([[0.8418981, 1.0059031, -1.5106958, 2.6477308, -0.9837826]])
    z = torch.tensor([-2.0])
    x64, l64 = rqs(z.double(), w.double(), h.double(), d.double(), inverse=True)
    x32, l32 = rqs(z, w, h, d, inverse=True)
    assert abs(x32.item() - x64.item()) < 1e-6 and abs(l32.item() - l64.item()) < 1e-4
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(50):
        w, h = torch.randn(1, 6, generator=gen) * 3, torch.randn(1, 6, generator=gen) * 3
        d = torch.randn(1, 5, generator=gen) * 3
        zs = torch.linspace(-2.99, 2.99, 801)
        ref, ref_log = rqs(zs.double(), w.double().expand(801, 6), h.double().expand(801, 6),
                           d.double().expand(801, 5), inverse=True)
        got, _ = rqs(zs, w.expand(801, 6), h.expand(801, 6), d.expand(801, 5), inverse=True)
        bound = 30 * torch.finfo(torch.float32).eps * (ref.abs() + 1) * ref_log.exp().clamp_min(1)
        worst = max(worst, float(((got.double() - ref).abs() / bound).max()))
    assert worst < 1.0
    edge = torch.tensor([3.0, -3.0], dtype=torch.float64, requires_grad=True)
    out, log_det = rqs(edge, w.double().expand(2, 6), h.double().expand(2, 6), d.double().expand(2, 5), inverse=True)
    assert out.tolist() == [3.0, -3.0] and log_det.tolist() == [0.0, 0.0]
    (grad,) = torch.autograd.grad(out.sum(), edge)
    assert grad.tolist() == [1.0, 1.0]


# ------------------------------------------------------------------ review of stop 36
def test_layers_and_flow_distributions_take_an_empty_batch():
    """A batch of no rows gives no rows and a log-det of shape (0,), as MAF, IAF and Normal already did; the coupling
    layers, Preprocess, ActNorm, ChannelConv and BatchNorm raised raw reshape / index errors."""
    from kizuna.distributions import InverseTransformedDistribution, Normal
    from kizuna.distributions.autoregressive import MADEBernoulli
    from kizuna.flows import ActNorm, AffineCoupling, BatchNorm1d, ChannelConv, Preprocess, RationalQuadraticCoupling

    layers = ((AffineCoupling(4, hidden_features=8), (0, 4)), (RationalQuadraticCoupling(4, hidden_features=8), (0, 4)),
              (Preprocess(17), (0, 4)), (ActNorm(2), (0, 2, 3, 3)), (ChannelConv(2), (0, 2, 3, 3)),
              (BatchNorm1d(4).eval(), (0, 4)))
    for flow, shape in layers:
        z, logdet = flow.forward_and_logdet(torch.zeros(shape))
        assert z.shape == shape and logdet.shape == (0,), type(flow).__name__
        x, logdet = flow.inverse_and_logdet(z) if not isinstance(flow, Preprocess) else (z, logdet)
        assert logdet.shape == (0,)
    p = InverseTransformedDistribution(Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2]), ActNorm(2), var=["x"])
    assert p.sample(batch_n=0)["x"].shape == (0, 2)
    assert MADEBernoulli(4, [8]).get_log_prob({"x": torch.zeros(0, 4)}).shape == (0,)


def test_integer_data_and_one_image_are_taken_as_the_other_families_take_them():
    """Integer data reached the first linear layer as integers (a raw dtype error); Preprocess(levels=2) refused its
    own 0/1 levels as integers. They are converted to the flow's float dtype: the density equals the float data's.
    ActNorm initialises from one image (statistics over the batch and the pixels, as Glow): the first output has
    zero mean and unit variance per channel."""
    from kizuna.distributions import InverseTransformedDistribution, Normal
    from kizuna.flows import ActNorm, AffineCoupling, Preprocess

    torch.manual_seed(0)
    xi = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]])
    p = InverseTransformedDistribution(Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[4]),
                                       AffineCoupling(4, hidden_features=8), var=["x"])
    torch.testing.assert_close(p.get_log_prob({"x": xi}), p.get_log_prob({"x": xi.float()}))
    pre = Preprocess(levels=2, dequantize=False)
    torch.testing.assert_close(pre.forward_and_logdet(xi)[0], pre.forward_and_logdet(xi.float())[0])
    act = ActNorm(2).train()
    z, _ = act.forward_and_logdet(torch.randn(1, 2, 8, 8) * 3 + 3)
    assert bool(act.initialized)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), correction=0), torch.ones(2), atol=1e-4, rtol=0)


def test_preprocess_levels_and_vq_codes_name_their_bad_input():
    from kizuna.distributions.torch_dist import validation
    from kizuna.distributions.vq import VectorQuantizer
    from kizuna.flows import Preprocess

    for levels in (2.5, None, "256", 1):
        with pytest.raises(ValueError, match="Preprocess: levels must be an integer >= 2"):
            Preprocess(levels)
    vq = VectorQuantizer(torch.nn.Conv2d(1, 3, 1), n_codes=4, code_dim=3)
    x = torch.zeros(2, 1, 2, 2)
    x[1, 0, 1, 0] = float("nan")
    with validation(True), pytest.raises(ValueError, match="nan .*nothing to quantise"):
        vq.encode(x)


def test_planar_flow_starts_as_pixyzs_and_without_the_constraint_is_pixyzs_flow() -> None:
    """Pixyz 0.3.3 draws ``w``, ``b``, ``u`` in this order from U(±1/√D) (kizuna drew ``w``, ``u`` and set ``b = 0``),
    so a seeded Pixyz program gave other numbers. The reference: Pixyz 0.3.3's ``PlanarFlow(3, constraint_u=False)``
    after ``torch.manual_seed(0)``, on the same x (its log-determinant adds 1e-7 inside the log)."""
    torch.manual_seed(0)
    f = PlanarFlow(3, constraint_u=False)
    x = torch.tensor([[0.5, -0.2, 0.1], [1.0, 0.3, -0.7]])
    z = f(x)
    torch.testing.assert_close(z, torch.tensor([[0.609038, -0.275916, 0.105609], [1.000817, 0.299431, -0.699958]]),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(f.logdet_jacobian, torch.tensor([0.040451, 0.052921]), rtol=0, atol=2e-6)


def test_planar_flow_loads_pixyzs_checkpoint_shapes() -> None:
    """Pixyz keeps ``w`` and ``u`` of shape (1, D) and ``b`` of shape (1,) (kizuna's are (D,) and ()): a Pixyz state
    dict loads (it was torch's size-mismatch error), inside a module too, and the flow is then Pixyz's
    :math:`f(z) = z + u \\tanh(w^\\top z + b)` (constraint off) with those numbers; another shape is still refused."""
    w, b, u = torch.tensor([[0.3, -0.2, 0.5]]), torch.tensor([0.1]), torch.tensor([[0.4, 0.1, -0.3]])
    f = PlanarFlow(3, constraint_u=False)
    f.load_state_dict({"w": w, "b": b, "u": u})
    assert f.w.shape == (3,) and f.b.shape == () and f.u.shape == (3,)
    x = torch.tensor([[0.5, -0.2, 0.1], [1.0, 0.3, -0.7]])
    expected = x + torch.tanh(x @ w.T + b) * u
    torch.testing.assert_close(f(x), expected, rtol=0, atol=1e-7)
    wrapped = torch.nn.Sequential(PlanarFlow(3, constraint_u=False))
    wrapped.load_state_dict({"0.w": w, "0.b": b, "0.u": u})
    torch.testing.assert_close(wrapped[0](x), expected, rtol=0, atol=1e-7)
    with pytest.raises(RuntimeError, match="size mismatch"):
        f.load_state_dict({"w": torch.zeros(2, 3), "b": b, "u": u})
