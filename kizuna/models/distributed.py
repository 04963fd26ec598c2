r"""Data-parallel training with ``torch.distributed``: what `Model.fit` does under ``torchrun``.

Every process (rank) holds the whole model and the whole data set; each step, rank :math:`r`
evaluates the loss on its own :math:`n_r` rows of the global batch, and the gradients are
combined with one all-reduce so that every rank applies the same update

.. math:: g = \frac{\sum_r n_r\, g_r}{\sum_r n_r},

which for a loss that is a per-row mean (plus terms that do not depend on the rows, such as a
weight penalty) is exactly the gradient of the global batch of :math:`\sum_r n_r` rows
(equal shards make it the plain average of the ranks' gradients, as DDP computes;
Li et al. 2020, arXiv:2006.15704).

Why not ``DistributedDataParallel``: DDP all-reduces gradients only for calls that go through
its own ``forward`` (that call arms its backward hooks), while kizuna losses call the
distributions directly (``q(z|x)`` inside a KL, ``p(x|z)`` inside an expectation), so wrapping
the distributions in DDP would leave every rank with its own gradient. Instead, after each
local backward, `DataParallel` packs every gradient (scaled by :math:`n_r`), whether a
parameter got one at all, the row count and each rank's non-finite flags into one flat
buffer per (device, dtype) and all-reduces it (one collective per step for a model in one
dtype), then writes :math:`g` back. Parameters, buffers and fit's shuffling generator are
broadcast from rank 0 when ``fit`` starts, buffers again after every training pass.

Ranks that run out of batches (uneven ``DataLoader`` shards, or fewer rows than ranks)
keep joining the all-reduce with zero rows until every rank is done, so nothing hangs.

>>> launched(), is_initialized(), rank(), world_size(), is_main()
(False, False, 0, 1, True)
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from kizuna.models import checkpoint as ckpt


# -------------------------------------------------------------- process group
def launched() -> bool:
    """Whether this process was started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group or torchrun)."""
    return dist.get_rank() if is_initialized() else _env("RANK", 0)


def world_size() -> int:
    """The number of processes (1 without a process group or torchrun)."""
    return dist.get_world_size() if is_initialized() else _env("WORLD_SIZE", 1)


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``, 0 when unset)."""
    return _env("LOCAL_RANK", 0)


def is_main() -> bool:
    """Whether this is rank 0, the one that shows progress and writes checkpoints."""
    return rank() == 0


def init(backend: str | None = None) -> torch.device:
    """Join the process group described by torchrun's environment; returns this rank's device.

    The device is ``cuda:LOCAL_RANK`` (made current) when CUDA is available, else the CPU.
    The default backend is ``gloo`` on a CPU-only machine and ``cpu:gloo,cuda:nccl`` with CUDA
    (NCCL for CUDA tensors, gloo for CPU ones). An initialised group is reused as it is.

    Raises:
        RuntimeError: no process group and no torchrun environment.
    """
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not is_initialized():
        if not launched():
            raise RuntimeError(_NOT_LAUNCHED)
        dist.init_process_group(backend or ("cpu:gloo,cuda:nccl" if cuda else "gloo"))
        atexit.register(_destroy)
    return device


def _destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if is_initialized():
        dist.barrier()


_NOT_LAUNCHED = ("data-parallel training (fit(distributed=True)) needs torch.distributed, but no process group is "
                 "initialised and RANK / WORLD_SIZE are not set: launch the script with `torchrun --nproc_per_node N "
                 "script.py` (see docs/distributed.md) or call torch.distributed.init_process_group first")


def resolve(distributed: bool | None) -> bool:
    """Whether ``fit`` trains data-parallel; joins torchrun's process group when it must.

    ``None``: yes when a process group of more than one rank is initialised or torchrun
    started more than one process; ``True``: yes (an error without either); ``False``: no.
    """
    if distributed is None and not (is_initialized() or launched()):
        return False  # the common case: a plain script, no environment to read
    if distributed is False:
        return False
    if is_initialized():
        return bool(distributed) or world_size() > 1
    if not launched():
        raise RuntimeError(_NOT_LAUNCHED)
    if distributed or _env("WORLD_SIZE", 1) > 1:
        init()
        return True
    return False


def _rows(tensors: dict[str, Any]) -> int:
    return next(v.shape[0] for v in tensors.values() if isinstance(v, torch.Tensor) and v.dim() > 0)


def set_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch`` on a loader's (batch) sampler when it has one (``DistributedSampler``)."""
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)


