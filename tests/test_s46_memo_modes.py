"""The per-evaluation parameter memo (`kizuna.formula.memo`) keyed on every submodule's training flag and on autocast.

A term that reads a distribution with only a part of its network in eval mode (``q.net.eval()``: dropout off, batch
norm on its running statistics) or under ``torch.autocast`` inside a training evaluation must not leave those
parameters for the later terms (nor be served theirs). References: the same loss without the read, evaluated on an
independent copy of the modules with the same seed; the closed-form KL to N(0, I) and its gradient.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_s45_memo import READS
from torch import nn

from kizuna.distributions import Normal
from kizuna.formula.expr import Loss
from kizuna.formula.memo import memoized, recall, remember, shared_parameters
from kizuna.losses import KullbackLeibler as KL

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


class Enc(Normal):
    """q(z|x) = N(net(x), 1), net = layer then Linear (the layer: Dropout(0.5), BatchNorm1d or none)."""

    def __init__(self, d: int, layer: str = "none") -> None:
        super().__init__(var=["z"], cond_var=["x"], name="q")
        first = {"dropout": nn.Dropout(0.5), "batchnorm": nn.BatchNorm1d(d), "none": nn.Identity()}[layer]
        self.net = nn.Sequential(first, nn.Linear(d, d))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.net(x), "scale": torch.ones_like(x)}


class ForeignRead(Loss):
    """A custom term that reads q in another mode than the evaluation's: with the submodule ``path`` in eval mode
    (then back in training mode), or under ``torch.autocast`` (bfloat16); with its own random state, so that a read
    that draws leaves the later terms' draws as they are without it. Weight 0: it adds nothing to value or gradient."""

    def __init__(self, q: Enc, read: str, path: str | None = None) -> None:
        super().__init__(q.input_var)
        self.q, self.read, self.path = q, read, path

    def forward(self, x_dict, **kwargs):
        with torch.random.fork_rng():
            if self.path is None:
                with torch.autocast(**BF16):
                    m = READS[self.read](self.q, x_dict)
            else:
                sub = self.q.get_submodule(self.path)
                sub.eval()
                m = READS[self.read](self.q, x_dict)
                sub.train()
        return 0 * m.float().sum(-1), {}


PRIOR = Normal(var=["z"], loc=0.0, scale=1.0, name="prior")


def _value_and_grads(q: Enc, loss: Loss, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    value = loss.eval({"x": x})
    value.backward()
    return value.detach(), {name: p.grad for name, p in q.named_parameters()}


@pytest.mark.parametrize("path, layer", [("net", "dropout"), ("net.0", "batchnorm")])
@pytest.mark.parametrize("read", sorted(READS))
def test_a_read_with_a_submodule_in_eval_mode_leaves_the_train_mode_kl_its_value_and_gradient(
        read: str, path: str, layer: str) -> None:
    """(0 * ForeignRead + KL[q||N(0,1)]).mean() with q.net (or its first layer alone) switched to eval mode for the
    read equals the KL alone on a copy of q, same seed: value, every parameter's gradient, and batch norm's running
    statistics (updated once, by the train-mode KL). The read's dropout-free (or running-statistics) parameters were
    reused by the KL (q's own training flag never changed, only its network's)."""
    torch.manual_seed(0)
    q, x = Enc(20, layer), torch.randn(6, 20)
    reference = copy.deepcopy(q)
    want, want_grads = _value_and_grads(reference, KL(reference, PRIOR).mean(), x)
    got, got_grads = _value_and_grads(q, (0 * ForeignRead(q, read, path) + KL(q, PRIOR)).mean(), x)
    assert q.training and q.net.training and q.net[0].training
    torch.testing.assert_close(got, want)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, msg=name)
    for a, b in zip(q.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("read", sorted(READS))
def test_a_read_under_autocast_leaves_the_full_precision_kl_its_closed_form(read: str) -> None:
    """(0 * ForeignRead + KL).mean() with the read under ``torch.autocast`` (bfloat16 on the CPU): the KL in float32
    is mean_i 0.5 |W x_i + b|^2 with gradient mean_i (W x_i + b) x_i^T, computed in float32 by hand; the read's
    bfloat16 parameters were reused (about 1e-3 off, and the gradient with them)."""
    torch.manual_seed(0)
    q, x = Enc(6), torch.randn(5, 6)
    value, grads = _value_and_grads(q, (0 * ForeignRead(q, read) + KL(q, PRIOR)).mean(), x)
    lin = q.net[1]
    with torch.no_grad():
        loc = lin(x)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, (0.5 * loc.pow(2).sum(-1)).mean())
    torch.testing.assert_close(grads["net.1.weight"], loc.T @ x / len(x))
    torch.testing.assert_close(grads["net.1.bias"], loc.mean(0))


