"""A run's recipe: what a `RunConfig` turns into, the data, its input
shape and the network built for it. Training (`run`), ``contham plot``,
`compare` and `grid` all go through it,
so a network is rebuilt exactly as it was trained (its ``model_options`` included)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from ..data import POINT_SETS, balanced_subset, input_shape, load_image_set, point_set
from ..models import build
from .files import load_checkpoint
from .runconfig import RunConfig


class Recipe:
    """The data and the network of ``config`` (checked and resolved first)."""

    def __init__(self, config: RunConfig):
        config.validate()
        self.config = config
        assert config.dataset is not None and config.preprocessing is not None  # resolved by validate()
        #: ``in_channels``, ``num_classes``, ``image_size`` of the data (`contham.data.input_shape`)
        self.shape = input_shape(config.dataset, config.preprocessing)

    def data(self) -> tuple[Dataset, Dataset]:
        """The training set and the test set, their fractions applied."""
        config = self.config
        assert config.dataset is not None and config.preprocessing is not None
        train_set: Dataset
        test_set: Dataset
        if config.dataset in POINT_SETS:
            train_set, test_set = point_set(
                config.dataset, config.data_size or 8000, noise=config.noise, seed=config.seed
            )
        else:
            load = partial(load_image_set, config.dataset, config.root, download=config.download)
            train_set = load(train=True, preprocessing=config.preprocessing, augment=config.learning.crop_and_flip)
            test_set = load(train=False, preprocessing=config.preprocessing)
        return (
            balanced_subset(train_set, config.fraction, config.seed),
            balanced_subset(test_set, config.test_fraction, config.seed),
        )

    def network(self) -> nn.Module:
        """The network of the config, freshly initialised (from the global random state)."""
        return build(self.config.model, **self.shape, **self.config.model_options)

    def trained(self, run_dir: str | Path) -> nn.Module | None:
        """The network with the weights of ``run_dir``'s checkpoint (on the CPU, in eval mode), or
        None when the folder holds no checkpoint."""
        path = Path(run_dir) / "checkpoint.pt"
        if not path.exists():
            return None
        model = self.network()
        model.load_state_dict(load_checkpoint(path, map_location="cpu")["model"])
        return model.eval()
