"""``integrate(field, y0, t, solver=...)``: the one entry point, with statistics after every call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from ._checks import check_int, check_positive
from .fields.base import FrozenField
from .solvers import FixedStepSolver, Solver, TorchDiffEq, get_solver


class IntegrationError(RuntimeError):
    """An integration that cannot finish: step limit reached or step size underflow."""


@dataclass
class Stats:
    """Statistics of one integration.

    ``nfe_forward``: calls of the field in the forward solve (a split solver's half update counts
    one call). ``nfe_backward``: with ``adjoint=True``, field calls in the adjoint (backward)
    solve; with direct backprop, the calls backpropagated through (equal to ``nfe_forward`` once
    ``backward()`` has run, 0 before). Steps accepted/rejected: fixed-step solvers accept every
    step; torchdiffeq's adaptive methods report theirs (also for the adjoint solve); None where
    a method does not tell.
    """

    solver: str
    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted: int | None = None
    steps_rejected: int | None = None
    steps_accepted_backward: int | None = None
    steps_rejected_backward: int | None = None


@dataclass
class Solution:
    """``ys[i]`` is the state at ``ts[i]``; ``y`` the final state; ``stats`` the statistics."""

    ts: Tensor
    ys: Tensor
    stats: Stats

    @property
    def y(self) -> Tensor:
        """The state at the last output time."""
        return self.ys[-1]


def integrate(
    field: nn.Module,
    y0: Tensor,
    t: Sequence[float] | Tensor,
    solver: str | Solver = "dopri5",
    *,
    step_size: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    adjoint: bool = False,
    max_nfe: int = 100_000,
) -> Solution:
    """Solve ``y' = field(t, y)``, ``y(t[0]) = y0`` and return the states at the times ``t``.

    Args:
        field: any ``nn.Module`` with ``forward(t, y)``; contham's fields also check ``y0``.
        y0: the initial state, ``(batch, n)`` or ``(batch, C, H, W)``.
        t: strictly increasing output times (at least two).
        solver: a name (see :func:`contham.solvers.get_solver`) or a solver object.
        step_size: fixed-step solvers only: the largest step; each interval between output
            times and weight jumps is cut in equal steps no larger than this. None: one step per
            such interval (the discrete mode of a piecewise field).
        rtol, atol: tolerances of an adaptive method named by string.
        adjoint: backpropagate with the adjoint method (``torchdiffeq.odeint_adjoint``, the
            field's parameters as ``adjoint_params``): memory constant in the number of steps.
        max_nfe: field calls allowed per pass; more raises :class:`IntegrationError`.

    The node times of piecewise and linear fields (``field.nodes.breaks``) become step
    boundaries: no step of a fixed-step or adaptive solver straddles a jump of the weights
    (torchdiffeq's ``jump_t``) or a kink of their interpolation (``step_t``).
    """
    solver = get_solver(solver, rtol, atol)
    times = _check_times(t)
    check_int("max_nfe", max_nfe)
    if step_size is not None:
        check_positive("step_size", step_size)
    check = getattr(field, "check_input", None)
    if check is not None:
        check(y0)
    if isinstance(y0, Tensor) and not bool(torch.isfinite(y0).all()):
        raise ValueError("y0 must be finite; it contains NaN or inf")
    solver.check_field(field)
    nodes = getattr(field, "nodes", None)
    breaks = [s for s in (nodes.breaks if nodes is not None else ()) if times[0] < s < times[-1]]
    ts = torch.tensor(times, dtype=torch.float64, device=y0.device)
    if isinstance(solver, FixedStepSolver):
        if adjoint:
            raise ValueError(
                "adjoint=True needs a torchdiffeq method (e.g. solver='dopri5' or TorchDiffEq('rk4', options=...)); "
                f"got the fixed-step solver={solver.name!r}"
            )
        plan, outputs = fixed_step_plan(times, breaks, step_size, nodes)
        if len(plan) * solver.evals_per_step > max_nfe:
            raise IntegrationError(f"{len(plan)} steps of {solver.name} exceed max_nfe={max_nfe}")
        stats = Stats(solver.name, steps_accepted=len(plan), steps_rejected=0)
        ys = torch.stack([y0] + run_fixed_steps(field, solver, y0, plan, outputs, stats))
        return Solution(ts, ys, stats)
    if step_size is not None:
        raise ValueError(f"step_size applies to fixed-step solvers; for solver={solver.name!r} use options")
    jumps = nodes is not None and nodes.mode == "piecewise"
    return _integrate_torchdiffeq(field, y0, ts, solver, breaks, jumps, adjoint, max_nfe)


def _check_times(t: Sequence[float] | Tensor) -> list[float]:
    try:
        times = [float(s) for s in (t.flatten().tolist() if isinstance(t, Tensor) else t)]
    except (TypeError, ValueError):
        raise ValueError(f"t must be a sequence or 1-D tensor of times; got {t!r}") from None
    if isinstance(t, Tensor) and t.dim() != 1:
        raise ValueError(f"t must be 1-D; got shape {tuple(t.shape)}")
    if len(times) < 2 or not all(math.isfinite(s) for s in times):
        raise ValueError(f"t must hold at least two finite times; got {times}")
    if any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError(f"t must be strictly increasing; got {times}")
    return times


Plan = list[tuple[float, float, int | None]]


def fixed_step_plan(
    times: Sequence[float], breaks: Sequence[float], step_size: float | None, nodes: Any = None
) -> tuple[Plan, list[int]]:
    """Steps ``(t, h, node)`` covering ``times`` with the ``breaks`` as step boundaries.

    ``node`` is the node whose weights a piecewise/constant field uses for the whole step (found
    at the step's midpoint), None for fields read at each stage time. ``outputs[i]`` is the
    number of steps done when ``times[i + 1]`` is reached.
    """
    # a node time within rounding of an output time (3 * 0.1 vs 0.3) is the same step boundary
    near = lambda s: any(abs(s - p) <= 1e-12 * max(1.0, abs(p)) for p in times)  # noqa: E731
    points = sorted(set(times) | {s for s in breaks if not near(s)})
    per_node = nodes is not None and nodes.mode in ("piecewise", "constant")
    plan: Plan = []
    outputs = []
    output_times = set(times[1:])
    for a, b in zip(points, points[1:]):
        m = 1 if step_size is None else max(1, math.ceil((b - a) / step_size - 1e-9))
        h = (b - a) / m
        for k in range(m):
            s = a + k * h
            plan.append((s, h, nodes.locate(s + h / 2)[0] if per_node else None))
        if b in output_times:
            outputs.append(len(plan))
    return plan, outputs


def run_fixed_steps(
    field: nn.Module, solver: FixedStepSolver, y: Tensor, plan: Plan, outputs: Sequence[int], stats: Stats
) -> list[Tensor]:
    """Run a :func:`fixed_step_plan`; return the states at ``outputs`` and fill ``stats``.

    Steps pinned to a node take that node's weights from ``field.step_weights()``, computed once
    for the whole run."""
    out = []
    pending = iter(outputs)
    nxt = next(pending, None)
    frozen = {}
    if any(node is not None for _, _, node in plan):
        frozen = {j: FrozenField(field, params) for j, params in enumerate(field.step_weights())}
    for i, (s, h, node) in enumerate(plan, 1):
        y = solver.step(field if node is None else frozen[node], s, h, y)
        if i == nxt:
            out.append(y)
            nxt = next(pending, None)
    stats.nfe_forward = len(plan) * solver.evals_per_step
    _count_backward(out[-1], stats, stats.nfe_forward)
    return out


def _count_backward(y: Tensor, stats: Stats, n: int) -> None:
    if y.requires_grad:

        def hook(grad: Tensor) -> None:
            stats.nfe_backward += n

        y.register_hook(hook)


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
    """:class:`_Counted` with torchdiffeq's step callbacks (adaptive methods only: fixed-grid ones
    warn that they do not support them)."""

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.stats.steps_accepted += 1

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.stats.steps_rejected += 1

    def callback_accept_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.stats.steps_accepted_backward += 1

    def callback_reject_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.stats.steps_rejected_backward += 1


@torch.compiler.disable  # adaptive steps decide on the host: torch.compile runs around, not through, them
def _integrate_torchdiffeq(
    field: nn.Module,
    y0: Tensor,
    ts: Tensor,
    solver: TorchDiffEq,
    breaks: list[float],
    jumps: bool,
    adjoint: bool,
    max_nfe: int,
) -> Solution:
    stats = Stats(solver.name)
    if solver.adaptive:
        stats.steps_accepted, stats.steps_rejected = 0, 0
        if adjoint:
            stats.steps_accepted_backward, stats.steps_rejected_backward = 0, 0
    options = dict(solver.options)
    if breaks and solver.adaptive:
        # jump_t: the weights are discontinuous there (evaluated from each side); step_t: a kink
        options["jump_t" if jumps else "step_t"] = torch.tensor(breaks, dtype=torch.float64, device=y0.device)
    func = (_CountedSteps if solver.adaptive else _Counted)(field, stats, max_nfe)
    kwargs = dict(rtol=solver.rtol, atol=solver.atol, method=solver.method, options=options)
    try:
        if adjoint:
            params = tuple(p for p in field.parameters() if p.requires_grad)
            ys = odeint_adjoint(func, y0, ts, adjoint_params=params, **kwargs)
            func.backward_pass = True
        else:
            ys = odeint(func, y0, ts, **kwargs)
            _count_backward(ys, stats, stats.nfe_forward)
    except AssertionError as err:  # torchdiffeq reports dt underflow and max_num_steps this way
        raise IntegrationError(f"{solver.name} failed: {err}") from err
    return Solution(ts, ys, stats)
