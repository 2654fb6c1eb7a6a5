"""The status of a run, as ``metrics.json`` records it."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """What became of a run. A ``str``, so that it is written to JSON and compared as its value
    (``Status.FINISHED == "finished"``)."""

    RUNNING = "running"
    """Training, or killed while training: the same command resumes it."""
    FINISHED = "finished"
    """All its epochs trained, or an early stop by accuracy or time (``stop_reason``)."""
    DIVERGED = "diverged"
    """Its training loss became non-finite or exceeded ``DIVERGENCE_LOSS``."""
    INTERRUPTED = "interrupted"
    """Ctrl-C after its last checkpoint: the same command resumes it."""
    STOPPED_EARLY = "stopped_early"
    """An early-stopping scheduler ended it (``contham.experiments.ray_runner``)."""
    FAILED = "failed"
    """An error ended it (``error`` says which); a rerun retries it."""
    BUSY = "busy"
    """Another process holds its folder; it was left alone."""

    def __str__(self) -> str:
        return self.value

    @property
    def done(self) -> bool:
        """Whether the run is not trained again (without ``restart``)."""
        return self in (Status.FINISHED, Status.DIVERGED, Status.STOPPED_EARLY)
