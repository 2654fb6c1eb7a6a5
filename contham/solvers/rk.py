"""contham's explicit Runge-Kutta engine: any `Tableau`, fixed or adaptive steps, step control on
the device.

An adaptive solve keeps its time, step size, accept/reject decision and counters as tensors: a step
is a fixed sequence of kernels whatever its outcome (a rejected step leaves the state as it was,
through ``torch.where``), so the host only asks "has every sample arrived?" once every
``check_every`` steps (default: every step on the CPU, where asking costs nothing; every 8 on a
GPU), or sooner where the samples could arrive sooner at their step sizes (the attempts after the
end would cost their field calls for nothing). torchdiffeq instead decides each step on the host.

With ``per_sample=True`` each sample of the batch (axis 0) has its own step size, error norm,
accept/reject and counters: one stiff sample no longer drags the batch, and a sample's result is
that of solving it alone. The field is then called with a time per sample, shaped
``(batch, 1, ...)`` to broadcast against the state (fields with weights pinned per step, and
``ODENetField``, take it; fields that read t as one number cannot).

The step-size rule (`PIController`) and the first-step heuristic (Hairer, Norsett & Wanner,
Solving ODEs I, II.4) are those of torchdiffeq by default, so the two take the same steps; the
solve ends exactly on its last time and on each weight break, and reads the output times in
between from the dense output of the step that crossed them, which the host learns at its next
check. How the gradients flow is the strategy's (`contham.gradients`): autograd through
the accepted steps (step sizes are constants of the discrete map), the reversible scheme of
McCallum & Foster (`contham.solvers.reversible_rk`), or torchdiffeq's adjoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._checks import check_backend, check_bool, check_int, check_nonnegative, check_positive
from ..fields.base import FrozenField, NodeField, prepared
from .adaptive import TORCHDIFFEQ_METHODS, TorchDiffEq
from .base import (
    IntegrationError,
    Problem,
    Solution,
    Solver,
    Stats,
    compiled_or_eager,
    outside_compile,
    register_solver,
)
from .fixed import FixedStepSolver, plan_steps, wants_grad
from .tableaus import TABLEAUS, Tableau, get_tableau


@dataclass(frozen=True)
class PIController:
    """The next step size from the error ratio r of this step (accepted when r <= 1) and r' of
    the last accepted one: ``h * safety * r^-(icoeff + pcoeff)/q * r'^(pcoeff/q)``, q the
    method's order, at most ``ifactor`` times h, and at least h after an accepted step
    (``dfactor`` times h after a rejected one). The defaults (``pcoeff=0``) are torchdiffeq's
    integral controller; ``pcoeff=0.4, icoeff=0.3`` is a common PI choice for oscillatory,
    mildly stiff problems (Hairer & Wanner, Solving ODEs II, IV.2)."""

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    icoeff: float = 1.0
    pcoeff: float = 0.0

    def __post_init__(self) -> None:
        for name in ("safety", "ifactor", "dfactor", "icoeff"):
            check_positive(name, getattr(self, name))
        check_nonnegative("pcoeff", self.pcoeff)

    def next_step(self, h: Tensor, ratio: Tensor, last: Tensor, order: int) -> Tensor:
        """The next step size from ``h`` (all of shape ``(samples,)``)."""
        factor = self.safety * ratio.clamp_min(1e-10).pow(-(self.icoeff + self.pcoeff) / order)
        if self.pcoeff:
            factor = factor * last.pow(self.pcoeff / order)
        factor = torch.where(ratio == 0, self.ifactor, factor)
        factor = torch.where(ratio < 1, factor.clamp_min(1.0), factor.clamp_min(self.dfactor))
        return h * factor.clamp_max(self.ifactor)


def rk_step(
    f: Callable[[Any, Tensor], Tensor],
    tableau: Tableau,
    t: Any,
    dt: Any,
    y: Tensor,
    k1: Tensor | None = None,
    error: bool = False,
) -> tuple[Tensor, Tensor | None, list[Tensor]]:
    """One step of ``tableau`` from ``(t, y)`` by ``dt`` (numbers, or tensors that broadcast
    against y and, for t, as the field takes it): ``(y1, error estimate or None, the stages)``.
    ``k1`` is ``f(t, y)`` if known (FSAL). Without ``error`` an FSAL method skips its last
    stage, which only estimates the error; with it, that stage is read at y1."""
    ks, last = _stages(f, tableau, t, dt, y, k1, error)
    y1 = last if tableau.fsal and len(ks) == tableau.stages else _combine(tableau.b, ks, dt, y)
    return y1, _error(tableau, ks, dt) if error else None, ks


def rk_increment(
    f: Callable[[Any, Tensor], Tensor],
    tableau: Tableau,
    t: Any,
    dt: Any,
    y: Tensor,
    error: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """`rk_step`'s ``y1 - y`` and error estimate, the increment summed on its own (exact
    to its own rounding however large y is)."""
    ks, _ = _stages(f, tableau, t, dt, y, None, error)
    return _combine(tableau.b, ks, dt), _error(tableau, ks, dt) if error else None


def _stages(f: Any, tableau: Tableau, t: Any, dt: Any, y: Tensor, k1: Tensor | None, error: bool) -> tuple:
    """A step's stages (all of them with ``error``, else those of y1) and the last one's input."""
    times = _stage_times(tableau, t, dt)
    ks, state = [f(t, y) if k1 is None else k1], y
    for i in range(1, tableau.stages if error else tableau.solution_stages):
        state = _combine(tableau.a[i], ks, dt, y)
        ks.append(f(times[i], state))
    return ks, state


_NODES: dict[tuple, Tensor] = {}  # each tableau's c as a tensor, per device and dtype


def _stage_nodes(tableau: Tableau, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``tableau``'s nodes c as a tensor, made once per dtype and device; while compiling, a
    constant of the graph (a graph that read or filled the cache would be guarded on it, and
    compiled again once it changes)."""
    if torch.compiler.is_compiling():
        return torch.tensor(tableau.c, dtype=dtype, device=device)
    key = (tableau.c, device, dtype)
    if key not in _NODES:  # filled on the device: no copy from the host (a synchronisation on CUDA)
        _NODES[key] = torch.stack([torch.full((), c, dtype=dtype, device=device) for c in tableau.c])
    return _NODES[key]


