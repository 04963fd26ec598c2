"""`fit`: the one epoch loop of `Model` (one process, or data-parallel under ``torchrun``).

Each epoch takes one `Model.step` per mini-batch and records the batch-size-weighted means of the
loss and of its named terms, taken from the same evaluations as the steps:

.. math:: \\bar{\\mathcal{L}}_{epoch} = \\frac{\\sum_b n_b \\mathcal{L}(x_b)}{\\sum_b n_b}

The run draws its randomness from the model's own torch stream (seeded by ``seed``, or drawn once
from the global generator), inside ``torch.random.fork_rng``: torch's global generator is left as
it was, the stream is saved in checkpoints, and a resumed run continues it exactly.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from os import PathLike
from typing import Any

import torch
from tqdm import tqdm

from kizuna._data import check_int, first_nonfinite
from kizuna.losses.iterative import IterativeLoss
from kizuna.models import distributed as ddp
from kizuna.models.batches import Batch, Batches
from kizuna.models.checkpoint import History
from kizuna.models.model import NOT_TAKEN, NonFiniteStep, _marking, check_seed


def fit(
    model: Any,
    data: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    epochs: int = 1,
    batch_size: int = 128,
    valid: Mapping[str, Any] | Iterable[Mapping[str, Any]] | None = None,
    shuffle: bool = True,
    quiet: bool | None = None,
    patience: int | None = None,
    checkpoint: str | PathLike[str] | None = None,
    seed: int | None = None,
    distributed: bool | None = None,
    drop_last: bool = False,
) -> History:
    """Train ``model`` for ``epochs`` more epochs; returns its (cumulative) `History`.

    Args:
        model: a `kizuna.models.Model` (its `Model.step` and `Model.evaluate` are called).
        data: a dict of tensors (or numpy arrays) sharing their first (batch) dimension, cut into
            mini-batches of ``batch_size``; or a ``DataLoader`` (any re-iterable) yielding dicts. A list or tuple
            in the dict holds one item per row (strings a network tokenises) and is cut and shuffled with the
            tensors' rows (a ``ValueError`` names one of another length); numbers and 0-d tensors go to every batch.
            Floating data is converted to the model's dtype and device.
        epochs: how many epochs to add (``model.epoch`` counts them over calls and resumes).
        batch_size: mini-batch size for dict data (a DataLoader batches itself).
        valid: validation data (same forms); its test loss is recorded after every epoch.
        shuffle: reshuffle dict data every epoch with fit's own generator.
        quiet: hide the progress bar; ``None``: hide it when stderr is not a terminal.
        patience: with ``valid``: stop after this many epochs without a strictly lower
            validation loss, and restore the parameters of the best epoch. Each call's early stopping starts
            afresh (best epoch and count), measured on its own ``valid``, except the first call after
            `Model.load` / `Model.load_state_dict`, which continues the restored run's (an exact resume). A restored
            run that early stopping had ended (its ``history.stopped_epoch`` is ``model.epoch``) is finished: that call
            returns the history and changes nothing (no training, no checkpoint written), so re-running a script
            after its run stopped early leaves the model and its checkpoint as they were.
        checkpoint: a path; the model is saved there (see `Model.save`) after every finished epoch.
            A missing folder is created (with its parents) before training; a path that cannot be written
            (a file in the way, an existing directory given as the file) is an error then.
        seed: starts the model's random stream and shuffling generator when the run starts
            (``model.epoch == 0``): the same seed gives bitwise the same run in any process (with the same
            number of torch threads), and
            torch's global generator is left untouched. A model that has trained or was loaded from
            a checkpoint continues its saved streams instead, so re-running the same script after an
            interruption reproduces the uninterrupted run.
        distributed: train data-parallel over ``torch.distributed`` ranks (module
            `kizuna.models.distributed`, docs/distributed.md). ``None``: when launched by ``torchrun``
            with more than one process, or a process group is initialised. Every rank passes the
            same full dict data; each step, rank ``r`` takes rows ``r, r + world, ...`` of a global
            batch of ``batch_size * world`` rows, the gradient is that of the global batch, the
            recorded losses are means over all ranks' rows (the same `History` on every rank), and
            only rank 0 shows progress and writes ``checkpoint``. A ``DataLoader`` must shard
            itself with a ``DistributedSampler``; ``set_epoch(epoch)`` is called on it every epoch. With more
            than one rank each rank draws from a stream of its own, derived every epoch from the model's common
            stream (the one ``seed`` starts and checkpoints hold) and the rank; a sampler of your own must not shard
            a permutation drawn from torch's global generator, which then differs between the ranks.
        drop_last: leave out each epoch's last mini-batch of dict ``data`` when it has fewer than ``batch_size``
            rows (fewer than ``batch_size * world`` in a data-parallel run), e.g. for a model with batch
            normalisation, which cannot train on one row (which rows are left out changes every epoch with
            ``shuffle``). The validation data are never cut. A ``DataLoader`` drops its own (``drop_last=True``).

    After every epoch (its training steps and validation), the learning-rate schedulers of the model and of the
    models its step trains (``Model(scheduler=...)``) take one step: ``ReduceLROnPlateau`` with the validation
    loss, or the training loss without ``valid``, each with its own model's: a submodel's is the epoch mean of the
    term `Model.submodel_terms` names (a GAN's discriminator: ``d_loss``).

    Raises:
        ValueError: bad arguments, or data with non-finite entries (naming the variable, row and column), or a
            submodel's ``ReduceLROnPlateau`` whose loss the model names no term for (`Model.submodel_terms`). A
            training step whose batch normalisation got one value per channel (a last batch of one row): the
            message names the epoch, the step, its rows and the remedies (``drop_last=True``, another
            ``batch_size``); the epoch's earlier steps were taken, the failing one was not (its parameters, and the
            batch-norm statistics and counts its forward had updated, are as before it). A data-parallel run says so
            before the first step instead, the same on every rank, for dict ``data`` whose last step leaves a rank
            fewer than 2 rows.
        FloatingPointError: the loss or a gradient went non-finite. The message names the epoch and
            step, and the non-finite input or terms; the bad step is not taken, and the checkpoint on
            disk (the last finished epoch) is left untouched. A non-finite validation loss comes after the
            epoch's training steps: the epoch is recorded (``model.epoch`` and the history count it, its
            validation loss ``nan``, the schedulers step), as the parameters have taken its steps; early
            stopping does not see it and the checkpoint is not written.
    """
    check_int("fit: epochs", epochs, 0)  # (numpy integers were refused: "must be an integer ..., got np.int64(8)")
    check_int("fit: batch_size", batch_size, 1)
    epochs, batch_size = int(epochs), int(batch_size)
    if patience is not None and (valid is None or isinstance(patience, bool)
                                 or not isinstance(patience, numbers.Integral) or patience < 1):  # True, 2.5 were taken
        raise ValueError(f"fit: patience (early stopping) needs valid data and an integer >= 1, got {patience!r}")
    if not isinstance(drop_last, bool):
        raise TypeError(f"fit: drop_last must be True or False, got {drop_last!r}")
    if drop_last and not isinstance(data, Mapping):
        raise ValueError("fit: drop_last cuts dict data; a DataLoader drops its own last batch "
                         "(DataLoader(..., drop_last=True))")
    if checkpoint is not None:
        model.check_checkpoint_path(checkpoint)
    for given, what in ((data, "data"), (valid, "valid")):
        if isinstance(given, Iterator) and epochs > 1:  # read once, but fit reads it every epoch
            raise ValueError(f"fit: {what} is an iterator ({type(given).__name__}), which can be read once, but fit "
                             f"reads it every epoch; pass a list of batches, a DataLoader or another re-iterable")
    train_data = Batches(data, "data", model.loss_cls.input_var, batch_size, _time_major(model.loss_cls), drop_last)
    valid_data = Batches(valid, "valid", model.test_loss_cls.input_var, batch_size,
                         _time_major(model.test_loss_cls)) if valid is not None else None
    _check_batch_first(model.loss_cls, train_data, "data")
    if valid_data is not None:
        _check_batch_first(model.test_loss_cls, valid_data, "valid")
    _check_plateau_terms(model, valid_data is not None)
    parallel = ddp.resolve(distributed)
    if parallel:
        ddp.check_same(model, [train_data, valid_data])
    if train_data.tensors is not None:
        rows, world = ddp.rows_of(train_data.tensors), ddp.world_size() if parallel else 1
        if drop_last and rows < batch_size * world:
            raise ValueError(f"fit: drop_last=True leaves no batch: the data have {rows} rows, fewer than a batch of "
                             f"{batch_size}" + (f" x {world} ranks" if world > 1 else ""))
        if parallel:  # before any step, the same on every rank (one rank's failure left the others waiting in the
            # next collective); one process names the failing step instead (`_pass`): a layer that sees more rows than
            # the data's (an IWAE decoder's k draws per row) trains on a one-row last batch
            ddp.check_batch_norm_rows(model, rows, batch_size, world, drop_last)
    if (patience is not None and model._resumed and model.history.stopped_epoch is not None
            and model.history.stopped_epoch == model.epoch):
        # the restored run had stopped early: it is finished (a re-run script trained on from the restored best
        # weights with the last epoch's optimizer state, and wrote another model over the checkpoint)
        return model.history
    _start_streams(model, seed, parallel)
    if epochs > 0:  # the stop of an earlier call does not describe this one (it stayed, stale)
        model.history.stopped_epoch = None
        if not model._resumed:  # this call's early stopping is its own: an earlier call's best epoch, measured on
            # other validation data or another loss, stopped it early and its parameters were restored, silently
            model._best = None
        model._resumed = False
    shard = (ddp.rank(), ddp.world_size()) if parallel else (0, 1)
    main = not parallel or ddp.is_main()
    quiet = (quiet if quiet is not None else not _stderr_is_terminal()) or not main
    with ExitStack() as stack:
        stack.enter_context(_own_stream(model))
        if parallel:
            stack.enter_context(_data_parallel(model))
        with tqdm(range(epochs), desc="fit", unit="epoch", disable=quiet, dynamic_ncols=True) as bar:
            for _ in bar:
                epoch = model.epoch + 1
                ddp.set_epoch(train_data.loader, epoch)
                kept = "" if checkpoint is None else f"the checkpoint {checkpoint} (epoch {model.epoch}) is untouched"
                with _rank_stream(model, shard):  # data-parallel: this rank's own draws for the epoch
                    batches = train_data.iterate(model._shuffle if shuffle else None, model.dtype, model.device,
                                                 shard)
                    train_loss, terms = _pass(model, batches, epoch, True, parallel, kept,
                                              train_data.tensors is not None, batch_size)
                    if parallel:  # each rank's buffers (batch-norm statistics) are rank 0's again, as DDP's next step
                        ddp.broadcast_buffers(model)
                    valid_loss, valid_terms = math.nan, {}
                    if valid_data is not None:
                        batches = valid_data.iterate(None, model.dtype, model.device, shard)
                        # the epoch's steps were taken: a failed validation records the epoch, so that model.epoch and
                        # the history describe the parameters (the model said "unchanged" and counted one epoch fewer)
                        counted = (f"the parameters are those after epoch {epoch}'s training steps, which model.epoch "
                                   f"({epoch}) and the history count, with the validation loss nan")
                        try:
                            valid_loss, valid_terms = _pass(model, batches, epoch, False, parallel,
                                                            f"{counted}; {kept}" if kept else counted)
                        except FloatingPointError:
                            _end_epoch(model, epoch, train_loss, math.nan, terms, {}, True)
                            raise
                _end_epoch(model, epoch, train_loss, valid_loss, terms, valid_terms, valid_data is not None)
                stop = valid_data is not None and model.early_stop(epoch, valid_loss, patience)
                if checkpoint is not None:
                    if main:
                        model._rng = torch.get_rng_state()  # the streams as they stand after this epoch
                        cuda = _cuda_index(model)
                        if cuda is not None:
                            model._cuda_rng = torch.cuda.get_rng_state(cuda)
                        model.save(checkpoint)
                    if parallel:
                        ddp.barrier()  # no rank goes on (and may read the file) before it is complete
                shown = {"train": f"{train_loss:.4g}"}
                if valid_data is not None:
                    shown["valid"] = f"{valid_loss:.4g}"
                bar.set_postfix(shown)
                if stop:
                    break
    if valid_data is not None and epochs > 0:  # the validation pass left every network in evaluation mode: fit
        for m in (model, *model.submodels()):  # leaves them in training mode, with or without valid data
            m._set_mode(True)
    return model.history


def _end_epoch(model: Any, epoch: int, train_loss: float, valid_loss: float, terms: Mapping[str, float],
               valid_terms: Mapping[str, float], validated: bool) -> None:
    """Count the epoch (``model.epoch`` and the history) and step the learning-rate schedulers of the model and of
    the models its step trains: ``ReduceLROnPlateau`` with each model's own validation loss (``validated``), else
    its training loss (a submodel's: the term `Model.submodel_terms` names; ``nan`` after a failed validation, as
    the model's); the others without an argument."""
    model.epoch = epoch
    model.history.append(epoch, train_loss, valid_loss, terms, valid_terms)
    loss, found = (valid_loss, valid_terms) if validated else (train_loss, terms)
    names = model.submodel_terms()
    for i, m in enumerate((model, *model.submodels())):
        scheduler = m.scheduler
        if scheduler is None:
            continue
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):  # (a name `_check_plateau_terms` saw)
            scheduler.step(loss if i == 0 else found.get(names[i - 1], math.nan))
        else:
            scheduler.step()


