"""Stop-42 fixes of the sampler layer and the score pieces (review: samplers).

References: Hyvärinen's objective written by hand for s(x) = -x|x| (tr ∇s = Σ -2|x|); the scores' closed forms; the
same computation under ``torch.no_grad()`` (for inference mode) or with the same times as Python floats, or the
context already expanded to every draw (for the float32 times and the one-row context); the exact error messages.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kizuna.distributions import (
    DDPM,
    Deterministic,
    DiffusionReverse,
    DiffusionSchedule,
    EnergyDistribution,
    FlowMatching,
    Normal,
)
from kizuna.losses import ScoreMatchingError
from kizuna.models import Model
from kizuna.samplers import SGLD, ScorePath, ancestral, ddim, euler, guided, heun, langevin_dynamics, score_of

F64 = torch.float64


# --- 1. ScoreMatchingError without gradients ------------------------------------------------------------------------

class _CubicScore(Deterministic):
    """s(x) = -w x|x| elementwise: tr ∇s = Σ -2w|x|."""

    def __init__(self) -> None:
        super().__init__(var=["s"], cond_var=["x"], name="s")
        self.w = nn.Parameter(torch.ones((), dtype=F64))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"s": -self.w * x * x.abs()}


class _CubicEnergy(nn.Module):
    """E(x) = w Σ|x|³/3: the same score."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones((), dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * (x.abs() ** 3 / 3).reshape(x.shape[0], -1).sum(1)


def _hyvarinen(x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(x.shape[0], -1)
    return (-2 * rows.abs()).sum(1) + 0.5 * (rows**4).sum(1)


@pytest.mark.parametrize("shape", [(3,), (3, 2), (3, 2, 2, 2)])
@pytest.mark.parametrize("kind", ["network", "energy"])
def test_score_matching_keeps_its_trace_without_gradients(shape: tuple[int, ...], kind: str) -> None:
    """Under no_grad (Model.test, fit's validation) scalar and image data lost the trace term: the value was
    1/2||s||^2 alone (0.1312 for -1.1759 on scalar data)."""
    x = torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    model = _CubicScore() if kind == "network" else EnergyDistribution(_CubicEnergy(), var=["x"])
    loss = ScoreMatchingError(model)
    hand = _hyvarinen(x)
    with_grad = loss.eval({"x": x}).detach()
    with torch.no_grad():
        without = loss.eval({"x": x})
    test = Model(loss.mean(), distributions=None).test({"x": x}).item()
    torch.testing.assert_close(with_grad, hand, rtol=1e-12, atol=0)
    torch.testing.assert_close(without, hand, rtol=1e-12, atol=0)
    assert test == pytest.approx(hand.mean().item(), rel=1e-12)


# --- 2. the autograd scores inside torch.inference_mode() -----------------------------------------------------------

def _energy_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))


def test_scores_and_langevin_inside_inference_mode_are_the_no_grad_ones() -> None:
    """score_of, EnergyDistribution.score and langevin_dynamics(score_of(p)) raised torch's "element 0 of tensors
    does not require grad" inside inference mode; now the numbers of no_grad, and the closed-form scores."""
    net = _energy_net()
    e = EnergyDistribution(net, var=["x"])
    p = Normal(var=["x"], loc=0.5, scale=2.0, features_shape=[2])
    out = {}
    for mode in ("no_grad", "inference"):
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
            out[mode] = [score_of(p)(x), e.score({"x": x}), score_of(e)(x),
                         langevin_dynamics(score_of(p), x, 0.1, 3, torch.Generator().manual_seed(2)),
                         langevin_dynamics(score_of(e), x, 0.1, 3, torch.Generator().manual_seed(2))]
    for a, b in zip(out["no_grad"], out["inference"]):
        assert torch.equal(a, b)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["inference"][0], -(x - 0.5) / 4.0)  # N(0.5, 2²)
    xg = x.clone().requires_grad_(True)
    (minus_grad,) = torch.autograd.grad(-net(xg).sum(), xg)
    torch.testing.assert_close(out["inference"][1], minus_grad)
    torch.testing.assert_close(out["inference"][2], minus_grad)


