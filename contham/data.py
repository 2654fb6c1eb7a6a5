"""Datasets: torchvision's image sets with the seeds' preprocessing, offline sets, subsets.

Two ways to the same images: `load_image_set` decodes a set once into uint8 tensors and
preprocesses whole batches on the training device (`ImageSet`, `contham.augment`;
what training uses), and `load_dataset` gives torchvision's dataset with per-sample
transforms (for a user's own ``DataLoader``). Both give the same images and the same augmentation
distribution.

Image sets (``root`` is a torchvision root; ``download=True`` fetches what is missing):
``mnist``, ``qmnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``stl10``, and ``digits``
(scikit-learn's bundled 8x8 digits, always offline; the first 1,500 images train, the other 297
test). A root holding only torchvision's ``raw/*.gz`` files of MNIST-like sets is extracted on
first use without network. CIFAR and STL-10, stored by
torchvision as pickles and binaries, are decoded once and cached as uint8 tensors in
``<root>/contham-cache/`` (where the root is writable).

Preprocessing (``preprocessing=``):

* ``"report"`` (the report, after Chang et al.): training images are zero-padded by 4 (12 for
  STL-10), randomly cropped back to size and randomly flipped horizontally (with ``augment``);
  every image is standardised per channel.
* ``"thesis"``: training images are upscaled to 32 and randomly cropped to 28 (with
  ``augment``), test images resized to 28; standardised.
* ``"plain"``: standardisation only.

2-D point sets of the H-DNN papers: `points` and its train/test split `point_set`
(``swiss_roll``, ``double_circles``, ``double_moons``). Reduced data: `balanced_subset`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from ._checks import check_choice, check_int, check_nonnegative, check_positive
from .augment import PREPROCESSINGS, THESIS_CROP, BatchPreprocess

Transform = Callable[[Any], Tensor]
"""A per-sample transform (a torchvision ``v2.Compose``)."""

POINT_SETS = ("swiss_roll", "double_circles", "double_moons")


@dataclass(frozen=True)
class DatasetInfo:
    """Shape, classes and per-channel statistics (for standardisation) of an image set."""

    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 4


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(1, 28, 10, (0.1307,), (0.3081,)),
    "qmnist": DatasetInfo(1, 28, 10, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo(1, 28, 10, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": DatasetInfo(3, 96, 10, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), crop_padding=12),
    "digits": DatasetInfo(1, 8, 10, (0.3052,), (0.3749,)),
}
"""Every image set `load_dataset` knows."""

_DIGITS_TRAIN = 1500


def dataset_info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of image set ``name``."""
    return DATASETS[check_choice("dataset", name, DATASETS)]


def input_shape(dataset: str, preprocessing: str = "report") -> dict[str, int]:
    """What a network is built for on ``dataset`` (an image set or a point set) after
    ``preprocessing``: ``in_channels``, ``num_classes`` and ``image_size`` (the thesis's
    preprocessing makes 28 x 28 images; a point is 2 features, "1 x 1")."""
    if dataset in POINT_SETS:
        return dict(in_channels=2, num_classes=2, image_size=1)
    info = dataset_info(dataset)
    image_size = THESIS_CROP if preprocessing == "thesis" else info.image_size
    return dict(in_channels=info.channels, num_classes=info.num_classes, image_size=image_size)


