"""The training loop of one run (the report's algorithm 1) and evaluation.

`Settings` holds every run option of the loop, written once: `RunConfig`
inherits them, `fit` takes them by name. `Loop` trains one
epoch at a time and evaluates; what a protocol changes around each update comes from its
strategies (`contham.experiments.protocols`), so the loop has no protocol flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
import warnings
import weakref
from collections.abc import Callable, Sized
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .._checks import check_backend, check_bool, check_int, check_positive
from ..analysis import GradientNorms
from ..blocks import compile_steps
from ..config import LearningParameters
from ..regularization import smoothness
from . import distributed
from .accelerate import (
    Accelerator,
    CompiledOrEager,
    autocast,
    check_amp,
    grad_scaler,
    memory_format,
)
from .batches import in_order, training_batches
from .distributed import GlobalBatches, Ranks
from .graphs import GRAPHS, Captured
from .instruments import SavedTensors, field_evaluations, peak_memory_mb, reset_peak_memory
from .protocols import FinalData, TrainingProtocol, load_optimizer_state, make_optimizer, strategies

DIVERGENCE_LOSS = 1e15
"""A training loss above this (or not finite) ends a run as ``diverged`` (as in the report)."""

READ_EVERY = 20
"""Batches between two reads of an epoch's running sums (progress bar, divergence check)."""


@dataclasses.dataclass
class Settings:
    """The run options of the training loop.

    Attributes:
        epochs: None: from ``learning`` (report algorithm 1, `epochs_for`).
        max_batches: stop each epoch after this many batches (short runs).
        seed: seeds the weights, the batches and the augmentation.
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda[:i]".
        deterministic: force deterministic algorithms.
        gradient_norms: record, per epoch, the mean gradient norm of every block's output state
            and of every parameter (`GradientNorms`) in the history.
        stop_at_accuracy: finish after the first epoch whose test accuracy reaches this
            (time-to-accuracy studies).
        max_train_seconds: finish after the epoch in which the training time (evaluation
            excluded) reaches this.
        sync_batchnorm: in a distributed run, batch norm with the statistics of the global batch,
            as one process computes them.
        amp: mixed precision None, "bf16" or "fp16" (`contham.experiments.accelerate`).
        channels_last: the NHWC memory layout.
        compile: ``torch.compile`` (true or a backend name).
        cuda_graphs: whole training steps and evaluation forwards replayed from CUDA graphs
            (`contham.experiments.graphs`): "auto" (on CUDA when the run qualifies, else eager
            with the reason in a warning), true (raise if it does not qualify) or false.
    """

    epochs: int | None = None
    max_batches: int | None = None
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    gradient_norms: bool = False
    stop_at_accuracy: float | None = None
    max_train_seconds: float | None = None
    sync_batchnorm: bool = False
    amp: str | None = None
    channels_last: bool = False
    compile: bool | str = False
    cuda_graphs: bool | str = "auto"

    def validate(self) -> None:
        """Check every option; raise ``ValueError`` naming the first bad one."""
        for name in ("epochs", "max_batches"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        check_int("seed", self.seed, 0)
        if not isinstance(self.device, str):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:index]'; got {self.device!r}")
        for name in ("deterministic", "gradient_norms", "sync_batchnorm", "channels_last"):
            check_bool(name, getattr(self, name))
        if self.stop_at_accuracy is not None and not 0 < check_positive("stop_at_accuracy", self.stop_at_accuracy) <= 1:
            raise ValueError(f"stop_at_accuracy must be a number in (0, 1]; got {self.stop_at_accuracy!r}")
        if self.max_train_seconds is not None:
            check_positive("max_train_seconds", self.max_train_seconds)
        check_amp(self.amp)
        check_backend("compile", self.compile)
        if not (isinstance(self.cuda_graphs, bool) or self.cuda_graphs == "auto"):
            raise ValueError(f"cuda_graphs must be 'auto', true or false; got {self.cuda_graphs!r}")

    @property
    def accelerator(self) -> Accelerator:
        """The accelerator options (mixed precision, memory format, compilation)."""
        return Accelerator(self.amp, self.channels_last, self.compile)

    @classmethod
    def of(cls, source: Any) -> Settings:
        """The settings held by ``source`` (e.g. a `RunConfig`)."""
        return cls(**{f.name: getattr(source, f.name) for f in dataclasses.fields(cls)})