def test_conditional_energy_scored_inside_inference_mode() -> None:
    """A conditioning value made inside inference mode is an inference tensor, which autograd cannot save for
    backward: E(x, y) = Σ (x y)² / 2 has the score -x y²."""
    e = EnergyDistribution(lambda x, y: 0.5 * (x * y).pow(2).sum(-1), var=["x"], cond_var=["y"])
    with torch.inference_mode():
        x, y = torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.tensor([[2.0, 1.0], [3.0, -1.0]])
        by_method, by_score_of = e.score({"x": x, "y": y}), score_of(e, y=y)(x)
    torch.testing.assert_close(by_method, -x * y**2)
    torch.testing.assert_close(by_score_of, -x * y**2)


def test_sgld_samples_inside_inference_mode_as_under_no_grad() -> None:
    """SGLD.sample inside inference mode: the draws and the buffer of no_grad, from the same generator."""
    sg = SGLD(EnergyDistribution(_energy_net(), var=["x"]), [2], buffer_size=10, n_steps=3)
    state = {k: v.clone() for k, v in sg.state_dict().items()}
    draws, buffers = {}, {}
    for mode in ("no_grad", "inference"):
        sg.load_state_dict(state)
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            draws[mode] = sg.sample(4, generator=torch.Generator().manual_seed(3))
        buffers[mode] = sg.buffer.clone()
    assert torch.equal(draws["no_grad"], draws["inference"])
    assert torch.equal(buffers["no_grad"], buffers["inference"])


def test_sgld_built_inside_inference_mode_samples_outside_it() -> None:
    """Its buffer is an inference tensor, which torch refused to update in place outside inference mode."""
    e = EnergyDistribution(_energy_net(), var=["x"])
    torch.manual_seed(4)
    outside = SGLD(e, [2], buffer_size=10, n_steps=3)
    torch.manual_seed(4)
    with torch.inference_mode():
        inside = SGLD(e, [2], buffer_size=10, n_steps=3)
    a = outside.sample(4, generator=torch.Generator().manual_seed(5))
    b = inside.sample(4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(outside.buffer, inside.buffer)


# --- 3. a path's own times as a float32 tensor ----------------------------------------------------------------------

def _ddpm(context: bool = False, T: int = 100) -> DDPM:
    schedule = DiffusionSchedule.linear(T)
    if context:
        return DDPM(DiffusionReverse(lambda x, t, y: 0.1 * x + 0.01 * y, schedule, context_var=["y"]), [2])
    return DDPM(DiffusionReverse(lambda x, t: 0.1 * x, schedule), [2])


@pytest.mark.parametrize("sampler", [ddim, heun])
def test_guided_and_score_paths_take_their_own_times_as_float32(sampler) -> None:
    """Guided (w = 0 and 2) and ScorePath refused their own times given as a float32 tensor ("s=1.3230847120285034 is
    not one of the trained steps", "sigma=0.10000000149011612 is not one of the model's levels"); the draws are those
    of the Python-float times."""
    uncond, cond = _ddpm().path(), _ddpm(context=True).path({"y": torch.ones(4, 1)})
    paths = {"diffusion": (uncond, 10), "guided w=0": (guided(cond, uncond, 0.0), 10),
             "guided w=2": (guided(cond, uncond, 2.0), 10),
             "score": (ScorePath(lambda x, i: -x / (1.0 + i), [1.0, 0.5, 0.1], [2]), None)}
    for name, (path, n_steps) in paths.items():
        times = path.times(n_steps)
        as_float32 = torch.tensor(times, dtype=torch.float32)
        assert as_float32.tolist() != times, name  # (really rounded)
        a = sampler(path, 4, times=times, generator=torch.Generator().manual_seed(0))
        b = sampler(path, 4, times=as_float32, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a, b), name
    u = ddim(uncond, 4, times=torch.tensor(uncond.times(10), dtype=torch.float32),
             generator=torch.Generator().manual_seed(0))
    w0 = ddim(guided(cond, uncond, 0.0), 4, times=torch.tensor(uncond.times(10), dtype=torch.float32),
              generator=torch.Generator().manual_seed(0))
    assert torch.equal(u, w0)  # w = 0 is the unconditional model exactly


def test_score_path_times_between_levels_are_still_refused() -> None:
    path = ScorePath(lambda x, i: -x, [1.0, 0.5, 0.1], [2])
    with pytest.raises(ValueError, match=r"ScorePath: sigma=0.3 is not one of the model's levels"):
        ddim(path, 2, times=[1.0, 0.3, 0.0])


# --- 4. a conditional model's path(context): one row for every draw, n from its rows, a named mismatch --------------

class _CatNet(nn.Module):
    def __init__(self, out: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, out)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x, y], 1))