def transform(name: str, train: bool, preprocessing: str = "report", augment: bool = True) -> Transform:
    """The preprocessing of image set ``name`` (see the module docstring)."""
    info = dataset_info(name)
    check_choice("preprocessing", preprocessing, PREPROCESSINGS)
    from torchvision.transforms import v2  # imported on use: torchvision's import costs seconds

    steps: list = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if preprocessing == "report" and train and augment:
        steps += [v2.RandomCrop(info.image_size, padding=info.crop_padding), v2.RandomHorizontalFlip()]
    elif preprocessing == "thesis":
        steps += [v2.Resize(32), v2.RandomCrop(28)] if train and augment else [v2.Resize(28)]
    steps.append(v2.Normalize(info.mean, info.std))
    return v2.Compose(steps)


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    train: bool = True,
    download: bool = False,
    preprocessing: str = "report",
    augment: bool = True,
) -> Dataset:
    """Image set ``name``, its training or test split, preprocessed (see the module docstring).

    Raises ``ValueError`` naming the root when the files are not there (and ``download`` is off).
    """
    tf = transform(name, train, preprocessing, augment)
    if name == "digits":
        return _digits(train, tf)
    if root is None:
        raise ValueError(
            f"dataset={name!r} needs root=<a torchvision data folder> (with download=true torchvision fetches "
            "it there); dataset=digits runs offline on scikit-learn's bundled 8x8 digits"
        )
    import torchvision  # imported on use, as in `transform`

    root = Path(root)
    split = "train" if train else "test"
    if name == "stl10":
        cls, kwargs = torchvision.datasets.STL10, dict(split=split)
    elif name == "qmnist":
        cls, kwargs = torchvision.datasets.QMNIST, dict(what=split, train=train)  # type: ignore[dict-item]
    else:
        cls = {
            "mnist": torchvision.datasets.MNIST,
            "fashion_mnist": torchvision.datasets.FashionMNIST,
            "cifar10": torchvision.datasets.CIFAR10,
            "cifar100": torchvision.datasets.CIFAR100,
        }[name]
        kwargs = dict(train=train)  # type: ignore[dict-item]
    try:
        return cls(root, transform=tf, download=download or _has_local_archives(root, name), **kwargs)
    except RuntimeError as error:
        raise ValueError(
            f"dataset={name!r} not found under root={str(root)!r} ({error}). Pass download=True (command line: "
            "download=true; contham compare: --download) where a network exists, or point root at a writable "
            "copy of a folder holding it."
        ) from None


def _has_local_archives(root: Path, name: str) -> bool:
    """True when an MNIST-like root holds torchvision's .gz files (extracting them needs no network)."""
    folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}.get(name)
    return folder is not None and len(list((root / folder / "raw").glob("*-ubyte.gz"))) == 4