def _stage_times(tableau: Tableau, t: Any, dt: Any) -> Any:
    """The stages' times ``t + c_i dt``: for tensors, two operations for all stages (each stage
    reads a view of their result), not two per stage."""
    if not (torch.is_tensor(t) and torch.is_tensor(dt)):
        return [t + c * dt for c in tableau.c]
    return t + _stage_nodes(tableau, dt.dtype, dt.device).view(-1, *(1,) * dt.dim()) * dt


def _error(tableau: Tableau, ks: list[Tensor], dt: Any) -> Tensor:
    """The embedded error estimate, outside autograd: it only steers the step size."""
    if tableau.e is None:
        raise ValueError(f"solver={tableau.name!r} has no error estimate")
    with torch.no_grad():
        return _combine(tableau.e, ks, dt)


def _combine(weights: tuple[float, ...], ks: list[Tensor], dt: Any, start: Tensor | None = None) -> Tensor:
    """``start + dt * sum_i weights_i ks_i`` (no start: the sum alone), one kernel per nonzero
    weight accumulated in place (the sum is a fresh tensor, and no term's gradient reads it;
    ``dt`` a number, or a tensor that broadcasts against the stages)."""
    step = dt if torch.is_tensor(dt) else ks[0].new_full((), dt)
    (w, k), *rest = [(w, k) for w, k in zip(weights, ks) if w != 0.0]
    total = k * (step * w) if start is None else torch.addcmul(start, k, step, value=w)
    for w, k in rest:
        total.addcmul_(k, step, value=w)
    return total


def horner(coefficients: list[Tensor], x: float | Tensor, out: Tensor | None = None) -> Tensor:
    """The polynomial with these coefficients (highest power first) at x, a number or a tensor
    that broadcasts against them: one fused multiply-add per power, all into ``out`` (where no
    graph is recorded) or one fresh tensor where autograd records nothing (on the CPU a fresh
    state-sized tensor can cost more, faulted in page by page, than the arithmetic)."""
    value, *rest = coefficients
    for i, c in enumerate(rest):
        into = out if i == 0 else None if value.requires_grad else value
        value = torch.addcmul(c, x, value, out=into) if torch.is_tensor(x) else torch.add(c, value, alpha=x, out=into)
    return value


