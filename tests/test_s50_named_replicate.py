"""Stop 50: a loss held both bare and named, or under two names, in one tree. Until now a `Named` node whose loss was
met before under another node was left out of ``modules()`` (so that the loss was listed once, as ``kl + kl`` lists
``kl`` once), but torch's ``replicate`` (``nn.DataParallel``) looks every child of a listed module up among
``modules()`` and raised ``KeyError`` for it. ``modules()`` now lists each distinct node once, as torch does for any
module; the replicas evaluate as the unnamed loss's replicas, bit for bit. And the sample-dict cache's key
(`kizuna.utils._module_state`) reads the forward hooks of the loss inside a named node (it read the node's only)."""

import copy
import importlib
import io
import pickle

import pytest
import torch
from test_s49_named_paths import PAIRS, _pairs, _parts

from kizuna.formula.expr import Loss, Parameter, _bare
from kizuna.losses import Expectation, ValueLoss
from kizuna.utils import lru_cache_for_sample_dict


@pytest.fixture
def cpu_replicate(monkeypatch: pytest.MonkeyPatch):
    """torch's ``replicate`` on CPU, its broadcast replaced by copies (replica j's tensors are the original's + j)."""
    rep = importlib.import_module("torch.nn.parallel.replicate")
    monkeypatch.setattr(rep, "_broadcast_coalesced_reshape", lambda tensors, devices, detach=False: [
        [(t.detach() if detach else t) + j for t in tensors] for j in range(len(devices))])
    monkeypatch.setattr(rep, "_get_device_index", lambda d, optional=False: 0)
    return rep.replicate


@pytest.mark.parametrize("i", PAIRS)
def test_replicas_of_a_named_loss_evaluate_as_the_unnamed_loss_s(i, cpu_replicate):
    """Every pair of tests/test_s49_named_paths.py (pairs 4-6 hold one KL twice: bare and named, or under two
    names; they raised KeyError), each value drawn under the same seed: the named loss's replicas give the unnamed
    loss's replicas' values bit for bit, replica 1 differs from replica 0 (its tensors are shifted), and replicating
    leaves the original's value as it was."""
    x = {"x": torch.randn(4, 2, generator=torch.Generator().manual_seed(2))}
    values = []
    for loss in _pairs()[i]:
        torch.manual_seed(5)
        before = loss.eval(x).detach()
        replicas = cpu_replicate(loss, devices=["cpu", "cpu"], detach=True)
        got = []
        for r in [loss, *replicas]:
            torch.manual_seed(5)
            got.append(r.eval(x).detach())
        torch.testing.assert_close(got[0], before, rtol=0, atol=0)
        values.append(got)
    for ours, reference in zip(*values):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert not torch.equal(values[1][1], values[1][2])


SAMPLED = [  # (unnamed, named) over one reconstruction term drawn by sampling
    (lambda r: r + r, lambda r: r.named("a") + r.named("b")),
    (lambda r: r + r, lambda r: r.named("a") + r),
    (lambda r: r + r, lambda r: r + r.named("b")),
    (lambda r: (r - r + r).mean(), lambda r: (r.named("a") - r.named("b") + r).mean()),
]


@pytest.mark.parametrize("k", range(len(SAMPLED)))
def test_a_sampled_term_under_several_nodes_is_drawn_once_in_a_replica(k, cpu_replicate):
    """A Monte-Carlo reconstruction term held under two or three nodes: the original draws it once per evaluation,
    and so must each replica, which holds one replica of the loss (torch's ``replicate`` made one per node, each
    drawing its own sample: a replica of ``rec.named("a") + rec.named("b")`` differed from the replica of
    ``rec + rec``). Compared bit for bit with the unnamed tree's replicas under the same seed."""
    x = {"x": torch.randn(4, 2, generator=torch.Generator().manual_seed(2))}
    values = []
    for build in SAMPLED[k]:
        rec = _parts()[3]
        loss = build(rec)
        replicas = cpu_replicate(loss, devices=["cpu", "cpu"], detach=True)
        got = []
        for r in [loss, *replicas]:
            torch.manual_seed(5)
            got.append(r.eval(x).detach())
        values.append(got)
        for r in replicas:  # one replica of the loss under every node of the replica, not the original
            held = {id(_bare(m)) for m in r.modules() if isinstance(_bare(m), Expectation)}
            assert len(held) == 1 and id(rec) not in held
    for ours, reference in zip(values[1], values[0]):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert not torch.equal(values[1][1], values[1][2])