def _conditional_models() -> tuple[DDPM, DDPM, FlowMatching]:
    ddpm = DDPM(DiffusionReverse(_CatNet(), DiffusionSchedule.linear(20), context_var=["y"]), [2])
    learned = DDPM(DiffusionReverse(_CatNet(4), DiffusionSchedule.linear(20), variance="learned", context_var=["y"]),
                   [2])
    return ddpm, learned, FlowMatching(_CatNet(), [2], context_var=["y"])


def test_path_expands_a_one_row_context_to_every_draw() -> None:
    """ddim(p.path({'y': one row}), n=4) stopped inside the network with torch's "Sizes of tensors must match"."""
    ddpm, learned, fm = _conditional_models()
    y1 = torch.tensor([[0.7]])
    y4 = y1.expand(4, -1)
    cases = [(lambda c: ddim(ddpm.path(c), 4, 10, eta=0.5, generator=torch.Generator().manual_seed(1))),
             (lambda c: ancestral(learned.path(c), 4, generator=torch.Generator().manual_seed(1))),
             (lambda c: heun(fm.path(c), 4, 5, generator=torch.Generator().manual_seed(1))),
             (lambda c: euler(guided(ddpm.path(c), _ddpm(T=20).path(), 2.0), 4, 5,
                              generator=torch.Generator().manual_seed(1)))]
    for run in cases:
        assert torch.equal(run({"y": y1}), run({"y": y4}))


def test_path_draws_default_to_the_context_rows() -> None:
    """n left out with a 4-row context drew 1 row (and failed inside the network)."""
    ddpm, _, fm = _conditional_models()
    y = torch.tensor([[0.1], [0.2], [0.3], [0.4]])
    a = ddim(ddpm.path({"y": y}), n_steps=10, generator=torch.Generator().manual_seed(2))
    b = ddim(ddpm.path({"y": y}), 4, 10, generator=torch.Generator().manual_seed(2))
    assert a.shape == (4, 2) and torch.equal(a, b)
    c = heun(fm.path({"y": y}), n_steps=5, generator=torch.Generator().manual_seed(3))
    d = heun(fm.path({"y": y}), 4, 5, generator=torch.Generator().manual_seed(3))
    assert c.shape == (4, 2) and torch.equal(c, d)
    assert guided(ddpm.path({"y": y}), _ddpm(T=20).path(), 2.0).n_draws == 4


def test_path_context_of_other_rows_is_a_named_error() -> None:
    ddpm, _, fm = _conditional_models()
    y2 = torch.ones(2, 1)
    with pytest.raises(ValueError, match=r"^DiffusionPath of p\(x_\{t-1\}\|x_t,t,y\): n=3 but the conditioning value y "
                                         r"has 2 rows; give one row per draw, or one row for all$"):
        ddim(ddpm.path({"y": y2}), 3, 5)
    with pytest.raises(ValueError, match=r"^p\(x\|y\): n=3 but the conditioning value y has 2 rows"):
        heun(fm.path({"y": y2}), 3, 5)
    with pytest.raises(ValueError, match=r"n=3 but the conditioning value y has 2 rows"):  # rows of a given start
        ddim(ddpm.path({"y": y2}), x=torch.zeros(3, 2), n_steps=5)


# --- 5. DiffusionSchedule inside torch.inference_mode() -------------------------------------------------------------

