"""Training into a run folder: `fit` trains any classifier on any pair of datasets,
`run` trains the network of a `RunConfig` on its data (its
`Recipe`). In one process or on many (``torchrun``, see
`contham.experiments.distributed`).

A run folder holds:

* ``config.json``: the resolved run config;
* ``history.json``: one entry per epoch (train/test loss and accuracy, lr, seconds, field
  evaluations per batch for ODE and Hamiltonian blocks, autograd memory, peak device memory);
* ``metrics.json``: status (`Status`), final and best
  accuracies, parameters, confusion matrix;
* ``checkpoint.pt``: everything needed to resume after the last finished epoch
  (`contham.experiments.checkpoints`);
* TensorBoard event files, when TensorBoard is installed (`contham.experiments.tensorboard`).

Files are written atomically (`contham.experiments.files`) by rank 0 alone, under a lock
that keeps a second process out of the folder. Run the same config into the same folder again
and it resumes after the last checkpoint; the final numbers equal those of an uninterrupted run
(same seed, same device, same number of ranks). A finished run is not rerun.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..config import LearningParameters
from ..models import count_parameters
from . import distributed
from .checkpoints import RunFolder, field_defaults, folder_lock, random_state, seed_everything, set_random_state
from .files import discard_run, write_json
from .loop import Loop, Settings, select_device, summarize
from .recipe import Recipe
from .runconfig import RunConfig
from .status import Status
from .tensorboard import EpochLog

OnEpoch = Callable[[dict[str, Any]], None]


def fit(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    learning: LearningParameters,
    run_dir: str | Path,
    settings: Settings | None = None,
    *,
    num_classes: int | None = None,
    eval_batch_size: int = 500,
    progress: bool = True,
    config: dict[str, Any] | None = None,
    wait: bool = False,
    restart: bool = False,
    on_epoch: OnEpoch | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train ``model`` by the report's algorithm 1 into ``run_dir``; return the final metrics.

    Each epoch: shuffled global batches (a fresh generator seeded by the seed and the epoch, so a
    resumed run sees the same batches), cross-entropy plus ``smoothness(model, alpha, b_in_reg,
    h_div, smoothness_of)``, an optimiser step, then the lr decay if the epoch is in
    ``lr_decay_at``; evaluation on ``test_set``. Training loss and accuracy are the running means
    over the epoch's batches. What the protocol adds around each update comes from its strategies
    (`contham.experiments.protocols`).

    Under ``torchrun`` (several ranks) the model is wrapped in DistributedDataParallel, each rank
    trains on its shard of every global batch and the metrics are reduced over the ranks; the
    numbers equal a 1-process run's up to rounding (see `contham.experiments.distributed`).

    Args:
        settings: the run options (`Settings`); ``options``
            (its field names, e.g. ``epochs=2, device="cpu"``) replace some of them.
        num_classes: for the confusion matrix (default: the model's output width).
        config: saved as ``config.json`` and compared on resumption.
        wait: if another process holds ``run_dir``, wait for it instead of raising
            `RunBusy`.
        restart: discard what ``run_dir`` holds (a broken or unwanted run) and start afresh.
        on_epoch: called on rank 0 with each epoch's history entry once its files are written
            (e.g. to report to a Ray Tune scheduler).

    ``metrics["stop_reason"]`` says what ended a finished run: "epochs", "accuracy"
    (``stop_at_accuracy``) or "time" (``max_train_seconds``).

    Raises:
        ValueError: bad arguments; `RunFolderError` (a
            ValueError) for a run folder that cannot be read or written or is in use.
    """
    settings = dataclasses.replace(settings or Settings(), **_known(options))
    settings.validate()
    learning.validate()
    ranks = distributed.ranks_from_env()
    device = distributed.rank_device(select_device(settings.device), ranks)
    distributed.setup(ranks, device)
    if learning.batch_size < ranks.world_size:
        raise ValueError(
            f"learning.batch_size must be at least the number of ranks ({ranks.world_size}); got {learning.batch_size}"
        )
    run_dir = Path(run_dir)
    with folder_lock(run_dir, ranks, wait):
        if restart and ranks.main:
            discard_run(run_dir)
        distributed.barrier(ranks)
        folder = RunFolder(run_dir, config or {}, field_defaults(RunConfig))
        finished = folder.finished()
        if finished is not None:
            return finished
        loop = Loop(model, train_set, test_set, learning, settings, ranks=ranks, device=device,
                    num_classes=num_classes, eval_batch_size=eval_batch_size,
                    progress=progress and ranks.main)  # fmt: skip
        return _train(loop, folder, on_epoch)


def _known(options: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"fit() got unknown option(s) {', '.join(unknown)}; run options: {', '.join(sorted(names))}")
    return options


