"""Training: the report's algorithm 1 with checkpoints, resumption, divergence handling and
metrics, in one process or on many (``torchrun``, see :mod:`contham.experiments.distributed`).

:func:`fit` trains any classifier on any pair of datasets; :func:`run` builds the data and the
network of a :class:`~contham.experiments.RunConfig` and fits it into a run folder:

* ``config.json``: the resolved run config;
* ``history.json``: one entry per epoch (train/test loss and accuracy, lr, seconds, field
  evaluations per batch for ODE and Hamiltonian blocks, autograd memory, peak device memory);
* ``metrics.json``: status (``running``, ``finished``, ``diverged``, ``interrupted``), final and
  best accuracies, parameters, confusion matrix;
* ``checkpoint.pt``: everything needed to resume after the last finished epoch.

Files are written atomically (:mod:`contham.experiments.files`) by rank 0 alone, under a lock
that keeps a second process out of the folder. Run the same config into the same folder again
and it resumes after the last checkpoint; the final numbers equal those of an uninterrupted run
(same seed, same device, same number of ranks). A finished run is not rerun.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .._checks import check_bool, check_int
from ..analysis import GradientNorms
from ..config import LearningParameters
from ..data import POINT_SETS, ImageSet, balanced_subset, dataset_info, load_image_set, point_set, tensors_of
from ..models import build, count_parameters
from ..regularization import smoothness
from . import distributed
from .accelerate import (
    Accelerator,
    CompiledOrEager,
    autocast,
    check_amp,
    check_compile,
    grad_scaler,
    memory_format,
    to_channels_last,
)
from .distributed import GlobalBatches, Ranks
from .files import (
    RunFolderError,
    RunLock,
    discard_run,
    load_checkpoint,
    prepare_folder,
    read_json,
    save_checkpoint,
    write_json,
)
from .instruments import SavedTensors, field_evaluations, peak_memory_mb, reset_peak_memory
from .runconfig import RunConfig, check_stops

DIVERGENCE_LOSS = 1e15
"""A training loss above this (or not finite) ends a run as ``diverged`` (as in the report)."""

STOPPED = "stopped_early"
"""Status of a run that an early-stopping scheduler ended (see :mod:`contham.experiments.ray_runner`)."""

DONE = ("finished", "diverged", STOPPED)
"""Statuses of a run that is not trained again (without ``restart``)."""


def select_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; or an explicit ``"cpu"``/``"cuda[:i]"``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:index]'; got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def make_optimizer(model: nn.Module, learning: LearningParameters) -> torch.optim.Optimizer:
    """SGD with momentum or Adam with betas = ``momentum``; weight decay ``wd`` inside. With
    ``learning.inner_steps`` the classifier is left out (it is fitted on its own)."""
    momentum = learning.momentum  # validate(): a float for SGD, a pair for Adam
    params = list(model.parameters())
    if learning.inner_steps:
        own = {id(p) for p in _classifier(model).parameters()}
        params = [p for p in params if id(p) not in own]
    if learning.optimiser == "SGD":
        assert isinstance(momentum, float)
        return torch.optim.SGD(params, learning.lr, momentum=momentum, weight_decay=learning.wd)
    assert isinstance(momentum, tuple)
    return torch.optim.Adam(params, learning.lr, betas=momentum, weight_decay=learning.wd)


def adam_step_epoch_parameters(
    model: nn.Module, optimizer: torch.optim.Optimizer, learning: LearningParameters
) -> list[Tensor]:
    """The parameters of ``model`` that ``optimizer`` trains and ``learning.adam_step_epoch``
    names; an error names the trained parameters when the patterns match none of them."""
    if not learning.adam_step_epoch:
        return []
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = [(name, p) for name, p in model.named_parameters() if id(p) in trained]
    patterns = learning.adam_step_epoch
    chosen: list[Tensor] = [p for name, p in named if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)]
    if not chosen:
        raise ValueError(
            f"learning.adam_step_epoch={patterns!r} names none of the trained parameters "
            f"({', '.join(name for name, _ in named)})"
        )
    return chosen


def set_adam_step(optimizer: torch.optim.Optimizer, params: list[Tensor], step: int) -> None:
    """Set Adam's step count of ``params`` to ``step`` (its next update then uses t = step + 1);
    parameters not yet updated keep their fresh state (t = 1 at their first update)."""
    for p in params:
        state = optimizer.state.get(p)
        if state:
            state["step"].fill_(step)


def _classifier(model: nn.Module) -> Any:
    classifier = getattr(model, "classifier", None)
    if not callable(getattr(classifier, "fit", None)) or not callable(getattr(model, "features", None)):
        raise ValueError(
            "learning.inner_steps > 0 needs a network with a `features` method and a `classifier` with a `fit` "
            f"method (e.g. hdnn_2d); got {type(model).__name__}"
        )
    return classifier


def fit_classifier(
    model: nn.Module, features: Iterable[tuple[Tensor, Tensor]], learning: LearningParameters, steps_per_batch: int
) -> None:
    """Fit ``model.classifier`` afresh to batches ``(model.features(x), y)`` (frozen: detached),
    ``steps_per_batch`` Adam iterations per batch at ``learning.lr`` and betas ``learning.momentum``,
    with ``learning.classifier_penalty`` (the H-DNN 2-D protocol, see ``learning.inner_steps``)."""
    betas = learning.momentum if isinstance(learning.momentum, tuple) else (0.9, 0.999)
    frozen = ((f.detach(), y) for f, y in features)
    _classifier(model).fit(frozen, steps_per_batch, learning.lr, betas, learning.classifier_penalty)


def epochs_for(learning: LearningParameters, train_size: int) -> int:
    """Report algorithm 1: ``ceil(training_steps_max * batch_size / train_size)``."""
    return max(1, math.ceil(learning.training_steps_max * learning.batch_size / train_size))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 500,
    num_classes: int | None = None,
    ranks: Ranks | None = None,
    options: Accelerator | None = None,
) -> dict[str, Any]:
    """Loss, accuracy and (with ``num_classes``) the confusion matrix (rows: true class) on
    ``dataset``. In a distributed run (``ranks``) each rank evaluates its share and the sums are
    reduced; ``options``: the run's mixed precision and memory format."""
    ranks = ranks or Ranks()
    options = options or Accelerator()
    model.eval()
    classes = num_classes or 1
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, correct
    total = 0
    confusion = torch.zeros(classes * classes, dtype=torch.long, device=device)
    for x, y in _in_order(dataset, batch_size, device, ranks):
        x = memory_format(x, options.channels_last)
        with autocast(device, options.amp):
            out = model(x)
        predicted = out.argmax(1)
        sums += torch.stack([F.cross_entropy(out, y, reduction="sum").double(), (predicted == y).sum().double()])
        total += len(y)
        if num_classes:
            confusion += torch.bincount(y * num_classes + predicted, minlength=classes * classes)
    loss, correct, total = distributed.all_reduce_sum(torch.cat([sums, sums.new_tensor([total])]), ranks).tolist()
    result = {"loss": loss / total, "accuracy": correct / total}
    if num_classes:
        result["confusion"] = distributed.all_reduce_sum(confusion, ranks).view(classes, classes).tolist()
    return result


