"""Solvers: contham's fixed-step methods and torchdiffeq's methods, and :func:`get_solver`."""

from __future__ import annotations

from .adaptive import ADAPTIVE_METHODS, FIXED_GRID_METHODS, TORCHDIFFEQ_METHODS, TorchDiffEq
from .fixed import FIXED_SOLVERS, RK4, Euler, FixedStepSolver, Midpoint, SymplecticEuler, Verlet

Solver = FixedStepSolver | TorchDiffEq


def solver_names() -> tuple[str, ...]:
    """Every name :func:`get_solver` accepts."""
    return tuple(FIXED_SOLVERS) + tuple(m for m in TORCHDIFFEQ_METHODS if m not in FIXED_SOLVERS)


def get_solver(solver: str | Solver, rtol: float | None = None, atol: float | None = None) -> Solver:
    """A solver from its name or itself.

    Names of contham's fixed-step methods (``euler``, ``midpoint``, ``rk4``,
    ``symplectic_euler``, ``verlet``/``leapfrog``) give those; any other torchdiffeq method name
    (``dopri5``, ``bosh3``, ``adaptive_heun``, ...) gives :class:`TorchDiffEq` with ``rtol`` and
    ``atol``. (For torchdiffeq's own ``rk4`` use ``TorchDiffEq("rk4", options=...)``.)
    """
    if isinstance(solver, (FixedStepSolver, TorchDiffEq)):
        if rtol is not None or atol is not None:
            raise ValueError("rtol/atol must be set on the solver object (TorchDiffEq(method, rtol=..., atol=...))")
        return solver
    if isinstance(solver, str) and solver in FIXED_SOLVERS:
        if rtol is not None or atol is not None:
            raise ValueError(f"rtol/atol apply to adaptive methods, not to the fixed-step solver={solver!r}")
        return FIXED_SOLVERS[solver]()
    if isinstance(solver, str) and solver in TORCHDIFFEQ_METHODS:
        tolerances = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
        return TorchDiffEq(solver, **tolerances)
    raise ValueError(f"solver must be one of {', '.join(map(repr, solver_names()))} or a solver object; got {solver!r}")


__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_GRID_METHODS",
    "FIXED_SOLVERS",
    "RK4",
    "TORCHDIFFEQ_METHODS",
    "Euler",
    "FixedStepSolver",
    "Midpoint",
    "Solver",
    "SymplecticEuler",
    "TorchDiffEq",
    "Verlet",
    "get_solver",
    "solver_names",
]