def test_the_named_and_unnamed_replica_evaluations_agree_with_a_hand_sum(cpu_replicate):
    """``kl.named("A") + kl.named("B")`` replicated: each replica's value is twice the KL replica's own value (the
    analytic KL of the replica's shifted encoder), not the original's."""
    bare, named = _pairs()[6]
    x = {"x": torch.randn(4, 2, generator=torch.Generator().manual_seed(3))}
    replicas = cpu_replicate(named, devices=["cpu", "cpu"], detach=True)
    for r in replicas:
        kl = _bare(r.loss1)
        assert kl is not _bare(bare.loss1)
        torch.testing.assert_close(r.eval(x), 2 * kl.eval(x), rtol=0, atol=0)
    assert not torch.equal(replicas[0].eval(x), replicas[1].eval(x))


def test_modules_lists_every_child_of_a_listed_module():
    """torch's ``replicate`` invariant: each child in a listed module's ``_modules`` is itself listed, and no module
    is listed twice."""
    for i in PAIRS:
        _, named = _pairs()[i]
        listed = list(named.modules())
        assert len(set(map(id, listed))) == len(listed), i
        ids = set(map(id, listed))
        for m in listed:
            assert all(id(c) in ids for c in m._modules.values() if c is not None), i


def test_the_sample_dict_cache_sees_a_hook_on_the_loss_inside_a_name():
    """A module holding a named loss, whose cached method evaluates the loss inside: a forward hook added to that
    loss changes what the method returns, so the cache must not give the result stored before (it read the node's
    hooks only: the loss itself is not among ``modules()`` when it is held only under a name)."""
    _, named = _pairs()[0]

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.term = named

        @lru_cache_for_sample_dict()
        def value(self, x):
            return _bare(self.term)(x)

    h, x = Holder(), {"x": torch.ones(3, 2)}
    first = h.value(x)
    handle = _bare(named).register_forward_hook(lambda module, args, out: out * 0 + 7.0)
    try:
        second = h.value(x)
    finally:
        handle.remove()
    assert not torch.equal(first, second)
    torch.testing.assert_close(second, torch.full_like(second, 7.0))


# ------------------------------------------------------------------ diff review R_NAMED of e0ff8b6
class _Noise(Loss):
    """A sampled term: a standard normal draw times its buffer ``scale`` (``stateless``: no buffer at all)."""

    def __init__(self, stateless: bool = False):
        super().__init__()
        if not stateless:
            self.register_buffer("scale", torch.tensor(1.0))

    def _value(self, ctx):
        return getattr(self, "scale", 1.0) * torch.randn(())

    def _render(self, fmt):
        return "noise"


@pytest.fixture
def cuda_like_replicate(monkeypatch: pytest.MonkeyPatch):
    """As `cpu_replicate`, but replica 0 gets the original tensors where they are not detached copies' parents (as
    torch's CUDA broadcast gives device 0 the inputs as they are)."""
    rep = importlib.import_module("torch.nn.parallel.replicate")

    def broadcast(tensors, devices, detach=False):
        return [list(tensors) if j == 0 and detach else [(t.detach() if detach else t) + j for t in tensors]
                for j in range(len(devices))] if tensors else []

    monkeypatch.setattr(rep, "_broadcast_coalesced_reshape", broadcast)
    monkeypatch.setattr(rep, "_get_device_index", lambda d, optional=False: 0)
    return rep.replicate