def _in_order(dataset: Dataset, batch_size: int, device: torch.device, ranks: Ranks) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's share of ``dataset`` in order, in batches of ``batch_size``, on ``device``, with
    no augmentation."""
    mine = distributed.shard_indices(len(cast(Sized, dataset)), ranks)
    tensors = tensors_of(dataset)
    if isinstance(dataset, ImageSet):
        batches: Iterable[tuple[Tensor, Tensor]] = (dataset.batch(part, device) for part in mine.split(batch_size))
    elif tensors is not None:
        batches = ((tensors[0][part], tensors[1][part]) for part in mine.split(batch_size))
    else:
        batches = DataLoader(Subset(dataset, mine.tolist()) if ranks.distributed else dataset, batch_size)
    for x, y in batches:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def fit(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    learning: LearningParameters,
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    max_batches: int | None = None,
    seed: int = 0,
    device: str = "auto",
    num_classes: int | None = None,
    eval_batch_size: int = 500,
    progress: bool = True,
    config: dict[str, Any] | None = None,
    gradient_norms: bool = False,
    stop_at_accuracy: float | None = None,
    max_train_seconds: float | None = None,
    sync_batchnorm: bool = False,
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
    wait: bool = False,
    restart: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` by the report's algorithm 1 into ``run_dir``; return the final metrics.

    Each epoch: shuffled global batches (a fresh generator seeded by ``seed`` and the epoch, so a
    resumed run sees the same batches), cross-entropy plus ``smoothness(model, alpha, b_in_reg,
    h_div, smoothness_of)``, an optimiser step, then the lr decay if the epoch is in
    ``lr_decay_at``; evaluation on ``test_set``. Training loss and accuracy are the running means
    over the epoch's batches.

    Under ``torchrun`` (several ranks) the model is wrapped in DistributedDataParallel, each rank
    trains on its shard of every global batch and the metrics are reduced over the ranks; the
    numbers equal a 1-process run's up to rounding (see :mod:`contham.experiments.distributed`).

    Args:
        epochs: default from ``training_steps_max`` (see :func:`epochs_for`).
        max_batches: stop each epoch after this many batches (short runs).
        num_classes: for the confusion matrix (default: the model's output width).
        config: saved as ``config.json`` and compared on resumption.
        gradient_norms: record, per epoch, the mean gradient norm of every block's output state
            and of every parameter (:class:`~contham.analysis.GradientNorms`) in the history.
        stop_at_accuracy: finish after the first epoch whose test accuracy reaches this
            (time-to-accuracy studies); max_train_seconds: finish after the epoch in which the
            training time (evaluation excluded) reaches this. ``metrics["stop_reason"]`` says
            which ended the run: "epochs", "accuracy" or "time".
        sync_batchnorm: in a distributed run, batch norm with global-batch statistics.
        amp: mixed precision None, "bf16" or "fp16" (see :mod:`contham.experiments.accelerate`).
        channels_last: the NHWC memory layout.
        compile: ``torch.compile`` (true or a backend name).
        wait: if another process holds ``run_dir``, wait for it instead of raising
            :class:`~contham.experiments.files.RunBusy`.
        restart: discard what ``run_dir`` holds (a broken or unwanted run) and start afresh.
        on_epoch: called on rank 0 with each epoch's history entry once its files are written
            (e.g. to report to a Ray Tune scheduler).

    Raises:
        ValueError: bad arguments; :class:`~contham.experiments.files.RunFolderError` (a
            ValueError) for a run folder that cannot be read or written or is in use.
    """
    learning.validate()
    check_stops(stop_at_accuracy, max_train_seconds)
    options = Accelerator(check_amp(amp), check_bool("channels_last", channels_last), check_compile(compile))
    epochs = epochs_for(learning, len(cast(Sized, train_set))) if epochs is None else check_int("epochs", epochs)
    if max_batches is not None:
        check_int("max_batches", max_batches)
    ranks = distributed.ranks_from_env()
    dev = distributed.rank_device(select_device(device), ranks)
    distributed.setup(ranks, dev)
    if learning.inner_steps and ranks.distributed:
        raise ValueError(
            "learning.inner_steps > 0 (the H-DNN 2-D protocol) runs in one process only; run without torchrun"
        )
    if learning.batch_size < ranks.world_size:
        raise ValueError(
            f"learning.batch_size must be at least the number of ranks ({ranks.world_size}); got {learning.batch_size}"
        )
    run_dir = Path(run_dir)
    with _lock(run_dir, ranks, wait):
        if restart and ranks.main:
            discard_run(run_dir)
        distributed.barrier(ranks)
        return _fit_locked(
            model, train_set, test_set, learning, run_dir, ranks, dev, epochs, max_batches, seed, num_classes,
            eval_batch_size, progress and ranks.main, config or {}, gradient_norms, stop_at_accuracy,
            max_train_seconds, sync_batchnorm, options, on_epoch,
        )  # fmt: skip


