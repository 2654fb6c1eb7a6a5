"""Blocks: a field plus a solver plus a time grid, as ``nn.Module`` layers."""

from __future__ import annotations

import contextlib
from typing import cast

import torch
from torch import Tensor, nn

from ._checks import check_int, check_positive
from .fields.base import NodeField
from .gradients import Gradient, get_gradient
from .integrate import integrate
from .solvers import FixedStepSolver, Schedule, Solution, Solver, SplitSolver, Stats, get_solver, plan_steps


class HamiltonianBlock(nn.Module):
    """The discrete mode: ``n_steps`` fixed steps of size ``h`` on piecewise-constant weights.

    Step j uses node j of the field, so a field with ``n_nodes = n_steps`` and ``dt = h`` is
    exactly the report's "n_blocks successive Hamiltonians" in one module, e.g. with J1/J2 and
    forward Euler ``y_{j+1} = y_j + h J K_j^T sigma(K_j y_j + b_j)`` (report eq. 2.21) and with
    the two-layer field and symplectic Euler ``y_{j+1} = y_j + h K1_j^T sigma(K1_j z_j + b1_j)``,
    ``z_{j+1} = z_j - h K2_j^T sigma(K2_j y_{j+1} + b2_j)`` (Chang et al.).

    Args:
        field: a `NodeField` with ``time_mode`` "piecewise" (or
            "constant": one step).
        solver: a fixed-step solver name or object; default the field's ``default_solver``
            (euler for J1/J2/antisymmetric, symplectic_euler for split fields).
        gradient: ``"backprop"`` (autograd; on dense sigma-term fields the fused path of
            `contham.solvers.fused` runs all steps as one autograd node, several times faster on
            small states) or ``"reversible"`` (store nothing and rebuild the states backwards
            during backprop, exact gradients with activation memory independent of depth: split
            solvers undo their own steps, see `contham.solvers.reversible`; euler, midpoint and
            rk4 run McCallum & Foster's reversible pair, a scheme of its own, see
            `contham.solvers.reversible_rk`); or a `contham.gradients` object, e.g.
            ``Backprop(higher_order=True)`` for double backward.

    ``last_stats`` holds the `Stats` of the latest forward.
    """

    def __init__(
        self,
        field: NodeField,
        solver: str | FixedStepSolver | None = None,
        *,
        gradient: str | Gradient = "backprop",
    ):
        super().__init__()
        if not isinstance(field, NodeField) or field.nodes.mode == "linear":
            raise ValueError(
                "field must be a NodeField with time_mode 'piecewise' or 'constant' (one weight node per step); "
                f"got {type(field).__name__}" + (" with time_mode='linear'" if isinstance(field, NodeField) else "")
            )
        self.field = field
        chosen = get_solver(field.default_solver if solver is None else solver)
        if not isinstance(chosen, FixedStepSolver):
            raise ValueError(f"solver must be a fixed-step solver for a HamiltonianBlock; got {chosen.name!r}")
        self.solver = chosen
        self.gradient = get_gradient(gradient)
        chosen.check_field(field)
        self.gradient.check(chosen)
        self.n_steps, self.h = field.nodes.n, field.nodes.dt
        steps, outputs = plan_steps([0.0, self.n_steps * self.h], field.nodes.breaks, None, field.nodes)
        self.schedule = Schedule(field, chosen, steps, outputs)
        self.last_stats: Stats | None = None

    def forward(self, y: Tensor) -> Tensor:
        """``y_{n_steps}`` from ``y_0 = y`` (in the field's precision, also under autocast)."""
        precision, y = field_precision(self.field, y, "y")
        with precision:
            self.field.check_input(y)
            stats = Stats(self.solver.name)
            (out,) = self.solver.run(self.schedule, y, self.gradient, stats)
        self.last_stats = stats
        return out

    @property
    def fused(self) -> bool:
        """Whether forward runs the fused path (available, and not turned off by the gradient)."""
        return self.gradient.fused(self.schedule) is not None

    def step(self, j: int, y: Tensor) -> Tensor:
        """Step ``j`` alone (0-based): ``y_{j+1}`` from ``y_j = y`` (used by `contham.analysis`)."""
        s, h, node = self.schedule.steps[self._index(j)]
        assert node is not None  # a block's steps are pinned to its nodes
        return self.solver.step(self.field.at_node(node), s, h, y)

    def inverse(self, y: Tensor) -> Tensor:
        """``y_0`` from ``y_{n_steps} = y``: the steps undone in reverse order, exact up to rounding
        (split solvers only: their kicks are undone by subtracting the same terms)."""
        if not self.solver.reversible:
            raise ValueError(
                f"inverse() needs a split solver ('symplectic_euler', 'verlet'), whose steps are undone exactly; "
                f"got {self.solver.name!r}"
            )
        self.field.check_input(y)
        split = cast(SplitSolver, self.solver)
        halves = split.enter(self.field, y)
        for s, h, node in reversed(self.schedule.steps):
            assert node is not None
            halves = split.retreat(self.field.at_node(node), s, h, halves)
        return split.leave(self.field, halves)

    def trajectory(self, y: Tensor) -> Tensor:
        """The states ``y_0, ..., y_{n_steps}``, stacked on a new leading axis."""
        self.field.check_input(y)
        every = Schedule(self.field, self.solver, self.schedule.steps, list(range(1, self.n_steps + 1)))
        stats = Stats(self.solver.name)
        states = self.solver.run(every, y, get_gradient("backprop"), stats)
        self.last_stats = stats
        return torch.stack([y, *states])

    def _index(self, j: int) -> int:
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < self.n_steps:
            raise ValueError(f"j must be an integer in [0, {self.n_steps}); got {j!r}")
        return j

    def extra_repr(self) -> str:
        layout = f"n_steps={self.n_steps}, h={self.h:g}, solver={self.solver.name}"
        return f"{layout}, gradient={self.gradient}, fused={self.fused}"