class Probe(Loss):
    """A term that reads q's location under ``torch.autocast`` (bfloat16) and keeps it."""

    def __init__(self, q: Enc, seen: list[torch.Tensor]) -> None:
        super().__init__(q.input_var)
        self.q, self.seen = q, seen

    def forward(self, x_dict, **kwargs):
        with torch.autocast(**BF16):
            self.seen.append(self.q.get_params(x_dict)["loc"])
        return 0 * self.seen[-1].float().sum(-1), {}


def test_a_term_under_autocast_after_the_full_precision_kl_gets_its_own_low_precision_parameters() -> None:
    """KL + Probe: the probe's read under autocast (after the KL computed q's parameters in float32) gets what the
    same read gets alone under autocast, computed by hand: bfloat16, equal values; it was served the KL's float32
    parameters."""
    torch.manual_seed(0)
    q, x, seen = Enc(6), torch.randn(5, 6), []
    (KL(q, PRIOR) + 0 * Probe(q, seen)).mean().eval({"x": x})
    with torch.no_grad(), torch.autocast(**BF16):
        by_hand = q.net(x)
    assert len(seen) == 1 and by_hand.dtype == torch.bfloat16
    torch.testing.assert_close(seen[0].detach(), by_hand)


def test_the_memo_serves_an_entry_only_with_every_submodule_flag_and_the_autocast_state_it_was_computed_in() -> None:
    """At the memo: a dropout under the owner switched to eval mode (alone, or with the network above it) is another
    mode; the network in eval mode is the same mode as its dropout alone in eval mode (its container and linear
    layer compute alike in both modes), and back in training mode the first entry is found again; a linear layer
    with a forward hook (which may read its flag) switched alone is another mode; autocast on (per dtype) is another
    mode, and so is autocast off after it; autocast switched off by ``enabled=False`` inside it is the plain mode; a
    `remember` record made under autocast is still found by `recall` outside it (a value, not a computation)."""
    owner, a, calls = nn.Module(), torch.zeros(1), []
    owner.net = nn.Sequential(nn.Linear(1, 1), nn.Dropout())
    owner.hooked = nn.Linear(1, 1)
    owner.hooked.register_forward_pre_hook(lambda module, args: None)

    def compute(v: int) -> int:
        calls.append(v)
        return v

    with shared_parameters():
        assert memoized(owner, "t", [a], compute, 1) == 1
        assert memoized(owner, "t", [a], compute, 2) == 1
        owner.net[1].eval()
        assert memoized(owner, "t", [a], compute, 3) == 3  # the dropout in eval mode
        owner.net[1].train()
        assert memoized(owner, "t", [a], compute, 4) == 1
        owner.net.eval()
        assert memoized(owner, "t", [a], compute, 5) == 3  # the network in eval mode: its dropout's mode counts
        owner.net.train()
        owner.hooked.eval()
        assert memoized(owner, "t", [a], compute, 6) == 6  # the hooked linear layer in eval mode
        owner.hooked.train()
        with torch.autocast(**BF16):
            assert memoized(owner, "t", [a], compute, 7) == 7  # under autocast
            assert memoized(owner, "t", [a], compute, 8) == 7
            with torch.autocast("cpu", enabled=False):
                assert memoized(owner, "t", [a], compute, 9) == 1  # autocast off again
            remember(owner, "r", [a], "hidden")
        with torch.autocast("cpu", dtype=torch.float16):
            assert memoized(owner, "t", [a], compute, 10) == 10  # another autocast dtype
        assert memoized(owner, "t", [a], compute, 11) == 1
        assert recall(owner, "r", [a]) == "hidden"
    assert calls == [1, 3, 6, 7, 10]