def _different_run(run_dir: Path) -> RunFolderError:
    return RunFolderError(f"run_dir={str(run_dir)!r} holds a different run; use another folder or --restart")


def _check_same_run(run_dir: Path, config: dict[str, Any]) -> None:
    """A finished run is read back only for the config it was trained with."""
    path = run_dir / "config.json"
    if path.exists() and read_json(path) != config:
        raise _different_run(run_dir)


@contextlib.contextmanager
def _lock(run_dir: Path, ranks: Ranks, wait: bool) -> Any:
    """Rank 0 holds the run folder's lock; every rank raises if rank 0 could not take it."""
    with contextlib.ExitStack() as held:
        error = None
        if ranks.main:
            try:
                held.enter_context(RunLock(run_dir, wait=wait))
            except ValueError as err:
                error = err
        error = distributed.broadcast(error, ranks)
        if error is not None:
            raise error
        yield


def _fit_locked(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    learning: LearningParameters,
    run_dir: Path,
    ranks: Ranks,
    dev: torch.device,
    epochs: int,
    max_batches: int | None,
    seed: int,
    num_classes: int | None,
    eval_batch_size: int,
    progress: bool,
    config: dict[str, Any],
    gradient_norms: bool,
    stop_at_accuracy: float | None,
    max_train_seconds: float | None,
    sync_batchnorm: bool,
    options: Accelerator,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    metrics_path, checkpoint_path = run_dir / "metrics.json", run_dir / "checkpoint.pt"
    if metrics_path.exists():
        previous = read_json(metrics_path)
        if not isinstance(previous, dict) or "status" not in previous:
            raise RunFolderError(f"{str(metrics_path)!r} is not a contham metrics file; use --restart to start afresh")
        if previous["status"] in DONE:
            _check_same_run(run_dir, config)
            return previous
    model.to(dev)
    if options.channels_last:
        to_channels_last(model)
    if sync_batchnorm and ranks.distributed:
        model = distributed.convert_sync_batchnorm(model, dev)
    optimizer = make_optimizer(model, learning)
    epoch_counted = adam_step_epoch_parameters(model, optimizer, learning)
    scaler = grad_scaler(dev, options.amp)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, learning.lr_decay_at, learning.lr_decay)
    history: list[dict[str, Any]] = []
    start, confusion = 0, None
    classes = num_classes or _output_width(model, test_set, dev)
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, map_location=dev)
        if state.get("config") != config:
            raise _different_run(run_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        history, start, confusion = state["history"], state["epoch"], state["confusion"]
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # older checkpoints: one dict
        _set_rng(rng[ranks.rank] if len(rng) == ranks.world_size else rng[0])
    else:
        seed_everything(seed)
    distributed.barrier(ranks)  # every rank has read the folder before rank 0 writes to it
    # what the batches run through: the network, or (inner fits) its features, which the fits read
    trained = Features(model) if learning.inner_steps else distributed.wrap(model, dev, ranks)
    if options.compile:
        trained = CompiledOrEager(trained, options.compile)
    metrics: dict[str, Any] = {"status": "running", "epochs": epochs, "parameters": count_parameters(model)}
    if ranks.distributed:
        metrics["world_size"] = ranks.world_size
    if ranks.main:
        write_json(run_dir / "config.json", config)
        write_json(metrics_path, {**metrics, "epochs_done": start})
    try:
        for epoch in range(start + 1, epochs + 1):
            hooks = GradientNorms(model) if gradient_norms else None
            try:
                entry = _train_epoch(
                    trained, model, train_set, learning, optimizer, dev, ranks, seed, epoch, max_batches, progress,
                    epochs, options, scaler, epoch_counted,
                )  # fmt: skip
            finally:
                if hooks is not None:
                    hooks.remove()
            if hooks is not None:
                entry["gradient_norms"] = {k: sum(v) / len(v) for k, v in hooks.history.items()}
            if entry.get("diverged"):
                metrics.update(status="diverged", diverged_epoch=epoch, diverged_loss=entry["train_loss"])
                break
            if learning.inner_steps and epoch == epochs:  # the classifier, refitted on all the data
                refit = torch.Generator().manual_seed(seed * 100_003 + 2**41)
                features = _frozen_features(model, train_set, eval_batch_size, dev)
                fit_classifier(model, _passes(*features, learning.batch_size, epochs, refit), learning, 1)
            scheduler.step()
            test = evaluate(model, test_set, dev, eval_batch_size, classes, ranks, options)
            entry.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
            confusion = test["confusion"]
            history.append(entry)
            rng = distributed.all_gather(_get_rng(), ranks)
            if ranks.main:
                save_checkpoint(
                    checkpoint_path,
                    dict(
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(),
                        scaler=None if scaler is None else scaler.state_dict(),
                        history=history,
                        epoch=epoch,
                        config=config,
                        rng=rng,
                        confusion=confusion,
                    ),
                )
                write_json(run_dir / "history.json", history)
                write_json(metrics_path, {**metrics, "epochs_done": epoch})
                if on_epoch is not None:
                    on_epoch(entry)
            if stop_at_accuracy is not None and test["accuracy"] >= stop_at_accuracy:
                metrics.update(status="finished", stop_reason="accuracy")
                break
            if max_train_seconds is not None and sum(h["seconds"] for h in history) >= max_train_seconds:
                metrics.update(status="finished", stop_reason="time")
                break
        else:
            metrics.update(status="finished", stop_reason="epochs")
    except KeyboardInterrupt:
        if ranks.main:
            write_json(metrics_path, {**metrics, "status": "interrupted", "epochs_done": len(history)})
        raise
    metrics.update(summarize(history))
    if metrics["status"] == "finished":
        metrics["confusion"] = confusion
    metrics["epochs_done"] = len(history)
    if ranks.main:
        write_json(run_dir / "history.json", history)
        write_json(metrics_path, metrics)
    return metrics


def _train_epoch(
    trained: nn.Module,
    model: nn.Module,
    train_set: Dataset,
    learning: LearningParameters,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    ranks: Ranks,
    seed: int,
    epoch: int,
    max_batches: int | None,
    progress: bool,
    epochs: int,
    options: Accelerator,
    scaler: torch.amp.GradScaler | None,
    epoch_counted: list[Tensor],
) -> dict[str, Any]:
    """One epoch; ``trained`` is ``model`` or its DDP or compiled wrapper (with
    ``learning.inner_steps``: ``model.features``, compiled or not); ``epoch_counted``: the
    parameters whose Adam step count is the epoch (``learning.adam_step_epoch``). One host sync per batch
    (the batch's summed loss, correct predictions and penalty, reduced over the ranks), and one
    more in the fp16 gradient scaler's step."""
    trained.train()
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    batches = GlobalBatches(len(cast(Sized, train_set)), learning.batch_size, generator, ranks, max_batches)
    augmentation = torch.Generator().manual_seed(seed * 100_003 + epoch + 2**40)
    reset_peak_memory(device)
    total = correct = 0
    loss_sum = 0.0
    nfe_sums, nfe_batches, saved = [0, 0], 0, None
    begin = time.perf_counter()
    bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
    for i, (x, y, size) in enumerate(_training_batches(train_set, batches, generator, augmentation, device)):
        x = memory_format(x, options.channels_last)
        with autocast(device, options.amp):
            with SavedTensors() if i == 0 else contextlib.nullcontext() as memory:
                if learning.inner_steps:  # a fresh classifier fitted to this batch's features first
                    features = trained(x)
                    fit_classifier(model, [(features, y)], learning, learning.inner_steps)
                    out = cast(Any, model).classifier(features)
                else:
                    out = trained(x)
            data_loss = distributed.weighted_cross_entropy(out, y, size, ranks)
        if memory is not None:
            saved = memory.megabytes
        penalty = (
            smoothness(
                model, learning.alpha, b_in_reg=learning.b_in_reg, h_div=learning.h_div, of=learning.smoothness_of
            )
            if learning.alpha > 0
            else None
        )
        # this rank's summed loss, correct predictions and share of the penalty, in one sync
        parts = [data_loss.detach().double() * (size / ranks.world_size), (out.argmax(1) == y).sum().double()]
        parts.append(penalty.detach().double() / ranks.world_size if penalty is not None else parts[1].new_zeros(()))
        ce_sum, n_correct, penalty_value = distributed.all_reduce_sum(torch.stack(parts), ranks).tolist()
        value = ce_sum / size + penalty_value
        if not math.isfinite(value) or value > DIVERGENCE_LOSS:
            bar.close()
            return {"epoch": epoch, "diverged": True, "train_loss": value}
        loss = data_loss if penalty is None else data_loss + penalty
        optimizer.zero_grad(set_to_none=True)
        set_adam_step(optimizer, epoch_counted, epoch - 1)  # Adam adds one before its update: t = epoch
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        nfe = field_evaluations(model)
        if nfe is not None:
            nfe_sums = [nfe_sums[0] + nfe[0], nfe_sums[1] + nfe[1]]
            nfe_batches += 1
        loss_sum += value * size
        correct += int(n_correct)
        total += size
        bar.update()
        bar.set_postfix(loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.4f}")
    bar.close()
    entry = {
        "epoch": epoch,
        "lr": optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / total,
        "train_accuracy": correct / total,
        "seconds": time.perf_counter() - begin,
        "batches": len(batches),
        "saved_tensors_mb": saved,
        "peak_memory_mb": peak_memory_mb(device),
    }
    if nfe_batches:
        entry.update(nfe_forward=nfe_sums[0] / nfe_batches, nfe_backward=nfe_sums[1] / nfe_batches)
    return entry


def _training_batches(
    train_set: Dataset,
    batches: GlobalBatches,
    generator: torch.Generator,
    augmentation: torch.Generator,
    device: torch.device,
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """``(x, y, global batch size)`` of this rank's shard of every global batch, on ``device``.

    An :class:`~contham.data.ImageSet` is gathered and preprocessed as whole batches on the device,
    its random augmentation drawn for the global batch from ``augmentation`` (so any number of
    ranks sees the augmentations of one process); any other dataset goes through a
    ``DataLoader`` with its per-sample transforms."""
    if isinstance(train_set, ImageSet):
        for (indices, position), size in zip(batches.shards(), batches.global_sizes):
            params = train_set.preprocess.draw(size, augmentation)[position]
            yield *train_set.batch(indices, device, params), size
        return
    tensors = tensors_of(train_set)
    if tensors is not None:  # tensors in memory: a batch is one gather
        x_all, y_all = tensors
        for batch, size in zip(batches, batches.global_sizes):
            rows = torch.tensor(batch)
            yield x_all[rows].to(device, non_blocking=True), y_all[rows].to(device, non_blocking=True), size
        return
    loader = DataLoader(train_set, batch_sampler=batches, generator=generator)  # the order of shuffle=True
    for (x, y), size in zip(loader, batches.global_sizes):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), size


class Features(nn.Module):
    """``model.features`` as a module, to be compiled like a network."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return cast(Any, self.model).features(x)


@torch.no_grad()
def _frozen_features(
    model: nn.Module, train_set: Dataset, batch_size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(model.features(x), y)`` of the whole training set (un-augmented, in eval mode), computed
    once for the final refit of the classifier: n x nf numbers."""
    model.eval()
    features = Features(model)
    parts = [(features(x), y) for x, y in _in_order(train_set, batch_size, device, Ranks())]
    return torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])


