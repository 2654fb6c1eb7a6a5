"""Fixed-step one-step methods.

Each solver is one class with its ``order`` and one ``step(f, t, h, y)``. ``f`` is a field (or a
field pinned to a node, :meth:`~contham.fields.NodeField.at_node`) called as ``f(t, y)``;
split solvers instead update the halves ``(y, z)`` of a :class:`~contham.fields.SplitField`
through ``f.dy(t, z)`` and ``f.dz(t, y)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from .._checks import check_choice


class FixedStepSolver(ABC):
    """Base class: a one-step method of constant step size h."""

    name: ClassVar[str]
    order: ClassVar[int]
    #: calls of the field (or of one half of it, for split solvers) per step
    evals_per_step: ClassVar[int]
    needs_split: ClassVar[bool] = False

    def check_field(self, field: Any) -> None:
        """Raise ``ValueError`` if this solver cannot integrate ``field``."""
        if self.needs_split and not getattr(field, "is_split", False):
            raise ValueError(
                f"solver={self.name!r} updates the halves (y, z) of a split state and needs a split field "
                f"(TwoLayerField, SeparableField, SymmetricField); got {type(field).__name__}. "
                "Use 'euler', 'midpoint', 'rk4' or an adaptive method for this field."
            )

    @abstractmethod
    def step(self, f: Any, t: float, h: float, y: Tensor) -> Tensor:
        """One step of size ``h`` from ``(t, y)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Euler(FixedStepSolver):
    """Explicit (forward) Euler, ``y + h f(t, y)``. Order 1. Any field."""

    name = "euler"
    order = 1
    evals_per_step = 1

    def step(self, f: Any, t: float, h: float, y: Tensor) -> Tensor:
        return y + h * f(t, y)


class Midpoint(FixedStepSolver):
    """Explicit midpoint rule. Order 2. Any field."""

    name = "midpoint"
    order = 2
    evals_per_step = 2

    def step(self, f: Any, t: float, h: float, y: Tensor) -> Tensor:
        return y + h * f(t + h / 2, y + (h / 2) * f(t, y))


class RK4(FixedStepSolver):
    """Classical fourth-order Runge-Kutta. Order 4. Any field."""

    name = "rk4"
    order = 4
    evals_per_step = 4

    def step(self, f: Any, t: float, h: float, y: Tensor) -> Tensor:
        k1 = f(t, y)
        k2 = f(t + h / 2, y + (h / 2) * k1)
        k3 = f(t + h / 2, y + (h / 2) * k2)
        k4 = f(t + h, y + h * k3)
        return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


Kick = tuple[str, float, float]
"""One update ``u <- u + (c h) f_u(t + d h, v)`` of half ``u`` ("y" or "z") from the other half
``v``: ``(u, c, d)``. A split step is a sequence of kicks; each one is undone exactly by
subtracting the same term, which makes split steps reversible (see :mod:`contham.reversible`)."""


class _SplitSolver(FixedStepSolver):
    needs_split = True
    _kicks_y_first: ClassVar[tuple[Kick, ...]]

    def __init__(self, first: str | None = None):
        self.first = None if first is None else check_choice("first", first, ("y", "z"))

    def kicks(self, f: Any) -> tuple[Kick, ...]:
        """This step's kicks on field ``f`` (roles of y and z swapped when z goes first)."""
        if (self.first or f.first) == "y":
            return self._kicks_y_first
        return tuple(("z" if u == "y" else "y", c, d) for u, c, d in self._kicks_y_first)

    def step(self, f: Any, t: float, h: float, x: Tensor) -> Tensor:
        halves = dict(zip("yz", f.split(x)))
        for u, c, d in self.kicks(f):
            halves[u] = halves[u] + (c * h) * kick_field(f, u)(t + d * h, halves["z" if u == "y" else "y"])
        return f.merge(halves["y"], halves["z"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(first={self.first!r})"


def kick_field(f: Any, u: str) -> Any:
    """The half-field that drives half ``u``: ``f.dy`` (reads z) or ``f.dz`` (reads y)."""
    return f.dy if u == "y" else f.dz


class SymplecticEuler(_SplitSolver):
    """Symplectic (semi-implicit) Euler on a split state. Order 1. Split fields only.

    With ``first="y"``: ``y+ = y + h f_y(t, z)``, then ``z+ = z + h f_z(t, y+)`` (from the *new*
    y); ``first="z"`` swaps the roles. ``first=None`` takes the field's own ``first``. On the
    two-layer field this is Chang et al.'s leapfrog/Verlet network (reading z_j as the
    staggered z_{j-1/2}). Symplectic for canonical Hamiltonian split fields.
    """

    name = "symplectic_euler"
    order = 1
    evals_per_step = 2
    _kicks_y_first = (("y", 1.0, 0.0), ("z", 1.0, 0.0))


class Verlet(_SplitSolver):
    """Stormer-Verlet / leapfrog on a split state. Order 2. Split fields only.

    With ``first="y"``: half step of y from z, full step of z from the new y, half step of y
    from the new z (``first="z"`` swaps the roles). Symmetric, symplectic for canonical
    Hamiltonian split fields.
    """

    name = "verlet"
    order = 2
    evals_per_step = 3
    _kicks_y_first = (("y", 0.5, 0.0), ("z", 1.0, 0.5), ("y", 0.5, 1.0))


FIXED_SOLVERS: dict[str, type[FixedStepSolver]] = {
    "euler": Euler,
    "midpoint": Midpoint,
    "rk4": RK4,
    "symplectic_euler": SymplecticEuler,
    "verlet": Verlet,
    "leapfrog": Verlet,
}
