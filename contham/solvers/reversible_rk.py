"""Exact gradients without stored activations for any explicit Runge-Kutta method: the
algebraically reversible scheme of McCallum & Foster ("Efficient, accurate and stable gradients
for neural ODEs", 2024).

Any Runge-Kutta step ``Phi_h`` (the increment ``y1 - y`` of one step of size h) becomes reversible
on a *pair* of states ``(y, z)``, both starting at ``y0``:

    y+ = l y + (1 - l) z + Phi_h(z),     z+ = z - Phi_{-h}(y+),

with a coupling ``0 < l < 1`` (0.999 by default, as theirs). Each step is undone exactly, up to
rounding: ``z = z+ + Phi_{-h}(y+)``, then ``y = (y+ - (1 - l) z - Phi_h(z)) / l``. The forward
pass keeps the final y, the z before the last step (the final z only feeds steps that are not
taken) and the step sizes; the backward pass rebuilds the pair step by step, backwards, and
backpropagates through each step as it goes (one vector-Jacobian product of each Phi, of Phi_h
alone on the last step, where nothing flows back into z). The result is ``y`` at the end: it is
*this scheme's* solution, which has the order of the underlying method (their Theorem 2.3) but is
not the plain method's numbers. Adaptive steps are controlled by the error estimate of
``Phi_h(z)``. Costs: a forward step evaluates both Phis (a dopri5 step: 7 + 6 calls instead of 6;
fixed steps skip the last step's ``Phi_{-h}``); the backward pass evaluates them again with their
products. Memory: two states after the forward pass, whatever the number of steps (three during
an adaptive one).

The scheme is linearly stable where the method is (their Theorem 2.4, for ``l`` close to 1), so it
does not trade the method's stability region for reversibility, unlike asynchronous leapfrog
(MALI); prefer it to the adjoint when exact gradients matter (the adjoint's are exact only to its
tolerances) and to backprop when memory does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..fields.base import FrozenField, prepared
from .base import Problem, Solution, Stats, compiled_or_eager
from .reads import grad_inputs
from .rk import Attempt, Scheme, rk_increment
from .tableaus import Tableau

COUPLING = 0.999
"""McCallum & Foster's coupling l."""


