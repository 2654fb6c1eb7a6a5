"""contham: continuous-depth and Hamiltonian deep neural networks in PyTorch.

The public surface composes: a *field* ``f(t, y)`` (`contham.fields`), a *solver*
(`contham.solvers`), a *gradient strategy* (`contham.gradients`), `integrate`,
and the *blocks* `HamiltonianBlock`
(discrete mode) and `ODEBlock` (any field, any solver). Whole networks are in
`contham.models` (by name: ``contham.models.build``), described by the parameter dataclasses
of `contham.config`.
"""

from . import config, fields, gradients, models, solvers
from .blocks import HamiltonianBlock, ODEBlock, collect_stats, compile_steps
from .config import HamiltonianParameters, LearningParameters, NetworkParameters, Preset
from .fields import (
    AntisymmetricField,
    HamiltonianField,
    ODENetField,
    SeparableField,
    SymmetricField,
    TimeNodes,
    TwoLayerField,
)
from .gradients import Adjoint, Backprop, Reversible
from .integrate import IntegrationError, Solution, Stats, integrate
from .regularization import smoothness
from .solvers import get_solver

__version__ = "0.1.0"

__all__ = [
    "Adjoint",
    "AntisymmetricField",
    "Backprop",
    "HamiltonianBlock",
    "HamiltonianField",
    "HamiltonianParameters",
    "IntegrationError",
    "LearningParameters",
    "NetworkParameters",
    "ODEBlock",
    "ODENetField",
    "Preset",
    "Reversible",
    "SeparableField",
    "Solution",
    "Stats",
    "SymmetricField",
    "TimeNodes",
    "TwoLayerField",
    "collect_stats",
    "compile_steps",
    "config",
    "fields",
    "get_solver",
    "gradients",
    "integrate",
    "models",
    "smoothness",
    "solvers",
]