def _train(loop: Loop, folder: RunFolder, on_epoch: OnEpoch | None) -> dict[str, Any]:
    """Resume ``loop`` from ``folder``'s checkpoint (if any) and train it to the end, writing
    the folder after every epoch; return the final metrics."""
    ranks = loop.ranks
    history, start, confusion = _resume(loop, folder)
    metrics: dict[str, Any] = {"status": Status.RUNNING, "epochs": loop.epochs}
    metrics["parameters"] = count_parameters(loop.model)
    if ranks.distributed:
        metrics["world_size"] = ranks.world_size
    log = EpochLog(folder.path, start) if ranks.main else None
    if ranks.main:
        write_json(folder.path / "config.json", folder.config)
        write_json(folder.metrics_path, {**metrics, "epochs_done": start})
    try:
        for epoch in range(start + 1, loop.epochs + 1):
            entry = loop.epoch(epoch)
            if entry.get("diverged"):
                metrics.update(status=Status.DIVERGED, diverged_epoch=epoch, diverged_loss=entry["train_loss"])
                break
            confusion = entry.pop("confusion")
            history.append(entry)
            _save(loop, folder, history, confusion, metrics, log, on_epoch)
            reason = _stop_reason(loop.settings, history)
            if reason is not None:
                metrics.update(status=Status.FINISHED, stop_reason=reason)
                break
    except KeyboardInterrupt:
        if ranks.main:
            write_json(folder.metrics_path, {**metrics, "status": Status.INTERRUPTED, "epochs_done": len(history)})
        raise
    finally:
        if log is not None:
            log.close()
    return _final(metrics, history, confusion, folder, ranks)


def _resume(loop: Loop, folder: RunFolder) -> tuple[list[dict[str, Any]], int, Any]:
    """The history, the last finished epoch and its confusion matrix of ``folder``'s checkpoint,
    loaded into ``loop`` with every rank's random state; or a fresh start (seeded)."""
    ranks = loop.ranks
    state = folder.checkpoint(loop.device)
    if state is None:
        seed_everything(loop.settings.seed)
        distributed.barrier(ranks)
        return [], 0, None
    loop.restore(state)
    rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # older checkpoints: one dict
    set_random_state(rng[ranks.rank] if len(rng) == ranks.world_size else rng[0])
    distributed.barrier(ranks)  # every rank has read the folder before rank 0 writes to it
    return state["history"], state["epoch"], state["confusion"]


def _save(
    loop: Loop,
    folder: RunFolder,
    history: list[dict[str, Any]],
    confusion: Any,
    metrics: dict[str, Any],
    log: EpochLog | None,
    on_epoch: OnEpoch | None,
) -> None:
    """After an epoch: the checkpoint, history, metrics and event files (rank 0), then ``on_epoch``."""
    rng = distributed.all_gather(random_state(), loop.ranks)
    if not loop.ranks.main:
        return
    epoch = history[-1]["epoch"]
    folder.save(dict(loop.state(), history=history, epoch=epoch, rng=rng, confusion=confusion))
    write_json(folder.path / "history.json", history)
    write_json(folder.metrics_path, {**metrics, "epochs_done": epoch})
    assert log is not None
    log.write(history[-1])
    if on_epoch is not None:
        on_epoch(history[-1])


def _stop_reason(settings: Settings, history: list[dict[str, Any]]) -> str | None:
    """Why the run ends after the last entry of ``history``, or None: it goes on."""
    if settings.stop_at_accuracy is not None and history[-1]["test_accuracy"] >= settings.stop_at_accuracy:
        return "accuracy"
    if settings.max_train_seconds is not None and sum(h["seconds"] for h in history) >= settings.max_train_seconds:
        return "time"
    return None


def _final(
    metrics: dict[str, Any], history: list[dict[str, Any]], confusion: Any, folder: RunFolder, ranks: Any
) -> dict[str, Any]:
    if metrics["status"] == Status.RUNNING:  # every epoch trained
        metrics.update(status=Status.FINISHED, stop_reason="epochs")
    metrics.update(summarize(history))
    if metrics["status"] == Status.FINISHED:
        metrics["confusion"] = confusion
    metrics["epochs_done"] = len(history)
    if ranks.main:
        write_json(folder.path / "history.json", history)
        write_json(folder.metrics_path, metrics)
    return metrics


def run(
    config: RunConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    wait: bool = False,
    restart: bool = False,
    on_epoch: OnEpoch | None = None,
    on_build: Callable[[nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Build the data and the network of ``config`` (its `Recipe`)
    and `fit` it into ``run_dir`` (``wait``, ``restart`` and ``on_epoch`` as in `fit`).
    ``on_build`` is called with the freshly built network before training, e.g. to load or
    perturb its initial weights (a resumed run then continues from its checkpoint)."""
    recipe = Recipe(config)  # checked; the folder is made only once the data and network are
    train_set, test_set = recipe.data()
    seed_everything(config.seed, config.deterministic)
    model = recipe.network()
    if on_build is not None:
        on_build(model)
    return fit(
        model, train_set, test_set, config.learning, run_dir, Settings.of(config),
        num_classes=recipe.shape["num_classes"], progress=progress, config=config.to_dict(), wait=wait,
        restart=restart, on_epoch=on_epoch,
    )  # fmt: skip