def select_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; or an explicit ``"cpu"``/``"cuda[:i]"``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:index]'; got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(device)


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
    forward: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """Loss, accuracy and (with ``num_classes``) the confusion matrix (rows: true class) on
    ``dataset``. In a distributed run (``ranks``) each rank evaluates its share and the sums are
    reduced; ``options``: the run's mixed precision and memory format; ``forward``: what maps a
    batch to logits (default ``model``, e.g. its forward replayed from a graph)."""
    ranks = ranks or Ranks()
    options = options or Accelerator()
    forward = forward or model
    model.eval()
    classes = num_classes or 1
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, correct
    total = 0
    confusion = torch.zeros(classes * classes, dtype=torch.long, device=device)
    for x, y in in_order(dataset, batch_size, device, ranks):
        x = memory_format(x, options.channels_last)
        with autocast(device, options.amp):
            out = forward(x)
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


class Loop:
    """The training of one run: the model on its device with its optimiser, lr schedule,
    gradient scaler and protocol strategies; trains an epoch (`train_epoch`), evaluates
    (`evaluate`), and gives and takes its state for checkpoints.

    Args:
        model: the network (moved to the device; converted to channels-last and synchronised
            batch norm as ``settings`` say).
        train_set, test_set: the data.
        learning: the protocol.
        settings: the run options (``settings.epochs`` None: `epochs_for`).
        ranks: the processes of a distributed run (default: this one).
        device: default from ``settings.device``.
        num_classes: for the confusion matrix (default: the model's output width).
        eval_batch_size: batch size of evaluation.
        progress: progress bars.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        test_set: Dataset,
        learning: LearningParameters,
        settings: Settings,
        *,
        ranks: Ranks | None = None,
        device: torch.device | None = None,
        num_classes: int | None = None,
        eval_batch_size: int = 500,
        progress: bool = False,
    ):
        self.ranks = ranks or Ranks()
        self.device = device or select_device(settings.device)
        self.train_set, self.test_set, self.learning, self.settings = train_set, test_set, learning, settings
        self.epochs = settings.epochs or epochs_for(learning, len(cast(Sized, train_set)))
        self.eval_batch_size, self.progress = eval_batch_size, progress
        self.protocol: TrainingProtocol = strategies(learning)
        self.protocol.check(model, self.ranks)
        self.model = self._placed(model)
        obstacle = self._capture_obstacle()
        # where graphs exist the optimiser is fused (lr a tensor) with and without them: the two compute alike
        fused, capturable = self.device.type in GRAPHS, obstacle is None
        self.optimizer = make_optimizer(self.model, learning, self.protocol, fused=fused, capturable=capturable)
        self.protocol.start(self.model, self.optimizer)
        self.scaler = grad_scaler(self.device, settings.amp)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, learning.lr_decay_at, learning.lr_decay)
        self.num_classes = num_classes or self._output_width()
        network = self.protocol.network(self.model, distributed.wrap(self.model, self.device, self.ranks))
        if settings.compile:
            compile_steps(self.model, settings.compile)  # the adaptive solves' steps, which the graph leaves out
        self.network = CompiledOrEager(network, settings.compile) if settings.compile else network
        self.saved: SavedTensors | None = None  # set for the first batch of an epoch
        self.saved_mb: float | None = None
        self.captured = obstacle is None
        self.train_step, self.eval_forward = self._graphs(obstacle)

    def _placed(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.settings.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.settings.sync_batchnorm and self.ranks.distributed:
            model = distributed.convert_sync_batchnorm(model, self.device)
        return model

    def _capture_obstacle(self) -> str | None:
        """Why this run's steps are not replayed from graphs, or None: they are. Raises
        ``ValueError`` where ``cuda_graphs=true`` asks for graphs that the run cannot have."""
        settings = self.settings
        if settings.cuda_graphs is False:
            return "cuda_graphs=false"
        checks = (
            (self.device.type not in GRAPHS, f"the device is {self.device.type} (graphs exist on {', '.join(GRAPHS)})"),
            (settings.amp == "fp16", "amp='fp16' (its gradient scaler reads the overflow flag on the host every step)"),
            (settings.gradient_norms, "gradient_norms=true (its hooks run Python in every backward pass)"),
            (bool(settings.compile), "compile is on (torch.compile(mode='reduce-overhead') makes graphs of its own)"),
            (self.ranks.distributed, "the run is distributed (capturing DDP's all-reduce needs NCCL's "
                                     "asynchronous error handling off before the process group starts)"),
        )  # fmt: skip
        reason = next((why for bad, why in checks if bad), None)
        if reason is not None and settings.cuda_graphs is True:
            raise ValueError(f"cuda_graphs=true but {reason}; set cuda_graphs=auto or false")
        return reason

    def _graphs(self, obstacle: str | None) -> tuple[Callable[..., Tensor], Callable[[Tensor], Tensor] | None]:
        """The training step and the evaluation forward: replayed from graphs, or (``obstacle``)
        eager, with a warning that names the obstacle on CUDA."""
        # bound to a weak proxy: no reference cycle keeps the loop (its DDP wrapper, its graphs'
        # memory) alive after its last use
        own = weakref.proxy(self)
        train_step = functools.partial(type(self)._train_step, own)
        if obstacle is not None:
            if self.device.type == "cuda" and self.settings.cuda_graphs == "auto":
                warnings.warn(f"cuda_graphs: steps not captured: {obstacle}", RuntimeWarning, stacklevel=3)
            return train_step, None
        family = GRAPHS[self.device.type]()
        strict = self.settings.cuda_graphs is True
        eval_forward = functools.partial(type(self)._eval_forward, own)
        train = Captured(train_step, family, "training step", strict)
        return train, Captured(eval_forward, family, "evaluation forward", strict)

    def _output_width(self) -> int:
        self.model.eval()
        with torch.no_grad():
            return self.model(self.test_set[0][0][None].to(self.device)).shape[1]

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the loop."""
        return dict(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=None if self.scaler is None else self.scaler.state_dict(),
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Load a `state`."""
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train ``epoch`` (1-based), then (unless it diverged) end it: after the last epoch the
        protocol's final step, then the lr schedule's step and the evaluation. Returns the
        epoch's history entry, with ``confusion``; ``diverged`` marks a diverged epoch."""
        hooks = GradientNorms(self.model) if self.settings.gradient_norms else None
        try:
            entry = self.train_epoch(epoch)
        finally:
            if hooks is not None:
                hooks.remove()
        if entry.get("diverged"):
            return entry
        if hooks is not None:
            entry["gradient_norms"] = {k: sum(v) / len(v) for k, v in hooks.history.items()}
        if epoch == self.epochs:
            final = FinalData(self.train_set, self.eval_batch_size, self.device, self.settings.seed, self.epochs)
            self.protocol.after_training(self.model, final)
        self.scheduler.step()
        test = self.evaluate()
        entry.update(test_loss=test["loss"], test_accuracy=test["accuracy"], confusion=test["confusion"])
        return entry

    def evaluate(self) -> dict[str, Any]:
        """Loss, accuracy and confusion matrix on the test set."""
        accelerator = self.settings.accelerator
        args = (self.eval_batch_size, self.num_classes, self.ranks, accelerator, self.eval_forward)
        return evaluate(self.model, self.test_set, self.device, *args)

    def _eval_forward(self, x: Tensor) -> Tensor:
        """The logits of ``x`` for evaluation replayed from a graph (autocast without its cache)."""
        with autocast(self.device, self.settings.amp, cache=False):
            return self.model(x)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of updates; its history entry (or ``diverged`` with the first loss that was
        not finite or exceeded `DIVERGENCE_LOSS`). No update reads a value back to the host: the
        sums stay on the device and are read every `READ_EVERY` batches (the progress bar, the
        divergence check) and at the end of the epoch. (The fp16 gradient scaler's step reads
        its overflow flag.)"""
        self.network.train()
        seed, size_of = self.settings.seed, len(cast(Sized, self.train_set))
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        batches = GlobalBatches(size_of, self.learning.batch_size, generator, self.ranks, self.settings.max_batches)
        augmentation = torch.Generator().manual_seed(seed * 100_003 + epoch + 2**40)
        reset_peak_memory(self.device)
        tally = _Tally(self.device)
        bar = tqdm(total=len(batches), desc=f"epoch {epoch}/{self.epochs}", disable=not self.progress, leave=False)
        try:
            for i, (x, y, size) in enumerate(training_batches(self.train_set, batches, generator, augmentation,
                                                              self.device)):  # fmt: skip
                self._update(i, x, y, size, epoch, tally)
                bar.update()
                if (i + 1) % READ_EVERY and i + 1 < len(batches):
                    continue
                read = tally.read()
                if read.diverged is not None:
                    return {"epoch": epoch, "diverged": True, "train_loss": read.diverged}
                bar.set_postfix(loss=f"{read.loss / tally.total:.4f}", acc=f"{read.correct / tally.total:.4f}")
        finally:
            bar.close()
        return tally.entry(epoch, self, len(batches), read)

    def _update(self, i: int, x: Tensor, y: Tensor, size: int, epoch: int, tally: _Tally) -> None:
        """One optimiser update on this rank's part ``(x, y)`` of a global batch of ``size``; adds
        the batch's loss and correct predictions to ``tally`` on the device. The first batch of
        an epoch measures the memory autograd keeps (a replayed step runs no Python: the last
        figure stays)."""
        x = memory_format(x, self.settings.channels_last)
        self.protocol.before_update(self.optimizer, epoch)
        self.saved = SavedTensors() if i == 0 else None
        loss, correct = self.train_step(x, y, size)
        if self.saved is not None and (self.saved.storages or self.saved_mb is None):
            self.saved_mb = self.saved.megabytes
        tally.saved = self.saved_mb
        # after the backward pass, which adds its field evaluations
        tally.add(loss, correct, size, field_evaluations(self.model))

    def _train_step(self, x: Tensor, y: Tensor, size: int) -> Tensor:
        """Forward, loss, backward and optimiser step on ``(x, y)``; the batch's loss
        (cross-entropy plus penalty) and correct predictions, reduced over the ranks, on the device."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.settings.amp, cache=not self.captured):
            with self.saved or contextlib.nullcontext():
                out = self.protocol.outputs(self.network, self.model, x, y)
                out = self.network(x) if out is None else out
            data_loss = distributed.weighted_cross_entropy(out, y, size, self.ranks)
        learning = self.learning
        penalty = (
            smoothness(self.model, learning.alpha, b_in_reg=learning.b_in_reg, h_div=learning.h_div,
                       of=learning.smoothness_of)
            if learning.alpha > 0
            else None
        )  # fmt: skip
        # this rank's summed loss, correct predictions and share of the penalty, reduced over the ranks
        world = self.ranks.world_size
        parts = [data_loss.detach().double() * (size / world), (out.argmax(1) == y).sum().double()]
        parts.append(penalty.detach().double() / world if penalty is not None else parts[1].new_zeros(()))
        ce_sum, n_correct, penalty_value = distributed.all_reduce_sum(torch.stack(parts), self.ranks)
        self._backward_and_step(data_loss if penalty is None else data_loss + penalty)
        return torch.stack([ce_sum / size + penalty_value, n_correct])

    def _backward_and_step(self, loss: Tensor) -> None:
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()


class _Read(NamedTuple):
    """The sums of an epoch read back: loss x batch size, correct predictions, and the first
    diverged loss (None while every loss was finite and at most `DIVERGENCE_LOSS`)."""

    loss: float
    correct: float
    diverged: float | None


class _Tally:
    """The running sums of one epoch, on the device: nothing is read back until `read`."""

    def __init__(self, device: torch.device) -> None:
        # loss x batch size, correct predictions, diverged (0/1), the first diverged loss
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)
        self.total = 0
        self.nfe, self.nfe_batches = [0, 0], 0
        self.saved: float | None = None
        self.begin = time.perf_counter()

    def add(self, loss: Tensor, correct: Tensor, size: int, nfe: tuple[int, int] | None) -> None:
        bad = ~torch.isfinite(loss) | (loss > DIVERGENCE_LOSS)
        seen = torch.stack([loss * size, correct, bad.double(), torch.where(bad, loss, 0.0)])
        self.sums = torch.where(self.sums[2] > 0, self.sums, self.sums + seen)  # frozen once diverged
        self.total += size
        if nfe is not None:
            self.nfe = [self.nfe[0] + nfe[0], self.nfe[1] + nfe[1]]
            self.nfe_batches += 1

    def read(self) -> _Read:
        """The sums on the host (one device-to-host copy)."""
        loss, correct, diverged, first = self.sums.tolist()
        return _Read(loss, correct, first if diverged else None)

    def entry(self, epoch: int, loop: Loop, batches: int, read: _Read) -> dict[str, Any]:
        """The history entry of the epoch from its final `read`."""
        entry = {
            "epoch": epoch,
            "lr": _lr(loop.optimizer),
            "train_loss": read.loss / self.total,
            "train_accuracy": read.correct / self.total,
            "seconds": time.perf_counter() - self.begin,
            "batches": batches,
            "saved_tensors_mb": self.saved,
            "peak_memory_mb": peak_memory_mb(loop.device),
        }
        if self.nfe_batches:
            entry.update(nfe_forward=self.nfe[0] / self.nfe_batches, nfe_backward=self.nfe[1] / self.nfe_batches)
        return entry


def _lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr of the first parameter group; a tensor lr (float32, as fused optimisers read it)
    as the shortest decimal that is its value."""
    lr = optimizer.param_groups[0]["lr"]
    return float(str(np.float32(lr.item()))) if isinstance(lr, Tensor) else lr


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
    peaks = [h["peak_memory_mb"] for h in history if h.get("peak_memory_mb") is not None]
    summary["peak_memory_mb"] = max(peaks) if peaks else None
    for key in ("nfe_forward", "nfe_backward"):
        if key in last:
            summary[key] = sum(h[key] for h in history) / len(history)
    return summary