# ------------------------------------------------------------- collectives
def _groups(tensors: Sequence[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    out: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        out.setdefault((t.device, t.dtype), []).append(i)
    return out


def _comm_device(device: torch.device) -> torch.device:
    """Where a collective on a tensor of ``device`` runs: NCCL alone only moves CUDA tensors."""
    if dist.get_backend() == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _all_reduce(buffer: torch.Tensor, op: Any = None) -> torch.Tensor:
    comm = _comm_device(buffer.device)
    moved = buffer.to(comm)
    dist.all_reduce(moved, op=op or dist.ReduceOp.SUM)
    return moved.to(buffer.device)


@torch.no_grad()
def broadcast_(tensors: Sequence[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with rank 0's values (one broadcast per device and dtype)."""
    for (device, _), index in _groups(tensors).items():
        flat = torch.cat([tensors[i].detach().reshape(-1) for i in index]).to(_comm_device(device))
        dist.broadcast(flat, 0)
        offset = 0
        for i in index:
            n = tensors[i].numel()
            tensors[i].copy_(flat[offset:offset + n].view_as(tensors[i]))
            offset += n


def common_seed() -> int:
    """A fresh random seed, the same on every rank: rank 0 draws it and broadcasts it.

    Without a process group (or with one process) it is simply a fresh random seed. Used by
    `kizuna.modules.Graph.fit` when no seed is given, so that the replicated classical modules
    (GMM, MLDA, ...) of a data-parallel run draw the same samples on every rank.
    """
    seed = torch.tensor([torch.Generator().seed() % 2**62])  # nondeterministic; the global RNG is untouched
    if is_initialized() and dist.get_world_size() > 1:
        broadcast_([seed])
    return int(seed.item())


def reduce_sums(values: Sequence[float], device: torch.device) -> list[float]:
    """The element-wise sums of ``values`` over the ranks (float64)."""
    return _all_reduce(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def _check_same(values: dict[str, float], device: torch.device) -> None:
    """An error on every rank when one of ``values`` differs between ranks (one collective)."""
    local = list(values.values())
    reduced = _all_reduce(torch.tensor(local + [-v for v in local], dtype=torch.float64, device=device),
                          dist.ReduceOp.MAX).tolist()
    for (what, value), high, low in zip(values.items(), reduced, reduced[len(local):]):
        if high != -low:
            raise ValueError(f"fit(distributed): {what} differs between ranks (from {-low:g} to {high:g}; rank "
                             f"{rank()} has {value:g}). Pass the same full dict data on every rank (fit shards "
                             "it), or a DataLoader with a DistributedSampler")


# ------------------------------------------------------------ the trainer
Message = Callable[[str, dict[str, float], Any, Any], str]


class DataParallel:
    """`Model.fit`'s data-parallel machinery for one model (see the module docstring).

    Args:
        params: the trainable parameters (in the optimizer's order).
        device: where the bookkeeping collectives run (the parameters' device).
    """

    def __init__(self, params: Sequence[nn.Parameter], device: torch.device) -> None:
        self.params, self.device = list(params), device
        self.rank, self.world = rank(), world_size()
        self.main = self.rank == 0
        self._groups = list(_groups(self.params).items())
        self._meta = 1 + len(self.params) + 2 * self.world  # rows, has-grad flags, non-finite flags per rank
        # the bookkeeping rides in the first gradient buffer when its dtype holds the counts exactly
        self._meta_inline = self._groups[0][0][1] in (torch.float32, torch.float64)
        self._buffers = []
        for (where, dtype), index in self._groups:
            size = sum(self.params[i].numel() for i in index)
            if self._meta_inline and not self._buffers:
                size += self._meta
            self._buffers.append(torch.zeros(size, dtype=dtype, device=where))

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, world size)``: which rows of each global batch are this rank's."""
        return self.rank, self.world

    @classmethod
    def setup(cls, model: Any, distributed: bool | None, data: Sequence[Any]) -> DataParallel | None:
        """A `DataParallel` for ``model`` when ``fit`` is to run data-parallel, else ``None``.

        ``data``: fit's training and validation `Batches` (or ``None``); their row counts (dict
        data) and batch sizes must agree on all ranks, as must the model's size.
        """
        if not resolve(distributed):
            return None
        owner = next(c for c in type(model).__mro__ if "_fit_step" in c.__dict__)
        if owner.__module__ != "kizuna.models.model":
            raise NotImplementedError(f"fit(distributed): {type(model).__name__} has its own training step "
                                      f"({owner.__name__}._fit_step); only Model's step runs data-parallel")
        sync = cls(model._params, model._params[0].device)
        checks = {"the number of parameter elements": float(sum(p.numel() for p in sync.params))}
        for batches in data:
            if batches is not None:
                rows = -1 if batches.tensors is None else _rows(batches.tensors)
                checks[f"the number of rows of {batches.what} (-1: a loader)"] = float(rows)
                checks[f"batch_size for {batches.what}"] = float(batches.batch_size)
        _check_same(checks, sync.device)
        return sync

    def broadcast_state(self, model: Any) -> None:
        """Rank 0's parameters, buffers and shuffling generator, on every rank."""
        broadcast_(list(model.distributions.parameters()) + list(model.distributions.buffers()))
        if model._shuffle is not None:
            state = model._shuffle.get_state()
            broadcast_([state])
            model._shuffle.set_state(state)

    def run(self, model: Any, batches: Iterable[tuple[int, dict[str, Any]]], epoch: int, training: bool,
            checkpoint: Any, message: Message) -> tuple[float, dict[str, float]]:
        """One pass over this rank's batches; the loss and term means over all ranks' rows."""
        loss_cls = model.loss_cls if training else model.test_loss_cls
        keys = list(dict.fromkeys(t.label for t in loss_cls.terms()))
        total, count, sums, error = 0.0, 0, dict.fromkeys(keys, 0.0), None
        items = iter(batches)
        for step in range(1, 2**62):
            rows, batch = next(items, (0, None))
            if training:
                done = self._step(model, rows, batch, epoch, step, checkpoint, message)
                if done is None:
                    break
                value, terms = done
            elif batch is None:
                break
            elif rows:
                try:
                    value, terms = model._valid_step(batch, epoch, step)
                except FloatingPointError as err:
                    error = err
                    break
            if rows:
                total, count = total + rows * value, count + rows
                for key in keys:
                    sums[key] += rows * terms.get(key, math.nan)
        buffers = list(model.distributions.buffers())
        if training and buffers:
            broadcast_(buffers)  # e.g. batch-norm statistics: rank 0's, so validation agrees
        flags = [0.0] * self.world
        flags[self.rank] = float(error is not None)
        total, count, *rest = reduce_sums([total, count, *flags, *sums.values()], self.device)
        bad = [r for r, f in enumerate(rest[:self.world]) if f]
        if bad:
            raise error if error is not None else FloatingPointError(
                f"fit: the validation loss is non-finite on rank(s) {bad} at epoch {epoch}")
        if count == 0:
            raise ValueError(f"fit: the {'training' if training else 'validation'} data yielded no batch on any rank")
        return total / count, {k: v / count for k, v in zip(keys, rest[self.world:])}

    def _step(self, model: Any, rows: int, batch: dict[str, Any] | None, epoch: int, step: int, checkpoint: Any,
              message: Message) -> tuple[float, dict[str, float]] | None:
        """One synchronised step (``None`` once no rank has rows left)."""
        model._set_mode(True)
        model.optimizer.zero_grad(set_to_none=True)
        value, terms, bad_loss, bad_grad = math.nan, {}, False, []
        if rows:
            loss, value, terms = model._evaluate(model.loss_cls, batch)
            if math.isfinite(value):
                loss.backward()
                bad_grad = [name for name, p in ckpt.named_parameters(model.distributions)
                            if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
            else:
                bad_loss = True
        total, loss_ranks, grad_ranks = self._reduce_gradients(rows, bad_loss, bool(bad_grad))
        where = f"at epoch {epoch}, step {step}"
        if loss_ranks or grad_ranks:
            model.optimizer.zero_grad(set_to_none=True)
            if bad_loss:
                what = f"the loss is {value} {where} on rank {self.rank}"
            elif bad_grad:
                what = f"the gradient of {', '.join(bad_grad)} is non-finite {where} on rank {self.rank}"
            else:
                what = f"rank(s) {sorted(set(loss_ranks + grad_ranks))} saw a non-finite loss or gradient {where}"
            raise FloatingPointError(message(what, terms, model, checkpoint))
        if total == 0:
            return None
        model._update()
        return value, terms

    @torch.no_grad()
    def _reduce_gradients(self, rows: int, bad_loss: bool, bad_grad: bool) -> tuple[float, list[int], list[int]]:
        """All-reduce ``rows * grad``; set ``grad`` to the row-weighted mean. Returns the total rows
        and the ranks that flagged a non-finite loss / gradient."""
        p_count, world = len(self.params), self.world
        meta = torch.zeros(self._meta, dtype=torch.float64)
        meta[0] = rows
        meta[1:1 + p_count] = torch.tensor([p.grad is not None for p in self.params], dtype=torch.float64)
        meta[1 + p_count + self.rank] = float(bad_loss)
        meta[1 + p_count + world + self.rank] = float(bad_grad)
        for ((_, _), index), buffer in zip(self._groups, self._buffers):
            offset = 0
            for i in index:
                grad, n = self.params[i].grad, self.params[i].numel()
                if grad is None or not rows:
                    buffer[offset:offset + n].zero_()
                else:
                    torch.mul(grad.reshape(-1), rows, out=buffer[offset:offset + n])
                offset += n
        if self._meta_inline:
            self._buffers[0][-self._meta:] = meta
        reduced = [_all_reduce(buffer) for buffer in self._buffers]
        flags = (reduced[0][-self._meta:] if self._meta_inline else _all_reduce(meta.to(self.device))).tolist()
        total = flags[0]
        if total > 0:
            for ((_, _), index), flat in zip(self._groups, reduced):
                offset = 0
                for i in index:
                    p, n = self.params[i], self.params[i].numel()
                    p.grad = flat[offset:offset + n].view_as(p).div(total) if flags[1 + i] else None
                    offset += n
        loss_ranks = [r for r in range(world) if flags[1 + p_count + r]]
        grad_ranks = [r for r in range(world) if flags[1 + p_count + world + r]]
        return total, loss_ranks, grad_ranks
