"""Exact backprop without stored activations through reversible split schemes.

A split step (symplectic Euler, Verlet/leapfrog) is a sequence of *kicks*
``u <- u + c h f_u(v)`` in which one half ``u`` of the state moves and the other half ``v`` does
not (:data:`~contham.solvers.fixed.Kick`). Each kick is undone by subtracting the same term, so the
state before a step can be rebuilt from the state after it (Chang et al. 2018 note this for their
Verlet network). :func:`reversible_steps` keeps only the final state in the forward pass. In the
backward pass it walks the kicks in reverse order. For each kick it evaluates ``f_u(v)`` once,
with a graph. That value restores ``u``, and its vector-Jacobian product with ``c h dL/du`` gives
the gradients for ``v`` and for the step's weights. Activation memory is that of one kick,
whatever the depth. Backward costs one extra evaluation per kick compared with ordinary backprop.
The gradients are those of the computed forward map, up to the rounding of the reconstruction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .fields.base import FrozenField, NodeField
from .solvers.fixed import _SplitSolver, kick_field


class _ReversibleSteps(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, field: NodeField, solver: _SplitSolver, plan: list, stats: Any, x: Tensor, *params: Tensor):
        for s, h, node in plan:
            x = solver.step(FrozenField(field, tuple(p[node] for p in params)), s, h, x)
        ctx.field, ctx.solver, ctx.plan, ctx.stats = field, solver, plan, stats
        ctx.save_for_backward(x, *params)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        x, *params = ctx.saved_tensors
        field, solver = ctx.field, ctx.solver
        grads = [torch.zeros_like(p) for p in params]
        state = dict(zip("yz", field.split(x)))
        adjoint = dict(zip("yz", field.split(grad)))
        for s, h, node in reversed(ctx.plan):
            weights = tuple(p[node].detach().requires_grad_() for p in params)
            frozen = FrozenField(field, weights)
            for u, c, d in reversed(solver.kicks(frozen)):
                v = "z" if u == "y" else "y"
                with torch.enable_grad():
                    source = state[v].detach().requires_grad_()
                    push = kick_field(frozen, u)(s + d * h, source)
                state[u] = state[u] - (c * h) * push.detach()
                g_source, *g_weights = torch.autograd.grad(
                    push, (source, *weights), (c * h) * adjoint[u], allow_unused=True
                )
                adjoint[v] = adjoint[v] + g_source
                for total, g in zip(grads, g_weights):
                    if g is not None:
                        total[node] += g
        ctx.stats.nfe_backward += len(ctx.plan) * solver.evals_per_step
        return (None, None, None, None, field.merge(adjoint["y"], adjoint["z"]), *grads)


def reversible_steps(field: NodeField, solver: _SplitSolver, x: Tensor, plan: list, stats: Any) -> Tensor:
    """Run the fixed-step ``plan`` (steps ``(t, h, node)``) of a split ``solver`` on ``field`` from
    ``x``, storing no intermediate state for backprop (see the module docstring).

    ``field`` must keep all its trainable weights on the node axis (``node_names``), and every
    step of ``plan`` must name its node.
    """
    params = tuple(getattr(field, name) for name in field.node_names)
    return _ReversibleSteps.apply(field, solver, plan, stats, x, *params)