class _ImageTensors(Dataset):
    """uint8 images ``(N, C, H, W)`` and labels, with a transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Transform):
        self.images, self.targets, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.images[i]), int(self.targets[i])


def _digit_tensors(train: bool) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(digits.target)
    part = slice(None, _DIGITS_TRAIN) if train else slice(_DIGITS_TRAIN, None)
    return images[part], labels[part]


def _digits(train: bool, tf: Transform) -> Dataset:
    return _ImageTensors(*_digit_tensors(train), tf)


class ImageSet(Dataset):
    """An image set decoded once: uint8 ``images`` ``(N, C, H, W)``, int64 ``targets`` and the
    `BatchPreprocess` of its split.

    Training takes whole batches with `batch`; indexing one item gives the preprocessed
    image (random augmentation from torch's global generator) and its label, as a torchvision
    dataset does.
    """

    def __init__(self, images: Tensor, targets: Tensor, preprocess: BatchPreprocess):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(targets):
            raise ValueError("images must be uint8 (N, C, H, W) with one target per image")
        self.images, self.targets, self.preprocess = images, targets.long(), preprocess

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.preprocess(self.images[i : i + 1])[0], int(self.targets[i])

    def subset(self, indices: Tensor) -> ImageSet:
        """The items at ``indices`` (a new set sharing the preprocessing)."""
        return ImageSet(self.images[indices], self.targets[indices], self.preprocess)

    def batch(self, indices: Tensor, device: torch.device, params: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Preprocessed images and labels of ``indices`` on ``device``: gathered on the host
        (into pinned memory when ``device`` is CUDA), copied without blocking, preprocessed there
        with ``params`` (from `draw`)."""
        images, labels = self.images.index_select(0, indices), self.targets.index_select(0, indices)
        if device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if self.preprocess.mean.device != images.device:
            self.preprocess.to(device)
        return self.preprocess(images, params), labels


def load_images(
    name: str, root: str | Path | None = None, *, train: bool = True, download: bool = False
) -> tuple[Tensor, Tensor]:
    """The uint8 images ``(N, C, H, W)`` and int64 labels of image set ``name``, decoded once
    (CIFAR and STL-10 are cached in ``<root>/contham-cache/``)."""
    dataset_info(name)
    if name == "digits":
        return _digit_tensors(train)
    split = "train" if train else "test"
    cache = Path(root) / "contham-cache" / f"{name}-{split}.pt" if root is not None else None
    if cache is not None and name in _CACHED and cache.exists():
        stored = torch.load(cache, weights_only=True)
        return stored["images"], stored["labels"]
    raw = load_dataset(name, root, train=train, download=download, preprocessing="plain")
    data = raw.data  # type: ignore[attr-defined]  # torchvision keeps the decoded images in .data
    data = data if isinstance(data, Tensor) else torch.from_numpy(np.asarray(data))
    if data.dim() == 3:  # MNIST-like: (N, H, W)
        data = data[:, None]
    elif data.shape[-1] == 3:  # CIFAR: (N, H, W, C)
        data = data.permute(0, 3, 1, 2)
    labels = labels_of(raw)
    images = data.contiguous().to(torch.uint8)
    if cache is not None and name in _CACHED:
        _write_cache(cache, images, labels)
    return images, labels


_CACHED = ("cifar10", "cifar100", "stl10")


def _write_cache(path: Path, images: Tensor, labels: Tensor) -> None:
    """Save decoded tensors atomically; a root that cannot be written just goes without a cache."""
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"images": images, "labels": labels}, tmp)
        os.replace(tmp, path)
    except OSError:
        pass


def load_image_set(
    name: str,
    root: str | Path | None = None,
    *,
    train: bool = True,
    download: bool = False,
    preprocessing: str = "report",
    augment: bool = True,
) -> ImageSet:
    """Image set ``name`` decoded once, with the batched preprocessing of its split (see the
    module docstring); the tensor-backed counterpart of `load_dataset`."""
    info = dataset_info(name)
    images, labels = load_images(name, root, train=train, download=download)
    preprocess = BatchPreprocess(info.mean, info.std, info.image_size, preprocessing, train=train, augment=augment,
                                 crop_padding=info.crop_padding)  # fmt: skip
    return ImageSet(images, labels, preprocess)


def labels_of(dataset: Dataset) -> Tensor:
    """The class label of every item of ``dataset`` as a 1-D tensor (without loading images)."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    if isinstance(dataset, ImageSet):
        return dataset.targets
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    for attribute in ("targets", "labels"):
        if hasattr(dataset, attribute):
            labels = torch.as_tensor(np.asarray(getattr(dataset, attribute)))
            return labels[:, 0] if labels.dim() == 2 else labels  # QMNIST keeps 8 columns
    raise ValueError(f"dataset of type {type(dataset).__name__} has no targets/labels to balance")


def tensors_of(dataset: Dataset) -> tuple[Tensor, ...] | None:
    """The stacked tensors of a `TensorDataset` (or a ``Subset`` of one), for batches by
    indexing instead of item by item; None for any other dataset."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors
    if isinstance(dataset, Subset):
        inner = tensors_of(dataset.dataset)
        if inner is not None:
            indices = torch.as_tensor(dataset.indices, dtype=torch.long)
            return tuple(t[indices] for t in inner)
    return None