def _check_plateau_terms(model: Any, validated: bool) -> None:
    """Before training: each submodel with a ``ReduceLROnPlateau`` has its own loss among the model's terms, named by
    `Model.submodel_terms` (every one took the model's loss: a GAN discriminator's, the generator's)."""
    names = model.submodel_terms()
    for i, m in enumerate(model.submodels()):
        if not isinstance(m.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            continue
        name = names[i] if i < len(names) else None
        for what, loss in (("training", model.loss_cls), *([("validation", model.test_loss_cls)] if validated else [])):
            known = list(dict.fromkeys([*loss.labelled_terms(), *model.extra_terms]))
            if name not in known:
                named = "none for it" if name is None else f"{name!r}, not one of them"
                raise ValueError(
                    f"fit: submodel {i} of {type(model).__name__} ({type(m).__name__}) has a ReduceLROnPlateau, which "
                    f"steps with that submodel's own epoch loss: one of the model's {what} terms "
                    f"({', '.join(map(repr, known))}), named by {type(model).__name__}.submodel_terms(), which names "
                    f"{named}; override submodel_terms() to name it, or give the submodel another scheduler")


def _time_major(loss: Any) -> list[str]:
    """The variables an `IterativeLoss` of ``loss`` reads time-major (``series_dim=0``: time first, the batch along
    dimension 1)."""
    return list(dict.fromkeys(v for node in loss.nodes() if isinstance(node, IterativeLoss) and node.series_dim == 0
                              for v in node.series_var))


def _check_batch_first(loss: Any, batches: Batches, what: str) -> None:
    """Dict data is cut into mini-batches along dimension 0: refuse a sequence that an `IterativeLoss` reads with
    time along that dimension (``series_dim=0``), which would be cut and shuffled along time, silently."""
    if batches.tensors is None:  # a DataLoader makes its own batches
        return
    for node in loss.nodes():
        if isinstance(node, IterativeLoss) and node.series_dim == 0:
            cut = [v for v in node.series_var if v in batches.tensors]
            if cut:
                raise ValueError(
                    f"fit: {node} reads {', '.join(cut)} time-major (series_dim=0, time first), but fit cuts "
                    f"{what} into mini-batches along dimension 0, which would cut and shuffle the time steps; "
                    "write it with IterativeLoss(..., series_dim=1) and give the sequences batch-first "
                    "(N x T x ...), or pass a DataLoader whose batches are whole sequences")


def _start_streams(model: Any, seed: int | None, parallel: bool) -> None:
    """Seed the model's random stream and shuffling generator at the start of a run."""
    if model.epoch == 0 and seed is not None:
        check_seed(seed, "fit")
        model.seed_streams(seed)
    if model._rng is None:  # no seed and no saved stream: one draw from the global generator starts it
        start = int(torch.randint(0, 2**62, ()).item()) if not parallel else ddp.common_seed()
        model._rng = torch.Generator().manual_seed(start).get_state()
    if model._shuffle is None:
        model._shuffle = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=_from(model._rng))))