def test_ddpm_built_and_sampled_inside_inference_mode() -> None:
    """Construction raised torch's "Inference tensors do not track version counter"; the draws are those of a model
    built outside, for the same seed."""
    net = _CatNet()
    eps = lambda x, t: net.lin(torch.cat([x, x[:, :1]], 1))  # noqa: E731
    torch.manual_seed(6)
    outside = DDPM(DiffusionReverse(eps, DiffusionSchedule.linear(10)), [2]).sample(batch_n=3)["x_0"]
    torch.manual_seed(6)
    with torch.inference_mode():
        inside = DDPM(DiffusionReverse(eps, DiffusionSchedule.linear(10)), [2]).sample(batch_n=3)["x_0"]
    assert torch.equal(outside, inside)


def test_schedule_built_inside_inference_mode_follows_a_loaded_state() -> None:
    """A serving function builds the schedule and loads a checkpoint inside inference mode: the table follows the
    loaded betas (alpha-bar the cumulative product of the cosine schedule's betas)."""
    cosine = DiffusionSchedule.cosine(10)
    with torch.inference_mode():
        schedule = DiffusionSchedule.linear(10)
        schedule.load_state_dict(cosine.state_dict())
        alpha_bar = schedule.alpha_bar().clone()
    reference = torch.cat([torch.ones(1), torch.cumprod(1 - cosine.betas, 0)])
    torch.testing.assert_close(alpha_bar, reference)
    with torch.inference_mode():
        double = DiffusionSchedule.linear(10).double()  # converted inside it too
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 10, dtype=F64), 0)
    torch.testing.assert_close(double.alpha_bar()[1:], expected, rtol=1e-15, atol=0)


# --- 6. SGLD's features_shape ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [2, None])
def test_sgld_refuses_a_bare_number_as_features_shape(shape) -> None:
    e = EnergyDistribution(lambda x: x.pow(2).sum(-1), var=["x"])
    with pytest.raises(ValueError, match=rf"^SGLD: features_shape must be a sequence of sizes .* got {shape}"):
        SGLD(e, shape)