class TableauSteps(FixedStepSolver):
    """Fixed steps of any tableau (``RungeKutta(method, ...)`` with a ``step_size``)."""

    tableau: Tableau

    def __init__(self, tableau: Tableau):
        self.tableau, self.name, self.order = tableau, tableau.name, tableau.order
        self.evals_per_step = tableau.solution_stages  # type: ignore[misc]  # per instance: one class, any tableau

    def step(self, f: Any, t: float, h: float, y: Tensor) -> Tensor:
        return rk_step(f, self.tableau, t, h, y)[0]

    def __repr__(self) -> str:
        return f"TableauSteps({self.tableau.name!r})"


@dataclass(repr=False)
class RungeKutta(Solver):
    """contham's explicit Runge-Kutta engine (see the module docstring).

    Args:
        method: a name of `TABLEAUS` (``dopri5``, ``tsit5``, ``bosh3``, ``adaptive_heun``; and
            ``euler``, ``midpoint``, ``rk4`` for fixed steps) or a `Tableau`.
        rtol: relative error tolerance.
        atol: absolute error tolerance.
        controller: the step-size rule.
        first_step: the first step size; None: the heuristic.
        check_every: steps between the host's checks for the end of the solve; None: 1 on the
            CPU, 8 elsewhere. Steps taken by samples already at the end change nothing; the
            first check comes after one step, and a check comes sooner where the samples could
            reach the end sooner at their step sizes.
        per_sample: give each sample (axis 0) its own step sizes.
        compile: run each step attempt (its field calls, error estimate and step control, and
            their backward pass; with ``gradient="reversible"`` each increment of its backward
            pass too) through ``torch.compile``: True for the default backend, or a backend
            name. The loop and its checks stay outside the graph; a step that fails to compile
            warns once and the solves step eagerly.
    """

    method: str | Tableau = "dopri5"
    rtol: float = 1e-7
    atol: float = 1e-9
    controller: PIController = field(default_factory=PIController)
    first_step: float | None = None
    check_every: int | None = None
    per_sample: bool = False
    compile: bool | str = False
    tableau: Tableau = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.tableau = get_tableau(self.method)
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)
        if self.first_step is not None:
            check_positive("first_step", self.first_step)
        if self.check_every is not None:
            check_int("check_every", self.check_every)
        check_bool("per_sample", self.per_sample)
        check_backend("compile", self.compile)
        if not isinstance(self.controller, PIController):
            raise ValueError(f"controller must be a PIController; got {self.controller!r}")
        self.name, self.order = self.tableau.name, self.tableau.order

    @classmethod
    def from_name(cls, name: str, rtol: float | None = None, atol: float | None = None) -> Solver:
        default = cls(name)
        return cls(name, default.rtol if rtol is None else rtol, default.atol if atol is None else atol)

    def __repr__(self) -> str:
        shown = ("first_step", "check_every", "per_sample", "compile")
        options = "".join(f", {k}={getattr(self, k)!r}" for k in shown if getattr(self, k))
        return f"RungeKutta({self.tableau.name!r}, rtol={self.rtol:g}, atol={self.atol:g}{options})"

    @property
    def adaptive(self) -> bool:
        """True for methods with an error estimate (fixed steps need a ``step_size``)."""
        return self.tableau.adaptive

    def no_adjoint(self) -> str | None:
        """The adjoint is torchdiffeq's: it serves the methods, step rule and shared steps it has."""
        instead = "use gradient='reversible' (exact, memory independent of the steps) or 'backprop'"
        c = self.controller
        if self.name not in TORCHDIFFEQ_METHODS:
            return f"runs torchdiffeq, which has no method {self.name!r}; {instead}"
        if self.per_sample:
            return f"runs torchdiffeq, whose steps the whole batch shares; got per_sample=True: {instead}"
        if (c.icoeff, c.pcoeff) != (1, 0):
            return f"runs torchdiffeq, whose step rule is an integral controller; got {c!r}: {instead}"
        return None

    def torchdiffeq_twin(self) -> TorchDiffEq:
        """torchdiffeq's solver of the same method, tolerances and step rule (for the adjoint)."""
        c = self.controller
        options: dict[str, Any] = dict(safety=c.safety, ifactor=c.ifactor, dfactor=c.dfactor)
        if self.first_step is not None:
            options["first_step"] = self.first_step
        return TorchDiffEq(self.name, self.rtol, self.atol, options)

    def compiled(self, backend: bool | str) -> RungeKutta:
        """This solver with ``compile=backend``: each adaptive step attempt compiled."""
        return replace(self, compile=backend)

    def fixed(self) -> TableauSteps:
        """The fixed-step solver of this tableau."""
        return TableauSteps(self.tableau)

    def check_start(self, problem: Problem) -> None:
        """A fixed-step solve checks y0 as every solver does; an adaptive solve checks it on the
        device and reads the flag back with its first check."""
        if problem.step_size is not None:
            super().check_start(problem)

    def solve(self, problem: Problem) -> Solution:
        if problem.step_size is not None:
            return self.fixed().solve(problem)
        if not self.adaptive:
            raise ValueError(f"solver={self.name!r} has no error estimate: give it a step_size")
        if self.per_sample and problem.y0.dim() == 0:
            raise ValueError("per_sample=True needs a batch axis: y0 of shape (batch, ...)")
        return _adaptive(self, problem)

    def loop(self, problem: Problem, scheme: Scheme | None = None) -> AdaptiveLoop:
        """The adaptive solve of ``problem`` by ``scheme`` (plain steps by default), ready to `run`."""
        return AdaptiveLoop(self, problem, Scheme() if scheme is None else scheme)


