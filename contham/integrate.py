"""``integrate(field, y0, t, solver=..., gradient=...)``: check, then hand over to the solver."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._checks import check_int, check_positive
from .fields.base import CheckedField, TimedField
from .gradients import Gradient, get_gradient
from .solvers import IntegrationError, Problem, Solution, Solver, Stats, get_solver

__all__ = ["IntegrationError", "Solution", "Stats", "integrate"]


def integrate(
    field: nn.Module,
    y0: Tensor,
    t: Sequence[float] | Tensor,
    solver: str | Solver = "dopri5",
    *,
    gradient: str | Gradient = "backprop",
    step_size: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_nfe: int = 100_000,
    check_finite: bool = True,
) -> Solution:
    """Solve ``y' = field(t, y)``, ``y(t[0]) = y0`` and return the states at the times ``t``.

    Args:
        field: any ``nn.Module`` with ``forward(t, y)``; contham's fields also check ``y0``.
        y0: the initial state, ``(batch, n)`` or ``(batch, C, H, W)``.
        t: strictly monotone output times (at least two): increasing, or decreasing to solve
            backwards in time.
        solver: a registered name (see `contham.solvers.get_solver`) or a solver object.
        gradient: how gradients are computed (`contham.gradients`): ``"backprop"``,
            ``"reversible"`` (split fixed-step solvers, and every explicit Runge-Kutta method,
            fixed or adaptive, by McCallum & Foster's coupled scheme), ``"adjoint"``
            (torchdiffeq's adjoint: its methods, and contham's adaptive methods torchdiffeq
            also has, with shared steps and its step rule),
            or a `Backprop`/``Reversible``/``Adjoint`` object with
            options (adjoint tolerances, seminorm).
        step_size: fixed-step solvers only: the largest step; each interval between output
            times and weight jumps is cut in equal steps no larger than this. None: one step per
            such interval (the discrete mode of a piecewise field).
        rtol: relative tolerance of an adaptive method named by string.
        atol: absolute tolerance of an adaptive method named by string.
        max_nfe: field calls allowed per pass; more raises `IntegrationError`.
        check_finite: raise ``ValueError`` if y0 holds NaN or inf. A fixed-step solve reads
            that back to the host (on CUDA a synchronisation, which no CUDA graph can capture):
            `ODEBlock` turns it off, so that a network's training step stays on the device (a
            non-finite input then shows in the loss). Adaptive solves of contham's engine check
            whatever this says, on the device, with the read-back their loop makes anyway.

    The node times of piecewise and linear fields (``field.nodes.breaks``) become step
    boundaries: no step of a fixed-step or adaptive solver straddles a jump of the weights
    (torchdiffeq's ``jump_t``) or a kink of their interpolation (``step_t``).
    """
    solver = get_solver(solver, rtol, atol)
    gradient = get_gradient(gradient)
    times = _check_times(t)
    check_int("max_nfe", max_nfe)
    if step_size is not None:
        check_positive("step_size", step_size)
    if isinstance(field, CheckedField):
        field.check_input(y0)
    solver.check_field(field)
    gradient.check(solver)
    nodes = field.nodes if isinstance(field, TimedField) else None
    low, high = min(times[0], times[-1]), max(times[0], times[-1])
    breaks = [s for s in (nodes.breaks if nodes is not None else ()) if low < s < high]
    problem = Problem(field, y0, times, breaks, nodes, gradient, step_size, max_nfe)
    if check_finite and isinstance(y0, Tensor) and not torch.compiler.is_compiling():
        solver.check_start(problem)
    return solver.solve(problem)


def _check_times(t: Sequence[float] | Tensor) -> list[float]:
    try:
        times = [float(s) for s in (t.flatten().tolist() if isinstance(t, Tensor) else t)]
    except (TypeError, ValueError):
        raise ValueError(f"t must be a sequence or 1-D tensor of times; got {t!r}") from None
    if isinstance(t, Tensor) and t.dim() != 1:
        raise ValueError(f"t must be 1-D; got shape {tuple(t.shape)}")
    if len(times) < 2 or not all(math.isfinite(s) for s in times):
        raise ValueError(f"t must hold at least two finite times; got {times}")
    steps = [b - a for a, b in zip(times, times[1:])]
    if not (all(d > 0 for d in steps) or all(d < 0 for d in steps)):
        raise ValueError(f"t must be strictly increasing or strictly decreasing; got {times}")
    return times