@pytest.mark.parametrize("stateless", [False, True])
def test_a_second_replication_while_the_first_replicas_live_is_its_own(stateless, cuda_like_replicate):
    """Two ``replicate`` calls, the first's replicas kept alive, replica 0 given the original buffer both times: the
    second call's replica 0 held the first call's loss replica (its notes were still there) and drew the bare and
    the named term separately (-1.0906 for -0.9736). Each replica holds one loss for both nodes, of its own call
    (a loss with no tensors at all is its own replica: there is nothing to copy), and draws as the original."""
    values = {}
    for named in (False, True):
        n = _Noise(stateless)
        loss = n + n.named("a") if named else n + n
        r1 = cuda_like_replicate(loss, ["cpu", "cpu"], detach=True)
        r2 = cuda_like_replicate(loss, ["cpu", "cpu"], detach=True)
        got = []
        for r in (loss, *r1, *r2):
            torch.manual_seed(5)
            got.append(r.eval({}).detach())
        values[named] = got
        for first, second in zip(r1, r2):
            one, other = _bare(second.loss1), _bare(second.loss2)
            assert one is other
            assert (one is n) if stateless else (one is not _bare(first.loss1) and one is not n)
    for ours, reference in zip(values[True], values[False]):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_writes_after_replicate_returned_do_not_join_replicas(cpu_replicate):
    """The same tensor written afterwards as an attribute of each replica's loss (user code, under a name the loss
    has no part under) does not make replica 1's names hold replica 0's loss (its value went from 6.87 to 2.13)."""
    bare, named = _pairs()[6]
    x = {"x": torch.randn(4, 2, generator=torch.Generator().manual_seed(2))}
    replicas = cpu_replicate(named, devices=["cpu", "cpu"], detach=True)
    before = [r.eval(x).detach() for r in replicas]
    shared = torch.zeros(1)
    for r in replicas:
        _bare(r.loss1).extra = shared
    assert _bare(replicas[1].loss1) is not _bare(replicas[0].loss1)
    assert _bare(replicas[1].loss1) is _bare(replicas[1].loss2)
    for r, b in zip(replicas, before):
        torch.testing.assert_close(r.eval(x), b, rtol=0, atol=0)


def test_a_copy_of_a_replica_is_a_loss_of_its_own(cpu_replicate):
    """deepcopy and pickle of a replica drop its replication marks (a copy dragged a copy of the original loss along
    and kept noting writes); the copy still evaluates as the replica, its two nodes over one loss."""
    _, named = _pairs()[6]
    x = {"x": torch.randn(4, 2, generator=torch.Generator().manual_seed(2))}
    replica = cpu_replicate(named, devices=["cpu", "cpu"], detach=True)[1]
    for copied in (copy.deepcopy(replica), pickle.loads(pickle.dumps(replica))):
        assert not any(k in m.__dict__ for m in copied.modules() for k in ("_dp_of", "_dp_call", "_dp_group"))
        assert _bare(copied.loss1) is _bare(copied.loss2)
        torch.testing.assert_close(copied.eval(x), replica.eval(x), rtol=0, atol=0)


def test_a_per_module_walk_sees_a_named_loss_s_parameters_under_each_node():
    """As with tied weights in torch (two modules holding one parameter), a walk over each module's own parameters
    (``named_parameters(recurse=False)`` per module, minGPT's weight-decay idiom) meets a learned coefficient once per
    node that holds it (documented in docs/training.md); ``parameters()`` lists it once."""
    w = _parts()[4]
    kl = _parts()[2]
    loss = w.named("a") * kl + w.named("b") * kl
    own = [id(p) for m in loss.modules() for _, p in m.named_parameters(recurse=False)]
    assert own.count(id(w.value)) == 2
    assert [id(p) for p in loss.parameters()].count(id(w.value)) == 1


