"""Fields whose terms are *kicks* ``u' = sign * M^T sigma(K v + b)``: the form the fused dense
blocks run (`contham.solvers.fused` and its Triton kernels).

Each term drives one half u of the state ("y", "z", or "x" for the whole state) from the other
half v (`other_half`). For the Hamiltonian terms ``J K^T sigma(K v + b)``, ``M = K J^T`` (or K
where J is not applied); for Haber & Ruthotto's MS1 and MS2, whose terms are ``sigma(K v + b)``
with no outer matrix, M is the identity (None) and K is built from the field's parameters
(``K0`` and ``-K0^T``; ``W - W^T - gamma I``). A field states its terms' operands from its node
parameters and takes the operands' gradients back to its parameters; the fused path needs to know
nothing else about it.
"""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor

from .activations import Activation
from .base import NodeField

Operands = dict[str, tuple[Tensor, Tensor, "Tensor | None"]]
"""Per driven half u: ``K`` ``(nodes, width, features of v)``, ``b`` ``(nodes, width)`` and ``M``
``(nodes, width, features of u)``, for all nodes at once; None for ``M = I`` (no product to
compute, no gradient to keep), the terms' gradients alike."""


class KickTerms(NodeField):
    """A field made of kicks (see the module docstring; the fused path runs the dense ones)."""

    activation: Activation

    @abstractmethod
    def kick_signs(self) -> dict[str, float]:
        """The sign of the term driving each half u."""

    @abstractmethod
    def kick_shapes(self) -> dict[str, tuple[int, int]]:
        """``(width, features of v)`` of each term's K (read off the parameters' shapes: nothing
        is computed)."""

    @abstractmethod
    def kick_operands(self, params: tuple[Tensor, ...]) -> Operands:
        """Each term's ``K``, ``b`` and ``M`` from the node parameters ``params``
        (`node_params`)."""

    @abstractmethod
    def kick_grads(self, grads: Operands) -> list[Tensor | None]:
        """The gradients of the node parameters from those of each term's ``K``, ``b`` and ``M``."""
