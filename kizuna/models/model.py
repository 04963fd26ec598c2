"""`Model`: an optimiser over the distributions of a loss: one step per call, or `fit` over epochs.

.. code-block:: python

    model = Model(loss, distributions=[p, q], optimizer=torch.optim.Adam,
                  optimizer_params={"lr": 1e-3})
    model.train({"x": x})   # one gradient step, returns the loss as a float
    model.test({"x": x})    # the loss without gradients
    history = model.fit({"x": x_train}, epochs=10, valid={"x": x_valid}, checkpoint="run.pt")
"""

from __future__ import annotations

import copy
import math
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kizuna.distributions.base import batch_size_of
from kizuna.losses.base import Loss
from kizuna.models import checkpoint as ckpt
from kizuna.models import distributed as ddp
from kizuna.models.checkpoint import History
from kizuna.models.speed import Evaluator, ParameterList, all_finite, check_compile, term_values


class Batches:
    """The mini-batches ``fit`` trains on: ``(rows, dict)`` pairs moved to the model's device.

    ``data`` is a dict of tensors cut along their first dimension (numbers and 0-d tensors
    are passed to every batch as they are), or a re-iterable of dicts such as a ``DataLoader``.
    Names are checked against ``needed`` up front (for a loader, on its dataset's first item
    when that is what its batches are built from) and again on every loader batch.
    """

    def __init__(self, data: Any, what: str, needed: Sequence[str], batch_size: int) -> None:
        self.what, self.needed, self.batch_size = what, list(needed), batch_size
        self.tensors: dict[str, Any] | None = None
        self.loader: Iterable[Any] | None = None
        if isinstance(data, Mapping):
            self.tensors = _check_tensors(data, what)
            self._check_names(self.tensors)
        elif isinstance(data, (torch.Tensor, np.ndarray)):
            raise TypeError(f"fit: {what} is a bare {type(data).__name__}; kizuna needs variable names: "
                            f"pass a dict such as {{'x': {what}}}")
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
            self.loader = data
            first = _peek(data)
            if first is not None:
                self._check_item(first, "its first item")
        else:
            raise TypeError(f"fit: {what} must be a dict of tensors or a DataLoader of dicts, "
                            f"got {type(data).__name__}")

    def _check_names(self, keys: Mapping[str, Any]) -> None:
        missing = [v for v in self.needed if v not in keys]
        if missing:
            given = ", ".join(sorted(keys)) or "nothing"
            raise ValueError(f"fit: the loss needs {', '.join(missing)} in {self.what}, but it has {given}")

    def _check_item(self, item: Any, where: str) -> None:
        if not isinstance(item, Mapping):
            raise TypeError(
                f"fit: {self.what} yields {type(item).__name__} ({where}); kizuna needs variable names: make the "
                "dataset return dicts such as {'x': x, 'y': y} (a TensorDataset returns tuples), or pass the "
                "dict of tensors {'x': x, 'y': y} to fit directly")
        self._check_names(item)

    def iterate(self, generator: torch.Generator | None, device: torch.device,
                shard: tuple[int, int] = (0, 1)) -> Iterable[tuple[int, dict[str, Any]]]:
        """Yield ``(rows, batch)``; dict data is permuted with ``generator`` when one is given.

        With ``shard=(rank, world)`` dict data is cut into global batches of ``batch_size * world``
        rows and this rank gets rows ``rank, rank + world, ...`` of each (``DistributedSampler``'s
        interleaving, without its padding; a rank may get 0 rows of the last batch). A loader is
        expected to shard itself (a ``DistributedSampler``).
        """
        if self.tensors is None:
            assert self.loader is not None
            for i, item in enumerate(self.loader, 1):
                self._check_item(item, f"batch {i}")
                batch = {k: _to(v, device) for k, v in item.items()}
                yield batch_size_of(batch) or 1, batch
            return
        n = next(v.shape[0] for v in self.tensors.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        rank, world = shard
        for start in range(0, n, self.batch_size * world):
            stop = min(start + self.batch_size * world, n)
            lo, hi, rows = start, stop, order
            if world > 1:  # this rank's rows of the global batch, as positions in the epoch's order
                index = torch.arange(start + rank, stop, world)
                lo, hi, rows = 0, len(index), (order[index] if order is not None else index)
            batch = {k: _to(_rows(v, lo, hi, rows), device) for k, v in self.tensors.items()}
            yield hi - lo, batch


def _check_tensors(data: Mapping[str, Any], what: str) -> dict[str, Any]:
    out = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in data.items()}
    sizes = {k: v.shape[0] for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if not sizes:
        given = ", ".join(map(str, out)) or "nothing"
        raise ValueError(f"fit: {what} has no tensor with a batch dimension (given: {given})")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: {n}" for k, n in sizes.items())
        raise ValueError(f"fit: the variables of {what} must share their first (batch) dimension, got {listed}")
    if next(iter(sizes.values())) == 0:
        raise ValueError(f"fit: {what} has no rows")
    return out


def _rows(value: Any, start: int, stop: int, order: torch.Tensor | None) -> Any:
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    if order is None:
        return value[start:stop]
    return value[order[start:stop].to(value.device)]


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _peek(data: Iterable[Any]) -> Any:
    """The first item of ``data`` without iterating it (iterating would consume RNG draws)."""
    from torch.utils.data import DataLoader, IterableDataset, default_collate, default_convert

    if isinstance(data, DataLoader):
        dataset = data.dataset
        if data.collate_fn not in (default_collate, default_convert) or isinstance(dataset, IterableDataset):
            return None  # a custom collate may build the dicts itself: checked on the first batch
        try:
            return dataset[0] if len(dataset) > 0 else None  # type: ignore[arg-type]
        except (TypeError, IndexError, KeyError, NotImplementedError):
            return None
    if isinstance(data, Sequence) and len(data) > 0:
        return data[0]
    return None


class Model:
    """Trains the parameters of ``distributions`` to minimise ``loss``.

    Args:
        loss: the training loss (must evaluate to a scalar, e.g. ``(...).mean()``).
        test_loss: the loss ``test`` reports (default: ``loss``).
        distributions: the modules whose parameters are optimised (default: every
            distribution the loss refers to).
        optimizer: a ``torch.optim.Optimizer`` class.
        optimizer_params: its keyword arguments.
        clip_grad_norm, clip_grad_value: optional gradient clipping.
        compile: run each step's loss evaluation (forward and backward) under ``torch.compile``:
            ``True``, or a dict of its keyword arguments (e.g. ``{"mode": "max-autotune"}``).
            Where compilation is unavailable (no C compiler, unsupported platform) a warning
            says why and training continues uncompiled.

    Every step evaluates the loss through a plan built once per loss and set of input names
    (`kizuna.losses.plan`), so the formula costs no Python work per step beyond the arithmetic.

    >>> import torch
    >>> from torch import nn
    >>> from kizuna.distributions import Normal
    >>> from kizuna.losses import LogProb
    >>> p = Normal(var=["x"], loc=nn.Parameter(torch.zeros(1)), scale=1.0)
    >>> model = Model(-LogProb(p).mean(), optimizer_params={"lr": 0.1})
    >>> history = model.fit({"x": torch.full((20, 1), 3.0)}, epochs=100, batch_size=10, quiet=True, seed=0)
    >>> len(history["train"]), round(p.loc_.item(), 2), round(history["log p(x)"][-1], 4)
    (100, 3.0, -0.9189)
    """

    def __init__(
        self,
        loss: Loss,
        test_loss: Loss | None = None,
        distributions: Sequence[nn.Module] | None = None,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_params: Mapping[str, Any] | None = None,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        compile: bool | Mapping[str, Any] = False,
    ) -> None:
        if not isinstance(loss, Loss):
            raise TypeError(f"Model needs a kizuna Loss, got {type(loss).__name__}")
        self.loss_cls = loss
        self.test_loss_cls = test_loss if test_loss is not None else loss
        dists = list(distributions) if distributions is not None else loss.distributions()
        self.distributions = nn.ModuleList(dists)
        params = [p for p in self.distributions.parameters() if p.requires_grad]
        if not params:
            raise ValueError("Model: the distributions have no trainable parameters")
        self.optimizer = optimizer(params, **dict(optimizer_params or {}))
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self._training: bool | None = None
        self._params = params
        self.epoch = 0  # epochs completed by fit (restored by load)
        self.history = History()
        self._shuffle: torch.Generator | None = None  # fit's shuffling stream (saved in checkpoints)
        self._best: dict[str, Any] | None = None  # best validation epoch, value and parameters
        self._evaluator = Evaluator(check_compile(compile))  # plans (and compiled steps) per loss
        self._all_params = ParameterList()  # what the fused gradient check reads

    def __str__(self) -> str:
        names = ", ".join(str(d.prob_text) for d in self.distributions)
        return f"Distributions (for training): {names}\nLoss function: {self.loss_cls}\nOptimizer: {self.optimizer}"

    def _scalar(self, loss: torch.Tensor, which: Loss) -> float:
        """The loss as a float; an error if it is not a finite scalar."""
        if loss.dim() != 0:
            raise ValueError(f"the loss {which} evaluates to shape {tuple(loss.shape)}; reduce it, e.g. with .mean()")
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss {which} is {value}")
        return value

    def _set_mode(self, training: bool) -> None:
        # switching walks every submodule: do it when train() and test() alternate, not per step
        if self._training is not training:
            self.distributions.train(training)
            self._training = training

    def _update(self) -> None:
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm)
        if self.clip_grad_value is not None:
            nn.utils.clip_grad_value_(self._params, self.clip_grad_value)
        self.optimizer.step()

    def train(self, x_dict: Mapping[str, Any] | None = None) -> float:
        """One optimisation step on ``x_dict``; returns the loss before the step."""
        self._set_mode(True)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._evaluator(self.loss_cls, x_dict, terms=False)[0]
        value = self._scalar(loss, self.loss_cls)
        loss.backward()
        self._update()
        return value

    def test(self, x_dict: Mapping[str, Any] | None = None) -> float:
        """The test loss on ``x_dict`` without gradients."""
        self._set_mode(False)
        with torch.no_grad():
            return self._scalar(self._evaluator(self.test_loss_cls, x_dict, terms=False)[0], self.test_loss_cls)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
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
    ) -> History:
        """Train for ``epochs`` more epochs; returns the (cumulative) `History`.

        Each epoch takes one `train`-like step per mini-batch and records the batch-size-weighted
        means of the loss and of its named terms, taken from the same evaluation as the step:

        .. math:: \\bar{\\mathcal{L}}_{epoch} = \\frac{\\sum_b n_b \\mathcal{L}(x_b)}{\\sum_b n_b}

        Args:
            data: a dict of tensors sharing their first (batch) dimension, cut into
                mini-batches of ``batch_size``; or a ``DataLoader`` (any re-iterable) yielding dicts.
            epochs: how many epochs to add (``model.epoch`` counts them over calls and resumes).
            batch_size: mini-batch size for dict data (a DataLoader batches itself).
            valid: validation data (same forms); its `test` loss is recorded after every epoch.
            shuffle: reshuffle dict data every epoch with fit's own generator.
            quiet: hide the progress bar; ``None``: hide it when stderr is not a terminal.
            patience: with ``valid``: stop after this many epochs without a strictly lower
                validation loss, and restore the parameters of the best epoch.
            checkpoint: a path; the model is saved there (see `save`) after every finished epoch.
            seed: seeds python ``random``, numpy, torch (CPU and CUDA) and the shuffling
                generator when the run starts (``model.epoch == 0``). A model that has trained or
                was loaded from a checkpoint continues its saved streams instead, so re-running
                the same script after an interruption reproduces the uninterrupted run.
            distributed: train data-parallel over ``torch.distributed`` ranks (see
                `kizuna.models.distributed` and docs/distributed.md). ``None``: when launched by
                ``torchrun`` with more than one process, or a process group is initialised.
                Every rank passes the same full dict data; each step, rank ``r`` takes rows
                ``r, r + world, ...`` of a global batch of ``batch_size * world`` rows
                (``batch_size`` stays per process), gradients are averaged over the global batch,
                the recorded losses are means over all ranks' rows (the same `History` on every
                rank), and only rank 0 shows progress and writes ``checkpoint`` (the others wait
                for it). A ``DataLoader`` must shard itself with a ``DistributedSampler``;
                ``set_epoch(epoch)`` is called on it every epoch.

        Raises:
            RuntimeError: ``distributed=True`` without a process group or a torchrun launch.
            FloatingPointError: the loss or a gradient went non-finite (data-parallel: on any
                rank, and then every rank raises). The message names the
                terms that did and the epoch / step; the bad step is not taken, so the parameters
                and optimizer are those after the last finite step, and the checkpoint on disk
                (the last finished epoch) is left untouched.
        """
        if epochs < 0 or batch_size < 1:
            raise ValueError(f"fit needs epochs >= 0 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}")
        if patience is not None and (valid is None or patience < 1):
            raise ValueError("fit: patience (early stopping) needs valid data and patience >= 1")
        train_data = Batches(data, "data", self.loss_cls.input_var, batch_size)
        valid_data = Batches(valid, "valid", self.test_loss_cls.input_var, batch_size) if valid is not None else None
        sync = ddp.DataParallel.setup(self, distributed, [train_data, valid_data])
        self._start_streams(seed)
        if sync is not None:
            sync.broadcast_state(self)
        shard = sync.shard if sync is not None else (0, 1)
        device = self._params[0].device
        quiet = quiet if quiet is not None else not _stderr_is_terminal()
        quiet = quiet or (sync is not None and not sync.main)
        with tqdm(range(epochs), desc="fit", unit="epoch", disable=quiet, dynamic_ncols=True) as bar:
            for _ in bar:
                epoch = self.epoch + 1
                gen = self._shuffle if shuffle else None
                ddp.set_epoch(train_data.loader, epoch)
                train_loss, terms = self._run(train_data.iterate(gen, device, shard), epoch, True, checkpoint, sync)
                valid_loss, valid_terms = math.nan, {}
                if valid_data is not None:
                    valid_loss, valid_terms = self._run(valid_data.iterate(None, device, shard), epoch, False,
                                                        checkpoint, sync)
                self.epoch = epoch
                self.history.append(epoch, train_loss, valid_loss, terms, valid_terms)
                stop = valid_data is not None and self._early_stop(epoch, valid_loss, patience)
                if checkpoint is not None:
                    if sync is None or sync.main:
                        self.save(checkpoint)
                    if sync is not None:
                        ddp.barrier()  # no rank goes on (and may read the file) before it is complete
                shown = {"train": f"{train_loss:.4g}"}
                if valid_data is not None:
                    shown["valid"] = f"{valid_loss:.4g}"
                bar.set_postfix(shown)
                if stop:
                    break
        return self.history

    def _start_streams(self, seed: int | None) -> None:
        if self.epoch == 0 and seed is not None:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            self._shuffle = torch.Generator().manual_seed(seed)
        if self._shuffle is None:
            self._shuffle = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))

    def _run(self, batches: Iterable[tuple[int, dict[str, Any]]], epoch: int, training: bool,
             checkpoint: Any, sync: ddp.DataParallel | None = None) -> tuple[float, dict[str, float]]:
        """One pass: the weighted mean loss and term means (a step per batch when ``training``)."""
        if sync is not None:  # synchronised steps and means over every rank's rows
            return sync.run(self, batches, epoch, training, checkpoint, _nonfinite_message)
        total, count, term_sums = 0.0, 0, {}
        for step, (n, batch) in enumerate(batches, 1):
            if training:
                value, terms = self._fit_step(batch, epoch, step, checkpoint)
            else:
                value, terms = self._valid_step(batch, epoch, step)
            total, count = total + n * value, count + n
            for key, v in terms.items():
                term_sums[key] = term_sums.get(key, 0.0) + n * v
        if count == 0:
            raise ValueError(f"fit: the {'training' if training else 'validation'} data yielded no batch")
        return total / count, {k: v / count for k, v in term_sums.items()}

    def _evaluate(self, loss_cls: Loss, batch: Mapping[str, Any]) -> tuple[torch.Tensor, float, dict[str, float]]:
        loss, means, labels = self._evaluator(loss_cls, batch, terms=True)
        if loss.dim() != 0:
            raise ValueError(f"the loss {loss_cls} evaluates to shape {tuple(loss.shape)}; "
                             "reduce it, e.g. with .mean()")
        values = term_values(loss, means)  # one device-to-host copy for the loss and every term
        return loss, values[0], dict(zip(labels, values[1:]))

    def _fit_step(self, batch: Mapping[str, Any], epoch: int, step: int, checkpoint: Any
                  ) -> tuple[float, dict[str, float]]:
        self._set_mode(True)
        self.optimizer.zero_grad(set_to_none=True)
        loss, value, terms = self._evaluate(self.loss_cls, batch)
        where = f"at epoch {epoch}, step {step}"
        if not math.isfinite(value):
            raise FloatingPointError(_nonfinite_message(f"the loss is {value} {where}", terms, self, checkpoint))
        loss.backward()
        bad = [] if all_finite([p.grad for p in self._all_params(self.distributions) if p.grad is not None]) else [
            name for name, p in ckpt.named_parameters(self.distributions)
            if p.grad is not None and not bool(torch.isfinite(p.grad).all())]  # named only when the fused check fails
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(_nonfinite_message(
                f"the gradient of {', '.join(bad)} is non-finite {where} (the loss {value:.6g} is finite)",
                terms, self, checkpoint))
        self._update()
        return value, terms

    def _valid_step(self, batch: Mapping[str, Any], epoch: int, step: int) -> tuple[float, dict[str, float]]:
        self._set_mode(False)
        with torch.no_grad():
            _, value, terms = self._evaluate(self.test_loss_cls, batch)
        if not math.isfinite(value):
            raise FloatingPointError(_nonfinite_message(
                f"the validation loss is {value} at epoch {epoch}, validation batch {step}", terms, self, None))
        return value, terms

    def _early_stop(self, epoch: int, valid_loss: float, patience: int | None) -> bool:
        """Track the best validation epoch; with ``patience`` run out, restore it and say stop."""
        if self._best is None or valid_loss < self._best["value"]:
            state = {k: v.detach().clone() for k, v in self.distributions.state_dict().items()}
            self._best = {"epoch": epoch, "value": valid_loss, "state": state}
        self.history.best_epoch = self._best["epoch"]
        if patience is None or epoch - self._best["epoch"] < patience:
            return False
        self.distributions.load_state_dict(self._best["state"])
        self.history.stopped_epoch = epoch
        return True

    # ------------------------------------------------------------ checkpoints
    def save(self, path: str | PathLike[str]) -> None:
        """Write `state_dict` as a checkpoint file (see `kizuna.models.checkpoint`).

        The file is written next to ``path`` and renamed over it, so an interruption never
        leaves a half-written checkpoint. In a data-parallel run every rank holds the same state:
        save from rank 0 only (``if kizuna.models.distributed.is_main(): model.save(path)``), as
        ``fit`` does with its ``checkpoint``.
        """
        ckpt.save(path, self.state_dict())

    def load(self, path: str | PathLike[str]) -> None:
        """Restore a checkpoint written by `save` into a Model built the same way (see `load_state_dict`).

        Raises:
            ValueError: the file is not a kizuna checkpoint, or see `load_state_dict`.
        """
        self.load_state_dict(ckpt.load(path), source=str(path))

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the next step: parameters, optimizer, epoch, history, best
        validation epoch, fit's shuffling generator and the global RNG states.

        Subclasses with more state (e.g. a second optimizer) extend this and `load_state_dict`.
        """
        return {
            "distributions": self.distributions.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_class": ckpt.class_name(self.optimizer),
            "epoch": self.epoch,
            "history": self.history.to_dict(),
            "best": copy.copy(self._best),
            "shuffle": None if self._shuffle is None else self._shuffle.get_state(),
            "rng": ckpt.rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any], source: str = "the checkpoint") -> None:
        """Restore `state_dict`, including the global RNG states (python, numpy, torch CPU / CUDA),
        so that training continues exactly as if it had not been interrupted.

        Raises:
            ValueError: its parameters do not fit these distributions (the message lists missing /
                unexpected names and shape mismatches), or it was trained with another optimizer class.
        """
        ckpt.check_parameters(self.distributions, state["distributions"], source)
        if state["optimizer_class"] != ckpt.class_name(self.optimizer):
            raise ValueError(f"{source} was trained with {state['optimizer_class']}, "
                             f"this model uses {ckpt.class_name(self.optimizer)}")
        self.distributions.load_state_dict(state["distributions"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = History.from_dict(state["history"])
        self._best = state["best"]
        if state["shuffle"] is not None:
            self._shuffle = torch.Generator()
            self._shuffle.set_state(state["shuffle"])
        ckpt.set_rng_state(state["rng"])
        self._training = None


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _nonfinite_message(what: str, terms: Mapping[str, float], model: Model, checkpoint: Any) -> str:
    bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
    if bad:
        detail = "non-finite terms: " + "; ".join(f"{k} = {v}" for k, v in bad.items())
    elif terms:
        detail = "every term is finite (" + "; ".join(f"{k} = {v:.6g}" for k, v in terms.items()) + ")"
    else:
        detail = "the loss has no separate terms"
    kept = "the step was not taken: the parameters are those after the last finite step"
    if checkpoint is not None:
        kept += f"; the checkpoint {checkpoint} (epoch {model.epoch}) is untouched"
    return f"fit: {what}; {detail}; {kept}"
