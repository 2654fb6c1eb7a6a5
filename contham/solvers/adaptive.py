"""torchdiffeq's methods (adaptive Runge-Kutta, fixed-grid, scipy) behind contham's interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq._impl.odeint import SOLVERS as TORCHDIFFEQ_SOLVERS  # torchdiffeq's method table
from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver, FixedGridODESolver

from .._checks import check_choice, check_positive
from ..fields.base import TimedField
from .base import IntegrationError, Problem, Solution, Solver, Stats, outside_compile, register_solver

TORCHDIFFEQ_METHODS = tuple(TORCHDIFFEQ_SOLVERS)
"""Every method of the installed torchdiffeq, read from its method table."""
ADAPTIVE_METHODS = tuple(m for m, cls in TORCHDIFFEQ_SOLVERS.items() if issubclass(cls, AdaptiveStepsizeODESolver))
"""torchdiffeq's methods with error control; they honour ``jump_t`` (weight discontinuities)."""
FIXED_GRID_METHODS = tuple(m for m, cls in TORCHDIFFEQ_SOLVERS.items() if issubclass(cls, FixedGridODESolver))
"""torchdiffeq's methods on a fixed grid (``options={"step_size": h}``)."""


def method_order(method: str) -> int | None:
    """The order of accuracy of torchdiffeq's ``method``, as its class declares it. None for
    the Adams (multistep) methods, which change order as they go (torchdiffeq's explicit_adams
    does not even converge monotonically as h shrinks), and for methods that declare none."""
    cls = TORCHDIFFEQ_SOLVERS[method]
    return None if "adams" in cls.__module__ else getattr(cls, "order", None)


@dataclass(repr=False)
class TorchDiffEq(Solver):
    """A torchdiffeq method with its tolerances and options.

    Args:
        method: any torchdiffeq method name (see ``TORCHDIFFEQ_METHODS``).
        rtol: relative error tolerance (adaptive methods).
        atol: absolute error tolerance (adaptive methods).
        options: passed to torchdiffeq as ``options`` (e.g. ``{"step_size": 0.1}`` for a
            fixed-grid method, ``{"first_step": 1e-3}``).
    """

    method: str = "dopri5"
    rtol: float = 1e-7
    atol: float = 1e-9
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("solver", self.method, TORCHDIFFEQ_METHODS)
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)
        self.name = self.method
        #: order of the method (None for the Adams methods and ``scipy_solver``)
        self.order = method_order(self.method)
        #: scipy's solvers run on NumPy arrays: no gradient flows through them
        self.differentiable = self.method != "scipy_solver"

    @classmethod
    def from_name(cls, name: str, rtol: float | None = None, atol: float | None = None) -> Solver:
        default = cls(name)
        return cls(name, default.rtol if rtol is None else rtol, default.atol if atol is None else atol)

    def __repr__(self) -> str:
        return f"TorchDiffEq({self.method!r}, rtol={self.rtol:g}, atol={self.atol:g}, options={self.options!r})"

    def no_adjoint(self) -> str | None:
        return None if self.differentiable else "cannot differentiate scipy_solver (it runs on NumPy arrays)"

    @property
    def adaptive(self) -> bool:
        """True for methods with error control (they honour weight jumps)."""
        return self.method in ADAPTIVE_METHODS

    def check_field(self, field: nn.Module) -> None:
        """Fixed-grid torchdiffeq methods would step across weight jumps: refuse piecewise fields."""
        if not self.adaptive and isinstance(field, TimedField) and field.nodes.jumps:
            raise ValueError(
                f"solver={self.method!r} (torchdiffeq fixed grid) cannot align its steps with the weight jumps "
                "of a piecewise field; use contham's 'euler', 'midpoint', 'rk4', 'symplectic_euler', 'verlet' "
                f"or an adaptive method ({', '.join(ADAPTIVE_METHODS)})"
            )

    def solve(self, problem: Problem) -> Solution:
        if problem.step_size is not None:
            raise ValueError(f"step_size applies to fixed-step solvers; for solver={self.name!r} use options")
        return _solve(self, problem)


register_solver(*TORCHDIFFEQ_METHODS, replace=False)(TorchDiffEq)


class _Counted(nn.Module):
    """Wraps a field for torchdiffeq: counts calls and steps, enforces ``max_nfe``."""

    def __init__(self, field: nn.Module, stats: Stats, max_nfe: int):
        super().__init__()
        self.field = field
        self.stats = stats
        self.max_nfe = max_nfe
        self.backward_pass = False

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        s = self.stats
        n = s.nfe_backward if self.backward_pass else s.nfe_forward
        if n >= self.max_nfe:
            where = "backward (adjoint)" if self.backward_pass else "forward"
            raise IntegrationError(
                f"the {where} solve with {s.solver} reached max_nfe={self.max_nfe} field calls "
                f"at t={float(t.detach()):.6g}; "
                "the dynamics may be stiff or the tolerances too tight: loosen rtol/atol or raise max_nfe"
            )
        if self.backward_pass:
            s.nfe_backward += 1
        else:
            s.nfe_forward += 1
        return self.field(t, y)


class _CountedSteps(_Counted):
    """`_Counted` with torchdiffeq's step callbacks (adaptive methods only: fixed-grid ones
    warn that they do not support them)."""

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.stats.steps_accepted = (self.stats.steps_accepted or 0) + 1

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.stats.steps_rejected = (self.stats.steps_rejected or 0) + 1

    def callback_accept_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.stats.steps_accepted_backward = (self.stats.steps_accepted_backward or 0) + 1

    def callback_reject_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.stats.steps_rejected_backward = (self.stats.steps_rejected_backward or 0) + 1


@outside_compile
def _solve(solver: TorchDiffEq, problem: Problem) -> Solution:
    y0 = problem.y0
    stats = Stats(solver.name)
    if solver.adaptive:
        stats.steps_accepted, stats.steps_rejected = 0, 0
    ts = torch.tensor(problem.times, dtype=torch.float64, device=y0.device)
    options = dict(solver.options)
    if problem.breaks and solver.adaptive:
        # jump_t: the weights are discontinuous there (evaluated from each side); step_t: a kink
        key = "jump_t" if problem.nodes is not None and problem.nodes.mode == "piecewise" else "step_t"
        options[key] = torch.tensor(problem.breaks, dtype=torch.float64, device=y0.device)
    func = (_CountedSteps if solver.adaptive else _Counted)(problem.field, stats, problem.max_nfe)
    try:
        kwargs: dict[str, Any] = dict(rtol=solver.rtol, atol=solver.atol, method=solver.method, options=options)
        ys = problem.gradient.odeint(func, y0, ts, stats, **kwargs)
    except AssertionError as err:  # torchdiffeq reports dt underflow and max_num_steps this way
        raise IntegrationError(f"{solver.name} failed: {err}") from err
    return Solution(problem.times, ys, stats)
