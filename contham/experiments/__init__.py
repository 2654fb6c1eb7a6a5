"""The application layer: training runs, experiments made of runs, and the ``contham`` command.

One concern per module:

* `runconfig`: `RunConfig`, a run described as data (network, data, protocol, run options);
* `recipe`: `Recipe`, what a config turns into (data, input shape, network), for training,
  plots, comparisons and grids alike;
* `protocols`: the named training protocols and the strategies they add to the loop;
* `loop`: `Settings` (the run options of the loop), `Loop` (epochs, evaluation), `evaluate`;
* `trainer`: `fit` (the report's algorithm 1 into a run folder) and `run` (a `RunConfig` into a
  run folder);
* `checkpoints`: checkpoint, resumption, random state, the folder lock;
* `batches`: how the data reaches the device;
* `files`: run folders (atomic files, clear errors, a lock); `status`: a run's `Status`;
* `instruments`: autograd memory, peak memory, field evaluations; `tensorboard`: event files;
* `distributed`: one run on many processes (torchrun, DDP);
* `drivers`: `compare` and `grid` with the `Sequential` executor; `ray_runner`: `RayRunner`;
* `plots` and `cli`.

The core (fields, solvers, integrate, blocks, models, analysis) never imports this package.
"""

from .drivers import Job, Sequential, compare, grid
from .files import RunBusy, RunFolderError, RunLock
from .instruments import SavedTensors
from .loop import Loop, Settings, evaluate
from .protocols import PROTOCOLS, THESIS_LEARNING, TrainingProtocol
from .ray_runner import RayRunner
from .recipe import Recipe
from .runconfig import RunConfig
from .status import Status
from .trainer import fit, run

__all__ = [
    "PROTOCOLS",
    "THESIS_LEARNING",
    "Job",
    "Loop",
    "RayRunner",
    "Recipe",
    "RunBusy",
    "RunConfig",
    "RunFolderError",
    "RunLock",
    "SavedTensors",
    "Sequential",
    "Settings",
    "Status",
    "TrainingProtocol",
    "compare",
    "evaluate",
    "fit",
    "grid",
    "run",
]