class NoisyLinear(nn.Linear):
    """A linear layer that adds noise in training mode: a subclass whose own forward reads the flag."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + torch.randn_like(x) if self.training else x)


def test_an_owner_of_linear_layers_alone_is_keyed_on_its_own_flag_and_autocast() -> None:
    """An MLP owner (kizuna's `MLP`, a Sequential subclass that keeps Sequential's forward, of linear layers and
    activations: none reads a training flag) records the plain mode: switching its network changes nothing it computes
    and is served the entry; its own flag and autocast are still compared. A linear subclass with a forward of its own
    (`NoisyLinear`) is another mode in eval mode."""
    from kizuna.nets import MLP

    owner, a, calls = nn.Module(), torch.zeros(1), []
    owner.net = MLP(1, 3, 1)

    def compute(v: int) -> int:
        calls.append(v)
        return v

    with shared_parameters():
        assert memoized(owner, "t", [a], compute, 1) == 1
        owner.net.eval()
        assert memoized(owner, "t", [a], compute, 2) == 1
        owner.eval()
        assert memoized(owner, "t", [a], compute, 3) == 3
        owner.train()
        with torch.autocast(**BF16):
            assert memoized(owner, "t", [a], compute, 4) == 4
    owner.net.append(NoisyLinear(1, 1))  # (walked again in the next evaluation: a module was registered)
    with shared_parameters():
        assert memoized(owner, "t", [a], compute, 5) == 5
        owner.net[-1].eval()
        assert memoized(owner, "t", [a], compute, 6) == 6
        owner.net[-1].train()
        assert memoized(owner, "t", [a], compute, 7) == 5
    assert calls == [1, 3, 4, 5, 6]


def test_a_network_given_dropout_after_the_first_evaluation_is_watched_from_then_on() -> None:
    """The modules to watch are kept across evaluations until a module is registered: an MLP encoder (nothing to
    watch) evaluated once, then given a dropout (``q.net = ...``, and ``Sequential.append``): the next evaluation's
    read with the dropout in eval mode leaves the KL its train-mode value and gradient (against a copy, same seed)."""
    torch.manual_seed(0)
    q, x = Enc(20), torch.randn(6, 20)
    KL(q, PRIOR).mean().eval({"x": x})  # walked: nothing watched
    for change in ("assign", "append"):
        if change == "assign":
            q.net = nn.Sequential(nn.Dropout(0.5), nn.Linear(20, 20))
        else:
            q.net = nn.Sequential(nn.Linear(20, 20))
            KL(q, PRIOR).mean().eval({"x": x})
            q.net.append(nn.Dropout(0.5))
        path = "net.0" if change == "assign" else "net.1"
        reference = copy.deepcopy(q)
        want, want_grads = _value_and_grads(reference, KL(reference, PRIOR).mean(), x)
        q.zero_grad()
        got, got_grads = _value_and_grads(q, (0 * ForeignRead(q, "sample_mean", path) + KL(q, PRIOR)).mean(), x)
        torch.testing.assert_close(got, want, msg=change)
        for name, grad in want_grads.items():
            torch.testing.assert_close(got_grads[name], grad, msg=f"{change}: {name}")


def test_the_kept_lists_hold_no_module_alive_and_follow_a_deleted_one() -> None:
    """A watched dropout deleted from the network (no registration) and freed: the next evaluation walks again (no
    error, the same value as a fresh copy); an owner freed after its evaluations leaves neither itself nor its modules
    alive (weak references only)."""
    import gc
    import weakref

    torch.manual_seed(0)
    q, x = Enc(4), torch.randn(3, 4)
    q.net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Dropout(0.5))
    KL(q, PRIOR).mean().eval({"x": x})
    dropout = weakref.ref(q.net[2])
    del q.net[2]
    gc.collect()
    assert dropout() is None
    q.eval()
    fresh = copy.deepcopy(q)
    torch.testing.assert_close(KL(q, PRIOR).mean().eval({"x": x}), KL(fresh, PRIOR).mean().eval({"x": x}))
    owner, kept = weakref.ref(q), weakref.ref(q.net[1])
    del q, fresh
    gc.collect()
    assert owner() is None and kept() is None


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_compiled_evaluation_keeps_one_graph_when_a_module_is_built_elsewhere() -> None:
    """``torch.compile`` (fullgraph, dynamo's eager backend) of a KL whose encoder has dropout: one frame for fresh
    batches, and still one after a module was built elsewhere (the kept lists are not read while tracing, so no guard
    on the registration count); the compiled value equals the eager one, same seed."""
    from torch._dynamo.testing import CompileCounter

    from kizuna.distributions import validation

    validate_before = torch.distributions.Distribution._validate_args
    try:
        torch._dynamo.reset()
        torch.manual_seed(0)
        q = Enc(4, "dropout")
        loss = KL(q, PRIOR).mean()
        counter = CompileCounter()
        compiled = torch.compile(loss.eval, backend=counter, fullgraph=True)
        with validation(False):
            for i in range(3):
                if i == 2:
                    nn.Sequential(nn.Linear(2, 2))
                x = {"x": torch.randn(5, 4)}
                torch.manual_seed(i)
                got = compiled(x)
                torch.manual_seed(i)
                torch.testing.assert_close(got, loss.eval(x))
        assert counter.frame_count == 1
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate_before)
        torch._dynamo.reset()
