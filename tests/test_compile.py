"""``Model(..., compile=True)``: the same losses as eager, checks inside the graph, and a clear fallback.

Reference: the eager ``Model`` on identical weights and random draws (inductor's
``fallback_random`` makes compiled code draw torch's eager random stream).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kizuna.distributions import Bernoulli, Normal, validation
from kizuna.losses import Expectation, KullbackLeibler, LogProb
from kizuna.models import Model

# inductor compiles C++ on CPU (tens of seconds per graph): those tests are slow and need a C++ compiler
needs_compiler = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                                    reason="torch.compile (inductor) on CPU needs a C++ compiler: none found")


class Encoder(Normal):
    def __init__(self, d: int = 6, z: int = 2) -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        self.net = nn.Linear(d, 2 * z)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, s = self.net(x).chunk(2, -1)
        return {"loc": loc, "scale": F.softplus(s)}


class Decoder(Bernoulli):
    def __init__(self, d: int = 6, z: int = 2) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Linear(z, d)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(z)}


def vae(seed: int = 0, **options: object) -> Model:
    torch.manual_seed(seed)
    q, p = Encoder(), Decoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
    return Model(loss, distributions=[p, q], optimizer_params={"lr": 1e-2}, **options)


@pytest.fixture
def eager_random_stream() -> Iterator[None]:
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    with inductor_config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {"x": (torch.rand(32, 6, generator=gen) > 0.5).float()}


@pytest.mark.slow
@needs_compiler
def test_compiled_steps_match_eager(eager_random_stream: None, data: dict[str, torch.Tensor]) -> None:
    eager, compiled = vae(), vae(compile=True)
    for step in range(3):
        torch.manual_seed(10 + step)
        a = eager.train(data).item()
        torch.manual_seed(10 + step)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no fallback here: inductor works on this machine
            b = compiled.train(data).item()
        assert b == pytest.approx(a, rel=1e-5, abs=1e-5)
    for (name, pa), (_, pb) in zip(eager.distributions.named_parameters(), compiled.distributions.named_parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-5, msg=name)
    assert compiled.compile_error is None
    torch.manual_seed(99)
    a = eager.test(data).item()
    torch.manual_seed(99)
    assert compiled.test(data).item() == pytest.approx(a, rel=1e-5, abs=1e-5)
    history_a = eager.fit(data, epochs=1, batch_size=16, seed=3, quiet=True)
    history_b = compiled.fit(data, epochs=1, batch_size=16, seed=3, quiet=True)
    assert history_b["train"][-1] == pytest.approx(history_a["train"][-1], rel=1e-4)
    for label in history_a.terms:
        assert history_b[label][-1] == pytest.approx(history_a[label][-1], rel=1e-4, abs=1e-5)


@pytest.mark.slow
@needs_compiler
def test_a_non_finite_compiled_step_is_caught(data: dict[str, torch.Tensor]) -> None:
    """Compiled steps run unchecked (the first evaluation is checked, eagerly); a parameter gone NaN
    still stops training, naming the term."""
    torch._dynamo.reset()
    model = vae(compile=True)
    q = model.loss_cls.loss1.loss1.p
    model.train(data)
    model.train(data)
    with torch.no_grad():
        q.net.bias[2:] = float("nan")  # NaN scale (softplus of NaN) and finite loc
    with pytest.raises(FloatingPointError, match=r"non-finite terms: KL\[q\(z\|x\)\|\|p_\{prior\}\(z\)\] = nan"):
        model.step(data)


def test_compile_argument_is_checked() -> None:
    with pytest.raises(TypeError, match="compile must be True, False or a dict"):
        vae(compile="yes")
    assert vae(compile={"mode": "reduce-overhead"})._compile_args == {"mode": "reduce-overhead"}
    assert vae(compile=False)._compile_args is None
    # the user's mistakes are errors when the model is built (they trained eagerly, warning from the second step on
    # that torch.compile was unavailable on this machine)
    with pytest.raises(TypeError, match="compile= names 'mdoe', which torch.compile does not take; its arguments are "
                                        "fullgraph, dynamic, backend, mode"):
        vae(compile={"mdoe": "max-autotune"})
    with pytest.raises(ValueError, match=r"compile=\{'mode': 'bogus'\} is not one of torch.compile's modes \(default"):
        vae(compile={"mode": "bogus"})
    with pytest.raises(ValueError, match=r"'backend': 'nonexistent'\} is not one of torch.compile's backends"):
        vae(compile={"backend": "nonexistent"})
    with pytest.raises(TypeError, match="gives both mode and options, which torch.compile does not take together"):
        vae(compile={"mode": "max-autotune", "options": {"trace.enabled": False}})
    checks = torch.distributions.Distribution._validate_args
    assert vae(compile={"backend": "eager", "mode": "max-autotune-no-cudagraphs"})._compile_args["backend"] == "eager"
    assert vae(compile={"backend": lambda gm, inputs: gm})._compile_args is not None  # a callable backend
    assert torch.distributions.Distribution._validate_args == checks


def test_falls_back_with_a_warning_when_torch_compile_is_unavailable(
        monkeypatch: pytest.MonkeyPatch, data: dict[str, torch.Tensor]) -> None:
    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Python 3.99 is not supported by torch.compile")

    monkeypatch.setattr(torch, "compile", unavailable)
    eager, compiled = vae(), vae(compile=True)
    for model in (eager, compiled):  # the first step is checked, eagerly; then compilation is tried
        torch.manual_seed(1)
        model.train(data)
    torch.manual_seed(0)
    a = eager.train(data).item()
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match=r"torch.compile is unavailable here \(RuntimeError: Python 3.99"):
        b = compiled.train(data).item()
    assert b == a
    assert "Python 3.99" in compiled.compile_error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled.train(data)  # warned once, then eager


def test_falls_back_when_the_compiled_function_fails(monkeypatch: pytest.MonkeyPatch,
                                                     data: dict[str, torch.Tensor]) -> None:
    def broken_backend(fn: object, **kwargs: object) -> object:
        def call(*args: object, **kwargs: object) -> None:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken_backend)
    eager, compiled = vae(), vae(compile=True)
    for model in (eager, compiled):  # the first step is checked, eagerly
        torch.manual_seed(1)
        model.train(data)
    torch.manual_seed(0)
    a = eager.train(data).item()
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="No working C\\+\\+ compiler"):
        assert compiled.train(data).item() == a  # the failed step is taken eagerly, with the same draws
    torch.manual_seed(5)
    a = eager.train(data).item()
    torch.manual_seed(5)
    assert compiled.train(data).item() == pytest.approx(a, rel=1e-6)


def test_a_model_error_is_raised_not_taken_for_a_compile_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_backend(fn: object, **kwargs: object) -> object:
        def call(*args: object, **kwargs: object) -> None:
            raise RuntimeError("shape mismatch inside the graph")

        return call

    monkeypatch.setattr(torch, "compile", broken_backend)
    model = vae(compile=True, validate=False)  # every step compiled
    with pytest.raises(ValueError, match="mat1 and mat2 shapes cannot be multiplied"):  # eager mode's error
        model.train({"x": torch.zeros(4, 5)})
    assert model.compile_error is None  # the model was wrong, not the compiler


@pytest.mark.slow
@needs_compiler
def test_every_loss_compiles_the_same_evaluation(eager_random_stream: None, data: dict[str, torch.Tensor]) -> None:
    """A loss with a score-function term (REINFORCE) compiles too: there is no list of plannable losses."""
    from kizuna.losses import REINFORCE

    torch.manual_seed(0)
    q, p = Encoder(), Decoder()
    loss = -REINFORCE(q, LogProb(p)).mean()
    model = Model(loss, distributions=[p, q], compile=True, validate=False)
    torch.manual_seed(4)
    expected = loss.eval(data).item()
    torch.manual_seed(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert model.train(data).item() == pytest.approx(expected, rel=1e-5)
    assert model.compile_error is None


# torch.compile's first use patches torch.jit, which warns of its deprecation
_JIT_DEPRECATION = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@_JIT_DEPRECATION
def test_a_vae_step_compiles_to_one_graph_and_never_recompiles() -> None:
    """``torch.compile`` traces the whole evaluation of a VAE loss (the memo of shared parameters and
    the validation switch included) as one graph, and fresh batches reuse it: no graph break, no
    recompilation. (dynamo's ``eager`` backend: the trace without inductor's C++, so this runs fast.)
    A ``ContextVar`` read or an ``id()`` of an input tensor in the evaluation breaks this."""
    validate_before = torch.distributions.Distribution._validate_args
    try:
        with validation(False):  # as Model's steps after the first (the checks are not traced); not left to
            _one_graph_and_no_recompilation()  # torch.compile's first use in the process, which turns them off
    finally:  # torch.compile's first use turns torch.distributions' argument checks off process-wide
        torch.distributions.Distribution.set_default_validate_args(validate_before)
        torch._dynamo.reset()


def _one_graph_and_no_recompilation() -> None:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    torch.manual_seed(0)
    q, p = Encoder(), Decoder()
    prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
    loss = (KullbackLeibler(q, prior) - Expectation(q, LogProb(p))).mean()
    counter = CompileCounter()
    compiled = torch.compile(loss.eval, backend=counter, fullgraph=True)  # fullgraph: a break raises
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        x = {"x": (torch.rand(32, 6, generator=gen) > 0.5).float()}
        torch.manual_seed(5)
        got = compiled(x)
        torch.manual_seed(5)
        torch.testing.assert_close(got, loss.eval(x))
    assert counter.frame_count == 1


@_JIT_DEPRECATION
def test_a_dynamic_shape_compile_does_not_recompile_for_each_batch_size() -> None:
    """With ``dynamic=True`` one graph serves batches of 5, 7 and 9 rows of a density whose constant row broadcasts
    against the batch (the table of broadcast shapes, read while tracing, specialised the graph on the batch size:
    three frames)."""
    from torch._dynamo.testing import CompileCounter

    validate_before = torch.distributions.Distribution._validate_args
    try:
        torch._dynamo.reset()
        p = Normal(var=["x"], cond_var=["z"], loc="z", scale=1.0, features_shape=[3])
        loss = LogProb(p).mean()
        loss.eval({"x": torch.randn(5, 3), "z": torch.randn(5, 3)})  # the eager table holds (5, 3) with (1, 3)
        counter = CompileCounter()
        compiled = torch.compile(loss.eval, backend=counter, fullgraph=True, dynamic=True)
        with validation(False):  # as Model's steps after the first (the checks are not traced)
            for n in (5, 7, 9):
                x = {"x": torch.randn(n, 3), "z": torch.randn(n, 3)}
                torch.testing.assert_close(compiled(x), loss.eval(x))
        assert counter.frame_count == 1
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate_before)
        torch._dynamo.reset()



def test_an_mlp_of_two_conditions_compiles_once_for_every_batch_size() -> None:
    """An MLP distribution of two conditions (their one-row broadcast written without a set of row counts, which
    pinned the symbolic batch size: a frame per size) keeps its graphs over batch sizes with ``dynamic=True``."""
    from torch._dynamo.testing import CompileCounter

    from kizuna.distributions import MLPNormal

    try:
        torch._dynamo.reset()
        loss = LogProb(MLPNormal("x", ["z", "y"], [5, 8, 2])).mean()
        counter = CompileCounter()
        compiled = torch.compile(loss.eval, backend=counter, fullgraph=True, dynamic=True)
        with validation(False):
            for n in (5, 7, 9, 11, 13, 15):
                x = {"x": torch.randn(n, 2), "z": torch.randn(n, 3), "y": torch.randn(n, 2)}
                torch.testing.assert_close(compiled(x), loss.eval(x))
        assert counter.frame_count <= 2  # (a second frame where a size of 1 vs more is told apart; one per size: 6)
    finally:
        torch._dynamo.reset()


def test_a_standard_normal_prior_compiles_in_one_graph_after_eager_draws() -> None:
    """The N(0, 1) draw plan is eager only: after eager draws have built it, a ``fullgraph`` compilation of a loss that
    draws from the prior traces the general draw (the plan's check of the buffers' version counters failed it)."""
    from kizuna.losses import Expectation

    try:
        torch._dynamo.reset()
        prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[3])
        d = Normal(var=["y"], cond_var=["z"], loc="z", scale=1.0, features_shape=[3])
        loss = Expectation(prior, LogProb(d)).mean()
        x = {"y": torch.zeros(4, 3)}
        with validation(False):
            loss.eval(x)
            torch.manual_seed(0)
            out = torch.compile(loss.eval, backend="eager", fullgraph=True)(x)
            torch.manual_seed(0)
            torch.testing.assert_close(out, loss.eval(x))
    finally:
        torch._dynamo.reset()

@_JIT_DEPRECATION
def test_compile_true_leaves_the_process_validation_setting_alone(data: dict[str, torch.Tensor]) -> None:
    """torch.compile's first use turns torch.distributions' default checks off process-wide;
    ``Model(compile=True)`` keeps the user's setting (the compiled function is built, not run, here)."""
    from kizuna.distributions import set_validation, validation_enabled

    before = torch.distributions.Distribution._validate_args
    try:
        for setting in (True, False):
            set_validation(setting)
            model = vae(compile=True)
            model._evaluator(model.loss_cls, checked=False)  # builds the torch.compile wrapper
            assert validation_enabled() is setting
    finally:
        set_validation(before)
        torch._dynamo.reset()


