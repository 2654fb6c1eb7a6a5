"""contham: continuous-depth and Hamiltonian deep neural networks in PyTorch.

The public surface composes: a *field* ``f(t, y)`` (:mod:`contham.fields`), a *solver*
(:mod:`contham.solvers`), :func:`integrate`, and the *blocks* :class:`HamiltonianBlock`
(discrete mode) and :class:`ODEBlock` (any field, any solver).
"""

from . import fields, solvers
from .blocks import HamiltonianBlock, ODEBlock
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
from .solvers import get_solver

__version__ = "0.1.0"

__all__ = [
    "AntisymmetricField",
    "HamiltonianBlock",
    "HamiltonianField",
    "IntegrationError",
    "ODEBlock",
    "ODENetField",
    "SeparableField",
    "Solution",
    "Stats",
    "SymmetricField",
    "TimeNodes",
    "TwoLayerField",
    "fields",
    "get_solver",
    "integrate",
    "solvers",
]