# ------------------------------------------------------------------ diff review R2 of 255fc2f
@pytest.mark.parametrize("k", range(3))
def test_a_named_operator_with_a_stateless_operand_keeps_each_device_s_replica(k, cpu_replicate):
    """``(kl + 1.0).named("t")``: the number constant has no state and is its own replica on every device, so a note
    keyed on it made replica 1's name hold replica 0's loss (replica 1 gave 5.06609 where the unnamed tree's replica
    1 gives 7.43536). Values equal the unnamed tree's replicas, bit for bit, and each replica holds its own loss."""
    builds = [lambda kl: kl + 1.0, lambda kl: 2.0 * kl, lambda kl: (kl * 0.5).mean()]
    x = {"x": torch.randn(4, 2, generator=torch.Generator().manual_seed(2))}
    values = []
    for named in (False, True):
        kl = _parts()[2]
        loss = builds[k](kl).named("t") if named else builds[k](kl)
        replicas = cpu_replicate(loss, devices=["cpu", "cpu"], detach=True)
        values.append([r.eval(x).detach() for r in (loss, *replicas)])
        if named:
            assert _bare(replicas[0]) is not _bare(replicas[1])
    for ours, reference in zip(values[1], values[0]):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert not torch.equal(values[1][1], values[1][2])


def test_a_compiled_loss_pickles_and_copies_as_torch_s_modules_do():
    """``Loss.__getstate__`` (it drops a replica's marks) kept ``_compiled_call_impl``, which nn.Module's drops: after
    ``loss.compile()`` pickle and ``torch.save`` raised, and a deepcopy called the original's compiled forward (the
    copy with coefficient 10 returned the original's 2.0)."""
    loss = Parameter("x") * ValueLoss(torch.nn.Parameter(torch.tensor(2.0)))
    loss.compile(backend="eager")
    assert "_compiled_call_impl" not in loss.__getstate__()
    pickle.loads(pickle.dumps(loss))
    torch.save(loss, io.BytesIO())
    c = copy.deepcopy(loss)
    with torch.no_grad():
        c.loss2.value.fill_(10.0)
    x = {"x": torch.tensor(1.0)}
    assert c(x).item() == 10.0 and loss(x).item() == 2.0


def test_a_part_written_again_after_replicate_does_not_join_replicas(cpu_replicate):
    """One tensor written under a name the loss has a part under (``value``) into each replica, after ``replicate``
    returned: replica 1's names kept their own loss (a second write of a name into one replica is not ``replicate``'s
    own)."""
    c = ValueLoss(torch.tensor(2.0))
    loss = c.named("a") + c.named("b")
    replicas = cpu_replicate(loss, devices=["cpu", "cpu"], detach=True)
    shared = torch.tensor(5.0)
    for r in replicas:
        _bare(r.loss1).value = shared
    assert _bare(replicas[1].loss1) is _bare(replicas[1].loss2)
    assert _bare(replicas[1].loss1) is not _bare(replicas[0].loss1)


# ------------------------------------------------------------------ diff review R4 of b0d7ff8
class _Jitter(Loss):
    """A loss that holds only a stateless loss and draws: its value plus a standard normal draw."""

    def __init__(self, inner):
        super().__init__(inner.input_var)
        self.inner = inner

    def subterms(self):
        return [self.inner]

    def _value(self, ctx):
        return ctx.value(self.inner) + torch.randn(())

    def _render(self, fmt):
        return "jitter"


@pytest.mark.parametrize("bare", [False, True])
def test_a_loss_over_stateless_losses_only_is_one_loss_in_each_replica(bare, cpu_replicate):
    """``_Jitter(ValueLoss(2.0))`` named twice (and held bare): its only part is a stateless loss, its own replica on
    every device and so never noted, and each name held a replica of its own, drawing twice (2.9094 where the
    unnamed tree gives 3.02644). A loss with no parameter or buffer anywhere in it is its own replica: one loss,
    one draw, the unnamed tree's values bit for bit."""
    values = []
    for named in (False, True):
        j = _Jitter(ValueLoss(2.0))
        loss = (j.named("a") + j.named("b") + (j if bare else 0.0)) if named else (j + j + (j if bare else 0.0))
        replicas = cpu_replicate(loss, devices=["cpu", "cpu"], detach=True)
        got = []
        for r in (loss, *replicas):
            torch.manual_seed(5)
            got.append(r.eval({}).detach())
        values.append(got)
        for r in replicas:
            assert len({id(_bare(m)) for m in r.modules() if isinstance(_bare(m), _Jitter)}) == 1
    for ours, reference in zip(values[1], values[0]):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