@needs_compiler
def test_a_compiled_run_resumed_from_a_checkpoint_continues_the_uninterrupted_one(tmp_path) -> None:
    """With validate=None the first step is checked, eagerly; a fresh model loading a checkpoint checked its first
    step again, eagerly where the uninterrupted run was compiled, and compiled code draws other random numbers:
    epoch 2's loss 4.718 against 4.619. The checkpoint now says which losses were checked."""
    gen = torch.Generator().manual_seed(1)
    data = {"x": (torch.rand(32, 6, generator=gen) > 0.5).float()}
    straight = vae(compile=True)
    straight.fit(data, epochs=2, batch_size=8, seed=3, quiet=True)
    path = tmp_path / "c.pt"
    first = vae(compile=True)
    first.fit(data, epochs=1, batch_size=8, seed=3, quiet=True, checkpoint=path)
    assert "train" in first.state_dict()["validated"]
    resumed = vae(compile=True)
    resumed.load(path)
    resumed.fit(data, epochs=1, batch_size=8, seed=3, quiet=True)
    assert straight.compile_error is None and resumed.compile_error is None
    assert resumed.history.train == straight.history.train
    for a, b in zip(straight.distributions.parameters(), resumed.distributions.parameters()):
        assert torch.equal(a, b)


def _failing_backward_backend() -> object:
    """A torch.compile backend whose forward compiles (as given) and whose backward compiler fails: AOTAutograd
    compiles the backward lazily, at the first backward of the compiled step."""
    from torch._dynamo.backends.common import aot_autograd

    def backward(gm: object, example: object) -> object:
        raise RuntimeError("backward compiler exploded")

    return aot_autograd(fw_compiler=lambda gm, example: gm, bw_compiler=backward)


