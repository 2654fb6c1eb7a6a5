"""Shared timing helpers for the benchmark scripts: interleaved repetitions, medians, kernel launches."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def interleaved_medians(candidates: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict:
    """Run every candidate once per round, ``repeats`` rounds (after ``warmup`` rounds), and return
    each one's median wall time in seconds. Interleaving spreads drifts of the machine evenly."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(warmup + repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def training_step(model, x) -> Callable[[], None]:
    """forward + backward of ``model(x).sum()`` (gradients zeroed first)."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    return step


def classifier_step(model, x, labels) -> Callable[[], None]:
    """forward, cross-entropy against ``labels`` and backward (gradients zeroed first)."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()

    return step


def launches(step: Callable[[], object]) -> tuple[int, float]:
    """One call of ``step`` under the profiler: the kernels it launches, and the seconds they
    kept the device busy (0.0 on the CPU). On CUDA, the kernels and copies the device ran. On
    the CPU, where nothing is launched, what a GPU would launch: the tensor operations called
    from Python or by autograd (not those they call in turn), views excluded, and the fused
    kernels of inductor's compiled graphs (which record themselves where
    ``torch._inductor.config.cpp.enable_kernel_profile`` was set when they compiled)."""
    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as p:
        step()
    if cuda:
        kernels = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        return len(kernels), sum(e.time_range.elapsed_us() for e in kernels) / 1e6
    return sum(_launch(e) and not any(map(_launch, _ancestors(e))) for e in p.events()), 0.0


def _ancestors(event: Any) -> list[Any]:
    parents = []
    while event.cpu_parent is not None:
        event = event.cpu_parent
        parents.append(event)
    return parents


def _launch(event: Any) -> bool:
    """Whether a profiled CPU event is a kernel's work: an inductor kernel, or an ATen operation
    that is not a view."""
    if "cpp_fused" in event.name:
        return True
    if not event.name.startswith("aten::"):
        return False
    packet = getattr(torch.ops.aten, event.name.removeprefix("aten::"))
    returns = getattr(packet, packet.overloads()[0])._schema.returns
    return not any(r.alias_info is not None and not r.alias_info.is_write for r in returns)
