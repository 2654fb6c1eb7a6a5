"""Run folders: atomic JSON and checkpoint files, clear errors for broken ones, and a lock.

A run folder holds ``config.json``, ``history.json``, ``metrics.json`` and ``checkpoint.pt``
(see `contham.experiments.trainer`). Every file is written to a temporary name in the same
folder and renamed over the old one, so a crash or Ctrl-C never leaves a half-written file. A file
that cannot be read (truncated, corrupt, not JSON) raises `RunFolderError`, a
``ValueError`` naming the file, instead of a traceback from deep inside ``json`` or ``torch``.

`RunLock` is an advisory lock (``flock`` on ``<run>/.lock``): two processes, two terminals
or two Ray workers on one machine, never train the same folder at once. The operating system
releases it when its process dies, so no stale lock outlives a crash. On a shared filesystem
``flock`` is only as good as that filesystem's support for it (NFSv4 and Lustre have it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

RUN_FILES = ("config.json", "history.json", "metrics.json", "checkpoint.pt")
"""The files of a run folder (`discard_run` removes exactly these)."""


class RunFolderError(ValueError):
    """A run folder or one of its files cannot be read or written; the message names the file."""


class RunBusy(RunFolderError):
    """Another process holds the lock of this run folder."""


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as error:  # OSError, or torch.save's RuntimeError on a full disk or a read-only folder
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder cannot be changed at all: nothing was left in it either
        detail = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise RunFolderError(f"cannot write {str(path)!r}: {detail}") from None


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file in the same folder, then rename)."""
    _atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def read_json(path: str | Path) -> Any:
    """Read a JSON file; `RunFolderError` naming it when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(
            f"cannot read {str(path)!r}: {error}; fix or delete it, or start the run again with --restart"
        ) from None


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` atomically."""
    _atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """``torch.load`` a checkpoint written by `save_checkpoint`; `RunFolderError`
    naming it when it is truncated or corrupt."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        raise RunFolderError(
            f"cannot read checkpoint {str(path)!r} ({type(error).__name__}: {error}); "
            "delete it, or start the run again with --restart"
        ) from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "history"} <= set(state):
        raise RunFolderError(f"{str(path)!r} is not a contham checkpoint; delete it, or use --restart")
    return state


def prepare_folder(path: str | Path) -> Path:
    """Create ``path`` (and parents) and check that files can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunFolderError(f"cannot write results folder {str(path)!r}: {error.strerror or error}") from None
    return path


def discard_run(run_dir: str | Path) -> None:
    """Remove a run's files (`RUN_FILES`, temporaries, figures, TensorBoard event files) so that
    it starts from scratch."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for leftover in [*run_dir.glob(".*.tmp"), *run_dir.glob("*.png"), *run_dir.glob("events.out.tfevents.*")]:
        leftover.unlink()


class RunLock:
    """An exclusive advisory lock on a run folder, held for the ``with`` block.

    Args:
        run_dir: the run folder (created if needed).
        wait: wait until the other process is done (True) or raise `RunBusy` at once.
        poll: seconds between attempts while waiting.
    """

    def __init__(self, run_dir: str | Path, *, wait: bool = False, poll: float = 0.5):
        self.path = prepare_folder(run_dir) / ".lock"
        self.wait = wait
        self.poll = poll
        self._handle: Any = None

    def __enter__(self) -> RunLock:
        try:
            return self._take()
        except OSError as error:  # a full disk, a folder that turned read-only, a .lock that is not a file
            raise RunFolderError(f"cannot lock {str(self.path)!r}: {error.strerror or error}") from None

    def _take(self) -> RunLock:
        handle = open(self.path, "a+")
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not self.wait:
                    handle.seek(0)
                    owner = handle.read().strip() or "another process"
                    handle.close()
                    raise RunBusy(
                        f"run folder {str(self.path.parent)!r} is being trained by {owner}; wait for it with --wait"
                    ) from None
                time.sleep(self.poll)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.seek(0)
        self._handle.truncate()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None
