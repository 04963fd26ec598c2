r"""Data-parallel training with ``torch.distributed``: what `Model.fit` does under ``torchrun``.

Every process (rank) holds the whole model and the whole data set; each step, rank :math:`r`
evaluates the loss on its own :math:`n_r` rows of the global batch of :math:`n` rows. The loss is
evaluated by torch's ``DistributedDataParallel`` around a `LossModule` (an ``nn.Module`` whose
forward is the loss's evaluation, as Pyro's ``ELBOModule``), so the backward pass averages the
gradients over the :math:`W` ranks (and `average_gradients_` those of any parameter the optimizer trains beyond the
distributions, such as a learned loss coefficient). Each rank weights its loss by :math:`W n_r / n`, so the
average is exactly the gradient of the global batch's mean loss

.. math:: g = \frac1W \sum_r \frac{W n_r}{n} g_r = \frac{\sum_r n_r\, g_r}{n}

(Li et al. 2020, arXiv:2006.15704). A rank with no rows of the last global batch evaluates a stand-in row with
weight zero, and a rank whose ``DataLoader`` shard has run out repeats its last batch with weight
zero (`kizuna.models.fit`), so every rank and every optimizer takes every step. A rank whose loss is
not finite still takes part, with gradients of NaN, so every rank sees the non-finite gradient and
stops together.

>>> launched(), is_initialized(), rank(), world_size(), is_main()
(False, False, 0, 1, True)
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from kizuna.formula.expr import Loss


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


def rows_of(tensors: dict[str, Any]) -> int:
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


def broadcast_buffers(model: Any) -> None:
    """Every rank takes rank 0's buffers (batch-norm statistics, ...) of the model's distributions and of the models
    its step trains. DDP broadcasts them at the start of each forward, so after the last step of a pass each rank
    holds rank 0's plus its own shard's last update: `fit` calls this after each training pass, so that validation,
    the early-stopping snapshot, checkpoints and the model `fit` returns are the same on every rank."""
    seen: set[int] = set()
    buffers = []
    for m in (model, *model.submodels()):
        for b in m.distributions.buffers():
            if id(b) not in seen:
                seen.add(id(b))
                buffers.append(b)
    if buffers:
        broadcast_(buffers)


def check_batch_norm_rows(model: Any, rows: int, batch_size: int, world: int | None = None,
                          drop_last: bool = False) -> None:
    """A clear error before any step, the same on every rank, when the model normalises batches in training (torch's
    or kizuna's flow batch norm) and a step would give a rank fewer than 2 rows (one process: `fit` re-raises torch's
    error at the step, naming it, as a network may see more rows than the batch has, e.g. IWAE's k per row) (a
    batch of one row has no variance: torch raised "Expected more than 1 value per channel" mid-epoch, after the
    epoch's earlier steps were taken; in a data-parallel run on one rank, the others then failed in the next
    collective). ``world``: the number of ranks (default: `world_size`); ``drop_last``: fit leaves out the last global
    batch when it is not full."""
    from kizuna.flows.normalization import _BatchNorm as FlowBatchNorm

    world = world_size() if world is None else world
    norms = [f"{type(mod).__name__} {name} of {d.prob_text}" for m in (model, *model.submodels())
             for d in m.distributions for name, mod in d.named_modules()
             if isinstance(mod, nn.modules.batchnorm._BatchNorm | FlowBatchNorm) and mod.training]
    if not norms:
        return
    step = batch_size * world
    last = step if drop_last else rows - (math.ceil(rows / step) - 1) * step  # rows of the last global batch
    fewest = last // world  # its rank with the fewest rows (every earlier global batch gives each batch_size)
    if fewest >= 2:
        return
    remedy = ("choose batch_size >= 2" if batch_size < 2 else
              "choose batch_size or the number of rows so that the last global batch gives every rank at least 2, or "
              "pass drop_last=True (each epoch leaves its last, smaller global batch out; a DataLoader: "
              "drop_last=True and a DistributedSampler)")
    raise ValueError(
        f"fit(distributed): the model normalises batches in training ({norms[0]}), which needs at least 2 rows "
        f"per rank in each step, but {rows} rows in global batches of {batch_size} x {world} ranks leave a rank "
        f"{fewest} row(s) in the last step ({last} rows over {world} ranks); {remedy}")


@torch.no_grad()
def average_gradients_(params: Sequence[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over the ranks, as DDP averages those of the parameters it holds (one
    all-reduce per device and dtype): for the parameters the optimizer trains beyond the distributions (a learned loss
    coefficient given with ``add_param_group``), which `LossModule` does not hold (they may be plain tensors, which a
    module cannot register). A parameter without a gradient on a rank counts as zero there; one without a gradient on
    every rank keeps none (the optimizer skips it, as in one process)."""
    world = world_size()
    for (device, dtype), index in _groups(params).items():
        chunk = [params[i] for i in index]
        flags = torch.tensor([float(p.grad is not None) for p in chunk], dtype=dtype, device=device)
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype, device=device)
                 for p in chunk]
        total = _all_reduce(torch.cat([flags, *grads]))
        offset = len(chunk)
        for p, seen in zip(chunk, total[:len(chunk)].tolist()):
            n = p.numel()
            if seen > 0:
                mean = (total[offset:offset + n] / world).view_as(p)
                if p.grad is None:
                    p.grad = mean.clone()
                else:
                    p.grad.copy_(mean)
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
class LossModule(nn.Module):
    """An ``nn.Module`` whose forward evaluates a loss (Pyro's ``ELBOModule`` idea), so that torch's
    ``DistributedDataParallel`` can wrap it: its parameters are those of the trained distributions,
    and every distribution the loss calls runs inside DDP's forward, whose backward hooks average
    the gradients over the ranks. The parameters the optimizer trains beyond the distributions (a learned loss
    coefficient) are not held here: `Model`'s step averages their gradients with `average_gradients_`, and `fit`
    broadcasts their values from rank 0 when the run starts, as DDP does for its own.
    """

    def __init__(self, loss: Loss, distributions: nn.ModuleList) -> None:
        super().__init__()
        self.distributions = distributions
        object.__setattr__(self, "loss", loss)  # not registered: DDP syncs only the trained parameters

    def forward(self, batch: Mapping[str, Any], **options: Any) -> Any:
        return self.loss.eval(batch, **options)


def wrap(model: Any) -> nn.Module:
    """``model``'s loss in ``DistributedDataParallel`` (parameters broadcast from rank 0 by DDP)."""
    from torch.nn.parallel import DistributedDataParallel

    module = LossModule(model.loss_cls, model.distributions)
    device = model.device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def check_same(model: Any, data: Sequence[Any]) -> None:
    """An error on every rank when the model's size or the dict data's rows or batch sizes differ
    between ranks (fit shards one full copy of the data)."""
    trained = [p for group in model.optimizer.param_groups for p in group["params"]]
    checks = {"the number of parameter elements": float(sum(p.numel() for p in trained))}
    for batches in data:
        if batches is not None:
            rows = -1 if batches.tensors is None else rows_of(batches.tensors)
            checks[f"the number of rows of {batches.what} (-1: a loader)"] = float(rows)
            checks[f"batch_size for {batches.what}"] = float(batches.batch_size)
    _check_same(checks, model.device)
