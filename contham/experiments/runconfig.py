"""A training run described as data: :class:`RunConfig` (network, data, protocol, seed), saved
as ``config.json`` in its run folder and readable from YAML/JSON files."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._checks import check_bool, check_choice, check_int, check_nonnegative, check_positive
from ..config import LearningParameters, Parameters
from ..data import DATASETS, POINT_SETS, PREPROCESSINGS
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


HDNN_2D_LEARNING = LearningParameters(
    training_steps_max=1_600,  # 50 epochs of 4,000 points in batches of 125
    batch_size=125,
    lr=0.05,
    lr_decay_at=[10, 20, 30, 40],  # in place of the papers' code's Adam step count (docs/hdnn.md)
    lr_decay=0.5,
    wd=0.0,
    alpha=2.5e-4,  # the papers' 5e-4 on (||dK||^2 + ||db||^2) / 2
    b_in_reg=True,
    h_div=False,
    smoothness_of="K",  # K of J K^T sigma(K y + b), as the papers' code penalises it
    optimiser="Adam",
    momentum=(0.9, 0.999),
    crop_and_flip=False,
    inner_steps=10,
    classifier_penalty=1e-4,
)
"""The H-DNN papers' 2-D protocol (their ``train_2d_example``): Adam lr 0.05, batches of 125,
50 epochs; per batch 10 Adam iterations of a fresh classifier on the frozen features, then one
step of the H-DNN; the classifier refitted on all the data at the end; smoothness
``alpha h (||K_j+1 - K_j||^2 + ||b_j+1 - b_j||^2) / 2`` with alpha 5e-4 on the K of the papers'
form ``J K^T sigma(K y + b)`` (``smoothness_of="K"``), classifier penalty 1e-4.
The lr is halved after epochs 10, 20, 30 and 40: the papers' code sets Adam's step count to the
epoch, which shrinks its steps over the first 10 epochs (docs/hdnn.md); contham runs standard
Adam with this decay instead (:data:`HDNN_2D_CODE` runs the code's step count)."""

HDNN_2D_CODE = dataclasses.replace(
    HDNN_2D_LEARNING,
    lr_decay_at=[],
    adam_step_epoch=["block.field.K*", "block.field.W", "block.field.b", "block.field.bp", "block.field.bq"],
)
"""The papers' 2-D protocol to the letter of their code: :data:`HDNN_2D_LEARNING` with a constant
lr 0.05 and Adam's step count set to the epoch before every update of the first two parameters of
their network, which are, in contham's names: K and b (H1), K0 and b (MS1), W and b (MS2), K1 and K2
but not b1 and b2 (MS3), Kp, Kq, bp and bq (H2, whose K and b hold both halves)."""

HDNN_MNIST_LEARNING = LearningParameters(
    training_steps_max=6_000,  # 10 epochs of 60,000 images in batches of 100
    batch_size=100,
    lr=0.04,
    lr_decay_at=list(range(1, 10)),
    lr_decay=0.8,
    wd=4e-3,
    alpha=4e-3,  # the papers' 8e-3 on (||dK||^2 + ||db||^2) / 2
    b_in_reg=True,
    h_div=False,
    smoothness_of="K",
    optimiser="Adam",
    momentum=(0.9, 0.999),
    crop_and_flip=False,
)
"""The H-DNN papers' MNIST protocol for H1_J1 (their ``run_MNIST``): Adam lr 0.04 with weight
decay 4e-3, lr x 0.8 after every epoch, batches of 100, 10 epochs, smoothness alpha 8e-3 (h 0.5 is
the network's default). MS1 and H1_J2 use other values: see docs/hdnn.md."""


HDNN_2D_END_TO_END = dataclasses.replace(
    HDNN_2D_LEARNING,
    training_steps_max=6_400,  # 200 epochs
    lr=0.01,
    lr_decay_at=[100, 150],
    inner_steps=0,
    classifier_penalty=0.0,
)
"""contham's best protocol for the 2-D H-DNNs: the network and its classifier trained together
by one Adam, lr 0.01 halved after epochs 100 and 150, 200 epochs, batches of 125, the papers'
smoothness penalty (alpha 2.5e-4, as above). At 64 layers and the papers' nf 4 it reaches 99 % test
accuracy on every seed tried for MS3, H1_J1 and H2 on both point sets (docs/hdnn.md)."""

PROTOCOLS = {
    "thesis": THESIS_LEARNING,
    "hdnn_2d": HDNN_2D_LEARNING,
    "hdnn_2d_end_to_end": HDNN_2D_END_TO_END,
    "hdnn_2d_code": HDNN_2D_CODE,
    "hdnn_mnist": HDNN_MNIST_LEARNING,
}
"""Training protocols by name: ``learning=<name>`` in a run config or on the command line (then
``learning.<field>=`` overrides apply on top of it)."""


def protocol(name: str) -> LearningParameters:
    """A fresh copy of the protocol called ``name`` (see :data:`PROTOCOLS`)."""
    return dataclasses.replace(PROTOCOLS[check_choice("learning", name, PROTOCOLS)])


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
        dataset: a :data:`contham.data.DATASETS` name, or for ``hdnn_2d`` a point set of
            :data:`contham.data.POINT_SETS`; None: ``swiss_roll`` for ``hdnn_2d``, ``mnist`` for
            ``hdnn_mnist``, else ``digits``. root, download: for torchvision.
        data_size, noise: a point set's size (default 8,000: 4,000 train, 4,000 test) and
            Gaussian noise (see :func:`contham.data.point_set`).
        preprocessing: "report", "thesis", "plain"; None: "thesis" for the thesis's networks,
            "plain" for the H-DNNs, else "report".
        fraction: class-balanced fraction of the training set (report figure 4.13);
            test_fraction: of the test set (short runs).
        epochs: None: from ``learning`` (report algorithm 1); max_batches: per epoch.
        learning: the protocol, or the name of one of :data:`PROTOCOLS`; None: the report
            preset's, :data:`HDNN_2D_LEARNING`, :data:`HDNN_MNIST_LEARNING`, or
            :data:`THESIS_LEARNING`.
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
    dataset: str | None = None
    root: str | None = None
    download: bool = False
    preprocessing: str | None = None
    fraction: float = 1.0
    test_fraction: float = 1.0
    epochs: int | None = None
    max_batches: int | None = None
    data_size: int | None = None
    noise: float = 0.0
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
            defaults = {"hdnn_2d": HDNN_2D_LEARNING, "hdnn_mnist": HDNN_MNIST_LEARNING}
            if self.model in available("report"):
                self.learning = preset(self.model).learning
            else:
                self.learning = defaults.get(self.model, THESIS_LEARNING)
            self.learning = dataclasses.replace(self.learning)
        elif not isinstance(self.learning, (LearningParameters, dict)):
            self.learning = protocol(self.learning)
        super().__post_init__()

    def validate(self) -> None:
        check_choice("model", self.model, available())
        if not isinstance(self.model_options, dict):
            raise ValueError(f"model_options must be a dict; got {self.model_options!r}")
        if self.dataset is None:
            self.dataset = {"hdnn_2d": "swiss_roll", "hdnn_mnist": "mnist"}.get(self.model, "digits")
        check_choice("dataset", self.dataset, (*DATASETS, *POINT_SETS))
        if (self.model == "hdnn_2d") != (self.dataset in POINT_SETS):
            raise ValueError(
                f"dataset must be a point set ({', '.join(POINT_SETS)}) for model 'hdnn_2d' and an image set "
                f"for the other networks; got dataset={self.dataset!r} for model={self.model!r}"
            )
        if self.data_size is not None:
            if self.dataset not in POINT_SETS:
                raise ValueError(f"data_size is an option of the point sets ({', '.join(POINT_SETS)}); use fraction")
            check_int("data_size", self.data_size, 8)
        self.noise = check_nonnegative("noise", self.noise)
        if self.noise and self.dataset not in POINT_SETS:
            raise ValueError(f"noise is an option of the point sets ({', '.join(POINT_SETS)})")
        if self.root is not None and not isinstance(self.root, str):
            raise ValueError(f"root must be a folder path or None; got {self.root!r}")
        check_bool("download", self.download)
        if self.preprocessing is None:
            family = {"thesis": "thesis", "hdnn": "plain"}
            self.preprocessing = next((p for f, p in family.items() if self.model in available(f)), "report")
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
        """Set ``key`` (a field, ``learning`` to a protocol name, ``learning.<field>``, or a model
        override) and check again."""
        if key == "learning":
            self.learning = protocol(value)
        elif key.startswith("learning."):
            self.learning = dataclasses.replace(self.learning, **{key.split(".", 1)[1]: value})
        elif key in {f.name for f in dataclasses.fields(self)}:
            setattr(self, key, value)
        else:
            model_key = key.removeprefix("model.")
            if model_key not in options(self.model):
                fields = ", ".join(f.name for f in dataclasses.fields(self) if f.name != "learning")
                raise ValueError(
                    f"unknown key {key!r}: not a run field ({fields}), not learning=<protocol> "
                    f"({', '.join(PROTOCOLS)}) or learning.<field> "
                    f"({', '.join(f.name for f in dataclasses.fields(LearningParameters))}) and not an option of "
                    f"{describe(self.model)}"
                )
            self.model_options = {**self.model_options, model_key: value}
        self.validate()
