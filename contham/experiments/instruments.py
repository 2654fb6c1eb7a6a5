"""What a training run measures besides loss and accuracy: the memory autograd keeps, the peak
device memory and the field evaluations of ODE and Hamiltonian blocks (from
`contham.collect_stats`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..blocks import collect_stats


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
        # not compiled: autograd calls the hook from the eager parts of a compiled model too,
        # where torch.compile would otherwise compile it again for each kind of tensor and address
        self._hooks = torch.autograd.graph.saved_tensors_hooks(torch.compiler.disable(self._pack), lambda t: t)

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


def field_evaluations(model: nn.Module) -> tuple[int, int] | None:
    """Field evaluations (forward, backward) of the latest batch, summed over the model's blocks;
    None for a model without blocks."""
    stats = collect_stats(model)
    if not stats:
        return None
    return sum(s.nfe_forward for s in stats), sum(s.nfe_backward for s in stats)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory_mb`: CUDA's peak allocated memory, or on Linux the
    process's peak resident set (``/proc/self/clear_refs``, Linux 4.0 and later)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: peak_memory_mb has no CPU figure


def peak_memory_mb(device: torch.device) -> float | None:
    """Since `reset_peak_memory`: the peak CUDA memory allocated, or on the CPU the peak
    resident set of the process (MiB; on Linux only, else None). The CPU figure is the whole
    process's: the data, the libraries, and memory that earlier runs in the same process left
    to the allocator."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return None if found is None else int(found.group(1)) / 1024
