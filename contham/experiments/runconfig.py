"""A training run described as data: `RunConfig` (network, data, protocol, run options),
saved as ``config.json`` in its run folder and readable from YAML/JSON files."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .._checks import check_bool, check_choice, check_int, check_nonnegative, check_positive
from ..config import LearningParameters, Parameters
from ..data import DATASETS, POINT_SETS, PREPROCESSINGS, input_shape
from ..models import available, build, default_data, describe, options, preset
from .loop import Settings
from .protocols import HDNN_2D_LEARNING, HDNN_MNIST_LEARNING, PROTOCOLS, THESIS_LEARNING, protocol


@dataclasses.dataclass
class RunConfig(Settings, Parameters):
    """One training run: network, data, protocol, and the run options of
    `Settings` (epochs, seed, device, ...). Every value is checked
    when it is set, network options included (the network is built on the meta device).

    Attributes:
        model: a `contham.models.build` name; model_options: its overrides.
        dataset: a `contham.data.DATASETS` name, or for ``hdnn_2d`` a point set of
            `contham.data.POINT_SETS`; None: the network's own (its paper's,
            `contham.models.default_data`: CIFAR-10 for the report's networks and He et al.'s,
            MNIST for the thesis's and ``hdnn_mnist``, the Swiss roll for ``hdnn_2d``); ``digits``
            runs offline. root, download: for torchvision.
        data_size, noise: a point set's size (default 8,000: 4,000 train, 4,000 test) and
            Gaussian noise (see `contham.data.point_set`).
        preprocessing: "report", "thesis", "plain"; None: the network's own
            (`contham.models.default_data`: "thesis" for the thesis's networks, "plain"
            for the H-DNNs, else "report").
        fraction: class-balanced fraction of the training set (report figure 4.13);
            test_fraction: of the test set (short runs).
        learning: the protocol, or the name of one of
            `PROTOCOLS`; None: the report preset's, the
            H-DNN papers' 2-D or MNIST protocol, or the thesis's.
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
    data_size: int | None = None
    noise: float = 0.0
    learning: LearningParameters = None  # type: ignore[assignment]

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
            self.dataset = default_data(self.model)[0]
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
            self.preprocessing = default_data(self.model)[1]
        check_choice("preprocessing", self.preprocessing, PREPROCESSINGS)
        for name in ("fraction", "test_fraction"):
            value = check_positive(name, getattr(self, name))
            if value > 1:
                raise ValueError(f"{name} must be in (0, 1]; got {value}")
            setattr(self, name, value)
        self.learning.validate()
        Settings.validate(self)
        self.check_network()

    def check_network(self) -> None:
        """Build the network without allocating its weights (on the meta device), so that a bad
        network option is reported when it is set, not when training reaches it."""
        assert self.dataset is not None and self.preprocessing is not None  # resolved by validate()
        with torch.device("meta"):
            build(self.model, **input_shape(self.dataset, self.preprocessing), **self.model_options)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` (a field, ``learning`` to a protocol name, ``learning.<field>``, or a model
        override) and check again."""
        if key == "learning":
            self.learning = protocol(value)
        elif key.startswith("learning."):
            name = key.split(".", 1)[1]
            allowed = [f.name for f in dataclasses.fields(LearningParameters)]
            check_choice("learning.<field>", name, allowed)
            self.learning = dataclasses.replace(self.learning, **{name: value})
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
