"""Resources shared across models and threads (stop 47, reviewer RB's findings 3-5).

* ``Model(compile=...)``: each model compiles a function of its own code object, so dynamo's cache (at most
  ``torch._dynamo.config.recompile_limit`` graphs per code object) is the model's: every model of a sweep in one
  process compiles (the shared ``Loss.eval`` ran eagerly from the 5th or 9th model on, silently), its values equal
  eager, and the copy is freed with the model; where dynamo gives up anyway (its limit reached, nothing compiled) a
  warning says so and ``compile_error`` is set.
* ``lru_cache_for_sample_dict``: one cache per method, shared by instances and threads, locked (8 threads raised
  "dictionary changed size during iteration").
* ``module_call_is_forward``'s note per class does not keep the class alive (classes built in a function leaked).
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from kizuna.distributions import Normal
from kizuna.losses import LogProb
from kizuna.models import Model
from kizuna.utils import cache_maxsize, lru_cache_for_sample_dict, set_cache_maxsize


class Dec(Normal):
    def __init__(self) -> None:
        super().__init__(var=["x"], cond_var=["z"], name="p")
        self.net = nn.Linear(2, 3)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.net(z), "scale": 1.0}


@contextlib.contextmanager
def _fresh_dynamo(**config: object) -> Iterator[None]:
    """dynamo's caches emptied before and after, ``torch._dynamo.config`` patched with ``config``, and torch's
    distribution checks as they were (torch.compile's first use turns them off process-wide)."""
    checks = torch.distributions.Distribution._validate_args
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(**config):
            yield
    finally:
        torch._dynamo.reset()
        torch.distributions.Distribution.set_default_validate_args(checks)


def _compiled_function(model: Model) -> object:
    """The function the model compiled for its training loss (``own`` in `_compiled_eval`'s closure; None before
    models compiled their own)."""
    own = getattr(model._compiled[id(model.loss_cls)], "own", None)
    return own.__func__ if own is not None else None


def _train_compiled(n_models: int, test: bool) -> list[weakref.ref]:
    """``n_models`` compiled models (dynamo's counting backend) trained 3 steps (and tested): each captured its own
    graphs, no warning, and the values equal the eager evaluation on the same weights. Returns weak references to
    the functions they compiled (the models dropped)."""
    from torch._dynamo.testing import CompileCounter

    freed, codes, graphs = [], [], []
    batch = {"x": torch.randn(4, 3), "z": torch.randn(4, 2)}
    for _ in range(n_models):
        counter = CompileCounter()
        p = Dec()
        model = Model(-LogProb(p).mean(), distributions=[p], compile={"backend": counter}, validate=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a kizuna warning (compilation gave up) fails the test
            for _ in range(3):
                with torch.no_grad():
                    want = model.loss_cls.eval(batch).item()  # eager, the weights before the step
                assert model.train(batch) == pytest.approx(want, rel=1e-6, abs=1e-6)
            if test:
                with torch.no_grad():
                    want = model.loss_cls.eval(batch).item()
                assert model.test(batch) == pytest.approx(want, rel=1e-6, abs=1e-6)
        graphs.append(counter.frame_count)
        assert model.compile_error is None
        fn = _compiled_function(model)
        if fn is not None:
            # (weak references: a freed model's code object's id can be the next one's, as it was in one slow run)
            assert fn.__code__ is not type(model.loss_cls).eval.__code__
            assert all(ref() is not fn.__code__ for ref in codes)
            codes.append(weakref.ref(fn.__code__))
            freed.append(weakref.ref(fn))
        del model, p, fn, counter
    assert all(graphs), f"graphs captured per model: {graphs} (0: the model ran eagerly)"
    gc.collect()
    return freed


def test_every_compiled_model_of_a_sweep_compiles_its_own_graphs_and_frees_them() -> None:
    """With dynamo's limit at 2 graphs per code object, 3 compiled models built one after another each capture a
    graph (the shared ``Loss.eval`` took the 2nd and 3rd eagerly, with ``compile_error`` None and no warning), equal
    eager values, and a dropped model's compiled function is freed."""
    with _fresh_dynamo(recompile_limit=2):
        freed = _train_compiled(3, test=False)
    assert len(freed) == 3 and [r() is None for r in freed] == [True] * 3


@pytest.mark.slow
def test_twelve_compiled_models_at_the_default_recompile_limit() -> None:
    """12 compiled models (train and test) in one process at torch's own limit (8): each compiles and is freed."""
    with _fresh_dynamo():
        freed = _train_compiled(12, test=True)
    assert len(freed) == 12 and [r() is None for r in freed] == [True] * 12


def test_a_model_whose_graphs_reach_the_recompile_limit_warns_and_says_so() -> None:
    """dynamo's limit at 1 graph: the model's training graph fills it, and its test evaluation (no gradients, a
    second graph) is run eagerly by dynamo: a RuntimeWarning names the limit, ``compile_error`` says so, and the
    value is the eager one (it was silent: ``compile_error`` None)."""
    batch = {"x": torch.randn(4, 3), "z": torch.randn(4, 2)}
    with _fresh_dynamo(recompile_limit=1):
        p = Dec()
        model = Model(-LogProb(p).mean(), distributions=[p], compile={"backend": "eager"}, validate=False)
        model.train(batch)
        assert model.compile_error is None
        with torch.no_grad():
            want = model.loss_cls.eval(batch).item()
        with pytest.warns(RuntimeWarning, match=r"torch.compile gave up: torch._dynamo hit config.recompile_limit"):
            got = model.test(batch)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert model.compile_error.startswith("torch.compile gave up: torch._dynamo hit config.recompile_limit (1)")


def test_a_loss_that_breaks_the_graph_at_its_start_keeps_compiling_without_a_warning() -> None:
    """Diff review 4: a Pixyz-style loss whose ``forward`` starts with ``.item()`` leaves no graph for the loss's own
    frame, though dynamo compiles the frames it calls; the first version took that for "compiled nothing", warned and
    trained the rest eagerly (3 graphs for 4). No warning, ``compile_error`` None, graphs captured, eager's numbers."""
    import sympy
    from torch._dynamo.testing import CompileCounterWithBackend

    from kizuna.formula.expr import Loss

    class ItemLoss(Loss):
        def __init__(self, p):
            super().__init__(input_var=p.var + p.cond_var)
            self.p = p

        @property
        def _symbol(self):
            return sympy.Symbol("L")

        def forward(self, x_dict={}, **kwargs):  # noqa: B006 - Pixyz's signature
            scale = float(x_dict["x"].abs().max().item())
            return -self.p.get_log_prob(x_dict).mean() / scale, {}

    batch = {"x": torch.randn(4, 3), "z": torch.randn(4, 2)}
    with _fresh_dynamo():
        torch.manual_seed(0)
        p = Dec()
        counter = CompileCounterWithBackend("eager")
        model = Model(ItemLoss(p), distributions=[p], compile={"backend": counter}, validate=False)
        torch.manual_seed(0)
        q = Dec()
        eager = Model(ItemLoss(q), distributions=[q], validate=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            got = [model.train(batch) for _ in range(3)]
        want = [eager.train(batch) for _ in range(3)]
    assert model.compile_error is None and counter.frame_count >= 1
    assert [float(v) for v in got] == pytest.approx([float(v) for v in want], rel=1e-6)


class _Tag:
    """A call argument whose hash lets the other threads run (``time.sleep(0)`` releases the GIL), as a slow key's
    would: the window between a thread's lookup and its move of the entry to the end, where another thread's eviction
    took the entry (KeyError), opens on every call."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        time.sleep(0)
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Tag) and other.value == self.value


def test_a_sample_dict_cache_used_from_eight_threads_never_raises() -> None:
    """8 threads, each with its own module, call one cached method (2 results kept, so every thread evicts the
    others' entries; Python switching threads as often as it can): no error (unlocked, the shared dict lost a key
    between a thread's lookup and its ``pop``, a KeyError, or changed size under an eviction's iteration, "dictionary
    changed size during iteration"), and every result is the method's value."""
    before = cache_maxsize()
    set_cache_maxsize(2)
    try:
        class Enc(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lin = nn.Linear(4, 4)

            @lru_cache_for_sample_dict()
            def params(self, x_dict: dict[str, torch.Tensor], tag: _Tag) -> torch.Tensor:
                return self.lin(x_dict["x"])
    finally:
        set_cache_maxsize(before)
    errors: list[BaseException] = []
    wrong = []

    def work() -> None:
        enc, xs = Enc(), [torch.randn(2, 4) for _ in range(2)]
        try:
            for r in range(150):
                got = enc.params({"x": xs[r % 2]}, tag=_Tag(r % 3))
                if not torch.equal(got, enc.lin(xs[r % 2])):
                    wrong.append(r)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, f"{len(errors)} threads raised, first: {errors[0]!r}"
    assert not wrong


def test_a_distribution_class_defined_in_a_function_is_freed() -> None:
    """A distribution class built in a function (wrapping a torch class built there too), trained once, then
    dropped: both classes are collected (``module_call_is_forward``'s and the torch signatures' notes per class kept
    every class alive); the note says the class keeps torch's call, and a class overriding ``_call_impl`` does not;
    the step's loss is the Normal's (closed form)."""
    from kizuna.distributions.torch_dist import module_call_is_forward

    def build() -> type:
        class LocalTorchNormal(torch.distributions.Normal):
            pass

        class Local(Normal):
            torch_class = LocalTorchNormal

            def __init__(self) -> None:
                super().__init__(var=["x"], cond_var=["z"], name="p")
                self.net = nn.Linear(2, 3)

            def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
                return {"loc": self.net(z), "scale": 1.0}
        return Local

    cls = build()
    p = cls()
    model = Model(-LogProb(p).mean(), distributions=[p])
    batch = {"x": torch.randn(4, 3), "z": torch.randn(4, 2)}
    with torch.no_grad():
        loc = p.net(batch["z"])
    want = (0.5 * (batch["x"] - loc) ** 2 + 0.5 * math.log(2 * math.pi)).sum(-1).mean().item()
    assert model.train(batch) == pytest.approx(want, rel=1e-5)
    assert module_call_is_forward(p)

    class Wrapped(cls):
        def _call_impl(self, *args: object, **kwargs: object) -> object:
            return super()._call_impl(*args, **kwargs)

    assert not module_call_is_forward(Wrapped())
    ref, sub, wrapped = weakref.ref(cls), weakref.ref(Wrapped), weakref.ref(cls.torch_class)
    del cls, p, model, Wrapped
    gc.collect()
    assert ref() is None and sub() is None and wrapped() is None


def test_a_compiled_wgan_gp_takes_its_critic_step_eagerly_as_before() -> None:
    """Diff review 4: the critic's loss breaks the graph (the gradient penalty's ``torch.autograd.grad``), and its
    compiled backward fails (aot_autograd has no double backward); the first version of the "gave up" check set
    ``compile_error`` during the forward, so the failed step was raised instead of taken again eagerly."""
    from kizuna.distributions import Deterministic
    from kizuna.losses import AdversarialWassersteinDistance
    from kizuna.models import GAN

    class G(Deterministic):
        def __init__(self):
            super().__init__(var=["x"], cond_var=["z"], name="p")
            self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))

        def forward(self, z):
            return {"x": self.net(z)}

    class C(Deterministic):
        def __init__(self):
            super().__init__(var=["t"], cond_var=["x"], name="d")
            self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))

        def forward(self, x):
            return {"t": self.net(x)}

    def build(compile_):
        torch.manual_seed(0)
        prior = Normal(var=["z"], loc=0.0, scale=1.0, features_shape=[2], name="p_prior")
        return GAN((G() * prior).marginalize_var("z"), C(), adversarial=AdversarialWassersteinDistance,
                   adversarial_params={"gradient_penalty": 10.0}, compile=compile_, validate=False)

    x = torch.randn(8, 2)
    with _fresh_dynamo():
        compiled, eager = build({"backend": "aot_eager"}), build(None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = []
            for i in range(2):
                torch.manual_seed(10 + i)
                got += [float(v) for v in compiled.train({"x": x})]  # (the generator's and the critic's)
        want = []
        for i in range(2):
            torch.manual_seed(10 + i)
            want += [float(v) for v in eager.train({"x": x})]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