# --- 7. review diffB of cf23cbb: snapping tolerance, a context set later, the context read once, the score's mode ---

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_diffusion_path_takes_its_times_written_with_six_decimals(schedule: str) -> None:
    """cf23cbb made the snapping purely relative: path.times(100) rounded to six decimals (a config, a printout) was
    refused ("DiffusionPath: s=0.238081 is not one of the trained steps"), accepted before (an absolute 1e-6 below
    s_t = 1). They are the trained steps exactly, and draw what the exact times draw."""
    path = DDPM(DiffusionReverse(lambda x, t: 0.1 * x, getattr(DiffusionSchedule, schedule)(1000)), [2]).path()
    times = path.times(100)
    rounded = [round(t, 6) for t in times]
    assert rounded != times  # (really rounded)
    assert path.check_times(rounded) == times
    a = ddim(path, 3, times=times, generator=torch.Generator().manual_seed(0))
    b = ddim(path, 3, times=rounded, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_score_path_snapping_stays_relative() -> None:
    """A ScorePath's end 0.0 is not taken as a level below 1e-6 (an absolute floor would), while its levels given as
    float32 still are its levels."""
    levels = [1.0, 0.5, 5e-7]
    path = ScorePath(lambda x, i: -x, levels, [2])
    assert path.check_times([1.0, 0.5, 5e-7, 0.0]) == [1.0, 0.5, 5e-7, 0.0]
    assert path.check_times(torch.tensor([1.0, 0.5, 5e-7, 0.0], dtype=torch.float32)) == [1.0, 0.5, 5e-7, 0.0]


def test_diffusion_path_follows_a_context_set_after_it_was_built() -> None:
    """path.context = other (or one value of it replaced) was ignored: the draws stayed those of the first context
    (the context was read once, at construction). They are now those of a path built with the new context, and the
    default number of draws follows its rows."""
    ddpm, learned, _ = _conditional_models()

    def draws(path, n=None):
        return ddim(path, n, n_steps=5, eta=0.5, generator=torch.Generator().manual_seed(7))

    y0, y10, y3 = torch.zeros(4, 1), torch.full((4, 1), 10.0), torch.tensor([[-2.0], [0.5], [3.0]])
    path = ddpm.path({"y": y0})
    first = draws(path)  # (reads, and keeps, the first context)
    path.context = {"y": y10}
    after = draws(path)
    assert torch.equal(after, draws(ddpm.path({"y": y10}))) and not torch.equal(after, first)
    path.context["y"] = y3  # one value replaced: 3 draws now
    assert path.n_draws == 3
    assert torch.equal(draws(path), draws(ddpm.path({"y": y3})))
    g = guided(path, _ddpm(T=20).path(), 2.0)
    path.context = {"y": torch.ones(2, 1)}
    assert g.n_draws == 2
    lpath = learned.path({"y": y0})  # the ancestral kernel's mean and variance read it too
    ancestral(lpath, 4, generator=torch.Generator().manual_seed(8))
    lpath.context = {"y": y10}
    assert torch.equal(ancestral(lpath, 4, generator=torch.Generator().manual_seed(8)),
                       ancestral(learned.path({"y": y10}), 4, generator=torch.Generator().manual_seed(8)))


def test_flow_matching_path_reads_its_context_once_per_number_of_rows(monkeypatch) -> None:
    """The velocity read the context (context_of_draws) at each of the network's calls, 10 for heun's 5 steps (a
    conditional draw of a small network 10% slower than an unconditional one); now once per number of rows. The draws
    are those of the context given with a row per draw."""
    import kizuna.distributions.flow_matching as fm_module

    _, _, fm = _conditional_models()
    y1 = torch.tensor([[0.7]])
    expected = heun(fm.path({"y": y1.expand(4, -1)}), 4, 5, generator=torch.Generator().manual_seed(9))
    calls = []
    real = fm_module.context_of_draws

    def counted(*args, **kwargs):
        calls.append(args[2])  # the draws asked for (None: the context's rows)
        return real(*args, **kwargs)

    monkeypatch.setattr(fm_module, "context_of_draws", counted)
    path = fm.path({"y": y1})
    a = heun(path, 4, 5, generator=torch.Generator().manual_seed(9))
    b = heun(path, 4, 5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, expected) and torch.equal(b, expected)
    assert calls == [None, 4]  # the path's rows, then 4 rows once for 20 network calls


def test_scores_enter_inference_mode_false_only_inside_inference_mode(monkeypatch) -> None:
    """score_of and EnergyDistribution.score entered torch.inference_mode(False) at every call (about 9 us, 5% of a
    small energy score); now only inside inference mode, with the same values (closed forms)."""
    real = torch.inference_mode
    entered = []

    def spy(mode: bool = True):
        entered.append(mode)
        return real(mode)

    monkeypatch.setattr(torch, "inference_mode", spy)
    e = EnergyDistribution(lambda x, y: 0.5 * (x * y).pow(2).sum(-1), var=["x"], cond_var=["y"])
    p = Normal(var=["x"], loc=0.5, scale=2.0, features_shape=[2])
    x, y = torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.tensor([[2.0, 1.0], [3.0, -1.0]])
    for mode in ("grad", "no_grad", "inference"):
        with torch.enable_grad() if mode == "grad" else torch.no_grad() if mode == "no_grad" else real():
            xm, ym = x.clone(), y.clone()
            scores = [e.score({"x": xm, "y": ym}), score_of(e, y=ym)(xm), score_of(p)(xm)]
        torch.testing.assert_close(scores[0].detach(), -x * y**2)
        torch.testing.assert_close(scores[1], -x * y**2)
        torch.testing.assert_close(scores[2], -(x - 0.5) / 4.0)
        assert entered == ([False] * 3 if mode == "inference" else []), mode
    with real():
        made_inside = x.clone()  # an inference tensor, scored outside inference mode: still copied (`input_leaf`)
    entered.clear()
    with torch.no_grad():
        torch.testing.assert_close(e.score({"x": made_inside, "y": y}), -x * y**2)
        torch.testing.assert_close(score_of(p)(made_inside), -(x - 0.5) / 4.0)
    assert entered == []