def balanced_subset(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """A class-balanced random ``fraction`` of ``dataset``: from each class, ``round(fraction * n_c)``
    items (at least one), drawn with ``seed``. ``fraction=1`` returns ``dataset`` itself."""
    check_positive("fraction", fraction)
    if fraction > 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
    if fraction == 1:
        return dataset
    labels = labels_of(dataset)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique():
        members = torch.nonzero(labels == c).flatten()
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    indices = torch.cat(chosen).sort().values
    return dataset.subset(indices) if isinstance(dataset, ImageSet) else Subset(dataset, indices.tolist())


def points(name: str, n: int = 8000, *, noise: float = 0.0, seed: int = 0) -> TensorDataset:
    """A 2-D two-class point set in the geometry of Galimberti et al.'s H-DNN experiments:
    ``(x of shape (n, 2), labels)``, shuffled with ``seed``.

    * ``swiss_roll``: two spirals of two turns, ``r (cos theta, sin theta)`` with theta evenly
      spaced in ``[0, 4 pi)``, r from 0 to 1 (class 1) and from 0.2 to 1.2 (class 0); n/2 each.
    * ``double_circles``: four rings of radii 1, 2, 3, 4 (classes 0, 1, 0, 1), n/4 points each
      at evenly spaced angles, each coordinate jittered uniformly by +-0.3.
    * ``double_moons``: four half circles of radius 1 (two interleaved pairs of moons, the
      second pair shifted by 2 along x), n/4 points each, jittered uniformly by +-0.15.

    ``noise``: standard deviation of Gaussian noise added to both coordinates. The train/test
    split of the experiments is `point_set`.
    """
    check_choice("name", name, POINT_SETS)
    check_int("n", n, 8)
    check_nonnegative("noise", noise)
    generator = torch.Generator().manual_seed(seed)

    def jitter(shape: tuple[int, ...], width: float) -> Tensor:
        return width * (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5)

    if name == "swiss_roll":
        half = n // 2
        theta = torch.arange(half, dtype=torch.float64) * (4 * math.pi / half)
        radius = torch.cat((torch.linspace(0.2, 1.2, half, dtype=torch.float64), torch.linspace(0, 1, half)))
        theta = theta.repeat(2)
        x = torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), 1)
        labels = torch.cat((torch.zeros(half), torch.ones(half))).long()
    else:
        quarter = n // 4
        ring = torch.arange(4).repeat_interleave(quarter)
        labels = ring % 2
        if name == "double_circles":
            theta = (torch.arange(quarter, dtype=torch.float64) * (4 * math.pi / quarter)).repeat(4)
            radius = 1.0 + ring.double()
            x = torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), 1) + jitter((4 * quarter, 2), 0.6)
        else:
            theta = (torch.arange(quarter, dtype=torch.float64) * (math.pi / quarter)).repeat(4)
            upper = torch.stack((torch.cos(theta), torch.sin(theta)), 1)
            lower = torch.stack((1 - torch.cos(theta), 0.5 - torch.sin(theta)), 1)
            x = torch.where(labels[:, None] == 0, upper, lower) + jitter((4 * quarter, 2), 0.3)
            x[:, 0] += 2.0 * (ring >= 2)
    order = torch.randperm(len(x), generator=generator)
    if noise:
        x = x + noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return TensorDataset(x[order].float(), labels[order])


POINT_DOMAINS = {"swiss_roll": (-1.2, 1.2, -1.2, 1.2), "double_circles": (-5.0, 5.0, -5.0, 5.0),
                 "double_moons": (-2.0, 5.0, -1.0, 2.0)}  # fmt: skip
"""The plotting window ``(x_min, x_max, y_min, y_max)`` of each point set."""


def point_set(name: str, size: int = 8000, *, noise: float = 0.0, seed: int = 0) -> tuple[Subset, Subset]:
    """``(train, test)``: `points` split as in the H-DNN experiments, the even positions of
    the shuffled set for training and the odd ones for testing (4,000 each by default)."""
    data = points(name, size, noise=noise, seed=seed)
    return Subset(data, list(range(0, len(data), 2))), Subset(data, list(range(1, len(data), 2)))
