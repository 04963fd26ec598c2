"""Graph breaks and recompiles of kizuna's compiled paths found by the stop 49 audit, removed (stop 49).

- An EBM step (`ContrastiveDivergence` + `SGLD`): the score read ``torch.is_inference_mode_enabled()`` and made its
  ``requires_grad_`` leaf while tracing (6 graphs a step, 4 now: the leaf and the input gradient are taken outside the
  graph, `kizuna.distributions.energy.input_gradient`).
- `kizuna.samplers.paths._check_draws` bound ``validation_enabled`` to a module global at its first call: a sampler
  compiled before any eager one was traced twice (dynamo guarded on the global being None).
- `TorchDistribution._draw`'s check of the network's rows (validation on): a walrus in a set comprehension, which
  dynamo cannot trace ("Read uninitialized cell").
- `kizuna.utils.lru_cache_for_sample_dict` on ``get_params``: its key broke the graph (``tensor.is_inference()``),
  4 graphs for a VAE loss instead of 1.

References: dynamo's own count of the graphs it hands a backend (a counting backend that runs each graph as it is,
so the numbers stay eager's) and ``torch._dynamo.explain``'s break reasons; the values against closed forms (the
score of a quadratic energy) and against the same computation run eagerly from the same seeds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from test_s49_compile_notes import Decoder, Encoder
from torch import nn

from kizuna.distributions import EnergyDistribution, Normal, set_validation, validation
from kizuna.losses import ContrastiveDivergence, Expectation, KullbackLeibler, LogProb
from kizuna.models import Model
from kizuna.samplers import SGLD, score_of
from kizuna.utils import lru_cache_for_sample_dict

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("fresh_dynamo")]


class Counter:
    """A dynamo backend that counts the graphs it is given and runs each as traced (eager's numbers)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        self.graphs += 1
        return gm.forward


def breaks(explained: Any) -> list[str]:
    return [reason.reason.splitlines()[0] for reason in explained.break_reasons]


# ------------------------------------------------------------------------------------------------------------- EBM
def quadratic() -> EnergyDistribution:
    return EnergyDistribution(lambda x: 0.5 * x.pow(2).sum(-1), var=["x"])  # N(0, I) up to log Z: score -x


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference"])
def test_a_compiled_score_is_one_graph_and_the_closed_form(mode: str) -> None:
    """``score_of(p)`` compiled: one graph (the log-density; the leaf and ``autograd.grad`` run outside it). Before:
    2 graphs (3 under ``torch.no_grad()``), broken at ``torch.is_inference_mode_enabled()`` and at the leaf. The
    value is the closed form -x (exact in floating point: the gradient of 0.5 x^2 is x), also under
    ``torch.no_grad()`` and inside ``torch.inference_mode()`` (an inference tensor as input)."""
    counter = Counter()
    score = torch.compile(score_of(quadratic()), backend=counter)
    set_validation(False)
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference": torch.inference_mode}[mode]
    with context():
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
        g = score(x)
    assert torch.equal(g, -x)
    assert counter.graphs == 1


def ebm_model(backend: Counter | None) -> tuple[Model, EnergyDistribution]:
    torch.manual_seed(0)
    p = EnergyDistribution(nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 1), nn.Flatten(0)), var=["x"])
    sampler = SGLD(p, [3], buffer_size=64, reinit=0.05, n_steps=3, step_size=1.0, noise_scale=0.01)
    compile_ = {"backend": backend} if backend is not None else False
    return Model(ContrastiveDivergence(p, sampler, alpha=0.1), distributions=[p], compile=compile_,
                 validate=False), p


