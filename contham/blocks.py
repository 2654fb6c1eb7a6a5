"""Blocks: a field plus a solver plus a time grid, as ``nn.Module`` layers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ._checks import check_bool, check_choice, check_positive
from .fields.base import NodeField
from .fused import fused_plan, fused_steps
from .integrate import Solution, Stats, fixed_step_plan, integrate, run_fixed_steps
from .reversible import reversible_steps
from .solvers import FixedStepSolver, Solver, get_solver
from .solvers.fixed import _SplitSolver

MEMORY_MODES = ("backprop", "reversible")


class HamiltonianBlock(nn.Module):
    """The discrete mode: ``n_steps`` fixed steps of size ``h`` on piecewise-constant weights.

    Step j uses node j of the field, so a field with ``n_nodes = n_steps`` and ``dt = h`` is
    exactly the report's "n_blocks successive Hamiltonians" in one module, e.g. with J1/J2 and
    forward Euler ``y_{j+1} = y_j + h J K_j^T sigma(K_j y_j + b_j)`` (report eq. 2.21) and with
    the two-layer field and symplectic Euler ``y_{j+1} = y_j + h K1_j^T sigma(K1_j z_j + b1_j)``,
    ``z_{j+1} = z_j - h K2_j^T sigma(K2_j y_{j+1} + b2_j)`` (Chang et al.).

    Args:
        field: a :class:`~contham.fields.NodeField` with ``time_mode`` "piecewise" (or
            "constant": one step).
        solver: a fixed-step solver name or object; default the field's ``default_solver``
            (euler for J1/J2/antisymmetric, symplectic_euler for split fields).
        memory: ``"backprop"`` (autograd stores every step's activations) or ``"reversible"``
            (split solvers only: store nothing and rebuild the states backwards during backprop,
            exact gradients with activation memory independent of depth; see
            :mod:`contham.reversible`).
        fused: where supported (dense H1 fields with any J and Euler, dense two-layer and separable
            fields with a split solver, a named sigma), run all steps as one autograd node with
            hand-written gradients (:mod:`contham.fused`; several times faster on small dense
            states). Its gradients cannot be differentiated again: set ``fused=False`` for double
            backward or ``torch.func`` transforms. ``memory="reversible"`` takes precedence.

    ``last_stats`` holds the :class:`~contham.integrate.Stats` of the latest forward.
    """

    def __init__(
        self,
        field: NodeField,
        solver: str | FixedStepSolver | None = None,
        *,
        memory: str = "backprop",
        fused: bool = True,
    ):
        super().__init__()
        if not isinstance(field, NodeField) or field.nodes.mode == "linear":
            raise ValueError(
                "field must be a NodeField with time_mode 'piecewise' or 'constant' (one weight node per step); "
                f"got {type(field).__name__}" + (" with time_mode='linear'" if isinstance(field, NodeField) else "")
            )
        self.field = field
        self.solver = get_solver(field.default_solver if solver is None else solver)
        if not isinstance(self.solver, FixedStepSolver):
            raise ValueError(f"solver must be a fixed-step solver for a HamiltonianBlock; got {self.solver.name!r}")
        self.solver.check_field(field)
        self.memory = check_choice("memory", memory, MEMORY_MODES)
        if memory == "reversible":
            if not isinstance(self.solver, _SplitSolver):
                raise ValueError(
                    f"memory='reversible' needs a split solver ('symplectic_euler', 'verlet'); got {self.solver.name!r}"
                )
            node_params = {id(getattr(field, name)) for name in field.node_names}
            if any(id(p) not in node_params for p in field.parameters()):
                raise ValueError("memory='reversible' needs a field whose parameters all lie on the node axis")
        self.n_steps, self.h = field.nodes.n, field.nodes.dt
        self._fused = fused_plan(field, self.solver) if check_bool("fused", fused) else None
        self._plan, _ = fixed_step_plan([0.0, self.n_steps * self.h], field.nodes.breaks, None, field.nodes)
        self.last_stats: Stats | None = None

    def forward(self, y: Tensor) -> Tensor:
        """``y_{n_steps}`` from ``y_0 = y`` (in the field's precision, also under autocast)."""
        precision, y = field_precision(self.field, y)
        with precision:
            return self._forward(y)

    def _forward(self, y: Tensor) -> Tensor:
        if self.memory == "reversible" and torch.is_grad_enabled():
            self.field.check_input(y)
            self.last_stats = Stats(self.solver.name, self.n_steps * self.solver.evals_per_step, 0, self.n_steps, 0)
            return reversible_steps(self.field, self.solver, y, self._plan, self.last_stats)
        if self._fused is not None:
            self.field.check_input(y)
            self.last_stats = Stats(self.solver.name, self.n_steps * self.solver.evals_per_step, 0, self.n_steps, 0)
            return fused_steps(self._fused, y, self.last_stats)
        return self._run(y, [self.n_steps])[-1]

    @property
    def fused(self) -> bool:
        """Whether forward runs the fused path (asked for and supported)."""
        return self._fused is not None

    def step(self, j: int, y: Tensor) -> Tensor:
        """Step ``j`` alone (0-based): ``y_{j+1}`` from ``y_j = y`` (used by :mod:`contham.analysis`)."""
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < self.n_steps:
            raise ValueError(f"j must be an integer in [0, {self.n_steps}); got {j!r}")
        s, h, node = self._plan[j]
        return self.solver.step(self.field.at_node(node), s, h, y)

    def trajectory(self, y: Tensor) -> Tensor:
        """The states ``y_0, ..., y_{n_steps}``, stacked on a new leading axis."""
        return torch.stack([y] + self._run(y, range(1, self.n_steps + 1)))

    def _run(self, y: Tensor, outputs: Iterable[int]) -> list[Tensor]:
        self.field.check_input(y)
        self.last_stats = Stats(self.solver.name, steps_accepted=self.n_steps, steps_rejected=0)
        return run_fixed_steps(self.field, self.solver, y, self._plan, list(outputs), self.last_stats)

    def extra_repr(self) -> str:
        layout = f"n_steps={self.n_steps}, h={self.h:g}, solver={self.solver.name}"
        return f"{layout}, memory={self.memory}, fused={self.fused}"


class ODEBlock(nn.Module):
    """Any field integrated over ``[0, T]`` by any solver; returns the state at T.

    Args:
        field: an ``nn.Module`` with ``forward(t, y)``.
        T: the end time.
        solver, step_size, rtol, atol, adjoint, max_nfe: as in :func:`~contham.integrate`.

    ``last_stats`` holds the :class:`~contham.integrate.Stats` of the latest forward (its
    ``nfe_backward`` fills in during ``backward()``).
    """

    def __init__(
        self,
        field: nn.Module,
        T: float = 1.0,
        solver: str | Solver = "dopri5",
        *,
        step_size: float | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        adjoint: bool = False,
        max_nfe: int = 100_000,
    ):
        super().__init__()
        self.field = field
        self.solver = get_solver(solver, rtol, atol)
        self.solver.check_field(field)
        self.t = [0.0, check_positive("T", T)]
        self.options = dict(step_size=step_size, adjoint=adjoint, max_nfe=max_nfe)
        self.last_stats: Stats | None = None

    def solve(self, y0: Tensor) -> Solution:
        """The whole :class:`~contham.integrate.Solution` on ``[0, T]`` (in the field's precision,
        also under autocast)."""
        precision, y0 = field_precision(self.field, y0)
        with precision:
            solution = integrate(self.field, y0, self.t, self.solver, **self.options)
        self.last_stats = solution.stats
        return solution

    def forward(self, y0: Tensor) -> Tensor:
        """The state at ``T``."""
        return self.solve(y0).y

    def extra_repr(self) -> str:
        return f"T={self.t[1]:g}, solver={self.solver.name}, adjoint={self.options['adjoint']}"


def field_precision(field: nn.Module, y: Tensor) -> tuple[contextlib.AbstractContextManager, Tensor]:
    """Blocks integrate in their field's precision: under ``torch.autocast`` (mixed-precision
    training) a context that turns autocast off and ``y`` cast to the field's dtype; otherwise
    no change. Low precision would spoil the integrators' accuracy and structure (energy,
    reversibility); the layers around the block keep autocast."""
    if not torch.is_autocast_enabled(y.device.type):
        return contextlib.nullcontext(), y
    like = next(field.parameters(), None)
    return torch.autocast(y.device.type, enabled=False), y if like is None else y.to(like.dtype)


def collect_stats(model: nn.Module) -> list[Stats]:
    """The ``last_stats`` of every :class:`HamiltonianBlock` and :class:`ODEBlock` in ``model``
    (in module order) that has run: field evaluations and steps of the latest forward, and for
    ODE blocks of the latest backward."""
    return [
        m.last_stats
        for m in model.modules()
        if isinstance(m, (HamiltonianBlock, ODEBlock)) and m.last_stats is not None
    ]
