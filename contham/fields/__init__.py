"""Vector fields ``f(t, y)``: Hamiltonian (free K with J1/J2/custom J), the structured variants of
the literature, and the ODENet field of the thesis; the activation table and the field registry."""

from .activations import ACTIVATIONS, Activation, resolve_activation
from .base import (
    CheckedField,
    FrozenField,
    NodeField,
    SplitField,
    TimedField,
    linear_op,
    linear_op_t,
    other_half,
    prepared,
)
from .hamiltonian import HamiltonianField, SigmaTerm, SigmaTermField
from .kicks import KickTerms
from .odenet import ConcatConv2d, ODENetField
from .registry import FIELDS, FieldEntry, field_entry, field_names, register_field
from .skew import SkewMatrix, j1_matrix, j2_matrix
from .structured import AntisymmetricField, SeparableField, SymmetricField, TwoLayerField
from .time import TIME_MODES, TimeNodes

__all__ = [
    "ACTIVATIONS",
    "FIELDS",
    "TIME_MODES",
    "Activation",
    "AntisymmetricField",
    "CheckedField",
    "ConcatConv2d",
    "FieldEntry",
    "FrozenField",
    "HamiltonianField",
    "KickTerms",
    "NodeField",
    "ODENetField",
    "SeparableField",
    "SigmaTerm",
    "SigmaTermField",
    "SkewMatrix",
    "SplitField",
    "SymmetricField",
    "TimeNodes",
    "TimedField",
    "TwoLayerField",
    "field_entry",
    "field_names",
    "j1_matrix",
    "j2_matrix",
    "linear_op",
    "linear_op_t",
    "other_half",
    "prepared",
    "register_field",
    "resolve_activation",
]
