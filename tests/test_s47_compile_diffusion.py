"""Stop 47: a DDPM's and an NCSN's loss trace to one graph under ``torch.compile`` (a DDPM's was 7 graphs, an NCSN's
4: ``torch.is_inference_mode_enabled()`` and ``Tensor.is_inference()`` read while tracing), with eager values as
before; `DiffusionPath`'s noise levels in float64 (from float32's alpha-bar they were 1.7e-4 relative off at t = 1);
``generator=`` threaded to every draw of `DDPM.sample`, `FlowMatching.sample` and Hutchinson's probes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from example_loader import load_example
from torch import nn

from kizuna.distributions import (
    DDPM,
    Categorical,
    Deterministic,
    DiffusionDecoder,
    DiffusionReverse,
    DiffusionSchedule,
    FlowMatching,
    Laplace,
    validation,
)
from kizuna.distributions.flow_matching import divergence
from kizuna.losses import Expectation, denoising_score_matching, simple_diffusion_loss

# torch.compile's first use patches torch.jit, which warns of its deprecation
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    validate_before = torch.distributions.Distribution._validate_args
    torch._dynamo.reset()
    try:
        with validation(False):  # as Model's compiled steps (the checks are not traced)
            yield
    finally:  # torch.compile's first use turns torch.distributions' argument checks off process-wide
        torch.distributions.Distribution.set_default_validate_args(validate_before)
        torch._dynamo.reset()


class EpsNet(nn.Module):
    def __init__(self, d: int = 3) -> None:
        super().__init__()
        self.net = nn.Linear(d + 1, d)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.to(x.dtype)[:, None] / 10], 1))


def ddpm_loss() -> tuple[Callable[[dict], torch.Tensor], Callable[[int], dict]]:
    torch.manual_seed(0)
    loss = simple_diffusion_loss(DiffusionReverse(EpsNet(), DiffusionSchedule.linear(10))).mean()
    return loss.eval, lambda seed: {"x_0": torch.randn(8, 3, generator=torch.Generator().manual_seed(seed))}


class ScoreNet(Deterministic):
    def __init__(self, sigmas: torch.Tensor, d: int = 3) -> None:
        super().__init__(var=["s"], cond_var=["x_tilde", "i"], name="s")
        self.register_buffer("sigmas", sigmas)
        self.net = nn.Linear(d + len(sigmas), d)

    def forward(self, x_tilde: torch.Tensor, i: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"s": self.net(torch.cat([x_tilde, i], 1)) / (i @ self.sigmas)[:, None]}


def ncsn_loss() -> tuple[Callable[[dict], torch.Tensor], Callable[[int], dict]]:
    torch.manual_seed(0)
    sigmas = torch.logspace(0, -1.5, 4)
    levels = Categorical(var=["i"], probs=torch.full((4,), 0.25), name="u")
    loss = Expectation(levels, denoising_score_matching(ScoreNet(sigmas), load_example("score").NoiseKernel(sigmas),
                                                        noise_weighting=True)).mean()
    return loss.eval, lambda seed: {"x": torch.rand(8, 3, generator=torch.Generator().manual_seed(seed))}


LOSSES = {"ddpm": ddpm_loss, "ncsn": ncsn_loss}


@pytest.mark.parametrize("family", sorted(LOSSES))
def test_the_loss_traces_to_one_graph_without_a_break(fresh_dynamo: None, family: str) -> None:
    """``torch._dynamo.explain``: one graph, no break (a DDPM's loss was 7 graphs, an NCSN's 4)."""
    evaluate, batch = LOSSES[family]()
    evaluate(batch(0))  # (an eager evaluation first, as Model's first step)
    torch.manual_seed(1)
    explained = torch._dynamo.explain(evaluate)(batch(1))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("family", sorted(LOSSES))
def test_the_compiled_loss_is_one_frame_over_five_batches_with_eager_values(fresh_dynamo: None, family: str
                                                                            ) -> None:
    """``fullgraph=True`` (a break raises), one frame for five fresh batches (no recompilation), and each value the
    eager evaluation's, bit for bit (dynamo's graph run eagerly: the same random stream), also the eager values
    under ``torch.no_grad()`` and ``torch.inference_mode()``, where the evaluation keeps nothing in its caches."""
    from torch._dynamo.testing import CompileCounter

    evaluate, batch = LOSSES[family]()
    counter = CompileCounter()
    compiled = torch.compile(evaluate, backend=counter, fullgraph=True)
    for step in range(5):
        torch.manual_seed(10 + step)
        got = compiled(batch(step))
        values = []
        for mode in (torch.enable_grad, torch.no_grad, torch.inference_mode):
            with mode():
                torch.manual_seed(10 + step)
                values.append(evaluate(batch(step)))
        for want in values:
            assert torch.equal(got.detach(), want.detach())
    assert counter.frame_count == 1


def test_the_schedule_table_in_the_graph_is_the_eager_table(fresh_dynamo: None) -> None:
    """While tracing, the table is computed in the graph (the buffer's version cannot be read there), from the exact
    betas where the buffer holds them and from the buffer after an in-place change: the eager table each time."""
    schedule = DiffusionSchedule.cosine(50)
    table = torch.compile(lambda: schedule._table(), backend="eager", fullgraph=True)
    assert torch.equal(table(), schedule._table())
    with torch.no_grad():
        schedule.betas.mul_(1.5)  # no longer the exact betas: the table from the buffer's
    torch._dynamo.reset()
    assert torch.equal(table(), schedule._table())
    assert not torch.equal(schedule._table(), DiffusionSchedule.cosine(50)._table())


def _one_minus_alpha_bar_linear(T: int) -> torch.Tensor:
    """1 - alpha-bar_t of Ho et al.'s linear schedule, t = 1..T: -expm1(sum log1p(-beta)), no cancellation."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return -torch.expm1(torch.cumsum(torch.log1p(-betas), 0))


def _alpha_bar_linear(T: int) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.exp(torch.cumsum(torch.log1p(-betas), 0))


def _cosine(T: int, s: float = 0.008) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha-bar_t = cos^2(th_t) / cos^2(th_0) and 1 - alpha-bar_t = sin(th_t - th_0) sin(th_t + th_0) / cos^2(th_0),
    th_t = (t/T + s)/(1 + s) pi/2 (no cancellation), t = 1..T (the cap on beta is reached only near t = T)."""
    theta = (torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2
    c0 = torch.cos(theta[0]) ** 2
    ab = torch.cos(theta[1:]) ** 2 / c0
    return ab, torch.sin(theta[1:] - theta[0]) * torch.sin(theta[1:] + theta[0]) / c0


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_diffusion_path_noise_levels_match_the_float64_closed_form(kind: str) -> None:
    """s_t = sqrt((1 - alpha-bar_t) / alpha-bar_t) within 1e-6 relative of the closed form for every t up to T/2
    (from float32's alpha-bar: 1.7e-4 at t = 1 of a linear schedule, 2.9e-3 of a cosine one of 4000 steps)."""
    T = 1000 if kind == "linear" else 4000
    if kind == "linear":
        schedule, ab, one_minus = DiffusionSchedule.linear(T), _alpha_bar_linear(T), _one_minus_alpha_bar_linear(T)
    else:
        schedule, (ab, one_minus) = DiffusionSchedule.cosine(T), _cosine(T)
    path = DDPM(DiffusionReverse(lambda x, t: torch.zeros_like(x), schedule), [1]).path()
    want = (one_minus / ab).sqrt()[: T // 2]
    got = path.sigmas[1: T // 2 + 1]
    assert path.sigmas.dtype == torch.float64 and float(path.sigmas[0]) == 0.0
    assert float(((got - want) / want).abs().max()) < 1e-6
    assert float(((path.alpha_bar[1: T // 2 + 1] - ab[: T // 2]) / ab[: T // 2]).abs().max()) < 1e-12


# ----------------------------------------------------------------------------------------------- generator=

def _eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x + 0.01 * t.to(x.dtype)[:, None]


def _models() -> dict[str, object]:
    reverse = DiffusionReverse(_eps, DiffusionSchedule.linear(8))
    velocity = lambda x, t: 0.5 * x - t[:, None]  # noqa: E731
    return {"ddpm": DDPM(reverse, [3]),
            "ddpm, Gaussian decoder's draw": DDPM(reverse, [3], noiseless_last=False),
            "ddpm, DiffusionDecoder's draw": DDPM(reverse, [3], decoder=DiffusionDecoder(reverse, bins=5),
                                                  noiseless_last=False),
            "flow matching, heun": FlowMatching(velocity, [3], n_steps=3),
            "flow matching, euler": FlowMatching(velocity, [3], n_steps=3, sampler="euler")}


MODELS = sorted(_models())


@pytest.mark.parametrize("name", MODELS)
def test_sample_draws_from_the_generator_and_leaves_the_global_one_alone(name: str) -> None:
    p = _models()[name]
    state = torch.get_rng_state()
    a = p.sample(batch_n=4, generator=torch.Generator().manual_seed(3), return_all=False)
    b = p.sample(batch_n=4, generator=torch.Generator().manual_seed(3), return_all=False)
    c = p.sample(batch_n=4, generator=torch.Generator().manual_seed(4), return_all=False)
    assert torch.equal(torch.get_rng_state(), state)
    (key,) = a
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])
    shaped = p.sample(batch_n=2, sample_shape=[3], generator=torch.Generator().manual_seed(3))[key]
    assert shaped.shape == (3, 2, 3) and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", MODELS)
def test_the_default_draws_are_the_global_generators_same_numbers(name: str) -> None:
    """Without a generator the draws are the global generator's (as before stop 47), and a generator seeded as the
    global one gives the same numbers: every draw of the sampler goes through it, in the same order."""
    p = _models()[name]
    torch.manual_seed(11)
    default = p.sample(batch_n=4, return_all=False)
    seeded = p.sample(batch_n=4, generator=torch.Generator().manual_seed(11), return_all=False)
    (key,) = default
    assert torch.equal(default[key], seeded[key])


def test_hutchinson_probes_draw_from_the_generator() -> None:
    """`FlowMatching.get_log_prob` and `divergence` with Hutchinson's trace: equally seeded generators give the same
    estimate, the global generator is not advanced, and a generator seeded as the global one gives the default's."""
    mix = torch.tensor([[0.5, 1.0, -0.3], [0.2, -0.4, 0.9], [-1.0, 0.3, 0.1]])  # (a diagonal Jacobian: exact)
    p = FlowMatching(lambda x, t: torch.tanh(x @ mix) * (1 + t[:, None]), [3], trace="hutchinson", n_probes=2,
                     likelihood_steps=2)
    x = torch.linspace(-1, 1, 12).reshape(4, 3)
    state = torch.get_rng_state()
    one = p.get_log_prob({"x": x}, generator=torch.Generator().manual_seed(5))
    two = p.get_log_prob({"x": x}, generator=torch.Generator().manual_seed(5))
    other = p.get_log_prob({"x": x}, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(one, two) and not torch.equal(one, other)
    torch.manual_seed(5)
    assert torch.equal(p.get_log_prob({"x": x}), one)
    t = torch.full((4,), 0.5)
    _, div = divergence(p.velocity_net, x, t, "hutchinson", 3, generator=torch.Generator().manual_seed(8))
    torch.manual_seed(8)
    assert torch.equal(divergence(p.velocity_net, x, t, "hutchinson", 3)[1], div)


def test_a_generator_that_is_not_one_is_refused() -> None:
    p = _models()["ddpm"]
    with pytest.raises(TypeError, match=r"p\(x_0\): generator must be a torch.Generator or None, got int"):
        p.sample(batch_n=2, generator=3)


def test_any_decoder_draws_from_the_generator() -> None:
    """A decoder other than a `DiffusionDecoder` or a Gaussian was refused with a generator (its draw could not take
    one); the generator now stands in for torch's global one for the whole call
    (`kizuna.distributions.base.drawing_from`), so any decoder's draw comes from it."""
    decoder = Laplace(var=["x_0"], cond_var=["x_1"], loc="x_1", scale=0.1)
    p = DDPM(DiffusionReverse(_eps, DiffusionSchedule.linear(4)), [3], decoder=decoder, noiseless_last=False)
    state = torch.get_rng_state()
    a = p.sample(batch_n=2, generator=torch.Generator().manual_seed(0))["x_0"]
    b = p.sample(batch_n=2, generator=torch.Generator().manual_seed(0))["x_0"]
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    assert torch.equal(p.sample(batch_n=2)["x_0"], a)
