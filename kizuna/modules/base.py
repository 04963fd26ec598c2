r"""The module protocol: typed messages between modules, and the `Module` / `Observation` bases.

A module (SERKET, Nakamura et al. 2018, arXiv:1712.00929; Neuro-SERKET, Taniguchi et al.
2020, arXiv:1910.08918) is a small generative model whose observations are the *forward
messages* of its children and whose latent variable is shared with its parent through a
*backward message*. One mutual-inference step, :meth:`Module.update`:

1. read ``child.message_to(self)`` for every child (its ``forward_message``; a class module with
   several parents sends each the others' class priors multiplied in) and ``self.backward_in`` (what the
   parent(s) sent down, or ``None`` before the first top-down pass);
2. learn (``_update``, implemented by each module);
3. set ``self.forward_message`` (up) and deliver backward messages to the children that
   receive them (down).

Message kinds (``value`` is always a 2-D tensor with one row per sample, ``N`` rows):

=============== ===== ======================================== =========================
kind            shape meaning                                  e.g. sent by
=============== ===== ======================================== =========================
``data``        N×D   observations                             `Observation`
``latent``      N×D   a continuous latent (posterior means)    VAE, NN (up)
``posterior``   N×K   class probabilities, rows sum to 1       GMM, LDA, MLDA (up)
``prior``       N×K   class prior, rows sum to 1               MLDA, MM, NN (down)
``prior_mean``  N×D   per-sample prior mean of a latent        GMM (down, to a VAE)
=============== ===== ======================================== =========================

Class-level declarations make wiring checkable at :meth:`Module.connect`: ``accepts`` (the
forward kinds a module takes from children), ``sends`` (its forward kind) and ``receives``
(the backward kinds it takes from a parent). Messages are detached: gradients never cross
module boundaries (modules learn from each other's *messages*, as in SERKET).

Subclasses implement one method::

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        ...  # learn; return (forward message, {child: backward message})

and build messages with :meth:`Module.message`. ``ctx`` (`kizuna.modules.context.UpdateContext`) is
what the graph passes to every module for one sweep: the combination strategy (``ctx.combine``: `MP`
or `SIR`, how a class prior is joined with the module's own likelihood), the generator every draw
comes from (``ctx.generator``; see `kizuna.modules.rng` for the one RNG policy), the iteration and
the schedule of per-iteration settings. ``update()`` called without a context (SERKET's own loop)
uses message passing and the module's own stream, started from its ``random_state`` and saved with its
state (``stream_state``), so that the loop continues bitwise after a save and load.

What a module learns is listed in its ``State`` dataclass and saved by the one mechanism of
`kizuna.modules.state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from kizuna.modules.context import UpdateContext
from kizuna.modules.estimator import changed_params
from kizuna.modules.messages import (
    DEFAULT_VARIABLE,
    KINDS,
    GraphError,
    Message,
    MessageKindError,
    MessageShapeError,
    check_same_shape,
    check_width,
)
from kizuna.modules.results import ClassResults, as_labels, checked_n_classes
from kizuna.modules.rng import generator_for
from kizuna.modules.state import Stateful
from kizuna.modules.symbols import encode_strings, is_strings
from kizuna.modules.validation import as_matrix, as_tensor

__all__ = [
    "KINDS", "ClassModule", "GraphError", "Message", "MessageKindError", "MessageShapeError", "Module", "Observation",
    "check_same_shape", "check_width",
]


class Module(Stateful):
    """A node of an integrated model (see the module docstring for the protocol).

    Args:
        name: a unique name in its graph (default: the lower-cased class name; `Graph`
            numbers unnamed duplicates, and ``get_params()`` still gives ``None`` for them).
        learnable: when ``False`` the module keeps its parameters fixed in ``update`` and
            only passes messages.
        random_state: seeds the module's own stream, used by ``update()`` without a context
            (see `kizuna.modules.rng`); a new one, set by ``set_params`` or assigned, restarts the stream at the
            next such update.
    """

    accepts: ClassVar[tuple[str, ...]] = ()
    sends: ClassVar[str] = "latent"
    receives: ClassVar[tuple[str, ...]] = ()
    scheduled: ClassVar[tuple[str, ...]] = ()  # settings a graph's schedule may set per iteration
    # whether the module answers the class posteriors of its children with class priors (MM, LDA, MLDA, TailToTail,
    # SpatialConcept set it; a user's module that only reads posteriors does not); an NN sends one to its source only
    # where that takes one (see `sends_prior_to`)
    sends_priors_down: ClassVar[bool] = False
    # why a module that sends class posteriors up cannot take a parent's class prior ("": it can, or sends none); a
    # parent that would send it one is refused at `connect`, since the prior would be dropped without a word
    takes_no_prior: ClassVar[str] = ""
    # whether the forward message leaves out the parents' class priors (the protocol's convention for class posteriors:
    # GMM, HMM, MM, TailToTail), so that with several parents each is sent the others' priors (`message_to`); an
    # MLDA's topic proportions were sampled under all its parents' priors and carry them already
    up_excludes_priors: ClassVar[bool] = False

    @dataclass
    class State(Stateful.State):
        """Updates done and the last messages sent up and received."""

        n_updates: int = 0
        forward_message: Message | None = None
        backward_messages: dict[str, Message] = field(default_factory=dict)
        stream_state: dict[str, Any] | None = None

    def __init__(self, name: str | None = None, learnable: bool = True,
                 random_state: int | torch.Generator | None = None) -> None:
        self._set_param("name", name)
        self.learnable = bool(learnable)
        self.random_state = random_state
        self.children: list[Module] = []
        self.parents: list[Module] = []
        self.forward_message: Message | None = None
        self.backward_messages: dict[str, Message] = {}
        self._backward_senders: dict[str, int] = {}  # the sending module (its id) of each stored backward message
        self.n_updates = 0
        self._stream: torch.Generator | None = None
        self._saved_stream: dict[str, Any] | None = None

    def _param(self, name: str) -> Any:
        """A constructor parameter as the user gave it: ``name`` is ``None`` unless they named the module, even
        after `Graph` numbered it (``gmm0``), so that scikit-learn's ``clone`` gives an unnamed module that a
        graph numbers again rather than two modules explicitly named alike."""
        if name == "name":
            return self.name if self.named else None
        return getattr(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "random_state" and "_stream" in self.__dict__:
            # a new seed (set_params, or assigned) restarts the module's own stream at the next update() without a
            # context (the stream already started, or restored from a save, went on and the new seed had no effect)
            self.__dict__["_stream"] = self.__dict__["_saved_stream"] = None
        super().__setattr__(name, value)

    def _set_param(self, name: str, value: Any) -> None:
        if name != "name":
            setattr(self, name, value)
            return
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{type(self).__name__}: name must be a non-empty string, got {value!r}")
        self.name: str = value if value is not None else type(self).__name__.lower()
        self.named = value is not None

    def _hidden_params(self) -> tuple[str, ...]:
        """Constructor parameters `repr` leaves out (the name is shown first; labels are data)."""
        return ("name", "category")

    def __repr__(self) -> str:
        params = changed_params(self, skip=self._hidden_params())
        kids = f" <- {', '.join(c.name for c in self.children)}" if self.children else ""
        return f"{type(self).__name__}({', '.join([f'name={self.name!r}', *params])}){kids}"

    # ------------------------------------------------------------------ wiring
    def connect(self, *children: Module) -> Module:
        """Make ``children`` the observations of this module; returns ``self``.

        Raises:
            MessageKindError: a child sends a kind this module does not accept.
            GraphError: a child that is this module or above it (a cycle, named), a child given twice, or a child
                that cannot take the class prior this module would send it (a `SpatialConcept` under an `MM`).
        """
        if not children:
            raise ValueError(f"{self.name}.connect() needs at least one child module")
        for child in children:
            if not isinstance(child, Module):
                raise TypeError(f"{self.name}.connect: expected a Module, got {type(child).__name__}; "
                                "wrap arrays in kizuna.modules.Observation(data)")
            if child is self:
                raise GraphError(f"{self.name} cannot be connected to itself")
            if child in self.children or sum(c is child for c in children) > 1:  # (connect(o, o) counted o twice)
                raise GraphError(f"{child.name} is already a child of {self.name}")
            if child.sends not in self.accepts:
                raise MessageKindError(
                    f"{self.name} ({type(self).__name__}) accepts forward messages of kind {self.accepts}, "
                    f"but {child.name} ({type(child).__name__}) sends {child.sends!r}")
            if child.takes_no_prior and child.sends == "posterior" and self.sends_priors_down:
                raise GraphError(
                    f"{self.name} ({type(self).__name__}) sends a class prior down to each module whose class "
                    f"posteriors it takes, but {child.name} ({type(child).__name__}) cannot take one "
                    f"({child.takes_no_prior}): {self.name}'s prior would be dropped and have no effect below it")
            cycle = self._path_to(child)
            if cycle:  # (each of SERKET's updates then said to update the other first)
                raise GraphError(f"{self.name}.connect({child.name}) would make a cycle in the module graph: "
                                 + " -> ".join(m.name for m in [self, *cycle]))
        for child in children:
            self.children.append(child)
            child.parents.append(self)
        return self

    def _path_to(self, start: Module) -> list[Module]:
        """A path ``start -> ... -> self`` through ``children`` (empty if ``self`` is not below ``start``)."""
        seen: set[int] = set()
        stack: list[tuple[Module, list[Module]]] = [(start, [start])]
        while stack:
            module, path = stack.pop()
            if module is self:
                return path
            if id(module) not in seen:
                seen.add(id(module))
                stack.extend((c, [*path, c]) for c in module.children)
        return []

    @property
    def parent(self) -> Module | None:
        """The parent module (``None`` at the top); see ``parents`` when there are several."""
        if len(self.parents) > 1:
            raise GraphError(f"{self.name} has {len(self.parents)} parents; use .parents")
        return self.parents[0] if self.parents else None

    # ---------------------------------------------------------------- messages
    def message(self, kind: str, value: torch.Tensor, receiver: Module | None = None,
                variable: str | None = None) -> Message:
        """A message from this module (``variable`` defaults by kind, e.g. ``"c"`` for classes)."""
        return Message(self.name, None if receiver is None else receiver.name,
                       variable or DEFAULT_VARIABLE[kind], kind, value)

    def receive_backward(self, message: Message, parent: Module | None = None) -> None:
        """Store a backward message from a parent (read at the next ``update``), under the sender's name; ``parent``,
        the sending module, tells two parents of one name apart (their priors were kept as one, the other dropped)."""
        if message.kind not in self.receives:
            raise MessageKindError(f"{self.name} ({type(self).__name__}) receives backward messages of kind "
                                   f"{self.receives}, but {message.sender} sent {message.kind!r}")
        senders = self._backward_senders
        if parent is not None:
            earlier = senders.get(message.sender)
            if earlier is not None and earlier != id(parent) and any(id(p) == earlier for p in self.parents):
                raise GraphError(f"{self.name} has two parents named {message.sender!r}, whose messages would be kept "
                                 "as one: name them (name=...), or join them in a Graph, which numbers unnamed modules")
            senders[message.sender] = id(parent)
        self.backward_messages[message.sender] = message
        self.__dict__.get("_loaded_senders", set()).discard(message.sender)  # a live prior, in force as any

    def _rename(self, name: str) -> None:
        """A graph's numbering of an unnamed module (``mm`` -> ``mm0``): its name, and the messages it sent that are
        stored under the old one (its forward message, its children's backward messages: left under the old name,
        a prior was counted twice once the module sent under the new one)."""
        old, self.name = self.name, name
        if self.forward_message is not None and self.forward_message.sender == old:
            self.forward_message = replace(self.forward_message, sender=name)
        for child in self.children:
            msg = child.backward_messages.pop(old, None)
            if msg is not None:
                child.backward_messages[name] = replace(msg, sender=name)
            senders = child._backward_senders
            if old in senders:
                senders[name] = senders.pop(old)
            loaded = child.__dict__.get("_loaded_senders")
            if loaded and old in loaded:
                loaded.discard(old)
                loaded.add(name)

    def sends_prior_to(self, child: Module) -> bool:
        """Whether this module sends ``child`` a class prior at its updates (a GMM's mixing weights then give way to
        its parents' priors); an `NN` sends one to its source child only."""
        return "prior" in child.receives

    def _backward_in_force(self) -> list[Message]:
        """The stored backward messages in force: priors loaded from senders that are not parents now (see
        `load_state_dict`) are not."""
        stale = self.__dict__.get("_loaded_senders")
        if stale:
            parents = {p.name for p in self.parents}
            return [m for s, m in self.backward_messages.items() if s not in stale or s in parents]
        return list(self.backward_messages.values())

    def message_to(self, parent: Module) -> Message | None:
        """The forward message ``parent`` reads at its update (``None`` before this module's first update).

        It is `forward_message` (the same object), except for a module whose forward message leaves out its parents'
        class priors (``up_excludes_priors``: GMM, HMM, MM, TailToTail) that has several parents and holds a class
        prior from a parent other than ``parent``: that parent then reads the forward message :math:`\\lambda`
        times the other parents' priors,

        .. math:: m_{\\to j, nk} \\propto \\lambda_{nk} \\prod_{\\text{parents } i \\neq j} \\pi^{(i)}_{nk},

        the module's posterior with parent :math:`j`'s own prior divided out (in log space): each parent sees the
        evidence of the others, and none counts its own prior twice, so an MM and an NN over one GMM (a tree) reach
        the exact marginals. (The same bare likelihood sent to every parent left each blind to the others' priors.)

        Where the forward message has rounded to 0 (a class far from the module's evidence), the smallest normal
        number stands in for it, so a co-parent's prior that rules out every class the message allows decides that
        row (a class that is impossible in the module's own terms, such as a categorical emission of probability 0,
        is then given the row's mass only where every parent's prior rules out all the others).

        Raises:
            MessageShapeError: a stored prior's shape differs from the forward message's.
            ValueError: a row with no finite value (a NaN in a message).
        """
        msg = self.forward_message
        if msg is None or len(self.parents) < 2 or not self.up_excludes_priors or msg.kind != "posterior":
            return msg
        others = [m for m in self._backward_in_force() if m.kind == "prior" and m.sender != parent.name]
        if not others:
            return msg
        for m in others:
            check_same_shape(self, msg, m)
        dtype = torch.promote_types(msg.value.dtype, torch.float32)  # (half precision: computed in float32)
        # (a likelihood normalised over the classes can round to 0 where the module's own evidence is far from a
        # class, in float32 most of all; it is never 0 in the module's own terms, and a co-parent's exact 0 there
        # made the row all -inf: the smallest normal number stands in for it)
        log = torch.log(msg.value.to(dtype).clamp_min(torch.finfo(dtype).tiny))
        for m in others:
            log = log + torch.log(m.value.to(dtype))
        none = ~torch.isfinite(log).any(1)
        if bool(none.any()):  # a softmax of a row of -inf is NaN
            row = int(none.nonzero()[0])
            raise ValueError(f"{self.name}: row {row}: its forward message and the class priors of "
                             f"{', '.join(m.sender for m in others)} have no finite value there (NaN or all 0 in a "
                             f"prior), so it has no message to {parent.name}")
        return Message(msg.sender, parent.name, msg.variable, msg.kind, torch.softmax(log, 1).to(msg.value.dtype))

    @property
    def backward_in(self) -> Message | None:
        """The backward message from the parent(s); class priors of several parents multiply.

        .. math:: \\pi_{nk} \\propto \\prod_{\\text{parents } j} \\pi^{(j)}_{nk}
        """
        msgs = self._backward_in_force()
        if len(msgs) <= 1:
            return msgs[0] if msgs else None
        if any(m.kind != "prior" for m in msgs):
            raise MessageShapeError(f"{self.name} got several backward messages ({[m.kind for m in msgs]}); "
                                    "only class priors ('prior') from several parents can be combined")
        for m in msgs[1:]:
            check_same_shape(self, msgs[0], m)
        log = sum(torch.log(m.value) for m in msgs)
        none = ~torch.isfinite(log).any(1)
        if bool(none.any()):  # softmax of a row of -inf is NaN, which the Message check reported without the cause
            row = int(none.nonzero()[0])
            raise ValueError(f"{self.name}: row {row}: the class priors of {', '.join(m.sender for m in msgs)} have no "
                             "class in common (each class has probability 0 under one of them), so their product is 0")
        return Message("+".join(m.sender for m in msgs), self.name, msgs[0].variable, "prior", torch.softmax(log, 1))

    # ------------------------------------------------------------------ update
    @property
    def stream_state(self) -> dict[str, Any] | None:
        """Where the module's own stream is (``{"device": ..., "state": generator state}``; ``None`` before the
        first ``update()`` without a context), saved with the module so that SERKET's loop continues bitwise
        after a load."""
        if self._stream is None:
            return self._saved_stream
        return {"device": self._stream.device.type, "state": self._stream.get_state()}

    @stream_state.setter
    def stream_state(self, value: dict[str, Any] | None) -> None:
        self._stream, self._saved_stream = None, value

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """See `Stateful.load_state_dict`; a save from before ``stream_state`` was saved restarts the stream. The
        class priors it saved are in force only while their sender is among the module's parents (a GMM trained
        under an MM and loaded into one on its own kept the MM's prior at every later update; a parent connected after
        the load, as a graph is rebuilt bottom-up, finds its prior in force again), until a live message replaces
        them."""
        super().load_state_dict({"stream_state": None, **state})
        self.__dict__["_loaded_senders"] = set(self.backward_messages)

    def context(self) -> UpdateContext:
        """The context of ``update()`` without one: message passing, and the module's own stream
        (started from ``random_state`` at the first such update and continued by the next, also across a
        save and load; a ``torch.Generator`` given as ``random_state`` is used as it is, and a stream saved
        on another kind of device, whose generator differs, restarts from ``random_state``)."""
        if self._stream is None:
            device = next((c.forward_message.value.device for c in self.children if c.forward_message is not None),
                          torch.device("cpu"))
            saved, self._saved_stream = self._saved_stream, None
            if (saved is not None and not isinstance(self.random_state, torch.Generator)
                    and saved["device"] == torch.device(device).type):
                self._stream = torch.Generator(device=device)
                self._stream.set_state(saved["state"].cpu())
            else:
                self._stream = generator_for(self.random_state, device)
        return UpdateContext(generator=self._stream)

    def update(self, ctx: UpdateContext | None = None) -> None:
        """One mutual-inference step: read messages, learn, send messages up and down.

        Args:
            ctx: the sweep's context (`Graph.fit` passes one); ``None``: `context`.
        """
        if not self.children:
            raise GraphError(f"{self.name} has no children: connect it to an Observation or another module")
        forward = []
        for child in self.children:
            msg = child.message_to(self)
            if msg is None:
                raise RuntimeError(f"{self.name}: child {child.name} has not sent a forward message yet; "
                                   f"update {child.name} before {self.name} (Graph.fit orders children first)")
            forward.append(msg)
        backward = self.backward_in
        for msg in forward[1:]:
            if msg.n != forward[0].n:
                raise MessageShapeError(f"{self.name}: its children send different numbers of samples: "
                                        f"{forward[0].sender} sends {tuple(forward[0].value.shape)}, "
                                        f"{msg.sender} sends {tuple(msg.value.shape)}")
        if backward is not None and backward.n != forward[0].n:
            raise MessageShapeError(f"{self.name}: the backward message from {backward.sender} has shape "
                                    f"{tuple(backward.value.shape)} but {forward[0].sender} sends "
                                    f"{forward[0].n} samples")
        up, down = self._update(self.context() if ctx is None else ctx, forward, backward)
        if up.kind != self.sends or up.sender != self.name:
            raise RuntimeError(f"{type(self).__name__}._update must return a {self.sends!r} message from "
                               f"{self.name}, got {up.kind!r} from {up.sender}")
        self.forward_message = up
        for child, msg in down.items():
            if child not in self.children:
                raise GraphError(f"{self.name} sent a backward message to {child.name}, which is not its child")
            child.receive_backward(msg, self)
        self.n_updates += 1

    def _update(self, ctx: UpdateContext, forward: list[Message], backward: Message | None
                ) -> tuple[Message, dict[Module, Message]]:
        raise NotImplementedError(f"{type(self).__name__} must implement _update(ctx, forward, backward)")


class Observation(Module):
    """A leaf holding data ``N×D`` (tensor, array or list; a list of strings is encoded by
    `kizuna.modules.symbols.encode_strings`); its forward message is the data. A 1-D array is read as
    ``N`` rows of one feature (``N×1``); one row of ``D`` features is ``x[None, :]``.

    Floating data keeps its dtype; integer and boolean data become ``torch.get_default_dtype()``;
    anything that is not numbers is refused naming the expected dtype (`kizuna.modules.validation`).

    >>> obs = Observation([[0, 1], [2, 3], [4, 5]], name="obs")
    >>> obs.forward_message.kind, tuple(obs.data.shape), obs.data.dtype
    ('data', (3, 2), torch.float32)
    >>> Observation([[0.0, 1.0], [2.0, float("nan")]], name="images")
    Traceback (most recent call last):
    ...
    ValueError: Observation images: data contains NaN at row 1, column 1 (values must be finite: no NaN or inf)
    """

    sends: ClassVar[str] = "data"
    architecture: ClassVar[tuple[str, ...]] = ("shape",)

    @dataclass
    class State(Stateful.State):
        """Nothing to save: the data are given again when the graph is built."""

    def __init__(self, data: Any, name: str | None = None) -> None:
        super().__init__(name, learnable=False)
        owner = f"Observation {self.name}"
        if is_strings(data):  # symbol strings (phonemes) travel as zero-padded code points
            data = encode_strings(data)
        owner = f"Observation {self.name}"
        t = as_tensor(data, "data", owner)
        self.data = as_matrix(t.unsqueeze(1) if t.dim() == 1 else t, "data", owner, dtype=None)
        self.forward_message = self.message("data", self.data)

    @property
    def shape(self) -> list[int]:
        """``[N, D]``."""
        return list(self.data.shape)

    def __repr__(self) -> str:
        return f"Observation(name={self.name!r}, shape={tuple(self.data.shape)}, dtype={self.data.dtype})"

    def connect(self, *children: Module) -> Module:
        raise GraphError(f"Observation {self.name} is a leaf and cannot have children")

    def update(self, ctx: UpdateContext | None = None) -> None:
        """Nothing to learn: the forward message is the data."""


class ClassModule(ClassResults, Module):
    """Base of modules with a categorical latent of ``n_classes`` values (GMM, LDA, MLDA, HMM...).

    Holds ``posterior`` (``N×K``) and reports ``classes``, ``accuracy``, ``ari`` and ``nmi``
    against ``category`` (labels only used for reporting).
    """

    sends: ClassVar[str] = "posterior"
    up_excludes_priors: ClassVar[bool] = True  # (see `Module.message_to`; MLDA's carries them)

    @dataclass
    class State(Module.State):
        """Also the class posterior ``N×K``."""

        posterior: torch.Tensor | None = None

    def __init__(self, n_classes: int, category: Any = None, name: str | None = None,
                 learnable: bool = True, random_state: int | torch.Generator | None = None) -> None:
        Module.__init__(self, name, learnable, random_state)
        ClassResults.__init__(self, n_classes, category)

    def _set_param(self, name: str, value: Any) -> None:
        """``set_params`` derives what the constructor does: ``category`` goes through `as_labels` (a list stayed a
        list, and a 2-D array the constructor refuses was taken), and ``n_classes`` follows ``n_components`` /
        ``n_states`` (a ``GMM(2).set_params(n_components=3)`` under an MM refused the MM's 3-class prior); MM's
        ``n_states=None`` leaves it to the child's message at the next update."""
        if name == "category":
            value = as_labels(value, type(self).__name__)
        elif name in ("n_components", "n_states") and value is not None:
            n_classes = checked_n_classes(value, type(self).__name__)  # (checked before anything is set)
            super()._set_param(name, value)
            self.n_classes = n_classes
            return
        super()._set_param(name, value)

    def class_prior(self, backward: Message | None, n: int) -> torch.Tensor | None:
        """The ``N×K`` class prior from the parent, checked against ``n_classes`` (``None`` if none)."""
        if backward is None:
            return None
        if backward.kind != "prior":
            raise MessageKindError(f"{self.name} expects a 'prior' backward message, got {backward.kind!r} "
                                   f"from {backward.sender}")
        check_width(self, backward, self.n_classes, "classes")
        if backward.n != n:
            raise MessageShapeError(f"{self.name}: the prior message from {backward.sender} has {backward.n} rows "
                                    f"for {n} samples")
        return backward.value
