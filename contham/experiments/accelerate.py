"""Accelerator options of a run: mixed precision (``amp``), the channels-last memory format and
``torch.compile``, each off by default and each checked against fp32 eager in the tests.

* ``amp="bf16"``: forward and loss under ``torch.autocast`` in bfloat16 (CUDA and CPU);
  ``amp="fp16"``: float16 with a ``torch.amp.GradScaler`` that scales the loss and skips the
  steps whose gradients overflowed (its state is checkpointed). Weights and optimiser stay fp32.
* ``channels_last=True``: weights and image batches in NHWC layout, which cuDNN's and oneDNN's
  convolutions prefer (tensor cores on GPUs).
* ``compile=True`` (or a backend name from ``torch.compiler.list_backends()``): the training
  forward runs through ``torch.compile``. A network that cannot be compiled is trained eagerly
  after one warning that names the error (`CompiledOrEager`); evaluation runs eagerly.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

AMP_MODES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Accelerator:
    """The accelerator options of one run (``amp`` checked by `check_amp`, ``compile`` by the check
    that `contham.solvers.RungeKutta` also uses)."""

    amp: str | None = None
    channels_last: bool = False
    compile: bool | str = False


def check_amp(amp: Any) -> str | None:
    """``amp`` checked: None (off), "bf16" or "fp16"."""
    if amp is not None and amp not in AMP_MODES:
        raise ValueError(f"amp must be None (off), 'bf16' or 'fp16'; got {amp!r}")
    return amp


def autocast(device: torch.device, amp: str | None, cache: bool = True) -> contextlib.AbstractContextManager:
    """The autocast context of ``amp`` on ``device`` (a no-op when off); ``cache=False`` recasts
    the weights at each use instead of caching their casts (as graph capture requires)."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_MODES[amp], cache_enabled=cache)


def grad_scaler(device: torch.device, amp: str | None) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (None otherwise: bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def memory_format(x: Tensor, channels_last: bool) -> Tensor:
    """``x`` in channels-last layout when asked and 4-D (images)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


class CompiledOrEager(nn.Module):
    """``torch.compile(module)`` that falls back to ``module`` itself, with one warning, when the
    compilation fails (the first call, or any later recompilation, raises). Parameters and
    state are ``module``'s."""

    compiled: Callable[..., Any]

    def __init__(self, module: nn.Module, backend: bool | str = True):
        super().__init__()
        self.module = module
        # kept out of the submodules: the compiled wrapper shares module's parameters
        self.__dict__["compiled"] = torch.compile(module, backend=backend if isinstance(backend, str) else "inductor")
        self.failed: str | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # dynamo, AOTAutograd and backends raise many types
                lines = [line for line in str(error).splitlines() if line.strip()][:2]  # "raised:" + the cause
                self.failed = f"{type(error).__name__}: {' '.join(lines)}"
                warnings.warn(
                    f"torch.compile failed for {type(self.module).__name__} ({self.failed}); training eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.module(*args, **kwargs)
