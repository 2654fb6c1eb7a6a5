"""Solvers: contham's fixed-step methods, its Runge-Kutta engine and torchdiffeq's methods, all
registered by name.

`get_solver` turns a name into a solver; `register_solver` adds one. A solver owns its
loop (`Solver.solve`); `integrate` only checks and dispatches.
"""

from .adaptive import ADAPTIVE_METHODS, FIXED_GRID_METHODS, TORCHDIFFEQ_METHODS, TorchDiffEq, method_order
from .base import (
    SOLVERS,
    Gradient,
    IntegrationError,
    Kick,
    Problem,
    Solution,
    Solver,
    Stats,
    Step,
    get_solver,
    register_solver,
    solver_names,
)
from .fixed import (
    RK4,
    Euler,
    FixedStepSolver,
    Midpoint,
    Schedule,
    SplitSolver,
    SymplecticEuler,
    Verlet,
    plan_steps,
)
from .reads import grad_inputs
from .rk import AdaptiveLoop, PIController, RungeKutta, Scheme, TableauSteps, rk_increment, rk_step
from .tableaus import TABLEAUS, Tableau, get_tableau, register_tableau

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_GRID_METHODS",
    "RK4",
    "SOLVERS",
    "TABLEAUS",
    "TORCHDIFFEQ_METHODS",
    "Euler",
    "FixedStepSolver",
    "Gradient",
    "IntegrationError",
    "Kick",
    "Midpoint",
    "Problem",
    "Schedule",
    "Solution",
    "Solver",
    "SplitSolver",
    "Stats",
    "Step",
    "SymplecticEuler",
    "TorchDiffEq",
    "AdaptiveLoop",
    "PIController",
    "RungeKutta",
    "Scheme",
    "Tableau",
    "TableauSteps",
    "get_tableau",
    "grad_inputs",
    "register_tableau",
    "rk_increment",
    "rk_step",
    "Verlet",
    "get_solver",
    "method_order",
    "plan_steps",
    "register_solver",
    "solver_names",
]
