"""A training run described as data: :class:`RunConfig` (network, data, protocol, seed), saved
as ``config.json`` in its run folder and readable from YAML/JSON files."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._checks import check_bool, check_choice, check_int, check_positive
from ..config import LearningParameters, Parameters
from ..data import DATASETS, PREPROCESSINGS
from ..models import available, describe, options, preset
from .accelerate import check_amp, check_compile

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


def check_stops(stop_at_accuracy: float | None, max_train_seconds: float | None) -> None:
    """Check the early-stop arguments of a run (None: no such stop)."""
    if stop_at_accuracy is not None and not 0 < check_positive("stop_at_accuracy", stop_at_accuracy) <= 1:
        raise ValueError(f"stop_at_accuracy must be a number in (0, 1]; got {stop_at_accuracy!r}")
    if max_train_seconds is not None:
        check_positive("max_train_seconds", max_train_seconds)


@dataclasses.dataclass
class RunConfig(Parameters):
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
        stop_at_accuracy: end the run once the test accuracy reaches it (see :func:`~contham.experiments.fit`).
        max_train_seconds: end the run after this training time (see :func:`~contham.experiments.fit`).
        sync_batchnorm: in a distributed run, normalise with the statistics of the global batch
            (:func:`~contham.experiments.distributed.convert_sync_batchnorm`), as one process does.
        amp: mixed precision None/"bf16"/"fp16" (:mod:`contham.experiments.accelerate`).
        channels_last: the NHWC memory layout.
        compile: ``torch.compile`` (true or a backend name).
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
    sync_batchnorm: bool = False
    amp: str | None = None
    channels_last: bool = False
    compile: bool | str = False

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
        check_bool("sync_batchnorm", self.sync_batchnorm)
        check_amp(self.amp)
        check_bool("channels_last", self.channels_last)
        check_compile(self.compile)
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
