"""Training: the report's algorithm 1 with checkpoints, resumption, divergence handling and metrics.

:func:`fit` trains any classifier on any pair of datasets. :class:`RunConfig` names a whole run
(network, data, protocol, seed), and :func:`run` carries it out into a results folder:

* ``config.json``: the resolved :class:`RunConfig`;
* ``history.json``: one entry per epoch (train/test loss and accuracy, lr, seconds, NFE
  forward/backward per batch for ODE blocks, autograd memory, peak device memory);
* ``metrics.json``: status (``running``, ``finished``, ``diverged``, ``interrupted``), final and
  best accuracies, parameters, confusion matrix;
* ``checkpoint.pt``: everything needed to resume after the last finished epoch.

Files are written atomically (a temporary file renamed over the old one). Run the same config
into the same folder again and it resumes after the last checkpoint; the final numbers equal those
of an uninterrupted run (same seed, same device). A finished run is not rerun.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import resource
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ._checks import check_bool, check_choice, check_int, check_positive
from .analysis import GradientNorms
from .blocks import ODEBlock
from .config import LearningParameters, _Parameters
from .data import DATASETS, PREPROCESSINGS, balanced_subset, dataset_info, load_dataset
from .models import available, build, count_parameters, describe, options, preset
from .regularization import smoothness

DIVERGENCE_LOSS = 1e15
"""A training loss above this (or not finite) ends a run as ``diverged`` (as in the report)."""

THESIS_LEARNING = LearningParameters(
    training_steps_max=14_070,  # 30 epochs of 60,000 images in batches of 128
    batch_size=128,
    lr=0.1,
    lr_decay_at=[],
    wd=0.0,
    alpha=0.0,
)
"""The thesis's protocol (section 5.3): SGD, momentum 0.9, lr 0.1, 30 epochs on MNIST; its
augmentation (``crop_and_flip``) is the "thesis" preprocessing's upscale-and-crop."""


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


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
    """SGD with momentum or Adam with betas = ``momentum``; weight decay ``wd`` inside."""
    if learning.optimiser == "SGD":
        return torch.optim.SGD(model.parameters(), learning.lr, momentum=learning.momentum, weight_decay=learning.wd)
    return torch.optim.Adam(model.parameters(), learning.lr, betas=learning.momentum, weight_decay=learning.wd)


def epochs_for(learning: LearningParameters, train_size: int) -> int:
    """Report algorithm 1: ``ceil(training_steps_max * batch_size / train_size)``."""
    return max(1, math.ceil(learning.training_steps_max * learning.batch_size / train_size))


class SavedTensors:
    """Counts the memory autograd saves for backward inside a ``with`` block: what backprop must
    keep (large for direct backprop through a solver, small with the adjoint or reversible mode).
    Each storage counts once.

    >>> with SavedTensors() as saved:
    ...     out = model(x)
    >>> saved.megabytes, saved.megabytes_without(model.parameters())
    """

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    @property
    def megabytes(self) -> float:
        """MiB of all saved storages."""
        return sum(self.storages.values()) / 2**20

    def megabytes_without(self, tensors: Iterable[Tensor]) -> float:
        """MiB of the saved storages other than those of ``tensors`` (e.g. the weights)."""
        skip = {t.untyped_storage().data_ptr() for t in tensors}
        return sum(size for ptr, size in self.storages.items() if ptr not in skip) / 2**20


def _nfe(model: nn.Module) -> tuple[int, int] | None:
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock) and m.last_stats is not None]
    if not blocks:
        return None
    return sum(b.last_stats.nfe_forward for b in blocks), sum(b.last_stats.nfe_backward for b in blocks)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 500, num_classes: int | None = None
) -> dict[str, Any]:
    """Loss, accuracy and (with ``num_classes``) the confusion matrix (rows: true class) on ``dataset``."""
    model.eval()
    total, correct, loss = 0, 0, 0.0
    confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.long)
    for x, y in DataLoader(dataset, batch_size):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        predicted = out.argmax(1)
        correct += (predicted == y).sum().item()
        total += len(y)
        if num_classes:
            confusion += torch.bincount(y.cpu() * num_classes + predicted.cpu(), minlength=num_classes**2).view(
                num_classes, num_classes
            )
    result = {"loss": loss / total, "accuracy": correct / total}
    if num_classes:
        result["confusion"] = confusion.tolist()
    return result