@contextmanager
def _rank_stream(model: Any, shard: tuple[int, int]) -> Iterator[None]:
    """An epoch of a data-parallel run of more than one rank (``shard = (rank, world)``) drawing from a stream of this
    rank's own, and the model's common stream given back after it.

    The common stream (the same on every rank, and the one a checkpoint holds) takes one draw, the same on every rank;
    it seeds a generator whose ``world`` draws seed the ranks' CPU (and CUDA) streams for the epoch, rank ``r`` the
    ``r``-th. The ranks' draws are thus independent of each other (every rank drew the same stream: a GAN's global
    fake batch was ``world`` copies of one rank's), a run resumed from a checkpoint draws what the uninterrupted run
    drew on the same number of ranks, and one process (or a world of one) draws as before, from the common stream
    itself. The shuffling generator is a separate one, common to every rank (the shards depend on it)."""
    rank, world = shard
    if world == 1:
        yield
        return
    key = int(torch.randint(0, 2**62, ()).item())  # from the common stream: the same on every rank
    cuda = _cuda_index(model)
    common = torch.get_rng_state(), (torch.cuda.get_rng_state(cuda) if cuda is not None else None)
    seeds = torch.randint(0, 2**62, (world, 2), generator=torch.Generator().manual_seed(key))[rank].tolist()
    torch.set_rng_state(torch.Generator().manual_seed(seeds[0]).get_state())
    if cuda is not None:
        torch.cuda.set_rng_state(torch.Generator(device=f"cuda:{cuda}").manual_seed(seeds[1]).get_state(), cuda)
    try:
        yield
    finally:
        torch.set_rng_state(common[0])
        if cuda is not None:
            torch.cuda.set_rng_state(common[1], cuda)


