"""One run on many devices: ``torch.distributed`` and DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node=N -m contham train ...`` starts N processes (ranks) that set
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; `setup` reads them and joins the process
group (NCCL on CUDA, gloo on CPU). Every global batch of the 1-process run is split into N
contiguous shards, one per rank (`GlobalBatches`), and each rank's loss is weighted by its
share of the global batch, so that the gradient DDP averages is the 1-process gradient of the same
global batch: an N-rank run follows the same optimisation as a 1-process run. The random
augmentation of a `ImageSet` is drawn for the whole global batch, so the
ranks see the crops and flips of one process; dropout and the per-sample transforms of other
datasets draw from each rank's own generator (same distribution, other samples).

Batch norm normalises each rank's shard on its own unless the run converts it
(``sync_batchnorm=true``) with `convert_sync_batchnorm`: then the statistics are those of the
global batch, exactly as in one process: ``torch.nn.SyncBatchNorm`` on CUDA, which PyTorch
supports on GPUs only, and on CPU (gloo) `GlooSyncBatchNorm`, which reduces the statistics
with the differentiable ``torch.distributed.nn.functional.all_reduce``.
"""

from __future__ import annotations

import datetime
import importlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """True when several processes train one run."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """True on the rank that writes files and prints (rank 0)."""
        return self.rank == 0


def ranks_from_env() -> Ranks:
    """The `Ranks` that ``torchrun`` put in the environment (1 process without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); "
            f"got {os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, {os.environ.get('LOCAL_RANK')!r}"
        ) from None
    return Ranks(rank, world, local)


def setup(ranks: Ranks, device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the process group of a ``torchrun`` launch (no-op for one process).

    ``device`` is this rank's device (see `rank_device`); its type picks the backend."""
    if ranks.distributed and not dist.is_initialized():
        # DistributedDataParallel imports torch._dynamo; imported after the gloo group has started,
        # it made 3 to 6 in 20 adjoint DDP runs abort (torch 2.14), imported before, none in 20
        importlib.import_module("torch._dynamo")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def shutdown() -> None:
    """Leave the process group, if this process joined one (end of a ``torchrun`` command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per rank: ``cuda`` becomes ``cuda:<local rank>`` in a distributed run."""
    if device.type == "cuda" and ranks.distributed and device.index is None:
        return torch.device("cuda", ranks.local_rank)
    return device


def all_reduce_sum(values: Tensor, ranks: Ranks) -> Tensor:
    """``values`` summed over the ranks (itself for one process)."""
    if ranks.distributed:
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_gather(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not ranks.distributed:
        return [obj]
    gathered: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ranks.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    """Wait until every rank gets here."""
    if ranks.distributed:
        dist.barrier()


class GlobalBatches(Sampler[list[int]]):
    """Shuffled global batches of ``batch_size`` indices, each cut into ``world_size`` contiguous
    shards; yields this rank's shard. In ``DataLoader(batch_sampler=..., generator=generator)``
    with one process it yields the batches of ``DataLoader(shuffle=True, generator=generator)``:
    the same permutation, the same order.

    A last global batch with fewer samples than ranks is dropped in a distributed run (every rank
    needs at least one sample); `global_sizes` holds the size of every global batch yielded.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, ranks: Ranks, limit: int | None = None):
        self.n, self.batch_size, self.generator, self.ranks = n, batch_size, generator, ranks
        order = range(0, n, batch_size)
        sizes = [min(batch_size, n - start) for start in order]
        sizes = [s for s in sizes if s >= ranks.world_size]
        self.global_sizes = sizes[:limit] if limit is not None else sizes

    def __len__(self) -> int:
        return len(self.global_sizes)

    def __iter__(self) -> Iterator[list[int]]:
        for indices, _ in self.shards():
            yield indices.tolist()

    def shards(self) -> Iterator[tuple[Tensor, slice]]:
        """This rank's shard of each global batch: its indices (a tensor) and its position in the
        global batch (to take its rows of per-sample random parameters drawn for the whole batch)."""
        permutation = torch.randperm(self.n, generator=self.generator)
        for i, size in enumerate(self.global_sizes):
            batch = permutation[i * self.batch_size : i * self.batch_size + size]
            yield batch[shard_slice(size, self.ranks)], shard_slice(size, self.ranks)


def shard_slice(n: int, ranks: Ranks) -> slice:
    """This rank's contiguous part of ``n`` items (the parts of ``tensor_split``)."""
    base, extra = divmod(n, ranks.world_size)
    start = ranks.rank * base + min(ranks.rank, extra)
    return slice(start, start + base + (ranks.rank < extra))


def shard_indices(n: int, ranks: Ranks) -> Tensor:
    """This rank's contiguous share of ``range(n)`` (evaluation)."""
    return torch.arange(n)[shard_slice(n, ranks)]


class SumOverRanks(torch.autograd.Function):
    """``x`` summed over the ranks, differentiable: the gradient of each rank's ``x`` is the sum
    of the ranks' gradients of the result (what torch's deprecated
    ``torch.distributed.nn.functional.all_reduce`` computed)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def differentiable_all_reduce(x: Tensor) -> Tensor:
    """`SumOverRanks` applied to ``x``."""
    return SumOverRanks.apply(x)


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch for CPU ranks (gloo), where ``torch.nn.SyncBatchNorm`` and
    DDP refuse to run.

    In a distributed training step it normalises with the mean and biased variance of the global
    batch, reduced by two differentiable all-reduces (sum, then sum of squared deviations), and
    updates the running statistics with the unbiased variance, as ``BatchNorm`` does for one
    process; otherwise (evaluation, one process) it is plain batch norm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (batch, channels, ...); got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = differentiable_all_reduce(input.new_tensor([input.numel() / input.shape[1]]))
        mean = differentiable_all_reduce(input.sum(dims)) / count
        centred = input - mean.view(shape)
        var = differentiable_all_reduce(centred.pow(2).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None  # tracked with the running statistics
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = float(count)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / max(n - 1, 1), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every batch norm normalising over the global batch: ``torch.nn.SyncBatchNorm``
    on CUDA, `GlooSyncBatchNorm` on CPU. Parameters, buffers and state-dict keys are kept
    (checkpoints load either way)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, GlooSyncBatchNorm):
        sync = GlooSyncBatchNorm(model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats)
        sync.load_state_dict(model.state_dict())
        sync.train(model.training)
        return sync.to(next(itertools.chain(model.parameters(), model.buffers())).device)
    for name, child in model.named_children():
        setattr(model, name, convert_sync_batchnorm(child, device))
    return model


def wrap(model: nn.Module, device: torch.device, ranks: Ranks) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` for a distributed run (unchanged otherwise)."""
    if not ranks.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def weighted_cross_entropy(out: Tensor, y: Tensor, global_size: int, ranks: Ranks) -> Tensor:
    """This rank's share of the global batch's mean cross-entropy, scaled by ``world_size`` so that
    DDP's gradient average over ranks is the gradient of the global mean."""
    if not ranks.distributed:
        return F.cross_entropy(out, y)
    return F.cross_entropy(out, y, reduction="sum") * (ranks.world_size / global_size)
