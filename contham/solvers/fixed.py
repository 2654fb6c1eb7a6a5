"""Fixed-step one-step methods and their integration loop.

Each method is one class with its ``order`` and one ``step(f, t, h, y)``; the base class
`FixedStepSolver` owns the loop (`solve`, `run`)
and the choice of the backward pass. ``f`` is a field (or a field pinned to a node,
`at_node`) called as ``f(t, y)``; split methods instead update the
halves ``(y, z)`` of a `SplitField` by `Kick` s
through ``f.dy(t, z)`` and ``f.dz(t, y)``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._checks import check_choice
from ..fields.base import FrozenField, SplitField, other_half, prepared
from ..fields.time import TimeNodes
from . import tableaus
from .base import Gradient, IntegrationError, Kick, Problem, Solution, Solver, Stats, Step, register_solver
from .fused import FusedPlan, fused_plan

Halves = dict[str, Tensor]
"""A split state carried as its halves ``{"y": y, "z": z}``."""


def plan_steps(
    times: Sequence[float], breaks: Sequence[float], step_size: float | None, nodes: TimeNodes | None = None
) -> tuple[list[Step], list[int]]:
    """Steps covering ``times`` (increasing or decreasing) with the ``breaks`` as step boundaries.

    ``node`` is the node whose weights a piecewise/constant field uses for the whole step (found
    at the step's midpoint), None for fields read at each stage time. ``outputs[i]`` is the
    number of steps done when ``times[i + 1]`` is reached. Each interval between boundaries is
    cut in equal steps no longer than ``step_size`` (None: one step).
    """
    # a node time within rounding of an output time (3 * 0.1 vs 0.3) is the same step boundary
    near = lambda s: any(abs(s - p) <= 1e-12 * max(1.0, abs(p)) for p in times)  # noqa: E731
    points = sorted(set(times) | {s for s in breaks if not near(s)}, reverse=times[-1] < times[0])
    per_node = nodes is not None and nodes.mode in ("piecewise", "constant")
    steps: list[Step] = []
    outputs = []
    output_times = set(times[1:])
    for a, b in zip(points, points[1:]):
        m = 1 if step_size is None else max(1, math.ceil(abs(b - a) / step_size - 1e-9))
        h = (b - a) / m
        for k in range(m):
            s = a + k * h
            steps.append((s, h, nodes.locate(s + h / 2)[0] if nodes is not None and per_node else None))
        if b in output_times:
            outputs.append(len(steps))
    return steps, outputs


class Schedule:
    """The steps of one fixed-step solve and where its outputs are, with what is worked out
    once for them: whether only the final state is wanted, whether every step uses one weight
    node, and the fused plan (None where the fused path does not apply: it returns the final
    state only). ``row[i]`` is the row of the solution that holds the state after ``i`` steps,
    for the output steps ``i``; ``rows``, where given, is that solution to fill as the steps
    reach them (row 0 holds the start)."""

    def __init__(
        self,
        field: nn.Module,
        solver: FixedStepSolver,
        steps: list[Step],
        outputs: list[int],
        rows: Tensor | None = None,
    ):
        self.field, self.steps, self.rows = field, steps, rows
        self.row = {step: k for k, step in enumerate(outputs, 1)}
        self.final_only = outputs == [len(steps)]
        self.pinned = all(node is not None for _, _, node in steps)
        self.fused: FusedPlan | None = fused_plan(field, solver.kicks(field), steps) if self.final_only else None

    def write(self, i: int, y: Tensor) -> Tensor:
        """The output ``y``, the state after ``i`` steps: written into its row where there are rows."""
        return y if self.rows is None else self.rows[self.row[i]].copy_(y)


class FixedStepSolver(Solver):
    """Base class: a one-step method of constant step size h; owns the loop."""

    #: calls of the field (or of one half of it, for split solvers) per step
    evals_per_step: ClassVar[int]
    needs_split: ClassVar[bool] = False

    def check_field(self, field: nn.Module) -> None:
        if self.needs_split and not isinstance(field, SplitField):
            raise ValueError(
                f"solver={self.name!r} updates the halves (y, z) of a split state and needs a split field "
                f"(TwoLayerField, SeparableField, SymmetricField); got {type(field).__name__}. "
                "Use 'euler', 'midpoint', 'rk4' or an adaptive method for this field."
            )

    def kicks(self, field: Any) -> list[Kick] | None:
        """The step on ``field`` as a sequence of kicks, or None if it is not one."""
        return None

    @abstractmethod
    def step(self, f: Any, t: float, h: float, y: Tensor) -> Tensor:
        """One step of size ``h`` from ``(t, y)``."""

    def solve(self, problem: Problem) -> Solution:
        steps, outputs = plan_steps(problem.times, problem.breaks, problem.step_size, problem.nodes)
        if len(steps) * self.evals_per_step > problem.max_nfe:
            raise IntegrationError(f"{len(steps)} steps of {self.name} exceed max_nfe={problem.max_nfe}")
        stats = Stats(self.name)
        y0 = problem.y0
        rows = None
        if len(outputs) > 1 and not wants_grad(problem.field, y0):  # no graph to record: fill the solution
            rows = y0.new_empty((len(outputs) + 1, *y0.shape))
            rows[0] = y0
        schedule = Schedule(problem.field, self, steps, outputs, rows)
        ys = self.run(schedule, y0, problem.gradient, stats)
        return Solution(problem.times, torch.stack([y0, *ys]) if rows is None else rows, stats)

    def run(self, schedule: Schedule, y: Tensor, gradient: Gradient, stats: Stats) -> list[Tensor]:
        """The states after the output steps (``schedule.row``) from ``y``, computed as ``gradient`` says
        (`fixed_steps`); fills ``stats``."""
        field = schedule.field
        stats.nfe_forward = len(schedule.steps) * self.evals_per_step
        stats.steps_accepted, stats.steps_rejected = len(schedule.steps), 0
        stats.nfe_backward = stats.nfe_forward if wants_grad(field, y) else 0
        return gradient.fixed_steps(self, schedule, y, stats)

    def march(self, schedule: Schedule, y: Tensor) -> list[Tensor]:
        """The steps one by one, through autograd: the states after the output steps (``schedule.row``). The
        steps carry the state in the form `enter` gives it and `leave` takes it back from."""
        field: Any = schedule.field  # a NodeField wherever a step names a node
        frozen = [FrozenField(field, w) for w in field.step_weights()] if schedule.pinned else []
        stepping = prepared(field, y)  # the field as the steps without a node call it
        state = self.enter(field, y)
        out = []
        for i, (s, h, node) in enumerate(schedule.steps, 1):
            state = self.advance(stepping if node is None else frozen[node], s, h, state)
            if i in schedule.row:
                out.append(schedule.write(i, self.leave(field, state)))
        return out

    def enter(self, field: Any, y: Tensor) -> Any:
        """The state ``y`` in the form `advance` carries from step to step (itself here)."""
        return y

    def advance(self, f: Any, t: float, h: float, state: Any) -> Any:
        """One step on the carried form of the state (`step` here)."""
        return self.step(f, t, h, state)

    def leave(self, field: Any, state: Any) -> Tensor:
        """The state as a tensor again (the inverse of `enter`)."""
        return state


def wants_grad(field: Any, y: Tensor) -> bool:
    """Whether a solve of ``field`` from ``y`` is recorded for a backward pass."""
    params = field.parameters() if isinstance(field, nn.Module) else ()
    return torch.is_grad_enabled() and (y.requires_grad or any(p.requires_grad for p in params))


@register_solver("euler")
class Euler(FixedStepSolver):
    """Explicit (forward) Euler, ``y + h f(t, y)``. Order 1. Any field."""

    name = "euler"
    order = 1
    evals_per_step = 1
    tableau = tableaus.EULER

    def kicks(self, field: Any) -> list[Kick] | None:
        """On a whole-state field, one kick of the whole state."""
        return None if isinstance(field, SplitField) else [Kick("x", 1.0, 0.0)]

    def step(self, f: Any, t: float, h: float, y: Tensor) -> Tensor:
        return y + h * f(t, y)


@register_solver("midpoint")
class Midpoint(FixedStepSolver):
    """Explicit midpoint rule. Order 2. Any field."""

    name = "midpoint"
    order = 2
    evals_per_step = 2
    tableau = tableaus.MIDPOINT

    def step(self, f: Any, t: float, h: float, y: Tensor) -> Tensor:
        return y + h * f(t + h / 2, y + (h / 2) * f(t, y))


@register_solver("rk4")
class RK4(FixedStepSolver):
    """Classical fourth-order Runge-Kutta. Order 4. Any field."""

    name = "rk4"
    order = 4
    evals_per_step = 4
    tableau = tableaus.RK4

    def step(self, f: Any, t: float, h: float, y: Tensor) -> Tensor:
        k1 = f(t, y)
        k2 = f(t + h / 2, y + (h / 2) * k1)
        k3 = f(t + h / 2, y + (h / 2) * k2)
        k4 = f(t + h, y + h * k3)
        return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


class SplitSolver(FixedStepSolver):
    """Base of the split methods: a step is a sequence of kicks (``kicks_y_first`` when y goes
    first; the roles swap when z does). ``first=None`` takes the field's own ``first``."""

    needs_split = True
    symplectic = True
    reversible = True
    kicks_y_first: ClassVar[tuple[Kick, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kicks_y_first" in cls.__dict__:  # one half-field evaluation per kick
            cls.evals_per_step = len(cls.kicks_y_first)

    def __init__(self, first: str | None = None):
        self.first = None if first is None else check_choice("first", first, ("y", "z"))

    def kicks(self, field: Any) -> list[Kick]:
        """This step's kicks on ``field`` (roles of y and z swapped when z goes first)."""
        if (self.first or field.first) == "y":
            return list(self.kicks_y_first)
        return [Kick("z" if k.u == "y" else "y", k.c, k.d) for k in self.kicks_y_first]

    @staticmethod
    def term(f: Any, kick: Kick, t: float, h: float, v: Tensor) -> Tensor:
        """The term of ``kick`` read on half ``v``: ``f_u(t + d h, v)``; the kick adds
        ``c h`` times it to half u."""
        drive = f.dy if kick.u == "y" else f.dz
        return drive(t + kick.d * h, v)

    def enter(self, field: Any, y: Tensor) -> Halves:
        """The halves of ``y`` (views): a split scheme carries them apart from step to step and
        joins them only where a state is returned (a join per step would copy the whole state)."""
        y_half, z_half = field.split(y)
        return {"y": y_half, "z": z_half}

    def advance(self, f: Any, t: float, h: float, halves: Halves) -> Halves:
        """The kicks of one step on ``halves`` (a new dict: the input is left as it was)."""
        halves = dict(halves)
        for k in self.kicks(f):
            halves[k.u] = halves[k.u] + (k.c * h) * self.term(f, k, t, h, halves[other_half(k.u)])
        return halves

    def retreat(self, f: Any, t: float, h: float, halves: Halves) -> Halves:
        """The exact inverse of `advance` (up to rounding): the kicks undone in reverse order."""
        halves = dict(halves)
        for k in reversed(self.kicks(f)):
            halves[k.u] = halves[k.u] - (k.c * h) * self.term(f, k, t, h, halves[other_half(k.u)])
        return halves

    def leave(self, field: Any, halves: Halves) -> Tensor:
        return field.merge(halves["y"], halves["z"])

    def step(self, f: Any, t: float, h: float, x: Tensor) -> Tensor:
        return self.leave(f, self.advance(f, t, h, self.enter(f, x)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(first={self.first!r})"


@register_solver("symplectic_euler")
class SymplecticEuler(SplitSolver):
    """Symplectic (semi-implicit) Euler on a split state. Order 1. Split fields only.

    With ``first="y"``: ``y+ = y + h f_y(t, z)``, then ``z+ = z + h f_z(t, y+)`` (from the *new*
    y); ``first="z"`` swaps the roles. ``first=None`` takes the field's own ``first``. On the
    two-layer field this is Chang et al.'s leapfrog/Verlet network (reading z_j as the
    staggered z_{j-1/2}). Symplectic for canonical Hamiltonian split fields.
    """

    name = "symplectic_euler"
    order = 1
    kicks_y_first = (Kick("y", 1.0, 0.0), Kick("z", 1.0, 0.0))


@register_solver("verlet", "leapfrog")
class Verlet(SplitSolver):
    """Stormer-Verlet / leapfrog on a split state. Order 2. Split fields only.

    With ``first="y"``: half step of y from z, full step of z from the new y, half step of y
    from the new z (``first="z"`` swaps the roles). Symmetric, symplectic for canonical
    Hamiltonian split fields.
    """

    name = "verlet"
    order = 2
    kicks_y_first = (Kick("y", 0.5, 0.0), Kick("z", 1.0, 0.5), Kick("y", 0.5, 1.0))