def _from(state: torch.Tensor) -> torch.Generator:
    gen = torch.Generator()
    gen.set_state(state)
    return gen


def _cuda_index(model: Any) -> int | None:
    """The index of the CUDA device the model's parameters are on (None off a GPU)."""
    return (model.device.index or 0) if model.device.type == "cuda" else None


@contextmanager
def _own_stream(model: Any) -> Iterator[None]:
    """Run with the model's torch stream as the CPU generator and, on a GPU, the model's CUDA stream (seeded from the
    CPU stream when the run starts, then continued: it was seeded again at every fit call, so that a resumed run
    drew other numbers than the uninterrupted one), and give torch's global generators back their state afterwards."""
    cuda = _cuda_index(model)
    devices = [] if cuda is None else [cuda]
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(model._rng)
        if devices:
            if model._cuda_rng is None:
                torch.cuda.manual_seed(int(torch.randint(0, 2**62, ()).item()))
            else:
                torch.cuda.set_rng_state(model._cuda_rng, devices[0])
        try:
            yield
        finally:
            model._rng = torch.get_rng_state()
            if devices:
                model._cuda_rng = torch.cuda.get_rng_state(devices[0])


@contextmanager
def _data_parallel(model: Any) -> Iterator[None]:
    """Wrap the loss of the model (and of every model its step trains) in DDP for the run (parameters
    broadcast from rank 0: DDP's own, and those the optimizer trains beyond the distributions, a learned loss
    coefficient, which each step averages itself)."""
    models = [model, *model.submodels()]
    for m in models:
        m.parallel = ddp.wrap(m)
        ddp.broadcast_(m._loss_parameters())
    state = model._shuffle.get_state()
    ddp.broadcast_([state])
    model._shuffle.set_state(state)
    try:
        yield
    finally:
        for m in models:
            m.parallel, m.row_weight = None, 1.0