def test_falls_back_when_the_compiled_backward_fails() -> None:
    """A failure compiling the backward escaped raw at every step (the fallback covered the forward only). The failed
    step is taken again eagerly from the same random state and the same running statistics, with a warning, and the
    model trains on eagerly: its parameters after three steps equal an eager model's (SGD, the same data)."""
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())

    class P(Normal):
        def __init__(self, net: nn.Module) -> None:
            super().__init__(var=["x"], cond_var=["y"], name="p")
            self.net = net

        def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": self.net(y), "scale": torch.ones(y.shape[0], 2)}

    def build(compile: object) -> Model:  # noqa: A002 - Model's argument
        return Model(-LogProb(P(nets.pop(0))).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1},
                     compile=compile, validate=False)

    eager, compiled = build(False), build({"backend": _failing_backward_backend()})
    data = {"x": torch.randn(8, 2), "y": torch.randn(8, 3)}
    with pytest.warns(RuntimeWarning, match="backward compiler exploded"):
        first = compiled.train(data)
    assert compiled.compile_error is not None and "backward compiler exploded" in compiled.compile_error
    assert first.item() == eager.train(data).item()
    for _ in range(2):
        compiled.train(data)
        eager.train(data)
    for a, b in zip(compiled.distributions.state_dict().values(), eager.distributions.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_backward_error_of_the_model_is_raised_not_taken_for_a_compile_failure() -> None:
    """An error the eager backward raises too (here a gradient hook that refuses) is the model's: raised as it is,
    and compilation is not given up."""
    loc = nn.Parameter(torch.zeros(1))
    loc.register_hook(lambda g: (_ for _ in ()).throw(ValueError("the model's own backward error")))
    model = Model(-LogProb(Normal(var=["x"], loc=loc, scale=1.0)).mean(),
                  compile={"backend": _failing_backward_backend()}, validate=False)
    with pytest.raises(ValueError, match="the model's own backward error"):
        model.train({"x": torch.ones(4, 1)})
    assert model.compile_error is None


def test_a_non_finite_step_after_the_backward_fallback_keeps_the_running_statistics() -> None:
    """The compiled backward fails, the step is taken again eagerly, and that step's gradient is not finite: the
    step is refused as any non-finite step, with the batch-norm statistics as before it (the eager re-run's
    forward had moved them)."""
    from kizuna.models.model import NonFiniteStep

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net[2].weight.register_hook(lambda g: torch.full_like(g, float("inf")))

    class P(Normal):
        def __init__(self) -> None:
            super().__init__(var=["x"], cond_var=["y"], name="p")
            self.net = net

        def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loc": self.net(y), "scale": torch.ones(y.shape[0], 2)}

    model = Model(-LogProb(P()).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1},
                  compile={"backend": _failing_backward_backend()}, validate=False)
    before = {k: v.clone() for k, v in net[1].state_dict().items()}
    with pytest.raises(NonFiniteStep):
        model.train({"x": torch.randn(8, 2), "y": torch.randn(8, 3)})
    for k, v in net[1].state_dict().items():
        assert torch.equal(v, before[k]), k


