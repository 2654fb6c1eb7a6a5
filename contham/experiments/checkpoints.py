"""What makes a run resumable: the checkpoint of its state after every epoch, its random state,
the lock on its folder, and the check that a folder holds the same run.

A run resumed from its checkpoint goes on exactly as the uninterrupted run would have: the
model, optimiser, scheduler, gradient scaler, history and the random state of every rank (Python,
NumPy, torch, CUDA) are restored; each epoch's batches come from a generator seeded by the run's
seed and the epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import LearningParameters, plain
from . import distributed
from .distributed import Ranks
from .files import RunFolderError, RunLock, load_checkpoint, read_json, save_checkpoint
from .status import Status


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def random_state() -> dict[str, Any]:
    """The random state of this process (Python, NumPy, torch and every CUDA device)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Restore a state of `random_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def folder_lock(run_dir: Path, ranks: Ranks, wait: bool) -> Iterator[None]:
    """Rank 0 holds the run folder's lock (`RunLock`); every rank
    raises if rank 0 could not take it."""
    with contextlib.ExitStack() as held:
        error = None
        if ranks.main:
            try:
                held.enter_context(RunLock(run_dir, wait=wait))
            except ValueError as err:
                error = err
        error = distributed.broadcast(error, ranks)
        if error is not None:
            raise error
        yield


def field_defaults(cls: Any) -> dict[str, Any]:
    """The default of every field of dataclass ``cls`` that has one (as declared, before any
    validation resolves it)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def same_run(stored: Any, config: dict[str, Any], run_fields: dict[str, Any]) -> bool:
    """Whether the config a folder was trained with (``stored``) describes the run ``config``.
    A field that ``stored`` lacks (written by an earlier contham) matches its default:
    ``run_fields`` are the run config's defaults (`field_defaults`), the protocol's come from
    `LearningParameters`."""
    if stored == config or not isinstance(stored, dict):
        return stored == config
    completed = {**run_fields, **stored}
    if isinstance(stored.get("learning"), dict):
        completed["learning"] = {**field_defaults(LearningParameters), **stored["learning"]}
    return plain(completed) == config


class RunFolder:
    """The files of one run (see `contham.experiments.files`) as the trainer reads and writes
    them; ``config``: the run's config dict, ``run_fields``: the defaults of its fields (for
    `same_run`)."""

    def __init__(self, path: Path, config: dict[str, Any], run_fields: dict[str, Any] | None = None):
        self.path, self.config, self.run_fields = path, config, run_fields or {}
        self.metrics_path, self.checkpoint_path = path / "metrics.json", path / "checkpoint.pt"

    def different_run(self) -> RunFolderError:
        return RunFolderError(f"run_dir={str(self.path)!r} holds a different run; use another folder or --restart")

    def finished(self) -> dict[str, Any] | None:
        """The metrics of a run that is done (finished, diverged, stopped early), or None."""
        if not self.metrics_path.exists():
            return None
        previous = read_json(self.metrics_path)
        if not isinstance(previous, dict) or "status" not in previous:
            raise RunFolderError(
                f"{str(self.metrics_path)!r} is not a contham metrics file; use --restart to start afresh"
            )
        if previous["status"] not in {s.value for s in Status} or not Status(previous["status"]).done:
            return None
        config_path = self.path / "config.json"
        if config_path.exists() and not same_run(read_json(config_path), self.config, self.run_fields):
            raise self.different_run()
        return previous

    def checkpoint(self, device: torch.device) -> dict[str, Any] | None:
        """The state saved after the last finished epoch, or None; raises for a different run."""
        if not self.checkpoint_path.exists():
            return None
        state = load_checkpoint(self.checkpoint_path, map_location=device)
        if not same_run(state.get("config"), self.config, self.run_fields):
            raise self.different_run()
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write the checkpoint of ``state`` (atomically)."""
        save_checkpoint(self.checkpoint_path, {**state, "config": self.config})