def _weigh(model: Any, weight: float) -> None:
    for m in (model, *model.submodels()):
        m.row_weight = weight


def _pass(model: Any, batches: Iterable[Batch], epoch: int, training: bool, parallel: bool, kept: str,
          dict_data: bool = True, batch_size: int = 0) -> tuple[float, dict[str, float]]:
    """One pass: the weighted mean loss and term means (a step per batch when ``training``). ``kept``: what holds
    after a non-finite loss, for its message (the checkpoint; after a validation pass, the epoch's state too).
    ``batch_size``: fit's, for the remedy named when batch normalisation fails on a step of one row."""
    total, count, sums = 0.0, 0, {}
    error: FloatingPointError | None = None
    for step, batch in enumerate(_lockstep(model, batches, parallel and training and not dict_data), 1):
        if parallel and training and dict_data:
            _weigh(model, batch.n * ddp.world_size() / batch.total)
        if batch.n == 0 and not training:
            continue
        try:
            if training:  # marked: a step that calls `train` (one `_mark_step` could not wrap too) gets the base step
                with _marking(model):
                    value, terms = model.step(batch.values)
            else:
                value, terms = model.evaluate(batch.values)
        except FloatingPointError as err:
            what, detail, outcome = (err.what, err.detail, err.outcome) if isinstance(err, NonFiniteStep) else (
                str(err), "", NOT_TAKEN)
            what = what if training else what.replace("the test loss", "the validation loss", 1)
            bad = first_nonfinite(batch.values, "the data", batch.rows)  # rows of the data, not the batch
            detail = detail if bad is None else bad
            if not training:  # fit says what holds after the epoch (``kept``), not the evaluation's "unchanged"
                outcome = ""
            where = f"at epoch {epoch}, {'step' if training else 'validation batch'} {step}"
            if parallel:
                where += f" on rank {ddp.rank()}"
            message = f"fit: {what} {where}; " + "; ".join(part for part in (detail, outcome, kept) if part)
            if training or not parallel:
                raise FloatingPointError(message) from None
            error = FloatingPointError(message)
            break
        except ValueError as err:
            if not training or not any(text in str(err) for text in _ONE_ROW_NORM):
                raise
            raise ValueError(_one_row_message(err, epoch, step, batch.n, dict_data, batch_size, kept)) from err
        total, count = total + batch.n * value, count + batch.n
        for key, v in terms.items():
            sums[key] = sums.get(key, 0.0) + batch.n * v
    if parallel:  # every rank reduces the same keys, whether or not it had a batch
        loss = model.loss_cls if training else model.test_loss_cls
        keys = list(dict.fromkeys([*loss.labelled_terms(), *model.extra_terms]))
        flags = [0.0] * ddp.world_size()
        flags[ddp.rank()] = float(error is not None)
        total, count, *rest = ddp.reduce_sums([total, count, *flags, *(sums.get(k, 0.0) for k in keys)],
                                              model.device)
        bad = [r for r, f in enumerate(rest[:len(flags)]) if f]
        if bad:
            raise error if error is not None else FloatingPointError(
                f"fit: the validation loss is non-finite on rank(s) {bad} at epoch {epoch}"
                + (f"; {kept}" if kept else ""))
        sums = dict(zip(keys, rest[len(flags):]))
    if count == 0:
        raise ValueError(f"fit: the {'training' if training else 'validation'} data yielded no batch")
    return total / count, {k: v / count for k, v in sums.items()}