def _passes(
    features: Tensor, labels: Tensor, batch_size: int, epochs: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """``epochs`` shuffled passes over ``(features, labels)`` in batches of ``batch_size``."""
    for _ in range(epochs):
        for rows, _ in GlobalBatches(len(labels), batch_size, generator, Ranks()).shards():
            rows = rows.to(labels.device)
            yield features[rows], labels[rows]


def summarize(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The final metrics of a run from its per-epoch history (last and best accuracies, means)."""
    if not history:
        return {}
    last = history[-1]
    summary = {
        key: last[key] for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "saved_tensors_mb")
    }
    summary["best_test_accuracy"] = max(h["test_accuracy"] for h in history)
    summary["seconds_per_epoch"] = sum(h["seconds"] for h in history) / len(history)
    summary["train_seconds"] = sum(h["seconds"] for h in history)
    summary["peak_memory_mb"] = max(h["peak_memory_mb"] for h in history)
    for key in ("nfe_forward", "nfe_backward"):
        if key in last:
            summary[key] = sum(h[key] for h in history) / len(history)
    return summary


def _output_width(model: nn.Module, dataset: Dataset, device: torch.device) -> int:
    model.eval()
    with torch.no_grad():
        return model(dataset[0][0][None].to(device)).shape[1]


def _get_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def load_run_data(config: RunConfig) -> tuple[Dataset, Dataset, dict[str, int]]:
    """The training and test sets of ``config`` (its fractions applied) and the input shape the
    network is built for (``in_channels``, ``num_classes``, ``image_size``)."""
    assert config.preprocessing is not None and config.dataset is not None  # validate() resolved them
    train: Dataset
    test: Dataset
    if config.dataset in POINT_SETS:
        train, test = point_set(config.dataset, config.data_size or 8000, noise=config.noise, seed=config.seed)
        shape = dict(in_channels=2, num_classes=2, image_size=1)
    else:
        info = dataset_info(config.dataset)
        load = partial(load_image_set, config.dataset, config.root, download=config.download)
        train = load(train=True, preprocessing=config.preprocessing, augment=config.learning.crop_and_flip)
        test = load(train=False, preprocessing=config.preprocessing)
        image_size = 28 if config.preprocessing == "thesis" else info.image_size
        shape = dict(in_channels=info.channels, num_classes=info.num_classes, image_size=image_size)
    return (
        balanced_subset(train, config.fraction, config.seed),
        balanced_subset(test, config.test_fraction, config.seed),
        shape,
    )


def run(
    config: RunConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    wait: bool = False,
    restart: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_build: Callable[[nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Build the data and the network of ``config`` and :func:`fit` it into ``run_dir``
    (``wait``, ``restart`` and ``on_epoch`` as in :func:`fit`). ``on_build`` is called with the
    freshly built network before training, e.g. to load or perturb its initial weights (a resumed
    run then continues from its checkpoint)."""
    config.validate()
    prepare_folder(run_dir)
    train_set, test_set, shape = load_run_data(config)
    seed_everything(config.seed, config.deterministic)
    model = build(config.model, **shape, **config.model_options)
    if on_build is not None:
        on_build(model)
    return fit(
        model,
        train_set,
        test_set,
        config.learning,
        run_dir,
        epochs=config.epochs,
        max_batches=config.max_batches,
        seed=config.seed,
        device=config.device,
        num_classes=shape["num_classes"],
        progress=progress,
        config=config.to_dict(),
        gradient_norms=config.gradient_norms,
        stop_at_accuracy=config.stop_at_accuracy,
        max_train_seconds=config.max_train_seconds,
        sync_batchnorm=config.sync_batchnorm,
        amp=config.amp,
        channels_last=config.channels_last,
        compile=config.compile,
        wait=wait,
        restart=restart,
        on_epoch=on_epoch,
    )
