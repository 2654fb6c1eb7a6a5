"""Shared timing helpers for the benchmark scripts: interleaved repetitions, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


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