class Coupled(Scheme):
    """The forward pass of the reversible pair. Its state is ``(y, z, z before the last accepted
    step)``; steps are recorded as ``(field, node, t, dt, accept)``."""

    keeps_stage = False  # the stages are read on z and y+, never at the next step's start

    def __init__(self, coupling: float = COUPLING):
        self.coupling = coupling
        self.steps: list[tuple[Any, int | None, Any, Any, Tensor | None]] = []

    def start(self, f: Any, y0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # three tensors, not one thrice: a compiled step's graph is guarded on whether its inputs
        # alias, so a first step on one tensor would compile a graph of its own
        return y0, y0.clone(), y0.clone()

    def solution(self, state: Any) -> Tensor:
        return state[0]

    def attempt(self, f: Any, tableau: Tableau, t: Any, dt: Any, state: Any, k1: Tensor | None) -> Attempt:
        y, z, _ = state
        phi, err = rk_increment(f, tableau, t, dt, z, error=True)
        assert err is not None
        y1 = self.couple(y, z, phi)
        new = (y1, self.pull(f, tableau, t, dt, y1, z), z)
        return Attempt(new, err, z, z + phi, None, tableau.stages + tableau.solution_stages, None)

    def couple(self, y: Tensor, z: Tensor, phi: Tensor) -> Tensor:
        """y+ of a step whose ``Phi_h(z)`` is ``phi``."""
        return self.coupling * y + (1 - self.coupling) * z + phi

    def pull(self, f: Any, tableau: Tableau, t: Any, dt: Any, y1: Tensor, z: Tensor) -> Tensor:
        """z+ of the step from t by dt that took z to ``y1`` (only a next step reads it)."""
        return z - rk_increment(f, tableau, t + dt, -dt, y1)[0]

    def select(self, accept: Tensor, new: Any, old: Any) -> Any:
        return tuple(torch.where(accept, n, o) for n, o in zip(new, old))

    def record(self, f: Any, node: int | None, t: Any, dt: Any, accept: Tensor | None) -> None:
        self.steps.append((f, node, t, dt, accept))


class _Rebuild(torch.autograd.Function):
    """``y`` at the end of a reversible solve; the backward pass walks its steps back. Its
    gradients cannot be differentiated again (the walk's products are taken without a graph):
    a second backward pass raises instead of returning part of the second derivative."""

    @staticmethod
    def forward(ctx: Any, solve: Any, y0: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():  # y0 detached: every step, the first too, sees a state without a graph
            (y, z), walk = solve(y0.detach())
        ctx.walk = walk
        ctx.save_for_backward(y, z)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Any:
        y, z = ctx.saved_tensors
        a_y, a_z, totals = ctx.walk.back(y, z, grad)
        return (None, a_y + a_z, *totals)


class Walk:
    """The backward pass over the recorded steps of a `Coupled` forward pass.

    ``times(t, dt, accept)`` gives a recorded step's time, size and acceptance as the forward pass
    handed them to the field and the state; ``stats.nfe_backward`` counts the calls."""

    def __init__(
        self,
        field: Any,
        params: tuple[Tensor, ...],
        tableau: Tableau,
        scheme: Coupled,
        times: Any,
        stats: Any,
        increment: Callable[..., tuple[Tensor, Tensor | None]] = rk_increment,
    ):
        self.field, self.params, self.tableau, self.scheme = field, params, tableau, scheme
        self.times, self.stats, self.increment = times, stats, increment

    def back(self, y: Tensor, z: Tensor, a_y: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The adjoints of y0 (as y and as z) and of the parameters, from those of the final y;
        ``z`` is each sample's z before its last step."""
        steps, rebuilds = _taken(self.scheme.steps)
        with torch.enable_grad():
            weights = self.field.step_weights() if any(node is not None for _, node, *_ in steps) else []
            # each field the steps recorded, prepared once for the pass, with gradients to the weights
            fields = {id(f): f for f, node, *_ in steps if node is None}
            ready = {key: prepared(f, y) for key, f in fields.items()}
        a_z = torch.zeros_like(a_y)
        totals = [torch.zeros_like(p) for p in self.params]
        walked = None  # the samples whose last step is behind (None: all, or none yet)
        for (f, node, t, dt, accept), rebuild in zip(reversed(steps), reversed(rebuilds)):
            # the field with its weights in autograd's graph: prepared for the pass, or a node's
            f = ready[id(f)] if node is None else FrozenField(self.field, weights[node])
            time, step, mask = self.times(t, dt, accept)
            if rebuild:  # the forward pass kept z only before each sample's last step
                pulled = mask if walked is None else walked & mask
                z, a_y = self.unpull((f, time, step), mask, pulled, y, z, a_y, a_z, totals)
            walked = mask if walked is None or mask is None else walked | mask
            y, a_y, a_z = self.uncouple((f, time, step), mask, y, z, a_y, a_z, totals)
            self.stats.nfe_backward += (1 + rebuild) * self.tableau.solution_stages
        return a_y, a_z, totals

    def unpull(
        self, at: tuple, mask: Any, pulled: Any, y: Tensor, z: Tensor, a_y: Tensor, a_z: Tensor, totals: list
    ) -> tuple[Tensor, Tensor]:
        """Undo ``z+ = z - Phi_{-h}(y+)`` of the step ``at`` ``(f, t, h)`` where ``pulled``:
        z, and the adjoint of y+, which that of z+ reaches through Phi_{-h} (as it reaches the
        weights, added to ``totals``) on the samples of ``mask``."""
        f, time, step = at
        q, g_y, g_q = self.vjp(lambda v: self.increment(f, self.tableau, time + step, -step, v)[0], y, _only(mask, a_z))
        if totals:  # one launch for all parameters
            torch._foreach_sub_(totals, g_q)
        return _where(pulled, z + q, z), a_y - g_y

    def uncouple(
        self, at: tuple, mask: Any, y: Tensor, z: Tensor, a_y: Tensor, a_z: Tensor, totals: list
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Undo ``y+ = l y + (1 - l) z + Phi_h(z)`` of the step ``at`` on the samples of
        ``mask``: y, and the adjoints of y and z, which that of y+ reaches (as it reaches the
        weights, added to ``totals``)."""
        (f, time, step), l = at, self.scheme.coupling  # noqa: E741 (the paper's name)
        p, g_z, g_p = self.vjp(lambda v: self.increment(f, self.tableau, time, step, v)[0], z, _only(mask, a_y))
        if totals:
            torch._foreach_add_(totals, g_p)
        y = _where(mask, (y - (1 - l) * z - p) / l, y)
        return y, _where(mask, l * a_y, a_y), _where(mask, a_z + (1 - l) * a_y + g_z, a_z)

    def vjp(self, fn: Any, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``fn(x)`` and the products of ``v`` with its Jacobians in x and in the parameters."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = fn(x)
            wrt = (x, *self.params)
            # a field that depends on neither (y' = g(t)) leaves nothing to differentiate; the graph
            # is kept for the prepared field's part, which every step's product passes through
            grads: tuple[Tensor | None, ...] = (None,) * len(wrt)
            if out.requires_grad:
                grads = torch.autograd.grad(out, wrt, v, allow_unused=True, retain_graph=True)
        g_x, *g_params = (torch.zeros_like(a) if g is None else g for g, a in zip(grads, (x, *self.params)))
        return out.detach(), g_x, g_params


def _taken(steps: list) -> tuple[list, list[bool]]:
    """The recorded steps some sample took, and for each whether some sample that took it took a
    later one too (its z+ is then rebuilt; the forward pass kept the others'): one read-back of
    the accept flags for all."""
    if not steps or steps[0][-1] is None:  # fixed steps, all taken by all
        return steps, [True] * (len(steps) - 1) + [False]
    taken: list = []
    rebuilds: list[bool] = []
    accepted = torch.stack([accept for *_, accept in steps]).tolist()
    later = [False] * len(accepted[0])
    for step, row in zip(reversed(steps), reversed(accepted)):
        if any(row):
            taken.append(step)
            rebuilds.append(any(a and b for a, b in zip(row, later)))
            later = [a or b for a, b in zip(row, later)]
    return taken[::-1], rebuilds[::-1]


def _where(mask: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    return new if mask is None else torch.where(mask, new, old)


def _only(mask: Tensor | None, v: Tensor) -> Tensor:
    """``v`` on the samples that took the step (zero elsewhere: nothing flows through the rest)."""
    return v if mask is None else torch.where(mask, v, torch.zeros_like(v))


def inputs(field: Any, t0: float | Tensor, y0: Tensor) -> tuple[Tensor, ...] | None:
    """The tensors besides y0 that the gradients of a solve from ``(t0, y0)`` go to
    (`grad_inputs`; t0 as the solve's steps give the field its times), or None where no
    backward pass is to come."""
    params = grad_inputs(field, t0, y0)
    return params if torch.is_grad_enabled() and (y0.requires_grad or params) else None


def reversible(
    field: Any,
    y0: Tensor,
    params: tuple[Tensor, ...],
    tableau: Tableau,
    forward: Any,
    coupling: float,
    increment: Callable = rk_increment,
) -> Tensor:
    """The final y of ``forward(scheme, y0)``, which runs a `Coupled` scheme from y0 and returns
    the final y and each sample's z before its last step, the ``times`` function of `Walk` and
    the `Stats` to count the backward calls in; the backward pass rebuilds the pair, with
    ``increment`` (`rk_increment`, or a compiled version of it), and takes the gradients of y0
    and of ``params``, the tensors besides y0 the field's value depends on."""

    def solve(start: Tensor) -> tuple[tuple[Tensor, Tensor], Walk]:
        scheme = Coupled(coupling)
        kept, times, stats = forward(scheme, start)
        return kept, Walk(field, params, tableau, scheme, times, stats, increment)

    return _Rebuild.apply(solve, y0, *params)


def adaptive_solve(solver: Any, problem: Problem, coupling: float) -> Solution:
    """An adaptive solve of the Runge-Kutta engine ``solver`` by the reversible scheme."""
    params = inputs(problem.field, problem.y0.new_full((), problem.times[0]), problem.y0)  # the loop's kind of t
    if params is None:
        loop = solver.loop(problem, Coupled(coupling))
        return loop.solution([y for y, _, _ in loop.run()])
    if len(problem.times) > 2:
        raise ValueError("gradient='reversible' keeps only the final state: pass two times")
    loops = []

    def forward(scheme: Coupled, y0: Tensor) -> Any:
        loop = solver.loop(replace(problem, y0=y0), scheme)
        loops.append(loop)
        y, _, before = loop.run()[-1]
        return (y, before), loop.times, loop.stats

    increment = compiled_or_eager(rk_increment, solver.compile)
    y = reversible(problem.field, problem.y0, params, solver.tableau, forward, coupling, increment)
    return loops[0].solution([y])


def fixed_steps(tableau: Tableau, schedule: Any, y0: Tensor, stats: Stats, coupling: float) -> list[Tensor]:
    """The states after the output steps (``schedule.row``) of the fixed steps of ``tableau`` by the reversible
    scheme (only the final one when there is a backward pass to come)."""
    field, steps = schedule.field, schedule.steps
    stats.nfe_forward = max(2 * len(steps) - 1, 0) * tableau.solution_stages

    def forward(scheme: Coupled, y: Tensor) -> tuple[list[Tensor], Tensor]:
        """y at the outputs, and z before the last step."""
        weights = field.step_weights() if schedule.pinned else []
        stepping = prepared(field, y)  # once per solve; the backward pass prepares the field it records
        z, out, last = y, [], None
        for i, (s, h, node) in enumerate(steps, 1):
            f = stepping if node is None else FrozenField(field, weights[node])
            if last is not None:  # z+ of the step before, which only this step reads
                z = scheme.pull(*last)
            y1 = scheme.couple(y, z, rk_increment(f, tableau, s, h, z)[0])
            last, y = (f, tableau, s, h, y1, z), y1
            scheme.record(field if node is None else f, node, s, h, None)
            if i in schedule.row:
                out.append(schedule.write(i, y))
        return out, z

    stats.nfe_backward = 0  # counted as the backward pass runs
    params = inputs(field, steps[0][0], y0)
    if params is None:
        return forward(Coupled(coupling), y0)[0]
    if not schedule.final_only:
        raise ValueError("gradient='reversible' keeps only the final state: pass two times")

    def final(scheme: Coupled, y: Tensor) -> tuple[tuple[Tensor, Tensor], Any, Stats]:
        out, z = forward(scheme, y)
        return (out[-1], z), lambda t, h, accept: (t, h, None), stats

    return [reversible(field, y0, params, tableau, final, coupling)]
