"""Whole training steps replayed from CUDA graphs (the run field ``cuda_graphs``).

A CUDA graph records the kernels that a piece of work launches and replays them all with one
launch, so the host no longer sets the pace of small batches. Capture has rules (PyTorch's notes
on CUDA graphs, "whole-network capture"), and the training loop keeps them:

* warm-up: a few eager iterations on a side stream before the capture, for the lazy
  initialisations (cuBLAS workspaces, the optimiser's state) to happen outside it;
* static shapes and addresses: the graph reads its inputs from buffers made at capture and
  writes its outputs to the tensors made then; new batches are copied into those buffers, and a
  batch of another shape (the last, partial batch of an epoch) gets its own graph, captured once;
* no host synchronisation and no Python decision on tensor values inside the step: the warm-up
  iterations watch for synchronisations (``torch.cuda.set_sync_debug_mode``) and a step that
  makes one (an adaptive solver deciding its steps, for instance) is not captured;
* optimisers with their step count and learning rate on the device (fused Adam and SGD with a
  tensor lr, which the lr schedule fills in place between replays), and autocast without its
  weight cache.

Python code inside a captured function runs once, at capture: side effects such as the field
evaluation counts of the blocks keep the values of that step (equal for fixed-step networks).

`GRAPHS` holds, by device type, the graph families that capture; `Captured` runs a
function through them.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

WARMUP = 3
"""Eager calls of each input shape before its capture (PyTorch's examples use 3)."""


class GraphFamily(Protocol):
    """Graphs that share one memory pool: warm-up calls, capture, replay."""

    def warm(self, fn: Callable[[], Any]) -> tuple[Any, str | None]:
        """``fn()`` run eagerly as a warm-up; its result and the first host synchronisation it
        made (a message), or None."""
        ...

    def capture(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Record ``fn()`` without running it; return a function that replays it and returns the
        tensors ``fn`` returned at capture (overwritten by each replay)."""
        ...


class CudaGraphs:
    """CUDA graphs (``torch.cuda.CUDAGraph``) in one memory pool, warmed up on a side stream."""

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()

    def warm(self, fn: Callable[[], Any]) -> tuple[Any, str | None]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out, syncs = synchronisations(fn)
        torch.cuda.current_stream().wait_stream(stream)
        return out, syncs[0] if syncs else None

    def capture(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = fn()

        def replay() -> Any:
            graph.replay()
            return output

        return replay


def synchronisations(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``fn()`` run with CUDA's sync debug mode at "warn": its result and each host
    synchronisation it made, as ``"<message>, in <file>:<line>"`` (the Python line whose
    operation synchronised). The mode is put back after."""
    mode = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode(mode)
    return out, [f"{w.message}, in {w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


GRAPHS: dict[str, Callable[[], GraphFamily]] = {"cuda": CudaGraphs}
"""The graph families by device type (read when a run starts)."""


class NotCaptured(RuntimeError):
    """A step that ``cuda_graphs=true`` asked to capture synchronises with the host or cannot be
    captured."""


@dataclasses.dataclass
class _Shape:
    """The graph of one input shape: warm-up calls made, then its static inputs and replay."""

    warmed: int = 0
    static: list[Any] | None = None
    replay: Callable[[], Any] | None = None


class Captured:
    """``fn(*inputs)`` replayed from graphs of ``family``, one per shape and dtype of the tensor
    inputs and value of the others (constants of the graph): the first `WARMUP` calls of a shape
    run eagerly (warm-up), the next one captures ``fn`` on copies of its tensor inputs (the static
    buffers) and replays it, later calls copy their tensors into the buffers and replay. If a
    warm-up call synchronises with the host, or the capture fails, every call from then on runs
    ``fn`` eagerly, after a warning that names the cause (``strict``: `NotCaptured` is
    raised instead). ``name`` says what ``fn`` is, in those messages."""

    def __init__(self, fn: Callable[..., Any], family: GraphFamily, name: str, strict: bool = False):
        self.fn, self.family, self.name, self.strict = fn, family, name, strict
        self.shapes: dict[tuple[Any, ...], _Shape] = {}
        self.captures = 0
        self.blocked: str | None = None

    def __call__(self, *inputs: Any) -> Any:
        if self.blocked is not None:
            return self.fn(*inputs)
        key = tuple((a.shape, a.dtype) if isinstance(a, Tensor) else a for a in inputs)
        shape = self.shapes.setdefault(key, _Shape())
        if shape.replay is None and shape.warmed < WARMUP:
            shape.warmed += 1
            out, sync = self.family.warm(lambda: self.fn(*inputs))
            if sync is not None:
                self._block(f"synchronises with the host ({sync})")
            return out
        if shape.static is None:
            static = [a.clone() if isinstance(a, Tensor) else a for a in inputs]
            try:
                shape.replay = self.family.capture(lambda: self.fn(*static))
            except Exception as error:  # an operation that cannot be captured (many error types)
                self._block(f"cannot be captured ({type(error).__name__}: {str(error).splitlines()[0]})", error)
                return self.fn(*inputs)  # the capture ran no kernels: the step is still to be done
            shape.static = static
            self.captures += 1
        else:
            for buffer, a in zip(shape.static, inputs):
                if isinstance(buffer, Tensor):
                    buffer.copy_(a)
        assert shape.replay is not None
        return shape.replay()

    def _block(self, cause: str, error: Exception | None = None) -> None:
        message = f"cuda_graphs: the {self.name} {cause}, so it is not captured"
        if self.strict:
            raise NotCaptured(message + "; set cuda_graphs=auto to run it eagerly") from error
        warnings.warn(message + "; running it eagerly", RuntimeWarning, stacklevel=3)
        self.blocked = cause