def check_stops(stop_at_accuracy: float | None, max_train_seconds: float | None) -> None:
    """Check :func:`fit`'s early-stop arguments (None: no such stop)."""
    if stop_at_accuracy is not None and not 0 < check_positive("stop_at_accuracy", stop_at_accuracy) <= 1:
        raise ValueError(f"stop_at_accuracy must be a number in (0, 1]; got {stop_at_accuracy!r}")
    if max_train_seconds is not None:
        check_positive("max_train_seconds", max_train_seconds)


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
) -> dict[str, Any]:
    """Train ``model`` by the report's algorithm 1 into ``run_dir``; return the final metrics.

    Each epoch: shuffled batches (a fresh generator seeded by ``seed`` and the epoch, so a resumed
    run sees the same batches), cross-entropy plus ``smoothness(model, alpha, b_in_reg, h_div)``,
    an optimiser step, then the lr decay if the epoch is in ``lr_decay_at``; evaluation on
    ``test_set``. Training loss and accuracy are the running means over the epoch's batches.

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
    """
    learning.validate()
    check_stops(stop_at_accuracy, max_train_seconds)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs = epochs_for(learning, len(train_set)) if epochs is None else check_int("epochs", epochs)
    if max_batches is not None:
        check_int("max_batches", max_batches)
    dev = select_device(device)
    model.to(dev)
    optimizer = make_optimizer(model, learning)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, learning.lr_decay_at, learning.lr_decay)
    config = config or {}
    metrics_path, checkpoint_path = run_dir / "metrics.json", run_dir / "checkpoint.pt"
    if metrics_path.exists() and read_json(metrics_path)["status"] in ("finished", "diverged"):
        return read_json(metrics_path)
    history: list[dict[str, Any]] = []
    start, confusion = 0, None
    classes = num_classes or _output_width(model, test_set, dev)
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=dev, weights_only=False)
        if state["config"] != config:
            raise ValueError(f"run_dir={str(run_dir)!r} holds a different run; use another folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start, confusion = state["history"], state["epoch"], state["confusion"]
        _set_rng(state["rng"])
    else:
        seed_everything(seed)
    write_json(run_dir / "config.json", config)
    metrics: dict[str, Any] = {"status": "running", "epochs": epochs, "parameters": count_parameters(model)}
    write_json(metrics_path, {**metrics, "epochs_done": start})
    try:
        for epoch in range(start + 1, epochs + 1):
            hooks = GradientNorms(model) if gradient_norms else None
            try:
                entry = _train_epoch(
                    model, train_set, learning, optimizer, dev, seed, epoch, max_batches, progress, epochs
                )
            finally:
                if hooks is not None:
                    hooks.remove()
            if hooks is not None:
                entry["gradient_norms"] = {k: sum(v) / len(v) for k, v in hooks.history.items()}
            if entry.get("diverged"):
                metrics.update(status="diverged", diverged_epoch=epoch, diverged_loss=entry["train_loss"])
                break
            scheduler.step()
            test = evaluate(model, test_set, dev, eval_batch_size, classes)
            entry.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
            confusion = test["confusion"]
            history.append(entry)
            torch.save(
                dict(
                    model=model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    history=history,
                    epoch=epoch,
                    config=config,
                    rng=_get_rng(),
                    confusion=confusion,
                ),
                checkpoint_path.with_name("checkpoint.pt.tmp"),
            )
            os.replace(checkpoint_path.with_name("checkpoint.pt.tmp"), checkpoint_path)
            write_json(run_dir / "history.json", history)
            write_json(metrics_path, {**metrics, "epochs_done": epoch})
            if stop_at_accuracy is not None and test["accuracy"] >= stop_at_accuracy:
                metrics.update(status="finished", stop_reason="accuracy")
                break
            if max_train_seconds is not None and sum(h["seconds"] for h in history) >= max_train_seconds:
                metrics.update(status="finished", stop_reason="time")
                break
        else:
            metrics.update(status="finished", stop_reason="epochs")
    except KeyboardInterrupt:
        write_json(metrics_path, {**metrics, "status": "interrupted", "epochs_done": len(history)})
        raise
    write_json(run_dir / "history.json", history)
    metrics.update(_summary(history))
    if metrics["status"] == "finished":
        metrics["confusion"] = confusion
    metrics["epochs_done"] = len(history)
    write_json(metrics_path, metrics)
    return metrics


def _train_epoch(
    model: nn.Module,
    train_set: Dataset,
    learning: LearningParameters,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    seed: int,
    epoch: int,
    max_batches: int | None,
    progress: bool,
    epochs: int,
) -> dict[str, Any]:
    model.train()
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    loader = DataLoader(train_set, learning.batch_size, shuffle=True, generator=generator)
    n_batches = len(loader) if max_batches is None else min(max_batches, len(loader))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = correct = 0
    loss_sum = 0.0
    nfe_sums, nfe_batches, saved = [0, 0], 0, None
    begin = time.perf_counter()
    bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
    for i, (x, y) in enumerate(itertools.islice(loader, n_batches)):
        x, y = x.to(device), y.to(device)
        if i == 0:
            with SavedTensors() as memory:
                out = model(x)
            saved = memory.megabytes
        else:
            out = model(x)
        loss = F.cross_entropy(out, y)
        if learning.alpha > 0:
            loss = loss + smoothness(model, learning.alpha, b_in_reg=learning.b_in_reg, h_div=learning.h_div)
        value = loss.item()
        if not math.isfinite(value) or value > DIVERGENCE_LOSS:
            bar.close()
            return {"epoch": epoch, "diverged": True, "train_loss": value}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        nfe = _nfe(model)
        if nfe is not None:
            nfe_sums = [nfe_sums[0] + nfe[0], nfe_sums[1] + nfe[1]]
            nfe_batches += 1
        loss_sum += value * len(y)
        correct += (out.argmax(1) == y).sum().item()
        total += len(y)
        bar.update()
        bar.set_postfix(loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.4f}")
    bar.close()
    entry = {
        "epoch": epoch,
        "lr": optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / total,
        "train_accuracy": correct / total,
        "seconds": time.perf_counter() - begin,
        "batches": n_batches,
        "saved_tensors_mb": saved,
        "peak_memory_mb": _peak_memory(device),
    }
    if nfe_batches:
        entry.update(nfe_forward=nfe_sums[0] / nfe_batches, nfe_backward=nfe_sums[1] / nfe_batches)
    return entry


def _peak_memory(device: torch.device) -> float:
    """Peak CUDA memory allocated in the epoch, or on CPU the process's peak resident set (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _summary(history: list[dict[str, Any]]) -> dict[str, Any]:
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


@dataclasses.dataclass
class RunConfig(_Parameters):
    """One training run: network, data, protocol, seed.

    Attributes:
        model: a :func:`contham.models.build` name; model_options: its overrides.
        dataset: a :data:`contham.data.DATASETS` name; root, download: for torchvision.
        preprocessing: "report", "thesis", "plain"; None: "thesis" for the thesis's networks,
            else "report".
        fraction: class-balanced fraction of the training set (report figure 4.13);
            test_fraction: of the test set (short runs).
        epochs: None: from ``learning`` (report algorithm 1); max_batches: per epoch.
        learning: the protocol; None: the report preset's, or :data:`THESIS_LEARNING`.
        seed, device ("auto", "cpu", "cuda[:i]"), deterministic.
        gradient_norms: record per-epoch gradient norms of block states and parameters.
        stop_at_accuracy, max_train_seconds: end the run early (see :func:`fit`).
    """

    _nested = {"learning": LearningParameters}

    model: str = "thesis_resnet2"
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    preprocessing: str | None = None
    fraction: float = 1.0
    test_fraction: float = 1.0
    epochs: int | None = None
    max_batches: int | None = None
    learning: LearningParameters = None  # type: ignore[assignment]
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    gradient_norms: bool = False
    stop_at_accuracy: float | None = None
    max_train_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.learning is None:
            self.learning = preset(self.model).learning if self.model in available("report") else THESIS_LEARNING
            self.learning = dataclasses.replace(self.learning)
        super().__post_init__()

    def validate(self) -> None:
        check_choice("model", self.model, available())
        if not isinstance(self.model_options, dict):
            raise ValueError(f"model_options must be a dict; got {self.model_options!r}")
        check_choice("dataset", self.dataset, DATASETS)
        if self.root is not None and not isinstance(self.root, str):
            raise ValueError(f"root must be a folder path or None; got {self.root!r}")
        check_bool("download", self.download)
        if self.preprocessing is None:
            self.preprocessing = "thesis" if self.model in available("thesis") else "report"
        check_choice("preprocessing", self.preprocessing, PREPROCESSINGS)
        for name in ("fraction", "test_fraction"):
            value = check_positive(name, getattr(self, name))
            if value > 1:
                raise ValueError(f"{name} must be in (0, 1]; got {value}")
            setattr(self, name, value)
        for name in ("epochs", "max_batches"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        self.learning.validate()
        check_int("seed", self.seed, 0)
        if not isinstance(self.device, str):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:index]'; got {self.device!r}")
        check_bool("deterministic", self.deterministic)
        check_bool("gradient_norms", self.gradient_norms)
        check_stops(self.stop_at_accuracy, self.max_train_seconds)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` (a field, ``learning.<field>``, or a model override) and check again."""
        if key.startswith("learning."):
            self.learning = dataclasses.replace(self.learning, **{key.split(".", 1)[1]: value})
        elif key in {f.name for f in dataclasses.fields(self)} and key != "learning":
            setattr(self, key, value)
        else:
            model_key = key.removeprefix("model.")
            if model_key not in options(self.model):
                fields = ", ".join(f.name for f in dataclasses.fields(self) if f.name != "learning")
                raise ValueError(
                    f"unknown key {key!r}: not a run field ({fields}), not learning.<field> "
                    f"({', '.join(f.name for f in dataclasses.fields(LearningParameters))}) and not an option of "
                    f"{describe(self.model)}"
                )
            self.model_options = {**self.model_options, model_key: value}
        self.validate()


def run(config: RunConfig, run_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Build the data and the network of ``config`` and :func:`fit` it into ``run_dir``."""
    config.validate()
    info = dataset_info(config.dataset)
    load = dict(root=config.root, download=config.download, preprocessing=config.preprocessing)
    train_set = load_dataset(config.dataset, train=True, augment=config.learning.crop_and_flip, **load)
    test_set = load_dataset(config.dataset, train=False, **load)
    train_set = balanced_subset(train_set, config.fraction, config.seed)
    test_set = balanced_subset(test_set, config.test_fraction, config.seed)
    image_size = 28 if config.preprocessing == "thesis" else info.image_size
    seed_everything(config.seed, config.deterministic)
    model = build(
        config.model,
        in_channels=info.channels,
        num_classes=info.num_classes,
        image_size=image_size,
        **config.model_options,
    )
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
        num_classes=info.num_classes,
        progress=progress,
        config=config.to_dict(),
        gradient_norms=config.gradient_norms,
        stop_at_accuracy=config.stop_at_accuracy,
        max_train_seconds=config.max_train_seconds,
    )
