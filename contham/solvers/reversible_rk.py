"""Exact gradients without stored activations for any explicit Runge-Kutta method: the
algebraically reversible scheme of McCallum & Foster ("Efficient, accurate and stable gradients
for neural ODEs", 2024).

Any Runge-Kutta step ``Phi_h`` (the increment ``y1 - y`` of one step of size h) becomes reversible
on a *pair* of states ``(y, z)``, both starting at ``y0``:

    y+ = l y + (1 - l) z + Phi_h(z),     z+ = z - Phi_{-h}(y+),

with a coupling ``0 < l < 1`` (0.999 by default, as theirs). Each step is undone exactly, up to
rounding: ``z = z+ + Phi_{-h}(y+)``, then ``y = (y+ - (1 - l) z - Phi_h(z)) / l``. The forward
pass keeps the final pair and the step sizes only; the backward pass rebuilds the pair step by
step, backwards, and backpropagates through each step as it goes (one vector-Jacobian product of
each Phi). The result is ``y`` at the end: it is *this scheme's* solution, which has the order of
the underlying method (their Theorem 2.3) but is not the plain method's numbers. Adaptive steps are
controlled by the error estimate of ``Phi_h(z)``. Costs: a forward step evaluates both Phis (a
dopri5 step: 7 + 6 calls instead of 6); the backward pass evaluates them again with their
products. Memory: two states, whatever the number of steps.

The scheme is linearly stable where the method is (their Theorem 2.4, for ``l`` close to 1), so it
does not trade the method's stability region for reversibility, unlike asynchronous leapfrog
(MALI); prefer it to the adjoint when exact gradients matter (the adjoint's are exact only to its
tolerances) and to backprop when memory does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..fields.base import FrozenField
from .base import Problem, Solution, Stats
from .fixed import wants_grad
from .rk import Attempt, Scheme, rk_increment, solution
from .tableaus import Tableau

COUPLING = 0.999
"""McCallum & Foster's coupling l."""


class Coupled(Scheme):
    """The forward pass of the reversible pair: steps recorded as ``(field, node, t, dt, accept)``."""

    keeps_stage = False  # the stages are read on z and y+, never at the next step's start

    def __init__(self, coupling: float = COUPLING):
        self.coupling = coupling
        self.steps: list[tuple[Any, int | None, Any, Any, Tensor | None]] = []

    def start(self, f: Any, y0: Tensor) -> tuple[Tensor, Tensor]:
        return y0, y0

    def solution(self, state: Any) -> Tensor:
        return state[0]

    def attempt(self, f: Any, tableau: Tableau, t: Any, dt: Any, state: Any, k1: Tensor | None) -> Attempt:
        y, z = state
        phi, err = rk_increment(f, tableau, t, dt, z, error=True)
        assert err is not None
        y1, z1 = self.advance(f, tableau, t, dt, y, z, phi)
        return Attempt((y1, z1), err, z, z + phi, None, tableau.stages + tableau.solution_stages, None)

    def advance(self, f: Any, tableau: Tableau, t: Any, dt: Any, y: Tensor, z: Tensor, phi: Tensor):
        """The pair after a step whose ``Phi_h(z)`` is ``phi``."""
        y1 = self.coupling * y + (1 - self.coupling) * z + phi
        return y1, z - rk_increment(f, tableau, t + dt, -dt, y1)[0]

    def select(self, accept: Tensor, new: Any, old: Any) -> Any:
        return tuple(torch.where(accept, n, o) for n, o in zip(new, old))

    def record(self, f: Any, node: int | None, t: Any, dt: Any, accept: Tensor | None) -> None:
        self.steps.append((f, node, t, dt, accept))