class ODEBlock(nn.Module):
    """Any field integrated over ``[0, T]`` by any solver; returns the state at T.

    Args:
        field: an ``nn.Module`` with ``forward(t, y)``.
        T: the end time.
        solver: a registered name or a solver object (see `integrate`).
        gradient: how gradients are computed, as in `integrate`
            (e.g. ``gradient=Adjoint(rtol=1e-4, seminorm=True)``).
        step_size: the largest fixed step (fixed-step solvers).
        rtol: relative tolerance of an adaptive method named by string.
        atol: absolute tolerance of an adaptive method named by string.
        max_nfe: field calls allowed per pass.

    ``last_stats`` holds the `Stats` of the latest forward (its
    ``nfe_backward`` fills in during ``backward()``).
    """

    def __init__(
        self,
        field: nn.Module,
        T: float = 1.0,
        solver: str | Solver = "dopri5",
        *,
        gradient: str | Gradient = "backprop",
        step_size: float | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        max_nfe: int = 100_000,
    ):
        super().__init__()
        self.field = field
        self.solver = get_solver(solver, rtol, atol)
        self.gradient = get_gradient(gradient)
        self.solver.check_field(field)
        self.gradient.check(self.solver)
        self.t = [0.0, check_positive("T", T)]
        self.step_size = None if step_size is None else check_positive("step_size", step_size)
        self.max_nfe = check_int("max_nfe", max_nfe)
        self.last_stats: Stats | None = None

    def solve(self, y0: Tensor) -> Solution:
        """The whole `Solution` on ``[0, T]`` (in the field's precision,
        also under autocast)."""
        precision, y0 = field_precision(self.field, y0, "y0")
        with precision:
            solution = integrate(
                self.field,
                y0,
                self.t,
                self.solver,
                gradient=self.gradient,
                step_size=self.step_size,
                max_nfe=self.max_nfe,
                check_finite=False,  # a layer: no read-back to the host in a network's step
            )
        self.last_stats = solution.stats
        return solution

    def forward(self, y0: Tensor) -> Tensor:
        """The state at ``T``."""
        return self.solve(y0).y

    def extra_repr(self) -> str:
        return f"T={self.t[1]:g}, solver={self.solver.name}, gradient={self.gradient}"


def field_precision(field: nn.Module, y: Tensor, name: str = "y") -> tuple[contextlib.AbstractContextManager, Tensor]:
    """Blocks integrate in their field's precision: under ``torch.autocast`` (mixed-precision
    training) a context that turns autocast off and ``y`` cast to the field's dtype; otherwise
    no change. Low precision would spoil the integrators' accuracy and structure (energy,
    reversibility); the layers around the block keep autocast. ``y`` is checked first: a
    tensor with data (``name`` is the block's argument, for the error)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(y).__name__}")
    if y.is_meta:
        raise ValueError(f"{name} is a meta tensor (a shape without data); pass a tensor on a real device")
    if not torch.is_autocast_enabled(y.device.type):
        return contextlib.nullcontext(), y
    like = next(field.parameters(), None)
    return torch.autocast(y.device.type, enabled=False), y if like is None else y.to(like.dtype)


def compile_steps(model: nn.Module, backend: bool | str) -> None:
    """Compile, with ``backend`` (True: the default one), the steps that ``torch.compile(model)``
    leaves out of its graph: those of each `ODEBlock`'s adaptive solve, whose loop reads back on
    the host (`Solver.compiled`: contham's Runge-Kutta engine compiles each step attempt)."""
    for m in model.modules():
        if isinstance(m, ODEBlock):
            m.solver = m.solver.compiled(backend)


def collect_stats(model: nn.Module) -> list[Stats]:
    """The ``last_stats`` of every `HamiltonianBlock` and `ODEBlock` in ``model``
    (in module order) that has run: field evaluations and steps of the latest forward, and for
    ODE blocks of the latest backward."""
    return [
        m.last_stats
        for m in model.modules()
        if isinstance(m, (HamiltonianBlock, ODEBlock)) and m.last_stats is not None
    ]