@_JIT_DEPRECATION
@pytest.mark.parametrize("inverse_first", [False, True], ids=["TransformedDistribution", "InverseTransformed"])
def test_a_flow_likelihood_with_an_initialised_actnorm_compiles_to_one_graph(inverse_first: bool) -> None:
    """An initialised ActNorm reads no tensor flag in a training-mode pass (a Python mirror of ``initialized``): the
    flag's read was a data-dependent guard, so ``fullgraph=True`` raised for a TransformedDistribution's likelihood
    (this stop's ActNorm fix added the read to the inverse) and for an InverseTransformedDistribution's (before)."""
    from kizuna.distributions import InverseTransformedDistribution, TransformedDistribution
    from kizuna.flows import ActNorm, AffineCoupling, FlowList

    validate_before = torch.distributions.Distribution._validate_args
    try:
        torch._dynamo.reset()
        torch.manual_seed(0)
        prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="pz")
        cls = InverseTransformedDistribution if inverse_first else TransformedDistribution
        flow = cls(prior, FlowList([ActNorm(2), AffineCoupling(2, "checkerboard", hidden_features=8)]), var=["x"])
        x = {"x": torch.randn(64, 2) * 3.0 + 1.0}
        flow.get_log_prob(x)  # eager: initialises ActNorm from the data
        loss = -LogProb(flow).mean()
        with validation(False):
            got = torch.compile(loss.eval, backend="eager", fullgraph=True)(x)  # fullgraph: a break raises
            torch.testing.assert_close(got, loss.eval(x))
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate_before)
        torch._dynamo.reset()
