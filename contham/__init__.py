"""contham: continuous-depth and Hamiltonian deep neural networks in PyTorch.

The public surface composes: a *field* ``f(t, y)`` (:mod:`contham.fields`), a *solver*
(:mod:`contham.solvers`), :func:`integrate`, and the *blocks* :class:`HamiltonianBlock`
(discrete mode) and :class:`ODEBlock` (any field, any solver). Whole networks are in
:mod:`contham.models` (by name: ``contham.models.build``), described by the parameter dataclasses
of :mod:`contham.config`.
"""

from . import config, fields, models, solvers
from .blocks import HamiltonianBlock, ODEBlock, collect_stats
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
from .integrate import IntegrationError, Solution, Stats, integrate
from .regularization import smoothness
from .solvers import get_solver

__version__ = "0.1.0"

__all__ = [
    "AntisymmetricField",
    "HamiltonianBlock",
    "HamiltonianField",
    "HamiltonianParameters",
    "IntegrationError",
    "LearningParameters",
    "NetworkParameters",
    "ODEBlock",
    "ODENetField",
    "Preset",
    "SeparableField",
    "Solution",
    "Stats",
    "SymmetricField",
    "TimeNodes",
    "TwoLayerField",
    "collect_stats",
    "config",
    "fields",
    "get_solver",
    "integrate",
    "models",
    "smoothness",
    "solvers",
]
