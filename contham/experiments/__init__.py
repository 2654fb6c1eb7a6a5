"""The application layer: training runs, experiments made of runs, and the ``contham`` command.

One concern per module:

* :mod:`~contham.experiments.runconfig`: :class:`RunConfig`, a run described as data;
* :mod:`~contham.experiments.trainer`: :func:`fit` (the report's algorithm 1), :func:`evaluate`,
  :func:`run` (a :class:`RunConfig` into a run folder);
* :mod:`~contham.experiments.files`: run folders (atomic files, clear errors, a lock);
* :mod:`~contham.experiments.instruments`: autograd memory, peak memory, field evaluations;
* :mod:`~contham.experiments.distributed`: one run on many processes (torchrun, DDP);
* :mod:`~contham.experiments.drivers`: :func:`compare` and :func:`grid` with the
  :class:`Sequential` executor; :mod:`~contham.experiments.ray_runner`: :class:`RayRunner`;
* :mod:`~contham.experiments.plots` and :mod:`~contham.experiments.cli`.

The core (fields, solvers, integrate, blocks, models, analysis) never imports this package.
"""

from .drivers import Job, Sequential, compare, grid
from .files import RunBusy, RunFolderError, RunLock
from .instruments import SavedTensors
from .ray_runner import RayRunner
from .runconfig import THESIS_LEARNING, RunConfig
from .trainer import evaluate, fit, run

__all__ = [
    "THESIS_LEARNING",
    "Job",
    "RayRunner",
    "RunBusy",
    "RunConfig",
    "RunFolderError",
    "RunLock",
    "SavedTensors",
    "Sequential",
    "compare",
    "evaluate",
    "fit",
    "grid",
    "run",
]