class Attempt(NamedTuple):
    """One step attempt of a `Scheme`: the new state, the error estimate, the solution before
    and after the step (they scale the error), the field at the new solution (FSAL) or None, the
    field calls made, and ``(y0, y1, stages)`` for dense output (None: the scheme has none)."""

    new: Any
    error: Tensor
    before: Tensor
    after: Tensor
    fsal: Tensor | None
    calls: int
    dense: tuple[Tensor, Tensor, list[Tensor]] | None


class Scheme:
    """What an adaptive loop advances: plain Runge-Kutta steps of one state (the default), or
    a scheme of its own (the reversible pair of `contham.solvers.reversible_rk`). ``record`` is
    called with every step attempt."""

    #: whether the last stage of a step (FSAL) is the next step's first
    keeps_stage = True

    def start(self, f: Any, y0: Tensor) -> Any:
        """The scheme's state at the start."""
        return y0

    def solution(self, state: Any) -> Tensor:
        """The ODE's solution in ``state``."""
        return state

    def attempt(self, f: Any, tableau: Tableau, t: Tensor, dt: Tensor, state: Any, k1: Tensor | None) -> Attempt:
        """Try one step from ``state`` (``k1``: the field there, if known)."""
        y1, err, ks = rk_step(f, tableau, t, dt, state, k1, error=True)
        assert err is not None
        fsal = ks[-1] if tableau.fsal else None
        dense = (state, y1, ks) if fsal is not None else None
        return Attempt(y1, err, state, y1, fsal, tableau.stages - (k1 is not None), dense)

    def select(self, accept: Tensor, new: Any, old: Any) -> Any:
        """``new`` where ``accept`` (broadcast), else ``old``."""
        return torch.where(accept, new, old)

    def record(self, f: Any, node: int | None, t: Tensor, dt: Tensor, accept: Tensor) -> None:  # noqa: B027
        """Called with each attempt's field and weight node (None: ``f`` reads t itself), start
        time, signed step size and acceptance (the last three ``(samples,)``)."""


class Progress(NamedTuple):
    """Where each sample of an adaptive solve is (all on the device): time, next step size,
    state, the field's value there (FSAL) or None, the last accepted error ratio, and whether
    it has reached the end of the interval."""

    t: Tensor
    h: Tensor
    state: Any
    k1: Tensor | None
    last: Tensor
    done: Tensor


class Advance(NamedTuple):
    """One step attempt of an `AdaptiveLoop`: where each sample is now, the counters, the field
    calls made, the signed step size and acceptance per sample, and the dense output (None:
    the scheme has none, or the interval no output times)."""

    progress: Progress
    counts: Tensor
    calls: int
    dt: Tensor
    accept: Tensor
    dense: tuple[Tensor, Tensor, list[Tensor]] | None


