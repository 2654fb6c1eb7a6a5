"""Vector fields ``f(t, y)``: Hamiltonian (free K with J1/J2/custom J), the structured variants of
the literature, and the ODENet field of the thesis."""

from .activations import ACTIVATIONS
from .base import FrozenField, NodeField, SplitField, linear_op, linear_op_t
from .hamiltonian import HamiltonianField
from .odenet import ConcatConv2d, ODENetField
from .skew import SkewMatrix, j1_matrix, j2_matrix
from .structured import AntisymmetricField, SeparableField, SymmetricField, TwoLayerField
from .time import TIME_MODES, TimeNodes

__all__ = [
    "ACTIVATIONS",
    "TIME_MODES",
    "AntisymmetricField",
    "ConcatConv2d",
    "FrozenField",
    "HamiltonianField",
    "NodeField",
    "ODENetField",
    "SeparableField",
    "SkewMatrix",
    "SplitField",
    "SymmetricField",
    "TimeNodes",
    "TwoLayerField",
    "j1_matrix",
    "j2_matrix",
    "linear_op",
    "linear_op_t",
]
