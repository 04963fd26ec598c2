"""``Model(compile=...)`` (stop 46, review R11): a compiled forward that fails after a graph break is taken again
eagerly from the state before it, the fallback's warning names the compiler's error at the caller's line, and
mistakes in ``compile=`` that torch refuses are errors when the model is built.

Reference: the eager ``Model`` from the same weights and seeds, bit for bit (dynamo's eager backend runs torch's own
kernels, and the fallback's eager step draws the eager step's random numbers); torch's own messages."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from kizuna.distributions import Normal
from kizuna.losses import LogProb
from kizuna.models import Model

# torch.compile's first use patches torch.jit, which warns of its deprecation
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("fresh_dynamo")]


class Breaking(Normal):
    """p(x|y) whose network counts the batch in a batch norm and draws noise, then breaks the compiled graph (as a
    print or a numpy call in user code would) and runs ``erf``: the graph after the break is the one the failing
    backend refuses, after the one before it has run."""

    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["y"], name="p")
        self.first = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.last = nn.Linear(4, 2)

    def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.first(y)
        h = h + 0.1 * torch.randn_like(h)
        torch._dynamo.graph_break()
        return {"loc": torch.special.erf(self.last(h)), "scale": torch.ones(y.shape[0], 2)}


def failing_on_erf(gm: torch.fx.GraphModule, example_inputs: object) -> Callable[..., object]:
    """dynamo's eager backend, failing to compile a graph that holds ``erf`` (as an inductor lowering failure would)."""
    if any("erf" in str(node.target) for node in gm.graph.nodes):
        raise RuntimeError("LoweringException: simulated failure on erf")
    return gm.forward


def breaking_model(compile: object, validate: bool | None = None) -> Model:  # noqa: A002 - Model's argument
    torch.manual_seed(0)
    return Model(-LogProb(Breaking()).mean(), optimizer=torch.optim.SGD, optimizer_params={"lr": 0.1},
                 compile=compile, validate=validate)


def batches(n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(8, 2, generator=gen), "y": torch.randn(8, 3, generator=gen)} for _ in range(n)]


def assert_same_state(a: Model, b: Model) -> None:
    for (name, x), (_, y) in zip(a.distributions.state_dict().items(), b.distributions.state_dict().items()):
        assert torch.equal(x, y), name


def test_a_forward_failing_after_a_graph_break_is_taken_again_from_the_state_before_it() -> None:
    """The graph before the break ran (it counted the batch in the batch norm and drew noise) before the next
    one failed to compile; the eager retry started from there: the batch counted twice (num_batches_tracked 3 against
    eager's 2, other running means, every later evaluation-mode loss different). Now the losses, the parameters and
    the batch-norm buffers equal the eager model's bit for bit (the retry draws the eager step's noise), and the reason
    is the compiler's error (it was "ValueError: p(x|y): forward() failed on y of shape (8, 3): backend=... raised:")
    at the caller's line."""
    eager, compiled = breaking_model(False), breaking_model({"backend": failing_on_erf})
    data = batches(3)
    for step, batch in enumerate(data):  # step 0 is the checked, eager one; step 1 compiles and falls back
        torch.manual_seed(step)
        expected = eager.train(batch).item()
        torch.manual_seed(step)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = compiled.train(batch).item()
        assert got == expected, step
        assert_same_state(compiled, eager)
        fallback = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(fallback) == (1 if step == 1 else 0), [str(w.message) for w in fallback]
        if fallback:
            assert "torch.compile is unavailable here (RuntimeError: LoweringException: simulated failure on erf)" \
                in str(fallback[0].message)
            assert fallback[0].filename == __file__
    assert compiled.compile_error == "RuntimeError: LoweringException: simulated failure on erf"
    assert int(compiled.distributions[0].first[1].num_batches_tracked) == 3
    torch.manual_seed(9)
    expected = eager.test(data[0]).item()
    torch.manual_seed(9)
    assert compiled.test(data[0]).item() == expected


@pytest.mark.slow  # (a second trace of the graph break: ~4 s)
def test_a_compiled_test_failing_after_a_graph_break_gives_the_eager_value() -> None:
    """``test`` (``validate=False``: compiled from the first evaluation) falls back the same way: the eager value from
    the same random state, the compiler's error named, the warning at the caller's line; training continues eagerly
    with the eager model's numbers."""
    eager = breaking_model(False, validate=False)
    compiled = breaking_model({"backend": failing_on_erf}, validate=False)
    batch = batches(1)[0]
    torch.manual_seed(3)
    expected = eager.test(batch).item()
    torch.manual_seed(3)
    with pytest.warns(RuntimeWarning, match=r"unavailable here \(RuntimeError: LoweringException: simulated") as rec:
        assert compiled.test(batch).item() == expected
    assert [w.filename for w in rec if issubclass(w.category, RuntimeWarning)] == [__file__]
    assert compiled.compile_error == "RuntimeError: LoweringException: simulated failure on erf"
    torch.manual_seed(4)
    expected = eager.train(batch).item()
    torch.manual_seed(4)
    assert compiled.train(batch).item() == expected
    assert_same_state(compiled, eager)