class AdaptiveLoop:
    """One adaptive solve: the intervals between output times and breaks, each stepped to its
    end with the controller on the device."""

    def __init__(self, solver: RungeKutta, problem: Problem, scheme: Scheme):
        self.solver, self.problem, self.scheme = solver, problem, scheme
        self.tableau: Tableau = solver.tableau
        self.attempting = compiled_or_eager(AdaptiveLoop.attempt, solver.compile)  # `attempt`, compiled or not
        y0 = problem.y0
        self.samples = y0.shape[0] if solver.per_sample else 1
        # one time and step size per sample, or one number for all
        self.shape = (self.samples,) + (1,) * (y0.dim() - 1) if solver.per_sample else ()
        self.every = solver.check_every or (1 if y0.device.type == "cpu" else 8)
        self.sizes: list[float] | None = None  # each sample's next step size, as of the last check
        self.stats = Stats(solver.name, steps_accepted=0, steps_rejected=0)
        self.outputs: list[int] = []  # indices of the output times in the interval some sample has not passed
        # whether the interval has output times: only then does a step return its dense output
        # (a compiled step's graph would give it gradients, zeros, in every backward pass)
        self.interpolating = False
        self.recent: list[tuple[Tensor, Tensor, tuple]] = []  # the steps since the last check: t, dt, dense output
        self.dense: dict[int, Tensor] = {}  # the outputs' values so far
        # the solution at every output time, written in place where no graph is recorded (else None)
        self.rows: Tensor | None = None

    def broadcast(self, v: Tensor, dtype: torch.dtype) -> Tensor:
        """A ``(samples,)`` tensor (times, step sizes) as the field and the state take it: one
        number, or one per sample shaped to broadcast against the state."""
        return v.to(dtype).reshape(self.shape)

    def times(self, t: Tensor, dt: Tensor, accept: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A step's time, size and acceptance as the field and the state take them; the time and
        the size new tensors, not views, as the reversed step's ``t + dt`` and ``-dt`` are (a
        compiled increment's graph is guarded on whether its inputs are views)."""
        t, dt = (v.reshape(self.shape).to(self.problem.y0.dtype, copy=True) for v in (t, dt))
        return t, dt, self.broadcast(accept, torch.bool)

    def call(self, f: Any) -> Callable[[Tensor, Tensor], Tensor]:
        """``f`` counted, taking the loop's times."""

        def counted(t: Tensor, y: Tensor) -> Tensor:
            self.count(1)
            return f(t, y)

        return counted

    def count(self, calls: int) -> None:
        """Count ``calls`` field calls; raise once they pass the problem's ``max_nfe``."""
        self.stats.nfe_forward += calls
        if self.stats.nfe_forward > self.problem.max_nfe:
            raise IntegrationError(
                f"the forward solve with {self.solver.name} reached max_nfe={self.problem.max_nfe} field calls; "
                "the dynamics may be stiff or the tolerances too tight: loosen rtol/atol or raise max_nfe"
            )

    def run(self) -> list[Any]:
        """The scheme's states at the output times after the first; fills ``stats``. Output times
        inside an interval between weight breaks are interpolated where the scheme has a dense
        output (plain steps of an FSAL method); otherwise every output time ends an interval."""
        p = self.problem
        dense = self.tableau.fsal and self.scheme.keeps_stage and len(p.times) > 2
        if dense and not wants_grad(p.field, p.y0):
            self.rows = p.y0.new_empty((len(p.times), *p.y0.shape))
            self.rows[0] = p.y0
        segments, ends = plan_steps([p.times[0], p.times[-1]] if dense else p.times, p.breaks, None, p.nodes)
        field: Any = p.field
        pinned = isinstance(field, NodeField)  # else a wrapper that exposes its field's nodes
        weights = field.step_weights() if pinned and any(node is not None for _, _, node in segments) else []
        state = self.scheme.start(p.field, p.y0)
        stepping = prepared(field, p.y0)  # once per solve, in this grad mode
        # field calls, accepted and rejected steps per sample, in doubles (exact) to be read back with the times
        self.counts = torch.zeros(3, self.samples, dtype=torch.float64, device=p.y0.device)
        self.finite = torch.isfinite(torch.linalg.vector_norm(p.y0.detach(), float("inf"))).double().reshape(1)
        h, k1, out = None, None, []
        for i, (a, span, node) in enumerate(segments, 1):
            if i > 1 and node != segments[i - 2][2]:
                k1 = None  # the weights jump here: the field is read afresh on the new side
            self.node = node if weights else None
            # the field as the steps call it, and as a backward pass that rebuilds them reads it afresh
            if weights and node is not None:
                self.stepping = self.field = FrozenField(field, weights[node])
            else:
                self.stepping, self.field = self.inside(stepping, a, a + span), self.inside(field, a, a + span)
            f = self.stepping
            sign = 1.0 if span > 0 else -1.0
            inner = p.times[1:-1] if dense else []
            self.outputs = [j for j, s in enumerate(inner, 1) if 0 < sign * (s - a) <= sign * span]
            self.interpolating = bool(self.outputs)
            state, h, k1 = self.segment(f, a, a + span, state, h, k1)
            if i in ends:
                out.append(state)
        nfe, accepted, rejected = self.read  # as of the last check, after the last step
        self.stats.steps_accepted, self.stats.steps_rejected = max(accepted), max(rejected)
        if self.solver.per_sample:
            self.stats.nfe_per_sample, self.stats.steps_per_sample = nfe, accepted
        return [self.dense[j] for j in range(1, len(p.times) - 1)] + out if dense else out

    def solution(self, ys: list[Tensor]) -> Solution:
        """The `Solution` from the solutions at the output times after the first (`run`'s, or
        computed from them): the rows written in place where there are, else ``ys`` stacked."""
        p = self.problem
        if self.rows is None:
            return Solution(p.times, torch.stack([p.y0, *ys]), self.stats)
        self.rows[-1] = ys[-1]
        return Solution(p.times, self.rows, self.stats)

    def interpolate(self, sign: float, went: list[float], arrived: list[float], now: Tensor) -> None:
        """Each output time the steps since the last check crossed, from the dense output of the
        step that crossed it. ``went``: those steps' start times and sizes, ``arrived``: each
        sample's time ``now``, as read back with the check; so the host knows which step crossed
        which output and evaluates nothing else."""
        n, times = self.samples, self.problem.times
        starts = [went[2 * n * i : 2 * n * i + n] for i in range(len(self.recent))] + [arrived]
        ends = [t for t, _, _ in self.recent[1:]] + [now]
        for i, ((t, dt, dense), t_new) in enumerate(zip(self.recent, ends)):
            sizes = went[2 * n * i + n : 2 * n * (i + 1)]
            spans = list(zip(starts[i], sizes, starts[i + 1]))  # a rejected step ends where it began
            crossed = [
                j for j in self.outputs if any((times[j] - a) * h > 0 >= (times[j] - b) * h for a, h, b in spans)
            ]
            coefficients = self.polynomial(dt, dense) if crossed else []
            for j in crossed:
                row = None if self.rows is None else self.rows[j]
                if self.solver.per_sample:
                    old = self.dense.get(j, dense[0])
                    self.dense[j] = self.crossing(times[j], coefficients, t, dt, t_new, old, row)
                else:  # one step for all: its fraction is a number, and it crossed for every sample
                    self.dense[j] = horner(coefficients, (times[j] - starts[i][0]) / sizes[0], row)
        self.recent = []
        behind = min(sign * v for v in arrived)
        self.outputs = [j for j in self.outputs if sign * times[j] > behind]

    def crossing(
        self, s: float, coefficients: list[Tensor], t: Tensor, dt: Tensor, t_new: Tensor, old: Tensor, row: Any
    ) -> Tensor:
        """The value at time s of the samples whose step from t to t_new crossed it (their own
        fractions of their own steps); ``old`` for the others. Written into ``row`` unless None."""
        x = self.broadcast((s - t) / torch.where(dt == 0, torch.ones_like(dt), dt), old.dtype)
        mask = self.broadcast(((s - t) * dt > 0) & ((s - t_new) * dt <= 0), torch.bool)
        return torch.where(mask, horner(coefficients, x), old, out=row)

    def polynomial(self, dt: Tensor, dense: tuple) -> list[Tensor]:
        """The coefficients, highest power first, of a step's dense output in the fraction of the
        step: a quartic through y0, y1, the middle and the slopes at both ends where the tableau
        gives the middle, else the cubic Hermite polynomial."""
        y0, y1, ks = dense
        step = self.broadcast(dt, y0.dtype)
        d = step * ks[0]
        span, slope = y1 - y0 - d, step * ks[-1] - d  # p(1) - p(0) - p'(0) and p'(1) - p'(0)
        if self.tableau.mid is None:
            return [slope - 2 * span, 3 * span - slope, d, y0]
        middle = _combine(self.tableau.mid, ks, step) - d / 2  # p(1/2) - p(0) - p'(0) / 2
        u, w = slope - 2 * span, 4 * span - 16 * middle
        return [2 * u - w, 2 * w - 3 * u, span - w + u, d, y0]

    def inside(self, field: Any, a: float, b: float) -> Any:
        """``field`` read on the interval between a and b: where its weights jump at the upper
        end, times there are read just below it (the weights of the interval, as torchdiffeq's
        ``jump_t``)."""
        upper, lower = max(a, b), min(a, b)
        if self.problem.nodes is None or upper not in self.problem.nodes.jumps:
            return field
        dtype = self.problem.y0.dtype  # that of the times the field gets
        below = torch.nextafter(torch.tensor(upper, dtype=dtype), torch.tensor(lower, dtype=dtype)).item()
        return lambda t, y: field(torch.clamp(t, max=below), y)

    def segment(self, f: Any, a: float, b: float, state: Any, h: Tensor | None, k1: Tensor | None) -> tuple:
        """Step ``state`` from time a to b (either direction): the state there, the next step
        size and the field's value there (FSAL methods; else None)."""
        y = self.scheme.solution(state)
        sign = 1.0 if b > a else -1.0
        call = self.call(f)
        t = torch.full((self.samples,), a, dtype=torch.float64, device=y.device)
        end = torch.full((), b, dtype=torch.float64, device=y.device)  # a tensor: a compiled step serves every end
        if h is None:
            k1 = call(self.broadcast(t, y.dtype), y)
            h = self.first_step(call, t, sign, y, k1)
        if not (self.tableau.fsal and self.scheme.keeps_stage):
            k1 = None  # each step reads the field at its start
        done = torch.zeros(self.samples, dtype=torch.bool, device=y.device)
        p = Progress(t, h, state, k1, torch.ones_like(h), done)
        # the host knows the step sizes that carry over from the last interval's last check; a first
        # step size is learned at a check after one step
        attempts = 1 if self.sizes is None else self.until_end(b, [a] * self.samples, self.sizes, None)
        while True:
            for _ in range(attempts):
                p = self.step(sign, end, p)
            # the one read-back per check_every steps: whether y0 was finite, each sample's state of
            # progress (done, time, next step size), the statistics, and where the steps since the
            # last check went when there are output times to interpolate
            went = [torch.cat((t, dt)) for t, dt, _ in self.recent]
            back = torch.cat((self.finite, p.done.double(), p.t, p.h, self.counts.view(-1), *went)).tolist()
            n = self.samples
            finished, times, sizes, *counts = (back[1 + i * n : 1 + (i + 1) * n] for i in range(6))
            self.read = [[int(c) for c in chunk] for chunk in counts]
            if self.recent:
                self.interpolate(sign, back[1 + 6 * n :], times, p.t)
            if not back[0]:
                raise ValueError("y0 must be finite; it contains NaN or inf")
            self.sizes = sizes
            if all(finished):
                return p.state, p.h, p.k1
            if any(not d and v + sign * s == v for d, v, s in zip(finished, times, sizes)):  # the step underflowed
                raise IntegrationError(
                    f"{self.solver.name}: the step size underflowed before t={b:g} "
                    "(the dynamics may be stiff or not finite); loosen rtol/atol"
                )
            attempts = self.until_end(b, times, sizes, finished)

    def until_end(self, b: float, times: list[float], sizes: list[float], finished: list[float] | None) -> int:
        """Step attempts before the next check: ``check_every``, or fewer where the samples not at
        the end (all with ``finished`` None) reach it sooner at their current step sizes (steps
        after a sample's end change nothing, but cost their field calls)."""
        left = [abs(b - v) / s for v, s, d in zip(times, sizes, finished or [0.0] * len(times)) if not d and s > 0]
        return max(1, min(self.every, math.ceil(max(left, default=self.every))))

    def step(self, sign: float, end: Tensor, p: Progress) -> Progress:
        """One step attempt towards ``end`` of every sample not there yet: `attempt` (compiled
        where the solver says so), then what the host keeps of it."""
        a = self.attempting(self, self.stepping, sign, end, p, self.counts)
        self.counts = a.counts
        self.count(a.calls)
        self.scheme.record(self.field, self.node, p.t, a.dt, a.accept)
        if self.outputs and a.dense is not None:  # interpolated at the next check
            self.recent.append((p.t, a.dt, a.dense))
        return a.progress

    def attempt(self, f: Any, sign: float, end: Tensor, p: Progress, counts: Tensor) -> Advance:
        """The tensor work of one step attempt, with no effect on the loop (it compiles whole):
        the scheme's step from ``p``, its error ratio, the decision, the next step size and
        the counters ``counts`` updated."""
        y = self.scheme.solution(p.state)
        remaining = (end - p.t).abs()
        reach = p.h >= remaining
        size = torch.where(p.done, 0.0, torch.minimum(p.h, remaining))
        dt = sign * size
        time, calls, k1 = self.broadcast(p.t, y.dtype), 0, p.k1
        if k1 is None and self.tableau.fsal and self.scheme.keeps_stage:
            k1, calls = f(time, y), 1
        attempt = self.scheme.attempt(f, self.tableau, time, self.broadcast(dt, y.dtype), p.state, k1)
        with torch.no_grad():
            ratio = self.error_ratio(attempt.error, attempt.before, attempt.after)
            going = ~p.done
            accept = (ratio <= 1) & going
            # field calls, accepted and rejected steps (a step is accepted only where it goes on)
            counts = counts + torch.stack((going * (calls + attempt.calls), accept, going ^ accept))
            proposal = self.solver.controller.next_step(size, ratio, p.last, self.tableau.order)
            # a step cut short to end the interval does not shrink the next one
            h = torch.where(p.done, p.h, torch.where(accept & reach, torch.maximum(p.h, proposal), proposal))
            # the last accepted error ratio steers only a PI rule
            last = torch.where(accept, ratio.clamp_min(1e-10), p.last) if self.solver.controller.pcoeff else p.last
            t = torch.where(accept, torch.where(reach, end, p.t + dt), p.t)
        mask = self.broadcast(accept, torch.bool)
        state = self.scheme.select(mask, attempt.new, p.state)
        k1 = None if attempt.fsal is None or k1 is None else torch.where(mask, attempt.fsal, k1)
        progress = Progress(t, h, state, k1, last, p.done | (accept & reach))
        return Advance(
            progress, counts, calls + attempt.calls, dt, accept, attempt.dense if self.interpolating else None
        )

    def norm(self, x: Tensor) -> Tensor:
        """Root mean square per sample ``(samples,)`` (of everything when the batch shares steps)."""
        flat = x.detach().reshape(self.samples, -1)
        return torch.linalg.vector_norm(flat, dim=1) / flat.shape[1] ** 0.5

    def error_ratio(self, err: Tensor, y0: Tensor, y1: Tensor) -> Tensor:
        # atol + rtol * max(|y0|, |y1|), then err over it, in one buffer
        scale = y0.detach().abs().clamp_min_(y1.detach().abs()).mul_(self.solver.rtol).add_(self.solver.atol)
        ratio = self.norm(torch.div(err.detach(), scale, out=scale)).to(torch.float64)
        return torch.nan_to_num(ratio, nan=math.inf, posinf=math.inf)

    def first_step(self, call: Any, t: Tensor, sign: float, y0: Tensor, f0: Tensor) -> Tensor:
        """The first step size per sample: the given one, or the heuristic."""
        if self.solver.first_step is not None:
            return torch.full_like(t, self.solver.first_step)
        with torch.no_grad():
            rtol, atol, order = self.solver.rtol, self.solver.atol, self.tableau.order
            scale = atol + y0.abs() * rtol
            d0, d1 = (self.norm(v / scale).to(torch.float64) for v in (y0, f0))
            h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
            f1 = call(self.broadcast(t + sign * h0, y0.dtype), y0 + self.broadcast(sign * h0, y0.dtype) * f0)
            d2 = self.norm((f1 - f0) / scale).to(torch.float64) / h0
            flat = (d1 <= 1e-15) & (d2 <= 1e-15)
            h1 = torch.where(flat, torch.clamp_min(h0 * 1e-3, 1e-6), (0.01 / torch.maximum(d1, d2)) ** (1.0 / order))
            self.counts[0] += 2  # f0 and f1
            return torch.minimum(100 * h0, h1)


for _name, _tableau in TABLEAUS.items():
    if _tableau.adaptive:
        register_solver(_name)(RungeKutta)


@outside_compile
def _adaptive(solver: RungeKutta, problem: Problem) -> Solution:
    """An adaptive solve, with the gradients of ``problem``'s strategy. Its loop reads back on
    the host: under ``torch.compile`` it runs around the compiled graph (one step compiles whole,
    the loop does not)."""
    return problem.gradient.adaptive(solver, problem)


__all__ = [
    "AdaptiveLoop",
    "Attempt",
    "PIController",
    "RungeKutta",
    "Scheme",
    "TableauSteps",
    "rk_increment",
    "rk_step",
]