def test_an_ebm_step_compiles_to_four_graphs_with_eager_numbers() -> None:
    """`ContrastiveDivergence` with `SGLD` under ``Model(compile=...)``: 4 graphs a step (the sampler's draw of its
    starting rows, the energy inside the score, the buffer's update, the loss), reused at later steps; before, 6
    (two more pieces of the score around its breaks). The breaks left: the input gradient (``torch.autograd.grad``,
    which dynamo does not trace) and its leaf. Losses and trained parameters equal the eager model's bit for bit."""
    counter = Counter()
    compiled, p_c = ebm_model(counter)
    eager, p_e = ebm_model(None)
    counts = []
    for i in range(3):
        x = {"x": torch.randn(8, 3, generator=torch.Generator().manual_seed(200 + i))}
        torch.manual_seed(10 + i)
        loss_c = compiled.train(x)
        counts.append(counter.graphs)
        torch.manual_seed(10 + i)
        loss_e = eager.train(x)
        assert loss_c == loss_e
    assert compiled.compile_error is None
    assert counts == [4, 4, 4]
    for a, b in zip(p_c.parameters(), p_e.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_ebm_loss_breaks_only_at_the_input_gradient() -> None:
    """The breaks ``torch._dynamo.explain`` names: no ``is_inference_mode_enabled`` read and no leaked
    ``requires_grad_`` leaf (before: both, 6 graphs and 5 breaks)."""
    model, _ = ebm_model(None)
    set_validation(False)
    explained = torch._dynamo.explain(model.loss_cls.eval)({"x": torch.randn(8, 3)})
    reasons = breaks(explained)
    assert not [r for r in reasons if "is_inference_mode_enabled" in r or "requires_grad_()" in r], reasons
    assert explained.graph_count == 4


# ---------------------------------------------------------------------------------------------- paths._check_draws
def test_a_compiled_sampler_first_used_in_a_process_is_traced_once() -> None:
    """In a fresh interpreter (the state the bug needed: no sampler run yet), ``langevin_dynamics`` compiled with
    validation on: 2 graphs (it breaks at the finiteness check's host read), the same at later calls, no guard
    failure; before, 3 (``G['_validation_enabled'] is None`` failed after the first call's own assignment). The
    draws equal the eager ones from the same seed."""
    script = textwrap.dedent("""
        import torch
        torch.set_num_threads(1)
        from kizuna.distributions import set_validation
        from kizuna.samplers import langevin_dynamics
        counts = []
        def backend(gm, example_inputs):
            counts.append(1)
            return gm.forward
        run = torch.compile(lambda x: langevin_dynamics(lambda y: -y, x, 0.1, 3), backend=backend)
        set_validation(True)  # (after the wrapper: torch.compile turns torch's checks off)
        out = []
        for i in range(3):
            x = torch.randn(4, 2)
            torch.manual_seed(i)
            a = run(x)
            torch.manual_seed(i)
            b = langevin_dynamics(lambda y: -y, x, 0.1, 3)
            out.append((len(counts), torch.equal(a, b)))
        print(out, len(torch._dynamo.utils.guard_failures))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_LOGS": "-dynamo"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[(2, True), (2, True), (2, True)] 0"


# ------------------------------------------------------------------------------------------------ the rows' check
# the encoder and decoder of tests/test_s49_compile_notes.py (Encoder, Decoder)


def test_a_checked_sample_does_not_break_at_the_rows_check() -> None:
    """``q.sample`` traced with validation on: the check of the network's rows is traced (before: "Read uninitialized
    cell" at the walrus in a set comprehension). The draw equals the eager one from the same seed."""
    torch.manual_seed(0)
    q, x = Encoder(), torch.rand(8, 6)
    draw = lambda x: q.sample({"x": x})["z"]  # noqa: E731
    counter = Counter()
    compiled = torch.compile(draw, backend=counter)
    set_validation(True)  # (after the wrapper: torch.compile turns torch's checks off)
    reasons = breaks(torch._dynamo.explain(draw)(x))
    assert reasons, "nothing broke: the check below would pass vacuously (torch's checked constructor breaks)"
    assert not [r for r in reasons if "uninitialized cell" in r], reasons
    torch.manual_seed(3)
    a = compiled(x)
    torch.manual_seed(3)
    assert torch.equal(a, draw(x))


def test_the_rows_check_still_refuses_a_network_of_other_rows() -> None:
    """The loop that replaced the comprehension reads the same rows: a network that returns 3 rows for 8 is refused
    while validation is on, one that returns the rows given is not."""

    class Collapsed(Encoder):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return super().forward(x[:3])

    with validation(True):
        assert Encoder().sample({"x": torch.rand(8, 6)})["z"].shape == (8, 2)
        with pytest.raises(ValueError, match="row"):
            Collapsed().sample({"x": torch.rand(8, 6)})


# ------------------------------------------------------------------------------------- lru_cache_for_sample_dict
class CachedEncoder(Encoder):
    @lru_cache_for_sample_dict()
    def get_params(self, params_dict: Any = None, **kwargs: Any) -> Any:
        return super().get_params(params_dict, **kwargs)


def elbo(q: Normal) -> Any:
    prior = Normal(loc=torch.zeros(2), scale=torch.ones(2), var=["z"], features_shape=[2], name="p_prior")
    return (KullbackLeibler(q, prior) - Expectation(q, LogProb(Decoder()))).mean()


def test_a_cached_get_params_is_traced_in_one_graph() -> None:
    """A VAE loss whose encoder's ``get_params`` carries `lru_cache_for_sample_dict`: one graph, no break (before: 4
    graphs, 3 breaks at ``tensor.is_inference()`` in the cache's key), the value of the same loss without the
    decorator computed eagerly from the same seeds."""
    torch.manual_seed(0)
    loss = elbo(CachedEncoder())
    torch.manual_seed(0)
    plain = elbo(Encoder())
    x = {"x": torch.rand(8, 6, generator=torch.Generator().manual_seed(1)).round()}
    counter = Counter()
    compiled = torch.compile(loss.eval, backend=counter)
    set_validation(False)
    explained = torch._dynamo.explain(loss.eval)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), breaks(explained)
    torch.manual_seed(5)
    a = compiled(x)
    torch.manual_seed(5)
    assert torch.equal(a, plain.eval(x))
    assert counter.graphs == 1


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference"])
def test_a_score_compiled_by_an_autograd_backend_equals_eager_in_every_mode(mode: str) -> None:
    """With a backend that runs AOTAutograd (``aot_eager``, as inductor does) the traced leaf-and-gradient score saved
    inference tensors for backward inside ``torch.inference_mode()`` ("Inference tensors cannot be saved for
    backward"), and an EBM model's ``test`` there recorded a compile error and trained eagerly from then on (review R2
    of stop 49). The score's own frame runs eagerly now, the network's log-density traced: equal to eager in every
    mode, and the model keeps compiling."""
    torch.manual_seed(0)
    p = EnergyDistribution(nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 1), nn.Flatten(0)), var=["x"])
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    set_validation(False)
    compiled = torch.compile(score_of(p), backend="aot_eager")
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference": torch.inference_mode}[mode]
    with context():
        got, want = compiled(x.clone()), score_of(p)(x.clone())
    assert torch.equal(got, want)
    if mode == "inference":
        model, _ = ebm_model(None)
        model = Model(model.loss_cls, distributions=model.distributions, compile={"backend": "aot_eager"},
                      validate=False)
        model.train({"x": x})
        with torch.inference_mode():
            model.test({"x": x})
        assert model.compile_error is None
