"""How a run's data reaches the device: shuffled training batches and in-order evaluation batches.

An `ImageSet` is gathered and preprocessed as whole batches on the device;
tensors in memory (point sets, bundled digits) are gathered by index; any other dataset goes
through a ``DataLoader`` with its per-sample transforms.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import ImageSet, tensors_of
from . import distributed
from .distributed import GlobalBatches, Ranks


def in_order(
    dataset: Dataset, batch_size: int, device: torch.device, ranks: Ranks | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's share of ``dataset`` in order, in batches of ``batch_size``, on ``device``, with
    no augmentation."""
    ranks = ranks or Ranks()
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


def training_batches(
    train_set: Dataset,
    batches: GlobalBatches,
    generator: torch.Generator,
    augmentation: torch.Generator,
    device: torch.device,
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """``(x, y, global batch size)`` of this rank's shard of every global batch, on ``device``.

    An image set's random augmentation is drawn for the global batch from ``augmentation`` (so any
    number of ranks sees the augmentations of one process); a ``DataLoader`` draws the order of
    ``shuffle=True`` from ``generator``."""
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
    loader = DataLoader(train_set, batch_sampler=batches, generator=generator)
    for (x, y), size in zip(loader, batches.global_sizes):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), size