class _Rebuild(torch.autograd.Function):
    """``y`` at the end of a reversible solve; the backward pass walks its steps back."""

    @staticmethod
    def forward(ctx: Any, solve: Any, y0: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():
            (y, z), walk = solve(y0)
        ctx.walk = walk
        ctx.save_for_backward(y, z)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        y, z = ctx.saved_tensors
        a_y, a_z, totals = ctx.walk.back(y, z, grad)
        return (None, a_y + a_z, *totals)


class Walk:
    """The backward pass over the recorded steps of a `Coupled` forward pass.

    ``times(t, dt, accept)`` gives a recorded step's time, size and acceptance as the forward pass
    handed them to the field and the state; ``stats.nfe_backward`` counts the calls."""

    def __init__(
        self, field: Any, params: tuple[Tensor, ...], tableau: Tableau, scheme: Coupled, times: Any, stats: Any
    ):
        self.field, self.params, self.tableau, self.scheme = field, params, tableau, scheme
        self.times, self.stats = times, stats

    def back(self, y: Tensor, z: Tensor, a_y: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The adjoints of y0 (as y and as z) and of the parameters, from those of the final y."""
        l, tableau = self.scheme.coupling, self.tableau  # noqa: E741 (the paper's name)
        steps = _taken(self.scheme.steps)
        with torch.enable_grad():
            weights = self.field.step_weights() if any(node is not None for _, node, *_ in steps) else []
        a_z = torch.zeros_like(a_y)
        totals = [torch.zeros_like(p) for p in self.params]
        for f, node, t, dt, accept in reversed(steps):
            if node is not None:  # the weights again, now in autograd's graph
                f = FrozenField(self.field, weights[node])
            time, step, mask = self.times(t, dt, accept)
            # z = z+ + Phi_{-h}(y+); the adjoint of z+ reaches y+ and the weights through Phi_{-h}
            q, g_y, g_q = self.vjp(lambda v: rk_increment(f, tableau, time + step, -step, v)[0], y, _only(mask, a_z))  # noqa: B023
            a_y1 = a_y - g_y
            z0 = _where(mask, z + q, z)
            # y = (y+ - (1 - l) z - Phi_h(z)) / l; the adjoint of y+ reaches y, z and the weights
            p, g_z, g_p = self.vjp(lambda v: rk_increment(f, tableau, time, step, v)[0], z0, _only(mask, a_y1))  # noqa: B023
            y = _where(mask, (y - (1 - l) * z0 - p) / l, y)
            a_y, a_z, z = _where(mask, l * a_y1, a_y), _where(mask, a_z + (1 - l) * a_y1 + g_z, a_z), z0
            for total, gp, gq in zip(totals, g_p, g_q):
                total += gp - gq
            self.stats.nfe_backward += 2 * tableau.solution_stages
        return a_y, a_z, totals

    def vjp(self, fn: Any, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``fn(x)`` and the products of ``v`` with its Jacobians in x and in the parameters."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = fn(x)
            wrt = (x, *self.params)
            # a field that depends on neither (y' = g(t)) leaves nothing to differentiate
            grads = torch.autograd.grad(out, wrt, v, allow_unused=True) if out.requires_grad else (None,) * len(wrt)
        g_x, *g_params = (torch.zeros_like(a) if g is None else g for g, a in zip(grads, (x, *self.params)))
        return out.detach(), g_x, g_params


def _taken(steps: list) -> list:
    """The recorded steps some sample took (one read-back of the accept flags for all)."""
    flags = [accept for *_, accept in steps if accept is not None]
    if not flags:
        return steps
    taken = torch.stack([a.any() for a in flags]).tolist()
    return [s for s, keep in zip(steps, taken) if keep]


def _where(mask: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    return new if mask is None else torch.where(mask, new, old)


def _only(mask: Tensor | None, v: Tensor) -> Tensor:
    """``v`` on the samples that took the step (zero elsewhere: nothing flows through the rest)."""
    return v if mask is None else torch.where(mask, v, torch.zeros_like(v))


def _params(field: Any) -> tuple[Tensor, ...]:
    return tuple(p for p in field.parameters() if p.requires_grad) if isinstance(field, nn.Module) else ()


def reversible(field: Any, y0: Tensor, tableau: Tableau, forward: Any, coupling: float) -> Tensor:
    """The final y of ``forward(scheme, y0)``, which runs a `Coupled` scheme from y0 and returns
    its final pair, the ``times`` function of `Walk` and the `Stats` to count the backward
    calls in; the backward pass rebuilds the pair."""
    params = _params(field)

    def solve(start: Tensor) -> tuple[tuple[Tensor, Tensor], Walk]:
        scheme = Coupled(coupling)
        pair, times, stats = forward(scheme, start)
        return pair, Walk(field, params, tableau, scheme, times, stats)

    return _Rebuild.apply(solve, y0, *params)


def adaptive_solve(solver: Any, problem: Problem, coupling: float) -> Solution:
    """An adaptive solve of the Runge-Kutta engine ``solver`` by the reversible scheme."""
    if not wants_grad(problem.field, problem.y0):
        loop = solver.loop(problem, Coupled(coupling))
        return solution(problem, [y for y, _ in loop.run()], loop.stats)
    if len(problem.times) > 2:
        raise ValueError("gradient='reversible' keeps only the final state: pass two times")
    loops = []

    def forward(scheme: Coupled, y0: Tensor) -> Any:
        loop = solver.loop(replace(problem, y0=y0), scheme)
        loops.append(loop)
        return loop.run()[-1], loop.times, loop.stats

    y = reversible(problem.field, problem.y0, solver.tableau, forward, coupling)
    return solution(problem, [y], loops[0].stats)


def fixed_steps(tableau: Tableau, schedule: Any, y0: Tensor, stats: Stats, coupling: float) -> list[Tensor]:
    """The states at ``schedule.outputs`` of the fixed steps of ``tableau`` by the reversible
    scheme (only the final one when there is a backward pass to come)."""
    field, steps = schedule.field, schedule.steps
    stats.nfe_forward = len(steps) * (tableau.stages + tableau.solution_stages)

    def forward(scheme: Coupled, y: Tensor) -> list[tuple[Tensor, Tensor]]:
        weights = field.step_weights() if schedule.pinned else []
        z, out = y, []
        for i, (s, h, node) in enumerate(steps, 1):
            f = field if node is None else FrozenField(field, weights[node])
            y, z = scheme.advance(f, tableau, s, h, y, z, rk_increment(f, tableau, s, h, z)[0])
            scheme.record(f, node, s, h, None)
            if i in schedule.outputs:
                out.append((y, z))
        return out

    stats.nfe_backward = 0  # counted as the backward pass runs
    if not wants_grad(field, y0):
        return [y for y, _ in forward(Coupled(coupling), y0)]
    if not schedule.final_only:
        raise ValueError("gradient='reversible' keeps only the final state: pass two times")
    fixed_times = lambda t, h, accept: (t, h, None)  # noqa: E731
    return [reversible(field, y0, tableau, lambda scheme, y: (forward(scheme, y)[-1], fixed_times, stats), coupling)]