# batch normalisation in training refusing a batch of one row: torch's BatchNorm, kizuna's flow batch norm
_ONE_ROW_NORM = ("Expected more than 1 value per channel when training",
                 "training needs more than one value per channel")


def _one_row_message(err: ValueError, epoch: int, step: int, rows: int, dict_data: bool, batch_size: int,
                     kept: str) -> str:
    """fit's message for a training step that batch normalisation refused (one value per channel): torch named
    neither the epoch nor the step nor a remedy, and only the layer's input, which may hold more rows than the batch
    (an IWAE decoder's k draws per row) or fewer."""
    if rows >= 2:  # the layer saw fewer rows than the batch has: neither remedy below helps
        remedy = ("the layer's input holds fewer rows than the batch (a network that draws or pools to one row): "
                  "batch normalisation cannot train there")
    elif not dict_data:
        remedy = ("give the DataLoader drop_last=True (it leaves out each epoch's last, smaller batch) or another "
                  "batch size")
    elif batch_size < 2:
        remedy = f"choose batch_size >= 2 (batch_size={batch_size} gives every step one row)"
    else:
        remedy = (f"pass fit(..., drop_last=True) (each epoch leaves out its last, smaller batch), or choose another "
                  f"batch_size than {batch_size} (one that leaves the last batch at least 2 rows)")
    taken = "" if step == 1 else (" (the epoch's earlier step was)" if step == 2 else
                                  f" (the epoch's {step - 1} earlier steps were)")
    return (f"fit: batch normalisation needs more than one value per channel in training, but the batch of epoch "
            f"{epoch}, step {step} has {rows} row{'' if rows == 1 else 's'} ({err}); this step was not taken{taken}; "
            f"{remedy}" + (f"; {kept}" if kept else ""))


def _lockstep(model: Any, batches: Iterable[Batch], uneven: bool) -> Iterator[Batch]:
    """The batches; with ``uneven`` (a data-parallel loader), every rank takes the same number of steps.

    Each step the ranks count, with one small all-reduce, how many still have a batch; a rank that has
    run out repeats its last batch with weight zero, and the others weight theirs by
    ``world / active``, so the averaged gradient is the mean of the active ranks' and every rank's
    optimizer takes every step (torch's ``Join`` would leave a finished rank's optimizer state behind).
    """
    if not uneven:
        yield from batches
        return
    items, last, world = iter(batches), None, ddp.world_size()
    while True:
        batch = next(items, None)
        active = ddp.reduce_sums([float(batch is not None)], model.device)[0]
        if active == 0:
            return
        if batch is None:
            if last is None:
                raise ValueError(f"fit(distributed): rank {ddp.rank()} has no batch at all; give every rank data")
            _weigh(model, 0.0)
            yield Batch(0, last.values, last.rows, last.total)
        else:
            _weigh(model, world / active)
            last = batch
            yield batch


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())