def test_a_refused_step_leaves_an_actnorm_to_initialise_from_the_next_batch() -> None:
    """A step refused after its forward had initialised an ActNorm put the layer's parameters and flag back, but not
    the layer's Python mirror of the flag: the layer counted as initialised and never initialised from the data
    (bias 0.001 after the next step). Reference: a fresh model's first step on the same batch."""
    from kizuna.distributions import TransformedDistribution
    from kizuna.flows import ActNorm, AffineCoupling, FlowList
    from kizuna.models.model import NonFiniteStep

    def flow_model() -> tuple[Model, TransformedDistribution]:
        torch.manual_seed(0)
        prior = Normal(var=["z"], loc=torch.zeros(2), scale=torch.ones(2), name="pz")
        flow = TransformedDistribution(prior, FlowList([ActNorm(2), AffineCoupling(2, "checkerboard",
                                                                                     hidden_features=8)]), var=["x"])
        return Model(-LogProb(flow).mean(), distributions=[flow], validate=False), flow

    batch = {"x": torch.randn(64, 2, generator=torch.Generator().manual_seed(2)) * 3 + 1}
    model, flow = flow_model()
    hook = next(flow.flow[1].parameters()).register_hook(lambda g: torch.full_like(g, float("inf")))
    with pytest.raises(NonFiniteStep):
        model.train(batch)
    assert not bool(flow.flow[0].initialized)
    hook.remove()
    model.train(batch)
    fresh, _ = flow_model()
    fresh.train(batch)
    assert bool(flow.flow[0].initialized)
    assert_same_state(model, fresh)


def _unavailable_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fn: object, **kwargs: object) -> object:
        def call(*args: object, **kwargs: object) -> None:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken)


@pytest.mark.parametrize("entry", ["train", "step", "fit", "test", "evaluate"])
def test_the_fallback_warning_points_at_the_callers_line(monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    """The warning's stacklevel was fixed (6): it pointed at kizuna/models/model.py, whatever the entry point, so a
    filter by module or line could not target it."""
    _unavailable_compiler(monkeypatch)
    model = Model(-LogProb(Normal(var=["x"], loc=nn.Parameter(torch.zeros(2)), scale=1.0)).mean(),
                  compile=True, validate=False)
    batch = {"x": torch.ones(4, 2)}
    call = {"train": lambda: model.train(batch), "step": lambda: model.step(batch),
            "fit": lambda: model.fit(batch, epochs=1, quiet=True), "test": lambda: model.test(batch),
            "evaluate": lambda: model.evaluate(batch)}[entry]
    with pytest.warns(RuntimeWarning, match="No working C\\+\\+ compiler") as rec:
        call()
    assert [w.filename for w in rec if "torch.compile is unavailable" in str(w.message)] == [__file__]


def test_the_warning_of_a_compiler_unavailable_when_wrapping_points_at_the_callers_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Python 3.99 is not supported by torch.compile")

    monkeypatch.setattr(torch, "compile", unavailable)
    model = Model(-LogProb(Normal(var=["x"], loc=nn.Parameter(torch.zeros(2)), scale=1.0)).mean(),
                  compile=True, validate=False)
    with pytest.warns(RuntimeWarning, match="Python 3.99") as rec:
        model.train({"x": torch.ones(4, 2)})
    assert [w.filename for w in rec if "torch.compile is unavailable" in str(w.message)] == [__file__]


def test_compile_arguments_torch_refuses_are_errors_when_the_model_is_built() -> None:
    """They were accepted, then at the first compiled step reported as "torch.compile is unavailable here" and the
    whole run trained eagerly. The messages are torch's (without its list of every inductor option)."""
    with pytest.raises(ValueError, match=r"^Model: compile=\{'options': \{'max_autotun': True\}\} is refused by "
                                         r"torch.compile \(RuntimeError: Unexpected optimization option max_autotun\): "
                                         r"'max_autotun' is not an inductor option \(torch._inductor.list_options\(\)\)"
                                         r"; did you mean 'max_autotune'"):
        breaking_model({"options": {"max_autotun": True}})
    with pytest.raises(ValueError, match=r"refused by torch.compile \(RuntimeError: Unexpected type of attr "
                                         r"triton.cudagraphs, got str should be bool\)$"):
        breaking_model({"options": {"triton.cudagraphs": "yes"}})
    with pytest.raises(ValueError, match=r"^Model: compile=\{'dynamic': 'yes'\} is refused by torch.compile "
                                         r"\(AssertionError: Expected enable to be a bool"):
        breaking_model({"dynamic": "yes"})
    with pytest.raises(ValueError, match=r"refused by torch.compile \(AttributeError: 'list' object"):
        breaking_model({"options": ["max_autotune"]})
    # what torch takes is taken: "-" for "_" in an option's name, an option torch.compile reads itself
    assert breaking_model({"options": {"max-autotune": False}})._compile_args == {"options": {"max-autotune": False}}


def test_options_torch_takes_still_fall_back_where_the_compiler_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked arguments are not an unavailable compiler: with a valid ``options`` dict the model is built, and a
    compiler missing at the first compiled step (no C++ compiler) still warns and trains eagerly, as an eager model."""
    eager, compiled = breaking_model(False, validate=False), breaking_model({"options": {"max_autotune": False}},
                                                                            validate=False)
    _unavailable_compiler(monkeypatch)
    batch = batches(1)[0]
    torch.manual_seed(1)
    expected = eager.train(batch).item()
    torch.manual_seed(1)
    with pytest.warns(RuntimeWarning, match="unavailable here \\(RuntimeError: InvalidCxxCompiler"):
        assert compiled.train(batch).item() == expected
    assert_same_state(compiled, eager)


def test_the_options_dict_keeps_what_torch_compile_pops_from_it() -> None:
    """torch.compile pops ``guard_filter_fn`` out of the options dict it is given: passed ``compile=``'s own dict, the
    first compiled loss took it and a second one (a test loss's) compiled without it."""
    def keep_all(guards: list) -> list[bool]:
        return [True] * len(guards)

    model = breaking_model({"backend": "eager", "options": {"guard_filter_fn": keep_all}})
    model._evaluator(model.loss_cls, checked=False)  # builds the torch.compile wrapper
    assert model._compile_args["options"] == {"guard_filter_fn": keep_all}
